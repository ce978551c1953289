//! Messages and interactions → jobs. Interactions are answered (deferred, a modal, or an
//! ephemeral reply) before anything slow happens; nothing here waits for the model.

use serenity::all::{
    ChannelId, CommandInteraction, CommandType, ComponentInteraction, CreateInteractionResponse,
    CreateInteractionResponseMessage, GetMessages, Interaction, Message, MessageId,
    ModalInteraction, ResolvedValue,
};

use tracing::Instrument as _;

use super::answer::{ephemeral, lang_of};
use super::{Discord, group_of};
use crate::core::command::{
    EditCommand, MAX_NEGATIVE_CHARS, MAX_PROMPT_CHARS, ParseContext, parse,
};
use crate::core::error::Rejection;
use crate::core::jobs::JobSpec;
use crate::core::model::{Platform, Reply};
use crate::messages::{self, Lang};

/// Images in the latest messages the slash command looks through when given none.
const LATEST_LOOKBACK: u8 = 50;

/// Locators of a message's attachments (sniffed later, not trusted by content type).
fn locators(msg: &Message) -> Vec<String> {
    locators_where(msg, |_| true)
}

/// Locators of the attachments declared as images (or as unknown bytes).
fn image_locators(msg: &Message) -> Vec<String> {
    locators_where(msg, |a| {
        a.content_type
            .as_deref()
            .is_none_or(|t| t.starts_with("image/") || t == "application/octet-stream")
    })
}

fn locators_where(msg: &Message, keep: impl Fn(&serenity::all::Attachment) -> bool) -> Vec<String> {
    msg.attachments
        .iter()
        .enumerate()
        .filter(|(_, a)| keep(a))
        .map(|(i, _)| format!("msg:{}:{}:{i}", msg.channel_id.get(), msg.id.get()))
        .collect()
}

/// The instruction of a text trigger: `/edit …`, or `@Bot edit …` (as `/edit …`).
fn instruction(dc: &Discord, content: &str) -> Option<String> {
    let content = content.trim_start();
    if content == "/edit" || content.starts_with("/edit ") || content.starts_with("/edit\n") {
        return Some(content.to_owned());
    }
    let me = dc.bot_id.get()?.get();
    let rest = content
        .strip_prefix(&format!("<@{me}>"))
        .or_else(|| content.strip_prefix(&format!("<@!{me}>")))?
        .trim_start();
    let word = rest.split_whitespace().next()?;
    word.eq_ignore_ascii_case("edit")
        .then(|| format!("/edit{}", &rest[word.len()..]))
}

pub async fn on_message(dc: &Discord, msg: &Message) {
    if msg.author.bot {
        return;
    }
    let Some(text) = instruction(dc, &msg.content) else {
        return;
    };
    let span = tracing::info_span!(
        "discord_message",
        platform = "discord",
        channel = msg.channel_id.get(),
        user = msg.author.id.get(),
        message = msg.id.get()
    );
    text_request(dc, msg, &text).instrument(span).await;
}

async fn text_request(dc: &Discord, msg: &Message, text: &str) {
    // Messages carry no locale: answer in the guild's preferred language.
    let lang = match msg.guild_id {
        Some(guild) => dc.guild_lang(guild.get()).await,
        None => Lang::En,
    };
    let route = Reply {
        platform: Platform::Discord,
        chat: msg.channel_id.get() as i64,
        group: group_of(msg.guild_id),
        to: Some(msg.id.get() as i64),
        user: msg.author.id.get().to_string(),
        lang,
        deferred: None,
        upload_limit: None,
    };
    if !dc.admit_text(msg, &route).await {
        return;
    }
    let command = match parse(text, ParseContext::default()) {
        Ok(Some(c)) => c,
        Ok(None) => return,
        Err(e) => return dc.engine.refuse(&route, &Rejection::Command(e)),
    };
    let mut inputs = locators(msg);
    if inputs.is_empty()
        && let Some(referenced) = &msg.referenced_message
    {
        inputs = locators(referenced);
    }
    let id = format!("dc-{}", msg.id.get());
    dc.engine
        .request(JobSpec::new(id, route, inputs, command))
        .await;
}

pub async fn on_interaction(dc: &Discord, interaction: Interaction) {
    if !dc.admit_interaction(&interaction).await {
        return;
    }
    match interaction {
        Interaction::Command(cmd) => match (cmd.data.kind, cmd.data.name.as_str()) {
            (CommandType::Message, _) => open_modal(dc, &cmd).await,
            (_, "edit") => slash_edit(dc, &cmd).await,
            (_, "quota") => super::commands::quota(dc, &cmd).await,
            (_, "quota-admin") => super::commands::quota_admin(dc, &cmd).await,
            (_, "help") => {
                let lang = lang_of(&cmd.locale, cmd.guild_locale.as_deref());
                ephemeral(dc, &cmd, &messages::discord_help(lang)).await;
            }
            _ => {}
        },
        Interaction::Modal(modal) => modal_submit(dc, &modal).await,
        Interaction::Component(button) => again(dc, &button).await,
        _ => {}
    }
}

/// `/edit prompt:… [image] [image2] [image3] [negative] [seed] [count] [size]`.
async fn slash_edit(dc: &Discord, cmd: &CommandInteraction) {
    let lang = lang_of(&cmd.locale, cmd.guild_locale.as_deref());
    let (mut prompt, mut negative, mut seed, mut count, mut size, mut urls) =
        ("", None, None, None, None, Vec::new());
    for option in cmd.data.options() {
        match (option.name, option.value) {
            ("prompt", ResolvedValue::String(s)) => prompt = s,
            ("negative", ResolvedValue::String(s)) => negative = Some(s),
            ("seed", ResolvedValue::Integer(n)) => seed = Some(n.to_string()),
            ("count", ResolvedValue::Integer(n)) => count = Some(n.to_string()),
            ("size", ResolvedValue::String(s)) => size = Some(s),
            (_, ResolvedValue::Attachment(a)) => urls.push(format!("url:{}", a.url)),
            _ => {}
        }
    }
    let command = EditCommand::from_parts(prompt, negative, seed.as_deref(), count.as_deref())
        .and_then(|c| c.with_size(size));
    let command = match command {
        Ok(c) => c,
        Err(e) => {
            return ephemeral(dc, cmd, &messages::rejection(lang, &Rejection::Command(e))).await;
        }
    };
    if let Err(e) = cmd.defer(&dc.http).await {
        tracing::warn!(error = %e, "cannot defer /edit");
        return;
    }
    if urls.is_empty() {
        urls = latest_image(dc, cmd.channel_id).await;
    }
    let route = Reply {
        platform: Platform::Discord,
        chat: cmd.channel_id.get() as i64,
        group: group_of(cmd.guild_id),
        to: None,
        user: cmd.user.id.get().to_string(),
        lang,
        deferred: Some(cmd.token.clone()),
        upload_limit: Some(u64::from(cmd.attachment_size_limit)),
    };
    let id = format!("dc-i-{}", cmd.id.get());
    dc.engine
        .request(JobSpec::new(id, route, urls, command))
        .await;
}

/// The attachments of the most recent message with images in the channel.
async fn latest_image(dc: &Discord, channel: ChannelId) -> Vec<String> {
    let Ok(recent) = channel
        .messages(&dc.http, GetMessages::new().limit(LATEST_LOOKBACK))
        .await
    else {
        return Vec::new();
    };
    recent
        .iter()
        .map(image_locators)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
}

/// Apps → "Edit image": ask for the prompt in a modal.
async fn open_modal(dc: &Discord, cmd: &CommandInteraction) {
    use serenity::all::{CreateActionRow, CreateInputText, CreateModal, InputTextStyle};
    let lang = lang_of(&cmd.locale, cmd.guild_locale.as_deref());
    let Some(target) = cmd.data.target_id else {
        return;
    };
    // Only the target message: the channel is the one the modal is submitted in (an id sent back
    // by the client carries no authority).
    let custom_id = format!("edit:{}", target.get());
    let (title, prompt_label, negative_label) = match lang {
        Lang::En => ("Edit image", "What should change?", "Avoid (optional)"),
        Lang::Zh => ("编辑图片", "要修改什么？", "不想要的内容（可选）"),
    };
    let modal = CreateModal::new(custom_id, title).components(vec![
        CreateActionRow::InputText(
            CreateInputText::new(InputTextStyle::Paragraph, prompt_label, "prompt")
                .max_length(MAX_PROMPT_CHARS as u16)
                .required(true),
        ),
        CreateActionRow::InputText(
            CreateInputText::new(InputTextStyle::Short, negative_label, "negative")
                .max_length(MAX_NEGATIVE_CHARS as u16)
                .required(false),
        ),
    ]);
    if let Err(e) = cmd
        .create_response(&dc.http, CreateInteractionResponse::Modal(modal))
        .await
    {
        tracing::warn!(error = %e, "cannot open the modal");
    }
}

/// The text the user typed into the modal's field `id`.
fn modal_field(modal: &ModalInteraction, id: &str) -> Option<String> {
    use serenity::all::ActionRowComponent;
    modal
        .data
        .components
        .iter()
        .flat_map(|row| &row.components)
        .find_map(|c| match c {
            ActionRowComponent::InputText(t) if t.custom_id == id => t.value.clone(),
            _ => None,
        })
}

async fn modal_submit(dc: &Discord, modal: &ModalInteraction) {
    let lang = lang_of(&modal.locale, modal.guild_locale.as_deref());
    let Some(rest) = modal.data.custom_id.strip_prefix("edit:") else {
        return;
    };
    // `edit:<message>` (or `edit:<channel>:<message>` from older releases, whose channel is
    // ignored): the message is looked up in the channel of the interaction, nowhere else.
    let Ok(message) = rest.rsplit(':').next().unwrap_or("").parse::<u64>() else {
        return;
    };
    let channel = modal.channel_id.get();
    let (prompt, negative) = (
        modal_field(modal, "prompt").unwrap_or_default(),
        modal_field(modal, "negative").filter(|s| !s.trim().is_empty()),
    );
    let command = match EditCommand::from_parts(&prompt, negative.as_deref(), None, None) {
        Ok(c) => c,
        Err(e) => {
            let reply = CreateInteractionResponseMessage::new()
                .content(messages::rejection(lang, &Rejection::Command(e)))
                .ephemeral(true);
            let _ = modal
                .create_response(&dc.http, CreateInteractionResponse::Message(reply))
                .await;
            return;
        }
    };
    let defer = CreateInteractionResponse::Defer(CreateInteractionResponseMessage::new());
    if let Err(e) = modal.create_response(&dc.http, defer).await {
        tracing::warn!(error = %e, "cannot defer the modal");
        return;
    }
    let inputs = match dc
        .http
        .get_message(ChannelId::new(channel), MessageId::new(message))
        .await
    {
        Ok(target) => locators(&target),
        Err(_) => Vec::new(),
    };
    let route = Reply {
        platform: Platform::Discord,
        chat: channel as i64,
        group: group_of(modal.guild_id),
        to: Some(message as i64),
        user: modal.user.id.get().to_string(),
        lang,
        deferred: Some(modal.token.clone()),
        upload_limit: Some(u64::from(modal.attachment_size_limit)),
    };
    let id = format!("dc-i-{}", modal.id.get());
    dc.engine
        .request(JobSpec::new(id, route, inputs, command))
        .await;
}

/// 🔁 under a result: the same inputs and prompt with a new seed, charged to whoever pressed.
async fn again(dc: &Discord, button: &ComponentInteraction) {
    let lang = lang_of(&button.locale, button.guild_locale.as_deref());
    let Some(token) = button.data.custom_id.strip_prefix("again:") else {
        return;
    };
    // Only the button under the job's own result counts: the message it was pressed on must be
    // the stored result message, in the same channel.
    let pressed = crate::core::ports::store::ResultAt {
        chat: button.channel_id.get().to_string(),
        message: button.message.id.get().to_string(),
    };
    let route = Reply {
        platform: Platform::Discord,
        chat: button.channel_id.get() as i64,
        group: group_of(button.guild_id),
        to: Some(button.message.id.get() as i64),
        user: button.user.id.get().to_string(),
        lang,
        deferred: Some(button.token.clone()),
        upload_limit: Some(u64::from(button.attachment_size_limit)),
    };
    let id = format!("dc-b-{}", button.id.get());
    let Some(spec) = dc.engine.again(token, &pressed, id, route).await else {
        let reply = CreateInteractionResponseMessage::new()
            .content(messages::again_expired(lang))
            .ephemeral(true);
        let _ = button
            .create_response(&dc.http, CreateInteractionResponse::Message(reply))
            .await;
        return;
    };
    let defer = CreateInteractionResponse::Defer(CreateInteractionResponseMessage::new());
    if button.create_response(&dc.http, defer).await.is_err() {
        return;
    }
    dc.engine.request(spec).await;
}

//! Application commands: registration, `/quota` and `/quota-admin`.

use serenity::all::{
    Command, CommandInteraction, CommandOptionType, CommandType, CreateCommand,
    CreateCommandOption, GuildId, Permissions, ResolvedOption, ResolvedValue,
};

use super::answer::{ephemeral, lang_of};
use super::chat::STYLE;
use super::{Discord, group_of};
use crate::core::admin::{self, AdminCommand, Scope};
use crate::core::command::{MAX_N, MAX_NEGATIVE_CHARS, MAX_PROMPT_CHARS, MAX_SEED};
use crate::core::model::{Platform, UserRef};
use crate::messages::{self, Lang};

fn definitions() -> Vec<CreateCommand> {
    let edit = CreateCommand::new("edit")
        .description("Edit an image with Qwen-Image-Edit")
        .description_localized("zh-CN", "用通义千问编辑图片")
        .add_option(
            CreateCommandOption::new(CommandOptionType::String, "prompt", "What should change")
                .required(true)
                .max_length(MAX_PROMPT_CHARS as u16),
        )
        .add_option(CreateCommandOption::new(
            CommandOptionType::Attachment,
            "image",
            "The image (default: the latest image here)",
        ))
        .add_option(CreateCommandOption::new(
            CommandOptionType::Attachment,
            "image2",
            "A second image",
        ))
        .add_option(CreateCommandOption::new(
            CommandOptionType::Attachment,
            "image3",
            "A third image",
        ))
        .add_option(
            CreateCommandOption::new(CommandOptionType::String, "negative", "What to avoid")
                .max_length(MAX_NEGATIVE_CHARS as u16),
        )
        .add_option(
            CreateCommandOption::new(CommandOptionType::Integer, "seed", "Seed")
                .min_int_value(0)
                .max_int_value(u64::from(MAX_SEED)),
        )
        .add_option(
            CreateCommandOption::new(CommandOptionType::Integer, "count", "How many results")
                .min_int_value(1)
                .max_int_value(u64::from(MAX_N)),
        )
        .add_option(
            CreateCommandOption::new(
                CommandOptionType::String,
                "size",
                "Output size WxH, e.g. 1024x1536",
            )
            .max_length(20),
        );
    let user =
        |d: &str| CreateCommandOption::new(CommandOptionType::User, "user", d).required(true);
    let admin = CreateCommand::new("quota-admin")
        .description("Quota administration")
        .default_member_permissions(Permissions::MANAGE_GUILD)
        .add_option(
            CreateCommandOption::new(
                CommandOptionType::SubCommand,
                "set",
                "Give a user their own limit",
            )
            .add_sub_option(user("The user"))
            .add_sub_option(
                CreateCommandOption::new(CommandOptionType::Integer, "limit", "Edits per window")
                    .required(true)
                    .min_int_value(0),
            ),
        )
        .add_option(
            CreateCommandOption::new(
                CommandOptionType::SubCommand,
                "reset",
                "Forget a user's usage in this window",
            )
            .add_sub_option(user("The user")),
        )
        .add_option(
            CreateCommandOption::new(
                CommandOptionType::SubCommand,
                "block",
                "Refuse a user's requests",
            )
            .add_sub_option(user("The user")),
        )
        .add_option(
            CreateCommandOption::new(CommandOptionType::SubCommand, "unblock", "Lift a block")
                .add_sub_option(user("The user")),
        )
        .add_option(CreateCommandOption::new(
            CommandOptionType::SubCommand,
            "usage",
            "Images delivered in this window",
        ));
    vec![
        edit,
        CreateCommand::new("quota").description("Your edits left"),
        CreateCommand::new("help").description("How to use the bot"),
        admin,
        CreateCommand::new("Edit image").kind(CommandType::Message),
    ]
}

/// Registers the commands: per guild when `discord.guild_ids` is set (instant), else globally.
pub async fn register(dc: &Discord) {
    if dc.guild_ids.is_empty() {
        if let Err(e) = Command::set_global_commands(&dc.http, definitions()).await {
            tracing::warn!(error = %e, "cannot register global commands");
        }
        return;
    }
    for guild in &dc.guild_ids {
        if let Err(e) = GuildId::new(*guild)
            .set_commands(&dc.http, definitions())
            .await
        {
            tracing::warn!(guild, error = %e, "cannot register guild commands");
        }
    }
}

fn lang(cmd: &CommandInteraction) -> Lang {
    lang_of(&cmd.locale, cmd.guild_locale.as_deref())
}

pub async fn quota(dc: &Discord, cmd: &CommandInteraction) {
    let user = UserRef::new(Platform::Discord, cmd.user.id.get().to_string());
    let guild = group_of(cmd.guild_id);
    let quotas = dc.engine.quotas();
    let text = admin::own_quota(quotas, &user, guild.as_deref(), lang(cmd), STYLE).await;
    ephemeral(dc, cmd, &text).await;
}

/// `/quota-admin …`. Discord hides it from members without Manage Server by default, but server
/// owners can re-grant it to anyone, so the permission is checked again on every call.
pub async fn quota_admin(dc: &Discord, cmd: &CommandInteraction) {
    let lang = lang(cmd);
    let allowed = cmd
        .member
        .as_ref()
        .and_then(|m| m.permissions)
        .is_some_and(|p| p.manage_guild() || p.administrator());
    // Operators (`discord.admin_ids`) act bot-wide; a server's admins in that server only.
    let scope = match group_of(cmd.guild_id) {
        _ if dc.admin_ids.contains(&cmd.user.id.get()) => Scope::BotWide,
        Some(guild) if allowed => Scope::Chat(guild),
        _ => return ephemeral(dc, cmd, &messages::admin::refused_discord(lang)).await,
    };
    let command = admin_command(&cmd.data.options());
    let quotas = dc.engine.quotas();
    let text = admin::run(quotas, Platform::Discord, &scope, command, lang, STYLE).await;
    ephemeral(dc, cmd, &text).await;
}

/// The subcommand and its options, as the core's command.
fn admin_command(options: &[ResolvedOption<'_>]) -> AdminCommand {
    let Some(ResolvedOption {
        name,
        value: ResolvedValue::SubCommand(args),
        ..
    }) = options.first()
    else {
        return AdminCommand::Help;
    };
    let target = args.iter().find_map(|o| match o.value {
        ResolvedValue::User(u, _) => Some(UserRef::new(Platform::Discord, u.id.get().to_string())),
        _ => None,
    });
    let limit = args.iter().find_map(|o| match o.value {
        ResolvedValue::Integer(n) => u32::try_from(n).ok(),
        _ => None,
    });
    match (*name, target, limit) {
        ("set", Some(user), Some(limit)) => AdminCommand::SetLimit { user, limit },
        ("reset", Some(user), _) => AdminCommand::Reset { user },
        ("block", Some(user), _) => AdminCommand::Block {
            user,
            blocked: true,
        },
        ("unblock", Some(user), _) => AdminCommand::Block {
            user,
            blocked: false,
        },
        ("usage", _, _) => AdminCommand::Usage,
        _ => AdminCommand::Help,
    }
}

//! Answers to interactions that need no job: the interaction's language and an ephemeral
//! reply only its user sees.

use serenity::all::{
    CommandInteraction, CreateInteractionResponse, CreateInteractionResponseMessage,
};

use super::Discord;
use crate::messages::Lang;

/// The interaction's language: its user's locale when Chinese, else the guild's.
pub(super) fn lang_of(locale: &str, guild_locale: Option<&str>) -> Lang {
    match Lang::from_code(Some(locale)) {
        Lang::Zh => Lang::Zh,
        Lang::En => Lang::from_code(guild_locale),
    }
}

/// Answers a command with a message only its user sees.
pub(super) async fn ephemeral(dc: &Discord, cmd: &CommandInteraction, text: &str) {
    let reply = CreateInteractionResponseMessage::new()
        .content(text)
        .ephemeral(true);
    if let Err(e) = cmd
        .create_response(&dc.http, CreateInteractionResponse::Message(reply))
        .await
    {
        tracing::warn!(error = %e, "interaction reply failed");
    }
}

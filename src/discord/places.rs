//! Requests from servers, channels, members or DMs the operator has not enabled
//! (`core::access`): no job and nothing spent. A text request there gets one short answer per
//! channel per hour; an interaction always gets an ephemeral one (only its user sees it). With
//! `leave_unlisted` the bot leaves servers that are not allowed.

use serenity::all::{
    CreateInteractionResponse, CreateInteractionResponseMessage, GuildId, Interaction, Message,
};
use serenity::builder::Builder as _;

use super::intake::lang_of;
use super::{Discord, Route};
use crate::core::access::Spot;
use crate::messages;

impl Discord {
    /// Whether the text request `msg` may be served; when not, answers at most once an hour.
    pub(super) async fn admit_text(&self, msg: &Message, route: &Route) -> bool {
        let roles: Vec<u64> = msg
            .member
            .as_ref()
            .map(|m| m.roles.iter().map(|r| r.get()).collect())
            .unwrap_or_default();
        let spot = Spot::Discord {
            guild: msg.guild_id.map(|g| g.get()),
            channel: msg.channel_id.get(),
            roles: &roles,
            user: msg.author.id.get(),
        };
        let access = self.engine.access();
        let Err(closed) = access.check(spot) else {
            return true;
        };
        let answer = access.answer_refusal(spot);
        tracing::info!(?closed, answer, "request where the bot is not enabled");
        if answer {
            self.say(route, &messages::not_enabled(route.lang, closed))
                .await;
        }
        false
    }

    /// Whether `interaction` may be served; when not, it is answered with an ephemeral refusal.
    pub(super) async fn admit_interaction(&self, interaction: &Interaction) -> bool {
        let roles_of = |m: Option<&serenity::all::Member>| -> Vec<u64> {
            m.map(|m| m.roles.iter().map(|r| r.get()).collect())
                .unwrap_or_default()
        };
        let (id, token, roles, user, channel, guild, locale, guild_locale) = match interaction {
            Interaction::Command(i) => (
                i.id,
                &i.token,
                roles_of(i.member.as_deref()),
                &i.user,
                i.channel_id,
                i.guild_id,
                &i.locale,
                &i.guild_locale,
            ),
            Interaction::Component(i) => (
                i.id,
                &i.token,
                roles_of(i.member.as_ref()),
                &i.user,
                i.channel_id,
                i.guild_id,
                &i.locale,
                &i.guild_locale,
            ),
            Interaction::Modal(i) => (
                i.id,
                &i.token,
                roles_of(i.member.as_ref()),
                &i.user,
                i.channel_id,
                i.guild_id,
                &i.locale,
                &i.guild_locale,
            ),
            _ => return true,
        };
        let spot = Spot::Discord {
            guild: guild.map(|g| g.get()),
            channel: channel.get(),
            roles: &roles,
            user: user.id.get(),
        };
        let Err(closed) = self.engine.access().check(spot) else {
            return true;
        };
        tracing::info!(?closed, "interaction where the bot is not enabled");
        let lang = lang_of(locale, guild_locale.as_deref());
        let reply = CreateInteractionResponseMessage::new()
            .content(messages::not_enabled(lang, closed))
            .ephemeral(true);
        if let Err(e) = CreateInteractionResponse::Message(reply)
            .execute(&self.http, (id, token))
            .await
        {
            tracing::warn!(error = %e, "interaction reply failed");
        }
        false
    }

    /// Leaves `guild` when it is not allowed and `leave_unlisted` is set.
    pub(super) async fn leave_if_unlisted(&self, guild: GuildId) {
        let access = self.engine.access();
        if !access.leaves_unlisted(crate::core::quota::Platform::Discord)
            || access.server_listed(guild.get())
        {
            return;
        }
        tracing::info!(
            guild = guild.get(),
            "leaving a server the bot is not enabled in"
        );
        if let Err(e) = self.http.leave_guild(guild).await {
            tracing::warn!(error = %e, "cannot leave the server");
        }
    }
}

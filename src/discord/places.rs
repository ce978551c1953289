//! Requests from servers, channels, members or DMs the operator has not enabled
//! (`core::access`): no job and nothing spent. A text request there gets one short answer per
//! channel per hour; an interaction always gets an ephemeral one (only its user sees it). With
//! `leave_unlisted` the bot leaves servers that are not allowed.

use serenity::all::{
    CreateInteractionResponse, CreateInteractionResponseMessage, GuildId, Interaction,
    InteractionId, Message, RoleId,
};
use serenity::builder::Builder as _;

use super::Discord;
use super::answer::lang_of;
use crate::core::access::Spot;
use crate::core::model::Reply;
use crate::messages;

impl Discord {
    /// Whether the text request `msg` may be served; when not, answers at most once an hour.
    pub(super) async fn admit_text(&self, msg: &Message, route: &Reply) -> bool {
        let roles = msg
            .member
            .as_ref()
            .map_or_else(Vec::new, |m| role_ids(&m.roles));
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
            let text = messages::not_enabled(route.lang, closed);
            let _ = self.engine.say(route, &text).await;
        }
        false
    }

    /// Whether `interaction` may be served; when not, it is answered with an ephemeral refusal.
    pub(super) async fn admit_interaction(&self, interaction: &Interaction) -> bool {
        let Some(o) = Origin::of(interaction) else {
            return true;
        };
        let spot = Spot::Discord {
            guild: o.guild,
            channel: o.channel,
            roles: &o.roles,
            user: o.user,
        };
        let Err(closed) = self.engine.access().check(spot) else {
            return true;
        };
        tracing::info!(?closed, "interaction where the bot is not enabled");
        let reply = CreateInteractionResponseMessage::new()
            .content(messages::not_enabled(
                lang_of(o.locale, o.guild_locale),
                closed,
            ))
            .ephemeral(true);
        if let Err(e) = CreateInteractionResponse::Message(reply)
            .execute(&self.http, (o.id, o.token))
            .await
        {
            tracing::warn!(error = %e, "interaction reply failed");
        }
        false
    }

    /// Leaves `guild` when it is not allowed and `leave_unlisted` is set.
    pub(super) async fn leave_if_unlisted(&self, guild: GuildId) {
        let access = self.engine.access();
        if !access.leaves_unlisted(crate::core::model::Platform::Discord)
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

fn role_ids(roles: &[RoleId]) -> Vec<u64> {
    roles.iter().map(|r| r.get()).collect()
}

/// Who sent an interaction, from where: the same fields of the three kinds a user can send.
struct Origin<'a> {
    id: InteractionId,
    token: &'a str,
    roles: Vec<u64>,
    user: u64,
    channel: u64,
    guild: Option<u64>,
    locale: &'a str,
    guild_locale: Option<&'a str>,
}

impl<'a> Origin<'a> {
    fn of(interaction: &'a Interaction) -> Option<Self> {
        macro_rules! origin {
            ($i:expr, $member:expr) => {
                Origin {
                    id: $i.id,
                    token: &$i.token,
                    roles: $member.map_or_else(Vec::new, |m| role_ids(&m.roles)),
                    user: $i.user.id.get(),
                    channel: $i.channel_id.get(),
                    guild: $i.guild_id.map(|g| g.get()),
                    locale: &$i.locale,
                    guild_locale: $i.guild_locale.as_deref(),
                }
            };
        }
        Some(match interaction {
            Interaction::Command(i) => origin!(i, i.member.as_deref()),
            Interaction::Component(i) => origin!(i, i.member.as_ref()),
            Interaction::Modal(i) => origin!(i, i.member.as_ref()),
            _ => return None,
        })
    }
}

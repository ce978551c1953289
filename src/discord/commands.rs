//! Application commands: registration, `/quota` and `/quota-admin`.

use serenity::all::{
    Command, CommandInteraction, CommandOptionType, CommandType, CreateCommand,
    CreateCommandOption, GuildId, Permissions, ResolvedOption, ResolvedValue,
};

use super::intake::ephemeral;
use super::{Discord, group_of};
use crate::core::quota::{Platform, UserRef};
use crate::messages::{self, Lang};

fn definitions() -> Vec<CreateCommand> {
    let edit = CreateCommand::new("edit")
        .description("Edit an image with Qwen-Image-Edit")
        .description_localized("zh-CN", "用通义千问编辑图片")
        .add_option(
            CreateCommandOption::new(CommandOptionType::String, "prompt", "What should change")
                .required(true)
                .max_length(800),
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
                .max_length(500),
        )
        .add_option(
            CreateCommandOption::new(CommandOptionType::Integer, "seed", "Seed")
                .min_int_value(0)
                .max_int_value(2_147_483_647),
        )
        .add_option(
            CreateCommandOption::new(CommandOptionType::Integer, "count", "How many results")
                .min_int_value(1)
                .max_int_value(6),
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
    super::intake::lang_of(&cmd.locale, cmd.guild_locale.as_deref())
}

pub async fn quota(dc: &Discord, cmd: &CommandInteraction) {
    let user = UserRef::new(Platform::Discord, cmd.user.id.get().to_string());
    let guild = group_of(cmd.guild_id);
    let text = match dc.engine.quotas().show_in(&user, guild.as_deref()).await {
        Ok(q) => messages::quota_status_with(lang(cmd), &q, &messages::discord_time),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the quota");
            messages::rejection(lang(cmd), &crate::core::error::Rejection::Internal)
        }
    };
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
        _ if dc.admin_ids.contains(&cmd.user.id.get()) => None,
        Some(guild) if allowed => Some(guild),
        _ => return ephemeral(dc, cmd, &messages::admin::refused_discord(lang)).await,
    };
    let scope = scope.as_deref();
    let options = cmd.data.options();
    let Some(ResolvedOption {
        name,
        value: ResolvedValue::SubCommand(args),
        ..
    }) = options.first()
    else {
        return ephemeral(dc, cmd, &messages::admin::usage(lang)).await;
    };
    let target = args.iter().find_map(|o| match o.value {
        ResolvedValue::User(u, _) => Some(UserRef::new(Platform::Discord, u.id.get().to_string())),
        _ => None,
    });
    let limit = args.iter().find_map(|o| match o.value {
        ResolvedValue::Integer(n) => u32::try_from(n).ok(),
        _ => None,
    });
    let quotas = dc.engine.quotas();
    let result = match (*name, target, limit) {
        ("set", Some(user), Some(limit)) => quotas
            .set_limit_in(&user, scope, Some(limit))
            .await
            .map(|_| messages::admin::limit_set_in(lang, scope, &user.id, limit)),
        // Forgiving usage spends the operator's money: only operators may.
        ("reset", Some(_), _) if scope.is_some() => Ok(messages::admin::reset_operators_only(lang)),
        ("reset", Some(user), _) => quotas
            .reset(&user)
            .await
            .map(|_| messages::admin::reset(lang, &user.id)),
        ("block", Some(user), _) => quotas
            .set_blocked_in(&user, scope, true)
            .await
            .map(|_| messages::admin::blocked(lang, &user.id, true)),
        ("unblock", Some(user), _) => quotas
            .set_blocked_in(&user, scope, false)
            .await
            .map(|_| messages::admin::blocked(lang, &user.id, false)),
        ("usage", _, _) => usage(dc, scope, lang).await,
        _ => Ok(messages::admin::usage(lang)),
    };
    let text = result.unwrap_or_else(|e| {
        tracing::error!(error = %e, "admin command failed");
        messages::rejection(lang, &crate::core::error::Rejection::Internal)
    });
    ephemeral(dc, cmd, &text).await;
}

/// The top users of the window in this server.
async fn usage(
    dc: &Discord,
    scope: Option<&str>,
    lang: Lang,
) -> Result<String, crate::core::quota::StoreError> {
    let quotas = dc.engine.quotas();
    let (since, rows) = quotas.top_users(Platform::Discord, scope, 20).await?;
    let since = messages::discord_time(since);
    Ok(messages::admin::usage_report(lang, &since, &rows, |id| {
        format!("<@{id}>")
    }))
}

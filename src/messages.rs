//! Every sentence a user reads, in English and Chinese. Changing wording never touches logic.

use chrono::{DateTime, Utc};

use crate::core::command::{CommandError, MAX_NEGATIVE_CHARS, MAX_PROMPT_CHARS};
use crate::core::error::{Failure, FailureReason, Rejection};
use crate::core::image::ImageRejection;
use crate::core::ports::model::{BackendError, OperatorProblem};
use crate::core::quota::QuotaRejection;

pub use crate::core::model::Lang;

fn pick(lang: Lang, en: String, zh: String) -> String {
    match lang {
        Lang::En => en,
        Lang::Zh => zh,
    }
}

/// A point in time as users read it.
pub fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

const NOTHING_CHARGED_EN: &str = "Nothing was charged.";
const NOTHING_CHARGED_ZH: &str = "未扣除额度。";

/// Why a request was turned away (nothing was charged).
pub fn rejection(lang: Lang, r: &Rejection) -> String {
    rejection_with(lang, r, &when)
}

/// Like [`rejection`], with times written by `at` (Discord shows `<t:UNIX:R>` natively).
pub fn rejection_with(lang: Lang, r: &Rejection, at: &dyn Fn(DateTime<Utc>) -> String) -> String {
    let (en, zh) = match r {
        Rejection::Command(e) => command(e),
        Rejection::NoImage => (
            "No image: send a photo with /edit in its caption, or reply /edit … to a photo.".into(),
            "没有图片：发送带 /edit 说明的图片，或回复一张图片并写 /edit …。".into(),
        ),
        Rejection::TooManyImages(n) => (
            format!("At most 3 images per edit (got {n})."),
            format!("每次编辑最多 3 张图片（收到 {n} 张）。"),
        ),
        Rejection::CountNotSupported { max } => (
            format!("This model makes at most {max} image(s) per edit; lower --n."),
            format!("当前模型每次最多生成 {max} 张图片，请减小 --n。"),
        ),
        Rejection::SizeNotSupported => (
            "This model makes images at the input's size only; leave out --size.".into(),
            "当前模型只按输入图片的尺寸生成，请去掉 --size。".into(),
        ),
        Rejection::SizeOutOfRange { min, max } => (
            format!(
                "Each side of --size must be from {min} to {max} pixels, e.g. --size 1024x1536."
            ),
            format!("--size 的每条边必须在 {min} 到 {max} 像素之间，例如 --size 1024x1536。"),
        ),
        Rejection::Image(e) => image(e),
        Rejection::Quota(q) => quota(q, at),
        Rejection::TooManyInFlight { max } => in_flight(*max),
        Rejection::QueueFull => busy(),
        Rejection::ShuttingDown => (
            "The bot is restarting. Try again in a minute.".into(),
            "机器人正在重启，请稍后再试。".into(),
        ),
        Rejection::Internal => (
            "An internal error occurred. Try again later.".into(),
            "发生内部错误，请稍后再试。".into(),
        ),
    };
    pick(
        lang,
        format!("{en} {NOTHING_CHARGED_EN}"),
        format!("{zh}{NOTHING_CHARGED_ZH}"),
    )
}

fn command(e: &CommandError) -> (String, String) {
    match e {
        CommandError::EmptyPrompt => (
            "Say what to change, e.g. /edit make it night".into(),
            "请写明要修改的内容，例如 /edit 把天空变成夜晚".into(),
        ),
        CommandError::UnknownFlag(f) => (
            format!("Unknown option {f}. Options: --no TEXT, --seed N, --n N, --size WxH."),
            format!("未知选项 {f}。可用选项：--no 文本、--seed 数字、--n 数量、--size 宽x高。"),
        ),
        CommandError::MissingValue(f) => (
            format!("Option {f} needs a value."),
            format!("选项 {f} 需要一个值。"),
        ),
        CommandError::BadSeed(v) => (
            format!("--seed must be a whole number from 0 to 2147483647, not {v:?}."),
            format!("--seed 必须是 0 到 2147483647 之间的整数，而不是 {v:?}。"),
        ),
        CommandError::BadCount(v) => (
            format!("--n must be a whole number from 1 to 6, not {v:?}."),
            format!("--n 必须是 1 到 6 之间的整数，而不是 {v:?}。"),
        ),
        CommandError::BadSize(v) => (
            format!("--size must be WIDTHxHEIGHT, e.g. --size 1024x1536, not {v:?}."),
            format!("--size 的格式是 宽x高，例如 --size 1024x1536，而不是 {v:?}。"),
        ),
        CommandError::NegativeTooLong => (
            format!("The --no text is longer than {MAX_NEGATIVE_CHARS} characters."),
            format!("--no 的内容超过 {MAX_NEGATIVE_CHARS} 个字符。"),
        ),
    }
}

fn image(e: &ImageRejection) -> (String, String) {
    match e {
        ImageRejection::Empty => ("The file is empty.".into(), "文件是空的。".into()),
        ImageRejection::NotAnImage => (
            "That file is not an image I can read (JPEG, PNG, WEBP, GIF, BMP, TIFF).".into(),
            "无法识别该文件（支持 JPEG、PNG、WEBP、GIF、BMP、TIFF）。".into(),
        ),
        ImageRejection::Unsupported(kind) => (
            format!("{kind} images are not supported; send a JPEG or PNG."),
            format!("不支持 {kind} 图片，请发送 JPEG 或 PNG。"),
        ),
        ImageRejection::FileTooBig { limit_mb } => (
            format!("The image is larger than {limit_mb} MB."),
            format!("图片超过 {limit_mb} MB。"),
        ),
        ImageRejection::TooManyPixels { width, height } => (
            format!("The image is too large to process ({width}×{height} pixels)."),
            format!("图片过大（{width}×{height} 像素），无法处理。"),
        ),
        ImageRejection::UnsupportedFeature(feature) => (
            format!("This image uses something I cannot read ({feature}); send it as JPEG or PNG."),
            format!("该图片使用了无法读取的特性（{feature}），请改用 JPEG 或 PNG 发送。"),
        ),
        ImageRejection::Corrupt => (
            "The image is damaged or incomplete.".into(),
            "图片已损坏或不完整。".into(),
        ),
        ImageRejection::BadAspect { width, height } => (
            format!(
                "A {width}×{height} image is too long and narrow for the model (sides must fit 384–3072 px)."
            ),
            format!("{width}×{height} 的图片过于细长，无法适配模型要求（每边 384–3072 像素）。"),
        ),
    }
}

fn in_flight(max: u32) -> (String, String) {
    (
        format!("You already have {max} edits in progress. Wait for one to finish."),
        format!("你已有 {max} 个编辑在进行中，请等待完成后再试。"),
    )
}

fn busy() -> (String, String) {
    (
        "The bot is busy right now. Try again in a few minutes.".into(),
        "机器人当前繁忙，请几分钟后再试。".into(),
    )
}

fn quota(q: &QuotaRejection, when: &dyn Fn(DateTime<Utc>) -> String) -> (String, String) {
    match q {
        QuotaRejection::TooManyInFlight { max } => in_flight(*max),
        QuotaRejection::QueueFull => busy(),
        QuotaRejection::Duplicate => (
            "This request was already accepted.".into(),
            "该请求已被接受。".into(),
        ),
        QuotaRejection::Blocked => (
            "You are not allowed to use this bot here.".into(),
            "你已被禁止在此使用本机器人。".into(),
        ),
        QuotaRejection::Disabled => (
            "Editing is turned off here.".into(),
            "此处未开放编辑功能。".into(),
        ),
        QuotaRejection::User {
            used,
            limit,
            resets_at,
        } => (
            format!(
                "You have used {used} of your {limit} edits. More from {}.",
                when(*resets_at)
            ),
            format!(
                "你已用完 {limit} 次中的 {used} 次编辑，{} 后恢复。",
                when(*resets_at)
            ),
        ),
        QuotaRejection::Chat { limit, resets_at } => (
            format!(
                "This chat has used all {limit} edits. More from {}.",
                when(*resets_at)
            ),
            format!("本群的 {limit} 次编辑已用完，{} 后恢复。", when(*resets_at)),
        ),
        QuotaRejection::Global { resets_at } => (
            format!(
                "The bot has reached its daily limit. More from {}.",
                when(*resets_at)
            ),
            format!("机器人今日额度已用完，{} 后恢复。", when(*resets_at)),
        ),
    }
}

/// Why an accepted job produced nothing, and whether the quota came back.
pub fn failure(lang: Lang, f: &Failure) -> String {
    let (en, zh) = reason(&f.reason);
    let (en_q, zh_q) = if let FailureReason::ChatRefused(_) = f.reason {
        (
            "The images were made, so they count against your quota.",
            "图片已生成，因此计入你的额度。",
        )
    } else if f.refunded {
        ("Your quota was refunded.", "额度已退还。")
    } else {
        (
            "Your quota could not be refunded; an admin can reset it.",
            "额度未能退还，可联系管理员重置。",
        )
    };
    pick(lang, format!("{en} {en_q}"), format!("{zh}{zh_q}"))
}

/// What went wrong, without a word on quota (the CLI has none).
pub fn failure_reason(lang: Lang, r: &FailureReason) -> String {
    let (en, zh) = reason(r);
    pick(lang, en, zh)
}

fn reason(r: &FailureReason) -> (String, String) {
    match r {
        FailureReason::Image(e) => image(e),
        FailureReason::Backend(e) => backend(e),
        FailureReason::Fetch(_) => (
            "I could not download your image from the chat.".into(),
            "无法从聊天中下载你的图片。".into(),
        ),
        FailureReason::Delivery(_) => (
            "The result could not be posted here.".into(),
            "结果无法发送到这里。".into(),
        ),
        FailureReason::ChatRefused(_) => (
            "This chat did not let me post the result (the bot may be blocked or lack the right to send photos here).".into(),
            "此聊天不允许我发送结果（机器人可能被屏蔽，或没有发送图片的权限）。".into(),
        ),
        FailureReason::Earlier(code) => (
            format!("Your edit failed ({code})."),
            format!("编辑失败（{code}）。"),
        ),
        FailureReason::Interrupted => (
            "The edit was cut off by a restart twice, so it was given up.".into(),
            "编辑两次因重启而中断，已放弃。".into(),
        ),
        FailureReason::Internal => (
            "An internal error occurred.".into(),
            "发生内部错误。".into(),
        ),
    }
}

fn backend(e: &BackendError) -> (String, String) {
    match e {
        BackendError::Moderated { .. } => (
            "The model refused this image or instruction (content policy).".into(),
            "模型拒绝了该图片或指令（内容安全）。".into(),
        ),
        BackendError::Rejected { .. } => (
            "The model could not process this request.".into(),
            "模型无法处理该请求。".into(),
        ),
        BackendError::Timeout(_) => (
            "The model took too long to answer.".into(),
            "模型响应超时。".into(),
        ),
        BackendError::Operator { problem, .. } => operator(*problem),
        BackendError::Throttled { .. } => (
            "The image service is busy (rate limit). Try again in a minute.".into(),
            "图像服务繁忙（限流），请一分钟后再试。".into(),
        ),
        BackendError::Malformed(_) | BackendError::Download(_) => (
            "The image service sent back an unusable answer. Try again.".into(),
            "图像服务返回了无法使用的结果，请重试。".into(),
        ),
        BackendError::Unavailable { .. } | BackendError::Network(_) => (
            "The image service is unavailable right now. Try again later.".into(),
            "图像服务暂时不可用，请稍后再试。".into(),
        ),
    }
}

/// Problems only the bot's operator can fix (key, billing, model, permission).
fn operator(problem: OperatorProblem) -> (String, String) {
    let (en, zh) = match problem {
        OperatorProblem::Key => (
            "The image service refused the bot's API key.",
            "图像服务拒绝了机器人的 API 密钥。",
        ),
        OperatorProblem::Billing => (
            "The bot's image service account is out of credit.",
            "机器人的图像服务账户已欠费。",
        ),
        OperatorProblem::Allowance => (
            "The bot's image service allowance is used up.",
            "机器人的图像服务额度已用完。",
        ),
        OperatorProblem::Model => (
            "The configured model is not available.",
            "所配置的模型不可用。",
        ),
        OperatorProblem::Permission => (
            "The bot is not allowed to use the image service.",
            "机器人无权使用图像服务。",
        ),
    };
    (
        format!("{en} Please tell the bot's operator."),
        format!("{zh}请告知机器人的管理员。"),
    )
}

/// Told when a prompt was cut to the model's limit.
pub fn truncated(lang: Lang) -> String {
    pick(
        lang,
        format!("(Your instruction was cut to {MAX_PROMPT_CHARS} characters.)"),
        format!("（指令已截断为 {MAX_PROMPT_CHARS} 个字符。）"),
    )
}

/// A request where the operator has not enabled the bot (said at most once an hour there).
pub fn not_enabled(lang: Lang, closed: crate::core::access::Closed) -> String {
    use crate::core::access::Closed;
    let (en, zh) = match closed {
        Closed::Place | Closed::Channel => {
            ("This bot is not enabled here.", "本机器人未在此处启用。")
        }
        Closed::Role => (
            "This bot is enabled here only for members with certain roles.",
            "本机器人在此处仅对特定身份组的成员开放。",
        ),
        Closed::Private => (
            "This bot does not take requests in private chats.",
            "本机器人不接受私聊请求。",
        ),
    };
    pick(lang, en.into(), zh.into())
}

/// `/help` and `/start`.
pub fn help(lang: Lang) -> String {
    match lang {
        Lang::En => "I edit images with Qwen-Image-Edit.\n\n\
            • Send a photo with the caption /edit make it night\n\
            • or reply /edit add a red hat to any photo\n\
            • or send an album (up to 3 photos) with /edit … in the caption\n\
            • in a private chat, any captioned photo is an edit\n\n\
            Options: --no TEXT (what to avoid), --seed N, --n N (how many results), \
            --size WxH (output size)\n\
            Example: /edit turn it into a watercolor --no text --n 2\n\n\
            /quota shows your edits left. Admins: /quota set N, /quota reset, /block, /unblock \
            (reply to the user or give their id), /usage."
            .into(),
        Lang::Zh => "我可以用通义千问图像编辑模型修改图片。\n\n\
            • 发送图片并附上说明：/edit 把天空变成夜晚\n\
            • 或回复任意图片：/edit 给他戴一顶红帽子\n\
            • 或发送相册（最多 3 张），在说明里写 /edit …\n\
            • 私聊时，带说明的图片都会被当作编辑请求\n\n\
            选项：--no 文本（不想要的内容）、--seed 数字、--n 数量（生成几张）、\
            --size 宽x高（输出尺寸）\n\
            例如：/edit 变成水彩画 --no 文字 --n 2\n\n\
            /quota 查看剩余次数。管理员：/quota set N、/quota reset、/block、/unblock\
            （回复该用户或写出其 ID）、/usage。"
            .into(),
    }
}

/// `/quota`: what the user has left.
pub fn quota_status(lang: Lang, q: &crate::core::quota::UserQuota) -> String {
    quota_status_with(lang, q, &when)
}

/// Like [`quota_status`], with times written by `at`.
pub fn quota_status_with(
    lang: Lang,
    q: &crate::core::quota::UserQuota,
    when: &dyn Fn(DateTime<Utc>) -> String,
) -> String {
    if q.blocked {
        let (en, zh) = quota(&QuotaRejection::Blocked, &when);
        return pick(lang, en, zh);
    }
    pick(
        lang,
        format!(
            "You have {} of {} edits left. The count resets {}.",
            q.remaining(),
            q.limit,
            when(q.resets_at)
        ),
        format!(
            "你还剩 {}/{} 次编辑，{} 重置。",
            q.remaining(),
            q.limit,
            when(q.resets_at)
        ),
    )
}

/// Caption under a result: a short echo of the prompt and what is left.
pub fn result_caption(lang: Lang, prompt: &str, remaining: u32, truncated: bool) -> String {
    let echo = echo(prompt);
    let mut text = pick(
        lang,
        format!("“{echo}” · {remaining} edits left"),
        format!("“{echo}” · 剩余 {remaining} 次"),
    );
    if truncated {
        text.push('\n');
        text.push_str(&self::truncated(lang));
    }
    text
}

/// Status while waiting.
pub fn queued(lang: Lang, ahead: usize) -> String {
    if ahead == 0 {
        return pick(
            lang,
            "⏳ In the queue: you are next.".into(),
            "⏳ 排队中：下一个就是你。".into(),
        );
    }
    pick(
        lang,
        format!("⏳ In the queue: {ahead} ahead of you."),
        format!("⏳ 排队中：前面还有 {ahead} 个。"),
    )
}

/// A job's placeholder text: the job's `state` (waiting, working, or why it failed) over the
/// prompt it carries out (shortened as under a result).
pub fn placeholder(prompt: &str, state: &str) -> String {
    format!("{state}\n“{}”", echo(prompt))
}

/// The prompt as a caption quotes it: its first 120 characters.
fn echo(prompt: &str) -> String {
    let mut echo: String = prompt.chars().take(120).collect();
    if prompt.chars().count() > 120 {
        echo.push('…');
    }
    echo
}

/// Status once a worker has the job.
pub fn working(lang: Lang) -> String {
    pick(lang, "🎨 Editing…".into(), "🎨 正在编辑…".into())
}

/// Status of a running job whose service reports how far it is.
pub fn working_progress(lang: Lang, percent: u8) -> String {
    pick(
        lang,
        format!("🎨 Editing… {percent}%"),
        format!("🎨 正在编辑… {percent}%"),
    )
}

/// A private-chat photo with no caption.
pub fn caption_hint(lang: Lang) -> String {
    pick(
        lang,
        "Add a caption saying what to change, e.g. “make it night”.".into(),
        "请在图片说明里写明要修改的内容，例如“把天空变成夜晚”。".into(),
    )
}

/// 🔁 on a job that is no longer known.
pub fn again_expired(lang: Lang) -> String {
    pick(
        lang,
        "This button has expired; send the request again.".into(),
        "该按钮已过期，请重新发送请求。".into(),
    )
}

/// 🔁 accepted.
pub fn again_started(lang: Lang) -> String {
    pick(
        lang,
        "🔁 Again, with a new seed.".into(),
        "🔁 换个随机种子再来一次。".into(),
    )
}

/// Admin commands.
pub mod admin {
    use super::{Lang, pick};

    pub fn refused_discord(lang: Lang) -> String {
        pick(
            lang,
            "You need the Manage Server permission for that.".into(),
            "需要“管理服务器”权限才能执行此操作。".into(),
        )
    }

    pub fn refused(lang: Lang) -> String {
        pick(
            lang,
            "Only chat admins can do that.".into(),
            "只有群管理员可以执行此操作。".into(),
        )
    }

    pub fn usage(lang: Lang) -> String {
        pick(
            lang,
            "Reply to the user's message, or give their numeric id: /quota set 10, /quota set 12345 10, /quota reset, /block, /unblock."
                .into(),
            "请回复该用户的消息，或写出其数字 ID：/quota set 10、/quota set 12345 10、/quota reset、/block、/unblock。"
                .into(),
        )
    }

    pub fn limit_set(lang: Lang, user: &str, limit: u32) -> String {
        pick(
            lang,
            format!("User {user} may now make {limit} edits per window."),
            format!("用户 {user} 每个周期可编辑 {limit} 次。"),
        )
    }

    /// What a `/quota set` did: bot-wide (an operator's) or in this chat only (a chat admin's).
    pub fn limit_set_in(lang: Lang, chat: Option<&str>, user: &str, limit: u32) -> String {
        match chat {
            None => limit_set(lang, user, limit),
            Some(_) => limit_set_in_chat(lang, user, limit),
        }
    }

    /// A chat admin's limit: it only restricts, in this chat.
    pub fn limit_set_in_chat(lang: Lang, user: &str, limit: u32) -> String {
        pick(
            lang,
            format!(
                "User {user} may now make at most {limit} edits per window here (the bot-wide limit still applies)."
            ),
            format!("用户 {user} 在此每个周期最多可编辑 {limit} 次（机器人的总额度仍然适用）。"),
        )
    }

    /// A chat admin tried to forgive usage: only the operator may.
    pub fn reset_operators_only(lang: Lang) -> String {
        pick(
            lang,
            "Only the bot's operator can reset usage; you can lower a user's limit here or block them."
                .into(),
            "只有机器人的运营者可以重置用量；你可以在此降低用户的额度或屏蔽用户。".into(),
        )
    }

    pub fn reset(lang: Lang, user: &str) -> String {
        pick(
            lang,
            format!("Usage of user {user} was reset."),
            format!("已重置用户 {user} 的用量。"),
        )
    }

    pub fn blocked(lang: Lang, user: &str, blocked: bool) -> String {
        match (blocked, lang) {
            (true, Lang::En) => format!("User {user} is blocked."),
            (false, Lang::En) => format!("User {user} is unblocked."),
            (true, Lang::Zh) => format!("已禁止用户 {user}。"),
            (false, Lang::Zh) => format!("已解除对用户 {user} 的禁止。"),
        }
    }

    pub fn usage_header(lang: Lang, since: &str) -> String {
        pick(
            lang,
            format!("Images delivered since {since}:"),
            format!("自 {since} 起交付的图片："),
        )
    }

    pub fn usage_empty(lang: Lang) -> String {
        pick(lang, "No edits yet.".into(), "暂无编辑记录。".into())
    }

    /// The `/usage` report: one line per user (`who` writes the user id as the platform shows
    /// it), or "no edits".
    pub fn usage_report(
        lang: Lang,
        since: &str,
        rows: &[crate::core::ports::store::ReportRow],
        who: impl Fn(&str) -> String,
    ) -> String {
        if rows.is_empty() {
            return usage_empty(lang);
        }
        let mut out = usage_header(lang, since);
        for r in rows {
            let user = who(&r.key);
            out.push('\n');
            out.push_str(&match lang {
                Lang::En => format!(
                    "{user} — {} ({} jobs, {} failed)",
                    r.images, r.jobs, r.failed
                ),
                Lang::Zh => format!(
                    "{user} — {}（{} 个任务，{} 个失败）",
                    r.images, r.jobs, r.failed
                ),
            });
        }
        out
    }
}

/// A time as a Discord relative timestamp (`in 3 hours`, localised by the client).
pub fn discord_time(t: DateTime<Utc>) -> String {
    format!("<t:{}:R>", t.timestamp())
}

/// Status while waiting, with an expected start written by `time`.
pub fn queued_eta(
    lang: Lang,
    ahead: usize,
    eta: DateTime<Utc>,
    time: fn(DateTime<Utc>) -> String,
) -> String {
    let t = time(eta);
    pick(
        lang,
        format!("⏳ In the queue: {ahead} ahead of you, expected to start {t}."),
        format!("⏳ 排队中：前面还有 {ahead} 个，预计 {t} 开始。"),
    )
}

/// Posted above a result whose image had to be compressed to fit the upload limit.
pub fn compressed(lang: Lang) -> String {
    pick(
        lang,
        "(The image was compressed to fit this server's upload limit.)".into(),
        "（图片已压缩以符合本服务器的上传限制。）".into(),
    )
}

/// The Discord help text.
pub fn discord_help(lang: Lang) -> String {
    pick(
        lang,
        "I edit images with Qwen-Image-Edit.\n\n\
         • `/edit prompt:make it night` with an image (or without: I take the latest image here)\n\
         • reply to a message with an image: `/edit make it night`\n\
         • or mention me: `@bot edit make it night`\n\
         • Apps → **Edit image** on any message with an image\n\n\
         Options: `--no TEXT`, `--seed N`, `--n N`, `--size WxH` (in text), or the slash \
         command's fields.\n\
         `/quota` shows your edits left; admins (Manage Server) use `/quota-admin`."
            .into(),
        "我可以用通义千问图像编辑模型修改图片。\n\n\
         • `/edit prompt:把天空变成夜晚` 并附上图片（不附图时使用本频道最新的图片）\n\
         • 回复带图片的消息：`/edit 把天空变成夜晚`\n\
         • 或提及我：`@bot edit 把天空变成夜晚`\n\
         • 在任意带图消息上选择 应用 → **Edit image**\n\n\
         选项：`--no 文本`、`--seed 数字`、`--n 数量`、`--size 宽x高`，或斜杠命令的字段。\n\
         `/quota` 查看剩余次数；管理员（管理服务器权限）使用 `/quota-admin`。"
            .into(),
    )
}

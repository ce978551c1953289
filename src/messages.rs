//! Every sentence a user reads, in English and Chinese. Changing wording never touches logic.

use chrono::{DateTime, Utc};

use crate::core::command::{CommandError, MAX_NEGATIVE_CHARS, MAX_PROMPT_CHARS};
use crate::core::edit::BackendError;
use crate::core::error::{Failure, FailureReason, Rejection};
use crate::core::image::ImageRejection;
use crate::core::quota::QuotaRejection;

/// The reader's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Lang {
    #[default]
    En,
    Zh,
}

impl Lang {
    /// Chinese for `zh*` language codes and locales, English otherwise.
    pub fn from_code(code: Option<&str>) -> Self {
        match code {
            Some(c) if c.to_ascii_lowercase().starts_with("zh") => Lang::Zh,
            _ => Lang::En,
        }
    }
}

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
        Rejection::Image(e) => image(e),
        Rejection::Quota(q) => quota(q),
        Rejection::TooManyInFlight { max } => (
            format!("You already have {max} edits in progress. Wait for one to finish."),
            format!("你已有 {max} 个编辑在进行中，请等待完成后再试。"),
        ),
        Rejection::QueueFull => (
            "The bot is busy right now. Try again in a few minutes.".into(),
            "机器人当前繁忙，请几分钟后再试。".into(),
        ),
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
            format!("Unknown option {f}. Options: --no TEXT, --seed N, --n N."),
            format!("未知选项 {f}。可用选项：--no 文本、--seed 数字、--n 数量。"),
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
        ImageRejection::TooManyPixels { .. } => (
            "The image has too many pixels to process.".into(),
            "图片像素过多，无法处理。".into(),
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

fn quota(q: &QuotaRejection) -> (String, String) {
    match q {
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
    let (en, zh) = match &f.reason {
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
        FailureReason::Internal => (
            "An internal error occurred.".into(),
            "发生内部错误。".into(),
        ),
    };
    let (en_q, zh_q) = if f.refunded {
        ("Your quota was refunded.", "额度已退还。")
    } else {
        (
            "Your quota could not be refunded; an admin can reset it.",
            "额度未能退还，可联系管理员重置。",
        )
    };
    pick(lang, format!("{en} {en_q}"), format!("{zh}{zh_q}"))
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
        _ => (
            "The image service is unavailable right now. Try again later.".into(),
            "图像服务暂时不可用，请稍后再试。".into(),
        ),
    }
}

/// Told when a prompt was cut to the model's limit.
pub fn truncated(lang: Lang) -> String {
    pick(
        lang,
        format!("(Your instruction was cut to {MAX_PROMPT_CHARS} characters.)"),
        format!("（指令已截断为 {MAX_PROMPT_CHARS} 个字符。）"),
    )
}

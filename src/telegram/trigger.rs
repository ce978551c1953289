//! Which messages are edit requests, and which images they point at (docs/PRODUCT.md §4.1). Pure.

use teloxide::types::{Message, MessageId};

/// Largest file a bot may download from the cloud Bot API.
pub const MAX_DOWNLOAD_BYTES: u32 = 20 * 1024 * 1024;

/// An image a message carries: its file id and reported size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub file_id: String,
    pub size: u32,
    /// A photo, or a document declared as an image (or as unknown bytes).
    pub declared: bool,
}

/// The image of a message: the largest photo size, or any document (sniffed later, not trusted
/// by MIME type or name).
pub fn image_of(msg: &Message) -> Option<ImageRef> {
    if let Some(sizes) = msg.photo() {
        let best = sizes
            .iter()
            .max_by_key(|p| (u64::from(p.width) * u64::from(p.height), p.file.size))?;
        return Some(ImageRef {
            file_id: best.file.id.to_string(),
            size: best.file.size,
            declared: true,
        });
    }
    let doc = msg.document()?;
    let declared = doc
        .mime_type
        .as_ref()
        .is_none_or(|m| m.type_() == "image" || m.essence_str() == "application/octet-stream");
    Some(ImageRef {
        file_id: doc.file.id.to_string(),
        size: doc.file.size,
        declared,
    })
}

/// What an edit request is made of, before parsing the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The caption or text holding the instruction.
    pub text: String,
    /// Images in order (the message's own, else the replied-to message's).
    pub images: Vec<ImageRef>,
    /// Whether the text may omit `/edit` (a captioned photo in a private chat).
    pub command_optional: bool,
    /// The message to answer.
    pub reply_to: MessageId,
}

/// Reads a single (non-album) message. `None`: nothing here for the editor.
pub fn candidate(msg: &Message) -> Option<Candidate> {
    let own = image_of(msg);
    let text = msg.caption().or(msg.text())?.to_owned();
    let images: Vec<ImageRef> = match &own {
        Some(img) => vec![img.clone()],
        None => msg
            .reply_to_message()
            .and_then(image_of)
            .into_iter()
            .collect(),
    };
    Some(Candidate {
        text,
        images,
        // Without `/edit`, only what looks like an image is taken (not every captioned file).
        command_optional: msg.chat.is_private() && own.as_ref().is_some_and(|i| i.declared),
        reply_to: msg.id,
    })
}

/// The first word of a command text without the leading `/` and `@bot` suffix, and whether it
/// is addressed to us (`/cmd@OtherBot` is not).
pub fn command_word<'a>(text: &'a str, bot_username: &str) -> Option<(String, &'a str)> {
    let rest = text.trim_start().strip_prefix('/')?;
    let (word, tail) = match rest.find(char::is_whitespace) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (name, target) = match word.split_once('@') {
        Some((n, t)) => (n, Some(t)),
        None => (word, None),
    };
    if target.is_some_and(|t| !t.eq_ignore_ascii_case(bot_username)) {
        return None;
    }
    Some((name.to_ascii_lowercase(), tail.trim()))
}

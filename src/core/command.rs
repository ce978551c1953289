//! Caption text → [`EditCommand`] (docs/PRODUCT.md §4.3). Pure: no I/O, never panics.
//!
//! `Ok(None)` means "not for us" (no command where one is required, another bot's command);
//! `Err` is a usage error whose text the user sees.

/// Longest prompt sent to the model; longer prompts are cut and the user is told.
pub const MAX_PROMPT_CHARS: usize = 800;
/// Longest negative prompt accepted.
pub const MAX_NEGATIVE_CHARS: usize = 500;
/// Largest seed the API accepts.
pub const MAX_SEED: u32 = 2_147_483_647;
/// Most images one request may ask for (plus/max models).
pub const MAX_N: u8 = 6;

/// One edit instruction, validated.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EditCommand {
    /// The instruction, at most [`MAX_PROMPT_CHARS`] characters, never empty.
    pub prompt: String,
    /// True when the user's prompt was longer and has been cut.
    pub truncated: bool,
    pub negative: Option<String>,
    pub seed: Option<u32>,
    /// Images asked for; `None` means the default (1).
    pub n: Option<u8>,
    /// Output size; `None` means the model's default (about the input's size). Whether the
    /// model takes a size, and which, is the engine's to check (`ModelCaps::check_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
}

/// An output size in pixels, written `WxH` (also `W*H` or `W×H`) by users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

impl Size {
    /// Reads `1024x1536`, `1024*1536` or `1024×1536`.
    pub fn parse(value: &str) -> Result<Self, CommandError> {
        let bad = || CommandError::BadSize(shown(value));
        let (w, h) = value.split_once(['x', 'X', '*', '×']).ok_or_else(bad)?;
        let side = |s: &str| s.trim().parse::<u32>().ok().filter(|v| *v > 0);
        match (side(w), side(h)) {
            (Some(width), Some(height)) => Ok(Size { width, height }),
            _ => Err(bad()),
        }
    }

    /// As DashScope takes it: `"W*H"`.
    pub fn wire(&self) -> String {
        format!("{}*{}", self.width, self.height)
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

impl EditCommand {
    /// Images this command costs.
    pub fn count(&self) -> u8 {
        self.n.unwrap_or(1)
    }
}

impl EditCommand {
    /// Builds a command from separate parts (the CLI, Discord slash options) under the same
    /// rules as a caption.
    pub fn from_parts(
        prompt: &str,
        negative: Option<&str>,
        seed: Option<&str>,
        n: Option<&str>,
    ) -> Result<Self, CommandError> {
        let seed = seed.map(parse_seed).transpose()?;
        let n = n.map(parse_count).transpose()?;
        finish(
            prompt.to_owned(),
            negative.map(|s| s.trim().to_owned()),
            seed,
            n,
        )
    }

    /// The same command with the output size `size` (`WxH`), when given.
    pub fn with_size(mut self, size: Option<&str>) -> Result<Self, CommandError> {
        if let Some(size) = size.map(str::trim).filter(|s| !s.is_empty()) {
            self.size = Some(Size::parse(size)?);
        }
        Ok(self)
    }
}

/// How a caption is read.
#[derive(Debug, Clone, Copy, Default)]
pub struct ParseContext<'a> {
    /// Our username, for `/edit@Name`; compared without case.
    pub bot_username: Option<&'a str>,
    /// A caption without `/edit` is still an edit (Telegram private chats, Discord modals).
    pub command_optional: bool,
}

/// A usage error: what was wrong with the instruction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("the instruction is empty")]
    EmptyPrompt,
    #[error("unknown option {0}")]
    UnknownFlag(String),
    #[error("option {0} needs a value")]
    MissingValue(&'static str),
    #[error("--seed must be a whole number from 0 to {MAX_SEED}, not {0:?}")]
    BadSeed(String),
    #[error("--n must be a whole number from 1 to {MAX_N}, not {0:?}")]
    BadCount(String),
    #[error("--size must be WIDTHxHEIGHT, e.g. 1024x1536, not {0:?}")]
    BadSize(String),
    #[error("the negative prompt is longer than {MAX_NEGATIVE_CHARS} characters")]
    NegativeTooLong,
}

/// Parses a caption or message text.
pub fn parse(text: &str, ctx: ParseContext<'_>) -> Result<Option<EditCommand>, CommandError> {
    let text = text.trim_start();
    let body = match strip_command(text) {
        Some((None, rest)) => rest,
        Some((Some(target), rest)) => {
            let ours = ctx
                .bot_username
                .is_some_and(|me| me.eq_ignore_ascii_case(target));
            if !ours {
                return Ok(None);
            }
            rest
        }
        None if ctx.command_optional && !text.starts_with('/') => text,
        None => return Ok(None),
    };
    parse_body(body).map(Some)
}

/// `/edit`, `/edit@Target` followed by whitespace or the end; returns (target, rest).
fn strip_command(text: &str) -> Option<(Option<&str>, &str)> {
    let rest = text.strip_prefix('/')?;
    let (word, tail) = split_word(rest);
    let (name, target) = match word.split_once('@') {
        Some((name, target)) => (name, Some(target)),
        None => (word, None),
    };
    name.eq_ignore_ascii_case("edit").then_some((target, tail))
}

/// Splits off the first whitespace-delimited word.
fn split_word(s: &str) -> (&str, &str) {
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// The flag a word names, if it is one: `--seed`, `--seed=4`, or `—seed` (phones turn `--` into
/// an em dash). A bare `--` or `--5` is prompt text, and so is an em-dashed word that is not one
/// of our flags (`—night`).
fn as_flag(word: &str) -> Option<(&str, Option<&str>)> {
    let (name, dashed) = match word.strip_prefix("--") {
        Some(name) => (name, false),
        None => (word.strip_prefix('—')?, true),
    };
    if !name.chars().next().is_some_and(char::is_alphabetic) {
        return None;
    }
    let (name, value) = match name.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (name, None),
    };
    if dashed && flag_named(name).is_none() {
        return None;
    }
    Some((name, value))
}

#[derive(Clone, Copy)]
enum Flag {
    No,
    Seed,
    N,
    Size,
}

fn flag_named(name: &str) -> Option<Flag> {
    match name.to_ascii_lowercase().as_str() {
        "no" | "neg" | "negative" => Some(Flag::No),
        "seed" => Some(Flag::Seed),
        "n" | "count" => Some(Flag::N),
        "size" => Some(Flag::Size),
        _ => None,
    }
}

fn parse_body(body: &str) -> Result<EditCommand, CommandError> {
    let mut prompt = String::new();
    let mut negative: Option<String> = None;
    let mut seed = None;
    let mut n = None;
    let mut size = None;
    let mut rest = body;
    loop {
        let trimmed = rest.trim_start();
        if trimmed.is_empty() {
            break;
        }
        let (word, tail) = split_word(trimmed);
        let Some((name, inline)) = as_flag(word) else {
            // Keep the original spacing (newlines included) of prompt text.
            let gap = &rest[..rest.len() - trimmed.len()];
            if !prompt.is_empty() {
                prompt.push_str(gap);
            }
            prompt.push_str(word);
            rest = tail;
            continue;
        };
        let flag = flag_named(name).ok_or_else(|| CommandError::UnknownFlag(word_flag(word)))?;
        rest = tail;
        match flag {
            Flag::No => {
                let (value, after) = until_next_flag(inline, rest);
                negative = Some(value);
                rest = after;
            }
            Flag::Seed => {
                let (value, after) = one_value(inline, rest, "--seed")?;
                seed = Some(parse_seed(value)?);
                rest = after;
            }
            Flag::N => {
                let (value, after) = one_value(inline, rest, "--n")?;
                n = Some(parse_count(value)?);
                rest = after;
            }
            Flag::Size => {
                let (value, after) = one_value(inline, rest, "--size")?;
                size = Some(Size::parse(value)?);
                rest = after;
            }
        }
    }
    let mut command = finish(prompt, negative, seed, n)?;
    command.size = size;
    Ok(command)
}

fn word_flag(word: &str) -> String {
    word.split_once('=')
        .map_or(word, |(f, _)| f)
        .chars()
        .take(40)
        .collect()
}

/// The value of `--no`: everything up to the next flag word.
fn until_next_flag<'a>(inline: Option<&str>, rest: &'a str) -> (String, &'a str) {
    let mut value = inline.unwrap_or("").to_owned();
    let mut cursor = rest;
    loop {
        let trimmed = cursor.trim_start();
        let (word, tail) = split_word(trimmed);
        if word.is_empty() || as_flag(word).is_some() {
            return (value.trim().to_owned(), cursor);
        }
        if !value.is_empty() {
            value.push(' ');
        }
        value.push_str(word);
        cursor = tail;
    }
}

fn one_value<'a>(
    inline: Option<&'a str>,
    rest: &'a str,
    flag: &'static str,
) -> Result<(&'a str, &'a str), CommandError> {
    if let Some(v) = inline.filter(|v| !v.is_empty()) {
        return Ok((v, rest));
    }
    let (word, tail) = split_word(rest.trim_start());
    if word.is_empty() || as_flag(word).is_some() {
        return Err(CommandError::MissingValue(flag));
    }
    Ok((word, tail))
}

fn shown(value: &str) -> String {
    value.chars().take(20).collect()
}

fn parse_seed(value: &str) -> Result<u32, CommandError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|s| *s <= MAX_SEED)
        .ok_or_else(|| CommandError::BadSeed(shown(value)))
}

fn parse_count(value: &str) -> Result<u8, CommandError> {
    value
        .parse::<u8>()
        .ok()
        .filter(|n| (1..=MAX_N).contains(n))
        .ok_or_else(|| CommandError::BadCount(shown(value)))
}

fn finish(
    prompt: String,
    negative: Option<String>,
    seed: Option<u32>,
    n: Option<u8>,
) -> Result<EditCommand, CommandError> {
    let prompt = prompt.trim();
    if prompt.is_empty() {
        return Err(CommandError::EmptyPrompt);
    }
    let negative = negative.filter(|s| !s.is_empty());
    if negative
        .as_ref()
        .is_some_and(|s| s.chars().count() > MAX_NEGATIVE_CHARS)
    {
        return Err(CommandError::NegativeTooLong);
    }
    let truncated = prompt.chars().count() > MAX_PROMPT_CHARS;
    let prompt = if truncated {
        prompt
            .chars()
            .take(MAX_PROMPT_CHARS)
            .collect::<String>()
            .trim_end()
            .to_owned()
    } else {
        prompt.to_owned()
    };
    Ok(EditCommand {
        prompt,
        truncated,
        negative,
        seed,
        n,
        size: None,
    })
}

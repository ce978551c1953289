//! `multipart/form-data` bodies as the fakes receive them (Bot API uploads, Discord files).

/// One part: its field name, file name (for files) and bytes.
pub struct Part<'a> {
    pub name: String,
    pub filename: Option<String>,
    pub data: &'a [u8],
}

/// The boundary of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    if !content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        return None;
    }
    content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_owned())
}

/// Every named part of `body`.
pub fn parts<'a>(body: &'a [u8], boundary: &str) -> Vec<Part<'a>> {
    split_parts(body, boundary)
        .into_iter()
        .filter_map(|part| {
            let head_end = find(part, b"\r\n\r\n", 0)?;
            let head = String::from_utf8_lossy(&part[..head_end]);
            let (name, filename) = disposition(&head);
            Some(Part {
                name: name?,
                filename,
                data: &part[head_end + 4..],
            })
        })
        .collect()
}

/// The parts between `--boundary` lines, without their framing CRLFs.
fn split_parts<'a>(body: &'a [u8], boundary: &str) -> Vec<&'a [u8]> {
    let delimiter = format!("--{boundary}").into_bytes();
    let next_delimiter = [b"\r\n".as_slice(), &delimiter].concat();
    let mut parts = Vec::new();
    let Some(mut pos) = find(body, &delimiter, 0) else {
        return parts;
    };
    loop {
        let mut start = pos + delimiter.len();
        if body.get(start..).is_none_or(|rest| rest.starts_with(b"--")) {
            break;
        }
        if body[start..].starts_with(b"\r\n") {
            start += 2;
        }
        let Some(end) = find(body, &next_delimiter, start) else {
            break;
        };
        parts.push(&body[start..end]);
        pos = end + 2;
    }
    parts
}

/// (name, filename) from a part's Content-Disposition header; `filename*=utf-8''...` decoded.
fn disposition(head: &str) -> (Option<String>, Option<String>) {
    let line = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
        .unwrap_or("");
    let (mut name, mut filename) = (None, None);
    for field in line.split(';').skip(1) {
        let Some((key, value)) = field.trim().split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        match key.trim().to_ascii_lowercase().as_str() {
            "name" => name = Some(value.to_owned()),
            "filename" => filename = Some(value.to_owned()),
            "filename*" => {
                let encoded = value.split_once("''").map_or(value, |(_, v)| v);
                filename = Some(percent_decode(encoded));
            }
            _ => {}
        }
    }
    (name, filename)
}

pub fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// `%XX` sequences decoded (lossy UTF-8).
pub fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi * 16 + lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

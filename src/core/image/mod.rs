//! Input images → what the API accepts (docs/PRODUCT.md §6). Pure over bytes; no I/O.
//!
//! An image already inside the rules goes out byte-for-byte after a header-only probe. Anything
//! else is decoded under explicit limits (a decompression bomb is refused before it is
//! allocated), turned upright by its EXIF orientation, resized into range and re-encoded. The
//! decode path is CPU work: async callers run [`fit`] on a blocking thread.

use std::borrow::Cow;
use std::io::Cursor;
use std::sync::Arc;

use bytes::Bytes;
use fast_image_resize as fr;
use image::{DynamicImage, ImageDecoder, ImageEncoder, ImageReader};

use super::budget::{DecodeBudget, Reserved};
pub use super::format::Format;

mod decode;
mod encode;
mod tiff;

use decode::{as_is_ok, decode_upright, feature, normalize, reduced};
use encode::encode_within;
pub use encode::{Upload, fit_upload, jpeg};

/// What a model service takes as input. Its adapter says (`EditService::input_rules`); `fit`
/// makes nothing outside them, so no service receives an image it must reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputRules {
    pub min_side: u32,
    pub max_side: u32,
    /// The largest side worth sending: the service makes nothing larger from it (DashScope's
    /// outputs are at most 2048 px a side), so bigger pictures are reduced to it, and only
    /// pictures within it go out unchanged. A longer side is used only where a narrow picture
    /// needs it to keep its short side at `min_side`.
    pub useful_side: u32,
    /// Largest image file the service takes, in bytes before any encoding its adapter adds
    /// (DashScope's data-URI limit, turned into file bytes by its adapter).
    pub max_file_bytes: usize,
    /// Formats the service takes as they come; a picture in any other is re-encoded (JPEG or
    /// PNG, which every service takes).
    pub formats: &'static [Format],
}

/// What web image APIs take as they are (OpenAI-compatible servers, ComfyUI's `LoadImage`).
pub const WEB_FORMATS: &[Format] = &[Format::Png, Format::Jpeg, Format::WebP];

/// Every format [`sniff`] recognises.
pub const ALL_FORMATS: &[Format] = &[
    Format::Jpeg,
    Format::Png,
    Format::Gif,
    Format::Bmp,
    Format::Tiff,
    Format::WebP,
];

impl InputRules {
    /// A web image API's rules: sides from `min_side` up to the operator's
    /// `backend.max_input_side` (all of it useful), files up to `max_file_bytes`, in
    /// [`WEB_FORMATS`].
    pub fn web(min_side: u32, max_input_side: u32, max_file_bytes: usize) -> Self {
        let max_side = max_input_side.max(min_side);
        InputRules {
            min_side,
            max_side,
            useful_side: max_side,
            max_file_bytes,
            formats: WEB_FORMATS,
        }
    }

    /// No rule at all: for fitting results to a chat's upload limit, where only the decoding
    /// bounds apply.
    pub const NONE: InputRules = InputRules {
        min_side: 1,
        max_side: u32::MAX,
        useful_side: u32::MAX,
        max_file_bytes: usize::MAX,
        formats: ALL_FORMATS,
    };
}

/// The service's input rules and our decoding bounds.
#[derive(Debug, Clone)]
pub struct FitLimits {
    pub rules: InputRules,
    /// Largest file sent unchanged (smaller than the service's limit, so that a file close to
    /// it is re-encoded rather than sent as it came).
    pub passthrough_max_bytes: usize,
    /// Largest input file we look at, at all.
    pub max_input_bytes: usize,
    /// Largest picture we agree to decode, in pixels and per side.
    pub max_decode_pixels: u64,
    pub max_decode_side: u32,
    /// Decoder allocation bound.
    pub max_decode_alloc: u64,
    /// Decoding memory shared by every fit using these limits (clones share it).
    pub budget: Arc<DecodeBudget>,
}

/// The default [`DecodeBudget`]: what all fits at once may hold.
pub const DECODE_BUDGET_BYTES: u64 = 256 * 1024 * 1024;

impl FitLimits {
    /// The service's `rules` with our default decoding bounds.
    pub fn new(rules: InputRules) -> Self {
        Self {
            rules,
            passthrough_max_bytes: 7 * 1024 * 1024,
            max_input_bytes: 50 * 1024 * 1024,
            max_decode_pixels: 50_000_000,
            max_decode_side: 20_000,
            max_decode_alloc: 512 * 1024 * 1024,
            budget: Arc::new(DecodeBudget::new(DECODE_BUDGET_BYTES)),
        }
    }

    /// [`InputRules::useful_side`] within the service's own bounds.
    pub fn useful(&self) -> u32 {
        let r = &self.rules;
        r.useful_side.clamp(r.min_side, r.max_side)
    }
}

/// Why an input image cannot be used. Every variant is the user's to fix; none costs quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRejection {
    #[error("the file is empty")]
    Empty,
    #[error("the file is not an image we can read (JPEG, PNG, WEBP, GIF, BMP, TIFF)")]
    NotAnImage,
    #[error("{0} images are not supported; send JPEG or PNG")]
    Unsupported(&'static str),
    #[error("the file is larger than {limit_mb} MB")]
    FileTooBig { limit_mb: usize },
    #[error("the image is {width}×{height} pixels, more than we can process")]
    TooManyPixels { width: u32, height: u32 },
    #[error("the image is damaged or truncated")]
    Corrupt,
    /// A readable format, but a feature of it we cannot decode (named).
    #[error("this image uses something we cannot read: {0}")]
    UnsupportedFeature(String),
    #[error("a {width}×{height} image is too narrow to fit 384–3072 px per side")]
    BadAspect { width: u32, height: u32 },
}

/// Format and size read from the header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub format: Format,
    pub width: u32,
    pub height: u32,
}

/// An image ready for the API.
#[derive(Debug, Clone)]
pub struct Fitted {
    pub bytes: Bytes,
    pub format: Format,
    pub width: u32,
    pub height: u32,
    /// True when `bytes` are the input, unchanged.
    pub passthrough: bool,
}

/// Recognises the format from magic bytes; never from a name or MIME type.
pub fn sniff(bytes: &[u8]) -> Result<Format, ImageRejection> {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    if bytes.is_empty() {
        return Err(ImageRejection::Empty);
    }
    if starts(&[0xFF, 0xD8, 0xFF]) {
        return Ok(Format::Jpeg);
    }
    if starts(b"\x89PNG\r\n\x1a\n") {
        return Ok(Format::Png);
    }
    if starts(b"GIF87a") || starts(b"GIF89a") {
        return Ok(Format::Gif);
    }
    if starts(b"BM") && bytes.len() > 14 {
        return Ok(Format::Bmp);
    }
    // Classic TIFF (42) and BigTIFF (43), either byte order.
    if starts(b"II*\0") || starts(b"MM\0*") || starts(b"II+\0") || starts(b"MM\0+") {
        return Ok(Format::Tiff);
    }
    if starts(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        return Ok(Format::WebP);
    }
    match bytes.get(4..12) {
        Some(
            b"ftypheic" | b"ftypheix" | b"ftypheim" | b"ftypheis" | b"ftyphevc" | b"ftyphevm"
            | b"ftyphevs" | b"ftypmif1" | b"ftypmsf1",
        ) => Err(ImageRejection::Unsupported("HEIC")),
        Some(b"ftypavif" | b"ftypavis") => Err(ImageRejection::Unsupported("AVIF")),
        _ => Err(ImageRejection::NotAnImage),
    }
}

/// Sniffs the format and reads the dimensions from the header, without decoding pixels.
pub fn probe(bytes: &[u8]) -> Result<Probe, ImageRejection> {
    let format = sniff(bytes)?;
    // A JPEG's header segments, walked once: its coding and size (the codec would first copy
    // the whole file to read them).
    let jpeg = match format {
        Format::Jpeg => super::verify::jpeg_header(bytes),
        _ => None,
    };
    if let Some(coding) = unsupported_coding(format, bytes, jpeg.map(|h| h.frame)) {
        return Err(ImageRejection::UnsupportedFeature(coding.into()));
    }
    let (width, height) = if format == Format::Tiff {
        // Our own TIFF reading takes more colour models than the codec would probe.
        tiff::dimensions(bytes).ok_or(ImageRejection::Corrupt)?
    } else if let Some(h) = jpeg {
        (u32::from(h.width), u32::from(h.height))
    } else {
        let reader = ImageReader::with_format(Cursor::new(bytes), format.codec());
        reader.into_dimensions().map_err(|e| match e {
            image::ImageError::Unsupported(u) => {
                ImageRejection::UnsupportedFeature(feature(&u, format))
            }
            _ => ImageRejection::Corrupt,
        })?
    };
    if width == 0 || height == 0 || !super::verify::whole(format, bytes) {
        return Err(ImageRejection::Corrupt);
    }
    Ok(Probe {
        format,
        width,
        height,
    })
}

/// A coding of the format that no decoder here reads, named for the user (`jpeg_frame`: a
/// JPEG's frame marker).
fn unsupported_coding(
    format: Format,
    bytes: &[u8],
    jpeg_frame: Option<u8>,
) -> Option<&'static str> {
    match format {
        Format::Jpeg => match jpeg_frame? {
            0xC3 | 0xC7 | 0xCB | 0xCF => Some("lossless JPEG"),
            0xC5 | 0xC6 => Some("hierarchical JPEG"),
            0xC9 | 0xCA => Some("arithmetic-coded JPEG"),
            _ => None,
        },
        Format::Bmp if decode::bmp_header_size(bytes)? == 64 => match bytes.get(30..34)? {
            [3, 0, 0, 0] => Some("OS/2 BMP Huffman compression"),
            [4, 0, 0, 0] => Some("OS/2 BMP RLE24 compression"),
            _ => None,
        },
        // RLE rows run bottom-up only; the decoder refuses a negative height with them.
        Format::Bmp if decode::bmp_header_size(bytes)? >= 40 => {
            let top_down = i32::from_le_bytes(bytes.get(22..26)?.try_into().ok()?) < 0;
            let rle = matches!(bytes.get(30..34)?, [1 | 2, 0, 0, 0]);
            (top_down && rle).then_some("top-down RLE BMP")
        }
        _ => None,
    }
}

/// Fits one input image to the API's rules. CPU-bound when the image must be re-encoded.
pub fn fit(bytes: Bytes, limits: &FitLimits) -> Result<Fitted, ImageRejection> {
    if bytes.len() > limits.max_input_bytes {
        return Err(ImageRejection::FileTooBig {
            limit_mb: limits.max_input_bytes >> 20,
        });
    }
    let bytes = decode::os2_bmp_as_windows(&bytes).map_or(bytes, Bytes::from);
    let p = probe(&bytes)?;
    let in_range = |s: u32| (limits.rules.min_side..=limits.useful()).contains(&s);
    let sendable = in_range(p.width)
        && in_range(p.height)
        && bytes.len() <= limits.passthrough_max_bytes
        && bytes.len() <= limits.rules.max_file_bytes
        && p.format != Format::Gif // animated GIFs: we pick the first frame ourselves
        && limits.rules.formats.contains(&p.format)
        && as_is_ok(&bytes, p);
    if sendable {
        return Ok(Fitted {
            bytes,
            format: p.format,
            width: p.width,
            height: p.height,
            passthrough: true,
        });
    }
    let (w, h) = (u64::from(p.width), u64::from(p.height));
    if p.width > limits.max_decode_side
        || p.height > limits.max_decode_side
        || w * h > limits.max_decode_pixels
    {
        return Err(ImageRejection::TooManyPixels {
            width: p.width,
            height: p.height,
        });
    }
    // Held until the result is encoded: the decoded picture and its copies count.
    let (tw, th) = target_size(p.width, p.height, limits)?;
    let (oriented, _reserved) = match reduced(&bytes, p, tw.max(th), limits) {
        Some(done) => done,
        None => decode_upright(&bytes, p, limits)?,
    };
    let (tw, th) = target_size(oriented.width(), oriented.height(), limits)?;
    let image = normalize(oriented, p.format);
    encode_within(image, tw, th, limits)
}

/// The size inside [min_side, max_side] per side with the same aspect ratio, or why none exists.
pub fn target_size(w: u32, h: u32, limits: &FitLimits) -> Result<(u32, u32), ImageRejection> {
    let (min, useful) = (f64::from(limits.rules.min_side), f64::from(limits.useful()));
    let (fw, fh) = (f64::from(w), f64::from(h));
    let mut scale = 1.0_f64;
    if fw.max(fh) > useful {
        scale = useful / fw.max(fh);
    }
    if fw.min(fh) * scale < min {
        scale = min / fw.min(fh);
    }
    let side = |v: f64| (v * scale).round() as u32;
    let (tw, th) = (side(fw), side(fh));
    let ok = |s: u32| (limits.rules.min_side..=limits.rules.max_side).contains(&s);
    if !(ok(tw) && ok(th)) {
        return Err(ImageRejection::BadAspect {
            width: w,
            height: h,
        });
    }
    Ok((tw, th))
}

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
}

impl InputRules {
    /// No rule at all: for fitting results to a chat's upload limit, where only the decoding
    /// bounds apply.
    pub const NONE: InputRules = InputRules {
        min_side: 1,
        max_side: u32::MAX,
        useful_side: u32::MAX,
        max_file_bytes: usize::MAX,
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
    let reader = ImageReader::with_format(Cursor::new(bytes), format.codec());
    let (width, height) = reader.into_dimensions().map_err(|e| match e {
        image::ImageError::Unsupported(u) => {
            ImageRejection::UnsupportedFeature(feature(&u, format))
        }
        _ => ImageRejection::Corrupt,
    })?;
    if width == 0 || height == 0 || !super::verify::whole(format, bytes) {
        return Err(ImageRejection::Corrupt);
    }
    Ok(Probe {
        format,
        width,
        height,
    })
}

/// Fits one input image to the API's rules. CPU-bound when the image must be re-encoded.
pub fn fit(bytes: Bytes, limits: &FitLimits) -> Result<Fitted, ImageRejection> {
    if bytes.len() > limits.max_input_bytes {
        return Err(ImageRejection::FileTooBig {
            limit_mb: limits.max_input_bytes >> 20,
        });
    }
    let p = probe(&bytes)?;
    let in_range = |s: u32| (limits.rules.min_side..=limits.useful()).contains(&s);
    let sendable = in_range(p.width)
        && in_range(p.height)
        && bytes.len() <= limits.passthrough_max_bytes
        && bytes.len() <= limits.rules.max_file_bytes
        && p.format != Format::Gif // animated GIFs: we pick the first frame ourselves
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

/// A large JPEG decoded straight at 1/2, 1/4 or 1/8 of its size (`core::jpeg`), upright;
/// `None` when that does not apply or does not work.
fn reduced<'l>(
    bytes: &[u8],
    p: Probe,
    target_long: u32,
    limits: &'l FitLimits,
) -> Option<(DynamicImage, Reserved<'l>)> {
    if p.format != Format::Jpeg {
        return None;
    }
    let f = super::jpeg::factor(p.width, p.height, target_long, limits.rules.min_side)?;
    let small = Probe {
        width: p.width.div_ceil(f),
        height: p.height.div_ceil(f),
        ..p
    };
    let decoded = u64::from(small.width) * u64::from(small.height) * 3;
    let reserved = limits.budget.reserve(decode_cost(small, decoded, limits))?;
    let (mut img, orientation) = super::jpeg::decode_reduced(bytes, f)?;
    img.apply_orientation(orientation);
    Some((img, reserved))
}

/// What decoding `p` holds at most: the decoder's buffer, one converted or rotated 8-bit RGBA
/// copy, and the resized picture with its encoding (at most the largest side squared).
fn decode_cost(p: Probe, decoded: u64, limits: &FitLimits) -> u64 {
    let pixels = u64::from(p.width) * u64::from(p.height);
    let out = u64::from(limits.rules.max_side)
        .saturating_pow(2)
        .saturating_mul(4);
    decoded + pixels * 4 + out.min(pixels * 4 + (1 << 20))
}

/// Whether the file can go out as it is, by its headers: upright (a rotated or mirrored photo
/// is turned here, as not every service reads EXIF — WebP's is commonly ignored), not a BMP
/// with an alpha channel (often unused, all zero: decoded to tell), not a BigTIFF.
fn as_is_ok(bytes: &[u8], p: Probe) -> bool {
    if p.format == Format::Tiff
        && bytes
            .get(2..4)
            .is_some_and(|m| m == [43, 0] || m == [0, 43])
    {
        return false;
    }
    let Ok(mut decoder) =
        ImageReader::with_format(Cursor::new(bytes), p.format.codec()).into_decoder()
    else {
        return false;
    };
    let alpha = decoder.color_type().has_alpha();
    !(p.format == Format::Bmp && alpha)
        && decoder
            .orientation()
            .is_ok_and(|o| o == image::metadata::Orientation::NoTransforms)
}

fn decode_upright<'l>(
    bytes: &[u8],
    p: Probe,
    limits: &'l FitLimits,
) -> Result<(DynamicImage, Reserved<'l>), ImageRejection> {
    let map = |e| map_decode_error(e, p, limits);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), p.format.codec());
    let mut decode_limits = image::Limits::default();
    decode_limits.max_image_width = Some(limits.max_decode_side);
    decode_limits.max_image_height = Some(limits.max_decode_side);
    decode_limits.max_alloc = Some(limits.max_decode_alloc);
    reader.limits(decode_limits);
    let mut decoder = reader.into_decoder().map_err(map)?;
    // `into_decoder` checks dimensions but not the output buffer; bound it here.
    let too_many = ImageRejection::TooManyPixels {
        width: p.width,
        height: p.height,
    };
    if decoder.total_bytes() > limits.max_decode_alloc {
        return Err(too_many);
    }
    // Waits while other fits hold the shared budget; more than all of it is refused.
    let reserved = limits
        .budget
        .reserve(decode_cost(p, decoder.total_bytes(), limits))
        .ok_or(too_many)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(map)?;
    img.apply_orientation(orientation);
    Ok((img, reserved))
}

fn map_decode_error(e: image::ImageError, p: Probe, limits: &FitLimits) -> ImageRejection {
    match e {
        // A picture within the pixel limits that still asks for too much memory has a header
        // that lies: it is damaged, not large.
        image::ImageError::Limits(_)
            if u64::from(p.width) * u64::from(p.height) * 8 <= limits.max_decode_alloc =>
        {
            ImageRejection::Corrupt
        }
        image::ImageError::Limits(_) => ImageRejection::TooManyPixels {
            width: p.width,
            height: p.height,
        },
        image::ImageError::Unsupported(u) => {
            ImageRejection::UnsupportedFeature(feature(&u, p.format))
        }
        _ => ImageRejection::Corrupt,
    }
}

/// What a decoder could not read, in a user's words where we know them (the decoder's own,
/// exact, words otherwise).
fn feature(u: &image::error::UnsupportedError, format: Format) -> String {
    use image::error::UnsupportedErrorKind as Kind;
    let name = format.name();
    match u.kind() {
        Kind::GenericFeature(f) if f.contains("RGBPalette") => format!("{name} palette colours"),
        Kind::GenericFeature(f) if f.contains("CIELab") => format!("{name} CIELab colours"),
        Kind::GenericFeature(f) if f.contains("Planar") || f.contains("planar") => {
            format!("{name} planar layout")
        }
        Kind::GenericFeature(f) => format!("{name}: {}", f.chars().take(120).collect::<String>()),
        Kind::Color(image::ExtendedColorType::Unknown(bits)) => {
            format!("{name} {bits}-bit samples")
        }
        Kind::Color(c) => format!("{name} {c:?} pixels"),
        Kind::Format(f) => f.to_string(),
        _ => format!("a {name} variant"),
    }
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

/// 8-bit RGB, or RGBA when some pixel is not fully opaque. A BMP whose alpha is zero
/// everywhere has no alpha (its writer left the bits unused), so it is opaque.
fn normalize(img: DynamicImage, format: Format) -> DynamicImage {
    if img.color().has_alpha() {
        let rgba = img.into_rgba8();
        let unused = format == Format::Bmp && rgba.pixels().all(|p| p.0[3] == 0);
        if !unused && rgba.pixels().any(|p| p.0[3] != u8::MAX) {
            return DynamicImage::ImageRgba8(rgba);
        }
        return DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(rgba).into_rgb8());
    }
    match img {
        DynamicImage::ImageRgb8(_) => img,
        other => DynamicImage::ImageRgb8(other.into_rgb8()),
    }
}

/// Resizes to (w, h) and encodes (JPEG when opaque, PNG with alpha), shrinking further until
/// the file is within the service's limit.
fn encode_within(
    img: DynamicImage,
    mut w: u32,
    mut h: u32,
    limits: &FitLimits,
) -> Result<Fitted, ImageRejection> {
    let alpha = img.color().has_alpha();
    let qualities: &[u8] = if alpha { &[0] } else { &[90, 80, 70] };
    for _ in 0..6 {
        let resized = resize(&img, w, h)?;
        for &q in qualities {
            let (format, bytes) = encode(&resized, w, h, alpha, q)?;
            if bytes.len() <= limits.rules.max_file_bytes {
                return Ok(Fitted {
                    bytes: Bytes::from(bytes),
                    format,
                    width: w,
                    height: h,
                    passthrough: false,
                });
            }
        }
        let shrink = |s: u32| ((f64::from(s) * 0.8).round() as u32).max(limits.rules.min_side);
        if w.min(h) <= limits.rules.min_side {
            break;
        }
        (w, h) = (shrink(w), shrink(h));
    }
    Err(ImageRejection::FileTooBig {
        limit_mb: limits.rules.max_file_bytes >> 20,
    })
}

/// `img` at (w, h); borrowed when it already has that size (no copy of the pixels).
fn resize(img: &DynamicImage, w: u32, h: u32) -> Result<Cow<'_, DynamicImage>, ImageRejection> {
    if img.width() == w && img.height() == h {
        return Ok(Cow::Borrowed(img));
    }
    let pixel = if img.color().has_alpha() {
        fr::PixelType::U8x4
    } else {
        fr::PixelType::U8x3
    };
    let mut dst = fr::images::Image::new(w, h, pixel);
    let options =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom));
    fr::Resizer::new()
        .resize(img, &mut dst, &options)
        .map_err(|_| ImageRejection::Corrupt)?;
    let buf = dst.into_vec();
    let out = if img.color().has_alpha() {
        image::RgbaImage::from_raw(w, h, buf).map(DynamicImage::ImageRgba8)
    } else {
        image::RgbImage::from_raw(w, h, buf).map(DynamicImage::ImageRgb8)
    };
    out.map(Cow::Owned).ok_or(ImageRejection::Corrupt)
}

fn encode(
    img: &DynamicImage,
    w: u32,
    h: u32,
    alpha: bool,
    quality: u8,
) -> Result<(Format, Vec<u8>), ImageRejection> {
    let mut out = Vec::with_capacity((w as usize * h as usize) / 2);
    let result = if alpha {
        image::codecs::png::PngEncoder::new_with_quality(
            &mut out,
            image::codecs::png::CompressionType::Fast,
            image::codecs::png::FilterType::Adaptive,
        )
        .write_image(img.as_bytes(), w, h, image::ExtendedColorType::Rgba8)
        .map_err(|_| ImageRejection::Corrupt)
    } else {
        // jpeg-encoder (SIMD) is several times faster than the image crate's encoder.
        let (w16, h16) = (u16::try_from(w), u16::try_from(h));
        let (Ok(w16), Ok(h16)) = (w16, h16) else {
            return Err(ImageRejection::Corrupt);
        };
        let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
        encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
        encoder
            .encode(img.as_bytes(), w16, h16, jpeg_encoder::ColorType::Rgb)
            .map_err(|_| ImageRejection::Corrupt)
    };
    result?;
    Ok((if alpha { Format::Png } else { Format::Jpeg }, out))
}

/// A result image made to fit an upload limit.
#[derive(Debug, Clone)]
pub struct Upload {
    pub bytes: Bytes,
    /// File extension for the upload name.
    pub ext: &'static str,
    /// True when the original did not fit and was re-encoded (the user is told).
    pub compressed: bool,
}

/// Fits a result under `limit` bytes: as is when it fits, else a JPEG quality ladder, then
/// smaller sizes. Transparency is lost only when it must be. CPU-bound.
pub fn fit_upload(
    bytes: Bytes,
    limit: usize,
    limits: &FitLimits,
) -> Result<Upload, ImageRejection> {
    let format = sniff(&bytes)?;
    if bytes.len() <= limit {
        let ext = if format == Format::Jpeg { "jpg" } else { "png" };
        return Ok(Upload {
            bytes,
            ext,
            compressed: false,
        });
    }
    let p = probe(&bytes)?;
    let (decoded, _reserved) = decode_upright(&bytes, p, limits)?;
    let img = DynamicImage::ImageRgb8(decoded.into_rgb8());
    let (mut w, mut h) = (img.width(), img.height());
    for _ in 0..8 {
        let resized = resize(&img, w, h)?;
        for quality in [92, 85, 75, 60] {
            let (_, out) = encode(&resized, w, h, false, quality)?;
            if out.len() <= limit {
                return Ok(Upload {
                    bytes: Bytes::from(out),
                    ext: "jpg",
                    compressed: true,
                });
            }
        }
        (w, h) = ((w * 3 / 4).max(1), (h * 3 / 4).max(1));
    }
    Err(ImageRejection::FileTooBig {
        limit_mb: limit >> 20,
    })
}

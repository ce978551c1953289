//! Encoding: a fitted input within the service's file limit, and a result within a chat's
//! upload limit.

use super::*;

/// Resizes to (w, h) and encodes (JPEG when opaque, PNG with alpha), shrinking further until
/// the file is within the service's limit.
pub(super) fn encode_within(
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
pub(super) fn resize(
    img: &DynamicImage,
    w: u32,
    h: u32,
) -> Result<Cow<'_, DynamicImage>, ImageRejection> {
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

pub(super) fn encode(
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

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
        out = jpeg(img.as_bytes(), w, h, quality).ok_or(ImageRejection::Corrupt)?;
        Ok(())
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

/// Rows of pixels in one 4:2:0 MCU: the unit a JPEG can be cut at.
const MCU: u32 = 16;

/// 8-bit RGB as a baseline 4:2:0 JPEG (jpeg-encoder, SIMD: several times faster than the image
/// crate's encoder), with a restart marker after every row of MCUs. A picture of 256 rows or
/// more is encoded as two halves at once, on two threads, and the halves joined at a restart
/// marker: the file is byte for byte the one a single encoder makes, in about half the time.
pub fn jpeg(rgb: &[u8], width: u32, height: u32, quality: u8) -> Option<Vec<u8>> {
    // Asked once: on Linux the answer reads the cgroup's CPU quota from files.
    static PARALLEL: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        std::thread::available_parallelism().is_ok_and(|n| n.get() > 1)
    });
    let parallel = *PARALLEL;
    let top = (height / 2).next_multiple_of(MCU);
    if !parallel || height < 256 || top >= height {
        return jpeg_part(rgb, width, height, quality);
    }
    let cut = usize::try_from(width).ok()? * 3 * usize::try_from(top).ok()?;
    let (upper, lower) = rgb.split_at_checked(cut)?;
    let (upper, lower) = std::thread::scope(|s| {
        let lower = s.spawn(|| jpeg_part(lower, width, height - top, quality));
        (
            jpeg_part(upper, width, top, quality),
            lower.join().ok().flatten(),
        )
    });
    join(&upper?, &lower?, u16::try_from(height).ok()?, top / MCU)
}

/// One encoder's file, restarting after each row of MCUs.
fn jpeg_part(rgb: &[u8], width: u32, height: u32, quality: u8) -> Option<Vec<u8>> {
    let (w, h) = (u16::try_from(width).ok()?, u16::try_from(height).ok()?);
    let mut out = Vec::with_capacity(rgb.len() / 8);
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
    encoder.set_restart_interval(w.div_ceil(MCU as u16));
    encoder
        .encode(rgb, w, h, jpeg_encoder::ColorType::Rgb)
        .ok()?;
    Some(out)
}

/// The upper file, its height set to the whole picture's, then the restart marker that ends
/// its last row (`upper_rows` rows of MCUs), then the lower file's scan with its restart
/// markers numbered on from there, and the end marker. Both files share their tables.
fn join(upper: &[u8], lower: &[u8], height: u16, upper_rows: u32) -> Option<Vec<u8>> {
    let (height_at, _) = frame_and_scan(upper)?;
    let (_, scan) = frame_and_scan(lower)?;
    let (upper, lower) = (
        upper.strip_suffix(&[0xFF, 0xD9])?,
        lower.strip_suffix(&[0xFF, 0xD9])?,
    );
    let step = u8::try_from(upper_rows % 8).ok()?;
    let mut out = Vec::with_capacity(upper.len() + lower.len() + 4);
    out.extend_from_slice(upper);
    out[height_at..height_at + 2].copy_from_slice(&height.to_be_bytes());
    out.extend_from_slice(&[0xFF, 0xD0 + (step + 7) % 8]);
    let mut data = lower.get(scan..)?;
    while let Some(i) = memchr::memchr(0xFF, data) {
        let marker = *data.get(i + 1)?;
        out.extend_from_slice(&data[..=i]);
        out.push(match marker {
            0xD0..=0xD7 => 0xD0 + (marker - 0xD0 + step) % 8,
            other => other,
        });
        data = &data[i + 2..];
    }
    out.extend_from_slice(data);
    out.extend_from_slice(&[0xFF, 0xD9]);
    Some(out)
}

/// Where a JPEG's frame header keeps the picture's height, and where its scan data starts.
fn frame_and_scan(jpeg: &[u8]) -> Option<(usize, usize)> {
    let (mut at, mut height) = (2, None);
    loop {
        let (0xFF, marker) = (*jpeg.get(at)?, *jpeg.get(at + 1)?) else {
            return None;
        };
        let len = usize::from(u16::from_be_bytes(
            jpeg.get(at + 2..at + 4)?.try_into().ok()?,
        ));
        match marker {
            0xC0 => height = Some(at + 5),
            0xDA => return Some((height?, at + 2 + len)),
            _ => {}
        }
        at += 2 + len;
    }
}

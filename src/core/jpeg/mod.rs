//! Large JPEGs decoded at a reduced scale: the DCT lets a decoder produce 1/2, 1/4 or 1/8 of
//! the picture directly, skipping most of the inverse transforms and colour conversion, and
//! the buffer is 4 to 64 times smaller. Used when the picture is at least twice the size that
//! will be sent. A baseline JPEG is decoded by our own reader on two threads ([`halves`]);
//! anything else jpeg-decoder decodes at the reduced scale, and what neither handles (CMYK,
//! 16-bit, damage) goes the usual way instead.

mod halves;
mod scan;

pub use halves::Split;

use image::metadata::Orientation;
use image::{DynamicImage, GrayImage, RgbImage};
use jpeg_decoder::{Decoder, PixelFormat};

/// The largest factor (8, 4 or 2) that keeps the long side at `target_long` or within 10 %
/// below it, and the short side at least `min_short`; `None` when no reduction is worth it.
pub fn factor(width: u32, height: u32, target_long: u32, min_short: u32) -> Option<u32> {
    let (long, short) = (width.max(height), width.min(height));
    [8, 4, 2]
        .into_iter()
        .find(|f| (long / f) * 10 >= target_long * 9 && short / f >= min_short)
}

/// Bytes a reduced decode of a picture with `pixels` pixels (once reduced by `factor`) holds
/// at its peak.
pub fn held_bytes(pixels: u64, factor: u32) -> u64 {
    halves::held_bytes(pixels, factor).max(pixels * 3)
}

/// Decodes `bytes` reduced by `factor`, with its EXIF orientation; `None` when no decoder
/// here can (the caller then decodes at full size).
pub fn decode_reduced(bytes: &[u8], factor: u32) -> Option<(DynamicImage, Orientation)> {
    // Two threads where there are two cores, and enough data to be worth a thread.
    static PARALLEL: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        std::thread::available_parallelism().is_ok_and(|n| n.get() > 1)
    });
    let split = |data: usize| match *PARALLEL && data >= 64 * 1024 {
        true => Split::At(data / 2),
        false => Split::None,
    };
    baseline(bytes, factor, split).or_else(|| general(bytes, factor))
}

/// Our own reader ([`halves`]), where the file is a baseline JPEG; `split` says where to cut
/// its scan data of the given length.
pub fn baseline(
    bytes: &[u8],
    factor: u32,
    split: impl FnOnce(usize) -> Split,
) -> Option<(DynamicImage, Orientation)> {
    let header = scan::header(bytes)?;
    let at = split(header.data.len());
    let picture = halves::decode(&header, usize::try_from(factor).ok()?, at)?;
    let (w, h) = (
        u32::try_from(picture.width).ok()?,
        u32::try_from(picture.height).ok()?,
    );
    let img = if picture.grey {
        DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, picture.pixels)?)
    } else {
        DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, picture.pixels)?)
    };
    let orientation = header
        .exif
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    Some((img, orientation))
}

/// The block from which [`baseline`]'s second thread's decoding was used (`None`: the first
/// thread decoded everything, or the file is not one it reads). For tests and benches: that
/// the work really was split.
pub fn joined_at(bytes: &[u8], factor: u32, split: Split) -> Option<usize> {
    let header = scan::header(bytes)?;
    halves::decode(&header, usize::try_from(factor).ok()?, split)?.joined_at
}

/// jpeg-decoder at the reduced scale.
fn general(bytes: &[u8], factor: u32) -> Option<(DynamicImage, Orientation)> {
    let mut d = Decoder::new(bytes);
    d.read_info().ok()?;
    let info = d.info()?;
    if !matches!(info.pixel_format, PixelFormat::RGB24 | PixelFormat::L8) {
        return None;
    }
    let want = |side: u16| u16::try_from(u32::from(side).div_ceil(factor)).ok();
    let (w, h) = d.scale(want(info.width)?, want(info.height)?).ok()?;
    let pixels = d.decode().ok()?;
    let (w, h) = (u32::from(w), u32::from(h));
    let img = match info.pixel_format {
        PixelFormat::RGB24 => DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, pixels)?),
        _ => DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, pixels)?),
    };
    let orientation = d
        .exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    Some((img, orientation))
}

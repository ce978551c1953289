//! Decoding under the limits: a large JPEG at a reduced scale, any other picture with the
//! decoder's own bounds and the shared budget reserved first, turned upright; decoder errors
//! named for the user.

use super::*;

/// A large JPEG decoded straight at 1/2, 1/4 or 1/8 of its size (`core::jpeg`), upright;
/// `None` when that does not apply or does not work.
pub(super) fn reduced<'l>(
    bytes: &[u8],
    p: Probe,
    target_long: u32,
    limits: &'l FitLimits,
) -> Option<(DynamicImage, Reserved<'l>)> {
    if p.format != Format::Jpeg {
        return None;
    }
    let f = crate::core::jpeg::factor(p.width, p.height, target_long, limits.rules.min_side)?;
    let small = Probe {
        width: p.width.div_ceil(f),
        height: p.height.div_ceil(f),
        ..p
    };
    let pixels = u64::from(small.width) * u64::from(small.height);
    let decoded = crate::core::jpeg::held_bytes(pixels, f);
    let reserved = limits.budget.reserve(decode_cost(small, decoded, limits))?;
    let (mut img, orientation) = crate::core::jpeg::decode_reduced(bytes, f)?;
    img.apply_orientation(orientation);
    Some((img, reserved))
}

/// What decoding `p` holds at most: the decoder's buffer, one converted or rotated 8-bit RGBA
/// copy, and the resized picture with its encoding (at most the largest side squared).
pub(super) fn decode_cost(p: Probe, decoded: u64, limits: &FitLimits) -> u64 {
    let pixels = u64::from(p.width) * u64::from(p.height);
    let out = u64::from(limits.rules.max_side)
        .saturating_pow(2)
        .saturating_mul(4);
    decoded + pixels * 4 + out.min(pixels * 4 + (1 << 20))
}

/// Whether the file can go out as it is, by its headers: upright (a rotated or mirrored photo
/// is turned here, as not every service reads EXIF — WebP's is commonly ignored), not a BMP
/// with an alpha channel (often unused, all zero: decoded to tell), a plain TIFF.
pub(super) fn as_is_ok(bytes: &[u8], p: Probe) -> bool {
    if p.format == Format::Tiff {
        return super::tiff::plain(bytes);
    }
    if p.format == Format::Jpeg {
        // Upright by its EXIF, read from the header segments (no decoder, no copy of the file).
        return crate::core::verify::jpeg_header(bytes).is_some_and(|h| {
            h.exif
                .and_then(image::metadata::Orientation::from_exif_chunk)
                .is_none_or(|o| o == image::metadata::Orientation::NoTransforms)
        });
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

pub(super) fn decode_upright<'l>(
    bytes: &[u8],
    p: Probe,
    limits: &'l FitLimits,
) -> Result<(DynamicImage, Reserved<'l>), ImageRejection> {
    if p.format == Format::Tiff {
        return super::tiff::decode(bytes, p, limits);
    }
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

pub(super) fn map_decode_error(
    e: image::ImageError,
    p: Probe,
    limits: &FitLimits,
) -> ImageRejection {
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
pub(super) fn feature(u: &image::error::UnsupportedError, format: Format) -> String {
    use image::error::UnsupportedErrorKind as Kind;
    let name = format.name();
    match u.kind() {
        Kind::GenericFeature(f) => format!("{name}: {}", f.chars().take(120).collect::<String>()),
        Kind::Color(image::ExtendedColorType::Unknown(bits)) => {
            format!("{name} {bits}-bit samples")
        }
        Kind::Color(c) => format!("{name} {c:?} pixels"),
        Kind::Format(f) => f.to_string(),
        _ => format!("a {name} variant"),
    }
}

/// 8-bit RGB, or RGBA when some pixel is not fully opaque. A BMP whose alpha is zero
/// everywhere has no alpha (its writer left the bits unused), so it is opaque.
pub(super) fn normalize(img: DynamicImage, format: Format) -> DynamicImage {
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

/// The size of a BMP's info header (40 Windows, 12 or 64 OS/2, more for later Windows ones).
pub(super) fn bmp_header_size(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(14..18)?.try_into().ok()?))
}

/// An OS/2 2.x BMP (64-byte info header), which the BMP decoder does not know, as the Windows
/// BMP it is laid out like: the first 40 bytes of its header are a BITMAPINFOHEADER's and its
/// palette has the same 4-byte entries. `None` for any other file, and for OS/2's own
/// compressions (Huffman, RLE24), which have no Windows equivalent.
pub(super) fn os2_bmp_as_windows(bytes: &[u8]) -> Option<Vec<u8>> {
    const DROPPED: u32 = 64 - 40;
    let word = |b: &[u8], at: usize| Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?));
    if !bytes.starts_with(b"BM") || bmp_header_size(bytes)? != 64 || word(bytes, 30)? > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() - DROPPED as usize);
    out.extend_from_slice(bytes.get(..14 + 40)?);
    out.extend_from_slice(bytes.get(14 + 64..)?);
    let size = word(&out, 2)?.saturating_sub(DROPPED);
    let pixels = word(&out, 10)?.checked_sub(DROPPED)?;
    out[2..6].copy_from_slice(&size.to_le_bytes());
    out[10..14].copy_from_slice(&pixels.to_le_bytes());
    out[14..18].copy_from_slice(&40u32.to_le_bytes());
    Some(out)
}

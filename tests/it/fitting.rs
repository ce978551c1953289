//! Input fitting (docs/PRODUCT.md §6): pass-through, resize, re-encode, refusals.

use bytes::Bytes;
use image::ImageFormat;
use qwen_edit_bot::core::image::{FitLimits, Format, ImageRejection, fit, probe, sniff};

use crate::fakes::images;

fn fit_default(bytes: Vec<u8>) -> Result<qwen_edit_bot::core::image::Fitted, ImageRejection> {
    fit(Bytes::from(bytes), &FitLimits::default())
}

#[test]
fn an_image_inside_the_rules_goes_out_byte_for_byte() {
    let input = images::jpeg(2048, 1536);
    let fitted = fit_default(input.clone()).unwrap();
    assert!(fitted.passthrough);
    assert_eq!(&fitted.bytes[..], &input[..]);
    assert_eq!(
        (fitted.format, fitted.width, fitted.height),
        (Format::Jpeg, 2048, 1536)
    );
    let uri = fitted.data_uri();
    assert!(uri.starts_with("data:image/jpeg;base64,/9j/"));
}

#[test]
fn a_small_image_is_scaled_up_keeping_its_aspect_ratio() {
    let fitted = fit_default(images::jpeg(200, 150)).unwrap();
    assert!(!fitted.passthrough);
    let (format, w, h) = images::dims(&fitted.bytes);
    assert_eq!((format, w, h), (ImageFormat::Jpeg, 512, 384));
}

#[test]
fn a_large_image_is_scaled_down_into_range() {
    let fitted = fit_default(images::jpeg(5000, 3750)).unwrap();
    let (format, w, h) = images::dims(&fitted.bytes);
    assert_eq!((format, w, h), (ImageFormat::Jpeg, 3072, 2304));
    assert!(fitted.data_uri().len() <= 10 * 1024 * 1024);
}

#[test]
fn a_decompression_bomb_is_refused_without_decoding() {
    let started = std::time::Instant::now();
    let err = fit_default(images::png_bomb(50_000, 50_000)).unwrap_err();
    assert_eq!(
        err,
        ImageRejection::TooManyPixels {
            width: 50_000,
            height: 50_000
        }
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn an_allocation_over_the_decode_limit_is_refused() {
    let limits = FitLimits {
        max_decode_alloc: 1024 * 1024,
        ..FitLimits::default()
    };
    let err = fit(Bytes::from(images::png(4000, 1000)), &limits).unwrap_err();
    assert!(
        matches!(err, ImageRejection::TooManyPixels { .. }),
        "{err:?}"
    );
}

#[test]
fn truncated_zero_byte_and_non_image_inputs_are_refused_with_a_reason() {
    let mut truncated = images::jpeg(5000, 3750);
    truncated.truncate(truncated.len() / 3);
    assert_eq!(fit_default(truncated).unwrap_err(), ImageRejection::Corrupt);
    // Cut off mid-scan, with a complete thumbnail (and its end marker) in an APP1 segment.
    let thumbnail = images::jpeg(64, 48);
    let main = images::jpeg(1000, 750);
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend_from_slice(&thumbnail);
    let mut with_thumbnail = main[..2].to_vec();
    with_thumbnail.extend_from_slice(&[0xFF, 0xE1]);
    with_thumbnail.extend_from_slice(&u16::try_from(payload.len() + 2).unwrap().to_be_bytes());
    with_thumbnail.extend_from_slice(&payload);
    with_thumbnail.extend_from_slice(&main[2..]);
    let whole = fit_default(with_thumbnail.clone()).expect("the whole file is fine");
    assert_eq!((whole.width, whole.height), (1000, 750));
    with_thumbnail.truncate(with_thumbnail.len() - main.len() / 3);
    assert_eq!(
        fit_default(with_thumbnail).unwrap_err(),
        ImageRejection::Corrupt
    );
    assert_eq!(fit_default(Vec::new()).unwrap_err(), ImageRejection::Empty);
    assert_eq!(
        fit_default(b"%PDF-1.7 hello".to_vec()).unwrap_err(),
        ImageRejection::NotAnImage
    );
    assert_eq!(
        fit_default(b"<svg xmlns=...>".to_vec()).unwrap_err(),
        ImageRejection::NotAnImage
    );
    let mut heic = vec![0, 0, 0, 24];
    heic.extend_from_slice(b"ftypheic\0\0\0\0");
    assert_eq!(
        fit_default(heic).unwrap_err(),
        ImageRejection::Unsupported("HEIC")
    );
    assert_eq!(
        fit_default(b"\x89PNG\r\n\x1a\n".to_vec()).unwrap_err(),
        ImageRejection::Corrupt
    );
}

#[test]
fn a_cmyk_jpeg_is_converted_to_rgb() {
    let fitted = fit_default(images::cmyk_jpeg(300, 200)).unwrap();
    let img = image::load_from_memory(&fitted.bytes).unwrap();
    assert_eq!(img.color(), image::ColorType::Rgb8);
    assert_eq!((img.width(), img.height()), (576, 384));
}

#[test]
fn a_16_bit_png_out_of_range_becomes_an_8_bit_jpeg() {
    let fitted = fit_default(images::png16(4000, 1000)).unwrap();
    let (format, w, h) = images::dims(&fitted.bytes);
    assert_eq!((format, w, h), (ImageFormat::Jpeg, 3072, 768));
}

#[test]
fn transparency_is_kept_as_png() {
    let fitted = fit_default(images::png_alpha(300, 300)).unwrap();
    assert_eq!(fitted.format, Format::Png);
    let img = image::load_from_memory(&fitted.bytes).unwrap().to_rgba8();
    assert_eq!(img.dimensions(), (384, 384));
    assert_eq!(img.get_pixel(5, 5).0[3], 0);
    assert_eq!(img.get_pixel(380, 5).0[3], 255);
}

#[test]
fn an_animated_gif_becomes_its_first_frame() {
    let fitted = fit_default(images::animated_gif(400, 400)).unwrap();
    assert!(!fitted.passthrough);
    let img = image::load_from_memory(&fitted.bytes).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (400, 400));
    let p = img.get_pixel(200, 200).0;
    assert!(p[0] > 200 && p[2] < 50, "first frame is red, got {p:?}");
}

#[test]
fn exif_orientation_is_applied_when_the_image_is_re_encoded() {
    let fitted = fit_default(images::jpeg_with_orientation(4000, 3000, 6)).unwrap();
    let (_, w, h) = images::dims(&fitted.bytes);
    assert_eq!((w, h), (2304, 3072), "rotated to portrait");
}

#[test]
fn an_aspect_ratio_that_cannot_fit_is_refused() {
    let err = fit_default(images::png(100, 5000)).unwrap_err();
    assert_eq!(
        err,
        ImageRejection::BadAspect {
            width: 100,
            height: 5000
        }
    );
    // 8:1 is the widest that fits 384–3072.
    let fitted = fit_default(images::png(3072 * 2, 384 * 2)).unwrap();
    assert_eq!((fitted.width, fitted.height), (3072, 384));
}

#[test]
fn an_in_range_file_over_7_mb_is_re_encoded_under_the_data_uri_limit() {
    let noisy = image::DynamicImage::ImageRgb8(image::ImageBuffer::from_fn(2000, 2000, |x, y| {
        let v = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40503)) as u8;
        image::Rgb([v, v.wrapping_mul(3), v.wrapping_add(x as u8)])
    }));
    let bmp = images::encode(&noisy, ImageFormat::Bmp);
    assert!(bmp.len() > 7 * 1024 * 1024);
    let fitted = fit_default(bmp).unwrap();
    assert!(!fitted.passthrough);
    assert!(fitted.data_uri().len() <= 10 * 1024 * 1024);
    assert_eq!((fitted.width, fitted.height), (2000, 2000));
}

#[test]
fn formats_are_sniffed_from_bytes_and_dimensions_read_from_the_header() {
    assert_eq!(sniff(&images::png(2, 2)), Ok(Format::Png));
    let webp = images::encode(&images::rgb(500, 400), ImageFormat::WebP);
    let p = probe(&webp).unwrap();
    assert_eq!((p.format, p.width, p.height), (Format::WebP, 500, 400));
    let tiff = images::encode(&images::rgb(500, 400), ImageFormat::Tiff);
    let fitted = fit_default(tiff.clone()).unwrap();
    assert!(fitted.passthrough);
    assert!(fitted.data_uri().starts_with("data:image/tiff;base64,"));
}

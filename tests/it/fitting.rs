//! Input fitting (docs/PRODUCT.md §6): pass-through, resize, re-encode, refusals.

use bytes::Bytes;
use image::ImageFormat;
use qwen_edit_bot::backend::dashscope::{INPUT_RULES, data_uri};
use qwen_edit_bot::core::image::{FitLimits, Format, ImageRejection, fit, probe, sniff};

use crate::fakes::images;

fn fit_default(bytes: Vec<u8>) -> Result<qwen_edit_bot::core::image::Fitted, ImageRejection> {
    fit(Bytes::from(bytes), &FitLimits::new(INPUT_RULES))
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
    let uri = data_uri(&fitted);
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
    // To the useful side (2048), not the API's largest (3072): the service makes nothing
    // bigger from it.
    assert_eq!((format, w, h), (ImageFormat::Jpeg, 2048, 1536));
    assert!(data_uri(&fitted).len() <= 10 * 1024 * 1024);
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
        ..FitLimits::new(INPUT_RULES)
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
    assert_eq!((format, w, h), (ImageFormat::Jpeg, 2048, 512));
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
    // Decoded at half size (the DCT's 1/2 scale, already within 2048) and turned upright.
    assert_eq!((w, h), (1500, 2000), "rotated to portrait");
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
    assert!(data_uri(&fitted).len() <= 10 * 1024 * 1024);
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
    assert!(data_uri(&fitted).starts_with("data:image/tiff;base64,"));
}

/// A PNG chunk: length, type, data, CRC.
fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = u32::try_from(data.len()).unwrap().to_be_bytes().to_vec();
    c.extend_from_slice(kind);
    c.extend_from_slice(data);
    let mut crc_input = kind.to_vec();
    crc_input.extend_from_slice(data);
    c.extend_from_slice(&crc32fast::hash(&crc_input).to_be_bytes());
    c
}

#[test]
fn plausible_but_broken_files_are_refused_as_damaged_and_never_passed_through() {
    // 57 bytes claiming 1024×1449: a header and no pixels.
    let mut ihdr = 1024u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&1449u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut tiny = b"\x89PNG\r\n\x1a\n".to_vec();
    tiny.extend_from_slice(&chunk(b"IHDR", &ihdr));
    tiny.resize(57, 0);
    assert_eq!(fit_default(tiny).unwrap_err(), ImageRejection::Corrupt);
    // A real in-range PNG with one byte of its pixel data changed (its CRC no longer matches),
    // and one whose IEND is missing.
    let png = images::png(800, 600);
    let idat = png.windows(4).position(|w| w == b"IDAT").unwrap();
    let mut flipped = png.clone();
    flipped[idat + 40] ^= 0x55;
    assert_eq!(fit_default(flipped).unwrap_err(), ImageRejection::Corrupt);
    let mut no_end = png.clone();
    no_end.truncate(png.len() - 12);
    assert_eq!(fit_default(no_end).unwrap_err(), ImageRejection::Corrupt);
    // A JPEG whose segment length runs past the end.
    let jpeg = images::jpeg(800, 600);
    let mut overrun = jpeg[..2].to_vec();
    overrun.extend_from_slice(&[0xFF, 0xE1, 0xFF, 0xF0]);
    overrun.extend_from_slice(&jpeg[2..]);
    assert_eq!(fit_default(overrun).unwrap_err(), ImageRejection::Corrupt);
    // A WebP whose RIFF size promises more than the file has.
    let mut webp = images::encode(&images::rgb(500, 400), ImageFormat::WebP);
    let riff = u32::from_le_bytes(webp[4..8].try_into().unwrap()) + 100;
    webp[4..8].copy_from_slice(&riff.to_le_bytes());
    assert_eq!(fit_default(webp).unwrap_err(), ImageRejection::Corrupt);
    // A BMP and a TIFF cut short (their pixel data is not all there).
    let mut bmp = images::encode(&images::rgb(500, 400), ImageFormat::Bmp);
    bmp.truncate(bmp.len() / 2);
    assert_eq!(fit_default(bmp).unwrap_err(), ImageRejection::Corrupt);
    let tiff = images::encode(&images::rgb(500, 400), ImageFormat::Tiff);
    let mut short = tiff.clone();
    let ifd = u32::from_le_bytes(tiff[4..8].try_into().unwrap()) as usize;
    // Strips are written before the directory: cutting below it breaks the directory, moving
    // it out of the file breaks the strips' offsets.
    short.truncate(ifd + 4);
    assert_eq!(fit_default(short).unwrap_err(), ImageRejection::Corrupt);
}

#[test]
fn the_structure_walk_of_a_large_jpeg_is_quick_even_in_a_debug_build() {
    let big = images::encode(&images::rgb(3000, 3000), ImageFormat::Jpeg);
    assert!(qwen_edit_bot::core::verify::whole(Format::Jpeg, &big));
    let runs = 20;
    let started = std::time::Instant::now();
    for _ in 0..runs {
        assert!(qwen_edit_bot::core::verify::whole(Format::Jpeg, &big));
    }
    let each = started.elapsed() / runs;
    // Debug builds are slower than the bench's release build; still well under 10 ms.
    assert!(
        each < std::time::Duration::from_millis(10),
        "{each:?} for {} bytes",
        big.len()
    );
}

#[test]
fn rotated_photos_are_turned_upright_even_when_they_could_pass_through() {
    let fitted = fit_default(images::jpeg_with_orientation(800, 600, 6)).unwrap();
    assert!(!fitted.passthrough, "decoded to apply the orientation");
    assert_eq!((fitted.width, fitted.height), (600, 800));
    let (_, w, h) = images::dims(&fitted.bytes);
    assert_eq!((w, h), (600, 800));
    // Upright ones still go out as they are.
    assert!(
        fit_default(images::jpeg_with_orientation(800, 600, 1))
            .unwrap()
            .passthrough
    );
}

#[test]
fn bigtiff_is_recognised_and_re_encoded() {
    let mut out = std::io::Cursor::new(Vec::new());
    let pixels: Vec<u8> = images::rgb(640, 480).into_rgb8().into_raw();
    tiff::encoder::TiffEncoder::new_big(&mut out)
        .unwrap()
        .write_image::<tiff::encoder::colortype::RGB8>(640, 480, &pixels)
        .unwrap();
    let big = out.into_inner();
    assert_eq!(&big[..4], b"II+\0");
    assert_eq!(sniff(&big), Ok(Format::Tiff));
    let fitted = fit_default(big).unwrap();
    assert_eq!(
        (fitted.format, fitted.width, fitted.height),
        (Format::Jpeg, 640, 480)
    );
}

#[test]
fn a_bmp_whose_alpha_is_all_zero_is_opaque() {
    let mut rgba = images::rgb(500, 400).into_rgba8();
    rgba.pixels_mut().for_each(|p| p.0[3] = 0);
    let bmp = images::encode(&image::DynamicImage::ImageRgba8(rgba), ImageFormat::Bmp);
    let fitted = fit_default(bmp).unwrap();
    assert_eq!(
        fitted.format,
        Format::Jpeg,
        "no alpha: sent as an opaque JPEG"
    );
    let decoded = image::load_from_memory(&fitted.bytes).unwrap().into_rgb8();
    assert!(
        decoded.pixels().any(|p| p.0 != [0, 0, 0]),
        "the picture, not black"
    );
    // A PNG that really is transparent keeps its alpha.
    assert_eq!(
        fit_default(images::png_alpha(500, 400)).unwrap().format,
        Format::Png
    );
}

#[test]
fn heif_and_avif_brands_are_named_and_messages_say_what_is_wrong() {
    use qwen_edit_bot::core::error::Rejection;
    use qwen_edit_bot::messages::{Lang, rejection};
    for (brand, kind) in [
        (b"ftypavis", "AVIF"),
        (b"ftypheim", "HEIC"),
        (b"ftypmsf1", "HEIC"),
    ] {
        let mut file = vec![0, 0, 0, 24];
        file.extend_from_slice(brand);
        file.extend_from_slice(&[0; 8]);
        assert_eq!(
            fit_default(file).unwrap_err(),
            ImageRejection::Unsupported(kind)
        );
    }
    let big = Rejection::Image(ImageRejection::TooManyPixels {
        width: 30000,
        height: 20,
    });
    assert!(rejection(Lang::En, &big).contains("30000×20"));
    let feature = Rejection::Image(ImageRejection::UnsupportedFeature("TIFF CIELab".into()));
    assert!(rejection(Lang::En, &feature).contains("TIFF CIELab"));
    assert!(rejection(Lang::Zh, &feature).contains("TIFF CIELab"));
}

#[test]
fn four_16_bit_bombs_at_once_stay_within_the_shared_budget() {
    // 20000×2500 RGBA 16-bit: 400 MB decoded, more than the whole budget.
    let bomb = Bytes::from(images::png_bomb_of(20_000, 2_500, 16, 6));
    let limits = FitLimits::new(INPUT_RULES);
    let budget = limits.budget.clone();
    let started = std::time::Instant::now();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (bomb, limits) = (bomb.clone(), limits.clone());
                s.spawn(move || fit(bomb, &limits))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results {
        assert_eq!(
            r.unwrap_err(),
            ImageRejection::TooManyPixels {
                width: 20_000,
                height: 2_500
            }
        );
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "refused before decoding"
    );
    assert_eq!(budget.in_use(), 0);
}

#[test]
fn a_fit_waits_while_others_hold_the_budget_and_gives_it_back() {
    let limits = FitLimits::new(INPUT_RULES);
    let budget = limits.budget.clone();
    let held = budget.reserve(budget.total() - 1024).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let input = Bytes::from(images::png(4000, 1000));
    let worker = {
        let limits = limits.clone();
        std::thread::spawn(move || tx.send(fit(input, &limits)).unwrap())
    };
    assert!(
        rx.recv_timeout(std::time::Duration::from_millis(300))
            .is_err(),
        "no memory left: the fit waits"
    );
    drop(held);
    let fitted = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("runs once the memory is free")
        .unwrap();
    worker.join().unwrap();
    assert_eq!((fitted.width, fitted.height), (2048, 512));
    assert_eq!(budget.in_use(), 0, "given back");
}

#[test]
fn a_large_jpeg_is_decoded_at_a_reduced_scale_with_the_same_picture() {
    let big = images::jpeg(4000, 3000);
    let fitted = fit_default(big.clone()).unwrap();
    assert_eq!(
        (fitted.format, fitted.width, fitted.height),
        (Format::Jpeg, 2000, 1500)
    );
    // The same picture as a full decode scaled down, up to encoding loss.
    let reduced = image::load_from_memory(&fitted.bytes).unwrap().into_rgb8();
    let full = image::load_from_memory(&big)
        .unwrap()
        .resize_exact(2000, 1500, image::imageops::FilterType::Triangle)
        .into_rgb8();
    let diff: u64 = reduced
        .as_raw()
        .iter()
        .zip(full.as_raw())
        .map(|(a, b)| u64::from(a.abs_diff(*b)))
        .sum();
    let mean = diff as f64 / reduced.as_raw().len() as f64;
    assert!(mean < 3.0, "mean difference {mean:.2} per channel");
    // A CMYK JPEG (which that decoder does not take) still fits the usual way.
    let cmyk = fit_default(images::cmyk_jpeg(4000, 3000)).unwrap();
    assert_eq!((cmyk.width, cmyk.height), (2048, 1536));
}

#[test]
fn a_jpeg_encoded_in_two_halves_at_once_is_the_file_one_encoder_makes() {
    // Heights around MCU rows and the restart numbering's cycle of 8 (upper halves of 8, 9,
    // 15 and 16 rows of MCUs), widths that are and are not a whole number of MCUs.
    for (w, h) in [
        (2000, 1500),
        (1001, 257),
        (640, 480),
        (777, 512),
        (300, 288),
    ] {
        let img = images::rgb(w, h).into_rgb8();
        let ours = qwen_edit_bot::core::image::jpeg(img.as_raw(), w, h, 90).unwrap();
        let mut single = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut single, 90);
        encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
        encoder.set_restart_interval(w.div_ceil(16) as u16);
        encoder
            .encode(
                img.as_raw(),
                w as u16,
                h as u16,
                jpeg_encoder::ColorType::Rgb,
            )
            .unwrap();
        assert!(ours == single, "{w}x{h}: the joined file differs");
        let decoded = image::load_from_memory(&ours).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (w, h));
    }
}

/// A little-endian TIFF of one directory with `entries` (tag, SHORT or LONG value; sorted as
/// given) and `pixels` as its single uncompressed strip.
fn raw_tiff(entries: &[(u16, u32)], pixels: &[u8]) -> Vec<u8> {
    let ifd = 8 + pixels.len() as u32;
    let mut out = b"II*\0".to_vec();
    out.extend_from_slice(&ifd.to_le_bytes());
    out.extend_from_slice(pixels);
    out.extend_from_slice(&(entries.len() as u16 + 2).to_le_bytes());
    let mut all: Vec<(u16, u32)> = entries.to_vec();
    all.push((273, 8)); // StripOffsets
    all.push((279, pixels.len() as u32)); // StripByteCounts
    all.sort_by_key(|e| e.0);
    for (tag, value) in all {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes()); // LONG
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    out
}

#[test]
fn tiff_headers_that_disagree_with_themselves_or_split_bytes_are_refused() {
    // 64×48 grey; a second ImageWidth/ImageLength pair claims 46000×46000 (one reader takes
    // the first, another the last: the limits must not be checked on one and decoded on the
    // other).
    let grey = vec![128u8; 64 * 48];
    let base = [
        (256, 64),
        (257, 48),
        (258, 8),
        (259, 1),
        (262, 1),
        (277, 1),
        (278, 48),
    ];
    assert!(
        fit_default(raw_tiff(&base, &grey)).is_ok(),
        "the plain file fits"
    );
    let mut doubled = base.to_vec();
    doubled.extend([(256, 46_000), (257, 46_000)]);
    assert_eq!(
        fit_default(raw_tiff(&doubled, &grey)).unwrap_err(),
        ImageRejection::Corrupt
    );
    // 3-bit samples cross byte boundaries: named, not misread.
    let mut three = base.to_vec();
    three[2] = (258, 3);
    assert_eq!(
        fit_default(raw_tiff(&three, &vec![0u8; 64 * 48 * 3 / 8])).unwrap_err(),
        ImageRejection::UnsupportedFeature("TIFF 3-bit samples".into())
    );
}

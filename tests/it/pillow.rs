//! Images as Pillow reads them: small fixtures of the layouts real users send (TIFF variants,
//! PNG transparency, WebP with EXIF rotation), each beside Pillow's own rendering of it
//! (`*.ref.png`, made by Pillow 13 with `ImageOps.exif_transpose(...).convert("RGBA")`). A
//! fitted image must show the same picture, upright, with transparency where Pillow has it.

use std::path::Path;

use bytes::Bytes;
use image::{DynamicImage, imageops::FilterType};
use qwen_edit_bot::backend::dashscope::INPUT_RULES;
use qwen_edit_bot::core::image::{FitLimits, fit};

fn fixture(name: &str) -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures");
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Mean absolute difference per channel (RGB where the reference is opaque, and alpha)
/// between the fitted image and the reference, both averaged down to 16×12 (dithered fixtures
/// would otherwise compare their noise), and whether the fitted image has transparency.
fn compare(name: &str) -> (f64, f64, bool) {
    compare_with(name, &format!("{name}.ref.png"))
}

/// [`compare`] against another fixture's rendering (for files Pillow cannot open, made from
/// the same picture as one it can).
fn compare_with(name: &str, reference: &str) -> (f64, f64, bool) {
    let fitted = fit(Bytes::from(fixture(name)), &FitLimits::new(INPUT_RULES))
        .unwrap_or_else(|e| panic!("{name}: refused: {e}"));
    let small = |img: DynamicImage| img.resize_exact(16, 12, FilterType::Triangle).into_rgba8();
    let reference = small(image::load_from_memory(&fixture(reference)).unwrap());
    let decoded = image::load_from_memory(&fitted.bytes).unwrap();
    let transparent = decoded.color().has_alpha();
    let ours = small(decoded);
    let (mut rgb, mut alpha) = (0u64, 0u64);
    for (a, b) in ours.pixels().zip(reference.pixels()) {
        if b.0[3] == 255 {
            rgb += (0..3)
                .map(|i| u64::from(a.0[i].abs_diff(b.0[i])))
                .sum::<u64>();
        }
        alpha += u64::from(a.0[3].abs_diff(b.0[3]));
    }
    let n = f64::from(reference.width() * reference.height());
    (rgb as f64 / (n * 3.0), alpha as f64 / n, transparent)
}

#[test]
fn supported_layouts_show_the_picture_pillow_shows() {
    // (fixture, has transparency)
    for (name, alpha) in [
        ("png_1bit_trns.png", true),
        ("png_palette_trns.png", true),
        ("tiff_bilevel.tiff", false),
        ("tiff_bilevel_g4.tiff", false),
        ("tiff_cmyk.tiff", false),
        ("tiff_deflate.tiff", false),
        ("tiff_gray16.tiff", false),
        ("tiff_gray16_be.tiff", false),
        ("tiff_lzw.tiff", false),
        ("tiff_packbits.tiff", false),
        ("tiff_rgba.tiff", false),
        ("tiff_ycbcr_jpeg.tiff", false),
        ("webp_rot6.webp", false),
        ("webp_rot6_lossy.webp", false),
        // Layouts the TIFF codec refused; made by tests/it/fixtures/make.py.
        ("tiff_palette.tiff", false),
        ("tiff_palette4.tiff", false),
        ("tiff_lab.tiff", false),
        ("tiff_float.tiff", false),
        ("tiff_planar.tiff", false),
        ("tiff_gray2.tiff", false),
        ("tiff_gray4.tiff", false),
        ("tiff_int16s.tiff", false),
        ("tiff_int8s.tiff", false),
        ("tiff_extra.tiff", false),
        ("tiff_rgba_premul.tiff", true),
        ("tiff_ycbcr.tiff", false),
        ("tiff_big.tiff", false),
        ("bmp_os2.bmp", false),
        ("bmp_os2v2.bmp", false),
    ] {
        let (rgb, a, transparent) = compare(name);
        assert_close(name, rgb, a);
        assert_eq!(transparent, alpha, "{name}: transparency");
    }
    // Pillow has no mode for float RGB; the file holds the planar fixture's picture in 0–1.
    let (rgb, a, transparent) = compare_with("tiff_float_rgb.tiff", "tiff_planar.tiff.ref.png");
    assert_close("tiff_float_rgb.tiff", rgb, a);
    assert!(!transparent);
}

fn assert_close(name: &str, rgb: f64, alpha: f64) {
    assert!(rgb < 4.0, "{name}: colour differs by {rgb:.2} per channel");
    assert!(alpha < 4.0, "{name}: alpha differs by {alpha:.2}");
}

#[test]
fn layouts_we_cannot_read_are_refused_naming_the_feature() {
    use qwen_edit_bot::core::image::ImageRejection;
    for (name, feature) in [
        ("tiff_gray12.tiff", "TIFF 12-bit samples"),
        (
            "tiff_ycbcr_sub.tiff",
            "TIFF subsampled YCbCr without JPEG compression",
        ),
        ("jpeg_lossless.jpg", "lossless JPEG"),
        ("bmp_rle8_topdown.bmp", "top-down RLE BMP"),
    ] {
        let err = fit(Bytes::from(fixture(name)), &FitLimits::new(INPUT_RULES)).unwrap_err();
        assert_eq!(
            err,
            ImageRejection::UnsupportedFeature(feature.into()),
            "{name}"
        );
    }
}

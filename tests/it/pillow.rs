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
    let fitted = fit(Bytes::from(fixture(name)), &FitLimits::new(INPUT_RULES))
        .unwrap_or_else(|e| panic!("{name}: refused: {e}"));
    let small = |img: DynamicImage| img.resize_exact(16, 12, FilterType::Triangle).into_rgba8();
    let reference = small(image::load_from_memory(&fixture(&format!("{name}.ref.png"))).unwrap());
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
    ] {
        let (rgb, a, transparent) = compare(name);
        assert!(rgb < 4.0, "{name}: colour differs by {rgb:.2} per channel");
        assert!(a < 4.0, "{name}: alpha differs by {a:.2}");
        assert_eq!(transparent, alpha, "{name}: transparency");
    }
}

#[test]
fn layouts_we_cannot_read_are_refused_naming_the_feature() {
    use qwen_edit_bot::core::image::ImageRejection;
    for (name, feature) in [
        ("tiff_palette.tiff", "TIFF palette colours"),
        ("tiff_lab.tiff", "TIFF CIELab colours"),
        ("tiff_float.tiff", "TIFF 32-bit samples"),
    ] {
        let err = fit(Bytes::from(fixture(name)), &FitLimits::new(INPUT_RULES)).unwrap_err();
        assert_eq!(
            err,
            ImageRejection::UnsupportedFeature(feature.into()),
            "{name}"
        );
    }
}

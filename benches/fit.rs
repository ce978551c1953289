//! Fitting benchmark: `cargo bench --bench fit`.
//!
//! Prints median and p90 wall time of
//! - pass-through of an in-range 3 MP JPEG, data URI (base64) included (target: well under 5 ms);
//! - fitting a 12 MP JPEG (4000×3000) into 384–3072 px, data URI included (target: ≤ 250 ms).
//!
//! Inputs are photo-like (gradients plus noise) so that JPEG decode and encode do real work.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use image::{DynamicImage, ImageBuffer, Rgb};
use qwen_edit_bot::core::image::{FitLimits, fit};

fn photo(w: u32, h: u32) -> Vec<u8> {
    let mut seed = 0x1234_5678u32;
    let img = ImageBuffer::from_fn(w, h, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let noise = (seed & 0x3f) as u8;
        Rgb([
            ((x * 200 / w) as u8).wrapping_add(noise),
            ((y * 180 / h) as u8).wrapping_add(noise / 2),
            (((x + y) * 90 / (w + h)) as u8).wrapping_add(noise),
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92);
    enc.encode_image(&DynamicImage::ImageRgb8(img)).unwrap();
    out.into_inner()
}

fn measure(name: &str, runs: usize, input: &Bytes, expect_passthrough: bool) {
    let limits = FitLimits::default();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let fitted = fit(input.clone(), &limits).expect("fits");
        let uri = fitted.data_uri();
        black_box(uri.len());
        times.push(started.elapsed());
        assert_eq!(fitted.passthrough, expect_passthrough);
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<44} input {:>6.2} MB  median {:>8.3} ms  p90 {:>8.3} ms  min {:>8.3} ms  ({runs} runs)",
        input.len() as f64 / 1e6,
        ms(times[runs / 2]),
        ms(times[runs * 9 / 10]),
        ms(times[0]),
    );
}

fn main() {
    if std::env::var("STAGES").is_ok() {
        stages();
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: one quick pass then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let runs = |n: usize| if quick { 1 } else { n };
    let three_mp = Bytes::from(photo(2000, 1500));
    measure(
        "pass-through 2000x1500 JPEG (3 MP)",
        runs(200),
        &three_mp,
        true,
    );
    let twelve_mp = Bytes::from(photo(4000, 3000));
    measure(
        "fit 4000x3000 JPEG (12 MP) -> 3072x2304",
        runs(15),
        &twelve_mp,
        false,
    );
    let small = Bytes::from(photo(200, 150));
    measure("fit 200x150 JPEG -> 512x384", runs(50), &small, false);
}

fn stages() {
    let input = photo(4000, 3000);
    let t = Instant::now();
    let img = image::load_from_memory(&input).unwrap();
    println!("decode {:?}", t.elapsed());
    let t = Instant::now();
    let mut dst =
        fast_image_resize::images::Image::new(3072, 2304, fast_image_resize::PixelType::U8x3);
    fast_image_resize::Resizer::new()
        .resize(
            &img,
            &mut dst,
            &fast_image_resize::ResizeOptions::new().resize_alg(
                fast_image_resize::ResizeAlg::Convolution(
                    fast_image_resize::FilterType::CatmullRom,
                ),
            ),
        )
        .unwrap();
    println!("resize {:?}", t.elapsed());
    let t = Instant::now();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(dst.buffer(), 3072, 2304, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    println!("encode {:?} -> {} bytes", t.elapsed(), out.len());
}

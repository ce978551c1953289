//! Fitting benchmark: `cargo bench --bench fit`.
//!
//! Prints median and p90 wall time of
//! - pass-through of an in-range 3 MP JPEG, data URI (base64) included, and the structure walk
//!   alone of a 2 MB JPEG (target: ≤ 1 ms);
//! - fitting a 12 MP JPEG (4000×3000) to the useful 2048 px, data URI included (target: ≤ 80 ms),
//!   with the process's peak resident memory during it (≤ 60 MiB) and after (≤ 25 MiB);
//! - four 20000×2500 16-bit PNGs at once (each 400 MB decoded): refused within the shared budget;
//! - a 3000×2000 6 MB photo over a 20 Mbit/s link: sent as it is vs fitted to 2048 px first.
//!
//! Inputs are photo-like (gradients plus noise) so that JPEG decode and encode do real work.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use image::{DynamicImage, ImageBuffer, Rgb};
use qwen_edit_bot::backend::dashscope::{INPUT_RULES, data_uri};
use qwen_edit_bot::core::image::{FitLimits, Format, fit};

/// A photo-like JPEG (quality 92): gradients plus per-pixel noise of `noise` levels. With 64
/// levels a 12 MP picture takes 7.8 MB, more than any camera makes (the worst case); with 32,
/// 4.4 MB, as a 12 MP phone photo.
fn photo_with(w: u32, h: u32, noise: u32) -> Vec<u8> {
    let mut seed = 0x1234_5678u32;
    let img = ImageBuffer::from_fn(w, h, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let noise = (seed % noise) as u8;
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

fn photo(w: u32, h: u32) -> Vec<u8> {
    photo_with(w, h, 64)
}

fn measure(name: &str, runs: usize, input: &Bytes, expect_passthrough: bool) {
    let limits = FitLimits::new(INPUT_RULES);
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let fitted = fit(input.clone(), &limits).expect("fits");
        let uri = data_uri(&fitted);
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
    qwen_edit_bot::memory::tune_allocator();
    if std::env::var("STAGES").is_ok() {
        stages();
        return;
    }
    // FIT_FILE=photo.jpg: the same fit on a file of yours (to set beside another tool's time).
    if let Ok(path) = std::env::var("FIT_FILE") {
        let input = Bytes::from(std::fs::read(&path).expect("FIT_FILE is readable"));
        measure(&format!("fit {path}"), 15, &input, false);
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
    walk(runs(200), &three_mp);
    let twelve_mp = Bytes::from(photo(4000, 3000));
    reset_peak();
    measure(
        "fit 4000x3000 JPEG (12 MP) -> 2000x1500",
        runs(15),
        &twelve_mp,
        false,
    );
    println!(
        "  resident memory: peak during the fits {:.1} MiB, after {:.1} MiB",
        status_mib("VmHWM:"),
        status_mib("VmRSS:")
    );
    drop(twelve_mp);
    let camera = Bytes::from(photo_with(4000, 3000, 32));
    measure(
        "fit 4000x3000 camera-like JPEG -> 2000x1500",
        runs(15),
        &camera,
        false,
    );
    drop(camera);
    let small = Bytes::from(photo(200, 150));
    measure("fit 200x150 JPEG -> 512x384", runs(50), &small, false);
    bombs();
    link(&Bytes::from(photo(3000, 2000)), quick);
}

/// The structure walk alone (`core::verify`), as the pass-through does it.
fn walk(runs: usize, jpeg: &Bytes) {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            assert!(qwen_edit_bot::core::verify::whole(Format::Jpeg, jpeg));
            t.elapsed()
        })
        .collect();
    times.sort();
    println!(
        "structure walk of a {:.2} MB JPEG                median {:>8.3} ms",
        jpeg.len() as f64 / 1e6,
        times[runs / 2].as_secs_f64() * 1000.0
    );
}

/// Four decompression bombs (20000×2500 RGBA 16-bit) fitted at once with one shared budget.
fn bombs() {
    reset_peak();
    let before = status_mib("VmRSS:");
    let limits = FitLimits::new(INPUT_RULES);
    let bomb = Bytes::from(png16_bomb(20_000, 2_500));
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (bomb, limits) = (bomb.clone(), limits.clone());
            s.spawn(move || assert!(fit(bomb, &limits).is_err()));
        }
    });
    println!(
        "4 x 20000x2500 16-bit PNG at once: refused in {:.1} ms, peak {:.1} MiB (from {:.1}; budget {} MiB)",
        t.elapsed().as_secs_f64() * 1000.0,
        status_mib("VmHWM:"),
        before,
        limits.budget.total() >> 20
    );
}

/// A 16-bit RGBA PNG header claiming `w`×`h` with almost no data.
fn png16_bomb(w: u32, h: u32) -> Vec<u8> {
    let chunk = |out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    };
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[16, 6, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x63, 0x00, 0x00]);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Bytes per second of the modelled link (20 Mbit/s).
const LINK_RATE: f64 = 20e6 / 8.0;

/// Time until a service behind a 20 Mbit/s link has the whole request body: the photo as it
/// is (its data URI), or fitted to the useful size first. A reader thread takes the bytes at
/// the link's rate from a loopback socket.
fn link(photo: &Bytes, quick: bool) {
    let limits = FitLimits::new(INPUT_RULES);
    let as_is = {
        let mut l = limits.clone();
        l.rules.useful_side = l.rules.max_side;
        l
    };
    for (name, limits) in [
        ("sent as it is", &as_is),
        ("fitted to 2048 px first", &limits),
    ] {
        let t = Instant::now();
        let fitted = fit(photo.clone(), limits).expect("fits");
        let uri = data_uri(&fitted);
        let bytes = if quick {
            &uri.as_bytes()[..uri.len().min(200_000)]
        } else {
            uri.as_bytes()
        };
        send_over_link(bytes);
        println!(
            "3000x2000 {:.1} MB photo over 20 Mbit/s, {name:<24} {:>6.2} s  ({:.2} MB on the wire, {}x{})",
            photo.len() as f64 / 1e6,
            t.elapsed().as_secs_f64(),
            uri.len() as f64 / 1e6,
            fitted.width,
            fitted.height
        );
    }
}

fn send_over_link(body: &[u8]) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let total = body.len();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let (start, mut got, mut buf) = (Instant::now(), 0usize, vec![0u8; 16 * 1024]);
        while got < total {
            // Never ahead of the link: wait until the bytes so far would have arrived.
            let due = Duration::from_secs_f64(got as f64 / LINK_RATE);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed early");
            got += n;
        }
    });
    let mut out = std::net::TcpStream::connect(addr).unwrap();
    out.write_all(body).unwrap();
    reader.join().unwrap();
}

/// A field of /proc/self/status in MiB (0 where there is none).
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with(field))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Starts a new peak (VmHWM) from the current resident size.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// `STAGES=1`: each step of the 12 MP fit alone, median of 9 (`NOISE=32` for the camera-like
/// photo).
fn stages() {
    let noise = std::env::var("NOISE").map_or(64, |n| n.parse().expect("NOISE is a number"));
    let input = photo_with(4000, 3000, noise);
    let median = |name: &str, f: &mut dyn FnMut()| {
        let mut times: Vec<Duration> = (0..9)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect();
        times.sort();
        println!("{name:<40} {:>8.2} ms", times[4].as_secs_f64() * 1000.0);
    };
    println!("4000x3000 JPEG of {:.2} MB", input.len() as f64 / 1e6);
    let mut half = Vec::new();
    for scale in [1u16, 2, 4] {
        median(&format!("jpeg-decoder at 1/{scale}"), &mut || {
            let mut d = jpeg_decoder::Decoder::new(std::io::Cursor::new(&input));
            d.scale(4000 / scale, 3000 / scale).unwrap();
            let px = d.decode().unwrap();
            if scale == 2 {
                half = px;
            }
        });
    }
    use qwen_edit_bot::core::jpeg::{Split, baseline};
    median("our baseline reader at 1/2, one thread", &mut || {
        black_box(baseline(&input, 2, |_| Split::None).unwrap());
    });
    median("our baseline reader at 1/2, two threads", &mut || {
        black_box(baseline(&input, 2, |n| Split::At(n / 2)).unwrap());
    });
    median("image (zune-jpeg) full decode", &mut || {
        black_box(image::load_from_memory(&input).unwrap());
    });
    for q in [90, 85] {
        median(&format!("encode 2000x1500 q{q}, one thread"), &mut || {
            let mut out = Vec::new();
            let mut e = jpeg_encoder::Encoder::new(&mut out, q);
            e.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
            e.encode(&half, 2000, 1500, jpeg_encoder::ColorType::Rgb)
                .unwrap();
            black_box(out.len());
        });
        median(&format!("encode 2000x1500 q{q}, two halves"), &mut || {
            black_box(
                qwen_edit_bot::core::image::jpeg(&half, 2000, 1500, q)
                    .unwrap()
                    .len(),
            );
        });
    }
}

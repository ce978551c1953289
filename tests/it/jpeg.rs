//! Our baseline JPEG reader (`core::jpeg::baseline`): the same picture as a full decode scaled
//! down, and the same pixels on two threads as on one, wherever the scan is cut.

use image::DynamicImage;
use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
use qwen_edit_bot::core::jpeg::{Split, baseline, joined_at};

/// A photo-like picture: gradients, a few hard edges and per-pixel noise of `noise` levels.
fn picture(w: u16, h: u16, noise: u32) -> Vec<u8> {
    let mut seed = 0x9E37_79B9u32;
    let mut rgb = Vec::with_capacity(usize::from(w) * usize::from(h) * 3);
    for y in 0..u32::from(h) {
        for x in 0..u32::from(w) {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let n = (seed % noise.max(1)) as u8;
            let edge = if (x / 37 + y / 23) % 3 == 0 { 90 } else { 0 };
            rgb.extend_from_slice(&[
                ((x * 200 / u32::from(w)) as u8)
                    .wrapping_add(n)
                    .wrapping_add(edge),
                ((y * 180 / u32::from(h)) as u8).wrapping_add(n / 2),
                (((x + y) * 90 / (u32::from(w) + u32::from(h))) as u8)
                    .wrapping_add(n)
                    .wrapping_sub(edge / 2),
            ]);
        }
    }
    rgb
}

/// The picture as a JPEG with this sampling (`None`: grey) and restart interval.
fn jpeg(w: u16, h: u16, noise: u32, sampling: Option<SamplingFactor>, restart: u16) -> Vec<u8> {
    let rgb = picture(w, h, noise);
    let mut out = Vec::new();
    let mut e = Encoder::new(&mut out, 90);
    if restart > 0 {
        e.set_restart_interval(restart);
    }
    match sampling {
        Some(s) => {
            e.set_sampling_factor(s);
            e.encode(&rgb, w, h, ColorType::Rgb).unwrap();
        }
        None => {
            let grey: Vec<u8> = rgb.chunks_exact(3).map(|p| p[0] / 2 + p[1] / 2).collect();
            e.encode(&grey, w, h, ColorType::Luma).unwrap();
        }
    }
    out
}

fn pixels(img: &DynamicImage) -> (u32, u32, Vec<u8>) {
    (img.width(), img.height(), img.as_bytes().to_vec())
}

const SAMPLINGS: [Option<SamplingFactor>; 5] = [
    Some(SamplingFactor::R_4_2_0),
    Some(SamplingFactor::R_4_2_2),
    Some(SamplingFactor::R_4_4_4),
    Some(SamplingFactor::R_4_4_0),
    None,
];

/// Mean and largest difference per sample between `ours` and `full` averaged over each
/// `factor`×`factor` square (the part of it inside the picture at the edges).
fn distance(ours: &DynamicImage, full: &DynamicImage, factor: u32) -> (f64, f64) {
    let channels = usize::from(ours.color().channel_count());
    let ((ow, oh, ours), (fw, fh, full)) = (pixels(ours), pixels(full));
    let (mut sum, mut worst) = (0f64, 0f64);
    for y in 0..oh {
        for x in 0..ow {
            for c in 0..channels {
                let (mut acc, mut count) = (0f64, 0f64);
                for yy in y * factor..((y + 1) * factor).min(fh) {
                    for xx in x * factor..((x + 1) * factor).min(fw) {
                        acc += f64::from(full[(yy * fw + xx) as usize * channels + c]);
                        count += 1.0;
                    }
                }
                let d = (acc / count - f64::from(ours[(y * ow + x) as usize * channels + c])).abs();
                sum += d;
                worst = worst.max(d);
            }
        }
    }
    (sum / (ow * oh) as f64 / channels as f64, worst)
}

#[test]
fn the_reduced_picture_is_a_full_decode_averaged_over_each_square() {
    for sampling in SAMPLINGS {
        for (w, h, restart) in [(643, 481, 0), (512, 384, 7), (1001, 37, 0)] {
            let file = jpeg(w, h, 24, sampling, restart);
            let full = image::load_from_memory(&file).unwrap();
            for factor in [2u32, 4, 8] {
                let label = format!("{sampling:?} {w}x{h} restart {restart} at 1/{factor}");
                let (img, _) =
                    baseline(&file, factor, |_| Split::None).unwrap_or_else(|| panic!("{label}"));
                let (ow, oh) = (u32::from(w).div_ceil(factor), u32::from(h).div_ceil(factor));
                assert_eq!((img.width(), img.height()), (ow, oh), "{label}");
                // Brightness: what chroma upsampling does not touch.
                let luma = |i: &DynamicImage| DynamicImage::ImageLuma8(i.to_luma8());
                let (mean, worst) = distance(&luma(&img), &luma(&full), factor);
                assert!(
                    mean < 3.0 && worst < 24.0,
                    "{label}: luma {mean:.2}, {worst:.1}"
                );
                // Without subsampled chroma, the picture itself: within a level on average.
                let full_colour = matches!(sampling, None | Some(SamplingFactor::R_4_4_4));
                if full_colour && factor == 2 {
                    assert!(mean < 0.6, "{label}: luma {mean:.2}");
                }
                if sampling.is_none() {
                    assert_eq!(img.color().channel_count(), 1, "{label}");
                    continue;
                }
                // Colour: no further from it than jpeg-decoder's own reduced decode, which
                // this reader replaces (at the picture's hard colour edges, where subsampled
                // chroma is interpolated, both differ from the full decode).
                let theirs = {
                    let mut d = jpeg_decoder::Decoder::new(&file[..]);
                    d.scale(ow as u16, oh as u16).unwrap();
                    let px = d.decode().unwrap();
                    DynamicImage::ImageRgb8(image::RgbImage::from_raw(ow, oh, px).unwrap())
                };
                let full = DynamicImage::ImageRgb8(full.to_rgb8());
                let (ours, _) = distance(&img, &full, factor);
                let (before, _) = distance(&theirs, &full, factor);
                assert!(
                    ours <= before + 0.05,
                    "{label}: colour {ours:.2} against {before:.2}"
                );
            }
        }
    }
}

#[test]
fn two_threads_give_the_pixels_one_thread_gives_wherever_the_scan_is_cut() {
    let mut cases = 0;
    for sampling in SAMPLINGS {
        for (noise, restart) in [(64, 0), (4, 0), (32, 3)] {
            let file = jpeg(700, 500, noise, sampling, restart);
            let one = baseline(&file, 2, |_| Split::None).expect("read on one thread");
            let one = pixels(&one.0);
            let mut data = 0;
            let _ = baseline(&file, 2, |n| {
                data = n;
                Split::None
            });
            for k in 1..24 {
                let at = data * k / 24 + k % 3;
                let two = baseline(&file, 2, |_| Split::At(at))
                    .unwrap_or_else(|| panic!("{sampling:?} noise {noise}: cut at {at} read"));
                assert!(
                    pixels(&two.0) == one,
                    "{sampling:?} noise {noise} restart {restart}: cut at {at} of {data} differs"
                );
                cases += 1;
            }
            // The work really was split: cut in the middle, the second thread's blocks from
            // about half of the picture on are the ones used.
            let joined = joined_at(&file, 2, Split::At(data / 2))
                .unwrap_or_else(|| panic!("{sampling:?} noise {noise}: never joined"));
            // Blocks per MCU and the MCU's width and height in pixels.
            let (per_mcu, mcu_w, mcu_h) = match sampling {
                Some(SamplingFactor::R_4_2_0) => (6, 16, 16),
                Some(SamplingFactor::R_4_2_2) => (4, 16, 8),
                Some(SamplingFactor::R_4_4_0) => (4, 8, 16),
                Some(_) => (3, 8, 8),
                None => (1, 8, 8),
            };
            let blocks = per_mcu * 700usize.div_ceil(mcu_w) * 500usize.div_ceil(mcu_h);
            assert!(
                joined > blocks / 4 && joined < blocks * 3 / 4,
                "{sampling:?} noise {noise} restart {restart}: joined at block {joined} of {blocks}"
            );
        }
    }
    assert_eq!(cases, 5 * 3 * 23);
}

#[test]
fn a_damaged_scan_reads_the_same_on_two_threads_as_on_one() {
    let file = jpeg(640, 480, 40, Some(SamplingFactor::R_4_2_0), 0);
    let mut data = 0;
    let _ = baseline(&file, 2, |n| {
        data = n;
        Split::None
    });
    let scan_start = file.len() - 2 - data;
    let mut refused = 0;
    for k in 0..40usize {
        let mut bad = file.clone();
        // A byte of the scan changed (never into a marker), in every part of it.
        let at = scan_start + data * k / 40 + 5;
        bad[at] = if bad[at] == 0x00 || bad[at] == 0xFE {
            0x5A
        } else {
            bad[at] ^ 0x5A
        };
        if bad[at - 1] == 0xFF {
            continue;
        }
        let one = baseline(&bad, 2, |_| Split::None).map(|(img, _)| pixels(&img));
        refused += usize::from(one.is_none());
        for cut in [data / 3, data / 2, data * 2 / 3] {
            let two = baseline(&bad, 2, |_| Split::At(cut)).map(|(img, _)| pixels(&img));
            assert!(
                two == one,
                "damage at {at}, cut at {cut}: the two readings differ"
            );
        }
    }
    // Some changes make a code that does not decode: refused (and left to the general decoder).
    assert!(refused > 0, "no damage was refused");
}

#[test]
fn codings_it_does_not_read_are_left_to_the_general_decoder() {
    // Progressive.
    let rgb = picture(320, 240, 16);
    let mut progressive = Vec::new();
    let mut e = Encoder::new(&mut progressive, 90);
    e.set_progressive(true);
    e.encode(&rgb, 320, 240, ColorType::Rgb).unwrap();
    assert!(baseline(&progressive, 2, |_| Split::None).is_none());
    assert!(qwen_edit_bot::core::jpeg::decode_reduced(&progressive, 2).is_some());
    // CMYK (four components).
    let cmyk = crate::fakes::images::cmyk_jpeg(320, 240);
    assert!(baseline(&cmyk, 2, |_| Split::None).is_none());
    // Truncated in its scan: the end marker is missing.
    let whole = jpeg(320, 240, 16, Some(SamplingFactor::R_4_2_0), 0);
    assert!(baseline(&whole[..whole.len() / 2], 2, |_| Split::None).is_none());
    // Not a JPEG.
    assert!(baseline(b"\x89PNG\r\n\x1a\n", 2, |_| Split::None).is_none());
}

#[test]
fn a_huffman_table_with_more_codes_than_its_lengths_hold_is_refused_without_a_panic() {
    // Three 1-bit codes, five 2-bit ones, nine 3-bit ones: no such tables exist; the lookup of
    // the first 9 bits would be filled past its end.
    let whole = jpeg(320, 240, 16, Some(SamplingFactor::R_4_2_0), 0);
    for (length, count) in [(1usize, 3u8), (2, 5), (3, 9)] {
        let mut counts = [0u8; 16];
        counts[length - 1] = count;
        let mut bad = whole[..2].to_vec();
        bad.extend_from_slice(&[0xFF, 0xC4]);
        bad.extend_from_slice(&(2 + 1 + 16 + u16::from(count)).to_be_bytes());
        bad.push(0x10);
        bad.extend_from_slice(&counts);
        bad.extend(0..count);
        bad.extend_from_slice(&whole[2..]);
        assert!(
            baseline(&bad, 2, |_| Split::None).is_none(),
            "{count} codes of {length} bits"
        );
    }
}

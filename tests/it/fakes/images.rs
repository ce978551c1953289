//! Test images made on the fly: plain, alpha, 16-bit, CMYK, EXIF-rotated, animated, bombs.

use std::io::Cursor;

use image::codecs::gif::GifEncoder;
use image::{DynamicImage, Frame, ImageBuffer, ImageFormat, Rgb, Rgba, RgbaImage};

/// An RGB gradient, so resizing and encoding do real work.
pub fn rgb(w: u32, h: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |x, y| {
        Rgb([
            (x * 255 / w.max(1)) as u8,
            (y * 255 / h.max(1)) as u8,
            ((x ^ y) & 0xff) as u8,
        ])
    }))
}

pub fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A `w`×`h` PNG of noise, which does not compress: about 3 bytes a pixel.
pub fn noise_png(w: u32, h: u32) -> Vec<u8> {
    let noisy = DynamicImage::ImageRgb8(image::ImageBuffer::from_fn(w, h, |x, y| {
        let v =
            (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)).wrapping_mul(2_246_822_519);
        image::Rgb([(v >> 8) as u8, (v >> 16) as u8, (v >> 24) as u8])
    }));
    encode(&noisy, ImageFormat::Png)
}

pub fn jpeg(w: u32, h: u32) -> Vec<u8> {
    encode(&rgb(w, h), ImageFormat::Jpeg)
}

pub fn png(w: u32, h: u32) -> Vec<u8> {
    encode(&rgb(w, h), ImageFormat::Png)
}

pub fn png_solid(w: u32, h: u32, c: [u8; 3]) -> Vec<u8> {
    let img = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(w, h, Rgb(c)));
    encode(&img, ImageFormat::Png)
}

/// PNG with a transparent left half.
pub fn png_alpha(w: u32, h: u32) -> Vec<u8> {
    let img: RgbaImage = ImageBuffer::from_fn(w, h, |x, _| {
        Rgba([200, 10, 10, if x < w / 2 { 0 } else { 255 }])
    });
    encode(&DynamicImage::ImageRgba8(img), ImageFormat::Png)
}

pub fn png16(w: u32, h: u32) -> Vec<u8> {
    let img = DynamicImage::ImageRgb16(ImageBuffer::from_fn(w, h, |x, y| {
        Rgb([(x * 65535 / w) as u16, (y * 65535 / h) as u16, 30000])
    }));
    encode(&img, ImageFormat::Png)
}

/// A CMYK JPEG (as Photoshop writes for print).
pub fn cmyk_jpeg(w: u16, h: u16) -> Vec<u8> {
    let data: Vec<u8> = (0..usize::from(w) * usize::from(h))
        .flat_map(|i| [(i % 255) as u8, 40, 90, 10])
        .collect();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 85)
        .encode(&data, w, h, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
    out
}

/// A JPEG whose EXIF orientation says "rotate 90° clockwise to display" (value 6).
pub fn jpeg_with_orientation(w: u32, h: u32, orientation: u16) -> Vec<u8> {
    let plain = jpeg(w, h);
    // APP1 "Exif\0\0" + little-endian TIFF header + one IFD entry (0x0112 = Orientation).
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"II*\0");
    tiff.extend_from_slice(&8u32.to_le_bytes());
    tiff.extend_from_slice(&1u16.to_le_bytes());
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes());
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let len = (app1.len() + 2) as u16;
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE1];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&plain[2..]);
    out
}

/// An animated GIF: a red first frame, then a blue one.
pub fn animated_gif(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = GifEncoder::new(&mut out);
        for c in [[255, 0, 0, 255], [0, 0, 255, 255]] {
            enc.encode_frame(Frame::new(ImageBuffer::from_pixel(w, h, Rgba(c))))
                .unwrap();
        }
    }
    out
}

/// A PNG header claiming `w`×`h` followed by a tiny compressed stream: decoding it would need
/// gigabytes.
pub fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    png_bomb_of(w, h, 8, 2)
}

/// Like [`png_bomb`] with another bit depth and colour type (16, 6: RGBA 16-bit).
pub fn png_bomb_of(w: u32, h: u32, depth: u8, colour: u8) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[depth, colour, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x63, 0x00, 0x00]);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Decodes an image and returns (format, width, height).
pub fn dims(bytes: &[u8]) -> (ImageFormat, u32, u32) {
    let format = image::guess_format(bytes).unwrap();
    let img = image::load_from_memory_with_format(bytes, format).unwrap();
    (format, img.width(), img.height())
}

//! TIFF, read by us on top of the `tiff` crate, so that what Pillow shows is what we send:
//! 1- to 16-bit grey, palette colours, RGB, CMYK, YCbCr and CIELab; unsigned, signed and float
//! samples; planar files; extra samples (alpha when the file says so, premultiplied or not;
//! ignored otherwise). The crate refuses palette and CIELab files outright, but decompresses
//! them like grey and RGB ones: such a file is read with its colour model rewritten in a copy,
//! and the samples are mapped to colours here. Like Pillow, signed and float samples are shown
//! clipped to 0–255 (floats all within 0–1 are scaled up first, as such files mean), but
//! signed bytes are read as unsigned ones, as Pillow does.

use std::borrow::Cow;

use ::tiff::decoder::{Decoder, DecodingResult, Limits};
use ::tiff::tags::Tag;
use ::tiff::{ColorType, TiffError, TiffUnsupportedError};
use image::metadata::Orientation;

use super::*;

const PHOTOMETRIC: u16 = 262;
const BLACK_IS_ZERO: u16 = 1;
const RGB: u16 = 2;
const PALETTE: u16 = 3;
const CMYK: u16 = 5;
const YCBCR: u16 = 6;
const CIELAB: u16 = 8;
const ICCLAB: u16 = 9;

/// Whether a TIFF is plain enough to send as it is: classic (not BigTIFF), upright, 8-bit grey,
/// RGB or RGBA (unassociated), one plane, unsigned samples. Anything else is decoded, as
/// services read little beyond that.
pub(super) fn plain(bytes: &[u8]) -> bool {
    let big = bytes
        .get(2..4)
        .is_some_and(|m| m == [43, 0] || m == [0, 43]);
    let Some(tags) = super::super::verify::tiff_tags(bytes, &[258, 262, 274, 284, 338, 339]) else {
        return false;
    };
    let value = |i: usize| tags[i].0.as_slice();
    !big && !value(0).is_empty()
        && value(0).iter().all(|&b| b == 8)
        && matches!(value(1), [1 | 2])
        && matches!(value(2), [] | [1])
        && matches!(value(3), [] | [1])
        && matches!(value(4), [] | [2])
        && value(5).iter().all(|&f| f == 1)
}

/// Width and height from the first directory.
pub(super) fn dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    let tags = super::super::verify::tiff_tags(bytes, &[256, 257])?;
    let side = |i: usize| tags[i].0.first().and_then(|&v| u32::try_from(v).ok());
    Some((side(0)?, side(1)?))
}

/// Decodes a TIFF's first image, upright, within the shared budget.
pub(super) fn decode<'l>(
    bytes: &[u8],
    p: Probe,
    limits: &'l FitLimits,
) -> Result<(DynamicImage, Reserved<'l>), ImageRejection> {
    let model = super::super::verify::tiff_tags(bytes, &[PHOTOMETRIC])
        .and_then(|mut t| t.pop())
        .ok_or(ImageRejection::Corrupt)?;
    let (data, model) = readable(bytes, model)?;
    let copied = if matches!(data, Cow::Owned(_)) {
        data.len()
    } else {
        0
    };
    let err = |e| rejection(e, p);
    let mut tiff_limits = Limits::default();
    tiff_limits.decoding_buffer_size =
        usize::try_from(limits.max_decode_alloc).unwrap_or(usize::MAX);
    let mut d = Decoder::new(Cursor::new(&*data))
        .map_err(err)?
        .with_limits(tiff_limits);
    if d.dimensions().map_err(err)? != (p.width, p.height) {
        // The decoder read another size than the limits were checked against.
        return Err(ImageRejection::Corrupt);
    }
    let colour = d.colortype().map_err(err)?;
    let bits = colour.bit_depth();
    if bits < 8 && 8 % bits != 0 {
        // Samples that cross byte boundaries (3, 5, 6, 7 bits).
        return Err(ImageRejection::UnsupportedFeature(format!(
            "TIFF {bits}-bit samples"
        )));
    }
    let layout = d.image_buffer_layout().map_err(err)?;
    let too_many = ImageRejection::TooManyPixels {
        width: p.width,
        height: p.height,
    };
    let reserved = limits
        .budget
        .reserve(decode::decode_cost(
            p,
            (layout.complete_len + copied) as u64,
            limits,
        ))
        .ok_or_else(|| too_many.clone())?;
    let tags = Tags::read(&mut d, colour).map_err(err)?;
    let mut samples = DecodingResult::U8(Vec::new());
    d.read_image_to_buffer(&mut samples).map_err(err)?;
    if samples.as_buffer(0).as_bytes().len() < layout.complete_len {
        // Not every plane fitted the decoder's limit.
        return Err(too_many);
    }
    let planar = layout.planes > 1;
    let pixels =
        Pixels::new(&samples, colour, p.width, p.height, planar).ok_or(ImageRejection::Corrupt)?;
    let mut img = to_rgb(&pixels, model, &tags).ok_or(ImageRejection::Corrupt)?;
    drop(samples);
    img.apply_orientation(tags.orientation);
    Ok((img, reserved))
}

/// The bytes the crate can read, and the colour model the samples are in: palette files are
/// read as grey (the samples are the indices), CIELab ones as RGB (L, a, b).
fn readable(
    bytes: &[u8],
    (value, at): (Vec<u64>, Option<usize>),
) -> Result<(Cow<'_, [u8]>, u16), ImageRejection> {
    let model = value
        .first()
        .and_then(|&v| u16::try_from(v).ok())
        .unwrap_or(BLACK_IS_ZERO);
    let read_as = match model {
        PALETTE => BLACK_IS_ZERO,
        CIELAB | ICCLAB => RGB,
        _ => return Ok((Cow::Borrowed(bytes), model)),
    };
    let at = at.ok_or(ImageRejection::Corrupt)?;
    let mut copy = bytes.to_vec();
    let field = copy.get_mut(at..at + 2).ok_or(ImageRejection::Corrupt)?;
    field.copy_from_slice(&if bytes.starts_with(b"II") {
        read_as.to_le_bytes()
    } else {
        read_as.to_be_bytes()
    });
    Ok((Cow::Owned(copy), model))
}

/// What the tags say about the samples beyond their colour type.
struct Tags {
    /// Palette: 3 × 2^bits 16-bit values (all reds, then greens, then blues).
    colour_map: Vec<u16>,
    /// Colour samples per pixel (1 grey or palette, 3, or 4 for CMYK).
    colours: usize,
    /// The first extra sample is alpha, premultiplied into the colours or not.
    alpha: Option<bool>,
    orientation: Orientation,
}

impl Tags {
    fn read<R: std::io::Read + std::io::Seek>(
        d: &mut Decoder<R>,
        colour: ColorType,
    ) -> Result<Self, TiffError> {
        let extra = d
            .find_tag_unsigned_vec::<u16>(Tag::ExtraSamples)?
            .unwrap_or_default();
        let colours = match colour {
            ColorType::Gray(_) | ColorType::Multiband { .. } => 1,
            ColorType::CMYK(_) | ColorType::CMYKA(_) => 4,
            _ => 3,
        };
        let alpha = (usize::from(colour.num_samples()) > colours)
            .then(|| match extra.first() {
                Some(1) => Some(true),
                Some(2) => Some(false),
                _ => None,
            })
            .flatten();
        let orientation = d
            .find_tag_unsigned::<u8>(Tag::Orientation)
            .ok()
            .flatten()
            .and_then(Orientation::from_exif)
            .unwrap_or(Orientation::NoTransforms);
        let colour_map = d
            .find_tag_unsigned_vec::<u16>(Tag::ColorMap)?
            .unwrap_or_default();
        Ok(Tags {
            colour_map,
            colours,
            alpha,
            orientation,
        })
    }
}

/// The decoded samples, each read as 0–255 (or as a palette index), chunky or planar.
struct Pixels<'s> {
    samples: &'s DecodingResult,
    /// Samples per pixel and bits per sample.
    per_pixel: usize,
    bits: u8,
    width: usize,
    height: usize,
    planar: bool,
    /// Bytes per row for packed (under 8-bit) samples.
    packed_row: usize,
    unit_floats: bool,
}

impl<'s> Pixels<'s> {
    fn new(
        samples: &'s DecodingResult,
        colour: ColorType,
        width: u32,
        height: u32,
        planar: bool,
    ) -> Option<Self> {
        let (width, height) = (usize::try_from(width).ok()?, usize::try_from(height).ok()?);
        let per_pixel = usize::from(colour.num_samples());
        let bits = colour.bit_depth();
        let packed_row = (width * per_pixel * usize::from(bits)).div_ceil(8);
        let needed = if bits < 8 {
            packed_row * height
        } else {
            width * height * per_pixel
        };
        let len = match samples {
            DecodingResult::U8(v) => v.len(),
            DecodingResult::U16(v) => v.len(),
            DecodingResult::U32(v) => v.len(),
            DecodingResult::U64(v) => v.len(),
            DecodingResult::F16(v) => v.len(),
            DecodingResult::F32(v) => v.len(),
            DecodingResult::F64(v) => v.len(),
            DecodingResult::I8(v) => v.len(),
            DecodingResult::I16(v) => v.len(),
            DecodingResult::I32(v) => v.len(),
            DecodingResult::I64(v) => v.len(),
        };
        if len < needed || (bits < 8 && planar) {
            return None;
        }
        let unit_floats = match samples {
            DecodingResult::F32(v) => v.iter().all(|s| (0.0..=1.0).contains(s)),
            DecodingResult::F64(v) => v.iter().all(|s| (0.0..=1.0).contains(s)),
            DecodingResult::F16(v) => v.iter().all(|s| (0.0..=1.0).contains(&s.to_f32())),
            _ => false,
        };
        Some(Pixels {
            samples,
            per_pixel,
            bits,
            width,
            height,
            planar,
            packed_row,
            unit_floats,
        })
    }

    /// Sample `c` of pixel `i`, raw (an integer's own value, for indices and packed samples).
    fn raw(&self, i: usize, c: usize) -> f64 {
        if self.bits < 8 {
            let (y, x) = (i / self.width, i % self.width);
            let bit = (x * self.per_pixel + c) * usize::from(self.bits);
            let DecodingResult::U8(v) = self.samples else {
                return 0.0;
            };
            let byte = v[y * self.packed_row + bit / 8];
            let shift = 8 - usize::from(self.bits) - bit % 8;
            return f64::from((byte >> shift) & ((1u8 << self.bits) - 1));
        }
        let at = if self.planar {
            c * self.width * self.height + i
        } else {
            i * self.per_pixel + c
        };
        match self.samples {
            DecodingResult::U8(v) => f64::from(v[at]),
            DecodingResult::U16(v) => f64::from(v[at]),
            DecodingResult::U32(v) => f64::from(v[at]),
            DecodingResult::U64(v) => v[at] as f64,
            DecodingResult::F16(v) => f64::from(v[at].to_f32()),
            DecodingResult::F32(v) => f64::from(v[at]),
            DecodingResult::F64(v) => v[at],
            DecodingResult::I8(v) => f64::from(v[at]),
            DecodingResult::I16(v) => f64::from(v[at]),
            DecodingResult::I32(v) => f64::from(v[at]),
            DecodingResult::I64(v) => v[at] as f64,
        }
    }

    /// Sample `c` of pixel `i` as 0–255: unsigned samples scaled from their depth (Pillow keeps
    /// the high byte), wider signed and float ones clipped.
    fn level(&self, i: usize, c: usize) -> u8 {
        let v = self.raw(i, c);
        let scaled = match self.samples {
            DecodingResult::U8(_) if self.bits < 8 => {
                v * 255.0 / f64::from((1u16 << self.bits) - 1)
            }
            DecodingResult::U8(_) => v,
            // Pillow reads signed bytes as unsigned ones.
            DecodingResult::I8(_) => f64::from(v as i8 as u8),
            DecodingResult::U16(_) => (v / 256.0).floor(),
            DecodingResult::U32(_) => (v / 16_777_216.0).floor(),
            DecodingResult::U64(_) => (v / 72_057_594_037_927_936.0).floor(),
            DecodingResult::F16(_) | DecodingResult::F32(_) | DecodingResult::F64(_)
                if self.unit_floats =>
            {
                v * 255.0
            }
            _ => v,
        };
        scaled.clamp(0.0, 255.0) as u8
    }
}

/// The samples as 8-bit grey, grey+alpha, RGB or RGBA in the model the file gives.
fn to_rgb(p: &Pixels, model: u16, tags: &Tags) -> Option<DynamicImage> {
    let n = p.width * p.height;
    let (w, h) = (u32::try_from(p.width).ok()?, u32::try_from(p.height).ok()?);
    let colours = tags.colours;
    let alpha = tags.alpha;
    let channels = if model == PALETTE { 3 } else { colours.min(3) } + usize::from(alpha.is_some());
    let mut out = Vec::with_capacity(n * channels);
    let entries = 1usize << p.bits.min(16);
    for i in 0..n {
        let start = out.len();
        match model {
            PALETTE => {
                let index = p.raw(i, 0) as usize;
                for c in 0..3 {
                    let v = tags.colour_map.get(c * entries + index).copied()?;
                    out.push((v >> 8) as u8);
                }
            }
            CIELAB | ICCLAB => {
                let lab = lab_sample(p, i, model == ICCLAB);
                out.extend_from_slice(&lab_to_srgb(lab));
            }
            CMYK => {
                // CMYK as Pillow shows it: each ink plus black taken from white.
                let k = u16::from(p.level(i, 3));
                for c in 0..3 {
                    out.push(255 - (u16::from(p.level(i, c)) + k).min(255) as u8);
                }
            }
            YCBCR => {
                out.extend_from_slice(&ycbcr_to_rgb(p.level(i, 0), p.level(i, 1), p.level(i, 2)))
            }
            _ => (0..colours.min(3)).for_each(|c| out.push(p.level(i, c))),
        }
        if let Some(premultiplied) = alpha {
            let a = p.level(i, colours);
            if premultiplied && a > 0 && a < 255 {
                for v in &mut out[start..] {
                    *v = (u16::from(*v) * 255 / u16::from(a)).min(255) as u8;
                }
            }
            out.push(a);
        }
    }
    Some(match channels {
        1 => DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, out)?),
        2 => DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_raw(w, h, out)?),
        3 => DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, out)?),
        _ => DynamicImage::ImageRgba8(image::RgbaImage::from_raw(w, h, out)?),
    })
}

/// L* in 0–100 and a*, b* around 0: CIELab stores a and b as signed bytes, ICC Lab as
/// unsigned ones offset by 128 (16-bit samples alike, scaled).
fn lab_sample(p: &Pixels, i: usize, icc: bool) -> [f64; 3] {
    let scale = if p.bits == 16 { 256.0 } else { 1.0 };
    let l = p.raw(i, 0) / scale * 100.0 / 255.0;
    let ab = |c: usize| {
        let v = p.raw(i, c) / scale;
        if icc {
            v - 128.0
        } else if v >= 128.0 {
            v - 256.0
        } else {
            v
        }
    };
    [l, ab(1), ab(2)]
}

/// CIE L*a*b* (D65 white) to 8-bit sRGB.
fn lab_to_srgb([l, a, b]: [f64; 3]) -> [u8; 3] {
    let fy = (l + 16.0) / 116.0;
    let (fx, fz) = (fy + a / 500.0, fy - b / 200.0);
    let inverse = |t: f64| {
        if t > 6.0 / 29.0 {
            t * t * t
        } else {
            3.0 * (6.0f64 / 29.0).powi(2) * (t - 4.0 / 29.0)
        }
    };
    let (x, y, z) = (0.950_47 * inverse(fx), inverse(fy), 1.088_83 * inverse(fz));
    let linear = [
        3.240_454_2 * x - 1.537_138_5 * y - 0.498_531_4 * z,
        -0.969_266 * x + 1.876_010_8 * y + 0.041_556 * z,
        0.055_643_4 * x - 0.204_025_9 * y + 1.057_225_2 * z,
    ];
    linear.map(|c| {
        let c = c.clamp(0.0, 1.0);
        let s = if c <= 0.003_130_8 {
            12.92 * c
        } else {
            1.055 * c.powf(1.0 / 2.4) - 0.055
        };
        (s * 255.0).round() as u8
    })
}

/// Full-range YCbCr (the TIFF default reference levels, ITU-R BT.601 weights) to RGB.
fn ycbcr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (y, cb, cr) = (f64::from(y), f64::from(cb) - 128.0, f64::from(cr) - 128.0);
    [
        y + 1.402 * cr,
        y - 0.344_136 * cb - 0.714_136 * cr,
        y + 1.772 * cb,
    ]
    .map(|v| v.round().clamp(0.0, 255.0) as u8)
}

/// A decoder error in the user's terms: the exact feature when the crate cannot read one.
fn rejection(e: TiffError, p: Probe) -> ImageRejection {
    use TiffUnsupportedError as U;
    match e {
        TiffError::LimitsExceeded => ImageRejection::TooManyPixels {
            width: p.width,
            height: p.height,
        },
        TiffError::UnsupportedError(u) => ImageRejection::UnsupportedFeature(match u {
            U::ChromaSubsampling => "TIFF subsampled YCbCr without JPEG compression".into(),
            U::UnsupportedSampleDepth(bits) | U::UnsupportedBitsPerChannel(bits) => {
                format!("TIFF {bits}-bit samples")
            }
            U::UnsupportedColorType(colour)
                if !matches!(colour.bit_depth(), 1..=8 | 16 | 32 | 64) =>
            {
                format!("TIFF {}-bit samples", colour.bit_depth())
            }
            U::UnsupportedCompressionMethod(m) => format!("TIFF {m:?} compression"),
            U::UnknownCompressionMethod => "TIFF compression of an unknown kind".into(),
            U::HorizontalPredictor(_) | U::FloatingPointPredictor(_) => {
                "TIFF predictor with these samples".into()
            }
            U::InterpretationWithBits(model, bits) => {
                format!("TIFF {model:?} colours with {bits:?}-bit samples")
            }
            U::UnknownInterpretation | U::UnsupportedInterpretation(_) => {
                "TIFF colour model of an unknown kind".into()
            }
            other => format!(
                "TIFF: {}",
                other.to_string().chars().take(120).collect::<String>()
            ),
        }),
        _ => ImageRejection::Corrupt,
    }
}

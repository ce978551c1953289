//! A large baseline JPEG decoded at 1/2, 1/4 or 1/8 of its size on two threads.
//!
//! Most of the time of decoding a photo is its Huffman decoding, which is sequential: each
//! code starts where the one before ended. Two threads split it anyway:
//! - With restart markers, the scan is cut at the marker nearest its middle; each part starts
//!   afresh there (T.81 F.2.1.3).
//! - Without them, the second thread starts in the middle of the data at a guess: on a byte, at
//!   the first block of an MCU. Huffman codes fall into step within a few blocks, so its
//!   decoding soon matches the true one. The first thread decodes from the start; once past the
//!   middle it looks, at each block it starts, for a block the second one started at the same
//!   bit and at the same place in its MCU. From such a block on, both decode the same bits the
//!   same way, so the rest is the second thread's. A DC value is coded as a difference from the
//!   one before, so only differences are kept until the whole scan is joined. Where the second
//!   thread never falls into step, the first decodes everything: slower, never different
//!   (the tests compare both ways on many pictures and split points).
//!
//! Each block is turned into pixels as it is decoded (the inverse DCT of its AC coefficients,
//! averaged over each `factor`×`factor` square of the full-size block), and kept as that:
//! 16 numbers at 1/2 instead of 64 coefficients. The DC term is added when the pixels are
//! placed. Subsampled chroma is interpolated 3:1 between its nearest samples, as libjpeg does.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use super::scan::{Bits, Component, Header, Huffman};

/// A decoded picture: RGB (three components) or grey, `width`×`height`.
pub(super) struct Picture {
    pub width: usize,
    pub height: usize,
    pub grey: bool,
    pub pixels: Vec<u8>,
    /// The block from which the second thread's decoding was taken; `None` when the first
    /// decoded the whole scan.
    pub joined_at: Option<usize>,
}

/// The scan's blocks, in coding order: each block's pixels without their DC term (in quarter
/// levels, `side`² of them), and its DC difference (or, once joined, its DC value).
#[derive(Default)]
struct Blocks {
    pixels: Vec<i16>,
    dc: Vec<i32>,
}

/// The whole scan's blocks: the first decoding's, then from block `at` on the second's from
/// its block `from` (kept where each was made: no copy).
struct Joined {
    first: Blocks,
    second: Blocks,
    at: usize,
    from: usize,
}

impl Joined {
    fn alone(first: Blocks) -> Self {
        let at = first.dc.len();
        Joined {
            first,
            second: Blocks::default(),
            at,
            from: 0,
        }
    }

    /// Where block `b` is: its blocks and its index there.
    #[inline]
    fn find(&self, b: usize) -> (&Blocks, usize) {
        if b < self.at {
            (&self.first, b)
        } else {
            (&self.second, b - self.at + self.from)
        }
    }
}

/// How the decoding is split between the threads (tests choose).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// One thread.
    None,
    /// Two, the second starting at this byte of the scan data (restart markers: at the first
    /// segment starting at or after it).
    At(usize),
}

/// The frame's layout in blocks.
struct Layout {
    /// Pixels on a side of a decoded block (8 / factor).
    side: usize,
    mcus_x: usize,
    mcus_y: usize,
    h_max: usize,
    v_max: usize,
    /// For each block of an MCU: its component and its column and row within the MCU.
    owner: Vec<(usize, usize, usize)>,
}

impl Layout {
    fn new(h: &Header<'_>, factor: usize) -> Self {
        let (h_max, v_max) = h
            .components
            .iter()
            .fold((1, 1), |(a, b), c| (a.max(c.h), b.max(c.v)));
        let mut owner = Vec::new();
        for (i, c) in h.components.iter().enumerate() {
            for y in 0..c.v {
                for x in 0..c.h {
                    owner.push((i, x, y));
                }
            }
        }
        Layout {
            side: 8 / factor,
            mcus_x: h.width.div_ceil(8 * h_max),
            mcus_y: h.height.div_ceil(8 * v_max),
            h_max,
            v_max,
            owner,
        }
    }

    fn blocks(&self) -> usize {
        self.mcus_x * self.mcus_y * self.owner.len()
    }

    /// A component's plane: width and height in pixels.
    fn plane(&self, c: &Component) -> (usize, usize) {
        (self.mcus_x * c.h * self.side, self.mcus_y * c.v * self.side)
    }
}

/// Bytes held at the peak of a decode whose output has `pixels` pixels, reduced by `factor`,
/// whatever its sampling (three full-size components at worst): its blocks (2 bytes a pixel
/// and 4 a block, a component; each half is kept once, and half as much again allows for what
/// both threads decode before they fall into step, and for MCU padding), then the planes and
/// the RGB picture.
pub(super) fn held_bytes(pixels: u64, factor: u32) -> u64 {
    let per_block = u64::from(8 / factor).pow(2);
    let blocks = 3 * (pixels * 2 + pixels.div_ceil(per_block) * 4);
    blocks * 3 / 2 + pixels * 6
}

struct Decoder<'h> {
    header: &'h Header<'h>,
    layout: Layout,
    /// For each block of an MCU: its DC table, AC table and quantisation table.
    tables: Vec<(&'h Huffman, &'h Huffman, &'h [u16; 64])>,
    /// Output pixel i of a row of a block, from frequency v: `matrix[i][v]`.
    matrix: [[f32; 8]; 4],
    /// The same, `transposed[v][i]`.
    transposed: [[f32; 4]; 8],
}

/// Decodes `bytes` reduced by `factor` (2, 4 or 8); `None` where this decoder does not apply
/// or the data does not decode.
pub(super) fn decode(header: &Header<'_>, factor: usize, split: Split) -> Option<Picture> {
    if !matches!(factor, 2 | 4 | 8) {
        return None;
    }
    let layout = Layout::new(header, factor);
    let tables = layout
        .owner
        .iter()
        .map(|&(c, _, _)| {
            let c = header.components[c];
            Some((
                header.dc[c.dc].as_ref()?,
                header.ac[c.ac].as_ref()?,
                &header.quant[c.quant],
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    let matrix = matrix(factor);
    let d = Decoder {
        header,
        matrix,
        transposed: std::array::from_fn(|v| std::array::from_fn(|i| matrix[i][v])),
        layout,
        tables,
    };
    let mut blocks = match (split, header.restart) {
        (Split::None, 0) => d.scan(None)?,
        (Split::At(at), 0) => d.scan(Some(at))?,
        (split, _) => d.segments(split)?,
    };
    d.dc_values(&mut blocks);
    let mut picture = d.paint(&blocks, split != Split::None);
    picture.joined_at = (blocks.at < d.layout.blocks()).then_some(blocks.at);
    Some(picture)
}

/// The averaged inverse DCT, one dimension: `side` outputs from 8 frequencies, each the mean
/// of `factor` full-size samples.
fn matrix(factor: usize) -> [[f32; 8]; 4] {
    let mut m = [[0f32; 8]; 4];
    for (i, row) in m.iter_mut().enumerate().take(8 / factor) {
        for (v, cell) in row.iter_mut().enumerate() {
            let scale = if v == 0 {
                std::f64::consts::FRAC_1_SQRT_2
            } else {
                1.0
            } / 2.0;
            let sum: f64 = (factor * i..factor * (i + 1))
                .map(|n| ((2 * n + 1) as f64 * v as f64 * std::f64::consts::PI / 16.0).cos())
                .sum();
            *cell = (scale * sum / factor as f64) as f32;
        }
    }
    m
}

impl Decoder<'_> {
    /// Decodes the block at `phase` in its MCU and keeps it.
    #[inline]
    fn block(
        &self,
        bits: &mut Bits<'_>,
        phase: usize,
        coefficients: &mut [i32; 64],
        out: &mut Blocks,
    ) -> Option<()> {
        let (dc, ac, quant) = self.tables[phase];
        let Some((diff, rows)) = bits.block(dc, ac, quant, coefficients) else {
            coefficients.fill(0);
            return None;
        };
        out.dc.push(diff);
        let mut pixels = [0i16; 16];
        let n = self.layout.side * self.layout.side;
        self.idct(coefficients, rows, &mut pixels[..n]);
        out.pixels.extend_from_slice(&pixels[..n]);
        Some(())
    }

    /// A block's AC coefficients (in the rows of mask `rows`) → its reduced pixels in quarter
    /// levels; clears them.
    #[inline]
    fn idct(&self, coefficients: &mut [i32; 64], rows: u8, out: &mut [i16]) {
        match self.layout.side {
            4 => self.idct_of::<4>(coefficients, rows, out),
            2 => self.idct_of::<2>(coefficients, rows, out),
            _ => self.idct_of::<1>(coefficients, rows, out),
        }
    }

    /// [`Self::idct`] for blocks of `S`×`S` pixels.
    #[inline(always)]
    fn idct_of<const S: usize>(&self, coefficients: &mut [i32; 64], mut rows: u8, out: &mut [i16]) {
        if rows == 0 {
            return;
        }
        // Vertical pass, row of frequencies by row: partial[i][u], output row i, frequency u.
        let mut partial = [[0f32; 8]; S];
        while rows != 0 {
            let v = rows.trailing_zeros() as usize;
            rows &= rows - 1;
            let Some(row) = coefficients.get_mut(v * 8..v * 8 + 8) else {
                return;
            };
            let Ok(row): Result<&mut [i32; 8], _> = row.try_into() else {
                return;
            };
            let values = row.map(|c| c as f32);
            *row = [0; 8];
            for (i, p) in partial.iter_mut().enumerate() {
                let weight = self.matrix[i][v];
                for (p, x) in p.iter_mut().zip(values) {
                    *p += weight * x;
                }
            }
        }
        // Horizontal pass: output (i, j) from partial[i][..].
        for (i, p) in partial.iter().enumerate() {
            let mut acc = [0f32; 4];
            for (u, &x) in p.iter().enumerate() {
                for (a, w) in acc.iter_mut().zip(self.transposed[u]) {
                    *a += w * x;
                }
            }
            for (o, a) in out[i * S..(i + 1) * S].iter_mut().zip(acc) {
                let v = a * 4.0;
                *o = (v + 0.5f32.copysign(v)) as i16;
            }
        }
    }

    /// The scan without restart markers; with `split`, the second thread starts at that byte.
    fn scan(&self, split: Option<usize>) -> Option<Joined> {
        let total = self.layout.blocks();
        let data = self.header.data;
        let Some(mut at) = split.filter(|&at| at > 0 && at < data.len()) else {
            return self.run(&mut Bits::new(data, 0, 0), total, None);
        };
        // Never between a stuffed 0xFF and its zero.
        if data[at - 1] == 0xFF {
            at += 1;
        }
        let stuffed = stuffed(&data[..at]);
        let from_bit = (at - stuffed) as u64 * 8;
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let second = s.spawn(|| self.speculate(at, stuffed, total, &stop));
            let found = self.run(
                &mut Bits::new(data, 0, 0),
                total,
                Some((from_bit, Box::new(move || second.join().ok()))),
            );
            stop.store(true, Ordering::Relaxed);
            found
        })
    }

    /// Decodes `total` blocks from `bits`. With `ahead` (the bit where a second decoding
    /// started, and a way to wait for it), once past that bit: joins it at the first block
    /// both started the same way.
    #[allow(clippy::type_complexity)]
    fn run(
        &self,
        bits: &mut Bits<'_>,
        total: usize,
        mut ahead: Option<(u64, Box<dyn FnOnce() -> Option<Speculated> + '_>)>,
    ) -> Option<Joined> {
        let per_mcu = self.layout.owner.len();
        let n = self.layout.side * self.layout.side;
        let mut out = Blocks {
            pixels: Vec::with_capacity(total * n),
            dc: Vec::with_capacity(total),
        };
        let mut theirs: Option<Speculated> = None;
        let mut j = 0;
        let mut coefficients = [0i32; 64];
        for i in 0..total {
            let phase = i % per_mcu;
            if let Some((from, _)) = &ahead
                && bits.position() >= *from
            {
                let wait = ahead.take().map(|(_, wait)| wait);
                theirs = wait.and_then(|w| w());
            }
            if let Some(b) = &theirs {
                let at = bits.position();
                while j < b.good && b.starts[j] < at {
                    j += 1;
                }
                if j < b.good
                    && b.starts[j] == at
                    && j % per_mcu == phase
                    && b.good - j >= total - i
                {
                    let second = theirs.map(|t| t.blocks).unwrap_or_default();
                    return Some(Joined {
                        first: out,
                        second,
                        at: i,
                        from: j,
                    });
                }
                if j >= b.good {
                    theirs = None;
                }
            }
            self.block(bits, phase, &mut coefficients, &mut out)?;
            if bits.overrun() {
                return None;
            }
        }
        Some(Joined::alone(out))
    }

    /// The second thread's decoding from byte `at` (after `stuffed` stuffed bytes), as if an
    /// MCU started there; a code that does not decode starts it again further on.
    fn speculate(
        &self,
        mut at: usize,
        mut stuffed: usize,
        total: usize,
        stop: &AtomicBool,
    ) -> Speculated {
        let data = self.header.data;
        let per_mcu = self.layout.owner.len();
        let mut out = Speculated::default();
        // About the second half of the blocks, and a little more: never grown in the common case.
        let share = total / 2 + total / 16;
        let n = self.layout.side * self.layout.side;
        out.blocks.pixels.reserve(share * n);
        out.blocks.dc.reserve(share);
        out.starts.reserve(share);
        let mut coefficients = [0i32; 64];
        for _ in 0..32 {
            out.clear();
            let mut bits = Bits::new(data, at, stuffed);
            loop {
                if out.starts.len() >= total || stop.load(Ordering::Relaxed) {
                    return out;
                }
                out.starts.push(bits.position());
                let phase = (out.starts.len() - 1) % per_mcu;
                if self
                    .block(&mut bits, phase, &mut coefficients, &mut out.blocks)
                    .is_none()
                {
                    break;
                }
                if bits.overrun() {
                    return out;
                }
                out.good = out.starts.len();
            }
            let next = bits.next_byte().max(at + 1);
            if next >= data.len() {
                break;
            }
            // Never between a stuffed 0xFF and its zero; the stuffed bytes counted up to there.
            let next = if data[next - 1] == 0xFF {
                next + 1
            } else {
                next
            };
            stuffed += self::stuffed(&data[at..next.min(data.len())]);
            at = next;
            if at >= data.len() {
                break;
            }
        }
        out.clear();
        out
    }

    /// The scan with restart markers: its segments, each decoded from a fresh start, on one
    /// thread or on two cut at a segment.
    fn segments(&self, split: Split) -> Option<Joined> {
        let data = self.header.data;
        let mut starts = vec![0];
        let mut at = 0;
        while let Some(ff) = memchr::memchr(0xFF, &data[at..]) {
            at += ff;
            if matches!(data.get(at + 1), Some(0xD0..=0xD7)) {
                starts.push(at + 2);
            }
            at += 2;
            if at >= data.len() {
                break;
            }
        }
        let per_segment = self.header.restart * self.layout.owner.len();
        let total = self.layout.blocks();
        if starts.len() != total.div_ceil(per_segment) {
            return None;
        }
        let cut = match split {
            Split::None => starts.len(),
            Split::At(byte) => starts
                .iter()
                .position(|&s| s >= byte)
                .unwrap_or(starts.len()),
        };
        let decode = |segments: Range<usize>| -> Option<Blocks> {
            let mut out = Blocks::default();
            let mut coefficients = [0i32; 64];
            for k in segments {
                let end = starts.get(k + 1).map_or(data.len(), |&s| s - 2);
                let mut bits = Bits::new(&data[..end], starts[k], 0);
                let blocks = per_segment.min(total - k * per_segment);
                for i in 0..blocks {
                    self.block(
                        &mut bits,
                        i % self.layout.owner.len(),
                        &mut coefficients,
                        &mut out,
                    )?;
                    // A segment shorter than its blocks: refused at once, not read on in zeros.
                    if bits.overrun() {
                        return None;
                    }
                }
            }
            Some(out)
        };
        if cut == 0 || cut >= starts.len() {
            return decode(0..starts.len()).map(Joined::alone);
        }
        let (first, second) = std::thread::scope(|s| {
            let second = s.spawn(|| decode(cut..starts.len()));
            (decode(0..cut), second.join().ok().flatten())
        });
        Some(Joined {
            first: first?,
            second: second?,
            at: cut * per_segment,
            from: 0,
        })
    }

    /// DC differences → DC values, each component's chain starting again at every restart.
    fn dc_values(&self, blocks: &mut Joined) {
        let per_mcu = self.layout.owner.len();
        let per_segment = self.header.restart * per_mcu;
        let total = self.layout.blocks();
        let mut last = [0i32; 3];
        let (at, from) = (blocks.at, blocks.from);
        let parts = [
            (0, &mut blocks.first.dc[..at.min(total)]),
            (
                at,
                blocks
                    .second
                    .dc
                    .get_mut(from..from + (total - at.min(total)))
                    .unwrap_or(&mut []),
            ),
        ];
        for (start, dc) in parts {
            for (i, value) in dc.iter_mut().enumerate() {
                let b = start + i;
                if per_segment > 0 && b % per_segment == 0 {
                    last = [0; 3];
                }
                let c = self.layout.owner[b % per_mcu].0;
                last[c] = last[c].wrapping_add(*value);
                *value = last[c];
            }
        }
    }

    /// The blocks placed in their component planes, then the planes turned into the picture;
    /// each step on two threads with `parallel`, each taking half of the rows.
    fn paint(&self, blocks: &Joined, parallel: bool) -> Picture {
        let l = &self.layout;
        let h = self.header;
        let (width, height) = (h.width.div_ceil(8 / l.side), h.height.div_ceil(8 / l.side));
        let grey = h.components.len() == 1;
        let mut planes: Vec<Vec<u8>> = h
            .components
            .iter()
            .map(|c| {
                let (w, h) = l.plane(c);
                vec![0u8; w * h]
            })
            .collect();
        // Each plane cut at the same MCU row.
        let cut = if parallel { l.mcus_y / 2 } else { 0 };
        let (mut upper, mut lower): (Vec<&mut [u8]>, Vec<&mut [u8]>) = planes
            .iter_mut()
            .zip(&h.components)
            .map(|(plane, c)| plane.split_at_mut(cut * c.v * l.side * l.plane(c).0))
            .unzip();
        if cut == 0 {
            self.place(blocks, 0..l.mcus_y, &mut lower);
        } else {
            std::thread::scope(|s| {
                s.spawn(|| self.place(blocks, cut..l.mcus_y, &mut lower));
                self.place(blocks, 0..cut, &mut upper);
            });
        }
        let channels = if grey { 1 } else { 3 };
        let mut pixels = vec![0u8; width * height * channels];
        let middle = if parallel { height / 2 } else { 0 };
        let (top, bottom) = pixels.split_at_mut(middle * width * channels);
        if middle == 0 {
            self.colour(&planes, 0..height, width, bottom);
        } else {
            std::thread::scope(|s| {
                s.spawn(|| self.colour(&planes, middle..height, width, bottom));
                self.colour(&planes, 0..middle, width, top);
            });
        }
        Picture {
            width,
            height,
            grey,
            pixels,
            joined_at: None,
        }
    }

    /// The blocks of MCU rows `rows` into `planes` (each starting at the first of those rows).
    fn place(&self, blocks: &Joined, rows: Range<usize>, planes: &mut [&mut [u8]]) {
        let l = &self.layout;
        let (side, n) = (l.side, l.side * l.side);
        let per_mcu = l.owner.len();
        for my in rows.clone() {
            for mx in 0..l.mcus_x {
                let first = (my * l.mcus_x + mx) * per_mcu;
                for (phase, &(c, bx, by)) in l.owner.iter().enumerate() {
                    let (part, b) = blocks.find(first + phase);
                    let comp = &self.header.components[c];
                    let (w, _) = l.plane(comp);
                    let dc = part.dc[b].wrapping_mul(i32::from(self.tables[phase].2[0]));
                    let px = &part.pixels[b * n..(b + 1) * n];
                    let x0 = (mx * comp.h + bx) * side;
                    let y0 = ((my - rows.start) * comp.v + by) * side;
                    for (i, src) in px.chunks_exact(side).enumerate() {
                        let row = &mut planes[c][(y0 + i) * w + x0..][..side];
                        for (dst, &p) in row.iter_mut().zip(src) {
                            let level = (2 * i32::from(p)).wrapping_add(dc).wrapping_add(4) >> 3;
                            *dst = (level + 128).clamp(0, 255) as u8;
                        }
                    }
                }
            }
        }
    }

    /// Picture rows `rows` from the planes, into `out` (which starts at the first of them).
    fn colour(&self, planes: &[Vec<u8>], rows: Range<usize>, width: usize, out: &mut [u8]) {
        if planes.len() == 1 {
            let (w, _) = self.layout.plane(&self.header.components[0]);
            for (y, dst) in rows.zip(out.chunks_exact_mut(width)) {
                dst.copy_from_slice(&planes[0][y * w..y * w + width]);
            }
            return;
        }
        let mut lines = [vec![0u8; width], vec![0u8; width], vec![0u8; width]];
        for (y, dst) in rows.zip(out.chunks_exact_mut(width * 3)) {
            for (c, line) in lines.iter_mut().enumerate() {
                self.upsample(c, &planes[c], y, line);
            }
            let [ly, lb, lr] = &lines;
            for (((px, &luma), &cb), &cr) in dst.chunks_exact_mut(3).zip(ly).zip(lb).zip(lr) {
                let (luma, cb, cr) = (i32::from(luma), i32::from(cb) - 128, i32::from(cr) - 128);
                // JFIF's YCbCr → RGB, in 16-bit fixed point.
                let r = luma + ((91_881 * cr + 32_768) >> 16);
                let g = luma + ((-22_554 * cb - 46_802 * cr + 32_768) >> 16);
                let b = luma + ((116_130 * cb + 32_768) >> 16);
                px[0] = r.clamp(0, 255) as u8;
                px[1] = g.clamp(0, 255) as u8;
                px[2] = b.clamp(0, 255) as u8;
            }
        }
    }

    /// Row `y` of component `c` at the picture's size: a subsampled component is interpolated
    /// between its nearest samples, weighted 3:1 along each halved side (as libjpeg's "fancy"
    /// upsampling).
    fn upsample(&self, c: usize, plane: &[u8], y: usize, line: &mut [u8]) {
        let l = &self.layout;
        let comp = &self.header.components[c];
        let (w, h) = l.plane(comp);
        let (across, down) = (comp.h < l.h_max, comp.v < l.v_max);
        if !across && !down {
            line.copy_from_slice(&plane[y * w..][..line.len()]);
            return;
        }
        let (near, far, weights) = if down {
            let near = y >> 1;
            let far = if y & 1 == 1 {
                (near + 1).min(h - 1)
            } else {
                near.saturating_sub(1)
            };
            (near, far, (3, 1))
        } else {
            (y, y, (4, 0))
        };
        let (near, far) = (&plane[near * w..][..w], &plane[far * w..][..w]);
        let column = |x: usize| weights.0 * u32::from(near[x]) + weights.1 * u32::from(far[x]);
        if !across {
            for (x, out) in line.iter_mut().enumerate() {
                *out = ((column(x) + 2) >> 2) as u8;
            }
            return;
        }
        for (x, out) in line.iter_mut().enumerate() {
            let at = x >> 1;
            let other = if x & 1 == 1 {
                (at + 1).min(w - 1)
            } else {
                at.saturating_sub(1)
            };
            *out = ((3 * column(at) + column(other) + 8) >> 4) as u8;
        }
    }
}

/// The second thread's blocks, with the bit each started at; `good` of them ended within the
/// data.
#[derive(Default)]
struct Speculated {
    blocks: Blocks,
    starts: Vec<u64>,
    good: usize,
}

impl Speculated {
    fn clear(&mut self) {
        self.blocks.pixels.clear();
        self.blocks.dc.clear();
        self.starts.clear();
        self.good = 0;
    }
}

/// Stuffed zero bytes (0xFF 0x00) in `data`.
fn stuffed(data: &[u8]) -> usize {
    memchr::memchr_iter(0xFF, data)
        .filter(|&i| data.get(i + 1) == Some(&0))
        .count()
}

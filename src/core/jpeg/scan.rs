//! A baseline JPEG's header and its one scan, read block by block: the Huffman decoding that is
//! most of a large photo's decode time (ITU-T T.81, Annex F).
//!
//! Only the common coding is read here: 8-bit samples, Huffman coded, sequential, one scan of
//! one (grey) or three (YCbCr) components, sampling factors of 1 or 2. Anything else is `None`
//! and is decoded the usual way.

/// One component of the frame, with its tables.
#[derive(Debug, Clone, Copy)]
pub(super) struct Component {
    pub h: usize,
    pub v: usize,
    pub quant: usize,
    pub dc: usize,
    pub ac: usize,
}

/// What the decoding needs from the file's header segments.
pub(super) struct Header<'a> {
    pub width: usize,
    pub height: usize,
    pub components: Vec<Component>,
    /// Quantisation tables, in zig-zag order.
    pub quant: [[u16; 64]; 4],
    pub dc: [Option<Huffman>; 4],
    pub ac: [Option<Huffman>; 4],
    /// MCUs between restart markers; 0 for none.
    pub restart: usize,
    /// The scan's entropy-coded data, restart markers included, up to its end marker.
    pub data: &'a [u8],
    /// The first EXIF segment's payload.
    pub exif: Option<&'a [u8]>,
}

/// Natural (row-major) position of the n-th coefficient in zig-zag order.
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// Reads the header segments up to the scan; `None` for any coding this reader leaves to the
/// general decoder (or a header it cannot make sense of).
pub(super) fn header(bytes: &[u8]) -> Option<Header<'_>> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut at = 2;
    let (mut size, mut ids, mut components) = (None, Vec::new(), Vec::new());
    let mut quant = [[0u16; 64]; 4];
    let mut quant_set = [false; 4];
    let (mut dc, mut ac): ([Option<Huffman>; 4], [Option<Huffman>; 4]) = Default::default();
    let (mut restart, mut exif, mut adobe) = (0, None, None);
    loop {
        let (&0xFF, &marker) = (bytes.get(at)?, bytes.get(at + 1)?) else {
            return None;
        };
        if marker == 0xFF {
            at += 1;
            continue;
        }
        let len = usize::from(u16::from_be_bytes([
            *bytes.get(at + 2)?,
            *bytes.get(at + 3)?,
        ]));
        let body = bytes.get(at + 4..(at + 2 + len).max(at + 4))?;
        match marker {
            0xC0 | 0xC1 if size.is_none() => {
                let (p, h, w, n) = (
                    *body.first()?,
                    usize::from(u16::from_be_bytes([*body.get(1)?, *body.get(2)?])),
                    usize::from(u16::from_be_bytes([*body.get(3)?, *body.get(4)?])),
                    usize::from(*body.get(5)?),
                );
                if p != 8 || w == 0 || h == 0 || !(n == 1 || n == 3) {
                    return None;
                }
                for c in body.get(6..6 + 3 * n)?.chunks_exact(3) {
                    let (h, v, q) = (usize::from(c[1] >> 4), usize::from(c[1] & 15), c[2]);
                    if !(1..=2).contains(&h) || !(1..=2).contains(&v) || q > 3 {
                        return None;
                    }
                    ids.push(c[0]);
                    components.push(Component {
                        h: if n == 1 { 1 } else { h },
                        v: if n == 1 { 1 } else { v },
                        quant: usize::from(q),
                        dc: 0,
                        ac: 0,
                    });
                }
                size = Some((w, h));
            }
            // Every other frame: progressive, lossless, arithmetic, hierarchical.
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => return None,
            0xC4 => huffman_tables(body, &mut dc, &mut ac)?,
            0xDB => quant_tables(body, &mut quant, &mut quant_set)?,
            0xDD => restart = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?])),
            0xE1 if exif.is_none() => exif = body.strip_prefix(b"Exif\0\0"),
            0xEE if body.starts_with(b"Adobe") => adobe = body.get(11).copied(),
            0xDA => {
                let (width, height) = size?;
                let n = usize::from(*body.first()?);
                if n != components.len() {
                    return None;
                }
                for (i, c) in components.iter_mut().enumerate() {
                    let (id, tables) = (*body.get(1 + 2 * i)?, *body.get(2 + 2 * i)?);
                    let (d, a) = (usize::from(tables >> 4), usize::from(tables & 15));
                    if id != ids[i] || d > 3 || a > 3 || !quant_set[c.quant] {
                        return None;
                    }
                    (c.dc, c.ac) = (d, a);
                    dc[d].as_ref()?;
                    ac[a].as_ref()?;
                }
                // Spectral selection 0..63, no successive approximation: one sequential scan.
                if body.get(1 + 2 * n..4 + 2 * n)? != [0, 63, 0] {
                    return None;
                }
                // Three components stored as RGB (Adobe's "no transform", or named R, G, B).
                if n == 3 && (adobe.is_some_and(|t| t != 1) || ids == b"RGB") {
                    return None;
                }
                let start = at + 2 + len;
                let end = crate::core::verify::scan_end(bytes, start)?;
                // One scan, then the end: a second scan (or a DNL) is left to the decoder.
                if bytes.get(end..end + 2)? != [0xFF, 0xD9] {
                    return None;
                }
                return Some(Header {
                    width,
                    height,
                    components,
                    quant,
                    dc,
                    ac,
                    restart,
                    data: &bytes[start..end],
                    exif,
                });
            }
            0xD8 | 0xD9 | 0x01 | 0xD0..=0xD7 => return None,
            _ => {}
        }
        at += 2 + len;
    }
}

fn huffman_tables(
    mut body: &[u8],
    dc: &mut [Option<Huffman>; 4],
    ac: &mut [Option<Huffman>; 4],
) -> Option<()> {
    while let Some((&class_id, rest)) = body.split_first() {
        let counts: [u8; 16] = rest.get(..16)?.try_into().ok()?;
        let n: usize = counts.iter().map(|&c| usize::from(c)).sum();
        let values = rest.get(16..16 + n)?;
        let (class, id) = (class_id >> 4, usize::from(class_id & 15));
        let table = Some(Huffman::new(&counts, values)?);
        match class {
            0 if id < 4 => dc[id] = table,
            1 if id < 4 => ac[id] = table,
            _ => return None,
        }
        body = &rest[16 + n..];
    }
    Some(())
}

fn quant_tables(mut body: &[u8], quant: &mut [[u16; 64]; 4], set: &mut [bool; 4]) -> Option<()> {
    while let Some((&precision_id, rest)) = body.split_first() {
        let id = usize::from(precision_id & 15);
        let wide = precision_id >> 4 == 1;
        if id > 3 || precision_id >> 4 > 1 {
            return None;
        }
        let size = if wide { 128 } else { 64 };
        let values = rest.get(..size)?;
        for (k, q) in quant[id].iter_mut().enumerate() {
            *q = if wide {
                u16::from_be_bytes([values[2 * k], values[2 * k + 1]])
            } else {
                u16::from(values[k])
            };
        }
        set[id] = true;
        body = &rest[size..];
    }
    Some(())
}

/// Bits looked up at once; longer codes are read a bit length at a time.
const FAST: u32 = 9;

/// A Huffman table: a lookup of the first `FAST` bits, and the canonical code bounds for the
/// rest (T.81 F.2.2.3).
pub(super) struct Huffman {
    /// Code length << 8 | value, for codes of at most `FAST` bits; 0 where longer.
    fast: [u16; 1 << FAST],
    /// For an AC table: where the code and the coefficient it sizes both fit in `FAST` bits,
    /// the coefficient << 16 | zero run << 8 | bits taken; 0 elsewhere.
    fast_ac: [i32; 1 << FAST],
    /// The largest code of each length (-1 where there is none).
    max_code: [i32; 17],
    /// Added to a code of each length to give its index in `values`.
    offset: [i32; 17],
    values: [u8; 256],
}

impl Huffman {
    fn new(counts: &[u8; 16], values: &[u8]) -> Option<Self> {
        let mut table = Huffman {
            fast: [0; 1 << FAST],
            fast_ac: [0; 1 << FAST],
            max_code: [-1; 17],
            offset: [0; 17],
            values: [0; 256],
        };
        table
            .values
            .get_mut(..values.len())?
            .copy_from_slice(values);
        let (mut code, mut k) = (0u32, 0usize);
        for len in 1..=16u32 {
            let l = len as usize;
            table.offset[l] = k as i32 - code as i32;
            for _ in 0..counts[l - 1] {
                // More codes than the length holds (the all-ones code is not a code either):
                // refused before the lookup is filled past its end.
                if code + 1 >= 1 << len {
                    return None;
                }
                if len <= FAST {
                    let shift = FAST - len;
                    let entry = (len as u16) << 8 | u16::from(values[k]);
                    table.fast[(code << shift) as usize..((code + 1) << shift) as usize]
                        .fill(entry);
                }
                code += 1;
                k += 1;
            }
            if counts[l - 1] > 0 {
                table.max_code[l] = code as i32 - 1;
            }
            code <<= 1;
        }
        for (prefix, &entry) in table.fast.iter().enumerate() {
            let (len, rs) = (u32::from(entry >> 8), entry & 0xFF);
            let (run, size) = (i32::from(rs >> 4), u32::from(rs & 15));
            if entry == 0 || size == 0 || len + size > FAST {
                continue;
            }
            let bits = (prefix as i32 >> (FAST - len - size)) & ((1 << size) - 1);
            let value = extend(bits, size);
            table.fast_ac[prefix] = value << 16 | run << 8 | (len + size) as i32;
        }
        Some(table)
    }
}

/// `size` bits read as a coefficient (T.81 F.2.2.1, EXTEND).
#[inline(always)]
fn extend(v: i32, size: u32) -> i32 {
    if v < 1 << (size - 1) {
        v - (1 << size) + 1
    } else {
        v
    }
}

/// The scan's bits, most significant first, with stuffed zero bytes taken out. Past the data
/// (or at a marker) it reads zeros, and says so through [`Bits::overrun`].
#[derive(Clone, Copy)]
pub(super) struct Bits<'a> {
    data: &'a [u8],
    at: usize,
    buf: u64,
    count: u32,
    /// Unstuffed bytes before `data`, and fed into `buf` since, zeros past the end included.
    base: u64,
    fed: u64,
    /// Zero bytes fed past the end of the data.
    padding: u64,
}

impl<'a> Bits<'a> {
    /// Reads `data` from its byte `at`, which follows `stuffed` stuffed zero bytes.
    pub fn new(data: &'a [u8], at: usize, stuffed: usize) -> Self {
        Bits {
            data,
            at,
            buf: 0,
            count: 0,
            base: (at - stuffed) as u64,
            fed: 0,
            padding: 0,
        }
    }

    /// This reader's place, in bits of the unstuffed data: the same for every reader of the
    /// same data at the same bit, wherever it started.
    pub fn position(&self) -> u64 {
        (self.base + self.fed) * 8 - u64::from(self.count)
    }

    /// Whether a bit past the end of the data was consumed.
    pub fn overrun(&self) -> bool {
        self.padding * 8 > u64::from(self.count)
    }

    /// The next byte not yet read into the buffer (up to 8 bytes past the next bit): where a
    /// new reader may start.
    pub fn next_byte(&self) -> usize {
        self.at
    }

    #[inline(always)]
    fn refill(&mut self) {
        while self.count <= 56 {
            // Eight bytes at once when none of them is 0xFF.
            if let Some(word) = self.data.get(self.at..self.at + 8) {
                let word = u64::from_be_bytes(word.try_into().unwrap_or_default());
                let inverted = !word;
                let has_ff =
                    inverted.wrapping_sub(0x0101_0101_0101_0101) & word & 0x8080_8080_8080_8080;
                if has_ff == 0 {
                    let n = (64 - self.count) / 8;
                    let taken = word & (u64::MAX << (64 - n * 8));
                    self.buf |= taken >> self.count;
                    self.count += n * 8;
                    self.at += n as usize;
                    self.fed += u64::from(n);
                    return;
                }
            }
            let byte = match self.data.get(self.at) {
                Some(0xFF) if self.data.get(self.at + 1) == Some(&0) => {
                    self.at += 2;
                    0xFF
                }
                Some(0xFF) | None => {
                    self.padding += 1;
                    0
                }
                Some(&b) => {
                    self.at += 1;
                    b
                }
            };
            self.buf |= u64::from(byte) << (56 - self.count);
            self.count += 8;
            self.fed += 1;
        }
    }

    #[inline(always)]
    fn skip(&mut self, n: u32) {
        self.buf <<= n;
        self.count -= n;
    }

    /// One Huffman-coded value. The buffer holds at least 57 bits (after `refill`).
    #[inline(always)]
    fn symbol(&mut self, table: &Huffman) -> Option<u8> {
        let entry = table.fast[(self.buf >> (64 - FAST)) as usize];
        if entry != 0 {
            self.skip(u32::from(entry >> 8));
            return Some(entry as u8);
        }
        let peek = (self.buf >> 48) as i32;
        for len in FAST + 1..=16 {
            let code = peek >> (16 - len);
            if code <= table.max_code[len as usize] {
                self.skip(len);
                return table
                    .values
                    .get((code + table.offset[len as usize]) as usize)
                    .copied();
            }
        }
        None
    }

    /// `size` bits as a signed value (T.81 F.2.2.1, EXTEND).
    #[inline(always)]
    fn value(&mut self, size: u32) -> i32 {
        if size == 0 {
            return 0;
        }
        let v = (self.buf >> (64 - size)) as i32;
        self.skip(size);
        extend(v, size)
    }

    /// One block: its DC difference is returned with a mask of the rows (bit v: row v) that
    /// hold an AC coefficient, which are dequantised into `coefficients` (row-major; the
    /// caller clears them). `None` for a code that does not decode.
    #[inline]
    pub fn block(
        &mut self,
        dc: &Huffman,
        ac: &Huffman,
        quant: &[u16; 64],
        coefficients: &mut [i32; 64],
    ) -> Option<(i32, u8)> {
        // Read on a copy, which the compiler keeps in registers, and written back once.
        let mut bits = *self;
        let block = bits.read_block(dc, ac, quant, coefficients);
        *self = bits;
        block
    }

    #[inline(always)]
    fn read_block(
        &mut self,
        dc: &Huffman,
        ac: &Huffman,
        quant: &[u16; 64],
        coefficients: &mut [i32; 64],
    ) -> Option<(i32, u8)> {
        self.refill();
        let size = self.symbol(dc)?;
        if size > 15 {
            return None;
        }
        let diff = self.value(u32::from(size));
        let (mut k, mut rows) = (1, 0u8);
        while k < 64 {
            self.refill();
            let fast = ac.fast_ac[(self.buf >> (64 - FAST)) as usize];
            if fast != 0 {
                self.skip((fast & 0xFF) as u32);
                k += ((fast >> 8) & 0xFF) as usize;
                if k > 63 {
                    return None;
                }
                let at = ZIGZAG[k];
                coefficients[at] = (fast >> 16) * i32::from(quant[k]);
                rows |= 1 << (at >> 3);
                k += 1;
                continue;
            }
            let rs = self.symbol(ac)?;
            let (run, size) = (usize::from(rs >> 4), u32::from(rs & 15));
            if size == 0 {
                if run != 15 {
                    break;
                }
                k += 16;
                continue;
            }
            k += run;
            if k > 63 {
                return None;
            }
            let at = ZIGZAG[k];
            coefficients[at] = self.value(size) * i32::from(quant[k]);
            rows |= 1 << (at >> 3);
            k += 1;
        }
        Some((diff, rows))
    }
}

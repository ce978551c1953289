//! Is a file whole, without decoding it? A file sent to the model unchanged (the pass-through)
//! is walked to its end first: PNG chunk by chunk to `IEND` with every CRC, JPEG segment by
//! segment and through each scan to `EOI`, WebP's RIFF chunks to the size its header promises.
//! BMP's header sizes against the file, TIFF's directories and every strip or tile they point
//! at. A file that fails is not sent: a service would only fail on it (and some bill for
//! that). Bytes after the end (a motion photo's video) are fine. GIFs are always decoded.

use super::format::Format;

/// Whether `bytes` of `format` are structurally complete and consistent.
pub fn whole(format: Format, bytes: &[u8]) -> bool {
    match format {
        Format::Png => png_whole(bytes),
        Format::Jpeg => jpeg_whole(bytes),
        Format::WebP => webp_whole(bytes),
        Format::Bmp => bmp_whole(bytes),
        Format::Tiff => tiff_whole(bytes),
        Format::Gif => true,
    }
}

/// The file holds the size its header gives, and the pixels start inside it.
fn bmp_whole(bytes: &[u8]) -> bool {
    let (Some(size), Some(pixels)) = (le32(bytes, 2), le32(bytes, 10)) else {
        return false;
    };
    // Some writers leave the size 0; the pixel offset must still be inside the file.
    (size == 0 || bytes.len() >= size as usize) && (pixels as usize) < bytes.len()
}

/// Tags whose values locate the pixel data: (offsets, byte counts) of strips and of tiles.
const DATA_TAGS: [(u16, u16); 2] = [(273, 279), (324, 325)];

/// Every directory (classic or BigTIFF) lies in the file, and so does each strip or tile.
fn tiff_whole(bytes: &[u8]) -> bool {
    let Some(t) = Tiff::of(bytes) else {
        return false;
    };
    let (mut next, mut seen) = (t.first_ifd(), 0);
    while next != 0 {
        seen += 1;
        if seen > 64 {
            return false;
        }
        let Some((entries, following)) = t.ifd(next) else {
            return false;
        };
        for (offsets, counts) in DATA_TAGS {
            let (o, c) = (t.values(&entries, offsets), t.values(&entries, counts));
            if o.len() != c.len() {
                return false;
            }
            if o.iter()
                .zip(&c)
                .any(|(o, c)| o.saturating_add(*c) > bytes.len() as u64)
            {
                return false;
            }
        }
        next = following;
    }
    seen > 0
}

/// The values of `tags` in a TIFF's first directory (empty where absent), and where each tag's
/// value field lies in the file; `None` when the header or directory cannot be read.
pub fn tiff_tags(bytes: &[u8], tags: &[u16]) -> Option<Vec<(Vec<u64>, Option<usize>)>> {
    let t = Tiff::of(bytes)?;
    let (entries, _) = t.ifd(t.first_ifd())?;
    // A tag given twice means what each reader makes of it (the first, the last): refused.
    let mut seen: Vec<u16> = entries.iter().map(|e| e.tag).collect();
    seen.sort_unstable();
    if seen.windows(2).any(|w| w[0] == w[1]) {
        return None;
    }
    Some(
        tags.iter()
            .map(|&tag| {
                let at = entries.iter().find(|e| e.tag == tag).map(|e| e.at);
                (t.values(&entries, tag), at)
            })
            .collect(),
    )
}

/// A TIFF header read: byte order and classic or big.
struct Tiff<'a> {
    bytes: &'a [u8],
    le: bool,
    big: bool,
}

/// One directory entry: tag, field type, count, and where its value (or the value) is.
struct Entry {
    tag: u16,
    kind: u16,
    count: u64,
    at: usize,
}

impl<'a> Tiff<'a> {
    fn of(bytes: &'a [u8]) -> Option<Self> {
        let le = bytes.starts_with(b"II");
        let mut t = Tiff {
            bytes,
            le,
            big: false,
        };
        t.big = t.u16(2)? == 43;
        Some(t)
    }

    fn u16(&self, at: usize) -> Option<u16> {
        let b: [u8; 2] = self.bytes.get(at..at + 2)?.try_into().ok()?;
        Some(if self.le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    }

    fn u32(&self, at: usize) -> Option<u32> {
        let b: [u8; 4] = self.bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if self.le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }

    fn u64(&self, at: usize) -> Option<u64> {
        let b: [u8; 8] = self.bytes.get(at..at + 8)?.try_into().ok()?;
        Some(if self.le {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        })
    }

    /// An offset field: 4 bytes, or 8 in BigTIFF.
    fn offset(&self, at: usize) -> Option<u64> {
        if self.big {
            self.u64(at)
        } else {
            self.u32(at).map(u64::from)
        }
    }

    fn first_ifd(&self) -> u64 {
        self.offset(if self.big { 8 } else { 4 }).unwrap_or(0)
    }

    /// The entries of the directory at `at` and the offset of the next one.
    fn ifd(&self, at: u64) -> Option<(Vec<Entry>, u64)> {
        let at = usize::try_from(at).ok()?;
        let (count, first, size) = if self.big {
            (usize::try_from(self.u64(at)?).ok()?, at + 8, 20)
        } else {
            (usize::from(self.u16(at)?), at + 2, 12)
        };
        let end = first.checked_add(count.checked_mul(size)?)?;
        self.bytes.get(first..end + if self.big { 8 } else { 4 })?;
        let entries = (0..count)
            .map(|i| {
                let e = first + i * size;
                let value = if self.big { e + 12 } else { e + 8 };
                let count = if self.big {
                    self.u64(e + 4)
                } else {
                    self.u32(e + 4).map(u64::from)
                };
                Some(Entry {
                    tag: self.u16(e)?,
                    kind: self.u16(e + 2)?,
                    count: count?,
                    at: value,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some((entries, self.offset(end)?))
    }

    /// The integer values of `tag` (SHORT, LONG or LONG8), empty when absent or unreadable.
    fn values(&self, entries: &[Entry], tag: u16) -> Vec<u64> {
        let Some(e) = entries.iter().find(|e| e.tag == tag) else {
            return Vec::new();
        };
        let width = match e.kind {
            3 => 2,
            4 | 13 => 4,
            16 | 17 => 8,
            _ => return Vec::new(),
        };
        let Ok(count) = usize::try_from(e.count) else {
            return Vec::new();
        };
        let inline = if self.big { 8 } else { 4 };
        let start = if count.saturating_mul(width) <= inline {
            Some(e.at)
        } else {
            self.offset(e.at).and_then(|o| usize::try_from(o).ok())
        };
        let Some(start) = start else {
            return Vec::new();
        };
        (0..count)
            .map_while(|i| {
                let at = start.checked_add(i.checked_mul(width)?)?;
                match width {
                    2 => self.u16(at).map(u64::from),
                    4 => self.u32(at).map(u64::from),
                    _ => self.u64(at),
                }
            })
            .collect()
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// IHDR first, at least one IDAT, every chunk's CRC right, then IEND.
fn png_whole(bytes: &[u8]) -> bool {
    let (mut at, mut first, mut data) = (8, true, false);
    loop {
        let Some(len) = be32(bytes, at).map(|l| l as usize) else {
            return false;
        };
        let (kind_at, end) = (at + 4, at + 8 + len);
        let Some(kind) = bytes.get(kind_at..kind_at + 4) else {
            return false;
        };
        let (Some(body), Some(crc)) = (bytes.get(kind_at..end), be32(bytes, end)) else {
            return false;
        };
        if crc32fast::hash(body) != crc || (first && kind != b"IHDR") {
            return false;
        }
        first = false;
        data |= kind == b"IDAT";
        if kind == b"IEND" {
            return data;
        }
        at = end + 4;
    }
}

/// Segments up to a scan, the scan's entropy-coded data to the next marker, again (progressive
/// files have several scans) until `EOI`.
fn jpeg_whole(bytes: &[u8]) -> bool {
    let mut at = 2;
    let mut scanned = false;
    loop {
        let (Some(&0xFF), Some(&marker)) = (bytes.get(at), bytes.get(at + 1)) else {
            return false;
        };
        match marker {
            0xFF => at += 1,
            0xD9 => return scanned,
            0x01 | 0xD0..=0xD7 => at += 2,
            0xD8 | 0x00 => return false,
            _ => {
                let Some(len) = bytes.get(at + 2..at + 4) else {
                    return false;
                };
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                if len < 2 || at + 2 + len > bytes.len() {
                    return false;
                }
                at += 2 + len;
                if marker == 0xDA {
                    let Some(next) = scan_end(bytes, at) else {
                        return false;
                    };
                    scanned = true;
                    at = next;
                }
            }
        }
    }
}

/// What a JPEG's segments before its first scan say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegHeader<'a> {
    /// The frame marker (`C0`–`CF` but `C4`, `C8`, `CC`): which coding the file uses.
    pub frame: u8,
    pub width: u16,
    pub height: u16,
    /// The EXIF block (TIFF header on), if an `APP1` segment carries one.
    pub exif: Option<&'a [u8]>,
}

/// Reads a JPEG's header segments up to its first scan; `None` when no frame header comes
/// before it or a segment runs past the end.
pub fn jpeg_header(bytes: &[u8]) -> Option<JpegHeader<'_>> {
    let (mut at, mut exif) = (2, None);
    loop {
        let (&0xFF, &marker) = (bytes.get(at)?, bytes.get(at + 1)?) else {
            return None;
        };
        match marker {
            0xFF => at += 1,
            0xDA | 0xD9 => return None,
            0x01 | 0xD0..=0xD7 => at += 2,
            _ => {
                let len = bytes.get(at + 2..at + 4)?;
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                let body = bytes.get(at + 4..at + 2 + len.max(2))?;
                match marker {
                    0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                        let side =
                            |i: usize| Some(u16::from_be_bytes([*body.get(i)?, *body.get(i + 1)?]));
                        return Some(JpegHeader {
                            frame: marker,
                            height: side(1)?,
                            width: side(3)?,
                            exif,
                        });
                    }
                    0xE1 if exif.is_none() => exif = body.strip_prefix(b"Exif\0\0"),
                    _ => {}
                }
                at += 2 + len;
            }
        }
    }
}

/// Where the entropy-coded data starting at `from` ends: the first `FF` that is not a stuffed
/// `FF 00`, a restart marker or fill. `None` when the file ends first.
pub(crate) fn scan_end(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    loop {
        at += memchr::memchr(0xFF, bytes.get(at..)?)?;
        match *bytes.get(at + 1)? {
            0x00 | 0xD0..=0xD7 => at += 2,
            0xFF => at += 1,
            _ => return Some(at),
        }
    }
}

/// The RIFF size covers the file (plus what may follow), and its chunks tile it exactly, with
/// an image chunk among them.
fn webp_whole(bytes: &[u8]) -> bool {
    let Some(riff) = le32(bytes, 4).map(|n| n as usize) else {
        return false;
    };
    let end = riff.saturating_add(8);
    if bytes.len() < end || riff < 4 {
        return false;
    }
    let (mut at, mut image) = (12, false);
    while at < end {
        let (Some(kind), Some(len)) = (bytes.get(at..at + 4), le32(bytes, at + 4)) else {
            return false;
        };
        image |= matches!(kind, b"VP8 " | b"VP8L" | b"ANMF");
        let padded = (len as usize).saturating_add(len as usize & 1);
        at = at.saturating_add(8).saturating_add(padded);
    }
    at == end && image
}

//! The `.nce` model container: a JSON header and named typed arrays, checksummed.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "NCE\x02"
//! 4       2     format version (u16 LE) = 2 (1 is read too)
//! 6       2     reserved (0)
//! 8       4     header length H (u32 LE), at most 16 MiB
//! 12      H     header: UTF-8 JSON (model metadata, see crate::export::Header)
//! ..      4     array count N (u32 LE), at most 65536
//! N times:
//!         2     name length L (u16 LE), 1..=256
//!         L     name (UTF-8)
//!         1     dtype: 0 = u8, 1 = i8, 2 = i32, 3 = u32 (packed 2-bit words)
//!         1     rank R (1..=4)
//!         4·R   dims (u32 LE each)
//!         ...   data: product(dims) elements, little-endian
//! end-4   4     CRC-32 (IEEE) of every preceding byte
//! ```
//!
//! The reader checks the checksum before parsing and bounds-checks every length against the
//! bytes that remain, so truncated, bit-flipped or oversized files are errors, never panics or
//! huge allocations.

use std::collections::BTreeMap;

pub const MAGIC: [u8; 4] = *b"NCE\x02";
/// The version this build writes. Version 2 added grouped (depthwise) convs to the graph; a
/// version-1 file is the same layout without them, and is read as it is.
pub const VERSION: u16 = 2;
/// Versions this build reads.
pub const READS: std::ops::RangeInclusive<u16> = 1..=VERSION;
const MAX_HEADER: usize = 16 << 20;
const MAX_ARRAYS: usize = 65536;
const MAX_NAME: usize = 256;

/// A typed array as stored.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    I32(Vec<i32>),
    U32(Vec<u32>),
}

impl Array {
    fn dtype(&self) -> u8 {
        match self {
            Array::U8(_) => 0,
            Array::I8(_) => 1,
            Array::I32(_) => 2,
            Array::U32(_) => 3,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::U32(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes of payload.
    pub fn byte_len(&self) -> usize {
        self.len() * elem_size(self.dtype())
    }
}

fn elem_size(dtype: u8) -> usize {
    match dtype {
        0 | 1 => 1,
        _ => 4,
    }
}

/// A named array with its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub dims: Vec<usize>,
    pub data: Array,
}

/// The decoded container.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Container {
    pub header: String,
    pub arrays: BTreeMap<String, Entry>,
}

/// Why bytes are not a valid container.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not an nce model file (bad magic)")]
    BadMagic,
    #[error("format version {0} is not supported (this build reads versions 1 to {VERSION})")]
    Version(u16),
    #[error("checksum mismatch: the file is corrupt, truncated or was modified (stored {stored:08x}, computed {computed:08x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("truncated: {what} needs {need} bytes at offset {at}, only {have} remain")]
    Truncated { what: String, at: usize, need: usize, have: usize },
    #[error("invalid {what}: {msg}")]
    Invalid { what: String, msg: String },
    #[error("{0} trailing bytes after the last array")]
    Trailing(usize),
}

/// Encodes `c` (arrays in name order).
pub fn encode(c: &Container) -> Result<Vec<u8>, FormatError> {
    let invalid = |what: &str, msg: String| FormatError::Invalid { what: what.into(), msg };
    if c.header.len() > MAX_HEADER {
        return Err(invalid("header", format!("{} bytes exceeds {MAX_HEADER}", c.header.len())));
    }
    if c.arrays.len() > MAX_ARRAYS {
        return Err(invalid("array count", c.arrays.len().to_string()));
    }
    let mut out = Vec::with_capacity(64 + c.header.len() + c.arrays.values().map(|e| e.data.byte_len() + 32).sum::<usize>());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(c.header.len() as u32).to_le_bytes());
    out.extend_from_slice(c.header.as_bytes());
    out.extend_from_slice(&(c.arrays.len() as u32).to_le_bytes());
    for (name, e) in &c.arrays {
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(invalid("array name", format!("`{name}` must be 1..={MAX_NAME} bytes")));
        }
        if e.dims.is_empty()
            || e.dims.len() > 4
            || e.dims.iter().product::<usize>() != e.data.len()
            || e.dims.iter().any(|&d| d > u32::MAX as usize)
        {
            return Err(invalid(name, format!("dims {:?} do not describe {} elements", e.dims, e.data.len())));
        }
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(e.data.dtype());
        out.push(e.dims.len() as u8);
        for &d in &e.dims {
            out.extend_from_slice(&(d as u32).to_le_bytes());
        }
        match &e.data {
            Array::U8(v) => out.extend_from_slice(v),
            Array::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
            Array::I32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Array::U32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        }
    }
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FormatError> {
        let have = self.b.len() - self.at;
        if n > have {
            return Err(FormatError::Truncated { what: what.into(), at: self.at, need: n, have });
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8, FormatError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, FormatError> {
        let s = self.take(2, what)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
}

/// Decodes and validates a container.
pub fn decode(bytes: &[u8]) -> Result<Container, FormatError> {
    if bytes.len() < 4 || bytes[..4] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    if bytes.len() < 16 {
        return Err(FormatError::Truncated { what: "fixed header and checksum".into(), at: 0, need: 16, have: bytes.len() });
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let computed = crc32(body);
    let mut c = Cursor { b: body, at: 4 };
    let version = c.u16("version")?;
    if !READS.contains(&version) {
        return Err(FormatError::Version(version));
    }
    if stored != computed {
        return Err(FormatError::Checksum { stored, computed });
    }
    let reserved = c.u16("reserved")?;
    if reserved != 0 {
        return Err(FormatError::Invalid { what: "reserved field".into(), msg: format!("{reserved} (must be 0 in version {version})") });
    }
    let hlen = c.u32("header length")? as usize;
    if hlen > MAX_HEADER {
        return Err(FormatError::Invalid { what: "header length".into(), msg: format!("{hlen} exceeds {MAX_HEADER}") });
    }
    let header = std::str::from_utf8(c.take(hlen, "header")?)
        .map_err(|e| FormatError::Invalid { what: "header".into(), msg: e.to_string() })?
        .to_string();
    let count = c.u32("array count")? as usize;
    if count > MAX_ARRAYS {
        return Err(FormatError::Invalid { what: "array count".into(), msg: format!("{count} exceeds {MAX_ARRAYS}") });
    }
    let mut arrays = BTreeMap::new();
    for i in 0..count {
        let (name, entry) = read_array(&mut c, i)?;
        if arrays.insert(name.clone(), entry).is_some() {
            return Err(FormatError::Invalid { what: format!("array `{name}`"), msg: "appears twice".into() });
        }
    }
    if c.at != body.len() {
        return Err(FormatError::Trailing(body.len() - c.at));
    }
    Ok(Container { header, arrays })
}

/// Array `i`: its name, then dtype, rank, dims and little-endian data.
fn read_array(c: &mut Cursor, i: usize) -> Result<(String, Entry), FormatError> {
    let nlen = c.u16("array name length")? as usize;
    if nlen == 0 || nlen > MAX_NAME {
        return Err(FormatError::Invalid { what: format!("array {i} name length"), msg: nlen.to_string() });
    }
    let name = std::str::from_utf8(c.take(nlen, "array name")?)
        .map_err(|e| FormatError::Invalid { what: format!("array {i} name"), msg: e.to_string() })?
        .to_string();
    let dtype = c.u8("dtype")?;
    if dtype > 3 {
        return Err(FormatError::Invalid { what: format!("`{name}` dtype"), msg: dtype.to_string() });
    }
    let rank = c.u8("rank")? as usize;
    if !(1..=4).contains(&rank) {
        return Err(FormatError::Invalid { what: format!("`{name}` rank"), msg: rank.to_string() });
    }
    let overflow = |what: &str| FormatError::Invalid { what: format!("`{name}` {what}"), msg: "overflow".into() };
    let mut dims = Vec::with_capacity(rank);
    let mut n: usize = 1;
    for _ in 0..rank {
        let d = c.u32("dims")? as usize;
        n = n.checked_mul(d).ok_or_else(|| overflow("dims"))?;
        dims.push(d);
    }
    let bytes_needed = n.checked_mul(elem_size(dtype)).ok_or_else(|| overflow("size"))?;
    let raw = c.take(bytes_needed, &format!("data of `{name}`"))?;
    let data = match dtype {
        0 => Array::U8(raw.to_vec()),
        1 => Array::I8(raw.iter().map(|&b| b as i8).collect()),
        2 => Array::I32(raw.chunks_exact(4).map(|s| i32::from_le_bytes([s[0], s[1], s[2], s[3]])).collect()),
        _ => Array::U32(raw.chunks_exact(4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]])).collect()),
    };
    Ok((name, Entry { dims, data }))
}

/// CRC-32 (IEEE 802.3, reflected, as zlib/PNG): `crc32fast`.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Container {
        let mut arrays = BTreeMap::new();
        arrays.insert("a.w".into(), Entry { dims: vec![2, 3], data: Array::U32(vec![1, 2, 3, 4, 5, u32::MAX]) });
        arrays.insert("a.m".into(), Entry { dims: vec![2], data: Array::I32(vec![-7, 1 << 30]) });
        arrays.insert("fc.w".into(), Entry { dims: vec![1, 3], data: Array::I8(vec![-127, 0, 127]) });
        Container { header: "{\"model\":\"resnet20\"}".into(), arrays }
    }

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn round_trip() {
        let c = sample();
        assert_eq!(decode(&encode(&c).unwrap()).unwrap(), c);
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error() {
        let bytes = encode(&sample()).unwrap();
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "truncated to {n} accepted");
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(decode(&b).is_err(), "flip of byte {i} bit {bit} accepted");
            }
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }
}

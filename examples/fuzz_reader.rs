//! A stable-Rust fuzzer for the `.nce` model reader (`nce::engine::plan::QModel::from_bytes`, in `nce::export::model`).
//!
//! ```text
//! cargo run --release --example fuzz_reader -- [ITERATIONS] [SEED] [SEED_FILE]
//! ```
//!
//! Starts from one valid model file (`SEED_FILE`, or a small synthetic ResNet-20 built in
//! memory) and, per iteration, applies 1–4 random mutations and decodes the result. Three
//! kinds of iteration:
//!
//! - **raw**: bit flips, bytes set to 0/0xff/0x7f/0x80, truncation, extension with random
//!   bytes, duplicated or removed ranges — left with the old checksum, so they exercise the
//!   magic/version/checksum/truncation paths;
//! - **raw + CRC**: the same plus targeted edits of the header length, array count, name
//!   lengths, dtype, rank and dims fields (interesting values), then the checksum is
//!   recomputed so the parser's bounds checks see them;
//! - **structured**: the header JSON is edited as a tree (numbers set to boundary values,
//!   strings, ops and layer references swapped, elements removed or duplicated, keys removed)
//!   or as text, and arrays are removed, duplicated, renamed, added, retyped, reshaped or get
//!   boundary values; the file is re-serialised with a valid checksum, so the model-level
//!   validation (graph, shapes, dtypes, requantisation ranges) is exercised.
//!
//! Every call must return `Ok` or `Err` — a panic is caught, the input is written to
//! `fuzz-crash-SEED-ITER.nce` and the run exits non-zero. Each call must also stay within a
//! time limit (100 ms, re-measured before failing) and an allocation budget (a counting global
//! allocator measures the peak heap growth of every call). Accepted models are also prepared
//! and run on an image, which must not panic either. At the end it prints iterations/s and the
//! counts of `Ok` and of every error kind.
//!
//! Uses only the crate and std (splitmix64 PRNG), so it runs where cargo-fuzz (nightly) is not
//! available.

use nce::engine::cpu::Cpu;
use nce::engine::plan::{Header, QModel};
use nce::engine::words_for;
use nce::export::format::{crc32, decode, encode, Array, Container, Entry, FormatError};
use nce::export::DecodeError;
use nce::graph::{build, BitConfig, ModelKind, Op, Shape};
use serde_json::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

// ------------------------------------------------------------------------------------------
// Allocation accounting
// ------------------------------------------------------------------------------------------

/// Counts live heap bytes and their peak, so every decode's peak heap growth is known.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new >= l.size() {
                let now = LIVE.fetch_add(new - l.size(), Relaxed) + new - l.size();
                PEAK.fetch_max(now, Relaxed);
            } else {
                LIVE.fetch_sub(l.size() - new, Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak heap growth allowed for decoding `len` bytes: a small multiple of the input (the
/// decoded arrays, the parsed header and the plan's copies of the weights) plus a constant.
fn alloc_budget(len: usize) -> usize {
    16 * len + (4 << 20)
}

const TIME_LIMIT: Duration = Duration::from_millis(100);

// ------------------------------------------------------------------------------------------
// PRNG
// ------------------------------------------------------------------------------------------

struct Rng(nce::data::Rng);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(nce::data::Rng::new(seed))
    }
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ------------------------------------------------------------------------------------------
// The seed
// ------------------------------------------------------------------------------------------

/// A small valid model: ResNet-20 on 1×8×8 inputs with 4/4/6/8 channels (conv1 and the
/// stages), random 2- and 8-bit codes and requantisation values in range.
fn synthetic_seed() -> Vec<u8> {
    let mut widths = vec![4usize; 19];
    widths[7..13].fill(6);
    widths[13..].fill(8);
    let net = build(ModelKind::Resnet20, Shape::new(1, 8, 8), 10, Some(&widths), &BitConfig::uniform(2)).expect("network");
    let mut rng = Rng::new(0x5EED);
    let mut arrays = BTreeMap::new();
    let mut scales = BTreeMap::new();
    let i32s = |v: Vec<i32>| Entry { dims: vec![v.len()], data: Array::I32(v) };
    for l in &net.layers {
        let (cout, k_len) = match l.op {
            Op::Conv { k, .. } => (l.out_shape.c, l.in_shape.c * k * k),
            Op::Linear => (l.out_shape.c, l.in_shape.numel()),
            _ => continue,
        };
        let w = if l.wbits == 2 {
            let wpc = words_for(k_len);
            Entry { dims: vec![cout, wpc], data: Array::U32((0..cout * wpc).map(|_| rng.next() as u32).collect()) }
        } else {
            Entry { dims: vec![cout, k_len], data: Array::I8((0..cout * k_len).map(|_| (rng.below(255) as i32 - 127) as i8).collect()) }
        };
        arrays.insert(format!("{}.w", l.name), w);
        if let Op::Conv { relu, .. } = l.op {
            arrays.insert(format!("{}.m", l.name), i32s((0..cout).map(|_| 1 + rng.below(1 << 20) as i32).collect()));
            arrays.insert(format!("{}.b", l.name), i32s((0..cout).map(|_| rng.below(1 << 23) as i32 - (1 << 22)).collect()));
            arrays.insert(format!("{}.shift", l.name), i32s(vec![22]));
            if !relu {
                arrays.insert(format!("{}.r", l.name), i32s(vec![1 << 21]));
            }
        } else {
            arrays.insert(format!("{}.b", l.name), i32s((0..cout).map(|_| rng.below(2001) as i32 - 1000).collect()));
        }
        if scales.len() < 3 {
            let s = nce::engine::plan::LayerScales { weight: Some(0.01), input: Some(0.5), output: Some(0.25), weight_bits: l.wbits };
            scales.insert(l.name.clone(), s);
        }
    }
    let header = Header { kind: "nce-model".into(), net, profile: Some("fuzz".into()), source: Some("synthetic".into()), scales };
    let c = Container { header: serde_json::to_string(&header).expect("header"), arrays };
    encode(&c).expect("encode")
}

// ------------------------------------------------------------------------------------------
// The file as records (for targeted and structured mutations)
// ------------------------------------------------------------------------------------------

/// One array record as raw fields: anything may be inconsistent when written back.
#[derive(Clone)]
struct Rec {
    name: Vec<u8>,
    dtype: u8,
    dims: Vec<u32>,
    data: Vec<u8>,
}

/// Field offsets of the seed, for targeted edits.
struct Fields {
    header_len_at: usize,
    count_at: usize,
    /// Per record: offsets of the name length, dtype, rank and first dim; the rank.
    recs: Vec<(usize, usize, usize, usize, usize)>,
}

fn split(bytes: &[u8]) -> Option<(Vec<u8>, Vec<Rec>, Fields)> {
    let c = decode(bytes).ok()?;
    let hlen = c.header.len();
    let count_at = 12 + hlen;
    let mut at = count_at + 4;
    let mut recs = vec![];
    let mut offs = vec![];
    for (name, e) in &c.arrays {
        let dtype = bytes[at + 2 + name.len()];
        let rank = e.dims.len();
        let data_at = at + 2 + name.len() + 2 + 4 * rank;
        let n = e.data.byte_len();
        offs.push((at, at + 2 + name.len(), at + 3 + name.len(), at + 4 + name.len(), rank));
        recs.push(Rec {
            name: name.as_bytes().to_vec(),
            dtype,
            dims: e.dims.iter().map(|&d| d as u32).collect(),
            data: bytes[data_at..data_at + n].to_vec(),
        });
        at = data_at + n;
    }
    Some((c.header.into_bytes(), recs, Fields { header_len_at: 8, count_at, recs: offs }))
}

/// Writes a file from raw parts, without validation, with a correct checksum.
fn write(header: &[u8], recs: &[Rec], count: u32, version: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len() + recs.iter().map(|r| r.data.len() + r.name.len() + 24).sum::<usize>() + 24);
    out.extend_from_slice(b"NCE\x02");
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(&count.to_le_bytes());
    for r in recs {
        out.extend_from_slice(&(r.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&r.name);
        out.push(r.dtype);
        out.push(r.dims.len() as u8);
        for d in &r.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&r.data);
    }
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn fix_crc(b: &mut [u8]) {
    if b.len() >= 4 {
        let n = b.len() - 4;
        let crc = crc32(&b[..n]);
        b[n..].copy_from_slice(&crc.to_le_bytes());
    }
}

// ------------------------------------------------------------------------------------------
// Mutations
// ------------------------------------------------------------------------------------------

const INTERESTING_U32: [u32; 16] = [0, 1, 2, 3, 4, 15, 16, 17, 255, 256, 65535, 65536, 65537, 0x7fff_ffff, 0x8000_0000, u32::MAX];

/// Byte-level mutations that may change the length.
fn raw_mutation(rng: &mut Rng, b: &mut Vec<u8>) {
    let n = b.len();
    match rng.below(8) {
        0 | 1 if n > 0 => {
            let i = rng.below(n);
            b[i] ^= 1 << rng.below(8);
        }
        2 if n > 0 => {
            let i = rng.below(n);
            b[i] = *rng.pick(&[0, 0xff, 0x7f, 0x80]);
        }
        3 if n > 4 => {
            // A 16- or 32-bit little-endian boundary value anywhere.
            let i = rng.below(n - 4);
            let v = *rng.pick(&INTERESTING_U32);
            if rng.chance(50) {
                b[i..i + 4].copy_from_slice(&v.to_le_bytes());
            } else {
                b[i..i + 2].copy_from_slice(&(v as u16).to_le_bytes());
            }
        }
        4 => {
            // Truncate (often just a little).
            let cut = if rng.chance(50) { rng.below(n + 1) } else { n.saturating_sub(1 + rng.below(16)) };
            b.truncate(cut);
        }
        5 => {
            let len = 1 + rng.below(32);
            let extra = rng.bytes(len);
            b.extend_from_slice(&extra);
        }
        6 if n > 0 => {
            // Duplicate a range in place.
            let i = rng.below(n);
            let len = 1 + rng.below((n - i).min(64));
            let dup = b[i..i + len].to_vec();
            let at = rng.below(n + 1);
            b.splice(at..at, dup);
        }
        7 if n > 0 => {
            let i = rng.below(n);
            let len = 1 + rng.below((n - i).min(64));
            b.drain(i..i + len);
        }
        _ => {}
    }
}

/// Length-preserving edits of the seed's fields (done before any length change).
fn field_mutation(rng: &mut Rng, b: &mut [u8], f: &Fields) {
    let put32 = |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let r = f.recs[rng.below(f.recs.len())];
    let (name_len_at, dtype_at, rank_at, dims_at, rank) = r;
    match rng.below(8) {
        0 => {
            let v = if rng.chance(50) {
                *rng.pick(&INTERESTING_U32)
            } else {
                ((f.count_at - 12) as u32).wrapping_add(rng.below(9) as u32).wrapping_sub(4)
            };
            put32(b, f.header_len_at, v);
        }
        1 => {
            let v = if rng.chance(50) {
                *rng.pick(&INTERESTING_U32)
            } else {
                (f.recs.len() as u32).wrapping_add(rng.below(5) as u32).wrapping_sub(2)
            };
            put32(b, f.count_at, v);
        }
        2 => {
            let cur = u16::from_le_bytes([b[name_len_at], b[name_len_at + 1]]);
            let v = *rng.pick(&[0u16, 1, 255, 256, 257, u16::MAX, cur.wrapping_add(1), cur.wrapping_sub(1)]);
            b[name_len_at..name_len_at + 2].copy_from_slice(&v.to_le_bytes());
        }
        3 => b[dtype_at] = *rng.pick(&[0u8, 1, 2, 3, 4, 0x80, 0xff]),
        4 => b[rank_at] = *rng.pick(&[0u8, 1, 2, 3, 4, 5, 0xff]),
        5 | 6 => {
            let d = rng.below(rank);
            let at = dims_at + 4 * d;
            let cur = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
            let v = if rng.chance(50) { *rng.pick(&INTERESTING_U32) } else { cur.wrapping_add(rng.below(5) as u32).wrapping_sub(2) };
            put32(b, at, v);
        }
        _ => {
            // Swap the dims of a rank-2 record (same element count, transposed shape).
            if rank == 2 {
                let (x, y) = (dims_at, dims_at + 4);
                for k in 0..4 {
                    b.swap(x + k, y + k);
                }
            }
        }
    }
}

const INTERESTING_NUMBERS: [i128; 24] = [
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    9,
    16,
    30,
    31,
    32,
    255,
    256,
    65535,
    65536,
    65537,
    (1 << 28) + 1,
    1 << 31,
    1 << 32,
    (1 << 63) + 1,
    u64::MAX as i128,
    -1,
    i64::MIN as i128,
];

/// A replacement for a number: often a neighbour of `cur` or a small value (so the header
/// still deserialises and the graph checks are reached), else a boundary value.
fn interesting_number(rng: &mut Rng, cur: Option<u64>) -> Value {
    match rng.below(12) {
        0..=3 if cur.is_some() => Value::from(cur.unwrap_or(0).wrapping_add(rng.below(5) as u64).saturating_sub(2)),
        0..=4 => Value::from(rng.below(34)),
        5 => Value::from(0.5),
        6 => Value::from(1e300),
        _ => {
            let v = *rng.pick(&INTERESTING_NUMBERS);
            if v < 0 {
                Value::from(v as i64)
            } else {
                Value::from(v as u64)
            }
        }
    }
}

/// A random op, layer reference or shape, for swapping into the graph.
fn random_node(rng: &mut Rng, layers: usize) -> Value {
    let small = |rng: &mut Rng| Value::from(rng.below(5));
    match rng.below(12) {
        0 => serde_json::json!({"Conv": {"k": small(rng), "stride": small(rng), "pad": small(rng), "groups": 1, "relu": rng.chance(50)}}),
        1 => Value::from("Linear"),
        2 => Value::from("GlobalAvgPool"),
        3 => serde_json::json!({"Add": {"relu": rng.chance(70)}}),
        4 => serde_json::json!({"Subsample": {"stride": small(rng)}}),
        5 => serde_json::json!({"MaxPool": {"k": small(rng), "stride": small(rng), "pad": small(rng)}}),
        6 | 7 => serde_json::json!({"Layer": rng.below(layers + 2)}),
        8 => Value::from("Input"),
        9 => serde_json::json!({"c": small(rng), "h": small(rng), "w": small(rng)}),
        10 => Value::Null,
        _ => interesting_number(rng, None),
    }
}

/// Edits one random node of the header JSON tree.
fn json_mutation(rng: &mut Rng, v: &mut Value, layers: usize, names: &[String]) {
    // Walk down: containers are entered with probability 5/6.
    let enter = match v {
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => false,
    } && rng.below(6) != 0;
    if enter {
        match v {
            Value::Array(a) => {
                let i = rng.below(a.len());
                return json_mutation(rng, &mut a[i], layers, names);
            }
            Value::Object(o) => {
                // Most of the interesting structure is in `net.layers`.
                let key = ["net", "layers"].into_iter().find(|k| o.contains_key(*k)).filter(|_| rng.chance(75));
                let child = match key {
                    Some(k) => o.get_mut(k).expect("child"),
                    None => {
                        let i = rng.below(o.len());
                        o.values_mut().nth(i).expect("child")
                    }
                };
                return json_mutation(rng, child, layers, names);
            }
            _ => unreachable!(),
        }
    }
    if rng.chance(15) {
        *v = random_node(rng, layers);
        return;
    }
    match v {
        Value::Number(n) => *v = interesting_number(rng, n.as_u64()),
        Value::Null => *v = interesting_number(rng, None),
        Value::Bool(b) => *b = !*b,
        Value::String(s) => {
            *s = match rng.below(6) {
                0 => String::new(),
                1 => format!("{s}x"),
                2 => rng.pick(names).clone(),
                3 => "nce-model".into(),
                4 => "Input".into(),
                _ => "\u{fffd}\0".into(),
            }
        }
        Value::Array(a) => match rng.below(5) {
            0 if !a.is_empty() => {
                let i = rng.below(a.len());
                a.remove(i);
            }
            1 if !a.is_empty() => {
                let i = rng.below(a.len());
                let x = a[i].clone();
                a.insert(rng.below(a.len() + 1), x);
            }
            2 if a.len() > 1 => {
                let (i, j) = (rng.below(a.len()), rng.below(a.len()));
                a.swap(i, j);
            }
            3 => a.clear(),
            _ => a.push(random_node(rng, layers)),
        },
        Value::Object(o) => {
            if !o.is_empty() && rng.chance(20) {
                let k = o.keys().nth(rng.below(o.len())).expect("key").clone();
                o.remove(&k);
            } else {
                o.insert(rng.pick(&["extra", "kind", "net", "layers", "c", "relu", "k"]).to_string(), random_node(rng, layers));
            }
        }
    }
}

/// Header text edits (may break JSON or UTF-8).
fn text_mutation(rng: &mut Rng, h: &mut Vec<u8>) {
    if h.is_empty() {
        h.extend_from_slice(b"{");
        return;
    }
    let i = rng.below(h.len());
    match rng.below(4) {
        0 => {
            h.remove(i);
        }
        1 => h.insert(i, *rng.pick(b"{}[]\":,0-9e. \\\xc3\xff")),
        2 => h[i] = *rng.pick(b"{}[]\":,019e. \\"),
        _ => h.truncate(i),
    }
}

fn elem(dtype: u8) -> usize {
    if dtype < 2 {
        1
    } else {
        4
    }
}

/// Array-level edits.
fn array_mutation(rng: &mut Rng, recs: &mut Vec<Rec>) {
    if recs.is_empty() {
        recs.push(Rec { name: b"x.w".to_vec(), dtype: 3, dims: vec![1], data: vec![0; 4] });
        return;
    }
    let i = rng.below(recs.len());
    match rng.below(12) {
        0 => {
            recs.remove(i);
        }
        1 => {
            let r = recs[i].clone();
            recs.insert(i, r);
        }
        2 => {
            // Rename: another suffix or another layer.
            let r = &mut recs[i];
            let dot = r.name.iter().rposition(|&c| c == b'.').unwrap_or(0);
            r.name.truncate(dot);
            let suffixes: [&[u8]; 7] = [b".w", b".m", b".b", b".r", b".shift", b".x", b""];
            let s: &[u8] = rng.pick::<&[u8]>(&suffixes);
            r.name.extend_from_slice(s);
            if r.name.is_empty() {
                r.name.push(b'w');
            }
        }
        3 => {
            // An extra array named after an existing one.
            let mut r = recs[i].clone();
            let suffixes: [&[u8]; 3] = [b"2", b".r", b".w"];
            let s: &[u8] = rng.pick::<&[u8]>(&suffixes);
            r.name.extend_from_slice(s);
            recs.push(r);
        }
        4 => {
            // Retype: same element size (a consistent container) or not.
            let r = &mut recs[i];
            r.dtype = if rng.chance(70) { r.dtype ^ 1 } else { rng.below(4) as u8 };
        }
        5 => {
            let r = &mut recs[i];
            match rng.below(5) {
                0 => r.dims.reverse(),
                1 => r.dims.push(1),
                2 => {
                    let n: u32 = r.dims.iter().product();
                    r.dims = vec![n];
                }
                3 => {
                    let d = rng.below(r.dims.len().max(1));
                    if let Some(x) = r.dims.get_mut(d) {
                        *x = x.wrapping_add(1);
                    }
                }
                _ => {
                    let d = rng.below(r.dims.len().max(1));
                    if let Some(x) = r.dims.get_mut(d) {
                        *x = x.wrapping_sub(1);
                    }
                }
            }
            // Keep the data consistent with the new dims half of the time.
            if rng.chance(50) {
                let n = r.dims.iter().map(|&d| d as usize).product::<usize>() * elem(r.dtype);
                if n <= 1 << 16 {
                    r.data.resize(n, 0);
                }
            }
        }
        6..=8 => {
            // Boundary values in the data (shifts, multipliers, residual scales, codes).
            let r = &mut recs[i];
            let e = elem(r.dtype);
            if r.data.len() >= e {
                let at = rng.below(r.data.len() / e) * e;
                if e == 4 {
                    let random = rng.next() as u32;
                    let v = *rng.pick(&[0u32, 1, 30, 31, 32, 62, 63, 0x7fff_ffff, 0x8000_0000, u32::MAX, random]);
                    r.data[at..at + 4].copy_from_slice(&v.to_le_bytes());
                } else {
                    r.data[at] = *rng.pick(&[0u8, 0x7f, 0x80, 0x81, 0xff]);
                }
            }
        }
        9 => {
            // Whole-record data changes: empty, one element less or more.
            let r = &mut recs[i];
            let e = elem(r.dtype);
            match rng.below(3) {
                0 => r.data.clear(),
                1 => r.data.truncate(r.data.len().saturating_sub(e)),
                _ => r.data.extend(std::iter::repeat_n(0, e)),
            }
        }
        10 => {
            let j = rng.below(recs.len());
            recs.swap(i, j);
        }
        _ => {
            // Move data between arrays of different layers.
            let j = rng.below(recs.len());
            let d = recs[j].data.clone();
            recs[i].data = d;
        }
    }
}

// ------------------------------------------------------------------------------------------
// Outcome accounting
// ------------------------------------------------------------------------------------------

fn error_kind(e: &DecodeError) -> String {
    match e {
        DecodeError::Format(f) => match f {
            FormatError::BadMagic => "format: bad magic".into(),
            FormatError::Version(_) => "format: version".into(),
            FormatError::Checksum { .. } => "format: checksum".into(),
            FormatError::Truncated { .. } => "format: truncated".into(),
            FormatError::Trailing(_) => "format: trailing bytes".into(),
            FormatError::Invalid { what, msg } => {
                let kinds = ["header length", "header", "array count", "name length", "name", "dtype", "rank", "dims", "size", "reserved"];
                let k = if msg == "appears twice" {
                    "duplicate array"
                } else {
                    kinds.iter().find(|k| what.contains(*k)).copied().unwrap_or("other")
                };
                format!("format: invalid {k}")
            }
        },
        DecodeError::Invalid(msg) => {
            let kinds = [
                ("header kind", "header kind"),
                ("header:", "header JSON"),
                ("missing array", "missing array"),
                ("unexpected array", "unexpected array"),
                ("has shape", "array shape"),
                ("must be int", "array dtype"),
                ("must be uint", "array dtype"),
                ("shift", "shift range"),
                ("invalid inputs", "graph inputs"),
                ("in_shape", "graph shapes"),
                ("out_shape", "graph shapes"),
                ("limits", "graph limits"),
                ("larger than", "graph shapes"),
                ("max-pool", "graph shapes"),
                ("outside 1..=", "graph limits"),
                ("different sizes", "graph shapes"),
                ("layers (1..", "layer count"),
                ("bits", "bit widths"),
                ("not supported", "unsupported op"),
                ("classifier", "classifier"),
                ("residual", "residual structure"),
                ("shortcut", "residual structure"),
                ("consumer", "residual structure"),
                ("not an activation tensor", "plan order"),
            ];
            let k = kinds.iter().find(|(pat, _)| msg.contains(pat)).map(|(_, k)| *k).unwrap_or("other");
            format!("model: {k}")
        }
    }
}

fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn fail(what: &str, input: &[u8], seed: u64, iter: u64) -> ! {
    let path = format!("fuzz-crash-{seed}-{iter}.nce");
    match std::fs::write(&path, input) {
        Ok(()) => eprintln!("FAIL at iteration {iter}: {what}; input ({} bytes) written to {path}", input.len()),
        Err(e) => eprintln!("FAIL at iteration {iter}: {what}; could not write {path}: {e}"),
    }
    std::process::exit(1);
}

/// Decodes under `catch_unwind`, measuring time and peak heap growth.
fn decode_checked(input: &[u8]) -> (std::thread::Result<Result<QModel, DecodeError>>, Duration, usize) {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let t = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(|| QModel::from_bytes(input)));
    let dt = t.elapsed();
    let grew = PEAK.load(Relaxed).saturating_sub(base);
    (r, dt, grew)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let iterations: u64 = args.first().map(|s| s.parse().expect("ITERATIONS must be an integer")).unwrap_or(100_000);
    let seed: u64 = args.get(1).map(|s| s.parse().expect("SEED must be an integer")).unwrap_or(1);
    let seed_bytes = match args.get(2) {
        Some(p) => std::fs::read(p).unwrap_or_else(|e| panic!("reading {p}: {e}")),
        None => synthetic_seed(),
    };
    match QModel::from_bytes(&seed_bytes) {
        Ok(m) => println!(
            "seed: {} bytes, {} layers, {} steps ({})",
            seed_bytes.len(),
            m.net().layers.len(),
            m.steps.len(),
            args.get(2).map_or("synthetic ResNet-20 1x8x8", |s| s.as_str())
        ),
        Err(e) => println!("warning: the seed is not a valid model ({e}); mutating it anyway"),
    }
    let parts = split(&seed_bytes);
    if parts.is_none() {
        println!("warning: the seed is not a valid container: only raw mutations");
    }
    let header_value: Option<Value> = parts.as_ref().and_then(|(h, _, _)| serde_json::from_slice(h).ok());
    let layer_names: Vec<String> = header_value
        .as_ref()
        .and_then(|v| serde_json::from_value::<Header>(v.clone()).ok())
        .map(|h: Header| h.net.layers.iter().map(|l| l.name.clone()).collect())
        .unwrap_or_else(|| vec!["conv1".into()]);
    let layer_count = layer_names.len();
    let cpu = Cpu::best(1);

    let mut rng = Rng::new(seed);
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut examples: BTreeMap<String, String> = BTreeMap::new();
    let verbose = std::env::var_os("FUZZ_VERBOSE").is_some();
    let mut modes = [0u64; 3];
    let (mut max_time, mut max_grow_ratio, mut ran) = (Duration::ZERO, 0f64, 0u64);
    let start = Instant::now();
    let mut last_report = Instant::now();
    let mut input = Vec::new();
    for iter in 0..iterations {
        let n_mut = 1 + rng.below(4);
        let mode = match (&parts, rng.below(10)) {
            (None, 0..=4) => 0,
            (None, _) => 1,
            (Some(_), 0..=1) => 0,
            (Some(_), 2..=4) => 1,
            (Some(_), _) => 2,
        };
        modes[mode] += 1;
        match mode {
            0 => {
                input.clear();
                input.extend_from_slice(&seed_bytes);
                for _ in 0..n_mut {
                    raw_mutation(&mut rng, &mut input);
                }
            }
            1 => {
                input.clear();
                input.extend_from_slice(&seed_bytes);
                let mut rest = n_mut;
                if let Some((_, _, fields)) = &parts {
                    // Targeted edits first, while the seed's offsets still hold.
                    let k = 1 + rng.below(n_mut);
                    for _ in 0..k {
                        field_mutation(&mut rng, &mut input, fields);
                    }
                    rest -= k;
                }
                for _ in 0..rest {
                    raw_mutation(&mut rng, &mut input);
                }
                fix_crc(&mut input);
            }
            _ => {
                let (header, recs, _) = parts.as_ref().expect("parts");
                let mut recs = recs.clone();
                let mut json = None;
                let mut text: Option<Vec<u8>> = None;
                let mut count_delta: i64 = 0;
                let mut version = 1u16;
                for _ in 0..n_mut {
                    match rng.below(20) {
                        0..=8 => {
                            if text.is_none() {
                                let v = json.get_or_insert_with(|| header_value.clone().expect("JSON header"));
                                json_mutation(&mut rng, v, layer_count, &layer_names);
                            }
                        }
                        9 | 10 => {
                            let t = text.get_or_insert_with(|| {
                                json.take().map_or_else(|| header.clone(), |v| serde_json::to_vec(&v).expect("json"))
                            });
                            text_mutation(&mut rng, t);
                        }
                        11 => count_delta += if rng.chance(50) { 1 } else { -1 },
                        12 => version = *rng.pick(&[0, 2, u16::MAX]),
                        _ => array_mutation(&mut rng, &mut recs),
                    }
                }
                let h = match (text, json) {
                    (Some(t), _) => t,
                    (None, Some(v)) => serde_json::to_vec(&v).expect("json"),
                    (None, None) => header.clone(),
                };
                let count = (recs.len() as i64 + count_delta).clamp(0, u32::MAX as i64) as u32;
                input = write(&h, &recs, count, version);
            }
        }

        let (r, dt, grew) = decode_checked(&input);
        let result = match r {
            Ok(res) => res,
            Err(_) => fail("QModel::from_bytes panicked", &input, seed, iter),
        };
        if dt > TIME_LIMIT {
            // Re-measure before blaming the reader for a busy machine.
            let best = (0..3).map(|_| decode_checked(&input).1).min().unwrap_or(dt);
            if best > TIME_LIMIT {
                fail(&format!("decoding took {best:?} (limit {TIME_LIMIT:?})"), &input, seed, iter);
            }
        }
        max_time = max_time.max(dt);
        if grew > alloc_budget(input.len()) {
            fail(&format!("decoding {} bytes grew the heap by {grew} bytes", input.len()), &input, seed, iter);
        }
        max_grow_ratio = max_grow_ratio.max(grew as f64 / input.len().max(1) as f64);
        let kind = match &result {
            Ok(m) => {
                // An accepted model must also prepare and run without panicking.
                let net = m.net();
                let image: Vec<u8> = (0..net.input.numel()).map(|i| (i * 37 % 256) as u8).collect();
                let run = catch_unwind(AssertUnwindSafe(|| m.prepare(&cpu).and_then(|p| m.run(&cpu, &p, &image))));
                match run {
                    Err(_) => fail("an accepted model panicked when run", &input, seed, iter),
                    Ok(Ok(_)) => "ok (runs)".to_string(),
                    Ok(Err(e)) => format!("ok (run error: {})", e.to_string().split(':').next().unwrap_or("")),
                }
            }
            Err(e) => {
                let k = error_kind(e);
                if verbose {
                    let m = e.to_string();
                    eprintln!("{k}: {}", m.chars().take(200).collect::<String>());
                }
                examples.entry(k.clone()).or_insert_with(|| e.to_string());
                k
            }
        };
        if result.is_ok() {
            ran += 1;
        }
        *counts.entry(kind).or_default() += 1;

        if iter % 4096 == 0 {
            if let Some(rss) = rss_kib() {
                if rss > 1 << 20 {
                    fail(&format!("RSS {} MiB", rss >> 10), &input, seed, iter);
                }
            }
            if last_report.elapsed() > Duration::from_secs(30) {
                let s = start.elapsed().as_secs_f64();
                eprintln!("  {iter} iterations, {s:.0} s, {:.0}/s", iter as f64 / s);
                last_report = Instant::now();
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{iterations} iterations in {secs:.1} s ({:.0}/s), seed {seed}: no panics, no call over {TIME_LIMIT:?} or its allocation budget",
        iterations as f64 / secs
    );
    println!(
        "modes: raw {} / raw+crc {} / structured {}; slowest call {:.2} ms; peak heap growth {:.1}x the input; accepted models run: {ran}; RSS {} MiB",
        modes[0],
        modes[1],
        modes[2],
        max_time.as_secs_f64() * 1e3,
        max_grow_ratio,
        rss_kib().unwrap_or(0) >> 10
    );
    let total: u64 = counts.values().sum();
    let mut sorted: Vec<_> = counts.into_iter().collect();
    sorted.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    for (k, n) in sorted {
        println!("  {n:>9}  {:>5.1}%  {k}", 100.0 * n as f64 / total as f64);
        if let Some(m) = examples.get(&k) {
            let short: String = m.chars().take(150).collect();
            println!("                    e.g. {short}");
        }
    }
}

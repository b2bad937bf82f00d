//! The `.nce` container and model reader (`docs/format.md`): round trips of every dtype, the
//! byte layout, and a corrupt-file suite on a real (synthetic, checkpoint-free) model. Every
//! corrupt input must be an `Err` with a readable message, never a panic.

mod common;

use nce::engine::cpu::Cpu;
use nce::engine::plan::{Header, LayerScales, QModel};
use nce::engine::{pack_codes, words_for};
use nce::export::format::{crc32, decode, encode, Array, Container, Entry, FormatError};
use nce::export::DecodeError;
use nce::graph::{build, BitConfig, ModelKind, Network, Op, Shape, Src};
use std::collections::BTreeMap;

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

fn small_net() -> Network {
    // conv1 and the three stages at 4, 4, 6, 8 channels: small, and the stage transitions
    // exercise option-A shortcuts that zero-pad channels.
    let mut widths = vec![4usize; 19];
    widths[7..13].fill(6);
    widths[13..].fill(8);
    build(ModelKind::Resnet20, Shape::new(1, 8, 8), 10, Some(&widths), &BitConfig::uniform(2)).unwrap()
}

/// The first residual block of [`small_net`] and its classifier: a complete model of six
/// layers whose file is small enough to try every truncation and every bit flip.
fn tiny_net() -> Network {
    let mut net = small_net();
    let mut gap = net.layers[net.layers.len() - 2].clone();
    let mut fc = net.layers[net.layers.len() - 1].clone();
    net.layers.truncate(4);
    assert_eq!(net.layers[3].name, "layer1.0.add");
    gap.inputs = vec![Src::Layer(3)];
    gap.in_shape = net.layers[3].out_shape;
    gap.out_shape = Shape::new(gap.in_shape.c, 1, 1);
    fc.inputs = vec![Src::Layer(4)];
    fc.in_shape = gap.out_shape;
    net.layers.push(gap);
    net.layers.push(fc);
    net.widths.truncate(3);
    net
}

fn header_json(net: &Network) -> String {
    let mut scales = BTreeMap::new();
    scales.insert("conv1".to_string(), LayerScales { weight: Some(0.01), input: Some(1.0 / 255.0), output: Some(0.5), weight_bits: 8 });
    let h = Header { kind: "nce-model".into(), net: net.clone(), profile: None, source: Some("synthetic".into()), scales };
    serde_json::to_string(&h).unwrap()
}

/// A container that `QModel::from_container` accepts: the arrays `nce export` writes, filled
/// with random but valid values (2-bit words take any bits, padding included).
fn synthetic(net: &Network) -> Container {
    Container { header: header_json(net), arrays: common::random_arrays(net, 7) }
}

fn model_container() -> Container {
    synthetic(&small_net())
}

fn model_bytes() -> Vec<u8> {
    encode(&model_container()).unwrap()
}

fn tiny_bytes() -> Vec<u8> {
    encode(&synthetic(&tiny_net())).unwrap()
}

/// Rewrites the trailing CRC-32 for the bytes before it.
fn fix_crc(b: &mut [u8]) {
    let n = b.len() - 4;
    let crc = crc32(&b[..n]);
    b[n..].copy_from_slice(&crc.to_le_bytes());
}

/// Byte offsets of one array record in an encoded file.
#[derive(Debug, Clone)]
struct Rec {
    name: String,
    start: usize,
    dtype_at: usize,
    dims_at: usize,
    rank: usize,
    data_at: usize,
    end: usize,
}

/// Offsets of the array count and every record of a valid file.
fn layout(b: &[u8]) -> (usize, Vec<Rec>) {
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    let hlen = u32_at(8);
    let count_at = 12 + hlen;
    let mut o = count_at + 4;
    let mut recs = vec![];
    for _ in 0..u32_at(count_at) {
        let start = o;
        let nlen = u16::from_le_bytes([b[o], b[o + 1]]) as usize;
        let name = String::from_utf8(b[o + 2..o + 2 + nlen].to_vec()).unwrap();
        let dtype_at = o + 2 + nlen;
        let rank = b[dtype_at + 1] as usize;
        let dims_at = dtype_at + 2;
        let n: usize = (0..rank).map(|d| u32_at(dims_at + 4 * d)).product();
        let data_at = dims_at + 4 * rank;
        let end = data_at + n * if b[dtype_at] < 2 { 1 } else { 4 };
        recs.push(Rec { name, start, dtype_at, dims_at, rank, data_at, end });
        o = end;
    }
    assert_eq!(o, b.len() - 4);
    (count_at, recs)
}

fn rec<'a>(recs: &'a [Rec], name: &str) -> &'a Rec {
    recs.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no array {name}"))
}

/// `from_bytes` must fail; returns the message.
fn model_err(b: &[u8]) -> String {
    match QModel::from_bytes(b) {
        Ok(_) => panic!("corrupt model accepted"),
        Err(e) => e.to_string(),
    }
}

fn assert_err_has(b: &[u8], keyword: &str) {
    let msg = model_err(b);
    assert!(msg.to_lowercase().contains(&keyword.to_lowercase()), "error `{msg}` does not mention `{keyword}`");
}

/// `from_container` on a modified copy of the valid container must fail mentioning `keyword`.
fn container_err_has(edit: impl FnOnce(&mut Container), keyword: &str) {
    let mut c = model_container();
    edit(&mut c);
    // Through the bytes, as a reader sees it.
    let bytes = encode(&c).expect("encodable");
    assert_err_has(&bytes, keyword);
}

fn entry_mut<'a>(c: &'a mut Container, name: &str) -> &'a mut Entry {
    c.arrays.get_mut(name).unwrap_or_else(|| panic!("no array {name}"))
}

// ------------------------------------------------------------------------------------------
// Container
// ------------------------------------------------------------------------------------------

#[test]
fn container_round_trip_with_every_dtype_and_rank() {
    let mut arrays = BTreeMap::new();
    arrays.insert("u8".to_string(), Entry { dims: vec![4], data: Array::U8(vec![0, 1, 0x7f, 0xff]) });
    arrays.insert("i8".to_string(), Entry { dims: vec![2, 2], data: Array::I8(vec![-128, -1, 0, 127]) });
    arrays.insert("i32".to_string(), Entry { dims: vec![1, 2, 2], data: Array::I32(vec![i32::MIN, -1, 0, i32::MAX]) });
    arrays.insert("u32".to_string(), Entry { dims: vec![1, 1, 2, 2], data: Array::U32(vec![0, 1, 0x8000_0000, u32::MAX]) });
    arrays.insert("empty".to_string(), Entry { dims: vec![0], data: Array::I32(vec![]) });
    arrays.insert("n".repeat(256), Entry { dims: vec![1], data: Array::U8(vec![9]) });
    arrays.insert("größe.w".to_string(), Entry { dims: vec![3], data: Array::I8(vec![1, 2, 3]) });
    let c = Container { header: "{\"kind\":\"anything\",\"ü\":1}".into(), arrays };
    let bytes = encode(&c).unwrap();
    assert_eq!(decode(&bytes).unwrap(), c);

    // The byte layout of docs/format.md.
    assert_eq!(&bytes[..4], b"NCE\x02");
    assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 2);
    assert_eq!(u16::from_le_bytes([bytes[6], bytes[7]]), 0);
    let hlen = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    assert_eq!(&bytes[12..12 + hlen], c.header.as_bytes());
    let (count_at, recs) = layout(&bytes);
    assert_eq!(u32::from_le_bytes(bytes[count_at..count_at + 4].try_into().unwrap()), 7);
    // Arrays in name order (byte order of the UTF-8 names).
    let names: Vec<&str> = recs.iter().map(|r| r.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    let r = rec(&recs, "i32");
    assert_eq!((bytes[r.dtype_at], bytes[r.dtype_at + 1]), (2, 3));
    assert_eq!(&bytes[r.data_at..r.data_at + 4], &i32::MIN.to_le_bytes());
    let r = rec(&recs, "u32");
    assert_eq!((bytes[r.dtype_at], r.rank), (3, 4));
    assert_eq!(&bytes[r.data_at + 8..r.data_at + 12], &0x8000_0000u32.to_le_bytes());
    assert_eq!(bytes[rec(&recs, "u8").dtype_at], 0);
    assert_eq!(bytes[rec(&recs, "i8").dtype_at], 1);
    let n = bytes.len() - 4;
    assert_eq!(u32::from_le_bytes(bytes[n..].try_into().unwrap()), crc32(&bytes[..n]));
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);

    // The smallest file: empty header, no arrays.
    let empty = encode(&Container::default()).unwrap();
    assert_eq!(empty.len(), 20);
    assert_eq!(decode(&empty).unwrap(), Container::default());
}

#[test]
fn encode_rejects_what_decode_would_reject() {
    let one = |name: &str, e: Entry| Container { header: String::new(), arrays: [(name.to_string(), e)].into() };
    let ok = Entry { dims: vec![1], data: Array::U8(vec![0]) };
    assert!(encode(&one("", ok.clone())).is_err());
    assert!(encode(&one(&"n".repeat(257), ok)).is_err());
    assert!(encode(&one("x", Entry { dims: vec![2], data: Array::U8(vec![0]) })).is_err());
    assert!(encode(&one("x", Entry { dims: vec![], data: Array::U8(vec![]) })).is_err());
    assert!(encode(&one("x", Entry { dims: vec![1; 5], data: Array::U8(vec![0]) })).is_err());
}

#[test]
fn two_bit_packing_is_as_documented() {
    // 16 codes per word, code i in bits 2i..2i+1, u = (c + 3) / 2, channel padded with zeros.
    let codes: Vec<i8> = (0..20).map(|i| [-3i8, -1, 1, 3][i % 4]).collect();
    let words = pack_codes(&codes).unwrap();
    assert_eq!(words.len(), 2);
    for (i, &c) in codes.iter().enumerate() {
        let u = (words[i / 16] >> (2 * (i % 16))) & 3;
        assert_eq!(u as i8, (c + 3) / 2);
    }
    assert_eq!(words[0], 0xE4E4_E4E4);
    assert_eq!(words[1] >> 8, 0, "padding is zero when written");
}

// ------------------------------------------------------------------------------------------
// The valid model
// ------------------------------------------------------------------------------------------

#[test]
fn synthetic_model_is_accepted_and_runs() {
    let c = model_container();
    let m = QModel::from_container(&c).unwrap();
    let bytes = encode(&c).unwrap();
    assert_eq!(QModel::from_bytes(&bytes).unwrap(), m);
    let cpu = Cpu::best(1);
    let p = m.prepare(&cpu).unwrap();
    let logits = m.run(&cpu, &p, &[77u8; 64]).unwrap();
    assert_eq!(logits.len(), 10);
    let tiny = QModel::from_bytes(&tiny_bytes()).unwrap();
    assert_eq!(tiny.steps.len(), 5);
    assert_eq!(tiny.run(&cpu, &tiny.prepare(&cpu).unwrap(), &[77u8; 64]).unwrap().len(), 10);
    // Padding bits of the packed words are ignored: clearing them changes nothing.
    let mut cleared = c.clone();
    for (name, e) in cleared.arrays.iter_mut() {
        if let Array::U32(words) = &mut e.data {
            let l = m.net().layers.iter().find(|l| format!("{}.w", l.name) == *name).unwrap();
            let Op::Conv { k, .. } = l.op else { unreachable!() };
            let k_len = l.in_shape.c * k * k;
            let wpc = words_for(k_len);
            for o in 0..l.out_shape.c {
                let last = &mut words[o * wpc + wpc - 1];
                let used = k_len - (wpc - 1) * 16;
                if used < 16 {
                    *last &= (1u32 << (2 * used)) - 1;
                }
            }
        }
    }
    let m2 = QModel::from_container(&cleared).unwrap();
    let p2 = m2.prepare(&cpu).unwrap();
    assert_eq!(m2.run(&cpu, &p2, &[77u8; 64]).unwrap(), logits);
}

// ------------------------------------------------------------------------------------------
// Corrupt files
// ------------------------------------------------------------------------------------------

#[test]
fn every_truncation_is_an_error() {
    let bytes = tiny_bytes();
    for n in 0..bytes.len() {
        let msg = model_err(&bytes[..n]);
        // Past the magic, the message names truncation whichever check catches it first.
        assert!(msg.contains("magic") || msg.contains("truncated"), "{n}: {msg}");
    }
    // Cut the body anywhere and write a valid checksum for what is left: the parser's bounds
    // checks (not the CRC) must catch it.
    for n in 12..bytes.len() - 4 {
        let mut b = bytes[..n].to_vec();
        b.extend_from_slice(&crc32(&b).to_le_bytes());
        let msg = model_err(&b);
        assert!(msg.contains("truncated"), "cut at {n}: {msg}");
    }
}

#[test]
fn every_bit_flip_is_an_error() {
    let bytes = tiny_bytes();
    let n = bytes.len();
    let mut tried = 0;
    for i in 0..n {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            let msg = model_err(&b);
            let want = match i {
                0..=3 => "magic",
                4..=5 => "version",
                _ => "checksum",
            };
            assert!(msg.contains(want), "flip of byte {i} bit {bit}: {msg}");
            tried += 1;
        }
    }
    assert_eq!(tried, 8 * n);
}

#[test]
fn wrong_magic_version_reserved_and_trailing_bytes() {
    let bytes = model_bytes();
    let mut b = bytes.clone();
    b[..4].copy_from_slice(b"NCE\x01");
    assert!(matches!(QModel::from_bytes(&b), Err(DecodeError::Format(FormatError::BadMagic))));
    assert_err_has(&b, "not an nce model file");
    assert_err_has(b"", "magic");
    assert_err_has(b"NCE\x02", "truncated");

    let mut b = bytes.clone();
    b[4..6].copy_from_slice(&3u16.to_le_bytes());
    fix_crc(&mut b);
    assert!(matches!(QModel::from_bytes(&b), Err(DecodeError::Format(FormatError::Version(3)))));
    assert_err_has(&b, "version 3 is not supported");
    // Version 1 (before grouped convs) is the same layout and still loads.
    let mut b = bytes.clone();
    b[4..6].copy_from_slice(&1u16.to_le_bytes());
    fix_crc(&mut b);
    assert!(QModel::from_bytes(&b).is_ok());

    let mut b = bytes.clone();
    b[6] = 1;
    fix_crc(&mut b);
    assert_err_has(&b, "reserved");

    // Trailing bytes, with and without a recomputed checksum.
    let mut b = bytes.clone();
    b.extend_from_slice(&[0; 4]);
    assert_err_has(&b, "checksum");
    let mut b = bytes[..bytes.len() - 4].to_vec();
    b.extend_from_slice(&[0xAA, 0xBB, 0xCC]);
    b.extend_from_slice(&[0; 4]);
    fix_crc(&mut b);
    assert!(matches!(QModel::from_bytes(&b), Err(DecodeError::Format(FormatError::Trailing(3)))));
    assert_err_has(&b, "3 trailing bytes");
}

#[test]
fn oversized_length_fields_with_a_valid_checksum() {
    let bytes = model_bytes();
    let (count_at, recs) = layout(&bytes);
    let edit = |at: usize, v: &[u8]| {
        let mut b = bytes.clone();
        b[at..at + v.len()].copy_from_slice(v);
        fix_crc(&mut b);
        b
    };
    // Header length.
    assert_err_has(&edit(8, &u32::MAX.to_le_bytes()), "header length");
    assert_err_has(&edit(8, &((16u32 << 20) + 1).to_le_bytes()), "exceeds");
    assert_err_has(&edit(8, &(bytes.len() as u32).to_le_bytes()), "truncated");
    // Array count.
    assert_err_has(&edit(count_at, &u32::MAX.to_le_bytes()), "array count");
    assert_err_has(&edit(count_at, &65537u32.to_le_bytes()), "exceeds");
    assert_err_has(&edit(count_at, &(recs.len() as u32 + 1).to_le_bytes()), "truncated");
    assert_err_has(&edit(count_at, &(recs.len() as u32 - 1).to_le_bytes()), "trailing");
    assert_err_has(&edit(count_at, &0u32.to_le_bytes()), "trailing");
    // Name length.
    let r = &recs[3];
    assert_err_has(&edit(r.start, &0u16.to_le_bytes()), "name length");
    assert_err_has(&edit(r.start, &257u16.to_le_bytes()), "name length");
    assert_err_has(&edit(r.start, &u16::MAX.to_le_bytes()), "name length");
    // Dims: past the end of the file, and products that overflow.
    assert_err_has(&edit(r.dims_at, &u32::MAX.to_le_bytes()), "truncated");
    let w = recs.iter().find(|r| r.rank == 2 && bytes[r.dtype_at] == 3).unwrap();
    let mut huge = u32::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    assert_err_has(&edit(w.dims_at, &huge), "overflow");
    // Rank and dtype.
    assert_err_has(&edit(r.dtype_at + 1, &[0]), "rank");
    assert_err_has(&edit(r.dtype_at + 1, &[5]), "rank");
    assert_err_has(&edit(r.dtype_at, &[4]), "dtype");
    assert_err_has(&edit(r.dtype_at, &[0xff]), "dtype");
    // A name that is not UTF-8; a header that is not UTF-8.
    assert_err_has(&edit(r.start + 2, &[0xff]), "name");
    assert_err_has(&edit(12, &[0xc3]), "header");
}

#[test]
fn duplicated_missing_and_unexpected_arrays() {
    let bytes = model_bytes();
    let (count_at, recs) = layout(&bytes);
    // Duplicate a record in place and bump the count.
    let r = rec(&recs, "layer1.0.conv_a.m");
    let mut b = bytes[..r.end].to_vec();
    b.extend_from_slice(&bytes[r.start..r.end]);
    b.extend_from_slice(&bytes[r.end..]);
    b[count_at..count_at + 4].copy_from_slice(&(recs.len() as u32 + 1).to_le_bytes());
    fix_crc(&mut b);
    assert_err_has(&b, "appears twice");

    container_err_has(|c| drop(c.arrays.remove("layer1.0.conv_a.m")), "missing array `layer1.0.conv_a.m`");
    container_err_has(|c| drop(c.arrays.remove("layer2.0.conv_b.r")), "missing array `layer2.0.conv_b.r`");
    container_err_has(|c| drop(c.arrays.remove("fc.w")), "missing array `fc.w`");
    container_err_has(
        |c| {
            c.arrays.insert("layer1.0.conv_a.r".into(), Entry { dims: vec![1], data: Array::I32(vec![1]) });
        },
        "unexpected array `layer1.0.conv_a.r`",
    );
    container_err_has(
        |c| {
            c.arrays.insert("fc.m".into(), Entry { dims: vec![0], data: Array::I32(vec![]) });
        },
        "unexpected array",
    );
}

#[test]
fn wrong_dtype_shape_and_values_for_a_layer() {
    // 2-bit weights stored as int8, 8-bit weights stored as packed words.
    container_err_has(
        |c| {
            let e = entry_mut(c, "layer1.0.conv_a.w");
            let n = e.data.len();
            e.data = Array::I8(vec![1; n]);
        },
        "must be uint32",
    );
    container_err_has(
        |c| {
            let e = entry_mut(c, "conv1.w");
            e.data = Array::U32(vec![0; e.data.len()]);
        },
        "must be int8",
    );
    container_err_has(|c| entry_mut(c, "fc.w").data = Array::U8(vec![0; 80]), "must be int8");
    container_err_has(
        |c| {
            let e = entry_mut(c, "layer1.0.conv_a.m");
            e.data = Array::U32(vec![1; e.data.len()]);
        },
        "must be int32",
    );
    // Same element count, wrong shape: transposed, reshaped, flattened.
    container_err_has(|c| entry_mut(c, "layer1.0.conv_a.w").dims.reverse(), "has shape");
    container_err_has(|c| entry_mut(c, "conv1.w").dims = vec![9, 4], "has shape");
    container_err_has(|c| entry_mut(c, "conv1.w").dims = vec![36], "has shape");
    container_err_has(|c| entry_mut(c, "fc.w").dims = vec![80], "has shape");
    container_err_has(|c| entry_mut(c, "layer1.0.conv_b.shift").dims = vec![1, 1], "has shape");
    // Wrong lengths.
    container_err_has(
        |c| {
            let e = entry_mut(c, "layer3.2.conv_a.b");
            e.dims = vec![7];
            e.data = Array::I32(vec![0; 7]);
        },
        "has shape [7], expected [8]",
    );
    container_err_has(
        |c| {
            let e = entry_mut(c, "layer2.1.conv_a.w");
            e.dims = vec![6, 5];
            e.data = Array::U32(vec![0; 30]);
        },
        "has shape",
    );
    // Out-of-range shifts.
    for s in [-1, 31, i32::MIN, i32::MAX] {
        container_err_has(|c| entry_mut(c, "layer1.1.conv_b.shift").data = Array::I32(vec![s]), "outside 0..=30");
    }
}

fn with_net(edit: impl FnOnce(&mut Network)) -> Container {
    let mut c = model_container();
    let mut net = small_net();
    edit(&mut net);
    c.header = header_json(&net);
    c
}

fn net_err_has(edit: impl FnOnce(&mut Network), keyword: &str) {
    let c = with_net(edit);
    assert_err_has(&encode(&c).unwrap(), keyword);
}

#[test]
fn header_must_be_a_matching_json_model() {
    container_err_has(|c| c.header = "not json".into(), "header");
    container_err_has(|c| c.header.push('}'), "header");
    container_err_has(|c| c.header = String::new(), "header");
    container_err_has(|c| c.header = "{}".into(), "missing field");
    container_err_has(|c| c.header = c.header.replace("\"nce-model\"", "\"nce-other\""), "header kind");
    container_err_has(|c| c.header = c.header.replacen("\"net\"", "\"nett\"", 1), "missing field `net`");
    container_err_has(|c| c.header = c.header.replacen('{', "{\"kind\":\"nce-model\",", 1), "duplicate field `kind`");

    // `profile` and `source` may be null or absent, unknown keys are ignored; `scales` is
    // required (it may be empty).
    let mut v: serde_json::Value = serde_json::from_str(&model_container().header).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("profile");
    o.remove("source");
    o.insert("written_by".into(), serde_json::json!({"tool": "a future nce"}));
    o.insert("scales".into(), serde_json::json!({}));
    let mut c = model_container();
    c.header = v.to_string();
    QModel::from_bytes(&encode(&c).unwrap()).expect("optional header fields");
    v.as_object_mut().unwrap().remove("scales");
    c.header = v.to_string();
    assert_err_has(&encode(&c).unwrap(), "missing field `scales`");

    // A network that does not match the arrays: other widths, other bits, other classes.
    let mut widths = vec![4usize; 19];
    widths[7..].fill(8);
    let other = build(ModelKind::Resnet20, Shape::new(1, 8, 8), 10, Some(&widths), &BitConfig::uniform(2)).unwrap();
    let mut c = model_container();
    c.header = header_json(&other);
    assert_err_has(&encode(&c).unwrap(), "has shape");
    let mut bits = BitConfig::uniform(2);
    bits.overrides.insert("layer1.0.conv_a".into(), (8, 8));
    let mut widths = vec![4usize; 19];
    widths[7..13].fill(6);
    widths[13..].fill(8);
    let other = build(ModelKind::Resnet20, Shape::new(1, 8, 8), 10, Some(&widths), &bits).unwrap();
    let mut c = model_container();
    c.header = header_json(&other);
    assert_err_has(&encode(&c).unwrap(), "must be int8");
    let other = build(ModelKind::Resnet20, Shape::new(1, 8, 8), 12, Some(&widths), &BitConfig::uniform(2)).unwrap();
    let mut c = model_container();
    c.header = header_json(&other);
    assert_err_has(&encode(&c).unwrap(), "fc.w` has shape");
    let other = build(ModelKind::Resnet20, Shape::new(3, 8, 8), 10, Some(&widths), &BitConfig::uniform(2)).unwrap();
    let mut c = model_container();
    c.header = header_json(&other);
    assert_err_has(&encode(&c).unwrap(), "conv1.w` has shape");
}

#[test]
fn inconsistent_graphs_are_rejected() {
    // Shapes that do not follow from the ops.
    net_err_has(|n| n.layers[1].in_shape.c = 5, "in_shape");
    net_err_has(|n| n.layers[1].out_shape.h = 7, "out_shape");
    net_err_has(|n| n.layers[0].out_shape.c = 0, "outside the limits");
    net_err_has(|n| n.input = Shape::new(1, 0, 8), "input");
    net_err_has(|n| n.classes = 11, "out_shape");
    net_err_has(|n| n.layers[1].inputs = vec![Src::Layer(5)], "invalid inputs");
    net_err_has(|n| n.layers[3].inputs.pop().map(|_| ()).unwrap(), "invalid inputs");
    net_err_has(|n| n.layers.clear(), "0 layers");
    // Geometry that would overflow or make huge tensors, with shapes made consistent.
    for (k, pad, stride) in [(1usize << 32, 0usize, 1usize), ((1 << 63) + 1, 0, 1), (3, 1 << 40, 1 << 50), (3, 1, 0)] {
        net_err_has(
            |n| {
                let l = &mut n.layers[1];
                l.op = Op::Conv { k, stride, pad, groups: 1, relu: true, relu6: false };
            },
            "limits",
        );
    }
    net_err_has(
        |n| {
            let l = &mut n.layers[0];
            l.op = Op::Conv { k: 3, stride: 1, pad: 1, groups: 2, relu: true, relu6: false };
        },
        "2 groups do not divide 1 input",
    );
    net_err_has(
        |n| {
            let l = &mut n.layers[1];
            l.op = Op::Conv { k: 3, stride: 1, pad: 1, groups: 0, relu: true, relu6: false };
        },
        "0 groups",
    );
    net_err_has(|n| n.layers[0].out_bits = 9, "output bits");
    net_err_has(|n| n.layers[0].wbits = 4, "not supported");
    net_err_has(|n| n.layers.last_mut().unwrap().wbits = 2, "classifier");

    // The classifier must read the pooling right before it (it used to read whatever was
    // before it, and a one-layer network made `run` underflow).
    let fc_only = |n: &mut Network| {
        let mut fc = n.layers.pop().unwrap();
        fc.inputs = vec![Src::Input];
        fc.in_shape = n.input;
        n.layers = vec![fc];
    };
    let mut c = with_net(fc_only);
    let e = entry_mut(&mut c, "fc.w");
    e.dims = vec![10, 64];
    e.data = Array::I8(vec![1; 640]);
    c.arrays.retain(|k, _| k.starts_with("fc."));
    assert_err_has(&encode(&c).unwrap(), "global average pooling");
}

#[test]
fn huge_reduction_does_not_overflow() {
    // A kernel size whose square wraps to 1 in 64-bit arithmetic.
    net_err_has(
        |n| {
            n.layers[1].op = Op::Conv { k: (1usize << 63) + 1, stride: 1, pad: 1 << 62, groups: 1, relu: true, relu6: false };
        },
        "limits",
    );
}

#[test]
fn load_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.nce");
    let msg = QModel::load(&missing).unwrap_err().to_string();
    assert!(msg.contains("missing.nce"), "{msg}");
    let msg = QModel::load(dir.path()).unwrap_err().to_string();
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    let bad = dir.path().join("bad.nce");
    let mut b = model_bytes();
    b[20] ^= 1;
    std::fs::write(&bad, &b).unwrap();
    let msg = QModel::load(&bad).unwrap_err().to_string();
    assert!(msg.contains("bad.nce") && msg.contains("checksum"), "{msg}");
    let good = dir.path().join("good.nce");
    std::fs::write(&good, model_bytes()).unwrap();
    QModel::load(&good).unwrap();
}

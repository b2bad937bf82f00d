//! A stable-Rust fuzzer for `nce import`'s ONNX reader (`nce::import::from_bytes`).
//!
//! ```text
//! cargo run --release --no-default-features --example fuzz_onnx -- [ITERATIONS] [SEED] [SEED_FILE]
//! ```
//!
//! Starts from a valid model (`SEED_FILE`, e.g. a `torch.onnx.export` file, or the tiny CNN of
//! `tests/import/tiny.rs`; `tiny-resnet` names that file's tiny ResNet with an input
//! normalisation and a projection shortcut) and per iteration mutates it one of two ways:
//!
//! - **raw** (1–4 edits of the bytes): bit flips, bytes set to 0/0xff/0x7f/0x80, truncation,
//!   random bytes appended, ranges duplicated or removed — the protobuf decoder's paths;
//! - **structured** (1–4 edits of the decoded `ModelProto`, re-encoded): dims of initialisers and
//!   of the input set to boundary values, attribute ints set to boundary values, op types
//!   swapped among the ones the importer knows and some it refuses, node inputs rewired to other
//!   values (cycles included), nodes removed, duplicated or reordered, the opset, data types,
//!   data locations and raw data changed — the importer's own checks.
//!
//! Every call must return `Ok` or `Err`: a panic is caught, the input is written to
//! `fuzz-onnx-crash-SEED-ITER.onnx` and the run exits 1 at the end. It prints iterations/s, the
//! slowest call, and the counts of `Ok` and of every error kind.
//!
//! Uses only the crate and std (splitmix64 PRNG), so it runs where cargo-fuzz (nightly) is not
//! available.

#[path = "../tests/import/tiny.rs"]
mod tiny;

use nce::engine::onnx::proto::ModelProto;
use nce::import::ImportError;
use prost::Message;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

const INTERESTING: [i64; 14] = [0, 1, 2, 3, -1, -2, 7, 1 << 14, (1 << 14) + 1, 1 << 16, (1 << 16) + 1, 1 << 31, i64::MAX, i64::MIN];
const OPS: [&str; 24] = [
    "Conv",
    "BatchNormalization",
    "Relu",
    "Clip",
    "Add",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Flatten",
    "Reshape",
    "Gemm",
    "MatMul",
    "Identity",
    "Dropout",
    "Constant",
    "Sigmoid",
    "Concat",
    "Mul",
    "Sub",
    "Div",
    "Softmax",
    "",
    "Loop",
    "If",
];

fn mutate_raw(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = bytes.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                bytes[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                bytes[i] = *rng.pick(&[0u8, 0xff, 0x7f, 0x80]);
            }
            2 => bytes.truncate(rng.below(len + 1)),
            3 => bytes.extend((0..1 + rng.below(16)).map(|_| rng.next() as u8)),
            4 if len > 1 => {
                let (a, b) = (rng.below(len), rng.below(len));
                let (a, b) = (a.min(b), a.max(b));
                let chunk = bytes[a..b.min(a + 64)].to_vec();
                let at = rng.below(bytes.len());
                bytes.splice(at..at, chunk);
            }
            5 if len > 1 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                bytes.drain(a..b);
            }
            _ => {}
        }
    }
}

fn mutate_model(rng: &mut Rng, m: &mut ModelProto) {
    for _ in 0..1 + rng.below(4) {
        let Some(g) = m.graph.as_mut() else { return };
        let values: Vec<String> = g.node.iter().flat_map(|n| n.output.clone()).chain(g.input.iter().map(|v| v.name.clone())).collect();
        let (nn, ni) = (g.node.len(), g.initializer.len());
        match rng.below(12) {
            0 if ni > 0 => {
                let t = &mut g.initializer[rng.below(ni)];
                if t.dims.is_empty() {
                    t.dims.push(1);
                }
                let d = rng.below(t.dims.len());
                t.dims[d] = *rng.pick(&INTERESTING);
            }
            1 => {
                if let Some(dim) =
                    g.input.first_mut().and_then(|v| v.r#type.as_mut()).and_then(|t| t.tensor_type.as_mut()).and_then(|t| t.shape.as_mut())
                {
                    if !dim.dim.is_empty() {
                        let d = rng.below(dim.dim.len());
                        dim.dim[d].dim_value = if rng.below(4) == 0 { None } else { Some(*rng.pick(&INTERESTING)) };
                    }
                }
            }
            2 if nn > 0 => {
                let n = &mut g.node[rng.below(nn)];
                if !n.attribute.is_empty() {
                    let a = rng.below(n.attribute.len());
                    let v = *rng.pick(&INTERESTING);
                    let attr = &mut n.attribute[a];
                    attr.i = v;
                    if !attr.ints.is_empty() {
                        let j = rng.below(attr.ints.len());
                        attr.ints[j] = v;
                    }
                }
            }
            3 if nn > 0 => g.node[rng.below(nn)].op_type = (*rng.pick(&OPS)).to_string(),
            4 if nn > 0 && !values.is_empty() => {
                let n = &mut g.node[rng.below(nn)];
                let v = rng.pick(&values).clone();
                match n.input.len() {
                    0 => n.input.push(v),
                    k => n.input[rng.below(k)] = v,
                }
            }
            5 if nn > 1 => {
                g.node.remove(rng.below(nn));
            }
            6 if nn > 0 => {
                let n = g.node[rng.below(nn)].clone();
                let at = rng.below(nn);
                g.node.insert(at, n);
            }
            7 if nn > 1 => {
                let (a, b) = (rng.below(nn), rng.below(nn));
                g.node.swap(a, b);
            }
            8 => {
                if let Some(o) = m.opset_import.first_mut() {
                    o.version = *rng.pick(&[1, 7, 12, 13, 17, 21, -1, i64::MAX]);
                }
            }
            9 if ni > 0 => g.initializer[rng.below(ni)].data_type = *rng.pick(&[0, 1, 2, 7, 10, 11, 16, -5]),
            10 if ni > 0 => {
                let t = &mut g.initializer[rng.below(ni)];
                match rng.below(3) {
                    0 => t.data_location = 1,
                    1 => t.raw_data.truncate(rng.below(t.raw_data.len() + 1)),
                    _ => {
                        t.float_data = t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                        t.raw_data.clear();
                    }
                }
            }
            11 if nn > 0 => {
                const NAMES: [&str; 7] = ["dilations", "pads", "strides", "kernel_shape", "group", "axis", "auto_pad"];
                let name = NAMES[rng.below(NAMES.len())];
                let v = *rng.pick(&INTERESTING);
                g.node[rng.below(nn)].attribute.push(tiny::ints(name, &[v; 2]));
            }
            _ => {}
        }
    }
}

fn kind(e: &ImportError) -> &'static str {
    match e {
        ImportError::Io { .. } => "io",
        ImportError::Decode { .. } => "decode",
        ImportError::Model { .. } => "model",
        ImportError::Opset { .. } => "opset",
        ImportError::Initializer { .. } => "initialiser",
        ImportError::ExternalData { .. } => "external data",
        ImportError::Node { .. } => "node",
        ImportError::UnsupportedOp { .. } => "unsupported op",
        ImportError::Cycle { .. } => "cycle",
        ImportError::Graph { .. } => "graph",
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let iterations: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let seed: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let valid = match args.get(3) {
        Some(p) if p == "tiny-resnet" => tiny::tiny_resnet(Some((&[0.45, 0.5, 0.55], &[0.25, 0.2, 0.3])), 3).encode_to_vec(),
        Some(p) => std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}")),
        None => tiny::tiny().encode_to_vec(),
    };
    let base = ModelProto::decode(valid.as_slice()).expect("the seed model decodes");
    nce::import::from_bytes(Path::new("seed.onnx"), &valid, "seed").expect("the seed model imports");
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = Rng(seed);
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut panics, mut slowest) = (0u64, (Duration::ZERO, 0u64));
    let start = Instant::now();
    for it in 0..iterations {
        let bytes = if rng.below(2) == 0 {
            let mut b = valid.clone();
            mutate_raw(&mut rng, &mut b);
            b
        } else {
            let mut m = base.clone();
            mutate_model(&mut rng, &mut m);
            m.encode_to_vec()
        };
        let t = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| nce::import::from_bytes(Path::new("fuzz.onnx"), &bytes, "fuzz")));
        let dt = t.elapsed();
        if dt > slowest.0 {
            slowest = (dt, it);
        }
        match r {
            Ok(Ok(_)) => *counts.entry("ok").or_default() += 1,
            Ok(Err(e)) => *counts.entry(kind(&e)).or_default() += 1,
            Err(_) => {
                panics += 1;
                let path = format!("fuzz-onnx-crash-{seed}-{it}.onnx");
                let _ = std::fs::write(&path, &bytes);
                eprintln!("PANIC at iteration {it}: input written to {path}");
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("fuzz_onnx: {iterations} inputs, seed {seed}, {:.0} inputs/s, {panics} panics", iterations as f64 / secs);
    println!("slowest call: {:.2} ms (iteration {})", slowest.0.as_secs_f64() * 1e3, slowest.1);
    for (k, n) in &counts {
        println!("  {k:<16} {n}");
    }
    if panics > 0 {
        std::process::exit(1);
    }
}

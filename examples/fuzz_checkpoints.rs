//! A stable-Rust fuzzer for the checkpoint loader (`nce::train::checkpoint::load`).
//!
//! ```text
//! cargo run --release --example fuzz_checkpoints -- [ITERATIONS] [SEED]
//! ```
//!
//! Writes one small valid checkpoint (a few tensors of several dtypes, metadata, optimiser state,
//! checksum) and, per iteration, applies 1–4 random mutations to its bytes: bit flips, bytes set
//! to boundary values, truncation, extension, duplicated or removed ranges, and edits inside the
//! zip headers (sizes, offsets, name lengths) — then loads the result. Every load must return
//! `Ok` or `Err` — a panic writes the input to `fuzz-crash-ckpt-SEED-ITER.ot` and exits
//! non-zero (an abort inside libtorch would end the process, which the run's exit status
//! shows). A mutated file that still loads must be byte-identical in content to the original
//! (the checksum guarantees it). The end prints iterations/s and the counts per outcome.

use nce::data::Rng;
use nce::train::checkpoint::{self, CheckpointError};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;
use tch::{Kind, Tensor};

fn seed_checkpoint(path: &std::path::Path) -> Vec<u8> {
    let vars = vec![
        ("conv.weight".to_string(), Tensor::arange(2 * 3 * 3 * 3, (Kind::Float, tch::Device::Cpu)).reshape([2, 3, 3, 3]) / 10.0),
        ("bn.running_var".to_string(), Tensor::ones([2], (Kind::Float, tch::Device::Cpu))),
        ("fc.bias".to_string(), Tensor::from_slice(&[0.5f64, -0.25])),
        ("steps".to_string(), Tensor::from_slice(&[3i64, 4])),
    ];
    let opt = vec![("conv.weight".to_string(), Tensor::zeros([2, 3, 3, 3], (Kind::Float, tch::Device::Cpu)))];
    let meta = serde_json::json!({"format": 1, "epoch": 2, "note": "fuzz seed"});
    checkpoint::save(path, &meta, &vars, &opt).expect("write the seed checkpoint");
    std::fs::read(path).expect("read it back")
}

fn mutate(b: &mut Vec<u8>, rng: &mut Rng) {
    for _ in 0..1 + rng.below(4) {
        let n = b.len().max(1) as u64;
        let at = rng.below(n) as usize;
        match rng.below(8) {
            0 if !b.is_empty() => b[at] ^= 1 << rng.below(8),
            1 if !b.is_empty() => b[at] = [0u8, 0xff, 0x7f, 0x80, b'/', b'.'][rng.below(6) as usize],
            2 => b.truncate(at),
            3 => b.extend((0..1 + rng.below(64)).map(|_| rng.below(256) as u8)),
            4 if !b.is_empty() => {
                let end = (at + 1 + rng.below(256) as usize).min(b.len());
                b.drain(at..end);
            }
            5 if !b.is_empty() => {
                let end = (at + 1 + rng.below(256) as usize).min(b.len());
                let chunk: Vec<u8> = b[at..end].to_vec();
                b.splice(at..at, chunk);
            }
            _ => zip_field(b, rng),
        }
    }
}

/// Sets a 2- or 4-byte little-endian field right after a zip signature (local header, central
/// directory entry or end record) to a boundary value.
fn zip_field(b: &mut [u8], rng: &mut Rng) {
    let sigs: Vec<usize> = (0..b.len().saturating_sub(4)).filter(|&i| b[i] == b'P' && b[i + 1] == b'K' && b[i + 2] < 8).collect();
    if sigs.is_empty() {
        return;
    }
    let at = sigs[rng.below(sigs.len() as u64) as usize] + 4 + rng.below(40) as usize;
    let v: u32 = [0, 1, 0xffff, 0xffff_ffff, 0x7fff_ffff, 64, 4096][rng.below(7) as usize];
    let width = if rng.below(2) == 0 { 2 } else { 4 };
    for k in 0..width {
        if let Some(x) = b.get_mut(at + k) {
            *x = (v >> (8 * k)) as u8;
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let iterations: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let seed: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().expect("a temp folder");
    let original_path = dir.path().join("seed.ot");
    let original = seed_checkpoint(&original_path);
    let reference = checkpoint::load::<serde_json::Value>(&original_path).expect("the seed loads");
    let path = dir.path().join("mutated.ot");
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = Rng::new(seed);
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let started = Instant::now();
    for i in 0..iterations {
        let mut bytes = original.clone();
        mutate(&mut bytes, &mut rng);
        std::fs::write(&path, &bytes).expect("write the input");
        let kind = match catch_unwind(AssertUnwindSafe(|| checkpoint::load::<serde_json::Value>(&path))) {
            Ok(Ok(ck)) => {
                let same = ck.meta == reference.meta
                    && ck.vars.len() == reference.vars.len()
                    && ck.vars.iter().zip(&reference.vars).all(|((a, x), (b, y))| a == b && x.equal(y));
                if !same {
                    let out = format!("fuzz-accepted-altered-ckpt-{seed}-{i}.ot");
                    std::fs::write(&out, &bytes).expect("write the input");
                    eprintln!("ALTERED CHECKPOINT ACCEPTED at iteration {i}; input written to {out}");
                    std::process::exit(1);
                }
                "ok (unchanged content)".to_string()
            }
            Ok(Err(e)) => match e {
                CheckpointError::Checksum { .. } => "checksum mismatch".into(),
                CheckpointError::NonFinite { .. } => "non-finite".into(),
                CheckpointError::Read { msg, .. } => msg.split([':', '(']).next().unwrap_or("").trim().to_string(),
                other => format!("{other:?}").split([' ', '{', '(']).next().unwrap_or("").to_string(),
            },
            Err(_) => {
                let out = format!("fuzz-crash-ckpt-{seed}-{i}.ot");
                std::fs::write(&out, &bytes).expect("write the crashing input");
                eprintln!("PANIC at iteration {i}; input written to {out}");
                std::process::exit(1);
            }
        };
        *outcomes.entry(kind).or_default() += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{iterations} inputs in {secs:.1} s ({:.0}/s), seed {seed}: 0 panics, 0 aborts, 0 altered checkpoints accepted",
        iterations as f64 / secs
    );
    for (k, n) in outcomes {
        println!("  {n:>9}  {k}");
    }
}

//! A stable-Rust fuzzer for the hardware-profile parser (`nce::hw::Profile::parse`) and the
//! cost evaluation a parsed profile drives.
//!
//! ```text
//! cargo run --release --example fuzz_profiles -- [ITERATIONS] [SEED]
//! ```
//!
//! Starts from every shipped profile in `hw-profiles/` and, per iteration, applies 1–4 random
//! mutations to one of them: byte flips and deletions, inserted TOML fragments (keys, tables,
//! brackets, quotes, inline tables), duplicated or dropped lines, and numbers replaced by
//! boundary values (0, −1, 2^63, 1e308, nan, inf, huge strings). Every parse must return `Ok`
//! or `Err` within 100 ms; an accepted profile is then instantiated (`Evaluator::new`) and costs
//! ResNet-20, which must not panic either. A panic writes the input to
//! `fuzz-crash-profile-SEED-ITER.toml` and exits non-zero. The end prints iterations/s and the
//! counts of accepted and rejected inputs.

use nce::cost::Evaluator;
use nce::data::Rng;
use nce::graph::{build, BitConfig, ModelKind, Shape};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const FRAGMENTS: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
    "=",
    "\"",
    "'",
    "{",
    "}",
    ",",
    ".",
    "\n",
    "#",
    "x",
    "1.0x",
    "0x",
    "-1x",
    "[budgets]\n",
    "[plugins.macs]\n",
    "[plugins.roofline]\n",
    "[unit]\n",
    "[memory]\n",
    "[latency_table]\nfile = \"nope.csv\"\n",
    "macs = ",
    "params = ",
    "latency_ms = { max = \"1.0x\", plugin = \"roofline\" }\n",
    "max = ",
    "plugin = ",
    "lanes = ",
    "channel_granularity = ",
    "word_bits = ",
    "weight_bits = ",
    "efficiency = ",
    "\u{0}",
    "\u{feff}",
    "é",
    "🚀",
];
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "3",
    "7",
    "64",
    "65537",
    "9223372036854775807",
    "18446744073709551616",
    "-9223372036854775808",
    "1e308",
    "-1e308",
    "nan",
    "inf",
    "-inf",
    "0.0",
    "-0.0",
    "1e-320",
    "\"1.0x\"",
    "\"-1x\"",
    "\"nanx\"",
    "\"infx\"",
    "\"\"",
    "true",
    "[]",
    "{}",
];

fn mutate(text: &str, rng: &mut Rng) -> String {
    let mut b: Vec<u8> = text.as_bytes().to_vec();
    for _ in 0..1 + rng.below(4) {
        let n = b.len().max(1) as u64;
        let at = rng.below(n) as usize;
        match rng.below(7) {
            0 if !b.is_empty() => {
                let i = at.min(b.len() - 1);
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => {
                let end = (at + 1 + rng.below(32) as usize).min(b.len());
                b.drain(at.min(end)..end);
            }
            2 => {
                let f = FRAGMENTS[rng.below(FRAGMENTS.len() as u64) as usize];
                b.splice(at.min(b.len())..at.min(b.len()), f.bytes());
            }
            3 => replace_number(&mut b, rng),
            4 => {
                let s = String::from_utf8_lossy(&b).into_owned();
                let mut lines: Vec<&str> = s.lines().collect();
                if !lines.is_empty() {
                    let i = rng.below(lines.len() as u64) as usize;
                    if rng.below(2) == 0 {
                        lines.insert(i, lines[i]);
                    } else {
                        lines.remove(i);
                    }
                }
                b = lines.join("\n").into_bytes();
            }
            5 => b.truncate(at),
            _ => {
                let big = "9".repeat(1 + rng.below(400) as usize);
                b.splice(at.min(b.len())..at.min(b.len()), big.bytes());
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// Replaces one number (a run of digits, '.', 'e', '-') by a boundary value.
fn replace_number(b: &mut Vec<u8>, rng: &mut Rng) {
    let starts: Vec<usize> = (0..b.len()).filter(|&i| b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_alphanumeric())).collect();
    if starts.is_empty() {
        return;
    }
    let s = starts[rng.below(starts.len() as u64) as usize];
    let mut e = s;
    while e < b.len() && (b[e].is_ascii_digit() || b"._eE-+".contains(&b[e])) {
        e += 1;
    }
    let v = NUMBERS[rng.below(NUMBERS.len() as u64) as usize];
    b.splice(s..e, v.bytes());
}

/// Parses, instantiates and costs one input; `Ok(true)` if it was accepted.
fn exercise(text: &str, path: &Path) -> Result<bool, String> {
    let Ok(p) = nce::cost::parse_profile(text, path) else { return Ok(false) };
    let Ok(eval) = Evaluator::new(&p) else { return Ok(true) };
    let net = build(ModelKind::Resnet20, Shape::new(1, 28, 28), 10, None, &BitConfig::uniform(2)).map_err(|e| e.to_string())?;
    let _ = eval.evaluate(&net, &net);
    Ok(true)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let iterations: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let seed: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut seeds: Vec<(PathBuf, String)> = std::fs::read_dir("hw-profiles")
        .expect("run from the repository root (hw-profiles/)")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            let t = std::fs::read_to_string(&p).expect("readable profile");
            (p, t)
        })
        .collect();
    seeds.sort();
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = Rng::new(seed);
    let (mut accepted, mut rejected, mut slowest) = (0u64, 0u64, Duration::ZERO);
    let started = Instant::now();
    for i in 0..iterations {
        let (path, text) = &seeds[rng.below(seeds.len() as u64) as usize];
        let input = mutate(text, &mut rng);
        let t0 = Instant::now();
        match catch_unwind(AssertUnwindSafe(|| exercise(&input, path))) {
            Ok(Ok(true)) => accepted += 1,
            Ok(Ok(false)) => rejected += 1,
            Ok(Err(e)) => panic!("iteration {i}: the fuzzer's own ResNet-20 failed to build: {e}"),
            Err(_) => {
                let out = format!("fuzz-crash-profile-{seed}-{i}.toml");
                std::fs::write(&out, &input).expect("write the crashing input");
                eprintln!("PANIC at iteration {i}; input written to {out}");
                std::process::exit(1);
            }
        }
        let dt = t0.elapsed();
        slowest = slowest.max(dt);
        if dt > Duration::from_millis(100) && exercise(&input, path).is_ok() && t0.elapsed() > Duration::from_millis(200) {
            let out = format!("fuzz-slow-profile-{seed}-{i}.toml");
            std::fs::write(&out, &input).expect("write the slow input");
            eprintln!("SLOW ({dt:?}) at iteration {i}; input written to {out}");
            std::process::exit(1);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{iterations} inputs in {secs:.1} s ({:.0}/s), seed {seed}: 0 panics, {accepted} accepted, {rejected} rejected, slowest {slowest:?}",
        iterations as f64 / secs
    );
}

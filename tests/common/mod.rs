//! Fixtures shared by the integration tests and benches (`mod common;`; benches use
//! `#[path = "../tests/common/mod.rs"]`): a seeded random source, random quantized layers, and
//! the `nce` binary as a command.
// Every test crate compiles this module and uses only part of it.
#![allow(dead_code)]

use nce::engine::{ConvWeights, PackedW2, QTensor, Requant, Weights8};

/// splitmix64 ([`nce::data::Rng`]), for reproducible test data.
pub struct Rng(nce::data::Rng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(nce::data::Rng::new(seed))
    }
    pub fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// `next() % n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// In `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A 2-bit weight code: −3, −1, 1 or 3.
    pub fn code2(&mut self) -> i8 {
        [-3, -1, 1, 3][self.below(4) as usize]
    }
    /// `n` activation codes in `0..=max`.
    pub fn codes_u8(&mut self, n: usize, max: u8) -> Vec<u8> {
        (0..n).map(|_| self.below(max as u64 + 1) as u8).collect()
    }
    /// An `h×w×c` tensor of codes in `0..=max`.
    pub fn tensor(&mut self, h: usize, w: usize, c: usize, max: u8) -> QTensor {
        QTensor::new(h, w, c, self.codes_u8(h * w * c, max)).unwrap()
    }
}

/// Random conv weights, `c_out` rows of `k_len`: 2-bit codes, or 8-bit in `w8_min..=127`.
pub fn random_weights(rng: &mut Rng, c_out: usize, k_len: usize, w8: bool, w8_min: i64) -> ConvWeights {
    if w8 {
        ConvWeights::W8(Weights8::new(c_out, k_len, (0..c_out * k_len).map(|_| rng.range(w8_min, 127) as i8).collect()).unwrap())
    } else {
        let codes: Vec<i8> = (0..c_out * k_len).map(|_| rng.code2()).collect();
        ConvWeights::W2(PackedW2::pack(c_out, k_len, &codes).unwrap())
    }
}

/// Requantisation with `shift` and `qmax` whose outputs spread over `0..=qmax` rather than all
/// saturating, for a reduction of `k_len` inputs of at most `amax`.
pub fn spread_requant(rng: &mut Rng, c_out: usize, k_len: usize, amax: u8, w8: bool, shift: u32, qmax: u8) -> Requant {
    let wmax = if w8 { 127.0 } else { 3.0 };
    let acc_scale = (k_len as f64).sqrt() * amax.max(1) as f64 * wmax;
    let m_mag = ((1u64 << shift) as f64 * qmax as f64 / acc_scale).max(1.0) as i64;
    let span = (1i64 << shift) * qmax as i64;
    Requant {
        m: (0..c_out).map(|_| rng.range(-m_mag / 4, m_mag) as i32).collect(),
        b: (0..c_out).map(|_| rng.range(-span, span).clamp(i32::MIN as i64, i32::MAX as i64) as i32).collect(),
        shift,
        qmax,
    }
}

/// The `nce` binary with `args`, run to completion.
#[cfg(feature = "cli")]
pub fn nce(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_nce")).args(args).output().expect("run nce")
}

/// `nce train` arguments for one epoch of a W2 ResNet-20 on Fashion-MNIST subsets, on one
/// thread, checkpointing every `checkpoint_every` steps, quietly.
pub fn train_args(batch_size: usize, train_subset: usize, test_subset: usize, checkpoint_every: usize) -> Vec<String> {
    let fixed = "train --model resnet20 --data fashion-mnist --bits 2 --epochs 1 --threads 1 --quiet";
    let sized = format!(
        "--batch-size {batch_size} --train-subset {train_subset} --test-subset {test_subset} --checkpoint-every {checkpoint_every}"
    );
    fixed.split(' ').chain(sized.split(' ')).map(String::from).collect()
}

/// A finished command's stdout followed by its stderr.
pub fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// The arrays `nce export` writes for `net`, filled with random but valid values (2-bit words
/// take any bits, padding included; requantisation multipliers that keep codes spread).
pub fn random_arrays(net: &nce::graph::Network, seed: u64) -> std::collections::BTreeMap<String, nce::export::format::Entry> {
    use nce::export::format::{Array, Entry};
    use nce::graph::Op;
    let mut rng = Rng::new(seed);
    let mut arrays = std::collections::BTreeMap::new();
    let i32s = |v: Vec<i32>| Entry { dims: vec![v.len()], data: Array::I32(v) };
    for l in &net.layers {
        match l.op {
            Op::Conv { k, relu, groups, .. } => {
                let (cout, k_len) = (l.out_shape.c, l.in_shape.c / groups.max(1) * k * k);
                let w = if l.wbits == 2 {
                    // Any bits: padding past k_len must never be read.
                    let wpc = nce::engine::words_for(k_len);
                    Entry { dims: vec![cout, wpc], data: Array::U32((0..cout * wpc).map(|_| rng.next() as u32).collect()) }
                } else {
                    Entry { dims: vec![cout, k_len], data: Array::I8((0..cout * k_len).map(|_| rng.range(-127, 127) as i8).collect()) }
                };
                let m_max = if l.wbits == 2 { 1 << 17 } else { 1 << 12 };
                arrays.insert(format!("{}.w", l.name), w);
                arrays.insert(format!("{}.m", l.name), i32s((0..cout).map(|_| rng.range(-m_max / 8, m_max) as i32).collect()));
                arrays.insert(format!("{}.b", l.name), i32s((0..cout).map(|_| rng.range(-(1 << 22), 1 << 22) as i32).collect()));
                arrays.insert(format!("{}.shift", l.name), i32s(vec![22]));
                if !relu {
                    arrays.insert(format!("{}.r", l.name), i32s(vec![rng.range(1 << 20, 1 << 22) as i32]));
                }
            }
            Op::Linear => {
                let (cout, cin) = (l.out_shape.c, l.in_shape.numel());
                let w = Entry { dims: vec![cout, cin], data: Array::I8((0..cout * cin).map(|_| rng.range(-127, 127) as i8).collect()) };
                arrays.insert(format!("{}.w", l.name), w);
                arrays.insert(format!("{}.b", l.name), i32s((0..cout).map(|_| rng.range(-1000, 1000) as i32).collect()));
            }
            _ => {}
        }
    }
    arrays
}

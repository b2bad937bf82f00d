//! Conv kernels on the ResNet-20 (CIFAR, 32×32) layer shapes.
//!
//! Every shape is one criterion group whose throughput is counted in MACs, so criterion's
//! "elem/s" reads directly as MAC/s. The implementations of a shape are a flat list of
//! `(name, closure)` built by [`impls`]: the engine's backends (`scalar/1t`, `avx2/2t`, …) and,
//! with the `train` feature, libtorch's fp32 conv on the same layer (`libtorch-fp32/1t`, `/2t`:
//! `Tensor::conv2d`, batch 1, NCHW f32, no bias, threads via `tch::set_num_threads`; on the
//! residual shape followed by the add of the shortcut, which the engine fuses). The engine
//! times include its fused requantisation (BN + ReLU + quantizer); libtorch's conv does not,
//! which favours libtorch.
//!
//! Criterion: `cargo bench --bench kernels -- --warm-up-time 1 --measurement-time 3 --noplot`
//! (`--noplot`: criterion's plotters backend panics on machines without system fonts)
//! (filter with a substring, e.g. `-- '64->64'`; `--no-default-features` drops libtorch).
//!
//! Ratio table (what `docs/results.md` quotes): `cargo bench --bench kernels -- --table`
//! (or `NCE_TABLE=1`). For every shape and 1/2 threads it alternates timed batches of the best
//! engine backend and libtorch in one process (`NCE_TABLE_ROUNDS` rounds, default 101, of
//! about `NCE_TABLE_BATCH_MS` = 2 ms each side, the order swapped every round) and prints the
//! medians of the per-call times and, as the speed-up, the median over rounds of the ratio
//! libtorch / engine *within* a round (with its quartiles): on a loaded machine the times are
//! bimodal, and pairing keeps both sides of every ratio under the same load.

#[path = "../tests/common/mod.rs"]
mod common;

use common::Rng;
use criterion::{criterion_group, Criterion, Throughput};
use nce::engine::cpu::{Backend, Cpu, PreparedConv};
use nce::engine::{Conv2d, ConvWeights, PackedW2, QTensor, Requant, Residual, Weights8};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// One conv layer shape (3×3, pad 1).
#[derive(Clone, Copy)]
struct Shape {
    c_in: usize,
    c_out: usize,
    /// Input height = width.
    hw: usize,
    stride: usize,
    /// First layer: 8-bit weights over 8-bit pixels.
    w8: bool,
    /// Second conv of a block: fused residual add (same-shape shortcut).
    residual: bool,
}

impl Shape {
    const fn w2(c_in: usize, c_out: usize, hw: usize, stride: usize) -> Self {
        Shape { c_in, c_out, hw, stride, w8: false, residual: false }
    }
    fn out_hw(&self) -> usize {
        (self.hw - 1) / self.stride + 1
    }
    fn macs(&self) -> u64 {
        (self.out_hw() * self.out_hw() * self.c_out * 9 * self.c_in) as u64
    }
    fn name(&self) -> String {
        let kind = if self.w8 { "w8a8" } else { "w2a2" };
        let res = if self.residual { "+res" } else { "" };
        format!("conv3x3 {}->{} @{}x{} s{} {kind}{res}", self.c_in, self.c_out, self.hw, self.hw, self.stride)
    }
    /// How many convs of ResNet-20 (32×32) have this shape, for the whole-network weighting
    /// of the table (the residual convs of stages 2 and 3 are counted under their plain shape).
    fn resnet20_count(&self) -> usize {
        match (self.c_in, self.c_out, self.stride, self.w8, self.residual) {
            (_, _, _, true, _) => 1,
            (16, 16, 1, _, false) => 3,
            (16, 16, 1, _, true) => 3,
            (32, 32, 1, ..) | (64, 64, 1, ..) => 5,
            _ => 1,
        }
    }
}

/// ResNet-20 on 32×32: the five 2-bit conv shapes, the residual variant of the first, and the
/// 8-bit stem.
const SHAPES: [Shape; 7] = [
    Shape::w2(16, 16, 32, 1),
    Shape::w2(16, 32, 32, 2),
    Shape::w2(32, 32, 16, 1),
    Shape::w2(32, 64, 16, 2),
    Shape::w2(64, 64, 8, 1),
    Shape { residual: true, ..Shape::w2(16, 16, 32, 1) },
    Shape { w8: true, ..Shape::w2(3, 16, 32, 1) },
];

/// A random quantized layer of this shape, its input and (if any) its shortcut tensor. Other
/// engines (a float conv) can build the same layer from `conv.weights.codes_i32()`.
struct Layer {
    conv: Conv2d,
    x: QTensor,
    shortcut: Option<QTensor>,
}

fn layer(s: &Shape, seed: u64) -> Layer {
    let mut rng = Rng::new(seed);
    let k_len = 9 * s.c_in;
    let weights = if s.w8 {
        let w = (0..s.c_out * k_len).map(|_| ((rng.next() % 255) as i32 - 127) as i8).collect();
        ConvWeights::W8(Weights8::new(s.c_out, k_len, w).unwrap())
    } else {
        let w: Vec<i8> = (0..s.c_out * k_len).map(|_| [-3, -1, 1, 3][(rng.next() % 4) as usize]).collect();
        ConvWeights::W2(PackedW2::pack(s.c_out, k_len, &w).unwrap())
    };
    let requant = Requant {
        m: (0..s.c_out).map(|_| (rng.next() % (1 << 20)) as i32 - (1 << 18)).collect(),
        b: (0..s.c_out).map(|_| (rng.next() % (1 << 24)) as i32 - (1 << 23)).collect(),
        shift: 22,
        qmax: 3,
    };
    let conv = Conv2d::new(s.c_in, 3, s.stride, 1, weights, requant).unwrap();
    let amax = if s.w8 { 256 } else { 4 };
    let x = QTensor::new(s.hw, s.hw, s.c_in, (0..s.hw * s.hw * s.c_in).map(|_| (rng.next() % amax) as u8).collect()).unwrap();
    let shortcut = s.residual.then(|| {
        let n = s.out_hw() * s.out_hw() * s.c_out;
        QTensor::new(s.out_hw(), s.out_hw(), s.c_out, (0..n).map(|_| (rng.next() % 4) as u8).collect()).unwrap()
    });
    Layer { conv, x, shortcut }
}

/// A named implementation of one layer: each call runs the layer once.
type Impl<'a> = (String, Box<dyn FnMut() + 'a>);

/// All engines to compare on `l`: the scalar reference and AVX2, each with 1 and 2 threads,
/// then (with the `train` feature) libtorch fp32 with 1 and 2 threads.
fn impls<'a>(s: &Shape, l: &'a Layer) -> Vec<Impl<'a>> {
    let mut v: Vec<Impl<'_>> = Vec::new();
    for backend in Backend::available() {
        for threads in [1, 2] {
            let cpu = Cpu::new(backend, threads).unwrap();
            let p: PreparedConv = cpu.prepare(&l.conv).unwrap();
            let run = move || {
                let res = l.shortcut.as_ref().map(|t| Residual { input: t, stride: 1, r: 1 << 21 });
                black_box(cpu.conv2d(&p, black_box(&l.x), res.as_ref()).unwrap());
            };
            v.push((format!("{backend}/{threads}t"), Box::new(run)));
        }
    }
    #[cfg(feature = "train")]
    v.extend(torch::impls(s, l));
    #[cfg(not(feature = "train"))]
    let _ = s;
    v
}

/// libtorch's fp32 conv on the same layer.
#[cfg(feature = "train")]
mod torch {
    use super::{black_box, Impl, Layer, Shape};
    use tch::{Kind, Tensor};

    pub const NAME: &str = "libtorch-fp32";

    /// Weights `[c_out, c_in, 3, 3]`, input `[1, c_in, h, w]` and shortcut `[1, c_out, ho, wo]`
    /// as f32, holding the layer's integer codes.
    fn tensors(s: &Shape, l: &Layer) -> (Tensor, Tensor, Option<Tensor>) {
        let f = |v: Vec<f32>| Tensor::from_slice(&v);
        // Engine order is (ky, kx, c_in) per output channel; torch's is (c_in, ky, kx).
        let w = f(l.conv.weights.codes_i32().into_iter().map(|c| c as f32).collect())
            .reshape([s.c_out as i64, 3, 3, s.c_in as i64])
            .permute([0, 3, 1, 2])
            .contiguous();
        let hwc = |t: &nce::engine::QTensor| {
            f(t.data.iter().map(|&c| c as f32).collect())
                .reshape([1, t.h as i64, t.w as i64, t.c as i64])
                .permute([0, 3, 1, 2])
                .contiguous()
        };
        let x = hwc(&l.x);
        let sc = l.shortcut.as_ref().map(hwc);
        assert_eq!(w.kind(), Kind::Float);
        (w, x, sc)
    }

    pub fn impls<'a>(s: &Shape, l: &'a Layer) -> Vec<Impl<'a>> {
        let (w, x, sc) = tensors(s, l);
        let stride = s.stride as i64;
        let mut v: Vec<Impl<'a>> = Vec::new();
        for threads in [1, 2] {
            let (w, x, sc) = (w.shallow_clone(), x.shallow_clone(), sc.as_ref().map(Tensor::shallow_clone));
            let run = move || {
                if tch::get_num_threads() != threads {
                    tch::set_num_threads(threads);
                }
                let _g = tch::no_grad_guard();
                let mut y = black_box(&x).conv2d(&w, None::<Tensor>, [stride, stride], [1, 1], [1, 1], 1);
                if let Some(t) = &sc {
                    let _ = y.g_add_(t);
                }
                drop(black_box(y));
            };
            v.push((format!("{NAME}/{threads}t"), Box::new(run)));
        }
        v
    }
}

// ------------------------------------------------------------------------------------------
// Ratio table: interleaved plain timing
// ------------------------------------------------------------------------------------------

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The `p`-quantile (0..=1) of `v`, linearly interpolated.
fn quantile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let x = p * (v.len() - 1) as f64;
    let (i, f) = (x.floor() as usize, x.fract());
    v[i] + f * (v[(i + 1).min(v.len() - 1)] - v[i])
}

fn median(v: &mut [f64]) -> f64 {
    quantile(v, 0.5)
}

/// Times `fs` interleaved: after a warm-up that also sizes each side's batch to about
/// `batch`, `rounds` rounds each time one batch of every function (order rotated per round).
/// Returns every function's time per call (µs) in each round.
fn interleaved(fs: &mut [&mut dyn FnMut()], rounds: usize, batch: Duration) -> Vec<Vec<f64>> {
    let reps: Vec<usize> = fs
        .iter_mut()
        .map(|f| {
            let t = Instant::now();
            let mut n = 0usize;
            while t.elapsed() < Duration::from_millis(100) || n < 3 {
                f();
                n += 1;
            }
            let per = t.elapsed().as_secs_f64() / n as f64;
            ((batch.as_secs_f64() / per).round() as usize).max(1)
        })
        .collect();
    let mut times = vec![Vec::with_capacity(rounds); fs.len()];
    for r in 0..rounds {
        for j in 0..fs.len() {
            let i = (j + r) % fs.len();
            let t = Instant::now();
            for _ in 0..reps[i] {
                (fs[i])();
            }
            times[i].push(t.elapsed().as_secs_f64() * 1e6 / reps[i] as f64);
        }
    }
    times
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

fn torch_name() -> &'static str {
    #[cfg(feature = "train")]
    return torch::NAME;
    #[cfg(not(feature = "train"))]
    return "";
}

/// Prints `layer | threads | engine µs | libtorch µs | ratio` for every shape.
fn table() {
    let rounds = env_or("NCE_TABLE_ROUNDS", 101usize).max(1);
    let batch = Duration::from_secs_f64(env_or("NCE_TABLE_BATCH_MS", 2.0f64) / 1e3);
    let best = Backend::best();
    let (lib, vs) =
        if cfg!(feature = "train") { (torch_name(), "libtorch fp32 conv2d") } else { ("", "nothing (libtorch needs the `train` feature)") };
    println!("# 3x3 conv, batch 1: nce {best} vs {vs} (interleaved, {rounds} rounds of ~{batch:?} per side, medians)");
    println!("# load average at start: {}", load_average());
    println!();
    println!("| layer | ResNet-20 convs | threads | engine {best} µs | libtorch fp32 µs | libtorch / engine | p25–p75 | engine GMAC/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    // (shape index, threads, engine µs, libtorch µs, paired ratio), medians.
    #[allow(clippy::type_complexity)]
    let mut res: Vec<(usize, usize, f64, Option<f64>, Option<f64>)> = Vec::new();
    for (i, s) in SHAPES.iter().enumerate() {
        let l = layer(s, i as u64 + 1);
        let mut all = impls(s, &l);
        for threads in [1, 2] {
            let want = [format!("{best}/{threads}t"), format!("{lib}/{threads}t")];
            let mut fs: Vec<&mut dyn FnMut()> = Vec::new();
            for (name, f) in all.iter_mut() {
                if want.contains(name) {
                    fs.push(f.as_mut());
                }
            }
            let mut t = interleaved(&mut fs, rounds, batch);
            // Ratio: median over rounds of libtorch / engine within the round (same load).
            let ratio = t.get(1).map(|tt| {
                let mut q: Vec<f64> = tt.iter().zip(&t[0]).map(|(a, b)| a / b).collect();
                [median(&mut q), quantile(&mut q, 0.25), quantile(&mut q, 0.75)]
            });
            let e = median(&mut t[0]);
            let tt = t.get_mut(1).map(|v| median(v));
            let tts = tt.map_or("—".into(), |tt| format!("{tt:.1}"));
            let rs = ratio.map_or("— | —".into(), |[m, lo, hi]| format!("**{m:.2}×** | {lo:.2}–{hi:.2}"));
            println!("| {} | {} | {threads} | {e:.1} | {tts} | {rs} | {:.1} |", s.name(), s.resnet20_count(), s.macs() as f64 / e / 1e3);
            res.push((i, threads, e, tt, ratio.map(|r| r[0])));
        }
    }
    println!();
    for threads in [1, 2] {
        let rows: Vec<_> = res.iter().filter(|r| r.1 == threads && r.3.is_some()).collect();
        if rows.is_empty() {
            continue;
        }
        // The six distinct ResNet-20 shapes (the +res variant is the 16->16 shape again).
        let mut ratios: Vec<f64> = rows.iter().filter(|r| !SHAPES[r.0].residual).map(|r| r.4.unwrap()).collect();
        let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let at3 = ratios.iter().filter(|&&r| r >= 3.0).count();
        let med = median(&mut ratios);
        let (e, t) = rows.iter().fold((0.0, 0.0), |(e, t), r| {
            let n = SHAPES[r.0].resnet20_count() as f64;
            (e + n * r.2, t + n * r.3.unwrap())
        });
        println!(
            "{threads} thread(s): median ratio over the 6 ResNet-20 shapes {med:.2}× (min {min:.2}×, {at3}/{} at ≥ 3×); all 19 convs of ResNet-20 weighted by count: engine {e:.0} µs, libtorch {t:.0} µs, {:.2}×",
            ratios.len(),
            t / e
        );
    }
    println!("# load average at end: {}", load_average());
}

fn conv_shapes(c: &mut Criterion) {
    for (i, s) in SHAPES.iter().enumerate() {
        let l = layer(s, i as u64 + 1);
        let mut g = c.benchmark_group(s.name());
        g.throughput(Throughput::Elements(s.macs()));
        for (name, mut f) in impls(s, &l) {
            g.bench_function(name, |b| b.iter(&mut f));
        }
        g.finish();
    }
}

/// MobileNetV2-like depthwise 3×3 layers (pad 1, 2-bit weights and activations):
/// `(channels, input height = width, stride)`.
const DEPTHWISE: [(usize, usize, usize); 2] = [(144, 28, 1), (144, 28, 2)];

/// A random depthwise layer and its input.
fn depthwise_layer(c: usize, hw: usize, stride: usize, seed: u64) -> (Conv2d, QTensor) {
    let mut rng = Rng::new(seed);
    let w: Vec<i8> = (0..c * 9).map(|_| rng.code2()).collect();
    let requant = Requant {
        m: (0..c).map(|_| (rng.next() % (1 << 20)) as i32 - (1 << 18)).collect(),
        b: (0..c).map(|_| (rng.next() % (1 << 24)) as i32 - (1 << 23)).collect(),
        shift: 22,
        qmax: 3,
    };
    let conv = Conv2d::grouped(c, c, 3, stride, 1, ConvWeights::W2(PackedW2::pack(c, 9, &w).unwrap()), requant).unwrap();
    (conv, rng.tensor(hw, hw, c, 3))
}

/// The depthwise layers on every backend with 1 and 2 threads (criterion only, not the table).
fn depthwise_shapes(c: &mut Criterion) {
    for (i, &(ch, hw, stride)) in DEPTHWISE.iter().enumerate() {
        let (conv, x) = depthwise_layer(ch, hw, stride, 100 + i as u64);
        let ho = (hw - 1) / stride + 1;
        let mut g = c.benchmark_group(format!("dw3x3 {ch} @{hw}x{hw} s{stride} w2a2"));
        g.throughput(Throughput::Elements((ho * ho * ch * 9) as u64));
        for backend in Backend::available() {
            for threads in [1, 2] {
                let cpu = Cpu::new(backend, threads).unwrap();
                let p = cpu.prepare(&conv).unwrap();
                g.bench_function(format!("{backend}/{threads}t"), |b| b.iter(|| black_box(cpu.conv2d(&p, black_box(&x), None).unwrap())));
            }
        }
        g.finish();
    }
}

criterion_group!(benches, conv_shapes, depthwise_shapes);

/// `criterion_main!` plus the table mode.
fn main() {
    if std::env::var_os("NCE_TABLE").is_some() || std::env::args().any(|a| a == "--table") {
        table();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

//! Per-layer time of a `.nce` model on the CPU engine at batch 1: each conv run alone on its
//! real input (from one test image), on 1 thread and on `--threads` T, with the threshold
//! `SPLIT_MIN_MACS_PER_THREAD` the CPU backend uses, best of `--reps` median-of-9 timings.
//!
//! `cargo run --release --example engine_profile -- [--model FILE.nce] [--threads T] [--reps N]
//! [--backend swar|scalar|avx2|avx512]` (default: the best backend)
//! (`perf record` on the same command gives the phases inside the kernels).

use nce::engine::cpu::{Backend, Cpu, SPLIT_MIN_MACS_PER_THREAD};
use nce::engine::plan::{LayerOut, QModel, Step};
use nce::engine::{Conv2d, ConvWeights, PackedW2, QTensor, Requant, Residual};
use nce::graph::Src;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone()).unwrap_or_else(|| default.to_string())
}

fn tensor<'a>(input: &'a QTensor, outs: &'a [Option<LayerOut>], s: Src) -> &'a QTensor {
    match s {
        Src::Input => input,
        Src::Layer(j) => match &outs[j] {
            Some(LayerOut::Codes(t)) => t,
            _ => panic!("layer {j} has no codes"),
        },
    }
}

/// Median µs of `f` over 9 batches of `n` calls.
fn median_us(n: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..9)
        .map(|_| {
            let s = Instant::now();
            for _ in 0..n {
                f();
            }
            s.elapsed().as_secs_f64() * 1e6 / n as f64
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[4]
}

fn main() {
    let model = QModel::load(Path::new(&arg("--model", "examples/mobilenetv2-w2a2-fashion.nce"))).expect("model");
    let threads: usize = arg("--threads", "2").parse().expect("--threads T");
    let reps: usize = arg("--reps", "3").parse().expect("--reps N");
    let ds = nce::data::load("fashion-mnist", Path::new("data"), nce::data::Split::Test).expect("dataset");
    let image = &ds.images[..model.net().input.numel()];
    let backend = match arg("--backend", "best").as_str() {
        "swar" => Backend::Swar,
        "scalar" => Backend::Scalar,
        "avx2" => Backend::Avx2,
        "avx512" => Backend::Avx512,
        _ => Backend::best(),
    };
    let one = Cpu::new(backend, 1).expect("backend");
    let many = Cpu::new(backend, threads).expect("threads").with_min_macs_per_thread(SPLIT_MIN_MACS_PER_THREAD);
    let outs = model.run_layers(&one, &model.prepare(&one).expect("prepare"), image).expect("run");
    let s = model.net().input;
    let hwc: Vec<u8> = (0..s.h * s.w).flat_map(|p| (0..s.c).map(move |c| image[c * s.h * s.w + p])).collect();
    let input = QTensor::new(s.h, s.w, s.c, hwc).expect("input");
    println!("{backend} kernels, T = {threads}");
    println!("| step | conv | out h×w | kMAC | µs 1 thread | GMAC/s | µs T threads | speed-up |");
    println!("|---:|---|---|---:|---:|---:|---:|---:|");
    let (mut sum1, mut sum_t) = (0.0, 0.0);
    for (i, step) in model.steps.iter().enumerate() {
        let Step::Conv { input: src, residual, conv, .. } = step else { continue };
        let x = tensor(&input, &outs, *src);
        let res = residual.map(|(sc, stride, r)| Residual { input: tensor(&input, &outs, sc), stride, r });
        let y = one.conv2d_once(conv, x, res.as_ref()).expect("conv");
        let macs = (y.h * y.w * conv.weights.c_out() * conv.k_len()) as f64;
        let time = |cpu: &Cpu| {
            let p = cpu.prepare(conv).expect("prepare");
            let n = (2e6 / macs.max(1.0)).ceil().clamp(20.0, 2000.0) as usize;
            // On a pool worker, as a model runs its convs.
            cpu.install(|| {
                (0..reps).map(|_| median_us(n, || drop(black_box(cpu.conv2d(&p, x, res.as_ref()).expect("conv"))))).fold(f64::MAX, f64::min)
            })
        };
        let (t1, tt) = (time(&one), time(&many));
        sum1 += t1;
        sum_t += tt;
        let kind = if conv.groups == 1 {
            format!("{}×{} {}→{}", conv.k, conv.k, conv.c_in, conv.weights.c_out())
        } else {
            format!("dw {}×{} {}", conv.k, conv.k, conv.c_in)
        };
        let kind = if conv.stride > 1 { format!("{kind} /{}", conv.stride) } else { kind };
        println!("| {i} | {kind} | {}×{} | {:.0} | {t1:.1} | {:.1} | {tt:.1} | {:.2} |", y.h, y.w, macs / 1e3, macs / t1 / 1e3, t1 / tt);
    }
    println!("convs alone: {sum1:.0} µs on 1 thread, {sum_t:.0} µs on {threads} ({:.2}×)", sum1 / sum_t);
    // The whole image as `run` does it from a thread outside the pool (what a caller sees).
    let whole = |cpu: &Cpu| {
        let p = model.prepare(cpu).expect("prepare");
        (0..reps).map(|_| median_us(200, || drop(black_box(model.run(cpu, &p, image).expect("run"))))).fold(f64::MAX, f64::min)
    };
    let (w1, wt) = (whole(&one), whole(&many));
    println!("whole image: {w1:.0} µs on 1 thread, {wt:.0} µs on {threads} ({:.2}×)", w1 / wt);
    let round_trip = (0..reps).map(|_| median_us(2000, || many.install(|| black_box(())))).fold(f64::MAX, f64::min);
    println!("handing a call to the pool and back: {round_trip:.2} µs");
    let dispatch = |cpu: &Cpu| {
        let w = PackedW2::pack(1, 1, &[1]).expect("weights");
        let conv = Conv2d::new(1, 1, 1, 0, ConvWeights::W2(w), Requant { m: vec![1], b: vec![0], shift: 0, qmax: 3 }).expect("conv");
        let (x, p) = (QTensor::new(1, 64, 1, vec![1; 64]).expect("x"), cpu.prepare(&conv).expect("prepare"));
        cpu.install(|| {
            (0..reps).map(|_| median_us(2000, || drop(black_box(cpu.conv2d(&p, &x, None).expect("conv"))))).fold(f64::MAX, f64::min)
        })
    };
    let (d1, dt) = (dispatch(&one), dispatch(&Cpu::new(backend, threads).expect("threads")));
    println!("a 64-pixel 1×1 conv: {d1:.2} µs on 1 thread, {dt:.2} µs split over {threads}: {:.2} µs per dispatch", dt - d1);
}

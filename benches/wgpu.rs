//! Whole-model batch inference: the wgpu backend (both 2-bit dot kernels) against the CPU
//! engine, in one process so the ratios are fair on a noisy machine.
//!
//! `cargo bench --bench wgpu` (env: `NCE_BENCH_IMAGES` images per batch, default 1000;
//! `NCE_BENCH_REPS` timed repetitions, default 3; `NCE_WGPU_ADAPTER` picks the adapter).
//! Prints images/s per engine and each wgpu variant's speed relative to the CPU engine.

use nce::engine::cpu::Cpu;
use nce::engine::plan::QModel;
use nce::engine::wgpu::{DotKernel, WgpuEngine, WgpuModel};
use std::path::Path;
use std::time::Instant;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Best-of-`reps` seconds of `f` after one untimed warm-up run.
fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut out = f();
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        out = f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    (best, out)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n = env_usize("NCE_BENCH_IMAGES", 1000);
    let reps = env_usize("NCE_BENCH_REPS", 3).max(1);
    let model_path = std::env::var("NCE_BENCH_MODEL").unwrap_or_else(|_| "examples/resnet20-w2a2-fashion.nce".into());
    let data_root = std::env::var("NCE_BENCH_DATA").unwrap_or_else(|_| "data".into());
    let model = QModel::load(Path::new(&model_path))?;
    let ds = nce::data::load("fashion-mnist", Path::new(&data_root), nce::data::Split::Test)?.subset(n);
    let n = ds.len();
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    println!("model {model_path}: {n} images, best of {reps} after a warm-up");

    let cpu = Cpu::best(1);
    let prepared = model.prepare(&cpu)?;
    let (cpu_s, want) = time(reps, || model.run_batch(&cpu, &prepared, &ds.images, threads));
    let want = want?;
    let cpu_rate = n as f64 / cpu_s;
    println!("cpu  {:?} x {threads} threads: {cpu_s:8.3} s  {cpu_rate:10.1} images/s", cpu.backend());

    let engine = WgpuEngine::from_env()?;
    println!("wgpu adapter {}", engine.adapter());
    for dot in DotKernel::ALL {
        let gpu = WgpuModel::with_options(&engine, &model, dot, 1024)?;
        let (s, got) = time(reps, || gpu.run_batch(&ds.images));
        let exact = got? == want;
        let rate = n as f64 / s;
        println!(
            "wgpu dot={} (runs {}, batch {}): {s:8.3} s  {rate:10.1} images/s  {:.3}x the CPU engine  logits {}",
            dot,
            gpu.dot(),
            gpu.max_batch(),
            rate / cpu_rate,
            if exact { "identical" } else { "DIFFER" }
        );
    }
    Ok(())
}

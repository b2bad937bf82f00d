//! One W2A2 ResNet-20 training step (batch 128, 3×32×32, forward + backward + SGD) in nce
//! against the same step in PyTorch eager (`benches/pytorch/train_step.py`, same quantizers,
//! same torch 2.13.0), timed in the same run. Needs `scripts/setup-bench-venv` for the PyTorch
//! side; without it only the nce time is printed.
//!
//! `cargo bench --bench train_step [-- THREADS STEPS [MODEL...]]`
//!
//! With model names (e.g. `resnet20 mobilenetv2x0.35`), it instead times one W2A2 step of each
//! on Fashion-MNIST's 1×28×28 (batch 128), interleaved, with each model's time relative to the
//! first: how the committed examples were sized (docs/results.md, "MobileNetV2").

use nce::graph::{build, BitConfig, ModelKind, Shape};
use nce::models::{Model, ModelOptions};
use nce::train::sgd::Sgd;
use std::process::Command;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

fn nce_step_ms(threads: usize, steps: usize) -> f64 {
    model_step_ms(ModelKind::Resnet20, Shape::new(3, 32, 32), threads, steps)
}

fn model_step_ms(kind: ModelKind, input: Shape, threads: usize, steps: usize) -> f64 {
    tch::set_num_threads(threads as i32);
    tch::manual_seed(0);
    let net = build(kind, input, 10, None, &BitConfig::uniform(2)).expect("graph");
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Model::new(&vs.root(), &net, &ModelOptions::default()).expect("model");
    let params: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    let mut sgd = Sgd::new(0.9, true);
    let x = Tensor::rand([128, input.c as i64, input.h as i64, input.w as i64], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [128], (Kind::Int64, Device::Cpu));
    let mut times = Vec::new();
    for i in 0..steps + 2 {
        let t = Instant::now();
        let loss = nn::ModuleT::forward_t(&model, &x, true).cross_entropy_for_logits(&y);
        Sgd::zero_grad(&params);
        loss.backward();
        sgd.step(&params, 0.05, |n| if n.ends_with(".alpha") { 0.0 } else { 5e-4 });
        if i >= 2 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn torch_step_ms(threads: usize, steps: usize) -> Option<f64> {
    let py = concat!(env!("CARGO_MANIFEST_DIR"), "/third_party/torch-venv/bin/python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/pytorch/train_step.py");
    let out = Command::new(py).args([script, &threads.to_string(), &steps.to_string()]).output().ok()?;
    if !out.status.success() {
        eprintln!("pytorch baseline failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout).lines().last()?.to_string();
    let v: serde_json::Value = serde_json::from_str(&line).ok()?;
    v["median_ms"].as_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let threads: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1);
    let steps: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    if args.len() > 2 {
        let models: Vec<ModelKind> = args[2..].iter().map(|m| m.parse().expect("model name")).collect();
        return compare_models(&models, threads, steps);
    }
    // Interleave the two sides so machine noise hits both alike.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        ours.push(nce_step_ms(threads, steps));
        if let Some(t) = torch_step_ms(threads, steps) {
            theirs.push(t);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let o = med(&mut ours);
    println!("W2A2 ResNet-20 train step, batch 128, 3x32x32, {threads} thread(s), median of 3x{steps} steps");
    println!("nce (tch 0.26 / libtorch 2.13): {o:.1} ms");
    if theirs.is_empty() {
        println!("PyTorch eager: not run (scripts/setup-bench-venv creates third_party/torch-venv)");
    } else {
        let t = med(&mut theirs);
        println!("PyTorch 2.13 eager:             {t:.1} ms");
        println!("ratio nce / PyTorch: {:.3} (goal <= 0.9)", o / t);
    }
}

/// Interleaved W2A2 step times of `models` on 1×28×28, relative to the first.
fn compare_models(models: &[ModelKind], threads: usize, steps: usize) {
    let input = Shape::new(1, 28, 28);
    let mut times = vec![Vec::new(); models.len()];
    for _ in 0..3 {
        for (m, t) in models.iter().zip(&mut times) {
            t.push(model_step_ms(*m, input, threads, steps));
        }
    }
    println!("W2A2 train step, batch 128, 1x28x28, {threads} thread(s), median of 3x{steps} steps");
    let med: Vec<f64> = times
        .into_iter()
        .map(|mut v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect();
    for (m, t) in models.iter().zip(&med) {
        println!("{:<20} {t:8.1} ms  {:5.2}x {}", m.name(), t / med[0], models[0].name());
    }
}

//! Measuring latency tables on this machine (`nce measure`) and checking them against a whole
//! model's measured latency, on any [`Backend`] (the tables themselves are described in
//! [`crate::hw`], which knows nothing of engines).
//!
//! Every layer family of a base network is timed over a grid of width ratios, for the input and
//! the output channels independently (the search picks both per layer), with synthetic weights
//! and inputs: latency of these integer kernels does not depend on the values. A residual add is
//! fused into the conv that feeds it, so its cost is measured as the difference between that conv
//! with and without the add; parameter-free shortcuts (option-A subsampling) are read inside the
//! fused add and cost nothing of their own.

use super::backend::{Backend, BackendError};
use super::cpu::Cpu;
use super::plan::{QModel, Step};
use super::{Conv2d, ConvWeights, EngineError, Linear, MaxPool2d, PackedW2, QTensor, Requant, Residual, Weights8};
use crate::data::Rng;
use crate::graph::{Layer, Network, Op, Src};
use crate::hw::{LatencyEntry, LatencyTable};
use std::collections::BTreeMap;
use std::time::Instant;

/// How to time each layer.
#[derive(Clone, Debug)]
pub struct MeasureConfig {
    /// Width ratios of the base width (applied to input and output channels independently).
    pub grid: Vec<f64>,
    /// Untimed runs before timing (caches, branch predictors, frequency ramp-up).
    pub warmup: usize,
    /// Timed runs per layer.
    pub repeats: usize,
    /// Channel counts are rounded to multiples of this.
    pub granularity: usize,
}

impl Default for MeasureConfig {
    fn default() -> Self {
        MeasureConfig { grid: vec![0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0], warmup: 5, repeats: 30, granularity: 1 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Backend(String),
    #[error(transparent)]
    Open(#[from] BackendError),
}

/// A prepared conv: run it on an input (and an optional fused residual).
pub type ConvCall<'a> = Box<dyn Fn(&QTensor, Option<&Residual>) -> Result<(), MeasureError> + 'a>;

/// An engine whose layers can be timed one at a time (the CPU engine, or wgpu's single-op
/// calls); a [`Backend`] hands one out through [`Backend::layers`].
pub trait Runner {
    /// `backend`/`threads`/adapter facts recorded in the table's metadata.
    fn describe(&self) -> Vec<(String, String)>;
    /// Prepares `conv` once and returns a call that runs it (what gets timed).
    fn conv<'a>(&'a self, conv: &'a Conv2d) -> Result<ConvCall<'a>, MeasureError>;
    fn global_avg_pool(&self, x: &QTensor) -> Result<(), MeasureError>;
    fn linear(&self, l: &Linear, x: &[i32]) -> Result<(), MeasureError>;
    fn max_pool(&self, p: &MaxPool2d, x: &QTensor) -> Result<(), MeasureError>;
}

impl Runner for Cpu {
    fn describe(&self) -> Vec<(String, String)> {
        vec![("backend".into(), format!("cpu-{}", self.backend())), ("threads".into(), self.threads().to_string())]
    }
    fn conv<'a>(&'a self, conv: &'a Conv2d) -> Result<ConvCall<'a>, MeasureError> {
        let prepared = self.prepare(conv)?;
        Ok(Box::new(move |x, r| self.conv2d(&prepared, x, r).map(drop).map_err(MeasureError::from)))
    }
    fn global_avg_pool(&self, x: &QTensor) -> Result<(), MeasureError> {
        Cpu::global_avg_pool(self, x).map(drop).map_err(Into::into)
    }
    fn linear(&self, l: &Linear, x: &[i32]) -> Result<(), MeasureError> {
        Cpu::linear(self, l, x).map(drop).map_err(Into::into)
    }
    fn max_pool(&self, p: &MaxPool2d, x: &QTensor) -> Result<(), MeasureError> {
        Cpu::max_pool(self, p, x).map(drop).map_err(Into::into)
    }
}

/// Times `f` `warmup + repeats` times; returns the count, mean and variance in µs of the
/// fastest 80 % of the timed runs.
pub fn time_us<E>(warmup: usize, repeats: usize, mut f: impl FnMut() -> Result<(), E>) -> Result<LatencyEntry, E> {
    for _ in 0..warmup {
        f()?;
    }
    let mut xs = Vec::with_capacity(repeats.max(1));
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        f()?;
        xs.push(t.elapsed().as_secs_f64() * 1e6);
    }
    // The slowest fifth is dropped: on a shared machine those are preemptions, not the kernel.
    xs.sort_by(f64::total_cmp);
    xs.truncate((xs.len() * 4).div_ceil(5).max(1));
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    Ok(LatencyEntry { count: xs.len() as u64, mean_us: mean, var_us2: var })
}

/// Uniform in `lo..hi` (`lo < hi`).
fn range(rng: &mut Rng, lo: i64, hi: i64) -> i64 {
    lo + rng.below((hi - lo).max(1) as u64) as i64
}

fn round_to(c: f64, g: usize) -> usize {
    let g = g.max(1);
    (((c / g as f64).round() as usize).max(1)) * g
}

/// A conv with random codes and a requantisation that keeps outputs spread over `0..=qmax`
/// (so the timed epilogue does the same work as a trained layer's). `groups` > 1 makes a
/// grouped conv (depthwise: `groups == c_in == c_out`).
#[allow(clippy::too_many_arguments)] // a conv's shape, its weight width and qmax: a struct for one caller reads worse
pub fn synthetic_conv(
    rng: &mut Rng,
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    groups: usize,
    w8: bool,
    qmax: u8,
) -> Result<Conv2d, EngineError> {
    let k_len = k * k * c_in / groups.max(1);
    let weights = if w8 {
        ConvWeights::W8(Weights8::new(c_out, k_len, (0..c_out * k_len).map(|_| range(rng, -127, 127) as i8).collect())?)
    } else {
        let codes: Vec<i8> = (0..c_out * k_len).map(|_| [-3i8, -1, 1, 3][rng.below(4) as usize]).collect();
        ConvWeights::W2(PackedW2::pack(c_out, k_len, &codes)?)
    };
    let shift = 16u32;
    let m = ((1u64 << shift) as f64 * qmax as f64 / ((k_len as f64).sqrt() * 3.0 * 3.0)).max(1.0) as i64;
    let requant = Requant {
        m: (0..c_out).map(|_| range(rng, m / 2, m) as i32).collect(),
        b: (0..c_out).map(|_| range(rng, -(1 << shift), 1 << shift) as i32).collect(),
        shift,
        qmax,
    };
    Conv2d::grouped(c_in, groups.max(1), k, stride, pad, weights, requant)
}

fn codes(rng: &mut Rng, h: usize, w: usize, c: usize, max: u8) -> Result<QTensor, EngineError> {
    QTensor::new(h, w, c, (0..h * w * c).map(|_| rng.below(max as u64 + 1) as u8).collect())
}

/// Channels a layer's input may have: the grid over its base count unless it reads the image.
fn input_channels(l: &Layer, cfg: &MeasureConfig) -> Vec<usize> {
    match l.inputs[0] {
        Src::Input => vec![l.in_shape.c],
        Src::Layer(_) => grid_channels(l.in_shape.c, cfg),
    }
}

fn grid_channels(base: usize, cfg: &MeasureConfig) -> Vec<usize> {
    let mut v: Vec<usize> = cfg.grid.iter().map(|r| round_to(base as f64 * r, cfg.granularity)).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Whether `l` is a depthwise conv (`groups` = its channels; the builders give it no slot).
fn is_depthwise(l: &Layer) -> bool {
    matches!(l.op, Op::Conv { groups, .. } if l.width_slot.is_none() || (groups > 1 && groups == l.in_shape.c))
}

/// `l` at `c_in → c_out` channels; a depthwise conv stays depthwise (`groups = c_in`; callers
/// pass `c_out == c_in`).
fn with_channels(l: &Layer, c_in: usize, c_out: usize) -> Layer {
    let mut l = l.clone();
    if is_depthwise(&l) {
        if let Op::Conv { groups, .. } = &mut l.op {
            *groups = c_in;
        }
    }
    l.in_shape.c = c_in;
    l.out_shape.c = c_out;
    l
}

/// Measures every layer family of `net` (a base network) over the width grid on the CPU engine.
/// `progress` is called after each signature with (done, total).
pub fn measure_cpu(
    net: &Network,
    cpu: &Cpu,
    cfg: &MeasureConfig,
    progress: impl FnMut(usize, usize),
) -> Result<LatencyTable, MeasureError> {
    measure(net, cpu, cfg, progress)
}

/// One layer family at one width point of a table: what [`measure`] times (and what other
/// measurements, such as instruction counts under an emulator, count) for a signature.
#[derive(Clone, Debug)]
pub enum LayerJob {
    /// A conv at `c_in → c_out` (layer `l` holds the shapes); with `residual`, the add fused
    /// into it, costed as the fused conv minus the plain one.
    Conv {
        c_in: usize,
        c_out: usize,
        l: Layer,
        residual: bool,
    },
    Pool {
        c: usize,
        l: Layer,
    },
    Linear {
        c_in: usize,
        l: Layer,
    },
    MaxPool {
        c: usize,
        l: Layer,
    },
    /// Parameter-free shortcuts (read inside the fused add): cost 0.
    Free,
}

/// Every layer family of `net` (a base network) over the width grid, by signature (shared
/// shapes appear once).
pub fn layer_jobs(net: &Network, cfg: &MeasureConfig) -> Result<BTreeMap<String, LayerJob>, MeasureError> {
    use LayerJob as Job;
    if cfg.grid.is_empty() || cfg.grid.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
        return Err(MeasureError::Invalid(format!("width grid {:?} must hold positive ratios", cfg.grid)));
    }
    let mut jobs: BTreeMap<String, LayerJob> = BTreeMap::new();
    for l in &net.layers {
        match l.op {
            // A depthwise conv's width is its input's: one entry per input width, in = out = groups.
            Op::Conv { .. } if is_depthwise(l) => {
                for &c in &input_channels(l, cfg) {
                    let v = with_channels(l, c, c);
                    jobs.entry(v.signature()).or_insert(Job::Conv { c_in: c, c_out: c, l: v, residual: false });
                }
            }
            Op::Conv { .. } => {
                for &ci in &input_channels(l, cfg) {
                    for &co in &grid_channels(l.out_shape.c, cfg) {
                        let v = with_channels(l, ci, co);
                        jobs.entry(v.signature()).or_insert(Job::Conv { c_in: ci, c_out: co, l: v, residual: false });
                    }
                }
            }
            Op::Add { .. } => {
                // Timed on the conv that feeds it (inputs[0]) at c → c channels.
                let Src::Layer(j) = l.inputs[0] else { continue };
                let feeder = &net.layers[j];
                if !matches!(feeder.op, Op::Conv { .. }) {
                    continue;
                }
                for &c in &grid_channels(l.out_shape.c, cfg) {
                    let v = with_channels(l, c, c);
                    jobs.entry(v.signature()).or_insert(Job::Conv { c_in: c, c_out: c, l: with_channels(feeder, c, c), residual: true });
                }
            }
            Op::GlobalAvgPool => {
                for &c in &grid_channels(l.in_shape.c, cfg) {
                    let v = with_channels(l, c, c);
                    jobs.entry(v.signature()).or_insert(Job::Pool { c, l: v });
                }
            }
            Op::Linear => {
                for &c in &grid_channels(l.in_shape.c, cfg) {
                    let mut v = l.clone();
                    v.in_shape.c = c;
                    jobs.entry(v.signature()).or_insert(Job::Linear { c_in: c, l: v });
                }
            }
            Op::MaxPool { .. } => {
                for &c in &input_channels(l, cfg) {
                    let v = with_channels(l, c, c);
                    jobs.entry(v.signature()).or_insert(Job::MaxPool { c, l: v });
                }
            }
            Op::Subsample { .. } => {
                for &c in &grid_channels(l.in_shape.c, cfg) {
                    jobs.entry(with_channels(l, c, c).signature()).or_insert(Job::Free);
                }
            }
        }
    }
    Ok(jobs)
}

/// Measures every layer family of `net` (a base network) over the width grid on `runner`.
pub fn measure(
    net: &Network,
    runner: &dyn Runner,
    cfg: &MeasureConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<LatencyTable, MeasureError> {
    use LayerJob as Job;
    let jobs = layer_jobs(net, cfg)?;
    let mut rng = Rng::new(0x6d65_6173);
    let mut table = LatencyTable::default();
    let total = jobs.len();
    for (done, (sig, job)) in jobs.into_iter().enumerate() {
        let entry = match job {
            Job::Conv { c_in, c_out, l, residual } => {
                let Op::Conv { k, stride, pad, groups, .. } = l.op else { unreachable!("conv job") };
                let first = l.wbits > 2;
                let qmax = ((1u32 << l.out_bits.min(8)) - 1) as u8;
                let conv = synthetic_conv(&mut rng, c_in, c_out, k, stride, pad, groups, first, qmax)?;
                let run = runner.conv(&conv)?;
                let amax = if l.abits >= 8 { 255 } else { ((1u32 << l.abits) - 1) as u8 };
                let x = codes(&mut rng, l.in_shape.h, l.in_shape.w, c_in, amax)?;
                let plain = time_us(cfg.warmup, cfg.repeats, || run(&x, None))?;
                if residual {
                    let sc = codes(&mut rng, l.out_shape.h, l.out_shape.w, c_out, qmax)?;
                    let r = Residual { input: &sc, stride: 1, r: 1 << 15 };
                    let fused = time_us(cfg.warmup, cfg.repeats, || run(&x, Some(&r)))?;
                    LatencyEntry {
                        count: fused.count,
                        mean_us: (fused.mean_us - plain.mean_us).max(0.0),
                        var_us2: fused.var_us2 + plain.var_us2,
                    }
                } else {
                    plain
                }
            }
            Job::Pool { c, l } => {
                let x = codes(&mut rng, l.in_shape.h, l.in_shape.w, c, 3)?;
                time_us(cfg.warmup, cfg.repeats, || runner.global_avg_pool(&x))?
            }
            Job::Linear { c_in, l } => {
                let n = c_in * l.in_shape.h * l.in_shape.w;
                let o = l.out_shape.c;
                let w = Weights8::new(o, n, (0..n * o).map(|_| range(&mut rng, -127, 127) as i8).collect())?;
                let lin = Linear::new(w, (0..o).map(|_| range(&mut rng, -1000, 1000) as i32).collect())?;
                let x: Vec<i32> = (0..n).map(|_| range(&mut rng, 0, 3 * 64) as i32).collect();
                time_us(cfg.warmup, cfg.repeats, || runner.linear(&lin, &x))?
            }
            Job::MaxPool { c, l } => {
                let Op::MaxPool { k, stride, pad } = l.op else { unreachable!("max-pool job") };
                let x = codes(&mut rng, l.in_shape.h, l.in_shape.w, c, 255)?;
                let p = MaxPool2d { k, stride, pad };
                time_us(cfg.warmup, cfg.repeats, || runner.max_pool(&p, &x))?
            }
            Job::Free => LatencyEntry { count: 1, mean_us: 0.0, var_us2: 0.0 },
        };
        table.entries.insert(sig, entry);
        progress(done + 1, total);
    }
    for (k, v) in runner.describe() {
        table.meta.insert(k, v);
    }
    table.meta.insert("warmup".into(), cfg.warmup.to_string());
    table.meta.insert("repeats".into(), cfg.repeats.to_string());
    table.meta.insert("grid".into(), cfg.grid.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(","));
    table.meta.insert("model".into(), net.model.clone());
    table.meta.insert("input".into(), net.input.to_string());
    for (k, v) in machine_facts() {
        table.meta.insert(k, v);
    }
    Ok(table)
}

/// CPU model, governor and frequency as far as Linux tells (recorded with each table: a table
/// measured under `powersave` does not predict a `performance` run).
pub fn machine_facts() -> Vec<(String, String)> {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    let cpu = cpu_model();
    let governor = read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").unwrap_or_else(|| "unknown".into());
    let khz = read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq").unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map(|n| n.get().to_string()).unwrap_or_else(|_| "unknown".into());
    vec![("cpu".into(), cpu.replace(' ', "_")), ("governor".into(), governor), ("cur_freq_khz".into(), khz), ("cores".into(), cores)]
}

/// The CPU's model name as `/proc/cpuinfo` gives it (`unknown` elsewhere).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

/// Sum of the table's per-layer latencies over a network, in µs (what `latency-lut` predicts).
pub fn predict_us(table: &LatencyTable, net: &Network) -> Result<f64, MeasureError> {
    net.layers
        .iter()
        .map(|l| {
            let sig = l.signature();
            table
                .lookup_us(&sig)
                .ok_or_else(|| MeasureError::Invalid(format!("{}: no measurement for `{sig}` (layer {})", table.path.display(), l.name)))
        })
        .sum()
}

/// One image of random pixels in the model's input shape (latency does not depend on values).
fn random_image(model: &QModel) -> Vec<u8> {
    let mut rng = Rng::new(7);
    (0..model.net().input.numel()).map(|_| rng.below(256) as u8).collect()
}

/// Whole-model latency of one image on `backend` (what the table must predict): one image per
/// call, as deployed. Open the backend with `max_batch: Some(1)` so its buffers are sized as
/// deployed, and see [`Backend::min_model_runs`] for counts that give a stable number.
pub fn measure_model(backend: &dyn Backend, model: &QModel, warmup: usize, repeats: usize) -> Result<LatencyEntry, MeasureError> {
    let prepared = backend.prepare(model)?;
    let image = random_image(model);
    time_us(warmup, repeats, || prepared.run_batch(&image).map(drop).map_err(MeasureError::from))
}

/// Each step of a real model timed on its own with random codes of the right shapes (what the
/// table's entries are for synthetic layers): `(layer name, signature, µs)`. A fused residual
/// add is timed with its conv and reported under the conv's name. Separates "the table's
/// synthetic layers differ from real ones" from "whole-model overhead" when `--check` misses.
pub fn model_steps(model: &QModel, runner: &dyn Runner, warmup: usize, repeats: usize) -> Result<Vec<(String, String, f64)>, MeasureError> {
    let net = model.net();
    let mut rng = Rng::new(11);
    let shape_of = |s: Src| match s {
        Src::Input => (net.input.h, net.input.w, net.input.c),
        Src::Layer(j) => (net.layers[j].out_shape.h, net.layers[j].out_shape.w, net.layers[j].out_shape.c),
    };
    let mut out = Vec::new();
    for step in &model.steps {
        let Step::Conv { layer, input, conv, residual, .. } = step else { continue };
        let l = &net.layers[*layer];
        let (h, w, c) = shape_of(*input);
        let amax = if matches!(input, Src::Input) { 255 } else { ((1u32 << l.abits.min(8)) - 1) as u8 };
        let x = codes(&mut rng, h, w, c, amax)?;
        let run = runner.conv(conv)?;
        let e = match residual {
            Some((src, stride, r)) => {
                let (rh, rw, rc) = shape_of(*src);
                let sc = codes(&mut rng, rh, rw, rc, 3)?;
                let res = Residual { input: &sc, stride: *stride, r: *r };
                time_us(warmup, repeats, || run(&x, Some(&res)))?
            }
            None => time_us(warmup, repeats, || run(&x, None))?,
        };
        out.push((l.name.clone(), l.signature(), e.mean_us));
    }
    Ok(out)
}

//! `nce measure`: per-layer latency tables for the `latency-lut` plugin, and `--check` of a
//! table's prediction against a whole model's measured latency.

use crate::engine::cpu::{Backend, Cpu};
use crate::export::QModel;
use crate::graph::{self, BitConfig, ModelKind, Shape};
use crate::hw::measure::{self, MeasureConfig};
use crate::hw::LatencyTable;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct MeasureArgs {
    /// Engine to time: cpu (best SIMD path), cpu-scalar, wgpu (single-op calls; see README).
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Model whose layer families are measured.
    #[arg(long, default_value = "resnet20")]
    model: ModelKind,
    /// Input as CxHxW (default: 1x28x28, the Fashion-MNIST/MNIST shape the examples use).
    #[arg(long, default_value = "1x28x28")]
    input: Shape,
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Width ratios of the base widths, for input and output channels independently.
    #[arg(long, value_delimiter = ',', default_values_t = MeasureConfig::default().grid)]
    widths_grid: Vec<f64>,
    /// Round channel counts to multiples of this (the profile's channel granularity).
    #[arg(long, default_value_t = 1)]
    granularity: usize,
    #[arg(long, default_value_t = MeasureConfig::default().warmup)]
    warmup: usize,
    #[arg(long, default_value_t = MeasureConfig::default().repeats)]
    repeats: usize,
    /// Engine threads (1 = the batch-1 latency an edge core sees).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Where to write the table (CSV).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Merge into an existing table at `-o` (e.g. a second input size) instead of replacing it.
    #[arg(long)]
    append: bool,
    /// Instead of measuring a table: compare `--table`'s predicted whole-model latency of this
    /// model file with its measured latency (goal: within ±10 %).
    #[arg(long)]
    check: Option<PathBuf>,
    /// The table `--check` reads.
    #[arg(long)]
    table: Option<PathBuf>,
    /// With `--check`: also time each conv of the model on its own and print it next to the
    /// table's entry (where a miss comes from).
    #[arg(long)]
    per_layer: bool,
    /// Allowed relative error of `--check` before it exits with status 1.
    #[arg(long, default_value_t = 0.10)]
    tolerance: f64,
    /// wgpu adapter (index or name substring; default `NCE_WGPU_ADAPTER`, else the best).
    #[arg(long)]
    adapter: Option<String>,
}

fn engine(a: &MeasureArgs) -> Result<Cpu> {
    let backend = match a.backend.as_str() {
        "cpu" | "wgpu" => Backend::best(),
        "cpu-scalar" => Backend::Scalar,
        other => bail!("unknown backend `{other}` (cpu, cpu-scalar, wgpu)"),
    };
    Ok(Cpu::new(backend, a.threads.max(1))?)
}

#[cfg(feature = "wgpu")]
fn wgpu_engine(a: &MeasureArgs) -> Result<(crate::engine::wgpu::WgpuEngine, crate::engine::wgpu::DotKernel)> {
    use crate::engine::wgpu::{AdapterChoice, DotKernel, WgpuEngine};
    let engine = WgpuEngine::new(&AdapterChoice::from_flag_or_env(a.adapter.as_deref()))?;
    let dot = engine.resolve_dot(DotKernel::from_env()?);
    Ok((engine, dot))
}

/// Predicted vs measured whole-model latency on wgpu.
#[cfg(feature = "wgpu")]
fn measured_wgpu(a: &MeasureArgs, model: &QModel) -> Result<(crate::hw::LatencyEntry, String)> {
    let (engine, dot) = wgpu_engine(a)?;
    let m = measure::measure_model_wgpu(model, &engine, dot, a.warmup.max(3), a.repeats.max(20))?;
    Ok((m, format!("wgpu {} ({dot:?})", engine.adapter().name)))
}

#[cfg(not(feature = "wgpu"))]
fn measured_wgpu(_: &MeasureArgs, _: &QModel) -> Result<(crate::hw::LatencyEntry, String)> {
    bail!("this build has no wgpu backend (build with the `wgpu` feature)")
}

#[cfg(feature = "wgpu")]
fn table_wgpu(a: &MeasureArgs, net: &crate::graph::Network, cfg: &MeasureConfig, progress: impl FnMut(usize, usize)) -> Result<LatencyTable> {
    let (engine, dot) = wgpu_engine(a)?;
    Ok(measure::measure(net, &measure::WgpuRunner { engine: &engine, dot }, cfg, progress)?)
}

#[cfg(not(feature = "wgpu"))]
fn table_wgpu(_: &MeasureArgs, _: &crate::graph::Network, _: &MeasureConfig, _: impl FnMut(usize, usize)) -> Result<LatencyTable> {
    bail!("this build has no wgpu backend (build with the `wgpu` feature)")
}

pub fn run(a: MeasureArgs) -> Result<ExitCode> {
    let cpu = engine(&a)?;
    if let Some(model_path) = &a.check {
        let table_path = a.table.as_ref().or(a.output.as_ref()).context("--check needs --table FILE.csv")?;
        let table = LatencyTable::load(table_path)?;
        let model = QModel::load(model_path)?;
        let predicted = measure::predict_us(&table, model.net())?;
        let (measured, engine_name) = if a.backend == "wgpu" {
            measured_wgpu(&a, &model)?
        } else {
            (measure::measure_model_cpu(&model, &cpu, a.warmup.max(10), a.repeats.max(100))?, format!("cpu-{} × {} thread(s)", cpu.backend(), cpu.threads()))
        };
        let err = predicted / measured.mean_us - 1.0;
        println!("model      {}", model_path.display());
        println!("table      {} ({})", table_path.display(), table.meta.get("backend").map(String::as_str).unwrap_or("?"));
        println!("engine     {engine_name}");
        println!("predicted  {predicted:.1} µs");
        println!("measured   {:.1} µs ± {:.1} (n = {})", measured.mean_us, measured.var_us2.sqrt(), measured.count);
        if a.per_layer {
            println!("{:<20} {:>10} {:>10}  signature", "layer", "real µs", "table µs");
            for (name, sig, us) in measure::model_steps_cpu(&model, &cpu, a.warmup, a.repeats)? {
                let t = table.lookup_us(&sig).unwrap_or(f64::NAN);
                println!("{name:<20} {us:>10.1} {t:>10.1}  {sig}");
            }
        }
        let ok = err.abs() <= a.tolerance;
        println!("error      {:+.1} % ({} ±{:.0} %)", 100.0 * err, if ok { "within" } else { "OUTSIDE" }, 100.0 * a.tolerance);
        return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }
    let output = a.output.clone().context("give -o FILE.csv for the table (or --check MODEL.nce --table FILE.csv)")?;
    let net = graph::build(a.model, a.input, a.classes, None, &BitConfig::uniform(2))?;
    let cfg = MeasureConfig { grid: a.widths_grid.clone(), warmup: a.warmup, repeats: a.repeats, granularity: a.granularity };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(indicatif::ProgressStyle::with_template("measure [{bar:30}] {pos}/{len} layers ({elapsed}<{eta})").expect("static template").progress_chars("=> "));
    let progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let mut table = if a.backend == "wgpu" { table_wgpu(&a, &net, &cfg, progress)? } else { measure::measure_cpu(&net, &cpu, &cfg, progress)? };
    bar.finish_and_clear();
    table.path = output.clone();
    let base = measure::predict_us(&table, &net)?;
    table.meta.insert("base_model_us".into(), format!("{base:.1}"));
    if a.append && output.is_file() {
        let old = LatencyTable::load(&output)?;
        for (k, v) in old.meta {
            match table.meta.get_mut(&k) {
                Some(new) if (k == "input" || k == "base_model_us" || k == "model") && *new != v => *new = format!("{v},{new}"),
                Some(_) => {}
                None => {
                    table.meta.insert(k, v);
                }
            }
        }
        for (sig, e) in old.entries {
            table.entries.entry(sig).or_insert(e);
        }
    }
    crate::fsutil::write_atomic(&output, table.to_csv().as_bytes(), &Default::default())?;
    println!("{} signatures → {}", table.entries.len(), output.display());
    println!("predicted base {} latency: {base:.1} µs ({})", a.model, table.meta.get("backend").map(String::as_str).unwrap_or("?"));
    Ok(ExitCode::SUCCESS)
}

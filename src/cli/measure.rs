//! `nce measure`: per-layer latency tables for the `latency-lut` plugin, and `--check` of a
//! table's prediction against a whole model's measured latency.

use crate::engine::measure::{self, MeasureConfig, Runner};
use crate::engine::plan::QModel;
use crate::engine::{Backend, BackendKind, BackendOptions};
use crate::graph::{self, BitConfig, ModelKind, Shape};
use crate::hw::LatencyTable;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct MeasureArgs {
    /// Engine to time: cpu (best SIMD path), cpu-scalar, wgpu (single-op calls; see README).
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
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
    #[arg(long, default_value_t = MeasureConfig::default().repeats, value_parser = super::args::positive)]
    repeats: usize,
    /// Engine threads (1 = the batch-1 latency an edge core sees; at most 1,024).
    #[arg(long, default_value_t = 1, value_parser = super::args::threads)]
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

/// The backend to time, sized for one image per call (batch-1 latency, as deployed).
fn open(a: &MeasureArgs) -> Result<Box<dyn Backend>> {
    let opts = BackendOptions { layer_threads: a.threads.max(1), image_threads: 1, adapter: a.adapter.clone(), max_batch: Some(1) };
    Ok(crate::engine::open(a.backend, &opts)?)
}

/// The backend's single-layer calls (what tables and `--per-layer` time).
fn layers(backend: &dyn Backend) -> Result<&dyn Runner> {
    backend.layers().with_context(|| format!("backend {} cannot time single layers", backend.name()))
}

pub fn run(a: MeasureArgs) -> Result<ExitCode> {
    let backend = open(&a)?;
    if let Some(model_path) = &a.check {
        let table_path = a.table.as_ref().or(a.output.as_ref()).context("--check needs --table FILE.csv")?;
        let table = LatencyTable::load(table_path)?;
        let model = QModel::load(model_path)?;
        let predicted = measure::predict_us(&table, model.net())?;
        let (min_warmup, min_repeats) = backend.min_model_runs();
        let measured = measure::measure_model(&*backend, &model, a.warmup.max(min_warmup), a.repeats.max(min_repeats))?;
        let engine_name = format!("{} on {}", backend.name(), backend.device());
        let err = predicted / measured.mean_us - 1.0;
        println!("model      {}", model_path.display());
        println!("table      {} ({})", table_path.display(), table.meta.get("backend").map(String::as_str).unwrap_or("?"));
        println!("engine     {engine_name}");
        println!("predicted  {predicted:.1} µs");
        println!("measured   {:.1} µs ± {:.1} (n = {})", measured.mean_us, measured.var_us2.sqrt(), measured.count);
        if a.per_layer {
            println!("{:<20} {:>10} {:>10}  signature", "layer", "real µs", "table µs");
            for (name, sig, us) in measure::model_steps(&model, layers(&*backend)?, a.warmup, a.repeats)? {
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
    bar.set_style(
        indicatif::ProgressStyle::with_template("measure [{bar:30}] {pos}/{len} layers ({elapsed}<{eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    let progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let mut table = measure::measure(&net, layers(&*backend)?, &cfg, progress)?;
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

//! `nce measure`: per-layer latency tables for the `latency-lut` plugin, and `--check` of a
//! table's prediction against a whole model's measured latency.

use crate::engine::c_runtime::{Kernels, ResourceReport, ASSUMED_CPI, M7_CLOCK_MHZ};
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
    /// Engine to time: cpu (best SIMD path), cpu-scalar, cpu-swar, cpu-avx2, cpu-avx512, wgpu (single-op calls; see README).
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
    /// Model whose layer families are measured.
    #[arg(long, default_value = "resnet20")]
    model: ModelKind,
    /// Width multiplier of a MobileNet (0.1 to 4, two decimals; default 1)
    #[arg(long, value_parser = crate::cli::args::positive_f64)]
    width_mult: Option<f64>,
    /// Input as CxHxW (default: 1x28x28, the Fashion-MNIST/MNIST shape the examples use).
    #[arg(long, default_value = "1x28x28")]
    input: Shape,
    /// Classes of the model's classifier.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Width ratios of the base widths, for input and output channels independently.
    #[arg(long, value_delimiter = ',', default_values_t = MeasureConfig::default().grid)]
    widths_grid: Vec<f64>,
    /// Round channel counts to multiples of this (the profile's channel granularity).
    #[arg(long, default_value_t = 1)]
    granularity: usize,
    /// Untimed runs before timing each layer (or model).
    #[arg(long, default_value_t = MeasureConfig::default().warmup)]
    warmup: usize,
    /// Timed runs per layer (or model); the table keeps their mean and variance.
    #[arg(long, default_value_t = MeasureConfig::default().repeats, value_parser = super::args::positive)]
    repeats: usize,
    /// Cores to compute on, as in every command: the CPU engine splits each layer of the one
    /// image over them (1 = the batch-1 latency an edge core sees; at most 1,024).
    #[arg(long, default_value_t = 1, value_parser = super::args::threads)]
    threads: usize,
    /// Where to write the table (CSV; parent folders are created).
    #[arg(short = 'o', long = "out", alias = "output")]
    out: Option<PathBuf>,
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
    /// With `--check` on a backend that counts (qemu-cortex-m7): the hardware profile whose
    /// memory (flash, SRAM) the model's build must fit; exit 1 when it does not.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// With `--check` on qemu-cortex-m7: also count a plain int8 C reference of the same
    /// network (TFLite-Micro-style kernels, pseudo-random weights) through the same harness and
    /// print its flash, RAM and instructions beside the 2-bit runtime's (kernels as
    /// `NCE_C_KERNELS`).
    #[arg(long)]
    int8_peer: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// `nce measure --json` of a table measurement.
#[derive(serde::Serialize)]
struct TableJson<'a> {
    table: &'a std::path::Path,
    signatures: usize,
    backend: &'a str,
    model: String,
    /// The table's prediction for the base model, µs.
    predicted_base_us: f64,
}

/// `nce measure --check --json`.
#[derive(serde::Serialize)]
struct CheckJson<'a> {
    model: &'a std::path::Path,
    table: &'a std::path::Path,
    table_backend: &'a str,
    engine: String,
    predicted_us: f64,
    measured_us: f64,
    measured_std_us: f64,
    runs: u64,
    /// predicted / measured − 1.
    error: f64,
    tolerance: f64,
    within: bool,
    /// The table was measured with this engine on this CPU model: a miss means the machine's
    /// speed changed between the two measurements, not that the table is foreign.
    same_setup: bool,
    per_layer: Vec<LayerJson>,
}

#[derive(serde::Serialize)]
struct LayerJson {
    layer: String,
    signature: String,
    measured_us: f64,
    /// `null` when the table has no entry for the signature.
    table_us: Option<f64>,
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
    match &a.check {
        Some(model) => check(&a, &*backend, model),
        None => measure_table(&a, &*backend),
    }
}

/// `--check`: the table's predicted whole-model latency against the measured one.
fn check(a: &MeasureArgs, backend: &dyn Backend, model_path: &std::path::Path) -> Result<ExitCode> {
    let table_path = a.table.as_ref().or(a.out.as_ref()).ok_or_else(|| super::usage("--check needs --table FILE.csv"))?;
    let table = LatencyTable::load(table_path)?;
    let model = QModel::load(model_path)?;
    let predicted = measure::predict_us(&table, model.net())?;
    let images = random_images(&model, 4);
    if let Some(counted) = backend.count_model(&model, &images) {
        let counted = counted?;
        let status = print_counted(a, backend, (model_path, &table, table_path), predicted, &counted)?;
        if a.int8_peer {
            let peer = crate::engine::c_runtime::int8_peer_report(&model, Kernels::from_env()?, &images)?;
            print_peer(&counted, &peer);
        }
        return Ok(status);
    }
    if a.int8_peer {
        return Err(super::usage("--int8-peer needs --backend qemu-cortex-m7"));
    }
    let (min_warmup, min_repeats) = backend.min_model_runs();
    let measured = measure::measure_model(backend, &model, a.warmup.max(min_warmup), a.repeats.max(min_repeats))?;
    let per_layer = match a.per_layer {
        false => vec![],
        true => measure::model_steps(&model, layers(backend)?, a.warmup, a.repeats)?
            .into_iter()
            .map(|(layer, sig, us)| LayerJson { layer, table_us: table.lookup_us(&sig), signature: sig, measured_us: us })
            .collect(),
    };
    let err = predicted / measured.mean_us - 1.0;
    let here_cpu = measure::cpu_model().replace(' ', "_");
    let same_setup =
        table.meta.get("backend").is_some_and(|b| *b == backend.name()) && table.meta.get("cpu").is_some_and(|c| *c == here_cpu);
    let r = CheckJson {
        model: model_path,
        table: table_path,
        table_backend: table.meta.get("backend").map(String::as_str).unwrap_or("?"),
        engine: format!("{} on {}", backend.name(), backend.device()),
        predicted_us: predicted,
        measured_us: measured.mean_us,
        measured_std_us: measured.var_us2.sqrt(),
        runs: measured.count,
        error: err,
        tolerance: a.tolerance,
        within: err.abs() <= a.tolerance,
        same_setup,
        per_layer,
    };
    if a.json {
        super::emit_json(&r)?;
    } else {
        super::emit(&check_text(&r))?;
    }
    Ok(if r.within { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn check_text(r: &CheckJson) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "model      {}", r.model.display());
    let _ = writeln!(out, "table      {} ({})", r.table.display(), r.table_backend);
    let _ = writeln!(out, "engine     {}", r.engine);
    let _ = writeln!(out, "predicted  {:.1} µs", r.predicted_us);
    let _ = writeln!(out, "measured   {:.1} µs ± {:.1} (n = {})", r.measured_us, r.measured_std_us, r.runs);
    if !r.per_layer.is_empty() {
        let _ = writeln!(out, "{:<20} {:>10} {:>10}  signature", "layer", "real µs", "table µs");
    }
    for l in &r.per_layer {
        let _ = writeln!(out, "{:<20} {:>10.1} {:>10.1}  {}", l.layer, l.measured_us, l.table_us.unwrap_or(f64::NAN), l.signature);
    }
    let verdict = if r.within { "within" } else { "OUTSIDE" };
    let _ = writeln!(out, "error      {:+.1} % ({verdict} ±{:.0} %)", 100.0 * r.error, 100.0 * r.tolerance);
    let remeasure = format!("`nce measure --backend cpu --model resnet20 --threads 1 -o {}`", r.table.display());
    if !r.within && r.same_setup {
        let _ = writeln!(
            out,
            "the table was measured with this engine on this CPU model, so the machine ran at another speed then \
             (a shared VM can change ~2x within minutes; docs/results.md): check again, or re-measure it under the \
             load you will run in with {remeasure}"
        );
    } else if !r.within {
        let _ = writeln!(out, "the table was measured on another machine or setup: re-measure it here with {remeasure}");
    }
    out
}

/// Measures a latency table and writes it to `-o`.
fn measure_table(a: &MeasureArgs, backend: &dyn Backend) -> Result<ExitCode> {
    let output = a.out.clone().ok_or_else(|| super::usage("give -o FILE.csv for the table (or --check MODEL.nce --table FILE.csv)"))?;
    let model = super::args::model_kind(a.model, a.width_mult)?;
    let net = graph::build(model, a.input, a.classes, None, &BitConfig::uniform(2))?;
    let cfg = MeasureConfig { grid: a.widths_grid.clone(), warmup: a.warmup, repeats: a.repeats, granularity: a.granularity };
    let bar = super::progress::bar(0, "measure", "layers");
    let progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let mut table = match backend.count_table(&net, &cfg) {
        Some(counted) => counted?,
        None => measure::measure(&net, layers(backend)?, &cfg, progress)?,
    };
    bar.finish_and_clear();
    table.path = output.clone();
    let old = if a.append && output.is_file() { Some(LatencyTable::load(&output)?) } else { None };
    if let Some(old) = &old {
        keep_measured(&mut table, old);
    }
    let base = measure::predict_us(&table, &net)?;
    table.meta.insert("base_model_us".into(), format!("{base:.1}"));
    if let Some(old) = old {
        join_meta(&mut table, old);
    }
    crate::fsutil::write_atomic(&output, table.to_csv().as_bytes(), &Default::default())?;
    let r = TableJson {
        table: &output,
        signatures: table.entries.len(),
        backend: table.meta.get("backend").map(String::as_str).unwrap_or("?"),
        model: model.to_string(),
        predicted_base_us: base,
    };
    if a.json {
        super::emit_json(&r)?;
    } else {
        let text = format!(
            "{} signatures → {}\npredicted base {} latency: {:.1} µs ({})\n",
            r.signatures,
            r.table.display(),
            r.model,
            r.predicted_base_us,
            r.backend
        );
        super::emit(&text)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `--append`: every signature `old` already has keeps its measurement, so the base-model
/// predictions recorded with it stay exact; the new run adds only signatures it lacks.
fn keep_measured(table: &mut LatencyTable, old: &LatencyTable) {
    for (sig, e) in &old.entries {
        table.entries.insert(sig.clone(), e.clone());
    }
}

/// `--append`: joins differing metadata (inputs, models and base predictions as lists).
fn join_meta(table: &mut LatencyTable, old: LatencyTable) {
    for (k, v) in old.meta {
        match table.meta.get_mut(&k) {
            Some(new) if (k == "input" || k == "base_model_us" || k == "model") && *new != v => *new = format!("{v},{new}"),
            Some(_) => {}
            None => {
                table.meta.insert(k, v);
            }
        }
    }
}

/// `n` images of random pixels in the model's input shape (counts barely depend on values).
fn random_images(model: &QModel, n: usize) -> Vec<u8> {
    let mut rng = crate::data::Rng::new(7);
    (0..n * model.net().input.numel()).map(|_| rng.below(256) as u8).collect()
}

/// `--check` on a backend that counts: flash, RAM (against `--profile`), instructions per
/// inference and per layer, and the table's prediction against the counted whole.
fn print_counted(
    a: &MeasureArgs,
    backend: &dyn Backend,
    table: (&std::path::Path, &LatencyTable, &PathBuf),
    predicted: f64,
    r: &ResourceReport,
) -> Result<ExitCode> {
    let (model_path, table, table_path) = table;
    let us = ResourceReport::us(r.instructions);
    println!("model        {}", model_path.display());
    println!("table        {} ({})", table_path.display(), table.meta.get("backend").map(String::as_str).unwrap_or("?"));
    println!("engine       {} on {}", r.backend, backend.device());
    println!("flash        {} bytes (.text + .rodata + .data of the package's objects: nce_model.o, nce_runtime.o)", r.flash_bytes);
    println!(
        "RAM          {} bytes = static {} (arena {}, SIMD scratch {}) + stack high-water {}",
        r.ram_bytes(),
        r.static_ram_bytes,
        r.arena_bytes,
        r.scratch_bytes,
        r.stack_bytes
    );
    println!("instructions {:.0} per inference ({} random images; {:.1} per timer tick)", r.instructions, r.images, r.insn_per_tick);
    println!("{:<34} {:>12} {:>10} {:>10}", "step", "instructions", "µs", "table µs");
    for s in &r.steps {
        let t: f64 = s.signatures.iter().map(|sig| table.lookup_us(sig).unwrap_or(f64::NAN)).sum();
        println!("{:<34} {:>12.0} {:>10.1} {:>10.1}", s.name, s.instructions, ResourceReport::us(s.instructions), t);
    }
    println!(
        "counted      {us:.1} µs at {M7_CLOCK_MHZ} MHz and {ASSUMED_CPI} cycle per instruction (QEMU counts instructions, not cycles)"
    );
    println!("predicted    {predicted:.1} µs (table)");
    let err = predicted / us - 1.0;
    let mut ok = err.abs() <= a.tolerance;
    println!("error        {:+.1} % ({} ±{:.0} %)", 100.0 * err, if ok { "within" } else { "OUTSIDE" }, 100.0 * a.tolerance);
    if let Some(p) = &a.profile {
        let profile = crate::hw::Profile::load(p)?;
        let (flash_ok, ram_ok) =
            (r.flash_bytes <= profile.memory.weight_buffer_bytes, r.ram_bytes() <= profile.memory.activation_buffer_bytes);
        println!(
            "{}: flash {} of {} bytes ({}), RAM {} of {} bytes ({})",
            profile.name,
            r.flash_bytes,
            profile.memory.weight_buffer_bytes,
            if flash_ok { "fits" } else { "DOES NOT FIT" },
            r.ram_bytes(),
            profile.memory.activation_buffer_bytes,
            if ram_ok { "fits" } else { "DOES NOT FIT" }
        );
        ok &= flash_ok && ram_ok;
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `--int8-peer`: the plain int8 reference of the same network beside the 2-bit build.
fn print_peer(two_bit: &ResourceReport, peer: &ResourceReport) {
    println!();
    println!("int8 peer    {}: the same network as plain int8 C (TFLite-Micro-style reference", peer.backend);
    println!("             kernels, per-channel requantisation, separate residual adds; pseudo-random weights)");
    println!("{:<36} {:>14} {:>14} {:>10}", "", "2-bit runtime", "int8 peer", "int8 / 2-bit");
    let rows = [
        ("flash bytes", two_bit.flash_bytes as f64, peer.flash_bytes as f64),
        ("RAM bytes (static + stack)", two_bit.ram_bytes() as f64, peer.ram_bytes() as f64),
        ("instructions per inference", two_bit.instructions, peer.instructions),
    ];
    for (what, a, b) in rows {
        println!("{what:<36} {a:>14.0} {b:>14.0} {:>10.2}", b / a.max(1.0));
    }
    let parts = |r: &ResourceReport| format!("{}/{}/{}", r.arena_bytes, r.scratch_bytes, r.stack_bytes);
    println!("{:<36} {:>14} {:>14}", "  arena/scratch/stack bytes", parts(two_bit), parts(peer));
    let ms = |r: &ResourceReport| ResourceReport::us(r.instructions) / 1e3;
    println!("{:<36} {:>14.1} {:>14.1}", "ms at 216 MHz, 1 cycle/instruction", ms(two_bit), ms(peer));
    println!("{:<36} {:>14}", "int8 peer step", "instructions");
    for s in &peer.steps {
        println!("{:<36} {:>14.0}", s.name, s.instructions);
    }
}

//! `nce export` and `nce validate`.

use super::validate_json::ValidateJson;
use crate::engine::compare::argmax;
use crate::engine::cpu::Cpu;
#[cfg(feature = "train")]
use crate::engine::onnx::OnnxForm;
use crate::engine::plan::{LayerOut, QModel};
use crate::engine::{BackendKind, BackendOptions};
#[cfg(feature = "train")]
use anyhow::bail;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A W2A2 checkpoint written by `nce train`.
    checkpoint: PathBuf,
    /// Output model file (`.nce`).
    #[arg(short, long, required_unless_present_any = ["onnx", "qonnx", "c_runtime"])]
    out: Option<PathBuf>,
    /// Also (or only) write the model as ONNX in QDQ form (opset 17, runs in stock ONNX
    /// Runtime; docs/onnx.md).
    #[arg(long)]
    onnx: Option<PathBuf>,
    /// Also (or only) write the model as QONNX (`Quant` nodes, bit width 2; for FINN / qonnx).
    #[arg(long)]
    qonnx: Option<PathBuf>,
    /// Also write the arrays as a C header (for microcontrollers).
    #[arg(long)]
    c_header: Option<PathBuf>,
    /// Also (or only) write a self-contained C99 package (model, runtime, test harnesses) into
    /// this folder: `nce_run(input, logits)` with no malloc and no floating point (README, "C").
    /// Files there that nce did not write are never overwritten.
    #[arg(long)]
    c_runtime: Option<PathBuf>,
    /// Record the hardware profile the network was built for.
    #[arg(long)]
    profile: Option<String>,
}

#[cfg(feature = "train")]
impl ExportArgs {
    /// Every output file with the format written there.
    fn outputs(&self) -> Vec<(&PathBuf, Option<OnnxForm>)> {
        let mut o: Vec<(&PathBuf, Option<OnnxForm>)> = self.out.iter().map(|p| (p, None)).collect();
        o.extend(self.onnx.iter().map(|p| (p, Some(OnnxForm::Qdq))));
        o.extend(self.qonnx.iter().map(|p| (p, Some(OnnxForm::Qonnx))));
        o
    }
}

#[cfg(feature = "train")]
pub fn export(a: ExportArgs) -> Result<ExitCode> {
    use crate::export::convert;
    use crate::fsutil::{self, WriteOptions};
    let outputs = a.outputs();
    // Refuse bad outputs before the (slow) conversion, and never write two outputs to one file.
    let mut protected: Vec<&PathBuf> = vec![&a.checkpoint];
    for (p, _) in &outputs {
        fsutil::check_target(p, &WriteOptions::protecting(protected.iter().copied()))?;
        protected.push(p);
    }
    if let Some(h) = &a.c_header {
        fsutil::check_target(h, &WriteOptions::protecting(protected.iter().copied()))?;
    }
    for f in c_runtime_files(&a) {
        fsutil::check_target(&f, &WriteOptions::protecting([&a.checkpoint]))?;
        crate::engine::c_runtime::check_overwrite(&f)?;
    }
    let m = crate::train::load_model(&a.checkpoint)?;
    let layers = convert::int_layers(&m).with_context(|| format!("exporting {}", a.checkpoint.display()))?;
    let container = convert::to_container(&m, &layers, &super::recorded_source(&a.checkpoint, a.out.as_deref()), a.profile.clone())?;
    let model = QModel::from_container(&container)?;
    let opts = WriteOptions::protecting([&a.checkpoint]);
    for (path, form) in outputs {
        match form {
            None => write_nce(path, &container, &m.meta.net, &opts)?,
            Some(form) => {
                let bytes = crate::engine::onnx::to_bytes(&model, form)?;
                fsutil::write_atomic(path, &bytes, &opts)?;
                println!("wrote {} ({} bytes, ONNX opset {}, {})", path.display(), bytes.len(), crate::engine::onnx::OPSET, form.name());
            }
        }
    }
    if let Some(h) = &a.c_header {
        let guard = h.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| "nce_model_h".into());
        let text = crate::export::c_header::to_c_header(&container, &guard);
        fsutil::write_atomic(h, text.as_bytes(), &opts)?;
        println!("wrote {}", h.display());
    }
    write_c_runtime(&a, &model)?;
    Ok(ExitCode::SUCCESS)
}

/// The paths `--c-runtime DIR` writes (checked before the slow conversion).
#[cfg(feature = "train")]
fn c_runtime_files(a: &ExportArgs) -> Vec<PathBuf> {
    let Some(dir) = &a.c_runtime else { return Vec::new() };
    let names = ["nce_model.h", "nce_model.c"].into_iter().chain(crate::engine::c_runtime::RUNTIME_FILES.iter().map(|(n, _)| *n));
    names.map(|n| dir.join(n)).collect()
}

/// `--c-runtime DIR`: the C package of the exported model.
#[cfg(feature = "train")]
fn write_c_runtime(a: &ExportArgs, model: &QModel) -> Result<()> {
    let Some(dir) = &a.c_runtime else { return Ok(()) };
    let pkg = crate::engine::c_runtime::generate(model).with_context(|| format!("writing the C package into {}", dir.display()))?;
    for (name, text) in &pkg.files {
        crate::fsutil::write_atomic(&dir.join(name), text.as_bytes(), &crate::fsutil::WriteOptions::protecting([&a.checkpoint]))?;
    }
    let (files, arena, scratch, steps) = (pkg.files.len(), pkg.arena_bytes, pkg.scratch_bytes, pkg.steps);
    println!("wrote {} ({files} files; arena {arena} bytes, SIMD scratch {scratch} bytes, {steps} steps)", dir.display());
    Ok(())
}

/// Writes the `.nce` container and reads it back through the same validation every user of
/// the file goes through.
#[cfg(feature = "train")]
fn write_nce(
    path: &std::path::Path,
    container: &crate::export::format::Container,
    net: &crate::graph::Network,
    opts: &crate::fsutil::WriteOptions,
) -> Result<()> {
    let bytes = crate::export::format::encode(container)?;
    crate::fsutil::write_atomic(path, &bytes, opts)?;
    QModel::load(path)?;
    let packed_bits: u64 = net.layers.iter().filter(|l| l.wbits == 2).map(|l| l.weight_count() as u64 * 2).sum();
    println!(
        "wrote {} ({} bytes; 2-bit weights {} bytes packed, {} arrays)",
        path.display(),
        bytes.len(),
        packed_bits / 8,
        container.arrays.len()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct ValidateArgs {
    /// A model file written by `nce export`.
    model: PathBuf,
    #[command(flatten)]
    data: super::args::DataArgs,
    /// cpu (the fastest kernels of this machine) and cpu-scalar (the reference) are compared
    /// layer by layer with the training-time simulation; any other backend (wgpu:
    /// `NCE_WGPU_DOT=shift|dot4` picks the 2-bit kernel) logit for logit with the CPU engine.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
    /// wgpu adapter: an index or name substring from `nce adapters` (default: `NCE_WGPU_ADAPTER`,
    /// else the best one).
    #[arg(long)]
    adapter: Option<String>,
    /// The checkpoint to simulate (default: the one recorded in the model file).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Cores to compute on (the CPU engine's threads, ONNX Runtime's intra-op threads, emulators
    /// side by side), as in every command (at most 1,024).
    #[arg(long, default_value_t = 2, value_parser = super::args::threads)]
    threads: usize,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn validate(a: ValidateArgs) -> Result<ExitCode> {
    let model = QModel::load(&a.model)?;
    let (name, root) = a.data.source.resolve("fashion-mnist")?;
    let ds = crate::data::load_for(&name, &root, crate::data::Split::Test, a.data.test_subset, Some(model.net().input))
        .with_context(|| format!("validating {}", a.model.display()))?;
    let Some(backend) = a.backend.cpu_isa() else {
        return validate_against_cpu(&a, &model, &ds);
    };
    let cpu = Cpu::new(backend, a.threads.max(1))?;
    let t = Instant::now();
    let outs = super::validate_json::run_layers(&model, &cpu, &ds, a.threads)
        .with_context(|| format!("running {} on the {backend:?} engine", a.model.display()))?;
    let secs = t.elapsed().as_secs_f64();
    let n = ds.len();
    let correct = outs
        .iter()
        .zip(&ds.labels)
        .filter(|(o, &y)| matches!(o.last(), Some(Some(LayerOut::Logits(l))) if argmax(l) == y as usize))
        .count();
    let accuracy = correct as f64 / n as f64;
    let (network, data, backend_name) = (model.net().model.clone(), ds.name.clone(), format!("{backend:?}"));
    let base = ValidateJson {
        model: a.model.clone(),
        network,
        data,
        images: n,
        backend: backend_name,
        accuracy,
        exact: false,
        simulation: None,
        versus_cpu: None,
    };
    if a.json {
        return compare_with_simulation(&a, &model, &ds, &outs, base);
    }
    println!(
        "{}: {} on {} {} test images, {:?} kernels: accuracy {:.2}% ({:.2} ms per image per thread)",
        a.model.display(),
        model.net().model,
        n,
        ds.name,
        backend,
        100.0 * correct as f64 / n as f64,
        secs * 1e3 * a.threads.max(1) as f64 / n as f64
    );
    compare_with_simulation(&a, &model, &ds, &outs, base)
}

#[cfg(not(feature = "train"))]
fn compare_with_simulation(
    a: &ValidateArgs,
    _: &QModel,
    _: &crate::data::Dataset,
    _: &[Vec<Option<LayerOut>>],
    base: ValidateJson,
) -> Result<ExitCode> {
    if a.json {
        super::emit_json(&ValidateJson { exact: true, ..base })?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("(built without the `train` feature: no tch simulation to compare with)");
    Ok(ExitCode::SUCCESS)
}

/// Compares every layer's integer output of the engine with the tch integer simulation.
#[cfg(feature = "train")]
fn compare_with_simulation(
    a: &ValidateArgs,
    model: &QModel,
    ds: &crate::data::Dataset,
    outs: &[Vec<Option<LayerOut>>],
    base: ValidateJson,
) -> Result<ExitCode> {
    let ckpt = match (&a.checkpoint, &model.header.source) {
        (Some(c), _) => c.clone(),
        (None, Some(s)) => super::recorded_path(&a.model, s),
        (None, None) => bail!("{} records no checkpoint; pass --checkpoint", a.model.display()),
    };
    let m = crate::train::load_model(&ckpt).with_context(|| format!("loading the checkpoint to simulate ({})", ckpt.display()))?;
    let r = crate::export::validate::compare(model, &m, ds, outs)?;
    if a.json {
        let simulation = Some(super::validate_json::SimulationJson::new(ckpt.clone(), &r));
        super::emit_json(&ValidateJson { exact: r.exact(), simulation, ..base })?;
        return Ok(if r.exact() { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }
    let n = r.images as f64;
    println!("tch integer simulation of {}: accuracy {:.2}%", ckpt.display(), 100.0 * r.simulation_correct as f64 / n);
    println!("tch float fake-quant model (reference): accuracy {:.2}%", 100.0 * r.float_correct as f64 / n);
    println!("argmax agreement engine vs simulation: {:.2}% ({}/{})", 100.0 * r.agree as f64 / n, r.agree, r.images);
    println!(
        "per-layer integer outputs: {} of {} values differ; largest deviation {}{}",
        r.mismatched_values,
        r.compared_values,
        r.max_deviation,
        if r.worst.is_empty() { String::new() } else { format!(" ({})", r.worst) }
    );
    Ok(if r.exact() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Runs the dataset through `a.backend` and through the CPU engine (which `--backend cpu`
/// checks against the training-time simulation) and compares every logit.
fn validate_against_cpu(a: &ValidateArgs, model: &QModel, ds: &crate::data::Dataset) -> Result<ExitCode> {
    let opts = BackendOptions { image_threads: a.threads, adapter: a.adapter.clone(), ..Default::default() };
    let backend = crate::engine::open(a.backend, &opts)?;
    let cpu = crate::engine::open(BackendKind::Cpu, &opts)?;
    let (on_backend, on_cpu) = (backend.prepare(model)?, cpu.prepare(model)?);
    let c = crate::engine::compare(&*on_backend, &*on_cpu, ds, (&backend.name(), &cpu.name()))
        .with_context(|| format!("running {} on {} and {}", a.model.display(), backend.name(), cpu.name()))?;
    let n = c.images;
    if a.json {
        let exact = c.exact();
        let (network, data, accuracy) = (model.net().model.clone(), ds.name.clone(), c.a_correct as f64 / n.max(1) as f64);
        let versus_cpu = Some(super::validate_json::VersusCpuJson::new(backend.device(), &c));
        let r = ValidateJson {
            model: a.model.clone(),
            network,
            data,
            images: n,
            backend: backend.name(),
            accuracy,
            exact,
            simulation: None,
            versus_cpu,
        };
        super::emit_json(&r)?;
        return Ok(if exact { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }
    let details: Vec<String> = on_backend.details().into_iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "{}: {} on {n} {} test images, {} on {} ({}): accuracy {:.2}%, {:.1} s ({:.1} images/s)",
        a.model.display(),
        model.net().model,
        ds.name,
        backend.name(),
        backend.device(),
        details.join(", "),
        100.0 * c.a_correct as f64 / n as f64,
        c.a_seconds,
        n as f64 / c.a_seconds
    );
    println!("CPU engine ({}, {} threads): {:.1} s ({:.1} images/s)", cpu.name(), a.threads, c.b_seconds, n as f64 / c.b_seconds);
    println!(
        "argmax agreement {} vs CPU engine: {:.2}% ({}/{n})",
        backend.name(),
        100.0 * c.argmax_agree as f64 / n as f64,
        c.argmax_agree
    );
    println!("logits: {} of {} differ ({} images)", c.differing_logits, c.logits, c.differing_images);
    if !c.exact() {
        println!("largest logit difference: {} (integer logit units)", c.max_deviation);
    }
    Ok(if c.exact() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `nce adapters`: every adapter wgpu finds.
#[cfg(feature = "wgpu")]
pub fn adapters() -> Result<ExitCode> {
    let found = crate::engine::wgpu::adapters();
    if found.is_empty() {
        return Err(crate::engine::wgpu::WgpuError::NoAdapter(String::new()).into());
    }
    for a in found {
        println!("{a}");
    }
    Ok(ExitCode::SUCCESS)
}

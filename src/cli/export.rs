//! `nce export` and `nce validate`.

use crate::engine::cpu::{Backend, Cpu};
use crate::export::{LayerOut, QModel};
#[cfg(feature = "train")]
use anyhow::Context;
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A W2A2 checkpoint written by `nce train`.
    checkpoint: PathBuf,
    /// Output model file.
    #[arg(short, long)]
    out: PathBuf,
    /// Also write the arrays as a C header (for microcontrollers).
    #[arg(long)]
    c_header: Option<PathBuf>,
    /// Record the hardware profile the network was built for.
    #[arg(long)]
    profile: Option<String>,
}

#[cfg(feature = "train")]
pub fn export(a: ExportArgs) -> Result<ExitCode> {
    use crate::export::convert;
    use crate::fsutil::{self, WriteOptions};
    let opts = WriteOptions::protecting([&a.checkpoint]);
    // Refuse bad outputs before the (slow) conversion, and never write both to one file.
    fsutil::check_target(&a.out, &opts)?;
    if let Some(h) = &a.c_header {
        fsutil::check_target(h, &WriteOptions::protecting([&a.checkpoint, &a.out]))?;
    }
    let m = crate::train::load_model(&a.checkpoint)?;
    let layers = convert::int_layers(&m).map_err(anyhow::Error::msg).with_context(|| format!("exporting {}", a.checkpoint.display()))?;
    let container = convert::to_container(&m, &layers, &a.checkpoint.display().to_string(), a.profile.clone()).map_err(anyhow::Error::msg)?;
    let bytes = crate::export::format::encode(&container)?;
    fsutil::write_atomic(&a.out, &bytes, &opts)?;
    // Read it back through the same validation every user of the file goes through.
    QModel::load(&a.out)?;
    let net = &m.meta.net;
    let packed_bits: u64 = net.layers.iter().filter(|l| l.wbits == 2).map(|l| l.weight_count() as u64 * 2).sum();
    println!(
        "wrote {} ({} bytes; 2-bit weights {} bytes packed, {} arrays)",
        a.out.display(),
        bytes.len(),
        packed_bits / 8,
        container.arrays.len()
    );
    if let Some(h) = &a.c_header {
        let guard = h.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| "nce_model_h".into());
        let text = crate::export::c_header::to_c_header(&container, &guard);
        fsutil::write_atomic(h, text.as_bytes(), &WriteOptions::protecting([&a.checkpoint, &a.out]))?;
        println!("wrote {}", h.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct ValidateArgs {
    /// A model file written by `nce export`.
    model: PathBuf,
    #[arg(long, default_value = "fashion-mnist")]
    data: String,
    #[arg(long, default_value = "data")]
    data_root: PathBuf,
    /// cpu (the fastest kernels of this machine), cpu-scalar (the reference) or wgpu (compared
    /// logit for logit with the CPU engine; `NCE_WGPU_DOT=shift|dot4` picks the 2-bit kernel).
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// wgpu adapter: an index or name substring from `nce adapters` (default: `NCE_WGPU_ADAPTER`,
    /// else the best one).
    #[arg(long)]
    adapter: Option<String>,
    /// The checkpoint to simulate (default: the one recorded in the model file).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Validate on the first N test images only.
    #[arg(long)]
    test_subset: Option<usize>,
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

pub fn validate(a: ValidateArgs) -> Result<ExitCode> {
    use crate::export::validate;
    let model = QModel::load(&a.model)?;
    let backend = match a.backend.as_str() {
        "cpu" => Backend::best(),
        "cpu-scalar" => Backend::Scalar,
        "wgpu" => Backend::best(),
        other => bail!("unknown backend `{other}` (cpu, cpu-scalar, wgpu)"),
    };
    let mut ds = crate::data::load(&a.data, &a.data_root, crate::data::Split::Test)?;
    if ds.shape != model.net().input {
        bail!("{} expects {} inputs, {} has {}", a.model.display(), model.net().input, a.data, ds.shape);
    }
    if let Some(n) = a.test_subset.filter(|&n| n < ds.len()) {
        ds = ds.subset(n);
    }
    if a.backend == "wgpu" {
        return validate_wgpu(&a, &model, &ds);
    }
    let cpu = Cpu::new(backend, 1)?;
    let t = Instant::now();
    let outs = validate::run_engine(&model, &cpu, &ds, a.threads)?;
    let secs = t.elapsed().as_secs_f64();
    let n = ds.len();
    let correct = outs
        .iter()
        .zip(&ds.labels)
        .filter(|(o, &y)| matches!(o.last(), Some(Some(LayerOut::Logits(l))) if validate::argmax(l) == y as usize))
        .count();
    println!(
        "{}: {} on {} {} test images, {:?} kernels: accuracy {:.2}% ({:.2} ms per image per thread)",
        a.model.display(),
        model.net().model,
        n,
        a.data,
        backend,
        100.0 * correct as f64 / n as f64,
        secs * 1e3 * a.threads.max(1) as f64 / n as f64
    );
    compare_with_simulation(&a, &model, &ds, &outs)
}

#[cfg(not(feature = "train"))]
fn compare_with_simulation(_: &ValidateArgs, _: &QModel, _: &crate::data::Dataset, _: &[Vec<Option<LayerOut>>]) -> Result<ExitCode> {
    println!("(built without the `train` feature: no tch simulation to compare with)");
    Ok(ExitCode::SUCCESS)
}

/// Compares every layer's integer output of the engine with the tch integer simulation.
#[cfg(feature = "train")]
fn compare_with_simulation(a: &ValidateArgs, model: &QModel, ds: &crate::data::Dataset, outs: &[Vec<Option<LayerOut>>]) -> Result<ExitCode> {
    let ckpt = match (&a.checkpoint, &model.header.source) {
        (Some(c), _) => c.clone(),
        (None, Some(s)) => PathBuf::from(s),
        (None, None) => bail!("{} records no checkpoint; pass --checkpoint", a.model.display()),
    };
    let m = crate::train::load_model(&ckpt).with_context(|| format!("loading the checkpoint to simulate ({})", ckpt.display()))?;
    let r = crate::export::validate::compare(model, &m, ds, outs).map_err(anyhow::Error::msg)?;
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

#[cfg(not(feature = "wgpu"))]
fn validate_wgpu(_: &ValidateArgs, _: &QModel, _: &crate::data::Dataset) -> Result<ExitCode> {
    bail!("this build has no wgpu backend (build with the `wgpu` feature)")
}

/// Runs the dataset through the wgpu backend and compares every logit with the CPU engine's
/// (which `--backend cpu` checks against the training-time simulation).
#[cfg(feature = "wgpu")]
fn validate_wgpu(a: &ValidateArgs, model: &QModel, ds: &crate::data::Dataset) -> Result<ExitCode> {
    use crate::engine::wgpu::{AdapterChoice, WgpuEngine, WgpuModel};
    use crate::export::validate::argmax;
    let engine = WgpuEngine::new(&AdapterChoice::from_flag_or_env(a.adapter.as_deref()))?;
    let gpu = WgpuModel::new(&engine, model)?;
    let n = ds.len();
    let t = Instant::now();
    let got = gpu.run_batch(&ds.images)?;
    let gpu_s = t.elapsed().as_secs_f64();
    let cpu = Cpu::best(1);
    let t = Instant::now();
    let want = model.run_batch(&cpu, &model.prepare(&cpu)?, &ds.images, a.threads)?;
    let cpu_s = t.elapsed().as_secs_f64();
    let differing: usize = got.iter().zip(&want).map(|(g, w)| g.iter().zip(w).filter(|(x, y)| x != y).count()).sum();
    let images_differing = got.iter().zip(&want).filter(|(g, w)| g != w).count();
    let agree = got.iter().zip(&want).filter(|(g, w)| argmax(g) == argmax(w)).count();
    let correct = got.iter().zip(&ds.labels).filter(|(g, &y)| argmax(g) == y as usize).count();
    println!(
        "{}: {} on {n} {} test images, wgpu on {} ({} kernel, {} images per submission): accuracy {:.2}%, {:.1} s ({:.1} images/s)",
        a.model.display(),
        model.net().model,
        a.data,
        engine.adapter(),
        gpu.dot(),
        gpu.max_batch(),
        100.0 * correct as f64 / n as f64,
        gpu_s,
        n as f64 / gpu_s
    );
    println!("CPU engine ({:?} kernels, {} threads): {:.1} s ({:.1} images/s)", cpu.backend(), a.threads, cpu_s, n as f64 / cpu_s);
    println!("argmax agreement wgpu vs CPU engine: {:.2}% ({agree}/{n})", 100.0 * agree as f64 / n as f64);
    println!("logits: {differing} of {} differ ({images_differing} images)", n * want.first().map_or(0, Vec::len));
    Ok(if differing == 0 && agree == n { ExitCode::SUCCESS } else { ExitCode::from(1) })
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

//! `nce export` and `nce validate`.

use crate::engine::cpu::{Backend, Cpu};
use crate::export::{format, LayerOut, QModel};
use anyhow::{bail, Context, Result};
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
    let m = crate::train::load_model(&a.checkpoint)?;
    let layers = convert::int_layers(&m).map_err(anyhow::Error::msg).with_context(|| format!("exporting {}", a.checkpoint.display()))?;
    let container = convert::to_container(&m, &layers, &a.checkpoint.display().to_string(), a.profile.clone()).map_err(anyhow::Error::msg)?;
    let bytes = format::encode(&container)?;
    let tmp = a.out.with_extension("tmp");
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
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
        std::fs::write(h, crate::export::c_header::to_c_header(&container, &guard)).with_context(|| format!("writing {}", h.display()))?;
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
    /// cpu (the fastest kernels of this machine) or cpu-scalar (the reference).
    #[arg(long, default_value = "cpu")]
    backend: String,
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
    let model = QModel::load(&a.model)?;
    let backend = match a.backend.as_str() {
        "cpu" => Backend::best(),
        "cpu-scalar" => Backend::Scalar,
        other => bail!("unknown backend `{other}` (cpu, cpu-scalar)"),
    };
    let mut ds = crate::data::load(&a.data, &a.data_root, crate::data::Split::Test)?;
    if ds.shape != model.net().input {
        bail!("{} expects {} inputs, {} has {}", a.model.display(), model.net().input, a.data, ds.shape);
    }
    if let Some(n) = a.test_subset.filter(|&n| n < ds.len()) {
        ds = ds.subset(n);
    }
    let cpu = Cpu::new(backend, 1)?;
    let prepared = model.prepare(&cpu)?;
    let t = Instant::now();
    let threads = a.threads.max(1);
    let n = ds.len();
    let per = ds.shape.numel();
    let chunk = n.div_ceil(threads);
    let results: Vec<Result<Vec<Vec<Option<LayerOut>>>, crate::engine::EngineError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let (ds, model, cpu, prepared) = (&ds, &model, &cpu, &prepared);
                s.spawn(move || {
                    (k * chunk..((k + 1) * chunk).min(n)).map(|i| model.run_layers(cpu, prepared, &ds.images[i * per..(i + 1) * per])).collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("engine thread panicked")).collect()
    });
    let mut outs = Vec::with_capacity(n);
    for r in results {
        outs.extend(r?);
    }
    let engine_s = t.elapsed().as_secs_f64();
    let logits = |o: &Vec<Option<LayerOut>>| match o.last() {
        Some(Some(LayerOut::Logits(l))) => l.clone(),
        _ => vec![],
    };
    let argmax = |l: &[i32]| l.iter().enumerate().max_by_key(|(i, v)| (**v, std::cmp::Reverse(*i))).map_or(0, |(i, _)| i);
    let correct = outs.iter().zip(&ds.labels).filter(|(o, &y)| argmax(&logits(o)) == y as usize).count();
    println!(
        "{}: {} on {} test images with {:?} kernels: accuracy {:.2}% ({:.2} ms/image/thread)",
        a.model.display(),
        model.net().model,
        n,
        backend,
        100.0 * correct as f64 / n as f64,
        engine_s * 1e3 * threads as f64 / n as f64
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
    use crate::export::{convert, simulate};
    use tch::{Kind, Tensor};
    let ckpt = match (&a.checkpoint, &model.header.source) {
        (Some(c), _) => c.clone(),
        (None, Some(s)) => PathBuf::from(s),
        (None, None) => bail!("{} records no checkpoint; pass --checkpoint", a.model.display()),
    };
    let m = crate::train::load_model(&ckpt).with_context(|| format!("loading the checkpoint to simulate ({})", ckpt.display()))?;
    if m.meta.net != *model.net() {
        bail!("{} and {} describe different networks", ckpt.display(), a.model.display());
    }
    let layers = convert::int_layers(&m).map_err(anyhow::Error::msg)?;
    let net = model.net();
    let s = net.input;
    let (mut agree, mut sim_correct, mut float_correct) = (0usize, 0usize, 0usize);
    let mut mismatched_values: u64 = 0;
    let mut max_dev: i64 = 0;
    let mut worst = String::new();
    let batch = 500;
    for start in (0..ds.len()).step_by(batch) {
        let end = (start + batch).min(ds.len());
        let px = &ds.images[start * s.numel()..end * s.numel()];
        let x = Tensor::from_slice(px).view([(end - start) as i64, s.c as i64, s.h as i64, s.w as i64]);
        let sim = simulate::simulate(net, &layers, &x).map_err(anyhow::Error::msg)?;
        let float_logits = tch::no_grad(|| m.model.f_forward_t(&(x.to_kind(Kind::Float) / 255.0), false))?;
        let float_pred = Vec::<i64>::try_from(&float_logits.argmax(-1, false))?;
        for (li, l) in net.layers.iter().enumerate() {
            let Some(st) = &sim[li] else { continue };
            for (bi, o) in outs[start..end].iter().enumerate() {
                let theirs: Vec<i64> = match &o[li] {
                    Some(LayerOut::Codes(q)) => {
                        // Engine tensors are HWC; the simulation's are CHW.
                        let mut v = vec![0i64; q.data.len()];
                        for p in 0..q.h * q.w {
                            for c in 0..q.c {
                                v[c * q.h * q.w + p] = q.data[p * q.c + c] as i64;
                            }
                        }
                        v
                    }
                    Some(LayerOut::Sums(v)) | Some(LayerOut::Logits(v)) => v.iter().map(|&x| x as i64).collect(),
                    None => bail!("the engine produced no output for layer {}", l.name),
                };
                let ours = Vec::<i64>::try_from(&st.get(bi as i64).flatten(0, -1))?;
                if ours.len() != theirs.len() {
                    bail!("layer {}: engine output has {} values, simulation {}", l.name, theirs.len(), ours.len());
                }
                for (x, y) in ours.iter().zip(&theirs) {
                    let d = (x - y).abs();
                    if d > 0 {
                        mismatched_values += 1;
                        if d > max_dev {
                            max_dev = d;
                            worst = format!("layer {} image {}", l.name, start + bi);
                        }
                    }
                }
            }
        }
        let sim_logits = sim.last().and_then(|t| t.as_ref()).ok_or_else(|| anyhow::anyhow!("no simulated logits"))?;
        let sim_pred = Vec::<i64>::try_from(&sim_logits.argmax(-1, false))?;
        for (bi, o) in outs[start..end].iter().enumerate() {
            let engine_pred = match o.last() {
                Some(Some(LayerOut::Logits(l))) => l.iter().enumerate().max_by_key(|(i, v)| (**v, std::cmp::Reverse(*i))).map_or(0, |(i, _)| i) as i64,
                _ => -1,
            };
            let y = ds.labels[start + bi] as i64;
            agree += (engine_pred == sim_pred[bi]) as usize;
            sim_correct += (sim_pred[bi] == y) as usize;
            float_correct += (float_pred[bi] == y) as usize;
        }
    }
    let n = ds.len() as f64;
    println!("tch integer simulation of {}: accuracy {:.2}%", ckpt.display(), 100.0 * sim_correct as f64 / n);
    println!("tch float fake-quant model: accuracy {:.2}% (reference; rounding of the folded scales may differ)", 100.0 * float_correct as f64 / n);
    println!("argmax agreement engine vs simulation: {:.2}% ({agree}/{})", 100.0 * agree as f64 / n, ds.len());
    println!(
        "per-layer integer outputs: {} values differ; largest deviation {}{}",
        mismatched_values,
        max_dev,
        if worst.is_empty() { String::new() } else { format!(" ({worst})") }
    );
    Ok(if mismatched_values == 0 && agree == ds.len() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

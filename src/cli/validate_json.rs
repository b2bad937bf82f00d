//! `nce validate --json`: what the run found, as one serde document.

use serde::Serialize;
use std::path::PathBuf;

/// The engine's run on the test images, and what it was compared with.
#[derive(Serialize)]
pub struct ValidateJson {
    pub model: PathBuf,
    pub network: String,
    pub data: String,
    pub images: usize,
    pub backend: String,
    /// Fraction of test images the engine classified correctly (0..1).
    pub accuracy: f64,
    /// Whether the comparison passed: every logit equal (every backend is bit-exact).
    pub exact: bool,
    /// `--backend cpu|cpu-scalar|cpu-swar|cpu-avx2|cpu-avx512`: every layer against the tch integer simulation.
    pub simulation: Option<SimulationJson>,
    /// Other backends: every logit against the CPU engine.
    pub versus_cpu: Option<VersusCpuJson>,
}

#[derive(Serialize)]
pub struct SimulationJson {
    pub checkpoint: PathBuf,
    pub simulation_accuracy: f64,
    pub float_accuracy: f64,
    pub argmax_agreement: f64,
    pub differing_values: u64,
    pub compared_values: u64,
    pub max_deviation: i64,
    /// Where the largest deviation is (empty when none).
    pub worst: String,
}

#[derive(Serialize)]
pub struct VersusCpuJson {
    pub device: String,
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub argmax_agreement: f64,
    pub differing_logits: usize,
    pub logits: usize,
    pub differing_images: usize,
    pub max_deviation: i64,
}

impl SimulationJson {
    #[cfg(feature = "train")]
    pub fn new(checkpoint: PathBuf, r: &crate::export::validate::Report) -> SimulationJson {
        let n = r.images.max(1) as f64;
        SimulationJson {
            checkpoint,
            simulation_accuracy: r.simulation_correct as f64 / n,
            float_accuracy: r.float_correct as f64 / n,
            argmax_agreement: r.agree as f64 / n,
            differing_values: r.mismatched_values,
            compared_values: r.compared_values,
            max_deviation: r.max_deviation,
            worst: r.worst.clone(),
        }
    }
}

impl VersusCpuJson {
    pub fn new(device: String, c: &crate::engine::compare::Comparison) -> VersusCpuJson {
        VersusCpuJson {
            device,
            seconds: c.a_seconds,
            cpu_seconds: c.b_seconds,
            argmax_agreement: c.argmax_agree as f64 / c.images.max(1) as f64,
            differing_logits: c.differing_logits,
            logits: c.logits,
            differing_images: c.differing_images,
            max_deviation: c.max_deviation,
        }
    }
}

/// [`QModel::run_layers_batch`](crate::engine::plan::QModel) in chunks, with a progress bar
/// on a terminal (a full test set takes minutes on the scalar kernels).
pub fn run_layers(
    model: &crate::engine::plan::QModel,
    cpu: &crate::engine::cpu::Cpu,
    ds: &crate::data::Dataset,
    threads: usize,
) -> Result<Vec<Vec<Option<crate::engine::plan::LayerOut>>>, crate::engine::EngineError> {
    let chunk = 64 * threads.max(1);
    let per = ds.shape.numel();
    let bar = super::progress::bar(ds.len() as u64, "validate", "images");
    let mut outs = Vec::with_capacity(ds.len());
    for images in ds.images.chunks(chunk * per) {
        outs.extend(model.run_layers_batch(cpu, images, threads)?);
        bar.inc((images.len() / per) as u64);
    }
    bar.finish_and_clear();
    Ok(outs)
}

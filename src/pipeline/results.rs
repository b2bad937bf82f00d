//! The typed `result.json` of every pipeline stage. The runner stores them, a rerun that skips a
//! stage reads them back, and the report reads nothing else: a field renamed here is a compile
//! error, not a silent "n/a" in the report.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The stages, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// FP32 training, or the import of an FP32 checkpoint.
    Fp32,
    /// One-on/one-off 2-bit sensitivity of every layer.
    Sensitivity,
    /// W2A2 training of the base widths (the uniform baseline; the search starts from it).
    TrainUniform,
    /// The NCE search, started from the uniform W2A2 model.
    Search,
    /// W2A2 training of the searched widths.
    TrainNce,
    Export,
    ValidateCpu,
    ValidateWgpu,
    Measure,
    Report,
}

impl Stage {
    pub const ALL: [Stage; 10] = [
        Stage::Fp32,
        Stage::Sensitivity,
        Stage::TrainUniform,
        Stage::Search,
        Stage::TrainNce,
        Stage::Export,
        Stage::ValidateCpu,
        Stage::ValidateWgpu,
        Stage::Measure,
        Stage::Report,
    ];

    /// The stage's folder name and its name in messages.
    pub const fn name(self) -> &'static str {
        match self {
            Stage::Fp32 => "fp32",
            Stage::Sensitivity => "sensitivity",
            Stage::TrainUniform => "train-uniform",
            Stage::Search => "search",
            Stage::TrainNce => "train-nce",
            Stage::Export => "export",
            Stage::ValidateCpu => "validate-cpu",
            Stage::ValidateWgpu => "validate-wgpu",
            Stage::Measure => "measure",
            Stage::Report => "report",
        }
    }

    /// The stage called `name`, if any.
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// One value per trained W2A2 network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerModel<T> {
    pub uniform: T,
    pub nce: T,
}

impl<T> PerModel<T> {
    /// The two networks with their names, uniform first.
    pub fn iter(&self) -> [(&'static str, &T); 2] {
        [("uniform", &self.uniform), ("nce", &self.nce)]
    }

    /// `f` on both, stopping at the first error.
    pub fn try_map<U, E>(&self, mut f: impl FnMut(&'static str, &T) -> Result<U, E>) -> Result<PerModel<U>, E> {
        Ok(PerModel { uniform: f("uniform", &self.uniform)?, nce: f("nce", &self.nce)? })
    }
}

/// `fp32`, `train-uniform`, `train-nce`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainResult {
    pub test_acc: f64,
    pub test_images: usize,
    /// Epochs trained (0 for an imported checkpoint).
    pub epochs: usize,
    /// Per-slot widths (`None`: the base network).
    pub widths: Option<Vec<usize>>,
    /// Where an imported checkpoint came from.
    pub imported_from: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SensitivityResult {
    pub fp32_acc: f64,
    pub w2a2_acc: f64,
    /// The last N training images (older results say `test_images`: they were test images).
    #[serde(alias = "test_images")]
    pub val_images: usize,
    pub layers: Vec<crate::sensitivity::LayerSensitivity>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    pub widths: Vec<usize>,
    pub base_widths: Vec<usize>,
    pub repaired: Vec<String>,
    pub expansions: usize,
    pub epochs: usize,
    /// The supernet's argmax architecture on the search's test images at the last epoch.
    pub argmax_test_acc: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExportedFile {
    /// Relative to the run folder.
    pub file: String,
    pub bytes: usize,
}

/// The CPU engine against the integer simulation of the checkpoint, every layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CpuValidation {
    pub backend: String,
    pub images: usize,
    pub engine_acc: f64,
    pub simulation_acc: f64,
    pub float_acc: f64,
    pub agree: usize,
    pub compared_values: u64,
    pub mismatched_values: u64,
    pub max_deviation: i64,
    pub engine_seconds: f64,
    pub threads: usize,
    /// The run's test images (the schedule's `test_subset`, the images of every accuracy)
    /// and the engine's accuracy on them; `images` above are the layer-compared ones.
    pub test_images: usize,
    pub test_acc: f64,
    /// One character per test image, `1` where the engine's prediction is right: the paired
    /// bootstrap of the report compares the two networks image by image.
    pub correct: String,
}

impl CpuValidation {
    /// Per-image correctness, decoded from [`CpuValidation::correct`].
    pub fn correct_flags(&self) -> Vec<bool> {
        self.correct.bytes().map(|b| b == b'1').collect()
    }
}

/// One model on another backend against the CPU engine, logit for logit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendValidation {
    pub images: usize,
    pub identical_logits: usize,
    pub argmax_agree: usize,
    pub max_deviation: i64,
    pub cpu_backend: String,
    pub cpu_seconds: f64,
    pub backend_seconds: f64,
    /// What the backend reports about itself (kernel choices).
    pub details: BTreeMap<String, String>,
}

/// `validate-wgpu` (and any later backend check).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendCheck {
    pub available: bool,
    /// Why not, when unavailable.
    pub reason: Option<String>,
    pub adapter: Option<String>,
    pub models: Option<PerModel<BackendValidation>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelLatency {
    pub predicted_us: f64,
    pub measured_us: f64,
    pub measured_sd_us: f64,
    pub runs: u64,
    /// `(predicted − measured) / measured`.
    pub error: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasureResult {
    pub available: bool,
    pub reason: Option<String>,
    pub backend: String,
    pub threads: usize,
    /// The latency table, relative to the run folder.
    pub table: String,
    pub table_entries: usize,
    pub machine: BTreeMap<String, String>,
    pub models: Option<PerModel<ModelLatency>>,
}

impl MeasureResult {
    pub fn unavailable(reason: &str) -> MeasureResult {
        MeasureResult {
            available: false,
            reason: Some(reason.into()),
            backend: String::new(),
            threads: 0,
            table: String::new(),
            table_entries: 0,
            machine: BTreeMap::new(),
            models: None,
        }
    }
}

/// NCE − uniform on the same test images, with a paired bootstrap interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub images: usize,
    pub uniform_acc: f64,
    pub nce_acc: f64,
    /// `nce_acc − uniform_acc`.
    pub difference: f64,
    /// 95 % percentile interval of the difference over bootstrap resamples of the images.
    pub low: f64,
    pub high: f64,
    pub resamples: usize,
}

/// Which network a [`Verdict`] finds more accurate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Nce,
    Uniform,
    /// The interval contains 0: no difference beyond noise.
    Neither,
}

impl Verdict {
    pub fn better(&self) -> Better {
        if self.low > 0.0 {
            Better::Nce
        } else if self.high < 0.0 {
            Better::Uniform
        } else {
            Better::Neither
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportResult {
    pub report_md: String,
    pub report_html: String,
    pub fp32_acc: f64,
    pub uniform_acc: f64,
    pub nce_acc: f64,
    pub nce_passes_budgets: bool,
    pub verdict: Option<Verdict>,
    /// The verdict as the report's first line says it.
    pub verdict_line: Option<String>,
}

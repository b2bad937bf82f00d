//! The NCE search: TAS-style differentiable channel search with 2-bit quantization in the loop,
//! candidate sets that expand when a layer keeps preferring its widest option, and budget
//! losses from the chosen hardware profile's cost plugins.
//!
//! One epoch alternates, batch by batch, a weight step (SGD on the supernet's weights over one
//! half of the training set, widths sampled with Gumbel top-2) and an architecture step (Adam on
//! the logits over the other half, cross-entropy plus `λ·L_k` for every separable budget `k`).
//! After each epoch the expansion rule runs ([`space::expand`]). Choices the paper leaves open
//! are fields of [`SearchConfig`] and documented in `docs/search.md`.

pub mod adam;
pub mod cost;
pub mod derive;
pub mod plots;
mod run;
pub mod space;
pub mod supernet;

use crate::cost::Evaluator;
use crate::data::{self, Dataset, Loader, Split};
use crate::graph::{self, BitConfig, ModelKind, Network};
use crate::hw::ProfileError;
use crate::train::checkpoint::{self, CheckpointError};
use crate::train::sgd::Sgd;
use adam::Adam;
pub use derive::Derivation;
use derive::{ArchFile, DeriveError};
use serde::{Deserialize, Serialize};
use space::{Expansion, SpaceConfig};
use std::path::{Path, PathBuf};
use supernet::{Mode, Supernet};
use tch::{no_grad, Kind, Tensor};

/// Everything that defines a search run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SearchConfig {
    pub model: ModelKind,
    pub profile: PathBuf,
    pub data: String,
    pub data_root: PathBuf,
    /// Search on the first N training images only (in file order; the files are already shuffled), split 50/50.
    pub train_subset: Option<usize>,
    /// Test images used to report the argmax architecture's accuracy each epoch.
    pub test_subset: Option<usize>,
    pub bits: u8,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub arch_lr: f64,
    pub arch_betas: (f64, f64),
    pub arch_weight_decay: f64,
    /// λ of every budget loss.
    pub lambda: f64,
    /// Relative tolerance band below each budget's target.
    pub tolerance: f64,
    pub tau_max: f64,
    pub tau_min: f64,
    pub space: SpaceConfig,
    pub pact_init: f64,
    pub seed: u64,
    pub threads: usize,
    pub out: PathBuf,
    /// A trained checkpoint (`nce train`) to initialise the supernet's weights from.
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// Epochs of weight steps only (sampled widths, logits frozen, no expansion) before the
    /// architecture steps start, so the logits learn from trained candidates.
    #[serde(default)]
    pub warmup_epochs: usize,
    /// How the final widths are derived (`docs/search.md`).
    #[serde(default = "default_derivation")]
    pub derive: Derivation,
    /// How an expanded slot's new channels start.
    #[serde(default)]
    pub expansion_init: ExpansionInit,
    /// Noise on copied filters, relative to the weight's std.
    #[serde(default = "default_noise")]
    pub expansion_noise: f64,
    /// Images of the architecture half used to score each epoch's argmax network (TAS derivation).
    #[serde(default = "default_val_subset")]
    pub val_subset: usize,
    /// Where candidate sets grow: the paper's threshold rule, or guided by measured sensitivity.
    #[serde(default)]
    pub expansion: ExpansionRule,
    /// BatchNorm statistics of the training passes over this many equal parts of each batch
    /// (ghost batches): under `mpirun -np N` with N dividing it, the search computes the same
    /// whatever N is (docs/distributed.md).
    #[serde(default = "one")]
    pub bn_groups: usize,
    /// Gradient shards of every step (gradient accumulation): what this many ranks compute, in
    /// one process. Like the thread count, a resume may change it.
    #[serde(default = "one")]
    pub grad_shards: usize,
}

fn one() -> usize {
    1
}

/// Which expansion rule a search runs (`docs/search.md`, "Sensitivity-guided expansion").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "rule")]
pub enum ExpansionRule {
    /// The paper's rule: a slot whose widest candidate's probability exceeds the threshold
    /// gets a wider one.
    #[default]
    Threshold,
    /// Measured 2-bit sensitivity decides where candidate sets grow and is a prior on the
    /// architecture logits.
    Sensitivity(Guidance),
}

/// The settings of sensitivity-guided expansion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Guidance {
    /// A `sensitivity.csv` (`nce sensitivity`) of a checkpoint of the searched model.
    pub table: PathBuf,
    pub measure: crate::sensitivity::Measure,
    /// γ: weight of the prior `γ · (2/S) · Σ_s (½ − r_s) · E[w_s]/base_s` in the architecture
    /// loss (r_s the slot's sensitivity rank in [0, 1]).
    pub prior: f64,
}

impl Guidance {
    pub fn new(table: PathBuf) -> Guidance {
        Guidance { table, measure: crate::sensitivity::Measure::OneOffGain, prior: 0.5 }
    }
}

/// How the channels a slot gains by expansion are initialised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum ExpansionInit {
    /// Function-preserving copies ([`Supernet::init_expanded`]).
    #[default]
    Preserve,
    /// Whatever the pre-allocated weights hold (their random initialisation).
    Keep,
}

fn default_derivation() -> Derivation {
    Derivation::CostAware
}
fn default_noise() -> f64 {
    0.01
}
fn default_val_subset() -> usize {
    1000
}

impl SearchConfig {
    pub fn new(model: ModelKind, profile: PathBuf, data: &str, epochs: usize, out: PathBuf) -> SearchConfig {
        SearchConfig {
            model,
            profile,
            data: data.into(),
            data_root: PathBuf::from("data"),
            train_subset: None,
            test_subset: Some(2000),
            bits: 2,
            epochs,
            batch_size: 128,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            arch_lr: 1e-3,
            arch_betas: (0.5, 0.999),
            arch_weight_decay: 1e-3,
            lambda: 2.0,
            tolerance: 0.05,
            tau_max: 5.0,
            tau_min: 0.1,
            space: SpaceConfig::default(),
            pact_init: 4.0,
            seed: 0,
            threads: 0,
            out,
            init: None,
            warmup_epochs: 0,
            derive: Derivation::CostAware,
            expansion_init: ExpansionInit::Preserve,
            expansion_noise: default_noise(),
            val_subset: default_val_subset(),
            expansion: ExpansionRule::Threshold,
            bn_groups: 1,
            grad_shards: 1,
        }
    }

    /// τ for `epoch`: cosine from `tau_max` to `tau_min` (TAS's width-search schedule).
    pub fn tau(&self, epoch: usize) -> f64 {
        let t = epoch as f64 / self.epochs.max(1) as f64;
        self.tau_min + (self.tau_max - self.tau_min) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Graph(#[from] graph::GraphError),
    #[error(transparent)]
    Cost(#[from] crate::cost::CostError),
    #[error(transparent)]
    Derive(#[from] DeriveError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{}: {source}", file.display())]
    Io { file: PathBuf, source: std::io::Error },
    #[error("non-finite loss at epoch {epoch}; the last checkpoint is kept")]
    NonFinite { epoch: usize },
    #[error("cannot resume: {0}")]
    Resume(String),
    #[error("{0}")]
    Invalid(String),
    #[error("plots: {0}")]
    Plot(#[from] crate::plot::PlotError),
    #[error(transparent)]
    Output(#[from] crate::fsutil::WriteError),
}

/// One epoch of the search log (`search.jsonl`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub tau: f64,
    pub weight_loss: f64,
    pub weight_acc: f64,
    pub arch_loss: f64,
    pub arch_acc: f64,
    /// Accuracy of the argmax architecture (inside the supernet) on held-out test images.
    pub argmax_test_acc: f64,
    /// Accuracy of the argmax architecture on the first `val_subset` images of the
    /// architecture half (held out from the weights; used by the TAS derivation).
    #[serde(default)]
    pub argmax_val_acc: f64,
    /// Whether the argmax architecture met every budget.
    #[serde(default)]
    pub argmax_pass: bool,
    pub widths: Vec<usize>,
    pub probs: Vec<Vec<f64>>,
    pub candidates: Vec<Vec<usize>>,
    /// Per budget: (metric, expected cost, argmax cost, target).
    pub budgets: Vec<(String, f64, f64, f64)>,
    pub expansions: Vec<Expansion>,
    pub seconds: f64,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    config: SearchConfig,
    epoch: usize,
    step: usize,
    candidates: Vec<Vec<usize>>,
    expansions: Vec<Expansion>,
}

/// The outcome of a search.
pub struct SearchResult {
    pub arch: ArchFile,
    pub arch_path: PathBuf,
    pub log: Vec<EpochLog>,
}

/// The search's budgets bound to plugin metrics, with resolved targets.
struct Budgets {
    /// (metric, plugin index, metric index, absolute target, separable)
    items: Vec<(String, usize, usize, f64, bool)>,
}

fn bind_budgets(eval: &Evaluator, base: &Network) -> Result<Budgets, SearchError> {
    let report = eval.evaluate(base, base)?;
    let models: Vec<_> = eval.models().collect();
    let items =
        eval.budgets().zip(&report.budgets).map(|((b, p, m), v)| (b.metric.clone(), p, m, v.max, models[p].1.separable(m))).collect();
    Ok(Budgets { items })
}

fn load_split(cfg: &SearchConfig) -> Result<(Dataset, Dataset, Dataset), SearchError> {
    let train = data::load_for(&cfg.data, &cfg.data_root, Split::Train, cfg.train_subset, None)?;
    let (w, a) = train.split(0.5, cfg.seed);
    let test = data::load_for(&cfg.data, &cfg.data_root, Split::Test, cfg.test_subset, None)?;
    Ok((w, a, test))
}

fn bit_config(bits: u8) -> BitConfig {
    if bits >= 32 {
        BitConfig::full_precision()
    } else {
        BitConfig::uniform(bits)
    }
}

/// Runs (or, with `resume`, continues) a search and writes `arch.toml`, `search.jsonl` and the
/// checkpoint under `cfg.out`.
pub fn search(cfg: &SearchConfig, resume: bool, progress: bool) -> Result<SearchResult, SearchError> {
    let mut run = run::Run::start(cfg, resume)?;
    while run.epoch < cfg.epochs {
        run.epoch(progress)?;
    }
    run.finish()
}

/// Accuracy of the supernet's argmax architecture.
///
/// BatchNorm uses the statistics of each 500-image test batch: the running statistics were
/// collected under *mixed* widths upstream, which the argmax network never sees, and with
/// 2-bit activations that mismatch alone drives it to chance level (the usual one-shot NAS
/// BN recalibration; the final architecture is retrained anyway).
fn accuracy(sn: &Supernet, loader: &Loader) -> f64 {
    let (mut correct, mut seen) = (0i64, 0i64);
    no_grad(|| {
        for (x, y) in loader.epoch_batches(0) {
            let out = sn.forward(&x, true, Mode::Argmax, true);
            correct += out.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
            seen += y.size()[0];
        }
    });
    correct as f64 / seen.max(1) as f64
}

fn save(path: &Path, meta: &Meta, sn: &Supernet, adam: &Adam, sgd: &Sgd) -> Result<(), SearchError> {
    let mut vars: Vec<(String, Tensor)> = sn.vs.variables().into_iter().collect();
    for (s, l) in sn.logits.iter().enumerate() {
        vars.push((format!("__logits__.{s}"), l.detach()));
    }
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut opt: Vec<(String, Tensor)> = sgd.buffers.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
    opt.extend(adam.state());
    // Never overwrite the checkpoint the search was initialised from.
    let protect = crate::fsutil::WriteOptions::protecting(meta.config.init.iter());
    checkpoint::save_with(path, meta, &vars, &opt, &protect)?;
    Ok(())
}

fn restore(sn: &mut Supernet, adam: &mut Adam, sgd: &mut Sgd, vars: &[(String, Tensor)], opt: &[(String, Tensor)]) -> Result<(), String> {
    let store = sn.vs.variables();
    no_grad(|| -> Result<(), String> {
        for (name, t) in vars {
            if let Some(s) = name.strip_prefix("__logits__.") {
                let s: usize = s.parse().map_err(|_| format!("bad logits entry `{name}`"))?;
                let slot = sn.logits.get(s).ok_or_else(|| format!("no slot {s}"))?;
                if slot.size() != t.size() {
                    return Err(format!("logits of slot {s} have shape {:?}, expected {:?}", t.size(), slot.size()));
                }
                sn.logits[s] = t.detach().copy().set_requires_grad(true);
            } else {
                let mut dst = store.get(name).ok_or_else(|| format!("unknown variable `{name}`"))?.shallow_clone();
                if dst.size() != t.size() {
                    return Err(format!("variable `{name}` has shape {:?}, expected {:?}", t.size(), dst.size()));
                }
                dst.copy_(t);
            }
        }
        Ok(())
    })?;
    for (name, t) in opt {
        if !adam.restore(name, t) {
            sgd.buffers.insert(name.clone(), t.shallow_clone());
        }
    }
    Ok(())
}

fn read_log(path: &Path) -> Result<Vec<EpochLog>, SearchError> {
    match std::fs::read_to_string(path) {
        Ok(s) => s
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| SearchError::Io { file: path.into(), source: std::io::Error::other(e) }))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(source) => Err(SearchError::Io { file: path.into(), source }),
    }
}

fn write_log(path: &Path, log: &[EpochLog]) -> Result<(), SearchError> {
    let mut text = String::new();
    for l in log {
        text.push_str(&serde_json::to_string(l).map_err(|e| SearchError::Invalid(e.to_string()))?);
        text.push('\n');
    }
    crate::fsutil::write_atomic(path, text.as_bytes(), &Default::default())?;
    Ok(())
}

/// Reads the search log of a run folder (for plots and reports).
pub fn load_log(path: &Path) -> Result<Vec<EpochLog>, SearchError> {
    read_log(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resumed search reads `search.jsonl` back and rewrites it: the finished epochs' lines
    /// must come out byte for byte as they were (serde_json's `float_roundtrip` parses every
    /// float it wrote to the same bits).
    #[test]
    fn a_rewritten_log_keeps_its_lines_byte_for_byte() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64 * 10f64.powi((x % 7) as i32 - 3)
        };
        let line = |epoch| EpochLog {
            epoch,
            tau: next(),
            weight_loss: next(),
            weight_acc: next(),
            arch_loss: next(),
            arch_acc: next(),
            argmax_test_acc: next(),
            argmax_val_acc: next(),
            argmax_pass: true,
            widths: vec![16, 24],
            probs: (0..40).map(|_| (0..4).map(|_| next()).collect()).collect(),
            candidates: vec![vec![8, 16], vec![12, 24]],
            budgets: vec![("macs".into(), next(), next(), next())],
            expansions: vec![],
            seconds: next(),
        };
        let log: Vec<EpochLog> = (0..50).map(line).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("search.jsonl");
        write_log(&path, &log).unwrap();
        let first = std::fs::read(&path).unwrap();
        write_log(&path, &read_log(&path).unwrap()).unwrap();
        assert!(first == std::fs::read(&path).unwrap(), "the rewritten log differs from the one written");
    }
}

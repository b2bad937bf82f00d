//! The training loop.

use super::checkpoint::{self, CheckpointError};
use super::dist::{self, ReduceStats, World};
use super::metrics::{self, EpochMetrics};
use super::schedule::CosineSchedule;
use super::sgd::Sgd;
use crate::data::{self, DataError, Dataset, Loader, Split};
use crate::graph::{self, BitConfig, GraphError, ModelKind, Network};
use crate::models::{Model, ModelOptions};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, no_grad, Device, Kind, Tensor};

/// Everything that defines a training run (stored in every checkpoint).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainConfig {
    pub model: ModelKind,
    /// Output channels per width slot; `None` = the base widths.
    pub widths: Option<Vec<usize>>,
    /// Uniform bit width of quantized layers; 32 trains in full precision.
    pub bits: u8,
    /// Bits of the first conv and last linear (ignored in full precision).
    pub first_last_bits: u8,
    pub model_options: ModelOptions,
    /// `fashion-mnist`, `mnist` or `cifar10`.
    pub data: String,
    pub data_root: PathBuf,
    /// Use only the first N training / test images (file order; the IDX files are shuffled).
    pub train_subset: Option<usize>,
    pub test_subset: Option<usize>,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// L2 coefficient on PACT clips (PACT's regulariser); quantizer parameters get no other decay.
    pub clip_decay: f64,
    pub warmup_epochs: usize,
    pub seed: u64,
    /// Intra-op threads for libtorch (0 = libtorch's default).
    pub threads: usize,
    /// Full-precision (or any) checkpoint to initialise from, by variable name.
    pub init: Option<PathBuf>,
    /// Teacher checkpoint for knowledge distillation.
    pub teacher: Option<PathBuf>,
    pub kd_alpha: f64,
    pub kd_temperature: f64,
    /// Also checkpoint every N steps inside an epoch (0 = only at epoch ends).
    pub checkpoint_every: usize,
    /// Hold out the last N training images and evaluate on them instead of the test set (a
    /// validation split for choosing hyperparameters and for measurements that must not see
    /// the test set); they are never trained on.
    #[serde(default)]
    pub val_images: Option<usize>,
    /// How channels wider than the `--init` checkpoint's start.
    #[serde(default)]
    pub widen_init: WidenInit,
    /// Stop (with a checkpoint) once this many optimisation steps have been taken in total;
    /// `--resume` continues as if nothing happened. For time-boxed sessions and tests.
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Also log the loss of every N-th step to `steps.jsonl` (0 = no step log).
    #[serde(default)]
    pub log_every: usize,
    /// Split every global batch into this many shards, run forward and backward on one at a
    /// time and sum their gradients before the step (gradient accumulation): what this many
    /// MPI ranks compute, in one process, and a global batch larger than memory. Like the
    /// thread and rank counts, it does not change the run (given `--bn-groups`), so a resume may
    /// change it.
    #[serde(default = "one")]
    pub grad_shards: usize,
    pub out: PathBuf,
}

fn one() -> usize {
    1
}

impl TrainConfig {
    /// A sensible CIFAR-style recipe: SGD 0.1, Nesterov momentum 0.9, wd 5e-4, batch 128.
    pub fn new(model: ModelKind, data: &str, bits: u8, epochs: usize, out: PathBuf) -> TrainConfig {
        TrainConfig {
            model,
            widths: None,
            bits,
            first_last_bits: 8,
            model_options: ModelOptions::default(),
            data: data.into(),
            data_root: PathBuf::from("data"),
            train_subset: None,
            test_subset: None,
            epochs,
            batch_size: 128,
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
            clip_decay: 1e-4,
            warmup_epochs: 1,
            seed: 0,
            threads: 0,
            init: None,
            teacher: None,
            kd_alpha: 0.9,
            kd_temperature: 4.0,
            checkpoint_every: 0,
            val_images: None,
            widen_init: WidenInit::Random,
            max_steps: None,
            log_every: 0,
            grad_shards: 1,
            out,
        }
    }

    pub fn bit_config(&self) -> BitConfig {
        if self.bits >= 32 {
            BitConfig::full_precision()
        } else {
            let mut b = BitConfig::uniform(self.bits);
            b.first = Some(self.first_last_bits);
            b.last = Some(self.first_last_bits);
            b
        }
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        self.out.join("checkpoint.ot")
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.out.join("metrics.jsonl")
    }

    pub fn steps_path(&self) -> PathBuf {
        self.out.join("steps.jsonl")
    }
}

/// The metadata record of a checkpoint: the config, the exact network, and where training is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    pub format: u32,
    pub config: TrainConfig,
    pub net: Network,
    /// The next epoch and batch to run.
    pub epoch: usize,
    pub batch: usize,
    /// Optimisation steps taken.
    pub step: usize,
    /// Running sums of the epoch in progress (for mid-epoch checkpoints).
    pub partial: Partial,
    pub last: Option<EpochMetrics>,
}

impl Meta {
    /// The record of a checkpoint that no training wrote (`nce import`): nothing run yet.
    pub fn imported(config: TrainConfig, net: Network) -> Meta {
        Meta { format: FORMAT, config, net, epoch: 0, batch: 0, step: 0, partial: Partial::default(), last: None }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Partial {
    pub loss_sum: f64,
    pub correct: u64,
    pub seen: u64,
    pub seconds: f64,
}

const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Writing an output (the metrics log) failed or was refused.
    #[error(transparent)]
    Output(#[from] crate::fsutil::WriteError),
    #[error("model: {0}")]
    Model(String),
    #[error("{}: {source}", file.display())]
    Io { file: PathBuf, source: std::io::Error },
    #[error("non-finite loss ({value}) at epoch {epoch}, batch {batch}; stopped. {}", match checkpoint {
        Some(c) => format!("The last good checkpoint is kept in {}", c.display()),
        None => "No checkpoint was written before it (lower --lr or check the data)".to_string(),
    })]
    NonFinite { value: f64, epoch: usize, batch: usize, checkpoint: Option<PathBuf> },
    #[error("cannot resume: {0}")]
    Resume(String),
    #[error("{0}")]
    Config(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The outcome of [`train`].
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    pub epochs: Vec<EpochMetrics>,
    pub final_test_acc: f64,
    /// How many test images `final_test_acc` is over.
    pub test_images: usize,
    pub checkpoint: PathBuf,
}

/// A model rebuilt from a checkpoint.
pub struct LoadedModel {
    pub vs: nn::VarStore,
    pub model: Model,
    pub meta: Meta,
}

/// Builds the network and model of `meta` and loads the checkpoint's variables into it.
pub fn load_model(path: &Path) -> Result<LoadedModel, TrainError> {
    let ck = checkpoint::load::<Meta>(path)?;
    if ck.meta.format != FORMAT {
        return Err(TrainError::Resume(format!("{}: checkpoint format {} (expected {FORMAT})", path.display(), ck.meta.format)));
    }
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Model::new(&vs.root(), &ck.meta.net, &ck.meta.config.model_options).map_err(|e| TrainError::Model(e.to_string()))?;
    copy_vars(&vs, &ck.vars, false).map_err(|m| TrainError::Resume(format!("{}: {m}", path.display())))?;
    Ok(LoadedModel { vs, model, meta: ck.meta })
}

/// Copies the leading slice `src` and `dst` share (the first `min` entries along every dim) from
/// `src` into `dst`: how a model inherits a trained model's channels at other widths. Both must
/// have the same rank; call inside `no_grad`.
pub(crate) fn copy_leading(dst: &Tensor, src: &Tensor) {
    let (mut d, mut v) = (dst.shallow_clone(), src.shallow_clone());
    for (dim, (&a, &b)) in dst.size().iter().zip(&src.size()).enumerate() {
        let n = a.min(b);
        d = d.narrow(dim as i64, 0, n);
        v = v.narrow(dim as i64, 0, n);
    }
    d.copy_(&v);
}

/// How channels that `--init` has no source for start when a network is widened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum WidenInit {
    /// Their random initialisation.
    #[default]
    Random,
    /// Copies of existing channels (index modulo the source width, so weight statistics and
    /// the 2-bit SAWB scale barely move) with BatchNorm scale 1e-3 and shift 0: the new
    /// channels start nearly silent (below one 2-bit activation step), so the widened network
    /// starts as the trained one, yet they still get gradients.
    Quiet,
}

/// The BatchNorm scale new channels start with under [`WidenInit::Quiet`].
pub const QUIET_SCALE: f64 = 1e-3;

/// [`WidenInit::Quiet`] for every variable of `vs` that is wider than its same-named source.
/// Returns how many were widened.
pub fn widen_quietly(vs: &nn::VarStore, src: &[(String, Tensor)]) -> usize {
    let mut widened = 0;
    no_grad(|| {
        for (name, dst) in vs.variables() {
            let Some((_, s)) = src.iter().find(|(n, _)| *n == name) else { continue };
            let (ds, ss) = (dst.size(), s.size());
            if ds.len() != ss.len() || ds.iter().zip(&ss).all(|(a, b)| a <= b) {
                continue;
            }
            // Tile the source along every dimension where the destination is wider.
            let mut t = s.shallow_clone();
            for (dim, (&a, &b)) in ds.iter().zip(&ss).enumerate() {
                let idx: Vec<i64> = (0..a).map(|i| i % b).collect();
                t = t.index_select(dim as i64, &Tensor::from_slice(&idx));
            }
            let mut dst = dst.shallow_clone();
            dst.copy_(&t);
            let new = ds[0] - ss[0].min(ds[0]);
            if new > 0 && (name.ends_with(".bn.weight") || name.ends_with(".bn.bias")) {
                let fill = if name.ends_with(".bn.weight") { QUIET_SCALE } else { 0.0 };
                let _ = dst.narrow(0, ss[0], new).fill_(fill);
            }
            widened += 1;
        }
    });
    widened
}

/// Copies `src` into the store's variables by name. With `partial`, variables that are missing
/// or differ in shape take the overlapping leading slice (weight inheritance between widths),
/// and BatchNorms may come from a supernet's candidate of the same width ([`supernet_bn`]);
/// otherwise every variable must be present with the same shape. Returns how many were copied.
fn copy_vars(vs: &nn::VarStore, src: &[(String, Tensor)], partial: bool) -> Result<usize, String> {
    let vars = vs.variables();
    let mut copied = 0;
    no_grad(|| -> Result<(), String> {
        for (name, dst) in &vars {
            let found = src.iter().find(|(n, _)| n == name).or_else(|| if partial { supernet_bn(src, name, dst) } else { None });
            let Some((_, s)) = found else {
                if partial {
                    continue;
                }
                return Err(format!("variable `{name}` is missing"));
            };
            let (ds, ss) = (dst.size(), s.size());
            let mut dst = dst.shallow_clone();
            if ds == ss {
                dst.copy_(s);
            } else if partial && ds.len() == ss.len() {
                copy_leading(&dst, s);
            } else if partial {
                continue;
            } else {
                return Err(format!("variable `{name}` has shape {ss:?}, the model expects {ds:?}"));
            }
            copied += 1;
        }
        Ok(())
    })?;
    Ok(copied)
}

/// Sets `vs`'s variables from a trained model's or a search supernet's (`src`) the way `--init`
/// does: by name, the leading slice where widths differ, a supernet's BatchNorm of the same
/// width. Variables with no source keep their values. Returns how many were set.
pub fn inherit_vars(vs: &nn::VarStore, src: &[(String, Tensor)]) -> usize {
    // Partial copies skip what they cannot take; they have no error to report.
    copy_vars(vs, src, true).unwrap_or(0)
}

/// A search supernet's BatchNorm for this model's `X.bn.*`: the supernet keeps one per candidate
/// width, `X.bn{c}.*`, and the one whose width `c` is this model's width of `X` (the length of
/// `dst`) is the one the supernet used for it. How `--init` inherits a network from a supernet
/// (`final_init = "supernet"`, docs/pipeline.md); `None` for other variables.
fn supernet_bn<'a>(src: &'a [(String, Tensor)], name: &str, dst: &Tensor) -> Option<&'a (String, Tensor)> {
    let (layer, field) = name.rsplit_once(".bn.")?;
    let want = format!("{layer}.bn{}.{field}", dst.size().first()?);
    src.iter().find(|(n, _)| *n == want)
}

fn load_dataset(cfg: &TrainConfig, split: Split) -> Result<Dataset, TrainError> {
    let Some(n) = cfg.val_images else {
        let subset = match split {
            Split::Train => cfg.train_subset,
            Split::Test => cfg.test_subset,
        };
        return Ok(data::load_for(&cfg.data, &cfg.data_root, split, subset, None)?);
    };
    // A validation split: the last `n` training images are evaluated instead of the test set
    // and never trained on.
    let all = data::load_for(&cfg.data, &cfg.data_root, Split::Train, None, None)?;
    if n == 0 || n >= all.len() {
        return Err(TrainError::Config(format!("--val-images {n}: {} has {} training images", cfg.data, all.len())));
    }
    let keep = all.len() - n;
    Ok(match split {
        Split::Test => all.select(&(keep..all.len()).collect::<Vec<_>>()),
        Split::Train => all.subset(cfg.train_subset.map_or(keep, |s| s.min(keep))),
    })
}

/// Test loss and accuracy of `model` over `loader`.
pub fn evaluate(model: &Model, loader: &Loader) -> (f64, f64) {
    evaluate_shared(model, loader, &World { rank: 0, size: 1 })
}

/// [`evaluate`] with the batches dealt out over the ranks of `world` (batch `i` to rank
/// `i mod size`) and the sums all-reduced: every rank gets the whole loader's result.
fn evaluate_shared(model: &Model, loader: &Loader, world: &World) -> (f64, f64) {
    let mut sums = [0.0f64; 3];
    no_grad(|| {
        for (x, y) in loader.epoch_batches(0).skip(world.rank).step_by(world.size) {
            let logits = tch::nn::ModuleT::forward_t(model, &x, false);
            let n = y.size()[0];
            sums[0] += logits.cross_entropy_for_logits(&y).double_value(&[]) * n as f64;
            sums[1] += logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]) as f64;
            sums[2] += n as f64;
        }
    });
    world.sum_f64(&mut sums);
    (sums[0] / sums[2].max(1.0), sums[1] / sums[2].max(1.0))
}

fn is_quantizer_param(name: &str) -> bool {
    name.ends_with(".alpha") || name.ends_with(".step")
}

/// Trains according to `cfg`; with `resume`, continues from `cfg.out/checkpoint.ot`.
pub fn train(cfg: &TrainConfig, resume: bool, progress: bool) -> Result<TrainSummary, TrainError> {
    let (mut t, train_loader) = Trainer::new(cfg, resume, progress)?;
    let mut history = metrics::read(&t.metrics_path).map_err(|source| TrainError::Io { file: t.metrics_path.clone(), source })?;
    let test_images = t.test_images;
    let stopped = |history| Ok(TrainSummary { epochs: history, final_test_acc: f64::NAN, test_images, checkpoint: cfg.checkpoint_path() });
    while t.meta.epoch < cfg.epochs {
        let Some(m) = t.epoch(&train_loader)? else { return stopped(history) };
        history.push(m);
        if cfg.max_steps.is_some_and(|m| t.meta.step >= m) && t.meta.epoch < cfg.epochs {
            return stopped(history);
        }
    }
    let final_test_acc = match &t.meta.last {
        Some(m) => m.test_acc,
        None => evaluate(&t.model, &t.test_loader).1,
    };
    Ok(TrainSummary { epochs: history, final_test_acc, test_images, checkpoint: cfg.checkpoint_path() })
}

/// Weight decay of one parameter: the clips' own decay, none for other quantizer parameters.
fn decay(cfg: &TrainConfig, name: &str) -> f64 {
    match (is_quantizer_param(name), name.ends_with(".alpha")) {
        (true, true) => cfg.clip_decay,
        (true, false) => 0.0,
        (false, _) => cfg.weight_decay,
    }
}

/// One training run in progress: the model, its optimiser state and where it is.
struct Trainer<'a> {
    cfg: &'a TrainConfig,
    vs: nn::VarStore,
    model: Model,
    sgd: Sgd,
    meta: Meta,
    /// Trainable variables, sorted by name (the optimiser's order).
    params: Vec<(String, Tensor)>,
    teacher: Option<LoadedModel>,
    test_loader: Loader,
    test_images: usize,
    sched: CosineSchedule,
    ckpt_path: PathBuf,
    metrics_path: PathBuf,
    /// Shown on rank 0 only.
    progress: bool,
    world: World,
    /// Gradient shards of this rank ([`TrainConfig::grad_shards`]).
    shards: usize,
    /// BatchNorm groups of every global batch (the ranks' shards split them evenly).
    bn_groups: usize,
    /// BatchNorm running statistics, averaged over the ranks after every step.
    buffers: Vec<Tensor>,
    reduce: ReduceStats,
    step_seconds: f64,
}

impl<'a> Trainer<'a> {
    /// Builds the model, then resumes it from its checkpoint, or initialises it (`--init`) and
    /// calibrates its clips. Returns the trainer and its training batches.
    fn new(cfg: &'a TrainConfig, resume: bool, progress: bool) -> Result<(Trainer<'a>, Loader), TrainError> {
        if cfg.threads > 0 {
            tch::set_num_threads(cfg.threads as i32);
        }
        std::fs::create_dir_all(&cfg.out).map_err(|source| TrainError::Io { file: cfg.out.clone(), source })?;
        let train_ds = load_dataset(cfg, Split::Train)?;
        let test_ds = load_dataset(cfg, Split::Test)?;
        let net = graph::build(cfg.model, train_ds.shape, train_ds.classes, cfg.widths.as_deref(), &cfg.bit_config())?;

        let world = dist::world();
        let shards = cfg.grad_shards.max(1);
        let parts = world.size * shards;
        if cfg.batch_size < parts {
            return Err(TrainError::Config(format!(
                "a batch of {} images cannot be split into {parts} parts ({} ranks × {shards} gradient shards)",
                cfg.batch_size, world.size
            )));
        }
        let bn_groups = dist::bn_groups(cfg.model_options.bn_groups, parts);
        // Each rank's model normalises one shard's share of the groups at a time.
        let local = crate::models::ModelOptions { bn_groups: bn_groups / parts, ..cfg.model_options.clone() };
        tch::manual_seed(cfg.seed as i64);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Model::new(&vs.root(), &net, &local).map_err(|e| TrainError::Model(e.to_string()))?;
        let meta = Meta { format: FORMAT, config: cfg.clone(), net, epoch: 0, batch: 0, step: 0, partial: Partial::default(), last: None };
        let train_loader = Loader::train(&train_ds, cfg.batch_size, cfg.seed, Device::Cpu)?;
        let test_loader = Loader::eval(&test_ds, 500, Device::Cpu)?;
        let per_epoch = train_loader.num_batches();
        let sched = CosineSchedule { base_lr: cfg.lr, warmup_steps: cfg.warmup_epochs * per_epoch, total_steps: cfg.epochs * per_epoch };
        let mut t = Trainer {
            cfg,
            vs,
            model,
            sgd: Sgd::new(cfg.momentum, cfg.nesterov),
            meta,
            params: Vec::new(),
            teacher: None,
            test_loader,
            test_images: test_ds.len(),
            sched,
            ckpt_path: cfg.checkpoint_path(),
            metrics_path: cfg.metrics_path(),
            progress: progress && world.is_root(),
            world,
            shards,
            bn_groups,
            buffers: Vec::new(),
            reduce: ReduceStats::default(),
            step_seconds: 0.0,
        };
        if resume && t.ckpt_path.is_file() {
            t.restore()?;
        } else {
            t.initialise()?;
        }
        if !resume_loaded(&t.meta) && cfg.bits < 32 {
            let calib = Loader::train(&train_ds, 256, cfg.seed ^ 0xC0FFEE, Device::Cpu)?;
            if let Some((x, _)) = calib.batch(0, 0) {
                let n = calibrate_clips(&t.vs, &t.meta.net, &x)?;
                tracing::info!("calibrated {n} PACT clips on one batch");
            }
        }
        t.teacher = cfg.teacher.as_deref().map(load_model).transpose()?;
        let mut vars: Vec<(String, Tensor)> = t.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        // Every rank starts from rank 0's weights, whatever its own initialisation did.
        dist::broadcast_tensors(&world, &vars.iter().map(|(_, v)| v.shallow_clone()).collect::<Vec<_>>());
        t.buffers = vars.iter().filter(|(_, v)| !v.requires_grad()).map(|(_, v)| v.shallow_clone()).collect();
        t.params = vars.into_iter().filter(|(_, v)| v.requires_grad()).collect();
        Ok((t, train_loader))
    }

    /// Continues from `checkpoint.ot`, which must have been written with this configuration
    /// (up to the epoch count and the step limit).
    fn restore(&mut self) -> Result<(), TrainError> {
        let (cfg, path) = (self.cfg, &self.ckpt_path);
        let ck = checkpoint::load::<Meta>(path)?;
        let mut want = cfg.clone();
        want.epochs = ck.meta.config.epochs;
        want.max_steps = ck.meta.config.max_steps;
        // Threads change the speed, not the run (nor does the number of ranks, which is not
        // recorded): a run may resume with other ones.
        want.threads = ck.meta.config.threads;
        want.log_every = ck.meta.config.log_every;
        want.grad_shards = ck.meta.config.grad_shards;
        if ck.meta.config != want {
            return Err(TrainError::Resume(format!(
                "{} was written with a different configuration; use another --out or drop --resume",
                path.display()
            )));
        }
        copy_vars(&self.vs, &ck.vars, false).map_err(|m| TrainError::Resume(format!("{}: {m}", path.display())))?;
        for (name, t) in ck.opt {
            self.sgd.buffers.insert(name, t);
        }
        self.meta = Meta { config: cfg.clone(), ..ck.meta };
        tracing::info!(epoch = self.meta.epoch, batch = self.meta.batch, "resumed from {}", path.display());
        if !self.world.is_root() {
            return Ok(());
        }
        // Drop metrics of epochs after the checkpoint (written by a run killed later).
        let epoch = self.meta.epoch;
        keep_log_lines::<EpochMetrics>(&self.metrics_path, |m| m.epoch < epoch)?;
        self.rewrite_steps()
    }

    /// A fresh start: `--init` weights (leading slices where widths differ), empty metrics.
    fn initialise(&mut self) -> Result<(), TrainError> {
        if let Some(init) = &self.cfg.init {
            // Any nce checkpoint: a trained model or a search's supernet (their metadata differ).
            let ck = checkpoint::load::<serde_json::Value>(init)?;
            let n = inherit_vars(&self.vs, &ck.vars);
            tracing::info!("initialised {n} variables from {}", init.display());
            if self.cfg.widen_init == WidenInit::Quiet {
                let w = widen_quietly(&self.vs, &ck.vars);
                tracing::info!("{w} variables widened quietly (copied channels, BatchNorm scale 1e-3)");
            }
        }
        if !self.world.is_root() {
            return Ok(());
        }
        keep_log_lines::<EpochMetrics>(&self.metrics_path, |_| false)?;
        self.rewrite_steps()
    }

    /// Keeps the step log's records before the checkpoint (all of them are dropped on a fresh
    /// start); without `--log-every` there is none.
    fn rewrite_steps(&self) -> Result<(), TrainError> {
        let path = self.cfg.steps_path();
        if self.cfg.log_every == 0 && !path.exists() {
            return Ok(());
        }
        let step = self.meta.step;
        keep_log_lines::<metrics::StepRecord>(&path, |r| r.step < step)
    }

    /// Writes `checkpoint.ot` (rank 0 only), refusing diverged weights: the loss that reveals a
    /// NaN is computed one step after the update that caused it, so a good checkpoint is never
    /// replaced.
    fn save(&self) -> Result<(), TrainError> {
        if !self.world.is_root() {
            return Ok(());
        }
        let finite = no_grad(|| self.vs.variables().values().all(|p| p.isfinite().all().int64_value(&[]) != 0));
        if !finite {
            return Err(TrainError::NonFinite {
                value: f64::NAN,
                epoch: self.meta.epoch,
                batch: self.meta.batch,
                checkpoint: self.ckpt_path.is_file().then(|| self.ckpt_path.clone()),
            });
        }
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let opt: Vec<(String, Tensor)> = self.sgd.buffers.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
        checkpoint::save(&self.ckpt_path, &self.meta, &vars, &opt)?;
        Ok(())
    }

    /// Cross-entropy, and the loss to minimise (with distillation from the teacher, if any).
    fn loss(&self, x: &Tensor, y: &Tensor, logits: &Tensor) -> (Tensor, Tensor) {
        let ce = logits.cross_entropy_for_logits(y);
        let Some(t) = &self.teacher else { return (ce.shallow_clone(), ce) };
        let tl = no_grad(|| nn::ModuleT::forward_t(&t.model, x, false));
        let temp = self.cfg.kd_temperature;
        let kd = (logits.shallow_clone() / temp).log_softmax(-1, Kind::Float).kl_div(
            &(tl / temp).log_softmax(-1, Kind::Float),
            tch::Reduction::Mean,
            true,
        ) * (temp * temp * logits.size()[1] as f64);
        let loss = &ce * (1.0 - self.cfg.kd_alpha) + kd * self.cfg.kd_alpha;
        (ce, loss)
    }

    fn progress_bar(&self, batches: usize) -> ProgressBar {
        let bar = if self.progress { ProgressBar::new(batches as u64) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{}", self.meta.epoch + 1, self.cfg.epochs));
        bar.set_position(self.meta.batch as u64);
        bar
    }

    /// Runs the rest of the current epoch (from `meta.batch`), evaluates, checkpoints and logs
    /// it. `None` when the step limit (`max_steps`) stopped it mid-epoch, with a checkpoint.
    fn epoch(&mut self, loader: &Loader) -> Result<Option<EpochMetrics>, TrainError> {
        let (cfg, epoch, per_epoch) = (self.cfg, self.meta.epoch, loader.num_batches());
        let bar = self.progress_bar(per_epoch);
        let started = Instant::now();
        let mut p = self.meta.partial.clone();
        let mut lr = self.sched.lr(self.meta.step);
        for (i, (x, y)) in loader.epoch_batches(epoch as u64).enumerate().skip(self.meta.batch) {
            lr = self.sched.lr(self.meta.step);
            // Seed per step (the same on every rank: the step, not the shard, owns the draws):
            // anything random in the forward pass is reproducible after resume.
            let seed = cfg.seed.wrapping_mul(1_000_003).wrapping_add(self.meta.step as u64) as i64;
            let step_started = Instant::now();
            let (value, ce_sum, correct, n) = self.step(&x, &y, lr, seed);
            self.step_seconds += step_started.elapsed().as_secs_f64();
            if !value.is_finite() {
                bar.abandon();
                let checkpoint = self.ckpt_path.is_file().then(|| self.ckpt_path.clone());
                return Err(TrainError::NonFinite { value, epoch, batch: i, checkpoint });
            }
            p.loss_sum += ce_sum;
            p.correct += correct;
            p.seen += n;
            if cfg.log_every > 0 && self.meta.step.is_multiple_of(cfg.log_every) && self.world.is_root() {
                let path = cfg.steps_path();
                let r = metrics::StepRecord { step: self.meta.step, epoch, lr, loss: value };
                metrics::append_step(&path, &r).map_err(|source| TrainError::Io { file: path, source })?;
            }
            self.meta.step += 1;
            self.meta.batch = i + 1;
            let secs = p.seconds + started.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {:.3} acc {:.2}% {:.0} img/s",
                p.loss_sum / p.seen as f64,
                100.0 * p.correct as f64 / p.seen as f64,
                p.seen as f64 / secs.max(1e-9)
            ));
            bar.inc(1);
            let mid = self.meta.batch < per_epoch;
            let stop = cfg.max_steps.is_some_and(|m| self.meta.step >= m) && mid;
            if stop || (cfg.checkpoint_every > 0 && self.meta.step.is_multiple_of(cfg.checkpoint_every) && mid) {
                self.meta.partial = Partial { seconds: secs, ..p.clone() };
                self.save()?;
            }
            if stop {
                bar.abandon();
                tracing::info!(step = self.meta.step, "stopped at --max-steps; continue with --resume");
                return Ok(None);
            }
        }
        let seconds = p.seconds + started.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let (test_loss, test_acc) = evaluate_shared(&self.model, &self.test_loader, &self.world);
        let m = EpochMetrics {
            epoch,
            lr,
            train_loss: p.loss_sum / p.seen.max(1) as f64,
            train_acc: p.correct as f64 / p.seen.max(1) as f64,
            test_loss,
            test_acc,
            images_per_s: p.seen as f64 / seconds.max(1e-9),
            seconds,
        };
        self.end_epoch(&m)?;
        Ok(Some(m))
    }

    /// Prints the epoch, then checkpoints first and appends the metrics line second: a crash in
    /// between re-runs nothing, and the resumed run rewrites metrics up to the checkpoint.
    fn end_epoch(&mut self, m: &EpochMetrics) -> Result<(), TrainError> {
        if self.progress {
            eprintln!(
                "epoch {}/{}: train loss {:.4} acc {:.2}% | test loss {:.4} acc {:.2}% | {:.0} img/s, {:.0} s",
                m.epoch + 1,
                self.cfg.epochs,
                m.train_loss,
                100.0 * m.train_acc,
                m.test_loss,
                100.0 * m.test_acc,
                m.images_per_s,
                m.seconds
            );
        }
        self.meta.epoch += 1;
        self.meta.batch = 0;
        self.meta.partial = Partial::default();
        self.meta.last = Some(m.clone());
        self.save()?;
        if self.world.size > 1 && self.world.is_root() {
            let line = self.reduce.summary(self.step_seconds);
            tracing::info!("{} ranks: {line}", self.world.size);
            if self.progress {
                eprintln!("{} ranks: {line}", self.world.size);
            }
        }
        if !self.world.is_root() {
            return Ok(());
        }
        metrics::append(&self.metrics_path, m).map_err(|source| TrainError::Io { file: self.metrics_path.clone(), source })
    }

    /// One optimisation step on this rank's share of the global batch `(x, y)`: forward and
    /// backward of each of its gradient shards in turn (the loss scaled by the shard's share of
    /// the batch, the gradients accumulating), one all-reduce of the gradients (and BatchNorm
    /// running statistics) over the ranks, SGD. `seed` seeds every shard's forward pass alike.
    /// Returns the global batch's loss (NaN skips the update), its summed cross-entropy, correct
    /// predictions and size.
    fn step(&mut self, x: &Tensor, y: &Tensor, lr: f64, seed: i64) -> (f64, f64, u64, u64) {
        let total = y.size()[0] as usize;
        let parts = self.world.size * self.shards;
        Sgd::zero_grad(&self.params);
        let mut sums = [0.0; 3];
        let mut whole = f64::NAN;
        let mut stats = dist::ShardStats::new(&self.buffers, self.shards);
        for k in 0..self.shards {
            let rows = dist::group_rows(total, self.bn_groups, self.world.rank * self.shards + k, parts);
            let (x, y) = (x.narrow(0, rows.start as i64, rows.len() as i64), y.narrow(0, rows.start as i64, rows.len() as i64));
            let n = rows.len() as f64;
            stats.start_shard(&self.buffers);
            tch::manual_seed(seed);
            let logits = nn::ModuleT::forward_t(&self.model, &x, true);
            let (ce, loss) = self.loss(&x, &y, &logits);
            let correct = logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]) as f64;
            whole = loss.double_value(&[]);
            sums[0] += whole * n;
            sums[1] += ce.double_value(&[]) * n;
            sums[2] += correct;
            if parts > 1 {
                (loss * (n / total as f64)).backward();
            } else {
                loss.backward();
            }
            stats.end_shard(&self.buffers, n / total as f64);
        }
        self.world.sum_f64(&mut sums);
        let value = if parts > 1 { sums[0] / total as f64 } else { whole };
        if value.is_finite() {
            // Shards already summed their BatchNorm statistics, weighted; ranks of one shard
            // weight theirs in the all-reduce.
            let weight = if stats.finish(&self.buffers) { 1.0 } else { self.rows_share(total) };
            if self.world.size > 1 {
                let params: Vec<Tensor> = self.params.iter().map(|(_, p)| p.shallow_clone()).collect();
                dist::reduce_step(&self.world, &params, &self.buffers, weight, &mut self.reduce);
            }
            let cfg = self.cfg;
            self.sgd.step(&self.params, lr, |name| decay(cfg, name));
        }
        (value, sums[1], sums[2] as u64, total as u64)
    }

    /// This rank's share of a global batch of `total` (its parts' rows).
    fn rows_share(&self, total: usize) -> f64 {
        let parts = self.world.size * self.shards;
        let first = dist::group_rows(total, self.bn_groups, self.world.rank * self.shards, parts);
        let last = dist::group_rows(total, self.bn_groups, (self.world.rank + 1) * self.shards - 1, parts);
        (last.end - first.start) as f64 / total as f64
    }
}

fn resume_loaded(meta: &Meta) -> bool {
    meta.step > 0 || meta.epoch > 0
}

/// Sets every PACT clip of a quantized model to the value that minimises the quantization MSE
/// of its layer's full-precision output on batch `x` (computed by a full-precision twin that
/// shares the weights). A fixed initial clip is either far too wide for 2 bits (most
/// activations round to 0, and PACT's α then only moves through its tiny L2 term) or too
/// narrow; this is the usual post-training calibration, done once before QAT starts.
pub fn calibrate_clips(vs: &nn::VarStore, net: &Network, x: &Tensor) -> Result<usize, TrainError> {
    let fp_net = graph::build(
        net.model.parse().map_err(TrainError::Graph)?,
        net.input,
        net.classes,
        Some(&net.widths),
        &BitConfig::full_precision(),
    )?;
    let twin_vs = nn::VarStore::new(Device::Cpu);
    let twin = Model::new(&twin_vs.root(), &fp_net, &ModelOptions::default()).map_err(|e| TrainError::Model(e.to_string()))?;
    let src: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    inherit_vars(&twin_vs, &src);
    let outs = no_grad(|| twin.f_forward_layers(x, true)).map_err(|e| TrainError::Model(e.to_string()))?;
    let vars = vs.variables();
    let mut n = 0;
    for (i, (layer, out)) in net.layers.iter().zip(&outs).enumerate() {
        let Some(alpha) = vars.get(&format!("{}.act.alpha", layer.name)) else { continue };
        let qmax = ((1u64 << layer.out_bits.min(16)) - 1) as f64;
        // Signed codes (`ActQuant::Signed`) cover about [−α/2, α/2] in steps of α/qmax.
        let best =
            if net.is_signed(i) { mse_clip(&out.abs(), (qmax / 2.0).floor()) * qmax / (qmax / 2.0).floor() } else { mse_clip(out, qmax) };
        no_grad(|| {
            let _ = alpha.shallow_clone().fill_(best);
        });
        n += 1;
    }
    Ok(n)
}

/// The clip in (0, max(x)] minimising `E[(x − Q(x))²]` for non-negative `x` and `qmax` levels.
pub fn mse_clip(x: &Tensor, qmax: f64) -> f64 {
    let flat = x.detach().flatten(0, -1).to_kind(Kind::Float);
    let n = flat.size()[0];
    let flat = if n > 200_000 { flat.slice(0, 0, None, n / 200_000 + 1) } else { flat };
    let max = flat.max().double_value(&[]);
    if max <= 0.0 {
        return 1.0;
    }
    let mut best = (f64::MAX, max);
    for i in 1..=60 {
        let c = max * i as f64 / 60.0;
        let q = crate::quant::round_half_away(&(flat.clamp(0.0, c) * (qmax / c))) * (c / qmax);
        let err = (&flat - q).square().mean(Kind::Float).double_value(&[]);
        if err < best.0 {
            best = (err, c);
        }
    }
    best.1
}

/// Rewrites the JSON-lines log `path`, keeping the lines whose record `keep` accepts, verbatim
/// (a line cut short by a killed run does not parse and is dropped). Verbatim because
/// serde_json's default float parsing is not exact to the last bit: re-serialising the parsed
/// records moved some logged losses by one ulp, so a resumed run's log differed from an
/// uninterrupted one's.
fn keep_log_lines<T: serde::de::DeserializeOwned>(path: &Path, keep: impl Fn(&T) -> bool) -> Result<(), TrainError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(TrainError::Io { file: path.into(), source }),
    };
    let mut kept = String::new();
    for line in text.lines().filter(|l| serde_json::from_str::<T>(l).is_ok_and(|r| keep(&r))) {
        kept.push_str(line);
        kept.push('\n');
    }
    Ok(crate::fsutil::write_atomic(path, kept.as_bytes(), &Default::default())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loss logged by a 2-rank run whose parse and re-serialisation by serde_json ends one ulp
    /// away (…4854 came back as …486); the kept lines must stay as they were.
    #[test]
    fn kept_log_lines_are_verbatim() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("steps.jsonl");
        let lines = [
            r#"{"step":3,"epoch":0,"lr":0.013333333333333334,"loss":2.2215349674224854}"#,
            r#"{"step":8,"epoch":0,"lr":0.030000000000000002,"loss":2.845138907432556}"#,
            r#"{"step":9,"epoch":0,"lr":0.0333"#,
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();
        keep_log_lines::<metrics::StepRecord>(&path, |r| r.step < 9).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{}\n{}\n", lines[0], lines[1]));
        keep_log_lines::<metrics::StepRecord>(&path, |r| r.step < 5).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{}\n", lines[0]));
    }
}

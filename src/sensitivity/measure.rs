//! Per-layer 2-bit quantization sensitivity of a trained full-precision network: which layers
//! lose the most when quantized, i.e. where extra channels (NCE's expansion) are likely to pay.
//!
//! From one FP32 checkpoint (`nce train --bits 32`), on a validation split carved from the
//! training images (the last `val_images` of the training set; never the test set, so that what
//! the sensitivities later decide, expansion and allocation, is chosen without it) and without any
//! training, every quantizable layer `L` (a conv with 2-bit weights in the default W2A2
//! configuration: every conv except the first; the 8-bit first conv and last linear are not
//! candidates) is measured two ways:
//!
//! - **one-on**: only `L` at 2 bits (weights and the activations it reads), everything else
//!   full precision; `one_on_drop = acc(FP32) − acc(one-on L)`.
//! - **one-off**: the full W2A2 network (8-bit first conv and last linear) except `L`, kept at
//!   full precision; `one_off_gain = acc(one-off L) − acc(W2A2)`.
//!
//! One-on isolates a layer's own damage; one-off measures it in the company it will actually
//! keep, where errors compound. The two disagree more as quantization noise interacts.
//!
//! Each configuration is a [`graph::build`] with [`BitConfig::overrides`], a fresh model with
//! the FP32 weights copied by name, and PACT clips calibrated on one training batch
//! ([`calibrate_clips`]: MSE-optimal clip of each layer's full-precision output). Activations
//! are quantized where they are produced, so "the activations `L` reads" is the tensor feeding
//! `L`: in one-off keeping `L`'s input at full precision keeps that tensor full precision for
//! every reader (the graph stores a tensor at the highest precision any reader asks for), and in
//! one-on the tensor feeding `L` is stored at 2 bits even when it also feeds a residual
//! shortcut — both exactly as that tensor is shared in the real W2A2 network. Weights use SAWB
//! (the default quantizer, which needs no calibration). Accuracies are in percent, drops and
//! gains in percentage points. See `docs/sensitivity.md`.
//!
//! **From a trained W2A2 checkpoint** (`nce train --bits 2`, the default 8-bit first and last
//! layers) only one-off is measured, with the checkpoint's own weights and trained PACT clips:
//! the gain of keeping one layer at full precision in a network that has adapted to 2 bits.
//! This is the calibrated measure: from FP32 weights the all-W2A2 network without training sits
//! near chance on small models, and one-off gains around it are noise. One-on needs an FP32
//! reference and is reported as NaN.

use super::LayerSensitivity;
use crate::data::{self, DataError, Loader, Split};
use crate::graph::{self, BitConfig, GraphError, Network, Op, Src};
use crate::models::{self, ActQuantizer, Model, ModelOptions, WeightQuantizer};
use crate::plot::{self, PlotError};
use crate::train::{self, calibrate_clips, TrainError};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{nn, Device};

/// What to measure and where to write it.
#[derive(Clone, Debug)]
pub struct SensitivityConfig {
    /// An FP32 checkpoint written by `nce train --bits 32`.
    pub checkpoint: PathBuf,
    /// Dataset name; `None` = the one the checkpoint was trained on.
    pub data: Option<String>,
    pub data_root: PathBuf,
    /// Evaluate on the last N training images (the validation split); the calibration batch
    /// comes from the first images, so the two never overlap.
    pub val_images: usize,
    /// Validation batches (of `eval_batch`) over which the empirical Fisher of every weight is
    /// accumulated for the `fit` measure (0 = skip it).
    pub fisher_batches: usize,
    /// Training images in the calibration batch.
    pub calib_batch: usize,
    pub eval_batch: usize,
    /// Intra-op threads for libtorch (0 = libtorch's default).
    pub threads: usize,
    /// Folder for `sensitivity.csv` and `sensitivity.{svg,png}`.
    pub out: PathBuf,
}

impl SensitivityConfig {
    pub fn new(checkpoint: PathBuf, out: PathBuf) -> SensitivityConfig {
        SensitivityConfig {
            checkpoint,
            data: None,
            data_root: PathBuf::from("data"),
            val_images: 10_000,
            fisher_batches: 8,
            calib_batch: 256,
            eval_batch: 500,
            threads: 0,
            out,
        }
    }
}

/// The outcome of [`run`].
#[derive(Clone, Debug)]
pub struct SensitivityReport {
    pub model: String,
    pub data: String,
    /// Validation images the accuracies were measured on (the last ones of the training set).
    pub val_images: usize,
    pub fp32_acc: f64,
    /// Everything quantized (2-bit, 8-bit first conv and last linear), clips calibrated, no
    /// training.
    pub w2a2_acc: f64,
    pub layers: Vec<LayerSensitivity>,
    pub csv: PathBuf,
    pub plots: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SensitivityError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Plot(#[from] PlotError),
    #[error("model: {0}")]
    Model(#[from] models::ModelError),
    #[error("{}: {source}", file.display())]
    Io { file: PathBuf, source: std::io::Error },
    #[error("{}: {msg}", checkpoint.display())]
    Checkpoint { checkpoint: PathBuf, msg: String },
    #[error("{0}")]
    Invalid(String),
}

/// The layers measured: convs with 2-bit weights in the default W2A2 configuration of `net`'s
/// model and widths (every conv but the first; the last linear is 8-bit too).
pub fn quantizable_layers(net: &Network) -> Result<Vec<String>, GraphError> {
    let w2a2 = rebuild(net, &BitConfig::uniform(2))?;
    Ok(w2a2.layers.iter().filter(|l| matches!(l.op, Op::Conv { .. }) && l.wbits == 2).map(|l| l.name.clone()).collect())
}

/// `net`'s model and widths under `bits`.
fn rebuild(net: &Network, bits: &BitConfig) -> Result<Network, GraphError> {
    graph::build(net.model.parse()?, net.input, net.classes, Some(&net.widths), bits)
}

/// Only `layer` at 2 bits: its weights by override, and the tensor it reads stored at 2 bits
/// where it is produced (the graph would otherwise keep it at the full precision its other
/// readers, e.g. a residual shortcut, ask for).
fn one_on(net: &Network, layer: &str) -> Result<Network, GraphError> {
    let mut bits = BitConfig::full_precision();
    bits.overrides.insert(layer.to_string(), (2, 2));
    let mut n = rebuild(net, &bits)?;
    let i = n.layers.iter().position(|l| l.name == layer).ok_or_else(|| GraphError::UnknownLayer(layer.into()))?;
    let mut stack: Vec<Src> = n.layers[i].inputs.clone();
    while let Some(src) = stack.pop() {
        let Src::Layer(j) = src else { continue };
        match n.layers[j].op {
            // Layers with an activation quantizer: store the output at 2 bits.
            Op::Conv { relu: true, .. } | Op::Add { relu: true } => n.layers[j].out_bits = n.layers[j].out_bits.min(2),
            // Pass-through layers read their producer's precision: look further back.
            Op::Subsample { .. } | Op::MaxPool { .. } => stack.extend(n.layers[j].inputs.iter().copied()),
            _ => {}
        }
    }
    Ok(n)
}

/// The W2A2 network with `layer` (if any) kept at full precision.
fn one_off(net: &Network, layer: Option<&str>) -> Result<Network, GraphError> {
    let mut bits = BitConfig::uniform(2);
    if let Some(l) = layer {
        bits.overrides.insert(l.to_string(), (32, 32));
    }
    rebuild(net, &bits)
}

/// Everything shared by the measurements.
struct Bench<'a> {
    fp: &'a nn::VarStore,
    options: ModelOptions,
    calib: tch::Tensor,
    val: Loader,
    /// (PACT variable, bits) → calibrated clip. [`calibrate_clips`] sets each clip from the
    /// full-precision output of its layer (the same in every configuration: same weights, same
    /// batch) and the layer's bits, so one calibration of W2A2 serves every configuration; this
    /// gives the same clips as calibrating each one, 37× cheaper for ResNet-20.
    clips: RefCell<HashMap<(String, u8), f64>>,
    /// The checkpoint is a trained W2A2 model: keep its clips instead of calibrating.
    trained_clips: bool,
}

impl Bench<'_> {
    /// Validation accuracy (percent) of `net` with the checkpoint's weights and calibrated clips.
    fn accuracy(&self, net: &Network) -> Result<f64, SensitivityError> {
        let (_vs, model) = self.model(net)?;
        Ok(100.0 * train::evaluate(&model, &self.val).1)
    }

    /// `net` with the checkpoint's weights and its trained clips, or clips calibrated (once per
    /// variable and bit width) for configurations the checkpoint has none for.
    fn model(&self, net: &Network) -> Result<(nn::VarStore, Model), SensitivityError> {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let model = Model::new(&vs.root(), net, &self.options)?;
        let report = models::copy_by_name(&mut vs, self.fp)?;
        if let Some(m) = report.missing.iter().find(|n| !n.ends_with(".act.alpha")) {
            return Err(SensitivityError::Invalid(format!("the checkpoint lacks variable `{m}`")));
        }
        if self.trained_clips && !report.missing.iter().any(|n| n.ends_with(".act.alpha")) {
            return Ok((vs, model));
        }
        let alphas: Vec<(String, u8, tch::Tensor)> = model
            .pact_alphas()
            .into_iter()
            .map(|(name, t)| {
                let bits = net.layers.iter().find(|l| name.strip_suffix(".act.alpha") == Some(l.name.as_str())).map_or(0, |l| l.out_bits);
                (name, bits, t)
            })
            .collect();
        let mut clips = self.clips.borrow_mut();
        if alphas.iter().all(|(n, b, _)| clips.contains_key(&(n.clone(), *b))) {
            tch::no_grad(|| {
                for (n, b, t) in &alphas {
                    let _ = t.shallow_clone().fill_(clips[&(n.clone(), *b)]);
                }
            });
        } else {
            calibrate_clips(&vs, net, &self.calib)?;
            for (n, b, t) in &alphas {
                clips.insert((n.clone(), *b), t.reshape([-1]).double_value(&[0]));
            }
        }
        Ok((vs, model))
    }

    /// FIT of every 2-bit conv of `net` (the W2A2 network): `Tr(F)/n · ‖Q(W) − W‖²`, HAWQ-V2's
    /// second-order estimate of the loss a layer's weight quantization adds, with the Hessian
    /// trace replaced by the empirical Fisher's. The Fisher trace is estimated from `batches`
    /// validation batches as `B·‖∇L_batch‖²` (the squared mean gradient of a batch of `B` is
    /// `Tr(F)/B` plus the squared true gradient, which is small at a trained optimum), through
    /// the quantizers' straight-through gradients.
    fn fit(&self, net: &Network, batches: usize) -> Result<HashMap<String, f64>, SensitivityError> {
        if batches == 0 {
            return Ok(HashMap::new());
        }
        let (vs, model) = self.model(net)?;
        let vars = vs.variables();
        let convs: Vec<(String, tch::Tensor)> = net
            .layers
            .iter()
            .filter(|l| matches!(l.op, Op::Conv { .. }) && l.wbits == 2)
            .filter_map(|l| vars.get(&format!("{}.weight", l.name)).map(|t| (l.name.clone(), t.shallow_clone())))
            .collect();
        let mut trace: HashMap<String, f64> = HashMap::new();
        let mut seen = 0usize;
        for (x, y) in self.val.epoch_batches(0).take(batches) {
            vs.variables().values().for_each(|t| t.shallow_clone().zero_grad());
            let loss = model.f_forward_t(&x, false)?.cross_entropy_for_logits(&y);
            loss.backward();
            let b = y.size()[0] as f64;
            for (name, w) in &convs {
                *trace.entry(name.clone()).or_default() += b * w.grad().square().sum(tch::Kind::Double).double_value(&[]);
            }
            seen += 1;
        }
        let mut fit = HashMap::new();
        for e in model.export() {
            let (Some(w), Some(q), Some(t)) = (&e.weight, &e.weight_int, trace.get(&e.layer.name)) else { continue };
            let noise = (q.dequantize() - w).square().sum(tch::Kind::Double).double_value(&[]);
            fit.insert(e.layer.name.clone(), t / seen.max(1) as f64 / w.numel() as f64 * noise);
        }
        Ok(fit)
    }
}

/// What [`run_with`] reports while it works.
pub enum Progress<'a> {
    /// The whole network's accuracies are known; `layers` layers follow.
    Baseline { model: &'a str, fp32_acc: f64, w2a2_acc: f64, trained_w2a2: bool, images: usize, data: &'a str, layers: usize },
    /// One more layer is done.
    Layer(&'a LayerSensitivity),
}

/// Measures one-on and one-off sensitivity of every quantizable layer and writes
/// `sensitivity.csv` and `sensitivity.{svg,png}` into `cfg.out`. With `progress`, prints one
/// line per layer to stderr.
pub fn run(cfg: &SensitivityConfig, progress: bool) -> Result<SensitivityReport, SensitivityError> {
    run_with(cfg, &mut |p| match p {
        _ if !progress => {}
        Progress::Baseline { model, fp32_acc, w2a2_acc, trained_w2a2, images, data, .. } => {
            let how = if trained_w2a2 { "trained checkpoint" } else { "calibrated, untrained" };
            eprintln!("{model}: FP32 {fp32_acc:.2}%, W2A2 ({how}) {w2a2_acc:.2}% on {images} {data} validation images (the last of the training set)");
        }
        Progress::Layer(s) => eprintln!("  {:<20} one-on drop {:+7.2} pp, one-off gain {:+7.2} pp", s.layer, s.one_on_drop, s.one_off_gain),
    })
}

/// [`run`], reporting its progress to `on_progress` instead of printing it.
pub fn run_with(cfg: &SensitivityConfig, on_progress: &mut dyn FnMut(Progress)) -> Result<SensitivityReport, SensitivityError> {
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    if cfg.calib_batch == 0 || cfg.eval_batch == 0 {
        return Err(SensitivityError::Invalid("calibration and evaluation batches must be non-empty".into()));
    }
    let loaded = train::load_model(&cfg.checkpoint)?;
    let net = &loaded.meta.net;
    let trained_w2a2 = starting_point(cfg, net)?;
    let name = cfg.data.clone().unwrap_or_else(|| loaded.meta.config.data.clone());
    let (val, calib) = split(cfg, net, &name)?;
    std::fs::create_dir_all(&cfg.out).map_err(|source| SensitivityError::Io { file: cfg.out.clone(), source })?;

    // SAWB weights and PACT activations whatever the checkpoint trained with: both need no
    // training to start from FP32 weights (LSQ steps would).
    let options =
        ModelOptions { weight: WeightQuantizer::Sawb, activation: ActQuantizer::Pact, ..loaded.meta.config.model_options.clone() };
    let bench = Bench {
        fp: &loaded.vs,
        options,
        calib,
        val: Loader::eval(&val, cfg.eval_batch, Device::Cpu)?,
        clips: RefCell::default(),
        trained_clips: trained_w2a2,
    };
    let fp32_acc = if trained_w2a2 { f64::NAN } else { 100.0 * train::evaluate(&loaded.model, &bench.val).1 };
    let w2a2 = one_off(net, None)?;
    let w2a2_acc = bench.accuracy(&w2a2)?;
    let fit = bench.fit(&w2a2, cfg.fisher_batches)?;
    let quantizable = quantizable_layers(net)?;
    let (model, images, layers) = (&net.model, val.len(), quantizable.len());
    on_progress(Progress::Baseline { model, fp32_acc, w2a2_acc, trained_w2a2, images, data: &name, layers });
    let mut layers = Vec::new();
    for layer in quantizable {
        let one_on_acc = if trained_w2a2 { f64::NAN } else { bench.accuracy(&one_on(net, &layer)?)? };
        let one_off_acc = bench.accuracy(&one_off(net, Some(&layer))?)?;
        let s = LayerSensitivity {
            one_on_drop: fp32_acc - one_on_acc,
            one_off_gain: one_off_acc - w2a2_acc,
            one_on_acc,
            one_off_acc,
            fit: fit.get(&layer).copied().unwrap_or(f64::NAN),
            layer,
        };
        on_progress(Progress::Layer(&s));
        layers.push(s);
    }
    let (csv, plots) = write_outputs(cfg, &net.model, &layers, fp32_acc, w2a2_acc)?;
    Ok(SensitivityReport { model: net.model.clone(), data: name, val_images: val.len(), fp32_acc, w2a2_acc, layers, csv, plots })
}

/// Whether the checkpoint is a trained default W2A2 one (else it must be full precision).
fn starting_point(cfg: &SensitivityConfig, net: &Network) -> Result<bool, SensitivityError> {
    let w2a2_bits: Vec<u8> = rebuild(net, &BitConfig::uniform(2))?.layers.iter().map(|l| l.wbits).collect();
    let trained_w2a2 = net.layers.iter().map(|l| l.wbits).collect::<Vec<_>>() == w2a2_bits;
    if let Some(l) = net.layers.iter().find(|l| l.has_weights() && l.wbits != 32).filter(|_| !trained_w2a2) {
        return Err(SensitivityError::Checkpoint {
            checkpoint: cfg.checkpoint.clone(),
            msg: format!(
                "`{}` has {}-bit weights; sensitivity starts from a full-precision checkpoint (nce train --bits 32) or a default W2A2 one (nce train --bits 2)",
                l.name, l.wbits
            ),
        });
    }
    Ok(trained_w2a2)
}

/// The validation split (the last `val_images` training images) and one calibration batch
/// (the first `calib_batch`); refused when they would overlap.
fn split(cfg: &SensitivityConfig, net: &Network, name: &str) -> Result<(data::Dataset, tch::Tensor), SensitivityError> {
    let train_set = data::load(name, &cfg.data_root, Split::Train)?;
    if train_set.shape != net.input {
        return Err(SensitivityError::Checkpoint {
            checkpoint: cfg.checkpoint.clone(),
            msg: format!("expects {} inputs, {name} has {}", net.input, train_set.shape),
        });
    }
    let n = train_set.len();
    if cfg.val_images == 0 || cfg.calib_batch + cfg.val_images > n {
        return Err(SensitivityError::Invalid(format!(
            "{name} has {n} training images: too few for {} validation images after a calibration batch of {}",
            cfg.val_images, cfg.calib_batch
        )));
    }
    let val = train_set.select(&(n - cfg.val_images..n).collect::<Vec<_>>());
    let calib_set = train_set.subset(cfg.calib_batch);
    let batch = Loader::eval(&calib_set, calib_set.len(), Device::Cpu)?.batch(0, 0);
    let calib = batch.ok_or_else(|| SensitivityError::Invalid(format!("{name} has no training images to calibrate on")))?.0;
    Ok((val, calib))
}

/// `sensitivity.csv` and the bar charts, in `cfg.out`.
fn write_outputs(
    cfg: &SensitivityConfig,
    model: &str,
    layers: &[LayerSensitivity],
    fp32_acc: f64,
    w2a2_acc: f64,
) -> Result<(PathBuf, Vec<PathBuf>), SensitivityError> {
    let csv = cfg.out.join("sensitivity.csv");
    write_csv(&csv, layers, fp32_acc, w2a2_acc)?;
    let names: Vec<String> = layers.iter().map(|l| l.layer.clone()).collect();
    let plots = plot::bar_chart(
        &cfg.out.join("sensitivity"),
        &format!("{model} 2-bit sensitivity (FP32 {fp32_acc:.1}%, W2A2 {w2a2_acc:.1}%)"),
        "accuracy (percentage points)",
        &names,
        &[
            ("one-on drop (only this layer 2-bit)".into(), layers.iter().map(|l| l.one_on_drop).collect()),
            ("one-off gain (only this layer FP32)".into(), layers.iter().map(|l| l.one_off_gain).collect()),
        ],
    )?;
    Ok((csv, plots))
}

fn write_csv(path: &Path, layers: &[LayerSensitivity], fp32: f64, w2a2: f64) -> Result<(), SensitivityError> {
    super::table::write(path, layers, fp32, w2a2).map_err(|e| SensitivityError::Invalid(e.to_string()))
}

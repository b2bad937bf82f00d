//! tch models built from a [`graph::Network`](crate::graph::Network), for any widths and bits.
//!
//! The model is interpreted from the layer graph rather than written per architecture, so the
//! trained network, the cost plugins and the exported integer network share one structure.
//! Per layer (`docs/quantization.md`, float form):
//!
//! - `Conv`: conv2d without bias on the (already quantized) input with quantized weights,
//!   BatchNorm, then — when `relu` — the activation quantizer at the layer's `out_bits`
//!   (PACT or LSQ; a plain ReLU at 32 bits). A conv without ReLU (the residual branch) is
//!   left in float: the integer form fuses it with the add; a projection shortcut or a linear
//!   bottleneck ([`Network::is_signed`]) gets signed 8-bit codes ([`ActQuant::Signed`]). A
//!   conv reading the image of an imported network with an input normalisation applies it
//!   ([`InputNorm`]).
//! - `Add`: zero-pads the narrower input in channels, adds, then ReLU/quantizer like a conv;
//!   an add without ReLU (an imported linear bottleneck) gets signed 8-bit codes.
//! - `Subsample`: `x[:, :, ::s, ::s]`; `MaxPool`; `GlobalAvgPool` (no quantizer: the integer
//!   form keeps the exact sum); `Linear` with bias (the logits, not quantized).
//!
//! Weights by `wbits`: 32 → full precision, 8 → symmetric max-abs, 2..=7 → SAWB or LSQ
//! ([`ModelOptions::weight`]).
//!
//! Variables are named after the graph layers so checkpoints transfer by name between FP32
//! and quantized models of the same widths (quantizer variables are simply absent from an FP32
//! checkpoint):
//!
//! | variable | example |
//! |---|---|
//! | conv / linear weight | `layer1.0.conv_a.weight`, `fc.weight` |
//! | linear bias | `fc.bias` |
//! | BatchNorm | `layer1.0.conv_a.bn.{weight,bias,running_mean,running_var}` |
//! | PACT clip | `layer1.0.conv_a.act.alpha`, `layer1.0.add.act.alpha` |
//! | LSQ step (+ its `initialized` flag) | `….act.step`, `….wq.step` |
//!
//! Optimizer groups: see [`quant::groups`](crate::quant::groups).

use crate::graph::{Layer, Network, Op, Shape, Src};
use crate::quant::{groups, ActInt, ActQuant, IntWeights, Lsq, LsqTarget, Pact, QuantError, WeightQuant};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use std::str::FromStr;
use tch::{nn, TchError, Tensor};

/// Quantizer for weights of 2..=7 bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum WeightQuantizer {
    #[default]
    Sawb,
    Lsq,
}

/// Quantizer for ReLU outputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ActQuantizer {
    #[default]
    Pact,
    Lsq,
}

/// An unknown quantizer name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("unknown weight quantizer `{0}` (use sawb or lsq)")]
    Weight(String),
    #[error("unknown activation quantizer `{0}` (use pact or lsq)")]
    Activation(String),
}

impl FromStr for WeightQuantizer {
    type Err = OptionsError;
    fn from_str(s: &str) -> Result<Self, OptionsError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sawb" => Ok(WeightQuantizer::Sawb),
            "lsq" => Ok(WeightQuantizer::Lsq),
            _ => Err(OptionsError::Weight(s.into())),
        }
    }
}

impl FromStr for ActQuantizer {
    type Err = OptionsError;
    fn from_str(s: &str) -> Result<Self, OptionsError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pact" => Ok(ActQuantizer::Pact),
            "lsq" => Ok(ActQuantizer::Lsq),
            _ => Err(OptionsError::Activation(s.into())),
        }
    }
}

/// Model-level quantizer choices (the bits come from the network).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelOptions {
    pub weight: WeightQuantizer,
    pub activation: ActQuantizer,
    /// Initial PACT clip (see [`Pact::DEFAULT_INIT`] for why 8).
    pub pact_init: f64,
    /// Ghost batches: BatchNorm in training takes its statistics over this many equal
    /// consecutive parts of each batch (1 = the whole batch). A data-parallel run over N ranks
    /// computes per-rank statistics, which is this with N parts (`docs/distributed.md`).
    #[serde(skip_serializing_if = "is_one")]
    pub bn_groups: usize,
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions { weight: WeightQuantizer::Sawb, activation: ActQuantizer::Pact, pact_init: Pact::DEFAULT_INIT, bn_groups: 1 }
    }
}

impl ModelOptions {
    /// From command-line names (`sawb|lsq`, `pact|lsq`), default PACT init.
    pub fn parse(weight: &str, activation: &str) -> Result<Self, OptionsError> {
        Ok(ModelOptions { weight: weight.parse()?, activation: activation.parse()?, ..Default::default() })
    }
}

/// Errors building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("the network has no layers")]
    Empty,
    #[error("layer `{layer}`: {msg}")]
    Structure { layer: String, msg: String },
    #[error("layer `{layer}`: {bits}-bit weights are not supported (use 2..=8, or 32 for full precision)")]
    WeightBits { layer: String, bits: u8 },
    #[error("layer `{layer}`: {bits}-bit activations are not supported (use 1..=16, or 32 for full precision)")]
    ActBits { layer: String, bits: u8 },
    #[error("layer `{layer}`: {source}")]
    Quant { layer: String, source: QuantError },
    #[error("input of shape {got:?} does not match the network input [N, {}, {}, {}]", expected.c, expected.h, expected.w)]
    InputShape { got: Vec<i64>, expected: Shape },
    #[error("variable `{name}` has shape {dst:?} here but {src:?} in the source")]
    VarShape { name: String, dst: Vec<i64>, src: Vec<i64> },
    #[error(transparent)]
    Torch(#[from] TchError),
}

/// BatchNorm2d with its variables exposed (tch's keeps ε private; the exporter needs it).
#[derive(Debug)]
pub struct BatchNorm {
    /// γ.
    pub weight: Tensor,
    /// β.
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub eps: f64,
    pub momentum: f64,
    /// Ghost batches in training ([`ModelOptions::bn_groups`]).
    pub groups: usize,
}

impl BatchNorm {
    /// PyTorch defaults (ε = 1e-5, momentum 0.1), γ = 1, β = 0.
    fn new(p: &nn::Path, c: i64, groups: usize) -> Result<Self, TchError> {
        let g = p.set_group(groups::NO_DECAY);
        Ok(BatchNorm {
            weight: g.f_var("weight", &[c], nn::Init::Const(1.0))?,
            bias: g.f_var("bias", &[c], nn::Init::Const(0.0))?,
            running_mean: p.f_zeros_no_train("running_mean", &[c])?,
            running_var: p.f_ones_no_train("running_var", &[c])?,
            eps: 1e-5,
            momentum: 0.1,
            groups: groups.max(1),
        })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor, TchError> {
        if train && self.groups > 1 {
            return self.forward_ghost(x);
        }
        self.forward_with(x, &self.running_mean, &self.running_var, train)
    }

    fn forward_with(&self, x: &Tensor, mean: &Tensor, var: &Tensor, train: bool) -> Result<Tensor, TchError> {
        x.f_batch_norm(Some(&self.weight), Some(&self.bias), Some(mean), Some(var), train, self.momentum, self.eps, true)
    }

    fn forward_ghost(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let stats = RunningStats { mean: &self.running_mean, var: &self.running_var, momentum: self.momentum, eps: self.eps };
        ghost_batch_norm(x, Some(&self.weight), Some(&self.bias), &stats, self.groups)
    }
}

/// The running statistics a training BatchNorm updates, and its constants.
pub(crate) struct RunningStats<'a> {
    pub mean: &'a Tensor,
    pub var: &'a Tensor,
    pub momentum: f64,
    pub eps: f64,
}

/// Training BatchNorm with statistics per ghost batch: `groups` consecutive parts of the batch
/// ([`crate::train::dist::shard`]'s split), each normalised over its own rows. The running
/// statistics move by the size-weighted mean of the groups' updates: what averaging the
/// running statistics of ranks (or gradient shards) that each normalised one group gives, in
/// the same order of summation.
pub(crate) fn ghost_batch_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    stats: &RunningStats,
    groups: usize,
) -> Result<Tensor, TchError> {
    let n = x.size().first().copied().unwrap_or(0).max(0) as usize;
    let (mut outs, mut mean, mut var) = (Vec::with_capacity(groups), stats.mean.zeros_like(), stats.var.zeros_like());
    for j in 0..groups {
        let rows = crate::train::dist::shard(n, j, groups);
        if rows.is_empty() {
            continue;
        }
        let (m, v) = (stats.mean.detach().copy(), stats.var.detach().copy());
        let part = x.f_narrow(0, rows.start as i64, rows.len() as i64)?;
        outs.push(part.f_batch_norm(weight, bias, Some(&m), Some(&v), true, stats.momentum, stats.eps, true)?);
        let share = rows.len() as f64 / n as f64;
        mean += m * share;
        var += v * share;
    }
    tch::no_grad(|| {
        stats.mean.shallow_clone().copy_(&mean);
        stats.var.shallow_clone().copy_(&var);
    });
    Tensor::f_cat(&outs, 0)
}

/// One graph layer with its variables and quantizers.
#[derive(Debug)]
pub struct LayerModule {
    pub spec: Layer,
    /// Conv `[out, in/groups, k, k]` or linear `[out, in]` weight (float master copy).
    pub weight: Option<Tensor>,
    pub weight_quant: WeightQuant,
    /// Linear bias.
    pub bias: Option<Tensor>,
    pub bn: Option<BatchNorm>,
    /// What follows the ReLU point (conv with `relu`, add with `relu`); `Identity` otherwise.
    pub act: ActQuant,
    /// A conv reading the image of a network with an input normalisation.
    pub input_norm: Option<InputNorm>,
}

/// The input normalisation `(x − μ)/σ` as a conv reading the image applies it
/// (`docs/import.md`): at full precision on the image (zero padding of the normalised image,
/// as in the ONNX graph); quantized, folded into the conv, which reads the image in [0, 1]
/// (its 8-bit pixel codes) with zero padding: weights `w/σ` (per input channel) are quantized,
/// and `Σ (w/σ)_q · μ` is subtracted per output channel (exact away from the border).
#[derive(Debug)]
pub struct InputNorm {
    /// μ and 1/σ, `[1, C, 1, 1]`.
    pub mean: Tensor,
    pub inv_std: Tensor,
    /// How a per-channel vector lines up with the conv's weight: `[1, C, 1, 1]` for a dense
    /// conv, `[C, 1, 1, 1]` for a depthwise one.
    weight_view: [i64; 4],
}

impl InputNorm {
    /// The normalisation `n` of a `channels`-channel image for a conv with `groups` groups
    /// (dense or depthwise: what the importer reads).
    pub fn new(n: &crate::graph::Normalization, channels: usize, groups: usize, device: tch::Device) -> Result<InputNorm, String> {
        if n.mean.len() != channels || n.std.len() != channels {
            return Err(format!("input normalisation for {} channels, the image has {channels}", n.mean.len()));
        }
        let c = channels as i64;
        let weight_view = match groups {
            1 => [1, c, 1, 1],
            g if g == channels => [c, 1, 1, 1],
            g => return Err(format!("a conv with {g} groups cannot read a normalised image (dense or depthwise only)")),
        };
        let inv: Vec<f32> = n.std.iter().map(|s| 1.0 / s).collect();
        let t = |v: &[f32]| Tensor::from_slice(v).reshape([1, c, 1, 1]).to_device(device);
        Ok(InputNorm { mean: t(&n.mean), inv_std: t(&inv), weight_view })
    }

    /// The weight the quantized conv reads the image with: `w/σ`.
    pub fn fold(&self, w: &Tensor) -> Tensor {
        w * self.inv_std.view(self.weight_view)
    }

    /// `Σ w_q · μ` per output channel (`[out]`), what the folded conv subtracts.
    pub fn offset(&self, wq: &Tensor) -> Result<Tensor, TchError> {
        (wq * self.mean.view(self.weight_view)).f_sum_dim_intlist([1i64, 2, 3].as_slice(), false, wq.kind())
    }

    /// The conv `conv` of image `x` with weight `w`: on the normalised image when `quantize` is
    /// `None` (full precision), else folded (`quantize` maps `w/σ` to its quantized value).
    pub fn conv(
        &self,
        x: &Tensor,
        w: &Tensor,
        quantize: Option<&dyn Fn(&Tensor) -> Tensor>,
        conv: impl Fn(&Tensor, &Tensor) -> Result<Tensor, TchError>,
    ) -> Result<Tensor, TchError> {
        match quantize {
            None => conv(&((x - &self.mean) * &self.inv_std), w),
            Some(q) => {
                let wq = q(&self.fold(w));
                Ok(conv(x, &wq)? - self.offset(&wq)?.f_view([1, -1, 1, 1])?)
            }
        }
    }
}

impl LayerModule {
    fn forward(&self, inputs: &[&Tensor], train: bool) -> Result<Tensor, TchError> {
        let x = inputs[0];
        Ok(match self.spec.op {
            Op::Conv { stride, pad, groups, relu6, .. } => {
                let (Some(w), Some(bn)) = (&self.weight, &self.bn) else {
                    return Err(TchError::Kind(format!("conv `{}` without weight/BN", self.spec.name)));
                };
                let (s, p) = (stride as i64, pad as i64);
                let conv = |x: &Tensor, w: &Tensor| x.f_conv2d(w, None::<Tensor>, [s, s], [p, p], [1, 1], groups as i64);
                let quantize = |w: &Tensor| self.weight_quant.forward(w, train);
                let quantized = !matches!(self.weight_quant, WeightQuant::None);
                let y = match &self.input_norm {
                    None => conv(x, &quantize(w))?,
                    Some(n) => n.conv(x, w, quantized.then_some(&quantize as &dyn Fn(&Tensor) -> Tensor), conv)?,
                };
                let y = self.act.forward(&bn.forward_t(&y, train)?, train);
                // ReLU6 in full precision; a quantizer's clip replaces the cap.
                if relu6 && matches!(self.act, ActQuant::Relu) {
                    y.f_clamp_max(6.0)?
                } else {
                    y
                }
            }
            Op::Linear => {
                let Some(w) = &self.weight else {
                    return Err(TchError::Kind(format!("linear `{}` without weight", self.spec.name)));
                };
                let wq = self.weight_quant.forward(w, train);
                x.f_flatten(1, -1)?.f_linear(&wq, self.bias.as_ref())?
            }
            Op::Add { .. } => {
                let (a, b) = (inputs[0], inputs[1]);
                let (ca, cb) = (a.size()[1], b.size()[1]);
                // Zero-pad the narrower input at the end of the channel dimension.
                let pad = |t: &Tensor, extra: i64| t.f_constant_pad_nd([0, 0, 0, 0, 0, extra]);
                let sum = if ca == cb {
                    a + b
                } else if ca < cb {
                    pad(a, cb - ca)? + b
                } else {
                    a + pad(b, ca - cb)?
                };
                self.act.forward(&sum, train)
            }
            Op::Subsample { stride } => {
                let s = stride as i64;
                x.f_slice(2, 0, None, s)?.f_slice(3, 0, None, s)?
            }
            Op::MaxPool { k, stride, pad } => {
                let (k, s, p) = (k as i64, stride as i64, pad as i64);
                x.f_max_pool2d([k, k], [s, s], [p, p], [1, 1], false)?
            }
            Op::GlobalAvgPool => x.f_adaptive_avg_pool2d([1, 1])?,
        })
    }

    /// Trainable parameters in the graph's convention (weights, linear bias, BN γ/β).
    pub fn params(&self) -> u64 {
        let n = |t: &Option<Tensor>| t.as_ref().map_or(0, |t| t.numel() as u64);
        n(&self.weight) + n(&self.bias) + self.bn.as_ref().map_or(0, |b| (b.weight.numel() + b.bias.numel()) as u64)
    }

    /// Learnable quantizer variables of this layer, by full name.
    pub fn quant_params(&self) -> Vec<(String, Tensor)> {
        let mut v = Vec::new();
        if let WeightQuant::Lsq(l) = &self.weight_quant {
            v.push((format!("{}.wq.step", self.spec.name), l.step.shallow_clone()));
        }
        match &self.act {
            ActQuant::Pact(p) | ActQuant::Signed(p) => v.push((format!("{}.act.alpha", self.spec.name), p.alpha.shallow_clone())),
            ActQuant::Lsq(l) => v.push((format!("{}.act.step", self.spec.name), l.step.shallow_clone())),
            ActQuant::Identity | ActQuant::Relu => {}
        }
        v
    }
}

/// BatchNorm state for export (detached copies).
#[derive(Debug)]
pub struct BnStats {
    pub gamma: Tensor,
    pub beta: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub eps: f64,
}

/// Everything the exporter needs from one layer (detached copies, current values).
#[derive(Debug)]
pub struct LayerExport {
    pub index: usize,
    pub layer: Layer,
    /// Float weights.
    pub weight: Option<Tensor>,
    /// Codes and scale of the weights as the forward pass quantizes them (SAWB α_w of the
    /// current weights, max-abs scale, or LSQ step); `None` at full precision.
    pub weight_int: Option<IntWeights>,
    pub bias: Option<Tensor>,
    pub bn: Option<BnStats>,
    /// Scale and `qmax` of this layer's output codes (PACT: `α/qmax`); `None` when the output
    /// is not quantized.
    pub act: Option<ActInt>,
    /// A quantized conv reading a normalised image: `Σ w_q · μ` per output channel (from
    /// `weight_int`, which then holds the codes of `w/σ`), subtracted before the BatchNorm.
    pub input_offset: Option<Tensor>,
}

/// A tch model interpreting a [`Network`].
#[derive(Debug)]
pub struct Model {
    net: Network,
    options: ModelOptions,
    layers: Vec<LayerModule>,
    /// `free_after[i]`: outputs no longer needed once layer `i` has run.
    free_after: Vec<Vec<usize>>,
}

fn layer_path<'a>(root: &nn::Path<'a>, name: &str) -> Result<nn::Path<'a>, ModelError> {
    let mut p = root.clone();
    for c in name.split('.') {
        if c.is_empty() {
            return Err(ModelError::Structure { layer: name.into(), msg: "empty component in the layer name".into() });
        }
        p = p.sub(c);
    }
    Ok(p)
}

fn weight_quant(layer: &Layer, p: &nn::Path, opts: &ModelOptions) -> Result<WeightQuant, ModelError> {
    let quant = |source| ModelError::Quant { layer: layer.name.clone(), source };
    Ok(match layer.wbits {
        32 => WeightQuant::None,
        8 => WeightQuant::MaxAbs { bits: 8 },
        b @ 2..=7 => match opts.weight {
            WeightQuantizer::Sawb => WeightQuant::Sawb { bits: b },
            WeightQuantizer::Lsq => WeightQuant::Lsq(Lsq::new(&p.sub("wq"), b, LsqTarget::Weights).map_err(quant)?),
        },
        bits => return Err(ModelError::WeightBits { layer: layer.name.clone(), bits }),
    })
}

fn act_quant(layer: &Layer, relu: bool, p: &nn::Path, opts: &ModelOptions) -> Result<ActQuant, ModelError> {
    let quant = |source| ModelError::Quant { layer: layer.name.clone(), source };
    if !relu {
        return Ok(ActQuant::Identity);
    }
    Ok(match layer.out_bits {
        32 => ActQuant::Relu,
        b @ 1..=16 => match opts.activation {
            ActQuantizer::Pact => ActQuant::Pact(Pact::new(&p.sub("act"), b, opts.pact_init).map_err(quant)?),
            ActQuantizer::Lsq => ActQuant::Lsq(Lsq::new(&p.sub("act"), b, LsqTarget::Activations).map_err(quant)?),
        },
        bits => return Err(ModelError::ActBits { layer: layer.name.clone(), bits }),
    })
}

/// The signed 8-bit quantizer of a projection shortcut, a linear bottleneck or an add without
/// ReLU ([`Network::is_signed`]).
fn signed_quant(layer: &Layer, p: &nn::Path, opts: &ModelOptions) -> Result<ActQuant, ModelError> {
    let quant = |source| ModelError::Quant { layer: layer.name.clone(), source };
    Ok(ActQuant::Signed(Pact::new(&p.sub("act"), 8, opts.pact_init).map_err(quant)?))
}

/// Layer `i` reads the right number of earlier tensors, of the shape it declares.
fn check_wiring(net: &Network, i: usize, l: &Layer) -> Result<(), ModelError> {
    let bad = |msg: String| ModelError::Structure { layer: l.name.clone(), msg };
    let want_inputs = if matches!(l.op, Op::Add { .. }) { 2 } else { 1 };
    if l.inputs.len() != want_inputs {
        return Err(bad(format!("expected {want_inputs} input(s), got {}", l.inputs.len())));
    }
    for s in &l.inputs {
        if let Src::Layer(j) = *s {
            if j >= i {
                return Err(bad(format!("reads layer {j}, which does not come before it")));
            }
        }
    }
    if net.src_shape(l.inputs[0]) != l.in_shape {
        return Err(bad(format!("in_shape {} differs from its input's shape {}", l.in_shape, net.src_shape(l.inputs[0]))));
    }
    Ok(())
}

/// For each layer, the earlier outputs that no later layer reads (freed after it runs; the
/// last layer's output is the result).
fn free_after(net: &Network) -> Vec<Vec<usize>> {
    let n = net.layers.len();
    let mut last_use: Vec<Option<usize>> = vec![None; n];
    for (i, l) in net.layers.iter().enumerate() {
        for s in &l.inputs {
            if let Src::Layer(j) = *s {
                last_use[j] = Some(i);
            }
        }
    }
    let mut free_after = vec![Vec::new(); n];
    for (j, u) in last_use.iter().enumerate() {
        if let Some(i) = *u {
            if j != n - 1 {
                free_after[i].push(j);
            }
        }
    }
    free_after
}

impl LayerModule {
    /// The variables of one layer under `lp`, initialised as torchvision does.
    fn new(net: &Network, i: usize, lp: &nn::Path, options: &ModelOptions) -> Result<LayerModule, ModelError> {
        let l = &net.layers[i];
        let bad = |msg: String| ModelError::Structure { layer: l.name.clone(), msg };
        let (cin, cout) = (l.in_shape.c as i64, l.out_shape.c as i64);
        let mut m = LayerModule {
            spec: l.clone(),
            weight: None,
            weight_quant: WeightQuant::None,
            bias: None,
            bn: None,
            act: ActQuant::Identity,
            input_norm: None,
        };
        let normalised = l.inputs.contains(&Src::Input).then(|| net.normalization()).flatten();
        if let (Some(n), Op::Conv { groups, .. }) = (normalised, &l.op) {
            m.input_norm = Some(InputNorm::new(n, l.in_shape.c, *groups, lp.device()).map_err(bad)?);
        } else if normalised.is_some() {
            return Err(bad("reads the normalised image; only convs may (docs/import.md)".into()));
        }
        match l.op {
            Op::Conv { k, stride, groups: g, relu, .. } => {
                if k == 0 || stride == 0 || g == 0 || !l.in_shape.c.is_multiple_of(g) || !l.out_shape.c.is_multiple_of(g) {
                    return Err(bad(format!("invalid conv (k={k}, stride={stride}, groups={g}, {cin}→{cout} channels)")));
                }
                let k = k as i64;
                // torchvision's ResNet init (He normal, fan-out).
                let init = nn::Init::Kaiming {
                    dist: nn::init::NormalOrUniform::Normal,
                    fan: nn::init::FanInOut::FanOut,
                    non_linearity: nn::init::NonLinearity::ReLU,
                };
                m.weight = Some(lp.set_group(groups::WEIGHTS).f_var("weight", &[cout, cin / g as i64, k, k], init)?);
                m.bn = Some(BatchNorm::new(&lp.sub("bn"), cout, options.bn_groups)?);
                m.weight_quant = weight_quant(l, lp, options)?;
                m.act = if net.is_signed(i) && l.wbits < 32 { signed_quant(l, lp, options)? } else { act_quant(l, relu, lp, options)? };
            }
            Op::Linear => {
                let fan_in = l.in_shape.numel() as i64;
                // PyTorch's nn.Linear init: U(±1/sqrt(fan_in)) for weight and bias.
                let b = 1.0 / (fan_in.max(1) as f64).sqrt();
                let init = nn::Init::Uniform { lo: -b, up: b };
                m.weight = Some(lp.set_group(groups::WEIGHTS).f_var("weight", &[cout, fan_in], init)?);
                m.bias = Some(lp.set_group(groups::NO_DECAY).f_var("bias", &[cout], init)?);
                m.weight_quant = weight_quant(l, lp, options)?;
            }
            Op::Add { relu } => {
                let (a, b) = (net.src_shape(l.inputs[0]), net.src_shape(l.inputs[1]));
                if (a.h, a.w) != (b.h, b.w) {
                    return Err(bad(format!("adds tensors of different spatial size ({a} and {b})")));
                }
                m.act = if net.is_signed(i) && l.out_bits < 32 { signed_quant(l, lp, options)? } else { act_quant(l, relu, lp, options)? };
            }
            Op::Subsample { stride } | Op::MaxPool { stride, .. } if stride == 0 => return Err(bad("stride 0".into())),
            Op::Subsample { .. } | Op::MaxPool { .. } | Op::GlobalAvgPool => {}
        }
        Ok(m)
    }
}

impl Model {
    /// Creates the variables of every layer of `net` under `p` (usually `vs.root()`).
    pub fn new(p: &nn::Path, net: &Network, options: &ModelOptions) -> Result<Model, ModelError> {
        if net.layers.is_empty() {
            return Err(ModelError::Empty);
        }
        let mut names = HashSet::new();
        let mut layers = Vec::with_capacity(net.layers.len());
        for (i, l) in net.layers.iter().enumerate() {
            if !names.insert(l.name.as_str()) {
                return Err(ModelError::Structure { layer: l.name.clone(), msg: "duplicate layer name".into() });
            }
            check_wiring(net, i, l)?;
            layers.push(LayerModule::new(net, i, &layer_path(p, &l.name)?, options)?);
        }
        Ok(Model { net: net.clone(), options: options.clone(), layers, free_after: free_after(net) })
    }

    pub fn network(&self) -> &Network {
        &self.net
    }

    pub fn options(&self) -> &ModelOptions {
        &self.options
    }

    /// Per-layer modules, in graph order (index = graph layer index).
    pub fn layers(&self) -> &[LayerModule] {
        &self.layers
    }

    fn check_input(&self, x: &Tensor) -> Result<(), ModelError> {
        let s = x.size();
        let e = self.net.input;
        if s.len() != 4 || s[1] != e.c as i64 || s[2] != e.h as i64 || s[3] != e.w as i64 {
            return Err(ModelError::InputShape { got: s, expected: e });
        }
        Ok(())
    }

    fn run(&self, x: &Tensor, train: bool, keep_all: bool) -> Result<Vec<Option<Tensor>>, ModelError> {
        self.check_input(x)?;
        let mut outs: Vec<Option<Tensor>> = (0..self.layers.len()).map(|_| None).collect();
        for (i, m) in self.layers.iter().enumerate() {
            let mut inputs = Vec::with_capacity(2);
            for s in &m.spec.inputs {
                inputs.push(match *s {
                    Src::Input => x,
                    Src::Layer(j) => outs[j]
                        .as_ref()
                        .ok_or_else(|| ModelError::Structure { layer: m.spec.name.clone(), msg: format!("input {j} is not available") })?,
                });
            }
            let y = m.forward(&inputs, train)?;
            outs[i] = Some(y);
            if !keep_all {
                for &j in &self.free_after[i] {
                    outs[j] = None;
                }
            }
        }
        Ok(outs)
    }

    /// The logits for an `[N, C, H, W]` batch of the network's input shape (images in
    /// `[0, 1]`, no mean/std normalisation). `train` selects batch statistics in BatchNorm and
    /// initialises LSQ steps on first use.
    pub fn f_forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let mut outs = self.run(x, train, false)?;
        outs.pop().flatten().ok_or(ModelError::Empty)
    }

    /// Every layer's output (index = graph layer index); for tests and integer-simulation
    /// comparisons.
    pub fn f_forward_layers(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>, ModelError> {
        self.run(x, train, true)?
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.ok_or_else(|| ModelError::Structure { layer: self.layers[i].spec.name.clone(), msg: "no output".into() }))
            .collect()
    }

    /// Trainable parameters excluding quantizer parameters; equals [`Network::params`].
    pub fn param_count(&self) -> u64 {
        self.layers.iter().map(LayerModule::params).sum()
    }

    /// All learnable quantizer variables (PACT α, LSQ steps) by full name.
    pub fn quant_params(&self) -> Vec<(String, Tensor)> {
        self.layers.iter().flat_map(LayerModule::quant_params).collect()
    }

    /// The PACT clips by full name (for PACT's L2 regulariser).
    pub fn pact_alphas(&self) -> Vec<(String, Tensor)> {
        self.layers
            .iter()
            .filter_map(|m| match &m.act {
                ActQuant::Pact(p) | ActQuant::Signed(p) => Some((format!("{}.act.alpha", m.spec.name), p.alpha.shallow_clone())),
                _ => None,
            })
            .collect()
    }

    /// Current parameters and quantizer state of every layer, for the exporter.
    pub fn export(&self) -> Vec<LayerExport> {
        let copy = |t: &Tensor| t.detach().copy();
        self.layers
            .iter()
            .enumerate()
            .map(|(index, m)| {
                let folded = |w: &Tensor| m.input_norm.as_ref().map_or_else(|| w.shallow_clone(), |n| n.fold(&w.detach()));
                let weight_int = m.weight.as_ref().and_then(|w| m.weight_quant.int_weights(&folded(w)));
                // (A failure gives NaN offsets, which the export refuses as a requantisation
                // value that does not fit, rather than a conv without its offset.)
                let input_offset = m.input_norm.as_ref().zip(weight_int.as_ref()).map(|(n, wi)| {
                    n.offset(&(wi.codes.to_kind(tch::Kind::Double) * wi.scale))
                        .unwrap_or_else(|_| Tensor::full([m.spec.out_shape.c as i64], f64::NAN, (tch::Kind::Double, tch::Device::Cpu)))
                });
                LayerExport {
                    index,
                    layer: m.spec.clone(),
                    weight: m.weight.as_ref().map(copy),
                    weight_int,
                    input_offset,
                    bias: m.bias.as_ref().map(copy),
                    bn: m.bn.as_ref().map(|b| BnStats {
                        gamma: copy(&b.weight),
                        beta: copy(&b.bias),
                        running_mean: copy(&b.running_mean),
                        running_var: copy(&b.running_var),
                        eps: b.eps,
                    }),
                    act: m.act.int_params(),
                }
            })
            .collect()
    }
}

impl nn::ModuleT for Model {
    /// Panics on an input of the wrong shape; use [`Model::f_forward_t`] to get an error.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match self.f_forward_t(xs, train) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }
}

/// Trainable variables of `vs` excluding quantizer groups (the graph's parameter count).
pub fn count_params(vs: &nn::VarStore) -> u64 {
    let vars = vs.variables_.lock().unwrap_or_else(|e| e.into_inner());
    vars.trainable_variables.iter().filter(|v| !groups::QUANTIZER.contains(&v.group)).map(|v| v.tensor.numel() as u64).sum()
}

/// What [`copy_by_name`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Variables of the destination set from the source.
    pub copied: Vec<String>,
    /// Variables of the destination the source lacks (left as they are: e.g. PACT α and LSQ
    /// steps when initialising a quantized model from an FP32 one).
    pub missing: Vec<String>,
    /// Variables of the source the destination lacks.
    pub unused: Vec<String>,
}

/// Copies every variable of `src` into the variable of the same name in `dst` (e.g. FP32 →
/// W2A2 of the same widths). Fails, before copying anything, if a shared name has different
/// shapes. All lists are sorted.
pub fn copy_by_name(dst: &mut nn::VarStore, src: &nn::VarStore) -> Result<CopyReport, ModelError> {
    let d = dst.variables();
    let s = src.variables();
    for (name, t) in &d {
        if let Some(st) = s.get(name) {
            if st.size() != t.size() {
                return Err(ModelError::VarShape { name: name.clone(), dst: t.size(), src: st.size() });
            }
        }
    }
    let mut report = CopyReport::default();
    tch::no_grad(|| -> Result<(), TchError> {
        for (name, t) in &d {
            match s.get(name) {
                Some(st) => {
                    t.shallow_clone().f_copy_(st)?;
                    report.copied.push(name.clone());
                }
                None => report.missing.push(name.clone()),
            }
        }
        Ok(())
    })?;
    let dn: BTreeSet<&String> = d.keys().collect();
    report.unused = s.keys().filter(|n| !dn.contains(n)).cloned().collect();
    report.copied.sort();
    report.missing.sort();
    report.unused.sort();
    Ok(report)
}

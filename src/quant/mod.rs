//! Quantizers with straight-through gradients, implementing the float (training) form of
//! `docs/quantization.md`.
//!
//! | quantizer | float forward (STE) | integer view |
//! |---|---|---|
//! | PACT activations | [`Pact::forward`], [`pact_quantize`] (gradients of [`pact_clip`]) | [`Pact::int_params`] → [`ActInt`] `{scale = α/qmax, qmax}`, [`pact_codes`] |
//! | SAWB weights | [`sawb_quantize`] (α_w from [`sawb_alpha`], [`sawb_coefficients`]) | [`sawb_codes`] → [`IntWeights`] (odd codes, `α_w/(2^b−1)`) |
//! | 8-bit max-abs weights | [`maxabs_quantize`] | [`maxabs_codes`] (codes in ±127, `max|w|/127`) |
//! | LSQ weights / activations | [`Lsq::forward`], [`lsq_quantize`] | [`Lsq::int_weights`], [`Lsq::codes`], `ActInt {step, 2^b−1}` |
//!
//! [`WeightQuant`] and [`ActQuant`] wrap them per layer (what the models use). Rounding is
//! [`round_half_away`] everywhere.
//!
//! Every quantizer has a float view (what training differentiates through) and an *integer
//! view* for export: [`IntWeights`] (codes + one per-tensor scale) for weights and [`ActInt`]
//! (scale + `qmax`) for activations. The straight-through estimator is written as
//! `q + (x − x.detach())·mask`, which adds an exact zero, so the forward value is bit-for-bit
//! the quantized value `q` (the `y + (q − y).detach()` form is off by float rounding).
//!
//! Learnable quantizer parameters are created in their own optimizer groups ([`groups`]), so
//! the trainer can give PACT's α its L2 regulariser (as a per-group weight decay) and keep it
//! out of the weight decay of the weights. Their variable names also end in `.alpha` (PACT) or
//! `.step` (LSQ), for trainers that select parameters by name.

mod lsq;
mod maxabs;
mod pact;
mod sawb;

pub use lsq::{lsq_init_step, lsq_quantize, Lsq, LsqTarget};
pub use maxabs::{maxabs_codes, maxabs_quantize, maxabs_scale};
pub use pact::{pact_clip, pact_codes, pact_quantize, pact_quantize_fused, Pact};
pub use sawb::{sawb_alpha, sawb_codes, sawb_coefficients, sawb_quantize};

use serde::{Deserialize, Serialize};
use tch::{Kind, TchError, Tensor};

/// Optimizer groups of the variables created by quantizers and models
/// (`tch::nn::Path::set_group`; set per-group weight decay with
/// `Optimizer::set_weight_decay_group`).
pub mod groups {
    /// Conv and linear weights: the usual weight decay.
    pub const WEIGHTS: usize = 0;
    /// BatchNorm γ/β and the classifier bias: usually no weight decay.
    pub const NO_DECAY: usize = 1;
    /// PACT clips α: PACT's own L2 regulariser λ_α (weight decay `wd` ≙ loss `wd/2 · α²`).
    pub const PACT: usize = 2;
    /// LSQ steps: no decay in Esser et al.
    pub const LSQ: usize = 3;
    /// Groups that hold quantizer parameters (excluded from parameter counts).
    pub const QUANTIZER: [usize; 2] = [PACT, LSQ];
}

/// Invalid quantizer settings.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("{quantizer} does not support {bits}-bit quantization (supported: {supported})")]
    Bits { quantizer: &'static str, bits: u8, supported: &'static str },
    #[error("the initial PACT clip must be positive and finite, got {0}")]
    PactInit(f64),
    #[error(transparent)]
    Torch(#[from] TchError),
}

pub(crate) fn check_bits(
    quantizer: &'static str,
    bits: u8,
    range: std::ops::RangeInclusive<u8>,
    supported: &'static str,
) -> Result<(), QuantError> {
    if range.contains(&bits) {
        Ok(())
    } else {
        Err(QuantError::Bits { quantizer, bits, supported })
    }
}

/// Round half away from zero (`docs/quantization.md`), elementwise.
///
/// Computed as `trunc(x) + sign(x)·[|x − trunc(x)| ≥ ½]`: the fractional part is exact in
/// float, so ties are detected exactly. (`sign(x)·floor(|x| + ½)` is the same function in
/// exact arithmetic but rounds `0.49999997f32` up, because `|x| + ½` rounds to 1.)
/// No gradient flows through it; quantizers use it on detached tensors.
pub fn round_half_away(x: &Tensor) -> Tensor {
    let x = x.detach();
    let t = x.trunc();
    let frac = &x - &t;
    t + frac.abs().ge(0.5).to_kind(x.kind()) * x.sign()
}

/// How a weight tensor's integer codes are to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WeightScheme {
    /// Odd codes `−(2^b−1), …, −1, 1, …, 2^b−1` in steps of 2; scale `α_w / (2^b − 1)`.
    Sawb,
    /// Codes in `[−(2^(b−1)−1), 2^(b−1)−1]`; scale `max|w| / (2^(b−1)−1)`.
    MaxAbs,
    /// Codes in `[−2^(b−1), 2^(b−1)−1]`; scale = the learned step.
    Lsq,
}

/// Integer view of a quantized weight tensor: `w_q = codes · scale` (per tensor).
#[derive(Debug)]
pub struct IntWeights {
    /// `Kind::Int` (i32), same shape as the weight (conv: `[out, in/groups, k, k]`).
    pub codes: Tensor,
    pub scale: f64,
    pub bits: u8,
    pub scheme: WeightScheme,
}

impl IntWeights {
    /// The codes in row-major order of the weight tensor.
    pub fn to_vec(&self) -> Result<Vec<i32>, TchError> {
        Vec::<i32>::try_from(&self.codes.reshape([-1]))
    }

    /// `codes · scale` as a float tensor (equals the quantizer's forward value up to the
    /// float rounding of the scale).
    pub fn dequantize(&self) -> Tensor {
        self.codes.to_kind(Kind::Float) * self.scale
    }
}

/// Integer view of an activation quantizer: codes `0..=qmax`, real value `code · scale`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActInt {
    pub scale: f64,
    pub qmax: i64,
}

impl ActInt {
    /// The clip value `scale · qmax` (PACT's α).
    pub fn clip(&self) -> f64 {
        self.scale * self.qmax as f64
    }
}

/// A weight quantizer selected per layer from its `wbits`.
#[derive(Debug)]
pub enum WeightQuant {
    /// Full precision (32-bit layers).
    None,
    Sawb {
        bits: u8,
    },
    MaxAbs {
        bits: u8,
    },
    Lsq(Lsq),
}

impl WeightQuant {
    /// The weights used in the forward pass (STE gradients to `w`).
    pub fn forward(&self, w: &Tensor, train: bool) -> Tensor {
        match self {
            WeightQuant::None => w.shallow_clone(),
            WeightQuant::Sawb { bits } => sawb_quantize(w, *bits),
            WeightQuant::MaxAbs { bits } => maxabs_quantize(w, *bits),
            WeightQuant::Lsq(l) => l.forward(w, train),
        }
    }

    /// Codes and scale of `w` as the forward pass quantizes it; `None` at full precision.
    pub fn int_weights(&self, w: &Tensor) -> Option<IntWeights> {
        match self {
            WeightQuant::None => None,
            WeightQuant::Sawb { bits } => Some(sawb_codes(w, *bits)),
            WeightQuant::MaxAbs { bits } => Some(maxabs_codes(w, *bits)),
            WeightQuant::Lsq(l) => Some(l.int_weights(w)),
        }
    }

    /// Weight bits (32 for full precision).
    pub fn bits(&self) -> u8 {
        match self {
            WeightQuant::None => 32,
            WeightQuant::Sawb { bits } | WeightQuant::MaxAbs { bits } => *bits,
            WeightQuant::Lsq(l) => l.bits(),
        }
    }
}

/// What follows a layer's ReLU point.
#[derive(Debug)]
pub enum ActQuant {
    /// No ReLU, no quantizer (a conv feeding a residual add, the logits).
    Identity,
    /// Full-precision ReLU.
    Relu,
    /// PACT (its clip at 0 is the ReLU).
    Pact(Pact),
    /// Unsigned LSQ (its clamp at 0 is the ReLU).
    Lsq(Lsq),
    /// Signed 8-bit codes of a projection shortcut (a conv without ReLU on an add's shortcut
    /// side): PACT at 8 bits on `x + z·s` minus `z·s`, with `s = α/255` and the zero point
    /// `z =` [`SHORTCUT_ZERO`], i.e. codes `q = clamp(round(x/s) + z, 0, 255)`, value `(q − z)·s`.
    Signed(Pact),
}

/// The zero point of [`ActQuant::Signed`]'s 8-bit codes.
pub const SHORTCUT_ZERO: i64 = 128;

/// [`ActQuant::Signed`]'s training form on a bare clip `alpha` (also the search supernet's):
/// PACT at `bits` on `x + z·α/qmax`, minus that offset.
pub fn signed_quantize_fused(x: &Tensor, alpha: &Tensor, bits: u8) -> Tensor {
    let offset = alpha * (SHORTCUT_ZERO as f64 / ((1u64 << bits) - 1) as f64);
    pact_quantize_fused(&(x + &offset), alpha, bits) - offset
}

impl ActQuant {
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            ActQuant::Identity => x.shallow_clone(),
            ActQuant::Relu => x.relu(),
            ActQuant::Pact(p) if train => pact_quantize_fused(x, &p.alpha, p.bits()),
            ActQuant::Pact(p) => p.forward(x),
            ActQuant::Lsq(l) => l.forward(x, train),
            ActQuant::Signed(p) if train => signed_quantize_fused(x, &p.alpha, p.bits()),
            ActQuant::Signed(p) => {
                let offset = &p.alpha * (SHORTCUT_ZERO as f64 / p.qmax() as f64);
                p.forward(&(x + &offset)) - offset
            }
        }
    }

    /// Scale and `qmax` of the output codes; `None` when the output is not quantized.
    pub fn int_params(&self) -> Option<ActInt> {
        match self {
            ActQuant::Identity | ActQuant::Relu => None,
            ActQuant::Pact(p) | ActQuant::Signed(p) => Some(p.int_params()),
            ActQuant::Lsq(l) => Some(ActInt { scale: l.step_value(), qmax: l.qp() }),
        }
    }
}

/// Reads a one-element tensor as f64 (quantizer parameters are created with one element).
pub(crate) fn scalar(t: &Tensor) -> f64 {
    f64::try_from(&t.detach()).unwrap_or(f64::NAN)
}

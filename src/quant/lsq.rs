//! LSQ (Esser et al. 2020, "Learned step size quantization"): the step is a learned parameter
//! whose gradient is scaled by `g = 1/sqrt(N·Qp)`.

use super::{check_bits, groups, round_half_away, scalar, IntWeights, QuantError, WeightScheme};
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{nn, Kind, Tensor};

/// Smallest step used in the forward pass (keeps a step driven to ≤ 0 from dividing by 0).
const MIN_STEP: f64 = 1e-8;

/// What an LSQ quantizer quantizes; decides the code range and `N` of the gradient scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LsqTarget {
    /// Signed codes `[−2^(b−1), 2^(b−1)−1]`; `N` = number of weights.
    Weights,
    /// Unsigned codes `[0, 2^b−1]` (the clamp at 0 is the ReLU); `N` = features per example
    /// (`numel / batch`), as in the paper.
    Activations,
}

/// LSQ forward with the paper's gradients: `round(clamp(x/s, qn, qp))·s`;
/// `∂/∂x = 1` inside `[qn·s, qp·s]`, else 0; `∂/∂s = g·(round(x/s) − x/s)` inside, `g·qn` / `g·qp`
/// below / above. `step` is a one-element tensor.
pub fn lsq_quantize(x: &Tensor, step: &Tensor, qn: i64, qp: i64, grad_scale: f64) -> Tensor {
    let s = step.clamp_min(MIN_STEP);
    let sg = &s * grad_scale;
    // Value s exactly, gradient scaled by g.
    let s = s.detach() + (&sg - sg.detach());
    let v = (x / &s).clamp(qn as f64, qp as f64);
    let vr = round_half_away(&v) + (&v - v.detach());
    vr * s
}

/// The paper's initial step `2·E|x| / sqrt(Qp)` (0-d tensor, at least 1e-8).
pub fn lsq_init_step(x: &Tensor, qp: i64) -> Tensor {
    let x = x.detach();
    (x.abs().mean(x.kind()) * 2.0 / (qp as f64).sqrt()).clamp_min(MIN_STEP)
}

/// An LSQ quantizer: variables `step` (learnable, shape `[1]`, group [`groups::LSQ`]) and
/// `initialized` (a non-trainable flag saved with checkpoints).
///
/// The step is initialised from data on the first training forward (the activations of the
/// first batch, or the weights as loaded, e.g. from an FP32 checkpoint), so build the model
/// and load its weights *before* training; a checkpoint with `initialized = 1` is not
/// re-initialised.
#[derive(Debug)]
pub struct Lsq {
    pub step: Tensor,
    initialized: Tensor,
    /// Cache of `initialized` so that the flag is read from the device only once.
    ready: AtomicBool,
    bits: u8,
    target: LsqTarget,
}

impl Lsq {
    /// `bits`: `2..=16` for weights, `1..=16` for activations.
    pub fn new(p: &nn::Path, bits: u8, target: LsqTarget) -> Result<Self, QuantError> {
        match target {
            LsqTarget::Weights => check_bits("LSQ (weights)", bits, 2..=16, "2..=16")?,
            LsqTarget::Activations => check_bits("LSQ (activations)", bits, 1..=16, "1..=16")?,
        }
        let step = p.set_group(groups::LSQ).f_var("step", &[1], nn::Init::Const(1.0))?;
        let initialized = p.f_zeros_no_train("initialized", &[1])?;
        Ok(Lsq { step, initialized, ready: AtomicBool::new(false), bits, target })
    }

    pub fn bits(&self) -> u8 {
        self.bits
    }

    pub fn target(&self) -> LsqTarget {
        self.target
    }

    /// Lowest code.
    pub fn qn(&self) -> i64 {
        match self.target {
            LsqTarget::Weights => -(1i64 << (self.bits - 1)),
            LsqTarget::Activations => 0,
        }
    }

    /// Highest code.
    pub fn qp(&self) -> i64 {
        match self.target {
            LsqTarget::Weights => (1i64 << (self.bits - 1)) - 1,
            LsqTarget::Activations => (1i64 << self.bits) - 1,
        }
    }

    /// `g = 1/sqrt(N·Qp)` for a tensor of `x`'s shape.
    pub fn grad_scale(&self, x: &Tensor) -> f64 {
        let numel: i64 = x.size().iter().product();
        let n = match self.target {
            LsqTarget::Weights => numel,
            LsqTarget::Activations => numel / x.size().first().copied().unwrap_or(1).max(1),
        };
        1.0 / ((n.max(1) * self.qp()) as f64).sqrt()
    }

    /// Whether the step has been initialised from data.
    pub fn is_initialized(&self) -> bool {
        if self.ready.load(Ordering::Relaxed) {
            return true;
        }
        let done = scalar(&self.initialized) != 0.0;
        if done {
            self.ready.store(true, Ordering::Relaxed);
        }
        done
    }

    /// Sets the step to `2·E|x|/sqrt(Qp)` and marks it initialised.
    pub fn init_from(&self, x: &Tensor) {
        let v = lsq_init_step(x, self.qp());
        tch::no_grad(|| {
            self.step.shallow_clone().copy_(&v);
            let _ = self.initialized.shallow_clone().fill_(1.0);
        });
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Quantizes `x`; in training, first initialises the step from `x` if needed.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        if train && !self.is_initialized() {
            self.init_from(x);
        }
        lsq_quantize(x, &self.step, self.qn(), self.qp(), self.grad_scale(x))
    }

    /// The step used by the forward pass.
    pub fn step_value(&self) -> f64 {
        scalar(&self.step).max(MIN_STEP)
    }

    /// Integer codes of `x` (`Kind::Int`).
    pub fn codes(&self, x: &Tensor) -> Tensor {
        let s = self.step.detach().clamp_min(MIN_STEP);
        round_half_away(&(x.detach() / s).clamp(self.qn() as f64, self.qp() as f64)).to_kind(Kind::Int)
    }

    /// Integer view of a weight tensor: codes and the step as scale.
    pub fn int_weights(&self, w: &Tensor) -> IntWeights {
        IntWeights { codes: self.codes(w), scale: self.step_value(), bits: self.bits, scheme: WeightScheme::Lsq }
    }
}

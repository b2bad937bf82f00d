//! PACT (Choi et al. 2018): activations clipped at a learnable α, then uniformly quantized.

use super::{check_bits, groups, round_half_away, scalar, ActInt, QuantError};
use tch::{nn, Kind, Tensor};

/// The clip `clamp(x, 0, α)` with PACT's gradients.
///
/// The value equals `0.5·(|x| − |x − α| + α)` (PACT's formula); the gradients are written with
/// explicit masks so that the ties follow the contract exactly: `∂/∂x = 1` for `0 ≤ x < α`,
/// `∂/∂α = 1` for `x ≥ α`, 0 elsewhere (the |·| form gives ½ at `x = 0` and `x = α`).
/// `alpha` is a one-element tensor (broadcast).
pub fn pact_clip(x: &Tensor, alpha: &Tensor) -> Tensor {
    let a = alpha.detach();
    let xd = x.detach();
    let inside = xd.ge(0.0).logical_and(&xd.lt_tensor(&a)).to_kind(x.kind());
    let above = xd.ge_tensor(&a).to_kind(x.kind());
    // x·1 + α·0 etc. are exact, so the value is exactly clamp(x, 0, α).
    x * inside + alpha * above
}

fn qmax_of(bits: u8) -> f64 {
    ((1u64 << bits) - 1) as f64
}

/// Integer codes `round(clamp(x, 0, α)·qmax/α)` (`Kind::Int`), as the forward pass uses them.
pub fn pact_codes(x: &Tensor, alpha: &Tensor, bits: u8) -> Tensor {
    let qmax = qmax_of(bits);
    let a = alpha.detach();
    let y = x.detach().clamp_min(0.0).minimum(&a);
    round_half_away(&(y * qmax / &a)).to_kind(Kind::Int)
}

/// PACT forward: `q·α/qmax` with `q` from [`pact_codes`], gradients of [`pact_clip`] (STE
/// through the rounding). `bits` must be in `1..=16` (not checked here; see [`Pact::new`]).
pub fn pact_quantize(x: &Tensor, alpha: &Tensor, bits: u8) -> Tensor {
    let qmax = qmax_of(bits);
    let y = pact_clip(x, alpha);
    let a = alpha.detach();
    let q = round_half_away(&(y.detach() * qmax / &a)) * &a / qmax;
    // q + (y − y.detach()) has the value of q exactly and the gradient of y.
    q + (&y - y.detach())
}

/// PACT forward for training with as few passes over the activation tensor as libtorch
/// allows: the exact form above (~25 elementwise passes) and libtorch's own
/// `minimum`/`fake_quantize_per_tensor_affine` (slow broadcast backward, unvectorised
/// fake-quant) both cost 2–2.5× more; this dominated 2-bit training time. The value is
/// `clamp(x, 0, α)` rounded with `floor(v + ½)` (= half away from zero for `v ≥ 0` except at
/// 1-ulp-below-½ inputs); gradients are PACT's: `∂/∂x = 1` inside `[0, α]`, `∂/∂α = 1` where
/// `x ≥ α`. Evaluation and export use the exact form.
pub fn pact_quantize_fused(x: &Tensor, alpha: &Tensor, bits: u8) -> Tensor {
    let qmax = qmax_of(bits);
    let a = scalar(alpha).max(1e-8);
    let xd = x.detach();
    let above = xd.ge(a).to_kind(x.kind());
    let y = x.clamp(0.0, a) + above * (alpha - alpha.detach());
    // q from y's value (= clamp(x, 0, α)), rounded in place: three fewer allocations.
    let mut q = y.detach() * (qmax / a);
    let _ = q.g_add_scalar_(0.5);
    let _ = q.floor_();
    let _ = q.g_mul_scalar_(a / qmax);
    let _ = q.g_sub_(&y.detach());
    y + q
}

/// A PACT activation quantizer: `bits` and one learnable clip variable `alpha` (shape `[1]`,
/// optimizer group [`groups::PACT`]).
#[derive(Debug)]
pub struct Pact {
    /// The learnable clip (the variable `<path>.alpha`), exposed for PACT's L2 regulariser.
    pub alpha: Tensor,
    bits: u8,
}

impl Pact {
    /// Default initial clip. PACT initialises α large (10 in the paper) and lets its L2
    /// regulariser pull it down: α only receives task gradient from clipped inputs, so a clip
    /// above every activation starts as "ReLU + uniform quantizer" and clipping appears where
    /// it pays off. Our activations come straight out of BatchNorm (≈ unit variance, γ≈1 at
    /// init or from an FP32 checkpoint), so 8 (= 8σ, and a power of two) is already above
    /// practically all of them. Lower values (2–4) clip from the first step; they can speed
    /// up short 2-bit fine-tuning but bias the start, hence configurable.
    pub const DEFAULT_INIT: f64 = 8.0;

    /// Creates the variable `alpha` under `p` (group [`groups::PACT`]), initialised to
    /// `init_alpha`. `bits` in `1..=16`.
    pub fn new(p: &nn::Path, bits: u8, init_alpha: f64) -> Result<Self, QuantError> {
        check_bits("PACT", bits, 1..=16, "1..=16")?;
        if !(init_alpha.is_finite() && init_alpha > 0.0) {
            return Err(QuantError::PactInit(init_alpha));
        }
        let alpha = p.set_group(groups::PACT).f_var("alpha", &[1], nn::Init::Const(init_alpha))?;
        Ok(Pact { alpha, bits })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        pact_quantize(x, &self.alpha, self.bits)
    }

    /// Output codes of `x` (`Kind::Int`).
    pub fn codes(&self, x: &Tensor) -> Tensor {
        pact_codes(x, &self.alpha, self.bits)
    }

    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// `2^bits − 1`.
    pub fn qmax(&self) -> i64 {
        (1i64 << self.bits) - 1
    }

    /// Current α.
    pub fn alpha_value(&self) -> f64 {
        scalar(&self.alpha)
    }

    /// Integer view: scale `α/qmax` and `qmax`.
    pub fn int_params(&self) -> ActInt {
        let qmax = self.qmax();
        ActInt { scale: self.alpha_value() / qmax as f64, qmax }
    }
}

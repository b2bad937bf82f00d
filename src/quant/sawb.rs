//! SAWB (Choi et al. 2018, "Bridging the accuracy gap for 2-bit quantized neural networks"):
//! the weight clip is predicted from the first two moments of the weight distribution.

use super::{round_half_away, scalar, IntWeights, WeightScheme};
use tch::{Kind, Tensor};

/// `(c1, c2)` of `α_w = c1·sqrt(E[w²]) − c2·E|w|`: fitted by SAWB for 2, 3 and 4 bits; other
/// widths use the 4-bit pair (`docs/quantization.md`).
pub fn sawb_coefficients(bits: u8) -> (f64, f64) {
    match bits {
        2 => (3.212, 2.178),
        3 => (7.962, 7.149),
        _ => (12.68, 12.80),
    }
}

/// The clip `α_w` of `w` (a 0-d tensor, no gradient).
///
/// `sqrt(E[w²]) ≥ E|w|`, so α_w > 0 for the 2- and 3-bit pairs, but the 4-bit pair has
/// `c1 < c2` and a tensor of nearly constant magnitude gives α_w ≤ 0; then (and for an
/// all-zero tensor) `max|w|` (at least 1e-12) is used so the quantizer never divides by 0.
pub fn sawb_alpha(w: &Tensor, bits: u8) -> Tensor {
    let (c1, c2) = sawb_coefficients(bits);
    let w = w.detach();
    let a = w.square().mean(w.kind()).sqrt() * c1 - w.abs().mean(w.kind()) * c2;
    a.where_self(&a.gt(0.0), &w.abs().max()).clamp_min(1e-12)
}

fn levels(n: f64) -> impl Fn(&Tensor, &Tensor) -> Tensor {
    // k = round(u·n) ∈ {0..n} with u = (clamp(w, ±α)/α + 1)/2.
    move |w, alpha| {
        let wc = w.maximum(&(-alpha)).minimum(alpha);
        round_half_away(&((wc / alpha + 1.0) / 2.0 * n))
    }
}

/// SAWB forward at `bits` (`1..=16`, checked by the callers that build quantizers):
/// `w_q = α_w(2u_q − 1)` with the STE passing the gradient to `w` inside the clip
/// (`|w| ≤ α_w`) and 0 outside.
pub fn sawb_quantize(w: &Tensor, bits: u8) -> Tensor {
    let n = ((1u64 << bits) - 1) as f64;
    let alpha = sawb_alpha(w, bits);
    let wd = w.detach();
    let k = levels(n)(&wd, &alpha);
    let wq = (k / n * 2.0 - 1.0) * &alpha;
    let inside = wd.abs().le_tensor(&alpha).to_kind(w.kind());
    wq + (w - &wd) * inside
}

/// Integer view: odd codes `2k − (2^b − 1)` and scale `α_w / (2^b − 1)`.
pub fn sawb_codes(w: &Tensor, bits: u8) -> IntWeights {
    let n = ((1u64 << bits) - 1) as f64;
    let alpha = sawb_alpha(w, bits);
    let k = levels(n)(&w.detach(), &alpha);
    IntWeights { codes: (k * 2.0 - n).to_kind(Kind::Int), scale: scalar(&alpha) / n, bits, scheme: WeightScheme::Sawb }
}

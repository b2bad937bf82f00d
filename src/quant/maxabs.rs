//! Symmetric max-abs weight quantization, used for the 8-bit first conv and last linear.

use super::{round_half_away, scalar, IntWeights, WeightScheme};
use tch::{Kind, Tensor};

fn qmax_of(bits: u8) -> f64 {
    ((1u64 << (bits - 1)) - 1) as f64
}

/// `s_w = max|w| / (2^(b−1) − 1)` as a 0-d tensor (1 for an all-zero tensor, whose codes are
/// all 0 anyway).
pub fn maxabs_scale(w: &Tensor, bits: u8) -> Tensor {
    let m = w.detach().abs().max();
    (&m / qmax_of(bits)).where_scalarother(&m.gt(0.0), 1.0)
}

fn codes_f(w: &Tensor, s: &Tensor, bits: u8) -> Tensor {
    let q = qmax_of(bits);
    round_half_away(&(w.detach() / s)).clamp(-q, q)
}

/// Forward at `bits` (`2..=16`): `round(w/s_w)·s_w`; the range covers every weight, so the STE
/// gradient is 1 everywhere.
pub fn maxabs_quantize(w: &Tensor, bits: u8) -> Tensor {
    let s = maxabs_scale(w, bits);
    codes_f(w, &s, bits) * &s + (w - w.detach())
}

/// Integer view: codes in `[−(2^(b−1)−1), 2^(b−1)−1]` (±127 at 8 bits) and `s_w`.
pub fn maxabs_codes(w: &Tensor, bits: u8) -> IntWeights {
    let s = maxabs_scale(w, bits);
    IntWeights { codes: codes_f(w, &s, bits).to_kind(Kind::Int), scale: scalar(&s), bits, scheme: WeightScheme::MaxAbs }
}

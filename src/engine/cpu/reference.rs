//! Scalar reference implementations: the executable definition of every op.
//!
//! Written for obviousness, not speed: plain loops over the formulas in
//! `docs/quantization.md`. Every fast path is tested bit-exactly against these functions.

use crate::engine::{Conv2d, ConvDims, EngineError, Linear, MaxPool2d, QTensor, Requant, Residual, Result};
use std::ops::Range;

/// One output code: `clamp((acc·m + q_sc·r + b + 2^(shift−1)) >> shift, 0, qmax)` in int64 with
/// an arithmetic shift (the rounding term is absent for `shift == 0`).
#[inline]
pub fn requantize(acc: i32, m: i32, b: i32, q_sc: u8, r: i32, rq: &Requant) -> u8 {
    let v = acc as i64 * m as i64 + q_sc as i64 * r as i64 + b as i64 + rq.rounding();
    (v >> rq.shift).clamp(0, rq.qmax as i64) as u8
}

/// Conv with fused epilogue (and optional residual), the whole output.
pub fn conv2d(conv: &Conv2d, x: &QTensor, residual: Option<&Residual>) -> Result<QTensor> {
    let d = conv.dims(x, residual)?;
    let codes = conv.weights.codes_i32();
    let mut out = QTensor::zeros(d.ho, d.wo, d.c_out);
    conv2d_pixels(conv, &codes, &d, x, residual, 0..d.ho * d.wo, &mut out.data);
    Ok(out)
}

/// Output pixels `pixels` (raster order) of a checked conv call into `out`
/// (`pixels.len() · c_out` codes). `codes` are the weights as `[c_conv][k·k·c_in]` i32.
pub(crate) fn conv2d_pixels(
    conv: &Conv2d,
    codes: &[i32],
    d: &ConvDims,
    x: &QTensor,
    residual: Option<&Residual>,
    pixels: Range<usize>,
    out: &mut [u8],
) {
    let (k_len, cg) = (conv.k_len(), conv.c_in_per_group());
    let group_out = d.c_conv / conv.groups;
    let rq = &conv.requant;
    for (n, out_px) in pixels.zip(out.chunks_exact_mut(d.c_out)) {
        let (y, x_) = (n / d.wo, n % d.wo);
        for (o, q) in out_px.iter_mut().enumerate() {
            let (mut acc, mut m, mut b) = (0i32, 0, 0);
            if o < d.c_conv {
                let w = &codes[o * k_len..(o + 1) * k_len];
                // The input channels of output channel o's group.
                let c0 = o / group_out * cg;
                for ky in 0..conv.k {
                    // Zero padding: taps outside the input contribute code 0.
                    let Some(iy) = (y * conv.stride + ky).checked_sub(conv.pad).filter(|&iy| iy < x.h) else {
                        continue;
                    };
                    for kx in 0..conv.k {
                        let Some(ix) = (x_ * conv.stride + kx).checked_sub(conv.pad).filter(|&ix| ix < x.w) else {
                            continue;
                        };
                        for ci in 0..cg {
                            acc += x.at(iy, ix, c0 + ci) as i32 * w[(ky * conv.k + kx) * cg + ci];
                        }
                    }
                }
                (m, b) = (rq.m[o], rq.b[o]);
            }
            let (q_sc, r) = match residual {
                Some(res) if o < d.c_res => (res.input.at(y * res.stride, x_ * res.stride, o), res.r),
                _ => (0, 0),
            };
            *q = requantize(acc, m, b, q_sc, r, rq);
        }
    }
}

/// Global average pooling as the exact per-channel sum `S_c = Σ_hw q` (no division).
pub fn global_avg_pool(x: &QTensor) -> Result<Vec<i32>> {
    x.validate()?;
    if (x.h * x.w) as u64 * 255 > i32::MAX as u64 {
        return Err(EngineError::Overflow(format!("pooling sum over {}x{} pixels", x.h, x.w)));
    }
    let mut s = vec![0i32; x.c];
    for px in x.data.chunks_exact(x.c) {
        for (acc, &q) in s.iter_mut().zip(px) {
            *acc += q as i32;
        }
    }
    Ok(s)
}

/// `logit_o = Σ_c w[o,c]·x_c + bias_o`. Computed in int64; a logit outside int32 is an error
/// rather than a silent wrap, since the contract defines int32 logits.
pub fn linear(l: &Linear, x: &[i32]) -> Result<Vec<i32>> {
    l.validate()?;
    if x.len() != l.c_in() {
        return Err(EngineError::Mismatch { what: "linear input length", expected: l.c_in(), got: x.len() });
    }
    (0..l.c_out())
        .map(|o| {
            let acc: i64 = x.iter().enumerate().map(|(c, &v)| l.weights.code(o, c) as i64 * v as i64).sum();
            i32::try_from(acc + l.bias[o] as i64).map_err(|_| EngineError::Overflow(format!("logit {o} = {}", acc + l.bias[o] as i64)))
        })
        .collect()
}

/// Max pooling over the valid positions of each window.
pub fn max_pool(p: &MaxPool2d, x: &QTensor) -> Result<QTensor> {
    let (ho, wo) = p.out_hw(x)?;
    let mut out = QTensor::zeros(ho, wo, x.c);
    for y in 0..ho {
        for x_ in 0..wo {
            for c in 0..x.c {
                let mut best = 0u8;
                for ky in 0..p.k {
                    let Some(iy) = (y * p.stride + ky).checked_sub(p.pad).filter(|&i| i < x.h) else { continue };
                    for kx in 0..p.k {
                        let Some(ix) = (x_ * p.stride + kx).checked_sub(p.pad).filter(|&i| i < x.w) else { continue };
                        best = best.max(x.at(iy, ix, c));
                    }
                }
                out.data[(y * wo + x_) * x.c + c] = best;
            }
        }
    }
    Ok(out)
}

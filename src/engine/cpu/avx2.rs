//! x86-64 AVX2 conv kernels (implicit GEMM, no im2col buffer).
//!
//! Technique (anchors.md §2.2, "`VPMADDUBSW` with int16 accumulation"):
//! - The input is copied once into a zero-bordered NHWC buffer, so for output pixel `(y, x)` and
//!   kernel row `ky` the `(kx, c_in)` part of the reduction is one contiguous run of `k·c_in`
//!   codes. The reduction is walked in groups of 4 codes (2 for 8-bit layers).
//! - A micro-kernel computes `P ≤ 6` output pixels × 16 output channels: per group it loads two
//!   32-byte weight vectors (8 channels × 4 codes each), broadcasts each pixel's 4 activation
//!   bytes, and does `vpmaddubsw` (u8 activation × i8 weight, pairs summed to i16) + `vpaddw`:
//!   2 instructions per 32 MACs. 12 accumulators + 2 weights + 1 broadcast fit the 16 ymm
//!   registers.
//! - 2-bit weights are expanded once (at prepare time) to their signed codes `c = 2u − 3` as i8,
//!   so no offset correction (`Σa·c = 2Σa·u − 3Σa`) is needed at run time; it costs 4 bytes per
//!   4 weights of L1/L2 traffic, which these layer sizes (≤ 64×576 weights) easily afford.
//! - int16 lanes hold `a0·c0 + a1·c1` (≤ 6·amax per step); they are flushed to int32 with
//!   `vpmaddwd(·, 1)` (which also adds the two lanes of one channel) every
//!   `⌊32767 / (6·amax)⌋` steps, `amax` being the input's largest code. For 2-bit activations
//!   that is every 1820 steps (7280 codes), i.e. once per pixel for any realistic layer; 8-bit
//!   inputs stay exact as well, just with more flushes.
//! - 8-bit layers (the first conv: u8 pixels × i8 weights) would saturate `vpmaddubsw`
//!   (255·127·2 > 32767), so they widen both sides to i16 and use `vpmaddwd` directly into int32.
//! - The epilogue is vectorised in int64 (`vpmuldq` on even/odd lanes), with the arithmetic
//!   shift replaced by "negative → 0, else logical shift" since the result is clamped at 0
//!   anyway.
//!
//! All `unsafe` in the engine lives in this file. The SAFETY argument is the same everywhere:
//! (1) a [`ConvKernel`] is only constructed after `is_x86_feature_detected!("avx2")`, so the
//! `#[target_feature(enable = "avx2")]` functions are only reached on CPUs that have AVX2;
//! (2) every raw pointer read stays inside buffers whose sizes are fixed in [`ConvKernel::job`]
//! (the padded input has `SLACK` spare zero elements for the ≤ 3-code over-read at the end of
//! a row run; weight reads are bounded by the layout built in [`ConvKernel::new`]).

#![allow(clippy::needless_range_loop)] // explicit lane/pixel indices read clearer in micro-kernels

use super::super::{Conv2d, ConvDims, ConvWeights, QTensor, Residual};
use std::arch::x86_64::*;
use std::ops::Range;

/// Output pixels per micro-kernel call.
pub(crate) const PIXEL_TILE: usize = 6;
/// Output channels per micro-kernel call (two ymm vectors of 8 int32 channels).
const BLOCK: usize = 16;
/// Spare zero elements after the padded input (a group may read 3 codes past a row run).
const SLACK: usize = 32;

pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2")
}

#[derive(Clone, Debug)]
enum Packed {
    /// `[block][ky][group of 4][2 vectors][8 channels][4 codes]` i8.
    W2(Vec<i8>),
    /// `[block][ky][pair][2 vectors][8 channels][2 codes]` i16.
    W8(Vec<i16>),
}

/// A conv layer laid out for the AVX2 micro-kernels.
#[derive(Clone, Debug)]
pub(crate) struct ConvKernel {
    conv: Conv2d,
    /// Reduction groups per kernel row: `⌈k·c_in / 4⌉` (2-bit) or `⌈k·c_in / 2⌉` (8-bit).
    steps: usize,
    /// Output-channel blocks of 16.
    nb: usize,
    weights: Packed,
}

impl ConvKernel {
    /// `None` when the CPU lacks AVX2. `conv` must be validated.
    pub(crate) fn new(conv: &Conv2d) -> Option<Self> {
        if !available() {
            return None;
        }
        let (k, c_in, c_conv) = (conv.k, conv.c_in, conv.c_conv());
        let seg = k * c_in;
        let nb = c_conv.div_ceil(BLOCK);
        let group = match conv.weights {
            ConvWeights::W2(_) => 4,
            ConvWeights::W8(_) => 2,
        };
        let steps = seg.div_ceil(group);
        let codes = conv.weights.codes_i32();
        // Code of channel `o` at (ky, position `e` inside the row run), 0 outside the layer.
        let code = |o: usize, ky: usize, e: usize| -> i32 {
            if o < c_conv && e < seg {
                codes[o * conv.k_len() + ky * seg + e]
            } else {
                0
            }
        };
        let mut flat = Vec::with_capacity(nb * k * steps * BLOCK * group);
        for blk in 0..nb {
            for ky in 0..k {
                for g in 0..steps {
                    for j in 0..BLOCK {
                        for t in 0..group {
                            flat.push(code(blk * BLOCK + j, ky, g * group + t));
                        }
                    }
                }
            }
        }
        let weights = match conv.weights {
            ConvWeights::W2(_) => Packed::W2(flat.iter().map(|&c| c as i8).collect()),
            ConvWeights::W8(_) => Packed::W8(flat.iter().map(|&c| c as i16).collect()),
        };
        Some(ConvKernel { conv: conv.clone(), steps, nb, weights })
    }

    /// Builds the per-call state: the zero-bordered input copy and the epilogue tables.
    pub(crate) fn job<'a>(&'a self, d: &ConvDims, x: &QTensor, residual: Option<&'a Residual<'a>>) -> Job<'a> {
        let c = &self.conv;
        let (hp, wp) = (x.h + 2 * c.pad, x.w + 2 * c.pad);
        let row_stride = wp * c.c_in;
        let len = hp * row_stride + SLACK;
        let place = |buf: &mut dyn FnMut(usize, &[u8])| {
            for y in 0..x.h {
                let dst = ((y + c.pad) * wp + c.pad) * c.c_in;
                buf(dst, &x.data[y * x.w * x.c..(y + 1) * x.w * x.c]);
            }
        };
        let input = match self.weights {
            Packed::W2(_) => {
                let mut v = vec![0u8; len];
                place(&mut |dst, row| v[dst..dst + row.len()].copy_from_slice(row));
                Input::U8(v)
            }
            Packed::W8(_) => {
                let mut v = vec![0i16; len];
                place(&mut |dst, row| {
                    for (o, &q) in v[dst..dst + row.len()].iter_mut().zip(row) {
                        *o = q as i16;
                    }
                });
                Input::I16(v)
            }
        };
        // Every int16 lane gains at most 2·3·amax per step.
        let amax = x.max_code().max(1) as usize;
        let flush = (i16::MAX as usize / (6 * amax)).max(1);

        // Epilogue tables over `aw` channels (a multiple of 16 covering conv and residual):
        // channels the conv lacks get m = b = 0, exactly as the contract says.
        let aw = d.c_out.max(self.nb * BLOCK).div_ceil(BLOCK) * BLOCK;
        let rq = &c.requant;
        let mut m = vec![0i32; aw];
        m[..d.c_conv].copy_from_slice(&rq.m);
        // int64 `b + 2^(shift−1)`, per 8 channels: the 4 even channels, then the 4 odd ones
        // (the order `vpmuldq` produces).
        let mut bias = vec![0i64; aw];
        for ch in 0..aw {
            let b = if ch < d.c_conv { rq.b[ch] as i64 } else { 0 };
            let (chunk, lane) = (ch / 8, ch % 8);
            bias[chunk * 8 + (lane % 2) * 4 + lane / 2] = b + rq.rounding();
        }
        Job { ker: self, input, row_stride, d: *d, aw, m, bias, residual, flush }
    }
}

enum Input {
    U8(Vec<u8>),
    I16(Vec<i16>),
}

/// One conv call, shared read-only by the worker threads.
pub(crate) struct Job<'a> {
    ker: &'a ConvKernel,
    input: Input,
    /// Elements per padded input row.
    row_stride: usize,
    d: ConvDims,
    aw: usize,
    m: Vec<i32>,
    bias: Vec<i64>,
    residual: Option<&'a Residual<'a>>,
    flush: usize,
}

impl Job<'_> {
    /// Computes output pixels `px` into `out` (`px.len() · c_out` codes).
    pub(crate) fn run(&self, px: Range<usize>, out: &mut [u8]) {
        assert_eq!(out.len(), px.len() * self.d.c_out, "output slice does not match the pixel range");
        // SAFETY: `self.ker` exists only on AVX2 machines (ConvKernel::new), and `out` has been
        // checked to hold the range's codes; the remaining bounds are argued in the module docs.
        unsafe { run_avx2(self, px, out) }
    }
}

#[target_feature(enable = "avx2")]
unsafe fn run_avx2(job: &Job, px: Range<usize>, out: &mut [u8]) {
    let (ker, d, aw) = (job.ker, &job.d, job.aw);
    let c = &ker.conv;
    let mut acc = vec![0i32; PIXEL_TILE * aw];
    let mut res_row = vec![0u8; aw];
    let mut out_row = vec![0u8; aw];
    let mut n = px.start;
    while n < px.end {
        let np = (px.end - n).min(PIXEL_TILE);
        // Offset (in elements) of each pixel's window origin in the padded input.
        let mut offs = [0usize; PIXEL_TILE];
        for (i, o) in offs.iter_mut().enumerate().take(np) {
            let (y, x) = ((n + i) / d.wo, (n + i) % d.wo);
            *o = (y * c.stride * job.row_stride) + x * c.stride * c.c_in;
        }
        for blk in 0..ker.nb {
            let dst = acc.as_mut_ptr().add(blk * BLOCK);
            match (&ker.weights, &job.input) {
                (Packed::W2(w), Input::U8(inp)) => {
                    let wb = w.as_ptr().add(blk * c.k * ker.steps * 2 * 32);
                    let a = (inp.as_ptr(), &offs, job.row_stride, c.k, ker.steps, wb, job.flush, dst, aw);
                    match np {
                        6 => micro_w2::<6>(a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7, a.8),
                        5 => micro_w2::<5>(a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7, a.8),
                        4 => micro_w2::<4>(a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7, a.8),
                        3 => micro_w2::<3>(a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7, a.8),
                        2 => micro_w2::<2>(a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7, a.8),
                        _ => micro_w2::<1>(a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7, a.8),
                    }
                }
                (Packed::W8(w), Input::I16(inp)) => {
                    let wb = w.as_ptr().add(blk * c.k * ker.steps * 2 * 16);
                    let a = (inp.as_ptr(), &offs, job.row_stride, c.k, ker.steps, wb, dst, aw);
                    match np {
                        6 => micro_w8::<6>(a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7),
                        5 => micro_w8::<5>(a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7),
                        4 => micro_w8::<4>(a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7),
                        3 => micro_w8::<3>(a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7),
                        2 => micro_w8::<2>(a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7),
                        _ => micro_w8::<1>(a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7),
                    }
                }
                _ => unreachable!("input buffer is built to match the weight format"),
            }
        }
        for i in 0..np {
            let p = n + i;
            let res = job.residual.map(|r| {
                let (y, x) = (p / d.wo, p % d.wo);
                res_row[..d.c_res].copy_from_slice(r.input.pixel(y * r.stride, x * r.stride));
                (res_row.as_ptr(), r.r)
            });
            epilogue_row(acc.as_ptr().add(i * aw), job, res, out_row.as_mut_ptr());
            let o = (p - px.start) * d.c_out;
            out[o..o + d.c_out].copy_from_slice(&out_row[..d.c_out]);
        }
        n += np;
    }
}

/// `P` pixels × 16 channels of a 2-bit layer: int32 sums into `dst[i·aw + j]`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn micro_w2<const P: usize>(
    inp: *const u8,
    offs: &[usize; PIXEL_TILE],
    row_stride: usize,
    k: usize,
    steps: usize,
    mut w: *const i8,
    flush: usize,
    dst: *mut i32,
    aw: usize,
) {
    let ones = _mm256_set1_epi16(1);
    let zero = _mm256_setzero_si256();
    let mut acc32 = [[zero; 2]; P];
    let mut acc16 = [[zero; 2]; P];
    let mut left = flush;
    for ky in 0..k {
        let mut ptrs = [inp; P];
        for i in 0..P {
            ptrs[i] = inp.add(offs[i] + ky * row_stride);
        }
        for _ in 0..steps {
            let w0 = _mm256_loadu_si256(w.cast());
            let w1 = _mm256_loadu_si256(w.add(32).cast());
            w = w.add(64);
            for i in 0..P {
                let a = _mm256_set1_epi32(ptrs[i].cast::<i32>().read_unaligned());
                ptrs[i] = ptrs[i].add(4);
                acc16[i][0] = _mm256_add_epi16(acc16[i][0], _mm256_maddubs_epi16(a, w0));
                acc16[i][1] = _mm256_add_epi16(acc16[i][1], _mm256_maddubs_epi16(a, w1));
            }
            left -= 1;
            if left == 0 {
                left = flush;
                for i in 0..P {
                    for v in 0..2 {
                        acc32[i][v] = _mm256_add_epi32(acc32[i][v], _mm256_madd_epi16(acc16[i][v], ones));
                        acc16[i][v] = zero;
                    }
                }
            }
        }
    }
    for i in 0..P {
        for v in 0..2 {
            let s = _mm256_add_epi32(acc32[i][v], _mm256_madd_epi16(acc16[i][v], ones));
            _mm256_storeu_si256(dst.add(i * aw + v * 8).cast(), s);
        }
    }
}

/// `P` pixels × 16 channels of an 8-bit layer (i16 inputs and weights, `vpmaddwd`).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn micro_w8<const P: usize>(
    inp: *const i16,
    offs: &[usize; PIXEL_TILE],
    row_stride: usize,
    k: usize,
    steps: usize,
    mut w: *const i16,
    dst: *mut i32,
    aw: usize,
) {
    let mut acc = [[_mm256_setzero_si256(); 2]; P];
    for ky in 0..k {
        let mut ptrs = [inp; P];
        for i in 0..P {
            ptrs[i] = inp.add(offs[i] + ky * row_stride);
        }
        for _ in 0..steps {
            let w0 = _mm256_loadu_si256(w.cast());
            let w1 = _mm256_loadu_si256(w.add(16).cast());
            w = w.add(32);
            for i in 0..P {
                let a = _mm256_set1_epi32(ptrs[i].cast::<i32>().read_unaligned());
                ptrs[i] = ptrs[i].add(2);
                acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(a, w0));
                acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(a, w1));
            }
        }
    }
    for i in 0..P {
        for v in 0..2 {
            _mm256_storeu_si256(dst.add(i * aw + v * 8).cast(), acc[i][v]);
        }
    }
}

/// Requantises one pixel's `aw` accumulators into codes (`out` holds `aw` bytes).
/// `res` is the residual row (`aw` codes, zero past the shortcut's channels) and `r`.
#[target_feature(enable = "avx2")]
unsafe fn epilogue_row(acc: *const i32, job: &Job, res: Option<(*const u8, i32)>, out: *mut u8) {
    let rq = &job.ker.conv.requant;
    let zero = _mm256_setzero_si256();
    let qmax = _mm256_set1_epi64x(rq.qmax as i64);
    let shift = _mm_cvtsi32_si128(rq.shift as i32);
    // Arithmetic shift then clamp at 0 == "negative → 0, else logical shift" (AVX2 has no
    // 64-bit arithmetic shift).
    let clamp = |v: __m256i| -> __m256i {
        let neg = _mm256_cmpgt_epi64(zero, v);
        let s = _mm256_srl_epi64(v, shift);
        let big = _mm256_cmpgt_epi64(s, qmax);
        _mm256_andnot_si256(neg, _mm256_blendv_epi8(s, qmax, big))
    };
    let (m, bias) = (job.m.as_ptr(), job.bias.as_ptr());
    for c in (0..job.aw).step_by(8) {
        let a = _mm256_loadu_si256(acc.add(c).cast());
        let mm = _mm256_loadu_si256(m.add(c).cast());
        let mut even = _mm256_add_epi64(_mm256_mul_epi32(a, mm), _mm256_loadu_si256(bias.add(c).cast()));
        let prod_odd = _mm256_mul_epi32(_mm256_srli_epi64(a, 32), _mm256_srli_epi64(mm, 32));
        let mut odd = _mm256_add_epi64(prod_odd, _mm256_loadu_si256(bias.add(c + 4).cast()));
        if let Some((q, r)) = res {
            let qv = _mm256_cvtepu8_epi32(_mm_loadl_epi64(q.add(c).cast()));
            let rv = _mm256_set1_epi32(r);
            even = _mm256_add_epi64(even, _mm256_mul_epi32(qv, rv));
            odd = _mm256_add_epi64(odd, _mm256_mul_epi32(_mm256_srli_epi64(qv, 32), rv));
        }
        // Codes (≤ 255) back into int32 lane order 0..8, then to bytes.
        let lanes = _mm256_or_si256(clamp(even), _mm256_slli_epi64(clamp(odd), 32));
        let w16 = _mm256_packus_epi32(lanes, lanes);
        let b8 = _mm256_packus_epi16(w16, w16);
        let lo = _mm_cvtsi128_si32(_mm256_castsi256_si128(b8)) as u32 as u64;
        let hi = _mm_cvtsi128_si32(_mm256_extracti128_si256(b8, 1)) as u32 as u64;
        out.add(c).cast::<u64>().write_unaligned(lo | hi << 32);
    }
}

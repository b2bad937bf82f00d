//! x86-64 AVX2 conv kernels (implicit GEMM, no im2col buffer).
//!
//! Technique (anchors.md §2.2, "`VPMADDUBSW` with int16 accumulation"):
//! - The input is copied once into a zero-bordered NHWC buffer, so for output pixel `(y, x)` and
//!   kernel row `ky` the `(kx, c_in)` part of the reduction is one contiguous run of `k·c_in`
//!   codes. The reduction is walked in groups of 4 codes (2 for 8-bit layers).
//! - A micro-kernel computes 5 output pixels × 16 output channels: per group it loads two
//!   32-byte weight vectors (8 channels × 4 codes each), broadcasts each pixel's 4 activation
//!   bytes, and does `vpmaddubsw` (u8 activation × i8 weight, pairs summed to i16) + `vpaddw`:
//!   2 instructions per 32 MACs. 10 accumulators + 2 weights + broadcast + product fit the 16
//!   ymm registers; 6 pixels (12 accumulators) made LLVM spill one per step and ran 1.5× slower.
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
//! - The epilogue is exact in f64 when every intermediate integer stays below 2^53 (checked per
//!   call; true for every realistic layer): see [`Epilogue::F64`]. It runs straight from the
//!   micro-kernel's registers for 16-channel blocks that lie wholly inside the output, and for a
//!   last block of 8 (MobileNetV2's 8- and 24-channel layers). Otherwise (other partial blocks,
//!   or bounds beyond 2^53) the tile goes through memory, and the int64 form
//!   uses `vpmuldq` on even/odd lanes with the arithmetic shift replaced by "negative → 0, else
//!   logical shift", which is the same function since the result is clamped at 0.
//!
//! All `unsafe` in the engine lives in this file, `avx512.rs` and the SIMD files of `depthwise/`
//! (each with its own SAFETY notes; the depthwise kernels reuse this file's epilogue). Here:
//! (1) a [`ConvKernel`] is only constructed after `is_x86_feature_detected!("avx2")`, so the
//! `#[target_feature(enable = "avx2")]` functions are only reached on CPUs that have AVX2;
//! (2) every raw pointer read stays inside buffers whose sizes are fixed in [`ConvKernel::job`]
//! (the padded input has `SLACK` spare zero elements for the ≤ 3-code over-read at the end of
//! a row run; weight reads are bounded by the layout built in [`ConvKernel::new`]); (3) the
//! fused epilogue's output and shortcut pointers are taken from slices of exactly the 16 codes
//! they access (see `fused`), and each worker thread writes only its own output slice.

#![allow(clippy::needless_range_loop)] // explicit lane/pixel indices read clearer in micro-kernels

use super::super::{Conv2d, ConvDims, ConvWeights, QTensor, Requant, Residual};
use std::arch::x86_64::*;
use std::ops::Range;
use std::sync::Arc;

/// Output pixels per micro-kernel call.
pub(crate) const PIXEL_TILE: usize = 5;
const _: () = assert!(PIXEL_TILE == 5, "run_avx2 dispatches micro-kernels for 1..=5 pixels");
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
    epilogue: EpilogueTables,
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
        Some(ConvKernel { conv: conv.clone(), steps, nb, weights, epilogue: EpilogueTables::new(conv, nb * BLOCK) })
    }

    /// Builds the state for output pixels `pixels` of a call: the zero-bordered copy of the
    /// input rows they read (so that each thread of a split copies its own rows, halo
    /// included, in parallel) and the epilogue tables.
    pub(crate) fn job<'a>(&'a self, d: &ConvDims, x: &QTensor, residual: Option<&'a Residual<'a>>, pixels: Range<usize>) -> Job<'a> {
        let c = &self.conv;
        let wp = x.w + 2 * c.pad;
        let row_stride = wp * c.c_in;
        let rows = super::padded_rows(c, d.wo, &pixels);
        let len = rows.len() * row_stride + SLACK;
        // The input rows among them.
        let (y0, y1) = (rows.start.saturating_sub(c.pad), (rows.end.saturating_sub(c.pad)).min(x.h));
        let place = |buf: &mut dyn FnMut(usize, &[u8])| {
            for y in y0..y1 {
                let dst = ((y + c.pad - rows.start) * wp + c.pad) * c.c_in;
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
        // Every int16 lane gains at most 2·3·amax per step (amax of the rows read: each part
        // of a split may flush at its own interval, all exact).
        let amax = x.data[y0.min(y1) * x.w * x.c..y1 * x.w * x.c].iter().copied().max().unwrap_or(0);
        let flush = (i16::MAX as usize / (6 * amax.max(1) as usize)).max(1);

        let epi = Epilogue::new(&self.epilogue, &self.conv, self.nb * BLOCK, amax, residual);
        Job { ker: self, input, row_stride, row0: rows.start, pixels, d: *d, epi, residual, flush }
    }
}

/// Requantisation tables for the `nb·16` channels the micro-kernels produce; channels past
/// `c_conv` get `m = b = 0`, exactly as the contract says for channels the conv lacks.
/// Shared with the depthwise kernels (`depthwise/avx2.rs`, `depthwise/avx512.rs`).
pub(super) enum Epilogue {
    /// Exact in f64 when every intermediate is an integer below 2^53 (checked per call): with
    /// `m' = m·2^−shift` and `c' = (b + 2^(shift−1))·2^−shift`, `acc·m' + c' (+ q_sc·r')` is the
    /// exact int64 sum scaled by a power of two, so `trunc(clamp(·, 0, qmax))` equals
    /// `clamp(sum >> shift, 0, qmax)`. Half the instructions of the int64 form.
    F64 { m: Arc<[f64]>, c: Arc<[f64]>, r: f64, qmax: f64 },
    /// The general int64 form (`vpmuldq`); `bias = b + 2^(shift−1)` is stored per 8 channels as
    /// the 4 even channels, then the 4 odd ones (the order `vpmuldq` produces).
    I64 { m: Vec<i32>, bias: Vec<i64> },
}

/// What a layer's [`Epilogue`] needs that does not depend on the call, built once at prepare
/// time: the f64 form's tables and the constants of its exactness bound.
#[derive(Clone, Debug)]
pub(super) struct EpilogueTables {
    /// `m·2^−shift` and `(b + 2^(shift−1))·2^−shift` for `width` channels (0 past `c_conv`).
    m: Arc<[f64]>,
    c: Arc<[f64]>,
    /// `k_len · |largest weight code|`, `max |m|` and `max |b| + 2^(shift−1)`.
    acc_per_code: u128,
    m_max: u128,
    b_max: u128,
}

impl EpilogueTables {
    pub(super) fn new(c: &Conv2d, width: usize) -> Self {
        let rq = &c.requant;
        let scale = pow2_neg(rq.shift);
        let m = |ch: usize| rq.m.get(ch).copied().unwrap_or(0);
        let b = |ch: usize| rq.b.get(ch).copied().unwrap_or(0) as i64 + rq.rounding();
        let wmax: u128 = if matches!(c.weights, ConvWeights::W2(_)) { 3 } else { 128 };
        EpilogueTables {
            m: (0..width).map(|ch| m(ch) as f64 * scale).collect(),
            c: (0..width).map(|ch| b(ch) as f64 * scale).collect(),
            acc_per_code: c.k_len() as u128 * wmax,
            m_max: rq.m.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0) as u128,
            b_max: rq.b.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0) as u128 + rq.rounding() as u128,
        }
    }
}

impl Epilogue {
    /// The epilogue of a call of `c` (whose prepared tables `t` cover `width ≥ c_conv` channels)
    /// on an input whose largest code is `amax`.
    pub(super) fn new(t: &EpilogueTables, c: &Conv2d, width: usize, amax: u8, residual: Option<&Residual>) -> Self {
        let rq = &c.requant;
        // Largest |intermediate| of the int64 sum, as u128 so the bound itself cannot overflow.
        let acc_max = t.acc_per_code * amax as u128;
        let r_term = residual.map_or(0, |r| 255 * r.r.unsigned_abs() as u128);
        if acc_max * t.m_max + t.b_max + r_term < 1u128 << 53 {
            Epilogue::F64 {
                m: t.m.clone(),
                c: t.c.clone(),
                r: residual.map_or(0.0, |r| r.r as f64 * pow2_neg(rq.shift)),
                qmax: rq.qmax as f64,
            }
        } else {
            let m = |ch: usize| rq.m.get(ch).copied().unwrap_or(0);
            let b = |ch: usize| rq.b.get(ch).copied().unwrap_or(0) as i64 + rq.rounding();
            let mut bias = vec![0i64; width];
            for ch in 0..width {
                let (chunk, lane) = (ch / 8, ch % 8);
                bias[chunk * 8 + (lane % 2) * 4 + lane / 2] = b(ch);
            }
            Epilogue::I64 { m: (0..width).map(m).collect(), bias }
        }
    }
}

/// `2^−shift` (shift ≤ 62) built from its bits: exact without relying on libm's `exp2`.
fn pow2_neg(shift: u32) -> f64 {
    f64::from_bits((1023 - shift as u64) << 52)
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
    /// The padded row `input` starts at.
    row0: usize,
    /// The output pixels whose rows `input` holds.
    pixels: Range<usize>,
    d: ConvDims,
    epi: Epilogue,
    residual: Option<&'a Residual<'a>>,
    flush: usize,
}

impl Job<'_> {
    /// Computes output pixels `px` into `out` (`px.len() · c_out` codes).
    pub(crate) fn run(&self, px: Range<usize>, out: &mut [u8]) {
        assert_eq!(out.len(), px.len() * self.d.c_out, "output slice does not match the pixel range");
        assert!(px.start >= self.pixels.start && px.end <= self.pixels.end, "pixels outside the job's rows");
        // SAFETY: `self.ker` exists only on AVX2 machines (ConvKernel::new), `out` has been
        // checked to hold the range's codes, and `input` to hold the rows those pixels read; the
        // remaining bounds are argued in the module docs.
        unsafe { run_avx2(self, px, out) }
    }
}

#[target_feature(enable = "avx2")]
unsafe fn run_avx2(job: &Job, px: Range<usize>, out: &mut [u8]) {
    let (ker, d) = (job.ker, &job.d);
    let c = &ker.conv;
    let mut acc = [0i32; PIXEL_TILE * BLOCK];
    let mut n = px.start;
    // Output coordinates of pixel `n`, stepped along without divisions.
    let (mut y, mut x) = (n / d.wo, n % d.wo);
    while n < px.end {
        let np = (px.end - n).min(PIXEL_TILE);
        // Offset (in elements) of each pixel's window origin in the padded input, and of its
        // shortcut pixel in the residual tensor.
        let (mut offs, mut res_offs) = ([0usize; PIXEL_TILE], [0usize; PIXEL_TILE]);
        for i in 0..np {
            offs[i] = (y * c.stride - job.row0) * job.row_stride + x * c.stride * c.c_in;
            if let Some(r) = job.residual {
                res_offs[i] = (y * r.stride * r.input.w + x * r.stride) * r.input.c;
            }
            x += 1;
            if x == d.wo {
                (y, x) = (y + 1, 0);
            }
        }
        for blk in 0..ker.nb {
            let (c0, c1) = (blk * BLOCK, (blk * BLOCK + BLOCK).min(d.c_out));
            let sink = Sink { acc: acc.as_mut_ptr(), fused: fused(job, c0, n - px.start, np, &res_offs, out) };
            match (&ker.weights, &job.input) {
                (Packed::W2(w), Input::U8(inp)) => {
                    let wb = w.as_ptr().add(blk * c.k * ker.steps * 2 * 32);
                    let a = (inp.as_ptr(), &offs, job.row_stride, c.k, ker.steps, wb, job.flush, &sink);
                    match np {
                        5 => micro_w2::<5>(a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7),
                        4 => micro_w2::<4>(a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7),
                        3 => micro_w2::<3>(a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7),
                        2 => micro_w2::<2>(a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7),
                        _ => micro_w2::<1>(a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7),
                    }
                }
                (Packed::W8(w), Input::I16(inp)) => {
                    let wb = w.as_ptr().add(blk * c.k * ker.steps * 2 * 16);
                    let a = (inp.as_ptr(), &offs, job.row_stride, c.k, ker.steps, wb, &sink);
                    match np {
                        5 => micro_w8::<5>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
                        4 => micro_w8::<4>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
                        3 => micro_w8::<3>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
                        2 => micro_w8::<2>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
                        _ => micro_w8::<1>(a.0, a.1, a.2, a.3, a.4, a.5, a.6),
                    }
                }
                _ => unreachable!("input buffer is built to match the weight format"),
            }
            if sink.fused.is_some() {
                continue;
            }
            // General path: requantise the stored tile's channels that are inside the output.
            for i in 0..np {
                let o = (n + i - px.start) * d.c_out;
                let dst = &mut out[o + c0..o + c1];
                let res = job.residual.map(|r| {
                    let q = &r.input.data[res_offs[i]..res_offs[i] + d.c_res];
                    (&q[c0.min(d.c_res)..c1.min(d.c_res)], r.r)
                });
                let a = acc.as_ptr().add(i * BLOCK);
                match &job.epi {
                    Epilogue::F64 { m, c, r, qmax } => epilogue_f64(a, m[c0..].as_ptr(), c[c0..].as_ptr(), res, *r, *qmax, dst),
                    Epilogue::I64 { m, bias } => epilogue_i64(a, m[c0..].as_ptr(), bias[c0..].as_ptr(), res, &c.requant, dst),
                }
            }
        }
        // Channels only the (wider) shortcut has: acc = m = b = 0.
        if let Some(r) = job.residual.filter(|_| d.c_out > ker.nb * BLOCK) {
            for i in 0..np {
                let o = (n + i - px.start) * d.c_out;
                for ch in ker.nb * BLOCK..d.c_out {
                    let q = r.input.data[res_offs[i] + ch];
                    out[o + ch] = super::reference::requantize(0, 0, 0, q, r.r, &c.requant);
                }
            }
        }
        n += np;
    }
}

/// Where a micro-kernel's `P × 16` int32 results go.
struct Sink {
    /// `[PIXEL_TILE][16]` tile for the general epilogue.
    acc: *mut i32,
    /// Requantise straight from registers instead (the common case).
    fused: Option<Fused>,
}

/// Fused f64 requantisation of the first `halves · 8` channels of a 16-channel block, all of
/// them outputs.
struct Fused {
    m: *const f64,
    c: *const f64,
    r: f64,
    qmax: f64,
    /// 2, or 1 where only the block's first 8 channels exist (layers of 8 or 24 channels).
    halves: usize,
    /// Each pixel's first output code of the block.
    out: [*mut u8; PIXEL_TILE],
    /// Each pixel's first shortcut code of the block; null where the shortcut lacks these
    /// channels entirely.
    res: [*const u8; PIXEL_TILE],
}

/// The fused epilogue for block `c0` of pixels `first..first + np` (relative to `out`), when it
/// applies: f64 form, the block's 16 (or, at the end, its first 8) channels are outputs, and
/// the shortcut has all or none of them.
fn fused(job: &Job, c0: usize, first: usize, np: usize, res_offs: &[usize; PIXEL_TILE], out: &mut [u8]) -> Option<Fused> {
    let Epilogue::F64 { m, c, r, qmax } = &job.epi else { return None };
    let d = &job.d;
    let width = match d.c_out - c0 {
        w if w >= BLOCK => BLOCK,
        8 => 8,
        _ => return None,
    };
    let with_res = match job.residual {
        Some(_) if d.c_res >= c0 + width => true,
        Some(_) if d.c_res > c0 => return None,
        _ => false,
    };
    let mut f = Fused {
        m: m[c0..].as_ptr(),
        c: c[c0..].as_ptr(),
        r: *r,
        qmax: *qmax,
        halves: width / 8,
        out: [std::ptr::null_mut(); PIXEL_TILE],
        res: [std::ptr::null(); PIXEL_TILE],
    };
    for i in 0..np {
        f.out[i] = out[(first + i) * d.c_out + c0..][..width].as_mut_ptr();
        if let (true, Some(res)) = (with_res, job.residual) {
            f.res[i] = res.input.data[res_offs[i] + c0..][..width].as_ptr();
        }
    }
    Some(f)
}

/// Hands the finished accumulators (pixel `i`, channels `8v..8v+8` in `acc[i][v]`) to `sink`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn finish<const P: usize>(acc: [[__m256i; 2]; P], sink: &Sink) {
    // Copy out with constant indices first (a loop LLVM unrolls): indexing `acc` inside the
    // big, not unrolled requantisation loop would make LLVM keep the accumulators in memory
    // and store them on every reduction step.
    let mut tile = [_mm256_setzero_si256(); 2 * PIXEL_TILE];
    for i in 0..P {
        tile[2 * i] = acc[i][0];
        tile[2 * i + 1] = acc[i][1];
    }
    match &sink.fused {
        None => {
            for j in 0..2 * P {
                _mm256_storeu_si256(sink.acc.add(j * 8).cast(), tile[j]);
            }
        }
        Some(f) => {
            for i in 0..P {
                for v in 0..f.halves {
                    let q = (!f.res[i].is_null()).then(|| f.res[i].add(v * 8).cast::<u64>().read_unaligned());
                    let codes = requant8_f64(tile[2 * i + v], f.m.add(v * 8), f.c.add(v * 8), q, f.r, f.qmax);
                    f.out[i].add(v * 8).cast::<u64>().write_unaligned(codes);
                }
            }
        }
    }
}

/// `P` pixels × 16 channels of a 2-bit layer.
#[allow(clippy::too_many_arguments)]
#[inline(never)] // own register allocation: P = 5 keeps all 10 int16 accumulators in registers
#[target_feature(enable = "avx2")]
unsafe fn micro_w2<const P: usize>(
    inp: *const u8,
    offs: &[usize; PIXEL_TILE],
    row_stride: usize,
    k: usize,
    steps: usize,
    mut w: *const i8,
    flush: usize,
    sink: &Sink,
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
            acc32[i][v] = _mm256_add_epi32(acc32[i][v], _mm256_madd_epi16(acc16[i][v], ones));
        }
    }
    finish::<P>(acc32, sink);
}

/// `P` pixels × 16 channels of an 8-bit layer (i16 inputs and weights, `vpmaddwd`).
#[allow(clippy::too_many_arguments)]
#[inline(never)]
#[target_feature(enable = "avx2")]
unsafe fn micro_w8<const P: usize>(
    inp: *const i16,
    offs: &[usize; PIXEL_TILE],
    row_stride: usize,
    k: usize,
    steps: usize,
    mut w: *const i16,
    sink: &Sink,
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
    finish::<P>(acc, sink);
}

/// Requantises 8 channels in f64 (see [`Epilogue::F64`]); `q` are the 8 shortcut codes, if any.
/// Returns the 8 output codes as little-endian bytes.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn requant8_f64(a: __m256i, m: *const f64, c: *const f64, q: Option<u64>, r: f64, qmax: f64) -> u64 {
    let mut lo = _mm256_add_pd(_mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(a)), _mm256_loadu_pd(m)), _mm256_loadu_pd(c));
    let mut hi = _mm256_add_pd(
        _mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256(a, 1)), _mm256_loadu_pd(m.add(4))),
        _mm256_loadu_pd(c.add(4)),
    );
    if let Some(q) = q {
        let qv = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(q as i64));
        let rv = _mm256_set1_pd(r);
        lo = _mm256_add_pd(lo, _mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(qv)), rv));
        hi = _mm256_add_pd(hi, _mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256(qv, 1)), rv));
    }
    // Clamp, then truncate (== floor for values ≥ 0).
    let (zero, qmax) = (_mm256_setzero_pd(), _mm256_set1_pd(qmax));
    let lo = _mm256_cvttpd_epi32(_mm256_min_pd(_mm256_max_pd(lo, zero), qmax));
    let hi = _mm256_cvttpd_epi32(_mm256_min_pd(_mm256_max_pd(hi, zero), qmax));
    _mm_cvtsi128_si64(_mm_packus_epi16(_mm_packs_epi32(lo, hi), _mm_setzero_si128())) as u64
}

/// Reads the shortcut codes `q[c..c + 8]` as 8 bytes, zero past the end of `q` (option A
/// zero-pads the shortcut's channels).
#[inline]
fn shortcut8(q: &[u8], c: usize) -> u64 {
    if c + 8 <= q.len() {
        u64::from_le_bytes(q[c..c + 8].try_into().expect("8 bytes"))
    } else {
        let mut t = [0u8; 8];
        if c < q.len() {
            t[..q.len() - c].copy_from_slice(&q[c..]);
        }
        u64::from_le_bytes(t)
    }
}

/// Writes the first `out.len() − c` (at most 8) of the codes in `b8`'s low 8 bytes.
#[inline]
fn store8(out: &mut [u8], c: usize, codes: u64) {
    let n = (out.len() - c).min(8);
    out[c..c + n].copy_from_slice(&codes.to_le_bytes()[..n]);
}

/// Requantises up to 16 channels of one pixel in f64 (general path of [`Epilogue::F64`]): `acc`
/// holds the block's 16 accumulators, `m`/`c` the block's tables, `res` the shortcut codes of
/// these channels; `out` receives `out.len() ≤ 16` codes.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn epilogue_f64(
    acc: *const i32,
    m: *const f64,
    c: *const f64,
    res: Option<(&[u8], i32)>,
    r: f64,
    qmax: f64,
    out: &mut [u8],
) {
    for h in (0..out.len()).step_by(8) {
        let a = _mm256_loadu_si256(acc.add(h).cast());
        let q = res.map(|(q, _)| shortcut8(q, h));
        store8(out, h, requant8_f64(a, m.add(h), c.add(h), q, r, qmax));
    }
}

/// The int64 form of [`epilogue_f64`] (see [`Epilogue::I64`]).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn epilogue_i64(
    acc: *const i32,
    m: *const i32,
    bias: *const i64,
    res: Option<(&[u8], i32)>,
    rq: &Requant,
    out: &mut [u8],
) {
    let consts = (_mm256_set1_epi64x(rq.qmax as i64), _mm_cvtsi32_si128(rq.shift as i32));
    for c in (0..out.len()).step_by(8) {
        let a = _mm256_loadu_si256(acc.add(c).cast());
        let mm = _mm256_loadu_si256(m.add(c).cast());
        let mut even = _mm256_add_epi64(_mm256_mul_epi32(a, mm), _mm256_loadu_si256(bias.add(c).cast()));
        let prod_odd = _mm256_mul_epi32(_mm256_srli_epi64(a, 32), _mm256_srli_epi64(mm, 32));
        let mut odd = _mm256_add_epi64(prod_odd, _mm256_loadu_si256(bias.add(c + 4).cast()));
        if let Some((q, r)) = res {
            let qv = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(shortcut8(q, c) as i64));
            let rv = _mm256_set1_epi32(r);
            even = _mm256_add_epi64(even, _mm256_mul_epi32(qv, rv));
            odd = _mm256_add_epi64(odd, _mm256_mul_epi32(_mm256_srli_epi64(qv, 32), rv));
        }
        // Codes (≤ 255) back into int32 lane order 0..8, then to bytes.
        let lanes = _mm256_or_si256(clamp64(even, consts), _mm256_slli_epi64(clamp64(odd, consts), 32));
        let w16 = _mm256_packus_epi32(lanes, lanes);
        let b8 = _mm256_packus_epi16(w16, w16);
        let lo = _mm_cvtsi128_si32(_mm256_castsi256_si128(b8)) as u32 as u64;
        let hi = _mm_cvtsi128_si32(_mm256_extracti128_si256(b8, 1)) as u32 as u64;
        store8(out, c, lo | hi << 32);
    }
}

/// `clamp(v >> shift, 0, qmax)` on four int64 lanes with an arithmetic shift. AVX2 has no
/// 64-bit arithmetic shift, but since negatives clamp to 0 anyway, "negative → 0, else logical
/// shift" is the same function.
#[inline]
#[target_feature(enable = "avx2")]
fn clamp64(v: __m256i, (qmax, shift): (__m256i, __m128i)) -> __m256i {
    let neg = _mm256_cmpgt_epi64(_mm256_setzero_si256(), v);
    let s = _mm256_srl_epi64(v, shift);
    let big = _mm256_cmpgt_epi64(s, qmax);
    _mm256_andnot_si256(neg, _mm256_blendv_epi8(s, qmax, big))
}

#[cfg(test)]
mod tests {
    #[test]
    fn pow2_neg_is_exact() {
        for s in 0..=super::super::super::MAX_SHIFT {
            assert_eq!(super::pow2_neg(s), 1.0 / (1u64 << s) as f64);
        }
    }
}

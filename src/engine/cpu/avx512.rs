//! x86-64 AVX-512 VNNI conv kernels (implicit GEMM, no im2col buffer).
//!
//! The same walk as [`super::avx2`] (zero-bordered NHWC input copy, so each kernel row of an
//! output pixel's window is one contiguous run of `k·c_in` codes, taken 4 codes at a time), with
//! `vpdpbusd` (u8 activation × i8 weight, 4 products summed straight into an int32 lane, no
//! saturation) doing 16 output channels × 4 codes = 64 MACs per instruction:
//! - Weights are expanded once to signed i8 codes (`2u − 3` for 2-bit layers, the code itself for
//!   8-bit layers) and laid out `[group][ky][step][V vectors][16 channels][4 codes]`, so one
//!   64-byte load per vector per step. Channels past `c_conv` and codes past `k·c_in` are 0.
//! - A micro-kernel computes `P` output pixels × `V` vectors of 16 channels with `P·V` zmm
//!   accumulators: per step it loads `V` weight vectors, broadcasts each pixel's 4 activation
//!   bytes once and issues `V` `vpdpbusd`. `(V, P)` = (1, 12), (2, 8), (4, 6) keeps ≥ 12
//!   independent accumulators in flight (latency 4–5 × 2 ports) and everything in the 32 zmm
//!   registers. Output channels are grouped by the largest `V` dividing the vector count.
//! - int32 accumulation is exact for any input (u8 × i8, no int16 stage), so 8-bit layers use the
//!   same micro-kernel as 2-bit ones and nothing needs flushing.
//! - Epilogue: the accumulators go through a small tile in L1, then each 16-channel vector is
//!   requantised for all pixels of the tile with the vector's constants in registers, and stored
//!   with a byte mask, so partial blocks (8 or 12 channels, shortcuts narrower than the output)
//!   need no separate path. Three exact forms, chosen per call ([`Mode`]):
//!   - no shortcut and `qmax ≤ 7` (every 2-bit layer without a residual): the code is the number
//!     of per-channel thresholds `±acc` reaches (`vpcmpd` + masked add per level), the
//!     thresholds solved exactly in i128 at prepare time ([`threshold`]);
//!   - otherwise f64 with `vfmadd`, exact while every intermediate is an integer below 2^53
//!     times `2^−shift` (the AVX2 path's bound, checked per call);
//!   - outside that bound, the scalar [`reference::requantize`] per code.
//!
//! SAFETY (every `unsafe` here): (1) a [`ConvKernel`] is only constructed after [`available`]
//! has seen `avx512f`, `avx512bw`, `avx512vl` and `avx512vnni`, so the `#[target_feature]`
//! functions only run on CPUs with them; (2) input reads stay inside the padded buffer built in
//! [`ConvKernel::job`] for its pixels' rows (`SLACK` spare zeros cover the ≤ 3-code over-read at the end of a row
//! run); weight reads stay inside the layout built in [`ConvKernel::new`]; the tile has room
//! for `PIXEL_TILE × 64` accumulators; (3) epilogue stores and shortcut loads are masked to the
//! channels that exist, from pointers into slices that hold them, and each worker writes only
//! its own output slice.

#![allow(clippy::needless_range_loop)] // explicit lane/pixel indices read clearer in micro-kernels

use super::super::{Conv2d, ConvDims, QTensor, Residual};
use super::reference;
use std::arch::x86_64::*;
use std::ops::Range;

/// Most output pixels per micro-kernel call (with one 16-channel vector).
pub(crate) const PIXEL_TILE: usize = 12;
/// int32 lanes per zmm: output channels per vector.
const LANES: usize = 16;
/// Spare zero bytes after the padded input (a step may read 3 codes past a row run).
const SLACK: usize = 64;

pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

/// Pixels per micro-kernel call for `v` vectors (see the module docs).
fn tile_pixels(v: usize) -> usize {
    match v {
        1 => 12,
        2 => 8,
        _ => 6,
    }
}

/// One 64-byte weight vector, aligned so that no load of it splits a cache line.
#[derive(Clone, Debug)]
#[repr(C, align(64))]
struct Line([i8; 64]);

/// A conv layer laid out for the VNNI micro-kernels.
#[derive(Clone, Debug)]
pub(crate) struct ConvKernel {
    conv: Conv2d,
    /// 4-code steps per kernel row: `⌈k·c_in / 4⌉`.
    steps: usize,
    /// 16-channel vectors per micro-kernel call (1, 2 or 4).
    v: usize,
    /// Groups of `v` vectors covering `c_conv`.
    groups: usize,
    /// `[group][ky][step][v][16][4]` signed codes.
    weights: Vec<Line>,
    /// Largest |weight code| (sizes the epilogue's exactness bound).
    wmax: u32,
    tables: Tables,
}

impl ConvKernel {
    /// `None` when the CPU lacks AVX-512 VNNI. `conv` must be validated.
    pub(crate) fn new(conv: &Conv2d) -> Option<Self> {
        if !available() {
            return None;
        }
        let (k, c_in, c_conv) = (conv.k, conv.c_in, conv.c_conv());
        let seg = k * c_in;
        let steps = seg.div_ceil(4);
        let nv = c_conv.div_ceil(LANES);
        let v = [4, 2, 1].into_iter().find(|v| nv.is_multiple_of(*v)).unwrap_or(1);
        let codes = conv.weights.codes_i32();
        // Code of channel `o` at (ky, position `e` inside the row run), 0 outside the layer.
        let code = |o: usize, ky: usize, e: usize| -> i8 {
            if o < c_conv && e < seg {
                codes[o * conv.k_len() + ky * seg + e] as i8
            } else {
                0
            }
        };
        let mut weights = Vec::with_capacity(nv * k * steps * LANES * 4);
        for g in 0..nv / v {
            for ky in 0..k {
                for s in 0..steps {
                    for j in 0..v * LANES {
                        for t in 0..4 {
                            weights.push(code(g * v * LANES + j, ky, s * 4 + t));
                        }
                    }
                }
            }
        }
        let weights = weights.chunks_exact(64).map(|c| Line(std::array::from_fn(|i| c[i]))).collect();
        let wmax = codes.iter().map(|w| w.unsigned_abs()).max().unwrap_or(0);
        let tables = Tables::new(conv, nv * LANES);
        Some(ConvKernel { conv: conv.clone(), steps, v, groups: nv / v, weights, wmax, tables })
    }

    /// Pixels per micro-kernel call (the alignment of thread ranges).
    pub(crate) fn pixel_tile(&self) -> usize {
        tile_pixels(self.v)
    }

    /// Builds the state of one range of output pixels: the zero-bordered copy of the input
    /// rows the range reads (halo included; each part of a split copies its own rows inside its
    /// task, so nothing runs serially before the split) and the requantisation mode.
    pub(crate) fn job<'a>(&'a self, d: &ConvDims, x: &QTensor, residual: Option<&'a Residual<'a>>, pixels: Range<usize>) -> Job<'a> {
        let c = &self.conv;
        let wp = x.w + 2 * c.pad;
        let row_stride = wp * c.c_in;
        let rows = super::padded_rows(c, d.wo, &pixels);
        let mut input = vec![0u8; rows.len() * row_stride + SLACK];
        // The input rows among them.
        for y in rows.start.saturating_sub(c.pad)..rows.end.saturating_sub(c.pad).min(x.h) {
            let dst = ((y + c.pad - rows.start) * wp + c.pad) * c.c_in;
            input[dst..dst + x.w * x.c].copy_from_slice(&x.data[y * x.w * x.c..(y + 1) * x.w * x.c]);
        }
        Job { ker: self, input, row_stride, row0: rows.start, pixels, d: *d, mode: self.mode(x, residual), residual }
    }

    fn mode(&self, x: &QTensor, residual: Option<&Residual>) -> Mode {
        let rq = &self.conv.requant;
        if residual.is_none() && !self.tables.thresholds.is_empty() {
            return Mode::Steps;
        }
        // Largest |intermediate| of the int64 sum, as u128 so the bound itself cannot overflow;
        // first with any input code (no scan), then with the input's largest one.
        let m_max = rq.m.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0) as u128;
        let b_max = rq.b.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0) as u128 + rq.rounding() as u128;
        let r_term = residual.map_or(0, |r| 255 * r.r.unsigned_abs() as u128);
        let fits = |amax: u8| (self.conv.k_len() as u128 * amax as u128 * self.wmax as u128) * m_max + b_max + r_term < 1u128 << 53;
        if !fits(u8::MAX) && !fits(x.max_code()) {
            return Mode::Reference;
        }
        Mode::F64(residual.map_or(0.0, |r| r.r as f64 * f64::from_bits((1023 - rq.shift as u64) << 52)))
    }
}

/// How a call requantises (chosen per call: the shortcut and the input's largest code matter).
enum Mode {
    /// No shortcut and `qmax ≤ MAX_LEVELS`: the code is the number of thresholds reached.
    Steps,
    /// f64 with `vfmadd`: every intermediate is an integer below 2^53 times `2^−shift`; the
    /// shortcut scale `r·2^−shift`.
    F64(f64),
    /// Outside that bound: the int64 reference per code.
    Reference,
}

/// Most output levels the threshold epilogue handles (2-bit and 3-bit outputs).
const MAX_LEVELS: usize = 7;

/// Per-channel requantisation tables for the `groups·v·16` channels the micro-kernels produce
/// (`m = b = 0` past `c_conv`, as the contract says for channels the conv lacks).
#[derive(Clone, Debug)]
struct Tables {
    /// `m·2^−shift` and `(b + 2^(shift−1))·2^−shift`.
    m: Vec<f64>,
    c: Vec<f64>,
    /// `[vector][level − 1][16]`: with `a = ±acc` (− where `m < 0`, bit set in `neg`), the code
    /// is `#{t : a ≥ thresholds[t]}`; empty when `qmax > MAX_LEVELS`.
    thresholds: Vec<i32>,
    neg: Vec<u16>,
}

impl Tables {
    fn new(conv: &Conv2d, width: usize) -> Self {
        let rq = &conv.requant;
        let m = |ch: usize| rq.m.get(ch).copied().unwrap_or(0);
        let b = |ch: usize| rq.b.get(ch).copied().unwrap_or(0) as i64 + rq.rounding();
        let scale = f64::from_bits((1023 - rq.shift as u64) << 52); // 2^−shift, exact
        let (mut thresholds, mut neg) = (Vec::new(), vec![0u16; width / LANES]);
        if (rq.qmax as usize) <= MAX_LEVELS {
            for v in 0..width / LANES {
                for t in 1..=rq.qmax as i128 {
                    thresholds.extend((v * LANES..(v + 1) * LANES).map(|ch| threshold(m(ch), b(ch), t, rq.shift)));
                }
                neg[v] = (0..LANES).filter(|&l| m(v * LANES + l) < 0).fold(0, |k, l| k | 1 << l);
            }
        }
        Tables {
            m: (0..width).map(|ch| m(ch) as f64 * scale).collect(),
            c: (0..width).map(|ch| b(ch) as f64 * scale).collect(),
            thresholds,
            neg,
        }
    }
}

/// The least `a` (`a = acc` for `m ≥ 0`, `−acc` for `m < 0`) with `(acc·m + bias) >> shift ≥ t`,
/// i.e. `a·|m| ≥ t·2^shift − bias`, clamped to the int32 range (`|acc| < 2^31 − 1`, so
/// `i32::MAX` is never reached and `i32::MIN` always is).
fn threshold(m: i32, bias: i64, t: i128, shift: u32) -> i32 {
    let need = (t << shift) - bias as i128;
    let am = m.unsigned_abs() as i128;
    let least = if am == 0 {
        if need <= 0 {
            i128::MIN
        } else {
            i128::MAX
        }
    } else {
        need.div_euclid(am) + i128::from(need.rem_euclid(am) != 0)
    };
    least.clamp(i32::MIN as i128, i32::MAX as i128) as i32
}

/// One conv call, shared read-only by the worker threads.
pub(crate) struct Job<'a> {
    ker: &'a ConvKernel,
    /// Padded input rows `row0..` (those the job's pixels read).
    input: Vec<u8>,
    /// Bytes per padded input row.
    row_stride: usize,
    row0: usize,
    /// The output pixels this job was built for.
    pixels: Range<usize>,
    d: ConvDims,
    mode: Mode,
    residual: Option<&'a Residual<'a>>,
}

impl Job<'_> {
    /// Computes output pixels `px` into `out` (`px.len() · c_out` codes).
    pub(crate) fn run(&self, px: Range<usize>, out: &mut [u8]) {
        assert_eq!(out.len(), px.len() * self.d.c_out, "output slice does not match the pixel range");
        assert!(self.pixels.start <= px.start && px.end <= self.pixels.end, "pixels outside the job's input rows");
        // SAFETY: `self.ker` exists only on AVX-512 VNNI machines (ConvKernel::new), and `out`
        // has been checked to hold the range's codes; the remaining bounds are in the module docs.
        unsafe { run_avx512(self, px, out) }
    }
}

/// Arguments of one micro-kernel call.
struct Micro {
    inp: *const u8,
    /// Each pixel's window origin in the padded input.
    offs: [usize; PIXEL_TILE],
    row_stride: usize,
    k: usize,
    steps: usize,
    /// The group's first weight.
    w: *const i8,
    /// `[P][V·16]` int32 results.
    tile: *mut i32,
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn run_avx512(job: &Job, px: Range<usize>, out: &mut [u8]) {
    let (ker, d) = (job.ker, &job.d);
    let c = &ker.conv;
    let p_max = ker.pixel_tile();
    let group_len = c.k * ker.steps * ker.v * LANES * 4;
    let mut tile = [0i32; PIXEL_TILE * 4 * LANES];
    let mut a = Micro {
        inp: job.input.as_ptr(),
        offs: [0; PIXEL_TILE],
        row_stride: job.row_stride,
        k: c.k,
        steps: ker.steps,
        w: ker.weights.as_ptr().cast(),
        tile: tile.as_mut_ptr(),
    };
    let mut res_offs = [0usize; PIXEL_TILE];
    let (mut n, (mut y, mut x)) = (px.start, (px.start / d.wo, px.start % d.wo));
    while n < px.end {
        let np = (px.end - n).min(p_max);
        for i in 0..np {
            a.offs[i] = (y * c.stride - job.row0) * job.row_stride + x * c.stride * c.c_in;
            if let Some(r) = job.residual {
                res_offs[i] = (y * r.stride * r.input.w + x * r.stride) * r.input.c;
            }
            x += 1;
            if x == d.wo {
                (y, x) = (y + 1, 0);
            }
        }
        let base = &mut out[(n - px.start) * d.c_out..(n - px.start + np) * d.c_out];
        for g in 0..ker.groups {
            a.w = ker.weights.as_ptr().cast::<i8>().add(g * group_len);
            match ker.v {
                1 => micro_n::<1>(np, &a),
                2 => micro_n::<2>(np, &a),
                _ => micro_n::<4>(np, &a),
            }
            for j in 0..ker.v {
                let c0 = (g * ker.v + j) * LANES;
                let blk = Block { tile: tile.as_ptr().add(j * LANES), stride: ker.v * LANES, np, c0, n: (d.c_out - c0).min(LANES) };
                match job.mode {
                    Mode::Steps => block_steps(job, &blk, base),
                    Mode::F64(r) => block_f64(job, &blk, r, &res_offs, base),
                    Mode::Reference => block_reference(job, &blk, &res_offs, base),
                }
            }
        }
        shortcut_only(job, &res_offs[..np], base);
        n += np;
    }
}

/// Channels only the (wider) shortcut has: `acc = m = b = 0`.
fn shortcut_only(job: &Job, res_offs: &[usize], out: &mut [u8]) {
    let (d, first) = (&job.d, job.ker.groups * job.ker.v * LANES);
    let Some(r) = job.residual.filter(|_| d.c_out > first) else { return };
    for (i, &ro) in res_offs.iter().enumerate() {
        for ch in first..d.c_out {
            out[i * d.c_out + ch] = reference::requantize(0, 0, 0, r.input.data[ro + ch], r.r, &job.ker.conv.requant);
        }
    }
}

/// One 16-channel vector of a micro-kernel's results, for the `np` pixels of a tile.
struct Block {
    /// Pixel 0's 16 accumulators; pixel `i`'s are `stride` further on per pixel.
    tile: *const i32,
    stride: usize,
    np: usize,
    /// First channel, and how many of the 16 are output channels.
    c0: usize,
    n: usize,
}

/// [`Mode::Steps`]: counts the thresholds each accumulator reaches.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn block_steps(job: &Job, b: &Block, out: &mut [u8]) {
    match job.ker.conv.requant.qmax {
        1 => steps::<1>(job, b, out),
        3 => steps::<3>(job, b, out),
        7 => steps::<7>(job, b, out),
        q => steps_n(job, b, q as usize, out),
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn steps<const L: usize>(job: &Job, b: &Block, out: &mut [u8]) {
    steps_n(job, b, L, out)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn steps_n(job: &Job, b: &Block, levels: usize, out: &mut [u8]) {
    let (t, v) = (&job.ker.tables, b.c0 / LANES);
    let thr = &t.thresholds[v * levels * LANES..(v + 1) * levels * LANES];
    let (one, zero, mask) = (_mm512_set1_epi32(1), _mm512_setzero_si512(), mask16(b.n));
    for i in 0..b.np {
        let acc = _mm512_loadu_si512(b.tile.add(i * b.stride).cast());
        let a = _mm512_mask_sub_epi32(acc, t.neg[v], zero, acc);
        let mut q = zero;
        for l in 0..levels {
            let k = _mm512_cmpge_epi32_mask(a, _mm512_loadu_si512(thr[l * LANES..][..LANES].as_ptr().cast()));
            q = _mm512_mask_add_epi32(q, k, q, one);
        }
        let dst = out[i * job.d.c_out + b.c0..][..b.n].as_mut_ptr();
        _mm_mask_storeu_epi8(dst.cast(), mask, _mm512_cvtepi32_epi8(q));
    }
}

/// [`Mode::F64`]: `clamp(acc·m' + c' + q_sc·r', 0, qmax)` truncated, 8 channels per zmm.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn block_f64(job: &Job, b: &Block, r: f64, res_offs: &[usize; PIXEL_TILE], out: &mut [u8]) {
    let t = &job.ker.tables;
    let (m, c) = (&t.m[b.c0..b.c0 + LANES], &t.c[b.c0..b.c0 + LANES]);
    let (m_lo, m_hi) = (_mm512_loadu_pd(m.as_ptr()), _mm512_loadu_pd(m[8..].as_ptr()));
    let (c_lo, c_hi) = (_mm512_loadu_pd(c.as_ptr()), _mm512_loadu_pd(c[8..].as_ptr()));
    let (zero, top, rv) = (_mm512_setzero_pd(), _mm512_set1_pd(job.ker.conv.requant.qmax as f64), _mm512_set1_pd(r));
    let res = job.residual.filter(|_| job.d.c_res > b.c0).map(|s| (s, (job.d.c_res - b.c0).min(LANES)));
    for i in 0..b.np {
        let a = _mm512_loadu_si512(b.tile.add(i * b.stride).cast());
        let mut lo = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(a)), m_lo, c_lo);
        let mut hi = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64::<1>(a)), m_hi, c_hi);
        if let Some((s, nr)) = res {
            let src = s.input.data[res_offs[i] + b.c0..][..nr].as_ptr();
            let q = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask16(nr), src.cast()));
            lo = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(q)), rv, lo);
            hi = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64::<1>(q)), rv, hi);
        }
        // Clamp, then truncate (== floor for values ≥ 0).
        let lo = _mm512_cvttpd_epi32(_mm512_min_pd(_mm512_max_pd(lo, zero), top));
        let hi = _mm512_cvttpd_epi32(_mm512_min_pd(_mm512_max_pd(hi, zero), top));
        let codes = _mm512_cvtepi32_epi8(_mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi));
        let dst = out[i * job.d.c_out + b.c0..][..b.n].as_mut_ptr();
        _mm_mask_storeu_epi8(dst.cast(), mask16(b.n), codes);
    }
}

/// [`Mode::Reference`]: the scalar int64 requantisation per code.
unsafe fn block_reference(job: &Job, b: &Block, res_offs: &[usize; PIXEL_TILE], out: &mut [u8]) {
    let (rq, d) = (&job.ker.conv.requant, &job.d);
    for i in 0..b.np {
        for ch in b.c0..b.c0 + b.n {
            let acc = *b.tile.add(i * b.stride + ch - b.c0);
            let (q, r) = job.residual.filter(|_| ch < d.c_res).map_or((0, 0), |s| (s.input.data[res_offs[i] + ch], s.r));
            let (m, bias) = (rq.m.get(ch).copied().unwrap_or(0), rq.b.get(ch).copied().unwrap_or(0));
            out[i * d.c_out + ch] = reference::requantize(acc, m, bias, q, r, rq);
        }
    }
}

/// The low `n` (≤ 16) bits set.
#[inline]
fn mask16(n: usize) -> u16 {
    ((1u32 << n) - 1) as u16
}

/// Dispatches a micro-kernel for `np` (1..=tile) pixels.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn micro_n<const V: usize>(np: usize, a: &Micro) {
    match np {
        1 => micro::<V, 1>(a),
        2 => micro::<V, 2>(a),
        3 => micro::<V, 3>(a),
        4 => micro::<V, 4>(a),
        5 => micro::<V, 5>(a),
        6 => micro::<V, 6>(a),
        7 if V < 4 => micro::<V, 7>(a),
        8 if V < 4 => micro::<V, 8>(a),
        9 if V < 2 => micro::<V, 9>(a),
        10 if V < 2 => micro::<V, 10>(a),
        11 if V < 2 => micro::<V, 11>(a),
        12 if V < 2 => micro::<V, 12>(a),
        _ => unreachable!("pixel tile {np} exceeds the limit for {V} vectors"),
    }
}

/// `P` pixels × `V` vectors of 16 channels into `a.tile`.
#[inline(never)] // own register allocation: all P·V accumulators stay in zmm registers
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn micro<const V: usize, const P: usize>(a: &Micro) {
    let mut acc = [[_mm512_setzero_si512(); V]; P];
    let mut w = a.w;
    for ky in 0..a.k {
        let row = a.inp.add(ky * a.row_stride);
        let mut e = 0;
        for _ in 0..a.steps {
            let mut wv = [_mm512_setzero_si512(); V];
            for j in 0..V {
                wv[j] = _mm512_loadu_si512(w.add(64 * j).cast());
            }
            w = w.add(64 * V);
            for i in 0..P {
                let x = _mm512_set1_epi32(row.add(a.offs[i] + e).cast::<i32>().read_unaligned());
                for j in 0..V {
                    acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], x, wv[j]);
                }
            }
            e += 4;
        }
    }
    for i in 0..P {
        for j in 0..V {
            _mm512_storeu_si512(a.tile.add((i * V + j) * LANES).cast(), acc[i][j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::threshold;

    /// `threshold` is the least `a` with `a·|m| + bias ≥ t·2^shift`: checked on both sides of it.
    #[test]
    fn threshold_is_the_least_passing_value() {
        let holds = |a: i128, m: i32, bias: i64, t: i128, shift: u32| a * m.unsigned_abs() as i128 + bias as i128 >= t << shift;
        for m in [1, -1, 3, -7, 1000, i32::MAX, i32::MIN, 0] {
            for bias in [0i64, 1, -1, 12345, -(1 << 40), 1 << 40, i32::MIN as i64, i32::MAX as i64 + (1 << 61)] {
                for (t, shift) in [(1i128, 0u32), (3, 8), (7, 30), (2, 62), (1, 1)] {
                    let a = threshold(m, bias, t, shift) as i128;
                    if a > i32::MIN as i128 {
                        assert!(!holds(a - 1, m, bias, t, shift), "m {m} bias {bias} t {t} shift {shift}: {} passes", a - 1);
                    }
                    if a < i32::MAX as i128 {
                        assert!(holds(a, m, bias, t, shift), "m {m} bias {bias} t {t} shift {shift}: {a} fails");
                    }
                }
            }
        }
    }
}

//! Portable conv kernels: plain, safe Rust written so that LLVM turns it into 128-bit SIMD on
//! any target that has it (SSE2, NEON, RVV), with no intrinsics and no `cfg`s. What a CPU
//! without the x86 paths (ARM and RISC-V boards) runs.
//!
//! **2-bit layers (input codes ≤ 3): three MACs per 16-bit multiply.** Three activation codes
//! sit in one `u16` at bits 0, 5 and 11, three weights `u ∈ {0..3}` at bits 11, 6 and 0 (the
//! reverse order). In the product mod 2^16 the three matching pairs all land at bit 11, the
//! three pairs that would land at 16, 17 and 22 drop out, and the other three land at bits 0, 5
//! and 6, summing to at most 9 + 9·32 + 9·64 = 873 < 2^11: so `(x·u mod 2^16) >> 11` is exactly
//! `x₀u₀ + x₁u₁ + x₂u₂ ≤ 27` ([`dot3`]). Eight lanes of that are one `pmullw`/`mul.8h`, one
//! shift and one add: 24 MACs. The signed weights are `c = 2u − 3`, so
//! `Σ c·x = 2·Σ u·x − 3·Σ x`; `Σ x` over each receptive field comes from per-pixel sums.
//!
//! Layout: once per call the input is packed into a zero-bordered grid whose pixels hold
//! `⌈c_in / 3⌉` triples (channels `t`, `T + t`, `2T + t`), each stored as eight equal lanes, so
//! that the micro-kernel reads an activation triple with one plain vector load; the weights are
//! packed once at prepare time in the micro-kernel's order `[block of 16 channels][ky][kx][t]`.
//! For one kernel row the `(kx, t)` run of a pixel is contiguous, as in the AVX2 path. The
//! micro-kernel keeps [`PIXELS`] pixels × 16 channels of `u16` sums in registers; a sum grows by
//! at most 27 per step, so it is widened to `u32` every [`STEPS_PER_FLUSH`] steps.
//!
//! **Other layers** (8-bit weights, the first conv on raw pixels, or 2-bit weights meeting codes
//! above 3) multiply i16 by i16 into i32 lanes, 16 channels at a time.
//!
//! **Epilogue**: the requantisation in f64 when every intermediate integer stays below 2^53
//! (then it is exact, see `avx2::Epilogue::F64` for the argument), in 16-lane arrays LLVM
//! vectorises; otherwise the reference's int64 [`requantize`].

use super::reference::requantize;
use crate::engine::{Conv2d, ConvDims, ConvWeights, QTensor, Residual};
use std::array;
use std::ops::Range;

/// Lanes of one vector (128 bits of `u16`).
const LANES: usize = 8;
/// Output channels per micro-kernel call: two vectors.
const BLOCK: usize = 2 * LANES;
/// Output pixels per micro-kernel call.
pub(super) const PIXELS: usize = 4;
/// Steps a `u16` sum can take at 27 per step before it must be widened.
const STEPS_PER_FLUSH: usize = u16::MAX as usize / 27;

/// One vector of `u16` lanes.
type V16 = [u16; LANES];

/// `(x·u mod 2^16) >> 11` for a packed activation triple `x` and weight triple `u`: the
/// three-term dot product (module docs).
#[inline(always)]
fn dot3(x: u16, u: u16) -> u16 {
    x.wrapping_mul(u) >> 11
}

/// Activation codes `(a, b, c)` as one triple.
#[inline(always)]
fn pack_x(a: u8, b: u8, c: u8) -> u16 {
    a as u16 | (b as u16) << 5 | (c as u16) << 11
}

/// Weights `(a, b, c)` (`u ∈ 0..=3`) as the triple that meets [`pack_x`]`(·, ·, ·)` of the
/// same channels.
#[inline(always)]
fn pack_u(a: u16, b: u16, c: u16) -> u16 {
    a << 11 | b << 6 | c
}

/// A conv's weights for this backend.
#[derive(Clone, Debug)]
pub struct ConvKernel {
    conv: Conv2d,
    /// 16-channel output blocks.
    nb: usize,
    weights: Packed,
    epilogue: Tables,
}

#[derive(Clone, Debug)]
enum Packed {
    /// 2-bit weights: `[block][ky][kx][t][2]` weight triples, plus the 16-bit form for calls
    /// whose input has codes above 3.
    W2 { triples: usize, packed: Vec<[V16; 2]>, wide: Vec<[[i16; LANES]; 2]> },
    /// 8-bit weights: `[block][ky][kx][c_in][2]`.
    W8 { wide: Vec<[[i16; LANES]; 2]> },
}

impl ConvKernel {
    /// Lays out a validated dense conv's weights.
    pub fn new(conv: &Conv2d) -> ConvKernel {
        let (k, c_in, c_conv, k_len) = (conv.k, conv.c_in, conv.c_conv(), conv.k_len());
        let nb = c_conv.div_ceil(BLOCK);
        let codes = conv.weights.codes_i32();
        // Code of channel `o` at tap `tap` (`ky·k + kx`), input channel `ci`; 0 outside.
        let code = |o: usize, tap: usize, ci: usize| if o < c_conv && ci < c_in { codes[o * k_len + tap * c_in + ci] } else { 0 };
        let taps = k * k;
        let wide: Vec<[[i16; LANES]; 2]> = (0..nb)
            .flat_map(|b| (0..taps).flat_map(move |tap| (0..c_in).map(move |ci| (b, tap, ci))))
            .map(|(b, tap, ci)| array::from_fn(|v| array::from_fn(|l| code(b * BLOCK + v * LANES + l, tap, ci) as i16)))
            .collect();
        let weights = match conv.weights {
            ConvWeights::W8(_) => Packed::W8 { wide },
            ConvWeights::W2(_) => {
                let t_n = c_in.div_ceil(3);
                // `u = (c + 3) / 2`; 0 for padding lanes and channels (they meet zero codes).
                let u = |o: usize, tap: usize, ci: usize| if o < c_conv && ci < c_in { ((code(o, tap, ci) + 3) / 2) as u16 } else { 0 };
                let packed = (0..nb)
                    .flat_map(|b| (0..taps).flat_map(move |tap| (0..t_n).map(move |t| (b, tap, t))))
                    .map(|(b, tap, t)| {
                        array::from_fn(|v| {
                            array::from_fn(|l| {
                                let o = b * BLOCK + v * LANES + l;
                                pack_u(u(o, tap, t), u(o, tap, t_n + t), u(o, tap, 2 * t_n + t))
                            })
                        })
                    })
                    .collect();
                Packed::W2 { triples: t_n, packed, wide }
            }
        };
        ConvKernel { conv: conv.clone(), nb, weights, epilogue: Tables::new(conv, nb * BLOCK) }
    }

    /// The state for output pixels `pixels` of a call (`d` are `x`'s checked dims): the packed
    /// input rows they read, so that each part of a split packs its own rows (halo included)
    /// in parallel, and the epilogue's form.
    pub(super) fn job<'a>(&'a self, d: &ConvDims, x: &QTensor, residual: Option<&'a Residual<'a>>, pixels: Range<usize>) -> Job<'a> {
        let c = &self.conv;
        let wp = x.w + 2 * c.pad;
        let rows = super::padded_rows(c, d.wo, &pixels);
        // The input rows among the padded rows `rows`.
        let (y0, y1) = (rows.start.saturating_sub(c.pad), rows.end.saturating_sub(c.pad).min(x.h));
        let amax = x.data[y0.min(y1) * x.w * x.c..y1 * x.w * x.c].iter().copied().max().unwrap_or(0);
        let input = match &self.weights {
            Packed::W2 { triples, .. } if amax <= 3 => pack_triples(x, c.pad, *triples, rows.clone()),
            _ => Input::Wide(pad_input(x, c.pad, rows.clone())),
        };
        let epi = Epilogue::new(&self.epilogue, c, amax, residual);
        Job { ker: self, input, wp, row0: rows.start, pixels, d: *d, epi, residual }
    }
}

/// The padded input of one call.
enum Input {
    /// `[hp·wp][triples]` activation triples, each in every lane, and `[hp·wp]` per-pixel code
    /// sums.
    Triples { x: Vec<V16>, sums: Vec<u32>, triples: usize },
    /// `[hp·wp][c_in]` codes.
    Wide(Vec<u8>),
}

/// Packs padded rows `rows` of `x` (codes ≤ 3) into zero-bordered triples: triple `t` of a
/// pixel holds channels `t`, `T + t` and `2T + t`; and each pixel's code sum.
fn pack_triples(x: &QTensor, pad: usize, t_n: usize, rows: Range<usize>) -> Input {
    let wp = x.w + 2 * pad;
    let mut out = vec![[0u16; LANES]; rows.len() * wp * t_n];
    let mut sums = vec![0u32; rows.len() * wp];
    for (y, row) in x.data.chunks_exact(x.w * x.c).enumerate() {
        let Some(r) = (y + pad).checked_sub(rows.start).filter(|_| y + pad < rows.end) else { continue };
        let at = r * wp + pad;
        let dst = out[at * t_n..(at + x.w) * t_n].chunks_exact_mut(t_n);
        for ((px, o), s) in row.chunks_exact(x.c).zip(dst).zip(&mut sums[at..at + x.w]) {
            pack_pixel(px, o);
            *s = px.iter().map(|&q| q as u32).sum();
        }
    }
    Input::Triples { x: out, sums, triples: t_n }
}

/// One pixel's codes as `out.len()` triples (channels `t`, `T + t`, `2T + t`; zero past the
/// last), each in every lane. Three branch-free runs: all three channels, the first two, the
/// first alone.
#[inline(always)]
fn pack_pixel(px: &[u8], out: &mut [V16]) {
    let t_n = out.len();
    let (a, rest) = px.split_at(t_n);
    let (b, c) = rest.split_at(t_n.min(rest.len()));
    let (three, two) = (c.len(), b.len());
    for (((o, &a), &b), &c) in out.iter_mut().zip(a).zip(b).zip(c) {
        *o = [pack_x(a, b, c); LANES];
    }
    for ((o, &a), &b) in out[three..two].iter_mut().zip(&a[three..two]).zip(&b[three..]) {
        *o = [pack_x(a, b, 0); LANES];
    }
    for (o, &a) in out[two..].iter_mut().zip(&a[two..]) {
        *o = [pack_x(a, 0, 0); LANES];
    }
}

/// Padded rows `rows` of `x` with a zero border of `pad` pixels.
fn pad_input(x: &QTensor, pad: usize, rows: Range<usize>) -> Vec<u8> {
    let wp = x.w + 2 * pad;
    let mut out = vec![0u8; rows.len() * wp * x.c];
    for (y, row) in x.data.chunks_exact(x.w * x.c).enumerate() {
        let Some(r) = (y + pad).checked_sub(rows.start).filter(|_| y + pad < rows.end) else { continue };
        let at = (r * wp + pad) * x.c;
        out[at..at + row.len()].copy_from_slice(row);
    }
    out
}

/// One conv call, shared read-only by the threads that split its pixels.
pub(crate) struct Job<'a> {
    ker: &'a ConvKernel,
    input: Input,
    /// Pixels per padded input row.
    wp: usize,
    /// The padded row `input` starts at.
    row0: usize,
    /// The output pixels whose rows `input` holds.
    pixels: Range<usize>,
    d: ConvDims,
    epi: Epilogue,
    residual: Option<&'a Residual<'a>>,
}

impl Job<'_> {
    /// Output pixels `px` into `out` (`px.len() · c_out` codes).
    pub(crate) fn run(&self, px: Range<usize>, out: &mut [u8]) {
        assert!(px.start >= self.pixels.start && px.end <= self.pixels.end, "pixels outside the job's rows");
        let d = &self.d;
        let mut n = px.start;
        // Output coordinates of pixel `n`, stepped along without divisions.
        let mut at = (n / d.wo, n % d.wo);
        while n < px.end {
            let np = (px.end - n).min(PIXELS);
            let mut yx = [at; PIXELS];
            for p in yx.iter_mut().take(np) {
                *p = at;
                at = if at.1 + 1 == d.wo { (at.0 + 1, 0) } else { (at.0, at.1 + 1) };
            }
            // A short tile computes its last pixel again in the unused slots.
            for i in np..PIXELS {
                yx[i] = yx[np - 1];
            }
            self.tile(&yx, np, &mut out[(n - px.start) * d.c_out..(n - px.start + np) * d.c_out]);
            n += np;
        }
    }

    /// The pixels at output coordinates `yx` into `out`, of which the first `np` are stored.
    fn tile(&self, yx: &[(usize, usize); PIXELS], np: usize, out: &mut [u8]) {
        let (c, d) = (&self.ker.conv, &self.d);
        // Each pixel's window origin in the padded grid, and its shortcut pixel. (Plain loops
        // here and below: `array::from_fn` and `map` closures were left out of line, copying
        // the tiles through the stack.)
        let (mut origin, mut res, mut sx3) = ([0usize; PIXELS], [0usize; PIXELS], [0i32; PIXELS]);
        for i in 0..PIXELS {
            let (y, x) = yx[i];
            origin[i] = (y * c.stride - self.row0) * self.wp + x * c.stride;
            if let Some(r) = self.residual {
                res[i] = (y * r.stride * r.input.w + x * r.stride) * r.input.c;
            }
            // `3·Σ x` over the window (2-bit path).
            if let Input::Triples { sums, .. } = &self.input {
                sx3[i] = 3 * window_sum(sums, origin[i], self.wp, c.k);
            }
        }
        let mut acc = [[0i32; BLOCK]; PIXELS];
        for blk in 0..self.ker.nb {
            match (&self.input, &self.ker.weights) {
                (Input::Triples { x, triples, .. }, Packed::W2 { packed, .. }) => {
                    let run = c.k * triples;
                    let w = &packed[blk * c.k * run..(blk + 1) * c.k * run];
                    let mut at = origin;
                    for a in at.iter_mut() {
                        *a *= triples;
                    }
                    dots_w2(x, &at, self.wp * triples, c.k, run, w, &sx3, &mut acc);
                }
                (Input::Wide(x), Packed::W2 { wide, .. } | Packed::W8 { wide }) => {
                    let run = c.k * c.c_in;
                    let w = &wide[blk * c.k * run..(blk + 1) * c.k * run];
                    let mut at = origin;
                    for a in at.iter_mut() {
                        *a *= c.c_in;
                    }
                    dots_wide(x, &at, self.wp * c.c_in, c.k, run, w, &mut acc);
                }
                _ => unreachable!("the input is packed for the weights' form"),
            }
            self.epilogue(blk * BLOCK, np, &acc, &res, out);
        }
        // Channels only the (wider) shortcut has: acc = m = b = 0.
        if let Some(r) = self.residual.filter(|_| d.c_out > self.ker.nb * BLOCK) {
            for i in 0..np {
                for ch in self.ker.nb * BLOCK..d.c_out {
                    out[i * d.c_out + ch] = requantize(0, 0, 0, r.input.data[res[i] + ch], r.r, &c.requant);
                }
            }
        }
    }

    /// Requantises block `c0`'s accumulators of the first `np` pixels into `out`
    /// (`np · c_out` codes).
    fn epilogue(&self, c0: usize, np: usize, acc: &[[i32; BLOCK]; PIXELS], res: &[usize; PIXELS], out: &mut [u8]) {
        let d = &self.d;
        let width = (d.c_out - c0).min(BLOCK);
        let rq = &self.ker.conv.requant;
        for i in 0..np {
            // The shortcut codes of these channels (0 past the shortcut's own).
            // (Fixed-size copies where whole: a variable-length one is a `memcpy` call.)
            let mut q = [0u8; BLOCK];
            if let Some(r) = self.residual.filter(|_| d.c_res > c0) {
                match d.c_res - c0 {
                    BLOCK.. => q = r.input.data[res[i] + c0..][..BLOCK].try_into().expect("16 codes"),
                    have => q[..have].copy_from_slice(&r.input.data[res[i] + c0..][..have]),
                }
            }
            let dst = &mut out[i * d.c_out + c0..][..width];
            let store = |dst: &mut [u8], codes: [u8; BLOCK]| match <&mut [u8; BLOCK]>::try_from(&mut *dst) {
                Ok(whole) => *whole = codes,
                Err(_) => dst.copy_from_slice(&codes[..dst.len()]),
            };
            match &self.epi {
                Epilogue::Ladder => {
                    let ladder = self.ker.epilogue.ladder.as_ref().expect("chosen only with a ladder");
                    store(dst, ladder.codes16(c0, &acc[i]));
                }
                Epilogue::F64 { r, qmax } => {
                    let t = &self.ker.epilogue;
                    let m: &[f64; BLOCK] = t.m[c0..c0 + BLOCK].try_into().expect("16 channels");
                    let b: &[f64; BLOCK] = t.c[c0..c0 + BLOCK].try_into().expect("16 channels");
                    let codes = match self.residual {
                        Some(_) => requant16::<true>(&acc[i], m, b, &q, *r, *qmax),
                        None => requant16::<false>(&acc[i], m, b, &q, *r, *qmax),
                    };
                    store(dst, codes);
                }
                Epilogue::I64 => {
                    for (ch, o) in dst.iter_mut().enumerate() {
                        let (m, b) = (rq.m.get(c0 + ch).copied().unwrap_or(0), rq.b.get(c0 + ch).copied().unwrap_or(0));
                        let r = self.residual.map_or(0, |r| r.r);
                        *o = requantize(acc[i][ch], m, b, q[ch], r, rq);
                    }
                }
            }
        }
    }
}

/// `Σ x` over the `k × k` window at `origin` of the per-pixel sums.
fn window_sum(sums: &[u32], origin: usize, wp: usize, k: usize) -> i32 {
    let mut total = 0;
    for ky in 0..k {
        for &s in &sums[origin + ky * wp..][..k] {
            total += s;
        }
    }
    total as i32
}

/// `Σ c·x = 2·Σ u·x − 3·Σ x` of [`PIXELS`] pixels × 16 channels of a 2-bit layer: `x` the
/// packed triples (`origin` of each pixel's window and `row` per padded row, in triples), `w`
/// the block's `[k][run][2]` weight triples, `sx3` each pixel's `3·Σ x`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn dots_w2(
    x: &[V16],
    origin: &[usize; PIXELS],
    row: usize,
    k: usize,
    run: usize,
    w: &[[V16; 2]],
    sx3: &[i32; PIXELS],
    acc: &mut [[i32; BLOCK]; PIXELS],
) {
    let mut part = [[[0u16; LANES]; 2]; PIXELS];
    if k * run <= STEPS_PER_FLUSH {
        dots_w2_part(x, origin, row, run, 0..k, 0..run, w, &mut part);
        for i in 0..PIXELS {
            for v in 0..2 {
                for l in 0..LANES {
                    acc[i][v * LANES + l] = 2 * part[i][v][l] as i32 - sx3[i];
                }
            }
        }
        return;
    }
    // Long reductions: widen after every piece of at most STEPS_PER_FLUSH steps.
    let mut total = [[0u32; BLOCK]; PIXELS];
    let mut add = |rows: Range<usize>, steps: Range<usize>| {
        part = [[[0u16; LANES]; 2]; PIXELS];
        dots_w2_part(x, origin, row, run, rows, steps, w, &mut part);
        for i in 0..PIXELS {
            for ch in 0..BLOCK {
                total[i][ch] += part[i][ch / LANES][ch % LANES] as u32;
            }
        }
    };
    if run <= STEPS_PER_FLUSH {
        let rows = STEPS_PER_FLUSH / run;
        for ky in (0..k).step_by(rows) {
            add(ky..(ky + rows).min(k), 0..run);
        }
    } else {
        for ky in 0..k {
            for s in (0..run).step_by(STEPS_PER_FLUSH) {
                add(ky..ky + 1, s..(s + STEPS_PER_FLUSH).min(run));
            }
        }
    }
    for i in 0..PIXELS {
        for ch in 0..BLOCK {
            acc[i][ch] = 2 * total[i][ch] as i32 - sx3[i];
        }
    }
}

/// The micro-kernel: adds to `acc` the `u16` sums of four pixels × 16 channels over kernel
/// rows `rows`, steps `steps` of each (at most STEPS_PER_FLUSH in all): `x` the packed triples
/// (`origin` of each pixel's window and `row` per padded row, in triples), `w` the block's
/// `[k][run][2]` weight triples. Its own function with named accumulators: inlined into bigger
/// code, or with the accumulators indexed by pixel, LLVM split the vectors or spilled them.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn dots_w2_part(
    x: &[V16],
    origin: &[usize; PIXELS],
    row: usize,
    run: usize,
    rows: Range<usize>,
    steps: Range<usize>,
    w: &[[V16; 2]],
    acc: &mut [[V16; 2]; PIXELS],
) {
    let n = steps.len();
    let [[mut a00, mut a01], [mut a10, mut a11], [mut a20, mut a21], [mut a30, mut a31]] = *acc;
    for ky in rows {
        let at = |i: usize| &x[origin[i] + ky * row + steps.start..][..n];
        let (x0, x1, x2, x3) = (at(0), at(1), at(2), at(3));
        let w = &w[ky * run + steps.start..][..n];
        let mut s = 0;
        while s < n {
            let [w0, w1] = &w[s];
            mac(&mut a00, &x0[s], w0);
            mac(&mut a01, &x0[s], w1);
            mac(&mut a10, &x1[s], w0);
            mac(&mut a11, &x1[s], w1);
            mac(&mut a20, &x2[s], w0);
            mac(&mut a21, &x2[s], w1);
            mac(&mut a30, &x3[s], w0);
            mac(&mut a31, &x3[s], w1);
            s += 1;
            // Never taken (a sum stays ≤ 27·STEPS_PER_FLUSH < u16::MAX), but an early exit
            // keeps LLVM's loop vectoriser off this loop (it would gather lanes across steps),
            // leaving the body to the SLP vectoriser: whole-vector multiplies.
            if a00[0] == u16::MAX {
                break;
            }
        }
    }
    *acc = [[a00, a01], [a10, a11], [a20, a21], [a30, a31]];
}

/// `a += (x·u mod 2^16) >> 11` lane by lane: eight [`dot3`]s.
#[inline(always)]
fn mac(a: &mut V16, x: &V16, u: &V16) {
    for l in 0..LANES {
        a[l] = a[l].wrapping_add(dot3(x[l], u[l]));
    }
}

/// `Σ c·x` of [`PIXELS`] pixels × 16 channels in i32 lanes: `x` the padded codes (`origin` and `row`
/// in codes), `w` the block's `[k][run][2]` i16 weights.
#[inline(always)]
fn dots_wide(
    x: &[u8],
    origin: &[usize; PIXELS],
    row: usize,
    k: usize,
    run: usize,
    w: &[[[i16; LANES]; 2]],
    acc: &mut [[i32; BLOCK]; PIXELS],
) {
    *acc = [[0i32; BLOCK]; PIXELS];
    for ky in 0..k {
        let ws = &w[ky * run..][..run];
        for (a, &o) in acc.iter_mut().zip(origin) {
            let xs = &x[o + ky * row..][..run];
            let mut s = 0;
            while s < run {
                let q = xs[s] as i32;
                for (i, t) in a.iter_mut().enumerate() {
                    *t += q * ws[s][i / LANES][i % LANES] as i32;
                }
                s += 1;
                // As in `dots_w2_part`: keeps the loop vectoriser off (|Σ| ≤ k_len·255·128 never
                // reaches i32::MIN for a layer the int32 contract admits).
                if a[0] == i32::MIN {
                    break;
                }
            }
        }
    }
}

/// The f64 epilogue's per-channel tables, built at prepare time.
#[derive(Clone, Debug)]
struct Tables {
    /// `m·2^−shift` and `(b + 2^(shift−1))·2^−shift` for `nb·16` channels (`m = b = 0` past
    /// `c_conv`).
    m: Vec<f64>,
    c: Vec<f64>,
    /// `k_len · |largest weight code|`, `max |m|` and `max |b| + 2^(shift−1)`.
    acc_per_code: u128,
    m_max: u128,
    b_max: u128,
    /// For outputs of at most 2 bits: the thresholds form.
    ladder: Option<Ladder>,
}

/// Requantisation without a shortcut as counting thresholds: with `a = sign(m)·acc`, the output
/// is `#{k ∈ 1..=qmax : a ≥ t[k−1]}`, since `(acc·m + b') >> shift ≥ k` exactly when
/// `acc·m ≥ k·2^shift − b'`, i.e. `|m|·a ≥ k·2^shift − b'`, i.e. `a ≥ ⌈(k·2^shift − b')/|m|⌉`
/// (for `m = 0`: `a = 0` against 0 or 1). Valid while `|acc| ≤ 2^30` (checked per call); the
/// thresholds are clamped to `±(2^30 + 1)`.
#[derive(Clone, Debug)]
struct Ladder {
    /// Per channel: `−1` where `m < 0`, else 0; and `0` where `m = 0`, else `−1`.
    neg: Vec<i32>,
    nonzero: Vec<i32>,
    /// `t[k][ch]` for `k < qmax`.
    t: Vec<Vec<i32>>,
}

impl Ladder {
    fn new(c: &Conv2d, width: usize) -> Option<Ladder> {
        let rq = &c.requant;
        if rq.qmax > 3 {
            return None;
        }
        let m = |ch: usize| rq.m.get(ch).copied().unwrap_or(0) as i128;
        let b = |ch: usize| rq.b.get(ch).copied().unwrap_or(0) as i128 + rq.rounding() as i128;
        const LIMIT: i128 = (1 << 30) + 1;
        let t = (1..=rq.qmax as i128)
            .map(|k| {
                (0..width)
                    .map(|ch| {
                        let need = (k << rq.shift) - b(ch);
                        let t = match m(ch).unsigned_abs() as i128 {
                            0 => (need > 0) as i128,
                            m => need.div_euclid(m) + (need.rem_euclid(m) != 0) as i128,
                        };
                        t.clamp(-LIMIT, LIMIT) as i32
                    })
                    .collect()
            })
            .collect();
        Some(Ladder {
            neg: (0..width).map(|ch| -((m(ch) < 0) as i32)).collect(),
            nonzero: (0..width).map(|ch| -((m(ch) != 0) as i32)).collect(),
            t,
        })
    }

    /// Sixteen channels from `c0` of one pixel.
    #[inline(always)]
    fn codes16(&self, c0: usize, acc: &[i32; BLOCK]) -> [u8; BLOCK] {
        let neg: &[i32; BLOCK] = self.neg[c0..c0 + BLOCK].try_into().expect("16 channels");
        let nonzero: &[i32; BLOCK] = self.nonzero[c0..c0 + BLOCK].try_into().expect("16 channels");
        let mut a = [0i32; BLOCK];
        for (i, a) in a.iter_mut().enumerate() {
            *a = ((acc[i] ^ neg[i]).wrapping_sub(neg[i])) & nonzero[i];
        }
        let mut n = [0i32; BLOCK];
        for t in &self.t {
            let t: &[i32; BLOCK] = t[c0..c0 + BLOCK].try_into().expect("16 channels");
            for (i, n) in n.iter_mut().enumerate() {
                *n += (a[i] >= t[i]) as i32;
            }
        }
        let mut out = [0u8; BLOCK];
        for (o, &n) in out.iter_mut().zip(&n) {
            *o = n as u8;
        }
        out
    }
}

impl Tables {
    fn new(c: &Conv2d, width: usize) -> Self {
        let rq = &c.requant;
        let scale = pow2_neg(rq.shift);
        let m = |ch: usize| rq.m.get(ch).copied().unwrap_or(0);
        let b = |ch: usize| rq.b.get(ch).copied().unwrap_or(0) as i64 + rq.rounding();
        let wmax: u128 = if matches!(c.weights, ConvWeights::W2(_)) { 3 } else { 128 };
        Tables {
            m: (0..width).map(|ch| m(ch) as f64 * scale).collect(),
            c: (0..width).map(|ch| b(ch) as f64 * scale).collect(),
            acc_per_code: c.k_len() as u128 * wmax,
            m_max: rq.m.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0) as u128,
            b_max: rq.b.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0) as u128 + rq.rounding() as u128,
            ladder: Ladder::new(c, width),
        }
    }
}

/// How one call requantises.
enum Epilogue {
    /// [`Ladder`] (no shortcut, outputs of at most 2 bits).
    Ladder,
    /// In f64, exact (every intermediate an integer times `2^−shift` below 2^53): `r` is the
    /// shortcut scale `r·2^−shift`.
    F64 { r: f64, qmax: u8 },
    /// The reference's int64 form.
    I64,
}

impl Epilogue {
    fn new(t: &Tables, c: &Conv2d, amax: u8, residual: Option<&Residual>) -> Self {
        let acc_max = t.acc_per_code * amax as u128;
        let r_term = residual.map_or(0, |r| 255 * r.r.unsigned_abs() as u128);
        if residual.is_none() && t.ladder.is_some() && acc_max <= 1 << 30 {
            return Epilogue::Ladder;
        }
        if acc_max * t.m_max + t.b_max + r_term < 1u128 << 53 {
            Epilogue::F64 { r: residual.map_or(0.0, |r| r.r as f64 * pow2_neg(c.requant.shift)), qmax: c.requant.qmax }
        } else {
            Epilogue::I64
        }
    }
}

/// Sixteen channels requantised in f64: `floor(clamp(acc·m + b + q·r, 0, qmax))` (the shortcut
/// term only where `RES`). Channels past `c_conv` have `m = b = 0` in the tables, as the
/// contract says.
#[inline(always)]
fn requant16<const RES: bool>(acc: &[i32; BLOCK], m: &[f64; BLOCK], b: &[f64; BLOCK], q: &[u8; BLOCK], r: f64, qmax: u8) -> [u8; BLOCK] {
    let mut v = [0f64; BLOCK];
    for (i, v) in v.iter_mut().enumerate() {
        *v = acc[i] as f64 * m[i] + b[i];
        if RES {
            *v += q[i] as f64 * r;
        }
    }
    match qmax {
        1 => ladder::<1>(&v),
        3 => ladder::<3>(&v),
        _ => floor_clamped(&v, qmax as f64),
    }
}

/// `floor(clamp(v, 0, Q))` as `#{k ∈ 1..=Q : v ≥ k}`: `Q` compares, the cheapest form for 1- and
/// 2-bit outputs.
#[inline(always)]
fn ladder<const Q: u8>(v: &[f64; BLOCK]) -> [u8; BLOCK] {
    let mut n = [0i64; BLOCK];
    for k in 1..=Q {
        for (n, &v) in n.iter_mut().zip(v) {
            *n += (v >= k as f64) as i64;
        }
    }
    let mut out = [0u8; BLOCK];
    for (o, &n) in out.iter_mut().zip(&n) {
        *o = n as u8;
    }
    out
}

/// `floor(clamp(v, 0, qmax))` for `qmax ≤ 255`, without a float-to-int conversion (Rust's
/// saturating `as` stays scalar): round to nearest by adding 2^52, step back where that
/// rounded up, and read the integer from the low mantissa bits.
#[inline(always)]
fn floor_clamped(v: &[f64; BLOCK], qmax: f64) -> [u8; BLOCK] {
    const ROUND: f64 = (1u64 << 52) as f64;
    let mut out = [0u8; BLOCK];
    for (o, &v) in out.iter_mut().zip(v) {
        let v = if v > 0.0 { v } else { 0.0 };
        let v = if v < qmax { v } else { qmax };
        let r = (v + ROUND) - ROUND;
        let f = if r > v { r - 1.0 } else { r };
        *o = (f + ROUND).to_bits() as u8;
    }
    out
}

/// `2^−shift` (shift ≤ 62) built from its bits: exact without relying on libm's `exp2`.
fn pow2_neg(shift: u32) -> f64 {
    f64::from_bits((1023 - shift as u64) << 52)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_triple_product_is_the_three_term_dot_product() {
        // Every pair of triples: the partial products below bit 11 never carry into it.
        for xs in 0..64u32 {
            for us in 0..64u32 {
                let (x, u) = (|i: u32| (xs >> (2 * i) & 3) as u8, |i: u32| (us >> (2 * i) & 3) as u16);
                let want: u16 = (0..3).map(|i| x(i) as u16 * u(i)).sum();
                assert_eq!(dot3(pack_x(x(0), x(1), x(2)), pack_u(u(0), u(1), u(2))), want, "x {xs:06b} u {us:06b}");
            }
        }
    }

    #[test]
    fn threshold_ladder_matches_requantize() {
        use crate::engine::{PackedW2, Requant};
        // Positive, negative and zero multipliers, extreme ones included; 1- and 2-bit outputs.
        let m = [7, -7, 0, 1, -1, i32::MAX, i32::MIN, 12345, -98765, 3, 0, 5, -3, 1 << 20, -(1 << 20), 2];
        let b = [0, 5, -5, 1 << 30, -(1 << 30), i32::MIN, i32::MAX, 77, -77, 0, 1, 2, 3, -4, 5, -6];
        for (shift, qmax) in [(0, 3), (1, 1), (9, 3), (20, 3), (30, 1), (62, 3)] {
            let rq = Requant { m: m.to_vec(), b: b.to_vec(), shift, qmax };
            let w = PackedW2::pack(BLOCK, 1, &[1; BLOCK]).expect("weights");
            let conv = Conv2d::new(1, 1, 1, 0, ConvWeights::W2(w), rq.clone()).expect("conv");
            let ladder = Ladder::new(&conv, BLOCK).expect("2-bit outputs");
            for a in -3000..3000 {
                let got = ladder.codes16(0, &[a; BLOCK]);
                let want: [u8; BLOCK] = array::from_fn(|ch| requantize(a, m[ch], b[ch], 0, 0, &rq));
                assert_eq!(got, want, "acc {a} shift {shift} qmax {qmax}");
            }
        }
    }

    #[test]
    fn pow2_neg_is_exact() {
        for s in 0..=62 {
            assert_eq!(pow2_neg(s), 1.0 / (1u64 << s) as f64);
        }
    }
}

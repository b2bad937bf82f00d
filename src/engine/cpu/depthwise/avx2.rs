//! x86-64 AVX2 depthwise kernel: sixteen channels per ymm.
//!
//! Per output pixel and block of 16 channels, each tap zero-extends the 16 input codes of its
//! window position to int16 (`vpmovzxbw`), multiplies them by the tap's 16 weights (int16,
//! laid out `[block][tap][16]` at prepare time; `vpmullw`, exact since `|x·w| ≤ 255·128`) and
//! adds them to int16 lanes; every [`super::int16_run`] taps (3640 for 2-bit weights over
//! 2-bit inputs, so once per pixel for any `k`; every tap for 8-bit weights over 8-bit inputs)
//! the lanes are widened and added to two int32 vectors. The epilogue is the dense AVX2
//! kernels' ([`Epilogue`]): from registers for full blocks, through a 16-code tile otherwise.
//!
//! SAFETY: [`Weights`] is only built after `is_x86_feature_detected!("avx2")`, so the
//! `#[target_feature(enable = "avx2")]` functions only run on CPUs with AVX2. Input loads read
//! 16 bytes from a window position plus a block's first channel: inside the padded buffer,
//! whose `SLACK` zeros cover the ≤ 15 bytes past the last code; weight loads stay inside
//! `[block][tap][16]`; outputs are written through slices.

use super::super::avx2::{epilogue_f64, epilogue_i64, requant8_f64, Epilogue, EpilogueTables};
use super::{int16_run, max_abs_code, shortcut_only, Geometry};
use crate::engine::{Conv2d, QTensor, Requant, Residual};
use std::arch::x86_64::*;
use std::ops::Range;

/// Channels per block.
const BLOCK: usize = 16;

/// The weights as int16, `[block][tap][16]`, 0 past the last channel.
#[derive(Clone, Debug)]
pub(super) struct Weights {
    w: Vec<i16>,
    blocks: usize,
    wmax: u32,
    epilogue: EpilogueTables,
}

impl Weights {
    /// `None` when the CPU lacks AVX2.
    pub(super) fn new(conv: &Conv2d) -> Option<Self> {
        if !super::super::avx2::available() {
            return None;
        }
        let (w, blocks, wmax) = layout(conv, BLOCK);
        Some(Weights { w, blocks, wmax, epilogue: EpilogueTables::new(conv, blocks * BLOCK) })
    }
}

/// `[block][tap][width]` int16 weights of a depthwise conv (0 past the last channel), the block
/// count and the largest |code|. Shared with the AVX-512 kernel.
pub(super) fn layout(conv: &Conv2d, width: usize) -> (Vec<i16>, usize, u32) {
    let (c, taps) = (conv.c_conv(), conv.k * conv.k);
    let codes = conv.weights.codes_i32();
    let blocks = c.div_ceil(width);
    let mut w = vec![0i16; blocks * taps * width];
    for ch in 0..c {
        for t in 0..taps {
            w[((ch / width) * taps + t) * width + ch % width] = codes[ch * taps + t] as i16;
        }
    }
    (w, blocks, max_abs_code(&codes))
}

/// One call's epilogue tables and int16 run length.
pub(super) struct Job<'a> {
    w: &'a Weights,
    epi: Epilogue,
    run: usize,
}

impl<'a> Job<'a> {
    pub(super) fn new(w: &'a Weights, conv: &Conv2d, x: &QTensor, residual: Option<&Residual>) -> Self {
        let amax = x.max_code();
        Job { w, epi: Epilogue::new(&w.epilogue, conv, w.blocks * BLOCK, amax, residual), run: int16_run(amax, w.wmax) }
    }

    pub(super) fn run(&self, conv: &Conv2d, g: &Geometry, px: Range<usize>, out: &mut [u8]) {
        // SAFETY: `self.w` exists only on AVX2 machines; the bounds are in the module docs.
        unsafe { run_avx2(self, conv, g, px, out) }
    }
}

#[target_feature(enable = "avx2")]
unsafe fn run_avx2(job: &Job, conv: &Conv2d, g: &Geometry, px: Range<usize>, out: &mut [u8]) {
    let taps = g.taps.len();
    let (inp, w) = (g.input.as_ptr(), job.w.w.as_ptr());
    for (n, out_px) in px.zip(out.chunks_exact_mut(g.d.c_out)) {
        let (origin, sc) = g.pixel(n);
        for blk in 0..job.w.blocks {
            let (x, wb) = (inp.add(origin + blk * BLOCK), w.add(blk * taps * BLOCK));
            let (lo, hi) = match <&[usize; 9]>::try_from(&g.taps[..]) {
                Ok(t9) if job.run >= 9 => mac16_short(x, t9, wb),
                _ => mac16(x, &g.taps, wb, job.run),
            };
            finish16(&job.epi, &conv.requant, lo, hi, blk * BLOCK, sc, out_px);
        }
        shortcut_only(&conv.requant, job.w.blocks * BLOCK, sc, out_px);
    }
}

/// The int32 accumulators of 16 channels (`lo`: the first 8) whose codes start at `x` in the
/// window, with weights `w` (`[tap][16]`), widening the int16 lanes every `run` taps.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn mac16(x: *const u8, taps: &[usize], w: *const i16, run: usize) -> (__m256i, __m256i) {
    let zero = _mm256_setzero_si256();
    let (mut acc16, mut lo, mut hi) = (zero, zero, zero);
    let mut left = run;
    for (t, &off) in taps.iter().enumerate() {
        let xv = _mm256_cvtepu8_epi16(_mm_loadu_si128(x.add(off).cast()));
        let wv = _mm256_loadu_si256(w.add(t * BLOCK).cast());
        acc16 = _mm256_add_epi16(acc16, _mm256_mullo_epi16(xv, wv));
        left -= 1;
        if left == 0 {
            (lo, hi) = widen_add(acc16, lo, hi);
            (acc16, left) = (zero, run);
        }
    }
    widen_add(acc16, lo, hi)
}

/// [`mac16`] for `T ≤ run` taps (3×3 kernels): no widening inside, the tap loop unrolled.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn mac16_short<const T: usize>(x: *const u8, taps: &[usize; T], w: *const i16) -> (__m256i, __m256i) {
    let mut acc16 = _mm256_setzero_si256();
    for (t, &off) in taps.iter().enumerate() {
        let xv = _mm256_cvtepu8_epi16(_mm_loadu_si128(x.add(off).cast()));
        let wv = _mm256_loadu_si256(w.add(t * BLOCK).cast());
        acc16 = _mm256_add_epi16(acc16, _mm256_mullo_epi16(xv, wv));
    }
    widen_add(acc16, _mm256_setzero_si256(), _mm256_setzero_si256())
}

/// `(lo, hi) + acc16` widened: lanes 0..8 to `lo`, 8..16 to `hi`.
#[inline]
#[target_feature(enable = "avx2")]
fn widen_add(acc16: __m256i, lo: __m256i, hi: __m256i) -> (__m256i, __m256i) {
    let l = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc16));
    let h = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc16, 1));
    (_mm256_add_epi32(lo, l), _mm256_add_epi32(hi, h))
}

/// Requantises channels `c0..c0 + 16` of one pixel (those below `out.len()`) from their
/// accumulators (`lo`: `c0..c0 + 8`); `sc` is the pixel's shortcut (all its channels) and `r`.
/// The tables of `epi` must cover `c0 + 16` channels. Shared with the AVX-512 kernel.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn finish16(epi: &Epilogue, rq: &Requant, lo: __m256i, hi: __m256i, c0: usize, sc: Option<(&[u8], i32)>, out: &mut [u8]) {
    let c1 = (c0 + BLOCK).min(out.len());
    if c0 >= c1 {
        return;
    }
    // The shortcut codes of these channels: all 16, some (zero-padded) or none.
    let res = sc.map(|(q, r)| (&q[c0.min(q.len())..c1.min(q.len())], r));
    let shortcut = res.map_or(0, |(q, _)| q.len());
    if let Epilogue::F64 { m, c, r, qmax } = epi {
        if c1 == c0 + BLOCK && (shortcut == 0 || shortcut == BLOCK) {
            let q = |h: usize| res.filter(|_| shortcut == BLOCK).map(|(q, _)| u64::from_le_bytes(q[h..h + 8].try_into().expect("8")));
            let a = requant8_f64(lo, m[c0..c0 + 8].as_ptr(), c[c0..c0 + 8].as_ptr(), q(0), *r, *qmax);
            let b = requant8_f64(hi, m[c0 + 8..c0 + 16].as_ptr(), c[c0 + 8..c0 + 16].as_ptr(), q(8), *r, *qmax);
            out[c0..c0 + 8].copy_from_slice(&a.to_le_bytes());
            out[c0 + 8..c0 + 16].copy_from_slice(&b.to_le_bytes());
            return;
        }
    }
    let mut tile = [0i32; BLOCK];
    _mm256_storeu_si256(tile.as_mut_ptr().cast(), lo);
    _mm256_storeu_si256(tile.as_mut_ptr().add(8).cast(), hi);
    finish_tile(epi, rq, &tile, c0..c1, res, out);
}

/// The general path of [`finish16`] (partial blocks and shortcuts, the int64 form), out of line
/// so that the fused path stays small enough to inline into the kernels.
#[inline(never)]
#[target_feature(enable = "avx2")]
unsafe fn finish_tile(epi: &Epilogue, rq: &Requant, tile: &[i32; BLOCK], ch: Range<usize>, res: Option<(&[u8], i32)>, out: &mut [u8]) {
    let (c0, c1) = (ch.start, ch.end);
    match epi {
        Epilogue::F64 { m, c, r, qmax } => {
            epilogue_f64(tile.as_ptr(), m[c0..].as_ptr(), c[c0..].as_ptr(), res, *r, *qmax, &mut out[c0..c1])
        }
        Epilogue::I64 { m, bias } => epilogue_i64(tile.as_ptr(), m[c0..].as_ptr(), bias[c0..].as_ptr(), res, rq, &mut out[c0..c1]),
    }
}

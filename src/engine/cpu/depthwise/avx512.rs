//! x86-64 AVX-512 depthwise kernel: thirty-two channels per zmm.
//!
//! A transcription of `avx2.rs` with twice the width: per tap, 32 input codes zero-extended to
//! int16 (`vpmovzxbw zmm`), `vpmullw` by the tap's 32 int16 weights (`[block][tap][32]`), int16
//! lanes widened to two int32 zmm every [`super::int16_run`] taps. The four 8-channel quarters
//! then go through the AVX2 kernel's epilogue ([`finish16`], twice), so only the
//! multiply-accumulate loop is AVX-512 code. (VNNI's `vpdpbusd` would need the taps' codes
//! interleaved per channel; with 9 products per output the loop is not the bottleneck.)
//!
//! NOT EXECUTED on the machine this was written on (Zen 2, no AVX-512): the tests run it
//! wherever `Backend::Avx512` is available.
//!
//! SAFETY: [`Weights`] is only built where [`super::super::avx512::available`] (AVX-512 F, BW,
//! VL, VNNI) and AVX2 are detected, so the `#[target_feature]` functions only run on CPUs with
//! them. Input loads read 32 bytes from a window position plus a block's first channel: inside
//! the padded buffer, whose `SLACK` (64) zeros cover the ≤ 31 bytes past the last code; weight
//! loads stay inside `[block][tap][32]`; outputs are written through slices.

use super::super::avx2::{Epilogue, EpilogueTables};
use super::avx2::{finish16, layout};
use super::{int16_run, shortcut_only, Geometry};
use crate::engine::{Conv2d, QTensor, Residual};
use std::arch::x86_64::*;
use std::ops::Range;

/// Channels per block.
const BLOCK: usize = 32;

/// The weights as int16, `[block][tap][32]`, 0 past the last channel.
#[derive(Clone, Debug)]
pub(super) struct Weights {
    w: Vec<i16>,
    blocks: usize,
    wmax: u32,
    epilogue: EpilogueTables,
}

impl Weights {
    /// `None` when the CPU lacks AVX-512 (or, hypothetically, AVX2 for the epilogue).
    pub(super) fn new(conv: &Conv2d) -> Option<Self> {
        if !(super::super::avx512::available() && super::super::avx2::available()) {
            return None;
        }
        let (w, blocks, wmax) = layout(conv, BLOCK);
        Some(Weights { w, blocks, wmax, epilogue: EpilogueTables::new(conv, blocks * BLOCK) })
    }
}

/// One call's epilogue tables (for `blocks · 32` channels) and int16 run length.
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
        // SAFETY: `self.w` exists only on AVX-512 + AVX2 machines; the bounds are in the
        // module docs.
        unsafe { run_avx512(self, conv, g, px, out) }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx2")]
unsafe fn run_avx512(job: &Job, conv: &Conv2d, g: &Geometry, px: Range<usize>, out: &mut [u8]) {
    let taps = g.taps.len();
    let (inp, w) = (g.input.as_ptr(), job.w.w.as_ptr());
    for (n, out_px) in px.zip(out.chunks_exact_mut(g.d.c_out)) {
        let (origin, sc) = g.pixel(n);
        for blk in 0..job.w.blocks {
            let (x, wb) = (inp.add(origin + blk * BLOCK), w.add(blk * taps * BLOCK));
            let [a, b, c, d] = match <&[usize; 9]>::try_from(&g.taps[..]) {
                Ok(t9) if job.run >= 9 => mac32_short(x, t9, wb),
                _ => mac32(x, &g.taps, wb, job.run),
            };
            finish16(&job.epi, &conv.requant, a, b, blk * BLOCK, sc, out_px);
            finish16(&job.epi, &conv.requant, c, d, blk * BLOCK + 16, sc, out_px);
        }
        shortcut_only(&conv.requant, job.w.blocks * BLOCK, sc, out_px);
    }
}

/// The int32 accumulators of 32 channels, as four vectors of 8 in channel order, whose codes
/// start at `x` in the window, with weights `w` (`[tap][32]`), widening every `run` taps.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
unsafe fn mac32(x: *const u8, taps: &[usize], w: *const i16, run: usize) -> [__m256i; 4] {
    let zero = _mm512_setzero_si512();
    let (mut acc16, mut lo, mut hi) = (zero, zero, zero);
    let mut left = run;
    for (t, &off) in taps.iter().enumerate() {
        let xv = _mm512_cvtepu8_epi16(_mm256_loadu_si256(x.add(off).cast()));
        let wv = _mm512_loadu_si512(w.add(t * BLOCK).cast());
        acc16 = _mm512_add_epi16(acc16, _mm512_mullo_epi16(xv, wv));
        left -= 1;
        if left == 0 {
            (lo, hi) = widen_add(acc16, lo, hi);
            (acc16, left) = (zero, run);
        }
    }
    quarters(widen_add(acc16, lo, hi))
}

/// [`mac32`] for `T ≤ run` taps (3×3 kernels): no widening inside, the tap loop unrolled.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
unsafe fn mac32_short<const T: usize>(x: *const u8, taps: &[usize; T], w: *const i16) -> [__m256i; 4] {
    let mut acc16 = _mm512_setzero_si512();
    for (t, &off) in taps.iter().enumerate() {
        let xv = _mm512_cvtepu8_epi16(_mm256_loadu_si256(x.add(off).cast()));
        let wv = _mm512_loadu_si512(w.add(t * BLOCK).cast());
        acc16 = _mm512_add_epi16(acc16, _mm512_mullo_epi16(xv, wv));
    }
    quarters(widen_add(acc16, _mm512_setzero_si512(), _mm512_setzero_si512()))
}

/// The 32 int32 accumulators `(lo, hi)` as four vectors of 8 channels, in channel order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
fn quarters((lo, hi): (__m512i, __m512i)) -> [__m256i; 4] {
    [_mm512_castsi512_si256(lo), _mm512_extracti64x4_epi64::<1>(lo), _mm512_castsi512_si256(hi), _mm512_extracti64x4_epi64::<1>(hi)]
}

/// `(lo, hi) + acc16` widened: lanes 0..16 to `lo`, 16..32 to `hi`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn widen_add(acc16: __m512i, lo: __m512i, hi: __m512i) -> (__m512i, __m512i) {
    let l = _mm512_cvtepi16_epi32(_mm512_castsi512_si256(acc16));
    let h = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64::<1>(acc16));
    (_mm512_add_epi32(lo, l), _mm512_add_epi32(hi, h))
}

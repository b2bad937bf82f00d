//! Portable SWAR depthwise kernel: eight channels per 64-bit word, no intrinsics.
//!
//! A tap's eight input codes `x` (one byte each, all ≤ 3) meet eight different weights, so
//! instead of one multiply the product is built from the weight's bits: with `u = (c + 3) / 2`
//! (`c = 2u − 3`) and masks `M0`/`M1` holding `0xff` in the lanes whose `u` has bit 0 / bit 1,
//! `x·u = (x & M0) + ((x & M1) << 1)` per byte. Per tap and lane that adds at most 9 to
//! `Σ x·u` and 3 to `Σ x`, so [`TAPS_PER_FLUSH`] taps never carry across a byte; then
//! `acc = 2·Σ x·u − 3·Σ x` per channel, and the scalar [`requantize`] finishes. 8-bit weights
//! (never depthwise in the models here) run the reference, and so does a call whose input has
//! a code above 3 (8-bit activations), as in `../swar.rs`.

use super::{reference_pixels, requantize, shortcut_only, Geometry};
use crate::engine::{Conv2d, ConvWeights, QTensor};
use std::ops::Range;

/// Taps summed in a word before its bytes are collected: `28 · 9 = 252 ≤ 255`.
const TAPS_PER_FLUSH: usize = 28;
/// Channels per word.
const LANES: usize = 8;

/// Per 8-channel chunk and tap, the masks `(M0, M1)` of the weights' `u` bits.
#[derive(Clone, Debug)]
pub(super) struct Weights {
    /// `[chunk][tap][2]`; lanes past the last channel are 0.
    masks: Vec<u64>,
    /// `[c][k·k]` as the reference wants them (for the calls it runs).
    codes: Vec<i32>,
    chunks: usize,
}

impl Weights {
    /// `None` for 8-bit weights (the reference runs them).
    pub(super) fn new(conv: &Conv2d) -> Option<Self> {
        if !matches!(conv.weights, ConvWeights::W2(_)) {
            return None;
        }
        let (c, taps) = (conv.c_conv(), conv.k * conv.k);
        let codes = conv.weights.codes_i32();
        let chunks = c.div_ceil(LANES);
        let mut masks = vec![0u64; chunks * taps * 2];
        for ch in 0..c {
            for t in 0..taps {
                let u = (codes[ch * taps + t] + 3) / 2;
                let at = ((ch / LANES) * taps + t) * 2;
                let lane = 0xffu64 << (8 * (ch % LANES));
                masks[at] |= if u & 1 != 0 { lane } else { 0 };
                masks[at + 1] |= if u & 2 != 0 { lane } else { 0 };
            }
        }
        Some(Weights { masks, codes, chunks })
    }
}

/// One call: whether its input allows the SWAR path.
pub(super) struct Job<'a> {
    w: &'a Weights,
    fast: bool,
}

impl<'a> Job<'a> {
    pub(super) fn new(w: &'a Weights, x: &QTensor) -> Self {
        Job { w, fast: x.data.iter().all(|&q| q <= 3) }
    }

    pub(super) fn run(&self, conv: &Conv2d, g: &Geometry, px: Range<usize>, out: &mut [u8]) {
        if !self.fast {
            return reference_pixels(conv, &self.w.codes, g, px, out);
        }
        let (d, rq) = (&g.d, &conv.requant);
        let mut acc = vec![0i32; self.w.chunks * LANES];
        for (n, out_px) in px.zip(out.chunks_exact_mut(d.c_out)) {
            let (origin, sc) = g.pixel(n);
            for (chunk, lanes) in acc.chunks_exact_mut(LANES).enumerate() {
                let masks = &self.w.masks[chunk * g.taps.len() * 2..(chunk + 1) * g.taps.len() * 2];
                self.chunk(&g.input, origin + chunk * LANES, &g.taps, masks, lanes);
            }
            let conv_out = out_px[..d.c_conv].iter_mut().zip(&acc).zip(rq.m.iter().zip(&rq.b));
            for (ch, ((q, &a), (&m, &b))) in conv_out.enumerate() {
                // Channels the shortcut lacks read 0.
                let (q_sc, r) = sc.map_or((0, 0), |(s, r)| (s.get(ch).copied().unwrap_or(0), r));
                *q = requantize(a, m, b, q_sc, r, rq);
            }
            shortcut_only(rq, d.c_conv, sc, out_px);
        }
    }

    /// The accumulators of one 8-channel chunk whose first code is at `base` in each window.
    fn chunk(&self, input: &[u8], base: usize, taps: &[usize], masks: &[u64], lanes: &mut [i32]) {
        lanes.fill(0);
        for (ts, ms) in taps.chunks(TAPS_PER_FLUSH).zip(masks.chunks(2 * TAPS_PER_FLUSH)) {
            let (mut xu, mut sx) = (0u64, 0u64);
            for (&t, m) in ts.iter().zip(ms.chunks_exact(2)) {
                let at = base + t;
                let x = u64::from_le_bytes(input[at..at + 8].try_into().expect("8 bytes"));
                xu += (x & m[0]) + ((x & m[1]) << 1);
                sx += x;
            }
            let (xu, sx) = (xu.to_le_bytes(), sx.to_le_bytes());
            for ((a, &u), &s) in lanes.iter_mut().zip(&xu).zip(&sx) {
                *a += 2 * u as i32 - 3 * s as i32;
            }
        }
    }
}

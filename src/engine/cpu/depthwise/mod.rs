//! Depthwise convs (`groups == c_in == c_out`, MobileNetV2's 3×3 layers) on the fast backends.
//!
//! One filter per channel, and NHWC activations, so every kernel here vectorises across
//! channels: for each output pixel and each vector of channels it adds `k·k` taps (one
//! contiguous channel vector of the input each, times that tap's per-channel weights) into
//! per-channel accumulators, then requantises them like the dense kernels. The input is first
//! copied into a zero-bordered buffer (zero padding needs no bounds checks; `SLACK` spare zeros
//! let the last channel vector read past the last code, where the weights are 0), shared
//! read-only by the threads of [`super::par_pixels`], which hands each a range of pixels.
//!
//! - `swar.rs`: eight channels per 64-bit word (2-bit weights over inputs ≤ 3, else the
//!   reference);
//! - `avx2.rs`: sixteen channels per ymm of int16 products, the epilogue of `../avx2.rs`;
//! - `avx512.rs`: thirty-two channels per zmm, the same walk, and the AVX2 epilogue.
//!
//! Every output is bit-identical to [`reference::conv2d_pixels`] (the definition); strides,
//! kernel sizes, padding, the fused residual and 8-bit weights (AVX2, AVX-512) are all handled.
//! Other grouped convs (`1 < groups < c_in`) stay on the reference.

use super::reference::{self, requantize};
use super::Backend;
use crate::engine::{Conv2d, ConvDims, QTensor, Requant, Residual};
use std::ops::Range;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod swar;

/// Spare zero bytes after the padded input: the last channel vector of a window may read up
/// to 31 bytes past the input's last code.
const SLACK: usize = 64;

/// A depthwise conv with its weights laid out for one backend.
#[derive(Clone, Debug)]
pub(super) struct DwKernel {
    conv: Conv2d,
    imp: Imp,
}

#[derive(Clone, Debug)]
enum Imp {
    Swar(swar::Weights),
    #[cfg(target_arch = "x86_64")]
    Avx2(avx2::Weights),
    #[cfg(target_arch = "x86_64")]
    Avx512(avx512::Weights),
}

impl DwKernel {
    /// The kernel of `backend` for a validated `conv`, or `None` where the reference runs it:
    /// not depthwise, the scalar backend, or SWAR with 8-bit weights.
    pub(super) fn new(conv: &Conv2d, backend: Backend) -> Option<Self> {
        if !conv.is_depthwise() {
            return None;
        }
        let imp = match backend {
            Backend::Swar => Imp::Swar(swar::Weights::new(conv)?),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => Imp::Avx2(avx2::Weights::new(conv)?),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => Imp::Avx512(avx512::Weights::new(conv)?),
            _ => return None,
        };
        Some(DwKernel { conv: conv.clone(), imp })
    }

    /// Builds the per-call state (the padded input and the backend's epilogue) for a call
    /// checked by [`Conv2d::dims`].
    pub(super) fn job<'a>(&'a self, d: &ConvDims, x: &'a QTensor, residual: Option<&'a Residual<'a>>) -> Job<'a> {
        let g = Geometry::new(&self.conv, d, x, residual);
        let kind = match &self.imp {
            Imp::Swar(w) => Kind::Swar(swar::Job::new(w, x)),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx2(w) => Kind::Avx2(avx2::Job::new(w, &self.conv, x, residual)),
            #[cfg(target_arch = "x86_64")]
            Imp::Avx512(w) => Kind::Avx512(avx512::Job::new(w, &self.conv, x, residual)),
        };
        Job { conv: &self.conv, g, kind }
    }
}

/// One depthwise call, shared read-only by the worker threads.
pub(super) struct Job<'a> {
    conv: &'a Conv2d,
    g: Geometry<'a>,
    kind: Kind<'a>,
}

enum Kind<'a> {
    Swar(swar::Job<'a>),
    #[cfg(target_arch = "x86_64")]
    Avx2(avx2::Job<'a>),
    #[cfg(target_arch = "x86_64")]
    Avx512(avx512::Job<'a>),
}

impl Job<'_> {
    /// Computes output pixels `px` into `out` (`px.len() · c_out` codes).
    pub(super) fn run(&self, px: Range<usize>, out: &mut [u8]) {
        assert_eq!(out.len(), px.len() * self.g.d.c_out, "output slice does not match the pixel range");
        match &self.kind {
            Kind::Swar(j) => j.run(self.conv, &self.g, px, out),
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2(j) => j.run(self.conv, &self.g, px, out),
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512(j) => j.run(self.conv, &self.g, px, out),
        }
    }
}

/// Where a call's windows and shortcut codes lie.
struct Geometry<'a> {
    /// The input with `pad` zero pixels on every side, then `SLACK` zero bytes.
    input: Vec<u8>,
    /// Offset of tap `(ky, kx)` from its window's origin, in `(ky, kx)` order.
    taps: Vec<usize>,
    /// Bytes per padded row.
    row: usize,
    /// Bytes between the origins of horizontally adjacent windows (`stride · c`).
    step: usize,
    stride: usize,
    d: ConvDims,
    x: &'a QTensor,
    residual: Option<&'a Residual<'a>>,
}

impl<'a> Geometry<'a> {
    fn new(conv: &Conv2d, d: &ConvDims, x: &'a QTensor, residual: Option<&'a Residual<'a>>) -> Self {
        let (c, p) = (x.c, conv.pad);
        let (hp, wp) = (x.h + 2 * p, x.w + 2 * p);
        let row = wp * c;
        let mut input = vec![0u8; hp * row + SLACK];
        for (y, src) in x.data.chunks_exact(x.w * c).enumerate() {
            let at = (y + p) * row + p * c;
            input[at..at + src.len()].copy_from_slice(src);
        }
        let taps = (0..conv.k * conv.k).map(|t| (t / conv.k) * row + (t % conv.k) * c).collect();
        Geometry { input, taps, row, step: conv.stride * c, stride: conv.stride, d: *d, x, residual }
    }

    /// Offset in `input` of output pixel `n`'s window origin (its tap `(0, 0)`), and the pixel's
    /// shortcut codes (all `c_res` of them) with `r`.
    fn pixel(&self, n: usize) -> (usize, Option<(&'a [u8], i32)>) {
        let (y, x) = (n / self.d.wo, n % self.d.wo);
        let sc = self.residual.map(|r| {
            let at = (y * r.stride * r.input.w + x * r.stride) * r.input.c;
            (&r.input.data[at..at + r.input.c], r.r)
        });
        (y * self.stride * self.row + x * self.step, sc)
    }
}

/// Requantises output channels `first..out.len()` of one pixel that only the (wider) shortcut
/// has: `acc = m = b = 0`.
fn shortcut_only(rq: &Requant, first: usize, sc: Option<(&[u8], i32)>, out: &mut [u8]) {
    let Some((q, r)) = sc else { return };
    for ch in first..out.len() {
        out[ch] = requantize(0, 0, 0, q[ch], r, rq);
    }
}

/// Largest `n` with `n · amax · wmax ≤ i16::MAX`: how many taps an int16 lane may sum before
/// it is widened (at least 1, since one product `255 · 128` fits).
#[cfg(target_arch = "x86_64")]
fn int16_run(amax: u8, wmax: u32) -> usize {
    (i16::MAX as usize / (amax.max(1) as usize * wmax.max(1) as usize)).max(1)
}

/// Largest |weight code| of a conv (sizes the int16 runs).
#[cfg(target_arch = "x86_64")]
fn max_abs_code(codes: &[i32]) -> u32 {
    codes.iter().map(|c| c.unsigned_abs()).max().unwrap_or(0)
}

/// The reference for the pixels a fast kernel hands back.
fn reference_pixels(conv: &Conv2d, codes: &[i32], g: &Geometry, px: Range<usize>, out: &mut [u8]) {
    reference::conv2d_pixels(conv, codes, &g.d, g.x, g.residual, px, out)
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::int16_run;

    #[test]
    fn int16_runs_never_overflow() {
        for (amax, wmax) in [(0u8, 0u32), (3, 3), (255, 3), (255, 128), (1, 128), (7, 1)] {
            let n = int16_run(amax, wmax);
            assert!(n as u64 * amax.max(1) as u64 * wmax.max(1) as u64 <= i16::MAX as u64, "{amax} {wmax}");
            assert!((n + 1) as u64 * amax.max(1) as u64 * wmax.max(1) as u64 > i16::MAX as u64 || n == 1);
        }
        assert_eq!(int16_run(3, 3), 3640);
    }
}

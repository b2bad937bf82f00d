//! Portable SWAR kernels: a 2-bit conv as eight MACs per 64-bit multiply, in plain integer
//! Rust with no intrinsics, for CPUs without the x86 paths (ARM and RISC-V boards).
//!
//! With eight input codes in the bytes of a word `X` and eight weights `u ∈ {0..3}` in the
//! bytes of a word `T` in reverse order, byte 7 of `X·T` (mod 2^64) is `Σ_i X_i·u_i`: the
//! other products land in lower bytes or above bit 63. Products are at most 9, so after three
//! multiplies byte 7 holds at most 3·8·9 = 216 and every byte below at most 3·7·9 = 189: no
//! carry crosses a byte, and one shift collects 24 MACs. The signed weights are `c = 2u − 3`,
//! so `Σ c·x = 2·Σ u·x − 3·Σ x`. This needs every input code ≤ 3 (2-bit activations); an
//! 8-bit conv, or a 2-bit conv reading larger codes, runs the scalar reference.

use super::reference::{self, requantize};
use crate::engine::{Conv2d, ConvDims, ConvWeights, QTensor, Residual};
use std::ops::Range;

/// Products summed in a word before their byte 7 is collected (see the module docs).
const MULS_PER_FLUSH: usize = 3;
/// `Σ` of the eight bytes of a word lands in byte 7 of `word · ONES`.
const ONES: u64 = 0x0101_0101_0101_0101;

/// A conv's weights for this backend: the reference's codes (for the cases it hands back) and,
/// for 2-bit weights, each output channel's `u` as reversed bytes of whole words.
#[derive(Clone, Debug)]
pub struct ConvKernel {
    codes: Vec<i32>,
    words: usize,
    rows: Option<Vec<u64>>,
}

impl ConvKernel {
    pub fn new(conv: &Conv2d) -> ConvKernel {
        let codes = conv.weights.codes_i32();
        let k_len = conv.k_len();
        let words = k_len.div_ceil(8);
        let rows = matches!(conv.weights, ConvWeights::W2(_)).then(|| {
            let mut rows = vec![0u64; conv.weights.c_out() * words];
            for (row, c) in rows.chunks_exact_mut(words).zip(codes.chunks_exact(k_len)) {
                for (i, &code) in c.iter().enumerate() {
                    let u = ((code + 3) / 2) as u64;
                    row[i / 8] |= u << (8 * (7 - i % 8));
                }
            }
            rows
        });
        ConvKernel { codes, words, rows }
    }

    /// Output pixels `pixels` of a checked call into `out`, as [`reference::conv2d_pixels`].
    pub(super) fn run(&self, conv: &Conv2d, d: &ConvDims, x: &QTensor, residual: Option<&Residual>, pixels: Range<usize>, out: &mut [u8]) {
        let Some(rows) = self.rows.as_ref().filter(|_| x.data.iter().all(|&q| q <= 3)) else {
            return reference::conv2d_pixels(conv, &self.codes, d, x, residual, pixels, out);
        };
        let rq = &conv.requant;
        let mut bytes = vec![0u8; self.words * 8];
        let mut patch = vec![0u64; self.words];
        for (n, out_px) in pixels.zip(out.chunks_exact_mut(d.c_out)) {
            let (y, x_) = (n / d.wo, n % d.wo);
            gather(conv, x, y, x_, &mut bytes);
            for (w, b) in patch.iter_mut().zip(bytes.chunks_exact(8)) {
                *w = u64::from_le_bytes(b.try_into().expect("8 bytes"));
            }
            let sum_x: i32 = patch.iter().map(|&w| (w.wrapping_mul(ONES) >> 56) as i32).sum();
            for (o, q) in out_px.iter_mut().enumerate() {
                let (mut acc, mut m, mut b) = (0i32, 0, 0);
                if o < d.c_conv {
                    acc = 2 * dot(&rows[o * self.words..(o + 1) * self.words], &patch) - 3 * sum_x;
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
}

/// The receptive field of output pixel `(y, x_)` in reduction order `(ky, kx, c_in)`, zero in
/// the padding and past the last code.
fn gather(conv: &Conv2d, x: &QTensor, y: usize, x_: usize, bytes: &mut [u8]) {
    bytes.fill(0);
    for ky in 0..conv.k {
        let Some(iy) = (y * conv.stride + ky).checked_sub(conv.pad).filter(|&iy| iy < x.h) else { continue };
        for kx in 0..conv.k {
            let Some(ix) = (x_ * conv.stride + kx).checked_sub(conv.pad).filter(|&ix| ix < x.w) else { continue };
            let at = (ky * conv.k + kx) * conv.c_in;
            let from = (iy * x.w + ix) * x.c;
            bytes[at..at + conv.c_in].copy_from_slice(&x.data[from..from + conv.c_in]);
        }
    }
}

/// `Σ u·x` of one channel's weight words against the patch words.
fn dot(row: &[u64], patch: &[u64]) -> i32 {
    row.chunks(MULS_PER_FLUSH)
        .zip(patch.chunks(MULS_PER_FLUSH))
        .map(|(t, x)| {
            let f = t.iter().zip(x).fold(0u64, |f, (&t, &x)| f.wrapping_add(t.wrapping_mul(x)));
            (f >> 56) as i32
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_seven_of_the_product_is_the_dot_product_at_the_largest_codes() {
        // Three words of all-3 codes against all-3 weights: 24 products of 9, no carries.
        let x = u64::from_le_bytes([3; 8]);
        let t = u64::from_le_bytes([3; 8]);
        assert_eq!(dot(&[t; 3], &[x; 3]), 216);
        assert_eq!(dot(&[t; 7], &[x; 7]), 7 * 72);
        // Reversed pairing: byte i of x meets byte 7 - i of t.
        let x = u64::from_le_bytes([1, 2, 3, 0, 0, 0, 0, 0]);
        let t = u64::from_le_bytes([0, 0, 0, 0, 0, 3, 2, 1]);
        assert_eq!(dot(&[t], &[x]), 1 + 2 * 2 + 3 * 3);
    }
}

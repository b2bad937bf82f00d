//! Constants the C runtime's fast paths want in their own form, arranged at export time: dense
//! 2-bit weights in the order of the SWAR inner loop, and requantisation as threshold ladders.

use crate::engine::Requant;

/// Field (2-bit slot) of a packed word that holds code `r` (0..16) of its 16 in the C runtime's
/// dense 2-bit layout: the SWAR kernel masks `T_j = (word >> 2j) & 0x03030303`, whose byte `b`
/// must hold the weight of code `4j + 3 - b`, so that byte 3 of `X_j * T_j` (with `X_j` the
/// input's natural word of codes `4j..4j + 3`) is their 4-term dot product.
pub fn swar_field(r: usize) -> usize {
    4 * (3 - r % 4) + r / 4
}

/// A packed word (code `r` in bits `2r..2r + 1`) in the SWAR order of [`swar_field`].
pub fn swar_word(w: u32) -> u32 {
    (0..16).fold(0, |acc, r| acc | (((w >> (2 * r)) & 3) << (2 * swar_field(r))))
}

/// The most output levels a ladder serves (`qmax <= 7`), and the most shortcut codes.
const MAX_QMAX: u8 = 7;
const MAX_SHORTCUT_LEVELS: usize = 16;

/// The shortcut of a conv as its ladder needs it.
#[derive(Clone, Copy, Debug)]
pub struct LadderShortcut {
    /// Channels of the shortcut tensor (channels past it read code 0).
    pub channels: usize,
    /// The largest code of the shortcut tensor.
    pub qmax: u8,
    /// Its scale, in the conv's shift.
    pub r: i32,
}

/// The requantisation of a conv with `c_out` output channels (`requant` covers the first
/// `requant.m.len()`, the rest have no conv term) as threshold ladders: for every shortcut code
/// `sc` (one block when there is no shortcut) and channel `o`, `qmax + 1` int32 at
/// `((sc * c_out) + o) * (qmax + 1)`: a mask (`-1` where `m < 0`) and the thresholds
/// `t_1..t_qmax`, such that with `a = acc ^ mask` the output code is the number of `k` with
/// `a >= t_k`, exactly `clamp(floor((acc*m + sc*r + b + 2^(shift-1)) / 2^shift), 0, qmax)` for
/// every `|acc| <= acc_bound`. Thresholds are clamped to `±(acc_bound + 1)`, so they are int16.
///
/// `None` when a ladder does not serve: more than 8 levels, a shortcut with more than 16 codes,
/// or accumulators (at most `acc_bound` in magnitude) that int16 thresholds cannot separate.
pub fn ladder(requant: &Requant, c_out: usize, shortcut: Option<LadderShortcut>, acc_bound: u64) -> Option<Vec<i16>> {
    let qmax = requant.qmax;
    let levels = shortcut.map_or(1, |s| s.qmax as usize + 1);
    if qmax == 0 || qmax > MAX_QMAX || levels > MAX_SHORTCUT_LEVELS || acc_bound >= i16::MAX as u64 {
        return None;
    }
    let limit = acc_bound as i128 + 1;
    let mut out = Vec::with_capacity(levels * c_out * (qmax as usize + 1));
    for sc in 0..levels {
        for o in 0..c_out {
            let (m, b) = if o < requant.m.len() { (requant.m[o] as i128, requant.b[o] as i128) } else { (0, 0) };
            let sc_term = shortcut.filter(|s| o < s.channels).map_or(0, |s| sc as i128 * s.r as i128);
            let c = sc_term + b + requant.rounding() as i128;
            out.push(if m < 0 { -1 } else { 0 });
            for k in 1..=qmax as i128 {
                out.push(threshold((k << requant.shift) - c, m, limit));
            }
        }
    }
    Some(out)
}

/// The threshold of `acc * m >= d` on `acc` (`m > 0`), on `!acc` (`m < 0`), or a constant
/// verdict (`m == 0`), clamped to `±limit` (`|acc| < limit`).
fn threshold(d: i128, m: i128, limit: i128) -> i16 {
    let t = match m.signum() {
        1 => -floor_div(-d, m),
        -1 => -floor_div(d, m) - 1, // acc <= floor(d / m)  <=>  !acc >= !floor(d / m)
        _ if d <= 0 => -limit,
        _ => limit,
    };
    t.clamp(-limit, limit) as i16
}

fn floor_div(a: i128, b: i128) -> i128 {
    let q = a / b;
    if a % b != 0 && ((a < 0) != (b < 0)) {
        q - 1
    } else {
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Rng;

    /// The int64 requantisation of docs/quantization.md.
    fn requant_ref(acc: i64, m: i64, b: i64, sc: i64, shift: u32, qmax: u8) -> u8 {
        let v = acc * m + sc + b + if shift > 0 { 1 << (shift - 1) } else { 0 };
        v.div_euclid(1 << shift).clamp(0, qmax as i64) as u8
    }

    fn climb(rungs: &[i16], acc: i32) -> u8 {
        let a = acc ^ rungs[0] as i32;
        rungs[1..].iter().filter(|&&t| a >= t as i32).count() as u8
    }

    #[test]
    fn ladders_equal_the_requantisation() {
        let mut rng = Rng::new(29);
        let pick = |rng: &mut Rng, v: &[i32]| v[rng.below(v.len() as u64) as usize];
        for case in 0..400 {
            let shift = (case % 31) as u32;
            let qmax = [1u8, 3, 7][case % 3];
            let big = [i32::MIN, i32::MAX, -1, 0, 1, 1 << 20, -(1 << 20)];
            let draw = |rng: &mut Rng| if rng.below(3) == 0 { pick(rng, &big) } else { rng.below(1 << 24) as i32 - (1 << 23) };
            let c_conv = 3;
            let requant =
                Requant { m: (0..c_conv).map(|_| draw(&mut rng)).collect(), b: (0..c_conv).map(|_| draw(&mut rng)).collect(), shift, qmax };
            let sc = LadderShortcut { channels: 2, qmax: 3, r: draw(&mut rng) };
            let t = ladder(&requant, 4, Some(sc), 5184).expect("a ladder");
            let e = qmax as usize + 1;
            for s in 0..4usize {
                for o in 0..4 {
                    let rungs = &t[(s * 4 + o) * e..(s * 4 + o + 1) * e];
                    let (m, b) = if o < c_conv { (requant.m[o] as i64, requant.b[o] as i64) } else { (0, 0) };
                    let sct = if o < 2 { s as i64 * sc.r as i64 } else { 0 };
                    for acc in [-5184, -5183, -1, 0, 1, 5184, rng.below(10369) as i32 - 5184] {
                        assert_eq!(
                            climb(rungs, acc),
                            requant_ref(acc as i64, m, b, sct, shift, qmax),
                            "case {case} sc {s} o {o} acc {acc}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn ladders_refuse_what_they_cannot_serve() {
        let requant = Requant { m: vec![1], b: vec![0], shift: 0, qmax: 15 };
        assert!(ladder(&requant, 1, None, 100).is_none());
        let requant = Requant { qmax: 3, ..requant };
        assert!(ladder(&requant, 1, Some(LadderShortcut { channels: 1, qmax: 255, r: 1 }), 100).is_none());
        assert!(ladder(&requant, 1, None, 1 << 15).is_none());
        assert_eq!(ladder(&requant, 1, None, 100).unwrap(), vec![0, 1, 2, 3]);
        let requant = Requant { b: vec![1 << 20], ..requant }; // always qmax: clamped thresholds
        assert_eq!(ladder(&requant, 1, None, 100).unwrap(), vec![0, -101, -101, -101]);
    }

    #[test]
    fn swar_order_is_a_permutation() {
        let mut seen = [false; 16];
        for r in 0..16 {
            seen[swar_field(r)] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(swar_word(0b11 << 2), 0b11 << 16); // code 1: byte 2, field j = 0
    }
}

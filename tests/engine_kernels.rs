//! Engine kernels against the scalar reference (the definition in `docs/quantization.md`).
//!
//! One harness, [`check_conv`], runs every available backend × thread count on a case and
//! demands bit-exact equality with `reference::conv2d`. The shape sweep sits on the packing
//! and vector boundaries (channels around 8/16/32/64, reduction lengths around 4/16 codes).

mod common;

use common::{random_weights, spread_requant, Rng};
use nce::engine::cpu::{reference, Backend, Cpu};
use nce::engine::{
    pack_codes, unpack_codes, words_for, Conv2d, ConvWeights, EngineError, Linear, MaxPool2d, PackedW2, QTensor, Requant, Residual,
    Weights8,
};

/// Every backend on this machine with 1, 2 and 3 threads, plus a work-limited thread count.
fn cpus() -> Vec<Cpu> {
    Backend::available()
        .into_iter()
        .flat_map(|b| {
            let limited = Cpu::new(b, 3).unwrap().with_min_macs_per_thread(20_000);
            [1, 2, 3].map(|t| Cpu::new(b, t).unwrap()).into_iter().chain([limited])
        })
        .collect()
}

/// Runs `conv` on every CPU and compares with the reference; returns the reference output.
fn check_conv(what: &str, conv: &Conv2d, x: &QTensor, residual: Option<&Residual>) -> QTensor {
    let want = reference::conv2d(conv, x, residual).unwrap_or_else(|e| panic!("{what}: reference failed: {e}"));
    for cpu in cpus() {
        let p = cpu.prepare(conv).unwrap();
        let got = cpu.conv2d(&p, x, residual).unwrap_or_else(|e| panic!("{what}: {cpu:?} failed: {e}"));
        assert_eq!((got.h, got.w, got.c), (want.h, want.w, want.c), "{what}: {cpu:?} shape");
        if got.data != want.data {
            let i = got.data.iter().zip(&want.data).position(|(a, b)| a != b).unwrap();
            let (px, ch) = (i / want.c, i % want.c);
            panic!(
                "{what}: {cpu:?} differs at pixel ({}, {}) channel {ch}: got {}, want {}",
                px / want.w,
                px % want.w,
                got.data[i],
                want.data[i]
            );
        }
    }
    want
}

struct Case {
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    h: usize,
    w: usize,
    /// 8-bit weights (first conv) instead of 2-bit.
    w8: bool,
    /// Largest input code (3 for 2-bit activations, 255 for pixels).
    amax: u8,
    /// `(channels, stride)` of a residual.
    residual: Option<(usize, usize)>,
}

/// Random layer whose outputs spread over `0..=qmax` rather than all saturating.
fn random_conv(rng: &mut Rng, c: &Case) -> Conv2d {
    let k_len = c.k * c.k * c.c_in;
    let weights = random_weights(rng, c.c_out, k_len, c.w8, -127);
    let shift = rng.range(8, 24) as u32;
    let qmax = [1u8, 3, 3, 7, 15, 255][rng.below(6) as usize];
    let requant = spread_requant(rng, c.c_out, k_len, c.amax, c.w8, shift, qmax);
    Conv2d::new(c.c_in, c.k, c.stride, c.k / 2, weights, requant).unwrap()
}

fn run_case(rng: &mut Rng, c: &Case) {
    let conv = random_conv(rng, c);
    let x = QTensor::new(c.h, c.w, c.c_in, rng.codes_u8(c.h * c.w * c.c_in, c.amax)).unwrap();
    let (ho, wo) = ((c.h + 2 * (c.k / 2) - c.k) / c.stride + 1, (c.w + 2 * (c.k / 2) - c.k) / c.stride + 1);
    let res_t;
    let r_val = rng.range(0, 1 << (conv.requant.shift + 1)) as i32;
    let residual = match c.residual {
        Some((c_res, rs)) => {
            // Odd residual sizes too: ceil((2·ho − 1) / 2) == ho.
            let (hr, wr) = if rs == 1 { (ho, wo) } else { (ho * rs - (ho % 2), wo * rs - 1) };
            res_t = QTensor::new(hr, wr, c_res, rng.codes_u8(hr * wr * c_res, 3)).unwrap();
            Some(Residual { input: &res_t, stride: rs, r: r_val })
        }
        None => None,
    };
    let what = format!(
        "c_in {} c_out {} k {} s {} {}x{} w8 {} amax {} res {:?} shift {} qmax {}",
        c.c_in, c.c_out, c.k, c.stride, c.h, c.w, c.w8, c.amax, c.residual, conv.requant.shift, conv.requant.qmax
    );
    let out = check_conv(&what, &conv, &x, residual.as_ref());
    assert_eq!((out.h, out.w), (ho, wo), "{what}");
    assert_eq!(out.c, c.c_out.max(c.residual.map_or(0, |r| r.0)), "{what}");
}

const CHANNELS: [usize; 21] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 12, 24, 48];

#[test]
fn conv_w2_shape_sweep() {
    let mut rng = Rng::new(1);
    let mut n = 0;
    for (ii, &c_in) in CHANNELS.iter().take(18).enumerate() {
        for k in [1, 3] {
            for stride in [1, 2] {
                n += 1;
                let c_out = CHANNELS[(ii * 7 + k + stride * 3) % CHANNELS.len()];
                let (h, w) = [(7, 7), (9, 5), (5, 9), (8, 8)][n % 4];
                let residual = match n % 5 {
                    0 => None,
                    1 => Some((c_out, stride)),              // same width
                    2 => Some(((c_out / 2).max(1), stride)), // narrower: zero-padded channels
                    3 => Some((c_out * 2, stride)),          // wider: m = b = 0 channels
                    _ => Some((c_out + 1, 2 * stride)),      // subsampled more than the conv
                };
                run_case(&mut rng, &Case { c_in, c_out, k, stride, h, w, w8: false, amax: 3, residual });
            }
        }
    }
}

#[test]
fn conv_w2_output_channel_sweep() {
    let mut rng = Rng::new(2);
    for (i, &c_out) in CHANNELS.iter().enumerate() {
        let c_in = [16, 3, 17][i % 3];
        run_case(&mut rng, &Case { c_in, c_out, k: 3, stride: 1 + i % 2, h: 9, w: 5, w8: false, amax: 3, residual: None });
    }
}

#[test]
fn conv_w2_eight_bit_activations_flush_often() {
    // amax = 255 makes the int16 run only 21 steps long: many flushes per pixel.
    let mut rng = Rng::new(3);
    for (c_in, c_out, k, res) in [(65, 17, 3, None), (16, 32, 3, Some((32, 1))), (5, 9, 1, None), (33, 64, 3, Some((16, 1)))] {
        run_case(&mut rng, &Case { c_in, c_out, k, stride: 1, h: 7, w: 7, w8: false, amax: 255, residual: res });
    }
}

#[test]
fn conv_w8_first_layer() {
    let mut rng = Rng::new(4);
    for (i, c_in) in [1usize, 2, 3, 4, 5, 8, 16, 17].into_iter().enumerate() {
        for stride in [1, 2] {
            let c_out = [16, 1, 15, 17, 32, 33, 64, 9][i];
            let residual = if i == 5 { Some((c_out + 3, stride)) } else { None };
            run_case(&mut rng, &Case { c_in, c_out, k: 3, stride, h: 9, w: 7, w8: true, amax: 255, residual });
        }
    }
}

#[test]
fn conv_resnet20_shapes() {
    let mut rng = Rng::new(5);
    for (c_in, c_out, hw, stride) in [(16, 16, 32, 1), (16, 32, 32, 2), (32, 32, 16, 1), (32, 64, 16, 2), (64, 64, 8, 1)] {
        let residual = Some((c_in, stride)); // option A: the block input, subsampled
        run_case(&mut rng, &Case { c_in, c_out, k: 3, stride, h: hw, w: hw, w8: false, amax: 3, residual });
    }
    run_case(&mut rng, &Case { c_in: 3, c_out: 16, k: 3, stride: 1, h: 32, w: 32, w8: true, amax: 255, residual: None });
}

/// Each SIMD backend either runs in every case above (it is in [`cpus`]) or this test says on
/// stderr, past the harness's capture, that this CPU lacks it, so a skip is never silent.
#[test]
fn every_simd_backend_is_covered_or_reported() {
    use std::io::Write;
    for b in [Backend::Avx2, Backend::Avx512] {
        if b.is_available() {
            assert!(cpus().iter().any(|c| c.backend() == b), "{b} available but not tested");
        } else {
            let _ = writeln!(std::io::stderr(), "NOTE: {b} kernels not tested: this CPU lacks them");
        }
    }
}

#[test]
fn conv_wide_channel_groups() {
    // 48, 96 and 128 conv channels: AVX-512 groups of 1, 2 and 4 vectors, several groups each;
    // the shortcut narrower, equal and wider.
    let mut rng = Rng::new(6);
    for (c_in, c_out, stride, res) in
        [(16, 48, 1, Some((24, 1))), (32, 96, 2, Some((96, 2))), (64, 128, 1, Some((136, 1))), (8, 128, 1, None)]
    {
        run_case(&mut rng, &Case { c_in, c_out, k: 3, stride, h: 9, w: 7, w8: false, amax: 3, residual: res });
    }
    run_case(&mut rng, &Case { c_in: 3, c_out: 128, k: 3, stride: 1, h: 8, w: 9, w8: true, amax: 255, residual: None });
}

#[test]
fn int16_accumulator_is_flushed_before_overflow() {
    // All codes 3 and all weights +3 (or −3): every int16 step adds 18 per lane; a 3×3×1000
    // reduction is 2250 steps (> 1820), so a missing flush would wrap.
    for sign in [3i8, -3] {
        let (c_in, c_out, k_len) = (1000, 17, 9000);
        let w = PackedW2::pack(c_out, k_len, &vec![sign; c_out * k_len]).unwrap();
        let rq = Requant { m: vec![1; c_out], b: vec![0; c_out], shift: 8, qmax: 255 };
        let conv = Conv2d::new(c_in, 3, 1, 1, ConvWeights::W2(w), rq).unwrap();
        let x = QTensor::new(3, 3, c_in, vec![3; 9 * c_in]).unwrap();
        let out = check_conv("flush", &conv, &x, None);
        // Centre pixel: acc = ±9·1000·9 = ±81000 → (81000 + 128) >> 8 = 316 → 255; negative → 0.
        assert_eq!(out.at(1, 1, 0), if sign > 0 { 255 } else { 0 });
        // With m = 1/256 of that the centre is exact: use shift 10 → (81000 + 512) >> 10 = 79.
        let mut conv2 = conv.clone();
        conv2.requant.shift = 10;
        let out = check_conv("flush exact", &conv2, &x, None);
        if sign > 0 {
            assert_eq!(out.at(1, 1, 16), 79);
            assert_eq!(out.at(0, 0, 0), ((9 * 4 * 1000 + 512) >> 10) as u8); // corner: 4 taps
        }
    }
}

#[test]
fn long_pointwise_reductions_are_widened_before_overflow() {
    // A 1×1 conv over 7,500 channels at the largest codes: 2,500 steps of 27 per 16-bit lane in
    // the portable kernel's single kernel row (more than it may take before widening) and
    // ±67,500 per output, past any 16-bit sum.
    for sign in [3i8, -3] {
        let (c_in, c_out) = (7500, 3);
        let w = PackedW2::pack(c_out, c_in, &vec![sign; c_out * c_in]).unwrap();
        let rq = Requant { m: vec![1; c_out], b: vec![0; c_out], shift: 9, qmax: 255 };
        let conv = Conv2d::new(c_in, 1, 1, 0, ConvWeights::W2(w), rq).unwrap();
        let x = QTensor::new(1, 2, c_in, vec![3; 2 * c_in]).unwrap();
        let out = check_conv("long 1×1", &conv, &x, None);
        assert_eq!(out.at(0, 1, 2), if sign > 0 { ((67_500 + 256) >> 9) as u8 } else { 0 });
    }
}

#[test]
fn int16_accumulator_is_flushed_for_eight_bit_codes() {
    // Codes 255 with weights +3: 1530 per int16 lane and step, 36 steps per pixel (3×3×16):
    // only the 21-step flush interval keeps this exact.
    let (c_in, c_out, k_len) = (16, 16, 144);
    let w = PackedW2::pack(c_out, k_len, &vec![3; c_out * k_len]).unwrap();
    let rq = Requant { m: vec![1; c_out], b: vec![0; c_out], shift: 10, qmax: 255 };
    let conv = Conv2d::new(c_in, 3, 1, 1, ConvWeights::W2(w), rq).unwrap();
    let x = QTensor::new(4, 4, c_in, vec![255; 16 * c_in]).unwrap();
    let out = check_conv("flush 8-bit codes", &conv, &x, None);
    assert_eq!(out.at(1, 1, 5), ((255 * 3 * 144 + 512) >> 10) as u8); // 110160 → 108
}

#[test]
fn padding_bits_are_ignored() {
    let mut rng = Rng::new(6);
    let (c_out, c_in) = (5, 3); // k_len 27: 2 words per channel, 5 codes of padding
    let codes: Vec<i8> = (0..c_out * 27).map(|_| rng.code2()).collect();
    let clean = PackedW2::pack(c_out, 27, &codes).unwrap();
    let mut dirty = clean.clone();
    for o in 0..c_out {
        dirty.words[o * 2 + 1] |= 0xffff_ffff << (2 * (27 - 16));
    }
    assert_eq!(dirty.unpack(), codes);
    let rq = Requant { m: vec![300; c_out], b: vec![-100; c_out], shift: 10, qmax: 3 };
    let x = QTensor::new(5, 5, c_in, rng.codes_u8(75, 3)).unwrap();
    let a = check_conv("clean", &Conv2d::new(c_in, 3, 1, 1, ConvWeights::W2(clean), rq.clone()).unwrap(), &x, None);
    let b = check_conv("dirty", &Conv2d::new(c_in, 3, 1, 1, ConvWeights::W2(dirty), rq).unwrap(), &x, None);
    assert_eq!(a, b);
}

/// A 1×1 conv over one channel with weight code +1: `acc` equals the input code, so the
/// epilogue sees exactly the values the test chooses.
fn identity_conv(m: i32, b: i32, shift: u32, qmax: u8, c_out: usize) -> Conv2d {
    let w = PackedW2::pack(c_out, 1, &vec![1; c_out]).unwrap();
    Conv2d::new(1, 1, 1, 0, ConvWeights::W2(w), Requant { m: vec![m; c_out], b: vec![b; c_out], shift, qmax }).unwrap()
}

fn ramp(n: usize, max: u8) -> QTensor {
    QTensor::new(1, n, 1, (0..n).map(|i| (i % (max as usize + 1)) as u8).collect()).unwrap()
}

#[test]
fn requant_rounding_ties_round_up() {
    // acc·m + b = a·2^(s−1) with s = 4: odd a are exact ties at .5 and must round up
    // (floor(x + ½)); even a are exact.
    let s = 4;
    let conv = identity_conv(1 << (s - 1), 0, s, 255, 3);
    let x = ramp(256, 255);
    let out = check_conv("ties", &conv, &x, None);
    for a in 0..256usize {
        let want = a.div_ceil(2); // a/2 rounded half up
        assert_eq!(out.data[a * 3] as usize, want.min(255), "a = {a}");
    }
    // Decreasing slope: value = 255 − a/2, so odd a are ties and round up (towards +∞):
    // q = 255 − ⌊a/2⌋.
    let conv = identity_conv(-(1 << (s - 1)), 255 << s, s, 255, 1);
    let out = check_conv("falling ties", &conv, &x, None);
    for a in 0..256usize {
        assert_eq!(out.data[a] as usize, 255 - a / 2, "a = {a}");
    }
    // A tie at exactly −½ rounds to 0; −3/2 rounds to −1 and clamps to 0.
    let conv = identity_conv(-(1 << (s - 1)), 0, s, 255, 1);
    let out = check_conv("negative ties", &conv, &ramp(4, 3), None);
    assert_eq!(out.data, vec![0, 0, 0, 0]);
    let conv = identity_conv(-(1 << (s - 1)), 1 << s, s, 255, 1); // 1 − a/2
    let out = check_conv("ties near zero", &conv, &ramp(4, 3), None);
    assert_eq!(out.data, vec![1, 1, 0, 0]); // 1, ½ → 1, 0, −½ → 0
}

#[test]
fn requant_shift_zero_adds_no_rounding() {
    let conv = identity_conv(2, -1, 0, 255, 9);
    let out = check_conv("shift 0", &conv, &ramp(200, 255), None);
    for a in 0..200usize {
        assert_eq!(out.data[a * 9] as i64, (2 * a as i64 - 1).clamp(0, 255));
    }
    // Residual with shift 0: q = clamp(acc·m + q_sc·r + b).
    let res = QTensor::new(1, 200, 20, (0..4000).map(|i| (i % 4) as u8).collect()).unwrap();
    let r = Residual { input: &res, stride: 1, r: 5 };
    let out = check_conv("shift 0 residual", &conv, &ramp(200, 255), Some(&r));
    for a in 0..200usize {
        for ch in 0..20 {
            let (mut want, q) = (0i64, res.data[a * 20 + ch] as i64);
            if ch < 9 {
                want += 2 * a as i64 - 1;
            }
            want += 5 * q;
            assert_eq!(out.data[a * 20 + ch] as i64, want.clamp(0, 255), "a {a} ch {ch}");
        }
    }
}

#[test]
fn requant_saturates_at_zero_and_qmax() {
    for qmax in [1u8, 3, 15, 255] {
        let hi = check_conv("sat hi", &identity_conv(1 << 20, 0, 8, qmax, 17), &ramp(64, 255), None);
        assert!(hi.data.chunks(17).skip(1).all(|p| p.iter().all(|&q| q == qmax)));
        assert!(hi.data[..17].iter().all(|&q| q == 0));
        let lo = check_conv("sat lo", &identity_conv(-(1 << 20), 1 << 9, 8, qmax, 17), &ramp(64, 255), None);
        assert!(lo.data[..17].iter().all(|&q| q == 2.min(qmax))); // acc 0: (512 + 128) >> 8 = 2
        assert!(lo.data[17..].iter().all(|&q| q == 0));
    }
}

#[test]
fn requant_extreme_multipliers_without_shortcut() {
    // Small qmax and no shortcut: the AVX-512 path counts thresholds solved in i128; these
    // multipliers, biases and shifts push them past the int32 range both ways.
    let mut rng = Rng::new(8);
    let ms = [i32::MAX, i32::MIN, 0, 1, -1, i32::MIN + 1, 3, -3];
    for &(b, shift) in &[(i32::MIN, 0u32), (i32::MAX, 0), (0, 62), (-12345, 31), (1 << 30, 20), (0, 1)] {
        for (qmax, w8) in [(1u8, false), (3, false), (7, true), (3, true)] {
            let c = Case { c_in: 16, c_out: 24, k: 3, stride: 1, h: 5, w: 5, w8, amax: 255, residual: None };
            let mut conv = random_conv(&mut rng, &c);
            conv.requant.m.iter_mut().enumerate().for_each(|(i, v)| *v = ms[i % ms.len()]);
            conv.requant.b.iter_mut().enumerate().for_each(|(i, v)| *v = if i % 3 == 0 { b } else { b / 7 });
            (conv.requant.shift, conv.requant.qmax) = (shift, qmax);
            let x = QTensor::new(5, 5, 16, rng.codes_u8(25 * 16, 255)).unwrap();
            check_conv(&format!("b {b} shift {shift} qmax {qmax}"), &conv, &x, None);
        }
    }
}

#[test]
fn requant_extreme_multipliers() {
    // |m| near 2^31 with large accumulators: the products need the full int64 range.
    let mut rng = Rng::new(7);
    for &(m, b, shift) in &[
        (i32::MAX, i32::MIN, 30u32),
        (i32::MIN, i32::MAX, 30),
        (i32::MAX, 0, 62),
        (i32::MIN + 1, 12345, 31),
        (i32::MAX - 7, -(1 << 30), 40),
        (1 << 30, 1 << 29, 0),
    ] {
        for w8 in [false, true] {
            let c = Case { c_in: 64, c_out: 24, k: 3, stride: 1, h: 5, w: 5, w8, amax: 255, residual: Some((32, 1)) };
            let mut conv = random_conv(&mut rng, &c);
            conv.requant.m.iter_mut().enumerate().for_each(|(i, v)| *v = if i % 2 == 0 { m } else { m / 3 });
            conv.requant.b.iter_mut().for_each(|v| *v = b);
            conv.requant.shift = shift;
            conv.requant.qmax = 255;
            let x = QTensor::new(5, 5, 64, rng.codes_u8(25 * 64, 255)).unwrap();
            let res = QTensor::new(5, 5, 32, rng.codes_u8(25 * 32, 255)).unwrap();
            for r in [0, i32::MAX, i32::MIN] {
                check_conv(&format!("m {m} b {b} shift {shift} r {r}"), &conv, &x, Some(&Residual { input: &res, stride: 1, r }));
            }
        }
    }
    // Hand value: acc = 255·3 = 765 (1×1, code +3, input 255), m = 2^31 − 1, shift 40.
    let w = PackedW2::pack(1, 1, &[3]).unwrap();
    let conv = Conv2d::new(1, 1, 1, 0, ConvWeights::W2(w), Requant { m: vec![i32::MAX], b: vec![0], shift: 40, qmax: 255 }).unwrap();
    let out = check_conv("hand", &conv, &QTensor::new(1, 1, 1, vec![255]).unwrap(), None);
    let v = 765i64 * i32::MAX as i64 + (1 << 39);
    assert_eq!(out.data[0] as i64, (v >> 40).clamp(0, 255));
    assert_eq!(out.data[0], 1); // 765·2^31/2^40 ≈ 1.49 → 1
}

#[test]
fn reference_conv_by_hand() {
    // 3×3 input, one channel, 3×3 kernel of +1 with padding 1: acc = sum of the neighbourhood.
    let w = PackedW2::pack(1, 9, &[1; 9]).unwrap();
    let conv = Conv2d::new(1, 3, 1, 1, ConvWeights::W2(w), Requant { m: vec![1], b: vec![0], shift: 0, qmax: 255 }).unwrap();
    let x = QTensor::new(3, 3, 1, vec![1, 2, 3, 0, 1, 0, 3, 2, 1]).unwrap();
    let out = check_conv("hand 3x3", &conv, &x, None);
    assert_eq!(out.data, vec![4, 7, 6, 9, 13, 9, 6, 7, 4]);
    // Stride 2 keeps the corners; residual of 2 channels (wider), r = 2.
    let conv2 = Conv2d { stride: 2, ..conv.clone() };
    let res = QTensor::new(2, 2, 2, vec![1, 0, 2, 3, 0, 1, 3, 3]).unwrap();
    let out = check_conv("hand s2 res", &conv2, &x, Some(&Residual { input: &res, stride: 1, r: 2 }));
    assert_eq!(out.data, vec![4 + 2, 0, 6 + 4, 6, 6, 2, 4 + 6, 6]);
}

#[test]
fn pack_unpack_round_trip() {
    let mut rng = Rng::new(8);
    for len in 1..=70 {
        let codes: Vec<i8> = (0..len).map(|_| rng.code2()).collect();
        let words = pack_codes(&codes).unwrap();
        assert_eq!(words.len(), words_for(len));
        assert_eq!(words.len(), len.div_ceil(16));
        assert_eq!(unpack_codes(&words, len).unwrap(), codes, "len {len}");
        // Padding codes are u = 0.
        if len % 16 != 0 {
            assert_eq!(words.last().unwrap() >> (2 * (len % 16)), 0);
        }
        let c_out = 1 + len % 4;
        let all: Vec<i8> = (0..c_out * len).map(|_| rng.code2()).collect();
        let p = PackedW2::pack(c_out, len, &all).unwrap();
        assert_eq!(p.words.len(), c_out * words_for(len));
        assert_eq!(p.unpack(), all);
        assert_eq!(PackedW2::from_words(c_out, len, p.words.clone()).unwrap(), p);
    }
    // Bit layout: code i in bits 2i..2i+2, u = (c + 3) / 2.
    assert_eq!(pack_codes(&[-3, -1, 1, 3]).unwrap(), vec![0b11_10_01_00]);
    let mut c = vec![-3i8; 17];
    c[15] = 3;
    c[16] = -1;
    assert_eq!(pack_codes(&c).unwrap(), vec![3 << 30, 1]);
    assert_eq!(pack_codes(&[0]), Err(EngineError::BadCode(0)));
    assert_eq!(pack_codes(&[2]), Err(EngineError::BadCode(2)));
    assert!(unpack_codes(&[0, 0], 16).is_err());
}

#[test]
fn global_avg_pool_sums() {
    let x = QTensor::new(2, 2, 3, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 255]).unwrap();
    for cpu in cpus() {
        assert_eq!(cpu.global_avg_pool(&x).unwrap(), vec![22, 26, 273]);
    }
}

#[test]
fn linear_logits() {
    // w = [[1, -2, 3], [-127, 0, 127]], x = [10, 20, 30], bias = [5, -5]
    let l = Linear::new(Weights8::new(2, 3, vec![1, -2, 3, -127, 0, 127]).unwrap(), vec![5, -5]).unwrap();
    for cpu in cpus() {
        assert_eq!(cpu.linear(&l, &[10, 20, 30]).unwrap(), vec![10 - 40 + 90 + 5, -1270 + 3810 - 5]);
        assert!(matches!(cpu.linear(&l, &[1, 2]), Err(EngineError::Mismatch { .. })));
    }
    // A logit outside int32 is an error, not a wrap.
    let l = Linear::new(Weights8::new(1, 2, vec![127, 127]).unwrap(), vec![0]).unwrap();
    assert!(matches!(reference::linear(&l, &[i32::MAX, i32::MAX]), Err(EngineError::Overflow(_))));
}

#[test]
fn max_pool_by_hand() {
    // 4×4 single channel, values 0..16 in raster order; second channel reversed.
    let data: Vec<u8> = (0..16u8).flat_map(|v| [v, 15 - v]).collect();
    let x = QTensor::new(4, 4, 2, data).unwrap();
    for cpu in cpus() {
        let p = cpu.max_pool(&MaxPool2d { k: 2, stride: 2, pad: 0 }, &x).unwrap();
        assert_eq!((p.h, p.w, p.c), (2, 2, 2));
        assert_eq!(p.data, vec![5, 15, 7, 13, 13, 7, 15, 5]);
        // 3×3 / 2 / pad 1 (the ImageNet stem): windows clipped at the border.
        let p = cpu.max_pool(&MaxPool2d { k: 3, stride: 2, pad: 1 }, &x).unwrap();
        assert_eq!(p.data, vec![5, 15, 7, 14, 13, 11, 15, 10]);
        assert!(cpu.max_pool(&MaxPool2d { k: 2, stride: 2, pad: 2 }, &x).is_err());
    }
}

#[test]
fn dimension_errors_are_typed() {
    let conv = identity_conv(1, 0, 0, 3, 4);
    let cpu = Cpu::best(2);
    let p = cpu.prepare(&conv).unwrap();
    let x2 = QTensor::zeros(3, 3, 2);
    assert!(matches!(cpu.conv2d(&p, &x2, None), Err(EngineError::Mismatch { what, .. }) if what.contains("input channels")));
    let x = QTensor::zeros(4, 4, 1);
    let bad_res = QTensor::zeros(3, 4, 4);
    let r = Residual { input: &bad_res, stride: 1, r: 1 };
    assert!(matches!(cpu.conv2d(&p, &x, Some(&r)), Err(EngineError::Mismatch { .. })));
    assert!(cpu.conv2d(&p, &x, Some(&Residual { input: &bad_res, stride: 0, r: 1 })).is_err());
    assert!(QTensor::new(2, 2, 2, vec![0; 7]).is_err());
    assert!(QTensor::new(0, 2, 2, vec![]).is_err());
    let mut broken = x.clone();
    broken.data.pop();
    assert!(cpu.conv2d(&p, &broken, None).is_err());
    // Layer inconsistencies.
    let mut c = conv.clone();
    c.requant.m.pop();
    assert!(matches!(cpu.prepare(&c), Err(EngineError::Mismatch { .. })));
    let mut c = conv.clone();
    c.c_in = 2;
    assert!(cpu.prepare(&c).is_err());
    let mut c = conv.clone();
    c.requant.shift = 63;
    assert!(cpu.prepare(&c).is_err());
    assert!(PackedW2::from_words(2, 17, vec![0; 3]).is_err());
    assert!(Cpu::new(Backend::Scalar, 0).is_err());
    // 8-bit reduction long enough to overflow int32 in the worst case.
    let k_len = 3 * 3 * 8000;
    let w = Weights8::new(1, k_len, vec![0; k_len]).unwrap();
    let c = Conv2d::new(8000, 3, 1, 1, ConvWeights::W8(w), Requant { m: vec![1], b: vec![0], shift: 0, qmax: 3 });
    assert!(matches!(c, Err(EngineError::Overflow(_))));
    // Prepared for one backend, run on another.
    if Backend::available().len() > 1 {
        let other = Cpu::new(Backend::Scalar, 1).unwrap();
        assert!(matches!(other.conv2d(&p, &x, None), Err(EngineError::BackendMismatch { .. })));
    }
}

#[test]
fn kernel_larger_than_input_is_an_error() {
    let w = PackedW2::pack(1, 9, &[1; 9]).unwrap();
    let conv = Conv2d::new(1, 3, 1, 0, ConvWeights::W2(w), Requant { m: vec![1], b: vec![0], shift: 0, qmax: 3 }).unwrap();
    let x = QTensor::zeros(2, 5, 1);
    for cpu in cpus() {
        assert!(matches!(cpu.conv2d_once(&conv, &x, None), Err(EngineError::Invalid { .. })));
    }
}

/// A depthwise layer (`groups == c_in == c_out == c`) and its call.
struct DwCase {
    c: usize,
    k: usize,
    stride: usize,
    pad: usize,
    h: usize,
    w: usize,
    /// 8-bit weights instead of 2-bit.
    w8: bool,
    /// Largest input code.
    amax: u8,
    /// `(channels, stride)` of a residual.
    residual: Option<(usize, usize)>,
}

/// Random depthwise layer whose outputs spread over `0..=qmax`.
fn random_dw(rng: &mut Rng, c: &DwCase) -> Conv2d {
    let k_len = c.k * c.k;
    let weights = random_weights(rng, c.c, k_len, c.w8, -128);
    let shift = rng.range(8, 24) as u32;
    let qmax = [1u8, 3, 3, 7, 15, 255][rng.below(6) as usize];
    let requant = spread_requant(rng, c.c, k_len, c.amax, c.w8, shift, qmax);
    Conv2d::grouped(c.c, c.c, c.k, c.stride, c.pad, weights, requant).unwrap()
}

/// A residual tensor for an `ho×wo` output read with stride `rs` (odd sizes when `rs > 1`).
fn residual_tensor(rng: &mut Rng, ho: usize, wo: usize, c_res: usize, rs: usize, amax: u8) -> QTensor {
    let (hr, wr) = if rs == 1 { (ho, wo) } else { (ho * rs - (ho % 2), wo * rs - 1) };
    rng.tensor(hr, wr, c_res, amax)
}

fn run_dw_case(rng: &mut Rng, c: &DwCase) {
    let conv = random_dw(rng, c);
    assert_eq!(conv.is_depthwise(), c.c > 1); // one channel: a dense conv
    let x = rng.tensor(c.h, c.w, c.c, c.amax);
    let (ho, wo) = ((c.h + 2 * c.pad - c.k) / c.stride + 1, (c.w + 2 * c.pad - c.k) / c.stride + 1);
    let r_val = rng.range(0, 1 << (conv.requant.shift + 1)) as i32;
    let res_t = c.residual.map(|(c_res, rs)| (residual_tensor(rng, ho, wo, c_res, rs, 3), rs));
    let residual = res_t.as_ref().map(|(t, rs)| Residual { input: t, stride: *rs, r: r_val });
    let what = format!(
        "depthwise c {} k {} s {} pad {} {}x{} w8 {} amax {} res {:?} shift {} qmax {}",
        c.c, c.k, c.stride, c.pad, c.h, c.w, c.w8, c.amax, c.residual, conv.requant.shift, conv.requant.qmax
    );
    let out = check_conv(&what, &conv, &x, residual.as_ref());
    assert_eq!((out.h, out.w, out.c), (ho, wo, c.c.max(c.residual.map_or(0, |r| r.0))), "{what}");
}

const DW_CHANNELS: [usize; 6] = [1, 3, 17, 33, 64, 144];

#[test]
fn depthwise_shape_sweep() {
    let mut rng = Rng::new(20);
    let mut n = 0;
    for &c in &DW_CHANNELS {
        for (h, w) in [(7, 5), (1, 1), (3, 9)] {
            for stride in [1, 2] {
                n += 1;
                let residual = match n % 5 {
                    0 => None,
                    1 => Some((c, 1)),              // same width
                    2 => Some(((c / 2).max(1), 1)), // narrower: zero-padded channels
                    3 => Some((c + 17, 1)),         // wider: m = b = 0 channels
                    _ => Some((c.max(2) - 1, 2)),   // subsampled
                };
                run_dw_case(&mut rng, &DwCase { c, k: 3, stride, pad: 1, h, w, w8: false, amax: 3, residual });
            }
        }
    }
}

#[test]
fn depthwise_kernel_sizes_and_padding() {
    let mut rng = Rng::new(21);
    for (i, &(k, pad)) in [(1, 0), (2, 0), (2, 1), (3, 0), (3, 2), (5, 2), (5, 0), (7, 3), (4, 4)].iter().enumerate() {
        for stride in [1, 2, 3] {
            let c = DW_CHANNELS[(i + stride) % DW_CHANNELS.len()];
            let (h, w) = [(7, 5), (3, 9), (8, 8)][(i + stride) % 3];
            if h + 2 * pad < k || w + 2 * pad < k {
                continue;
            }
            run_dw_case(&mut rng, &DwCase { c, k, stride, pad, h, w, w8: false, amax: 3, residual: None });
        }
    }
}

#[test]
fn depthwise_eight_bit_codes_and_weights() {
    // 8-bit inputs shorten the int16 runs (42 taps for 2-bit weights, 1 for 8-bit ones).
    let mut rng = Rng::new(22);
    for (c, k, stride, w8, res) in [
        (17, 3, 1, false, None),
        (33, 7, 2, false, Some((33, 2))),
        (64, 3, 1, true, None),
        (3, 5, 2, true, Some((4, 1))),
        (144, 3, 2, true, None),
    ] {
        run_dw_case(&mut rng, &DwCase { c, k, stride, pad: k / 2, h: 7, w: 5, w8, amax: 255, residual: res });
    }
}

#[test]
fn depthwise_int16_runs_are_widened_before_overflow() {
    // Every product at its largest: 255·(±3) over 7·7 = 49 taps (int16 run 42), −128·255 over 9
    // taps (run 1), and 3·3 over 61·61 = 3721 taps (run 3640).
    for (c, k, pad, code, w8, hw, amax) in [
        (17usize, 7usize, 3usize, 3i8, false, 7usize, 255u8),
        (17, 7, 3, -3, false, 7, 255),
        (33, 3, 1, -128, true, 5, 255),
        (33, 3, 1, 127, true, 5, 255),
        (17, 61, 0, 3, false, 61, 3),
    ] {
        let k_len = k * k;
        let weights = if w8 {
            ConvWeights::W8(Weights8::new(c, k_len, vec![code; c * k_len]).unwrap())
        } else {
            ConvWeights::W2(PackedW2::pack(c, k_len, &vec![code; c * k_len]).unwrap())
        };
        let rq = Requant { m: vec![1; c], b: vec![0; c], shift: 12, qmax: 255 };
        let conv = Conv2d::grouped(c, c, k, 1, pad, weights, rq).unwrap();
        let x = QTensor::new(hw, hw, c, vec![amax; hw * hw * c]).unwrap();
        let out = check_conv(&format!("overflow k {k} code {code}"), &conv, &x, None);
        // The centre pixel sees every tap: acc = k²·amax·code.
        let centre = (hw + 2 * pad - k) / 2;
        let acc = (k_len * amax as usize) as i64 * code as i64;
        let want = ((acc + (1 << 11)) >> 12).clamp(0, 255) as u8;
        assert_eq!(out.at(centre, centre, c - 1), want, "k {k} code {code}");
        assert!(code < 0 || want > 0, "the test must produce a non-zero code");
    }
}

/// A 1×1 depthwise conv with weight code +1: `acc` equals the input code, channel by channel.
fn identity_dw(m: i32, b: i32, shift: u32, qmax: u8, c: usize) -> Conv2d {
    let w = PackedW2::pack(c, 1, &vec![1; c]).unwrap();
    Conv2d::grouped(c, c, 1, 1, 0, ConvWeights::W2(w), Requant { m: vec![m; c], b: vec![b; c], shift, qmax }).unwrap()
}

/// `n` pixels of `c` channels, pixel `i` holding code `i % (max + 1)` in every channel.
fn ramp_c(n: usize, c: usize, max: u8) -> QTensor {
    QTensor::new(1, n, c, (0..n * c).map(|i| ((i / c) % (max as usize + 1)) as u8).collect()).unwrap()
}

#[test]
fn depthwise_requant_ties_shift_zero_and_saturation() {
    for c in [1, 17, 33] {
        let x = ramp_c(256, c, 255);
        let out = check_conv("dw ties", &identity_dw(1 << 3, 0, 4, 255, c), &x, None);
        for a in 0..256usize {
            assert!(out.pixel(0, a).iter().all(|&q| q as usize == a.div_ceil(2)), "a = {a}");
        }
        let out = check_conv("dw shift 0", &identity_dw(2, -1, 0, 255, c), &x, None);
        for a in 0..256usize {
            assert!(out.pixel(0, a).iter().all(|&q| q as i64 == (2 * a as i64 - 1).clamp(0, 255)), "a = {a}");
        }
        let res = QTensor::new(1, 256, c + 5, (0..256 * (c + 5)).map(|i| (i % 4) as u8).collect()).unwrap();
        let r = Residual { input: &res, stride: 1, r: 5 };
        let out = check_conv("dw shift 0 residual", &identity_dw(2, -1, 0, 255, c), &x, Some(&r));
        assert_eq!(out.c, c + 5);
        for a in 0..256usize {
            for ch in 0..c + 5 {
                let conv_part = if ch < c { 2 * a as i64 - 1 } else { 0 };
                let want = (conv_part + 5 * res.at(0, a, ch) as i64).clamp(0, 255);
                assert_eq!(out.at(0, a, ch) as i64, want, "a {a} ch {ch}");
            }
        }
        for qmax in [1u8, 3, 255] {
            let hi = check_conv("dw sat hi", &identity_dw(1 << 20, 0, 8, qmax, c), &x, None);
            assert!(hi.data[c..].iter().all(|&q| q == qmax) && hi.data[..c].iter().all(|&q| q == 0));
            let lo = check_conv("dw sat lo", &identity_dw(-(1 << 20), 1 << 9, 8, qmax, c), &x, None);
            assert!(lo.data[..c].iter().all(|&q| q == 2.min(qmax)) && lo.data[c..].iter().all(|&q| q == 0));
        }
    }
}

#[test]
fn depthwise_requant_extreme_multipliers() {
    // |m| near 2^31, shifts 0 to 62, biases at the int32 ends: the int64 epilogue path.
    let mut rng = Rng::new(23);
    for &(m, b, shift) in &[
        (i32::MAX, i32::MIN, 30u32),
        (i32::MIN, i32::MAX, 30),
        (i32::MAX, 0, 62),
        (i32::MIN + 1, 12345, 31),
        (1 << 30, 1 << 29, 0),
        (-3, i32::MAX, 0),
    ] {
        for (w8, c) in [(false, 33), (true, 17)] {
            let case = DwCase { c, k: 3, stride: 1, pad: 1, h: 5, w: 3, w8, amax: 255, residual: None };
            let mut conv = random_dw(&mut rng, &case);
            conv.requant.m.iter_mut().enumerate().for_each(|(i, v)| *v = if i % 2 == 0 { m } else { m / 3 });
            conv.requant.b.iter_mut().for_each(|v| *v = b);
            (conv.requant.shift, conv.requant.qmax) = (shift, [255, 3][c % 2]);
            let x = rng.tensor(5, 3, c, 255);
            let res = rng.tensor(5, 3, c + 3, 255);
            check_conv(&format!("dw m {m} b {b} shift {shift}"), &conv, &x, None);
            for r in [0, i32::MAX, i32::MIN] {
                let what = format!("dw m {m} b {b} shift {shift} r {r}");
                check_conv(&what, &conv, &x, Some(&Residual { input: &res, stride: 1, r }));
            }
        }
    }
}

#[test]
fn depthwise_mobilenet_v2_shapes() {
    // 144 channels at 14×14 (stride 1 and 2), 96 at 15×15 stride 2, 2-bit codes in and out.
    let mut rng = Rng::new(24);
    for (c, hw, stride) in [(144, 14, 1), (144, 14, 2), (96, 15, 2), (32, 16, 1)] {
        run_dw_case(&mut rng, &DwCase { c, k: 3, stride, pad: 1, h: hw, w: hw, w8: false, amax: 3, residual: None });
    }
}

#[test]
fn grouped_convs_match_the_reference() {
    // 1 < groups < c_in, and groups == c_in with a channel multiplier of 2 (not depthwise):
    // the reference on every backend.
    let mut rng = Rng::new(25);
    for (c_in, groups, c_out, k, stride) in [(8, 2, 8, 3, 1), (6, 3, 12, 3, 2), (16, 4, 8, 1, 1), (5, 5, 10, 3, 1)] {
        let k_len = k * k * c_in / groups;
        let weights = random_weights(&mut rng, c_out, k_len, false, -127);
        let requant = spread_requant(&mut rng, c_out, k_len, 3, false, 12, 3);
        let conv = Conv2d::grouped(c_in, groups, k, stride, k / 2, weights, requant).unwrap();
        assert!(!conv.is_depthwise());
        let x = rng.tensor(7, 5, c_in, 3);
        check_conv(&format!("grouped {c_in}/{groups}->{c_out}"), &conv, &x, None);
    }
}

/// Which kernel `prepare` picked, read from the prepared conv's `Debug` form.
fn kernel_of(cpu: &Cpu, conv: &Conv2d) -> String {
    let p = format!("{:?}", cpu.prepare(conv).unwrap());
    let at = p.find("kernel: ").expect("PreparedConv prints its kernel") + 8;
    p[at..].split('(').next().unwrap().to_string()
}

#[test]
fn fast_backends_route_depthwise_and_pointwise_convs_to_their_kernels() {
    let mut rng = Rng::new(26);
    let dw = |rng: &mut Rng, w8| random_dw(rng, &DwCase { c: 17, k: 3, stride: 1, pad: 1, h: 5, w: 5, w8, amax: 3, residual: None });
    let (dw2, dw8) = (dw(&mut rng, false), dw(&mut rng, true));
    let pw = random_conv(&mut rng, &Case { c_in: 16, c_out: 24, k: 1, stride: 1, h: 5, w: 5, w8: false, amax: 3, residual: None });
    let weights = random_weights(&mut rng, 8, 9 * 4, false, -127);
    let grouped = Conv2d::grouped(8, 2, 3, 1, 1, weights, spread_requant(&mut rng, 8, 36, 3, false, 12, 3)).unwrap();
    for b in Backend::available() {
        let cpu = Cpu::new(b, 1).unwrap();
        let fast = b != Backend::Scalar;
        assert_eq!(kernel_of(&cpu, &dw2) == "Depthwise", fast, "{b}: 2-bit depthwise {:?}", cpu.prepare(&dw2));
        // SWAR documents 8-bit depthwise weights as running the reference.
        assert_eq!(kernel_of(&cpu, &dw8) == "Depthwise", fast && b != Backend::Swar, "{b}: 8-bit depthwise");
        assert_eq!(kernel_of(&cpu, &pw) == "Scalar", !fast, "{b}: 1×1 pointwise runs the dense kernel");
        assert_eq!(kernel_of(&cpu, &grouped), "Scalar", "{b}: grouped conv runs the reference");
    }
}

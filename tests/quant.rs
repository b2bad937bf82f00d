//! Quantizers on hand-computed tensors (docs/quantization.md, float form).
#![cfg(feature = "train")]

use approx::assert_relative_eq;
use nce::quant::{
    groups, lsq_init_step, lsq_quantize, maxabs_codes, maxabs_quantize, maxabs_scale, pact_clip, pact_codes, pact_quantize,
    round_half_away, sawb_alpha, sawb_codes, sawb_coefficients, sawb_quantize, Lsq, LsqTarget, Pact, QuantError, WeightScheme,
};
use tch::{nn, Device, Kind, Tensor};

fn vals(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.detach().to_kind(Kind::Double).reshape([-1])).unwrap()
}

fn ints(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(&t.to_kind(Kind::Int64).reshape([-1])).unwrap()
}

fn leaf(v: &[f32]) -> Tensor {
    Tensor::from_slice(v).set_requires_grad(true)
}

fn assert_all_close(got: &[f64], want: &[f64], eps: f64) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= eps, "element {i}: got {g}, want {w} (all: {got:?})");
    }
}

#[test]
fn rounding_is_half_away_from_zero() {
    let x = Tensor::from_slice(&[0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, -0.49999997, 2.4999998, 1.2, -1.7, 0.0]);
    let r = vals(&round_half_away(&x));
    assert_eq!(r, vec![1.0, 2.0, 3.0, -1.0, -2.0, -3.0, 0.0, 0.0, 2.0, 1.0, -2.0, 0.0]);
    // torch.round is half-to-even: the reason the quantizers do not use it.
    assert_eq!(vals(&Tensor::from_slice(&[0.5f32, 2.5]).round()), vec![0.0, 2.0]);
    // Also in double precision.
    let xd = Tensor::from_slice(&[0.5f64, 2.5, -3.5, 0.49999999999999994]);
    assert_eq!(vals(&round_half_away(&xd)), vec![1.0, 3.0, -4.0, 0.0]);
}

#[test]
fn pact_clip_value_and_gradients() {
    let x = leaf(&[-1.0, 0.0, 0.5, 1.5, 2.75, 3.0, 4.0]);
    let alpha = leaf(&[3.0]);
    let y = pact_clip(&x, &alpha);
    // Value: PACT's 0.5(|x| − |x − α| + α) = clamp(x, 0, α).
    let formula = (x.abs() - (&x - 3.0).abs() + 3.0) * 0.5;
    assert_eq!(vals(&y), vals(&formula));
    assert_eq!(vals(&y), vec![0.0, 0.0, 0.5, 1.5, 2.75, 3.0, 3.0]);
    // Weighted loss so every element's gradient is visible in the sums.
    let g = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    (&y * &g).sum(Kind::Float).backward();
    // ∂/∂x = 1 on [0, α) (x = 0 included, x = α excluded).
    assert_eq!(vals(&x.grad()), vec![0.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0]);
    // ∂/∂α = 1 for x ≥ α: 6 + 7.
    assert_eq!(vals(&alpha.grad()), vec![13.0]);
}

#[test]
fn pact_quantize_values_codes_and_ste() {
    // α = 3, 2 bits: scale 1, so the codes are round(clamp(x, 0, 3)); ties go up.
    let x = leaf(&[-1.0, 0.0, 0.4, 0.5, 1.5, 2.5, 2.9, 3.0, 4.0]);
    let alpha = leaf(&[3.0]);
    let q = pact_quantize(&x, &alpha, 2);
    assert_eq!(vals(&q), vec![0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0]);
    assert_eq!(ints(&pact_codes(&x, &alpha, 2)), vec![0, 0, 0, 1, 2, 3, 3, 3, 3]);
    q.sum(Kind::Float).backward();
    // STE through the rounding: the clip's gradients.
    assert_eq!(vals(&x.grad()), vec![0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
    assert_eq!(vals(&alpha.grad()), vec![2.0]);

    // α = 2, 2 bits: levels 0, 2/3, 4/3, 2. y·3/2 = 0.45, 0.51, 1.5 (tie → 2), 2.55.
    let x = Tensor::from_slice(&[0.3f32, 0.34, 1.0, 1.7]);
    let alpha = Tensor::from_slice(&[2.0f32]);
    assert_all_close(&vals(&pact_quantize(&x, &alpha, 2)), &[0.0, 2.0 / 3.0, 4.0 / 3.0, 2.0], 1e-6);
    assert_eq!(ints(&pact_codes(&x, &alpha, 2)), vec![0, 1, 2, 3]);
    // 3 bits: qmax 7, y·7/2 = 1.05, 1.19, 3.5 (tie → 4), 5.95.
    assert_eq!(ints(&pact_codes(&x, &alpha, 3)), vec![1, 1, 4, 6]);
}

#[test]
fn pact_module_variable_group_and_integer_view() {
    let vs = nn::VarStore::new(Device::Cpu);
    let p = Pact::new(&vs.root().sub("conv1").sub("act"), 2, 3.0).unwrap();
    assert!(vs.variables().contains_key("conv1.act.alpha"));
    let g = vs.variables_.lock().unwrap().trainable_variables.iter().map(|v| v.group).collect::<Vec<_>>();
    assert_eq!(g, vec![groups::PACT]);
    assert_eq!(p.bits(), 2);
    assert_eq!(p.qmax(), 3);
    assert_eq!(p.alpha_value(), 3.0);
    let ip = p.int_params();
    assert_eq!((ip.scale, ip.qmax, ip.clip()), (1.0, 3, 3.0));
    let x = Tensor::from_slice(&[-2.0f32, 0.7, 1.5, 9.0]);
    assert_eq!(ints(&p.codes(&x)), vec![0, 1, 2, 3]);
    assert_eq!(vals(&p.forward(&x)), vec![0.0, 1.0, 2.0, 3.0]);
    assert_eq!(Pact::DEFAULT_INIT, 8.0);

    let root = vs.root();
    assert!(matches!(Pact::new(&root.sub("a"), 0, 8.0), Err(QuantError::Bits { bits: 0, .. })));
    assert!(matches!(Pact::new(&root.sub("b"), 17, 8.0), Err(QuantError::Bits { bits: 17, .. })));
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(Pact::new(&root.sub("c"), 2, bad), Err(QuantError::PactInit(_))));
    }
}

#[test]
fn sawb_coefficient_values() {
    assert_eq!(sawb_coefficients(2), (3.212, 2.178));
    assert_eq!(sawb_coefficients(3), (7.962, 7.149));
    assert_eq!(sawb_coefficients(4), (12.68, 12.80));
    // Other widths use the 4-bit pair.
    for b in [1, 5, 6, 8] {
        assert_eq!(sawb_coefficients(b), (12.68, 12.80));
    }
}

// w = [1, −1, 2, −2, 0.5, −0.25, 0.1, 3]: E[w²] = 19.3225/8 = 2.4153125, E|w| = 9.85/8 = 1.23125,
// sqrt(E[w²]) = 1.5541275687664766.
const W: [f32; 8] = [1.0, -1.0, 2.0, -2.0, 0.5, -0.25, 0.1, 3.0];

#[test]
fn sawb_alpha_levels_and_codes_hand_computed() {
    let w = Tensor::from_slice(&W);
    // 2 bits: 3.212·1.55412757 − 2.178·1.23125 = 2.31019525.
    let a2 = sawb_alpha(&w, 2).double_value(&[]);
    assert_relative_eq!(a2, 2.310195250877923, max_relative = 1e-6);
    assert_relative_eq!(sawb_alpha(&w, 3).double_value(&[]), 3.5717574525186873, max_relative = 1e-6);
    assert_relative_eq!(sawb_alpha(&w, 4).double_value(&[]), 3.9463375719589227, max_relative = 1e-6);

    // 2 bits: u = (clamp(w, ±α)/α + 1)/2, k = round(3u): w = 1 → 2.149 → 2 → code 1;
    // w = 2 → 2.799 → 3 → code 3; w = 0.1 → 1.565 → 2 → code 1; w = −0.25 → 1.338 → 1 → −1;
    // w = 3 is clipped → code 3.
    let c = sawb_codes(&w, 2);
    assert_eq!(c.scheme, WeightScheme::Sawb);
    assert_eq!(c.bits, 2);
    assert_eq!(c.to_vec().unwrap(), vec![1, -1, 3, -3, 1, -1, 1, 3]);
    assert_relative_eq!(c.scale, a2 / 3.0, max_relative = 1e-6);
    let l = a2 / 3.0;
    let want = [l, -l, a2, -a2, l, -l, l, a2];
    let wq = sawb_quantize(&w, 2);
    assert_all_close(&vals(&wq), &want, 1e-6);
    assert_all_close(&vals(&c.dequantize()), &want, 1e-6);

    assert_eq!(sawb_codes(&w, 3).to_vec().unwrap(), vec![1, -1, 3, -3, 1, -1, 1, 5]);
    assert_eq!(sawb_codes(&w, 4).to_vec().unwrap(), vec![3, -3, 7, -7, 1, -1, 1, 11]);
}

#[test]
fn sawb_ste_passes_gradient_inside_the_clip_only() {
    let w = leaf(&W);
    sawb_quantize(&w, 2).sum(Kind::Float).backward();
    // α_w = 2.31: only w = 3 is outside; α_w itself takes no gradient.
    assert_eq!(vals(&w.grad()), vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
}

#[test]
fn sawb_degenerate_tensors_stay_finite() {
    // 4-bit pair has c1 < c2: a constant-magnitude tensor gives 12.68 − 12.80 < 0 → max|w|.
    let w = Tensor::from_slice(&[1.0f32, -1.0, 1.0, -1.0]);
    assert_eq!(sawb_alpha(&w, 4).double_value(&[]), 1.0);
    assert_eq!(sawb_codes(&w, 4).to_vec().unwrap(), vec![15, -15, 15, -15]);
    let z = Tensor::zeros([3], (Kind::Float, Device::Cpu));
    assert!(vals(&sawb_quantize(&z, 2)).iter().all(|v| v.is_finite()));
}

#[test]
fn maxabs_8bit_codes_and_ste() {
    // s = 1.27/127 = 0.01: codes round(w/s), 0.49 → 0, 0.51 → 1.
    let w = leaf(&[0.5, -1.27, 0.3, 0.0049, 0.0051, 1.0, -0.636]);
    let s = maxabs_scale(&w, 8).double_value(&[]);
    assert_relative_eq!(s, 0.01, max_relative = 1e-6);
    let c = maxabs_codes(&w, 8);
    assert_eq!(c.scheme, WeightScheme::MaxAbs);
    assert_eq!(c.to_vec().unwrap(), vec![50, -127, 30, 0, 1, 100, -64]);
    let q = maxabs_quantize(&w, 8);
    assert_all_close(&vals(&q), &[0.5, -1.27, 0.3, 0.0, 0.01, 1.0, -0.64], 1e-6);
    q.sum(Kind::Float).backward();
    assert_eq!(vals(&w.grad()), vec![1.0; 7]);
    // Codes never leave [−127, 127].
    let r = Tensor::randn([1000], (Kind::Float, Device::Cpu));
    let codes = maxabs_codes(&r, 8).to_vec().unwrap();
    assert!(codes.iter().all(|c| (-127..=127).contains(c)));
    assert!(codes.iter().any(|&c| c.abs() == 127));
    // All-zero tensor: codes 0, no NaN.
    let z = Tensor::zeros([4], (Kind::Float, Device::Cpu));
    assert_eq!(maxabs_codes(&z, 8).to_vec().unwrap(), vec![0; 4]);
    assert_eq!(vals(&maxabs_quantize(&z, 8)), vec![0.0; 4]);
}

#[test]
fn lsq_values_and_gradients_hand_computed() {
    // s = 0.5, unsigned 2 bits (Qn = 0, Qp = 3): v = x/s = −0.6, 0.4, 0.52, 1.5, 2, 2.5, 4.
    let x = leaf(&[-0.3, 0.2, 0.26, 0.75, 1.0, 1.25, 2.0]);
    let s = leaf(&[0.5]);
    let q = lsq_quantize(&x, &s, 0, 3, 1.0);
    // round(clamp(v, 0, 3)) = 0, 0, 1, 2, 2, 3 (tie 2.5 → 3), 3.
    assert_eq!(vals(&q), vec![0.0, 0.0, 0.5, 1.0, 1.0, 1.5, 1.5]);
    q.sum(Kind::Float).backward();
    assert_all_close(&vals(&x.grad()), &[0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0], 1e-6);
    // ∂/∂s: Qn = 0 below; round(v) − v inside: −0.4, 0.48, 0.5, 0, 0.5; Qp = 3 above → 4.08.
    assert_relative_eq!(vals(&s.grad())[0], 4.08, max_relative = 1e-5);

    // The gradient scale multiplies only the step's gradient.
    let x = leaf(&[-0.3, 0.2, 0.26, 0.75, 1.0, 1.25, 2.0]);
    let s = leaf(&[0.5]);
    let q = lsq_quantize(&x, &s, 0, 3, 0.5);
    assert_eq!(vals(&q), vec![0.0, 0.0, 0.5, 1.0, 1.0, 1.5, 1.5]);
    q.sum(Kind::Float).backward();
    assert_relative_eq!(vals(&s.grad())[0], 2.04, max_relative = 1e-5);
    assert_all_close(&vals(&x.grad()), &[0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0], 1e-6);

    // Init 2·E|x|/sqrt(Qp).
    let t = Tensor::from_slice(&[1.0f32, -2.0, 3.0, 4.0]);
    assert_relative_eq!(lsq_init_step(&t, 3).double_value(&[]), 5.0 / 3f64.sqrt(), max_relative = 1e-6);
}

#[test]
fn lsq_weights_signed_init_and_gradient_scale() {
    let vs = nn::VarStore::new(Device::Cpu);
    let q = Lsq::new(&vs.root().sub("conv").sub("wq"), 2, LsqTarget::Weights).unwrap();
    assert_eq!((q.qn(), q.qp()), (-2, 1));
    let names = vs.variables();
    assert!(names.contains_key("conv.wq.step") && names.contains_key("conv.wq.initialized"));
    assert!(!q.is_initialized());
    let w = leaf(&[-1.0, -0.3, 0.2, 0.6]);
    // g = 1/sqrt(N·Qp) = 1/sqrt(4·1).
    assert_relative_eq!(q.grad_scale(&w), 0.5);
    let out = q.forward(&w, true);
    // Step initialised from the weights: 2·mean|w|/sqrt(1) = 1.05.
    assert!(q.is_initialized());
    assert_relative_eq!(q.step_value(), 1.05, max_relative = 1e-6);
    // v = w/1.05 = −0.952, −0.286, 0.190, 0.571 → −1, 0, 0, 1.
    let iw = q.int_weights(&w);
    assert_eq!(iw.scheme, WeightScheme::Lsq);
    assert_eq!(iw.to_vec().unwrap(), vec![-1, 0, 0, 1]);
    assert_all_close(&vals(&out), &[-1.05, 0.0, 0.0, 1.05], 1e-6);
    out.sum(Kind::Float).backward();
    // ∂/∂s = g·Σ(round(v) − v) = 0.5·(0 − Σw/1.05) = 0.5·0.5/1.05.
    assert_relative_eq!(vals(&q.step.grad())[0], 0.25 / 1.05, max_relative = 1e-5);
    // A second training forward does not re-initialise.
    let _ = q.forward(&(&w * 10.0), true);
    assert_relative_eq!(q.step_value(), 1.05, max_relative = 1e-6);
    // 1-bit signed weights have no codes.
    assert!(matches!(Lsq::new(&vs.root().sub("x"), 1, LsqTarget::Weights), Err(QuantError::Bits { bits: 1, .. })));
}

#[test]
fn lsq_activations_unsigned_init_from_first_batch() {
    let vs = nn::VarStore::new(Device::Cpu);
    let q = Lsq::new(&vs.root().sub("act"), 2, LsqTarget::Activations).unwrap();
    assert_eq!((q.qn(), q.qp()), (0, 3));
    let g = vs.variables_.lock().unwrap().trainable_variables.iter().map(|v| v.group).collect::<Vec<_>>();
    assert_eq!(g, vec![groups::LSQ]);
    let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
    // N = features per example = 2.
    assert_relative_eq!(q.grad_scale(&x), 1.0 / 6f64.sqrt());
    // Eval does not initialise.
    let _ = q.forward(&x, false);
    assert!(!q.is_initialized());
    let y = q.forward(&x, true);
    let s = 5.0 / 3f64.sqrt();
    assert_relative_eq!(q.step_value(), s, max_relative = 1e-6);
    // x/s = 0.346, 0.693, 1.039, 1.386 → 0, 1, 1, 1.
    assert_eq!(ints(&q.codes(&x)), vec![0, 1, 1, 1]);
    assert_all_close(&vals(&y), &[0.0, s, s, s], 1e-5);
}

#[test]
fn int_weights_round_trip_the_forward() {
    let w = Tensor::randn([8, 4, 3, 3], (Kind::Float, Device::Cpu));
    for bits in [2u8, 3, 4] {
        let c = sawb_codes(&w, bits);
        assert_eq!(c.codes.size(), w.size());
        let n = (1i32 << bits) - 1;
        assert!(c.to_vec().unwrap().iter().all(|v| v % 2 != 0 && v.abs() <= n));
        let diff = (c.dequantize() - sawb_quantize(&w, bits)).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{bits} bits: {diff}");
    }
    let c = maxabs_codes(&w, 8);
    let diff = (c.dequantize() - maxabs_quantize(&w, 8)).abs().max().double_value(&[]);
    assert!(diff < 1e-6);
}

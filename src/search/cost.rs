//! Differentiable expected costs and TAS's budget loss.
//!
//! Every tensor's width is a discrete random variable: a conv's output width follows
//! `softmax(α)` over its candidates, a residual add's is the max of its inputs' (computed
//! exactly from their CDFs, assuming independence), pass-through layers keep their input's.
//! A plugin's per-layer cost is tabulated over (input width, output width) and its expectation
//! is `p_inᵀ · T · p_out`; the network's expected cost is the sum over layers. Only separable
//! metrics (sums over layers) take part; non-separable ones (peak memory) are enforced when the
//! architecture is derived.

use super::supernet::Supernet;
use crate::cost::{CostError, CostModel};
use crate::graph::{Layer, Op, Src};
use tch::{Kind, Tensor};

/// A width distribution: sorted support and probabilities (differentiable).
pub struct Dist {
    pub support: Vec<usize>,
    pub probs: Tensor,
}

impl Dist {
    fn fixed(c: usize) -> Dist {
        Dist { support: vec![c], probs: Tensor::ones([1], (Kind::Float, tch::Device::Cpu)) }
    }
}

/// The distribution of `max(a, b)` for independent `a`, `b`.
pub fn dist_max(a: &Dist, b: &Dist) -> Dist {
    let mut u: Vec<usize> = a.support.iter().chain(&b.support).copied().collect();
    u.sort_unstable();
    u.dedup();
    let cdf = |d: &Dist| {
        let m: Vec<f32> = u.iter().flat_map(|&t| d.support.iter().map(move |&s| if s <= t { 1.0 } else { 0.0 })).collect();
        Tensor::from_slice(&m).view([u.len() as i64, d.support.len() as i64]).matmul(&d.probs)
    };
    let c = cdf(a) * cdf(b);
    let prev = Tensor::cat(&[Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)), c.narrow(0, 0, u.len() as i64 - 1)], 0);
    Dist { support: u, probs: c - prev }
}

/// A layer's output width: the max of some slots' widths and of a fixed floor (0 if none).
#[derive(Clone, Default)]
struct Sources {
    slots: Vec<usize>,
    floor: usize,
}

/// Width distributions of every layer's output under the supernet's current logits.
///
/// A conv with a slot follows its slot; a depthwise conv (no slot) and pass-through layers
/// follow their input. At a residual add the two inputs are independent when they come from
/// disjoint slots (the max of their CDFs); when they come from the same slots (the tied
/// projections of a MobileNetV2 stage) they are the same random variable and the add keeps it;
/// a partial overlap is computed from the union of the slots.
pub fn distributions(sn: &Supernet) -> Vec<Dist> {
    let mut d: Vec<Dist> = Vec::with_capacity(sn.net.layers.len());
    let mut from: Vec<Sources> = Vec::with_capacity(sn.net.layers.len());
    let input_c = sn.net.input.c;
    let slot_dist = |s: usize| Dist { support: sn.slots[s].candidates.clone(), probs: sn.logits[s].softmax(0, Kind::Float) };
    let src = |d: &Vec<Dist>, from: &Vec<Sources>, s: Src| match s {
        Src::Input => (Dist::fixed(input_c), Sources { slots: vec![], floor: input_c }),
        Src::Layer(i) => (Dist { support: d[i].support.clone(), probs: d[i].probs.shallow_clone() }, from[i].clone()),
    };
    for l in &sn.net.layers {
        let (dist, sources) = match (&l.op, l.width_slot) {
            (Op::Conv { .. }, Some(s)) => (slot_dist(s), Sources { slots: vec![s], floor: 0 }),
            (Op::Linear, _) => (Dist::fixed(l.out_shape.c), Sources { slots: vec![], floor: l.out_shape.c }),
            (Op::Add { .. }, _) => {
                let ((a, sa), (b, sb)) = (src(&d, &from, l.inputs[0]), src(&d, &from, l.inputs[1]));
                let floor = sa.floor.max(sb.floor);
                let mut slots: Vec<usize> = sa.slots.iter().chain(&sb.slots).copied().collect();
                slots.sort_unstable();
                slots.dedup();
                let dist = if sa.slots.iter().all(|s| !sb.slots.contains(s)) {
                    dist_max(&a, &b)
                } else if sa.slots == sb.slots && sa.floor == sb.floor {
                    a
                } else {
                    let parts = slots.iter().map(|&s| slot_dist(s)).chain((floor > 0).then(|| Dist::fixed(floor)));
                    parts.reduce(|x, y| dist_max(&x, &y)).expect("an overlap has a slot")
                };
                (dist, Sources { slots, floor })
            }
            _ => src(&d, &from, l.inputs[0]),
        };
        d.push(dist);
        from.push(sources);
    }
    d
}

/// Whether `layer` is a depthwise conv (one filter per channel, `groups` = its channels): the
/// builders give every other conv a width slot.
pub fn is_depthwise(layer: &Layer) -> bool {
    matches!(layer.op, Op::Conv { groups, .. } if layer.width_slot.is_none() || (groups > 1 && groups == layer.in_shape.c))
}

/// `layer` with `cin` input and `cout` output channels. A depthwise conv stays depthwise: its
/// `groups` becomes `cin` (callers pass `cout == cin`).
pub fn with_channels(layer: &Layer, cin: usize, cout: usize) -> Layer {
    let mut l = layer.clone();
    if is_depthwise(layer) {
        if let Op::Conv { groups, .. } = &mut l.op {
            *groups = cin;
        }
    }
    l.in_shape.c = cin;
    l.out_shape.c = cout;
    l
}

/// The expected value of metric `metric` of `model` (a differentiable scalar tensor).
///
/// A layer's cost is tabulated over (input width, output width) and weighted by both
/// distributions (they come from different slots, so they are independent); a depthwise conv's
/// output width *is* its input width, so its table is the diagonal `cost(c, c)` weighted by the
/// input's distribution.
#[allow(clippy::assign_op_pattern)] // `+=` on a tch Tensor is an in-place `add_`; the loss is built out of place
pub fn expected_cost(sn: &Supernet, dists: &[Dist], model: &dyn CostModel, metric: usize) -> Result<Tensor, CostError> {
    let mut total = Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
    for (i, l) in sn.net.layers.iter().enumerate() {
        let din = match l.inputs[0] {
            Src::Input => Dist::fixed(sn.net.input.c),
            Src::Layer(j) => Dist { support: dists[j].support.clone(), probs: dists[j].probs.shallow_clone() },
        };
        if is_depthwise(l) {
            let table = din
                .support
                .iter()
                .map(|&c| Ok(model.layer_cost(&with_channels(l, c, c))?[metric] as f32))
                .collect::<Result<Vec<f32>, CostError>>()?;
            if table.iter().any(|&v| v != 0.0) {
                total = total + din.probs.dot(&Tensor::from_slice(&table));
            }
            continue;
        }
        let dout = &dists[i];
        let mut table = Vec::with_capacity(din.support.len() * dout.support.len());
        for &cin in &din.support {
            for &cout in &dout.support {
                table.push(model.layer_cost(&with_channels(l, cin, cout))?[metric] as f32);
            }
        }
        if table.iter().all(|&v| v == 0.0) {
            continue;
        }
        let t = Tensor::from_slice(&table).view([din.support.len() as i64, dout.support.len() as i64]);
        total = total + din.probs.unsqueeze(0).matmul(&t).matmul(&dout.probs.unsqueeze(1)).squeeze();
    }
    Ok(total)
}

/// TAS's budget loss for one budget: push the expected cost up (`−log E`) when the current
/// argmax architecture is below `target·(1 − tolerance)`, down (`+log E`) when it is above the
/// target, and leave it alone inside the band.
pub fn budget_loss(expected: &Tensor, current: f64, target: f64, tolerance: f64) -> Tensor {
    if current < target * (1.0 - tolerance) {
        -expected.clamp_min(1e-12).log()
    } else if current > target {
        expected.clamp_min(1e-12).log()
    } else {
        expected.zeros_like()
    }
}

/// The sensitivity prior of guided expansion: `γ · (2/S) · Σ_s (½ − r_s) · E[w_s]/base_s`, with
/// `r_s` slot `s`'s sensitivity rank in [0, 1] and `E[w_s]` its expected width under
/// `softmax(α_s)`. It rewards expected width in sensitive slots and charges it in insensitive
/// ones, so the architecture step cannot undo guided expansion for free; the budget losses
/// still bound the total. Slots ranked ½ (the median, or unmeasured) feel nothing.
#[allow(clippy::assign_op_pattern)] // `+=` on a tch Tensor is in place; the loss is built out of place
pub fn width_prior(sn: &Supernet, ranks: &[f64], gamma: f64) -> Tensor {
    let n = sn.slots.len().max(1) as f64;
    let mut total = Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
    for (i, (slot, r)) in sn.slots.iter().zip(ranks).enumerate() {
        let ratios: Vec<f32> = slot.candidates.iter().map(|&c| c as f32 / slot.base.max(1) as f32).collect();
        let expected = (sn.logits[i].softmax(0, Kind::Float) * Tensor::from_slice(&ratios)).sum(Kind::Float);
        total = total + expected * ((0.5 - r) * 2.0 / n);
    }
    total * gamma
}

//! Deriving the final architecture from a search: each budget's verdict and a cost-aware rule
//! that lands inside the binding budget (or TAS's rule: the best in-budget epoch).

use super::space::Slot;
use crate::cost::{CostReport, Evaluator};
use crate::graph::{self, BitConfig, ModelKind, Network, Shape};
use serde::{Deserialize, Serialize};

pub use crate::graph::arch::{ArchBudget, ArchCost, ArchFile, ArchLayer};

/// How the final widths are chosen from the searched probabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Derivation {
    /// Argmax; while a budget fails, step down the slot that saves the most cost per unit of
    /// log-probability lost; then grow back the most-preferred slots (whole candidates, then
    /// single granularity steps up to the next candidate) while every budget still passes.
    CostAware,
    /// TAS: the argmax architecture of the epoch with the best held-out accuracy among the
    /// epochs whose argmax met every budget (falls back to `cost-aware` when none did).
    Tas,
}

impl Derivation {
    pub fn name(self) -> &'static str {
        match self {
            Derivation::CostAware => "cost-aware",
            Derivation::Tas => "tas",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeriveError {
    #[error("no architecture in the search space meets the budgets (still failing: {0}); loosen the profile's budgets or widen the candidate ratios")]
    Infeasible(String),
    #[error(transparent)]
    Graph(#[from] graph::GraphError),
    #[error(transparent)]
    Cost(#[from] crate::cost::CostError),
}

/// Builds `widths` and returns the network and its report.
pub fn cost_of(
    model: ModelKind,
    input: Shape,
    classes: usize,
    widths: &[usize],
    bits: &BitConfig,
    eval: &Evaluator,
    base: &Network,
) -> Result<(Network, CostReport), DeriveError> {
    let net = graph::build(model, input, classes, Some(widths), bits)?;
    let report = eval.evaluate(&net, base)?;
    Ok((net, report))
}

/// One budget's value and limit for a candidate set of widths.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    pub metric: String,
    pub value: f64,
    pub max: f64,
}

impl Budget {
    fn pass(&self) -> bool {
        self.value <= self.max
    }
}

/// [`cost_aware`]'s answer: the widths and the changes made after the argmax, or why none fit.
pub type Derived = Result<(Vec<usize>, Vec<String>), String>;

/// Cost-aware derivation over any cost function (`costs(widths)` gives every budget).
/// Returns the widths and the changes made after the argmax (`layer: from -> to`).
pub fn cost_aware<E>(
    slots: &[Slot],
    probs: &[Vec<f64>],
    granularity: usize,
    mut costs: impl FnMut(&[usize]) -> Result<Vec<Budget>, E>,
) -> Result<Derived, E> {
    let lp = |s: usize, i: usize| probs[s][i].max(1e-12).ln();
    let mut choice: Vec<usize> = probs.iter().map(|p| super::space::argmax(p)).collect();
    let widths_of = |c: &[usize]| -> Vec<usize> { slots.iter().zip(c).map(|(s, &i)| s.candidates[i]).collect() };
    let start = widths_of(&choice);
    // Repair: cost saved on the failing budgets per log-probability lost.
    loop {
        let cur = costs(&widths_of(&choice))?;
        if cur.iter().all(Budget::pass) {
            break;
        }
        let mut best: Option<(f64, usize)> = None;
        for s in (0..slots.len()).filter(|&s| choice[s] > 0) {
            let mut c = choice.clone();
            c[s] -= 1;
            let next = costs(&widths_of(&c))?;
            let saved: f64 = cur.iter().zip(&next).filter(|(b, _)| !b.pass()).map(|(b, n)| (b.value - n.value) / b.max).sum();
            if saved <= 0.0 {
                continue;
            }
            let score = saved / (lp(s, choice[s]) - lp(s, c[s])).max(1e-9);
            if best.is_none_or(|(b, _)| score > b) {
                best = Some((score, s));
            }
        }
        match best {
            Some((_, s)) => choice[s] -= 1,
            None => {
                let failing: Vec<String> =
                    cur.iter().filter(|b| !b.pass()).map(|b| format!("{} {:.4} > {:.4}", b.metric, b.value, b.max)).collect();
                return Ok(Err(failing.join(", ")));
            }
        }
    }
    // Grow back whole candidates, most preferred (log-probability gained) first.
    loop {
        let mut best: Option<(f64, usize)> = None;
        for s in (0..slots.len()).filter(|&s| choice[s] + 1 < slots[s].candidates.len()) {
            let mut c = choice.clone();
            c[s] += 1;
            if costs(&widths_of(&c))?.iter().all(Budget::pass) {
                let gain = lp(s, c[s]) - lp(s, choice[s]);
                if best.is_none_or(|(b, _)| gain > b) {
                    best = Some((gain, s));
                }
            }
        }
        match best {
            Some((_, s)) => choice[s] += 1,
            None => break,
        }
    }
    // Fill: single granularity steps toward the next candidate, same preference order.
    let mut widths = widths_of(&choice);
    let g = granularity.max(1);
    loop {
        let mut best: Option<(f64, usize)> = None;
        for s in (0..slots.len()).filter(|&s| choice[s] + 1 < slots[s].candidates.len()) {
            let next = slots[s].candidates[choice[s] + 1];
            if widths[s] + g >= next {
                continue;
            }
            let mut w = widths.clone();
            w[s] += g;
            if costs(&w)?.iter().all(Budget::pass) {
                let gain = lp(s, choice[s] + 1) - lp(s, choice[s]);
                if best.is_none_or(|(b, _)| gain > b) {
                    best = Some((gain, s));
                }
            }
        }
        match best {
            Some((_, s)) => widths[s] += g,
            None => break,
        }
    }
    let changed = slots
        .iter()
        .zip(start.iter().zip(&widths))
        .filter(|(_, (a, b))| a != b)
        .map(|(s, (a, b))| format!("{}: {a} -> {b}", s.name))
        .collect();
    Ok(Ok((widths, changed)))
}

/// The cost-aware derivation under a profile's budgets; returns the widths, the changes after
/// the argmax, and the final report.
#[allow(clippy::too_many_arguments)]
pub fn derive(
    model: ModelKind,
    input: Shape,
    classes: usize,
    slots: &[Slot],
    probs: &[Vec<f64>],
    granularity: usize,
    bits: &BitConfig,
    eval: &Evaluator,
    base: &Network,
) -> Result<(Vec<usize>, Vec<String>, CostReport), DeriveError> {
    let costs = |w: &[usize]| -> Result<Vec<Budget>, DeriveError> {
        let (_, r) = cost_of(model, input, classes, w, bits, eval, base)?;
        Ok(r.budgets.iter().map(|b| Budget { metric: b.metric.clone(), value: b.value, max: b.max }).collect())
    };
    let (widths, changed) = cost_aware(slots, probs, granularity, costs)?.map_err(DeriveError::Infeasible)?;
    let (_, report) = cost_of(model, input, classes, &widths, bits, eval, base)?;
    Ok((widths, changed, report))
}

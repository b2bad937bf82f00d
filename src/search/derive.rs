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
    costs: impl FnMut(&[usize]) -> Result<Vec<Budget>, E>,
) -> Result<Derived, E> {
    let mut d = CostAware { slots, probs, costs, choice: probs.iter().map(|p| super::space::argmax(p)).collect() };
    let start = d.widths_of(&d.choice);
    if let Err(failing) = d.repair()? {
        return Ok(Err(failing));
    }
    d.grow_back()?;
    let widths = d.fill(granularity.max(1))?;
    let changed = slots
        .iter()
        .zip(start.iter().zip(&widths))
        .filter(|(_, (a, b))| a != b)
        .map(|(s, (a, b))| format!("{}: {a} -> {b}", s.name))
        .collect();
    Ok(Ok((widths, changed)))
}

/// The state of [`cost_aware`]: one candidate index per slot, moved by its three phases.
struct CostAware<'a, F> {
    slots: &'a [Slot],
    probs: &'a [Vec<f64>],
    costs: F,
    choice: Vec<usize>,
}

impl<E, F: FnMut(&[usize]) -> Result<Vec<Budget>, E>> CostAware<'_, F> {
    fn widths_of(&self, choice: &[usize]) -> Vec<usize> {
        self.slots.iter().zip(choice).map(|(s, &i)| s.candidates[i]).collect()
    }

    fn log_prob(&self, slot: usize, candidate: usize) -> f64 {
        self.probs[slot][candidate].max(1e-12).ln()
    }

    fn passes(&mut self, widths: &[usize]) -> Result<bool, E> {
        Ok((self.costs)(widths)?.iter().all(Budget::pass))
    }

    /// Slots that have a wider candidate than the current choice.
    fn growable(&self) -> Vec<usize> {
        (0..self.slots.len()).filter(|&s| self.choice[s] + 1 < self.slots[s].candidates.len()).collect()
    }

    /// Repair: while a budget fails, step down the slot with the most cost saved on the failing
    /// budgets per log-probability lost. `Err` lists the budgets no step can fix.
    fn repair(&mut self) -> Result<Result<(), String>, E> {
        loop {
            let now = self.widths_of(&self.choice);
            let cur = (self.costs)(&now)?;
            if cur.iter().all(Budget::pass) {
                return Ok(Ok(()));
            }
            let lowerable: Vec<usize> = (0..self.slots.len()).filter(|&s| self.choice[s] > 0).collect();
            let best = best_of(lowerable, |s| {
                let mut c = self.choice.clone();
                c[s] -= 1;
                let w = self.widths_of(&c);
                let next = (self.costs)(&w)?;
                let saved: f64 = cur.iter().zip(&next).filter(|(b, _)| !b.pass()).map(|(b, n)| (b.value - n.value) / b.max).sum();
                let lost = (self.log_prob(s, self.choice[s]) - self.log_prob(s, c[s])).max(1e-9);
                Ok((saved > 0.0).then_some(saved / lost))
            })?;
            match best {
                Some(s) => self.choice[s] -= 1,
                None => {
                    let failing: Vec<String> =
                        cur.iter().filter(|b| !b.pass()).map(|b| format!("{} {:.4} > {:.4}", b.metric, b.value, b.max)).collect();
                    return Ok(Err(failing.join(", ")));
                }
            }
        }
    }

    /// Grow back whole candidates, most preferred (log-probability gained) first, while every
    /// budget still passes.
    fn grow_back(&mut self) -> Result<(), E> {
        loop {
            let best = best_of(self.growable(), |s| {
                let mut c = self.choice.clone();
                c[s] += 1;
                let gain = self.log_prob(s, c[s]) - self.log_prob(s, self.choice[s]);
                Ok(self.passes(&self.widths_of(&c))?.then_some(gain))
            })?;
            match best {
                Some(s) => self.choice[s] += 1,
                None => return Ok(()),
            }
        }
    }

    /// Fill: single granularity steps toward each slot's next candidate, same preference order.
    fn fill(&mut self, g: usize) -> Result<Vec<usize>, E> {
        let mut widths = self.widths_of(&self.choice);
        loop {
            let best = best_of(self.growable(), |s| {
                if widths[s] + g >= self.slots[s].candidates[self.choice[s] + 1] {
                    return Ok(None);
                }
                let mut w = widths.clone();
                w[s] += g;
                let gain = self.log_prob(s, self.choice[s] + 1) - self.log_prob(s, self.choice[s]);
                Ok(self.passes(&w)?.then_some(gain))
            })?;
            match best {
                Some(s) => widths[s] += g,
                None => return Ok(widths),
            }
        }
    }
}

/// The slot with the highest score (`None` scores are not allowed steps); ties keep the first.
fn best_of<E>(slots: Vec<usize>, mut score: impl FnMut(usize) -> Result<Option<f64>, E>) -> Result<Option<usize>, E> {
    let mut best: Option<(f64, usize)> = None;
    for s in slots {
        if let Some(v) = score(s)? {
            if best.is_none_or(|(b, _)| v > b) {
                best = Some((v, s));
            }
        }
    }
    Ok(best.map(|(_, s)| s))
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

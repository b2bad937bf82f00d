//! Deriving the final architecture: argmax widths, every plugin's cost, each budget's verdict,
//! and a repair rule so a result that breaks a hard budget is never emitted silently.

use super::space::{Expansion, Slot};
use crate::cost::{CostReport, Evaluator};
use crate::graph::{self, BitConfig, ModelKind, Network, Shape};
use serde::{Deserialize, Serialize};

/// The architecture file `nce search` writes and `nce train --arch` reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArchFile {
    pub model: ModelKind,
    pub input: String,
    pub classes: usize,
    pub profile: String,
    pub widths: Vec<usize>,
    pub base_widths: Vec<usize>,
    /// Slots changed by the repair rule, if any (`layer: from -> to`).
    pub repaired: Vec<String>,
    pub layers: Vec<ArchLayer>,
    pub costs: Vec<ArchCost>,
    pub budgets: Vec<ArchBudget>,
    pub expansions: Vec<Expansion>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArchLayer {
    pub name: String,
    pub base: usize,
    pub width: usize,
    pub candidates: Vec<usize>,
    pub probs: Vec<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArchCost {
    pub plugin: String,
    pub metric: String,
    pub value: f64,
    pub base: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArchBudget {
    pub metric: String,
    pub value: f64,
    pub max: f64,
    pub pass: bool,
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

/// The argmax architecture, repaired if it breaks a budget.
///
/// Repair rule: while a budget fails, step one slot down to its next narrower candidate,
/// choosing the slot whose narrower candidate the search liked best (highest probability); if
/// no slot can shrink, the search space cannot meet the budgets and this is an error.
#[allow(clippy::too_many_arguments)]
pub fn derive(
    model: ModelKind,
    input: Shape,
    classes: usize,
    slots: &[Slot],
    probs: &[Vec<f64>],
    bits: &BitConfig,
    eval: &Evaluator,
    base: &Network,
) -> Result<(Vec<usize>, Vec<String>, CostReport), DeriveError> {
    let mut choice: Vec<usize> = probs.iter().map(|p| super::space::argmax(p)).collect();
    let mut repaired = Vec::new();
    loop {
        let widths: Vec<usize> = slots.iter().zip(&choice).map(|(s, &i)| s.candidates[i]).collect();
        let (_, report) = cost_of(model, input, classes, &widths, bits, eval, base)?;
        if report.passes() {
            return Ok((widths, repaired, report));
        }
        let best = (0..slots.len()).filter(|&s| choice[s] > 0).max_by(|&a, &b| probs[a][choice[a] - 1].total_cmp(&probs[b][choice[b] - 1]));
        match best {
            Some(s) => {
                let from = slots[s].candidates[choice[s]];
                choice[s] -= 1;
                repaired.push(format!("{}: {from} -> {}", slots[s].name, slots[s].candidates[choice[s]]));
            }
            None => {
                let failing: Vec<String> =
                    report.budgets.iter().filter(|b| !b.pass).map(|b| format!("{} {:.4} > {:.4}", b.metric, b.value, b.max)).collect();
                return Err(DeriveError::Infeasible(failing.join(", ")));
            }
        }
    }
}

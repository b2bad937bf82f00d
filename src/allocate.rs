//! `nce allocate`: the search-free control for sensitivity-guided expansion.
//!
//! It spends a hardware profile's budget on the width slots with the highest predicted gain per
//! unit of cost and takes it from those with the lowest, greedily, and writes an `arch.toml`
//! like a search's. If this matches the supernet search, users should know (issue #28).
//!
//! **Predicted gain.** Widening slot `s` from `w` to `w'` is predicted to buy
//! `score_s · log2(w'/w)`: each doubling of a slot buys its sensitivity score (the per-slot sum
//! of [`crate::sensitivity::slots::slot_scores`]), with diminishing returns per channel. A
//! network's predicted gain is the sum over slots, relative to the starting widths.
//!
//! Scores are shrunk toward uniform first: each gets `prior ×` the mean score added
//! ([`AllocateConfig::prior`], 1 by default), because a layer measured at 0 is within noise of
//! nothing, not evidence that it needs no channels.
//!
//! **Cost.** The binding budget's utilisation: the largest `value / max` over the profile's
//! budgets, so one scalar prices every move whatever plugin binds.
//!
//! **Steps.** Start from the base widths, or when they do not fit, every base width times the
//! largest single factor that fits (the *scaled* baseline of the fair protocol). Then:
//! 1. *fill*: widen the slot with the best gain per cost increase while a step fits;
//! 2. *trade*: widen the best slot by one step even though it does not fit, and pay for it by
//!    narrowing the slots that lose the least predicted gain per cost saved until it fits;
//!    keep the trade only if the predicted gain rises; repeat while some trade pays;
//! 3. *fill* again with single granularity steps, so the result lands just inside the budget.
//!
//! Widths stay within the search space's bounds (smallest candidate ratio to the cap, 0.5× to
//! 2× of base by default) and on the profile's channel granularity. Slots without a score (the
//! 8-bit stem, which `nce sensitivity` does not measure) keep their starting width.

use crate::cost::{self, CostError, Evaluator};
use crate::graph::arch::{ArchError, ArchFile, ArchLayer};
use crate::graph::{self, BitConfig, GraphError, ModelKind, Network, Shape};
use crate::hw::ProfileError;
use crate::sensitivity::{slots, Measure, TableError};
use std::path::{Path, PathBuf};

/// Everything that defines an allocation.
#[derive(Clone, Debug)]
pub struct AllocateConfig {
    pub model: ModelKind,
    pub input: Shape,
    pub classes: usize,
    pub profile: PathBuf,
    /// A `sensitivity.csv` written by `nce sensitivity` for this model.
    pub sensitivity: PathBuf,
    pub measure: Measure,
    /// Smallest and largest width as multiples of the base width (the search space's bounds).
    pub min_ratio: f64,
    pub max_ratio: f64,
    /// Channels per trade step as a fraction of the base width (at least the granularity).
    pub step: f64,
    /// Shrinkage toward uniform: every scored slot's score gets `prior × mean score` added, so
    /// that a slot measured at 0 (within noise of nothing) is not drained to the minimum.
    pub prior: f64,
}

impl AllocateConfig {
    pub fn new(model: ModelKind, input: Shape, classes: usize, profile: PathBuf, sensitivity: PathBuf) -> AllocateConfig {
        AllocateConfig {
            model,
            input,
            classes,
            profile,
            sensitivity,
            measure: Measure::OneOffGain,
            min_ratio: 0.5,
            max_ratio: 2.0,
            step: 1.0 / 16.0,
            prior: 1.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AllocateError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Cost(#[from] CostError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Arch(#[from] ArchError),
    #[error("{}: {msg}", file.display())]
    Sensitivity { file: PathBuf, msg: String },
    #[error("no widths within {min_ratio}x..{max_ratio}x of the base fit the budgets of {}", profile.display())]
    Infeasible { profile: PathBuf, min_ratio: f64, max_ratio: f64 },
}

/// The result: the architecture file and what the allocator predicted.
#[derive(Clone, Debug)]
pub struct Allocation {
    pub arch: ArchFile,
    /// Widths it started from (base, or scaled base).
    pub start: Vec<usize>,
    /// Predicted gain over the start, in the measure's units.
    pub predicted_gain: f64,
    /// Binding budget's utilisation of the result (≤ 1).
    pub utilisation: f64,
    /// Per-slot scores used (`None`: unmeasured, kept at its start width).
    pub scores: Vec<Option<f64>>,
}

/// One slot's bounds and trade step, in channels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlotBounds {
    pub min: usize,
    pub max: usize,
    pub step: usize,
}

/// Allocates widths for `cfg` and returns the architecture (not yet written).
pub fn allocate(cfg: &AllocateConfig) -> Result<Allocation, AllocateError> {
    let profile = cost::load_profile(&cfg.profile)?;
    let eval = Evaluator::new(&profile)?;
    let bits = BitConfig::uniform(2);
    let base = graph::build(cfg.model, cfg.input, cfg.classes, None, &bits)?;
    let measured = slots::read_scores(&cfg.sensitivity, &base, cfg.measure)?;
    let known: Vec<f64> = measured.iter().flatten().copied().collect();
    let mean = known.iter().sum::<f64>() / known.len() as f64;
    if mean <= 0.0 {
        let msg = format!("every {} score is 0 or less: nothing to allocate by", cfg.measure.name());
        return Err(AllocateError::Sensitivity { file: cfg.sensitivity.clone(), msg });
    }
    let scores: Vec<Option<f64>> = measured.iter().map(|s| s.map(|v| v + cfg.prior * mean)).collect();
    let g = profile.unit.channel_granularity.max(1);
    let bounds: Vec<SlotBounds> = base.widths.iter().map(|&b| bounds_of(b, cfg, g)).collect();
    let mut util = |w: &[usize]| -> Result<f64, AllocateError> {
        let net = graph::build(cfg.model, cfg.input, cfg.classes, Some(w), &bits)?;
        let r = eval.evaluate(&net, &base)?;
        Ok(r.budgets.iter().map(|b| b.value / b.max).fold(0.0, f64::max))
    };
    let start = scaled_start(&base.widths, &bounds, g, &mut util)?.ok_or_else(|| AllocateError::Infeasible {
        profile: cfg.profile.clone(),
        min_ratio: cfg.min_ratio,
        max_ratio: cfg.max_ratio,
    })?;
    let widths = greedy(&start, &bounds, &scores, g, &mut util)?;
    let predicted_gain = predicted(&scores, &start, &widths);
    let utilisation = util(&widths)?;
    let arch = arch_file(cfg, &eval, &base, &bits, &start, &widths)?;
    Ok(Allocation { arch, start, predicted_gain, utilisation, scores })
}

fn bounds_of(base: usize, cfg: &AllocateConfig, g: usize) -> SlotBounds {
    let round = |x: f64| (((x / g as f64).round() as usize).max(1)) * g;
    let min = round(base as f64 * cfg.min_ratio).min(base);
    let max = round(base as f64 * cfg.max_ratio).max(base);
    SlotBounds { min, max, step: round(base as f64 * cfg.step) }
}

/// `Σ score_s · log2(w_s / start_s)` over scored slots.
pub fn predicted(scores: &[Option<f64>], start: &[usize], w: &[usize]) -> f64 {
    scores.iter().zip(start.iter().zip(w)).filter_map(|(s, (&a, &b))| s.map(|s| s * (b as f64 / a as f64).log2())).sum()
}

/// The base widths if they fit, else every width times the largest factor that fits (bisection
/// to 1e-4, widths rounded to the granularity and clamped to the bounds). `None` if even the
/// smallest widths do not fit.
pub fn scaled_start<E>(
    base: &[usize],
    bounds: &[SlotBounds],
    g: usize,
    util: &mut impl FnMut(&[usize]) -> Result<f64, E>,
) -> Result<Option<Vec<usize>>, E> {
    let scaled = |f: f64| -> Vec<usize> {
        base.iter().zip(bounds).map(|(&b, bd)| ((((b as f64 * f) / g as f64).round() as usize).max(1) * g).clamp(bd.min, bd.max)).collect()
    };
    if util(base)? <= 1.0 {
        return Ok(Some(base.to_vec()));
    }
    let (mut lo, mut hi) = (0.0, 1.0);
    if util(&scaled(lo))? > 1.0 {
        return Ok(None);
    }
    while hi - lo > 1e-4 {
        let mid = (lo + hi) / 2.0;
        if util(&scaled(mid))? <= 1.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(Some(scaled(lo)))
}

/// The allocator's three phases (module docs) over any utilisation function.
pub fn greedy<E>(
    start: &[usize],
    bounds: &[SlotBounds],
    scores: &[Option<f64>],
    g: usize,
    util: &mut impl FnMut(&[usize]) -> Result<f64, E>,
) -> Result<Vec<usize>, E> {
    let steps: Vec<usize> = bounds.iter().map(|b| b.step.max(g)).collect();
    let mut w = start.to_vec();
    fill(&mut w, bounds, scores, &steps, start, util)?;
    for _ in 0..100_000 {
        if !trade(&mut w, bounds, scores, &steps, util)? {
            break;
        }
    }
    fill(&mut w, bounds, scores, &vec![g; bounds.len()], start, util)?;
    Ok(w)
}

fn gain(score: Option<f64>, from: usize, to: usize) -> f64 {
    score.unwrap_or(0.0) * (to as f64 / from as f64).log2()
}

/// Widens, one step at a time, the scored slot with the best gain per utilisation added while a
/// step fits; ties (e.g. zero scores) go to the slot least widened relative to `start`.
fn fill<E>(
    w: &mut [usize],
    bounds: &[SlotBounds],
    scores: &[Option<f64>],
    steps: &[usize],
    start: &[usize],
    util: &mut impl FnMut(&[usize]) -> Result<f64, E>,
) -> Result<(), E> {
    loop {
        let now = util(w)?;
        let mut best: Option<((f64, f64), usize)> = None;
        for s in 0..w.len() {
            if scores[s].is_none() || w[s] + steps[s] > bounds[s].max {
                continue;
            }
            w[s] += steps[s];
            let after = util(w)?;
            w[s] -= steps[s];
            if after > 1.0 {
                continue;
            }
            let key = (gain(scores[s], w[s], w[s] + steps[s]) / (after - now).max(1e-12), -(w[s] as f64 / start[s] as f64));
            if best.is_none_or(|(b, _)| key > b) {
                best = Some((key, s));
            }
        }
        match best {
            Some((_, s)) => w[s] += steps[s],
            None => return Ok(()),
        }
    }
}

/// One trade (module docs, step 2): tries the widenings in order of gain per cost; the first that
/// can be paid for with a net predicted gain is applied. Returns whether one was.
fn trade<E>(
    w: &mut [usize],
    bounds: &[SlotBounds],
    scores: &[Option<f64>],
    steps: &[usize],
    util: &mut impl FnMut(&[usize]) -> Result<f64, E>,
) -> Result<bool, E> {
    let now = util(w)?;
    let mut ups = Vec::new();
    for s in 0..w.len() {
        if !scores[s].is_some_and(|v| v > 0.0) || w[s] + steps[s] > bounds[s].max {
            continue;
        }
        w[s] += steps[s];
        let after = util(w)?;
        w[s] -= steps[s];
        ups.push((gain(scores[s], w[s], w[s] + steps[s]) / (after - now).max(1e-12), s));
    }
    ups.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (_, up) in ups {
        let mut t = w.to_vec();
        t[up] += steps[up];
        let mut net = gain(scores[up], w[up], t[up]);
        while util(&t)? > 1.0 {
            let Some(down) = cheapest_cut(&t, up, bounds, scores, steps, util)? else { break };
            net -= gain(scores[down], t[down] - steps[down], t[down]);
            t[down] -= steps[down];
        }
        if util(&t)? <= 1.0 && net > 1e-12 {
            w.copy_from_slice(&t);
            return Ok(true);
        }
    }
    Ok(false)
}

/// The scored slot (other than `up`) whose one-step narrowing loses the least predicted gain per
/// utilisation saved; `None` if no narrowing saves anything.
fn cheapest_cut<E>(
    t: &[usize],
    up: usize,
    bounds: &[SlotBounds],
    scores: &[Option<f64>],
    steps: &[usize],
    util: &mut impl FnMut(&[usize]) -> Result<f64, E>,
) -> Result<Option<usize>, E> {
    let now = util(t)?;
    let mut best: Option<(f64, usize)> = None;
    let mut probe = t.to_vec();
    for s in (0..t.len()).filter(|&s| s != up && scores[s].is_some() && t[s] >= bounds[s].min + steps[s]) {
        probe[s] -= steps[s];
        let saved = now - util(&probe)?;
        probe[s] += steps[s];
        if saved <= 0.0 {
            continue;
        }
        let cost = gain(scores[s], t[s] - steps[s], t[s]) / saved;
        if best.is_none_or(|(b, _)| cost < b) {
            best = Some((cost, s));
        }
    }
    Ok(best.map(|(_, s)| s))
}

/// The `arch.toml` of an allocation: one candidate per slot, the changes from the start listed
/// as `repaired`, costs and budget verdicts as a search writes them.
fn arch_file(
    cfg: &AllocateConfig,
    eval: &Evaluator,
    base: &Network,
    bits: &BitConfig,
    start: &[usize],
    widths: &[usize],
) -> Result<ArchFile, AllocateError> {
    let net = graph::build(cfg.model, cfg.input, cfg.classes, Some(widths), bits)?;
    let report = eval.evaluate(&net, base)?;
    let (costs, budgets) = report.arch_entries(&eval.evaluate(base, base)?);
    let name_of = |s: usize| base.layers.iter().find(|l| l.width_slot == Some(s)).map_or_else(|| format!("slot{s}"), |l| l.name.clone());
    Ok(ArchFile {
        model: cfg.model,
        input: cfg.input,
        classes: cfg.classes,
        profile: cfg.profile.display().to_string(),
        widths: widths.to_vec(),
        base_widths: base.widths.clone(),
        derivation: format!("allocator ({})", cfg.measure.name()),
        repaired: (0..widths.len())
            .filter(|&s| widths[s] != start[s])
            .map(|s| format!("{}: {} -> {}", name_of(s), start[s], widths[s]))
            .collect(),
        layers: (0..widths.len())
            .map(|s| ArchLayer { name: name_of(s), base: base.widths[s], width: widths[s], candidates: vec![widths[s]], probs: vec![1.0] })
            .collect(),
        costs,
        budgets,
        expansions: Vec::new(),
    })
}

/// Writes the allocation's `arch.toml`.
pub fn save(a: &Allocation, path: &Path) -> Result<(), AllocateError> {
    Ok(a.arch.save(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cost = Σ w (a params-like budget of 100 channels in all).
    fn linear(w: &[usize]) -> Result<f64, ()> {
        Ok(w.iter().sum::<usize>() as f64 / 100.0)
    }

    #[test]
    fn channels_move_to_the_sensitive_slot_and_land_on_the_budget() {
        let b = SlotBounds { min: 10, max: 40, step: 2 };
        let start = [25, 25, 25, 25];
        let scores = [Some(4.0), Some(1.0), Some(1.0), Some(0.1)];
        let w = greedy(&start, &[b; 4], &scores, 1, &mut linear).unwrap();
        assert_eq!(w.iter().sum::<usize>(), 100, "lands exactly on the budget: {w:?}");
        assert!(w[0] > 25 && w[3] < 25, "{w:?}");
        assert_eq!(w[1], w[2], "equal scores, equal widths: {w:?}");
        assert!(predicted(&scores, &start, &w) > 0.0);
        // Optimality of log gains under a linear cost: w_s ∝ score_s (clamped to the bounds).
        assert!(w[0] >= 38 && w[3] <= 12, "{w:?}");
    }

    #[test]
    fn unscored_slots_keep_their_width_and_equal_scores_even_out() {
        let b = SlotBounds { min: 10, max: 40, step: 2 };
        let w = greedy(&[30, 20, 20, 30], &[b; 4], &[None, Some(1.0), Some(1.0), Some(1.0)], 1, &mut linear).unwrap();
        assert_eq!(w[0], 30, "unscored: kept");
        assert_eq!(w.iter().sum::<usize>(), 100);
        // Equal scores and diminishing (log) returns: the scored widths move towards equal.
        let (lo, hi) = (w[1..].iter().min().unwrap(), w[1..].iter().max().unwrap());
        assert!(hi - lo <= 2, "{w:?}");
        // Already equal: nothing to trade.
        assert_eq!(
            greedy(&[40, 20, 20, 20], &[b; 4], &[None, Some(1.0), Some(1.0), Some(1.0)], 1, &mut linear).unwrap(),
            vec![40, 20, 20, 20]
        );
    }

    #[test]
    fn over_budget_base_is_scaled_down_first() {
        let b = SlotBounds { min: 5, max: 80, step: 2 };
        let start = scaled_start(&[40, 40, 40], &[b; 3], 1, &mut linear).unwrap().unwrap();
        assert!(linear(&start).unwrap() <= 1.0 && linear(&start).unwrap() > 0.97, "{start:?}");
        assert_eq!(start[0], start[2]);
        let tiny = SlotBounds { min: 50, max: 80, step: 2 };
        assert_eq!(scaled_start(&[60, 60, 60], &[tiny; 3], 1, &mut linear).unwrap(), None);
    }
}

//! From per-layer sensitivities to per-width-slot scores: what widening one slot is predicted
//! to buy.
//!
//! A slot's score is the sum of the scores of the layers whose output channels it sets: the
//! convs in the slot, and every depthwise conv that follows one of them (a depthwise conv has
//! no slot of its own; its channels are its input's, so in MobileNetV2 the expansion conv's
//! slot also widens the depthwise conv after it). Slots none of whose layers was measured (the
//! 8-bit stem) get `None`: nothing predicts them, and the users of the scores leave them alone.

use super::table::{self, LayerSensitivity, Measure, TableError};
use crate::graph::{Network, Op, Src};
use std::path::Path;

/// The slot that sets layer `i`'s output channels: its own, or for a depthwise conv and
/// pass-through layers, their input's.
pub fn output_slot(net: &Network, i: usize) -> Option<usize> {
    let l = &net.layers[i];
    match (&l.op, l.width_slot) {
        (Op::Conv { .. }, Some(s)) => Some(s),
        (Op::Conv { groups, .. }, None) if *groups > 1 => match l.inputs.first()? {
            Src::Layer(j) => output_slot(net, *j),
            Src::Input => None,
        },
        _ => None,
    }
}

/// One score per slot of `net` (`None` where no layer of the slot was measured); NaN and
/// negative layer scores count as 0 (no gain predicted).
pub fn slot_scores(net: &Network, layers: &[LayerSensitivity], measure: Measure) -> Vec<Option<f64>> {
    let mut scores = vec![None; net.widths.len()];
    for (i, l) in net.layers.iter().enumerate() {
        let (Some(s), Some(m)) = (output_slot(net, i), layers.iter().find(|m| m.layer == l.name)) else { continue };
        let v = measure.of(m);
        let v = if v.is_finite() { v.max(0.0) } else { 0.0 };
        *scores[s].get_or_insert(0.0) += v;
    }
    scores
}

/// Reads a `sensitivity.csv` and scores `net`'s slots by `measure`; an error names the file when
/// no layer of `net` is in it (measured on another model).
pub fn read_scores(path: &Path, net: &Network, measure: Measure) -> Result<Vec<Option<f64>>, TableError> {
    let layers = table::read(path)?;
    let scores = slot_scores(net, &layers, measure);
    if scores.iter().all(Option::is_none) {
        let msg = format!("no layer of {} is in the table (was it measured on another model?)", net.model);
        return Err(TableError::Invalid { file: path.into(), msg });
    }
    Ok(scores)
}

/// Ranks of the scores scaled to [0, 1] (0 = least sensitive; ties share their mean rank);
/// unmeasured slots sit in the middle (0.5). One slot alone ranks 0.5.
pub fn normalized_ranks(scores: &[Option<f64>]) -> Vec<f64> {
    let known: Vec<(usize, f64)> = scores.iter().enumerate().filter_map(|(i, s)| s.map(|v| (i, v))).collect();
    let mut ranks = vec![0.5; scores.len()];
    if known.len() < 2 {
        return ranks;
    }
    let top = (known.len() - 1) as f64;
    for &(i, v) in &known {
        let below = known.iter().filter(|(_, w)| *w < v).count() as f64;
        let equal = known.iter().filter(|(_, w)| *w == v).count() as f64;
        ranks[i] = (below + (equal - 1.0) / 2.0) / top;
    }
    ranks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_are_spread_over_zero_to_one_with_ties_sharing() {
        let r = normalized_ranks(&[Some(3.0), None, Some(1.0), Some(3.0), Some(0.0)]);
        assert_eq!(r, vec![(2.0 + 0.5) / 3.0, 0.5, 1.0 / 3.0, (2.0 + 0.5) / 3.0, 0.0]);
        assert_eq!(normalized_ranks(&[Some(1.0)]), vec![0.5]);
    }
}

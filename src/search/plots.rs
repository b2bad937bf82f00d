//! Charts of a finished search, written next to `arch.toml`: `widths.{svg,png}` (base vs
//! searched width per slot), `probs.{svg,png}` (per slot, the probability of its widest
//! candidate per epoch — the quantity the expansion rule thresholds, so expansions show up as
//! drops when a wider candidate joins) and `costs.{svg,png}` (per budget, argmax and expected
//! cost relative to the target, with the target at 1.0).

use super::derive::ArchFile;
use super::EpochLog;
use crate::plot::{self, PlotError, Series};
use std::path::{Path, PathBuf};

/// Writes every search chart into `out` and returns the files written. Charts that need epochs
/// are skipped for an empty log; `threshold` is the expansion rule's, drawn on the probabilities.
pub fn write_all(out: &Path, log: &[EpochLog], arch: &ArchFile, threshold: f64) -> Result<Vec<PathBuf>, PlotError> {
    let mut files = widths(out, arch)?;
    if !log.is_empty() {
        files.extend(probs(out, log, arch, threshold)?);
        files.extend(costs(out, log)?);
    }
    Ok(files)
}

fn slot_name(arch: &ArchFile, s: usize) -> String {
    arch.layers.get(s).map_or_else(|| format!("slot {s}"), |l| l.name.clone())
}

/// Base vs searched (derived, after any repair) width per slot.
pub fn widths(out: &Path, arch: &ArchFile) -> Result<Vec<PathBuf>, PlotError> {
    let names: Vec<String> = (0..arch.widths.len()).map(|s| slot_name(arch, s)).collect();
    let f = |w: &[usize]| w.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    plot::bar_chart(
        &out.join("widths"),
        &format!("{} widths: base vs searched", arch.model),
        "output channels",
        &names,
        &[("base".into(), f(&arch.base_widths)), ("searched".into(), f(&arch.widths))],
    )
}

/// Per slot (one panel each, probability axis 0 to 1), the probability of its widest candidate
/// at the end of each epoch, with the expansion threshold dashed.
pub fn probs(out: &Path, log: &[EpochLog], arch: &ArchFile, threshold: f64) -> Result<Vec<PathBuf>, PlotError> {
    let slots = log.iter().map(|l| l.probs.len()).max().unwrap_or(0);
    let series: Vec<Series> = (0..slots)
        .map(|s| {
            let points = log.iter().filter_map(|l| Some((l.epoch as f64, *l.probs.get(s)?.last()?))).collect();
            Series::new(slot_name(arch, s), points)
        })
        .collect();
    let title = format!("Probability of each slot's widest candidate (dashed: expansion threshold {threshold})");
    plot::small_multiples(&out.join("probs"), &title, "epoch", &series, (0.0, 1.0), Some(threshold))
}

/// Per budget, argmax and expected cost divided by the target; non-separable budgets have no
/// expected cost (NaN in the log) and get only the argmax line.
pub fn costs(out: &Path, log: &[EpochLog]) -> Result<Vec<PathBuf>, PlotError> {
    let budgets = log.iter().map(|l| l.budgets.len()).max().unwrap_or(0);
    let mut series = Vec::new();
    for k in 0..budgets {
        let Some(metric) = log.iter().find_map(|l| l.budgets.get(k).map(|b| b.0.clone())) else { continue };
        let ratio = |pick: fn(&(String, f64, f64, f64)) -> f64| -> Vec<(f64, f64)> {
            log.iter().filter_map(|l| l.budgets.get(k).map(|b| (l.epoch as f64, pick(b) / b.3))).filter(|p| p.1.is_finite()).collect()
        };
        series.push(Series::new(format!("{metric} argmax"), ratio(|b| b.2)));
        let expected = ratio(|b| b.1);
        if !expected.is_empty() {
            series.push(Series::new(format!("{metric} expected"), expected));
        }
    }
    if series.iter().all(|s| s.points.is_empty()) {
        return Ok(vec![]);
    }
    plot::line_chart(&out.join("costs"), "Cost relative to each budget", "epoch", "cost / target", &series, &[("target".into(), 1.0)])
}

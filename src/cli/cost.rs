//! `nce cost`: per-layer and total costs of a network under a profile.

use crate::cost::{CostReport, Evaluator};
use crate::graph::{self, BitConfig, ModelKind, Network, Shape};
use crate::hw::Profile;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Hardware profile file.
    #[arg(long)]
    profile: PathBuf,
    /// resnet20 | resnet32 | resnet56 | resnet18 | resnet50 (or take it from --arch)
    #[arg(long, required_unless_present = "arch")]
    model: Option<ModelKind>,
    /// An architecture file (`nce search`): its model, input, classes and widths.
    #[arg(long, conflicts_with_all = ["widths", "model", "input", "classes"])]
    arch: Option<PathBuf>,
    /// Input as CxHxW (default: 3x32x32 for CIFAR ResNets, 3x224x224 for ImageNet ones).
    #[arg(long)]
    input: Option<Shape>,
    #[arg(long)]
    classes: Option<usize>,
    /// Comma-separated output channels per width slot (default: the base widths).
    #[arg(long, value_delimiter = ',')]
    widths: Option<Vec<usize>>,
    /// Uniform bit width of the quantized layers (first conv and last linear stay at 8).
    #[arg(long, default_value_t = 2)]
    bits: u8,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Exit with status 1 when a budget is exceeded.
    #[arg(long)]
    strict: bool,
}

/// The network and its base (same model, input, bits; base widths).
pub fn networks(
    model: ModelKind,
    input: Option<Shape>,
    classes: Option<usize>,
    widths: Option<&[usize]>,
    bits: u8,
) -> Result<(Network, Network)> {
    let input = input.unwrap_or(model.default_input());
    let classes = classes.unwrap_or(model.default_classes());
    let cfg = BitConfig::uniform(bits);
    let net = graph::build(model, input, classes, widths, &cfg)?;
    let base = graph::build(model, input, classes, None, &cfg)?;
    Ok((net, base))
}

pub fn run(a: Args) -> Result<ExitCode> {
    let profile = crate::cost::load_profile(&a.profile)?;
    let (model, input, classes, widths) = match &a.arch {
        Some(path) => {
            let arch = crate::graph::ArchFile::load(path)?;
            let input = arch.input_shape().map_err(|e| anyhow::anyhow!("{}: `input`: {e}", path.display()))?;
            (arch.model, Some(input), Some(arch.classes), Some(arch.widths))
        }
        None => (a.model.ok_or_else(|| anyhow::anyhow!("give --model or --arch"))?, a.input, a.classes, a.widths.clone()),
    };
    let (net, base) = networks(model, input, classes, widths.as_deref(), a.bits)?;
    let eval = Evaluator::new(&profile)?;
    let report = eval.evaluate(&net, &base).with_context(|| format!("costing {} under {}", net.model, profile.name))?;
    let text = if a.json { serde_json::to_string_pretty(&report)? + "\n" } else { format_report(&profile, &net, &report) };
    super::emit(&text)?;
    Ok(if a.strict && !report.passes() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Human-readable number: 40551040 → 40.55M.
pub fn human(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a == a.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

/// The human-readable report (one string, so that a closed stdout is one write to handle).
pub fn format_report(profile: &Profile, net: &Network, report: &CostReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{} on {} under profile {} ({})", net.model, net.input, profile.name, profile.path.display());
    let mut header = format!("{:<22} {:<10} {:>5} {:>13}", "layer", "op", "W/A", "out");
    for m in &report.metrics {
        header.push_str(&format!(" {:>14}", truncate(&m.metric, 14)));
    }
    let _ = writeln!(out, "{header}");
    for (i, l) in net.layers.iter().enumerate() {
        if !l.has_weights() && report.metrics.iter().all(|m| m.per_layer[i] == 0.0) {
            continue;
        }
        let op = format!("{:?}", l.op);
        let op = op.split([' ', '{']).next().unwrap_or("").to_string();
        let bits = if l.has_weights() { format!("{}/{}", l.wbits, l.abits) } else { "-".into() };
        let mut row = format!("{:<22} {:<10} {:>5} {:>13}", truncate(&l.name, 22), op, bits, l.out_shape.to_string());
        for m in &report.metrics {
            row.push_str(&format!(" {:>14}", human(m.per_layer[i])));
        }
        let _ = writeln!(out, "{row}");
    }
    let mut total = format!("{:<22} {:<10} {:>5} {:>13}", "total", "", "", "");
    for m in &report.metrics {
        total.push_str(&format!(" {:>14}", human(m.total)));
    }
    let _ = writeln!(out, "{total}");
    for m in &report.metrics {
        let _ = writeln!(
            out,
            "  {:<22} {:>16} {:<6} ({}{})",
            m.metric,
            format!("{:.6}", m.total).trim_end_matches('0').trim_end_matches('.'),
            m.unit,
            m.plugin,
            if m.separable { "" } else { ", peak, not a sum" }
        );
    }
    if report.budgets.is_empty() {
        let _ = writeln!(out, "no budgets in this profile");
    }
    for b in &report.budgets {
        let _ = writeln!(
            out,
            "budget {:<22} {:>12} <= {:>12} ({}) {}",
            b.metric,
            human(b.value),
            human(b.max),
            b.limit,
            if b.pass { "PASS" } else { "FAIL" }
        );
    }
    out
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

//! `nce cost`: per-layer and total costs of a network under a profile.

use crate::cost::{CostReport, Evaluator};
use crate::data::DatasetId;
use crate::graph::{self, BitConfig, ModelKind, Network, Shape};
use crate::hw::Profile;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Hardware profile: a file, or the name of a shipped profile (`nce profiles list`).
    #[arg(long)]
    profile: PathBuf,
    /// resnet20 | resnet32 | resnet56 | resnet18 | resnet50 | mobilenetv2 (or take it from --arch)
    #[arg(long, required_unless_present = "arch")]
    model: Option<ModelKind>,
    /// Width multiplier of a MobileNet (0.1 to 4, two decimals; default 1)
    #[arg(long, value_parser = crate::cli::args::positive_f64)]
    width_mult: Option<f64>,
    /// An architecture file (`nce search`): its model, input, classes and widths.
    #[arg(long, conflicts_with_all = ["widths", "model", "input", "classes", "data"])]
    arch: Option<PathBuf>,
    /// Take input shape and classes from a built-in dataset (fashion-mnist, mnist, cifar10).
    #[arg(long, value_parser = super::args::dataset, conflicts_with_all = ["input", "classes"])]
    data: Option<DatasetId>,
    /// Input as CxHxW (default: 3x32x32 for CIFAR ResNets, 3x224x224 for ImageNet ones).
    #[arg(long)]
    input: Option<Shape>,
    /// Classes of the classifier (default: the model's for its default input, else 10 for
    /// ResNet-20/32/56; ResNet-18/50 on another input need --classes or --data).
    #[arg(long)]
    classes: Option<usize>,
    /// Comma-separated output channels per width slot (default: the base widths).
    #[arg(long, value_delimiter = ',')]
    widths: Option<Vec<usize>>,
    /// Uniform bit width of the quantized layers (first conv and last linear stay at 8).
    #[arg(long, default_value_t = 2)]
    bits: u8,
    /// Print the report as JSON (per-layer values carry their layer's name).
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
    let classes = match classes {
        Some(c) => c,
        None if input == model.default_input() || model.default_classes() == 10 => model.default_classes(),
        None => {
            return Err(super::usage(format!(
                "{model}'s {} classes belong to its {} input: give --classes N or --data NAME for {input}",
                model.default_classes(),
                model.default_input()
            )))
        }
    };
    let cfg = BitConfig::uniform(bits);
    let net = graph::build(model, input, classes, widths, &cfg)?;
    let base = graph::build(model, input, classes, None, &cfg)?;
    Ok((net, base))
}

/// The network a `cost` command asks for; `None`s take the defaults of [`networks`].
struct NetworkSpec {
    model: ModelKind,
    input: Option<Shape>,
    classes: Option<usize>,
    widths: Option<Vec<usize>>,
}

/// Model, input, classes and widths from `--arch`, `--data` or the flags themselves.
fn network_args(a: &Args) -> Result<NetworkSpec> {
    if let Some(path) = &a.arch {
        let arch = crate::graph::ArchFile::load(path)?;
        return Ok(NetworkSpec { model: arch.model, input: Some(arch.input), classes: Some(arch.classes), widths: Some(arch.widths) });
    }
    let model = super::args::model_kind(a.model.ok_or_else(|| super::usage("give --model or --arch"))?, a.width_mult)?;
    let (input, classes) = match &a.data {
        Some(d) => {
            let (shape, classes) = d.shape_and_classes().ok_or_else(|| super::usage("--data takes a built-in dataset here"))?;
            (Some(shape), Some(classes))
        }
        None => (a.input, a.classes),
    };
    Ok(NetworkSpec { model, input, classes, widths: a.widths.clone() })
}

pub fn run(a: Args) -> Result<ExitCode> {
    let profile = crate::cost::load_profile(&a.profile)?;
    let n = network_args(&a)?;
    let (net, base) = networks(n.model, n.input, n.classes, n.widths.as_deref(), a.bits)?;
    let eval = Evaluator::new(&profile)?;
    let report = eval.evaluate(&net, &base).with_context(|| format!("costing {} under {}", net.model, profile.name))?;
    if a.json {
        super::emit_json(&CostJson::new(&profile, &net, &report))?;
    } else {
        super::emit(&format_report(&profile, &net, &report))?;
    }
    Ok(if a.strict && !report.passes() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// `nce cost --json`: the network, every metric with its per-layer values by layer name, and
/// the budget verdicts.
#[derive(serde::Serialize)]
struct CostJson<'a> {
    model: &'a str,
    input: String,
    classes: usize,
    profile: &'a str,
    profile_file: &'a std::path::Path,
    metrics: Vec<MetricJson<'a>>,
    budgets: &'a [crate::cost::BudgetVerdict],
    pass: bool,
    /// The width slots: index, the first layer that uses it, and its width.
    slots: Vec<SlotJson<'a>>,
}

#[derive(serde::Serialize)]
struct SlotJson<'a> {
    slot: usize,
    layer: &'a str,
    width: usize,
    /// Every layer whose output channels the slot sets (its convs, and the depthwise convs that
    /// follow them).
    layers: Vec<&'a str>,
}

#[derive(serde::Serialize)]
struct MetricJson<'a> {
    metric: &'a str,
    unit: &'a str,
    plugin: &'a str,
    total: f64,
    /// False for peaks (e.g. the largest activation buffer): the total is not a sum.
    separable: bool,
    per_layer: Vec<LayerValue<'a>>,
}

#[derive(serde::Serialize)]
struct LayerValue<'a> {
    layer: &'a str,
    value: f64,
}

impl<'a> CostJson<'a> {
    fn new(profile: &'a Profile, net: &'a Network, report: &'a CostReport) -> CostJson<'a> {
        let metric = |m: &'a crate::cost::MetricReport| MetricJson {
            metric: &m.metric,
            unit: &m.unit,
            plugin: &m.plugin,
            total: m.total,
            separable: m.separable,
            per_layer: net.layers.iter().zip(&m.per_layer).map(|(l, &value)| LayerValue { layer: &l.name, value }).collect(),
        };
        CostJson {
            model: &net.model,
            input: net.input.to_string(),
            classes: net.classes,
            profile: &profile.name,
            profile_file: &profile.path,
            metrics: report.metrics.iter().map(metric).collect(),
            budgets: &report.budgets,
            pass: report.passes(),
            slots: (0..net.widths.len())
                .filter_map(|s| {
                    let layers: Vec<&str> = (0..net.layers.len())
                        .filter(|&i| crate::sensitivity::slots::output_slot(net, i) == Some(s))
                        .map(|i| net.layers[i].name.as_str())
                        .collect();
                    Some(SlotJson { slot: s, layer: layers.first()?, width: net.widths[s], layers })
                })
                .collect(),
        }
    }
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

/// Widest table line: every column header is printed in full, so metrics that do not fit
/// beside the layer columns go into a further table below.
const MAX_WIDTH: usize = 100;

/// The human-readable report (one string, so that a closed stdout is one write to handle).
pub fn format_report(profile: &Profile, net: &Network, report: &CostReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{} on {} under profile {} ({})", net.model, net.input, profile.name, profile.path.display());
    for chunk in metric_chunks(report) {
        out.push_str(&layer_table(net, &chunk));
    }
    if net.model.starts_with(crate::graph::imported::PREFIX) {
        out.push_str(&slot_list(net));
    }
    for m in &report.metrics {
        let total = format!("{:.6}", m.total);
        let total = total.trim_end_matches('0').trim_end_matches('.');
        let peak = if m.separable { "" } else { ", peak, not a sum" };
        let _ = writeln!(out, "  {:<22} {total:>16} {:<6} ({}{peak})", m.metric, m.unit, m.plugin);
    }
    if report.budgets.is_empty() {
        let _ = writeln!(out, "no budgets in this profile");
    }
    for b in &report.budgets {
        let verdict = if b.pass { "PASS" } else { "FAIL" };
        let _ = writeln!(out, "budget {:<22} {:>12} <= {:>12} ({}) {verdict}", b.metric, human(b.value), human(b.max), b.limit);
    }
    out
}

/// The width slots with their full layer names (imported networks, whose ONNX names the
/// table truncates): `slot 0   64: /stem/Conv, /layers.0/conv2/Conv`.
fn slot_list(net: &Network) -> String {
    let mut out = String::from("width slots (convs sharing a slot keep equal widths):\n");
    for (slot, w) in net.widths.iter().enumerate() {
        let names: Vec<&str> = net.layers.iter().filter(|l| l.width_slot == Some(slot)).map(|l| l.name.as_str()).collect();
        out += &format!("  slot {slot:<3} {w:>5}: {}\n", names.join(", "));
    }
    out
}

/// Width of the layer, W/A and output columns with their separators.
const LAYER_COLUMNS: usize = 22 + 1 + 5 + 1 + 11;

/// The metrics in groups whose columns fit [`MAX_WIDTH`] beside the layer columns.
fn metric_chunks(report: &CostReport) -> Vec<Vec<&crate::cost::MetricReport>> {
    let mut chunks: Vec<Vec<&crate::cost::MetricReport>> = vec![vec![]];
    let mut width = LAYER_COLUMNS;
    for m in &report.metrics {
        let w = column_width(m) + 1;
        let last = chunks.last_mut().expect("never empty");
        if width + w > MAX_WIDTH && !last.is_empty() {
            chunks.push(vec![]);
            width = LAYER_COLUMNS;
        }
        chunks.last_mut().expect("never empty").push(m);
        width += w;
    }
    chunks
}

fn column_width(m: &crate::cost::MetricReport) -> usize {
    m.metric.chars().count().max(8)
}

/// One table: a row per layer with a cost, a column per metric of `metrics`, then the totals.
fn layer_table(net: &Network, metrics: &[&crate::cost::MetricReport]) -> String {
    let row = |name: &str, bits: &str, shape: &str, cells: Vec<String>| {
        let mut r = format!("{:<22} {:>5} {:>11}", truncate(name, 22), bits, shape);
        for (m, c) in metrics.iter().zip(cells) {
            r.push_str(&format!(" {c:>w$}", w = column_width(m)));
        }
        r + "\n"
    };
    let mut out = row("layer", "W/A", "out", metrics.iter().map(|m| m.metric.clone()).collect());
    for (i, l) in net.layers.iter().enumerate() {
        if !l.has_weights() && metrics.iter().all(|m| m.per_layer[i] == 0.0) {
            continue;
        }
        let bits = if l.has_weights() { format!("{}/{}", l.wbits, l.abits) } else { "-".into() };
        out += &row(&l.name, &bits, &l.out_shape.to_string(), metrics.iter().map(|m| human(m.per_layer[i])).collect());
    }
    out + &row("total", "", "", metrics.iter().map(|m| human(m.total)).collect())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

//! `nce allocate`: widths from measured sensitivity, without a search (see [`crate::allocate`]).

use crate::allocate::{self, AllocateConfig};
use crate::data::DatasetId;
use crate::graph::{ModelKind, Shape};
use crate::sensitivity::Measure;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct AllocateArgs {
    /// A `sensitivity.csv` from `nce sensitivity` on a checkpoint of this model.
    #[arg(long)]
    sensitivity: PathBuf,
    /// Which column ranks the layers.
    #[arg(long, value_enum, default_value_t = Measure::OneOffGain)]
    measure: Measure,
    /// Hardware profile whose budgets the widths must meet (a file or a shipped name).
    #[arg(long)]
    profile: PathBuf,
    /// resnet20 | resnet32 | resnet56 | mobilenetv2 | …
    #[arg(long)]
    model: ModelKind,
    /// Width multiplier of a MobileNet.
    #[arg(long, value_parser = crate::cli::args::positive_f64)]
    width_mult: Option<f64>,
    /// Input shape and classes of a built-in dataset (default fashion-mnist).
    #[arg(long, value_parser = super::args::dataset, default_value = "fashion-mnist", conflicts_with_all = ["input"])]
    data: DatasetId,
    /// Input as CxHxW, with --classes, instead of --data.
    #[arg(long, requires = "classes")]
    input: Option<Shape>,
    /// Classes of the classifier, with --input.
    #[arg(long)]
    classes: Option<usize>,
    /// Smallest width as a multiple of the base width.
    #[arg(long, default_value_t = 0.5)]
    min_ratio: f64,
    /// Largest width as a multiple of the base width.
    #[arg(long, default_value_t = 2.0)]
    max_ratio: f64,
    /// Shrinkage toward uniform: every slot's score gets this many mean scores added.
    #[arg(long, default_value_t = 1.0)]
    prior: f64,
    /// The architecture file to write.
    #[arg(short, long, default_value = "arch.toml")]
    out: PathBuf,
}

pub fn run(a: AllocateArgs) -> Result<ExitCode> {
    let model = super::args::model_kind(a.model, a.width_mult)?;
    let (input, classes) = match (a.input, a.classes) {
        (Some(i), Some(c)) => (i, c),
        _ => a
            .data
            .shape_and_classes()
            .ok_or_else(|| super::usage("--data takes a built-in dataset here; else give --input and --classes"))?,
    };
    if !(a.prior >= 0.0 && a.prior.is_finite()) {
        return Err(super::usage("--prior must be a finite number ≥ 0"));
    }
    if !(a.min_ratio > 0.0 && a.min_ratio <= 1.0 && a.max_ratio >= 1.0 && a.max_ratio.is_finite()) {
        return Err(super::usage("--min-ratio must be in (0, 1] and --max-ratio at least 1"));
    }
    let cfg = AllocateConfig {
        measure: a.measure,
        min_ratio: a.min_ratio,
        max_ratio: a.max_ratio,
        prior: a.prior,
        ..AllocateConfig::new(model, input, classes, a.profile.clone(), a.sensitivity.clone())
    };
    let r = allocate::allocate(&cfg).with_context(|| format!("allocating {model} under {}", a.profile.display()))?;
    allocate::save(&r, &a.out)?;
    let mut out = format!("{model}: widths from {} ({:?}), binding budget at {:.4}x\n", a.sensitivity.display(), a.measure, r.utilisation);
    out += &format!("{:<24} {:>6} {:>6} {:>6} {:>10}\n", "slot", "base", "start", "width", "score");
    for (l, (s, sc)) in r.arch.layers.iter().zip(r.start.iter().zip(&r.scores)) {
        let score = sc.map_or("—".to_string(), |v| format!("{v:.4}"));
        out += &format!("{:<24} {:>6} {:>6} {:>6} {:>10}\n", l.name, l.base, s, l.width, score);
    }
    for b in &r.arch.budgets {
        out += &format!("budget {}: {:.6} of {:.6} ({})\n", b.metric, b.value, b.max, if b.pass { "pass" } else { "FAIL" });
    }
    out += &format!("predicted gain over the start: {:+.4}\narchitecture: {}\n", r.predicted_gain, a.out.display());
    super::emit(&out)?;
    Ok(ExitCode::SUCCESS)
}

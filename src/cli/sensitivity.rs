//! `nce sensitivity`: per-layer 2-bit sensitivity of an FP32 checkpoint (see
//! [`crate::sensitivity`]).

use crate::sensitivity::{self, Progress, SensitivityConfig};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct SensitivityArgs {
    /// A full-precision checkpoint written by `nce train --bits 32`.
    checkpoint: PathBuf,
    #[command(flatten)]
    source: super::args::DataSource,
    /// Validation images: the last N of the training set (never the test set). The calibration
    /// batch is the first training images.
    #[arg(long, value_parser = super::args::positive, default_value_t = 10_000)]
    val_images: usize,
    /// Validation batches (of 500) for the empirical Fisher of the `fit` measure (0 = skip it).
    #[arg(long, default_value_t = 8)]
    fisher_batches: usize,
    /// Training images used to calibrate the PACT clips.
    #[arg(long, value_parser = super::args::positive, default_value_t = 256)]
    calib_batch: usize,
    // `--out`: the folder for sensitivity.csv and sensitivity.{svg,png}.
    #[command(flatten)]
    run: super::args::RunArgs,
}

impl TryFrom<&SensitivityArgs> for SensitivityConfig {
    type Error = anyhow::Error;

    fn try_from(a: &SensitivityArgs) -> Result<SensitivityConfig> {
        // The dataset defaults to the checkpoint's; its name is needed to find its folder.
        let default = match &a.source.data {
            Some(_) => String::new(),
            None => crate::train::load_model(&a.checkpoint)?.meta.config.data,
        };
        let (data, data_root) = a.source.resolve(&default)?;
        Ok(SensitivityConfig {
            data: Some(data),
            data_root,
            val_images: a.val_images,
            fisher_batches: a.fisher_batches,
            calib_batch: a.calib_batch,
            threads: a.run.threads,
            ..SensitivityConfig::new(a.checkpoint.clone(), a.run.out_or("sensitivity"))
        })
    }
}

pub fn run(a: SensitivityArgs) -> Result<ExitCode> {
    let c = SensitivityConfig::try_from(&a)?;
    let bar = super::progress::bar(0, "layers", "layers");
    let mut on_progress = |p: Progress| match p {
        _ if a.run.quiet => {}
        Progress::Baseline { layers, .. } => bar.set_length(layers as u64),
        Progress::Layer(_) => bar.inc(1),
    };
    let r = sensitivity::run_with(&c, &mut on_progress).with_context(|| format!("sensitivity of {}", a.checkpoint.display()))?;
    bar.finish_and_clear();
    let mut out = format!(
        "{} on {} validation images of {} (the last of its training set): FP32 {:.2}%, W2A2 {:.2}%\n",
        r.model, r.val_images, r.data, r.fp32_acc, r.w2a2_acc
    );
    out +=
        &format!("{:<20} {:>12} {:>12} {:>12} {:>12} {:>10}\n", "layer", "one-on acc", "one-on drop", "one-off acc", "one-off gain", "fit");
    for l in &r.layers {
        out += &format!(
            "{:<20} {:>11.2}% {:>+9.2} pp {:>11.2}% {:>+9.2} pp {:>10.3e}\n",
            l.layer, l.one_on_acc, l.one_on_drop, l.one_off_acc, l.one_off_gain, l.fit
        );
    }
    out += &format!("table: {}\n", r.csv.display());
    for p in &r.plots {
        out += &format!("chart: {}\n", p.display());
    }
    super::emit(&out)?;
    Ok(ExitCode::SUCCESS)
}

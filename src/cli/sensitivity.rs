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
    data: super::args::DataArgs,
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
        let default = match &a.data.source.data {
            Some(_) => String::new(),
            None => crate::train::load_model(&a.checkpoint)?.meta.config.data,
        };
        let (data, data_root) = a.data.source.resolve(&default)?;
        Ok(SensitivityConfig {
            data: Some(data),
            data_root,
            test_subset: a.data.test_subset,
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
        "{} on {} test images of {}: FP32 {:.2}%, W2A2 {:.2}% (clips calibrated, no training)\n",
        r.model, r.test_images, r.data, r.fp32_acc, r.w2a2_acc
    );
    out += &format!("{:<20} {:>12} {:>12} {:>12} {:>12}\n", "layer", "one-on acc", "one-on drop", "one-off acc", "one-off gain");
    for l in &r.layers {
        out += &format!(
            "{:<20} {:>11.2}% {:>+9.2} pp {:>11.2}% {:>+9.2} pp\n",
            l.layer, l.one_on_acc, l.one_on_drop, l.one_off_acc, l.one_off_gain
        );
    }
    out += &format!("table: {}\n", r.csv.display());
    for p in &r.plots {
        out += &format!("chart: {}\n", p.display());
    }
    super::emit(&out)?;
    Ok(ExitCode::SUCCESS)
}

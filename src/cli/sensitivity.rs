//! `nce sensitivity`: per-layer 2-bit sensitivity of an FP32 checkpoint (see
//! [`crate::sensitivity`]).

use crate::sensitivity::{self, SensitivityConfig};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct SensitivityArgs {
    /// A full-precision checkpoint written by `nce train --bits 32`.
    checkpoint: PathBuf,
    /// Dataset (default: the one it was trained on).
    #[arg(long)]
    data: Option<String>,
    #[arg(long, default_value = "data")]
    data_root: PathBuf,
    /// Evaluate on the first N test images (file order); default the whole test set.
    #[arg(long, value_parser = super::args::positive)]
    test_subset: Option<usize>,
    /// Training images used to calibrate the PACT clips.
    #[arg(long, value_parser = super::args::positive, default_value_t = 256)]
    calib_batch: usize,
    #[arg(long, value_parser = super::args::threads, default_value_t = 0)]
    threads: usize,
    /// Folder for sensitivity.csv and sensitivity.{svg,png}.
    #[arg(long, default_value = "runs/sensitivity")]
    out: PathBuf,
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: SensitivityArgs) -> Result<ExitCode> {
    let mut c = SensitivityConfig::new(a.checkpoint.clone(), a.out);
    c.data = a.data;
    c.data_root = a.data_root;
    c.test_subset = a.test_subset;
    c.calib_batch = a.calib_batch;
    c.threads = a.threads;
    let r = sensitivity::run(&c, !a.quiet).with_context(|| format!("sensitivity of {}", a.checkpoint.display()))?;
    println!(
        "{} on {} test images of {}: FP32 {:.2}%, W2A2 {:.2}% (clips calibrated, no training)",
        r.model, r.test_images, r.data, r.fp32_acc, r.w2a2_acc
    );
    println!("{:<20} {:>12} {:>12} {:>12} {:>12}", "layer", "one-on acc", "one-on drop", "one-off acc", "one-off gain");
    for l in &r.layers {
        println!("{:<20} {:>11.2}% {:>+9.2} pp {:>11.2}% {:>+9.2} pp", l.layer, l.one_on_acc, l.one_on_drop, l.one_off_acc, l.one_off_gain);
    }
    println!("table: {}", r.csv.display());
    for p in &r.plots {
        println!("chart: {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

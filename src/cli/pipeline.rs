//! `nce pipeline`: every stage from FP32 training to the report (see [`crate::pipeline`]).

use crate::graph::ModelKind;
use crate::pipeline::{self, PipelineConfig, Schedule, ScheduleSource};
use anyhow::{bail, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct PipelineArgs {
    /// Hardware profile whose budgets and cost plugins drive the search and the report.
    #[arg(long)]
    profile: PathBuf,
    /// resnet20 | resnet32 | resnet56 | resnet18 | resnet50 | mobilenetv2 (mobilenetv2x0.5: --width-mult 0.5)
    /// [default: the --arch file's model, else resnet20]
    #[arg(long)]
    model: Option<ModelKind>,
    /// An architecture file whose model the pipeline runs (e.g. the one `nce import --arch`
    /// writes, with the import's checkpoint as --init).
    #[arg(long, conflicts_with_all = ["model", "width_mult"])]
    arch: Option<PathBuf>,
    /// Width multiplier of a MobileNet (0.1 to 4, two decimals; default 1)
    #[arg(long, value_parser = crate::cli::args::positive_f64)]
    width_mult: Option<f64>,
    #[command(flatten)]
    data: super::args::DataSource,
    // `--out` is required here; `--threads` are also the engine's validation threads.
    #[command(flatten)]
    run: super::args::SeededRunArgs,
    /// A shipped schedule: quick (reduced, minutes) | full (hours to days on a CPU); the files
    /// are in presets/.
    #[arg(long, default_value = "quick")]
    preset: pipeline::Preset,
    /// A schedule file (TOML, the keys of presets/quick.toml) instead of a preset.
    #[arg(long, conflicts_with = "preset")]
    schedule: Option<PathBuf>,
    /// Use this FP32 checkpoint (`nce train --bits 32`) instead of training one.
    #[arg(long)]
    init: Option<PathBuf>,
}

pub fn run(a: PipelineArgs) -> Result<ExitCode> {
    let (source, schedule) = match &a.schedule {
        Some(file) => (ScheduleSource::File(file.clone()), Schedule::load(file)?),
        None => (ScheduleSource::Preset(a.preset), a.preset.schedule()),
    };
    let run = &a.run.run;
    let out = run.out.clone().ok_or_else(|| super::usage("give -o/--out RUN_FOLDER (one sub-folder per stage, report.md, report.html)"))?;
    let (data, data_root) = a.data.resolve("fashion-mnist")?;
    let (model, _) = crate::cli::model_and_widths(a.model, a.width_mult, a.arch.as_deref())?;
    let mut c = PipelineConfig {
        data_root,
        init: a.init.clone(),
        seed: a.run.seed,
        threads: run.threads,
        progress: !run.quiet,
        ..PipelineConfig::new(a.profile.clone(), model, &data, out, source, schedule)
    };
    if let Some(s) = std::env::var("NCE_PIPELINE_FAIL_STAGE").ok().filter(|s| !s.is_empty()) {
        match pipeline::Stage::from_name(&s) {
            Some(st) => c.fail_stage = Some(st),
            None => bail!("NCE_PIPELINE_FAIL_STAGE={s} names no stage ({})", pipeline::STAGES.join(", ")),
        }
    }
    let s = &c.schedule;
    let fp32 = match (&c.init, &s.fp32_init) {
        (Some(f), _) => format!("from {}", f.display()),
        (None, Some(i)) => format!("from {i}"),
        (None, None) => format!("{} epoch(s)", s.fp32_epochs),
    };
    if c.source == ScheduleSource::Preset(pipeline::Preset::Quick) {
        println!(
            "REDUCED SCHEDULE (--preset quick): FP32 {}, {}-epoch search on {} images, {} W2A2 epoch(s) per network on {} images, \
             {} test images. The report's verdict line says whether its difference is beyond noise; --preset full for results.",
            fp32,
            s.search_epochs,
            s.search_train_subset.map_or("all".into(), |n| n.to_string()),
            s.w2a2_epochs,
            s.train_subset.map_or("all".into(), |n| n.to_string()),
            s.test_subset.map_or("all".into(), |n| n.to_string())
        );
    } else {
        println!(
            "schedule {}: FP32 {}, {}-epoch search, {} W2A2 epochs per network (resumable: rerun the same command)",
            c.source.name(),
            fp32,
            s.search_epochs,
            s.w2a2_epochs
        );
    }
    let r = pipeline::run(&c)?;
    for st in &r.stages {
        println!("{:<14} {:<8} {:>8.1} s  {}", st.stage, st.status.to_string(), st.seconds, st.reason);
    }
    if let Some(line) = &r.summary.verdict_line {
        println!("{line}");
    }
    println!("total {:.1} s; report: {} and {}", r.seconds, r.report_md.display(), r.report_html.display());
    Ok(ExitCode::SUCCESS)
}

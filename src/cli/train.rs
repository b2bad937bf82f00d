//! `nce train` and `nce eval`.

use crate::graph::ModelKind;
use crate::train::{self, TrainConfig};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// resnet20 | resnet32 | resnet56 | resnet18 | resnet50
    #[arg(long, default_value = "resnet20")]
    model: ModelKind,
    /// fashion-mnist | mnist | cifar10
    #[arg(long, default_value = "fashion-mnist")]
    data: String,
    #[arg(long, default_value = "data")]
    data_root: PathBuf,
    /// Bit width of the quantized layers; 32 = full precision.
    #[arg(long, value_parser = super::args::bits, default_value_t = 2)]
    bits: u8,
    /// Bits of the first conv and the last linear.
    #[arg(long, value_parser = super::args::bits, default_value_t = 8)]
    first_last_bits: u8,
    #[arg(long, value_parser = super::args::positive, default_value_t = 10)]
    epochs: usize,
    #[arg(long, value_parser = super::args::positive, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, value_parser = super::args::positive_f64, allow_negative_numbers = true, default_value_t = 0.1)]
    lr: f64,
    #[arg(long, value_parser = super::args::non_negative, allow_negative_numbers = true, default_value_t = 5e-4)]
    weight_decay: f64,
    /// L2 on the PACT clips.
    #[arg(long, value_parser = super::args::non_negative, allow_negative_numbers = true, default_value_t = 1e-4)]
    clip_decay: f64,
    #[arg(long, default_value_t = 1)]
    warmup_epochs: usize,
    /// Plain momentum instead of Nesterov.
    #[arg(long)]
    no_nesterov: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output channels per width slot, comma-separated (default: base widths).
    #[arg(long, value_delimiter = ',', conflicts_with = "arch")]
    widths: Option<Vec<usize>>,
    /// An architecture file written by `nce search` (its widths are used).
    #[arg(long)]
    arch: Option<PathBuf>,
    /// Initialise from this checkpoint (e.g. the FP32 run), by variable name.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Distil from this teacher checkpoint.
    #[arg(long)]
    teacher: Option<PathBuf>,
    #[arg(long, value_parser = super::args::fraction, allow_negative_numbers = true, default_value_t = 0.9)]
    kd_alpha: f64,
    #[arg(long, value_parser = super::args::positive_f64, allow_negative_numbers = true, default_value_t = 4.0)]
    kd_temperature: f64,
    /// Train on the first N training images only (file order; the IDX files are shuffled).
    #[arg(long, value_parser = super::args::positive)]
    train_subset: Option<usize>,
    /// Evaluate on the first N test images only.
    #[arg(long, value_parser = super::args::positive)]
    test_subset: Option<usize>,
    /// Also checkpoint every N steps inside an epoch.
    #[arg(long, default_value_t = 0)]
    checkpoint_every: usize,
    /// Stop with a checkpoint after this many steps in total (continue with --resume).
    #[arg(long, value_parser = super::args::positive)]
    max_steps: Option<usize>,
    /// libtorch threads (0 = default).
    #[arg(long, value_parser = super::args::threads, default_value_t = 0)]
    threads: usize,
    /// Weight quantizer for 2..4-bit layers: sawb | lsq
    #[arg(long, default_value = "sawb")]
    weight_quant: String,
    /// Activation quantizer: pact | lsq
    #[arg(long, default_value = "pact")]
    act_quant: String,
    #[arg(long, default_value = "runs/train")]
    out: PathBuf,
    /// Continue from OUT/checkpoint.ot.
    #[arg(long)]
    resume: bool,
    #[arg(long)]
    quiet: bool,
}

pub fn config(a: &TrainArgs) -> Result<TrainConfig> {
    let mut c = TrainConfig::new(a.model, &a.data, a.bits, a.epochs, a.out.clone());
    c.data_root = a.data_root.clone();
    c.first_last_bits = a.first_last_bits;
    c.batch_size = a.batch_size;
    c.lr = a.lr;
    c.weight_decay = a.weight_decay;
    c.clip_decay = a.clip_decay;
    c.warmup_epochs = a.warmup_epochs;
    c.nesterov = !a.no_nesterov;
    c.seed = a.seed;
    c.widths = a.widths.clone();
    if let Some(arch) = &a.arch {
        c.widths = Some(crate::cli::arch_widths(arch)?);
    }
    c.init = a.init.clone();
    c.teacher = a.teacher.clone();
    c.kd_alpha = a.kd_alpha;
    c.kd_temperature = a.kd_temperature;
    c.train_subset = a.train_subset;
    c.test_subset = a.test_subset;
    c.checkpoint_every = a.checkpoint_every;
    c.max_steps = a.max_steps;
    c.threads = a.threads;
    c.model_options = crate::models::ModelOptions::parse(&a.weight_quant, &a.act_quant).map_err(anyhow::Error::msg)?;
    Ok(c)
}

pub fn run(a: TrainArgs) -> Result<ExitCode> {
    let cfg = config(&a)?;
    let s = train::train(&cfg, a.resume, !a.quiet).with_context(|| format!("training into {}", cfg.out.display()))?;
    if s.final_test_acc.is_nan() {
        println!(
            "stopped after {} steps; continue with the same command and --resume ({})",
            cfg.max_steps.unwrap_or(0),
            s.checkpoint.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "final test accuracy {:.2}% after {} epochs; checkpoint {}; metrics {}",
        100.0 * s.final_test_acc,
        cfg.epochs,
        s.checkpoint.display(),
        cfg.metrics_path().display()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A checkpoint written by `nce train`.
    checkpoint: PathBuf,
    /// Dataset (default: the one it was trained on).
    #[arg(long)]
    data: Option<String>,
    #[arg(long, default_value = "data")]
    data_root: PathBuf,
    #[arg(long, value_parser = super::args::positive)]
    test_subset: Option<usize>,
}

pub fn eval(a: EvalArgs) -> Result<ExitCode> {
    let m = train::load_model(&a.checkpoint)?;
    let name = a.data.unwrap_or_else(|| m.meta.config.data.clone());
    let mut ds = crate::data::load(&name, &a.data_root, crate::data::Split::Test)?;
    if ds.shape != m.meta.net.input {
        anyhow::bail!("{} expects {} inputs, {name} has {}", a.checkpoint.display(), m.meta.net.input, ds.shape);
    }
    if let Some(n) = a.test_subset.filter(|&n| n < ds.len()) {
        ds = ds.subset(n);
    }
    let loader = crate::data::Loader::eval(&ds, 500, tch::Device::Cpu)?;
    let (loss, acc) = train::evaluate(&m.model, &loader);
    println!(
        "{}: {} W{}A{} on {name} test ({} images): accuracy {:.2}%, loss {:.4}",
        a.checkpoint.display(),
        m.meta.net.model,
        m.meta.config.bits,
        m.meta.config.bits,
        ds.len(),
        100.0 * acc,
        loss
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct StripArgs {
    /// A checkpoint written by `nce train`.
    checkpoint: PathBuf,
    /// Where to write the weights-only copy.
    #[arg(short, long)]
    out: PathBuf,
}

/// Drops the optimiser state of a finished checkpoint.
pub fn strip(a: StripArgs) -> Result<ExitCode> {
    crate::train::checkpoint::strip(&a.checkpoint, &a.out)?;
    let size = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    println!("wrote {} ({size} bytes, no optimiser state)", a.out.display());
    Ok(ExitCode::SUCCESS)
}

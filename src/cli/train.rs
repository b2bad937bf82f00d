//! `nce train` and `nce eval`.

use crate::graph::ModelKind;
use crate::train::{self, TrainConfig};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// resnet20 | resnet32 | resnet56 | resnet18 | resnet50 | mobilenetv2 (mobilenetv2x0.5: --width-mult 0.5)
    /// [default: the --arch file's model (e.g. an `nce import`), else resnet20]
    #[arg(long)]
    model: Option<ModelKind>,
    /// Width multiplier of a MobileNet (0.1 to 4, two decimals; default 1)
    #[arg(long, value_parser = crate::cli::args::positive_f64)]
    width_mult: Option<f64>,
    #[command(flatten)]
    data: super::args::TrainDataArgs,
    #[command(flatten)]
    run: super::args::SeededRunArgs,
    /// Bit width of the quantized layers; 32 = full precision.
    #[arg(long, value_parser = super::args::bits, default_value_t = 2)]
    bits: u8,
    /// Bits of the first conv and the last linear.
    #[arg(long, value_parser = super::args::bits, default_value_t = 8)]
    first_last_bits: u8,
    /// Training epochs.
    #[arg(long, value_parser = super::args::positive, default_value_t = 10)]
    epochs: usize,
    /// Images per training step.
    #[arg(long, value_parser = super::args::positive, default_value_t = 128)]
    batch_size: usize,
    /// Peak learning rate (SGD; cosine decay after the warm-up).
    #[arg(long, value_parser = super::args::positive_f64, allow_negative_numbers = true, default_value_t = 0.1)]
    lr: f64,
    /// L2 weight decay.
    #[arg(long, value_parser = super::args::non_negative, allow_negative_numbers = true, default_value_t = 5e-4)]
    weight_decay: f64,
    /// L2 on the PACT clips.
    #[arg(long, value_parser = super::args::non_negative, allow_negative_numbers = true, default_value_t = 1e-4)]
    clip_decay: f64,
    /// Epochs of linear learning-rate warm-up.
    #[arg(long, default_value_t = 1)]
    warmup_epochs: usize,
    /// Plain momentum instead of Nesterov.
    #[arg(long)]
    no_nesterov: bool,
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
    /// Weight of the distillation loss (the rest is the label loss).
    #[arg(long, value_parser = super::args::fraction, allow_negative_numbers = true, default_value_t = 0.9)]
    kd_alpha: f64,
    /// Softmax temperature of the distillation loss.
    #[arg(long, value_parser = super::args::positive_f64, allow_negative_numbers = true, default_value_t = 4.0)]
    kd_temperature: f64,
    /// Also checkpoint every N steps inside an epoch.
    #[arg(long, default_value_t = 0)]
    checkpoint_every: usize,
    /// Stop with a checkpoint after this many steps in total (continue with --resume).
    #[arg(long, value_parser = super::args::positive)]
    max_steps: Option<usize>,
    /// How channels wider than the --init checkpoint's start: their random init, or `quiet`
    /// (copies of existing channels with BatchNorm scale 1e-3: the widened network starts as
    /// the trained one).
    #[arg(long, value_enum, default_value = "random")]
    widen_init: crate::train::WidenInit,
    /// Hold out the last N training images (never trained on) and report accuracy on them
    /// instead of the test set: a validation split for choosing settings.
    #[arg(long, value_parser = super::args::positive, conflicts_with = "test_subset")]
    val_images: Option<usize>,
    /// Weight quantizer of the low-bit layers.
    #[arg(long, value_enum, default_value = "sawb")]
    weight_quant: crate::models::WeightQuantizer,
    /// Activation quantizer.
    #[arg(long, value_enum, default_value = "pact")]
    act_quant: crate::models::ActQuantizer,
    /// Also log the loss of every N-th step to OUT/steps.jsonl.
    #[arg(long, default_value_t = 0)]
    log_every: usize,
    /// BatchNorm statistics over this many equal parts of each batch ("ghost batches"). Under
    /// `mpirun -np N`, pass a multiple of N: the run then computes the same whatever N is
    /// (docs/distributed.md).
    #[arg(long, value_parser = super::args::positive, default_value_t = 1)]
    bn_groups: usize,
    /// Gradient accumulation: split each batch into N shards, forward and backward one at a
    /// time, and sum their gradients before the step, as N MPI ranks would (less memory, the
    /// same run: docs/distributed.md). Pass --bn-groups N (or a multiple) with it.
    #[arg(long, value_parser = super::args::positive, default_value_t = 1)]
    grad_shards: usize,
    /// Continue from OUT/checkpoint.ot.
    #[arg(long)]
    resume: bool,
}

impl TryFrom<&TrainArgs> for TrainConfig {
    type Error = anyhow::Error;

    fn try_from(a: &TrainArgs) -> Result<TrainConfig> {
        let (data, data_root) = a.data.data.source.resolve("fashion-mnist")?;
        let (model, arch_widths) = crate::cli::model_and_widths(a.model, a.width_mult, a.arch.as_deref())?;
        let widths = arch_widths.or_else(|| a.widths.clone());
        let model_options =
            crate::models::ModelOptions { weight: a.weight_quant, activation: a.act_quant, bn_groups: a.bn_groups, ..Default::default() };
        Ok(TrainConfig {
            data_root,
            first_last_bits: a.first_last_bits,
            batch_size: a.batch_size,
            lr: a.lr,
            weight_decay: a.weight_decay,
            clip_decay: a.clip_decay,
            warmup_epochs: a.warmup_epochs,
            nesterov: !a.no_nesterov,
            seed: a.run.seed,
            widths,
            init: a.init.clone(),
            teacher: a.teacher.clone(),
            kd_alpha: a.kd_alpha,
            kd_temperature: a.kd_temperature,
            train_subset: a.data.train_subset,
            test_subset: a.data.data.test_subset,
            checkpoint_every: a.checkpoint_every,
            max_steps: a.max_steps,
            val_images: a.val_images,
            widen_init: a.widen_init,
            log_every: a.log_every,
            grad_shards: a.grad_shards,
            threads: a.run.run.threads,
            model_options,
            ..TrainConfig::new(model, &data, a.bits, a.epochs, a.run.run.out_or("train"))
        })
    }
}

pub fn run(a: TrainArgs) -> Result<ExitCode> {
    let cfg = TrainConfig::try_from(&a)?;
    let s = train::train(&cfg, a.resume, !a.run.run.quiet).with_context(|| format!("training into {}", cfg.out.display()))?;
    if !train::dist::world().is_root() {
        return Ok(ExitCode::SUCCESS);
    }
    if s.final_test_acc.is_nan() {
        println!(
            "stopped after {} steps; continue with the same command and --resume ({})",
            cfg.max_steps.unwrap_or(0),
            s.checkpoint.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "final {} accuracy {:.2}% after {} epochs; checkpoint {}; metrics {}",
        if cfg.val_images.is_some() { "validation" } else { "test" },
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
    #[command(flatten)]
    data: super::args::DataArgs,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// `nce eval --json`.
#[derive(serde::Serialize)]
struct EvalReport {
    checkpoint: PathBuf,
    model: String,
    bits: u8,
    data: String,
    images: usize,
    /// Fraction of test images classified correctly (0..1).
    accuracy: f64,
    /// Mean cross-entropy.
    loss: f64,
}

pub fn eval(a: EvalArgs) -> Result<ExitCode> {
    let m = train::load_model(&a.checkpoint)?;
    let (name, root) = a.data.source.resolve(&m.meta.config.data)?;
    let ds = crate::data::load_for(&name, &root, crate::data::Split::Test, a.data.test_subset, Some(m.meta.net.input))
        .with_context(|| format!("evaluating {}", a.checkpoint.display()))?;
    let (loss, accuracy) = evaluate(&m.model, &ds)?;
    let r = EvalReport {
        checkpoint: a.checkpoint.clone(),
        model: m.meta.net.model.clone(),
        bits: m.meta.config.bits,
        data: name,
        images: ds.len(),
        accuracy,
        loss,
    };
    if a.json {
        super::emit_json(&r)?;
    } else {
        let (b, cp) = (r.bits, r.checkpoint.display());
        let line = format!(
            "{cp}: {} W{b}A{b} on {} test ({} images): accuracy {:.2}%, loss {:.4}\n",
            r.model,
            r.data,
            r.images,
            100.0 * accuracy,
            loss
        );
        super::emit(&line)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// [`train::evaluate`] in chunks of 500 images, with a progress bar on a terminal.
fn evaluate(model: &crate::models::Model, ds: &crate::data::Dataset) -> Result<(f64, f64)> {
    const CHUNK: usize = 500;
    let bar = super::progress::bar(ds.len() as u64, "eval", "images");
    let (mut loss, mut correct) = (0.0, 0.0);
    for start in (0..ds.len()).step_by(CHUNK) {
        let part = ds.select(&(start..(start + CHUNK).min(ds.len())).collect::<Vec<_>>());
        let (l, acc) = train::evaluate(model, &crate::data::Loader::eval(&part, CHUNK, tch::Device::Cpu)?);
        loss += l * part.len() as f64;
        correct += acc * part.len() as f64;
        bar.inc(part.len() as u64);
    }
    bar.finish_and_clear();
    let n = ds.len().max(1) as f64;
    Ok((loss / n, correct / n))
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

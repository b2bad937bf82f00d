//! `nce search`.

use crate::graph::ModelKind;
use crate::search::{self, space::SpaceConfig, SearchConfig};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct SearchArgs {
    /// Hardware profile whose budgets and cost plugins drive the search.
    #[arg(long)]
    profile: PathBuf,
    #[arg(long, default_value = "resnet20")]
    model: ModelKind,
    #[arg(long, default_value = "fashion-mnist")]
    data: String,
    #[arg(long, default_value = "data")]
    data_root: PathBuf,
    #[arg(long, value_parser = super::args::positive, default_value_t = 10)]
    epochs: usize,
    #[arg(long, value_parser = super::args::positive, default_value_t = 128)]
    batch_size: usize,
    /// Bit width in the loop (32 = search in full precision).
    #[arg(long, value_parser = super::args::bits, default_value_t = 2)]
    bits: u8,
    /// Expansion threshold on the widest candidate's probability; `inf` disables expansion (TAS).
    #[arg(long, default_value_t = SpaceConfig::default().threshold)]
    threshold: f64,
    /// Initial candidate ratios of the base width, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = SpaceConfig::default().ratios)]
    ratios: Vec<f64>,
    /// Expansion step (fraction of the base width).
    #[arg(long, default_value_t = SpaceConfig::default().step)]
    step: f64,
    /// Maximum width (multiple of the base width).
    #[arg(long, default_value_t = SpaceConfig::default().cap)]
    cap: f64,
    /// λ of the budget losses.
    #[arg(long, value_parser = super::args::non_negative, allow_negative_numbers = true, default_value_t = 2.0)]
    lambda: f64,
    #[arg(long, value_parser = super::args::non_negative, allow_negative_numbers = true, default_value_t = 0.05)]
    tolerance: f64,
    #[arg(long, value_parser = super::args::positive_f64, allow_negative_numbers = true, default_value_t = 1e-3)]
    arch_lr: f64,
    #[arg(long, value_parser = super::args::positive_f64, allow_negative_numbers = true, default_value_t = 0.1)]
    lr: f64,
    /// Search on the first N training images (split 50/50 into weight and architecture halves).
    #[arg(long, value_parser = super::args::positive)]
    train_subset: Option<usize>,
    #[arg(long, value_parser = super::args::positive, default_value_t = 2000)]
    test_subset: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_parser = super::args::threads, default_value_t = 0)]
    threads: usize,
    #[arg(long, default_value = "runs/search")]
    out: PathBuf,
    /// Trained checkpoint (`nce train`) to start the supernet's weights from.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Epochs of weight steps only before architecture steps (and expansion) start.
    #[arg(long, default_value_t = 0)]
    warmup_epochs: usize,
    /// How the final widths are derived from the search.
    #[arg(long, value_enum, default_value = "cost-aware")]
    derive: search::Derivation,
    /// How the channels an expansion adds start: function-preserving copies or their random init.
    #[arg(long, value_enum, default_value = "preserve")]
    expansion_init: search::ExpansionInit,
    /// Noise on copied filters at expansion, relative to the weight's std.
    #[arg(long, value_parser = super::args::non_negative, allow_negative_numbers = true, default_value_t = 0.01)]
    expansion_noise: f64,
    /// Images of the architecture half that score each epoch's argmax network (TAS derivation).
    #[arg(long, value_parser = super::args::positive, default_value_t = 1000)]
    val_subset: usize,
    #[arg(long)]
    resume: bool,
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: SearchArgs) -> Result<ExitCode> {
    let mut c = SearchConfig::new(a.model, a.profile.clone(), &a.data, a.epochs, a.out.clone());
    c.data_root = a.data_root;
    c.batch_size = a.batch_size;
    c.bits = a.bits;
    c.space = SpaceConfig { ratios: a.ratios, step: a.step, cap: a.cap, granularity: 1, threshold: a.threshold };
    c.lambda = a.lambda;
    c.tolerance = a.tolerance;
    c.arch_lr = a.arch_lr;
    c.lr = a.lr;
    c.train_subset = a.train_subset;
    c.test_subset = Some(a.test_subset);
    c.seed = a.seed;
    c.threads = a.threads;
    c.init = a.init;
    c.warmup_epochs = a.warmup_epochs;
    c.derive = a.derive;
    c.expansion_init = a.expansion_init;
    c.expansion_noise = a.expansion_noise;
    c.val_subset = a.val_subset;
    let r = search::search(&c, a.resume, !a.quiet).with_context(|| format!("searching into {}", c.out.display()))?;
    println!("architecture: {}", r.arch_path.display());
    println!("{:<20} {:>5} {:>6}  candidates", "layer", "base", "width");
    for l in &r.arch.layers {
        let w = r.arch.widths[r.arch.layers.iter().position(|x| x.name == l.name).unwrap_or(0)];
        println!("{:<20} {:>5} {:>6}  {:?}", l.name, l.base, w, l.candidates);
    }
    for b in &r.arch.budgets {
        println!("budget {:<22} {:>14.4} <= {:>14.4} {}", b.metric, b.value, b.max, if b.pass { "PASS" } else { "FAIL" });
    }
    println!("derivation: {}", r.arch.derivation);
    if !r.arch.repaired.is_empty() {
        println!("changed after the argmax: {}", r.arch.repaired.join(", "));
    }
    println!("{} expansion events; log {}", r.arch.expansions.len(), c.out.join("search.jsonl").display());
    Ok(ExitCode::SUCCESS)
}

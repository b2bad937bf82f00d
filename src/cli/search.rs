//! `nce search`.

use crate::graph::ModelKind;
use crate::search::{self, space::SpaceConfig, SearchConfig};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct SearchArgs {
    /// Hardware profile whose budgets and cost plugins drive the search: a file, or the name
    /// of a shipped profile (`nce profiles list`).
    #[arg(long)]
    profile: PathBuf,
    /// resnet20 | resnet32 | resnet56 | resnet18 | resnet50 | mobilenetv2 (mobilenetv2x0.5: --width-mult 0.5)
    /// [default: the --arch file's model, else resnet20]
    #[arg(long)]
    model: Option<ModelKind>,
    /// An architecture file whose model is searched (e.g. the one `nce import --arch` writes;
    /// the search starts from the model's base widths).
    #[arg(long, conflicts_with_all = ["model", "width_mult"])]
    arch: Option<PathBuf>,
    /// Width multiplier of a MobileNet (0.1 to 4, two decimals; default 1)
    #[arg(long, value_parser = crate::cli::args::positive_f64)]
    width_mult: Option<f64>,
    // `--test-subset` defaults to 2,000 images here.
    #[command(flatten)]
    data: super::args::TrainDataArgs,
    #[command(flatten)]
    run: super::args::SeededRunArgs,
    /// Search epochs.
    #[arg(long, value_parser = super::args::positive, default_value_t = 10)]
    epochs: usize,
    /// Images per step (each of the weight and architecture halves).
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
    /// Relative band below each budget in which its loss is zero.
    #[arg(long, value_parser = super::args::non_negative, allow_negative_numbers = true, default_value_t = 0.05)]
    tolerance: f64,
    /// Learning rate of the architecture parameters (Adam).
    #[arg(long, value_parser = super::args::positive_f64, allow_negative_numbers = true, default_value_t = 1e-3)]
    arch_lr: f64,
    /// Learning rate of the supernet's weights (SGD).
    #[arg(long, value_parser = super::args::positive_f64, allow_negative_numbers = true, default_value_t = 0.1)]
    lr: f64,
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
    /// Where candidate sets grow: `threshold` (the paper's rule) or `sensitivity` (guided by
    /// --sensitivity; docs/search.md).
    #[arg(long, value_enum, default_value = "threshold")]
    expansion: ExpansionArg,
    /// `sensitivity.csv` (`nce sensitivity`) for `--expansion sensitivity`.
    #[arg(long, required_if_eq("expansion", "sensitivity"))]
    sensitivity: Option<PathBuf>,
    /// Which column of --sensitivity ranks the layers.
    #[arg(long, value_enum, default_value_t = crate::sensitivity::Measure::OneOffGain)]
    sensitivity_measure: crate::sensitivity::Measure,
    /// γ, the weight of the sensitivity prior on the architecture logits.
    #[arg(long, value_parser = super::args::non_negative, allow_negative_numbers = true, default_value_t = 0.5)]
    sensitivity_prior: f64,
    /// BatchNorm statistics over this many equal parts of each batch ("ghost batches"). Under
    /// `mpirun -np N`, pass a multiple of N: the search then computes the same whatever N is
    /// (docs/distributed.md).
    #[arg(long, value_parser = super::args::positive, default_value_t = 1)]
    bn_groups: usize,
    /// Gradient accumulation: split each batch into N shards, forward and backward one at a
    /// time, as N MPI ranks would (pass --bn-groups N or a multiple with it).
    #[arg(long, value_parser = super::args::positive, default_value_t = 1)]
    grad_shards: usize,
    /// Continue the search in OUT from its checkpoint.
    #[arg(long)]
    resume: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ExpansionArg {
    Threshold,
    Sensitivity,
}

impl TryFrom<&SearchArgs> for SearchConfig {
    type Error = anyhow::Error;

    fn try_from(a: &SearchArgs) -> Result<SearchConfig> {
        let (data, data_root) = a.data.data.source.resolve("fashion-mnist")?;
        let (model, _) = crate::cli::model_and_widths(a.model, a.width_mult, a.arch.as_deref())?;
        Ok(SearchConfig {
            data_root,
            batch_size: a.batch_size,
            bits: a.bits,
            space: SpaceConfig { ratios: a.ratios.clone(), step: a.step, cap: a.cap, granularity: 1, threshold: a.threshold },
            lambda: a.lambda,
            tolerance: a.tolerance,
            arch_lr: a.arch_lr,
            lr: a.lr,
            train_subset: a.data.train_subset,
            test_subset: Some(a.data.data.test_subset.unwrap_or(2000)),
            seed: a.run.seed,
            threads: a.run.run.threads,
            init: a.init.clone(),
            warmup_epochs: a.warmup_epochs,
            derive: a.derive,
            expansion_init: a.expansion_init,
            expansion_noise: a.expansion_noise,
            val_subset: a.val_subset,
            bn_groups: a.bn_groups,
            grad_shards: a.grad_shards,
            expansion: match (a.expansion, &a.sensitivity) {
                (ExpansionArg::Sensitivity, Some(table)) => search::ExpansionRule::Sensitivity(search::Guidance {
                    table: table.clone(),
                    measure: a.sensitivity_measure,
                    prior: a.sensitivity_prior,
                }),
                (ExpansionArg::Sensitivity, None) => return Err(super::usage("--expansion sensitivity needs --sensitivity FILE")),
                (ExpansionArg::Threshold, _) => search::ExpansionRule::Threshold,
            },
            ..SearchConfig::new(model, a.profile.clone(), &data, a.epochs, a.run.run.out_or("search"))
        })
    }
}

pub fn run(a: SearchArgs) -> Result<ExitCode> {
    let c = SearchConfig::try_from(&a)?;
    let r = search::search(&c, a.resume, !a.run.run.quiet).with_context(|| format!("searching into {}", c.out.display()))?;
    if !crate::train::dist::world().is_root() {
        return Ok(ExitCode::SUCCESS);
    }
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

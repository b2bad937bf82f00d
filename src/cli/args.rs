//! Value parsers for command-line numbers, so that out-of-range values are usage errors
//! (exit 2, clap's message naming the flag) before any work starts. Negative numbers are
//! accepted as values by the flags that use these parsers (`allow_negative_numbers`), so
//! `--lr -1` is rejected as a negative learning rate, not as an unknown flag. Also the
//! argument groups several commands share (`#[command(flatten)]`): [`DataArgs`], [`RunArgs`].

use std::path::{Path, PathBuf};

/// Most libtorch / engine threads a command accepts: far above any machine this targets, far
/// below where spawning threads exhausts the stack or the OS.
pub const MAX_THREADS: usize = 1024;

fn number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim().parse::<T>().map_err(|_| format!("`{s}` is not a number"))
}

/// An integer ≥ 1 (epochs, batch sizes, image subsets).
pub fn positive(s: &str) -> Result<usize, String> {
    match number::<usize>(s)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// A finite number ≥ 0 (weight decays, warm-up lengths given as floats, noise).
#[cfg_attr(not(feature = "train"), allow(dead_code))] // only the training commands read it
pub fn non_negative(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("must be a finite number ≥ 0, got {s}"))
    }
}

/// A finite number > 0 (learning rates, temperatures).
pub fn positive_f64(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("must be a finite number > 0, got {s}"))
    }
}

/// A fraction in [0, 1] (distillation weight).
#[cfg_attr(not(feature = "train"), allow(dead_code))] // only the training commands read it
pub fn fraction(s: &str) -> Result<f64, String> {
    let v: f64 = number(s)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be between 0 and 1, got {s}"))
    }
}

/// A bit width nce quantizes to: 2..=8, or 32 for full precision.
#[cfg_attr(not(feature = "train"), allow(dead_code))] // only the training commands read it
pub fn bits(s: &str) -> Result<u8, String> {
    match number::<u8>(s) {
        Ok(b @ (2..=8 | 32)) => Ok(b),
        _ => Err(format!("supported bit widths are 2 to 8 and 32 (full precision), got {s}")),
    }
}

/// Thread count: 0 (the library default) up to [`MAX_THREADS`].
pub fn threads(s: &str) -> Result<usize, String> {
    let n: usize = number(s)?;
    if n <= MAX_THREADS {
        Ok(n)
    } else {
        Err(format!("at most {MAX_THREADS} threads, got {n}"))
    }
}

/// A dataset name: fashion-mnist, mnist, cifar10 or folder:PATH.
pub fn dataset(s: &str) -> Result<crate::data::DatasetId, String> {
    s.parse().map_err(|e: crate::data::DataError| e.to_string())
}

/// Which dataset and where its files are (`--data`, `--data-root`).
#[derive(clap::Args, Clone, Debug)]
pub struct DataSource {
    /// Dataset: fashion-mnist, mnist, cifar10, or folder:PATH (PATH/{train,test}/<class>/*.png;
    /// docs/data.md) [default: fashion-mnist, or the one the checkpoint was trained on].
    #[arg(long, value_parser = dataset)]
    pub data: Option<crate::data::DatasetId>,
    /// Folder holding the datasets [default: $NCE_DATA, else ./data, else the platform data
    /// folder, e.g. ~/.local/share/nce].
    #[arg(long)]
    pub data_root: Option<PathBuf>,
}

impl DataSource {
    /// The dataset, `default` if none was given.
    pub fn id(&self, default: &str) -> anyhow::Result<crate::data::DatasetId> {
        match &self.data {
            Some(d) => Ok(d.clone()),
            None => Ok(default.parse()?),
        }
    }

    /// The dataset's name and the data root that holds it.
    pub fn resolve(&self, default: &str) -> anyhow::Result<(String, PathBuf)> {
        let id = self.id(default)?;
        let root = crate::data::locate(&id, self.data_root.as_deref())?;
        Ok((id.to_string(), root))
    }
}

/// [`DataSource`] and a test subset (commands that evaluate).
#[derive(clap::Args, Clone, Debug)]
pub struct DataArgs {
    #[command(flatten)]
    pub source: DataSource,
    /// Use the first N test images only (file order) [default: all].
    #[arg(long, value_parser = positive)]
    pub test_subset: Option<usize>,
}

/// [`DataArgs`] and a training subset (commands that train).
#[derive(clap::Args, Clone, Debug)]
pub struct TrainDataArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Train on the first N training images only (file order; the dataset files are shuffled).
    #[arg(long, value_parser = positive)]
    pub train_subset: Option<usize>,
}

/// What every long-running command takes: threads, its run folder, quietness.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Cores to compute on: libtorch's threads (0 = libtorch's default) and the CPU engine's
    /// (0 = 1), as in every command (at most 1,024).
    #[arg(long, value_parser = threads, default_value_t = 0)]
    pub threads: usize,
    /// Run folder, created with its parents if missing [default: runs/<command>].
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// No progress bars or per-epoch lines.
    #[arg(long)]
    pub quiet: bool,
}

impl RunArgs {
    /// The run folder, `runs/<command>` if none was given.
    #[cfg_attr(not(feature = "train"), allow(dead_code))] // only the training commands read it
    pub fn out_or(&self, command: &str) -> PathBuf {
        self.out.clone().unwrap_or_else(|| Path::new("runs").join(command))
    }
}

/// [`RunArgs`] and a seed (commands with random choices).
#[derive(clap::Args, Clone, Debug)]
pub struct SeededRunArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Seed of every random choice (initialisation, data order, augmentation, splits).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `--model` with `--width-mult` applied (an error for models without a multiplier).
pub fn model_kind(model: crate::graph::ModelKind, width_mult: Option<f64>) -> Result<crate::graph::ModelKind, crate::graph::GraphError> {
    match width_mult {
        Some(m) => model.with_width_mult(m),
        None => Ok(model),
    }
}

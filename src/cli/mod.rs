//! The command-line front end (the only place that uses `anyhow`). It lives in the library so
//! that a user's own binary can link extra cost plugins and reuse it unchanged:
//! `use my_plugin as _; fn main() -> ExitCode { nce::cli::main() }`.

// Some parsers serve only the training commands.
#[cfg_attr(not(feature = "train"), allow(dead_code))]
mod args;
mod cost;
mod export;
mod measure;
#[cfg(feature = "train")]
mod pipeline;
mod profiles;
#[cfg(feature = "train")]
mod search;
#[cfg(feature = "train")]
mod sensitivity;
#[cfg(feature = "train")]
mod train;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "nce", version, about = "Neural channel expansion for uniform 2-bit CNNs on edge hardware")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List, show and validate hardware profiles.
    Profiles {
        #[command(subcommand)]
        action: profiles::Action,
    },
    /// List the cost plugins linked into this binary.
    Plugins,
    /// Per-layer and total costs of a network under a profile, with budget verdicts.
    Cost(cost::Args),
    /// Quantization-aware (or full-precision) training on real data.
    #[cfg(feature = "train")]
    Train(Box<train::TrainArgs>),
    /// Test accuracy of a checkpoint.
    #[cfg(feature = "train")]
    Eval(train::EvalArgs),
    /// Copy a finished checkpoint without its optimiser state (for distribution).
    #[cfg(feature = "train")]
    Strip(train::StripArgs),
    /// Export a W2A2 checkpoint to a packed `.nce` model (and optionally a C header).
    #[cfg(feature = "train")]
    Export(export::ExportArgs),
    /// List the wgpu adapters (index, name, backend, device type, driver) for `--adapter`.
    #[cfg(feature = "wgpu")]
    Adapters,
    /// Run an exported model on a test set with the integer engine and compare every layer
    /// with the tch integer simulation of its checkpoint.
    Validate(export::ValidateArgs),
    /// Per-layer latency table of the integer engine on this machine (for `latency-lut`), or
    /// `--check` a table against a model's measured latency.
    Measure(Box<measure::MeasureArgs>),
    /// NCE channel search under a hardware profile's budgets.
    #[cfg(feature = "train")]
    Search(Box<search::SearchArgs>),
    /// Per-layer 2-bit quantization sensitivity of an FP32 checkpoint (one-on and one-off).
    #[cfg(feature = "train")]
    Sensitivity(sensitivity::SensitivityArgs),
    /// Every stage from FP32 training to a report: sensitivity, search, W2A2 training of the
    /// searched and the uniform network, export, validation, latency (resumable, skips what is done).
    #[cfg(feature = "train")]
    Pipeline(Box<pipeline::PipelineArgs>),
}

/// The widths of an architecture file written by `nce search` (`widths = [...]`).
pub fn arch_widths(path: &std::path::Path) -> anyhow::Result<Vec<usize>> {
    Ok(crate::graph::ArchFile::load(path)?.widths)
}

/// Parses the process arguments, runs the command and maps errors to an exit code.
pub fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Profiles { action } => profiles::run(action),
        Command::Plugins => {
            for name in crate::cost::plugin_names() {
                let p = crate::cost::find_plugin(name).expect("listed plugin exists");
                println!("{:<16} {}", p.name, p.summary);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cost(args) => cost::run(args),
        #[cfg(feature = "train")]
        Command::Train(args) => train::run(*args),
        #[cfg(feature = "train")]
        Command::Eval(args) => train::eval(args),
        #[cfg(feature = "train")]
        Command::Search(args) => search::run(*args),
        #[cfg(feature = "train")]
        Command::Sensitivity(args) => sensitivity::run(args),
        #[cfg(feature = "train")]
        Command::Pipeline(args) => pipeline::run(*args),
        #[cfg(feature = "train")]
        Command::Export(args) => export::export(args),
        #[cfg(feature = "train")]
        Command::Strip(args) => train::strip(args),
        Command::Validate(args) => export::validate(args),
        #[cfg(feature = "wgpu")]
        Command::Adapters => export::adapters(),
        Command::Measure(args) => measure::run(*args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// 1 when the environment failed a write (full disk, permissions: the command itself was fine),
/// 2 for everything else (bad arguments and inputs, refused outputs).
fn exit_code(e: &anyhow::Error) -> u8 {
    if e.chain().any(write_failed) {
        1
    } else {
        2
    }
}

/// Whether `e` is a failed write of an output file, possibly wrapped in a library error that
/// displays it transparently (and so hides it from the `source` chain).
fn write_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    use crate::fsutil::WriteError;
    if e.downcast_ref::<StdoutError>().is_some() {
        return true;
    }
    if let Some(w) = e.downcast_ref::<WriteError>() {
        return w.is_io();
    }
    if let Some(crate::graph::arch::ArchError::Output(w)) = e.downcast_ref() {
        return w.is_io();
    }
    #[cfg(feature = "train")]
    {
        use crate::train::{CheckpointError, TrainError};
        let ck = |c: &CheckpointError| matches!(c, CheckpointError::Output(w) if w.is_io());
        if let Some(c) = e.downcast_ref::<CheckpointError>() {
            return ck(c);
        }
        match e.downcast_ref::<TrainError>() {
            Some(TrainError::Checkpoint(c)) => return ck(c),
            Some(TrainError::Output(w)) => return w.is_io(),
            _ => {}
        }
        match e.downcast_ref::<crate::search::SearchError>() {
            Some(crate::search::SearchError::Checkpoint(c)) => return ck(c),
            Some(crate::search::SearchError::Output(w)) => return w.is_io(),
            _ => {}
        }
    }
    false
}

/// A reader that stops early (`nce profiles list | head -1`) closes the pipe; `println!` then
/// panics with "failed printing to stdout: Broken pipe". That is the reader's choice, not a
/// failure: end quietly with exit 0, as Unix tools do, for every printing command at once.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied()).unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// Writes `text` to standard output, treating a closed pipe (`nce cost --json | head -1`) as
/// success: the reader has what it wanted, and Rust's `println!` would panic instead.
/// Any other failure (a full disk behind `> file`) is a [`StdoutError`], which exits 1.
pub(crate) fn emit(text: &str) -> Result<(), StdoutError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(StdoutError),
    }
}

/// Standard output could not be written (not a closed pipe).
#[derive(Debug, thiserror::Error)]
#[error("writing to standard output: {0}")]
pub(crate) struct StdoutError(std::io::Error);

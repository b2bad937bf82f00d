//! The command-line front end (the only place that uses `anyhow`). It lives in the library so
//! that a user's own binary can link extra cost plugins and reuse it unchanged:
//! `use my_plugin as _; fn main() -> ExitCode { nce::cli::main() }`.

// Some parsers serve only the training commands.
#[cfg_attr(not(feature = "train"), allow(dead_code))]
mod allocate;
mod args;
mod cost;
mod export;
#[cfg(feature = "train")]
mod import;
mod measure;
#[cfg(feature = "train")]
mod paths;
#[cfg(feature = "train")]
mod pipeline;
mod profiles;
mod progress;
#[cfg(feature = "train")]
mod search;
#[cfg(feature = "train")]
mod sensitivity;
#[cfg(feature = "train")]
mod train;
mod validate_json;

use anyhow::Result;
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
    /// Import an FP32 CNN from ONNX into a checkpoint and an architecture file.
    #[cfg(feature = "train")]
    Import(import::ImportArgs),
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
    /// Widths from measured sensitivity without a search: budget spent greedily where the
    /// predicted gain per cost is highest (the control for `search --expansion sensitivity`).
    Allocate(Box<allocate::AllocateArgs>),
    /// Every stage from FP32 training to a report: sensitivity, search, W2A2 training of the
    /// searched and the uniform network, export, validation, latency (resumable, skips what is done).
    #[cfg(feature = "train")]
    Pipeline(Box<pipeline::PipelineArgs>),
}

/// The widths of an architecture file written by `nce search` (`widths = [...]`).
pub fn arch_widths(path: &std::path::Path) -> anyhow::Result<Vec<usize>> {
    Ok(crate::graph::ArchFile::load(path)?.widths)
}

/// The model a command runs: `--model` (with `--width-mult`) if given, else the `--arch`
/// file's (how an imported network, whose graph the file holds, reaches `train` and `search`),
/// else ResNet-20; and the architecture file's widths, if one is given.
#[cfg(feature = "train")]
pub(crate) fn model_and_widths(
    model: Option<crate::graph::ModelKind>,
    width_mult: Option<f64>,
    arch: Option<&std::path::Path>,
) -> anyhow::Result<(crate::graph::ModelKind, Option<Vec<usize>>)> {
    let arch = arch.map(crate::graph::ArchFile::load).transpose()?;
    let model = match (model, &arch) {
        (Some(m), _) => m,
        (None, Some(a)) if width_mult.is_none() => return Ok((a.model, Some(a.widths.clone()))),
        (None, _) => crate::graph::ModelKind::Resnet20,
    };
    Ok((args::model_kind(model, width_mult)?, arch.map(|a| a.widths)))
}

#[cfg(feature = "train")]
pub(crate) use paths::recorded_path;

/// How a model file records its checkpoint: relative to the model file (`holder`) when there
/// is one, else as given.
#[cfg(feature = "train")]
pub(crate) fn recorded_source(checkpoint: &std::path::Path, holder: Option<&std::path::Path>) -> String {
    holder.map_or_else(|| checkpoint.to_path_buf(), |h| paths::relative_to_holder(checkpoint, h)).display().to_string()
}

/// Parses the process arguments, runs the command and maps errors to an exit code.
pub fn main() -> ExitCode {
    let _runtime_dir = ensure_xdg_runtime_dir();
    keep_freed_memory();
    quiet_on_closed_stdout();
    // EGL's initialisation failures on machines without a GL driver are not errors of the run
    // (wgpu falls back to another backend); `RUST_LOG` still shows them.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,wgpu_hal::gles::egl=off".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let cli = Cli::parse();
    #[cfg(feature = "train")]
    let _dist = match join_mpi_job(&cli.command) {
        Ok(session) => session,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            return ExitCode::from(exit_code(&e));
        }
    };
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
        Command::Import(args) => import::run(args),
        #[cfg(feature = "train")]
        Command::Train(args) => train::run(*args),
        #[cfg(feature = "train")]
        Command::Eval(args) => train::eval(args),
        #[cfg(feature = "train")]
        Command::Search(args) => search::run(*args),
        #[cfg(feature = "train")]
        Command::Sensitivity(args) => sensitivity::run(args),
        Command::Allocate(args) => allocate::run(*args),
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
        #[cfg(feature = "train")]
        Err(e) if crate::train::dist::world().size > 1 => {
            // The other ranks may be waiting for this one in a collective: end them all now.
            let w = crate::train::dist::world();
            eprintln!("error (rank {} of {}): {}", w.rank, w.size, message(&e));
            w.abort(i32::from(exit_code(&e)))
        }
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Joins the MPI job for `nce train` and `nce search` (the data-parallel commands); the other
/// commands run as one process and refuse to start as one of several ranks.
#[cfg(feature = "train")]
fn join_mpi_job(command: &Command) -> Result<Option<crate::train::dist::Session>> {
    if matches!(command, Command::Train(_) | Command::Search(_)) {
        return Ok(Some(crate::train::dist::init()?));
    }
    if let Some((size, var)) = crate::train::dist::launched_size() {
        return Err(UsageError(format!(
            "launched as one of {size} processes ({var} is set), but only `nce train` and `nce search` run data-parallel; run this command as one process"
        ))
        .into());
    }
    Ok(None)
}

/// The error and its causes in one line, each cause once: library errors already quote their
/// source in their own message (`"FILE: cannot read: {source}"`), so a cause whose text the
/// line holds already is not repeated.
fn message(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !line.contains(&c) {
            line.push_str(": ");
            line.push_str(&c);
        }
    }
    line
}

/// The exit status of a failed command: 2 for a usage error (clap's own, or a [`UsageError`]
/// found after parsing), 1 for every other failure (bad input files, refused outputs, failed
/// writes, engine errors). A command's verdict (validate found differences, a budget failed
/// under `--strict`) also exits 1, through its `Ok(ExitCode)`.
fn exit_code(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.downcast_ref::<UsageError>().is_some()) {
        2
    } else {
        1
    }
}

/// Arguments that parse but do not fit together (found after clap): exits 2 like clap's errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub String);

/// A [`UsageError`] as an `anyhow` error (`return Err(usage("give --model or --arch"))`).
pub(crate) fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// wgpu's Vulkan loader prints `error: XDG_RUNTIME_DIR is invalid or not set` when the variable
/// is missing (containers, `sudo`, cron), although nothing fails. Point it at a private (0700,
/// tempfile's mode) folder of our own before any thread or adapter exists; the returned guard
/// removes the folder when the command ends.
fn ensure_xdg_runtime_dir() -> Option<tempfile::TempDir> {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|v| !v.is_empty()) {
        return None;
    }
    let dir = tempfile::Builder::new().prefix("nce-runtime-").tempdir().ok()?;
    // Called first thing in `main`, before any other thread exists.
    std::env::set_var("XDG_RUNTIME_DIR", dir.path());
    Some(dir)
}

/// libtorch allocates and frees buffers for every op. With glibc's defaults, large buffers are
/// mapped and unmapped each time and freed heap is trimmed back to the system, so the kernel
/// zeroes fresh pages all the time: a long `nce train` here spent 37 % of its CPU time in the
/// kernel. Keeping freed memory for reuse (buffers up to 32 MiB from the heap, trim above 1 GiB)
/// does what PyTorch's CPU tuning guide gets from jemalloc; docs/results.md has the timing.
/// Called first thing in `main`, before any other thread exists.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets two allocator parameters; no other thread is allocating yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
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

/// Prints `value` as pretty JSON (the `--json` form of a command's result).
pub(crate) fn emit_json<T: serde::Serialize>(value: &T) -> Result<()> {
    emit(&(serde_json::to_string_pretty(value)? + "\n"))?;
    Ok(())
}

/// Standard output could not be written (not a closed pipe).
#[derive(Debug, thiserror::Error)]
#[error("writing to standard output: {0}")]
pub(crate) struct StdoutError(std::io::Error);

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every option and positional argument of every command says what it is for.
    #[test]
    fn every_option_has_help() {
        let mut missing = Vec::new();
        let mut stack = vec![(String::from("nce"), super::Cli::command())];
        while let Some((path, cmd)) = stack.pop() {
            for arg in cmd.get_arguments().filter(|a| !a.is_hide_set() && !["help", "version"].contains(&a.get_id().as_str())) {
                if arg.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            stack.extend(cmd.get_subcommands().map(|s| (format!("{path} {}", s.get_name()), s.clone())));
        }
        assert!(missing.is_empty(), "options without help: {missing:?}");
    }
}

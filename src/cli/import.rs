//! `nce import`: an FP32 ONNX network into an nce checkpoint and architecture file.

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The ONNX model (FP32, opset 13 or later; docs/import.md lists the ops).
    model: PathBuf,
    /// Where to write the FP32 checkpoint (for `train --init`, `eval`, `search --init`, …).
    #[arg(short, long)]
    out: PathBuf,
    /// Also write the architecture file (the graph and its width slots) for `--arch` of
    /// `train`, `search` and `cost`.
    #[arg(long)]
    arch: Option<PathBuf>,
    /// The model's short name [default: the file stem].
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    data: super::args::DataSource,
}

pub fn run(a: ImportArgs) -> Result<ExitCode> {
    let import = crate::import::read(&a.model, a.name.as_deref())?;
    let net = &import.net;
    let default = match (net.input.c, net.input.h, net.input.w) {
        (3, 32, 32) => "cifar10",
        _ => "fashion-mnist",
    };
    let id = a.data.id(default)?;
    let root = a.data.data_root.clone().unwrap_or_else(|| PathBuf::from("data"));
    let meta = crate::import::CheckpointMeta { data: &id.to_string(), data_root: &root };
    crate::import::write_checkpoint(&import, &a.out, &a.model, &meta).with_context(|| format!("importing {}", a.model.display()))?;
    println!(
        "{}: {} layers, {} width slots, {} MACs, {} params, input {}, {} classes",
        import.model,
        net.layers.len(),
        net.widths.len(),
        net.macs(),
        net.params(),
        net.input,
        net.classes
    );
    println!("checkpoint: {}", a.out.display());
    if let Some(path) = &a.arch {
        crate::import::arch_file(&import).save(path)?;
        println!("architecture: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

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
    /// Training images on which convs that had no BatchNormalization in the file (PyTorch
    /// folds it into the conv on export) get BatchNorm statistics, so that training starts from
    /// the imported function (the FP32 function is unchanged; docs/import.md).
    #[arg(long, value_parser = super::args::positive, default_value_t = 256)]
    calib_batch: usize,
    /// Keep the folded convs' BatchNorm the identity (no dataset needed).
    #[arg(long)]
    no_calibration: bool,
    /// The input normalisation the network was trained with, `(x − mean) / std` on images in
    /// [0, 1]: one value or one per channel (e.g. `0.485,0.456,0.406`). For graphs that do not
    /// hold it themselves (a `Sub`/`Div` on the image is read as the normalisation).
    #[arg(long, value_delimiter = ',', requires = "std", allow_negative_numbers = true)]
    mean: Vec<f32>,
    /// The std of `--mean`'s normalisation (one value or one per channel).
    #[arg(long, value_delimiter = ',', requires = "mean")]
    std: Vec<f32>,
}

pub fn run(a: ImportArgs) -> Result<ExitCode> {
    let normalization = (!a.mean.is_empty()).then(|| crate::graph::Normalization { mean: a.mean.clone(), std: a.std.clone() });
    let import = crate::import::read_with(&a.model, a.name.as_deref(), normalization)?;
    let net = &import.net;
    let default = match (net.input.c, net.input.h, net.input.w) {
        (3, 32, 32) => "cifar10",
        _ => "fashion-mnist",
    };
    let id = a.data.id(default)?.to_string();
    let root = a.data.data_root.clone().unwrap_or_else(|| PathBuf::from("data"));
    let calibration = if a.no_calibration || import.folded_bn.is_empty() {
        None
    } else {
        match calibration_images(&a, default, net.input) {
            Ok(x) => x,
            // A dataset the user named must work; a guessed one may be absent or not fit.
            Err(e) if a.data.data.is_some() => return Err(e.context("pass --no-calibration to skip the BatchNorm calibration")),
            Err(e) => {
                eprintln!("warning: folded BatchNorms not calibrated ({e:#}); give --data NAME, or --no-calibration");
                None
            }
        }
    };
    let meta = crate::import::CheckpointMeta { data: &id, data_root: &root, calibration: calibration.as_ref() };
    let estimated =
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
    if let Some(n) = import.net.normalization() {
        println!("input normalisation: (x - {:?}) / {:?}", n.mean, n.std);
    }
    if estimated > 0 {
        println!("{estimated} folded BatchNorms calibrated on {} {id} training images", a.calib_batch);
    }
    println!("checkpoint: {}", a.out.display());
    if let Some(path) = &a.arch {
        crate::import::arch_file(&import).save(path)?;
        println!("architecture: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The first `--calib-batch` training images of the dataset, in [0, 1].
fn calibration_images(a: &ImportArgs, default: &str, input: crate::graph::Shape) -> Result<Option<tch::Tensor>> {
    let (name, root) = a.data.resolve(default)?;
    let ds = crate::data::load_for(&name, &root, crate::data::Split::Train, Some(a.calib_batch), Some(input))?;
    Ok(crate::data::Loader::eval(&ds, a.calib_batch, tch::Device::Cpu)?.batch(0, 0).map(|(x, _)| x))
}

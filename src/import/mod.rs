//! `nce import`: a trained FP32 CNN from an ONNX file into nce's layer graph and an FP32
//! checkpoint (`docs/import.md`).
//!
//! - `onnx` decodes the protobuf (the prost messages of `engine::onnx::proto`), checks the
//!   opset, reads the initialisers and orders the nodes;
//! - `lower` walks the nodes into the graph IR: Conv (+ BatchNormalization, + Relu or
//!   Clip(0, 6)) becomes one conv layer, Add, MaxPool, GlobalAveragePool, and a final
//!   Gemm / MatMul(+Add) classifier; Flatten, Reshape to 2-D, Identity and Dropout vanish;
//! - `slots` derives the width slots (convs meeting at an Add share one, depthwise convs
//!   follow their input, the classifier is fixed).
//!
//! The result is a [`ModelKind::Imported`] carrying the graph, so every command that reads a
//! checkpoint or an architecture file rebuilds the network at any width, and the weights under
//! the variable names of [`crate::models`]. Every refusal is one [`ImportError`] naming the
//! file and, where there is one, the node and its op type.

mod lower;
mod onnx;
mod slots;

#[cfg(feature = "train")]
mod checkpoint;
#[cfg(feature = "train")]
pub use checkpoint::{write_checkpoint, CheckpointMeta};

use crate::graph::{self, ArchFile, BitConfig, ImportedGraph, ModelKind, Network, Normalization};
use std::path::{Path, PathBuf};

/// The op types `nce import` reads.
pub const SUPPORTED: &str = "Conv (dense or depthwise), BatchNormalization, Relu, Clip(0, 6), Add, MaxPool, \
AveragePool over the whole map, GlobalAveragePool, Flatten / Reshape to 2-D, Gemm, MatMul(+Add), Identity, Dropout, Constant";

/// The lowest opset of the default domain imported.
pub const MIN_OPSET: i64 = 13;

/// Why an ONNX file cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: {source}", file.display())]
    Io { file: PathBuf, source: std::io::Error },
    #[error("{}: not a readable ONNX model (not ONNX, or truncated): {msg}", file.display())]
    Decode { file: PathBuf, msg: String },
    #[error("{}: {msg}", file.display())]
    Model { file: PathBuf, msg: String },
    #[error("{}: opset {found} of the default ONNX domain; nce imports opset {MIN_OPSET} and later (export again with a newer opset_version)", file.display())]
    Opset { file: PathBuf, found: i64 },
    #[error("{}: initialiser `{name}`: {msg}", file.display())]
    Initializer { file: PathBuf, name: String, msg: String },
    #[error("{}: initialiser `{name}` keeps its data in an external file; nce reads self-contained models (save without external data)", file.display())]
    ExternalData { file: PathBuf, name: String },
    #[error("{}: node `{node}` ({op}): {msg}", file.display())]
    Node { file: PathBuf, node: String, op: String, msg: String },
    #[error("{}: node `{node}` ({op}): op not supported; nce imports {SUPPORTED}", file.display())]
    UnsupportedOp { file: PathBuf, node: String, op: String },
    #[error("{}: the graph has a cycle through node `{node}` ({op})", file.display())]
    Cycle { file: PathBuf, node: String, op: String },
    #[error("{}: {source}", file.display())]
    Graph { file: PathBuf, source: graph::GraphError },
}

/// One FP32 variable of the imported network, under its nce name (`<layer>.weight`, …).
#[derive(Clone, Debug, PartialEq)]
pub struct Variable {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: Vec<f32>,
}

/// An imported network: its kind (carrying the graph), the FP32 network and its weights.
#[derive(Clone, Debug)]
pub struct Import {
    pub model: ModelKind,
    /// The network at its ONNX widths, in full precision.
    pub net: Network,
    pub vars: Vec<Variable>,
    /// Convs that had no BatchNormalization in the file (PyTorch's eval-mode export folds it
    /// into the conv's bias): their BatchNorm is the identity until statistics are estimated.
    pub folded_bn: Vec<String>,
}

/// Reads `path` (an ONNX model) into an [`Import`]; `name` is the model's short name (default:
/// the file stem).
pub fn read(path: &Path, name: Option<&str>) -> Result<Import, ImportError> {
    read_with(path, name, None)
}

/// [`read`] with the input normalisation the network expects when the graph does not hold one
/// (`nce import --mean/--std`).
pub fn read_with(path: &Path, name: Option<&str>, normalization: Option<Normalization>) -> Result<Import, ImportError> {
    let bytes = std::fs::read(path).map_err(|source| ImportError::Io { file: path.into(), source })?;
    let stem = name.map(str::to_string).unwrap_or_else(|| path.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned()));
    from_bytes_with(path, &bytes, &stem, normalization)
}

/// [`read`] on bytes already in memory (without a given normalisation); `path` names them in
/// errors.
pub fn from_bytes(path: &Path, bytes: &[u8], name: &str) -> Result<Import, ImportError> {
    from_bytes_with(path, bytes, name, None)
}

/// [`from_bytes`] with the input normalisation of `nce import --mean/--std` (refused when the
/// graph holds one).
pub fn from_bytes_with(path: &Path, bytes: &[u8], name: &str, normalization: Option<Normalization>) -> Result<Import, ImportError> {
    let model = onnx::decode(path, bytes)?;
    let lowered = lower::lower(path, &model)?;
    let normalization = match (lowered.normalization.clone(), normalization) {
        (Some(_), Some(_)) => {
            return Err(ImportError::Model {
                file: path.into(),
                msg: "the graph normalises its input already (Sub/Div on the image); drop --mean/--std".into(),
            })
        }
        (Some(n), None) => Some(n),
        (None, Some(n)) => {
            let n = Normalization::new(&n.mean, &n.std, lowered.input.c).map_err(|msg| ImportError::Model { file: path.into(), msg })?;
            lower::check_normalised_readers(path, &lowered.layers)?;
            Some(n)
        }
        (None, None) => None,
    }
    .filter(|n| !n.is_identity());
    let widths: Vec<usize> = lowered.shapes.iter().map(|s| s.c).collect();
    let (layers, base_widths) = slots::assign(lowered.layers, &widths);
    let graph = ImportedGraph {
        name: name.to_string(),
        input: lowered.input,
        classes: lowered.classes,
        layers,
        classifier: lowered.classifier,
        base_widths,
        hash: String::new(),
        normalization,
    };
    let model = ModelKind::Imported(graph::Imported::intern(graph));
    let net = graph::build(model, lowered.input, lowered.classes, None, &BitConfig::full_precision())
        .map_err(|source| ImportError::Graph { file: path.into(), source })?;
    check_shapes(path, &net, &lowered.shapes)?;
    Ok(Import { model, net, vars: lowered.vars, folded_bn: lowered.folded })
}

/// The network rebuilt from the graph has the shapes the ONNX file implies.
fn check_shapes(path: &Path, net: &Network, shapes: &[graph::Shape]) -> Result<(), ImportError> {
    for (l, s) in net.layers.iter().zip(shapes) {
        if l.out_shape != *s {
            return Err(ImportError::Model {
                file: path.into(),
                msg: format!("layer `{}`: rebuilt output {} differs from the ONNX graph's {s}", l.name, l.out_shape),
            });
        }
    }
    Ok(())
}

/// The architecture file of an import: its graph, base widths and one entry per width slot
/// (named after the slot's first conv), for `--arch` of `train`, `search` and `cost`.
pub fn arch_file(import: &Import) -> ArchFile {
    let net = &import.net;
    let mut layers = Vec::new();
    for (slot, &w) in net.widths.iter().enumerate() {
        let names: Vec<&str> = net.layers.iter().filter(|l| l.width_slot == Some(slot)).map(|l| l.name.as_str()).collect();
        layers.push(graph::arch::ArchLayer { name: names.join(" + "), base: w, width: w, candidates: vec![w], probs: vec![1.0] });
    }
    ArchFile {
        model: import.model,
        input: net.input,
        classes: net.classes,
        profile: String::new(),
        widths: net.widths.clone(),
        base_widths: net.widths.clone(),
        derivation: "imported".into(),
        repaired: vec![],
        layers,
        costs: vec![],
        budgets: vec![],
        expansions: vec![],
    }
}

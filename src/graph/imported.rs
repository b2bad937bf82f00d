//! Networks imported from ONNX (`nce import`, `docs/import.md`): the layer graph is not written
//! in a family file but carried as data, an [`ImportedGraph`], inside the model kind
//! ([`ModelKind::Imported`](super::ModelKind)). Every file that records a model kind (a
//! checkpoint's training configuration, an architecture file) therefore holds the whole graph,
//! and every command rebuilds the network from it at any widths, as it does a ResNet.
//!
//! Graphs are interned: one leaked copy per distinct graph in a process, so the kind stays
//! `Copy` and two kinds compare by identity.

use super::builder::Builder;
use super::{Op, Shape, Src};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::{Mutex, OnceLock};

/// One layer of an imported graph, without shapes: what the builder replays.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TemplateLayer {
    /// The ONNX node's name (the conv's, for a Conv → BatchNormalization → Relu chain).
    pub name: String,
    pub op: Op,
    pub inputs: Vec<Src>,
    /// The width slot of a dense conv; `None` for depthwise convs (they follow their input) and
    /// for layers without weights.
    pub slot: Option<usize>,
}

/// An imported network: the layers before the classifier, the classifier's name, the width
/// slots' base widths, and the input it was exported for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImportedGraph {
    /// A short name (the ONNX file's stem).
    pub name: String,
    /// The input shape of the ONNX graph, written `CxHxW`.
    #[serde(with = "super::shape_text")]
    pub input: Shape,
    pub classes: usize,
    pub layers: Vec<TemplateLayer>,
    /// The final fully connected layer's ONNX name.
    pub classifier: String,
    /// One per width slot: the ONNX model's output channels.
    pub base_widths: Vec<usize>,
    /// A short content hash (hex), part of the model's name so that two imports of the same
    /// stem stay apart.
    pub hash: String,
    /// The input normalisation the network expects (`(x − mean) / std` per channel, on images
    /// in [0, 1]), from the graph's `Sub`/`Div` or `nce import --mean/--std`; absent in files
    /// of imports without one (which keep their hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<Normalization>,
}

/// Per-channel input normalisation `(x − mean) / std` of images in [0, 1] (finite values,
/// `std ≠ 0`, one per input channel; checked by the importer and by [`Normalization::new`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    /// `mean` and `std` for `channels` channels: one value (for all) or one per channel, finite,
    /// `std` not zero.
    pub fn new(mean: &[f32], std: &[f32], channels: usize) -> Result<Normalization, String> {
        let expand = |v: &[f32], what: &str| -> Result<Vec<f32>, String> {
            match v.len() {
                1 => Ok(vec![v[0]; channels]),
                n if n == channels => Ok(v.to_vec()),
                n => Err(format!("{n} {what} values for {channels} input channels (give 1 or {channels})")),
            }
        };
        let (mean, std) = (expand(mean, "mean")?, expand(std, "std")?);
        if let Some(v) = mean.iter().chain(&std).find(|v| !v.is_finite()) {
            return Err(format!("normalisation value {v} is not finite"));
        }
        if std.contains(&0.0) {
            return Err("a std of 0 divides by zero".into());
        }
        Ok(Normalization { mean, std })
    }

    /// The identity normalisation (mean 0, std 1 on every channel).
    pub fn is_identity(&self) -> bool {
        self.mean.iter().all(|&m| m == 0.0) && self.std.iter().all(|&s| s == 1.0)
    }
}

// The values are finite (checked on construction), so equality is an equivalence.
impl Eq for Normalization {}

impl std::hash::Hash for Normalization {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for v in self.mean.iter().chain(&self.std) {
            v.to_bits().hash(state);
        }
    }
}

/// An interned imported graph: `Copy`, compared by identity.
#[derive(Clone, Copy)]
pub struct Imported(&'static ImportedGraph);

impl Imported {
    /// The interned copy of `graph` (the same one for equal graphs).
    pub fn intern(mut graph: ImportedGraph) -> Imported {
        graph.hash = content_hash(&graph);
        let table = INTERNED.get_or_init(|| Mutex::new(Vec::new()));
        let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = t.iter().find(|g| ***g == graph) {
            return Imported(g);
        }
        let g: &'static ImportedGraph = Box::leak(Box::new(graph));
        t.push(g);
        Imported(g)
    }

    /// The interned graph named `name` (`onnx:<stem>@<hash>`), if this process has seen it.
    pub fn find(name: &str) -> Option<Imported> {
        let t = INTERNED.get()?.lock().unwrap_or_else(|e| e.into_inner());
        t.iter().find(|g| model_name(g) == name).map(|g| Imported(g))
    }

    pub fn graph(self) -> &'static ImportedGraph {
        self.0
    }

    /// `onnx:<stem>@<hash>`.
    pub fn name(self) -> String {
        model_name(self.0)
    }
}

static INTERNED: OnceLock<Mutex<Vec<&'static ImportedGraph>>> = OnceLock::new();

/// The prefix of imported models' names.
pub const PREFIX: &str = "onnx:";

fn model_name(g: &ImportedGraph) -> String {
    format!("{PREFIX}{}@{}", g.name, g.hash)
}

/// FNV-1a (64 bits) of the graph's JSON without its hash: stable across builds and platforms.
fn content_hash(g: &ImportedGraph) -> String {
    let mut g = g.clone();
    g.hash.clear();
    let json = serde_json::to_vec(&g).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:08x}", h >> 32)
}

impl PartialEq for Imported {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}
impl Eq for Imported {}

impl std::hash::Hash for Imported {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(self.0, state)
    }
}

impl fmt::Debug for Imported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Replays the graph's layers into the builder (the classifier is added by `build`).
pub(super) fn replay(b: &mut Builder, g: &ImportedGraph) {
    if let Some(n) = &g.normalization {
        if let Err(msg) = Normalization::new(&n.mean, &n.std, g.input.c).and_then(|m| check_exact(&m, n)) {
            return b.fail_structure(&g.name, &format!("input normalisation: {msg}"));
        }
    }
    let mut slots: Vec<Option<usize>> = vec![None; g.base_widths.len()];
    for (i, l) in g.layers.iter().enumerate() {
        if let Err(msg) = wiring(l, i) {
            return b.fail_structure(&l.name, &msg);
        }
        match (&l.op, l.slot) {
            (Op::Conv { .. }, Some(s)) => {
                let Some(&base) = g.base_widths.get(s) else { return b.fail_structure(&l.name, "names a width slot the graph lacks") };
                let slot = *slots[s].get_or_insert_with(|| b.slot(&l.name, base));
                b.conv_op_in_slot(&l.name, l.inputs[0], l.op.clone(), slot);
            }
            (Op::Conv { .. }, None) => {
                b.depthwise_op(&l.name, l.inputs[0], l.op.clone());
            }
            _ => {
                b.push(&l.name, l.op.clone(), l.inputs.clone(), None, None);
            }
        }
    }
}

/// A stored normalisation is already one value per channel.
fn check_exact(expanded: &Normalization, stored: &Normalization) -> Result<(), String> {
    if expanded != stored {
        return Err(format!("{} mean and {} std values for the input's channels", stored.mean.len(), stored.std.len()));
    }
    Ok(())
}

/// A template layer reads earlier layers only, as many as its op takes.
fn wiring(l: &TemplateLayer, i: usize) -> Result<(), String> {
    let want = match l.op {
        Op::Add { .. } => 2,
        Op::Linear => return Err("a fully connected layer before the classifier is not supported".into()),
        _ => 1,
    };
    if l.inputs.len() != want {
        return Err(format!("expected {want} input(s), got {}", l.inputs.len()));
    }
    if let Some(s) = l.inputs.iter().find(|s| matches!(s, Src::Layer(j) if *j >= i)) {
        return Err(format!("reads {s:?}, which does not come before it"));
    }
    let window = match l.op {
        Op::Conv { k, stride, pad, .. } | Op::MaxPool { k, stride, pad } => Some((k, stride, pad)),
        Op::Subsample { stride } => Some((1, stride, 0)),
        _ => None,
    };
    match window {
        Some((k, stride, pad))
            if k == 0 || stride == 0 || pad >= k || k as u128 > super::MAX_SPATIAL || stride as u128 > super::MAX_SPATIAL =>
        {
            Err(format!(
                "kernel {k}, stride {stride}, padding {pad}: kernel and stride must be 1 to {} and the padding below the kernel",
                super::MAX_SPATIAL
            ))
        }
        _ => Ok(()),
    }
}

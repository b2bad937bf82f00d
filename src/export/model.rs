//! An exported integer model: the layer graph plus every layer's integer parameters, laid out
//! as an execution plan for the engines. Pure Rust: edge builds read and run it without
//! libtorch.

use super::format::{self, Array, Container, Entry, FormatError};
use crate::engine::cpu::Cpu;
use crate::engine::{Conv2d, ConvWeights, EngineError, Linear, MaxPool2d, PackedW2, QTensor, Requant, Residual, Weights8};
use crate::graph::{Network, Op, Src};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The JSON header of a `.nce` file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Header {
    /// Always `"nce-model"`.
    pub kind: String,
    /// The network (model, input, widths, per-layer bits).
    pub net: Network,
    /// The hardware profile the network was searched for, if any.
    pub profile: Option<String>,
    /// Where the weights came from (checkpoint path) and what it scored.
    pub source: Option<String>,
    /// Real-valued scales per layer, for people reading the file (the engines use only the
    /// integer arrays).
    pub scales: BTreeMap<String, LayerScales>,
}

/// Documentation-only scales of one layer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct LayerScales {
    pub weight: Option<f64>,
    pub input: Option<f64>,
    pub output: Option<f64>,
    pub weight_bits: u8,
}

/// One executable step.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// A conv (writing graph layer `out`), optionally with the residual add fused: the add's
    /// shortcut operand comes from tensor `residual.0`, subsampled by `residual.1`, scaled by
    /// `residual.2`.
    Conv { layer: usize, input: Src, out: usize, conv: Conv2d, residual: Option<(Src, usize, i32)> },
    MaxPool { layer: usize, input: Src, pool: MaxPool2d },
    /// Global average pooling as exact per-channel sums.
    Pool { layer: usize, input: Src },
    Linear { layer: usize, linear: Linear },
}

/// A validated model ready to run.
#[derive(Clone, Debug, PartialEq)]
pub struct QModel {
    pub header: Header,
    pub steps: Vec<Step>,
}

/// What is wrong with a model file or a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelFileError {
    #[error("{}: {source}", file.display())]
    Io { file: PathBuf, source: std::io::Error },
    #[error("{}: {source}", file.display())]
    Format { file: PathBuf, source: FormatError },
    #[error("{}: {msg}", file.display())]
    Invalid { file: PathBuf, msg: String },
    #[error("{}: {source}", file.display())]
    Engine { file: PathBuf, source: EngineError },
}

/// Per-layer integer output of a run (for validation against the simulation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerOut {
    Codes(QTensor),
    Sums(Vec<i32>),
    Logits(Vec<i32>),
}

fn arr<'a>(c: &'a Container, name: &str) -> Result<&'a Entry, String> {
    c.arrays.get(name).ok_or_else(|| format!("missing array `{name}`"))
}

fn i32s(c: &Container, name: &str, len: usize) -> Result<Vec<i32>, String> {
    match &arr(c, name)?.data {
        Array::I32(v) if v.len() == len => Ok(v.clone()),
        Array::I32(v) => Err(format!("`{name}` has {} values, expected {len}", v.len())),
        _ => Err(format!("`{name}` must be int32")),
    }
}

fn scalar_i32(c: &Container, name: &str) -> Result<i32, String> {
    Ok(i32s(c, name, 1)?[0])
}

impl QModel {
    /// Builds the execution plan for `net` from the integer arrays in `c`.
    pub fn from_container(c: &Container) -> Result<QModel, String> {
        let header: Header = serde_json::from_str(&c.header).map_err(|e| format!("header: {e}"))?;
        if header.kind != "nce-model" {
            return Err(format!("header kind `{}` is not `nce-model`", header.kind));
        }
        let net = &header.net;
        let n = net.layers.len();
        if n == 0 || n > 10_000 {
            return Err(format!("network has {n} layers"));
        }
        // Validate the graph's references before indexing with them.
        for (i, l) in net.layers.iter().enumerate() {
            let arity = if matches!(l.op, Op::Add { .. }) { 2 } else { 1 };
            if l.inputs.len() != arity || l.inputs.iter().any(|s| matches!(s, Src::Layer(j) if *j >= i)) {
                return Err(format!("layer {} has invalid inputs", l.name));
            }
        }
        let consumers = |i: usize| -> Vec<usize> { (i + 1..n).filter(|&j| net.layers[j].inputs.contains(&Src::Layer(i))).collect() };
        let mut fused_adds = vec![false; n];
        let mut steps = Vec::new();
        for (i, l) in net.layers.iter().enumerate() {
            match l.op {
                Op::Conv { k, stride, pad, groups, relu } => {
                    if groups != 1 {
                        return Err(format!("{}: grouped convs are not supported by the engines", l.name));
                    }
                    let cin = l.in_shape.c;
                    let cout = l.out_shape.c;
                    let k_len = cin * k * k;
                    let w = arr(c, &format!("{}.w", l.name))?;
                    let weights = match (&w.data, l.wbits) {
                        (Array::U32(words), 2) => ConvWeights::W2(PackedW2::from_words(cout, k_len, words.clone()).map_err(|e| format!("{}: {e}", l.name))?),
                        (Array::I8(v), 8) => ConvWeights::W8(Weights8::new(cout, k_len, v.clone()).map_err(|e| format!("{}: {e}", l.name))?),
                        _ => return Err(format!("{}: {}-bit weights are not supported by the engines (2 or 8)", l.name, l.wbits)),
                    };
                    let shift = scalar_i32(c, &format!("{}.shift", l.name))?;
                    if !(0..=30).contains(&shift) {
                        return Err(format!("{}: shift {shift} outside 0..=30", l.name));
                    }
                    let (out, residual, qbits) = if relu {
                        (i, None, l.out_bits)
                    } else {
                        // A conv without ReLU must feed exactly one add, which it is fused with.
                        let cons = consumers(i);
                        let [a] = cons.as_slice() else {
                            return Err(format!("{}: a conv without ReLU must feed exactly one residual add", l.name));
                        };
                        let add = &net.layers[*a];
                        if !matches!(add.op, Op::Add { relu: true }) || add.inputs[0] != Src::Layer(i) {
                            return Err(format!("{}: unsupported consumer {}", l.name, add.name));
                        }
                        let (src, stride) = match add.inputs[1] {
                            Src::Layer(j) => match net.layers[j].op {
                                Op::Subsample { stride } => (net.layers[j].inputs[0], stride),
                                Op::Conv { relu: false, .. } => return Err(format!("{}: projection shortcuts are not supported by the engines yet", add.name)),
                                _ => (Src::Layer(j), 1),
                            },
                            Src::Input => (Src::Input, 1),
                        };
                        fused_adds[*a] = true;
                        let r = scalar_i32(c, &format!("{}.r", l.name))?;
                        (*a, Some((src, stride, r)), add.out_bits)
                    };
                    if !(1..=8).contains(&qbits) {
                        return Err(format!("{}: output bits {qbits} not supported", l.name));
                    }
                    let requant = Requant {
                        m: i32s(c, &format!("{}.m", l.name), cout)?,
                        b: i32s(c, &format!("{}.b", l.name), cout)?,
                        shift: shift as u32,
                        qmax: ((1u16 << qbits) - 1) as u8,
                    };
                    let conv = Conv2d::new(cin, k, stride, pad, weights, requant).map_err(|e| format!("{}: {e}", l.name))?;
                    steps.push(Step::Conv { layer: i, input: l.inputs[0], out, conv, residual });
                }
                Op::Add { .. } => {
                    if !fused_adds[i] {
                        return Err(format!("{}: residual adds must follow a conv without ReLU", l.name));
                    }
                }
                Op::Subsample { .. } => {
                    if consumers(i).iter().any(|&j| !matches!(net.layers[j].op, Op::Add { .. })) {
                        return Err(format!("{}: a subsampling shortcut may only feed adds", l.name));
                    }
                }
                Op::MaxPool { k, stride, pad } => {
                    steps.push(Step::MaxPool { layer: i, input: l.inputs[0], pool: MaxPool2d { k, stride, pad } });
                }
                Op::GlobalAvgPool => steps.push(Step::Pool { layer: i, input: l.inputs[0] }),
                Op::Linear => {
                    if l.wbits != 8 || i != n - 1 {
                        return Err(format!("{}: only a final 8-bit classifier is supported", l.name));
                    }
                    let cin = l.in_shape.numel();
                    let w = match &arr(c, &format!("{}.w", l.name))?.data {
                        Array::I8(v) => Weights8::new(l.out_shape.c, cin, v.clone()).map_err(|e| format!("{}: {e}", l.name))?,
                        _ => return Err(format!("{}: classifier weights must be int8", l.name)),
                    };
                    let linear = Linear::new(w, i32s(c, &format!("{}.b", l.name), l.out_shape.c)?).map_err(|e| format!("{}: {e}", l.name))?;
                    steps.push(Step::Linear { layer: i, linear });
                }
            }
        }
        if !matches!(steps.last(), Some(Step::Linear { .. })) {
            return Err("the network must end with a classifier".into());
        }
        Ok(QModel { header, steps })
    }

    /// Reads and validates a `.nce` file.
    pub fn load(path: &Path) -> Result<QModel, ModelFileError> {
        let bytes = std::fs::read(path).map_err(|source| ModelFileError::Io { file: path.into(), source })?;
        QModel::from_bytes(&bytes).map_err(|e| match e {
            DecodeError::Format(source) => ModelFileError::Format { file: path.into(), source },
            DecodeError::Invalid(msg) => ModelFileError::Invalid { file: path.into(), msg },
        })
    }

    /// Decodes and validates a model from bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<QModel, DecodeError> {
        let c = format::decode(bytes).map_err(DecodeError::Format)?;
        QModel::from_container(&c).map_err(DecodeError::Invalid)
    }

    pub fn net(&self) -> &Network {
        &self.header.net
    }

    /// Runs one image (`C×H×W` u8 pixels, the dataset's layout) and returns every layer's
    /// integer output, indexed by graph layer (fused adds hold the block output; the conv
    /// feeding them and parameter-free shortcuts hold `None`).
    pub fn run_layers(&self, cpu: &Cpu, prepared: &Prepared, image: &[u8]) -> Result<Vec<Option<LayerOut>>, EngineError> {
        let net = self.net();
        let (c, h, w) = (net.input.c, net.input.h, net.input.w);
        if image.len() != c * h * w {
            return Err(EngineError::Mismatch { what: "image bytes", expected: c * h * w, got: image.len() });
        }
        // CHW → HWC.
        let mut hwc = vec![0u8; image.len()];
        for ch in 0..c {
            for p in 0..h * w {
                hwc[p * c + ch] = image[ch * h * w + p];
            }
        }
        let input = QTensor::new(h, w, c, hwc)?;
        let mut outs: Vec<Option<LayerOut>> = vec![None; net.layers.len()];
        let tensor = |outs: &Vec<Option<LayerOut>>, s: Src| -> Result<QTensor, EngineError> {
            match s {
                Src::Input => Ok(input.clone()),
                Src::Layer(j) => match &outs[j] {
                    Some(LayerOut::Codes(t)) => Ok(t.clone()),
                    _ => Err(EngineError::Invalid { what: "plan", detail: format!("layer {j} has no activation output") }),
                },
            }
        };
        for (si, step) in self.steps.iter().enumerate() {
            match step {
                Step::Conv { input, out, residual, .. } => {
                    let x = tensor(&outs, *input)?;
                    let p = &prepared.convs[si];
                    let y = match residual {
                        Some((src, stride, r)) => {
                            let sc = tensor(&outs, *src)?;
                            cpu.conv2d(p.as_ref().expect("prepared conv"), &x, Some(&Residual { input: &sc, stride: *stride, r: *r }))?
                        }
                        None => cpu.conv2d(p.as_ref().expect("prepared conv"), &x, None)?,
                    };
                    outs[*out] = Some(LayerOut::Codes(y));
                }
                Step::MaxPool { layer, input, pool } => {
                    let x = tensor(&outs, *input)?;
                    outs[*layer] = Some(LayerOut::Codes(cpu.max_pool(pool, &x)?));
                }
                Step::Pool { layer, input } => {
                    let x = tensor(&outs, *input)?;
                    outs[*layer] = Some(LayerOut::Sums(cpu.global_avg_pool(&x)?));
                }
                Step::Linear { layer, linear } => {
                    let x = match outs[*layer - 1].as_ref() {
                        Some(LayerOut::Sums(s)) => s.clone(),
                        _ => return Err(EngineError::Invalid { what: "plan", detail: "the classifier must follow global pooling".into() }),
                    };
                    outs[*layer] = Some(LayerOut::Logits(cpu.linear(linear, &x)?));
                }
            }
        }
        Ok(outs)
    }

    /// Integer logits of one image.
    pub fn run(&self, cpu: &Cpu, prepared: &Prepared, image: &[u8]) -> Result<Vec<i32>, EngineError> {
        match self.run_layers(cpu, prepared, image)?.pop().flatten() {
            Some(LayerOut::Logits(l)) => Ok(l),
            _ => Err(EngineError::Invalid { what: "plan", detail: "no logits".into() }),
        }
    }

    /// Lays out every conv's weights for `cpu`'s backend (do once, run many).
    pub fn prepare(&self, cpu: &Cpu) -> Result<Prepared, EngineError> {
        let convs = self
            .steps
            .iter()
            .map(|s| match s {
                Step::Conv { conv, .. } => cpu.prepare(conv).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<_, _>>()?;
        Ok(Prepared { convs })
    }
}

/// Backend-specific weight layouts of a [`QModel`].
pub struct Prepared {
    convs: Vec<Option<crate::engine::cpu::PreparedConv>>,
}

/// Why bytes are not a runnable model: a container error or a semantic one.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Format(FormatError),
    #[error("{0}")]
    Invalid(String),
}

//! Reading a `.nce` file into the engine's runnable plan ([`QModel`]): the container's header
//! and integer arrays are checked against the layer graph and laid out as [`Step`]s. Pure Rust:
//! edge builds read and run models without libtorch.
//!
//! The plan itself and its execution live in [`crate::engine`]; this module only decides
//! whether a file is a model the engines can run.

use super::format::{self, Array, Container, Entry, FormatError};
use crate::engine::plan::{Header, QModel, Step};
use crate::engine::{Conv2d, ConvWeights, EngineError, Linear, MaxPool2d, PackedW2, Requant, Weights8};
use crate::graph::{Network, Op, Shape, Src};
use std::path::{Path, PathBuf};

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

/// Limits on the layer graph of a model file (`docs/format.md`, "Limits"): they bound the work
/// and memory that a file can make the reader and the engines spend.
pub const MAX_LAYERS: usize = 10_000;
/// Largest channel count, height, width, kernel size, stride or padding.
pub const MAX_DIM: usize = 1 << 16;
/// Largest activation tensor, in codes.
pub const MAX_TENSOR: usize = 1 << 28;

fn dtype_name(a: &Array) -> &'static str {
    match a {
        Array::U8(_) => "uint8",
        Array::I8(_) => "int8",
        Array::I32(_) => "int32",
        Array::U32(_) => "uint32",
    }
}

/// The container's arrays, remembering which ones the plan used (every array must be used).
struct Arrays<'a> {
    c: &'a Container,
    used: std::collections::BTreeSet<&'a str>,
}

impl<'a> Arrays<'a> {
    fn get(&mut self, name: &str) -> Result<&'a Entry, String> {
        let (key, e) = self.c.arrays.get_key_value(name).ok_or_else(|| format!("missing array `{name}`"))?;
        self.used.insert(key.as_str());
        Ok(e)
    }

    fn shape(name: &str, e: &Entry, dims: &[usize]) -> Result<(), String> {
        if e.dims != dims {
            return Err(format!("`{name}` has shape {:?}, expected {dims:?}", e.dims));
        }
        Ok(())
    }

    /// An int32 array of shape `[len]`.
    fn i32s(&mut self, name: &str, len: usize) -> Result<Vec<i32>, String> {
        let e = self.get(name)?;
        match &e.data {
            Array::I32(v) => Self::shape(name, e, &[len]).map(|_| v.clone()),
            a => Err(format!("`{name}` must be int32, found {}", dtype_name(a))),
        }
    }

    fn scalar_i32(&mut self, name: &str) -> Result<i32, String> {
        Ok(self.i32s(name, 1)?[0])
    }
}

fn check_shape(what: &str, s: Shape) -> Result<(), String> {
    let dims_ok = [s.c, s.h, s.w].iter().all(|&d| (1..=MAX_DIM).contains(&d));
    if !dims_ok || s.c.checked_mul(s.h).and_then(|v| v.checked_mul(s.w)).is_none_or(|n| n > MAX_TENSOR) {
        return Err(format!("{what}: shape {s} is outside the limits (dimensions 1..={MAX_DIM}, at most {MAX_TENSOR} elements)"));
    }
    Ok(())
}

/// Outputs of a `k`-window with `stride` and symmetric `pad` along an axis of `n`, or `None`
/// when the window is larger than the padded input.
fn window(n: usize, k: usize, stride: usize, pad: usize) -> Option<usize> {
    Some((n + 2 * pad).checked_sub(k)? / stride + 1)
}

/// Checks the graph's shapes on their own: every layer's `in_shape` is its input's shape and
/// its `out_shape` is what its op makes of it, all within the limits. (Arity and ordering of
/// the inputs are checked before.)
fn check_graph(net: &Network) -> Result<(), String> {
    check_shape("input", net.input)?;
    let shape = |s: Src| match s {
        Src::Input => net.input,
        Src::Layer(j) => net.layers[j].out_shape,
    };
    for l in &net.layers {
        let x = shape(l.inputs[0]);
        if l.in_shape != x {
            return Err(format!("{}: in_shape {} does not match its input's shape {x}", l.name, l.in_shape));
        }
        let geometry = |k: usize, stride: usize, pad: usize| -> Result<(usize, usize), String> {
            if !(1..=MAX_DIM).contains(&k) || !(1..=MAX_DIM).contains(&stride) || pad > MAX_DIM {
                return Err(format!(
                    "{}: kernel {k}, stride {stride}, pad {pad} outside the limits (1..={MAX_DIM}, pad ≤ {MAX_DIM})",
                    l.name
                ));
            }
            match (window(x.h, k, stride, pad), window(x.w, k, stride, pad)) {
                (Some(h), Some(w)) => Ok((h, w)),
                _ => Err(format!("{}: kernel {k} is larger than the padded input {x} (pad {pad})", l.name)),
            }
        };
        let expected = match l.op {
            Op::Conv { k, stride, pad, .. } => {
                let (h, w) = geometry(k, stride, pad)?;
                Shape::new(l.out_shape.c, h, w)
            }
            Op::MaxPool { k, stride, pad } => {
                if 2 * pad.min(MAX_DIM + 1) > k {
                    return Err(format!("{}: max-pool padding {pad} exceeds half the kernel {k}", l.name));
                }
                let (h, w) = geometry(k, stride, pad)?;
                Shape::new(x.c, h, w)
            }
            Op::Subsample { stride } => {
                if !(1..=MAX_DIM).contains(&stride) {
                    return Err(format!("{}: stride {stride} outside 1..={MAX_DIM}", l.name));
                }
                Shape::new(x.c, x.h.div_ceil(stride), x.w.div_ceil(stride))
            }
            Op::Add { .. } => {
                let y = shape(l.inputs[1]);
                if (y.h, y.w) != (x.h, x.w) {
                    return Err(format!("{}: adds inputs of different sizes {x} and {y}", l.name));
                }
                Shape::new(x.c.max(y.c), x.h, x.w)
            }
            Op::GlobalAvgPool => Shape::new(x.c, 1, 1),
            Op::Linear => Shape::new(net.classes, 1, 1),
        };
        if l.out_shape != expected {
            return Err(format!("{}: out_shape {} does not follow from its op and input (expected {expected})", l.name, l.out_shape));
        }
        check_shape(&l.name, l.out_shape)?;
    }
    Ok(())
}

/// Layer count within [`MAX_LAYERS`], and every layer reading earlier layers only, with the
/// arity of its op (checked before anything indexes with the references).
fn check_references(net: &Network) -> Result<(), String> {
    let n = net.layers.len();
    if n == 0 || n > MAX_LAYERS {
        return Err(format!("network has {n} layers (1..={MAX_LAYERS})"));
    }
    for (i, l) in net.layers.iter().enumerate() {
        let arity = if matches!(l.op, Op::Add { .. }) { 2 } else { 1 };
        if l.inputs.len() != arity || l.inputs.iter().any(|s| matches!(s, Src::Layer(j) if *j >= i)) {
            return Err(format!("layer {} has invalid inputs", l.name));
        }
    }
    Ok(())
}

/// A conv's window and groups, as the graph states them.
#[derive(Clone, Copy)]
struct Geometry {
    k: usize,
    stride: usize,
    pad: usize,
    groups: usize,
}

/// Lays out a checked graph as [`Step`]s, one layer at a time, fusing every residual add into
/// the conv (without ReLU) that feeds it.
struct PlanBuilder<'a> {
    net: &'a Network,
    arrays: Arrays<'a>,
    /// The layers that read each layer's output, in order.
    consumers: Vec<Vec<usize>>,
    /// Which layers' code tensors exist once the steps so far have run.
    ready: Vec<bool>,
    fused_adds: Vec<bool>,
    steps: Vec<Step>,
}

impl<'a> PlanBuilder<'a> {
    fn new(net: &'a Network, c: &'a Container) -> Self {
        let n = net.layers.len();
        let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (j, l) in net.layers.iter().enumerate() {
            for s in &l.inputs {
                if let Src::Layer(i) = *s {
                    if consumers[i].last() != Some(&j) {
                        consumers[i].push(j);
                    }
                }
            }
        }
        PlanBuilder {
            net,
            arrays: Arrays { c, used: Default::default() },
            consumers,
            ready: vec![false; n],
            fused_adds: vec![false; n],
            steps: Vec::new(),
        }
    }

    fn readable(&self, s: Src, who: &str) -> Result<(), String> {
        match s {
            Src::Input => Ok(()),
            Src::Layer(j) if self.ready[j] => Ok(()),
            Src::Layer(j) => Err(format!("{who}: reads {}, which is not an activation tensor computed before it", self.net.layers[j].name)),
        }
    }

    fn layer(&mut self, i: usize) -> Result<(), String> {
        let net = self.net;
        let l = &net.layers[i];
        match l.op {
            Op::Conv { k, stride, pad, groups, relu, .. } => self.conv(i, Geometry { k, stride, pad, groups }, relu),
            Op::Add { .. } if !self.fused_adds[i] => Err(format!("{}: residual adds must follow a conv without ReLU", l.name)),
            Op::Add { .. } => Ok(()),
            Op::Subsample { .. } => {
                if self.consumers[i].iter().any(|&j| !matches!(self.net.layers[j].op, Op::Add { .. })) {
                    return Err(format!("{}: a subsampling shortcut may only feed adds", l.name));
                }
                Ok(())
            }
            Op::MaxPool { k, stride, pad } => {
                self.readable(l.inputs[0], &l.name)?;
                self.steps.push(Step::MaxPool { layer: i, input: l.inputs[0], pool: MaxPool2d { k, stride, pad } });
                self.ready[i] = true;
                Ok(())
            }
            Op::GlobalAvgPool => {
                self.readable(l.inputs[0], &l.name)?;
                self.steps.push(Step::Pool { layer: i, input: l.inputs[0] });
                Ok(())
            }
            Op::Linear => self.linear(i),
        }
    }

    fn conv(&mut self, i: usize, g: Geometry, relu: bool) -> Result<(), String> {
        let net = self.net;
        let l = &net.layers[i];
        let (cin, cout) = (l.in_shape.c, l.out_shape.c);
        let Geometry { k, stride, pad, groups } = g;
        if groups == 0 || !cin.is_multiple_of(groups) || !cout.is_multiple_of(groups) {
            return Err(format!("{}: {groups} groups do not divide {cin} input and {cout} output channels", l.name));
        }
        let k_len = (cin / groups)
            .checked_mul(k)
            .and_then(|v| v.checked_mul(k))
            .ok_or_else(|| format!("{}: reduction length {cin}/{groups}·{k}·{k} overflows", l.name))?;
        let weights = self.conv_weights(i, k_len)?;
        let shift = self.arrays.scalar_i32(&format!("{}.shift", l.name))?;
        if !(0..=30).contains(&shift) {
            return Err(format!("{}: shift {shift} outside 0..=30", l.name));
        }
        self.readable(l.inputs[0], &l.name)?;
        // A projection shortcut or a linear bottleneck runs as a conv of its own (8-bit codes with
        // a zero point, which the `b` of the convs and adds reading it account for:
        // docs/quantization.md, "Signed codes").
        let own = relu || net.is_signed(i);
        let (out, residual, qbits) = if own { (i, None, l.out_bits) } else { self.fused_add(i)? };
        if !(1..=8).contains(&qbits) {
            return Err(format!("{}: output bits {qbits} not supported", l.name));
        }
        let requant = Requant {
            m: self.arrays.i32s(&format!("{}.m", l.name), cout)?,
            b: self.arrays.i32s(&format!("{}.b", l.name), cout)?,
            shift: shift as u32,
            qmax: ((1u16 << qbits) - 1) as u8,
        };
        let conv = Conv2d::grouped(cin, groups, k, stride, pad, weights, requant).map_err(|e| format!("{}: {e}", l.name))?;
        self.steps.push(Step::Conv { layer: i, input: l.inputs[0], out, conv, residual });
        self.ready[out] = true;
        Ok(())
    }

    /// The packed 2-bit or int8 weights of conv `i`, `[cout, k_len]`.
    fn conv_weights(&mut self, i: usize, k_len: usize) -> Result<ConvWeights, String> {
        let net = self.net;
        let l = &net.layers[i];
        let cout = l.out_shape.c;
        let wname = format!("{}.w", l.name);
        let w = self.arrays.get(&wname)?;
        match (l.wbits, &w.data) {
            (2, Array::U32(words)) => {
                Arrays::shape(&wname, w, &[cout, crate::engine::words_for(k_len)])?;
                Ok(ConvWeights::W2(PackedW2::from_words(cout, k_len, words.clone()).map_err(|e| format!("{}: {e}", l.name))?))
            }
            (8, Array::I8(v)) => {
                Arrays::shape(&wname, w, &[cout, k_len])?;
                Ok(ConvWeights::W8(Weights8::new(cout, k_len, v.clone()).map_err(|e| format!("{}: {e}", l.name))?))
            }
            (2, a) => Err(format!("`{wname}` must be uint32 (packed 2-bit codes) for a 2-bit layer, found {}", dtype_name(a))),
            (8, a) => Err(format!("`{wname}` must be int8 for an 8-bit layer, found {}", dtype_name(a))),
            (b, _) => Err(format!("{}: {b}-bit weights are not supported by the engines (2 or 8)", l.name)),
        }
    }

    /// A conv without ReLU (not itself signed) must feed exactly one add, which it is fused with:
    /// returns the add (the step's output), the residual (source, subsampling stride, rescale)
    /// and the add's output bits (8 for an add without ReLU, whose codes are signed).
    #[allow(clippy::type_complexity)]
    fn fused_add(&mut self, i: usize) -> Result<(usize, Option<(Src, usize, i32)>, u8), String> {
        let net = self.net;
        let l = &net.layers[i];
        const LINEAR: &str = "a conv without ReLU must feed exactly one residual add as its first operand, or be read by convs (a linear bottleneck) or as a shortcut";
        let [a] = self.consumers[i].as_slice() else {
            return Err(format!("{}: {LINEAR}", l.name));
        };
        let (a, add) = (*a, &net.layers[*a]);
        if !matches!(add.op, Op::Add { .. }) || add.inputs[0] != Src::Layer(i) {
            return Err(format!("{}: unsupported consumer {} ({LINEAR})", l.name, add.name));
        }
        let (src, stride) = match add.inputs[1] {
            Src::Layer(j) => match net.layers[j].op {
                Op::Subsample { stride } => (net.layers[j].inputs[0], stride),
                Op::Conv { relu: false, .. } if !net.is_signed(j) => {
                    return Err(format!(
                    "{}: its shortcut {} is a conv without ReLU that the engines do not run: a projection shortcut must come before the block's last conv and be read only by this add (imported networks are ordered so; nce's own ResNet-18/50 are not yet)",
                    add.name, net.layers[j].name
                ))
                }
                _ => (Src::Layer(j), 1),
            },
            Src::Input => (Src::Input, 1),
        };
        self.readable(src, &add.name)?;
        self.fused_adds[a] = true;
        let r = self.arrays.scalar_i32(&format!("{}.r", l.name))?;
        Ok((a, Some((src, stride, r)), add.out_bits))
    }

    /// The final 8-bit classifier, reading the global average pooling just before it.
    fn linear(&mut self, i: usize) -> Result<(), String> {
        let net = self.net;
        let l = &net.layers[i];
        if l.wbits != 8 || i != net.layers.len() - 1 {
            return Err(format!("{}: only a final 8-bit classifier is supported", l.name));
        }
        let pooled = i.checked_sub(1).filter(|&p| l.inputs[0] == Src::Layer(p) && matches!(net.layers[p].op, Op::GlobalAvgPool));
        if pooled.is_none() {
            return Err(format!("{}: the classifier must read the global average pooling just before it", l.name));
        }
        let (cin, cout) = (l.in_shape.numel(), l.out_shape.c);
        let wname = format!("{}.w", l.name);
        let w = self.arrays.get(&wname)?;
        let w = match &w.data {
            Array::I8(v) => {
                Arrays::shape(&wname, w, &[cout, cin])?;
                Weights8::new(cout, cin, v.clone()).map_err(|e| format!("{}: {e}", l.name))?
            }
            a => return Err(format!("`{wname}` must be int8 (classifier weights), found {}", dtype_name(a))),
        };
        let linear = Linear::new(w, self.arrays.i32s(&format!("{}.b", l.name), cout)?).map_err(|e| format!("{}: {e}", l.name))?;
        self.steps.push(Step::Linear { layer: i, linear });
        Ok(())
    }

    /// The steps, once the network ended with its classifier and every array was used.
    fn finish(self) -> Result<Vec<Step>, String> {
        if !matches!(self.steps.last(), Some(Step::Linear { .. })) {
            return Err("the network must end with a classifier".into());
        }
        if let Some(name) = self.arrays.c.arrays.keys().find(|k| !self.arrays.used.contains(k.as_str())) {
            return Err(format!("unexpected array `{name}`: no layer of the network uses it"));
        }
        Ok(self.steps)
    }
}

impl QModel {
    /// Builds the execution plan for `net` from the integer arrays in `c`.
    ///
    /// Everything the plan relies on is checked here, so that running an accepted model can
    /// only fail on its input: graph references and shapes (within [`MAX_LAYERS`],
    /// [`MAX_DIM`], [`MAX_TENSOR`]), every step reading a tensor that an earlier step
    /// produced, and every array's presence, dtype and exact shape; arrays that no layer uses
    /// are rejected.
    pub fn from_container(c: &Container) -> Result<QModel, DecodeError> {
        QModel::plan(c).map_err(DecodeError::Invalid)
    }

    fn plan(c: &Container) -> Result<QModel, String> {
        let header: Header = serde_json::from_str(&c.header).map_err(|e| format!("header: {e}"))?;
        if header.kind != "nce-model" {
            return Err(format!("header kind `{}` is not `nce-model`", header.kind));
        }
        check_references(&header.net)?;
        check_graph(&header.net)?;
        if let Some((i, j, why)) = header.net.unfoldable_signed_read() {
            let l = &header.net.layers;
            return Err(format!("{}: reads the signed codes of {}, {why}", l[i].name, l[j].name));
        }
        let mut b = PlanBuilder::new(&header.net, c);
        for i in 0..header.net.layers.len() {
            b.layer(i)?;
        }
        let steps = b.finish()?;
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
        QModel::from_container(&c)
    }
}

/// Why bytes are not a runnable model: a container error or a semantic one.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Format(FormatError),
    #[error("{0}")]
    Invalid(String),
}

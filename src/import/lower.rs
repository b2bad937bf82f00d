//! ONNX nodes → the graph IR's layers and their FP32 variables.

use super::onnx::{attr, node_err, Model, Tensor};
use super::{ImportError, Variable};
use crate::engine::onnx::proto::NodeProto;
use crate::graph::{Normalization, Op, Shape, Src, MAX_CHANNELS, MAX_SPATIAL};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The ε of nce's BatchNorm (`models::BatchNorm`); other ε are folded into the variance.
const NCE_BN_EPS: f32 = 1e-5;

/// A layer before the width slots are assigned (`slot` = `Some(0)` marks a dense conv).
pub struct Lowered {
    pub input: Shape,
    pub classes: usize,
    pub layers: Vec<crate::graph::imported::TemplateLayer>,
    /// Each layer's output shape as the ONNX graph implies it (the classifier last).
    pub shapes: Vec<Shape>,
    pub classifier: String,
    pub vars: Vec<Variable>,
    /// Convs without a BatchNormalization in the file (their BN is the identity).
    pub folded: Vec<String>,
    /// The graph's input normalisation (`Sub`/`Div`/`Mul` by constants on the image).
    pub normalization: Option<Normalization>,
}

/// What an ONNX value is to the importer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Value {
    /// A 4-D activation: a layer's output (or the image).
    Act(Src, Shape),
    /// The same activation flattened to `[N, C·H·W]`.
    Flat(Src, Shape),
    /// The classifier's logits.
    Logits,
}

struct ConvLayer {
    weight: Tensor,
    bias: Option<Vec<f32>>,
    bn: Option<[Vec<f32>; 4]>,
}

struct Classifier {
    name: String,
    in_len: usize,
    out: usize,
    /// `[out, in]`.
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
}

struct Lowering<'a> {
    path: &'a Path,
    model: &'a Model,
    values: HashMap<String, Value>,
    uses: HashMap<String, usize>,
    layers: Vec<crate::graph::imported::TemplateLayer>,
    shapes: Vec<Shape>,
    convs: HashMap<usize, ConvLayer>,
    names: HashSet<String>,
    classifier: Option<Classifier>,
    logits: Option<String>,
    /// The value that is the image, normalised by the `Sub`/`Div`/`Mul` nodes so far.
    input_head: String,
    input: Shape,
    /// The normalisation so far: the head is `(x − mean) · scale` per channel.
    norm: Option<(Vec<f64>, Vec<f64>)>,
}

pub fn lower(path: &Path, model: &Model) -> Result<Lowered, ImportError> {
    let (input_name, input) = graph_input(path, model)?;
    let mut uses: HashMap<String, usize> = HashMap::new();
    for n in &model.graph.node {
        for x in &n.input {
            *uses.entry(x.clone()).or_default() += 1;
        }
    }
    for o in &model.graph.output {
        *uses.entry(o.name.clone()).or_default() += 1;
    }
    let mut l = Lowering {
        path,
        model,
        values: HashMap::from([(input_name.clone(), Value::Act(Src::Input, input))]),
        uses,
        layers: vec![],
        shapes: vec![],
        convs: HashMap::new(),
        names: HashSet::new(),
        classifier: None,
        logits: None,
        input_head: input_name,
        input,
        norm: None,
    };
    for &i in &model.order {
        l.node(&model.graph.node[i])?;
    }
    l.finish(input)
}

/// The graph's one non-constant input: float32 `[N, C, H, W]` with fixed C, H, W.
fn graph_input(path: &Path, model: &Model) -> Result<(String, Shape), ImportError> {
    let bad = |msg: String| ImportError::Model { file: path.into(), msg };
    let inputs: Vec<_> = model.graph.input.iter().filter(|v| !model.consts.contains_key(&v.name)).collect();
    let [v] = inputs.as_slice() else {
        return Err(bad(format!("the graph has {} inputs; nce imports networks with one image input", inputs.len())));
    };
    let tt = v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()).ok_or_else(|| bad(format!("input `{}` is not a tensor", v.name)))?;
    if tt.elem_type != 1 {
        return Err(bad(format!("input `{}` has element type {}; nce imports float32 inputs", v.name, tt.elem_type)));
    }
    let dims: Vec<Option<i64>> = tt.shape.as_ref().map(|s| s.dim.iter().map(|d| d.dim_value).collect()).unwrap_or_default();
    let fixed = |i: usize, what: &str, max: u128| -> Result<usize, String> {
        match dims[i] {
            Some(d) if d > 0 && (d as u128) <= max => Ok(d as usize),
            Some(d) if d > 0 => Err(format!("input `{}`: {what} {d} is above the supported maximum {max}", v.name)),
            _ => Err(format!("input `{}` has a dynamic or missing {what}; nce imports fixed C×H×W (a dynamic batch is fine)", v.name)),
        }
    };
    if dims.len() != 4 {
        return Err(bad(format!("input `{}` has {} dimensions; nce imports [N, C, H, W] images", v.name, dims.len())));
    }
    let s = (|| {
        Ok::<_, String>(Shape::new(fixed(1, "channels", MAX_CHANNELS)?, fixed(2, "height", MAX_SPATIAL)?, fixed(3, "width", MAX_SPATIAL)?))
    })()
    .map_err(bad)?;
    Ok((v.name.clone(), s))
}

/// An attribute reader that refuses attributes it was not told about.
struct Attrs<'a> {
    n: &'a NodeProto,
}

impl<'a> Attrs<'a> {
    fn check_known(&self, path: &Path, known: &[&str]) -> Result<(), ImportError> {
        match self.n.attribute.iter().find(|a| !known.contains(&a.name.as_str())) {
            Some(a) => Err(node_err(path, self.n, format!("attribute `{}` is not supported (supported: {})", a.name, known.join(", ")))),
            None => Ok(()),
        }
    }
    fn ints(&self, name: &str) -> Option<&'a [i64]> {
        attr(self.n, name).map(|a| a.ints.as_slice())
    }
    fn int(&self, name: &str, default: i64) -> i64 {
        attr(self.n, name).map_or(default, |a| a.i)
    }
    fn float(&self, name: &str, default: f32) -> f32 {
        attr(self.n, name).map_or(default, |a| a.f)
    }
    fn string(&self, name: &str) -> Option<String> {
        attr(self.n, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }
}

/// Square window geometry of a Conv or pooling node: (k, stride, pad).
fn window(path: &Path, n: &NodeProto, kernel: Option<(usize, usize)>) -> Result<(usize, usize, usize), ImportError> {
    let a = Attrs { n };
    let err = |msg: String| node_err(path, n, msg);
    if let Some(p) = a.string("auto_pad").filter(|p| !p.is_empty() && p != "NOTSET") {
        return Err(err(format!("auto_pad={p} is not supported; export with explicit pads")));
    }
    if a.ints("dilations").is_some_and(|d| d.iter().any(|&x| x != 1)) {
        return Err(err(format!("dilations {:?} are not supported (only 1)", a.ints("dilations").unwrap_or_default())));
    }
    let (kh, kw) = match (a.ints("kernel_shape"), kernel) {
        (Some([h, w]), _) => (*h, *w),
        (Some(k), _) => return Err(err(format!("kernel_shape {k:?} is not 2-D"))),
        (None, Some((h, w))) => (h as i64, w as i64),
        (None, None) => return Err(err("kernel_shape is missing".into())),
    };
    if kh != kw || kh < 1 || kh as u128 > MAX_SPATIAL {
        return Err(err(format!("kernel {kh}×{kw} is not supported (square kernels up to {MAX_SPATIAL})")));
    }
    let stride = match a.ints("strides") {
        None => 1,
        Some([s, t]) if s == t && *s >= 1 && (*s as u128) <= MAX_SPATIAL => *s,
        Some(s) => return Err(err(format!("strides {s:?} are not supported (equal strides ≥ 1)"))),
    };
    let pad = match a.ints("pads") {
        None => 0,
        Some([a, b, c, d]) if a == b && b == c && c == d && *a >= 0 && *a < kh => *a,
        Some(p) => return Err(err(format!("pads {p:?} are not supported (the same padding on every side, below the kernel size)"))),
    };
    Ok((kh as usize, stride as usize, pad as usize))
}

fn out_size(d: usize, k: usize, stride: usize, pad: usize) -> Option<usize> {
    (d + 2 * pad).checked_sub(k).map(|v| v / stride + 1)
}

impl<'a> Lowering<'a> {
    fn err(&self, n: &NodeProto, msg: impl Into<String>) -> ImportError {
        node_err(self.path, n, msg.into())
    }

    fn value(&self, n: &NodeProto, i: usize) -> Result<Value, ImportError> {
        let name = n.input.get(i).filter(|s| !s.is_empty()).ok_or_else(|| self.err(n, format!("input {i} is missing")))?;
        match self.values.get(name) {
            Some(v) => Ok(*v),
            None if self.model.consts.contains_key(name) => {
                Err(self.err(n, format!("input `{name}` is a constant; an activation is expected")))
            }
            None => Err(self.err(n, format!("input `{name}` is not an activation nce can follow"))),
        }
    }

    fn konst(&self, n: &NodeProto, i: usize) -> Result<Option<&'a Tensor>, ImportError> {
        match n.input.get(i).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(name) => match self.model.consts.get(name) {
                Some(t) => Ok(Some(t)),
                None => Err(self.err(n, format!("input `{name}` must be a constant (an initialiser)"))),
            },
        }
    }

    fn act(&self, n: &NodeProto, i: usize) -> Result<(Src, Shape), ImportError> {
        match self.value(n, i)? {
            Value::Act(s, sh) => Ok((s, sh)),
            _ => Err(self.err(n, "expects a 4-D activation [N, C, H, W]")),
        }
    }

    fn set_out(&mut self, n: &NodeProto, v: Value) -> Result<(), ImportError> {
        let out = n.output.first().filter(|o| !o.is_empty()).ok_or_else(|| self.err(n, "has no output"))?;
        if let Some(extra) = n.output.iter().skip(1).find(|o| !o.is_empty() && self.uses.get(*o).copied().unwrap_or(0) > 0) {
            return Err(self.err(n, format!("its extra output `{extra}` is used; nce imports inference graphs")));
        }
        self.values.insert(out.clone(), v);
        Ok(())
    }

    /// A unique layer name: the node's own, else `<op>_<index>`; components that would be empty
    /// in a variable path (`a..b`) get an underscore.
    fn layer_name(&mut self, n: &NodeProto) -> String {
        let base = if n.name.is_empty() { format!("{}_{}", n.op_type, self.layers.len()) } else { n.name.clone() };
        let base = if base.split('.').any(str::is_empty) { base.replace('.', "_") } else { base };
        let mut name = base.clone();
        let mut k = 2;
        while !self.names.insert(name.clone()) {
            name = format!("{base}_{k}");
            k += 1;
        }
        name
    }

    fn push(&mut self, n: &NodeProto, op: Op, inputs: Vec<Src>, shape: Shape, slot: Option<usize>) -> Result<usize, ImportError> {
        if self.classifier.is_some() {
            return Err(self.err(n, "layers after the classifier are not supported"));
        }
        let name = self.layer_name(n);
        self.layers.push(crate::graph::imported::TemplateLayer { name, op, inputs, slot });
        self.shapes.push(shape);
        let i = self.layers.len() - 1;
        self.set_out(n, Value::Act(Src::Layer(i), shape))?;
        Ok(i)
    }

    /// The conv layer `x` is the only output of, for fusing BN or an activation into it.
    fn fusable(&self, n: &NodeProto) -> Option<usize> {
        let name = n.input.first()?;
        match self.values.get(name) {
            Some(Value::Act(Src::Layer(i), _)) if self.uses.get(name) == Some(&1) => Some(*i),
            _ => None,
        }
    }

    fn node(&mut self, n: &NodeProto) -> Result<(), ImportError> {
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            return Err(ImportError::UnsupportedOp {
                file: self.path.into(),
                node: n.name.clone(),
                op: format!("{}:{}", n.domain, n.op_type),
            });
        }
        match n.op_type.as_str() {
            "Constant" => Ok(()),
            "Conv" => self.conv(n),
            "BatchNormalization" => self.batch_norm(n),
            "Relu" => self.activation(n, false),
            "Clip" => self.clip(n),
            "Add" => self.add(n),
            "MaxPool" => self.max_pool(n),
            "AveragePool" => self.average_pool(n),
            "GlobalAveragePool" => {
                Attrs { n }.check_known(self.path, &[])?;
                let (src, s) = self.act(n, 0)?;
                self.push(n, Op::GlobalAvgPool, vec![src], Shape::new(s.c, 1, 1), None).map(|_| ())
            }
            "Flatten" => {
                Attrs { n }.check_known(self.path, &["axis"])?;
                if (Attrs { n }).int("axis", 1) != 1 {
                    return Err(self.err(n, "only axis=1 (to [N, C·H·W]) is supported"));
                }
                let (src, s) = self.act(n, 0)?;
                self.set_out(n, Value::Flat(src, s))
            }
            "Reshape" => self.reshape(n),
            "Identity" | "Dropout" => {
                let v = self.value(n, 0)?;
                if v == Value::Logits {
                    self.logits = n.output.first().cloned();
                }
                self.set_out(n, v)
            }
            "Sub" | "Div" | "Mul" => self.normalisation(n),
            "Gemm" => self.gemm(n),
            "MatMul" => self.matmul(n),
            _ => Err(ImportError::UnsupportedOp { file: self.path.into(), node: n.name.clone(), op: n.op_type.clone() }),
        }
    }

    /// `Sub`, `Div` or `Mul` of the image by a scalar or per-channel constant: the input
    /// normalisation (the head becomes `(x − mean) · scale`; nothing else may read the image
    /// or a step of its normalisation).
    fn normalisation(&mut self, n: &NodeProto) -> Result<(), ImportError> {
        Attrs { n }.check_known(self.path, &[])?;
        let op = n.op_type.as_str();
        let [a, b] = n.input.as_slice() else { return Err(self.err(n, "expects two inputs")) };
        let (x, c) = if op == "Mul" && self.model.consts.contains_key(a) { (b, a) } else { (a, b) };
        if *x != self.input_head || self.uses.get(x) != Some(&1) || !self.layers.is_empty() {
            return Err(self.err(
                n,
                format!("{op} is supported only as input normalisation: the image (read by nothing else), minus / divided by / times a constant, before the first layer"),
            ));
        }
        let channels = self.input.c;
        let t = self.model.consts.get(c).ok_or_else(|| self.err(n, format!("input `{c}` must be a constant (an initialiser)")))?;
        let per = per_channel(t, channels).ok_or_else(|| {
            self.err(n, format!("constant `{c}` of shape {:?} is neither a scalar nor per-channel ([1, {channels}, 1, 1])", t.dims))
        })?;
        let (mean, scale) = self.norm.get_or_insert_with(|| (vec![0.0; channels], vec![1.0; channels]));
        for ch in 0..channels {
            let v = f64::from(per[ch]);
            match op {
                "Sub" => mean[ch] += v / scale[ch],
                "Div" => scale[ch] /= v,
                _ => scale[ch] *= v,
            }
        }
        let finite = mean.iter().chain(scale.iter()).all(|v| v.is_finite() && (*v as f32).is_finite());
        if !finite || scale.iter().any(|&s| s == 0.0 || 1.0 / s == 0.0) {
            return Err(
                self.err(n, format!("constant `{c}` makes the input normalisation degenerate (a zero, infinite or non-finite scale)"))
            );
        }
        let out = n.output.first().filter(|o| !o.is_empty()).ok_or_else(|| self.err(n, "has no output"))?;
        self.input_head = out.clone();
        self.set_out(n, Value::Act(Src::Input, self.input))
    }

    fn conv(&mut self, n: &NodeProto) -> Result<(), ImportError> {
        Attrs { n }.check_known(self.path, &["kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"])?;
        let (src, s) = self.act(n, 0)?;
        let w = self.konst(n, 1)?.ok_or_else(|| self.err(n, "has no weight"))?;
        let [o, ig, kh, kw] = w.dims[..] else { return Err(self.err(n, format!("weight shape {:?} is not [O, I/groups, k, k]", w.dims))) };
        let (k, stride, pad) = window(self.path, n, Some((kh, kw)))?;
        if (kh, kw) != (k, k) {
            return Err(self.err(n, format!("kernel_shape {k}×{k} differs from the weight's {kh}×{kw}")));
        }
        if o == 0 || o as u128 > MAX_CHANNELS {
            return Err(self.err(n, format!("{o} output channels (supported: 1 to {MAX_CHANNELS})")));
        }
        let group = Attrs { n }.int("group", 1);
        let depthwise = group > 1 && group as usize == s.c && ig == 1 && o == s.c;
        if !(group == 1 && ig == s.c || depthwise) {
            return Err(self.err(
                n,
                format!("group={group} with weight {:?} on {} input channels: only dense (group=1) and depthwise (group=channels, one filter each) convs are supported", w.dims, s.c),
            ));
        }
        let bias = match self.konst(n, 2)? {
            Some(b) if b.numel() == o => Some(b.floats()),
            Some(b) => return Err(self.err(n, format!("bias has {} values for {o} output channels", b.numel()))),
            None => None,
        };
        let (h, wd) = match (out_size(s.h, k, stride, pad), out_size(s.w, k, stride, pad)) {
            (Some(h), Some(w)) if h > 0 && w > 0 => (h, w),
            _ => return Err(self.err(n, format!("a {k}×{k} kernel does not fit the {s} input"))),
        };
        let op = Op::Conv { k, stride, pad, groups: if depthwise { s.c } else { 1 }, relu: false, relu6: false };
        let slot = if depthwise { None } else { Some(0) };
        let i = self.push(n, op, vec![src], Shape::new(o, h, wd), slot)?;
        self.convs.insert(i, ConvLayer { weight: w.clone(), bias, bn: None });
        Ok(())
    }

    fn batch_norm(&mut self, n: &NodeProto) -> Result<(), ImportError> {
        let a = Attrs { n };
        a.check_known(self.path, &["epsilon", "momentum", "training_mode", "spatial"])?;
        if a.int("training_mode", 0) != 0 {
            return Err(self.err(n, "training_mode=1 is not supported; export the network in eval mode"));
        }
        let i = self.fusable(n).filter(|i| self.convs.get(i).is_some_and(|c| c.bn.is_none()));
        let Some(i) = i.filter(|&i| matches!(self.layers[i].op, Op::Conv { relu: false, .. })) else {
            return Err(self.err(n, "BatchNormalization must directly follow a Conv whose output nothing else reads"));
        };
        let c = self.shapes[i].c;
        let mut p: [Vec<f32>; 4] = Default::default();
        for (j, slot) in p.iter_mut().enumerate() {
            let t = self.konst(n, j + 1)?.ok_or_else(|| self.err(n, format!("input {} is missing", j + 1)))?;
            if t.numel() != c {
                return Err(self.err(n, format!("input {} has {} values for {c} channels", j + 1, t.numel())));
            }
            *slot = t.floats();
        }
        // nce's BatchNorm has ε = 1e-5: keep var + ε.
        let eps = a.float("epsilon", 1e-5);
        for v in p[3].iter_mut() {
            *v = (*v + eps - NCE_BN_EPS).max(0.0);
        }
        if let Some(conv) = self.convs.get_mut(&i) {
            conv.bn = Some(p);
        }
        let shape = self.shapes[i];
        self.set_out(n, Value::Act(Src::Layer(i), shape))
    }

    /// Relu (or Clip(0, 6) when `six`) after a conv or an add without one.
    fn activation(&mut self, n: &NodeProto, six: bool) -> Result<(), ImportError> {
        let target = self.fusable(n);
        let Some(i) = target else {
            return Err(self.err(n, "must directly follow a Conv (+ BatchNormalization) or an Add whose output nothing else reads"));
        };
        match &mut self.layers[i].op {
            Op::Conv { relu: relu @ false, relu6, .. } => {
                *relu = true;
                *relu6 = six;
            }
            Op::Add { relu: relu @ false } if !six => *relu = true,
            _ => return Err(self.err(n, "must directly follow a Conv (+ BatchNormalization) or, for Relu, an Add")),
        }
        let shape = self.shapes[i];
        self.set_out(n, Value::Act(Src::Layer(i), shape))
    }

    fn clip(&mut self, n: &NodeProto) -> Result<(), ImportError> {
        Attrs { n }.check_known(self.path, &[])?;
        let scalar = |t: Option<&Tensor>| t.map(|t| t.floats()).filter(|v| v.len() == 1).map(|v| v[0]);
        let (lo, hi) = (self.konst(n, 1)?, self.konst(n, 2)?);
        let (lo_v, hi_v) = (scalar(lo), scalar(hi));
        match (lo_v, hi_v, hi.is_none()) {
            (Some(l), Some(h), _) if l == 0.0 && h == 6.0 => self.activation(n, true),
            (Some(0.0), None, true) => self.activation(n, false),
            _ => Err(self.err(n, format!("only Clip(0, 6) (ReLU6) and Clip(0) (ReLU) are supported, got min {lo_v:?}, max {hi_v:?}"))),
        }
    }

    fn add(&mut self, n: &NodeProto) -> Result<(), ImportError> {
        let names: Vec<&String> = n.input.iter().collect();
        let [a, b] = names.as_slice() else { return Err(self.err(n, "expects two inputs")) };
        // MatMul + Add: the classifier's bias.
        let logits = |x: &String| self.values.get(x) == Some(&Value::Logits);
        if logits(a) || logits(b) {
            let (other, _) = if logits(a) { (*b, *a) } else { (*a, *b) };
            let t = self.model.consts.get(other).ok_or_else(|| self.err(n, "adds a non-constant to the logits"))?;
            let cl = self.classifier.as_mut().ok_or_else(|| node_err(self.path, n, "no classifier".into()))?;
            if cl.bias.is_some() || t.numel() != cl.out {
                return Err(node_err(self.path, n, format!("a bias of {} values for {} logits (or a second bias)", t.numel(), cl.out)));
            }
            cl.bias = Some(t.floats());
            self.logits = n.output.first().cloned();
            return self.set_out(n, Value::Logits);
        }
        let (sa, ha) = self.act(n, 0)?;
        let (sb, hb) = self.act(n, 1)?;
        if ha != hb {
            return Err(self.err(n, format!("adds tensors of shapes {ha} and {hb}; nce's Add takes equal shapes")));
        }
        // The integer form fuses an add with the conv without ReLU on its first side, computed
        // after the shortcut: a conv without ReLU goes first, the later of two goes first.
        let linear_conv = |s: Src| match s {
            Src::Layer(i) => matches!(self.layers[i].op, Op::Conv { relu: false, .. }).then_some(i),
            Src::Input => None,
        };
        let inputs = match (linear_conv(sa), linear_conv(sb)) {
            (None, Some(_)) => vec![sb, sa],
            (Some(a), Some(b)) if b > a => vec![sb, sa],
            _ => vec![sa, sb],
        };
        self.push(n, Op::Add { relu: false }, inputs, ha, None).map(|_| ())
    }

    fn max_pool(&mut self, n: &NodeProto) -> Result<(), ImportError> {
        let a = Attrs { n };
        a.check_known(self.path, &["kernel_shape", "strides", "pads", "dilations", "auto_pad", "ceil_mode", "storage_order"])?;
        if a.int("ceil_mode", 0) != 0 || a.int("storage_order", 0) != 0 {
            return Err(self.err(n, "ceil_mode=1 and storage_order=1 are not supported"));
        }
        if n.output.len() > 1 && n.output[1..].iter().any(|o| !o.is_empty()) {
            return Err(self.err(n, "the Indices output is not supported"));
        }
        let (src, s) = self.act(n, 0)?;
        let (k, stride, pad) = window(self.path, n, None)?;
        let (h, w) = match (out_size(s.h, k, stride, pad), out_size(s.w, k, stride, pad)) {
            (Some(h), Some(w)) if h > 0 && w > 0 => (h, w),
            _ => return Err(self.err(n, format!("a {k}×{k} window does not fit the {s} input"))),
        };
        self.push(n, Op::MaxPool { k, stride, pad }, vec![src], Shape::new(s.c, h, w), None).map(|_| ())
    }

    /// An AveragePool over the whole map is a global average pooling; others are refused.
    fn average_pool(&mut self, n: &NodeProto) -> Result<(), ImportError> {
        Attrs { n }
            .check_known(self.path, &["kernel_shape", "strides", "pads", "auto_pad", "ceil_mode", "count_include_pad", "dilations"])?;
        let (src, s) = self.act(n, 0)?;
        let (k, _, pad) = window(self.path, n, None)?;
        if s.h != s.w || k != s.h || pad != 0 {
            return Err(self.err(
                n,
                format!("only an AveragePool over the whole {}×{} map without padding is supported (as GlobalAveragePool)", s.h, s.w),
            ));
        }
        self.push(n, Op::GlobalAvgPool, vec![src], Shape::new(s.c, 1, 1), None).map(|_| ())
    }

    fn reshape(&mut self, n: &NodeProto) -> Result<(), ImportError> {
        Attrs { n }.check_known(self.path, &["allowzero"])?;
        let (src, s) = self.act(n, 0)?;
        let shape = self.konst(n, 1)?.and_then(|t| t.ints().map(<[i64]>::to_vec));
        let numel = s.numel() as i64;
        match shape.as_deref() {
            Some([b, f]) if (-1..=1).contains(b) && (*f == -1 || *f == numel) && !(*b == -1 && *f == -1) => {
                self.set_out(n, Value::Flat(src, s))
            }
            _ => Err(self.err(n, format!("only a Reshape to [N, C·H·W] with a constant shape is supported, got {shape:?}"))),
        }
    }

    fn classifier_input(&self, n: &NodeProto) -> Result<(Src, Shape), ImportError> {
        if self.classifier.is_some() {
            return Err(self.err(n, "a second fully connected layer is not supported (one classifier, last)"));
        }
        match self.value(n, 0)? {
            Value::Flat(src, s) => Ok((src, s)),
            _ => Err(self.err(n, "the classifier must read a flattened activation (Flatten or Reshape to 2-D)")),
        }
    }

    fn gemm(&mut self, n: &NodeProto) -> Result<(), ImportError> {
        let a = Attrs { n };
        a.check_known(self.path, &["alpha", "beta", "transA", "transB"])?;
        if a.int("transA", 0) != 0 || a.float("alpha", 1.0) != 1.0 || a.float("beta", 1.0) != 1.0 {
            return Err(self.err(n, "only transA=0, alpha=1, beta=1 are supported"));
        }
        let (src, s) = self.classifier_input(n)?;
        let w = self.konst(n, 1)?.ok_or_else(|| self.err(n, "has no weight"))?;
        let [r, c] = w.dims[..] else { return Err(self.err(n, format!("weight shape {:?} is not 2-D", w.dims))) };
        let trans = a.int("transB", 0) != 0;
        let (out, inp) = if trans { (r, c) } else { (c, r) };
        let weight = if trans { w.floats() } else { transpose(&w.floats(), r, c) };
        let bias = match self.konst(n, 2)? {
            Some(b) if b.numel() == out => Some(b.floats()),
            Some(b) => return Err(self.err(n, format!("bias has {} values for {out} outputs", b.numel()))),
            None => None,
        };
        self.set_classifier(n, src, s, inp, out, weight, bias)
    }

    fn matmul(&mut self, n: &NodeProto) -> Result<(), ImportError> {
        Attrs { n }.check_known(self.path, &[])?;
        let (src, s) = self.classifier_input(n)?;
        let w = self.konst(n, 1)?.ok_or_else(|| self.err(n, "the second input must be a constant weight"))?;
        let [inp, out] = w.dims[..] else { return Err(self.err(n, format!("weight shape {:?} is not 2-D", w.dims))) };
        let weight = transpose(&w.floats(), inp, out);
        self.set_classifier(n, src, s, inp, out, weight, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn set_classifier(
        &mut self,
        n: &NodeProto,
        src: Src,
        s: Shape,
        inp: usize,
        out: usize,
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
    ) -> Result<(), ImportError> {
        if inp != s.numel() {
            return Err(self.err(n, format!("weight expects {inp} inputs, the flattened activation has {}", s.numel())));
        }
        if out == 0 || out as u128 > MAX_CHANNELS {
            return Err(self.err(n, format!("{out} classes (supported: 1 to {MAX_CHANNELS})")));
        }
        if src != Src::Layer(self.layers.len().wrapping_sub(1)) {
            return Err(self.err(n, "the classifier must read the layer just before it"));
        }
        let name = self.layer_name(n);
        self.classifier = Some(Classifier { name, in_len: inp, out, weight, bias });
        self.logits = n.output.first().cloned();
        self.set_out(n, Value::Logits)
    }

    fn finish(self, input: Shape) -> Result<Lowered, ImportError> {
        let bad = |msg: String| ImportError::Model { file: self.path.into(), msg };
        let Some(cl) = self.classifier else { return Err(bad("the network has no classifier (a final Gemm or MatMul)".into())) };
        let outputs: Vec<&str> = self.model.graph.output.iter().map(|o| o.name.as_str()).collect();
        if outputs.len() != 1 || self.logits.as_deref() != Some(outputs[0]) {
            return Err(bad(format!("the graph's output must be the classifier's logits (outputs: {outputs:?})")));
        }
        let (mut vars, mut folded) = (Vec::new(), Vec::new());
        for (i, l) in self.layers.iter().enumerate() {
            if let Some(c) = self.convs.get(&i) {
                conv_vars(&mut vars, &l.name, c);
                if c.bn.is_none() {
                    folded.push(l.name.clone());
                }
            }
        }
        let mut shapes = self.shapes;
        shapes.push(Shape::new(cl.out, 1, 1));
        vars.push(Variable { name: format!("{}.weight", cl.name), shape: vec![cl.out as i64, cl.in_len as i64], data: cl.weight });
        vars.push(Variable {
            name: format!("{}.bias", cl.name),
            shape: vec![cl.out as i64],
            data: cl.bias.unwrap_or_else(|| vec![0.0; cl.out]),
        });
        let normalization = self.norm.map(|(mean, scale)| Normalization {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std: scale.iter().map(|&s| (1.0 / s) as f32).collect(),
        });
        if normalization.is_some() {
            check_normalised_readers(self.path, &self.layers)?;
        }
        Ok(Lowered { input, classes: cl.out, layers: self.layers, shapes, classifier: cl.name, vars, folded, normalization })
    }
}

/// The values of a scalar or `[…, C, 1, 1]` constant, one per channel.
fn per_channel(t: &Tensor, channels: usize) -> Option<Vec<f32>> {
    let v = t.floats();
    if v.len() == 1 {
        return Some(vec![v[0]; channels]);
    }
    let first = t.dims.iter().position(|&d| d != 1).unwrap_or(t.dims.len());
    (t.dims[first..] == [channels, 1, 1] || t.dims[first..] == [channels, 1]).then_some(v).filter(|v| v.len() == channels)
}

/// Only convs read a normalised image (nce applies the normalisation in the first conv).
pub(super) fn check_normalised_readers(path: &Path, layers: &[crate::graph::imported::TemplateLayer]) -> Result<(), ImportError> {
    match layers.iter().find(|l| l.inputs.contains(&Src::Input) && !matches!(l.op, Op::Conv { .. })) {
        Some(l) => Err(ImportError::Model {
            file: path.into(),
            msg: format!("layer `{}` reads the normalised image; with an input normalisation only convs may read the image", l.name),
        }),
        None => Ok(()),
    }
}

/// A conv's weight and its BatchNorm in nce's form. A conv bias moves into the BN: before a
/// BN, `μ' = μ − b`; without one, an identity BN (γ = 1, μ = 0, σ² = 1 − ε) with β = b.
fn conv_vars(vars: &mut Vec<Variable>, name: &str, c: &ConvLayer) {
    let o = c.weight.dims[0];
    let shape: Vec<i64> = c.weight.dims.iter().map(|&d| d as i64).collect();
    vars.push(Variable { name: format!("{name}.weight"), shape, data: c.weight.floats() });
    let bias = c.bias.clone().unwrap_or_else(|| vec![0.0; o]);
    let [gamma, beta, mean, var] = match &c.bn {
        Some([g, b, m, v]) => [g.clone(), b.clone(), m.iter().zip(&bias).map(|(m, b)| m - b).collect(), v.clone()],
        None => [vec![1.0; o], bias, vec![0.0; o], vec![1.0 - NCE_BN_EPS; o]],
    };
    for (suffix, data) in [("weight", gamma), ("bias", beta), ("running_mean", mean), ("running_var", var)] {
        vars.push(Variable { name: format!("{name}.bn.{suffix}"), shape: vec![o as i64], data });
    }
}

/// `[r, c]` row-major → `[c, r]`.
fn transpose(v: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut t = vec![0.0; v.len()];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = v[i * c + j];
        }
    }
    t
}

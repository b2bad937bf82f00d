//! The ONNX side of the import: decoding, the opset check, constant tensors and node order.

use super::{ImportError, MIN_OPSET};
use crate::engine::onnx::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Most elements of one constant tensor (1 GiB of floats): beyond any CNN nce trains, and a
/// bound that keeps a hostile header from asking for a huge allocation.
pub const MAX_ELEMENTS: u64 = 1 << 28;

/// A decoded model: its graph, with the nodes in an order where every input comes first.
pub struct Model {
    pub graph: GraphProto,
    pub order: Vec<usize>,
    pub consts: HashMap<String, Tensor>,
}

/// A constant tensor (initialiser or `Constant` node) as f32 or i64 values.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub dims: Vec<usize>,
    pub data: Data,
}

#[derive(Clone, Debug)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }
    /// The values as f32 (i64 converted).
    pub fn floats(&self) -> Vec<f32> {
        match &self.data {
            Data::F32(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
    pub fn ints(&self) -> Option<&[i64]> {
        match &self.data {
            Data::I64(v) => Some(v),
            Data::F32(_) => None,
        }
    }
}

pub fn decode(path: &Path, bytes: &[u8]) -> Result<Model, ImportError> {
    let bad = |msg: String| ImportError::Model { file: path.into(), msg };
    let model = ModelProto::decode(bytes).map_err(|e| ImportError::Decode { file: path.into(), msg: e.to_string() })?;
    let opset = model.opset_import.iter().filter(|o| o.domain.is_empty() || o.domain == "ai.onnx").map(|o| o.version).max();
    match opset {
        None => return Err(bad("no opset of the default ONNX domain is imported (not an ONNX model?)".into())),
        Some(v) if v < MIN_OPSET => return Err(ImportError::Opset { file: path.into(), found: v }),
        Some(_) => {}
    }
    let graph = model.graph.ok_or_else(|| bad("the model has no graph".into()))?;
    if graph.node.is_empty() {
        return Err(bad("the graph has no nodes".into()));
    }
    let mut consts = HashMap::new();
    for t in &graph.initializer {
        consts.insert(t.name.clone(), tensor(path, t, &t.name)?);
    }
    for n in &graph.node {
        if n.op_type == "Constant" {
            let out = n.output.first().cloned().unwrap_or_default();
            let t = constant_value(path, n)?;
            consts.insert(out, t);
        }
    }
    let order = topological(path, &graph, &consts)?;
    Ok(Model { graph, order, consts })
}

/// The tensor of a `Constant` node (its `value` attribute).
fn constant_value(path: &Path, n: &NodeProto) -> Result<Tensor, ImportError> {
    let err = |msg: &str| ImportError::Node { file: path.into(), node: n.name.clone(), op: n.op_type.clone(), msg: msg.into() };
    match n.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref()) {
        Some(t) => tensor(path, t, &n.name),
        None => {
            let a = n
                .attribute
                .iter()
                .find(|a| a.name == "value_float" || a.name == "value_floats" || a.name == "value_ints" || a.name == "value_int");
            match a {
                Some(a) if a.name == "value_float" => Ok(Tensor { dims: vec![], data: Data::F32(vec![a.f]) }),
                Some(a) if a.name == "value_floats" => Ok(Tensor { dims: vec![a.floats.len()], data: Data::F32(a.floats.clone()) }),
                Some(a) if a.name == "value_int" => Ok(Tensor { dims: vec![], data: Data::I64(vec![a.i]) }),
                Some(a) => Ok(Tensor { dims: vec![a.ints.len()], data: Data::I64(a.ints.clone()) }),
                None => Err(err("a Constant needs a tensor `value` (or value_float(s) / value_int(s))")),
            }
        }
    }
}

/// Reads one tensor, checking its dimensions and that its data has the size they imply.
pub fn tensor(path: &Path, t: &TensorProto, name: &str) -> Result<Tensor, ImportError> {
    let err = |msg: String| ImportError::Initializer { file: path.into(), name: name.into(), msg };
    if t.data_location == 1 || !t.external_data.is_empty() {
        return Err(ImportError::ExternalData { file: path.into(), name: name.into() });
    }
    let mut n: u64 = 1;
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        if d < 0 {
            return Err(err(format!("negative dimension in shape {:?}", t.dims)));
        }
        n = n
            .checked_mul(d as u64)
            .filter(|&v| v <= MAX_ELEMENTS)
            .ok_or_else(|| err(format!("shape {:?} has more than {MAX_ELEMENTS} elements, above what nce imports", t.dims)))?;
        dims.push(d as usize);
    }
    let n = n as usize;
    let mismatch = |have: usize| err(format!("holds {have} values, but its shape {:?} needs {n}", t.dims));
    let data = match t.data_type {
        1 => Data::F32(if !t.raw_data.is_empty() {
            if t.raw_data.len() != n * 4 {
                return Err(mismatch(t.raw_data.len() / 4));
            }
            t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        } else {
            if t.float_data.len() != n {
                return Err(mismatch(t.float_data.len()));
            }
            t.float_data.clone()
        }),
        7 => Data::I64(if !t.raw_data.is_empty() {
            if t.raw_data.len() != n * 8 {
                return Err(mismatch(t.raw_data.len() / 8));
            }
            t.raw_data.chunks_exact(8).map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect()
        } else {
            if t.int64_data.len() != n {
                return Err(mismatch(t.int64_data.len()));
            }
            t.int64_data.clone()
        }),
        other => return Err(err(format!("element type {other} is not supported (float32 weights, int64 shapes)"))),
    };
    if let Data::F32(v) = &data {
        if v.iter().any(|x| !x.is_finite()) {
            return Err(err("holds NaN or infinite values".into()));
        }
    }
    Ok(Tensor { dims, data })
}

/// The node indices in an order where every node's inputs are produced before it (Kahn's
/// algorithm); a cycle or an input nobody produces is an error naming a node.
fn topological(path: &Path, g: &GraphProto, consts: &HashMap<String, Tensor>) -> Result<Vec<usize>, ImportError> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if producer.insert(o, i).is_some() {
                return Err(node_err(path, n, format!("output `{o}` is also produced by another node")));
            }
        }
    }
    let available: HashSet<&str> = g.input.iter().map(|v| v.name.as_str()).chain(consts.keys().map(String::as_str)).collect();
    let mut pending = vec![0usize; g.node.len()];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); g.node.len()];
    for (i, n) in g.node.iter().enumerate() {
        for x in n.input.iter().filter(|x| !x.is_empty()) {
            match producer.get(x.as_str()) {
                Some(&p) if !(g.node[p].op_type == "Constant" && available.contains(x.as_str())) => {
                    pending[i] += 1;
                    users[p].push(i);
                }
                Some(_) => {}
                None if available.contains(x.as_str()) => {}
                None => return Err(node_err(path, n, format!("reads `{x}`, which no node, input or initialiser provides"))),
            }
        }
    }
    let mut ready: Vec<usize> = (0..g.node.len()).filter(|&i| pending[i] == 0).collect();
    ready.reverse();
    let mut order = Vec::with_capacity(g.node.len());
    while let Some(i) = ready.pop() {
        order.push(i);
        for &u in users[i].iter().rev() {
            pending[u] -= 1;
            if pending[u] == 0 {
                ready.push(u);
            }
        }
    }
    if let Some(i) = (0..g.node.len()).find(|&i| pending[i] > 0) {
        let n = &g.node[i];
        return Err(ImportError::Cycle { file: path.into(), node: n.name.clone(), op: n.op_type.clone() });
    }
    Ok(order)
}

pub fn node_err(path: &Path, n: &NodeProto, msg: String) -> ImportError {
    ImportError::Node { file: path.into(), node: n.name.clone(), op: n.op_type.clone(), msg }
}

/// A node's attribute by name.
pub fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

//! A small builder for ONNX graphs: named initialisers and nodes, in the order they are added
//! (which is a topological order, as ONNX requires).

use super::proto::{AttributeProto, AttributeType, DataType, NodeProto, TensorProto};

/// Initialisers and nodes of a graph under construction.
#[derive(Default)]
pub(super) struct Builder {
    pub nodes: Vec<NodeProto>,
    pub inits: Vec<TensorProto>,
}

/// An attribute of a node.
pub(super) enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Str(&'static str),
}

fn attribute(name: &str, a: Attr) -> AttributeProto {
    let mut p = AttributeProto { name: name.to_string(), ..Default::default() };
    match a {
        Attr::Int(i) => (p.i, p.r#type) = (i, AttributeType::Int as i32),
        Attr::Ints(v) => (p.ints, p.r#type) = (v, AttributeType::Ints as i32),
        Attr::Str(s) => (p.s, p.r#type) = (s.as_bytes().to_vec(), AttributeType::String as i32),
    }
    p
}

impl Builder {
    fn tensor(&mut self, name: &str, dims: &[usize], dtype: DataType, raw: Vec<u8>) -> String {
        let dims = dims.iter().map(|&d| d as i64).collect();
        self.inits.push(TensorProto { dims, data_type: dtype as i32, name: name.to_string(), raw_data: raw, ..Default::default() });
        name.to_string()
    }

    pub fn f32s(&mut self, name: &str, dims: &[usize], v: &[f32]) -> String {
        self.tensor(name, dims, DataType::Float, v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    pub fn i8s(&mut self, name: &str, dims: &[usize], v: &[i8]) -> String {
        self.tensor(name, dims, DataType::Int8, v.iter().map(|&x| x as u8).collect())
    }

    pub fn u8s(&mut self, name: &str, dims: &[usize], v: &[u8]) -> String {
        self.tensor(name, dims, DataType::Uint8, v.to_vec())
    }

    pub fn i32s(&mut self, name: &str, dims: &[usize], v: &[i32]) -> String {
        self.tensor(name, dims, DataType::Int32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    pub fn i64s(&mut self, name: &str, dims: &[usize], v: &[i64]) -> String {
        self.tensor(name, dims, DataType::Int64, v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    /// A node of the default domain whose one output is named `name`; returns `name`.
    pub fn node(&mut self, op: &str, name: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        self.node_in("", op, name, inputs, attrs)
    }

    /// A node of operator set `domain`.
    pub fn node_in(&mut self, domain: &str, op: &str, name: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.to_string()],
            name: name.to_string(),
            op_type: op.to_string(),
            attribute: attrs.into_iter().map(|(n, a)| attribute(n, a)).collect(),
            domain: domain.to_string(),
        });
        name.to_string()
    }
}

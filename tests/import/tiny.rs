//! A tiny valid ONNX CNN built with nce's prost messages, the seed of the hostile-file corpus
//! (`tests/import_hostile.rs`) and of `examples/fuzz_onnx.rs` (both include this file):
//! `image [N, 1, 8, 8]` → Conv `conv` (4 filters 3×3, pads 1, bias) → Relu `relu` → MaxPool
//! `pool` (2×2) → GlobalAveragePool `gap` → Flatten `flat` → Gemm `fc` (2 classes) → `logits`.

#![allow(dead_code)]

use nce::engine::onnx::proto::{
    AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TensorTypeProto,
    TypeProto, ValueInfoProto,
};

pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), ints: v.to_vec(), r#type: 7, ..Default::default() }
}

pub fn node(name: &str, op: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        name: name.into(),
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        domain: String::new(),
    }
}

pub fn floats(name: &str, dims: &[i64], seed: u32) -> TensorProto {
    let n: i64 = dims.iter().product();
    let raw = (0..n).flat_map(|i| ((((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 1000.0 - 0.5).to_le_bytes()).collect();
    TensorProto { dims: dims.to_vec(), data_type: 1, name: name.into(), raw_data: raw, ..Default::default() }
}

pub fn value(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| match d {
            Some(v) => Dimension { dim_value: Some(*v), dim_param: None },
            None => Dimension { dim_value: None, dim_param: Some("n".into()) },
        })
        .collect();
    let tensor_type = TensorTypeProto { elem_type: 1, shape: Some(TensorShapeProto { dim }) };
    ValueInfoProto { name: name.into(), r#type: Some(TypeProto { tensor_type: Some(tensor_type) }) }
}

pub fn tiny() -> ModelProto {
    let nodes = vec![
        node("conv", "Conv", &["image", "conv.w", "conv.b"], &["c"], vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1])]),
        node("relu", "Relu", &["c"], &["r"], vec![]),
        node("pool", "MaxPool", &["r"], &["p"], vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])]),
        node("gap", "GlobalAveragePool", &["p"], &["g"], vec![]),
        node("flat", "Flatten", &["g"], &["f"], vec![]),
        node(
            "fc",
            "Gemm",
            &["f", "fc.w", "fc.b"],
            &["logits"],
            vec![AttributeProto { name: "transB".into(), i: 1, r#type: 2, ..Default::default() }],
        ),
    ];
    let graph = GraphProto {
        node: nodes,
        name: "tiny".into(),
        initializer: vec![
            floats("conv.w", &[4, 1, 3, 3], 1),
            floats("conv.b", &[4], 2),
            floats("fc.w", &[2, 4], 3),
            floats("fc.b", &[2], 4),
        ],
        doc_string: String::new(),
        input: vec![value("image", &[None, Some(1), Some(8), Some(8)])],
        output: vec![value("logits", &[None, Some(2)])],
    };
    ModelProto {
        ir_version: 8,
        producer_name: "nce-tests".into(),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
        ..Default::default()
    }
}

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

/// A float32 initialiser with values `f(i)`.
pub fn consts(name: &str, dims: &[i64], f: impl Fn(usize) -> f32) -> TensorProto {
    let n: i64 = dims.iter().product();
    let raw = (0..n as usize).flat_map(|i| f(i).to_le_bytes()).collect();
    TensorProto { dims: dims.to_vec(), data_type: 1, name: name.into(), raw_data: raw, ..Default::default() }
}

/// Conv `name` (`window` = (`k`, `stride`): `k`×`k`, pad `k/2`) + BatchNormalization `name.bn`, reading `x`,
/// writing `out`; its initialisers go to `init`.
fn conv_bn(graph: (&mut Vec<NodeProto>, &mut Vec<TensorProto>), name: &str, x: &str, out: &str, io: (i64, i64), window: (i64, i64)) {
    let ((nodes, init), (i, o), (k, stride)) = (graph, io, window);
    let seed = name.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    // He-like scale so activations keep their size through the layers.
    let scale = (6.0 / (i * k * k) as f32).sqrt();
    let w = floats(&format!("{name}.w"), &[o, i, k, k], seed);
    let raw = w.raw_data.chunks(4).flat_map(|c| (f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * 2.0 * scale).to_le_bytes()).collect();
    init.push(TensorProto { raw_data: raw, ..w });
    init.push(consts(&format!("{name}.g"), &[o], |c| 0.8 + 0.05 * (c % 5) as f32));
    init.push(consts(&format!("{name}.b"), &[o], |c| 0.1 * (c % 3) as f32 - 0.05));
    init.push(consts(&format!("{name}.m"), &[o], |c| 0.02 * (c % 4) as f32));
    init.push(consts(&format!("{name}.v"), &[o], |c| 1.0 + 0.1 * (c % 2) as f32));
    let conv_out = format!("{name}.y");
    let pads = ints("pads", &[k / 2; 4]);
    nodes.push(node(
        name,
        "Conv",
        &[x, &format!("{name}.w")],
        &[&conv_out],
        vec![ints("kernel_shape", &[k, k]), ints("strides", &[stride, stride]), pads],
    ));
    let bn_inputs = [conv_out.clone(), format!("{name}.g"), format!("{name}.b"), format!("{name}.m"), format!("{name}.v")];
    let bn_inputs: Vec<&str> = bn_inputs.iter().map(String::as_str).collect();
    nodes.push(node(&format!("{name}.bn"), "BatchNormalization", &bn_inputs, &[out], vec![]));
}

/// A tiny ResNet for `image [N, 3, 32, 32]` (the shape of `--data folder:`) with one
/// projection block, `classes` logits: [`Sub` `norm.sub` / `Div` `norm.div` by per-channel
/// constants when `norm` is given] → `stem` (Conv 3→8 with bias, no BatchNormalization, as
/// PyTorch's eval export folds it) → Relu → block: `block.conv1` (3×3 stride 2, 8→16) + BN +
/// Relu, `block.conv2` (3×3, 16→16) + BN; shortcut `block.down` (1×1 stride 2, 8→16) + BN;
/// `block.add` → Relu → GlobalAveragePool → Flatten → Gemm `fc`.
pub fn tiny_resnet(norm: Option<(&[f32; 3], &[f32; 3])>, classes: i64) -> ModelProto {
    let (mut nodes, mut init) = (Vec::new(), Vec::new());
    let mut x = "image".to_string();
    if let Some((mean, std)) = norm {
        init.push(consts("norm.mean", &[1, 3, 1, 1], |c| mean[c]));
        init.push(consts("norm.std", &[1, 3, 1, 1], |c| std[c]));
        nodes.push(node("norm.sub", "Sub", &["image", "norm.mean"], &["centred"], vec![]));
        nodes.push(node("norm.div", "Div", &["centred", "norm.std"], &["normalised"], vec![]));
        x = "normalised".into();
    }
    init.push(floats("stem.w", &[8, 3, 3, 3], 11));
    init.push(consts("stem.bias", &[8], |c| 0.05 * c as f32 - 0.2));
    let stem = vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1])];
    nodes.push(node("stem", "Conv", &[&x, "stem.w", "stem.bias"], &["s"], stem));
    nodes.push(node("stem.relu", "Relu", &["s"], &["s.r"], vec![]));
    conv_bn((&mut nodes, &mut init), "block.conv1", "s.r", "c1", (8, 16), (3, 2));
    nodes.push(node("block.relu1", "Relu", &["c1"], &["c1.r"], vec![]));
    conv_bn((&mut nodes, &mut init), "block.conv2", "c1.r", "c2", (16, 16), (3, 1));
    conv_bn((&mut nodes, &mut init), "block.down", "s.r", "d", (8, 16), (1, 2));
    nodes.push(node("block.add", "Add", &["c2", "d"], &["a"], vec![]));
    nodes.push(node("block.relu", "Relu", &["a"], &["a.r"], vec![]));
    with_head((nodes, init), "a.r", "tiny_resnet", classes)
}

/// A tiny network with MobileNetV2's linear bottlenecks for `image [N, 3, 32, 32]`: `stem`
/// (Conv 3→8 with bias) → Relu → `b1.project` (1×1, 8→8, BN, no ReLU: a linear bottleneck read
/// by a conv and by an add) → block 2: `b2.expand` (1×1, 8→16) + BN + Relu, `b2.conv` (3×3,
/// 16→16) + BN + Relu, `b2.project` (1×1, 16→8) + BN, `b2.add` with `b1.project`'s output (no
/// ReLU) → `last` (1×1, 8→16) + BN + Relu → GlobalAveragePool → Flatten → Gemm `fc`.
pub fn tiny_bottleneck(classes: i64) -> ModelProto {
    let (mut nodes, mut init) = (Vec::new(), Vec::new());
    init.push(floats("stem.w", &[8, 3, 3, 3], 11));
    init.push(consts("stem.bias", &[8], |c| 0.05 * c as f32 - 0.2));
    let stem = vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1])];
    nodes.push(node("stem", "Conv", &["image", "stem.w", "stem.bias"], &["s"], stem));
    nodes.push(node("stem.relu", "Relu", &["s"], &["s.r"], vec![]));
    conv_bn((&mut nodes, &mut init), "b1.project", "s.r", "p1", (8, 8), (1, 1));
    conv_bn((&mut nodes, &mut init), "b2.expand", "p1", "e", (8, 16), (1, 1));
    nodes.push(node("b2.relu1", "Relu", &["e"], &["e.r"], vec![]));
    conv_bn((&mut nodes, &mut init), "b2.conv", "e.r", "c", (16, 16), (3, 1));
    nodes.push(node("b2.relu2", "Relu", &["c"], &["c.r"], vec![]));
    conv_bn((&mut nodes, &mut init), "b2.project", "c.r", "p2", (16, 8), (1, 1));
    nodes.push(node("b2.add", "Add", &["p1", "p2"], &["a"], vec![]));
    conv_bn((&mut nodes, &mut init), "last", "a", "l", (8, 16), (1, 1));
    nodes.push(node("last.relu", "Relu", &["l"], &["l.r"], vec![]));
    with_head((nodes, init), "l.r", "tiny_bottleneck", classes)
}

/// The head of the 32×32 RGB nets: `x` (16 channels) → GlobalAveragePool `gap` → Flatten `flat`
/// → Gemm `fc` (`classes` logits), in a model named `name`.
fn with_head(graph: (Vec<NodeProto>, Vec<TensorProto>), x: &str, name: &str, classes: i64) -> ModelProto {
    let (mut nodes, mut init) = graph;
    nodes.push(node("gap", "GlobalAveragePool", &[x], &["g"], vec![]));
    nodes.push(node("flat", "Flatten", &["g"], &["f"], vec![]));
    let trans_b = AttributeProto { name: "transB".into(), i: 1, r#type: 2, ..Default::default() };
    nodes.push(node("fc", "Gemm", &["f", "fc.w", "fc.b"], &["logits"], vec![trans_b]));
    init.push(floats("fc.w", &[classes, 16], 5));
    init.push(floats("fc.b", &[classes], 6));
    let graph = GraphProto {
        node: nodes,
        name: name.into(),
        initializer: init,
        doc_string: String::new(),
        input: vec![value("image", &[None, Some(3), Some(32), Some(32)])],
        output: vec![value("logits", &[None, Some(classes)])],
    };
    ModelProto { graph: Some(graph), ..tiny() }
}

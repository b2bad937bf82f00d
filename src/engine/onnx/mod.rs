//! ONNX export of a [`QModel`] (`docs/onnx.md`): the integer plan written as an ONNX graph
//! (opset 17) in one of four [`OnnxForm`]s, with nce's layer names and the input
//! normalisation as metadata. Built from the plan, not from a checkpoint, so that `.nce`
//! files and checkpoints export alike and the ONNX Runtime backend can export in memory.
//!
//! The protobuf messages are declared with prost's derive in [`proto`].

mod build;
mod graph;
pub mod proto;

use crate::engine::plan::{QModel, Step};
use proto::{
    DataType, Dimension, ModelProto, OperatorSetIdProto, StringStringEntryProto, TensorShapeProto, TensorTypeProto, TypeProto,
    ValueInfoProto,
};

/// The graph input: `float32 [N, C, H, W]`, `pixel / 255` (no mean/std normalisation).
pub const INPUT: &str = "image";
/// The graph output: `float32 [N, classes]` real logits (integer logit × [`logit_scale`]).
pub const OUTPUT: &str = "logits";
/// In the QDQ form, the int64 `[N, classes]` tensor of the engine's integer logits, of which
/// [`OUTPUT`] is the float32 product with [`logit_scale`]. Not a graph output of the file;
/// [`to_bytes_with_integer_logits`] makes it one.
pub const INTEGER_LOGITS: &str = "logits_int";
/// The ONNX operator set written.
pub const OPSET: i64 = 17;
/// The ONNX IR version that goes with [`OPSET`].
const IR_VERSION: i64 = 8;

/// How the integer model is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum OnnxForm {
    /// Exact: the image quantized to uint8 codes (`QuantizeLinear`), int8 weight codes in
    /// `ConvInteger` (`group` for grouped and depthwise convs), the requantisation, pooling and
    /// classifier in int64 (`Mul`, `Add`, `Div`, `Clip`, `ReduceSum`, `MatMul`), uint8
    /// activation codes between layers. What `nce export --onnx` writes and `--backend
    /// onnxruntime` runs.
    Qdq,
    /// QDQ as an int8 quantizer writes it (int32 biases, every conv output quantized) so that
    /// ONNX Runtime fuses it into its integer kernels: the speed baseline, not exact.
    QdqInt8,
    /// Plain float32 (dequantized weights, `Clip` activations, no quantizers): the fp32 speed
    /// baseline.
    Float,
    /// QONNX: float weights and activations through `Quant` nodes (bit width 2 for 2-bit
    /// layers), the format FINN and the `qonnx` package read.
    Qonnx,
}

impl OnnxForm {
    pub fn name(self) -> &'static str {
        match self {
            OnnxForm::Qdq => "qdq",
            OnnxForm::QdqInt8 => "qdq-int8",
            OnnxForm::Float => "float",
            OnnxForm::Qonnx => "qonnx",
        }
    }
}

/// Why a model could not be written as ONNX.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OnnxError {
    #[error("the plan cannot be written as ONNX: {0}")]
    Plan(String),
    #[error("the model header cannot be serialised: {0}")]
    Header(#[from] serde_json::Error),
}

/// The real value of one integer logit: `s_w · s_x / (H·W)` of the classifier (with the
/// tensor scales [`to_model`] assigns; 1 where the file records none).
pub fn logit_scale(model: &QModel) -> f64 {
    let mut unit = 1.0;
    for step in &model.steps {
        match step {
            Step::Pool { layer, input } => {
                let l = &model.net().layers[*layer];
                unit = build::tensor_scale(model, *input) / (l.in_shape.h * l.in_shape.w) as f64;
            }
            Step::Linear { layer, .. } => {
                let name = &model.net().layers[*layer].name;
                let s_w = model.header.scales.get(name).and_then(|s| s.weight).filter(|v| v.is_finite() && *v > 0.0).unwrap_or(1.0);
                unit *= s_w;
            }
            _ => {}
        }
    }
    unit
}

/// `model` as an ONNX model of the given form.
pub fn to_model(model: &QModel, form: OnnxForm) -> Result<ModelProto, OnnxError> {
    let mut t = build::Translate::new(model, form);
    t.run()?;
    let net = model.net();
    let s = net.input;
    let input = value_info(INPUT, &[None, Some(s.c), Some(s.h), Some(s.w)]);
    let output = value_info(OUTPUT, &[None, Some(net.classes)]);
    let graph = proto::GraphProto {
        node: t.b.nodes,
        name: format!("nce-{}", net.model),
        initializer: t.b.inits,
        doc_string: format!("{} exported by nce as {}", net.model, form.name()),
        input: vec![input],
        output: vec![output],
    };
    let mut opset_import = vec![OperatorSetIdProto { domain: String::new(), version: OPSET }];
    if form == OnnxForm::Qonnx {
        opset_import.push(OperatorSetIdProto { domain: build::QONNX_DOMAIN.into(), version: 1 });
    }
    Ok(ModelProto {
        ir_version: IR_VERSION,
        producer_name: "nce".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: "nce".into(),
        model_version: 1,
        doc_string: "docs/onnx.md in the nce repository describes this graph".into(),
        graph: Some(graph),
        opset_import,
        metadata_props: metadata(model, form)?,
    })
}

/// `model` as ONNX protobuf bytes.
pub fn to_bytes(model: &QModel, form: OnnxForm) -> Result<Vec<u8>, OnnxError> {
    Ok(prost::Message::encode_to_vec(&to_model(model, form)?))
}

/// The QDQ form as bytes with [`INTEGER_LOGITS`] as a second graph output, so that a runtime
/// can read the integer logits exactly (the float32 [`OUTPUT`] holds them only to 24 bits).
pub fn to_bytes_with_integer_logits(model: &QModel) -> Result<Vec<u8>, OnnxError> {
    let mut p = to_model(model, OnnxForm::Qdq)?;
    let classes = model.net().classes;
    if let Some(g) = p.graph.as_mut() {
        g.output.push(typed_value_info(INTEGER_LOGITS, DataType::Int64, &[None, Some(classes)]));
    }
    Ok(prost::Message::encode_to_vec(&p))
}

/// Metadata keys written into every file (`metadata_props`).
pub mod keys {
    /// The [`super::OnnxForm`] name.
    pub const FORM: &str = "nce.form";
    /// JSON array of nce's layer names, in graph order (ONNX node names start with them).
    pub const LAYERS: &str = "nce.layers";
    /// JSON object describing the input normalisation.
    pub const INPUT: &str = "nce.input";
    /// The real value of one integer logit.
    pub const LOGIT_SCALE: &str = "nce.logit_scale";
    /// The `.nce` header (network, profile, source checkpoint, real scales) as JSON.
    pub const HEADER: &str = "nce.header";
}

fn metadata(model: &QModel, form: OnnxForm) -> Result<Vec<StringStringEntryProto>, OnnxError> {
    let names: Vec<&str> = model.net().layers.iter().map(|l| l.name.as_str()).collect();
    let input = serde_json::json!({
        "name": INPUT, "layout": "NCHW", "dtype": "float32", "value": "pixel / 255",
        "scale": 1.0 / 255.0, "mean": 0.0, "std": 1.0,
        "note": "no mean/std normalisation: the BatchNorm after the first conv absorbs it",
    });
    let entries = [
        (keys::FORM, form.name().to_string()),
        (keys::LAYERS, serde_json::to_string(&names)?),
        (keys::INPUT, input.to_string()),
        (keys::LOGIT_SCALE, format!("{:e}", logit_scale(model))),
        (keys::HEADER, serde_json::to_string(&model.header)?),
    ];
    Ok(entries.into_iter().map(|(k, v)| StringStringEntryProto { key: k.into(), value: v }).collect())
}

fn value_info(name: &str, dims: &[Option<usize>]) -> ValueInfoProto {
    typed_value_info(name, DataType::Float, dims)
}

fn typed_value_info(name: &str, dtype: DataType, dims: &[Option<usize>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| match d {
            Some(n) => Dimension { dim_value: Some(*n as i64), dim_param: None },
            None => Dimension { dim_value: None, dim_param: Some("N".into()) },
        })
        .collect();
    let tensor = TensorTypeProto { elem_type: dtype as i32, shape: Some(TensorShapeProto { dim }) };
    ValueInfoProto { name: name.into(), r#type: Some(TypeProto { tensor_type: Some(tensor) }) }
}

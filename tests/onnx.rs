//! ONNX export (`nce::engine::onnx`) and the ONNX Runtime backend: the exported protobuf is
//! well-formed and carries what docs/onnx.md promises, ONNX Runtime computes the engine's
//! logits on the committed model, and the file runs in Python's stock ONNX Runtime too.

mod common;

#[cfg(feature = "onnxruntime")]
use nce::engine::compare;
use nce::engine::onnx::proto::{DataType, ModelProto, TensorProto};
use nce::engine::onnx::{keys, logit_scale, to_bytes, to_model, OnnxForm, OPSET};
use nce::engine::plan::{QModel, Step};
use nce::engine::{open, BackendKind, BackendOptions, ConvWeights};
use prost::Message;
use std::path::Path;

const MODEL: &str = "examples/resnet20-w2a2-fashion.nce";

fn model() -> QModel {
    QModel::load(Path::new(MODEL)).unwrap()
}

fn test_images(n: usize) -> nce::data::Dataset {
    nce::data::load("fashion-mnist", Path::new("data"), nce::data::Split::Test).unwrap().subset(n)
}

fn decoded(m: &QModel, form: OnnxForm) -> ModelProto {
    ModelProto::decode(to_bytes(m, form).unwrap().as_slice()).unwrap()
}

fn init<'a>(p: &'a ModelProto, name: &str) -> &'a TensorProto {
    p.graph.as_ref().unwrap().initializer.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no initializer {name}"))
}

fn meta<'a>(p: &'a ModelProto, key: &str) -> &'a str {
    &p.metadata_props.iter().find(|e| e.key == key).unwrap_or_else(|| panic!("no metadata {key}")).value
}

#[test]
fn qdq_export_holds_the_codes_the_names_and_the_normalisation() {
    let m = model();
    let p = decoded(&m, OnnxForm::Qdq);
    assert_eq!(p.opset_import[0].version, OPSET);
    let g = p.graph.as_ref().unwrap();
    let count = |op: &str| g.node.iter().filter(|n| n.op_type == op).count();
    let convs = m.steps.iter().filter(|s| matches!(s, Step::Conv { .. })).count();
    assert_eq!(count("Conv"), convs);
    // One clip + quantizer per conv output, one for the image.
    assert_eq!((count("Clip"), count("QuantizeLinear")), (convs, convs + 1));
    for s in &m.steps {
        let Step::Conv { layer, conv, .. } = s else { continue };
        let name = &m.net().layers[*layer].name;
        let w = init(&p, &format!("{name}.w_codes"));
        assert_eq!(w.data_type, DataType::Int8 as i32, "{name}");
        let codes: Vec<i8> = w.raw_data.iter().map(|&b| b as i8).collect();
        match &conv.weights {
            // The SAWB codes themselves (sign-flipped where the multiplier is negative).
            ConvWeights::W2(_) => assert!(codes.iter().all(|c| [-3, -1, 1, 3].contains(c)), "{name}"),
            ConvWeights::W8(_) => assert!(codes.iter().any(|c| c.abs() > 3), "{name}: 8-bit codes"),
        }
        let scales = init(&p, &format!("{name}.w_scale"));
        assert_eq!(scales.dims, vec![conv.c_conv() as i64], "{name}: per-channel scales");
    }
    let names: Vec<String> = serde_json::from_str(meta(&p, keys::LAYERS)).unwrap();
    assert_eq!(names, m.net().layers.iter().map(|l| l.name.clone()).collect::<Vec<_>>());
    let input: serde_json::Value = serde_json::from_str(meta(&p, keys::INPUT)).unwrap();
    assert_eq!((input["mean"].as_f64(), input["std"].as_f64(), input["scale"].as_f64()), (Some(0.0), Some(1.0), Some(1.0 / 255.0)));
    let unit: f64 = meta(&p, keys::LOGIT_SCALE).parse().unwrap();
    assert!((unit / logit_scale(&m) - 1.0).abs() < 1e-12 && unit > 0.0);
}

#[test]
fn qonnx_export_quantizes_to_two_bits() {
    let m = model();
    let p = decoded(&m, OnnxForm::Qonnx);
    assert!(p.opset_import.iter().any(|o| o.domain == "qonnx.custom_op.general"));
    let g = p.graph.as_ref().unwrap();
    let bits = |n: &nce::engine::onnx::proto::NodeProto| {
        let t = init(&p, &n.input[3]);
        f32::from_le_bytes(t.raw_data[..4].try_into().unwrap())
    };
    let quants: Vec<f32> = g.node.iter().filter(|n| n.op_type == "Quant").map(bits).collect();
    let w2 = m.steps.iter().filter(|s| matches!(s, Step::Conv { conv, .. } if matches!(conv.weights, ConvWeights::W2(_)))).count();
    let convs = m.steps.iter().filter(|s| matches!(s, Step::Conv { .. })).count();
    // 2-bit weights of every 2-bit conv and 2-bit activations after every conv.
    assert_eq!(quants.iter().filter(|&&b| b == 2.0).count(), w2 + convs);
    // 8-bit: the image, the first conv's and the classifier's weights.
    assert_eq!(quants.iter().filter(|&&b| b == 8.0).count(), 3);
    assert!(!g.node.iter().any(|n| n.op_type == "QuantizeLinear"));
}

#[test]
fn every_form_is_a_valid_protobuf_with_one_input_and_output() {
    let m = model();
    for form in [OnnxForm::Qdq, OnnxForm::QdqInt8, OnnxForm::Float, OnnxForm::Qonnx] {
        let p = to_model(&m, form).unwrap();
        let g = p.graph.as_ref().unwrap();
        assert_eq!((g.input.len(), g.output.len()), (1, 1), "{form:?}");
        assert_eq!(g.node.last().unwrap().output, vec!["logits".to_string()], "{form:?}");
        assert_eq!(meta(&p, keys::FORM), form.name());
        // Every node input is the graph input, an initializer or an earlier node's output.
        let mut known: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        known.insert("image");
        for n in &g.node {
            for i in &n.input {
                assert!(known.contains(i.as_str()), "{form:?}: {} reads {i} before it exists", n.name);
            }
            known.extend(n.output.iter().map(String::as_str));
        }
    }
}

/// ONNX Runtime through the backend seam against the CPU engine.
#[cfg(feature = "onnxruntime")]
#[test]
fn onnxruntime_computes_the_engines_logits() {
    let (m, n) = (model(), 300);
    let ds = test_images(n);
    let opts = BackendOptions { image_threads: 2, max_batch: Some(64), ..Default::default() };
    let ort = open(BackendKind::Onnxruntime, &opts).unwrap_or_else(|e| panic!("{e}"));
    let cpu = open(BackendKind::Cpu, &opts).unwrap();
    assert!(!ort.kind().bit_exact() && cpu.kind().bit_exact());
    let (a, b) = (ort.prepare(&m).unwrap(), cpu.prepare(&m).unwrap());
    let r = compare(&*a, &*b, &ds, ("onnxruntime", "cpu")).unwrap();
    // docs/onnx.md: float32 requantisation may move a value sitting on a rounding boundary;
    // on these images none does, and every logit is within one output step.
    assert_eq!(r.argmax_agree, n, "{r:?}");
    assert!(r.max_deviation <= 1 && r.images_within_one == n, "{r:?}");
}

/// The CLI: `nce validate --backend onnxruntime` passes and prints the largest logit difference.
#[cfg(all(feature = "onnxruntime", feature = "cli"))]
#[test]
fn validate_on_onnxruntime_reports_agreement() {
    let o = common::nce(&["validate", MODEL, "--backend", "onnxruntime", "--test-subset", "100", "--threads", "1"]);
    let t = common::text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("argmax agreement onnxruntime-qdq vs CPU engine: 100.00% (100/100)"), "{t}");
    assert!(t.contains("largest logit difference: 0 output quantization steps"), "{t}");
}

/// Runs `script` (in the venv scripts/setup makes) on `form` exported and `n` test images;
/// returns its JSON output and the engine's integer logits of the same images.
fn python_check(script: &str, form: OnnxForm, n: usize) -> (serde_json::Value, Vec<Vec<i32>>) {
    let venv = Path::new("third_party/onnx-venv/bin/python");
    assert!(venv.exists(), "{} missing: run scripts/setup (or scripts/setup-onnx-venv)", venv.display());
    let (m, ds) = (model(), test_images(n));
    let dir = tempfile::tempdir().unwrap();
    let (onnx, images) = (dir.path().join("m.onnx"), dir.path().join("images.u8"));
    std::fs::write(&onnx, to_bytes(&m, form).unwrap()).unwrap();
    std::fs::write(&images, &ds.images).unwrap();
    let s = ds.shape;
    let out = std::process::Command::new(venv)
        .arg(script)
        .args([onnx.as_os_str(), images.as_os_str()])
        .args([s.c, s.h, s.w].map(|v| v.to_string()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    let cpu = open(BackendKind::Cpu, &BackendOptions::default()).unwrap();
    let ours = cpu.prepare(&m).unwrap().run_batch(&ds.images).unwrap();
    (serde_json::from_slice(&out.stdout).unwrap(), ours)
}

/// The exported file in Python's stock ONNX Runtime, after `onnx.checker`.
#[test]
fn the_qdq_file_runs_in_python_onnxruntime() {
    let (v, ours) = python_check("scripts/onnx_check.py", OnnxForm::Qdq, 50);
    assert_eq!(v["opset"].as_i64(), Some(OPSET));
    let theirs: Vec<Vec<i32>> = serde_json::from_value(v["logits"].clone()).unwrap();
    assert_eq!(theirs, ours, "Python ONNX Runtime vs the engine");
}

/// The QONNX file in the `qonnx` package's executor (which evaluates `Quant` itself).
#[test]
fn the_qonnx_file_runs_in_the_qonnx_executor() {
    let (v, ours) = python_check("scripts/qonnx_check.py", OnnxForm::Qonnx, 8);
    let theirs: Vec<Vec<i32>> = serde_json::from_value(v).unwrap();
    assert_eq!(theirs, ours, "qonnx execute_onnx vs the engine");
}

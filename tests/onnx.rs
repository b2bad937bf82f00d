//! ONNX export (`nce::engine::onnx`) and the ONNX Runtime backend: the exported protobuf is
//! well-formed and carries what docs/onnx.md promises, ONNX Runtime computes the engine's
//! logits exactly on the committed ResNet-20 and on synthetic MobileNetV2s (depthwise convs,
//! `group` attribute), and the files run in Python's stock ONNX Runtime and qonnx too.

mod common;

#[cfg(feature = "onnxruntime")]
use nce::engine::compare;
use nce::engine::onnx::proto::{DataType, ModelProto, NodeProto, TensorProto};
use nce::engine::onnx::{keys, logit_scale, to_bytes, to_model, OnnxForm, OPSET};
use nce::engine::plan::{Header, QModel, Step};
use nce::engine::{open, BackendKind, BackendOptions, ConvWeights};
use nce::export::format::{Array, Container, Entry};
use nce::graph::{build, BitConfig, ModelKind, Op, Shape, WidthMult};
use prost::Message;
use std::path::Path;

const MODEL: &str = "examples/resnet20-w2a2-fashion.nce";

fn model() -> QModel {
    QModel::load(Path::new(MODEL)).unwrap()
}

/// A MobileNetV2 ×0.35 on `input` with random integer parameters (`common::random_arrays`).
fn mobilenet(input: Shape, seed: u64) -> QModel {
    QModel::from_container(&mobilenet_container(input, seed)).unwrap()
}

fn mobilenet_container(input: Shape, seed: u64) -> Container {
    let kind = ModelKind::Mobilenetv2(WidthMult::ONE).with_width_mult(0.35).unwrap();
    let net = build(kind, input, 10, None, &BitConfig::uniform(2)).unwrap();
    let mut arrays = common::random_arrays(&net, seed);
    // Multipliers that keep 2-bit codes spread over 0..3 through the depth (those of
    // `random_arrays` suit a few layers: here activations would fade to a constant).
    for l in net.layers.iter().filter(|l| l.wbits == 2) {
        let Op::Conv { k, groups, .. } = l.op else { continue };
        let gain = (64.0 / ((l.in_shape.c / groups * k * k) as f64).sqrt()).max(1.0);
        if let Some(Entry { data: Array::I32(m), .. }) = arrays.get_mut(&format!("{}.m", l.name)) {
            m.iter_mut().for_each(|v| *v = (f64::from(*v) * gain) as i32);
        }
    }
    let h = Header { kind: "nce-model".into(), net: net.clone(), profile: None, source: None, scales: Default::default() };
    Container { header: serde_json::to_string(&h).unwrap(), arrays }
}

/// `n` random images for `m`'s input.
fn random_images(m: &QModel, n: usize, seed: u64) -> Vec<u8> {
    let mut rng = common::Rng::new(seed);
    (0..n * m.net().input.numel()).map(|_| rng.below(256) as u8).collect()
}

fn int_attr(n: &NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
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
    // Integer convs, one integer clip per conv output, one quantizer for the image.
    assert_eq!((count("ConvInteger"), count("Conv")), (convs, 0));
    assert_eq!((count("Clip"), count("QuantizeLinear")), (convs, 1));
    for s in &m.steps {
        let Step::Conv { layer, conv, .. } = s else { continue };
        let name = &m.net().layers[*layer].name;
        let w = init(&p, &format!("{name}.w_codes"));
        assert_eq!(w.data_type, DataType::Int8 as i32, "{name}");
        let codes: Vec<i8> = w.raw_data.iter().map(|&b| b as i8).collect();
        match &conv.weights {
            // The SAWB codes themselves.
            ConvWeights::W2(_) => assert!(codes.iter().all(|c| [-3, -1, 1, 3].contains(c)), "{name}"),
            ConvWeights::W8(_) => assert!(codes.iter().any(|c| c.abs() > 3), "{name}: 8-bit codes"),
        }
        // The engine's codes, reordered (ky, kx, ci) → [ci][ky][kx] per channel.
        let (k, cin) = (conv.k, conv.c_in);
        let engine = conv.weights.codes_i32();
        let (o, ky, kx, ci) = (conv.c_conv() - 1, k - 1, 0, cin - 1);
        assert_eq!(i32::from(codes[((o * cin + ci) * k + ky) * k + kx]), engine[o * conv.k_len() + (ky * k + kx) * cin + ci], "{name}");
        let m_init = init(&p, &format!("{name}.m"));
        assert_eq!((m_init.data_type, m_init.dims.clone()), (DataType::Int64 as i32, vec![1, conv.c_conv() as i64, 1, 1]), "{name}");
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
    let (a, b) = (ort.prepare(&m).unwrap(), cpu.prepare(&m).unwrap());
    let r = compare(&*a, &*b, &ds, ("onnxruntime", "cpu")).unwrap();
    assert!(r.exact() && r.differing_logits == 0, "{r:?}");
}

/// The QDQ graph of `m` in ONNX Runtime against the CPU engine on `n` random images: every
/// integer logit equal. Returns the logits.
#[cfg(feature = "onnxruntime")]
fn ort_matches_cpu(m: &QModel, n: usize, seed: u64) -> Vec<Vec<i32>> {
    let opts = BackendOptions { image_threads: 2, ..Default::default() };
    let ort = open(BackendKind::Onnxruntime, &opts).unwrap_or_else(|e| panic!("{e}"));
    let cpu = open(BackendKind::Cpu, &opts).unwrap();
    let images = random_images(m, n, seed);
    let theirs = ort.prepare(m).unwrap().run_batch(&images).unwrap();
    let ours = cpu.prepare(m).unwrap().run_batch(&images).unwrap();
    assert_eq!(theirs, ours, "ONNX Runtime vs the CPU engine");
    ours
}

/// MobileNetV2 (depthwise 3×3 at stride 1 and 2, residual adds) bit-exact in ONNX Runtime.
#[cfg(feature = "onnxruntime")]
#[test]
fn onnxruntime_runs_a_mobilenetv2_exactly() {
    let m = mobilenet(Shape::new(1, 28, 28), 26);
    let logits = ort_matches_cpu(&m, 6, 1);
    // Random parameters that still tell images apart (the test could fail).
    assert!(logits.iter().any(|l| l != &logits[0]), "{logits:?}");
}

/// Odd input sizes (depthwise windows over odd maps, stride 2 from an odd size) and three
/// channels, several parameter draws.
#[cfg(feature = "onnxruntime")]
#[test]
fn onnxruntime_runs_depthwise_convs_at_odd_sizes_exactly() {
    for (seed, input) in [(3, Shape::new(3, 13, 13)), (4, Shape::new(1, 15, 11)), (5, Shape::new(2, 9, 9))] {
        let m = mobilenet(input, seed);
        ort_matches_cpu(&m, 3, seed);
    }
}

/// Every conv node carries `group`: the channel count on depthwise layers (weights
/// `[c, 1, k, k]`), 1 on dense ones, in every form.
#[test]
fn depthwise_convs_export_with_the_group_attribute() {
    let m = mobilenet(Shape::new(1, 28, 28), 7);
    for form in [OnnxForm::Qdq, OnnxForm::QdqInt8, OnnxForm::Float, OnnxForm::Qonnx] {
        let p = decoded(&m, form);
        let g = p.graph.as_ref().unwrap();
        let mut depthwise = 0;
        for s in &m.steps {
            let Step::Conv { layer, conv, .. } = s else { continue };
            let name = &m.net().layers[*layer].name;
            let node = g.node.iter().find(|n| n.name == format!("{name}.conv")).unwrap_or_else(|| panic!("{form:?}: no {name}.conv"));
            assert_eq!(int_attr(node, "group"), Some(conv.groups as i64), "{form:?} {name}");
            let w = g.initializer.iter().find(|t| t.name.starts_with(&format!("{name}.w")) && t.dims.len() == 4).unwrap();
            assert_eq!(w.dims, [conv.c_conv(), conv.c_in / conv.groups, conv.k, conv.k].map(|d| d as i64), "{form:?} {name}");
            if conv.is_depthwise() {
                assert!(name.ends_with(".dw") && conv.groups > 1, "{name}");
                depthwise += 1;
            }
        }
        // One depthwise conv per inverted residual block.
        assert_eq!(depthwise, m.net().layers.iter().filter(|l| l.name.ends_with(".dw")).count(), "{form:?}");
        assert!(depthwise >= 10, "{depthwise}");
    }
}

/// The CLI: `nce validate --backend onnxruntime` passes and prints the largest logit difference.
#[cfg(all(feature = "onnxruntime", feature = "cli"))]
#[test]
fn validate_on_onnxruntime_reports_agreement() {
    let o = common::nce(&["validate", MODEL, "--backend", "onnxruntime", "--test-subset", "100", "--threads", "1"]);
    let t = common::text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("argmax agreement onnxruntime-qdq vs CPU engine: 100.00% (100/100)"), "{t}");
    assert!(t.contains("logits: 0 of 1000 differ (0 images)"), "{t}");
}

/// The CLI on a MobileNetV2 `.nce` file (synthetic, 1×28×28, 10 classes, so Fashion-MNIST
/// feeds it): `nce validate --backend onnxruntime` finds every logit equal.
#[cfg(all(feature = "onnxruntime", feature = "cli"))]
#[test]
fn validate_on_onnxruntime_passes_on_a_mobilenetv2_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mobilenetv2.nce");
    std::fs::write(&path, nce::export::format::encode(&mobilenet_container(Shape::new(1, 28, 28), 31)).unwrap()).unwrap();
    let file = path.to_str().unwrap();
    let o =
        common::nce(&["validate", file, "--data", "fashion-mnist", "--backend", "onnxruntime", "--test-subset", "12", "--threads", "1"]);
    let t = common::text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("logits: 0 of 120 differ (0 images)"), "{t}");
}

/// Runs `script` (in the venv scripts/setup makes) on `m` exported as `form` and on `images`;
/// returns its JSON output and the engine's integer logits of the same images.
fn python_check(script: &str, m: &QModel, form: OnnxForm, images: &[u8]) -> (serde_json::Value, Vec<Vec<i32>>) {
    let venv = Path::new("third_party/onnx-venv/bin/python");
    assert!(venv.exists(), "{} missing: run scripts/setup (or scripts/setup-onnx-venv)", venv.display());
    let dir = tempfile::tempdir().unwrap();
    let (onnx, path) = (dir.path().join("m.onnx"), dir.path().join("images.u8"));
    std::fs::write(&onnx, to_bytes(m, form).unwrap()).unwrap();
    std::fs::write(&path, images).unwrap();
    let s = m.net().input;
    let out = std::process::Command::new(venv)
        .arg(script)
        .args([onnx.as_os_str(), path.as_os_str()])
        .args([s.c, s.h, s.w].map(|v| v.to_string()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    let cpu = open(BackendKind::Cpu, &BackendOptions::default()).unwrap();
    let ours = cpu.prepare(m).unwrap().run_batch(images).unwrap();
    (serde_json::from_slice(&out.stdout).unwrap(), ours)
}

/// The exported files (ResNet-20 on test images, a MobileNetV2 on random ones) in Python's
/// stock ONNX Runtime, after `onnx.checker`.
#[test]
fn the_qdq_file_runs_in_python_onnxruntime() {
    let mobilenet = mobilenet(Shape::new(1, 28, 28), 11);
    let images = random_images(&mobilenet, 4, 11);
    for (m, images) in [(model(), test_images(50).images), (mobilenet, images)] {
        let (v, ours) = python_check("scripts/onnx_check.py", &m, OnnxForm::Qdq, &images);
        assert_eq!(v["opset"].as_i64(), Some(OPSET));
        let theirs: Vec<Vec<i32>> = serde_json::from_value(v["logits"].clone()).unwrap();
        assert_eq!(theirs, ours, "{}: Python ONNX Runtime vs the engine", m.net().model);
    }
}

/// The QONNX files in the `qonnx` package's executor (which evaluates `Quant` itself).
#[test]
fn the_qonnx_file_runs_in_the_qonnx_executor() {
    let mobilenet = mobilenet(Shape::new(1, 28, 28), 12);
    let images = random_images(&mobilenet, 2, 12);
    for (m, images) in [(model(), test_images(8).images), (mobilenet, images)] {
        let (v, ours) = python_check("scripts/qonnx_check.py", &m, OnnxForm::Qonnx, &images);
        let theirs: Vec<Vec<i32>> = serde_json::from_value(v).unwrap();
        assert_eq!(theirs, ours, "{}: qonnx execute_onnx vs the engine", m.net().model);
    }
}

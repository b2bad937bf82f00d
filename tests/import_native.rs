//! `nce import` on ONNX models built in the test (no torch venv needed): the input
//! normalisation (a `Sub`/`Div` on the image, or `--mean/--std`) and projection shortcuts, in
//! full precision, in the quantized model, in the integer simulation and on every backend
//! (docs/import.md).
#![cfg(all(feature = "train", feature = "cli"))]

mod common;
#[path = "import/tiny.rs"]
mod tiny;

use nce::export::{convert, simulate};
use nce::graph::{BitConfig, Normalization};
use nce::import::{from_bytes, from_bytes_with, Import};
use nce::models::{Model, ModelOptions};
use prost::Message;
use std::path::Path;
use tch::{nn, Kind, Tensor};
use tiny::{node, tiny_bottleneck, tiny_resnet};

const MEAN: [f32; 3] = [0.45, 0.5, 0.55];
const STD: [f32; 3] = [0.25, 0.2, 0.3];

fn import(m: &nce::engine::onnx::proto::ModelProto, norm: Option<Normalization>) -> Result<Import, nce::import::ImportError> {
    from_bytes_with(Path::new("net.onnx"), &m.encode_to_vec(), "net", norm)
}

/// The import's network at `bits` with its FP32 weights (quantizer variables keep their
/// initial values).
fn model(imp: &Import, bits: &BitConfig) -> (nn::VarStore, Model, nce::graph::Network) {
    let net = nce::graph::build(imp.model, imp.net.input, imp.net.classes, None, bits).unwrap();
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let m = Model::new(&vs.root(), &net, &ModelOptions::default()).unwrap();
    let vars = vs.variables();
    tch::no_grad(|| {
        for v in &imp.vars {
            let t = Tensor::from_slice(&v.data).reshape(v.shape.as_slice());
            vars[&v.name].shallow_clone().copy_(&t);
        }
    });
    (vs, m, net)
}

/// Pixels (`u8`, `[n, 3, 32, 32]`) with some structure: a gradient plus noise.
fn pixels(n: i64) -> Tensor {
    let mut rng = common::Rng::new(3);
    let v: Vec<u8> = (0..n * 3 * 32 * 32).map(|i| ((i % 32) * 4 + rng.below(128) as i64).min(255) as u8).collect();
    Tensor::from_slice(&v).reshape([n, 3, 32, 32])
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let scale = f64::try_from(a.abs().max()).unwrap().max(1.0);
    f64::try_from((a - b).abs().max()).unwrap() / scale
}

#[test]
fn sub_and_div_on_the_image_are_the_normalisation() {
    let imp = import(&tiny_resnet(Some((&MEAN, &STD)), 3), None).unwrap();
    let n = imp.net.normalization().expect("normalisation recorded");
    assert_eq!(n.mean, MEAN.to_vec());
    for (s, e) in n.std.iter().zip(STD) {
        assert!((s - e).abs() < 1e-6, "{:?}", n.std);
    }
    // A scalar Mul by 1/std is the same normalisation.
    let mut m = tiny_resnet(Some((&MEAN, &STD)), 3);
    let g = m.graph.as_mut().unwrap();
    g.node[1] = node("norm.mul", "Mul", &["norm.k", "centred"], &["normalised"], vec![]);
    g.initializer.push(tiny::consts("norm.k", &[], |_| 4.0));
    let n = import(&m, None).unwrap().net.normalization().cloned().unwrap();
    assert_eq!((n.mean, n.std), (MEAN.to_vec(), vec![0.25; 3]));
    // The graph's normalisation and --mean/--std together are refused; so are a constant that
    // broadcasts over the width, and a Sub that is not on the image.
    let e = import(&tiny_resnet(Some((&MEAN, &STD)), 3), Some(Normalization { mean: vec![0.5], std: vec![0.5] })).unwrap_err();
    assert!(e.to_string().contains("normalises its input already"), "{e}");
    let mut m = tiny_resnet(Some((&MEAN, &STD)), 3);
    m.graph.as_mut().unwrap().initializer[0].dims = vec![3];
    let e = import(&m, None).unwrap_err().to_string();
    assert!(e.contains("node `norm.sub` (Sub)") && e.contains("per-channel"), "{e}");
    let mut m = tiny_resnet(None, 3);
    let g = m.graph.as_mut().unwrap();
    g.node.insert(2, node("late", "Sub", &["s.r", "fc.b"], &["s.r2"], vec![]));
    g.node.iter_mut().filter(|n| n.input.first().is_some_and(|i| i == "s.r")).skip(1).for_each(|n| n.input[0] = "s.r2".into());
    let e = import(&m, None).unwrap_err().to_string();
    assert!(e.contains("node `late` (Sub)") && e.contains("only as input normalisation"), "{e}");
    let e = import(&tiny_resnet(None, 3), Some(Normalization { mean: vec![0.5; 2], std: vec![0.5] })).unwrap_err();
    assert!(e.to_string().contains("2 mean values for 3 input channels"), "{e}");
}

/// ONNX Runtime's logits of `m` on `x` (`[n, 3, 32, 32]` floats).
#[cfg(feature = "onnxruntime")]
fn onnx_runtime(m: &nce::engine::onnx::proto::ModelProto, x: &Tensor) -> Tensor {
    let mut session = nce::engine::onnxruntime::session(&m.encode_to_vec(), 1).expect("ONNX Runtime (scripts/setup)");
    let n = x.size()[0] as usize;
    let logits =
        nce::engine::onnxruntime::run_session(&mut session, Vec::<f32>::try_from(&x.flatten(0, -1)).unwrap(), n, [3, 32, 32]).unwrap();
    Tensor::from_slice(&logits).view([n as i64, -1])
}

#[test]
fn normalised_imports_compute_the_graphs_function_in_full_precision() {
    let x = pixels(4).to_kind(Kind::Float) / 255.0;
    let mean = Tensor::from_slice(&MEAN).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&STD).view([1, 3, 1, 1]);
    let fp32 = BitConfig::full_precision();
    let logits = |imp: &Import, x: &Tensor| model(imp, &fp32).1.f_forward_t(x, false).unwrap();
    // The plain graph fed normalised images is the reference: ONNX Runtime's, where it is
    // installed, and nce's import of the plain graph (which equals it) in any case.
    let plain = from_bytes(Path::new("plain.onnx"), &tiny_resnet(None, 3).encode_to_vec(), "plain").unwrap();
    let reference = logits(&plain, &((&x - &mean) / &std));
    #[cfg(feature = "onnxruntime")]
    {
        let ort = onnx_runtime(&tiny_resnet(None, 3), &((&x - &mean) / &std));
        assert!(max_rel_diff(&ort, &reference) < 1e-5, "nce vs ONNX Runtime on the plain graph");
        let ort_graph = onnx_runtime(&tiny_resnet(Some((&MEAN, &STD)), 3), &x);
        assert!(max_rel_diff(&ort, &ort_graph) < 1e-5, "ONNX Runtime: the Sub/Div graph on images = the plain graph on normalised images");
    }
    let in_graph = import(&tiny_resnet(Some((&MEAN, &STD)), 3), None).unwrap();
    let given = import(&tiny_resnet(None, 3), Some(Normalization { mean: MEAN.to_vec(), std: STD.to_vec() })).unwrap();
    assert!(max_rel_diff(&reference, &logits(&plain, &x)) > 1e-2, "the normalisation matters on these images");
    assert!(max_rel_diff(&reference, &logits(&in_graph, &x)) < 1e-5);
    assert!(max_rel_diff(&reference, &logits(&given, &x)) < 1e-5);
}

/// How far the quantized model's logits on pixels `px` are from its integer form's and from the
/// FP32 network's (relative to the largest logit).
fn gaps(imp: &Import, quantized: (nn::VarStore, Model, &nce::graph::Network), px: &Tensor) -> (f64, f64) {
    let (vs, m, net) = quantized;
    let x = px.to_kind(Kind::Float) / 255.0;
    let float = m.f_forward_t(&x, false).unwrap();
    let fp32 = model(imp, &BitConfig::full_precision()).1.f_forward_t(&x, false).unwrap();
    let config = nce::train::TrainConfig::new(imp.model, "unused", 8, 0, ".".into());
    let loaded = nce::train::LoadedModel { vs, model: m, meta: nce::train::Meta::imported(config, net.clone()) };
    let layers = convert::int_layers(&loaded).unwrap();
    let sim = simulate::simulate(net, &layers, px).unwrap();
    let unit = layers.last().unwrap().scales.output.unwrap();
    let int_logits = sim.last().unwrap().as_ref().unwrap().to_kind(Kind::Double) * unit;
    (max_rel_diff(&float.to_kind(Kind::Double), &int_logits), max_rel_diff(&fp32, &float))
}

/// The quantized model (normalisation folded into the first conv, the projection shortcut in
/// signed 8-bit codes) computes what its integer form computes, up to rounding; at 8 bits the
/// quantized model is also close to the FP32 network.
#[test]
fn quantized_normalisation_and_projection_match_the_integer_form() {
    let imp = import(&tiny_resnet(Some((&MEAN, &STD)), 3), None).unwrap();
    let (vs, m, net) = model(&imp, &BitConfig::uniform(8));
    let down = net.layers.iter().position(|l| l.name == "block.conv2").unwrap();
    assert!(net.is_projection_shortcut(down), "of two convs meeting at the add, the earlier is the stored shortcut");
    let (to_int, to_fp32) = gaps(&imp, (vs, m, &net), &pixels(8));
    assert!(to_int < 0.02, "quantized model vs integer form: {to_int}");
    assert!(to_fp32 < 0.1, "8-bit model vs FP32 (the border differs: zero padding of the raw image): {to_fp32}");
}

/// Linear bottlenecks (docs/quantization.md, "Signed codes"): the projection read by a conv and
/// an add, and the add without ReLU, store signed 8-bit codes; at 8 bits everywhere the
/// quantized model computes what its integer form computes, up to rounding, and stays close to
/// the FP32 network (which a wrong zero point would not).
#[test]
fn quantized_linear_bottlenecks_match_the_integer_form() {
    let imp = import(&tiny_bottleneck(3), None).unwrap();
    let (vs, m, net) = model(&imp, &BitConfig::uniform(8));
    let signed: Vec<&str> = net.layers.iter().enumerate().filter(|&(i, _)| net.is_signed(i)).map(|(_, l)| l.name.as_str()).collect();
    assert_eq!(signed.len(), 2, "{signed:?}");
    assert!(signed[0].starts_with("b1.project") && signed[1].starts_with("b2.add"), "{signed:?}");
    let reads_8 = net.layers.iter().filter(|l| l.has_weights() && l.abits == 8 && l.inputs.iter().any(|&s| net.src_signed(s)));
    assert_eq!(reads_8.count(), 2, "the expansion and the last conv read signed 8-bit codes");
    let px = pixels(8);
    // Clips from the data, as `train --init` calibrates them (the initial ones are arbitrary).
    nce::train::calibrate_clips(&vs, &net, &(px.to_kind(Kind::Float) / 255.0)).unwrap();
    let (to_int, to_fp32) = gaps(&imp, (vs, m, &net), &px);
    assert!(to_int < 0.02, "quantized model vs integer form: {to_int}");
    assert!(to_fp32 < 0.1, "8-bit model vs FP32: {to_fp32}");
}

/// A class-per-folder dataset (`--data folder:`): `per` training and 2 test images of each of
/// three classes, each a noisy tint of its class's colour.
fn folder_dataset(root: &Path, per: usize) {
    let mut rng = common::Rng::new(9);
    let tints = [("red", [200u8, 40, 40]), ("green", [40, 200, 40]), ("blue", [40, 40, 200])];
    for (split, n) in [("train", per), ("test", 2)] {
        for (class, tint) in tints {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(32, 32, |_, _| image::Rgb(tint.map(|c| c.saturating_add(rng.below(56) as u8))));
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

/// The user's own network and images: an imported tiny ResNet with a projection shortcut and
/// `--mean/--std`, on `--data folder:`, through a 1-epoch W2A2 `train --init`, `export`,
/// `validate` against the integer simulation (cpu, cpu-scalar) and logit for logit against the
/// CPU engine on every other backend.
#[test]
fn folder_data_import_trains_exports_and_runs_on_every_backend() {
    use common::{nce, text};
    let tmp = tempfile::tempdir().unwrap();
    let p = |f: &str| tmp.path().join(f).to_string_lossy().into_owned();
    folder_dataset(&tmp.path().join("images"), 8);
    let data = format!("folder:{}", p("images"));
    std::fs::write(p("net.onnx"), tiny_resnet(None, 3).encode_to_vec()).unwrap();
    let import = ["import", &p("net.onnx"), "-o", &p("fp32.ot"), "--arch", &p("arch.toml"), "--data", &data];
    let out = nce(&[&import[..], &["--mean", "0.45,0.5,0.55", "--std", "0.25,0.2,0.3", "--calib-batch", "16"]].concat());
    assert!(out.status.success(), "import: {}", text(&out));
    assert!(text(&out).contains("1 folded BatchNorms calibrated"), "{}", text(&out));
    let train = ["train", "--arch", &p("arch.toml"), "--init", &p("fp32.ot"), "--data", &data, "--bits", "2", "--epochs", "1"];
    let out = nce(&[&train[..], &["--batch-size", "8", "--lr", "0.02", "--threads", "1", "--quiet", "-o", &p("w2a2")]].concat());
    assert!(out.status.success(), "train: {}", text(&out));
    let out = nce(&["export", &p("w2a2/checkpoint.ot"), "-o", &p("model.nce")]);
    assert!(out.status.success(), "export: {}", text(&out));
    for backend in ["cpu", "cpu-scalar", "cpu-swar"] {
        let out = nce(&["validate", &p("model.nce"), "--data", &data, "--backend", backend]);
        let t = text(&out);
        assert!(out.status.success() && t.contains("integer outputs: 0 of"), "validate --backend {backend}: {t}");
    }
    for backend in ["onnxruntime", "wgpu", "qemu-aarch64", "qemu-cortex-m7"] {
        let out = nce(&["validate", &p("model.nce"), "--data", &data, "--backend", backend]);
        let t = text(&out);
        eprintln!("{t}");
        assert!(out.status.success() && t.contains("logits: 0 of 18 differ"), "validate --backend {backend}: {t}");
    }
}

/// An imported network with linear bottlenecks through a 1-epoch W2A2 `train --init`,
/// `export` and `validate` on every backend: 0 differing values.
#[test]
fn linear_bottlenecks_train_export_and_run_on_every_backend() {
    use common::{nce, text};
    let tmp = tempfile::tempdir().unwrap();
    let p = |f: &str| tmp.path().join(f).to_string_lossy().into_owned();
    folder_dataset(&tmp.path().join("images"), 8);
    let data = format!("folder:{}", p("images"));
    std::fs::write(p("net.onnx"), tiny_bottleneck(3).encode_to_vec()).unwrap();
    let out = nce(&["import", &p("net.onnx"), "-o", &p("fp32.ot"), "--arch", &p("arch.toml"), "--data", &data, "--calib-batch", "16"]);
    assert!(out.status.success(), "import: {}", text(&out));
    let train = ["train", "--arch", &p("arch.toml"), "--init", &p("fp32.ot"), "--data", &data, "--bits", "2", "--epochs", "1"];
    let out = nce(&[&train[..], &["--batch-size", "8", "--lr", "0.02", "--threads", "1", "--quiet", "-o", &p("w2a2")]].concat());
    assert!(out.status.success(), "train: {}", text(&out));
    let out = nce(&["export", &p("w2a2/checkpoint.ot"), "-o", &p("model.nce")]);
    assert!(out.status.success(), "export: {}", text(&out));
    for backend in ["cpu", "cpu-scalar", "cpu-swar", "onnxruntime", "wgpu", "qemu-aarch64", "qemu-cortex-m7"] {
        let out = nce(&["validate", &p("model.nce"), "--data", &data, "--backend", backend]);
        let t = text(&out);
        assert!(
            out.status.success() && (t.contains("integer outputs: 0 of") || t.contains("logits: 0 of 18 differ")),
            "validate --backend {backend}: {t}"
        );
    }
}

/// The reader's message for `net` with random arrays (`QModel::from_container`).
fn refusal(net: &nce::graph::Network) -> String {
    use nce::engine::plan::{Header, QModel};
    let header = Header { kind: "nce-model".into(), net: net.clone(), profile: None, source: None, scales: Default::default() };
    let c = nce::export::format::Container { header: serde_json::to_string(&header).unwrap(), arrays: common::random_arrays(net, 1) };
    QModel::from_container(&c).expect_err("refused").to_string()
}

#[test]
fn unfoldable_signed_reads_and_late_downsample_convs_are_refused_by_name() {
    // The tiny CNN without its Relu: a conv without ReLU feeding a max pooling.
    let mut m = tiny::tiny();
    let g = m.graph.as_mut().unwrap();
    g.node[1] = node("relu", "Identity", &["c"], &["r"], vec![]);
    let imp = from_bytes(Path::new("linear.onnx"), &m.encode_to_vec(), "linear").unwrap();
    let net = nce::graph::build(imp.model, imp.net.input, imp.net.classes, None, &BitConfig::uniform(2)).unwrap();
    let e = refusal(&net);
    assert!(e.contains("pool: reads the signed codes of conv, which only convs without padding and residual adds can read"), "{e}");
    // nce's own ResNet-18 computes its downsample conv after the block's last conv.
    let net =
        nce::graph::build(nce::graph::ModelKind::Resnet18, nce::graph::Shape::new(3, 32, 32), 10, None, &BitConfig::uniform(2)).unwrap();
    let e = refusal(&net);
    assert!(e.contains("layer2.0.add: its shortcut layer2.0.downsample") && e.contains("ResNet-18/50"), "{e}");
}

/// The search's supernet applies the normalisation as the model does: at full precision, the
/// normalised import on images equals the plain import on normalised images (same seed, same
/// weights).
#[test]
fn the_supernet_normalises_the_image_too() {
    use nce::search::{
        space::SpaceConfig,
        supernet::{Mode, Supernet},
    };
    let fp32 = BitConfig::full_precision();
    let run = |imp: &Import, x: &Tensor| {
        let net = nce::graph::build(imp.model, imp.net.input, imp.net.classes, None, &fp32).unwrap();
        tch::manual_seed(5);
        Supernet::new(&net, &SpaceConfig::default(), 4.0).forward(x, false, Mode::Argmax, true)
    };
    let x = pixels(2).to_kind(Kind::Float) / 255.0;
    let (mean, std) = (Tensor::from_slice(&MEAN).view([1, 3, 1, 1]), Tensor::from_slice(&STD).view([1, 3, 1, 1]));
    let plain = from_bytes(Path::new("plain.onnx"), &tiny_resnet(None, 3).encode_to_vec(), "plain").unwrap();
    let normalised = import(&tiny_resnet(None, 3), Some(Normalization { mean: MEAN.to_vec(), std: STD.to_vec() })).unwrap();
    let reference = run(&plain, &((&x - &mean) / &std));
    assert!(max_rel_diff(&reference, &run(&plain, &x)) > 1e-3, "the normalisation matters");
    assert!(max_rel_diff(&reference, &run(&normalised, &x)) < 1e-5);
}

/// The search's supernet quantizes signed outputs (linear bottlenecks, adds without ReLU) as
/// the trained model does: each has a clip `<layer>.act.alpha`, and the clip changes the output.
#[test]
fn the_supernet_quantizes_linear_bottlenecks_too() {
    use nce::search::{
        space::SpaceConfig,
        supernet::{Mode, Supernet},
    };
    let imp = import(&tiny_bottleneck(3), None).unwrap();
    // 8 bits, so that the untrained supernet's small activations survive the ReLU clips.
    let net = nce::graph::build(imp.model, imp.net.input, imp.net.classes, None, &BitConfig::uniform(8)).unwrap();
    tch::manual_seed(5);
    let sn = Supernet::new(&net, &SpaceConfig::default(), 4.0);
    let vars = sn.vs.variables();
    let signed: Vec<String> =
        (0..net.layers.len()).filter(|&i| net.is_signed(i)).map(|i| format!("{}.act.alpha", net.layers[i].name)).collect();
    assert_eq!(signed.len(), 2);
    for name in &signed {
        assert!(vars.contains_key(name), "no clip {name}: {:?}", vars.keys().collect::<Vec<_>>());
    }
    let x = pixels(2).to_kind(Kind::Float) / 255.0;
    let before = sn.forward(&x, false, Mode::Argmax, true);
    tch::no_grad(|| {
        let _ = vars[&signed[1]].shallow_clone().fill_(0.01);
    });
    let after = sn.forward(&x, false, Mode::Argmax, true);
    assert!(max_rel_diff(&before, &after) > 1e-3, "the signed clip of the add does not act");
}

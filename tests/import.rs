//! `nce import` (docs/import.md) on networks PyTorch exports with `torch.onnx.export`
//! (tests/import/make_models.py, run once in the ONNX venv with torch; skipped with a note
//! where it is missing): FP32 logits equal ONNX Runtime's, and the briefly trained import goes
//! through `eval`, a W2A2 `train --init`, `export` and `validate`.
#![cfg(feature = "cli")]

mod common;

use common::{nce, text};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use tch::{Kind, Tensor};

const PYTHON: &str = "third_party/onnx-venv/bin/python";
const DATA: &str = "data/fashion-mnist";
/// Test images make_models.py writes and runs through ONNX Runtime.
const IMAGES: usize = 100;

/// The folder holding the exported models, made once per version of the script (kept under
/// the target folder); `None`, with a note, where the venv or the data is missing.
fn models() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let probe = Command::new(PYTHON).args(["-c", "import torch, onnxruntime, onnx"]).output();
        if !probe.is_ok_and(|o| o.status.success()) {
            eprintln!("note: import tests skipped: {PYTHON} lacks torch/onnxruntime (run scripts/setup-onnx-venv --torch)");
            return None;
        }
        if !Path::new(DATA).join("t10k-images-idx3-ubyte.gz").exists() {
            eprintln!("note: import tests skipped: {DATA} is missing (run scripts/setup)");
            return None;
        }
        let script = include_str!("import/make_models.py");
        let hash = script.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("import-models-{hash:016x}"));
        if !dir.join("done").exists() {
            let out = Command::new(PYTHON).arg("tests/import/make_models.py").arg(&dir).arg(DATA).output().expect("run make_models.py");
            assert!(out.status.success(), "make_models.py failed:\n{}", text(&out));
            std::fs::write(dir.join("done"), b"").expect("mark the export done");
        }
        Some(dir)
    })
    .as_deref()
}

fn floats(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn fp32_logits_equal_onnx_runtimes() {
    let Some(dir) = models() else { return };
    let tmp = tempfile::tempdir().expect("temp dir");
    let images = Tensor::from_slice(&floats(&dir.join("images.bin"))).reshape([IMAGES as i64, 1, 28, 28]);
    for name in ["plain", "resnet18", "mobilenetv2", "trained"] {
        let onnx = dir.join(format!("{name}.onnx"));
        let import = nce::import::read(&onnx, None).unwrap_or_else(|e| panic!("{e}"));
        let ck = tmp.path().join(format!("{name}.ot"));
        // Folded BatchNorms calibrated on the test images themselves: the function must not change.
        let meta = nce::import::CheckpointMeta { data: "fashion-mnist", data_root: Path::new("data"), calibration: Some(&images) };
        nce::import::write_checkpoint(&import, &ck, &onnx, &meta).unwrap_or_else(|e| panic!("{e}"));
        let m = nce::train::load_model(&ck).unwrap_or_else(|e| panic!("{e}"));
        let ours = tch::no_grad(|| m.model.f_forward_t(&images, false)).expect("forward").to_kind(Kind::Float);
        let ours = Vec::<f32>::try_from(ours.flatten(0, -1)).expect("logits");
        let ort = floats(&dir.join(format!("{name}.ort.bin")));
        assert_eq!(ours.len(), ort.len(), "{name}: logit count");
        let mut worst = 0.0f32;
        for (a, b) in ours.chunks(10).zip(ort.chunks(10)) {
            let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            for (x, y) in a.iter().zip(b) {
                worst = worst.max((x - y).abs() / scale);
            }
        }
        let spread = ort.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(spread > 1e-2, "{name}: ONNX Runtime's logits are all about 0 ({spread}): the check would be empty");
        assert!(worst <= 1e-4, "{name}: logits differ from ONNX Runtime's by {worst} relative (max |logit| {spread})");
        eprintln!("{name}: {} layers, largest relative logit difference {worst:.2e}", import.net.layers.len());
    }
}

#[test]
fn the_trained_import_evaluates_trains_exports_and_validates() {
    let Some(dir) = models() else { return };
    let tmp = tempfile::tempdir().expect("temp dir");
    let p = |f: &str| tmp.path().join(f).to_string_lossy().into_owned();
    let onnx = dir.join("trained.onnx").to_string_lossy().into_owned();
    let out = nce(&["import", &onnx, "-o", &p("fp32.ot"), "--arch", &p("arch.toml")]);
    assert!(out.status.success(), "import: {}", text(&out));

    let torch: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("trained.json")).expect("trained.json")).expect("json");
    let n = torch["test_images"].as_u64().expect("images").to_string();
    let out = nce(&["eval", &p("fp32.ot"), "--test-subset", &n, "--json"]);
    assert!(out.status.success(), "eval: {}", text(&out));
    let ours: serde_json::Value = serde_json::from_slice(&out.stdout).expect("eval json");
    let (a, b) = (ours["accuracy"].as_f64().expect("accuracy"), torch["accuracy"].as_f64().expect("accuracy"));
    assert!((a - b).abs() <= 0.001, "nce eval {a} vs PyTorch {b}: more than 0.1 points apart");

    let train = "train --arch ARCH --init INIT --bits 2 --epochs 1 --train-subset 1000 --test-subset 100 --batch-size 50 --lr 0.02 --threads 1 --quiet -o OUT";
    let args: Vec<String> =
        train.split(' ').map(|a| a.replace("ARCH", &p("arch.toml")).replace("INIT", &p("fp32.ot")).replace("OUT", &p("w2a2"))).collect();
    let out = nce(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "train: {}", text(&out));
    let out = nce(&["export", &p("w2a2/checkpoint.ot"), "-o", &p("model.nce")]);
    assert!(out.status.success(), "export: {}", text(&out));
    let out = nce(&["validate", &p("model.nce"), "--backend", "cpu", "--test-subset", "100"]);
    let t = text(&out);
    assert!(out.status.success(), "validate: {t}");
    assert!(t.contains("integer outputs: 0 of"), "validate found differing values: {t}");
    assert!(t.contains("onnx:trained@"), "the exported model does not name the import: {t}");
}

/// PyTorch's ResNet-18 (1×1 projection shortcuts, docs/import.md "Projection shortcuts"): a
/// short W2A2 training from the import exports and runs bit-exactly on the CPU engine.
#[test]
fn the_imported_resnet18_with_projection_shortcuts_exports_and_validates() {
    let Some(dir) = models() else { return };
    let tmp = tempfile::tempdir().expect("temp dir");
    let p = |f: &str| tmp.path().join(f).to_string_lossy().into_owned();
    let onnx = dir.join("resnet18.onnx").to_string_lossy().into_owned();
    let out = nce(&["import", &onnx, "-o", &p("fp32.ot"), "--arch", &p("arch.toml"), "--calib-batch", "64"]);
    assert!(out.status.success(), "import: {}", text(&out));
    let train = "train --arch ARCH --init INIT --bits 2 --epochs 1 --train-subset 128 --test-subset 32 --batch-size 32 --lr 0.02 --threads 2 --quiet -o OUT";
    let args: Vec<String> =
        train.split(' ').map(|a| a.replace("ARCH", &p("arch.toml")).replace("INIT", &p("fp32.ot")).replace("OUT", &p("w2a2"))).collect();
    let out = nce(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "train: {}", text(&out));
    let out = nce(&["export", &p("w2a2/checkpoint.ot"), "-o", &p("r18.nce")]);
    assert!(out.status.success(), "export: {}", text(&out));
    let out = nce(&["validate", &p("r18.nce"), "--backend", "cpu", "--test-subset", "8", "--threads", "2"]);
    let t = text(&out);
    assert!(out.status.success(), "validate: {t}");
    assert!(t.contains("integer outputs: 0 of"), "validate found differing values: {t}");
}

/// A MobileNetV2 with linear bottlenecks (docs/quantization.md, "Signed codes"): the
/// projections and the adds without ReLU store signed 8-bit codes, the 1×1 convs reading them
/// fold the zero point into their bias; a short W2A2 training from the import exports and runs
/// bit-exactly on every backend this machine has.
#[test]
fn the_imported_mobilenetv2_with_linear_bottlenecks_exports_and_runs_on_every_backend() {
    let Some(dir) = models() else { return };
    let tmp = tempfile::tempdir().expect("temp dir");
    let p = |f: &str| tmp.path().join(f).to_string_lossy().into_owned();
    let onnx = dir.join("mobilenetv2.onnx").to_string_lossy().into_owned();
    let out = nce(&["import", &onnx, "-o", &p("fp32.ot"), "--arch", &p("arch.toml"), "--calib-batch", "64"]);
    assert!(out.status.success(), "import: {}", text(&out));
    let out = nce(&["cost", "--arch", &p("arch.toml"), "--bits", "2", "--profile", "nce-flops-params"]);
    let t = text(&out);
    assert!(out.status.success(), "cost: {t}");
    // The 1×1 expansion reading the first block's linear projection reads 8-bit signed codes.
    assert!(t.lines().any(|l| l.contains("2/8")), "no conv reads a linear bottleneck at 8 bits: {t}");
    let train = "train --arch ARCH --init INIT --bits 2 --epochs 1 --train-subset 128 --test-subset 32 --batch-size 32 --lr 0.02 --threads 2 --quiet -o OUT";
    let args: Vec<String> =
        train.split(' ').map(|a| a.replace("ARCH", &p("arch.toml")).replace("INIT", &p("fp32.ot")).replace("OUT", &p("w2a2"))).collect();
    let out = nce(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "train: {}", text(&out));
    let out = nce(&["export", &p("w2a2/checkpoint.ot"), "-o", &p("mv2.nce")]);
    assert!(out.status.success(), "export: {}", text(&out));
    for backend in nce::engine::BackendKind::ALL {
        if backend.cpu_isa().is_some_and(|isa| !isa.is_available()) {
            eprintln!("note: {backend} skipped: this CPU lacks it");
            continue;
        }
        let out = nce(&["validate", &p("mv2.nce"), "--backend", backend.name(), "--test-subset", "4", "--threads", "2"]);
        let t = text(&out);
        assert!(out.status.success(), "validate --backend {backend}: {t}");
        assert!(t.contains(" 0 of "), "{backend} found differing values: {t}");
    }
}

#[test]
fn cost_lists_the_imported_resnet18s_slots_by_onnx_name() {
    let Some(dir) = models() else { return };
    let tmp = tempfile::tempdir().expect("temp dir");
    let arch = tmp.path().join("arch.toml").to_string_lossy().into_owned();
    let onnx = dir.join("resnet18.onnx").to_string_lossy().into_owned();
    let out = nce(&["import", &onnx, "-o", &tmp.path().join("r18.ot").to_string_lossy(), "--arch", &arch, "--no-calibration"]);
    assert!(out.status.success(), "import: {}", text(&out));
    let out = nce(&["cost", "--arch", &arch, "--profile", "nce-flops-params"]);
    let t = text(&out);
    assert!(out.status.success(), "cost: {t}");
    // The stem and the second conv of each stage-1 block meet at the adds: one slot; each
    // later stage's downsample and second convs share another; the first convs have their own.
    let slots: Vec<&str> = t.lines().filter(|l| l.trim_start().starts_with("slot ")).collect();
    assert_eq!(slots.len(), 12, "{t}");
    assert!(slots[0].ends_with("64: /stem/stem.0/Conv, /layers/layers.0/conv2/conv2.0/Conv, /layers/layers.1/conv2/conv2.0/Conv"), "{t}");
    assert!(slots[9].contains("512: /layers/layers.6/down/down.0/Conv, /layers/layers.6/conv2/conv2.0/Conv"), "{t}");
}

#[test]
fn search_expands_an_import_and_its_architecture_trains() {
    let Some(dir) = models() else { return };
    let tmp = tempfile::tempdir().expect("temp dir");
    let p = |f: &str| tmp.path().join(f).to_string_lossy().into_owned();
    let onnx = dir.join("trained.onnx").to_string_lossy().into_owned();
    let out = nce(&["import", &onnx, "-o", &p("fp32.ot"), "--arch", &p("arch.toml")]);
    assert!(out.status.success(), "import: {}", text(&out));
    // A threshold just above the uniform 1/3, so that two epochs suffice to expand a slot.
    let search = "search --init INIT --arch ARCH --profile nce-flops-params --epochs 2 --warmup-epochs 1 --threshold 0.338 --lambda 0.1 \
                  --train-subset 1000 --test-subset 100 --val-subset 100 --batch-size 50 --threads 1 --quiet -o OUT";
    let args: Vec<String> = search
        .split_whitespace()
        .map(|a| a.replace("INIT", &p("fp32.ot")).replace("ARCH", &p("arch.toml")).replace("OUT", &p("search")))
        .collect();
    let out = nce(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let t = text(&out);
    assert!(out.status.success(), "search: {t}");
    assert!(t.contains("/features/features.1/features.1.0/Conv"), "slots are not named after the ONNX nodes: {t}");
    let arch = nce::graph::ArchFile::load(&tmp.path().join("search/arch.toml")).expect("searched arch");
    assert!(matches!(arch.model, nce::graph::ModelKind::Imported(_)), "the searched architecture lost the imported graph");
    assert!(!arch.expansions.is_empty(), "no slot expanded: {t}");
    let out = nce(&[
        "train",
        "--arch",
        &p("search/arch.toml"),
        "--init",
        &p("search/search-checkpoint.ot"),
        "--bits",
        "2",
        "--epochs",
        "1",
        "--train-subset",
        "200",
        "--test-subset",
        "50",
        "--batch-size",
        "50",
        "--threads",
        "1",
        "--quiet",
        "-o",
        &p("w2a2"),
    ]);
    assert!(out.status.success(), "train on the searched widths: {}", text(&out));
}

//! Hostile ONNX files (docs/import.md, "Refusals"): every case makes `nce import` exit 1 with
//! one line naming the file and, where there is one, the node (or initialiser) at fault.
#![cfg(feature = "cli")]

mod common;
#[path = "import/tiny.rs"]
mod tiny;

use common::{nce, text};
use nce::engine::onnx::proto::{AttributeProto, ModelProto, StringStringEntryProto};
use prost::Message;
use tiny::{ints, node, tiny};

type Edit = fn(&mut ModelProto);

fn graph(m: &mut ModelProto) -> &mut nce::engine::onnx::proto::GraphProto {
    m.graph.as_mut().expect("graph")
}

/// `(case, edit of the tiny model, what the message must contain besides the file name)`.
fn cases() -> Vec<(&'static str, Edit, &'static [&'static str])> {
    vec![
        ("cyclic", |m| graph(m).node[0].input[0] = "f".into(), &["cycle", "node `"]),
        ("unsupported-op", |m| graph(m).node[1].op_type = "Sigmoid".into(), &["node `relu` (Sigmoid)", "not supported"]),
        (
            "wrong-initialiser-size",
            |m| graph(m).initializer[0].raw_data.truncate(20),
            &["initialiser `conv.w`", "holds 5 values", "needs 36"],
        ),
        (
            "external-data",
            |m| {
                let t = &mut graph(m).initializer[2];
                t.raw_data.clear();
                t.data_location = 1;
                t.external_data = vec![StringStringEntryProto { key: "location".into(), value: "weights.bin".into() }];
            },
            &["initialiser `fc.w`", "external file"],
        ),
        ("huge-initialiser", |m| graph(m).initializer[0].dims = vec![1 << 20, 1 << 20, 3, 3], &["initialiser `conv.w`", "more than"]),
        (
            "huge-input",
            |m| graph(m).input[0] = tiny::value("image", &[None, Some(1), Some(1 << 40), Some(8)]),
            &["input `image`", "height", "maximum"],
        ),
        ("opset-7", |m| m.opset_import[0].version = 7, &["opset 7", "13 and later"]),
        ("dilations", |m| graph(m).node[0].attribute.push(ints("dilations", &[2, 2])), &["node `conv` (Conv)", "dilations"]),
        ("asymmetric-pads", |m| graph(m).node[0].attribute[1] = ints("pads", &[1, 1, 0, 0]), &["node `conv` (Conv)", "pads [1, 1, 0, 0]"]),
        (
            "auto-pad",
            |m| {
                graph(m).node[0].attribute.push(AttributeProto {
                    name: "auto_pad".into(),
                    s: b"SAME_UPPER".to_vec(),
                    r#type: 3,
                    ..Default::default()
                })
            },
            &["node `conv` (Conv)", "auto_pad=SAME_UPPER"],
        ),
        ("dynamic-shape", |m| graph(m).input[0] = tiny::value("image", &[None, Some(1), None, Some(8)]), &["input `image`", "dynamic"]),
        (
            "grouped-conv",
            |m| graph(m).node[0].attribute.push(AttributeProto { name: "group".into(), i: 2, r#type: 2, ..Default::default() }),
            &["node `conv` (Conv)", "group=2"],
        ),
        (
            "relu-after-pool",
            |m| {
                let g = graph(m);
                g.node[1] = node("relu", "Identity", &["c"], &["r"], vec![]);
                g.node[3] = node("gap", "Relu", &["p"], &["g"], vec![]);
            },
            &["node `gap` (Relu)", "must directly follow"],
        ),
        ("missing-input", |m| graph(m).node[2].input[0] = "nowhere".into(), &["node `pool` (MaxPool)", "`nowhere`"]),
        (
            "no-classifier",
            |m| {
                let g = graph(m);
                g.node.truncate(5);
                g.output[0].name = "f".into();
            },
            &["no classifier"],
        ),
        ("foreign-domain", |m| graph(m).node[1].domain = "com.microsoft".into(), &["node `relu` (com.microsoft:Relu)"]),
        (
            "sub-after-a-layer",
            |m| {
                let g = graph(m);
                g.node[2].input[0] = "r2".into();
                g.node.insert(2, node("late", "Sub", &["r", "fc.b"], &["r2"], vec![]));
            },
            &["node `late` (Sub)", "only as input normalisation"],
        ),
        (
            "normalisation-dividing-by-zero",
            |m| {
                let g = graph(m);
                g.node[0].input[0] = "x".into();
                g.node.insert(0, node("norm", "Div", &["image", "zero"], &["x"], vec![]));
                g.initializer.push(tiny::consts("zero", &[1], |_| 0.0));
            },
            &["node `norm` (Div)", "degenerate"],
        ),
    ]
}

fn import(dir: &std::path::Path, name: &str, bytes: &[u8]) -> (std::process::Output, String) {
    let path = dir.join(format!("{name}.onnx"));
    std::fs::write(&path, bytes).expect("write case");
    let p = path.to_string_lossy().into_owned();
    (nce(&["import", &p, "-o", &dir.join(format!("{name}.ot")).to_string_lossy()]), p)
}

#[test]
fn the_tiny_model_imports() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out, _) = import(dir.path(), "tiny", &tiny().encode_to_vec());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("onnx:tiny@"), "{}", text(&out));
}

#[test]
fn every_hostile_file_exits_1_naming_the_file_and_the_culprit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let valid = tiny().encode_to_vec();
    let mut corpus: Vec<(String, Vec<u8>, Vec<&str>)> = vec![
        ("truncated".into(), valid[..valid.len() / 2].to_vec(), vec!["not a readable ONNX model"]),
        ("empty".into(), vec![], vec!["no opset of the default ONNX domain"]),
        ("text".into(), b"this is not a model\n".to_vec(), vec!["not a readable ONNX model"]),
    ];
    // A bit flip in the first key (field 7, `graph`, becomes an invalid wire type).
    let mut flipped = valid.clone();
    let at = flipped.iter().position(|&b| b == 0x3a).expect("the graph field's key");
    flipped[at] ^= 0x07;
    corpus.push(("bit-flipped".into(), flipped, vec!["not a readable ONNX model"]));
    for (name, edit, want) in cases() {
        let mut m = tiny();
        edit(&mut m);
        corpus.push((name.into(), m.encode_to_vec(), want.to_vec()));
    }
    let mut failures = Vec::new();
    for (name, bytes, want) in &corpus {
        let (out, path) = import(dir.path(), name, bytes);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_default().to_string();
        let ok = out.status.code() == Some(1) && line.contains(&path) && want.iter().all(|w| line.contains(w)) && !err.contains("panicked");
        if !ok {
            failures.push(format!("{name}: exit {:?}, expected {want:?} in: {}", out.status.code(), text(&out)));
        }
        assert!(!dir.path().join(format!("{name}.ot")).exists(), "{name}: a checkpoint was written");
    }
    assert!(failures.is_empty(), "{} of {} cases:\n{}", failures.len(), corpus.len(), failures.join("\n"));
}

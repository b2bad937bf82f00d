//! `nce allocate` (src/allocate.rs) on ResNet-20 and MobileNetV2 with synthetic sensitivity
//! tables: in budget and near it, channels moved toward the sensitive slots, a loadable
//! `arch.toml`, and clear errors for bad tables.
#![cfg(feature = "cli")]

mod common;

use common::{nce, text};
use nce::allocate::{allocate, AllocateConfig};
use nce::graph::{build, ArchFile, BitConfig, ModelKind, Shape};
use nce::sensitivity::{table, LayerSensitivity};
use std::path::{Path, PathBuf};

fn row(layer: &str, gain: f64) -> LayerSensitivity {
    LayerSensitivity {
        layer: layer.into(),
        one_on_acc: f64::NAN,
        one_off_acc: f64::NAN,
        one_on_drop: f64::NAN,
        one_off_gain: gain,
        fit: 1.0,
    }
}

/// A table for every 2-bit conv of `model` on 1×28×28: `hot` layers score 1, the rest 0.05.
fn table_for(dir: &Path, model: ModelKind, hot: &[&str]) -> PathBuf {
    let net = build(model, Shape::new(1, 28, 28), 10, None, &BitConfig::uniform(2)).unwrap();
    let rows: Vec<_> = net
        .layers
        .iter()
        .filter(|l| l.wbits == 2 && l.name != "fc")
        .map(|l| row(&l.name, if hot.contains(&l.name.as_str()) { 1.0 } else { 0.05 }))
        .collect();
    let path = dir.join(format!("{model}.csv"));
    table::write(&path, &rows, f64::NAN, 90.0).unwrap();
    path
}

#[test]
fn resnet20_at_three_quarters_lands_in_budget_and_widens_the_sensitive_slot() {
    let dir = tempfile::tempdir().unwrap();
    let csv = table_for(dir.path(), ModelKind::Resnet20, &["layer3.2.conv_b"]);
    let profile = PathBuf::from("hw-profiles/nce-flops-params-0.75x.toml");
    let cfg = AllocateConfig::new(ModelKind::Resnet20, Shape::new(1, 28, 28), 10, profile, csv.clone());
    let a = allocate(&cfg).unwrap();
    assert!(a.arch.budgets.iter().all(|b| b.pass), "{:?}", a.arch.budgets);
    assert!((0.97..=1.0).contains(&a.utilisation), "binding budget at {}", a.utilisation);
    let hot = a.arch.layers.iter().position(|l| l.name == "layer3.2.conv_b").unwrap();
    assert!(a.arch.widths[hot] > a.start[hot], "the sensitive slot grows: {:?} from {:?}", a.arch.widths, a.start);
    // The base does not fit 0.75x: the start is the scaled baseline (14/27/55 at factor ~0.86).
    assert!(a.start.iter().zip(&a.arch.base_widths).all(|(s, b)| s < b), "{:?}", a.start);
    assert_eq!(a.arch.layers[0].width, a.start[0], "the unmeasured 8-bit stem keeps its width");
    assert!(a.predicted_gain > 0.0);

    // The command writes the same architecture; `nce cost --arch` reads it and it passes.
    let out = dir.path().join("arch.toml");
    let o = nce(&[
        "allocate",
        "--sensitivity",
        csv.to_str().unwrap(),
        "--profile",
        "hw-profiles/nce-flops-params-0.75x.toml",
        "--model",
        "resnet20",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let arch = ArchFile::load(&out).unwrap();
    assert_eq!(arch.widths, a.arch.widths);
    assert!(arch.derivation.starts_with("allocator"), "{}", arch.derivation);
    let cost = nce(&["cost", "--arch", out.to_str().unwrap(), "--profile", "hw-profiles/nce-flops-params-0.75x.toml", "--strict"]);
    assert!(cost.status.success(), "{}", text(&cost));
}

/// MobileNetV2: a depthwise conv has no slot; its score counts for the expansion conv whose
/// channels it has, so a sensitive depthwise layer widens its block's expansion slot.
#[test]
fn mobilenetv2_depthwise_sensitivity_widens_its_expansion_slot() {
    let dir = tempfile::tempdir().unwrap();
    let model: ModelKind = "mobilenetv2x0.35".parse().unwrap();
    let csv = table_for(dir.path(), model, &["stage4.0.dw"]);
    let cfg = AllocateConfig::new(model, Shape::new(1, 28, 28), 10, "hw-profiles/nce-flops-params.toml".into(), csv);
    let a = allocate(&cfg).unwrap();
    assert!(a.arch.budgets.iter().all(|b| b.pass));
    assert!((0.97..=1.0).contains(&a.utilisation), "{}", a.utilisation);
    let slot = a.arch.layers.iter().position(|l| l.name == "stage4.0.expand").unwrap();
    assert_eq!(a.start, a.arch.base_widths, "the base fits 1.0x");
    assert!(a.arch.widths[slot] > a.start[slot], "{} -> {}", a.start[slot], a.arch.widths[slot]);
}

#[test]
fn bad_tables_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let run = |csv: &Path| {
        nce(&[
            "allocate",
            "--sensitivity",
            csv.to_str().unwrap(),
            "--profile",
            "hw-profiles/nce-flops-params.toml",
            "--model",
            "resnet20",
            "-o",
            dir.path().join("a.toml").to_str().unwrap(),
        ])
    };
    let garbage = dir.path().join("garbage.csv");
    std::fs::write(&garbage, "layer,one_on_drop,one_off_gain\nlayer1.0.conv_a,x,y\n").unwrap();
    let other = dir.path().join("other-model.csv");
    table::write(&other, &[row("stage1.0.dw", 1.0)], f64::NAN, 1.0).unwrap();
    for (csv, says) in [(&garbage, "garbage.csv"), (&other, "no layer of resnet20"), (&dir.path().join("missing.csv"), "missing.csv")] {
        let o = run(csv);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains(says), "{}", text(&o));
        assert!(!text(&o).contains("panicked"), "{}", text(&o));
    }
    assert!(!dir.path().join("a.toml").exists(), "nothing written on error");
}

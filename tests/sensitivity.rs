//! `nce::sensitivity` on a tiny FP32 ResNet-20 trained in the test: one CSV row per
//! quantizable layer, finite values, the chart written; clear errors for wrong inputs.
#![cfg(feature = "train")]

use nce::graph::ModelKind;
use nce::sensitivity::{self, SensitivityConfig, SensitivityError};
use nce::train::{self, TrainConfig};
use std::path::PathBuf;

fn tiny_fp32(dir: &std::path::Path) -> PathBuf {
    let mut c = TrainConfig::new(ModelKind::Resnet20, "fashion-mnist", 32, 1, dir.to_path_buf());
    c.train_subset = Some(512);
    c.test_subset = Some(200);
    c.batch_size = 64;
    c.threads = 1;
    train::train(&c, false, false).unwrap().checkpoint
}

#[test]
fn resnet20_one_on_and_one_off() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = tiny_fp32(&dir.path().join("fp32"));
    let mut cfg = SensitivityConfig::new(ckpt.clone(), dir.path().join("sens"));
    cfg.val_images = 50;
    cfg.fisher_batches = 1;
    cfg.calib_batch = 32;
    cfg.threads = 1;
    let r = sensitivity::run(&cfg, false).unwrap();

    let loaded = train::load_model(&ckpt).unwrap();
    let layers = sensitivity::quantizable_layers(&loaded.meta.net).unwrap();
    assert_eq!(layers.len(), 18, "ResNet-20 has 18 quantizable convs (19 minus the first)");
    assert!(!layers.contains(&"conv1".to_string()) && !layers.iter().any(|l| l == "fc"));
    assert_eq!(r.layers.iter().map(|l| l.layer.clone()).collect::<Vec<_>>(), layers);
    assert_eq!(r.val_images, 50);

    let csv = std::fs::read_to_string(dir.path().join("sens/sensitivity.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("layer,one_on_acc,one_off_acc,one_on_drop,one_off_gain,fit,fp32_acc,w2a2_acc"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 18);
    for (row, name) in rows.iter().zip(&layers) {
        assert_eq!(row.len(), 8);
        assert_eq!(row[0], name);
        for v in &row[1..] {
            let x: f64 = v.parse().unwrap();
            assert!(x.is_finite() && x.abs() <= 100.0, "{name}: {v}");
        }
        assert!(row[5].parse::<f64>().unwrap() > 0.0, "{name}: FIT is a positive noise energy");
    }
    // The table reads back as written (what `nce allocate` and the search consume).
    let back = nce::sensitivity::table::read(&dir.path().join("sens/sensitivity.csv")).unwrap();
    assert_eq!(back.len(), 18);
    for (a, b) in back.iter().zip(&r.layers) {
        assert_eq!(a.layer, b.layer);
        assert!((a.one_off_gain - b.one_off_gain).abs() < 1e-4 && (a.fit / b.fit - 1.0).abs() < 1e-5);
    }
    for l in &r.layers {
        assert!((0.0..=100.0).contains(&l.one_on_acc) && (0.0..=100.0).contains(&l.one_off_acc));
        assert!((r.fp32_acc - l.one_on_acc - l.one_on_drop).abs() < 1e-9);
    }
    for ext in ["svg", "png"] {
        assert!(dir.path().join(format!("sens/sensitivity.{ext}")).is_file());
    }
    assert_eq!(r.plots.len(), 2);

    // A quantized checkpoint other than the default W2A2 (here W4A4) is refused, naming it.
    let mut q = TrainConfig::new(ModelKind::Resnet20, "fashion-mnist", 4, 1, dir.path().join("w4"));
    q.train_subset = Some(64);
    q.test_subset = Some(20);
    q.batch_size = 64;
    q.threads = 1;
    let qckpt = train::train(&q, false, false).unwrap().checkpoint;
    let err = sensitivity::run(&SensitivityConfig { checkpoint: qckpt.clone(), ..cfg.clone() }, false).unwrap_err();
    assert!(matches!(err, SensitivityError::Checkpoint { .. }), "{err:?}");
    assert!(err.to_string().contains(&qckpt.display().to_string()) && err.to_string().contains("--bits 32"), "{err}");
}

#[test]
fn missing_checkpoint_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SensitivityConfig::new(dir.path().join("nope.ot"), dir.path().join("out"));
    let err = sensitivity::run(&cfg, false).unwrap_err();
    assert!(err.to_string().contains("nope.ot"), "{err}");
}

/// A trained W2A2 checkpoint: one-off only, with the checkpoint's own weights and clips — the
/// all-W2A2 accuracy is the checkpoint's own test accuracy (not a near-chance untrained one).
#[test]
fn trained_w2a2_checkpoint_gives_calibrated_one_off() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = PathBuf::from("examples/resnet20-w2a2-fashion.ot");
    let mut cfg = SensitivityConfig::new(ckpt.clone(), dir.path().join("sens"));
    cfg.val_images = 100;
    cfg.fisher_batches = 0;
    cfg.threads = 1;
    let r = sensitivity::run(&cfg, false).unwrap();
    assert_eq!(r.layers.len(), 18);
    assert!(r.layers.iter().all(|l| l.fit.is_nan()), "fisher_batches = 0 skips FIT");
    assert!(r.fp32_acc.is_nan());
    assert!(r.layers.iter().all(|l| l.one_on_acc.is_nan() && l.one_off_acc.is_finite()));
    // The W2A2 accuracy is the checkpoint's own, evaluated as `nce eval` does, on the last 100
    // training images (the validation split), not on test images.
    let loaded = train::load_model(&ckpt).unwrap();
    let all = nce::data::load("fashion-mnist", "data".as_ref(), nce::data::Split::Train).unwrap();
    let test = all.select(&(all.len() - 100..all.len()).collect::<Vec<_>>());
    let acc = 100.0 * train::evaluate(&loaded.model, &nce::data::Loader::eval(&test, 500, tch::Device::Cpu).unwrap()).1;
    assert!((r.w2a2_acc - acc).abs() < 1e-9, "{} vs {acc}", r.w2a2_acc);
    assert!(r.w2a2_acc > 70.0, "a trained W2A2 model, not chance: {}", r.w2a2_acc);
}

//! Out-of-range numbers are usage errors at parse time (exit 2, the flag named), before any
//! work or output: nothing a user types is accepted silently or misread as a flag.
#![cfg(feature = "train")]

use std::process::Command;

fn usage_error(cmd: &[&str], flag: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_nce")).args(cmd).arg("--out").arg(&out).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{cmd:?}: {err}");
    assert!(err.contains(&format!("'{flag}")), "{cmd:?} should name {flag}: {err}");
    assert!(!out.exists(), "{cmd:?} wrote output");
}

#[test]
fn train_rejects_out_of_range_values() {
    for (args, flag) in [
        (&["train", "--epochs", "0"][..], "--epochs"),
        (&["train", "--lr", "-1"], "--lr"),
        (&["train", "--lr=-1"], "--lr"),
        (&["train", "--lr", "nan"], "--lr"),
        (&["train", "--weight-decay=-1"], "--weight-decay"),
        (&["train", "--bits", "33"], "--bits"),
        (&["train", "--bits", "1"], "--bits"),
        (&["train", "--first-last-bits", "0"], "--first-last-bits"),
        (&["train", "--train-subset", "0"], "--train-subset"),
        (&["train", "--test-subset", "0"], "--test-subset"),
        (&["train", "--batch-size", "0"], "--batch-size"),
        (&["train", "--threads", "100000"], "--threads"),
        (&["train", "--kd-alpha", "1.5"], "--kd-alpha"),
    ] {
        usage_error(args, flag);
    }
}

#[test]
fn search_sensitivity_and_pipeline_reject_out_of_range_values() {
    let p = "hw-profiles/nce-flops-params.toml";
    usage_error(&["search", "--profile", p, "--epochs", "0"], "--epochs");
    usage_error(&["search", "--profile", p, "--arch-lr", "-0.1"], "--arch-lr");
    usage_error(&["search", "--profile", p, "--test-subset", "0"], "--test-subset");
    usage_error(&["search", "--profile", p, "--threads", "99999"], "--threads");
    usage_error(&["sensitivity", "examples/resnet20-w2a2-fashion.ot", "--val-images", "0"], "--val-images");
    usage_error(&["pipeline", "--profile", p, "--threads", "5000"], "--threads");
}

#[test]
fn validate_and_measure_reject_out_of_range_values() {
    for (args, flag) in [
        (&["validate", "examples/resnet20-w2a2-fashion.nce", "--test-subset", "0"][..], "--test-subset"),
        (&["validate", "examples/resnet20-w2a2-fashion.nce", "--threads", "100000"], "--threads"),
        (&["measure", "-o", "/tmp/never-written.csv", "--threads", "100000"], "--threads"),
        (&["measure", "-o", "/tmp/never-written.csv", "--repeats", "0"], "--repeats"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_nce")).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(&format!("'{flag}")), "{args:?} should name {flag}: {err}");
    }
    assert!(!std::path::Path::new("/tmp/never-written.csv").exists());
}

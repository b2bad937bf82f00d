//! Schedule files: the shipped presets parse, `--schedule FILE` reads a user's, and malformed
//! files get an error naming file:line:col and the key.
#![cfg(feature = "train")]

use nce::pipeline::{Schedule, ScheduleError};
use std::process::Command;

#[test]
fn shipped_presets_parse_and_match_their_files() {
    for name in ["quick", "full"] {
        let embedded = Schedule::preset(name).unwrap();
        let on_disk = Schedule::load(format!("presets/{name}.toml").as_ref()).unwrap();
        assert_eq!(embedded, on_disk, "{name}");
    }
    let q = Schedule::quick();
    assert_eq!((q.train_subset, q.test_subset, q.validate_subset, q.search_threshold), (Some(6000), Some(2000), Some(300), 0.5));
    assert_eq!(q.fp32_init.as_deref(), Some("shipped:resnet20-fp32-fashion"), "quick starts from the shipped FP32 model");
    let f = Schedule::full();
    assert_eq!((f.train_subset, f.test_subset, f.w2a2_epochs), (None, None, 30), "left-out subsets mean all images");
}

#[test]
fn unknown_key_is_an_error_at_its_line_and_column() {
    let text = std::fs::read_to_string("presets/quick.toml").unwrap().replace("w2a2_lr = 0.02", "w2a2_lr = 0.02\nw2a2_lrr = 0.1");
    let line = text.lines().position(|l| l.starts_with("w2a2_lrr")).unwrap() + 1;
    let e = Schedule::parse(&text, "my.toml").unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("my.toml:{line}:1: ")), "{msg}");
    assert!(msg.contains("unknown field `w2a2_lrr`"), "{msg}");
}

#[test]
fn missing_or_mistyped_keys_are_named() {
    let text = std::fs::read_to_string("presets/quick.toml").unwrap();
    let missing: String = text.lines().filter(|l| !l.starts_with("search_epochs")).map(|l| format!("{l}\n")).collect();
    let msg = Schedule::parse(&missing, "m.toml").unwrap_err().to_string();
    assert!(msg.contains("missing field `search_epochs`"), "{msg}");
    let wrong = text.replace("batch_size = 128", "batch_size = \"128\"");
    let msg = Schedule::parse(&wrong, "w.toml").unwrap_err().to_string();
    let line = wrong.lines().position(|l| l.starts_with("batch_size")).unwrap() + 1;
    assert!(msg.starts_with(&format!("w.toml:{line}:")), "{msg}");
    assert!(matches!(Schedule::preset("nope"), Err(ScheduleError::UnknownPreset { .. })));
}

#[test]
fn cli_reads_a_schedule_file_and_reports_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "batch_size = 64\nfp32_epoch = 2\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_nce"))
        .args(["pipeline", "--profile", "hw-profiles/nce-flops-params.toml", "--schedule"])
        .arg(&bad)
        .arg("--out")
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains(&format!("{}:2:1", bad.display())) && err.contains("fp32_epoch"), "{err}");
    assert!(!dir.path().join("run").exists(), "nothing is written for a bad schedule");
    let o = Command::new(env!("CARGO_BIN_EXE_nce"))
        .args(["pipeline", "--profile", "hw-profiles/nce-flops-params.toml", "--preset", "fair-fashion", "--out"])
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("scripts/experiments/fair-fashion.sh"), "{err}");
}

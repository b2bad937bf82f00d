//! The `nce` binary on every shipped profile, and its errors for bad input.
#![cfg(all(feature = "cli", feature = "train"))]

mod common;

use common::{nce, text};

fn shipped() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("hw-profiles")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.display().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn check_accepts_all_shipped_profiles() {
    let files = shipped();
    let mut args = vec!["profiles", "check"];
    args.extend(files.iter().map(String::as_str));
    let o = nce(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(text(&o).matches("ok ").count(), files.len());
}

#[test]
fn list_and_show() {
    let o = nce(&["profiles", "list"]);
    assert!(o.status.success(), "{}", text(&o));
    for f in shipped() {
        let name = std::path::Path::new(&f).file_stem().unwrap().to_str().unwrap().to_string();
        assert!(text(&o).lines().any(|l| l.starts_with(&name)), "{name} not listed:\n{}", text(&o));
    }
    let o = nce(&["profiles", "list", "--dir", "hw-profiles"]);
    for f in shipped() {
        assert!(text(&o).contains(&f), "{f} not listed:\n{}", text(&o));
    }
    let o = nce(&["profiles", "show", "mcu-cortex-m7"]);
    assert!(o.status.success() && text(&o).contains("216 MHz") && text(&o).contains("budget:"), "{}", text(&o));
    let o = nce(&["profiles", "show", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("no profile `nope`"), "{}", text(&o));
}

#[test]
fn cost_on_every_shipped_profile() {
    for f in shipped() {
        let o = nce(&["cost", "--profile", &f, "--model", "resnet20"]);
        let t = text(&o);
        assert!(o.status.success(), "{f}: {t}");
        assert!(t.contains("40551040 MACs") && t.contains("layer3.2.conv_b"), "{f}: {t}");
        assert!(t.contains("budget") && (t.contains("PASS") || t.contains("FAIL")), "{f}: {t}");
    }
}

#[test]
fn cost_with_input_widths_and_json() {
    let o = nce(&["cost", "--profile", "hw-profiles/npu-int2-array.toml", "--model", "resnet20", "--input", "1x28x28"]);
    assert!(text(&o).contains("30821248 MACs"), "{}", text(&o));
    let widths = "32,32,32,32,32,32,32,64,64,64,64,64,64,128,128,128,128,128,128";
    let o = nce(&["cost", "--profile", "hw-profiles/npu-int2-array.toml", "--model", "resnet20", "--widths", widths, "--strict"]);
    assert_eq!(o.status.code(), Some(1), "a 2x wider net fails 1.0x budgets under --strict: {}", text(&o));
    assert!(text(&o).contains("FAIL"));
    let o = nce(&["cost", "--profile", "hw-profiles/npu-int2-array.toml", "--model", "resnet20", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(v["budgets"].as_array().unwrap().iter().all(|b| b["pass"] == true));
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("typo.toml");
    let good = std::fs::read_to_string("hw-profiles/mcu-cortex-m7.toml").unwrap();
    std::fs::write(&bad, good.replace("lanes = 1", "lanez = 1")).unwrap();
    let o = nce(&["profiles", "check", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let line = good.lines().position(|l| l.starts_with("lanes = 1")).unwrap() + 1;
    assert!(text(&o).contains(&format!("typo.toml:{line}:1")) && text(&o).contains("lanez"), "{}", text(&o));

    assert!(good.contains("latency_ms = { max = 500.0,"));
    std::fs::write(&bad, good.replace("latency_ms = { max = 500.0,", "latency_ms = { max = -1,")).unwrap();
    let o = nce(&["cost", "--profile", bad.to_str().unwrap(), "--model", "resnet20"]);
    assert_eq!(o.status.code(), Some(1), "a bad input file is a failure, not a usage error");
    assert!(text(&o).contains("budgets.latency_ms") && text(&o).contains("positive"), "{}", text(&o));

    let o = nce(&["cost", "--profile", "hw-profiles/mcu-cortex-m7.toml", "--model", "resnet21"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("unknown model `resnet21`"), "{}", text(&o));
    let o = nce(&["cost", "--profile", "hw-profiles/mcu-cortex-m7.toml", "--model", "resnet20", "--widths", "16,16"]);
    assert!(text(&o).contains("19 width slots"), "{}", text(&o));
    let o = nce(&["cost", "--profile", "hw-profiles/mcu-cortex-m7.toml", "--model", "resnet20", "--input", "3x32"]);
    assert!(text(&o).contains("CxHxW"), "{}", text(&o));
}

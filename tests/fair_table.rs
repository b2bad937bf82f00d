//! The fair experiment's verdict script (`scripts/experiments/fair-table.py`) on synthetic runs
//! whose statistics are known: the paired difference, its 95 % t-interval and the
//! pre-registered rule (≥ +0.5 points with the interval above 0, within budget).
#![cfg(feature = "cli")]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A run folder with the shared teacher's metrics, NCE search seed 0's committed architecture
/// and the given last-epoch accuracies (per final-training seed) of the uniform and NCE arms.
fn run_dir(uniform: &[f64], nce: &[f64]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    fs::create_dir_all(out.join("bin")).unwrap();
    fs::copy(env!("CARGO_BIN_EXE_nce"), out.join("bin/nce")).unwrap();
    add_arch(out, "nce-s0", "examples/nce-fashion-arch-s0.toml");
    write_metrics(&out.join("fp32-uniform"), 15, 0.9378);
    write_seeds(out, "uniform", uniform);
    write_seeds(out, "nce-s0", nce);
    dir
}

/// An arm's architecture: a committed file as `<arm>/arch.toml`.
fn add_arch(out: &Path, arm: &str, example: &str) {
    fs::create_dir_all(out.join(arm)).unwrap();
    fs::copy(repo().join(example), out.join(arm).join("arch.toml")).unwrap();
}

/// An arm's W2A2 units, one per final-training seed from 0, with these last-epoch accuracies (%).
fn write_seeds(out: &Path, arm: &str, accs: &[f64]) {
    for (seed, acc) in accs.iter().enumerate() {
        write_metrics(&out.join(format!("w2a2-{arm}-s{seed}")), 10, acc / 100.0);
    }
}

fn write_metrics(dir: &Path, epochs: usize, last_acc: f64) {
    fs::create_dir_all(dir).unwrap();
    let lines: Vec<String> = (0..epochs)
        .map(|e| format!(r#"{{"epoch":{e},"test_acc":{},"seconds":100.0}}"#, if e + 1 == epochs { last_acc } else { 0.5 }))
        .collect();
    fs::write(dir.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
}

fn table(out: &Path, extra: &[&str]) -> String {
    let o = Command::new("python3")
        .current_dir(repo())
        .arg("scripts/experiments/fair-table.py")
        .arg(out)
        .args(extra)
        .output()
        .expect("python3 runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_clear_gain_meets_the_rule_with_the_t_interval() {
    // Paired differences 0.7, 0.8, 0.9: mean 0.8, sd 0.1, t(2) = 4.303, half-width 0.248.
    let dir = run_dir(&[92.0, 92.2, 92.1], &[92.7, 93.0, 93.0]);
    write_metrics(&dir.path().join("fp32-nce-s0"), 15, 0.94);
    let t = table(dir.path(), &["--svg", dir.path().join("acc.svg").to_str().unwrap()]);
    assert!(t.contains("+0.80 points, 95 % CI [+0.55, +1.05]"), "{t}");
    assert!(t.contains("Verdict: MET"), "{t}");
    // Each arm's own FP32 accuracy: the teacher's for uniform, its own training's for NCE.
    assert!(t.contains("| uniform | 92.10 ± 0.10 | 92.00, 92.20, 92.10 | 93.78 | 1.000x | 1.000x |"), "{t}");
    assert!(t.contains("| nce-s0 | 92.90 ± 0.17 | 92.70, 93.00, 93.00 | 94.00 | 0.999x | 0.997x |"), "{t}");
    assert!(t.contains("Shared FP32 teacher (uniform ResNet-20): 93.78 %"), "{t}");
    let svg = fs::read_to_string(dir.path().join("acc.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("FP32 teacher 93.78 %") && svg.matches("<circle").count() == 6, "{svg}");
}

#[test]
fn a_small_or_noisy_gain_does_not_and_missing_seeds_decide_nothing() {
    // +0.6 on average but the interval spans 0 (differences 1.5, -0.3, 0.6).
    let dir = run_dir(&[92.0, 92.0, 92.0], &[93.5, 91.7, 92.6]);
    let t = table(dir.path(), &[]);
    assert!(t.contains("Verdict: NOT MET — difference +0.60 points"), "{t}");
    // Two of three paired seeds: no verdict either way.
    let dir = run_dir(&[92.0, 92.0], &[93.0, 93.0]);
    let t = table(dir.path(), &[]);
    assert!(t.contains("Verdict: not yet decided (2 of 3 paired seeds finished)"), "{t}");
}

#[test]
fn two_search_seeds_are_averaged_per_final_training_seed_and_shown_apart() {
    // Uniform 92.0 each; NCE seed 0 +1.0 each, NCE seed 1 +0.2, +0.4, +0.6 on the seeds it has.
    let dir = run_dir(&[92.0, 92.0, 92.0], &[93.0, 93.0, 93.0]);
    let out = dir.path();
    add_arch(out, "nce-s1", "examples/nce-fashion-arch-s1.toml");
    write_seeds(out, "nce-s1", &[92.2, 92.4]);
    let t = table(out, &["--widths-svg", out.join("widths.svg").to_str().unwrap()]);
    // One line per searched arm, each point its layer's width against the base width.
    let svg = fs::read_to_string(out.join("widths.svg")).unwrap();
    assert!(svg.matches("<polyline").count() == 2 && svg.contains("nce-s1 layer3.2.conv_b: 128 of 64"), "{svg}");
    // Only seeds both search seeds finished count: averages 92.6, 92.7 -> +0.6, +0.7.
    assert!(t.contains("NCE averaged over 2 search seeds): +0.65 points, 95 % CI"), "{t}");
    assert!(t.contains("- nce-s0 − uniform over 3 seeds: +1.00 points"), "{t}");
    assert!(t.contains("- nce-s1 − uniform over 2 seeds: +0.30 points"), "{t}");
    assert!(t.contains("Verdict: not yet decided (2 of 3 paired seeds finished)"), "{t}");
    // The third seed completes the statistic: differences 0.6, 0.7, 0.8 -> +0.70 [+0.45, +0.95].
    write_metrics(&out.join("w2a2-nce-s1-s2"), 10, 0.926);
    let t = table(out, &[]);
    assert!(t.contains("+0.70 points, 95 % CI [+0.45, +0.95]") && t.contains("Verdict: MET"), "{t}");
}

/// A run at a smaller budget (`presets/fair-fashion-0.75x.toml`): the reference arm is the base
/// ResNet-20 scaled by one factor to fit, the rule compares NCE with it, and an NCE network over
/// that budget cannot meet the rule however accurate it is.
#[test]
fn a_scaled_baseline_fits_the_smaller_budget_and_is_what_nce_is_compared_with() {
    const PRESET: &str = "presets/fair-fashion-0.75x.toml";
    let dir = run_dir(&[], &[92.7, 93.0, 93.0]);
    let out = dir.path();
    let t = table(out, &["--preset", PRESET, "--baseline-arch"]);
    assert!(t.is_empty(), "{t}");
    let arch = fs::read_to_string(out.join("scaled/arch.toml")).unwrap();
    assert!(arch.contains("widths = [14, 14, 14, 14, 14, 14, 14, 27, 27, 27, 27, 27, 27, 55, 55, 55, 55, 55, 55]"), "{arch}");
    write_seeds(out, "scaled", &[92.0, 92.2, 92.1]);
    // The scaled network lands at 0.74x MACs and params, within 0.97-1.00 of the 0.75x budget.
    let t = table(out, &["--preset", PRESET]);
    assert!(t.contains("| scaled | 92.10 ± 0.10 | 92.00, 92.20, 92.10 | – | 0.740x | 0.735x |"), "{t}");
    assert!(!t.contains("| uniform |"), "{t}");
    assert!(t.contains("Paired difference NCE − scaled over 3 final-training seeds"), "{t}");
    // +0.80 [+0.55, +1.05], but NCE search seed 0's network is the 1.0x one: over budget.
    assert!(t.contains("Verdict: NOT MET — difference +0.80 points") && t.contains("NCE within budget: False"), "{t}");
    // A network within the budget (here the scaled one's widths) with the same gain meets it.
    fs::copy(out.join("scaled/arch.toml"), out.join("nce-s0/arch.toml")).unwrap();
    let t = table(out, &["--preset", PRESET]);
    assert!(t.contains("Verdict: MET — NCE ≥ scaled + 0.5 points within the budgets of nce-flops-params-0.75x"), "{t}");
}

/// The TAS-wide ablation (expansion vs a bigger static space): NCE − tas and tas − uniform, each
/// paired by final-training seed, beside the verdict, which only NCE − uniform decides.
#[test]
fn the_tas_arm_is_compared_with_nce_and_with_uniform() {
    let dir = run_dir(&[92.0, 92.2, 92.1], &[92.7, 93.0, 93.0]);
    let out = dir.path();
    add_arch(out, "tas", "examples/tas-wide-fashion-arch.toml");
    write_seeds(out, "tas", &[92.3, 92.4, 92.5]);
    let t = table(out, &[]);
    assert!(t.contains("| tas | 92.40 ± 0.10 | 92.30, 92.40, 92.50 | – | 1.000x | 0.906x |"), "{t}");
    // 0.4, 0.6, 0.5 and 0.3, 0.2, 0.4: sd 0.1 each, half-width 0.248.
    assert!(t.contains("Paired difference NCE − tas over 3 seeds: +0.50 points, 95 % CI [+0.25, +0.75]"), "{t}");
    assert!(t.contains("Paired difference tas − uniform over 3 seeds: +0.30 points, 95 % CI [+0.05, +0.55]"), "{t}");
    assert!(t.contains("Verdict: MET"), "{t}");
}

/// The protocol's conditional arm: when NCE lands below 0.97x of the MACs budget, `--scaled-arch`
/// writes the base network scaled by one factor to NCE's MACs; at or above 0.97x it writes none.
#[test]
fn a_scaled_arm_matches_nce_macs_only_when_nce_lands_below_the_band() {
    const PROFILE: &str = "hw-profiles/nce-flops-params.toml";
    let dir = run_dir(&[], &[]);
    let out = dir.path();
    table(out, &["--scaled-arch", PROFILE]);
    assert!(!out.join("scaled").exists(), "NCE seed 0 lands at 0.999x: no scaled arm");
    // An NCE network at 0.8x of every base width (0.653x MACs).
    let nce = fs::read_to_string(repo().join("examples/nce-fashion-arch-s0.toml")).unwrap();
    let small = "widths = [13, 13, 13, 13, 13, 13, 13, 26, 26, 26, 26, 26, 26, 51, 51, 51, 51, 51, 51]";
    let nce: String = nce.lines().map(|l| if l.starts_with("widths = ") { small } else { l }).collect::<Vec<_>>().join("\n");
    fs::write(out.join("nce-s0/arch.toml"), nce).unwrap();
    table(out, &["--scaled-arch", PROFILE]);
    let arch = fs::read_to_string(out.join("scaled/arch.toml")).unwrap();
    assert!(arch.contains(small), "{arch}");
    assert!(arch.contains("uniform scale 0.80") && arch.contains("NCE's mean MACs (0.6530x)"), "{arch}");
}

/// The driver (`scripts/experiments/fair-fashion.sh`) on the 0.75x preset, up to the point where
/// training would start: the teacher is the committed FP32 model, the `baseline` stage derives
/// the scaled network, `persist` records it, and `status` lists the protocol's units with the
/// scaled arm as the baseline. A fresh folder restored from that record finds the arm again.
#[test]
fn the_driver_prepares_a_scaled_baseline_run_and_lists_its_units() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, keep) = (tmp.path().join("run"), tmp.path().join("keep"));
    let driver = |out: &Path, stages: &str| {
        let o = Command::new("bash")
            .current_dir(repo())
            .arg("scripts/experiments/fair-fashion.sh")
            .env("PRESET", "presets/fair-fashion-0.75x.toml")
            .env("OUT", out)
            .env("KEEP", &keep)
            .env("NCE_BIN", env!("CARGO_BIN_EXE_nce"))
            .env("STAGES", stages)
            .output()
            .expect("bash runs");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let s = driver(&out, "restore teacher baseline persist status");
    assert!(out.join("fp32-uniform/checkpoint.ot").is_file());
    assert!(fs::read_to_string(keep.join("scaled/arch.toml")).unwrap().contains("widths = [14, 14,"));
    for unit in ["fp32-scaled            0/15 epochs", "w2a2-scaled-s2         0/10 epochs", "nce-s1                 search 0/24"] {
        assert!(s.contains(unit), "{unit} missing:\n{s}");
    }
    assert!(!s.contains("w2a2-uniform"), "{s}");
    let s = driver(&tmp.path().join("clone"), "restore status");
    assert!(s.contains("w2a2-scaled-s0         0/10 epochs"), "{s}");
}

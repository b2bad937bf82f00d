//! `kill -9` at arbitrary moments never leaves a partial output, and rerunning the same command
//! ends bit-identical to an uninterrupted run. Training and the search have their own kill
//! tests (tests/train.rs, tests/search.rs); this file covers export and the pipeline.
#![cfg(all(feature = "cli", feature = "train"))]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn nce() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nce"));
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

/// Starts `cmd`, SIGKILLs it after `after` (if it is still running) and reports whether it was
/// killed before finishing.
fn run_and_kill(mut cmd: Command, after: Duration) -> bool {
    let mut child = cmd.spawn().unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < after {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    true
}

fn temp_files(dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for e in walk(dir) {
        let n = e.file_name().unwrap().to_string_lossy().into_owned();
        if n.ends_with(".tmp") {
            v.push(e.display().to_string());
        }
    }
    v
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn killed_exports_leave_nothing_partial_and_a_rerun_matches() {
    let dir = tempfile::tempdir().unwrap();
    // Beside the target's folder: the checkpoint path a model records is relative to the model.
    let reference = dir.path().join("ref/reference.nce");
    let o = nce().args(["export", "examples/resnet20-w2a2-fashion.ot", "-o"]).arg(&reference).status().unwrap();
    assert!(o.success());
    let want = std::fs::read(&reference).unwrap();
    let target = dir.path().join("out/model.nce");
    let mut killed = 0;
    for i in 0..12u64 {
        let mut cmd = nce();
        cmd.args(["export", "examples/resnet20-w2a2-fashion.ot", "-o"]).arg(&target);
        if run_and_kill(cmd, Duration::from_millis(20 + 40 * i)) {
            killed += 1;
        }
        // Either the old complete file (or none) or the new complete one: never a prefix.
        if let Ok(got) = std::fs::read(&target) {
            assert_eq!(got, want, "a killed export left a partial or different {}", target.display());
        }
    }
    assert!(killed > 0, "no export was killed in flight (all finished too fast)");
    let o = nce().args(["export", "examples/resnet20-w2a2-fashion.ot", "-o"]).arg(&target).status().unwrap();
    assert!(o.success());
    assert_eq!(std::fs::read(&target).unwrap(), want);
    assert!(temp_files(dir.path()).is_empty(), "temp files left: {:?}", temp_files(dir.path()));
}

const TINY: &str = r#"train_subset = 256
test_subset = 100
batch_size = 64
fp32_epochs = 1
fp32_lr = 0.1
fp32_warmup_epochs = 0
search_train_subset = 256
search_epochs = 1
search_test_subset = 100
search_threshold = 0.4
search_lr = 0.02
w2a2_epochs = 1
w2a2_lr = 0.02
sensitivity_val_images = 100
calib_batch = 64
validate_subset = 16
wgpu_subset = 8
measure_repeats = 2
measure_grid = [0.5, 0.75, 1.0]
"#;

fn pipeline(schedule: &Path, out: &Path) -> Command {
    let mut c = nce();
    c.args(["pipeline", "--profile", "hw-profiles/npu-int2-array.toml", "--threads", "1", "--quiet", "--schedule"])
        .arg(schedule)
        .arg("--out")
        .arg(out);
    c
}

/// The pipeline killed twice at different points, then rerun, exports the same integer models
/// as an uninterrupted run.
#[test]
fn a_killed_pipeline_reruns_to_the_same_models() {
    let dir = tempfile::tempdir().unwrap();
    let schedule = dir.path().join("tiny.toml");
    std::fs::write(&schedule, TINY).unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let t0 = Instant::now();
    assert!(pipeline(&schedule, &a).status().unwrap().success());
    let full = t0.elapsed();
    // The report names the schedule file as the option that selects it.
    let md = std::fs::read_to_string(a.join("report.md")).unwrap();
    let option = format!("--schedule {}", schedule.display());
    assert!(md.contains(&option), "report.md does not give `{option}` in its command:\n{md}");
    // Kill once early (during FP32 training or the search) and once about two thirds in.
    assert!(run_and_kill(pipeline(&schedule, &b), full / 5), "the first kill came too late");
    run_and_kill(pipeline(&schedule, &b), full * 2 / 3);
    assert!(pipeline(&schedule, &b).status().unwrap().success());
    for m in ["export/uniform.nce", "export/nce.nce"] {
        let (x, y) = (std::fs::read(a.join(m)).unwrap(), std::fs::read(b.join(m)).unwrap());
        assert!(x == y, "{m} differs between the uninterrupted and the killed-and-rerun pipeline");
    }
    assert!(temp_files(&b).is_empty(), "temp files left: {:?}", temp_files(&b));
}

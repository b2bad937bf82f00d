//! `nce pipeline` on a tiny schedule (a few hundred real Fashion-MNIST images, one epoch per
//! stage): skipping on a rerun, rerunning exactly what a change touches, resuming an interrupted
//! training stage, the failure path, the report's content, and report.html rendered by headless
//! Chromium with every image loaded.
//!
//! One full run is shared: each test copies its folder (manifests hold no absolute paths, so a
//! copied run folder is still up to date) and works on the copy.
#![cfg(all(feature = "cli", feature = "train"))]

use nce::graph::ModelKind;
use nce::pipeline::manifest::{base64, hex, sha256, Manifest};
use nce::pipeline::stage::StageStatus;
use nce::pipeline::{self, FinalInit, PipelineConfig, PipelineError, PipelineRun, Schedule, ScheduleSource, Stage, STAGES};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const NPU: &str = "hw-profiles/npu-int2-array.toml";

fn tiny() -> Schedule {
    Schedule {
        train_subset: Some(256),
        test_subset: Some(100),
        batch_size: 64,
        fp32_epochs: 1,
        fp32_lr: 0.1,
        fp32_warmup_epochs: 0,
        search_train_subset: Some(256),
        search_epochs: 1,
        search_test_subset: 100,
        search_threshold: 0.4,
        search_lr: 0.02,
        w2a2_epochs: 1,
        w2a2_lr: 0.02,
        sensitivity_val_images: Some(100),
        calib_batch: 64,
        validate_subset: Some(16),
        wgpu_subset: Some(8),
        measure_repeats: 2,
        // The tiny search cannot expand (one epoch), so its widths stay on the initial grid.
        measure_grid: vec![0.5, 0.75, 1.0],
        fp32_init: None,
        search_warmup_epochs: 0,
        search_arch_lr: None,
        // Exercises distillation from the FP32 model in both W2A2 trainings.
        kd_alpha: 0.5,
        kd_temperature: 4.0,
        final_init: FinalInit::Fp32,
    }
}

fn config(out: &Path) -> PipelineConfig {
    let mut c = PipelineConfig::new(
        PathBuf::from(NPU),
        ModelKind::Resnet20,
        "fashion-mnist",
        out.to_path_buf(),
        ScheduleSource::Named("tiny".into()),
        tiny(),
    );
    c.threads = 1;
    c.progress = false;
    c
}

/// `target/tmp/pipeline-<pid>/`; folders of earlier test processes that have exited are removed
/// the first time (each holds ~90 MB of checkpoints).
fn scratch() -> PathBuf {
    static CLEANED: OnceLock<()> = OnceLock::new();
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    CLEANED.get_or_init(|| {
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("pipeline-").and_then(|p| p.parse::<u32>().ok()) {
                if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    });
    root.join(format!("pipeline-{}", std::process::id()))
}

/// `pipeline::run`, one at a time: the search and the trainings draw from libtorch's global
/// random generator (reseeded per step), so two runs in parallel test threads perturb each
/// other's draws and a rerun would no longer reproduce the first run bit for bit.
fn run(c: &PipelineConfig) -> Result<PipelineRun, PipelineError> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    pipeline::run(c)
}

/// The shared first run (its folder and what it returned).
fn base() -> &'static (PathBuf, PipelineRun) {
    static BASE: OnceLock<(PathBuf, PipelineRun)> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = scratch().join("base");
        let _ = std::fs::remove_dir_all(&dir);
        let first = run(&config(&dir)).expect("the tiny pipeline runs end to end");
        (dir, first)
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// A fresh copy of the base run.
fn copy_of_base(name: &str) -> PathBuf {
    let (dir, _) = base();
    let to = scratch().join(name);
    let _ = std::fs::remove_dir_all(&to);
    copy_dir(dir, &to);
    to
}

fn statuses(r: &PipelineRun) -> Vec<(String, StageStatus)> {
    r.stages.iter().map(|s| (s.stage.name().to_string(), s.status)).collect()
}

fn assert_statuses(r: &PipelineRun, expect: &[(&str, StageStatus)]) {
    let want: Vec<(String, StageStatus)> = expect.iter().map(|(s, st)| (s.to_string(), *st)).collect();
    assert_eq!(statuses(r), want, "{:#?}", r.stages);
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

#[test]
fn sha256_and_base64_match_their_test_vectors() {
    assert_eq!(hex(&sha256(b"")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_eq!(hex(&sha256(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_eq!(
        hex(&sha256(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
    // 55, 56 and 64 bytes: the padding edge cases.
    assert_eq!(hex(&sha256(&[b'a'; 55])), "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
    assert_eq!(hex(&sha256(&[b'a'; 56])), "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a");
    assert_eq!(hex(&sha256(&[b'a'; 64])), "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
    assert_eq!(hex(&sha256(&vec![b'a'; 1_000_000])), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    for (raw, enc) in
        [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")]
    {
        assert_eq!(base64(raw.as_bytes()), enc);
    }
}

#[test]
fn the_verdict_interval_is_a_paired_bootstrap() {
    use nce::pipeline::report::verdict;
    use nce::pipeline::results::Better;
    // Identical predictions: no difference, and no interval around it.
    let same: Vec<bool> = (0..400).map(|i| i % 3 != 0).collect();
    let v = verdict(&same, &same, 1).unwrap();
    assert_eq!((v.difference, v.low, v.high, v.better()), (0.0, 0.0, 0.0, Better::Neither));
    // NCE right on 40 more images out of 400 (+10 points), wrong nowhere uniform is right:
    // the paired interval excludes 0 (the unpaired spread of two 80 % accuracies would not be this narrow).
    let uniform: Vec<bool> = (0..400).map(|i| i % 5 != 0).collect();
    let nce: Vec<bool> = (0..400).map(|i| i % 5 != 0 || i % 10 == 0).collect();
    let v = verdict(&uniform, &nce, 1).unwrap();
    assert!((v.difference - 0.1).abs() < 1e-12, "{v:?}");
    assert!(v.low > 0.06 && v.high < 0.14 && v.better() == Better::Nce, "{v:?}");
    let v = verdict(&nce, &uniform, 1).unwrap();
    assert_eq!(v.better(), Better::Uniform);
    // One flipped image in each direction on 400: within noise.
    let mut a = same.clone();
    a[0] = !a[0];
    a[1] = !a[1];
    assert_eq!(verdict(&same, &a, 1).unwrap().better(), Better::Neither);
    assert!(verdict(&same, &same[..10], 1).is_none(), "unpaired lengths are refused");
}

#[test]
fn first_run_runs_every_stage_and_writes_manifests() {
    let (dir, run) = base();
    let expect: Vec<(&str, StageStatus)> = STAGES.iter().map(|s| (*s, StageStatus::Ran)).collect();
    assert_statuses(run, &expect);
    for st in STAGES {
        let m = Manifest::read(&dir.join(st).join("manifest.json")).unwrap_or_else(|| panic!("{st} has no manifest"));
        assert_eq!(m.stage, st);
        assert!(!m.outputs.is_empty(), "{st} recorded no outputs");
        assert!(!dir.join(st).join(".pending.json").exists(), "{st} left its pending marker");
        for rel in m.outputs.keys() {
            assert!(dir.join(rel).is_file(), "{st}: output {rel} missing");
        }
    }
    // Inputs are recorded by hash: the searched network's training consumed the architecture.
    let m = Manifest::read(&dir.join("train-nce/manifest.json")).unwrap();
    assert!(m.inputs.files.contains_key("search/arch.toml"), "{:?}", m.inputs.files);
    assert!(m.inputs.files.contains_key("fp32/checkpoint.ot"));
    // The search starts its supernet from the uniform W2A2 model.
    let m = Manifest::read(&dir.join("search/manifest.json")).unwrap();
    assert!(m.inputs.files.contains_key("train-uniform/checkpoint.ot"), "{:?}", m.inputs.files);
    // ... and depends on the profile (its text and latency table, by hash, however it was given).
    let id = m.inputs.config["profile_sha256"].as_str().unwrap_or_default();
    assert!(id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{:?}", m.inputs.config);
    assert!(dir.join("export/nce.nce").is_file() && dir.join("export/uniform.nce").is_file());
}

#[test]
fn second_run_skips_every_stage() {
    let dir = copy_of_base("rerun");
    let r = run(&config(&dir)).unwrap();
    let expect: Vec<(&str, StageStatus)> = STAGES.iter().map(|s| (*s, StageStatus::Skipped)).collect();
    assert_statuses(&r, &expect);
}

#[test]
fn an_altered_output_reruns_only_its_stage() {
    let dir = copy_of_base("altered");
    let before = std::fs::read(dir.join("export/uniform.nce")).unwrap();
    std::fs::remove_file(dir.join("export/uniform.nce")).unwrap();
    let r = run(&config(&dir)).unwrap();
    // Export is deterministic, so the re-exported files are identical and nothing downstream
    // has to run again.
    let expect: Vec<(&str, StageStatus)> =
        STAGES.iter().map(|s| (*s, if *s == "export" { StageStatus::Ran } else { StageStatus::Skipped })).collect();
    assert_statuses(&r, &expect);
    assert_eq!(std::fs::read(dir.join("export/uniform.nce")).unwrap(), before);

    // A tampered output (not just a missing one) is noticed too.
    std::fs::write(dir.join("sensitivity/sensitivity.csv"), "layer\n").unwrap();
    let r = run(&config(&dir)).unwrap();
    assert_eq!(r.status("sensitivity"), Some(StageStatus::Ran));
    assert!(r.stages.iter().filter(|s| s.stage != Stage::Sensitivity).all(|s| s.status == StageStatus::Skipped), "{:#?}", r.stages);
}

#[test]
fn a_changed_configuration_reruns_its_stage_and_everything_downstream() {
    let dir = copy_of_base("changed");
    let mut c = config(&dir);
    c.schedule.validate_subset = Some(8);
    let r = run(&c).unwrap();
    let expect: Vec<(&str, StageStatus)> = STAGES
        .iter()
        .map(|s| (*s, if matches!(*s, "validate-cpu" | "report") { StageStatus::Ran } else { StageStatus::Skipped }))
        .collect();
    assert_statuses(&r, &expect);
    assert_eq!(json(&dir.join("validate-cpu/result.json"))["nce"]["images"], 8);
    let reason = &r.stages.iter().find(|s| s.stage == Stage::ValidateCpu).unwrap().reason;
    assert!(reason.contains("configuration"), "{reason}");
}

/// `final_init = "supernet"`: the search starts from the FP32 model and both W2A2 trainings
/// start from the search's supernet, so the uniform training runs after the search and depends
/// on its checkpoint; the stages before the search are unaffected.
#[test]
fn supernet_inheritance_trains_both_networks_after_the_search() {
    let dir = copy_of_base("supernet-init");
    let mut c = config(&dir);
    c.schedule.final_init = FinalInit::Supernet;
    let r = run(&c).unwrap();
    let order: Vec<&str> = r.stages.iter().map(|s| s.stage.name()).collect();
    assert_eq!(&order[..5], ["fp32", "sensitivity", "search", "train-uniform", "train-nce"], "{order:?}");
    for st in ["fp32", "sensitivity"] {
        assert_eq!(r.status(st), Some(StageStatus::Skipped), "{st}: {:#?}", r.stages);
    }
    for st in ["search", "train-uniform", "train-nce", "validate-cpu", "report"] {
        assert_eq!(r.status(st), Some(StageStatus::Ran), "{st}: {:#?}", r.stages);
    }
    let search_inputs = json(&dir.join("search/manifest.json"))["inputs"]["files"].clone();
    assert!(search_inputs.get("fp32/checkpoint.ot").is_some(), "{search_inputs}");
    for st in ["train-uniform", "train-nce"] {
        let files = json(&dir.join(format!("{st}/manifest.json")))["inputs"]["files"].clone();
        assert!(files.get("search/search-checkpoint.ot").is_some(), "{st}: {files}");
    }
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(report.contains("weights in the search's supernet"), "{report}");
}

#[test]
fn a_changed_profile_reruns_the_stages_that_read_it() {
    let dir = copy_of_base("profile-changed");
    let profile = dir.join("my-profile.toml");
    let text = std::fs::read_to_string(NPU).unwrap();
    std::fs::write(&profile, format!("{text}\n# edited\n")).unwrap();
    let mut c = config(&dir);
    c.profile = profile;
    let r = run(&c).unwrap();
    for st in ["fp32", "sensitivity", "train-uniform"] {
        assert_eq!(r.status(st), Some(StageStatus::Skipped), "{st}: {:#?}", r.stages);
    }
    for st in ["search", "measure", "report"] {
        assert_eq!(r.status(st), Some(StageStatus::Ran), "{st}: {:#?}", r.stages);
    }
}

#[test]
fn an_interrupted_training_stage_resumes_to_the_same_model() {
    let dir = copy_of_base("interrupted");
    let (base_dir, _) = base();
    std::fs::remove_dir_all(dir.join("train-uniform")).unwrap();
    let mut c = config(&dir);
    c.interrupt = Some((Stage::TrainUniform, 1));
    let err = run(&c).unwrap_err();
    assert!(matches!(&err, PipelineError::Stage { stage: Stage::TrainUniform, .. }), "{err}");
    assert!(dir.join("train-uniform/checkpoint.ot").is_file(), "the partial checkpoint is kept");
    assert!(dir.join("train-uniform/.pending.json").is_file());
    assert!(!dir.join("train-uniform/manifest.json").exists());

    let r = run(&config(&dir)).unwrap();
    for st in ["fp32", "sensitivity"] {
        assert_eq!(r.status(st), Some(StageStatus::Skipped), "{st}: {:#?}", r.stages);
    }
    assert_eq!(r.status("train-uniform"), Some(StageStatus::Resumed));
    // Resuming is exact: the exported integer model equals the uninterrupted run's, and the
    // search that starts from it (rerun: the checkpoint file records the resume) finds the
    // same widths.
    let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    assert_eq!(read(&dir, "export/uniform.nce"), read(base_dir, "export/uniform.nce"));
    assert_eq!(read(&dir, "search/arch.toml"), read(base_dir, "search/arch.toml"));
    assert!(Manifest::read(&dir.join("train-uniform/manifest.json")).unwrap().resumed);
}

#[test]
fn a_failing_stage_names_itself_and_keeps_earlier_outputs() {
    let dir = copy_of_base("failing");
    std::fs::remove_dir_all(dir.join("search")).unwrap();
    let mut c = config(&dir);
    c.fail_stage = Some(Stage::Search);
    let err = run(&c).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("stage `search` failed"), "{msg}");
    assert!(dir.join("fp32/manifest.json").is_file() && dir.join("fp32/checkpoint.ot").is_file());
    assert!(dir.join("sensitivity/manifest.json").is_file() && dir.join("sensitivity/sensitivity.csv").is_file());
    assert!(!dir.join("search/manifest.json").exists());
    // Downstream stages of the earlier run are left alone until their turn comes.
    assert!(dir.join("train-nce/manifest.json").is_file());
}

#[test]
fn the_cli_fails_with_the_stage_named_by_the_environment_hook() {
    let dir = scratch().join("cli-fail");
    let _ = std::fs::remove_dir_all(&dir);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nce"))
        .args(["pipeline", "--profile", NPU, "--model", "resnet20", "--data", "fashion-mnist", "--quiet", "--out"])
        .arg(&dir)
        .env("NCE_PIPELINE_FAIL_STAGE", "fp32")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stderr.contains("stage `fp32` failed") && stderr.contains("NCE_PIPELINE_FAIL_STAGE"), "{stderr}");
    assert!(stdout.contains("REDUCED SCHEDULE"), "{stdout}");
    assert!(dir.join("fp32/.pending.json").is_file());
}

/// Test accuracy of a stage's result as the report prints it.
fn acc(dir: &Path, stage: &str) -> String {
    format!("{:.2} %", 100.0 * json(&dir.join(stage).join("result.json"))["test_acc"].as_f64().unwrap())
}

#[test]
fn the_report_has_every_section_and_number() {
    let (dir, _) = base();
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    for needle in [
        "npu-int2-array",
        "## Hardware profile and budgets",
        "## Accuracy",
        "## Per-layer widths and sensitivity",
        "## Costs against budgets",
        "CPU vs wgpu",
        "Latency: measured vs predicted",
        "FP32",
        "uniform W2A2",
        "NCE W2A2",
        "layer1.0.conv_a",
        "one-off gain",
        "PASS",
    ] {
        assert!(md.contains(needle), "report.md lacks `{needle}`:\n{md}");
    }
    for st in ["fp32", "train-uniform", "train-nce"] {
        assert!(md.contains(&acc(dir, st)), "report.md lacks {st}'s accuracy {}", acc(dir, st));
    }
    // The verdict comes first, on the validation images, with its interval.
    let first_note = md.lines().find(|l| l.starts_with("> ")).unwrap();
    assert!(first_note.contains("Verdict:") && first_note.contains("95 % paired bootstrap interval"), "{first_note}");
    assert!(first_note.contains("on the same 100 test images"), "{first_note}");
    // A single run's interval covers the test images, not training seeds, and says so.
    assert!(first_note.contains("over test images only"), "{first_note}");
    // Every budget of the profile and every plugin metric appears.
    let profile = nce::hw::Profile::load(NPU).unwrap();
    for b in &profile.budgets {
        assert!(md.contains(&format!("| {} |", b.metric)), "budget {} missing", b.metric);
    }
    for p in profile.plugins.keys() {
        assert!(md.contains(&format!("| {p} |")), "plugin {p} missing");
    }
    // Stages this build cannot run are reported as such, with no numbers.
    if pipeline::wgpu_unavailable().is_some() {
        assert!(md.contains("validate-wgpu: not available in this build"), "{md}");
    }
    if pipeline::measure_unavailable().is_some() {
        assert!(md.contains("measure: not available in this build"), "{md}");
    }
    // Markdown images point at files that exist.
    for line in md.lines().filter(|l| l.starts_with("![")) {
        let rel = &line[line.find("](").unwrap() + 2..line.len() - 1];
        assert!(dir.join(rel).is_file(), "{rel}");
    }
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(!html.contains("src=\"http") && !html.contains("src=\"report/") && !html.contains("href=\"http"), "not self-contained");
    assert_eq!(html.matches("<img").count(), html.matches("src=\"data:image/png;base64,").count());
}

fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser"] {
        if let Ok(out) = std::process::Command::new("which").arg(name).output() {
            if out.status.success() {
                return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            }
        }
    }
    panic!("headless Chromium is needed to check report.html: install the Debian package `chromium` (scripts/setup installs it)");
}

#[test]
fn report_html_renders_in_headless_chromium() {
    let chrome = chromium();
    let (dir, _) = base();
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    // After load, write each image's state into the DOM, where --dump-dom shows it.
    let probe = r#"<script>window.addEventListener("load",function(){var d=document.createElement("pre");d.id="nce-"+"probe";
d.textContent=Array.prototype.map.call(document.images,function(i){return "IMG|"+i.complete+"|"+i.naturalWidth+"|"+i.naturalHeight+"|";}).join(" ");
document.body.appendChild(d);});</script>"#;
    let probed = html.replace("</body>", &format!("{probe}</body>"));
    let page = scratch().join("report-probe.html");
    std::fs::create_dir_all(scratch()).unwrap();
    std::fs::write(&page, probed).unwrap();
    let profile_dir = scratch().join("chromium-profile");
    let out = std::process::Command::new(&chrome)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile_dir.display()))
        .arg(format!("file://{}", page.canonicalize().unwrap().display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    let marker = "<pre id=\"nce-probe\">";
    let start = dom.find(marker).unwrap_or_else(|| panic!("the probe did not run; DOM:\n{}", &dom[..dom.len().min(3000)])) + marker.len();
    let report = &dom[start..start + dom[start..].find("</pre>").unwrap()];
    let imgs = html.matches("<img").count();
    assert!(imgs >= 5, "only {imgs} images in the report");
    let states: Vec<Vec<&str>> = report.split_whitespace().map(|e| e.split('|').collect()).collect();
    assert_eq!(states.len(), imgs, "{report}");
    for st in &states {
        assert_eq!(st[0], "IMG", "{report}");
        assert_eq!(st[1], "true", "image not loaded: {report}");
        assert!(st[2].parse::<u32>().unwrap() > 0 && st[3].parse::<u32>().unwrap() > 0, "image did not decode: {report}");
    }
    // The rendered page carries the key numbers.
    for st in ["fp32", "train-uniform", "train-nce"] {
        assert!(dom.contains(&acc(dir, st)), "rendered report lacks {st}'s accuracy {}", acc(dir, st));
    }
    assert!(dom.contains("<h2>Costs against budgets</h2>") && dom.contains("npu-int2-array"));
    assert!(dom.contains("<strong>Note:</strong> Verdict:"), "the rendered report opens with the verdict");
}

#[test]
fn an_imported_fp32_checkpoint_replaces_training_and_identical_weights_skip_the_rest() {
    let dir = copy_of_base("imported");
    let (base_dir, _) = base();
    let init = scratch().join("imported-fp32.ot");
    std::fs::copy(base_dir.join("fp32/checkpoint.ot"), &init).unwrap();
    let mut c = config(&dir);
    c.init = Some(init);
    let r = run(&c).unwrap();
    // The fp32 stage's configuration changed (import instead of training), but it produced the
    // same checkpoint, so every consumer of it (sensitivity, search, both trainings) is still up
    // to date.
    let expect: Vec<(&str, StageStatus)> =
        STAGES.iter().map(|s| (*s, if matches!(*s, "fp32" | "report") { StageStatus::Ran } else { StageStatus::Skipped })).collect();
    assert_statuses(&r, &expect);
    assert_eq!(json(&dir.join("fp32/result.json"))["test_acc"], json(&base_dir.join("fp32/result.json"))["test_acc"]);
    // A quantized checkpoint is refused, naming the stage.
    c.init = Some(base_dir.join("train-uniform/checkpoint.ot"));
    let err = run(&c).unwrap_err().to_string();
    assert!(err.contains("stage `fp32` failed") && err.contains("full-precision"), "{err}");
}

#[test]
fn a_mobilenet_runs_every_stage() {
    // MobileNetV2 ×0.35 (depthwise convs in every block) through search, both trainings,
    // sensitivity, export, validation on every backend the pipeline runs, and the latency table.
    let dir = scratch().join("mobilenet");
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = config(&dir);
    c.model = "mobilenetv2x0.35".parse().unwrap();
    let r = run(&c).expect("the tiny pipeline runs MobileNetV2 end to end");
    let expect: Vec<(&str, StageStatus)> = STAGES.iter().map(|s| (*s, StageStatus::Ran)).collect();
    assert_statuses(&r, &expect);
    let v = json(&dir.join("validate-cpu/result.json"));
    for m in ["uniform", "nce"] {
        assert!(v[m]["compared_values"].as_u64().unwrap() > 0, "{v}");
        assert_eq!(v[m]["mismatched_values"].as_u64(), Some(0), "{v}");
    }
    let model = nce::engine::plan::QModel::load(&dir.join("export/nce.nce")).unwrap();
    assert!(model.net().layers.iter().any(|l| matches!(l.op, nce::graph::Op::Conv { groups, .. } if groups > 1)));
    let _ = std::fs::remove_dir_all(&dir);
}

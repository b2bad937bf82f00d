//! The command-line conventions (docs/cli.md), one test each: the tool works from any folder,
//! exit codes (0 success, 1 failure or verdict, 2 usage), `--json` with layer names, outputs
//! create their parent folders, models follow the dataset, errors say where data was looked for.
#![cfg(feature = "cli")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository (the tests' working folder).
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `nce ARGS` run in `cwd`, with the datasets under `$NCE_DATA` and no `./data` there.
fn nce_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nce")).current_dir(cwd).env("NCE_DATA", repo().join("data")).args(args).output().expect("run nce")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", stdout(o)))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn works_from_a_folder_outside_the_repository() {
    let away = tempfile::tempdir().unwrap();
    let o = nce_in(away.path(), &["profiles", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for name in ["local-cpu", "mcu-cortex-m7", "mobile-cpu-a76", "nce-flops-params", "npu-int2-array"] {
        assert!(stdout(&o).lines().any(|l| l.starts_with(name)), "{name} not listed:\n{}", stdout(&o));
    }
    let v = json(&nce_in(away.path(), &["cost", "--profile", "npu-int2-array", "--model", "resnet20", "--json"]));
    assert_eq!(v["profile"], "npu-int2-array");
    // local-cpu's latency table is shipped with it.
    let o = nce_in(away.path(), &["cost", "--profile", "local-cpu", "--model", "resnet20", "--input", "1x28x28"]);
    assert!(o.status.success() && stdout(&o).contains("latency_ms"), "{}", stderr(&o));

    let model = repo().join("examples/resnet20-w2a2-fashion.nce");
    let o = nce_in(away.path(), &["validate", s(&model), "--test-subset", "20"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("accuracy"), "{}", stdout(&o));
}

/// What `cargo install --path .` makes: a copy of the binary in another folder, run with no
/// environment but PATH and HOME, finds libtorch (build.rs's rpath) and the shipped profiles.
#[test]
fn an_installed_copy_runs_without_environment_variables() {
    let bin_dir = tempfile::tempdir().unwrap();
    let copy = bin_dir.path().join("nce");
    std::fs::copy(env!("CARGO_BIN_EXE_nce"), &copy).unwrap();
    let away = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(&copy)
            .current_dir(away.path())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", away.path())
            .args(args)
            .output()
            .expect("run the copy")
    };
    let o = run(&["profiles", "list"]);
    assert!(o.status.success() && stdout(&o).contains("mcu-cortex-m7"), "{}{}", stdout(&o), stderr(&o));
    let o = run(&["cost", "--profile", "nce-flops-params", "--model", "resnet20", "--input", "1x28x28", "--classes", "10"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[cfg(feature = "train")]
#[test]
fn a_model_and_its_checkpoint_move_together() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("runs/w2a2/checkpoint.ot");
    std::fs::create_dir_all(ck.parent().unwrap()).unwrap();
    std::fs::copy(repo().join("examples/resnet20-w2a2-fashion.ot"), &ck).unwrap();
    // Parent folders of the output are created.
    let model = dir.path().join("models/new/deep/m.nce");
    let o = nce_in(dir.path(), &["export", "runs/w2a2/checkpoint.ot", "-o", "models/new/deep/m.nce"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(model.is_file());
    // The recorded checkpoint is relative to the model file: the pair validates from elsewhere
    // and after both are moved together.
    let moved = dir.path().join("elsewhere");
    std::fs::create_dir_all(moved.join("models/new/deep")).unwrap();
    std::fs::rename(dir.path().join("runs"), moved.join("runs")).unwrap();
    std::fs::rename(&model, moved.join("models/new/deep/m.nce")).unwrap();
    let away = tempfile::tempdir().unwrap();
    let o = nce_in(away.path(), &["validate", s(&moved.join("models/new/deep/m.nce")), "--test-subset", "10"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("per-layer integer outputs: 0 of"), "{}", stdout(&o));
}

#[test]
fn exit_codes_separate_usage_failure_and_verdict() {
    let here = repo();
    // Usage: an unknown flag, a bad value, flags that do not fit together.
    assert_eq!(nce_in(&here, &["cost", "--frobnicate"]).status.code(), Some(2));
    assert_eq!(nce_in(&here, &["cost", "--profile", "npu-int2-array", "--model", "resnet21"]).status.code(), Some(2));
    let o = nce_in(&here, &["cost", "--profile", "npu-int2-array", "--model", "resnet18", "--input", "1x28x28"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--classes"), "{}", stderr(&o));
    assert_eq!(nce_in(&here, &["measure"]).status.code(), Some(2));
    // Failure: a missing input file.
    let o = nce_in(&here, &["cost", "--profile", "no-such-profile", "--model", "resnet20"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("not a shipped profile") && stderr(&o).contains("npu-int2-array"), "{}", stderr(&o));
    let o = nce_in(&here, &["validate", "no-such-model.nce"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // Verdict: a budget fails under --strict.
    let wide = "32,32,32,32,32,32,32,64,64,64,64,64,64,128,128,128,128,128,128";
    let o = nce_in(&here, &["cost", "--profile", "npu-int2-array", "--model", "resnet20", "--widths", wide, "--strict"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // Success.
    assert_eq!(nce_in(&here, &["cost", "--profile", "npu-int2-array", "--model", "resnet20"]).status.code(), Some(0));
}

#[test]
fn json_outputs_parse_and_name_layers() {
    let here = repo();
    let v = json(&nce_in(&here, &["cost", "--profile", "npu-int2-array", "--model", "resnet20", "--json"]));
    assert_eq!((v["model"].as_str(), v["classes"].as_u64()), (Some("resnet20"), Some(10)));
    let macs = v["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == "macs").expect("a macs metric");
    assert_eq!(macs["total"], 40551040.0);
    let per_layer = macs["per_layer"].as_array().unwrap();
    assert_eq!(per_layer[0]["layer"], "conv1");
    assert!(per_layer.iter().any(|l| l["layer"] == "layer3.2.conv_b" && l["value"].as_f64() > Some(0.0)), "{per_layer:?}");
    assert!(v["budgets"].as_array().unwrap().iter().all(|b| b["pass"] == true));

    let v = json(&nce_in(&here, &["profiles", "show", "mcu-cortex-m7", "--json"]));
    assert_eq!(v["name"], "mcu-cortex-m7");
    assert_eq!(v["unit"]["clock_mhz"], 216.0);
    assert!(!v["budgets"].as_array().unwrap().is_empty());

    let v = json(&nce_in(&here, &["validate", "examples/resnet20-w2a2-fashion.nce", "--test-subset", "20", "--json"]));
    assert_eq!(v["images"], 20);
    assert!(v["accuracy"].as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)), "{v}");
    assert_eq!(v["exact"], true, "{v}");

    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("t.csv");
    let v = json(&nce_in(&here, &["measure", "-o", s(&table), "--widths-grid", "1.0", "--warmup", "0", "--repeats", "1", "--json"]));
    assert!(v["signatures"].as_u64() > Some(0) && v["predicted_base_us"].as_f64() > Some(0.0), "{v}");
}

#[cfg(feature = "train")]
#[test]
fn eval_json() {
    let v = json(&nce_in(&repo(), &["eval", "examples/resnet20-w2a2-fashion.ot", "--test-subset", "50", "--json"]));
    assert_eq!((v["images"].as_u64(), v["model"].as_str(), v["data"].as_str()), (Some(50), Some("resnet20"), Some("fashion-mnist")));
    assert!(v["accuracy"].as_f64() > Some(0.5), "{v}");
}

#[test]
fn outputs_create_their_parent_folders_and_accept_the_old_flag() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("a/b/c/table.csv");
    let args = ["--widths-grid", "1.0", "--warmup", "0", "--repeats", "1"];
    let o = nce_in(&repo(), &[&["measure", "-o", s(&table)][..], &args].concat());
    assert!(o.status.success() && table.is_file(), "{}", stderr(&o));
    // `--output` still works (hidden alias of `--out`).
    let old = dir.path().join("d/old.csv");
    let o = nce_in(&repo(), &[&["measure", "--output", s(&old)][..], &args].concat());
    assert!(o.status.success() && old.is_file(), "{}", stderr(&o));
    // A parent that is a file: the error names the output, never an internal temp file.
    std::fs::write(dir.path().join("file"), b"x").unwrap();
    let bad = dir.path().join("file/t.csv");
    let o = nce_in(&repo(), &[&["measure", "-o", s(&bad)][..], &args].concat());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // (fsutil's temp files are named `.t.csv.XXXXXX.tmp`.)
    assert!(stderr(&o).contains("file/t.csv") && !stderr(&o).contains(".t.csv."), "{}", stderr(&o));
}

#[test]
fn resnet18_on_28x28_follows_the_dataset() {
    let v = json(&nce_in(&repo(), &["cost", "--profile", "nce-flops-params", "--model", "resnet18", "--data", "fashion-mnist", "--json"]));
    assert_eq!((v["input"].as_str(), v["classes"].as_u64()), (Some("1x28x28"), Some(10)));
    let layers: Vec<&str> = v["metrics"][0]["per_layer"].as_array().unwrap().iter().map(|l| l["layer"].as_str().unwrap()).collect();
    assert!(!layers.contains(&"maxpool"), "a 28x28 input gets the small stem: {layers:?}");
    let net = nce::graph::build(nce::graph::ModelKind::Resnet18, "1x28x28".parse().unwrap(), 10, None, &nce::graph::BitConfig::uniform(2))
        .unwrap();
    assert_eq!(net.layers[0].out_shape.to_string(), "64x28x28");
    assert_eq!(net.layers.last().unwrap().out_shape.c, 10);
}

#[test]
fn missing_data_says_where_it_looked_and_how_to_get_it() {
    let empty = tempfile::tempdir().unwrap();
    let model = repo().join("examples/resnet20-w2a2-fashion.nce");
    let o = Command::new(env!("CARGO_BIN_EXE_nce"))
        .current_dir(empty.path())
        .env("NCE_DATA", empty.path().join("nothing"))
        .args(["validate", s(&model)])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("looked in") && err.contains("nothing/fashion-mnist") && err.contains("scripts/setup"), "{err}");
    let o = nce_in(empty.path(), &["validate", s(&model), "--data", "cifar10", "--data-root", s(empty.path())]);
    assert!(stderr(&o).contains("data_batch_1.bin") && stderr(&o).contains("cifar10"), "{}", stderr(&o));
}

/// Without `XDG_RUNTIME_DIR` (containers, sudo, cron) the Vulkan/EGL loaders complain on
/// stderr although nothing fails; nce gives them a private folder.
#[cfg(feature = "wgpu")]
#[test]
fn no_spurious_runtime_dir_error() {
    let o = Command::new(env!("CARGO_BIN_EXE_nce")).env_remove("XDG_RUNTIME_DIR").env_remove("RUST_LOG").arg("adapters").output().unwrap();
    let err = stderr(&o);
    assert!(!err.contains("XDG_RUNTIME_DIR") && !err.contains("ERROR"), "{err}");
}

/// `sensitivity` prints its table once, on stdout; progress (a bar on a terminal) never
/// repeats the per-layer results on stderr.
#[cfg(feature = "train")]
#[test]
fn sensitivity_prints_its_result_once() {
    let out = tempfile::tempdir().unwrap();
    let args = [
        "sensitivity",
        "examples/resnet20-fp32-fashion.ot",
        "--val-images",
        "20",
        "--fisher-batches",
        "1",
        "--calib-batch",
        "16",
        "--threads",
        "1",
        "-o",
    ];
    let o = nce_in(&repo(), &[&args[..], &[s(out.path())]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).matches("layer1.0.conv_b").count(), 1, "{}", stdout(&o));
    assert!(!stderr(&o).contains("layer1.0.conv_b"), "results repeated on stderr:\n{}", stderr(&o));
}

/// Text tables and listings fit 100 columns.
#[test]
fn tables_fit_100_columns() {
    for args in [
        &["cost", "--profile", "local-cpu", "--model", "resnet20"][..],
        &["cost", "--profile", "mobile-cpu-a76", "--model", "resnet50"],
        &["profiles", "list"],
        &["profiles", "show", "local-cpu"],
    ] {
        let o = nce_in(&repo(), args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let text = stdout(&o);
        let wide: Vec<&str> = text.lines().filter(|l| l.chars().count() > 100).collect();
        assert!(wide.is_empty(), "{args:?}: {wide:#?}");
    }
}

/// An error names each cause once (library errors quote their source in their own message).
#[test]
fn errors_name_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("p.toml");
    std::fs::copy(repo().join("hw-profiles/mcu-cortex-m7.toml"), &profile).unwrap();
    let o = nce_in(dir.path(), &["cost", "--profile", s(&profile), "--model", "resnet20", "--input", "1x28x28", "--classes", "10"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("tables/cortex-m7-insn.csv"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

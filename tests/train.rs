//! Training end to end on a small real subset: learning, exact resume, NaN handling, and
//! checkpoint errors.
#![cfg(all(feature = "cli", feature = "train"))]

mod common;

use common::train_args;
use nce::graph::ModelKind;
use nce::train::{self, checkpoint, Meta, TrainConfig, TrainError};
use std::path::Path;

fn config(out: &Path, bits: u8, epochs: usize) -> TrainConfig {
    let mut c = TrainConfig::new(ModelKind::Resnet20, "fashion-mnist", bits, epochs, out.to_path_buf());
    c.train_subset = Some(1024);
    c.test_subset = Some(500);
    c.batch_size = 64;
    c.lr = 0.05;
    c.warmup_epochs = 0;
    c.threads = 1;
    c
}

/// libtorch's random generator is process-wide: a test that seeds it and initialises a model
/// can be interleaved with another test's seeding, and two runs meant to be identical start from
/// different weights. In-process training tests therefore run one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn vars(path: &Path) -> Vec<(String, Vec<f32>)> {
    let ck = checkpoint::load::<Meta>(path).unwrap();
    let mut v: Vec<(String, Vec<f32>)> =
        ck.vars.iter().map(|(n, t)| (n.clone(), Vec::<f32>::try_from(&t.to_kind(tch::Kind::Float).flatten(0, -1)).unwrap())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn w2a2_learns_on_real_data() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), 2, 3);
    c.train_subset = Some(2048);
    let s = train::train(&c, false, false).unwrap();
    assert_eq!(s.epochs.len(), 3);
    assert!(s.epochs[2].train_loss < s.epochs[0].train_loss, "{:?}", s.epochs);
    assert!(s.final_test_acc > 0.45, "10 classes: chance is 0.10, got {}", s.final_test_acc);
    // The checkpoint evaluates to the same accuracy.
    let m = train::load_model(&s.checkpoint).unwrap();
    let test = nce::data::load("fashion-mnist", Path::new("data"), nce::data::Split::Test).unwrap().subset(500);
    let loader = nce::data::Loader::eval(&test, 250, tch::Device::Cpu).unwrap();
    assert_eq!(train::evaluate(&m.model, &loader).1, s.final_test_acc);
    let lines = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 3);
}

#[test]
fn resume_matches_an_uninterrupted_run() {
    let _serial = serial();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let ca = config(a.path(), 2, 2);
    train::train(&ca, false, false).unwrap();
    // Interrupted mid-epoch 1 (16 steps per epoch), then resumed.
    let mut cb = config(b.path(), 2, 2);
    cb.max_steps = Some(21);
    let s = train::train(&cb, false, false).unwrap();
    assert!(s.final_test_acc.is_nan(), "stopped early");
    cb.max_steps = None;
    train::train(&cb, true, false).unwrap();
    let (va, vb) = (vars(&a.path().join("checkpoint.ot")), vars(&b.path().join("checkpoint.ot")));
    assert_eq!(va.len(), vb.len());
    for ((na, xa), (nb, xb)) in va.iter().zip(&vb) {
        assert_eq!(na, nb);
        assert_eq!(xa, xb, "{na} differs after resume");
    }
    let ma = std::fs::read_to_string(a.path().join("metrics.jsonl")).unwrap();
    let mb = std::fs::read_to_string(b.path().join("metrics.jsonl")).unwrap();
    let strip = |s: &str| -> Vec<(String, String)> {
        s.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["train_loss"].to_string(), v["test_acc"].to_string())
            })
            .collect()
    };
    assert_eq!(strip(&ma), strip(&mb));
}

#[test]
fn resume_with_another_config_is_refused() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), 2, 1);
    c.max_steps = Some(2);
    train::train(&c, false, false).unwrap();
    c.lr = 0.5;
    let e = train::train(&c, true, false).err().unwrap();
    assert!(matches!(e, TrainError::Resume(_)), "{e}");
}

#[test]
fn nan_loss_stops_and_keeps_the_last_good_checkpoint() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), 32, 1);
    c.lr = 1e6;
    c.checkpoint_every = 1;
    let e = train::train(&c, false, false).expect_err("diverges");
    let msg = e.to_string();
    assert!(matches!(e, TrainError::NonFinite { .. }), "{msg}");
    assert!(msg.contains("checkpoint.ot"), "{msg}");
    for (name, v) in vars(&dir.path().join("checkpoint.ot")) {
        assert!(v.iter().all(|x| x.is_finite()), "{name} is not finite in the kept checkpoint");
    }
}

#[test]
fn corrupt_checkpoints_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.ot");
    std::fs::write(&p, b"not a checkpoint").unwrap();
    let e = train::load_model(&p).err().unwrap().to_string();
    assert!(e.contains("bad.ot") && e.contains("not a readable nce checkpoint"), "{e}");
    let e = train::load_model(&dir.path().join("missing.ot")).err().unwrap().to_string();
    assert!(e.contains("missing.ot"), "{e}");
}

#[test]
fn cli_training_survives_being_killed() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let args = |resume: bool| {
        let mut a = train_args(64, 640, 200, 2);
        a.push("--out".into());
        a.push(out.display().to_string());
        if resume {
            a.push("--resume".into());
        }
        a
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_nce")).args(args(false)).spawn().unwrap();
    let ckpt = out.join("checkpoint.ot");
    let started = std::time::Instant::now();
    while !ckpt.exists() && started.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL mid-epoch
    let _ = child.wait();
    assert!(ckpt.exists(), "no mid-epoch checkpoint within 120 s");
    let meta = checkpoint::load::<Meta>(&ckpt).unwrap().meta;
    assert_eq!(meta.epoch, 0, "killed during the first epoch");
    let o = Command::new(env!("CARGO_BIN_EXE_nce")).args(args(true)).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("final test accuracy"));
    let meta = checkpoint::load::<Meta>(&ckpt).unwrap().meta;
    assert_eq!((meta.epoch, meta.step), (1, 10), "finished the 10 steps of the epoch after resuming");
    assert_eq!(std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().count(), 1);
}

/// A run that diverges before its first checkpoint does not claim to keep one.
#[test]
fn nan_loss_before_any_checkpoint_says_none_was_written() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), 32, 1);
    c.lr = 1e12;
    c.checkpoint_every = 0;
    let e = train::train(&c, false, false).expect_err("diverges");
    let msg = e.to_string();
    assert!(matches!(e, TrainError::NonFinite { checkpoint: None, .. }), "{msg}");
    assert!(msg.contains("No checkpoint was written") && !msg.contains("is kept in"), "{msg}");
    assert!(!dir.path().join("checkpoint.ot").exists());
}

/// `--val-images N`: the last N training images are the evaluation set (never trained on), the
/// test set is not read for the reported accuracy, and an N that leaves nothing to train on is
/// a clear error.
#[test]
fn validation_split_is_the_tail_of_the_training_set() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), 32, 1);
    c.train_subset = Some(128);
    c.val_images = Some(100);
    let s = train::train(&c, false, false).unwrap();
    assert_eq!(s.test_images, 100);
    let m = train::load_model(&s.checkpoint).unwrap();
    let all = nce::data::load("fashion-mnist", "data".as_ref(), nce::data::Split::Train).unwrap();
    let tail = all.select(&(all.len() - 100..all.len()).collect::<Vec<_>>());
    let acc = train::evaluate(&m.model, &nce::data::Loader::eval(&tail, 500, tch::Device::Cpu).unwrap()).1;
    assert_eq!(acc, s.final_test_acc, "the reported accuracy is the tail's");
    c.val_images = Some(60_000);
    c.out = dir.path().join("too-many");
    let err = train::train(&c, false, false).unwrap_err();
    assert!(err.to_string().contains("--val-images 60000"), "{err}");
}

/// `--widen-init quiet`: the trained W2A2 ResNet-20 widened 1.5× in two slots (an inner conv and
/// a block output) classifies as before — copied channels with BatchNorm scale 1e-3 stay below
/// one 2-bit step — while random new channels would be live at once.
#[test]
fn quiet_widening_starts_as_the_trained_network() {
    let _g = serial();
    let ck = checkpoint::load::<Meta>(Path::new("examples/resnet20-w2a2-fashion.ot")).unwrap();
    let test = nce::data::load("fashion-mnist", "data".as_ref(), nce::data::Split::Test).unwrap().subset(500);
    let loader = nce::data::Loader::eval(&test, 500, tch::Device::Cpu).unwrap();
    let acc_of = |widths: &[usize], quiet: bool| {
        let net = nce::graph::build(ModelKind::Resnet20, ck.meta.net.input, 10, Some(widths), &ck.meta.config.bit_config()).unwrap();
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let model = nce::models::Model::new(&vs.root(), &net, &ck.meta.config.model_options).unwrap();
        train::inherit_vars(&vs, &ck.vars);
        let widened = if quiet { train::widen_quietly(&vs, &ck.vars) } else { 0 };
        (train::evaluate(&model, &loader).1, widened, vs)
    };
    let base = ck.meta.net.widths.clone();
    let (acc, _, _) = acc_of(&base, false);
    let mut wide = base.clone();
    let (a, b) = (3, 6); // layer1.1.conv_a and layer1.2.conv_b's slots
    wide[a] = base[a] * 3 / 2;
    wide[b] = base[b] * 3 / 2;
    let (quiet, n, vs) = acc_of(&wide, true);
    assert!(n >= 4, "conv and BatchNorm variables widened: {n}");
    assert!((quiet - acc).abs() <= 0.01, "quietly widened {quiet} vs trained {acc}");
    let vars = vs.variables();
    let name = &ck.meta.net.layers.iter().find(|l| l.width_slot == Some(a)).unwrap().name;
    let gamma = Vec::<f32>::try_from(&vars[&format!("{name}.bn.weight")]).unwrap();
    assert!(gamma[base[a]..].iter().all(|&g| (g as f64 - train::QUIET_SCALE).abs() < 1e-9), "{gamma:?}");
}

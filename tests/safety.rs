//! Hostile files and a hostile disk (issue 16): checkpoint integrity, clean one-line errors for
//! files that are not checkpoints, outputs that refuse to clobber inputs, links and devices, a
//! closed stdout, and training on a full disk. Each test fails on the code before the fix.
#![cfg(all(feature = "cli", feature = "train"))]

mod common;

use common::{nce, train_args};
use nce::train::{checkpoint, CheckpointError, Meta};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NCE: &str = env!("CARGO_BIN_EXE_nce");
/// A checkpoint written before checksums existed (the first shipped W2A2 example, kept as a fixture).
const LEGACY: &str = "tests/fixtures/legacy-no-checksum-resnet20-w2a2.ot";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A checkpoint written by the current code (`nce strip` goes through `checkpoint::save`).
fn fresh_checkpoint(dir: &Path) -> PathBuf {
    let p = dir.join("ck.ot");
    let o = nce(&["strip", LEGACY, "-o", s(&p)]);
    assert!(o.status.success(), "{}", stderr(&o));
    p
}

/// `nce eval` on `file` must fail with exactly one line that names the file and contains
/// `want`, and no trace of libtorch's C++ internals.
fn assert_one_clean_line(file: &Path, want: &str) {
    let o = nce(&["eval", s(file), "--test-subset", "10"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line, got:\n{err}");
    let name = file.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name) && err.contains(want), "expected the file name and `{want}`:\n{err}");
    for trace in ["frame #", "Exception raised from", "c10::", ".cpp"] {
        assert!(!err.contains(trace), "C++ internals leaked:\n{err}");
    }
}

/// Deterministic pseudo-random bytes (xorshift), so a failure reproduces.
fn random_bytes(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_flipped_byte_in_a_checkpoint_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = fresh_checkpoint(dir.path());
    let mut bytes = std::fs::read(&p).unwrap();
    // The middle of the file is tensor data (headers are a few hundred bytes of ~300 KiB); the
    // zip entry's CRC-32 catches it before libtorch parses anything.
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&p, bytes).unwrap();
    assert_one_clean_line(&p, "damaged archive");
}

/// A well-formed archive whose tensors were changed after the checksum was computed (a file
/// edited with libtorch, say): the SHA-256 catches what the zip CRCs cannot.
#[test]
fn an_altered_tensor_in_a_valid_archive_is_a_checksum_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let p = fresh_checkpoint(dir.path());
    let mut named = tch::Tensor::load_multi(&p).unwrap();
    let victim = named.iter().position(|(n, t)| !n.starts_with("__") && t.kind() == tch::Kind::Float).unwrap();
    named[victim].1 = &named[victim].1 + 1.0;
    tch::Tensor::save_multi(&named, &p).unwrap();
    assert_one_clean_line(&p, "checksum mismatch: the file is corrupt or was modified");
}

#[test]
fn a_truncated_checkpoint_is_one_clean_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = fresh_checkpoint(dir.path());
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_one_clean_line(&p, "not a readable nce checkpoint");
}

#[test]
fn a_text_file_is_one_clean_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.ot");
    std::fs::write(&p, "epoch 1: loss 0.4\n").unwrap();
    assert_one_clean_line(&p, "expected a checkpoint written by `nce train`");
    assert_one_clean_line(&p, "a text file");
}

#[test]
fn random_bytes_are_one_clean_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("noise.ot");
    std::fs::write(&p, random_bytes(8192, 0x9E37_79B9_7F4A_7C15)).unwrap();
    assert_one_clean_line(&p, "not a readable nce checkpoint");
    // The same behind a zip signature reaches libtorch's parser: its error must be trimmed.
    let mut zipish = b"PK\x03\x04".to_vec();
    zipish.extend(random_bytes(8192, 42));
    std::fs::write(&p, zipish).unwrap();
    assert_one_clean_line(&p, "not a readable nce checkpoint");
}

#[test]
fn an_exported_model_is_not_taken_for_a_checkpoint() {
    assert_one_clean_line(Path::new("examples/resnet20-w2a2-fashion.nce"), "exported nce model (.nce)");
}

#[test]
fn a_legacy_checkpoint_without_checksum_loads_with_a_warning() {
    let o = nce(&["eval", LEGACY, "--test-subset", "20"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("accuracy"));
    assert!(stderr(&o).contains("predates checksums"), "{}", stderr(&o));
}

#[test]
fn non_finite_weights_are_rejected_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let ck = checkpoint::load::<Meta>(Path::new(LEGACY)).unwrap();
    let mut vars = ck.vars;
    let victim = vars.iter().position(|(n, t)| n.ends_with("weight") && t.numel() > 1).expect("a weight");
    let t = vars[victim].1.detach().copy();
    let _ = t.flatten(0, -1).get(0).fill_(f64::NAN);
    vars[victim].1 = t;
    let p = dir.path().join("nan.ot");
    checkpoint::save(&p, &ck.meta, &vars, &[]).unwrap();
    match checkpoint::load::<Meta>(&p) {
        Err(e @ CheckpointError::NonFinite { .. }) => assert!(e.to_string().contains(&vars[victim].0), "{e}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a checkpoint with a NaN weight loaded"),
    }
}

#[test]
fn export_refuses_to_overwrite_its_own_input() {
    let dir = tempfile::tempdir().unwrap();
    let p = fresh_checkpoint(dir.path());
    let before = std::fs::read(&p).unwrap();
    let o = nce(&["export", s(&p), "-o", s(&p)]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("an input of this command"), "{}", stderr(&o));
    // The same file under another spelling, and as the C header.
    let other = dir.path().join("sub/../ck.ot");
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let o = nce(&["export", s(&p), "-o", s(&other)]);
    assert!(stderr(&o).contains("an input of this command"), "{}", stderr(&o));
    let o = nce(&["export", s(&p), "-o", s(&dir.path().join("m.nce")), "--c-header", s(&p)]);
    assert!(stderr(&o).contains("an input of this command"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&p).unwrap(), before, "the checkpoint was modified");
    assert!(!dir.path().join("m.nce").exists(), "refused before writing anything");
}

#[cfg(unix)]
#[test]
fn export_refuses_links_fifos_and_folders() {
    let dir = tempfile::tempdir().unwrap();
    let p = fresh_checkpoint(dir.path());
    let target = dir.path().join("target.nce");
    std::fs::write(&target, b"keep").unwrap();
    let link = dir.path().join("link.nce");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let o = nce(&["export", s(&p), "-o", s(&link)]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("symbolic link") && stderr(&o).contains("link.nce"), "{}", stderr(&o));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");

    let fifo = dir.path().join("fifo.nce");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let o = nce(&["export", s(&p), "-o", s(&fifo)]);
    assert!(stderr(&o).contains("FIFO"), "{}", stderr(&o));
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO was replaced");

    let folder = dir.path().join("folder.nce");
    std::fs::create_dir(&folder).unwrap();
    let o = nce(&["export", s(&p), "-o", s(&folder)]);
    assert!(stderr(&o).contains("a directory"), "{}", stderr(&o));
    let leftovers: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n.to_string_lossy().ends_with(".tmp")).collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn cost_json_into_a_closed_pipe_ends_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader); // the reader (`head -1`) is gone before nce writes a byte
    let o = Command::new(NCE)
        .args(["cost", "--profile", "hw-profiles/npu-int2-array.toml", "--model", "resnet20", "--json"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

/// Every printing command ends quietly when the reader has gone (they print with `println!`,
/// which panics on a broken pipe unless the CLI catches it).
#[test]
fn printing_commands_into_a_closed_pipe_end_quietly() {
    for args in [&["profiles", "list"][..], &["plugins"], &["profiles", "show", "npu-int2-array"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = Command::new(NCE).args(args).stdout(writer).stderr(std::process::Stdio::piped()).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{args:?}: {}", stderr(&o));
    }
}

/// Training whose second checkpoint hits a full disk. The disk is a real tmpfs, sized between
/// one and two checkpoints, mounted in a private user and mount namespace (`unshare -rm`, no
/// privileges needed; chmod would not do as root, and the failure must be a real ENOSPC from
/// the kernel): the first checkpoint fits, the second cannot be written next to it. Skipped,
/// with a note, where the kernel does not allow unprivileged namespaces.
#[test]
fn training_on_a_full_disk_stops_cleanly_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let train = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut a = train_args(128, 256, 100, 1);
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push("--out".into());
        a.push(out.display().to_string());
        a
    };
    // The size of one checkpoint of this run.
    let probe = dir.path().join("probe");
    let o = Command::new(NCE).args(train(&probe, &["--max-steps", "1"])).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let size = std::fs::metadata(probe.join("checkpoint.ot")).unwrap().len();
    let tmpfs = (size + size / 2).div_ceil(4096) * 4096;

    let (mnt, keep) = (dir.path().join("mnt"), dir.path().join("keep"));
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&keep).unwrap();
    let args: Vec<String> = train(&mnt.join("run"), &[]).iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "mount -t tmpfs -o size={tmpfs} tmpfs '{m}' || exit 0\n'{NCE}' {} 2>'{k}/stderr'; echo $? >'{k}/rc'\ncp -a '{m}/.' '{k}/'",
        args.join(" "),
        m = mnt.display(),
        k = keep.display()
    );
    let ran = Command::new("unshare").args(["--user", "--map-root-user", "--mount", "sh", "-c", &script]).status();
    if !keep.join("rc").exists() {
        eprintln!("skipped: no unprivileged tmpfs here ({ran:?})");
        return;
    }
    let rc = std::fs::read_to_string(keep.join("rc")).unwrap();
    let err = std::fs::read_to_string(keep.join("stderr")).unwrap();
    assert_eq!(rc.trim(), "1", "exit status (134 is the libtorch abort):\n{err}");
    assert!(err.contains("checkpoint.ot") && err.contains("No space left on device"), "{err}");
    assert!(!err.contains("terminate called"), "{err}");
    let names: Vec<String> =
        std::fs::read_dir(keep.join("run")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "temp files left: {names:?}");
    let meta = checkpoint::load::<Meta>(&keep.join("run/checkpoint.ot")).expect("the previous checkpoint still loads").meta;
    assert_eq!(meta.step, 1, "the checkpoint of step 1 is kept");
}

/// A full disk behind `> file` is a failed write: one line naming standard output and the OS
/// error, exit 1 (not a panic, not a usage error).
#[test]
fn cost_json_to_a_full_disk_exits_1() {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let o = Command::new(NCE)
        .args(["cost", "--profile", "hw-profiles/nce-flops-params.toml", "--model", "resnet20", "--json"])
        .stdout(full)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("writing to standard output") && err.contains("No space left on device"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

//! Data-parallel training under `mpirun` (docs/distributed.md): two ranks of one thread each
//! follow one process of two threads with the same global batch, seed and BatchNorm groups, a
//! rank killed with SIGKILL stops the whole job at once without damaging the checkpoint, and
//! rerunning the same command resumes and ends where the uninterrupted run ended.
//!
//! Needs the `mpi` feature and Open MPI's `mpirun`: `cargo test --features mpi --test distributed`.
//! Without either, the test says so and passes.
#![cfg(all(feature = "cli", feature = "train"))]

use nce::train::EpochMetrics;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// 4 steps of 64 images per epoch, 3 epochs, a checkpoint every 2 steps, ghost BatchNorm over
/// the two halves of each batch (what each rank normalises).
const TRAIN: &str = "train --model resnet20 --data fashion-mnist --bits 2 --epochs 3 --batch-size 64 --train-subset 256 \
                     --test-subset 200 --bn-groups 2 --seed 5 --checkpoint-every 2 --quiet";

fn mpirun() -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("mpirun")).find(|p| p.is_file())
}

/// `nce TRAIN --threads T --out OUT [extra]`, as one process or under `mpirun -np 2`.
fn command(ranks: usize, threads: usize, out: &Path, extra: &[&str]) -> Command {
    let nce = env!("CARGO_BIN_EXE_nce");
    let mut c = if ranks > 1 {
        let mut c = Command::new(mpirun().expect("checked by the caller"));
        c.args(["-np", &ranks.to_string(), "--oversubscribe", "--bind-to", "none", nce]);
        c
    } else {
        Command::new(nce)
    };
    c.args(TRAIN.split_whitespace()).args(["--threads", &threads.to_string(), "--out"]).arg(out).args(extra);
    // Containers often run as root and forbid the cross-process copy Open MPI tries first.
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1").env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    c
}

fn run(mut c: Command) -> Output {
    let o = c.output().expect("start the run");
    assert!(o.status.success(), "{c:?} failed:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    o
}

fn metrics(out: &Path) -> Vec<EpochMetrics> {
    std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Train losses within `rel` relative, test accuracies within one test image in 200.
fn assert_close(a: &[EpochMetrics], b: &[EpochMetrics], rel: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: epochs logged");
    for (x, y) in a.iter().zip(b) {
        let d = (x.train_loss - y.train_loss).abs() / x.train_loss.abs();
        assert!(d <= rel, "{what}: epoch {} train loss {} vs {} ({d:.2e} relative)", x.epoch, x.train_loss, y.train_loss);
        assert!(
            (x.test_acc - y.test_acc).abs() <= 1.0 / 200.0 + 1e-9,
            "{what}: epoch {} test acc {} vs {}",
            x.epoch,
            x.test_acc,
            y.test_acc
        );
    }
}

/// The pids of `parent`'s child processes (the ranks `mpirun` started on this machine).
fn children(parent: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so split after its closing paren.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(parent) {
            kids.push(pid);
        }
    }
    kids.sort();
    kids
}

#[test]
fn two_ranks_follow_one_process_and_resume_after_a_rank_is_killed() {
    if !cfg!(feature = "mpi") {
        eprintln!("skipped: built without the `mpi` feature (cargo test --features mpi --test distributed)");
        return;
    }
    if mpirun().is_none() {
        eprintln!("skipped: no `mpirun` on PATH (scripts/setup installs Open MPI)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (one, two, killed) = (dir.path().join("one"), dir.path().join("two"), dir.path().join("killed"));
    run(command(1, 2, &one, &[]));
    run(command(2, 1, &two, &[]));
    let (m1, m2) = (metrics(&one), metrics(&two));
    assert_eq!(m1.len(), 3);
    assert_close(&m1, &m2, 1e-3, "2 ranks vs 1 process");

    // Kill rank 1 as soon as the first checkpoint exists: the job must end within seconds.
    let mut job = command(2, 1, &killed, &["--resume"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let t0 = Instant::now();
    while !killed.join("checkpoint.ot").is_file() {
        assert!(job.try_wait().unwrap().is_none(), "the job ended before its first checkpoint");
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint after 2 minutes");
        std::thread::sleep(Duration::from_millis(5));
    }
    let ranks = children(job.id());
    assert_eq!(ranks.len(), 2, "mpirun's children: {ranks:?}");
    Command::new("kill").args(["-9", &ranks[1].to_string()]).status().unwrap();
    let killed_at = Instant::now();
    let status = loop {
        if let Some(s) = job.try_wait().unwrap() {
            break s;
        }
        assert!(killed_at.elapsed() < Duration::from_secs(10), "the job still runs 10 s after a rank was killed");
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::io::read_to_string(job.stderr.take().unwrap()).unwrap();
    assert!(!status.success(), "the job succeeded although a rank was killed");
    assert!(stderr.contains("signal 9"), "no word of the killed rank:\n{stderr}");
    let stopped_at = metrics(&killed).len();
    nce::train::load_model(&killed.join("checkpoint.ot")).expect("the checkpoint left behind is whole");

    // The same command again resumes; the run ends where the uninterrupted one did.
    run(command(2, 1, &killed, &["--resume"]));
    let resumed = metrics(&killed);
    assert!(stopped_at < 3, "the kill came after the last epoch");
    assert_close(&m2, &resumed, 1e-6, "resumed vs uninterrupted 2-rank run");
}

//! Data-parallel training under `mpirun` (docs/distributed.md): two ranks of one thread each
//! take exactly the steps of one process of one thread that splits every batch into two
//! gradient shards (`--grad-shards 2`, the same BatchNorm groups): the same losses, bit for bit,
//! at every one of 30 steps; a rank killed with SIGKILL stops the whole job at once without
//! damaging the checkpoint, and rerunning the same command resumes and ends exactly where the
//! uninterrupted run ended. `mpirun -np 2 nce search` and `nce search --grad-shards 2` log the
//! same epochs and expansions, bit for bit, and write the same `arch.toml`. Without MPI: two gradient shards compute what one batch with the
//! same BatchNorm groups computes, up to floating-point summation order.
//!
//! The MPI test needs the `mpi` feature and Open MPI's `mpirun`:
//! `cargo test --features mpi --test distributed`. Without either, it says so and passes.
#![cfg(all(feature = "cli", feature = "train"))]

use nce::train::metrics::StepRecord;
use nce::train::EpochMetrics;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// 15 steps of 16 images per epoch, 2 epochs, a checkpoint every 5 steps and a logged loss every
/// step, ghost BatchNorm over the two halves of each batch (what each rank normalises).
const TRAIN: &str = "train --model resnet20 --data fashion-mnist --bits 2 --epochs 2 --batch-size 16 --train-subset 240 \
                     --test-subset 100 --bn-groups 2 --seed 5 --checkpoint-every 5 --log-every 1 --quiet";
const STEPS: usize = 30;
/// The first epoch of [`TRAIN`], cut to 4 steps.
const SHORT: &str = "train --model resnet20 --data fashion-mnist --bits 2 --epochs 1 --batch-size 16 --train-subset 64 \
                     --test-subset 100 --bn-groups 2 --seed 5 --log-every 1 --quiet";

/// 2 epochs of 4 weight and 4 architecture steps of 16 images, a threshold that some slots pass
/// in the first epoch and others only in the second.
const SEARCH: &str = "search --profile hw-profiles/nce-flops-params.toml --epochs 2 --train-subset 128 --test-subset 100 \
                      --val-subset 16 --batch-size 16 --seed 0 --arch-lr 0.01 --threshold 0.345 --bn-groups 2 --quiet";

fn mpirun() -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("mpirun")).find(|p| p.is_file())
}

/// `nce TRAIN --threads T --out OUT [extra]`, as one process or under `mpirun -np 2`.
fn command(ranks: usize, threads: usize, out: &Path, extra: &[&str]) -> Command {
    command_of(TRAIN, ranks, threads, out, extra)
}

fn command_of(train: &str, ranks: usize, threads: usize, out: &Path, extra: &[&str]) -> Command {
    let nce = env!("CARGO_BIN_EXE_nce");
    let mut c = if ranks > 1 {
        let mut c = Command::new(mpirun().expect("checked by the caller"));
        c.args(["-np", &ranks.to_string(), "--oversubscribe", "--bind-to", "none", nce]);
        c
    } else {
        Command::new(nce)
    };
    c.args(train.split_whitespace()).args(["--threads", &threads.to_string(), "--out"]).arg(out).args(extra);
    // Containers often run as root and forbid the cross-process copy Open MPI tries first.
    // Passive OpenMP waits: spinning threads of two processes on shared cores slow both.
    c.env("OMP_WAIT_POLICY", "PASSIVE");
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

/// Train and test loss and accuracy of every epoch (not its timing).
fn results(out: &Path) -> Vec<[f64; 4]> {
    metrics(out).iter().map(|m| [m.train_loss, m.train_acc, m.test_loss, m.test_acc]).collect()
}

fn steps(out: &Path) -> Vec<StepRecord> {
    nce::train::metrics::read_steps(&out.join("steps.jsonl")).unwrap()
}

fn assert_loss_close(step: &StepRecord, other: &StepRecord, rel: f64, what: &str) {
    assert_eq!(step.step, other.step, "{what}");
    let d = (step.loss - other.loss).abs() / step.loss.abs();
    assert!(d <= rel, "{what}: step {} loss {} vs {} ({d:.2e} relative, allowed {rel:.0e})", step.step, step.loss, other.loss);
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
    run(command(1, 1, &one, &["--grad-shards", "2"]));
    run(command(2, 1, &two, &[]));
    let (s1, s2) = (steps(&one), steps(&two));
    assert_eq!((s1.len(), s2.len()), (STEPS, STEPS), "logged steps");
    // Two operands of an all-reduce sum add in either order to the same bits, so the ranks
    // compute exactly what the two shards of one process compute.
    for (a, b) in s1.iter().zip(&s2) {
        assert_loss_close(a, b, 0.0, "2 ranks vs 1 process of 2 gradient shards");
    }
    assert_eq!(results(&one), results(&two), "epoch losses and accuracies (the test loss reads the BatchNorm running statistics)");

    // Kill rank 1 as soon as the first checkpoint exists: the job must end within seconds.
    let mut job = command(2, 1, &killed, &["--resume"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let t0 = Instant::now();
    while !killed.join("checkpoint.ot").is_file() {
        assert!(job.try_wait().unwrap().is_none(), "the job ended before its first checkpoint");
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint after 2 minutes");
        std::thread::sleep(Duration::from_millis(2));
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
    assert!(steps(&killed).len() < STEPS, "the kill came after the last step");
    nce::train::load_model(&killed.join("checkpoint.ot")).expect("the checkpoint left behind is whole");

    // The same command again resumes; the run ends exactly where the uninterrupted one did.
    run(command(2, 1, &killed, &["--resume"]));
    let resumed = steps(&killed);
    assert_eq!(resumed.len(), STEPS, "steps logged by the killed and the resumed run");
    for (a, b) in s2.iter().zip(&resumed) {
        assert_loss_close(a, b, 0.0, "resumed vs uninterrupted 2 ranks");
    }
    let acc = |m: Vec<EpochMetrics>| m.iter().map(|m| m.test_acc).collect::<Vec<_>>();
    assert_eq!(acc(metrics(&two)), acc(metrics(&killed)), "test accuracies per epoch");
}

/// One process, no MPI: two gradient shards (forward and backward of each half in turn, the
/// gradients and the BatchNorm running statistics summed by shares) compute what one pass over
/// the whole batch with the same two BatchNorm groups computes, up to the order of floating-point
/// sums. A shard loss not scaled by its share doubles the first update and moves the second
/// loss by far more than 1e-5; running statistics updated twice per step move the test loss.
#[test]
fn two_gradient_shards_compute_one_batch_with_two_bn_groups() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, shards) = (dir.path().join("whole"), dir.path().join("shards"));
    run(command_of(SHORT, 1, 1, &whole, &[]));
    run(command_of(SHORT, 1, 1, &shards, &["--grad-shards", "2"]));
    let (a, b) = (steps(&whole), steps(&shards));
    assert_eq!((a.len(), b.len()), (4, 4), "logged steps");
    for (i, rel) in [(0, 1e-6), (1, 1e-5), (2, 1e-5), (3, 1e-5)] {
        assert_loss_close(&a[i], &b[i], rel, "2 gradient shards vs 1 batch");
    }
    let (ra, rb) = (results(&whole), results(&shards));
    let rel = (ra[0][2] - rb[0][2]).abs() / ra[0][2];
    assert!(rel < 1e-5, "test loss {} vs {} ({rel:.1e} relative)", ra[0][2], rb[0][2]);
}

#[test]
fn two_search_ranks_follow_one_process_of_two_gradient_shards() {
    if !cfg!(feature = "mpi") || mpirun().is_none() {
        eprintln!("skipped: needs the `mpi` feature and `mpirun` (cargo test --features mpi --test distributed)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    run(command_of(SEARCH, 1, 1, &one, &["--grad-shards", "2"]));
    run(command_of(SEARCH, 2, 1, &two, &[]));
    let log = |out: &Path| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(out.join("search.jsonl")).unwrap();
        text.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("seconds");
                v
            })
            .collect()
    };
    let (a, b) = (log(&one), log(&two));
    assert_eq!(a, b, "search logs (losses, probabilities, widths, expansions)");
    let events: Vec<usize> = a.iter().map(|e| e["expansions"].as_array().unwrap().len()).collect();
    assert!(events.iter().all(|&n| n > 0) && events[0] < a[0]["widths"].as_array().unwrap().len(), "expansions per epoch: {events:?}");
    let arch = |out: &Path| std::fs::read_to_string(out.join("arch.toml")).unwrap();
    assert_eq!(arch(&one), arch(&two), "arch.toml");
}

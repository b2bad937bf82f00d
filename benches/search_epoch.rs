//! One NCE search epoch against one W2A2 QAT epoch of the base ResNet-20 on the same training
//! images (Fashion-MNIST, batch 128), timed alternately in the same process so machine noise
//! hits both alike. A search epoch does a weight step on one half and an architecture step on
//! the other half of the images (both forward + backward through the supernet); the QAT epoch
//! trains on all of them. Both evaluate on the same test images. Goal: ratio ≤ 2.0.
//!
//! `cargo bench --bench search_epoch [-- THREADS IMAGES ROUNDS]` (needs `scripts/setup`'s data)

use nce::graph::ModelKind;
use nce::search::{self, SearchConfig};
use nce::train::{self, TrainConfig};
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let threads: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1);
    let images: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2048);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().expect("temp dir");
    let (mut s_times, mut t_times) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let mut t = TrainConfig::new(ModelKind::Resnet20, "fashion-mnist", 2, 1, tmp.path().join(format!("train{r}")));
        t.data_root = root.join("data");
        t.train_subset = Some(images);
        t.test_subset = Some(500);
        t.threads = threads;
        t.warmup_epochs = 0;
        let started = Instant::now();
        train::train(&t, false, false).expect("QAT epoch");
        t_times.push(started.elapsed().as_secs_f64());

        let mut s = SearchConfig::new(
            ModelKind::Resnet20,
            root.join("hw-profiles/npu-int2-array.toml"),
            "fashion-mnist",
            1,
            tmp.path().join(format!("search{r}")),
        );
        s.data_root = root.join("data");
        s.train_subset = Some(images);
        s.test_subset = Some(500);
        s.threads = threads;
        let started = Instant::now();
        search::search(&s, false, false).expect("search epoch");
        s_times.push(started.elapsed().as_secs_f64());
        eprintln!("round {}: QAT epoch {:.1} s, search epoch {:.1} s", r + 1, t_times[r], s_times[r]);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (s, t) = (med(&mut s_times), med(&mut t_times));
    println!("threads {threads}, {images} training images, {rounds} rounds (median)");
    println!("QAT epoch     {t:.1} s ({:.0} img/s)", images as f64 / t);
    println!("search epoch  {s:.1} s ({:.0} img/s)", images as f64 / s);
    println!("search / QAT  {:.2} (goal <= 2.0)", s / t);
}

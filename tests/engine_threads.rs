//! The CPU engine's threads: the committed ResNet-20 and MobileNetV2 give the same logits, bit
//! for bit, on 1, 2 and 3 threads (each conv of one image split over the pool, and a batch's
//! images spread over it), and handing work to the persistent pool costs microseconds.

use nce::engine::cpu::Cpu;
use nce::engine::plan::QModel;
use nce::engine::{open, BackendKind, BackendOptions, Conv2d, ConvWeights, PackedW2, QTensor, Requant};
use std::path::Path;
use std::time::Instant;

const MODELS: [&str; 2] = ["examples/resnet20-w2a2-fashion.nce", "examples/mobilenetv2-w2a2-fashion.nce"];

fn test_images(n: usize) -> Vec<u8> {
    nce::data::load("fashion-mnist", Path::new("data"), nce::data::Split::Test).unwrap().subset(n).images
}

#[test]
fn every_layer_is_the_same_on_1_2_and_3_threads() {
    // The fastest kernels of this machine (every path's split is checked against the reference
    // at odd sizes in tests/engine_kernels.rs); one image: debug builds are slow.
    let image = test_images(1);
    for file in MODELS {
        let model = QModel::load(Path::new(file)).unwrap();
        let one = Cpu::best(1);
        let want = model.run_layers(&one, &model.prepare(&one).unwrap(), &image).unwrap();
        for threads in [2, 3] {
            // Threshold 0: every conv, down to the last 1×1 on 1×1 pixels, is split.
            let cpu = Cpu::best(threads);
            let got = model.run_layers(&cpu, &model.prepare(&cpu).unwrap(), &image).unwrap();
            assert!(got == want, "{file}, {} threads: a layer differs from 1 thread", threads);
        }
    }
}

#[test]
fn the_cpu_backend_gives_the_same_logits_on_every_thread_count() {
    let images = test_images(3);
    for file in MODELS {
        let model = QModel::load(Path::new(file)).unwrap();
        let per = model.net().input.numel();
        let run = |threads: usize, images: &[u8]| {
            let opts = BackendOptions { layer_threads: threads, ..Default::default() };
            open(BackendKind::Cpu, &opts).unwrap().prepare(&model).unwrap().run_batch(images).unwrap()
        };
        // A batch of three (images spread over an odd count), then one image (its layers split
        // where big enough for `SPLIT_MIN_MACS_PER_THREAD`).
        let want = run(1, &images);
        assert_eq!(want.len(), 3);
        assert_eq!(run(2, &images), want, "{file}: 2 threads, 3 images");
        assert_eq!(run(3, &images[..per]), want[..1], "{file}: 3 threads, 1 image");
    }
}

/// One 1×1 conv over 64 pixels of 1 channel: little work, so the difference between 1 and 2
/// threads is the dispatch.
fn tiny_conv() -> (Conv2d, QTensor) {
    let w = PackedW2::pack(1, 1, &[1]).unwrap();
    let conv = Conv2d::new(1, 1, 1, 0, ConvWeights::W2(w), Requant { m: vec![1], b: vec![0], shift: 0, qmax: 3 }).unwrap();
    (conv, QTensor::new(1, 64, 1, vec![1; 64]).unwrap())
}

/// Median µs of a call of `cpu` on the tiny conv, over many calls, made on a pool worker as
/// [`QModel::run_layers`] makes them.
fn median_call_us(cpu: &Cpu) -> f64 {
    let (conv, x) = tiny_conv();
    let p = cpu.prepare(&conv).unwrap();
    let mut t: Vec<f64> = cpu.install(|| {
        (0..400)
            .map(|_| {
                let s = Instant::now();
                std::hint::black_box(cpu.conv2d(&p, &x, None).unwrap());
                s.elapsed().as_secs_f64() * 1e6
            })
            .collect()
    });
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

#[test]
fn a_split_call_costs_microseconds_not_a_thread_spawn() {
    let one = median_call_us(&Cpu::best(1));
    let two = median_call_us(&Cpu::best(2));
    let dispatch = two - one;
    println!("empty dispatch to 1 pool worker: {dispatch:.1} µs per call (1 thread {one:.1} µs, 2 threads {two:.1} µs)");
    // Spawning a thread per call cost ~25 µs idle; handing a range to the pool costs ~1 µs in
    // release builds, and where no worker is free the splitting worker runs it itself, so even
    // a loaded machine (the suite's is shared) stays far under the spawn.
    assert!(dispatch < 25.0, "dispatching to the pool took {dispatch:.1} µs per call");
}

//! The backend seam (`nce::engine::Backend`): every backend opened through `engine::open`
//! computes the CPU engine's logits bit for bit on the committed model, as
//! `engine::compare` reports them, and names itself and its device. (No libtorch needed.)

use nce::engine::plan::QModel;
use nce::engine::{compare, open, BackendKind, BackendOptions};
use std::path::Path;

const MODEL: &str = "examples/resnet20-w2a2-fashion.nce";

fn test_images(n: usize) -> nce::data::Dataset {
    nce::data::load("fashion-mnist", Path::new("data"), nce::data::Split::Test).unwrap().subset(n)
}

/// `kind` against the CPU engine over `n` images.
fn check(kind: BackendKind, n: usize) {
    let model = QModel::load(Path::new(MODEL)).unwrap();
    let ds = test_images(n);
    let opts = BackendOptions { image_threads: 2, max_batch: Some(3), ..Default::default() };
    let backend = open(kind, &opts).unwrap_or_else(|e| panic!("{kind}: {e}"));
    let cpu = open(BackendKind::Cpu, &opts).unwrap();
    assert_eq!(backend.kind(), kind);
    assert!(!backend.name().is_empty() && !backend.device().is_empty());
    let (b, c) = (backend.prepare(&model).unwrap(), cpu.prepare(&model).unwrap());
    let r = compare(&*b, &*c, &ds, (&backend.name(), &cpu.name())).unwrap();
    assert!(r.exact(), "{kind}: {r:?}");
    assert_eq!((r.images, r.logits, r.argmax_agree), (n, n * 10, n));
    assert_eq!(r.a_correct, r.b_correct);
}

#[test]
fn cpu_kinds_agree_through_the_seam() {
    // The scalar reference is slow in debug builds: a few images.
    check(BackendKind::CpuScalar, 6);
    check(BackendKind::CpuSwar, 20);
    check(BackendKind::Cpu, 20);
}

/// The forced SIMD kinds (`cpu-avx2`, `cpu-avx512`) agree where this CPU has them, and name the
/// missing instructions where it does not.
#[test]
fn forced_simd_kinds_agree_or_refuse_clearly() {
    let opts = BackendOptions::default();
    for kind in [BackendKind::CpuAvx2, BackendKind::CpuAvx512] {
        let isa = kind.cpu_isa().unwrap();
        if isa.is_available() {
            check(kind, 20);
        } else {
            let e = open(kind, &opts).err().unwrap_or_else(|| panic!("{kind} opened without {isa}")).to_string();
            assert!(e.contains(&isa.to_string()) && e.contains("not available"), "{e}");
            eprintln!("note: {kind} not on this CPU ({e})");
        }
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_agrees_through_the_seam() {
    // lavapipe is slow: a few images, several submissions of at most 3.
    check(BackendKind::Wgpu, 8);
}

/// The C runtime on both emulated targets (needs `scripts/setup`'s cross compilers and QEMU).
#[test]
fn qemu_backends_agree_through_the_seam() {
    check(BackendKind::QemuCortexM7, 4);
    check(BackendKind::QemuAarch64, 4);
}

#[test]
fn backend_kinds_parse_and_print_their_cli_names() {
    for k in BackendKind::ALL {
        assert_eq!(k.to_string().parse::<BackendKind>().unwrap(), k);
    }
    let e = "gpu".parse::<BackendKind>().unwrap_err().to_string();
    assert!(e.contains("unknown backend `gpu`"), "{e}");
}

#[test]
fn compare_counts_differences() {
    use nce::engine::{BackendError, PreparedModel};
    struct Fixed(Vec<Vec<i32>>);
    impl PreparedModel for Fixed {
        fn run_batch(&self, _: &[u8]) -> Result<Vec<Vec<i32>>, BackendError> {
            Ok(self.0.clone())
        }
    }
    let ds = nce::data::Dataset {
        name: "t".into(),
        images: vec![0; 3 * 784],
        labels: vec![0, 1, 1],
        shape: nce::graph::Shape::new(1, 28, 28),
        classes: 2,
    };
    let a = Fixed(vec![vec![5, 1], vec![0, 2], vec![3, 3]]);
    let b = Fixed(vec![vec![5, 1], vec![4, 2], vec![3, 9]]);
    let r = compare(&a, &b, &ds, ("a", "b")).unwrap();
    assert_eq!((r.logits, r.differing_logits, r.differing_images, r.argmax_agree, r.max_deviation), (6, 2, 2, 1, 6));
    assert_eq!((r.a_correct, r.b_correct), (2, 2));
    assert!(!r.exact());
    let short = Fixed(vec![vec![1, 2]]);
    assert!(compare(&short, &b, &ds, ("short", "b")).unwrap_err().to_string().contains("short returned 1 results for 3 images"));
}

/// One image at a time on two threads (split or not, as `prepare` measured) gives the logits of
/// one thread, and the prepared model says which way it runs single images.
#[test]
fn single_images_on_two_threads_agree_and_say_how_they_ran() {
    let model = QModel::load(Path::new(MODEL)).unwrap();
    let ds = test_images(5);
    let two = open(BackendKind::Cpu, &BackendOptions { layer_threads: 2, image_threads: 2, ..Default::default() }).unwrap();
    let one = open(BackendKind::Cpu, &BackendOptions { layer_threads: 1, image_threads: 1, ..Default::default() }).unwrap();
    let (p2, p1) = (two.prepare(&model).unwrap(), one.prepare(&model).unwrap());
    for i in 0..ds.len() {
        let image = ds.image(i);
        assert_eq!(p2.run_batch(image).unwrap(), p1.run_batch(image).unwrap(), "image {i}");
    }
    let d = p2.details();
    let how = d.iter().find(|(k, _)| k == "single image").map(|(_, v)| v.as_str()).unwrap_or_else(|| panic!("{d:?}"));
    assert!(how.starts_with("split over the threads (") || how.starts_with("on one thread ("), "{how}");
    assert!(how.contains("measured at prepare") || how.contains("not timed"), "{how}");
    assert!(!p1.details().iter().any(|(k, _)| k == "single image"));
}

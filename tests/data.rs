//! Dataset layer: IDX and CIFAR readers on generated good and bad files, splits and permutations,
//! the real MNIST / Fashion-MNIST files in data/ (from scripts/setup), and the tch batch loader.
#![cfg(feature = "train")]

use nce::data::{self, cifar, idx, permutation, Augment, DataError, Dataset, Split};
use nce::graph::Shape;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

// ------------------------------------------------------------------ helpers

/// idx3 bytes written by hand (independent of the crate's encoder).
fn idx3(count: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 3];
    for d in [count, rows, cols] {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(pixels);
    v
}

fn idx1(labels: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 1];
    v.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    v.extend_from_slice(labels);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, bytes).unwrap();
    p
}

/// `n` images of `rows × cols` whose pixels are a function of (image, position).
fn pixels(n: usize, rows: usize, cols: usize) -> Vec<u8> {
    (0..n * rows * cols).map(|i| (i * 7 % 251) as u8).collect()
}

/// The error's message must name `path`.
fn assert_names(err: &DataError, path: &Path) {
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "`{msg}` does not name {}", path.display());
}

// ------------------------------------------------------------------ IDX

#[test]
fn idx_round_trip_raw_and_gz() {
    let dir = tempfile::tempdir().unwrap();
    let px = pixels(5, 4, 3);
    let labels = [0u8, 9, 3, 3, 1];
    for zipped in [false, true] {
        let enc = |b: Vec<u8>| if zipped { gz(&b) } else { b };
        let ip = write(dir.path(), &format!("i{zipped}"), &enc(idx3(5, 4, 3, &px)));
        let lp = write(dir.path(), &format!("l{zipped}"), &enc(idx1(&labels)));
        let (im, lb) = idx::read_pair(&ip, &lp, 10).unwrap();
        assert_eq!((im.count, im.rows, im.cols), (5, 4, 3));
        assert_eq!(im.pixels, px);
        assert_eq!(lb, labels);
    }
    // The crate's encoder writes what the reader reads.
    assert_eq!(idx::encode_images(5, 4, 3, &px), idx3(5, 4, 3, &px));
    assert_eq!(idx::encode_labels(&labels), idx1(&labels));
}

#[test]
fn idx_truncated_and_trailing() {
    let dir = tempfile::tempdir().unwrap();
    let good = idx3(2, 4, 4, &pixels(2, 4, 4));
    for zipped in [false, true] {
        let enc = |b: &[u8]| if zipped { gz(b) } else { b.to_vec() };
        let short = write(dir.path(), &format!("short{zipped}"), &enc(&good[..good.len() - 1]));
        let err = idx::read_images(&short).unwrap_err();
        assert!(matches!(err, DataError::Truncated { expected: 48, found: 47, .. }), "{err}");
        assert_names(&err, &short);

        let header_only = write(dir.path(), &format!("hdr{zipped}"), &enc(&good[..10]));
        let err = idx::read_images(&header_only).unwrap_err();
        assert!(matches!(err, DataError::Truncated { .. }), "{err}");
        assert_names(&err, &header_only);

        let mut long = good.clone();
        long.extend_from_slice(b"junk");
        let long = write(dir.path(), &format!("long{zipped}"), &enc(&long));
        let err = idx::read_images(&long).unwrap_err();
        assert!(matches!(err, DataError::TrailingBytes { expected: 48, found: 52, .. }), "{err}");
        assert_names(&err, &long);
    }
    let empty = write(dir.path(), "empty", b"");
    let err = idx::read_labels(&empty).unwrap_err();
    assert!(matches!(err, DataError::Truncated { .. }), "{err}");
    assert_names(&err, &empty);
}

#[test]
fn idx_bad_magic_mismatch_labels_missing_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let ip = write(dir.path(), "images", &idx3(3, 2, 2, &pixels(3, 2, 2)));
    let lp = write(dir.path(), "labels", &idx1(&[1, 2]));

    // A label file where images are expected, and vice versa.
    let err = idx::read_images(&lp).unwrap_err();
    assert!(matches!(err, DataError::BadMagic { expected: 0x803, found: 0x801, .. }), "{err}");
    assert_names(&err, &lp);
    let err = idx::read_labels(&ip).unwrap_err();
    assert!(matches!(err, DataError::BadMagic { .. }), "{err}");
    assert_names(&err, &ip);

    // 3 images, 2 labels.
    let err = idx::read_pair(&ip, &lp, 10).unwrap_err();
    assert!(matches!(err, DataError::CountMismatch { n_images: 3, n_labels: 2, .. }), "{err}");
    assert_names(&err, &ip);
    assert_names(&err, &lp);

    // Label 10 with 10 classes.
    let lp3 = write(dir.path(), "labels3", &idx1(&[0, 10, 1]));
    let err = idx::read_pair(&ip, &lp3, 10).unwrap_err();
    assert!(matches!(err, DataError::LabelOutOfRange { index: 1, label: 10, .. }), "{err}");
    assert_names(&err, &lp3);

    let missing = dir.path().join("nope-ubyte");
    let err = idx::read_images(&missing).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }), "{err}");
    assert_names(&err, &missing);

    // Starts like gzip, is not.
    let bad_gz = write(dir.path(), "bad.gz", &[0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7]);
    let err = idx::read_images(&bad_gz).unwrap_err();
    assert!(matches!(err, DataError::Gzip { .. }), "{err}");
    assert_names(&err, &bad_gz);
}

#[test]
fn load_layout_and_unknown_name() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let px = pixels(4, 28, 28);
    let lb = [3u8, 1, 4, 1];
    // Fashion-MNIST gzipped (canonical); MNIST test raw (canonical), MNIST train gzipped only.
    write(r, "fashion-mnist/t10k-images-idx3-ubyte.gz", &gz(&idx3(4, 28, 28, &px)));
    write(r, "fashion-mnist/t10k-labels-idx1-ubyte.gz", &gz(&idx1(&lb)));
    write(r, "mnist/t10k-images-idx3-ubyte", &idx3(4, 28, 28, &px));
    write(r, "mnist/t10k-labels-idx1-ubyte", &idx1(&lb));
    write(r, "mnist/train-images-idx3-ubyte.gz", &gz(&idx3(4, 28, 28, &px)));
    write(r, "mnist/train-labels-idx1-ubyte.gz", &gz(&idx1(&lb)));
    for (name, split) in [("fashion-mnist", Split::Test), ("mnist", Split::Test), ("mnist", Split::Train)] {
        let ds = data::load(name, r, split).unwrap();
        assert_eq!(ds.name, name);
        assert_eq!((ds.len(), ds.shape, ds.classes), (4, Shape::new(1, 28, 28), 10));
        assert_eq!((ds.images.as_slice(), ds.labels.as_slice()), (px.as_slice(), &lb[..]));
    }
    let err = data::load("fashion-mnist", r, Split::Train).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("train-images-idx3-ubyte.gz"), "{err}");
    assert!(err.to_string().contains("scripts/setup"), "{err}");

    let err = data::load("imagenet", r, Split::Train).unwrap_err();
    let msg = err.to_string();
    for known in data::KNOWN_DATASETS {
        assert!(msg.contains(known), "`{msg}` does not list {known}");
    }
}

// ------------------------------------------------------------------ CIFAR

#[test]
fn cifar_write_read_and_layout() {
    let dir = tempfile::tempdir().unwrap();
    let n = 3;
    let images: Vec<u8> = (0..n * cifar::IMAGE_BYTES).map(|i| (i % 253) as u8).collect();
    let labels = [7u8, 0, 9];
    let p = dir.path().join("b.bin");
    cifar::write_cifar_batch(&p, &images, &labels).unwrap();

    // The real on-disk format: label byte, then R plane, G plane, B plane.
    let raw = std::fs::read(&p).unwrap();
    assert_eq!(raw.len(), n * 3073);
    assert_eq!(raw[3073], 0);
    assert_eq!(&raw[3074..3074 + 1024], &images[3072..3072 + 1024]);

    let (im, lb) = cifar::read_cifar_batch(&p).unwrap();
    assert_eq!((im, lb.as_slice()), (images.clone(), &labels[..]));

    // Wrong length: named file and byte count.
    let bad = write(dir.path(), "bad.bin", &raw[..raw.len() - 5]);
    let err = cifar::read_cifar_batch(&bad).unwrap_err();
    assert!(matches!(err, DataError::CifarLength { len: 9214, .. }), "{err}");
    assert_names(&err, &bad);
    assert!(err.to_string().contains("9214"), "{err}");
    let empty = write(dir.path(), "empty.bin", b"");
    assert!(matches!(cifar::read_cifar_batch(&empty), Err(DataError::CifarLength { len: 0, .. })));

    // Label 10 on disk.
    let mut r2 = raw.clone();
    r2[0] = 10;
    let lab = write(dir.path(), "label.bin", &r2);
    let err = cifar::read_cifar_batch(&lab).unwrap_err();
    assert!(matches!(err, DataError::LabelOutOfRange { label: 10, .. }), "{err}");
    assert_names(&err, &lab);

    // Writer rejects inconsistent inputs instead of writing a broken file.
    assert!(cifar::write_cifar_batch(&dir.path().join("x.bin"), &images[1..], &labels).is_err());
}

#[test]
fn cifar_load_directory() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cifar10");
    std::fs::create_dir_all(&dir).unwrap();
    let mut all_labels = Vec::new();
    for (i, name) in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"].iter().enumerate() {
        let labels = [i as u8, (i as u8 + 1) % 10];
        let images = vec![i as u8; 2 * cifar::IMAGE_BYTES];
        cifar::write_cifar_batch(&dir.join(format!("{name}.bin")), &images, &labels).unwrap();
        if i < 5 {
            all_labels.extend_from_slice(&labels);
        }
    }
    let train = data::load("cifar10", root.path(), Split::Train).unwrap();
    assert_eq!((train.len(), train.shape, train.classes), (10, Shape::new(3, 32, 32), 10));
    assert_eq!(train.labels, all_labels);
    assert_eq!(train.image(9)[0], 4);
    let test = data::load("cifar10", root.path(), Split::Test).unwrap();
    assert_eq!((test.len(), test.labels.as_slice()), (2, &[5u8, 6][..]));

    std::fs::remove_file(dir.join("data_batch_3.bin")).unwrap();
    let err = data::load("cifar10", root.path(), Split::Train).unwrap_err();
    assert!(err.to_string().contains("data_batch_3.bin"), "{err}");
}

// ------------------------------------------------------------------ splits, permutations

/// n samples of 1×2×2; the first pixel is the sample's index (so identity survives selection).
fn toy(n: usize) -> Dataset {
    let images = (0..n).flat_map(|i| [i as u8, 1, 2, 3]).collect();
    let labels = (0..n).map(|i| (i % 10) as u8).collect();
    Dataset::new("toy", images, labels, Shape::new(1, 2, 2), 10).unwrap()
}

fn ids(ds: &Dataset) -> Vec<usize> {
    (0..ds.len()).map(|i| ds.image(i)[0] as usize).collect()
}

#[test]
fn permutation_properties() {
    for n in [0, 1, 2, 17, 1000] {
        let p = permutation(n, 42);
        let mut s = p.clone();
        s.sort_unstable();
        assert_eq!(s, (0..n).collect::<Vec<_>>());
        assert_eq!(p, permutation(n, 42));
    }
    assert_ne!(permutation(1000, 1), permutation(1000, 2));
    assert_ne!(permutation(1000, 0), (0..1000).collect::<Vec<_>>());
}

#[test]
fn split_and_subset() {
    let ds = toy(200);
    let (a, b) = ds.split(0.5, 7);
    assert_eq!((a.len(), b.len()), (100, 100));
    let (a2, b2) = ds.split(0.5, 7);
    assert_eq!((&a, &b), (&a2, &b2), "same seed, same split");
    let (ia, ib) = (ids(&a), ids(&b));
    assert!(ia.windows(2).all(|w| w[0] < w[1]), "parts keep file order");
    let mut all: Vec<usize> = ia.iter().chain(&ib).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..200).collect::<Vec<_>>(), "disjoint and complete");
    for part in [&a, &b] {
        for i in 0..part.len() {
            assert_eq!(part.labels[i] as usize, part.image(i)[0] as usize % 10, "labels follow images");
        }
    }
    assert_ne!(ids(&ds.split(0.5, 8).0), ia, "seed matters");
    assert_eq!(ds.split(0.3, 1).0.len(), 60);
    assert_eq!(ds.split(0.0, 1).0.len(), 0);
    assert_eq!(ds.split(1.0, 1).1.len(), 0);

    assert_eq!(ids(&ds.subset(5)), vec![0, 1, 2, 3, 4]);
    assert_eq!(ds.subset(1000).len(), 200);

    assert!(Dataset::new("bad", vec![0; 7], vec![0, 1], Shape::new(1, 2, 2), 10).is_err());
    assert!(Dataset::new("bad", vec![0; 8], vec![0, 10], Shape::new(1, 2, 2), 10).is_err());
}

// ------------------------------------------------------------------ real data

fn real_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(data::DEFAULT_ROOT);
    assert!(
        root.join("fashion-mnist").is_dir() && root.join("mnist").is_dir(),
        "{} lacks fashion-mnist/ or mnist/: run scripts/setup to download the datasets",
        root.display()
    );
    root
}

fn load_real(name: &str, split: Split) -> Dataset {
    data::load(name, &real_root(), split).unwrap_or_else(|e| panic!("{e} (run scripts/setup to download the datasets)"))
}

/// Fashion-MNIST train is used by several tests; gunzipping it in a debug build takes a while.
fn fashion_train() -> &'static Dataset {
    static DS: OnceLock<Dataset> = OnceLock::new();
    DS.get_or_init(|| load_real("fashion-mnist", Split::Train))
}

#[test]
fn real_fashion_mnist() {
    let train = fashion_train();
    assert_eq!((train.len(), train.shape, train.classes), (60000, Shape::new(1, 28, 28), 10));
    assert_eq!(train.class_counts(), vec![6000; 10]);
    let mean = train.mean_pixel();
    assert!((mean - 72.94).abs() < 0.01, "mean pixel {mean}");
    let test = load_real("fashion-mnist", Split::Test);
    assert_eq!((test.len(), test.shape), (10000, Shape::new(1, 28, 28)));
    assert_eq!(test.class_counts(), vec![1000; 10]);
}

#[test]
fn real_mnist() {
    let train = load_real("mnist", Split::Train);
    assert_eq!((train.len(), train.shape, train.classes), (60000, Shape::new(1, 28, 28), 10));
    let test = load_real("mnist", Split::Test);
    assert_eq!((test.len(), test.shape), (10000, Shape::new(1, 28, 28)));
    // Well-known first labels of MNIST train and test.
    assert_eq!(&train.labels[..5], &[5, 0, 4, 1, 9]);
    assert_eq!(&test.labels[..5], &[7, 2, 1, 0, 4]);
    let mean = train.mean_pixel();
    assert!((mean - 33.32).abs() < 0.01, "mean pixel {mean}");
}

// ------------------------------------------------------------------ loader (tch)

#[cfg(feature = "train")]
mod loader {
    use super::*;
    use nce::data::{Loader, LoaderConfig, Rng};
    use tch::{Device, Kind, Tensor};

    /// n samples of 2×6×5 whose pixels encode (sample, channel, row, col) uniquely for n ≤ 25;
    /// pixel 0 never occurs so zero padding is recognisable.
    fn grid(n: usize) -> Dataset {
        let (c, h, w) = (2, 6, 5);
        let mut images = Vec::new();
        for i in 0..n {
            for k in 0..c * h * w {
                images.push((1 + (i * 9 + k * 4) % 255) as u8);
            }
        }
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        Dataset::new("grid", images, labels, Shape::new(c, h, w), 10).unwrap()
    }

    fn bytes(x: &Tensor) -> Vec<u8> {
        let v: Vec<f32> = Vec::try_from(&x.reshape([-1])).unwrap();
        v.iter().map(|&f| (f * 255.0).round() as u8).collect()
    }

    fn labels(y: &Tensor) -> Vec<i64> {
        Vec::try_from(y).unwrap()
    }

    fn cfg(batch: usize, shuffle: bool, drop_last: bool, augment: Augment) -> LoaderConfig {
        LoaderConfig { batch_size: batch, shuffle, drop_last, augment, seed: 3 }
    }

    #[test]
    fn shapes_dtypes_ranges() {
        let ds = grid(23);
        let l = Loader::new(&ds, cfg(5, true, false, Augment { pad: 2, hflip: true }), Device::Cpu).unwrap();
        assert_eq!((l.len(), l.num_batches()), (23, 5));
        let batches: Vec<_> = l.epoch_batches(0).collect();
        assert_eq!(batches.len(), 5);
        for (i, (x, y)) in batches.iter().enumerate() {
            let b = if i == 4 { 3 } else { 5 };
            assert_eq!(x.size(), vec![b, 2, 6, 5]);
            assert_eq!((x.kind(), y.kind()), (Kind::Float, Kind::Int64));
            assert_eq!(y.size(), vec![b]);
            assert!(x.min().double_value(&[]) >= 0.0 && x.max().double_value(&[]) <= 1.0);
            assert!(labels(y).iter().all(|&v| (0..10).contains(&v)));
        }
        let dl = Loader::new(&ds, cfg(5, true, true, Augment::NONE), Device::Cpu).unwrap();
        assert_eq!(dl.num_batches(), 4);
        assert!(dl.epoch_batches(0).all(|(x, _)| x.size()[0] == 5));
        assert!(dl.batch(0, 4).is_none());
        assert!(Loader::new(&ds, cfg(0, true, true, Augment::NONE), Device::Cpu).is_err());
    }

    #[test]
    fn deterministic_per_seed_and_epoch_and_resumable() {
        let ds = grid(40);
        let aug = Augment { pad: 2, hflip: true };
        let a = Loader::new(&ds, cfg(8, true, false, aug), Device::Cpu).unwrap();
        let b = Loader::new(&ds, cfg(8, true, false, aug), Device::Cpu).unwrap();
        let e3a: Vec<_> = a.epoch_batches(3).collect();
        let e3b: Vec<_> = b.epoch_batches(3).collect();
        for ((xa, ya), (xb, yb)) in e3a.iter().zip(&e3b) {
            assert!(xa.equal(xb) && ya.equal(yb));
        }
        // Resuming at batch 2 gives what the uninterrupted epoch gave.
        let (x2, y2) = a.batch(3, 2).unwrap();
        assert!(x2.equal(&e3a[2].0) && y2.equal(&e3a[2].1));
        let (x3, _) = a.epoch_batches(3).nth(3).unwrap();
        assert!(x3.equal(&e3a[3].0));
        // Another epoch: another order.
        assert_ne!(a.order(3), a.order(4));
        let y4: Vec<i64> = a.epoch_batches(4).flat_map(|(_, y)| labels(&y)).collect();
        let y3: Vec<i64> = e3a.iter().flat_map(|(_, y)| labels(y)).collect();
        assert_ne!(y3, y4);
        // Another seed: another order.
        let c = Loader::new(&ds, LoaderConfig { seed: 4, ..*a.config() }, Device::Cpu).unwrap();
        assert_ne!(a.order(3), c.order(3));
    }

    /// Every augmented image must be exactly one of the (dy, dx, flip) transforms of its source,
    /// computed here per pixel as the reference.
    #[test]
    fn augmentation_matches_reference_and_is_deterministic() {
        let ds = grid(25);
        let (c, h, w) = (2usize, 6usize, 5usize);
        let pad = 2usize;
        let aug = Augment { pad, hflip: true };
        let x = Tensor::from_slice(&ds.images).view([25, 2, 6, 5]);
        let out1 = nce::data::batches::augment(&x, aug, &mut Rng::new(9));
        let out2 = nce::data::batches::augment(&x, aug, &mut Rng::new(9));
        assert_eq!(out1.size(), x.size());
        assert_eq!(out1.kind(), Kind::Uint8);
        assert!(out1.equal(&out2), "same rng, same augmentation");
        let got: Vec<u8> = Vec::try_from(&out1.reshape([-1])).unwrap();

        let reference = |src: &[u8], dy: usize, dx: usize, flip: bool| -> Vec<u8> {
            let mut o = vec![0u8; c * h * w];
            for ch in 0..c {
                for i in 0..h {
                    for j in 0..w {
                        let jj = if flip { w - 1 - j } else { j };
                        let (py, px) = (i + dy, jj + dx); // in padded coordinates
                        o[(ch * h + i) * w + j] = if py < pad || py >= h + pad || px < pad || px >= w + pad {
                            0
                        } else {
                            src[(ch * h + py - pad) * w + px - pad]
                        };
                    }
                }
            }
            o
        };
        let mut used = std::collections::HashSet::new();
        for s in 0..25 {
            let out = &got[s * c * h * w..(s + 1) * c * h * w];
            let found = (0..=2 * pad)
                .flat_map(|dy| (0..=2 * pad).flat_map(move |dx| [(dy, dx, false), (dy, dx, true)]))
                .find(|&(dy, dx, f)| reference(ds.image(s), dy, dx, f) == out);
            let t = found.unwrap_or_else(|| panic!("sample {s}: not a crop/flip of its source"));
            used.insert(t);
        }
        assert!(used.len() > 5, "offsets and flips vary across the batch: {used:?}");

        // Through the loader: shapes kept, reproducible, and differs from the plain images.
        let l = Loader::new(&ds, cfg(25, false, false, aug), Device::Cpu).unwrap();
        let (xa, _) = l.batch(0, 0).unwrap();
        let (xb, _) = l.batch(0, 0).unwrap();
        assert_eq!(xa.size(), vec![25, 2, 6, 5]);
        assert!(xa.equal(&xb));
        assert_ne!(bytes(&xa), ds.images);
        let (xc, _) = l.batch(1, 0).unwrap();
        assert!(!xa.equal(&xc), "a new epoch draws new offsets");

        // MNIST-style: no flip ever.
        let noflip = nce::data::batches::augment(&x, Augment { pad, hflip: false }, &mut Rng::new(5));
        let got: Vec<u8> = Vec::try_from(&noflip.reshape([-1])).unwrap();
        for s in 0..25 {
            let out = &got[s * c * h * w..(s + 1) * c * h * w];
            assert!((0..=2 * pad).any(|dy| (0..=2 * pad).any(|dx| reference(ds.image(s), dy, dx, false) == out)));
        }
    }

    #[test]
    fn eval_covers_each_sample_once_in_order() {
        let ds = grid(23);
        let l = Loader::eval(&ds, 4, Device::Cpu).unwrap();
        assert_eq!(l.num_batches(), 6);
        let seen: Vec<u8> = l.epoch_batches(0).flat_map(|(x, _)| bytes(&x)).collect();
        assert_eq!(seen, ds.images, "fixed order, no augmentation, nothing dropped");
        let again: Vec<u8> = l.epoch_batches(5).flat_map(|(x, _)| bytes(&x)).collect();
        assert_eq!(again, seen, "epoch does not matter");
        let ys: Vec<u8> = l.epoch_batches(0).flat_map(|(_, y)| labels(&y)).map(|v| v as u8).collect();
        assert_eq!(ys, ds.labels);

        // A shuffled epoch (no augmentation) is also a permutation of the samples.
        let t = Loader::new(&ds, cfg(4, true, false, Augment::NONE), Device::Cpu).unwrap();
        let px = ds.shape.numel();
        let mut firsts: Vec<u8> = t.epoch_batches(1).flat_map(|(x, _)| bytes(&x)).step_by(px).collect();
        assert_ne!(firsts, (0..23).map(|i| ds.image(i)[0]).collect::<Vec<_>>());
        firsts.sort_unstable();
        let mut want: Vec<u8> = (0..23).map(|i| ds.image(i)[0]).collect();
        want.sort_unstable();
        assert_eq!(firsts, want);
    }

    #[test]
    fn real_fashion_mnist_batch() {
        let ds = fashion_train().subset(512);
        let l = Loader::train(&ds, 128, 0, Device::Cpu).unwrap();
        assert_eq!(l.config().augment, Augment { pad: 2, hflip: true });
        let (x, y) = l.batch(0, 0).unwrap();
        assert_eq!(x.size(), vec![128, 1, 28, 28]);
        assert_eq!(y.size(), vec![128]);
        let mean = x.mean(Kind::Float).double_value(&[]) * 255.0;
        assert!((mean - 72.94).abs() < 10.0, "batch mean pixel {mean}");
    }
}

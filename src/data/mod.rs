//! Real datasets: IDX (MNIST, Fashion-MNIST) and CIFAR-10 binary readers, splits, batching.
//!
//! Everything here except [`batches`] is plain Rust so dataset handling (and the integer engine's
//! evaluation on real images) works in builds without libtorch. Images are kept as `u8` pixels in
//! N×C×H×W order: the quantization contract (docs/quantization.md) uses the pixel itself as the
//! first layer's activation code with scale 1/255, so no float copy or normalisation is stored.
//!
//! Determinism: every random choice (splits, epoch orders, augmentation) comes from [`Rng`], a
//! seeded splitmix64, so a run is reproducible from its seed alone and can resume mid-epoch.

pub mod cifar;
pub mod folder;
pub mod idx;
mod source;

pub use source::{load_for, locate, search_roots, DatasetId, ENV_ROOT};

#[cfg(feature = "train")]
pub mod batches;

#[cfg(feature = "train")]
pub use batches::{Loader, LoaderConfig};

use crate::graph::Shape;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where `scripts/setup` puts the datasets, relative to the repository root.
pub const DEFAULT_ROOT: &str = "data";

/// Dataset names accepted by [`load`] (and `folder:PATH`, a class-per-folder image tree).
pub const KNOWN_DATASETS: &[&str] = &["fashion-mnist", "mnist", "cifar10"];

/// Where the CIFAR-10 files come from (`scripts/setup` cannot download them here).
pub const CIFAR_HINT: &str = "CIFAR-10 is not downloaded by scripts/setup: get the binary version \
(cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html) and put data_batch_1.bin … data_batch_5.bin \
and test_batch.bin into";

/// Errors of the dataset layer. Every variant that concerns a file names it, so a message is
/// actionable without a backtrace.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: file not found (run scripts/setup to download the datasets)", path.display())]
    NotFound { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: corrupt gzip stream: {source}", path.display())]
    Gzip { path: PathBuf, source: std::io::Error },
    #[error("{}: bad magic number {found:#010x}, expected {expected:#010x} ({what})", path.display())]
    BadMagic { path: PathBuf, expected: u32, found: u32, what: &'static str },
    #[error("{}: truncated: {found} bytes, the header says {expected}", path.display())]
    Truncated { path: PathBuf, expected: u64, found: u64 },
    #[error("{}: {found} bytes, the header says {expected} (trailing garbage)", path.display())]
    TrailingBytes { path: PathBuf, expected: u64, found: u64 },
    #[error("{}: malformed: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    #[error(
        "{} has {n_images} images but {} has {n_labels} labels",
        images.display(),
        labels.display()
    )]
    CountMismatch { images: PathBuf, labels: PathBuf, n_images: usize, n_labels: usize },
    #[error("{}: label {label} of sample {index} is not below the number of classes ({classes})", path.display())]
    LabelOutOfRange { path: PathBuf, index: usize, label: u8, classes: usize },
    #[error("{}: {len} bytes is not a positive multiple of the {record}-byte CIFAR record", path.display())]
    CifarLength { path: PathBuf, len: u64, record: usize },
    #[error("unknown dataset `{name}` (known: {}, or folder:PATH)", KNOWN_DATASETS.join(", "))]
    UnknownDataset { name: String },
    /// No data root holds the dataset's folder.
    #[error("{dataset} not found; looked in {}. {}", join_paths(looked), fetch_hint(dataset, looked))]
    Missing { dataset: String, looked: Vec<PathBuf> },
    /// CIFAR-10's folder exists but lacks its batch files.
    #[error("{}: no CIFAR-10 batch files ({} {})", dir.display(), CIFAR_HINT, dir.display())]
    CifarMissing { dir: PathBuf },
    /// The images do not have the shape the model takes.
    #[error("{dataset} has {found} images, the model takes {expected}")]
    ShapeMismatch { dataset: String, found: Shape, expected: Shape },
    /// A bad argument from the caller (batch size 0, split fraction outside [0, 1], ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

fn fetch_hint(dataset: &str, looked: &[PathBuf]) -> String {
    let first = looked.first().map_or_else(String::new, |p| p.display().to_string());
    if dataset == "cifar10" {
        format!("{CIFAR_HINT} {first}")
    } else {
        format!("Run scripts/setup in a clone (it downloads into ./data), or set --data-root or ${ENV_ROOT} to a folder holding {dataset}/")
    }
}

/// Which half of a dataset's official train/test partition to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            _ => Err(format!("expected `train` or `test`, got `{s}`")),
        }
    }
}

/// A labelled image set held in memory as `u8` pixels.
#[derive(Clone, PartialEq, Eq)]
pub struct Dataset {
    pub name: String,
    /// N×C×H×W pixels, row-major (`images.len() == len() * shape.numel()`).
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub shape: Shape,
    pub classes: usize,
}

/// A summary instead of the derive: the derived form would print megabytes of pixels.
impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("name", &self.name)
            .field("len", &self.len())
            .field("shape", &self.shape)
            .field("classes", &self.classes)
            .finish()
    }
}

impl Dataset {
    /// Builds a dataset after checking that pixels, labels, shape and classes agree.
    pub fn new(name: impl Into<String>, images: Vec<u8>, labels: Vec<u8>, shape: Shape, classes: usize) -> Result<Dataset, DataError> {
        let name = name.into();
        if shape.numel() == 0 || labels.len().checked_mul(shape.numel()) != Some(images.len()) {
            return Err(DataError::InvalidArgument(format!(
                "dataset `{name}`: {} pixels do not hold {} images of {shape}",
                images.len(),
                labels.len()
            )));
        }
        if let Some(i) = labels.iter().position(|&l| usize::from(l) >= classes) {
            return Err(DataError::InvalidArgument(format!(
                "dataset `{name}`: label {} of sample {i} is not below {classes} classes",
                labels[i]
            )));
        }
        Ok(Dataset { name, images, labels, shape, classes })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The pixels of sample `i` (C×H×W). Panics if `i >= len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.shape.numel();
        &self.images[i * n..(i + 1) * n]
    }

    /// Samples per class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &l in &self.labels {
            counts[usize::from(l)] += 1;
        }
        counts
    }

    /// Mean pixel value over the whole set (0..255), e.g. 72.94 for Fashion-MNIST train.
    pub fn mean_pixel(&self) -> f64 {
        if self.images.is_empty() {
            return 0.0;
        }
        let sum: u64 = self.images.iter().map(|&p| u64::from(p)).sum();
        sum as f64 / self.images.len() as f64
    }

    /// The samples at `indices`, in that order (indices must be `< len()`).
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let n = self.shape.numel();
        let mut images = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset { name: self.name.clone(), images, labels, shape: self.shape, classes: self.classes }
    }

    /// The first `n` samples in file order (all of them if `n >= len()`).
    ///
    /// File order, not a class-balanced take: the MNIST, Fashion-MNIST and CIFAR-10 files are
    /// already shuffled, so a prefix is close to balanced and stays identical across runs and
    /// tools (the integer engine's evaluation can take the same prefix without nce's PRNG).
    pub fn subset(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        let px = n * self.shape.numel();
        Dataset {
            name: self.name.clone(),
            images: self.images[..px].to_vec(),
            labels: self.labels[..n].to_vec(),
            shape: self.shape,
            classes: self.classes,
        }
    }

    /// Splits into two disjoint parts holding `round(fraction · len())` and the remaining
    /// samples, chosen by [`permutation`]`(len(), seed)`; each part keeps file order. The same
    /// seed always gives the same split (the search's 50/50 weight/architecture split depends
    /// on it to resume). Panics if `fraction` is not in `[0, 1]` (a caller bug, not bad data).
    pub fn split(&self, fraction: f64, seed: u64) -> (Dataset, Dataset) {
        assert!((0.0..=1.0).contains(&fraction), "Dataset::split: fraction {fraction} is not in [0, 1]");
        let n = self.len();
        let k = ((fraction * n as f64).round() as usize).min(n);
        let perm = permutation(n, seed);
        let mut first = perm[..k].to_vec();
        let mut second = perm[k..].to_vec();
        first.sort_unstable();
        second.sort_unstable();
        (self.select(&first), self.select(&second))
    }
}

/// Default training augmentation for a dataset: padded random crop and optional horizontal flip.
///
/// Lives outside the `train` feature so configs can carry it in any build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Augment {
    /// Zero padding on each side before cropping back to H×W (0 disables the crop).
    pub pad: usize,
    /// Mirror left-right with probability ½.
    pub hflip: bool,
}

impl Augment {
    /// No augmentation (evaluation).
    pub const NONE: Augment = Augment { pad: 0, hflip: false };

    /// The standard recipe per dataset: CIFAR-10 pad 4 + flip; Fashion-MNIST pad 2 + flip;
    /// MNIST pad 2, no flip (mirrored digits are other glyphs). 28×28 images get pad 2 rather
    /// than 4 because a 4-pixel shift is 14 % of the side and cuts off the strokes and garments
    /// that fill the frame. Unknown names get [`Augment::NONE`].
    pub fn for_dataset(name: &str) -> Augment {
        match name {
            "cifar10" => Augment { pad: 4, hflip: true },
            "fashion-mnist" => Augment { pad: 2, hflip: true },
            "mnist" => Augment { pad: 2, hflip: false },
            _ => Augment::NONE,
        }
    }

    pub fn is_none(&self) -> bool {
        self.pad == 0 && !self.hflip
    }
}

/// Loads `name`'s `split` from `root` (usually [`DEFAULT_ROOT`]).
///
/// Layout: `root/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`,
/// `root/mnist/…-ubyte` (either may be gzipped or raw: the other form is tried too), and
/// `root/cifar10/{data_batch_1..5,test_batch}.bin` (or the tarball's `cifar-10-batches-bin/`
/// directory inside `root/cifar10`).
pub fn load(name: &str, root: &Path, split: Split) -> Result<Dataset, DataError> {
    let id: DatasetId = name.parse()?;
    if !matches!(id, DatasetId::Folder(_)) && !root.join(name).is_dir() {
        return Err(DataError::Missing { dataset: name.to_string(), looked: vec![root.join(name)] });
    }
    match id {
        DatasetId::FashionMnist => load_idx(name, &root.join(name), split, true),
        DatasetId::Mnist => load_idx(name, &root.join(name), split, false),
        DatasetId::Cifar10 => load_cifar10(&root.join(name), split),
        DatasetId::Folder(dir) => folder::load(&dir, split),
    }
}

/// `canonical` if it exists, else its gzipped/raw twin if that exists, else `canonical` (so the
/// not-found error names the file the documented layout expects).
fn either_form(canonical: PathBuf) -> PathBuf {
    if canonical.exists() {
        return canonical;
    }
    let s = canonical.as_os_str().to_string_lossy();
    let twin = match s.strip_suffix(".gz") {
        Some(raw) => PathBuf::from(raw),
        None => PathBuf::from(format!("{s}.gz")),
    };
    if twin.exists() {
        twin
    } else {
        canonical
    }
}

fn load_idx(name: &str, dir: &Path, split: Split, gz: bool) -> Result<Dataset, DataError> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let ext = if gz { ".gz" } else { "" };
    let images = either_form(dir.join(format!("{prefix}-images-idx3-ubyte{ext}")));
    let labels = either_form(dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")));
    let (imgs, labels) = idx::read_pair(&images, &labels, 10)?;
    Ok(Dataset { name: name.to_string(), shape: Shape::new(1, imgs.rows, imgs.cols), images: imgs.pixels, labels, classes: 10 })
}

fn load_cifar10(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let nested = dir.join("cifar-10-batches-bin");
    let dir = if !dir.join("test_batch.bin").exists() && nested.join("test_batch.bin").exists() { nested } else { dir.to_path_buf() };
    if !dir.join("test_batch.bin").exists() && !dir.join("data_batch_1.bin").exists() {
        return Err(DataError::CifarMissing { dir });
    }
    let files: Vec<PathBuf> = match split {
        Split::Train => (1..=5).map(|i| dir.join(format!("data_batch_{i}.bin"))).collect(),
        Split::Test => vec![dir.join("test_batch.bin")],
    };
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for f in &files {
        let (im, lb) = cifar::read_cifar_batch(f)?;
        images.extend_from_slice(&im);
        labels.extend_from_slice(&lb);
    }
    Ok(Dataset { name: "cifar10".to_string(), images, labels, shape: Shape::new(3, cifar::SIDE, cifar::SIDE), classes: cifar::CLASSES })
}

/// splitmix64 (Steele, Lea & Flood 2014): tiny, fast, statistically good enough for shuffles
/// and augmentation draws, and trivially reproducible in other languages from the seed.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// An independent stream for a sub-task (e.g. `(seed, epoch)`), so each epoch's order can be
    /// regenerated without replaying earlier epochs.
    pub fn derive(seed: u64, stream: u64) -> Rng {
        let mut r = Rng::new(seed ^ stream.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        let a = r.next_u64();
        Rng::new(a ^ stream.rotate_left(32))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` without modulo bias (Lemire's multiply-and-reject). `n` must be > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// A fair coin.
    pub fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }
}

/// A uniformly random permutation of `0..n` (Fisher–Yates over [`Rng`]); the same
/// `(n, seed)` always gives the same result.
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed);
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_is_in_range_and_covers() {
        let mut r = Rng::new(1);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let v = r.below(7) as usize;
            seen[v] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn derive_streams_differ() {
        assert_ne!(Rng::derive(1, 0).next_u64(), Rng::derive(1, 1).next_u64());
        assert_ne!(Rng::derive(0, 1).next_u64(), Rng::derive(1, 0).next_u64());
    }

    #[test]
    fn either_form_prefers_existing_twin() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("x-ubyte");
        std::fs::write(&raw, b"").unwrap();
        assert_eq!(either_form(dir.path().join("x-ubyte.gz")), raw);
        assert_eq!(either_form(raw.clone()), raw);
        let missing = dir.path().join("y.gz");
        assert_eq!(either_form(missing.clone()), missing);
    }
}

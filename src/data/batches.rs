//! Mini-batches as tch tensors, with deterministic shuffling and vectorised augmentation.
//!
//! The whole dataset lives in one `u8` tensor `[N, C, H, W]` (on the training device), so a batch is
//! an `index_select` plus a few tensor ops, never a per-pixel Rust loop. Every random choice is a
//! pure function of `(seed, epoch, batch index)`: a run resumed at any batch sees exactly the
//! batches (order and augmentation) of an uninterrupted run.

use super::{permutation, Augment, DataError, Dataset, Rng};
use crate::graph::Shape;
use tch::{Device, Kind, Tensor};

/// Salt separating the augmentation streams from the shuffling streams of the same seed.
const AUG_SALT: u64 = 0xA5A5_0000_0000_0001;

/// How a [`Loader`] cuts and perturbs batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// A fresh order each epoch (from `(seed, epoch)`); otherwise file order.
    pub shuffle: bool,
    /// Omit the last, smaller batch (keeps BatchNorm statistics from a handful of samples out).
    pub drop_last: bool,
    pub augment: Augment,
    pub seed: u64,
}

impl LoaderConfig {
    /// Training: shuffled, the dataset's default augmentation ([`Augment::for_dataset`]),
    /// last partial batch kept.
    pub fn train(dataset: &str, batch_size: usize, seed: u64) -> LoaderConfig {
        LoaderConfig { batch_size, shuffle: true, drop_last: false, augment: Augment::for_dataset(dataset), seed }
    }

    /// Evaluation: file order, no augmentation, every sample exactly once.
    pub fn eval(batch_size: usize) -> LoaderConfig {
        LoaderConfig { batch_size, shuffle: false, drop_last: false, augment: Augment::NONE, seed: 0 }
    }
}

/// A dataset resident as tensors, cut into batches `(x, y)`: `x` f32 `[B, C, H, W]` in `[0, 1]`
/// (pixel / 255, no mean/std normalisation: see docs/quantization.md), `y` i64 `[B]`.
pub struct Loader {
    images: Tensor,
    labels: Tensor,
    n: usize,
    shape: Shape,
    cfg: LoaderConfig,
    device: Device,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("len", &self.n)
            .field("shape", &self.shape)
            .field("cfg", &self.cfg)
            .field("device", &self.device)
            .finish()
    }
}

impl Loader {
    /// Copies `ds` to `device` once; batches are then cut there.
    pub fn new(ds: &Dataset, cfg: LoaderConfig, device: Device) -> Result<Loader, DataError> {
        if cfg.batch_size == 0 {
            return Err(DataError::InvalidArgument("batch size must be positive".into()));
        }
        let s = ds.shape;
        if ds.images.len() != ds.len() * s.numel() {
            return Err(DataError::InvalidArgument(format!(
                "dataset `{}`: {} pixels do not hold {} images of {s}",
                ds.name,
                ds.images.len(),
                ds.len()
            )));
        }
        let n = ds.len();
        let images = Tensor::from_slice(&ds.images).view([n as i64, s.c as i64, s.h as i64, s.w as i64]).to_device(device);
        let labels = Tensor::from_slice(&ds.labels).to_kind(Kind::Int64).to_device(device);
        Ok(Loader { images, labels, n, shape: s, cfg, device })
    }

    /// Shuffled, augmented training loader ([`LoaderConfig::train`]).
    pub fn train(ds: &Dataset, batch_size: usize, seed: u64, device: Device) -> Result<Loader, DataError> {
        Loader::new(ds, LoaderConfig::train(&ds.name, batch_size, seed), device)
    }

    /// Fixed-order, unaugmented evaluation loader ([`LoaderConfig::eval`]).
    pub fn eval(ds: &Dataset, batch_size: usize, device: Device) -> Result<Loader, DataError> {
        Loader::new(ds, LoaderConfig::eval(batch_size), device)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    /// Batches per epoch (with `drop_last`, only full ones).
    pub fn num_batches(&self) -> usize {
        let b = self.cfg.batch_size;
        if self.cfg.drop_last {
            self.n / b
        } else {
            self.n.div_ceil(b)
        }
    }

    /// The sample order of `epoch`: a permutation seeded by `(seed, epoch)`, or `0..len()`
    /// without shuffling.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        if self.cfg.shuffle {
            permutation(self.n, Rng::derive(self.cfg.seed, epoch).next_u64())
        } else {
            (0..self.n).collect()
        }
    }

    /// Batch `index` of `epoch`, or `None` past the end. Recomputes the epoch's order (O(N));
    /// use [`Loader::epoch_batches`] to iterate.
    pub fn batch(&self, epoch: u64, index: usize) -> Option<(Tensor, Tensor)> {
        self.epoch_batches(epoch).nth(index)
    }

    /// The batches of `epoch` in order. `.skip(k)`/`.nth(k)` jump without building the
    /// skipped batches, which is how a run resumes mid-epoch.
    pub fn epoch_batches(&self, epoch: u64) -> EpochBatches<'_> {
        let order: Vec<i64> = self.order(epoch).into_iter().map(|i| i as i64).collect();
        EpochBatches { loader: self, epoch, order: Tensor::from_slice(&order).to_device(self.device), next: 0, end: self.num_batches() }
    }

    fn make_batch(&self, order: &Tensor, epoch: u64, index: usize) -> (Tensor, Tensor) {
        let b = self.cfg.batch_size;
        let start = index * b;
        let len = b.min(self.n - start);
        let idx = order.narrow(0, start as i64, len as i64);
        let x = self.images.index_select(0, &idx);
        let y = self.labels.index_select(0, &idx);
        let x = if self.cfg.augment.is_none() {
            x
        } else {
            let mut rng = Rng::derive(Rng::derive(self.cfg.seed ^ AUG_SALT, epoch).next_u64(), index as u64);
            augment(&x, self.cfg.augment, &mut rng)
        };
        (x.to_kind(Kind::Float) / 255.0, y)
    }
}

/// Padded random crop and optional horizontal flip of a `u8` batch `[B, C, H, W]`, drawing one
/// (dy, dx, flip) per image from `rng`. Vectorised as two `gather`s on the zero-padded batch:
/// output row i of image b reads padded row `dy_b + i`, output column j reads padded column
/// `dx_b + j` (or `dx_b + W−1−j` when flipped, i.e. flip after crop). Zero padding is pixel 0,
/// the same value the first conv's zero padding uses.
///
/// # Panics
/// If `x` is not 4-dimensional (a caller bug: [`Loader`] always passes `[B, C, H, W]`).
pub fn augment(x: &Tensor, aug: Augment, rng: &mut Rng) -> Tensor {
    let (b, c, h, w) = x.size4().expect("augment: batch must be [B,C,H,W]");
    let dev = x.device();
    let p = aug.pad as i64;
    let mut dy = Vec::with_capacity(b as usize);
    let mut dx = Vec::with_capacity(b as usize);
    let mut flip = Vec::with_capacity(b as usize);
    for _ in 0..b {
        dy.push(rng.below(2 * p as u64 + 1) as i64);
        dx.push(rng.below(2 * p as u64 + 1) as i64);
        flip.push(i64::from(aug.hflip && rng.coin()));
    }
    let xp = if p > 0 { x.constant_pad_nd([p, p, p, p]) } else { x.shallow_clone() };
    let wp = w + 2 * p;
    let opts = (Kind::Int64, dev);
    let to_col = |v: &[i64]| Tensor::from_slice(v).to_device(dev).view([b, 1]);

    let rows = to_col(&dy) + Tensor::arange(h, opts).view([1, h]); // [B,H]
    let rows = rows.view([b, 1, h, 1]).expand([b, c, h, wp], false);
    let xr = xp.gather(2, &rows, false); // [B,C,H,Wp]

    let j = Tensor::arange(w, opts).view([1, w]);
    let mirrored = j.shallow_clone() * (-2) + (w - 1); // W-1-2j: added to j when flipped
    let cols = to_col(&dx) + j + to_col(&flip) * mirrored; // [B,W]
    let cols = cols.view([b, 1, 1, w]).expand([b, c, h, w], false);
    xr.gather(3, &cols, false)
}

/// Iterator over one epoch's batches (see [`Loader::epoch_batches`]).
pub struct EpochBatches<'a> {
    loader: &'a Loader,
    epoch: u64,
    order: Tensor,
    next: usize,
    end: usize,
}

impl Iterator for EpochBatches<'_> {
    type Item = (Tensor, Tensor);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let i = self.next;
        self.next += 1;
        Some(self.loader.make_batch(&self.order, self.epoch, i))
    }

    fn nth(&mut self, n: usize) -> Option<Self::Item> {
        self.next = self.next.saturating_add(n).min(self.end);
        self.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let r = self.end - self.next;
        (r, Some(r))
    }
}

impl ExactSizeIterator for EpochBatches<'_> {}

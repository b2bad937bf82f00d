//! CPU execution: backend choice, weight preparation and threading.
//!
//! A [`Cpu`] pairs a [`Backend`] with a thread count. Layers are first turned into a
//! [`PreparedConv`] (weights re-laid out once for the backend's kernel), then run any number of
//! times. Threads split the output pixels into contiguous ranges, run by a persistent pool of
//! `threads` workers (rayon, owned by the `Cpu` and shared by its clones): a call spawns
//! nothing, and `threads == 1` has no pool at all. A whole image runs on one pool worker
//! ([`Cpu::install`], done by [`QModel::run_layers`](crate::engine::plan::QModel)), which
//! splits each conv and computes the first range itself; a range no idle worker has stolen by
//! then it runs too (work stealing), so a busy machine costs a split little more than the
//! queueing. The AVX-512, AVX2 and portable kernels copy (pack) the input rows a range reads inside
//! that range's task, halo rows included, so nothing runs serially before a split but the
//! output allocation.
//!
//! Backends: `Scalar` (the reference, always present), `Swar` (portable safe Rust that LLVM
//! vectorises for any 128-bit SIMD: three 2-bit MACs per 16-bit multiply lane, on every CPU:
//! the fast path of ARM and RISC-V builds), and on
//! x86-64 `Avx2` and `Avx512` (AVX-512 VNNI) when the CPU has them (detected at run time, so one
//! binary serves every x86-64 machine; [`Backend::best`] takes the last available). There is no
//! NEON backend yet: it would sit beside `avx2.rs` as `neon.rs` behind `target_arch = "aarch64"`
//! and plug into the same `Kernel` enum and pixel-range driver.
//!
//! Depthwise convs (`groups == c_in == c_out`) run the channel-vectorised kernels of
//! `depthwise/` on the SWAR, AVX2 and AVX-512 backends (SWAR hands 8-bit weights and inputs
//! above 3 to the reference); other grouped convs run the reference on every backend.

pub mod backend;
mod depthwise;
pub mod model;
pub mod reference;
mod swar;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

use super::{Conv2d, EngineError, Linear, MaxPool2d, QTensor, Residual, Result};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// An instruction-set backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Portable scalar code ([`mod@reference`]).
    Scalar,
    /// Portable code: 2-bit convs as three MACs per 16-bit multiply lane, auto-vectorised
    /// (`swar.rs`).
    Swar,
    /// x86-64 AVX2 kernels (`vpmaddubsw` with int16 accumulation).
    Avx2,
    /// x86-64 AVX-512 VNNI kernels (`vpdpbusd`, int32 accumulation).
    Avx512,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Scalar => "scalar",
            Backend::Swar => "swar",
            Backend::Avx2 => "avx2",
            Backend::Avx512 => "avx512",
        })
    }
}

impl Backend {
    /// Whether this machine can run the backend.
    pub fn is_available(self) -> bool {
        match self {
            Backend::Scalar | Backend::Swar => true,
            Backend::Avx2 => avx2_available(),
            Backend::Avx512 => avx512_available(),
        }
    }

    /// Every backend this machine can run, slowest first.
    pub fn available() -> Vec<Backend> {
        [Backend::Scalar, Backend::Swar, Backend::Avx2, Backend::Avx512].into_iter().filter(|b| b.is_available()).collect()
    }

    /// The fastest available backend.
    pub fn best() -> Backend {
        *Self::available().last().expect("scalar is always available")
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_available() -> bool {
    avx2::available()
}
#[cfg(not(target_arch = "x86_64"))]
fn avx2_available() -> bool {
    false
}
#[cfg(target_arch = "x86_64")]
fn avx512_available() -> bool {
    avx512::available()
}
#[cfg(not(target_arch = "x86_64"))]
fn avx512_available() -> bool {
    false
}

/// The work a layer must give each extra thread before [`super::open`]'s CPU engine splits it.
/// Handing a range to a pool worker costs a few µs (`tests/engine_threads.rs` and
/// `examples/engine_profile.rs` print it), and 100 kMAC take 2–5 µs on one AVX2 core, so layers
/// smaller than that run on fewer threads.
/// [`Cpu::new`] itself keeps 0 (always split).
pub const SPLIT_MIN_MACS_PER_THREAD: u64 = 100_000;

/// A backend plus a thread count; cheap to clone (clones share one worker pool).
///
/// `threads` is the number of cores a call may use: `threads` pool workers started once by
/// [`Cpu::new`] (rayon; they spin briefly after each job, then park). Set [`Cpu::with_min_macs_per_thread`] to have small layers run on fewer threads.
#[derive(Clone, Debug)]
pub struct Cpu {
    backend: Backend,
    threads: usize,
    min_macs_per_thread: u64,
    /// `threads` workers; `None` for one thread.
    pool: Option<Arc<rayon::ThreadPool>>,
}

/// A conv layer with its weights laid out for one backend's kernel.
#[derive(Clone, Debug)]
pub struct PreparedConv {
    conv: Conv2d,
    backend: Backend,
    kernel: Kernel,
}

#[derive(Clone, Debug)]
enum Kernel {
    /// Weights decoded to i32 `[c_conv][k_len]`.
    Scalar(Vec<i32>),
    Swar(swar::ConvKernel),
    #[cfg(target_arch = "x86_64")]
    Avx2(avx2::ConvKernel),
    #[cfg(target_arch = "x86_64")]
    Avx512(avx512::ConvKernel),
    /// A depthwise conv on a fast backend (`depthwise/`).
    Depthwise(depthwise::DwKernel),
}

impl PreparedConv {
    pub fn conv(&self) -> &Conv2d {
        &self.conv
    }
    pub fn backend(&self) -> Backend {
        self.backend
    }
}

impl Cpu {
    /// `threads == 1` runs everything on the calling thread.
    pub fn new(backend: Backend, threads: usize) -> Result<Self> {
        if !backend.is_available() {
            return Err(EngineError::Unavailable(backend));
        }
        if threads == 0 {
            return Err(EngineError::Invalid { what: "thread count", detail: "must be at least 1".into() });
        }
        Ok(Cpu { backend, threads, min_macs_per_thread: 0, pool: pool(threads)? })
    }

    /// Uses at most `⌈macs / min⌉` threads for a layer of `macs` multiply-accumulates (the
    /// default 0 always uses `threads`, which is what the tests rely on).
    pub fn with_min_macs_per_thread(self, min: u64) -> Self {
        Cpu { min_macs_per_thread: min, ..self }
    }

    /// The fastest backend on this machine with `threads` threads (at least 1).
    ///
    /// # Panics
    /// When the operating system refuses to start the worker threads ([`Cpu::new`] returns
    /// that as an error instead).
    pub fn best(threads: usize) -> Self {
        Cpu::new(Backend::best(), threads.max(1)).expect("starting the engine's worker threads")
    }

    /// The same backend on the calling thread alone (what each image of a batch spread over
    /// threads runs on).
    pub fn single_threaded(&self) -> Self {
        Cpu { threads: 1, pool: None, ..self.clone() }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Validates `conv` and lays out its weights for this backend.
    pub fn prepare(&self, conv: &Conv2d) -> Result<PreparedConv> {
        conv.validate()?;
        let kernel = match self.backend {
            Backend::Scalar => Kernel::Scalar(conv.weights.codes_i32()),
            // Depthwise convs have their own kernels; other grouped convs (and the few cases
            // `DwKernel::new` declines) run the reference on every backend.
            _ if conv.groups != 1 => match depthwise::DwKernel::new(conv, self.backend) {
                Some(k) => Kernel::Depthwise(k),
                None => Kernel::Scalar(conv.weights.codes_i32()),
            },
            Backend::Swar => Kernel::Swar(swar::ConvKernel::new(conv)),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => Kernel::Avx2(avx2::ConvKernel::new(conv).ok_or(EngineError::Unavailable(Backend::Avx2))?),
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => Kernel::Avx512(avx512::ConvKernel::new(conv).ok_or(EngineError::Unavailable(Backend::Avx512))?),
            #[allow(unreachable_patterns)]
            b => return Err(EngineError::Unavailable(b)),
        };
        Ok(PreparedConv { conv: conv.clone(), backend: self.backend, kernel })
    }

    /// Runs a prepared conv (with the fused residual add when `residual` is given).
    pub fn conv2d(&self, p: &PreparedConv, x: &QTensor, residual: Option<&Residual>) -> Result<QTensor> {
        if p.backend != self.backend {
            return Err(EngineError::BackendMismatch { prepared: p.backend, used: self.backend });
        }
        let d = p.conv.dims(x, residual)?;
        let mut out = QTensor::zeros(d.ho, d.wo, d.c_out);
        let threads = self.threads_for((d.ho * d.wo * d.c_conv * p.conv.k_len()) as u64);
        match &p.kernel {
            Kernel::Scalar(codes) => {
                let f = |px: Range<usize>, o: &mut [u8]| reference::conv2d_pixels(&p.conv, codes, &d, x, residual, px, o);
                self.par_pixels(threads, d.ho * d.wo, d.c_out, 1, &mut out.data, f);
            }
            Kernel::Swar(k) => {
                let f = |px: Range<usize>, o: &mut [u8]| k.job(&d, x, residual, px.clone()).run(px, o);
                self.par_pixels(threads, d.ho * d.wo, d.c_out, swar::PIXELS, &mut out.data, f);
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2(k) => {
                // Each part copies the input rows it reads itself (no serial copy before the split).
                let f = |px: Range<usize>, o: &mut [u8]| k.job(&d, x, residual, px.clone()).run(px, o);
                self.par_pixels(threads, d.ho * d.wo, d.c_out, avx2::PIXEL_TILE, &mut out.data, f);
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512(k) => {
                let f = |px: Range<usize>, o: &mut [u8]| k.job(&d, x, residual, px.clone()).run(px, o);
                self.par_pixels(threads, d.ho * d.wo, d.c_out, 1, &mut out.data, f);
            }
            Kernel::Depthwise(k) => {
                let job = k.job(&d, x, residual);
                self.par_pixels(threads, d.ho * d.wo, d.c_out, 1, &mut out.data, |px, o| job.run(px, o));
            }
        }
        Ok(out)
    }

    /// Prepares and runs in one go (for one-off calls; prepare once when running repeatedly).
    pub fn conv2d_once(&self, conv: &Conv2d, x: &QTensor, residual: Option<&Residual>) -> Result<QTensor> {
        self.conv2d(&self.prepare(conv)?, x, residual)
    }

    fn threads_for(&self, macs: u64) -> usize {
        match self.min_macs_per_thread {
            0 => self.threads,
            min => (macs.div_ceil(min) as usize).clamp(1, self.threads),
        }
    }

    /// Exact per-channel sums (global average pooling without the division).
    pub fn global_avg_pool(&self, x: &QTensor) -> Result<Vec<i32>> {
        // A few thousand adds: no fast path needed.
        reference::global_avg_pool(x)
    }

    /// Integer logits of the classifier.
    pub fn linear(&self, l: &Linear, x: &[i32]) -> Result<Vec<i32>> {
        reference::linear(l, x)
    }

    pub fn max_pool(&self, p: &MaxPool2d, x: &QTensor) -> Result<QTensor> {
        reference::max_pool(p, x)
    }
}

/// The padded input rows (`0` = the first row of top padding) that hold the windows of output
/// pixels `pixels` (`wo` to a row): what each part of a split conv copies for itself.
pub(crate) fn padded_rows(c: &Conv2d, wo: usize, pixels: &Range<usize>) -> Range<usize> {
    let out_rows = pixels.start / wo..(pixels.end.max(pixels.start + 1) - 1) / wo + 1;
    out_rows.start * c.stride..(out_rows.end - 1) * c.stride + c.k
}

impl Cpu {
    /// Splits `0..pixels` into at most `threads` contiguous ranges (multiples of `align` except
    /// the last) and calls `f(range, out_slice)` for each.
    fn par_pixels<F>(&self, threads: usize, pixels: usize, c_out: usize, align: usize, out: &mut [u8], f: F)
    where
        F: Fn(Range<usize>, &mut [u8]) + Sync,
    {
        let per = pixels.div_ceil(threads.max(1)).div_ceil(align) * align;
        if threads <= 1 || per >= pixels {
            f(0..pixels, out);
            return;
        }
        let parts = out.chunks_mut(per * c_out).enumerate().map(|(i, o)| (i * per..i * per + o.len() / c_out, o));
        self.scatter(parts, |(px, o)| f(px, o));
    }

    /// Runs `f` on one of the pool's workers (where the calling thread is not one already), so
    /// that the splits inside it are work-stealing: ranges no other worker has taken when the
    /// splitting worker is done with its own, it runs itself.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }

    /// Calls `f` on every item, the first on the calling thread and the others on the pool
    /// (taken back by the calling thread where it is a pool worker and no other worker took
    /// them; on scoped threads spawned for the call where this `Cpu` has no pool). Returns when
    /// all are done; a panic in `f` is raised here.
    pub(crate) fn scatter<T, F>(&self, items: impl Iterator<Item = T>, f: F)
    where
        T: Send,
        F: Fn(T) + Sync,
    {
        let f = &f;
        let mut items = items;
        let Some(first) = items.next() else { return };
        match &self.pool {
            Some(pool) => pool.in_place_scope(|s| {
                for item in items {
                    s.spawn(move |_| f(item));
                }
                f(first);
            }),
            None => std::thread::scope(|s| {
                for item in items {
                    s.spawn(move || f(item));
                }
                f(first);
            }),
        }
    }
}

/// `threads` pool workers (none for one thread).
fn pool(threads: usize) -> Result<Option<Arc<rayon::ThreadPool>>> {
    if threads <= 1 {
        return Ok(None);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("nce-cpu-{i}"))
        .build()
        .map_err(|e| EngineError::Threads { threads, detail: e.to_string() })?;
    Ok(Some(Arc::new(pool)))
}

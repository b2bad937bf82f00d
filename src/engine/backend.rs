//! The backend seam: every engine that runs a [`QModel`] implements [`Backend`], and
//! [`open`] is the one place that maps a [`BackendKind`] to one.
//!
//! Adding a backend (a C runtime under QEMU, ONNX Runtime, ...) means: its own folder under
//! `src/engine/`, a variant of [`BackendKind`], and one arm in [`open`]. Validation
//! ([`mod@super::compare`]), latency measurement ([`super::measure`]), the CLI and the pipeline
//! only see the trait.

use super::c_runtime::{CTarget, QemuBackend, ResourceReport};
use super::cpu::{self, Cpu};
use super::measure::{MeasureConfig, Runner};
use super::plan::QModel;
use super::EngineError;
use crate::graph::Network;
use crate::hw::LatencyTable;
use std::fmt;

/// The backends this crate knows, as the CLI and the pipeline name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum BackendKind {
    /// The CPU engine with the fastest kernels of this machine (AVX-512 VNNI or AVX2 where
    /// available, else the portable SWAR kernels).
    Cpu,
    /// The CPU engine's scalar reference kernels (the definition every fast path matches).
    CpuScalar,
    /// The CPU engine's portable SWAR kernels (what `cpu` runs on a CPU without AVX2).
    CpuSwar,
    /// The CPU engine's AVX2 kernels, forced (what `cpu` runs on an x86 CPU without AVX-512
    /// VNNI); an error on a CPU without AVX2.
    CpuAvx2,
    /// The CPU engine's AVX-512 VNNI kernels, forced; an error on a CPU without them.
    CpuAvx512,
    /// The wgpu compute backend (Vulkan/Metal/DX12/GL; `NCE_WGPU_DOT=shift|dot4` picks the
    /// 2-bit kernel, `NCE_WGPU_ADAPTER` the adapter).
    Wgpu,
    /// ONNX Runtime (CPU) running the model exported as exact integer ONNX (`OnnxForm::Qdq`,
    /// docs/onnx.md). Needs `scripts/setup`'s libonnxruntime.so.
    Onnxruntime,
    /// The C runtime on an emulated Cortex-M7 (`qemu-system-arm -M mps2-an500`;
    /// `NCE_C_KERNELS=scalar|simd` picks the kernels).
    QemuCortexM7,
    /// The C runtime on emulated AArch64 (`qemu-aarch64` user mode; `NCE_C_KERNELS=scalar|simd`).
    QemuAarch64,
}

impl BackendKind {
    pub const ALL: [BackendKind; 9] = [
        BackendKind::Cpu,
        BackendKind::CpuScalar,
        BackendKind::CpuSwar,
        BackendKind::CpuAvx2,
        BackendKind::CpuAvx512,
        BackendKind::Wgpu,
        BackendKind::Onnxruntime,
        BackendKind::QemuCortexM7,
        BackendKind::QemuAarch64,
    ];

    /// The name the CLI takes and reports print.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::CpuScalar => "cpu-scalar",
            BackendKind::CpuSwar => "cpu-swar",
            BackendKind::CpuAvx2 => "cpu-avx2",
            BackendKind::CpuAvx512 => "cpu-avx512",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Onnxruntime => "onnxruntime",
            BackendKind::QemuCortexM7 => "qemu-cortex-m7",
            BackendKind::QemuAarch64 => "qemu-aarch64",
        }
    }

    /// The CPU instruction set this kind runs, or `None` for a backend other than the CPU
    /// engine (which is validated against the CPU engine instead of the simulation).
    pub fn cpu_isa(self) -> Option<cpu::Backend> {
        match self {
            BackendKind::Cpu => Some(cpu::Backend::best()),
            BackendKind::CpuScalar => Some(cpu::Backend::Scalar),
            BackendKind::CpuSwar => Some(cpu::Backend::Swar),
            BackendKind::CpuAvx2 => Some(cpu::Backend::Avx2),
            BackendKind::CpuAvx512 => Some(cpu::Backend::Avx512),
            BackendKind::Wgpu | BackendKind::Onnxruntime | BackendKind::QemuCortexM7 | BackendKind::QemuAarch64 => None,
        }
    }

    /// `None` when this build includes the backend, else why not.
    pub fn unavailable(self) -> Option<&'static str> {
        match self {
            BackendKind::Wgpu if !cfg!(feature = "wgpu") => Some("not available in this build: nce was built without the `wgpu` feature"),
            BackendKind::Onnxruntime if !cfg!(feature = "onnxruntime") => {
                Some("not available in this build: nce was built without the `onnxruntime` feature")
            }
            _ => None,
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for BackendKind {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, BackendError> {
        BackendKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| BackendError::Unknown(s.to_string()))
    }
}

/// How to open a backend. Fields a backend does not use are ignored.
///
/// Threads: what `--threads N` sets in every command is the larger of `layer_threads` and
/// `image_threads` ([`BackendOptions::threads`]): the cores the CPU engine and ONNX Runtime
/// use. The CPU engine spreads a batch's images over them (one image per thread) and splits
/// each conv of a single image over them where its `prepare` measured that clearly faster than
/// one thread (`details()` says which); ONNX Runtime takes them as intra-op threads. The
/// emulated C runtime runs `image_threads` emulators side by side.
#[derive(Clone, Debug)]
pub struct BackendOptions {
    /// Threads inside one layer; 1 is the batch-1 latency an edge core sees.
    pub layer_threads: usize,
    /// Threads over the images of a batch.
    pub image_threads: usize,
    /// wgpu adapter: an index or name substring (`None`: `NCE_WGPU_ADAPTER`, else the best).
    pub adapter: Option<String>,
    /// Most images per submission (`None`: the backend's default). Timing one image at a time
    /// wants 1, so that buffers are sized as deployed.
    pub max_batch: Option<usize>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions { layer_threads: 1, image_threads: 1, adapter: None, max_batch: None }
    }
}

impl BackendOptions {
    /// The cores a CPU backend may use: the larger of the two thread counts, at least 1.
    pub fn threads(&self) -> usize {
        self.layer_threads.max(self.image_threads).max(1)
    }
}

/// Why a backend could not be opened or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    #[error("unknown backend `{0}` (cpu, cpu-scalar, wgpu, onnxruntime, qemu-cortex-m7, qemu-aarch64)")]
    Unknown(String),
    /// The backend exists but this build left it out.
    #[error("this build has no {backend} backend (build with the `{feature}` feature)")]
    NotBuilt { backend: BackendKind, feature: &'static str },
    /// The backend cannot do what was asked (e.g. time single layers).
    #[error("backend {backend}: {msg}")]
    Unsupported { backend: String, msg: String },
    /// Two backends disagree on how many results a batch has.
    #[error("{backend} returned {got} results for {expected} images")]
    Count { backend: String, expected: usize, got: usize },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    CRuntime(#[from] super::c_runtime::CRuntimeError),
    #[cfg(feature = "wgpu")]
    #[error(transparent)]
    Wgpu(#[from] super::wgpu::WgpuError),
    #[cfg(feature = "onnxruntime")]
    #[error(transparent)]
    Onnxruntime(#[from] super::onnxruntime::OrtError),
}

/// An engine that runs exported models.
pub trait Backend {
    fn kind(&self) -> BackendKind;
    /// Short name recorded in reports and latency tables (`cpu-avx2`, `wgpu-shift`, ...).
    fn name(&self) -> String;
    /// The device it runs on, in words (CPU model and threads, GPU adapter, ...).
    fn device(&self) -> String;
    /// Lays `model` out for this backend once (weights re-laid or uploaded), to run many batches.
    fn prepare<'a>(&'a self, model: &'a QModel) -> Result<Box<dyn PreparedModel + 'a>, BackendError>;
    /// Single-layer calls, for latency tables and per-layer timing; `None` for a backend that
    /// only runs whole models.
    fn layers(&self) -> Option<&dyn Runner> {
        None
    }
    /// Fewest `(warmup, timed)` runs for a stable whole-model latency (slow backends need fewer).
    fn min_model_runs(&self) -> (usize, usize) {
        (10, 100)
    }
    /// Costs this backend counts instead of timing: an emulator's instructions per inference
    /// and per layer, the target build's flash and RAM, for `model` on `images`. `None` for
    /// backends measured by the clock.
    fn count_model(&self, _model: &QModel, _images: &[u8]) -> Option<Result<ResourceReport, BackendError>> {
        None
    }
    /// A per-layer table of counted costs over `cfg`'s width grid (what `nce measure -o`
    /// writes), instead of timing [`Backend::layers`]; `None` for backends measured by the clock.
    fn count_table(&self, _net: &Network, _cfg: &MeasureConfig) -> Option<Result<LatencyTable, BackendError>> {
        None
    }
}

/// A model laid out for one backend.
pub trait PreparedModel {
    /// Integer logits of a batch of images (concatenated `C×H×W` u8 pixels, the dataset's
    /// layout), one vector per image, bit for bit as the CPU reference computes them.
    fn run_batch(&self, images: &[u8]) -> Result<Vec<Vec<i32>>, BackendError>;
    /// How this model runs (`("dot_kernel", "shift")`, `("threads", "2")`, ...), for reports.
    fn details(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// The one registration point: the backend of `kind`, opened with `opts`.
pub fn open(kind: BackendKind, opts: &BackendOptions) -> Result<Box<dyn Backend>, BackendError> {
    match kind {
        BackendKind::Cpu | BackendKind::CpuScalar | BackendKind::CpuSwar | BackendKind::CpuAvx2 | BackendKind::CpuAvx512 => {
            let isa = kind.cpu_isa().expect("CPU kinds have an instruction set");
            let cpu = Cpu::new(isa, opts.threads())?.with_min_macs_per_thread(cpu::SPLIT_MIN_MACS_PER_THREAD);
            Ok(Box::new(cpu::backend::CpuBackend::new(kind, cpu)))
        }
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => Ok(Box::new(super::wgpu::backend::WgpuBackend::open(opts)?)),
        #[cfg(not(feature = "wgpu"))]
        BackendKind::Wgpu => Err(BackendError::NotBuilt { backend: kind, feature: "wgpu" }),
        #[cfg(feature = "onnxruntime")]
        BackendKind::Onnxruntime => Ok(Box::new(super::onnxruntime::OrtBackend::open(opts)?)),
        #[cfg(not(feature = "onnxruntime"))]
        BackendKind::Onnxruntime => Err(BackendError::NotBuilt { backend: kind, feature: "onnxruntime" }),
        BackendKind::QemuCortexM7 => Ok(Box::new(QemuBackend::open(kind, CTarget::CortexM7, opts)?)),
        BackendKind::QemuAarch64 => Ok(Box::new(QemuBackend::open(kind, CTarget::AArch64, opts)?)),
    }
}

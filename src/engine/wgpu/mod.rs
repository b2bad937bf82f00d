//! The wgpu compute backend of the integer engine (feature `wgpu`).
//!
//! WGSL kernels for every op the CPU engine runs, bit-exact with [`crate::engine::cpu::reference`]:
//! the packed 2-bit conv as a tiled implicit GEMM (`conv_w2.wgsl`, with the 16-code dot product
//! either by shift and mask or via `dot4I8Packed`, see [`DotKernel`]), the 8-bit first conv,
//! grouped and depthwise convs with either weight width as a direct conv over each output
//! channel's group (`conv_grouped.wgsl`), the fused requantisation epilogue with its int64 arithmetic emulated on u32 pairs
//! (`int64.wgsl`, `conv_common.wgsl`), max pooling, global average pooling and the classifier.
//!
//! - [`WgpuEngine`] owns an adapter's device and the compiled pipelines;
//! - [`backend::WgpuBackend`] puts both behind [`crate::engine::Backend`];
//! - [`WgpuModel`] uploads a [`crate::engine::plan::QModel`]'s weights once and runs batches with one
//!   queue submission each;
//! - [`WgpuEngine::conv2d`] and the other single-op calls exist for testing the kernels on their
//!   own (one submission per call, nothing cached).
//!
//! Adapters: [`WgpuEngine::new`] takes an [`AdapterChoice`] (index into [`adapters`] or a name
//! substring), by default from `NCE_WGPU_ADAPTER`; without one it picks a discrete GPU over an
//! integrated one over a software rasteriser, Vulkan/Metal/DX12 before GL.

pub mod backend;
mod kernels;
mod layout;
mod model;
mod ops;

pub use model::{WgpuModel, DEFAULT_BATCH};

use crate::engine::EngineError;
use std::fmt;

/// Why a wgpu engine call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WgpuError {
    /// No adapter at all: the message names what to install.
    #[error(
        "no wgpu adapter: install mesa-vulkan-drivers libvulkan1 (Vulkan; lavapipe runs on the CPU) or your GPU's \
         Vulkan/Metal/DX12 driver{}",
        if .0.is_empty() { String::new() } else { format!(" ({})", .0) }
    )]
    NoAdapter(String),
    /// The requested adapter is not among those found.
    #[error("no wgpu adapter matches `{wanted}`; found: {found}")]
    AdapterNotFound { wanted: String, found: String },
    /// The adapter refused to create a device.
    #[error("wgpu adapter {adapter}: {msg}")]
    Device { adapter: String, msg: String },
    /// A validation or out-of-memory error reported by wgpu (a bug or a limit of the adapter).
    #[error("wgpu: {0}")]
    Gpu(String),
    /// A batch or layer that does not fit the adapter's limits.
    #[error("wgpu limit: {0}")]
    Limit(String),
    /// `NCE_WGPU_DOT` holds something other than `shift` or `dot4`.
    #[error("unknown dot-product kernel `{0}` (expected shift or dot4)")]
    BadDot(String),
    /// The layer or input itself is invalid (the same checks as the CPU engine).
    #[error(transparent)]
    Engine(#[from] EngineError),
}

pub type Result<T> = std::result::Result<T, WgpuError>;

/// How the 2-bit conv kernel forms its 16-code dot products. Both are exact; which is faster
/// depends on the GPU (`dot4I8Packed` maps to DP4A-style instructions where the driver exposes
/// integer dot products and is polyfilled elsewhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DotKernel {
    /// Extract each 2-bit code by shift and mask; `Σ c·x = 2·Σ u·x − 3·Σ x`.
    Shift,
    /// Unpack 4 codes to 4 packed i8 and use `dot4I8Packed`.
    Dot4,
}

impl fmt::Display for DotKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DotKernel::Shift => "shift",
            DotKernel::Dot4 => "dot4",
        })
    }
}

impl std::str::FromStr for DotKernel {
    type Err = WgpuError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "shift" => Ok(DotKernel::Shift),
            "dot4" => Ok(DotKernel::Dot4),
            _ => Err(WgpuError::BadDot(s.to_string())),
        }
    }
}

impl DotKernel {
    pub const ALL: [DotKernel; 2] = [DotKernel::Shift, DotKernel::Dot4];

    /// `NCE_WGPU_DOT` (`shift` or `dot4`), [`DotKernel::Shift`] when unset.
    pub fn from_env() -> Result<Self> {
        match std::env::var("NCE_WGPU_DOT") {
            Ok(v) if !v.trim().is_empty() => v.parse(),
            _ => Ok(DotKernel::Shift),
        }
    }
}

/// Which adapter to use.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum AdapterChoice {
    /// The best one found (see the module docs).
    #[default]
    Best,
    /// An index into [`adapters`].
    Index(usize),
    /// A case-insensitive substring of the adapter's name, driver or backend.
    Name(String),
}

impl AdapterChoice {
    /// A number is an index, anything else a name substring; empty means [`AdapterChoice::Best`].
    pub fn parse(s: &str) -> Self {
        let s = s.trim();
        if s.is_empty() {
            AdapterChoice::Best
        } else if let Ok(i) = s.parse() {
            AdapterChoice::Index(i)
        } else {
            AdapterChoice::Name(s.to_string())
        }
    }

    /// `flag` if given, else `NCE_WGPU_ADAPTER`, else [`AdapterChoice::Best`].
    pub fn from_flag_or_env(flag: Option<&str>) -> Self {
        match flag {
            Some(f) => Self::parse(f),
            None => Self::parse(&std::env::var("NCE_WGPU_ADAPTER").unwrap_or_default()),
        }
    }
}

/// What `nce adapters` prints about one adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterInfo {
    pub index: usize,
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
}

impl AdapterInfo {
    fn new(index: usize, i: &wgpu::AdapterInfo) -> Self {
        AdapterInfo {
            index,
            name: i.name.clone(),
            backend: format!("{:?}", i.backend),
            device_type: format!("{:?}", i.device_type),
            driver: i.driver.clone(),
            driver_info: i.driver_info.clone(),
        }
    }

    fn matches(&self, needle: &str) -> bool {
        let n = needle.to_lowercase();
        [&self.name, &self.driver, &self.backend].iter().any(|s| s.to_lowercase().contains(&n))
    }
}

impl fmt::Display for AdapterInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({}, {}, driver {} {})", self.index, self.name, self.backend, self.device_type, self.driver, self.driver_info)
    }
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

fn enumerate(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
}

/// Every adapter wgpu finds (respecting `WGPU_BACKEND`), in a stable order.
pub fn adapters() -> Vec<AdapterInfo> {
    enumerate(&instance()).iter().enumerate().map(|(i, a)| AdapterInfo::new(i, &a.get_info())).collect()
}

/// Preference for [`AdapterChoice::Best`]: lower is better.
fn rank(i: &wgpu::AdapterInfo) -> (u8, u8) {
    let ty = match i.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    let backend = match i.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (ty, backend)
}

/// An adapter's device, queue and compiled kernels.
pub struct WgpuEngine {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: AdapterInfo,
    kernels: kernels::Kernels,
    /// Why `dot4` falls back to `shift` on this adapter (`None` when it is available).
    dot4_missing: Option<String>,
}

impl WgpuEngine {
    /// Opens the chosen adapter and compiles every kernel.
    pub fn new(choice: &AdapterChoice) -> Result<Self> {
        let instance = instance();
        let found = enumerate(&instance);
        if found.is_empty() {
            return Err(WgpuError::NoAdapter(String::new()));
        }
        let infos: Vec<AdapterInfo> = found.iter().enumerate().map(|(i, a)| AdapterInfo::new(i, &a.get_info())).collect();
        let not_found = || WgpuError::AdapterNotFound {
            wanted: match choice {
                AdapterChoice::Index(i) => i.to_string(),
                AdapterChoice::Name(n) => n.clone(),
                AdapterChoice::Best => "the best adapter".into(),
            },
            found: infos.iter().map(|i| format!("[{i}]")).collect::<Vec<_>>().join(", "),
        };
        let index = match choice {
            AdapterChoice::Best => (0..found.len()).min_by_key(|&i| rank(&found[i].get_info())).ok_or_else(not_found)?,
            AdapterChoice::Index(i) => Some(*i).filter(|&i| i < found.len()).ok_or_else(not_found)?,
            AdapterChoice::Name(n) => infos.iter().position(|i| i.matches(n)).ok_or_else(not_found)?,
        };
        let adapter = &found[index];
        let info = infos[index].clone();
        let desc = wgpu::DeviceDescriptor {
            label: Some("nce"),
            // The adapter's own limits: large batches need big storage buffers.
            required_limits: adapter.limits(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| WgpuError::Device { adapter: info.name.clone(), msg: e.to_string() })?;
        let dot4_missing = (!instance.wgsl_language_features().contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct))
            .then(|| format!("{} does not support WGSL packed_4x8_integer_dot_product (dot4I8Packed)", info.name));
        let kernels = kernels::Kernels::new(&device, dot4_missing.is_none())?;
        Ok(WgpuEngine { device, queue, info, kernels, dot4_missing })
    }

    /// [`WgpuEngine::new`] with `NCE_WGPU_ADAPTER` (or the best adapter).
    pub fn from_env() -> Result<Self> {
        Self::new(&AdapterChoice::from_flag_or_env(None))
    }

    pub fn adapter(&self) -> &AdapterInfo {
        &self.info
    }

    /// The kernel that will actually run for `wanted`: `dot4` falls back to `shift` (with a
    /// warning) on adapters without packed integer dot products.
    pub fn resolve_dot(&self, wanted: DotKernel) -> DotKernel {
        match (wanted, &self.dot4_missing) {
            (DotKernel::Dot4, Some(why)) => {
                tracing::warn!("{why}: using the shift-and-mask kernel instead");
                DotKernel::Shift
            }
            (d, _) => d,
        }
    }

    /// Whether `dot4` runs natively on this adapter (else it falls back to `shift`).
    pub fn has_dot4(&self) -> bool {
        self.dot4_missing.is_none()
    }

    /// Runs `f` inside validation and out-of-memory error scopes and reports what wgpu caught.
    fn scoped<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        match v.or(o) {
            Some(e) => Err(WgpuError::Gpu(e.to_string())),
            None => out,
        }
    }
}

//! The wgpu engine behind the [`Backend`] seam: whole models through [`WgpuModel`] (one queue
//! submission per batch), single layers through the engine's one-op calls.

use super::{AdapterChoice, DotKernel, WgpuEngine, WgpuModel, DEFAULT_BATCH};
use crate::engine::backend::{Backend, BackendError, BackendKind, BackendOptions, PreparedModel};
use crate::engine::measure::{ConvCall, MeasureError, Runner};
use crate::engine::plan::QModel;
use crate::engine::{Conv2d, Linear, MaxPool2d, QTensor};

/// An adapter's engine, the dot-product kernel that runs on it (after any fallback) and the
/// most images per submission.
pub struct WgpuBackend {
    engine: WgpuEngine,
    dot: DotKernel,
    max_batch: usize,
}

impl WgpuBackend {
    /// Opens `opts.adapter` (else `NCE_WGPU_ADAPTER`, else the best adapter) with the kernel
    /// `NCE_WGPU_DOT` asks for.
    pub fn open(opts: &BackendOptions) -> Result<Self, BackendError> {
        let engine = WgpuEngine::new(&AdapterChoice::from_flag_or_env(opts.adapter.as_deref()))?;
        let dot = engine.resolve_dot(DotKernel::from_env()?);
        Ok(WgpuBackend { engine, dot, max_batch: opts.max_batch.unwrap_or(DEFAULT_BATCH).max(1) })
    }

    pub fn engine(&self) -> &WgpuEngine {
        &self.engine
    }
}

impl Backend for WgpuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Wgpu
    }
    fn name(&self) -> String {
        format!("wgpu-{}", self.dot)
    }
    fn device(&self) -> String {
        self.engine.adapter().to_string()
    }
    fn prepare<'a>(&'a self, model: &'a QModel) -> Result<Box<dyn PreparedModel + 'a>, BackendError> {
        Ok(Box::new(WgpuModel::with_options(&self.engine, model, self.dot, self.max_batch)?))
    }
    fn layers(&self) -> Option<&dyn Runner> {
        Some(self)
    }
    fn min_model_runs(&self) -> (usize, usize) {
        (3, 20)
    }
}

impl PreparedModel for WgpuModel<'_> {
    fn run_batch(&self, images: &[u8]) -> Result<Vec<Vec<i32>>, BackendError> {
        Ok(WgpuModel::run_batch(self, images)?)
    }
    fn details(&self) -> Vec<(String, String)> {
        vec![("dot_kernel".into(), self.dot().to_string()), ("images_per_submission".into(), self.max_batch().to_string())]
    }
}

fn backend_err(e: super::WgpuError) -> MeasureError {
    MeasureError::Backend(e.to_string())
}

/// wgpu's single-op calls: each uploads its operands, runs one dispatch and reads the result
/// back, so a layer's time includes its own transfers (what a batch-1, layer-by-layer
/// deployment pays; a whole-model submission overlaps them, which `--check` exposes).
impl Runner for WgpuBackend {
    fn describe(&self) -> Vec<(String, String)> {
        let a = self.engine.adapter();
        vec![
            ("backend".into(), format!("wgpu-{:?}", self.dot).to_lowercase()),
            ("adapter".into(), format!("{} ({}, {})", a.name, a.backend, a.device_type)),
            ("threads".into(), "1".into()),
        ]
    }
    fn conv<'a>(&'a self, conv: &'a Conv2d) -> Result<ConvCall<'a>, MeasureError> {
        Ok(Box::new(move |x, r| self.engine.conv2d(conv, x, r, self.dot).map(drop).map_err(backend_err)))
    }
    fn global_avg_pool(&self, x: &QTensor) -> Result<(), MeasureError> {
        self.engine.global_avg_pool(x).map(drop).map_err(backend_err)
    }
    fn linear(&self, l: &Linear, x: &[i32]) -> Result<(), MeasureError> {
        self.engine.linear(l, x).map(drop).map_err(backend_err)
    }
    fn max_pool(&self, p: &MaxPool2d, x: &QTensor) -> Result<(), MeasureError> {
        self.engine.max_pool(p, x).map(drop).map_err(backend_err)
    }
}

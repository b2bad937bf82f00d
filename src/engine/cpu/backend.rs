//! The CPU engine behind the [`Backend`] seam.

use super::model::Prepared;
use super::Cpu;
use crate::engine::backend::{Backend, BackendError, BackendKind, PreparedModel};
use crate::engine::measure::{cpu_model, Runner};
use crate::engine::plan::QModel;

/// A [`Cpu`] (instruction set and per-layer threads) plus the threads a batch's images are
/// spread over.
pub struct CpuBackend {
    kind: BackendKind,
    cpu: Cpu,
    image_threads: usize,
}

impl CpuBackend {
    pub fn new(kind: BackendKind, cpu: Cpu, image_threads: usize) -> Self {
        CpuBackend { kind, cpu, image_threads: image_threads.max(1) }
    }

    pub fn cpu(&self) -> &Cpu {
        &self.cpu
    }
}

impl Backend for CpuBackend {
    fn kind(&self) -> BackendKind {
        self.kind
    }
    fn name(&self) -> String {
        format!("cpu-{}", self.cpu.backend())
    }
    fn device(&self) -> String {
        format!("{}, {} thread(s) per layer, {} per batch", cpu_model(), self.cpu.threads(), self.image_threads)
    }
    fn prepare<'a>(&'a self, model: &'a QModel) -> Result<Box<dyn PreparedModel + 'a>, BackendError> {
        Ok(Box::new(CpuModel { model, cpu: self.cpu, prepared: model.prepare(&self.cpu)?, image_threads: self.image_threads }))
    }
    fn layers(&self) -> Option<&dyn Runner> {
        Some(&self.cpu)
    }
}

/// A model prepared for one [`Cpu`].
struct CpuModel<'a> {
    model: &'a QModel,
    cpu: Cpu,
    prepared: Prepared,
    image_threads: usize,
}

impl PreparedModel for CpuModel<'_> {
    fn run_batch(&self, images: &[u8]) -> Result<Vec<Vec<i32>>, BackendError> {
        Ok(self.model.run_batch(&self.cpu, &self.prepared, images, self.image_threads)?)
    }
    fn details(&self) -> Vec<(String, String)> {
        vec![("kernels".into(), self.cpu.backend().to_string()), ("threads".into(), self.image_threads.to_string())]
    }
}

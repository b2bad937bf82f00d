//! The CPU engine behind the [`Backend`] seam.

use super::model::Prepared;
use super::Cpu;
use crate::engine::backend::{Backend, BackendError, BackendKind, PreparedModel};
use crate::engine::measure::{cpu_model, Runner};
use crate::engine::plan::QModel;

/// A [`Cpu`]: its instruction set and its threads, which serve one image's layers (each conv
/// split over them) or a batch's images (spread over them, one image per thread).
pub struct CpuBackend {
    kind: BackendKind,
    cpu: Cpu,
}

impl CpuBackend {
    pub fn new(kind: BackendKind, cpu: Cpu) -> Self {
        CpuBackend { kind, cpu }
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
        format!("{}, {} thread(s)", cpu_model(), self.cpu.threads())
    }
    fn prepare<'a>(&'a self, model: &'a QModel) -> Result<Box<dyn PreparedModel + 'a>, BackendError> {
        Ok(Box::new(CpuModel { model, cpu: self.cpu.clone(), prepared: model.prepare(&self.cpu)? }))
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
}

impl PreparedModel for CpuModel<'_> {
    fn run_batch(&self, images: &[u8]) -> Result<Vec<Vec<i32>>, BackendError> {
        Ok(self.model.run_batch(&self.cpu, &self.prepared, images, self.cpu.threads())?)
    }
    fn details(&self) -> Vec<(String, String)> {
        vec![("kernels".into(), self.cpu.backend().to_string()), ("threads".into(), self.cpu.threads().to_string())]
    }
}

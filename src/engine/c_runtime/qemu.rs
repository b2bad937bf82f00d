//! The C runtime under QEMU behind the [`Backend`] seam: `qemu-cortex-m7` (bare metal on
//! `qemu-system-arm -M mps2-an500`) and `qemu-aarch64` (Linux user mode).

use super::build::{CBuild, CTarget, Kernels};
use super::{generate, CRuntimeError};
use crate::engine::backend::{Backend, BackendError, BackendKind, BackendOptions, PreparedModel};
use crate::engine::plan::QModel;

/// A C build target run under QEMU.
pub struct QemuBackend {
    kind: BackendKind,
    target: CTarget,
    kernels: Kernels,
    /// QEMU processes a batch is split over.
    jobs: usize,
}

impl QemuBackend {
    /// The backend of `kind` (a QEMU kind), with kernels from `NCE_C_KERNELS`; fails naming the
    /// missing cross compiler or emulator.
    pub fn open(kind: BackendKind, target: CTarget, opts: &BackendOptions) -> Result<QemuBackend, CRuntimeError> {
        target.check_tools()?;
        Ok(QemuBackend { kind, target, kernels: Kernels::from_env()?, jobs: opts.image_threads.max(1) })
    }

    fn kernel_name(&self) -> &'static str {
        match (self.kernels, self.target) {
            (Kernels::Scalar, _) | (Kernels::Simd, CTarget::Host) => "scalar",
            (Kernels::Simd, CTarget::CortexM7) => "dsp",
            (Kernels::Simd, CTarget::AArch64) => "neon",
        }
    }
}

impl Backend for QemuBackend {
    fn kind(&self) -> BackendKind {
        self.kind
    }
    fn name(&self) -> String {
        format!("qemu-{}-{}", self.target.name(), self.kernel_name())
    }
    fn device(&self) -> String {
        match self.target {
            CTarget::CortexM7 => "Cortex-M7 (ARMv7E-M) emulated by qemu-system-arm -M mps2-an500".into(),
            CTarget::AArch64 => "AArch64 (ARMv8-A) emulated by qemu-aarch64 user mode".into(),
            CTarget::Host => "this machine".into(),
        }
    }
    fn prepare<'a>(&'a self, model: &'a QModel) -> Result<Box<dyn PreparedModel + 'a>, BackendError> {
        let build = CBuild::compile(&generate(model)?, self.target, self.kernels, false)?;
        Ok(Box::new(QemuModel { build, jobs: self.jobs, kernels: self.kernel_name() }))
    }
    fn min_model_runs(&self) -> (usize, usize) {
        (1, 3)
    }
}

struct QemuModel {
    build: CBuild,
    jobs: usize,
    kernels: &'static str,
}

impl PreparedModel for QemuModel {
    fn run_batch(&self, images: &[u8]) -> Result<Vec<Vec<i32>>, BackendError> {
        Ok(self.build.run(images, self.jobs, false)?.logits)
    }
    fn details(&self) -> Vec<(String, String)> {
        vec![("kernels".into(), self.kernels.into()), ("processes".into(), self.jobs.to_string())]
    }
}

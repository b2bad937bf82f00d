//! A portable C99 runtime for exported models, and the QEMU backends that run it.
//!
//! [`generate`] turns a [`QModel`](crate::engine::plan::QModel) into a self-contained C package
//! (`nce export --c-runtime DIR`): `nce_model.h/.c` hold the model's constants in execution
//! order, a static arena planned at export time and `nce_run`; `nce_runtime.h/.c` hold one
//! scalar reference per op (bit-exact with [`crate::engine::cpu::reference`]) and the
//! ARMv7E-M DSP and AArch64 NEON paths for 2-bit convolutions. [`build`] compiles a package for
//! the host or a target and runs it (natively, under `qemu-aarch64`, or on `qemu-system-arm`'s
//! Cortex-M7 board with semihosting); [`QemuBackend`] puts that behind the [`Backend`] seam.
//!
//! [`Backend`]: crate::engine::Backend

mod bench;
pub mod build;
mod generate;
mod int8_peer;
mod qemu;

pub use build::{CBuild, CTarget, Kernels, M7Report, RunOutput, TraceRecord};
pub use generate::generate;
pub use int8_peer::{generate_int8_peer, Int8Peer};
pub use qemu::{int8_peer_report, measure_insn_table, resource_report, QemuBackend, ResourceReport, StepCount, ASSUMED_CPI, M7_CLOCK_MHZ};

use std::path::PathBuf;

/// The files every package carries besides the generated model: the runtime and the test
/// harnesses (hosted, and bare-metal Cortex-M7 with its linker script).
pub const RUNTIME_FILES: [(&str, &str); 5] = [
    ("nce_runtime.h", include_str!("c/nce_runtime.h")),
    ("nce_runtime.c", include_str!("c/nce_runtime.c")),
    ("nce_main.c", include_str!("c/nce_main.c")),
    ("nce_m7_main.c", include_str!("c/nce_m7_main.c")),
    ("mps2_an500.ld", include_str!("c/mps2_an500.ld")),
];

/// A generated C package: file names (flat, relative to the package folder) and contents.
#[derive(Clone, Debug)]
pub struct CPackage {
    pub files: Vec<(String, String)>,
    /// Bytes of the static activation arena.
    pub arena_bytes: usize,
    /// Bytes of the SIMD paths' scratch buffer (unused by the scalar reference).
    pub scratch_bytes: usize,
    /// Steps of `nce_run`.
    pub steps: usize,
    /// Bytes of one input image and logits per image.
    pub input_bytes: usize,
    pub classes: usize,
}

/// The test harnesses: every package carries them, a build compiles the target's one.
const HARNESSES: [&str; 2] = ["nce_main.c", "nce_m7_main.c"];

impl CPackage {
    /// The package's own C sources (the model and its kernels, not the harnesses).
    pub fn sources(&self) -> Vec<&str> {
        self.files.iter().map(|(n, _)| n.as_str()).filter(|n| n.ends_with(".c") && !HARNESSES.contains(n)).collect()
    }
}

/// Why a C package could not be generated, built or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CRuntimeError {
    /// The model uses something the C runtime cannot reproduce exactly.
    #[error("the C runtime cannot run this model: {0}")]
    Unsupported(String),
    /// A compiler or emulator is not installed.
    #[error("{tool} not found; run scripts/setup (apt-get install {package})")]
    ToolMissing { tool: &'static str, package: &'static str },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The compiler rejected the package.
    #[error("{command} failed:\n{stderr}")]
    Compile { command: String, stderr: String },
    /// The program failed or produced output that does not parse.
    #[error("{command}: {msg}")]
    Run { command: String, msg: String },
}

//! The C runtime under QEMU behind the [`Backend`] seam: `qemu-cortex-m7` (bare metal on
//! `qemu-system-arm -M mps2-an500`) and `qemu-aarch64` (Linux user mode).

use super::bench::{generate_bench, Cost};
use super::build::{CBuild, CTarget, Kernels};
use super::{generate, generate_int8_peer, CPackage, CRuntimeError};
use crate::engine::backend::{Backend, BackendError, BackendKind, BackendOptions, PreparedModel};
use crate::engine::measure::MeasureConfig;
use crate::engine::plan::{QModel, Step};
use crate::graph::Network;
use crate::hw::{LatencyEntry, LatencyTable};
use serde::Serialize;
use std::collections::BTreeMap;

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
            (Kernels::Scalar, _) => "scalar",
            (Kernels::Simd, CTarget::Host) => "swar",
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
    fn count_model(&self, model: &QModel, images: &[u8]) -> Option<Result<ResourceReport, BackendError>> {
        (self.target == CTarget::CortexM7).then(|| Ok(resource_report(model, self.kernels, images)?))
    }
    fn count_table(&self, net: &Network, cfg: &MeasureConfig) -> Option<Result<LatencyTable, BackendError>> {
        (self.target == CTarget::CortexM7).then(|| Ok(measure_insn_table(net, cfg, self.kernels)?))
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

/// Clock the instruction counts are converted at: the STM32F767-class Cortex-M7 of
/// `hw-profiles/mcu-cortex-m7.toml`.
pub const M7_CLOCK_MHZ: f64 = 216.0;
/// Cycles per instruction assumed when converting counts to time. QEMU counts instructions,
/// not cycles: a Cortex-M7 is dual-issue but loads, multiplies and branches stall it, so real
/// CPI on these kernels lies around 1 (between 0.5 and 2); the tables state the assumption.
pub const ASSUMED_CPI: f64 = 1.0;

/// Instructions counted for one step of `nce_run`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepCount {
    /// The graph layer's name (a conv fused with its add: `conv + add`), or `input`.
    pub name: String,
    /// The latency-table signatures the step covers (conv and fused add; none for the input).
    pub signatures: Vec<String>,
    /// Instructions per image.
    pub instructions: f64,
}

/// What a model's Cortex-M7 build costs, counted under QEMU.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResourceReport {
    pub backend: String,
    /// `.text` + `.rodata` + `.data` of the package's objects (`nce_model.o` and
    /// `nce_runtime.o`; the int8 peer's `nce_int8.o`): the flash the package adds to an
    /// application (harness, startup code and libc excluded).
    pub flash_bytes: u64,
    /// `.data` + `.bss` of the same objects: the arena and the SIMD scratch buffer.
    pub static_ram_bytes: u64,
    pub arena_bytes: u64,
    pub scratch_bytes: u64,
    /// Deepest stack below the caller during `nce_run` (stack painting).
    pub stack_bytes: u64,
    pub images: u64,
    /// Instructions per inference (`nce_run`, including its per-step hooks).
    pub instructions: f64,
    /// Instructions per tick of the 25 MHz timer under `-icount shift=0` (calibrated).
    pub insn_per_tick: f64,
    pub steps: Vec<StepCount>,
}

impl ResourceReport {
    /// RAM the model needs: static data plus the stack high-water mark.
    pub fn ram_bytes(&self) -> u64 {
        self.static_ram_bytes + self.stack_bytes
    }
    /// Instructions converted to µs at [`M7_CLOCK_MHZ`] and [`ASSUMED_CPI`].
    pub fn us(instructions: f64) -> f64 {
        instructions * ASSUMED_CPI / M7_CLOCK_MHZ
    }
}

/// Name and table signatures of hook step `s` (0 is the input conversion).
fn step_names(model: &QModel, s: usize) -> (String, Vec<String>) {
    let net = model.net();
    let Some(step) = s.checked_sub(1).and_then(|i| model.steps.get(i)) else { return ("input".into(), Vec::new()) };
    let (layer, fused) = match step {
        Step::Conv { layer, out, .. } => (*layer, (out != layer).then_some(*out)),
        Step::MaxPool { layer, .. } | Step::Pool { layer, .. } | Step::Linear { layer, .. } => (*layer, None),
    };
    let l = &net.layers[layer];
    match fused {
        Some(a) => (format!("{} + {}", l.name, net.layers[a].name), vec![l.signature(), net.layers[a].signature()]),
        None => (l.name.clone(), vec![l.signature()]),
    }
}

/// Builds `model` for the Cortex-M7 with per-step hooks, runs `images` under
/// `qemu-system-arm -icount shift=0` and reads flash, RAM and instruction counts.
pub fn resource_report(model: &QModel, kernels: Kernels, images: &[u8]) -> Result<ResourceReport, CRuntimeError> {
    count_package(&generate(model)?, kernels, images, "qemu-cortex-m7", |s| step_names(model, s))
}

/// The same count for the plain int8 peer of `model`'s network ([`generate_int8_peer`]): the
/// cost of an int8 deployment of the same shapes through the same harness.
pub fn int8_peer_report(model: &QModel, kernels: Kernels, images: &[u8]) -> Result<ResourceReport, CRuntimeError> {
    let peer = generate_int8_peer(model)?;
    let names = |s: usize| (peer.step_names.get(s).cloned().unwrap_or_default(), Vec::new());
    count_package(&peer.pkg, kernels, images, "int8-peer-cortex-m7", names)
}

/// Compiles `pkg` for the Cortex-M7 with hooks, runs `images` under `-icount` and reads the
/// report; `names` gives hook step `s`'s name and table signatures.
fn count_package(
    pkg: &CPackage,
    kernels: Kernels,
    images: &[u8],
    backend: &str,
    names: impl Fn(usize) -> (String, Vec<String>),
) -> Result<ResourceReport, CRuntimeError> {
    let build = CBuild::compile(pkg, CTarget::CortexM7, kernels, true)?;
    let sizes = build.object_sizes()?;
    let out = build.run(images, 1, true)?;
    let r = out.report.ok_or_else(|| CRuntimeError::Run { command: "qemu-system-arm".into(), msg: "no nce_report.txt".into() })?;
    let (per_tick, n) = (r.insn_per_tick(), r.images.max(1) as f64);
    let steps = r
        .steps
        .iter()
        .map(|&(s, _, ticks)| {
            let (name, signatures) = names(s);
            StepCount { name, signatures, instructions: ticks as f64 * per_tick / n }
        })
        .collect();
    Ok(ResourceReport {
        backend: format!("{backend}-{}", if kernels == Kernels::Simd { "dsp" } else { "scalar" }),
        flash_bytes: sizes.text + sizes.data,
        static_ram_bytes: sizes.data + sizes.bss,
        arena_bytes: pkg.arena_bytes as u64,
        scratch_bytes: if kernels == Kernels::Simd { pkg.scratch_bytes as u64 } else { 0 },
        stack_bytes: r.stack_bytes,
        images: r.images,
        instructions: r.total_ticks as f64 * per_tick / n,
        insn_per_tick: per_tick,
        steps,
    })
}

/// Instruction counts of every layer family of `net` over `cfg`'s width grid on the Cortex-M7
/// (one program, one QEMU run), as a latency table in µs at [`M7_CLOCK_MHZ`] and
/// [`ASSUMED_CPI`]; the metadata records the assumption and the counts' resolution.
pub fn measure_insn_table(net: &Network, cfg: &MeasureConfig, kernels: Kernels) -> Result<LatencyTable, CRuntimeError> {
    let bench = generate_bench(net, cfg)?;
    let build = CBuild::compile(&bench.pkg, CTarget::CortexM7, kernels, true)?;
    let r = build
        .run(&[0], 1, true)?
        .report
        .ok_or_else(|| CRuntimeError::Run { command: "qemu-system-arm".into(), msg: "no nce_report.txt".into() })?;
    let per_tick = r.insn_per_tick();
    let ticks: BTreeMap<usize, u64> = r.steps.iter().map(|&(s, _, t)| (s, t)).collect();
    let tick = |s: usize| ticks.get(&s).copied().unwrap_or(0) as f64;
    let mut table = LatencyTable::default();
    // One timer tick of quantisation, as a uniform error's variance.
    let var = ResourceReport::us(per_tick).powi(2) / 12.0;
    for (sig, cost) in bench.costs {
        let insns = match cost {
            Cost::Step(s) => tick(s) * per_tick,
            Cost::Difference { fused, plain } => ((tick(fused) - tick(plain)) * per_tick).max(0.0),
            Cost::Free => 0.0,
        };
        table.entries.insert(sig, LatencyEntry { count: 1, mean_us: ResourceReport::us(insns), var_us2: var });
    }
    let kernels = if kernels == Kernels::Simd { "dsp" } else { "scalar" };
    for (k, v) in [
        ("backend", format!("qemu-cortex-m7-{kernels}")),
        ("unit", "instructions_counted_by_qemu_icount".into()),
        ("clock_mhz", M7_CLOCK_MHZ.to_string()),
        ("assumed_cpi", ASSUMED_CPI.to_string()),
        ("insn_per_tick", format!("{per_tick:.3}")),
        ("grid", cfg.grid.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",")),
        ("model", net.model.clone()),
        ("input", net.input.to_string()),
    ] {
        table.meta.insert(k.into(), v);
    }
    Ok(table)
}

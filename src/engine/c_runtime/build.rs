//! Compiling a [`CPackage`] for a target and running it on images: natively (the host), under
//! `qemu-aarch64` user mode, or on `qemu-system-arm`'s Cortex-M7 board (mps2-an500) with
//! semihosting for file I/O.

use super::{CPackage, CRuntimeError};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where a package runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CTarget {
    /// This machine's C compiler (`cc`), strict C99 with every warning an error.
    Host,
    /// Cortex-M7 (ARMv7E-M, soft float) bare metal on QEMU's `mps2-an500`.
    CortexM7,
    /// AArch64 Linux (static) under `qemu-aarch64` user mode.
    AArch64,
}

/// Which convolution kernels a build uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Kernels {
    /// The scalar reference only (`-DNCE_NO_SIMD`).
    Scalar,
    /// The target's fast paths: NEON on AArch64; elsewhere (Cortex-M7, this machine) 2-bit
    /// convs as four MACs per 32-bit multiply (SWAR), and on Cortex-M7 the int8 peer's DSP path.
    #[default]
    Simd,
}

impl Kernels {
    /// From `NCE_C_KERNELS` (`scalar` or `simd`; unset: `simd`).
    pub fn from_env() -> Result<Kernels, CRuntimeError> {
        match std::env::var("NCE_C_KERNELS").as_deref() {
            Err(_) | Ok("simd") => Ok(Kernels::Simd),
            Ok("scalar") => Ok(Kernels::Scalar),
            Ok(other) => Err(CRuntimeError::Unsupported(format!("NCE_C_KERNELS={other}: expected `scalar` or `simd`"))),
        }
    }
}

const WARNINGS: [&str; 5] = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror"];

impl CTarget {
    pub fn name(self) -> &'static str {
        match self {
            CTarget::Host => "host",
            CTarget::CortexM7 => "cortex-m7",
            CTarget::AArch64 => "aarch64",
        }
    }

    /// Compiler and the Debian package that has it.
    fn compiler(self) -> (&'static str, &'static str) {
        match self {
            CTarget::Host => ("cc", "gcc"),
            CTarget::CortexM7 => ("arm-none-eabi-gcc", "gcc-arm-none-eabi libnewlib-arm-none-eabi"),
            CTarget::AArch64 => ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
        }
    }

    /// Emulator and its package (`None`: runs natively).
    fn emulator(self) -> Option<(&'static str, &'static str)> {
        match self {
            CTarget::Host => None,
            CTarget::CortexM7 => Some(("qemu-system-arm", "qemu-system-arm")),
            CTarget::AArch64 => Some(("qemu-aarch64", "qemu-user")),
        }
    }

    /// `size` of the target's binutils.
    fn size_tool(self) -> &'static str {
        match self {
            CTarget::Host => "size",
            CTarget::CortexM7 => "arm-none-eabi-size",
            CTarget::AArch64 => "aarch64-linux-gnu-size",
        }
    }

    fn compile_flags(self) -> &'static [&'static str] {
        match self {
            CTarget::Host => &[],
            CTarget::CortexM7 => &["-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=soft", "-ffunction-sections", "-fdata-sections"],
            CTarget::AArch64 => &["-march=armv8-a"],
        }
    }

    fn link_flags(self) -> &'static [&'static str] {
        match self {
            CTarget::Host => &[],
            CTarget::CortexM7 => &[
                "-mcpu=cortex-m7",
                "-mthumb",
                "-mfloat-abi=soft",
                "-nostartfiles",
                "--specs=nano.specs",
                "-Tmps2_an500.ld",
                "-Wl,--gc-sections",
            ],
            CTarget::AArch64 => &["-static"],
        }
    }

    fn harness(self) -> &'static str {
        match self {
            CTarget::CortexM7 => "nce_m7_main.c",
            CTarget::Host | CTarget::AArch64 => "nce_main.c",
        }
    }

    /// Checks that the compiler and the emulator are installed.
    pub fn check_tools(self) -> Result<(), CRuntimeError> {
        let (cc, package) = self.compiler();
        let tools = std::iter::once((cc, package)).chain(self.emulator());
        for (tool, package) in tools {
            if find_in_path(tool).is_none() {
                return Err(CRuntimeError::ToolMissing { tool, package });
            }
        }
        Ok(())
    }
}

/// `tool`'s path when it is an executable on `PATH`.
fn find_in_path(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(tool)).find(|p| p.is_file())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CRuntimeError + '_ {
    move |source| CRuntimeError::Io { path: path.into(), source }
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|s| s.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}

/// Runs `cmd` to completion, killing it after `timeout`.
fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, CRuntimeError> {
    let command = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CRuntimeError::Run { command: command.clone(), msg: format!("cannot start: {e}") })?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CRuntimeError::Run { command, msg: format!("no result after {} s; killed", timeout.as_secs()) });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(CRuntimeError::Run { command, msg: e.to_string() }),
        }
    }
    child.wait_with_output().map_err(|e| CRuntimeError::Run { command, msg: e.to_string() })
}

/// One record of a traced run: a step's output for one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceRecord {
    pub image: usize,
    /// 0 is the input conversion; step `s` of the plan is `s + 1`.
    pub step: usize,
    /// Graph layer (`-1` for the input).
    pub layer: i64,
    pub values: Vec<i32>,
}

/// The Cortex-M7 harness's report (`nce_report.txt`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct M7Report {
    /// Deepest stack use below `main`'s frame during the first `nce_run` (stack painting).
    pub stack_bytes: u64,
    /// A loop of `calib_insns` instructions took `calib_ticks` timer ticks.
    pub calib_insns: u64,
    pub calib_ticks: u64,
    pub images: u64,
    /// `(hook step, graph layer, ticks summed over the images)`; step 0 is the input conversion.
    pub steps: Vec<(usize, i64, u64)>,
    /// Ticks of `nce_run` summed over the images.
    pub total_ticks: u64,
}

impl M7Report {
    /// Instructions per timer tick, from the calibration loop.
    pub fn insn_per_tick(&self) -> f64 {
        self.calib_insns as f64 / self.calib_ticks.max(1) as f64
    }

    fn parse(text: &str) -> Result<M7Report, String> {
        let mut r = M7Report::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let num = |i: usize| -> Result<i64, String> {
                f.get(i).and_then(|v| v.parse().ok()).ok_or_else(|| format!("bad report line `{line}`"))
            };
            match f.first().copied() {
                Some("stack_bytes") => r.stack_bytes = num(1)? as u64,
                Some("calib") => (r.calib_insns, r.calib_ticks) = (num(1)? as u64, num(2)? as u64),
                Some("images") => r.images = num(1)? as u64,
                Some("step") => r.steps.push((num(1)? as usize, num(2)?, num(3)? as u64)),
                Some("total") => r.total_ticks = num(1)? as u64,
                _ => return Err(format!("unexpected report line `{line}`")),
            }
        }
        Ok(r)
    }
}

/// What a run produced.
#[derive(Clone, Debug, Default)]
pub struct RunOutput {
    /// One vector of logits per image.
    pub logits: Vec<Vec<i32>>,
    /// Every step's output (hosted targets built with hooks).
    pub trace: Vec<TraceRecord>,
    /// The Cortex-M7 harness's report (of the first chunk of images).
    pub report: Option<M7Report>,
}

/// Section sizes of the package's own objects (`nce_model.o` + `nce_runtime.o`, or the int8
/// peer's `nce_int8.o`; without the harness or libc), as `size` reports them: `text` includes `.rodata`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectSizes {
    pub text: u64,
    pub data: u64,
    pub bss: u64,
}

/// A compiled package, in a temporary folder removed on drop.
pub struct CBuild {
    dir: tempfile::TempDir,
    target: CTarget,
    kernels: Kernels,
    exe: PathBuf,
    /// The package's own objects (the harness left out).
    objects: Vec<String>,
    input_bytes: usize,
    classes: usize,
}

/// A timeout generous for a loaded machine: a minute plus a second per image.
fn timeout_for(images: usize) -> Duration {
    Duration::from_secs(60 + images as u64)
}

impl CBuild {
    /// Writes `pkg` into a temporary folder and compiles it for `target` with `kernels`;
    /// `hooks` builds with `NCE_HOOK_STEPS` (tracing on hosted targets, per-step timing on
    /// the Cortex-M7).
    pub fn compile(pkg: &CPackage, target: CTarget, kernels: Kernels, hooks: bool) -> Result<CBuild, CRuntimeError> {
        target.check_tools()?;
        let dir = tempfile::Builder::new().prefix("nce-c-").tempdir().map_err(io_err(Path::new("(temporary folder)")))?;
        for (name, text) in &pkg.files {
            let p = dir.path().join(name);
            std::fs::write(&p, text).map_err(io_err(&p))?;
        }
        let (cc, _) = target.compiler();
        let mut objects = Vec::new();
        for src in pkg.sources().into_iter().chain([target.harness()]) {
            let obj = src.replace(".c", ".o");
            let mut cmd = Command::new(cc);
            cmd.args(WARNINGS).args(target.compile_flags()).current_dir(dir.path());
            if kernels == Kernels::Scalar {
                cmd.arg("-DNCE_NO_SIMD");
            }
            if hooks {
                cmd.arg("-DNCE_HOOK_STEPS");
            }
            compile_step(cmd.args(["-c", src, "-o", &obj]))?;
            objects.push(obj);
        }
        let exe = dir.path().join(format!("nce_{}.elf", target.name()));
        compile_step(Command::new(cc).current_dir(dir.path()).args(&objects).args(target.link_flags()).arg("-o").arg(&exe))?;
        objects.pop(); // the harness, compiled last
        Ok(CBuild { dir, target, kernels, exe, objects, input_bytes: pkg.input_bytes, classes: pkg.classes })
    }

    pub fn target(&self) -> CTarget {
        self.target
    }
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `size` of the package's objects.
    pub fn object_sizes(&self) -> Result<ObjectSizes, CRuntimeError> {
        let mut cmd = Command::new(self.target.size_tool());
        cmd.current_dir(self.dir.path()).args(&self.objects);
        let out = run_with_timeout(&mut cmd, Duration::from_secs(60))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut s = ObjectSizes::default();
        for line in text.lines().skip(1) {
            let f: Vec<u64> = line.split_whitespace().take(3).filter_map(|v| v.parse().ok()).collect();
            if let [t, d, b] = f[..] {
                (s.text, s.data, s.bss) = (s.text + t, s.data + d, s.bss + b);
            }
        }
        if !out.status.success() || s.text == 0 {
            return Err(CRuntimeError::Run { command: describe(&cmd), msg: format!("unexpected output: {text}") });
        }
        Ok(s)
    }

    /// Runs `images` (concatenated, `input_bytes` each) in up to `jobs` processes at once;
    /// `icount` runs the Cortex-M7 with `-icount shift=0` (its timer then counts instructions).
    pub fn run(&self, images: &[u8], jobs: usize, icount: bool) -> Result<RunOutput, CRuntimeError> {
        let per = self.input_bytes;
        if per == 0 || !images.len().is_multiple_of(per) {
            return Err(CRuntimeError::Unsupported(format!("{} image bytes are not a multiple of {per}", images.len())));
        }
        let n = images.len() / per;
        let chunk = n.div_ceil(jobs.max(1)).max(1);
        let results: Vec<Result<RunOutput, CRuntimeError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n.max(1))
                .step_by(chunk)
                .enumerate()
                .map(|(k, start)| {
                    let part = &images[start * per..(start + chunk).min(n) * per];
                    s.spawn(move || self.run_chunk(k, part, icount))
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("runner thread panicked")).collect()
        });
        let mut all = RunOutput::default();
        for (k, r) in results.into_iter().enumerate() {
            let r = r?;
            let offset = all.logits.len();
            all.logits.extend(r.logits);
            all.trace.extend(r.trace.into_iter().map(|t| TraceRecord { image: t.image + offset, ..t }));
            if k == 0 {
                all.report = r.report;
            }
        }
        Ok(all)
    }

    /// One process over `images`, in its own subfolder.
    fn run_chunk(&self, k: usize, images: &[u8], icount: bool) -> Result<RunOutput, CRuntimeError> {
        let work = self.dir.path().join(format!("run{k}"));
        std::fs::create_dir_all(&work).map_err(io_err(&work))?;
        let (input, output, trace) = (work.join("nce_in.bin"), work.join("nce_out.bin"), work.join("nce_trace.bin"));
        std::fs::write(&input, images).map_err(io_err(&input))?;
        let mut cmd = match self.target {
            CTarget::Host => Command::new(&self.exe),
            CTarget::AArch64 => {
                let mut c = Command::new("qemu-aarch64");
                c.arg(&self.exe);
                c
            }
            CTarget::CortexM7 => {
                let mut c = Command::new("qemu-system-arm");
                c.args(["-M", "mps2-an500", "-nographic", "-monitor", "none", "-serial", "none"]);
                c.args(["-semihosting-config", "enable=on,target=native", "-kernel"]).arg(&self.exe);
                if icount {
                    c.args(["-icount", "shift=0"]);
                }
                c
            }
        };
        if self.target != CTarget::CortexM7 {
            cmd.arg(&input).arg(&output).arg(&trace);
        }
        cmd.current_dir(&work);
        let command = describe(&cmd);
        let out = run_with_timeout(&mut cmd, timeout_for(images.len() / self.input_bytes))?;
        if !out.status.success() {
            let msg = format!("exit status {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
            return Err(CRuntimeError::Run { command, msg });
        }
        let run_err = |msg: String| CRuntimeError::Run { command: command.clone(), msg };
        let bytes = std::fs::read(&output).map_err(io_err(&output))?;
        let logits: Vec<Vec<i32>> = bytes
            .chunks_exact(4 * self.classes)
            .map(|c| c.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
            .collect();
        let expected = images.len() / self.input_bytes;
        if logits.len() != expected || bytes.len() != expected * 4 * self.classes {
            return Err(run_err(format!("{} bytes of logits for {expected} images", bytes.len())));
        }
        let trace = match std::fs::read(&trace) {
            Ok(b) => parse_trace(&b).map_err(run_err)?,
            Err(_) => Vec::new(),
        };
        let report = match std::fs::read_to_string(work.join("nce_report.txt")) {
            Ok(t) => Some(M7Report::parse(&t).map_err(run_err)?),
            Err(_) => None,
        };
        Ok(RunOutput { logits, trace, report })
    }
}

fn compile_step(cmd: &mut Command) -> Result<(), CRuntimeError> {
    let command = describe(cmd);
    let out = run_with_timeout(cmd, Duration::from_secs(600))?;
    if !out.status.success() {
        return Err(CRuntimeError::Compile { command, stderr: String::from_utf8_lossy(&out.stderr).into_owned() });
    }
    Ok(())
}

/// Records of five u32 (image, step, layer, kind, count) and `count` i32 values, native order.
fn parse_trace(bytes: &[u8]) -> Result<Vec<TraceRecord>, String> {
    let words: Vec<u32> = bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let head = words.get(i..i + 5).ok_or("trace ends inside a record header")?;
        let count = head[4] as usize;
        let values = words.get(i + 5..i + 5 + count).ok_or("trace ends inside a record")?;
        out.push(TraceRecord {
            image: head[0] as usize,
            step: head[1] as usize,
            layer: head[2] as i32 as i64,
            values: values.iter().map(|&v| v as i32).collect(),
        });
        i += 5 + count;
    }
    Ok(out)
}

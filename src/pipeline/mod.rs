//! `nce pipeline`: FP32 training (or an imported FP32 checkpoint), per-layer sensitivity, W2A2
//! training of the uniform baseline, the NCE search started from it, W2A2 training of the
//! searched network, export of both to `.nce`, validation on the CPU engine and on wgpu, latency
//! measurement, and a report (`report.md`, self-contained `report.html`) that opens with the
//! verdict NCE vs uniform and its noise.
//!
//! Every stage writes into `<out>/<stage>/` and finishes with a `manifest.json` of its inputs
//! (its configuration and the SHA-256 of every upstream file it read) and outputs. A rerun skips
//! a stage whose manifest matches and whose outputs are unchanged, resumes a stage that was
//! interrupted (training and search continue from their own checkpoints) and reruns everything
//! downstream of a changed file. A failing stage stops the run with an error naming it; whatever
//! was produced is kept. See `docs/pipeline.md`.

pub mod manifest;
pub mod report;
pub mod results;
pub mod stage;

use crate::engine::plan::QModel;
use crate::engine::{BackendKind, BackendOptions};
use crate::graph::ModelKind;
use crate::search::{self, SearchConfig};
use crate::sensitivity::{self, SensitivityConfig};
use crate::train::{self, TrainConfig};
use results::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use stage::{Runner, StageCtx, StageOutcome};
use std::path::{Path, PathBuf};

pub use results::Stage;

/// The stages' names, in order.
pub const STAGES: [&str; 10] = {
    let mut names = [""; 10];
    let mut i = 0;
    while i < 10 {
        names[i] = Stage::ALL[i].name();
        i += 1;
    }
    names
};

/// Every size of a schedule, in one place: a TOML file (`--schedule FILE`) or a shipped preset
/// (`presets/NAME.toml`, embedded in the binary: `--preset NAME`). Optional keys left out mean
/// "all images"; any other key missing or unknown is an error naming the file, line and column.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Training images (file-order prefix) for FP32 and both W2A2 trainings; `None` = all.
    #[serde(default)]
    pub train_subset: Option<usize>,
    /// Test images for the accuracies of the trained models; `None` = all 10,000.
    #[serde(default)]
    pub test_subset: Option<usize>,
    pub batch_size: usize,
    pub fp32_epochs: usize,
    pub fp32_lr: f64,
    pub fp32_warmup_epochs: usize,
    /// Training images for the search (split 50/50 into weight and architecture halves).
    #[serde(default)]
    pub search_train_subset: Option<usize>,
    pub search_epochs: usize,
    /// Test images for the search's per-epoch argmax accuracy (reported only).
    pub search_test_subset: usize,
    /// Expansion threshold (see `docs/search.md`).
    pub search_threshold: f64,
    /// Learning rate of the supernet's weights (the search starts them from the FP32
    /// checkpoint, so this is a fine-tuning rate, like the W2A2 trainings').
    pub search_lr: f64,
    pub w2a2_epochs: usize,
    pub w2a2_lr: f64,
    /// Validation images for sensitivity: the last N of the training set (37 evaluations for
    /// ResNet-20); `None` = 10,000. (Older presets name it `sensitivity_test_subset`.)
    #[serde(default, alias = "sensitivity_test_subset")]
    pub sensitivity_val_images: Option<usize>,
    pub calib_batch: usize,
    /// Test images run on the CPU engine and compared layer by layer with the simulation.
    #[serde(default)]
    pub validate_subset: Option<usize>,
    /// Test images run on wgpu and compared with the CPU engine.
    #[serde(default)]
    pub wgpu_subset: Option<usize>,
    /// Timed repetitions per layer and per model in the latency measurement.
    pub measure_repeats: usize,
    /// Width ratios (of the base width) the latency table covers; it must include every
    /// width the search can pick (its candidates and expansions: 0.5 to 2.0 in steps of 0.25).
    pub measure_grid: Vec<f64>,
    /// An FP32 checkpoint to start from instead of training one: `shipped:NAME` (embedded in
    /// the binary, see [`SHIPPED_CHECKPOINTS`]) or a path, relative to the schedule file.
    /// `--init` overrides it.
    #[serde(default)]
    pub fp32_init: Option<String>,
    /// Weight-only search epochs before the architecture steps start.
    #[serde(default)]
    pub search_warmup_epochs: usize,
    /// Adam learning rate of the architecture logits (default: the search's own).
    #[serde(default)]
    pub search_arch_lr: Option<f64>,
    /// Knowledge distillation from the FP32 model in both W2A2 trainings: the weight of the
    /// soft loss (0 = none) and its temperature.
    #[serde(default)]
    pub kd_alpha: f64,
    #[serde(default = "default_kd_temperature")]
    pub kd_temperature: f64,
    /// Where both W2A2 trainings start (see [`FinalInit`]).
    #[serde(default)]
    pub final_init: FinalInit,
}

/// Where the two final W2A2 trainings start (schedule key `final_init`). Either way both
/// networks get the same treatment; what differs is what a short schedule can afford.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FinalInit {
    /// Each from the FP32 model (the searched network takes its leading channels where its
    /// widths differ, fresh weights where it is wider); the search starts from the uniform W2A2
    /// model. Fair when the W2A2 trainings are long enough to undo that inheritance; in a short
    /// one the searched network starts behind.
    #[default]
    Fp32,
    /// Both inherit their weights from the search's supernet, sliced to their widths (the
    /// uniform network at the base widths, the searched one at its own), each candidate width
    /// with its own BatchNorm, then train the same W2A2 epochs; the search starts from the FP32
    /// model (its warm-up epochs adapt the supernet to 2 bits). Weight inheritance as in
    /// one-shot NAS: both start from weights trained for their widths.
    Supernet,
}

fn default_kd_temperature() -> f64 {
    4.0
}

/// FP32 checkpoints embedded in the binary, for `fp32_init = "shipped:NAME"`.
pub const SHIPPED_CHECKPOINTS: [(&str, &[u8]); 1] = [("resnet20-fp32-fashion", include_bytes!("../../examples/resnet20-fp32-fashion.ot"))];

/// A schedule shipped in `presets/` (embedded, so `--preset` works from any folder).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// The reduced schedule: every stage in minutes.
    Quick,
    /// The long schedule for results.
    Full,
}

impl Preset {
    pub const ALL: [Preset; 2] = [Preset::Quick, Preset::Full];

    pub const fn name(self) -> &'static str {
        match self {
            Preset::Quick => "quick",
            Preset::Full => "full",
        }
    }

    const fn text(self) -> &'static str {
        match self {
            Preset::Quick => include_str!("../../presets/quick.toml"),
            Preset::Full => include_str!("../../presets/full.toml"),
        }
    }

    /// The shipped schedule.
    pub fn schedule(self) -> Schedule {
        Schedule::parse(self.text(), &format!("presets/{}.toml", self.name())).expect("the shipped presets parse (tests/schedule.rs)")
    }
}

impl std::str::FromStr for Preset {
    type Err = ScheduleError;

    fn from_str(name: &str) -> Result<Preset, ScheduleError> {
        Preset::ALL.into_iter().find(|p| p.name() == name).ok_or_else(|| ScheduleError::UnknownPreset { name: name.into() })
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("{}: {source}", file.display())]
    Io { file: PathBuf, source: std::io::Error },
    #[error("{file}:{at}: {message}")]
    Invalid { file: String, at: crate::hw::Location, message: String },
    #[error("unknown preset `{name}` (shipped: {}); `fair-fashion` and `fair-fashion-0.75x` are the fair experiment's presets, run by scripts/experiments/fair-fashion.sh", Preset::ALL.map(Preset::name).join(", "))]
    UnknownPreset { name: String },
}

impl Schedule {
    /// Parses schedule TOML; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Schedule, ScheduleError> {
        toml::from_str(text).map_err(|e| ScheduleError::Invalid {
            file: file.into(),
            at: crate::hw::Location::of_offset(text, e.span().map_or(0, |s| s.start)),
            message: e.message().to_string(),
        })
    }

    /// Reads a schedule file; a relative `fp32_init` path is taken relative to the file.
    pub fn load(path: &Path) -> Result<Schedule, ScheduleError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScheduleError::Io { file: path.into(), source })?;
        let mut s = Schedule::parse(&text, &path.display().to_string())?;
        if let Some(init) = s.fp32_init.as_mut().filter(|i| !i.starts_with("shipped:") && Path::new(i.as_str()).is_relative()) {
            *init = path.parent().unwrap_or(Path::new("")).join(&*init).display().to_string();
        }
        Ok(s)
    }

    /// A shipped preset by name.
    pub fn preset(name: &str) -> Result<Schedule, ScheduleError> {
        Ok(name.parse::<Preset>()?.schedule())
    }

    /// The reduced preset (`presets/quick.toml`).
    pub fn quick() -> Schedule {
        Preset::Quick.schedule()
    }

    /// The long preset (`presets/full.toml`).
    pub fn full() -> Schedule {
        Preset::Full.schedule()
    }
}

/// Where a run's schedule came from: named in the report, its command line and the stages'
/// identities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScheduleSource {
    /// `--preset NAME`: a schedule shipped in `presets/`.
    Preset(Preset),
    /// `--schedule FILE`.
    File(PathBuf),
    /// Built in code by a library user, under this name.
    Named(String),
}

impl ScheduleSource {
    /// The name the report and the stages' identities use (the path, for a file).
    pub fn name(&self) -> String {
        match self {
            ScheduleSource::Preset(p) => p.name().into(),
            ScheduleSource::File(f) => f.display().to_string(),
            ScheduleSource::Named(n) => n.clone(),
        }
    }

    /// The command-line options that select this schedule (none for one built in code).
    pub fn cli_args(&self) -> Option<String> {
        match self {
            ScheduleSource::Preset(p) => Some(format!("--preset {}", p.name())),
            ScheduleSource::File(f) => Some(format!("--schedule {}", f.display())),
            ScheduleSource::Named(_) => None,
        }
    }
}

/// Everything that defines a pipeline run.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub profile: PathBuf,
    pub model: ModelKind,
    pub data: String,
    pub data_root: PathBuf,
    pub out: PathBuf,
    /// An FP32 checkpoint to use instead of training one.
    pub init: Option<PathBuf>,
    /// Where `schedule` came from (shown in the report).
    pub source: ScheduleSource,
    pub schedule: Schedule,
    pub seed: u64,
    /// libtorch and engine threads (0 = libtorch's default, 1 engine thread).
    pub threads: usize,
    pub progress: bool,
    /// Test hook: this stage fails right after it starts (the CLI reads
    /// `NCE_PIPELINE_FAIL_STAGE`).
    pub fail_stage: Option<Stage>,
    /// Test hook: this training stage (`fp32`, `train-nce`, `train-uniform`) stops with a
    /// checkpoint after so many optimiser steps and fails, as if the process had been killed
    /// there; the next run resumes it.
    pub interrupt: Option<(Stage, usize)>,
}

impl PipelineConfig {
    pub fn new(profile: PathBuf, model: ModelKind, data: &str, out: PathBuf, source: ScheduleSource, schedule: Schedule) -> PipelineConfig {
        PipelineConfig {
            profile,
            model,
            data: data.into(),
            data_root: PathBuf::from("data"),
            out,
            init: None,
            source,
            schedule,
            seed: 0,
            threads: 0,
            progress: true,
            fail_stage: None,
            interrupt: None,
        }
    }

    fn interrupt_for(&self, stage: Stage) -> Option<usize> {
        self.interrupt.filter(|(s, _)| *s == stage).map(|(_, n)| n)
    }
}

/// Why a stage failed: the library error with its causes, or a message.
pub type StageFailure = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("stage `{stage}` failed: {source}")]
    Stage { stage: Stage, source: StageFailure },
    #[error("{0}")]
    Setup(String),
}

/// The outcome of [`run`].
#[derive(Clone, Debug, Serialize)]
pub struct PipelineRun {
    pub stages: Vec<StageOutcome>,
    /// The report's key numbers and its verdict.
    pub summary: ReportResult,
    pub report_md: PathBuf,
    pub report_html: PathBuf,
    pub seconds: f64,
}

impl PipelineRun {
    pub fn status(&self, stage: &str) -> Option<stage::StageStatus> {
        self.stages.iter().find(|s| s.stage.name() == stage).map(|s| s.status)
    }
}

/// Whether this build can run the wgpu validation (`None`) or why not.
pub fn wgpu_unavailable() -> Option<&'static str> {
    BackendKind::Wgpu.unavailable()
}

/// Whether this build can measure latency (`None`) or why not.
pub fn measure_unavailable() -> Option<&'static str> {
    None
}

fn file_label(p: &Path) -> String {
    p.display().to_string()
}

/// The test-set accuracy the trainer reports, or an error when a hook stopped it early.
fn finished(s: &train::TrainSummary, stage: Stage) -> Result<f64, StageFailure> {
    if s.final_test_acc.is_nan() {
        return Err(format!("interrupted by the test hook after a partial run of `{stage}` (rerun to resume)").into());
    }
    Ok(s.final_test_acc)
}

/// Every stage's result, for the report.
pub struct StageResults {
    pub fp32: TrainResult,
    pub sensitivity: SensitivityResult,
    pub uniform: TrainResult,
    pub search: SearchResult,
    pub nce: TrainResult,
    pub export: PerModel<ExportedFile>,
    pub validate_cpu: PerModel<CpuValidation>,
    pub validate_wgpu: BackendCheck,
    pub measure: MeasureResult,
}

/// Runs (or resumes, or skips) every stage and writes the report.
pub fn run(cfg: &PipelineConfig) -> Result<PipelineRun, PipelineError> {
    let started = std::time::Instant::now();
    let profile = crate::cost::load_profile(&cfg.profile).map_err(|e| PipelineError::Setup(e.to_string()))?;
    std::fs::create_dir_all(&cfg.out).map_err(|e| PipelineError::Setup(format!("{}: {e}", cfg.out.display())))?;
    let profile_sha256 = profile_identity(&profile);
    let runner = Runner::new(cfg.out.clone(), Stage::ALL.len(), cfg.fail_stage, cfg.progress);
    let mut p = Pipeline { cfg, profile, profile_sha256, r: runner };
    let (fp32, sensitivity) = (p.fp32()?, p.sensitivity()?);
    // Supernet inheritance trains the uniform network from the search's supernet, so it comes after.
    let (uniform, search) = match cfg.schedule.final_init {
        FinalInit::Fp32 => (p.train_uniform()?, p.search()?),
        FinalInit::Supernet => {
            let search = p.search()?;
            (p.train_uniform()?, search)
        }
    };
    let results = StageResults {
        fp32,
        sensitivity,
        uniform,
        search,
        nce: p.train_nce()?,
        export: p.export()?,
        validate_cpu: p.validate_cpu()?,
        validate_wgpu: p.validate_wgpu()?,
        measure: p.measure()?,
    };
    let (summary, report_md, report_html) = p.report(&results)?;
    Ok(PipelineRun { stages: p.r.outcomes, summary, report_md, report_html, seconds: started.elapsed().as_secs_f64() })
}

/// What a stage that reads the profile depends on: the SHA-256 of the profile's text and of its
/// latency table, however it was given (a file, or a shipped profile by name with its embedded
/// table), so that editing either reruns the stages that use it.
fn profile_identity(p: &crate::hw::Profile) -> String {
    let mut text = p.source.clone();
    if let Some(t) = &p.latency_table {
        text.push('\n');
        text.push_str(&t.to_csv());
    }
    manifest::hex(&manifest::sha256(text.as_bytes()))
}

/// One run in progress: its configuration, its profile and the stage runner.
struct Pipeline<'a> {
    cfg: &'a PipelineConfig,
    profile: crate::hw::Profile,
    /// The profile's identity in the configuration of the stages that read it
    /// ([`profile_identity`]).
    profile_sha256: String,
    r: Runner,
}

/// The two W2A2 networks, by name.
const MODELS: [&str; 2] = ["uniform", "nce"];

impl Pipeline<'_> {
    fn at(&self, rel: &str) -> PathBuf {
        self.cfg.out.join(rel)
    }

    /// An upstream file as a stage input: its label is its path in the run folder.
    fn input(&self, rel: &str) -> (String, PathBuf) {
        (rel.to_string(), self.at(rel))
    }

    /// `config` with the profile's identity added: the stage reruns when the profile changes.
    fn with_profile(&self, mut config: serde_json::Value) -> serde_json::Value {
        config["profile_sha256"] = json!(self.profile_sha256);
        config
    }

    fn nce_file(&self, m: &str) -> PathBuf {
        self.at(&format!("export/{m}.nce"))
    }

    fn exported(&self) -> Vec<(String, PathBuf)> {
        MODELS.iter().map(|m| self.input(&format!("export/{m}.nce"))).collect()
    }

    fn checkpoints(&self) -> Vec<(String, PathBuf)> {
        MODELS.iter().map(|m| self.input(&format!("train-{m}/checkpoint.ot"))).collect()
    }

    /// The FP32 checkpoint to import: `--init`, else the schedule's `fp32_init`.
    fn fp32_source(&self) -> Result<Option<Fp32Source>, PipelineError> {
        if let Some(p) = &self.cfg.init {
            return Ok(Some(Fp32Source::File(p.clone())));
        }
        let Some(init) = &self.cfg.schedule.fp32_init else { return Ok(None) };
        match init.strip_prefix("shipped:") {
            Some(name) => match SHIPPED_CHECKPOINTS.iter().find(|(n, _)| *n == name) {
                Some((n, bytes)) => Ok(Some(Fp32Source::Shipped(n, bytes))),
                None => Err(PipelineError::Setup(format!(
                    "fp32_init = \"{init}\": no shipped checkpoint `{name}` (shipped: {})",
                    SHIPPED_CHECKPOINTS.map(|c| c.0).join(", ")
                ))),
            },
            None => Ok(Some(Fp32Source::File(PathBuf::from(init)))),
        }
    }

    fn fp32(&mut self) -> Result<TrainResult, PipelineError> {
        let (cfg, s) = (self.cfg, &self.cfg.schedule);
        match self.fp32_source()? {
            Some(Fp32Source::File(init)) => self.r.stage(
                Stage::Fp32,
                json!({"v": 2, "import": true, "data": cfg.data, "test_subset": s.test_subset}),
                &[("init".into(), init.clone())],
                &[],
                |ctx| import_fp32(cfg, &init, &file_label(&init), &ctx.dir),
            ),
            Some(Fp32Source::Shipped(name, bytes)) => self.r.stage(
                Stage::Fp32,
                json!({"v": 2, "import": true, "shipped": name, "data": cfg.data, "test_subset": s.test_subset}),
                &[],
                &[],
                |ctx| {
                    let copy = ctx.dir.join("shipped.ot");
                    manifest::write_atomic(&copy, bytes).map_err(|e| format!("{}: {e}", copy.display()))?;
                    let r = import_fp32(cfg, &copy, &format!("shipped:{name}"), &ctx.dir);
                    let _ = std::fs::remove_file(&copy);
                    r
                },
            ),
            None => {
                let mut c = self.train_config(32, s.fp32_epochs, Stage::Fp32);
                c.lr = s.fp32_lr;
                c.warmup_epochs = s.fp32_warmup_epochs;
                self.r.stage(Stage::Fp32, train_identity(&c, 1), &[], &[], |ctx| train_stage(cfg, &c, Stage::Fp32, ctx))
            }
        }
    }

    /// A training of the pipeline's model on its data with the schedule's sizes.
    fn train_config(&self, bits: u8, epochs: usize, stage: Stage) -> TrainConfig {
        let (cfg, s) = (self.cfg, &self.cfg.schedule);
        let mut c = TrainConfig::new(cfg.model, &cfg.data, bits, epochs, self.at(stage.name()));
        c.data_root = cfg.data_root.clone();
        c.train_subset = s.train_subset;
        c.test_subset = s.test_subset;
        c.batch_size = s.batch_size;
        c.seed = cfg.seed;
        c.threads = cfg.threads;
        c.max_steps = cfg.interrupt_for(stage);
        c
    }

    fn sensitivity(&mut self) -> Result<SensitivityResult, PipelineError> {
        let (cfg, s) = (self.cfg, &self.cfg.schedule);
        let fp32_ckpt = self.at("fp32/checkpoint.ot");
        let config = json!({"v": 2, "data": cfg.data, "val_images": s.sensitivity_val_images, "calib_batch": s.calib_batch});
        self.r.stage(Stage::Sensitivity, config, &[self.input("fp32/checkpoint.ot")], &[], |ctx| {
            let mut c = SensitivityConfig::new(fp32_ckpt, ctx.dir.clone());
            c.data = Some(cfg.data.clone());
            c.data_root = cfg.data_root.clone();
            if let Some(n) = s.sensitivity_val_images {
                c.val_images = n;
            }
            c.calib_batch = s.calib_batch;
            c.threads = cfg.threads;
            let rep = sensitivity::run(&c, cfg.progress)?;
            Ok(SensitivityResult { fp32_acc: rep.fp32_acc, w2a2_acc: rep.w2a2_acc, val_images: rep.val_images, layers: rep.layers })
        })
    }

    /// A final W2A2 training: from the FP32 model, distilled from it when the schedule says so.
    fn w2a2_config(&self, stage: Stage, widths: Option<Vec<usize>>) -> TrainConfig {
        let s = &self.cfg.schedule;
        let mut c = self.train_config(2, s.w2a2_epochs, stage);
        c.lr = s.w2a2_lr;
        c.warmup_epochs = 0;
        c.widths = widths;
        c.init = Some(self.at(self.w2a2_init()));
        if s.kd_alpha > 0.0 {
            c.teacher = Some(self.at("fp32/checkpoint.ot"));
            c.kd_alpha = s.kd_alpha;
            c.kd_temperature = s.kd_temperature;
        }
        c
    }

    /// The checkpoint both W2A2 trainings start from, in the run folder.
    fn w2a2_init(&self) -> &'static str {
        match self.cfg.schedule.final_init {
            FinalInit::Fp32 => "fp32/checkpoint.ot",
            FinalInit::Supernet => "search/search-checkpoint.ot",
        }
    }

    /// What a W2A2 training reads: its architecture file, if any, the FP32 model (its teacher
    /// and, by default, its start) and the supernet it starts from, if any.
    fn w2a2_inputs(&self, arch: Option<&str>) -> Vec<(String, PathBuf)> {
        let mut files: Vec<&str> = arch.into_iter().collect();
        files.push("fp32/checkpoint.ot");
        if self.w2a2_init() != "fp32/checkpoint.ot" {
            files.push(self.w2a2_init());
        }
        files.into_iter().map(|f| self.input(f)).collect()
    }

    fn train_uniform(&mut self) -> Result<TrainResult, PipelineError> {
        let c = self.w2a2_config(Stage::TrainUniform, None);
        let cfg = self.cfg;
        let inputs = self.w2a2_inputs(None);
        self.r.stage(Stage::TrainUniform, train_identity(&c, 2), &inputs, &[], |ctx| train_stage(cfg, &c, Stage::TrainUniform, ctx))
    }

    /// The search starts from the uniform W2A2 model: trained clips and 2-bit-adapted weights
    /// (from the FP32 weights the supernet sits near chance; docs/search.md), or, when both
    /// final networks inherit from the supernet, from the FP32 model (the uniform one is trained
    /// after the search then).
    fn search(&mut self) -> Result<SearchResult, PipelineError> {
        let (cfg, s) = (self.cfg, &self.cfg.schedule);
        let mut sc = SearchConfig::new(cfg.model, cfg.profile.clone(), &cfg.data, s.search_epochs, self.at("search"));
        sc.data_root = cfg.data_root.clone();
        sc.train_subset = s.search_train_subset;
        sc.test_subset = Some(s.search_test_subset);
        sc.batch_size = s.batch_size;
        sc.space.threshold = s.search_threshold;
        sc.lr = s.search_lr;
        sc.warmup_epochs = s.search_warmup_epochs;
        if let Some(lr) = s.search_arch_lr {
            sc.arch_lr = lr;
        }
        let start = match s.final_init {
            FinalInit::Fp32 => "train-uniform/checkpoint.ot",
            FinalInit::Supernet => "fp32/checkpoint.ot",
        };
        sc.init = Some(self.at(start));
        sc.seed = cfg.seed;
        sc.threads = cfg.threads;
        let inputs = [self.input(start)];
        self.r.stage(Stage::Search, self.with_profile(search_identity(&sc, 3)), &inputs, &[], |ctx| {
            let res = search::search(&sc, ctx.resume, cfg.progress)?;
            Ok(SearchResult {
                widths: res.arch.widths.clone(),
                base_widths: res.arch.base_widths.clone(),
                repaired: res.arch.repaired.clone(),
                expansions: res.arch.expansions.len(),
                epochs: res.log.len(),
                argmax_test_acc: res.log.last().map(|l| l.argmax_test_acc),
            })
        })
    }

    fn train_nce(&mut self) -> Result<TrainResult, PipelineError> {
        let arch = self.at("search/arch.toml");
        let widths = read_arch_widths(&arch).map_err(|m| PipelineError::Stage { stage: Stage::TrainNce, source: m })?;
        let c = self.w2a2_config(Stage::TrainNce, Some(widths));
        let cfg = self.cfg;
        let inputs = self.w2a2_inputs(Some("search/arch.toml"));
        self.r.stage(Stage::TrainNce, train_identity(&c, 2), &inputs, &[], |ctx| train_stage(cfg, &c, Stage::TrainNce, ctx))
    }

    fn export(&mut self) -> Result<PerModel<ExportedFile>, PipelineError> {
        let profile = self.profile.name.clone();
        let out = self.cfg.out.clone();
        self.r.stage(Stage::Export, json!({"v": 1, "profile": profile}), &self.checkpoints(), &[], |ctx| {
            let models = PerModel { uniform: (), nce: () };
            models.try_map(|m, _| {
                let label = format!("train-{m}/checkpoint.ot");
                let file = ctx.dir.join(format!("{m}.nce"));
                let bytes = export_one(&out.join(&label), &label, &profile, &file)?;
                Ok(ExportedFile { file: format!("export/{m}.nce"), bytes })
            })
        })
    }

    fn validate_cpu(&mut self) -> Result<PerModel<CpuValidation>, PipelineError> {
        let cfg = self.cfg;
        let mut inputs = self.exported();
        inputs.extend(self.checkpoints());
        let s = &cfg.schedule;
        let config = json!({"v": 3, "data": cfg.data, "validate_subset": s.validate_subset, "test_subset": s.test_subset});
        let files = PerModel {
            uniform: (self.nce_file("uniform"), self.at("train-uniform/checkpoint.ot")),
            nce: (self.nce_file("nce"), self.at("train-nce/checkpoint.ot")),
        };
        self.r.stage(Stage::ValidateCpu, config, &inputs, &[], |_| {
            let all = test_set(cfg, None)?;
            files.try_map(|_, (file, ckpt)| validate_cpu_one(cfg, &all, file, ckpt, cfg.threads.max(1)))
        })
    }

    fn validate_wgpu(&mut self) -> Result<BackendCheck, PipelineError> {
        let cfg = self.cfg;
        let config = json!({
            "v": 2,
            "available": wgpu_unavailable().is_none(),
            "data": cfg.data,
            "test_subset": cfg.schedule.wgpu_subset,
            "adapter": std::env::var("NCE_WGPU_ADAPTER").unwrap_or_default(),
            "dot": std::env::var("NCE_WGPU_DOT").unwrap_or_default(),
        });
        let files = PerModel { uniform: self.nce_file("uniform"), nce: self.nce_file("nce") };
        self.r.stage(Stage::ValidateWgpu, config, &self.exported(), &[], |_| match wgpu_unavailable() {
            Some(why) => Ok(BackendCheck { available: false, reason: Some(why.into()), adapter: None, models: None }),
            None => validate_against_cpu(cfg, BackendKind::Wgpu, &files, cfg.threads.max(1)),
        })
    }

    fn measure(&mut self) -> Result<MeasureResult, PipelineError> {
        let s = &self.cfg.schedule;
        let config = json!({"v": 3, "available": measure_unavailable().is_none(), "repeats": s.measure_repeats, "grid": s.measure_grid});
        let config = self.with_profile(config);
        let inputs = self.exported();
        let files = PerModel { uniform: self.nce_file("uniform"), nce: self.nce_file("nce") };
        self.r.stage(Stage::Measure, config, &inputs, &[], |ctx| match measure_unavailable() {
            Some(why) => Ok(MeasureResult::unavailable(why)),
            None => measure(&files, s, &ctx.dir),
        })
    }

    fn report(&mut self, results: &StageResults) -> Result<(ReportResult, PathBuf, PathBuf), PipelineError> {
        let cfg = self.cfg;
        let (md, html) = (self.at("report.md"), self.at("report.html"));
        let mut inputs: Vec<(String, PathBuf)> =
            STAGES[..STAGES.len() - 1].iter().map(|st| self.input(&format!("{st}/{}", stage::RESULT))).collect();
        inputs.push(self.input("search/arch.toml"));
        inputs.extend(self.exported());
        for extra in ["sensitivity/sensitivity.png", "search/widths.png", "search/probs.png", "search/costs.png"] {
            if self.at(extra).is_file() {
                inputs.push(self.input(extra));
            }
        }
        let schedule = serde_json::to_value(&cfg.schedule).expect("schedule serialises");
        // `v` changes with the report's wording, so a newer nce rewrites an older report.
        let config = json!({"v": 4, "nce": env!("CARGO_PKG_VERSION"), "preset": cfg.source.name(), "schedule": schedule, "model": cfg.model.name(), "data": cfg.data});
        let config = self.with_profile(config);
        let profile = &self.profile;
        let summary = self.r.stage(Stage::Report, config, &inputs, &[md.clone(), html.clone()], |ctx| {
            let inp = report::Inputs { cfg, profile, run_dir: &cfg.out, results };
            report::write(&inp, &ctx.dir, &md, &html)
        })?;
        Ok((summary, md, html))
    }
}

/// Where the FP32 model comes from when it is not trained.
enum Fp32Source {
    File(PathBuf),
    Shipped(&'static str, &'static [u8]),
}

fn train_stage(cfg: &PipelineConfig, c: &TrainConfig, stage: Stage, ctx: &StageCtx) -> Result<TrainResult, StageFailure> {
    let t = train::train(c, ctx.resume, cfg.progress)?;
    let test_acc = finished(&t, stage)?;
    Ok(TrainResult { test_acc, test_images: t.test_images, epochs: t.epochs.len(), widths: c.widths.clone(), imported_from: None })
}

/// `path` relative to the run folder that holds the stage folder `stage_dir` (upstream files
/// enter a stage's identity by their place in the run, not by where the run is).
fn in_run(stage_dir: &Path, path: &Path) -> PathBuf {
    let run = stage_dir.parent().unwrap_or(Path::new(""));
    path.strip_prefix(run).unwrap_or(path).to_path_buf()
}

/// The parts of a training configuration that define its result (paths relative to the run or
/// left out, so a run folder can be moved or copied without invalidating its manifests).
fn train_identity(c: &TrainConfig, version: u32) -> serde_json::Value {
    let mut c = c.clone();
    c.init = c.init.as_deref().map(|p| in_run(&c.out, p));
    c.teacher = c.teacher.as_deref().map(|p| in_run(&c.out, p));
    c.out = PathBuf::new();
    c.data_root = PathBuf::new();
    c.max_steps = None;
    json!({"v": version, "train": c})
}

fn search_identity(c: &SearchConfig, version: u32) -> serde_json::Value {
    let mut c = c.clone();
    c.init = c.init.as_deref().map(|p| in_run(&c.out, p));
    c.out = PathBuf::new();
    c.profile = PathBuf::new();
    c.data_root = PathBuf::new();
    json!({"v": version, "search": c})
}

fn read_arch_widths(path: &Path) -> Result<Vec<usize>, StageFailure> {
    Ok(crate::graph::ArchFile::load(path)?.widths)
}

fn import_fp32(cfg: &PipelineConfig, init: &Path, label: &str, dir: &Path) -> Result<TrainResult, StageFailure> {
    let m = train::load_model(init)?;
    if let Some(l) = m.meta.net.layers.iter().find(|l| l.has_weights() && l.wbits != 32) {
        return Err(format!("{label}: `{}` has {}-bit weights; --init takes a full-precision checkpoint", l.name, l.wbits).into());
    }
    if m.meta.net.model != cfg.model.name() {
        return Err(format!("{label} is a {}, the pipeline runs {}", m.meta.net.model, cfg.model.name()).into());
    }
    let test = test_set(cfg, cfg.schedule.test_subset)?;
    if test.shape != m.meta.net.input {
        return Err(format!("{label} takes {} inputs, {} has {}", m.meta.net.input, cfg.data, test.shape).into());
    }
    std::fs::copy(init, dir.join("checkpoint.ot")).map_err(|e| format!("copying {label}: {e}"))?;
    let loader = crate::data::Loader::eval(&test, 500, tch::Device::Cpu)?;
    let (_, acc) = train::evaluate(&m.model, &loader);
    Ok(TrainResult { test_acc: acc, test_images: test.len(), epochs: 0, widths: None, imported_from: Some(label.into()) })
}

fn export_one(ckpt: &Path, label: &str, profile: &str, file: &Path) -> Result<usize, StageFailure> {
    use crate::export::{convert, format};
    let m = train::load_model(ckpt)?;
    let layers = convert::int_layers(&m).map_err(|e| format!("exporting {}: {e}", ckpt.display()))?;
    let container = convert::to_container(&m, &layers, label, Some(profile.to_string()))?;
    let bytes = format::encode(&container)?;
    manifest::write_atomic(file, &bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    QModel::load(file)?;
    Ok(bytes.len())
}

fn test_set(cfg: &PipelineConfig, n: Option<usize>) -> Result<crate::data::Dataset, StageFailure> {
    Ok(crate::data::load_for(&cfg.data, &cfg.data_root, crate::data::Split::Test, n, None)?)
}

/// The first `n` images of `all` (every one when `None`), as [`test_set`] would load them.
fn prefix(all: &crate::data::Dataset, n: Option<usize>) -> crate::data::Dataset {
    all.subset(n.unwrap_or(all.len()))
}

/// One model on the CPU engine: every layer of the `validate_subset` images against the
/// simulation, then the logits of the `test_subset` images (the verdict's), both from `all`.
fn validate_cpu_one(
    cfg: &PipelineConfig,
    all: &crate::data::Dataset,
    file: &Path,
    ckpt: &Path,
    threads: usize,
) -> Result<CpuValidation, StageFailure> {
    use crate::engine::compare::argmax;
    use crate::engine::cpu::{Backend, Cpu};
    use crate::export::validate;
    let model = QModel::load(file)?;
    let ds = prefix(all, cfg.schedule.validate_subset);
    if ds.shape != model.net().input {
        return Err(format!("{} expects {} inputs, {} has {}", file.display(), model.net().input, cfg.data, ds.shape).into());
    }
    let backend = Backend::best();
    let cpu = Cpu::new(backend, threads)?;
    let t = std::time::Instant::now();
    let outs = model.run_layers_batch(&cpu, &ds.images, threads)?;
    let engine_seconds = t.elapsed().as_secs_f64();
    let m = train::load_model(ckpt)?;
    let rep = validate::compare(&model, &m, &ds, &outs)?;
    if !rep.exact() {
        return Err(format!(
            "{}: the CPU engine differs from the integer simulation ({} of {} values, largest deviation {} at {}; argmax agreement {}/{})",
            file.display(),
            rep.mismatched_values,
            rep.compared_values,
            rep.max_deviation,
            rep.worst,
            rep.agree,
            rep.images
        )
        .into());
    }
    // The verdict's images: the test images every accuracy of the run is measured on.
    let test = prefix(all, cfg.schedule.test_subset);
    let prepared = model.prepare(&cpu)?;
    let logits = model.run_batch(&cpu, &prepared, &test.images, threads)?;
    let correct: String = logits.iter().zip(&test.labels).map(|(l, &y)| if argmax(l) == y as usize { '1' } else { '0' }).collect();
    let test_correct = correct.bytes().filter(|&b| b == b'1').count();
    let n = rep.images.max(1) as f64;
    Ok(CpuValidation {
        backend: backend.to_string(),
        images: rep.images,
        engine_acc: rep.engine_correct as f64 / n,
        simulation_acc: rep.simulation_correct as f64 / n,
        float_acc: rep.float_correct as f64 / n,
        agree: rep.agree,
        compared_values: rep.compared_values,
        mismatched_values: rep.mismatched_values,
        max_deviation: rep.max_deviation,
        engine_seconds,
        threads,
        test_images: test.len(),
        test_acc: test_correct as f64 / test.len().max(1) as f64,
        correct,
    })
}

/// Runs each model on `kind` and on the CPU engine over the same test images and compares
/// their integer logits ([`crate::engine::compare`]); any difference fails the stage.
fn validate_against_cpu(
    cfg: &PipelineConfig,
    kind: BackendKind,
    files: &PerModel<PathBuf>,
    threads: usize,
) -> Result<BackendCheck, StageFailure> {
    let opts = BackendOptions { image_threads: threads, ..Default::default() };
    let backend = crate::engine::open(kind, &opts)?;
    let cpu = crate::engine::open(BackendKind::Cpu, &opts)?;
    let ds = test_set(cfg, cfg.schedule.wgpu_subset)?;
    let models = files.try_map(|_, file| {
        let model = QModel::load(file)?;
        let on_cpu = cpu.prepare(&model)?;
        let on_backend = backend.prepare(&model).map_err(|e| format!("{}: {e}", file.display()))?;
        let c = crate::engine::compare(&*on_cpu, &*on_backend, &ds, (&cpu.name(), &backend.name()))
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let n = c.images;
        if c.differing_images != 0 {
            return Err(StageFailure::from(format!(
                "{}: {kind} and CPU logits differ on {} of {n} images (largest deviation {}, argmax agreement {}/{n}) on {}",
                file.display(),
                c.differing_images,
                c.max_deviation,
                c.argmax_agree,
                backend.device()
            )));
        }
        Ok(BackendValidation {
            images: n,
            identical_logits: n - c.differing_images,
            argmax_agree: c.argmax_agree,
            max_deviation: c.max_deviation,
            cpu_backend: cpu.name().trim_start_matches("cpu-").to_string(),
            cpu_seconds: c.a_seconds,
            backend_seconds: c.b_seconds,
            details: on_backend.details().into_iter().collect(),
        })
    })?;
    Ok(BackendCheck { available: true, reason: None, adapter: Some(backend.device()), models: Some(models) })
}

/// Per-layer latency table of the CPU engine (one thread, the fastest kernels) over the base
/// network's width grid ([`crate::engine::measure::measure`]), then, for each model, the whole-model
/// latency the table predicts (sum over its layers) against the measured one.
fn measure(files: &PerModel<PathBuf>, s: &Schedule, dir: &Path) -> Result<MeasureResult, StageFailure> {
    use crate::engine::measure::{measure as measure_table, measure_model, predict_us, MeasureConfig};
    let loaded = files.try_map(|_, f| QModel::load(f))?;
    let opts = BackendOptions { max_batch: Some(1), ..Default::default() };
    let backend = crate::engine::open(BackendKind::Cpu, &opts)?;
    let layers = backend.layers().ok_or("the CPU engine times single layers")?;
    let repeats = s.measure_repeats;
    let mc = MeasureConfig { repeats, grid: s.measure_grid.clone(), ..MeasureConfig::default() };
    let table = measure_table(loaded.uniform.net(), layers, &mc, |_, _| {})?;
    let csv = dir.join("latency-table.csv");
    manifest::write_atomic(&csv, table.to_csv().as_bytes()).map_err(|e| format!("{}: {e}", csv.display()))?;
    let models = loaded.try_map(|_, q| {
        let predicted = predict_us(&table, q.net())?;
        let measured = measure_model(&*backend, q, mc.warmup, repeats)?;
        Ok::<_, StageFailure>(ModelLatency {
            predicted_us: predicted,
            measured_us: measured.mean_us,
            measured_sd_us: measured.var_us2.max(0.0).sqrt(),
            runs: measured.count,
            error: (predicted - measured.mean_us) / measured.mean_us,
        })
    })?;
    Ok(MeasureResult {
        available: true,
        reason: None,
        backend: backend.name(),
        threads: 1,
        table: "measure/latency-table.csv".into(),
        table_entries: table.entries.len(),
        machine: table.meta.clone(),
        models: Some(models),
    })
}

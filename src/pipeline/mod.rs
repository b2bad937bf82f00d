//! `nce pipeline`: FP32 training (or an imported FP32 checkpoint), per-layer sensitivity, the
//! NCE search, final W2A2 training of the searched network and of the uniform baseline, export
//! of both to `.nce`, validation on the CPU engine and on wgpu, latency measurement, and a
//! report (`report.md`, self-contained `report.html`).
//!
//! Every stage writes into `<out>/<stage>/` and finishes with a `manifest.json` of its inputs
//! (its configuration and the SHA-256 of every upstream file it read) and outputs. A rerun skips
//! a stage whose manifest matches and whose outputs are unchanged, resumes a stage that was
//! interrupted (training and search continue from their own checkpoints) and reruns everything
//! downstream of a changed file. A failing stage stops the run with an error naming it; whatever
//! was produced is kept. See `docs/pipeline.md`.

pub mod manifest;
pub mod report;
pub mod stage;

use crate::engine::plan::QModel;
use crate::engine::{BackendKind, BackendOptions};
use crate::graph::ModelKind;
use crate::search::{self, SearchConfig};
use crate::sensitivity::{self, SensitivityConfig};
use crate::train::{self, TrainConfig};
use serde::{Deserialize, Serialize};
use serde_json::json;
use stage::{Runner, StageCtx, StageOutcome};
use std::path::{Path, PathBuf};

/// The stages, in order.
pub const STAGES: [&str; 10] =
    ["fp32", "sensitivity", "search", "train-nce", "train-uniform", "export", "validate-cpu", "validate-wgpu", "measure", "report"];

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
    /// Test images for sensitivity (37 evaluations for ResNet-20).
    #[serde(default)]
    pub sensitivity_test_subset: Option<usize>,
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
}

/// The presets shipped in `presets/` (embedded, so `--preset` works from any folder).
pub const PRESETS: [(&str, &str); 2] =
    [("quick", include_str!("../../presets/quick.toml")), ("full", include_str!("../../presets/full.toml"))];

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("{}: {source}", file.display())]
    Io { file: PathBuf, source: std::io::Error },
    #[error("{file}:{at}: {message}")]
    Invalid { file: String, at: crate::hw::Location, message: String },
    #[error("unknown preset `{name}` (shipped: {}); `fair-fashion` is the fair experiment's preset, run by scripts/experiments/fair-fashion.sh", PRESETS.map(|p| p.0).join(", "))]
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

    /// Reads a schedule file.
    pub fn load(path: &Path) -> Result<Schedule, ScheduleError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScheduleError::Io { file: path.into(), source })?;
        Schedule::parse(&text, &path.display().to_string())
    }

    /// A shipped preset by name.
    pub fn preset(name: &str) -> Result<Schedule, ScheduleError> {
        let (_, text) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| ScheduleError::UnknownPreset { name: name.into() })?;
        Schedule::parse(text, &format!("presets/{name}.toml"))
    }

    /// The reduced preset (`presets/quick.toml`).
    pub fn quick() -> Schedule {
        Schedule::preset("quick").expect("the shipped quick preset parses (tested)")
    }

    /// The long preset (`presets/full.toml`).
    pub fn full() -> Schedule {
        Schedule::preset("full").expect("the shipped full preset parses (tested)")
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
    /// The preset's name (shown in the report), e.g. `quick`.
    pub preset: String,
    pub schedule: Schedule,
    pub seed: u64,
    /// libtorch and engine threads (0 = libtorch's default, 1 engine thread).
    pub threads: usize,
    pub progress: bool,
    /// Test hook: this stage fails right after it starts (the CLI reads
    /// `NCE_PIPELINE_FAIL_STAGE`).
    pub fail_stage: Option<String>,
    /// Test hook: this training stage (`fp32`, `train-nce`, `train-uniform`) stops with a
    /// checkpoint after so many optimiser steps and fails, as if the process had been killed
    /// there; the next run resumes it.
    pub interrupt: Option<(String, usize)>,
}

impl PipelineConfig {
    pub fn new(profile: PathBuf, model: ModelKind, data: &str, out: PathBuf, preset: &str, schedule: Schedule) -> PipelineConfig {
        PipelineConfig {
            profile,
            model,
            data: data.into(),
            data_root: PathBuf::from("data"),
            out,
            init: None,
            preset: preset.into(),
            schedule,
            seed: 0,
            threads: 0,
            progress: true,
            fail_stage: None,
            interrupt: None,
        }
    }

    fn interrupt_for(&self, stage: &str) -> Option<usize> {
        self.interrupt.as_ref().filter(|(s, _)| s == stage).map(|(_, n)| *n)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("stage `{stage}` failed: {message}")]
    Stage { stage: String, message: String },
    #[error("{0}")]
    Setup(String),
}

/// The outcome of [`run`].
#[derive(Clone, Debug, Serialize)]
pub struct PipelineRun {
    pub stages: Vec<StageOutcome>,
    pub report_md: PathBuf,
    pub report_html: PathBuf,
    pub seconds: f64,
}

impl PipelineRun {
    pub fn status(&self, stage: &str) -> Option<stage::StageStatus> {
        self.stages.iter().find(|s| s.stage == stage).map(|s| s.status)
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
fn finished(s: &train::TrainSummary, stage: &str) -> Result<f64, String> {
    if s.final_test_acc.is_nan() {
        return Err(format!("interrupted by the test hook after a partial run of `{stage}` (rerun to resume)"));
    }
    Ok(s.final_test_acc)
}

/// Runs (or resumes, or skips) every stage and writes the report.
pub fn run(cfg: &PipelineConfig) -> Result<PipelineRun, PipelineError> {
    let started = std::time::Instant::now();
    let s = &cfg.schedule;
    let profile = crate::cost::load_profile(&cfg.profile).map_err(|e| PipelineError::Setup(e.to_string()))?;
    std::fs::create_dir_all(&cfg.out).map_err(|e| PipelineError::Setup(format!("{}: {e}", cfg.out.display())))?;
    let out = &cfg.out;
    let mut r = Runner::new(out.clone(), STAGES.len(), cfg.fail_stage.clone(), cfg.progress);
    let threads = cfg.threads;
    let profile_input = ("profile".to_string(), cfg.profile.clone());

    // ---------------------------------------------------------------- fp32
    let fp32_ckpt = out.join("fp32/checkpoint.ot");
    let fp32 = match &cfg.init {
        Some(init) => r.stage(
            "fp32",
            json!({"v": 1, "import": true, "data": cfg.data, "test_subset": s.test_subset}),
            &[("init".into(), init.clone())],
            &[],
            |ctx| import_fp32(cfg, init, &ctx.dir),
        )?,
        None => {
            let mut c = TrainConfig::new(cfg.model, &cfg.data, 32, s.fp32_epochs, out.join("fp32"));
            c.data_root = cfg.data_root.clone();
            c.train_subset = s.train_subset;
            c.test_subset = s.test_subset;
            c.batch_size = s.batch_size;
            c.lr = s.fp32_lr;
            c.warmup_epochs = s.fp32_warmup_epochs;
            c.seed = cfg.seed;
            c.threads = threads;
            c.max_steps = cfg.interrupt_for("fp32");
            r.stage("fp32", train_identity(&c, 1), &[], &[], |ctx| {
                let t = train::train(&c, ctx.resume, cfg.progress).map_err(|e| e.to_string())?;
                let acc = finished(&t, "fp32")?;
                Ok(json!({"test_acc": acc, "test_images": s.test_subset, "epochs": t.epochs}))
            })?
        }
    };

    // ---------------------------------------------------------------- sensitivity
    let sens = r.stage(
        "sensitivity",
        json!({"v": 1, "data": cfg.data, "test_subset": s.sensitivity_test_subset, "calib_batch": s.calib_batch}),
        &[("fp32/checkpoint.ot".into(), fp32_ckpt.clone())],
        &[],
        |ctx| {
            let mut c = SensitivityConfig::new(fp32_ckpt.clone(), ctx.dir.clone());
            c.data = Some(cfg.data.clone());
            c.data_root = cfg.data_root.clone();
            c.test_subset = s.sensitivity_test_subset;
            c.calib_batch = s.calib_batch;
            c.threads = threads;
            let rep = sensitivity::run(&c, cfg.progress).map_err(|e| e.to_string())?;
            Ok(json!({
                "fp32_acc": rep.fp32_acc,
                "w2a2_acc": rep.w2a2_acc,
                "test_images": rep.test_images,
                "layers": rep.layers.iter().map(|l| json!({
                    "layer": l.layer, "one_on_acc": l.one_on_acc, "one_off_acc": l.one_off_acc,
                    "one_on_drop": l.one_on_drop, "one_off_gain": l.one_off_gain,
                })).collect::<Vec<_>>(),
            }))
        },
    )?;

    // ---------------------------------------------------------------- search
    let mut sc = SearchConfig::new(cfg.model, cfg.profile.clone(), &cfg.data, s.search_epochs, out.join("search"));
    sc.data_root = cfg.data_root.clone();
    sc.train_subset = s.search_train_subset;
    sc.test_subset = Some(s.search_test_subset);
    sc.batch_size = s.batch_size;
    sc.space.threshold = s.search_threshold;
    sc.lr = s.search_lr;
    sc.init = Some(fp32_ckpt.clone());
    sc.seed = cfg.seed;
    sc.threads = threads;
    let arch_path = out.join("search/arch.toml");
    let search_inputs = [profile_input.clone(), ("fp32/checkpoint.ot".to_string(), fp32_ckpt.clone())];
    let search = r.stage("search", search_identity(&sc, 1), &search_inputs, &[], |ctx| {
        let res = search::search(&sc, ctx.resume, cfg.progress).map_err(|e| e.to_string())?;
        let last = res.log.last();
        Ok(json!({
            "widths": res.arch.widths,
            "base_widths": res.arch.base_widths,
            "repaired": res.arch.repaired,
            "expansions": res.arch.expansions.len(),
            "epochs": res.log.len(),
            "argmax_test_acc": last.map(|l| l.argmax_test_acc),
        }))
    })?;

    // ---------------------------------------------------------------- final W2A2 training
    let w2a2 = |name: &str, widths: Option<Vec<usize>>| {
        let mut c = TrainConfig::new(cfg.model, &cfg.data, 2, s.w2a2_epochs, out.join(name));
        c.data_root = cfg.data_root.clone();
        c.train_subset = s.train_subset;
        c.test_subset = s.test_subset;
        c.batch_size = s.batch_size;
        c.lr = s.w2a2_lr;
        c.warmup_epochs = 0;
        c.seed = cfg.seed;
        c.threads = threads;
        c.widths = widths;
        c.init = Some(fp32_ckpt.clone());
        c.max_steps = cfg.interrupt_for(name);
        c
    };
    let train_body = |c: &TrainConfig, name: &str, ctx: &StageCtx| -> Result<serde_json::Value, String> {
        let t = train::train(c, ctx.resume, cfg.progress).map_err(|e| e.to_string())?;
        let acc = finished(&t, name)?;
        Ok(json!({"test_acc": acc, "test_images": s.test_subset, "widths": c.widths, "epochs": t.epochs}))
    };
    let nce_cfg = {
        let widths = read_arch_widths(&arch_path).map_err(|m| PipelineError::Stage { stage: "train-nce".into(), message: m })?;
        w2a2("train-nce", Some(widths))
    };
    let nce = r.stage(
        "train-nce",
        train_identity(&nce_cfg, 1),
        &[("search/arch.toml".into(), arch_path.clone()), ("fp32/checkpoint.ot".into(), fp32_ckpt.clone())],
        &[],
        |ctx| train_body(&nce_cfg, "train-nce", ctx),
    )?;
    let uni_cfg = w2a2("train-uniform", None);
    let uniform =
        r.stage("train-uniform", train_identity(&uni_cfg, 1), &[("fp32/checkpoint.ot".into(), fp32_ckpt.clone())], &[], |ctx| {
            train_body(&uni_cfg, "train-uniform", ctx)
        })?;

    // ---------------------------------------------------------------- export
    let models = [("nce", out.join("train-nce/checkpoint.ot")), ("uniform", out.join("train-uniform/checkpoint.ot"))];
    let nce_file = |m: &str| out.join(format!("export/{m}.nce"));
    let export = r.stage(
        "export",
        json!({"v": 1, "profile": profile.name}),
        &models.iter().map(|(m, p)| (format!("train-{m}/checkpoint.ot"), p.clone())).collect::<Vec<_>>(),
        &[],
        |ctx| {
            let mut res = serde_json::Map::new();
            for (m, ckpt) in &models {
                let label = format!("train-{m}/checkpoint.ot");
                let file = ctx.dir.join(format!("{m}.nce"));
                let bytes = export_one(ckpt, &label, &profile.name, &file)?;
                res.insert(m.to_string(), json!({"file": format!("export/{m}.nce"), "bytes": bytes}));
            }
            Ok(serde_json::Value::Object(res))
        },
    )?;

    // ---------------------------------------------------------------- validate-cpu
    let exported: Vec<(String, PathBuf)> = models.iter().map(|(m, _)| (format!("export/{m}.nce"), nce_file(m))).collect();
    let mut val_inputs = exported.clone();
    val_inputs.extend(models.iter().map(|(m, p)| (format!("train-{m}/checkpoint.ot"), p.clone())));
    let validate_cpu =
        r.stage("validate-cpu", json!({"v": 1, "data": cfg.data, "test_subset": s.validate_subset}), &val_inputs, &[], |_| {
            let mut res = serde_json::Map::new();
            for (m, ckpt) in &models {
                res.insert(m.to_string(), validate_cpu_one(cfg, &nce_file(m), ckpt, threads.max(1))?);
            }
            Ok(serde_json::Value::Object(res))
        })?;

    // ---------------------------------------------------------------- validate-wgpu
    let validate_wgpu = r.stage(
        "validate-wgpu",
        json!({
            "v": 1,
            "available": wgpu_unavailable().is_none(),
            "data": cfg.data,
            "test_subset": s.wgpu_subset,
            "adapter": std::env::var("NCE_WGPU_ADAPTER").unwrap_or_default(),
            "dot": std::env::var("NCE_WGPU_DOT").unwrap_or_default(),
        }),
        &exported,
        &[],
        |_| match wgpu_unavailable() {
            Some(why) => Ok(json!({"available": false, "reason": why})),
            None => validate_against_cpu(
                cfg,
                BackendKind::Wgpu,
                &models.iter().map(|(m, _)| (m.to_string(), nce_file(m))).collect::<Vec<_>>(),
                threads.max(1),
            ),
        },
    )?;

    // ---------------------------------------------------------------- measure
    let measure = r.stage(
        "measure",
        json!({"v": 1, "available": measure_unavailable().is_none(), "repeats": s.measure_repeats, "grid": s.measure_grid}),
        &{
            let mut v = exported.clone();
            v.push(profile_input.clone());
            v
        },
        &[],
        |ctx| match measure_unavailable() {
            Some(why) => Ok(json!({"available": false, "reason": why})),
            None => measure(&models.iter().map(|(m, _)| (m.to_string(), nce_file(m))).collect::<Vec<_>>(), s, &ctx.dir),
        },
    )?;

    // ---------------------------------------------------------------- report
    let report_md = out.join("report.md");
    let report_html = out.join("report.html");
    let mut rep_inputs: Vec<(String, PathBuf)> =
        STAGES[..STAGES.len() - 1].iter().map(|st| (format!("{st}/result.json"), out.join(st).join(stage::RESULT))).collect();
    rep_inputs.push(profile_input.clone());
    rep_inputs.push(("search/arch.toml".into(), arch_path.clone()));
    rep_inputs.extend(exported.iter().cloned());
    for extra in ["sensitivity/sensitivity.png", "search/widths.png", "search/probs.png", "search/costs.png"] {
        let p = out.join(extra);
        if p.is_file() {
            rep_inputs.push((extra.into(), p));
        }
    }
    let schedule_json = serde_json::to_value(s).expect("schedule serialises");
    r.stage(
        "report",
        json!({"v": 1, "preset": cfg.preset, "schedule": schedule_json, "model": cfg.model.name(), "data": cfg.data}),
        &rep_inputs,
        &[report_md.clone(), report_html.clone()],
        |ctx| {
            let inputs = report::Inputs {
                cfg,
                profile: &profile,
                run_dir: out,
                fp32: &fp32,
                sensitivity: &sens,
                search: &search,
                nce: &nce,
                uniform: &uniform,
                export: &export,
                validate_cpu: &validate_cpu,
                validate_wgpu: &validate_wgpu,
                measure: &measure,
            };
            report::write(&inputs, &ctx.dir, &report_md, &report_html)
        },
    )?;
    Ok(PipelineRun { stages: r.outcomes, report_md, report_html, seconds: started.elapsed().as_secs_f64() })
}

/// The parts of a training configuration that define its result (paths left out, so a run
/// folder can be moved or copied without invalidating its manifests).
fn train_identity(c: &TrainConfig, version: u32) -> serde_json::Value {
    let mut c = c.clone();
    c.out = PathBuf::new();
    c.init = c.init.as_ref().map(|_| PathBuf::from("fp32/checkpoint.ot"));
    c.data_root = PathBuf::new();
    c.max_steps = None;
    json!({"v": version, "train": c})
}

fn search_identity(c: &SearchConfig, version: u32) -> serde_json::Value {
    let mut c = c.clone();
    c.out = PathBuf::new();
    c.profile = PathBuf::new();
    c.data_root = PathBuf::new();
    c.init = c.init.as_ref().map(|_| PathBuf::from("fp32/checkpoint.ot"));
    json!({"v": version, "search": c})
}

fn read_arch_widths(path: &Path) -> Result<Vec<usize>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let arch: search::derive::ArchFile = toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
    Ok(arch.widths)
}

fn import_fp32(cfg: &PipelineConfig, init: &Path, dir: &Path) -> Result<serde_json::Value, String> {
    let m = train::load_model(init).map_err(|e| e.to_string())?;
    if let Some(l) = m.meta.net.layers.iter().find(|l| l.has_weights() && l.wbits != 32) {
        return Err(format!("{}: `{}` has {}-bit weights; --init takes a full-precision checkpoint", init.display(), l.name, l.wbits));
    }
    if m.meta.net.model != cfg.model.name() {
        return Err(format!("{} is a {}, the pipeline runs {}", init.display(), m.meta.net.model, cfg.model.name()));
    }
    std::fs::copy(init, dir.join("checkpoint.ot")).map_err(|e| format!("copying {}: {e}", init.display()))?;
    let mut test = crate::data::load(&cfg.data, &cfg.data_root, crate::data::Split::Test).map_err(|e| e.to_string())?;
    if let Some(n) = cfg.schedule.test_subset.filter(|&n| n < test.len()) {
        test = test.subset(n);
    }
    let loader = crate::data::Loader::eval(&test, 500, tch::Device::Cpu).map_err(|e| e.to_string())?;
    let (_, acc) = train::evaluate(&m.model, &loader);
    Ok(json!({"test_acc": acc, "test_images": test.len(), "imported_from": file_label(init)}))
}

fn export_one(ckpt: &Path, label: &str, profile: &str, file: &Path) -> Result<usize, String> {
    use crate::export::{convert, format};
    let m = train::load_model(ckpt).map_err(|e| e.to_string())?;
    let layers = convert::int_layers(&m).map_err(|e| format!("exporting {}: {e}", ckpt.display()))?;
    let container = convert::to_container(&m, &layers, label, Some(profile.to_string()))?;
    let bytes = format::encode(&container).map_err(|e| e.to_string())?;
    manifest::write_atomic(file, &bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    QModel::load(file).map_err(|e| e.to_string())?;
    Ok(bytes.len())
}

fn test_set(cfg: &PipelineConfig, n: Option<usize>) -> Result<crate::data::Dataset, String> {
    let mut ds = crate::data::load(&cfg.data, &cfg.data_root, crate::data::Split::Test).map_err(|e| e.to_string())?;
    if let Some(n) = n.filter(|&n| n < ds.len()) {
        ds = ds.subset(n);
    }
    Ok(ds)
}

fn validate_cpu_one(cfg: &PipelineConfig, file: &Path, ckpt: &Path, threads: usize) -> Result<serde_json::Value, String> {
    use crate::engine::cpu::{Backend, Cpu};
    use crate::export::validate;
    let model = QModel::load(file).map_err(|e| e.to_string())?;
    let ds = test_set(cfg, cfg.schedule.validate_subset)?;
    if ds.shape != model.net().input {
        return Err(format!("{} expects {} inputs, {} has {}", file.display(), model.net().input, cfg.data, ds.shape));
    }
    let backend = Backend::best();
    let cpu = Cpu::new(backend, 1).map_err(|e| e.to_string())?;
    let t = std::time::Instant::now();
    let outs = model.run_layers_batch(&cpu, &ds.images, threads).map_err(|e| e.to_string())?;
    let engine_seconds = t.elapsed().as_secs_f64();
    let m = train::load_model(ckpt).map_err(|e| e.to_string())?;
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
        ));
    }
    let n = rep.images.max(1) as f64;
    Ok(json!({
        "backend": backend.to_string(),
        "images": rep.images,
        "engine_acc": rep.engine_correct as f64 / n,
        "simulation_acc": rep.simulation_correct as f64 / n,
        "float_acc": rep.float_correct as f64 / n,
        "agree": rep.agree,
        "compared_values": rep.compared_values,
        "mismatched_values": rep.mismatched_values,
        "max_deviation": rep.max_deviation,
        "engine_seconds": engine_seconds,
        "threads": threads,
    }))
}

/// Runs each model on `kind` and on the CPU engine over the same test images and compares
/// their integer logits ([`crate::engine::compare`]); any difference fails the stage.
fn validate_against_cpu(
    cfg: &PipelineConfig,
    kind: BackendKind,
    models: &[(String, PathBuf)],
    threads: usize,
) -> Result<serde_json::Value, String> {
    let opts = BackendOptions { image_threads: threads, ..Default::default() };
    let backend = crate::engine::open(kind, &opts).map_err(|e| e.to_string())?;
    let cpu = crate::engine::open(BackendKind::Cpu, &opts).map_err(|e| e.to_string())?;
    let ds = test_set(cfg, cfg.schedule.wgpu_subset)?;
    let mut res = serde_json::Map::new();
    res.insert("available".into(), json!(true));
    res.insert("adapter".into(), json!(backend.device()));
    for (m, file) in models {
        let model = QModel::load(file).map_err(|e| e.to_string())?;
        let on_cpu = cpu.prepare(&model).map_err(|e| e.to_string())?;
        let on_backend = backend.prepare(&model).map_err(|e| format!("{}: {e}", file.display()))?;
        let c = crate::engine::compare(&*on_cpu, &*on_backend, &ds, (&cpu.name(), &backend.name()))
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let n = c.images;
        if c.differing_images != 0 {
            return Err(format!(
                "{}: {} and CPU logits differ on {} of {n} images (largest deviation {}, argmax agreement {}/{n}) on {}",
                file.display(),
                kind,
                c.differing_images,
                c.max_deviation,
                c.argmax_agree,
                backend.device()
            ));
        }
        let mut v = json!({
            "images": n,
            "identical_logits": n - c.differing_images,
            "argmax_agree": c.argmax_agree,
            "max_deviation": c.max_deviation,
            "cpu_acc": c.a_correct as f64 / n.max(1) as f64,
            "wgpu_acc": c.b_correct as f64 / n.max(1) as f64,
            "cpu_backend": cpu.name().trim_start_matches("cpu-"),
            "cpu_seconds": c.a_seconds,
            "wgpu_seconds": c.b_seconds,
        });
        for (k, d) in on_backend.details() {
            v[k] = json!(d);
        }
        res.insert(m.clone(), v);
    }
    Ok(serde_json::Value::Object(res))
}

/// Per-layer latency table of the CPU engine (one thread, the fastest kernels) over the base
/// network's width grid ([`crate::engine::measure::measure`]), then, for each model, the whole-model
/// latency the table predicts (sum over its layers) against the measured one.
fn measure(models: &[(String, PathBuf)], s: &Schedule, dir: &Path) -> Result<serde_json::Value, String> {
    use crate::engine::measure::{measure as measure_table, measure_model, predict_us, MeasureConfig};
    let loaded: Vec<(String, QModel)> =
        models.iter().map(|(m, f)| QModel::load(f).map(|q| (m.clone(), q)).map_err(|e| e.to_string())).collect::<Result<_, _>>()?;
    let base = &loaded.iter().find(|(m, _)| m == "uniform").ok_or("no uniform model to measure the table on")?.1;
    let opts = BackendOptions { max_batch: Some(1), ..Default::default() };
    let backend = crate::engine::open(BackendKind::Cpu, &opts).map_err(|e| e.to_string())?;
    let layers = backend.layers().ok_or("the CPU engine times single layers")?;
    let repeats = s.measure_repeats;
    let mc = MeasureConfig { repeats, grid: s.measure_grid.clone(), ..MeasureConfig::default() };
    let table = measure_table(base.net(), layers, &mc, |_, _| {}).map_err(|e| e.to_string())?;
    let csv = dir.join("latency-table.csv");
    manifest::write_atomic(&csv, table.to_csv().as_bytes()).map_err(|e| format!("{}: {e}", csv.display()))?;
    let mut res = serde_json::Map::new();
    res.insert("available".into(), json!(true));
    res.insert("backend".into(), json!(backend.name()));
    res.insert("threads".into(), json!(1));
    res.insert("table".into(), json!("measure/latency-table.csv"));
    res.insert("table_entries".into(), json!(table.entries.len()));
    res.insert("machine".into(), json!(table.meta));
    for (m, q) in &loaded {
        let predicted = predict_us(&table, q.net()).map_err(|e| e.to_string())?;
        let measured = measure_model(&*backend, q, mc.warmup, repeats).map_err(|e| e.to_string())?;
        res.insert(
            m.clone(),
            json!({
                "predicted_us": predicted,
                "measured_us": measured.mean_us,
                "measured_sd_us": measured.var_us2.max(0.0).sqrt(),
                "runs": measured.count,
                "error": (predicted - measured.mean_us) / measured.mean_us,
            }),
        );
    }
    Ok(serde_json::Value::Object(res))
}

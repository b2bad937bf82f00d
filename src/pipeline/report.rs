//! The run report: `report.md` (images linked next to it) and `report.html` (self-contained:
//! every chart embedded as a base64 `data:` URI), built from the same list of blocks so the two
//! always say the same thing. Numbers come from the stages' typed results
//! ([`super::results`]), the search's `arch.toml`, the exported models and the profile's cost
//! plugins; a stage that is not available in this build is reported as such, never filled in.
//! One function per section.

use super::manifest::{base64, Manifest, MANIFEST};
use super::results::{Better, ReportResult, Stage, Verdict};
use super::StageFailure;
use super::{FinalInit, PipelineConfig, Preset, ScheduleSource, StageResults};
use crate::cost::{CostReport, Evaluator};
use crate::engine::plan::QModel;
use crate::hw::Profile;
use crate::search::derive::ArchFile;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Everything the report reads.
pub struct Inputs<'a> {
    pub cfg: &'a PipelineConfig,
    pub profile: &'a Profile,
    pub run_dir: &'a Path,
    pub results: &'a StageResults,
}

/// A piece of the report.
enum Block {
    Heading(u8, String),
    Para(String),
    /// A highlighted paragraph (the verdict, the reduced-schedule warning, unavailable stages).
    Note(String),
    Table(Vec<String>, Vec<Vec<String>>),
    /// Alt text and the image file (PNG).
    Image(String, PathBuf),
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.2} %", 100.0 * x)
    } else {
        "n/a".into()
    }
}

fn num(x: f64) -> String {
    if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e15 {
        let s = format!("{}", x as i64);
        // Thousands separators for readability.
        let (sign, digits) = s.split_at(if s.starts_with('-') { 1 } else { 0 });
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if x.is_finite() && x.abs() >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.4}")
    }
}

fn headers(h: &[&str]) -> Vec<String> {
    h.iter().map(|s| s.to_string()).collect()
}

/// What every section shares: the loaded files and the cost reports.
struct Ctx<'a> {
    inp: &'a Inputs<'a>,
    r: &'a StageResults,
    arch: ArchFile,
    uni_cost: CostReport,
    nce_cost: CostReport,
    /// Where the report's own charts go.
    dir: &'a Path,
}

/// Resamples of the paired bootstrap.
const RESAMPLES: usize = 2000;

/// NCE − uniform on the images both were validated on, with a 95 % paired bootstrap interval.
pub fn verdict(uniform: &[bool], nce: &[bool], seed: u64) -> Option<Verdict> {
    let n = uniform.len();
    if n == 0 || nce.len() != n {
        return None;
    }
    let acc = |v: &[bool]| v.iter().filter(|&&c| c).count() as f64 / n as f64;
    let mut rng = crate::data::Rng::new(seed);
    let mut diffs: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            let mut d = 0i64;
            for _ in 0..n {
                let i = rng.below(n as u64) as usize;
                d += nce[i] as i64 - uniform[i] as i64;
            }
            d as f64 / n as f64
        })
        .collect();
    diffs.sort_by(f64::total_cmp);
    let at = |q: f64| diffs[((q * RESAMPLES as f64) as usize).min(RESAMPLES - 1)];
    let (u, c) = (acc(uniform), acc(nce));
    Some(Verdict { images: n, uniform_acc: u, nce_acc: c, difference: c - u, low: at(0.025), high: at(0.975), resamples: RESAMPLES })
}

/// Builds the blocks, draws the report's own charts into `dir`, and writes both files.
pub fn write(inp: &Inputs, dir: &Path, md_path: &Path, html_path: &Path) -> Result<ReportResult, StageFailure> {
    let run = inp.run_dir;
    let arch_path = run.join("search/arch.toml");
    let arch: ArchFile = toml::from_str(&std::fs::read_to_string(&arch_path).map_err(|e| format!("{}: {e}", arch_path.display()))?)
        .map_err(|e| format!("{}: {}", arch_path.display(), e.message()))?;
    let load = |m: &str| QModel::load(&run.join(format!("export/{m}.nce"))).map_err(|e| e.to_string());
    let (nce_model, uni_model) = (load("nce")?, load("uniform")?);
    let eval = Evaluator::new(inp.profile)?;
    let uni_cost = eval.evaluate(uni_model.net(), uni_model.net())?;
    let nce_cost = eval.evaluate(nce_model.net(), uni_model.net())?;
    let r = inp.results;
    let v = &r.validate_cpu;
    let verdict = verdict(&v.uniform.correct_flags(), &v.nce.correct_flags(), inp.cfg.seed);
    let c = Ctx { inp, r, arch, uni_cost, nce_cost, dir };
    let line = verdict.as_ref().map(|v| verdict_line(v, c.nce_cost.passes(), &r.search));

    let mut b: Vec<Block> = Vec::new();
    title(&c, line.as_deref(), &mut b);
    stages(&c, &mut b);
    profile(&c, &mut b);
    accuracy(&c, &mut b)?;
    widths(&c, &mut b)?;
    costs(&c, &mut b)?;
    validation(&c, &mut b);
    latency(&c, &mut b)?;
    b.push(Block::Heading(2, "Schedule".into()));
    b.push(generic_table(&serde_json::to_value(&inp.cfg.schedule)?));
    b.push(Block::Para(format!(
        "Written by nce {} at {} UTC.",
        env!("CARGO_PKG_VERSION"),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    )));

    let md = render_md(&b, run);
    let html = render_html(&b, &format!("NCE pipeline report: {} on {}", inp.cfg.model.name(), inp.cfg.data))?;
    super::manifest::write_atomic(md_path, md.as_bytes()).map_err(|e| format!("{}: {e}", md_path.display()))?;
    super::manifest::write_atomic(html_path, html.as_bytes()).map_err(|e| format!("{}: {e}", html_path.display()))?;
    Ok(ReportResult {
        report_md: "report.md".into(),
        report_html: "report.html".into(),
        fp32_acc: r.fp32.test_acc,
        uniform_acc: r.uniform.test_acc,
        nce_acc: r.nce.test_acc,
        nce_passes_budgets: c.nce_cost.passes(),
        verdict_line: line,
        verdict,
    })
}

/// The verdict line with its noise, what schedule this was, and the command.
fn title(c: &Ctx, verdict_line: Option<&str>, b: &mut Vec<Block>) {
    let (cfg, s) = (c.inp.cfg, &c.inp.cfg.schedule);
    b.push(Block::Heading(1, format!("NCE pipeline: {} on {}, profile {}", cfg.model.name(), cfg.data, c.inp.profile.name)));
    if let Some(line) = verdict_line {
        b.push(Block::Note(line.to_string()));
    }
    b.push(Block::Para(format!(
        "Schedule `{}`: FP32 {}, search {} epochs on {} images ({} warm-up), W2A2 {} epoch(s) per network on {} training images{}, {}.",
        cfg.source.name(),
        match &c.r.fp32.imported_from {
            Some(from) => format!("imported from `{from}`"),
            None => format!("trained {} epoch(s)", s.fp32_epochs),
        },
        s.search_epochs,
        s.search_train_subset.map_or("all".into(), |n| n.to_string()),
        s.search_warmup_epochs,
        s.w2a2_epochs,
        s.train_subset.map_or("all".into(), |n| n.to_string()),
        if s.kd_alpha > 0.0 {
            format!(", distilled from the FP32 model (α {}, T {})", s.kd_alpha, s.kd_temperature)
        } else {
            String::new()
        },
        match s.final_init {
            FinalInit::Fp32 => "each starting from the FP32 model",
            FinalInit::Supernet =>
                "each starting from its own widths' weights in the search's supernet (the search started from the FP32 model)",
        },
    )));
    if cfg.source == ScheduleSource::Preset(Preset::Quick) {
        b.push(Block::Para(
            "`quick` shows every stage working in minutes; its search and trainings are short and run once, so its difference, \
             inside the interval above or not, says nothing about NCE vs uniform: the same command on another CPU kind, whose \
             floating-point sums round differently, gives a different search and can flip the sign. `docs/results.md` has the \
             fair, multi-seed experiment."
                .into(),
        ));
    }
    b.push(Block::Para(format!(
        "Command: `nce pipeline --profile {} --model {} --data {}{} --out {}{}`.",
        cfg.profile.display(),
        cfg.model.name(),
        cfg.data,
        cfg.source.cli_args().map_or(String::new(), |a| format!(" {a}")),
        cfg.out.display(),
        cfg.init.as_ref().map_or(String::new(), |p| format!(" --init {}", p.display()))
    )));
}

/// One sentence: who is better, by how much, with the interval, and whether that is noise.
pub fn verdict_line(v: &Verdict, nce_in_budget: bool, search: &super::SearchResult) -> String {
    let pp = |x: f64| format!("{:+.2}", 100.0 * x);
    let judged = match v.better() {
        Better::Nce => "NCE scored higher than uniform W2A2 in this run",
        Better::Uniform => "uniform W2A2 scored higher than NCE in this run",
        Better::Neither => "no difference beyond test-image noise between NCE and uniform W2A2",
    };
    format!(
        "Verdict: {judged}: NCE {} vs uniform {} on the same {} test images, difference {} points \
         (95 % paired bootstrap interval {} to {}, {} resamples, over test images only: \
         one training run per network does not measure the spread between training seeds){}. \
         NCE {} its budgets; the search made {} expansion(s){}.",
        pct(v.nce_acc),
        pct(v.uniform_acc),
        v.images,
        pp(v.difference),
        pp(v.low),
        pp(v.high),
        v.resamples,
        if v.better() == Better::Neither { ": within noise" } else { "" },
        if nce_in_budget { "is within" } else { "EXCEEDS" },
        search.expansions,
        if search.widths == search.base_widths { " but kept the base widths, so both networks are the same" } else { "" }
    )
}

fn stages(c: &Ctx, b: &mut Vec<Block>) {
    b.push(Block::Heading(2, "Stages".into()));
    let unavailable = |st: Stage| match st {
        Stage::ValidateWgpu => !c.r.validate_wgpu.available,
        Stage::Measure => !c.r.measure.available,
        _ => false,
    };
    let rows = Stage::ALL
        .iter()
        .filter(|st| **st != Stage::Report)
        .map(|&st| {
            let m = Manifest::read(&c.inp.run_dir.join(st.name()).join(MANIFEST));
            vec![
                st.name().to_string(),
                m.as_ref().map_or("n/a".into(), |m| format!("{:.1}", m.seconds)),
                m.as_ref().map_or("n/a".into(), |m| if m.resumed { "yes".into() } else { "no".into() }),
                m.as_ref().map_or(0, |m| m.outputs.len()).to_string(),
                if unavailable(st) { "not available in this build".into() } else { String::new() },
            ]
        })
        .collect();
    b.push(Block::Table(headers(&["stage", "seconds (last run)", "resumed", "outputs", "note"]), rows));
    b.push(Block::Para(
        "Each stage folder holds a `manifest.json` (SHA-256 of its configuration, of every upstream file it read and of every file it wrote); \
         rerunning the same command skips stages whose manifest matches."
            .into(),
    ));
}

fn profile(c: &Ctx, b: &mut Vec<Block>) {
    let p = c.inp.profile;
    b.push(Block::Heading(2, "Hardware profile and budgets".into()));
    b.push(Block::Para(format!(
        "`{}` ({}): {}. W{}A{} unit, {} lanes of {}-bit words at {} MHz, channel granularity {}.",
        p.name,
        c.inp.cfg.profile.display(),
        p.description.trim(),
        p.unit.weight_bits,
        p.unit.activation_bits,
        p.unit.lanes,
        p.unit.word_bits,
        p.unit.clock_mhz,
        p.unit.channel_granularity
    )));
    let rows =
        c.uni_cost.budgets.iter().map(|v| vec![v.metric.clone(), v.plugin.clone(), v.limit.clone(), num(v.max), num(v.base)]).collect();
    b.push(Block::Table(headers(&["budget", "plugin", "limit", "absolute limit", "uniform (base) value"]), rows));
}

/// Accuracies of the three networks. The W2A2 ones are the CPU engine's on the run's test
/// images (the deployed integer model, the images the verdict uses); tch's are beside them.
fn accuracy(c: &Ctx, b: &mut Vec<Block>) -> Result<(), StageFailure> {
    let r = c.r;
    let v = &r.validate_cpu;
    b.push(Block::Heading(2, "Accuracy".into()));
    let n = v.uniform.test_images;
    let same = [r.fp32.test_images, r.uniform.test_images, r.nce.test_images, v.nce.test_images].iter().all(|&t| t == n);
    b.push(Block::Para(format!(
        "{n} test images{}. Engine = the exported integer model on the CPU engine; tch = the training-time simulation.",
        if same { ", the same for every number in this table" } else { " for the engine; tch accuracies on the images shown" }
    )));
    let row = |name: &str, tch: &super::TrainResult, engine: Option<f64>| {
        vec![name.to_string(), engine.map_or("—".into(), pct), pct(tch.test_acc), tch.test_images.to_string()]
    };
    b.push(Block::Table(
        headers(&["model", "test accuracy (engine)", "test accuracy (tch)", "tch test images"]),
        vec![
            row("FP32", &r.fp32, None),
            row("uniform W2A2", &r.uniform, Some(v.uniform.test_acc)),
            row("NCE W2A2", &r.nce, Some(v.nce.test_acc)),
        ],
    ));
    let chart = c.dir.join("accuracy");
    crate::plot::bar_chart(
        &chart,
        &format!("Test accuracy ({n} test images)"),
        "accuracy (%)",
        &["FP32 (tch)".into(), "uniform W2A2".into(), "NCE W2A2".into()],
        &[("test accuracy".into(), vec![100.0 * r.fp32.test_acc, 100.0 * v.uniform.test_acc, 100.0 * v.nce.test_acc])],
    )?;
    b.push(Block::Image("Test accuracy of FP32, uniform W2A2 and NCE W2A2".into(), chart.with_extension("png")));
    Ok(())
}

fn widths(c: &Ctx, b: &mut Vec<Block>) -> Result<(), StageFailure> {
    let (r, s, arch) = (c.r, &c.inp.cfg.schedule, &c.arch);
    b.push(Block::Heading(2, "Per-layer widths and sensitivity".into()));
    b.push(Block::Para(format!(
        "Searched widths ({} epochs, threshold {}; {} expansion event(s){}; the supernet's argmax architecture scored {} on the search's \
         {} test images at the last epoch) next to each layer's 2-bit sensitivity of the FP32 model \
         (one-on drop: accuracy lost when only this layer is W2A2; one-off gain: accuracy regained when only this layer stays FP32 in \
         the W2A2 network; {} validation images carved from the training set, clips calibrated, no training). Sensitivity: FP32 {:.2} %, untrained W2A2 {:.2} %.",
        s.search_epochs,
        s.search_threshold,
        arch.expansions.len(),
        if arch.repaired.is_empty() { String::new() } else { format!("; repaired: {}", arch.repaired.join(", ")) },
        r.search.argmax_test_acc.map_or("n/a".into(), pct),
        s.search_test_subset,
        r.sensitivity.val_images,
        r.sensitivity.fp32_acc,
        r.sensitivity.w2a2_acc,
    )));
    let sens_of = |name: &str| r.sensitivity.layers.iter().find(|l| l.layer == name);
    let mut rows = Vec::new();
    let (mut cats, mut change, mut drop, mut gain) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (l, &w) in arch.layers.iter().zip(&arch.widths) {
        let p_sel = l.candidates.iter().position(|&c| c == w).and_then(|i| l.probs.get(i)).copied();
        let sl = sens_of(&l.name);
        let (d, g) = (sl.map(|v| v.one_on_drop), sl.map(|v| v.one_off_gain));
        let ch = 100.0 * (w as f64 - l.base as f64) / l.base as f64;
        rows.push(vec![
            l.name.clone(),
            l.base.to_string(),
            w.to_string(),
            format!("{ch:+.0} %"),
            format!("{:?}", l.candidates),
            p_sel.map_or("n/a".into(), |p| format!("{p:.3}")),
            d.map_or("— (8-bit)".into(), |x| format!("{x:+.2} pp")),
            g.map_or("— (8-bit)".into(), |x| format!("{x:+.2} pp")),
        ]);
        cats.push(l.name.clone());
        change.push(ch);
        drop.push(d.unwrap_or(f64::NAN));
        gain.push(g.unwrap_or(f64::NAN));
    }
    b.push(Block::Table(
        headers(&["layer", "base", "searched", "change", "candidates", "p(searched)", "one-on drop", "one-off gain"]),
        rows,
    ));
    let chart = c.dir.join("widths-sensitivity");
    crate::plot::bar_chart(
        &chart,
        "Width change vs 2-bit sensitivity per layer",
        "% (width) / percentage points (sensitivity)",
        &cats,
        &[("width change vs base (%)".into(), change), ("one-on drop (pp)".into(), drop), ("one-off gain (pp)".into(), gain)],
    )?;
    b.push(Block::Image("Width change and sensitivity per layer".into(), chart.with_extension("png")));
    for (rel, alt) in [
        ("search/widths.png", "Base vs searched widths"),
        ("sensitivity/sensitivity.png", "Per-layer 2-bit sensitivity"),
        ("search/probs.png", "Probability of each slot's widest candidate per search epoch"),
    ] {
        let p = c.inp.run_dir.join(rel);
        if p.is_file() {
            b.push(Block::Image(alt.into(), p));
        }
    }
    Ok(())
}

fn costs(c: &Ctx, b: &mut Vec<Block>) -> Result<(), StageFailure> {
    b.push(Block::Heading(2, "Costs against budgets".into()));
    b.push(Block::Para(format!(
        "Every metric of every plugin of `{}` for the two trained W2A2 networks (as exported); relative budgets are resolved against the uniform network.",
        c.inp.profile.name
    )));
    b.push(cost_table(&c.uni_cost, &c.nce_cost));
    let budgeted: Vec<String> = c.uni_cost.budgets.iter().map(|v| format!("{} ({})", v.metric, v.plugin)).collect();
    if !budgeted.is_empty() {
        let chart = c.dir.join("budgets");
        let rel = |r: &CostReport| r.budgets.iter().map(|v| v.value / v.max).collect();
        crate::plot::bar_chart_with_lines(
            &chart,
            "Cost relative to each budget (1.0 = at the limit)",
            "value / limit",
            &budgeted,
            &[("uniform W2A2".into(), rel(&c.uni_cost)), ("NCE W2A2".into(), rel(&c.nce_cost))],
            &[("budget".into(), 1.0)],
        )?;
        b.push(Block::Image("Cost relative to each budget".into(), chart.with_extension("png")));
    }
    let costs = c.inp.run_dir.join("search/costs.png");
    if costs.is_file() {
        b.push(Block::Image("Search: argmax and expected cost per epoch relative to each budget".into(), costs));
    }
    Ok(())
}

fn validation(c: &Ctx, b: &mut Vec<Block>) {
    let r = c.r;
    b.push(Block::Heading(2, "Export and validation".into()));
    let rows = r
        .validate_cpu
        .iter()
        .into_iter()
        .map(|(m, v)| {
            let e = if m == "nce" { &r.export.nce } else { &r.export.uniform };
            vec![
                format!("{m} W2A2"),
                e.file.clone(),
                num(e.bytes as f64),
                v.backend.clone(),
                format!("{}/{}", v.agree, v.images),
                format!("{} of {}", num(v.mismatched_values as f64), num(v.compared_values as f64)),
                num(v.max_deviation as f64),
            ]
        })
        .collect();
    b.push(Block::Para(
        "CPU integer engine vs the tch integer simulation of the checkpoint, every layer's integer output compared:".into(),
    ));
    b.push(Block::Table(
        headers(&["model", "file", "bytes", "CPU kernels", "argmax agreement", "differing values", "largest deviation"]),
        rows,
    ));
    b.push(Block::Heading(3, "CPU vs wgpu".into()));
    let w = &r.validate_wgpu;
    let Some(models) = w.models.as_ref().filter(|_| w.available) else {
        b.push(Block::Note(format!("validate-wgpu: {}.", w.reason.as_deref().unwrap_or("not available in this build"))));
        return;
    };
    b.push(Block::Para(format!(
        "Both models on the wgpu engine (adapter {}) and on the CPU engine, integer logits compared image by image:",
        w.adapter.as_deref().unwrap_or("n/a")
    )));
    let rows = models
        .iter()
        .into_iter()
        .map(|(m, v)| {
            vec![
                format!("{m} W2A2"),
                format!("{}/{}", v.identical_logits, v.images),
                format!("{}/{}", v.argmax_agree, v.images),
                num(v.max_deviation as f64),
                v.details.get("dot_kernel").cloned().unwrap_or_else(|| "n/a".into()),
                format!("{:.2} / {:.2}", v.cpu_seconds, v.backend_seconds),
            ]
        })
        .collect();
    b.push(Block::Table(
        headers(&["model", "identical logits", "argmax agreement", "largest deviation", "wgpu dot kernel", "seconds CPU / wgpu"]),
        rows,
    ));
}

fn latency(c: &Ctx, b: &mut Vec<Block>) -> Result<(), StageFailure> {
    b.push(Block::Heading(2, "Latency: measured vs predicted".into()));
    let ms = &c.r.measure;
    match ms.models.as_ref().filter(|_| ms.available) {
        None => b.push(Block::Note(format!("measure: {}.", ms.reason.as_deref().unwrap_or("not available in this build")))),
        Some(models) => {
            b.push(Block::Para(format!(
                "Per-layer latency table of the CPU engine ({}, {} thread, {} entries: `{}`) measured over the base network's width grid on \
                 this machine; predicted = sum of the table over a model's layers (what the `latency-lut` plugin computes), measured = the \
                 whole model on one image, {} timed runs.",
                ms.backend, ms.threads, ms.table_entries, ms.table, models.uniform.runs,
            )));
            let rows = models
                .iter()
                .into_iter()
                .map(|(m, l)| {
                    vec![
                        format!("{m} W2A2"),
                        format!("{:.1}", l.predicted_us),
                        format!("{:.1}", l.measured_us),
                        format!("{:.1}", l.measured_sd_us),
                        format!("{:+.1} %", 100.0 * l.error),
                    ]
                })
                .collect();
            b.push(Block::Table(headers(&["model", "predicted (µs)", "measured (µs)", "measured s.d. (µs)", "prediction error"]), rows));
            let chart = c.dir.join("latency");
            crate::plot::bar_chart(
                &chart,
                "CPU engine latency per image: predicted vs measured",
                "µs",
                &["uniform W2A2".into(), "NCE W2A2".into()],
                &[
                    ("predicted (table)".into(), vec![models.uniform.predicted_us, models.nce.predicted_us]),
                    ("measured".into(), vec![models.uniform.measured_us, models.nce.measured_us]),
                ],
            )?;
            b.push(Block::Image("CPU engine latency per image, predicted vs measured".into(), chart.with_extension("png")));
        }
    }
    let predicted: Vec<String> = c
        .nce_cost
        .metrics
        .iter()
        .zip(&c.uni_cost.metrics)
        .filter(|(m, _)| m.metric.contains("latency"))
        .map(|(n, u)| format!("{} ({}): uniform {} {}, NCE {} {}", n.metric, n.plugin, num(u.total), u.unit, num(n.total), n.unit))
        .collect();
    if !predicted.is_empty() {
        b.push(Block::Para(format!("Profile's predicted latency on the target hardware: {}.", predicted.join("; "))));
    }
    Ok(())
}

/// plugin | metric | unit | uniform | NCE | ratio | limit | verdicts.
fn cost_table(uni: &CostReport, nce: &CostReport) -> Block {
    let mut rows = Vec::new();
    for (u, n) in uni.metrics.iter().zip(&nce.metrics) {
        let budget = |r: &CostReport| r.budgets.iter().find(|v| v.metric == n.metric && v.plugin == n.plugin).cloned();
        let (bu, bn) = (budget(uni), budget(nce));
        rows.push(vec![
            n.plugin.clone(),
            n.metric.clone(),
            n.unit.clone(),
            num(u.total),
            num(n.total),
            if u.total != 0.0 { format!("{:.3}x", n.total / u.total) } else { "n/a".into() },
            bn.as_ref().map_or("—".into(), |v| format!("{} ({})", num(v.max), v.limit)),
            bu.map_or("—".into(), |v| if v.pass { "PASS".into() } else { "FAIL".into() }),
            bn.map_or("—".into(), |v| if v.pass { "PASS".into() } else { "FAIL".into() }),
        ]);
    }
    Block::Table(
        vec![
            "plugin".into(),
            "metric".into(),
            "unit".into(),
            "uniform W2A2".into(),
            "NCE W2A2".into(),
            "NCE / uniform".into(),
            "budget".into(),
            "uniform".into(),
            "NCE".into(),
        ],
        rows,
    )
}

/// A two-column table of a JSON object's scalar fields (nested objects flattened with dots).
fn generic_table(v: &serde_json::Value) -> Block {
    fn walk(prefix: &str, v: &serde_json::Value, rows: &mut Vec<Vec<String>>) {
        use serde_json::Value;
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, x, rows);
                }
            }
            Value::Null => rows.push(vec![prefix.into(), "all / none".into()]),
            Value::Number(n) => rows.push(vec![prefix.into(), n.as_f64().map_or(n.to_string(), num)]),
            Value::String(s) => rows.push(vec![prefix.into(), s.clone()]),
            other => rows.push(vec![prefix.into(), other.to_string()]),
        }
    }
    let mut rows = Vec::new();
    walk("", v, &mut rows);
    Block::Table(vec!["item".into(), "value".into()], rows)
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn render_md(blocks: &[Block], run: &Path) -> String {
    let mut o = String::new();
    for b in blocks {
        match b {
            Block::Heading(l, t) => {
                let _ = writeln!(o, "{} {t}\n", "#".repeat(*l as usize));
            }
            Block::Para(t) => {
                let _ = writeln!(o, "{t}\n");
            }
            Block::Note(t) => {
                let _ = writeln!(o, "> **Note:** {t}\n");
            }
            Block::Table(h, rows) => {
                let _ = writeln!(o, "| {} |", h.iter().map(|c| md_cell(c)).collect::<Vec<_>>().join(" | "));
                let _ = writeln!(o, "|{}", "---|".repeat(h.len()));
                for r in rows {
                    let _ = writeln!(o, "| {} |", r.iter().map(|c| md_cell(c)).collect::<Vec<_>>().join(" | "));
                }
                o.push('\n');
            }
            Block::Image(alt, path) => {
                let rel = path.strip_prefix(run).unwrap_or(path).to_string_lossy().replace('\\', "/");
                let _ = writeln!(o, "![{alt}]({rel})\n");
            }
        }
    }
    o
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `code` spans in backticks become `<code>`; everything else is escaped text.
fn inline(s: &str) -> String {
    let mut o = String::new();
    for (i, part) in s.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(o, "<code>{}</code>", esc(part));
        } else {
            o.push_str(&esc(part));
        }
    }
    o
}

fn render_html(blocks: &[Block], title: &str) -> Result<String, StageFailure> {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>\
         body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0;font-size:0.9em}}th,td{{border:1px solid #ccc;padding:3px 8px;text-align:left}}\
         th{{background:#f0f0f0}}td{{font-variant-numeric:tabular-nums}}img{{max-width:100%;border:1px solid #ddd;margin:0.5em 0}}\
         .note{{background:#fff4d6;border-left:4px solid #e0a800;padding:0.6em 1em}}code{{background:#f4f4f4;padding:0 3px}}\
         </style></head><body>\n",
        esc(title)
    );
    for b in blocks {
        match b {
            Block::Heading(l, t) => {
                let _ = writeln!(o, "<h{l}>{}</h{l}>", inline(t));
            }
            Block::Para(t) => {
                let _ = writeln!(o, "<p>{}</p>", inline(t));
            }
            Block::Note(t) => {
                let _ = writeln!(o, "<p class=\"note\"><strong>Note:</strong> {}</p>", inline(t));
            }
            Block::Table(h, rows) => {
                o.push_str("<table><thead><tr>");
                for c in h {
                    let _ = write!(o, "<th>{}</th>", inline(c));
                }
                o.push_str("</tr></thead><tbody>\n");
                for r in rows {
                    o.push_str("<tr>");
                    for c in r {
                        let _ = write!(o, "<td>{}</td>", inline(c));
                    }
                    o.push_str("</tr>\n");
                }
                o.push_str("</tbody></table>\n");
            }
            Block::Image(alt, path) => {
                let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                let mime = if path.extension().is_some_and(|e| e == "svg") { "image/svg+xml" } else { "image/png" };
                let _ = writeln!(
                    o,
                    "<figure><img alt=\"{}\" src=\"data:{mime};base64,{}\"><figcaption>{}</figcaption></figure>",
                    esc(alt),
                    base64(&bytes),
                    esc(alt)
                );
            }
        }
    }
    o.push_str("</body></html>\n");
    Ok(o)
}

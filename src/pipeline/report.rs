//! The run report: `report.md` (images linked next to it) and `report.html` (self-contained:
//! every chart embedded as a base64 `data:` URI), built from the same list of blocks so the two
//! always say the same thing. Numbers come from the stages' `result.json` files, the search's
//! `arch.toml`, the exported models and the profile's cost plugins; a stage that is not
//! available in this build is reported as such, never filled in.

use super::manifest::{base64, Manifest, MANIFEST};
use super::{PipelineConfig, STAGES};
use crate::cost::{CostReport, Evaluator};
use crate::engine::plan::QModel;
use crate::hw::Profile;
use crate::search::derive::ArchFile;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Everything the report reads.
pub struct Inputs<'a> {
    pub cfg: &'a PipelineConfig,
    pub profile: &'a Profile,
    pub run_dir: &'a Path,
    pub fp32: &'a Value,
    pub sensitivity: &'a Value,
    pub search: &'a Value,
    pub nce: &'a Value,
    pub uniform: &'a Value,
    pub export: &'a Value,
    pub validate_cpu: &'a Value,
    pub validate_wgpu: &'a Value,
    pub measure: &'a Value,
}

/// A piece of the report.
enum Block {
    Heading(u8, String),
    Para(String),
    /// A highlighted paragraph (the reduced-schedule warning, unavailable stages).
    Note(String),
    Table(Vec<String>, Vec<Vec<String>>),
    /// Alt text and the image file (PNG).
    Image(String, PathBuf),
}

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    let mut x = v;
    for p in path {
        x = x.get(p)?;
    }
    x.as_f64()
}

fn pct(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |x| format!("{:.2} %", 100.0 * x))
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

fn images_of(v: &Value) -> String {
    v.get("test_images").and_then(Value::as_u64).map_or("all".into(), |n| n.to_string())
}

/// Builds the blocks, draws the report's own charts into `dir`, and writes both files.
pub fn write(inp: &Inputs, dir: &Path, md_path: &Path, html_path: &Path) -> Result<Value, String> {
    let cfg = inp.cfg;
    let run = inp.run_dir;
    let s = &cfg.schedule;
    let arch_path = run.join("search/arch.toml");
    let arch: ArchFile = toml::from_str(&std::fs::read_to_string(&arch_path).map_err(|e| format!("{}: {e}", arch_path.display()))?)
        .map_err(|e| format!("{}: {}", arch_path.display(), e.message()))?;
    let load = |m: &str| QModel::load(&run.join(format!("export/{m}.nce"))).map_err(|e| e.to_string());
    let (nce_model, uni_model) = (load("nce")?, load("uniform")?);
    let eval = Evaluator::new(inp.profile).map_err(|e| e.to_string())?;
    let uni_cost = eval.evaluate(uni_model.net(), uni_model.net()).map_err(|e| e.to_string())?;
    let nce_cost = eval.evaluate(nce_model.net(), uni_model.net()).map_err(|e| e.to_string())?;

    let mut b: Vec<Block> = Vec::new();
    b.push(Block::Heading(1, format!("NCE pipeline: {} on {}, profile {}", cfg.model.name(), cfg.data, inp.profile.name)));
    if cfg.preset == "quick" {
        b.push(Block::Note(format!(
            "Reduced schedule (preset `quick`): {} training images, {} FP32 epoch(s), a {}-epoch search, {} W2A2 epoch(s) per network, \
             accuracies on the first {} test images. It checks that every stage works end to end in minutes; the accuracies are far \
             from converged and say nothing about NCE vs uniform. Use `--preset full` for results.",
            s.train_subset.map_or("all".into(), |n| n.to_string()),
            s.fp32_epochs,
            s.search_epochs,
            s.w2a2_epochs,
            s.test_subset.map_or("10,000".into(), |n| n.to_string())
        )));
    } else {
        b.push(Block::Para(format!("Preset `{}`.", cfg.preset)));
    }
    b.push(Block::Para(format!(
        "Command: `nce pipeline --profile {} --model {} --data {} --preset {} --out {}`{}.",
        cfg.profile.display(),
        cfg.model.name(),
        cfg.data,
        cfg.preset,
        cfg.out.display(),
        cfg.init.as_ref().map_or(String::new(), |p| format!(" --init {}", p.display()))
    )));

    // ------------------------------------------------------------ stages
    b.push(Block::Heading(2, "Stages".into()));
    let mut rows = Vec::new();
    for st in STAGES.iter().filter(|s| **s != "report") {
        let m = Manifest::read(&run.join(st).join(MANIFEST));
        let note = match *st {
            "validate-wgpu" if inp.validate_wgpu.get("available") == Some(&json!(false)) => "not available in this build".to_string(),
            "measure" if inp.measure.get("available") == Some(&json!(false)) => "not available in this build".to_string(),
            _ => String::new(),
        };
        rows.push(vec![
            st.to_string(),
            m.as_ref().map_or("n/a".into(), |m| format!("{:.1}", m.seconds)),
            m.as_ref().map_or("n/a".into(), |m| if m.resumed { "yes".into() } else { "no".into() }),
            m.as_ref().map_or(0, |m| m.outputs.len()).to_string(),
            note,
        ]);
    }
    b.push(Block::Table(vec!["stage".into(), "seconds (last run)".into(), "resumed".into(), "outputs".into(), "note".into()], rows));
    b.push(Block::Para(
        "Each stage folder holds a `manifest.json` (SHA-256 of its configuration, of every upstream file it read and of every file it wrote); \
         rerunning the same command skips stages whose manifest matches."
            .into(),
    ));

    // ------------------------------------------------------------ profile and budgets
    let p = inp.profile;
    b.push(Block::Heading(2, "Hardware profile and budgets".into()));
    b.push(Block::Para(format!(
        "`{}` ({}): {}. W{}A{} unit, {} lanes of {}-bit words at {} MHz, channel granularity {}.",
        p.name,
        cfg.profile.display(),
        p.description.trim(),
        p.unit.weight_bits,
        p.unit.activation_bits,
        p.unit.lanes,
        p.unit.word_bits,
        p.unit.clock_mhz,
        p.unit.channel_granularity
    )));
    let rows =
        uni_cost.budgets.iter().map(|v| vec![v.metric.clone(), v.plugin.clone(), v.limit.clone(), num(v.max), num(v.base)]).collect();
    b.push(Block::Table(
        vec!["budget".into(), "plugin".into(), "limit".into(), "absolute limit".into(), "uniform (base) value".into()],
        rows,
    ));

    // ------------------------------------------------------------ accuracy
    b.push(Block::Heading(2, "Accuracy".into()));
    let fp32_acc = f(inp.fp32, &["test_acc"]);
    let uni_acc = f(inp.uniform, &["test_acc"]);
    let nce_acc = f(inp.nce, &["test_acc"]);
    let vc = inp.validate_cpu;
    b.push(Block::Table(
        vec!["model".into(), "test accuracy (tch)".into(), "test images".into(), "CPU engine accuracy".into(), "engine images".into()],
        vec![
            vec!["FP32".into(), pct(fp32_acc), images_of(inp.fp32), "—".into(), "—".into()],
            vec![
                "uniform W2A2".into(),
                pct(uni_acc),
                images_of(inp.uniform),
                pct(f(vc, &["uniform", "engine_acc"])),
                f(vc, &["uniform", "images"]).map_or("n/a".into(), num),
            ],
            vec![
                "NCE W2A2".into(),
                pct(nce_acc),
                images_of(inp.nce),
                pct(f(vc, &["nce", "engine_acc"])),
                f(vc, &["nce", "images"]).map_or("n/a".into(), num),
            ],
        ],
    ));
    let chart = dir.join("accuracy");
    let vals: Vec<f64> = [fp32_acc, uni_acc, nce_acc].iter().map(|v| v.map_or(f64::NAN, |x| 100.0 * x)).collect();
    crate::plot::bar_chart(
        &chart,
        &format!("Test accuracy ({} test images)", images_of(inp.fp32)),
        "accuracy (%)",
        &["FP32".into(), "uniform W2A2".into(), "NCE W2A2".into()],
        &[("test accuracy".into(), vals)],
    )
    .map_err(|e| e.to_string())?;
    b.push(Block::Image("Test accuracy of FP32, uniform W2A2 and NCE W2A2".into(), chart.with_extension("png")));

    // ------------------------------------------------------------ widths and sensitivity
    b.push(Block::Heading(2, "Per-layer widths and sensitivity".into()));
    b.push(Block::Para(format!(
        "Searched widths ({} epochs, threshold {}; {} expansion event(s){}; the supernet's argmax architecture scored {} on the search's \
         test subset at the last epoch) next to each layer's 2-bit sensitivity of the FP32 model \
         (one-on drop: accuracy lost when only this layer is W2A2; one-off gain: accuracy regained when only this layer stays FP32 in \
         the W2A2 network; {} test images, clips calibrated, no training). Sensitivity: FP32 {:.2} %, untrained W2A2 {:.2} %.",
        s.search_epochs,
        s.search_threshold,
        arch.expansions.len(),
        if arch.repaired.is_empty() { String::new() } else { format!("; repaired: {}", arch.repaired.join(", ")) },
        pct(f(inp.search, &["argmax_test_acc"])),
        inp.sensitivity.get("test_images").and_then(Value::as_u64).unwrap_or(0),
        f(inp.sensitivity, &["fp32_acc"]).unwrap_or(f64::NAN),
        f(inp.sensitivity, &["w2a2_acc"]).unwrap_or(f64::NAN),
    )));
    let sens_layers: Vec<Value> = inp.sensitivity.get("layers").and_then(Value::as_array).cloned().unwrap_or_default();
    let sens_of = |name: &str| sens_layers.iter().find(|l| l.get("layer").and_then(Value::as_str) == Some(name));
    let mut rows = Vec::new();
    let (mut cats, mut change, mut drop, mut gain) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (l, &w) in arch.layers.iter().zip(&arch.widths) {
        let p_sel = l.candidates.iter().position(|&c| c == w).and_then(|i| l.probs.get(i)).copied();
        let sl = sens_of(&l.name);
        let (d, g) = (sl.and_then(|v| f(v, &["one_on_drop"])), sl.and_then(|v| f(v, &["one_off_gain"])));
        rows.push(vec![
            l.name.clone(),
            l.base.to_string(),
            w.to_string(),
            format!("{:+.0} %", 100.0 * (w as f64 - l.base as f64) / l.base as f64),
            format!("{:?}", l.candidates),
            p_sel.map_or("n/a".into(), |p| format!("{p:.3}")),
            d.map_or("— (8-bit)".into(), |x| format!("{x:+.2} pp")),
            g.map_or("— (8-bit)".into(), |x| format!("{x:+.2} pp")),
        ]);
        cats.push(l.name.clone());
        change.push(100.0 * (w as f64 - l.base as f64) / l.base as f64);
        drop.push(d.unwrap_or(f64::NAN));
        gain.push(g.unwrap_or(f64::NAN));
    }
    b.push(Block::Table(
        vec![
            "layer".into(),
            "base".into(),
            "searched".into(),
            "change".into(),
            "candidates".into(),
            "p(searched)".into(),
            "one-on drop".into(),
            "one-off gain".into(),
        ],
        rows,
    ));
    let chart = dir.join("widths-sensitivity");
    crate::plot::bar_chart(
        &chart,
        "Width change vs 2-bit sensitivity per layer",
        "% (width) / percentage points (sensitivity)",
        &cats,
        &[("width change vs base (%)".into(), change), ("one-on drop (pp)".into(), drop), ("one-off gain (pp)".into(), gain)],
    )
    .map_err(|e| e.to_string())?;
    b.push(Block::Image("Width change and sensitivity per layer".into(), chart.with_extension("png")));
    for (rel, alt) in [
        ("search/widths.png", "Base vs searched widths"),
        ("sensitivity/sensitivity.png", "Per-layer 2-bit sensitivity"),
        ("search/probs.png", "Probability of each slot's widest candidate per search epoch"),
    ] {
        let p = run.join(rel);
        if p.is_file() {
            b.push(Block::Image(alt.into(), p));
        }
    }

    // ------------------------------------------------------------ costs
    b.push(Block::Heading(2, "Costs against budgets".into()));
    b.push(Block::Para(format!(
        "Every metric of every plugin of `{}` for the two trained W2A2 networks (as exported); relative budgets are resolved against the uniform network.",
        p.name
    )));
    b.push(cost_table(&uni_cost, &nce_cost));
    let budgeted: Vec<String> = uni_cost.budgets.iter().map(|v| format!("{} ({})", v.metric, v.plugin)).collect();
    if !budgeted.is_empty() {
        let chart = dir.join("budgets");
        crate::plot::bar_chart(
            &chart,
            "Cost relative to each budget (1.0 = at the limit)",
            "value / limit",
            &budgeted,
            &[
                ("uniform W2A2".into(), uni_cost.budgets.iter().map(|v| v.value / v.max).collect()),
                ("NCE W2A2".into(), nce_cost.budgets.iter().map(|v| v.value / v.max).collect()),
            ],
        )
        .map_err(|e| e.to_string())?;
        b.push(Block::Image("Cost relative to each budget".into(), chart.with_extension("png")));
    }
    let costs = run.join("search/costs.png");
    if costs.is_file() {
        b.push(Block::Image("Search: argmax and expected cost per epoch relative to each budget".into(), costs));
    }

    // ------------------------------------------------------------ export and validation
    b.push(Block::Heading(2, "Export and validation".into()));
    let mut rows = Vec::new();
    for m in ["uniform", "nce"] {
        let v = vc.get(m).cloned().unwrap_or(Value::Null);
        rows.push(vec![
            format!("{m} W2A2"),
            inp.export.get(m).and_then(|e| e.get("file")).and_then(Value::as_str).unwrap_or("n/a").to_string(),
            f(inp.export, &[m, "bytes"]).map_or("n/a".into(), num),
            v.get("backend").and_then(Value::as_str).unwrap_or("n/a").to_string(),
            format!("{}/{}", f(&v, &["agree"]).map_or("n/a".into(), num), f(&v, &["images"]).map_or("n/a".into(), num)),
            format!(
                "{} of {}",
                f(&v, &["mismatched_values"]).map_or("n/a".into(), num),
                f(&v, &["compared_values"]).map_or("n/a".into(), num)
            ),
            f(&v, &["max_deviation"]).map_or("n/a".into(), num),
        ]);
    }
    b.push(Block::Para(
        "CPU integer engine vs the tch integer simulation of the checkpoint, every layer's integer output compared:".into(),
    ));
    b.push(Block::Table(
        vec![
            "model".into(),
            "file".into(),
            "bytes".into(),
            "CPU kernels".into(),
            "argmax agreement".into(),
            "differing values".into(),
            "largest deviation".into(),
        ],
        rows,
    ));
    b.push(Block::Heading(3, "CPU vs wgpu".into()));
    match inp.validate_wgpu.get("available").and_then(Value::as_bool) {
        Some(false) | None => b.push(Block::Note(format!(
            "validate-wgpu: {}.",
            inp.validate_wgpu.get("reason").and_then(Value::as_str).unwrap_or("not available in this build")
        ))),
        Some(true) => {
            let w = inp.validate_wgpu;
            b.push(Block::Para(format!(
                "Both models on the wgpu engine (adapter {}) and on the CPU engine, integer logits compared image by image:",
                w.get("adapter").and_then(Value::as_str).unwrap_or("n/a")
            )));
            let mut rows = Vec::new();
            for m in ["uniform", "nce"] {
                let v = w.get(m).cloned().unwrap_or(Value::Null);
                let n = f(&v, &["images"]).map_or("n/a".into(), num);
                rows.push(vec![
                    format!("{m} W2A2"),
                    format!("{}/{n}", f(&v, &["identical_logits"]).map_or("n/a".into(), num)),
                    format!("{}/{n}", f(&v, &["argmax_agree"]).map_or("n/a".into(), num)),
                    f(&v, &["max_deviation"]).map_or("n/a".into(), num),
                    pct(f(&v, &["cpu_acc"])),
                    pct(f(&v, &["wgpu_acc"])),
                    v.get("dot_kernel").and_then(Value::as_str).unwrap_or("n/a").to_string(),
                    format!("{:.2} / {:.2}", f(&v, &["cpu_seconds"]).unwrap_or(f64::NAN), f(&v, &["wgpu_seconds"]).unwrap_or(f64::NAN)),
                ]);
            }
            b.push(Block::Table(
                vec![
                    "model".into(),
                    "identical logits".into(),
                    "argmax agreement".into(),
                    "largest deviation".into(),
                    "CPU accuracy".into(),
                    "wgpu accuracy".into(),
                    "wgpu dot kernel".into(),
                    "seconds CPU / wgpu".into(),
                ],
                rows,
            ));
        }
    }

    // ------------------------------------------------------------ latency
    b.push(Block::Heading(2, "Latency: measured vs predicted".into()));
    match inp.measure.get("available").and_then(Value::as_bool) {
        Some(false) | None => b.push(Block::Note(format!(
            "measure: {}.",
            inp.measure.get("reason").and_then(Value::as_str).unwrap_or("not available in this build")
        ))),
        Some(true) => {
            let ms = inp.measure;
            b.push(Block::Para(format!(
                "Per-layer latency table of the CPU engine ({}, {} thread, {} entries: `{}`) measured over the base network's width grid on \
                 this machine; predicted = sum of the table over a model's layers (what the `latency-lut` plugin computes), measured = the \
                 whole model on one image, {} timed runs.",
                ms.get("backend").and_then(Value::as_str).unwrap_or("n/a"),
                f(ms, &["threads"]).map_or("n/a".into(), num),
                f(ms, &["table_entries"]).map_or("n/a".into(), num),
                ms.get("table").and_then(Value::as_str).unwrap_or("n/a"),
                f(ms, &["uniform", "runs"]).map_or("n/a".into(), num),
            )));
            let mut rows = Vec::new();
            let (mut pred, mut meas) = (Vec::new(), Vec::new());
            for m in ["uniform", "nce"] {
                let (p_us, m_us) = (f(ms, &[m, "predicted_us"]), f(ms, &[m, "measured_us"]));
                rows.push(vec![
                    format!("{m} W2A2"),
                    p_us.map_or("n/a".into(), |x| format!("{x:.1}")),
                    m_us.map_or("n/a".into(), |x| format!("{x:.1}")),
                    f(ms, &[m, "measured_sd_us"]).map_or("n/a".into(), |x| format!("{x:.1}")),
                    f(ms, &[m, "error"]).map_or("n/a".into(), |x| format!("{:+.1} %", 100.0 * x)),
                ]);
                pred.push(p_us.unwrap_or(f64::NAN));
                meas.push(m_us.unwrap_or(f64::NAN));
            }
            b.push(Block::Table(
                vec![
                    "model".into(),
                    "predicted (µs)".into(),
                    "measured (µs)".into(),
                    "measured s.d. (µs)".into(),
                    "prediction error".into(),
                ],
                rows,
            ));
            let chart = dir.join("latency");
            crate::plot::bar_chart(
                &chart,
                "CPU engine latency per image: predicted vs measured",
                "µs",
                &["uniform W2A2".into(), "NCE W2A2".into()],
                &[("predicted (table)".into(), pred), ("measured".into(), meas)],
            )
            .map_err(|e| e.to_string())?;
            b.push(Block::Image("CPU engine latency per image, predicted vs measured".into(), chart.with_extension("png")));
        }
    }
    let predicted: Vec<String> = nce_cost
        .metrics
        .iter()
        .zip(&uni_cost.metrics)
        .filter(|(m, _)| m.metric.contains("latency"))
        .map(|(n, u)| format!("{} ({}): uniform {} {}, NCE {} {}", n.metric, n.plugin, num(u.total), u.unit, num(n.total), n.unit))
        .collect();
    if !predicted.is_empty() {
        b.push(Block::Para(format!("Profile's predicted latency on the target hardware: {}.", predicted.join("; "))));
    }

    // ------------------------------------------------------------ schedule
    b.push(Block::Heading(2, "Schedule".into()));
    let sched = serde_json::to_value(s).map_err(|e| e.to_string())?;
    b.push(generic_table(&sched));

    let md = render_md(&b, run);
    let html = render_html(&b, &format!("NCE pipeline report: {} on {}", cfg.model.name(), cfg.data))?;
    super::manifest::write_atomic(md_path, md.as_bytes()).map_err(|e| format!("{}: {e}", md_path.display()))?;
    super::manifest::write_atomic(html_path, html.as_bytes()).map_err(|e| format!("{}: {e}", html_path.display()))?;
    Ok(json!({
        "report_md": "report.md",
        "report_html": "report.html",
        "fp32_acc": fp32_acc,
        "uniform_acc": uni_acc,
        "nce_acc": nce_acc,
        "nce_passes_budgets": nce_cost.passes(),
    }))
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
fn generic_table(v: &Value) -> Block {
    fn walk(prefix: &str, v: &Value, rows: &mut Vec<Vec<String>>) {
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

fn render_html(blocks: &[Block], title: &str) -> Result<String, String> {
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

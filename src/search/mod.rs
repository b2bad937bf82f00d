//! The NCE search: TAS-style differentiable channel search with 2-bit quantization in the loop,
//! candidate sets that expand when a layer keeps preferring its widest option, and budget
//! losses from the chosen hardware profile's cost plugins.
//!
//! One epoch alternates, batch by batch, a weight step (SGD on the supernet's weights over one
//! half of the training set, widths sampled with Gumbel top-2) and an architecture step (Adam on
//! the logits over the other half, cross-entropy plus `λ·L_k` for every separable budget `k`).
//! After each epoch the expansion rule runs ([`space::expand`]). Choices the paper leaves open
//! are fields of [`SearchConfig`] and documented in `docs/search.md`.

pub mod adam;
pub mod cost;
pub mod derive;
pub mod plots;
pub mod space;
pub mod supernet;

use crate::cost::Evaluator;
use crate::data::{self, Dataset, Loader, LoaderConfig, Split};
use crate::graph::{self, BitConfig, ModelKind, Network};
use crate::hw::{Profile, ProfileError};
use crate::train::checkpoint::{self, CheckpointError};
use crate::train::sgd::Sgd;
use crate::train::CosineSchedule;
use adam::Adam;
pub use derive::Derivation;
use derive::{ArchBudget, ArchCost, ArchFile, ArchLayer, DeriveError};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use space::{Expansion, SpaceConfig};
use std::path::{Path, PathBuf};
use supernet::{Mode, Supernet};
use tch::{no_grad, Kind, Tensor};

/// Everything that defines a search run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SearchConfig {
    pub model: ModelKind,
    pub profile: PathBuf,
    pub data: String,
    pub data_root: PathBuf,
    /// Search on the first N training images only (in file order; the files are already shuffled), split 50/50.
    pub train_subset: Option<usize>,
    /// Test images used to report the argmax architecture's accuracy each epoch.
    pub test_subset: Option<usize>,
    pub bits: u8,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub arch_lr: f64,
    pub arch_betas: (f64, f64),
    pub arch_weight_decay: f64,
    /// λ of every budget loss.
    pub lambda: f64,
    /// Relative tolerance band below each budget's target.
    pub tolerance: f64,
    pub tau_max: f64,
    pub tau_min: f64,
    pub space: SpaceConfig,
    pub pact_init: f64,
    pub seed: u64,
    pub threads: usize,
    pub out: PathBuf,
    /// A trained checkpoint (`nce train`) to initialise the supernet's weights from.
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// Epochs of weight steps only (sampled widths, logits frozen, no expansion) before the
    /// architecture steps start, so the logits learn from trained candidates.
    #[serde(default)]
    pub warmup_epochs: usize,
    /// How the final widths are derived (`docs/search.md`).
    #[serde(default = "default_derivation")]
    pub derive: Derivation,
    /// How an expanded slot's new channels start.
    #[serde(default)]
    pub expansion_init: ExpansionInit,
    /// Noise on copied filters, relative to the weight's std.
    #[serde(default = "default_noise")]
    pub expansion_noise: f64,
    /// Images of the architecture half used to score each epoch's argmax network (TAS derivation).
    #[serde(default = "default_val_subset")]
    pub val_subset: usize,
}

/// How the channels a slot gains by expansion are initialised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum ExpansionInit {
    /// Function-preserving copies ([`Supernet::init_expanded`]).
    #[default]
    Preserve,
    /// Whatever the pre-allocated weights hold (their random initialisation).
    Keep,
}

fn default_derivation() -> Derivation {
    Derivation::CostAware
}
fn default_noise() -> f64 {
    0.01
}
fn default_val_subset() -> usize {
    1000
}

impl SearchConfig {
    pub fn new(model: ModelKind, profile: PathBuf, data: &str, epochs: usize, out: PathBuf) -> SearchConfig {
        SearchConfig {
            model,
            profile,
            data: data.into(),
            data_root: PathBuf::from("data"),
            train_subset: None,
            test_subset: Some(2000),
            bits: 2,
            epochs,
            batch_size: 128,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            arch_lr: 1e-3,
            arch_betas: (0.5, 0.999),
            arch_weight_decay: 1e-3,
            lambda: 2.0,
            tolerance: 0.05,
            tau_max: 5.0,
            tau_min: 0.1,
            space: SpaceConfig::default(),
            pact_init: 4.0,
            seed: 0,
            threads: 0,
            out,
            init: None,
            warmup_epochs: 0,
            derive: Derivation::CostAware,
            expansion_init: ExpansionInit::Preserve,
            expansion_noise: default_noise(),
            val_subset: default_val_subset(),
        }
    }

    /// τ for `epoch`: cosine from `tau_max` to `tau_min` (TAS's width-search schedule).
    pub fn tau(&self, epoch: usize) -> f64 {
        let t = epoch as f64 / self.epochs.max(1) as f64;
        self.tau_min + (self.tau_max - self.tau_min) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Graph(#[from] graph::GraphError),
    #[error(transparent)]
    Cost(#[from] crate::cost::CostError),
    #[error(transparent)]
    Derive(#[from] DeriveError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{}: {source}", file.display())]
    Io { file: PathBuf, source: std::io::Error },
    #[error("non-finite loss at epoch {epoch}; the last checkpoint is kept")]
    NonFinite { epoch: usize },
    #[error("cannot resume: {0}")]
    Resume(String),
    #[error("{0}")]
    Invalid(String),
    #[error("plots: {0}")]
    Plot(#[from] crate::plot::PlotError),
}

/// One epoch of the search log (`search.jsonl`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub tau: f64,
    pub weight_loss: f64,
    pub weight_acc: f64,
    pub arch_loss: f64,
    pub arch_acc: f64,
    /// Accuracy of the argmax architecture (inside the supernet) on held-out test images.
    pub argmax_test_acc: f64,
    /// Accuracy of the argmax architecture on the first `val_subset` images of the
    /// architecture half (held out from the weights; used by the TAS derivation).
    #[serde(default)]
    pub argmax_val_acc: f64,
    /// Whether the argmax architecture met every budget.
    #[serde(default)]
    pub argmax_pass: bool,
    pub widths: Vec<usize>,
    pub probs: Vec<Vec<f64>>,
    pub candidates: Vec<Vec<usize>>,
    /// Per budget: (metric, expected cost, argmax cost, target).
    pub budgets: Vec<(String, f64, f64, f64)>,
    pub expansions: Vec<Expansion>,
    pub seconds: f64,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    config: SearchConfig,
    epoch: usize,
    step: usize,
    candidates: Vec<Vec<usize>>,
    expansions: Vec<Expansion>,
}

/// The outcome of a search.
pub struct SearchResult {
    pub arch: ArchFile,
    pub arch_path: PathBuf,
    pub log: Vec<EpochLog>,
}

/// The search's budgets bound to plugin metrics, with resolved targets.
struct Budgets {
    /// (metric, plugin index, metric index, absolute target, separable)
    items: Vec<(String, usize, usize, f64, bool)>,
}

fn bind_budgets(eval: &Evaluator, base: &Network) -> Result<Budgets, SearchError> {
    let report = eval.evaluate(base, base)?;
    let models: Vec<_> = eval.models().collect();
    let items = eval
        .budgets()
        .zip(&report.budgets)
        .map(|((b, p, m), v)| (b.metric.clone(), p, m, v.max, models[p].1.separable(m)))
        .collect();
    Ok(Budgets { items })
}

fn load_split(cfg: &SearchConfig) -> Result<(Dataset, Dataset, Dataset), SearchError> {
    let mut train = data::load(&cfg.data, &cfg.data_root, Split::Train)?;
    if let Some(n) = cfg.train_subset.filter(|&n| n < train.len()) {
        train = train.subset(n);
    }
    let (w, a) = train.split(0.5, cfg.seed);
    let mut test = data::load(&cfg.data, &cfg.data_root, Split::Test)?;
    if let Some(n) = cfg.test_subset.filter(|&n| n < test.len()) {
        test = test.subset(n);
    }
    Ok((w, a, test))
}

fn bit_config(bits: u8) -> BitConfig {
    if bits >= 32 {
        BitConfig::full_precision()
    } else {
        BitConfig::uniform(bits)
    }
}

/// Runs (or, with `resume`, continues) a search and writes `arch.toml`, `search.jsonl` and the
/// checkpoint under `cfg.out`.
pub fn search(cfg: &SearchConfig, resume: bool, progress: bool) -> Result<SearchResult, SearchError> {
    if cfg.threads > 0 {
        tch::set_num_threads(cfg.threads as i32);
    }
    if !(cfg.space.threshold > 0.0) {
        return Err(SearchError::Invalid(format!("expansion threshold must be positive, got {}", cfg.space.threshold)));
    }
    let profile = Profile::load(&cfg.profile)?;
    let eval = Evaluator::new(&profile)?;
    let io = |file: &Path| {
        let file = file.to_path_buf();
        move |source| SearchError::Io { file, source }
    };
    std::fs::create_dir_all(&cfg.out).map_err(io(&cfg.out))?;
    let (wset, aset, test) = load_split(cfg)?;
    let bits = bit_config(cfg.bits);
    let base = graph::build(cfg.model, wset.shape, wset.classes, None, &bits)?;
    let budgets = bind_budgets(&eval, &base)?;
    let mut space = cfg.space.clone();
    space.granularity = space.granularity.max(profile.unit.channel_granularity);

    tch::manual_seed(cfg.seed as i64);
    let ckpt_path = cfg.out.join("search-checkpoint.ot");
    let mut sn = Supernet::new(&base, &space, cfg.pact_init);
    // A resumed run restores every variable from its own checkpoint; --init only seeds a new one.
    if let Some(init) = cfg.init.as_ref().filter(|_| !(resume && ckpt_path.is_file())) {
        let ck = checkpoint::load::<serde_json::Value>(init)?;
        let n = sn.init_from(&ck.vars);
        if n == 0 {
            return Err(SearchError::Invalid(format!("{}: no variable matches the supernet of {}", init.display(), cfg.model)));
        }
        tracing::info!("initialised {n} supernet variables from {}", init.display());
    }
    let mut adam = Adam::new(&sn.logits, cfg.arch_lr, cfg.arch_betas, cfg.arch_weight_decay);
    let mut sgd = Sgd::new(cfg.momentum, true);
    sgd.skip_zero_grads = true;
    let log_path = cfg.out.join("search.jsonl");
    let mut epoch0 = 0;
    let mut step = 0;
    let mut expansions: Vec<Expansion> = Vec::new();
    let mut log: Vec<EpochLog> = Vec::new();
    if resume && ckpt_path.is_file() {
        let ck = checkpoint::load::<Meta>(&ckpt_path)?;
        if ck.meta.config != *cfg {
            return Err(SearchError::Resume(format!("{} was written with a different configuration", ckpt_path.display())));
        }
        for (s, cands) in ck.meta.candidates.iter().enumerate() {
            for &c in cands.iter().skip(sn.slots[s].candidates.len()) {
                sn.add_candidate(s, c);
                adam.grow(s);
            }
        }
        restore(&mut sn, &mut adam, &mut sgd, &ck.vars, &ck.opt).map_err(SearchError::Resume)?;
        epoch0 = ck.meta.epoch;
        step = ck.meta.step;
        expansions = ck.meta.expansions;
        log = read_log(&log_path)?.into_iter().filter(|l| l.epoch < epoch0).collect();
    }
    write_log(&log_path, &log)?;

    let wl = Loader::new(&wset, LoaderConfig { drop_last: true, ..LoaderConfig::train(&wset.name, cfg.batch_size, cfg.seed) }, tch::Device::Cpu)?;
    let al = Loader::new(&aset, LoaderConfig { drop_last: true, ..LoaderConfig::train(&aset.name, cfg.batch_size, cfg.seed ^ 0xA5C4) }, tch::Device::Cpu)?;
    let tl = Loader::eval(&test, 500, tch::Device::Cpu)?;
    let vset = aset.subset(cfg.val_subset.clamp(1, aset.len().max(1)));
    let vl = Loader::eval(&vset, 500, tch::Device::Cpu)?;
    let per_epoch = wl.num_batches().min(al.num_batches());
    if per_epoch == 0 {
        return Err(SearchError::Invalid(format!("each half of the training data needs at least one batch of {}", cfg.batch_size)));
    }
    let sched = CosineSchedule { base_lr: cfg.lr, warmup_steps: 0, total_steps: cfg.epochs * per_epoch };
    let models: Vec<_> = eval.models().collect();

    for epoch in epoch0..cfg.epochs {
        let tau = cfg.tau(epoch);
        let started = std::time::Instant::now();
        let bar = if progress { ProgressBar::new(per_epoch as u64) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("search {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, cfg.epochs));
        let (mut wl_sum, mut wc, mut al_sum, mut ac, mut seen) = (0.0, 0i64, 0.0, 0i64, 0i64);
        let mut last_costs: Vec<(String, f64, f64, f64)> = Vec::new();
        let params = sn.weight_params();
        let masks = sn.decay_masks();
        let arch_epoch = epoch >= cfg.warmup_epochs;
        for ((xw, yw), (xa, ya)) in wl.epoch_batches(epoch as u64).zip(al.epoch_batches(epoch as u64)).take(per_epoch) {
            tch::manual_seed(cfg.seed.wrapping_mul(7_919).wrapping_add(step as u64) as i64);
            // Weight step: sampled widths, logits frozen.
            let out = sn.forward(&xw, true, Mode::Sample { tau }, true);
            let loss = out.cross_entropy_for_logits(&yw);
            let lv = loss.double_value(&[]);
            if !lv.is_finite() {
                return Err(SearchError::NonFinite { epoch });
            }
            Sgd::zero_grad(&params);
            loss.backward();
            sgd.step_masked(&params, sched.lr(step), |n| if n.ends_with(".alpha") { 1e-4 } else { cfg.weight_decay }, &masks);
            wl_sum += lv * yw.size()[0] as f64;
            wc += out.argmax(-1, false).eq_tensor(&yw).sum(Kind::Int64).int64_value(&[]);
            seen += yw.size()[0];
            step += 1;
            if !arch_epoch {
                bar.set_message(format!("τ {tau:.2} warm-up w-acc {:.1}%", 100.0 * wc as f64 / seen as f64));
                bar.inc(1);
                continue;
            }

            // Architecture step: cross-entropy + λ·L_k over every separable budget.
            let out = sn.forward(&xa, true, Mode::Sample { tau }, false);
            let ce = out.cross_entropy_for_logits(&ya);
            let widths = sn.argmax_widths();
            let (_, current) = derive::cost_of(cfg.model, base.input, base.classes, &widths, &bits, &eval, &base)?;
            let dists = cost::distributions(&sn);
            let mut total = ce.shallow_clone();
            last_costs.clear();
            for (k, (metric, p, m, target, separable)) in budgets.items.iter().enumerate() {
                let cur = current.budgets[k].value;
                if !*separable {
                    last_costs.push((metric.clone(), f64::NAN, cur, *target));
                    continue;
                }
                let e = cost::expected_cost(&sn, &dists, models[*p].1, *m)?;
                last_costs.push((metric.clone(), e.double_value(&[]), cur, *target));
                total = total + cost::budget_loss(&e, cur, *target, cfg.tolerance) * cfg.lambda;
            }
            let av = total.double_value(&[]);
            if !av.is_finite() {
                return Err(SearchError::NonFinite { epoch });
            }
            adam.zero_grad(&sn.logits);
            Sgd::zero_grad(&params);
            total.backward();
            adam.step(&sn.logits);
            al_sum += ce.double_value(&[]) * ya.size()[0] as f64;
            ac += out.argmax(-1, false).eq_tensor(&ya).sum(Kind::Int64).int64_value(&[]);
            bar.set_message(format!("τ {tau:.2} w-acc {:.1}% a-acc {:.1}%", 100.0 * wc as f64 / seen as f64, 100.0 * ac as f64 / seen as f64));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let argmax_test_acc = accuracy(&sn, &tl);
        let argmax_val_acc = accuracy(&sn, &vl);
        let probs = sn.probs();
        let widths = sn.argmax_widths();
        let argmax_pass = derive::cost_of(cfg.model, base.input, base.classes, &widths, &bits, &eval, &base)?.1.passes();
        let events = if arch_epoch { space::expand(&mut sn.slots, &probs, &space, epoch) } else { Vec::new() };
        for e in &events {
            // expand() already appended the width to the slot; grow logits, BN and Adam state.
            sn.add_candidate(e.slot, e.new_widest);
            adam.grow(e.slot);
            if cfg.expansion_init == ExpansionInit::Preserve {
                sn.init_expanded(e.slot, e.old_widest, e.new_widest, cfg.expansion_noise, cfg.seed ^ (epoch as u64) << 8, &mut sgd.buffers);
            }
            tracing::info!("epoch {epoch}: expanded {} from {} to {}", e.layer, e.old_widest, e.new_widest);
        }
        expansions.extend(events.iter().cloned());
        let entry = EpochLog {
            epoch,
            tau,
            weight_loss: wl_sum / seen.max(1) as f64,
            weight_acc: wc as f64 / seen.max(1) as f64,
            arch_loss: al_sum / seen.max(1) as f64,
            arch_acc: ac as f64 / seen.max(1) as f64,
            argmax_test_acc,
            argmax_val_acc,
            argmax_pass,
            widths,
            probs,
            candidates: sn.slots.iter().map(|s| s.candidates.clone()).collect(),
            budgets: last_costs,
            expansions: events,
            seconds: started.elapsed().as_secs_f64(),
        };
        if progress {
            let b: Vec<String> = entry.budgets.iter().map(|(m, _, cur, t)| format!("{m} {:.3}x", cur / t)).collect();
            eprintln!(
                "search epoch {}/{}: τ {:.2}, weight acc {:.2}%, arch acc {:.2}%, argmax test acc {:.2}%, {} | {} expansions",
                epoch + 1,
                cfg.epochs,
                tau,
                100.0 * entry.weight_acc,
                100.0 * entry.arch_acc,
                100.0 * entry.argmax_test_acc,
                b.join(", "),
                entry.expansions.len()
            );
        }
        let meta = Meta {
            config: cfg.clone(),
            epoch: epoch + 1,
            step,
            candidates: sn.slots.iter().map(|s| s.candidates.clone()).collect(),
            expansions: expansions.clone(),
        };
        save(&ckpt_path, &meta, &sn, &adam, &sgd)?;
        log.push(entry);
        write_log(&log_path, &log)?;
    }

    let probs = sn.probs();
    let tas_pick = match cfg.derive {
        Derivation::Tas => log
            .iter()
            .filter(|l| l.epoch >= cfg.warmup_epochs && l.argmax_pass)
            .max_by(|a, b| a.argmax_val_acc.total_cmp(&b.argmax_val_acc).then(a.epoch.cmp(&b.epoch)))
            .map(|l| (l.epoch, l.widths.clone())),
        Derivation::CostAware => None,
    };
    let (widths, repaired, report, derivation) = match tas_pick {
        Some((epoch, widths)) => {
            let (_, report) = derive::cost_of(cfg.model, base.input, base.classes, &widths, &bits, &eval, &base)?;
            (widths, Vec::new(), report, format!("tas (epoch {epoch})"))
        }
        None => {
            let (w, r, rep) = derive::derive(cfg.model, base.input, base.classes, &sn.slots, &probs, space.granularity, &bits, &eval, &base)?;
            let name = if cfg.derive == Derivation::Tas { "cost-aware (tas: no epoch met every budget)" } else { "cost-aware" };
            (w, r, rep, name.to_string())
        }
    };
    let base_report = eval.evaluate(&base, &base)?;
    let arch = ArchFile {
        model: cfg.model,
        input: base.input.to_string(),
        classes: base.classes,
        profile: cfg.profile.display().to_string(),
        widths,
        base_widths: base.widths.clone(),
        derivation,
        repaired,
        layers: sn
            .slots
            .iter()
            .zip(&probs)
            .zip(sn.argmax_widths())
            .map(|((s, p), w)| ArchLayer { name: s.name.clone(), base: s.base, width: w, candidates: s.candidates.clone(), probs: p.clone() })
            .collect(),
        costs: report
            .metrics
            .iter()
            .zip(&base_report.metrics)
            .map(|(m, b)| ArchCost { plugin: m.plugin.clone(), metric: m.metric.clone(), value: m.total, base: b.total })
            .collect(),
        budgets: report.budgets.iter().map(|b| ArchBudget { metric: b.metric.clone(), value: b.value, max: b.max, pass: b.pass }).collect(),
        expansions,
    };
    let arch_path = cfg.out.join("arch.toml");
    arch.save(&arch_path).map_err(|e| SearchError::Invalid(e.to_string()))?;
    // Charts are a convenience: the architecture file is the result, so a missing font or an
    // unwritable chart is a warning, not a failed search.
    if let Err(e) = plots::write_all(&cfg.out, &log, &arch) {
        tracing::warn!("search plots not written: {e}");
        eprintln!("warning: search plots not written: {e}");
    }
    Ok(SearchResult { arch, arch_path, log })
}

/// Accuracy of the supernet's argmax architecture.
///
/// BatchNorm uses the statistics of each 500-image test batch: the running statistics were
/// collected under *mixed* widths upstream, which the argmax network never sees, and with
/// 2-bit activations that mismatch alone drives it to chance level (the usual one-shot NAS
/// BN recalibration; the final architecture is retrained anyway).
fn accuracy(sn: &Supernet, loader: &Loader) -> f64 {
    let (mut correct, mut seen) = (0i64, 0i64);
    no_grad(|| {
        for (x, y) in loader.epoch_batches(0) {
            let out = sn.forward(&x, true, Mode::Argmax, true);
            correct += out.argmax(-1, false).eq_tensor(&y).sum(Kind::Int64).int64_value(&[]);
            seen += y.size()[0];
        }
    });
    correct as f64 / seen.max(1) as f64
}

fn save(path: &Path, meta: &Meta, sn: &Supernet, adam: &Adam, sgd: &Sgd) -> Result<(), SearchError> {
    let mut vars: Vec<(String, Tensor)> = sn.vs.variables().into_iter().collect();
    for (s, l) in sn.logits.iter().enumerate() {
        vars.push((format!("__logits__.{s}"), l.detach()));
    }
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut opt: Vec<(String, Tensor)> = sgd.buffers.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
    opt.extend(adam.state());
    checkpoint::save(path, meta, &vars, &opt)?;
    Ok(())
}

fn restore(sn: &mut Supernet, adam: &mut Adam, sgd: &mut Sgd, vars: &[(String, Tensor)], opt: &[(String, Tensor)]) -> Result<(), String> {
    let store = sn.vs.variables();
    no_grad(|| -> Result<(), String> {
        for (name, t) in vars {
            if let Some(s) = name.strip_prefix("__logits__.") {
                let s: usize = s.parse().map_err(|_| format!("bad logits entry `{name}`"))?;
                let slot = sn.logits.get(s).ok_or_else(|| format!("no slot {s}"))?;
                if slot.size() != t.size() {
                    return Err(format!("logits of slot {s} have shape {:?}, expected {:?}", t.size(), slot.size()));
                }
                sn.logits[s] = t.detach().copy().set_requires_grad(true);
            } else {
                let mut dst = store.get(name).ok_or_else(|| format!("unknown variable `{name}`"))?.shallow_clone();
                if dst.size() != t.size() {
                    return Err(format!("variable `{name}` has shape {:?}, expected {:?}", t.size(), dst.size()));
                }
                dst.copy_(t);
            }
        }
        Ok(())
    })?;
    for (name, t) in opt {
        if !adam.restore(name, t) {
            sgd.buffers.insert(name.clone(), t.shallow_clone());
        }
    }
    Ok(())
}

fn read_log(path: &Path) -> Result<Vec<EpochLog>, SearchError> {
    match std::fs::read_to_string(path) {
        Ok(s) => s
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| SearchError::Io { file: path.into(), source: std::io::Error::other(e) }))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(source) => Err(SearchError::Io { file: path.into(), source }),
    }
}

fn write_log(path: &Path, log: &[EpochLog]) -> Result<(), SearchError> {
    let mut text = String::new();
    for l in log {
        text.push_str(&serde_json::to_string(l).map_err(|e| SearchError::Invalid(e.to_string()))?);
        text.push('\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, text).map_err(|source| SearchError::Io { file: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(|source| SearchError::Io { file: path.into(), source })
}

/// Reads the search log of a run folder (for plots and reports).
pub fn load_log(path: &Path) -> Result<Vec<EpochLog>, SearchError> {
    read_log(path)
}

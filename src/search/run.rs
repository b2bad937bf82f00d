//! One search run as a small state machine: [`Run::start`] (new or resumed), one
//! [`Run::epoch`] at a time (weight steps, architecture steps, then the end-of-epoch
//! bookkeeping: accuracy, expansion, checkpoint, log), and [`Run::finish`] (derivation and the
//! architecture file).

use super::adam::Adam;
use super::derive::{self, ArchFile, ArchLayer};
use super::space::{self, Expansion, SpaceConfig};
use super::supernet::{Mode, Supernet};
use super::{accuracy, bind_budgets, bit_config, cost, load_split, plots, read_log, restore, save, write_log};
use super::{Budgets, Derivation, EpochLog, ExpansionInit, Meta, SearchConfig, SearchError, SearchResult};
use crate::cost::Evaluator;
use crate::data::{Dataset, Loader, LoaderConfig};
use crate::graph::{self, BitConfig, Network};
use crate::train::checkpoint;
use crate::train::dist::{self, ReduceStats, World};
use crate::train::sgd::Sgd;
use crate::train::CosineSchedule;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// The loaders of one run: weight half, architecture half, test images (reported only) and
/// held-out architecture images (the TAS derivation's score).
struct Loaders {
    weights: Loader,
    arch: Loader,
    test: Loader,
    val: Loader,
    per_epoch: usize,
}

/// Running sums of one epoch.
#[derive(Default)]
struct Tally {
    weight_loss: f64,
    weight_correct: i64,
    arch_loss: f64,
    arch_correct: i64,
    seen: i64,
    /// Per budget: (metric, expected cost, argmax cost, target) at the last architecture step.
    costs: Vec<(String, f64, f64, f64)>,
}

pub(super) struct Run<'a> {
    cfg: &'a SearchConfig,
    eval: Evaluator,
    base: Network,
    bits: BitConfig,
    budgets: Budgets,
    space: SpaceConfig,
    sn: Supernet,
    adam: Adam,
    sgd: Sgd,
    /// Shared so an epoch can iterate batches while the steps mutate the run.
    data: std::rc::Rc<Loaders>,
    sched: CosineSchedule,
    pub(super) epoch: usize,
    step: usize,
    expansions: Vec<Expansion>,
    log: Vec<EpochLog>,
    ckpt_path: PathBuf,
    log_path: PathBuf,
    /// Sensitivity guidance (`--expansion sensitivity`), resolved to the slots.
    guide: Option<Guide>,
    world: World,
    /// Gradient shards of this rank ([`SearchConfig::grad_shards`]).
    shards: usize,
    /// BatchNorm groups of every global batch (the ranks' shards split them evenly).
    bn_groups: usize,
    reduce: ReduceStats,
    step_seconds: f64,
}

/// [`super::Guidance`] resolved against the base network's slots.
struct Guide {
    /// Sensitivity rank of each slot in [0, 1] (unmeasured slots: 0.5).
    ranks: Vec<f64>,
    thresholds: Vec<f64>,
    prior: f64,
}

impl Guide {
    fn new(g: &super::Guidance, base: &Network, threshold: f64) -> Result<Guide, SearchError> {
        let scores = crate::sensitivity::slots::read_scores(&g.table, base, g.measure).map_err(|e| SearchError::Invalid(e.to_string()))?;
        if !(g.prior.is_finite() && g.prior >= 0.0) {
            return Err(SearchError::Invalid(format!("the sensitivity prior must be finite and ≥ 0, got {}", g.prior)));
        }
        let ranks = crate::sensitivity::slots::normalized_ranks(&scores);
        let thresholds = space::guided_thresholds(threshold, &ranks);
        Ok(Guide { ranks, thresholds, prior: g.prior })
    }
}

/// Seeds a new supernet from an `--init` checkpoint (every variable whose name and shape
/// match); an FP32 one without PACT clips gets clips calibrated on the weight split.
fn init_supernet(sn: &mut Supernet, init: &Path, base: &Network, cfg: &SearchConfig, wset: &Dataset) -> Result<(), SearchError> {
    let ck = checkpoint::load::<serde_json::Value>(init)?;
    let n = sn.init_from(&ck.vars);
    if n == 0 {
        return Err(SearchError::Invalid(format!("{}: no variable matches the supernet of {}", init.display(), cfg.model)));
    }
    tracing::info!("initialised {n} supernet variables from {}", init.display());
    if ck.vars.iter().any(|(name, _)| name.ends_with(".act.alpha")) {
        return Ok(());
    }
    let clips = calibrated_clips(base, &ck.vars, wset, cfg.seed)?;
    let vars = sn.vs.variables();
    tch::no_grad(|| {
        for (name, value) in &clips {
            if let Some(t) = vars.get(name) {
                let _ = t.shallow_clone().fill_(*value);
            }
        }
    });
    tracing::info!("calibrated {} PACT clips of the FP32 --init model", clips.len());
    Ok(())
}

impl<'a> Run<'a> {
    /// Builds the supernet and its optimisers, from `cfg.init`, or from the run's own
    /// checkpoint when `resume` finds one.
    pub(super) fn start(cfg: &'a SearchConfig, resume: bool) -> Result<Run<'a>, SearchError> {
        if cfg.threads > 0 {
            tch::set_num_threads(cfg.threads as i32);
        }
        if cfg.space.threshold.is_nan() || cfg.space.threshold <= 0.0 {
            return Err(SearchError::Invalid(format!("expansion threshold must be positive, got {}", cfg.space.threshold)));
        }
        let profile = crate::cost::load_profile(&cfg.profile)?;
        let eval = Evaluator::new(&profile)?;
        std::fs::create_dir_all(&cfg.out).map_err(|source| SearchError::Io { file: cfg.out.clone(), source })?;
        let (wset, aset, test) = load_split(cfg)?;
        let bits = bit_config(cfg.bits);
        let base = graph::build(cfg.model, wset.shape, wset.classes, None, &bits)?;
        let budgets = bind_budgets(&eval, &base)?;
        let mut space = cfg.space.clone();
        space.granularity = space.granularity.max(profile.unit.channel_granularity);

        let world = dist::world();
        let shards = cfg.grad_shards.max(1);
        let parts = world.size * shards;
        if cfg.batch_size < parts {
            return Err(SearchError::Invalid(format!(
                "a batch of {} images cannot be split into {parts} parts ({} ranks × {shards} gradient shards)",
                cfg.batch_size, world.size
            )));
        }
        let bn_groups = dist::bn_groups(cfg.bn_groups, parts);
        tch::manual_seed(cfg.seed as i64);
        let ckpt_path = cfg.out.join("search-checkpoint.ot");
        let mut sn = Supernet::new(&base, &space, cfg.pact_init);
        // Each rank's supernet normalises one shard's share of the groups at a time.
        sn.bn_groups = bn_groups / parts;
        let resuming = resume && ckpt_path.is_file();
        // A resumed run restores every variable from its own checkpoint; --init only seeds a new one.
        if let Some(init) = cfg.init.as_ref().filter(|_| !resuming) {
            init_supernet(&mut sn, init, &base, cfg, &wset)?;
        }
        let adam = Adam::new(&sn.logits, cfg.arch_lr, cfg.arch_betas, cfg.arch_weight_decay);
        let mut sgd = Sgd::new(cfg.momentum, true);
        sgd.skip_zero_grads = true;
        let guide = match &cfg.expansion {
            super::ExpansionRule::Threshold => None,
            super::ExpansionRule::Sensitivity(g) => Some(Guide::new(g, &base, space.threshold)?),
        };
        let data = std::rc::Rc::new(loaders(cfg, &wset, &aset, &test)?);
        let sched = CosineSchedule { base_lr: cfg.lr, warmup_steps: 0, total_steps: cfg.epochs * data.per_epoch };
        let log_path = cfg.out.join("search.jsonl");
        let mut run = Run {
            cfg,
            eval,
            base,
            bits,
            budgets,
            space,
            sn,
            adam,
            sgd,
            data,
            sched,
            epoch: 0,
            step: 0,
            expansions: Vec::new(),
            log: Vec::new(),
            ckpt_path,
            log_path,
            guide,
            world,
            shards,
            bn_groups,
            reduce: ReduceStats::default(),
            step_seconds: 0.0,
        };
        if resuming {
            run.restore()?;
        }
        // Every rank starts from rank 0's supernet, whatever its own initialisation did.
        let mut all: Vec<(String, Tensor)> = run.sn.vs.variables().into_iter().collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tensors: Vec<Tensor> = all.into_iter().map(|(_, t)| t).collect();
        tensors.extend(run.sn.logits.iter().map(|l| l.detach()));
        dist::broadcast_tensors(&run.world, &tensors);
        if run.world.is_root() {
            write_log(&run.log_path, &run.log)?;
        }
        Ok(run)
    }

    /// Continues from the run's checkpoint: candidates, variables, optimiser state, counters, log.
    fn restore(&mut self) -> Result<(), SearchError> {
        let ck = checkpoint::load::<Meta>(&self.ckpt_path)?;
        // The thread count changes speed, not the run: a search may resume with another one.
        let mut want = self.cfg.clone();
        want.threads = ck.meta.config.threads;
        want.grad_shards = ck.meta.config.grad_shards;
        if ck.meta.config != want {
            return Err(SearchError::Resume(format!("{} was written with a different configuration", self.ckpt_path.display())));
        }
        for (s, cands) in ck.meta.candidates.iter().enumerate() {
            for &c in cands.iter().skip(self.sn.slots[s].candidates.len()) {
                self.sn.add_candidate(s, c);
                self.adam.grow(s);
            }
        }
        restore(&mut self.sn, &mut self.adam, &mut self.sgd, &ck.vars, &ck.opt).map_err(SearchError::Resume)?;
        self.epoch = ck.meta.epoch;
        self.step = ck.meta.step;
        self.expansions = ck.meta.expansions;
        self.log = read_log(&self.log_path)?.into_iter().filter(|l| l.epoch < self.epoch).collect();
        Ok(())
    }

    /// One epoch: alternating weight and architecture steps (weight steps only during
    /// warm-up), then [`Run::end_epoch`].
    pub(super) fn epoch(&mut self, progress: bool) -> Result<(), SearchError> {
        let (epoch, cfg) = (self.epoch, self.cfg);
        let tau = cfg.tau(epoch);
        let started = std::time::Instant::now();
        let progress = progress && self.world.is_root();
        let bar = progress_bar(progress, self.data.per_epoch, epoch, cfg.epochs);
        let mut t = Tally::default();
        let params = self.sn.weight_params();
        let masks = self.sn.decay_masks();
        let arch_epoch = epoch >= cfg.warmup_epochs;
        let data = std::rc::Rc::clone(&self.data);
        let batches = data.weights.epoch_batches(epoch as u64).zip(data.arch.epoch_batches(epoch as u64));
        let buffers: Vec<Tensor> = {
            let mut all: Vec<(String, Tensor)> = self.sn.vs.variables().into_iter().filter(|(_, v)| !v.requires_grad()).collect();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            all.into_iter().map(|(_, v)| v).collect()
        };
        for ((xw, yw), (xa, ya)) in batches.take(data.per_epoch) {
            // The same on every rank: the sampled widths belong to the global step.
            tch::manual_seed(cfg.seed.wrapping_mul(7_919).wrapping_add(self.step as u64) as i64);
            let started = std::time::Instant::now();
            self.weight_step(&xw, &yw, tau, &params, &masks, &buffers, &mut t)?;
            self.step += 1;
            if arch_epoch {
                self.arch_step(&xa, &ya, tau, &params, &buffers, &mut t)?;
                bar.set_message(format!(
                    "τ {tau:.2} w-acc {:.1}% a-acc {:.1}%",
                    pct(t.weight_correct, t.seen),
                    pct(t.arch_correct, t.seen)
                ));
            } else {
                bar.set_message(format!("τ {tau:.2} warm-up w-acc {:.1}%", pct(t.weight_correct, t.seen)));
            }
            bar.inc(1);
            self.step_seconds += started.elapsed().as_secs_f64();
        }
        bar.finish_and_clear();
        let mut sums = [t.weight_loss, t.weight_correct as f64, t.arch_loss, t.arch_correct as f64, t.seen as f64];
        self.world.sum_f64(&mut sums);
        (t.weight_loss, t.arch_loss) = (sums[0], sums[2]);
        (t.weight_correct, t.arch_correct, t.seen) = (sums[1] as i64, sums[3] as i64, sums[4] as i64);
        self.end_epoch(t, tau, arch_epoch, started, progress)
    }

    /// This rank's gradient shards of a global batch: the rows of their BatchNorm groups and
    /// their share of the batch.
    fn shards(&self, x: &Tensor, y: &Tensor) -> Vec<(Tensor, Tensor, f64)> {
        let total = y.size()[0] as usize;
        let parts = self.world.size * self.shards;
        (0..self.shards)
            .map(|k| {
                let rows = dist::group_rows(total, self.bn_groups, self.world.rank * self.shards + k, parts);
                let (start, len) = (rows.start as i64, rows.len() as i64);
                (x.narrow(0, start, len), y.narrow(0, start, len), rows.len() as f64 / total.max(1) as f64)
            })
            .collect()
    }

    /// Runs `shard` (forward and backward of one gradient shard, given its rows and share of the
    /// global batch `(x, y)`) on each of this rank's shards in turn, every shard starting from
    /// the step's BatchNorm running statistics, then all-reduces the gradients of `params` and
    /// the statistics over the ranks: with one part in all, the plain backward pass.
    fn accumulate(
        &mut self,
        x: &Tensor,
        y: &Tensor,
        params: &[Tensor],
        buffers: &[Tensor],
        mut shard: impl FnMut(&mut Self, &Tensor, &Tensor, Option<f64>) -> Result<(), SearchError>,
    ) -> Result<(), SearchError> {
        let parts = self.shards(x, y);
        let whole = self.world.size * self.shards == 1;
        let mut stats = dist::ShardStats::new(buffers, self.shards);
        let mut mine = 0.0;
        for (x, y, share) in &parts {
            stats.start_shard(buffers);
            shard(self, x, y, (!whole).then_some(*share))?;
            stats.end_shard(buffers, *share);
            mine += share;
        }
        // Shards already summed their BatchNorm statistics, weighted; ranks of one shard weight
        // theirs in the all-reduce.
        let weight = if stats.finish(buffers) { 1.0 } else { mine };
        if self.world.size > 1 {
            dist::reduce_step(&self.world, params, buffers, weight, &mut self.reduce);
        }
        Ok(())
    }

    /// SGD on the supernet's weights through sampled widths, logits frozen. Each gradient shard
    /// (and rank) scales its loss by its share of the global batch; the gradients (and the
    /// BatchNorm running statistics `buffers`) are summed before the update.
    #[allow(clippy::too_many_arguments)]
    fn weight_step(
        &mut self,
        x: &Tensor,
        y: &Tensor,
        tau: f64,
        params: &[(String, Tensor)],
        masks: &std::collections::BTreeMap<String, Tensor>,
        buffers: &[Tensor],
        t: &mut Tally,
    ) -> Result<(), SearchError> {
        let draws = self.sn.draw(Mode::Sample { tau });
        Sgd::zero_grad(params);
        let p: Vec<Tensor> = params.iter().map(|(_, p)| p.shallow_clone()).collect();
        self.accumulate(x, y, &p, buffers, |run, x, y, share| {
            let out = run.sn.forward_drawn(x, true, &draws, true);
            let loss = out.cross_entropy_for_logits(y);
            let lv = loss.double_value(&[]);
            if !lv.is_finite() {
                return Err(SearchError::NonFinite { epoch: run.epoch });
            }
            match share {
                Some(share) => (loss * share).backward(),
                None => loss.backward(),
            }
            t.weight_loss += lv * y.size()[0] as f64;
            t.weight_correct += out.argmax(-1, false).eq_tensor(y).sum(Kind::Int64).int64_value(&[]);
            t.seen += y.size()[0];
            Ok(())
        })?;
        let wd = self.cfg.weight_decay;
        self.sgd.step_masked(params, self.sched.lr(self.step), |n| if n.ends_with(".alpha") { 1e-4 } else { wd }, masks);
        Ok(())
    }

    /// Adam on the logits: cross-entropy + λ·L_k over every separable budget (data-parallel as
    /// [`Run::weight_step`], the logits' gradients summed; the cost terms, the same for every
    /// shard, are scaled by the share like the loss).
    #[allow(clippy::assign_op_pattern)] // `+=` on a tch Tensor is an in-place `add_`; the loss is built out of place
    fn arch_step(
        &mut self,
        x: &Tensor,
        y: &Tensor,
        tau: f64,
        params: &[(String, Tensor)],
        buffers: &[Tensor],
        t: &mut Tally,
    ) -> Result<(), SearchError> {
        let cfg = self.cfg;
        let draws = self.sn.draw(Mode::Sample { tau });
        let widths = self.sn.argmax_widths();
        let (_, current) = derive::cost_of(cfg.model, self.base.input, self.base.classes, &widths, &self.bits, &self.eval, &self.base)?;
        self.adam.zero_grad(&self.sn.logits);
        Sgd::zero_grad(params);
        let logits: Vec<Tensor> = self.sn.logits.iter().map(|l| l.shallow_clone()).collect();
        self.accumulate(x, y, &logits, buffers, |run, x, y, share| {
            let out = run.sn.forward_drawn(x, true, &draws, false);
            let ce = out.cross_entropy_for_logits(y);
            let dists = cost::distributions(&run.sn);
            let models: Vec<_> = run.eval.models().collect();
            let mut total = ce.shallow_clone();
            t.costs.clear();
            for (k, (metric, p, m, target, separable)) in run.budgets.items.iter().enumerate() {
                let cur = current.budgets[k].value;
                if !*separable {
                    t.costs.push((metric.clone(), f64::NAN, cur, *target));
                    continue;
                }
                let e = cost::expected_cost(&run.sn, &dists, models[*p].1, *m)?;
                t.costs.push((metric.clone(), e.double_value(&[]), cur, *target));
                total = total + cost::budget_loss(&e, cur, *target, cfg.tolerance) * cfg.lambda;
            }
            if let Some(g) = &run.guide {
                total = total + cost::width_prior(&run.sn, &g.ranks, g.prior);
            }
            if !total.double_value(&[]).is_finite() {
                return Err(SearchError::NonFinite { epoch: run.epoch });
            }
            match share {
                Some(share) => (total * share).backward(),
                None => total.backward(),
            }
            t.arch_loss += ce.double_value(&[]) * y.size()[0] as f64;
            t.arch_correct += out.argmax(-1, false).eq_tensor(y).sum(Kind::Int64).int64_value(&[]);
            Ok(())
        })?;
        self.adam.step(&self.sn.logits);
        Ok(())
    }

    /// Scores the argmax architecture, applies the expansion rule, checkpoints and logs.
    fn end_epoch(&mut self, t: Tally, tau: f64, arch_epoch: bool, started: std::time::Instant, progress: bool) -> Result<(), SearchError> {
        let (cfg, epoch) = (self.cfg, self.epoch);
        let argmax_test_acc = accuracy(&self.sn, &self.data.test);
        let argmax_val_acc = accuracy(&self.sn, &self.data.val);
        let probs = self.sn.probs();
        let widths = self.sn.argmax_widths();
        let argmax_pass =
            derive::cost_of(cfg.model, self.base.input, self.base.classes, &widths, &self.bits, &self.eval, &self.base)?.1.passes();
        let events = match (&self.guide, arch_epoch) {
            (_, false) => Vec::new(),
            (None, true) => space::expand(&mut self.sn.slots, &probs, &self.space, epoch),
            (Some(g), true) => space::expand_per_slot(&mut self.sn.slots, &probs, &g.thresholds, &self.space, epoch),
        };
        for e in &events {
            // expand() already appended the width to the slot; grow logits, BN and Adam state.
            self.sn.add_candidate(e.slot, e.new_widest);
            self.adam.grow(e.slot);
            if cfg.expansion_init == ExpansionInit::Preserve {
                self.sn.init_expanded(
                    e.slot,
                    e.old_widest,
                    e.new_widest,
                    cfg.expansion_noise,
                    cfg.seed ^ (epoch as u64) << 8,
                    &mut self.sgd.buffers,
                );
            }
            tracing::info!("epoch {epoch}: expanded {} from {} to {}", e.layer, e.old_widest, e.new_widest);
        }
        self.expansions.extend(events.iter().cloned());
        let n = t.seen.max(1) as f64;
        let entry = EpochLog {
            epoch,
            tau,
            weight_loss: t.weight_loss / n,
            weight_acc: t.weight_correct as f64 / n,
            arch_loss: t.arch_loss / n,
            arch_acc: t.arch_correct as f64 / n,
            argmax_test_acc,
            argmax_val_acc,
            argmax_pass,
            widths,
            probs,
            candidates: self.sn.slots.iter().map(|s| s.candidates.clone()).collect(),
            budgets: t.costs,
            expansions: events,
            seconds: started.elapsed().as_secs_f64(),
        };
        if progress {
            print_epoch(&entry, cfg.epochs);
        }
        self.epoch += 1;
        let meta = Meta {
            config: cfg.clone(),
            epoch: self.epoch,
            step: self.step,
            candidates: self.sn.slots.iter().map(|s| s.candidates.clone()).collect(),
            expansions: self.expansions.clone(),
        };
        self.log.push(entry);
        if self.world.size > 1 && self.world.is_root() {
            let line = self.reduce.summary(self.step_seconds);
            tracing::info!("{} ranks: {line}", self.world.size);
            if progress {
                eprintln!("{} ranks: {line}", self.world.size);
            }
        }
        if !self.world.is_root() {
            return Ok(());
        }
        save(&self.ckpt_path, &meta, &self.sn, &self.adam, &self.sgd)?;
        write_log(&self.log_path, &self.log)
    }

    /// Derives the final widths (`cfg.derive`), writes `arch.toml` and the charts.
    pub(super) fn finish(self) -> Result<SearchResult, SearchError> {
        let cfg = self.cfg;
        let probs = self.sn.probs();
        let (widths, repaired, report, derivation) = self.derive(&probs)?;
        let (costs, budgets) = report.arch_entries(&self.eval.evaluate(&self.base, &self.base)?);
        let layers = self
            .sn
            .slots
            .iter()
            .zip(&probs)
            .zip(self.sn.argmax_widths())
            .map(|((s, p), w)| ArchLayer {
                name: s.name.clone(),
                base: s.base,
                width: w,
                candidates: s.candidates.clone(),
                probs: p.clone(),
            })
            .collect();
        let arch = ArchFile {
            model: cfg.model,
            input: self.base.input,
            classes: self.base.classes,
            profile: cfg.profile.display().to_string(),
            widths,
            base_widths: self.base.widths.clone(),
            derivation,
            repaired,
            layers,
            costs,
            budgets,
            expansions: self.expansions,
        };
        let arch_path = cfg.out.join("arch.toml");
        if !self.world.is_root() {
            return Ok(SearchResult { arch, arch_path, log: self.log });
        }
        arch.save(&arch_path).map_err(|e| SearchError::Invalid(e.to_string()))?;
        // Charts are a convenience: the architecture file is the result, so a missing font or
        // an unwritable chart is a warning, not a failed search.
        if let Err(e) = plots::write_all(&cfg.out, &self.log, &arch, cfg.space.threshold) {
            tracing::warn!("search plots not written: {e}");
            eprintln!("warning: search plots not written: {e}");
        }
        Ok(SearchResult { arch, arch_path, log: self.log })
    }

    /// The widths, the changes after the argmax, the report and the rule's name.
    #[allow(clippy::type_complexity)]
    fn derive(&self, probs: &[Vec<f64>]) -> Result<(Vec<usize>, Vec<String>, crate::cost::CostReport, String), SearchError> {
        let (cfg, base) = (self.cfg, &self.base);
        let tas_pick = match cfg.derive {
            Derivation::Tas => self
                .log
                .iter()
                .filter(|l| l.epoch >= cfg.warmup_epochs && l.argmax_pass)
                .max_by(|a, b| a.argmax_val_acc.total_cmp(&b.argmax_val_acc).then(a.epoch.cmp(&b.epoch)))
                .map(|l| (l.epoch, l.widths.clone())),
            Derivation::CostAware => None,
        };
        Ok(match tas_pick {
            Some((epoch, widths)) => {
                let (_, report) = derive::cost_of(cfg.model, base.input, base.classes, &widths, &self.bits, &self.eval, base)?;
                (widths, Vec::new(), report, format!("tas (epoch {epoch})"))
            }
            None => {
                let (w, r, rep) = derive::derive(
                    cfg.model,
                    base.input,
                    base.classes,
                    &self.sn.slots,
                    probs,
                    self.space.granularity,
                    &self.bits,
                    &self.eval,
                    base,
                )?;
                let name = if cfg.derive == Derivation::Tas { "cost-aware (tas: no epoch met every budget)" } else { "cost-aware" };
                (w, r, rep, name.to_string())
            }
        })
    }
}

/// PACT clips for a supernet initialised from an FP32 model, which has none: the base network at
/// W2A2 with the FP32 weights, clips set by [`crate::train::calibrate_clips`] on one batch of the
/// weight half (as `nce train` does before QAT). Without this every clip starts at
/// `pact_init` (4.0), far too wide for 2 bits on BatchNorm-scaled activations: most of them
/// round to 0, and the first search epochs see a network near chance.
fn calibrated_clips(
    base: &Network,
    init: &[(String, Tensor)],
    wset: &crate::data::Dataset,
    seed: u64,
) -> Result<Vec<(String, f64)>, SearchError> {
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    crate::models::Model::new(&vs.root(), base, &crate::models::ModelOptions::default())
        .map_err(|e| SearchError::Invalid(e.to_string()))?;
    tch::no_grad(|| {
        for (name, mut dst) in vs.variables() {
            if let Some((_, src)) = init.iter().find(|(n, t)| *n == name && t.size() == dst.size()) {
                dst.copy_(src);
            }
        }
    });
    let calib = Loader::train(wset, 256, seed ^ 0xC0FFEE, tch::Device::Cpu)?;
    let Some((x, _)) = calib.batch(0, 0) else { return Ok(Vec::new()) };
    crate::train::calibrate_clips(&vs, base, &x).map_err(|e| SearchError::Invalid(format!("calibrating PACT clips: {e}")))?;
    Ok(vs.variables().into_iter().filter(|(n, _)| n.ends_with(".act.alpha")).map(|(n, t)| (n, t.double_value(&[0]))).collect())
}

fn loaders(
    cfg: &SearchConfig,
    wset: &crate::data::Dataset,
    aset: &crate::data::Dataset,
    test: &crate::data::Dataset,
) -> Result<Loaders, SearchError> {
    let cpu = tch::Device::Cpu;
    let weights = Loader::new(wset, LoaderConfig { drop_last: true, ..LoaderConfig::train(&wset.name, cfg.batch_size, cfg.seed) }, cpu)?;
    let arch =
        Loader::new(aset, LoaderConfig { drop_last: true, ..LoaderConfig::train(&aset.name, cfg.batch_size, cfg.seed ^ 0xA5C4) }, cpu)?;
    let test = Loader::eval(test, 500, cpu)?;
    let val = Loader::eval(&aset.subset(cfg.val_subset.clamp(1, aset.len().max(1))), 500, cpu)?;
    let per_epoch = weights.num_batches().min(arch.num_batches());
    if per_epoch == 0 {
        return Err(SearchError::Invalid(format!("each half of the training data needs at least one batch of {}", cfg.batch_size)));
    }
    Ok(Loaders { weights, arch, test, val, per_epoch })
}

fn pct(n: i64, d: i64) -> f64 {
    100.0 * n as f64 / d.max(1) as f64
}

fn progress_bar(show: bool, len: usize, epoch: usize, epochs: usize) -> ProgressBar {
    let bar = if show { ProgressBar::new(len as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("search {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
    bar
}

fn print_epoch(e: &EpochLog, epochs: usize) {
    let b: Vec<String> = e.budgets.iter().map(|(m, _, cur, t)| format!("{m} {:.3}x", cur / t)).collect();
    eprintln!(
        "search epoch {}/{}: τ {:.2}, weight acc {:.2}%, arch acc {:.2}%, argmax test acc {:.2}%, {} | {} expansions",
        e.epoch + 1,
        epochs,
        e.tau,
        100.0 * e.weight_acc,
        100.0 * e.arch_acc,
        100.0 * e.argmax_test_acc,
        b.join(", "),
        e.expansions.len()
    );
}

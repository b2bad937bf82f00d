//! Running one stage: decide whether it can be skipped (manifest matches and every output is
//! unchanged), resumed (an interrupted run with the same inputs left its `.pending.json`) or
//! must start afresh (its folder is cleared), then record what it consumed and produced.

use super::manifest::{self, HashCache, Inputs, Manifest, Pending, MANIFEST, PENDING};
use super::results::Stage;
use super::PipelineError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The file every stage writes with its key results (read by the report and by later runs
/// that skip the stage).
pub const RESULT: &str = "result.json";

/// What happened to a stage in one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    /// Ran from the start (no usable earlier state).
    Ran,
    /// Continued an interrupted run from its own checkpoint.
    Resumed,
    /// Manifest matched and every output was unchanged: nothing ran.
    Skipped,
}

impl std::fmt::Display for StageStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StageStatus::Ran => "ran",
            StageStatus::Resumed => "resumed",
            StageStatus::Skipped => "skipped",
        })
    }
}

/// One stage's outcome in one run.
#[derive(Clone, Debug, Serialize)]
pub struct StageOutcome {
    pub stage: Stage,
    pub status: StageStatus,
    /// Wall time in this run (near zero when skipped).
    pub seconds: f64,
    /// Why it did not skip (or "manifest matches").
    pub reason: String,
}

/// What a stage body gets.
pub struct StageCtx {
    /// `<run>/<stage>/`, created and (unless resuming) empty.
    pub dir: PathBuf,
    /// Continue from the stage's own checkpoint.
    pub resume: bool,
}

/// Runs stages in order, with one hash cache for the whole run.
pub struct Runner {
    pub run_dir: PathBuf,
    pub fail_stage: Option<Stage>,
    pub progress: bool,
    pub total: usize,
    pub outcomes: Vec<StageOutcome>,
    cache: HashCache,
}

impl Runner {
    pub fn new(run_dir: PathBuf, total: usize, fail_stage: Option<Stage>, progress: bool) -> Runner {
        Runner { run_dir, fail_stage, progress, total, outcomes: Vec::new(), cache: HashCache::default() }
    }

    fn rel(&self, p: &Path) -> String {
        p.strip_prefix(&self.run_dir).unwrap_or(p).to_string_lossy().replace('\\', "/")
    }

    /// The recorded outputs of `m` still exist with the same hashes (`None`) or the first that
    /// does not (`Some(why)`).
    fn changed_output(&self, m: &Manifest) -> Option<String> {
        for (rel, hash) in &m.outputs {
            let path = self.run_dir.join(rel);
            match self.cache.file(&path) {
                Ok(h) if &h == hash => {}
                Ok(_) => return Some(format!("output {rel} changed")),
                Err(_) => return Some(format!("output {rel} is missing")),
            }
        }
        None
    }

    /// Runs `stage` unless its manifest matches. `inputs` are upstream files by label;
    /// `extra_outputs` are files the stage writes outside its folder. Returns the stage's
    /// result (the body's return value, or the stored `result.json` when skipped; a stored
    /// result that no longer parses as `R` reruns the stage).
    pub fn stage<R: Serialize + DeserializeOwned>(
        &mut self,
        stage: Stage,
        config: serde_json::Value,
        inputs: &[(String, PathBuf)],
        extra_outputs: &[PathBuf],
        body: impl FnOnce(&StageCtx) -> Result<R, super::StageFailure>,
    ) -> Result<R, PipelineError> {
        let index = self.outcomes.len() + 1;
        let name = stage.name();
        let fail = |message: String| PipelineError::Stage { stage, source: message.into() };
        let dir = self.run_dir.join(name);
        let inputs = self.hash_inputs(config, inputs).map_err(fail)?;
        let key = inputs.key();
        let manifest = Manifest::read(&dir.join(MANIFEST));
        let started = Instant::now();
        let reason = match self.why_run(&dir, &inputs, &key, manifest.as_ref()) {
            Ok(result) => {
                self.report(index, name, "skipped (manifest matches)");
                let seconds = started.elapsed().as_secs_f64();
                self.outcomes.push(StageOutcome { stage, status: StageStatus::Skipped, seconds, reason: "manifest matches".into() });
                return Ok(result);
            }
            Err(reason) => reason,
        };
        let resume = prepare_dir(&dir, name, &key, manifest.is_none(), extra_outputs).map_err(fail)?;
        let status = if resume { StageStatus::Resumed } else { StageStatus::Ran };
        self.report(index, name, &format!("{} ({reason})", if resume { "resuming" } else { "running" }));

        if self.fail_stage == Some(stage) {
            return Err(fail("forced failure (NCE_PIPELINE_FAIL_STAGE)".into()));
        }
        let result = body(&StageCtx { dir: dir.clone(), resume }).map_err(|source| PipelineError::Stage { stage, source })?;
        manifest::write_json(&dir.join(RESULT), &result).map_err(|e| fail(format!("{}: {e}", dir.join(RESULT).display())))?;
        let outputs = self.hash_outputs(&dir, extra_outputs).map_err(fail)?;
        let seconds = started.elapsed().as_secs_f64();
        let finished_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let m = Manifest { stage: name.into(), key, inputs, outputs, seconds, resumed: resume, finished_at };
        // The manifest marks the stage finished.
        manifest::write_json(&dir.join(MANIFEST), &m).map_err(|e| fail(format!("{}: {e}", dir.join(MANIFEST).display())))?;
        let _ = std::fs::remove_file(dir.join(PENDING));
        self.report(index, name, &format!("{status} in {seconds:.1} s"));
        self.outcomes.push(StageOutcome { stage, status, seconds, reason });
        Ok(result)
    }

    /// The stage's configuration and the hashes of its upstream files.
    fn hash_inputs(&mut self, config: serde_json::Value, inputs: &[(String, PathBuf)]) -> Result<Inputs, String> {
        let mut files = BTreeMap::new();
        for (label, path) in inputs {
            let h = self.cache.file(path).map_err(|e| format!("input {label} ({}): {e}", path.display()))?;
            files.insert(label.clone(), h);
        }
        Ok(Inputs { config, files })
    }

    /// The stored result when the stage can be skipped, else why it runs.
    fn why_run<R: DeserializeOwned>(&mut self, dir: &Path, inputs: &Inputs, key: &str, manifest: Option<&Manifest>) -> Result<R, String> {
        match manifest {
            None => Err("no manifest".to_string()),
            Some(m) if m.key != key => {
                let changed: Vec<String> = inputs
                    .files
                    .iter()
                    .filter(|(l, h)| m.inputs.files.get(*l) != Some(*h))
                    .map(|(l, _)| l.clone())
                    .chain((m.inputs.config != inputs.config).then(|| "configuration".to_string()))
                    .collect();
                Err(format!("inputs changed: {}", if changed.is_empty() { "stage inputs".into() } else { changed.join(", ") }))
            }
            Some(m) => match self.changed_output(m) {
                None => read_result(dir),
                Some(why) => Err(why),
            },
        }
    }

    /// The hashes of what the stage wrote, by path relative to the run folder.
    fn hash_outputs(&mut self, dir: &Path, extra_outputs: &[PathBuf]) -> Result<BTreeMap<String, String>, String> {
        let mut produced = manifest::stage_files(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        produced.extend(extra_outputs.iter().cloned());
        let mut outputs = BTreeMap::new();
        for p in produced {
            let h = self.cache.file(&p).map_err(|e| format!("output {}: {e}", p.display()))?;
            outputs.insert(self.rel(&p), h);
        }
        Ok(outputs)
    }

    fn report(&self, index: usize, name: &str, what: &str) {
        if self.progress {
            eprintln!("[pipeline {index}/{}] {name}: {what}", self.total);
        }
    }
}

/// Readies a stage's folder and returns whether the stage resumes: only a run interrupted with
/// exactly these inputs resumes; anything else (changed inputs, tampered outputs) starts from an
/// empty folder. Marks the stage pending until its manifest is written.
fn prepare_dir(dir: &Path, name: &str, key: &str, no_manifest: bool, extra_outputs: &[PathBuf]) -> Result<bool, String> {
    let pending: Option<Pending> = std::fs::read_to_string(dir.join(PENDING)).ok().and_then(|t| serde_json::from_str(&t).ok());
    let resume = no_manifest && pending.as_ref().is_some_and(|p| p.key == key);
    if !resume {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
        }
        for p in extra_outputs {
            let _ = std::fs::remove_file(p);
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(dir.join(MANIFEST));
    manifest::write_json(&dir.join(PENDING), &Pending { stage: name.into(), key: key.into() })
        .map_err(|e| format!("{}: {e}", dir.join(PENDING).display()))?;
    Ok(resume)
}

/// A stage's stored `result.json`.
fn read_result<R: DeserializeOwned>(dir: &Path) -> Result<R, String> {
    let p = dir.join(RESULT);
    let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
}

//! Per-epoch metrics as JSON lines (one object per line, appended and flushed each epoch).

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// One epoch's record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    pub images_per_s: f64,
    pub seconds: f64,
}

/// Appends `m` to `path`.
pub fn append(path: &Path, m: &EpochMetrics) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "{}", serde_json::to_string(m).map_err(std::io::Error::other)?)?;
    f.flush()
}

/// Reads all records of `path` (empty if it does not exist).
pub fn read(path: &Path) -> std::io::Result<Vec<EpochMetrics>> {
    match std::fs::read_to_string(path) {
        Ok(s) => s.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).map_err(std::io::Error::other)).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(e),
    }
}

/// One optimisation step's record in `steps.jsonl` (`--log-every`): the loss of the global
/// batch, before the update.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StepRecord {
    pub step: usize,
    pub epoch: usize,
    pub lr: f64,
    pub loss: f64,
}

/// Appends `r` to `path`.
pub fn append_step(path: &Path, r: &StepRecord) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "{}", serde_json::to_string(r).map_err(std::io::Error::other)?)?;
    f.flush()
}

/// The records of `path` (empty if it does not exist); a line cut short by a killed run is
/// skipped.
pub fn read_steps(path: &Path) -> std::io::Result<Vec<StepRecord>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(e),
    }
}

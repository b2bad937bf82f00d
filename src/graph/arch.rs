//! The architecture file (`arch.toml`): what `nce search` writes and `nce train --arch`,
//! `nce cost --arch` and the pipeline read. One type, one loader, one writer.

use super::ModelKind;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A searched architecture: the widths per width slot, and how the search arrived at them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArchFile {
    pub model: ModelKind,
    /// The input shape, written `CxHxW` (e.g. `1x28x28`).
    #[serde(with = "super::shape_text")]
    pub input: super::Shape,
    pub classes: usize,
    pub profile: String,
    pub widths: Vec<usize>,
    pub base_widths: Vec<usize>,
    /// How the widths were derived from the search (`cost-aware` or `tas (epoch N)`).
    #[serde(default)]
    pub derivation: String,
    /// Slots changed by the derivation after the argmax (`layer: from -> to`).
    pub repaired: Vec<String>,
    pub layers: Vec<ArchLayer>,
    pub costs: Vec<ArchCost>,
    pub budgets: Vec<ArchBudget>,
    pub expansions: Vec<Expansion>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArchLayer {
    pub name: String,
    pub base: usize,
    pub width: usize,
    pub candidates: Vec<usize>,
    pub probs: Vec<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArchCost {
    pub plugin: String,
    pub metric: String,
    pub value: f64,
    pub base: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArchBudget {
    pub metric: String,
    pub value: f64,
    pub max: f64,
    pub pass: bool,
}

/// An expansion event of the search (logged and written to the architecture file).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Expansion {
    pub epoch: usize,
    pub slot: usize,
    pub layer: String,
    pub old_widest: usize,
    pub new_widest: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    #[error("{}: {source}", file.display())]
    Io { file: PathBuf, source: std::io::Error },
    #[error("{}: not an architecture file: {message}", file.display())]
    Parse { file: PathBuf, message: String },
    #[error("{}: cannot serialise the architecture: {message}", file.display())]
    Write { file: PathBuf, message: String },
    #[error(transparent)]
    Output(#[from] crate::fsutil::WriteError),
}

impl ArchFile {
    /// Reads an architecture file; errors name the file and, for syntax errors, the line.
    pub fn load(path: &Path) -> Result<ArchFile, ArchError> {
        let text = std::fs::read_to_string(path).map_err(|source| ArchError::Io { file: path.into(), source })?;
        toml::from_str(&text).map_err(|e| {
            let at = e.span().map(|s| format!("{}: ", crate::hw::Location::of_offset(&text, s.start))).unwrap_or_default();
            ArchError::Parse { file: path.into(), message: format!("{at}{}", e.message()) }
        })
    }

    /// Writes the file atomically through [`crate::fsutil::write_atomic`]: a failed write keeps
    /// the previous file, and links, folders and devices are refused.
    pub fn save(&self, path: &Path) -> Result<(), ArchError> {
        let text = toml::to_string(self).map_err(|e| ArchError::Write { file: path.into(), message: e.to_string() })?;
        crate::fsutil::write_atomic(path, text.as_bytes(), &Default::default())?;
        Ok(())
    }
}

//! `sensitivity.csv`: one row per measured layer, written by `nce sensitivity` and read by
//! `nce allocate` and `nce search --expansion sensitivity` (no libtorch needed to read it).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One quantizable layer's result (accuracies in percent, differences in percentage points).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerSensitivity {
    pub layer: String,
    /// Accuracy with only this layer at 2 bits (NaN from a trained W2A2 checkpoint).
    #[serde(default = "nan")]
    pub one_on_acc: f64,
    /// Accuracy of W2A2 with only this layer at full precision.
    #[serde(default = "nan")]
    pub one_off_acc: f64,
    /// `fp32_acc − one_on_acc`.
    pub one_on_drop: f64,
    /// `one_off_acc − w2a2_acc`.
    pub one_off_gain: f64,
    /// Quantization noise weighted by curvature (FIT, after HAWQ-V2): `Tr(F)/n · ‖Q(W) − W‖²`
    /// of the layer's weights in the W2A2 network, F the empirical Fisher. NaN when not measured.
    #[serde(default = "nan")]
    pub fit: f64,
}

fn nan() -> f64 {
    f64::NAN
}

/// Which column ranks the layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Measure {
    /// Accuracy regained when only this layer stays at full precision (calibrated: measure it
    /// on a trained W2A2 checkpoint).
    #[default]
    OneOffGain,
    /// Curvature-weighted weight quantization noise (no accuracy evaluations per layer).
    Fit,
}

impl Measure {
    /// The name the command line and the presets use (`one-off-gain`, `fit`).
    pub fn name(self) -> &'static str {
        match self {
            Measure::OneOffGain => "one-off-gain",
            Measure::Fit => "fit",
        }
    }

    pub fn of(self, l: &LayerSensitivity) -> f64 {
        match self {
            Measure::OneOffGain => l.one_off_gain,
            Measure::Fit => l.fit,
        }
    }
}

/// A row of the file: the layer's numbers and the whole network's (repeated, so every row is
/// self-contained).
/// (csv's reader cannot flatten a struct, so the layer's fields are repeated here.)
#[derive(Clone, Debug, Deserialize)]
struct Row {
    layer: String,
    #[serde(default = "nan")]
    one_on_acc: f64,
    #[serde(default = "nan")]
    one_off_acc: f64,
    one_on_drop: f64,
    one_off_gain: f64,
    #[serde(default = "nan")]
    fit: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{}: {source}", file.display())]
    Csv { file: PathBuf, source: csv::Error },
    #[error("{}: {msg}", file.display())]
    Invalid { file: PathBuf, msg: String },
}

/// Writes the table (atomically: a temp file renamed into place).
pub fn write(path: &Path, layers: &[LayerSensitivity], fp32_acc: f64, w2a2_acc: f64) -> Result<(), TableError> {
    let csv_err = |source| TableError::Csv { file: path.into(), source };
    let mut w = csv::Writer::from_writer(Vec::new());
    for l in layers {
        w.write_record([
            l.layer.clone(),
            format!("{:.4}", l.one_on_acc),
            format!("{:.4}", l.one_off_acc),
            format!("{:.4}", l.one_on_drop),
            format!("{:.4}", l.one_off_gain),
            format!("{:.6e}", l.fit),
            format!("{fp32_acc:.4}"),
            format!("{w2a2_acc:.4}"),
        ])
        .map_err(csv_err)?;
    }
    let body = w.into_inner().map_err(|e| TableError::Invalid { file: path.into(), msg: e.to_string() })?;
    let mut text = b"layer,one_on_acc,one_off_acc,one_on_drop,one_off_gain,fit,fp32_acc,w2a2_acc\n".to_vec();
    text.extend(body);
    crate::fsutil::write_atomic(path, &text, &crate::fsutil::WriteOptions::default())
        .map_err(|e| TableError::Invalid { file: path.into(), msg: e.to_string() })
}

/// Reads a table written by [`write()`] (or by older versions, without the `fit` and accuracy
/// columns).
pub fn read(path: &Path) -> Result<Vec<LayerSensitivity>, TableError> {
    let csv_err = |source| TableError::Csv { file: path.into(), source };
    let mut r = csv::Reader::from_path(path).map_err(csv_err)?;
    let mut layers = Vec::new();
    for row in r.deserialize::<Row>() {
        let r = row.map_err(csv_err)?;
        let (one_on_acc, one_off_acc, one_on_drop, one_off_gain, fit) = (r.one_on_acc, r.one_off_acc, r.one_on_drop, r.one_off_gain, r.fit);
        layers.push(LayerSensitivity { layer: r.layer, one_on_acc, one_off_acc, one_on_drop, one_off_gain, fit });
    }
    if layers.is_empty() {
        return Err(TableError::Invalid { file: path.into(), msg: "no layers".into() });
    }
    Ok(layers)
}

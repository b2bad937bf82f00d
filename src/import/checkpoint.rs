//! The FP32 checkpoint of an import: the same file `nce train --bits 32` writes (its training
//! configuration names the imported model, so `eval`, `train --init`, `search --init`,
//! `sensitivity` and `pipeline --init` rebuild the network from it).

use super::{Import, Variable};
use crate::models::{Model, ModelOptions};
use crate::train::{checkpoint, Meta, TrainConfig, TrainError};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// What the checkpoint records besides the weights.
pub struct CheckpointMeta<'a> {
    /// The dataset the network was trained on (what `eval` defaults to).
    pub data: &'a str,
    pub data_root: &'a Path,
}

/// Writes the import's weights as an FP32 checkpoint at `out` (atomically; `input` is refused
/// as the output). Every variable of the rebuilt model must be set by the import.
pub fn write_checkpoint(import: &Import, out: &Path, input: &Path, m: &CheckpointMeta) -> Result<(), TrainError> {
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Model::new(&vs.root(), &import.net, &ModelOptions::default()).map_err(|e| TrainError::Model(e.to_string()))?;
    let mut vars = vs.variables();
    let mut named = Vec::with_capacity(vars.len());
    for Variable { name, shape, data } in &import.vars {
        let Some(dst) = vars.remove(name) else { return Err(TrainError::Model(format!("the imported network has no variable `{name}`"))) };
        let t = Tensor::from_slice(data).to_kind(Kind::Float).reshape(shape.as_slice());
        if t.size() != dst.size() {
            return Err(TrainError::Model(format!("variable `{name}`: imported shape {:?}, model shape {:?}", t.size(), dst.size())));
        }
        named.push((name.clone(), t));
    }
    if let Some(name) = vars.keys().next() {
        return Err(TrainError::Model(format!("the import sets no value for `{name}`")));
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut config = TrainConfig::new(import.model, m.data, 32, 0, out.parent().unwrap_or(Path::new(".")).to_path_buf());
    config.data_root = m.data_root.to_path_buf();
    let meta = Meta::imported(config, import.net.clone());
    let opts = crate::fsutil::WriteOptions::protecting([input]);
    checkpoint::save_with(out, &meta, &named, &[], &opts)?;
    Ok(())
}

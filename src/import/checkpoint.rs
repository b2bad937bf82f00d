//! The FP32 checkpoint of an import: the same file `nce train --bits 32` writes (its training
//! configuration names the imported model, so `eval`, `train --init`, `search --init`,
//! `sensitivity` and `pipeline --init` rebuild the network from it).

use super::{Import, Variable};
use crate::graph::{Op, Src};
use crate::models::{Model, ModelOptions};
use crate::train::{checkpoint, Meta, TrainConfig, TrainError};
use std::path::Path;
use tch::{nn, no_grad, Device, Kind, Tensor};

/// What the checkpoint records besides the weights.
pub struct CheckpointMeta<'a> {
    /// The dataset the network was trained on (what `eval` defaults to).
    pub data: &'a str,
    pub data_root: &'a Path,
    /// Training images (`[N, C, H, W]` in [0, 1]) on which the BatchNorms of folded convs get
    /// statistics (see `estimate_folded_bn`); `None` keeps them the identity.
    pub calibration: Option<&'a Tensor>,
}

/// Writes the import's weights as an FP32 checkpoint at `out` (atomically; `input` is refused
/// as the output). Every variable of the rebuilt model must be set by the import. Returns how
/// many folded BatchNorms got statistics.
pub fn write_checkpoint(import: &Import, out: &Path, input: &Path, m: &CheckpointMeta) -> Result<usize, TrainError> {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Model::new(&vs.root(), &import.net, &ModelOptions::default()).map_err(|e| TrainError::Model(e.to_string()))?;
    let mut vars = vs.variables();
    for Variable { name, shape, data } in &import.vars {
        let Some(dst) = vars.remove(name) else { return Err(TrainError::Model(format!("the imported network has no variable `{name}`"))) };
        let t = Tensor::from_slice(data).to_kind(Kind::Float).reshape(shape.as_slice());
        if t.size() != dst.size() {
            return Err(TrainError::Model(format!("variable `{name}`: imported shape {:?}, model shape {:?}", t.size(), dst.size())));
        }
        no_grad(|| dst.shallow_clone().f_copy_(&t))?;
    }
    if let Some(name) = vars.keys().next() {
        return Err(TrainError::Model(format!("the import sets no value for `{name}`")));
    }
    let estimated = match m.calibration {
        Some(x) => estimate_folded_bn(&model, &vs, &import.folded_bn, x)?,
        None => 0,
    };
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut config = TrainConfig::new(import.model, m.data, 32, 0, out.parent().unwrap_or(Path::new(".")).to_path_buf());
    config.data_root = m.data_root.to_path_buf();
    let meta = Meta::imported(config, import.net.clone());
    let opts = crate::fsutil::WriteOptions::protecting([input]);
    checkpoint::save_with(out, &meta, &named, &[], &opts)?;
    Ok(estimated)
}

/// Gives the identity BatchNorm of each folded conv (`y + b`) the per-channel mean μ and
/// variance σ² of the conv's output `y` on `x`: `γ = √(σ² + ε)`, `β = b + μ`, running μ, σ².
/// The network computes the same function in evaluation mode (`γ(y − μ)/√(σ² + ε) + β = y + b`),
/// but training mode, which normalises by batch statistics, now starts from it too instead of
/// from unit-variance activations. Returns how many were set.
fn estimate_folded_bn(model: &Model, vs: &nn::VarStore, folded: &[String], x: &Tensor) -> Result<usize, TrainError> {
    let outs = no_grad(|| model.f_forward_layers(x, false)).map_err(|e| TrainError::Model(e.to_string()))?;
    let vars = vs.variables();
    let var = |n: String| vars.get(&n).map(Tensor::shallow_clone).ok_or_else(|| TrainError::Model(format!("no variable `{n}`")));
    let mut n = 0;
    for (i, l) in model.network().layers.iter().enumerate() {
        let Op::Conv { stride, pad, groups, .. } = l.op else { continue };
        if !folded.contains(&l.name) {
            continue;
        }
        // The conv's input as the FP32 network sees it (a normalised image, when it has one).
        let input = match (l.inputs[0], &model.layers()[i].input_norm) {
            (Src::Input, Some(n)) => (x - &n.mean) * &n.inv_std,
            (Src::Input, None) => x.shallow_clone(),
            (Src::Layer(j), _) => outs[j].shallow_clone(),
        };
        let eps = model.layers()[i].bn.as_ref().map_or(1e-5, |b| b.eps);
        let (s, p) = (stride as i64, pad as i64);
        let w = var(format!("{}.weight", l.name))?;
        no_grad(|| -> Result<(), TrainError> {
            let y = input.f_conv2d(&w, None::<Tensor>, [s, s], [p, p], [1, 1], groups as i64)?;
            let mean = y.f_mean_dim([0i64, 2, 3].as_slice(), false, Kind::Float)?;
            let variance = y.f_var_dim([0i64, 2, 3].as_slice(), false, false)?;
            let beta = var(format!("{}.bn.bias", l.name))?;
            let new_beta = beta.f_add(&mean)?;
            beta.shallow_clone().f_copy_(&new_beta)?;
            var(format!("{}.bn.weight", l.name))?.f_copy_(&variance.f_add_scalar(eps)?.f_sqrt()?)?;
            var(format!("{}.bn.running_mean", l.name))?.f_copy_(&mean)?;
            var(format!("{}.bn.running_var", l.name))?.f_copy_(&variance)?;
            Ok(())
        })?;
        n += 1;
    }
    Ok(n)
}

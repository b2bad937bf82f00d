//! Validation of an exported model against its checkpoint: every layer's integer output of
//! the engine (from [`crate::engine::plan::QModel::run_layers_batch`]) compared with the tch integer simulation.
//! (Backends are compared with each other by [`mod@crate::engine::compare`].)

#[cfg(feature = "train")]
use crate::{
    data::Dataset,
    engine::compare::argmax,
    engine::plan::{LayerOut, QModel},
    export::ExportError,
};
use serde::Serialize;

/// The outcome of a comparison.
#[derive(Clone, Debug, Serialize, Default)]
pub struct Report {
    pub images: usize,
    pub engine_correct: usize,
    pub simulation_correct: usize,
    /// The float fake-quant model's correct predictions (reference only).
    pub float_correct: usize,
    /// Images where the engine's and the simulation's argmax agree.
    pub agree: usize,
    /// Integer values (over all layers and images) that differ.
    pub mismatched_values: u64,
    pub compared_values: u64,
    pub max_deviation: i64,
    /// Where the largest deviation was seen.
    pub worst: String,
}

impl Report {
    pub fn exact(&self) -> bool {
        self.mismatched_values == 0 && self.agree == self.images
    }
}

/// Compares engine outputs `outs` (from [`crate::engine::plan::QModel::run_layers_batch`] on `ds`) with the integer simulation
/// of `ckpt`, batch by batch.
#[cfg(feature = "train")]
pub fn compare(
    model: &QModel,
    ckpt: &crate::train::LoadedModel,
    ds: &Dataset,
    outs: &[Vec<Option<LayerOut>>],
) -> Result<Report, ExportError> {
    use super::{convert, simulate};
    use tch::{Kind, Tensor};
    if ckpt.meta.net != *model.net() {
        return Err(ExportError::DifferentNetworks);
    }
    let layers = convert::int_layers(ckpt)?;
    let net = model.net();
    let s = net.input;
    let mut r = Report { images: ds.len(), ..Default::default() };
    for start in (0..ds.len()).step_by(500) {
        let end = (start + 500).min(ds.len());
        let px = &ds.images[start * s.numel()..end * s.numel()];
        let x = Tensor::from_slice(px).view([(end - start) as i64, s.c as i64, s.h as i64, s.w as i64]);
        let sim = simulate::simulate(net, &layers, &x)?;
        let float_logits = tch::no_grad(|| ckpt.model.f_forward_t(&(x.to_kind(Kind::Float) / 255.0), false))?;
        let float_pred = Vec::<i64>::try_from(&float_logits.argmax(-1, false))?;
        for (li, l) in net.layers.iter().enumerate() {
            let Some(st) = &sim[li] else { continue };
            for (bi, o) in outs[start..end].iter().enumerate() {
                let theirs: Vec<i64> = match &o[li] {
                    Some(LayerOut::Codes(q)) => {
                        // Engine tensors are HWC; the simulation's are CHW.
                        let mut v = vec![0i64; q.data.len()];
                        for p in 0..q.h * q.w {
                            for c in 0..q.c {
                                v[c * q.h * q.w + p] = q.data[p * q.c + c] as i64;
                            }
                        }
                        v
                    }
                    Some(LayerOut::Sums(v)) | Some(LayerOut::Logits(v)) => v.iter().map(|&x| x as i64).collect(),
                    None => return Err(ExportError::NoEngineOutput { layer: l.name.clone() }),
                };
                let ours = Vec::<i64>::try_from(&st.get(bi as i64).flatten(0, -1))?;
                if ours.len() != theirs.len() {
                    return Err(ExportError::OutputLength { layer: l.name.clone(), engine: theirs.len(), simulation: ours.len() });
                }
                r.compared_values += ours.len() as u64;
                for (x, y) in ours.iter().zip(&theirs) {
                    let d = (x - y).abs();
                    if d > 0 {
                        r.mismatched_values += 1;
                        if d > r.max_deviation {
                            r.max_deviation = d;
                            r.worst = format!("layer {} image {}", l.name, start + bi);
                        }
                    }
                }
            }
        }
        let last = net.layers.last().map_or(String::new(), |l| l.name.clone());
        let sim_logits = sim.last().and_then(|t| t.as_ref()).ok_or(ExportError::NoIntegerParameters { layer: last })?;
        let sim_pred = Vec::<i64>::try_from(&sim_logits.argmax(-1, false))?;
        for (bi, o) in outs[start..end].iter().enumerate() {
            let engine_pred = match o.last() {
                Some(Some(LayerOut::Logits(l))) => argmax(l) as i64,
                _ => -1,
            };
            let y = ds.labels[start + bi] as i64;
            r.agree += (engine_pred == sim_pred[bi]) as usize;
            r.engine_correct += (engine_pred == y) as usize;
            r.simulation_correct += (sim_pred[bi] == y) as usize;
            r.float_correct += (float_pred[bi] == y) as usize;
        }
    }
    Ok(r)
}

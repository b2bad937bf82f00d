//! `params`: trainable parameters (conv/linear weights, linear bias, BatchNorm γ/β).

use super::{CostModel, CostPlugin, Metric, COST_PLUGINS};
use crate::graph::Layer;
use linkme::distributed_slice;

/// Options of plugins that take none (so a typo'd option is still an error).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NoOptions {}

struct Params;

impl CostModel for Params {
    fn metrics(&self) -> Vec<Metric> {
        vec![Metric::new("params", "params")]
    }
    fn layer_cost(&self, layer: &Layer) -> Result<Vec<f64>, super::CostError> {
        Ok(vec![layer.params() as f64])
    }
}

#[distributed_slice(COST_PLUGINS)]
static PARAMS: CostPlugin = CostPlugin {
    name: "params",
    origin: module_path!(),
    summary: "trainable parameters: conv/linear weights, linear bias, BatchNorm gamma/beta",
    create: |ctx| {
        ctx.options::<NoOptions>()?;
        Ok(Box::new(Params))
    },
};

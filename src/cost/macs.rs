//! `macs`: multiply-accumulates of convs and linears (see [`crate::graph`] for the convention).

use super::{CostModel, CostPlugin, Metric, COST_PLUGINS};
use crate::graph::Layer;
use linkme::distributed_slice;

struct Macs;

impl CostModel for Macs {
    fn metrics(&self) -> Vec<Metric> {
        vec![Metric::new("macs", "MACs")]
    }
    fn layer_cost(&self, layer: &Layer) -> Result<Vec<f64>, super::CostError> {
        Ok(vec![layer.macs() as f64])
    }
}

#[distributed_slice(COST_PLUGINS)]
static MACS: CostPlugin = CostPlugin {
    name: "macs",
    origin: module_path!(),
    summary: "multiply-accumulates of conv and linear layers",
    create: |ctx| {
        ctx.options::<super::params::NoOptions>()?;
        Ok(Box::new(Macs))
    },
};

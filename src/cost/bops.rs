//! `bops`: bit operations, MACs × weight bits × activation bits (as QONNX and Sony MCT count
//! them), so 2-bit layers cost 16× less than 8-bit ones.

use super::{CostModel, CostPlugin, Metric, COST_PLUGINS};
use crate::graph::Layer;
use linkme::distributed_slice;

struct Bops;

impl CostModel for Bops {
    fn metrics(&self) -> Vec<Metric> {
        vec![Metric::new("bops", "BOPs")]
    }
    fn layer_cost(&self, layer: &Layer) -> Result<Vec<f64>, super::CostError> {
        Ok(vec![layer.macs() as f64 * layer.wbits as f64 * layer.abits as f64])
    }
}

#[distributed_slice(COST_PLUGINS)]
static BOPS: CostPlugin = CostPlugin {
    name: "bops",
    origin: module_path!(),
    summary: "bit operations: MACs x weight bits x activation bits",
    create: |ctx| {
        ctx.options::<super::params::NoOptions>()?;
        Ok(Box::new(Bops))
    },
};

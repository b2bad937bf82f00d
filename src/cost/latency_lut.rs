//! `latency-lut`: latency from the profile's measured table (`nce measure`), interpolating
//! channel counts that were not measured (see [`crate::hw::LatencyTable::lookup_us`]).

use super::{CostError, CostModel, CostPlugin, Metric, PluginError, COST_PLUGINS};
use crate::graph::Layer;
use crate::hw::LatencyTable;
use linkme::distributed_slice;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    /// Layers whose family is not in the table (e.g. parameter-free shortcuts) cost 0 instead
    /// of failing. Off by default: a missing measurement is usually a mistake.
    #[serde(default)]
    allow_missing: bool,
}

struct LatencyLut {
    table: LatencyTable,
    allow_missing: bool,
}

impl CostModel for LatencyLut {
    fn metrics(&self) -> Vec<Metric> {
        vec![Metric::new("latency_ms", "ms")]
    }
    fn layer_cost(&self, layer: &Layer) -> Result<Vec<f64>, CostError> {
        let sig = layer.signature();
        match self.table.lookup_us(&sig) {
            Some(us) => Ok(vec![us * 1e-3]),
            None if self.allow_missing => Ok(vec![0.0]),
            None => Err(CostError::Plugin {
                plugin: "latency-lut".into(),
                msg: format!("{} has no measurement for `{sig}` (layer {})", self.table.path.display(), layer.name),
            }),
        }
    }
}

#[distributed_slice(COST_PLUGINS)]
static LATENCY_LUT: CostPlugin = CostPlugin {
    name: "latency-lut",
    origin: module_path!(),
    summary: "latency from the profile's measured per-layer table, interpolating unmeasured widths",
    create: |ctx| {
        let o: Options = ctx.options()?;
        let table = ctx
            .profile
            .latency_table
            .clone()
            .ok_or_else(|| PluginError::Requirement("needs a measured table: add `[latency_table] file = \"…csv\"`".into()))?;
        Ok(Box::new(LatencyLut { table, allow_missing: o.allow_missing }))
    },
};

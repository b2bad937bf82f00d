//! `roofline`: latency from the profile's arithmetic unit and memory bandwidth.
//!
//! Per layer, `max(compute, memory) / efficiency + overhead`, where compute is the layer's
//! MACs — with output channels rounded up to the unit's `channel_granularity` — divided by the
//! unit's MAC rate at the layer's bit width ([`Profile::macs_per_second`]), and memory is the
//! packed weights plus packed input and output activations over `bandwidth_gbps`.

use super::{packed_activation_bytes, packed_weight_bytes, CostError, CostModel, CostPlugin, Metric, COST_PLUGINS};
use crate::graph::Layer;
use crate::hw::Profile;
use linkme::distributed_slice;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    /// Fraction of the peak MAC rate and bandwidth the target actually reaches.
    #[serde(default = "one")]
    efficiency: f64,
    /// Fixed cost per executed layer (kernel launch, loop setup), microseconds.
    #[serde(default)]
    overhead_us: f64,
}

fn one() -> f64 {
    1.0
}

struct Roofline {
    profile: Profile,
    efficiency: f64,
    overhead_us: f64,
}

impl Roofline {
    fn layer_ms(&self, layer: &Layer) -> f64 {
        let p = &self.profile;
        let g = p.unit.channel_granularity.max(1);
        let compute_s = if layer.has_weights() {
            let c = layer.out_shape.c;
            let padded = c.div_ceil(g) * g;
            let macs = layer.macs() as f64 * padded as f64 / c.max(1) as f64;
            let bits = layer.wbits.max(layer.abits).max(1);
            macs / p.macs_per_second(bits)
        } else {
            0.0
        };
        let w = p.unit.word_bits;
        let bytes = packed_weight_bytes(layer, w, 0)
            + packed_activation_bytes(layer.in_shape, layer.abits.max(1), w)
            + packed_activation_bytes(layer.out_shape, layer.out_bits.max(1), w);
        let memory_s = bytes as f64 / (p.memory.bandwidth_gbps * 1e9);
        compute_s.max(memory_s) * 1e3 / self.efficiency + self.overhead_us * 1e-3
    }
}

impl CostModel for Roofline {
    fn metrics(&self) -> Vec<Metric> {
        vec![Metric::new("latency_ms", "ms")]
    }
    fn layer_cost(&self, layer: &Layer) -> Result<Vec<f64>, CostError> {
        Ok(vec![self.layer_ms(layer)])
    }
}

#[distributed_slice(COST_PLUGINS)]
static ROOFLINE: CostPlugin = CostPlugin {
    name: "roofline",
    origin: module_path!(),
    summary: "latency from the unit's lanes, clock and packing and the memory bandwidth",
    create: |ctx| {
        let o: Options = ctx.options()?;
        if !(o.efficiency > 0.0 && o.efficiency <= 1.0) {
            return Err(super::PluginError::Options(format!("efficiency must be in (0, 1], got {}", o.efficiency)));
        }
        if !(o.overhead_us >= 0.0 && o.overhead_us.is_finite()) {
            return Err(super::PluginError::Options(format!("overhead_us must be >= 0, got {}", o.overhead_us)));
        }
        Ok(Box::new(Roofline { profile: ctx.profile.clone(), efficiency: o.efficiency, overhead_us: o.overhead_us }))
    },
};

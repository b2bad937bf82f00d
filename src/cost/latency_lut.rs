//! `latency-lut`: latency from the profile's measured table (`nce measure`), interpolating
//! channel counts that were not measured (see [`crate::hw::LatencyTable::lookup_us`]).
//!
//! Tables of counted instructions (`nce measure --backend qemu-cortex-m7`, metadata
//! `unit=instructions…`) store µs at the table's `clock_mhz` and `assumed_cpi`; the plugin turns
//! them back into instructions and then into time at the *profile's* `[unit] clock_mhz` and the
//! `cycles_per_instruction` the profile states (default: the table's `assumed_cpi`):
//! `µs = instructions × cycles_per_instruction / clock_mhz`.

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
    /// Instruction-count tables only: cycles per instruction assumed when converting counts to
    /// time (an assumption: emulators count instructions, not cycles).
    cycles_per_instruction: Option<f64>,
}

struct LatencyLut {
    table: LatencyTable,
    allow_missing: bool,
    /// Profile µs per table µs (1 for tables measured in time).
    scale: f64,
}

/// Profile µs per table µs: 1 for a table of times; for a table of counted instructions, its
/// µs back to instructions (× `clock_mhz` / `assumed_cpi` of the table) and on to time at the
/// profile's clock and `cpi`.
fn time_scale(table: &LatencyTable, profile_clock_mhz: f64, cpi: Option<f64>) -> Result<f64, PluginError> {
    let counted = table.meta.get("unit").is_some_and(|u| u.starts_with("instructions"));
    if !counted {
        return match cpi {
            None => Ok(1.0),
            Some(_) => Err(PluginError::Options(format!(
                "cycles_per_instruction applies to tables of counted instructions; {} holds times",
                table.path.display()
            ))),
        };
    }
    let meta = |key: &str| {
        table.meta.get(key).and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite() && *v > 0.0).ok_or_else(|| {
            PluginError::Requirement(format!("{} counts instructions but has no positive `{key}` in its `#` line", table.path.display()))
        })
    };
    let (clock, table_cpi) = (meta("clock_mhz")?, meta("assumed_cpi")?);
    let cpi = cpi.unwrap_or(table_cpi);
    if !(cpi.is_finite() && cpi > 0.0) {
        return Err(PluginError::Options(format!("cycles_per_instruction must be a positive number, got {cpi}")));
    }
    Ok(clock / table_cpi * cpi / profile_clock_mhz)
}

impl CostModel for LatencyLut {
    fn metrics(&self) -> Vec<Metric> {
        vec![Metric::new("latency_ms", "ms")]
    }
    fn layer_cost(&self, layer: &Layer) -> Result<Vec<f64>, CostError> {
        let sig = layer.signature();
        match self.table.lookup_us(&sig) {
            Some(us) => Ok(vec![us * self.scale * 1e-3]),
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
        let scale = time_scale(&table, ctx.profile.unit.clock_mhz, o.cycles_per_instruction)?;
        Ok(Box::new(LatencyLut { table, allow_missing: o.allow_missing, scale }))
    },
};

//! An example of a custom nce cost plugin, written the way a user would write one in their own
//! crate: a cycle model of a weight-stationary systolic array.
//!
//! The array holds a `rows × cols` tile of weights: rows run along each output channel's
//! reduction (`in/groups × k × k`), columns along output channels. Every tile is loaded once
//! and all output pixels stream through it, so a conv costs
//!
//! ```text
//! cycles = ceil(K / (rows · pack)) · ceil(C_out / cols) · (pixels + fill_cycles)
//! ```
//!
//! where `pack = pe_bits / weight_bits` is how many low-bit MACs one PE does per cycle. Channel
//! counts that are not multiples of `cols` (or reductions not multiples of `rows · pack`) pay
//! for the idle PEs of their last tile, which is exactly what makes such a target prefer
//! particular widths. Layers without weights run on a vector unit and are not counted.
//!
//! A grouped conv (a MobileNet depthwise conv) is mapped as the block-diagonal matrix it is: the
//! rows of group `g` hold only that group's outputs' weights, and a row of PEs shares one input
//! stream across all its columns, so the array cannot give each column its own channel. Tiles
//! that hold no weight are skipped; a depthwise 3×3 layer of `C` channels thus loads
//! `C / cols` column tiles each spanning `9 · cols` reduction rows, which is why such arrays run
//! depthwise layers at low utilisation.
//!
//! Register it with one static in the `nce::cost::COST_PLUGINS` distributed slice. Because
//! rustc drops crates nothing names, the final binary must say `use nce_systolic_cost as _;`.

use linkme::distributed_slice;
use nce::cost::{CostError, CostModel, CostPlugin, Metric, PluginContext, PluginError, COST_PLUGINS};
use nce::graph::{Layer, Op};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    /// PE rows (reduction dimension).
    rows: usize,
    /// PE columns (output channels).
    cols: usize,
    /// Operand width of one PE; a PE does `pe_bits / bits` low-bit MACs per cycle.
    #[serde(default = "eight")]
    pe_bits: u8,
    /// Pipeline fill/drain cycles per weight tile (default `rows + cols`).
    fill_cycles: Option<u64>,
}

fn eight() -> u8 {
    8
}

/// The configured cycle model.
pub struct Systolic {
    rows: usize,
    cols: usize,
    pe_bits: u8,
    fill: u64,
    clock_hz: f64,
}

impl Systolic {
    /// Array cycles of one layer.
    pub fn cycles(&self, layer: &Layer) -> u64 {
        if !layer.has_weights() {
            return 0;
        }
        let bits = layer.wbits.max(layer.abits).clamp(1, self.pe_bits);
        let pack = (self.pe_bits / bits).max(1) as usize;
        let pixels = (layer.out_shape.h * layer.out_shape.w) as u64;
        self.tiles(layer, self.rows * pack) * (pixels + self.fill)
    }

    /// Weight tiles of `rows_per_tile` reduction rows × `cols` output channels that hold at
    /// least one weight of the (block-diagonal, for `groups` > 1) weight matrix.
    fn tiles(&self, layer: &Layer, rows_per_tile: usize) -> u64 {
        let k = layer.reduction_len(); // rows per group
        let c_out = layer.out_shape.c;
        let groups = match layer.op {
            Op::Conv { groups, .. } => groups.clamp(1, c_out.max(1)),
            _ => 1,
        };
        if groups == 1 {
            return (k.div_ceil(rows_per_tile) * c_out.div_ceil(self.cols)) as u64;
        }
        let per_group = c_out.div_ceil(groups);
        (0..c_out)
            .step_by(self.cols)
            .map(|first| {
                let last = (first + self.cols).min(c_out) - 1;
                let (rows_from, rows_to) = (first / per_group * k, (last / per_group + 1) * k);
                ((rows_to - 1) / rows_per_tile - rows_from / rows_per_tile + 1) as u64
            })
            .sum()
    }

    fn create(ctx: &PluginContext) -> Result<Systolic, PluginError> {
        let o: Options = ctx.options()?;
        if o.rows == 0 || o.cols == 0 || o.pe_bits == 0 {
            return Err(PluginError::Options("rows, cols and pe_bits must be at least 1".into()));
        }
        Ok(Systolic {
            rows: o.rows,
            cols: o.cols,
            pe_bits: o.pe_bits,
            fill: o.fill_cycles.unwrap_or((o.rows + o.cols) as u64),
            clock_hz: ctx.profile.unit.clock_mhz * 1e6,
        })
    }
}

impl CostModel for Systolic {
    fn metrics(&self) -> Vec<Metric> {
        vec![Metric::new("systolic_cycles", "cycles"), Metric::new("latency_ms", "ms")]
    }

    fn layer_cost(&self, layer: &Layer) -> Result<Vec<f64>, CostError> {
        let c = self.cycles(layer) as f64;
        Ok(vec![c, c / self.clock_hz * 1e3])
    }
}

#[distributed_slice(COST_PLUGINS)]
static SYSTOLIC: CostPlugin = CostPlugin {
    name: "systolic",
    origin: module_path!(),
    summary: "weight-stationary systolic array cycles (example plugin crate nce-systolic-cost)",
    create: |ctx| Ok(Box::new(Systolic::create(ctx)?)),
};

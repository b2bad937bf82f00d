//! `packed-memory`: bytes the target stores.
//!
//! - `packed_weight_bytes`: weights packed `word_bits / wbits` per word along each output
//!   channel's reduction (`in/groups × k × k`), every channel padded to whole words, plus
//!   `per_channel_bytes` of requantisation data (int32 bias + fixed-point multiplier) per output
//!   channel. Separable.
//! - `peak_activation_bytes`: the largest sum of live activation tensors while the network
//!   runs layer by layer; tensors are stored pixel-major with each pixel's channels packed at
//!   the tensor's bit width and padded to whole words, and a tensor lives from the layer that
//!   writes it to its last reader (the image is 8-bit). Not separable.

use super::{CostError, CostModel, CostPlugin, Metric, COST_PLUGINS};
use crate::graph::{Layer, Network, Shape, Src};
use linkme::distributed_slice;
use serde::Deserialize;

/// Packed bytes of `layer`'s weights and per-channel requantisation data.
pub fn packed_weight_bytes(layer: &Layer, word_bits: u32, per_channel_bytes: u64) -> u64 {
    if !layer.has_weights() {
        return 0;
    }
    let bits = layer.wbits.max(1) as u64;
    let word = word_bits as u64;
    let words_per_channel = (layer.reduction_len() as u64 * bits).div_ceil(word);
    let cout = layer.out_shape.c as u64;
    cout * words_per_channel * word / 8 + cout * per_channel_bytes
}

/// Packed bytes of an activation tensor of `shape` at `bits`, channels padded to words.
pub fn packed_activation_bytes(shape: Shape, bits: u8, word_bits: u32) -> u64 {
    let word = word_bits as u64;
    let words_per_pixel = (shape.c as u64 * bits as u64).div_ceil(word);
    (shape.h * shape.w) as u64 * words_per_pixel * word / 8
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default = "default_per_channel")]
    per_channel_bytes: u64,
}

fn default_per_channel() -> u64 {
    8
}

struct PackedMemory {
    word_bits: u32,
    per_channel_bytes: u64,
}

impl PackedMemory {
    /// Live activation bytes while each layer runs.
    fn live_bytes(&self, net: &Network) -> Vec<u64> {
        let n = net.layers.len();
        // Last reader of the input (index usize::MAX = never read) and of every layer output.
        let mut last_use_input = 0usize;
        let mut last_use = vec![usize::MAX; n];
        for (j, l) in net.layers.iter().enumerate() {
            for s in &l.inputs {
                match *s {
                    Src::Input => last_use_input = last_use_input.max(j),
                    Src::Layer(i) => last_use[i] = if last_use[i] == usize::MAX { j } else { last_use[i].max(j) },
                }
            }
        }
        let input_bytes = packed_activation_bytes(net.input, 8, self.word_bits);
        let bytes: Vec<u64> = net.layers.iter().map(|l| packed_activation_bytes(l.out_shape, l.out_bits, self.word_bits)).collect();
        (0..n)
            .map(|j| {
                let mut live = if last_use_input >= j { input_bytes } else { 0 };
                for i in 0..=j {
                    // The final output (never read) stays live to the end.
                    if i == j || last_use[i] == usize::MAX || last_use[i] >= j {
                        live += bytes[i];
                    }
                }
                live
            })
            .collect()
    }
}

impl CostModel for PackedMemory {
    fn metrics(&self) -> Vec<Metric> {
        vec![Metric::new("packed_weight_bytes", "bytes"), Metric::new("peak_activation_bytes", "bytes")]
    }

    fn layer_cost(&self, layer: &Layer) -> Result<Vec<f64>, CostError> {
        let w = packed_weight_bytes(layer, self.word_bits, self.per_channel_bytes) as f64;
        let a = packed_activation_bytes(layer.in_shape, layer.abits.max(1), self.word_bits)
            + packed_activation_bytes(layer.out_shape, layer.out_bits.max(1), self.word_bits);
        Ok(vec![w, a as f64])
    }

    fn network_cost(&self, net: &Network) -> Result<Vec<f64>, CostError> {
        let w: u64 = net.layers.iter().map(|l| packed_weight_bytes(l, self.word_bits, self.per_channel_bytes)).sum();
        let peak = self.live_bytes(net).into_iter().max().unwrap_or(0);
        Ok(vec![w as f64, peak as f64])
    }

    fn separable(&self, metric: usize) -> bool {
        metric == 0
    }
}

#[distributed_slice(COST_PLUGINS)]
static PACKED_MEMORY: CostPlugin = CostPlugin {
    name: "packed-memory",
    origin: module_path!(),
    summary: "packed weight bytes (word-padded, with per-channel requant data) and peak packed activation bytes",
    create: |ctx| {
        let o: Options = ctx.options()?;
        Ok(Box::new(PackedMemory { word_bits: ctx.profile.unit.word_bits, per_channel_bytes: o.per_channel_bytes }))
    },
};

//! Per-layer bit configuration.

use super::{GraphError, Network, Op};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Weight/activation precision per layer: a uniform default (W2A2) with the first conv and the
/// last linear kept at higher precision, as in PACT/SAWB and NCE, plus per-layer overrides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitConfig {
    pub weight: u8,
    pub activation: u8,
    /// Bits (weights and activations) of the first conv; `None` keeps the default.
    pub first: Option<u8>,
    /// Bits (weights and activations) of the last linear; `None` keeps the default.
    pub last: Option<u8>,
    /// Layer name → (weight bits, activation bits).
    #[serde(default)]
    pub overrides: BTreeMap<String, (u8, u8)>,
}

impl Default for BitConfig {
    fn default() -> Self {
        BitConfig::uniform(2)
    }
}

impl BitConfig {
    /// `bits` everywhere except an 8-bit first conv and last linear.
    pub fn uniform(bits: u8) -> Self {
        BitConfig { weight: bits, activation: bits, first: Some(8), last: Some(8), overrides: BTreeMap::new() }
    }

    /// Full precision is modelled as 32-bit everywhere (costs only; training skips quantizers).
    pub fn full_precision() -> Self {
        BitConfig { weight: 32, activation: 32, first: None, last: None, overrides: BTreeMap::new() }
    }

    pub fn validate(&self) -> Result<(), GraphError> {
        let ok = |b: u8| (2..=8).contains(&b) || b == 32;
        let mut all = vec![("weights".to_string(), self.weight), ("activations".to_string(), self.activation)];
        all.extend(self.first.map(|b| ("the first layer".to_string(), b)));
        all.extend(self.last.map(|b| ("the last layer".to_string(), b)));
        for (name, (w, a)) in &self.overrides {
            all.push((format!("{name} weights"), *w));
            all.push((format!("{name} activations"), *a));
        }
        for (what, bits) in all {
            if !ok(bits) {
                return Err(GraphError::Bits { what, bits });
            }
        }
        Ok(())
    }

    /// Assigns `wbits`, `abits` and `out_bits` to every layer of `net`.
    ///
    /// A layer's output is stored at the activation bits of its consumers; the residual branch
    /// (a conv without ReLU feeding an add) and a pooled feature feeding the classifier keep
    /// 8 bits; logits are 32-bit.
    pub fn apply(&self, net: &mut Network) -> Result<(), GraphError> {
        self.validate()?;
        for name in self.overrides.keys() {
            if !net.layers.iter().any(|l| &l.name == name) {
                return Err(GraphError::UnknownLayer(name.clone()));
            }
        }
        let first = net.layers.iter().position(|l| l.has_weights());
        let last = net.layers.iter().rposition(|l| l.has_weights());
        for (i, layer) in net.layers.iter_mut().enumerate() {
            let (mut w, mut a) = (self.weight, self.activation);
            if Some(i) == first {
                if let Some(b) = self.first {
                    (w, a) = (b, b);
                }
            }
            if Some(i) == last {
                if let Some(b) = self.last {
                    (w, a) = (b, b);
                }
            }
            if let Some(&(ow, oa)) = self.overrides.get(&layer.name) {
                (w, a) = (ow, oa);
            }
            layer.wbits = if layer.has_weights() { w } else { 0 };
            layer.abits = a;
        }
        // Pass-through layers read at their producer's precision; compute out_bits from consumers.
        let n = net.layers.len();
        for i in 0..n {
            let consumers: Vec<usize> = (i + 1..n).filter(|&j| net.layers[j].inputs.contains(&super::Src::Layer(i))).collect();
            let layer = &net.layers[i];
            let read = consumers.iter().map(|&j| read_bits(&net.layers[j], self)).max().unwrap_or(32);
            let out = match layer.op {
                _ if consumers.is_empty() => 32,
                Op::Conv { relu: false, .. } => 8,
                // Signed codes (`Network::is_signed`) are 8-bit wherever anything is quantized.
                Op::Add { relu: false } if read < 32 => 8,
                _ => read,
            };
            net.layers[i].out_bits = out;
        }
        // A quantized conv reading signed 8-bit codes (a linear bottleneck) reads 8 bits.
        for i in 0..n {
            let l = &net.layers[i];
            if l.has_weights() && l.abits < 8 && l.inputs.iter().any(|&s| net.src_signed(s)) {
                net.layers[i].abits = 8;
            }
        }
        for i in 0..n {
            if !net.layers[i].has_weights() {
                let b = net.layers[i].inputs.iter().map(|&s| net.src_bits(s)).max().unwrap_or(8);
                net.layers[i].abits = b;
            }
        }
        Ok(())
    }
}

/// The precision at which a consumer reads its input.
fn read_bits(consumer: &super::Layer, cfg: &BitConfig) -> u8 {
    match consumer.op {
        Op::Conv { .. } | Op::Linear => consumer.abits,
        // Adds, pools and shortcuts pass the stored activation precision through.
        _ => cfg.activation,
    }
}

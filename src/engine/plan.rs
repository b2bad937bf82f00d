//! The runnable plan of an exported integer model: the layer graph plus every layer's integer
//! parameters, laid out as a list of [`Step`]s that every backend executes in order.
//!
//! The plan is the seam between the file reader (`crate::export`, which builds it from a `.nce`
//! container and checks it) and the backends ([`super::Backend`]), so it depends on neither:
//! only on the graph and the engine's layer types. The CPU execution of a plan lives in
//! [`super::cpu::model`], the wgpu one in `super::wgpu`.

use super::{Conv2d, Linear, MaxPool2d, QTensor};
use crate::graph::{Network, Src};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The JSON header of a `.nce` file, carried with the plan so that reports and checks can name
/// the network, the profile and the checkpoint a model came from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Header {
    /// Always `"nce-model"`.
    pub kind: String,
    /// The network (model, input, widths, per-layer bits).
    pub net: Network,
    /// The hardware profile the network was searched for, if any.
    pub profile: Option<String>,
    /// Where the weights came from (checkpoint path) and what it scored.
    pub source: Option<String>,
    /// Real-valued scales per layer, for people reading the file (the engines use only the
    /// integer arrays).
    pub scales: BTreeMap<String, LayerScales>,
}

/// Documentation-only scales of one layer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct LayerScales {
    pub weight: Option<f64>,
    pub input: Option<f64>,
    pub output: Option<f64>,
    pub weight_bits: u8,
}

/// One executable step.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// A conv (writing graph layer `out`), optionally with the residual add fused: the add's
    /// shortcut operand comes from tensor `residual.0`, subsampled by `residual.1`, scaled by
    /// `residual.2`.
    Conv {
        layer: usize,
        input: Src,
        out: usize,
        conv: Conv2d,
        residual: Option<(Src, usize, i32)>,
    },
    MaxPool {
        layer: usize,
        input: Src,
        pool: MaxPool2d,
    },
    /// Global average pooling as exact per-channel sums.
    Pool {
        layer: usize,
        input: Src,
    },
    Linear {
        layer: usize,
        linear: Linear,
    },
}

/// A validated model ready to run.
#[derive(Clone, Debug, PartialEq)]
pub struct QModel {
    pub header: Header,
    pub steps: Vec<Step>,
}

/// Per-layer integer output of a run (for validation against the simulation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerOut {
    Codes(QTensor),
    Sums(Vec<i32>),
    Logits(Vec<i32>),
}

impl QModel {
    pub fn net(&self) -> &Network {
        &self.header.net
    }
}

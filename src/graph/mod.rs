//! The network description shared by every part of nce.
//!
//! A [`Network`] is a flat, topologically ordered list of [`Layer`]s with concrete shapes and
//! bit widths. Cost plugins read it, the tch models are built from it and the integer engine
//! executes the same structure, so costs, models and deployed kernels cannot disagree.
//!
//! Conventions (used by every cost plugin and test):
//! - a *MAC* is one multiply-accumulate of a conv or linear layer; BatchNorm, ReLU, adds and
//!   pooling are not counted (they fold into per-channel requantisation on the integer engine);
//! - *params* are conv and linear weights, linear biases and BatchNorm γ/β; quantizer
//!   parameters (PACT clips, LSQ steps) and BN running statistics are not counted.
//! - a residual add of tensors of different widths zero-pads the narrower one (option-A
//!   shortcuts in CIFAR ResNets; TAS's rule for searched widths), so it has no parameters.

pub mod arch;
mod bits;
mod builder;
pub mod imported;
mod kind;
pub mod mobilenet;
mod resnet;

pub use arch::ArchFile;
pub use bits::BitConfig;
pub use builder::build;
pub use imported::{Imported, ImportedGraph, Normalization};
pub use kind::{ModelKind, WidthMult};
pub use resnet::SMALL_INPUT;

use serde::{Deserialize, Serialize};
use std::fmt;

/// Channels × height × width of an activation tensor (batch excluded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Shape {
    pub fn new(c: usize, h: usize, w: usize) -> Self {
        Shape { c, h, w }
    }
    pub fn numel(&self) -> usize {
        self.c * self.h * self.w
    }
    pub fn numel_u128(&self) -> u128 {
        self.c as u128 * self.h as u128 * self.w as u128
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.c, self.h, self.w)
    }
}

/// A shape that is not `CxHxW` with positive integers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected CxHxW with positive integers (e.g. 3x32x32), got `{0}`")]
pub struct ShapeParseError(pub String);

impl std::str::FromStr for Shape {
    type Err = ShapeParseError;
    /// Parses `CxHxW`, e.g. `3x32x32`.
    fn from_str(s: &str) -> Result<Self, ShapeParseError> {
        let parts: Vec<&str> = s.split(['x', 'X', '×']).collect();
        let nums: Result<Vec<usize>, _> = parts.iter().map(|p| p.trim().parse::<usize>()).collect();
        match nums.as_deref() {
            Ok([c, h, w]) if *c > 0 && *h > 0 && *w > 0 => Ok(Shape::new(*c, *h, *w)),
            _ => Err(ShapeParseError(s.to_string())),
        }
    }
}

/// `Shape` as its `CxHxW` text, for files people read and write (`#[serde(with = ...)]`).
pub mod shape_text {
    use super::Shape;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(shape: &Shape, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(shape)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Shape, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a layer reads its input from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Src {
    /// The network input (the image).
    Input,
    /// The output of an earlier layer, by index.
    Layer(usize),
}

/// The operation a layer performs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    /// k×k convolution without bias, followed by BatchNorm, optionally by ReLU. `relu6`
    /// (imported networks' `Clip(0, 6)`) caps the ReLU at 6 in full precision; quantized
    /// layers clip at their quantizer's range instead.
    Conv {
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
        relu: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        relu6: bool,
    },
    /// Fully connected layer with bias (the classifier).
    Linear,
    /// Elementwise sum of two inputs; the narrower one is zero-padded in channels.
    Add { relu: bool },
    /// Parameter-free option-A shortcut: spatial subsampling by `stride` (channels unchanged;
    /// the following add zero-pads them).
    Subsample { stride: usize },
    /// Max pooling (ImageNet stem).
    MaxPool { k: usize, stride: usize, pad: usize },
    /// Global average pooling to 1×1.
    GlobalAvgPool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One node of the layer graph with concrete shapes and precisions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<Src>,
    /// Shape of the first input.
    pub in_shape: Shape,
    pub out_shape: Shape,
    /// Weight bits (0 for layers without weights).
    pub wbits: u8,
    /// Bits of the activations this layer reads.
    pub abits: u8,
    /// Bits at which this layer's output is stored.
    pub out_bits: u8,
    /// Index into the network's width vector for layers whose width can be chosen.
    pub width_slot: Option<usize>,
}

impl Layer {
    /// MACs and weights in `u128` (cannot overflow for any `usize` shape); [`build`]
    /// rejects layers where either exceeds [`MAX_LAYER_COUNT`], so the `u64` counts below are exact.
    pub fn macs_and_weights_u128(&self) -> (u128, u128) {
        let (i, o) = (self.in_shape.c as u128, self.out_shape.c as u128);
        let pixels = self.out_shape.h as u128 * self.out_shape.w as u128;
        match self.op {
            Op::Conv { k, groups, .. } => {
                let w = i / groups.max(1) as u128 * (k as u128 * k as u128) * o;
                (w.saturating_mul(pixels), w)
            }
            Op::Linear => {
                let w = self.in_shape.numel_u128() * o;
                (w, w)
            }
            _ => (0, 0),
        }
    }

    /// Input channels × output channels × kernel area / groups: the MACs per output pixel.
    pub fn macs(&self) -> u64 {
        match self.op {
            Op::Conv { k, groups, .. } => {
                (self.in_shape.c / groups * k * k * self.out_shape.c * self.out_shape.h * self.out_shape.w) as u64
            }
            Op::Linear => (self.in_shape.numel() * self.out_shape.c) as u64,
            _ => 0,
        }
    }

    /// Trainable parameters (see the module docs for the convention).
    pub fn params(&self) -> u64 {
        self.weight_count() as u64
            + match self.op {
                Op::Conv { .. } => 2 * self.out_shape.c as u64, // BN gamma + beta
                Op::Linear => self.out_shape.c as u64,          // bias
                _ => 0,
            }
    }

    /// Number of weights (the quantity that gets packed).
    pub fn weight_count(&self) -> usize {
        match self.op {
            Op::Conv { k, groups, .. } => self.in_shape.c / groups * k * k * self.out_shape.c,
            Op::Linear => self.in_shape.numel() * self.out_shape.c,
            _ => 0,
        }
    }

    /// Length of one output channel's reduction (the dot-product length the unit packs).
    pub fn reduction_len(&self) -> usize {
        match self.op {
            Op::Conv { k, groups, .. } => self.in_shape.c / groups * k * k,
            Op::Linear => self.in_shape.numel(),
            _ => 0,
        }
    }

    pub fn has_weights(&self) -> bool {
        matches!(self.op, Op::Conv { .. } | Op::Linear)
    }

    /// A stable key describing everything that determines this layer's cost, used by
    /// measured latency tables: e.g. `conv3x3_s1_g1_i16_o16_h32_w32_w2a2`.
    pub fn signature(&self) -> String {
        let (i, o, h, w) = (self.in_shape.c, self.out_shape.c, self.in_shape.h, self.in_shape.w);
        match self.op {
            Op::Conv { k, stride, groups, .. } => {
                format!("conv{k}x{k}_s{stride}_g{groups}_i{i}_o{o}_h{h}_w{w}_w{}a{}", self.wbits, self.abits)
            }
            Op::Linear => format!("linear_i{}_o{o}_w{}a{}", self.in_shape.numel(), self.wbits, self.abits),
            Op::Add { .. } => format!("add_c{o}_h{}_w{}", self.out_shape.h, self.out_shape.w),
            Op::Subsample { stride } => format!("subsample_s{stride}_c{i}_h{h}_w{w}"),
            Op::MaxPool { k, stride, .. } => format!("maxpool{k}_s{stride}_c{i}_h{h}_w{w}"),
            Op::GlobalAvgPool => format!("gap_c{i}_h{h}_w{w}"),
        }
    }
}

/// A whole network: input shape, layers in execution order, and its width vector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// e.g. `resnet20`.
    pub model: String,
    pub input: Shape,
    pub classes: usize,
    pub layers: Vec<Layer>,
    /// One entry per width slot: the output channels of each searchable conv.
    pub widths: Vec<usize>,
}

impl Network {
    /// The input normalisation of an imported network whose graph this process has read
    /// (`None` for nce's own networks, which read images in [0, 1]).
    pub fn normalization(&self) -> Option<&'static Normalization> {
        if !self.model.starts_with(imported::PREFIX) {
            return None;
        }
        Imported::find(&self.model)?.graph().normalization.as_ref()
    }

    /// Whether layer `i` is a projection shortcut: a conv without ReLU whose only reader is an
    /// add with ReLU that takes it as its shortcut (second) operand, the add's first operand
    /// being a later conv without ReLU (the block's last conv, which the integer form fuses
    /// with the add). Its output is stored as signed 8-bit codes (`docs/quantization.md`).
    /// Imported graphs are ordered so (`import`); nce's own ResNet-18/50 build the downsample
    /// conv after the block's last conv, so theirs are not (and do not export yet).
    pub fn is_projection_shortcut(&self, i: usize) -> bool {
        let Some(l) = self.layers.get(i) else { return false };
        if !matches!(l.op, Op::Conv { relu: false, .. }) {
            return false;
        }
        let mut readers = self.layers.iter().filter(|r| r.inputs.contains(&Src::Layer(i)));
        let (Some(add), None) = (readers.next(), readers.next()) else { return false };
        let main = match add.inputs.as_slice() {
            [Src::Layer(m), Src::Layer(sc)] if *sc == i && *m > i => &self.layers[*m],
            _ => return false,
        };
        matches!(add.op, Op::Add { relu: true }) && matches!(main.op, Op::Conv { relu: false, .. })
    }

    /// Whether layer `i`'s output is stored as signed 8-bit codes with the zero point
    /// `quant::SHORTCUT_ZERO` (`docs/quantization.md`, "Signed codes"): a projection shortcut
    /// ([`Network::is_projection_shortcut`]), a linear bottleneck (a conv without ReLU that a
    /// layer other than an add reads, as MobileNetV2's projections), or an add without ReLU.
    /// Every other conv without ReLU is fused with the add that reads it.
    pub fn is_signed(&self, i: usize) -> bool {
        match self.layers.get(i).map(|l| &l.op) {
            Some(Op::Conv { relu: false, .. }) => self.is_projection_shortcut(i) || self.is_linear_bottleneck(i),
            Some(Op::Add { relu: false }) => true,
            _ => false,
        }
    }

    /// A conv without ReLU that some layer other than an add reads.
    fn is_linear_bottleneck(&self, i: usize) -> bool {
        matches!(self.layers.get(i).map(|l| &l.op), Some(Op::Conv { relu: false, .. }))
            && self.layers.iter().any(|r| r.inputs.contains(&Src::Layer(i)) && !matches!(r.op, Op::Add { .. }))
    }

    /// Whether source `s` holds signed codes ([`Network::is_signed`]).
    pub fn src_signed(&self, s: Src) -> bool {
        matches!(s, Src::Layer(i) if self.is_signed(i))
    }

    /// The first read of signed codes whose zero point the integer form cannot fold, as
    /// `(reader, source, why)`: only an unpadded conv (into its bias) and an add taking them as
    /// its shortcut operand, with as many channels as the add's other operand (into the fused
    /// conv's bias), can read them (`docs/quantization.md`, "Signed codes").
    pub fn unfoldable_signed_read(&self) -> Option<(usize, usize, &'static str)> {
        let signed: Vec<bool> = (0..self.layers.len()).map(|j| self.is_signed(j)).collect();
        for (i, l) in self.layers.iter().enumerate() {
            for (k, &s) in l.inputs.iter().enumerate() {
                let Src::Layer(j) = s else { continue };
                if !signed.get(j).copied().unwrap_or(false) {
                    continue;
                }
                let why = match l.op {
                    Op::Conv { pad, .. } if pad > 0 => "and pads with zeros, which are not its zero point",
                    Op::Conv { .. } => continue,
                    Op::Add { .. } if k == 0 => "as an add's first operand, which must be the conv fused with it",
                    Op::Add { .. } if self.src_shape(l.inputs[0]).c != self.src_shape(s).c => {
                        "with a channel count unlike the add's other operand's"
                    }
                    Op::Add { .. } => continue,
                    _ => "which only convs without padding and residual adds can read",
                };
                return Some((i, j, why));
            }
        }
        None
    }

    pub fn macs(&self) -> u64 {
        self.layers.iter().map(Layer::macs).sum()
    }
    pub fn params(&self) -> u64 {
        self.layers.iter().map(Layer::params).sum()
    }
    /// Layers that carry weights, in order.
    pub fn weighted_layers(&self) -> impl Iterator<Item = (usize, &Layer)> {
        self.layers.iter().enumerate().filter(|(_, l)| l.has_weights())
    }
    /// Shape of a source tensor.
    pub fn src_shape(&self, s: Src) -> Shape {
        match s {
            Src::Input => self.input,
            Src::Layer(i) => self.layers[i].out_shape,
        }
    }
    /// Bits of a source tensor.
    pub fn src_bits(&self, s: Src) -> u8 {
        match s {
            Src::Input => 8,
            Src::Layer(i) => self.layers[i].out_bits,
        }
    }
}

/// Invalid arguments to a network builder.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GraphError {
    #[error("unknown model `{0}` (known: {1})")]
    UnknownModel(String, &'static str),
    #[error("width multiplier {0} is not supported (use 0.1 to 4, at most two decimals)")]
    WidthMult(String),
    #[error("{0} has no width multiplier (only MobileNets do)")]
    NoWidthMult(String),
    #[error("{model} has {expected} width slots, got {got} widths")]
    WidthCount { model: String, expected: usize, got: usize },
    #[error("width {value} for slot {slot} ({layer}) must be at least 1")]
    ZeroWidth { slot: usize, layer: String, value: usize },
    #[error("input {input} is too small for {model}: the spatial size reaches 0 at {layer}")]
    InputTooSmall { model: String, input: Shape, layer: String },
    #[error("bit width {bits} for {what} is not supported (use 2..=8)")]
    Bits { what: String, bits: u8 },
    #[error("bit override names layer `{0}`, which the network does not have")]
    UnknownLayer(String),
    #[error("{model}: layer `{layer}`: {msg}")]
    Structure { model: String, layer: String, msg: String },
    #[error("{what} is {value}, above the supported maximum {max}")]
    OutOfRange { what: String, value: u128, max: u128 },
}

/// Most channels (per layer, input and classes) a network may have.
pub const MAX_CHANNELS: u128 = 1 << 16;
/// Largest input height or width.
pub const MAX_SPATIAL: u128 = 1 << 14;
/// Most MACs or weights of one layer (2^53: exact in the `f64` costs).
pub const MAX_LAYER_COUNT: u128 = 1 << 53;

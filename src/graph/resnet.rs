//! ResNet layer graphs: CIFAR-style ResNet-20/32/56 (He et al. 2016, option-A shortcuts) and
//! ImageNet ResNet-18/50 (torchvision layout, stride on the 3×3 conv; inputs under 64 pixels a
//! side get a CIFAR stem), for any width vector.

use super::{BitConfig, GraphError, Layer, Network, Op, Shape, Src};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The model families nce can build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Resnet20,
    Resnet32,
    Resnet56,
    Resnet18,
    Resnet50,
}

impl ModelKind {
    pub const ALL: [ModelKind; 5] =
        [ModelKind::Resnet20, ModelKind::Resnet32, ModelKind::Resnet56, ModelKind::Resnet18, ModelKind::Resnet50];

    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Resnet20 => "resnet20",
            ModelKind::Resnet32 => "resnet32",
            ModelKind::Resnet56 => "resnet56",
            ModelKind::Resnet18 => "resnet18",
            ModelKind::Resnet50 => "resnet50",
        }
    }

    /// The input the model is usually trained on.
    pub fn default_input(self) -> Shape {
        match self {
            ModelKind::Resnet18 | ModelKind::Resnet50 => Shape::new(3, 224, 224),
            _ => Shape::new(3, 32, 32),
        }
    }

    pub fn default_classes(self) -> usize {
        match self {
            ModelKind::Resnet18 | ModelKind::Resnet50 => 1000,
            _ => 10,
        }
    }

    /// The original (base) width vector.
    pub fn base_widths(self) -> Vec<usize> {
        let mut b = Builder::new(self.name(), Shape::new(3, 224, 224), None);
        b.dry = true;
        construct(self, &mut b);
        b.base
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ModelKind {
    type Err = GraphError;
    fn from_str(s: &str) -> Result<Self, GraphError> {
        ModelKind::ALL.into_iter().find(|m| m.name().eq_ignore_ascii_case(s)).ok_or_else(|| GraphError::UnknownModel(s.to_string()))
    }
}

/// Builds `model` for `input` and `classes`, with `widths` (one per width slot; `None` = base)
/// and the given bit configuration.
pub fn build(model: ModelKind, input: Shape, classes: usize, widths: Option<&[usize]>, bits: &BitConfig) -> Result<Network, GraphError> {
    let base = model.base_widths();
    if let Some(w) = widths {
        if w.len() != base.len() {
            return Err(GraphError::WidthCount { model: model.name().into(), expected: base.len(), got: w.len() });
        }
    }
    check_sizes(input, classes, widths)?;
    let mut b = Builder::new(model.name(), input, widths);
    construct(model, &mut b);
    if let Some(e) = b.error.take() {
        return Err(e);
    }
    b.linear(classes);
    let mut net = Network { model: model.name().into(), input, classes, layers: b.layers, widths: b.widths };
    for l in &net.layers {
        let (macs, weights) = l.macs_and_weights_u128();
        out_of_range(&format!("MACs of layer {}", l.name), macs, super::MAX_LAYER_COUNT)?;
        out_of_range(&format!("weights of layer {}", l.name), weights, super::MAX_LAYER_COUNT)?;
    }
    bits.apply(&mut net)?;
    Ok(net)
}

fn out_of_range(what: &str, value: u128, max: u128) -> Result<(), GraphError> {
    if value > max {
        return Err(GraphError::OutOfRange { what: what.into(), value, max });
    }
    Ok(())
}

/// Sizes a network description accepts: beyond these, counts stop being exact in the `f64`
/// costs plugins compute (2^53), and `u64` arithmetic could wrap (a width of 2^63 once reported
/// 0 MACs and passed every budget).
fn check_sizes(input: Shape, classes: usize, widths: Option<&[usize]>) -> Result<(), GraphError> {
    out_of_range("input channels", input.c as u128, super::MAX_CHANNELS)?;
    out_of_range("input height", input.h as u128, super::MAX_SPATIAL)?;
    out_of_range("input width", input.w as u128, super::MAX_SPATIAL)?;
    out_of_range("classes", classes as u128, super::MAX_CHANNELS)?;
    for (i, &w) in widths.unwrap_or(&[]).iter().enumerate() {
        out_of_range(&format!("width of slot {i}"), w as u128, super::MAX_CHANNELS)?;
    }
    Ok(())
}

fn construct(model: ModelKind, b: &mut Builder) {
    match model {
        ModelKind::Resnet20 => cifar(b, 3),
        ModelKind::Resnet32 => cifar(b, 5),
        ModelKind::Resnet56 => cifar(b, 9),
        ModelKind::Resnet18 => imagenet(b, &[2, 2, 2, 2], false),
        ModelKind::Resnet50 => imagenet(b, &[3, 4, 6, 3], true),
    }
}

fn cifar(b: &mut Builder, n: usize) {
    let mut x = b.conv("conv1", Src::Input, 16, 3, 1, true);
    for (s, &w) in [16usize, 32, 64].iter().enumerate() {
        for i in 0..n {
            let stride = if s > 0 && i == 0 { 2 } else { 1 };
            let p = format!("layer{}.{}", s + 1, i);
            let a = b.conv(&format!("{p}.conv_a"), x, w, 3, stride, true);
            let c = b.conv(&format!("{p}.conv_b"), a, w, 3, 1, false);
            let sc = if stride == 1 { x } else { b.subsample(&format!("{p}.shortcut"), x, stride) };
            x = b.add(&format!("{p}.add"), c, sc);
        }
    }
    b.gap(x);
}

/// Inputs smaller than this on a side get the CIFAR stem in ResNet-18/50.
pub const SMALL_INPUT: usize = 64;

fn imagenet(b: &mut Builder, blocks: &[usize], bottleneck: bool) {
    // The ImageNet stem (7×7 stride 2, max-pool: 4× smaller) would leave a 28×28 or 32×32
    // image at 1×1 by the last stage; small inputs get a 3×3 stride-1 conv and no pool, as
    // ResNet-18 is usually run on CIFAR.
    let mut x = if b.input.h.min(b.input.w) < SMALL_INPUT {
        b.conv_k("conv1", Src::Input, 64, 3, 1, 1, true)
    } else {
        let c1 = b.conv_k("conv1", Src::Input, 64, 7, 2, 3, true);
        b.push("maxpool", Op::MaxPool { k: 3, stride: 2, pad: 1 }, vec![c1], None, None)
    };
    let mut in_base = 64;
    for (s, &n) in blocks.iter().enumerate() {
        let w = 64 << s;
        let out_base = if bottleneck { w * 4 } else { w };
        for i in 0..n {
            let stride = if s > 0 && i == 0 { 2 } else { 1 };
            let p = format!("layer{}.{}", s + 1, i);
            let last = if bottleneck {
                let a = b.conv(&format!("{p}.conv_a"), x, w, 1, 1, true);
                let c = b.conv(&format!("{p}.conv_b"), a, w, 3, stride, true);
                b.conv(&format!("{p}.conv_c"), c, out_base, 1, 1, false)
            } else {
                let a = b.conv(&format!("{p}.conv_a"), x, w, 3, stride, true);
                b.conv(&format!("{p}.conv_b"), a, w, 3, 1, false)
            };
            let sc =
                if stride != 1 || in_base != out_base { b.conv_k(&format!("{p}.downsample"), x, out_base, 1, stride, 0, false) } else { x };
            x = b.add(&format!("{p}.add"), last, sc);
            in_base = out_base;
        }
    }
    b.gap(x);
}

struct Builder<'a> {
    model: &'a str,
    input: Shape,
    given: Option<&'a [usize]>,
    layers: Vec<Layer>,
    widths: Vec<usize>,
    base: Vec<usize>,
    dry: bool,
    error: Option<GraphError>,
}

impl<'a> Builder<'a> {
    fn new(model: &'a str, input: Shape, given: Option<&'a [usize]>) -> Self {
        Builder { model, input, given, layers: vec![], widths: vec![], base: vec![], dry: false, error: None }
    }

    fn shape(&self, s: Src) -> Shape {
        match s {
            Src::Input => self.input,
            Src::Layer(i) => self.layers[i].out_shape,
        }
    }

    fn conv(&mut self, name: &str, x: Src, base_out: usize, k: usize, stride: usize, relu: bool) -> Src {
        self.conv_k(name, x, base_out, k, stride, k / 2, relu)
    }

    #[allow(clippy::too_many_arguments)]
    fn conv_k(&mut self, name: &str, x: Src, base_out: usize, k: usize, stride: usize, pad: usize, relu: bool) -> Src {
        let slot = self.base.len();
        self.base.push(base_out);
        let out = self.given.map_or(base_out, |g| g[slot]);
        if out == 0 && self.error.is_none() {
            self.error = Some(GraphError::ZeroWidth { slot, layer: name.into(), value: out });
        }
        self.widths.push(out);
        self.push(name, Op::Conv { k, stride, pad, groups: 1, relu }, vec![x], Some(out), Some(slot))
    }

    fn subsample(&mut self, name: &str, x: Src, stride: usize) -> Src {
        self.push(name, Op::Subsample { stride }, vec![x], None, None)
    }

    fn add(&mut self, name: &str, a: Src, b: Src) -> Src {
        self.push(name, Op::Add { relu: true }, vec![a, b], None, None)
    }

    fn gap(&mut self, x: Src) -> Src {
        self.push("avgpool", Op::GlobalAvgPool, vec![x], None, None)
    }

    fn linear(&mut self, classes: usize) {
        let x = Src::Layer(self.layers.len() - 1);
        self.push("fc", Op::Linear, vec![x], Some(classes), None);
    }

    fn push(&mut self, name: &str, op: Op, inputs: Vec<Src>, out_c: Option<usize>, slot: Option<usize>) -> Src {
        let in_shape = self.shape(inputs[0]);
        let out_shape = if self.dry {
            in_shape
        } else {
            let (h, w) = match op {
                Op::Conv { k, stride, pad, .. } | Op::MaxPool { k, stride, pad } => {
                    let f = |d: usize| (d + 2 * pad).checked_sub(k).map(|v| v / stride + 1).unwrap_or(0);
                    (f(in_shape.h), f(in_shape.w))
                }
                Op::Subsample { stride } => (in_shape.h.div_ceil(stride), in_shape.w.div_ceil(stride)),
                Op::GlobalAvgPool | Op::Linear => (1, 1),
                Op::Add { .. } => (in_shape.h, in_shape.w),
            };
            let c = match op {
                Op::Add { .. } => inputs.iter().map(|&s| self.shape(s).c).max().unwrap_or(0),
                _ => out_c.unwrap_or(in_shape.c),
            };
            Shape::new(c, h, w)
        };
        if (out_shape.h == 0 || out_shape.w == 0) && self.error.is_none() {
            self.error = Some(GraphError::InputTooSmall { model: self.model.into(), input: self.input, layer: name.into() });
        }
        self.layers.push(Layer { name: name.into(), op, inputs, in_shape, out_shape, wbits: 0, abits: 0, out_bits: 0, width_slot: slot });
        Src::Layer(self.layers.len() - 1)
    }
}

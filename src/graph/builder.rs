//! The one network builder every model family's file drives: width slots, shapes, bounds.

use super::{imported, mobilenet, resnet, BitConfig, GraphError, Layer, ModelKind, Network, Op, Shape, Src};

/// The base width vector of `model` (a dry build: no shapes).
pub(super) fn base_widths(model: ModelKind) -> Vec<usize> {
    let name = model.name();
    let mut b = Builder::new(&name, Shape::new(3, 224, 224), None);
    b.dry = true;
    construct(model, &mut b);
    b.base
}

/// Builds `model` for `input` and `classes`, with `widths` (one per width slot; `None` = base)
/// and the given bit configuration.
pub fn build(model: ModelKind, input: Shape, classes: usize, widths: Option<&[usize]>, bits: &BitConfig) -> Result<Network, GraphError> {
    let base = model.base_widths();
    if let Some(w) = widths {
        if w.len() != base.len() {
            return Err(GraphError::WidthCount { model: model.name(), expected: base.len(), got: w.len() });
        }
    }
    check_sizes(input, classes, widths)?;
    let name = model.name();
    let mut b = Builder::new(&name, input, widths);
    construct(model, &mut b);
    b.linear(&model.classifier_name(), classes);
    if let Some(e) = b.error.take() {
        return Err(e);
    }
    let mut net = Network { model: name.clone(), input, classes, layers: b.layers, widths: b.widths };
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
        ModelKind::Resnet20 => resnet::cifar(b, 3),
        ModelKind::Resnet32 => resnet::cifar(b, 5),
        ModelKind::Resnet56 => resnet::cifar(b, 9),
        ModelKind::Resnet18 => resnet::imagenet(b, &[2, 2, 2, 2], false),
        ModelKind::Resnet50 => resnet::imagenet(b, &[3, 4, 6, 3], true),
        ModelKind::Mobilenetv2(mult) => mobilenet::v2(b, mult),
        ModelKind::Imported(g) => imported::replay(b, g.graph()),
    }
}

/// `op` with `groups` groups if it is a conv.
fn with_groups(op: Op, groups: usize) -> Op {
    match op {
        Op::Conv { k, stride, pad, relu, relu6, .. } => Op::Conv { k, stride, pad, groups, relu, relu6 },
        other => other,
    }
}

pub(super) struct Builder<'a> {
    model: &'a str,
    pub(super) input: Shape,
    given: Option<&'a [usize]>,
    layers: Vec<Layer>,
    widths: Vec<usize>,
    base: Vec<usize>,
    dry: bool,
    error: Option<GraphError>,
}

impl<'a> Builder<'a> {
    pub(super) fn new(model: &'a str, input: Shape, given: Option<&'a [usize]>) -> Self {
        Builder { model, input, given, layers: vec![], widths: vec![], base: vec![], dry: false, error: None }
    }

    fn shape(&self, s: Src) -> Shape {
        match s {
            Src::Input => self.input,
            Src::Layer(i) => self.layers[i].out_shape,
        }
    }

    /// A k×k conv (padding k/2) in a new width slot of base width `base_out`.
    pub(super) fn conv(&mut self, name: &str, x: Src, base_out: usize, k: usize, stride: usize, relu: bool) -> Src {
        self.conv_k(name, x, base_out, k, stride, k / 2, relu)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv_k(&mut self, name: &str, x: Src, base_out: usize, k: usize, stride: usize, pad: usize, relu: bool) -> Src {
        let slot = self.slot(name, base_out);
        self.conv_in_slot(name, x, slot, k, stride, pad, relu)
    }

    /// A new width slot of base width `base`, first used by layer `name`.
    pub(super) fn slot(&mut self, name: &str, base: usize) -> usize {
        let slot = self.base.len();
        self.base.push(base);
        let out = self.given.map_or(base, |g| g[slot]);
        if out == 0 && self.error.is_none() {
            self.error = Some(GraphError::ZeroWidth { slot, layer: name.into(), value: out });
        }
        self.widths.push(out);
        slot
    }

    /// A dense conv whose output width is slot `slot` (shared by every layer that names it).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv_in_slot(&mut self, name: &str, x: Src, slot: usize, k: usize, stride: usize, pad: usize, relu: bool) -> Src {
        let out = self.widths[slot];
        self.push(name, Op::Conv { k, stride, pad, groups: 1, relu, relu6: false }, vec![x], Some(out), Some(slot))
    }

    /// A dense conv `op` (an `Op::Conv`) whose output width is slot `slot`.
    pub(super) fn conv_op_in_slot(&mut self, name: &str, x: Src, op: Op, slot: usize) -> Src {
        let out = self.widths[slot];
        self.push(name, with_groups(op, 1), vec![x], Some(out), Some(slot))
    }

    /// A depthwise conv `op` (an `Op::Conv`): its groups and width follow its input.
    pub(super) fn depthwise_op(&mut self, name: &str, x: Src, op: Op) -> Src {
        let c = self.shape(x).c;
        self.push(name, with_groups(op, c), vec![x], Some(c), None)
    }

    /// Records a structural error of an imported graph at layer `name` (the first error wins).
    pub(super) fn fail_structure(&mut self, name: &str, msg: &str) {
        if self.error.is_none() {
            self.error = Some(GraphError::Structure { model: self.model.into(), layer: name.into(), msg: msg.into() });
        }
    }

    /// A depthwise k×k conv (padding k/2): one filter per input channel, so its width is its
    /// input's and it has no slot of its own.
    pub(super) fn depthwise(&mut self, name: &str, x: Src, k: usize, stride: usize) -> Src {
        let c = self.shape(x).c;
        self.push(name, Op::Conv { k, stride, pad: k / 2, groups: c, relu: true, relu6: false }, vec![x], Some(c), None)
    }

    pub(super) fn subsample(&mut self, name: &str, x: Src, stride: usize) -> Src {
        self.push(name, Op::Subsample { stride }, vec![x], None, None)
    }

    pub(super) fn add(&mut self, name: &str, a: Src, b: Src) -> Src {
        self.push(name, Op::Add { relu: true }, vec![a, b], None, None)
    }

    pub(super) fn gap(&mut self, x: Src) -> Src {
        self.push("avgpool", Op::GlobalAvgPool, vec![x], None, None)
    }

    fn linear(&mut self, name: &str, classes: usize) {
        let Some(last) = self.layers.len().checked_sub(1) else { return self.fail_structure(name, "no layer before the classifier") };
        self.push(name, Op::Linear, vec![Src::Layer(last)], Some(classes), None);
    }

    pub(super) fn push(&mut self, name: &str, op: Op, inputs: Vec<Src>, out_c: Option<usize>, slot: Option<usize>) -> Src {
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

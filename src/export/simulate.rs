//! The tch *integer simulation* of a quantized checkpoint: the integer form of
//! `docs/quantization.md` computed with libtorch ops (f64 convolutions of integer codes, which
//! are exact, then int64 requantisation) from the same [`IntLayer`]s the exporter writes. The
//! engines must reproduce it bit for bit; it shares no code with their kernels or packing.

use super::convert::IntLayer;
use super::ExportError;
use crate::graph::{Network, Op, Src};
use tch::{Kind, Tensor};

/// Every layer's integer output for a batch of images (`[N, C, H, W]` u8 pixels as any kind):
/// code tensors `[N, C, H, W]` (int64) for convs and fused adds, per-channel sums `[N, C]` for
/// global pooling, logits `[N, classes]` for the classifier. Layers folded into others (the
/// conv feeding an add, shortcuts) are `None`.
pub fn simulate(net: &Network, layers: &[IntLayer], images: &Tensor) -> Result<Vec<Option<Tensor>>, ExportError> {
    let mut sim = Sim { net, layers, x0: images.to_kind(Kind::Int64), outs: (0..net.layers.len()).map(|_| None).collect() };
    for (i, l) in net.layers.iter().enumerate() {
        match l.op {
            Op::Conv { stride, pad, groups, relu, .. } => sim.conv(i, [stride, pad, groups].map(|v| v as i64), relu)?,
            Op::MaxPool { k, stride, pad } => {
                let x = sim.get(l.inputs[0])?.to_kind(Kind::Double);
                sim.outs[i] = Some(x.max_pool2d([k as i64], [stride as i64], [pad as i64], [1], false).to_kind(Kind::Int64));
            }
            Op::GlobalAvgPool => {
                let x = sim.get(l.inputs[0])?;
                sim.outs[i] = Some(x.sum_dim_intlist([2i64, 3].as_slice(), false, Kind::Int64));
            }
            Op::Linear => {
                let il = sim.params(i)?;
                let x = sim.get(l.inputs[0])?.flatten(1, -1).to_kind(Kind::Double);
                let acc = x.matmul(&il.codes.to_kind(Kind::Double).transpose(0, 1)).round().to_kind(Kind::Int64);
                sim.outs[i] = Some(acc + Tensor::from_slice(&il.b).to_kind(Kind::Int64).view([1, -1]));
            }
            Op::Add { .. } | Op::Subsample { .. } => {}
        }
    }
    Ok(sim.outs)
}

/// The simulation's state: every layer's output computed so far.
struct Sim<'a> {
    net: &'a Network,
    layers: &'a [IntLayer],
    x0: Tensor,
    outs: Vec<Option<Tensor>>,
}

impl Sim<'_> {
    fn get(&self, s: Src) -> Result<Tensor, ExportError> {
        match s {
            Src::Input => Ok(self.x0.shallow_clone()),
            Src::Layer(j) => self.outs[j]
                .as_ref()
                .map(|t| t.shallow_clone())
                .ok_or_else(|| ExportError::ReadBeforeComputed { layer: self.net.layers[j].name.clone() }),
        }
    }

    fn params(&self, i: usize) -> Result<&IntLayer, ExportError> {
        let layers = self.layers;
        layers.iter().find(|l| l.index == i).ok_or_else(|| ExportError::NoIntegerParameters { layer: self.net.layers[i].name.clone() })
    }

    /// A conv's exact accumulator times its multiplier plus bias; with a ReLU it is requantised
    /// as its own output, without one it is the residual branch of the add that follows it.
    /// `geometry` is `[stride, pad, groups]`.
    fn conv(&mut self, i: usize, geometry: [i64; 3], relu: bool) -> Result<(), ExportError> {
        let [stride, pad, groups] = geometry;
        let (l, il) = (&self.net.layers[i], self.params(i)?);
        let acc = self
            .get(l.inputs[0])?
            .to_kind(Kind::Double)
            .conv2d(&il.codes.to_kind(Kind::Double), None::<Tensor>, [stride], [pad], [1], groups)
            .round()
            .to_kind(Kind::Int64);
        let m = Tensor::from_slice(&il.m).to_kind(Kind::Int64).view([1, -1, 1, 1]);
        let b = Tensor::from_slice(&il.b).to_kind(Kind::Int64).view([1, -1, 1, 1]);
        let y = acc * m + b;
        // Signed codes (a projection shortcut, a linear bottleneck) are requantised as the conv's
        // own output (8-bit codes with a zero point, which `b` holds).
        let own = relu || self.net.is_signed(i);
        let (target, y, bits) = if own { (i, y, l.out_bits) } else { self.add_shortcut(i, il, y)? };
        self.outs[target] = Some(requantize(y, il.shift, bits));
        Ok(())
    }

    /// `y + r * shortcut` for the add fed by conv `i` (subsampled shortcuts read every s-th
    /// pixel; the narrower side is zero-padded in channels), with the add's index and bits.
    fn add_shortcut(&self, i: usize, il: &IntLayer, y: Tensor) -> Result<(usize, Tensor, u8), ExportError> {
        let (net, name) = (self.net, &self.net.layers[i].name);
        let a = (i + 1..net.layers.len())
            .find(|&j| net.layers[j].inputs.first() == Some(&Src::Layer(i)))
            .ok_or_else(|| ExportError::NoResidualAdd { layer: name.clone() })?;
        let add = &net.layers[a];
        let (src, s) = match add.inputs[1] {
            Src::Layer(j) => match net.layers[j].op {
                Op::Subsample { stride } => (net.layers[j].inputs[0], stride as i64),
                _ => (Src::Layer(j), 1),
            },
            Src::Input => (Src::Input, 1),
        };
        let sc = self.get(src)?.slice(2, 0, None, s).slice(3, 0, None, s);
        let c = y.size()[1].max(sc.size()[1]);
        let pad_c = |t: Tensor| {
            let have = t.size()[1];
            if have < c {
                t.constant_pad_nd([0, 0, 0, 0, 0, c - have])
            } else {
                t
            }
        };
        let r = il.r.ok_or_else(|| ExportError::NoResidualMultiplier { layer: name.clone() })?;
        Ok((a, pad_c(y) + pad_c(sc) * i64::from(r), add.out_bits))
    }
}

/// Rounding arithmetic shift right by `shift`, then clamp to `bits`-bit codes.
fn requantize(y: Tensor, shift: u32, bits: u8) -> Tensor {
    // floor_divide rounds toward −∞ (torch ≥ 1.13), i.e. an arithmetic shift.
    let y = if shift > 0 { (y + (1i64 << (shift - 1))).floor_divide_scalar(1i64 << shift) } else { y };
    y.clamp(0, (1i64 << bits) - 1)
}

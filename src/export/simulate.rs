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
    let n = net.layers.len();
    let mut outs: Vec<Option<Tensor>> = (0..n).map(|_| None).collect();
    let x0 = images.to_kind(Kind::Int64);
    let by_index = |i: usize| layers.iter().find(|l| l.index == i);
    let get = |outs: &Vec<Option<Tensor>>, s: Src| -> Result<Tensor, ExportError> {
        match s {
            Src::Input => Ok(x0.shallow_clone()),
            Src::Layer(j) => outs[j]
                .as_ref()
                .map(|t| t.shallow_clone())
                .ok_or_else(|| ExportError::ReadBeforeComputed { layer: net.layers[j].name.clone() }),
        }
    };
    let no_params = |name: &str| ExportError::NoIntegerParameters { layer: name.to_string() };
    for (i, l) in net.layers.iter().enumerate() {
        match l.op {
            Op::Conv { stride, pad, relu, .. } => {
                let il = by_index(i).ok_or_else(|| no_params(&l.name))?;
                let x = get(&outs, l.inputs[0])?;
                let acc = x
                    .to_kind(Kind::Double)
                    .conv2d(&il.codes.to_kind(Kind::Double), None::<Tensor>, [stride as i64], [pad as i64], [1], 1)
                    .round()
                    .to_kind(Kind::Int64);
                let m = Tensor::from_slice(&il.m).to_kind(Kind::Int64).view([1, -1, 1, 1]);
                let b = Tensor::from_slice(&il.b).to_kind(Kind::Int64).view([1, -1, 1, 1]);
                let mut y = acc * m + b;
                let (target, qbits) = if relu {
                    (i, l.out_bits)
                } else {
                    let a = (i + 1..n)
                        .find(|&j| net.layers[j].inputs.first() == Some(&Src::Layer(i)))
                        .ok_or_else(|| ExportError::NoResidualAdd { layer: l.name.clone() })?;
                    let add = &net.layers[a];
                    let (src, s) = match add.inputs[1] {
                        Src::Layer(j) => match net.layers[j].op {
                            Op::Subsample { stride } => (net.layers[j].inputs[0], stride as i64),
                            _ => (Src::Layer(j), 1),
                        },
                        Src::Input => (Src::Input, 1),
                    };
                    let sc = get(&outs, src)?.slice(2, 0, None, s).slice(3, 0, None, s);
                    let c = y.size()[1].max(sc.size()[1]);
                    let pad_c = |t: Tensor| {
                        let have = t.size()[1];
                        if have < c {
                            t.constant_pad_nd([0, 0, 0, 0, 0, c - have])
                        } else {
                            t
                        }
                    };
                    let r = il.r.ok_or_else(|| ExportError::NoResidualMultiplier { layer: l.name.clone() })?;
                    y = pad_c(y) + pad_c(sc) * i64::from(r);
                    (a, add.out_bits)
                };
                if il.shift > 0 {
                    // floor_divide rounds toward −∞ (torch ≥ 1.13), i.e. an arithmetic shift.
                    y = (y + (1i64 << (il.shift - 1))).floor_divide_scalar(1i64 << il.shift);
                }
                let qmax = (1i64 << qbits) - 1;
                outs[target] = Some(y.clamp(0, qmax));
            }
            Op::MaxPool { k, stride, pad } => {
                let x = get(&outs, l.inputs[0])?.to_kind(Kind::Double);
                outs[i] = Some(x.max_pool2d([k as i64], [stride as i64], [pad as i64], [1], false).to_kind(Kind::Int64));
            }
            Op::GlobalAvgPool => {
                let x = get(&outs, l.inputs[0])?;
                outs[i] = Some(x.sum_dim_intlist([2i64, 3].as_slice(), false, Kind::Int64));
            }
            Op::Linear => {
                let il = by_index(i).ok_or_else(|| no_params(&l.name))?;
                let x = get(&outs, l.inputs[0])?.flatten(1, -1).to_kind(Kind::Double);
                let acc = x.matmul(&il.codes.to_kind(Kind::Double).transpose(0, 1)).round().to_kind(Kind::Int64);
                let b = Tensor::from_slice(&il.b).to_kind(Kind::Int64).view([1, -1]);
                outs[i] = Some(acc + b);
            }
            Op::Add { .. } | Op::Subsample { .. } => {}
        }
    }
    Ok(outs)
}

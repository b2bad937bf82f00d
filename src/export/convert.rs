//! Checkpoint → integer model (`docs/quantization.md`, "Integer form"): folds BatchNorm and
//! the activation/weight scales into per-channel fixed-point multipliers and offsets.

use super::format::{Array, Container, Entry};
use super::ExportError;
use crate::engine::plan::{Header, LayerScales};
use crate::engine::PackedW2;
use crate::graph::{Network, Op, Src};
use crate::models::LayerExport;
use crate::quant::SHORTCUT_ZERO;
use crate::train::LoadedModel;
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// One layer's integer parameters, shared by the file writer and the tch simulation.
#[derive(Debug)]
pub struct IntLayer {
    pub index: usize,
    /// Weight codes in torch layout (`[out, in, k, k]` or `[out, in]`), int64.
    pub codes: Tensor,
    pub wbits: u8,
    /// Per output channel multipliers and offsets (convs) or biases (classifier).
    pub m: Vec<i32>,
    pub b: Vec<i32>,
    pub shift: u32,
    /// Residual multiplier for a conv fused with the add that follows it.
    pub r: Option<i32>,
    pub scales: LayerScales,
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).unwrap_or_default()
}

/// Round half away from zero.
fn round(x: f64) -> i64 {
    x.round() as i64
}

/// The largest shift in `0..=30` that keeps every `|v|·2^shift` inside int32; `Err` carries the
/// largest magnitude (possibly not finite) when no shift does.
pub fn pick_shift(values: &[f64]) -> Result<u32, f64> {
    let max = values.iter().fold(0f64, |m, v| if m.is_nan() || v.is_nan() { f64::NAN } else { m.max(v.abs()) });
    let limit = (i32::MAX - 1) as f64;
    (0..=30u32).rev().find(|&s| max * f64::from(1u32 << s) <= limit).ok_or(max)
}

/// Scale of every layer's output tensor (`None` where it is not a code tensor).
fn tensor_scales(net: &Network, ex: &[LayerExport]) -> Vec<Option<f64>> {
    let mut s: Vec<Option<f64>> = Vec::with_capacity(net.layers.len());
    for (i, l) in net.layers.iter().enumerate() {
        let input = match l.inputs[0] {
            Src::Input => Some(1.0 / 255.0),
            Src::Layer(j) => s[j],
        };
        let v = match l.op {
            Op::Conv { relu: true, .. } | Op::Add { relu: true } => ex[i].act.map(|a| a.scale),
            Op::Conv { .. } | Op::Add { .. } if net.is_signed(i) => ex[i].act.map(|a| a.scale),
            Op::Subsample { .. } | Op::MaxPool { .. } => input,
            Op::GlobalAvgPool => input.map(|x| x / (l.in_shape.h * l.in_shape.w) as f64),
            _ => None,
        };
        s.push(v);
    }
    s
}

fn scale_of(scales: &[Option<f64>], s: Src) -> Option<f64> {
    match s {
        Src::Input => Some(1.0 / 255.0),
        Src::Layer(j) => scales[j],
    }
}

/// Integer parameters of every conv and the classifier of a quantized checkpoint.
pub fn int_layers(model: &LoadedModel) -> Result<Vec<IntLayer>, ExportError> {
    let net = &model.meta.net;
    if let Some((i, j, why)) = net.unfoldable_signed_read() {
        return Err(ExportError::SignedInput { layer: net.layers[i].name.clone(), source_layer: net.layers[j].name.clone(), why });
    }
    let ex = model.model.export();
    let scales = tensor_scales(net, &ex);
    let mut out = Vec::new();
    for (i, l) in net.layers.iter().enumerate() {
        match l.op {
            Op::Conv { relu, .. } => out.push(conv_layer(net, &ex, &scales, i, relu)?),
            Op::Linear => out.push(linear_layer(net, &ex[i], &scales, i)?),
            _ => {}
        }
    }
    Ok(out)
}

/// A conv with its BatchNorm folded into per-channel multipliers and biases at one shift; a conv
/// without ReLU requantises at its residual add, whose shortcut gets the multiplier `r`. Signed
/// outputs ([`Network::is_signed`]: a projection shortcut or a linear bottleneck as its own
/// output, an add without ReLU as the fused conv's) are 8-bit codes stored with the zero point
/// [`SHORTCUT_ZERO`] (`b` holds `+z`); a conv fused with an add whose shortcut is signed takes
/// `z·r` off its `b`, and one reading signed codes folds `z·Σw` into it (`docs/quantization.md`).
fn conv_layer(net: &Network, ex: &[LayerExport], scales: &[Option<f64>], i: usize, relu: bool) -> Result<IntLayer, ExportError> {
    let (l, e) = (&net.layers[i], &ex[i]);
    let relu = relu || net.is_signed(i);
    let wi = e.weight_int.as_ref().ok_or_else(|| ExportError::FullPrecision { layer: l.name.clone() })?;
    let bn = e.bn.as_ref().ok_or_else(|| ExportError::NoBatchNorm { layer: l.name.clone() })?;
    let s_x = scale_of(scales, l.inputs[0]).ok_or_else(|| not_quantized(&l.name, "input"))?;
    let zero = |signed: bool| if signed { SHORTCUT_ZERO } else { 0 };
    let (s_out, s_sc, out_zero, sc_zero) = if relu {
        (e.act.ok_or_else(|| not_quantized(&l.name, "output"))?.scale, None, zero(net.is_signed(i)), 0)
    } else {
        let add = (i + 1..net.layers.len())
            .find(|&j| net.layers[j].inputs.first() == Some(&Src::Layer(i)) && matches!(net.layers[j].op, Op::Add { .. }))
            .ok_or_else(|| ExportError::NoResidualAdd { layer: l.name.clone() })?;
        let add_name = &net.layers[add].name;
        let s_out = ex[add].act.ok_or_else(|| not_quantized(add_name, "output"))?.scale;
        let sc = net.layers[add].inputs[1];
        let s_sc = scale_of(scales, sc).ok_or_else(|| not_quantized(add_name, "shortcut"))?;
        (s_out, Some(s_sc), zero(net.is_signed(add)), zero(net.src_signed(sc)))
    };
    let (gamma, beta, mut mean, var) = (to_f64(&bn.gamma), to_f64(&bn.beta), to_f64(&bn.running_mean), to_f64(&bn.running_var));
    // A conv reading a normalised image subtracts `Σ w_q·μ` before its BatchNorm: the same as
    // a BatchNorm mean larger by it. One reading signed codes `q` (value `(q − z)·s_x`) likewise
    // subtracts `z·s_x·Σ w_q` from its accumulator of `q` (unpadded: `Network::unfoldable_signed_read`).
    if let Some(k) = &e.input_offset {
        mean.iter_mut().zip(to_f64(k)).for_each(|(m, k)| *m += k);
    }
    if net.src_signed(l.inputs[0]) {
        let sums = to_f64(&wi.codes.to_kind(Kind::Double).flatten(1, -1).sum_dim_intlist(1i64, false, Kind::Double));
        mean.iter_mut().zip(sums).for_each(|(m, w)| *m += SHORTCUT_ZERO as f64 * s_x * wi.scale * w);
    }
    let mut mm = Vec::with_capacity(gamma.len());
    let mut bb = Vec::with_capacity(gamma.len());
    for c in 0..gamma.len() {
        let inv = gamma[c] / (var[c] + bn.eps).sqrt();
        mm.push(wi.scale * s_x * inv / s_out);
        bb.push((beta[c] - inv * mean[c]) / s_out + out_zero as f64);
    }
    let r_real = s_sc.map(|s| s / s_out);
    let mut all = mm.clone();
    all.extend(&bb);
    if sc_zero != 0 {
        // With a zero-pointed shortcut, `b − z·r` must fit as well (one more unit for the rounding).
        all.extend(bb.iter().map(|b| b.abs() + (sc_zero as f64 + 1.0) * r_real.unwrap_or(0.0).abs()));
    }
    all.extend(r_real);
    let shift = pick_shift(&all).map_err(|value| ExportError::Requantisation { layer: l.name.clone(), value })?;
    let f = f64::from(1u32 << shift);
    let r = r_real.map(|v| round(v * f) as i32);
    Ok(IntLayer {
        index: i,
        codes: wi.codes.to_kind(Kind::Int64),
        wbits: l.wbits,
        m: mm.iter().map(|v| round(v * f) as i32).collect(),
        b: bb.iter().map(|v| (round(v * f) - sc_zero * i64::from(r.unwrap_or(0))) as i32).collect(),
        shift,
        r,
        scales: LayerScales { weight: Some(wi.scale), input: Some(s_x), output: Some(s_out), weight_bits: l.wbits },
    })
}

/// The classifier: integer logits in units of `weight scale × input scale`, the bias rounded to them.
fn linear_layer(net: &Network, e: &LayerExport, scales: &[Option<f64>], i: usize) -> Result<IntLayer, ExportError> {
    let l = &net.layers[i];
    let wi = e.weight_int.as_ref().ok_or_else(|| ExportError::FullPrecision { layer: l.name.clone() })?;
    let s_x = scale_of(scales, l.inputs[0]).ok_or_else(|| not_quantized(&l.name, "input"))?;
    let bias = e.bias.as_ref().map(to_f64).unwrap_or_else(|| vec![0.0; l.out_shape.c]);
    let unit = wi.scale * s_x;
    let b: Vec<i32> = bias.iter().map(|v| round(v / unit).clamp(i32::MIN as i64, i32::MAX as i64) as i32).collect();
    Ok(IntLayer {
        index: i,
        codes: wi.codes.to_kind(Kind::Int64),
        wbits: l.wbits,
        m: vec![],
        b,
        shift: 0,
        r: None,
        scales: LayerScales { weight: Some(wi.scale), input: Some(s_x), output: Some(unit), weight_bits: l.wbits },
    })
}

fn not_quantized(layer: &str, what: &'static str) -> ExportError {
    ExportError::NotQuantized { layer: layer.to_string(), what }
}

/// Weight codes in the engines' order: per output channel, `(ky, kx, c_in)`.
fn engine_order(codes: &Tensor) -> Vec<i64> {
    let c = if codes.dim() == 4 { codes.permute([0, 2, 3, 1]).contiguous() } else { codes.contiguous() };
    Vec::<i64>::try_from(&c.flatten(0, -1)).unwrap_or_default()
}

/// The `.nce` container of a quantized checkpoint.
pub fn to_container(model: &LoadedModel, layers: &[IntLayer], source: &str, profile: Option<String>) -> Result<Container, ExportError> {
    let net = &model.meta.net;
    let mut arrays = BTreeMap::new();
    let mut scales = BTreeMap::new();
    for il in layers {
        let l = &net.layers[il.index];
        let codes = engine_order(&il.codes);
        let cout = l.out_shape.c;
        let k_len = codes.len() / cout.max(1);
        let w = match il.wbits {
            2 => {
                let c8: Vec<i8> = codes.iter().map(|&v| v as i8).collect();
                let p = PackedW2::pack(cout, k_len, &c8).map_err(|source| ExportError::Pack { layer: l.name.clone(), source })?;
                Entry { dims: vec![cout, p.words_per_channel()], data: Array::U32(p.words) }
            }
            8 => Entry { dims: vec![cout, k_len], data: Array::I8(codes.iter().map(|&v| v as i8).collect()) },
            bits => return Err(ExportError::Bits { layer: l.name.clone(), bits }),
        };
        arrays.insert(format!("{}.w", l.name), w);
        if matches!(l.op, Op::Conv { .. }) {
            arrays.insert(format!("{}.m", l.name), Entry { dims: vec![cout], data: Array::I32(il.m.clone()) });
            arrays.insert(format!("{}.shift", l.name), Entry { dims: vec![1], data: Array::I32(vec![il.shift as i32]) });
            if let Some(r) = il.r {
                arrays.insert(format!("{}.r", l.name), Entry { dims: vec![1], data: Array::I32(vec![r]) });
            }
        }
        arrays.insert(format!("{}.b", l.name), Entry { dims: vec![il.b.len()], data: Array::I32(il.b.clone()) });
        scales.insert(l.name.clone(), il.scales.clone());
    }
    let header = Header { kind: "nce-model".into(), net: net.clone(), profile, source: Some(source.into()), scales };
    let header = serde_json::to_string(&header)?;
    Ok(Container { header, arrays })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_shift_keeps_values_in_int32_or_reports_the_largest() {
        // 1.0 · 2^30 fits; 3.0 · 2^30 does not, 3.0 · 2^29 does.
        assert_eq!(pick_shift(&[0.5, -1.0]), Ok(30));
        assert_eq!(pick_shift(&[3.0, 0.1]), Ok(29));
        assert_eq!(pick_shift(&[4e9]), Err(4e9));
        assert!(pick_shift(&[1.0, f64::NAN]).is_err_and(|v| v.is_nan()));
        assert!(pick_shift(&[f64::NAN, 1.0]).is_err_and(|v| v.is_nan()));
        assert!(pick_shift(&[f64::INFINITY]).is_err());
        let e = ExportError::Requantisation { layer: "layer2.0.conv_a".into(), value: 4e9 };
        assert_eq!(e.to_string(), "layer2.0.conv_a: requantisation value 4000000000 does not fit int32");
    }
}

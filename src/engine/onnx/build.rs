//! [`QModel`] → ONNX nodes, one plan [`Step`] at a time, in the four forms of [`OnnxForm`].
//!
//! Every tensor gets a real scale: the input `1/255`, a conv's output the scale the exporter
//! recorded in the header (`LayerScales::output`; 1 when a file has none). In the QDQ form
//! the convs, pooling and classifier then run on the codes in integers (`ConvInteger` and an
//! int64 requantisation tail: [`Translate::conv_exact`], [`Translate::head_exact`]), which is
//! the integer form of `docs/quantization.md` exactly. The other forms derive real weight
//! scales and biases from the *integer* parameters, so that the float graph computes
//! `(acc·m_c + q_sc·r + b_c) / 2^shift` in units of the output scale — exact up to float32
//! rounding and the rounding of ties (see docs/onnx.md).

use super::graph::{Attr, Builder};
use super::proto::DataType;
use super::{OnnxError, OnnxForm};
use crate::engine::plan::{QModel, Step};
use crate::engine::{Conv2d, Linear, MaxPool2d};
use crate::graph::Src;

/// QONNX's operator domain (`Quant`).
pub(super) const QONNX_DOMAIN: &str = "qonnx.custom_op.general";

/// An activation tensor: its ONNX name and real scale. In the QDQ forms the tensor holds
/// `uint8` codes; in the float and QONNX forms it holds real values `code · scale`.
#[derive(Clone, Debug)]
struct Act {
    name: String,
    scale: f64,
}

/// The state of one translation.
pub(super) struct Translate<'a> {
    pub b: Builder,
    model: &'a QModel,
    form: OnnxForm,
    /// Per graph layer, the activation it produced (codes) once translated.
    acts: Vec<Option<Act>>,
    input: Act,
    /// The pooled tensor (float, `S_c · scale / (H·W)`) and its code scale.
    pooled: Option<(String, f64)>,
}

fn f(v: f64) -> f32 {
    v as f32
}

impl<'a> Translate<'a> {
    pub fn new(model: &'a QModel, form: OnnxForm) -> Self {
        let n = model.net().layers.len();
        let input = Act { name: super::INPUT.to_string(), scale: 1.0 / 255.0 };
        Translate { b: Builder::default(), model, form, acts: vec![None; n], input, pooled: None }
    }

    fn layer_name(&self, i: usize) -> &'a str {
        &self.model.net().layers[i].name
    }

    fn act(&self, s: Src) -> Result<Act, OnnxError> {
        match s {
            Src::Input => Ok(self.input.clone()),
            Src::Layer(j) => self.acts[j].clone().ok_or_else(|| OnnxError::Plan(format!("layer {} has no activation", self.layer_name(j)))),
        }
    }

    /// Translates the whole plan; the last node writes [`super::OUTPUT`].
    pub fn run(&mut self) -> Result<(), OnnxError> {
        self.quantize_input();
        for step in &self.model.steps {
            match step {
                Step::Conv { layer, input, out, conv, residual } => self.conv(*layer, *input, *out, conv, residual.as_ref())?,
                Step::MaxPool { layer, input, pool } => self.max_pool(*layer, *input, pool)?,
                Step::Pool { layer, input } => self.pool(*layer, *input)?,
                Step::Linear { layer, linear } => self.linear(*layer, linear)?,
            }
        }
        Ok(())
    }

    /// The float image (`pixel / 255`) as 8-bit codes (QDQ), as is (float) or through an
    /// 8-bit `Quant` (QONNX).
    fn quantize_input(&mut self) {
        let (x, s) = (super::INPUT, 1.0 / 255.0);
        let name = match self.form {
            OnnxForm::Qdq | OnnxForm::QdqInt8 => {
                let (sc, zp) = (self.b.f32s("input.scale", &[], &[f(s)]), self.b.u8s("input.zero_point", &[], &[0]));
                self.b.node("QuantizeLinear", "input.codes", &[x, &sc, &zp], vec![])
            }
            OnnxForm::Float => x.to_string(),
            OnnxForm::Qonnx => self.quant("input.codes", x, &[s], 0.0, 8, false),
        };
        self.input = Act { name, scale: s };
    }

    /// A QONNX `Quant` node: `scale · (clamp(round(x/scale + zp), range) − zp)`.
    fn quant(&mut self, name: &str, x: &str, scale: &[f64], zp: f64, bits: u8, signed: bool) -> String {
        let shape: Vec<usize> = if scale.len() == 1 { vec![] } else { vec![scale.len(), 1, 1, 1] };
        let scale: Vec<f32> = scale.iter().map(|&v| f(v)).collect();
        let sc = self.b.f32s(&format!("{name}.scale"), &shape, &scale);
        let zp = self.b.f32s(&format!("{name}.zero_point"), &[], &[f(zp)]);
        let bw = self.b.f32s(&format!("{name}.bitwidth"), &[], &[f32::from(bits)]);
        let attrs = vec![("signed", Attr::Int(signed as i64)), ("narrow", Attr::Int(0)), ("rounding_mode", Attr::Str("ROUND"))];
        self.b.node_in(QONNX_DOMAIN, "Quant", name, &[x, &sc, &zp, &bw], attrs)
    }

    /// The real-valued view of `a` for a consumer named `user` (a `DequantizeLinear` in the
    /// QDQ forms, at `scale` instead of the tensor's own where given).
    fn real(&mut self, a: &Act, user: &str, scale: Option<f64>) -> String {
        match self.form {
            OnnxForm::Qdq | OnnxForm::QdqInt8 => {
                let sc = self.b.f32s(&format!("{user}.x_scale"), &[], &[f(scale.unwrap_or(a.scale))]);
                let zp = self.b.u8s(&format!("{user}.x_zero_point"), &[], &[0]);
                self.b.node("DequantizeLinear", &format!("{user}.x"), &[&a.name, &sc, &zp], vec![])
            }
            OnnxForm::Float | OnnxForm::Qonnx => match scale {
                Some(s) if (s - a.scale).abs() > 0.0 => {
                    let k = self.b.f32s(&format!("{user}.x_rescale"), &[], &[f(s / a.scale)]);
                    self.b.node("Mul", &format!("{user}.x"), &[&a.name, &k], vec![])
                }
                _ => a.name.clone(),
            },
        }
    }

    /// Float `x` (real value) → the activation of layer `name`: codes `clamp(round(x/s), 0, qmax)`.
    fn requantize(&mut self, name: &str, x: &str, scale: f64, qmax: u8) -> Act {
        let hi = f(f64::from(qmax) * scale);
        let out = match self.form {
            // (The QDQ form never gets here: it requantises in integers, `conv_exact`.)
            OnnxForm::Qdq | OnnxForm::QdqInt8 => {
                let (sc, zp) =
                    (self.b.f32s(&format!("{name}.scale"), &[], &[f(scale)]), self.b.u8s(&format!("{name}.zero_point"), &[], &[0]));
                let q = self.b.node("QuantizeLinear", &format!("{name}.q"), &[x, &sc, &zp], vec![]);
                let (lo, hi) = (self.b.u8s(&format!("{name}.lo"), &[], &[0]), self.b.u8s(&format!("{name}.hi"), &[], &[qmax]));
                self.b.node("Clip", name, &[&q, &lo, &hi], vec![])
            }
            OnnxForm::Float => {
                let (lo, hi) = (self.b.f32s(&format!("{name}.lo"), &[], &[0.0]), self.b.f32s(&format!("{name}.hi"), &[], &[hi]));
                self.b.node("Clip", name, &[x, &lo, &hi], vec![])
            }
            OnnxForm::Qonnx => {
                let bits = (u32::from(qmax) + 1).trailing_zeros() as u8;
                self.quant(name, x, &[scale], 0.0, bits, false)
            }
        };
        Act { name: out, scale }
    }
}

/// A conv's weights and bias in ONNX terms, derived from its integer parameters with real
/// input scale `s_in` and output scale `s_out`.
struct ConvParams {
    /// Codes in ONNX's `[c_out, c_in/groups, k, k]` order, negated in channels whose
    /// multiplier is negative (so every weight scale is positive).
    codes: Vec<i8>,
    /// Per channel `|m_c| / 2^shift · s_out / s_in`.
    w_scale: Vec<f64>,
    /// Per channel `b_c / 2^shift · s_out` (real).
    bias: Vec<f64>,
    /// Per channel `round(b_c / |m_c|)`: the bias at scale `s_in · w_scale` (int32, for ONNX
    /// Runtime's integer kernels; rounded, hence only in [`OnnxForm::QdqInt8`]).
    bias_int: Vec<i32>,
}

/// Smallest weight scale written: a channel whose multiplier is 0 contributes nothing either
/// way, and a zero scale would divide by zero in QONNX's `Quant`.
const TINY_SCALE: f64 = 1e-30;

impl ConvParams {
    fn new(conv: &Conv2d, s_in: f64, s_out: f64) -> Self {
        let rq = &conv.requant;
        let unit = s_out / 2f64.powi(rq.shift as i32);
        let signs: Vec<i32> = rq.m.iter().map(|&m| if m < 0 { -1 } else { 1 }).collect();
        let codes = onnx_codes(conv, &signs);
        let w_scale = rq.m.iter().map(|&m| (f64::from(m).abs() * unit / s_in).max(TINY_SCALE)).collect();
        let bias = rq.b.iter().map(|&b| f64::from(b) * unit).collect();
        let bias_int =
            rq.m.iter().zip(&rq.b).map(|(&m, &b)| if m == 0 { 0 } else { (f64::from(b) / f64::from(m).abs()).round() as i32 }).collect();
        ConvParams { codes, w_scale, bias, bias_int }
    }
}

/// The conv's codes in ONNX's `[c_out][ci][ky][kx]` order (`ci` within the channel's group)
/// from the engine's `[c_out][(ky, kx, ci)]`, channel `o` multiplied by `sign[o]`.
fn onnx_codes(conv: &Conv2d, sign: &[i32]) -> Vec<i8> {
    let (k, cg, k_len) = (conv.k, conv.c_in_per_group(), conv.k_len());
    let engine = conv.weights.codes_i32();
    let mut codes = vec![0i8; engine.len()];
    for ((o, row), s) in engine.chunks_exact(k_len).enumerate().zip(sign) {
        for (i, &c) in row.iter().enumerate() {
            let (ky, kx, ci) = (i / (k * cg), (i / cg) % k, i % cg);
            codes[o * k_len + (ci * k + ky) * k + kx] = (s * c) as i8;
        }
    }
    codes
}

/// The ONNX attributes of `conv`: kernel, strides, symmetric pads and `group`.
fn conv_attrs(conv: &Conv2d) -> Vec<(&'static str, Attr)> {
    let (k, s, pad) = (conv.k as i64, conv.stride as i64, conv.pad as i64);
    vec![
        ("kernel_shape", Attr::Ints(vec![k, k])),
        ("strides", Attr::Ints(vec![s, s])),
        ("pads", Attr::Ints(vec![pad; 4])),
        ("group", Attr::Int(conv.groups.max(1) as i64)),
    ]
}

impl Translate<'_> {
    /// The real scale recorded for the output of conv or linear layer `layer` (1 without one).
    fn recorded(&self, layer: usize, pick: fn(&crate::engine::plan::LayerScales) -> Option<f64>) -> f64 {
        self.model.header.scales.get(self.layer_name(layer)).and_then(pick).filter(|v| v.is_finite() && *v > 0.0).unwrap_or(1.0)
    }

    fn conv(&mut self, layer: usize, input: Src, out: usize, conv: &Conv2d, residual: Option<&(Src, usize, i32)>) -> Result<(), OnnxError> {
        let (name, out_name) = (self.layer_name(layer), self.layer_name(out));
        let x_act = self.act(input)?;
        let s_out = self.recorded(layer, |s| s.output);
        if self.form == OnnxForm::Qdq {
            let codes = self.conv_exact(name, out_name, &x_act, conv, residual)?;
            self.acts[out] = Some(Act { name: codes, scale: s_out });
            return Ok(());
        }
        let p = ConvParams::new(conv, x_act.scale, s_out);
        let x = self.real(&x_act, name, None);
        let w = self.conv_weights(name, conv, &p);
        let bias = self.conv_bias(name, x_act.scale, &p);
        let mut y = self.b.node("Conv", &format!("{name}.conv"), &[&x, &w, &bias], conv_attrs(conv));
        if let Some(&(src, stride, r)) = residual {
            y = self.residual_add(out_name, &y, conv, (src, stride, r), s_out)?;
        }
        let act = self.requantize(out_name, &y, s_out, conv.requant.qmax);
        self.acts[out] = Some(act);
        Ok(())
    }

    /// The QDQ form's conv, exact: `ConvInteger` on the codes (uint8 × int8 → int32, `group`
    /// included), then the engine's epilogue in int64, `clamp((acc·m_c + b_c + q_sc·r +
    /// 2^(shift−1)) / 2^shift, 0, qmax)`, cast back to uint8 codes named `out_name`. ONNX's
    /// integer `Div` truncates toward zero where the engine shifts (floors); the two differ
    /// only on negative sums, which both clamp to 0.
    fn conv_exact(
        &mut self,
        name: &str,
        out_name: &str,
        x: &Act,
        conv: &Conv2d,
        residual: Option<&(Src, usize, i32)>,
    ) -> Result<String, OnnxError> {
        let (rq, c) = (&conv.requant, conv.c_conv());
        let dims = [c, conv.c_in_per_group(), conv.k, conv.k];
        let w = self.b.i8s(&format!("{name}.w_codes"), &dims, &onnx_codes(conv, &vec![1; c]));
        let xz = self.b.u8s(&format!("{name}.x_zero_point"), &[], &[0]);
        let wz = self.b.i8s(&format!("{name}.w_zero_point"), &[], &[0]);
        let acc = self.b.node("ConvInteger", &format!("{name}.conv"), &[&x.name, &w, &xz, &wz], conv_attrs(conv));
        let acc = self.cast(&format!("{name}.acc"), &acc, DataType::Int64);
        let m: Vec<i64> = rq.m.iter().map(|&v| i64::from(v)).collect();
        let m = self.b.i64s(&format!("{name}.m"), &[1, c, 1, 1], &m);
        let y = self.b.node("Mul", &format!("{name}.scaled"), &[&acc, &m], vec![]);
        // The rounding term rides on the bias (and on channels the conv lacks, below).
        let round = rq.rounding();
        let b: Vec<i64> = rq.b.iter().map(|&v| i64::from(v) + round).collect();
        let b = self.b.i64s(&format!("{name}.b_fixed"), &[1, c, 1, 1], &b);
        let mut y = self.b.node("Add", &format!("{name}.biased"), &[&y, &b], vec![]);
        if let Some(&(src, stride, r)) = residual {
            let c_res = self.channels(src);
            let c_out = c.max(c_res);
            let sc = self.shortcut_codes(out_name, src, stride, c_out)?;
            let sc = self.cast(&format!("{out_name}.sc_int"), &sc.name, DataType::Int64);
            let r = self.b.i64s(&format!("{out_name}.r"), &[], &[i64::from(r)]);
            let sc = self.b.node("Mul", &format!("{out_name}.sc_scaled"), &[&sc, &r], vec![]);
            if c < c_out {
                let pads = self.b.i64s(&format!("{out_name}.conv_pads"), &[8], &[0, 0, 0, 0, 0, (c_out - c) as i64, 0, 0]);
                let fill = self.b.i64s(&format!("{out_name}.conv_fill"), &[], &[round]);
                y = self.b.node("Pad", &format!("{out_name}.conv_pad"), &[&y, &pads, &fill], vec![]);
            }
            y = self.b.node("Add", &format!("{out_name}.add"), &[&y, &sc], vec![]);
        }
        let d = self.b.i64s(&format!("{out_name}.divisor"), &[], &[1i64 << rq.shift]);
        let q = self.b.node("Div", &format!("{out_name}.shifted"), &[&y, &d], vec![]);
        let (lo, hi) =
            (self.b.i64s(&format!("{out_name}.lo"), &[], &[0]), self.b.i64s(&format!("{out_name}.hi"), &[], &[i64::from(rq.qmax)]));
        let q = self.b.node("Clip", &format!("{out_name}.clip"), &[&q, &lo, &hi], vec![]);
        Ok(self.b.node("Cast", out_name, &[&q], vec![("to", Attr::Int(DataType::Uint8 as i64))]))
    }

    /// A `Cast` of `x` to `to`, named `name`.
    fn cast(&mut self, name: &str, x: &str, to: DataType) -> String {
        self.b.node("Cast", name, &[x], vec![("to", Attr::Int(to as i64))])
    }

    fn conv_weights(&mut self, name: &str, conv: &Conv2d, p: &ConvParams) -> String {
        let dims = [conv.c_conv(), conv.c_in_per_group(), conv.k, conv.k];
        let per_channel =
            |b: &mut Builder, s: &[f64]| b.f32s(&format!("{name}.w_scale"), &[s.len()], &s.iter().map(|&v| f(v)).collect::<Vec<_>>());
        let real = |codes: &[i8], scale: &[f64]| -> Vec<f32> {
            let k_len = codes.len() / scale.len();
            codes.iter().enumerate().map(|(i, &c)| f(f64::from(c) * scale[i / k_len])).collect()
        };
        match self.form {
            OnnxForm::Qdq | OnnxForm::QdqInt8 => {
                let q = self.b.i8s(&format!("{name}.w_codes"), &dims, &p.codes);
                let sc = per_channel(&mut self.b, &p.w_scale);
                let zp = self.b.i8s(&format!("{name}.w_zero_point"), &[dims[0]], &vec![0; dims[0]]);
                self.b.node("DequantizeLinear", &format!("{name}.w"), &[&q, &sc, &zp], vec![("axis", Attr::Int(0))])
            }
            OnnxForm::Float => self.b.f32s(&format!("{name}.w"), &dims, &real(&p.codes, &p.w_scale)),
            OnnxForm::Qonnx => {
                let w = self.b.f32s(&format!("{name}.w_real"), &dims, &real(&p.codes, &p.w_scale));
                if matches!(conv.weights, crate::engine::ConvWeights::W2(_)) {
                    // SAWB levels ±1, ±3 (times the scale) = 2-bit unsigned codes 0..3 at scale
                    // 2·s around the zero point 1.5.
                    let s2: Vec<f64> = p.w_scale.iter().map(|s| 2.0 * s).collect();
                    self.quant(&format!("{name}.w"), &w, &s2, 1.5, 2, false)
                } else {
                    self.quant(&format!("{name}.w"), &w, &p.w_scale, 0.0, 8, true)
                }
            }
        }
    }

    fn conv_bias(&mut self, name: &str, s_in: f64, p: &ConvParams) -> String {
        let n = p.bias.len();
        if self.form == OnnxForm::QdqInt8 {
            let q = self.b.i32s(&format!("{name}.b_int"), &[n], &p.bias_int);
            let s: Vec<f32> = p.w_scale.iter().map(|w| f(w * s_in)).collect();
            let sc = self.b.f32s(&format!("{name}.b_scale"), &[n], &s);
            let zp = self.b.i32s(&format!("{name}.b_zero_point"), &[n], &vec![0; n]);
            return self.b.node("DequantizeLinear", &format!("{name}.b"), &[&q, &sc, &zp], vec![("axis", Attr::Int(0))]);
        }
        self.b.f32s(&format!("{name}.b"), &[n], &p.bias.iter().map(|&v| f(v)).collect::<Vec<_>>())
    }

    /// Channels of the tensor `s` (the image or a layer's output).
    fn channels(&self, s: Src) -> usize {
        match s {
            Src::Input => self.model.net().input.c,
            Src::Layer(j) => self.model.net().layers[j].out_shape.c,
        }
    }

    /// Zero-pads the channels of `x` from `have` to `want` (a no-op when equal).
    fn pad_channels(&mut self, name: &str, x: &str, have: usize, want: usize) -> String {
        if have >= want {
            return x.to_string();
        }
        let pads = self.b.i64s(&format!("{name}.pads"), &[8], &[0, 0, 0, 0, 0, (want - have) as i64, 0, 0]);
        self.b.node("Pad", name, &[x, &pads], vec![])
    }

    /// The shortcut of the residual add `name`: the codes of `src` subsampled by `stride`
    /// (option A, `Slice` with steps) and zero-padded to `c_out` channels.
    fn shortcut_codes(&mut self, name: &str, src: Src, stride: usize, c_out: usize) -> Result<Act, OnnxError> {
        let sc = self.act(src)?;
        let mut t = sc.name.clone();
        if stride > 1 {
            let st = stride as i64;
            let starts = self.b.i64s(&format!("{name}.sc_starts"), &[2], &[0, 0]);
            let ends = self.b.i64s(&format!("{name}.sc_ends"), &[2], &[i64::MAX, i64::MAX]);
            let axes = self.b.i64s(&format!("{name}.sc_axes"), &[2], &[2, 3]);
            let steps = self.b.i64s(&format!("{name}.sc_steps"), &[2], &[st, st]);
            t = self.b.node("Slice", &format!("{name}.sc_sub"), &[&t, &starts, &ends, &axes, &steps], vec![]);
        }
        let t = self.pad_channels(&format!("{name}.sc_pad"), &t, self.channels(src), c_out);
        Ok(Act { name: t, scale: sc.scale })
    }

    /// `conv + q_sc · r / 2^shift · s_out` with option-A subsampling and channel padding.
    fn residual_add(
        &mut self,
        name: &str,
        y: &str,
        conv: &Conv2d,
        (src, stride, r): (Src, usize, i32),
        s_out: f64,
    ) -> Result<String, OnnxError> {
        let (c_conv, c_res) = (conv.c_conv(), self.channels(src));
        let c_out = c_conv.max(c_res);
        let sc = self.shortcut_codes(name, src, stride, c_out)?;
        let k = f64::from(r) / 2f64.powi(conv.requant.shift as i32) * s_out;
        let shortcut = self.real(&sc, &format!("{name}.sc"), Some(k));
        let mut y = y.to_string();
        if self.form == OnnxForm::QdqInt8 {
            // What a calibrated int8 quantizer does: the conv output stored in 8 bits too.
            let s = self.b.f32s(&format!("{name}.pre_scale"), &[], &[f(s_out / 16.0)]);
            let zp = self.b.u8s(&format!("{name}.pre_zero_point"), &[], &[128]);
            let q = self.b.node("QuantizeLinear", &format!("{name}.pre_q"), &[&y, &s, &zp], vec![]);
            y = self.b.node("DequantizeLinear", &format!("{name}.pre"), &[&q, &s, &zp], vec![]);
        }
        y = self.pad_channels(&format!("{name}.conv_pad"), &y, c_conv, c_out);
        Ok(self.b.node("Add", &format!("{name}.add"), &[&y, &shortcut], vec![]))
    }

    fn max_pool(&mut self, layer: usize, input: Src, p: &MaxPool2d) -> Result<(), OnnxError> {
        let x = self.act(input)?;
        let (k, s, pad) = (p.k as i64, p.stride as i64, p.pad as i64);
        let attrs = vec![("kernel_shape", Attr::Ints(vec![k, k])), ("strides", Attr::Ints(vec![s, s])), ("pads", Attr::Ints(vec![pad; 4]))];
        // Max commutes with the monotone dequantisation: pool the codes themselves.
        let name = self.b.node("MaxPool", self.layer_name(layer), &[&x.name], attrs);
        self.acts[layer] = Some(Act { name, scale: x.scale });
        Ok(())
    }

    fn pool(&mut self, layer: usize, input: Src) -> Result<(), OnnxError> {
        let x = self.act(input)?;
        let name = self.layer_name(layer);
        if self.form == OnnxForm::Qdq {
            // The engine's exact per-channel sums `S_c = Σ_hw q` (int64 [N, C]).
            let codes = self.cast(&format!("{name}.codes"), &x.name, DataType::Int64);
            let axes = self.b.i64s(&format!("{name}.axes"), &[2], &[2, 3]);
            let sum = self.b.node("ReduceSum", name, &[&codes, &axes], vec![("keepdims", Attr::Int(0))]);
            self.pooled = Some((sum, x.scale));
            return Ok(());
        }
        let real = self.real(&x, name, None);
        let avg = self.b.node("GlobalAveragePool", &format!("{name}.avg"), &[&real], vec![]);
        let flat = self.b.node("Flatten", name, &[&avg], vec![("axis", Attr::Int(1))]);
        self.pooled = Some((flat, x.scale));
        Ok(())
    }

    /// The classifier: `logit_o = (Σ_c w[o,c]·S_c + b_o) · unit`, `unit = s_w · s_x / (H·W)`.
    fn linear(&mut self, layer: usize, l: &Linear) -> Result<(), OnnxError> {
        let (x, _) = self.pooled.clone().ok_or_else(|| OnnxError::Plan("the classifier must follow global pooling".into()))?;
        let name = self.layer_name(layer);
        let s_w = self.recorded(layer, |s| s.weight);
        let unit = super::logit_scale(self.model);
        let dims = [l.c_out(), l.c_in()];
        if self.form == OnnxForm::Qdq {
            self.linear_exact(name, &x, l, unit);
            return Ok(());
        }
        let w = match self.form {
            OnnxForm::Qdq | OnnxForm::QdqInt8 => {
                let q = self.b.i8s(&format!("{name}.w_codes"), &dims, &l.weights.data);
                let sc = self.b.f32s(&format!("{name}.w_scale"), &[], &[f(s_w)]);
                let zp = self.b.i8s(&format!("{name}.w_zero_point"), &[], &[0]);
                self.b.node("DequantizeLinear", &format!("{name}.w"), &[&q, &sc, &zp], vec![])
            }
            OnnxForm::Float | OnnxForm::Qonnx => {
                let real: Vec<f32> = l.weights.data.iter().map(|&c| f(f64::from(c) * s_w)).collect();
                let w = self.b.f32s(&format!("{name}.w_real"), &dims, &real);
                if self.form == OnnxForm::Qonnx {
                    self.quant(&format!("{name}.w"), &w, &[s_w], 0.0, 8, true)
                } else {
                    w
                }
            }
        };
        let bias: Vec<f32> = l.bias.iter().map(|&b| f(f64::from(b) * unit)).collect();
        let c = self.b.f32s(&format!("{name}.b"), &[l.c_out()], &bias);
        self.b.node("Gemm", super::OUTPUT, &[&x, &w, &c], vec![("transB", Attr::Int(1))]);
        Ok(())
    }
}

impl Translate<'_> {
    /// The QDQ form's classifier on the int64 sums `x`: the engine's integer logits
    /// `Σ_c w[o,c]·S_c + b_o` ([`super::INTEGER_LOGITS`], int64), then times `unit` in float.
    fn linear_exact(&mut self, name: &str, x: &str, l: &Linear, unit: f64) {
        let w = self.b.i8s(&format!("{name}.w_codes"), &[l.c_out(), l.c_in()], &l.weights.data);
        let wt = self.b.node("Transpose", &format!("{name}.w_t"), &[&w], vec![("perm", Attr::Ints(vec![1, 0]))]);
        let wt = self.cast(&format!("{name}.w_int"), &wt, DataType::Int64);
        let acc = self.b.node("MatMul", &format!("{name}.matmul"), &[x, &wt], vec![]);
        let b: Vec<i64> = l.bias.iter().map(|&v| i64::from(v)).collect();
        let b = self.b.i64s(&format!("{name}.b_int"), &[l.c_out()], &b);
        let logits = self.b.node("Add", super::INTEGER_LOGITS, &[&acc, &b], vec![]);
        let real = self.cast(&format!("{name}.logits_f"), &logits, DataType::Float);
        let u = self.b.f32s(&format!("{name}.unit"), &[], &[f(unit)]);
        self.b.node("Mul", super::OUTPUT, &[&real, &u], vec![]);
    }
}

/// The real scale of tensor `s` as [`Translate`] assigns it (the image: 1/255; a conv's
/// output: its recorded output scale; max pooling keeps its input's).
pub(super) fn tensor_scale(model: &QModel, s: Src) -> f64 {
    let Src::Layer(j) = s else { return 1.0 / 255.0 };
    let recorded = |layer: usize| {
        let name = &model.net().layers[layer].name;
        model.header.scales.get(name).and_then(|s| s.output).filter(|v| v.is_finite() && *v > 0.0).unwrap_or(1.0)
    };
    for step in &model.steps {
        match step {
            Step::Conv { layer, out, .. } if *out == j => return recorded(*layer),
            Step::MaxPool { layer, input, .. } if *layer == j => return tensor_scale(model, *input),
            _ => {}
        }
    }
    1.0
}

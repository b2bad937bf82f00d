//! An int8 peer of a model: the same network (every conv, depthwise ones as TFLite's
//! `DEPTHWISE_CONV_2D`, shortcut, pooling and classifier at the model's shapes) as a plain int8
//! C program in the style of TensorFlow Lite Micro's reference kernels (`c/nce_int8.c`), for
//! comparing instruction counts, flash and RAM with the 2-bit runtime through the same
//! Cortex-M7 harness. Its weights are pseudo-random: it computes what an int8 deployment of the
//! network computes, not this model's logits.

use super::generate::{array, first_fit, i32_literal, model_header, safe, shape_of, slot, Tensor};
use super::{CPackage, CRuntimeError, RUNTIME_FILES};
use crate::data::Rng;
use crate::engine::plan::{QModel, Step};
use crate::graph::{Shape, Src};
use std::fmt::Write;

/// The peer's C package and the name of each hook step (0 is the input conversion).
pub struct Int8Peer {
    pub pkg: CPackage,
    pub step_names: Vec<String>,
}

/// One op of the peer's `nce_run`: its constants, its call (`@0`, `@1`: the tensors it reads,
/// `@W`: the one it writes) and the graph layer it stands for.
struct Op {
    decl: String,
    call: String,
    reads: Vec<usize>,
    write: usize,
    layer: i64,
    name: String,
}

/// Builds the op list: tensors (int8, with their zero points) in an arena planned like the
/// 2-bit package's.
struct Builder<'a> {
    model: &'a QModel,
    rng: Rng,
    tensors: Vec<Option<Tensor>>,
    zero_point: Vec<i32>,
    /// Graph slot (0: input, `j + 1`: layer `j`) → tensor.
    of_slot: Vec<Option<usize>>,
    ops: Vec<Op>,
    scratch: usize,
}

const ACT: &str = ".act_min = -128, .act_max = 127";

impl<'a> Builder<'a> {
    fn tensor(&mut self, bytes: usize, zero_point: i32) -> usize {
        self.tensors.push(Some(Tensor { bytes, born: self.ops.len(), dies: self.ops.len(), offset: 0 }));
        self.zero_point.push(zero_point);
        self.tensors.len() - 1
    }

    fn of(&self, s: Src) -> Result<usize, CRuntimeError> {
        self.of_slot[slot(s)].ok_or_else(|| CRuntimeError::Unsupported(format!("a step reads {s:?} before it is written")))
    }

    fn push(&mut self, op: Op) {
        let time = self.ops.len();
        for &r in &op.reads {
            if let Some(t) = self.tensors[r].as_mut() {
                t.dies = t.dies.max(time);
            }
        }
        self.ops.push(op);
    }

    /// `n` int8 weights in [-127, 127].
    fn weights(&mut self, n: usize) -> Vec<String> {
        (0..n).map(|_| (self.rng.below(255) as i64 - 127).to_string()).collect()
    }

    /// Per-channel Q31 multipliers in [0.5, 1) and a shift that maps an accumulator over
    /// `k_len` products of random weights (RMS 73) and activations back to int8's range with a
    /// gain near 1 after the ReLU's clamp (about `√2 / (73 √k_len)`), so that the activations of
    /// a deep network (MobileNetV2) neither die out nor saturate.
    fn requant(&mut self, channels: usize, k_len: usize) -> (Vec<String>, Vec<String>) {
        let shift = -((k_len.max(1) as f64).sqrt() * 40.0).log2().round() as i32;
        let mult = (0..channels).map(|_| ((1u64 << 30) + self.rng.below(1 << 30)).to_string()).collect();
        (mult, vec![shift.to_string(); channels])
    }

    fn input(&mut self) {
        let x = self.model.net().input;
        let w = self.tensor(x.numel(), -128);
        self.of_slot[0] = Some(w);
        let call = format!("nce_i8_input(input, @W, {}, {}, {});", x.c, x.h, x.w);
        self.push(Op { decl: String::new(), call, reads: vec![], write: w, layer: -1, name: "input".into() });
    }

    /// A conv (ReLU unless a residual add follows, which then gets its own op).
    fn conv(&mut self, step: &Step) -> Result<(), CRuntimeError> {
        let Step::Conv { layer, input, out, conv, residual } = step else { return Ok(()) };
        let net = self.model.net();
        let (x, y) = (shape_of(net, *input), net.layers[*layer].out_shape);
        let c = conv.c_conv();
        let src = self.of(*input)?;
        let zp = if residual.is_some() { 0 } else { -128 };
        let w = self.tensor(c * y.h * y.w, zp);
        let p = format!("nce_p{}", self.ops.len());
        let mut decl = String::new();
        let weights = self.weights(conv.k_len() * c);
        array(&mut decl, "int8_t", &format!("{p}_w"), &weights);
        let bias: Vec<String> = (0..c).map(|_| i32_literal(self.rng.below(4001) as i32 - 2000)).collect();
        array(&mut decl, "int32_t", &format!("{p}_b"), &bias);
        let (mult, shift) = self.requant(c, conv.k_len());
        array(&mut decl, "int32_t", &format!("{p}_m"), &mult);
        array(&mut decl, "int32_t", &format!("{p}_s"), &shift);
        let _ = writeln!(
            decl,
            "static const nce_i8_conv_t {p} = {{\n    .c_in = {}, .h = {}, .w = {}, .ho = {}, .wo = {}, .c_out = {c}, .groups = {}, .k = {}, .stride = {}, \
             .pad = {},\n    .weights = {p}_w, .bias = {p}_b, .mult = {p}_m, .shift = {p}_s,\n    .in_offset = {}, .out_offset = {zp}, {ACT},\n}};\n",
            x.c,
            x.h,
            x.w,
            y.h,
            y.w,
            conv.groups,
            conv.k,
            conv.stride,
            conv.pad,
            -self.zero_point[src],
        );
        let call = if conv.is_depthwise() {
            // TFLite's DEPTHWISE_CONV_2D; the DSP path keeps each channel's weight sum.
            self.scratch = self.scratch.max(4 * c);
            format!("nce_i8_dwconv(&{p}, @0, @W, NCE_SCRATCH);")
        } else {
            // Two int16 patches (the DSP path computes two pixels at a time).
            self.scratch = self.scratch.max(4 * conv.k_len().next_multiple_of(4));
            format!("nce_i8_conv(&{p}, @0, @W, NCE_SCRATCH);")
        };
        self.push(Op { decl, call, reads: vec![src], write: w, layer: *layer as i64, name: net.layers[*layer].name.clone() });
        self.of_slot[layer + 1] = Some(w);
        match residual {
            Some((res, stride, _)) => self.add(w, c, (*res, *stride), *out),
            None => Ok(()),
        }
    }

    /// TFLite's int8 ADD of the conv's output `a` (`c1` channels) and the shortcut, with ReLU.
    fn add(&mut self, a: usize, c1: usize, shortcut: (Src, usize), out: usize) -> Result<(), CRuntimeError> {
        let net = self.model.net();
        let (res, stride) = shortcut;
        let (r, y) = (shape_of(net, res), net.layers[out].out_shape);
        let b = self.of(res)?;
        let w = self.tensor(y.numel(), -128);
        let p = format!("nce_p{}", self.ops.len());
        // Equal input scales: each input × 1/2 after the left shift of 20, the sum × 2^-18.
        let decl = format!(
            "static const nce_i8_add_t {p} = {{\n    .h = {}, .w = {}, .c = {}, .c1 = {c1}, .res_c = {}, .res_w = {}, .res_stride = {stride},\n    \
             .in1_offset = {}, .in2_offset = {}, .out_offset = -128, .left_shift = 20,\n    .in1_mult = 1073741824, .in1_shift = 0, \
             .in2_mult = 1073741824, .in2_shift = 0, .out_mult = 1073741824, .out_shift = -18,\n    {ACT},\n}};\n",
            y.h, y.w, y.c, r.c, r.w, -self.zero_point[a], -self.zero_point[b],
        );
        let call = format!("nce_i8_add(&{p}, @0, @1, @W);");
        self.push(Op { decl, call, reads: vec![a, b], write: w, layer: out as i64, name: net.layers[out].name.clone() });
        self.of_slot[out + 1] = Some(w);
        Ok(())
    }

    /// Max pooling, or global average pooling (TFLite's AVERAGE_POOL_2D over the whole map).
    fn pool(&mut self, layer: usize, input: Src, window: Option<(usize, usize, usize)>) -> Result<(), CRuntimeError> {
        let net = self.model.net();
        let x = shape_of(net, input);
        let src = self.of(input)?;
        let (k, stride, pad) = window.unwrap_or((x.h.max(x.w), 1, 0));
        let y = if window.is_some() { net.layers[layer].out_shape } else { Shape::new(x.c, 1, 1) };
        let w = self.tensor(y.numel(), self.zero_point[src]);
        let p = format!("nce_p{}", self.ops.len());
        let decl = format!(
            "static const nce_i8_pool_t {p} = {{ .c = {}, .h = {}, .w = {}, .ho = {}, .wo = {}, .k = {k}, .stride = {stride}, .pad = {pad}, {ACT} }};\n",
            x.c, x.h, x.w, y.h, y.w
        );
        let f = if window.is_some() { "nce_i8_maxpool" } else { "nce_i8_avgpool" };
        let call = format!("{f}(&{p}, @0, @W);");
        self.push(Op { decl, call, reads: vec![src], write: w, layer: layer as i64, name: net.layers[layer].name.clone() });
        self.of_slot[layer + 1] = Some(w);
        Ok(())
    }

    /// FULLY_CONNECTED to int8 logits, widened to the API's int32.
    fn linear(&mut self, layer: usize, c_in: usize, c_out: usize) -> Result<(), CRuntimeError> {
        let net = self.model.net();
        let src = self.of_slot[layer].ok_or_else(|| CRuntimeError::Unsupported("the classifier has no input".into()))?;
        let w = self.tensor(c_out, 0);
        let p = format!("nce_p{}", self.ops.len());
        let mut decl = String::new();
        let weights = self.weights(c_in * c_out);
        array(&mut decl, "int8_t", &format!("{p}_w"), &weights);
        let bias: Vec<String> = (0..c_out).map(|_| i32_literal(self.rng.below(4001) as i32 - 2000)).collect();
        array(&mut decl, "int32_t", &format!("{p}_b"), &bias);
        let (mult, shift) = self.requant(1, c_in);
        let _ = writeln!(
            decl,
            "static const nce_i8_fc_t {p} = {{ .c_in = {c_in}, .c_out = {c_out}, .weights = {p}_w, .bias = {p}_b,\n    \
             .in_offset = {}, .out_offset = 0, .mult = {}, .shift = {}, {ACT} }};\n",
            -self.zero_point[src], mult[0], shift[0]
        );
        let call = format!("nce_i8_fc(&{p}, @0, @W);\n    nce_widen(@W, logits, {c_out});");
        self.push(Op { decl, call, reads: vec![src], write: w, layer: layer as i64, name: net.layers[layer].name.clone() });
        Ok(())
    }
}

/// `nce_run`: every op, each followed by its hook (step = op index).
fn emit_run(c: &mut String, ops: &[Op], tensors: &[Option<Tensor>]) {
    let at = |t: usize| format!("(a + {})", tensors[t].map_or(0, |t| t.offset));
    let _ = writeln!(c, "int nce_run(const uint8_t *input, int32_t *logits) {{");
    let _ = writeln!(c, "    int8_t *a = (int8_t *)(void *)nce_arena;");
    for (s, op) in ops.iter().enumerate() {
        let mut call = op.call.replace("@W", &at(op.write));
        for (i, &r) in op.reads.iter().enumerate() {
            call = call.replace(&format!("@{i}"), &at(r));
        }
        let _ = writeln!(c, "    {call}");
        let n = tensors[op.write].map_or(0, |t| t.bytes);
        let _ = writeln!(c, "    NCE_HOOK({s}, {}, NCE_HOOK_CODES, {}, {n});", op.layer, at(op.write));
    }
    let _ = writeln!(c, "    return NCE_OK;\n}}");
}

/// The int8 peer of `model`'s network (weights from a fixed seed).
pub fn generate_int8_peer(model: &QModel) -> Result<Int8Peer, CRuntimeError> {
    let net = model.net();
    let mut b = Builder {
        model,
        rng: Rng::new(0x696e_7438),
        tensors: Vec::new(),
        zero_point: Vec::new(),
        of_slot: vec![None; net.layers.len() + 1],
        ops: Vec::new(),
        scratch: 0,
    };
    b.input();
    for step in &model.steps {
        match step {
            Step::Conv { .. } => b.conv(step)?,
            Step::MaxPool { layer, input, pool } => b.pool(*layer, *input, Some((pool.k, pool.stride, pool.pad)))?,
            Step::Pool { layer, input } => b.pool(*layer, *input, None)?,
            Step::Linear { layer, linear } => b.linear(*layer, linear.c_in(), linear.c_out())?,
        }
    }
    let arena = first_fit(&mut b.tensors).max(8);
    let steps = b.ops.len() - 1;
    let mut c = format!("/* Generated by nce: an int8 peer of the {} network (pseudo-random weights; costs only). */\n", safe(&net.model));
    let _ = writeln!(c, "#include \"nce_model.h\"\n#include \"nce_int8.h\"\n");
    for op in &b.ops {
        c.push_str(&op.decl);
    }
    let _ = writeln!(c, "static uint32_t nce_arena[NCE_ARENA_BYTES / 4];");
    let _ = writeln!(c, "#if defined(NCE_SIMD_DSP) && NCE_SCRATCH_BYTES > 0");
    let _ = writeln!(c, "static uint32_t nce_scratch[NCE_SCRATCH_BYTES / 4];\n#define NCE_SCRATCH nce_scratch\n#else");
    let _ = writeln!(c, "#define NCE_SCRATCH NULL\n#endif\n");
    let _ = writeln!(c, "static void nce_widen(const int8_t *x, int32_t *y, uint32_t n) {{");
    let _ = writeln!(c, "    uint32_t i;\n    for (i = 0; i < n; i++) {{\n        y[i] = x[i];\n    }}\n}}\n");
    emit_run(&mut c, &b.ops, &b.tensors);
    let scratch = b.scratch.next_multiple_of(4);
    let mut files = vec![("nce_model.h".to_string(), model_header(model, steps, arena, scratch)), ("nce_model.c".to_string(), c)];
    files.push(("nce_int8.h".into(), include_str!("c/nce_int8.h").into()));
    files.push(("nce_int8.c".into(), include_str!("c/nce_int8.c").into()));
    files.extend(RUNTIME_FILES.iter().filter(|(n, _)| *n != "nce_runtime.c").map(|(n, t)| (n.to_string(), t.to_string())));
    let pkg = CPackage { files, arena_bytes: arena, scratch_bytes: scratch, steps, input_bytes: net.input.numel(), classes: net.classes };
    Ok(Int8Peer { pkg, step_names: b.ops.into_iter().map(|o| o.name).collect() })
}

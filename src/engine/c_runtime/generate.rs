//! Writing a [`QModel`] as C: `nce_model.h` (shapes, arena size, `nce_run`) and `nce_model.c`
//! (every layer's constants in execution order, a static arena planned here, and `nce_run`
//! calling the runtime's ops step by step).

use super::arrange::{ladder, swar_word, LadderShortcut};
use super::{CPackage, CRuntimeError, GENERATED_MARKER, RUNTIME_FILES};
use crate::engine::plan::{QModel, Step};
use crate::engine::{words_for, Conv2d, ConvWeights};
use crate::graph::{Network, Shape, Src};
use std::fmt::Write;

/// Arena offsets are multiples of this (int32 sums live in the arena too).
const ALIGN: usize = 8;

/// Bytes of the scratch buffer the SIMD builds' paths need for one conv: for 2-bit weights the
/// receptive fields of four output pixels (whole words of 16 codes, interleaved per word), one
/// pixel's in plain order, and two packed sums per output channel (the SWAR path; the NEON path
/// uses the first part); for 8-bit weights one receptive field (one byte per code) and the DSP
/// path's 16-bit pairs of it; for a
/// 2-bit depthwise conv its weights expanded per tap for one group of channels at a time (the
/// SWAR path's two mask words per tap for four channels, the NEON path's byte per tap and
/// channel for sixteen). Other grouped convs run the reference and need none.
pub(super) fn scratch_bytes(conv: &Conv2d) -> usize {
    match conv.weights {
        ConvWeights::W2(_) if conv.is_depthwise() => conv.k * conv.k * 16,
        _ if conv.groups > 1 => 0,
        ConvWeights::W2(_) => words_for(conv.k_len()) * 16 * 5 + conv.c_conv() * 8,
        ConvWeights::W8(_) => conv.k_len().next_multiple_of(4) * 3,
    }
}

/// A shortcut fused into a conv: its tensor's shape, subsampling, scale (in the conv's shift)
/// and largest code (`None`: not known at export, e.g. the input image).
#[derive(Clone, Copy, Debug)]
pub(super) struct Shortcut {
    pub shape: Shape,
    pub stride: usize,
    pub r: i32,
    pub qmax: Option<u8>,
}

/// One tensor of the plan: the input (index 0) or graph layer `j`'s output (index `j + 1`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Tensor {
    pub bytes: usize,
    /// Step time it is written at (0: before the first step; step `s` runs at `s + 1`).
    pub born: usize,
    /// Last step time that reads it.
    pub dies: usize,
    pub offset: usize,
}

pub(super) fn slot(s: Src) -> usize {
    match s {
        Src::Input => 0,
        Src::Layer(j) => j + 1,
    }
}

pub(super) fn shape_of(net: &Network, s: Src) -> Shape {
    match s {
        Src::Input => net.input,
        Src::Layer(j) => net.layers[j].out_shape,
    }
}

/// The tensor slots a step reads and the one it writes (`None`: the caller's logits).
fn step_io(step: &Step) -> (Vec<usize>, Option<usize>) {
    match step {
        Step::Conv { input, out, residual, .. } => {
            let mut reads = vec![slot(*input)];
            reads.extend(residual.as_ref().map(|(src, _, _)| slot(*src)));
            (reads, Some(out + 1))
        }
        Step::MaxPool { layer, input, .. } | Step::Pool { layer, input } => (vec![slot(*input)], Some(layer + 1)),
        Step::Linear { layer, .. } => (vec![*layer], None),
    }
}

/// Lifetimes of every tensor, then their [`first_fit`] offsets. Returns the tensors (by slot)
/// and the arena size.
fn plan_arena(model: &QModel) -> (Vec<Option<Tensor>>, usize) {
    let net = model.net();
    let mut tensors: Vec<Option<Tensor>> = vec![None; net.layers.len() + 1];
    tensors[0] = Some(Tensor { bytes: net.input.numel(), born: 0, dies: 0, offset: 0 });
    for (s, step) in model.steps.iter().enumerate() {
        let (reads, write) = step_io(step);
        for r in reads {
            if let Some(t) = tensors[r].as_mut() {
                t.dies = s + 1;
            }
        }
        if let Some(w) = write {
            let sh = net.layers[w - 1].out_shape;
            let bytes = if matches!(step, Step::Pool { .. }) { 4 * sh.c } else { sh.numel() };
            tensors[w] = Some(Tensor { bytes, born: s + 1, dies: s + 1, offset: 0 });
        }
    }
    let size = first_fit(&mut tensors);
    (tensors, size)
}

/// First-fit offsets (largest tensor first) such that tensors alive at the same time never
/// overlap; returns the arena size.
pub(super) fn first_fit(tensors: &mut [Option<Tensor>]) -> usize {
    let mut order: Vec<usize> = (0..tensors.len()).filter(|&i| tensors[i].is_some()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(tensors[i].map_or(0, |t| t.bytes)));
    let mut placed: Vec<Tensor> = Vec::new();
    let mut size = 0;
    for i in order {
        let Some(mut t) = tensors[i] else { continue };
        let live: Vec<&Tensor> = placed.iter().filter(|p| p.born <= t.dies && t.born <= p.dies).collect();
        let mut candidates: Vec<usize> = live.iter().map(|p| (p.offset + p.bytes).next_multiple_of(ALIGN)).collect();
        candidates.push(0);
        candidates.sort_unstable();
        t.offset = candidates
            .into_iter()
            .find(|&o| live.iter().all(|p| o + t.bytes <= p.offset || p.offset + p.bytes <= o))
            .expect("the end of the highest live tensor is always free");
        size = size.max(t.offset + t.bytes);
        placed.push(t);
        tensors[i] = Some(t);
    }
    size.next_multiple_of(ALIGN)
}

/// A name safe inside a C comment or string literal.
pub(super) fn safe(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect()
}

pub(super) fn i32_literal(x: i32) -> String {
    if x == i32::MIN {
        "(-2147483647 - 1)".into()
    } else {
        x.to_string()
    }
}

pub(super) fn array(out: &mut String, ty: &str, name: &str, values: &[String]) {
    let _ = writeln!(out, "static const {ty} {name}[{}] = {{", values.len().max(1));
    for chunk in values.chunks(12) {
        let _ = writeln!(out, "    {},", chunk.join(", "));
    }
    if values.is_empty() {
        let _ = writeln!(out, "    0,");
    }
    let _ = writeln!(out, "}};");
}

/// The conv's constant arrays and descriptor `nce_s{s}`.
fn emit_conv(out: &mut String, s: usize, conv: &Conv2d, x: Shape, res: Option<Shortcut>, y: Shape) {
    let dense = conv.groups <= 1;
    let (ty, values): (&str, Vec<String>) = match &conv.weights {
        ConvWeights::W2(w) => ("uint32_t", w.words.iter().map(|&v| format!("0x{:08x}u", if dense { swar_word(v) } else { v })).collect()),
        ConvWeights::W8(w) => ("int8_t", w.data.iter().map(|v| v.to_string()).collect()),
    };
    array(out, ty, &format!("nce_s{s}_w"), &values);
    let syms = [format!("nce_s{s}_w"), format!("nce_s{s}_m"), format!("nce_s{s}_b")];
    emit_conv_desc(out, &format!("nce_s{s}"), conv, [x, y], res, &syms);
}

/// The requantisation arrays `{name}_m`, `{name}_b` (and for 2-bit weights, where it serves,
/// the threshold ladder `{name}_t`) and the descriptor `name` of a conv reading `shapes[0]` and
/// writing `shapes[1]`, whose weights are the C array `syms[0]` (`syms[1..]` name the m and b
/// arrays).
pub(super) fn emit_conv_desc(out: &mut String, name: &str, conv: &Conv2d, shapes: [Shape; 2], res: Option<Shortcut>, syms: &[String; 3]) {
    let [x, y] = shapes;
    let (w8, words) = match &conv.weights {
        ConvWeights::W2(w) => (false, w.words_per_channel()),
        ConvWeights::W8(_) => (true, 0),
    };
    array(out, "int32_t", &syms[1], &conv.requant.m.iter().map(|&v| i32_literal(v)).collect::<Vec<_>>());
    array(out, "int32_t", &syms[2], &conv.requant.b.iter().map(|&v| i32_literal(v)).collect::<Vec<_>>());
    let (res_c, res_w, res_stride, r) = res.map_or((0, 0, 1, 0), |s| (s.shape.c, s.shape.w, s.stride, s.r));
    // The paths that read ladders: the SWAR ones (2-bit weights, input codes <= 3: at most 9 per
    // reduction term; the dense 8-bit conv's sums are too wide for int16 thresholds).
    let shortcut = res.and_then(|s| s.qmax.map(|qmax| LadderShortcut { channels: s.shape.c, qmax, r: s.r }));
    let served = !w8 && (conv.groups <= 1 || conv.is_depthwise()) && (res.is_none() || shortcut.is_some());
    let rungs = served.then(|| ladder(&conv.requant, y.c, shortcut, 9 * conv.k_len() as u64)).flatten();
    let thr = match rungs {
        Some(t) => {
            let _ = writeln!(out, "#if defined(NCE_SIMD_SWAR)");
            array(out, "int16_t", &format!("{name}_t"), &t.iter().map(|v| v.to_string()).collect::<Vec<_>>());
            let _ = writeln!(out, "#endif");
            format!(" .thr = NCE_LADDER({name}_t),")
        }
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "static const nce_conv_t {name} = {{\n    .c_in = {}, .h = {}, .w = {}, .ho = {}, .wo = {}, .c_out = {}, .c_conv = {}, \
         .groups = {},\n    .k = {}, .stride = {}, .pad = {}, .w8 = {}, .words = {words},\n    .weights = {}, .m = {}, .b = {}, \
         .shift = {}, .qmax = {},\n    .res_c = {res_c}, .res_w = {res_w}, .res_stride = {res_stride}, .r = {},{thr}\n}};\n",
        x.c,
        x.h,
        x.w,
        y.h,
        y.w,
        y.c,
        conv.c_conv(),
        conv.groups,
        conv.k,
        conv.stride,
        conv.pad,
        w8 as u8,
        syms[0],
        syms[1],
        syms[2],
        conv.requant.shift,
        conv.requant.qmax,
        i32_literal(r),
    );
}

/// Refuses models whose C form would differ from the Rust engine's (checks the Rust engine
/// makes per call, made once here).
fn check(model: &QModel) -> Result<(), CRuntimeError> {
    let net = model.net();
    for step in &model.steps {
        if let Step::Pool { input, .. } = step {
            let sh = shape_of(net, *input);
            if (sh.h * sh.w) as u64 * 255 > i32::MAX as u64 {
                return Err(CRuntimeError::Unsupported(format!("pooling sum over {}x{} pixels can overflow int32", sh.h, sh.w)));
            }
        }
    }
    let dims_fit = |sh: Shape| [sh.c, sh.h, sh.w, sh.numel()].iter().all(|&d| u32::try_from(d).is_ok());
    if !dims_fit(net.input) || net.layers.iter().any(|l| !dims_fit(l.out_shape)) {
        return Err(CRuntimeError::Unsupported("a tensor is larger than 2^32 codes".into()));
    }
    Ok(())
}

/// The body of `nce_run`: one call per step, each followed by its hook.
fn emit_run(out: &mut String, model: &QModel, tensors: &[Option<Tensor>]) {
    let net = model.net();
    let at = |slot: usize| tensors[slot].map_or(0, |t| t.offset);
    let (c, h, w) = (net.input.c, net.input.h, net.input.w);
    let _ = writeln!(out, "int nce_run(const uint8_t *input, int32_t *logits) {{");
    let _ = writeln!(out, "    uint8_t *a = (uint8_t *)nce_arena;");
    let _ = writeln!(out, "    nce_chw_to_hwc(input, a + {}, {c}, {h}, {w});", at(0));
    let _ = writeln!(out, "    NCE_HOOK(0, -1, NCE_HOOK_INPUT, a + {}, {});", at(0), net.input.numel());
    for (s, step) in model.steps.iter().enumerate() {
        let hook = s + 1;
        match step {
            Step::Conv { out: o, input, residual, .. } => {
                let res = residual.as_ref().map_or("NULL".to_string(), |(src, _, _)| format!("a + {}", at(slot(*src))));
                let _ = writeln!(out, "    nce_conv(&nce_s{s}, a + {}, {res}, a + {}, NCE_SCRATCH);", at(slot(*input)), at(o + 1));
                let n = net.layers[*o].out_shape.numel();
                let _ = writeln!(out, "    NCE_HOOK({hook}, {o}, NCE_HOOK_CODES, a + {}, {n});", at(o + 1));
            }
            Step::MaxPool { layer, input, .. } => {
                let _ = writeln!(out, "    nce_maxpool(&nce_s{s}, a + {}, a + {});", at(slot(*input)), at(layer + 1));
                let n = net.layers[*layer].out_shape.numel();
                let _ = writeln!(out, "    NCE_HOOK({hook}, {layer}, NCE_HOOK_CODES, a + {}, {n});", at(layer + 1));
            }
            Step::Pool { layer, input } => {
                let sh = shape_of(net, *input);
                let _ = writeln!(
                    out,
                    "    nce_global_sum(a + {}, {}, {}, (int32_t *)(void *)(a + {}));",
                    at(slot(*input)),
                    sh.h * sh.w,
                    sh.c,
                    at(layer + 1)
                );
                let _ = writeln!(out, "    NCE_HOOK({hook}, {layer}, NCE_HOOK_SUMS, a + {}, {});", at(layer + 1), sh.c);
            }
            Step::Linear { layer, linear } => {
                let _ = writeln!(
                    out,
                    "    if (nce_linear(&nce_s{s}, (const int32_t *)(const void *)(a + {}), logits) != NCE_OK) {{",
                    at(*layer)
                );
                let _ = writeln!(out, "        return NCE_ERR_OVERFLOW;\n    }}");
                let _ = writeln!(out, "    NCE_HOOK({hook}, {layer}, NCE_HOOK_LOGITS, logits, {});", linear.c_out());
            }
        }
    }
    let _ = writeln!(out, "    return NCE_OK;\n}}");
}

/// The largest code of tensor `src` where a conv writes it (its requantisation's qmax).
fn written_qmax(steps: &[Step], src: Src) -> Option<u8> {
    let Src::Layer(j) = src else { return None };
    steps.iter().find_map(|step| match step {
        Step::Conv { out, conv, .. } if *out == j => Some(conv.requant.qmax),
        _ => None,
    })
}

/// The step's constants (arrays and descriptor `nce_s{s}`).
fn emit_step(out: &mut String, net: &Network, steps: &[Step], s: usize, step: &Step) {
    match step {
        Step::Conv { layer, input, out: o, conv, residual } => {
            let add = if o != layer { format!(" + residual add {}", safe(&net.layers[*o].name)) } else { String::new() };
            let _ = writeln!(out, "/* step {s}: {}{add} */", safe(&net.layers[*layer].name));
            let res = residual.as_ref().map(|(src, stride, r)| Shortcut {
                shape: shape_of(net, *src),
                stride: *stride,
                r: *r,
                qmax: written_qmax(steps, *src),
            });
            emit_conv(out, s, conv, shape_of(net, *input), res, net.layers[*o].out_shape);
        }
        Step::MaxPool { layer, input, pool } => {
            let (x, y) = (shape_of(net, *input), net.layers[*layer].out_shape);
            let _ = writeln!(out, "/* step {s}: {} */", safe(&net.layers[*layer].name));
            let _ = writeln!(
                out,
                "static const nce_maxpool_t nce_s{s} = {{ .c = {}, .h = {}, .w = {}, .ho = {}, .wo = {}, .k = {}, .stride = {}, .pad = {} }};\n",
                x.c, x.h, x.w, y.h, y.w, pool.k, pool.stride, pool.pad
            );
        }
        Step::Pool { .. } => {}
        Step::Linear { layer, linear } => {
            let _ = writeln!(out, "/* step {s}: {} */", safe(&net.layers[*layer].name));
            array(out, "int8_t", &format!("nce_s{s}_w"), &linear.weights.data.iter().map(|v| v.to_string()).collect::<Vec<_>>());
            array(out, "int32_t", &format!("nce_s{s}_b"), &linear.bias.iter().map(|&v| i32_literal(v)).collect::<Vec<_>>());
            let _ = writeln!(
                out,
                "static const nce_linear_t nce_s{s} = {{ .c_in = {}, .c_out = {}, .weights = nce_s{s}_w, .bias = nce_s{s}_b }};\n",
                linear.c_in(),
                linear.c_out()
            );
        }
    }
}

pub(super) fn model_header(model: &QModel, steps: usize, arena: usize, scratch: usize) -> String {
    let net = model.net();
    let mut h = String::new();
    let _ = writeln!(h, "/* Generated by nce from a {} model: shapes, memory and the entry point. */", safe(&net.model));
    let _ = writeln!(h, "#ifndef NCE_MODEL_H\n#define NCE_MODEL_H\n\n#include <stdint.h>\n");
    let _ = writeln!(h, "#define NCE_MODEL_NAME \"{}\"", safe(&net.model));
    let _ = writeln!(h, "/* Input: C x H x W uint8 pixels (the dataset layout), used as codes with scale 1/255. */");
    let _ = writeln!(h, "#define NCE_INPUT_C {}\n#define NCE_INPUT_H {}\n#define NCE_INPUT_W {}", net.input.c, net.input.h, net.input.w);
    let _ = writeln!(h, "#define NCE_INPUT_BYTES {}", net.input.numel());
    let _ = writeln!(h, "/* Output: NCE_CLASSES int32 logits; the prediction is the first largest one. */");
    let _ = writeln!(h, "#define NCE_CLASSES {}", net.classes);
    let _ = writeln!(h, "/* Steps of nce_run (hooks number them 1..NCE_STEPS, 0 is the input). */\n#define NCE_STEPS {steps}");
    let _ = writeln!(h, "/* Static RAM: the activation arena, and the SIMD paths' scratch buffer. */");
    let _ = writeln!(h, "#define NCE_ARENA_BYTES {arena}\n#define NCE_SCRATCH_BYTES {scratch}\n");
    let _ = writeln!(h, "/* Runs one image; returns 0 (NCE_OK) or NCE_ERR_OVERFLOW. Not reentrant (one static arena). */");
    let _ = writeln!(h, "int nce_run(const uint8_t *input, int32_t *logits);\n\n#endif /* NCE_MODEL_H */");
    h
}

/// The C package of `model`: the generated model files plus the runtime and harnesses.
pub fn generate(model: &QModel) -> Result<CPackage, CRuntimeError> {
    check(model)?;
    let net = model.net();
    let (tensors, arena) = plan_arena(model);
    let scratch = model
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Conv { conv, .. } => Some(scratch_bytes(conv)),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let mut c = String::new();
    let _ = writeln!(c, "/* Generated by nce: the constants of every layer in execution order and nce_run. */");
    let _ = writeln!(c, "#include \"nce_model.h\"\n#include \"nce_runtime.h\"\n");
    for (s, step) in model.steps.iter().enumerate() {
        emit_step(&mut c, net, &model.steps, s, step);
    }
    let _ = writeln!(c, "static uint32_t nce_arena[NCE_ARENA_BYTES / 4];");
    let _ = writeln!(c, "#if (defined(NCE_SIMD_SWAR) || defined(NCE_SIMD_NEON)) && NCE_SCRATCH_BYTES > 0");
    let _ = writeln!(c, "static uint32_t nce_scratch[NCE_SCRATCH_BYTES / 4];\n#define NCE_SCRATCH nce_scratch\n#else");
    let _ = writeln!(c, "#define NCE_SCRATCH NULL\n#endif\n");
    emit_run(&mut c, model, &tensors);
    let mut files = vec![
        ("nce_model.h".to_string(), model_header(model, model.steps.len(), arena.max(ALIGN), scratch)),
        ("nce_model.c".to_string(), c),
    ];
    files.extend(RUNTIME_FILES.iter().map(|(name, text)| (name.to_string(), text.to_string())));
    let files = files.into_iter().map(|(name, text)| (name, format!("{GENERATED_MARKER}\n{text}"))).collect();
    Ok(CPackage {
        files,
        arena_bytes: arena.max(ALIGN),
        scratch_bytes: scratch,
        steps: model.steps.len(),
        input_bytes: net.input.numel(),
        classes: net.classes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_comment_safe() {
        assert_eq!(safe("layer1.0/*x*/"), "layer1.0__x__");
        assert_eq!(i32_literal(i32::MIN), "(-2147483647 - 1)");
    }
}

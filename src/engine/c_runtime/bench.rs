//! Single-layer programs for instruction-count tables: the layer families of a table
//! ([`layer_jobs`]) become the steps of one generated `nce_run`, so that the Cortex-M7 harness's
//! per-step timer (counting instructions under `-icount`) measures each of them once.

use super::generate::{array, emit_conv_desc, scratch_bytes, Shortcut};
use super::{CPackage, CRuntimeError, RUNTIME_FILES};
use crate::data::Rng;
use crate::engine::measure::{layer_jobs, synthetic_conv, LayerJob, MeasureConfig};
use crate::engine::ConvWeights;
use crate::graph::{Network, Op, Shape};
use std::collections::BTreeMap;
use std::fmt::Write;

/// How a signature's cost follows from the per-step counts.
#[derive(Clone, Debug)]
pub(super) enum Cost {
    /// Hook step `s`'s count.
    Step(usize),
    /// A fused residual add: step `fused` minus step `plain`.
    Difference { fused: usize, plain: usize },
    /// Costs nothing (parameter-free shortcuts).
    Free,
}

/// The generated program and what each signature costs in terms of its steps.
pub(super) struct Bench {
    pub pkg: CPackage,
    pub costs: BTreeMap<String, Cost>,
}

/// Buffers every step shares (sized to the largest job).
#[derive(Default)]
struct Sizes {
    x: usize,
    y: usize,
    res: usize,
    w2: usize,
    w8: usize,
    classes: usize,
    scratch: usize,
}

fn out_shape(x: Shape, c_out: usize, k: usize, stride: usize, pad: usize) -> Shape {
    Shape::new(c_out, (x.h + 2 * pad - k) / stride + 1, (x.w + 2 * pad - k) / stride + 1)
}

/// Emits one conv step (descriptor and call); returns its hook step.
fn conv_step(
    decls: &mut String,
    body: &mut String,
    sizes: &mut Sizes,
    rng: &mut Rng,
    l: &crate::graph::Layer,
    io: (usize, usize),
    residual: bool,
) -> Result<usize, CRuntimeError> {
    let Op::Conv { k, stride, pad, groups, .. } = l.op else { unreachable!("conv job") };
    let (c_in, c_out) = io;
    let w8 = l.wbits > 2;
    let qmax = ((1u32 << l.out_bits.min(8)) - 1) as u8;
    let conv = synthetic_conv(rng, c_in, c_out, k, stride, pad, groups, w8, qmax).map_err(|e| CRuntimeError::Unsupported(e.to_string()))?;
    let x = Shape::new(c_in, l.in_shape.h, l.in_shape.w);
    let y = out_shape(x, c_out, k, stride, pad);
    let step = body.matches("NCE_HOOK(").count();
    let name = format!("nce_b{step}");
    let wsym = match &conv.weights {
        ConvWeights::W2(w) => {
            sizes.w2 = sizes.w2.max(w.words.len());
            "nce_w2"
        }
        ConvWeights::W8(w) => {
            sizes.w8 = sizes.w8.max(w.data.len());
            "(const void *)nce_w8"
        }
    };
    sizes.scratch = sizes.scratch.max(scratch_bytes(&conv));
    // The shortcut tensor holds codes 0..3 (nce_fill below).
    let res = residual.then_some(Shortcut { shape: y, stride: 1, r: 1 << 15, qmax: Some(3) });
    emit_conv_desc(decls, &name, &conv, [x, y], res, &[wsym.to_string(), format!("{name}_m"), format!("{name}_b")]);
    sizes.x = sizes.x.max(x.numel());
    sizes.y = sizes.y.max(y.numel());
    if residual {
        sizes.res = sizes.res.max(y.numel());
    }
    let input = if w8 { "nce_x8" } else { "nce_x" };
    let r = if residual { "nce_res" } else { "NULL" };
    let _ =
        writeln!(body, "    nce_conv(&{name}, {input}, {r}, nce_y, NCE_SCRATCH);\n    NCE_HOOK({step}, {step}, NCE_HOOK_CODES, nce_y, 0);");
    Ok(step)
}

/// Emits one job; returns how its cost is read.
fn job_step(decls: &mut String, body: &mut String, sizes: &mut Sizes, rng: &mut Rng, job: &LayerJob) -> Result<Cost, CRuntimeError> {
    let step = body.matches("NCE_HOOK(").count();
    Ok(match job {
        LayerJob::Conv { c_in, c_out, l, residual: false } => Cost::Step(conv_step(decls, body, sizes, rng, l, (*c_in, *c_out), false)?),
        LayerJob::Conv { c_in, c_out, l, residual: true } => {
            let plain = conv_step(decls, body, sizes, rng, l, (*c_in, *c_out), false)?;
            let fused = conv_step(decls, body, sizes, rng, l, (*c_in, *c_out), true)?;
            Cost::Difference { fused, plain }
        }
        LayerJob::Pool { c, l } => {
            let n = l.in_shape.h * l.in_shape.w;
            sizes.x = sizes.x.max(n * c);
            let _ =
                writeln!(body, "    nce_global_sum(nce_x, {n}, {c}, nce_sums);\n    NCE_HOOK({step}, {step}, NCE_HOOK_SUMS, nce_sums, 0);");
            sizes.y = sizes.y.max(4 * c);
            Cost::Step(step)
        }
        LayerJob::Linear { c_in, l } => {
            let (n, o) = (c_in * l.in_shape.h * l.in_shape.w, l.out_shape.c);
            sizes.w8 = sizes.w8.max(n * o);
            sizes.classes = sizes.classes.max(o);
            sizes.y = sizes.y.max(4 * n);
            let _ = writeln!(
                decls,
                "static const nce_linear_t nce_b{step} = {{ .c_in = {n}, .c_out = {o}, .weights = nce_w8, .bias = nce_bias }};"
            );
            let _ = writeln!(
                body,
                "    (void)nce_linear(&nce_b{step}, nce_sums, logits);\n    NCE_HOOK({step}, {step}, NCE_HOOK_LOGITS, logits, 0);"
            );
            Cost::Step(step)
        }
        LayerJob::MaxPool { c, l } => {
            let Op::MaxPool { k, stride, pad } = l.op else { unreachable!("max-pool job") };
            let x = Shape::new(*c, l.in_shape.h, l.in_shape.w);
            let y = out_shape(x, *c, k, stride, pad);
            sizes.x = sizes.x.max(x.numel());
            sizes.y = sizes.y.max(y.numel());
            let _ = writeln!(
                decls,
                "static const nce_maxpool_t nce_b{step} = {{ .c = {c}, .h = {}, .w = {}, .ho = {}, .wo = {}, .k = {k}, .stride = {stride}, .pad = {pad} }};",
                x.h, x.w, y.h, y.w
            );
            let _ =
                writeln!(body, "    nce_maxpool(&nce_b{step}, nce_x8, nce_y);\n    NCE_HOOK({step}, {step}, NCE_HOOK_CODES, nce_y, 0);");
            Cost::Step(step)
        }
        LayerJob::Free => Cost::Free,
    })
}

/// The program running every layer family of `net` over `cfg`'s width grid once.
pub(super) fn generate_bench(net: &Network, cfg: &MeasureConfig) -> Result<Bench, CRuntimeError> {
    let jobs = layer_jobs(net, cfg).map_err(|e| CRuntimeError::Unsupported(e.to_string()))?;
    let mut rng = Rng::new(0x6d65_6173);
    let (mut decls, mut body, mut sizes) =
        (String::new(), String::from("    NCE_HOOK(0, -1, NCE_HOOK_INPUT, nce_x, 0);\n"), Sizes::default());
    let mut costs = BTreeMap::new();
    for (sig, job) in &jobs {
        costs.insert(sig.clone(), job_step(&mut decls, &mut body, &mut sizes, &mut rng, job)?);
    }
    let steps = body.matches("NCE_HOOK(").count() - 1;
    let mut c = String::from("/* Generated by nce: one step per layer family of a latency table (instruction counts). */\n");
    let _ = writeln!(c, "#include \"nce_model.h\"\n#include \"nce_runtime.h\"\n");
    let words: Vec<String> = (0..sizes.w2.max(1)).map(|_| format!("0x{:08x}u", rng.below(1 << 32) as u32)).collect();
    array(&mut c, "uint32_t", "nce_w2", &words);
    let bytes: Vec<String> = (0..sizes.w8.max(1)).map(|_| (rng.below(255) as i64 - 127).to_string()).collect();
    array(&mut c, "int8_t", "nce_w8", &bytes);
    let bias: Vec<String> = (0..sizes.classes.max(1)).map(|_| (rng.below(2000) as i64 - 1000).to_string()).collect();
    array(&mut c, "int32_t", "nce_bias", &bias);
    c.push_str(&decls);
    for (name, n) in [("nce_x", sizes.x), ("nce_x8", sizes.x), ("nce_res", sizes.res), ("nce_y", sizes.y)] {
        let _ = writeln!(c, "static uint32_t {name}_words[{}];\n#define {name} ((uint8_t *)(void *){name}_words)", n.div_ceil(4).max(1));
    }
    let _ = writeln!(c, "#define nce_sums ((int32_t *)(void *)nce_y_words)");
    let _ = writeln!(c, "#if (defined(NCE_SIMD_SWAR) || defined(NCE_SIMD_NEON)) && NCE_SCRATCH_BYTES > 0");
    let _ = writeln!(
        c,
        "static uint32_t nce_scratch[NCE_SCRATCH_BYTES / 4];\n#define NCE_SCRATCH nce_scratch\n#else\n#define NCE_SCRATCH NULL\n#endif\n"
    );
    c.push_str(FILL);
    let _ = writeln!(c, "int nce_run(const uint8_t *input, int32_t *logits) {{\n    (void)input;\n    (void)logits;");
    let _ = writeln!(c, "    (void)nce_w2;\n    (void)nce_w8;\n    (void)nce_bias;");
    let _ =
        writeln!(c, "    nce_fill(nce_x, {0}, 4);\n    nce_fill(nce_x8, {0}, 256);\n    nce_fill(nce_res, {1}, 4);", sizes.x, sizes.res);
    let _ = writeln!(c, "    nce_fill_sums(nce_sums, {});", sizes.y / 4);
    let _ = write!(c, "{body}    return NCE_OK;\n}}\n");
    let h = format!(
        "#ifndef NCE_MODEL_H\n#define NCE_MODEL_H\n#include <stdint.h>\n#define NCE_MODEL_NAME \"{}-bench\"\n#define NCE_INPUT_BYTES 1\n\
         #define NCE_CLASSES {}\n#define NCE_STEPS {steps}\n#define NCE_ARENA_BYTES 0\n#define NCE_SCRATCH_BYTES {}\n\
         int nce_run(const uint8_t *input, int32_t *logits);\n#endif\n",
        net.model.replace(|ch: char| !ch.is_ascii_alphanumeric(), "_"),
        sizes.classes.max(1),
        sizes.scratch
    );
    let mut files = vec![("nce_model.h".to_string(), h), ("nce_model.c".to_string(), c)];
    files.extend(RUNTIME_FILES.iter().map(|(n, t)| (n.to_string(), t.to_string())));
    let pkg = CPackage { files, arena_bytes: 0, scratch_bytes: sizes.scratch, steps, input_bytes: 1, classes: sizes.classes.max(1) };
    Ok(Bench { pkg, costs })
}

/// Deterministic codes `0..modulo` and pooled sums in the range of real ones.
const FILL: &str = "static void nce_fill(uint8_t *p, uint32_t n, uint32_t modulo) {
    uint32_t s = 12345u, i;
    for (i = 0; i < n; i++) {
        s = s * 1103515245u + 12345u;
        p[i] = (uint8_t)((s >> 16) % modulo);
    }
}

static void nce_fill_sums(int32_t *p, uint32_t n) {
    uint32_t s = 6789u, i;
    for (i = 0; i < n; i++) {
        s = s * 1103515245u + 12345u;
        p[i] = (int32_t)((s >> 16) % 193u);
    }
}

";

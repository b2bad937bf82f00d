//! The C runtime (`nce export --c-runtime`): compiled for this machine with
//! `-std=c99 -Wall -Wextra -Werror`, every layer's output equals the Rust engine's; compiled
//! for Cortex-M7 and AArch64 (both kernel paths) and run under QEMU, every logit does.
//! The QEMU test needs `scripts/setup`'s cross compilers and emulators. (No libtorch needed.)

mod common;

use common::Rng;
use nce::engine::c_runtime::{generate, CBuild, CTarget, Kernels, TraceRecord};
use nce::engine::cpu::{self, Cpu};
use nce::engine::plan::{Header, LayerOut, QModel, Step};
use nce::export::format::Container;
use nce::graph::{build, BitConfig, ModelKind, Network, Shape, Src};
use std::collections::BTreeMap;
use std::path::Path;

const MODEL: &str = "examples/resnet20-w2a2-fashion.nce";

fn example() -> (QModel, Vec<u8>) {
    let model = QModel::load(Path::new(MODEL)).unwrap();
    let ds = nce::data::load("fashion-mnist", Path::new("data"), nce::data::Split::Test).unwrap().subset(3);
    (model, ds.images)
}

/// ResNet-20 at odd widths on a 3×9×9 input with random parameters: reductions that are not
/// multiples of 16 codes, option-A shortcuts that subsample and zero-pad channels, odd sizes.
fn odd_model(seed: u64) -> QModel {
    odd_model_with(seed, &BitConfig::uniform(2))
}

/// The odd model with one 2-bit conv that reads 8-bit codes (a W2A8 override): the ARMv7E-M
/// path multiplies four 2-bit codes per instruction and must hand that layer to the reference.
fn odd_w2a8_model(seed: u64) -> QModel {
    let mut bits = BitConfig::uniform(2);
    bits.overrides.insert("layer1.0.conv_a".into(), (2, 8));
    odd_model_with(seed, &bits)
}

/// The largest code the engine feeds layer `name` on these images.
fn max_input_code(model: &QModel, name: &str, images: &[u8]) -> u8 {
    let cpu = Cpu::new(cpu::Backend::Scalar, 1).unwrap();
    let prepared = model.prepare(&cpu).unwrap();
    let net = model.net();
    let layer = net.layers.iter().find(|l| l.name == name).unwrap();
    let Src::Layer(producer) = layer.inputs[0] else { panic!("{name} reads the image") };
    let mut max = 0;
    for image in images.chunks_exact(net.input.numel()) {
        let layers = model.run_layers(&cpu, &prepared, image).unwrap();
        let Some(LayerOut::Codes(t)) = layers[producer].as_ref() else { panic!("{name}'s input is not codes") };
        max = max.max(t.data.iter().copied().max().unwrap_or(0));
    }
    max
}

fn odd_model_with(seed: u64, bits: &BitConfig) -> QModel {
    let mut widths = vec![5usize; 19];
    widths[7..13].fill(7);
    widths[13..].fill(11);
    let net = build(ModelKind::Resnet20, Shape::new(3, 9, 9), 7, Some(&widths), bits).unwrap();
    QModel::from_container(&random_container(&net, seed)).unwrap()
}

fn random_container(net: &Network, seed: u64) -> Container {
    let h = Header { kind: "nce-model".into(), net: net.clone(), profile: None, source: None, scales: BTreeMap::new() };
    Container { header: serde_json::to_string(&h).unwrap(), arrays: common::random_arrays(net, seed) }
}

/// The Rust engine's output of every hook step for every image: (image, step, values).
fn engine_trace(model: &QModel, images: &[u8]) -> Vec<(usize, usize, Vec<i32>)> {
    let cpu = Cpu::new(cpu::Backend::Scalar, 1).unwrap();
    let prepared = model.prepare(&cpu).unwrap();
    let per = model.net().input.numel();
    let mut out = Vec::new();
    for (i, image) in images.chunks_exact(per).enumerate() {
        let layers = model.run_layers(&cpu, &prepared, image).unwrap();
        for (s, step) in model.steps.iter().enumerate() {
            let layer = match step {
                Step::Conv { out, .. } => *out,
                Step::MaxPool { layer, .. } | Step::Pool { layer, .. } | Step::Linear { layer, .. } => *layer,
            };
            let values = match layers[layer].as_ref().unwrap() {
                LayerOut::Codes(t) => t.data.iter().map(|&q| q as i32).collect(),
                LayerOut::Sums(v) | LayerOut::Logits(v) => v.clone(),
            };
            out.push((i, s + 1, values));
        }
    }
    out
}

/// Every step's output of the C build equals the engine's (the input conversion too).
fn assert_same_layers(model: &QModel, images: &[u8], trace: &[TraceRecord]) {
    let expected = engine_trace(model, images);
    let steps: Vec<&TraceRecord> = trace.iter().filter(|r| r.step > 0).collect();
    assert_eq!(steps.len(), expected.len(), "one record per step and image");
    let mut compared = 0;
    for (r, (image, step, values)) in steps.iter().zip(&expected) {
        assert_eq!((r.image, r.step), (*image, *step));
        let differ = r.values.iter().zip(values).filter(|(a, b)| a != b).count();
        assert!(differ == 0 && r.values.len() == values.len(), "image {image} step {step} (layer {}): {differ} values differ", r.layer);
        compared += values.len();
    }
    assert!(compared > 0);
    let inputs = trace.iter().filter(|r| r.step == 0).count();
    assert_eq!(inputs, images.len() / model.net().input.numel());
}

fn engine_logits(model: &QModel, images: &[u8]) -> Vec<Vec<i32>> {
    let cpu = Cpu::new(cpu::Backend::Scalar, 1).unwrap();
    model.run_batch(&cpu, &model.prepare(&cpu).unwrap(), images, 2).unwrap()
}

fn random_images(model: &QModel, n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    rng.codes_u8(n * model.net().input.numel(), 255)
}

#[test]
fn host_c_matches_every_layer_of_the_example_model() {
    let (model, images) = example();
    let pkg = generate(&model).unwrap();
    let build = CBuild::compile(&pkg, CTarget::Host, Kernels::Simd, true).unwrap();
    let out = build.run(&images, 2, false).unwrap();
    assert_same_layers(&model, &images, &out.trace);
    assert_eq!(out.logits, engine_logits(&model, &images));
}

/// Both kernel sets on odd shapes (byte-wise receptive fields, reductions that are not whole
/// words) and on a 2-bit conv reading 8-bit codes (which the SWAR path hands to the reference).
#[test]
fn host_c_matches_every_layer_on_odd_shapes() {
    let w2a8 = odd_w2a8_model(4);
    for (model, seed) in [(odd_model(1), 1), (odd_model(2), 2), (w2a8, 3)] {
        let images = random_images(&model, 4, seed);
        for kernels in [Kernels::Scalar, Kernels::Simd] {
            let build = CBuild::compile(&generate(&model).unwrap(), CTarget::Host, kernels, true).unwrap();
            let out = build.run(&images, 1, false).unwrap();
            assert_same_layers(&model, &images, &out.trace);
            let logits = engine_logits(&model, &images);
            assert_eq!(out.logits, logits);
            assert!(logits.iter().any(|l| l.iter().any(|&v| v != l[0])), "random parameters should give varied logits");
        }
    }
}

#[test]
fn the_arena_reuses_memory_and_the_package_is_self_contained() {
    let (model, _) = example();
    let pkg = generate(&model).unwrap();
    let net = model.net();
    let all: usize = net.input.numel() + net.layers.iter().map(|l| l.out_shape.numel()).sum::<usize>();
    let largest_pair = 28 * 28 * 16 * 2;
    assert!(pkg.arena_bytes >= largest_pair && pkg.arena_bytes < all / 2, "arena {} of {all}", pkg.arena_bytes);
    let names: Vec<&str> = pkg.files.iter().map(|(n, _)| n.as_str()).collect();
    for f in ["nce_model.h", "nce_model.c", "nce_runtime.h", "nce_runtime.c"] {
        assert!(names.contains(&f), "{f} in {names:?}");
    }
    let c = &pkg.files.iter().find(|(n, _)| n == "nce_model.c").unwrap().1;
    assert!(!c.contains("malloc") && !c.contains("float") && !c.contains("double"));
    // Constants in execution order: step 0's weights come first.
    assert!(c.find("nce_s0_w").unwrap() < c.find("nce_s1_w").unwrap());
}

/// Both QEMU targets and both kernel paths, every logit, on the odd model and a few images of
/// the example model.
#[test]
fn qemu_targets_match_the_engine() {
    let odd = odd_model(3);
    let odd_images = random_images(&odd, 3, 3);
    let w2a8 = odd_w2a8_model(4);
    assert!(max_input_code(&w2a8, "layer1.0.conv_a", &odd_images) > 3, "a 2-bit conv reads 8-bit codes");
    let (model, images) = example();
    for target in [CTarget::CortexM7, CTarget::AArch64] {
        target.check_tools().unwrap_or_else(|e| panic!("{e}"));
        for kernels in [Kernels::Scalar, Kernels::Simd] {
            for (m, imgs) in [(&odd, &odd_images), (&w2a8, &odd_images), (&model, &images)] {
                let build = CBuild::compile(&generate(m).unwrap(), target, kernels, false).unwrap();
                let out = build.run(imgs, 2, false).unwrap_or_else(|e| panic!("{target:?} {kernels:?}: {e}"));
                assert_eq!(out.logits, engine_logits(m, imgs), "{target:?} {kernels:?} on {}", m.net().model);
            }
        }
    }
}

/// Flash, RAM and instruction counts of the Cortex-M7 build: consistent with each other and
/// with the model (per-step counts add up to the whole, the fast path needs fewer instructions
/// than MACs and than the scalar reference, the calibration matches `-icount shift=0` on a 25 MHz timer).
#[test]
fn cortex_m7_counts_flash_ram_and_instructions() {
    use nce::engine::c_runtime::resource_report;
    let (model, images) = example();
    let images = &images[..2 * model.net().input.numel()];
    let scalar = resource_report(&model, Kernels::Scalar, images).unwrap();
    let dsp = resource_report(&model, Kernels::Simd, images).unwrap();
    let packed: u64 = model.net().layers.iter().filter(|l| l.wbits == 2).map(|l| l.weight_count() as u64 / 4).sum();
    for r in [&scalar, &dsp] {
        assert_eq!(r.images, 2);
        assert!((35.0..45.0).contains(&r.insn_per_tick), "{r:?}");
        assert!(r.flash_bytes > packed && r.flash_bytes < 3 * packed, "flash {} for {packed} packed weight bytes", r.flash_bytes);
        assert!(r.static_ram_bytes >= r.arena_bytes + r.scratch_bytes && r.static_ram_bytes < r.arena_bytes + r.scratch_bytes + 64);
        assert!(r.stack_bytes > 0 && r.stack_bytes < 4096, "stack {}", r.stack_bytes);
        let sum: f64 = r.steps.iter().map(|s| s.instructions).sum();
        assert!((sum - r.instructions).abs() < 0.01 * r.instructions, "steps {sum} vs whole {}", r.instructions);
    }
    let macs = model.net().macs() as f64;
    assert!(scalar.instructions > macs, "at least one instruction per MAC on the scalar reference");
    // Four 2-bit MACs per multiply, four pixels per weight word: fewer instructions than MACs.
    assert!(dsp.instructions < 0.9 * macs, "fast path {} for {macs} MACs", dsp.instructions);
    assert!(dsp.instructions < 0.6 * scalar.instructions, "dsp {} scalar {}", dsp.instructions, scalar.instructions);
    assert_eq!(scalar.steps.len(), model.steps.len() + 1);
}

/// `nce measure --backend qemu-cortex-m7`: one counted entry per signature of the table, larger
/// for wider layers.
#[test]
fn cortex_m7_instruction_table_covers_every_layer_family() {
    use nce::engine::c_runtime::measure_insn_table;
    use nce::engine::measure::{layer_jobs, MeasureConfig};
    let net = build(ModelKind::Resnet20, Shape::new(1, 8, 8), 10, None, &BitConfig::uniform(2)).unwrap();
    let cfg = MeasureConfig { grid: vec![0.5, 1.0], ..Default::default() };
    let table = measure_insn_table(&net, &cfg, Kernels::Simd).unwrap();
    let jobs = layer_jobs(&net, &cfg).unwrap();
    assert_eq!(table.entries.keys().collect::<Vec<_>>(), jobs.keys().collect::<Vec<_>>());
    let us = |sig: &str| table.lookup_us(sig).unwrap_or_else(|| panic!("{sig}"));
    let conv = net.layers.iter().find(|l| l.name == "layer1.0.conv_a").unwrap();
    let (i, o) = (conv.in_shape.c, conv.out_shape.c);
    let sig = conv.signature();
    let half = sig.replace(&format!("_i{i}_o{o}_"), &format!("_i{i}_o{}_", o / 2));
    assert!(us(&sig) > 1.5 * us(&half) && us(&half) > 0.0, "{sig} {} vs {half} {}", us(&sig), us(&half));
    for l in &net.layers {
        assert!(table.lookup_us(&l.signature()).is_some(), "{}", l.signature());
    }
    assert_eq!(table.meta["clock_mhz"], "216");
}

/// The int8 peer (`nce measure --check MODEL --int8-peer`): the same network as plain int8 C
/// compiles strictly for the host, its reference and DSP paths give the same logits on the
/// host and on the Cortex-M7 (odd channel counts: the element-wise patch; the example model's
/// multiples of 4: the word-wise one), the logits vary with the image (not all clamped), and
/// the counts add up per step.
#[test]
fn int8_peer_runs_the_same_shapes_on_host_and_cortex_m7() {
    use nce::engine::c_runtime::{generate_int8_peer, int8_peer_report};
    let odd = odd_model(4);
    let (example, _) = example();
    for (model, images) in [(&odd, random_images(&odd, 3, 4)), (&example, random_images(&example, 2, 5))] {
        let peer = generate_int8_peer(model).unwrap();
        let host = CBuild::compile(&peer.pkg, CTarget::Host, Kernels::Scalar, false).unwrap().run(&images, 1, false).unwrap().logits;
        assert!(host.iter().any(|l| l != &host[0]) && host[0].iter().any(|&v| v != host[0][0]), "{host:?}");
        for kernels in [Kernels::Scalar, Kernels::Simd] {
            let m7 = CBuild::compile(&peer.pkg, CTarget::CortexM7, kernels, false).unwrap().run(&images, 1, false).unwrap();
            assert_eq!(m7.logits, host, "{kernels:?} on {}", model.net().model);
        }
    }
    let (images, peer) = (random_images(&odd, 1, 6), generate_int8_peer(&odd).unwrap());
    let r = int8_peer_report(&odd, Kernels::Simd, &images).unwrap();
    let sum: f64 = r.steps.iter().map(|s| s.instructions).sum();
    assert!((sum - r.instructions).abs() < 0.01 * r.instructions, "steps {sum} vs whole {}", r.instructions);
    assert_eq!(r.steps.len(), peer.step_names.len());
    assert!(r.flash_bytes > odd.net().layers.iter().map(|l| l.weight_count() as u64).sum::<u64>());
}

/// `nce export CKPT -o m.nce --c-runtime DIR` end to end, as a user runs it: the package on
/// disk compiles for this machine with `cc -std=c99 -Wall -Wextra -Werror`, and its hosted
/// harness gives the engine's logits for the exported model on a few test images.
#[cfg(all(feature = "cli", feature = "train"))]
#[test]
fn cli_export_writes_a_c_package_that_compiles_and_matches_the_engine() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let (model_path, pkg) = (dir.path().join("m.nce"), dir.path().join("c"));
    let o = Command::new(env!("CARGO_BIN_EXE_nce"))
        .args(["export", "examples/resnet20-w2a2-fashion.ot", "-o"])
        .arg(&model_path)
        .arg("--c-runtime")
        .arg(&pkg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cc = Command::new("cc")
        .current_dir(&pkg)
        .args(["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "nce_model.c", "nce_runtime.c", "nce_main.c", "-o", "nce_main"])
        .output()
        .unwrap();
    assert!(cc.status.success(), "{}", String::from_utf8_lossy(&cc.stderr));
    let model = QModel::load(&model_path).unwrap();
    let images = nce::data::load("fashion-mnist", Path::new("data"), nce::data::Split::Test).unwrap().subset(4).images;
    std::fs::write(pkg.join("in.bin"), &images).unwrap();
    let run = Command::new(pkg.join("nce_main")).current_dir(&pkg).args(["in.bin", "out.bin"]).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let bytes = std::fs::read(pkg.join("out.bin")).unwrap();
    let logits: Vec<Vec<i32>> =
        bytes.chunks_exact(40).map(|c| c.chunks_exact(4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]])).collect()).collect();
    assert_eq!(logits.len(), 4);
    assert_eq!(logits, engine_logits(&model, &images));
}

/// The SIMD paths' epilogue (`nce_epilogue_px`: requantisation on 32-bit halves) against the
/// reference `nce_epilogue` (int64, floor shift): every shift in 0..=30 with the extremes of every
/// operand, with and without a shortcut, on conv-only and shortcut-only channels, then random
/// operands (`tests/c/simd_epilogue.c`).
#[test]
fn simd_epilogue_matches_the_reference_on_every_shift_and_extreme() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("simd_epilogue");
    let cc = Command::new("cc")
        .args(["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-Isrc/engine/c_runtime/c", "tests/c/simd_epilogue.c", "-o"])
        .arg(&exe)
        .output()
        .unwrap();
    assert!(cc.status.success(), "{}", String::from_utf8_lossy(&cc.stderr));
    let run = Command::new(&exe).output().unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success() && out.starts_with("0 of "), "{out}");
}

/// One conv call of the C kernel harness: the conv, its input and an optional shortcut
/// `(tensor, stride, r)`.
struct ConvCase {
    conv: nce::engine::Conv2d,
    x: nce::engine::QTensor,
    res: Option<(nce::engine::QTensor, usize, i32)>,
}

impl ConvCase {
    fn residual(&self) -> Option<nce::engine::Residual<'_>> {
        self.res.as_ref().map(|(t, stride, r)| nce::engine::Residual { input: t, stride: *stride, r: *r })
    }

    fn expected(&self) -> Vec<u8> {
        cpu::reference::conv2d(&self.conv, &self.x, self.residual().as_ref()).unwrap().data
    }
}

/// A depthwise case: channels, h, w, k, stride, pad, input code max, shortcut (channels, stride).
type DwCase = (usize, usize, usize, usize, usize, usize, u8, Option<(usize, usize)>);

/// Random depthwise convs (stride 1 and 2, odd sizes and channel counts that are not multiples
/// of 4 or 16, 3×3 with and without padding, 1×1 and 5×5, shortcuts with more and fewer
/// channels, 2-bit and 8-bit input codes, extreme requantisation), then grouped convs that are
/// not depthwise and an 8-bit-weight depthwise conv (which every build hands to the reference).
fn grouped_cases() -> Vec<ConvCase> {
    use nce::engine::{Conv2d, QTensor};
    let mut rng = Rng::new(26);
    let shapes: [DwCase; 16] = [
        (3, 5, 5, 3, 1, 1, 3, None),
        (3, 7, 5, 3, 2, 1, 3, None),
        (4, 8, 8, 3, 1, 1, 3, None),
        (5, 9, 7, 3, 2, 1, 3, None),
        (8, 6, 6, 3, 2, 1, 3, None),
        (13, 5, 9, 3, 1, 1, 3, Some((13, 1))),
        (16, 4, 4, 3, 1, 1, 3, None),
        (17, 7, 7, 3, 2, 1, 3, Some((19, 2))),
        (35, 3, 3, 3, 1, 1, 3, None),
        (36, 6, 5, 3, 2, 1, 3, Some((30, 1))),
        (7, 6, 7, 3, 1, 0, 3, None),
        (6, 5, 5, 1, 2, 0, 3, None),
        (9, 8, 7, 5, 1, 2, 3, None),
        (20, 7, 9, 3, 2, 1, 255, None),
        (33, 9, 9, 3, 1, 1, 1, None),
        (2, 1, 1, 3, 1, 1, 3, None),
    ];
    let shifts = [0u32, 1, 7, 16, 22, 30];
    let qmaxes = [1u8, 3, 15, 255];
    let mut cases = Vec::new();
    for (i, &(c, h, w, k, stride, pad, amax, res)) in shapes.iter().enumerate() {
        let (shift, qmax) = (shifts[i % shifts.len()], qmaxes[i % qmaxes.len()]);
        let weights = common::random_weights(&mut rng, c, k * k, false, -127);
        let mut requant = common::spread_requant(&mut rng, c, k * k, amax, false, shift, qmax);
        if i % 3 == 2 {
            // Extremes: the int64 sum must not wrap anywhere.
            for (o, (m, b)) in requant.m.iter_mut().zip(requant.b.iter_mut()).enumerate() {
                *m = [i32::MAX, i32::MIN, -1, 1][o % 4];
                *b = [i32::MIN, i32::MAX, 0, i32::MAX][(o / 4) % 4];
            }
        }
        let conv = Conv2d::grouped(c, c, k, stride, pad, weights, requant).unwrap();
        assert!(conv.is_depthwise());
        let x = rng.tensor(h, w, c, amax);
        let (ho, wo) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
        let r_scale = if i % 2 == 0 { 1 << 20 } else { i32::MIN };
        let res = res.map(|(rc, rs)| (rng.tensor(ho * rs, wo * rs, rc, qmax), rs, r_scale));
        cases.push(ConvCase { conv, x, res });
    }
    for (c_in, groups, c_out, w8) in [(6, 3, 9, false), (8, 2, 4, false), (4, 2, 4, true), (5, 5, 5, true)] {
        let k_len = 9 * c_in / groups;
        let weights = common::random_weights(&mut rng, c_out, k_len, w8, -127);
        let requant = common::spread_requant(&mut rng, c_out, k_len, 3, w8, 16, 3);
        let conv = Conv2d::grouped(c_in, groups, 3, 1, 1, weights, requant).unwrap();
        cases.push(ConvCase { conv, x: QTensor::new(5, 6, c_in, rng.codes_u8(30 * c_in, 3)).unwrap(), res: None });
    }
    cases
}

fn c_array<T: ToString>(out: &mut String, ty: &str, name: &str, values: impl Iterator<Item = T>) {
    let values: Vec<String> = values.map(|v| v.to_string()).collect();
    out.push_str(&format!(
        "static const {ty} {name}[{}] = {{{}}};\n",
        values.len().max(1),
        if values.is_empty() { "0".into() } else { values.join(", ") }
    ));
}

fn c_i32(v: i32) -> String {
    if v == i32::MIN {
        "(-2147483647 - 1)".into()
    } else {
        v.to_string()
    }
}

/// A C program that runs every case through `nce_conv` (the build's fastest path) and
/// `nce_conv_ref`, printing `case fast|ref codes…` per line.
fn grouped_cases_program(cases: &[ConvCase]) -> String {
    use nce::engine::ConvWeights;
    let mut c = String::from("#include <stdio.h>\n#include \"nce_runtime.h\"\n\n");
    let (mut scratch, mut out) = (16usize, 1usize);
    for (i, case) in cases.iter().enumerate() {
        let (conv, x) = (&case.conv, &case.x);
        let (w8, words) = match &conv.weights {
            ConvWeights::W2(w) => {
                c_array(&mut c, "uint32_t", &format!("w{i}"), w.words.iter().map(|v| format!("0x{v:08x}u")));
                (0, w.words_per_channel())
            }
            ConvWeights::W8(w) => {
                c_array(&mut c, "int8_t", &format!("w{i}"), w.data.iter());
                (1, 0)
            }
        };
        c_array(&mut c, "int32_t", &format!("m{i}"), conv.requant.m.iter().map(|&v| c_i32(v)));
        c_array(&mut c, "int32_t", &format!("b{i}"), conv.requant.b.iter().map(|&v| c_i32(v)));
        c_array(&mut c, "uint8_t", &format!("x{i}"), x.data.iter());
        let (res_c, res_w, res_stride, r) = match &case.res {
            Some((t, s, r)) => {
                c_array(&mut c, "uint8_t", &format!("r{i}"), t.data.iter());
                (t.c, t.w, *s, *r)
            }
            None => (0, 0, 1, 0),
        };
        let d = conv.dims(x, case.residual().as_ref()).unwrap();
        c.push_str(&format!(
            "static const nce_conv_t l{i} = {{ .c_in = {}, .h = {}, .w = {}, .ho = {}, .wo = {}, .c_out = {}, .c_conv = {}, .groups = {}, \
             .k = {}, .stride = {}, .pad = {}, .w8 = {w8}, .words = {words}, .weights = w{i}, .m = m{i}, .b = b{i}, .shift = {}, \
             .qmax = {}, .res_c = {res_c}, .res_w = {res_w}, .res_stride = {res_stride}, .r = {} }};\n\n",
            conv.c_in,
            x.h,
            x.w,
            d.ho,
            d.wo,
            d.c_out,
            d.c_conv,
            conv.groups,
            conv.k,
            conv.stride,
            conv.pad,
            conv.requant.shift,
            conv.requant.qmax,
            c_i32(r)
        ));
        scratch = scratch.max(conv.k * conv.k * (2 * conv.c_in.next_multiple_of(4)).max(conv.c_in.next_multiple_of(16)));
        scratch = scratch.max(nce::engine::words_for(conv.k_len()) * 16);
        out = out.max(d.ho * d.wo * d.c_out);
    }
    c.push_str(&format!("static uint32_t scratch[{}];\nstatic uint8_t y[{out}];\n\n", scratch / 4));
    c.push_str("static void show(int i, const char *kind, uint32_t n) {\n    uint32_t j;\n    printf(\"%d %s\", i, kind);\n");
    c.push_str("    for (j = 0; j < n; j++) {\n        printf(\" %u\", y[j]);\n    }\n    printf(\"\\n\");\n}\n\nint main(void) {\n");
    for (i, case) in cases.iter().enumerate() {
        let r = if case.res.is_some() { format!("r{i}") } else { "NULL".into() };
        let n = case.expected().len();
        c.push_str(&format!("    nce_conv(&l{i}, x{i}, {r}, y, scratch);\n    show({i}, \"fast\", {n});\n"));
        c.push_str(&format!("    nce_conv_ref(&l{i}, x{i}, {r}, y);\n    show({i}, \"ref\", {n});\n"));
    }
    c.push_str("    return 0;\n}\n");
    c
}

/// Compiles the case program with `compiler` and `flags` (beside the runtime) and runs it
/// (under `emulator` when given); returns its output.
fn run_cases_program(dir: &Path, program: &str, compiler: &str, flags: &[&str], emulator: Option<&str>) -> String {
    use std::process::Command;
    let src = dir.join("cases.c");
    std::fs::write(&src, program).unwrap();
    let exe = dir.join(format!("cases-{compiler}-{}", flags.join("").replace(['-', '=', ','], "")));
    let cc = Command::new(compiler)
        .args(["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-Isrc/engine/c_runtime/c"])
        .args(flags)
        .arg(&src)
        .arg("src/engine/c_runtime/c/nce_runtime.c")
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(cc.status.success(), "{compiler} {flags:?}: {}", String::from_utf8_lossy(&cc.stderr));
    let run = match emulator {
        Some(emu) => Command::new(emu).arg(&exe).output().unwrap(),
        None => Command::new(&exe).output().unwrap(),
    };
    assert!(run.status.success(), "{compiler} {flags:?}: {}", common::text(&run));
    String::from_utf8(run.stdout).unwrap()
}

/// Whether this machine's `cc` builds and runs a program with AddressSanitizer and UBSan.
fn sanitizers_work(dir: &Path) -> bool {
    use std::process::Command;
    let (src, exe) = (dir.join("probe.c"), dir.join("probe"));
    std::fs::write(&src, "int main(void) { return 0; }\n").unwrap();
    let built = Command::new("cc").args(["-fsanitize=address,undefined"]).arg(&src).arg("-o").arg(&exe).output();
    built.is_ok_and(|o| o.status.success()) && Command::new(&exe).status().is_ok_and(|s| s.success())
}

/// Every case's output from both functions equals `reference::conv2d`'s.
fn assert_cases_match(cases: &[ConvCase], output: &str, what: &str) {
    let mut seen = 0;
    for line in output.lines() {
        let mut f = line.split_whitespace();
        let (i, kind) = (f.next().unwrap().parse::<usize>().unwrap(), f.next().unwrap());
        let got: Vec<u8> = f.map(|v| v.parse().unwrap()).collect();
        let want = cases[i].expected();
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        let c = &cases[i].conv;
        assert!(
            got.len() == want.len() && differ == 0,
            "{what} {kind}: case {i} (c_in {} groups {} k {} stride {}): {differ} of {} codes differ",
            c.c_in,
            c.groups,
            c.k,
            c.stride,
            want.len()
        );
        seen += 1;
    }
    assert_eq!(seen, 2 * cases.len(), "{what}: {output}");
}

/// The C runtime's depthwise and grouped convs, compiled for this machine (scalar reference and
/// the SWAR path, under AddressSanitizer and UBSan: no read past a tensor) and for AArch64 (the
/// NEON path, under qemu-aarch64 where installed), bit-exact with `reference::conv2d`.
#[test]
fn c_grouped_convs_match_the_reference() {
    let cases = grouped_cases();
    let varied = cases.iter().filter(|c| c.expected().iter().any(|&q| q != c.expected()[0])).count();
    assert!(varied >= cases.len() / 2, "only {varied} cases give varied codes");
    let program = grouped_cases_program(&cases);
    let dir = tempfile::tempdir().unwrap();
    let sanitize: &[&str] = if sanitizers_work(dir.path()) {
        &["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    } else {
        eprintln!("cc cannot build with -fsanitize=address,undefined here: the cases run without the sanitizers");
        &[]
    };
    for simd in [false, true] {
        let flags: Vec<&str> = (!simd).then_some("-DNCE_NO_SIMD").into_iter().chain(sanitize.iter().copied()).collect();
        let out = run_cases_program(dir.path(), &program, "cc", &flags, None);
        assert_cases_match(&cases, &out, &format!("host {flags:?}"));
    }
    match CTarget::AArch64.check_tools() {
        Ok(()) => {
            let out = run_cases_program(dir.path(), &program, "aarch64-linux-gnu-gcc", &["-static"], Some("qemu-aarch64"));
            assert_cases_match(&cases, &out, "aarch64 neon");
        }
        Err(e) => eprintln!("skipping the AArch64 NEON cases: {e}"),
    }
}

/// MobileNetV2 at width 0.35 on a 1×28×28 input with random parameters: depthwise convs at
/// stride 1 and 2, linear projections fused with residual adds.
fn mobilenet_model(seed: u64) -> QModel {
    use nce::graph::WidthMult;
    let kind = ModelKind::Mobilenetv2(WidthMult::ONE).with_width_mult(0.35).unwrap();
    let net = build(kind, Shape::new(1, 28, 28), 10, None, &BitConfig::uniform(2)).unwrap();
    let dw = |stride: usize| {
        net.layers.iter().any(|l| matches!(l.op, nce::graph::Op::Conv { groups, stride: s, .. } if groups > 1 && s == stride))
    };
    assert!(dw(1) && dw(2), "depthwise convs at stride 1 and 2");
    QModel::from_container(&random_container(&net, seed)).unwrap()
}

#[test]
fn host_c_matches_every_layer_of_a_mobilenetv2() {
    let model = mobilenet_model(7);
    let images = random_images(&model, 2, 7);
    let logits = engine_logits(&model, &images);
    assert!(logits.iter().any(|l| l.iter().any(|&v| v != l[0])), "random parameters should give varied logits");
    for kernels in [Kernels::Scalar, Kernels::Simd] {
        let build = CBuild::compile(&generate(&model).unwrap(), CTarget::Host, kernels, true).unwrap();
        let out = build.run(&images, 1, false).unwrap();
        assert_same_layers(&model, &images, &out.trace);
        assert_eq!(out.logits, logits, "{kernels:?}");
    }
}

/// Both QEMU targets and both kernel paths give the engine's logits on the MobileNetV2 (skipped
/// with a note where the cross compilers or emulators are missing).
#[test]
fn qemu_targets_match_the_engine_on_a_mobilenetv2() {
    let model = mobilenet_model(8);
    let images = random_images(&model, 3, 8);
    let logits = engine_logits(&model, &images);
    for target in [CTarget::CortexM7, CTarget::AArch64] {
        if let Err(e) = target.check_tools() {
            eprintln!("skipping {target:?}: {e}");
            continue;
        }
        for kernels in [Kernels::Scalar, Kernels::Simd] {
            let build = CBuild::compile(&generate(&model).unwrap(), target, kernels, false).unwrap();
            let out = build.run(&images, 2, false).unwrap_or_else(|e| panic!("{target:?} {kernels:?}: {e}"));
            assert_eq!(out.logits, logits, "{target:?} {kernels:?}");
        }
    }
}

/// The int8 peer of the MobileNetV2 (TFLite-style depthwise convs): its reference and its DSP
/// path give the same logits on the host and the Cortex-M7, and they vary with the image.
#[test]
fn int8_peer_runs_depthwise_convs_on_host_and_cortex_m7() {
    use nce::engine::c_runtime::generate_int8_peer;
    let model = mobilenet_model(9);
    let images = random_images(&model, 3, 9);
    let peer = generate_int8_peer(&model).unwrap();
    let c = &peer.pkg.files.iter().find(|(n, _)| n == "nce_model.c").unwrap().1;
    assert!(c.contains("nce_i8_dwconv("), "depthwise convs use the depthwise kernel");
    let host = CBuild::compile(&peer.pkg, CTarget::Host, Kernels::Scalar, false).unwrap().run(&images, 1, false).unwrap().logits;
    assert!(host.iter().any(|l| l != &host[0]) && host[0].iter().any(|&v| v != host[0][0]), "{host:?}");
    if let Err(e) = CTarget::CortexM7.check_tools() {
        eprintln!("skipping the Cortex-M7 runs: {e}");
        return;
    }
    for kernels in [Kernels::Scalar, Kernels::Simd] {
        let m7 = CBuild::compile(&peer.pkg, CTarget::CortexM7, kernels, false).unwrap().run(&images, 1, false).unwrap();
        assert_eq!(m7.logits, host, "{kernels:?}");
    }
}

/// Cortex-M7 instruction counts of the MobileNetV2 (`nce measure --backend qemu-cortex-m7
/// --check MODEL --int8-peer`): the SWAR build's depthwise steps need several times fewer
/// instructions than the scalar reference's, and the whole 2-bit build fewer than the int8
/// peer's DSP build of the same network.
#[test]
fn cortex_m7_counts_depthwise_convs_of_a_mobilenetv2() {
    use nce::engine::c_runtime::{int8_peer_report, resource_report};
    if let Err(e) = CTarget::CortexM7.check_tools() {
        eprintln!("skipping: {e}");
        return;
    }
    let model = mobilenet_model(10);
    let images = random_images(&model, 1, 10);
    let dw = |r: &nce::engine::c_runtime::ResourceReport| {
        r.steps.iter().filter(|s| s.name.ends_with(".dw")).map(|s| s.instructions).sum::<f64>()
    };
    let scalar = resource_report(&model, Kernels::Scalar, &images).unwrap();
    let simd = resource_report(&model, Kernels::Simd, &images).unwrap();
    let peer = int8_peer_report(&model, Kernels::Simd, &images).unwrap();
    for r in [&scalar, &simd, &peer] {
        let sum: f64 = r.steps.iter().map(|s| s.instructions).sum();
        assert!((sum - r.instructions).abs() < 0.01 * r.instructions, "steps {sum} vs whole {}", r.instructions);
        assert!(dw(r) > 0.0, "{}", r.backend);
    }
    assert!(4.0 * dw(&simd) < dw(&scalar), "depthwise: SWAR {} vs scalar {}", dw(&simd), dw(&scalar));
    assert!(
        dw(&simd) < dw(&peer) && simd.instructions < peer.instructions,
        "2-bit {} (dw {}) vs int8 peer {} (dw {})",
        simd.instructions,
        dw(&simd),
        peer.instructions,
        dw(&peer)
    );
}

/// `check_overwrite`: a missing file, a file of a generated package and a runtime file as an
/// earlier version wrote it may be replaced; a user's own `nce_model.c` may not, and the error
/// names it.
#[test]
fn only_files_nce_wrote_may_be_overwritten() {
    use nce::engine::c_runtime::{check_overwrite, CRuntimeError, GENERATED_MARKER};
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = example();
    let pkg = generate(&model).unwrap();
    assert!(pkg.files.iter().all(|(_, text)| text.starts_with(GENERATED_MARKER)), "every generated file carries the marker");
    for (name, text) in &pkg.files {
        std::fs::write(dir.path().join(name), text).unwrap();
        check_overwrite(&dir.path().join(name)).unwrap();
    }
    check_overwrite(&dir.path().join("absent.c")).unwrap();
    let legacy = dir.path().join("nce_runtime.h");
    std::fs::write(&legacy, include_str!("../src/engine/c_runtime/c/nce_runtime.h")).unwrap();
    check_overwrite(&legacy).unwrap();
    let mine = dir.path().join("nce_model.c");
    std::fs::write(&mine, "/* my own model */\nint nce_run(void) { return 0; }\n").unwrap();
    let err = check_overwrite(&mine).unwrap_err();
    assert!(matches!(err, CRuntimeError::NotGenerated { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&mine.display().to_string()) && msg.contains("not written by nce"), "{msg}");
    // A runtime file's legacy first line does not excuse another file name.
    std::fs::write(&mine, include_str!("../src/engine/c_runtime/c/nce_runtime.h")).unwrap();
    assert!(check_overwrite(&mine).is_err());
}

/// `nce export CKPT --c-runtime DIR` needs no `-o`, and refuses (before writing anything) a
/// folder holding a user's own `nce_model.c`, naming it; re-exporting over its own package works.
#[cfg(all(feature = "cli", feature = "train"))]
#[test]
fn cli_export_c_runtime_alone_and_never_over_a_users_file() {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("c");
    let export = |to: &Path| common::nce(&["export", "examples/resnet20-w2a2-fashion.ot", "--c-runtime", to.to_str().unwrap()]);
    for _ in 0..2 {
        let o = export(&pkg);
        assert!(o.status.success(), "{}", common::text(&o));
    }
    assert!(pkg.join("nce_model.c").is_file() && pkg.join("nce_runtime.c").is_file());
    assert!(!dir.path().join("c.nce").exists() && std::fs::read_dir(dir.path()).unwrap().count() == 1, "no .nce without -o");
    let user = dir.path().join("user");
    std::fs::create_dir(&user).unwrap();
    let mine = "/* my own model */\nint nce_run(void) { return 0; }\n";
    std::fs::write(user.join("nce_model.c"), mine).unwrap();
    let o = export(&user);
    let text = common::text(&o);
    assert!(!o.status.success(), "{text}");
    assert!(text.contains("nce_model.c") && text.contains("not written by nce"), "{text}");
    assert_eq!(std::fs::read_to_string(user.join("nce_model.c")).unwrap(), mine);
    assert_eq!(std::fs::read_dir(&user).unwrap().count(), 1, "nothing else written");
}

/// `nce measure --backend qemu-cortex-m7` on a MobileNetV2: every layer has an entry, and the
/// depthwise entries count a depthwise conv (a few instructions per MAC), not a dense one over
/// the same channels (which would need about as many instructions per MAC as channels).
#[test]
fn cortex_m7_instruction_table_counts_depthwise_layers() {
    use nce::engine::c_runtime::{measure_insn_table, ASSUMED_CPI, M7_CLOCK_MHZ};
    use nce::engine::measure::MeasureConfig;
    if let Err(e) = CTarget::CortexM7.check_tools() {
        eprintln!("skipping: {e}");
        return;
    }
    let net = mobilenet_model(11).net().clone();
    let cfg = MeasureConfig { grid: vec![1.0], ..Default::default() };
    let table = measure_insn_table(&net, &cfg, Kernels::Simd).unwrap();
    let mut dw = 0;
    for l in &net.layers {
        let us = table.lookup_us(&l.signature()).unwrap_or_else(|| panic!("{}", l.signature()));
        if matches!(l.op, nce::graph::Op::Conv { groups, .. } if groups > 1) {
            let per_mac = us * M7_CLOCK_MHZ / ASSUMED_CPI / l.macs() as f64;
            assert!(per_mac > 0.5 && per_mac < 12.0, "{}: {per_mac} instructions per MAC", l.name);
            dw += 1;
        }
    }
    assert!(dw >= 10, "{dw} depthwise layers");
}

//! The wgpu kernels against the scalar reference (`docs/quantization.md`), bit for bit, for
//! both 2-bit dot-product variants; then the committed model against the CPU engine.
//!
//! These tests need a wgpu adapter. Without one they fail with the message naming what to
//! install (on a machine without a GPU: `apt-get install mesa-vulkan-drivers libvulkan1`).
#![cfg(feature = "wgpu")]

mod common;

use common::{random_weights, spread_requant, Rng};
use nce::engine::cpu::{reference, Cpu};
use nce::engine::plan::QModel;
use nce::engine::wgpu::{DotKernel, WgpuEngine, WgpuModel};
use nce::engine::{Conv2d, EngineError, Linear, MaxPool2d, QTensor, Requant, Residual, Weights8};
use std::path::Path;
use std::sync::OnceLock;

fn engine() -> &'static WgpuEngine {
    static E: OnceLock<Result<WgpuEngine, String>> = OnceLock::new();
    match E.get_or_init(|| WgpuEngine::from_env().map_err(|e| e.to_string())) {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    }
}

#[derive(Clone, Copy, Debug)]
struct Case {
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    h: usize,
    w: usize,
    w8: bool,
    amax: u8,
    /// `(channels, stride)` of a residual.
    residual: Option<(usize, usize)>,
    /// Extreme requantisation parameters (int32 limits, shifts 0 and 62) instead of realistic ones.
    saturate: bool,
    /// `1` for a dense conv, `c_in == c_out` for a depthwise one.
    groups: usize,
}

const fn case(c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize, h: usize, w: usize) -> Case {
    Case { c_in, c_out, k, stride, pad, h, w, w8: false, amax: 3, residual: None, saturate: false, groups: 1 }
}

/// A depthwise 3×3 conv (pad 1) over `c` channels.
const fn depthwise(c: usize, stride: usize, h: usize, w: usize) -> Case {
    Case { groups: c, ..case(c, c, 3, stride, 1, h, w) }
}

fn random_conv(rng: &mut Rng, c: &Case) -> Conv2d {
    let k_len = c.k * c.k * c.c_in / c.groups;
    let weights = random_weights(rng, c.c_out, k_len, c.w8, -128);
    let qmax = [3u8, 1, 15, 255][rng.below(4) as usize];
    let requant = if c.saturate {
        let shift = [0u32, 1, 31, 32, 33, 62][rng.below(6) as usize];
        let pick =
            |rng: &mut Rng| [i32::MIN, i32::MAX, -1, 0, 1, rng.range(i32::MIN as i64, i32::MAX as i64) as i32][rng.below(6) as usize];
        Requant { m: (0..c.c_out).map(|_| pick(rng)).collect(), b: (0..c.c_out).map(|_| pick(rng)).collect(), shift, qmax }
    } else {
        let shift = rng.range(8, 24) as u32;
        spread_requant(rng, c.c_out, k_len, c.amax, c.w8, shift, qmax)
    };
    Conv2d::grouped(c.c_in, c.groups, c.k, c.stride, c.pad, weights, requant).unwrap()
}

/// Runs one case on both dot kernels and demands the reference's bytes.
fn run_case(seed: u64, c: &Case) {
    let mut rng = Rng::new(seed);
    let conv = random_conv(&mut rng, c);
    let x = rng.tensor(c.h, c.w, c.c_in, c.amax);
    let ho = (c.h + 2 * c.pad - c.k) / c.stride + 1;
    let wo = (c.w + 2 * c.pad - c.k) / c.stride + 1;
    let res_t;
    let r = if c.saturate { [i32::MIN, i32::MAX, 7][rng.below(3) as usize] } else { rng.range(0, 1 << (conv.requant.shift + 1)) as i32 };
    let residual = match c.residual {
        Some((c_res, rs)) => {
            // Odd sizes too: ceil((rs·ho − 1) / rs) == ho.
            let (hr, wr) = if rs == 1 { (ho, wo) } else { (ho * rs - 1, wo * rs - (rs - 1)) };
            res_t = rng.tensor(hr, wr, c_res, if c.saturate { 255 } else { 3 });
            Some(Residual { input: &res_t, stride: rs, r })
        }
        None => None,
    };
    let want = reference::conv2d(&conv, &x, residual.as_ref()).unwrap_or_else(|e| panic!("{c:?}: reference: {e}"));
    for dot in DotKernel::ALL {
        let got = engine().conv2d(&conv, &x, residual.as_ref(), dot).unwrap_or_else(|e| panic!("{c:?} {dot}: {e}"));
        assert_eq!((got.h, got.w, got.c), (want.h, want.w, want.c), "{c:?} {dot}: shape");
        if let Some(i) = got.data.iter().zip(&want.data).position(|(a, b)| a != b) {
            let (px, ch) = (i / want.c, i % want.c);
            panic!(
                "{c:?} {dot} (shift {}, qmax {}): pixel ({}, {}) channel {ch}: got {}, want {}",
                conv.requant.shift,
                conv.requant.qmax,
                px / want.w,
                px % want.w,
                got.data[i],
                want.data[i]
            );
        }
    }
}

#[test]
fn conv_w2_boundary_shapes() {
    let mut cases = Vec::new();
    // Channels around the 4-code activation words and 16-code weight words, kernels 1/3/5,
    // stride 1/2, padding 0..2, odd and 1x1 spatial sizes.
    for (i, &c_in) in [1usize, 3, 4, 5, 15, 16, 17, 20, 33, 64].iter().enumerate() {
        let c_out = [1usize, 7, 16, 17, 40, 5, 33, 64, 3, 18][i];
        let (k, pad): (usize, usize) = [(3, 1), (1, 0), (3, 0), (5, 2), (3, 2)][i % 5];
        let (h, w) = [(7, 7), (9, 5), (1, 1), (5, 9), (8, 3)][i % 5];
        let (h, w) = (h.max(k.saturating_sub(2 * pad)), w.max(k.saturating_sub(2 * pad)));
        for stride in [1, 2] {
            cases.push(Case { stride, ..case(c_in, c_out, k, 1, pad, h, w) });
        }
    }
    for (i, c) in cases.iter().enumerate() {
        run_case(100 + i as u64, c);
    }
}

#[test]
fn conv_w2_residual_and_activations() {
    let cases = [
        Case { residual: Some((16, 1)), ..case(16, 16, 3, 1, 1, 7, 7) },
        Case { residual: Some((8, 2)), ..case(16, 32, 3, 2, 1, 9, 9) }, // narrower shortcut, subsampled
        Case { residual: Some((40, 1)), ..case(17, 20, 3, 1, 1, 5, 6) }, // wider shortcut: m = b = 0 channels
        Case { residual: Some((5, 2)), ..case(5, 3, 1, 1, 0, 3, 3) },   // shortcut subsampled more than the conv
        Case { amax: 255, ..case(20, 9, 3, 1, 1, 6, 5) },               // codes above 127 (dot4's split path)
        Case { amax: 127, residual: Some((9, 1)), ..case(33, 9, 3, 1, 1, 4, 4) },
        Case { amax: 255, ..case(64, 64, 3, 1, 1, 8, 8) },
    ];
    for (i, c) in cases.iter().enumerate() {
        run_case(200 + i as u64, c);
    }
}

#[test]
fn conv_saturating_requantisation() {
    // int32 extremes of m, b, r with shifts 0, 31..33, 62: the int64 emulation's carries,
    // sign handling and shift cases, and the clamps at 0 and qmax.
    for i in 0..24u64 {
        let base = [case(16, 16, 3, 1, 1, 4, 4), case(3, 17, 1, 1, 0, 3, 5), case(33, 5, 3, 2, 1, 5, 5)][i as usize % 3];
        let c = Case { saturate: true, amax: [3, 255][i as usize % 2], residual: (i % 4 == 1).then_some((base.c_out + 2, 1)), ..base };
        let c = if c.residual.is_some() { Case { stride: 1, ..c } } else { c };
        run_case(300 + i, &c);
    }
}

#[test]
fn conv_w8_first_layer() {
    for (i, c_in) in [1usize, 2, 3, 4, 5, 8, 17].into_iter().enumerate() {
        for stride in [1, 2] {
            let c_out = [16, 1, 15, 17, 32, 33, 9][i];
            let residual = (i == 5).then_some((c_out + 3, stride));
            let c = Case { w8: true, amax: 255, residual, saturate: i == 6, ..case(c_in, c_out, 3, stride, 1, 9, 7) };
            run_case(400 + 2 * i as u64 + stride as u64, &c);
        }
    }
}

#[test]
fn conv_depthwise_shapes() {
    // Channel counts 1 (a dense conv), 3, 17 (partial activation words) and 144 (MobileNetV2's
    // widest early depthwise layer), stride 1 and 2, odd and tiny spatial sizes, both weight
    // widths, codes above 127.
    let mut i = 0;
    for c in [1usize, 3, 17, 144] {
        for stride in [1, 2] {
            for (h, w) in [(7, 9), (1, 1), (5, 3)] {
                let w8 = i % 3 == 1;
                let amax = [3, 255, 15][i % 3];
                run_case(500 + i as u64, &Case { w8, amax, ..depthwise(c, stride, h, w) });
                i += 1;
            }
        }
    }
    // A larger layer, spanning several pixel and channel tiles.
    run_case(550, &depthwise(40, 2, 15, 13));
}

#[test]
fn conv_depthwise_saturating_requantisation() {
    // int32 extremes of m, b, r and shifts 0..62 on the grouped kernel's epilogue, with and
    // without a fused residual.
    for i in 0..16u64 {
        let base = [depthwise(17, 1, 5, 7), depthwise(3, 2, 7, 5), depthwise(144, 2, 3, 3), depthwise(1, 1, 3, 3)][i as usize % 4];
        let residual = (i % 4 == 0).then_some((base.c_out + 3, 1));
        let c = Case { saturate: true, w8: i % 3 == 2, amax: [3, 255][i as usize % 2], residual, ..base };
        run_case(600 + i, &c);
    }
}

#[test]
fn conv_grouped_shapes() {
    // Groups between dense and depthwise: several input channels per group, channel
    // multipliers above and below 1, with a residual.
    let cases = [
        Case { groups: 3, ..case(6, 12, 3, 1, 1, 5, 5) },
        Case { groups: 2, ..case(32, 8, 1, 2, 0, 7, 7) },
        Case { groups: 4, w8: true, amax: 255, ..case(20, 4, 3, 2, 1, 6, 5) },
        Case { groups: 5, residual: Some((15, 1)), ..case(35, 10, 3, 1, 1, 4, 3) },
    ];
    for (i, c) in cases.iter().enumerate() {
        run_case(700 + i as u64, c);
    }
}

#[test]
fn conv_errors_match_the_cpu_engine() {
    let c = case(16, 16, 3, 1, 1, 4, 4);
    let conv = random_conv(&mut Rng::new(1), &c);
    let x = QTensor::zeros(4, 4, 8);
    let cpu = reference::conv2d(&conv, &x, None).unwrap_err();
    match engine().conv2d(&conv, &x, None, DotKernel::Shift) {
        Err(nce::engine::wgpu::WgpuError::Engine(e)) => assert_eq!(e, cpu),
        other => panic!("expected {cpu}, got {other:?}"),
    }
}

#[test]
fn max_pool_matches_reference() {
    let mut rng = Rng::new(7);
    for (h, w, c, k, stride, pad) in [(8, 8, 16, 2, 2, 0), (7, 9, 5, 3, 2, 1), (1, 1, 3, 1, 1, 0), (5, 5, 33, 3, 1, 1), (6, 4, 4, 2, 1, 1)]
    {
        let x = rng.tensor(h, w, c, 255);
        let p = MaxPool2d { k, stride, pad };
        let want = reference::max_pool(&p, &x).unwrap();
        let got = engine().max_pool(&p, &x).unwrap();
        assert_eq!(got, want, "{h}x{w}x{c} k {k} s {stride} p {pad}");
    }
}

#[test]
fn global_pool_matches_reference() {
    let mut rng = Rng::new(8);
    for (h, w, c) in [(7, 7, 64), (1, 1, 1), (8, 8, 17), (3, 5, 3), (181, 181, 2)] {
        let x = rng.tensor(h, w, c, 255);
        assert_eq!(engine().global_avg_pool(&x).unwrap(), reference::global_avg_pool(&x).unwrap(), "{h}x{w}x{c}");
    }
    // Sums that could overflow int32 are rejected, as by the reference.
    let big = QTensor::zeros(3000, 3000, 1);
    assert!(matches!(reference::global_avg_pool(&big), Err(EngineError::Overflow(_))));
    assert!(engine().global_avg_pool(&big).is_err());
}

#[test]
fn linear_matches_reference() {
    let mut rng = Rng::new(9);
    for (c_in, c_out, xmax) in [(64, 10, 49 * 255), (1, 1, 255), (17, 3, 1 << 20), (130, 7, i32::MAX as i64)] {
        let w = Weights8::new(c_out, c_in, (0..c_in * c_out).map(|_| rng.range(-128, 127) as i8).collect()).unwrap();
        let l = Linear::new(w, (0..c_out).map(|_| rng.range(i32::MIN as i64 / 2, i32::MAX as i64 / 2) as i32).collect()).unwrap();
        let x: Vec<i32> = (0..c_in).map(|_| rng.range(0, xmax) as i32).collect();
        let want = reference::linear(&l, &x);
        match (engine().linear(&l, &x), want) {
            (Ok(g), Ok(w)) => assert_eq!(g, w, "{c_in}x{c_out}"),
            (Err(nce::engine::wgpu::WgpuError::Engine(g)), Err(w)) => assert_eq!(g, w, "{c_in}x{c_out}"),
            (g, w) => panic!("{c_in}x{c_out}: got {g:?}, want {w:?}"),
        }
    }
}

#[test]
fn committed_model_matches_the_cpu_engine() {
    let model = QModel::load(Path::new("examples/resnet20-w2a2-fashion.nce")).unwrap();
    // lavapipe runs ResNet-20 at ~15 images/s on two loaded cores: 200 images with the shift
    // kernel and the first 100 with dot4 keep this test near 30 s.
    let test = nce::data::load("fashion-mnist", Path::new("data"), nce::data::Split::Test).unwrap().subset(200);
    let cpu = Cpu::best(1);
    let want = model.run_batch(&cpu, &model.prepare(&cpu).unwrap(), &test.images, 2).unwrap();
    let per = test.shape.numel();
    for (dot, n) in [(DotKernel::Shift, 200), (DotKernel::Dot4, 100)] {
        // A batch limit that does not divide n: several submissions, the last one partial.
        let gpu = WgpuModel::with_options(engine(), &model, dot, 64).unwrap();
        let got = gpu.run_batch(&test.images[..n * per]).unwrap();
        assert_eq!(got.len(), n);
        let differing: usize = got.iter().zip(&want).map(|(g, w)| g.iter().zip(w).filter(|(a, b)| a != b).count()).sum();
        assert_eq!(differing, 0, "{dot}: {differing} logits differ from the CPU engine");
    }
    let gpu = WgpuModel::with_options(engine(), &model, DotKernel::Shift, 4).unwrap();
    assert!(gpu.run_batch(&test.images[..785]).is_err(), "a partial image is rejected");
    assert!(gpu.run_batch(&[]).unwrap().is_empty());
}

/// Multipliers and offsets (shift 22, qmax 3) that map a typical accumulator of `k_len`
/// products to about ±qmax around a random level in `0..qmax`: outputs follow the input
/// instead of being pinned at 0 or qmax by the offset.
fn live_requant(rng: &mut Rng, c_out: usize, k_len: usize, w8: bool) -> (Vec<i32>, Vec<i32>) {
    // RMS of the weights times that of the inputs: 2-bit codes against 2-bit activations, or
    // 8-bit weights against 8-bit pixels.
    let rms = if w8 { 73.0 * 147.0 } else { 2.2 * 1.5 };
    let unit = (1u64 << 22) as f64;
    let m_mag = unit * 3.0 / ((k_len as f64).sqrt() * rms);
    let m = (0..c_out).map(|_| (rng.uniform(0.5, 1.5) * m_mag * if rng.below(2) == 0 { 1.0 } else { -1.0 }) as i32).collect();
    let b = (0..c_out).map(|_| (rng.uniform(0.0, 3.0) * unit) as i32).collect();
    (m, b)
}

#[test]
fn mobilenetv2_matches_the_cpu_engine() {
    use nce::engine::plan::Header;
    use nce::export::format::{Array, Container, Entry};
    use nce::graph::{build, BitConfig, ModelKind, Op, Shape, WidthMult};
    // A MobileNetV2 x0.35 with random integer arrays: depthwise layers at stride 1 and 2, the
    // 8-bit stem, pointwise convs with fused residual adds.
    let kind = ModelKind::Mobilenetv2(WidthMult::ONE).with_width_mult(0.35).unwrap();
    let net = build(kind, Shape::new(1, 28, 28), 10, None, &BitConfig::uniform(2)).unwrap();
    let depthwise = net.layers.iter().filter(|l| matches!(l.op, Op::Conv { groups, .. } if groups > 1)).count();
    assert!(depthwise >= 17, "{depthwise} depthwise layers");
    let h = Header { kind: "nce-model".into(), net: net.clone(), profile: None, source: None, scales: Default::default() };
    let mut arrays = common::random_arrays(&net, 26);
    // Requantisation that keeps every layer's codes spread, so that 17 blocks deep the logits
    // still depend on the image (shift 22, as random_arrays writes).
    let mut rng = Rng::new(28);
    for l in &net.layers {
        if let Op::Conv { k, groups, .. } = l.op {
            let (m, b) = live_requant(&mut rng, l.out_shape.c, k * k * l.in_shape.c / groups, l.wbits == 8);
            arrays.insert(format!("{}.m", l.name), Entry { dims: vec![m.len()], data: Array::I32(m) });
            arrays.insert(format!("{}.b", l.name), Entry { dims: vec![b.len()], data: Array::I32(b) });
        }
    }
    let c = Container { header: serde_json::to_string(&h).unwrap(), arrays };
    let model = QModel::from_container(&c).unwrap();
    let n = 6;
    let images = Rng::new(27).codes_u8(n * 28 * 28, 255);
    let cpu = Cpu::best(1);
    let want = model.run_batch(&cpu, &model.prepare(&cpu).unwrap(), &images, 1).unwrap();
    assert!(want.iter().any(|l| l != &want[0]), "random images should not all give the same logits");
    for dot in DotKernel::ALL {
        // Batches of 4: one full submission and one partial.
        let gpu = WgpuModel::with_options(engine(), &model, dot, 4).unwrap();
        let got = gpu.run_batch(&images).unwrap();
        assert_eq!(got.len(), n);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{dot}: image {i}: logits differ from the CPU engine");
        }
    }
}

//! tch models built from the layer graph: shapes, parameter counts, quantizers, names.
#![cfg(feature = "train")]

use nce::graph::{self, BitConfig, ModelKind, Network, Op, Shape, Src};
use nce::models::{copy_by_name, count_params, ActQuantizer, Model, ModelError, ModelOptions, WeightQuantizer};
use nce::quant::WeightScheme;
use tch::nn::ModuleT;
use tch::{nn, Device, Kind, Tensor};

fn net(kind: ModelKind, input: Shape, classes: usize, widths: Option<&[usize]>, bits: &BitConfig) -> Network {
    graph::build(kind, input, classes, widths, bits).unwrap()
}

fn model(n: &Network, opts: &ModelOptions) -> (nn::VarStore, Model) {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = Model::new(&vs.root(), n, opts).unwrap();
    (vs, m)
}

fn input(n: &Network, batch: i64) -> Tensor {
    let s = n.input;
    Tensor::rand([batch, s.c as i64, s.h as i64, s.w as i64], (Kind::Float, Device::Cpu))
}

fn w2a2() -> BitConfig {
    BitConfig::uniform(2)
}

fn fp() -> BitConfig {
    BitConfig::full_precision()
}

/// Output shape, per-layer shapes and parameter counts against the graph.
fn check(n: &Network, opts: &ModelOptions, batch: i64, per_layer: bool) -> (nn::VarStore, Model) {
    let (vs, m) = model(n, opts);
    assert_eq!(m.param_count(), n.params(), "{}: module params", n.model);
    assert_eq!(count_params(&vs), n.params(), "{}: var-store params", n.model);
    let x = input(n, batch);
    if per_layer {
        let outs = m.f_forward_layers(&x, false).unwrap();
        for (l, o) in n.layers.iter().zip(&outs) {
            let s = l.out_shape;
            let want = if matches!(l.op, Op::Linear) { vec![batch, s.c as i64] } else { vec![batch, s.c as i64, s.h as i64, s.w as i64] };
            assert_eq!(o.size(), want, "{}: {}", n.model, l.name);
        }
    } else {
        let y = m.f_forward_t(&x, false).unwrap();
        assert_eq!(y.size(), vec![batch, n.classes as i64]);
    }
    (vs, m)
}

#[test]
fn resnet20_shapes_and_params_on_mnist_and_cifar_inputs() {
    for input in [Shape::new(1, 28, 28), Shape::new(3, 32, 32)] {
        for bits in [fp(), w2a2()] {
            let n = net(ModelKind::Resnet20, input, 10, None, &bits);
            check(&n, &ModelOptions::default(), 2, true);
        }
    }
    // ResNet-20 (CIFAR-10, option A): convs 267,696 + fc 650 + BN γ/β 1,376.
    assert_eq!(net(ModelKind::Resnet20, Shape::new(3, 32, 32), 10, None, &fp()).params(), 269_722);
}

#[test]
fn resnet32_and_resnet56() {
    for kind in [ModelKind::Resnet32, ModelKind::Resnet56] {
        let n = net(kind, Shape::new(3, 32, 32), 10, None, &w2a2());
        check(&n, &ModelOptions::default(), 1, false);
    }
}

#[test]
fn resnet18_and_resnet50_imagenet_layout() {
    let input = Shape::new(3, 64, 64);
    let n = net(ModelKind::Resnet18, input, 1000, None, &w2a2());
    assert_eq!(n.params(), 11_689_512);
    check(&n, &ModelOptions::default(), 1, true);
    let n = net(ModelKind::Resnet50, input, 1000, None, &w2a2());
    assert_eq!(n.params(), 25_557_032);
    let (vs, _) = check(&n, &ModelOptions::default(), 1, true);
    // Bottleneck + projection shortcut names.
    let v = vs.variables();
    for name in ["layer1.0.conv_c.weight", "layer1.0.downsample.weight", "layer1.0.downsample.bn.running_var", "layer4.2.add.act.alpha"] {
        assert!(v.contains_key(name), "{name}");
    }
    assert!(!v.contains_key("layer1.0.downsample.act.alpha"), "projection shortcut has no ReLU");
}

/// ResNet-20 widths with some slots narrower and some wider than the base (16/32/64), so that
/// adds pad either the residual branch or the shortcut.
const WIDTHS: [usize; 19] = [12, 8, 20, 24, 10, 16, 16, 40, 24, 32, 48, 20, 30, 64, 70, 50, 60, 80, 64];

#[test]
fn non_uniform_widths_zero_pad_the_narrower_add_input() {
    let n = net(ModelKind::Resnet20, Shape::new(3, 32, 32), 10, Some(&WIDTHS), &fp());
    let (_vs, m) = check(&n, &ModelOptions::default(), 2, true);
    let outs = m.f_forward_layers(&input(&n, 2), false).unwrap();
    let (mut padded_branch, mut padded_shortcut) = (0, 0);
    for (i, l) in n.layers.iter().enumerate() {
        if !matches!(l.op, Op::Add { .. }) {
            continue;
        }
        let get = |s: Src| match s {
            Src::Layer(j) => outs[j].shallow_clone(),
            Src::Input => unreachable!(),
        };
        let (a, b) = (get(l.inputs[0]), get(l.inputs[1]));
        let (ca, cb) = (a.size()[1], b.size()[1]);
        if ca < cb {
            padded_branch += 1;
        }
        if cb < ca {
            padded_shortcut += 1;
        }
        let (c, narrow, wide) = if ca <= cb { (ca, &a, &b) } else { (cb, &b, &a) };
        let out = &outs[i];
        assert_eq!(out.size()[1], ca.max(cb), "{}", l.name);
        // Shared channels: relu(a + b); extra channels: relu(wide) (the narrower one is 0).
        let shared = (narrow + wide.narrow(1, 0, c)).relu();
        assert!(out.narrow(1, 0, c).allclose(&shared, 1e-6, 1e-6, false), "{}", l.name);
        let extra = ca.max(cb) - c;
        if extra > 0 {
            assert!(out.narrow(1, c, extra).allclose(&wide.narrow(1, c, extra).relu(), 1e-6, 1e-6, false), "{}", l.name);
        }
    }
    assert!(padded_branch > 0 && padded_shortcut > 0, "{padded_branch} {padded_shortcut}");
    // The same widths quantized.
    let nq = net(ModelKind::Resnet20, Shape::new(3, 32, 32), 10, Some(&WIDTHS), &w2a2());
    check(&nq, &ModelOptions::default(), 2, true);
}

#[test]
fn fp32_and_w2a2_networks_differ_only_in_quantizers() {
    let input = Shape::new(3, 32, 32);
    let nf = net(ModelKind::Resnet20, input, 10, None, &fp());
    let nq = net(ModelKind::Resnet20, input, 10, None, &w2a2());
    let (vf, mf) = model(&nf, &ModelOptions::default());
    let (mut vq, mq) = model(&nq, &ModelOptions::default());
    assert!(mf.quant_params().is_empty());
    // PACT after conv1, every conv_a and every add: 1 + 9 + 9.
    let alphas = mq.pact_alphas();
    assert_eq!(alphas.len(), 19);
    assert_eq!(mq.quant_params().len(), 19);
    assert!(alphas.iter().any(|(n, _)| n == "conv1.act.alpha"));
    assert!(alphas.iter().all(|(_, a)| a.double_value(&[0]) == 8.0));
    assert_eq!(mf.param_count(), mq.param_count());

    // Same weights, different functions.
    let r = copy_by_name(&mut vq, &vf).unwrap();
    assert_eq!(r.missing.len(), 19);
    let x = input_of(&nf);
    let (yf, yq) = (mf.f_forward_t(&x, false).unwrap(), mq.f_forward_t(&x, false).unwrap());
    assert!(!yf.allclose(&yq, 1e-3, 1e-3, false));

    // W2A2 activations sit on the 4 PACT levels {0, α/3, 2α/3, α}; FP32 ones do not.
    let outs = mq.f_forward_layers(&x, false).unwrap();
    let i = nq.layers.iter().position(|l| l.name == "layer1.0.conv_a").unwrap();
    let levels = (&outs[i] * (3.0 / 8.0)).round();
    assert!((&outs[i] * (3.0 / 8.0) - &levels).abs().max().double_value(&[]) < 1e-5);
    assert!(levels.min().double_value(&[]) >= 0.0 && levels.max().double_value(&[]) <= 3.0);

    // Export: SAWB codes in the middle, max-abs 8-bit at both ends, PACT scales α/3.
    let ex = mq.export();
    assert_eq!(ex.len(), nq.layers.len());
    for e in &ex {
        match e.layer.op {
            Op::Conv { relu, .. } => {
                let wi = e.weight_int.as_ref().unwrap();
                let codes = wi.to_vec().unwrap();
                let bn = e.bn.as_ref().unwrap();
                assert_eq!(bn.eps, 1e-5);
                assert_eq!(bn.running_var.size(), vec![e.layer.out_shape.c as i64]);
                if e.layer.name == "conv1" {
                    assert_eq!(wi.scheme, WeightScheme::MaxAbs);
                    assert!(codes.iter().all(|c| c.abs() <= 127) && codes.iter().any(|c| c.abs() == 127));
                } else {
                    assert_eq!(wi.scheme, WeightScheme::Sawb);
                    assert!(codes.iter().all(|c| [-3, -1, 1, 3].contains(c)), "{}", e.layer.name);
                    let w = e.weight.as_ref().unwrap();
                    let a = nce::quant::sawb_alpha(w, 2).double_value(&[]);
                    assert!((wi.scale * 3.0 - a).abs() < 1e-6 * a);
                }
                match e.act {
                    Some(act) => {
                        assert!(relu);
                        assert_eq!(act.qmax, 3);
                        assert!((act.scale - 8.0 / 3.0).abs() < 1e-9);
                    }
                    None => assert!(!relu, "{}", e.layer.name),
                }
            }
            Op::Linear => {
                assert_eq!(e.weight_int.as_ref().unwrap().scheme, WeightScheme::MaxAbs);
                assert!(e.bias.is_some() && e.act.is_none() && e.bn.is_none());
            }
            Op::Add { .. } => assert_eq!(e.act.unwrap().qmax, 3),
            _ => assert!(e.weight.is_none() && e.act.is_none()),
        }
    }
    assert!(mf.export().iter().all(|e| e.weight_int.is_none() && e.act.is_none()));
}

fn input_of(n: &Network) -> Tensor {
    tch::manual_seed(7);
    input(n, 4)
}

#[test]
fn backward_reaches_pact_clips_and_weights() {
    let n = net(ModelKind::Resnet20, Shape::new(3, 32, 32), 10, None, &w2a2());
    // A small clip so that activations are clipped and α gets task gradient.
    let opts = ModelOptions { pact_init: 1.0, ..Default::default() };
    let (vs, m) = model(&n, &opts);
    let x = input_of(&n);
    let y = Tensor::from_slice(&[0i64, 3, 5, 9]);
    let loss = m.forward_t(&x, true).cross_entropy_for_logits(&y);
    loss.backward();
    for (name, a) in m.pact_alphas() {
        let g = a.grad();
        assert!(g.defined(), "{name}");
        let g = g.double_value(&[0]);
        assert!(g.is_finite() && g != 0.0, "{name}: {g}");
    }
    let v = vs.variables();
    for name in ["conv1.weight", "layer2.0.conv_a.weight", "layer3.2.conv_b.bn.weight", "fc.weight", "fc.bias"] {
        let g = v[name].grad();
        assert!(g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{name}");
    }
    // Training mode updated BN running statistics.
    assert!(v["conv1.bn.running_mean"].abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

#[test]
fn lsq_option_initialises_and_trains_steps() {
    let n = net(ModelKind::Resnet20, Shape::new(3, 32, 32), 10, None, &w2a2());
    let opts = ModelOptions { weight: WeightQuantizer::Lsq, activation: ActQuantizer::Lsq, ..Default::default() };
    let (vs, m) = model(&n, &opts);
    assert_eq!(count_params(&vs), n.params());
    let steps = m.quant_params();
    // 18 LSQ weight steps (2-bit convs; conv1/fc are 8-bit max-abs) + 19 activation steps.
    assert_eq!(steps.iter().filter(|(n, _)| n.ends_with(".wq.step")).count(), 18);
    assert_eq!(steps.iter().filter(|(n, _)| n.ends_with(".act.step")).count(), 19);
    let x = input_of(&n);
    let y = Tensor::from_slice(&[1i64, 2, 3, 4]);
    m.forward_t(&x, true).cross_entropy_for_logits(&y).backward();
    let v = vs.variables();
    for (name, s) in &steps {
        assert!(s.double_value(&[0]) != 1.0, "{name} was not initialised");
        let flag = name.replace(".step", ".initialized");
        assert_eq!(v[&flag].double_value(&[0]), 1.0);
        let g = s.grad();
        assert!(g.defined() && g.double_value(&[0]).is_finite(), "{name}");
    }
    let ex = m.export();
    let e = ex.iter().find(|e| e.layer.name == "layer1.0.conv_a").unwrap();
    let wi = e.weight_int.as_ref().unwrap();
    assert_eq!(wi.scheme, WeightScheme::Lsq);
    assert!(wi.to_vec().unwrap().iter().all(|c| (-2..=1).contains(c)));
    assert_eq!(e.act.unwrap().qmax, 3);
}

#[test]
fn variable_names_follow_the_graph() {
    let n = net(ModelKind::Resnet20, Shape::new(3, 32, 32), 10, None, &w2a2());
    let (vs, _m) = model(&n, &ModelOptions::default());
    let v = vs.variables();
    for name in [
        "conv1.weight",
        "conv1.bn.weight",
        "conv1.act.alpha",
        "layer1.0.conv_a.weight",
        "layer1.0.conv_a.bn.weight",
        "layer1.0.conv_a.bn.bias",
        "layer1.0.conv_a.bn.running_mean",
        "layer1.0.conv_a.bn.running_var",
        "layer1.0.conv_a.act.alpha",
        "layer1.0.conv_b.weight",
        "layer1.0.add.act.alpha",
        "layer3.2.add.act.alpha",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(v.contains_key(name), "{name} missing");
    }
    assert!(!v.contains_key("layer1.0.conv_b.act.alpha"), "the residual-branch conv has no quantizer");
    assert!(v.keys().all(|k| !k.contains("__")), "duplicate names were renamed: {:?}", v.keys());
}

#[test]
fn fp32_checkpoint_initialises_w2a2_by_name() {
    let input = Shape::new(3, 32, 32);
    let nf = net(ModelKind::Resnet20, input, 10, None, &fp());
    let nq = net(ModelKind::Resnet20, input, 10, None, &w2a2());
    let (vf, mf) = model(&nf, &ModelOptions::default());
    // One training-mode pass so the BN statistics are not the defaults.
    let _ = mf.forward_t(&input_of(&nf), true);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fp32.ot");
    vf.save(&path).unwrap();

    let (mut vq, mq) = model(&nq, &ModelOptions::default());
    let mut missing = vq.load_partial(&path).unwrap();
    missing.sort();
    let mut alphas: Vec<String> = mq.pact_alphas().into_iter().map(|(n, _)| n).collect();
    alphas.sort();
    assert_eq!(missing, alphas, "only the quantizer variables are new");
    let (f, q) = (vf.variables(), vq.variables());
    for name in [
        "conv1.weight",
        "layer2.1.conv_b.weight",
        "layer1.0.conv_a.bn.running_mean",
        "layer3.0.conv_a.bn.running_var",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(f[name].equal(&q[name]), "{name}");
    }

    // The same through copy_by_name.
    let (mut v2, _m2) = model(&nq, &ModelOptions::default());
    let r = copy_by_name(&mut v2, &vf).unwrap();
    assert_eq!(r.missing, alphas);
    assert!(r.unused.is_empty());
    assert_eq!(r.copied.len(), vf.len());
    assert!(vf.variables()["layer1.1.conv_a.weight"].equal(&v2.variables()["layer1.1.conv_a.weight"]));

    // Different widths: a shape mismatch is an error, and nothing is copied.
    let nw = net(ModelKind::Resnet20, input, 10, Some(&WIDTHS), &w2a2());
    let (mut vw, _mw) = model(&nw, &ModelOptions::default());
    let before = vw.variables()["fc.bias"].copy();
    assert!(matches!(copy_by_name(&mut vw, &vf), Err(ModelError::VarShape { .. })));
    assert!(before.equal(&vw.variables()["fc.bias"]));
}

#[test]
fn user_errors_are_reported() {
    let n = net(ModelKind::Resnet20, Shape::new(3, 32, 32), 10, None, &w2a2());
    let (_vs, m) = model(&n, &ModelOptions::default());
    let bad = Tensor::rand([1, 1, 32, 32], (Kind::Float, Device::Cpu));
    assert!(matches!(m.f_forward_t(&bad, false), Err(ModelError::InputShape { .. })));

    let mut n9 = n.clone();
    n9.layers[1].wbits = 9;
    let vs = nn::VarStore::new(Device::Cpu);
    assert!(matches!(Model::new(&vs.root(), &n9, &ModelOptions::default()), Err(ModelError::WeightBits { bits: 9, .. })));

    let mut dup = n.clone();
    dup.layers[2].name = dup.layers[1].name.clone();
    let vs = nn::VarStore::new(Device::Cpu);
    assert!(matches!(Model::new(&vs.root(), &dup, &ModelOptions::default()), Err(ModelError::Structure { .. })));

    let opts = ModelOptions { pact_init: -1.0, ..Default::default() };
    let vs = nn::VarStore::new(Device::Cpu);
    assert!(matches!(Model::new(&vs.root(), &n, &opts), Err(ModelError::Quant { .. })));

    assert_eq!(
        ModelOptions::parse("LSQ", "pact").unwrap(),
        ModelOptions { weight: WeightQuantizer::Lsq, activation: ActQuantizer::Pact, pact_init: 8.0, bn_groups: 1 }
    );
    assert!(ModelOptions::parse("dorefa", "pact").is_err());
    assert!(ModelOptions::parse("sawb", "relu6").is_err());
    let json = serde_json::to_string(&ModelOptions::default()).unwrap();
    assert_eq!(json, r#"{"weight":"sawb","activation":"pact","pact_init":8.0}"#);
    assert_eq!(serde_json::from_str::<ModelOptions>("{}").unwrap(), ModelOptions::default());
}

/// `bn_groups = 2` (ghost batches, what two data-parallel ranks compute): in training, a batch
/// `[a; b]` gives what a plain model gives for `a` and for `b` separately, and the running
/// statistics move by the mean of the two halves' updates.
#[test]
fn ghost_batch_norm_normalises_each_half_on_its_own() {
    let n = net(ModelKind::Resnet20, Shape::new(1, 16, 16), 10, None, &w2a2());
    let (vs_a, plain_a) = model(&n, &ModelOptions::default());
    let (mut vs_b, plain_b) = model(&n, &ModelOptions::default());
    let (mut vs_g, ghost) = model(&n, &ModelOptions { bn_groups: 2, ..Default::default() });
    copy_by_name(&mut vs_b, &vs_a).unwrap();
    copy_by_name(&mut vs_g, &vs_a).unwrap();
    tch::manual_seed(3);
    let (a, b) = (Tensor::rand([3, 1, 16, 16], (Kind::Float, Device::Cpu)), Tensor::rand([3, 1, 16, 16], (Kind::Float, Device::Cpu)));
    let ab = Tensor::cat(&[&a, &b], 0);
    let together = ghost.forward_t(&ab, true);
    let halves = Tensor::cat(&[plain_a.forward_t(&a, true), plain_b.forward_t(&b, true)], 0);
    let diff = (&together - &halves).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "ghost batches differ from separate halves by {diff}");
    let stat = |vs: &nn::VarStore, name: &str| vs.variables()[name].copy();
    for name in ["conv1.bn.running_var", "layer3.2.conv_b.bn.running_mean"] {
        let expected = (stat(&vs_a, name) + stat(&vs_b, name)) / 2.0;
        let d = (stat(&vs_g, name) - expected).abs().max().double_value(&[]);
        assert!(d < 1e-6, "{name}: ghost running statistics are {d} off the halves' mean");
    }
    let whole = plain_a.forward_t(&ab, true);
    assert!((&together - whole).abs().max().double_value(&[]) > 1e-3, "ghost batches made no difference");
}

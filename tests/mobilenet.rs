//! MobileNetV2's layer graph: structure, width slots, and its MACs and params against a count
//! written out from the paper's table independently of the builder.

use nce::graph::{build, mobilenet, BitConfig, ModelKind, Network, Op, Shape, Src, WidthMult};

fn mnv2(mult: f64, widths: Option<&[usize]>) -> Network {
    let kind = ModelKind::Mobilenetv2(WidthMult::ONE).with_width_mult(mult).unwrap();
    build(kind, Shape::new(1, 28, 28), 10, widths, &BitConfig::uniform(2)).unwrap()
}

fn layer<'a>(net: &'a Network, name: &str) -> &'a nce::graph::Layer {
    net.layers.iter().find(|l| l.name == name).unwrap_or_else(|| panic!("no layer {name}"))
}

/// MACs and params of MobileNetV2 (CIFAR strides) on a 1×28×28 input, counted block by block
/// from (t, c, n, s) with plain arithmetic: conv weights, BN γ/β per conv, fc weights + bias.
fn hand_count() -> (u64, u64) {
    let (mut macs, mut params) = (0u64, 0u64);
    let mut conv = |cin: u64, cout: u64, k: u64, groups: u64, hw_out: u64| {
        let w = cin / groups * k * k * cout;
        macs += w * hw_out;
        params += w + 2 * cout;
    };
    let mut hw = 28u64;
    conv(1, 32, 3, 1, hw * hw);
    let mut cin = 32u64;
    for (t, c, n, s) in [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)] {
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            let hidden = cin * t;
            if t != 1 {
                conv(cin, hidden, 1, 1, hw * hw);
            }
            hw = (hw + 2 - 3) / stride + 1; // 3×3, pad 1
            conv(hidden, hidden, 3, hidden, hw * hw);
            conv(hidden, c, 1, 1, hw * hw);
            cin = c;
        }
    }
    conv(320, 1280, 1, 1, hw * hw);
    macs += 1280 * 10;
    params += 1280 * 10 + 10;
    (macs, params)
}

#[test]
fn macs_and_params_match_a_hand_count() {
    let net = mnv2(1.0, None);
    let (macs, params) = hand_count();
    assert_eq!((net.macs(), net.params()), (macs, params));
    // One depthwise layer by hand: stage3.0.dw reads 24·6 = 144 channels at 28×28, stride 2.
    let dw = layer(&net, "stage3.0.dw");
    assert_eq!(dw.op, Op::Conv { k: 3, stride: 2, pad: 1, groups: 144, relu: true, relu6: false });
    assert_eq!((dw.in_shape, dw.out_shape), (Shape::new(144, 28, 28), Shape::new(144, 14, 14)));
    assert_eq!((dw.macs(), dw.params()), (144 * 9 * 14 * 14, 144 * 9 + 2 * 144));
    assert_eq!(dw.width_slot, None, "a depthwise conv follows its input's width");
    assert_eq!(layer(&net, "conv_last").out_shape, Shape::new(1280, 4, 4));
}

#[test]
fn slots_tie_what_must_be_equal() {
    let net = mnv2(1.0, None);
    // stem, stage1 projection, then per block an expansion (blocks 2..=17) and per stage from
    // the second one projection, and the last conv.
    let blocks: usize = mobilenet::V2_STAGES.iter().map(|s| s.2).sum();
    assert_eq!(net.widths.len(), 1 + 1 + (blocks - 1) + (mobilenet::V2_STAGES.len() - 1) + 1);
    assert_eq!(ModelKind::Mobilenetv2(WidthMult::ONE).base_widths(), net.widths);
    for l in &net.layers {
        if let Op::Conv { groups, .. } = l.op {
            if groups > 1 {
                assert_eq!((groups, l.out_shape.c), (l.in_shape.c, l.in_shape.c), "{}", l.name);
            }
        }
        if let Op::Add { .. } = l.op {
            // The projection and the block input of every residual add share a slot.
            let slot = |s: Src| match s {
                Src::Layer(j) => net.layers[j].width_slot.or_else(|| match net.layers[j].op {
                    Op::Add { .. } => match net.layers[j].inputs[0] {
                        Src::Layer(k) => net.layers[k].width_slot,
                        Src::Input => None,
                    },
                    _ => None,
                }),
                Src::Input => None,
            };
            assert_eq!(slot(l.inputs[0]), slot(l.inputs[1]), "{}", l.name);
            assert!(slot(l.inputs[0]).is_some());
        }
    }
    let adds = net.layers.iter().filter(|l| matches!(l.op, Op::Add { .. })).count();
    assert_eq!(adds, 10, "residual blocks: 1 + 2 + 3 + 2 + 2 in stages 2, 3, 4, 5, 6");
    // Widening one stage's slot widens every projection of that stage and the adds after them.
    let s = layer(&net, "stage4.0.project").width_slot.unwrap();
    let mut w = net.widths.clone();
    w[s] = 80;
    let wide = mnv2(1.0, Some(&w));
    for name in ["stage4.0.project", "stage4.1.project", "stage4.3.project", "stage4.3.add", "stage5.0.expand"] {
        let l = layer(&wide, name);
        let c = if name.ends_with("expand") { l.in_shape.c } else { l.out_shape.c };
        assert_eq!(c, 80, "{name}");
    }
    assert_eq!(layer(&wide, "stage5.0.dw").in_shape.c, w[layer(&wide, "stage5.0.expand").width_slot.unwrap()]);
}

#[test]
fn width_multiplier_scales_every_slot_but_the_last_conv() {
    let half = mnv2(0.5, None);
    assert_eq!(half.model, "mobilenetv2x0.5");
    assert_eq!(layer(&half, "conv1").out_shape.c, 16);
    assert_eq!(layer(&half, "stage2.0.project").out_shape.c, 16); // 24 · 0.5 = 12 → 16
    assert_eq!(layer(&half, "stage2.0.expand").out_shape.c, 8 * 6); // stage1 gives 8 channels
    assert_eq!(layer(&half, "conv_last").out_shape.c, 1280);
    assert_eq!(layer(&mnv2(1.4, None), "conv_last").out_shape.c, 1792);
    assert!(half.macs() < mnv2(1.0, None).macs() / 3);
    // The name round-trips into the same network.
    let again = build(half.model.parse().unwrap(), half.input, 10, None, &BitConfig::uniform(2)).unwrap();
    assert_eq!(again, half);
}

#[test]
fn bits_keep_the_first_conv_and_classifier_at_8() {
    let net = mnv2(1.0, None);
    assert_eq!((layer(&net, "conv1").wbits, layer(&net, "fc").wbits), (8, 8));
    for name in ["stage2.0.expand", "stage2.0.dw", "stage2.0.project", "conv_last"] {
        let l = layer(&net, name);
        assert_eq!((l.wbits, l.abits), (2, 2), "{name}");
    }
}

#[cfg(feature = "cli")]
#[test]
fn the_cost_command_lists_depthwise_layers_by_name() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nce"))
        .args(["cost", "--model", "mobilenetv2", "--input", "1x28x28", "--profile", "nce-flops-params", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (macs, params) = hand_count();
    let metric = |name: &str| v["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == name).unwrap().clone();
    assert_eq!(metric("macs")["total"].as_f64(), Some(macs as f64));
    assert_eq!(metric("params")["total"].as_f64(), Some(params as f64));
    let per_layer = metric("macs")["per_layer"].as_array().unwrap().clone();
    let dw: Vec<&serde_json::Value> = per_layer.iter().filter(|l| l["layer"].as_str().unwrap().ends_with(".dw")).collect();
    assert_eq!(dw.len(), 17, "one depthwise conv per block");
    let s3 = dw.iter().find(|l| l["layer"] == "stage3.0.dw").unwrap();
    assert_eq!(s3["value"].as_f64(), Some((144 * 9 * 14 * 14) as f64));
}

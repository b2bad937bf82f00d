//! A cost plugin from another crate registers through linkme and a profile uses it.
//! Naming the crate is what keeps its registry entry alive (rustc drops unreferenced crates).
use nce_systolic_cost as _;

use nce::cost::{find_plugin, plugin_names, Evaluator};
use nce::graph::{build, BitConfig, ModelKind, Shape};
use nce::hw::Profile;

const PROFILE: &str = "plugins/systolic-cost/profiles/npu-systolic-int2.toml";

#[test]
fn plugin_crate_registers() {
    assert!(find_plugin("systolic").is_some(), "registered: {:?}", plugin_names());
    for builtin in ["macs", "params", "bops", "packed-memory", "latency-lut", "roofline"] {
        assert!(find_plugin(builtin).is_some(), "{builtin} missing");
    }
}

#[test]
fn profile_uses_the_plugin() {
    let p = Profile::load(PROFILE).unwrap();
    let base = build(ModelKind::Resnet20, Shape::new(3, 32, 32), 10, None, &BitConfig::uniform(2)).unwrap();
    let r = Evaluator::new(&p).unwrap().evaluate(&base, &base).unwrap();
    let cycles = r.metrics.iter().find(|m| m.metric == "systolic_cycles").unwrap();
    assert_eq!(cycles.plugin, "systolic");
    let at = |name: &str| cycles.per_layer[base.layers.iter().position(|l| l.name == name).unwrap()];
    // conv1 at 8 bits: ceil(27 / 32) row tiles × ceil(16 / 32) column tiles × (1024 px + 64 fill)
    assert_eq!(at("conv1"), 1088.0);
    // 2-bit layer1 conv: 4 MACs per PE → ceil(144 / 128) = 2 row tiles
    assert_eq!(at("layer1.0.conv_a"), 2.0 * 1088.0);
    assert!(r.budgets.iter().any(|b| b.metric == "systolic_cycles" && b.pass));

    // 33 output channels need a second column tile: the idle PEs are paid for.
    let mut w = ModelKind::Resnet20.base_widths();
    w[1] = 33;
    let net = build(ModelKind::Resnet20, Shape::new(3, 32, 32), 10, Some(&w), &BitConfig::uniform(2)).unwrap();
    let r = Evaluator::new(&p).unwrap().evaluate(&net, &base).unwrap();
    let cycles = r.metrics.iter().find(|m| m.metric == "systolic_cycles").unwrap();
    let i = net.layers.iter().position(|l| l.name == "layer1.0.conv_a").unwrap();
    assert_eq!(cycles.per_layer[i], 4.0 * 1088.0);
    let budget = r.budgets.iter().find(|b| b.metric == "systolic_cycles").unwrap();
    assert!(!budget.pass, "a wider layer breaks the 1.0x cycle budget");
}

/// A depthwise layer is a block-diagonal weight matrix: `stage2.0.dw` of MobileNetV2 (96
/// channels, 3×3, 28×28 output) at 2 bits on a 32×32 array (128 reduction rows per tile): each
/// of the 3 column tiles spans 32 channels × 9 rows = 288 rows, i.e. rows 0..288, 288..576 and
/// 576..864, which touch 3, 3 and 3 row tiles (of 128).
#[test]
fn depthwise_layers_are_block_diagonal() {
    let p = Profile::load(PROFILE).unwrap();
    let kind = ModelKind::Mobilenetv2(nce::graph::WidthMult::ONE);
    let net = build(kind, Shape::new(1, 28, 28), 10, None, &BitConfig::uniform(2)).unwrap();
    let r = Evaluator::new(&p).unwrap().evaluate(&net, &net).unwrap();
    let cycles = r.metrics.iter().find(|m| m.metric == "systolic_cycles").unwrap();
    let at = |name: &str| cycles.per_layer[net.layers.iter().position(|l| l.name == name).unwrap()];
    let per_tile = 784.0 + 64.0;
    assert_eq!(at("stage2.0.dw"), 9.0 * per_tile);
    // The pointwise projection 96 → 24 is dense: ceil(96 / 128) × ceil(24 / 32) tiles.
    assert_eq!(at("stage2.0.project"), per_tile);
}

#[test]
fn plugin_options_are_validated() {
    let text = std::fs::read_to_string(PROFILE).unwrap().replace("rows = 32", "rowz = 32");
    let e = nce::cost::parse_profile(&text, std::path::Path::new(PROFILE)).unwrap_err().to_string();
    assert!(e.contains(PROFILE) && e.contains("rowz"), "{e}");
}

//! Built-in cost plugins against hand-computed values (conventions: src/graph/mod.rs and each
//! plugin's module docs).

use approx::assert_relative_eq;
use nce::cost::{CostReport, Evaluator};
use nce::graph::{build, BitConfig, ModelKind, Network, Shape};
use nce::hw::Profile;
use std::path::Path;

fn resnet20(widths: Option<&[usize]>) -> Network {
    build(ModelKind::Resnet20, Shape::new(3, 32, 32), 10, widths, &BitConfig::uniform(2)).unwrap()
}

fn report(profile: &Profile, net: &Network) -> CostReport {
    Evaluator::new(profile).unwrap().evaluate(net, &resnet20(None)).unwrap()
}

fn layer(report: &CostReport, net: &Network, metric: &str, name: &str) -> f64 {
    let i = net.layers.iter().position(|l| l.name == name).unwrap();
    report.metrics.iter().find(|m| m.metric == metric).unwrap().per_layer[i]
}

/// `metric` of layer `name` as `plugin` computes it (several plugins may compute one metric).
fn layer_by(report: &CostReport, net: &Network, (metric, plugin): (&str, &str), name: &str) -> f64 {
    let i = net.layers.iter().position(|l| l.name == name).unwrap();
    report.metrics.iter().find(|m| m.metric == metric && m.plugin == plugin).unwrap().per_layer[i]
}

/// The shipped MCU profile with its latency table replaced by `table` (a file beside it) and
/// `[plugins.latency-lut]`'s options by `lut_options`.
fn mcu_with_table(table: &str, lut_options: &str) -> String {
    let text = std::fs::read_to_string("hw-profiles/mcu-cortex-m7.toml").unwrap();
    let lut = "[plugins.latency-lut]\ncycles_per_instruction = 1.0   # an assumption, see sources\n";
    assert!(text.contains(lut) && text.contains("file = \"tables/cortex-m7-insn.csv\""));
    text.replace(lut, &format!("[plugins.latency-lut]\n{lut_options}\n"))
        .replace("file = \"tables/cortex-m7-insn.csv\"", &format!("file = \"{table}\""))
}

#[test]
fn macs_params_bops_on_resnet20() {
    let p = Profile::load("hw-profiles/npu-int2-array.toml").unwrap();
    let net = resnet20(None);
    let r = report(&p, &net);
    assert_eq!(r.total("macs"), Some(40_551_040.0));
    assert_eq!(r.total("params"), Some(269_722.0));
    // 8-bit conv1 (442,368 MACs × 64) + 2-bit convs (40,108,032 × 4) + 8-bit fc (640 × 64)
    assert_eq!(r.total("bops"), Some(442_368.0 * 64.0 + 40_108_032.0 * 4.0 + 640.0 * 64.0));
    assert_eq!(layer(&r, &net, "macs", "layer1.0.conv_a"), 16.0 * 16.0 * 9.0 * 1024.0);
    assert_eq!(layer(&r, &net, "params", "fc"), 650.0);
    assert!(r.passes(), "the base network meets 1.0x budgets");
}

#[test]
fn packed_memory_counts_words_and_liveness() {
    let p = Profile::load("hw-profiles/npu-int2-array.toml").unwrap(); // 8-bit words, 8 B/channel
    let net = resnet20(None);
    let r = report(&p, &net);
    // conv1: 27 8-bit weights per channel = 27 bytes, ×16 channels, + 16 × 8 requant bytes
    assert_eq!(layer(&r, &net, "packed_weight_bytes", "conv1"), 27.0 * 16.0 + 128.0);
    // layer1.0.conv_a: 144 2-bit weights = 36 bytes per channel
    assert_eq!(layer(&r, &net, "packed_weight_bytes", "layer1.0.conv_a"), 36.0 * 16.0 + 128.0);
    // Peak while layer1.0.conv_b runs: conv1's output (kept for the add, 16 ch × 2 bit = 4 B/px),
    // conv_a's output (4 B/px) and conv_b's 8-bit output (16 B/px), at 32×32.
    assert_eq!(r.total("peak_activation_bytes"), Some((4.0 + 4.0 + 16.0) * 1024.0));

    // 32-bit words pad the 27-byte conv1 rows to 28 bytes.
    let text = std::fs::read_to_string("hw-profiles/npu-int2-array.toml").unwrap().replace("word_bits = 8 ", "word_bits = 32 ");
    let p32 = Profile::parse(&text, Path::new("x.toml")).unwrap();
    assert_eq!(p32.unit.word_bits, 32);
    let r = report(&p32, &net);
    assert_eq!(layer(&r, &net, "packed_weight_bytes", "conv1"), 28.0 * 16.0 + 128.0);
}

#[test]
fn roofline_on_the_mcu_profile() {
    let p = Profile::load("hw-profiles/mcu-cortex-m7.toml").unwrap();
    let net = resnet20(None);
    let r = report(&p, &net);
    // 1 lane × 16 two-bit MACs per word / 8 cycles × 216 MHz = 432 M MAC/s
    let compute_s = 2_359_296.0 / 432e6;
    // memory: 576 B weights + 4 KiB in + 4 KiB out at 0.864 GB/s is far below compute
    let expected_ms = compute_s * 1e3 / 0.8 + 0.020;
    let roofline = ("latency_ms", "roofline");
    assert_relative_eq!(layer_by(&r, &net, roofline, "layer1.0.conv_a"), expected_ms, max_relative = 1e-12);
    // A memory-bound layer: the add reads two 8/2-bit tensors and writes one.
    let add_bytes = 16.0 * 1024.0 + 4.0 * 1024.0; // 8-bit conv_b output in, 2-bit out
    assert_relative_eq!(layer_by(&r, &net, roofline, "layer1.0.add"), add_bytes / 0.864e9 * 1e3 / 0.8 + 0.020, max_relative = 1e-12);
}

#[test]
fn roofline_channel_granularity_pads_channels() {
    let p = Profile::load("hw-profiles/npu-int2-array.toml").unwrap(); // granularity 32
    let mut w = ModelKind::Resnet20.base_widths();
    w[1] = 33; // layer1.0.conv_a: 33 channels cost like 64
    let net = resnet20(Some(&w));
    let r = report(&p, &net);
    let per_s = 1024.0 * 4.0 * 1e9; // lanes × 2-bit values per 8-bit word × clock
    let compute_ms = 16.0 * 9.0 * 64.0 * 1024.0 / per_s * 1e3;
    assert_relative_eq!(layer(&r, &net, "latency_ms", "layer1.0.conv_a"), compute_ms / 0.7 + 0.001, max_relative = 1e-12);
}

#[test]
fn latency_lut_reads_and_interpolates() {
    let dir = tempfile::tempdir().unwrap();
    let table = "# backend=test threads=1\nsignature,count,mean_us,var_us2\n\
        conv3x3_s1_g1_i16_o16_h32_w32_w2a2,10,100,1\n\
        conv3x3_s1_g1_i16_o32_h32_w32_w2a2,10,180,1\n";
    std::fs::write(dir.path().join("t.csv"), table).unwrap();
    let text = mcu_with_table("t.csv", "allow_missing = true");
    let path = dir.path().join("p.toml");
    std::fs::write(&path, text).unwrap();
    let p = Profile::load(&path).unwrap();
    let mut w = ModelKind::Resnet20.base_widths();
    w[1] = 24; // 16×24 lies halfway between 16×16 and 16×32
    let net = resnet20(Some(&w));
    let r = Evaluator::new(&p).unwrap().evaluate(&net, &resnet20(None)).unwrap();
    let lut = r.metrics.iter().find(|m| m.metric == "latency_ms" && m.plugin == "latency-lut").unwrap();
    let at = |name: &str| lut.per_layer[net.layers.iter().position(|l| l.name == name).unwrap()];
    assert_relative_eq!(at("layer1.0.conv_a"), 0.140, max_relative = 1e-12);
    assert_relative_eq!(at("layer1.1.conv_a"), 0.100, max_relative = 1e-12);
    assert_eq!(at("fc"), 0.0, "unmeasured families cost 0 with allow_missing");
}

#[test]
fn latency_lut_without_allow_missing_names_the_signature() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.csv"), "signature,count,mean_us,var_us2\nlinear_i64_o10_w8a8,1,1,0\n").unwrap();
    let text = mcu_with_table("t.csv", "");
    let path = dir.path().join("p.toml");
    std::fs::write(&path, text).unwrap();
    let p = Profile::load(&path).unwrap();
    let e = Evaluator::new(&p).unwrap().evaluate(&resnet20(None), &resnet20(None)).unwrap_err().to_string();
    assert!(e.contains("t.csv") && e.contains("conv3x3_s1_g1_i3_o16_h32_w32_w8a8"), "{e}");
}

#[test]
fn relative_budgets_fail_wider_networks() {
    let p = Profile::load("hw-profiles/npu-int2-array.toml").unwrap();
    let wide: Vec<usize> = ModelKind::Resnet20.base_widths().iter().map(|w| w * 2).collect();
    let r = report(&p, &resnet20(Some(&wide)));
    let macs = r.budgets.iter().find(|b| b.metric == "macs").unwrap();
    assert!(!macs.pass && macs.max == 40_551_040.0 && macs.value > macs.max);
}

/// The shipped MCU profile's latency budget is the instruction table's sum (DSP path, counted
/// under QEMU), converted at the profile's clock and stated cycles per instruction: exactly the
/// table at 216 MHz and 1 cycle per instruction, halved at twice the clock, ×1.5 at CPI 1.5.
#[test]
fn mcu_latency_comes_from_the_instruction_table() {
    let p = Profile::load("hw-profiles/mcu-cortex-m7.toml").unwrap();
    let table = p.latency_table.as_ref().expect("the MCU profile names a table");
    assert!(table.meta["unit"].starts_with("instructions") && table.meta["backend"] == "qemu-cortex-m7-dsp");
    let budget = p.budgets.iter().find(|b| b.metric == "latency_ms").unwrap();
    assert_eq!(budget.plugin.as_deref(), Some("latency-lut"));
    let net = build(ModelKind::Resnet20, Shape::new(1, 28, 28), 10, None, &BitConfig::uniform(2)).unwrap();
    let lut_ms = |p: &Profile| {
        let r = Evaluator::new(p).unwrap().evaluate(&net, &net).unwrap();
        let m = r.metrics.iter().find(|m| m.metric == "latency_ms" && m.plugin == "latency-lut").unwrap();
        let b = r.budgets.iter().find(|b| b.metric == "latency_ms").unwrap();
        assert_relative_eq!(b.value, m.per_layer.iter().sum::<f64>(), max_relative = 1e-12);
        m.per_layer.clone()
    };
    let ms = lut_ms(&p);
    for (l, v) in net.layers.iter().zip(&ms) {
        assert_relative_eq!(*v, table.lookup_us(&l.signature()).unwrap() * 1e-3, max_relative = 1e-12);
    }
    let total: f64 = ms.iter().sum();
    let base_us: f64 = table.meta["base_model_us"].split(',').next().unwrap().parse().unwrap();
    assert_relative_eq!(total, base_us * 1e-3, max_relative = 1e-6);
    let dir = tempfile::tempdir().unwrap();
    let variant = |from: &str, to: &str| {
        let csv = std::fs::read_to_string("hw-profiles/tables/cortex-m7-insn.csv").unwrap();
        std::fs::write(dir.path().join("t.csv"), csv).unwrap();
        let text = mcu_with_table("t.csv", "cycles_per_instruction = 1.0").replace(from, to);
        std::fs::write(dir.path().join("p.toml"), text).unwrap();
        lut_ms(&Profile::load(dir.path().join("p.toml")).unwrap()).iter().sum::<f64>()
    };
    assert_relative_eq!(variant("clock_mhz = 216", "clock_mhz = 432"), total / 2.0, max_relative = 1e-12);
    assert_relative_eq!(variant("cycles_per_instruction = 1.0", "cycles_per_instruction = 1.5"), total * 1.5, max_relative = 1e-12);
}

fn mobilenetv2(widths: Option<&[usize]>) -> Network {
    build(ModelKind::Mobilenetv2(nce::graph::WidthMult::ONE), Shape::new(1, 28, 28), 10, widths, &BitConfig::uniform(2)).unwrap()
}

/// Every built-in plugin on one MobileNetV2 depthwise layer and its pointwise neighbour:
/// `stage2.0.dw` is a 3×3 depthwise conv over 96 channels at 28×28 (stride 1), `stage2.0.project`
/// a 1×1 conv 96 → 24.
#[test]
fn depthwise_and_pointwise_layers_by_hand() {
    let p = Profile::load("hw-profiles/npu-int2-array.toml").unwrap(); // 8-bit words, 8 B/channel, granularity 32
    let net = mobilenetv2(None);
    let r = Evaluator::new(&p).unwrap().evaluate(&net, &mobilenetv2(None)).unwrap();
    let (dw, pw) = ("stage2.0.dw", "stage2.0.project");
    // MACs: one 3×3 filter per channel; params: 9 weights + BN γ, β per channel.
    assert_eq!(layer(&r, &net, "macs", dw), 96.0 * 9.0 * 784.0);
    assert_eq!(layer(&r, &net, "params", dw), 96.0 * 9.0 + 2.0 * 96.0);
    assert_eq!(layer(&r, &net, "macs", pw), 96.0 * 24.0 * 784.0);
    assert_eq!(layer(&r, &net, "params", pw), 96.0 * 24.0 + 2.0 * 24.0);
    assert_eq!(layer(&r, &net, "bops", dw), 96.0 * 9.0 * 784.0 * 2.0 * 2.0);
    // Packed weights: 9 two-bit codes = 18 bits = 3 bytes per channel, + 8 requant bytes.
    assert_eq!(layer(&r, &net, "packed_weight_bytes", dw), 96.0 * 3.0 + 96.0 * 8.0);
    // pointwise: 96 codes = 24 bytes per output channel
    assert_eq!(layer(&r, &net, "packed_weight_bytes", pw), 24.0 * 24.0 + 24.0 * 8.0);
    // Roofline: the depthwise layer is memory-bound. 288 B weights + 2-bit 96-channel input and
    // output (24 B per pixel each, 784 pixels) at 25.6 GB/s, against 677,376 MACs at
    // 1024 lanes × 4 two-bit values × 1 GHz.
    let memory_s = (288.0 + 2.0 * 24.0 * 784.0) / 25.6e9;
    let compute_s = 96.0 * 9.0 * 784.0 / (1024.0 * 4.0 * 1e9);
    assert!(memory_s > compute_s);
    assert_relative_eq!(layer_by(&r, &net, ("latency_ms", "roofline"), dw), memory_s * 1e3 / 0.7 + 0.001, max_relative = 1e-12);
}

/// The latency table's depthwise entries: `g` = `i` = `o`, one family over every channel count,
/// interpolated linearly in the channels (a depthwise conv's work), not in `in × out`.
#[test]
fn latency_lut_prices_depthwise_widths_between_measured_ones() {
    let dir = tempfile::tempdir().unwrap();
    let table = "# backend=test threads=1\nsignature,count,mean_us,var_us2\n\
        conv3x3_s1_g48_i48_o48_h28_w28_w2a2,10,100,1\n\
        conv3x3_s1_g96_i96_o96_h28_w28_w2a2,10,200,1\n";
    std::fs::write(dir.path().join("t.csv"), table).unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, mcu_with_table("t.csv", "allow_missing = true")).unwrap();
    let p = Profile::load(&path).unwrap();
    // stage2.0.expand is slot 3 (conv1, stage1.0.project, stage2.0.expand): 72 channels.
    let kind = ModelKind::Mobilenetv2(nce::graph::WidthMult::ONE);
    let mut w = kind.base_widths();
    let net0 = mobilenetv2(None);
    let slot = net0.layers.iter().find(|l| l.name == "stage2.0.expand").unwrap().width_slot.unwrap();
    w[slot] = 72;
    let net = mobilenetv2(Some(&w));
    let r = Evaluator::new(&p).unwrap().evaluate(&net, &net0).unwrap();
    let lut = r.metrics.iter().find(|m| m.metric == "latency_ms" && m.plugin == "latency-lut").unwrap();
    let at = |name: &str| lut.per_layer[net.layers.iter().position(|l| l.name == name).unwrap()];
    assert_eq!(net.layers.iter().find(|l| l.name == "stage2.0.dw").unwrap().signature(), "conv3x3_s1_g72_i72_o72_h28_w28_w2a2");
    assert_relative_eq!(at("stage2.0.dw"), 0.150, max_relative = 1e-12);
    // stage2.1.dw has 24·6 = 144 channels: extrapolated along the 48 → 96 segment.
    assert_relative_eq!(at("stage2.1.dw"), 0.300, max_relative = 1e-12);
}

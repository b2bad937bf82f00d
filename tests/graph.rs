//! The layer graph against hand-computed MACs and parameter counts.

use nce::graph::{build, BitConfig, ModelKind, Op, Shape};

fn net(m: ModelKind, input: Shape, classes: usize) -> nce::graph::Network {
    build(m, input, classes, None, &BitConfig::uniform(2)).unwrap()
}

#[test]
fn resnet20_cifar_matches_hand_count() {
    // conv1 3·16·9·32² + stage1 6·16·16·9·32² + stage2 (16·32 + 5·32·32)·9·16²
    // + stage3 (32·64 + 5·64·64)·9·8² + fc 64·10
    let macs = 3 * 16 * 9 * 1024 + 6 * 16 * 16 * 9 * 1024 + (16 * 32 + 5 * 32 * 32) * 9 * 256 + (32 * 64 + 5 * 64 * 64) * 9 * 64 + 640;
    let n = net(ModelKind::Resnet20, Shape::new(3, 32, 32), 10);
    assert_eq!(n.macs(), macs as u64);
    assert_eq!(n.macs(), 40_551_040);
    // conv weights 268,346 − 650 (fc) … plus BN γ/β on 688 channels and the fc bias.
    let conv_w = 3 * 16 * 9 + 6 * 16 * 16 * 9 + (16 * 32 + 5 * 32 * 32) * 9 + (32 * 64 + 5 * 64 * 64) * 9;
    let bn = 2 * (7 * 16 + 6 * 32 + 6 * 64);
    assert_eq!(n.params(), (conv_w + bn + 650) as u64);
    assert_eq!(n.params(), 269_722);
    assert_eq!(n.widths.len(), 19);
    assert_eq!(n.layers.last().unwrap().out_shape, Shape::new(10, 1, 1));
}

#[test]
fn resnet20_on_fashion_mnist_shapes() {
    let n = net(ModelKind::Resnet20, Shape::new(1, 28, 28), 10);
    let macs = 16 * 9 * 784 + 6 * 16 * 16 * 9 * 784 + (16 * 32 + 5 * 32 * 32) * 9 * 196 + (32 * 64 + 5 * 64 * 64) * 9 * 49 + 640;
    assert_eq!(n.macs(), macs as u64);
    let gap = n.layers.iter().find(|l| l.op == Op::GlobalAvgPool).unwrap();
    assert_eq!(gap.in_shape, Shape::new(64, 7, 7));
}

#[test]
fn deeper_cifar_resnets() {
    for (m, convs) in [(ModelKind::Resnet32, 31), (ModelKind::Resnet56, 55)] {
        let n = net(m, Shape::new(3, 32, 32), 10);
        assert_eq!(n.widths.len(), convs, "{m}");
    }
    // ResNet-56: 125.49 M MACs and 0.85 M params, as pruning papers report it.
    let n = net(ModelKind::Resnet56, Shape::new(3, 32, 32), 10);
    assert!(n.macs() == 125_485_696 && (n.macs() as f64 / 1e6 - 125.49).abs() < 0.01, "{}", n.macs());
    assert!((n.params() as f64 / 1e6 - 0.85).abs() < 0.01, "{}", n.params());
}

#[test]
fn imagenet_resnets_match_torchvision() {
    let r18 = net(ModelKind::Resnet18, Shape::new(3, 224, 224), 1000);
    assert_eq!(r18.params(), 11_689_512); // torchvision resnet18
    assert_eq!(r18.macs(), 1_814_073_344);
    let r50 = net(ModelKind::Resnet50, Shape::new(3, 224, 224), 1000);
    assert_eq!(r50.params(), 25_557_032); // torchvision resnet50
    assert!((r50.macs() as f64 / 1e9 - 4.09).abs() < 0.01, "{}", r50.macs());
}

#[test]
fn widths_change_shapes_and_adds_zero_pad() {
    let mut w = ModelKind::Resnet20.base_widths();
    w[1] = 8; // layer1.0.conv_a narrower
    w[2] = 24; // layer1.0.conv_b wider than the 16-channel shortcut
    let n = build(ModelKind::Resnet20, Shape::new(3, 32, 32), 10, Some(&w), &BitConfig::uniform(2)).unwrap();
    let find = |name: &str| n.layers.iter().find(|l| l.name == name).unwrap();
    assert_eq!(find("layer1.0.conv_b").in_shape.c, 8);
    assert_eq!(find("layer1.0.add").out_shape.c, 24);
    assert_eq!(find("layer1.1.conv_a").in_shape.c, 24);
}

#[test]
fn bad_widths_and_inputs_are_errors() {
    let e = build(ModelKind::Resnet20, Shape::new(3, 32, 32), 10, Some(&[16; 3]), &BitConfig::uniform(2)).unwrap_err();
    assert!(e.to_string().contains("19 width slots"), "{e}");
    let mut w = ModelKind::Resnet20.base_widths();
    w[4] = 0;
    let e = build(ModelKind::Resnet20, Shape::new(3, 32, 32), 10, Some(&w), &BitConfig::uniform(2)).unwrap_err();
    assert!(e.to_string().contains("at least 1"), "{e}");
    assert!("0x28x28".parse::<Shape>().is_err());
    assert!("resnet99".parse::<ModelKind>().is_err());
    assert!("3x32".parse::<Shape>().is_err());
}

#[test]
fn bits_first_last_and_overrides() {
    let mut cfg = BitConfig::uniform(2);
    cfg.overrides.insert("layer2.0.conv_a".into(), (4, 4));
    let n = build(ModelKind::Resnet20, Shape::new(3, 32, 32), 10, None, &cfg).unwrap();
    let find = |name: &str| n.layers.iter().find(|l| l.name == name).unwrap();
    assert_eq!((find("conv1").wbits, find("conv1").abits), (8, 8));
    assert_eq!((find("fc").wbits, find("fc").abits), (8, 8));
    assert_eq!((find("layer1.0.conv_a").wbits, find("layer1.0.conv_a").abits), (2, 2));
    assert_eq!((find("layer2.0.conv_a").wbits, find("layer2.0.conv_a").abits), (4, 4));
    cfg.overrides.insert("nope".into(), (2, 2));
    assert!(build(ModelKind::Resnet20, Shape::new(3, 32, 32), 10, None, &cfg).is_err());
}

#[test]
fn arch_file_input_is_a_typed_shape() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nce-fashion-arch-s0.toml");
    let arch = nce::graph::ArchFile::load(&shipped).unwrap();
    assert_eq!(arch.input, Shape::new(1, 28, 28));
    // Written back as the same `CxHxW` text, and read again unchanged.
    let copy = dir.path().join("arch.toml");
    arch.save(&copy).unwrap();
    let text = std::fs::read_to_string(&copy).unwrap();
    assert!(text.contains("input = \"1x28x28\""), "{text}");
    assert_eq!(nce::graph::ArchFile::load(&copy).unwrap().input, arch.input);
    // A malformed shape is an error at load, naming the file, the line and the value.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text.replace("input = \"1x28x28\"", "input = \"1x28\"")).unwrap();
    let e = nce::graph::ArchFile::load(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.toml") && e.contains(": 2:9: ") && e.contains("`1x28`"), "{e}");
}

//! The committed W2A2 ResNet-20 and MobileNetV2 (Fashion-MNIST) models: the ResNet's export is
//! reproducible, and the integer engine agrees with the tch integer simulation of each
//! checkpoint on every layer, on every CPU path of this machine.
//! (`nce validate examples/resnet20-w2a2-fashion.nce` does the same on all 10,000 images.)
#![cfg(feature = "train")]

use nce::engine::cpu::{Backend, Cpu};
use nce::engine::plan::QModel;
use nce::export::{convert, format, validate};
use std::path::Path;

const CKPT: &str = "examples/resnet20-w2a2-fashion.ot";
const MODEL: &str = "examples/resnet20-w2a2-fashion.nce";

#[test]
fn export_is_reproducible() {
    let m = nce::train::load_model(Path::new(CKPT)).unwrap();
    let layers = convert::int_layers(&m).unwrap();
    let c = convert::to_container(&m, &layers, CKPT, None).unwrap();
    let bytes = format::encode(&c).unwrap();
    assert_eq!(bytes, std::fs::read(MODEL).unwrap(), "re-exporting {CKPT} must give {MODEL} byte for byte");
}

#[test]
fn file_size_is_close_to_two_bits_per_weight() {
    let model = QModel::load(Path::new(MODEL)).unwrap();
    let c = format::decode(&std::fs::read(MODEL).unwrap()).unwrap();
    let net = model.net();
    let two_bit: u64 = net.layers.iter().filter(|l| l.wbits == 2).map(|l| l.weight_count() as u64 * 2).sum::<u64>() / 8;
    let eight_bit: u64 = net.layers.iter().filter(|l| l.wbits == 8).map(|l| l.weight_count() as u64).sum();
    let size = std::fs::metadata(MODEL).unwrap().len();
    let overhead = size - c.header.len() as u64 - eight_bit;
    // Packed words (channel padding) plus 8 bytes of requantisation data per output channel
    // and the array directory: within 15 % of the bare 2-bit payload.
    assert!(overhead as f64 <= 1.15 * two_bit as f64, "{overhead} bytes vs {two_bit} bytes of 2-bit weights");
}

const MNV2_CKPT: &str = "examples/mobilenetv2-w2a2-fashion.ot";
const MNV2_MODEL: &str = "examples/mobilenetv2-w2a2-fashion.nce";

#[test]
fn engine_matches_the_simulation_on_every_layer() {
    engine_matches_simulation(MODEL, CKPT, 120);
}

#[test]
fn mobilenet_engine_matches_the_simulation_on_every_layer() {
    // Its depthwise convs run the depthwise kernels of every CPU path.
    engine_matches_simulation(MNV2_MODEL, MNV2_CKPT, 50);
}

fn engine_matches_simulation(model: &str, ckpt: &str, images: usize) {
    let model = QModel::load(Path::new(model)).unwrap();
    let ckpt = nce::train::load_model(Path::new(ckpt)).unwrap();
    let test = nce::data::load("fashion-mnist", Path::new("data"), nce::data::Split::Test).unwrap();
    for backend in Backend::available() {
        // The scalar reference is slow in debug builds: fewer images.
        let n = if backend == Backend::Scalar { 20 } else { images };
        let ds = test.subset(n);
        let cpu = Cpu::new(backend, 1).unwrap();
        let outs = model.run_layers_batch(&cpu, &ds.images, 2).unwrap();
        let r = validate::compare(&model, &ckpt, &ds, &outs).unwrap();
        assert!(r.exact(), "{backend:?}: {r:?}");
        assert_eq!(r.engine_correct, r.simulation_correct);
        assert!(r.compared_values > n as u64 * 100_000, "every layer is compared: {}", r.compared_values);
        assert!(r.engine_correct as f64 / n as f64 > 0.7, "accuracy {} of {n}", r.engine_correct);
    }
}

#[test]
fn batch_api_matches_single_images() {
    let model = QModel::load(Path::new(MODEL)).unwrap();
    let cpu = Cpu::best(1);
    let prepared = model.prepare(&cpu).unwrap();
    let ds = nce::data::load("fashion-mnist", Path::new("data"), nce::data::Split::Test).unwrap().subset(7);
    let batch = model.run_batch(&cpu, &prepared, &ds.images, 3).unwrap();
    assert_eq!(batch.len(), 7);
    let per = ds.shape.numel();
    for (i, logits) in batch.iter().enumerate() {
        assert_eq!(logits, &model.run(&cpu, &prepared, &ds.images[i * per..(i + 1) * per]).unwrap());
    }
    assert!(model.run_batch(&cpu, &prepared, &ds.images[..per + 1], 2).is_err());
}

//! Forward / forward+backward time of ResNet-20 (batch 128, 3×32×32, 1 thread) at FP32 and
//! W2A2, to see where training time goes. `cargo run --release --example step_profile`
use nce::graph::{build, BitConfig, ModelKind, Shape};
use nce::models::{Model, ModelOptions};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

fn main() {
    tch::set_num_threads(1);
    for (name, bits) in [("fp32", BitConfig::full_precision()), ("w2a2", BitConfig::uniform(2))] {
        let net = build(ModelKind::Resnet20, Shape::new(3, 32, 32), 10, None, &bits).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Model::new(&vs.root(), &net, &ModelOptions::default()).unwrap();
        let x = Tensor::rand([128, 3, 32, 32], (Kind::Float, Device::Cpu));
        let y = Tensor::randint(10, [128], (Kind::Int64, Device::Cpu));
        for phase in ["fwd", "fwdbwd"] {
            let mut t = Vec::new();
            for _ in 0..6 {
                let s = Instant::now();
                let loss = nn::ModuleT::forward_t(&m, &x, true).cross_entropy_for_logits(&y);
                if phase == "fwdbwd" {
                    loss.backward();
                }
                t.push(s.elapsed().as_secs_f64() * 1e3);
            }
            t.sort_by(f64::total_cmp);
            println!("{name} {phase} {:.1} ms", t[3]);
        }
    }
}

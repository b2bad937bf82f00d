//! Micro-benchmark of the activation and weight quantizers' training-time cost (forward +
//! backward) on ResNet-20-sized tensors. `cargo run --release --example pact_profile`
use std::time::Instant;
use tch::{Kind, Tensor};

fn time(name: &str, f: impl Fn()) {
    let mut t = Vec::new();
    for _ in 0..7 {
        let s = Instant::now();
        f();
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    println!("{name:<28} {:.2} ms", t[3]);
}

fn main() {
    tch::set_num_threads(1);
    let x = (Tensor::randn([128, 16, 32, 32], (Kind::Float, tch::Device::Cpu)) * 1.5).set_requires_grad(true);
    let alpha = Tensor::from_slice(&[2.0f32]).set_requires_grad(true);
    let w = Tensor::randn([16, 16, 3, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    time("relu", || x.relu().sum(Kind::Float).backward());
    time("pact exact", || nce::quant::pact_quantize(&x, &alpha, 2).sum(Kind::Float).backward());
    time("pact fused", || nce::quant::pact_quantize_fused(&x, &alpha, 2).sum(Kind::Float).backward());
    time("pact v1", || {
        let a = f64::try_from(&alpha.detach()).unwrap();
        let xd = x.detach();
        let mask = xd.ge(a).to_kind(Kind::Float);
        let y = x.clamp(0.0, a) + mask * (&alpha - alpha.detach());
        let q = ((xd.clamp(0.0, a) * (3.0 / a)) + 0.5).floor() * (a / 3.0);
        (&y + (q - y.detach())).sum(Kind::Float).backward()
    });
    time("sawb", || nce::quant::sawb_quantize(&w, 2).sum(Kind::Float).backward());
    let y = Tensor::randn([128, 16, 32, 32], (Kind::Float, tch::Device::Cpu));
    let g = Tensor::ones([16], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let b = Tensor::zeros([16], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let rm = Tensor::zeros([16], (Kind::Float, tch::Device::Cpu));
    let rv = Tensor::ones([16], (Kind::Float, tch::Device::Cpu));
    time("batch_norm", || y.batch_norm(Some(&g), Some(&b), Some(&rm), Some(&rv), true, 0.1, 1e-5, true).sum(Kind::Float).backward());
    let wc = Tensor::randn([16, 16, 3, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    time("conv 16->16 @32", || y.conv2d(&wc, None::<Tensor>, [1], [1], [1], 1).sum(Kind::Float).backward());
}

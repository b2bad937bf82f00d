use std::time::Instant;
use tch::{Device, Kind, Tensor};
fn time(f: &dyn Fn()) -> f64 {
    let mut t = Vec::new();
    for _ in 0..5 {
        let s = Instant::now();
        f();
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    t[2]
}
fn main() {
    tch::set_num_threads(2);
    let c = 96i64;
    for cl in [false] {
        let x = Tensor::rand([128, c, 28, 28], (Kind::Float, Device::Cpu));
        let wd = Tensor::randn([c, 1, 3, 3], (Kind::Float, Device::Cpu));
        let wp = Tensor::randn([c, c, 1, 1], (Kind::Float, Device::Cpu));
        let x = x.set_requires_grad(true);
        let wd = wd.set_requires_grad(true);
        let wp = wp.set_requires_grad(true);
        let dw = time(&|| { let y = x.conv2d(&wd, None::<Tensor>, [1], [1], [1], c); y.sum(Kind::Float).backward(); });
        let dwf = time(&|| { let _y = x.conv2d(&wd, None::<Tensor>, [1], [1], [1], c); });
        let pw = time(&|| { let y = x.conv2d(&wp, None::<Tensor>, [1], [0], [1], 1); y.sum(Kind::Float).backward(); });
        let bn = time(&|| { let y = x.batch_norm(None::<Tensor>, None::<Tensor>, None::<Tensor>, None::<Tensor>, true, 0.1, 1e-5, true); y.sum(Kind::Float).backward(); });
        println!("channels_last={cl}: dw fwd {dwf:.1} ms, dw fwd+bwd {dw:.1} ms, pw fwd+bwd {pw:.1} ms, bn fwd+bwd {bn:.1} ms");
    }
}

//! Conv kernels on the ResNet-20 (CIFAR, 32×32) layer shapes.
//!
//! Every shape is one criterion group whose throughput is counted in MACs, so criterion's
//! "elem/s" reads directly as MAC/s. The implementations of a shape are a flat list of
//! `(name, closure)` built by [`impls`]; adding another engine (e.g. libtorch fp32 conv behind
//! `#[cfg(feature = "train")]`) means pushing one more entry there.
//!
//! Run: `cargo bench --no-default-features --bench kernels -- --warm-up-time 1 --measurement-time 2`
//! (filter with a substring, e.g. `-- 64x64`).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nce::engine::cpu::{Backend, Cpu, PreparedConv};
use nce::engine::{Conv2d, ConvWeights, PackedW2, QTensor, Requant, Residual, Weights8};
use std::hint::black_box;

/// One conv layer shape (3×3, pad 1).
#[derive(Clone, Copy)]
struct Shape {
    c_in: usize,
    c_out: usize,
    /// Input height = width.
    hw: usize,
    stride: usize,
    /// First layer: 8-bit weights over 8-bit pixels.
    w8: bool,
    /// Second conv of a block: fused residual add (same-shape shortcut).
    residual: bool,
}

impl Shape {
    const fn w2(c_in: usize, c_out: usize, hw: usize, stride: usize) -> Self {
        Shape { c_in, c_out, hw, stride, w8: false, residual: false }
    }
    fn out_hw(&self) -> usize {
        (self.hw - 1) / self.stride + 1
    }
    fn macs(&self) -> u64 {
        (self.out_hw() * self.out_hw() * self.c_out * 9 * self.c_in) as u64
    }
    fn name(&self) -> String {
        let kind = if self.w8 { "w8a8" } else { "w2a2" };
        let res = if self.residual { "+res" } else { "" };
        format!("conv3x3 {}->{} @{}x{} s{} {kind}{res}", self.c_in, self.c_out, self.hw, self.hw, self.stride)
    }
}

/// ResNet-20 on 32×32: the five 2-bit conv shapes, the residual variant of the first, and the
/// 8-bit stem.
const SHAPES: [Shape; 7] = [
    Shape::w2(16, 16, 32, 1),
    Shape::w2(16, 32, 32, 2),
    Shape::w2(32, 32, 16, 1),
    Shape::w2(32, 64, 16, 2),
    Shape::w2(64, 64, 8, 1),
    Shape { residual: true, ..Shape::w2(16, 16, 32, 1) },
    Shape { w8: true, ..Shape::w2(3, 16, 32, 1) },
];

/// splitmix64, for reproducible random layers.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A random quantized layer of this shape, its input and (if any) its shortcut tensor. Other
/// engines (a float conv) can build the same layer from `conv.weights.codes_i32()`.
struct Layer {
    conv: Conv2d,
    x: QTensor,
    shortcut: Option<QTensor>,
}

fn layer(s: &Shape, seed: u64) -> Layer {
    let mut rng = Rng(seed);
    let k_len = 9 * s.c_in;
    let weights = if s.w8 {
        let w = (0..s.c_out * k_len).map(|_| ((rng.next() % 255) as i32 - 127) as i8).collect();
        ConvWeights::W8(Weights8::new(s.c_out, k_len, w).unwrap())
    } else {
        let w: Vec<i8> = (0..s.c_out * k_len).map(|_| [-3, -1, 1, 3][(rng.next() % 4) as usize]).collect();
        ConvWeights::W2(PackedW2::pack(s.c_out, k_len, &w).unwrap())
    };
    let requant = Requant {
        m: (0..s.c_out).map(|_| (rng.next() % (1 << 20)) as i32 - (1 << 18)).collect(),
        b: (0..s.c_out).map(|_| (rng.next() % (1 << 24)) as i32 - (1 << 23)).collect(),
        shift: 22,
        qmax: 3,
    };
    let conv = Conv2d::new(s.c_in, 3, s.stride, 1, weights, requant).unwrap();
    let amax = if s.w8 { 256 } else { 4 };
    let x = QTensor::new(s.hw, s.hw, s.c_in, (0..s.hw * s.hw * s.c_in).map(|_| (rng.next() % amax) as u8).collect())
        .unwrap();
    let shortcut = s.residual.then(|| {
        let n = s.out_hw() * s.out_hw() * s.c_out;
        QTensor::new(s.out_hw(), s.out_hw(), s.c_out, (0..n).map(|_| (rng.next() % 4) as u8).collect()).unwrap()
    });
    Layer { conv, x, shortcut }
}

/// A named implementation of one layer: each call runs the layer once.
type Impl<'a> = (String, Box<dyn FnMut() + 'a>);

/// All engines to compare on `l`: the scalar reference and AVX2, each with 1 and 2 threads.
fn impls(l: &Layer) -> Vec<Impl<'_>> {
    let mut v: Vec<Impl<'_>> = Vec::new();
    for backend in Backend::available() {
        for threads in [1, 2] {
            let cpu = Cpu::new(backend, threads).unwrap();
            let p: PreparedConv = cpu.prepare(&l.conv).unwrap();
            let run = move || {
                let res = l.shortcut.as_ref().map(|t| Residual { input: t, stride: 1, r: 1 << 21 });
                black_box(cpu.conv2d(&p, black_box(&l.x), res.as_ref()).unwrap());
            };
            v.push((format!("{backend}/{threads}t"), Box::new(run)));
        }
    }
    v
}

fn conv_shapes(c: &mut Criterion) {
    for (i, s) in SHAPES.iter().enumerate() {
        let l = layer(s, i as u64 + 1);
        let mut g = c.benchmark_group(s.name());
        g.throughput(Throughput::Elements(s.macs()));
        for (name, mut f) in impls(&l) {
            g.bench_function(name, |b| b.iter(&mut f));
        }
        g.finish();
    }
}

criterion_group!(benches, conv_shapes);
criterion_main!(benches);

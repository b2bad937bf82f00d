//! Whole-model batch-1 latency: ResNet-20 W2A2 on the nce integer engine against libtorch fp32
//! eval of the same network, timed interleaved in one process.
//!
//! Engine side: a `.nce` model run with [`QModel::run`] (image `C×H×W` u8 in, integer logits
//! out: CHW→HWC, every conv with its fused requantisation and residual add, pooling,
//! classifier), on the best backend (AVX2 where present). Without a trained checkpoint the
//! model is synthetic: [`synthetic`] builds a [`Container`] for
//! `graph::build(ResNet-20, input, 10, None, BitConfig::uniform(2))` that
//! [`QModel::from_container`] accepts, with random 2-bit codes (packed with
//! [`PackedW2::pack`]), random 8-bit first conv / classifier, and per-channel `m`, `b`, `shift`,
//! `r` chosen so that the output codes spread over 0..=3 (the bench prints their histogram).
//! Latency does not depend on the values, only on the shapes.
//!
//! libtorch side: [`nce::models::Model`] built from the same widths with
//! `BitConfig::full_precision()` (conv → BatchNorm → ReLU, option-A adds, average pool, linear),
//! eval mode under `tch::no_grad`, batch 1 f32. As an extra, stricter baseline the same graph
//! with BatchNorm folded into the conv bias ("libtorch fp32, BN folded"), as a deployment
//! would run it.
//!
//! Rows: 1 thread for both sides (the goal: engine ≥ 2.5× faster than libtorch eval), then 2
//! threads: the engine splitting every layer over 2 threads, the same with small layers left
//! on one thread (`Cpu::with_min_macs_per_thread`), and — as *throughput*, not latency — two
//! images in parallel on two 1-thread engines, next to libtorch at batch 2 on 2 threads.
//!
//! Every group of rows is measured interleaved: timed batches of about `--batch-ms` of each
//! side in turn (order rotated every round) for `--rounds` rounds or `--max-secs` seconds,
//! whichever ends first. The table shows each side's median, quartiles and minimum per image,
//! and the speed-up over libtorch as the median over rounds of the ratio *within* a round: on
//! a shared, loaded machine the times are bimodal (a core to ourselves or half of one), and
//! pairing keeps both sides of each ratio under the same load.
//!
//! `cargo bench --bench model [-- --rounds N --batch-ms MS --max-secs S --model FILE.nce
//! --no-synthetic --one-thread --write-synthetic FILE.nce]` (the last writes the synthetic
//! 3×32×32 model and exits).
//!
//! Models: synthetic 3×32×32 (CIFAR) and 1×28×28 (Fashion-MNIST), plus
//! `examples/resnet20-w2a2-fashion.nce` when it exists and every `--model FILE`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::Rng;
use nce::engine::cpu::model::Prepared;
use nce::engine::cpu::Cpu;
use nce::engine::plan::{Header, LayerOut, QModel};
use nce::engine::PackedW2;
use nce::export::format::{self, Array, Container, Entry};
use nce::graph::{build, BitConfig, ModelKind, Network, Op, Shape, Src};
use nce::models::{Model, ModelOptions};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};
use tch::{nn, nn::ModuleT, Device, Kind, Tensor};

/// Largest shift in `0..=30` keeping every `|v|·2^shift` inside int32 (as the exporter picks it).
fn pick_shift(values: &[f64]) -> u32 {
    let max = values.iter().fold(0f64, |m, v| m.max(v.abs()));
    (0..=30u32).rev().find(|&s| max * f64::from(1u32 << s) <= (i32::MAX - 1) as f64).unwrap_or(0)
}

/// A `.nce` container for ResNet-20 W2A2 on `input` with random, valid parameters.
///
/// Codes are uniform, so a conv's accumulator has mean ≈ 0 and standard deviation
/// `σ = √(k_len · E[a²] · E[c²])`; each channel's `m ≈ 1/σ` and `b ≈ 1.5` (in output codes)
/// centre its outputs in 0..=3 with a spread of about one code. A residual conv adds the
/// shortcut codes with `r = ½`, and `b` drops by the shortcut's mean contribution.
fn synthetic(input: Shape, seed: u64) -> Container {
    let net = build(ModelKind::Resnet20, input, 10, None, &BitConfig::uniform(2)).expect("ResNet-20 graph");
    let mut rng = Rng::new(seed);
    let mut arrays = BTreeMap::new();
    let mut put = |name: String, dims: Vec<usize>, data: Array| {
        arrays.insert(name, Entry { dims, data });
    };
    for l in &net.layers {
        match l.op {
            Op::Conv { k, relu, .. } => {
                let (cin, cout) = (l.in_shape.c, l.out_shape.c);
                let k_len = cin * k * k;
                // E[a²] of inputs uniform in 0..=amax, E[c²] of the weight codes.
                let amax = if l.inputs[0] == Src::Input { 255.0 } else { ((1u32 << l.abits) - 1) as f64 };
                let ea2 = amax * (2.0 * amax + 1.0) / 6.0;
                let (w, ec2) = match l.wbits {
                    2 => {
                        let codes: Vec<i8> = (0..cout * k_len).map(|_| [-3, -1, 1, 3][(rng.next() % 4) as usize]).collect();
                        let p = PackedW2::pack(cout, k_len, &codes).expect("2-bit codes");
                        (Entry { dims: vec![cout, p.words_per_channel()], data: Array::U32(p.words) }, 5.0)
                    }
                    8 => {
                        let codes: Vec<i8> = (0..cout * k_len).map(|_| ((rng.next() % 255) as i32 - 127) as i8).collect();
                        (Entry { dims: vec![cout, k_len], data: Array::I8(codes) }, 127.0 * 128.0 / 3.0)
                    }
                    b => panic!("{}: {b}-bit weights", l.name),
                };
                put(format!("{}.w", l.name), w.dims, w.data);
                let sigma = (k_len as f64 * ea2 * ec2).sqrt();
                let r_real = if relu { None } else { Some(0.5) };
                // Shortcut codes are ~uniform in 0..=3 (mean 1.5): their mean contribution.
                let centre = 1.5 - r_real.map_or(0.0, |r| r * 1.5);
                let m: Vec<f64> = (0..cout).map(|_| rng.uniform(0.8, 1.2) / sigma).collect();
                let b: Vec<f64> = (0..cout).map(|_| centre + rng.uniform(-0.3, 0.3)).collect();
                let mut all = m.clone();
                all.extend(&b);
                all.extend(r_real);
                let shift = pick_shift(&all);
                let f = f64::from(1u32 << shift);
                let ints = |v: &[f64]| Array::I32(v.iter().map(|x| (x * f).round() as i32).collect());
                put(format!("{}.m", l.name), vec![cout], ints(&m));
                put(format!("{}.b", l.name), vec![cout], ints(&b));
                put(format!("{}.shift", l.name), vec![1], Array::I32(vec![shift as i32]));
                if let Some(r) = r_real {
                    put(format!("{}.r", l.name), vec![1], ints(&[r]));
                }
            }
            Op::Linear => {
                let (cin, cout) = (l.in_shape.numel(), l.out_shape.c);
                let w = (0..cout * cin).map(|_| ((rng.next() % 255) as i32 - 127) as i8).collect();
                put(format!("{}.w", l.name), vec![cout, cin], Array::I8(w));
                let b = (0..cout).map(|_| (rng.next() % 20_001) as i32 - 10_000).collect();
                put(format!("{}.b", l.name), vec![cout], Array::I32(b));
            }
            _ => {}
        }
    }
    let header = Header {
        kind: "nce-model".into(),
        net,
        profile: None,
        source: Some("synthetic (benches/model.rs)".into()),
        scales: BTreeMap::new(),
    };
    Container { header: serde_json::to_string(&header).expect("header JSON"), arrays }
}

/// The network as libtorch fp32 with BatchNorm folded into each conv's bias: conv(+bias) →
/// ReLU, option-A adds, average pool, linear. Random He-normal weights.
struct Folded {
    net: Network,
    /// Per layer: weight and bias (convs and the classifier).
    params: Vec<Option<(Tensor, Tensor)>>,
}

impl Folded {
    fn new(net: &Network) -> Self {
        let params = net
            .layers
            .iter()
            .map(|l| match l.op {
                Op::Conv { k, .. } => {
                    let (cin, cout, k) = (l.in_shape.c as i64, l.out_shape.c as i64, k as i64);
                    let std = (2.0 / (cin * k * k) as f64).sqrt();
                    Some((
                        Tensor::randn([cout, cin, k, k], (Kind::Float, Device::Cpu)) * std,
                        Tensor::randn([cout], (Kind::Float, Device::Cpu)) * 0.1,
                    ))
                }
                Op::Linear => {
                    let (cin, cout) = (l.in_shape.numel() as i64, l.out_shape.c as i64);
                    Some((
                        Tensor::randn([cout, cin], (Kind::Float, Device::Cpu)) * (1.0 / cin as f64).sqrt(),
                        Tensor::zeros([cout], (Kind::Float, Device::Cpu)),
                    ))
                }
                _ => None,
            })
            .collect();
        Folded { net: net.clone(), params }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut outs: Vec<Option<Tensor>> = (0..self.net.layers.len()).map(|_| None).collect();
        for (i, l) in self.net.layers.iter().enumerate() {
            let get = |s: Src| match s {
                Src::Input => x.shallow_clone(),
                Src::Layer(j) => outs[j].as_ref().expect("computed before").shallow_clone(),
            };
            let a = get(l.inputs[0]);
            let y = match l.op {
                Op::Conv { stride, pad, relu, .. } => {
                    let (w, b) = self.params[i].as_ref().expect("conv params");
                    let (s, p) = (stride as i64, pad as i64);
                    let mut y = a.conv2d(w, Some(b), [s, s], [p, p], [1, 1], 1);
                    if relu {
                        y.relu_()
                    } else {
                        y
                    }
                }
                Op::Add { .. } => {
                    let b = get(l.inputs[1]);
                    let (ca, cb) = (a.size()[1], b.size()[1]);
                    let b = if cb < ca { b.constant_pad_nd([0, 0, 0, 0, 0, ca - cb]) } else { b };
                    (a + b).relu_()
                }
                Op::Subsample { stride } => {
                    let s = stride as i64;
                    a.slice(2, 0, None, s).slice(3, 0, None, s)
                }
                Op::GlobalAvgPool => a.adaptive_avg_pool2d([1, 1]),
                Op::Linear => {
                    let (w, b) = self.params[i].as_ref().expect("linear params");
                    a.flatten(1, -1).linear(w, Some(b))
                }
                Op::MaxPool { .. } => panic!("no max pool in ResNet-20"),
            };
            outs[i] = Some(y);
        }
        outs.pop().flatten().expect("logits")
    }
}

/// The `p`-quantile (0..=1) of `v`, linearly interpolated.
fn quantile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let x = p * (v.len() - 1) as f64;
    let (i, f) = (x.floor() as usize, x.fract());
    v[i] + f * (v[(i + 1).min(v.len() - 1)] - v[i])
}

/// One measured side: each call processes `images` images.
struct Side<'a> {
    label: String,
    threads: usize,
    images: usize,
    /// The ratio column's reference: libtorch eval (latency rows) or its batch-2 throughput.
    baseline: bool,
    /// Throughput row (compared with the throughput baseline).
    throughput: bool,
    run: Box<dyn FnMut() + 'a>,
}

struct Opts {
    /// Skip the 2-thread group.
    one_thread: bool,
    rounds: usize,
    batch: Duration,
    max: Duration,
}

/// Times every side interleaved and returns, per side, its time per image (µs) in each round
/// (rounds are comparable across sides: they ran back to back).
fn interleaved(sides: &mut [Side], o: &Opts) -> Vec<Vec<f64>> {
    let reps: Vec<usize> = sides
        .iter_mut()
        .map(|s| {
            let t = Instant::now();
            let mut n = 0usize;
            while n < 3 || t.elapsed() < Duration::from_millis(200) {
                (s.run)();
                n += 1;
            }
            let per = t.elapsed().as_secs_f64() / n as f64;
            ((o.batch.as_secs_f64() / per).round() as usize).max(1)
        })
        .collect();
    let mut times = vec![Vec::new(); sides.len()];
    let start = Instant::now();
    let mut rounds = 0;
    while rounds < o.rounds && (rounds < 5 || start.elapsed() < o.max) {
        for j in 0..sides.len() {
            let i = (j + rounds) % sides.len();
            let t = Instant::now();
            for _ in 0..reps[i] {
                (sides[i].run)();
            }
            times[i].push(t.elapsed().as_secs_f64() * 1e6 / (reps[i] * sides[i].images) as f64);
        }
        rounds += 1;
    }
    times
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

fn set_threads(n: i32) {
    if tch::get_num_threads() != n {
        tch::set_num_threads(n);
    }
}

/// The engine running one image per call.
fn engine_side<'a>(label: &str, threads: usize, qm: &'a QModel, cpu: Cpu, p: &'a Prepared, img: &'a [u8]) -> Side<'a> {
    let run = move || drop(black_box(qm.run(&cpu, p, black_box(img)).unwrap()));
    Side { label: label.into(), threads, images: 1, baseline: false, throughput: false, run: Box::new(run) }
}

/// Benchmarks one model and prints its tables. `file_bytes`: size of the encoded `.nce` file.
fn bench(label: &str, qm: &QModel, file_bytes: usize, o: &Opts) {
    let net = qm.net().clone();
    let input = net.input;
    println!("## {label}: {} {input}, {} classes", net.model, net.classes);
    // Size: the file against the bare 2-bit budget of the parameter count.
    let params = net.params();
    let (mut w2, mut w8) = (0u64, 0u64);
    for (_, l) in net.weighted_layers() {
        match l.wbits {
            2 => w2 += l.weight_count() as u64,
            _ => w8 += l.weight_count() as u64,
        }
    }
    let two_bit = params as f64 * 2.0 / 8.0;
    println!(
        "size: .nce file {file_bytes} B ({:.1} KiB); params {params} (graph convention: weights + BN γ/β + biases) × 2 bits = {two_bit:.0} B; \
         file / (params × 2 bits) = {:.2}; weights: {w2} 2-bit + {w8} 8-bit = {:.0} B packed; fp32 model = {} B",
        file_bytes as f64 / 1024.0,
        file_bytes as f64 / two_bit,
        (w2 as f64 * 2.0 + w8 as f64 * 8.0) / 8.0,
        params * 4
    );
    println!("MACs per image: {:.2} M", net.macs() as f64 / 1e6);

    let mut rng = Rng::new(0x5eed ^ file_bytes as u64);
    let img: Vec<u8> = (0..input.numel()).map(|_| (rng.next() % 256) as u8).collect();
    let img2: Vec<u8> = (0..input.numel()).map(|_| (rng.next() % 256) as u8).collect();

    // Engine.
    let cpu1 = Cpu::best(1);
    let p1 = qm.prepare(&cpu1).expect("prepare");
    let cpu2 = Cpu::best(2);
    let p2 = qm.prepare(&cpu2).expect("prepare");
    const MIN_MACS: u64 = 1 << 21;
    let cpu2m = Cpu::best(2).with_min_macs_per_thread(MIN_MACS);
    let logits = qm.run(&cpu1, &p1, &img).expect("engine run");
    assert_eq!(qm.run(&cpu2, &p2, &img).expect("engine run"), logits, "1 and 2 threads disagree");
    // The synthetic parameters should keep codes varied: histogram of every stored activation.
    let mut hist = [0usize; 4];
    let mut big = 0usize;
    for out in qm.run_layers(&cpu1, &p1, &img).expect("engine run").into_iter().flatten() {
        if let LayerOut::Codes(t) = out {
            for &c in &t.data {
                match hist.get_mut(c as usize) {
                    Some(h) => *h += 1,
                    None => big += 1,
                }
            }
        }
    }
    let total = (hist.iter().sum::<usize>() + big) as f64;
    println!(
        "engine {}: logits {logits:?}; activation codes 0/1/2/3: {:.0}%/{:.0}%/{:.0}%/{:.0}%{}",
        cpu1.backend(),
        100.0 * hist[0] as f64 / total,
        100.0 * hist[1] as f64 / total,
        100.0 * hist[2] as f64 / total,
        100.0 * hist[3] as f64 / total,
        if big > 0 { format!(", {big} codes > 3") } else { String::new() }
    );

    // libtorch fp32, same widths.
    let kind: ModelKind = net.model.parse().expect("model kind");
    let fp = build(kind, input, net.classes, Some(&net.widths), &BitConfig::full_precision()).expect("fp32 graph");
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Model::new(&vs.root(), &fp, &ModelOptions::default()).expect("fp32 model");
    let folded = Folded::new(&fp);
    let x1 = Tensor::from_slice(&img).to_kind(Kind::Float).reshape([1, input.c as i64, input.h as i64, input.w as i64]) / 255.0;
    let x2 = Tensor::cat(&[&x1, &x1], 0);
    assert_eq!(model.forward_t(&x1, false).size(), [1, net.classes as i64]);
    assert_eq!(folded.forward(&x1).size(), [1, net.classes as i64]);

    let engine = |label: &str, threads: usize, cpu: Cpu, p| engine_side(label, threads, qm, cpu, p, &img);
    let torch = |label: &str, threads: i32, x: &Tensor, folded_bn: bool, baseline: bool| -> Side<'_> {
        let x = x.shallow_clone();
        let images = x.size()[0] as usize;
        let (model, folded) = (&model, &folded);
        let run = move || {
            set_threads(threads);
            let _g = tch::no_grad_guard();
            let y = if folded_bn { folded.forward(black_box(&x)) } else { model.forward_t(black_box(&x), false) };
            drop(black_box(y));
        };
        Side { label: label.into(), threads: threads as usize, images, baseline, throughput: images > 1, run: Box::new(run) }
    };

    let one = vec![
        engine("nce engine (W2A2)", 1, cpu1.clone(), &p1),
        torch("libtorch fp32 eval (nce::models::Model)", 1, &x1, false, true),
        torch("libtorch fp32, BN folded", 1, &x1, true, false),
    ];
    let (img_a, img_b) = (&img, &img2);
    let (pa, pb) = (qm.prepare(&cpu1).expect("prepare"), qm.prepare(&cpu1).expect("prepare"));
    let pair = move || {
        // Throughput: two 1-thread engines on two images, batches of 8 images each.
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..8 {
                    black_box(qm.run(&cpu1, &pa, black_box(img_a)).unwrap());
                }
            });
            for _ in 0..8 {
                black_box(qm.run(&cpu1, &pb, black_box(img_b)).unwrap());
            }
        });
    };
    let two = vec![
        engine("nce engine, every layer split over 2 threads", 2, cpu2, &p2),
        engine(&format!("nce engine, 2 threads for layers ≥ {} MMAC/thread", MIN_MACS >> 20), 2, cpu2m, &p2),
        torch("libtorch fp32 eval (nce::models::Model)", 2, &x1, false, true),
        torch("libtorch fp32, BN folded", 2, &x1, true, false),
        Side {
            label: "THROUGHPUT: nce engine, 2 images in parallel (2 × 1 thread)".into(),
            threads: 2,
            images: 16,
            baseline: false,
            throughput: true,
            run: Box::new(pair),
        },
        torch("THROUGHPUT: libtorch fp32 eval, batch 2", 2, &x2, false, true),
    ];

    let groups = if o.one_thread { vec![("1 thread", one)] } else { vec![("1 thread", one), ("2 threads", two)] };
    for (group, mut sides) in groups {
        let la = load_average();
        let t = interleaved(&mut sides, o);
        let rounds = t[0].len();
        // Reference for the ratio column: libtorch eval (Model) at the same thread count;
        // throughput rows compare with libtorch's batch-2 throughput. The ratio is the median
        // over rounds of reference / side within the round, so both sides of every ratio saw
        // the same machine load.
        let reference = |throughput: bool| sides.iter().position(|s| s.baseline && s.throughput == throughput);
        println!();
        println!("{label}, {group}: {rounds} interleaved rounds, load average {la} → {}", load_average());
        println!();
        println!("| side | threads | µs / image: median | p25–p75 | min | images/s (median) | libtorch eval / this: median | p25–p75 |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for (k, s) in sides.iter().enumerate() {
            let mut v = t[k].clone();
            let [lo, med, hi, min] = [0.25, 0.5, 0.75, 0.0].map(|p| quantile(&mut v, p));
            let ratio = reference(s.throughput).filter(|&r| r != k).map_or("— | —".into(), |r| {
                let mut q: Vec<f64> = t[r].iter().zip(&t[k]).map(|(a, b)| a / b).collect();
                let [lo, med, hi] = [0.25, 0.5, 0.75].map(|p| quantile(&mut q, p));
                format!("**{med:.2}×** | {lo:.2}–{hi:.2}")
            });
            println!("| {} | {} | {med:.0} | {lo:.0}–{hi:.0} | {min:.0} | {:.0} | {ratio} |", s.label, s.threads, 1e6 / med);
        }
    }
    println!();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let o = Opts {
        one_thread: args.iter().any(|a| a == "--one-thread"),
        rounds: value("--rounds").and_then(|v| v.parse().ok()).unwrap_or(101),
        batch: Duration::from_secs_f64(value("--batch-ms").and_then(|v| v.parse().ok()).unwrap_or(5.0) / 1e3),
        max: Duration::from_secs_f64(value("--max-secs").and_then(|v| v.parse().ok()).unwrap_or(20.0)),
    };
    let mut files: Vec<String> = args.windows(2).filter(|w| w[0] == "--model").map(|w| w[1].clone()).collect();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/resnet20-w2a2-fashion.nce");
    if std::path::Path::new(example).exists() && !files.iter().any(|f| f.ends_with("resnet20-w2a2-fashion.nce")) {
        files.push(example.into());
    }
    println!("# ResNet-20 batch-1 latency: nce W2A2 engine vs libtorch fp32 eval (interleaved medians)");
    println!(
        "# rounds ≤ {}, ~{:?} per side per round, ≤ {:?} per group; load average at start {}",
        o.rounds,
        o.batch,
        o.max,
        load_average()
    );
    println!();
    if let Some(path) = value("--write-synthetic") {
        let bytes = format::encode(&synthetic(Shape::new(3, 32, 32), 1)).expect("encode");
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{path}: {e}"));
        println!("wrote the synthetic 3x32x32 model to {path}");
        return;
    }
    if !args.iter().any(|a| a == "--no-synthetic") {
        for (input, seed) in [(Shape::new(3, 32, 32), 1), (Shape::new(1, 28, 28), 2)] {
            let c = synthetic(input, seed);
            let bytes = format::encode(&c).expect("encode");
            let qm = QModel::from_bytes(&bytes).expect("synthetic model is valid");
            bench(&format!("synthetic W2A2 {input}"), &qm, bytes.len(), &o);
        }
    }
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("{f}: {e}"));
        let qm = QModel::from_bytes(&bytes).unwrap_or_else(|e| panic!("{f}: {e}"));
        bench(&f, &qm, bytes.len(), &o);
    }
    println!("# load average at end: {}", load_average());
}

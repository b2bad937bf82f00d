//! The nce integer engine against ONNX Runtime on the same network, in one process,
//! interleaved: `cargo bench --bench vs_onnxruntime [-- --rounds N --batch-ms MS --model FILE.nce
//! --backend cpu|cpu-swar|cpu-scalar|cpu-avx2|cpu-avx512]` (`cpu-swar` forces the portable path on x86, `cpu-avx2` the AVX2 one on a VNNI CPU).
//!
//! Contenders, all on the committed `examples/resnet20-w2a2-fashion.nce` (or `--model`), fed the
//! first test images of its dataset:
//! - **nce**: the CPU engine through the backend seam (`engine::open(Cpu)`, AVX2 kernels where
//!   present, or `--backend`; `run_batch` from u8 pixels to integer logits) on T threads: one
//!   image has each conv split over them, a batch has its images spread over them.
//! - **ORT fp32**: the same network exported as plain float32 ONNX (`OnnxForm::Float`).
//! - **ORT int8**: exported as `quantize_static` would write it (`OnnxForm::QdqInt8`: int8
//!   per-channel weights, uint8 activations, int32 biases), which ONNX Runtime fuses into its
//!   `QLinearConv`/`QLinearAdd` integer kernels.
//! - **ORT QDQ (exact)**: the `nce export --onnx` file (`OnnxForm::Qdq`), `ConvInteger` and
//!   int64 requantisation.
//!
//! ONNX Runtime: CPU provider, graph optimisation level All, T intra-op threads whose spin-wait
//! after each run is off (on, ORT's idle workers kept the cores from nce in the same process:
//! issue #29), float input prepared once. Configurations: batch 1 and 32, T = 1 and 2. Each round runs every contender
//! for about `--batch-ms` in rotated order; the table gives the median time per batch over
//! rounds and the speed ratio ORT / nce as the median over rounds of the ratio *within* a round
//! (the machine is shared: pairing keeps both sides of a ratio under the same load), plus the
//! MAC rate reached (network MACs × images / time) as a fraction of the machine's integer MAC
//! ceiling, measured first: a loop of independent 512-bit `vpdpbusd` (64 u8·i8 MACs each) where
//! the CPU has AVX-512 VNNI, else `vpmaddubsw` + `vpaddw` (32 MACs per pair), per core × threads.

use nce::engine::onnx::{to_bytes, OnnxForm, INPUT, OUTPUT};
use nce::engine::onnxruntime::session_spinning;
use nce::engine::plan::QModel;
use nce::engine::{open, BackendKind, BackendOptions, PreparedModel};
use ort::session::Session;
use ort::value::Tensor;
use std::hint::black_box;
use std::time::Instant;

struct Opts {
    rounds: usize,
    batch_ms: f64,
    model: String,
    backend: BackendKind,
}

fn opts() -> Opts {
    let mut o = Opts { rounds: 15, batch_ms: 60.0, model: "examples/resnet20-w2a2-fashion.nce".into(), backend: BackendKind::Cpu };
    let args: Vec<String> = std::env::args().collect();
    for w in args.windows(2) {
        match w[0].as_str() {
            "--rounds" => o.rounds = w[1].parse().expect("--rounds N"),
            "--batch-ms" => o.batch_ms = w[1].parse().expect("--batch-ms MS"),
            "--model" => o.model = w[1].clone(),
            "--backend" => o.backend = w[1].parse().expect("--backend cpu|cpu-swar|cpu-scalar|cpu-avx2|cpu-avx512"),
            _ => {}
        }
    }
    o
}

/// One contender: runs one batch.
enum Runner {
    Nce(Box<dyn PreparedModel>),
    Ort(Session, Tensor<f32>),
}

impl Runner {
    fn run(&mut self, images: &[u8]) {
        match self {
            Runner::Nce(m) => {
                black_box(m.run_batch(images).expect("nce run"));
            }
            Runner::Ort(s, x) => {
                let out = s.run(ort::inputs![INPUT => &*x]).expect("ORT run");
                black_box(out[OUTPUT].try_extract_tensor::<f32>().expect("logits").1[0]);
            }
        }
    }
}

fn contenders(model: &'static QModel, batch: usize, threads: usize, images: &[u8], kind: BackendKind) -> Vec<(&'static str, Runner)> {
    let cpu_opts = BackendOptions { layer_threads: threads, image_threads: threads, ..Default::default() };
    let cpu: &'static dyn nce::engine::Backend = Box::leak(open(kind, &cpu_opts).expect("CPU engine"));
    let s = model.net().input;
    let pixels: Vec<f32> = images.iter().map(|&p| f32::from(p) / 255.0).collect();
    let ort = |form: OnnxForm| {
        // Spinning off: ORT's idle workers would otherwise spin after each run and take the
        // cores from the contender that runs next in this process.
        let sess = session_spinning(&to_bytes(model, form).expect("export"), threads, false).expect("ONNX Runtime (run scripts/setup)");
        let x = Tensor::from_array((vec![batch as i64, s.c as i64, s.h as i64, s.w as i64], pixels.clone())).expect("input");
        Runner::Ort(sess, x)
    };
    let nce = cpu.prepare(model).expect("prepare");
    if batch == 1 && threads > 1 {
        for (k, v) in nce.details().into_iter().filter(|(k, _)| k == "single image") {
            println!("nce, {threads} threads, {k}: {v}");
        }
    }
    vec![
        ("nce", Runner::Nce(nce)),
        ("ORT int8", ort(OnnxForm::QdqInt8)),
        ("ORT fp32", ort(OnnxForm::Float)),
        ("ORT QDQ (exact)", ort(OnnxForm::Qdq)),
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds per batch of each contender in each round.
fn measure(c: &mut [(&str, Runner)], images: &[u8], o: &Opts) -> Vec<Vec<f64>> {
    let mut reps = Vec::new();
    for (_, r) in c.iter_mut() {
        r.run(images);
        let t = Instant::now();
        r.run(images);
        reps.push(((o.batch_ms / 1e3 / t.elapsed().as_secs_f64()).ceil() as usize).clamp(1, 10_000));
    }
    let mut times = vec![Vec::new(); c.len()];
    for round in 0..o.rounds {
        for k in 0..c.len() {
            let i = (k + round) % c.len();
            let t = Instant::now();
            for _ in 0..reps[i] {
                c[i].1.run(images);
            }
            times[i].push(t.elapsed().as_secs_f64() / reps[i] as f64);
        }
    }
    times
}

fn main() {
    let o = opts();
    let model: &'static QModel = Box::leak(Box::new(QModel::load(std::path::Path::new(&o.model)).expect("model file")));
    let ds = nce::data::load("fashion-mnist", std::path::Path::new("data"), nce::data::Split::Test).expect("dataset (scripts/setup)");
    let macs = model.net().macs() as f64;
    let (ceiling, how) = mac_ceiling();
    println!("model {} ({:.1} MMAC per image), {} rounds of ~{} ms, CPU {:.0} MHz", o.model, macs / 1e6, o.rounds, o.batch_ms, cpu_mhz());
    println!("integer MAC ceiling: {ceiling:.1} GMAC/s per core ({how})");
    let kernels = o.backend.cpu_isa().expect("--backend names a CPU engine");
    println!("CPU {}; nce kernels: {kernels:?}", nce::engine::measure::cpu_model());
    println!("| batch | threads | contender | ms per batch (median) | ms per image | ORT / nce (median of per-round ratios) | GMAC/s | % of ceiling |");
    println!("|---:|---:|---|---:|---:|---:|---:|---:|");
    for (batch, threads) in [(1, 1), (1, 2), (32, 1), (32, 2)] {
        let images = &ds.images[..batch * model.net().input.numel()];
        let mut c = contenders(model, batch, threads, images, o.backend);
        let t = measure(&mut c, images, &o);
        for (i, (name, _)) in c.iter().enumerate() {
            let med = median(t[i].clone());
            let ratio = median(t[i].iter().zip(&t[0]).map(|(x, n)| x / n).collect());
            let gmacs = macs * batch as f64 / med / 1e9;
            let peak = ceiling * threads as f64;
            let r = if i == 0 { "1.00".to_string() } else { format!("{ratio:.2}") };
            println!(
                "| {batch} | {threads} | {name} | {:.3} | {:.4} | {r} | {gmacs:.1} | {:.1} % |",
                med * 1e3,
                med * 1e3 / batch as f64,
                100.0 * gmacs / peak
            );
        }
    }
}

/// The measured u8·i8 MAC rate of one core (GMAC/s) and the instruction it used: 12 independent
/// accumulators, so the loop is throughput-bound; best of 5 runs of ~0.1 s.
#[cfg(target_arch = "x86_64")]
fn mac_ceiling() -> (f64, &'static str) {
    let n = 10_000_000u64;
    let best = |f: fn(u64), macs_per_iter: f64| {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                f(n);
                macs_per_iter * n as f64 / t.elapsed().as_secs_f64() / 1e9
            })
            .fold(0.0, f64::max)
    };
    if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512f") {
        (best(peak::vnni, 12.0 * 64.0), "512-bit vpdpbusd")
    } else if is_x86_feature_detected!("avx2") {
        (best(peak::avx2, 6.0 * 32.0), "256-bit vpmaddubsw + vpaddw")
    } else {
        (f64::NAN, "not measured: no AVX2")
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn mac_ceiling() -> (f64, &'static str) {
    (f64::NAN, "not measured on this architecture")
}

/// Throughput loops in inline assembly (the compiler cannot fold or reorder them).
#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::asm;

    /// 12 `vpdpbusd` per iteration; only called where the CPU has AVX-512 VNNI.
    pub fn vnni(n: u64) {
        // SAFETY: registers only, declared as clobbered; the caller checked the CPU features.
        unsafe {
            asm!(
                "vpxord zmm0, zmm0, zmm0", "vpxord zmm1, zmm1, zmm1", "2:",
                "vpdpbusd zmm2, zmm0, zmm1", "vpdpbusd zmm3, zmm0, zmm1", "vpdpbusd zmm4, zmm0, zmm1",
                "vpdpbusd zmm5, zmm0, zmm1", "vpdpbusd zmm6, zmm0, zmm1", "vpdpbusd zmm7, zmm0, zmm1",
                "vpdpbusd zmm8, zmm0, zmm1", "vpdpbusd zmm9, zmm0, zmm1", "vpdpbusd zmm10, zmm0, zmm1",
                "vpdpbusd zmm11, zmm0, zmm1", "vpdpbusd zmm12, zmm0, zmm1", "vpdpbusd zmm13, zmm0, zmm1",
                "dec {n}", "jnz 2b",
                n = inout(reg) n => _,
                out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _, out("zmm6") _,
                out("zmm7") _, out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _,
                options(nostack),
            );
        }
    }

    /// 6 `vpmaddubsw` + `vpaddw` pairs per iteration (the AVX2 kernels' inner step); only
    /// called where the CPU has AVX2.
    pub fn avx2(n: u64) {
        // SAFETY: registers only, declared as clobbered; the caller checked the CPU features.
        unsafe {
            asm!(
                "vpxor ymm0, ymm0, ymm0", "vpxor ymm1, ymm1, ymm1", "2:",
                "vpmaddubsw ymm2, ymm0, ymm1", "vpaddw ymm3, ymm3, ymm2", "vpmaddubsw ymm4, ymm0, ymm1", "vpaddw ymm5, ymm5, ymm4",
                "vpmaddubsw ymm6, ymm0, ymm1", "vpaddw ymm7, ymm7, ymm6", "vpmaddubsw ymm8, ymm0, ymm1", "vpaddw ymm9, ymm9, ymm8",
                "vpmaddubsw ymm10, ymm0, ymm1", "vpaddw ymm11, ymm11, ymm10", "vpmaddubsw ymm12, ymm0, ymm1", "vpaddw ymm13, ymm13, ymm12",
                "dec {n}", "jnz 2b",
                n = inout(reg) n => _,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _, out("ymm6") _,
                out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _, out("ymm12") _, out("ymm13") _,
                options(nostack),
            );
        }
    }
}

/// The nominal clock from /proc/cpuinfo (0 where unknown).
fn cpu_mhz() -> f64 {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    text.lines().find(|l| l.starts_with("cpu MHz")).and_then(|l| l.split(':').nth(1)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

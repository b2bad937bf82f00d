//! The CPU engine behind the [`Backend`] seam.

use super::model::Prepared;
use super::Cpu;
use crate::engine::backend::{Backend, BackendError, BackendKind, PreparedModel};
use crate::engine::measure::{cpu_model, Runner};
use crate::engine::plan::QModel;

/// A [`Cpu`]: its instruction set and its threads, which serve one image's layers (each conv
/// split over them) or a batch's images (spread over them, one image per thread).
pub struct CpuBackend {
    kind: BackendKind,
    cpu: Cpu,
}

impl CpuBackend {
    pub fn new(kind: BackendKind, cpu: Cpu) -> Self {
        CpuBackend { kind, cpu }
    }

    pub fn cpu(&self) -> &Cpu {
        &self.cpu
    }
}

impl Backend for CpuBackend {
    fn kind(&self) -> BackendKind {
        self.kind
    }
    fn name(&self) -> String {
        format!("cpu-{}", self.cpu.backend())
    }
    fn device(&self) -> String {
        format!("{}, {} thread(s)", cpu_model(), self.cpu.threads())
    }
    fn prepare<'a>(&'a self, model: &'a QModel) -> Result<Box<dyn PreparedModel + 'a>, BackendError> {
        let prepared = model.prepare(&self.cpu)?;
        let split = SplitChoice::measure(model, &self.cpu, &prepared)?;
        Ok(Box::new(CpuModel { model, cpu: self.cpu.clone(), prepared, split }))
    }
    fn layers(&self) -> Option<&dyn Runner> {
        Some(&self.cpu)
    }
}

/// A model prepared for one [`Cpu`].
struct CpuModel<'a> {
    model: &'a QModel,
    cpu: Cpu,
    prepared: Prepared,
    split: SplitChoice,
}

impl PreparedModel for CpuModel<'_> {
    fn run_batch(&self, images: &[u8]) -> Result<Vec<Vec<i32>>, BackendError> {
        let single = images.len() == self.model.net().input.numel();
        let cpu = if single && !self.split.splits { &self.cpu.single_threaded() } else { &self.cpu };
        Ok(self.model.run_batch(cpu, &self.prepared, images, self.cpu.threads())?)
    }
    fn details(&self) -> Vec<(String, String)> {
        let mut d = vec![("kernels".into(), self.cpu.backend().to_string()), ("threads".into(), self.cpu.threads().to_string())];
        if self.cpu.threads() > 1 {
            let how = if self.split.splits { "split over the threads" } else { "on one thread" };
            let why = match self.split.timed_us {
                Some((one, all)) => format!("{one:.0} µs on 1 thread, {all:.0} µs split, measured at prepare"),
                None => format!("over {} ms on 1 thread: not timed", SplitChoice::LARGE_US / 1e3),
            };
            d.push(("single image".into(), format!("{how} ({why})")));
        }
        d
    }
}

/// How a single image runs on a multi-threaded [`Cpu`]: its convs split over the threads, or
/// all on the calling thread. Splitting pays where a thread hand-off is cheap against a layer
/// (1 µs on the Zen 2 kind) and costs where it is not (11 µs in the Intel KVM guest, where
/// ResNet-20 ran 0.81× as fast on 2 threads as on 1, docs/results.md), so `prepare` times both
/// on a mid-grey image and splits only where that is clearly faster. The logits are
/// bit-identical either way; batches of several images always spread them over the threads.
struct SplitChoice {
    splits: bool,
    /// Median µs of one image on 1 thread and split over all (`None`: not measured).
    timed_us: Option<(f64, f64)>,
}

impl SplitChoice {
    /// An image slower than this on one thread has layers large enough that splitting pays
    /// wherever a hand-off costs under ~2 % of them: not worth timing.
    const LARGE_US: f64 = 5_000.0;
    const RUNS: usize = 15;
    /// A split is kept only where it measured at least this much faster: its time varies more
    /// (it needs a second core at every layer), and a 7 % gain measured at prepare was a 36 %
    /// loss in the bench on the Intel guest.
    const MIN_GAIN: f64 = 0.9;

    fn measure(model: &QModel, cpu: &Cpu, prepared: &Prepared) -> Result<Self, BackendError> {
        if cpu.threads() < 2 {
            return Ok(SplitChoice { splits: false, timed_us: None });
        }
        let image = vec![128u8; model.net().input.numel()];
        let one = cpu.single_threaded();
        let time = |c: &Cpu| -> Result<f64, BackendError> {
            let t = std::time::Instant::now();
            model.run(c, prepared, &image)?;
            Ok(t.elapsed().as_secs_f64() * 1e6)
        };
        if time(&one)? > Self::LARGE_US {
            return Ok(SplitChoice { splits: true, timed_us: None });
        }
        // Each way back to back, as images arrive in a stream (alternating would let the
        // pool's workers park between split runs), the pool woken first.
        let median = |c: &Cpu| -> Result<f64, BackendError> {
            let mut v = (0..Self::RUNS).map(|_| time(c)).collect::<Result<Vec<f64>, _>>()?;
            v.sort_by(f64::total_cmp);
            Ok(v[v.len() / 2])
        };
        time(cpu)?;
        let all_us = median(cpu)?;
        let one_us = median(&one)?;
        Ok(SplitChoice { splits: all_us < Self::MIN_GAIN * one_us, timed_us: Some((one_us, all_us)) })
    }
}

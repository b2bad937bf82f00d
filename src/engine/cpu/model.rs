//! Running a [`QModel`] on the CPU engine: weights prepared once per [`Cpu`] backend, then any
//! number of images, one layer after the other; one image's convs split over the `Cpu`'s
//! threads, a batch's images spread over threads.

use super::{Cpu, PreparedConv};
use crate::engine::plan::{LayerOut, QModel, Step};
use crate::engine::{EngineError, QTensor, Residual};
use crate::graph::Src;

impl QModel {
    /// Runs one image (`C×H×W` u8 pixels, the dataset's layout) and returns every layer's
    /// integer output, indexed by graph layer (fused adds hold the block output; the conv
    /// feeding them and parameter-free shortcuts hold `None`). Runs on one of `cpu`'s pool
    /// workers, which splits each conv over the others ([`Cpu::install`]).
    pub fn run_layers(&self, cpu: &Cpu, prepared: &Prepared, image: &[u8]) -> Result<Vec<Option<LayerOut>>, EngineError> {
        cpu.install(|| self.run_layers_here(cpu, prepared, image))
    }

    fn run_layers_here(&self, cpu: &Cpu, prepared: &Prepared, image: &[u8]) -> Result<Vec<Option<LayerOut>>, EngineError> {
        let net = self.net();
        let (c, h, w) = (net.input.c, net.input.h, net.input.w);
        if image.len() != c * h * w {
            return Err(EngineError::Mismatch { what: "image bytes", expected: c * h * w, got: image.len() });
        }
        // CHW → HWC.
        let mut hwc = vec![0u8; image.len()];
        for ch in 0..c {
            for p in 0..h * w {
                hwc[p * c + ch] = image[ch * h * w + p];
            }
        }
        let input = QTensor::new(h, w, c, hwc)?;
        let mut outs: Vec<Option<LayerOut>> = vec![None; net.layers.len()];
        for (si, step) in self.steps.iter().enumerate() {
            match step {
                Step::Conv { input: src, out, residual, .. } => {
                    let x = tensor(&input, &outs, *src)?;
                    let p = prepared.convs[si].as_ref().expect("prepared conv");
                    let y = match residual {
                        Some((sc, stride, r)) => {
                            let sc = tensor(&input, &outs, *sc)?;
                            cpu.conv2d(p, x, Some(&Residual { input: sc, stride: *stride, r: *r }))?
                        }
                        None => cpu.conv2d(p, x, None)?,
                    };
                    outs[*out] = Some(LayerOut::Codes(y));
                }
                Step::MaxPool { layer, input: src, pool } => {
                    let y = cpu.max_pool(pool, tensor(&input, &outs, *src)?)?;
                    outs[*layer] = Some(LayerOut::Codes(y));
                }
                Step::Pool { layer, input: src } => {
                    let y = cpu.global_avg_pool(tensor(&input, &outs, *src)?)?;
                    outs[*layer] = Some(LayerOut::Sums(y));
                }
                Step::Linear { layer, linear } => {
                    let x = match outs[*layer - 1].as_ref() {
                        Some(LayerOut::Sums(s)) => s.clone(),
                        _ => return Err(EngineError::Invalid { what: "plan", detail: "the classifier must follow global pooling".into() }),
                    };
                    outs[*layer] = Some(LayerOut::Logits(cpu.linear(linear, &x)?));
                }
            }
        }
        Ok(outs)
    }

    /// Integer logits of one image.
    pub fn run(&self, cpu: &Cpu, prepared: &Prepared, image: &[u8]) -> Result<Vec<i32>, EngineError> {
        match self.run_layers(cpu, prepared, image)?.pop().flatten() {
            Some(LayerOut::Logits(l)) => Ok(l),
            _ => Err(EngineError::Invalid { what: "plan", detail: "no logits".into() }),
        }
    }

    /// Integer logits of a batch of images (concatenated `C×H×W` u8 pixels). With
    /// `threads == 1` the images run one after the other, each conv on `cpu`'s threads; else
    /// they are spread over `threads` threads, each image on one (on `cpu`'s pool when it has
    /// that many threads, else on threads spawned for the call).
    pub fn run_batch(&self, cpu: &Cpu, prepared: &Prepared, images: &[u8], threads: usize) -> Result<Vec<Vec<i32>>, EngineError> {
        let n = self.batch_len(images)?;
        self.by_image(cpu, n, threads, |cpu, i| self.run(cpu, prepared, self.image(images, i)))
    }

    /// Every layer's output for every image of `images` (concatenated `C×H×W` pixels), spread
    /// over threads as [`QModel::run_batch`] does. What validation against the training-time
    /// simulation compares, layer by layer.
    pub fn run_layers_batch(&self, cpu: &Cpu, images: &[u8], threads: usize) -> Result<Vec<Vec<Option<LayerOut>>>, EngineError> {
        let prepared = self.prepare(cpu)?;
        let n = self.batch_len(images)?;
        self.by_image(cpu, n, threads, |cpu, i| self.run_layers(cpu, &prepared, self.image(images, i)))
    }

    /// The number of images in `images`.
    fn batch_len(&self, images: &[u8]) -> Result<usize, EngineError> {
        let per = self.net().input.numel();
        if per == 0 || !images.len().is_multiple_of(per) {
            return Err(EngineError::Mismatch { what: "batch bytes (a multiple of one image)", expected: per, got: images.len() });
        }
        Ok(images.len() / per)
    }

    fn image<'a>(&self, images: &'a [u8], i: usize) -> &'a [u8] {
        let per = self.net().input.numel();
        &images[i * per..(i + 1) * per]
    }

    /// `run(cpu, i)` for every image `i < n`, in order: on `cpu` one after the other when
    /// `threads == 1` or `n == 1`, else in `threads` contiguous ranges, each on one thread.
    fn by_image<T: Send>(
        &self,
        cpu: &Cpu,
        n: usize,
        threads: usize,
        run: impl Fn(&Cpu, usize) -> Result<T, EngineError> + Sync,
    ) -> Result<Vec<T>, EngineError> {
        let chunk = n.div_ceil(threads.max(1)).max(1);
        if chunk >= n {
            return (0..n).map(|i| run(cpu, i)).collect();
        }
        let alone = cpu.single_threaded();
        let spread = if threads <= cpu.threads() { cpu } else { &alone };
        let mut ranges: Vec<Result<Vec<T>, EngineError>> = (0..n).step_by(chunk).map(|_| Ok(Vec::new())).collect();
        let jobs = ranges.iter_mut().enumerate().map(|(k, slot)| (k * chunk..((k + 1) * chunk).min(n), slot));
        spread.install(|| spread.scatter(jobs, |(range, slot)| *slot = range.map(|i| run(&alone, i)).collect()));
        let mut out = Vec::with_capacity(n);
        for r in ranges {
            out.extend(r?);
        }
        Ok(out)
    }

    /// Lays out every conv's weights for `cpu`'s backend (do once, run many).
    pub fn prepare(&self, cpu: &Cpu) -> Result<Prepared, EngineError> {
        let convs = self
            .steps
            .iter()
            .map(|s| match s {
                Step::Conv { conv, .. } => cpu.prepare(conv).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<_, _>>()?;
        Ok(Prepared { convs })
    }
}

/// The activation tensor `s` names: the network input or an earlier layer's codes (borrowed,
/// not copied).
fn tensor<'a>(input: &'a QTensor, outs: &'a [Option<LayerOut>], s: Src) -> Result<&'a QTensor, EngineError> {
    match s {
        Src::Input => Ok(input),
        Src::Layer(j) => match outs.get(j) {
            Some(Some(LayerOut::Codes(t))) => Ok(t),
            _ => Err(EngineError::Invalid { what: "plan", detail: format!("layer {j} has no activation output") }),
        },
    }
}

/// Backend-specific weight layouts of a [`QModel`].
pub struct Prepared {
    convs: Vec<Option<PreparedConv>>,
}

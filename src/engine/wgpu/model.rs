//! A [`QModel`] resident on the GPU: weights uploaded once, activation buffers shared between
//! layers by liveness, and one queue submission per batch (input upload, every layer, logits
//! copy-out).

use super::kernels::{self, ConvGeom, Launch, PARAM_SLOT};
use super::layout::{self, words_per_pixel};
use super::ops::{check_pool, logits_from_pairs};
use super::{DotKernel, Result, WgpuEngine, WgpuError};
use crate::engine::plan::{QModel, Step};
use crate::engine::{EngineError, QTensor, Residual};
use crate::graph::Src;
use std::collections::HashMap;
use std::sync::Mutex;

/// Images per submission unless the adapter's limits allow fewer.
pub const DEFAULT_BATCH: usize = 256;

/// Shape of an activation tensor and the largest code it can hold.
#[derive(Clone, Copy)]
struct Tensor {
    h: usize,
    w: usize,
    c: usize,
    max_code: u8,
}

impl Tensor {
    fn words(&self) -> usize {
        self.h * self.w * words_per_pixel(self.c)
    }
    /// A zero tensor of this shape, for the engine's own shape checks.
    fn probe(&self) -> QTensor {
        QTensor::zeros(self.h, self.w, self.c)
    }
}

/// Activation buffers handed out by liveness: a tensor's buffer returns to the pool after its
/// last reader, so ResNet-20 runs in a handful of buffers however deep it is.
#[derive(Default)]
struct Slots {
    of: HashMap<Key, usize>,
    free: Vec<usize>,
    count: usize,
}

impl Slots {
    fn alloc(&mut self, s: Src) -> usize {
        let i = self.free.pop().unwrap_or_else(|| {
            self.count += 1;
            self.count - 1
        });
        self.of.insert(key(s), i);
        i
    }
    fn get(&self, s: Src) -> Result<usize> {
        self.of
            .get(&key(s))
            .copied()
            .ok_or_else(|| EngineError::Invalid { what: "plan", detail: format!("{s:?} is not computed before it is read") }.into())
    }
}

/// A tensor's identity: `None` for the input image, else the graph layer that wrote it.
type Key = Option<usize>;

fn key(s: Src) -> Key {
    match s {
        Src::Input => None,
        Src::Layer(j) => Some(j),
    }
}

/// The tensors a step reads.
fn reads(step: &Step) -> Vec<Src> {
    match step {
        Step::Conv { input, residual, .. } => std::iter::once(*input).chain(residual.map(|r| r.0)).collect(),
        Step::MaxPool { input, .. } | Step::Pool { input, .. } => vec![*input],
        Step::Linear { .. } => Vec::new(),
    }
}

/// What each launch binds after its parameters.
enum Binding {
    Slot(usize),
    Own(usize),
    Sums,
    Logits,
    Dummy,
}

/// A model uploaded to one [`WgpuEngine`].
pub struct WgpuModel<'e> {
    engine: &'e WgpuEngine,
    dot: DotKernel,
    /// `(c, h, w)` of an input image.
    input: (usize, usize, usize),
    classes: usize,
    max_batch: usize,
    input_slot: usize,
    slots: Vec<wgpu::Buffer>,
    params: wgpu::Buffer,
    launches: Vec<(Launch, wgpu::BindGroup)>,
    logits: wgpu::Buffer,
    staging: wgpu::Buffer,
    /// Serialises runs: the activation and parameter buffers are shared by all calls.
    lock: Mutex<()>,
}

impl<'e> WgpuModel<'e> {
    /// Uploads `model` with the dot kernel from `NCE_WGPU_DOT` and [`DEFAULT_BATCH`].
    pub fn new(engine: &'e WgpuEngine, model: &QModel) -> Result<Self> {
        Self::with_options(engine, model, DotKernel::from_env()?, DEFAULT_BATCH)
    }

    /// Uploads `model`, sizing buffers for up to `max_batch` images per submission (fewer when
    /// the adapter's buffer or dispatch limits demand it).
    pub fn with_options(engine: &'e WgpuEngine, model: &QModel, dot: DotKernel, max_batch: usize) -> Result<Self> {
        let dev = &engine.device;
        let dot = engine.resolve_dot(dot);
        let net = model.net();
        let (c, h, w) = (net.input.c, net.input.h, net.input.w);
        let mut last_use: HashMap<Key, usize> = HashMap::new();
        for (si, s) in model.steps.iter().enumerate() {
            for r in reads(s) {
                last_use.insert(key(r), si);
            }
        }
        let mut shapes: HashMap<Key, Tensor> = HashMap::new();
        shapes.insert(None, Tensor { h, w, c, max_code: 255 });
        let mut slots = Slots::default();
        slots.alloc(Src::Input);
        let shape = |shapes: &HashMap<Key, Tensor>, s: Src| -> Result<Tensor> { shapes.get(&key(s)).copied().ok_or_else(|| slots_err(s)) };
        let mut own: Vec<wgpu::Buffer> = Vec::new();
        let mut plan: Vec<(Launch, Vec<Binding>)> = Vec::new();
        let (mut pooled, mut classes) = (0usize, 0usize);
        let mut max_words = shapes[&None].words();
        let mut max_conv_pixels = 1;
        for (si, step) in model.steps.iter().enumerate() {
            match step {
                Step::Conv { input, out, conv, residual, .. } => {
                    let x = shape(&shapes, *input)?;
                    let sc = residual.map(|(s, _, _)| shape(&shapes, s)).transpose()?;
                    let sc_probe = sc.map(|t| t.probe());
                    let res = residual.zip(sc_probe.as_ref()).map(|((_, stride, r), t)| Residual { input: t, stride, r });
                    let d = conv.dims(&x.probe(), res.as_ref())?;
                    let gw = layout::relayout(conv);
                    let geom = ConvGeom::new(
                        conv,
                        x.h,
                        x.w,
                        d,
                        gw.wpt,
                        residual.zip(sc).map(|((_, st, r), t)| (t.h, t.w, t.c, st, r)),
                        x.max_code,
                    );
                    own.push(kernels::storage_init(dev, "conv weights", &gw.words));
                    own.push(kernels::storage_init(dev, "requant", &layout::requant_words(conv)));
                    let res_binding = match residual {
                        Some((s, _, _)) => Binding::Slot(slots.get(*s)?),
                        None => Binding::Dummy,
                    };
                    let x_slot = slots.get(*input)?;
                    let o = Src::Layer(*out);
                    let y = Tensor { h: d.ho, w: d.wo, c: d.c_out, max_code: conv.requant.qmax };
                    max_words = max_words.max(y.words());
                    max_conv_pixels = max_conv_pixels.max(d.ho * d.wo);
                    shapes.insert(key(o), y);
                    let y_slot = slots.alloc(o);
                    plan.push((
                        Launch::Conv(geom),
                        vec![
                            Binding::Slot(x_slot),
                            Binding::Own(own.len() - 2),
                            Binding::Own(own.len() - 1),
                            res_binding,
                            Binding::Slot(y_slot),
                        ],
                    ));
                }
                Step::MaxPool { layer, input, pool } => {
                    let x = shape(&shapes, *input)?;
                    let (ho, wo) = pool.out_hw(&x.probe())?;
                    let x_slot = slots.get(*input)?;
                    let o = Src::Layer(*layer);
                    let y = Tensor { h: ho, w: wo, c: x.c, max_code: x.max_code };
                    max_words = max_words.max(y.words());
                    shapes.insert(key(o), y);
                    let y_slot = slots.alloc(o);
                    let launch = Launch::MaxPool { h: x.h, w: x.w, c: x.c, ho, wo, k: pool.k, stride: pool.stride, pad: pool.pad };
                    plan.push((launch, vec![Binding::Slot(x_slot), Binding::Slot(y_slot)]));
                }
                Step::Pool { input, .. } => {
                    let x = shape(&shapes, *input)?;
                    check_pool(x.h, x.w)?;
                    pooled = x.c;
                    plan.push((Launch::GlobalPool { hw: x.h * x.w, c: x.c }, vec![Binding::Slot(slots.get(*input)?), Binding::Sums]));
                }
                Step::Linear { linear, .. } => {
                    if linear.c_in() != pooled {
                        return Err(EngineError::Mismatch { what: "linear input length", expected: linear.c_in(), got: pooled }.into());
                    }
                    classes = linear.c_out();
                    let wl: Vec<i32> = linear.weights.data.iter().map(|&v| v as i32).collect();
                    own.push(kernels::storage_init(dev, "linear weights", &wl));
                    own.push(kernels::storage_init(dev, "linear bias", &linear.bias));
                    let launch = Launch::Linear { c_in: linear.c_in(), c_out: linear.c_out() };
                    plan.push((launch, vec![Binding::Sums, Binding::Own(own.len() - 2), Binding::Own(own.len() - 1), Binding::Logits]));
                }
            }
            // Buffers whose last reader was this step go back to the pool (after the step's
            // own output was allocated, so no step writes into a buffer it reads).
            for r in reads(step) {
                if last_use.get(&key(r)) == Some(&si) {
                    if let Some(i) = slots.of.remove(&key(r)) {
                        slots.free.push(i);
                    }
                }
            }
        }
        if classes == 0 {
            return Err(EngineError::Invalid { what: "plan", detail: "the model has no classifier".into() }.into());
        }
        let limits = dev.limits();
        let per_image = (max_words * 4) as u64;
        let by_memory = (limits.max_storage_buffer_binding_size.min(limits.max_buffer_size) / per_image) as usize;
        let by_grid = 65_535 * 64 / max_conv_pixels;
        let max_batch = max_batch.min(by_memory).min(by_grid);
        if max_batch == 0 {
            return Err(WgpuError::Limit(format!("one image needs {per_image} bytes per activation buffer, more than the adapter allows")));
        }
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let slot_bufs: Vec<wgpu::Buffer> =
            (0..slots.count).map(|_| kernels::buffer(dev, "activations", per_image * max_batch as u64, storage)).collect();
        let sums = kernels::buffer(dev, "pooled sums", (max_batch * pooled * 4) as u64, storage);
        let logit_bytes = (max_batch * classes * 8) as u64;
        let logits = kernels::buffer(dev, "logits", logit_bytes, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC);
        let staging = kernels::buffer(dev, "staging", logit_bytes, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        let dummy = kernels::storage_init(dev, "no residual", &[0u32]);
        let params =
            kernels::buffer(dev, "params", PARAM_SLOT * plan.len() as u64, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST);
        let launches = engine.scoped(|| {
            Ok(plan
                .into_iter()
                .enumerate()
                .map(|(i, (launch, binds))| {
                    let bufs: Vec<&wgpu::Buffer> = binds
                        .iter()
                        .map(|b| match b {
                            Binding::Slot(s) => &slot_bufs[*s],
                            Binding::Own(o) => &own[*o],
                            Binding::Sums => &sums,
                            Binding::Logits => &logits,
                            Binding::Dummy => &dummy,
                        })
                        .collect();
                    let bg = kernels::bind_group(dev, launch.pipeline(&engine.kernels, dot), &params, i as u64, &bufs);
                    (launch, bg)
                })
                .collect())
        })?;
        Ok(WgpuModel {
            engine,
            dot,
            input: (c, h, w),
            classes,
            max_batch,
            input_slot: 0,
            slots: slot_bufs,
            params,
            launches,
            logits,
            staging,
            lock: Mutex::new(()),
        })
    }

    /// The dot kernel that runs (after any fallback).
    pub fn dot(&self) -> DotKernel {
        self.dot
    }

    /// Images per queue submission.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Integer logits of a batch of images (concatenated `C×H×W` u8 pixels), exactly as
    /// [`QModel::run_batch`] computes them; one submission per `max_batch` images.
    pub fn run_batch(&self, images: &[u8]) -> Result<Vec<Vec<i32>>> {
        let (c, h, w) = self.input;
        let per = c * h * w;
        if per == 0 || !images.len().is_multiple_of(per) {
            return Err(EngineError::Mismatch { what: "batch bytes (a multiple of one image)", expected: per, got: images.len() }.into());
        }
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(images.len() / per);
        for chunk in images.chunks(self.max_batch * per) {
            out.extend(self.run_chunk(chunk, chunk.len() / per)?);
        }
        Ok(out)
    }

    fn run_chunk(&self, images: &[u8], n: usize) -> Result<Vec<Vec<i32>>> {
        let (c, h, w) = self.input;
        let (dev, queue) = (&self.engine.device, &self.engine.queue);
        let mut words = Vec::with_capacity(n * h * w * words_per_pixel(c));
        for img in images.chunks_exact(c * h * w) {
            layout::pack_chw(img, c, h, w, &mut words);
        }
        let slot_words = (PARAM_SLOT / 4) as usize;
        let mut params = vec![0u32; slot_words * self.launches.len()];
        let mut groups = Vec::with_capacity(self.launches.len());
        for (i, (launch, _)) in self.launches.iter().enumerate() {
            let p = launch.params(n)?;
            params[i * slot_words..i * slot_words + p.len()].copy_from_slice(&p);
            groups.push(launch.groups(n)?);
        }
        let pairs = self.engine.scoped(|| {
            queue.write_buffer(&self.slots[self.input_slot], 0, bytemuck::cast_slice(&words));
            queue.write_buffer(&self.params, 0, bytemuck::cast_slice(&params));
            let mut enc = dev.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                for ((launch, bg), g) in self.launches.iter().zip(&groups) {
                    pass.set_pipeline(launch.pipeline(&self.engine.kernels, self.dot));
                    pass.set_bind_group(0, bg, &[]);
                    pass.dispatch_workgroups(g.0, g.1, 1);
                }
            }
            let bytes = (n * self.classes * 8) as u64;
            enc.copy_buffer_to_buffer(&self.logits, 0, &self.staging, 0, bytes);
            queue.submit([enc.finish()]);
            kernels::read_back(dev, &self.staging, n * self.classes * 2)
        })?;
        pairs.chunks_exact(self.classes * 2).map(|p| logits_from_pairs(p).map_err(WgpuError::from)).collect()
    }
}

fn slots_err(s: Src) -> WgpuError {
    EngineError::Invalid { what: "plan", detail: format!("{s:?} is read before it is computed") }.into()
}

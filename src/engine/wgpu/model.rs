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

/// The buffers a model's launches bind, sized for `max_batch` images.
struct Buffers {
    slots: Vec<wgpu::Buffer>,
    sums: wgpu::Buffer,
    logits: wgpu::Buffer,
    staging: wgpu::Buffer,
    dummy: wgpu::Buffer,
    params: wgpu::Buffer,
}

/// Turns a plan's steps into launches: uploads weights, tracks every tensor's shape and hands
/// out activation buffers by liveness.
struct Planner<'d> {
    dev: &'d wgpu::Device,
    /// The step after which each tensor is read no more.
    last_use: HashMap<Key, usize>,
    shapes: HashMap<Key, Tensor>,
    slots: Slots,
    own: Vec<wgpu::Buffer>,
    plan: Vec<(Launch, Vec<Binding>)>,
    pooled: usize,
    classes: usize,
    max_words: usize,
    max_conv_pixels: usize,
}

impl<'d> Planner<'d> {
    fn new(dev: &'d wgpu::Device, model: &QModel) -> Self {
        let net = model.net();
        let mut last_use = HashMap::new();
        for (si, s) in model.steps.iter().enumerate() {
            for r in reads(s) {
                last_use.insert(key(r), si);
            }
        }
        let image = Tensor { h: net.input.h, w: net.input.w, c: net.input.c, max_code: 255 };
        let mut slots = Slots::default();
        slots.alloc(Src::Input);
        Planner {
            dev,
            last_use,
            shapes: HashMap::from([(None, image)]),
            slots,
            own: Vec::new(),
            plan: Vec::new(),
            pooled: 0,
            classes: 0,
            max_words: image.words(),
            max_conv_pixels: 1,
        }
    }

    fn shape(&self, s: Src) -> Result<Tensor> {
        self.shapes.get(&key(s)).copied().ok_or_else(|| slots_err(s))
    }

    /// Records tensor `o` of shape `y` and gives it a buffer.
    fn output(&mut self, o: Src, y: Tensor) -> usize {
        self.max_words = self.max_words.max(y.words());
        self.shapes.insert(key(o), y);
        self.slots.alloc(o)
    }

    /// Uploads a constant array the model's launches bind; returns its binding.
    fn upload<T: bytemuck::Pod>(&mut self, label: &str, data: &[T]) -> Binding {
        self.own.push(kernels::storage_init(self.dev, label, data));
        Binding::Own(self.own.len() - 1)
    }

    fn step(&mut self, step: &Step) -> Result<()> {
        match step {
            Step::Conv { input, out, conv, residual, .. } => self.conv(*input, *out, conv, *residual),
            Step::MaxPool { layer, input, pool } => {
                let x = self.shape(*input)?;
                let (ho, wo) = pool.out_hw(&x.probe())?;
                let x_slot = self.slots.get(*input)?;
                let y_slot = self.output(Src::Layer(*layer), Tensor { h: ho, w: wo, c: x.c, max_code: x.max_code });
                let launch = Launch::MaxPool { h: x.h, w: x.w, c: x.c, ho, wo, k: pool.k, stride: pool.stride, pad: pool.pad };
                self.plan.push((launch, vec![Binding::Slot(x_slot), Binding::Slot(y_slot)]));
                Ok(())
            }
            Step::Pool { input, .. } => {
                let x = self.shape(*input)?;
                check_pool(x.h, x.w)?;
                self.pooled = x.c;
                let x_slot = self.slots.get(*input)?;
                self.plan.push((Launch::GlobalPool { hw: x.h * x.w, c: x.c }, vec![Binding::Slot(x_slot), Binding::Sums]));
                Ok(())
            }
            Step::Linear { linear, .. } => self.linear(linear),
        }
    }

    fn conv(&mut self, input: Src, out: usize, conv: &crate::engine::Conv2d, residual: Option<(Src, usize, i32)>) -> Result<()> {
        let x = self.shape(input)?;
        let sc = residual.map(|(s, _, _)| self.shape(s)).transpose()?;
        let sc_probe = sc.map(|t| t.probe());
        let res = residual.zip(sc_probe.as_ref()).map(|((_, stride, r), t)| Residual { input: t, stride, r });
        let d = conv.dims(&x.probe(), res.as_ref())?;
        let gw = layout::relayout(conv);
        let shortcut = residual.zip(sc).map(|((_, st, r), t)| (t.h, t.w, t.c, st, r));
        let geom = ConvGeom::new(conv, x.h, x.w, d, &gw, shortcut, x.max_code);
        let weights = self.upload("conv weights", &gw.words);
        let requant = self.upload("requant", &layout::requant_words(conv));
        let res_binding = match residual {
            Some((s, _, _)) => Binding::Slot(self.slots.get(s)?),
            None => Binding::Dummy,
        };
        let x_slot = self.slots.get(input)?;
        self.max_conv_pixels = self.max_conv_pixels.max(d.ho * d.wo);
        let y_slot = self.output(Src::Layer(out), Tensor { h: d.ho, w: d.wo, c: d.c_out, max_code: conv.requant.qmax });
        self.plan.push((Launch::Conv(geom), vec![Binding::Slot(x_slot), weights, requant, res_binding, Binding::Slot(y_slot)]));
        Ok(())
    }

    fn linear(&mut self, linear: &crate::engine::Linear) -> Result<()> {
        if linear.c_in() != self.pooled {
            return Err(EngineError::Mismatch { what: "linear input length", expected: linear.c_in(), got: self.pooled }.into());
        }
        self.classes = linear.c_out();
        let wl: Vec<i32> = linear.weights.data.iter().map(|&v| v as i32).collect();
        let w = self.upload("linear weights", &wl);
        let b = self.upload("linear bias", &linear.bias);
        let launch = Launch::Linear { c_in: linear.c_in(), c_out: linear.c_out() };
        self.plan.push((launch, vec![Binding::Sums, w, b, Binding::Logits]));
        Ok(())
    }

    /// Buffers whose last reader was step `si` go back to the pool (after the step's own output
    /// was allocated, so no step writes into a buffer it reads).
    fn release_after(&mut self, si: usize, step: &Step) {
        for r in reads(step) {
            if self.last_use.get(&key(r)) == Some(&si) {
                if let Some(i) = self.slots.of.remove(&key(r)) {
                    self.slots.free.push(i);
                }
            }
        }
    }

    /// `wanted` images per submission, or fewer where the adapter's buffer size or dispatch
    /// grid limits demand it.
    fn batch_limit(&self, wanted: usize) -> Result<usize> {
        let limits = self.dev.limits();
        let per_image = (self.max_words * 4) as u64;
        let by_memory = (limits.max_storage_buffer_binding_size.min(limits.max_buffer_size) / per_image) as usize;
        let by_grid = 65_535 * 64 / self.max_conv_pixels;
        let max_batch = wanted.min(by_memory).min(by_grid);
        if max_batch == 0 {
            return Err(WgpuError::Limit(format!("one image needs {per_image} bytes per activation buffer, more than the adapter allows")));
        }
        Ok(max_batch)
    }

    fn buffers(&self, max_batch: usize) -> Buffers {
        let dev = self.dev;
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let per_image = (self.max_words * 4) as u64;
        let logit_bytes = (max_batch * self.classes * 8) as u64;
        Buffers {
            slots: (0..self.slots.count).map(|_| kernels::buffer(dev, "activations", per_image * max_batch as u64, storage)).collect(),
            sums: kernels::buffer(dev, "pooled sums", (max_batch * self.pooled * 4) as u64, storage),
            logits: kernels::buffer(dev, "logits", logit_bytes, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC),
            staging: kernels::buffer(dev, "staging", logit_bytes, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
            dummy: kernels::storage_init(dev, "no residual", &[0u32]),
            params: kernels::buffer(
                dev,
                "params",
                PARAM_SLOT * self.plan.len() as u64,
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            ),
        }
    }

    /// One bind group per launch, its parameters at the launch's slot of `b.params`.
    fn bind(&mut self, engine: &WgpuEngine, dot: DotKernel, b: &Buffers) -> Vec<(Launch, wgpu::BindGroup)> {
        let plan = std::mem::take(&mut self.plan);
        plan.into_iter()
            .enumerate()
            .map(|(i, (launch, binds))| {
                let bufs: Vec<&wgpu::Buffer> = binds
                    .iter()
                    .map(|bd| match bd {
                        Binding::Slot(s) => &b.slots[*s],
                        Binding::Own(o) => &self.own[*o],
                        Binding::Sums => &b.sums,
                        Binding::Logits => &b.logits,
                        Binding::Dummy => &b.dummy,
                    })
                    .collect();
                let bg = kernels::bind_group(self.dev, launch.pipeline(&engine.kernels, dot), &b.params, i as u64, &bufs);
                (launch, bg)
            })
            .collect()
    }
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
        let dot = engine.resolve_dot(dot);
        let net = model.net();
        let input = (net.input.c, net.input.h, net.input.w);
        let mut p = Planner::new(&engine.device, model);
        for (si, step) in model.steps.iter().enumerate() {
            p.step(step)?;
            p.release_after(si, step);
        }
        if p.classes == 0 {
            return Err(EngineError::Invalid { what: "plan", detail: "the model has no classifier".into() }.into());
        }
        let max_batch = p.batch_limit(max_batch)?;
        let b = p.buffers(max_batch);
        let launches = engine.scoped(|| Ok(p.bind(engine, dot, &b)))?;
        Ok(WgpuModel {
            engine,
            dot,
            input,
            classes: p.classes,
            max_batch,
            input_slot: 0,
            slots: b.slots,
            params: b.params,
            launches,
            logits: b.logits,
            staging: b.staging,
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

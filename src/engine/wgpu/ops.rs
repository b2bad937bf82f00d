//! Single-op calls on [`WgpuEngine`], mirroring [`crate::engine::cpu::reference`] so each kernel
//! can be tested on its own. Every call uploads its operands and waits for its result: use
//! [`super::WgpuModel`] to run networks.

use super::kernels::{self, ConvGeom, Launch, PARAM_SLOT};
use super::layout::{self, words_per_pixel};
use super::{DotKernel, Result, WgpuEngine};
use crate::engine::{Conv2d, EngineError, Linear, MaxPool2d, QTensor, Residual};

/// The `(lo, hi)` pairs written by linear.wgsl as int32 logits, rejecting values outside int32
/// exactly like the reference.
pub(crate) fn logits_from_pairs(pairs: &[u32]) -> std::result::Result<Vec<i32>, EngineError> {
    pairs
        .chunks_exact(2)
        .enumerate()
        .map(|(o, p)| {
            let v = ((p[1] as u64) << 32 | p[0] as u64) as i64;
            i32::try_from(v).map_err(|_| EngineError::Overflow(format!("logit {o} = {v}")))
        })
        .collect()
}

/// The reference's overflow rule for the pooled sums.
pub(crate) fn check_pool(h: usize, w: usize) -> std::result::Result<(), EngineError> {
    if (h * w) as u64 * 255 > i32::MAX as u64 {
        return Err(EngineError::Overflow(format!("pooling sum over {h}x{w} pixels")));
    }
    Ok(())
}

impl WgpuEngine {
    /// A conv with its fused epilogue (and optional residual), as `reference::conv2d`.
    pub fn conv2d(&self, conv: &Conv2d, x: &QTensor, residual: Option<&Residual>, dot: DotKernel) -> Result<QTensor> {
        let d = conv.dims(x, residual)?;
        let gw = layout::relayout(conv);
        let res = residual.map(|r| (r.input.h, r.input.w, r.input.c, r.stride, r.r));
        let launch = Launch::Conv(ConvGeom::new(conv, x.h, x.w, d, &gw, res, x.max_code()));
        let mut xw = Vec::new();
        layout::pack_hwc(x, &mut xw);
        let mut rw = Vec::new();
        if let Some(r) = residual {
            layout::pack_hwc(r.input, &mut rw);
        }
        let dev = &self.device;
        let inputs = [
            kernels::storage_init(dev, "x", &xw),
            kernels::storage_init(dev, "w", &gw.words),
            kernels::storage_init(dev, "mb", &layout::requant_words(conv)),
            kernels::storage_init(dev, "residual", &rw),
        ];
        let words = self.launch_once(&launch, self.resolve_dot(dot), &inputs, d.ho * d.wo * words_per_pixel(d.c_out))?;
        Ok(layout::unpack_hwc(&words, d.ho, d.wo, d.c_out))
    }

    /// Max pooling, as `reference::max_pool`.
    pub fn max_pool(&self, p: &MaxPool2d, x: &QTensor) -> Result<QTensor> {
        let (ho, wo) = p.out_hw(x)?;
        let launch = Launch::MaxPool { h: x.h, w: x.w, c: x.c, ho, wo, k: p.k, stride: p.stride, pad: p.pad };
        let mut xw = Vec::new();
        layout::pack_hwc(x, &mut xw);
        let inputs = [kernels::storage_init(&self.device, "x", &xw)];
        let words = self.launch_once(&launch, DotKernel::Shift, &inputs, ho * wo * words_per_pixel(x.c))?;
        Ok(layout::unpack_hwc(&words, ho, wo, x.c))
    }

    /// Exact per-channel sums, as `reference::global_avg_pool`.
    pub fn global_avg_pool(&self, x: &QTensor) -> Result<Vec<i32>> {
        x.validate()?;
        check_pool(x.h, x.w)?;
        let mut xw = Vec::new();
        layout::pack_hwc(x, &mut xw);
        let inputs = [kernels::storage_init(&self.device, "x", &xw)];
        let words = self.launch_once(&Launch::GlobalPool { hw: x.h * x.w, c: x.c }, DotKernel::Shift, &inputs, x.c)?;
        Ok(words.into_iter().map(|w| w as i32).collect())
    }

    /// Integer logits, as `reference::linear`.
    pub fn linear(&self, l: &Linear, x: &[i32]) -> Result<Vec<i32>> {
        l.validate()?;
        if x.len() != l.c_in() {
            return Err(EngineError::Mismatch { what: "linear input length", expected: l.c_in(), got: x.len() }.into());
        }
        let w: Vec<i32> = l.weights.data.iter().map(|&c| c as i32).collect();
        let dev = &self.device;
        let inputs =
            [kernels::storage_init(dev, "sums", x), kernels::storage_init(dev, "w", &w), kernels::storage_init(dev, "bias", &l.bias)];
        let pairs = self.launch_once(&Launch::Linear { c_in: l.c_in(), c_out: l.c_out() }, DotKernel::Shift, &inputs, 2 * l.c_out())?;
        Ok(logits_from_pairs(&pairs)?)
    }

    /// Runs one launch for batch 1 over `inputs` (bindings 1..) into a fresh output buffer of
    /// `out_words` words (the last binding) and reads it back.
    fn launch_once(&self, launch: &Launch, dot: DotKernel, inputs: &[wgpu::Buffer], out_words: usize) -> Result<Vec<u32>> {
        let dev = &self.device;
        let mut params = launch.params(1)?;
        params.resize((PARAM_SLOT / 4) as usize, 0);
        let groups = launch.groups(1)?;
        self.scoped(|| {
            let pbuf = kernels::buffer(dev, "params", PARAM_SLOT, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST);
            self.queue.write_buffer(&pbuf, 0, bytemuck::cast_slice(&params));
            let bytes = (out_words * 4) as u64;
            let out = kernels::buffer(dev, "out", bytes, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC);
            let staging = kernels::buffer(dev, "staging", bytes, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
            let pipeline = launch.pipeline(&self.kernels, dot);
            let mut buffers: Vec<&wgpu::Buffer> = inputs.iter().collect();
            buffers.push(&out);
            let bg = kernels::bind_group(dev, pipeline, &pbuf, 0, &buffers);
            let mut enc = dev.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(pipeline);
                pass.set_bind_group(0, &bg, &[]);
                pass.dispatch_workgroups(groups.0, groups.1, 1);
            }
            enc.copy_buffer_to_buffer(&out, 0, &staging, 0, bytes.max(4));
            self.queue.submit([enc.finish()]);
            kernels::read_back(dev, &staging, out_words)
        })
    }
}

//! The compiled pipelines, each kernel's uniform parameters (field order = the WGSL struct's)
//! and the dispatch grid of a layer for a batch size.

use super::layout::{words_per_pixel, GpuWeights};
use super::{DotKernel, Result, WgpuError};
use crate::engine::{Conv2d, ConvDims, ConvWeights};
use wgpu::util::DeviceExt;

const INT64: &str = include_str!("int64.wgsl");
const INDEX: &str = include_str!("index.wgsl");
const CONV_COMMON: &str = include_str!("conv_common.wgsl");
const CONV_W2: &str = include_str!("conv_w2.wgsl");
const CONV_W8: &str = include_str!("conv_w8.wgsl");
const CONV_GROUPED: &str = include_str!("conv_grouped.wgsl");
const DOT_SHIFT: &str = include_str!("dot_shift.wgsl");
const DOT_DOT4: &str = include_str!("dot_dot4.wgsl");
const MAX_POOL: &str = include_str!("max_pool.wgsl");
const GLOBAL_POOL: &str = include_str!("global_pool.wgsl");
const LINEAR: &str = include_str!("linear.wgsl");

/// Output pixels and channels per conv workgroup (`TILE_P`, `TILE_C` in conv_common.wgsl).
const TILE_P: usize = 64;
const TILE_C: usize = 16;
/// Invocations per workgroup of the 1-D kernels.
const WG_1D: usize = 64;
/// Bytes per layer in the uniform parameter buffer (WebGPU's largest offset alignment).
pub(crate) const PARAM_SLOT: u64 = 256;
/// WebGPU's default (and common) workgroups-per-dimension limit.
const MAX_GROUPS: usize = 65_535;

pub(crate) struct Kernels {
    conv_w2_shift: wgpu::ComputePipeline,
    conv_w2_dot4: Option<wgpu::ComputePipeline>,
    conv_w8: wgpu::ComputePipeline,
    conv_grouped: wgpu::ComputePipeline,
    max_pool: wgpu::ComputePipeline,
    global_pool: wgpu::ComputePipeline,
    linear: wgpu::ComputePipeline,
}

fn pipeline(device: &wgpu::Device, label: &str, parts: &[&str]) -> wgpu::ComputePipeline {
    let module = device
        .create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(label), source: wgpu::ShaderSource::Wgsl(parts.concat().into()) });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(label),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    })
}

impl Kernels {
    /// Compiles every kernel (the dot4 variant only when the adapter supports it); shader
    /// errors come back as [`WgpuError::Gpu`] instead of wgpu's default panic.
    pub fn new(device: &wgpu::Device, dot4: bool) -> Result<Self> {
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let k = Kernels {
            conv_w2_shift: pipeline(device, "conv_w2_shift", &[INT64, CONV_COMMON, DOT_SHIFT, CONV_W2]),
            conv_w2_dot4: dot4.then(|| pipeline(device, "conv_w2_dot4", &[INT64, CONV_COMMON, DOT_DOT4, CONV_W2])),
            conv_w8: pipeline(device, "conv_w8", &[INT64, CONV_COMMON, CONV_W8]),
            conv_grouped: pipeline(device, "conv_grouped", &[INT64, CONV_COMMON, CONV_GROUPED]),
            max_pool: pipeline(device, "max_pool", &[INDEX, MAX_POOL]),
            global_pool: pipeline(device, "global_pool", &[INDEX, GLOBAL_POOL]),
            linear: pipeline(device, "linear", &[INT64, INDEX, LINEAR]),
        };
        match pollster::block_on(scope.pop()) {
            Some(e) => Err(WgpuError::Gpu(format!("compiling the kernels: {e}"))),
            None => Ok(k),
        }
    }
}

/// A conv layer's shape and requantisation scalars, independent of the batch size.
#[derive(Clone, Debug)]
pub(crate) struct ConvGeom {
    pub h: usize,
    pub w: usize,
    pub c_in: usize,
    pub d: ConvDims,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    /// `1` for a dense conv; above 1 the layer runs conv_grouped.wgsl.
    pub groups: usize,
    /// Weight words per tap (dense) and per output channel (see [`super::layout::GpuWeights`]).
    pub wpt: usize,
    pub kwords: usize,
    pub w2: bool,
    pub shift: u32,
    pub qmax: u8,
    /// `(h, w, c, stride, r)` of the fused residual's shortcut tensor.
    pub res: Option<(usize, usize, usize, usize, i32)>,
    /// The input may hold codes above 127 (the dot4 kernel then splits off bit 7).
    pub hi: bool,
}

impl ConvGeom {
    pub fn new(
        conv: &Conv2d,
        h: usize,
        w: usize,
        d: ConvDims,
        gw: &GpuWeights,
        res: Option<(usize, usize, usize, usize, i32)>,
        in_max: u8,
    ) -> Self {
        ConvGeom {
            h,
            w,
            c_in: conv.c_in,
            d,
            k: conv.k,
            stride: conv.stride,
            pad: conv.pad,
            groups: conv.groups.max(1),
            wpt: gw.wpt,
            kwords: gw.kwords,
            w2: matches!(conv.weights, ConvWeights::W2(_)),
            shift: conv.requant.shift,
            qmax: conv.requant.qmax,
            res,
            hi: in_max > 127,
        }
    }
}

/// One kernel launch's shape (everything but the buffers).
#[derive(Clone, Debug)]
pub(crate) enum Launch {
    Conv(ConvGeom),
    MaxPool { h: usize, w: usize, c: usize, ho: usize, wo: usize, k: usize, stride: usize, pad: usize },
    GlobalPool { hw: usize, c: usize },
    Linear { c_in: usize, c_out: usize },
}

fn u(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| WgpuError::Limit(format!("{v} does not fit a 32-bit index")))
}

/// A 2-D grid of 64-wide workgroups covering `n` invocations (see index.wgsl).
fn grid_1d(n: usize) -> Result<(u32, u32)> {
    let groups = n.div_ceil(WG_1D).max(1);
    let x = groups.min(MAX_GROUPS);
    let y = groups.div_ceil(x);
    if y > MAX_GROUPS {
        return Err(WgpuError::Limit(format!("{n} invocations exceed the dispatch grid")));
    }
    Ok((u(x)?, u(y)?))
}

impl Launch {
    /// The uniform parameters for `batch` images, in the WGSL struct's field order.
    pub fn params(&self, batch: usize) -> Result<Vec<u32>> {
        let v: Vec<usize> = match self {
            Launch::Conv(g) => {
                let d = &g.d;
                let (rh, rw, rc, rs, r) = g.res.unwrap_or((0, 0, 0, 0, 0));
                let head = [
                    batch * d.ho * d.wo,
                    g.h,
                    g.w,
                    words_per_pixel(g.c_in),
                    d.ho,
                    d.wo,
                    d.c_conv,
                    d.c_out,
                    words_per_pixel(d.c_out),
                    g.k,
                    g.stride,
                    g.pad,
                    g.wpt,
                    g.kwords,
                    g.shift as usize,
                    g.qmax as usize,
                ];
                let (cg, group_out) = (g.c_in / g.groups, d.c_conv / g.groups);
                let tail = [g.hi as usize, g.res.is_some() as usize, rh, rw, rc, words_per_pixel(rc), rs, cg, group_out, g.w2 as usize];
                let mut out = head.into_iter().map(u).collect::<Result<Vec<u32>>>()?;
                out.push(r as u32); // the i32 field `r`, bit for bit
                for x in tail {
                    out.push(u(x)?);
                }
                return Ok(out);
            }
            Launch::MaxPool { h, w, c, ho, wo, k, stride, pad } => {
                vec![batch * ho * wo * words_per_pixel(*c), *h, *w, words_per_pixel(*c), *ho, *wo, *k, *stride, *pad, 0, 0, 0]
            }
            Launch::GlobalPool { hw, c } => vec![batch * c, *hw, *c, words_per_pixel(*c)],
            Launch::Linear { c_in, c_out } => vec![batch * c_out, *c_in, *c_out, 0],
        };
        v.into_iter().map(u).collect()
    }

    /// Workgroups for `batch` images.
    pub fn groups(&self, batch: usize) -> Result<(u32, u32)> {
        match self {
            Launch::Conv(g) => {
                let tiles = (batch * g.d.ho * g.d.wo).div_ceil(TILE_P);
                if tiles > MAX_GROUPS {
                    return Err(WgpuError::Limit(format!(
                        "{batch} images of {}x{} outputs need {tiles} workgroups (at most {MAX_GROUPS}): use a smaller batch",
                        g.d.ho, g.d.wo
                    )));
                }
                Ok((u(tiles)?, u(g.d.c_out.div_ceil(TILE_C))?))
            }
            Launch::MaxPool { ho, wo, c, .. } => grid_1d(batch * ho * wo * words_per_pixel(*c)),
            Launch::GlobalPool { c, .. } => grid_1d(batch * c),
            Launch::Linear { c_out, .. } => grid_1d(batch * c_out),
        }
    }

    pub fn pipeline<'k>(&self, k: &'k Kernels, dot: DotKernel) -> &'k wgpu::ComputePipeline {
        match self {
            Launch::Conv(g) if g.groups > 1 => &k.conv_grouped,
            Launch::Conv(g) if !g.w2 => &k.conv_w8,
            Launch::Conv(_) => match (dot, &k.conv_w2_dot4) {
                (DotKernel::Dot4, Some(p)) => p,
                _ => &k.conv_w2_shift,
            },
            Launch::MaxPool { .. } => &k.max_pool,
            Launch::GlobalPool { .. } => &k.global_pool,
            Launch::Linear { .. } => &k.linear,
        }
    }
}

/// A storage buffer holding `data` (at least 4 bytes: wgpu rejects empty bindings).
pub(crate) fn storage_init<T: bytemuck::Pod>(device: &wgpu::Device, label: &str, data: &[T]) -> wgpu::Buffer {
    let bytes: &[u8] = bytemuck::cast_slice(data);
    let mut padded;
    let contents = if bytes.len() < 4 {
        padded = bytes.to_vec();
        padded.resize(4, 0);
        &padded[..]
    } else {
        bytes
    };
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
    })
}

/// An empty buffer of `bytes` (rounded up to 4) with `usage`.
pub(crate) fn buffer(device: &wgpu::Device, label: &str, bytes: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(4).next_multiple_of(4),
        usage,
        mapped_at_creation: false,
    })
}

/// A bind group of `buffers` at bindings 1.. after the parameter slot at binding 0.
pub(crate) fn bind_group(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    params: &wgpu::Buffer,
    slot: u64,
    buffers: &[&wgpu::Buffer],
) -> wgpu::BindGroup {
    let mut entries = vec![wgpu::BindGroupEntry {
        binding: 0,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: params,
            offset: slot * PARAM_SLOT,
            size: std::num::NonZeroU64::new(PARAM_SLOT),
        }),
    }];
    entries
        .extend(buffers.iter().enumerate().map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.as_entire_binding() }));
    device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &pipeline.get_bind_group_layout(0), entries: &entries })
}

/// Maps `buf` (MAP_READ, already copied into by a submitted command) and returns its first
/// `len` u32 words.
pub(crate) fn read_back(device: &wgpu::Device, buf: &wgpu::Buffer, len: usize) -> Result<Vec<u32>> {
    let bytes = (len * 4) as u64;
    let slice = buf.slice(..bytes.max(4));
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| WgpuError::Gpu(format!("waiting for the GPU: {e}")))?;
    rx.recv()
        .map_err(|_| WgpuError::Gpu("the buffer map callback never ran".into()))?
        .map_err(|e| WgpuError::Gpu(format!("mapping the result buffer: {e}")))?;
    let out = {
        let view = slice.get_mapped_range().map_err(|e| WgpuError::Gpu(format!("reading the result buffer: {e}")))?;
        view[..len * 4].chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    };
    buf.unmap();
    Ok(out)
}

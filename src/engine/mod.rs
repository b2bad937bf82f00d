//! The pure-Rust integer engine for exported 2-bit models.
//!
//! `engine` owns execution. This module holds the public data types (activation tensors,
//! packed weights, layer descriptions) and their validation; [`plan`] is the runnable model
//! that the file reader builds; [`Backend`] is the seam every engine implements ([`cpu`],
//! `wgpu`), opened by [`open`] from a [`BackendKind`]; [`mod@compare`] checks two backends
//! against each other and [`measure`] times them. Nothing here reads files or checkpoints. Every op follows
//! `docs/quantization.md` bit for bit: the scalar code in [`cpu::reference`] is the
//! definition and every fast path is tested against it.
//!
//! Layouts:
//! - activations are NHWC `u8` codes without a batch dimension ([`QTensor`]);
//! - conv weights are ordered per output channel with the reduction in `(ky, kx, c_in)` order;
//!   2-bit codes `c ∈ {−3, −1, 1, 3}` are stored as `u = (c + 3) / 2` packed 16 per `u32`
//!   little-endian, each output channel padded to whole words ([`PackedW2`]); 8-bit layers keep
//!   plain `i8` codes ([`Weights8`]).
//!
//! Public constructors and ops never panic on inconsistent dimensions: they return
//! [`EngineError`].

pub mod backend;
pub mod c_runtime;
pub mod compare;
pub mod cpu;
pub mod measure;
pub mod onnx;
#[cfg(feature = "onnxruntime")]
pub mod onnxruntime;
pub mod plan;
#[cfg(feature = "wgpu")]
pub mod wgpu;

pub use backend::{open, Backend, BackendError, BackendKind, BackendOptions, PreparedModel};
pub use compare::{compare, Comparison};

use std::fmt;

/// Why an engine call was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A length, channel count or spatial size does not match what the layer expects.
    #[error("{what}: expected {expected}, got {got}")]
    Mismatch { what: &'static str, expected: usize, got: usize },
    /// A parameter outside its allowed range.
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    /// A 2-bit weight code that is not one of the four SAWB levels.
    #[error("2-bit weight code {0} is not one of -3, -1, 1, 3")]
    BadCode(i8),
    /// The int32 accumulator (or an int32 result) could overflow for this layer or input.
    #[error("int32 overflow: {0}")]
    Overflow(String),
    /// The requested backend does not exist on this machine.
    #[error("backend {0} is not available on this machine")]
    Unavailable(cpu::Backend),
    /// A prepared layer was built for a different backend than the one running it.
    #[error("layer was prepared for backend {prepared}, but is run on {used}")]
    BackendMismatch { prepared: cpu::Backend, used: cpu::Backend },
    /// The operating system refused the engine's worker threads.
    #[error("cannot start {threads} engine threads: {detail}")]
    Threads { threads: usize, detail: String },
}

pub type Result<T> = std::result::Result<T, EngineError>;

fn invalid(what: &'static str, detail: impl Into<String>) -> EngineError {
    EngineError::Invalid { what, detail: detail.into() }
}

fn expect_eq(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(EngineError::Mismatch { what, expected, got })
    }
}

/// An activation tensor of unsigned codes, NHWC with batch 1: `data[(y·w + x)·c + ch]`.
///
/// The scale lives outside the engine (it is folded into the next layer's multipliers), so a
/// tensor is just codes.
#[derive(Clone, PartialEq, Eq)]
pub struct QTensor {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub data: Vec<u8>,
}

impl QTensor {
    /// Checks that `data` holds exactly `h·w·c` codes and that no dimension is zero.
    pub fn new(h: usize, w: usize, c: usize, data: Vec<u8>) -> Result<Self> {
        if h == 0 || w == 0 || c == 0 {
            return Err(invalid("tensor shape", format!("{h}x{w}x{c} has a zero dimension")));
        }
        expect_eq("tensor data length (h·w·c)", h * w * c, data.len())?;
        Ok(QTensor { h, w, c, data })
    }

    /// An all-zero tensor (dimensions must be non-zero for it to be usable as an input).
    pub fn zeros(h: usize, w: usize, c: usize) -> Self {
        QTensor { h, w, c, data: vec![0; h * w * c] }
    }

    /// The code at `(y, x, ch)`; panics when out of bounds, like slice indexing.
    #[inline]
    pub fn at(&self, y: usize, x: usize, ch: usize) -> u8 {
        self.data[(y * self.w + x) * self.c + ch]
    }

    /// The `c` codes of one pixel.
    #[inline]
    pub fn pixel(&self, y: usize, x: usize) -> &[u8] {
        let o = (y * self.w + x) * self.c;
        &self.data[o..o + self.c]
    }

    /// Largest code in the tensor (0 for an empty one). Kernels use it to size int16 runs.
    pub fn max_code(&self) -> u8 {
        self.data.iter().copied().max().unwrap_or(0)
    }

    /// Re-checks the invariants (fields are public, so a caller may have changed them).
    pub fn validate(&self) -> Result<()> {
        if self.h == 0 || self.w == 0 || self.c == 0 {
            return Err(invalid("tensor shape", format!("{self:?} has a zero dimension")));
        }
        expect_eq("tensor data length (h·w·c)", self.h * self.w * self.c, self.data.len())
    }
}

impl fmt::Debug for QTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QTensor({}x{}x{}, {} codes)", self.h, self.w, self.c, self.data.len())
    }
}

// ------------------------------------------------------------------------------------------
// 2-bit packing
// ------------------------------------------------------------------------------------------

/// Codes per packed `u32` word.
pub const CODES_PER_WORD: usize = 16;

/// Words needed for `len` 2-bit codes.
pub const fn words_for(len: usize) -> usize {
    len.div_ceil(CODES_PER_WORD)
}

/// Maps a SAWB 2-bit code `c ∈ {−3, −1, 1, 3}` to its stored value `u = (c + 3) / 2`.
pub fn code_to_u2(c: i8) -> Result<u8> {
    match c {
        -3 => Ok(0),
        -1 => Ok(1),
        1 => Ok(2),
        3 => Ok(3),
        _ => Err(EngineError::BadCode(c)),
    }
}

/// Inverse of [`code_to_u2`] on the low two bits of `u`: `c = 2u − 3`.
#[inline]
pub fn u2_to_code(u: u32) -> i8 {
    2 * (u & 3) as i8 - 3
}

/// Packs one output channel's codes (16 per word, code `i` in bits `2i..2i+2`, little-endian);
/// the last word is padded with `u = 0`.
pub fn pack_codes(codes: &[i8]) -> Result<Vec<u32>> {
    let mut words = vec![0u32; words_for(codes.len())];
    for (i, &c) in codes.iter().enumerate() {
        words[i / CODES_PER_WORD] |= (code_to_u2(c)? as u32) << (2 * (i % CODES_PER_WORD));
    }
    Ok(words)
}

/// Reads the first `len` codes back from packed words (padding bits are ignored).
pub fn unpack_codes(words: &[u32], len: usize) -> Result<Vec<i8>> {
    expect_eq("packed words for the code count", words_for(len), words.len())?;
    Ok((0..len).map(|i| u2_to_code(words[i / CODES_PER_WORD] >> (2 * (i % CODES_PER_WORD)))).collect())
}

/// 2-bit conv/linear weights: `c_out` channels of `k_len` codes each, every channel starting on
/// a word boundary (`words_per_channel()` words).
///
/// Bits past `k_len` in a channel's last word are padding and never read, so exported files
/// may leave anything there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedW2 {
    pub c_out: usize,
    pub k_len: usize,
    pub words: Vec<u32>,
}

impl PackedW2 {
    /// Packs `codes` laid out as `[c_out][k_len]` (each row in `(ky, kx, c_in)` order).
    pub fn pack(c_out: usize, k_len: usize, codes: &[i8]) -> Result<Self> {
        if c_out == 0 || k_len == 0 {
            return Err(invalid("2-bit weights", format!("c_out = {c_out}, k_len = {k_len} must be positive")));
        }
        expect_eq("2-bit weight codes (c_out·k_len)", c_out * k_len, codes.len())?;
        let mut words = Vec::with_capacity(c_out * words_for(k_len));
        for row in codes.chunks_exact(k_len) {
            words.extend(pack_codes(row)?);
        }
        Ok(PackedW2 { c_out, k_len, words })
    }

    /// Wraps already packed words (e.g. read from an export file).
    pub fn from_words(c_out: usize, k_len: usize, words: Vec<u32>) -> Result<Self> {
        let w = PackedW2 { c_out, k_len, words };
        w.validate()?;
        Ok(w)
    }

    pub fn words_per_channel(&self) -> usize {
        words_for(self.k_len)
    }

    /// The packed words of output channel `o`.
    pub fn channel(&self, o: usize) -> &[u32] {
        let n = self.words_per_channel();
        &self.words[o * n..(o + 1) * n]
    }

    /// The signed code of output channel `o`, reduction index `i`.
    #[inline]
    pub fn code(&self, o: usize, i: usize) -> i8 {
        let word = self.words[o * self.words_per_channel() + i / CODES_PER_WORD];
        u2_to_code(word >> (2 * (i % CODES_PER_WORD)))
    }

    /// All codes as `[c_out][k_len]`.
    pub fn unpack(&self) -> Vec<i8> {
        (0..self.c_out).flat_map(|o| (0..self.k_len).map(move |i| (o, i))).map(|(o, i)| self.code(o, i)).collect()
    }

    pub fn validate(&self) -> Result<()> {
        if self.c_out == 0 || self.k_len == 0 {
            return Err(invalid("2-bit weights", format!("c_out = {}, k_len = {} must be positive", self.c_out, self.k_len)));
        }
        expect_eq("packed 2-bit words (c_out·words_per_channel)", self.c_out * self.words_per_channel(), self.words.len())
    }
}

/// 8-bit weights (first conv, classifier): `[c_out][k_len]` signed codes, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Weights8 {
    pub c_out: usize,
    pub k_len: usize,
    pub data: Vec<i8>,
}

impl Weights8 {
    pub fn new(c_out: usize, k_len: usize, data: Vec<i8>) -> Result<Self> {
        let w = Weights8 { c_out, k_len, data };
        w.validate()?;
        Ok(w)
    }

    #[inline]
    pub fn code(&self, o: usize, i: usize) -> i8 {
        self.data[o * self.k_len + i]
    }

    pub fn validate(&self) -> Result<()> {
        if self.c_out == 0 || self.k_len == 0 {
            return Err(invalid("8-bit weights", format!("c_out = {}, k_len = {} must be positive", self.c_out, self.k_len)));
        }
        expect_eq("8-bit weight codes (c_out·k_len)", self.c_out * self.k_len, self.data.len())
    }
}

/// The weights of a conv layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConvWeights {
    /// Packed SAWB 2-bit codes (every conv except the first).
    W2(PackedW2),
    /// 8-bit codes (the first conv, which reads 8-bit pixels).
    W8(Weights8),
}

impl ConvWeights {
    pub fn c_out(&self) -> usize {
        match self {
            ConvWeights::W2(w) => w.c_out,
            ConvWeights::W8(w) => w.c_out,
        }
    }
    pub fn k_len(&self) -> usize {
        match self {
            ConvWeights::W2(w) => w.k_len,
            ConvWeights::W8(w) => w.k_len,
        }
    }
    /// Largest |code| the format can hold (sizes the overflow check).
    fn max_abs(&self) -> u64 {
        match self {
            ConvWeights::W2(_) => 3,
            ConvWeights::W8(_) => 128,
        }
    }
    /// All codes widened to i32, `[c_out][k_len]` (what the scalar reference multiplies with).
    pub fn codes_i32(&self) -> Vec<i32> {
        match self {
            ConvWeights::W2(w) => w.unpack().into_iter().map(i32::from).collect(),
            ConvWeights::W8(w) => w.data.iter().map(|&c| i32::from(c)).collect(),
        }
    }
    fn validate(&self) -> Result<()> {
        match self {
            ConvWeights::W2(w) => w.validate(),
            ConvWeights::W8(w) => w.validate(),
        }
    }
}

/// Fixed-point requantisation of one conv layer (`docs/quantization.md`, "Integer form"):
/// `q = clamp((acc·m_c + q_sc·r + b_c + 2^(shift−1)) >> shift, 0, qmax)` in int64, with the
/// rounding term omitted when `shift == 0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requant {
    /// Per conv output channel.
    pub m: Vec<i32>,
    /// Per conv output channel.
    pub b: Vec<i32>,
    /// One per layer, `0..=62` (the exporter uses `0..=30`).
    pub shift: u32,
    /// `2^a_out − 1`.
    pub qmax: u8,
}

impl Requant {
    /// `2^(shift−1)`, or 0 for `shift == 0`.
    #[inline]
    pub fn rounding(&self) -> i64 {
        if self.shift == 0 {
            0
        } else {
            1i64 << (self.shift - 1)
        }
    }
}

/// Largest accepted shift: keeps `2^(shift−1)` and the shifted int64 sum meaningful.
pub const MAX_SHIFT: u32 = 62;

/// A k×k convolution (zero padding) with its fused requantisation epilogue.
///
/// With `groups > 1` the input and output channels are split into `groups` equal groups and
/// output channel `o` reads only the input channels of its group, `g·c_in/groups ..`; its
/// weights are `(ky, kx, c)` over those `c_in/groups` channels. A depthwise conv has
/// `groups == c_in == c_out` ([`Conv2d::is_depthwise`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub c_in: usize,
    /// `1` for a dense conv.
    pub groups: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub weights: ConvWeights,
    pub requant: Requant,
}

/// The shortcut operand of a fused residual add: `q_sc` is read at `(y·stride, x·stride)`
/// (option-A subsampling), channels it lacks count as 0, and it is scaled by `r`.
#[derive(Clone, Copy, Debug)]
pub struct Residual<'a> {
    pub input: &'a QTensor,
    pub stride: usize,
    /// `round(s_sc / s_out · 2^shift)`, in the conv's shift.
    pub r: i32,
}

/// The shapes of one conv call, derived and checked by [`Conv2d::dims`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvDims {
    pub ho: usize,
    pub wo: usize,
    /// Channels the conv produces.
    pub c_conv: usize,
    /// Channels of the residual (0 without one).
    pub c_res: usize,
    /// `max(c_conv, c_res)`: channels of the output.
    pub c_out: usize,
}

/// Output size of a k-window with stride and symmetric padding along one axis.
fn out_len(what: &'static str, n: usize, k: usize, stride: usize, pad: usize) -> Result<usize> {
    let span = n + 2 * pad;
    if span < k {
        return Err(invalid(what, format!("input {n} + 2·pad {pad} is smaller than the kernel {k}")));
    }
    Ok((span - k) / stride + 1)
}

impl Conv2d {
    /// A dense conv (`groups == 1`).
    pub fn new(c_in: usize, k: usize, stride: usize, pad: usize, weights: ConvWeights, requant: Requant) -> Result<Self> {
        Conv2d::grouped(c_in, 1, k, stride, pad, weights, requant)
    }

    /// A grouped conv; `groups == c_in ==` output channels is a depthwise conv.
    pub fn grouped(
        c_in: usize,
        groups: usize,
        k: usize,
        stride: usize,
        pad: usize,
        weights: ConvWeights,
        requant: Requant,
    ) -> Result<Self> {
        let conv = Conv2d { c_in, groups, k, stride, pad, weights, requant };
        conv.validate()?;
        Ok(conv)
    }

    /// Channels produced by the convolution itself.
    pub fn c_conv(&self) -> usize {
        self.weights.c_out()
    }

    /// Input channels each output channel reads, `c_in / groups`.
    pub fn c_in_per_group(&self) -> usize {
        self.c_in / self.groups.max(1)
    }

    /// One filter per channel: `groups == c_in == c_out`.
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.c_in && self.c_conv() == self.c_in
    }

    /// Length of one output channel's reduction, `k·k·c_in/groups`.
    pub fn k_len(&self) -> usize {
        self.k * self.k * self.c_in_per_group()
    }

    /// Checks the layer on its own (not against an input).
    pub fn validate(&self) -> Result<()> {
        if self.c_in == 0 || self.k == 0 || self.stride == 0 || self.groups == 0 {
            return Err(invalid(
                "conv geometry",
                format!("c_in = {}, groups = {}, k = {}, stride = {} must be positive", self.c_in, self.groups, self.k, self.stride),
            ));
        }
        if !self.c_in.is_multiple_of(self.groups) || !self.c_conv().is_multiple_of(self.groups) {
            return Err(invalid(
                "conv groups",
                format!("{} groups do not divide {} input and {} output channels", self.groups, self.c_in, self.c_conv()),
            ));
        }
        self.weights.validate()?;
        expect_eq("conv weights reduction length (k·k·c_in/groups)", self.k_len(), self.weights.k_len())?;
        let c = self.c_conv();
        expect_eq("requant multipliers m (one per output channel)", c, self.requant.m.len())?;
        expect_eq("requant offsets b (one per output channel)", c, self.requant.b.len())?;
        if self.requant.shift > MAX_SHIFT {
            return Err(invalid("requant shift", format!("{} > {MAX_SHIFT}", self.requant.shift)));
        }
        // Worst case |acc| = k_len · 255 · max|w| must fit int32 (the contract's accumulator).
        let worst = self.k_len() as u64 * 255 * self.weights.max_abs();
        if worst > i32::MAX as u64 {
            return Err(EngineError::Overflow(format!("reduction length {} with u8 inputs", self.k_len())));
        }
        Ok(())
    }

    /// Checks `x` (and the residual) against the layer and returns the call's shapes.
    pub fn dims(&self, x: &QTensor, residual: Option<&Residual>) -> Result<ConvDims> {
        self.validate()?;
        x.validate()?;
        expect_eq("conv input channels", self.c_in, x.c)?;
        let ho = out_len("conv height", x.h, self.k, self.stride, self.pad)?;
        let wo = out_len("conv width", x.w, self.k, self.stride, self.pad)?;
        let c_conv = self.c_conv();
        let mut c_res = 0;
        if let Some(r) = residual {
            r.input.validate()?;
            if r.stride == 0 {
                return Err(invalid("residual stride", "must be positive"));
            }
            // Option A keeps rows 0, s, 2s, …: ceil(h / s) of them.
            expect_eq("subsampled residual height", ho, r.input.h.div_ceil(r.stride))?;
            expect_eq("subsampled residual width", wo, r.input.w.div_ceil(r.stride))?;
            c_res = r.input.c;
        }
        Ok(ConvDims { ho, wo, c_conv, c_res, c_out: c_conv.max(c_res) })
    }
}

/// Max pooling over valid positions (padding never wins, as in PyTorch's `-inf` padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2d {
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl MaxPool2d {
    /// Output `(h, w)` for an input, checking PyTorch's rule `pad ≤ k/2` so every window holds
    /// at least one real element.
    pub fn out_hw(&self, x: &QTensor) -> Result<(usize, usize)> {
        x.validate()?;
        if self.k == 0 || self.stride == 0 {
            return Err(invalid("max pool", format!("k = {}, stride = {} must be positive", self.k, self.stride)));
        }
        if 2 * self.pad > self.k {
            return Err(invalid("max pool", format!("pad {} exceeds half the kernel {}", self.pad, self.k)));
        }
        Ok((
            out_len("max pool height", x.h, self.k, self.stride, self.pad)?,
            out_len("max pool width", x.w, self.k, self.stride, self.pad)?,
        ))
    }
}

/// The classifier: `logit_o = Σ_c w[o,c]·x_c + bias_o` over the pooled sums, in int32.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Linear {
    /// `[c_out][c_in]` 8-bit codes.
    pub weights: Weights8,
    /// Integer bias in the accumulator's scale, one per output.
    pub bias: Vec<i32>,
}

impl Linear {
    pub fn new(weights: Weights8, bias: Vec<i32>) -> Result<Self> {
        let l = Linear { weights, bias };
        l.validate()?;
        Ok(l)
    }
    pub fn c_in(&self) -> usize {
        self.weights.k_len
    }
    pub fn c_out(&self) -> usize {
        self.weights.c_out
    }
    pub fn validate(&self) -> Result<()> {
        self.weights.validate()?;
        expect_eq("linear bias (one per output)", self.weights.c_out, self.bias.len())
    }
}

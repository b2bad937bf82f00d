//! Host-side layouts of the GPU buffers: activations packed 4 codes per `u32` and conv weights
//! re-laid out per tap (so a kernel never splits a word across taps when `c_in` is not a
//! multiple of 16).

use crate::engine::{Conv2d, ConvWeights, QTensor};

/// Activation words per pixel: 4 codes per word, channels padded with zero codes.
pub(crate) fn words_per_pixel(c: usize) -> usize {
    c.div_ceil(4)
}

/// Appends an HWC tensor in the packed layout.
pub(crate) fn pack_hwc(t: &QTensor, out: &mut Vec<u32>) {
    for px in t.data.chunks_exact(t.c) {
        out.extend(px.chunks(4).map(|q| q.iter().enumerate().fold(0u32, |w, (i, &v)| w | (v as u32) << (8 * i))));
    }
}

/// Appends a `C×H×W` image (the dataset's layout) in the packed HWC layout.
pub(crate) fn pack_chw(image: &[u8], c: usize, h: usize, w: usize, out: &mut Vec<u32>) {
    let cw = words_per_pixel(c);
    let start = out.len();
    out.resize(start + h * w * cw, 0);
    for ch in 0..c {
        for p in 0..h * w {
            out[start + p * cw + ch / 4] |= (image[ch * h * w + p] as u32) << (8 * (ch % 4));
        }
    }
}

/// The HWC tensor held by packed words (exactly `h·w·words_per_pixel(c)` of them).
pub(crate) fn unpack_hwc(words: &[u32], h: usize, w: usize, c: usize) -> QTensor {
    let cw = words_per_pixel(c);
    let mut data = Vec::with_capacity(h * w * c);
    for px in words.chunks_exact(cw).take(h * w) {
        data.extend((0..c).map(|ch| (px[ch / 4] >> (8 * (ch % 4))) as u8));
    }
    QTensor { h, w, c, data }
}

/// Conv weights as the kernels read them, `kwords` words per output channel.
///
/// Dense convs (conv_w2.wgsl, conv_w8.wgsl), with `wpt` words per tap:
/// - 2-bit: per output channel and tap, `⌈c_in/16⌉` words of 16 codes `u = (c + 3) / 2`
///   (channel `16j + i` in bits `2i..2i+2` of word `j`), padding codes 0;
/// - 8-bit: per output channel and tap, `⌈c_in/4⌉` words of 4 i8 codes, padding 0.
///
/// Grouped convs (conv_grouped.wgsl): per output channel its `k·k·c_in/groups` codes in
/// `(ky, kx, ci)` order, 16 per word as above (2-bit) or 4 i8 per word (8-bit), unsplit by tap
/// (`wpt == kwords`, unused).
pub(crate) struct GpuWeights {
    pub words: Vec<u32>,
    pub wpt: usize,
    pub kwords: usize,
}

pub(crate) fn relayout(conv: &Conv2d) -> GpuWeights {
    if conv.groups > 1 {
        return relayout_grouped(conv);
    }
    let (taps, c_in) = (conv.k * conv.k, conv.c_in);
    match &conv.weights {
        ConvWeights::W2(w) => {
            let wpt = c_in.div_ceil(16);
            let mut words = vec![0u32; w.c_out * taps * wpt];
            for o in 0..w.c_out {
                for t in 0..taps {
                    for ci in 0..c_in {
                        let u = ((w.code(o, t * c_in + ci) + 3) / 2) as u32;
                        words[(o * taps + t) * wpt + ci / 16] |= u << (2 * (ci % 16));
                    }
                }
            }
            GpuWeights { words, wpt, kwords: taps * wpt }
        }
        ConvWeights::W8(w) => {
            let wpt = words_per_pixel(c_in);
            let mut words = vec![0u32; w.c_out * taps * wpt];
            for o in 0..w.c_out {
                for t in 0..taps {
                    for ci in 0..c_in {
                        let b = w.code(o, t * c_in + ci) as u8 as u32;
                        words[(o * taps + t) * wpt + ci / 4] |= b << (8 * (ci % 4));
                    }
                }
            }
            GpuWeights { words, wpt, kwords: taps * wpt }
        }
    }
}

/// A grouped conv's weights: each output channel's codes packed in order, `per_word` codes of
/// `bits` bits per word.
fn relayout_grouped(conv: &Conv2d) -> GpuWeights {
    let k_len = conv.k_len();
    let (c_out, per_word, bits) = match &conv.weights {
        ConvWeights::W2(w) => (w.c_out, 16, 2),
        ConvWeights::W8(w) => (w.c_out, 4, 8),
    };
    let bits_of = |o: usize, i: usize| match &conv.weights {
        ConvWeights::W2(w) => ((w.code(o, i) + 3) / 2) as u32,
        ConvWeights::W8(w) => w.code(o, i) as u8 as u32,
    };
    let kwords = k_len.div_ceil(per_word);
    let mut words = vec![0u32; c_out * kwords];
    for o in 0..c_out {
        for i in 0..k_len {
            words[o * kwords + i / per_word] |= bits_of(o, i) << (bits * (i % per_word));
        }
    }
    GpuWeights { words, wpt: kwords, kwords }
}

/// `m` followed by `b`, as the conv kernels' `mb` binding.
pub(crate) fn requant_words(conv: &Conv2d) -> Vec<i32> {
    conv.requant.m.iter().chain(&conv.requant.b).copied().collect()
}

// Shared part of the conv kernels: parameters, bindings, weight staging and the fused
// requantisation epilogue (residual add, ReLU = clamp at 0, PACT clip = clamp at qmax).
//
// A dense conv (groups = 1) is an implicit GEMM: M = batch·ho·wo output pixels, N = output channels,
// K = taps × weight words. A workgroup owns TILE_P pixels × TILE_C channels; each invocation
// computes one pixel's TILE_C accumulators. Per step the workgroup stages CHUNK weight words
// of its TILE_C channels in workgroup memory (shared by all its pixels), and each invocation
// reads its own activation words once per K-word and reuses them for all TILE_C channels.
//
// Activations are NHWC with 4 codes per u32 (channel c in byte c % 4 of word c / 4), channels
// padded with zero bytes to whole words; word ((b·h + y)·w + x)·cw + c / 4.

struct ConvParams {
    pixels: u32, h: u32, w: u32, cw_in: u32,
    ho: u32, wo: u32, c_conv: u32, c_out: u32,
    cw_out: u32, k: u32, stride: u32, pad: u32,
    wpt: u32, kwords: u32, shift: u32, qmax: u32,
    r: i32, hi: u32, has_res: u32, res_h: u32,
    res_w: u32, res_c: u32, res_cw: u32, res_stride: u32,
    // Grouped convs only (conv_grouped.wgsl): input channels per group, output channels per
    // group, 2-bit (1) or 8-bit (0) weights.
    cg: u32, group_out: u32, w2: u32,
}

@group(0) @binding(0) var<uniform> P: ConvParams;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> wt: array<u32>;
// m[0..c_conv] followed by b[0..c_conv].
@group(0) @binding(3) var<storage, read> mb: array<i32>;
@group(0) @binding(4) var<storage, read> res: array<u32>;
@group(0) @binding(5) var<storage, read_write> y: array<u32>;

const TILE_P: u32 = 64u;
const TILE_C: u32 = 16u;
// Equal to the workgroup size: each invocation stages one word per channel.
const CHUNK: u32 = 64u;

var<workgroup> ws: array<u32, 1024>;
var<private> acc: array<i32, 16>;

// Stages weight words kc..kc+CHUNK of channels co0..co0+TILE_C (zero outside the layer, so
// channels the conv lacks accumulate 0).
fn stage_weights(lid: u32, co0: u32, kc: u32) {
    let kw = kc + lid;
    for (var n = 0u; n < TILE_C; n++) {
        let co = co0 + n;
        var v = 0u;
        if (co < P.c_conv && kw < P.kwords) { v = wt[co * P.kwords + kw]; }
        ws[n * CHUNK + lid] = v;
    }
}

// Input word base of tap `tap` for output pixel (b, oy, ox), or -1 when the tap falls into the
// zero padding.
fn tap_base(tap: u32, b: u32, oy: u32, ox: u32) -> i32 {
    let iy = i32(oy * P.stride + tap / P.k) - i32(P.pad);
    let ix = i32(ox * P.stride + tap % P.k) - i32(P.pad);
    if (iy < 0 || ix < 0 || u32(iy) >= P.h || u32(ix) >= P.w) { return -1; }
    return i32(((b * P.h + u32(iy)) * P.w + u32(ix)) * P.cw_in);
}

// Requantises and stores the TILE_C channels of pixel p; channels past c_out are written as
// the zero padding bytes of the last word.
fn epilogue(p: u32, b: u32, oy: u32, ox: u32, co0: u32) {
    for (var q = 0u; q < 4u; q++) {
        let cw = co0 / 4u + q;
        if (cw >= P.cw_out) { break; }
        var word = 0u;
        for (var i = 0u; i < 4u; i++) {
            let o = co0 + 4u * q + i;
            if (o >= P.c_out) { break; }
            var m = 0;
            var bias = 0;
            if (o < P.c_conv) {
                m = mb[o];
                bias = mb[P.c_conv + o];
            }
            var q_sc = 0u;
            var r = 0;
            if (P.has_res != 0u && o < P.res_c) {
                let ri = ((b * P.res_h + oy * P.res_stride) * P.res_w + ox * P.res_stride) * P.res_cw + o / 4u;
                q_sc = (res[ri] >> (8u * (o % 4u))) & 0xffu;
                r = P.r;
            }
            word |= requantize(acc[4u * q + i], m, bias, q_sc, r, P.shift, P.qmax) << (8u * i);
        }
        y[p * P.cw_out + cw] = word;
    }
}

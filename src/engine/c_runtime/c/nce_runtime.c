/* nce C runtime: see nce_runtime.h. Every op follows docs/quantization.md; the scalar
 * functions are line-for-line the definitions in src/engine/cpu/reference.rs. */
#include "nce_runtime.h"

#if defined(NCE_SIMD_DSP)
#include <arm_acle.h>
#elif defined(NCE_SIMD_NEON)
#include <arm_neon.h>
#endif

void nce_chw_to_hwc(const uint8_t *chw, uint8_t *hwc, uint32_t c, uint32_t h, uint32_t w) {
    uint32_t ch, p;
    for (ch = 0; ch < c; ch++) {
        for (p = 0; p < h * w; p++) {
            hwc[p * c + ch] = chw[ch * h * w + p];
        }
    }
}

/* floor(v / 2^s) for any sign: an arithmetic right shift written without relying on the
 * implementation-defined >> of negative values. */
static int64_t nce_floor_shift(int64_t v, uint32_t s) {
    return v >= 0 ? (v >> s) : ~((~v) >> s);
}

/* clamp((acc*m + q_sc*r + b + 2^(shift-1)) >> shift, 0, qmax) in int64. */
static uint8_t nce_requant(int32_t acc, int32_t m, int32_t b, uint32_t q_sc, int32_t r, uint32_t shift, uint32_t qmax) {
    int64_t v = (int64_t)acc * m + (int64_t)q_sc * r + b;
    int64_t q;
    if (shift > 0) {
        v += (int64_t)1 << (shift - 1);
    }
    q = nce_floor_shift(v, shift);
    if (q < 0) {
        return 0;
    }
    return (uint8_t)(q > (int64_t)qmax ? qmax : (uint32_t)q);
}

/* The signed weight code of output channel o, reduction index i. */
static int32_t nce_weight(const nce_conv_t *l, uint32_t o, uint32_t i) {
    if (l->w8) {
        return ((const int8_t *)l->weights)[o * l->k * l->k * l->c_in + i];
    } else {
        uint32_t word = ((const uint32_t *)l->weights)[o * l->words + i / 16];
        return 2 * (int32_t)((word >> (2 * (i % 16))) & 3u) - 3;
    }
}

/* Input coordinate of output coordinate o and tap k, or -1 in the zero padding. */
static int32_t nce_tap(uint32_t o, uint32_t k, uint32_t stride, uint32_t pad, uint32_t n) {
    uint32_t i = o * stride + k;
    if (i < pad || i - pad >= n) {
        return -1;
    }
    return (int32_t)(i - pad);
}

/* The shortcut code of output pixel (y, x), channel o (0 for channels it lacks). */
static uint32_t nce_shortcut(const nce_conv_t *l, const uint8_t *res, uint32_t y, uint32_t x, uint32_t o) {
    if (res == NULL || o >= l->res_c) {
        return 0;
    }
    return res[((y * l->res_stride) * l->res_w + x * l->res_stride) * l->res_c + o];
}

static uint8_t nce_epilogue(const nce_conv_t *l, const uint8_t *res, uint32_t y, uint32_t x, uint32_t o, int32_t acc) {
    int32_t m = 0, b = 0;
    if (o < l->c_conv) {
        m = l->m[o];
        b = l->b[o];
    }
    return nce_requant(acc, m, b, nce_shortcut(l, res, y, x, o), res ? l->r : 0, l->shift, l->qmax);
}

void nce_conv_ref(const nce_conv_t *l, const uint8_t *x, const uint8_t *res, uint8_t *y) {
    uint32_t oy, ox, o, ky, kx, ci;
    for (oy = 0; oy < l->ho; oy++) {
        for (ox = 0; ox < l->wo; ox++) {
            uint8_t *out = y + (oy * l->wo + ox) * l->c_out;
            for (o = 0; o < l->c_out; o++) {
                int32_t acc = 0;
                if (o < l->c_conv) {
                    for (ky = 0; ky < l->k; ky++) {
                        int32_t iy = nce_tap(oy, ky, l->stride, l->pad, l->h);
                        if (iy < 0) {
                            continue;
                        }
                        for (kx = 0; kx < l->k; kx++) {
                            int32_t ix = nce_tap(ox, kx, l->stride, l->pad, l->w);
                            const uint8_t *px;
                            if (ix < 0) {
                                continue;
                            }
                            px = x + ((uint32_t)iy * l->w + (uint32_t)ix) * l->c_in;
                            for (ci = 0; ci < l->c_in; ci++) {
                                acc += (int32_t)px[ci] * nce_weight(l, o, (ky * l->k + kx) * l->c_in + ci);
                            }
                        }
                    }
                }
                out[o] = nce_epilogue(l, res, oy, ox, o, acc);
            }
        }
    }
}

#if defined(NCE_SIMD_DSP) || defined(NCE_SIMD_NEON)
/* The receptive field of output pixel (oy, ox) as codes in reduction order, zero-padded to
 * words * 16 bytes; returns their sum. Both SIMD paths use
 * sum_i c_i x_i = 2 sum_i u_i x_i - 3 sum_i x_i with u = (c + 3) / 2 in {0, 1, 2, 3}. */
static uint32_t nce_patch(const nce_conv_t *l, const uint8_t *x, uint32_t oy, uint32_t ox, uint8_t *p) {
    uint32_t ky, kx, ci, i = 0, sum = 0;
    for (ky = 0; ky < l->k; ky++) {
        int32_t iy = nce_tap(oy, ky, l->stride, l->pad, l->h);
        for (kx = 0; kx < l->k; kx++) {
            int32_t ix = nce_tap(ox, kx, l->stride, l->pad, l->w);
            if (iy < 0 || ix < 0) {
                for (ci = 0; ci < l->c_in; ci++) {
                    p[i++] = 0;
                }
            } else {
                const uint8_t *px = x + ((uint32_t)iy * l->w + (uint32_t)ix) * l->c_in;
                for (ci = 0; ci < l->c_in; ci++) {
                    sum += px[ci];
                    p[i++] = px[ci];
                }
            }
        }
    }
    for (; i < l->words * 16; i++) {
        p[i] = 0;
    }
    return sum;
}

/* acc = 2 * sum(u*x) - 3 * sum(x), exact in int64 (the result fits int32 by the exporter's
 * overflow check). */
static int32_t nce_from_u(uint32_t sum_ux, uint32_t sum_x) {
    return (int32_t)(2 * (int64_t)sum_ux - 3 * (int64_t)sum_x);
}
#endif

#if defined(NCE_SIMD_DSP)
/* Halfword pairs of 16 patch codes x0..x15 in the order SMLAD meets the weights:
 * (x_j, x_j+8) and (x_j+4, x_j+12) for j = 0..3, matching UXTB16 of t = (w >> 2j) & 0x03030303
 * (codes j, j+8) and of t >> 8 (codes j+4, j+12). */
static void nce_dsp_pairs(const uint32_t *b, uint32_t *pr) {
    uint32_t u0 = __uxtb16(b[0]), v0 = __uxtb16(b[0] >> 8), u1 = __uxtb16(b[1]), v1 = __uxtb16(b[1] >> 8);
    uint32_t u2 = __uxtb16(b[2]), v2 = __uxtb16(b[2] >> 8), u3 = __uxtb16(b[3]), v3 = __uxtb16(b[3] >> 8);
    pr[0] = (u0 & 0xffffu) | (u2 << 16); /* x0, x8 */
    pr[1] = (u1 & 0xffffu) | (u3 << 16); /* x4, x12 */
    pr[2] = (v0 & 0xffffu) | (v2 << 16); /* x1, x9 */
    pr[3] = (v1 & 0xffffu) | (v3 << 16); /* x5, x13 */
    pr[4] = (u0 >> 16) | (u2 & 0xffff0000u); /* x2, x10 */
    pr[5] = (u1 >> 16) | (u3 & 0xffff0000u); /* x6, x14 */
    pr[6] = (v0 >> 16) | (v2 & 0xffff0000u); /* x3, x11 */
    pr[7] = (v1 >> 16) | (v3 & 0xffff0000u); /* x7, x15 */
}

/* Codes j, j+8 and j+4, j+12 of packed word w against pair registers p0, p1. */
#define NCE_DSP_MAC(w, j, p0, p1, s)                                 \
    do {                                                             \
        uint32_t t_ = ((w) >> (2 * (j))) & 0x03030303u;              \
        (s) = __smlad(__uxtb16(t_), (p0), (s));                      \
        (s) = __smlad(__uxtb16(t_ >> 8), (p1), (s));                 \
    } while (0)

/* sum_i u_i x_i of two output channels (rows wa, wb; wb may equal wa) over all words. */
static void nce_dsp_dot2(const uint32_t *wa, const uint32_t *wb, const uint32_t *pr, uint32_t words, int32_t *sa, int32_t *sb) {
    int32_t a = 0, b = 0;
    uint32_t wd;
    for (wd = 0; wd < words; wd++, pr += 8) {
        uint32_t x = wa[wd], y = wb[wd];
        uint32_t p0 = pr[0], p1 = pr[1], p2 = pr[2], p3 = pr[3];
        NCE_DSP_MAC(x, 0, p0, p1, a);
        NCE_DSP_MAC(y, 0, p0, p1, b);
        NCE_DSP_MAC(x, 1, p2, p3, a);
        NCE_DSP_MAC(y, 1, p2, p3, b);
        p0 = pr[4];
        p1 = pr[5];
        p2 = pr[6];
        p3 = pr[7];
        NCE_DSP_MAC(x, 2, p0, p1, a);
        NCE_DSP_MAC(y, 2, p0, p1, b);
        NCE_DSP_MAC(x, 3, p2, p3, a);
        NCE_DSP_MAC(y, 3, p2, p3, b);
    }
    *sa = a;
    *sb = b;
}

/* Scratch: the u8 patch (words * 16 bytes), then its pairs (words * 32 bytes). */
static void nce_conv_w2_dsp(const nce_conv_t *l, const uint8_t *x, const uint8_t *res, uint8_t *y, void *scratch) {
    uint8_t *patch = (uint8_t *)scratch;
    uint32_t *pairs = (uint32_t *)scratch + l->words * 4;
    const uint32_t *wts = (const uint32_t *)l->weights;
    uint32_t oy, ox, o, wd;
    for (oy = 0; oy < l->ho; oy++) {
        for (ox = 0; ox < l->wo; ox++) {
            uint8_t *out = y + (oy * l->wo + ox) * l->c_out;
            uint32_t sum_x = nce_patch(l, x, oy, ox, patch);
            for (wd = 0; wd < l->words; wd++) {
                nce_dsp_pairs((const uint32_t *)scratch + wd * 4, pairs + wd * 8);
            }
            for (o = 0; o < l->c_conv; o += 2) {
                uint32_t o2 = o + 1 < l->c_conv ? o + 1 : o;
                int32_t sa, sb;
                nce_dsp_dot2(wts + o * l->words, wts + o2 * l->words, pairs, l->words, &sa, &sb);
                out[o] = nce_epilogue(l, res, oy, ox, o, nce_from_u((uint32_t)sa, sum_x));
                out[o2] = nce_epilogue(l, res, oy, ox, o2, nce_from_u((uint32_t)sb, sum_x));
            }
            for (o = l->c_conv; o < l->c_out; o++) {
                out[o] = nce_epilogue(l, res, oy, ox, o, 0);
            }
        }
    }
}
#endif

#if defined(NCE_SIMD_NEON)
static void nce_conv_w2_neon(const nce_conv_t *l, const uint8_t *x, const uint8_t *res, uint8_t *y, void *scratch) {
    static const uint8_t lane_byte[16] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3};
    static const int8_t lane_shift[16] = {0, -2, -4, -6, 0, -2, -4, -6, 0, -2, -4, -6, 0, -2, -4, -6};
    uint8_t *patch = (uint8_t *)scratch;
    const uint32_t *wts = (const uint32_t *)l->weights;
    const uint8x16_t idx = vld1q_u8(lane_byte);
    const int8x16_t shifts = vld1q_s8(lane_shift);
    const uint8x16_t three = vdupq_n_u8(3);
    uint32_t oy, ox, o, wd;
    for (oy = 0; oy < l->ho; oy++) {
        for (ox = 0; ox < l->wo; ox++) {
            uint8_t *out = y + (oy * l->wo + ox) * l->c_out;
            uint32_t sum_x = nce_patch(l, x, oy, ox, patch);
            for (o = 0; o < l->c_out; o++) {
                int32_t acc = 0;
                if (o < l->c_conv) {
                    const uint32_t *wr = wts + o * l->words;
                    uint32x4_t s = vdupq_n_u32(0);
                    for (wd = 0; wd < l->words; wd++) {
                        uint8x16_t bytes = vreinterpretq_u8_u32(vdupq_n_u32(wr[wd]));
                        uint8x16_t u = vandq_u8(vshlq_u8(vqtbl1q_u8(bytes, idx), shifts), three);
                        uint8x16_t xv = vld1q_u8(patch + wd * 16);
                        s = vpadalq_u16(s, vmull_u8(vget_low_u8(u), vget_low_u8(xv)));
                        s = vpadalq_u16(s, vmull_high_u8(u, xv));
                    }
                    acc = nce_from_u(vaddvq_u32(s), sum_x);
                }
                out[o] = nce_epilogue(l, res, oy, ox, o, acc);
            }
        }
    }
}
#endif

void nce_conv(const nce_conv_t *l, const uint8_t *x, const uint8_t *res, uint8_t *y, void *scratch) {
#if defined(NCE_SIMD_DSP)
    if (!l->w8) {
        nce_conv_w2_dsp(l, x, res, y, scratch);
        return;
    }
#elif defined(NCE_SIMD_NEON)
    if (!l->w8) {
        nce_conv_w2_neon(l, x, res, y, scratch);
        return;
    }
#endif
    (void)scratch;
    nce_conv_ref(l, x, res, y);
}

void nce_maxpool(const nce_maxpool_t *p, const uint8_t *x, uint8_t *y) {
    uint32_t oy, ox, c, ky, kx;
    for (oy = 0; oy < p->ho; oy++) {
        for (ox = 0; ox < p->wo; ox++) {
            for (c = 0; c < p->c; c++) {
                uint8_t best = 0;
                for (ky = 0; ky < p->k; ky++) {
                    int32_t iy = nce_tap(oy, ky, p->stride, p->pad, p->h);
                    if (iy < 0) {
                        continue;
                    }
                    for (kx = 0; kx < p->k; kx++) {
                        int32_t ix = nce_tap(ox, kx, p->stride, p->pad, p->w);
                        uint8_t v;
                        if (ix < 0) {
                            continue;
                        }
                        v = x[((uint32_t)iy * p->w + (uint32_t)ix) * p->c + c];
                        best = v > best ? v : best;
                    }
                }
                y[(oy * p->wo + ox) * p->c + c] = best;
            }
        }
    }
}

void nce_global_sum(const uint8_t *x, uint32_t hw, uint32_t c, int32_t *sums) {
    uint32_t p, ch;
    for (ch = 0; ch < c; ch++) {
        sums[ch] = 0;
    }
    for (p = 0; p < hw; p++) {
        for (ch = 0; ch < c; ch++) {
            sums[ch] += x[p * c + ch];
        }
    }
}

int nce_linear(const nce_linear_t *l, const int32_t *x, int32_t *logits) {
    uint32_t o, c;
    for (o = 0; o < l->c_out; o++) {
        int64_t acc = 0;
        for (c = 0; c < l->c_in; c++) {
            acc += (int64_t)l->weights[o * l->c_in + c] * x[c];
        }
        acc += l->bias[o];
        if (acc > INT32_MAX || acc < INT32_MIN) {
            return NCE_ERR_OVERFLOW;
        }
        logits[o] = (int32_t)acc;
    }
    return NCE_OK;
}

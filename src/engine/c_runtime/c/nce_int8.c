/* nce int8 peer: see nce_int8.h. The scalar functions follow TensorFlow Lite Micro's
 * reference kernels loop for loop; the DSP path follows CMSIS-NN's arm_convolve_s8 (im2col of
 * two pixels to int16 with the input offset, reordered so that SXTB16 of four weights meets
 * it; 2 channels x 2 pixels per pass with SMLAD), written here, not copied. */
#include <string.h>

#include "nce_int8.h"

#if defined(NCE_SIMD_DSP)
#include <arm_acle.h>
#endif

/* gemmlowp's SaturatingRoundingDoublingHighMul. */
static int32_t nce_srdhm(int32_t a, int32_t b) {
    int64_t ab = (int64_t)a * b;
    int32_t nudge = ab >= 0 ? (1 << 30) : (1 - (1 << 30));
    if (a == b && a == INT32_MIN) {
        return INT32_MAX;
    }
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}

/* gemmlowp's RoundingDivideByPOT (0 <= e <= 31). */
static int32_t nce_rdbpot(int32_t x, int32_t e) {
    int32_t mask = (int32_t)((1u << e) - 1u);
    int32_t rem = x & mask;
    int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> e) + (rem > threshold ? 1 : 0);
}

/* TFLite's MultiplyByQuantizedMultiplier: x * m / 2^31 * 2^shift, rounded. */
static int32_t nce_mbqm(int32_t x, int32_t m, int32_t shift) {
    int32_t left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
    return nce_rdbpot(nce_srdhm(x * (1 << left), m), right);
}

static int8_t nce_clamp8(int32_t v, int32_t lo, int32_t hi) {
    v = v < lo ? lo : v;
    return (int8_t)(v > hi ? hi : v);
}

void nce_i8_input(const uint8_t *chw, int8_t *hwc, uint32_t c, uint32_t h, uint32_t w) {
    uint32_t ch, p;
    for (ch = 0; ch < c; ch++) {
        for (p = 0; p < h * w; p++) {
            hwc[p * c + ch] = (int8_t)((int32_t)chw[ch * h * w + p] - 128);
        }
    }
}

static int8_t nce_i8_out(const nce_i8_conv_t *l, uint32_t o, int32_t acc) {
    acc += l->bias[o];
    acc = nce_mbqm(acc, l->mult[o], l->shift[o]) + l->out_offset;
    return nce_clamp8(acc, l->act_min, l->act_max);
}

void nce_i8_conv_ref(const nce_i8_conv_t *l, const int8_t *x, int8_t *y) {
    uint32_t groups = l->groups > 1 ? l->groups : 1u, cg = l->c_in / groups, group_out = l->c_out / groups;
    uint32_t oy, ox, o, ky, kx;
    for (oy = 0; oy < l->ho; oy++) {
        int32_t iy0 = (int32_t)(oy * l->stride) - (int32_t)l->pad;
        for (ox = 0; ox < l->wo; ox++) {
            int32_t ix0 = (int32_t)(ox * l->stride) - (int32_t)l->pad;
            for (o = 0; o < l->c_out; o++) {
                const int8_t *xg = x + o / group_out * cg;
                int32_t acc = 0;
                for (ky = 0; ky < l->k; ky++) {
                    int32_t iy = iy0 + (int32_t)ky;
                    for (kx = 0; kx < l->k; kx++) {
                        int32_t ix = ix0 + (int32_t)kx;
                        const int8_t *px, *pw, *end;
                        if (ix < 0 || ix >= (int32_t)l->w || iy < 0 || iy >= (int32_t)l->h) {
                            continue;
                        }
                        px = xg + ((uint32_t)iy * l->w + (uint32_t)ix) * l->c_in;
                        pw = l->weights + ((o * l->k + ky) * l->k + kx) * cg;
                        for (end = px + cg; px < end; px++, pw++) {
                            acc += *pw * (*px + l->in_offset);
                        }
                    }
                }
                y[(oy * l->wo + ox) * l->c_out + o] = nce_i8_out(l, o, acc);
            }
        }
    }
}

#if defined(NCE_SIMD_DSP)
static uint32_t nce_load32(const void *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static void nce_store32(void *p, uint32_t v) {
    memcpy(p, &v, sizeof v);
}

/* Bytes 1 and 3 of w in the low and high halfword, sign-extended (SXTB16 of w rotated by 8). */
static uint32_t nce_odd_bytes(uint32_t w) {
#if defined(__GNUC__)
    /* One instruction, as CMSIS-NN's __SXTB16_RORn (GCC does not fold the rotation). */
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(w));
    return r;
#else
    return __sxtb16((w >> 8) | (w << 24));
#endif
}

/* The receptive field of output pixel `pix` as int16 (x + in_offset, 0 in the padding); within
 * each full group of four, element order 0, 2, 1, 3 (the order SXTB16 yields the weights in).
 * When c_in is a multiple of 4, four codes at a time (CMSIS-NN's q7-to-q15 with offset). */
static void nce_i8_patch(const nce_i8_conv_t *l, const int8_t *x, uint32_t pix, int16_t *p) {
    uint32_t ky, kx, ci, n = 0, full = (l->k * l->k * l->c_in) & ~3u;
    uint32_t off2 = ((uint32_t)l->in_offset & 0xffffu) * 0x00010001u;
    int32_t iy0 = (int32_t)((pix / l->wo) * l->stride) - (int32_t)l->pad;
    int32_t ix0 = (int32_t)((pix % l->wo) * l->stride) - (int32_t)l->pad;
    for (ky = 0; ky < l->k; ky++) {
        int32_t iy = iy0 + (int32_t)ky;
        for (kx = 0; kx < l->k; kx++) {
            int32_t ix = ix0 + (int32_t)kx;
            int inside = ix >= 0 && ix < (int32_t)l->w && iy >= 0 && iy < (int32_t)l->h;
            const int8_t *px = inside ? x + ((uint32_t)iy * l->w + (uint32_t)ix) * l->c_in : NULL;
            if (l->c_in % 4 == 0) {
                for (ci = 0; ci < l->c_in; ci += 4, n += 4) {
                    uint32_t w = inside ? nce_load32(px + ci) : 0u;
                    nce_store32(p + n, inside ? (uint32_t)__sadd16(__sxtb16(w), off2) : 0u);
                    nce_store32(p + n + 2, inside ? (uint32_t)__sadd16(nce_odd_bytes(w), off2) : 0u);
                }
                continue;
            }
            for (ci = 0; ci < l->c_in; ci++, n++) {
                uint32_t at = n < full ? ((n & ~3u) | ((n & 1u) << 1) | ((n >> 1) & 1u)) : n;
                p[at] = (int16_t)(inside ? px[ci] + l->in_offset : 0);
            }
        }
    }
}

/* Two weight rows (wa, wb) against two patches (pa, pb), as CMSIS-NN's
 * arm_nn_mat_mult_kernel_s8_s16: s = {wa.pa, wb.pa, wa.pb, wb.pb}. */
static void nce_i8_dot2x2(const int8_t *wa, const int8_t *wb, const int16_t *pa, const int16_t *pb, uint32_t n, int32_t *s) {
    int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    const int8_t *end = wa + (n & ~3u), *tail = wa + n;
    while (wa < end) {
        uint32_t u = nce_load32(wa), v = nce_load32(wb);
        uint32_t u02 = __sxtb16(u), u13 = nce_odd_bytes(u), v02 = __sxtb16(v), v13 = nce_odd_bytes(v);
        uint32_t a = nce_load32(pa), b = nce_load32(pb);
        s0 = __smlad(u02, a, s0);
        s1 = __smlad(v02, a, s1);
        s2 = __smlad(u02, b, s2);
        s3 = __smlad(v02, b, s3);
        a = nce_load32(pa + 2);
        b = nce_load32(pb + 2);
        s0 = __smlad(u13, a, s0);
        s1 = __smlad(v13, a, s1);
        s2 = __smlad(u13, b, s2);
        s3 = __smlad(v13, b, s3);
        wa += 4;
        wb += 4;
        pa += 4;
        pb += 4;
    }
    for (; wa < tail; wa++, wb++, pa++, pb++) {
        s0 += *wa * *pa;
        s1 += *wb * *pa;
        s2 += *wa * *pb;
        s3 += *wb * *pb;
    }
    s[0] = s0;
    s[1] = s1;
    s[2] = s2;
    s[3] = s3;
}

/* Two output pixels at a time (two patches in scratch), two channels per pass. */
static void nce_i8_conv_dsp(const nce_i8_conv_t *l, const int8_t *x, int8_t *y, int16_t *scratch) {
    uint32_t n = l->k * l->k * l->c_in, pixels = l->ho * l->wo, pix, o;
    int16_t *pa = scratch, *pb = scratch + ((n + 3u) & ~3u);
    for (pix = 0; pix < pixels; pix += 2) {
        uint32_t qix = pix + 1 < pixels ? pix + 1 : pix;
        int8_t *ya = y + pix * l->c_out, *yb = y + qix * l->c_out;
        nce_i8_patch(l, x, pix, pa);
        nce_i8_patch(l, x, qix, pb);
        for (o = 0; o < l->c_out; o += 2) {
            uint32_t o2 = o + 1 < l->c_out ? o + 1 : o;
            int32_t s[4];
            nce_i8_dot2x2(l->weights + o * n, l->weights + o2 * n, pa, pb, n, s);
            ya[o] = nce_i8_out(l, o, s[0]);
            ya[o2] = nce_i8_out(l, o2, s[1]);
            yb[o] = nce_i8_out(l, o, s[2]);
            yb[o2] = nce_i8_out(l, o2, s[3]);
        }
    }
}
#endif

/* TFLite's reference DepthwiseConv (multiplier 1): per output pixel and channel, the taps
 * inside the input. */
void nce_i8_dwconv_ref(const nce_i8_conv_t *l, const int8_t *x, int8_t *y) {
    uint32_t oy, ox, ch, ky, kx;
    for (oy = 0; oy < l->ho; oy++) {
        int32_t iy0 = (int32_t)(oy * l->stride) - (int32_t)l->pad;
        for (ox = 0; ox < l->wo; ox++) {
            int32_t ix0 = (int32_t)(ox * l->stride) - (int32_t)l->pad;
            for (ch = 0; ch < l->c_in; ch++) {
                int32_t acc = 0;
                for (ky = 0; ky < l->k; ky++) {
                    int32_t iy = iy0 + (int32_t)ky;
                    for (kx = 0; kx < l->k; kx++) {
                        int32_t ix = ix0 + (int32_t)kx;
                        if (ix < 0 || ix >= (int32_t)l->w || iy < 0 || iy >= (int32_t)l->h) {
                            continue;
                        }
                        acc += l->weights[(ky * l->k + kx) * l->c_in + ch] * (x[((uint32_t)iy * l->w + (uint32_t)ix) * l->c_in + ch] + l->in_offset);
                    }
                }
                y[(oy * l->wo + ox) * l->c_out + ch] = nce_i8_out(l, ch, acc);
            }
        }
    }
}

#if defined(NCE_SIMD_DSP)
/* Four channels (from x and w) of one output pixel over the taps win = [y0, y1) x [x0, x1),
 * tap (ky, kx) reading input pixel (org[0] + ky, org[1] + kx): SXTB16 splits the codes and the weights into lanes
 * (0, 2) and (1, 3), SMLABB and SMLATT multiply-accumulate each lane. `border`: the input offset
 * is added to the codes (SADD16), else the caller adds in_offset * (the channel's weight sum). */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void nce_i8_dw4(const nce_i8_conv_t *l, const int8_t *x, const int8_t *w, const int32_t org[2], const uint32_t win[4],
                              int border, int32_t s[4]) {
    uint32_t off2 = ((uint32_t)l->in_offset & 0xffffu) * 0x00010001u, ky, kx;
    int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (ky = win[0]; ky < win[1]; ky++) {
        const int8_t *px = x + ((uint32_t)(org[0] + (int32_t)ky) * l->w + (uint32_t)(org[1] + (int32_t)win[2])) * l->c_in;
        const int8_t *pw = w + (ky * l->k + win[2]) * l->c_in;
        for (kx = win[2]; kx < win[3]; kx++, px += l->c_in, pw += l->c_in) {
            uint32_t xv = nce_load32(px), wv = nce_load32(pw);
            uint32_t x02 = __sxtb16(xv), x13 = nce_odd_bytes(xv), w02 = __sxtb16(wv), w13 = nce_odd_bytes(wv);
            if (border) {
                x02 = __sadd16(x02, off2);
                x13 = __sadd16(x13, off2);
            }
            s0 = __smlabb(x02, w02, s0);
            s2 = __smlatt(x02, w02, s2);
            s1 = __smlabb(x13, w13, s1);
            s3 = __smlatt(x13, w13, s3);
        }
    }
    s[0] = s0;
    s[1] = s1;
    s[2] = s2;
    s[3] = s3;
}

/* Three taps of a 3x3 window's row (codes at px, weights at pw, both c bytes apart), four
 * channels: nce_i8_dw4's inside loop written out, as CMSIS-NN's arm_depthwise_conv_3x3_s8. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void nce_i8_dw_tap(const int8_t *px, const int8_t *pw, int32_t s[4]) {
    uint32_t xv = nce_load32(px), wv = nce_load32(pw);
    uint32_t x02 = __sxtb16(xv), x13 = nce_odd_bytes(xv), w02 = __sxtb16(wv), w13 = nce_odd_bytes(wv);
    s[0] = __smlabb(x02, w02, s[0]);
    s[2] = __smlatt(x02, w02, s[2]);
    s[1] = __smlabb(x13, w13, s[1]);
    s[3] = __smlatt(x13, w13, s[3]);
}

#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void nce_i8_dw3_row(const int8_t *px, const int8_t *pw, uint32_t c, int32_t s[4]) {
    nce_i8_dw_tap(px, pw, s);
    nce_i8_dw_tap(px + c, pw + c, s);
    nce_i8_dw_tap(px + 2 * c, pw + 2 * c, s);
}

/* Scratch: each channel's weight sum (for in_offset at pixels whose window is inside). Channels
 * past the last multiple of 4 take the reference's loop. */
static void nce_i8_dwconv_dsp(const nce_i8_conv_t *layer, const int8_t *x, int8_t *y, int32_t *wsum) {
    /* A local copy, so that the output stores do not force its fields to be reloaded. */
    const nce_i8_conv_t copy = *layer, *l = &copy;
    uint32_t c = l->c_in, c4 = c & ~3u, kk = l->k * l->k, ch, t, oy, ox, ky, kx, win[4];
    int32_t org[2];
    for (ch = 0; ch < c; ch++) {
        wsum[ch] = 0;
        for (t = 0; t < kk; t++) {
            wsum[ch] += l->weights[t * c + ch];
        }
    }
    for (oy = 0; oy < l->ho; oy++) {
        int32_t iy0 = (int32_t)(oy * l->stride) - (int32_t)l->pad;
        org[0] = iy0;
        win[0] = iy0 < 0 ? (uint32_t)(-iy0) : 0u;
        win[1] = (int32_t)l->h - iy0 < (int32_t)l->k ? (uint32_t)((int32_t)l->h - iy0) : l->k;
        for (ox = 0; ox < l->wo; ox++) {
            int32_t ix0 = (int32_t)(ox * l->stride) - (int32_t)l->pad;
            int8_t *out = y + (oy * l->wo + ox) * l->c_out;
            int inside;
            org[1] = ix0;
            win[2] = ix0 < 0 ? (uint32_t)(-ix0) : 0u;
            win[3] = (int32_t)l->w - ix0 < (int32_t)l->k ? (uint32_t)((int32_t)l->w - ix0) : l->k;
            inside = win[0] == 0 && win[2] == 0 && win[1] == l->k && win[3] == l->k;
            for (ch = 0; ch < c4; ch += 4) {
                int32_t s[4];
                if (inside && l->k == 3) {
                    const int8_t *px = x + ((uint32_t)iy0 * l->w + (uint32_t)ix0) * c + ch;
                    s[0] = s[1] = s[2] = s[3] = 0;
                    nce_i8_dw3_row(px, l->weights + ch, c, s);
                    nce_i8_dw3_row(px + l->w * c, l->weights + 3 * c + ch, c, s);
                    nce_i8_dw3_row(px + 2 * l->w * c, l->weights + 6 * c + ch, c, s);
                    for (t = 0; t < 4; t++) {
                        s[t] += l->in_offset * wsum[ch + t];
                    }
                } else if (inside) {
                    nce_i8_dw4(l, x + ch, l->weights + ch, org, win, 0, s);
                    for (t = 0; t < 4; t++) {
                        s[t] += l->in_offset * wsum[ch + t];
                    }
                } else {
                    nce_i8_dw4(l, x + ch, l->weights + ch, org, win, 1, s);
                }
                for (t = 0; t < 4; t++) {
                    out[ch + t] = nce_i8_out(l, ch + t, s[t]);
                }
            }
            for (; ch < c; ch++) {
                int32_t acc = 0;
                for (ky = win[0]; ky < win[1]; ky++) {
                    for (kx = win[2]; kx < win[3]; kx++) {
                        uint32_t at = ((uint32_t)(iy0 + (int32_t)ky) * l->w + (uint32_t)(ix0 + (int32_t)kx)) * c + ch;
                        acc += l->weights[(ky * l->k + kx) * c + ch] * (x[at] + l->in_offset);
                    }
                }
                out[ch] = nce_i8_out(l, ch, acc);
            }
        }
    }
}
#endif

void nce_i8_dwconv(const nce_i8_conv_t *l, const int8_t *x, int8_t *y, void *scratch) {
#if defined(NCE_SIMD_DSP)
    if (scratch != NULL) {
        nce_i8_dwconv_dsp(l, x, y, (int32_t *)scratch);
        return;
    }
#endif
    (void)scratch;
    nce_i8_dwconv_ref(l, x, y);
}

void nce_i8_conv(const nce_i8_conv_t *l, const int8_t *x, int8_t *y, void *scratch) {
#if defined(NCE_SIMD_DSP)
    if (scratch != NULL && l->groups <= 1) {
        nce_i8_conv_dsp(l, x, y, (int16_t *)scratch);
        return;
    }
#endif
    (void)scratch;
    nce_i8_conv_ref(l, x, y);
}

void nce_i8_add(const nce_i8_add_t *l, const int8_t *in1, const int8_t *in2, int8_t *y) {
    uint32_t yy, xx, c;
    for (yy = 0; yy < l->h; yy++) {
        for (xx = 0; xx < l->w; xx++) {
            const int8_t *a = in1 + (yy * l->w + xx) * l->c1;
            const int8_t *b = in2 + ((yy * l->res_stride) * l->res_w + xx * l->res_stride) * l->res_c;
            for (c = 0; c < l->c; c++) {
                int32_t v1 = c < l->c1 ? l->in1_offset + a[c] : 0;
                int32_t v2 = c < l->res_c ? l->in2_offset + b[c] : 0;
                int32_t s1 = nce_rdbpot(nce_srdhm(v1 * (1 << l->left_shift), l->in1_mult), -l->in1_shift);
                int32_t s2 = nce_rdbpot(nce_srdhm(v2 * (1 << l->left_shift), l->in2_mult), -l->in2_shift);
                int32_t raw = nce_rdbpot(nce_srdhm(s1 + s2, l->out_mult), -l->out_shift) + l->out_offset;
                y[(yy * l->w + xx) * l->c + c] = nce_clamp8(raw, l->act_min, l->act_max);
            }
        }
    }
}

/* The window of output coordinate o: [*lo, *hi) in filter taps. */
static void nce_i8_window(uint32_t o, const nce_i8_pool_t *p, uint32_t n, int32_t *origin, uint32_t *lo, uint32_t *hi) {
    int32_t org = (int32_t)(o * p->stride) - (int32_t)p->pad;
    int32_t end = (int32_t)n - org;
    *origin = org;
    *lo = org < 0 ? (uint32_t)(-org) : 0u;
    *hi = end < (int32_t)p->k ? (uint32_t)(end < 0 ? 0 : end) : p->k;
}

void nce_i8_avgpool(const nce_i8_pool_t *p, const int8_t *x, int8_t *y) {
    uint32_t oy, ox, c, fy, fx, y0, y1, x0, x1;
    int32_t iy, ix;
    for (oy = 0; oy < p->ho; oy++) {
        nce_i8_window(oy, p, p->h, &iy, &y0, &y1);
        for (ox = 0; ox < p->wo; ox++) {
            nce_i8_window(ox, p, p->w, &ix, &x0, &x1);
            for (c = 0; c < p->c; c++) {
                int32_t acc = 0, count = 0;
                for (fy = y0; fy < y1; fy++) {
                    for (fx = x0; fx < x1; fx++) {
                        acc += x[((uint32_t)(iy + (int32_t)fy) * p->w + (uint32_t)(ix + (int32_t)fx)) * p->c + c];
                        count++;
                    }
                }
                if (count > 0) {
                    acc = acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count;
                }
                y[(oy * p->wo + ox) * p->c + c] = nce_clamp8(acc, p->act_min, p->act_max);
            }
        }
    }
}

void nce_i8_maxpool(const nce_i8_pool_t *p, const int8_t *x, int8_t *y) {
    uint32_t oy, ox, c, fy, fx, y0, y1, x0, x1;
    int32_t iy, ix;
    for (oy = 0; oy < p->ho; oy++) {
        nce_i8_window(oy, p, p->h, &iy, &y0, &y1);
        for (ox = 0; ox < p->wo; ox++) {
            nce_i8_window(ox, p, p->w, &ix, &x0, &x1);
            for (c = 0; c < p->c; c++) {
                int32_t m = -128;
                for (fy = y0; fy < y1; fy++) {
                    for (fx = x0; fx < x1; fx++) {
                        int32_t v = x[((uint32_t)(iy + (int32_t)fy) * p->w + (uint32_t)(ix + (int32_t)fx)) * p->c + c];
                        m = v > m ? v : m;
                    }
                }
                y[(oy * p->wo + ox) * p->c + c] = nce_clamp8(m, p->act_min, p->act_max);
            }
        }
    }
}

void nce_i8_fc(const nce_i8_fc_t *l, const int8_t *x, int8_t *y) {
    uint32_t o, d;
    for (o = 0; o < l->c_out; o++) {
        int32_t acc = 0;
        for (d = 0; d < l->c_in; d++) {
            acc += l->weights[o * l->c_in + d] * (x[d] + l->in_offset);
        }
        acc += l->bias[o];
        acc = nce_mbqm(acc, l->mult, l->shift) + l->out_offset;
        y[o] = nce_clamp8(acc, l->act_min, l->act_max);
    }
}

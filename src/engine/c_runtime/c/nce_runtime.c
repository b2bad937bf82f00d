/* nce C runtime: see nce_runtime.h. Every op follows docs/quantization.md; the scalar
 * functions are line-for-line the definitions in src/engine/cpu/reference.rs. */
#include <string.h>

#include "nce_runtime.h"

#if defined(NCE_SIMD_NEON)
#include <arm_neon.h>
#endif
#if defined(NCE_SIMD_DSP)
#include <arm_acle.h>
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

/* Groups of the conv (a descriptor written without the field is dense). */
static uint32_t nce_groups(const nce_conv_t *l) {
    return l->groups > 1 ? l->groups : 1u;
}

/* The bit offset in its packed word of code r (0..15) of a 2-bit conv: dense convs are packed in
 * the SWAR kernel's order, field 4 (3 - r % 4) + r / 4 (nce_runtime.h), grouped ones in plain
 * order, field r. */
static const uint8_t nce_swar_bits[16] = {24, 16, 8, 0, 26, 18, 10, 2, 28, 20, 12, 4, 30, 22, 14, 6};
static const uint8_t nce_plain_bits[16] = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};

/* The signed weight code of output channel o, reduction index i (of k_len = k*k*c_in/groups);
 * bits: the conv's table above. */
static int32_t nce_weight(const nce_conv_t *l, const uint8_t *bits, uint32_t k_len, uint32_t o, uint32_t i) {
    if (l->w8) {
        return ((const int8_t *)l->weights)[o * k_len + i];
    } else {
        uint32_t word = ((const uint32_t *)l->weights)[o * l->words + i / 16];
        return 2 * (int32_t)((word >> bits[i % 16]) & 3u) - 3;
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
    uint32_t cg = l->c_in / nce_groups(l), group_out = l->c_conv / nce_groups(l), k_len = l->k * l->k * cg;
    const uint8_t *bits = nce_groups(l) > 1 ? nce_plain_bits : nce_swar_bits;
    uint32_t oy, ox, o, ky, kx, ci;
    for (oy = 0; oy < l->ho; oy++) {
        for (ox = 0; ox < l->wo; ox++) {
            uint8_t *out = y + (oy * l->wo + ox) * l->c_out;
            for (o = 0; o < l->c_out; o++) {
                int32_t acc = 0;
                if (o < l->c_conv) {
                    /* The input channels of output channel o's group. */
                    const uint8_t *xg = x + o / group_out * cg;
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
                            px = xg + ((uint32_t)iy * l->w + (uint32_t)ix) * l->c_in;
                            for (ci = 0; ci < cg; ci++) {
                                acc += (int32_t)px[ci] * nce_weight(l, bits, k_len, o, (ky * l->k + kx) * cg + ci);
                            }
                        }
                    }
                }
                out[o] = nce_epilogue(l, res, oy, ox, o, acc);
            }
        }
    }
}

#if defined(NCE_SIMD_SWAR) || defined(NCE_SIMD_NEON)
/* clamp(v >> shift, 0, qmax) on v's two 32-bit halves (shift <= 30, qmax <= 255): a negative
 * v is 0, a high half that survives the shift is above qmax, else the shifted low bits decide. */
static inline uint8_t nce_shift_clamp(int64_t v, uint32_t shift, uint32_t qmax) {
    uint64_t u = (uint64_t)v;
    uint32_t hi = (uint32_t)(u >> 32), lo = (uint32_t)u, q;
    if (hi & 0x80000000u) {
        return 0;
    }
    if ((hi >> shift) != 0) {
        return (uint8_t)qmax;
    }
    q = (lo >> shift) | ((hi << 1) << (31 - shift));
    return (uint8_t)(q > qmax ? qmax : q);
}

/* The shortcut codes of output pixel (y, x), or NULL for a conv without a shortcut. */
static const uint8_t *nce_shortcut_px(const nce_conv_t *l, const uint8_t *res, uint32_t y, uint32_t x) {
    if (res == NULL) {
        return NULL;
    }
    return res + ((y * l->res_stride) * l->res_w + x * l->res_stride) * l->res_c;
}

/* nce_epilogue for the SIMD paths: output channel o of a pixel whose shortcut codes are sc
 * (NULL: none; channels past res_c read 0, channels past c_conv have no conv term). The model
 * reader refuses shifts outside [0, 30], so the rounding term is (2^shift) / 2 in 32 bits. */
static inline uint8_t nce_epilogue_px(const nce_conv_t *l, const uint8_t *sc, uint32_t o, int32_t acc) {
    int64_t v = (int64_t)((1u << l->shift) >> 1);
    if (o < l->c_conv) {
        v += (int64_t)acc * l->m[o] + l->b[o];
    }
    if (sc != NULL && o < l->res_c) {
        v += (int64_t)sc[o] * l->r;
    }
    return nce_shift_clamp(v, l->shift, l->qmax);
}

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

#if defined(NCE_SIMD_NEON)
/* acc = 2 * sum(u*x) - 3 * sum(x), exact in int64 (the result fits int32 by the exporter's
 * overflow check). */
static int32_t nce_from_u(uint32_t sum_ux, uint32_t sum_x) {
    return (int32_t)(2 * (int64_t)sum_ux - 3 * (int64_t)sum_x);
}
#endif


/* A depthwise conv: one filter per channel (groups == c_in == c_conv). */
static int nce_is_depthwise(const nce_conv_t *l) {
    return l->groups > 1 && l->groups == l->c_in && l->c_conv == l->c_in;
}

/* The taps [*lo, *hi) of output coordinate o that fall inside an input of n; returns the input
 * coordinate of tap 0 (negative in the top or left padding). */
static int32_t nce_tap_range(const nce_conv_t *l, uint32_t o, uint32_t n, uint32_t *lo, uint32_t *hi) {
    int32_t org = (int32_t)(o * l->stride) - (int32_t)l->pad;
    int32_t end = (int32_t)n - org;
    *lo = org < 0 ? (uint32_t)(-org) : 0u;
    *hi = end < (int32_t)l->k ? (uint32_t)(end < 0 ? 0 : end) : l->k;
    return org;
}

/* The unsigned weight code u = (c + 3) / 2 of depthwise channel ch, tap t. */
static uint32_t nce_dw_u(const nce_conv_t *l, uint32_t ch, uint32_t t) {
    return (((const uint32_t *)l->weights)[ch * l->words + t / 16] >> (2 * (t % 16))) & 3u;
}

/* The input codes of channel ch..ch+n-1 at input pixel (iy0 + ky, ix0 + kx) (a tap inside). */
static const uint8_t *nce_dw_px(const nce_conv_t *l, const uint8_t *x, int32_t iy0, int32_t ix0, uint32_t ky, uint32_t kx) {
    return x + ((uint32_t)(iy0 + (int32_t)ky) * l->w + (uint32_t)(ix0 + (int32_t)kx)) * l->c_in;
}
#endif

#if defined(NCE_SIMD_SWAR)
/* The output code of a 2-bit output (qmax == 3) by its threshold ladder t (nce_runtime.h):
 * the count of thresholds that a = acc ^ t[0] reaches. |a|, |t[k]| <= 2^15 (the exporter writes
 * a ladder only where the sums fit), so the sign of a - t[k] is the comparison. */
static inline uint8_t nce_rung3(const int16_t *t, int32_t acc) {
    uint32_t a = (uint32_t)acc ^ (uint32_t)t[0];
    uint32_t below = ((a - (uint32_t)t[1]) >> 31) + ((a - (uint32_t)t[2]) >> 31) + ((a - (uint32_t)t[3]) >> 31);
    return (uint8_t)(3u - below);
}

/* nce_rung3 for any qmax <= 7. */
static inline uint8_t nce_rungs(const int16_t *t, uint32_t qmax, int32_t acc) {
    uint32_t a = (uint32_t)acc ^ (uint32_t)t[0], below = 0, k;
    for (k = 1; k <= qmax; k++) {
        below += (a - (uint32_t)t[k]) >> 31;
    }
    return (uint8_t)(qmax - below);
}

/* Output channel o of a pixel whose shortcut codes are sc (NULL: none): by the ladder where the
 * exporter wrote one, else nce_epilogue_px. */
static inline uint8_t nce_out_code(const nce_conv_t *l, const uint8_t *sc, uint32_t o, int32_t acc) {
    if (l->thr != NULL) {
        uint32_t code = sc != NULL && o < l->res_c ? sc[o] : 0u;
        return nce_rungs(l->thr + (code * l->c_out + o) * (l->qmax + 1), l->qmax, acc);
    }
    return nce_epilogue_px(l, sc, o, acc);
}

/* Depthwise 2-bit convs, four channels per 32-bit word of the NHWC input. With
 * u = u0 + 2 u1 and a code x <= 3, u x = (x & M0) + 2 (x & M1) where the byte masks M0, M1 are
 * 0xff in the lanes whose weight has bit 0 (bit 1) set: per tap and four channels two ANDs and
 * three ADDs (the last sums the codes), no multiply. A lane sums at most 9 k^2 (<= 225 for
 * k <= 5) and the codes at most 3 k^2, so no lane carries into the next. Channel groups are the
 * outer loop: the masks of one group (two words per tap) are built in scratch, byte by byte in
 * memory order, so that word loads see channel j in the same lane as the codes on either
 * endianness. */
static void nce_dw_swar_masks(const nce_conv_t *l, uint32_t g, uint32_t n, uint8_t *masks) {
    uint32_t kk = l->k * l->k, j, t;
    for (t = 0; t < kk; t++) {
        for (j = 0; j < 4; j++) {
            uint32_t u = j < n ? nce_dw_u(l, g + j, t) : 0u;
            masks[t * 8 + j] = (u & 1u) ? 0xffu : 0u;
            masks[t * 8 + 4 + j] = (u & 2u) ? 0xffu : 0u;
        }
    }
}

/* n <= 4 bytes as the first lanes of a word (the others 0). */
static uint32_t nce_load_lanes(const uint8_t *p, uint32_t n) {
    uint8_t b[4] = {0, 0, 0, 0};
    uint32_t i, v;
    for (i = 0; i < n; i++) {
        b[i] = p[i];
    }
    memcpy(&v, b, sizeof v);
    return v;
}

/* Four channels (lanes) of one output pixel: sum u x into *ux and sum x into *sx over the taps
 * [ky0, ky1) x [kx0, kx1); n < 4 channels are read byte by byte (the last group). */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void nce_dw_swar_taps(const nce_conv_t *l, const uint8_t *x, const uint32_t *mk, const int32_t org[2],
                                    const uint32_t win[4], uint32_t n, uint32_t *ux, uint32_t *sx) {
    uint32_t ky, kx, a = 0, s = 0;
    for (ky = win[0]; ky < win[1]; ky++) {
        const uint8_t *px = nce_dw_px(l, x, org[0], org[1], ky, win[2]);
        const uint32_t *m = mk + (ky * l->k + win[2]) * 2;
        for (kx = win[2]; kx < win[3]; kx++, px += l->c_in, m += 2) {
            uint32_t v;
            if (n == 4) {
                memcpy(&v, px, sizeof v);
            } else {
                v = nce_load_lanes(px, n);
            }
            a += (v & m[0]) + ((v & m[1]) << 1);
            s += v;
        }
    }
    *ux = a;
    *sx = s;
}

/* One tap of four channels: the codes v against the masks m[0], m[1]. */
#define NCE_DW_SWAR_TAP(v, m, a, s) ((a) += ((v) & (m)[0]) + (((v) & (m)[1]) << 1), (s) += (v))

/* Three taps of a 3x3 window's row at p (pixels c bytes apart), masks m. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void nce_dw3_swar_row(const uint8_t *p, uint32_t c, const uint32_t *m, uint32_t *a, uint32_t *s) {
    uint32_t v0, v1, v2;
    memcpy(&v0, p, sizeof v0);
    memcpy(&v1, p + c, sizeof v1);
    memcpy(&v2, p + 2 * c, sizeof v2);
    NCE_DW_SWAR_TAP(v0, m, *a, *s);
    NCE_DW_SWAR_TAP(v1, m + 2, *a, *s);
    NCE_DW_SWAR_TAP(v2, m + 4, *a, *s);
}

/* The codes of channels g..g+n-1 of one output pixel from their lanes of sum u x (lu) and sum x
 * (ls): 2-bit outputs without a shortcut by their ladders, else nce_out_code. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void nce_dw_swar_out(const nce_conv_t *l, const uint8_t *sc, uint32_t g, uint32_t n, const uint8_t lu[4], const uint8_t ls[4],
                                   uint8_t *out) {
    uint32_t j;
    if (l->thr != NULL && l->qmax == 3 && sc == NULL) {
        const int16_t *t = l->thr + 4 * g;
        for (j = 0; j < n; j++) {
            out[j] = nce_rung3(t + 4 * j, 2 * (int32_t)lu[j] - 3 * (int32_t)ls[j]);
        }
        return;
    }
    for (j = 0; j < n; j++) {
        out[j] = nce_out_code(l, sc, g + j, 2 * (int32_t)lu[j] - 3 * (int32_t)ls[j]);
    }
}

/* Channels g..g+n-1 (n <= 4) of output pixel (oy, ox); mk: their masks. */
static void nce_dw_swar_px(const nce_conv_t *l, const uint8_t *x, const uint8_t *res, uint8_t *y, const uint32_t *mk,
                           uint32_t g, uint32_t n, uint32_t oy, uint32_t ox) {
    uint8_t *out = y + (oy * l->wo + ox) * l->c_out + g;
    const uint8_t *sc = nce_shortcut_px(l, res, oy, ox);
    uint32_t ux, sx, win[4];
    int32_t org[2];
    uint8_t lu[4], ls[4];
    org[0] = nce_tap_range(l, oy, l->h, &win[0], &win[1]);
    org[1] = nce_tap_range(l, ox, l->w, &win[2], &win[3]);
    if (n == 4) {
        nce_dw_swar_taps(l, x + g, mk, org, win, 4, &ux, &sx);
    } else {
        nce_dw_swar_taps(l, x + g, mk, org, win, n, &ux, &sx);
    }
    memcpy(lu, &ux, sizeof lu);
    memcpy(ls, &sx, sizeof ls);
    nce_dw_swar_out(l, sc, g, n, lu, ls, out);
}

/* Output columns [lo, hi) of row oy for four channels g..g+3 of a 3x3 conv whose windows there
 * lie inside the input: straight-line taps, pointers stepped from pixel to pixel. */
static void nce_dw3_swar_run(const nce_conv_t *layer, const uint8_t *x, const uint8_t *res, uint8_t *y, const uint32_t *mk,
                             uint32_t g, uint32_t oy, const uint32_t run[2]) {
    /* A local copy: the compiler then knows that the output stores do not change it, and keeps
     * its fields in registers instead of reloading them for every channel. */
    const nce_conv_t copy = *layer, *l = &copy;
    uint32_t row = l->w * l->c_in, step = l->stride * l->c_in, ox;
    const uint8_t *p = x + g + ((oy * l->stride - l->pad) * l->w + run[0] * l->stride - l->pad) * l->c_in;
    uint8_t *out = y + (oy * l->wo + run[0]) * l->c_out + g;
    for (ox = run[0]; ox < run[1]; ox++, p += step, out += l->c_out) {
        const uint8_t *sc = nce_shortcut_px(l, res, oy, ox);
        uint32_t ux = 0, sx = 0;
        uint8_t lu[4], ls[4];
        nce_dw3_swar_row(p, l->c_in, mk, &ux, &sx);
        nce_dw3_swar_row(p + row, l->c_in, mk + 6, &ux, &sx);
        nce_dw3_swar_row(p + 2 * row, l->c_in, mk + 12, &ux, &sx);
        memcpy(lu, &ux, sizeof lu);
        memcpy(ls, &sx, sizeof ls);
        nce_dw_swar_out(l, sc, g, 4, lu, ls, out);
    }
}

/* The output coordinates [run[0], run[1]) whose 3-tap windows lie inside an input of n. */
static void nce_dw3_inside(const nce_conv_t *l, uint32_t n, uint32_t out_n, uint32_t run[2]) {
    uint32_t lo = (l->pad + l->stride - 1) / l->stride;
    uint32_t hi = n + l->pad >= 3 ? (n + l->pad - 3) / l->stride + 1 : 0;
    hi = hi < out_n ? hi : out_n;
    run[0] = lo < hi ? lo : hi;
    run[1] = hi;
}

/* Channels g..g+n-1 (n <= 4) of every output pixel; mk: their masks. A 3x3 conv takes
 * nce_dw3_swar_run where its windows lie inside the input. */
static void nce_conv_dw_swar_group(const nce_conv_t *l, const uint8_t *x, const uint8_t *res, uint8_t *y, const uint32_t *mk,
                                   uint32_t g, uint32_t n) {
    uint32_t rows[2] = {0, 0}, cols[2] = {0, 0}, oy, ox;
    if (n == 4 && l->k == 3) {
        nce_dw3_inside(l, l->h, l->ho, rows);
        nce_dw3_inside(l, l->w, l->wo, cols);
    }
    for (oy = 0; oy < l->ho; oy++) {
        if (oy < rows[0] || oy >= rows[1] || cols[0] == cols[1]) {
            for (ox = 0; ox < l->wo; ox++) {
                nce_dw_swar_px(l, x, res, y, mk, g, n, oy, ox);
            }
            continue;
        }
        for (ox = 0; ox < cols[0]; ox++) {
            nce_dw_swar_px(l, x, res, y, mk, g, n, oy, ox);
        }
        nce_dw3_swar_run(l, x, res, y, mk, g, oy, cols);
        for (ox = cols[1]; ox < l->wo; ox++) {
            nce_dw_swar_px(l, x, res, y, mk, g, n, oy, ox);
        }
    }
}

/* Scratch: one group's masks, 8 k^2 bytes. */
static void nce_conv_dw_swar(const nce_conv_t *l, const uint8_t *x, const uint8_t *res, uint8_t *y, void *scratch) {
    uint32_t g, o, p;
    for (g = 0; g < l->c_in; g += 4) {
        uint32_t n = l->c_in - g < 4 ? l->c_in - g : 4;
        nce_dw_swar_masks(l, g, n, (uint8_t *)scratch);
        if (res == NULL) { /* the usual case: the epilogue without its shortcut term */
            nce_conv_dw_swar_group(l, x, NULL, y, (const uint32_t *)scratch, g, n);
        } else {
            nce_conv_dw_swar_group(l, x, res, y, (const uint32_t *)scratch, g, n);
        }
    }
    for (p = 0; p < l->ho * l->wo && l->c_out > l->c_conv; p++) {
        const uint8_t *sc = nce_shortcut_px(l, res, p / l->wo, p % l->wo);
        for (o = l->c_conv; o < l->c_out; o++) {
            y[p * l->c_out + o] = nce_epilogue_px(l, sc, o, 0);
        }
    }
}

/* 2-bit x 2-bit dot products by SWAR multiplication: with four codes in the bytes of a word X
 * and four weights u in the bytes of a word T, byte 3 of X * T (mod 2^32) is
 * X0 T3 + X1 T2 + X2 T1 + X3 T0. Products are at most 3 * 3 = 9, so after one MUL and three
 * MLAs byte 3 holds at most 16 * 9 = 144 and the bytes below it at most 108: no carry reaches
 * byte 3 and none leaves it, and one MUL or MLA does four MACs. Needs every input code <= 3.
 *
 * The exporter packs dense 2-bit weights in this loop's order (nce_runtime.h): for a packed
 * word w, T_j = (w >> 2j) & 0x03030303 holds the weights of codes 4j+3, 4j+2, 4j+1, 4j in bytes
 * 0..3, so its partner X_j is the input's own word j of the 16-code group (codes 4j..4j+3 in
 * bytes 0..3 of a little-endian word): the receptive field is used as gathered.
 *
 * Output pixels go in blocks of four: their receptive fields are interleaved per word (the
 * four X words of pixel q for packed word i at uint32 16 i + 4 q), so that each weight word is
 * loaded and masked once for four pixels. Per channel the kernel returns the four sums packed
 * in two words (pixel 0 | pixel 1 << 16, pixel 2 | pixel 3 << 16): at most 144 per packed word,
 * so up to NCE_SWAR_MAX_WORDS words per channel. */
#define NCE_SWAR_MAX_WORDS 455u

#if defined(__GNUC__) && defined(__thumb2__) && defined(__ARM_FEATURE_DSP) && !defined(__ARM_BIG_ENDIAN)
/* ARMv7E-M (Cortex-M4/M7): 32 instructions per packed word and four pixels (64 MACs). Registers:
 * r0 weights, r1 block, r2..r5 T_0..T_3, r6 the mask, r8..r11 one pixel's X_0..X_3, r7/r8 two
 * pixels' byte-3 sums, folded into halfword lanes by PKHTB (byte 3 of each into one word) and
 * UXTAB16 (bytes 3 and 1 of it into the lanes of r12 and lr). Stack: block, block end, sums,
 * weights end. Needs words >= 1 and channels >= 1. */
void nce_swar4_thumb2(const uint32_t *w, const uint32_t *blk, uint32_t words, uint32_t channels, uint32_t *sums);
__asm__(".pushsection .text.nce_swar4_thumb2,\"ax\",%progbits\n"
        "  .syntax unified\n"
        "  .thumb\n"
        "  .p2align 2\n"
        "  .global nce_swar4_thumb2\n"
        "  .type nce_swar4_thumb2, %function\n"
        "  .thumb_func\n"
        "nce_swar4_thumb2:\n"
        "  push {r4-r11, lr}\n"
        "  sub sp, sp, #16\n"
        "  ldr r7, [sp, #52]\n"
        "  str r1, [sp, #0]\n"
        "  add r4, r1, r2, lsl #6\n"
        "  str r4, [sp, #4]\n"
        "  str r7, [sp, #8]\n"
        "  mul r5, r2, r3\n"
        "  add r5, r0, r5, lsl #2\n"
        "  str r5, [sp, #12]\n"
        "  mov r6, #0x03030303\n"
        "1:\n"
        "  ldr r1, [sp, #0]\n"
        "  mov r12, #0\n"
        "  mov lr, #0\n"
        "2:\n"
        "  ldr r2, [r0], #4\n"
        "  and r3, r6, r2, lsr #2\n"
        "  and r4, r6, r2, lsr #4\n"
        "  and r5, r6, r2, lsr #6\n"
        "  and r2, r2, r6\n"
        "  ldmia r1!, {r8-r11}\n"
        "  mul r7, r8, r2\n"
        "  mla r7, r9, r3, r7\n"
        "  mla r7, r10, r4, r7\n"
        "  mla r7, r11, r5, r7\n"
        "  ldmia r1!, {r8-r11}\n"
        "  mul r8, r8, r2\n"
        "  mla r8, r9, r3, r8\n"
        "  mla r8, r10, r4, r8\n"
        "  mla r8, r11, r5, r8\n"
        "  pkhtb r7, r7, r8, asr #16\n"
        "  uxtab16 r12, r12, r7, ror #24\n"
        "  ldmia r1!, {r8-r11}\n"
        "  mul r7, r8, r2\n"
        "  mla r7, r9, r3, r7\n"
        "  mla r7, r10, r4, r7\n"
        "  mla r7, r11, r5, r7\n"
        "  ldmia r1!, {r8-r11}\n"
        "  mul r8, r8, r2\n"
        "  mla r8, r9, r3, r8\n"
        "  mla r8, r10, r4, r8\n"
        "  mla r8, r11, r5, r8\n"
        "  pkhtb r7, r7, r8, asr #16\n"
        "  uxtab16 lr, lr, r7, ror #24\n"
        "  ldr r7, [sp, #4]\n"
        "  cmp r1, r7\n"
        "  bne 2b\n"
        "  ldr r7, [sp, #8]\n"
        "  strd r12, lr, [r7], #8\n"
        "  str r7, [sp, #8]\n"
        "  ldr r7, [sp, #12]\n"
        "  cmp r0, r7\n"
        "  bne 1b\n"
        "  add sp, sp, #16\n"
        "  pop {r4-r11, pc}\n"
        "  .size nce_swar4_thumb2, .-nce_swar4_thumb2\n"
        "  .popsection\n");
#define nce_swar4 nce_swar4_thumb2
#else
/* The same kernel in C (other targets). */
static void nce_swar4(const uint32_t *w, const uint32_t *blk, uint32_t words, uint32_t channels, uint32_t *sums) {
    const uint32_t m = 0x03030303u;
    uint32_t o, wd, q;
    for (o = 0; o < channels; o++, sums += 2) {
        uint32_t a[4] = {0, 0, 0, 0};
        const uint32_t *xp = blk;
        for (wd = 0; wd < words; wd++, w++) {
            uint32_t t0 = *w & m, t1 = (*w >> 2) & m, t2 = (*w >> 4) & m, t3 = (*w >> 6) & m;
            for (q = 0; q < 4; q++, xp += 4) {
                a[q] += (xp[0] * t0 + xp[1] * t1 + xp[2] * t2 + xp[3] * t3) >> 24;
            }
        }
        sums[0] = a[0] | a[1] << 16;
        sums[1] = a[2] | a[3] << 16;
    }
}
#endif

/* Byte lanes (each at most 255) to halfword lanes. */
static uint32_t nce_lanes16(uint32_t s) {
    return (s & 0x00ff00ffu) + ((s >> 8) & 0x00ff00ffu);
}

/* The code sum of n words of codes <= 3. */
static uint32_t nce_code_sum(const uint32_t *p, uint32_t n) {
    uint32_t h = 0, i = 0;
    while (i < n) {
        uint32_t s = 0, end = n - i > 85 ? i + 85 : n; /* 85 * 3 = 255 per byte lane */
        for (; i < end; i++) {
            s += p[i];
        }
        h += nce_lanes16(s);
    }
    return (h & 0xffffu) + (h >> 16);
}

/* The receptive field of output pixel (oy, ox) as whole words, for a word-aligned input whose
 * channels come in multiples of 4 (zero-padded to words * 4). */
static void nce_patch_words(const nce_conv_t *l, const uint32_t *x, uint32_t oy, uint32_t ox, uint32_t *p) {
    uint32_t ky, kx, c, n = l->c_in / 4, i = 0;
    for (ky = 0; ky < l->k; ky++) {
        int32_t iy = nce_tap(oy, ky, l->stride, l->pad, l->h);
        for (kx = 0; kx < l->k; kx++) {
            int32_t ix = nce_tap(ox, kx, l->stride, l->pad, l->w);
            if (iy < 0 || ix < 0) {
                for (c = 0; c < n; c++) {
                    p[i++] = 0;
                }
            } else {
                const uint32_t *px = x + ((uint32_t)iy * l->w + (uint32_t)ix) * n;
                for (c = 0; c < n; c++) {
                    p[i++] = px[c];
                }
            }
        }
    }
    for (; i < l->words * 4; i++) {
        p[i] = 0;
    }
}

/* Sixteen codes: copied as one object (LDM/STM on a Cortex-M). */
typedef struct {
    uint32_t w[4];
} nce_group_t;

/* nce_patch_words straight into pixel q's place in the block (dst = block + 4 q), for inputs
 * whose channels come in multiples of 16 with at most 21 groups of 16 codes per row of taps
 * (the byte lanes of a row's sum hold 12 per group); returns the code sum. The descriptor's
 * fields are read once (the stores could alias them). */
static uint32_t nce_gather_block(const nce_conv_t *l, const uint32_t *x, uint32_t oy, uint32_t ox, uint32_t *dst) {
    const uint32_t k = l->k, h = l->h, w = l->w, n = l->c_in / 16;
    const int32_t iy0 = (int32_t)(oy * l->stride) - (int32_t)l->pad, ix0 = (int32_t)(ox * l->stride) - (int32_t)l->pad;
    const nce_group_t zero = {{0, 0, 0, 0}};
    uint32_t ky, kx, g, sum = 0;
    for (ky = 0; ky < k; ky++) {
        const uint32_t iy = (uint32_t)(iy0 + (int32_t)ky); /* negative coordinates wrap above h, w */
        const nce_group_t *row = (const nce_group_t *)(const void *)x + (iy < h ? iy : 0u) * w * n;
        uint32_t s = 0;
        for (kx = 0; kx < k; kx++) {
            const uint32_t ix = (uint32_t)(ix0 + (int32_t)kx);
            if (iy >= h || ix >= w) {
                for (g = 0; g < n; g++, dst += 16) {
                    *(nce_group_t *)(void *)dst = zero;
                }
            } else {
                const nce_group_t *px = row + ix * n;
                for (g = 0; g < n; g++, dst += 16) {
                    const nce_group_t v = px[g];
                    *(nce_group_t *)(void *)dst = v;
                    s += v.w[0] + v.w[1] + v.w[2] + v.w[3];
                }
            }
        }
        sum += nce_lanes16(s);
    }
    return (sum & 0xffffu) + (sum >> 16);
}

/* One pixel's words (p, words * 4 of them) into its place in the block. */
static void nce_interleave(const uint32_t *p, uint32_t words, uint32_t *dst) {
    uint32_t i;
    for (i = 0; i < words; i++, p += 4, dst += 16) {
        dst[0] = p[0];
        dst[1] = p[1];
        dst[2] = p[2];
        dst[3] = p[3];
    }
}

/* Channels [o0, o1) of one output pixel from its packed sums (lane `half` of each channel's
 * word; sx3 = 3 * its code sum), all with a conv term, by qmax == 3 ladders: t is channel o0's
 * ladder for shortcut code 0, sc the pixel's shortcut codes (NULL: code 0), tsc the ints per
 * shortcut code. Everything is read into locals first (the byte stores could alias it). */
static void nce_rung3_px(const int16_t *t, uint32_t tsc, const uint32_t *sums, uint32_t half, int32_t sx3, const uint8_t *sc,
                         uint32_t n, uint8_t *out) {
    uint32_t o;
    if (sc == NULL) {
        for (o = 0; o < n; o++, t += 4, sums += 2) {
            out[o] = nce_rung3(t, 2 * (int32_t)((*sums >> half) & 0xffffu) - sx3);
        }
    } else {
        for (o = 0; o < n; o++, t += 4, sums += 2) {
            out[o] = nce_rung3(t + sc[o] * tsc, 2 * (int32_t)((*sums >> half) & 0xffffu) - sx3);
        }
    }
}

/* The ladder of a 2-bit output: a = acc ^ mask against thresholds t1 <= t2 <= t3. */
static inline uint8_t nce_climb3(uint32_t a, uint32_t t1, uint32_t t2, uint32_t t3) {
    return (uint8_t)(3u - (((a - t1) >> 31) + ((a - t2) >> 31) + ((a - t3) >> 31)));
}

/* Channels [0, n) of a full block's four pixels (all with a conv term, out: pixel 0's codes,
 * c_out apart) by qmax == 3 ladders t: the usual case, without a shortcut. One ladder serves
 * four pixels. */
static void nce_rung3_block(const int16_t *t, const uint32_t *sums, const int32_t sx3[4], uint32_t n, uint8_t *out, uint32_t c_out) {
    const int32_t s0 = sx3[0], s1 = sx3[1], s2 = sx3[2], s3 = sx3[3];
    uint8_t *end = out + n;
    for (; out < end; t += 4, sums += 2, out++) {
        const uint32_t a01 = sums[0], a23 = sums[1], m = (uint32_t)t[0], t1 = (uint32_t)t[1], t2 = (uint32_t)t[2], t3 = (uint32_t)t[3];
        out[0] = nce_climb3((uint32_t)(2 * (int32_t)(a01 & 0xffffu) - s0) ^ m, t1, t2, t3);
        out[c_out] = nce_climb3((uint32_t)(2 * (int32_t)(a01 >> 16) - s1) ^ m, t1, t2, t3);
        out[2 * c_out] = nce_climb3((uint32_t)(2 * (int32_t)(a23 & 0xffffu) - s2) ^ m, t1, t2, t3);
        out[3 * c_out] = nce_climb3((uint32_t)(2 * (int32_t)(a23 >> 16) - s3) ^ m, t1, t2, t3);
    }
}

/* nce_epilogue_px over channels [0, c_conv) of one output pixel from its packed sums (lane
 * `half` of each channel's word; sx3 = 3 * its code sum), the descriptor read once: one or two
 * 32x32->64 multiply-accumulates per code, then the clamp's bounds as 64-bit compares. */
static void nce_requant_px(const nce_conv_t *l, const uint32_t *sums, uint32_t half, int32_t sx3, const uint8_t *sc, uint8_t *out) {
    const int32_t *m = l->m, *b = l->b, r = l->r;
    const uint32_t shift = l->shift, qmax = l->qmax, c_conv = l->c_conv;
    const uint32_t with_sc = sc == NULL ? 0 : (l->res_c < c_conv ? l->res_c : c_conv);
    const int64_t rnd = (int64_t)((1u << shift) >> 1), top = (int64_t)qmax << shift;
    uint32_t o;
    for (o = 0; o < c_conv; o++, sums += 2) {
        int64_t v = rnd + b[o] + (int64_t)(2 * (int32_t)((*sums >> half) & 0xffffu) - sx3) * m[o];
        if (o < with_sc) {
            v += (int64_t)sc[o] * r;
        }
        if (v < 0) {
            out[o] = 0;
        } else if (v >= top) {
            out[o] = (uint8_t)qmax;
        } else {
            uint64_t u = (uint64_t)v;
            out[o] = (uint8_t)(((uint32_t)u >> shift) | (((uint32_t)(u >> 32) << 1) << (31 - shift)));
        }
    }
}

/* nce_rung3_block with a shortcut: channels [0, n) all have a shortcut code, pixel q's at
 * sc[q][o], which picks the ladder t + code * tsc. */
static void nce_rung3_block_sc(const int16_t *t, uint32_t tsc, const uint32_t *sums, const int32_t sx3[4], const uint8_t *const sc[4],
                               uint32_t n, uint8_t *out, uint32_t c_out) {
    const int32_t s0 = sx3[0], s1 = sx3[1], s2 = sx3[2], s3 = sx3[3];
    const uint8_t *c0 = sc[0], *c1 = sc[1], *c2 = sc[2], *c3 = sc[3];
    uint32_t o;
    for (o = 0; o < n; o++, t += 4, sums += 2, out++) {
        const uint32_t a01 = sums[0], a23 = sums[1];
        out[0] = nce_rung3(t + c0[o] * tsc, 2 * (int32_t)(a01 & 0xffffu) - s0);
        out[c_out] = nce_rung3(t + c1[o] * tsc, 2 * (int32_t)(a01 >> 16) - s1);
        out[2 * c_out] = nce_rung3(t + c2[o] * tsc, 2 * (int32_t)(a23 & 0xffffu) - s2);
        out[3 * c_out] = nce_rung3(t + c3[o] * tsc, 2 * (int32_t)(a23 >> 16) - s3);
    }
}

/* The codes of one output pixel from its packed sums (lane `half` of every channel's word, sx3 =
 * 3 * its code sum): the threshold ladders where the exporter wrote them, else nce_epilogue_px. */
static void nce_swar_px_out(const nce_conv_t *l, const uint32_t *sums, uint32_t half, int32_t sx3, const uint8_t *sc, uint8_t *out) {
    const uint32_t c_conv = l->c_conv, c_out = l->c_out, e = l->qmax + 1;
    const int16_t *t = l->thr;
    uint32_t o;
    if (t != NULL && e == 4) { /* 2-bit outputs: channels with a shortcut code, then without */
        uint32_t with_sc = sc == NULL ? 0 : (l->res_c < c_conv ? l->res_c : c_conv);
        nce_rung3_px(t, 4 * c_out, sums, half, sx3, sc, with_sc, out);
        nce_rung3_px(t + 4 * with_sc, 0, sums + 2 * with_sc, half, sx3, NULL, c_conv - with_sc, out + with_sc);
    } else if (t != NULL) {
        for (o = 0; o < c_conv; o++, t += e, sums += 2) {
            uint32_t code = sc != NULL && o < l->res_c ? sc[o] : 0u;
            out[o] = nce_rungs(t + code * c_out * e, e - 1, 2 * (int32_t)((*sums >> half) & 0xffffu) - sx3);
        }
    } else {
        nce_requant_px(l, sums, half, sx3, sc, out);
    }
    for (o = c_conv; o < c_out; o++) {
        out[o] = nce_out_code(l, sc, o, 0);
    }
}

/* Scratch: the block (words * 64 bytes), one pixel's receptive field (words * 16 bytes) and
 * the packed sums (8 bytes per channel). */
static void nce_conv_w2_swar(const nce_conv_t *l, const uint8_t *x, const uint8_t *res, uint8_t *y, void *scratch) {
    const uint32_t *x32 = (const uint32_t *)(const void *)x;
    uint32_t *blk = (uint32_t *)scratch, *lin = blk + l->words * 16, *sums = lin + l->words * 4;
    uint32_t npx = l->ho * l->wo, p0, q;
    int aligned = ((uintptr_t)x & 3u) == 0 && l->c_in % 4 == 0;
    int direct = aligned && l->c_in % 16 == 0 && l->k * (l->c_in / 16) <= 21;
    for (p0 = 0; p0 < npx; p0 += 4) {
        uint32_t n = npx - p0 < 4 ? npx - p0 : 4;
        int32_t sx3[4];
        for (q = 0; q < 4; q++) { /* a short last block repeats its last pixel */
            uint32_t p = p0 + (q < n ? q : n - 1), oy = p / l->wo, ox = p % l->wo, sum;
            if (direct) {
                sum = nce_gather_block(l, x32, oy, ox, blk + 4 * q);
            } else {
                if (aligned) {
                    nce_patch_words(l, x32, oy, ox, lin);
                    sum = nce_code_sum(lin, l->words * 4);
                } else {
                    sum = nce_patch(l, x, oy, ox, (uint8_t *)lin);
                }
                nce_interleave(lin, l->words, blk + 4 * q);
            }
            sx3[q] = 3 * (int32_t)sum;
        }
        nce_swar4((const uint32_t *)l->weights, blk, l->words, l->c_conv, sums);
        if (n == 4 && l->thr != NULL && l->qmax == 3 && l->c_conv == l->c_out) { /* full blocks, 2-bit outputs */
            const uint32_t c = l->c_out, with_sc = res == NULL ? 0 : (l->res_c < c ? l->res_c : c);
            uint8_t *out = y + p0 * c;
            if (with_sc > 0) {
                const uint8_t *sc[4];
                for (q = 0; q < 4; q++) {
                    sc[q] = nce_shortcut_px(l, res, (p0 + q) / l->wo, (p0 + q) % l->wo);
                }
                nce_rung3_block_sc(l->thr, 4 * c, sums, sx3, sc, with_sc, out, c);
            }
            nce_rung3_block(l->thr + 4 * with_sc, sums + 2 * with_sc, sx3, c - with_sc, out + with_sc, c);
            continue;
        }
        for (q = 0; q < n; q++) {
            uint32_t p = p0 + q;
            const uint8_t *sc = nce_shortcut_px(l, res, p / l->wo, p % l->wo);
            nce_swar_px_out(l, sums + (q >> 1), 16 * (q & 1), sx3[q], sc, y + p * l->c_out);
        }
    }
}

/* The SWAR dense path reads the input's words as codes 4j..4j+3 in bytes 0..3. */
static int nce_little_endian(void) {
    const uint32_t one = 1;
    uint8_t b;
    memcpy(&b, &one, 1);
    return b == 1;
}

/* Every code of the conv's input is <= 3 (2-bit activations), as the SWAR path needs; an
 * 8-bit input (a 2-bit first conv on the image) takes the scalar reference. */
static int nce_codes_fit_2bit(const uint8_t *x, uint32_t n) {
    uint32_t i = 0, any = 0;
    if (((uintptr_t)x & 3u) == 0) { /* arena tensors: whole words */
        const uint32_t *w = (const uint32_t *)(const void *)x;
        for (; i + 4 <= n; i += 4) {
            any |= w[i / 4];
        }
    }
    for (; i < n; i++) {
        any |= x[i];
    }
    return (any & 0xfcfcfcfcu) == 0;
}
#endif

#if defined(NCE_SIMD_SWAR) || defined(NCE_SIMD_NEON)
/* sum_i p[i] * w[i] over n codes and int8 weights. With the DSP extension the codes come as
 * pairs[2j] = (p[4j], p[4j+2]) and pairs[2j+1] = (p[4j+1], p[4j+3]) in 16-bit lanes (UXTB16),
 * the weights as SXTB16 of each (unaligned) word and its rotation by 8: two SMLADs per four. */
static int32_t nce_dot8(const uint8_t *p, const uint32_t *pairs, const int8_t *w, uint32_t n) {
    int32_t acc = 0;
    uint32_t i = 0;
#if defined(NCE_SIMD_DSP)
    for (; i + 4 <= n; i += 4, pairs += 2) {
        uint32_t v;
        memcpy(&v, w + i, sizeof v);
        acc = __smlad((int16x2_t)pairs[0], __sxtb16((int8x4_t)v), acc);
        acc = __smlad((int16x2_t)pairs[1], __sxtb16((int8x4_t)((v >> 8) | (v << 24))), acc);
    }
#else
    (void)pairs;
#endif
    for (; i < n; i++) {
        acc += (int32_t)p[i] * w[i];
    }
    return acc;
}

/* An 8-bit-weight conv (the first layer): its receptive field once per output pixel (after it,
 * in scratch, the DSP path's 16-bit pairs), then one int8 row per output channel in the same
 * (ky, kx, c_in) order; requantised by threshold ladders where the exporter wrote them. */
static void nce_conv_w8_patch(const nce_conv_t *l, const uint8_t *x, const uint8_t *res, uint8_t *y, void *scratch) {
    const uint8_t *patch = (const uint8_t *)scratch;
    const int8_t *wts = (const int8_t *)l->weights;
    const uint32_t n = l->k * l->k * l->c_in, c_conv = l->c_conv, c_out = l->c_out;
    uint32_t *pairs = (uint32_t *)scratch + (n + 3) / 4;
    uint32_t oy, ox, o;
    for (oy = 0; oy < l->ho; oy++) {
        for (ox = 0; ox < l->wo; ox++) {
            uint8_t *out = y + (oy * l->wo + ox) * c_out;
            const uint8_t *sc = nce_shortcut_px(l, res, oy, ox);
            (void)nce_patch(l, x, oy, ox, (uint8_t *)scratch);
#if defined(NCE_SIMD_DSP)
            for (o = 0; o + 4 <= n; o += 4) {
                uint32_t v;
                memcpy(&v, patch + o, sizeof v);
                pairs[o / 2] = __uxtb16(v);
                pairs[o / 2 + 1] = __uxtb16((v >> 8) | (v << 24));
            }
#endif
#if defined(NCE_SIMD_SWAR)
            if (l->thr != NULL && l->qmax == 3 && sc == NULL) {
                for (o = 0; o < c_conv; o++) {
                    out[o] = nce_rung3(l->thr + 4 * o, nce_dot8(patch, pairs, wts + o * n, n));
                }
            } else {
                for (o = 0; o < c_conv; o++) {
                    out[o] = nce_out_code(l, sc, o, nce_dot8(patch, pairs, wts + o * n, n));
                }
            }
            for (o = c_conv; o < c_out; o++) {
                out[o] = nce_out_code(l, sc, o, 0);
            }
#else
            for (o = 0; o < c_out; o++) {
                out[o] = nce_epilogue_px(l, sc, o, o < c_conv ? nce_dot8(patch, pairs, wts + o * n, n) : 0);
            }
#endif
        }
    }
}
#endif

#if defined(NCE_SIMD_NEON)
/* Depthwise 2-bit convs, sixteen channels per vector, channel groups outermost: u = (c + 3) / 2
 * of one group as one byte per tap and channel in scratch (k^2 rows of 16, padding 0), then per
 * tap one widening multiply-accumulate of u and the codes and one widening add of the codes, in
 * 16-bit lanes (at most 765 k^2 and 255 k^2: exact for k <= 9). */
static void nce_conv_dw_neon(const nce_conv_t *l, const uint8_t *x, const uint8_t *res, uint8_t *y, void *scratch) {
    uint8_t *u = (uint8_t *)scratch;
    uint32_t kk = l->k * l->k, oy, ox, g, j, o, t, ky, kx, win[4];
    int32_t org[2];
    for (g = 0; g < l->c_in; g += 16) {
        uint32_t n = l->c_in - g < 16 ? l->c_in - g : 16;
        for (t = 0; t < kk; t++) {
            for (j = 0; j < 16; j++) {
                u[t * 16 + j] = (uint8_t)(j < n ? nce_dw_u(l, g + j, t) : 0u);
            }
        }
        for (oy = 0; oy < l->ho; oy++) {
            org[0] = nce_tap_range(l, oy, l->h, &win[0], &win[1]);
            for (ox = 0; ox < l->wo; ox++) {
                uint8_t *out = y + (oy * l->wo + ox) * l->c_out;
                const uint8_t *sc = nce_shortcut_px(l, res, oy, ox);
                uint16x8_t a0 = vdupq_n_u16(0), a1 = a0, s0 = a0, s1 = a0;
                uint16_t ua[16], sa[16];
                org[1] = nce_tap_range(l, ox, l->w, &win[2], &win[3]);
                for (ky = win[0]; ky < win[1]; ky++) {
                    for (kx = win[2]; kx < win[3]; kx++) {
                        const uint8_t *px = nce_dw_px(l, x, org[0], org[1], ky, kx) + g;
                        uint8x16_t uv = vld1q_u8(u + (ky * l->k + kx) * 16), xv;
                        if (n == 16) {
                            xv = vld1q_u8(px);
                        } else {
                            uint8_t tmp[16] = {0};
                            memcpy(tmp, px, n);
                            xv = vld1q_u8(tmp);
                        }
                        a0 = vmlal_u8(a0, vget_low_u8(xv), vget_low_u8(uv));
                        a1 = vmlal_high_u8(a1, xv, uv);
                        s0 = vaddw_u8(s0, vget_low_u8(xv));
                        s1 = vaddw_high_u8(s1, xv);
                    }
                }
                vst1q_u16(ua, a0);
                vst1q_u16(ua + 8, a1);
                vst1q_u16(sa, s0);
                vst1q_u16(sa + 8, s1);
                for (j = 0; j < n; j++) {
                    out[g + j] = nce_epilogue_px(l, sc, g + j, nce_from_u(ua[j], sa[j]));
                }
            }
        }
    }
    for (oy = 0; oy < l->ho * l->wo && l->c_out > l->c_conv; oy++) {
        const uint8_t *sc = nce_shortcut_px(l, res, oy / l->wo, oy % l->wo);
        for (o = l->c_conv; o < l->c_out; o++) {
            y[oy * l->c_out + o] = nce_epilogue_px(l, sc, o, 0);
        }
    }
}

static void nce_conv_w2_neon(const nce_conv_t *l, const uint8_t *x, const uint8_t *res, uint8_t *y, void *scratch) {
    /* Code r of a packed word sits in byte 3 - r % 4, bits 2 (r / 4) (the SWAR order). */
    static const uint8_t lane_byte[16] = {3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0};
    static const int8_t lane_shift[16] = {0, 0, 0, 0, -2, -2, -2, -2, -4, -4, -4, -4, -6, -6, -6, -6};
    uint8_t *patch = (uint8_t *)scratch;
    const uint32_t *wts = (const uint32_t *)l->weights;
    const uint8x16_t idx = vld1q_u8(lane_byte);
    const int8x16_t shifts = vld1q_s8(lane_shift);
    const uint8x16_t three = vdupq_n_u8(3);
    uint32_t oy, ox, o, wd;
    for (oy = 0; oy < l->ho; oy++) {
        for (ox = 0; ox < l->wo; ox++) {
            uint8_t *out = y + (oy * l->wo + ox) * l->c_out;
            const uint8_t *sc = nce_shortcut_px(l, res, oy, ox);
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
                out[o] = nce_epilogue_px(l, sc, o, acc);
            }
        }
    }
}
#endif

void nce_conv(const nce_conv_t *l, const uint8_t *x, const uint8_t *res, uint8_t *y, void *scratch) {
    if (nce_groups(l) > 1) {
#if defined(NCE_SIMD_SWAR)
        if (nce_is_depthwise(l) && !l->w8 && l->k <= 5 && nce_codes_fit_2bit(x, l->h * l->w * l->c_in)) {
            nce_conv_dw_swar(l, x, res, y, scratch);
            return;
        }
#elif defined(NCE_SIMD_NEON)
        if (nce_is_depthwise(l) && !l->w8 && l->k <= 9) {
            nce_conv_dw_neon(l, x, res, y, scratch);
            return;
        }
#endif
        /* Other grouped convs (and depthwise ones the fast paths cannot take): the reference. */
        (void)scratch;
        nce_conv_ref(l, x, res, y);
        return;
    }
#if defined(NCE_SIMD_SWAR)
    if (!l->w8 && nce_little_endian() && l->c_conv > 0 && l->words <= NCE_SWAR_MAX_WORDS &&
        nce_codes_fit_2bit(x, l->h * l->w * l->c_in)) {
        nce_conv_w2_swar(l, x, res, y, scratch);
        return;
    }
#elif defined(NCE_SIMD_NEON)
    if (!l->w8) {
        nce_conv_w2_neon(l, x, res, y, scratch);
        return;
    }
#endif
#if defined(NCE_SIMD_SWAR) || defined(NCE_SIMD_NEON)
    if (l->w8) {
        nce_conv_w8_patch(l, x, res, y, scratch);
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

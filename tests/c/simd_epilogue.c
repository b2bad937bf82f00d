/* The SIMD paths' epilogue (nce_epilogue_px: requantisation on the sum's 32-bit halves, the
 * shortcut's address once per pixel) against the reference nce_epilogue (int64, floor shift)
 * on every shift and the extremes of every operand, with and without a shortcut and for a
 * channel past the conv's, then on random operands. Built and run by tests/c_runtime.rs;
 * exit status 1 on any difference. */
#include <stdio.h>
#include "nce_runtime.c"

static uint32_t rng = 2463534242u;
static uint32_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static long bad = 0, checked = 0;

/* Both channels of a 1-pixel layer, once with channel 1 shortcut-only (c_conv 1, res_c 2) and
 * once conv-only (c_conv 2, res_c 1), each with and without the shortcut tensor. */
static void check(int32_t acc, int32_t m, int32_t b, uint8_t q_sc, int32_t r, uint32_t shift, uint32_t qmax) {
    const uint8_t res[2] = {q_sc, (uint8_t)(255 - q_sc)};
    const int32_t ms[2] = {m, -m / 2}, bs[2] = {b, b / 3};
    nce_conv_t l = {0};
    uint32_t o, with_res, layout;
    l.c_out = 2;
    l.m = ms;
    l.b = bs;
    l.shift = shift;
    l.qmax = qmax;
    l.res_w = 1;
    l.res_stride = 1;
    l.r = r;
    for (layout = 0; layout < 2; layout++) {
        l.c_conv = layout ? 2 : 1;
        l.res_c = layout ? 1 : 2;
        for (with_res = 0; with_res < 2; with_res++) {
            const uint8_t *rp = with_res ? res : NULL;
            for (o = 0; o < 2; o++) {
                uint8_t want = nce_epilogue(&l, rp, 0, 0, o, acc);
                uint8_t got = nce_epilogue_px(&l, nce_shortcut_px(&l, rp, 0, 0), o, acc);
                checked++;
                if (want != got && bad++ < 10) {
                    printf("acc %ld m %ld b %ld q_sc %u r %ld shift %lu qmax %lu o %lu c_conv %lu res_c %lu res %lu: %u, fast %u\n",
                           (long)acc, (long)m, (long)b, q_sc, (long)r, (unsigned long)shift, (unsigned long)qmax,
                           (unsigned long)o, (unsigned long)l.c_conv, (unsigned long)l.res_c, (unsigned long)with_res, want, got);
                }
            }
        }
    }
}

int main(void) {
    static const int32_t edge[] = {INT32_MIN, INT32_MIN + 1, -65536, -256, -3, -1, 0, 1, 2, 3, 255, 256, 65535, 1 << 29, INT32_MAX - 1, INT32_MAX};
    static const uint32_t qmaxes[] = {1, 3, 15, 255};
    static const uint8_t codes[] = {0, 1, 3, 128, 255};
    const unsigned n = sizeof edge / sizeof edge[0];
    uint32_t shift, i, j, k, qi, ci;
    long t;
    for (shift = 0; shift <= 30; shift++)
        for (i = 0; i < n; i++)
            for (j = 0; j < n; j++)
                for (k = 0; k < n; k++)
                    for (qi = 0; qi < 4; qi++)
                        for (ci = 0; ci < 5; ci++) {
                            check(edge[i], edge[j], edge[k], codes[ci], edge[(i + j + k) % n], shift, qmaxes[qi]);
                        }
    for (t = 0; t < 500000; t++) {
        /* Operands of every magnitude: a random value shifted right by a random amount. */
        int32_t acc = (int32_t)next() >> (next() % 32), m = (int32_t)next() >> (next() % 32);
        int32_t b = (int32_t)next() >> (next() % 32), r = (int32_t)next() >> (next() % 32);
        check(acc, m, b, (uint8_t)next(), r, next() % 31, qmaxes[next() % 4]);
    }
    printf("%ld of %ld differ\n", bad, checked);
    return bad != 0;
}

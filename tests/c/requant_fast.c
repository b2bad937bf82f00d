/* nce_requant_fast (the SIMD paths' requantisation, in 32-bit halves) against nce_requant (the
 * reference, in int64 with a floor shift) on every shift and the extremes of every operand, then
 * on random operands. Built and run by tests/c_runtime.rs; exit status 1 on any difference. */
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
static void check(int32_t acc, int32_t m, int32_t b, uint32_t q_sc, int32_t r, uint32_t shift, uint32_t qmax) {
    uint8_t want = nce_requant(acc, m, b, q_sc, r, shift, qmax);
    uint8_t got = nce_requant_fast(acc, m, b, q_sc, r, shift, qmax);
    checked++;
    if (want != got && bad++ < 10) {
        printf("acc %ld m %ld b %ld q_sc %lu r %ld shift %lu qmax %lu: %u, fast %u\n", (long)acc, (long)m, (long)b,
               (unsigned long)q_sc, (long)r, (unsigned long)shift, (unsigned long)qmax, want, got);
    }
}

int main(void) {
    static const int32_t edge[] = {INT32_MIN, INT32_MIN + 1, -65536, -256, -3, -1, 0, 1, 2, 3, 255, 256, 65535, 1 << 29, INT32_MAX - 1, INT32_MAX};
    static const uint32_t qmaxes[] = {1, 3, 15, 255};
    static const uint32_t codes[] = {0, 1, 3, 128, 255};
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
    for (t = 0; t < 2000000; t++) {
        /* Operands of every magnitude: a random value shifted right by a random amount. */
        int32_t acc = (int32_t)next() >> (next() % 32), m = (int32_t)next() >> (next() % 32);
        int32_t b = (int32_t)next() >> (next() % 32), r = (int32_t)next() >> (next() % 32);
        check(acc, m, b, next() % 256, r, next() % 31, qmaxes[next() % 4]);
    }
    printf("%ld of %ld differ\n", bad, checked);
    return bad != 0;
}

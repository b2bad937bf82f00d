/* Hosted test harness for the nce C package (Linux, macOS; also run under qemu-aarch64):
 *   nce_main IMAGES LOGITS [TRACE]
 * reads images (NCE_INPUT_BYTES each, C x H x W uint8, back to back) from IMAGES, writes
 * NCE_CLASSES int32 logits per image (native byte order) to LOGITS. Built with
 * -DNCE_HOOK_STEPS, it also writes every step's output to TRACE as records of five uint32
 * (image, step, layer, kind, count) followed by `count` int32 values. */
#include <stdio.h>
#include <stdlib.h>

#include "nce_model.h"
#include "nce_runtime.h"

#ifdef NCE_HOOK_STEPS
static FILE *trace_file;
static uint32_t trace_image;

void nce_hook(uint32_t step, int32_t layer, uint32_t kind, const void *data, uint32_t count) {
    uint32_t head[5];
    uint32_t i;
    if (trace_file == NULL) {
        return;
    }
    head[0] = trace_image;
    head[1] = step;
    head[2] = (uint32_t)layer;
    head[3] = kind;
    head[4] = count;
    fwrite(head, sizeof head, 1, trace_file);
    for (i = 0; i < count; i++) {
        int32_t v = (kind == NCE_HOOK_SUMS || kind == NCE_HOOK_LOGITS) ? ((const int32_t *)data)[i]
                                                                        : (int32_t)((const uint8_t *)data)[i];
        fwrite(&v, sizeof v, 1, trace_file);
    }
}
#endif

int main(int argc, char **argv) {
    static uint8_t image[NCE_INPUT_BYTES];
    int32_t logits[NCE_CLASSES];
    FILE *in, *out;
    unsigned long n = 0;
    if (argc < 3) {
        fprintf(stderr, "usage: %s IMAGES LOGITS [TRACE]  (nce model %s, kernels %s)\n", argv[0], NCE_MODEL_NAME, NCE_KERNELS);
        return 2;
    }
    in = fopen(argv[1], "rb");
    out = fopen(argv[2], "wb");
    if (in == NULL || out == NULL) {
        fprintf(stderr, "nce_main: cannot open %s or %s\n", argv[1], argv[2]);
        return 2;
    }
#ifdef NCE_HOOK_STEPS
    if (argc > 3 && (trace_file = fopen(argv[3], "wb")) == NULL) {
        fprintf(stderr, "nce_main: cannot open %s\n", argv[3]);
        return 2;
    }
#endif
    while (fread(image, 1, sizeof image, in) == sizeof image) {
        int rc = nce_run(image, logits);
        if (rc != NCE_OK) {
            fprintf(stderr, "nce_main: image %lu: nce_run returned %d\n", n, rc);
            return 1;
        }
        if (fwrite(logits, sizeof logits[0], NCE_CLASSES, out) != NCE_CLASSES) {
            fprintf(stderr, "nce_main: cannot write %s\n", argv[2]);
            return 1;
        }
        n++;
#ifdef NCE_HOOK_STEPS
        trace_image = (uint32_t)n;
#endif
    }
#ifdef NCE_HOOK_STEPS
    if (trace_file != NULL && fclose(trace_file) != 0) {
        return 1;
    }
#endif
    fclose(in);
    if (fclose(out) != 0) {
        fprintf(stderr, "nce_main: cannot write %s\n", argv[2]);
        return 1;
    }
    fprintf(stderr, "nce_main: %lu images (%s kernels)\n", n, NCE_KERNELS);
    return 0;
}

/* nce int8 peer: a plain int8 reference of the same network, for comparing costs only
 * (`nce measure --backend qemu-cortex-m7 --check MODEL --int8-peer`). Its ops follow
 * TensorFlow Lite Micro's reference kernels (tensorflow/lite/kernels/internal/reference/
 * integer_ops: conv.h, depthwise_conv.h, add.h, pooling.h, fully_connected.h): int8 NHWC
 * activations with a zero point, int8 OHWI weights (symmetric; depthwise: [k][k][c]), int32
 * accumulation, per-channel requantisation
 * with a Q31 multiplier and a shift (gemmlowp's SaturatingRoundingDoublingHighMul and
 * RoundingDivideByPOT). Residual adds are separate ops, as in a TFLite graph. The weights
 * are pseudo-random: the values do not match the 2-bit model, the work does.
 *
 * Build switches as nce_runtime.h: with the ARMv7E-M DSP extension (and without NCE_NO_SIMD)
 * convolutions use a CMSIS-NN-style path (the patches of two pixels as int16, SXTB16 on the
 * weights, SMLAD on 2 channels x 2 pixels per pass) and depthwise convs one in the style of
 * CMSIS-NN's arm_depthwise_conv_s8_opt (four channels per word, SXTB16, SMLABB/SMLATT);
 * NCE_NO_SIMD keeps the plain reference.
 * C99, no malloc, no floating point. */
#ifndef NCE_INT8_H
#define NCE_INT8_H

#include "nce_runtime.h"

/* A convolution; with groups > 1 output channel o reads the c_in / groups input channels of
 * its group, weights [c_out][k][k][c_in / groups]. A depthwise conv (nce_i8_dwconv) has TFLite's
 * DEPTHWISE_CONV_2D layout instead, [k][k][c] (channels innermost, multiplier 1). */
typedef struct {
    uint32_t c_in, h, w, ho, wo, c_out, groups, k, stride, pad;
    const int8_t *weights;              /* [c_out][k][k][c_in / groups], or [k][k][c] (depthwise) */
    const int32_t *bias, *mult, *shift; /* per output channel; shift > 0 is a left shift */
    int32_t in_offset, out_offset, act_min, act_max;
} nce_i8_conv_t;

/* out = in1 + in2 with both rescaled; in2 is read at (y * res_stride, x * res_stride) of a
 * res_w-wide tensor of res_c channels (an option-A shortcut), channels it lacks are zero. */
typedef struct {
    uint32_t h, w, c, c1, res_c, res_w, res_stride;
    int32_t in1_offset, in2_offset, out_offset, left_shift;
    int32_t in1_mult, in1_shift, in2_mult, in2_shift, out_mult, out_shift;
    int32_t act_min, act_max;
} nce_i8_add_t;

typedef struct {
    uint32_t c, h, w, ho, wo, k, stride, pad;
    int32_t act_min, act_max;
} nce_i8_pool_t;

typedef struct {
    uint32_t c_in, c_out;
    const int8_t *weights; /* [c_out][c_in] */
    const int32_t *bias;
    int32_t in_offset, out_offset, mult, shift, act_min, act_max;
} nce_i8_fc_t;

/* uint8 C x H x W pixels to int8 H x W x C (zero point -128). */
void nce_i8_input(const uint8_t *chw, int8_t *hwc, uint32_t c, uint32_t h, uint32_t w);
/* `scratch` holds NCE_SCRATCH_BYTES (only the DSP path uses it). */
void nce_i8_conv(const nce_i8_conv_t *l, const int8_t *x, int8_t *y, void *scratch);
void nce_i8_conv_ref(const nce_i8_conv_t *l, const int8_t *x, int8_t *y);
/* Depthwise (groups == c_in == c_out); `scratch` holds 4 c_in bytes (only the DSP path uses it). */
void nce_i8_dwconv(const nce_i8_conv_t *l, const int8_t *x, int8_t *y, void *scratch);
void nce_i8_dwconv_ref(const nce_i8_conv_t *l, const int8_t *x, int8_t *y);
void nce_i8_add(const nce_i8_add_t *l, const int8_t *in1, const int8_t *in2, int8_t *y);
void nce_i8_avgpool(const nce_i8_pool_t *p, const int8_t *x, int8_t *y);
void nce_i8_maxpool(const nce_i8_pool_t *p, const int8_t *x, int8_t *y);
void nce_i8_fc(const nce_i8_fc_t *l, const int8_t *x, int8_t *y);

#endif /* NCE_INT8_H */

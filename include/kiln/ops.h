/* kiln/ops.h - eager tensor operations: elementwise with broadcasting, reductions,
 * matrix products. Every op validates on the host, allocates its output from the pool
 * and enqueues work on the device without waiting for it. Inputs may be any views. */
#ifndef KILN_OPS_H
#define KILN_OPS_H

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- elementwise, NumPy/PyTorch broadcasting ---------------------------------------- */

KILN_API kiln_tensor *kiln_add(kiln_ctx *ctx, kiln_tensor *a, kiln_tensor *b);
KILN_API kiln_tensor *kiln_sub(kiln_ctx *ctx, kiln_tensor *a, kiln_tensor *b);
KILN_API kiln_tensor *kiln_mul(kiln_ctx *ctx, kiln_tensor *a, kiln_tensor *b);
KILN_API kiln_tensor *kiln_div(kiln_ctx *ctx, kiln_tensor *a, kiln_tensor *b);
KILN_API kiln_tensor *kiln_pow(kiln_ctx *ctx, kiln_tensor *a, kiln_tensor *b);
/* Elementwise min/max of two tensors; NaN propagates (torch.minimum/maximum). */
KILN_API kiln_tensor *kiln_minimum(kiln_ctx *ctx, kiln_tensor *a, kiln_tensor *b);
KILN_API kiln_tensor *kiln_maximum(kiln_ctx *ctx, kiln_tensor *a, kiln_tensor *b);

/* Comparisons give 1.0f where true and 0.0f where false (F32 masks). */
KILN_API kiln_tensor *kiln_eq(kiln_ctx *ctx, kiln_tensor *a, kiln_tensor *b);
KILN_API kiln_tensor *kiln_ne(kiln_ctx *ctx, kiln_tensor *a, kiln_tensor *b);
KILN_API kiln_tensor *kiln_lt(kiln_ctx *ctx, kiln_tensor *a, kiln_tensor *b);
KILN_API kiln_tensor *kiln_le(kiln_ctx *ctx, kiln_tensor *a, kiln_tensor *b);
KILN_API kiln_tensor *kiln_gt(kiln_ctx *ctx, kiln_tensor *a, kiln_tensor *b);
KILN_API kiln_tensor *kiln_ge(kiln_ctx *ctx, kiln_tensor *a, kiln_tensor *b);

/* cond != 0 ? a : b, all three broadcast together. */
KILN_API kiln_tensor *kiln_where(kiln_ctx *ctx, kiln_tensor *cond, kiln_tensor *a, kiln_tensor *b);

KILN_API kiln_tensor *kiln_neg(kiln_ctx *ctx, kiln_tensor *a);
KILN_API kiln_tensor *kiln_exp(kiln_ctx *ctx, kiln_tensor *a);
KILN_API kiln_tensor *kiln_log(kiln_ctx *ctx, kiln_tensor *a);
KILN_API kiln_tensor *kiln_sqrt(kiln_ctx *ctx, kiln_tensor *a);
KILN_API kiln_tensor *kiln_abs(kiln_ctx *ctx, kiln_tensor *a);

/* a op scalar. */
KILN_API kiln_tensor *kiln_add_scalar(kiln_ctx *ctx, kiln_tensor *a, float s);
KILN_API kiln_tensor *kiln_mul_scalar(kiln_ctx *ctx, kiln_tensor *a, float s);
KILN_API kiln_tensor *kiln_pow_scalar(kiln_ctx *ctx, kiln_tensor *a, float s);
KILN_API kiln_tensor *kiln_minimum_scalar(kiln_ctx *ctx, kiln_tensor *a, float s);
KILN_API kiln_tensor *kiln_maximum_scalar(kiln_ctx *ctx, kiln_tensor *a, float s);

/* ---- reductions --------------------------------------------------------------------- */
/*
 * Reduce over the `naxes` axes listed in `axes` (negative counts from the end; naxes 0
 * reduces over every axis). keepdim keeps reduced axes with size 1. max/min propagate
 * NaN as torch does. Sums accumulate in a fixed order: results are deterministic.
 */
KILN_API kiln_tensor *kiln_sum(kiln_ctx *ctx, kiln_tensor *t, int naxes, const int *axes, bool keepdim);
KILN_API kiln_tensor *kiln_mean(kiln_ctx *ctx, kiln_tensor *t, int naxes, const int *axes, bool keepdim);
KILN_API kiln_tensor *kiln_max(kiln_ctx *ctx, kiln_tensor *t, int naxes, const int *axes, bool keepdim);
KILN_API kiln_tensor *kiln_min(kiln_ctx *ctx, kiln_tensor *t, int naxes, const int *axes, bool keepdim);
/* Index (KILN_I32) of the first maximum along `axis`; axis = KILN_ALL_AXES flattens the
 * tensor first and returns a 0-d tensor, as torch.argmax(t). */
#define KILN_ALL_AXES (-KILN_MAX_DIMS - 1)
KILN_API kiln_tensor *kiln_argmax(kiln_ctx *ctx, kiln_tensor *t, int axis, bool keepdim);

/* ---- matrix products (kiln's GEMM kernels on CPUs, CLBlast elsewhere) ----------------- */

enum { KILN_TRANS_A = 1, KILN_TRANS_B = 2 };

/*
 * torch.matmul for tensors of 2 or more dims: the last two dims multiply, leading (batch)
 * dims broadcast. 1-D operands are promoted as torch does (a vector on the left becomes a
 * row, on the right a column, and the added dim is removed from the result).
 */
KILN_API kiln_tensor *kiln_matmul(kiln_ctx *ctx, kiln_tensor *a, kiln_tensor *b);
/* matmul with op(a) = a^T when KILN_TRANS_A is set (the last two dims swap), the same for b:
 * the transposes cost nothing, the GEMM reads the operands transposed. */
KILN_API kiln_tensor *kiln_matmul_ex(kiln_ctx *ctx, kiln_tensor *a, kiln_tensor *b, int flags);

#ifdef __cplusplus
}
#endif
#endif

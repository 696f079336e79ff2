/* kiln/tensor.h - tensors in device memory: creation, host transfer, views, scopes. */
#ifndef KILN_TENSOR_H
#define KILN_TENSOR_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * A tensor: dtype, up to KILN_MAX_DIMS dimensions, strides and an offset (both counted in
 * elements) into a device buffer that views share. Tensors belong to their context: a
 * tensor made inside a scope is freed when that scope ends unless kiln_tensor_keep() was
 * called on it; a tensor made outside any scope lives until kiln_tensor_free() or
 * kiln_close(). Freeing a tensor never invalidates views of it: the buffer returns to the
 * pool when its last view is gone.
 *
 * Functions that return a tensor return NULL on error and set the context's error.
 */
typedef struct kiln_tensor kiln_tensor;

/* ---- creation ----------------------------------------------------------------------- */

/* Copies numel * dtype-size bytes from host `data` into a new contiguous tensor (for
 * KILN_F16/KILN_BF16 the raw 16-bit values: kiln_f32_to_f16 and kiln_f32_to_bf16 of
 * common.h make them). */
KILN_API kiln_tensor *kiln_from_host(kiln_ctx *ctx, const void *data, kiln_dtype dtype, int ndim, const int64_t *shape);
/* Uninitialised contents. */
KILN_API kiln_tensor *kiln_empty(kiln_ctx *ctx, kiln_dtype dtype, int ndim, const int64_t *shape);
KILN_API kiln_tensor *kiln_full(kiln_ctx *ctx, float value, int ndim, const int64_t *shape);
KILN_API kiln_tensor *kiln_zeros(kiln_ctx *ctx, int ndim, const int64_t *shape);
KILN_API kiln_tensor *kiln_ones(kiln_ctx *ctx, int ndim, const int64_t *shape);
/* 1-D tensor start, start+step, ... up to but excluding end (as torch.arange). */
KILN_API kiln_tensor *kiln_arange(kiln_ctx *ctx, double start, double end, double step);

/* ---- random numbers ----------------------------------------------------------------- */
/*
 * Counter-based (Philox4x32-10): the i-th value drawn since kiln_manual_seed is a pure
 * function of (seed, i), whatever the work-group size. Uniform numbers are bit-identical on
 * every device; normal numbers go through the device's log/sqrt/cos and agree across
 * devices to a few ulp. Each call advances the context's counter by numel.
 */
KILN_API void kiln_manual_seed(kiln_ctx *ctx, uint64_t seed);
/* Uniform in [low, high). */
KILN_API kiln_tensor *kiln_rand_uniform(kiln_ctx *ctx, float low, float high, int ndim, const int64_t *shape);
/* Normal with the given mean and standard deviation (Box-Muller). */
KILN_API kiln_tensor *kiln_rand_normal(kiln_ctx *ctx, float mean, float std, int ndim, const int64_t *shape);

/* ---- host transfer ------------------------------------------------------------------ */

/* Copies the tensor (any strides) to host memory in row-major order. Waits for the device:
 * this and kiln_tensor_item are the synchronisation points. KILN_ERR_BUFFER_TOO_SMALL when
 * dst_bytes < numel * dtype-size. A bad index that an op enqueued since the last wait
 * recorded on the device (see kiln_sync in device.h) fails it with KILN_ERR_RANGE, after
 * the copy. */
KILN_API kiln_status kiln_to_host(kiln_tensor *t, void *dst, size_t dst_bytes);
/* Copies numel * dtype-size bytes of host data into an existing tensor (a view writes
 * through to its base). src_bytes must match exactly. Waits until the data is copied. */
KILN_API kiln_status kiln_copy_from_host(kiln_tensor *t, const void *src, size_t src_bytes);
/* Copies src into dst: same shape and dtype, any views (torch's dst.copy_(src) without
 * broadcasting). Not recorded by autograd. */
KILN_API kiln_status kiln_copy(kiln_tensor *dst, kiln_tensor *src);
/* The value of a one-element tensor as float (NaN on error; the context holds why); a
 * half is widened exactly. */
KILN_API float kiln_tensor_item(kiln_tensor *t);
/* Sets every element of t (a view writes through to its base) to value: rounded to nearest
 * (ties to even) for f16 and bf16, truncated toward zero for i32 and u8. */
KILN_API kiln_status kiln_fill(kiln_tensor *t, float value);

/* A new tensor holding t converted to dtype (f32, f16 and bf16 convert to one another;
 * torch's t.to(dtype)): narrowing rounds to nearest, ties to even (f16: overflow gives
 * inf, values below half the smallest denormal give 0; NaN stays NaN), widening is exact.
 * t's own dtype gives a view of t (torch returns t). Differentiable: gradients on the tape
 * are f32 whatever the forward's dtype, so the input receives the output's gradient as it
 * is. KILN_ERR_DTYPE for other dtypes. The result belongs to the current scope. */
KILN_API kiln_tensor *kiln_to_dtype(kiln_ctx *ctx, kiln_tensor *t, kiln_dtype dtype);

/* ---- properties --------------------------------------------------------------------- */

KILN_API kiln_ctx *kiln_tensor_ctx(const kiln_tensor *t);
KILN_API kiln_dtype kiln_tensor_dtype(const kiln_tensor *t);
KILN_API int kiln_tensor_ndim(const kiln_tensor *t);
/* Pointer to ndim sizes/strides; owned by the tensor. */
KILN_API const int64_t *kiln_tensor_shape(const kiln_tensor *t);
KILN_API const int64_t *kiln_tensor_strides(const kiln_tensor *t);
KILN_API int64_t kiln_tensor_offset(const kiln_tensor *t);
KILN_API int64_t kiln_tensor_numel(const kiln_tensor *t);
KILN_API bool kiln_tensor_is_contiguous(const kiln_tensor *t);
/* Writes a shape like "[64, 1, 28, 28]"; returns buf. */
KILN_API char *kiln_tensor_shape_str(const kiln_tensor *t, char *buf, size_t cap);

/* ---- lifetime ----------------------------------------------------------------------- */

KILN_API void kiln_tensor_free(kiln_tensor *t);
/* Opens a scope: tensors created until the matching kiln_scope_end are freed by it. */
KILN_API void kiln_scope_begin(kiln_ctx *ctx);
KILN_API void kiln_scope_end(kiln_ctx *ctx);
/* Moves t out of every scope: it lives until kiln_tensor_free or kiln_close. Returns t. */
KILN_API kiln_tensor *kiln_tensor_keep(kiln_tensor *t);
/* Number of live tensors of the context (for leak checks). */
KILN_API int64_t kiln_ctx_num_tensors(const kiln_ctx *ctx);

/* ---- views (no copy) and copies ----------------------------------------------------- */
/* Views share memory with their base: writing one (kiln_fill) changes the other. */

/* As torch.reshape: a view when the strides allow it, else a contiguous copy. One size may
 * be -1 (inferred). */
KILN_API kiln_tensor *kiln_reshape(kiln_ctx *ctx, kiln_tensor *t, int ndim, const int64_t *shape);
/* As torch.Tensor.view: fails instead of copying. */
KILN_API kiln_tensor *kiln_view(kiln_ctx *ctx, kiln_tensor *t, int ndim, const int64_t *shape);
KILN_API kiln_tensor *kiln_transpose(kiln_ctx *ctx, kiln_tensor *t, int dim0, int dim1);
KILN_API kiln_tensor *kiln_permute(kiln_ctx *ctx, kiln_tensor *t, const int *dims);
/* Elements start, start+step, ... < end along dim (negative start/end count from the end,
 * clamped as in Python slicing; step >= 1). */
KILN_API kiln_tensor *kiln_slice(kiln_ctx *ctx, kiln_tensor *t, int dim, int64_t start, int64_t end, int64_t step);
/* Broadcasts size-1 dimensions (stride 0) and prepends new ones, as torch.expand; -1
 * keeps a size. */
KILN_API kiln_tensor *kiln_expand(kiln_ctx *ctx, kiln_tensor *t, int ndim, const int64_t *shape);
KILN_API kiln_tensor *kiln_unsqueeze(kiln_ctx *ctx, kiln_tensor *t, int dim);
/* Removes dim if its size is 1; dim = -KILN_MAX_DIMS-1 removes every size-1 dim. */
KILN_API kiln_tensor *kiln_squeeze(kiln_ctx *ctx, kiln_tensor *t, int dim);
/* A contiguous tensor with t's values: a new view of t when t already is contiguous,
 * else a copy. */
KILN_API kiln_tensor *kiln_contiguous(kiln_ctx *ctx, kiln_tensor *t);
/* Always a new contiguous copy. */
KILN_API kiln_tensor *kiln_clone(kiln_ctx *ctx, kiln_tensor *t);

#ifdef __cplusplus
}
#endif
#endif

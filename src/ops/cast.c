/* src/ops/cast.c - dtype conversions between f32, f16 and bf16 (kiln_to_dtype, kernels in
 * cl_kernels/cast.cl), and the ops floor's half-precision helpers: the conversion without
 * autograd that ops use to promote mixed inputs, and autocast's casts (include/kiln/amp.h).
 *
 * Gradients on kiln's tape are f32 whatever the forward's dtype (every backward rule reads
 * and writes f32: src/ops/ops_internal.h), so the backward of a conversion hands the
 * output's f32 gradient to its input unchanged: for an f32 input that is the gradient
 * converted back to the input's dtype; a half input cannot be a leaf that requires grad
 * (kiln_tensor_set_requires_grad refuses it) and its gradient stays f32 on the tape. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_internal.h"

#define CAST_PROGRAM "cast"

static bool is_float(kiln_dtype dt) { return dt == KILN_F32 || dt == KILN_F16 || dt == KILN_BF16; }

kiln_tensor *kiln__convert(kiln_ctx *ctx, const char *op, kiln_tensor *t, kiln_dtype dtype) {
    char sb[160];
    if (!is_float(t->dtype) || !is_float(dtype)) {
        kiln__fail(ctx, KILN_ERR_DTYPE, "%s: cannot convert %s %s to %s (f32, f16 and bf16 convert)", op,
                   kiln__shape_str(t->ndim, t->shape, sb, sizeof sb), kiln_dtype_name(t->dtype),
                   kiln_dtype_name(dtype));
        return NULL;
    }
    kiln_tensor *out = kiln__tensor_new(ctx, op, dtype, t->ndim, t->shape);
    if (!out) return NULL;
    int64_t n = kiln__numel(t->ndim, t->shape);
    if (n == 0) return out;
    kiln__geom g;
    int64_t st[1][KILN_MAX_DIMS];
    memcpy(st[0], t->strides, sizeof st[0]);
    kiln__geom_build(&g, t->ndim, t->shape, 1, (const int64_t(*)[KILN_MAX_DIMS])st);
    cl_int soff = (cl_int)t->offset, doff = (cl_int)out->offset, ni = (cl_int)n;
    kiln__karg args[] = {KILN__ARG(t->st->mem), KILN__ARG(soff), KILN__ARG(out->st->mem),
                         KILN__ARG(doff),       KILN__ARG(ni),   KILN__ARG(g)};
    char opts[32];
    snprintf(opts, sizeof opts, "-DSRC=%d -DDST=%d", (int)t->dtype, (int)dtype);
    if (kiln__launch(ctx, op, CAST_PROGRAM, opts, "cast_strided", 6, args, (size_t)n, 0) != KILN_OK) {
        kiln_tensor_free(out);
        return NULL;
    }
    return out;
}

/* The gradient of the output (f32 on the tape) is the input's. */
static kiln_status cast_backward(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) { return kiln__accum(ctx, n, 0, g); }

kiln_tensor *kiln__cast_record(kiln_ctx *ctx, kiln_tensor *t, kiln_tensor *out) {
    static const char op[] = "kiln_to_dtype";
    if (!out) return NULL;
    if (kiln__grad_wanted(ctx, 1, &t) && !kiln__node_new(ctx, op, out, 1, &t, cast_backward)) {
        kiln_tensor_free(out);
        return NULL;
    }
    return kiln__finish(ctx, op, out);
}

kiln_tensor *kiln_to_dtype(kiln_ctx *ctx, kiln_tensor *t, kiln_dtype dtype) {
    static const char op[] = "kiln_to_dtype";
    if (!kiln__check_inputs(ctx, op, 1, &t)) return NULL;
    kiln_tensor *out;
    if (t->dtype == dtype && is_float(dtype)) /* torch returns the tensor itself: here a view of it */
        out = kiln__tensor_view(ctx, t, t->ndim, t->shape, t->strides, t->offset);
    else
        out = kiln__convert(ctx, op, t, dtype);
    return kiln__cast_record(ctx, t, out);
}

/* ---- half variants of ops ------------------------------------------------------------- */

const char *kiln__half_options(kiln_dtype dt) {
    return dt == KILN_F16 ? " -DKILN_HALF=1" : dt == KILN_BF16 ? " -DKILN_HALF=4" : "";
}

kiln_dtype kiln__half_inputs(kiln_ctx *ctx, const char *op, int n, kiln_tensor *const *ts, kiln_tensor **use) {
    kiln_dtype common = ts[0]->dtype;
    for (int j = 0; j < n; j++) {
        use[j] = ts[j];
        if (!is_float(ts[j]->dtype)) {
            char sb[160];
            kiln__fail(ctx, KILN_ERR_DTYPE, "%s: input %d %s has dtype %s; f32, f16 and bf16 are supported", op, j,
                       kiln__shape_str(ts[j]->ndim, ts[j]->shape, sb, sizeof sb), kiln_dtype_name(ts[j]->dtype));
            return KILN_DTYPE_COUNT;
        }
        if (ts[j]->dtype != common) common = KILN_F32;
    }
    if (common != KILN_F32) return common;
    /* mixed: the halves become f32 copies, as torch promotes f16 + f32 to f32 */
    for (int j = 0; j < n; j++) {
        if (ts[j]->dtype == KILN_F32) continue;
        use[j] = kiln__convert(ctx, op, ts[j], KILN_F32);
        if (!use[j]) {
            kiln__half_release(j, ts, use);
            return KILN_DTYPE_COUNT;
        }
    }
    return KILN_F32;
}

void kiln__half_release(int n, kiln_tensor *const *ts, kiln_tensor **use) {
    for (int j = 0; j < n; j++)
        if (use[j] && use[j] != ts[j]) kiln_tensor_free(use[j]);
}

bool kiln__refuse_half(kiln_ctx *ctx, const char *op, int n, kiln_tensor *const *ts) {
    for (int j = 0; j < n; j++) {
        if (!ts[j] || !kiln_dtype_is_half(ts[j]->dtype)) continue;
        char sb[160];
        kiln__fail(ctx, KILN_ERR_DTYPE,
                   "%s: input %d %s has dtype %s; %s has no half-precision variant (convert with kiln_to_dtype, or run "
                   "it under autocast, which computes it in f32)",
                   op, j, kiln__shape_str(ts[j]->ndim, ts[j]->shape, sb, sizeof sb), kiln_dtype_name(ts[j]->dtype), op);
        return true;
    }
    return false;
}

/* ---- autocast (include/kiln/amp.h) ------------------------------------------------------- */

kiln_dtype kiln_ctx_set_autocast(kiln_ctx *ctx, kiln_dtype dtype) {
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "kiln_ctx_set_autocast: ctx is NULL"), KILN_DTYPE_COUNT;
    if (dtype != KILN_F32 && !kiln_dtype_is_half(dtype)) {
        kiln__fail(ctx, KILN_ERR_DTYPE, "kiln_ctx_set_autocast: dtype %s; f16, bf16 (on) or f32 (off) expected",
                   kiln_dtype_name(dtype));
        return KILN_DTYPE_COUNT;
    }
    kiln_dtype prev = ctx->autocast;
    ctx->autocast = dtype;
    /* the casts made ahead were this region's */
    for (int i = 0; i < ctx->amp_ncache; i++) kiln_tensor_free(ctx->amp_cache[2 * i + 1]);
    ctx->amp_ncache = 0;
    return prev;
}

kiln_status kiln__autocast_cache_put(kiln_ctx *ctx, kiln_tensor *src, kiln_tensor *half) {
    if (ctx->amp_ncache == ctx->amp_cap) {
        int cap = ctx->amp_cap ? 2 * ctx->amp_cap : 16;
        kiln_tensor **c = realloc(ctx->amp_cache, sizeof *c * 2 * (size_t)cap);
        if (!c) {
            kiln_tensor_free(half);
            return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "autocast: out of host memory for its casts");
        }
        ctx->amp_cache = c;
        ctx->amp_cap = cap;
    }
    ctx->amp_cache[2 * ctx->amp_ncache] = src;
    ctx->amp_cache[2 * ctx->amp_ncache + 1] = kiln_tensor_keep(half);
    ctx->amp_ncache++;
    return KILN_OK;
}

/* src's cast to dt made ahead, or NULL */
static kiln_tensor *cached_cast(kiln_ctx *ctx, kiln_tensor *src, kiln_dtype dt) {
    for (int i = 0; i < ctx->amp_ncache; i++)
        if (ctx->amp_cache[2 * i] == src && ctx->amp_cache[2 * i + 1]->dtype == dt) return ctx->amp_cache[2 * i + 1];
    return NULL;
}

kiln_dtype kiln_ctx_autocast(const kiln_ctx *ctx) { return ctx ? ctx->autocast : KILN_F32; }

int kiln__autocast_inputs(kiln_ctx *ctx, int n, kiln_tensor *const *ts, kiln_tensor **cast) {
    int converted = 0;
    for (int j = 0; j < n; j++) cast[j] = ts[j];
    if (!ctx || !kiln_dtype_is_half(ctx->autocast)) return 0;
    for (int j = 0; j < n; j++) {
        if (!ts[j] || ts[j]->ctx != ctx || ts[j]->dtype != KILN_F32) continue;
        /* a cast made ahead: a view of it (its node passes the gradient on), no launch */
        kiln_tensor *c = cached_cast(ctx, ts[j], ctx->autocast);
        cast[j] = kiln_to_dtype(ctx, c ? c : ts[j], ctx->autocast);
        if (!cast[j]) {
            kiln__half_release(j, ts, cast);
            return -1;
        }
        converted++;
    }
    return converted;
}

kiln_tensor *kiln__autocast_f32(kiln_ctx *ctx, kiln_tensor *t) {
    if (!ctx || !t || t->ctx != ctx || !kiln_dtype_is_half(ctx->autocast) || !kiln_dtype_is_half(t->dtype)) return t;
    return kiln_to_dtype(ctx, t, KILN_F32);
}

bool kiln__any_half(int n, kiln_tensor *const *ts) {
    for (int j = 0; j < n; j++)
        if (ts[j] && kiln_dtype_is_half(ts[j]->dtype)) return true;
    return false;
}

/* back: convert an f32 result to the inputs' half dtype (unless f32 and halves mix) */
static kiln_tensor *via_f32(kiln_ctx *ctx, int n, kiln_tensor *const *ts, kiln__f32_fn fn, const void *arg, bool back) {
    kiln_tensor *f[KILN__VIA_F32_MAX] = {NULL};
    kiln_dtype dt = KILN_F32;
    bool mixed = false;
    for (int j = 0; j < n; j++) {
        f[j] = ts[j];
        if (!ts[j]) continue;
        if (!kiln_dtype_is_half(ts[j]->dtype)) {
            mixed |= ts[j]->dtype == KILN_F32;
            continue;
        }
        mixed |= dt != KILN_F32 && dt != ts[j]->dtype;
        dt = ts[j]->dtype;
        f[j] = kiln_to_dtype(ctx, ts[j], KILN_F32);
        if (!f[j]) {
            kiln__half_release(j, ts, f);
            return NULL;
        }
    }
    kiln_dtype ac = ctx->autocast; /* the f32 op on the copies: not cast back by autocast */
    ctx->autocast = KILN_F32;
    kiln_tensor *r = fn(ctx, f, arg);
    ctx->autocast = ac;
    kiln__half_release(n, ts, f);
    if (!r || mixed || !back || r->dtype != KILN_F32) return r; /* indices (argmax, samples) stay integers */
    kiln_tensor *y = kiln_to_dtype(ctx, r, dt);
    kiln_tensor_free(r);
    return y;
}

kiln_tensor *kiln__half_fallback(kiln_ctx *ctx, int n, kiln_tensor *const *ts, kiln__f32_fn fn, const void *arg) {
    return via_f32(ctx, n, ts, fn, arg, !kiln_dtype_is_half(ctx->autocast));
}

/* src/ops/random.c - random tensors from the Philox4x32-10 counter-based generator
 * (cl_kernels/random.cl): seeding, uniform and normal.
 *
 * State: ctx->seed (the key: low 32 bits, high 32 bits) and ctx->rng_counter. Element i of
 * a call uses the 64-bit counter c + i, c = rng_counter at the call; a successful call then
 * adds numel to rng_counter (a failed one leaves it alone). So a value depends only on the
 * seed and its global position in the stream since kiln_manual_seed: the same on every
 * device and work-group size, and two calls of n and m elements give exactly the elements
 * of one call of n + m.
 *
 * From the output words x0, x1 of element i (the top 24 bits of a word are what a float
 * holds exactly):
 *   uniform: u = (x0 >> 8) * 2^-24 in [0, 1); value = low + (high - low) * u, computed as
 *            fma(high - low, u, low) with high - low rounded to f32 once on the host, then
 *            clamped below high (rounding can reach high when |low| >> high - low). Bit-exact
 *            on every device.
 *   normal:  Box-Muller, u1 = ((x0 >> 8) + 1) * 2^-24 in (0, 1], u2 = (x1 >> 8) * 2^-24 in
 *            [0, 1), z = sqrt(-2 log u1) * cos(2 pi u2), value = mean + std * z (one fma).
 *            Uses the device's log/sqrt/cos, so devices agree to a few ulp, not bit for
 *            bit. |z| <= sqrt(48 ln 2) ~ 5.77: the 24-bit u1 cuts the tails at a
 *            probability of ~1e-8.
 */
#include <math.h>

#include "ops_internal.h"

void kiln_manual_seed(kiln_ctx *ctx, uint64_t seed) {
    if (!ctx) return;
    ctx->seed = seed;
    ctx->rng_counter = 0;
}

/* A new tensor of `shape` filled by `kernel` with the two or three float parameters;
 * advances the counter by numel on success. */
static kiln_tensor *rand_tensor(kiln_ctx *ctx, const char *op, const char *kernel, int ndim, const int64_t *shape,
                                int nparams, const cl_float *params) {
    kiln_tensor *t = kiln__tensor_new(ctx, op, KILN_F32, ndim, shape);
    if (!t) return NULL;
    int64_t n = kiln__numel(ndim, shape);
    if (n == 0) return t;
    cl_int off = (cl_int)t->offset, ni = (cl_int)n;
    cl_uint key0 = (cl_uint)ctx->seed, key1 = (cl_uint)(ctx->seed >> 32);
    cl_uint c0 = (cl_uint)ctx->rng_counter, c1 = (cl_uint)(ctx->rng_counter >> 32);
    kiln__karg args[10] = {KILN__ARG(t->st->mem), KILN__ARG(off), KILN__ARG(ni), KILN__ARG(key0),
                           KILN__ARG(key1),       KILN__ARG(c0),  KILN__ARG(c1)};
    for (int p = 0; p < nparams; p++) args[7 + p] = KILN__ARG(params[p]);
    if (kiln__launch(ctx, op, "random", "", kernel, (size_t)(7 + nparams), args, (size_t)n, 0) != KILN_OK) {
        kiln_tensor_free(t);
        return NULL;
    }
    ctx->rng_counter += (uint64_t)n;
    return t;
}

kiln_tensor *kiln_rand_uniform(kiln_ctx *ctx, float low, float high, int ndim, const int64_t *shape) {
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "kiln_rand_uniform: ctx is NULL"), NULL;
    float range = high - low;
    if (!isfinite(low) || !isfinite(high) || low > high || !isfinite(range)) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "kiln_rand_uniform: bad range [%g, %g): low and high must be finite, low <= high, and high - low "
                   "must fit in f32",
                   (double)low, (double)high);
        return NULL;
    }
    /* the largest float below high: values stay in [low, high); low == high gives low */
    float top = high > low ? nextafterf(high, low) : low;
    cl_float params[3] = {low, range, top};
    return rand_tensor(ctx, "kiln_rand_uniform", "rand_uniform", ndim, shape, 3, params);
}

kiln_tensor *kiln_rand_normal(kiln_ctx *ctx, float mean, float std, int ndim, const int64_t *shape) {
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "kiln_rand_normal: ctx is NULL"), NULL;
    if (!isfinite(mean) || !isfinite(std) || std < 0) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "kiln_rand_normal: bad parameters mean=%g std=%g: both must be finite and std >= 0", (double)mean,
                   (double)std);
        return NULL;
    }
    cl_float params[2] = {mean, std};
    return rand_tensor(ctx, "kiln_rand_normal", "rand_normal", ndim, shape, 2, params);
}

/* src/ops/sample.c - drawing ids from logits for generation: softmax(logits / temperature),
 * optionally over the top_k largest only (cl_kernels/sample.cl describes the kernel).
 *
 * The row's uniform number comes from the context's Philox stream (kiln_rand_uniform: one
 * number per row, the counter advances by B), so kiln_manual_seed makes a run of
 * generation reproducible on every device, and nothing is read back: the ids stay on the
 * device for the next kiln_embedding until the caller reads them. */
#include <math.h>

#include "ops_internal.h"

#define SAMPLE_PROGRAM "sample"

typedef struct sample_args {
    float temperature;
    int top_k;
} sample_args;

static kiln_tensor *sample_f32(kiln_ctx *ctx, kiln_tensor *const *in, const void *arg) {
    const sample_args *a = arg;
    return kiln_sample_logits(ctx, in[0], a->temperature, a->top_k);
}

kiln_tensor *kiln_sample_logits(kiln_ctx *ctx, kiln_tensor *logits, float temperature, int top_k) {
    static const char *op = "kiln_sample_logits";
    if (!kiln__check_inputs(ctx, op, 1, &logits)) return NULL;
    /* half logits: drawn from an f32 copy (the ids are i32 either way) */
    if (kiln_dtype_is_half(logits->dtype))
        return kiln__half_fallback(ctx, 1, &logits, sample_f32, &(sample_args){temperature, top_k});
    char sb[160];
    kiln__shape_str(logits->ndim, logits->shape, sb, sizeof sb);
    if (logits->dtype != KILN_F32)
        return kiln__fail(ctx, KILN_ERR_DTYPE, "%s: logits %s are %s; they must be f32, f16 or bf16", op, sb,
                          kiln_dtype_name(logits->dtype)),
               NULL;
    if (logits->ndim != 2)
        return kiln__fail(ctx, KILN_ERR_SHAPE, "%s: logits %s must be [B, V] (2 dims)", op, sb), NULL;
    int64_t B = logits->shape[0], V = logits->shape[1];
    if (V < 1) return kiln__fail(ctx, KILN_ERR_SHAPE, "%s: logits %s have no classes (V = 0)", op, sb), NULL;
    if (!(temperature > 0) || !isfinite(temperature))
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                          "%s: temperature %g must be finite and > 0 (the most likely id is kiln_argmax)", op,
                          (double)temperature),
               NULL;
    if (top_k < 0 || top_k > V)
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                          "%s: top_k %d is outside [0, V = %lld] for logits %s (0: off)", op, top_k, (long long)V, sb),
               NULL;
    int64_t rs = logits->strides[0], cs = logits->strides[1];
    int64_t last = logits->offset + (B > 0 ? (B - 1) * rs : 0) + (V - 1) * cs;
    if (B > INT32_MAX || V > INT32_MAX || rs > INT32_MAX || cs > INT32_MAX || last > INT32_MAX)
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: logits %s index past 2^31 elements", op, sb), NULL;
    kiln_tensor *out = kiln__tensor_new(ctx, op, KILN_I32, 1, &B);
    if (!out || B == 0) return out;
    kiln_tensor *u = kiln_rand_uniform(ctx, 0.0f, 1.0f, 1, &B);
    size_t local = 0;
    if (!u || kiln__tree_wg(ctx, SAMPLE_PROGRAM, "", "sample_logits", 256, &local) != KILN_OK) {
        kiln_tensor_free(u);
        kiln_tensor_free(out);
        return NULL;
    }
    cl_int xoff = (cl_int)logits->offset, crs = (cl_int)rs, ccs = (cl_int)cs, cv = (cl_int)V;
    cl_int uoff = (cl_int)u->offset, ooff = (cl_int)out->offset, k = top_k;
    cl_float t = temperature;
    kiln__karg args[13] = {KILN__ARG(logits->st->mem),
                           KILN__ARG(xoff),
                           KILN__ARG(crs),
                           KILN__ARG(ccs),
                           KILN__ARG(cv),
                           KILN__ARG(u->st->mem),
                           KILN__ARG(uoff),
                           KILN__ARG(out->st->mem),
                           KILN__ARG(ooff),
                           KILN__ARG(t),
                           KILN__ARG(k),
                           KILN__LOCAL(local * sizeof(cl_float)),
                           KILN__LOCAL((local > 256 ? local : 256) * sizeof(cl_uint))};
    kiln_status st = kiln__launch(ctx, op, SAMPLE_PROGRAM, "", "sample_logits", 13, args, (size_t)B * local, local);
    kiln_tensor_free(u);
    if (st != KILN_OK) {
        kiln_tensor_free(out);
        return NULL;
    }
    return kiln__finish(ctx, op, out);
}

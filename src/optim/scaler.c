/* src/optim/scaler.c - the GradScaler of mixed-precision training (include/kiln/amp.h):
 * dynamic loss scaling with the inf/NaN check, the skip of an overflowing step and the
 * scale's update all on the device (kernels scaler_* and the KILN_SKIP build of the update
 * kernels in cl_kernels/optim.cl), so a training step never waits for the host. */
#include <math.h>
#include <stdlib.h>

#include "optim_internal.h"

struct kiln_grad_scaler {
    kiln_ctx *ctx;
    kiln_grad_scaler_opts o;
    kiln_tensor *scale;         /* f32, 0-d: the scale (kept outside every scope) */
    kiln_tensor *state;         /* i32 [2]: this step's found-inf flag, the good steps in a row */
    const kiln_optim *unscaled; /* the optimizer unscaled since the last update, or NULL */
};

kiln_grad_scaler_opts kiln_grad_scaler_defaults(void) {
    return (kiln_grad_scaler_opts){
        .init_scale = 65536.0f, .growth_factor = 2.0f, .backoff_factor = 0.5f, .growth_interval = 2000};
}

kiln_grad_scaler *kiln_grad_scaler_new(kiln_ctx *ctx, const kiln_grad_scaler_opts *opts) {
    static const char op[] = "kiln_grad_scaler_new";
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "%s: ctx is NULL", op), NULL;
    kiln_grad_scaler_opts o = opts ? *opts : kiln_grad_scaler_defaults();
    if (!(isfinite(o.init_scale) && o.init_scale > 0) || !(o.growth_factor > 1 && isfinite(o.growth_factor)) ||
        !(o.backoff_factor > 0 && o.backoff_factor < 1) || o.growth_interval < 1) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s: init_scale %g (finite, > 0), growth_factor %g (> 1), backoff_factor %g (in (0, 1)), "
                   "growth_interval %d (>= 1)",
                   op, (double)o.init_scale, (double)o.growth_factor, (double)o.backoff_factor, o.growth_interval);
        return NULL;
    }
    kiln_grad_scaler *s = calloc(1, sizeof *s);
    if (!s) return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", op), NULL;
    s->ctx = ctx;
    s->o = o;
    s->scale = kiln_tensor_keep(kiln__tensor_new(ctx, op, KILN_F32, 0, NULL));
    s->state = kiln_tensor_keep(kiln__tensor_new(ctx, op, KILN_I32, 1, (int64_t[]){2}));
    if (!s->scale || !s->state || kiln_fill(s->scale, o.init_scale) != KILN_OK || kiln_fill(s->state, 0) != KILN_OK) {
        kiln_grad_scaler_free(s);
        return NULL;
    }
    return s;
}

void kiln_grad_scaler_free(kiln_grad_scaler *s) {
    if (!s) return;
    kiln_tensor_free(s->scale);
    kiln_tensor_free(s->state);
    free(s);
}

kiln_tensor *kiln_grad_scaler_scale(kiln_grad_scaler *s, kiln_tensor *loss) {
    if (!s) return kiln__fail_global(KILN_ERR_NULL, "kiln_grad_scaler_scale: scaler is NULL"), NULL;
    if (!kiln__check_inputs(s->ctx, "kiln_grad_scaler_scale", 1, &loss)) return NULL;
    return kiln_mul(s->ctx, loss, s->scale);
}

static kiln_status check_opt(kiln_grad_scaler *s, const char *op, kiln_optim *opt) {
    if (!s) return kiln__fail_global(KILN_ERR_NULL, "%s: scaler is NULL", op);
    if (!opt) return kiln__fail(s->ctx, KILN_ERR_NULL, "%s: optimizer is NULL", op);
    if (kiln_optim_ctx(opt) != s->ctx)
        return kiln__fail(s->ctx, KILN_ERR_INVALID_ARGUMENT, "%s: the optimizer belongs to another context", op);
    return s->ctx->err;
}

/* One gradient by its own launch (where the multi-tensor kernel cannot take it). */
static kiln_status unscale_one(kiln_ctx *ctx, kiln_tensor *g, void *user) {
    kiln_grad_scaler *s = user;
    cl_int n = (cl_int)kiln__numel(g->ndim, g->shape), goff = (cl_int)g->offset, soff = (cl_int)s->scale->offset,
           stoff = (cl_int)s->state->offset;
    if (n == 0) return KILN_OK;
    kiln__karg a[] = {
        KILN__ARG(g->st->mem),        KILN__ARG(goff), KILN__ARG(n), KILN__ARG(s->scale->st->mem), KILN__ARG(soff),
        KILN__ARG(s->state->st->mem), KILN__ARG(stoff)};
    return kiln__launch(ctx, "kiln_grad_scaler_unscale", "optim", "", "scaler_unscale", sizeof a / sizeof a[0], a,
                        (size_t)n, 0);
}

kiln_status kiln_grad_scaler_unscale(kiln_grad_scaler *s, kiln_optim *opt) {
    static const char op[] = "kiln_grad_scaler_unscale";
    kiln_status st = check_opt(s, op, opt);
    if (st != KILN_OK) return st;
    kiln_ctx *ctx = s->ctx;
    if (s->unscaled)
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                          "%s: already called since the last kiln_grad_scaler_update (once per step, as torch's "
                          "unscale_)",
                          op);
    /* the trainable parameters' gradients (contiguous f32 tensors: autograd's slots,
     * src/autograd/autograd.c), eight a launch */
    cl_int soff = (cl_int)s->scale->offset, stoff = (cl_int)s->state->offset;
    kiln__karg extra[] = {KILN__ARG(s->scale->st->mem), KILN__ARG(soff), KILN__ARG(s->state->st->mem),
                          KILN__ARG(stoff)};
    st = kiln__optim_grads_foreach(opt, op, "scaler_unscale_multi", 4, extra, true, unscale_one, s);
    if (st != KILN_OK) return st;
    s->unscaled = opt;
    return KILN_OK;
}

kiln_status kiln_grad_scaler_step(kiln_grad_scaler *s, kiln_optim *opt) {
    kiln_status st = check_opt(s, "kiln_grad_scaler_step", opt);
    if (st != KILN_OK) return st;
    if (s->unscaled != opt && (st = kiln_grad_scaler_unscale(s, opt)) != KILN_OK) return st;
    return kiln__optim_step_skip(opt, s->state);
}

kiln_status kiln_grad_scaler_update(kiln_grad_scaler *s) {
    static const char op[] = "kiln_grad_scaler_update";
    if (!s) return kiln__fail_global(KILN_ERR_NULL, "%s: scaler is NULL", op);
    cl_int soff = (cl_int)s->scale->offset, stoff = (cl_int)s->state->offset, interval = s->o.growth_interval;
    cl_float growth = s->o.growth_factor, backoff = s->o.backoff_factor;
    kiln__karg a[] = {KILN__ARG(s->scale->st->mem),
                      KILN__ARG(soff),
                      KILN__ARG(s->state->st->mem),
                      KILN__ARG(stoff),
                      KILN__ARG(growth),
                      KILN__ARG(backoff),
                      KILN__ARG(interval)};
    kiln_status st = kiln__launch(s->ctx, op, "optim", "", "scaler_update", sizeof a / sizeof a[0], a, 1, 0);
    if (st == KILN_OK) s->unscaled = NULL;
    return st;
}

float kiln_grad_scaler_get_scale(kiln_grad_scaler *s) {
    if (!s) return kiln__fail_global(KILN_ERR_NULL, "kiln_grad_scaler_get_scale: scaler is NULL"), NAN;
    return kiln_tensor_item(s->scale);
}

int kiln_grad_scaler_growth_tracker(kiln_grad_scaler *s) {
    if (!s) return kiln__fail_global(KILN_ERR_NULL, "kiln_grad_scaler_growth_tracker: scaler is NULL"), -1;
    int32_t v[2];
    if (kiln_to_host(s->state, v, sizeof v) != KILN_OK) return -1;
    return v[1];
}

/* kiln/amp.h - mixed-precision training, as PyTorch's automatic mixed precision
 * (torch.autocast and torch.cuda.amp.GradScaler).
 *
 *     kiln_grad_scaler *sc = kiln_grad_scaler_new(ctx, NULL);     // init scale 65536
 *     for (each batch) {
 *         kiln_scope_begin(ctx);
 *         kiln_dtype prev = kiln_ctx_set_autocast(ctx, KILN_F16);   // forward in half
 *         kiln_tensor *loss = kiln_cross_entropy(ctx, kiln_forward(net, x), y, KILN_MEAN);
 *         kiln_ctx_set_autocast(ctx, prev);
 *         kiln_optim_zero_grad(opt);
 *         kiln_backward(kiln_grad_scaler_scale(sc, loss));          // loss * scale
 *         kiln_grad_scaler_step(sc, opt);    // unscale, check, update unless inf/NaN
 *         kiln_grad_scaler_update(sc);       // grow or back off the scale
 *         kiln_scope_end(ctx);
 *     }
 *
 * Autocast. While a context's autocast dtype is KILN_F16 or KILN_BF16, the ops that gain
 * from half precision - kiln_matmul, kiln_matmul_ex, linear layers (x W^T + b),
 * kiln_conv2d and kiln_conv_transpose2d - convert their f32 inputs to that dtype
 * (differentiably: the f32 master weights get the gradients), compute, and return half
 * outputs; the elementwise ops, activations, pad, upsampling, pooling and dropout follow
 * their inputs' dtype (as torch's autocast runs the ops on neither of its lists); every
 * other op (softmax, log_softmax, the losses and penalties, the reductions, batch and layer
 * norm, embedding, attention, the recurrent layers) converts half inputs to f32, computes
 * in f32 and returns f32 (README.md, "Half precision and mixed
 * precision", has the lists). kiln's kernels
 * sum in f32 whatever the storage, as PyTorch's do. A backward turns autocast off while it
 * runs, and gradients on the tape are f32 (include/kiln/tensor.h, kiln_to_dtype).
 *
 * Loss scaling. Gradients of half activations can underflow; the scaler multiplies the
 * loss by a scale (65536 to start), divides the gradients by it before the optimizer reads
 * them, and skips the update of a step whose gradients hold an inf or NaN, halving the
 * scale; after 2000 steps in a row without one it doubles the scale. As torch's
 * GradScaler, but nothing waits for the device: the check, the skip (the optimizer's
 * kernels read the flag on the device) and the scale's update all run on the device's
 * queue. Differences from torch: an Adam/AdamW step that the scaler skips still counts
 * for the bias correction (the step count lives on the host); SGD with momentum needs
 * dampening 0 under a scaler (its momentum buffer starts at 0 rather than at the first
 * gradient, which is the same update only then).
 */
#ifndef KILN_AMP_H
#define KILN_AMP_H

#include "common.h"
#include "optim.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Sets the context's autocast dtype: KILN_F16 or KILN_BF16 turns autocast on, KILN_F32
 * off. Returns the previous setting (KILN_DTYPE_COUNT with the error set for another
 * dtype or a NULL ctx). */
KILN_API kiln_dtype kiln_ctx_set_autocast(kiln_ctx *ctx, kiln_dtype dtype);
/* The context's autocast dtype (KILN_F32: off). */
KILN_API kiln_dtype kiln_ctx_autocast(const kiln_ctx *ctx);

typedef struct kiln_grad_scaler_opts {
    float init_scale;     /* 65536 */
    float growth_factor;  /* 2 */
    float backoff_factor; /* 0.5 */
    int growth_interval;  /* 2000 good steps in a row before the scale grows */
} kiln_grad_scaler_opts;

KILN_API kiln_grad_scaler_opts kiln_grad_scaler_defaults(void);

typedef struct kiln_grad_scaler kiln_grad_scaler;
/* A scaler on ctx (opts NULL: the defaults). The caller frees it with
 * kiln_grad_scaler_free. NULL with the error set for bad options (scale not finite and
 * positive, growth <= 1, backoff outside (0, 1), interval < 1). */
KILN_API kiln_grad_scaler *kiln_grad_scaler_new(kiln_ctx *ctx, const kiln_grad_scaler_opts *opts);
KILN_API void kiln_grad_scaler_free(kiln_grad_scaler *s);
/* loss * scale, differentiable (the scale is a device value: nothing waits). The result
 * belongs to the current scope. */
KILN_API kiln_tensor *kiln_grad_scaler_scale(kiln_grad_scaler *s, kiln_tensor *loss);
/* Divides every gradient of opt's parameters by the scale and records on the device
 * whether any is inf or NaN (torch's scaler.unscale_(opt): call it before clipping). Once
 * per step: kiln_grad_scaler_step does it when it was not called. */
KILN_API kiln_status kiln_grad_scaler_unscale(kiln_grad_scaler *s, kiln_optim *opt);
/* Unscales (unless done this step) and runs kiln_optim_step with the update of every
 * parameter skipped on the device when a gradient held an inf or NaN. */
KILN_API kiln_status kiln_grad_scaler_step(kiln_grad_scaler *s, kiln_optim *opt);
/* Ends the step: on the device, an inf/NaN step multiplies the scale by backoff_factor
 * and restarts the count of good steps; growth_interval good steps in a row multiply it by
 * growth_factor (if the product is finite). Clears the step's inf/NaN flag. */
KILN_API kiln_status kiln_grad_scaler_update(kiln_grad_scaler *s);
/* The current scale, read from the device (waits: for logging and tests). NaN on error. */
KILN_API float kiln_grad_scaler_get_scale(kiln_grad_scaler *s);
/* The count of good steps since the scale last changed, read from the device (waits). -1
 * on error. */
KILN_API int kiln_grad_scaler_growth_tracker(kiln_grad_scaler *s);

#ifdef __cplusplus
}
#endif
#endif

/* src/optim/optim_internal.h - what the optimizers (src/optim/optim.c) offer the GradScaler
 * (src/optim/scaler.c) and the training loop (src/train/fit.c) beyond include/kiln/optim.h. */
#ifndef KILN_OPTIM_INTERNAL_H
#define KILN_OPTIM_INTERNAL_H

#include "../ops/ops_internal.h"

/* kiln_optim_step with every update skipped on the device when found_inf (an i32 tensor)
 * holds a non-zero first element. */
kiln_status kiln__optim_step_skip(kiln_optim *opt, kiln_tensor *found_inf);

/* Runs the multi-tensor kernel `kernel` of cl_kernels/optim.cl (its kiln_opt_table, the
 * eight gradient buffers, then the nextra arguments of extra) over the gradients of opt's
 * parameters that exist (and, with trainable, whose parameter requires grad), up to
 * KILN_OPT_MULTI per launch; a gradient it cannot take (not contiguous f32, or every
 * gradient where the device lacks room for its arguments or KILN_OPTIM_SINGLE is set) goes
 * to single(ctx, g, user) instead. */
typedef kiln_status (*kiln__grad_fn)(kiln_ctx *ctx, kiln_tensor *g, void *user);
kiln_status kiln__optim_grads_foreach(kiln_optim *opt, const char *op, const char *kernel, int nextra,
                                      const kiln__karg *extra, bool trainable, kiln__grad_fn single, void *user);

/* For the autocast region just begun (kiln_ctx_set_autocast to dt): opt's trainable f32
 * contiguous parameters converted to dt eight a launch (cast_multi), each recorded as
 * kiln_to_dtype of its parameter and put in the context's autocast cache, so that the
 * layers' casts of them launch nothing (kiln__autocast_cache_put). Nothing where the device
 * takes no multi-tensor launches, autocast is not dt or autograd is not recording: the
 * layers cast one by one. */
kiln_status kiln__optim_autocast(kiln_optim *opt, kiln_dtype dt);

#endif

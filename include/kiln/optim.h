/* kiln/optim.h - optimizers (SGD, RMSprop, Adam, AdamW), gradient clipping and
 * learning-rate schedules, with torch.optim's semantics for the same arguments.
 *
 *     kiln_tensor *params[] = {w1, b1, w2, b2};           // leaves with requires_grad
 *     kiln_adam_opts o = kiln_adamw_defaults();          // torch.optim.AdamW's defaults
 *     o.lr = 3e-4;
 *     kiln_optim *opt = kiln_adamw(ctx, params, 4, &o);  // NULL opts: the defaults
 *     kiln_lr_sched *sched = kiln_cosine_annealing_lr(opt, 100, 0.0);
 *     for (each batch) {
 *         kiln_scope_begin(ctx);
 *         ... loss = ...;
 *         kiln_optim_zero_grad(opt);
 *         kiln_backward(loss);
 *         kiln_clip_grad_norm_tensor(ctx, 4, params, 1.0, 2.0);   // optional, no host wait
 *         kiln_optim_step(opt);                          // one kernel per parameter tensor
 *         kiln_scope_end(ctx);
 *         kiln_lr_sched_step(sched);                     // once per epoch or per step, as in torch
 *     }
 *     kiln_lr_sched_free(sched);
 *     kiln_optim_free(opt);                              // before kiln_close
 *
 * Arithmetic. Hyper-parameters are doubles, as Python floats are: the host computes every
 * scalar torch computes in Python (1 - beta1, lr / (1 - beta1^t), sqrt(1 - beta2^t),
 * 1 - lr * weight_decay) in double and hands the kernel their float roundings, as torch's
 * float32 kernels receive them. The kernel then does torch's float operations in torch's
 * order (its "add with alpha" as a fused multiply-add where the device has a fast one, as
 * torch's vectorised CPU path does), so a trajectory follows PyTorch's to a few float
 * ulps per step. A step never waits for the device.
 *
 * Ownership. The optimizer refers to the caller's parameter tensors (it does not copy
 * them): they must outlive it. Its state tensors (moments, momentum buffers) are kept out
 * of every scope and freed by kiln_optim_free, which must come before kiln_close. An
 * lr scheduler refers to its optimizer: free the scheduler first.
 *
 * One parameter group: every parameter shares the hyper-parameters (torch's param_groups
 * with one entry). A parameter whose gradient is NULL (backward never reached it) is
 * skipped by kiln_optim_step and keeps its state and step count, as in torch.
 */
#ifndef KILN_OPTIM_H
#define KILN_OPTIM_H

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kiln_optim kiln_optim;

/* ---- hyper-parameters ----------------------------------------------------------------
 * Start from the kiln_*_defaults() functions (torch's defaults) and change fields; every
 * field means its literal value, so a zero-initialised struct is NOT torch's defaults
 * (lr 0, betas 0, eps 0). */

/* torch.optim.SGD(params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False,
 * maximize=False) (torch 2's defaults). */
typedef struct kiln_sgd_opts {
    double lr;
    double momentum;
    double dampening;
    double weight_decay; /* L2 penalty added to the gradient */
    bool nesterov;       /* needs momentum > 0 and dampening 0 */
    bool maximize;       /* ascend instead of descend */
} kiln_sgd_opts;

/* torch.optim.RMSprop(params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
 * centered=False, maximize=False). */
typedef struct kiln_rmsprop_opts {
    double lr;
    double alpha; /* smoothing constant of the squared-gradient average */
    double eps;
    double weight_decay;
    double momentum;
    bool centered; /* divide by the estimated variance instead of the second moment */
    bool maximize;
} kiln_rmsprop_opts;

/* torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
 * amsgrad=False, maximize=False) and torch.optim.AdamW (the same with weight_decay=1e-2,
 * applied as decoupled decay param *= 1 - lr * weight_decay). */
typedef struct kiln_adam_opts {
    double lr;
    double beta1, beta2; /* torch's betas, each in [0, 1) */
    double eps;
    double weight_decay;
    bool amsgrad;
    bool maximize;
} kiln_adam_opts;

KILN_API kiln_sgd_opts kiln_sgd_defaults(void);
KILN_API kiln_rmsprop_opts kiln_rmsprop_defaults(void);
KILN_API kiln_adam_opts kiln_adam_defaults(void);
KILN_API kiln_adam_opts kiln_adamw_defaults(void);

/* ---- creation ------------------------------------------------------------------------
 * params: n > 0 distinct, non-overlapping, contiguous F32 leaf tensors of ctx that
 * require grad (kiln_tensor_set_requires_grad). opts NULL means the defaults. Invalid hyper-parameters fail with
 * torch's messages ("Invalid learning rate: -1", "Nesterov momentum requires a momentum and zero dampening"); a bad
 * parameter fails naming its index and shape. NULL on error (the context holds why). The list itself is copied; the
 * tensors are not. */
KILN_API kiln_optim *kiln_sgd(kiln_ctx *ctx, kiln_tensor *const *params, int n, const kiln_sgd_opts *opts);
KILN_API kiln_optim *kiln_rmsprop(kiln_ctx *ctx, kiln_tensor *const *params, int n, const kiln_rmsprop_opts *opts);
KILN_API kiln_optim *kiln_adam(kiln_ctx *ctx, kiln_tensor *const *params, int n, const kiln_adam_opts *opts);
KILN_API kiln_optim *kiln_adamw(kiln_ctx *ctx, kiln_tensor *const *params, int n, const kiln_adam_opts *opts);

/* Frees the state tensors and the optimizer (not the parameters). NULL-safe. */
KILN_API void kiln_optim_free(kiln_optim *opt);

/* ---- stepping ------------------------------------------------------------------------ */

/* One update of every parameter whose gradient is not NULL (kiln_tensor_grad), enqueued as one
 * fused kernel per parameter; no host wait. Gradients must be F32 with the parameter's
 * shape (any strides). Fails before touching any parameter when a gradient is wrong. */
KILN_API kiln_status kiln_optim_step(kiln_optim *opt);
/* Zeroes every parameter's gradient in place (torch 1.13's zero_grad(set_to_none=False));
 * NULL gradients stay NULL. */
KILN_API kiln_status kiln_optim_zero_grad(kiln_optim *opt);

KILN_API kiln_ctx *kiln_optim_ctx(const kiln_optim *opt);
/* "SGD", "RMSprop", "Adam" or "AdamW" (torch's class names); NULL for NULL. */
KILN_API const char *kiln_optim_kind(const kiln_optim *opt);
KILN_API int kiln_optim_num_params(const kiln_optim *opt);
KILN_API kiln_tensor *kiln_optim_param(const kiln_optim *opt, int i);

/* The learning rate (param_groups[0]['lr']); NaN for NULL. set_lr rejects lr < 0 / NaN. */
KILN_API double kiln_optim_lr(const kiln_optim *opt);
KILN_API kiln_status kiln_optim_set_lr(kiln_optim *opt, double lr);

/* ---- state (for checkpoints) ---------------------------------------------------------
 * Entries are named as in torch's optimizer.state_dict()['state'], flattened
 * "<param index>.<key>": SGD "momentum_buffer"; RMSprop "square_avg", "momentum_buffer"
 * (momentum > 0), "grad_avg" (centered); Adam/AdamW "exp_avg", "exp_avg_sq",
 * "max_exp_avg_sq" (amsgrad). As in torch, state appears when a parameter is first
 * updated; torch's per-parameter "step" is kiln_optim_step_count/set_step. */

/* Number of entries of the existing state (0 for NULL, with kiln_last_error() set). */
KILN_API int kiln_optim_num_states(const kiln_optim *opt);
/* Entry i in [0, kiln_optim_num_states) (parameter then key order): sets *name (owned by
 * opt, valid until kiln_optim_free) and *t (owned by opt; write it to restore state).
 * KILN_ERR_RANGE for any other i. Iterate with:
 *     for (int i = 0; i < kiln_optim_num_states(opt); i++) kiln_optim_state(opt, i, &name, &t); */
KILN_API kiln_status kiln_optim_state(kiln_optim *opt, int i, const char **name, kiln_tensor **t);
/* The state tensor called `name` ("3.exp_avg"), or NULL. With create, a missing entry
 * that this optimizer's configuration uses is made (zeros, the parameter's shape) so a
 * checkpoint loader can fill it; an SGD momentum buffer that exists is used as is by the
 * next step (torch's loaded-state behaviour) instead of being initialised from the
 * gradient. Unknown names fail (KILN_ERR_INVALID_ARGUMENT) when create is set. */
KILN_API kiln_tensor *kiln_optim_state_find(kiln_optim *opt, const char *name, bool create);
/* Number of updates applied to parameter i (torch's state[p]['step']; counted for SGD
 * too). -1 on error. */
KILN_API int64_t kiln_optim_step_count(const kiln_optim *opt, int i);
/* Sets parameter i's step count (i = -1: every parameter); step >= 0. */
KILN_API kiln_status kiln_optim_set_step_count(kiln_optim *opt, int i, int64_t step);

/* ---- gradient clipping ---------------------------------------------------------------
 * torch.nn.utils.clip_grad_norm_ / clip_grad_value_ over the gradients of params[0..n)
 * (NULL gradients are skipped; the tensors need not belong to an optimizer). Gradients are
 * changed in place and must be contiguous. */

/* Total norm of all gradients taken together (norm_type 2, 1, any p > 0, or INFINITY
 * for the largest magnitude) as a new 0-d tensor on the device, and every gradient
 * multiplied by min(max_norm / (total + 1e-6), 1) without a host wait (a NaN or Inf
 * total makes the gradients NaN, as in torch). No gradients: a 0 tensor. NULL on error. */
KILN_API kiln_tensor *kiln_clip_grad_norm_tensor(kiln_ctx *ctx, int n, kiln_tensor *const *params, double max_norm,
                                                 double norm_type);
/* The same, returning the total norm as a float (it waits for the device); NaN on error. */
KILN_API float kiln_clip_grad_norm(kiln_ctx *ctx, int n, kiln_tensor *const *params, double max_norm, double norm_type);
/* Clamps every gradient element to [-clip_value, clip_value] (NaN stays NaN). */
KILN_API kiln_status kiln_clip_grad_value(kiln_ctx *ctx, int n, kiln_tensor *const *params, double clip_value);

/* ---- learning-rate schedules ---------------------------------------------------------
 * torch.optim.lr_scheduler with last_epoch=-1: creating a scheduler records the
 * optimizer's current lr as base lr and performs the initial step (LinearLR multiplies
 * the lr by start_factor at once); each kiln_lr_sched_step sets the optimizer's lr with
 * torch's chainable (recursive) get_lr formula in double, so after k steps the lr equals
 * torch's after k scheduler.step() calls bit for bit. */

typedef struct kiln_lr_sched kiln_lr_sched;

/* lr *= gamma every step_size epochs (step_size > 0; torch's gamma default 0.1). */
KILN_API kiln_lr_sched *kiln_step_lr(kiln_optim *opt, int step_size, double gamma);
/* lr *= gamma at each milestone epoch (repeated milestones count repeatedly). */
KILN_API kiln_lr_sched *kiln_multistep_lr(kiln_optim *opt, const int *milestones, int n, double gamma);
/* lr *= gamma every epoch. */
KILN_API kiln_lr_sched *kiln_exponential_lr(kiln_optim *opt, double gamma);
/* Cosine from the base lr down to eta_min over t_max epochs (t_max > 0), then back up. */
KILN_API kiln_lr_sched *kiln_cosine_annealing_lr(kiln_optim *opt, int t_max, double eta_min);
/* Linear warm-up: the factor goes from start_factor to end_factor (both in [0, 1]; torch's
 * defaults 1/3 and 1) over total_iters epochs (torch's default 5). */
KILN_API kiln_lr_sched *kiln_linear_lr(kiln_optim *opt, double start_factor, double end_factor, int total_iters);

/* Advances one epoch and sets the optimizer's lr. */
KILN_API kiln_status kiln_lr_sched_step(kiln_lr_sched *s);
/* The lr the last step set (get_last_lr()[0]); NaN for NULL. */
KILN_API double kiln_lr_sched_last_lr(const kiln_lr_sched *s);
/* The epoch counter (torch's last_epoch: 0 after creation); -1 for NULL. */
KILN_API int64_t kiln_lr_sched_last_epoch(const kiln_lr_sched *s);
/* Restores the counters a checkpoint saved (torch's load_state_dict: last_epoch, its
 * step count becomes last_epoch + 1); the optimizer's lr is restored separately. */
KILN_API kiln_status kiln_lr_sched_set_last_epoch(kiln_lr_sched *s, int64_t last_epoch);
KILN_API void kiln_lr_sched_free(kiln_lr_sched *s);

#ifdef __cplusplus
}
#endif
#endif

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
 * Parameter groups (torch's param_groups). The constructor makes group 0 from its params and
 * options; kiln_optim_add_*_group appends more, each with its own options (NULL: the
 * constructor's, torch's optimizer.defaults). Parameters are numbered across groups in
 * order (group 0's first), as torch numbers them in state_dict. The usual weight-decay rule
 * ("no decay for biases and batch-norm parameters"):
 *
 *     kiln_tensor *ps[256], *dec[256], *nodec[256];
 *     int n = kiln_module_parameters(net, ps, 256), nd, nn;
 *     kiln_params_split_decay(n, ps, dec, &nd, nodec, &nn);   // ndim >= 2 / ndim <= 1
 *     kiln_sgd_opts o = kiln_sgd_defaults();
 *     o.lr = 0.1;  o.momentum = 0.9;  o.nesterov = true;  o.weight_decay = 5e-4;
 *     kiln_optim *opt = kiln_sgd(ctx, dec, nd, &o);          // group 0: decayed
 *     o.weight_decay = 0;
 *     kiln_optim_add_sgd_group(opt, nodec, nn, &o);          // group 1: not decayed
 *
 * Skipped parameters. A parameter whose gradient is NULL (backward never reached it) or
 * whose requires_grad is off (frozen, kiln_module_set_requires_grad; its gradient, if any,
 * is stale) is skipped by kiln_optim_step: no update, no weight decay, no momentum, and it
 * keeps its state and step count, as in torch (whose zero_grad leaves a frozen parameter's
 * gradient None). Frozen parameters are accepted at creation, so one optimizer can cover a
 * backbone that is unfrozen later.
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
 * params: n > 0 distinct, non-overlapping, contiguous F32 leaf tensors of ctx (trained
 * when they require grad: kiln_tensor_set_requires_grad). opts NULL means the defaults. Invalid hyper-parameters fail
 * with torch's messages ("Invalid learning rate: -1", "Nesterov momentum requires a momentum and zero dampening"); a
 * bad parameter fails naming its index and shape. NULL on error (the context holds why). The list itself is copied; the
 * tensors are not. */
KILN_API kiln_optim *kiln_sgd(kiln_ctx *ctx, kiln_tensor *const *params, int n, const kiln_sgd_opts *opts);
KILN_API kiln_optim *kiln_rmsprop(kiln_ctx *ctx, kiln_tensor *const *params, int n, const kiln_rmsprop_opts *opts);
KILN_API kiln_optim *kiln_adam(kiln_ctx *ctx, kiln_tensor *const *params, int n, const kiln_adam_opts *opts);
KILN_API kiln_optim *kiln_adamw(kiln_ctx *ctx, kiln_tensor *const *params, int n, const kiln_adam_opts *opts);

/* Appends a parameter group (torch's add_param_group): params[0..n) (n >= 0), checked as at
 * creation and disjoint from every parameter already there, with its own options (NULL: the
 * constructor's). The call must match the optimizer's kind (add_adam_group serves Adam and
 * AdamW). Nothing changes on failure. A scheduler made before the call does not schedule
 * the new group (torch's base_lrs are fixed at construction). */
KILN_API kiln_status kiln_optim_add_sgd_group(kiln_optim *opt, kiln_tensor *const *params, int n,
                                              const kiln_sgd_opts *opts);
KILN_API kiln_status kiln_optim_add_rmsprop_group(kiln_optim *opt, kiln_tensor *const *params, int n,
                                                  const kiln_rmsprop_opts *opts);
KILN_API kiln_status kiln_optim_add_adam_group(kiln_optim *opt, kiln_tensor *const *params, int n,
                                               const kiln_adam_opts *opts);
/* Number of groups (0 with kiln_last_error() set for NULL). */
KILN_API int kiln_optim_num_groups(const kiln_optim *opt);
/* The group of parameter i; -1 on error. */
KILN_API int kiln_optim_param_group(const kiln_optim *opt, int i);
/* Group g's lr (param_groups[g]['lr']); NaN on error. set_lr rejects lr < 0 / NaN. */
KILN_API double kiln_optim_group_lr(const kiln_optim *opt, int g);
KILN_API kiln_status kiln_optim_group_set_lr(kiln_optim *opt, int g, double lr);
/* Group g's weight_decay; NaN on error. */
KILN_API double kiln_optim_group_weight_decay(const kiln_optim *opt, int g);

/* Splits params[0..n) by torch users' weight-decay rule: tensors of 2 or more dimensions
 * (convolution and linear weights) to decay, those of 0 or 1 (biases, batch-norm weights
 * and biases) to no_decay, in order. Each output array needs room for n. Context-less:
 * errors (a NULL array or parameter) through kiln_last_error(). */
KILN_API kiln_status kiln_params_split_decay(int n, kiln_tensor *const *params, kiln_tensor **decay, int *n_decay,
                                             kiln_tensor **no_decay, int *n_no_decay);

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

/* The learning rate of group 0 (param_groups[0]['lr']); NaN for NULL. set_lr sets every
 * group's lr to lr (kiln_optim_group_set_lr sets one); it rejects lr < 0 / NaN. */
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
 * (NULL gradients, and those of frozen parameters (requires_grad off; stale), are skipped;
 * the tensors need not belong to an optimizer). Gradients are
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
 * torch.optim.lr_scheduler with last_epoch=-1: creating a scheduler records each group's
 * initial lr (torch's group['initial_lr'], set by the first scheduler of the optimizer) as
 * that group's base lr and performs the initial step (LinearLR multiplies the lr by
 * start_factor at once); each kiln_lr_sched_step sets every group's lr with torch's
 * chainable (recursive) get_lr formula in double, so after k steps each group's lr equals
 * torch's after k scheduler.step() calls bit for bit. "Epoch" is torch's word: step once
 * per batch for a per-step schedule (then t_max, total_iters and milestones count steps). */

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

/* torch's SequentialLR(opt, scheds, milestones): scheds[0] runs until step milestones[0],
 * where scheds[1] starts from its beginning (torch's step(0): its closed form, so the base
 * lr), and so on; milestones has n - 1 increasing entries >= 1. Takes ownership of scheds[]
 * (also on failure; they are freed with it) which must be made on opt, in order, just
 * before. Linear warm-up over W steps, then cosine to 0 over the remaining T - W:
 *
 *     kiln_lr_sched *ph[2] = {kiln_linear_lr(opt, 1e-3, 1.0, W), kiln_cosine_annealing_lr(opt, T - W, 0)};
 *     kiln_lr_sched *s = kiln_sequential_lr(opt, ph, 2, (int[]){W});   // step it every batch
 *
 * Its last_lr and last_epoch are its own; set_last_epoch resumes the active scheduler. */
KILN_API kiln_lr_sched *kiln_sequential_lr(kiln_optim *opt, kiln_lr_sched *const *scheds, int n, const int *milestones);

/* Advances one epoch and sets the optimizer's lr. */
KILN_API kiln_status kiln_lr_sched_step(kiln_lr_sched *s);
/* The lr the last step set in group 0 (get_last_lr()[0]); NaN for NULL. */
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

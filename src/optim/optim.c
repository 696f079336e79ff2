/* src/optim/optim.c - SGD, RMSprop, Adam and AdamW with torch.optim's semantics, their
 * state for checkpoints, and gradient clipping (kernels in cl_kernels/optim.cl).
 *
 * The host keeps everything torch keeps in Python: hyper-parameters as doubles, a step
 * count per parameter (torch's state[p]['step']) and which state tensors exist. A step
 * turns them into float kernel arguments (bias corrections included), so it enqueues one
 * kernel per KILN_OPT_MULTI parameters that share those arguments (a multi-tensor step, as
 * torch's foreach) and never waits. State tensors are made lazily, when a parameter
 * is first updated, as torch makes its state. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "optim_internal.h"

#define OPT_PROGRAM "optim"
#define OPT_NSLOT 3
#define OPT_NAME_CAP 40

typedef enum opt_kind { OPT_SGD, OPT_RMSPROP, OPT_ADAM, OPT_ADAMW } opt_kind;
static const char *const kind_name[] = {"SGD", "RMSprop", "Adam", "AdamW"};
static const char *const ctor_name[] = {"kiln_sgd", "kiln_rmsprop", "kiln_adam", "kiln_adamw"};

/* State slots per kind, in torch's insertion order (its state_dict order). */
static const char *const slot_key[4][OPT_NSLOT] = {
    {"momentum_buffer", NULL, NULL},
    {"square_avg", "momentum_buffer", "grad_avg"},
    {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"},
    {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"},
};

/* One parameter group (torch's param_groups[g]): its hyper-parameters and the state slots
 * they use. */
typedef struct opt_group {
    double lr, momentum, dampening, weight_decay, alpha, eps, beta1, beta2;
    bool nesterov, centered, amsgrad, maximize;
    bool used[OPT_NSLOT]; /* slots this group's configuration uses */
    double initial_lr;    /* torch's group['initial_lr'], set by the first scheduler */
    bool has_initial_lr;
} opt_group;

typedef struct opt_param {
    kiln_tensor *p;
    kiln_tensor *state[OPT_NSLOT];
    int group;
    int64_t step;
    bool fresh; /* SGD: the momentum buffer was just made; the next update sets it to d_p */
} opt_param;

struct kiln_optim {
    kiln_ctx *ctx;
    opt_kind kind;
    opt_group defaults; /* the constructor's options: a group added without options gets them */
    int ngroups;
    opt_group *groups;
    int n;
    opt_param *ps;
    char *names; /* n * OPT_NSLOT names of OPT_NAME_CAP bytes */
    bool multi;  /* *_multi launches (else one launch per parameter) */
};

/* Used by src/optim/sched.c (torch's schedulers write param_group['lr'] unchecked and
 * take group.setdefault('initial_lr', lr) as their base). */
void kiln__optim_set_lr_raw(kiln_optim *opt, int g, double lr);
double kiln__optim_initial_lr(kiln_optim *opt, int g);
void kiln__optim_reset_lr(kiln_optim *opt);

/* Python's repr of a float ("-1.0", "0.1", "nan"), for torch's error messages. */
static const char *pyfloat(double v, char *buf, size_t cap) {
    if (isnan(v)) return snprintf(buf, cap, "nan"), buf;
    if (isinf(v)) return snprintf(buf, cap, v > 0 ? "inf" : "-inf"), buf;
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, cap, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    if (!strpbrk(buf, ".e")) {
        size_t l = strlen(buf);
        if (l + 2 < cap) memcpy(buf + l, ".0", 3);
    }
    return buf;
}

/* ---- creation ------------------------------------------------------------------------ */

/* params[0..n) checked for a new group of o: leaves of o's context, f32, contiguous, and
 * sharing memory with neither each other nor a parameter o already has. Parameters with
 * requires_grad off are accepted (frozen: kiln_optim_step skips them), as torch accepts them. */
static bool check_params(const kiln_optim *o, kiln_ctx *ctx, const char *op, kiln_tensor *const *params, int n) {
    char sb[160], st[160];
    if (n > 0 && !params) {
        kiln__fail(ctx, KILN_ERR_NULL, "%s: params is NULL", op);
        return false;
    }
    if (n < 0 || (n == 0 && !o)) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: optimizer got an empty parameter list (n = %d)", op, n);
        return false;
    }
    int have = o ? o->n : 0;
    for (int i = 0; i < n; i++) {
        kiln_tensor *p = params[i];
        if (!p) {
            kiln__fail(ctx, KILN_ERR_NULL, "%s: parameter %d is NULL", op, i);
            return false;
        }
        kiln__shape_str(p->ndim, p->shape, sb, sizeof sb);
        if (p->ctx != ctx) {
            kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: parameter %d %s belongs to another context", op, i, sb);
            return false;
        }
        if (p->dtype != KILN_F32) {
            kiln__fail(ctx, KILN_ERR_DTYPE, "%s: parameter %d %s has dtype %s; optimizers update f32 tensors", op, i,
                       sb, kiln_dtype_name(p->dtype));
            return false;
        }
        if (!kiln__is_contiguous(p)) {
            kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                       "%s: parameter %d %s is not contiguous (strides %s); optimize its contiguous base tensor", op, i,
                       sb, kiln__shape_str(p->ndim, p->strides, st, sizeof st));
            return false;
        }
        if (p->node) {
            kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                       "%s: parameter %d %s was made by %s; can't optimize a non-leaf "
                       "tensor",
                       op, i, sb, p->node->op);
            return false;
        }
        int64_t a0 = p->offset, a1 = a0 + kiln__numel(p->ndim, p->shape);
        /* earlier parameters of this call, then those of the optimizer's other groups */
        for (int j = 0; j < i + have; j++) {
            kiln_tensor *q = j < i ? params[j] : o->ps[j - i].p;
            int64_t b0 = q->offset, b1 = b0 + kiln__numel(q->ndim, q->shape);
            if (q == p || (q->st == p->st && a0 < b1 && b0 < a1 && a0 < a1 && b0 < b1)) {
                if (j < i)
                    kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                               "%s: parameters %d and %d %s share memory (%s); each "
                               "parameter must appear once",
                               op, j, i, sb, q == p ? "the same tensor" : "overlapping views");
                else
                    kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                               "%s: parameter %d %s shares memory with the optimizer's parameter %d (%s); some "
                               "parameters appear in more than one parameter group",
                               op, i, sb, j - i, q == p ? "the same tensor" : "overlapping views");
                return false;
            }
        }
    }
    return true;
}

static kiln_optim *opt_new(kiln_ctx *ctx, opt_kind kind, const opt_group *defaults) {
    kiln_optim *o = calloc(1, sizeof *o);
    if (!o) {
        kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", ctor_name[kind]);
        return NULL;
    }
    o->ctx = ctx;
    o->kind = kind;
    o->defaults = *defaults;
    /* multi-tensor launches when the device takes their arguments (five buffers per
     * parameter); KILN_OPTIM_SINGLE set (tests) forces the one-launch-per-parameter path */
    size_t max = 0;
    clGetDeviceInfo(ctx->device, CL_DEVICE_MAX_PARAMETER_SIZE, sizeof max, &max, NULL);
    size_t need = sizeof(kiln_opt_table) + 5 * KILN_OPT_MULTI * sizeof(cl_mem) + 16 * sizeof(cl_float);
    o->multi = max >= need && !getenv("KILN_OPTIM_SINGLE");
    return o;
}

/* Appends a group of params[0..n) (checked) with hyper-parameters *g; names "<i>.<key>"
 * of the slots the group uses. Nothing changes on failure. */
static kiln_status opt_add(kiln_optim *o, const char *op, kiln_tensor *const *params, int n, const opt_group *g) {
    int total = o->n + n;
    opt_group *gs = realloc(o->groups, sizeof *gs * (size_t)(o->ngroups + 1));
    if (gs) o->groups = gs;
    opt_param *ps = gs ? realloc(o->ps, sizeof *ps * (size_t)(total > 0 ? total : 1)) : NULL;
    if (ps) o->ps = ps;
    char *names = ps ? realloc(o->names, (size_t)(total > 0 ? total : 1) * OPT_NSLOT * OPT_NAME_CAP) : NULL;
    if (!names)
        return kiln__fail(o->ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory for %d parameters", op, n);
    o->names = names;
    o->groups[o->ngroups] = *g;
    for (int i = 0; i < n; i++) {
        int k = o->n + i;
        memset(&ps[k], 0, sizeof ps[k]);
        ps[k].p = params[i];
        ps[k].group = o->ngroups;
        for (int s = 0; s < OPT_NSLOT; s++) {
            char *nm = names + ((size_t)k * OPT_NSLOT + s) * OPT_NAME_CAP;
            nm[0] = '\0';
            if (g->used[s]) snprintf(nm, OPT_NAME_CAP, "%d.%s", k, slot_key[o->kind][s]);
        }
    }
    o->ngroups++;
    o->n = total;
    return KILN_OK;
}

/* Validation with torch's messages; op names the kiln function. */
#define BAD(cond, ...)                                                                                                 \
    do {                                                                                                               \
        if (cond) {                                                                                                    \
            kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, __VA_ARGS__);                                                   \
            return false;                                                                                              \
        }                                                                                                              \
    } while (0)

static bool check_sgd(kiln_ctx *ctx, const char *op, const kiln_sgd_opts *o) {
    char b[40];
    BAD(!(o->lr >= 0), "%s: Invalid learning rate: %s", op, pyfloat(o->lr, b, sizeof b));
    BAD(!(o->momentum >= 0), "%s: Invalid momentum value: %s", op, pyfloat(o->momentum, b, sizeof b));
    BAD(!(o->weight_decay >= 0), "%s: Invalid weight_decay value: %s", op, pyfloat(o->weight_decay, b, sizeof b));
    BAD(isnan(o->dampening), "%s: Invalid dampening value: %s", op, pyfloat(o->dampening, b, sizeof b));
    BAD(o->nesterov && (o->momentum <= 0 || o->dampening != 0),
        "%s: Nesterov momentum requires a momentum and zero dampening (momentum %s, dampening %g)", op,
        pyfloat(o->momentum, b, sizeof b), o->dampening);
    return true;
}

static bool check_rmsprop(kiln_ctx *ctx, const char *op, const kiln_rmsprop_opts *o) {
    char b[40];
    BAD(!(o->lr >= 0), "%s: Invalid learning rate: %s", op, pyfloat(o->lr, b, sizeof b));
    BAD(!(o->eps >= 0), "%s: Invalid epsilon value: %s", op, pyfloat(o->eps, b, sizeof b));
    BAD(!(o->momentum >= 0), "%s: Invalid momentum value: %s", op, pyfloat(o->momentum, b, sizeof b));
    BAD(!(o->weight_decay >= 0), "%s: Invalid weight_decay value: %s", op, pyfloat(o->weight_decay, b, sizeof b));
    BAD(!(o->alpha >= 0), "%s: Invalid alpha value: %s", op, pyfloat(o->alpha, b, sizeof b));
    return true;
}

static bool check_adam(kiln_ctx *ctx, const char *op, const kiln_adam_opts *o) {
    char b[40];
    BAD(!(o->lr >= 0), "%s: Invalid learning rate: %s", op, pyfloat(o->lr, b, sizeof b));
    BAD(!(o->eps >= 0), "%s: Invalid epsilon value: %s", op, pyfloat(o->eps, b, sizeof b));
    BAD(!(o->beta1 >= 0 && o->beta1 < 1), "%s: Invalid beta parameter at index 0: %s", op,
        pyfloat(o->beta1, b, sizeof b));
    BAD(!(o->beta2 >= 0 && o->beta2 < 1), "%s: Invalid beta parameter at index 1: %s", op,
        pyfloat(o->beta2, b, sizeof b));
    BAD(!(o->weight_decay >= 0), "%s: Invalid weight_decay value: %s", op, pyfloat(o->weight_decay, b, sizeof b));
    return true;
}

kiln_sgd_opts kiln_sgd_defaults(void) { return (kiln_sgd_opts){.lr = 1e-3}; }
kiln_rmsprop_opts kiln_rmsprop_defaults(void) { return (kiln_rmsprop_opts){.lr = 1e-2, .alpha = 0.99, .eps = 1e-8}; }
kiln_adam_opts kiln_adam_defaults(void) {
    return (kiln_adam_opts){.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8};
}
kiln_adam_opts kiln_adamw_defaults(void) {
    return (kiln_adam_opts){.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 1e-2};
}

static bool check_ctx(kiln_ctx *ctx, const char *op) {
    if (!ctx) kiln__fail_global(KILN_ERR_NULL, "%s: ctx is NULL", op);
    return ctx != NULL;
}

static opt_group sgd_group(const kiln_sgd_opts *o) {
    opt_group g = {.lr = o->lr,
                   .momentum = o->momentum,
                   .dampening = o->dampening,
                   .weight_decay = o->weight_decay,
                   .nesterov = o->nesterov,
                   .maximize = o->maximize};
    g.used[0] = o->momentum != 0;
    return g;
}

static opt_group rmsprop_group(const kiln_rmsprop_opts *o) {
    opt_group g = {.lr = o->lr,
                   .alpha = o->alpha,
                   .eps = o->eps,
                   .weight_decay = o->weight_decay,
                   .momentum = o->momentum,
                   .centered = o->centered,
                   .maximize = o->maximize};
    g.used[0] = true;
    g.used[1] = o->momentum > 0;
    g.used[2] = o->centered;
    return g;
}

static opt_group adam_group(const kiln_adam_opts *o) {
    opt_group g = {.lr = o->lr,
                   .beta1 = o->beta1,
                   .beta2 = o->beta2,
                   .eps = o->eps,
                   .weight_decay = o->weight_decay,
                   .amsgrad = o->amsgrad,
                   .maximize = o->maximize};
    g.used[0] = g.used[1] = true;
    g.used[2] = o->amsgrad;
    return g;
}

/* A new optimizer of one group: params checked, then made. */
static kiln_optim *opt_create(kiln_ctx *ctx, opt_kind kind, kiln_tensor *const *params, int n, const opt_group *g) {
    const char *op = ctor_name[kind];
    if (!check_params(NULL, ctx, op, params, n)) return NULL;
    kiln_optim *o = opt_new(ctx, kind, g);
    if (o && opt_add(o, op, params, n, g) != KILN_OK) {
        kiln_optim_free(o);
        return NULL;
    }
    return o;
}

kiln_optim *kiln_sgd(kiln_ctx *ctx, kiln_tensor *const *params, int n, const kiln_sgd_opts *opts) {
    if (!check_ctx(ctx, "kiln_sgd")) return NULL;
    kiln_sgd_opts d = kiln_sgd_defaults();
    if (!opts) opts = &d;
    if (!check_sgd(ctx, "kiln_sgd", opts)) return NULL;
    opt_group g = sgd_group(opts);
    return opt_create(ctx, OPT_SGD, params, n, &g);
}

kiln_optim *kiln_rmsprop(kiln_ctx *ctx, kiln_tensor *const *params, int n, const kiln_rmsprop_opts *opts) {
    if (!check_ctx(ctx, "kiln_rmsprop")) return NULL;
    kiln_rmsprop_opts d = kiln_rmsprop_defaults();
    if (!opts) opts = &d;
    if (!check_rmsprop(ctx, "kiln_rmsprop", opts)) return NULL;
    opt_group g = rmsprop_group(opts);
    return opt_create(ctx, OPT_RMSPROP, params, n, &g);
}

static kiln_optim *adam_new(kiln_ctx *ctx, opt_kind kind, kiln_tensor *const *params, int n,
                            const kiln_adam_opts *opts) {
    const char *op = ctor_name[kind];
    if (!check_ctx(ctx, op)) return NULL;
    kiln_adam_opts d = kind == OPT_ADAMW ? kiln_adamw_defaults() : kiln_adam_defaults();
    if (!opts) opts = &d;
    if (!check_adam(ctx, op, opts)) return NULL;
    opt_group g = adam_group(opts);
    return opt_create(ctx, kind, params, n, &g);
}

kiln_optim *kiln_adam(kiln_ctx *ctx, kiln_tensor *const *params, int n, const kiln_adam_opts *opts) {
    return adam_new(ctx, OPT_ADAM, params, n, opts);
}

kiln_optim *kiln_adamw(kiln_ctx *ctx, kiln_tensor *const *params, int n, const kiln_adam_opts *opts) {
    return adam_new(ctx, OPT_ADAMW, params, n, opts);
}

/* ---- parameter groups ------------------------------------------------------------------ */

/* The checks every add_*_group shares; want names the kinds the call is for. */
static bool group_check(kiln_optim *opt, const char *op, bool kind_ok, const char *want) {
    if (!opt) {
        kiln__fail_global(KILN_ERR_NULL, "%s: optimizer is NULL", op);
        return false;
    }
    if (!kind_ok) {
        kiln__fail(opt->ctx, KILN_ERR_INVALID_ARGUMENT, "%s: the optimizer is %s; this call adds %s groups", op,
                   kind_name[opt->kind], want);
        return false;
    }
    return true;
}

kiln_status kiln_optim_add_sgd_group(kiln_optim *opt, kiln_tensor *const *params, int n, const kiln_sgd_opts *opts) {
    const char *op = "kiln_optim_add_sgd_group";
    if (!group_check(opt, op, opt && opt->kind == OPT_SGD, "SGD")) return opt ? opt->ctx->err : KILN_ERR_NULL;
    opt_group g = opts ? sgd_group(opts) : opt->defaults;
    if ((opts && !check_sgd(opt->ctx, op, opts)) || !check_params(opt, opt->ctx, op, params, n)) return opt->ctx->err;
    return opt_add(opt, op, params, n, &g);
}

kiln_status kiln_optim_add_rmsprop_group(kiln_optim *opt, kiln_tensor *const *params, int n,
                                         const kiln_rmsprop_opts *opts) {
    const char *op = "kiln_optim_add_rmsprop_group";
    if (!group_check(opt, op, opt && opt->kind == OPT_RMSPROP, "RMSprop")) return opt ? opt->ctx->err : KILN_ERR_NULL;
    opt_group g = opts ? rmsprop_group(opts) : opt->defaults;
    if ((opts && !check_rmsprop(opt->ctx, op, opts)) || !check_params(opt, opt->ctx, op, params, n))
        return opt->ctx->err;
    return opt_add(opt, op, params, n, &g);
}

kiln_status kiln_optim_add_adam_group(kiln_optim *opt, kiln_tensor *const *params, int n, const kiln_adam_opts *opts) {
    const char *op = "kiln_optim_add_adam_group";
    if (!group_check(opt, op, opt && (opt->kind == OPT_ADAM || opt->kind == OPT_ADAMW), "Adam and AdamW"))
        return opt ? opt->ctx->err : KILN_ERR_NULL;
    opt_group g = opts ? adam_group(opts) : opt->defaults;
    if ((opts && !check_adam(opt->ctx, op, opts)) || !check_params(opt, opt->ctx, op, params, n)) return opt->ctx->err;
    return opt_add(opt, op, params, n, &g);
}

int kiln_optim_num_groups(const kiln_optim *opt) {
    if (!opt) return kiln__fail_global(KILN_ERR_NULL, "kiln_optim_num_groups: optimizer is NULL"), 0;
    return opt->ngroups;
}

int kiln_optim_param_group(const kiln_optim *opt, int i) {
    if (!opt) return kiln__fail_global(KILN_ERR_NULL, "kiln_optim_param_group: optimizer is NULL"), -1;
    if (i < 0 || i >= opt->n)
        return kiln__fail(opt->ctx, KILN_ERR_RANGE, "kiln_optim_param_group: parameter %d of %d", i, opt->n), -1;
    return opt->ps[i].group;
}

double kiln_optim_group_lr(const kiln_optim *opt, int g) {
    if (!opt) return kiln__fail_global(KILN_ERR_NULL, "kiln_optim_group_lr: optimizer is NULL"), NAN;
    if (g < 0 || g >= opt->ngroups)
        return kiln__fail(opt->ctx, KILN_ERR_RANGE, "kiln_optim_group_lr: group %d of %d", g, opt->ngroups), NAN;
    return opt->groups[g].lr;
}

kiln_status kiln_optim_group_set_lr(kiln_optim *opt, int g, double lr) {
    char b[40];
    const char *op = "kiln_optim_group_set_lr";
    if (!opt) return kiln__fail_global(KILN_ERR_NULL, "%s: optimizer is NULL", op);
    if (g < 0 || g >= opt->ngroups)
        return kiln__fail(opt->ctx, KILN_ERR_RANGE, "%s: group %d of %d", op, g, opt->ngroups);
    if (!(lr >= 0))
        return kiln__fail(opt->ctx, KILN_ERR_INVALID_ARGUMENT, "%s: Invalid learning rate: %s", op,
                          pyfloat(lr, b, sizeof b));
    opt->groups[g].lr = lr;
    return KILN_OK;
}

double kiln_optim_group_weight_decay(const kiln_optim *opt, int g) {
    if (!opt) return kiln__fail_global(KILN_ERR_NULL, "kiln_optim_group_weight_decay: optimizer is NULL"), NAN;
    if (g < 0 || g >= opt->ngroups)
        return kiln__fail(opt->ctx, KILN_ERR_RANGE, "kiln_optim_group_weight_decay: group %d of %d", g, opt->ngroups),
               NAN;
    return opt->groups[g].weight_decay;
}

kiln_status kiln_params_split_decay(int n, kiln_tensor *const *params, kiln_tensor **decay, int *n_decay,
                                    kiln_tensor **no_decay, int *n_no_decay) {
    const char *op = "kiln_params_split_decay";
    kiln__clear_global();
    if (n_decay) *n_decay = 0;
    if (n_no_decay) *n_no_decay = 0;
    if (n < 0) return kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "%s: n = %d", op, n);
    if ((n > 0 && !params) || !decay || !n_decay || !no_decay || !n_no_decay)
        return kiln__fail_global(KILN_ERR_NULL, "%s: %s is NULL", op,
                                 n > 0 && !params ? "params"
                                 : !decay         ? "decay"
                                 : !n_decay       ? "n_decay"
                                 : !no_decay      ? "no_decay"
                                                  : "n_no_decay");
    for (int i = 0; i < n; i++)
        if (!params[i]) return kiln__fail_global(KILN_ERR_NULL, "%s: parameter %d is NULL", op, i);
    for (int i = 0; i < n; i++) {
        if (params[i]->ndim >= 2)
            decay[(*n_decay)++] = params[i];
        else
            no_decay[(*n_no_decay)++] = params[i];
    }
    return KILN_OK;
}

void kiln_optim_free(kiln_optim *opt) {
    if (!opt) return;
    for (int i = 0; i < opt->n; i++)
        for (int s = 0; s < OPT_NSLOT; s++) kiln_tensor_free(opt->ps[i].state[s]);
    free(opt->ps);
    free(opt->names);
    free(opt->groups);
    free(opt);
}

/* ---- properties ---------------------------------------------------------------------- */

kiln_ctx *kiln_optim_ctx(const kiln_optim *opt) { return opt ? opt->ctx : NULL; }
const char *kiln_optim_kind(const kiln_optim *opt) { return opt ? kind_name[opt->kind] : NULL; }
int kiln_optim_num_params(const kiln_optim *opt) { return opt ? opt->n : 0; }
kiln_tensor *kiln_optim_param(const kiln_optim *opt, int i) {
    return opt && i >= 0 && i < opt->n ? opt->ps[i].p : NULL;
}

double kiln_optim_lr(const kiln_optim *opt) {
    if (!opt) return kiln__fail_global(KILN_ERR_NULL, "kiln_optim_lr: optimizer is NULL"), NAN;
    return opt->groups[0].lr;
}

kiln_status kiln_optim_set_lr(kiln_optim *opt, double lr) {
    char b[40];
    if (!opt) return kiln__fail_global(KILN_ERR_NULL, "kiln_optim_set_lr: optimizer is NULL");
    if (!(lr >= 0))
        return kiln__fail(opt->ctx, KILN_ERR_INVALID_ARGUMENT, "kiln_optim_set_lr: Invalid learning rate: %s",
                          pyfloat(lr, b, sizeof b));
    for (int g = 0; g < opt->ngroups; g++) opt->groups[g].lr = lr;
    return KILN_OK;
}

void kiln__optim_set_lr_raw(kiln_optim *opt, int g, double lr) { opt->groups[g].lr = lr; }

double kiln__optim_initial_lr(kiln_optim *opt, int g) {
    opt_group *q = &opt->groups[g];
    if (!q->has_initial_lr) {
        q->initial_lr = q->lr;
        q->has_initial_lr = true;
    }
    return q->initial_lr;
}

/* SequentialLR's construction: every group's lr back to its initial_lr. */
void kiln__optim_reset_lr(kiln_optim *opt) {
    for (int g = 0; g < opt->ngroups; g++) opt->groups[g].lr = kiln__optim_initial_lr(opt, g);
}

/* ---- state ----------------------------------------------------------------------------- */

/* Makes slot s of parameter i: zeros, or (SGD's momentum buffer, which the first step sets
 * to the gradient) uninitialised. Kept out of every scope. */
static kiln_tensor *state_new(kiln_optim *opt, int i, int s, bool zero) {
    kiln_tensor *p = opt->ps[i].p;
    kiln_tensor *t = zero ? kiln_zeros(opt->ctx, p->ndim, p->shape)
                          : kiln__tensor_new(opt->ctx, "kiln_optim_step", KILN_F32, p->ndim, p->shape);
    if (t) opt->ps[i].state[s] = kiln_tensor_keep(t);
    return t;
}

int kiln_optim_num_states(const kiln_optim *opt) {
    if (!opt) return kiln__fail_global(KILN_ERR_NULL, "kiln_optim_num_states: optimizer is NULL"), 0;
    int k = 0;
    for (int j = 0; j < opt->n; j++)
        for (int s = 0; s < OPT_NSLOT; s++) k += opt->ps[j].state[s] != NULL;
    return k;
}

kiln_status kiln_optim_state(kiln_optim *opt, int i, const char **name, kiln_tensor **t) {
    if (!opt) return kiln__fail_global(KILN_ERR_NULL, "kiln_optim_state: optimizer is NULL");
    int k = 0;
    for (int j = 0; j < opt->n && i >= 0; j++) {
        for (int s = 0; s < OPT_NSLOT; s++) {
            if (!opt->ps[j].state[s]) continue;
            if (k++ < i) continue;
            if (name) *name = opt->names + ((size_t)j * OPT_NSLOT + s) * OPT_NAME_CAP;
            if (t) *t = opt->ps[j].state[s];
            return KILN_OK;
        }
    }
    return kiln__fail(opt->ctx, KILN_ERR_RANGE, "kiln_optim_state: entry %d of %d (kiln_optim_num_states)", i,
                      kiln_optim_num_states(opt));
}

bool kiln__optim_state_known(const kiln_optim *opt, const char *name) {
    if (!opt || !name) return false;
    char *end;
    long i = strtol(name, &end, 10);
    if (end == name || *end != '.' || name[0] < '0' || name[0] > '9' || i < 0 || i >= opt->n) return false;
    const bool *used = opt->groups[opt->ps[i].group].used;
    for (int s = 0; s < OPT_NSLOT; s++)
        if (used[s] && strcmp(end + 1, slot_key[opt->kind][s]) == 0) return true;
    return false;
}

kiln_tensor *kiln_optim_state_find(kiln_optim *opt, const char *name, bool create) {
    if (!opt) {
        kiln__fail_global(KILN_ERR_NULL, "kiln_optim_state_find: optimizer is NULL");
        return NULL;
    }
    if (!name) {
        kiln__fail(opt->ctx, KILN_ERR_NULL, "kiln_optim_state_find: name is NULL");
        return NULL;
    }
    char *end;
    long i = strtol(name, &end, 10);
    const bool *used = opt->defaults.used;
    if (end != name && *end == '.' && name[0] >= '0' && name[0] <= '9' && i >= 0 && i < opt->n) {
        used = opt->groups[opt->ps[i].group].used;
        for (int s = 0; s < OPT_NSLOT; s++) {
            if (!used[s] || strcmp(end + 1, slot_key[opt->kind][s]) != 0) continue;
            if (opt->ps[i].state[s] || !create) return opt->ps[i].state[s];
            return state_new(opt, (int)i, s, true);
        }
    }
    if (create)
        kiln__fail(opt->ctx, KILN_ERR_INVALID_ARGUMENT,
                   "kiln_optim_state_find: %s has no state '%s' (%d parameters; keys in this configuration: "
                   "%s%s%s%s%s)",
                   kind_name[opt->kind], name, opt->n, used[0] ? slot_key[opt->kind][0] : "", used[1] ? " " : "",
                   used[1] ? slot_key[opt->kind][1] : "", used[2] ? " " : "", used[2] ? slot_key[opt->kind][2] : "");
    return NULL;
}

int64_t kiln_optim_step_count(const kiln_optim *opt, int i) {
    if (!opt) return kiln__fail_global(KILN_ERR_NULL, "kiln_optim_step_count: optimizer is NULL"), -1;
    if (i < 0 || i >= opt->n)
        return kiln__fail(opt->ctx, KILN_ERR_RANGE, "kiln_optim_step_count: parameter %d of %d", i, opt->n), -1;
    return opt->ps[i].step;
}

kiln_status kiln_optim_set_step_count(kiln_optim *opt, int i, int64_t step) {
    if (!opt) return kiln__fail_global(KILN_ERR_NULL, "kiln_optim_set_step_count: optimizer is NULL");
    if (i < -1 || i >= opt->n || step < 0)
        return kiln__fail(opt->ctx, KILN_ERR_RANGE,
                          "kiln_optim_set_step_count: parameter %d step %lld out of range "
                          "(%d parameters, step >= 0)",
                          i, (long long)step, opt->n);
    for (int j = 0; j < opt->n; j++)
        if (i == -1 || j == i) opt->ps[j].step = step;
    return KILN_OK;
}

/* ---- step ------------------------------------------------------------------------------ */

/* The launch of an update kernel, with the GradScaler's found-inf flag (skip, NULL: none)
 * as its last argument and the KILN_SKIP build when there is one. */
static kiln_status launch_opt(kiln_optim *opt, const char *kernel, size_t na, kiln__karg *a, size_t n,
                              kiln_tensor *skip) {
    cl_int fioff = skip ? (cl_int)skip->offset : 0;
    if (skip) {
        a[na++] = KILN__ARG(skip->st->mem);
        a[na++] = KILN__ARG(fioff);
    }
    return kiln__launch(opt->ctx, "kiln_optim_step", OPT_PROGRAM, skip ? "-DKILN_SKIP" : "", kernel, na, a, n, 0);
}

/* The scalar arguments of parameter q's update kernel (one-tensor or *_multi: the same ones
 * in the same order), flags last: SGD lr, momentum, 1 - dampening, weight decay; RMSprop lr,
 * alpha, 1 - alpha, eps, weight decay, momentum; Adam/AdamW torch's Python arithmetic in
 * double with the step already incremented. first: SGD's momentum buffer starts from the
 * gradient. */
typedef struct opt_scalars {
    cl_float v[9];
    int nv;
    cl_int flags;
} opt_scalars;

static void scalars_of(const kiln_optim *opt, const opt_param *q, bool first, opt_scalars *sc) {
    const opt_group *o = &opt->groups[q->group];
    opt_kind kind = opt->kind;
    cl_int flags = o->maximize ? KILN_OPT_MAXIMIZE : 0;
    if (kind != OPT_ADAMW && o->weight_decay != 0) flags |= KILN_OPT_DECAY;
    if (kind == OPT_SGD) {
        if (o->momentum != 0) flags |= KILN_OPT_MOMENTUM;
        if (first) flags |= KILN_OPT_FIRST;
        if (o->nesterov) flags |= KILN_OPT_NESTEROV;
        *sc = (opt_scalars){
            {(cl_float)-o->lr, (cl_float)o->momentum, (cl_float)(1 - o->dampening), (cl_float)o->weight_decay},
            4,
            flags};
        return;
    }
    if (kind == OPT_RMSPROP) {
        if (o->momentum > 0) flags |= KILN_OPT_MOMENTUM;
        if (o->centered) flags |= KILN_OPT_CENTERED;
        *sc = (opt_scalars){{(cl_float)-o->lr, (cl_float)o->alpha, (cl_float)(1 - o->alpha), (cl_float)o->eps,
                             (cl_float)o->weight_decay, (cl_float)o->momentum},
                            6,
                            flags};
        return;
    }
    if (o->amsgrad) flags |= KILN_OPT_AMSGRAD;
    if (kind == OPT_ADAMW) flags |= KILN_OPT_DECOUPLED;
    double t = (double)(q->step + 1);
    double bc1 = 1 - pow(o->beta1, t), bc2 = 1 - pow(o->beta2, t);
    double step_size = o->lr / bc1;
    *sc = (opt_scalars){{(cl_float)o->beta1, (cl_float)(1 - o->beta1), (cl_float)o->beta2, (cl_float)(1 - o->beta2),
                         (cl_float)o->weight_decay, (cl_float)(1 - o->lr * o->weight_decay), (cl_float)-step_size,
                         (cl_float)sqrt(bc2), (cl_float)o->eps},
                        9,
                        flags};
}

/* Appends sc's arguments (the scalars, then flags) to a from index na; returns the count. */
static size_t scalar_args(opt_scalars *sc, kiln__karg *a, size_t na) {
    for (int j = 0; j < sc->nv; j++) a[na++] = KILN__ARG(sc->v[j]);
    a[na++] = KILN__ARG(sc->flags);
    return na;
}

static const char *const step_kernel[] = {
    [OPT_SGD] = "sgd", [OPT_RMSPROP] = "rmsprop", [OPT_ADAM] = "adam", [OPT_ADAMW] = "adam"};

/* One parameter's update: its buffers (SGD: the momentum buffer only; unused slots: the
 * parameter, never accessed), then the scalars. */
static kiln_status launch_update(kiln_optim *opt, int i, kiln_tensor *g, bool first, kiln_tensor *skip) {
    opt_param *q = &opt->ps[i];
    kiln_tensor *p = q->p;
    cl_int n = (cl_int)kiln__numel(p->ndim, p->shape);
    cl_int poff = (cl_int)p->offset, goff = (cl_int)g->offset;
    cl_mem mem[OPT_NSLOT];
    cl_int off[OPT_NSLOT];
    for (int s = 0; s < OPT_NSLOT; s++) {
        mem[s] = q->state[s] ? q->state[s]->st->mem : p->st->mem;
        off[s] = q->state[s] ? (cl_int)q->state[s]->offset : 0;
    }
    kiln__karg a[5 + 2 * OPT_NSLOT + 10 + 2];
    size_t na = 0;
    a[na++] = KILN__ARG(p->st->mem), a[na++] = KILN__ARG(poff);
    a[na++] = KILN__ARG(g->st->mem), a[na++] = KILN__ARG(goff);
    int nbuf = opt->kind == OPT_SGD ? 1 : OPT_NSLOT;
    for (int s = 0; s < nbuf; s++) a[na++] = KILN__ARG(mem[s]), a[na++] = KILN__ARG(off[s]);
    a[na++] = KILN__ARG(n);
    opt_scalars sc;
    scalars_of(opt, q, first, &sc);
    na = scalar_args(&sc, a, na);
    char kernel[24];
    snprintf(kernel, sizeof kernel, "%s_step", step_kernel[opt->kind]);
    return launch_opt(opt, kernel, na, a, (size_t)n, skip);
}

/* Whether parameters i and j update with the same kernel scalars. */
static bool same_scalars(const kiln_optim *opt, int i, int j) {
    const opt_param *a = &opt->ps[i], *b = &opt->ps[j];
    if (a->group != b->group || a->fresh != b->fresh) return false;
    /* only Adam's bias corrections depend on the step count */
    return (opt->kind != OPT_ADAM && opt->kind != OPT_ADAMW) || a->step == b->step;
}

/* One *_multi launch for parameters ps[idx[0..nb)] (same_scalars) with contiguous
 * gradients gs. Arithmetic as launch_update's, element by element. */
static kiln_status launch_multi(kiln_optim *opt, const int *idx, kiln_tensor *const *gs, int nb, kiln_tensor *skip) {
    const opt_param *q0 = &opt->ps[idx[0]];
    opt_kind kind = opt->kind;
    kiln_tensor *p0 = q0->p;
    kiln_opt_table T;
    memset(&T, 0, sizeof T);
    T.count = nb;
    /* unused argument slots: parameter 0's buffer, never accessed */
    cl_mem pm[KILN_OPT_MULTI], gm[KILN_OPT_MULTI], sm[OPT_NSLOT][KILN_OPT_MULTI];
    for (int k = 0; k < KILN_OPT_MULTI; k++) {
        const opt_param *q = k < nb ? &opt->ps[idx[k]] : q0;
        kiln_tensor *p = q->p;
        pm[k] = p->st->mem;
        gm[k] = k < nb ? gs[k]->st->mem : p0->st->mem;
        for (int sl = 0; sl < OPT_NSLOT; sl++) sm[sl][k] = q->state[sl] ? q->state[sl]->st->mem : p->st->mem;
        if (k >= nb) continue;
        T.start[k + 1] = T.start[k] + (cl_int)kiln__numel(p->ndim, p->shape);
        T.poff[k] = (cl_int)p->offset;
        T.goff[k] = (cl_int)gs[k]->offset;
        for (int sl = 0; sl < OPT_NSLOT; sl++) T.soff[sl][k] = q->state[sl] ? (cl_int)q->state[sl]->offset : 0;
    }
    kiln__karg a[1 + 5 * KILN_OPT_MULTI + 12];
    size_t na = 0;
    a[na++] = KILN__ARG(T);
    int nbuf = kind == OPT_SGD ? 1 : OPT_NSLOT;
    for (int k = 0; k < KILN_OPT_MULTI; k++) a[na++] = KILN__ARG(pm[k]);
    for (int k = 0; k < KILN_OPT_MULTI; k++) a[na++] = KILN__ARG(gm[k]);
    for (int sl = 0; sl < nbuf; sl++)
        for (int k = 0; k < KILN_OPT_MULTI; k++) a[na++] = KILN__ARG(sm[sl][k]);
    /* KILN_OPT_CHUNK elements per work-item (optim.cl) */
    size_t n = ((size_t)T.start[nb] + KILN_OPT_CHUNK - 1) / KILN_OPT_CHUNK;
    opt_scalars sc;
    scalars_of(opt, q0, q0->fresh, &sc);
    na = scalar_args(&sc, a, na);
    char kernel[24];
    snprintf(kernel, sizeof kernel, "%s_multi", step_kernel[kind]);
    return launch_opt(opt, kernel, na, a, n, skip);
}

static kiln_status optim_step(kiln_optim *opt, kiln_tensor *skip);

kiln_status kiln_optim_step(kiln_optim *opt) { return optim_step(opt, NULL); }

kiln_status kiln__optim_step_skip(kiln_optim *opt, kiln_tensor *found_inf) { return optim_step(opt, found_inf); }

static kiln_status optim_step(kiln_optim *opt, kiln_tensor *skip) {
    const char *op = "kiln_optim_step";
    if (!opt) return kiln__fail_global(KILN_ERR_NULL, "%s: optimizer is NULL", op);
    kiln_ctx *ctx = opt->ctx;
    char sp[160], sg[160];
    /* Every gradient is checked before any parameter changes. */
    for (int i = 0; i < opt->n; i++) {
        kiln_tensor *p = opt->ps[i].p, *g = p->grad;
        if (!g || !p->requires_grad) continue;
        bool same = g->ndim == p->ndim && memcmp(g->shape, p->shape, sizeof(int64_t) * (size_t)p->ndim) == 0;
        if (g->dtype != KILN_F32 || !same)
            return kiln__fail(ctx, g->dtype != KILN_F32 ? KILN_ERR_DTYPE : KILN_ERR_SHAPE,
                              "%s: parameter %d %s has a gradient %s %s; it must be f32 of the parameter's shape", op,
                              i, kiln__shape_str(p->ndim, p->shape, sp, sizeof sp),
                              kiln__shape_str(g->ndim, g->shape, sg, sizeof sg), kiln_dtype_name(g->dtype));
    }
    /* A step the device may skip cannot rely on its first update writing SGD's momentum
     * buffer from the gradient: the buffer starts at 0 instead, the same first update
     * (0 * momentum + d * 1) only without dampening. */
    for (int i = 0; skip && opt->kind == OPT_SGD && i < opt->n; i++) {
        const opt_group *o = &opt->groups[opt->ps[i].group];
        if (opt->ps[i].p->grad && !opt->ps[i].state[0] && o->momentum != 0 && o->dampening != 0)
            return kiln__fail(ctx, KILN_ERR_UNSUPPORTED,
                              "%s: parameter %d: SGD with momentum and dampening %g under a GradScaler (its first "
                              "update may be skipped on the device, so the momentum buffer starts at 0: the same "
                              "update as torch's only with dampening 0)",
                              op, i, o->dampening);
    }
    /* State first (allocation is what can fail), so a failure leaves parameters as they were. */
    for (int i = 0; i < opt->n; i++) {
        if (!opt->ps[i].p->grad || !opt->ps[i].p->requires_grad) continue;
        const bool *used = opt->groups[opt->ps[i].group].used;
        for (int s = 0; s < OPT_NSLOT; s++) {
            if (!used[s] || opt->ps[i].state[s]) continue;
            /* SGD's buffer is written from the gradient by its first step (zeroed when the
             * step may be skipped, above). */
            if (!state_new(opt, i, s, opt->kind != OPT_SGD || skip)) return ctx->err;
            if (opt->kind == OPT_SGD && !skip) opt->ps[i].fresh = true;
        }
    }
    /* Parameters that share their scalars (group, step count, a fresh SGD buffer) go up to
     * KILN_OPT_MULTI per launch, in order; a device that cannot take that many arguments
     * gets one launch per parameter. Non-contiguous gradients are copied first. */
    bool multi = opt->multi;
    int batch[KILN_OPT_MULTI], nb = 0;
    kiln_tensor *gcs[KILN_OPT_MULTI];
    int64_t total = 0;
    kiln_status s = KILN_OK;
    for (int i = 0; i <= opt->n && s == KILN_OK; i++) {
        opt_param *q = i < opt->n ? &opt->ps[i] : NULL;
        kiln_tensor *g = q ? q->p->grad : NULL;
        bool take = q && g && q->p->requires_grad;
        if (q && !take) continue; /* unreached, or frozen: a stale gradient */
        int64_t n = take ? kiln__numel(q->p->ndim, q->p->shape) : 0;
        if (take && n == 0) {
            q->fresh = false;
            q->step++;
            continue;
        }
        if (nb > 0 &&
            (!take || !multi || nb == KILN_OPT_MULTI || total + n > INT32_MAX || !same_scalars(opt, batch[0], i))) {
            s = multi ? launch_multi(opt, batch, gcs, nb, skip)
                      : launch_update(opt, batch[0], gcs[0], opt->ps[batch[0]].fresh, skip);
            for (int k = 0; k < nb; k++) {
                opt_param *d = &opt->ps[batch[k]];
                if (gcs[k] != d->p->grad) kiln_tensor_free(gcs[k]);
                d->fresh = false;
                d->step++;
            }
            nb = 0;
            total = 0;
        }
        if (!take || s != KILN_OK) continue;
        gcs[nb] = kiln__is_contiguous(g) ? g : kiln__copy_contiguous(ctx, op, g);
        if (!gcs[nb]) s = ctx->err;
        batch[nb++] = i;
        total += n;
    }
    return s;
}

/* One launch of a multi-tensor kernel over tensors gs[0..nb) (contiguous, at most
 * KILN_OPT_MULTI, at most INT32_MAX elements together), built with options: its
 * kiln_opt_table (start and goff of gs; poff of ds), the eight buffer arguments of gs
 * (unused slots: gs[0]'s, never accessed), with ds (NULL: none) the eight of ds [nb], then
 * nextra more. */
static kiln_status tensors_multi(kiln_ctx *ctx, const char *op, const char *options, const char *kernel,
                                 kiln_tensor *const *gs, kiln_tensor *const *ds, int nb, int nextra,
                                 const kiln__karg *extra) {
    kiln_opt_table T;
    memset(&T, 0, sizeof T);
    T.count = nb;
    cl_mem gm[KILN_OPT_MULTI], dm[KILN_OPT_MULTI];
    for (int k = 0; k < KILN_OPT_MULTI; k++) {
        gm[k] = (k < nb ? gs[k] : gs[0])->st->mem;
        if (ds) dm[k] = (k < nb ? ds[k] : ds[0])->st->mem;
        if (k >= nb) continue;
        T.start[k + 1] = T.start[k] + (cl_int)kiln__numel(gs[k]->ndim, gs[k]->shape);
        T.goff[k] = (cl_int)gs[k]->offset;
        if (ds) T.poff[k] = (cl_int)ds[k]->offset;
    }
    kiln__karg a[1 + 2 * KILN_OPT_MULTI + 4];
    size_t na = 0;
    a[na++] = KILN__ARG(T);
    for (int k = 0; k < KILN_OPT_MULTI; k++) a[na++] = KILN__ARG(gm[k]);
    for (int k = 0; ds && k < KILN_OPT_MULTI; k++) a[na++] = KILN__ARG(dm[k]);
    for (int j = 0; j < nextra; j++) a[na++] = extra[j];
    size_t n = ((size_t)T.start[nb] + KILN_OPT_CHUNK - 1) / KILN_OPT_CHUNK; /* KILN_OPT_CHUNK per work-item */
    return kiln__launch(ctx, op, OPT_PROGRAM, options, kernel, na, a, n, 0);
}

/* The same over gradients gs (f32), with the f32 build. */
static kiln_status grads_multi(kiln_ctx *ctx, const char *op, const char *kernel, kiln_tensor *const *gs, int nb,
                               int nextra, const kiln__karg *extra) {
    return tensors_multi(ctx, op, "", kernel, gs, NULL, nb, nextra, extra);
}

/* Whether the device takes the multi-tensor clipping and zeroing kernels' arguments (as the
 * updates', opt_new); KILN_OPTIM_SINGLE (tests) forces one launch per tensor. */
static bool grads_multi_ok(kiln_ctx *ctx) {
    size_t max = 0;
    clGetDeviceInfo(ctx->device, CL_DEVICE_MAX_PARAMETER_SIZE, sizeof max, &max, NULL);
    size_t need = sizeof(kiln_clip_table) + (KILN_OPT_MULTI + 2) * sizeof(cl_mem) + 16 * sizeof(cl_float);
    return max >= need && !getenv("KILN_OPTIM_SINGLE");
}

kiln_status kiln__optim_grads_foreach(kiln_optim *opt, const char *op, const char *kernel, int nextra,
                                      const kiln__karg *extra, bool trainable, kiln__grad_fn single, void *user) {
    kiln_ctx *ctx = opt->ctx;
    bool multi = opt->multi && grads_multi_ok(ctx);
    kiln_tensor *batch[KILN_OPT_MULTI];
    int nb = 0;
    int64_t total = 0;
    kiln_status s = KILN_OK;
    for (int i = 0; i <= opt->n && s == KILN_OK; i++) {
        kiln_tensor *p = i < opt->n ? opt->ps[i].p : NULL, *g = p ? p->grad : NULL;
        if (p && (!g || (trainable && !p->requires_grad))) continue;
        int64_t n = g ? kiln__numel(g->ndim, g->shape) : 0;
        bool mt = g && multi && g->dtype == KILN_F32 && kiln__is_contiguous(g) && n > 0;
        if (g && !mt) {
            s = single(ctx, g, user);
            continue;
        }
        if (nb > 0 && (!g || nb == KILN_OPT_MULTI || total + n > INT32_MAX)) {
            s = grads_multi(ctx, op, kernel, batch, nb, nextra, extra);
            nb = 0;
            total = 0;
        }
        if (g) batch[nb++] = g, total += n;
    }
    return s;
}

/* Converts the batch and hands each copy to the autocast cache, recorded as a cast. */
static kiln_status autocast_batch(kiln_ctx *ctx, kiln_tensor *const *src, int nb, kiln_dtype dt) {
    static const char op[] = "kiln_to_dtype";
    kiln_tensor *dst[KILN_OPT_MULTI] = {NULL};
    kiln_status s = KILN_OK;
    for (int k = 0; k < nb && s == KILN_OK; k++)
        if (!(dst[k] = kiln__tensor_new(ctx, op, dt, src[k]->ndim, src[k]->shape))) s = ctx->err;
    if (s == KILN_OK) s = tensors_multi(ctx, op, kiln__half_options(dt), "cast_multi", src, dst, nb, 0, NULL);
    for (int k = 0; k < nb; k++) {
        if (s != KILN_OK) {
            kiln_tensor_free(dst[k]);
            continue;
        }
        kiln_tensor *r = kiln__cast_record(ctx, src[k], dst[k]);
        s = r ? kiln__autocast_cache_put(ctx, src[k], r) : ctx->err;
    }
    return s;
}

kiln_status kiln__optim_autocast(kiln_optim *opt, kiln_dtype dt) {
    if (!opt) return kiln__fail_global(KILN_ERR_NULL, "kiln__optim_autocast: optimizer is NULL");
    kiln_ctx *ctx = opt->ctx;
    /* (with autograd recording: each copy's node then holds its parameter, so a cache
     * entry's parameter outlives the entry) */
    if (!kiln_dtype_is_half(dt) || ctx->autocast != dt || !ctx->grad_enabled || !opt->multi || !grads_multi_ok(ctx))
        return KILN_OK;
    kiln_tensor *batch[KILN_OPT_MULTI];
    int nb = 0;
    int64_t total = 0;
    kiln_status s = KILN_OK;
    for (int i = 0; i <= opt->n && s == KILN_OK; i++) {
        kiln_tensor *p = i < opt->n ? opt->ps[i].p : NULL;
        int64_t n = p ? kiln__numel(p->ndim, p->shape) : 0;
        if (p && (!p->requires_grad || p->dtype != KILN_F32 || !kiln__is_contiguous(p) || n == 0)) continue;
        if (nb > 0 && (!p || nb == KILN_OPT_MULTI || total + n > INT32_MAX)) {
            s = autocast_batch(ctx, batch, nb, dt);
            nb = 0;
            total = 0;
        }
        if (p) batch[nb++] = p, total += n;
    }
    return s;
}

static kiln_status zero_one(kiln_ctx *ctx, kiln_tensor *g, void *user) {
    (void)ctx, (void)user;
    return kiln_fill(g, 0.0f);
}

/* Zeroes the gradients: contiguous f32 ones up to KILN_OPT_MULTI per launch (zero_multi),
 * any other by kiln_fill. */
kiln_status kiln_optim_zero_grad(kiln_optim *opt) {
    if (!opt) return kiln__fail_global(KILN_ERR_NULL, "kiln_optim_zero_grad: optimizer is NULL");
    return kiln__optim_grads_foreach(opt, "kiln_optim_zero_grad", "zero_multi", 0, NULL, false, zero_one, NULL);
}

/* ---- gradient clipping --------------------------------------------------------------- */

/* Work-groups per gradient in clip_partial, whose work-items read float8 units (optim.cl's
 * clip_group): one per lp units, at most CLIP_MAX_GROUPS_GPU, or on CPUs at most
 * CLIP_MAX_GROUPS_CPU of at most CLIP_WG_CPU work-items. POCL runs a group's barrier tree
 * as one loop over its work-items per level, and the gradients of one multi launch already
 * fill the cores, so CPUs take fewer, smaller groups that each read more. */
#define CLIP_MAX_GROUPS_GPU 64
#define CLIP_MAX_GROUPS_CPU 8
#define CLIP_WG_CPU 16

static int64_t clip_groups(const kiln_ctx *ctx, int64_t m, size_t lp) {
    int64_t units = (m + 7) / 8, groups = (units + (int64_t)lp - 1) / (int64_t)lp;
    int64_t cap = ctx->info.type == KILN_DEVICE_CPU ? CLIP_MAX_GROUPS_CPU : CLIP_MAX_GROUPS_GPU;
    return groups < cap ? groups : cap;
}

/* The gradients of params[0..n) that exist, checked; NULL list (with the error set) on
 * failure, *ng = 0 and a non-NULL list when there are none. */
static kiln_tensor **clip_grads(kiln_ctx *ctx, const char *op, int n, kiln_tensor *const *params, int *ng) {
    char sb[160], sg[160];
    *ng = 0;
    if (!check_ctx(ctx, op)) return NULL;
    if (n < 0 || (n > 0 && !params)) {
        kiln__fail(ctx, n < 0 ? KILN_ERR_INVALID_ARGUMENT : KILN_ERR_NULL, "%s: %s (n = %d)", op,
                   n < 0 ? "negative parameter count" : "params is NULL", n);
        return NULL;
    }
    if (!kiln__check_inputs(ctx, op, n, params)) return NULL;
    kiln_tensor **gs = malloc(sizeof *gs * (size_t)(n > 0 ? n : 1));
    if (!gs) {
        kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", op);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        kiln_tensor *g = params[i]->grad;
        if (!g || !params[i]->requires_grad) continue; /* frozen: its gradient is stale */
        if (g->dtype != KILN_F32 || !kiln__is_contiguous(g)) {
            kiln__fail(ctx, g->dtype != KILN_F32 ? KILN_ERR_DTYPE : KILN_ERR_UNSUPPORTED,
                       "%s: the gradient %s of parameter %d %s is %s; clipping changes f32 contiguous gradients in "
                       "place",
                       op, kiln__shape_str(g->ndim, g->shape, sg, sizeof sg), i,
                       kiln__shape_str(params[i]->ndim, params[i]->shape, sb, sizeof sb),
                       g->dtype != KILN_F32 ? kiln_dtype_name(g->dtype) : "not contiguous");
            free(gs);
            return NULL;
        }
        gs[(*ng)++] = g;
    }
    return gs;
}

/* kiln_clip_grad_norm_tensor and kiln_clip_grad_norm; op names the one called. */
static kiln_tensor *clip_norm(kiln_ctx *ctx, const char *op, int n, kiln_tensor *const *params, double max_norm,
                              double norm_type) {
    char b[40];
    int ng;
    kiln_tensor **gs = clip_grads(ctx, op, n, params, &ng);
    if (!gs) return NULL;
    if (!(norm_type > 0)) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: norm_type %s is not supported (a p > 0 or INFINITY)", op,
                   pyfloat(norm_type, b, sizeof b));
        free(gs);
        return NULL;
    }
    if (ng == 0) { /* torch returns tensor(0.) and touches nothing */
        free(gs);
        return kiln__finish(ctx, op, kiln_zeros(ctx, 0, NULL));
    }
    cl_int mode = isinf(norm_type) ? KILN_CLIP_LINF
                  : norm_type == 2 ? KILN_CLIP_L2
                  : norm_type == 1 ? KILN_CLIP_L1
                                   : KILN_CLIP_LP;
    cl_float p = (cl_float)norm_type, mx = (cl_float)max_norm;
    size_t lp, lt;
    kiln_tensor *part = NULL, *out = NULL, *total = NULL;
    /* the trees in clip_* need a power-of-two work-group */
    if (kiln__tree_wg(ctx, OPT_PROGRAM, "", "clip_partial", ctx->info.type == KILN_DEVICE_CPU ? CLIP_WG_CPU : 0, &lp) !=
            KILN_OK ||
        kiln__tree_wg(ctx, OPT_PROGRAM, "", "clip_total", 0, &lt) != KILN_OK)
        goto fail;
    int64_t npart = 0;
    for (int k = 0; k < ng; k++) {
        npart += clip_groups(ctx, kiln__numel(gs[k]->ndim, gs[k]->shape), lp);
    }
    int64_t pn = npart > 0 ? npart : 1, two = 2;
    part = kiln__tensor_new(ctx, op, KILN_F32, 1, &pn);
    out = kiln__tensor_new(ctx, op, KILN_F32, 1, &two);
    if (!part || !out) goto fail;
    cl_int pbase = (cl_int)part->offset, ooff = (cl_int)out->offset, np = (cl_int)npart, coff = ooff + 1;
    /* up to KILN_OPT_MULTI gradients per launch, each work-group summing what it would in
     * the gradient's own launch below: the same partials, the same total */
    bool multi = grads_multi_ok(ctx);
    for (int k0 = 0; multi && k0 < ng;) {
        kiln_clip_table T;
        memset(&T, 0, sizeof T);
        cl_mem gm[KILN_OPT_MULTI];
        int nb = 0;
        int64_t elems = 0;
        for (; k0 < ng && nb < KILN_OPT_MULTI; k0++) {
            int64_t m = kiln__numel(gs[k0]->ndim, gs[k0]->shape), groups = clip_groups(ctx, m, lp);
            if (groups == 0) continue;
            if (elems + m > INT32_MAX) break;
            elems += m;
            gm[nb] = gs[k0]->st->mem;
            T.n[nb] = (cl_int)m;
            T.goff[nb] = (cl_int)gs[k0]->offset;
            T.gstart[nb + 1] = T.gstart[nb] + (cl_int)groups;
            nb++;
        }
        if (nb == 0) continue;
        T.count = nb;
        for (int k = nb; k < KILN_OPT_MULTI; k++) gm[k] = gm[0];
        kiln__karg a[1 + KILN_OPT_MULTI + 5];
        size_t na = 0;
        a[na++] = KILN__ARG(T);
        for (int k = 0; k < KILN_OPT_MULTI; k++) a[na++] = KILN__ARG(gm[k]);
        a[na++] = KILN__ARG(part->st->mem), a[na++] = KILN__ARG(pbase), a[na++] = KILN__ARG(mode);
        a[na++] = KILN__ARG(p), a[na++] = KILN__LOCAL(lp * sizeof(cl_float));
        if (kiln__launch(ctx, op, OPT_PROGRAM, "", "clip_partial_multi", na, a, (size_t)T.gstart[nb] * lp, lp) !=
            KILN_OK)
            goto fail;
        pbase += T.gstart[nb];
    }
    for (int k = 0; !multi && k < ng; k++) {
        int64_t m = kiln__numel(gs[k]->ndim, gs[k]->shape), groups = clip_groups(ctx, m, lp);
        if (groups == 0) continue;
        cl_int goff = (cl_int)gs[k]->offset, mi = (cl_int)m;
        kiln__karg a[] = {
            KILN__ARG(gs[k]->st->mem), KILN__ARG(goff), KILN__ARG(mi), KILN__ARG(part->st->mem),
            KILN__ARG(pbase),          KILN__ARG(mode), KILN__ARG(p),  KILN__LOCAL(lp * sizeof(cl_float))};
        if (kiln__launch(ctx, op, OPT_PROGRAM, "", "clip_partial", 8, a, (size_t)groups * lp, lp) != KILN_OK) goto fail;
        pbase += (cl_int)groups;
    }
    cl_int poff = (cl_int)part->offset;
    kiln__karg a[] = {KILN__ARG(part->st->mem), KILN__ARG(poff), KILN__ARG(np),
                      KILN__ARG(mode),          KILN__ARG(p),    KILN__ARG(mx),
                      KILN__ARG(out->st->mem),  KILN__ARG(ooff), KILN__LOCAL(lt * sizeof(cl_float))};
    if (kiln__launch(ctx, op, OPT_PROGRAM, "", "clip_total", 9, a, lt, lt) != KILN_OK) goto fail;
    for (int k = 0; !multi && k < ng; k++) {
        cl_int goff = (cl_int)gs[k]->offset, mi = (cl_int)kiln__numel(gs[k]->ndim, gs[k]->shape);
        kiln__karg s[] = {KILN__ARG(gs[k]->st->mem), KILN__ARG(goff), KILN__ARG(mi), KILN__ARG(out->st->mem),
                          KILN__ARG(coff)};
        if (kiln__launch(ctx, op, OPT_PROGRAM, "", "clip_scale", 5, s, (size_t)mi, 0) != KILN_OK) goto fail;
    }
    for (int k0 = 0; multi && k0 < ng;) { /* g *= coef, up to KILN_OPT_MULTI gradients a launch */
        kiln_tensor *batch[KILN_OPT_MULTI];
        int nb = 0;
        int64_t elems = 0;
        for (; k0 < ng && nb < KILN_OPT_MULTI; k0++) {
            int64_t m = kiln__numel(gs[k0]->ndim, gs[k0]->shape);
            if (m == 0) continue;
            if (elems + m > INT32_MAX) break;
            elems += m;
            batch[nb++] = gs[k0];
        }
        kiln__karg extra[] = {KILN__ARG(out->st->mem), KILN__ARG(coff)};
        if (nb > 0 && grads_multi(ctx, op, "clip_scale_multi", batch, nb, 2, extra) != KILN_OK) goto fail;
    }
    total = kiln__tensor_view(ctx, out, 0, NULL, NULL, out->offset);
fail:
    kiln_tensor_free(part);
    kiln_tensor_free(out);
    free(gs);
    return kiln__finish(ctx, op, total);
}

kiln_tensor *kiln_clip_grad_norm_tensor(kiln_ctx *ctx, int n, kiln_tensor *const *params, double max_norm,
                                        double norm_type) {
    return clip_norm(ctx, "kiln_clip_grad_norm_tensor", n, params, max_norm, norm_type);
}

float kiln_clip_grad_norm(kiln_ctx *ctx, int n, kiln_tensor *const *params, double max_norm, double norm_type) {
    kiln_tensor *t = clip_norm(ctx, "kiln_clip_grad_norm", n, params, max_norm, norm_type);
    if (!t) return NAN;
    float v = kiln_tensor_item(t);
    kiln_tensor_free(t);
    return v;
}

kiln_status kiln_clip_grad_value(kiln_ctx *ctx, int n, kiln_tensor *const *params, double clip_value) {
    const char *op = "kiln_clip_grad_value";
    int ng;
    kiln_tensor **gs = clip_grads(ctx, op, n, params, &ng);
    if (!gs) return ctx ? (ctx->err != KILN_OK ? ctx->err : KILN_ERR_INPUT_ERROR) : KILN_ERR_NULL;
    if (isnan(clip_value)) {
        free(gs);
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: clip_value is NaN", op);
    }
    cl_float lo = (cl_float)-clip_value, hi = (cl_float)clip_value;
    kiln_status s = KILN_OK;
    for (int k = 0; k < ng && s == KILN_OK; k++) {
        cl_int goff = (cl_int)gs[k]->offset, mi = (cl_int)kiln__numel(gs[k]->ndim, gs[k]->shape);
        kiln__karg a[] = {KILN__ARG(gs[k]->st->mem), KILN__ARG(goff), KILN__ARG(mi), KILN__ARG(lo), KILN__ARG(hi)};
        s = kiln__launch(ctx, op, OPT_PROGRAM, "", "clip_value", 5, a, (size_t)mi, 0);
    }
    free(gs);
    return s;
}

/* src/optim/sched.c - learning-rate schedules (StepLR, MultiStepLR, ExponentialLR,
 * CosineAnnealingLR, LinearLR) with torch.optim.lr_scheduler's chainable get_lr.
 *
 * Each step evaluates torch 1.13's recursive formula from the optimizer's current lr with
 * the same double operations in the same order (Python floats are C doubles and math.cos
 * and ** are libm's cos and pow), so the lr sequence matches torch's to the last bit, not
 * merely its closed form. Like torch, the recursion reads the optimizer's lr each time:
 * schedulers stepped together on one optimizer chain their factors. */
#include <math.h>
#include <stdlib.h>

#include "../ops/ops_internal.h"

/* src/optim/optim.c */
void kiln__optim_set_lr_raw(kiln_optim *opt, int g, double lr);
double kiln__optim_initial_lr(kiln_optim *opt, int g);
void kiln__optim_reset_lr(kiln_optim *opt);

typedef enum sched_kind { SCH_STEP, SCH_MULTISTEP, SCH_EXPONENTIAL, SCH_COSINE, SCH_LINEAR, SCH_SEQUENTIAL } sched_kind;

struct kiln_lr_sched {
    kiln_optim *opt;
    sched_kind kind;
    int ngroups;      /* the optimizer's groups when the scheduler was made (torch's base_lrs) */
    double *base_lrs; /* [ngroups], followed by ngroups doubles of scratch for step */
    double gamma, eta_min, start_factor, end_factor, last_lr;
    int step_size, t_max, total_iters;
    int *milestones, nmilestones; /* MultiStepLR's, or SequentialLR's (nchildren - 1) */
    kiln_lr_sched **children;     /* SequentialLR: owned */
    int nchildren;
    int64_t last_epoch, step_count;
};

/* Python's a % b for b > 0 (never negative). */
static int64_t pymod(int64_t a, int64_t b) {
    int64_t r = a % b;
    return r < 0 ? r + b : r;
}

static const double PI = 3.14159265358979323846; /* M_PI is not C11 */

/* torch's chainable get_lr for group g. */
static double get_lr(const kiln_lr_sched *s, int g) {
    double lr = kiln_optim_group_lr(s->opt, g), base_lr = s->base_lrs[g];
    int64_t e = s->last_epoch;
    switch (s->kind) {
    case SCH_STEP:
        if (e == 0 || e % s->step_size != 0) return lr;
        return lr * s->gamma;
    case SCH_MULTISTEP: {
        int count = 0; /* torch's Counter(milestones)[last_epoch] */
        for (int i = 0; i < s->nmilestones; i++) count += s->milestones[i] == e;
        if (count == 0) return lr;
        return lr * pow(s->gamma, (double)count);
    }
    case SCH_EXPONENTIAL:
        if (e == 0) return lr;
        return lr * s->gamma;
    case SCH_COSINE: {
        double T = (double)s->t_max, E = (double)e;
        if (e == 0) return lr;
        if (s->step_count == 1 && e > 0) return s->eta_min + (base_lr - s->eta_min) * (1 + cos(E * PI / T)) / 2;
        if (pymod(e - 1 - s->t_max, 2 * (int64_t)s->t_max) == 0)
            return lr + (base_lr - s->eta_min) * (1 - cos(PI / T)) / 2;
        return (1 + cos(PI * E / T)) / (1 + cos(PI * (E - 1) / T)) * (lr - s->eta_min) + s->eta_min;
    }
    case SCH_LINEAR:
        if (e == 0) return lr * s->start_factor;
        if (e > s->total_iters) return lr;
        return lr * (1. + (s->end_factor - s->start_factor) /
                              (s->total_iters * s->start_factor + (double)(e - 1) * (s->end_factor - s->start_factor)));
    case SCH_SEQUENTIAL: break;
    }
    return lr;
}

/* torch's _get_closed_form_lr for group g (what step(epoch) uses; SequentialLR calls
 * step(0) on a scheduler whose milestone is reached). */
static double closed_form_lr(const kiln_lr_sched *s, int g) {
    double base_lr = s->base_lrs[g], E = (double)s->last_epoch;
    switch (s->kind) {
    case SCH_STEP: return base_lr * pow(s->gamma, (double)(s->last_epoch / s->step_size));
    case SCH_MULTISTEP: {
        int count = 0; /* bisect_right(sorted(milestones), last_epoch) */
        for (int i = 0; i < s->nmilestones; i++) count += s->milestones[i] <= s->last_epoch;
        return base_lr * pow(s->gamma, (double)count);
    }
    case SCH_EXPONENTIAL: return base_lr * pow(s->gamma, E);
    case SCH_COSINE: return s->eta_min + (base_lr - s->eta_min) * (1 + cos(PI * E / (double)s->t_max)) / 2;
    case SCH_LINEAR: {
        double m = (double)(s->total_iters < s->last_epoch ? s->total_iters : s->last_epoch);
        return base_lr * (s->start_factor + (s->end_factor - s->start_factor) * m / (double)s->total_iters);
    }
    case SCH_SEQUENTIAL: break;
    }
    return base_lr;
}

/* torch's step(): epoch < 0 advances one epoch with the chainable formula; epoch >= 0 jumps
 * there with the closed form. */
static void sched_advance(kiln_lr_sched *s, int64_t epoch) {
    s->step_count++;
    if (s->kind == SCH_SEQUENTIAL) { /* SequentialLR.step() (it takes no epoch) */
        int64_t e = ++s->last_epoch;
        int idx = 0; /* bisect_right(milestones, last_epoch) */
        while (idx < s->nmilestones && s->milestones[idx] <= e) idx++;
        sched_advance(s->children[idx], idx > 0 && s->milestones[idx - 1] == e ? 0 : -1);
        s->last_lr = s->children[idx]->last_lr;
        return;
    }
    if (epoch < 0)
        s->last_epoch++;
    else
        s->last_epoch = epoch;
    /* every lr is computed before any is set, as torch's list comprehension */
    double *v = s->base_lrs + s->ngroups;
    for (int g = 0; g < s->ngroups; g++) v[g] = epoch < 0 ? get_lr(s, g) : closed_form_lr(s, g);
    for (int g = 0; g < s->ngroups; g++) kiln__optim_set_lr_raw(s->opt, g, v[g]);
    s->last_lr = v[0];
}

kiln_status kiln_lr_sched_step(kiln_lr_sched *s) {
    if (!s) return kiln__fail_global(KILN_ERR_NULL, "kiln_lr_sched_step: scheduler is NULL");
    sched_advance(s, -1);
    return KILN_OK;
}

/* A scheduler on opt with torch's construction: base lrs = the groups' initial_lr. The
 * caller then performs the initial step (sched_start). */
static kiln_lr_sched *sched_new(kiln_optim *opt, const char *op, sched_kind kind) {
    if (!opt) {
        kiln__fail_global(KILN_ERR_NULL, "%s: optimizer is NULL", op);
        return NULL;
    }
    int ng = kiln_optim_num_groups(opt);
    kiln_lr_sched *s = calloc(1, sizeof *s);
    double *b = s ? malloc(sizeof *b * 2 * (size_t)(ng > 0 ? ng : 1)) : NULL;
    if (!b) {
        free(s);
        kiln__fail(kiln_optim_ctx(opt), KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", op);
        return NULL;
    }
    s->opt = opt;
    s->kind = kind;
    s->last_epoch = -1;
    s->ngroups = ng;
    s->base_lrs = b;
    for (int g = 0; g < ng; g++) b[g] = kiln__optim_initial_lr(opt, g);
    return s;
}

static kiln_lr_sched *sched_start(kiln_lr_sched *s) {
    sched_advance(s, -1);
    return s;
}

/* Argument checks run before anything is allocated (opt may be NULL: sched_new reports it). */
#define SCHED_BAD(cond, ...)                                                                                           \
    do {                                                                                                               \
        if (opt && (cond)) {                                                                                           \
            kiln__fail(kiln_optim_ctx(opt), KILN_ERR_INVALID_ARGUMENT, __VA_ARGS__);                                   \
            return NULL;                                                                                               \
        }                                                                                                              \
    } while (0)

kiln_lr_sched *kiln_step_lr(kiln_optim *opt, int step_size, double gamma) {
    SCHED_BAD(step_size <= 0, "kiln_step_lr: step_size %d must be > 0", step_size);
    kiln_lr_sched *s = sched_new(opt, "kiln_step_lr", SCH_STEP);
    if (!s) return NULL;
    s->step_size = step_size;
    s->gamma = gamma;
    return sched_start(s);
}

kiln_lr_sched *kiln_multistep_lr(kiln_optim *opt, const int *milestones, int n, double gamma) {
    SCHED_BAD(n < 0 || (n > 0 && !milestones), "kiln_multistep_lr: %d milestones at %p", n, (const void *)milestones);
    kiln_lr_sched *s = sched_new(opt, "kiln_multistep_lr", SCH_MULTISTEP);
    if (!s) return NULL;
    s->milestones = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    if (!s->milestones) {
        kiln_lr_sched_free(s);
        kiln__fail(kiln_optim_ctx(opt), KILN_ERR_HOST_OUT_OF_MEMORY, "kiln_multistep_lr: out of host memory");
        return NULL;
    }
    for (int i = 0; i < n; i++) s->milestones[i] = milestones[i];
    s->nmilestones = n;
    s->gamma = gamma;
    return sched_start(s);
}

kiln_lr_sched *kiln_exponential_lr(kiln_optim *opt, double gamma) {
    kiln_lr_sched *s = sched_new(opt, "kiln_exponential_lr", SCH_EXPONENTIAL);
    if (!s) return NULL;
    s->gamma = gamma;
    return sched_start(s);
}

kiln_lr_sched *kiln_cosine_annealing_lr(kiln_optim *opt, int t_max, double eta_min) {
    SCHED_BAD(t_max <= 0, "kiln_cosine_annealing_lr: T_max %d must be > 0", t_max);
    kiln_lr_sched *s = sched_new(opt, "kiln_cosine_annealing_lr", SCH_COSINE);
    if (!s) return NULL;
    s->t_max = t_max;
    s->eta_min = eta_min;
    return sched_start(s);
}

kiln_lr_sched *kiln_linear_lr(kiln_optim *opt, double start_factor, double end_factor, int total_iters) {
    /* torch 1.13 accepts start_factor 0 and then divides by zero at the first step. */
    bool bad_start = !(start_factor > 0 && start_factor <= 1), bad_end = !(end_factor >= 0 && end_factor <= 1);
    SCHED_BAD(bad_start,
              "kiln_linear_lr: Starting multiplicative factor expected to be greater than 0 and less or "
              "equal to 1 (got %g).",
              start_factor);
    SCHED_BAD(bad_end, "kiln_linear_lr: Ending multiplicative factor expected to be between 0 and 1 (got %g).",
              end_factor);
    SCHED_BAD(total_iters < 0, "kiln_linear_lr: total_iters %d must be >= 0", total_iters);
    kiln_lr_sched *s = sched_new(opt, "kiln_linear_lr", SCH_LINEAR);
    if (!s) return NULL;
    s->start_factor = start_factor;
    s->end_factor = end_factor;
    s->total_iters = total_iters;
    return sched_start(s);
}

/* Whether scheds[k] appears in scheds[0..k). */
static bool seen_before(kiln_lr_sched *const *scheds, int k) {
    for (int j = 0; j < k; j++)
        if (scheds[j] == scheds[k]) return true;
    return false;
}

kiln_lr_sched *kiln_sequential_lr(kiln_optim *opt, kiln_lr_sched *const *scheds, int n, const int *milestones) {
    const char *op = "kiln_sequential_lr";
    kiln_ctx *ctx = kiln_optim_ctx(opt);
    /* the schedulers are owned from here on, also when this fails */
#define SEQ_FAIL(status, ...)                                                                                          \
    do {                                                                                                               \
        if (opt)                                                                                                       \
            kiln__fail(ctx, status, __VA_ARGS__);                                                                      \
        else                                                                                                           \
            kiln__fail_global(status, __VA_ARGS__);                                                                    \
        for (int k = 0; scheds && k < n; k++) /* each once, even when listed twice */                                  \
            if (!seen_before(scheds, k)) kiln_lr_sched_free(scheds[k]);                                                \
        return NULL;                                                                                                   \
    } while (0)
    if (!opt) SEQ_FAIL(KILN_ERR_NULL, "%s: optimizer is NULL", op);
    if (n < 1 || !scheds)
        SEQ_FAIL(KILN_ERR_INVALID_ARGUMENT, "%s: %d schedulers at %p; it needs at least one", op, n,
                 (const void *)scheds);
    if (n > 1 && !milestones)
        SEQ_FAIL(KILN_ERR_NULL, "%s: %d schedulers need %d milestones; milestones is NULL", op, n, n - 1);
    for (int i = 0; i < n; i++) {
        if (!scheds[i]) SEQ_FAIL(KILN_ERR_NULL, "%s: scheduler %d is NULL", op, i);
        if (scheds[i]->opt != opt)
            SEQ_FAIL(KILN_ERR_INVALID_ARGUMENT,
                     "%s: Sequential Schedulers expects all schedulers to belong to the same optimizer, but got "
                     "schedulers at index %d to be different than the optimizer passed in.",
                     op, i);
        if (scheds[i]->kind == SCH_SEQUENTIAL)
            SEQ_FAIL(KILN_ERR_UNSUPPORTED, "%s: scheduler %d is itself a kiln_sequential_lr", op, i);
        for (int j = 0; j < i; j++)
            if (scheds[j] == scheds[i])
                SEQ_FAIL(KILN_ERR_INVALID_ARGUMENT, "%s: schedulers %d and %d are the same", op, j, i);
    }
    for (int i = 1; i + 1 < n; i++)
        if (milestones[i] <= milestones[i - 1])
            SEQ_FAIL(KILN_ERR_INVALID_ARGUMENT, "%s: milestones must increase (milestone %d is %d after %d)", op, i,
                     milestones[i], milestones[i - 1]);
    if (n > 1 && milestones[0] < 1)
        SEQ_FAIL(KILN_ERR_INVALID_ARGUMENT, "%s: milestone 0 is %d; it must be >= 1", op, milestones[0]);
    kiln_lr_sched *s = sched_new(opt, op, SCH_SEQUENTIAL);
    kiln_lr_sched **ch = s ? malloc(sizeof *ch * (size_t)n) : NULL;
    int *ms = ch ? malloc(sizeof *ms * (size_t)n) : NULL;
    if (!ms) {
        free(ch);
        kiln_lr_sched_free(s);
        SEQ_FAIL(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", op);
    }
#undef SEQ_FAIL
    for (int i = 0; i < n; i++) ch[i] = scheds[i];
    for (int i = 0; i + 1 < n; i++) ms[i] = milestones[i];
    s->children = ch;
    s->nchildren = n;
    s->milestones = ms;
    s->nmilestones = n - 1;
    /* torch's SequentialLR.__init__: the lrs back to initial_lr, every scheduler's last step
     * undone, then the first one's initial step */
    s->last_epoch = 0;
    s->step_count = 1;
    kiln__optim_reset_lr(opt);
    for (int i = 0; i < n; i++) ch[i]->last_epoch--;
    ch[0]->step_count = 0;
    sched_advance(ch[0], -1);
    s->last_lr = ch[0]->last_lr;
    return s;
}

double kiln_lr_sched_last_lr(const kiln_lr_sched *s) {
    if (!s) return kiln__fail_global(KILN_ERR_NULL, "kiln_lr_sched_last_lr: scheduler is NULL"), NAN;
    return s->last_lr;
}
int64_t kiln_lr_sched_last_epoch(const kiln_lr_sched *s) {
    if (!s) return kiln__fail_global(KILN_ERR_NULL, "kiln_lr_sched_last_epoch: scheduler is NULL"), -1;
    return s->last_epoch;
}

kiln_status kiln_lr_sched_set_last_epoch(kiln_lr_sched *s, int64_t last_epoch) {
    if (!s) return kiln__fail_global(KILN_ERR_NULL, "kiln_lr_sched_set_last_epoch: scheduler is NULL");
    if (last_epoch < 0)
        return kiln__fail(kiln_optim_ctx(s->opt), KILN_ERR_RANGE, "kiln_lr_sched_set_last_epoch: epoch %lld < 0",
                          (long long)last_epoch);
    s->last_epoch = last_epoch;
    s->step_count = last_epoch + 1;
    s->last_lr = kiln_optim_lr(s->opt);
    if (s->kind == SCH_SEQUENTIAL) {
        /* the active scheduler resumes at last_epoch's distance from its milestone (earlier
         * ones never step again) */
        int idx = 0;
        while (idx < s->nmilestones && s->milestones[idx] <= last_epoch) idx++;
        kiln_lr_sched *c = s->children[idx];
        int64_t e = idx > 0 ? last_epoch - s->milestones[idx - 1] : last_epoch;
        c->last_epoch = e;
        c->step_count = idx > 0 ? e + 2 : e + 1; /* its construction, then step(0) at the milestone */
        c->last_lr = s->last_lr;
    }
    return KILN_OK;
}

void kiln_lr_sched_free(kiln_lr_sched *s) {
    if (!s) return;
    for (int i = 0; i < s->nchildren; i++) kiln_lr_sched_free(s->children[i]);
    free(s->children);
    free(s->base_lrs);
    free(s->milestones);
    free(s);
}

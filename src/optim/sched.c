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
void kiln__optim_set_lr_raw(kiln_optim *opt, double lr);
double kiln__optim_initial_lr(kiln_optim *opt);

typedef enum sched_kind { SCH_STEP, SCH_MULTISTEP, SCH_EXPONENTIAL, SCH_COSINE, SCH_LINEAR } sched_kind;

struct kiln_lr_sched {
    kiln_optim *opt;
    sched_kind kind;
    double base_lr, gamma, eta_min, start_factor, end_factor, last_lr;
    int step_size, t_max, total_iters;
    int *milestones, nmilestones;
    int64_t last_epoch, step_count;
};

/* Python's a % b for b > 0 (never negative). */
static int64_t pymod(int64_t a, int64_t b) {
    int64_t r = a % b;
    return r < 0 ? r + b : r;
}

static double get_lr(const kiln_lr_sched *s) {
    double lr = kiln_optim_lr(s->opt);
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
        double T = (double)s->t_max, E = (double)e, pi = 3.14159265358979323846; /* M_PI is not C11 */
        if (e == 0) return lr;
        if (s->step_count == 1 && e > 0) return s->eta_min + (s->base_lr - s->eta_min) * (1 + cos(E * pi / T)) / 2;
        if (pymod(e - 1 - s->t_max, 2 * (int64_t)s->t_max) == 0)
            return lr + (s->base_lr - s->eta_min) * (1 - cos(pi / T)) / 2;
        return (1 + cos(pi * E / T)) / (1 + cos(pi * (E - 1) / T)) * (lr - s->eta_min) + s->eta_min;
    }
    case SCH_LINEAR:
        if (e == 0) return lr * s->start_factor;
        if (e > s->total_iters) return lr;
        return lr * (1. + (s->end_factor - s->start_factor) /
                              (s->total_iters * s->start_factor + (double)(e - 1) * (s->end_factor - s->start_factor)));
    }
    return lr;
}

kiln_status kiln_lr_sched_step(kiln_lr_sched *s) {
    if (!s) return kiln__fail_global(KILN_ERR_NULL, "kiln_lr_sched_step: scheduler is NULL");
    s->step_count++;
    s->last_epoch++;
    double lr = get_lr(s);
    kiln__optim_set_lr_raw(s->opt, lr);
    s->last_lr = lr;
    return KILN_OK;
}

/* A scheduler on opt with torch's construction: base lr = initial_lr, then the initial
 * step (last_epoch becomes 0). */
static kiln_lr_sched *sched_new(kiln_optim *opt, const char *op, sched_kind kind) {
    if (!opt) {
        kiln__fail_global(KILN_ERR_NULL, "%s: optimizer is NULL", op);
        return NULL;
    }
    kiln_lr_sched *s = calloc(1, sizeof *s);
    if (!s) {
        kiln__fail(kiln_optim_ctx(opt), KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", op);
        return NULL;
    }
    s->opt = opt;
    s->kind = kind;
    s->last_epoch = -1;
    return s;
}

static kiln_lr_sched *sched_start(kiln_lr_sched *s) {
    s->base_lr = kiln__optim_initial_lr(s->opt);
    kiln_lr_sched_step(s);
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
        free(s);
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
    return KILN_OK;
}

void kiln_lr_sched_free(kiln_lr_sched *s) {
    if (!s) return;
    free(s->milestones);
    free(s);
}

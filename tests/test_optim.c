/* tests/test_optim.c - optimizers (SGD, RMSprop, Adam, AdamW), their state, gradient
 * clipping and lr schedules against PyTorch 1.13 (tests/golden/gen_optim.py) and against
 * plain-C double-precision references of each rule; error paths and leaks.
 *
 * Gradients are given, not computed: each step sets a parameter's .grad (the internal
 * field, as autograd does) to the stored gradient, or to NULL where torch's was None, so
 * the trajectories test the update arithmetic alone. One test runs real backward passes.
 *
 * Tolerances (normalised error |got - ref| / (atol + rtol*|ref|) <= 1):
 *   trajectories, after step k (1-based): atol = rtol = k * TRAJ_ULPS * FLT_EPSILON.
 *     Each step does 4-8 float operations per element, each rounding by <= 1/2 ulp of its
 *     result (OpenCL allows sqrt 3 ulp and division 2.5 ulp on some devices), and the
 *     parameter and state inherit the previous steps' error, so the deviation grows at
 *     most linearly with k: a few ulps of max(|param|, 1) per step. Against the double
 *     reference every rounding counts. Against torch the kernels round the same operations
 *     in the same order as ATen's CPU kernels (fma where GCC fused them), so on a device
 *     with correctly rounded sqrt and division (POCL) every value equals torch's bit for
 *     bit (the log line counts them); the bound is kept for other devices. Measured worst:
 *     0 vs torch, ~0.5 ulp per step vs the double reference; TRAJ_ULPS = 4.
 *     State tensors (moments, buffers) after 5 and 10 steps: the same bound, relative to
 *     max(|value|, their magnitude) since they are sums of squares of O(1) gradients.
 *   schedules: exact. The lr is host double arithmetic with torch's own expressions; the
 *     golden file holds the bits of torch's doubles.
 *   clip_grad_norm: total norm rtol 8 ulp for p = 1, 2 (a compensated float sum of at most
 *     a few thousand terms, one sqrt), exact for inf (a max), 40 ulp for other p (OpenCL's
 *     pow may be off by 16 ulp, used per term and once at the end); the clipped gradients
 *     add 3 ulp (coefficient division, clamp, product). clip_grad_value: exact (a clamp).
 */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include <float.h>
#include <unistd.h>

#include "golden.h"

#define STEPS 10
#define NP 3
#define TRAJ_ULPS 4.0

static double worst_torch, worst_ref;    /* largest errors seen (ulps per step), for the log */
static int64_t torch_elems, torch_exact; /* trajectory elements compared with torch / equal to it */

/* ---- helpers ---------------------------------------------------------------------------- */

/* Replaces p's gradient with g (NULL: none), as autograd's accumulation leaves it. */
static void set_grad(kiln_tensor *p, kiln_tensor *g) {
    kiln_tensor *old = p->grad;
    p->grad = NULL;
    kiln_tensor_free(old);
    p->grad = g ? kiln_tensor_keep(g) : NULL;
}

static double golden_double(const golden_tensor *t, int i) {
    double d;
    memcpy(&d, &t->i[2 * i], sizeof d);
    return d;
}

static kiln_tensor *param_from(kiln_ctx *ctx, const float *data, int ndim, const int64_t *shape) {
    kiln_tensor *t = kiln_tensor_keep(kiln_from_host(ctx, data, KILN_F32, ndim, shape));
    if (t) kiln_tensor_set_requires_grad(t, true);
    return t;
}

static double compare_max(const char *what, kiln_tensor *t, const double *ref, int64_t n, double atol, double rtol) {
    float *h = h_read(t);
    double w = h_compare(what, h, ref, n, atol, rtol);
    free(h);
    return w;
}

/* ---- a configuration, read from the golden file ---------------------------------------- */

enum { K_SGD, K_RMSPROP, K_ADAM, K_ADAMW };

typedef struct cfg {
    const char *name;
    int kind;
    double lr, momentum, dampening, wd, alpha, eps, beta1, beta2;
    bool nesterov, centered, amsgrad, maximize;
} cfg;

static const char *const cfg_names[] = {
    "sgd_plain",     "sgd_momentum",   "sgd_dampening",    "sgd_nesterov",     "sgd_wd",
    "sgd_maximize",  "rmsprop_plain",  "rmsprop_momentum", "rmsprop_centered", "rmsprop_centered_momentum",
    "rmsprop_wd",    "adam_plain",     "adam_wd",          "adam_amsgrad",     "adamw_plain",
    "adamw_amsgrad", "adamw_maximize",
};
#define NCFG ((int)(sizeof cfg_names / sizeof cfg_names[0]))

static bool cfg_read(const golden *g, const char *name, cfg *c) {
    char key[160];
    snprintf(key, sizeof key, "%s.hp", name);
    const golden_tensor *hp = golden_get(g, key);
    snprintf(key, sizeof key, "%s.flags", name);
    const golden_tensor *fl = golden_get(g, key);
    if (!hp || !fl || hp->numel != 16 || fl->numel != 5) return false;
    c->name = name;
    c->lr = golden_double(hp, 0);
    c->momentum = golden_double(hp, 1);
    c->dampening = golden_double(hp, 2);
    c->wd = golden_double(hp, 3);
    c->alpha = golden_double(hp, 4);
    c->eps = golden_double(hp, 5);
    c->beta1 = golden_double(hp, 6);
    c->beta2 = golden_double(hp, 7);
    c->kind = fl->i[0];
    c->nesterov = fl->i[1];
    c->centered = fl->i[2];
    c->amsgrad = fl->i[3];
    c->maximize = fl->i[4];
    return true;
}

static kiln_optim *cfg_make(kiln_ctx *ctx, const cfg *c, kiln_tensor **ps, int n) {
    switch (c->kind) {
    case K_SGD: {
        kiln_sgd_opts o = kiln_sgd_defaults();
        o.lr = c->lr;
        o.momentum = c->momentum;
        o.dampening = c->dampening;
        o.weight_decay = c->wd;
        o.nesterov = c->nesterov;
        o.maximize = c->maximize;
        return kiln_sgd(ctx, ps, n, &o);
    }
    case K_RMSPROP: {
        kiln_rmsprop_opts o = kiln_rmsprop_defaults();
        o.lr = c->lr;
        o.alpha = c->alpha;
        o.eps = c->eps;
        o.weight_decay = c->wd;
        o.momentum = c->momentum;
        o.centered = c->centered;
        o.maximize = c->maximize;
        return kiln_rmsprop(ctx, ps, n, &o);
    }
    default: {
        kiln_adam_opts o = c->kind == K_ADAMW ? kiln_adamw_defaults() : kiln_adam_defaults();
        o.lr = c->lr;
        o.beta1 = c->beta1;
        o.beta2 = c->beta2;
        o.eps = c->eps;
        o.weight_decay = c->wd;
        o.amsgrad = c->amsgrad;
        o.maximize = c->maximize;
        return c->kind == K_ADAMW ? kiln_adamw(ctx, ps, n, &o) : kiln_adam(ctx, ps, n, &o);
    }
    }
}

/* ---- the double reference: torch's update rules written out in double ------------------- */

typedef struct ref_param {
    int64_t n;
    double *p, *s0, *s1, *s2; /* SGD: buf; RMSprop: square_avg, momentum_buffer, grad_avg; Adam: m, v, vmax */
    bool has_buf;             /* SGD: the momentum buffer exists */
    int64_t step;
} ref_param;

static void ref_init(ref_param *r, const float *p, int64_t n) {
    r->n = n;
    r->p = malloc(sizeof(double) * (size_t)n);
    r->s0 = calloc((size_t)n, sizeof(double));
    r->s1 = calloc((size_t)n, sizeof(double));
    r->s2 = calloc((size_t)n, sizeof(double));
    for (int64_t i = 0; i < n; i++) r->p[i] = p[i];
    r->has_buf = false;
    r->step = 0;
}

static void ref_free(ref_param *r) {
    free(r->p);
    free(r->s0);
    free(r->s1);
    free(r->s2);
}

static void ref_step(const cfg *c, double lr, ref_param *r, const float *grad) {
    double t = (double)(r->step + 1);
    double bc1 = 1 - pow(c->beta1, t), bc2 = 1 - pow(c->beta2, t);
    for (int64_t i = 0; i < r->n; i++) {
        double x = r->p[i], d = c->maximize ? -(double)grad[i] : (double)grad[i];
        if (c->kind == K_SGD) {
            if (c->wd != 0) d += c->wd * x;
            if (c->momentum != 0) {
                double b = r->has_buf ? c->momentum * r->s0[i] + (1 - c->dampening) * d : d;
                r->s0[i] = b;
                d = c->nesterov ? d + c->momentum * b : b;
            }
            x -= lr * d;
        } else if (c->kind == K_RMSPROP) {
            if (c->wd != 0) d += c->wd * x;
            double sq = c->alpha * r->s0[i] + (1 - c->alpha) * d * d, avg;
            r->s0[i] = sq;
            if (c->centered) {
                double ga = c->alpha * r->s2[i] + (1 - c->alpha) * d;
                r->s2[i] = ga;
                avg = sqrt(sq - ga * ga);
            } else {
                avg = sqrt(sq);
            }
            avg += c->eps;
            if (c->momentum > 0) {
                double b = c->momentum * r->s1[i] + d / avg;
                r->s1[i] = b;
                x -= lr * b;
            } else {
                x -= lr * d / avg;
            }
        } else {
            if (c->kind == K_ADAMW)
                x *= 1 - lr * c->wd;
            else if (c->wd != 0)
                d += c->wd * x;
            double m = c->beta1 * r->s0[i] + (1 - c->beta1) * d;
            double v = c->beta2 * r->s1[i] + (1 - c->beta2) * d * d;
            r->s0[i] = m;
            r->s1[i] = v;
            if (c->amsgrad) {
                if (r->s2[i] > v) v = r->s2[i];
                r->s2[i] = v;
            }
            x -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + c->eps);
        }
        r->p[i] = x;
    }
    r->has_buf = true;
    r->step++;
}

/* ---- golden trajectories ------------------------------------------------------------------ */

typedef struct traj_data {
    const golden_tensor *init[NP], *grad[NP], *mask;
} traj_data;

static bool traj_load(const golden *g, traj_data *d) {
    char key[64];
    for (int j = 0; j < NP; j++) {
        snprintf(key, sizeof key, "init.p%d", j);
        d->init[j] = golden_get(g, key);
        snprintf(key, sizeof key, "grad.p%d", j);
        d->grad[j] = golden_get(g, key);
        if (!d->init[j] || !d->grad[j]) return false;
    }
    d->mask = golden_get(g, "grad_mask");
    return d->mask != NULL;
}

/* Gradient of parameter j at step k, or NULL when torch's was None. */
static const float *grad_at(const traj_data *d, int j, int k) {
    if (!d->mask->i[k * NP + j]) return NULL;
    return d->grad[j]->f + (int64_t)k * d->init[j]->numel;
}

/* Sets every parameter's gradient for step k; parameter 0's is given as a transposed
 * view (a non-contiguous gradient) when `strided`. */
static void set_step_grads(kiln_ctx *ctx, const traj_data *d, kiln_tensor **ps, int k, bool strided) {
    for (int j = 0; j < NP; j++) {
        const float *g = grad_at(d, j, k);
        if (!g) {
            set_grad(ps[j], NULL);
            continue;
        }
        const golden_tensor *it = d->init[j];
        if (strided && it->ndim == 2) {
            int64_t r = it->shape[0], cdim = it->shape[1], tshape[2] = {cdim, r};
            float *gt = malloc(sizeof(float) * (size_t)it->numel);
            for (int64_t a = 0; a < r; a++)
                for (int64_t b = 0; b < cdim; b++) gt[b * r + a] = g[a * cdim + b];
            kiln_tensor *base = kiln_from_host(ctx, gt, KILN_F32, 2, tshape);
            kiln_tensor *view = kiln_transpose(ctx, base, 0, 1);
            kiln_tensor_free(base);
            free(gt);
            set_grad(ps[j], view);
        } else {
            set_grad(ps[j], kiln_from_host(ctx, g, KILN_F32, it->ndim, it->shape));
        }
    }
}

/* Compares state tensors and step counts with torch's state_dict after `after` steps. */
static void check_state(const golden *g, const cfg *c, kiln_optim *opt, int after) {
    char key[200];
    const char *name;
    kiln_tensor *t;
    int listed = 0;
    double tol = after * TRAJ_ULPS * FLT_EPSILON;
    for (int i = 0; i < kiln_optim_num_states(opt) && kiln_optim_state(opt, i, &name, &t) == KILN_OK; i++, listed++) {
        snprintf(key, sizeof key, "%s.state%d.%s", c->name, after, name);
        const golden_tensor *ref = golden_get(g, key);
        char what[240];
        snprintf(what, sizeof what, "%s after %d steps: %s", c->name, after, name);
        golden_compare(what, t, ref, tol, tol);
    }
    int expect = 0; /* torch's state tensors of this configuration */
    for (int k = 0; k < g->n; k++) {
        snprintf(key, sizeof key, "%s.state%d.", c->name, after);
        if (strncmp(g->t[k].name, key, strlen(key)) == 0 && !strstr(g->t[k].name, ".steps")) expect++;
    }
    CHECK(listed == expect, "%s after %d steps: %d state entries listed, torch has %d", c->name, after, listed, expect);
    snprintf(key, sizeof key, "%s.state%d.steps", c->name, after);
    const golden_tensor *st = golden_get(g, key);
    for (int j = 0; st && j < NP; j++)
        CHECK(kiln_optim_step_count(opt, j) == st->i[j], "%s: parameter %d step %lld, torch %d", c->name, j,
              (long long)kiln_optim_step_count(opt, j), st->i[j]);
}

static void test_trajectories(kiln_ctx *ctx) {
    golden g;
    if (!golden_open(&g, "optim")) return;
    traj_data d;
    if (!traj_load(&g, &d)) {
        golden_close(&g);
        return;
    }
    for (int ci = 0; ci < NCFG; ci++) {
        cfg c;
        if (!cfg_read(&g, cfg_names[ci], &c)) continue;
        int64_t before = kiln_ctx_num_tensors(ctx);
        kiln_tensor *ps[NP];
        ref_param ref[NP];
        for (int j = 0; j < NP; j++) {
            ps[j] = param_from(ctx, d.init[j]->f, d.init[j]->ndim, d.init[j]->shape);
            ref_init(&ref[j], d.init[j]->f, d.init[j]->numel);
        }
        kiln_optim *opt = cfg_make(ctx, &c, ps, NP);
        CHECK(opt != NULL, "%s: %s", c.name, kiln_error_message(ctx));
        if (!opt) {
            kiln_error_clear(ctx);
            for (int j = 0; j < NP; j++) kiln_tensor_free(ps[j]), ref_free(&ref[j]);
            continue;
        }
        for (int k = 0; k < STEPS; k++) {
            kiln_scope_begin(ctx);
            set_step_grads(ctx, &d, ps, k, ci % 2 == 1); /* every other configuration: a strided gradient */
            CHECK(kiln_optim_step(opt) == KILN_OK, "%s step %d: %s", c.name, k, kiln_error_message(ctx));
            double tol = (k + 1) * TRAJ_ULPS * FLT_EPSILON;
            for (int j = 0; j < NP; j++) {
                char key[160], what[200];
                snprintf(key, sizeof key, "%s.traj.p%d", c.name, j);
                const golden_tensor *tr = golden_get(&g, key);
                if (!tr) continue;
                int64_t n = d.init[j]->numel;
                const float *gk = grad_at(&d, j, k);
                if (gk) ref_step(&c, c.lr, &ref[j], gk);
                double *tref = malloc(sizeof(double) * (size_t)n);
                for (int64_t i = 0; i < n; i++) tref[i] = tr->f[(int64_t)k * n + i];
                snprintf(what, sizeof what, "%s step %d parameter %d vs torch", c.name, k + 1, j);
                float *h = h_read(ps[j]);
                double w = h_compare(what, h, tref, n, tol, tol) * TRAJ_ULPS;
                if (w > worst_torch) worst_torch = w;
                for (int64_t i = 0; i < n; i++) torch_exact += h[i] == (float)tref[i];
                torch_elems += n;
                free(h);
                snprintf(what, sizeof what, "%s step %d parameter %d vs double reference", c.name, k + 1, j);
                w = compare_max(what, ps[j], ref[j].p, n, tol, tol) * TRAJ_ULPS;
                if (w > worst_ref) worst_ref = w;
                free(tref);
            }
            kiln_scope_end(ctx);
            if (k + 1 == 5 || k + 1 == STEPS) check_state(&g, &c, opt, k + 1);
        }
        kiln_optim_free(opt);
        for (int j = 0; j < NP; j++) {
            kiln_tensor_free(ps[j]);
            ref_free(&ref[j]);
        }
        CHECK(kiln_ctx_num_tensors(ctx) == before, "%s: %lld tensors leaked", c.name,
              (long long)(kiln_ctx_num_tensors(ctx) - before));
        CHECK_OK(ctx);
    }
    golden_close(&g);
}

/* Resuming from a checkpoint: a fresh optimizer given torch's parameters and state after 5
 * steps (kiln_optim_state_find with create, kiln_optim_set_step_count) continues exactly as the
 * uninterrupted run. */
static void test_resume(kiln_ctx *ctx) {
    golden g;
    if (!golden_open(&g, "optim")) return;
    traj_data d;
    if (!traj_load(&g, &d)) {
        golden_close(&g);
        return;
    }
    for (int ci = 0; ci < NCFG; ci++) {
        cfg c;
        if (!cfg_read(&g, cfg_names[ci], &c)) continue;
        char key[200];
        kiln_tensor *ps[NP];
        for (int j = 0; j < NP; j++) {
            snprintf(key, sizeof key, "%s.traj.p%d", c.name, j);
            const golden_tensor *tr = golden_get(&g, key);
            ps[j] =
                param_from(ctx, tr ? tr->f + 4 * d.init[j]->numel : d.init[j]->f, d.init[j]->ndim, d.init[j]->shape);
        }
        kiln_optim *opt = cfg_make(ctx, &c, ps, NP);
        CHECK(opt != NULL, "%s: %s", c.name, kiln_error_message(ctx));
        if (opt) {
            snprintf(key, sizeof key, "%s.state5.", c.name);
            size_t kl = strlen(key);
            for (int k = 0; k < g.n; k++) {
                const golden_tensor *st = &g.t[k];
                if (strncmp(st->name, key, kl) != 0 || strstr(st->name, ".steps")) continue;
                kiln_tensor *t = kiln_optim_state_find(opt, st->name + kl, true);
                CHECK(t != NULL, "%s: state_find(%s): %s", c.name, st->name + kl, kiln_error_message(ctx));
                if (t) {
                    CHECK(kiln_optim_state_find(opt, st->name + kl, false) == t, "%s: %s found twice differs", c.name,
                          st->name + kl);
                    kiln_tensor *src = golden_upload(ctx, st);
                    kiln_tensor *diff = kiln_sub(ctx, src, t); /* t still zeros: diff == src */
                    golden_compare("fresh state is zero", diff, st, 0, 0);
                    kiln_tensor_free(diff);
                    /* write the values in: copy through the host */
                    CHECK(clEnqueueWriteBuffer(ctx->queue, t->st->mem, CL_TRUE, (size_t)t->offset * 4,
                                               (size_t)st->numel * 4, st->f, 0, NULL, NULL) == CL_SUCCESS,
                          "writing state");
                    kiln_tensor_free(src);
                }
            }
            snprintf(key, sizeof key, "%s.state5.steps", c.name);
            const golden_tensor *steps = golden_get(&g, key);
            for (int j = 0; steps && j < NP; j++) kiln_optim_set_step_count(opt, j, steps->i[j]);
            for (int k = 5; k < STEPS; k++) {
                kiln_scope_begin(ctx);
                set_step_grads(ctx, &d, ps, k, false);
                CHECK(kiln_optim_step(opt) == KILN_OK, "%s: %s", c.name, kiln_error_message(ctx));
                kiln_scope_end(ctx);
            }
            double tol = STEPS * TRAJ_ULPS * FLT_EPSILON;
            for (int j = 0; j < NP; j++) {
                snprintf(key, sizeof key, "%s.traj.p%d", c.name, j);
                const golden_tensor *tr = golden_get(&g, key);
                if (!tr) continue;
                int64_t n = d.init[j]->numel;
                double *tref = malloc(sizeof(double) * (size_t)n);
                for (int64_t i = 0; i < n; i++) tref[i] = tr->f[(int64_t)(STEPS - 1) * n + i];
                char what[200];
                snprintf(what, sizeof what, "%s resumed at step 5, parameter %d after step 10", c.name, j);
                compare_max(what, ps[j], tref, n, tol, tol);
                free(tref);
            }
            check_state(&g, &c, opt, STEPS);
            kiln_optim_free(opt);
        }
        kiln_error_clear(ctx);
        for (int j = 0; j < NP; j++) kiln_tensor_free(ps[j]);
    }
    golden_close(&g);
}

/* ---- a larger random run against the double reference only ----------------------------- */

static void test_double_reference(kiln_ctx *ctx) {
    /* shapes: a 5x7x11 block, a prime, an empty tensor, one element */
    const int64_t shapes[4][3] = {{5, 7, 11}, {1009, 1, 1}, {0, 1, 1}, {1, 1, 1}};
    const int nd[4] = {3, 1, 1, 1};
    cfg cs[] = {
        {"sgd nesterov wd", K_SGD, 0.03, 0.8, 0, 0.05, 0, 0, 0, 0, true, false, false, false},
        {"sgd dampening", K_SGD, 0.2, 0.7, 0.5, 0, 0, 0, 0, 0, false, false, false, true},
        {"rmsprop centered momentum wd", K_RMSPROP, 0.001, 0.3, 0, 0.01, 0.95, 1e-7, 0, 0, false, true, false, false},
        {"adam amsgrad wd", K_ADAM, 0.003, 0, 0, 0.02, 0, 1e-6, 0.85, 0.995, false, false, true, false},
        {"adamw maximize", K_ADAMW, 0.004, 0, 0, 0.3, 0, 1e-8, 0.5, 0.9, false, false, false, true},
        {"adam beta1 0", K_ADAM, 0.01, 0, 0, 0, 0, 1e-8, 0.0, 0.0, false, false, true, false},
    };
    for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
        const cfg *c = &cs[ci];
        kiln_tensor *ps[4];
        ref_param ref[4];
        for (int j = 0; j < 4; j++) {
            int64_t n = h_numel(nd[j], shapes[j]);
            float *x = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
            h_fill(x, n, -2, 2);
            ps[j] = param_from(ctx, x, nd[j], shapes[j]);
            ref_init(&ref[j], x, n);
            free(x);
        }
        kiln_optim *opt = cfg_make(ctx, c, ps, 4);
        CHECK(opt != NULL, "%s: %s", c->name, kiln_error_message(ctx));
        double lr = c->lr;
        for (int k = 0; opt && k < 6; k++) {
            kiln_scope_begin(ctx);
            if (k == 3) { /* a changed lr takes effect at the next step */
                lr *= 0.5;
                CHECK(kiln_optim_set_lr(opt, lr) == KILN_OK && kiln_optim_lr(opt) == lr, "set_lr");
            }
            for (int j = 0; j < 4; j++) {
                int64_t n = ref[j].n;
                float *gh = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
                h_fill(gh, n, -1, 1);
                if (j == 1) gh[7] = 0;
                set_grad(ps[j], kiln_from_host(ctx, gh, KILN_F32, nd[j], shapes[j]));
                ref_step(c, lr, &ref[j], gh);
                free(gh);
            }
            CHECK(kiln_optim_step(opt) == KILN_OK, "%s: %s", c->name, kiln_error_message(ctx));
            double tol = (k + 1) * TRAJ_ULPS * FLT_EPSILON;
            for (int j = 0; j < 4; j++) {
                char what[160];
                snprintf(what, sizeof what, "%s step %d parameter %d", c->name, k + 1, j);
                double w = compare_max(what, ps[j], ref[j].p, ref[j].n, tol, tol) * TRAJ_ULPS;
                if (w > worst_ref) worst_ref = w;
            }
            kiln_scope_end(ctx);
        }
        for (int j = 0; j < 4; j++)
            CHECK(kiln_optim_step_count(opt, j) == 6, "step count %lld", (long long)kiln_optim_step_count(opt, j));
        kiln_optim_free(opt);
        for (int j = 0; j < 4; j++) {
            kiln_tensor_free(ps[j]);
            ref_free(&ref[j]);
        }
        CHECK_OK(ctx);
    }
}

/* ---- real backward passes ---------------------------------------------------------------- */

/* loss = sum(c * w * w): backward gives 2 c w; a second parameter is unused, so its
 * gradient stays NULL and Adam skips it. zero_grad zeroes in place between steps. */
static void test_with_backward(kiln_ctx *ctx) {
    enum { N = 33 };
    float w0[N], cv[N], u0[5];
    h_fill(w0, N, -1, 1);
    h_fill(cv, N, 0.5f, 2);
    h_fill(u0, 5, -1, 1);
    int64_t sn = N, s5 = 5;
    kiln_tensor *w = param_from(ctx, w0, 1, &sn), *u = param_from(ctx, u0, 1, &s5);
    kiln_tensor *cst = kiln_tensor_keep(kiln_from_host(ctx, cv, KILN_F32, 1, &sn));
    kiln_tensor *ps[2] = {w, u};
    cfg c = {"adam backward", K_ADAM, 0.05, 0, 0, 0.01, 0, 1e-8, 0.9, 0.999, false, false, false, false};
    kiln_optim *opt = cfg_make(ctx, &c, ps, 2);
    CHECK(opt != NULL, "%s", kiln_error_message(ctx));
    ref_param ref;
    ref_init(&ref, w0, N);
    for (int k = 0; opt && k < 5; k++) {
        kiln_scope_begin(ctx);
        CHECK(kiln_optim_zero_grad(opt) == KILN_OK, "zero_grad");
        if (k > 0) {
            float *z = h_read(kiln_tensor_grad(w));
            bool zero = true;
            for (int i = 0; i < N; i++) zero = zero && z[i] == 0.0f;
            CHECK(zero && kiln_tensor_grad(u) == NULL, "zero_grad: grads zeroed in place, NULL ones stay NULL");
            free(z);
        }
        float *wnow = h_read(w);
        kiln_tensor *loss = kiln_sum(ctx, kiln_mul(ctx, kiln_mul(ctx, cst, w), w), 0, NULL, false);
        CHECK(kiln_backward(loss) == KILN_OK, "backward: %s", kiln_error_message(ctx));
        float *gh = kiln_tensor_grad(w) ? h_read(kiln_tensor_grad(w)) : NULL;
        CHECK(gh != NULL, "no gradient after backward");
        if (gh) {
            double gref[N];
            for (int i = 0; i < N; i++) gref[i] = 2.0 * cv[i] * wnow[i];
            /* c*w + w*c from the two products: 2 fl(c w), within 1/2 ulp of 2 c w */
            h_compare("backward gradient 2cw", gh, gref, N, 0, FLT_EPSILON);
            ref_step(&c, c.lr, &ref, gh); /* the reference steps with kiln's own gradient */
        }
        CHECK(kiln_optim_step(opt) == KILN_OK, "step: %s", kiln_error_message(ctx));
        double tol = (k + 1) * TRAJ_ULPS * FLT_EPSILON;
        compare_max("adam step after backward", w, ref.p, N, tol, tol);
        free(gh);
        free(wnow);
        kiln_scope_end(ctx);
    }
    if (opt) {
        double uref[5];
        for (int i = 0; i < 5; i++) uref[i] = u0[i];
        compare_max("unreached parameter unchanged", u, uref, 5, 0, 0);
        CHECK(kiln_optim_step_count(opt, 0) == 5 && kiln_optim_step_count(opt, 1) == 0, "steps %lld %lld",
              (long long)kiln_optim_step_count(opt, 0), (long long)kiln_optim_step_count(opt, 1));
        int cnt = kiln_optim_num_states(opt);
        CHECK(cnt == 2, "state of the reached parameter only: %d entries", cnt);
    }
    kiln_optim_free(opt);
    ref_free(&ref);
    kiln_tensor_free(w);
    kiln_tensor_free(u);
    kiln_tensor_free(cst);
    CHECK_OK(ctx);
}

/* ---- schedules ------------------------------------------------------------------------------ */

static void test_schedules(kiln_ctx *ctx) {
    golden g;
    if (!golden_open(&g, "optim")) return;
    static const int ms[] = {12, 5, 12, 20};
    const char *names[] = {"step",   "multistep",     "exponential",  "cosine", "cosine_t7",
                           "linear", "linear_warmup", "linear_decay", "chain"};
    for (int si = 0; si < 9; si++) {
        float z = 0;
        int64_t one = 1;
        kiln_tensor *w = param_from(ctx, &z, 1, &one);
        kiln_sgd_opts o = kiln_sgd_defaults();
        o.lr = 0.1;
        kiln_optim *opt = kiln_sgd(ctx, &w, 1, &o);
        kiln_lr_sched *s[2] = {NULL, NULL};
        switch (si) {
        case 0: s[0] = kiln_step_lr(opt, 7, 0.5); break;
        case 1: s[0] = kiln_multistep_lr(opt, ms, 4, 0.3); break;
        case 2: s[0] = kiln_exponential_lr(opt, 0.93); break;
        case 3: s[0] = kiln_cosine_annealing_lr(opt, 10, 0.001); break;
        case 4: s[0] = kiln_cosine_annealing_lr(opt, 7, 0.0); break;
        case 5: s[0] = kiln_linear_lr(opt, 1.0 / 3, 1.0, 5); break;
        case 6: s[0] = kiln_linear_lr(opt, 0.25, 1.0, 8); break;
        case 7: s[0] = kiln_linear_lr(opt, 1.0, 0.1, 12); break;
        default: s[0] = kiln_linear_lr(opt, 0.5, 1.0, 4); s[1] = kiln_exponential_lr(opt, 0.9);
        }
        CHECK(s[0] != NULL, "%s: %s", names[si], kiln_error_message(ctx));
        char key[64];
        snprintf(key, sizeof key, "sched.%s", names[si]);
        const golden_tensor *ref = golden_get(&g, key);
        for (int k = 0; s[0] && ref && k <= 30; k++) {
            if (k > 0) {
                kiln_optim_step(opt); /* no gradient: a no-op, as in torch's loop */
                for (int q = 0; q < 2; q++)
                    if (s[q]) kiln_lr_sched_step(s[q]);
            }
            double want = golden_double(ref, k), got = kiln_optim_lr(opt);
            CHECK(got == want, "%s after %d steps: lr %.17g, torch %.17g", names[si], k, got, want);
            CHECK(kiln_lr_sched_last_lr(s[si == 8]) == got && kiln_lr_sched_last_epoch(s[0]) == k,
                  "%s: last lr / epoch", names[si]);
        }
        kiln_lr_sched_free(s[0]);
        kiln_lr_sched_free(s[1]);
        kiln_optim_free(opt);
        kiln_tensor_free(w);
    }
    /* resuming a schedule: counters restored, lr restored by the caller */
    {
        float z = 0;
        int64_t one = 1;
        kiln_tensor *w = param_from(ctx, &z, 1, &one);
        kiln_sgd_opts o = kiln_sgd_defaults();
        o.lr = 0.1;
        kiln_optim *opt = kiln_sgd(ctx, &w, 1, &o);
        kiln_lr_sched *s = kiln_cosine_annealing_lr(opt, 10, 0.001);
        const golden_tensor *ref = golden_get(&g, "sched.cosine");
        if (ref) {
            kiln_optim_set_lr(opt, golden_double(ref, 17));
            CHECK(kiln_lr_sched_set_last_epoch(s, 17) == KILN_OK, "set_last_epoch");
            for (int k = 18; k <= 30; k++) {
                kiln_lr_sched_step(s);
                CHECK(kiln_optim_lr(opt) == golden_double(ref, k), "resumed cosine at %d: %.17g vs %.17g", k,
                      kiln_optim_lr(opt), golden_double(ref, k));
            }
        }
        kiln_lr_sched_free(s);
        kiln_optim_free(opt);
        kiln_tensor_free(w);
    }
    golden_close(&g);
    CHECK_OK(ctx);
}

/* ---- clipping --------------------------------------------------------------------------------- */

/* torch's clip_grad_norm_ in double: total over the gradients, coef = clamp(max/(t+1e-6), 1). */
static double ref_clip(int n, double **g, const int64_t *len, double max_norm, double p) {
    double acc = 0;
    for (int j = 0; j < n; j++)
        for (int64_t i = 0; i < len[j]; i++) {
            double a = fabs(g[j][i]);
            if (isinf(p))
                acc = (a > acc || isnan(a)) ? a : acc;
            else
                acc += pow(a, p);
        }
    double total = isinf(p) ? acc : pow(acc, 1 / p);
    double coef = max_norm / (total + 1e-6);
    if (coef > 1) coef = 1;
    for (int j = 0; j < n; j++)
        for (int64_t i = 0; i < len[j]; i++) g[j][i] *= coef;
    return total;
}

static double clip_rtol(double p) { return (isinf(p) ? 0 : (p == 1 || p == 2) ? 8 : 40) * FLT_EPSILON; }

static void test_clip_golden(kiln_ctx *ctx) {
    golden g;
    if (!golden_open(&g, "optim")) return;
    const golden_tensor *in[3], *cases = golden_get(&g, "clip.cases");
    char key[64];
    for (int j = 0; j < 3; j++) {
        snprintf(key, sizeof key, "clip.g%d", j);
        in[j] = golden_get(&g, key);
    }
    if (!cases || !in[0] || !in[1] || !in[2]) {
        golden_close(&g);
        return;
    }
    for (int c = 0; c < (int)cases->numel / 4; c++) {
        double max_norm = golden_double(cases, 2 * c), p = golden_double(cases, 2 * c + 1);
        kiln_scope_begin(ctx);
        kiln_tensor *ps[3];
        for (int j = 0; j < 3; j++) ps[j] = param_from(ctx, in[j]->f, in[j]->ndim, in[j]->shape);
        set_grad(ps[0], golden_upload(ctx, in[0]));
        set_grad(ps[1], golden_upload(ctx, in[1]));
        double *rg[2];
        int64_t len[2] = {in[0]->numel, in[1]->numel};
        for (int j = 0; j < 2; j++) {
            rg[j] = malloc(sizeof(double) * (size_t)len[j]);
            for (int64_t i = 0; i < len[j]; i++) rg[j][i] = in[j]->f[i];
        }
        double rtotal = ref_clip(2, rg, len, max_norm, p);
        kiln_tensor *total = c % 2 ? kiln_clip_grad_norm_tensor(ctx, 3, ps, max_norm, p) : NULL;
        float tf = c % 2 ? (total ? kiln_tensor_item(total) : NAN) : kiln_clip_grad_norm(ctx, 3, ps, max_norm, p);
        CHECK(!(c % 2) || (total && kiln_tensor_ndim(total) == 0), "device total is a 0-d tensor");
        snprintf(key, sizeof key, "clip%d.total", c);
        const golden_tensor *tt = golden_get(&g, key);
        double rt = clip_rtol(p);
        char what[96];
        snprintf(what, sizeof what, "clip_grad_norm p=%g max=%g total vs torch", p, max_norm);
        if (tt) h_compare(what, &tf, (double[]){tt->f[0]}, 1, 0, rt);
        snprintf(what, sizeof what, "clip_grad_norm p=%g max=%g total vs double", p, max_norm);
        h_compare(what, &tf, &rtotal, 1, 0, rt);
        for (int j = 0; j < 2; j++) {
            snprintf(key, sizeof key, "clip%d.g%d", c, j);
            snprintf(what, sizeof what, "clip_grad_norm p=%g max=%g grad %d vs torch", p, max_norm, j);
            golden_compare(what, kiln_tensor_grad(ps[j]), golden_get(&g, key), 0, rt + 3 * FLT_EPSILON);
            snprintf(what, sizeof what, "clip_grad_norm p=%g max=%g grad %d vs double", p, max_norm, j);
            compare_max(what, kiln_tensor_grad(ps[j]), rg[j], len[j], 0, rt + 3 * FLT_EPSILON);
            free(rg[j]);
        }
        CHECK(kiln_tensor_grad(ps[2]) == NULL, "a parameter without gradient stays without");
        kiln_scope_end(ctx);
        for (int j = 0; j < 3; j++) kiln_tensor_free(ps[j]);
    }
    /* clip_grad_value_ */
    kiln_tensor *ps[3];
    for (int j = 0; j < 3; j++) {
        ps[j] = param_from(ctx, in[j]->f, in[j]->ndim, in[j]->shape);
        set_grad(ps[j], golden_upload(ctx, in[j]));
    }
    CHECK(kiln_clip_grad_value(ctx, 3, ps, 0.25) == KILN_OK, "clip_grad_value: %s", kiln_error_message(ctx));
    for (int j = 0; j < 3; j++) {
        snprintf(key, sizeof key, "clipv.g%d", j);
        golden_compare("clip_grad_value vs torch", kiln_tensor_grad(ps[j]), golden_get(&g, key), 0, 0);
        kiln_tensor_free(ps[j]);
    }
    golden_close(&g);
    CHECK_OK(ctx);
}

/* Larger gradients (several work-groups each, capped partial counts), NaN and Inf. */
static void test_clip_reference(kiln_ctx *ctx) {
    const int64_t len[3] = {100003, 4097, 1};
    const double ptypes[] = {2, 1, INFINITY, 2.5};
    for (int pi = 0; pi < 4; pi++) {
        for (int special = 0; special < 3; special++) { /* 0: finite, 1: an Inf, 2: a NaN */
            if (special && pi == 3) continue;
            double p = ptypes[pi], max_norm = 0.75;
            kiln_scope_begin(ctx);
            kiln_tensor *ps[3];
            double *rg[3];
            for (int j = 0; j < 3; j++) {
                float *h = malloc(sizeof(float) * (size_t)len[j]);
                h_fill(h, len[j], -0.05f, 0.05f);
                /* (the Inf among the elements after the last float8 unit, the NaN in a unit) */
                if (special == 1 && j == 1) h[4096] = -INFINITY;
                if (special == 2 && j == 0) h[99999] = NAN;
                ps[j] = param_from(ctx, h, 1, &len[j]);
                set_grad(ps[j], kiln_from_host(ctx, h, KILN_F32, 1, &len[j]));
                rg[j] = malloc(sizeof(double) * (size_t)len[j]);
                for (int64_t i = 0; i < len[j]; i++) rg[j][i] = h[i];
                free(h);
            }
            double rtotal = ref_clip(3, rg, len, max_norm, p);
            float tf = kiln_clip_grad_norm(ctx, 3, ps, max_norm, p);
            char what[96];
            snprintf(what, sizeof what, "clip p=%g case %d total", p, special);
            h_compare(what, &tf, &rtotal, 1, 0, clip_rtol(p));
            for (int j = 0; j < 3; j++) {
                snprintf(what, sizeof what, "clip p=%g case %d grad %d", p, special, j);
                compare_max(what, kiln_tensor_grad(ps[j]), rg[j], len[j], 0, clip_rtol(p) + 3 * FLT_EPSILON);
                free(rg[j]);
                kiln_tensor_free(ps[j]);
            }
            kiln_scope_end(ctx);
        }
    }
    /* no gradients at all: total 0, nothing touched */
    float z = 1;
    int64_t one = 1;
    kiln_tensor *w = param_from(ctx, &z, 1, &one);
    CHECK(kiln_clip_grad_norm(ctx, 1, &w, 1.0, 2.0) == 0.0f, "no gradients: total 0");
    CHECK(kiln_clip_grad_norm(ctx, 0, NULL, 1.0, 2.0) == 0.0f, "empty list: total 0");
    CHECK(kiln_clip_grad_value(ctx, 1, &w, 1.0) == KILN_OK, "clip value without gradients");
    kiln_tensor_free(w);
    CHECK_OK(ctx);
}

/* ---- errors ------------------------------------------------------------------------------------ */

#define EXPECT_ERR(ctx, call_ok, status, text)                                                                         \
    do {                                                                                                               \
        kiln_error_clear(ctx);                                                                                         \
        bool ok_ = (call_ok);                                                                                          \
        CHECK(!ok_ && kiln_error_status(ctx) == (status) && strstr(kiln_error_message(ctx), (text)) != NULL,           \
              "expected %s containing \"%s\", got %s: %s", kiln_status_name(status), (text),                           \
              kiln_status_name(kiln_error_status(ctx)), kiln_error_message(ctx));                                      \
        kiln_error_clear(ctx);                                                                                         \
    } while (0)

static void test_errors(kiln_ctx *ctx) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    float data[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    int64_t s34[2] = {3, 4}, s12 = 12;
    kiln_tensor *a = param_from(ctx, data, 2, s34), *b = param_from(ctx, data, 1, &s12);
    kiln_tensor *nograd = kiln_tensor_keep(kiln_from_host(ctx, data, KILN_F32, 2, s34));
    int32_t idata[4] = {0};
    int64_t s4 = 4;
    kiln_tensor *ints = kiln_tensor_keep(kiln_from_host(ctx, idata, KILN_I32, 1, &s4));
    kiln_sgd_opts sgd = kiln_sgd_defaults();
    sgd.lr = 0.1;
    kiln_adam_opts adam = kiln_adam_defaults();
    kiln_rmsprop_opts rms = kiln_rmsprop_defaults();

    /* defaults mirror torch 2 (SGD's lr=1e-3 included) */
    kiln_adam_opts aw = kiln_adamw_defaults();
    kiln_sgd_opts sd = kiln_sgd_defaults();
    CHECK(adam.lr == 1e-3 && adam.beta1 == 0.9 && adam.beta2 == 0.999 && adam.eps == 1e-8 && adam.weight_decay == 0 &&
              aw.weight_decay == 1e-2 && rms.lr == 1e-2 && rms.alpha == 0.99 && rms.eps == 1e-8 && sd.lr == 1e-3 &&
              sd.momentum == 0 && sd.dampening == 0 && sd.weight_decay == 0 && !sd.nesterov && !sd.maximize,
          "defaults");

    kiln_tensor *ps[2] = {a, b};
    kiln_optim *opt = NULL;
    CHECK(kiln_sgd(NULL, ps, 2, &sgd) == NULL && strstr(kiln_last_error(), "kiln_sgd"), "NULL ctx: %s",
          kiln_last_error());
    EXPECT_ERR(ctx, kiln_sgd(ctx, NULL, 2, &sgd) != NULL, KILN_ERR_NULL, "params is NULL");
    /* NULL options are the defaults */
    opt = kiln_sgd(ctx, ps, 2, NULL);
    CHECK(opt && kiln_optim_lr(opt) == 1e-3, "kiln_sgd with NULL options: %s", kiln_error_message(ctx));
    kiln_optim_free(opt);
    opt = NULL;
    /* a zeroed struct is literal: lr 0 is valid (torch accepts it), a negative one is not */
    sgd = (kiln_sgd_opts){.lr = -1};
    EXPECT_ERR(ctx, kiln_sgd(ctx, ps, 2, &sgd) != NULL, KILN_ERR_INVALID_ARGUMENT, "Invalid learning rate: -1");
    sgd = kiln_sgd_defaults();
    sgd.lr = 0.1;
    EXPECT_ERR(ctx, kiln_adam(ctx, ps, 0, NULL) != NULL, KILN_ERR_INVALID_ARGUMENT, "empty parameter list");
    kiln_tensor *withnull[2] = {a, NULL};
    EXPECT_ERR(ctx, kiln_adam(ctx, withnull, 2, NULL) != NULL, KILN_ERR_NULL, "parameter 1 is NULL");
    /* a parameter without requires_grad is accepted (frozen: kiln_optim_step skips it), as torch accepts it */
    kiln_tensor *noreq[2] = {a, nograd};
    opt = kiln_adam(ctx, noreq, 2, NULL);
    CHECK(opt && kiln_optim_num_params(opt) == 2, "a frozen parameter is accepted: %s", kiln_error_message(ctx));
    kiln_optim_free(opt);
    opt = NULL;
    kiln_tensor *withint[2] = {ints, a};
    EXPECT_ERR(ctx, kiln_rmsprop(ctx, withint, 2, NULL) != NULL, KILN_ERR_DTYPE, "parameter 0 [4] has dtype i32");
    bool prev = kiln_ctx_set_grad_enabled(ctx, false);
    kiln_tensor *tv = kiln_transpose(ctx, nograd, 0, 1); /* a leaf view, not contiguous */
    kiln_ctx_set_grad_enabled(ctx, prev);
    kiln_tensor_set_requires_grad(tv, true);
    kiln_tensor *withview[2] = {a, tv};
    EXPECT_ERR(ctx, kiln_adamw(ctx, withview, 2, NULL) != NULL, KILN_ERR_INVALID_ARGUMENT,
               "parameter 1 [4, 3] is not contiguous");
    kiln_tensor *nonleaf = kiln_mul(ctx, a, a);
    kiln_tensor *withnl[1] = {nonleaf};
    EXPECT_ERR(ctx, kiln_sgd(ctx, withnl, 1, &sgd) != NULL, KILN_ERR_INVALID_ARGUMENT, "can't optimize a non-leaf");
    kiln_tensor *dup[3] = {a, b, a};
    EXPECT_ERR(ctx, kiln_sgd(ctx, dup, 3, &sgd) != NULL, KILN_ERR_INVALID_ARGUMENT, "parameters 0 and 2");
    kiln_tensor *row0 = kiln_slice(ctx, nograd, 0, 0, 1, 1), *rows = kiln_slice(ctx, nograd, 0, 0, 2, 1);
    kiln_tensor_set_requires_grad(row0, true);
    kiln_tensor_set_requires_grad(rows, true);
    kiln_tensor *overlap[2] = {rows, row0};
    EXPECT_ERR(ctx, kiln_sgd(ctx, overlap, 2, &sgd) != NULL, KILN_ERR_INVALID_ARGUMENT, "overlapping views");

    /* hyper-parameters: torch's messages */
    kiln_sgd_opts so = sgd;
    so.lr = -1;
    EXPECT_ERR(ctx, kiln_sgd(ctx, ps, 2, &so) != NULL, KILN_ERR_INVALID_ARGUMENT, "Invalid learning rate: -1.0");
    so = sgd, so.lr = NAN;
    EXPECT_ERR(ctx, kiln_sgd(ctx, ps, 2, &so) != NULL, KILN_ERR_INVALID_ARGUMENT, "Invalid learning rate: nan");
    so = sgd, so.momentum = -0.5;
    EXPECT_ERR(ctx, kiln_sgd(ctx, ps, 2, &so) != NULL, KILN_ERR_INVALID_ARGUMENT, "Invalid momentum value: -0.5");
    so = sgd, so.weight_decay = -0.1;
    EXPECT_ERR(ctx, kiln_sgd(ctx, ps, 2, &so) != NULL, KILN_ERR_INVALID_ARGUMENT, "Invalid weight_decay value: -0.1");
    so = sgd, so.nesterov = true;
    EXPECT_ERR(ctx, kiln_sgd(ctx, ps, 2, &so) != NULL, KILN_ERR_INVALID_ARGUMENT,
               "Nesterov momentum requires a momentum and zero dampening");
    so.momentum = 0.9, so.dampening = 0.1;
    EXPECT_ERR(ctx, kiln_sgd(ctx, ps, 2, &so) != NULL, KILN_ERR_INVALID_ARGUMENT,
               "Nesterov momentum requires a momentum and zero dampening");
    kiln_adam_opts ao = adam;
    ao.beta1 = 1.0;
    EXPECT_ERR(ctx, kiln_adam(ctx, ps, 2, &ao) != NULL, KILN_ERR_INVALID_ARGUMENT,
               "Invalid beta parameter at index 0: 1.0");
    ao = adam, ao.beta2 = -0.25;
    EXPECT_ERR(ctx, kiln_adamw(ctx, ps, 2, &ao) != NULL, KILN_ERR_INVALID_ARGUMENT,
               "Invalid beta parameter at index 1: -0.25");
    ao = adam, ao.eps = -1e-8;
    EXPECT_ERR(ctx, kiln_adam(ctx, ps, 2, &ao) != NULL, KILN_ERR_INVALID_ARGUMENT, "Invalid epsilon value: -1e-08");
    ao = adam, ao.lr = -0.001;
    EXPECT_ERR(ctx, kiln_adamw(ctx, ps, 2, &ao) != NULL, KILN_ERR_INVALID_ARGUMENT, "Invalid learning rate: -0.001");
    ao = adam, ao.weight_decay = -1;
    EXPECT_ERR(ctx, kiln_adam(ctx, ps, 2, &ao) != NULL, KILN_ERR_INVALID_ARGUMENT, "Invalid weight_decay value: -1.0");
    kiln_rmsprop_opts ro = rms;
    ro.alpha = -0.9;
    EXPECT_ERR(ctx, kiln_rmsprop(ctx, ps, 2, &ro) != NULL, KILN_ERR_INVALID_ARGUMENT, "Invalid alpha value: -0.9");
    ro = rms, ro.momentum = -1;
    EXPECT_ERR(ctx, kiln_rmsprop(ctx, ps, 2, &ro) != NULL, KILN_ERR_INVALID_ARGUMENT, "Invalid momentum value: -1.0");
    ro = rms, ro.eps = -1;
    EXPECT_ERR(ctx, kiln_rmsprop(ctx, ps, 2, &ro) != NULL, KILN_ERR_INVALID_ARGUMENT, "Invalid epsilon value: -1.0");

    /* a working optimizer: bad gradients, lr, state and step accessors */
    opt = kiln_adam(ctx, ps, 2, NULL);
    CHECK(opt != NULL && kiln_optim_ctx(opt) == ctx && strcmp(kiln_optim_kind(opt), "Adam") == 0 &&
              kiln_optim_num_params(opt) == 2 && kiln_optim_param(opt, 1) == b && kiln_optim_param(opt, 2) == NULL &&
              kiln_optim_lr(opt) == 1e-3,
          "accessors: %s", kiln_error_message(ctx));
    CHECK(kiln_optim_step(opt) == KILN_OK, "a step without gradients is a no-op");
    kiln_optim_zero_grad(opt);
    set_grad(a, kiln_from_host(ctx, data, KILN_F32, 1, &s12)); /* [12] for a [3, 4] parameter */
    set_grad(b, kiln_from_host(ctx, data, KILN_F32, 1, &s12));
    EXPECT_ERR(ctx, kiln_optim_step(opt) == KILN_OK, KILN_ERR_SHAPE, "parameter 0 [3, 4] has a gradient [12]");
    float after[12];
    kiln_to_host(b, after, sizeof after);
    CHECK(memcmp(after, data, sizeof after) == 0 && kiln_optim_step_count(opt, 1) == 0,
          "a failed step changes no parameter");
    const char *name = NULL;
    kiln_tensor *st = NULL;
    CHECK(kiln_optim_num_states(opt) == 0, "no state before the first update");
    EXPECT_ERR(ctx, kiln_optim_state(opt, 0, &name, &st) != KILN_ERR_RANGE, KILN_ERR_RANGE, "entry 0 of 0");
    set_grad(a, kiln_from_host(ctx, data, KILN_F32, 2, s34));
    CHECK(kiln_optim_step(opt) == KILN_OK, "step: %s", kiln_error_message(ctx));
    CHECK(kiln_optim_state(opt, 3, &name, &st) == KILN_OK && strcmp(name, "1.exp_avg_sq") == 0, "4th entry %s",
          name ? name : "(none)");
    CHECK(kiln_optim_num_states(opt) == 4, "4 entries, not %d", kiln_optim_num_states(opt));
    EXPECT_ERR(ctx, kiln_optim_state(opt, 4, &name, &st) != KILN_ERR_RANGE, KILN_ERR_RANGE, "entry 4 of 4");
    EXPECT_ERR(ctx, kiln_optim_state(opt, -1, &name, &st) != KILN_ERR_RANGE, KILN_ERR_RANGE, "entry -1 of 4");
    CHECK(kiln_optim_state_find(opt, "0.exp_avg", false) != NULL &&
              kiln_optim_state_find(opt, "0.max_exp_avg_sq", false) == NULL,
          "state_find");
    EXPECT_ERR(ctx, kiln_optim_state_find(opt, "0.momentum_buffer", true) != NULL, KILN_ERR_INVALID_ARGUMENT,
               "has no state '0.momentum_buffer'");
    EXPECT_ERR(ctx, kiln_optim_state_find(opt, "2.exp_avg", true) != NULL, KILN_ERR_INVALID_ARGUMENT,
               "has no state '2.exp_avg'");
    EXPECT_ERR(ctx, kiln_optim_set_lr(opt, -0.5) == KILN_OK, KILN_ERR_INVALID_ARGUMENT, "Invalid learning rate: -0.5");
    EXPECT_ERR(ctx, kiln_optim_set_step_count(opt, 2, 1) == KILN_OK, KILN_ERR_RANGE, "parameter 2");
    EXPECT_ERR(ctx, kiln_optim_set_step_count(opt, 0, -3) == KILN_OK, KILN_ERR_RANGE, "step -3");
    CHECK(kiln_optim_set_step_count(opt, -1, 7) == KILN_OK && kiln_optim_step_count(opt, 0) == 7 &&
              kiln_optim_step_count(opt, 1) == 7 && kiln_optim_step_count(opt, 5) == -1,
          "set_step all");
    set_grad(b, ints);
    ints = NULL; /* now owned by b */
    EXPECT_ERR(ctx, kiln_optim_step(opt) == KILN_OK, KILN_ERR_DTYPE, "gradient [4] i32");
    set_grad(b, NULL);

    /* schedules */
    CHECK(kiln_step_lr(NULL, 3, 0.1) == NULL && strstr(kiln_last_error(), "optimizer is NULL"), "NULL optimizer");
    EXPECT_ERR(ctx, kiln_step_lr(opt, 0, 0.1) != NULL, KILN_ERR_INVALID_ARGUMENT, "step_size 0");
    EXPECT_ERR(ctx, kiln_cosine_annealing_lr(opt, 0, 0) != NULL, KILN_ERR_INVALID_ARGUMENT, "T_max 0");
    EXPECT_ERR(ctx, kiln_multistep_lr(opt, NULL, 2, 0.1) != NULL, KILN_ERR_INVALID_ARGUMENT, "2 milestones");
    EXPECT_ERR(ctx, kiln_linear_lr(opt, 1.5, 1, 5) != NULL, KILN_ERR_INVALID_ARGUMENT, "Starting multiplicative");
    EXPECT_ERR(ctx, kiln_linear_lr(opt, 0, 1, 5) != NULL, KILN_ERR_INVALID_ARGUMENT, "Starting multiplicative");
    EXPECT_ERR(ctx, kiln_linear_lr(opt, 0.5, -0.1, 5) != NULL, KILN_ERR_INVALID_ARGUMENT, "Ending multiplicative");
    CHECK(kiln_lr_sched_step(NULL) == KILN_ERR_NULL && isnan(kiln_lr_sched_last_lr(NULL)), "NULL scheduler");
    CHECK(kiln_optim_lr(opt) == 1e-3, "failed schedulers left the lr alone");

    /* clipping */
    CHECK(isnan(kiln_clip_grad_norm(NULL, 2, ps, 1, 2)), "NULL ctx");
    EXPECT_ERR(ctx, kiln_clip_grad_norm_tensor(ctx, 2, NULL, 1, 2) != NULL, KILN_ERR_NULL, "params is NULL");
    EXPECT_ERR(ctx, kiln_clip_grad_norm_tensor(ctx, 2, ps, 1, 0) != NULL, KILN_ERR_INVALID_ARGUMENT,
               "norm_type 0.0 is not supported");
    EXPECT_ERR(ctx, kiln_clip_grad_norm_tensor(ctx, 2, ps, 1, NAN) != NULL, KILN_ERR_INVALID_ARGUMENT, "norm_type nan");
    EXPECT_ERR(ctx, kiln_clip_grad_value(ctx, 2, ps, NAN) == KILN_OK, KILN_ERR_INVALID_ARGUMENT, "clip_value is NaN");
    EXPECT_ERR(ctx, kiln_clip_grad_norm_tensor(ctx, 2, withnull, 1, 2) != NULL, KILN_ERR_NULL, "input 1 is NULL");
    kiln_tensor *gbase = kiln_from_host(ctx, data, KILN_F32, 2, (int64_t[]){4, 3});
    set_grad(a, kiln_transpose(ctx, gbase, 0, 1));
    kiln_tensor_free(gbase);
    EXPECT_ERR(ctx, kiln_clip_grad_value(ctx, 2, ps, 1) == KILN_OK, KILN_ERR_UNSUPPORTED, "not contiguous");
    CHECK(kiln_optim_step(opt) == KILN_OK, "a strided gradient is fine for a step: %s", kiln_error_message(ctx));

    CHECK(kiln_optim_step(NULL) == KILN_ERR_NULL && kiln_optim_zero_grad(NULL) == KILN_ERR_NULL &&
              kiln_optim_step_count(NULL, 0) == -1 && isnan(kiln_optim_lr(NULL)) && kiln_optim_ctx(NULL) == NULL,
          "NULL optimizer accessors");
    kiln_optim_free(NULL);
    kiln_optim_free(opt);
    kiln_tensor_free(a);
    kiln_tensor_free(b);
    kiln_tensor_free(nograd);
    kiln_tensor_free(ints);
    kiln_tensor_free(tv);
    kiln_tensor_free(nonleaf);
    kiln_tensor_free(row0);
    kiln_tensor_free(rows);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "error paths leaked %lld tensors",
          (long long)(kiln_ctx_num_tensors(ctx) - before));
    kiln_error_clear(ctx);
}

/* A scope around a whole training loop frees nothing of the optimizer: state is kept. */

/* ---- parameter groups ------------------------------------------------------------------------ */

/* SGD nesterov over two groups with their own lr and weight decay, scheduled per step by
 * kiln_sequential_lr(linear warm-up, cosine), a frozen parameter (with a stale gradient) in
 * the decayed group: lrs bit for bit, parameters within the trajectory bound, against torch. */
static void test_groups_golden(kiln_ctx *ctx) {
    golden g;
    if (!golden_open(&g, "optim")) return;
    enum { GSTEPS = 10, GP = 4 };
    kiln_tensor *p[GP];
    const golden_tensor *init[GP], *grad[GP], *traj[GP];
    for (int j = 0; j < GP; j++) {
        char k1[64], k2[64], k3[64];
        snprintf(k1, sizeof k1, "groups.init.p%d", j);
        snprintf(k2, sizeof k2, "groups.grad.p%d", j);
        snprintf(k3, sizeof k3, "groups.traj.p%d", j);
        init[j] = golden_get(&g, k1);
        grad[j] = golden_get(&g, k2);
        traj[j] = golden_get(&g, k3);
        if (!init[j] || !grad[j] || !traj[j]) {
            golden_close(&g);
            return;
        }
        p[j] = param_from(ctx, init[j]->f, init[j]->ndim, init[j]->shape);
    }
    const golden_tensor *lrs = golden_get(&g, "groups.lr");
    kiln_tensor_set_requires_grad(p[3], false); /* frozen, in the decayed group */
    kiln_sgd_opts o = kiln_sgd_defaults();
    o.lr = 0.1;
    o.momentum = 0.9;
    o.nesterov = true;
    o.weight_decay = 0.05;
    kiln_optim *opt = kiln_sgd(ctx, (kiln_tensor *[]){p[0], p[3]}, 2, &o);
    kiln_sgd_opts o1 = o;
    o1.lr = 0.03;
    o1.weight_decay = 0;
    CHECK(kiln_optim_add_sgd_group(opt, (kiln_tensor *[]){p[1], p[2]}, 2, &o1) == KILN_OK, "add group: %s",
          kiln_error_message(ctx));
    CHECK(kiln_optim_num_groups(opt) == 2 && kiln_optim_num_params(opt) == 4 && kiln_optim_param_group(opt, 1) == 0 &&
              kiln_optim_param_group(opt, 2) == 1 && kiln_optim_param(opt, 2) == p[1] &&
              kiln_optim_group_weight_decay(opt, 0) == 0.05 && kiln_optim_group_weight_decay(opt, 1) == 0,
          "group bookkeeping");
    kiln_lr_sched *ph[2] = {kiln_linear_lr(opt, 0.01, 1.0, 3), kiln_cosine_annealing_lr(opt, GSTEPS - 3, 0.0)};
    kiln_lr_sched *seq = kiln_sequential_lr(opt, ph, 2, (int[]){3});
    CHECK(seq != NULL, "kiln_sequential_lr: %s", kiln_error_message(ctx));
    /* kiln's parameter order: group 0 (p0, p3), then group 1 (p1, p2), as torch numbers them */
    static const int tj[GP] = {0, 3, 1, 2};
    for (int k = 0; seq && lrs && k <= GSTEPS; k++) {
        if (k > 0) {
            kiln_scope_begin(ctx);
            for (int j = 0; j < GP; j++) {
                int64_t n = init[j]->numel;
                /* the frozen one gets a (stale) gradient too: it must be skipped anyway */
                set_grad(p[j], kiln_from_host(ctx, grad[j]->f + (k - 1) * n, KILN_F32, init[j]->ndim, init[j]->shape));
            }
            CHECK(kiln_optim_step(opt) == KILN_OK, "step %d: %s", k, kiln_error_message(ctx));
            kiln_lr_sched_step(seq);
            kiln_scope_end(ctx);
            for (int j = 0; j < GP; j++) {
                int64_t n = init[j]->numel;
                double *ref = malloc(sizeof *ref * (size_t)n);
                for (int64_t e = 0; e < n; e++) ref[e] = traj[j]->f[(k - 1) * n + e];
                double tol = k * TRAJ_ULPS * FLT_EPSILON;
                char what[64];
                snprintf(what, sizeof what, "groups p%d after step %d", j, k);
                compare_max(what, p[j], ref, n, j == 3 ? 0 : tol, j == 3 ? 0 : tol);
                free(ref);
            }
        }
        for (int q = 0; q < 2; q++)
            CHECK(kiln_optim_group_lr(opt, q) == golden_double(lrs, 2 * k + q),
                  "group %d lr after %d steps: %.17g, torch %.17g", q, k, kiln_optim_group_lr(opt, q),
                  golden_double(lrs, 2 * k + q));
    }
    (void)tj;
    /* momentum buffers where torch has them; none for the frozen parameter, its step count 0 */
    const char *bufs[2] = {"0.momentum_buffer", "2.momentum_buffer"};
    for (int q = 0; q < 2; q++) {
        char key[64];
        snprintf(key, sizeof key, "groups.state.%s", bufs[q]);
        const golden_tensor *ref = golden_get(&g, key);
        kiln_tensor *t = kiln_optim_state_find(opt, bufs[q], false);
        CHECK(t && ref, "state %s", bufs[q]);
        if (t && ref) {
            double *r = malloc(sizeof *r * (size_t)ref->numel);
            for (int64_t e = 0; e < ref->numel; e++) r[e] = ref->f[e];
            compare_max(bufs[q], t, r, ref->numel, GSTEPS * TRAJ_ULPS * FLT_EPSILON, GSTEPS * TRAJ_ULPS * FLT_EPSILON);
            free(r);
        }
    }
    CHECK(kiln_optim_state_find(opt, "1.momentum_buffer", false) == NULL && kiln_optim_step_count(opt, 1) == 0 &&
              kiln_optim_step_count(opt, 0) == GSTEPS,
          "the frozen parameter has no state and no steps");
    kiln_lr_sched_free(seq);
    kiln_optim_free(opt);
    for (int j = 0; j < GP; j++) kiln_tensor_free(p[j]);
    golden_close(&g);
    CHECK_OK(ctx);
}

/* SequentialLR on two groups (lr 0.1 and 0.02): 30 steps, both groups' lrs bit for bit; and a
 * resume in the middle of the second and third phase. */
static void test_sequential(kiln_ctx *ctx) {
    golden g;
    if (!golden_open(&g, "optim")) return;
    const char *names[3] = {"warm_multistep", "warm_cosine", "three"};
    for (int si = 0; si < 3; si++) {
        for (int resume = 0; resume < 2; resume++) {
            float z[2] = {0, 0};
            int64_t two = 2;
            kiln_tensor *a = param_from(ctx, z, 1, &two), *b = param_from(ctx, z, 1, &two);
            kiln_sgd_opts o = kiln_sgd_defaults();
            o.lr = 0.1;
            kiln_optim *opt = kiln_sgd(ctx, &a, 1, &o);
            o.lr = 0.02;
            kiln_optim_add_sgd_group(opt, &b, 1, &o);
            kiln_lr_sched *s;
            if (si == 0)
                s = kiln_sequential_lr(opt,
                                       (kiln_lr_sched *[]){kiln_linear_lr(opt, 0.1, 1.0, 5),
                                                           kiln_multistep_lr(opt, (int[]){6, 12, 12}, 3, 0.5)},
                                       2, (int[]){5});
            else if (si == 1)
                s = kiln_sequential_lr(
                    opt, (kiln_lr_sched *[]){kiln_linear_lr(opt, 1e-3, 1.0, 4), kiln_cosine_annealing_lr(opt, 26, 0)},
                    2, (int[]){4});
            else
                s = kiln_sequential_lr(opt,
                                       (kiln_lr_sched *[]){kiln_exponential_lr(opt, 0.8), kiln_step_lr(opt, 3, 0.5),
                                                           kiln_cosine_annealing_lr(opt, 6, 0.001)},
                                       3, (int[]){4, 13});
            CHECK(s != NULL, "%s: %s", names[si], kiln_error_message(ctx));
            char key[64];
            snprintf(key, sizeof key, "seq.%s", names[si]);
            const golden_tensor *ref = golden_get(&g, key);
            int from = 0;
            if (resume && s && ref) { /* a checkpoint's counters and lrs, as a loader restores them */
                from = si == 2 ? 15 : 9;
                kiln_optim_group_set_lr(opt, 0, golden_double(ref, 2 * from));
                kiln_optim_group_set_lr(opt, 1, golden_double(ref, 2 * from + 1));
                CHECK(kiln_lr_sched_set_last_epoch(s, from) == KILN_OK, "set_last_epoch");
            }
            for (int k = from; s && ref && k <= 30; k++) {
                if (k > from) kiln_lr_sched_step(s);
                for (int q = 0; q < 2; q++)
                    CHECK(kiln_optim_group_lr(opt, q) == golden_double(ref, 2 * k + q),
                          "%s%s group %d after %d steps: %.17g, torch %.17g", names[si], resume ? " resumed" : "", q, k,
                          kiln_optim_group_lr(opt, q), golden_double(ref, 2 * k + q));
                CHECK(kiln_lr_sched_last_lr(s) == kiln_optim_group_lr(opt, 0) && kiln_lr_sched_last_epoch(s) == k,
                      "%s: last lr / epoch at %d", names[si], k);
            }
            kiln_lr_sched_free(s);
            kiln_optim_free(opt);
            kiln_tensor_free(a);
            kiln_tensor_free(b);
        }
    }
    golden_close(&g);
    CHECK_OK(ctx);
}

/* The weight-decay split, groups through a checkpoint (every group's lr and state back), and
 * the groups' error paths. */
static void test_groups_misc(kiln_ctx *ctx) {
    kiln_manual_seed(ctx, 7);
    kiln_module *net =
        kiln_nn_sequential(ctx, 3,
                           (kiln_module *[]){kiln_nn_linear(ctx, 4, 3, true), kiln_nn_batchnorm1d(ctx, 3, 1e-5f, 0.1f),
                                             kiln_nn_linear(ctx, 3, 2, true)});
    CHECK(net != NULL, "net: %s", kiln_error_message(ctx));
    if (!net) return;
    kiln_tensor *ps[8], *dec[8], *nodec[8];
    int n = kiln_module_parameters(net, ps, 8), nd = -1, nn = -1;
    CHECK(kiln_params_split_decay(n, ps, dec, &nd, nodec, &nn) == KILN_OK && n == 6 && nd == 2 && nn == 4 &&
              dec[0] == ps[0] && dec[1] == ps[4] && nodec[0] == ps[1] && nodec[1] == ps[2] && nodec[3] == ps[5],
          "split: %d params, %d decay, %d no decay", n, nd, nn);
    int nd2, nn2;
    CHECK(kiln_params_split_decay(n, ps, NULL, &nd2, nodec, &nn2) == KILN_ERR_NULL &&
              strstr(kiln_last_error(), "kiln_params_split_decay: decay is NULL"),
          "split NULL: %s", kiln_last_error());
    kiln_tensor *withnull[2] = {ps[0], NULL};
    kiln_tensor *dec2[2], *nodec2[2];
    CHECK(kiln_params_split_decay(2, withnull, dec2, &nd2, nodec2, &nn2) == KILN_ERR_NULL &&
              strstr(kiln_last_error(), "parameter 1 is NULL"),
          "split NULL parameter: %s", kiln_last_error());

    kiln_sgd_opts o = kiln_sgd_defaults();
    o.lr = 0.1;
    o.momentum = 0.9;
    o.weight_decay = 1e-2;
    kiln_optim *opt = kiln_sgd(ctx, dec, nd, &o);
    o.weight_decay = 0;
    o.lr = 0.05;
    CHECK(opt && kiln_optim_add_sgd_group(opt, nodec, nn, &o) == KILN_OK, "groups: %s", kiln_error_message(ctx));
    /* errors: nothing changes */
    EXPECT_ERR(ctx, kiln_optim_add_sgd_group(opt, nodec, 1, NULL) == KILN_OK, KILN_ERR_INVALID_ARGUMENT,
               "parameter 0 [3] shares memory with the optimizer's parameter 2");
    EXPECT_ERR(ctx, kiln_optim_add_adam_group(opt, nodec, 0, NULL) == KILN_OK, KILN_ERR_INVALID_ARGUMENT,
               "kiln_optim_add_adam_group: the optimizer is SGD");
    kiln_sgd_opts bad = o;
    bad.lr = -2;
    float z = 0;
    int64_t one = 1;
    kiln_tensor *extra = param_from(ctx, &z, 1, &one);
    EXPECT_ERR(ctx, kiln_optim_add_sgd_group(opt, &extra, 1, &bad) == KILN_OK, KILN_ERR_INVALID_ARGUMENT,
               "kiln_optim_add_sgd_group: Invalid learning rate: -2");
    EXPECT_ERR(ctx, kiln_optim_add_sgd_group(opt, &extra, -1, NULL) == KILN_OK, KILN_ERR_INVALID_ARGUMENT,
               "empty parameter list (n = -1)");
    CHECK(kiln_optim_num_groups(opt) == 2 && kiln_optim_num_params(opt) == 6, "failed adds changed nothing");
    EXPECT_ERR(ctx, !isnan(kiln_optim_group_lr(opt, 2)), KILN_ERR_RANGE, "kiln_optim_group_lr: group 2 of 2");
    EXPECT_ERR(ctx, kiln_optim_group_set_lr(opt, -1, 0.1) == KILN_OK, KILN_ERR_RANGE, "group -1 of 2");
    EXPECT_ERR(ctx, kiln_optim_group_set_lr(opt, 1, NAN) == KILN_OK, KILN_ERR_INVALID_ARGUMENT,
               "Invalid learning rate: nan");
    EXPECT_ERR(ctx, kiln_optim_param_group(opt, 6) != -1, KILN_ERR_RANGE, "parameter 6 of 6");
    EXPECT_ERR(ctx, !isnan(kiln_optim_group_weight_decay(opt, 5)), KILN_ERR_RANGE, "group 5 of 2");
    EXPECT_ERR(ctx, kiln_optim_add_rmsprop_group(opt, &extra, 1, NULL) == KILN_OK, KILN_ERR_INVALID_ARGUMENT,
               "kiln_optim_add_rmsprop_group: the optimizer is SGD; this call adds RMSprop groups");
    CHECK(kiln_params_split_decay(-1, ps, dec2, &nd2, nodec2, &nn2) == KILN_ERR_INVALID_ARGUMENT &&
              strstr(kiln_last_error(), "kiln_params_split_decay: n = -1"),
          "split n < 0: %s", kiln_last_error());
    CHECK(kiln_optim_param_group(NULL, 0) == -1 && isnan(kiln_optim_group_lr(NULL, 0)) &&
              kiln_optim_group_set_lr(NULL, 0, 0.1) == KILN_ERR_NULL,
          "NULL optimizer getters");
    CHECK(kiln_optim_add_sgd_group(NULL, &extra, 1, NULL) == KILN_ERR_NULL && kiln_optim_num_groups(NULL) == 0 &&
              isnan(kiln_optim_group_weight_decay(NULL, 0)),
          "NULL optimizer");
    /* an empty group and a group with the constructor's options */
    CHECK(kiln_optim_add_sgd_group(opt, NULL, 0, NULL) == KILN_OK && kiln_optim_num_groups(opt) == 3 &&
              kiln_optim_group_lr(opt, 2) == 0.1 && kiln_optim_group_weight_decay(opt, 2) == 1e-2,
          "empty group with the defaults: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);

    /* sequential errors: the schedulers are freed (leak-checked) */
    kiln_sgd_opts so = kiln_sgd_defaults();
    kiln_optim *other = kiln_sgd(ctx, &extra, 1, &so);
    EXPECT_ERR(ctx, kiln_sequential_lr(opt, (kiln_lr_sched *[]){kiln_exponential_lr(other, 0.9)}, 1, NULL) != NULL,
               KILN_ERR_INVALID_ARGUMENT, "schedulers at index 0 to be different than the optimizer passed in");
    EXPECT_ERR(ctx,
               kiln_sequential_lr(opt,
                                  (kiln_lr_sched *[]){kiln_exponential_lr(opt, 0.9), kiln_exponential_lr(opt, 0.5),
                                                      kiln_exponential_lr(opt, 0.5)},
                                  3, (int[]){4, 4}) != NULL,
               KILN_ERR_INVALID_ARGUMENT, "milestones must increase (milestone 1 is 4 after 4)");
    EXPECT_ERR(ctx,
               kiln_sequential_lr(opt,
                                  (kiln_lr_sched *[]){kiln_exponential_lr(opt, 0.9), kiln_exponential_lr(opt, 0.5)}, 2,
                                  NULL) != NULL,
               KILN_ERR_NULL, "2 schedulers need 1 milestones");
    EXPECT_ERR(ctx, kiln_sequential_lr(opt, NULL, 0, NULL) != NULL, KILN_ERR_INVALID_ARGUMENT, "it needs at least one");
    EXPECT_ERR(ctx,
               kiln_sequential_lr(opt,
                                  (kiln_lr_sched *[]){kiln_exponential_lr(opt, 0.9), kiln_exponential_lr(opt, 0.5)}, 2,
                                  (int[]){0}) != NULL,
               KILN_ERR_INVALID_ARGUMENT, "milestone 0 is 0; it must be >= 1");
    EXPECT_ERR(ctx,
               kiln_sequential_lr(opt, (kiln_lr_sched *[]){kiln_exponential_lr(opt, 0.9), NULL}, 2, (int[]){3}) != NULL,
               KILN_ERR_NULL, "scheduler 1 is NULL");
    {
        kiln_lr_sched *inner = kiln_sequential_lr(opt, (kiln_lr_sched *[]){kiln_exponential_lr(opt, 0.9)}, 1, NULL);
        CHECK(inner != NULL, "one-scheduler sequence: %s", kiln_error_message(ctx));
        EXPECT_ERR(ctx, kiln_sequential_lr(opt, (kiln_lr_sched *[]){inner}, 1, NULL) != NULL, KILN_ERR_UNSUPPORTED,
                   "scheduler 0 is itself a kiln_sequential_lr");
        kiln_lr_sched *twice = kiln_exponential_lr(opt, 0.9);
        EXPECT_ERR(ctx, kiln_sequential_lr(opt, (kiln_lr_sched *[]){twice, twice}, 2, (int[]){2}) != NULL,
                   KILN_ERR_INVALID_ARGUMENT, "schedulers 0 and 1 are the same");
        /* the failed call freed it (once) */
    }
    CHECK(kiln_sequential_lr(NULL, (kiln_lr_sched *[]){kiln_exponential_lr(opt, 0.9)}, 1, NULL) == NULL &&
              strstr(kiln_last_error(), "kiln_sequential_lr: optimizer is NULL"),
          "NULL optimizer: %s", kiln_last_error());
    kiln_optim_free(other);
    kiln_tensor_free(extra);

    /* a checkpoint keeps every group's lr; a one-group optimizer refuses it */
    kiln_optim_group_set_lr(opt, 1, 0.0125);
    kiln_optim_group_set_lr(opt, 2, 0.3);
    kiln_scope_begin(ctx);
    float xs[8] = {1, 2, 3, 4, -1, 0.5f, 2, -3};
    int32_t ys[2] = {0, 1};
    kiln_tensor *x = kiln_from_host(ctx, xs, KILN_F32, 2, (int64_t[]){2, 4});
    kiln_tensor *y = kiln_from_host(ctx, ys, KILN_I32, 1, (int64_t[]){2});
    kiln_backward(kiln_cross_entropy(ctx, kiln_forward(net, x), y, KILN_MEAN));
    kiln_optim_step(opt);
    kiln_scope_end(ctx);
    char path[256];
    snprintf(path, sizeof path, "%s/kiln_test_optim_groups_%d.safetensors",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    CHECK(kiln_checkpoint_save(path, net, opt, 0, NULL) == KILN_OK, "save: %s", kiln_error_message(ctx));
    so.momentum = 0.9; /* the configuration must match; the lrs come from the file */
    kiln_optim *back = kiln_sgd(ctx, dec, nd, &so);
    kiln_optim_add_sgd_group(back, nodec, nn, &so);
    kiln_optim_add_sgd_group(back, NULL, 0, &so);
    CHECK(kiln_checkpoint_load(path, net, back, NULL) == KILN_OK, "load: %s", kiln_error_message(ctx));
    CHECK(kiln_optim_group_lr(back, 0) == 0.1 && kiln_optim_group_lr(back, 1) == 0.0125 &&
              kiln_optim_group_lr(back, 2) == 0.3 && kiln_optim_num_states(back) == kiln_optim_num_states(opt) &&
              kiln_optim_num_states(back) == 6,
          "every group's lr and state back: %g %g %g, %d states", kiln_optim_group_lr(back, 0),
          kiln_optim_group_lr(back, 1), kiln_optim_group_lr(back, 2), kiln_optim_num_states(back));
    kiln_optim *one_group = kiln_sgd(ctx, ps, n, &so);
    EXPECT_ERR(ctx, kiln_checkpoint_load(path, net, one_group, NULL) == KILN_OK, KILN_ERR_INVALID_ARGUMENT,
               "holds the learning rates of 3 parameter groups, the optimizer has 1");
    remove(path);
    kiln_optim_free(one_group);
    kiln_optim_free(back);
    kiln_optim_free(opt);
    kiln_module_free(net);
    CHECK_OK(ctx);
}

/* Frozen parameters: kiln_optim_step skips them even with a stale gradient (no decay, no
 * momentum), gradient clipping leaves them out of the norm; unfrozen, they train again. */
static void test_frozen(kiln_ctx *ctx) {
    float a0[3] = {1, -2, 3}, b0[2] = {0.5f, 4};
    int64_t s3 = 3, s2 = 2;
    kiln_tensor *a = param_from(ctx, a0, 1, &s3), *b = param_from(ctx, b0, 1, &s2);
    kiln_sgd_opts o = kiln_sgd_defaults();
    o.lr = 0.1;
    o.momentum = 0.9;
    o.weight_decay = 0.5;
    kiln_optim *opt = kiln_sgd(ctx, (kiln_tensor *[]){a, b}, 2, &o);
    float ga[3] = {1, 1, 1}, gb[2] = {3, 4};
    set_grad(a, kiln_from_host(ctx, ga, KILN_F32, 1, &s3));
    set_grad(b, kiln_from_host(ctx, gb, KILN_F32, 1, &s2));
    kiln_tensor_set_requires_grad(b, false);
    /* the norm counts a's gradient only: sqrt(3) */
    float total = kiln_clip_grad_norm(ctx, 2, (kiln_tensor *[]){a, b}, 1e9, 2.0);
    CHECK(fabsf(total - sqrtf(3.0f)) < 1e-6f, "clip norm without the frozen gradient: %g", total);
    CHECK(kiln_optim_step(opt) == KILN_OK && kiln_optim_step(opt) == KILN_OK, "steps: %s", kiln_error_message(ctx));
    float hb[2], ha[3];
    kiln_to_host(b, hb, sizeof hb);
    kiln_to_host(a, ha, sizeof ha);
    CHECK(hb[0] == b0[0] && hb[1] == b0[1] && kiln_optim_step_count(opt, 1) == 0 &&
              kiln_optim_state_find(opt, "1.momentum_buffer", false) == NULL,
          "frozen: unchanged (%g %g), no step, no state", hb[0], hb[1]);
    /* a: two steps of SGD momentum with decay, in double */
    double buf = 0, v = a0[0];
    for (int k = 0; k < 2; k++) {
        double d = 1 + 0.5 * v;
        buf = k == 0 ? d : 0.9 * buf + d;
        v -= 0.1 * buf;
    }
    CHECK(fabs(ha[0] - v) < 1e-6, "trained: %g vs %g", ha[0], v);
    kiln_tensor_set_requires_grad(b, true);
    CHECK(kiln_optim_step(opt) == KILN_OK && kiln_optim_step_count(opt, 1) == 1, "unfrozen: trained again");
    kiln_to_host(b, hb, sizeof hb);
    CHECK(hb[0] != b0[0], "unfrozen: moved");
    kiln_optim_free(opt);
    kiln_tensor_free(a);
    kiln_tensor_free(b);
    CHECK_OK(ctx);
}

static void test_lifetime(kiln_ctx *ctx) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    float x[6] = {1, 2, 3, 4, 5, 6};
    int64_t s6 = 6;
    kiln_scope_begin(ctx);
    kiln_tensor *w = param_from(ctx, x, 1, &s6);
    kiln_optim *opt = kiln_sgd(ctx, &w, 1, &(kiln_sgd_opts){.lr = 0.1, .momentum = 0.9});
    kiln_scope_begin(ctx);
    set_grad(w, kiln_from_host(ctx, x, KILN_F32, 1, &s6));
    kiln_optim_step(opt);
    kiln_scope_end(ctx);
    kiln_scope_end(ctx);
    kiln_tensor *buf = kiln_optim_state_find(opt, "0.momentum_buffer", false);
    float h[6] = {0};
    CHECK(buf && kiln_to_host(buf, h, sizeof h) == KILN_OK && h[5] == 6.0f, "state survives scopes: %s",
          kiln_error_message(ctx));
    kiln_scope_begin(ctx);
    set_grad(w, kiln_from_host(ctx, x, KILN_F32, 1, &s6));
    kiln_optim_step(opt);
    kiln_scope_end(ctx);
    kiln_optim_free(opt);
    kiln_tensor_free(w);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "lifetime: %lld tensors leaked",
          (long long)(kiln_ctx_num_tensors(ctx) - before));
    CHECK_OK(ctx);
}

/* Clipping by norm and zero_grad over up to KILN_OPT_MULTI gradients per launch, against one
 * launch per gradient (KILN_OPTIM_SINGLE): the same total norm and the same clipped
 * gradients bit for bit, for every norm type, with 19 gradients of ragged sizes (one
 * longer than 64 work-groups), an empty one and a frozen one; and fewer launches. */
#define MC_NP 19
static void test_multi_clip(kiln_ctx *ctx) {
    static const double norms[4] = {2.0, 1.0, 3.5, INFINITY};
    float *h = malloc(sizeof(float) * 70000), *h2 = malloc(sizeof(float) * 70000);
    if (!h || !h2) {
        free(h), free(h2);
        CHECK(false, "multi clip: out of host memory");
        return;
    }
    for (int t = 0; t < 4; t++) {
        float total[2];
        uint64_t launches[2], zl[2];
        kiln_tensor *ps[2][MC_NP];
        kiln_ctx_stats a, b;
        for (int v = 0; v < 2; v++) {
            for (int j = 0; j < MC_NP; j++) {
                int64_t n = j == 5 ? 66000 : j == 7 ? 0 : 3 + 37 * j;
                int64_t shape[1] = {n};
                for (int64_t e = 0; e < n; e++) h[e] = (float)sin(0.13 * (double)(e + 7 * j)) * (1.0f + (float)j);
                ps[v][j] = param_from(ctx, h, 1, shape);
                for (int64_t e = 0; e < n; e++) h[e] = (float)cos(0.29 * (double)(e * (j + 1))) * 0.7f;
                set_grad(ps[v][j], kiln_from_host(ctx, h, KILN_F32, 1, shape));
            }
            kiln_tensor_set_requires_grad(ps[v][11], false); /* frozen: clipping leaves its gradient alone */
            kiln_sync(ctx); /* setenv with nothing running: POCL's threads call getenv */
            if (v == 1) setenv("KILN_OPTIM_SINGLE", "1", 1);
            kiln_ctx_stats_get(ctx, &a);
            kiln_tensor *tn = kiln_clip_grad_norm_tensor(ctx, MC_NP, ps[v], 5.0, norms[t]);
            kiln_ctx_stats_get(ctx, &b);
            launches[v] = b.launches - a.launches;
            total[v] = tn ? kiln_tensor_item(tn) : NAN;
            kiln_tensor_free(tn);
            kiln_sync(ctx);
            if (v == 1) unsetenv("KILN_OPTIM_SINGLE");
        }
        CHECK(memcmp(&total[0], &total[1], sizeof(float)) == 0 && !isnan(total[0]),
              "multi clip norm_type %g: total %.9g, one launch per gradient %.9g", norms[t], (double)total[0],
              (double)total[1]);
        for (int z = 0; z < 2; z++) { /* the clipped gradients, then after zero_grad */
            for (int j = 0; j < MC_NP; j++) {
                size_t bytes = sizeof(float) * (size_t)kiln_tensor_numel(ps[0][j]);
                if (bytes == 0) continue;
                kiln_to_host(kiln_tensor_grad(ps[0][j]), h, bytes);
                kiln_to_host(kiln_tensor_grad(ps[1][j]), h2, bytes);
                bool zero = true;
                for (size_t e = 0; e < bytes / sizeof(float); e++) zero &= h[e] == 0.0f;
                CHECK(memcmp(h, h2, bytes) == 0 && zero == (z == 1),
                      "multi %s, norm_type %g: gradient %d differs from one launch per gradient%s",
                      z ? "zero_grad" : "clip", norms[t], j, zero ? " or is zero" : "");
            }
            for (int v = 0; z == 0 && v < 2; v++) {
                kiln_sync(ctx);
                if (v == 1) setenv("KILN_OPTIM_SINGLE", "1", 1);
                kiln_sgd_opts o = kiln_sgd_defaults();
                kiln_optim *opt = kiln_sgd(ctx, ps[v], MC_NP, &o);
                kiln_ctx_stats_get(ctx, &a);
                CHECK(opt && kiln_optim_zero_grad(opt) == KILN_OK, "zero_grad: %s", kiln_error_message(ctx));
                kiln_ctx_stats_get(ctx, &b);
                zl[v] = b.launches - a.launches;
                kiln_optim_free(opt);
                kiln_sync(ctx);
                if (v == 1) unsetenv("KILN_OPTIM_SINGLE");
            }
        }
        CHECK(launches[0] < launches[1] && zl[0] < zl[1],
              "multi clip: %llu launches (zero_grad %llu) against %llu (%llu) one per gradient",
              (unsigned long long)launches[0], (unsigned long long)zl[0], (unsigned long long)launches[1],
              (unsigned long long)zl[1]);
        for (int v = 0; v < 2; v++)
            for (int j = 0; j < MC_NP; j++) kiln_tensor_free(ps[v][j]);
    }
    free(h);
    free(h2);
    CHECK_OK(ctx);
}

/* The multi-tensor step (up to KILN_OPT_MULTI parameters per launch) against one launch per
 * parameter (KILN_OPTIM_SINGLE, the fallback for devices that cannot take the arguments):
 * bit-for-bit equal parameters and states, ceil(n / 8) launches a step for parameters that
 * share their scalars, a split where the step counts differ (Adam), two groups, a
 * non-contiguous gradient and a frozen parameter. */
#define MT_NP 11
static void test_multi_tensor(kiln_ctx *ctx) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    int64_t shapes[MT_NP][2] = {{3, 5},  {7, 1}, {1, 1},  {300, 2}, {4, 4}, {2, 9},
                                {13, 3}, {5, 5}, {1, 40}, {6, 2},   {8, 8}};
    float *h = malloc(sizeof(float) * 4096), *h2 = malloc(sizeof(float) * 4096);
    if (!h || !h2) {
        free(h), free(h2);
        CHECK(false, "multi-tensor: out of host memory");
        return;
    }
    for (int kind = 0; kind < 5; kind++) {
        kiln_tensor *ps[2][MT_NP];
        kiln_optim *opt[2] = {NULL, NULL};
        uint64_t launches[2] = {0, 0};
        for (int v = 0; v < 2; v++) {
            for (int j = 0; j < MT_NP; j++) {
                int64_t n = shapes[j][0] * shapes[j][1];
                for (int64_t e = 0; e < n; e++) h[e] = (float)sin(0.37 * (double)(e + 11 * j)) * 0.5f;
                ps[v][j] = param_from(ctx, h, 2, shapes[j]);
            }
            kiln_tensor_set_requires_grad(ps[v][9], false); /* frozen: skipped */
            kiln_sync(ctx); /* setenv with nothing running: POCL's threads call getenv */
            if (v == 1) setenv("KILN_OPTIM_SINGLE", "1", 1);
            if (kind == 0) {
                kiln_sgd_opts o = kiln_sgd_defaults();
                o.lr = 0.05, o.momentum = 0.9, o.nesterov = true, o.weight_decay = 1e-3;
                opt[v] = kiln_sgd(ctx, ps[v], 8, &o);
                kiln_sgd_opts o2 = o;
                o2.nesterov = false, o2.dampening = 0.1, o2.lr = 0.01;
                if (opt[v]) kiln_optim_add_sgd_group(opt[v], ps[v] + 8, MT_NP - 8, &o2);
            } else if (kind == 1) {
                kiln_rmsprop_opts o = kiln_rmsprop_defaults();
                o.momentum = 0.5, o.centered = true, o.weight_decay = 1e-2;
                opt[v] = kiln_rmsprop(ctx, ps[v], MT_NP, &o);
            } else {
                kiln_adam_opts o = kind == 4 ? kiln_adamw_defaults() : kiln_adam_defaults();
                o.amsgrad = kind == 3, o.maximize = kind == 3, o.weight_decay = kind == 2 ? 0 : 0.1;
                opt[v] = kind == 4 ? kiln_adamw(ctx, ps[v], MT_NP, &o) : kiln_adam(ctx, ps[v], MT_NP, &o);
                /* parameter 4's own step count: the launches split around it */
                if (opt[v]) kiln_optim_set_step_count(opt[v], 4, 3);
            }
            CHECK(opt[v] != NULL, "multi-tensor kind %d: %s", kind, kiln_error_message(ctx));
            kiln_sync(ctx);
            if (v == 1) unsetenv("KILN_OPTIM_SINGLE");
        }
        for (int step = 0; step < 3 && opt[0] && opt[1]; step++) {
            /* launches counted from step 1, once the states exist, and without the guard
             * fills of new tensors (the copy of the transposed gradient) */
            kiln__set_guard(ctx, step == 0 ? 8 : 0);
            for (int v = 0; v < 2; v++) {
                for (int j = 0; j < MT_NP; j++) {
                    int64_t n = shapes[j][0] * shapes[j][1];
                    for (int64_t e = 0; e < n; e++) h[e] = (float)cos(0.21 * (double)(e * (step + 1) + j)) * 0.3f;
                    if (j == 3) { /* a transposed (non-contiguous) gradient */
                        int64_t ts[2] = {shapes[j][1], shapes[j][0]};
                        kiln_tensor *gt = kiln_from_host(ctx, h, KILN_F32, 2, ts);
                        set_grad(ps[v][j], kiln_transpose(ctx, gt, 0, 1));
                        kiln_tensor_free(gt);
                    } else {
                        set_grad(ps[v][j], kiln_from_host(ctx, h, KILN_F32, 2, shapes[j]));
                    }
                }
                kiln_ctx_stats a, b;
                kiln_ctx_stats_get(ctx, &a);
                CHECK(kiln_optim_step(opt[v]) == KILN_OK, "multi-tensor kind %d: %s", kind, kiln_error_message(ctx));
                kiln_ctx_stats_get(ctx, &b);
                if (step > 0) launches[v] += b.launches - a.launches;
            }
        }
        /* bit for bit: parameters and every state */
        for (int j = 0; j < MT_NP && opt[0] && opt[1]; j++) {
            size_t bytes = sizeof(float) * (size_t)(shapes[j][0] * shapes[j][1]);
            kiln_to_host(ps[0][j], h, bytes);
            kiln_to_host(ps[1][j], h2, bytes);
            CHECK(memcmp(h, h2, bytes) == 0, "multi-tensor kind %d: parameter %d differs from the one-launch step",
                  kind, j);
        }
        for (int k = 0; opt[0] && opt[1] && k < kiln_optim_num_states(opt[0]); k++) {
            {
                const char *n0, *n1;
                kiln_tensor *s0 = NULL, *s1 = NULL;
                kiln_optim_state(opt[0], k, &n0, &s0);
                kiln_optim_state(opt[1], k, &n1, &s1);
                if (!s0 || !s1 || kiln_tensor_numel(s0) != kiln_tensor_numel(s1)) continue;
                size_t sb = sizeof(float) * (size_t)kiln_tensor_numel(s0);
                if (sb > 4096 * sizeof(float)) continue;
                kiln_to_host(s0, h, sb);
                kiln_to_host(s1, h2, sb);
                CHECK(memcmp(h, h2, sb) == 0, "multi-tensor kind %d: state %d differs", kind, k);
            }
        }
        /* one launch per parameter with a gradient (10) plus one copy for the transposed
         * gradient, against: SGD 8 + 2 (two groups, the second of 2 live parameters), RMSprop
         * 8 + 2, Adam split around parameter 4 (4 | 1 | 5) */
        uint64_t want = kind <= 1 ? 2 : 3;
        CHECK(launches[1] == 2 * 11, "multi-tensor kind %d: one-launch step made %llu launches in 2 steps, want 22",
              kind, (unsigned long long)launches[1]);
        CHECK(launches[0] == 2 * (want + 1), "multi-tensor kind %d: %llu launches in 2 steps, want %llu", kind,
              (unsigned long long)launches[0], (unsigned long long)(2 * (want + 1)));
        kiln__set_guard(ctx, 8);
        for (int v = 0; v < 2; v++) {
            kiln_optim_free(opt[v]);
            for (int j = 0; j < MT_NP; j++) {
                set_grad(ps[v][j], NULL);
                kiln_tensor_free(ps[v][j]);
            }
        }
    }
    free(h);
    free(h2);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "multi-tensor: %lld tensors leaked",
          (long long)(kiln_ctx_num_tensors(ctx) - before));
    CHECK_OK(ctx);
}

static void run(kiln_ctx *ctx) {
    kiln__set_guard(ctx, 8); /* sentinels around every storage: a kernel writing out of bounds shows */
    test_errors(ctx);
    test_lifetime(ctx);
    test_trajectories(ctx);
    test_resume(ctx);
    test_double_reference(ctx);
    test_with_backward(ctx);
    test_schedules(ctx);
    test_clip_golden(ctx);
    test_clip_reference(ctx);
    test_groups_golden(ctx);
    test_sequential(ctx);
    test_groups_misc(ctx);
    test_frozen(ctx);
    test_multi_tensor(ctx);
    test_multi_clip(ctx);
    char msg[256] = "";
    CHECK(kiln__check_guards(ctx, msg, sizeof msg) == 0, "guard overwritten: %s", msg);
    fprintf(stderr,
            "worst trajectory error in ulps per step: vs torch %.3g, vs double reference %.3g (bound %g); "
            "%lld of %lld trajectory values equal torch's bit for bit\n",
            worst_torch, worst_ref, TRAJ_ULPS, (long long)torch_exact, (long long)torch_elems);
}

int main(void) {
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}

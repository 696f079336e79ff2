/* src/io/checkpoint.c - models and training state to and from safetensors files.
 * Loading is two-phase: validate and convert everything on the host, then copy into the
 * tensors, so a file that is wrong in any way leaves the model and optimizer unchanged. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io_internal.h"
#include "../nn/nn_internal.h"

#define OPT_PREFIX "optimizer."

/* Host copies of named tensors for writing. */
typedef struct staged {
    kiln__st_out *out;
    void **data;
    int n;
} staged;

static void staged_free(staged *s) {
    for (int i = 0; i < s->n; i++) free(s->data[i]);
    free(s->data);
    free(s->out);
}

static kiln_status stage(kiln_ctx *ctx, const char *path, staged *s, const char *name, kiln_tensor *t) {
    if (!t) return kiln__fail(ctx, KILN_ERR_NULL, "%s: tensor '%s' is NULL", path, name);
    if (t->dtype != KILN_F32 && t->dtype != KILN_I32 && !kiln_dtype_is_half(t->dtype))
        return kiln__fail(ctx, KILN_ERR_DTYPE, "%s: tensor '%s' has dtype %s (f32, f16, bf16 and i32 can be saved)",
                          path, name, kiln_dtype_name(t->dtype));
    kiln__st_out *o = &s->out[s->n];
    int64_t numel = kiln__numel(t->ndim, t->shape);
    size_t es = kiln_dtype_size(t->dtype);
    void *h = malloc((size_t)(numel ? numel : 1) * es);
    if (!h) return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory for '%s'", path, name);
    s->data[s->n] = h;
    s->n++;
    *o = (kiln__st_out){
        name, t->ndim, t->shape, numel, t->dtype == KILN_I32, h, kiln_dtype_is_half(t->dtype) ? t->dtype : KILN_F32};
    return kiln_to_host(t, h, (size_t)numel * es);
}

kiln_status kiln_safetensors_save(kiln_ctx *ctx, const char *path, int n, const kiln_named_tensor *tensors, int nmeta,
                                  const kiln_meta *meta) {
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "kiln_safetensors_save: ctx is NULL");
    if (!path || (n > 0 && !tensors) || n < 0 || nmeta < 0 || (nmeta > 0 && !meta))
        return kiln__fail(ctx, KILN_ERR_NULL, "kiln_safetensors_save: NULL path, tensors or metadata");
    for (int i = 0; i < nmeta; i++)
        if (!meta[i].key || !meta[i].value)
            return kiln__fail(ctx, KILN_ERR_NULL, "kiln_safetensors_save: metadata entry %d is NULL", i);
    staged s = {calloc((size_t)(n ? n : 1), sizeof *s.out), calloc((size_t)(n ? n : 1), sizeof *s.data), 0};
    kiln_status st =
        (s.out && s.data) ? KILN_OK : kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", path);
    for (int i = 0; i < n && st == KILN_OK; i++) {
        for (int j = 0; j < i; j++)
            if (strcmp(tensors[i].name, tensors[j].name) == 0)
                st = kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: name '%s' appears twice", path, tensors[i].name);
        if (st == KILN_OK) st = stage(ctx, path, &s, tensors[i].name, tensors[i].tensor);
    }
    if (st == KILN_OK) st = kiln__st_write(ctx, path, s.n, s.out, nmeta, meta);
    staged_free(&s);
    return st;
}

/* ---- models -------------------------------------------------------------------------- */

/* The module's state plus optional extra tensors, written with kiln's metadata. */
static kiln_status save_all(kiln_module *m, const char *path, kiln_optim *opt, int nmeta, const kiln_meta *meta,
                            const char *description) {
    kiln_ctx *ctx = m->ctx;
    int nm = kiln_module_state(m, NULL, 0);
    int no = opt ? kiln_optim_num_states(opt) : 0;
    int np = opt ? kiln_optim_num_params(opt) : 0;
    int total = nm + no + np;
    kiln_named_tensor *all = calloc((size_t)(total ? total : 1), sizeof *all);
    kiln_tensor **steps = calloc((size_t)(np ? np : 1), sizeof *steps);
    kiln_meta *md = calloc((size_t)nmeta + 9, sizeof *md);
    int ng = opt ? kiln_optim_num_groups(opt) : 0;
    char *glr = ng > 1 ? malloc((size_t)ng * 26) : NULL; /* "lr0,lr1,...": every group's lr */
    char desc[4096], lr[64], seed[32], counter[32];
    kiln_status st = (all && steps && md && (ng <= 1 || glr))
                         ? KILN_OK
                         : kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", path);
    if (st == KILN_OK) {
        kiln_module_state(m, all, nm);
        int k = nm;
        for (int i = 0; i < no; i++, k++) {
            const char *name;
            kiln_optim_state(opt, i, &name, &all[k].tensor);
            snprintf(all[k].name, sizeof all[k].name, OPT_PREFIX "%s", name);
        }
        for (int i = 0; i < np && st == KILN_OK; i++, k++) {
            /* a step count is an i32 scalar, as torch's state[p]['step'] holds a count */
            steps[i] = kiln_empty(ctx, KILN_I32, 0, NULL);
            if (!steps[i] || kiln_fill(steps[i], (float)kiln_optim_step_count(opt, i)) != KILN_OK) st = ctx->err;
            all[k].tensor = steps[i];
            snprintf(all[k].name, sizeof all[k].name, OPT_PREFIX "%d.step", i);
        }
        int j = 0;
        md[j++] = (kiln_meta){"format", "pt"};
        md[j++] = (kiln_meta){"kiln_version", KILN_VERSION_STRING};
        md[j++] = (kiln_meta){"model", kiln_module_describe(m, desc, sizeof desc)};
        if (description) md[j++] = (kiln_meta){"description", description};
        if (opt) {
            snprintf(lr, sizeof lr, "%.17g", kiln_optim_lr(opt));
            snprintf(seed, sizeof seed, "%" PRIu64, ctx->seed);
            snprintf(counter, sizeof counter, "%" PRIu64, ctx->rng_counter);
            md[j++] = (kiln_meta){"kiln_optimizer", kiln_optim_kind(opt)};
            md[j++] = (kiln_meta){"kiln_lr", lr};
            if (ng > 1) {
                size_t at = 0;
                for (int g = 0; g < ng; g++)
                    at += (size_t)snprintf(glr + at, 26, "%s%.17g", g ? "," : "", kiln_optim_group_lr(opt, g));
                md[j++] = (kiln_meta){"kiln_group_lrs", glr};
            }
            md[j++] = (kiln_meta){"kiln_rng_seed", seed};
            md[j++] = (kiln_meta){"kiln_rng_counter", counter};
        }
        /* the caller's keys may not repeat kiln's: readers disagree on which of two wins */
        int nkiln = j;
        for (int i = 0; i < nmeta && st == KILN_OK; i++) {
            for (int k = 0; k < nkiln && meta[i].key; k++)
                if (strcmp(meta[i].key, md[k].key) == 0)
                    st = kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: metadata key '%s' is written by kiln", path,
                                    meta[i].key);
            md[j++] = meta[i];
        }
        if (st == KILN_OK) st = kiln_safetensors_save(ctx, path, total, all, j, md);
    }
    for (int i = 0; steps && i < np; i++) kiln_tensor_free(steps[i]);
    free(steps);
    free(all);
    free(md);
    free(glr);
    return st;
}

kiln_status kiln_module_save(kiln_module *m, const char *path, const char *description) {
    if (!m) return kiln__fail_global(KILN_ERR_NULL, "kiln_module_save: module is NULL");
    return save_all(m, path, NULL, 0, NULL, description);
}

static void note(kiln_load_report *r, const char *what, const char *name) {
    size_t used = strlen(r->detail);
    if (used + strlen(what) + strlen(name) + 8 < sizeof r->detail)
        snprintf(r->detail + used, sizeof r->detail - used, "%s%s %s", used ? ", " : "", what, name);
}

/* A planned copy: host data converted from the file into a tensor. */
typedef struct plan {
    kiln_tensor *dst; /* NULL until resolved for optimizer state */
    void *host;
    int64_t numel;
    int entry; /* the file entry of an optimizer state tensor, -1 for the model's */
} plan;

static bool same_shape(const kiln_tensor *t, const kiln__st_entry *e) {
    return t->ndim == e->ndim && memcmp(t->shape, e->shape, sizeof(int64_t) * (size_t)e->ndim) == 0;
}

/* Matches the module's state against the file (skipping the optimizer's keys), converts
 * what matches into plans. */
static kiln_status plan_module(kiln_module *m, kiln_safetensors *f, bool strict, kiln_load_report *r, plan *plans,
                               int *nplans) {
    kiln_ctx *ctx = m->ctx;
    int nm = kiln_module_state(m, NULL, 0);
    kiln_named_tensor *st = calloc((size_t)(nm ? nm : 1), sizeof *st);
    bool *used = calloc((size_t)(f->n ? f->n : 1), sizeof *used);
    if (!st || !used) {
        free(st), free(used);
        return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", f->what);
    }
    kiln_module_state(m, st, nm);
    kiln_status s = KILN_OK;
    for (int i = 0; i < nm && s == KILN_OK; i++) {
        int k = kiln_safetensors_find(f, st[i].name);
        if (k < 0) {
            r->missing++;
            note(r, "missing", st[i].name);
            continue;
        }
        used[k] = true;
        kiln__st_entry *e = &f->e[k];
        kiln_tensor *t = st[i].tensor;
        bool kind_ok = (t->dtype == KILN_F32) == kiln__st_is_float(e);
        if (!same_shape(t, e) || !kind_ok) {
            r->mismatched++;
            char a[160], b[160], what[400];
            snprintf(what, sizeof what, "%s (model %s %s, file %s %s)", st[i].name, kiln_dtype_name(t->dtype),
                     kiln__shape_str(t->ndim, t->shape, a, sizeof a), e->dtype,
                     kiln__shape_str(e->ndim, e->shape, b, sizeof b));
            note(r, "mismatched", what);
            continue;
        }
        void *h = malloc((size_t)(e->numel ? e->numel : 1) * 4);
        if (!h)
            s = kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", f->what);
        else if ((s = kiln__st_convert(ctx, f, e, h)) != KILN_OK)
            free(h);
        else
            plans[(*nplans)++] = (plan){t, h, e->numel, -1};
    }
    for (int k = 0; k < f->n && s == KILN_OK; k++) {
        if (used[k] || strncmp(f->e[k].name, OPT_PREFIX, strlen(OPT_PREFIX)) == 0) continue;
        r->unexpected++;
        note(r, "unexpected", f->e[k].name);
    }
    free(st);
    free(used);
    if (s == KILN_OK && strict && (r->missing || r->unexpected || r->mismatched))
        s = kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                       "%s: does not match the model (%d missing, %d unexpected, %d with another shape or dtype): %s; "
                       "nothing was loaded",
                       f->what, r->missing, r->unexpected, r->mismatched, r->detail);
    return s;
}

static kiln_status apply(kiln_ctx *ctx, plan *plans, int n) {
    kiln_status s = KILN_OK;
    for (int i = 0; i < n && s == KILN_OK; i++)
        s = kiln_copy_from_host(plans[i].dst, plans[i].host, (size_t)plans[i].numel * 4);
    (void)ctx;
    return s;
}

static void plans_free(plan *plans, int n) {
    for (int i = 0; i < n; i++) free(plans[i].host);
    free(plans);
}

kiln_status kiln_module_load(kiln_module *m, const char *path, bool strict, kiln_load_report *report) {
    if (!m) return kiln__fail_global(KILN_ERR_NULL, "kiln_module_load: module is NULL");
    kiln_load_report local;
    kiln_load_report *r = report ? report : &local;
    memset(r, 0, sizeof *r);
    kiln_safetensors *f = kiln_safetensors_open(m->ctx, path);
    if (!f) return m->ctx->err;
    int nm = kiln_module_state(m, NULL, 0);
    plan *plans = calloc((size_t)(nm ? nm : 1), sizeof *plans);
    int np = 0;
    kiln_status s = plans ? plan_module(m, f, strict, r, plans, &np)
                          : kiln__fail(m->ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", path);
    if (s == KILN_OK) s = apply(m->ctx, plans, np);
    kiln__module_state_loaded(m);
    if (s == KILN_OK) r->loaded = np;
    if (plans) plans_free(plans, np);
    kiln_safetensors_close(f);
    return s;
}

/* ---- training checkpoints ------------------------------------------------------------ */

kiln_status kiln_checkpoint_save(const char *path, kiln_module *m, kiln_optim *opt, int nmeta, const kiln_meta *meta) {
    if (!m) return kiln__fail_global(KILN_ERR_NULL, "kiln_checkpoint_save: module is NULL");
    if (!path || nmeta < 0 || (nmeta > 0 && !meta))
        return kiln__fail(m->ctx, KILN_ERR_NULL, "kiln_checkpoint_save: NULL path or metadata (nmeta %d)", nmeta);
    if (opt && kiln_optim_ctx(opt) != m->ctx)
        return kiln__fail(m->ctx, KILN_ERR_INVALID_ARGUMENT,
                          "kiln_checkpoint_save: model and optimizer of two contexts");
    return save_all(m, path, opt, nmeta, meta, NULL);
}

static bool parse_u64(const char *s, uint64_t *v) {
    if (!s || !*s) return false;
    char *end;
    unsigned long long x = strtoull(s, &end, 10);
    if (*end) return false;
    *v = x;
    return true;
}

kiln_status kiln_checkpoint_load(const char *path, kiln_module *m, kiln_optim *opt, kiln_load_report *report) {
    if (!m) return kiln__fail_global(KILN_ERR_NULL, "kiln_checkpoint_load: module is NULL");
    kiln_ctx *ctx = m->ctx;
    kiln_load_report local;
    kiln_load_report *r = report ? report : &local;
    memset(r, 0, sizeof *r);
    kiln_safetensors *f = kiln_safetensors_open(ctx, path);
    if (!f) return ctx->err;
    int nm = kiln_module_state(m, NULL, 0);
    plan *plans = calloc((size_t)nm + (size_t)f->n + 1, sizeof *plans);
    int np = 0;
    int nparams = opt ? kiln_optim_num_params(opt) : 0;
    char lr_groups[16];
    int64_t *steps = calloc((size_t)(nparams ? nparams : 1), sizeof *steps);
    uint64_t seed = 0, counter = 0;
    double lr = 0;
    int ngroups = opt ? kiln_optim_num_groups(opt) : 0;
    double *glrs = calloc((size_t)(ngroups ? ngroups : 1), sizeof *glrs);
    kiln_status s = (plans && steps && glrs)
                        ? plan_module(m, f, true, r, plans, &np)
                        : kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", path);
    if (s == KILN_OK && opt) {
        const char *kind = kiln_safetensors_meta(f, "kiln_optimizer");
        const char *lrs = kiln_safetensors_meta(f, "kiln_lr");
        char *end = NULL;
        if (lrs) lr = strtod(lrs, &end);
        if (!kind || strcmp(kind, kiln_optim_kind(opt)) != 0 || !lrs || *end ||
            !parse_u64(kiln_safetensors_meta(f, "kiln_rng_seed"), &seed) ||
            !parse_u64(kiln_safetensors_meta(f, "kiln_rng_counter"), &counter))
            s = kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                           "%s: holds no %s optimizer state (it has '%s'); nothing was loaded", path,
                           kiln_optim_kind(opt), kind ? kind : "none");
        /* every group's lr ("kiln_group_lrs", written for 2 or more groups; else "kiln_lr") */
        const char *gl = kiln_safetensors_meta(f, "kiln_group_lrs");
        int have = gl ? 0 : 1;
        glrs[0] = lr;
        for (const char *c = gl; s == KILN_OK && c && *c && have >= 0; have++) {
            char *e2;
            double v = strtod(c, &e2);
            if (e2 == c || (*e2 && *e2 != ',')) {
                have = -1;
                break;
            }
            if (have < ngroups) glrs[have] = v;
            c = *e2 ? e2 + 1 : e2;
        }
        if (s == KILN_OK && have != ngroups) {
            if (have >= 0) snprintf(lr_groups, sizeof lr_groups, "%d", have);
            s = kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                           "%s: holds the learning rates of %s parameter groups, the optimizer has %d; nothing was "
                           "loaded",
                           path, have < 0 ? "unreadable" : lr_groups, ngroups);
        }
        for (int i = 0; i < nparams; i++) steps[i] = -1;
        for (int k = 0; k < f->n && s == KILN_OK; k++) {
            kiln__st_entry *e = &f->e[k];
            if (strncmp(e->name, OPT_PREFIX, strlen(OPT_PREFIX)) != 0) continue;
            const char *rest = e->name + strlen(OPT_PREFIX);
            char *dot;
            long idx = strtol(rest, &dot, 10);
            if (dot == rest || *dot != '.' || idx < 0 || idx >= nparams) {
                s = kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                               "%s: optimizer entry '%s' does not fit an optimizer of %d "
                               "parameters; nothing was loaded",
                               path, e->name, nparams);
                break;
            }
            if (strcmp(dot + 1, "step") == 0) {
                int32_t v;
                if (e->numel != 1 || kiln__st_is_float(e) || kiln__st_convert(ctx, f, e, &v) != KILN_OK || v < 0) {
                    s = ctx->err ? ctx->err
                                 : kiln__fail(ctx, KILN_ERR_CORRUPT, "%s: bad step count '%s'", path, e->name);
                    break;
                }
                steps[idx] = v;
                continue;
            }
            if (!kiln__optim_state_known(opt, rest)) { /* checked now: phase 2 creates state */
                s = kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                               "%s: optimizer entry '%s' is no state of this %s "
                               "configuration; nothing was loaded",
                               path, e->name, kiln_optim_kind(opt));
                break;
            }
            /* every state tensor has its parameter's shape */
            kiln_tensor *p = kiln_optim_param(opt, (int)idx);
            if (!same_shape(p, e) || !kiln__st_is_float(e)) {
                char a[160], b[160];
                s = kiln__fail(ctx, KILN_ERR_SHAPE,
                               "%s: optimizer state '%s' is %s %s, parameter %ld is %s; nothing was "
                               "loaded",
                               path, e->name, e->dtype, kiln__shape_str(e->ndim, e->shape, a, sizeof a), idx,
                               kiln__shape_str(p->ndim, p->shape, b, sizeof b));
                break;
            }
            void *h = malloc((size_t)(e->numel ? e->numel : 1) * 4);
            if (!h) {
                s = kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", path);
                break;
            }
            kiln__st_convert(ctx, f, e, h);             /* a float entry: cannot fail */
            plans[np++] = (plan){NULL, h, e->numel, k}; /* the tensor is found (or made) after validation */
        }
        for (int i = 0; i < nparams && s == KILN_OK; i++)
            if (steps[i] < 0)
                s = kiln__fail(ctx, KILN_ERR_CORRUPT,
                               "%s: no step count for optimizer parameter %d; nothing was loaded", path, i);
    }
    /* everything checked: now change state */
    if (s == KILN_OK) {
        for (int i = 0; i < np && s == KILN_OK; i++) {
            if (plans[i].entry < 0) continue;
            plans[i].dst = kiln_optim_state_find(opt, f->e[plans[i].entry].name + strlen(OPT_PREFIX), true);
            if (!plans[i].dst) s = ctx->err;
        }
        if (s == KILN_OK) s = apply(ctx, plans, np);
        kiln__module_state_loaded(m);
        for (int i = 0; i < nparams && s == KILN_OK; i++) s = kiln_optim_set_step_count(opt, i, steps[i]);
        if (s == KILN_OK && opt) {
            for (int g = 0; g < ngroups && s == KILN_OK; g++) s = kiln_optim_group_set_lr(opt, g, glrs[g]);
            ctx->seed = seed;
            ctx->rng_counter = counter;
        }
        if (s == KILN_OK) r->loaded = np;
    }
    if (plans) {
        for (int i = 0; i < np; i++) free(plans[i].host);
        free(plans);
    }
    free(steps);
    free(glrs);
    kiln_safetensors_close(f);
    return s;
}

/* src/nn/module.c - the module API of kiln/module.h: creation from a definition, typed
 * state, named children, parameters and buffers, forward with N inputs and M outputs
 * (naming the failing module in an op's error), state_dict walks, train/eval, torch-style
 * descriptions; and the containers Sequential, ModuleList and ModuleDict. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn_internal.h"

/* ---- creation ------------------------------------------------------------------------ */

kiln_module *kiln_module_new(kiln_ctx *ctx, const kiln_module_def *def) {
    if (!ctx) {
        kiln__fail_global(KILN_ERR_NULL, "kiln_module_new: the context is NULL");
        return NULL;
    }
    if (!def || !def->kind || !def->forward) {
        kiln__fail(ctx, KILN_ERR_NULL, "kiln_module_new: %s is NULL",
                   !def         ? "the definition"
                   : !def->kind ? "def->kind"
                                : "def->forward");
        return NULL;
    }
    size_t klen = strlen(def->kind);
    if (klen == 0 || klen >= KILN__NAME_MAX || def->num_inputs < 1 || def->optional_inputs < 0 ||
        def->optional_inputs >= def->num_inputs || def->num_outputs < 1) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "kiln_module_new: kind '%.80s' (1 to %d characters), num_inputs %d (>= 1), optional_inputs %d "
                   "(0 to num_inputs - 1), num_outputs %d (>= 1)",
                   def->kind, KILN__NAME_MAX - 1, def->num_inputs, def->optional_inputs, def->num_outputs);
        return NULL;
    }
    kiln_module *m = calloc(1, sizeof *m);
    void *data = def->state_size ? calloc(1, def->state_size) : NULL;
    if (!m || (def->state_size && !data)) {
        free(m);
        free(data);
        kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY,
                   "kiln_module_new: out of host memory for a %s module (%zu bytes of state)", def->kind,
                   def->state_size);
        return NULL;
    }
    m->ctx = ctx;
    m->def = *def;
    memcpy(m->kind, def->kind, klen + 1);
    m->def.kind = m->kind;
    m->data = data;
    m->training = true;
    return m;
}

void *kiln_module_data(const kiln_module *m) { return m ? m->data : NULL; }
const char *kiln_module_kind(const kiln_module *m) { return m ? m->kind : "(null)"; }
kiln_ctx *kiln_module_ctx(const kiln_module *m) { return m ? m->ctx : NULL; }

void kiln_module_free(kiln_module *m) {
    if (!m) return;
    if (m->def.destroy) m->def.destroy(m);
    for (int k = 0; k < m->nchildren; k++) kiln_module_free(m->children[k].m);
    free(m->children);
    for (int k = 0; k < m->ntensors; k++) kiln_tensor_free(m->tensors[k].t);
    free(m->tensors);
    free(m->data);
    free(m);
}

/* The constructor arguments of m (def.describe), "" without. */
static void args_of(const kiln_module *m, char *buf, size_t cap) {
    buf[0] = '\0';
    if (m->def.describe) m->def.describe(m, buf, cap);
}

/* ---- names --------------------------------------------------------------------------- */

/* Checks that `name` may name a new entry of m (skip: the child being renamed, or -1). */
static kiln_status check_name(kiln_module *m, const char *fn, const char *name, int skip) {
    if (!name) return kiln__fail(m->ctx, KILN_ERR_NULL, "%s: the name is NULL (in %s)", fn, m->kind);
    size_t len = strlen(name);
    if (len == 0 || len >= KILN__NAME_MAX || strchr(name, '.'))
        return kiln__fail(m->ctx, KILN_ERR_INVALID_ARGUMENT, "%s: name '%.80s' in %s (1 to %d characters, no dots)", fn,
                          name, m->kind, KILN__NAME_MAX - 1);
    for (int k = 0; k < m->nchildren; k++)
        if (k != skip && strcmp(m->children[k].name, name) == 0)
            return kiln__fail(m->ctx, KILN_ERR_INVALID_ARGUMENT, "%s: '%s' is taken by child %d of %s", fn, name, k,
                              m->kind);
    for (int k = 0; k < m->ntensors; k++)
        if (strcmp(m->tensors[k].name, name) == 0)
            return kiln__fail(m->ctx, KILN_ERR_INVALID_ARGUMENT, "%s: '%s' is taken by a %s of %s", fn, name,
                              m->tensors[k].buffer ? "buffer" : "parameter", m->kind);
    return KILN_OK;
}

static bool grow(void **p, int *cap, int n, size_t elem) {
    if (n < *cap) return true;
    int c = *cap ? 2 * *cap : 4;
    void *q = realloc(*p, elem * (size_t)c);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

/* ---- children ------------------------------------------------------------------------ */

/* Whether child may become a child of m. Refusals that must not free the child (it is
 * not ours to free) set *keep. */
static kiln_status check_child(kiln_module *m, const char *fn, kiln_module *child, bool *keep) {
    *keep = false;
    if (!child) {
        kiln__fail(m->ctx, KILN_ERR_NULL, "%s: the child of %s is NULL (its constructor failed)", fn, m->kind);
        return KILN_ERR_NULL;
    }
    for (const kiln_module *a = m; a; a = a->parent)
        if (a == child) {
            *keep = true;
            return kiln__fail(m->ctx, KILN_ERR_INVALID_ARGUMENT,
                              "%s: a %s cannot be a child of itself or of its descendant", fn, child->kind);
        }
    if (child->parent) {
        *keep = true;
        return kiln__fail(m->ctx, KILN_ERR_INVALID_ARGUMENT, "%s: the %s already is a child of a %s", fn, child->kind,
                          child->parent->kind);
    }
    if (child->ctx != m->ctx)
        return kiln__fail(m->ctx, KILN_ERR_INVALID_ARGUMENT, "%s: the %s belongs to another context than the %s", fn,
                          child->kind, m->kind);
    return KILN_OK;
}

/* Frees child refused by container c unless it is not ours to free (see check_child). */
static void free_refused(const kiln_module *c, kiln_module *child) {
    if (!child || child->parent) return;
    for (const kiln_module *a = c; a; a = a->parent)
        if (a == child) return;
    kiln_module_free(child);
}

static kiln_status add_child(kiln_module *m, const char *fn, const char *name, kiln_module *child) {
    if (!m) {
        free_refused(NULL, child);
        return kiln__fail_global(KILN_ERR_NULL, "%s: the module is NULL", fn);
    }
    bool keep;
    kiln_status s = check_child(m, fn, child, &keep);
    if (s == KILN_OK) s = check_name(m, fn, name, -1);
    if (s == KILN_OK && !grow((void **)&m->children, &m->capchildren, m->nchildren, sizeof *m->children))
        s = kiln__fail(m->ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", fn);
    if (s != KILN_OK) {
        if (!keep) kiln_module_free(child);
        return s;
    }
    kiln__mchild *c = &m->children[m->nchildren++];
    snprintf(c->name, sizeof c->name, "%s", name);
    c->m = child;
    child->parent = m;
    kiln_module_train(child, m->training);
    return KILN_OK;
}

kiln_status kiln_module_add_child(kiln_module *m, const char *name, kiln_module *child) {
    return add_child(m, "kiln_module_add_child", name, child);
}

/* Replaces child `index` of m with `child` (owned, also on failure); the old one is freed. */
static kiln_status replace_child(kiln_module *m, const char *fn, int index, kiln_module *child) {
    bool keep;
    kiln_status s = check_child(m, fn, child, &keep);
    if (s != KILN_OK) {
        if (!keep) kiln_module_free(child);
        return s;
    }
    kiln_module_free(m->children[index].m);
    m->children[index].m = child;
    child->parent = m;
    kiln_module_train(child, m->training); /* the whole subtree */
    return KILN_OK;
}

int kiln_module_num_children(const kiln_module *m) { return m ? m->nchildren : 0; }

kiln_module *kiln_module_child(const kiln_module *m, int index) {
    return m && index >= 0 && index < m->nchildren ? m->children[index].m : NULL;
}

const char *kiln_module_child_name(const kiln_module *m, int index) {
    return m && index >= 0 && index < m->nchildren ? m->children[index].name : NULL;
}

kiln_module *kiln_module_find_child(const kiln_module *m, const char *path) {
    if (!m || !path || !*path) return NULL;
    const char *p = path;
    while (m) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        const kiln_module *next = NULL;
        for (int k = 0; k < m->nchildren && !next; k++)
            if (strlen(m->children[k].name) == len && memcmp(m->children[k].name, p, len) == 0) next = m->children[k].m;
        if (!dot || !next) return (kiln_module *)next;
        m = next;
        p = dot + 1;
    }
    return NULL;
}

kiln_status kiln_module_set_child_name(kiln_module *m, int index, const char *name) {
    if (!m) return kiln__fail_global(KILN_ERR_NULL, "kiln_module_set_child_name: the module is NULL");
    if (index < 0 || index >= m->nchildren)
        return kiln__fail(m->ctx, KILN_ERR_INVALID_ARGUMENT,
                          "kiln_module_set_child_name: index %d of %d children of %s", index, m->nchildren, m->kind);
    kiln_status s = check_name(m, "kiln_module_set_child_name", name, index);
    if (s != KILN_OK) return s;
    snprintf(m->children[index].name, sizeof m->children[index].name, "%s", name);
    return KILN_OK;
}

void kiln__module_path(const kiln_module *m, char *buf, size_t cap) {
    const char *parts[64];
    int n = 0;
    for (const kiln_module *c = m; c->parent && n < 64; c = c->parent) {
        const kiln_module *p = c->parent;
        for (int k = 0; k < p->nchildren; k++)
            if (p->children[k].m == c) parts[n++] = p->children[k].name;
    }
    size_t used = 0;
    buf[0] = '\0';
    for (int k = n - 1; k >= 0 && used < cap; k--)
        used += (size_t)snprintf(buf + used, cap - used, "%s%s", used ? "." : "", parts[k]);
}

/* ---- parameters and buffers ------------------------------------------------------------ */

static kiln_status add_tensor(kiln_module *m, const char *fn, const char *name, kiln_tensor *t, bool buffer) {
    if (!m) {
        kiln_tensor_free(t);
        return kiln__fail_global(KILN_ERR_NULL, "%s: the module is NULL", fn);
    }
    kiln_status s = KILN_OK;
    if (!t)
        s = kiln__fail(m->ctx, KILN_ERR_NULL, "%s: the tensor '%.80s' of %s is NULL (its constructor failed)", fn,
                       name ? name : "(null)", m->kind);
    else if (t->ctx != m->ctx)
        s = kiln__fail(m->ctx, KILN_ERR_INVALID_ARGUMENT, "%s: '%.80s' belongs to another context than the %s", fn,
                       name ? name : "(null)", m->kind);
    if (s == KILN_OK) s = check_name(m, fn, name, -1);
    if (s == KILN_OK && !buffer && t->dtype != KILN_F32)
        s = kiln__fail(m->ctx, KILN_ERR_DTYPE,
                       "%s: parameter '%s' of %s is %s; parameters are f32 (a buffer may be any dtype)", fn, name,
                       m->kind, kiln_dtype_name(t->dtype));
    if (s == KILN_OK && !grow((void **)&m->tensors, &m->captensors, m->ntensors, sizeof *m->tensors))
        s = kiln__fail(m->ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", fn);
    if (s == KILN_OK && !buffer) s = kiln_tensor_set_requires_grad(t, true);
    if (s != KILN_OK) {
        kiln_tensor_free(t);
        return s;
    }
    kiln_tensor_keep(t);
    kiln__mtensor *e = &m->tensors[m->ntensors++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->t = t;
    e->buffer = buffer;
    return KILN_OK;
}

kiln_status kiln_module_add_parameter(kiln_module *m, const char *name, kiln_tensor *t) {
    return add_tensor(m, "kiln_module_add_parameter", name, t, false);
}

kiln_status kiln_module_add_buffer(kiln_module *m, const char *name, kiln_tensor *t) {
    return add_tensor(m, "kiln_module_add_buffer", name, t, true);
}

typedef struct walk {
    kiln_named_tensor *out;
    kiln_tensor **params;
    int cap, n;
    bool params_only;
} walk;

/* torch's state_dict order: own parameters, own buffers, then each child. */
static void walk_module(const kiln_module *m, const char *prefix, walk *w) {
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1 && w->params_only) break;
        for (int k = 0; k < m->ntensors; k++) {
            const kiln__mtensor *e = &m->tensors[k];
            if (e->buffer != (pass == 1)) continue;
            if (w->n < w->cap) {
                if (w->out) {
                    snprintf(w->out[w->n].name, sizeof w->out[w->n].name, "%s%s%s", prefix, *prefix ? "." : "",
                             e->name);
                    w->out[w->n].tensor = e->t;
                    w->out[w->n].is_buffer = e->buffer;
                }
                if (w->params) w->params[w->n] = e->t;
            }
            w->n++;
        }
    }
    for (int k = 0; k < m->nchildren; k++) {
        char p[128];
        snprintf(p, sizeof p, "%s%s%s", prefix, *prefix ? "." : "", m->children[k].name);
        walk_module(m->children[k].m, p, w);
    }
}

int kiln_module_parameters(kiln_module *m, kiln_tensor **out, int cap) {
    if (!m) return 0;
    walk w = {.params = out, .cap = out ? cap : 0, .params_only = true};
    walk_module(m, "", &w);
    return w.n;
}

int kiln_module_state(kiln_module *m, kiln_named_tensor *out, int cap) {
    if (!m) return 0;
    /* the caller gets the buffers and may write them (num_batches_tracked): re-read the
     * host copies before the next use */
    if (out && cap > 0) kiln__module_state_loaded(m);
    walk w = {.out = out, .cap = out ? cap : 0};
    walk_module(m, "", &w);
    return w.n;
}

kiln_tensor *kiln_module_find(kiln_module *m, const char *name) {
    if (!m || !name) return NULL;
    const char *dot = strrchr(name, '.');
    const kiln_module *owner = m;
    if (dot) {
        char path[256];
        size_t len = (size_t)(dot - name);
        if (len >= sizeof path) return NULL;
        memcpy(path, name, len);
        path[len] = '\0';
        owner = kiln_module_find_child(m, path);
        name = dot + 1;
    }
    for (int k = 0; owner && k < owner->ntensors; k++)
        if (strcmp(owner->tensors[k].name, name) == 0) {
            /* the caller may write it (a loader): host copies are re-read before their next use */
            kiln__module_state_loaded((kiln_module *)owner);
            return owner->tensors[k].t;
        }
    return NULL;
}

int64_t kiln_module_num_elements(kiln_module *m) {
    if (!m) return 0;
    int64_t total = 0;
    for (int k = 0; k < m->ntensors; k++)
        if (!m->tensors[k].buffer) total += kiln_tensor_numel(m->tensors[k].t);
    for (int k = 0; k < m->nchildren; k++) total += kiln_module_num_elements(m->children[k].m);
    return total;
}

void kiln_module_set_requires_grad(kiln_module *m, bool requires_grad) {
    if (!m) return;
    for (int k = 0; k < m->ntensors; k++)
        if (!m->tensors[k].buffer) kiln_tensor_set_requires_grad(m->tensors[k].t, requires_grad);
    for (int k = 0; k < m->nchildren; k++) kiln_module_set_requires_grad(m->children[k].m, requires_grad);
}

void kiln__module_state_loaded(kiln_module *m) {
    if (!m) return;
    if (m->state_loaded) m->state_loaded(m);
    for (int k = 0; k < m->nchildren; k++) kiln__module_state_loaded(m->children[k].m);
}

/* ---- train / eval, description -------------------------------------------------------- */

void kiln_module_train(kiln_module *m, bool training) {
    if (!m) return;
    m->training = training;
    for (int k = 0; k < m->nchildren; k++) kiln_module_train(m->children[k].m, training);
}

bool kiln_module_is_training(const kiln_module *m) { return m && m->training; }

static size_t describe(const kiln_module *m, char *buf, size_t cap, int indent) {
    size_t used = 0;
#define PUT(...)                                                                                                       \
    do {                                                                                                               \
        if (used < cap) used += (size_t)snprintf(buf + used, cap - used, __VA_ARGS__);                                 \
    } while (0)
    char args[512];
    args_of(m, args, sizeof args);
    /* torch's repr: the arguments inline without children, else on a line of their own */
    PUT("%s(", m->kind);
    if (!m->nchildren)
        PUT("%s", args);
    else {
        PUT("\n");
        if (*args) PUT("%*s%s\n", indent + 2, "", args);
        for (int k = 0; k < m->nchildren; k++) {
            PUT("%*s(%s): ", indent + 2, "", m->children[k].name);
            if (used < cap) used += describe(m->children[k].m, buf + used, cap - used, indent + 2);
            PUT("\n");
        }
        PUT("%*s", indent, "");
    }
    PUT(")");
#undef PUT
    return used < cap ? used : cap;
}

char *kiln_module_describe(const kiln_module *m, char *buf, size_t cap) {
    if (!buf || cap == 0) return buf;
    buf[0] = '\0';
    if (!m) {
        snprintf(buf, cap, "(null)");
        return buf;
    }
    describe(m, buf, cap, 0);
    return buf;
}

/* ---- forward ------------------------------------------------------------------------- */

static kiln_status forward(kiln_module *m, const char *fn, int nin, kiln_tensor *const *in, int nout,
                           kiln_tensor **out) {
    for (int k = 0; out && k < nout; k++) out[k] = NULL;
    if (!m) {
        /* as an op given NULL: an error unless an earlier one explains it */
        kiln_ctx *ctx = NULL;
        for (int k = 0; in && k < nin && !ctx; k++) ctx = in[k] ? in[k]->ctx : NULL;
        if (ctx) return kiln__fail(ctx, KILN_ERR_NULL, "%s: the module is NULL", fn);
        return kiln__fail_global(KILN_ERR_NULL, "%s: the module is NULL", fn);
    }
    kiln_ctx *ctx = m->ctx;
    /* the description only for a message: a forward that succeeds formats nothing */
    char args[512];
#define ARGS (args_of(m, args, sizeof args), args)
    const kiln_module_def *d = &m->def;
    int lo = d->num_inputs - d->optional_inputs;
    if (nin < lo || nin > d->num_inputs || (nin > 0 && !in)) {
        if (lo == d->num_inputs)
            return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: %s(%s) takes %d input%s, given %d%s", fn, m->kind,
                              ARGS, lo, lo == 1 ? "" : "s", nin, nin > 0 && !in ? " in a NULL array" : "");
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: %s(%s) takes %d to %d inputs, given %d%s", fn, m->kind,
                          ARGS, lo, d->num_inputs, nin, nin > 0 && !in ? " in a NULL array" : "");
    }
    if (nout != d->num_outputs || !out)
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: %s(%s) gives %d output%s, asked for %d%s", fn, m->kind,
                          ARGS, d->num_outputs, d->num_outputs == 1 ? "" : "s", nout, out ? "" : " into a NULL array");
    for (int k = 0; k < nin; k++) {
        if (!in[k]) {
            if (ctx->err != KILN_OK) return ctx->err; /* the op that gave the NULL said why */
            if (nin == 1) return kiln__fail(ctx, KILN_ERR_NULL, "%s: the input of %s(%s) is NULL", fn, m->kind, ARGS);
            return kiln__fail(ctx, KILN_ERR_NULL, "%s: input %d of %s(%s) is NULL", fn, k, m->kind, ARGS);
        }
        if (in[k]->ctx != ctx)
            return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: input %d of %s(%s) belongs to another context", fn,
                              k, m->kind, ARGS);
    }
    kiln_status s = d->forward(m, nin, in, nout, out);
    if (s == KILN_OK) {
        for (int k = 0; k < nout && s == KILN_OK; k++)
            if (!out[k])
                s = kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                               "%s: the forward of %s(%s) returned KILN_OK without output %d", fn, m->kind, ARGS, k);
    } else if (ctx->err == KILN_OK) {
        kiln__fail(ctx, s, "%s: the forward of %s(%s) failed with %s and left no message", fn, m->kind, ARGS,
                   kiln_status_name(s));
    }
    if (s != KILN_OK) {
        for (int k = 0; k < nout; k++) out[k] = NULL;
        char path[256];
        kiln__module_path(m, path, sizeof path);
        kiln__error_note(ctx, "in %s(%s)%s%s", m->kind, ARGS, *path ? " at " : "", path);
        return ctx->err != KILN_OK ? ctx->err : s;
    }
    return KILN_OK;
#undef ARGS
}

kiln_status kiln_module_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    return forward(m, "kiln_module_forward", nin, in, nout, out);
}

kiln_tensor *kiln_forward(kiln_module *m, kiln_tensor *x) {
    if (!m && !x) /* no context to tell: kiln_last_error() holds it */
        return kiln__fail(NULL, KILN_ERR_NULL, "kiln_forward: the module and the input are NULL"), NULL;
    kiln_tensor *y = NULL;
    if (m && (m->def.num_inputs - m->def.optional_inputs > 1 || m->def.num_outputs != 1)) {
        char args[512];
        args_of(m, args, sizeof args);
        kiln__fail(m->ctx, KILN_ERR_INVALID_ARGUMENT,
                   "kiln_forward: %s(%s) takes %d input%s and gives %d output%s; call kiln_module_forward", m->kind,
                   args, m->def.num_inputs, m->def.num_inputs == 1 ? "" : "s", m->def.num_outputs,
                   m->def.num_outputs == 1 ? "" : "s");
        return NULL;
    }
    forward(m, "kiln_forward", 1, &x, 1, &y);
    return y;
}

/* ---- containers ------------------------------------------------------------------------ */

static kiln_status seq_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nin, (void)nout;
    kiln_tensor *h = in[0];
    for (int k = 0; k < m->nchildren && h; k++) {
        kiln_module *c = m->children[k].m, *y_next = k + 1 < m->nchildren ? m->children[k + 1].m : NULL;
        kiln_tensor *y = NULL;
        /* a child and the next as one op where the child knows how (Linear then ReLU) */
        if (y_next && c->fuse_next && c->fuse_next(c, y_next, h, &y)) {
            h = y;
            k++;
            continue;
        }
        h = kiln_forward(c, h);
    }
    out[0] = h;
    return h ? KILN_OK : m->ctx->err;
}

/* torch's ModuleList and ModuleDict have no forward ("missing the required forward
 * function"): the module holding them runs their children. */
static kiln_status no_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nin, (void)in, (void)nout, (void)out;
    return kiln__fail(m->ctx, KILN_ERR_UNSUPPORTED,
                      "%s has no forward (as torch's): run its children from the module that holds it "
                      "(kiln_module_child, kiln_module_find_child)",
                      m->kind);
}

static const kiln_module_def seq_def = {
    .kind = "Sequential", .forward = seq_forward, .num_inputs = 1, .num_outputs = 1};
bool kiln__is_sequential(const kiln_module *m) { return m && m->def.forward == seq_forward; }

static const kiln_module_def list_def = {
    .kind = "ModuleList", .forward = no_forward, .num_inputs = 1, .num_outputs = 1};
static const kiln_module_def dict_def = {
    .kind = "ModuleDict", .forward = no_forward, .num_inputs = 1, .num_outputs = 1};

static bool is_a(const kiln_module *m, const kiln_module_def *d) {
    return m->def.forward == d->forward && strcmp(m->kind, d->kind) == 0;
}

/* Appends m to a Sequential or ModuleList as child "<count>". */
static kiln_status append(kiln_module *c, const char *fn, const kiln_module_def *d, kiln_module *m) {
    if (!c) {
        kiln_module_free(m);
        return kiln__fail_global(KILN_ERR_NULL, "%s: the container is NULL", fn);
    }
    if (!is_a(c, d)) {
        free_refused(c, m);
        return kiln__fail(c->ctx, KILN_ERR_INVALID_ARGUMENT, "%s: %s is not a %s", fn, c->kind, d->kind);
    }
    char name[16];
    snprintf(name, sizeof name, "%d", c->nchildren);
    return add_child(c, fn, name, m);
}

static kiln_module *container_new(kiln_ctx *ctx, const char *fn, const kiln_module_def *d, int n,
                                  kiln_module *const *modules) {
    if (!ctx || n < 0 || (n > 0 && !modules)) {
        for (int k = 0; modules && k < n; k++) kiln_module_free(modules[k]);
        if (ctx)
            kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: %d modules%s", fn, n, modules ? "" : " in a NULL array");
        else
            kiln__fail_global(KILN_ERR_NULL, "%s: the context is NULL", fn);
        return NULL;
    }
    bool ok = true;
    for (int k = 0; k < n; k++) ok = ok && modules[k];
    kiln_module *m = ok ? kiln_module_new(ctx, d) : NULL;
    if (!m) {
        for (int k = 0; k < n; k++) kiln_module_free(modules[k]);
        kiln__fail(ctx, KILN_ERR_NULL, "%s: a module of the list is NULL (its constructor failed)", fn);
        return NULL;
    }
    for (int k = 0; k < n; k++)
        if (append(m, fn, d, modules[k]) != KILN_OK) {
            for (int j = k + 1; j < n; j++) kiln_module_free(modules[j]);
            kiln_module_free(m);
            return NULL;
        }
    return m;
}

kiln_module *kiln_nn_sequential(kiln_ctx *ctx, int n, kiln_module *const *modules) {
    return container_new(ctx, "kiln_nn_sequential", &seq_def, n, modules);
}

kiln_status kiln_nn_sequential_append(kiln_module *seq, kiln_module *m) {
    return append(seq, "kiln_nn_sequential_append", &seq_def, m);
}

kiln_status kiln_nn_sequential_set(kiln_module *seq, int index, kiln_module *m) {
    const char *fn = "kiln_nn_sequential_set";
    if (!seq) {
        kiln_module_free(m);
        return kiln__fail_global(KILN_ERR_NULL, "%s: the container is NULL", fn);
    }
    if (!m) return kiln__fail(seq->ctx, KILN_ERR_NULL, "%s: the module is NULL (its constructor failed)", fn);
    if (index < 0 || index >= seq->nchildren || !is_a(seq, &seq_def)) {
        free_refused(seq, m);
        return kiln__fail(seq->ctx, KILN_ERR_INVALID_ARGUMENT, "%s: index %d of a %s of %d children (a Sequential's)",
                          fn, index, seq->kind, seq->nchildren);
    }
    return replace_child(seq, fn, index, m);
}

kiln_module *kiln_nn_module_list(kiln_ctx *ctx, int n, kiln_module *const *modules) {
    return container_new(ctx, "kiln_nn_module_list", &list_def, n, modules);
}

kiln_status kiln_nn_module_list_append(kiln_module *list, kiln_module *m) {
    return append(list, "kiln_nn_module_list_append", &list_def, m);
}

kiln_module *kiln_nn_module_dict(kiln_ctx *ctx) {
    return container_new(ctx, "kiln_nn_module_dict", &dict_def, 0, NULL);
}

kiln_status kiln_nn_module_dict_set(kiln_module *dict, const char *key, kiln_module *m) {
    const char *fn = "kiln_nn_module_dict_set";
    if (!dict) {
        kiln_module_free(m);
        return kiln__fail_global(KILN_ERR_NULL, "%s: the dict is NULL", fn);
    }
    if (!is_a(dict, &dict_def)) {
        free_refused(dict, m);
        return kiln__fail(dict->ctx, KILN_ERR_INVALID_ARGUMENT, "%s: %s is not a ModuleDict", fn, dict->kind);
    }
    for (int k = 0; key && k < dict->nchildren; k++)
        if (strcmp(dict->children[k].name, key) == 0) return replace_child(dict, fn, k, m);
    return add_child(dict, fn, key, m);
}

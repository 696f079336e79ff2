/* src/nn/module.c - what every module shares: creation, parameters and buffers with
 * dotted names, train/eval, description, the sequential container, and kiln_forward,
 * which names the failing module in an op's error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn_internal.h"

kiln_module *kiln__module_new(kiln_ctx *ctx, const char *kind, kiln_tensor *(*forward)(kiln_module *, kiln_tensor *),
                              void (*args)(const kiln_module *, char *, size_t)) {
    kiln_module *m = calloc(1, sizeof *m);
    if (!m) {
        kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "kiln_nn: out of host memory for a %s module", kind);
        return NULL;
    }
    m->ctx = ctx;
    m->kind = kind;
    m->forward = forward;
    m->args = args;
    m->training = true;
    return m;
}

bool kiln__module_add(kiln_module *m, const char *name, kiln_tensor *t, bool buffer) {
    if (!t) return false;
    if (m->ntensors == KILN__MODULE_TENSORS) {
        kiln_tensor_free(t);
        kiln__fail(m->ctx, KILN_ERR_INVALID_ARGUMENT, "kiln_nn: %s has too many tensors", m->kind);
        return false;
    }
    kiln_tensor_keep(t);
    if (!buffer) kiln_set_requires_grad(t, true);
    kiln__mtensor *e = &m->tensors[m->ntensors++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->t = t;
    e->buffer = buffer;
    return true;
}

kiln_tensor *kiln__module_tensor(const kiln_module *m, const char *name) {
    for (int k = 0; k < m->ntensors; k++)
        if (strcmp(m->tensors[k].name, name) == 0) return m->tensors[k].t;
    return NULL;
}

void kiln_module_free(kiln_module *m) {
    if (!m) return;
    for (int k = 0; k < m->nchildren; k++) kiln_module_free(m->children[k]);
    free(m->children);
    free(m->child_names);
    for (int k = 0; k < m->ntensors; k++) kiln_tensor_free(m->tensors[k].t);
    free(m);
}

kiln_ctx *kiln_module_ctx(const kiln_module *m) { return m ? m->ctx : NULL; }
int kiln_module_num_children(const kiln_module *m) { return m ? m->nchildren : 0; }
kiln_module *kiln_module_child(const kiln_module *m, int index) {
    return m && index >= 0 && index < m->nchildren ? m->children[index] : NULL;
}

void kiln_module_train(kiln_module *m, bool training) {
    if (!m) return;
    m->training = training;
    for (int k = 0; k < m->nchildren; k++) kiln_module_train(m->children[k], training);
}

void kiln__module_state_loaded(kiln_module *m) {
    if (!m) return;
    m->batches_tracked = -1;
    for (int k = 0; k < m->nchildren; k++) kiln__module_state_loaded(m->children[k]);
}

bool kiln_module_is_training(const kiln_module *m) { return m && m->training; }

void kiln__module_path(const kiln_module *m, char *buf, size_t cap) {
    const char *parts[32];
    int n = 0;
    for (const kiln_module *c = m; c->parent && n < 32; c = c->parent) {
        const kiln_module *p = c->parent;
        for (int k = 0; k < p->nchildren; k++)
            if (p->children[k] == c) parts[n++] = p->child_names[k];
    }
    size_t used = 0;
    buf[0] = '\0';
    for (int k = n - 1; k >= 0 && used < cap; k--)
        used += (size_t)snprintf(buf + used, cap - used, "%s%s", used ? "." : "", parts[k]);
}

static size_t describe(const kiln_module *m, char *buf, size_t cap, int indent) {
    size_t used = 0;
#define PUT(...)                                                                   \
    do {                                                                           \
        if (used < cap) used += (size_t)snprintf(buf + used, cap - used, __VA_ARGS__); \
    } while (0)
    char args[256] = "";
    if (m->args) m->args(m, args, sizeof args);
    PUT("%s(%s", m->kind, args);
    if (m->nchildren) {
        PUT("\n");
        for (int k = 0; k < m->nchildren; k++) {
            PUT("%*s(%s): ", indent + 2, "", m->child_names[k]);
            if (used < cap) used += describe(m->children[k], buf + used, cap - used, indent + 2);
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

/* ---- state -------------------------------------------------------------------------- */

typedef struct walk {
    kiln_named_tensor *out;
    kiln_tensor **params;
    int cap, n;
    bool params_only;
} walk;

static void walk_module(const kiln_module *m, const char *prefix, walk *w) {
    for (int k = 0; k < m->ntensors; k++) {
        const kiln__mtensor *e = &m->tensors[k];
        if (w->params_only && e->buffer) continue;
        if (w->n < w->cap) {
            if (w->out) {
                snprintf(w->out[w->n].name, sizeof w->out[w->n].name, "%s%s%s", prefix, *prefix ? "." : "", e->name);
                w->out[w->n].tensor = e->t;
                w->out[w->n].is_buffer = e->buffer;
            }
            if (w->params) w->params[w->n] = e->t;
        }
        w->n++;
    }
    for (int k = 0; k < m->nchildren; k++) {
        char p[128];
        snprintf(p, sizeof p, "%s%s%s", prefix, *prefix ? "." : "", m->child_names[k]);
        walk_module(m->children[k], p, w);
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
    int n = kiln_module_state(m, NULL, 0);
    kiln_named_tensor *all = malloc(sizeof *all * (size_t)(n > 0 ? n : 1));
    if (!all) return NULL;
    kiln_module_state(m, all, n);
    kiln_tensor *t = NULL;
    for (int k = 0; k < n && !t; k++)
        if (strcmp(all[k].name, name) == 0) t = all[k].tensor;
    free(all);
    return t;
}

int64_t kiln_module_num_elements(kiln_module *m) {
    int n = kiln_module_parameters(m, NULL, 0);
    kiln_tensor **ps = malloc(sizeof *ps * (size_t)(n > 0 ? n : 1));
    if (!ps) return -1;
    kiln_module_parameters(m, ps, n);
    int64_t total = 0;
    for (int k = 0; k < n; k++) total += kiln_tensor_numel(ps[k]);
    free(ps);
    return total;
}

void kiln_module_requires_grad(kiln_module *m, bool requires_grad) {
    if (!m) return;
    for (int k = 0; k < m->ntensors; k++)
        if (!m->tensors[k].buffer) kiln_set_requires_grad(m->tensors[k].t, requires_grad);
    for (int k = 0; k < m->nchildren; k++) kiln_module_requires_grad(m->children[k], requires_grad);
}

/* ---- forward ------------------------------------------------------------------------ */

kiln_tensor *kiln_forward(kiln_module *m, kiln_tensor *x) {
    if (!m) /* x's context holds the error; with x NULL too, kiln_last_error() does */
        return kiln__fail(x ? x->ctx : NULL, KILN_ERR_NULL, "kiln_forward: the module is NULL"), NULL;
    if (!x) {
        /* as an op given NULL: NULL at once, and an error unless an earlier one explains it */
        if (m->ctx->err == KILN_OK) {
            char args[256] = "";
            if (m->args) m->args(m, args, sizeof args);
            kiln__fail(m->ctx, KILN_ERR_NULL, "kiln_forward: the input of %s(%s) is NULL", m->kind, args);
        }
        return NULL;
    }
    kiln_tensor *y = m->forward(m, x);
    if (!y && m->ctx->err != KILN_OK) {
        char path[128], args[256] = "";
        kiln__module_path(m, path, sizeof path);
        if (m->args) m->args(m, args, sizeof args);
        kiln__error_note(m->ctx, "in %s(%s)%s%s", m->kind, args, *path ? " at " : "", path);
    }
    return y;
}

/* ---- sequential --------------------------------------------------------------------- */

static kiln_tensor *seq_forward(kiln_module *m, kiln_tensor *x) {
    if (!x) return NULL;
    kiln_tensor *h = x;
    for (int k = 0; k < m->nchildren && h; k++) h = kiln_forward(m->children[k], h);
    return h;
}

kiln_module *kiln_nn_sequential(kiln_ctx *ctx, int n, kiln_module *const *modules) {
    bool ok = ctx && n >= 0 && (n == 0 || modules);
    for (int k = 0; ok && k < n; k++) ok = modules[k] != NULL;
    kiln_module *m = ok ? kiln__module_new(ctx, "Sequential", seq_forward, NULL) : NULL;
    for (int k = 0; m && k < n; k++) {
        if (kiln_nn_sequential_append(m, modules[k]) != KILN_OK) {
            for (int j = k + 1; j < n; j++) kiln_module_free(modules[j]);
            kiln_module_free(m);
            return NULL;
        }
    }
    if (!m) {
        for (int k = 0; modules && k < n; k++) kiln_module_free(modules[k]);
        if (ctx && ctx->err == KILN_OK)
            kiln__fail(ctx, KILN_ERR_NULL, "kiln_nn_sequential: a module of the list is NULL (its constructor failed)");
    }
    return m;
}

kiln_status kiln_nn_sequential_append(kiln_module *seq, kiln_module *m) {
    if (!seq || !m) {
        kiln_module_free(m);
        if (seq) return kiln__fail(seq->ctx, KILN_ERR_NULL, "kiln_nn_sequential_append: module is NULL");
        return kiln__fail_global(KILN_ERR_NULL, "kiln_nn_sequential_append: the sequential is NULL");
    }
    if (seq->forward != seq_forward) {
        kiln_module_free(m);
        return kiln__fail(seq->ctx, KILN_ERR_INVALID_ARGUMENT, "kiln_nn_sequential_append: %s is not a Sequential",
                          seq->kind);
    }
    if (m->ctx != seq->ctx) {
        kiln_module_free(m);
        return kiln__fail(seq->ctx, KILN_ERR_INVALID_ARGUMENT,
                          "kiln_nn_sequential_append: the module belongs to another context");
    }
    if (seq->nchildren == seq->capchildren) {
        int cap = seq->capchildren ? 2 * seq->capchildren : 8;
        kiln_module **c = realloc(seq->children, sizeof *c * (size_t)cap);
        if (c) seq->children = c;
        char(*names)[64] = c ? realloc(seq->child_names, sizeof *names * (size_t)cap) : NULL;
        if (!c || !names) {
            kiln_module_free(m);
            return kiln__fail(seq->ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "kiln_nn_sequential_append: out of host memory");
        }
        seq->child_names = names;
        seq->capchildren = cap;
    }
    snprintf(seq->child_names[seq->nchildren], 64, "%d", seq->nchildren);
    seq->children[seq->nchildren++] = m;
    m->parent = seq;
    return KILN_OK;
}

kiln_status kiln_nn_sequential_set(kiln_module *seq, int index, kiln_module *m) {
    if (!seq || !m) {
        kiln_module_free(m);
        return seq ? kiln__fail(seq->ctx, KILN_ERR_NULL, "kiln_nn_sequential_set: module is NULL") : KILN_ERR_NULL;
    }
    if (index < 0 || index >= seq->nchildren || m->ctx != seq->ctx) {
        kiln_module_free(m);
        return kiln__fail(seq->ctx, KILN_ERR_INVALID_ARGUMENT,
                          "kiln_nn_sequential_set: index %d out of range (%d children) or module of another context",
                          index, seq->nchildren);
    }
    kiln_module_free(seq->children[index]);
    seq->children[index] = m;
    m->parent = seq;
    kiln_module_train(m, seq->training); /* the whole subtree, not just m */
    return KILN_OK;
}

kiln_status kiln_module_set_child_name(kiln_module *seq, int index, const char *name) {
    if (!seq) return kiln__fail_global(KILN_ERR_NULL, "kiln_module_set_child_name: module is NULL");
    if (!name) return kiln__fail(seq->ctx, KILN_ERR_NULL, "kiln_module_set_child_name: name is NULL");
    size_t len = strlen(name);
    bool valid = len > 0 && len < 64 && !strchr(name, '.');
    if (index < 0 || index >= seq->nchildren || !valid)
        return kiln__fail(seq->ctx, KILN_ERR_INVALID_ARGUMENT,
                          "kiln_module_set_child_name: index %d of %d, name '%s' (1 to 63 characters, no dots)", index,
                          seq->nchildren, name);
    for (int k = 0; k < seq->nchildren; k++)
        if (k != index && strcmp(seq->child_names[k], name) == 0)
            return kiln__fail(seq->ctx, KILN_ERR_INVALID_ARGUMENT, "kiln_module_set_child_name: '%s' is taken by child %d",
                              name, k);
    snprintf(seq->child_names[index], 64, "%s", name);
    return KILN_OK;
}

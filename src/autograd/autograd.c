/* src/autograd/autograd.c - reverse-mode autograd: nodes recorded on op outputs, the
 * backward pass, gradient slots, no_grad, detach and the numerics check. It calls no op:
 * the backward rules are the ops floor's, reached through each node's function pointer,
 * and a gradient arrives here already in its input's shape (kiln__accum, src/ops/reduce.c,
 * sums broadcast dims down first).
 *
 * A differentiable op whose input requires grad attaches a node to its output (see the
 * contract in src/ops/ops_internal.h). Nodes reference their inputs, so the graph of a tensor
 * stays alive as long as the tensor does; a scope that ends drops its intermediates and
 * releases every node that only they held. Eager ops are created in execution order, so a
 * node's creation number (seq) is a topological order: backward runs the reachable nodes
 * from the newest to the oldest, each once, after all its consumers have added their part
 * of its output's gradient. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd_internal.h"

/* ---- grad mode ---------------------------------------------------------------------- */

bool kiln_ctx_set_grad_enabled(kiln_ctx *ctx, bool enabled) {
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "kiln_ctx_set_grad_enabled: ctx is NULL"), false;
    bool prev = ctx->grad_enabled;
    ctx->grad_enabled = enabled;
    return prev;
}

bool kiln_ctx_grad_enabled(const kiln_ctx *ctx) { return ctx && ctx->grad_enabled; }

bool kiln_ctx_set_check_numerics(kiln_ctx *ctx, bool on) {
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "kiln_ctx_set_check_numerics: ctx is NULL"), false;
    bool prev = ctx->check_numerics;
    ctx->check_numerics = on;
    return prev;
}

/* ---- leaves ------------------------------------------------------------------------- */

kiln_status kiln_tensor_set_requires_grad(kiln_tensor *t, bool requires_grad) {
    if (!t) return kiln__fail_global(KILN_ERR_NULL, "kiln_tensor_set_requires_grad: tensor is NULL");
    kiln_ctx *ctx = t->ctx;
    char sb[160];
    if (t->node) {
        if (requires_grad) return KILN_OK;
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                          "kiln_tensor_set_requires_grad: tensor %s was made by %s and is not a leaf; use kiln_detach",
                          kiln__shape_str(t->ndim, t->shape, sb, sizeof sb), t->node->op);
    }
    if (requires_grad && t->dtype != KILN_F32)
        return kiln__fail(ctx, KILN_ERR_DTYPE,
                          "kiln_tensor_set_requires_grad: tensor %s has dtype %s; only f32 tensors can "
                          "require grad",
                          kiln__shape_str(t->ndim, t->shape, sb, sizeof sb), kiln_dtype_name(t->dtype));
    t->requires_grad = requires_grad;
    return KILN_OK;
}

bool kiln_tensor_requires_grad(const kiln_tensor *t) { return t && t->requires_grad; }
bool kiln_tensor_has_grad_fn(const kiln_tensor *t) { return t && t->node; }
kiln_tensor *kiln_tensor_grad(const kiln_tensor *t) { return t ? t->grad : NULL; }

kiln_status kiln_tensor_zero_grad(kiln_tensor *t) {
    if (!t) return kiln__fail_global(KILN_ERR_NULL, "kiln_tensor_zero_grad: tensor is NULL");
    if (!t->grad) return KILN_OK;
    return kiln_fill(t->grad, 0.0f);
}

void kiln_tensor_clear_grad(kiln_tensor *t) {
    if (!t || !t->grad) return;
    kiln_tensor *g = t->grad;
    t->grad = NULL;
    kiln_tensor_free(g);
}

kiln_tensor *kiln_detach(kiln_ctx *ctx, kiln_tensor *t) {
    if (!kiln__check_inputs(ctx, "kiln_detach", 1, &t)) return NULL;
    return kiln__tensor_view(ctx, t, t->ndim, t->shape, t->strides, t->offset);
}

/* ---- nodes -------------------------------------------------------------------------- */

static void node_release(kiln_ctx *ctx, kiln__node *n, bool discard);

bool kiln__grad_wanted(const kiln_ctx *ctx, int nin, kiln_tensor *const *in) {
    if (!ctx || !ctx->grad_enabled) return false;
    for (int i = 0; i < nin; i++)
        if (in[i] && in[i]->requires_grad) return true;
    return false;
}

kiln__node *kiln__node_new(kiln_ctx *ctx, const char *op, kiln_tensor *out, int nin, kiln_tensor *const *in,
                           kiln__backward_fn backward) {
    kiln__node *n = calloc(1, sizeof *n);
    kiln_tensor **ins = nin > 0 ? calloc((size_t)nin, sizeof *ins) : NULL;
    if (!n || (nin > 0 && !ins)) {
        free(n);
        free(ins);
        kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory for an autograd node of %d inputs", op,
                   nin);
        return NULL;
    }
    n->op = op;
    n->backward = backward;
    n->out = out;
    n->nin = nin;
    n->in = ins;
    n->seq = ++ctx->node_seq;
    ctx->node_release = node_release; /* how the tensor floor frees a tensor's node */
    for (int i = 0; i < nin; i++) {
        n->in[i] = in[i];
        if (in[i]) in[i]->refs++;
    }
    out->node = n;
    out->requires_grad = true;
    return n;
}

kiln_status kiln__node_save(kiln__node *n, kiln_tensor *t) {
    if (!n || !t) return KILN_OK;
    if (n->nsaved == n->capsaved) {
        int cap = n->capsaved ? 2 * n->capsaved : 4;
        kiln_tensor **s = realloc(n->saved, sizeof *s * (size_t)cap);
        if (!s)
            return kiln__fail(n->out->ctx, KILN_ERR_HOST_OUT_OF_MEMORY,
                              "%s: out of host memory saving a tensor for the backward", n->op);
        n->saved = s;
        n->capsaved = cap;
    }
    n->saved[n->nsaved++] = t;
    t->refs++;
    return KILN_OK;
}

void *kiln__node_state_new(kiln__node *n, size_t size, const char *type) {
    if (!n) return NULL;
    if (n->state) {
        kiln__fail(n->out->ctx, KILN_ERR_INVALID_ARGUMENT, "%s: the autograd node already has a %s state", n->op,
                   n->state_type);
        return NULL;
    }
    n->state = calloc(1, size ? size : 1);
    if (!n->state) {
        kiln__fail(n->out->ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory for its %s (%zu bytes)", n->op,
                   type, size);
        return NULL;
    }
    n->state_size = size;
    n->state_type = type;
    return n->state;
}

void *kiln__node_state_get(const kiln__node *n, size_t size, const char *type) {
    if (!n) return NULL;
    if (!n->state || n->state_size != size || strcmp(n->state_type, type) != 0) {
        kiln__fail(n->out->ctx, KILN_ERR_INVALID_ARGUMENT,
                   "backward of %s: expected a %s state (%zu bytes), the node carries %s (%zu bytes)", n->op, type,
                   size, n->state ? n->state_type : "none", n->state_size);
        return NULL;
    }
    return n->state;
}

bool kiln__input_needs_grad(const kiln__node *n, int i) {
    return i >= 0 && i < n->nin && n->in[i] && n->in[i]->requires_grad;
}

/* Frees a node's memory without touching the tensors it references (kiln_close, where
 * every tensor goes anyway). */
static void node_discard(kiln__node *n) {
    if (!n) return;
    if (n->state && n->state_destroy) n->state_destroy(n->state);
    free(n->state);
    free(n->in);
    free(n->saved);
    free(n);
}

/* Frees a node and drops its references to its inputs and saved tensors (those no longer
 * held are queued on ctx->dead for kiln__release_dead). */
static void node_free(kiln__node *n) {
    if (!n) return;
    for (int i = 0; i < n->nin; i++)
        if (n->in[i]) kiln__tensor_unref(n->in[i]);
    for (int i = 0; i < n->nsaved; i++) kiln__tensor_unref(n->saved[i]);
    node_discard(n);
}

/* ctx->node_release: the tensor floor frees a tensor's node through it. */
static void node_release(kiln_ctx *ctx, kiln__node *n, bool discard) {
    (void)ctx;
    if (discard)
        node_discard(n);
    else
        node_free(n);
}

/* ---- gradients ---------------------------------------------------------------------- */

/* dst += src elementwise (dst contiguous, src any view of the same shape). */
static kiln_status add_into(kiln_ctx *ctx, const char *op, kiln_tensor *dst, kiln_tensor *src) {
    int64_t n = kiln__numel(dst->ndim, dst->shape);
    if (n == 0) return KILN_OK;
    kiln__geom g;
    int64_t st[1][KILN_MAX_DIMS];
    memcpy(st[0], src->strides, sizeof st[0]);
    kiln__geom_build(&g, src->ndim, src->shape, 1, (const int64_t(*)[KILN_MAX_DIMS])st);
    cl_int doff = (cl_int)dst->offset, soff = (cl_int)src->offset, ni = (cl_int)n;
    kiln__karg args[] = {KILN__ARG(dst->st->mem), KILN__ARG(doff), KILN__ARG(src->st->mem),
                         KILN__ARG(soff),         KILN__ARG(ni),   KILN__ARG(g)};
    return kiln__launch(ctx, op, "elementwise", "-DT=float", "add_into_strided", 6, args, (size_t)n, 0);
}

/* Whether t covers the whole payload of its storage, each element once: its dims, ordered
 * by stride, are a contiguous layout (a contiguous tensor or a permutation of one). */
static bool whole_dense(const kiln_tensor *t) {
    if (!t->st || t->offset != t->st->guard || t->st->numel != kiln__numel(t->ndim, t->shape)) return false;
    int64_t expect = 1;
    bool used[KILN_MAX_DIMS] = {false};
    for (int k = 0; k < t->ndim; k++) { /* the dims from the innermost: each stride is the product of the inner sizes */
        int best = -1;
        for (int d = 0; d < t->ndim; d++)
            if (!used[d] && t->shape[d] != 1 && (best < 0 || t->strides[d] < t->strides[best])) best = d;
        if (best < 0) break;
        if (t->strides[best] != expect) return false;
        used[best] = true;
        expect *= t->shape[best];
    }
    return true;
}

/* Whether t is a tensor nothing but its handle reaches: a dense handle over the whole
 * payload of a storage no other handle views, with no autograd state. Such a tensor can
 * become a gradient slot as it is, once its owner gives it up (a leaf's .grad only when
 * contiguous). */
static bool sole_owner(const kiln_tensor *x, const kiln_tensor *t) {
    return t->st && t->st->refs == 1 && t->refs == 0 && !t->node && !t->grad && !t->gacc && !t->dropped &&
           !t->requires_grad && (x->node ? whole_dense(t) : kiln__is_contiguous(t) && whole_dense(t));
}

/* Whether g, which its caller keeps, can be a non-leaf's gradient slot as a second handle
 * on its storage instead of a copy: a dense handle over the whole payload with no
 * autograd state. The slot then shares the storage with tensors the backward still reads
 * (a view op's rule hands up a view of its own gradient, an add's rule one gradient to both
 * inputs), so it is never written in place while shared (add_into_slot). A leaf's .grad
 * always gets a storage of its own: the user and the optimizers write it. */
static bool can_share(const kiln_tensor *x, const kiln_tensor *g) {
    return x->node && !g->node && !g->requires_grad && whole_dense(g);
}

/* *slot += g: in place when the slot's storage is its own and contiguous, else into a new
 * contiguous storage that replaces the slot (the old one stays as the other handles saw
 * it). */
static kiln_status add_into_slot(kiln_ctx *ctx, kiln_tensor **slot, kiln_tensor *g) {
    if ((*slot)->st->refs == 1 && kiln__is_contiguous(*slot)) return add_into(ctx, "kiln_backward", *slot, g);
    kiln_tensor *c = kiln__copy_contiguous(ctx, "kiln_backward", *slot);
    kiln_status s = c ? add_into(ctx, "kiln_backward", c, g) : ctx->err;
    if (s != KILN_OK) {
        kiln_tensor_free(c);
        return s;
    }
    c->scope = 0;
    kiln_tensor_free(*slot);
    *slot = c;
    return KILN_OK;
}

kiln_status kiln__grad_add(kiln_ctx *ctx, kiln__node *n, int i, kiln_tensor *g, bool own) {
    kiln_tensor *mine = own ? g : NULL; /* freed on the way out unless stored */
    kiln_status s = KILN_OK;
    if (!kiln__input_needs_grad(n, i)) goto out;
    if (!g) {
        s = ctx->err != KILN_OK ? ctx->err : kiln__fail(ctx, KILN_ERR_NULL, "backward of %s: gradient is NULL", n->op);
        goto out;
    }
    kiln_tensor *x = n->in[i];
    char sx[160], sg[160];
    if (x->graph_freed && !x->node) {
        s = kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                       "kiln_backward: input %d of %s (shape %s) belongs to a graph an earlier backward already "
                       "freed; pass retain_graph to kiln_backward_ex for the first backward",
                       i, n->op, kiln__shape_str(x->ndim, x->shape, sx, sizeof sx));
        goto out;
    }
    if (g->ndim != x->ndim || memcmp(g->shape, x->shape, sizeof(int64_t) * (size_t)x->ndim) != 0) {
        s = kiln__fail(ctx, KILN_ERR_SHAPE, "backward of %s: gradient %s does not fit input %d of shape %s", n->op,
                       kiln__shape_str(g->ndim, g->shape, sg, sizeof sg), i,
                       kiln__shape_str(x->ndim, x->shape, sx, sizeof sx));
        goto out;
    }
    kiln_tensor **slot = x->node ? &x->gacc : &x->grad;
    if (!*slot) {
        /* The slot's tensor must not alias a tensor the backward or the user still holds:
         * the caller's own tensor when nothing else views its storage; else a fresh
         * contiguous copy. */
        kiln_tensor *c = NULL;
        if (mine && sole_owner(x, mine)) {
            c = mine;
            mine = NULL;
        } else if (can_share(x, g)) {
            c = kiln__tensor_view(ctx, g, g->ndim, g->shape, g->strides, g->offset);
        } else {
            c = kiln__copy_contiguous(ctx, "kiln_backward", g);
        }
        if (!c)
            s = ctx->err;
        else {
            /* out of every scope: a leaf's .grad outlives the step; a gacc is freed by the
             * backward loop, whatever scopes the backward rules open */
            c->scope = 0;
            *slot = c;
        }
    } else {
        s = add_into_slot(ctx, slot, g);
    }
out:
    kiln_tensor_free(mine);
    return s;
}

/* ---- backward ----------------------------------------------------------------------- */

void kiln__set_grad_ready(kiln_ctx *ctx, void (*fn)(void *user, kiln_tensor *leaf), void *user) {
    if (!ctx) return;
    ctx->grad_ready = fn;
    ctx->grad_ready_user = fn ? user : NULL;
}

/* For the grad-ready hook: each leaf fed by the graph with the number of edges (node,
 * input) still to run into it, sorted by address. */
typedef struct leaf_count {
    kiln_tensor *t;
    int64_t left;
} leaf_count;

static bool is_hook_leaf(const kiln_tensor *x) { return x && x->requires_grad && !x->node && !x->graph_freed; }

static int by_ptr(const void *a, const void *b) {
    uintptr_t x = (uintptr_t)((const leaf_count *)a)->t, y = (uintptr_t)((const leaf_count *)b)->t;
    return x < y ? -1 : x > y;
}

/* The leaves of the graph and their edge counts (*n of them), or NULL with *n 0 when there
 * are none or host memory runs out (the hook is then told nothing). */
static leaf_count *count_leaves(kiln__node **nodes, size_t count, size_t *n) {
    size_t edges = 0, k = 0;
    *n = 0;
    for (size_t i = 0; i < count; i++)
        for (int j = 0; j < nodes[i]->nin; j++) edges += is_hook_leaf(nodes[i]->in[j]);
    if (!edges) return NULL;
    leaf_count *all = malloc(edges * sizeof *all);
    if (!all) return NULL;
    for (size_t i = 0; i < count; i++)
        for (int j = 0; j < nodes[i]->nin; j++)
            if (is_hook_leaf(nodes[i]->in[j])) all[k++] = (leaf_count){nodes[i]->in[j], 1};
    qsort(all, edges, sizeof *all, by_ptr);
    size_t u = 0;
    for (size_t i = 0; i < edges; i++) {
        if (u && all[u - 1].t == all[i].t)
            all[u - 1].left++;
        else
            all[u++] = all[i];
    }
    *n = u;
    return all;
}

/* After node n's backward (or its skip): the leaves it fed whose last edge this was are
 * reported. */
static void leaves_done(kiln_ctx *ctx, const kiln__node *n, leaf_count *leaves, size_t nleaves) {
    for (int j = 0; j < n->nin; j++) {
        if (!is_hook_leaf(n->in[j])) continue;
        leaf_count key = {n->in[j], 0};
        leaf_count *c = bsearch(&key, leaves, nleaves, sizeof *leaves, by_ptr);
        if (c && --c->left == 0 && c->t->grad) ctx->grad_ready(ctx->grad_ready_user, c->t);
    }
}

static int by_seq_desc(const void *a, const void *b) {
    uint64_t x = (*(kiln__node *const *)a)->seq, y = (*(kiln__node *const *)b)->seq;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* The nodes reachable from root, each once, newest first. */
static kiln__node **collect(kiln_ctx *ctx, kiln__node *root, size_t *count) {
    size_t cap = 64, n = 0, top = 0, scap = 64;
    kiln__node **list = malloc(cap * sizeof *list), **stack = malloc(scap * sizeof *stack);
    if (!list || !stack) goto oom;
    stack[top++] = root;
    while (top) {
        kiln__node *v = stack[--top];
        /* the high bit of seq marks a visited node during the walk */
        if (v->seq & (1ULL << 63)) continue;
        v->seq |= 1ULL << 63;
        if (n == cap) {
            kiln__node **nl = realloc(list, 2 * cap * sizeof *nl);
            if (!nl) goto oom;
            list = nl;
            cap *= 2;
        }
        list[n++] = v;
        for (int i = 0; i < v->nin; i++) {
            kiln_tensor *x = v->in[i];
            if (!x || !x->node || !x->requires_grad) continue;
            if (top == scap) {
                kiln__node **ns = realloc(stack, 2 * scap * sizeof *ns);
                if (!ns) goto oom;
                stack = ns;
                scap *= 2;
            }
            stack[top++] = x->node;
        }
    }
    for (size_t k = 0; k < n; k++) list[k]->seq &= ~(1ULL << 63);
    qsort(list, n, sizeof *list, by_seq_desc);
    free(stack);
    *count = n;
    return list;
oom:
    if (list)
        for (size_t k = 0; k < n; k++) list[k]->seq &= ~(1ULL << 63);
    free(list);
    free(stack);
    kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "kiln_backward: out of host memory walking the graph");
    return NULL;
}

kiln_status kiln_backward(kiln_tensor *loss) {
    if (!loss) return kiln__fail_global(KILN_ERR_NULL, "kiln_backward: tensor is NULL");
    return kiln_backward_ex(loss, NULL, false);
}

kiln_status kiln_backward_ex(kiln_tensor *out, kiln_tensor *seed, bool retain_graph) {
    if (!out) return kiln__fail_global(KILN_ERR_NULL, "kiln_backward_ex: tensor is NULL");
    kiln_ctx *ctx = out->ctx;
    if (ctx->err != KILN_OK) return ctx->err; /* an earlier op failed: its result is not to be trusted */
    char so[160], ss[160];
    kiln__shape_str(out->ndim, out->shape, so, sizeof so);
    if (!out->requires_grad)
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                          "kiln_backward: tensor %s does not require grad (no input of the ops that made it requires "
                          "grad, or it was made under no_grad)",
                          so);
    if (!out->node) {
        if (out->graph_freed)
            return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                              "kiln_backward: the graph of tensor %s was freed by an earlier backward; pass "
                              "retain_graph to kiln_backward_ex to run backward through it twice",
                              so);
    }
    int64_t numel = kiln__numel(out->ndim, out->shape);
    if (!seed && numel != 1)
        return kiln__fail(ctx, KILN_ERR_SHAPE,
                          "kiln_backward: tensor %s has %lld elements; the gradient of a non-scalar needs an explicit "
                          "seed gradient (kiln_backward_ex)",
                          so, (long long)numel);
    if (seed) {
        if (seed->ctx != ctx)
            return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                              "kiln_backward: the seed gradient belongs to another context");
        if (seed->dtype != KILN_F32 || seed->ndim != out->ndim ||
            memcmp(seed->shape, out->shape, sizeof(int64_t) * (size_t)out->ndim) != 0)
            return kiln__fail(ctx, KILN_ERR_SHAPE, "kiln_backward: seed gradient %s (%s) does not match tensor %s",
                              kiln__shape_str(seed->ndim, seed->shape, ss, sizeof ss), kiln_dtype_name(seed->dtype),
                              so);
    }

    bool prev_mode = ctx->grad_enabled;
    ctx->grad_enabled = false;
    kiln_dtype prev_autocast = ctx->autocast;
    ctx->autocast = KILN_F32;
    kiln_status s = KILN_OK;

    /* a leaf: its gradient is the seed */
    if (!out->node) {
        kiln_tensor *leaf[1] = {out};
        kiln__node fake = {.op = "kiln_backward", .nin = 1, .in = leaf};
        /* the seed of ones is the tensor floor's fill */
        if (seed)
            s = kiln__grad_add(ctx, &fake, 0, seed, false);
        else {
            kiln_tensor *g = kiln_ones(ctx, out->ndim, out->shape);
            s = g ? kiln__grad_add(ctx, &fake, 0, g, true) : ctx->err;
        }
        ctx->grad_enabled = prev_mode;
        ctx->autocast = prev_autocast;
        return s;
    }

    size_t count = 0;
    kiln__node **nodes = collect(ctx, out->node, &count);
    if (!nodes) {
        ctx->grad_enabled = prev_mode;
        ctx->autocast = prev_autocast;
        return ctx->err;
    }
    out->gacc = seed ? kiln__copy_contiguous(ctx, "kiln_backward", seed) : kiln_ones(ctx, out->ndim, out->shape);
    if (!out->gacc) s = ctx->err;
    size_t nleaves = 0;
    leaf_count *leaves = ctx->grad_ready ? count_leaves(nodes, count, &nleaves) : NULL;

    for (size_t k = 0; k < count && s == KILN_OK; k++) {
        kiln__node *n = nodes[k];
        kiln_tensor *t = n->out, *g = t->gacc;
        if (!g) { /* nothing flowed into this node */
            if (leaves) leaves_done(ctx, n, leaves, nleaves);
            continue;
        }
        t->gacc = NULL;
        if (!n->strided_grad && !kiln__is_contiguous(g)) {
            kiln_tensor *c = kiln__copy_contiguous(ctx, "kiln_backward", g);
            kiln_tensor_free(g);
            g = c;
            if (!g) {
                s = ctx->err;
                break;
            }
        }
        s = n->backward(ctx, n, g);
        if (s == KILN_OK && ctx->err != KILN_OK) s = ctx->err;
        kiln_tensor_free(g);
        if (s == KILN_OK && leaves) leaves_done(ctx, n, leaves, nleaves);
    }
    free(leaves);
    /* gradients that did not flow on because of an error */
    for (size_t k = 0; k < count; k++) {
        kiln_tensor *t = nodes[k]->out;
        if (t->gacc) {
            kiln_tensor_free(t->gacc);
            t->gacc = NULL;
        }
    }
    if (!retain_graph) {
        /* Detach every node from its output first, then free them: freeing a node may
         * release tensors (and their nodes) that nothing else holds. */
        for (size_t k = 0; k < count; k++) {
            nodes[k]->out->node = NULL;
            nodes[k]->out->graph_freed = true;
        }
        for (size_t k = 0; k < count; k++) node_free(nodes[k]);
        kiln__release_dead(ctx);
    }
    free(nodes);
    ctx->grad_enabled = prev_mode;
    ctx->autocast = prev_autocast;
    return s;
}

/* ---- numerics check ----------------------------------------------------------------- */

kiln_tensor *kiln__finish(kiln_ctx *ctx, const char *op, kiln_tensor *out) {
    if (!out || !ctx || !ctx->check_numerics || out->dtype != KILN_F32) return out;
    int64_t n = kiln__numel(out->ndim, out->shape);
    if (n == 0) return out;
    float *h = malloc(sizeof(float) * (size_t)n);
    if (!h) return out; /* the check is best effort; the op's result stands */
    if (kiln_to_host(out, h, sizeof(float) * (size_t)n) == KILN_OK) {
        for (int64_t i = 0; i < n; i++) {
            if (isfinite(h[i])) continue;
            char sb[160];
            kiln__fail(ctx, KILN_ERR_RANGE,
                       "%s produced %s at element %lld of its output %s (KILN_CHECK_NUMERICS: the first op with a "
                       "non-finite result)",
                       op, isnan(h[i]) ? "NaN" : "Inf", (long long)i,
                       kiln__shape_str(out->ndim, out->shape, sb, sizeof sb));
            free(h);
            kiln_tensor_free(out);
            return NULL;
        }
    }
    free(h);
    return out;
}

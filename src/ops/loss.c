/* src/ops/loss.c - loss functions as torch.nn.functional (1.13): mse, l1, smooth_l1,
 * cross_entropy (class weights, ignore_index, label smoothing), nll, bce, bce_with_logits,
 * the least-squares GAN loss and the L1/L2 penalties, each with reductions mean, sum and
 * none and a backward rule (kernels in cl_kernels/loss.cl).
 *
 * Elementwise losses are one kernel for reduction none; for mean and sum the loss kernel
 * itself sums its terms per work-group (one group for small inputs, whose result is then
 * the loss), and a second launch adds the groups' partials when there were several. Their
 * backward is one kernel writing the input's and the target's gradients together.
 * Operands may be any views (strided kernels read them in place); weight and pos_weight
 * broadcast to the input's shape as torch's.
 *
 * cross_entropy: one work-item per row computes the row's log-sum-exp and its loss in one
 * kernel (no separate softmax), then one launch sums the rows (and, for the mean, their
 * weights) in a fixed order; the backward is one kernel per logit, softmax * Q - q. The
 * rows kernel checks the labels' range on the device: a bad label is recorded in the
 * context's index-error buffer (src/device/deverr.c) and reported by the next call that
 * waits for the device (functional.h documents this deferred error); its row counts as
 * ignored meanwhile, so nothing is read out of bounds.
 *
 * Every sum is deterministic: no atomics, and the order of additions depends only on the
 * shapes and the device. Gradients flow to float inputs and targets (mse, l1, smooth_l1,
 * bce, bce_with_logits: as torch's), never to weight, pos_weight or index targets.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_internal.h"

#define LOSS_PROGRAM "loss"
#define LOSS_OPTIONS ""
#define LOSS_NIN KILN_LOSS_IN

/* A loss kernel's work-item sums about PART_TERMS terms before a second work-group pays;
 * at most GROUPS_PER_CU groups per compute unit and MAX_GROUPS in all (the final launch
 * adds the groups' partials with a single group). */
#define PART_TERMS 32
#define GROUPS_PER_CU 4
#define MAX_GROUPS 256

/* The strided launches' geometry as the kernels read it (one argument, by value;
 * cl_kernels/kiln_shared.h). */
typedef kiln_loss_geom loss_geom;

/* ---- autograd node states ----------------------------------------------------------- */

/* The elementwise losses and the penalties (their names and kernel stems: el_info). */
typedef enum el_kind { EL_MSE, EL_L1, EL_SL1, EL_BCE, EL_BCEL, EL_LSGAN, EL_PEN1, EL_PEN2 } el_kind;

/* An elementwise loss: in = {x[, t]}; weight and pos_weight are saved by the node. */
typedef struct el_state {
    el_kind kind;
    kiln_reduction reduction;
    kiln_tensor *weight, *pos_weight; /* saved tensors (NULL: absent) */
    double p;                         /* the loss's parameter (smooth_l1's beta, lsgan's target) */
    double gscale;                    /* the gradient's scale: the mean's 1/n, else 1 */
} el_state;

/* A penalty: in = the parameters, any number of them. */
typedef struct pen_state {
    el_kind kind; /* EL_PEN1 or EL_PEN2 */
} pen_state;

/* cross_entropy / nll: in = {logits}; the tensors below are saved by the node. */
typedef struct ce_state {
    bool nll;
    kiln_reduction reduction;
    int ignore_index;
    double label_smoothing;
    kiln_tensor *target; /* contiguous labels */
    kiln_tensor *weight; /* class weights (NULL: none) */
    kiln_tensor *lse;    /* each row's log-sum-exp (cross_entropy only) */
    kiln_tensor *den;    /* the mean's divisor, sum of the rows' weights (mean only) */
    kiln_tensor *wtot;   /* sum of the class weights (label smoothing with weights only) */
    kiln_tensor *logits; /* a contiguous copy of the logits when their view needed one */
} ce_state;

/* ---- checks ------------------------------------------------------------------------- */

static const char *shp(const kiln_tensor *t, char *buf, size_t cap) {
    return kiln__shape_str(t->ndim, t->shape, buf, cap);
}

static bool check_reduction(kiln_ctx *ctx, const char *op, kiln_reduction r) {
    if (r == KILN_MEAN || r == KILN_SUM || r == KILN_NONE) return true;
    kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: reduction %d is not KILN_MEAN, KILN_SUM or KILN_NONE", op, (int)r);
    return false;
}

/* want KILN_F32 takes any float dtype: halves are computed through f32 copies (el_loss and
 * ce_impl call kiln__half_fallback) */
static bool check_dtype(kiln_ctx *ctx, const char *op, const char *what, const kiln_tensor *t, kiln_dtype want) {
    if (t->dtype == want || (want == KILN_F32 && kiln_dtype_is_half(t->dtype))) return true;
    char sb[160];
    kiln__fail(ctx, KILN_ERR_DTYPE, "%s: %s %s has dtype %s; %s expected", op, what, shp(t, sb, sizeof sb),
               kiln_dtype_name(t->dtype), want == KILN_F32 ? "f32, f16 or bf16" : kiln_dtype_name(want));
    return false;
}

/* An optional tensor (NULL = absent) must belong to ctx. */
static bool check_optional(kiln_ctx *ctx, const char *op, const char *what, const kiln_tensor *t) {
    if (!t || t->ctx == ctx) return true;
    kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: %s belongs to another context", op, what);
    return false;
}

static bool same_shape(const kiln_tensor *a, const kiln_tensor *b) {
    return a->ndim == b->ndim && memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim) == 0;
}

/* t (what) broadcasts to x's shape without enlarging it: rank <= x's, each size 1 or x's. */
static bool check_bcast_to(kiln_ctx *ctx, const char *op, const char *what, const kiln_tensor *t,
                           const kiln_tensor *x) {
    bool ok = t->ndim <= x->ndim;
    for (int d = 0; ok && d < t->ndim; d++) {
        int64_t s = t->shape[d], xs = x->shape[d + x->ndim - t->ndim];
        ok = s == 1 || s == xs;
    }
    if (ok) return true;
    char sa[160], sb[160];
    kiln__fail(ctx, KILN_ERR_SHAPE, "%s: %s %s does not broadcast to input %s", op, what, shp(t, sa, sizeof sa),
               shp(x, sb, sizeof sb));
    return false;
}

static bool check_int_range(kiln_ctx *ctx, const char *op, const kiln_tensor *t, int64_t n) {
    if (n <= INT32_MAX - 65536) return true;
    char sb[160];
    kiln__fail(ctx, KILN_ERR_UNSUPPORTED, "%s: tensor %s has %lld elements (kernels index with 32-bit ints)", op,
               shp(t, sb, sizeof sb), (long long)n);
    return false;
}

/* ---- launch helpers ----------------------------------------------------------------- */

/* How work-items share a sum's terms: the CPU-style blocked split on CPUs, the GPU-style
 * interleaved one elsewhere; ctx->hooks.loss_layout (1 GPU-style, 2 CPU-style) forces one
 * so that one device's tests cover both. */
static bool cpu_layout(const kiln_ctx *ctx) {
    int mode = ctx->hooks.loss_layout;
    return mode ? mode == 2 : ctx->info.type == KILN_DEVICE_CPU;
}

/* Work-group size for a kernel with a local-memory tree (kiln__tree_wg). 0 with the error
 * set on failure. */
static size_t tree_wg(kiln_ctx *ctx, const char *kernel) {
    size_t wg = 0;
    return kiln__tree_wg(ctx, LOSS_PROGRAM, LOSS_OPTIONS, kernel, 0, &wg) == KILN_OK ? wg : 0;
}

/* Number of work-groups to sum n terms with groups of L work-items. */
static int64_t n_groups(const kiln_ctx *ctx, int64_t n, size_t L) {
    int64_t cu = ctx->info.compute_units ? (int64_t)ctx->info.compute_units : 1;
    int64_t per = (int64_t)L * PART_TERMS;
    int64_t g = (n + per - 1) / per;
    if (g > GROUPS_PER_CU * cu) g = GROUPS_PER_CU * cu;
    if (g > MAX_GROUPS) g = MAX_GROUPS;
    return g < 1 ? 1 : g;
}

/*
 * out[0] = scale * sum(a[0..n)) / (b ? sum(b[0..n)) : 1), and den[0] = sum(b) when den is
 * given: one work-group when n is small, else partial sums per group first. a, b
 * contiguous.
 */
static kiln_status reduce_sum(kiln_ctx *ctx, const char *op, kiln_tensor *a, kiln_tensor *b, int64_t n, float scale,
                              kiln_tensor *out, kiln_tensor *den) {
    cl_int blocked = cpu_layout(ctx), has_b = b != NULL;
    size_t L = tree_wg(ctx, "sum_final");
    if (!L) return ctx->err;
    kiln_tensor *pa = NULL, *pb = NULL;
    cl_mem amem = a->st->mem, bmem = b ? b->st->mem : a->st->mem;
    cl_int aoff = (cl_int)a->offset, boff = b ? (cl_int)b->offset : aoff, ni = (cl_int)n;
    kiln_status s = KILN_OK;
    int64_t G = n_groups(ctx, n, L);
    if (G > 1) {
        size_t Lp = tree_wg(ctx, "sum_part");
        if (!Lp) return ctx->err;
        G = n_groups(ctx, n, Lp);
        pa = kiln__tensor_new(ctx, op, KILN_F32, 1, &G);
        pb = b ? kiln__tensor_new(ctx, op, KILN_F32, 1, &G) : NULL;
        if (!pa || (b && !pb)) {
            kiln_tensor_free(pa);
            return ctx->err;
        }
        cl_int paoff = (cl_int)pa->offset, pboff = pb ? (cl_int)pb->offset : paoff;
        cl_mem pbmem = pb ? pb->st->mem : pa->st->mem;
        kiln__karg args[] = {KILN__ARG(amem),    KILN__ARG(aoff),        KILN__ARG(bmem),
                             KILN__ARG(boff),    KILN__ARG(ni),          KILN__ARG(has_b),
                             KILN__ARG(blocked), KILN__ARG(pa->st->mem), KILN__ARG(paoff),
                             KILN__ARG(pbmem),   KILN__ARG(pboff),       KILN__LOCAL(Lp * sizeof(cl_float))};
        s = kiln__launch(ctx, op, LOSS_PROGRAM, LOSS_OPTIONS, "sum_part", 12, args, (size_t)G * Lp, Lp);
        amem = pa->st->mem;
        aoff = paoff;
        bmem = pbmem;
        boff = pboff;
        ni = (cl_int)G;
    }
    if (s == KILN_OK) {
        cl_float sc = scale;
        cl_int ooff = (cl_int)out->offset, doff = den ? (cl_int)den->offset : ooff;
        cl_mem dmem = den ? den->st->mem : out->st->mem;
        kiln__karg args[] = {KILN__ARG(amem),
                             KILN__ARG(aoff),
                             KILN__ARG(bmem),
                             KILN__ARG(boff),
                             KILN__ARG(ni),
                             KILN__ARG(has_b),
                             KILN__ARG(blocked),
                             KILN__ARG(sc),
                             KILN__ARG(out->st->mem),
                             KILN__ARG(ooff),
                             KILN__ARG(dmem),
                             KILN__ARG(doff),
                             KILN__LOCAL(L * sizeof(cl_float))};
        s = kiln__launch(ctx, op, LOSS_PROGRAM, LOSS_OPTIONS, "sum_final", 13, args, L, L);
    }
    /* safe before the kernels ran: the queue is in order */
    kiln_tensor_free(pa);
    kiln_tensor_free(pb);
    return s;
}

/* ---- elementwise losses ------------------------------------------------------------- */

static const struct {
    const char *op;   /* public name, for errors */
    const char *stem; /* kernel name stem */
} el_info[] = {
    [EL_MSE] = {"kiln_mse_loss", "mse"},          [EL_L1] = {"kiln_l1_loss", "l1"},
    [EL_SL1] = {"kiln_smooth_l1_loss", "sl1"},    [EL_BCE] = {"kiln_bce_loss", "bce"},
    [EL_BCEL] = {"kiln_bce_with_logits", "bcel"}, [EL_LSGAN] = {"kiln_lsgan_loss", "lsgan"},
    [EL_PEN1] = {"kiln_l1_penalty", "pen1"},      [EL_PEN2] = {"kiln_l2_penalty", "pen2"},
};

/* The operands of one elementwise-loss launch and the values their arguments point to. */
typedef struct el_call {
    kiln_tensor *ts[LOSS_NIN]; /* x, t, w, pw; absent ones are x (never read) */
    cl_int off[LOSS_NIN];
    cl_int flags;
    cl_float p;
    cl_int n;
    bool contig;
    loss_geom g;
} el_call;

/* Fills g for operands broadcast to `shape`: size-1 dims dropped, contiguous runs merged. */
static void geom_build4(loss_geom *g, int ndim, const int64_t *shape, int64_t (*st)[KILN_MAX_DIMS]) {
    int64_t sh[KILN_MAX_DIMS], ms[LOSS_NIN][KILN_MAX_DIMS];
    int m = 0;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] == 1) continue;
        bool merge = m > 0;
        for (int j = 0; j < LOSS_NIN && merge; j++) merge = ms[j][m - 1] == st[j][d] * shape[d];
        if (merge) {
            sh[m - 1] *= shape[d];
            for (int j = 0; j < LOSS_NIN; j++) ms[j][m - 1] = st[j][d];
            continue;
        }
        sh[m] = shape[d];
        for (int j = 0; j < LOSS_NIN; j++) ms[j][m] = st[j][d];
        m++;
    }
    memset(g, 0, sizeof *g);
    g->ndim = m;
    for (int d = 0; d < m; d++) {
        g->shape[d] = (cl_int)sh[d];
        for (int j = 0; j < LOSS_NIN; j++) g->strides[j][d] = (cl_int)ms[j][d];
    }
}

static void el_setup(el_call *c, kiln_tensor *x, kiln_tensor *t, kiln_tensor *w, kiln_tensor *pw, float p) {
    kiln_tensor *in[LOSS_NIN] = {x, t, w, pw};
    int64_t n = kiln__numel(x->ndim, x->shape);
    c->flags = (w ? KILN_LOSS_W : 0) | (pw ? KILN_LOSS_PW : 0);
    c->p = p;
    c->n = (cl_int)n;
    c->contig = true;
    int64_t st[LOSS_NIN][KILN_MAX_DIMS];
    memset(st, 0, sizeof st);
    for (int j = 0; j < LOSS_NIN; j++) {
        kiln_tensor *v = in[j] ? in[j] : x;
        c->ts[j] = v;
        c->off[j] = (cl_int)v->offset;
        if (!in[j]) continue;
        c->contig = c->contig && kiln__is_contiguous(v) && kiln__numel(v->ndim, v->shape) == n;
        for (int d = 0; d < x->ndim; d++) {
            int vd = d - (x->ndim - v->ndim);
            st[j][d] = (vd >= 0 && v->shape[vd] != 1) ? v->strides[vd] : 0;
        }
    }
    if (!c->contig) geom_build4(&c->g, x->ndim, x->shape, st);
}

/* The leading arguments every elementwise-loss kernel takes. */
static size_t el_args(el_call *c, kiln__karg *args) {
    size_t na = 0;
    for (int j = 0; j < LOSS_NIN; j++) {
        args[na++] = KILN__ARG(c->ts[j]->st->mem);
        args[na++] = KILN__ARG(c->off[j]);
    }
    args[na++] = KILN__ARG(c->flags);
    args[na++] = KILN__ARG(c->p);
    return na;
}

static void el_kernel(char *buf, size_t cap, el_kind kind, const char *what, const el_call *c) {
    snprintf(buf, cap, "%s_%s_%s", el_info[kind].stem, what, c->contig ? "contig" : "strided");
}

/* sum(loss terms) * scale into out[0] (0-d), or per-group partials and a final sum. */
static kiln_status el_reduce(kiln_ctx *ctx, const char *op, el_kind kind, el_call *c, float scale, kiln_tensor *out) {
    char kernel[64];
    el_kernel(kernel, sizeof kernel, kind, "part", c);
    size_t L = tree_wg(ctx, kernel);
    if (!L) return ctx->err;
    int64_t G = n_groups(ctx, c->n, L);
    kiln_tensor *part = NULL;
    if (G > 1) {
        part = kiln__tensor_new(ctx, op, KILN_F32, 1, &G);
        if (!part) return ctx->err;
    }
    kiln_tensor *dst = part ? part : out;
    cl_int doff = (cl_int)dst->offset, blocked = cpu_layout(ctx);
    cl_float sc = part ? 1.0f : scale;
    kiln__karg args[20];
    size_t na = el_args(c, args);
    args[na++] = KILN__ARG(dst->st->mem);
    args[na++] = KILN__ARG(doff);
    args[na++] = KILN__ARG(c->n);
    args[na++] = KILN__ARG(blocked);
    args[na++] = KILN__ARG(sc);
    args[na++] = KILN__LOCAL(L * sizeof(cl_float));
    if (!c->contig) args[na++] = KILN__ARG(c->g);
    kiln_status s = kiln__launch(ctx, op, LOSS_PROGRAM, LOSS_OPTIONS, kernel, na, args, (size_t)G * L, L);
    if (s == KILN_OK && part) s = reduce_sum(ctx, op, part, NULL, G, scale, out, NULL);
    kiln_tensor_free(part);
    return s;
}

static kiln_status el_backward(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout) {
    const el_state *st = KILN__NODE_STATE(n, el_state);
    if (!st) return ctx->err;
    const char *op = el_info[st->kind].op;
    kiln_tensor *x = n->in[0], *t = n->nin > 1 ? n->in[1] : NULL;
    kiln_tensor *w = st->weight, *pw = st->pos_weight;
    bool want_x = kiln__input_needs_grad(n, 0), want_t = t && kiln__input_needs_grad(n, 1);
    if (!want_x && !want_t) return KILN_OK;
    kiln_tensor *gx = want_x ? kiln__tensor_new(ctx, op, KILN_F32, x->ndim, x->shape) : NULL;
    kiln_tensor *gt = want_t ? kiln__tensor_new(ctx, op, KILN_F32, t->ndim, t->shape) : NULL;
    kiln_status s = KILN_OK;
    if ((want_x && !gx) || (want_t && !gt)) s = ctx->err;
    el_call c;
    el_setup(&c, x, t, w, pw, (float)st->p);
    if (s == KILN_OK && c.n > 0) {
        c.flags |= (want_x ? KILN_LOSS_GX : 0) | (want_t ? KILN_LOSS_GT : 0);
        kiln_tensor *any = gx ? gx : gt;
        cl_int go = (cl_int)gout->offset, gscalar = st->reduction != KILN_NONE;
        cl_float gscale = (cl_float)st->gscale;
        cl_int gxo = (cl_int)(gx ? gx : any)->offset, gto = (cl_int)(gt ? gt : any)->offset;
        kiln__karg args[24];
        size_t na = el_args(&c, args);
        args[na++] = KILN__ARG(gout->st->mem);
        args[na++] = KILN__ARG(go);
        args[na++] = KILN__ARG(gscalar);
        args[na++] = KILN__ARG(gscale);
        args[na++] = KILN__ARG((gx ? gx : any)->st->mem);
        args[na++] = KILN__ARG(gxo);
        args[na++] = KILN__ARG((gt ? gt : any)->st->mem);
        args[na++] = KILN__ARG(gto);
        args[na++] = KILN__ARG(c.n);
        if (!c.contig) args[na++] = KILN__ARG(c.g);
        char kernel[64];
        el_kernel(kernel, sizeof kernel, st->kind, "bwd", &c);
        s = kiln__launch(ctx, op, LOSS_PROGRAM, LOSS_OPTIONS, kernel, na, args, (size_t)c.n, 0);
    }
    /* gx and gt are new: each becomes the gradient as it is where the slot is empty */
    if (s == KILN_OK && gx)
        s = kiln__accum_owned(ctx, n, 0, gx);
    else
        kiln_tensor_free(gx);
    if (s == KILN_OK && gt)
        s = kiln__accum_owned(ctx, n, 1, gt);
    else
        kiln_tensor_free(gt);
    return s;
}

/*
 * The elementwise loss `kind` of x against t (NULL for lsgan), weighted by w and pos_weight
 * pw (optional, broadcast to x's shape), with parameter p. The caller has validated the
 * operands; this checks nothing but sizes.
 */
typedef struct el_half_args {
    el_kind kind;
    float p;
    kiln_reduction r;
} el_half_args;

static kiln_tensor *el_loss(kiln_ctx *ctx, el_kind kind, kiln_tensor *x, kiln_tensor *t, kiln_tensor *w,
                            kiln_tensor *pw, float p, kiln_reduction r);

static kiln_tensor *el_loss_f32(kiln_ctx *ctx, kiln_tensor *const *in, const void *arg) {
    const el_half_args *a = arg;
    return el_loss(ctx, a->kind, in[0], in[1], in[2], in[3], a->p, a->r);
}

/* Half inputs (checked already): the loss of their f32 copies, as torch's half losses
 * (f32 under autocast, the inputs' dtype otherwise; kiln__half_fallback). */
static kiln_tensor *el_loss(kiln_ctx *ctx, el_kind kind, kiln_tensor *x, kiln_tensor *t, kiln_tensor *w,
                            kiln_tensor *pw, float p, kiln_reduction r) {
    kiln_tensor *hin[4] = {x, t, w, pw};
    if (kiln__any_half(4, hin)) return kiln__half_fallback(ctx, 4, hin, el_loss_f32, &(el_half_args){kind, p, r});
    const char *op = el_info[kind].op;
    int64_t n = kiln__numel(x->ndim, x->shape);
    if (!check_int_range(ctx, op, x, n)) return NULL;
    kiln_tensor *out = r == KILN_NONE ? kiln__tensor_new(ctx, op, KILN_F32, x->ndim, x->shape)
                                      : kiln__tensor_new(ctx, op, KILN_F32, 0, NULL);
    if (!out) return NULL;
    el_call c;
    el_setup(&c, x, t, w, pw, p);
    /* the mean of nothing is 0/0 = NaN, as torch's */
    float scale = r == KILN_MEAN ? (float)(1.0 / (double)n) : 1.0f;
    kiln_status s = KILN_OK;
    if (r == KILN_NONE) {
        if (n > 0) {
            cl_int oo = (cl_int)out->offset;
            kiln__karg args[16];
            size_t na = el_args(&c, args);
            args[na++] = KILN__ARG(out->st->mem);
            args[na++] = KILN__ARG(oo);
            args[na++] = KILN__ARG(c.n);
            if (!c.contig) args[na++] = KILN__ARG(c.g);
            char kernel[64];
            el_kernel(kernel, sizeof kernel, kind, "none", &c);
            s = kiln__launch(ctx, op, LOSS_PROGRAM, LOSS_OPTIONS, kernel, na, args, (size_t)n, 0);
        }
    } else {
        s = el_reduce(ctx, op, kind, &c, scale, out);
    }
    if (s != KILN_OK) {
        kiln_tensor_free(out);
        return NULL;
    }
    kiln_tensor *in[2] = {x, t};
    int nin = t ? 2 : 1;
    if (kiln__grad_wanted(ctx, nin, in)) {
        kiln__node *nd = kiln__node_new(ctx, op, out, nin, in, el_backward);
        el_state *st = nd ? KILN__NODE_STATE_NEW(nd, el_state) : NULL;
        if (!st || kiln__node_save(nd, w) != KILN_OK || kiln__node_save(nd, pw) != KILN_OK) {
            kiln_tensor_free(out);
            return NULL;
        }
        *st = (el_state){kind, r, w, pw, p, r == KILN_MEAN ? 1.0 / (double)n : 1.0};
    }
    return kiln__finish(ctx, op, out);
}

/* Validation shared by the losses of an input against a float target of the same shape. */
static bool check_pair(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *t, kiln_reduction r) {
    kiln_tensor *ts[2] = {x, t};
    if (!kiln__check_inputs(ctx, op, 2, ts)) return false;
    if (!check_dtype(ctx, op, "input", x, KILN_F32) || !check_dtype(ctx, op, "target", t, KILN_F32)) return false;
    if (!same_shape(x, t)) {
        char sa[160], sb[160];
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: input %s and target %s differ in shape", op, shp(x, sa, sizeof sa),
                   shp(t, sb, sizeof sb));
        return false;
    }
    return check_reduction(ctx, op, r);
}

static bool check_weight(kiln_ctx *ctx, const char *op, const char *what, kiln_tensor *w, kiln_tensor *x) {
    if (!w) return true;
    return check_optional(ctx, op, what, w) && check_dtype(ctx, op, what, w, KILN_F32) &&
           check_bcast_to(ctx, op, what, w, x);
}

kiln_tensor *kiln_mse_loss(kiln_ctx *ctx, kiln_tensor *input, kiln_tensor *target, kiln_reduction r) {
    if (!check_pair(ctx, "kiln_mse_loss", input, target, r)) return NULL;
    return el_loss(ctx, EL_MSE, input, target, NULL, NULL, 0.0f, r);
}

kiln_tensor *kiln_l1_loss(kiln_ctx *ctx, kiln_tensor *input, kiln_tensor *target, kiln_reduction r) {
    if (!check_pair(ctx, "kiln_l1_loss", input, target, r)) return NULL;
    return el_loss(ctx, EL_L1, input, target, NULL, NULL, 0.0f, r);
}

kiln_tensor *kiln_smooth_l1_loss(kiln_ctx *ctx, kiln_tensor *input, kiln_tensor *target, kiln_reduction r, float beta) {
    const char *op = "kiln_smooth_l1_loss";
    if (!check_pair(ctx, op, input, target, r)) return NULL;
    if (!(beta >= 0.0f) || isinf(beta)) {
        kiln__fail(ctx, KILN_ERR_RANGE, "%s: beta %g must be finite and >= 0", op, (double)beta);
        return NULL;
    }
    return el_loss(ctx, EL_SL1, input, target, NULL, NULL, beta, r);
}

kiln_tensor *kiln_bce_loss(kiln_ctx *ctx, kiln_tensor *p, kiln_tensor *target, kiln_tensor *weight, kiln_reduction r) {
    const char *op = "kiln_bce_loss";
    if (!check_pair(ctx, op, p, target, r)) return NULL;
    if (!check_weight(ctx, op, "weight", weight, p)) return NULL;
    return el_loss(ctx, EL_BCE, p, target, weight, NULL, 0.0f, r);
}

kiln_tensor *kiln_bce_with_logits(kiln_ctx *ctx, kiln_tensor *logits, kiln_tensor *target, kiln_tensor *weight,
                                  kiln_tensor *pos_weight, kiln_reduction r) {
    const char *op = "kiln_bce_with_logits";
    if (!check_pair(ctx, op, logits, target, r)) return NULL;
    if (!check_weight(ctx, op, "weight", weight, logits) || !check_weight(ctx, op, "pos_weight", pos_weight, logits))
        return NULL;
    return el_loss(ctx, EL_BCEL, logits, target, weight, pos_weight, 0.0f, r);
}

kiln_tensor *kiln_lsgan_loss(kiln_ctx *ctx, kiln_tensor *pred, float target_value, kiln_reduction r) {
    const char *op = "kiln_lsgan_loss";
    if (!kiln__check_inputs(ctx, op, 1, &pred)) return NULL;
    if (!check_dtype(ctx, op, "pred", pred, KILN_F32) || !check_reduction(ctx, op, r)) return NULL;
    return el_loss(ctx, EL_LSGAN, pred, NULL, NULL, NULL, target_value, r);
}

/* ---- penalties ---------------------------------------------------------------------- */

static kiln_status pen_backward(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout) {
    const pen_state *st = KILN__NODE_STATE(n, pen_state);
    if (!st) return ctx->err;
    const char *op = el_info[st->kind].op;
    for (int j = 0; j < n->nin; j++) {
        if (!kiln__input_needs_grad(n, j)) continue;
        kiln_tensor *x = n->in[j];
        kiln_tensor *gx = kiln__tensor_new(ctx, op, KILN_F32, x->ndim, x->shape);
        if (!gx) return ctx->err;
        el_call c;
        el_setup(&c, x, NULL, NULL, NULL, 0.0f);
        kiln_status s = KILN_OK;
        if (c.n > 0) {
            c.flags |= KILN_LOSS_GX;
            cl_int go = (cl_int)gout->offset, gscalar = 1, gxo = (cl_int)gx->offset;
            cl_float gscale = 1.0f;
            kiln__karg args[24];
            size_t na = el_args(&c, args);
            args[na++] = KILN__ARG(gout->st->mem);
            args[na++] = KILN__ARG(go);
            args[na++] = KILN__ARG(gscalar);
            args[na++] = KILN__ARG(gscale);
            args[na++] = KILN__ARG(gx->st->mem);
            args[na++] = KILN__ARG(gxo);
            args[na++] = KILN__ARG(gx->st->mem);
            args[na++] = KILN__ARG(gxo);
            args[na++] = KILN__ARG(c.n);
            if (!c.contig) args[na++] = KILN__ARG(c.g);
            char kernel[64];
            el_kernel(kernel, sizeof kernel, st->kind, "bwd", &c);
            s = kiln__launch(ctx, op, LOSS_PROGRAM, LOSS_OPTIONS, kernel, na, args, (size_t)c.n, 0);
        }
        if (s == KILN_OK)
            s = kiln__accum_owned(ctx, n, j, gx);
        else
            kiln_tensor_free(gx);
        if (s != KILN_OK) return s;
    }
    return KILN_OK;
}

/* One parameter's launch of a penalty. */
typedef struct pen_part {
    el_call c;
    size_t L;  /* work-group size */
    int64_t G; /* work-groups, each writing one partial sum */
    char kernel[64];
} pen_part;

/* The penalty of k (>= 1) tensors: per tensor its groups' partial sums into one buffer,
 * then one final sum (a single tensor small enough for one group writes the result
 * directly); one node over all of them. */
static kiln_tensor *pen_run(kiln_ctx *ctx, el_kind kind, int k, kiln_tensor *const *ps) {
    const char *op = el_info[kind].op;
    pen_part *pp = malloc(sizeof *pp * (size_t)k);
    if (!pp) {
        kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory for %d tensors", op, k);
        return NULL;
    }
    kiln_tensor *out = kiln__tensor_new(ctx, op, KILN_F32, 0, NULL);
    kiln_status s = out ? KILN_OK : ctx->err;
    int64_t total = 0;
    for (int j = 0; j < k && s == KILN_OK; j++) {
        el_setup(&pp[j].c, ps[j], NULL, NULL, NULL, 0.0f);
        el_kernel(pp[j].kernel, sizeof pp[j].kernel, kind, "part", &pp[j].c);
        pp[j].L = tree_wg(ctx, pp[j].kernel);
        if (!pp[j].L) {
            s = ctx->err;
            break;
        }
        pp[j].G = n_groups(ctx, pp[j].c.n, pp[j].L);
        total += pp[j].G;
    }
    kiln_tensor *part = NULL;
    if (s == KILN_OK && total > 1) {
        part = kiln__tensor_new(ctx, op, KILN_F32, 1, &total);
        if (!part) s = ctx->err;
    }
    kiln_tensor *dst = part ? part : out;
    cl_int blocked = cpu_layout(ctx);
    cl_float one = 1.0f;
    int64_t at = 0;
    for (int j = 0; j < k && s == KILN_OK; j++) {
        cl_int doff = (cl_int)(dst->offset + at);
        kiln__karg args[20];
        size_t na = el_args(&pp[j].c, args);
        args[na++] = KILN__ARG(dst->st->mem);
        args[na++] = KILN__ARG(doff);
        args[na++] = KILN__ARG(pp[j].c.n);
        args[na++] = KILN__ARG(blocked);
        args[na++] = KILN__ARG(one);
        args[na++] = KILN__LOCAL(pp[j].L * sizeof(cl_float));
        if (!pp[j].c.contig) args[na++] = KILN__ARG(pp[j].c.g);
        s = kiln__launch(ctx, op, LOSS_PROGRAM, LOSS_OPTIONS, pp[j].kernel, na, args, (size_t)pp[j].G * pp[j].L,
                         pp[j].L);
        at += pp[j].G;
    }
    if (s == KILN_OK && part) s = reduce_sum(ctx, op, part, NULL, total, 1.0f, out, NULL);
    kiln_tensor_free(part);
    free(pp);
    if (s == KILN_OK && kiln__grad_wanted(ctx, k, ps)) {
        kiln__node *nd = kiln__node_new(ctx, op, out, k, ps, pen_backward);
        pen_state *st = nd ? KILN__NODE_STATE_NEW(nd, pen_state) : NULL;
        if (st)
            st->kind = kind;
        else
            s = ctx->err;
    }
    if (s != KILN_OK) {
        kiln_tensor_free(out);
        return NULL;
    }
    return out;
}

#define PEN_CHUNK 32

static kiln_tensor *penalty_of(kiln_ctx *ctx, el_kind kind, int n, kiln_tensor *const *params);

/* sum over params of sum|p| (L1) or sum p^2 (L2), in f32; in the params' dtype when all
 * are halves of one dtype and autocast is off (as kiln__half_fallback's ops). */
static kiln_tensor *penalty(kiln_ctx *ctx, el_kind kind, int n, kiln_tensor *const *params) {
    kiln_tensor *out = penalty_of(ctx, kind, n, params);
    if (!out || n == 0 || kiln_dtype_is_half(ctx->autocast)) return out;
    kiln_dtype dt = params[0]->dtype;
    for (int j = 0; j < n; j++)
        if (!kiln_dtype_is_half(params[j]->dtype) || params[j]->dtype != dt) return out;
    kiln_tensor *h = kiln_to_dtype(ctx, out, dt);
    kiln_tensor_free(out);
    return h;
}

static kiln_tensor *penalty_of(kiln_ctx *ctx, el_kind kind, int n, kiln_tensor *const *params) {
    const char *op = el_info[kind].op;
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "%s: ctx is NULL", op), NULL;
    if (n < 0) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: n is %d", op, n);
        return NULL;
    }
    if (n > 0 && !params) {
        kiln__fail(ctx, KILN_ERR_NULL, "%s: params is NULL with n %d", op, n);
        return NULL;
    }
    if (!kiln__check_inputs(ctx, op, n, params)) return NULL;
    char what[32];
    for (int j = 0; j < n; j++) {
        snprintf(what, sizeof what, "params[%d]", j);
        if (!check_dtype(ctx, op, what, params[j], KILN_F32)) return NULL;
        if (!check_int_range(ctx, op, params[j], kiln__numel(params[j]->ndim, params[j]->shape))) return NULL;
    }
    if (n == 0) {
        kiln_tensor *z = kiln__tensor_new(ctx, op, KILN_F32, 0, NULL);
        if (z && kiln_fill(z, 0.0f) != KILN_OK) {
            kiln_tensor_free(z);
            return NULL;
        }
        return kiln__finish(ctx, op, z);
    }
    if (!kiln__any_half(n, params)) return kiln__finish(ctx, op, pen_run(ctx, kind, n, params));
    /* half parameters: through f32 copies (differentiable conversions), PEN_CHUNK at a time
     * (the chunks' penalties added in f32) */
    if (n > PEN_CHUNK) {
        kiln_tensor *a = penalty_of(ctx, kind, PEN_CHUNK, params);
        kiln_tensor *b = a ? penalty_of(ctx, kind, n - PEN_CHUNK, params + PEN_CHUNK) : NULL;
        kiln_tensor *sum = b ? kiln_add(ctx, a, b) : NULL;
        kiln_tensor_free(a);
        kiln_tensor_free(b);
        return kiln__finish(ctx, op, sum);
    }
    kiln_tensor *f[PEN_CHUNK], *out = NULL;
    int j = 0;
    for (; j < n; j++)
        if (!(f[j] = kiln_dtype_is_half(params[j]->dtype) ? kiln_to_dtype(ctx, params[j], KILN_F32) : params[j])) break;
    if (j == n) out = pen_run(ctx, kind, n, f);
    kiln__half_release(j, params, f);
    return kiln__finish(ctx, op, out);
}

kiln_tensor *kiln_l1_penalty(kiln_ctx *ctx, int n, kiln_tensor *const *params) {
    return penalty(ctx, EL_PEN1, n, params);
}

kiln_tensor *kiln_l2_penalty(kiln_ctx *ctx, int n, kiln_tensor *const *params) {
    return penalty(ctx, EL_PEN2, n, params);
}

/* ---- cross-entropy and nll ---------------------------------------------------------- */

/* Logits [N, C, S] as the kernels read them: S is the product of the dims after the class
 * dim; a [C] tensor is one row. */
typedef struct ce_shape {
    cl_int N, C, S, sN, sC, sS;
} ce_shape;

/* False when the trailing dims cannot be read with one stride (then a copy is needed). */
static bool ce_shape_of(const kiln_tensor *x, ce_shape *L) {
    if (x->ndim == 1) {
        *L = (ce_shape){1, (cl_int)x->shape[0], 1, 0, (cl_int)x->strides[0], 0};
        return true;
    }
    int64_t S = 1, sS = 0, prev = -1;
    for (int d = 2; d < x->ndim; d++) {
        S *= x->shape[d];
        if (x->shape[d] == 1) continue;
        if (prev >= 0 && x->strides[prev] != x->strides[d] * x->shape[d]) return false;
        prev = d;
        sS = x->strides[d];
    }
    *L = (ce_shape){(cl_int)x->shape[0],   (cl_int)x->shape[1],   (cl_int)S,
                    (cl_int)x->strides[0], (cl_int)x->strides[1], (cl_int)sS};
    return true;
}

static kiln_status ce_backward(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout) {
    if (!kiln__input_needs_grad(n, 0)) return KILN_OK;
    const ce_state *st = KILN__NODE_STATE(n, ce_state);
    if (!st) return ctx->err;
    bool nll = st->nll;
    const char *op = nll ? "kiln_nll_loss" : "kiln_cross_entropy";
    kiln_tensor *x0 = n->in[0];
    kiln_tensor *x = st->logits ? st->logits : x0;
    kiln_tensor *y = st->target, *w = st->weight, *lse = st->lse, *den = st->den, *wt = st->wtot;
    ce_shape L;
    ce_shape_of(x, &L);
    int64_t nel = kiln__numel(x0->ndim, x0->shape);
    kiln_tensor *gx = kiln__tensor_new(ctx, op, KILN_F32, x0->ndim, x0->shape);
    if (!gx) return ctx->err;
    kiln_status s = KILN_OK;
    if (nel > 0) {
        cl_int xo = (cl_int)x->offset, yo = (cl_int)y->offset, wo = w ? (cl_int)w->offset : 0;
        cl_int wst = w ? (cl_int)w->strides[0] : 0, ignore = (cl_int)st->ignore_index;
        cl_int flags = (w ? KILN_ROWS_BWD_W : 0) | (st->reduction != KILN_NONE ? KILN_ROWS_BWD_SCALAR : 0) |
                       (den ? KILN_ROWS_BWD_DEN : 0) | (wt ? KILN_ROWS_BWD_WT : 0);
        cl_int go = (cl_int)gout->offset, deno = den ? (cl_int)den->offset : 0, gxo = (cl_int)gx->offset;
        cl_int ni = (cl_int)nel;
        cl_mem wmem = w ? w->st->mem : x->st->mem, dmem = den ? den->st->mem : gout->st->mem;
        if (nll) {
            kiln__karg args[] = {KILN__ARG(L.S),        KILN__ARG(L.C),
                                 KILN__ARG(y->st->mem), KILN__ARG(yo),
                                 KILN__ARG(wmem),       KILN__ARG(wo),
                                 KILN__ARG(wst),        KILN__ARG(ignore),
                                 KILN__ARG(flags),      KILN__ARG(gout->st->mem),
                                 KILN__ARG(go),         KILN__ARG(dmem),
                                 KILN__ARG(deno),       KILN__ARG(gx->st->mem),
                                 KILN__ARG(gxo),        KILN__ARG(ni)};
            s = kiln__launch(ctx, op, LOSS_PROGRAM, LOSS_OPTIONS, "nll_bwd", 16, args, (size_t)nel, 0);
        } else {
            cl_float ls = (cl_float)st->label_smoothing;
            cl_int lo = (cl_int)lse->offset, wto = wt ? (cl_int)wt->offset : 0;
            cl_mem wtmem = wt ? wt->st->mem : gout->st->mem;
            kiln__karg args[] = {KILN__ARG(x->st->mem),   KILN__ARG(xo),         KILN__ARG(L.sN),
                                 KILN__ARG(L.sC),         KILN__ARG(L.sS),       KILN__ARG(L.S),
                                 KILN__ARG(L.C),          KILN__ARG(y->st->mem), KILN__ARG(yo),
                                 KILN__ARG(wmem),         KILN__ARG(wo),         KILN__ARG(wst),
                                 KILN__ARG(ignore),       KILN__ARG(ls),         KILN__ARG(flags),
                                 KILN__ARG(lse->st->mem), KILN__ARG(lo),         KILN__ARG(gout->st->mem),
                                 KILN__ARG(go),           KILN__ARG(dmem),       KILN__ARG(deno),
                                 KILN__ARG(wtmem),        KILN__ARG(wto),        KILN__ARG(gx->st->mem),
                                 KILN__ARG(gxo),          KILN__ARG(ni)};
            s = kiln__launch(ctx, op, LOSS_PROGRAM, LOSS_OPTIONS, "ce_bwd", 26, args, (size_t)nel, 0);
        }
    }
    if (s == KILN_OK)
        s = kiln__accum_owned(ctx, n, 0, gx);
    else
        kiln_tensor_free(gx);
    return s;
}

/* Registers the labels' check on the device (the rows kernel records the first label
 * outside [0, C) that is not ignore_index; kiln_to_host or kiln_sync report it). */
static bool label_site(kiln_ctx *ctx, const char *op, kiln_tensor *target, int64_t C, int ignore, cl_mem *ebuf,
                       cl_int *site) {
    char text[256], sb[160];
    snprintf(text, sizeof text,
             "of target %s is out of range [0, %lld) for C = %lld classes (and is not ignore_index %d)",
             shp(target, sb, sizeof sb), (long long)C, (long long)C, ignore);
    return kiln__deverr_register(ctx, op, "label", target->ndim, target->shape, text, ebuf, site) == KILN_OK;
}

typedef struct ce_args {
    const char *op;
    bool nll;
    int ignore_index;
    float ls;
    kiln_reduction r;
} ce_args;

static kiln_tensor *ce_impl(kiln_ctx *ctx, const char *op, bool nll, kiln_tensor *logits, kiln_tensor *target,
                            kiln_tensor *weight, int ignore_index, float ls, kiln_reduction r);

static kiln_tensor *ce_f32(kiln_ctx *ctx, kiln_tensor *const *in, const void *arg) {
    const ce_args *a = arg;
    return ce_impl(ctx, a->op, a->nll, in[0], in[1], in[2], a->ignore_index, a->ls, a->r);
}

static kiln_tensor *ce_impl(kiln_ctx *ctx, const char *op, bool nll, kiln_tensor *logits, kiln_tensor *target,
                            kiln_tensor *weight, int ignore_index, float ls, kiln_reduction r) {
    kiln_tensor *ts[2] = {logits, target};
    if (!kiln__check_inputs(ctx, op, 2, ts)) return NULL;
    kiln_tensor *logitsf = kiln__autocast_f32(ctx, logits); /* autocast: an f32 op (kiln/amp.h) */
    if (logitsf != logits) {
        kiln_tensor *res = ce_impl(ctx, op, nll, logitsf, target, weight, ignore_index, ls, r);
        kiln_tensor_free(logitsf);
        return res;
    }
    const char *xname = nll ? "logp" : "logits";
    if (!check_dtype(ctx, op, xname, logits, KILN_F32) || !check_dtype(ctx, op, "target", target, KILN_I32) ||
        !check_reduction(ctx, op, r) || !check_optional(ctx, op, "weight", weight))
        return NULL;
    char sa[160], sb[160], sc[160];
    if (logits->ndim < 1) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: %s %s needs a class dim ([N, C], [N, C, d1, ...] or [C])", op, xname,
                   shp(logits, sa, sizeof sa));
        return NULL;
    }
    /* the target is the logits' shape without the class dim */
    int64_t tshape[KILN_MAX_DIMS];
    int tnd = 0;
    for (int d = 0; d < logits->ndim; d++)
        if (d != (logits->ndim == 1 ? 0 : 1)) tshape[tnd++] = logits->shape[d];
    if (target->ndim != tnd || memcmp(target->shape, tshape, sizeof(int64_t) * (size_t)tnd) != 0) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: target %s does not match %s %s (expected target %s)", op,
                   shp(target, sa, sizeof sa), xname, shp(logits, sb, sizeof sb),
                   kiln__shape_str(tnd, tshape, sc, sizeof sc));
        return NULL;
    }
    int64_t C = logits->shape[logits->ndim == 1 ? 0 : 1];
    if (weight) {
        if (!check_dtype(ctx, op, "weight", weight, KILN_F32)) return NULL;
        if (weight->ndim != 1 || weight->shape[0] != C) {
            kiln__fail(ctx, KILN_ERR_SHAPE, "%s: weight %s is not [%lld] (one per class of %s %s)", op,
                       shp(weight, sa, sizeof sa), (long long)C, xname, shp(logits, sb, sizeof sb));
            return NULL;
        }
    }
    if (!nll && !(ls >= 0.0f && ls <= 1.0f)) {
        kiln__fail(ctx, KILN_ERR_RANGE, "%s: label_smoothing %g is not in [0, 1]", op, (double)ls);
        return NULL;
    }
    if (!check_int_range(ctx, op, logits, kiln__numel(logits->ndim, logits->shape))) return NULL;
    kiln_tensor *in[3] = {logits, target, weight};
    if (kiln__any_half(3, in)) /* a half logits or weight: through f32 copies, as el_loss */
        return kiln__half_fallback(ctx, 3, in, ce_f32, &(ce_args){op, nll, ignore_index, ls, r});
    cl_mem ebuf;
    cl_int site;
    if (!label_site(ctx, op, target, C, ignore_index, &ebuf, &site)) return NULL;

    /* operands as the kernels read them */
    kiln_tensor *y = target, *x = logits, *ycopy = NULL, *xcopy = NULL;
    ce_shape L;
    if (!kiln__is_contiguous(target)) {
        y = ycopy = kiln__copy_contiguous(ctx, op, target);
        if (!y) return NULL;
    }
    if (!ce_shape_of(logits, &L)) {
        x = xcopy = kiln__copy_contiguous(ctx, op, logits);
        if (!x) {
            kiln_tensor_free(ycopy);
            return NULL;
        }
        ce_shape_of(x, &L);
    }
    int64_t rows = (int64_t)L.N * L.S;
    bool grad = kiln__grad_wanted(ctx, 1, &logits);
    kiln_tensor *out = NULL, *rl = NULL, *rw = NULL, *lse = NULL, *den = NULL, *wt = NULL;
    kiln_status s = KILN_OK;
    out = kiln__tensor_new(ctx, op, KILN_F32, r == KILN_NONE ? tnd : 0, tshape);
    if (!out) s = ctx->err;
    if (s == KILN_OK && r != KILN_NONE) {
        rl = kiln__tensor_new(ctx, op, KILN_F32, 1, &rows);
        if (!rl) s = ctx->err;
    }
    if (s == KILN_OK && r == KILN_MEAN) {
        rw = kiln__tensor_new(ctx, op, KILN_F32, 1, &rows);
        den = kiln__tensor_new(ctx, op, KILN_F32, 0, NULL);
        if (!rw || !den) s = ctx->err;
    }
    if (s == KILN_OK && grad && !nll) {
        lse = kiln__tensor_new(ctx, op, KILN_F32, 1, &rows);
        if (!lse) s = ctx->err;
    }
    if (s == KILN_OK && grad && !nll && ls > 0.0f && weight) {
        /* the summed class weights, for the smoothing term of the backward */
        bool prev = kiln_ctx_set_grad_enabled(ctx, false);
        wt = kiln_sum(ctx, weight, 0, NULL, false);
        kiln_ctx_set_grad_enabled(ctx, prev);
        if (!wt) s = ctx->err;
    }
    if (s == KILN_OK && rows > 0) {
        kiln_tensor *lt = rl ? rl : out;
        cl_int xo = (cl_int)x->offset, yo = (cl_int)y->offset, wo = weight ? (cl_int)weight->offset : 0;
        cl_int wst = weight ? (cl_int)weight->strides[0] : 0, ignore = ignore_index, nr = (cl_int)rows;
        cl_int flags = (weight ? KILN_ROWS_W : 0) | (rw ? KILN_ROWS_RW : 0) | (lse ? KILN_ROWS_LSE : 0);
        cl_int lo = (cl_int)lt->offset, rwo = rw ? (cl_int)rw->offset : 0, lseo = lse ? (cl_int)lse->offset : 0;
        cl_mem wmem = weight ? weight->st->mem : x->st->mem, rwmem = rw ? rw->st->mem : lt->st->mem;
        cl_mem lsemem = lse ? lse->st->mem : lt->st->mem;
        if (nll) {
            kiln__karg args[] = {KILN__ARG(x->st->mem), KILN__ARG(xo),    KILN__ARG(L.sN), KILN__ARG(L.sC),
                                 KILN__ARG(L.sS),       KILN__ARG(L.S),   KILN__ARG(L.C),  KILN__ARG(y->st->mem),
                                 KILN__ARG(yo),         KILN__ARG(wmem),  KILN__ARG(wo),   KILN__ARG(wst),
                                 KILN__ARG(ignore),     KILN__ARG(flags), KILN__ARG(nr),   KILN__ARG(lt->st->mem),
                                 KILN__ARG(lo),         KILN__ARG(rwmem), KILN__ARG(rwo),  KILN__ARG(ebuf),
                                 KILN__ARG(site)};
            s = kiln__launch(ctx, op, LOSS_PROGRAM, LOSS_OPTIONS, "nll_rows", 21, args, (size_t)rows, 0);
        } else {
            cl_float lsv = ls;
            kiln__karg args[] = {KILN__ARG(x->st->mem),  KILN__ARG(xo),   KILN__ARG(L.sN),  KILN__ARG(L.sC),
                                 KILN__ARG(L.sS),        KILN__ARG(L.S),  KILN__ARG(L.C),   KILN__ARG(y->st->mem),
                                 KILN__ARG(yo),          KILN__ARG(wmem), KILN__ARG(wo),    KILN__ARG(wst),
                                 KILN__ARG(ignore),      KILN__ARG(lsv),  KILN__ARG(flags), KILN__ARG(nr),
                                 KILN__ARG(lt->st->mem), KILN__ARG(lo),   KILN__ARG(rwmem), KILN__ARG(rwo),
                                 KILN__ARG(lsemem),      KILN__ARG(lseo), KILN__ARG(ebuf),  KILN__ARG(site)};
            s = kiln__launch(ctx, op, LOSS_PROGRAM, LOSS_OPTIONS, "ce_rows", 24, args, (size_t)rows, 0);
        }
    }
    /* mean: sum(row losses) / sum(row weights); sum: sum(row losses) */
    if (s == KILN_OK && r != KILN_NONE) s = reduce_sum(ctx, op, rl, rw, rows, 1.0f, out, den);
    kiln_tensor_free(rl);
    kiln_tensor_free(rw);
    if (s == KILN_OK && grad) {
        kiln__node *nd = kiln__node_new(ctx, op, out, 1, &logits, ce_backward);
        ce_state *st = nd ? KILN__NODE_STATE_NEW(nd, ce_state) : NULL;
        if (!st)
            s = ctx->err;
        else {
            *st = (ce_state){nll, r, ignore_index, nll ? 0.0 : ls, y, weight, lse, den, wt, xcopy};
            kiln_tensor *sv[] = {y, weight, lse, den, wt, xcopy};
            for (int k = 0; k < 6 && s == KILN_OK; k++) s = kiln__node_save(nd, sv[k]);
        }
    }
    /* our handles; the node holds what it saved */
    kiln_tensor_free(ycopy);
    kiln_tensor_free(xcopy);
    kiln_tensor_free(lse);
    kiln_tensor_free(den);
    kiln_tensor_free(wt);
    if (s != KILN_OK) {
        kiln_tensor_free(out);
        return NULL;
    }
    return kiln__finish(ctx, op, out);
}

kiln_tensor *kiln_cross_entropy(kiln_ctx *ctx, kiln_tensor *logits, kiln_tensor *target, kiln_reduction r) {
    return ce_impl(ctx, "kiln_cross_entropy", false, logits, target, NULL, -100, 0.0f, r);
}

kiln_tensor *kiln_cross_entropy_ex(kiln_ctx *ctx, kiln_tensor *logits, kiln_tensor *target, kiln_tensor *weight,
                                   int ignore_index, float label_smoothing, kiln_reduction r) {
    return ce_impl(ctx, "kiln_cross_entropy_ex", false, logits, target, weight, ignore_index, label_smoothing, r);
}

kiln_tensor *kiln_nll_loss(kiln_ctx *ctx, kiln_tensor *logp, kiln_tensor *target, kiln_tensor *weight, int ignore_index,
                           kiln_reduction r) {
    return ce_impl(ctx, "kiln_nll_loss", true, logp, target, weight, ignore_index, 0.0f, r);
}

/* src/ops/norm.c - batch norm, layer norm, dropout and embedding, with their backward
 * rules (kernels in cl_kernels/norm.cl).
 *
 * Batch norm and layer norm run one kernel per direction over a "group" layout (norm.cl):
 * a group is a channel of batch norm or a row of layer norm, handled by one work-item
 * (many short groups) or one work-group (rows_layout picks). The forward computes the
 * group's mean and biased variance in two passes and writes the output in a third; it
 * keeps the mean and 1/sqrt(var + eps) of every group for the backward, whose kernel
 * computes the group sums of dy and dy * xhat and then dx in one launch (layer norm's
 * weight and bias gradients are column sums, a second kernel). Running statistics of
 * batch norm are updated by the forward kernel, in place and outside autograd (buffers,
 * as in torch); eval mode normalises with them and saves a copy for the backward.
 *
 * Dropout draws its mask from the context's Philox stream exactly as kiln_rand_uniform
 * does (element i of a call uses counter rng_counter + i and keeps the element when its
 * uniform u >= p). When a gradient is wanted the forward also writes the mask as bits (one
 * I32 word per 32 elements, n / 8 bytes) into the node, so the backward is one multiply
 * per element instead of ten Philox rounds, a small fraction of the cost of drawing the
 * mask again; a work-item per mask word runs a plain loop that POCL vectorises, unlike a
 * work-item per element calling a Philox function (README.md, "Speed", has the figures).
 *
 * Embedding checks its indices in the forward kernel (a deferred error, functional.h); when
 * the weight wants a gradient it also builds the positions of each weight row's indices
 * (CSR), so the backward sums rows without atomics, deterministically: on the device for
 * the usual sizes, else on the host (which reads the indices back).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_internal.h"

#define NORM_PROGRAM "norm"
#define NORM_OPTIONS ""
/* Largest work-group per batch-norm channel / layer-norm row. On CPUs POCL runs a group's
 * work-items in one loop on one core, so a smaller group wastes less on short rows. */
#define NORM_MAX_WG_GPU 256
#define NORM_MAX_WG_CPU 64

/* ---- helpers ---------------------------------------------------------------------------- */

/*
 * Launch shape of the group kernels: a work-item per group ("rows") when there are enough
 * groups to fill the device and each is short, else a work-group per group. On CPUs POCL
 * runs a work-group's items in one loop on one core, so rows pay off as soon as each core
 * has NORM_ROWS_PER_CU groups; GPUs need many more work-items. Depends only on the shapes
 * and the device, so results are deterministic.
 */
#define NORM_ROWS_PER_CU 16
#define NORM_ROWS_MAX_M_CPU 4096
#define NORM_ROWS_MIN_G_GPU 4096
#define NORM_ROWS_MAX_M_GPU 256

static bool rows_layout(const kiln_ctx *ctx, int64_t G, int64_t M) {
    /* ctx->hooks.norm_layout 1 forces rows, 2 (and 3) a work-group per group (tests cover all) */
    if (ctx->hooks.norm_layout) return ctx->hooks.norm_layout == 1;
    int64_t cu = ctx->info.compute_units ? (int64_t)ctx->info.compute_units : 1;
    if (ctx->info.type == KILN_DEVICE_CPU) return G >= NORM_ROWS_PER_CU * cu && M <= NORM_ROWS_MAX_M_CPU;
    return G >= NORM_ROWS_MIN_G_GPU && M <= NORM_ROWS_MAX_M_GPU;
}

/* The work-group size for the group kernel `kernel` (kiln__tree_wg, capped per device
 * type). */
static kiln_status group_wg(kiln_ctx *ctx, const char *kernel, size_t *wg) {
    size_t cap = ctx->info.type == KILN_DEVICE_CPU ? NORM_MAX_WG_CPU : NORM_MAX_WG_GPU;
    return kiln__tree_wg(ctx, NORM_PROGRAM, NORM_OPTIONS, kernel, cap, wg);
}

#define NORM_MAX_ARGS 32

/* Launches <stem>_rows (G prepended to args) or <stem>_groups (nlocal floats of local
 * memory per work-item appended when nlocal > 0) over G groups of M elements. */
static kiln_status norm_launch(kiln_ctx *ctx, const char *op, const char *stem, size_t nargs, const kiln__karg *args,
                               cl_int G, int64_t M, size_t nlocal) {
    char kernel[64];
    kiln__karg a[NORM_MAX_ARGS + 2];
    if (G <= 0) return KILN_OK;
    if (rows_layout(ctx, G, M)) {
        snprintf(kernel, sizeof kernel, "%s_rows", stem);
        a[0] = KILN__ARG(G);
        memcpy(a + 1, args, sizeof *args * nargs);
        return kiln__launch(ctx, op, NORM_PROGRAM, NORM_OPTIONS, kernel, nargs + 1, a, (size_t)G, 0);
    }
    snprintf(kernel, sizeof kernel, "%s_groups", stem);
    size_t L = 1;
    kiln_status s = group_wg(ctx, kernel, &L);
    if (s != KILN_OK) return s;
    memcpy(a, args, sizeof *args * nargs);
    if (nlocal) a[nargs++] = KILN__LOCAL(nlocal * L * sizeof(cl_float));
    return kiln__launch(ctx, op, NORM_PROGRAM, NORM_OPTIONS, kernel, nargs, a, (size_t)G * L, L);
}

/* Geometry of a group launch (norm.cl): G groups of N x S elements. */
typedef struct norm_geom {
    cl_int G, N, S, gstride, nstride;
} norm_geom;

/* Layer norm's float8 row kernels (norm.cl, ln_*_vec) on CPUs, where the rows layout
 * applies; ctx->hooks.norm_layout 4 forces them, 1 to 3 the group kernels. */
static bool ln_vec(const kiln_ctx *ctx, const norm_geom *g, int wmode) {
    if (wmode != KILN_NORM_W_ELEM || g->N != 1 || g->gstride != g->S) return false;
    if (ctx->hooks.norm_layout) return ctx->hooks.norm_layout == 4;
    return ctx->info.type == KILN_DEVICE_CPU && rows_layout(ctx, g->G, g->S);
}

/*
 * Batch norm's plane kernels (norm.cl, bn_*_planes): a work-group per channel whose
 * work-items read whole plane segments with vector loads. On CPUs they replace the group
 * kernels for batch norm once planes hold BN_PLANES_MIN_S floats; ctx->hooks.norm_layout
 * 3 forces them (1 and 2 force the group kernels). An empty batch keeps the group kernels,
 * which still write the statistics the backward reads.
 */
#define BN_PLANES_MIN_S 16
#define BN_PLANES_MAX_WG 4
#define BN_SEG 1024 /* elements per unit of work, as norm.cl's BN_SEG */

static bool bn_planes(const kiln_ctx *ctx, const norm_geom *g) {
    if (g->N <= 0 || g->S <= 0) return false;
    if (ctx->hooks.norm_layout) return ctx->hooks.norm_layout == 3;
    return ctx->info.type == KILN_DEVICE_CPU && g->S >= BN_PLANES_MIN_S;
}

/* Launches the plane kernel `kernel` with the group kernel's nargs arguments, whose
 * (N, S, gstride, nstride, wmode) at index `at` become (N, C, S), then the nextra (at most
 * 8) arguments of the plane kernels alone (the fused ReLU's): a work-group per channel
 * with nlocal floats of local memory per work-item, or (nlocal 0: the eval forward) a
 * work-item per plane segment. */
static kiln_status bn_planes_launch(kiln_ctx *ctx, const char *op, const char *kernel, size_t nargs,
                                    const kiln__karg *args, size_t at, const norm_geom *g, size_t nlocal, size_t nextra,
                                    const kiln__karg *extra) {
    kiln__karg a[NORM_MAX_ARGS + 8];
    size_t na = 0;
    for (size_t i = 0; i < at; i++) a[na++] = args[i];
    a[na++] = KILN__ARG(g->N);
    a[na++] = KILN__ARG(g->G);
    a[na++] = KILN__ARG(g->S);
    for (size_t i = at + 5; i < nargs; i++) a[na++] = args[i];
    for (size_t i = 0; i < nextra; i++) a[na++] = extra[i];
    if (nlocal == 0) {
        size_t units = (size_t)g->N * (size_t)g->G * (size_t)((g->S + BN_SEG - 1) / BN_SEG);
        return kiln__launch(ctx, op, NORM_PROGRAM, NORM_OPTIONS, kernel, na, a, units, 0);
    }
    size_t L = 1;
    kiln_status s = kiln__tree_wg(ctx, NORM_PROGRAM, NORM_OPTIONS, kernel, BN_PLANES_MAX_WG, &L);
    if (s != KILN_OK) return s;
    a[na++] = KILN__LOCAL(nlocal * L * sizeof(cl_float));
    return kiln__launch(ctx, op, NORM_PROGRAM, NORM_OPTIONS, kernel, na, a, (size_t)g->G * L, L);
}

static bool check_f32(kiln_ctx *ctx, const char *op, const char *what, const kiln_tensor *t) {
    if (t->dtype == KILN_F32) return true;
    char sb[160];
    kiln__fail(ctx, KILN_ERR_DTYPE, "%s: %s %s has dtype %s; only f32 is supported", op, what,
               kiln__shape_str(t->ndim, t->shape, sb, sizeof sb), kiln_dtype_name(t->dtype));
    return false;
}

/* t itself when contiguous, else a contiguous copy (the caller frees it when != t). */
static kiln_tensor *contig(kiln_ctx *ctx, const char *op, kiln_tensor *t) {
    return kiln__is_contiguous(t) ? t : kiln__copy_contiguous(ctx, op, t);
}

/* Frees t when it is a temporary copy of orig. */
static void free_copy(kiln_tensor *t, kiln_tensor *orig) {
    if (t && t != orig) kiln_tensor_free(t);
}

/* ---- autograd node states --------------------------------------------------------------- */

/* Batch norm and layer norm: in[0] x, in[1] weight, in[2] bias (either may be NULL);
 * saved[0] contiguous x, saved[1] mean, saved[2] rstd (one per group). */
typedef struct norm_state {
    norm_geom g;
    int wmode;  /* KILN_NORM_W_* (cl_kernels/kiln_shared.h) */
    bool train; /* the statistics were computed from x (they depend on it) */
    bool act;   /* kiln__batch_norm_relu: relu(batch norm + in[3]) (in[3] may be NULL) */
} norm_state;

/* Dropout: in[0] x; saved[0] the forward's bit mask. */
typedef struct dropout_state {
    float scale; /* 1 / (1 - p), 0 for p = 1 */
} dropout_state;

/* ---- batch norm and layer norm: shared forward and backward -------------------------- */

/* Hands the new gradient *t to input i's slot (kiln__accum_owned) and gives it up either way. */
static kiln_status give(kiln_ctx *ctx, kiln__node *n, int i, kiln_tensor **t) {
    kiln_status s = kiln__accum_owned(ctx, n, i, *t);
    *t = NULL;
    return s;
}

static kiln_status norm_backward_fn(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout) {
    const char *op = n->op;
    const norm_state *st = KILN__NODE_STATE(n, norm_state);
    if (!st) return ctx->err;
    kiln_tensor *x = n->saved[0], *mean = n->saved[1], *rstd = n->saved[2], *w = n->in[1];
    norm_geom g = st->g;
    cl_int wmode = st->wmode, train = st->train;
    bool need_x = kiln__input_needs_grad(n, 0), need_w = kiln__input_needs_grad(n, 1),
         need_b = kiln__input_needs_grad(n, 2);
    /* the fused op's residual gets relu's input gradient */
    bool need_r = st->act && n->nin > 3 && kiln__input_needs_grad(n, 3);
    kiln_status s = KILN_OK;
    kiln_tensor *dx = NULL, *suma = NULL, *sumb = NULL, *wc = NULL, *dw = NULL, *db = NULL, *dr = NULL;

    wc = w ? contig(ctx, op, w) : NULL;
    if (w && !wc) return ctx->err;
    /* the kernel always computes the per-group sums; for batch norm they are the weight
     * and bias gradients */
    cl_int sums = wmode != KILN_NORM_W_ELEM && (need_w || need_b);
    if (need_x) {
        dx = kiln__tensor_new(ctx, op, KILN_F32, x->ndim, x->shape);
        if (!dx) goto done;
    }
    if (sums) {
        int64_t G = g.G;
        suma = kiln__tensor_new(ctx, op, KILN_F32, 1, &G);
        sumb = suma ? kiln__tensor_new(ctx, op, KILN_F32, 1, &G) : NULL;
        if (!sumb) goto done;
    }
    if (need_r && !(dr = kiln__tensor_new(ctx, op, KILN_F32, x->ndim, x->shape))) goto done;
    if (need_x || sums || need_r) {
        cl_mem any = x->st->mem;
        cl_int xoff = (cl_int)x->offset, dyoff = (cl_int)gout->offset, dxoff = dx ? (cl_int)dx->offset : 0;
        cl_int has_w = w != NULL, woff = wc ? (cl_int)wc->offset : 0, need_dx = need_x;
        cl_mem wm = wc ? wc->st->mem : any, dxm = dx ? dx->st->mem : any;
        cl_mem am = suma ? suma->st->mem : any, bm = sumb ? sumb->st->mem : any;
        cl_int moff = (cl_int)mean->offset, roff = (cl_int)rstd->offset;
        cl_int aoff = suma ? (cl_int)suma->offset : 0, boff = sumb ? (cl_int)sumb->offset : 0;
        kiln__karg args[] = {KILN__ARG(x->st->mem), KILN__ARG(xoff),          KILN__ARG(gout->st->mem),
                             KILN__ARG(dyoff),      KILN__ARG(dxm),           KILN__ARG(dxoff),
                             KILN__ARG(g.N),        KILN__ARG(g.S),           KILN__ARG(g.gstride),
                             KILN__ARG(g.nstride),  KILN__ARG(wmode),         KILN__ARG(has_w),
                             KILN__ARG(wm),         KILN__ARG(woff),          KILN__ARG(mean->st->mem),
                             KILN__ARG(moff),       KILN__ARG(rstd->st->mem), KILN__ARG(roff),
                             KILN__ARG(train),      KILN__ARG(need_dx),       KILN__ARG(sums),
                             KILN__ARG(am),         KILN__ARG(aoff),          KILN__ARG(bm),
                             KILN__ARG(boff)};
        /* the fused op: relu's mask from the output (n->out) and the residual's gradient */
        cl_int act = st->act, ndr = need_r, yvoff = act ? (cl_int)n->out->offset : 0;
        cl_int droff = dr ? (cl_int)dr->offset : 0;
        cl_mem yvm = act ? n->out->st->mem : any, drm = dr ? dr->st->mem : any;
        kiln__karg extra[] = {KILN__ARG(act), KILN__ARG(yvm), KILN__ARG(yvoff),
                              KILN__ARG(ndr), KILN__ARG(drm), KILN__ARG(droff)};
        /* (the fused op runs the plane kernels whatever the layout: the forward did) */
        if (ln_vec(ctx, &g, wmode) && train && need_x && !sums && !need_r) {
            kiln__karg la[] = {
                KILN__ARG(g.G),  KILN__ARG(x->st->mem),    KILN__ARG(xoff), KILN__ARG(gout->st->mem), KILN__ARG(dyoff),
                KILN__ARG(dxm),  KILN__ARG(dxoff),         KILN__ARG(g.S),  KILN__ARG(has_w),         KILN__ARG(wm),
                KILN__ARG(woff), KILN__ARG(mean->st->mem), KILN__ARG(moff), KILN__ARG(rstd->st->mem), KILN__ARG(roff)};
            s = g.G <= 0 ? KILN_OK
                         : kiln__launch(ctx, op, NORM_PROGRAM, NORM_OPTIONS, "ln_backward_vec",
                                        sizeof la / sizeof la[0], la, (size_t)g.G, 0);
        } else if (st->act || (wmode == KILN_NORM_W_GROUP && bn_planes(ctx, &g)))
            s = bn_planes_launch(ctx, op, "bn_backward_planes", sizeof args / sizeof args[0], args, 6, &g, 2,
                                 sizeof extra / sizeof extra[0], extra);
        else
            s = norm_launch(ctx, op, "norm_backward", sizeof args / sizeof args[0], args, g.G, (int64_t)g.N * g.S, 2);
        if (s != KILN_OK) goto done;
    }
    if (need_x && (s = give(ctx, n, 0, &dx)) != KILN_OK) goto done;
    if (need_r && (s = give(ctx, n, 3, &dr)) != KILN_OK) goto done;
    if (sums) {
        if (need_w && (s = give(ctx, n, 1, &sumb)) != KILN_OK) goto done;
        if (need_b && (s = give(ctx, n, 2, &suma)) != KILN_OK) goto done;
    }
    if (wmode == KILN_NORM_W_ELEM && (need_w || need_b)) {
        /* layer norm: column sums over the rows, [R, D] with R = G, D = S */
        kiln_tensor *shape_src = need_w ? n->in[1] : n->in[2];
        dw = need_w ? kiln__tensor_new(ctx, op, KILN_F32, shape_src->ndim, shape_src->shape) : NULL;
        if (need_w && !dw) goto done;
        db = need_b ? kiln__tensor_new(ctx, op, KILN_F32, n->in[2]->ndim, n->in[2]->shape) : NULL;
        if (need_b && !db) goto done;
        cl_mem any = x->st->mem;
        cl_int xoff = (cl_int)x->offset, dyoff = (cl_int)gout->offset, nw = need_w, nb = need_b;
        cl_mem dwm = dw ? dw->st->mem : any, dbm = db ? db->st->mem : any;
        cl_int moff = (cl_int)mean->offset, roff = (cl_int)rstd->offset;
        cl_int dwoff = dw ? (cl_int)dw->offset : 0, dboff = db ? (cl_int)db->offset : 0;
        kiln__karg args[] = {KILN__ARG(x->st->mem),
                             KILN__ARG(xoff),
                             KILN__ARG(gout->st->mem),
                             KILN__ARG(dyoff),
                             KILN__ARG(mean->st->mem),
                             KILN__ARG(moff),
                             KILN__ARG(rstd->st->mem),
                             KILN__ARG(roff),
                             KILN__ARG(g.G),
                             KILN__ARG(g.S),
                             KILN__ARG(nw),
                             KILN__ARG(dwm),
                             KILN__ARG(dwoff),
                             KILN__ARG(nb),
                             KILN__ARG(dbm),
                             KILN__ARG(dboff)};
        bool v8 = ln_vec(ctx, &g, wmode);
        s = kiln__launch(ctx, op, NORM_PROGRAM, NORM_OPTIONS, v8 ? "ln_param_grad_vec" : "ln_param_grad",
                         sizeof args / sizeof args[0], args, v8 ? (size_t)(g.S + 7) / 8 : (size_t)g.S, 0);
        if (s != KILN_OK) goto done;
        if (need_w && (s = give(ctx, n, 1, &dw)) != KILN_OK) goto done;
        if (need_b && (s = give(ctx, n, 2, &db)) != KILN_OK) goto done;
    }
done:
    if (s == KILN_OK && ctx->err != KILN_OK) s = ctx->err;
    kiln_tensor_free(dx);
    kiln_tensor_free(dr);
    kiln_tensor_free(suma);
    kiln_tensor_free(sumb);
    kiln_tensor_free(dw);
    kiln_tensor_free(db);
    free_copy(wc, w);
    return s;
}

/*
 * Runs norm_forward over the contiguous xc (of x) with geometry g, records the node and
 * returns the output (x's shape). rm/rv: running statistics (read in eval mode, updated
 * when update). wc/bc: contiguous weight/bias or NULL. x, w, b are the caller's tensors,
 * recorded as the node's inputs.
 */
static kiln_tensor *norm_run(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *xc, kiln_tensor *w,
                             kiln_tensor *wc, kiln_tensor *b, kiln_tensor *bc, const norm_geom *g, int wmode,
                             bool train, kiln_tensor *rm, kiln_tensor *rv, bool update, float momentum, float eps,
                             bool act, kiln_tensor *r, kiln_tensor *rc) {
    kiln_tensor *out = kiln__tensor_new(ctx, op, KILN_F32, x->ndim, x->shape);
    if (!out) return NULL;
    int64_t G = g->G;
    kiln_tensor *mean = kiln__tensor_new(ctx, op, KILN_F32, 1, &G);
    kiln_tensor *rstd = mean ? kiln__tensor_new(ctx, op, KILN_F32, 1, &G) : NULL;
    if (!rstd) goto fail;
    {
        cl_mem any = xc->st->mem;
        cl_int xoff = (cl_int)xc->offset, yoff = (cl_int)out->offset, cwmode = wmode;
        cl_int has_w = wc != NULL, has_b = bc != NULL;
        cl_int woff = wc ? (cl_int)wc->offset : 0, boff = bc ? (cl_int)bc->offset : 0;
        cl_mem wm = wc ? wc->st->mem : any, bm = bc ? bc->st->mem : any;
        cl_int upd = update, moff = (cl_int)mean->offset, roff = (cl_int)rstd->offset;
        cl_float ceps = eps, cmom = momentum;
        cl_mem rmm = rm ? rm->st->mem : any, rvm = rv ? rv->st->mem : any;
        cl_int rmoff = rm ? (cl_int)rm->offset : 0, rmstr = rm ? (cl_int)rm->strides[0] : 0;
        cl_int rvoff = rv ? (cl_int)rv->offset : 0, rvstr = rv ? (cl_int)rv->strides[0] : 0;
        kiln__karg args[NORM_MAX_ARGS] = {KILN__ARG(xc->st->mem),
                                          KILN__ARG(xoff),
                                          KILN__ARG(out->st->mem),
                                          KILN__ARG(yoff),
                                          KILN__ARG(g->N),
                                          KILN__ARG(g->S),
                                          KILN__ARG(g->gstride),
                                          KILN__ARG(g->nstride),
                                          KILN__ARG(cwmode),
                                          KILN__ARG(has_w),
                                          KILN__ARG(wm),
                                          KILN__ARG(woff),
                                          KILN__ARG(has_b),
                                          KILN__ARG(bm),
                                          KILN__ARG(boff),
                                          KILN__ARG(ceps),
                                          KILN__ARG(mean->st->mem),
                                          KILN__ARG(moff),
                                          KILN__ARG(rstd->st->mem),
                                          KILN__ARG(roff)};
        size_t na = 20;
        if (train) {
            args[na++] = KILN__ARG(upd);
            args[na++] = KILN__ARG(cmom);
        }
        args[na++] = KILN__ARG(rmm);
        args[na++] = KILN__ARG(rmoff);
        args[na++] = KILN__ARG(rmstr);
        args[na++] = KILN__ARG(rvm);
        args[na++] = KILN__ARG(rvoff);
        args[na++] = KILN__ARG(rvstr);
        cl_int cact = act, has_r = rc != NULL, resoff = rc ? (cl_int)rc->offset : 0;
        cl_mem resm = rc ? rc->st->mem : any;
        kiln__karg extra[] = {KILN__ARG(cact), KILN__ARG(has_r), KILN__ARG(resm), KILN__ARG(resoff)};
        kiln_status ls;
        /* (the fused op only comes here where the plane kernels apply) */
        if (ln_vec(ctx, g, wmode)) {
            kiln__karg la[] = {KILN__ARG(g->G), KILN__ARG(xc->st->mem),   KILN__ARG(xoff),  KILN__ARG(out->st->mem),
                               KILN__ARG(yoff), KILN__ARG(g->S),          KILN__ARG(has_w), KILN__ARG(wm),
                               KILN__ARG(woff), KILN__ARG(has_b),         KILN__ARG(bm),    KILN__ARG(boff),
                               KILN__ARG(ceps), KILN__ARG(mean->st->mem), KILN__ARG(moff),  KILN__ARG(rstd->st->mem),
                               KILN__ARG(roff)};
            ls = g->G <= 0 ? KILN_OK
                           : kiln__launch(ctx, op, NORM_PROGRAM, NORM_OPTIONS, "ln_forward_vec",
                                          sizeof la / sizeof la[0], la, (size_t)g->G, 0);
        } else if (wmode == KILN_NORM_W_GROUP && bn_planes(ctx, g))
            ls = bn_planes_launch(ctx, op, train ? "bn_forward_planes" : "bn_forward_eval_planes", na, args, 4, g,
                                  train ? 3 : 0, sizeof extra / sizeof extra[0], extra);
        else
            ls = norm_launch(ctx, op, train ? "norm_forward" : "norm_forward_eval", na, args, g->G,
                             (int64_t)g->N * g->S, train ? 1 : 0);
        if (ls != KILN_OK) goto fail;
    }
    kiln_tensor *in[4] = {x, w, b, r};
    int nin = r ? 4 : 3;
    if (kiln__grad_wanted(ctx, nin, in)) {
        kiln__node *n = kiln__node_new(ctx, op, out, nin, in, norm_backward_fn);
        norm_state *st = n ? KILN__NODE_STATE_NEW(n, norm_state) : NULL;
        if (!st) goto fail;
        *st = (norm_state){*g, wmode, train, act};
        if (kiln__node_save(n, xc) != KILN_OK || kiln__node_save(n, mean) != KILN_OK ||
            kiln__node_save(n, rstd) != KILN_OK)
            goto fail;
    }
    kiln_tensor_free(mean);
    kiln_tensor_free(rstd);
    return out;
fail:
    kiln_tensor_free(out);
    kiln_tensor_free(mean);
    kiln_tensor_free(rstd);
    return NULL;
}

/* ---- batch norm --------------------------------------------------------------------------- */

/* A [C] parameter or statistic: NULL allowed, else 1-D F32 of C elements. */
static bool check_channel_vec(kiln_ctx *ctx, const char *op, const char *what, const kiln_tensor *t,
                              const kiln_tensor *x, int64_t C) {
    if (!t) return true;
    if (!check_f32(ctx, op, what, t)) return false;
    if (t->ndim != 1 || t->shape[0] != C) {
        char sx[160], st[160];
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: %s %s does not match the %lld channels of input %s (expected [%lld])", op,
                   what, kiln__shape_str(t->ndim, t->shape, st, sizeof st), (long long)C,
                   kiln__shape_str(x->ndim, x->shape, sx, sizeof sx), (long long)C);
        return false;
    }
    return true;
}

/* The half variants of the ops below run them on f32 copies (kiln__half_fallback). */
typedef struct bn_args {
    kiln_tensor *running_mean, *running_var;
    bool training;
    float momentum, eps;
} bn_args;

static kiln_tensor *batch_norm_f32(kiln_ctx *ctx, kiln_tensor *const *in, const void *arg) {
    const bn_args *a = arg;
    return kiln_batch_norm(ctx, in[0], a->running_mean, a->running_var, in[1], in[2], a->training, a->momentum, a->eps);
}

/* kiln_batch_norm, or with act (kiln__batch_norm_relu, which has checked that the plane
 * kernels apply and that r, when given, is an f32 tensor of x's shape) relu(batch norm + r)
 * as one op. */
static kiln_tensor *bn_impl(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *running_mean,
                            kiln_tensor *running_var, kiln_tensor *weight, kiln_tensor *bias, bool training,
                            float momentum, float eps, bool act, kiln_tensor *r) {
    if (!kiln__check_inputs(ctx, op, 1, &x)) return NULL;
    kiln_tensor *xf = kiln__autocast_f32(ctx, x); /* autocast: an f32 op (kiln/amp.h) */
    if (xf != x) {
        kiln_tensor *res = kiln_batch_norm(ctx, xf, running_mean, running_var, weight, bias, training, momentum, eps);
        kiln_tensor_free(xf);
        return res;
    }
    /* optional tensors: only another context is an error (NULL means absent) */
    kiln_tensor *opt[4] = {running_mean, running_var, weight, bias};
    for (int j = 0; j < 4; j++) {
        if (opt[j] && opt[j]->ctx != ctx) {
            kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: input %d belongs to another context", op, j + 1);
            return NULL;
        }
    }
    char sx[160];
    kiln__shape_str(x->ndim, x->shape, sx, sizeof sx);
    if (!check_f32(ctx, op, "input", x)) return NULL;
    if (x->ndim < 2) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: input %s must have at least 2 dims [N, C, ...]", op, sx);
        return NULL;
    }
    int64_t N = x->shape[0], C = x->shape[1], S = 1;
    for (int d = 2; d < x->ndim; d++) S *= x->shape[d];
    if (!check_channel_vec(ctx, op, "running_mean", running_mean, x, C) ||
        !check_channel_vec(ctx, op, "running_var", running_var, x, C) ||
        !check_channel_vec(ctx, op, "weight", weight, x, C) || !check_channel_vec(ctx, op, "bias", bias, x, C))
        return NULL;
    if ((running_mean == NULL) != (running_var == NULL)) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: running_mean and running_var must be given together (input %s)",
                   op, sx);
        return NULL;
    }
    if (!isfinite(eps) || eps < 0 || !isfinite(momentum)) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: eps %g must be finite and >= 0, momentum %g finite (input %s)",
                   op, (double)eps, (double)momentum, sx);
        return NULL;
    }
    if (!training && !running_mean) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s: eval mode (training false) needs running_mean and running_var (input %s)", op, sx);
        return NULL;
    }
    if (training && N * S <= 1) {
        kiln__fail(ctx, KILN_ERR_SHAPE,
                   "%s: expected more than 1 value per channel when training, got input %s (%lld per channel)", op, sx,
                   (long long)(N * S));
        return NULL;
    }
    kiln_tensor *xc = contig(ctx, op, x);
    kiln_tensor *wc = xc && weight ? contig(ctx, op, weight) : NULL;
    kiln_tensor *bc = xc && bias ? contig(ctx, op, bias) : NULL;
    kiln_tensor *rc = xc && r ? contig(ctx, op, r) : NULL;
    kiln_tensor *out = NULL;
    if (xc && (!weight || wc) && (!bias || bc) && (!r || rc)) {
        norm_geom g = {(cl_int)C, (cl_int)N, (cl_int)S, (cl_int)S, (cl_int)(C * S)};
        out = norm_run(ctx, op, x, xc, weight, wc, bias, bc, &g, KILN_NORM_W_GROUP, training, running_mean, running_var,
                       training && running_mean, momentum, eps, act, r, rc);
    }
    free_copy(xc, x);
    free_copy(wc, weight);
    free_copy(bc, bias);
    free_copy(rc, r);
    return kiln__finish(ctx, op, out);
}

kiln_tensor *kiln_batch_norm(kiln_ctx *ctx, kiln_tensor *x, kiln_tensor *running_mean, kiln_tensor *running_var,
                             kiln_tensor *weight, kiln_tensor *bias, bool training, float momentum, float eps) {
    kiln_tensor *hin[3] = {x, weight, bias};
    if (ctx && kiln__any_half(3, hin)) /* through f32 copies; the running statistics stay f32, updated in place */
        return kiln__half_fallback(ctx, 3, hin, batch_norm_f32,
                                   &(bn_args){running_mean, running_var, training, momentum, eps});
    return bn_impl(ctx, "kiln_batch_norm", x, running_mean, running_var, weight, bias, training, momentum, eps, false,
                   NULL);
}

kiln_tensor *kiln__batch_norm_relu(kiln_ctx *ctx, kiln_tensor *x, kiln_tensor *residual, kiln_tensor *running_mean,
                                   kiln_tensor *running_var, kiln_tensor *weight, kiln_tensor *bias, bool training,
                                   float momentum, float eps) {
    if (!kiln__check_inputs(ctx, "kiln_batch_norm", 1, &x)) return NULL;
    if (residual && !kiln__check_inputs(ctx, "kiln_add", 1, &residual)) return NULL;
    /* one op where the plane kernels run: f32, [N, C, ...] with N >= 1 and planes long
     * enough, the residual an f32 tensor of x's shape */
    bool fuse = x->dtype == KILN_F32 && x->ndim >= 2 &&
                (!residual || (residual->dtype == KILN_F32 && residual->ndim == x->ndim &&
                               memcmp(residual->shape, x->shape, sizeof(int64_t) * (size_t)x->ndim) == 0));
    if (fuse) {
        int64_t S = 1;
        for (int d = 2; d < x->ndim; d++) S *= x->shape[d];
        norm_geom g = {(cl_int)x->shape[1], (cl_int)x->shape[0], (cl_int)S, (cl_int)S, (cl_int)(x->shape[1] * S)};
        fuse = x->shape[0] * x->shape[1] * S <= INT32_MAX && bn_planes(ctx, &g);
    }
    if (fuse)
        return bn_impl(ctx, "kiln_batch_norm_relu", x, running_mean, running_var, weight, bias, training, momentum, eps,
                       true, residual);
    kiln_tensor *y = kiln_batch_norm(ctx, x, running_mean, running_var, weight, bias, training, momentum, eps);
    kiln_tensor *sum = residual && y ? kiln_add(ctx, y, residual) : NULL;
    kiln_tensor *out = kiln_relu(ctx, residual ? sum : y);
    /* (the nodes keep what their backward needs) */
    kiln_tensor_free(sum);
    kiln_tensor_free(y);
    return out;
}

/* ---- layer norm ---------------------------------------------------------------------------- */

typedef struct ln_args {
    int nnorm;
    float eps;
} ln_args;

static kiln_tensor *layer_norm_f32(kiln_ctx *ctx, kiln_tensor *const *in, const void *arg) {
    const ln_args *a = arg;
    return kiln_layer_norm(ctx, in[0], a->nnorm, in[1], in[2], a->eps);
}

kiln_tensor *kiln_layer_norm(kiln_ctx *ctx, kiln_tensor *x, int nnorm, kiln_tensor *weight, kiln_tensor *bias,
                             float eps) {
    static const char op[] = "kiln_layer_norm";
    if (!kiln__check_inputs(ctx, op, 1, &x)) return NULL;
    kiln_tensor *xf = kiln__autocast_f32(ctx, x); /* autocast: an f32 op (kiln/amp.h) */
    if (xf != x) {
        kiln_tensor *res = kiln_layer_norm(ctx, xf, nnorm, weight, bias, eps);
        kiln_tensor_free(xf);
        return res;
    }
    kiln_tensor *hin[3] = {x, weight, bias};
    if (kiln__any_half(3, hin)) return kiln__half_fallback(ctx, 3, hin, layer_norm_f32, &(ln_args){nnorm, eps});
    kiln_tensor *opt[2] = {weight, bias};
    for (int j = 0; j < 2; j++) {
        if (opt[j] && opt[j]->ctx != ctx) {
            kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: input %d belongs to another context", op, j + 1);
            return NULL;
        }
    }
    char sx[160], sw[160];
    kiln__shape_str(x->ndim, x->shape, sx, sizeof sx);
    if (!check_f32(ctx, op, "input", x)) return NULL;
    if (nnorm < 1 || nnorm > x->ndim) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: nnorm %d out of range for input %s (1 to %d dims)", op, nnorm,
                   sx, x->ndim);
        return NULL;
    }
    int lead = x->ndim - nnorm;
    int64_t D = kiln__numel(nnorm, x->shape + lead), R = kiln__numel(lead, x->shape);
    for (int j = 0; j < 2; j++) {
        kiln_tensor *t = opt[j];
        if (!t) continue;
        if (!check_f32(ctx, op, j ? "bias" : "weight", t)) return NULL;
        if (t->ndim != nnorm || memcmp(t->shape, x->shape + lead, sizeof(int64_t) * (size_t)nnorm) != 0) {
            char sn[160];
            kiln__fail(ctx, KILN_ERR_SHAPE, "%s: %s %s does not match the normalised shape %s of input %s", op,
                       j ? "bias" : "weight", kiln__shape_str(t->ndim, t->shape, sw, sizeof sw),
                       kiln__shape_str(nnorm, x->shape + lead, sn, sizeof sn), sx);
            return NULL;
        }
    }
    if (!isfinite(eps) || eps < 0) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: eps %g must be finite and >= 0 (input %s)", op, (double)eps,
                   sx);
        return NULL;
    }
    kiln_tensor *xc = contig(ctx, op, x);
    kiln_tensor *wc = xc && weight ? contig(ctx, op, weight) : NULL;
    kiln_tensor *bc = xc && bias ? contig(ctx, op, bias) : NULL;
    kiln_tensor *out = NULL;
    if (xc && (!weight || wc) && (!bias || bc)) {
        /* an empty row has nothing to normalise: no groups */
        norm_geom g = {(cl_int)(D > 0 ? R : 0), 1, (cl_int)D, (cl_int)D, 0};
        out = norm_run(ctx, op, x, xc, weight, wc, bias, bc, &g, KILN_NORM_W_ELEM, true, NULL, NULL, false, 0.0f, eps,
                       false, NULL, NULL);
    }
    free_copy(xc, x);
    free_copy(wc, weight);
    free_copy(bc, bias);
    return kiln__finish(ctx, op, out);
}

/* ---- dropout ------------------------------------------------------------------------------- */

/* Elements per mask word (NORM_DROP_WORD in norm.cl): one work-item per word. */
#define DROP_WORD 32

/* Forward: dst = src * mask with the mask drawn from the stream at key/counter ki[0..3]
 * (key low/high, counter low/high); mask NULL or the [ceil(n / 32)] I32 bit mask to fill. */
static kiln_status dropout_launch(kiln_ctx *ctx, const char *op, kiln_tensor *src, kiln_tensor *dst, const int64_t *ki,
                                  float p, float scale, kiln_tensor *mask) {
    int64_t n = kiln__numel(dst->ndim, dst->shape);
    if (n == 0) return KILN_OK;
    cl_int soff = (cl_int)src->offset, doff = (cl_int)dst->offset, ni = (cl_int)n;
    cl_uint k0 = (cl_uint)ki[0], k1 = (cl_uint)ki[1], c0 = (cl_uint)ki[2], c1 = (cl_uint)ki[3];
    cl_float cp = p, cs = scale;
    cl_int want = mask != NULL, moff = mask ? (cl_int)mask->offset : 0;
    cl_mem mm = mask ? mask->st->mem : dst->st->mem; /* unused without a mask */
    kiln__karg args[] = {KILN__ARG(src->st->mem), KILN__ARG(soff), KILN__ARG(dst->st->mem), KILN__ARG(doff),
                         KILN__ARG(ni),           KILN__ARG(k0),   KILN__ARG(k1),           KILN__ARG(c0),
                         KILN__ARG(c1),           KILN__ARG(cp),   KILN__ARG(cs),           KILN__ARG(want),
                         KILN__ARG(mm),           KILN__ARG(moff)};
    char options[64]; /* src and dst of one dtype: the half build for halves */
    snprintf(options, sizeof options, "%s%s", NORM_OPTIONS, kiln__half_options(dst->dtype));
    return kiln__launch(ctx, op, NORM_PROGRAM, options, "dropout_apply", sizeof args / sizeof args[0], args,
                        (size_t)((n + DROP_WORD - 1) / DROP_WORD), 0);
}

static kiln_status dropout_backward_fn(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout) {
    const dropout_state *st = KILN__NODE_STATE(n, dropout_state);
    if (!st) return ctx->err;
    kiln_tensor *dx = kiln__tensor_new(ctx, n->op, KILN_F32, gout->ndim, gout->shape);
    if (!dx) return ctx->err;
    int64_t numel = kiln__numel(gout->ndim, gout->shape);
    kiln_tensor *mask = n->saved[0];
    cl_int soff = (cl_int)gout->offset, doff = (cl_int)dx->offset, ni = (cl_int)numel, moff = (cl_int)mask->offset;
    cl_float cs = st->scale;
    kiln__karg args[] = {KILN__ARG(gout->st->mem), KILN__ARG(soff), KILN__ARG(dx->st->mem),
                         KILN__ARG(doff),          KILN__ARG(ni),   KILN__ARG(mask->st->mem),
                         KILN__ARG(moff),          KILN__ARG(cs)};
    kiln_status s = kiln__launch(ctx, n->op, NORM_PROGRAM, NORM_OPTIONS, "dropout_mask_apply",
                                 sizeof args / sizeof args[0], args, (size_t)((numel + DROP_WORD - 1) / DROP_WORD), 0);
    if (s != KILN_OK) {
        kiln_tensor_free(dx);
        return s;
    }
    return kiln__accum_owned(ctx, n, 0, dx); /* dx is new: it becomes the gradient, no copy */
}

static kiln_status identity_backward_fn(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout) {
    return kiln__accum(ctx, n, 0, gout);
}

kiln_tensor *kiln_dropout(kiln_ctx *ctx, kiln_tensor *x, float p, bool training) {
    static const char op[] = "kiln_dropout";
    if (!kiln__check_inputs(ctx, op, 1, &x)) return NULL;
    /* halves run in their dtype, autocast or not (as torch's dropout) */
    if (!kiln_dtype_is_half(x->dtype) && !check_f32(ctx, op, "input", x)) return NULL;
    if (!(p >= 0.0f && p <= 1.0f)) {
        char sx[160];
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: probability p = %g is outside [0, 1] (input %s)", op, (double)p,
                   kiln__shape_str(x->ndim, x->shape, sx, sizeof sx));
        return NULL;
    }
    if (!training || p == 0.0f) {
        /* the identity: a view of x (as torch returns x itself), recorded so gradients flow */
        kiln_tensor *out = kiln__tensor_view(ctx, x, x->ndim, x->shape, x->strides, x->offset);
        if (!out) return NULL;
        if (kiln__grad_wanted(ctx, 1, &x) && !kiln__node_new(ctx, op, out, 1, &x, identity_backward_fn)) {
            kiln_tensor_free(out);
            return NULL;
        }
        return kiln__finish(ctx, op, out);
    }
    kiln_tensor *xc = contig(ctx, op, x);
    if (!xc) return NULL;
    kiln_tensor *out = kiln__tensor_new(ctx, op, x->dtype, x->ndim, x->shape);
    if (!out) {
        free_copy(xc, x);
        return NULL;
    }
    int64_t n = kiln__numel(x->ndim, x->shape);
    /* p == 1 drops everything (x * 0, as torch): no random numbers are drawn */
    float scale = p == 1.0f ? 0.0f : (float)(1.0 / (1.0 - (double)p));
    int64_t ki[4] = {(int64_t)(uint32_t)ctx->seed, (int64_t)(uint32_t)(ctx->seed >> 32),
                     (int64_t)(uint32_t)ctx->rng_counter, (int64_t)(uint32_t)(ctx->rng_counter >> 32)};
    /* the backward applies the forward's mask, kept as bits, rather than drawing it again */
    kiln_tensor *mask = NULL;
    if (kiln__grad_wanted(ctx, 1, &x)) {
        int64_t words = (n + DROP_WORD - 1) / DROP_WORD;
        mask = kiln__tensor_new(ctx, op, KILN_I32, 1, &words);
        if (!mask) {
            free_copy(xc, x);
            kiln_tensor_free(out);
            return NULL;
        }
    }
    kiln_status s = dropout_launch(ctx, op, xc, out, ki, p, scale, mask);
    free_copy(xc, x);
    if (s != KILN_OK) {
        kiln_tensor_free(mask);
        kiln_tensor_free(out);
        return NULL;
    }
    if (mask) {
        kiln__node *nd = kiln__node_new(ctx, op, out, 1, &x, dropout_backward_fn);
        dropout_state *st = nd ? KILN__NODE_STATE_NEW(nd, dropout_state) : NULL;
        kiln_status s2 = st ? kiln__node_save(nd, mask) : ctx->err; /* the node holds its own reference */
        kiln_tensor_free(mask);
        if (s2 != KILN_OK) {
            kiln_tensor_free(out);
            return NULL;
        }
        st->scale = scale;
    }
    if (p < 1.0f) ctx->rng_counter += (uint64_t)n;
    return kiln__finish(ctx, op, out);
}

/* ---- embedding ----------------------------------------------------------------------------- */

/* Comparisons up to which the backward's CSR is built on the device (embedding_rowptr and
 * embedding_positions: (num + 1) * nidx + nidx^2 / 2); a larger one is sorted on the host. */
#define EMB_DEVICE_CSR (1 << 26)

/* node: in[0] weight; saved[0] rowptr [num + 1], saved[1] positions [nidx] (I32; absent
 * when there are no indices); no other state */
static kiln_status embedding_backward_fn(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout) {
    kiln_tensor *w = n->in[0], *rowptr = n->saved[0], *pos = n->nsaved > 1 ? n->saved[1] : NULL;
    kiln_tensor *dw = kiln__tensor_new(ctx, n->op, KILN_F32, 2, w->shape);
    if (!dw) return ctx->err;
    cl_int num = (cl_int)w->shape[0], dim = (cl_int)w->shape[1];
    cl_int dyoff = (cl_int)gout->offset, dwoff = (cl_int)dw->offset;
    /* with no indices there is no positions buffer: rowptr (all zeros) stands in */
    cl_mem pm = pos ? pos->st->mem : rowptr->st->mem;
    cl_int rpoff = (cl_int)rowptr->offset, poff = pos ? (cl_int)pos->offset : 0;
    kiln__karg args[] = {
        KILN__ARG(gout->st->mem), KILN__ARG(dyoff),       KILN__ARG(rowptr->st->mem), KILN__ARG(rpoff), KILN__ARG(pm),
        KILN__ARG(poff),          KILN__ARG(dw->st->mem), KILN__ARG(dwoff),           KILN__ARG(num),   KILN__ARG(dim)};
    kiln_status s = kiln__launch(ctx, n->op, NORM_PROGRAM, NORM_OPTIONS, "embedding_backward",
                                 sizeof args / sizeof args[0], args, (size_t)num * (size_t)dim, 0);
    if (s == KILN_OK) s = kiln__accum(ctx, n, 0, dw);
    kiln_tensor_free(dw);
    return s;
}

static kiln_tensor *embedding_f32(kiln_ctx *ctx, kiln_tensor *const *in, const void *arg) {
    (void)arg;
    return kiln_embedding(ctx, in[0], in[1]);
}

kiln_tensor *kiln_embedding(kiln_ctx *ctx, kiln_tensor *weight, kiln_tensor *indices) {
    static const char op[] = "kiln_embedding";
    kiln_tensor *ins[2] = {weight, indices};
    if (!kiln__check_inputs(ctx, op, 2, ins)) return NULL;
    /* a half table: rows of an f32 copy, in the table's dtype */
    if (kiln_dtype_is_half(weight->dtype)) return kiln__half_fallback(ctx, 2, ins, embedding_f32, NULL);
    char sw[160], si[160];
    kiln__shape_str(weight->ndim, weight->shape, sw, sizeof sw);
    kiln__shape_str(indices->ndim, indices->shape, si, sizeof si);
    if (!check_f32(ctx, op, "weight", weight)) return NULL;
    if (indices->dtype != KILN_I32) {
        kiln__fail(ctx, KILN_ERR_DTYPE, "%s: indices %s have dtype %s; they must be i32", op, si,
                   kiln_dtype_name(indices->dtype));
        return NULL;
    }
    if (weight->ndim != 2) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: weight %s must be 2-D [num_embeddings, dim] (indices %s)", op, sw, si);
        return NULL;
    }
    if (indices->ndim + 1 > KILN_MAX_DIMS) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: indices %s have %d dims; the output would exceed %d", op, si,
                   indices->ndim, KILN_MAX_DIMS);
        return NULL;
    }
    int64_t num = weight->shape[0], dim = weight->shape[1];
    int64_t nidx = kiln__numel(indices->ndim, indices->shape);
    int64_t oshape[KILN_MAX_DIMS];
    memcpy(oshape, indices->shape, sizeof(int64_t) * (size_t)indices->ndim);
    oshape[indices->ndim] = dim;

    /* the forward kernel checks the indices (a deferred error: kiln_to_host or kiln_sync
     * reports a bad one, naming its position) */
    char text[400];
    snprintf(text, sizeof text, "of indices %s is out of range for weight %s", si, sw);
    cl_mem ebuf;
    cl_int site;
    if (kiln__deverr_register(ctx, op, "index", 0, NULL, text, &ebuf, &site) != KILN_OK) return NULL;

    kiln_tensor *ic = NULL, *out = NULL, *rowptr = NULL, *pos = NULL;
    int32_t *h = NULL, *cnt = NULL, *ph = NULL;
    out = kiln__tensor_new(ctx, op, KILN_F32, indices->ndim + 1, oshape);
    if (!out) goto fail;
    if (nidx > 0) {
        ic = contig(ctx, op, indices);
        if (!ic) goto fail;
    }
    cl_int ioff = ic ? (cl_int)ic->offset : 0, cn = (cl_int)nidx, cnum = (cl_int)num;
    if (nidx > 0 && dim > 0) {
        cl_int woff = (cl_int)weight->offset, ws0 = (cl_int)weight->strides[0], ws1 = (cl_int)weight->strides[1];
        cl_int ooff = (cl_int)out->offset, cd = (cl_int)dim;
        kiln__karg args[] = {KILN__ARG(weight->st->mem),
                             KILN__ARG(woff),
                             KILN__ARG(ws0),
                             KILN__ARG(ws1),
                             KILN__ARG(ic->st->mem),
                             KILN__ARG(ioff),
                             KILN__ARG(out->st->mem),
                             KILN__ARG(ooff),
                             KILN__ARG(cn),
                             KILN__ARG(cd),
                             KILN__ARG(cnum),
                             KILN__ARG(ebuf),
                             KILN__ARG(site)};
        if (kiln__launch(ctx, op, NORM_PROGRAM, NORM_OPTIONS, "embedding_forward", sizeof args / sizeof args[0], args,
                         (size_t)(nidx * dim), 0) != KILN_OK)
            goto fail;
    }
    if (kiln__grad_wanted(ctx, 1, &weight)) {
        /* CSR of positions per weight row: positions of row r are pos[rowptr[r] .. rowptr[r+1]),
         * in increasing order. Built on the device (no wait) up to EMB_DEVICE_CSR comparisons,
         * else by a counting sort on the host, which reads the indices back (and so reports a
         * bad one at once). */
        int64_t nrp = num + 1;
        double work = (double)nrp * (double)nidx + 0.5 * (double)nidx * (double)nidx;
        if (nidx > 0 && dim > 0 && work <= EMB_DEVICE_CSR) {
            rowptr = kiln__tensor_new(ctx, op, KILN_I32, 1, &nrp);
            pos = rowptr ? kiln__tensor_new(ctx, op, KILN_I32, 1, &nidx) : NULL;
            if (!pos) goto fail;
            cl_int rpoff = (cl_int)rowptr->offset, poff = (cl_int)pos->offset;
            kiln__karg ra[] = {KILN__ARG(ic->st->mem),     KILN__ARG(ioff), KILN__ARG(cn), KILN__ARG(cnum),
                               KILN__ARG(rowptr->st->mem), KILN__ARG(rpoff)};
            kiln__karg pa[] = {KILN__ARG(ic->st->mem),     KILN__ARG(ioff),  KILN__ARG(cn),           KILN__ARG(cnum),
                               KILN__ARG(rowptr->st->mem), KILN__ARG(rpoff), KILN__ARG(pos->st->mem), KILN__ARG(poff)};
            if (kiln__launch(ctx, op, NORM_PROGRAM, NORM_OPTIONS, "embedding_rowptr", 6, ra, (size_t)nrp, 0) !=
                    KILN_OK ||
                kiln__launch(ctx, op, NORM_PROGRAM, NORM_OPTIONS, "embedding_positions", 8, pa, (size_t)nidx, 0) !=
                    KILN_OK)
                goto fail;
        } else {
            h = malloc(sizeof(int32_t) * (size_t)(nidx > 0 ? nidx : 1));
            cnt = calloc((size_t)num + 1, sizeof *cnt);
            ph = malloc(sizeof *ph * (size_t)(nidx > 0 ? nidx : 1));
            if (!h || !cnt || !ph) {
                kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory for %lld indices", op,
                           (long long)nidx);
                goto fail;
            }
            if (nidx > 0 && kiln_to_host(ic, h, sizeof(int32_t) * (size_t)nidx) != KILN_OK) goto fail;
            for (int64_t k = 0; k < nidx; k++)
                if (h[k] < 0 || h[k] >= num) { /* dim 0: no forward kernel looked at them */
                    kiln__fail(ctx, KILN_ERR_RANGE, "%s: index %d at position %lld %s", op, (int)h[k], (long long)k,
                               text);
                    goto fail;
                }
            for (int64_t k = 0; k < nidx; k++) cnt[h[k] + 1]++;
            for (int64_t r = 0; r < num; r++) cnt[r + 1] += cnt[r];
            rowptr = kiln_from_host(ctx, cnt, KILN_I32, 1, &nrp);
            if (!rowptr) goto fail;
            for (int64_t k = 0; k < nidx; k++) ph[cnt[h[k]]++] = (int32_t)k;
            if (nidx > 0) {
                pos = kiln_from_host(ctx, ph, KILN_I32, 1, &nidx);
                if (!pos) goto fail;
            }
        }
        kiln__node *nd = kiln__node_new(ctx, op, out, 1, &weight, embedding_backward_fn);
        if (!nd || kiln__node_save(nd, rowptr) != KILN_OK || kiln__node_save(nd, pos) != KILN_OK) goto fail;
    }
    free_copy(ic, indices);
    kiln_tensor_free(rowptr);
    kiln_tensor_free(pos);
    free(cnt);
    free(ph);
    free(h);
    return kiln__finish(ctx, op, out);
fail:
    free_copy(ic, indices);
    kiln_tensor_free(out);
    kiln_tensor_free(rowptr);
    kiln_tensor_free(pos);
    free(cnt);
    free(ph);
    free(h);
    return NULL;
}

/* src/ops/reduce_kernels.c - the reductions' kernels (cl_kernels/reduce.cl): axes, launch
 * shapes and launches, computing sum, mean, max, min or argmax of a tensor with no autograd
 * node; and, built on them, the broadcast reduction of gradients (kiln__sum_to,
 * kiln__accum). The ops of src/ops/reduce.c and every backward rule use these; they use
 * no other op, so the op files form no circle through them. */
#include <stdio.h>
#include <string.h>

#include "ops_internal.h"

/* The reduction's geometry as the kernels read it (one argument, by value;
 * cl_kernels/kiln_shared.h). */
typedef kiln_red_geom red_geom;

/* Kernel name stems (mean is a sum divided on the device). */
static const char *const red_stem[] = {"sum", "sum", "max", "min", "argmax"};

/*
 * Choice of kernel shape. A work-item per output (*_rows) for short reductions and for
 * many outputs; otherwise a work-group per output (*_groups). "Many" is ROWS_MIN_OUT on
 * GPUs, where additionally outputs whose elements are contiguous while neighbouring
 * outputs' are not go to work-groups (a work-item each would read with a stride). On CPUs
 * POCL runs a group's work-items one after another on one core, so a work-item per
 * output wins as soon as there are CPU_ROWS_PER_CU outputs per core to share. When the
 * groups leave the device idle (fewer than GROUPS_PER_CU per compute unit), each output
 * is split into segments of at least SEG_TERMS elements per work-item, whose partials a
 * second launch reduces. The group size is always the kernel's full work-group size:
 * POCL compiles a kernel once per work-group size it is launched with, and an idle
 * work-item costs little. Every choice depends only on the shapes and the device, so
 * results stay deterministic.
 */
#define ROWS_MIN_OUT 1024
#define CPU_ROWS_PER_CU 16
#define GROUPS_MIN_RED 256
#define GROUPS_PER_CU 4
#define SEG_TERMS 64
#define MAX_SEGS 256

/* ctx->hooks.reduce_layout (tests): 1 makes the device choose kernel shapes and work
 * splits as a GPU does, 2 as a CPU does, 0 leaves them to the device, so that one device's
 * test run covers every path. */
static bool cpu_layout(const kiln_ctx *ctx) {
    int hook = ctx->hooks.reduce_layout;
    return hook ? hook == 2 : ctx->info.type == KILN_DEVICE_CPU;
}

/* ---- axes and geometry -------------------------------------------------------------- */

bool kiln__reduce_axes(kiln_ctx *ctx, const char *op, const kiln_tensor *t, int naxes, const int *axes,
                       bool red[KILN_MAX_DIMS]) {
    char sb[160];
    for (int d = 0; d < KILN_MAX_DIMS; d++) red[d] = naxes == 0 && d < t->ndim;
    if (naxes < 0) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: naxes is %d for tensor %s", op, naxes,
                   kiln__shape_str(t->ndim, t->shape, sb, sizeof sb));
        return false;
    }
    if (naxes > 0 && !axes) {
        kiln__fail(ctx, KILN_ERR_NULL, "%s: axes is NULL with naxes %d", op, naxes);
        return false;
    }
    int nd = t->ndim ? t->ndim : 1;
    int given[KILN_MAX_DIMS];
    bool seen[KILN_MAX_DIMS] = {false};
    for (int i = 0; i < naxes; i++) {
        int a = kiln__axis(axes[i], nd);
        if (a < 0) {
            kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: axis %d out of range for tensor %s", op, axes[i],
                       kiln__shape_str(t->ndim, t->shape, sb, sizeof sb));
            return false;
        }
        if (seen[a]) {
            kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: axis %d repeats axis %d of tensor %s", op, axes[i],
                       given[a], kiln__shape_str(t->ndim, t->shape, sb, sizeof sb));
            return false;
        }
        seen[a] = true;
        given[a] = axes[i];
        if (a < t->ndim) red[a] = true;
    }
    return true;
}

/* Drops size-1 dims and merges neighbours that are contiguous with each other in the input,
 * in order, so that a row-major index over the group means the same before and after
 * (argmax relies on it). Returns the number of dims, at least 1. */
static cl_int coalesce(int n, const int64_t *shape, const int64_t *stride, cl_int *osh, cl_int *ost) {
    int64_t sh[KILN_MAX_DIMS], st[KILN_MAX_DIMS];
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (shape[i] == 1) continue;
        if (m > 0 && st[m - 1] == stride[i] * shape[i]) {
            sh[m - 1] *= shape[i];
            st[m - 1] = stride[i];
            continue;
        }
        sh[m] = shape[i];
        st[m++] = stride[i];
    }
    if (m == 0) {
        sh[0] = 1;
        st[0] = 0;
        m = 1;
    }
    for (int i = 0; i < m; i++) {
        osh[i] = (cl_int)sh[i];
        ost[i] = (cl_int)st[i];
    }
    return (cl_int)m;
}

static void build_geom(red_geom *g, const kiln_tensor *t, const bool *red, int64_t nout, int64_t nred) {
    int64_t ksh[KILN_MAX_DIMS], kst[KILN_MAX_DIMS], rsh[KILN_MAX_DIMS], rst[KILN_MAX_DIMS];
    int nk = 0, nr = 0;
    for (int d = 0; d < t->ndim; d++) {
        if (red[d]) {
            rsh[nr] = t->shape[d];
            rst[nr++] = t->strides[d];
        } else {
            ksh[nk] = t->shape[d];
            kst[nk++] = t->strides[d];
        }
    }
    memset(g, 0, sizeof *g);
    g->nout = (cl_int)nout;
    g->nred = (cl_int)nred;
    g->kndim = coalesce(nk, ksh, kst, g->kshape, g->kstride);
    g->rndim = coalesce(nr, rsh, rst, g->rshape, g->rstride);
}

/* ---- launches ----------------------------------------------------------------------- */

/* Work-group size for `kernel`: a power of two (the group kernels' trees need one). */
static kiln_status kernel_wg(kiln_ctx *ctx, const char *kernel, size_t *wg) {
    return kiln__tree_wg(ctx, "reduce", "", kernel, 0, wg);
}

/* Outputs per work-item of sum_rows_vec (RED_VW in cl_kernels/reduce.cl). */
#define ROWS_VW 8

static kiln_status launch_rows(kiln_ctx *ctx, const char *op, kiln__red_kind kind, cl_mem x, cl_int xoff, cl_mem y,
                               cl_int yoff, const red_geom *g, cl_float div) {
    char name[32];
    bool sum = kind == KILN__RED_SUM || kind == KILN__RED_MEAN;
    /* On CPUs, sums whose outputs are neighbours in memory: ROWS_VW outputs a work-item
     * (the same additions in the same order as sum_rows), in groups small enough that
     * every compute unit gets some */
    if (sum && cpu_layout(ctx) && g->kndim == 1 && g->kstride[0] == 1 && g->nout >= ROWS_VW) {
        size_t items = ((size_t)g->nout + ROWS_VW - 1) / ROWS_VW, wg;
        kiln_status s = kernel_wg(ctx, "sum_rows_vec", &wg);
        if (s != KILN_OK) return s;
        size_t cu = ctx->info.compute_units ? ctx->info.compute_units : 1;
        while (wg > 1 && (items + wg - 1) / wg < cu) wg /= 2;
        kiln__karg args[] = {KILN__ARG(x),    KILN__ARG(xoff), KILN__ARG(y),
                             KILN__ARG(yoff), KILN__ARG(*g),   KILN__ARG(div)};
        return kiln__launch(ctx, op, "reduce", "", "sum_rows_vec", 6, args, items, wg);
    }
    snprintf(name, sizeof name, "%s_rows", red_stem[kind]);
    size_t wg;
    kiln_status s = kernel_wg(ctx, name, &wg);
    if (s != KILN_OK) return s;
    kiln__karg args[] = {KILN__ARG(x), KILN__ARG(xoff), KILN__ARG(y), KILN__ARG(yoff), KILN__ARG(*g), KILN__ARG(div)};
    size_t nargs = sum ? 6 : 5;
    return kiln__launch(ctx, op, "reduce", "", name, nargs, args, (size_t)g->nout, wg);
}

/* One group of `local` work-items per output and segment; writes nout * nseg results to
 * y (and the argmax values to yv). */
static kiln_status launch_groups(kiln_ctx *ctx, const char *op, kiln__red_kind kind, cl_mem x, cl_int xoff,
                                 const red_geom *g, cl_int nseg, size_t local, cl_mem yv, cl_int yvoff, cl_mem y,
                                 cl_int yoff, cl_float div) {
    char name[32];
    snprintf(name, sizeof name, "%s_groups", red_stem[kind]);
    size_t global = (size_t)g->nout * (size_t)nseg * local;
    /* POCL runs a group's work-items one after another: give each a contiguous block */
    cl_int blocked = cpu_layout(ctx);
    kiln__karg part = KILN__LOCAL(local * sizeof(cl_float));
    if (kind == KILN__RED_ARGMAX) {
        kiln__karg args[] = {KILN__ARG(x),
                             KILN__ARG(xoff),
                             KILN__ARG(yv),
                             KILN__ARG(yvoff),
                             KILN__ARG(y),
                             KILN__ARG(yoff),
                             KILN__ARG(*g),
                             KILN__ARG(nseg),
                             KILN__ARG(blocked),
                             part,
                             KILN__LOCAL(local * sizeof(cl_int))};
        return kiln__launch(ctx, op, "reduce", "", name, 11, args, global, local);
    }
    if (kind == KILN__RED_SUM || kind == KILN__RED_MEAN) {
        kiln__karg args[] = {KILN__ARG(x),       KILN__ARG(xoff), KILN__ARG(y),
                             KILN__ARG(yoff),    KILN__ARG(*g),   KILN__ARG(nseg),
                             KILN__ARG(blocked), KILN__ARG(div),  part};
        return kiln__launch(ctx, op, "reduce", "", name, 9, args, global, local);
    }
    kiln__karg args[] = {KILN__ARG(x),  KILN__ARG(xoff), KILN__ARG(y),       KILN__ARG(yoff),
                         KILN__ARG(*g), KILN__ARG(nseg), KILN__ARG(blocked), part};
    return kiln__launch(ctx, op, "reduce", "", name, 8, args, global, local);
}

/* Enqueues the reduction of t described by g into out (O = g->nout >= 1 outputs). */
static kiln_status run_reduce(kiln_ctx *ctx, const char *op, kiln__red_kind kind, kiln_tensor *t, kiln_tensor *out,
                              const red_geom *g) {
    int64_t nout = g->nout, nred = g->nred;
    cl_int xoff = (cl_int)t->offset, yoff = (cl_int)out->offset;
    cl_float div = kind == KILN__RED_MEAN ? (cl_float)nred : 1.0f; /* 0/0: the mean of nothing is NaN */
    int64_t cu = ctx->info.compute_units ? ctx->info.compute_units : 1;
    bool cpu = cpu_layout(ctx);
    int kl = g->kndim - 1, rl = g->rndim - 1;
    bool strided_rows = !cpu && g->rstride[rl] == 1 && g->rshape[rl] > 1 && g->kstride[kl] != 1 && g->kshape[kl] > 1;
    if (nred < GROUPS_MIN_RED || (nout >= (cpu ? CPU_ROWS_PER_CU * cu : ROWS_MIN_OUT) && !strided_rows))
        return launch_rows(ctx, op, kind, t->st->mem, xoff, out->st->mem, yoff, g, div);

    char name[32];
    snprintf(name, sizeof name, "%s_groups", red_stem[kind]);
    size_t local;
    kiln_status s = kernel_wg(ctx, name, &local);
    if (s != KILN_OK) return s;

    int64_t target = GROUPS_PER_CU * cu;
    int64_t nseg = 1;
    if (nout < target) {
        int64_t by_device = (target + nout - 1) / nout;
        int64_t by_work = (nred + (int64_t)local * SEG_TERMS - 1) / ((int64_t)local * SEG_TERMS);
        nseg = by_device < by_work ? by_device : by_work;
        if (nseg > MAX_SEGS) nseg = MAX_SEGS;
        if (nseg < 1) nseg = 1;
    }

    /* Partials: the segments' results (nseg > 1) and argmax's values, which only the
     * merge reads but the group kernel always writes. */
    kiln_tensor *pv = NULL, *pi = NULL;
    int64_t np = nout * nseg;
    if (nseg > 1 || kind == KILN__RED_ARGMAX) {
        pv = kiln__tensor_new(ctx, op, KILN_F32, 1, &np);
        if (!pv) return ctx->err;
    }
    if (nseg > 1 && kind == KILN__RED_ARGMAX) {
        pi = kiln__tensor_new(ctx, op, KILN_I32, 1, &np);
        if (!pi) {
            kiln_tensor_free(pv);
            return ctx->err;
        }
    }
    if (nseg == 1) {
        s = launch_groups(ctx, op, kind, t->st->mem, xoff, g, 1, local, pv ? pv->st->mem : NULL,
                          pv ? (cl_int)pv->offset : 0, out->st->mem, yoff, div);
    } else if (kind == KILN__RED_ARGMAX) {
        s = launch_groups(ctx, op, kind, t->st->mem, xoff, g, (cl_int)nseg, local, pv->st->mem, (cl_int)pv->offset,
                          pi->st->mem, (cl_int)pi->offset, 1.0f);
        if (s == KILN_OK) {
            cl_int pvoff = (cl_int)pv->offset, pioff = (cl_int)pi->offset, no = (cl_int)nout, ns = (cl_int)nseg;
            size_t wg;
            s = kernel_wg(ctx, "argmax_merge", &wg);
            kiln__karg args[] = {KILN__ARG(pv->st->mem), KILN__ARG(pvoff), KILN__ARG(pi->st->mem),  KILN__ARG(pioff),
                                 KILN__ARG(no),          KILN__ARG(ns),    KILN__ARG(out->st->mem), KILN__ARG(yoff)};
            if (s == KILN_OK) s = kiln__launch(ctx, op, "reduce", "", "argmax_merge", 8, args, (size_t)nout, wg);
        }
    } else {
        /* The mean divides once, in the second pass. */
        s = launch_groups(ctx, op, kind, t->st->mem, xoff, g, (cl_int)nseg, local, NULL, 0, pv->st->mem,
                          (cl_int)pv->offset, 1.0f);
        if (s == KILN_OK) {
            red_geom g2;
            memset(&g2, 0, sizeof g2);
            g2.nout = (cl_int)nout;
            g2.nred = (cl_int)nseg;
            g2.kndim = g2.rndim = 1;
            g2.kshape[0] = (cl_int)nout;
            g2.kstride[0] = (cl_int)nseg;
            g2.rshape[0] = (cl_int)nseg;
            g2.rstride[0] = 1;
            s = launch_groups(ctx, op, kind, pv->st->mem, (cl_int)pv->offset, &g2, 1, local, NULL, 0, out->st->mem,
                              yoff, div);
        }
    }
    /* Safe before the kernels ran: the queue is in order, so whoever gets these buffers
     * from the pool next writes them after the kernels are done. */
    kiln_tensor_free(pi);
    kiln_tensor_free(pv);
    return s;
}

/* ---- the reduction of a tensor -------------------------------------------------------- */

static const char *const red_what[] = {"sum", "mean", "max", "min", "argmax"};

kiln_tensor *kiln__reduce(kiln_ctx *ctx, const char *op, kiln__red_kind kind, kiln_tensor *t, const bool *red,
                          bool keepdim) {
    char sb[160];
    int64_t oshape[KILN_MAX_DIMS];
    int ondim = 0;
    int64_t nout = 1, nred = 1;
    for (int d = 0; d < t->ndim; d++) {
        if (red[d]) {
            nred *= t->shape[d];
            if (keepdim) oshape[ondim++] = 1;
        } else {
            nout *= t->shape[d];
            oshape[ondim++] = t->shape[d];
        }
    }
    if (nred == 0 && (kind == KILN__RED_MAX || kind == KILN__RED_MIN || kind == KILN__RED_ARGMAX)) {
        char ax[64] = "";
        for (int d = 0, used = 0; d < t->ndim && used < (int)sizeof ax; d++)
            if (red[d]) used += snprintf(ax + used, sizeof ax - (size_t)used, "%s%d", used ? ", " : "", d);
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: tensor %s has no elements along axes (%s); the %s of nothing is undefined",
                   op, kiln__shape_str(t->ndim, t->shape, sb, sizeof sb), ax, red_what[kind]);
        return NULL;
    }
    /* Expanded views may describe more elements than their storage holds. */
    if (nout > INT32_MAX || nred > INT32_MAX) {
        kiln__fail(ctx, KILN_ERR_UNSUPPORTED,
                   "%s: tensor %s: %lld outputs of %lld elements each (kernels index with int)", op,
                   kiln__shape_str(t->ndim, t->shape, sb, sizeof sb), (long long)nout, (long long)nred);
        return NULL;
    }
    kiln_tensor *out = kiln__tensor_new(ctx, op, kind == KILN__RED_ARGMAX ? KILN_I32 : KILN_F32, ondim, oshape);
    if (!out) return NULL;
    if (nout == 0) return out;
    red_geom g;
    build_geom(&g, t, red, nout, nred);
    if (run_reduce(ctx, op, kind, t, out, &g) != KILN_OK) {
        kiln_tensor_free(out);
        return NULL;
    }
    return out;
}

/* ---- gradients of broadcast operands -------------------------------------------------
 * A backward rule may hand kiln__accum a gradient of the broadcast shape its op computed
 * in; it is summed down to the input's shape here, on the ops floor, so that autograd's
 * kiln__grad_add only ever adds a gradient of exactly its input's shape. The sum is the
 * reduction kernel itself and the reshape a plain view: no op, and no autograd node. */

kiln_tensor *kiln__sum_to(kiln_ctx *ctx, kiln_tensor *g, int ndim, const int64_t *shape) {
    if (!g) return NULL;
    bool red[KILN_MAX_DIMS] = {false};
    int na = 0;
    int lead = g->ndim - ndim;
    for (int d = 0; d < g->ndim; d++) {
        int td = d - lead;
        if (td < 0 || (shape[td] == 1 && g->shape[d] != 1)) red[d] = true, na++;
    }
    if (na == 0 && g->ndim == ndim) return g;
    /* na > 0 here: a rank difference makes the leading dims reduced */
    kiln_tensor *s = kiln__finish(ctx, "kiln_sum", kiln__reduce(ctx, "kiln_sum", KILN__RED_SUM, g, red, true));
    if (!s) return NULL;
    int64_t strides[KILN_MAX_DIMS];
    kiln__contiguous_strides(ndim, shape, strides); /* s is a new contiguous tensor */
    kiln_tensor *r = kiln__tensor_view(ctx, s, ndim, shape, strides, s->offset);
    kiln_tensor_free(s);
    return r;
}

/* With own, g is the caller's own new tensor and is given up (see kiln__accum_owned). */
static kiln_status accum(kiln_ctx *ctx, kiln__node *n, int i, kiln_tensor *g, bool own) {
    if (!g || !kiln__input_needs_grad(n, i)) return kiln__grad_add(ctx, n, i, g, own);
    kiln_tensor *x = n->in[i];
    kiln_tensor *r = kiln__sum_to(ctx, g, x->ndim, x->shape);
    if (r == g) return kiln__grad_add(ctx, n, i, g, own);
    /* r is a sum or a reshape of g, made here: g itself is no longer needed, and a reshape
     * of the caller's own g becomes the only view of its storage */
    if (own) kiln_tensor_free(g);
    return r ? kiln__grad_add(ctx, n, i, r, true) : ctx->err;
}

kiln_status kiln__accum(kiln_ctx *ctx, kiln__node *n, int i, kiln_tensor *g) { return accum(ctx, n, i, g, false); }

kiln_status kiln__accum_owned(kiln_ctx *ctx, kiln__node *n, int i, kiln_tensor *g) { return accum(ctx, n, i, g, true); }

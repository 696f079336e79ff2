/* src/ops/elementwise.c - elementwise ops with NumPy/PyTorch broadcasting: binary
 * arithmetic, pow, min/max, comparisons, where, unary math and tensor-scalar ops (kernels
 * in cl_kernels/elementwise.cl).
 *
 * Every op goes through ew_run: validate the inputs (context, NULL propagation, F32),
 * broadcast the shapes (right-aligned, sizes equal or 1, rank = the largest rank), make a
 * fresh contiguous output and enqueue one kernel. The kernel is <name>_contig when every
 * input is contiguous with the output's element count (broadcasting then only adds or
 * drops size-1 dims, so element i of each input is at offset + i), else <name>_strided
 * with a kiln__geom carrying each input's strides (0 on broadcast dims). */
#include <stdio.h>
#include <string.h>

#include "../kiln_internal.h"

#define EW_PROGRAM "elementwise"
#define EW_OPTIONS "-DT=float"
#define EW_MAX_IN 3

/* Broadcasts the shapes of ts[0..n) into shape/ndim; false with a KILN_ERR_SHAPE error
 * naming the op and every input shape. */
static bool broadcast_shape(kiln_ctx *ctx, const char *op, int n, kiln_tensor *const *ts, int *ndim,
                            int64_t shape[KILN_MAX_DIMS]) {
    int nd = 0;
    for (int j = 0; j < n; j++)
        if (ts[j]->ndim > nd) nd = ts[j]->ndim;
    for (int d = 0; d < nd; d++) {
        int64_t size = 1;
        for (int j = 0; j < n; j++) {
            int jd = d - (nd - ts[j]->ndim);
            int64_t s = jd >= 0 ? ts[j]->shape[jd] : 1;
            if (s == 1) continue;
            if (size != 1 && size != s) {
                char sb[EW_MAX_IN][160];
                for (int k = 0; k < n; k++) kiln__shape_str(ts[k]->ndim, ts[k]->shape, sb[k], sizeof sb[k]);
                if (n == 2)
                    kiln__fail(ctx, KILN_ERR_SHAPE, "%s: shapes %s and %s cannot broadcast", op, sb[0], sb[1]);
                else
                    kiln__fail(ctx, KILN_ERR_SHAPE, "%s: shapes %s, %s and %s cannot broadcast", op, sb[0], sb[1],
                               sb[2]);
                return false;
            }
            size = s;
        }
        shape[d] = size;
    }
    *ndim = nd;
    return true;
}

/*
 * Runs kernel stem `name` of the elementwise program on the n (1 to 3) inputs, broadcast
 * together. Unary kernels (n == 1) take the scalar s as their last argument; tensor-scalar
 * ops use it, the others ignore it. Returns the new output or NULL with the error set.
 */
static kiln_tensor *ew_run(kiln_ctx *ctx, const char *op, const char *name, int n, kiln_tensor *const *ts,
                           float s) {
    if (!kiln__check_inputs(ctx, op, n, ts)) return NULL;
    for (int j = 0; j < n; j++) {
        if (ts[j]->dtype != KILN_F32) {
            char sb[160];
            kiln__fail(ctx, KILN_ERR_DTYPE, "%s: input %d (%s) has dtype %s; only f32 is supported", op, j,
                       kiln__shape_str(ts[j]->ndim, ts[j]->shape, sb, sizeof sb), kiln_dtype_name(ts[j]->dtype));
            return NULL;
        }
    }
    int ndim;
    int64_t shape[KILN_MAX_DIMS];
    if (!broadcast_shape(ctx, op, n, ts, &ndim, shape)) return NULL;
    kiln_tensor *out = kiln__tensor_new(ctx, op, KILN_F32, ndim, shape);
    if (!out) return NULL;
    int64_t numel = kiln__numel(ndim, shape);
    if (numel == 0) return out;

    bool contig = true;
    for (int j = 0; j < n && contig; j++)
        contig = kiln__is_contiguous(ts[j]) && kiln__numel(ts[j]->ndim, ts[j]->shape) == numel;

    /* Arguments: (buffer, offset) per input, then output buffer, offset, n, [geom], [s]. */
    cl_int offs[EW_MAX_IN], ooff = (cl_int)out->offset, ni = (cl_int)numel;
    cl_float sv = s;
    kiln__karg args[2 * EW_MAX_IN + 5];
    size_t na = 0;
    for (int j = 0; j < n; j++) {
        offs[j] = (cl_int)ts[j]->offset;
        args[na++] = KILN__ARG(ts[j]->st->mem);
        args[na++] = KILN__ARG(offs[j]);
    }
    args[na++] = KILN__ARG(out->st->mem);
    args[na++] = KILN__ARG(ooff);
    args[na++] = KILN__ARG(ni);

    kiln__geom g;
    if (!contig) {
        /* Input strides broadcast to the output's rank: 0 on dims the input lacks or has
         * size 1 (its stride there is meaningless). */
        int64_t st[KILN__GEOM_IN][KILN_MAX_DIMS];
        memset(st, 0, sizeof st);
        for (int j = 0; j < n; j++) {
            for (int d = 0; d < ndim; d++) {
                int jd = d - (ndim - ts[j]->ndim);
                st[j][d] = (jd >= 0 && ts[j]->shape[jd] != 1) ? ts[j]->strides[jd] : 0;
            }
        }
        kiln__geom_build(&g, ndim, shape, n, (const int64_t(*)[KILN_MAX_DIMS])st);
        args[na++] = KILN__ARG(g);
    }
    if (n == 1) args[na++] = KILN__ARG(sv);

    char kernel[64];
    snprintf(kernel, sizeof kernel, "%s_%s", name, contig ? "contig" : "strided");
    if (kiln__launch(ctx, op, EW_PROGRAM, EW_OPTIONS, kernel, na, args, (size_t)numel, 0) != KILN_OK) {
        kiln_tensor_free(out);
        return NULL;
    }
    return out;
}

/* ---- binary ------------------------------------------------------------------------- */

#define EW_DEFINE_BINARY(stem)                                                   \
    kiln_tensor *kiln_##stem(kiln_ctx *ctx, kiln_tensor *a, kiln_tensor *b) {     \
        kiln_tensor *ts[2] = {a, b};                                              \
        return ew_run(ctx, "kiln_" #stem, #stem, 2, ts, 0.0f);                    \
    }

EW_DEFINE_BINARY(add)
EW_DEFINE_BINARY(sub)
EW_DEFINE_BINARY(mul)
EW_DEFINE_BINARY(div)
EW_DEFINE_BINARY(pow)
EW_DEFINE_BINARY(minimum)
EW_DEFINE_BINARY(maximum)
EW_DEFINE_BINARY(eq)
EW_DEFINE_BINARY(ne)
EW_DEFINE_BINARY(lt)
EW_DEFINE_BINARY(le)
EW_DEFINE_BINARY(gt)
EW_DEFINE_BINARY(ge)

kiln_tensor *kiln_where(kiln_ctx *ctx, kiln_tensor *cond, kiln_tensor *a, kiln_tensor *b) {
    kiln_tensor *ts[3] = {cond, a, b};
    return ew_run(ctx, "kiln_where", "where", 3, ts, 0.0f);
}

/* ---- unary and tensor-scalar -------------------------------------------------------- */

#define EW_DEFINE_UNARY(stem)                                                    \
    kiln_tensor *kiln_##stem(kiln_ctx *ctx, kiln_tensor *a) {                     \
        return ew_run(ctx, "kiln_" #stem, #stem, 1, &a, 0.0f);                    \
    }

EW_DEFINE_UNARY(neg)
EW_DEFINE_UNARY(exp)
EW_DEFINE_UNARY(log)
EW_DEFINE_UNARY(sqrt)
EW_DEFINE_UNARY(abs)

#define EW_DEFINE_SCALAR(stem)                                                   \
    kiln_tensor *kiln_##stem(kiln_ctx *ctx, kiln_tensor *a, float s) {            \
        return ew_run(ctx, "kiln_" #stem, #stem, 1, &a, s);                       \
    }

EW_DEFINE_SCALAR(add_scalar)
EW_DEFINE_SCALAR(mul_scalar)
EW_DEFINE_SCALAR(pow_scalar)
EW_DEFINE_SCALAR(minimum_scalar)
EW_DEFINE_SCALAR(maximum_scalar)

/* tests/test_reduce.c - sum, mean, max, min and argmax on every device against a plain-C
 * double-precision reference computed from an independent model of views (h_view): odd
 * shapes, every subset of axes, empty dims, long reductions, non-contiguous inputs,
 * NaN/Inf, ties, determinism, guard regions and the error paths; PyTorch golden outputs and
 * gradients (tests/golden/gen_reduce.py, test_golden). */
#include "golden.h"
#include "harness.h"
#include "kiln_test_hooks.h"

static const char *layout_name = "";

typedef enum { OP_SUM, OP_MEAN, OP_MAX, OP_MIN, OP_ARGMAX, OP_COUNT } op_t;
static const char *const op_name[OP_COUNT] = {"sum", "mean", "max", "min", "argmax"};

/*
 * Tolerances.
 * - max, min, argmax return (the index of) an input element: exact.
 * - sum: a float sum in which every term goes through at most d rounded additions is off
 *   by at most gamma_d * sum|x|, gamma_d = d u / (1 - d u), u = 2^-24 (Higham, Accuracy
 *   and Stability of Numerical Algorithms, 2nd ed., eq. 4.4); the inputs are floats, so
 *   they carry no representation error. kiln (cl_kernels/reduce.cl) adds at most 16
 *   terms in order per run (<= 16 additions), combines runs pairwise with a final fold,
 *   then a work-group's partials in a tree, and when an output is split into segments
 *   the segments in a second pass of the same kind (another run of <= 16 and a tree).
 *   The pairwise levels of all stages together span at most ceil(log2 n) doublings, plus
 *   one fold and one rounding-up per stage: d = 2 * 16 + ceil(log2 n) + 4. For n = 10^6
 *   that is 56 u sum|x| where a plain running sum is only bounded by 10^6 u sum|x|: on
 *   test_long's 10^6 values in [0, 1) a running float sum is off by 84 u sum|x| (kiln by
 *   0.7), and on 2^24 followed by 10^6 ones by 10^6 (test_long checks that one).
 * - mean: the sum's bound / n, plus the division: OpenCL allows 2.5 ulp <= 5 u |q| for a
 *   float division (full profile).
 */
#define U_F32 0x1p-24

static double sum_depth(int64_t n) {
    int l = 0;
    while (l < 62 && ((int64_t)1 << l) < n) l++;
    return 2 * 16 + l + 4;
}

static double tolerance(op_t op, double mag, int64_t n, double ref) {
    if (op == OP_MAX || op == OP_MIN || op == OP_ARGMAX) return 0;
    double d = sum_depth(n), gamma = d * U_F32 / (1 - d * U_F32), bound = gamma * mag;
    if (op == OP_SUM) return bound;
    return bound / (double)n + 5 * U_F32 * (fabs(ref) + bound / (double)n);
}

/* ---- the reference ------------------------------------------------------------------ */

/* Element count for an allocation of n items (at least one, so malloc never gets 0). */
static size_t cap1(int64_t n) { return n > 0 ? (size_t)n : 1; }

/* Reduced dims of a view for (naxes, axes) as the API defines them; a 0-d tensor takes
 * axis 0 or -1 and reduces nothing. */
static void red_mask(const h_view *v, int naxes, const int *axes, bool *red) {
    int nd = v->ndim ? v->ndim : 1;
    for (int d = 0; d < KILN_MAX_DIMS; d++) red[d] = naxes == 0 && d < v->ndim;
    for (int i = 0; i < naxes; i++) {
        int a = axes[i] < 0 ? axes[i] + nd : axes[i];
        if (a < v->ndim) red[a] = true;
    }
}

/* val[o] for each output o (row-major over the kept dims), mag[o] = sum of |x| over it.
 * Elements are visited in row-major order, so each output sees its reduced elements in
 * increasing reduced index r. */
static void reference(op_t op, const float *base, const h_view *v, const bool *red, int64_t nout, double *val,
                      double *mag) {
    int64_t *best = malloc(sizeof(int64_t) * cap1(nout)), *cnt = calloc(cap1(nout), sizeof(int64_t));
    for (int64_t o = 0; o < nout; o++) {
        val[o] = 0;
        mag[o] = 0;
        best[o] = -1;
    }
    int64_t n = h_numel(v->ndim, v->shape);
    for (int64_t i = 0; i < n; i++) {
        int64_t id[KILN_MAX_DIMS], rem = i, o = 0, r = 0;
        for (int d = v->ndim - 1; d >= 0; d--) {
            id[d] = rem % v->shape[d];
            rem /= v->shape[d];
        }
        for (int d = 0; d < v->ndim; d++) {
            if (red[d])
                r = r * v->shape[d] + id[d];
            else
                o = o * v->shape[d] + id[d];
        }
        double x = h_at(base, v, i);
        mag[o] += fabs(x);
        cnt[o]++;
        switch (op) {
        case OP_SUM:
        case OP_MEAN: val[o] += x; break;
        case OP_MAX:
        case OP_MIN:
            /* NaN is sticky */
            if (best[o] < 0 || (!isnan(val[o]) && (isnan(x) || (op == OP_MAX ? x > val[o] : x < val[o])))) {
                val[o] = x;
                best[o] = r;
            }
            break;
        case OP_ARGMAX: {
            /* best[o] indexes the best so far; val[o] is its value */
            bool take = best[o] < 0 || (!isnan(val[o]) && (isnan(x) || x > val[o]));
            if (take) {
                val[o] = x;
                best[o] = r;
            }
            break;
        }
        default: break;
        }
    }
    for (int64_t o = 0; o < nout; o++) {
        if (op == OP_MEAN) val[o] = val[o] / (double)cnt[o]; /* 0/0: NaN, as torch */
        if (op == OP_ARGMAX) val[o] = (double)best[o];
    }
    free(best);
    free(cnt);
}

static kiln_tensor *call(kiln_ctx *ctx, op_t op, kiln_tensor *t, int naxes, const int *axes, bool keepdim) {
    switch (op) {
    case OP_SUM: return kiln_sum(ctx, t, naxes, axes, keepdim);
    case OP_MEAN: return kiln_mean(ctx, t, naxes, axes, keepdim);
    case OP_MAX: return kiln_max(ctx, t, naxes, axes, keepdim);
    case OP_MIN: return kiln_min(ctx, t, naxes, axes, keepdim);
    default: return kiln_argmax(ctx, t, naxes ? axes[0] : KILN_ALL_AXES, keepdim);
    }
}

/* Reads a result (F32, or I32 for argmax) as doubles. */
static double *read_result(kiln_tensor *r, int64_t n) {
    double *out = malloc(sizeof(double) * cap1(n));
    void *h = malloc(4 * cap1(n));
    if (kiln_to_host(r, h, 4 * (size_t)n) != KILN_OK) {
        CHECK(0, "kiln_to_host: %s", kiln_error_message(kiln_tensor_ctx(r)));
        for (int64_t i = 0; i < n; i++) out[i] = -12345.5;
    } else {
        for (int64_t i = 0; i < n; i++)
            out[i] = kiln_tensor_dtype(r) == KILN_I32 ? (double)((int32_t *)h)[i] : (double)((float *)h)[i];
    }
    free(h);
    return out;
}

static int64_t compare(const char *what, op_t op, const double *got, const double *ref, const double *mag, int64_t n,
                       int64_t nred) {
    int64_t bad = 0;
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double g = got[i], e = ref[i];
        bool ok;
        if (isnan(e) || isnan(g)) {
            ok = isnan(e) && isnan(g);
        } else if (isinf(e) || isinf(g)) {
            ok = g == e;
        } else {
            double tol = tolerance(op, mag[i], nred, e), err = fabs(g - e);
            ok = err <= tol;
            if (tol > 0 && err / tol > worst) worst = err / tol;
        }
        if (!ok && bad++ == 0)
            fprintf(stderr, "  %s: output %lld: got %.9g, reference %.9g (tolerance %.3g)\n", what, (long long)i, g, e,
                    isnan(e) || isinf(e) ? 0.0 : tolerance(op, mag[i], nred, e));
    }
    CHECK(bad == 0, "%s: %lld of %lld outputs wrong (worst error / tolerance %.3g)", what, (long long)bad, (long long)n,
          worst);
    return bad;
}

/* Runs op on t (whose elements are base[] viewed as hv) and checks shape, dtype and
 * values against the reference. */
static void check_case(kiln_ctx *ctx, const char *label, op_t op, kiln_tensor *t, const float *base, const h_view *hv,
                       int naxes, const int *axes, bool keepdim) {
    char what[256];
    int used = snprintf(what, sizeof what, "%s%s %s axes={", layout_name, label, op_name[op]);
    for (int i = 0; i < naxes && used < (int)sizeof what; i++)
        used += snprintf(what + used, sizeof what - (size_t)used, "%s%d", i ? "," : "", axes[i]);
    if (used < (int)sizeof what)
        snprintf(what + used, sizeof what - (size_t)used, "%s} keepdim=%d", naxes ? "" : "all", (int)keepdim);

    bool red[KILN_MAX_DIMS];
    red_mask(hv, naxes, axes, red);
    int64_t eshape[KILN_MAX_DIMS], nout = 1, nred = 1;
    int endim = 0;
    for (int d = 0; d < hv->ndim; d++) {
        if (red[d]) {
            nred *= hv->shape[d];
            if (keepdim) eshape[endim++] = 1;
        } else {
            nout *= hv->shape[d];
            eshape[endim++] = hv->shape[d];
        }
    }
    kiln_tensor *r = call(ctx, op, t, naxes, axes, keepdim);
    CHECK(r != NULL, "%s: %s", what, kiln_error_message(ctx));
    if (!r) {
        kiln_error_clear(ctx);
        return;
    }
    CHECK(kiln_tensor_dtype(r) == (op == OP_ARGMAX ? KILN_I32 : KILN_F32), "%s: dtype %s", what,
          kiln_dtype_name(kiln_tensor_dtype(r)));
    CHECK(kiln_tensor_ndim(r) == endim &&
              (endim == 0 || memcmp(kiln_tensor_shape(r), eshape, sizeof(int64_t) * (size_t)endim) == 0),
          "%s: wrong result shape", what);
    CHECK(kiln_tensor_is_contiguous(r), "%s: result is not contiguous", what);
    double *got = read_result(r, nout), *ref = malloc(sizeof(double) * cap1(nout)),
           *mag = malloc(sizeof(double) * cap1(nout));
    reference(op, base, hv, red, nout, ref, mag);
    compare(what, op, got, ref, mag, nout, nred);
    free(got);
    free(ref);
    free(mag);
    /* r stays alive until the caller's scope ends, after its guards are checked */
}

/* Every op, every subset of axes (none = all; some given as negative), keepdim on and
 * off, and argmax along each axis and over everything. */
static void check_all_subsets(kiln_ctx *ctx, const char *label, kiln_tensor *t, const float *base, const h_view *hv) {
    int nd = hv->ndim;
    for (int mask = 0; mask < (1 << nd); mask++) {
        int axes[KILN_MAX_DIMS], na = 0;
        for (int d = 0; d < nd; d++)
            if (mask >> d & 1) axes[na++] = ((mask + d) & 1) ? d - nd : d;
        for (int keep = 0; keep < 2; keep++)
            for (op_t op = OP_SUM; op < OP_ARGMAX; op++) check_case(ctx, label, op, t, base, hv, na, axes, keep);
    }
    for (int keep = 0; keep < 2; keep++) {
        check_case(ctx, label, OP_ARGMAX, t, base, hv, 0, NULL, keep);
        for (int d = -1; d < nd; d++) check_case(ctx, label, OP_ARGMAX, t, base, hv, 1, (int[]){d}, keep);
    }
}

static void check_guards(kiln_ctx *ctx, const char *where) {
    char msg[256];
    int bad = kiln__check_guards(ctx, msg, sizeof msg);
    CHECK(bad == 0, "%s: %d guard regions overwritten: %s", where, bad, msg);
}

/* ---- shapes ------------------------------------------------------------------------- */

static void test_small(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    /* 0-d: axis 0 / -1 are accepted and reduce nothing, as torch */
    float s = 2.5f;
    kiln_tensor *t0 = kiln_from_host(ctx, &s, KILN_F32, 0, NULL);
    h_view h0 = h_contig(0, NULL);
    for (op_t op = OP_SUM; op < OP_COUNT; op++)
        for (int keep = 0; keep < 2; keep++) {
            check_case(ctx, "0-d", op, t0, &s, &h0, 0, NULL, keep);
            check_case(ctx, "0-d", op, t0, &s, &h0, 1, (int[]){0}, keep);
            check_case(ctx, "0-d", op, t0, &s, &h0, 1, (int[]){-1}, keep);
        }

    /* one element, in 1 and 3 dims */
    float one = -7.25f;
    kiln_tensor *t1 = kiln_from_host(ctx, &one, KILN_F32, 1, (int64_t[]){1});
    h_view h1 = h_contig(1, (int64_t[]){1});
    check_all_subsets(ctx, "[1]", t1, &one, &h1);
    kiln_tensor *t111 = kiln_from_host(ctx, &one, KILN_F32, 3, (int64_t[]){1, 1, 1});
    h_view h111 = h_contig(3, (int64_t[]){1, 1, 1});
    check_all_subsets(ctx, "[1,1,1]", t111, &one, &h111);

    /* prime lengths: 13 (a work-item per output) and 97 (a work-group) */
    float p[97];
    h_fill(p, 97, -2, 2);
    kiln_tensor *t13 = kiln_from_host(ctx, p, KILN_F32, 1, (int64_t[]){13});
    h_view h13 = h_contig(1, (int64_t[]){13});
    check_all_subsets(ctx, "[13]", t13, p, &h13);
    kiln_tensor *t97 = kiln_from_host(ctx, p, KILN_F32, 1, (int64_t[]){97});
    h_view h97 = h_contig(1, (int64_t[]){97});
    check_all_subsets(ctx, "[97]", t97, p, &h97);
    check_guards(ctx, "test_small");
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

static void test_shapes(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    int64_t shape[3] = {5, 7, 11};
    float base[385];
    h_fill(base, 385, -3, 3);
    kiln_tensor *t = kiln_from_host(ctx, base, KILN_F32, 3, shape);
    h_view hv = h_contig(3, shape);
    check_all_subsets(ctx, "[5,7,11]", t, base, &hv);

    /* non-contiguous views of it */
    h_view hp = {3, {11, 5, 7}, {1, 77, 11}, 0};
    check_all_subsets(ctx, "permute(2,0,1)", kiln_permute(ctx, t, (int[]){2, 0, 1}), base, &hp);
    h_view hs = {3, {5, 3, 4}, {77, 22, 3}, 11}; /* dim 1: 1..6 step 2, dim 2: 0..11 step 3 */
    kiln_tensor *ts = kiln_slice(ctx, kiln_slice(ctx, t, 1, 1, 7, 2), 2, 0, 11, 3);
    check_all_subsets(ctx, "slice with steps", ts, base, &hs);
    h_view hst = {3, {4, 3, 5}, {3, 22, 77}, 11}; /* and transposed */
    check_all_subsets(ctx, "transposed slice", kiln_transpose(ctx, ts, 0, 2), base, &hst);
    kiln_tensor *row = kiln_from_host(ctx, base, KILN_F32, 3, (int64_t[]){1, 7, 1});
    h_view he = {3, {5, 7, 11}, {0, 1, 0}, 0};
    check_all_subsets(ctx, "expanded [1,7,1]", kiln_expand(ctx, row, 3, shape), base, &he);

    /* NaN and +-Inf sprinkled in: max/min/sum propagate NaN, argmax takes the first NaN,
     * sums of +Inf and -Inf give NaN; outputs without them stay finite */
    float bad[385];
    memcpy(bad, base, sizeof bad);
    bad[3] = NAN, bad[100] = INFINITY, bad[101] = -INFINITY, bad[200] = NAN, bad[211] = NAN, bad[300] = -INFINITY;
    bad[384] = INFINITY;
    kiln_tensor *tb = kiln_from_host(ctx, bad, KILN_F32, 3, shape);
    check_all_subsets(ctx, "[5,7,11] with NaN/Inf", tb, bad, &hv);

    /* 4-D with long and short dims: every kernel shape, kept and reduced dims that do not
     * coalesce, in place and permuted */
    int64_t s4[4] = {3, 37, 5, 29};
    float *b4 = malloc(sizeof(float) * 16095);
    h_fill(b4, 16095, -2, 2);
    kiln_tensor *t4 = kiln_from_host(ctx, b4, KILN_F32, 4, s4);
    h_view h4 = h_contig(4, s4);
    check_all_subsets(ctx, "[3,37,5,29]", t4, b4, &h4);
    h_view h4p = {4, {29, 37, 3, 5}, {1, 145, 5365, 29}, 0};
    check_all_subsets(ctx, "permute(3,1,0,2)", kiln_permute(ctx, t4, (int[]){3, 1, 0, 2}), b4, &h4p);
    free(b4);
    check_guards(ctx, "test_shapes");
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

static void test_empty(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    float dummy = 0;
    /* [0, 3]: sum over the empty axis is 0, mean NaN; over the other axis, empty results */
    kiln_tensor *t = kiln_from_host(ctx, &dummy, KILN_F32, 2, (int64_t[]){0, 3});
    h_view hv = h_contig(2, (int64_t[]){0, 3});
    for (int keep = 0; keep < 2; keep++) {
        for (op_t op = OP_SUM; op <= OP_MEAN; op++) {
            check_case(ctx, "[0,3]", op, t, &dummy, &hv, 1, (int[]){0}, keep);
            check_case(ctx, "[0,3]", op, t, &dummy, &hv, 0, NULL, keep);
        }
        for (op_t op = OP_SUM; op < OP_COUNT; op++) check_case(ctx, "[0,3]", op, t, &dummy, &hv, 1, (int[]){1}, keep);
    }
    kiln_tensor *t3 = kiln_from_host(ctx, &dummy, KILN_F32, 3, (int64_t[]){4, 0, 3});
    h_view h3 = h_contig(3, (int64_t[]){4, 0, 3});
    check_case(ctx, "[4,0,3]", OP_SUM, t3, &dummy, &h3, 1, (int[]){1}, false);
    check_case(ctx, "[4,0,3]", OP_MEAN, t3, &dummy, &h3, 2, (int[]){-2, 2}, true);
    check_guards(ctx, "test_empty");
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

/* Long reductions and many short ones, on both kernel shapes and split reductions. */
static void test_long(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    const int64_t n = 1000003;
    float *x = malloc(sizeof(float) * (size_t)n);
    /* [0, 1): a large common sign makes a running sum's error grow with n */
    h_fill(x, n, 0, 1);
    kiln_tensor *t = kiln_from_host(ctx, x, KILN_F32, 1, &n);
    h_view hv = h_contig(1, &n);
    for (op_t op = OP_SUM; op < OP_COUNT; op++) check_case(ctx, "[1000003]", op, t, x, &hv, 0, NULL, false);

    /* determinism: the same sum twice is bit-identical */
    for (op_t op = OP_SUM; op <= OP_MEAN; op++) {
        kiln_tensor *a = call(ctx, op, t, 0, NULL, false), *b = call(ctx, op, t, 0, NULL, false);
        float fa = kiln_tensor_item(a), fb = kiln_tensor_item(b);
        CHECK(memcmp(&fa, &fb, sizeof fa) == 0, "%s of 1000003 elements twice: %.9g then %.9g", op_name[op], fa, fb);
    }

    /* 2^24 then 10^6 ones: a running float sum stalls at 2^24 (2^24 + 1 rounds back to it)
     * and is off by 10^6, far outside the bound (about 59 here). */
    const int64_t ns = 1000001;
    float *st = malloc(sizeof(float) * (size_t)ns);
    st[0] = 16777216.0f;
    for (int64_t i = 1; i < ns; i++) st[i] = 1.0f;
    kiln_tensor *ts = kiln_from_host(ctx, st, KILN_F32, 1, &ns);
    h_view hs = h_contig(1, &ns);
    check_case(ctx, "2^24 and 10^6 ones", OP_SUM, ts, st, &hs, 0, NULL, false);
    float running = 0;
    for (int64_t i = 0; i < ns; i++) running += st[i];
    CHECK(fabs((double)running - 17777216.0) > 1e5, "a running float sum was expected to stall, got %.9g", running);

    /* [3, 100000] along axis 1 (few long outputs) and [100000, 3] along axis 1 (many short
     * ones), with signs mixed; the transposed [100000, 3] reduces with stride 3. */
    float *y = malloc(sizeof(float) * 330000); /* [1100, 300] below is the largest view */
    h_fill(y, 330000, -1, 1);
    kiln_tensor *ta = kiln_from_host(ctx, y, KILN_F32, 2, (int64_t[]){3, 100000});
    h_view ha = h_contig(2, (int64_t[]){3, 100000});
    kiln_tensor *tb = kiln_from_host(ctx, y, KILN_F32, 2, (int64_t[]){100000, 3});
    h_view hb = h_contig(2, (int64_t[]){100000, 3});
    h_view hbt = {2, {3, 100000}, {1, 3}, 0};
    kiln_tensor *tbt = kiln_transpose(ctx, tb, 0, 1);
    for (op_t op = OP_SUM; op < OP_COUNT; op++)
        for (int keep = 0; keep < 2; keep++) {
            check_case(ctx, "[3,100000]", op, ta, y, &ha, 1, (int[]){1}, keep);
            check_case(ctx, "[100000,3]", op, tb, y, &hb, 1, (int[]){1}, keep);
            check_case(ctx, "[100000,3]", op, tb, y, &hb, 1, (int[]){0}, keep);
            check_case(ctx, "[100000,3]^T", op, tbt, y, &hbt, 1, (int[]){-1}, keep);
        }
    for (op_t op = OP_SUM; op < OP_COUNT; op++) check_case(ctx, "[100000,3]", op, tb, y, &hb, 0, NULL, false);

    /* [2000, 150] along axis 1 (a work-item per output, runs of 16 and the pairwise counter),
     * [1100, 300] along axis 1 (many contiguous rows: a work-group each) and along axis 0,
     * and a transposed [1000, 300] reduced over everything (two reduced dims, split) */
    kiln_tensor *tr = kiln_from_host(ctx, y, KILN_F32, 2, (int64_t[]){1100, 300});
    h_view hr = h_contig(2, (int64_t[]){1100, 300});
    for (op_t op = OP_SUM; op < OP_COUNT; op++) {
        check_case(ctx, "[1100,300]", op, tr, y, &hr, 1, (int[]){1}, false);
        check_case(ctx, "[1100,300]", op, tr, y, &hr, 1, (int[]){0}, true);
    }
    kiln_tensor *tc = kiln_from_host(ctx, y, KILN_F32, 2, (int64_t[]){2000, 150});
    h_view hc = h_contig(2, (int64_t[]){2000, 150});
    kiln_tensor *td = kiln_transpose(ctx, kiln_from_host(ctx, y, KILN_F32, 2, (int64_t[]){1000, 300}), 0, 1);
    h_view hd = {2, {300, 1000}, {1, 300}, 0};
    for (op_t op = OP_SUM; op < OP_COUNT; op++) {
        check_case(ctx, "[2000,150]", op, tc, y, &hc, 1, (int[]){1}, false);
        check_case(ctx, "[1000,300]^T", op, td, y, &hd, 0, NULL, false);
        if (op != OP_ARGMAX) check_case(ctx, "[1000,300]^T", op, td, y, &hd, 2, (int[]){1, 0}, true);
    }

    /* NaN and ties in long reductions: across work-items and segments the first wins */
    float *z = malloc(sizeof(float) * 100000);
    h_fill(z, 100000, -1, 1);
    z[99999] = 5, z[50001] = 5, z[50000] = 5, z[70000] = 5;
    kiln_tensor *tz = kiln_from_host(ctx, z, KILN_F32, 1, (int64_t[]){100000});
    CHECK(kiln_tensor_item(kiln_argmax(ctx, tz, 0, false)) == 50000.0f, "argmax of ties at 50000, 50001, 70000, 99999");
    CHECK(kiln_tensor_item(kiln_max(ctx, tz, 0, NULL, false)) == 5.0f, "max with ties");
    z[70001] = NAN, z[90000] = NAN;
    kiln_tensor *tn = kiln_from_host(ctx, z, KILN_F32, 2, (int64_t[]){1, 100000});
    CHECK(kiln_tensor_item(kiln_argmax(ctx, tn, KILN_ALL_AXES, false)) == 70001.0f, "argmax: the first NaN wins");
    CHECK(isnan(kiln_tensor_item(kiln_max(ctx, tn, 0, NULL, false))), "max propagates NaN");
    CHECK(isnan(kiln_tensor_item(kiln_min(ctx, tn, 0, NULL, false))), "min propagates NaN");
    CHECK(isnan(kiln_tensor_item(kiln_sum(ctx, tn, 0, NULL, false))), "sum propagates NaN");
    CHECK(isnan(kiln_tensor_item(kiln_mean(ctx, tn, 0, NULL, false))), "mean propagates NaN");
    float *mi = malloc(sizeof(float) * 100000);
    for (int i = 0; i < 100000; i++) mi[i] = -INFINITY;
    kiln_tensor *tm = kiln_from_host(ctx, mi, KILN_F32, 1, (int64_t[]){100000});
    CHECK(kiln_tensor_item(kiln_argmax(ctx, tm, 0, false)) == 0.0f, "argmax of all -Inf is 0");
    CHECK(kiln_tensor_item(kiln_max(ctx, tm, 0, NULL, false)) == -INFINITY, "max of all -Inf");

    check_guards(ctx, "test_long");
    kiln_scope_end(ctx);
    free(x);
    free(st);
    free(y);
    free(z);
    free(mi);
    CHECK_OK(ctx);
}

/* Hand-checked values: NaN/Inf semantics and ties on short vectors. */
static void test_special(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    float a[5] = {1, NAN, 3, NAN, -INFINITY};
    kiln_tensor *ta = kiln_from_host(ctx, a, KILN_F32, 1, (int64_t[]){5});
    CHECK(isnan(kiln_tensor_item(kiln_sum(ctx, ta, 0, NULL, false))), "sum with NaN");
    CHECK(isnan(kiln_tensor_item(kiln_max(ctx, ta, 0, NULL, false))), "max with NaN");
    CHECK(isnan(kiln_tensor_item(kiln_min(ctx, ta, 0, NULL, false))), "min with NaN");
    CHECK(kiln_tensor_item(kiln_argmax(ctx, ta, 0, false)) == 1.0f, "argmax picks the first NaN");
    float b[3] = {INFINITY, 1, -INFINITY};
    kiln_tensor *tb = kiln_from_host(ctx, b, KILN_F32, 1, (int64_t[]){3});
    CHECK(isnan(kiln_tensor_item(kiln_sum(ctx, tb, 0, NULL, false))), "Inf + -Inf is NaN");
    CHECK(kiln_tensor_item(kiln_max(ctx, tb, 0, NULL, false)) == INFINITY, "max with Inf");
    CHECK(kiln_tensor_item(kiln_min(ctx, tb, 0, NULL, false)) == -INFINITY, "min with -Inf");
    CHECK(kiln_tensor_item(kiln_argmax(ctx, tb, 0, false)) == 0.0f, "argmax of Inf");
    float c[5] = {1, 3, 3, 2, 3};
    kiln_tensor *tc = kiln_from_host(ctx, c, KILN_F32, 1, (int64_t[]){5});
    CHECK(kiln_tensor_item(kiln_argmax(ctx, tc, -1, false)) == 1.0f, "ties pick the first index");
    /* argmax of a [2, 3] with keepdim: shape [2, 1], indices along the axis */
    float d[6] = {0, 9, 9, 4, 4, -1};
    kiln_tensor *td = kiln_from_host(ctx, d, KILN_F32, 2, (int64_t[]){2, 3});
    kiln_tensor *r = kiln_argmax(ctx, td, 1, true);
    int32_t got[2] = {-1, -1};
    CHECK(r && kiln_tensor_ndim(r) == 2 && kiln_tensor_shape(r)[0] == 2 && kiln_tensor_shape(r)[1] == 1 &&
              kiln_to_host(r, got, sizeof got) == KILN_OK && got[0] == 1 && got[1] == 0,
          "argmax(axis 1, keepdim) of [[0,9,9],[4,4,-1]] gives [%d, %d], want [1, 0]", got[0], got[1]);
    kiln_tensor *rf = kiln_argmax(ctx, td, KILN_ALL_AXES, false);
    CHECK(rf && kiln_tensor_ndim(rf) == 0 && kiln_tensor_item(rf) == 1.0f, "argmax over all of it is the flat index 1");
    kiln_tensor *rk = kiln_argmax(ctx, td, KILN_ALL_AXES, true);
    CHECK(rk && kiln_tensor_ndim(rk) == 2 && kiln_tensor_numel(rk) == 1 && kiln_tensor_item(rk) == 1.0f,
          "argmax over all with keepdim has shape [1, 1]");
    check_guards(ctx, "test_special");
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

static bool msg_has(kiln_ctx *ctx, const char *a, const char *b, const char *c) {
    const char *m = kiln_error_message(ctx);
    return strstr(m, a) && (!b || strstr(m, b)) && (!c || strstr(m, c));
}

/* cl_kernels/reduce.cl's red_sum in host floats: terms in runs of 16, the runs' sums
 * combined by a binary counter. The row kernels (sum_rows, and sum_rows_vec lane by lane)
 * make exactly these additions in this order, so their sums must equal it bit for bit. */
static float host_red_sum(const float *x, const int64_t *offs, int64_t n) {
    float run = 0.0f, level[64];
    int nrun = 0;
    uint64_t nruns = 0;
    for (int64_t i = 0; i < n; i++) {
        run += x[offs[i]];
        if (++nrun < 16) continue;
        float c = run;
        uint64_t m = nruns;
        int k = 0;
        for (; m & 1u; m >>= 1, k++) c = level[k] + c;
        level[k] = c;
        nruns++;
        run = 0.0f;
        nrun = 0;
    }
    float t = run;
    for (int k = 0; nruns; nruns >>= 1, k++)
        if (nruns & 1u) t += level[k];
    return t;
}

/*
 * Sums over leading dims of [A, B, W] (or of its every-other-B slice, whose reduced dims do
 * not coalesce) into W neighbouring outputs: under the CPU layout the vector row kernel
 * (8 outputs a work-item, the rest one by one), ragged W; the transposed copy [W, A, B]
 * sums the same elements through the scalar row kernel. A * B stays under the size at
 * which the host picks work-groups, so both are row kernels on every device; both must
 * equal host_red_sum bit for bit.
 */
static void test_row_vectors(kiln_ctx *ctx) {
    static const int64_t shapes[][3] = {{1, 1, 8}, {1, 16, 9}, {1, 17, 13}, {3, 5, 37}, {5, 51, 130}, {1, 255, 24}};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        kiln_scope_begin(ctx);
        int64_t A = shapes[c][0], B = shapes[c][1], W = shapes[c][2], n = A * B * W;
        float *x = malloc(sizeof(float) * (size_t)n), *got = malloc(sizeof(float) * (size_t)W);
        int64_t *offs = malloc(sizeof(int64_t) * (size_t)(A * B));
        h_fill(x, n, -3, 3);
        kiln_tensor *t = kiln_from_host(ctx, x, KILN_F32, 3, shapes[c]);
        /* [W, A, B] contiguous holding the same values, viewed back as [A, B, W] */
        kiln_tensor *tt =
            kiln_permute(ctx, kiln_contiguous(ctx, kiln_permute(ctx, t, (int[]){2, 0, 1})), (int[]){1, 2, 0});
        for (int sliced = 0; sliced < 2; sliced++) {
            int64_t Bs = sliced ? (B + 1) / 2 : B;
            kiln_tensor *in[2] = {sliced ? kiln_slice(ctx, t, 1, 0, B, 2) : t,
                                  sliced ? kiln_slice(ctx, tt, 1, 0, B, 2) : tt};
            for (int64_t a = 0; a < A; a++)
                for (int64_t b = 0; b < Bs; b++) offs[a * Bs + b] = (a * B + b * (sliced + 1)) * W;
            for (int k = 0; k < 2; k++) {
                kiln_tensor *r = kiln_sum(ctx, in[k], 2, (int[]){0, 1}, false);
                CHECK(r && kiln_to_host(r, got, sizeof(float) * (size_t)W) == KILN_OK,
                      "%srow sums [%lld,%lld,%lld]: %s", layout_name, (long long)A, (long long)B, (long long)W,
                      kiln_error_message(ctx));
                int bad = 0;
                for (int64_t o = 0; r && o < W; o++) {
                    float want = host_red_sum(x + o, offs, A * Bs);
                    if (memcmp(&want, &got[o], sizeof want) != 0 && bad++ < 3)
                        CHECK(0, "%srow sums [%lld,%lld,%lld]%s%s: output %lld is %.9g, red_sum gives %.9g",
                              layout_name, (long long)A, (long long)B, (long long)W, sliced ? " sliced" : "",
                              k ? " (transposed copy)" : "", (long long)o, got[o], want);
                }
            }
        }
        free(x);
        free(got);
        free(offs);
        check_guards(ctx, "test_row_vectors");
        kiln_scope_end(ctx);
        CHECK_OK(ctx);
    }
}

static void test_errors(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    float base[385];
    h_fill(base, 385, -1, 1);
    int32_t iv[6] = {1, 2, 3, 4, 5, 6};
    kiln_tensor *t = kiln_from_host(ctx, base, KILN_F32, 3, (int64_t[]){5, 7, 11});
    kiln_tensor *t0 = kiln_from_host(ctx, base, KILN_F32, 0, NULL);
    kiln_tensor *e = kiln_from_host(ctx, base, KILN_F32, 2, (int64_t[]){0, 3});
    kiln_tensor *ti = kiln_from_host(ctx, iv, KILN_I32, 1, (int64_t[]){6});
    int64_t live = kiln_ctx_num_tensors(ctx);

    /* axes: out of range, duplicated (also as a negative), NULL, negative count */
    CHECK(kiln_sum(ctx, t, 1, (int[]){3}, false) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT &&
              msg_has(ctx, "kiln_sum", "axis 3", "[5, 7, 11]"),
          "axis 3 of a 3-d tensor: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(kiln_max(ctx, t, 2, (int[]){0, -4}, true) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT &&
              msg_has(ctx, "kiln_max", "axis -4", "[5, 7, 11]"),
          "axis -4: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(kiln_mean(ctx, t, 2, (int[]){1, -2}, false) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT &&
              msg_has(ctx, "kiln_mean", "-2", "[5, 7, 11]"),
          "duplicate axis: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(kiln_min(ctx, t, 2, (int[]){2, 2}, false) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT,
          "duplicate axis");
    kiln_error_clear(ctx);
    CHECK(kiln_argmax(ctx, t, 3, false) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT &&
              msg_has(ctx, "kiln_argmax", "axis 3", "[5, 7, 11]"),
          "argmax axis 3: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(kiln_min(ctx, t, 1, NULL, false) == NULL && kiln_error_status(ctx) == KILN_ERR_NULL, "axes NULL");
    kiln_error_clear(ctx);
    CHECK(kiln_sum(ctx, t, -1, (int[]){0}, false) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT,
          "negative naxes");
    kiln_error_clear(ctx);
    CHECK(kiln_sum(ctx, t0, 1, (int[]){1}, false) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT,
          "axis 1 of a 0-d tensor");
    kiln_error_clear(ctx);

    /* empty reductions: max/min/argmax are undefined (torch raises) */
    CHECK(kiln_argmax(ctx, e, KILN_ALL_AXES, false) == NULL && kiln_error_status(ctx) == KILN_ERR_SHAPE &&
              msg_has(ctx, "kiln_argmax", "[0, 3]", NULL),
          "argmax of an empty tensor: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(kiln_argmax(ctx, e, 0, true) == NULL && kiln_error_status(ctx) == KILN_ERR_SHAPE,
          "argmax over an empty axis");
    kiln_error_clear(ctx);
    CHECK(kiln_max(ctx, e, 1, (int[]){0}, false) == NULL && kiln_error_status(ctx) == KILN_ERR_SHAPE &&
              msg_has(ctx, "kiln_max", "[0, 3]", NULL),
          "max over an empty axis: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(kiln_min(ctx, e, 0, NULL, false) == NULL && kiln_error_status(ctx) == KILN_ERR_SHAPE, "min of nothing");
    kiln_error_clear(ctx);

    /* a view describing more elements than kernels can index is refused where it is made */
    kiln_tensor *huge = kiln_expand(ctx, kiln_reshape(ctx, t0, 2, (int64_t[]){1, 1}), 2, (int64_t[]){65536, 65536});
    live = kiln_ctx_num_tensors(ctx);
    CHECK(!huge && kiln_sum(ctx, huge, 0, NULL, false) == NULL && kiln_error_status(ctx) == KILN_ERR_UNSUPPORTED &&
              msg_has(ctx, "kiln_expand", "[65536, 65536]", NULL),
          "expand to 2^32 elements: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);

    /* dtype */
    CHECK(kiln_sum(ctx, ti, 0, NULL, false) == NULL && kiln_error_status(ctx) == KILN_ERR_DTYPE &&
              msg_has(ctx, "kiln_sum", "i32", NULL),
          "sum of i32: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(kiln_argmax(ctx, ti, 0, false) == NULL && kiln_error_status(ctx) == KILN_ERR_DTYPE &&
              msg_has(ctx, "kiln_argmax", "i32", NULL),
          "argmax of i32: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == live, "failed calls leaked %lld tensors",
          (long long)(kiln_ctx_num_tensors(ctx) - live));

    /* NULL input: an error of its own, or the earlier error kept when a chain failed */
    CHECK(kiln_sum(NULL, t, 0, NULL, false) == NULL, "NULL context");
    CHECK(kiln_max(ctx, NULL, 0, NULL, false) == NULL && kiln_error_status(ctx) == KILN_ERR_NULL, "NULL input");
    kiln_error_clear(ctx);
    kiln_tensor *chain = kiln_mean(ctx, kiln_sum(ctx, t, 1, (int[]){7}, false), 0, NULL, false);
    CHECK(chain == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT &&
              msg_has(ctx, "kiln_sum", "axis 7", NULL),
          "the first error of a chain is kept: %s", kiln_error_message(ctx));
    CHECK(kiln_argmax(ctx, NULL, 0, false) == NULL && msg_has(ctx, "kiln_sum", NULL, NULL), "argmax propagates");
    kiln_error_clear(ctx);

    /* a tensor of another context */
    char spec[32];
    const kiln_device_info *info = kiln_ctx_device(ctx);
    snprintf(spec, sizeof spec, "%d:%d", info->platform_index, info->device_index);
    kiln_ctx *other;
    if (kiln_open(&other, spec) == KILN_OK) {
        kiln_tensor *f = kiln_from_host(other, base, KILN_F32, 1, (int64_t[]){4});
        CHECK(kiln_sum(ctx, f, 0, NULL, false) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT,
              "a foreign tensor must be refused");
        kiln_error_clear(ctx);
        kiln_close(other);
    }

    /* usable after kiln_error_clear */
    CHECK_OK(ctx);
    h_view hv = h_contig(3, (int64_t[]){5, 7, 11});
    check_case(ctx, "after errors", OP_SUM, t, base, &hv, 2, (int[]){0, 2}, false);
    check_case(ctx, "after errors", OP_ARGMAX, t, base, &hv, 1, (int[]){1}, true);
    check_guards(ctx, "test_errors");
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

/* ---- PyTorch golden values (tests/golden/gen_reduce.py) ----------------------------------- */
/*
 * The same cases as CASES in gen_reduce.py; "nc" inputs are the [5,4,3] base transposed
 * (0, 2). torch's values are float64 rounded once to float32 (1 u = 2^-24 relative). Bounds:
 *   sum: the header's bound gamma_d sum|x| with d = min(n - 1, sum_depth(n)) additions per
 *     term (n terms per output), plus torch's rounding (<= 1 u |ref| <= 1 u sum|x|):
 *     (d + 1) u * <case>.mout. mean: that bound / n, i.e. d u * mean|x| (mout), plus the
 *     division (2.5 ulp = 5 u) and torch's rounding: 6 u |ref|.
 *   max, min, argmax: an input element or its index: exact.
 *   gradients: sum copies the seed: exact. mean: the seed times 1/n rounded to float (1 u)
 *     and the product (1 u), torch's rounding: 3 u |ref|. max/min: mask * (g / count):
 *     the division 2.5 ulp, torch's rounding: 6 u |ref| (ties split as torch.amax).
 */
static const struct {
    const char *c;
    op_t op;
    bool nc; /* the input is the [5,4,3] base transposed (0, 2) */
    int naxes, axes[2];
    bool keepdim;
} gold_red_cases[] = {
    {"sum.all", OP_SUM, false, 0, {0}, false},
    {"sum.nc", OP_SUM, true, 2, {0, -1}, true},
    {"sum.neg", OP_SUM, false, 1, {-2}, false},
    {"mean.all", OP_MEAN, false, 0, {0}, false},
    {"mean.nc", OP_MEAN, true, 2, {0, -1}, true},
    {"mean.neg", OP_MEAN, false, 1, {-2}, false},
    {"max.all", OP_MAX, false, 0, {0}, false},
    {"max.nc", OP_MAX, true, 1, {1}, true},
    {"max.multi", OP_MAX, false, 2, {0, -1}, false},
    {"min.all", OP_MIN, false, 0, {0}, false},
    {"min.nc", OP_MIN, true, 1, {1}, true},
    {"min.multi", OP_MIN, false, 2, {0, -1}, false},
    {"argmax.all", OP_ARGMAX, false, 1, {KILN_ALL_AXES}, false},
    {"argmax.nc", OP_ARGMAX, true, 1, {-1}, true},
    {"argmax.0", OP_ARGMAX, false, 1, {0}, false},
};

/* An I32 result against the golden I32 tensor: equal, shape and values. */
static void gold_cmp_i32(const char *what, kiln_tensor *got, const golden_tensor *ref) {
    if (!ref || !got) return;
    CHECK(kiln_tensor_dtype(got) == KILN_I32 && kiln_tensor_ndim(got) == ref->ndim &&
              (ref->ndim == 0 || memcmp(kiln_tensor_shape(got), ref->shape, sizeof(int64_t) * (size_t)ref->ndim) == 0),
          "%s: dtype or shape differs from PyTorch's", what);
    if (kiln_tensor_numel(got) != ref->numel || !ref->is_int) return;
    int32_t *h = malloc(sizeof(int32_t) * cap1(ref->numel));
    CHECK(kiln_to_host(got, h, sizeof(int32_t) * (size_t)ref->numel) == KILN_OK, "%s: %s", what,
          kiln_error_message(kiln_tensor_ctx(got)));
    int64_t bad = 0;
    for (int64_t k = 0; k < ref->numel; k++)
        if (h[k] != ref->i[k] && bad++ == 0)
            fprintf(stderr, "  %s: element %lld: got %d, PyTorch %d\n", what, (long long)k, h[k], ref->i[k]);
    CHECK(bad == 0, "%s: %lld of %lld indices differ from PyTorch's", what, (long long)bad, (long long)ref->numel);
    free(h);
}

static void test_golden(kiln_ctx *ctx) {
    golden g;
    if (!golden_open(&g, "reduce")) return;
    for (size_t k = 0; k < sizeof gold_red_cases / sizeof gold_red_cases[0]; k++) {
        const char *c = gold_red_cases[k].c;
        op_t op = gold_red_cases[k].op;
        int na = gold_red_cases[k].naxes;
        const int *ax = gold_red_cases[k].axes;
        bool kd = gold_red_cases[k].keepdim;
        char name[160], what[200];
        kiln_scope_begin(ctx);
        snprintf(name, sizeof name, "%s.x", c);
        kiln_tensor *x = golden_upload(ctx, golden_get(&g, name));
        if (gold_red_cases[k].nc) x = kiln_transpose(ctx, x, 0, 2);
        if (op != OP_ARGMAX) kiln_tensor_set_requires_grad(x, true);
        kiln_tensor *out = op == OP_SUM    ? kiln_sum(ctx, x, na, ax, kd)
                           : op == OP_MEAN ? kiln_mean(ctx, x, na, ax, kd)
                           : op == OP_MAX  ? kiln_max(ctx, x, na, ax, kd)
                           : op == OP_MIN  ? kiln_min(ctx, x, na, ax, kd)
                                           : kiln_argmax(ctx, x, ax[0], kd);
        CHECK(out != NULL, "%sgolden %s: %s", layout_name, c, kiln_error_message(ctx));
        snprintf(name, sizeof name, "%s.out", c);
        snprintf(what, sizeof what, "%sgolden %s output", layout_name, c);
        int64_t n = out && kiln_tensor_numel(out) ? kiln_tensor_numel(x) / kiln_tensor_numel(out) : 1;
        double d = fmin((double)(n - 1), sum_depth(n));
        char mname[160];
        snprintf(mname, sizeof mname, "%s.mout", c);
        if (out && op == OP_ARGMAX) {
            gold_cmp_i32(what, out, golden_get(&g, name));
        } else if (out && op == OP_SUM) {
            golden_compare_scaled(what, out, golden_get(&g, name), golden_get(&g, mname), 0, d + 1, 0);
        } else if (out && op == OP_MEAN) {
            golden_compare_scaled(what, out, golden_get(&g, name), golden_get(&g, mname), 0, d, 6);
        } else if (out) {
            golden_compare_scaled(what, out, golden_get(&g, name), NULL, 0, 0, 0);
        }
        if (out && op != OP_ARGMAX) {
            snprintf(name, sizeof name, "%s.g", c);
            kiln_tensor *seed = golden_upload(ctx, golden_get(&g, name));
            CHECK(seed && kiln_backward_ex(out, seed, false) == KILN_OK, "%sgolden %s backward: %s", layout_name, c,
                  kiln_error_message(ctx));
            snprintf(name, sizeof name, "%s.dx", c);
            snprintf(what, sizeof what, "%sgolden %s dx", layout_name, c);
            double nr = op == OP_SUM ? 0 : op == OP_MEAN ? 3 : 6;
            golden_compare_scaled(what, kiln_tensor_grad(x), golden_get(&g, name), NULL, 0, 0, nr);
        }
        kiln_scope_end(ctx);
        CHECK_OK(ctx);
        kiln_error_clear(ctx);
    }
    golden_close(&g);
}

static void run(kiln_ctx *ctx) {
    /* Every tensor gets sentinels before and after its payload, so outputs start at a
     * non-zero offset and out-of-bounds writes are caught (checked in each test). */
    kiln__set_guard(ctx, 67);
    /* Both layouts on every device: GPU-style (neighbouring work-items read neighbouring
     * elements, work-groups for strided rows) and CPU-style (blocks per work-item, a
     * work-item per output sooner), so that a CPU-only CI still runs the GPU paths. */
    const char *names[3] = {"", "[gpu layout] ", "[cpu layout] "};
    for (int layout = 1; layout <= 2; layout++) {
        kiln__hooks_of(ctx)->reduce_layout = layout; /* 1 = as on a GPU, 2 = as on a CPU */
        layout_name = names[layout];
        test_small(ctx);
        test_shapes(ctx);
        test_empty(ctx);
        test_special(ctx);
        test_long(ctx);
        test_golden(ctx);
        test_row_vectors(ctx);
    }
    kiln__hooks_of(ctx)->reduce_layout = 0;
    layout_name = names[0];
    test_errors(ctx);
    kiln__set_guard(ctx, 0);
}

int main(void) {
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}

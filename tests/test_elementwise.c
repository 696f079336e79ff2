/* tests/test_elementwise.c - every elementwise op (binary, where, unary, tensor-scalar)
 * against a plain-C double-precision reference, over odd shapes, views and broadcasting,
 * with NaN/Inf inputs, guard regions around every storage, and the error paths; and against
 * PyTorch golden outputs and gradients (tests/golden/gen_elementwise.py, test_golden).
 *
 * References read the inputs through the harness's own view model (h_view, h_at_bcast),
 * not through kiln's strides, so a wrong stride or offset in kiln shows up as a mismatch.
 *
 * Tolerances (normalised error |got - ref| / (atol + rtol*|ref|) <= 1; NaN/Inf exact):
 *   exact (atol = rtol = 0), the reference rounded once to float:
 *     add sub mul, add_scalar mul_scalar: OpenCL requires +, -, * correctly rounded, and a
 *       double result rounded to float is the correctly rounded float result (53 >= 2*24+2,
 *       so the double rounding is innocuous);
 *     neg abs minimum maximum (and _scalar) where: they select or flip the sign of an
 *       input, no rounding at all;
 *     eq ne lt le gt ge: 1.0 or 0.0, no rounding.
 *   ulp-bounded, from the OpenCL 1.2 full-profile table (section 7.4) for single precision:
 *     div 2.5 ulp, sqrt 3 ulp, exp 3 ulp, log 3 ulp, pow and pow_scalar 16 ulp.
 *     One ulp of a float r is at most 2^-23 |r|, so rtol = n_ulp * 2^-23 (FLT_EPSILON).
 *     atol = FLT_MIN: the full profile lets a device without CL_FP_DENORM flush results
 *     below FLT_MIN to zero; the reference is taken to +-inf where float overflows.
 */
#include <float.h>

#include "golden.h"
#include "harness.h"

/* ---- operands: a host base buffer, a kiln view of it, and the harness's model ------- */

typedef h_tf tf; /* the harness's view steps */

typedef struct vspec {
    int ndim; /* rank of the contiguous base tensor */
    int64_t shape[4];
    tf tf[2]; /* applied in order */
} vspec;

typedef struct operand {
    float *base;
    h_view hv;
    kiln_tensor *t;
} operand;

/* Data generators, per op and operand. */
enum { G_UNIFORM, G_QUANT, G_AWAY, G_COND };

static float gen_value(int gen, float lo, float hi) {
    switch (gen) {
    case G_QUANT: /* multiples of 0.5: ties are frequent, so eq/min/max see equal pairs */
        return floorf(h_uniform(lo, hi) * 2.0f) * 0.5f;
    case G_AWAY: { /* |x| in [lo, hi), random sign: denominators away from 0 */
        float x = h_uniform(lo, hi);
        return h_uniform(0, 1) < 0.5f ? -x : x;
    }
    case G_COND: /* half zeros (some -0), half arbitrary non-zero */
        if (h_uniform(0, 1) < 0.5f) return h_uniform(0, 1) < 0.5f ? 0.0f : -0.0f;
        return h_uniform(0, 1) < 0.5f ? h_uniform(0.25f, 2) : -h_uniform(0.25f, 2);
    default: return h_uniform(lo, hi);
    }
}

static bool make_operand(kiln_ctx *ctx, const vspec *s, int gen, float lo, float hi, operand *o) {
    int64_t n = h_numel(s->ndim, s->shape);
    o->base = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++) o->base[i] = gen_value(gen, lo, hi);
    o->t = kiln_from_host(ctx, o->base, KILN_F32, s->ndim, s->shape);
    o->hv = h_contig(s->ndim, s->shape);
    o->t = h_view_build(ctx, o->t, &o->hv, 2, s->tf);
    CHECK(o->t != NULL, "making an operand: %s", kiln_error_message(ctx));
    return o->t != NULL;
}

/* ---- ops and their references ------------------------------------------------------- */

enum { K_BIN, K_UN, K_SCALAR };

typedef struct op_desc {
    const char *name;
    int kind;
    kiln_tensor *(*bin)(kiln_ctx *, kiln_tensor *, kiln_tensor *);
    kiln_tensor *(*un)(kiln_ctx *, kiln_tensor *);
    kiln_tensor *(*sc)(kiln_ctx *, kiln_tensor *, float);
    double (*ref)(double x, double y); /* y: second operand or scalar */
    double ulps;                       /* 0: exact */
    int gen[2];
    float lo[2], hi[2];
} op_desc;

static double r_add(double x, double y) { return x + y; }
static double r_sub(double x, double y) { return x - y; }
static double r_mul(double x, double y) { return x * y; }
static double r_div(double x, double y) { return x / y; }
static double r_pow(double x, double y) { return pow(x, y); }
static double r_min(double x, double y) { return isnan(x) || isnan(y) ? NAN : (x < y ? x : y); }
static double r_max(double x, double y) { return isnan(x) || isnan(y) ? NAN : (x > y ? x : y); }
static double r_eq(double x, double y) { return x == y; }
static double r_ne(double x, double y) { return x != y; }
static double r_lt(double x, double y) { return x < y; }
static double r_le(double x, double y) { return x <= y; }
static double r_gt(double x, double y) { return x > y; }
static double r_ge(double x, double y) { return x >= y; }
static double r_neg(double x, double y) {
    (void)y;
    return -x;
}
static double r_exp(double x, double y) {
    (void)y;
    return exp(x);
}
static double r_log(double x, double y) {
    (void)y;
    return log(x);
}
static double r_sqrt(double x, double y) {
    (void)y;
    return sqrt(x);
}
static double r_abs(double x, double y) {
    (void)y;
    return fabs(x);
}

#define BIN(f, r, u, g0, lo0, hi0, g1, lo1, hi1)                                                                       \
    {                                                                                                                  \
#f, K_BIN, kiln_##f, NULL, NULL, r, u, {g0, g1 }, {lo0, lo1 }, { hi0, hi1 }                                    \
    }
#define UN(f, r, u, g0, lo0, hi0)                                                                                      \
    {                                                                                                                  \
#f, K_UN, NULL, kiln_##f, NULL, r, u, {g0, 0 }, {lo0, 0 }, { hi0, 0 }                                          \
    }
#define SC(f, r, u, g0, lo0, hi0)                                                                                      \
    {                                                                                                                  \
#f, K_SCALAR, NULL, NULL, kiln_##f, r, u, {g0, 0 }, {lo0, 0 }, { hi0, 0 }                                      \
    }

static const op_desc ops[] = {
    BIN(add, r_add, 0, G_UNIFORM, -3, 3, G_UNIFORM, -3, 3),
    BIN(sub, r_sub, 0, G_UNIFORM, -3, 3, G_UNIFORM, -3, 3),
    BIN(mul, r_mul, 0, G_UNIFORM, -3, 3, G_UNIFORM, -3, 3),
    BIN(div, r_div, 2.5, G_UNIFORM, -3, 3, G_AWAY, 0.25f, 3),
    BIN(pow, r_pow, 16, G_UNIFORM, 0.05f, 4, G_UNIFORM, -4, 4),
    BIN(minimum, r_min, 0, G_QUANT, -2, 2, G_QUANT, -2, 2),
    BIN(maximum, r_max, 0, G_QUANT, -2, 2, G_QUANT, -2, 2),
    BIN(eq, r_eq, 0, G_QUANT, -2, 2, G_QUANT, -2, 2),
    BIN(ne, r_ne, 0, G_QUANT, -2, 2, G_QUANT, -2, 2),
    BIN(lt, r_lt, 0, G_QUANT, -2, 2, G_QUANT, -2, 2),
    BIN(le, r_le, 0, G_QUANT, -2, 2, G_QUANT, -2, 2),
    BIN(gt, r_gt, 0, G_QUANT, -2, 2, G_QUANT, -2, 2),
    BIN(ge, r_ge, 0, G_QUANT, -2, 2, G_QUANT, -2, 2),
    UN(neg, r_neg, 0, G_UNIFORM, -3, 3),
    UN(exp, r_exp, 3, G_UNIFORM, -30, 30),
    UN(log, r_log, 3, G_UNIFORM, 1e-3f, 100),
    UN(sqrt, r_sqrt, 3, G_UNIFORM, 0, 100),
    UN(abs, r_abs, 0, G_UNIFORM, -3, 3),
    SC(add_scalar, r_add, 0, G_UNIFORM, -3, 3),
    SC(mul_scalar, r_mul, 0, G_UNIFORM, -3, 3),
    SC(pow_scalar, r_pow, 16, G_UNIFORM, 0.05f, 4),
    SC(minimum_scalar, r_min, 0, G_QUANT, -2, 2),
    SC(maximum_scalar, r_max, 0, G_QUANT, -2, 2),
};
#define NOPS (sizeof ops / sizeof ops[0])

/* Scalars each tensor-scalar op is run with on the shape table. */
static const float scalars[] = {1.5f, -2.5f, 0.5f, 3.0f};

/* The reference of one element, brought to what float can hold: exact ops are rounded to
 * float (their result must match bit for bit, up to the sign of zero); ulp-bounded ops keep
 * the double value, except where float overflows to infinity. */
static double finish_ref(const op_desc *op, double r) {
    float f = (float)r;
    if (op->ulps == 0 || (isinf(f) && !isinf(r))) return (double)f;
    return r;
}

static void compare(const op_desc *op, const char *what, const float *got, const double *ref, int64_t n) {
    if (op->ulps == 0)
        h_compare(what, got, ref, n, 0, 0);
    else
        h_compare(what, got, ref, n, FLT_MIN, op->ulps * FLT_EPSILON);
}

/* ---- the shape table ---------------------------------------------------------------- */

#define V0                                                                                                             \
    {                                                                                                                  \
        0, {0}, {                                                                                                      \
            { 0 }                                                                                                      \
        }                                                                                                              \
    }
#define V(n, ...)                                                                                                      \
    {                                                                                                                  \
        n, {__VA_ARGS__}, {                                                                                            \
            { 0 }                                                                                                      \
        }                                                                                                              \
    }
#define VT(n, a, b, ...)                                                                                               \
    {                                                                                                                  \
        n, {__VA_ARGS__}, {                                                                                            \
            {                                                                                                          \
                TF_T, { a, b }                                                                                         \
            }                                                                                                          \
        }                                                                                                              \
    }
#define VS(n, d, s, e, st, ...)                                                                                        \
    {                                                                                                                  \
        n, {__VA_ARGS__}, {                                                                                            \
            {                                                                                                          \
                TF_S, { d, s, e, st }                                                                                  \
            }                                                                                                          \
        }                                                                                                              \
    }

typedef struct bcase {
    const char *name;
    vspec in[2];
    int ondim;
    int64_t oshape[4];
} bcase;

static const bcase cases[] = {
    {"0-d", {V0, V0}, 0, {0}},
    {"one element", {V(1, 1), V(1, 1)}, 1, {1}},
    {"1-D prime", {V(1, 13), V(1, 13)}, 1, {13}},
    {"5x7x11", {V(3, 5, 7, 11), V(3, 5, 7, 11)}, 3, {5, 7, 11}},
    {"empty", {V(2, 0, 3), V(2, 0, 3)}, 2, {0, 3}},
    {"empty broadcast", {V(2, 5, 0), V(2, 5, 1)}, 2, {5, 0}},
    {"several work-groups", {V(1, 4099), V(1, 4099)}, 1, {4099}},
    {"transposed", {VT(2, 0, 1, 11, 7), V(2, 7, 11)}, 2, {7, 11}},
    {"both transposed 3-D", {VT(3, 0, 2, 11, 7, 5), VT(3, 1, 2, 5, 11, 7)}, 3, {5, 7, 11}},
    {"sliced with step", {VS(3, 1, 0, 14, 2, 5, 14, 11), VS(3, 2, 1, 23, 2, 5, 7, 23)}, 3, {5, 7, 11}},
    {"offset, contiguous", {VS(3, 0, 1, 6, 1, 6, 7, 11), VS(3, 0, 2, 7, 1, 8, 7, 11)}, 3, {5, 7, 11}},
    {"offset with rank promotion", {VS(1, 0, 2, 13, 1, 20), VS(2, 0, 3, 10, 1, 11, 11)}, 2, {7, 11}},
    {"broadcast every axis", {V(3, 5, 1, 11), V(3, 1, 7, 1)}, 3, {5, 7, 11}},
    {"rank promotion [7,1] x 3-D", {V(2, 7, 1), V(3, 5, 7, 11)}, 3, {5, 7, 11}},
    {"[1] x 3-D", {V(1, 1), V(3, 5, 7, 11)}, 3, {5, 7, 11}},
    {"3-D x 0-d", {V(3, 5, 7, 11), V0}, 3, {5, 7, 11}},
    {"3-D x [11]", {V(3, 5, 7, 11), V(1, 11)}, 3, {5, 7, 11}},
    {"expanded (stride 0) view", {{2, {1, 11}, {{TF_E, {3, 5, 7, 11}}}}, V(3, 5, 7, 11)}, 3, {5, 7, 11}},
    {"broadcast of a transposed slice",
     {{3, {11, 1, 10}, {{TF_T, {0, 2}}, {TF_S, {0, 1, 10, 2}}}}, V(2, 7, 1)},
     3,
     {5, 7, 11}},
    {"4-D broadcast", {V(4, 2, 3, 1, 5), V(3, 3, 4, 1)}, 4, {2, 3, 4, 5}},
    {"large broadcast", {V(2, 1031, 1), V(2, 1, 3)}, 2, {1031, 3}},
    {"large transposed", {VT(2, 0, 1, 67, 64), V(2, 64, 67)}, 2, {64, 67}},
};
#define NCASES (sizeof cases / sizeof cases[0])

static void free_operands(operand *o, int n) {
    for (int j = 0; j < n; j++) free(o[j].base);
}

/* Runs op on case c (scalar s for tensor-scalar ops) and compares with the reference. */
static void run_case(kiln_ctx *ctx, const op_desc *op, const bcase *c, float s) {
    char what[200];
    snprintf(what, sizeof what, "kiln_%s, %s%s", op->name, c->name, op->kind == K_SCALAR ? ", scalar" : "");
    if (op->kind == K_SCALAR) snprintf(what + strlen(what), sizeof what - strlen(what), " %g", (double)s);
    int nin = op->kind == K_BIN ? 2 : 1;
    operand o[2] = {{0}};
    bool ok = true;
    for (int j = 0; j < nin; j++) ok &= make_operand(ctx, &c->in[j], op->gen[j], op->lo[j], op->hi[j], &o[j]);
    if (!ok) {
        free_operands(o, nin);
        kiln_error_clear(ctx);
        return;
    }
    kiln_tensor *out = op->kind == K_BIN  ? op->bin(ctx, o[0].t, o[1].t)
                       : op->kind == K_UN ? op->un(ctx, o[0].t)
                                          : op->sc(ctx, o[0].t, s);
    /* unary ops keep the operand's (view) shape */
    int ondim = nin == 2 ? c->ondim : o[0].hv.ndim;
    const int64_t *oshape = nin == 2 ? c->oshape : o[0].hv.shape;
    CHECK(out != NULL, "%s: %s", what, kiln_error_message(ctx));
    if (out) {
        CHECK(kiln_tensor_ndim(out) == ondim &&
                  (ondim == 0 || memcmp(kiln_tensor_shape(out), oshape, sizeof(int64_t) * (size_t)ondim) == 0),
              "%s: wrong output shape", what);
        int64_t n = h_numel(ondim, oshape);
        CHECK(kiln_tensor_is_contiguous(out), "%s: output not contiguous", what);
        float *got = h_read(out);
        double *ref = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
        for (int64_t i = 0; i < n; i++) {
            double x = h_at_bcast(o[0].base, &o[0].hv, ondim, oshape, i);
            double y = nin == 2 ? h_at_bcast(o[1].base, &o[1].hv, ondim, oshape, i) : (double)s;
            ref[i] = finish_ref(op, op->ref(x, y));
        }
        compare(op, what, got, ref, n);
        free(got);
        free(ref);
    }
    kiln_error_clear(ctx);
    free_operands(o, nin);
}

/* where(cond, a, b): the binary cases with cond shaped as the second operand, plus
 * three-way broadcasts. */
typedef struct wcase {
    const char *name;
    vspec in[3]; /* cond, a, b */
    int ondim;
    int64_t oshape[4];
} wcase;

static const wcase wcases[] = {
    {"3-way broadcast every axis", {V(3, 5, 1, 1), V(3, 1, 7, 1), V(3, 1, 1, 11)}, 3, {5, 7, 11}},
    {"3-way rank promotion", {V(1, 11), V(2, 7, 1), V(3, 5, 1, 1)}, 3, {5, 7, 11}},
    {"3-way views", {VT(2, 0, 1, 11, 7), VS(2, 1, 2, 24, 2, 7, 24), V0}, 2, {7, 11}},
    {"3-way large", {V(2, 1031, 1), V(1, 3), VT(2, 0, 1, 3, 1031)}, 2, {1031, 3}},
};

static void run_where(kiln_ctx *ctx, const char *name, const vspec *sc, const vspec *sa, const vspec *sb, int ondim,
                      const int64_t *oshape) {
    char what[200];
    snprintf(what, sizeof what, "kiln_where, %s", name);
    operand o[3] = {{0}};
    bool ok = make_operand(ctx, sc, G_COND, 0, 0, &o[0]);
    ok &= make_operand(ctx, sa, G_UNIFORM, -3, 3, &o[1]);
    ok &= make_operand(ctx, sb, G_UNIFORM, -3, 3, &o[2]);
    if (!ok) {
        free_operands(o, 3);
        kiln_error_clear(ctx);
        return;
    }
    kiln_tensor *out = kiln_where(ctx, o[0].t, o[1].t, o[2].t);
    CHECK(out != NULL, "%s: %s", what, kiln_error_message(ctx));
    if (out) {
        CHECK(kiln_tensor_ndim(out) == ondim &&
                  (ondim == 0 || memcmp(kiln_tensor_shape(out), oshape, sizeof(int64_t) * (size_t)ondim) == 0),
              "%s: wrong output shape", what);
        int64_t n = h_numel(ondim, oshape);
        float *got = h_read(out);
        double *ref = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
        for (int64_t i = 0; i < n; i++) {
            double c = h_at_bcast(o[0].base, &o[0].hv, ondim, oshape, i);
            ref[i] = c != 0 ? h_at_bcast(o[1].base, &o[1].hv, ondim, oshape, i)
                            : h_at_bcast(o[2].base, &o[2].hv, ondim, oshape, i);
        }
        h_compare(what, got, ref, n, 0, 0); /* a selection: exact */
        free(got);
        free(ref);
    }
    kiln_error_clear(ctx);
    free_operands(o, 3);
}

/* Every op over the shape table, with sentinels around every storage. */
static void test_shapes(kiln_ctx *ctx) {
    kiln__set_guard(ctx, 67);
    for (size_t k = 0; k < NOPS; k++) {
        const op_desc *op = &ops[k];
        int nscalars = op->kind == K_SCALAR ? (int)(sizeof scalars / sizeof scalars[0]) : 1;
        for (size_t c = 0; c < NCASES; c++) {
            for (int si = 0; si < nscalars; si++) {
                kiln_scope_begin(ctx);
                run_case(ctx, op, &cases[c], scalars[si]);
                char msg[256];
                int bad = kiln__check_guards(ctx, msg, sizeof msg);
                CHECK(bad == 0, "kiln_%s, %s: %d guard regions overwritten: %s", op->name, cases[c].name, bad, msg);
                kiln_scope_end(ctx);
            }
        }
    }
    for (size_t c = 0; c < NCASES; c++) {
        kiln_scope_begin(ctx);
        run_where(ctx, cases[c].name, &cases[c].in[1], &cases[c].in[0], &cases[c].in[1], cases[c].ondim,
                  cases[c].oshape);
        kiln_scope_end(ctx);
    }
    kiln_scope_begin(ctx);
    for (size_t c = 0; c < sizeof wcases / sizeof wcases[0]; c++)
        run_where(ctx, wcases[c].name, &wcases[c].in[0], &wcases[c].in[1], &wcases[c].in[2], wcases[c].ondim,
                  wcases[c].oshape);
    char msg[256];
    int bad = kiln__check_guards(ctx, msg, sizeof msg);
    CHECK(bad == 0, "kiln_where: %d guard regions overwritten: %s", bad, msg);
    kiln_scope_end(ctx);
    kiln__set_guard(ctx, 0);
    CHECK_OK(ctx);
}

/* ---- NaN, Inf, signed zeros, overflow, underflow ------------------------------------ */

static const float specials[] = {0.0f,    -0.0f, 1.0f,  -1.0f,  2.0f,   -2.5f,    0.5f,      3.0f, 100.0f,
                                 -100.0f, 88.8f, 1e30f, -1e30f, 1e-30f, INFINITY, -INFINITY, NAN};
#define NSPEC ((int64_t)(sizeof specials / sizeof specials[0]))

/* Binary ops on every pair of specials ([N,1] against [1,N]); unary ops on each; scalar
 * ops with each special as the scalar too. log(<0) = NaN, log(0) = -inf, exp(88.8) = inf,
 * 0/0 = NaN, x/0 = +-inf, pow edge cases as C99 Annex F, NaN through minimum/maximum. */
static void test_specials(kiln_ctx *ctx) {
    kiln__set_guard(ctx, 67);
    kiln_scope_begin(ctx);
    kiln_tensor *col = kiln_from_host(ctx, specials, KILN_F32, 2, (int64_t[]){NSPEC, 1});
    kiln_tensor *row = kiln_from_host(ctx, specials, KILN_F32, 2, (int64_t[]){1, NSPEC});
    kiln_tensor *vec = kiln_from_host(ctx, specials, KILN_F32, 1, (int64_t[]){NSPEC});
    double ref[NSPEC * NSPEC];
    char what[160];
    for (size_t k = 0; k < NOPS; k++) {
        const op_desc *op = &ops[k];
        int nruns = op->kind == K_SCALAR ? (int)NSPEC : 1;
        for (int r = 0; r < nruns; r++) {
            kiln_tensor *out;
            int64_t n;
            if (op->kind == K_BIN) {
                out = op->bin(ctx, col, row);
                n = NSPEC * NSPEC;
                for (int64_t i = 0; i < n; i++)
                    ref[i] = finish_ref(op, op->ref(specials[i / NSPEC], specials[i % NSPEC]));
                snprintf(what, sizeof what, "kiln_%s on special pairs", op->name);
            } else {
                float s = op->kind == K_SCALAR ? specials[r] : 0.0f;
                out = op->kind == K_UN ? op->un(ctx, vec) : op->sc(ctx, vec, s);
                n = NSPEC;
                for (int64_t i = 0; i < n; i++) ref[i] = finish_ref(op, op->ref(specials[i], s));
                snprintf(what, sizeof what, "kiln_%s on specials%s%g", op->name,
                         op->kind == K_SCALAR ? ", scalar " : "", (double)s);
            }
            CHECK(out != NULL, "%s: %s", what, kiln_error_message(ctx));
            if (!out) continue;
            float *got = h_read(out);
            compare(op, what, got, ref, n);
            free(got);
            kiln_tensor_free(out);
        }
    }
    /* where with special conditions (NaN counts as true, -0 as false) and special values */
    kiln_tensor *c3 = kiln_from_host(ctx, specials, KILN_F32, 3, (int64_t[]){NSPEC, 1, 1});
    kiln_tensor *a3 = kiln_from_host(ctx, specials, KILN_F32, 2, (int64_t[]){NSPEC, 1});
    kiln_tensor *out = kiln_where(ctx, c3, a3, row);
    CHECK(out != NULL, "where on specials: %s", kiln_error_message(ctx));
    if (out) {
        int64_t n = NSPEC * NSPEC * NSPEC;
        double *wr = malloc(sizeof(double) * (size_t)n);
        for (int64_t i = 0; i < n; i++)
            wr[i] = specials[i / (NSPEC * NSPEC)] != 0 ? specials[(i / NSPEC) % NSPEC] : specials[i % NSPEC];
        float *got = h_read(out);
        h_compare("kiln_where on specials", got, wr, n, 0, 0);
        free(got);
        free(wr);
    }
    /* a few values spelled out, so a reference bug cannot hide a kernel bug */
    float h[NSPEC];
    kiln_tensor *lg = kiln_log(ctx, vec);
    if (lg && kiln_to_host(lg, h, sizeof h) == KILN_OK)
        CHECK(isinf(h[0]) && h[0] < 0 && isnan(h[3]) && h[2] == 0.0f && isnan(h[16]),
              "log(0)=%g log(-1)=%g "
              "log(1)=%g log(nan)=%g",
              h[0], h[3], h[2], h[16]);
    kiln_tensor *ex = kiln_exp(ctx, vec);
    if (ex && kiln_to_host(ex, h, sizeof h) == KILN_OK)
        CHECK(isinf(h[10]) && h[10] > 0 && h[15] == 0.0f && h[0] == 1.0f, "exp(88.8)=%g exp(-inf)=%g exp(0)=%g", h[10],
              h[15], h[0]);
    kiln_tensor *mn = kiln_minimum_scalar(ctx, vec, NAN);
    int nn = 0;
    if (mn && kiln_to_host(mn, h, sizeof h) == KILN_OK)
        for (int i = 0; i < NSPEC; i++) nn += isnan(h[i]);
    CHECK(nn == NSPEC, "minimum with NaN is NaN everywhere (%d of %lld)", nn, (long long)NSPEC);
    char msg[256];
    int bad = kiln__check_guards(ctx, msg, sizeof msg);
    CHECK(bad == 0, "specials: %d guard regions overwritten: %s", bad, msg);
    kiln_scope_end(ctx);
    kiln__set_guard(ctx, 0);
    CHECK_OK(ctx);
}

/* Inputs are read, never written; outputs are fresh tensors. */
static void test_inputs_untouched(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    float x[35], y[35], got[35];
    h_fill(x, 35, -2, 2);
    h_fill(y, 35, 0.5f, 2);
    kiln_tensor *a = kiln_from_host(ctx, x, KILN_F32, 2, (int64_t[]){5, 7});
    kiln_tensor *b = kiln_from_host(ctx, y, KILN_F32, 2, (int64_t[]){5, 7});
    kiln_tensor *r = kiln_div(ctx, kiln_add(ctx, a, b), kiln_sqrt(ctx, b));
    r = kiln_where(ctx, kiln_gt(ctx, r, a), kiln_exp(ctx, kiln_neg(ctx, a)), kiln_pow_scalar(ctx, r, 2));
    CHECK(r != NULL, "chain: %s", kiln_error_message(ctx));
    CHECK(kiln_to_host(a, got, sizeof got) == KILN_OK && memcmp(got, x, sizeof x) == 0, "input a changed");
    CHECK(kiln_to_host(b, got, sizeof got) == KILN_OK && memcmp(got, y, sizeof y) == 0, "input b changed");
    kiln_tensor *same = kiln_add(ctx, a, a);
    CHECK(same && same != a && kiln_tensor_offset(same) >= 0, "add(a, a) is a new tensor");
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

/* ---- errors ------------------------------------------------------------------------- */

static void test_errors(kiln_ctx *ctx) {
    kiln_error_clear(ctx);
    kiln_scope_begin(ctx);
    kiln_tensor *a = kiln_ones(ctx, 2, (int64_t[]){2, 3});
    kiln_tensor *b = kiln_ones(ctx, 1, (int64_t[]){4});
    kiln_tensor *c = kiln_ones(ctx, 3, (int64_t[]){5, 7, 11});
    int64_t live = kiln_ctx_num_tensors(ctx);

    /* shape mismatch names the op and both shapes, and leaves no tensor behind */
    CHECK(kiln_add(ctx, a, b) == NULL && kiln_error_status(ctx) == KILN_ERR_SHAPE, "[2,3] + [4] must fail: %s",
          kiln_status_name(kiln_error_status(ctx)));
    const char *m = kiln_error_message(ctx);
    CHECK(strstr(m, "kiln_add") && strstr(m, "[2, 3]") && strstr(m, "[4]"), "message: %s", m);
    CHECK(kiln_ctx_num_tensors(ctx) == live, "a failed op left %lld tensors",
          (long long)(kiln_ctx_num_tensors(ctx) - live));
    kiln_error_clear(ctx);
    CHECK(kiln_ge(ctx, c, a) == NULL && kiln_error_status(ctx) == KILN_ERR_SHAPE, "[5,7,11] >= [2,3] must fail");
    m = kiln_error_message(ctx);
    CHECK(strstr(m, "kiln_ge") && strstr(m, "[5, 7, 11]") && strstr(m, "[2, 3]"), "message: %s", m);
    kiln_error_clear(ctx);
    kiln_tensor *e = kiln_zeros(ctx, 1, (int64_t[]){0});
    CHECK(kiln_mul(ctx, e, kiln_ones(ctx, 1, (int64_t[]){5})) == NULL && kiln_error_status(ctx) == KILN_ERR_SHAPE,
          "[0] * [5] must fail (0 does not broadcast to 5)");
    kiln_error_clear(ctx);
    CHECK(kiln_where(ctx, a, c, a) == NULL && kiln_error_status(ctx) == KILN_ERR_SHAPE, "where mismatch must fail");
    m = kiln_error_message(ctx);
    CHECK(strstr(m, "kiln_where") && strstr(m, "[5, 7, 11]") && strstr(m, "[2, 3]"), "message: %s", m);
    kiln_error_clear(ctx);

    /* NULL inputs: NULL at once; an error already held is kept */
    CHECK(kiln_add(NULL, a, a) == NULL, "NULL context");
    CHECK(kiln_add(ctx, NULL, a) == NULL && kiln_error_status(ctx) == KILN_ERR_NULL, "add(NULL, a): %s",
          kiln_status_name(kiln_error_status(ctx)));
    kiln_error_clear(ctx);
    kiln_tensor *bad = kiln_sub(ctx, a, b); /* the root cause */
    char saved[512];
    snprintf(saved, sizeof saved, "%s", kiln_error_message(ctx));
    kiln_tensor *chain = kiln_sqrt(ctx, kiln_maximum_scalar(ctx, kiln_where(ctx, a, bad, a), 0.0f));
    chain = kiln_mul(ctx, a, chain);
    CHECK(chain == NULL && kiln_error_status(ctx) == KILN_ERR_SHAPE && strcmp(kiln_error_message(ctx), saved) == 0,
          "a chain on a failed op keeps the first error: %s", kiln_error_message(ctx));
    CHECK(strstr(saved, "kiln_sub"), "root cause names kiln_sub: %s", saved);
    kiln_error_clear(ctx);

    /* dtype: only f32 */
    int32_t iv[6] = {1, 2, 3, 4, 5, 6};
    kiln_tensor *ti = kiln_from_host(ctx, iv, KILN_I32, 2, (int64_t[]){2, 3});
    live = kiln_ctx_num_tensors(ctx);
    CHECK(kiln_add(ctx, a, ti) == NULL && kiln_error_status(ctx) == KILN_ERR_DTYPE, "f32 + i32 must fail");
    m = kiln_error_message(ctx);
    CHECK(strstr(m, "kiln_add") && strstr(m, "i32"), "message names op and dtype: %s", m);
    kiln_error_clear(ctx);
    CHECK(kiln_exp(ctx, ti) == NULL && kiln_error_status(ctx) == KILN_ERR_DTYPE &&
              strstr(kiln_error_message(ctx), "kiln_exp") && strstr(kiln_error_message(ctx), "i32"),
          "exp(i32): %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(kiln_mul_scalar(ctx, ti, 2) == NULL && kiln_error_status(ctx) == KILN_ERR_DTYPE, "mul_scalar(i32)");
    kiln_error_clear(ctx);
    CHECK(kiln_where(ctx, ti, a, a) == NULL && kiln_error_status(ctx) == KILN_ERR_DTYPE, "where(i32 cond)");
    CHECK(kiln_ctx_num_tensors(ctx) == live, "dtype errors left tensors behind");
    kiln_error_clear(ctx);

    /* a tensor of another context */
    kiln_ctx *other;
    char spec[16];
    snprintf(spec, sizeof spec, "%d:%d", kiln_ctx_device(ctx)->platform_index, kiln_ctx_device(ctx)->device_index);
    if (kiln_open(&other, spec) == KILN_OK) {
        float one = 1;
        kiln_tensor *f = kiln_from_host(other, &one, KILN_F32, 0, NULL);
        CHECK(kiln_add(ctx, a, f) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT,
              "foreign tensor must fail: %s", kiln_error_message(ctx));
        kiln_error_clear(ctx);
        kiln_close(other);
    }

    /* an exhausted pool: the output allocation fails cleanly */
    live = kiln_ctx_num_tensors(ctx);
    kiln__pool_fail_after(ctx, 1);
    CHECK(kiln_add(ctx, c, c) == NULL && kiln_error_status(ctx) == KILN_ERR_OUT_OF_MEMORY, "OOM: %s",
          kiln_status_name(kiln_error_status(ctx)));
    CHECK(kiln_ctx_num_tensors(ctx) == live, "OOM left tensors behind");
    kiln__pool_fail_after(ctx, 0);
    kiln_error_clear(ctx);

    /* usable after clearing */
    kiln_tensor *ok = kiln_add_scalar(ctx, kiln_add(ctx, a, a), 0.5f);
    float h[6];
    CHECK(ok && kiln_to_host(ok, h, sizeof h) == KILN_OK && h[0] == 2.5f && h[5] == 2.5f,
          "context unusable after errors: %s", kiln_error_message(ctx));
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

/* ---- pow's gradient where it is singular ---------------------------------------------
 * torch's pow backward (tools/autograd/derivatives.yaml, pow_backward_self and
 * pow_backward_exponent) masks two cases: d/da = b a^(b-1) is 0 where b == 0 (0 * 0^-1
 * would be NaN at a = 0), d/db = a^b log a is 0 where a == 0 and b >= 0. The expected
 * values are torch 2.x's for a.grad, b.grad of pow(a, b).sum(). */
static void test_pow_grad_edges(kiln_ctx *ctx) {
    enum { N = 7 };
    const float av[N] = {0.0f, 0.0f, 0.0f, 2.0f, -1.0f, 0.0f, 3.0f};
    const float bv[N] = {0.0f, 1.0f, 2.0f, 0.0f, 2.0f, 0.5f, 2.0f};
    const float want_a[N] = {0.0f, 1.0f, 0.0f, 0.0f, -2.0f, INFINITY, 6.0f};
    const float want_b[N] = {0.0f, 0.0f, 0.0f, 0.69314718f, NAN, 0.0f, 9.8875106f};
    kiln_tensor *a = kiln_from_host(ctx, av, KILN_F32, 1, (int64_t[]){N});
    kiln_tensor *b = kiln_from_host(ctx, bv, KILN_F32, 1, (int64_t[]){N});
    kiln_tensor_set_requires_grad(a, true);
    kiln_tensor_set_requires_grad(b, true);
    kiln_scope_begin(ctx);
    kiln_tensor *y = kiln_sum(ctx, kiln_pow(ctx, a, b), 0, NULL, false);
    CHECK(y && kiln_backward(y) == KILN_OK, "pow backward: %s", kiln_error_message(ctx));
    float ga[N], gb[N];
    if (kiln_tensor_grad(a) && kiln_tensor_grad(b) && kiln_to_host(kiln_tensor_grad(a), ga, sizeof ga) == KILN_OK &&
        kiln_to_host(kiln_tensor_grad(b), gb, sizeof gb) == KILN_OK) {
        for (int i = 0; i < N; i++) {
            bool ok_a = isnan(want_a[i])
                            ? isnan(ga[i])
                            : fabsf(ga[i] - want_a[i]) <= 16 * FLT_EPSILON * fabsf(want_a[i]) || ga[i] == want_a[i];
            bool ok_b = isnan(want_b[i])
                            ? isnan(gb[i])
                            : fabsf(gb[i] - want_b[i]) <= 16 * FLT_EPSILON * fabsf(want_b[i]) || gb[i] == want_b[i];
            CHECK(ok_a, "d pow(%g, %g)/da = %g, torch %g", (double)av[i], (double)bv[i], (double)ga[i],
                  (double)want_a[i]);
            CHECK(ok_b, "d pow(%g, %g)/db = %g, torch %g", (double)av[i], (double)bv[i], (double)gb[i],
                  (double)want_b[i]);
        }
    } else {
        CHECK(false, "pow backward left no gradient: %s", kiln_error_message(ctx));
    }
    kiln_scope_end(ctx);
    kiln_tensor_free(a);
    kiln_tensor_free(b);
    CHECK_OK(ctx);
}

/* ---- PyTorch golden values (tests/golden/gen_elementwise.py) ----------------------------- */
/*
 * Each case's inputs are rebuilt from their contiguous golden bases with gold_layout's
 * views (the same steps as LAYOUTS in gen_elementwise.py). torch computes in float64 from
 * the same float32 inputs; the file holds that result rounded once to float32 (half an
 * ulp, 1 u = 2^-24 relative, of its own). Bounds, in u = 2^-24:
 *   output: exact where kiln's float result is exact or correctly rounded (the ops the
 *     header lists as exact: the correctly rounded float of the double result is what
 *     torch's rounding gives too); else kiln's OpenCL bound of n ulp (2n u) plus torch's
 *     rounding (1 u), relative to |ref|, and FLT_MIN absolute (flush to zero).
 *   gradient of an input broadcast over bc output elements: each of the bc terms is the
 *     seed times kiln's backward formula, off by t ulp (2t u) relative to the term; bc - 1
 *     float additions each add <= 1 u of the running sum, <= 1 u of the sum of |terms|;
 *     torch's rounding 1 u. So (2t + bc - 1 + 1) u * sum|terms| (the golden <case>.m<in>),
 *     and exact when bc == 1 and the term is one correctly rounded product (t <= 0.5) or
 *     exact (t = 0).
 * t per op (kiln's rules in src/ops/elementwise.c): add sub neg add_scalar, minimum maximum
 * where abs and the clamps (the seed times 0, 1/2, 1 or -1): 0; mul mul_scalar: 0.5 (one
 * product); div: 1/b 2.5, -(g/b)*out 2.5 + 2.5 + 0.5 = 5.5; pow: da = g*b*a^(b-1): the
 * rounded b-1 moves a^(b-1) by |ln a| |b-1| u <= 2.1 u for a in [0.5, 2], |b-1| <= 3
 * (~1 ulp), pow 16 ulp, two products: 18; db = g*out*log a: 16 + 3 + 2 * 0.5: 20 (the edge
 * case's values are integers and halves where these hold as well); exp: g*out 3.5; log:
 * g/a 2.5; sqrt: g/(2 out) 3 + 2.5 = 5.5; pow_scalar: g * s*a^(s-1) 16 + 1 = 17.
 */
enum { GL_PLAIN, GL_A_NC, GL_B_NC, GL_C_NC, GL_X_NC };
static const h_tf gold_layout[][2] = {
    [GL_PLAIN] = {{TF_NONE, {0}}, {TF_NONE, {0}}},
    [GL_A_NC] = {{TF_T, {0, 1}}, {TF_NONE, {0}}},       /* [4,3] -> [3,4] transposed */
    [GL_B_NC] = {{TF_S, {1, 1, 8, 2}}, {TF_NONE, {0}}}, /* [3,8] -> [3,4] every other column */
    [GL_C_NC] = {{TF_S, {0, 0, 6, 2}}, {TF_NONE, {0}}}, /* [6,4] -> [3,4] every other row */
    [GL_X_NC] = {{TF_T, {0, 1}}, {TF_S, {1, 0, 6, 2}}}, /* [6,4] -> [4,3] */
};

typedef struct gold_ew {
    const char *c; /* case name: keys "<c>.<input>", "<c>.out", ... */
    kiln_tensor *(*bin)(kiln_ctx *, kiln_tensor *, kiln_tensor *);
    kiln_tensor *(*un)(kiln_ctx *, kiln_tensor *);
    kiln_tensor *(*sc)(kiln_ctx *, kiln_tensor *, float); /* all three NULL: kiln_where */
    int lay[3];                                           /* gold_layout of each input */
    double fwd_ulp;                                       /* kiln's bound on the output, ulp (0: exact) */
    double term_ulp[2];                                   /* t of each differentiable input's gradient terms, ulp */
    bool grad;
} gold_ew;

#define GB(op, v, la, lb, f, ta, tb)                                                                                   \
    { #op "." v, kiln_##op, NULL, NULL, {la, lb, 0 }, f, {ta, tb }, true }
#define GBC(op, v, la, lb)                                                                                             \
    { #op "." v, kiln_##op, NULL, NULL, {la, lb, 0 }, 0, {0, 0 }, false }
#define GBIN(op, f, ta, tb) GB(op, "bc", GL_PLAIN, GL_PLAIN, f, ta, tb), GB(op, "nc", GL_A_NC, GL_B_NC, f, ta, tb)
#define GCMP(op) GBC(op, "bc", GL_PLAIN, GL_PLAIN), GBC(op, "nc", GL_A_NC, GL_B_NC)
#define GUN(op, f, t)                                                                                                  \
    {#op ".3d", NULL, kiln_##op, NULL, {GL_PLAIN, 0, 0}, f, {t, 0}, true}, {                                           \
#op ".nc", NULL, kiln_##op, NULL, {GL_X_NC, 0, 0 }, f, {t, 0 }, true                                           \
    }
#define GSC(op, v, f, t)                                                                                               \
    { #op "." v, NULL, NULL, kiln_##op, {GL_X_NC, 0, 0 }, f, {t, 0 }, true }

static const gold_ew gold_ew_cases[] = {
    GBIN(add, 0, 0, 0),
    GBIN(sub, 0, 0, 0),
    GBIN(mul, 0, 0.5, 0.5),
    GBIN(div, 2.5, 2.5, 5.5),
    GBIN(pow, 16, 18, 20),
    GB(pow, "edge", GL_PLAIN, GL_PLAIN, 16, 18, 20),
    GBIN(minimum, 0, 0, 0),
    GBIN(maximum, 0, 0, 0),
    GCMP(eq),
    GCMP(ne),
    GCMP(lt),
    GCMP(le),
    GCMP(gt),
    GCMP(ge),
    {"where.bc", NULL, NULL, NULL, {GL_PLAIN, GL_PLAIN, GL_PLAIN}, 0, {0, 0}, true},
    {"where.nc", NULL, NULL, NULL, {GL_C_NC, GL_A_NC, GL_B_NC}, 0, {0, 0}, true},
    GUN(neg, 0, 0),
    GUN(exp, 3, 3.5),
    GUN(log, 3, 2.5),
    GUN(sqrt, 3, 5.5),
    GUN(abs, 0, 0),
    GSC(add_scalar, "0", 0, 0),
    GSC(mul_scalar, "0", 0, 0.5),
    GSC(pow_scalar, "2", 16, 17),
    GSC(pow_scalar, "3", 16, 17),
    GSC(pow_scalar, "0.5", 16, 17),
    GSC(pow_scalar, "-1.5", 16, 17),
    GSC(pow_scalar, "0", 16, 17),
    GSC(minimum_scalar, "0", 0, 0),
    GSC(maximum_scalar, "0", 0, 0),
};

static void gold_ew_run(kiln_ctx *ctx, const golden *g, const gold_ew *e) {
    static const char *const bin_in[] = {"a", "b"}, *const un_in[] = {"x"}, *const where_in[] = {"c", "a", "b"};
    bool where = !e->bin && !e->un && !e->sc;
    int nin = where ? 3 : e->bin ? 2 : 1;
    const char *const *in = where ? where_in : e->bin ? bin_in : un_in;
    char name[160], what[200];
    kiln_scope_begin(ctx);
    kiln_tensor *x[3] = {NULL, NULL, NULL};
    for (int k = 0; k < nin; k++) {
        snprintf(name, sizeof name, "%s.%s", e->c, in[k]);
        const golden_tensor *b = golden_get(g, name);
        if (!b) break;
        h_view hv = h_contig(b->ndim, b->shape);
        x[k] = h_view_build(ctx, golden_upload(ctx, b), &hv, 2, gold_layout[e->lay[k]]);
        if (e->grad && !(where && k == 0)) kiln_tensor_set_requires_grad(x[k], true);
    }
    kiln_tensor *out = NULL;
    if (where)
        out = kiln_where(ctx, x[0], x[1], x[2]);
    else if (e->bin)
        out = e->bin(ctx, x[0], x[1]);
    else if (e->un)
        out = e->un(ctx, x[0]);
    else {
        snprintf(name, sizeof name, "%s.scalar", e->c);
        const golden_tensor *s = golden_get(g, name);
        out = s ? e->sc(ctx, x[0], s->f[0]) : NULL;
    }
    CHECK(out != NULL, "golden %s: %s", e->c, kiln_error_message(ctx));
    snprintf(name, sizeof name, "%s.out", e->c);
    snprintf(what, sizeof what, "golden %s output", e->c);
    double nr = e->fwd_ulp > 0 ? 2 * e->fwd_ulp + 1 : 0;
    if (out) golden_compare_scaled(what, out, golden_get(g, name), NULL, nr > 0 ? FLT_MIN : 0, 0, nr);
    if (out && e->grad) {
        snprintf(name, sizeof name, "%s.g", e->c);
        kiln_tensor *seed = golden_upload(ctx, golden_get(g, name));
        CHECK(seed && kiln_backward_ex(out, seed, false) == KILN_OK, "golden %s backward: %s", e->c,
              kiln_error_message(ctx));
        for (int k = where ? 1 : 0; k < nin; k++) {
            int64_t bc = kiln_tensor_numel(out) / kiln_tensor_numel(x[k]);
            double t = e->term_ulp[where ? 0 : k];
            double nm = bc == 1 && t <= 0.5 ? 0 : 2 * t + (double)(bc - 1) + 1;
            char mname[160];
            snprintf(name, sizeof name, "%s.d%s", e->c, in[k]);
            snprintf(mname, sizeof mname, "%s.m%s", e->c, in[k]);
            snprintf(what, sizeof what, "golden %s d%s", e->c, in[k]);
            golden_compare_scaled(what, kiln_tensor_grad(x[k]), golden_get(g, name), golden_get(g, mname),
                                  nm > 0 ? FLT_MIN : 0, nm, 0);
        }
    }
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
}

static void test_golden(kiln_ctx *ctx) {
    golden g;
    if (!golden_open(&g, "elementwise")) return;
    for (size_t k = 0; k < sizeof gold_ew_cases / sizeof gold_ew_cases[0]; k++) gold_ew_run(ctx, &g, &gold_ew_cases[k]);
    golden_close(&g);
}

static void run(kiln_ctx *ctx) {
    test_shapes(ctx);
    test_specials(ctx);
    test_inputs_untouched(ctx);
    test_pow_grad_edges(ctx);
    test_errors(ctx);
    test_golden(ctx);
}

int main(void) {
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}

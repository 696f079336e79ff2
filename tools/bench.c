/* tools/bench.c - `kiln bench`: GEMM against OpenBLAS on the same data, training steps of
 * the reference MLP, CNN and ResNet-20 (the recipes of torch_ref.py on random data),
 * start-up time with a cold and a warm cache, per-op times of the reference CNN's layers
 * or ResNet-20's blocks, and an ONNX model's inference beside PyTorch's.
 *
 * Every time is wall-clock with the device queue drained (kiln_sync) after the measured
 * work; medians after warm-up, so a first-call compile never counts except where it is the
 * point (start-up). Human lines by default, one JSON object per result with --json. */
#define _GNU_SOURCE
#include "bench.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef KILN_HAVE_OPENBLAS
#include <cblas.h>
#endif

#include "kiln_test_hooks.h" /* kiln__tune_source: what CLBlast parameters are in effect */
#include "ops/registry.h"    /* the ops' names */

/* ---- helpers -------------------------------------------------------------------------- */

double bench_now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double bench_median(double *v, int n) {
    if (n <= 0) return NAN;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* splitmix64: reproducible host data */
static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float rng_uniform(uint64_t *s) { return (float)(rng_next(s) >> 40) / (float)(1 << 24); }

/* Options: "--name value" or "--flag". */
typedef struct args {
    int argc;
    char **argv;
    bool bad;
} args;

static const char *arg_value(args *a, const char *name) {
    for (int i = 0; i < a->argc; i++) {
        if (strcmp(a->argv[i], name) != 0) continue;
        if (i + 1 >= a->argc) {
            fprintf(stderr, "kiln bench: %s needs a value\n", name);
            a->bad = true;
            return NULL;
        }
        return a->argv[i + 1];
    }
    return NULL;
}

static bool arg_flag(args *a, const char *name) {
    for (int i = 0; i < a->argc; i++)
        if (strcmp(a->argv[i], name) == 0) return true;
    return false;
}

static long arg_long(args *a, const char *name, long def, long lo, long hi) {
    const char *v = arg_value(a, name);
    if (!v) return def;
    char *end;
    long x = strtol(v, &end, 10);
    if (*end || end == v || x < lo || x > hi) {
        fprintf(stderr, "kiln bench: %s %s: expected an integer in [%ld, %ld]\n", name, v, lo, hi);
        a->bad = true;
        return def;
    }
    return x;
}

/* Fails on any option not in `valued` (takes a value) or `flags`; --json is always known. */
static bool args_check(args *a, const char *const *valued, const char *const *flags) {
    for (int i = 0; i < a->argc; i++) {
        bool ok = strcmp(a->argv[i], "--json") == 0;
        for (int j = 0; !ok && valued && valued[j]; j++)
            if (strcmp(a->argv[i], valued[j]) == 0) ok = true, i++;
        for (int j = 0; !ok && flags && flags[j]; j++) ok = strcmp(a->argv[i], flags[j]) == 0;
        if (!ok) {
            fprintf(stderr, "kiln bench: unknown option '%s'\n", a->argv[i]);
            a->bad = true;
            return false;
        }
    }
    return true;
}

static kiln_ctx *open_ctx(const char *who) {
    kiln_ctx *ctx;
    if (kiln_open(&ctx, NULL) != KILN_OK) {
        fprintf(stderr, "%s: %s\n", who, kiln_last_error());
        return NULL;
    }
    return ctx;
}

static double peak_rss_mib(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; /* Linux: KiB */
}

/* ---- GEMM ----------------------------------------------------------------------------- */

/* Where ctx's products of the reference models run: kiln's own GEMM kernels take every
 * A B, A^T B and A B^T there (src/ops/gemm.c), or CLBlast. */
static const char *gemm_route(kiln_ctx *ctx) {
    return kiln__gemm_own_takes(ctx, false, true, 1, 1, 1, 1, 0.0f) ? "kiln's GEMM kernels" : "CLBlast";
}

/* The device's LLVM target and instruction set as parsed from its name, and the parameter
 * set kiln's GEMM kernels run with there (src/ops/gemm.c), for the result lines. */
typedef struct {
    char target[64];
    const char *isa;
    char params[160];
} gemm_setup;

static gemm_setup gemm_setup_of(kiln_ctx *ctx) {
    gemm_setup g;
    kiln__gemm_choose(kiln_ctx_device(ctx), g.target, sizeof g.target, &g.isa);
    const kiln__gemm_params *p = kiln__gemm_params_of(ctx);
    if (p)
        kiln__gemm_describe(p, g.params, sizeof g.params);
    else
        snprintf(g.params, sizeof g.params, "none");
    return g;
}

/* ", \"target\": ..., \"isa\": ..., \"gemm_params\": ..." of a JSON line */
static void json_gemm_setup(kiln_ctx *ctx) {
    gemm_setup g = gemm_setup_of(ctx);
    printf(", \"target\": "), tool_json_str(g.target);
    printf(", \"isa\": "), tool_json_str(g.isa);
    printf(", \"gemm_params\": "), tool_json_str(g.params);
}

int bench_gemm_data_new(kiln_ctx *ctx, const bench_gemm_shape *s, uint64_t seed, bench_gemm_data *d, char *why,
                        size_t cap) {
    memset(d, 0, sizeof *d);
    int64_t ar = s->ta ? s->k : s->m, ac = s->ta ? s->m : s->k;
    int64_t br = s->tb ? s->n : s->k, bc = s->tb ? s->k : s->n;
    d->ha = malloc((size_t)(ar * ac) * sizeof(float));
    d->hb = malloc((size_t)(br * bc) * sizeof(float));
    if (!d->ha || !d->hb) {
        snprintf(why, cap, "out of host memory for the operands A [%lld, %lld] and B [%lld, %lld] (%.3g GiB)",
                 (long long)ar, (long long)ac, (long long)br, (long long)bc,
                 (double)(ar * ac + br * bc) * sizeof(float) / (1 << 30));
        bench_gemm_data_free(d);
        return -1;
    }
    uint64_t st = seed;
    for (int64_t i = 0; i < ar * ac; i++) d->ha[i] = 2.0f * rng_uniform(&st) - 1.0f;
    for (int64_t i = 0; i < br * bc; i++) d->hb[i] = 2.0f * rng_uniform(&st) - 1.0f;
    d->a = kiln_from_host(ctx, d->ha, KILN_F32, 2, (int64_t[]){ar, ac});
    d->b = kiln_from_host(ctx, d->hb, KILN_F32, 2, (int64_t[]){br, bc});
    if (!d->a || !d->b) {
        snprintf(why, cap, "%s", kiln_error_message(ctx));
        bench_gemm_data_free(d);
        return -1;
    }
    return 0;
}

void bench_gemm_data_free(bench_gemm_data *d) {
    kiln_tensor_free(d->a);
    kiln_tensor_free(d->b);
    free(d->ha);
    free(d->hb);
    memset(d, 0, sizeof *d);
}

static int gemm_flags(const bench_gemm_shape *s) { return (s->ta ? KILN_TRANS_A : 0) | (s->tb ? KILN_TRANS_B : 0); }

double bench_cpu_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* Warm-up before a product is timed: calls until WARM_MS have passed (at least one, at most
 * WARM_MAX). POCL's worker threads, idle before the first call, were sometimes both left on
 * one core for the first ten-odd milliseconds of calls: with one warm-up call a product of
 * half a millisecond (128 x 490 x 1024) timed at 0.50 or 0.95 ms from run to run, and at
 * 0.50-0.55 ms in every run after 100 ms of calls (README.md, "Speed"). OpenBLAS gets the
 * same warm-up. */
#define WARM_MS 30.0
#define WARM_MAX 2000

double bench_gemm_kiln_ms(kiln_ctx *ctx, const bench_gemm_shape *s, bench_gemm_data *d, int repeat, double *min_ms,
                          double *min_cpu_ms) {
    double *t = calloc((size_t)repeat * 2, sizeof *t), *c = t + repeat;
    if (!t) return -1;
    double w0 = bench_now_ms();
    for (int i = 0; i < WARM_MAX && (i == 0 || bench_now_ms() - w0 < WARM_MS); i++) {
        kiln_tensor *out = kiln_matmul_ex(ctx, d->a, d->b, gemm_flags(s));
        kiln_status st = out ? kiln_sync(ctx) : kiln_error_status(ctx);
        kiln_tensor_free(out);
        if (st != KILN_OK) {
            free(t);
            return -1;
        }
    }
    int got = 0;
    for (int i = 0; i < repeat; i++) {
        double c0 = bench_cpu_ms(), t0 = bench_now_ms();
        kiln_tensor *out = kiln_matmul_ex(ctx, d->a, d->b, gemm_flags(s));
        kiln_status st = out ? kiln_sync(ctx) : kiln_error_status(ctx);
        double t1 = bench_now_ms(), c1 = bench_cpu_ms();
        kiln_tensor_free(out);
        if (st != KILN_OK) {
            free(t);
            return -1;
        }
        t[got] = t1 - t0, c[got] = c1 - c0, got++;
    }
    double med = bench_median(t, got);
    bench_median(c, got);
    if (min_ms) *min_ms = t[0];
    if (min_cpu_ms) *min_cpu_ms = c[0];
    free(t);
    return med;
}

/* C = op(A) op(B) on the host in double: the reference both GEMMs are checked against. */
static void host_gemm(const bench_gemm_shape *s, const float *a, const float *b, double *c) {
    int64_t lda = s->ta ? s->m : s->k, ldb = s->tb ? s->k : s->n;
    for (int64_t i = 0; i < s->m; i++) {
        double *row = c + i * s->n;
        for (int64_t j = 0; j < s->n; j++) row[j] = 0.0;
        for (int64_t p = 0; p < s->k; p++) {
            double av = s->ta ? a[p * lda + i] : a[i * lda + p];
            if (!s->tb) {
                const float *br = b + p * ldb;
                for (int64_t j = 0; j < s->n; j++) row[j] += av * br[j];
            } else {
                for (int64_t j = 0; j < s->n; j++) row[j] += av * b[j * ldb + p];
            }
        }
    }
}

double bench_gemm_check(kiln_ctx *ctx, const bench_gemm_shape *s, bench_gemm_data *d) {
    size_t mn = (size_t)(s->m * s->n);
    float *got = malloc(mn * sizeof *got);
    double *ref = malloc(mn * sizeof *ref);
    double diff = -1;
    kiln_tensor *c = kiln_matmul_ex(ctx, d->a, d->b, gemm_flags(s));
    if (got && ref && c && kiln_to_host(c, got, mn * sizeof *got) == KILN_OK) {
        host_gemm(s, d->ha, d->hb, ref);
        diff = 0;
        for (size_t i = 0; i < mn; i++) {
            double e = fabs((double)got[i] - ref[i]);
            if (!(e <= diff)) diff = e; /* NaN wins */
        }
    }
    kiln_tensor_free(c);
    free(got);
    free(ref);
    return diff;
}

double bench_gemm_check_bound(kiln_ctx *ctx, const bench_gemm_shape *s, bench_gemm_data *d, int nrows) {
    size_t mn = (size_t)(s->m * s->n);
    float *got = malloc(mn * sizeof *got);
    double worst = INFINITY;
    kiln_tensor *c = kiln_matmul_ex(ctx, d->a, d->b, gemm_flags(s));
    if (got && c && kiln_to_host(c, got, mn * sizeof *got) == KILN_OK) {
        worst = 0;
        int64_t lda = s->ta ? s->m : s->k, ldb = s->tb ? s->k : s->n;
        int64_t rows = nrows < s->m ? nrows : s->m;
        for (int64_t r = 0; r < rows; r++) {
            /* spread over M, always including the first and the last row (edge tiles) */
            int64_t i = rows == 1 ? 0 : r * (s->m - 1) / (rows - 1);
            for (int64_t j = 0; j < s->n; j++) {
                double ref = 0, mag = 0;
                for (int64_t p = 0; p < s->k; p++) {
                    double av = s->ta ? d->ha[p * lda + i] : d->ha[i * lda + p];
                    double bv = s->tb ? d->hb[j * ldb + p] : d->hb[p * ldb + j];
                    ref += av * bv;
                    mag += fabs(av * bv);
                }
                double bound = 2.0 * (double)s->k * (1.0 / 16777216.0) * mag + 1e-30;
                double e = fabs((double)got[i * s->n + j] - ref) / bound;
                if (!(e <= worst)) worst = e; /* NaN wins */
            }
        }
    }
    kiln_tensor_free(c);
    free(got);
    return worst;
}

/* The name of the kernels OpenBLAS chose for this CPU ("Haswell", "SkylakeX", ...). */
static const char *openblas_core(void) {
#ifdef KILN_HAVE_OPENBLAS
    const char *c = openblas_get_corename();
    return c ? c : "";
#else
    return ""; /* (never printed: no OpenBLAS times either) */
#endif
}

#ifdef KILN_HAVE_OPENBLAS

/* Median ms of cblas_sgemm on the same host data; *diff the largest |blas - reference|. */
static double openblas_ms(const bench_gemm_shape *s, const bench_gemm_data *d, int repeat, float *c) {
    double *t = calloc((size_t)repeat, sizeof *t);
    if (!t) return -1;
    int lda = (int)(s->ta ? s->m : s->k), ldb = (int)(s->tb ? s->k : s->n);
    double w0 = bench_now_ms();
    for (int i = -WARM_MAX; i < repeat; i++) {
        if (i < 0 && bench_now_ms() - w0 >= WARM_MS) i = 0; /* warmed up (the first pass always is a warm-up) */
        double t0 = bench_now_ms();
        cblas_sgemm(CblasRowMajor, s->ta ? CblasTrans : CblasNoTrans, s->tb ? CblasTrans : CblasNoTrans, (int)s->m,
                    (int)s->n, (int)s->k, 1.0f, d->ha, lda, d->hb, ldb, 0.0f, c, (int)s->n);
        double t1 = bench_now_ms();
        if (i >= 0) t[i] = t1 - t0;
    }
    double med = bench_median(t, repeat);
    free(t);
    return med;
}
#endif

/* Milliseconds per product with products queued back to back and one wait at the end, as a
 * training step issues them: the launch costs overlap the kernels, which the
 * one-call-one-wait median of bench_gemm_kiln_ms charges in full. At least `repeat`
 * products, and as many as fill QUEUED_MS at the one-call time one_ms (at most QUEUED_MAX):
 * the final wait's wake-up (tens of microseconds on POCL) is then a small part of the mean,
 * where over ten products of 3 us it had been most of it. Negative on failure. */
#define QUEUED_MS 20.0
#define QUEUED_MAX 5000
static double gemm_queued_ms(kiln_ctx *ctx, const bench_gemm_shape *s, bench_gemm_data *d, int repeat, double one_ms) {
    double want = one_ms > 0 ? QUEUED_MS / one_ms : QUEUED_MAX;
    if (want > QUEUED_MAX) want = QUEUED_MAX;
    if (want > repeat) repeat = (int)want;
    double t0 = bench_now_ms();
    for (int i = 0; i < repeat; i++) {
        /* freeing the output at once hands its buffer to the next product: the in-order
         * queue runs this one before that one writes it */
        kiln_tensor *out = kiln_matmul_ex(ctx, d->a, d->b, gemm_flags(s));
        if (!out) return -1;
        kiln_tensor_free(out);
    }
    if (kiln_sync(ctx) != KILN_OK) return -1;
    return (bench_now_ms() - t0) / repeat;
}

/* kiln's times of one product: one call (ms, and its CPU ms) and queued */
typedef struct {
    double kms, kcpu, qms;
} kiln_times;

/* Times kiln on one shape (data of seed 42); 0, or 1 with the reason on stderr. */
static int gemm_kiln_times(kiln_ctx *ctx, const bench_gemm_shape *sp, int repeat, kiln_times *t) {
    bench_gemm_shape s = *sp;
    bench_gemm_data d;
    char why[512];
    if (bench_gemm_data_new(ctx, &s, 42, &d, why, sizeof why) != 0) {
        fprintf(stderr, "kiln bench gemm: %s\n", why);
        return 1;
    }
    t->kcpu = NAN;
    t->kms = bench_gemm_kiln_ms(ctx, &s, &d, repeat, NULL, &t->kcpu);
    t->qms = t->kms < 0 ? -1 : gemm_queued_ms(ctx, &s, &d, repeat, t->kms);
    bench_gemm_data_free(&d);
    if (t->kms < 0 || t->qms < 0) {
        fprintf(stderr, "kiln bench gemm: %s\n", kiln_error_message(ctx));
        return 1;
    }
    return 0;
}

/* Times OpenBLAS on the same shape and data as kiln's times t, checks kiln's result and
 * prints the product's line; 0, or 1 with the reason on stderr (a result off its error
 * bound among them). */
static int gemm_report(kiln_ctx *ctx, const bench_gemm_shape *sp, int repeat, bool check, bool json,
                       const kiln_times *t) {
    bench_gemm_shape s = *sp;
    bench_gemm_data d;
    char why[512];
    if (bench_gemm_data_new(ctx, &s, 42, &d, why, sizeof why) != 0) {
        fprintf(stderr, "kiln bench gemm: %s\n", why);
        return 1;
    }
    double kms = t->kms, kcpu = t->kcpu, qms = t->qms;
    double flop = 2.0 * (double)s.m * (double)s.n * (double)s.k;
    double kg = flop / kms / 1e6, qg = flop / qms / 1e6, bms = NAN, bg = NAN, kdiff = NAN, bdiff = NAN;
#ifdef KILN_HAVE_OPENBLAS
    float *bc = malloc((size_t)(s.m * s.n) * sizeof *bc);
    if (bc) {
        bms = openblas_ms(&s, &d, repeat, bc);
        bg = flop / bms / 1e6;
        if (check) {
            /* kiln against OpenBLAS on the same data: both round in float, so the difference
             * is a few ulps of sqrt(k)-sized sums, not zero */
            size_t mn = (size_t)(s.m * s.n);
            float *kc = malloc(mn * sizeof *kc);
            kiln_tensor *c = kiln_matmul_ex(ctx, d.a, d.b, gemm_flags(&s));
            if (kc && c && kiln_to_host(c, kc, mn * sizeof *kc) == KILN_OK) {
                bdiff = 0;
                for (size_t i = 0; i < mn; i++) {
                    double e = fabs((double)kc[i] - (double)bc[i]);
                    if (!(e <= bdiff)) bdiff = e;
                }
            }
            kiln_tensor_free(c);
            free(kc);
        }
        free(bc);
    }
#endif
    /* against the double-precision product: the largest difference, and on 16 rows each
     * element's error relative to its bound 2 k u sum|a b| (> 1 fails the command) */
    double bound = NAN;
    if (check && s.m * s.n * s.k <= (int64_t)1 << 31) {
        kdiff = bench_gemm_check(ctx, &s, &d);
        bound = bench_gemm_check_bound(ctx, &s, &d, 16);
    }
    const char *tn = s.ta ? (s.tb ? "TT" : "TN") : (s.tb ? "NT" : "NN");
    /* which GEMM computed it (src/ops/gemm.c: kiln's kernels on CPUs, CLBlast elsewhere) */
    char kernel[32] = "CLBlast";
    if (kiln__gemm_own_takes(ctx, s.ta, s.tb, (size_t)s.m, (size_t)s.n, (size_t)s.k, 1, 0.0f))
        snprintf(kernel, sizeof kernel, "kiln %s",
                 kiln__gemm_kernel(s.ta, s.tb, (size_t)s.m, (size_t)s.n, (size_t)s.k));
    if (json) {
        printf("{\"bench\": \"gemm\", \"name\": ");
        tool_json_str(s.name);
        printf(", \"m\": %lld, \"n\": %lld, \"k\": %lld, \"trans_a\": %s, \"trans_b\": %s, "
               "\"repeat\": %d, \"kiln_ms\": %.4f, \"kiln_gflops\": %.2f, \"kiln_min_cpu_ms\": %.4f",
               (long long)s.m, (long long)s.n, (long long)s.k, s.ta ? "true" : "false", s.tb ? "true" : "false", repeat,
               kms, kg, kcpu);
        printf(", \"kiln_queued_ms\": %.4f, \"kiln_queued_gflops\": %.2f", qms, qg);
        if (!isnan(bms)) {
            printf(", \"openblas_ms\": %.4f, \"openblas_gflops\": %.2f, \"ratio\": %.3f, \"ratio_queued\": %.3f", bms,
                   bg, kg / bg, qg / bg);
            /* which of its kernels OpenBLAS ran: 0.3.21 runs its Haswell (AVX2) ones on a CPU
             * it does not know, even one with AVX-512 (README.md, "Per-ISA tables") */
            printf(", \"openblas_core\": "), tool_json_str(openblas_core());
        }
        if (!isnan(bdiff)) printf(", \"max_abs_diff_openblas\": %.3g", bdiff);
        if (!isnan(kdiff)) printf(", \"max_abs_diff_fp64\": %.3g, \"error_over_bound\": %.3g", kdiff, bound);
        printf(", \"kernel\": "), tool_json_str(kernel);
        printf(", \"tuning\": "), tool_json_str(kiln__tune_source());
        printf(", \"device\": "), tool_json_str(kiln_ctx_device(ctx)->name);
        json_gemm_setup(ctx);
        printf("}\n");
    } else {
        printf("%s %lldx%lldx%lld %s: kiln %.1f GFLOP/s (%.3f ms)", s.name, (long long)s.m, (long long)s.n,
               (long long)s.k, tn, kg, kms);
        printf(", queued %.1f GFLOP/s (%.3f ms)", qg, qms);
        if (!isnan(bms))
            printf(", OpenBLAS (%s kernels) %.1f GFLOP/s (%.3f ms), kiln/OpenBLAS %.3f (queued %.3f)", openblas_core(),
                   bg, bms, kg / bg, qg / bg);
        else
            printf(" (built without OpenBLAS: no comparison)");
        if (!isnan(bdiff)) printf(", max |kiln - OpenBLAS| %.3g", bdiff);
        if (!isnan(kdiff)) printf(", max |kiln - fp64| %.3g", kdiff);
        gemm_setup g = gemm_setup_of(ctx);
        printf("  [%s; target %s (%s), kernel parameters %s; CLBlast parameters: %s]\n", kernel,
               g.target[0] ? g.target : "unknown", g.isa, g.params, kiln__tune_source());
    }
    bench_gemm_data_free(&d);
    if (!(isnan(bound) || bound <= 1.0)) {
        fprintf(stderr,
                "kiln bench gemm: %s %lldx%lldx%lld: kiln's result is off: an error %.3g times its bound 2 k u "
                "sum|a b|\n",
                s.name, (long long)s.m, (long long)s.n, (long long)s.k, bound);
        return 1;
    }
    return 0;
}

static int cmd_gemm_model(args *a, bool json);

static int cmd_gemm(args *a, bool json) {
    if (arg_value(a, "--model")) return cmd_gemm_model(a, json);
    if (!args_check(a, (const char *const[]){"--m", "--n", "--k", "--repeat", NULL},
                    (const char *const[]){"--trans-a", "--trans-b", "--no-check", NULL}))
        return 2;
    bench_gemm_shape s = {"gemm", 0, 0, 0, false, false};
    s.m = arg_long(a, "--m", 1024, 1, 1 << 20);
    s.n = arg_long(a, "--n", s.m, 1, 1 << 20);
    s.k = arg_long(a, "--k", s.m, 1, 1 << 20);
    s.ta = arg_flag(a, "--trans-a");
    s.tb = arg_flag(a, "--trans-b");
    int repeat = (int)arg_long(a, "--repeat", 10, 1, 100000);
    bool check = !arg_flag(a, "--no-check");
    if (a->bad) return 2;
    kiln_ctx *ctx = open_ctx("kiln bench gemm");
    if (!ctx) return 1;
    kiln_times t;
    int rc = gemm_kiln_times(ctx, &s, repeat, &t) || gemm_report(ctx, &s, repeat, check, json, &t);
    kiln_close(ctx);
    return rc;
}

/* ---- the reference models ------------------------------------------------------------- */

typedef enum {
    MODEL_MLP,
    MODEL_CNN,
    MODEL_RESNET20,
    MODEL_LSTM,
    MODEL_GPT,
    MODEL_AE,
    MODEL_DCGAN,
    MODEL_COUNT
} model_kind;

/* Each model's name, torch_ref.py's batch size, and the default number of timed steps. */
static const struct {
    const char *name;
    int batch, steps;
} model_info[MODEL_COUNT] = {
    /* one model a line (the formatter would pack five into two lines) */
    // clang-format off
    [MODEL_MLP] = {"mlp", 64, 200},
    [MODEL_CNN] = {"cnn", 64, 60},
    [MODEL_RESNET20] = {"resnet20", 128, 30},
    [MODEL_LSTM] = {"lstm", 32, 40},
    [MODEL_GPT] = {"gpt", 16, 40},
    [MODEL_AE] = {"ae", 64, 60},
    [MODEL_DCGAN] = {"dcgan", 64, 40},
    // clang-format on
};

/* The char model's vocabulary and sequence length (torch_ref.py's charlm). */
#define LSTM_VOCAB 96
#define LSTM_T 64
#define MODEL_MAX_PARAMS 128
/* The char models' shared vocabulary; the GPT's context, width, heads and blocks. */
#define GPT_T 128
#define GPT_D 128
#define GPT_HEADS 4
#define GPT_LAYERS 4

/* torch_ref.py's GPT through the public module API, its state_dict names (wte, wpe,
 * h.<i>.{ln_1, c_attn, attn_proj, ln_2, c_fc, mlp_proj}, ln_f) and its forward: token plus
 * position embeddings, pre-norm causal blocks, the head tied to wte (ln_f(x) @ wte^T). */
/* --attention; fused by default: at context 128 on POCL it took about 20% less CPU time per
 * step than the composed path and 60 MiB less memory (README, "Scaled dot-product
 * attention") */
static kiln_sdpa_impl gpt_impl = KILN_SDPA_FUSED;

typedef struct gpt_block {
    kiln_module *ln_1, *c_attn, *attn_proj, *ln_2, *c_fc, *mlp_proj;
} gpt_block;

static kiln_status gpt_block_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nin, (void)nout;
    gpt_block *b = kiln_module_data(m);
    kiln_ctx *ctx = kiln_module_ctx(m);
    kiln_tensor *x = in[0];
    const int64_t *sh = kiln_tensor_shape(x);
    int64_t B = sh[0], T = sh[1], C = sh[2];
    kiln_tensor *qkv = kiln_forward(b->c_attn, kiln_forward(b->ln_1, x)), *h[3];
    for (int i = 0; i < 3; i++) /* split(C, dim=2), view(B, T, heads, C/heads).transpose(1, 2) */
        h[i] = kiln_permute(ctx,
                            kiln_reshape(ctx, kiln_slice(ctx, qkv, 2, i * C, (i + 1) * C, 1), 4,
                                         (int64_t[]){B, T, GPT_HEADS, C / GPT_HEADS}),
                            (const int[]){0, 2, 1, 3});
    kiln_sdpa_opts o = kiln_sdpa_defaults();
    o.is_causal = true, o.impl = gpt_impl;
    kiln_tensor *a = kiln_scaled_dot_product_attention(ctx, h[0], h[1], h[2], NULL, &o);
    a = kiln_reshape(ctx, kiln_permute(ctx, a, (const int[]){0, 2, 1, 3}), 3, (int64_t[]){B, T, C});
    x = kiln_add(ctx, x, kiln_forward(b->attn_proj, a));
    out[0] = kiln_add(
        ctx, x, kiln_forward(b->mlp_proj, kiln_gelu(ctx, kiln_forward(b->c_fc, kiln_forward(b->ln_2, x)), false)));
    return out[0] ? KILN_OK : kiln_error_status(ctx);
}

static const kiln_module_def gpt_block_def = {
    .kind = "Block", .state_size = sizeof(gpt_block), .forward = gpt_block_forward, .num_inputs = 1, .num_outputs = 1};

static kiln_module *gpt_block_new(kiln_ctx *ctx) {
    kiln_module *m = kiln_module_new(ctx, &gpt_block_def);
    if (!m) return NULL;
    gpt_block *b = kiln_module_data(m);
    int64_t d = GPT_D;
    if (kiln_module_add_child(m, "ln_1", b->ln_1 = kiln_nn_layernorm(ctx, 1, &d, 1e-5f, true)) != KILN_OK ||
        kiln_module_add_child(m, "ln_2", b->ln_2 = kiln_nn_layernorm(ctx, 1, &d, 1e-5f, true)) != KILN_OK ||
        kiln_module_add_child(m, "c_attn", b->c_attn = kiln_nn_linear(ctx, d, 3 * d, true)) != KILN_OK ||
        kiln_module_add_child(m, "attn_proj", b->attn_proj = kiln_nn_linear(ctx, d, d, true)) != KILN_OK ||
        kiln_module_add_child(m, "c_fc", b->c_fc = kiln_nn_linear(ctx, d, 4 * d, true)) != KILN_OK ||
        kiln_module_add_child(m, "mlp_proj", b->mlp_proj = kiln_nn_linear(ctx, 4 * d, d, true)) != KILN_OK) {
        kiln_module_free(m);
        return NULL;
    }
    return m;
}

typedef struct gpt_net {
    kiln_module *wte, *wpe, *h, *ln_f, *head;
} gpt_net;

static kiln_status gpt_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nin, (void)nout;
    gpt_net *g = kiln_module_data(m);
    kiln_ctx *ctx = kiln_module_ctx(m);
    int64_t T = kiln_tensor_shape(in[0])[1];
    /* wte(x) + wpe(arange(T)): the first T rows of wpe's table */
    kiln_tensor *x =
        kiln_add(ctx, kiln_forward(g->wte, in[0]), kiln_slice(ctx, kiln_module_find(g->wpe, "weight"), 0, 0, T, 1));
    for (int i = 0; i < GPT_LAYERS; i++) x = kiln_forward(kiln_module_child(g->h, i), x);
    out[0] = kiln_forward(g->head, kiln_forward(g->ln_f, x));
    return out[0] ? KILN_OK : kiln_error_status(ctx);
}

static void gpt_destroy(kiln_module *m) { kiln_module_free(((gpt_net *)kiln_module_data(m))->head); }

static const kiln_module_def gpt_def = {.kind = "GPT",
                                        .state_size = sizeof(gpt_net),
                                        .forward = gpt_forward,
                                        .num_inputs = 1,
                                        .num_outputs = 1,
                                        .destroy = gpt_destroy};

static kiln_module *gpt_new(kiln_ctx *ctx) {
    kiln_module *m = kiln_module_new(ctx, &gpt_def);
    if (!m) return NULL;
    gpt_net *g = kiln_module_data(m);
    int64_t d = GPT_D;
    if (kiln_module_add_child(m, "wte", g->wte = kiln_nn_embedding(ctx, LSTM_VOCAB, d)) != KILN_OK ||
        kiln_module_add_child(m, "wpe", g->wpe = kiln_nn_embedding(ctx, GPT_T, d)) != KILN_OK ||
        kiln_module_add_child(m, "h", g->h = kiln_nn_module_list(ctx, 0, NULL)) != KILN_OK)
        goto fail;
    for (int i = 0; i < GPT_LAYERS; i++)
        if (kiln_nn_module_list_append(g->h, gpt_block_new(ctx)) != KILN_OK) goto fail;
    /* the tied head holds no weight of its own, so it is not a child (torch's GPT has none) */
    if (kiln_module_add_child(m, "ln_f", g->ln_f = kiln_nn_layernorm(ctx, 1, &d, 1e-5f, true)) != KILN_OK ||
        !(g->head = kiln_nn_tied_linear(ctx, g->wte, false)))
        goto fail;
    return m;
fail:
    kiln_module_free(m);
    return NULL;
}

typedef struct model {
    model_kind kind;
    kiln_module *net; /* dcgan: the discriminator */
    kiln_optim *opt;
    kiln_module *gen; /* dcgan: the generator (a list: fc part, convolution part) */
    kiln_optim *gen_opt;
    kiln_grad_scaler *scaler; /* --amp: f16 autocast and loss scaling */
    int64_t xshape[4];
    int xnd;
    kiln_tensor *params[MODEL_MAX_PARAMS];
    int np;
} model;

static void model_free(model *m) {
    kiln_grad_scaler_free(m->scaler);
    kiln_optim_free(m->opt);
    kiln_module_free(m->net);
    kiln_optim_free(m->gen_opt);
    kiln_module_free(m->gen);
    memset(m, 0, sizeof *m);
}

/* torch_ref.py's models and optimizers. */
static int model_new(kiln_ctx *ctx, model_kind kind, int batch, model *m) {
    memset(m, 0, sizeof *m);
    m->kind = kind;
    kiln_manual_seed(ctx, 0);
    if (kind == MODEL_MLP) {
        m->net = kiln_nn_sequential(
            ctx, 5,
            (kiln_module *[]){kiln_nn_linear(ctx, 784, 512, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                              kiln_nn_linear(ctx, 512, 256, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                              kiln_nn_linear(ctx, 256, 10, true)});
        m->xnd = 2; /* x.view(-1, 784) */
        m->xshape[0] = batch;
        m->xshape[1] = 784;
    } else if (kind == MODEL_LSTM) {
        /* torch_ref.py's CharLSTM: embedding(96, 128), a 2-layer LSTM(128 -> 256,
         * batch_first), fc(256, 96), on [batch, 64] character ids */
        kiln_rnn_params rp = kiln_rnn_defaults();
        rp.num_layers = 2, rp.batch_first = true;
        m->net = kiln_nn_module_list(ctx, 3,
                                     (kiln_module *[]){kiln_nn_embedding(ctx, LSTM_VOCAB, 128),
                                                       kiln_nn_lstm(ctx, 128, 256, &rp),
                                                       kiln_nn_linear(ctx, 256, LSTM_VOCAB, true)});
        m->xnd = 2;
        m->xshape[0] = batch;
        m->xshape[1] = LSTM_T;
    } else if (kind == MODEL_GPT) {
        m->net = gpt_new(ctx);
        m->xnd = 2;
        m->xshape[0] = batch;
        m->xshape[1] = GPT_T;
    } else if (kind == MODEL_AE) {
        /* torch_ref.py's AE (examples/autoencoder_fashion's plain model): conv(1,16,3,s2,p1)-
         * ReLU-conv(16,32,3,s2,p1)-ReLU-convT(32,16,3,s2,p1,op1)-ReLU-convT(16,1,3,s2,p1,op1)-
         * sigmoid, trained with MSE against its input */
        kiln_conv2d_params d = kiln_conv2d_defaults();
        d.stride[0] = d.stride[1] = 2;
        d.padding[0] = d.padding[1] = 1;
        kiln_conv2d_params u = d;
        u.output_padding[0] = u.output_padding[1] = 1;
        m->net = kiln_nn_sequential(
            ctx, 8,
            (kiln_module *[]){
                kiln_nn_conv2d(ctx, 1, 16, 3, 3, &d, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                kiln_nn_conv2d(ctx, 16, 32, 3, 3, &d, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                kiln_nn_conv_transpose2d(ctx, 32, 16, 3, 3, &u, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                kiln_nn_conv_transpose2d(ctx, 16, 1, 3, 3, &u, true), kiln_nn_activation(ctx, KILN_ACT_SIGMOID, 0)});
        m->xnd = 4;
        m->xshape[0] = batch;
        m->xshape[1] = 1;
        m->xshape[2] = 28;
        m->xshape[3] = 28;
    } else if (kind == MODEL_DCGAN) {
        /* torch_ref.py's gan_models() (examples/gan_fashion's): G z(64)-fc(64,6272)-BN1d-ReLU-
         * [128,7,7]-convT(128,64,4,s2,p1)-BN2d-ReLU-convT(64,1,4,s2,p1)-tanh; D conv(1,64,4,s2,
         * p1)-LReLU(.2)-conv(64,128,4,s2,p1)-BN2d-LReLU(.2)-flatten-fc(6272,1) */
        kiln_conv2d_params d = kiln_conv2d_defaults();
        d.stride[0] = d.stride[1] = 2;
        d.padding[0] = d.padding[1] = 1;
        m->gen = kiln_nn_module_list(
            ctx, 2,
            (kiln_module *[]){
                kiln_nn_sequential(ctx, 3,
                                   (kiln_module *[]){kiln_nn_linear(ctx, 64, 6272, true),
                                                     kiln_nn_batchnorm1d(ctx, 6272, 1e-5f, 0.1f),
                                                     kiln_nn_activation(ctx, KILN_ACT_RELU, 0)}),
                kiln_nn_sequential(ctx, 5,
                                   (kiln_module *[]){kiln_nn_conv_transpose2d(ctx, 128, 64, 4, 4, &d, true),
                                                     kiln_nn_batchnorm2d(ctx, 64, 1e-5f, 0.1f),
                                                     kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                                                     kiln_nn_conv_transpose2d(ctx, 64, 1, 4, 4, &d, true),
                                                     kiln_nn_activation(ctx, KILN_ACT_TANH, 0)})});
        m->net = kiln_nn_sequential(ctx, 7,
                                    (kiln_module *[]){kiln_nn_conv2d(ctx, 1, 64, 4, 4, &d, true),
                                                      kiln_nn_activation(ctx, KILN_ACT_LEAKY_RELU, 0.2f),
                                                      kiln_nn_conv2d(ctx, 64, 128, 4, 4, &d, true),
                                                      kiln_nn_batchnorm2d(ctx, 128, 1e-5f, 0.1f),
                                                      kiln_nn_activation(ctx, KILN_ACT_LEAKY_RELU, 0.2f),
                                                      kiln_nn_flatten(ctx, 1, -1), kiln_nn_linear(ctx, 6272, 1, true)});
        if (!m->gen) {
            model_free(m);
            return -1;
        }
        m->xnd = 4;
        m->xshape[0] = batch;
        m->xshape[1] = 1;
        m->xshape[2] = 28;
        m->xshape[3] = 28;
    } else if (kind == MODEL_RESNET20) {
        /* He et al.'s CIFAR ResNet-20 on 1x28x28 images, torch_ref.py's ResNet20 */
        kiln_resnet_opts o = kiln_resnet_cifar_defaults();
        o.in_channels = 1;
        m->net = kiln_resnet_cifar(ctx, 20, &o);
        m->xnd = 4;
        m->xshape[0] = batch;
        m->xshape[1] = 1;
        m->xshape[2] = 28;
        m->xshape[3] = 28;
    } else {
        kiln_pool2d_params pool = kiln_pool2d_defaults(2, 2);
        m->net = kiln_nn_sequential(
            ctx, 11,
            (kiln_module *[]){kiln_nn_conv2d(ctx, 1, 32, 3, 3, NULL, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                              kiln_nn_conv2d(ctx, 32, 64, 3, 3, NULL, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                              kiln_nn_maxpool2d(ctx, &pool), kiln_nn_dropout(ctx, 0.25f), kiln_nn_flatten(ctx, 1, -1),
                              kiln_nn_linear(ctx, 9216, 128, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                              kiln_nn_dropout(ctx, 0.5f), kiln_nn_linear(ctx, 128, 10, true)});
        m->xnd = 4;
        m->xshape[0] = batch;
        m->xshape[1] = 1;
        m->xshape[2] = 28;
        m->xshape[3] = 28;
    }
    if (!m->net) return -1;
    kiln_tensor **params = m->params; /* resnet20 has 65 */
    int np = m->np = kiln_module_parameters(m->net, params, MODEL_MAX_PARAMS);
    if (np > MODEL_MAX_PARAMS) { /* a model of more parameter tensors needs a larger array here */
        fprintf(stderr, "kiln bench: the model has %d parameter tensors, more than %d\n", np, MODEL_MAX_PARAMS);
        model_free(m);
        return -1;
    }
    if (kind == MODEL_GPT) {
        kiln_adam_opts o = kiln_adamw_defaults();
        o.lr = 1e-3;
        o.beta2 = 0.95;
        o.weight_decay = 0.1;
        m->opt = kiln_adamw(ctx, params, np, &o);
    } else if (kind == MODEL_LSTM) {
        kiln_adam_opts o = kiln_adam_defaults();
        o.lr = 2e-3;
        m->opt = kiln_adam(ctx, params, np, &o);
    } else if (kind == MODEL_MLP || kind == MODEL_AE) {
        kiln_adam_opts o = kiln_adam_defaults();
        o.lr = 1e-3;
        m->opt = kiln_adam(ctx, params, np, &o);
    } else if (kind == MODEL_DCGAN) {
        /* Adam(2e-4, betas .5/.999) for each network; m->params holds D's */
        kiln_adam_opts o = kiln_adam_defaults();
        o.lr = 2e-4;
        o.beta1 = 0.5;
        m->opt = kiln_adam(ctx, params, np, &o);
        kiln_tensor *gp[16];
        int ng = kiln_module_parameters(m->gen, gp, 16);
        m->gen_opt = ng <= 16 ? kiln_adam(ctx, gp, ng, &o) : NULL;
        if (!m->gen_opt) {
            model_free(m);
            return -1;
        }
    } else if (kind == MODEL_RESNET20) {
        kiln_sgd_opts o = kiln_sgd_defaults();
        o.lr = 0.1;
        o.momentum = 0.9;
        o.weight_decay = 5e-4;
        m->opt = kiln_sgd(ctx, params, np, &o);
    } else {
        kiln_sgd_opts o = kiln_sgd_defaults();
        o.lr = 0.01;
        o.momentum = 0.9;
        m->opt = kiln_sgd(ctx, params, np, &o);
    }
    if (!m->opt) {
        model_free(m);
        return -1;
    }
    return 0;
}

/* n batches of random data for m: inputs in [0, 1) (as normalised pixels) and labels
 * 0..9, or for the char model sequences of T + 1 random ids, each the input's T ids and,
 * shifted by one, its T targets (torch_ref.py's charlm). */
typedef struct batches {
    float *x;
    int32_t *xi; /* the char model's input ids */
    int32_t *y;
    int n;
    int64_t xnumel, ynumel; /* per batch */
    /* kiln bench train: the batches uploaded once (as torch_ref.py's sit in memory), the
     * loss kept for a read after the step instead of read inside it */
    bool resident, keep_loss;
    kiln_tensor *dx[16], *dy[16], *loss;
} batches;

/* The character models: I32 ids in, a token's logits per position out. */
#define CHARLM(kind) ((kind) == MODEL_LSTM || (kind) == MODEL_GPT)

static int batches_new(batches *b, int n, const model *m) {
    memset(b, 0, sizeof *b);
    b->n = n;
    const int64_t T = m->xshape[1]; /* the char models' sequence length */
    b->xnumel = 1;
    for (int d = 0; d < m->xnd; d++) b->xnumel *= m->xshape[d];
    b->ynumel = CHARLM(m->kind) ? b->xnumel : m->xshape[0];
    if (CHARLM(m->kind))
        b->xi = malloc((size_t)(n * b->xnumel) * sizeof *b->xi);
    else
        b->x = malloc((size_t)(n * b->xnumel) * sizeof *b->x);
    b->y = malloc((size_t)(n * b->ynumel) * sizeof *b->y);
    if ((!b->x && !b->xi) || !b->y) return -1;
    uint64_t s = 1234;
    if (CHARLM(m->kind)) {
        for (int64_t q = 0; q < n * m->xshape[0]; q++) { /* one sequence of T + 1 ids */
            int32_t *x = b->xi + q * T, *y = b->y + q * T;
            x[0] = (int32_t)(rng_next(&s) % LSTM_VOCAB);
            for (int t = 0; t < T; t++) {
                y[t] = (int32_t)(rng_next(&s) % LSTM_VOCAB);
                if (t + 1 < T) x[t + 1] = y[t];
            }
        }
        return 0;
    }
    for (int64_t i = 0; i < n * b->xnumel; i++) b->x[i] = rng_uniform(&s);
    for (int64_t i = 0; i < n * b->ynumel; i++) b->y[i] = (int32_t)(rng_next(&s) % 10);
    return 0;
}

static void batches_free(batches *b) {
    free(b->x);
    free(b->xi);
    free(b->y);
}

/* torch_ref.py's dcgan step: real = x * 2 - 1, fake = G(z ~ N(0, I)); D's update on the
 * least-squares loss 0.5 mean((D(real) - 1)^2) + 0.5 mean(D(fake.detach())^2), then G's on
 * 0.5 mean((D(fake) - 1)^2). *loss_out is D's loss plus 0 * G's (a NaN in either shows),
 * a tensor of the caller's scope, not read back. */
static kiln_status dcgan_step(kiln_ctx *ctx, model *m, kiln_tensor *x, kiln_tensor **loss_out) {
    int64_t bs = m->xshape[0];
    kiln_tensor *real = kiln_add_scalar(ctx, kiln_mul_scalar(ctx, x, 2.0f), -1.0f);
    kiln_tensor *h = kiln_forward(kiln_module_child(m->gen, 0), kiln_rand_normal(ctx, 0, 1, 2, (int64_t[]){bs, 64}));
    kiln_tensor *fake = kiln_forward(kiln_module_child(m->gen, 1), kiln_reshape(ctx, h, 4, (int64_t[]){bs, 128, 7, 7}));
    kiln_tensor *dr = kiln_forward(m->net, real), *df = kiln_forward(m->net, fake ? kiln_detach(ctx, fake) : NULL);
    kiln_tensor *ones = kiln_ones(ctx, 2, (int64_t[]){bs, 1});
    kiln_tensor *d_loss = kiln_mul_scalar(
        ctx,
        kiln_add(ctx, kiln_mse_loss(ctx, dr, ones, KILN_MEAN), kiln_mean(ctx, kiln_mul(ctx, df, df), 0, NULL, false)),
        0.5f);
    kiln_status s = d_loss ? KILN_OK : kiln_error_status(ctx);
    if (s == KILN_OK) s = kiln_optim_zero_grad(m->opt);
    if (s == KILN_OK) s = kiln_backward(d_loss);
    if (s == KILN_OK) s = kiln_optim_step(m->opt);
    kiln_tensor *g_loss =
        s == KILN_OK ? kiln_mul_scalar(ctx, kiln_mse_loss(ctx, kiln_forward(m->net, fake), ones, KILN_MEAN), 0.5f)
                     : NULL;
    if (s == KILN_OK && !g_loss) s = kiln_error_status(ctx);
    if (s == KILN_OK) s = kiln_optim_zero_grad(m->gen_opt);
    if (s == KILN_OK) s = kiln_backward(g_loss);
    if (s == KILN_OK) s = kiln_optim_step(m->gen_opt);
    *loss_out = s == KILN_OK ? kiln_add(ctx, d_loss, kiln_mul_scalar(ctx, kiln_detach(ctx, g_loss), 0.0f)) : NULL;
    return s == KILN_OK ? kiln_error_status(ctx) : s;
}

static kiln_tensor *batch_x(kiln_ctx *ctx, const model *m, const batches *b, int j) {
    return CHARLM(m->kind) ? kiln_from_host(ctx, b->xi + (int64_t)j * b->xnumel, KILN_I32, m->xnd, m->xshape)
                           : kiln_from_host(ctx, b->x + (int64_t)j * b->xnumel, KILN_F32, m->xnd, m->xshape);
}

static kiln_tensor *batch_y(kiln_ctx *ctx, const batches *b, int j) {
    return kiln_from_host(ctx, b->y + (int64_t)j * b->ynumel, KILN_I32, 1, (int64_t[]){b->ynumel});
}

/* One training step: forward, cross-entropy, zero_grad, backward, optimizer step (dcgan_step's
 * two updates for the GAN), and the loss read back; with resident batches (kiln bench train) the loss is not read but
 * kept in b->loss when b->keep_loss (the caller reads it after timing the step). */
static kiln_status train_step(kiln_ctx *ctx, model *m, batches *b, int i, float *loss_out) {
    int j = i % b->n;
    kiln_scope_begin(ctx);
    kiln_tensor *x = b->resident ? b->dx[j] : batch_x(ctx, m, b, j);
    kiln_tensor *y = b->resident ? b->dy[j] : batch_y(ctx, b, j);
    kiln_tensor *logits = NULL, *loss = NULL;
    kiln_status s = KILN_OK;
    if (m->scaler) { /* the forward and the loss; the parameters' casts eight a launch, as kiln_fit's */
        kiln_ctx_set_autocast(ctx, KILN_F16);
        if ((s = kiln__optim_autocast(m->opt, KILN_F16)) != KILN_OK) {
            kiln_ctx_set_autocast(ctx, KILN_F32);
            goto stepped;
        }
    }
    if (m->kind == MODEL_DCGAN) {
        s = dcgan_step(ctx, m, x, &loss);
        goto stepped;
    }
    if (m->kind == MODEL_LSTM) {
        /* embedding, LSTM (its output; h_n and c_n unused), fc over every position */
        kiln_tensor *e = kiln_forward(kiln_module_child(m->net, 0), x), *outs[3] = {0};
        kiln_status fs = e ? kiln_module_forward(kiln_module_child(m->net, 1), 1, &e, 3, outs) : kiln_error_status(ctx);
        logits = fs == KILN_OK ? kiln_reshape(ctx, kiln_forward(kiln_module_child(m->net, 2), outs[0]), 2,
                                              (int64_t[]){-1, LSTM_VOCAB})
                               : NULL;
    } else if (m->kind == MODEL_GPT) {
        logits = kiln_reshape(ctx, kiln_forward(m->net, x), 2, (int64_t[]){-1, LSTM_VOCAB});
    } else {
        logits = kiln_forward(m->net, x);
    }
    /* the autoencoder's "logits" are its reconstruction, its target the input */
    loss =
        m->kind == MODEL_AE ? kiln_mse_loss(ctx, logits, x, KILN_MEAN) : kiln_cross_entropy(ctx, logits, y, KILN_MEAN);
    if (m->scaler) kiln_ctx_set_autocast(ctx, KILN_F32); /* (train_step turned it on) */
    s = loss ? KILN_OK : kiln_error_status(ctx);
    if (s == KILN_OK) s = kiln_optim_zero_grad(m->opt);
    if (s == KILN_OK) s = kiln_backward(m->scaler ? kiln_grad_scaler_scale(m->scaler, loss) : loss);
    /* the scaler's gradients unscaled before clipping, as torch's scaler.unscale_ */
    if (s == KILN_OK && m->scaler && CHARLM(m->kind)) s = kiln_grad_scaler_unscale(m->scaler, m->opt);
    /* torch_ref.py clips the char models' gradient norm to 1 */
    if (s == KILN_OK && CHARLM(m->kind) && !kiln_clip_grad_norm_tensor(ctx, m->np, m->params, 1.0, 2.0))
        s = kiln_error_status(ctx);
    if (s == KILN_OK) s = m->scaler ? kiln_grad_scaler_step(m->scaler, m->opt) : kiln_optim_step(m->opt);
    if (s == KILN_OK && m->scaler) s = kiln_grad_scaler_update(m->scaler);
stepped:;
    float l = NAN;
    if (b->resident)
        b->loss = s == KILN_OK && b->keep_loss ? kiln_tensor_keep(loss) : NULL;
    else
        l = s == KILN_OK ? kiln_tensor_item(loss) : NAN;
    if (s == KILN_OK && kiln_error_status(ctx) != KILN_OK) s = kiln_error_status(ctx);
    kiln_scope_end(ctx);
    if (loss_out) *loss_out = l;
    return s;
}

static int parse_model(args *a, model_kind *kind) {
    const char *name = arg_value(a, "--model");
    for (int k = 0; k < MODEL_COUNT; k++)
        if (!name ? k == MODEL_MLP : strcmp(name, model_info[k].name) == 0) {
            *kind = (model_kind)k;
            return 0;
        }
    fprintf(stderr, "kiln bench: --model %s: expected mlp, cnn, resnet20, lstm, gpt, ae or dcgan\n", name);
    return -1;
}

static int cmd_train(args *a, bool json) {
    if (!args_check(a, (const char *const[]){"--model", "--batch", "--steps", "--warmup", "--attention", NULL},
                    (const char *const[]){"--amp", NULL}))
        return 2;
    model_kind kind;
    if (parse_model(a, &kind) != 0) return 2;
    bool amp = arg_flag(a, "--amp");
    if (amp && kind == MODEL_DCGAN) {
        fprintf(stderr, "kiln bench train: --amp: not for dcgan (its two optimizers' step has no scaler here)\n");
        return 2;
    }
    const char *att = arg_value(a, "--attention");
    if (att && strcmp(att, "fused") != 0 && strcmp(att, "composed") != 0) {
        fprintf(stderr, "kiln bench train: --attention %s: expected fused or composed\n", att);
        return 2;
    }
    gpt_impl = att && strcmp(att, "composed") == 0 ? KILN_SDPA_COMPOSED : KILN_SDPA_FUSED;
    /* torch_ref.py's batch sizes and default step counts */
    int batch = (int)arg_long(a, "--batch", model_info[kind].batch, 1, 1 << 16);
    int steps = (int)arg_long(a, "--steps", model_info[kind].steps, 1, 1 << 24);
    int warmup = (int)arg_long(a, "--warmup", 5, 0, 1 << 20);
    if (a->bad) return 2;
    kiln_ctx *ctx = open_ctx("kiln bench train");
    if (!ctx) return 1;
    model m;
    batches b = {0};
    int rc = 1;
    double *t = calloc((size_t)steps, sizeof *t);
    if (!t || model_new(ctx, kind, batch, &m) != 0 || (amp && !(m.scaler = kiln_grad_scaler_new(ctx, NULL)))) {
        fprintf(stderr, "kiln bench train: %s\n", kiln_error_message(ctx));
        free(t);
        kiln_close(ctx);
        return 1;
    }
    if (batches_new(&b, 16, &m) != 0) {
        fprintf(stderr, "kiln bench train: out of host memory\n");
        goto out;
    }
    for (int j = 0; j < b.n; j++)
        if (!(b.dx[j] = kiln_tensor_keep(batch_x(ctx, &m, &b, j))) ||
            !(b.dy[j] = kiln_tensor_keep(batch_y(ctx, &b, j)))) {
            fprintf(stderr, "kiln bench train: %s\n", kiln_error_message(ctx));
            goto out;
        }
    b.resident = true;
    /* what the timed steps asked of the device, summed step by step: the bench's own wait
     * after each step (to time it) and its reads of the loss are not the step's */
    kiln_ctx_stats cs = {0};
    float first = NAN, last = NAN;
    double cpu0 = 0;
    /* the pool after the first and the last timed step: a step's peak and what stays between
     * steps (parameters, gradients, optimizer state) must not grow from step to step */
    kiln_pool_stats p_first = {0}, p_last = {0};
    for (int i = 0; i < warmup + steps; i++) {
        if (i == warmup) cpu0 = bench_cpu_ms();
        b.keep_loss = i == 0 || i == warmup + steps - 1;
        kiln_ctx_stats c0, c1;
        kiln_ctx_stats_get(ctx, &c0);
        double t0 = bench_now_ms();
        float l = NAN;
        kiln_status st = train_step(ctx, &m, &b, i, NULL);
        kiln_ctx_stats_get(ctx, &c1);
        if (st == KILN_OK) st = kiln_sync(ctx);
        double t1 = bench_now_ms();
        if (st == KILN_OK && b.loss) l = kiln_tensor_item(b.loss);
        kiln_tensor_free(b.loss);
        b.loss = NULL;
        if (st != KILN_OK || kiln_error_status(ctx) != KILN_OK) {
            fprintf(stderr, "kiln bench train: step %d: %s\n", i, kiln_error_message(ctx));
            goto out;
        }
        if (i >= warmup) /* every field is a uint64_t count */
            for (size_t k = 0; k < sizeof cs / sizeof(uint64_t); k++)
                ((uint64_t *)&cs)[k] += ((const uint64_t *)&c1)[k] - ((const uint64_t *)&c0)[k];
        if (i == 0) first = l;
        last = l;
        if (i >= warmup) t[i - warmup] = t1 - t0;
        if (i == warmup) kiln_pool_stats_get(ctx, &p_first);
        if (i == warmup + steps - 1) kiln_pool_stats_get(ctx, &p_last);
    }
    int64_t growth = (int64_t)(p_last.peak_in_use_bytes - p_first.peak_in_use_bytes);
    int64_t kept_growth = (int64_t)p_last.in_use_bytes - (int64_t)p_first.in_use_bytes;
    /* process CPU time per step (every thread): barely moved by other load on the cores */
    double cpu_step = (bench_cpu_ms() - cpu0) / steps;
    double mean = 0;
    for (int i = 0; i < steps; i++) mean += t[i] / steps;
    double med = bench_median(t, steps);
    kiln_pool_stats ps;
    kiln_pool_stats_get(ctx, &ps);
    const char *name = model_info[kind].name;
    long long nparams =
        (long long)kiln_module_num_elements(m.net) + (m.gen ? (long long)kiln_module_num_elements(m.gen) : 0);
    if (json) {
        printf(
            "{\"bench\": \"train\", \"impl\": \"kiln\", \"model\": \"%s\", \"amp\": %s, \"batch\": %d, \"steps\": %d, "
            "\"params\": %lld, "
            "\"ms_per_step\": %.3f, \"mean_ms\": %.3f, \"min_ms\": %.3f, \"cpu_ms_per_step\": %.3f, "
            "\"samples_per_s\": %.1f, "
            "\"peak_pool_bytes\": %llu, \"peak_pool_growth_bytes\": %lld, \"between_steps_bytes\": %llu, "
            "\"between_steps_growth_bytes\": %lld, "
            "\"peak_rss_mib\": %.1f, \"loss_first\": %.4f, \"loss_last\": %.4f, "
            "\"gemm\": ",
            name, amp ? "\"f16\"" : "null", batch, steps, nparams, med, mean, t[0], cpu_step, batch * 1e3 / med,
            (unsigned long long)ps.peak_in_use_bytes, (long long)growth, (unsigned long long)p_last.in_use_bytes,
            (long long)kept_growth, peak_rss_mib(), first, last);
        tool_json_str(gemm_route(ctx));
        /* what one step asked of the device (kiln_ctx_stats), averaged over the timed steps */
        printf(", \"per_step\": {\"launches\": %.1f, \"library_calls\": %.1f, \"host_waits\": %.1f, "
               "\"blocking_reads\": %.1f, \"blocking_writes\": %.1f, \"finishes\": %.1f, \"bytes_to_host\": %.0f, "
               "\"bytes_to_device\": %.0f, \"pool_device_allocs\": %.1f, \"pool_reuses\": %.1f}",
               (double)cs.launches / steps, (double)cs.library_calls / steps, (double)cs.host_waits / steps,
               (double)cs.blocking_reads / steps, (double)cs.blocking_writes / steps, (double)cs.finishes / steps,
               (double)cs.bytes_to_host / steps, (double)cs.bytes_to_device / steps,
               (double)cs.pool_device_allocs / steps, (double)cs.pool_reuses / steps);
        printf(", \"tuning\": "), tool_json_str(kiln__tune_source());
        printf(", \"device\": "), tool_json_str(kiln_ctx_device(ctx)->name);
        json_gemm_setup(ctx);
        if (kind == MODEL_GPT) printf(", \"attention\": \"%s\"", gpt_impl == KILN_SDPA_FUSED ? "fused" : "composed");
        printf("}\n");
    } else {
        if (kind == MODEL_GPT) printf("[attention: %s] ", gpt_impl == KILN_SDPA_FUSED ? "fused" : "composed");
        if (amp) printf("[amp: f16 autocast, loss scaling] ");
        printf("train %s batch %d, %lld parameters: %.2f ms/step median (mean %.2f, min %.2f over %d steps; CPU "
               "%.2f ms/step), %.0f samples/s, peak pool %.1f MiB (grew %lld B from the first timed step to the "
               "last; %.1f MiB kept between steps, grew %lld B), peak RSS %.1f MiB, loss %.3f -> %.3f  [GEMM: %s; "
               "CLBlast parameters: %s]\n",
               name, batch, nparams, med, mean, t[0], steps, cpu_step, batch * 1e3 / med,
               ps.peak_in_use_bytes / 1048576.0, (long long)growth, p_last.in_use_bytes / 1048576.0,
               (long long)kept_growth, peak_rss_mib(), first, last, gemm_route(ctx), kiln__tune_source());
    }
    if (growth != 0 || kept_growth != 0) {
        fprintf(stderr, "kiln bench train: device memory grew from step to step (peak by %lld B, kept by %lld B)\n",
                (long long)growth, (long long)kept_growth);
        goto out;
    }
    rc = 0;
out:
    batches_free(&b);
    free(t);
    model_free(&m);
    kiln_close(ctx);
    return rc;
}

/* ---- data-parallel training steps (kiln bench dist, under mpirun) --------------------- */

/* Each rank trains the model on its own random batches with kiln_dist (gradients averaged
 * in buckets during the backward); rank 0 prints the median step, the samples per second of
 * all ranks together, the bytes each rank all-reduces per step and the median time
 * kiln_dist_sync_grads waited after the backward (the communication overlap did not hide). */
static int cmd_dist(args *a, bool json) {
    if (!args_check(a, (const char *const[]){"--model", "--batch", "--steps", "--warmup", "--bucket-mb", NULL}, NULL))
        return 2;
    model_kind kind;
    if (parse_model(a, &kind) != 0) return 2;
    if (CHARLM(kind) || kind == MODEL_AE) {
        fprintf(stderr, "kiln bench dist: --model %s: expected mlp, cnn or resnet20\n", model_info[kind].name);
        return 2;
    }
    int batch = (int)arg_long(a, "--batch", model_info[kind].batch, 1, 1 << 16);
    int steps = (int)arg_long(a, "--steps", 20, 1, 1 << 24);
    int warmup = (int)arg_long(a, "--warmup", 3, 0, 1 << 20);
    long bucket_mb = arg_long(a, "--bucket-mb", 25, 1, 1 << 14);
    if (a->bad) return 2;
    if (kiln_dist_init(NULL, NULL) != KILN_OK) {
        fprintf(stderr, "kiln bench dist: %s\n", kiln_last_error());
        return 1;
    }
    const int rank = kiln_dist_rank(), world = kiln_dist_world_size();
    kiln_ctx *ctx = open_ctx("kiln bench dist");
    if (!ctx) return 1;
    model m;
    batches b = {0};
    kiln_dist_model *dm = NULL;
    int rc = 1;
    double *t = calloc((size_t)steps, sizeof *t), *w = calloc((size_t)steps, sizeof *w);
    double *c = calloc((size_t)steps, sizeof *c);
    if (!t || !w || !c || model_new(ctx, kind, batch, &m) != 0) {
        fprintf(stderr, "kiln bench dist: %s\n", kiln_error_message(ctx));
        free(t), free(w), free(c);
        kiln_close(ctx);
        return 1;
    }
    dm = kiln_dist_wrap(m.net, &(kiln_dist_opts){.bucket_bytes = (size_t)bucket_mb << 20});
    if (!dm || batches_new(&b, 4, &m) != 0) {
        fprintf(stderr, "kiln bench dist: rank %d: %s\n", rank, kiln_error_message(ctx));
        goto out;
    }
    for (int i = 0; i < warmup + steps; i++) {
        double t0 = bench_now_ms();
        int j = (i + rank) % b.n; /* each rank its own batch */
        kiln_scope_begin(ctx);
        kiln_tensor *x = kiln_from_host(ctx, b.x + (int64_t)j * b.xnumel, KILN_F32, m.xnd, m.xshape);
        kiln_tensor *y = kiln_from_host(ctx, b.y + (int64_t)j * b.ynumel, KILN_I32, 1, (int64_t[]){b.ynumel});
        kiln_tensor *loss = kiln_cross_entropy(ctx, kiln_forward(m.net, x), y, KILN_MEAN);
        kiln_status s = loss ? kiln_optim_zero_grad(m.opt) : kiln_error_status(ctx);
        if (s == KILN_OK) s = kiln_backward(loss);
        if (s == KILN_OK) s = kiln_dist_sync_grads(dm);
        if (s == KILN_OK) s = kiln_optim_step(m.opt);
        float l = s == KILN_OK ? kiln_tensor_item(loss) : NAN;
        if (s == KILN_OK && kiln_error_status(ctx) != KILN_OK) s = kiln_error_status(ctx);
        kiln_scope_end(ctx);
        if (s != KILN_OK || !isfinite(l)) {
            fprintf(stderr, "kiln bench dist: rank %d, step %d: %s\n", rank, i, kiln_error_message(ctx));
            goto out;
        }
        kiln_dist_stats st;
        kiln_dist_model_stats(dm, &st);
        if (i >= warmup)
            t[i - warmup] = bench_now_ms() - t0, w[i - warmup] = st.last_wait_ms, c[i - warmup] = st.last_comm_wait_ms;
    }
    /* the slowest rank sets the pace: the largest median */
    double v[3] = {bench_median(t, steps), bench_median(w, steps), bench_median(c, steps)};
    if (kiln_dist_allreduce_f64(v, 3, KILN_DIST_MAX) != KILN_OK) {
        fprintf(stderr, "kiln bench dist: %s\n", kiln_last_error());
        goto out;
    }
    kiln_dist_stats st;
    kiln_dist_model_stats(dm, &st);
    if (rank == 0) {
        double sps = world * batch * 1e3 / v[0];
        if (json)
            printf("{\"bench\": \"dist\", \"model\": \"%s\", \"ranks\": %d, \"batch_per_rank\": %d, \"steps\": %d, "
                   "\"ms_per_step\": %.3f, \"samples_per_s\": %.1f, \"allreduce_bytes_per_step\": %llu, "
                   "\"buckets\": %d, \"sync_wait_ms\": %.3f, \"comm_wait_ms\": %.3f, \"comm_wait_fraction\": %.4f}\n",
                   model_info[kind].name, world, batch, steps, v[0], sps, (unsigned long long)st.bytes_per_step,
                   st.buckets, v[1], v[2], v[2] / v[0]);
        else
            printf("dist %s: %d ranks x batch %d: %.2f ms/step median, %.1f samples/s, %.2f MB all-reduced per step "
                   "by each rank in %d buckets; after the backward was enqueued %.2f ms in kiln_dist_sync_grads, "
                   "of which %.2f ms (%.1f %% of the step) waiting for communication\n",
                   model_info[kind].name, world, batch, v[0], sps, st.bytes_per_step / 1e6, st.buckets, v[1], v[2],
                   100 * v[2] / v[0]);
    }
    rc = 0;
out:
    batches_free(&b);
    free(t), free(w), free(c);
    kiln_dist_model_free(dm);
    model_free(&m);
    kiln_close(ctx);
    kiln_dist_finalize();
    return rc;
}

/* ---- the products of a training step ------------------------------------------------- */

/* The distinct products kiln__sgemm is given in one training step, in first-seen order. */
#define SEEN_MAX 64
typedef struct seen_products {
    struct {
        char op[48];
        bool ta, tb;
        size_t m, n, k, batch;
        int count;
    } p[SEEN_MAX];
    int n, dropped;
} seen_products;

static void seen_product(void *arg, const char *op, bool ta, bool tb, size_t m, size_t n, size_t k, size_t batch) {
    seen_products *s = arg;
    for (int i = 0; i < s->n; i++)
        if (s->p[i].ta == ta && s->p[i].tb == tb && s->p[i].m == m && s->p[i].n == n && s->p[i].k == k &&
            s->p[i].batch == batch && strcmp(s->p[i].op, op) == 0) {
            s->p[i].count++;
            return;
        }
    if (s->n == SEEN_MAX) {
        s->dropped++;
        return;
    }
    snprintf(s->p[s->n].op, sizeof s->p[s->n].op, "%s", op);
    s->p[s->n].ta = ta, s->p[s->n].tb = tb, s->p[s->n].m = m, s->p[s->n].n = n, s->p[s->n].k = k;
    s->p[s->n].batch = batch, s->p[s->n].count = 1;
    s->n++;
}

/* `kiln bench gemm --model NAME`: every distinct product one training step of the model
 * issues (recorded as kiln__sgemm receives them), each timed as `kiln bench gemm` times one
 * shape, so that "every GEMM shape of the reference models" is what the models issue, not a
 * list kept by hand. A batched product is timed as one product of its shape (its line says
 * how many the step runs). */
static int cmd_gemm_model(args *a, bool json) {
    if (!args_check(a, (const char *const[]){"--model", "--batch", "--repeat", NULL},
                    (const char *const[]){"--no-check", NULL}))
        return 2;
    model_kind kind;
    if (parse_model(a, &kind) != 0) return 2;
    int batch = (int)arg_long(a, "--batch", model_info[kind].batch, 1, 1 << 16);
    int repeat = (int)arg_long(a, "--repeat", 10, 1, 100000);
    bool check = !arg_flag(a, "--no-check");
    if (a->bad) return 2;
    kiln_ctx *ctx = open_ctx("kiln bench gemm");
    if (!ctx) return 1;
    model m;
    batches b = {0};
    seen_products *seen = calloc(1, sizeof *seen);
    kiln_times *times = NULL;
    int rc = 1;
    if (!seen || model_new(ctx, kind, batch, &m) != 0) {
        fprintf(stderr, "kiln bench gemm: %s\n", seen ? kiln_error_message(ctx) : "out of host memory");
        free(seen);
        kiln_close(ctx);
        return 1;
    }
    if (batches_new(&b, 1, &m) != 0) {
        fprintf(stderr, "kiln bench gemm: out of host memory\n");
        goto out;
    }
    kiln__hooks *h = kiln__hooks_of(ctx);
    h->gemm_seen = seen_product;
    h->gemm_seen_arg = seen;
    kiln_status st = train_step(ctx, &m, &b, 0, NULL);
    h->gemm_seen = NULL;
    if (st != KILN_OK) {
        fprintf(stderr, "kiln bench gemm: a training step of %s: %s\n", arg_value(a, "--model"),
                kiln_error_message(ctx));
        goto out;
    }
    if (seen->n == 0) {
        fprintf(stderr, "kiln bench gemm: a training step of %s issued no matrix product\n", arg_value(a, "--model"));
        goto out;
    }
    if (seen->dropped) fprintf(stderr, "kiln bench gemm: %d more distinct products not timed\n", seen->dropped);
    /* every product's kiln times first, then OpenBLAS's: OpenBLAS's worker threads spin for a
     * while after each of its calls, and a kiln product timed next shared the cores with
     * them (README.md, "Per-ISA tables", has the counts) */
    rc = 0;
    times = calloc((size_t)seen->n, sizeof *times);
    if (!times) {
        fprintf(stderr, "kiln bench gemm: out of host memory\n");
        rc = 1;
        goto out;
    }
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < seen->n; i++) {
            char name[96];
            snprintf(name, sizeof name, "%s %s x%d", arg_value(a, "--model"), seen->p[i].op,
                     seen->p[i].count * (int)seen->p[i].batch);
            bench_gemm_shape s = {name,          (int64_t)seen->p[i].m, (int64_t)seen->p[i].n, (int64_t)seen->p[i].k,
                                  seen->p[i].ta, seen->p[i].tb};
            if (pass == 0 && gemm_kiln_times(ctx, &s, repeat, &times[i]) != 0) times[i].kms = -1, rc = 1;
            if (pass == 1 && times[i].kms >= 0 && gemm_report(ctx, &s, repeat, check, json, &times[i]) != 0) rc = 1;
        }
out:
    free(times);
    batches_free(&b);
    model_free(&m);
    free(seen);
    kiln_close(ctx);
    return rc;
}

/* ---- start-up ------------------------------------------------------------------------- */

/* The child: open, build the MLP, one training step; prints its times as one JSON line. */
static int startup_child(void) {
    double t0 = bench_now_ms();
    kiln_ctx *ctx = open_ctx("kiln bench startup");
    if (!ctx) return 1;
    double t_open = bench_now_ms();
    model m;
    batches b = {0};
    if (model_new(ctx, MODEL_MLP, 64, &m) != 0 || batches_new(&b, 1, &m) != 0) {
        fprintf(stderr, "kiln bench startup: %s\n", kiln_error_message(ctx));
        return 1;
    }
    double t_model = bench_now_ms();
    if (train_step(ctx, &m, &b, 0, NULL) != KILN_OK) {
        fprintf(stderr, "kiln bench startup: %s\n", kiln_error_message(ctx));
        return 1;
    }
    double t_step = bench_now_ms();
    if (train_step(ctx, &m, &b, 1, NULL) != KILN_OK) return 1;
    double t_step2 = bench_now_ms();
    printf("{\"open_ms\": %.1f, \"model_ms\": %.1f, \"first_step_ms\": %.1f, \"second_step_ms\": %.2f, "
           "\"to_first_step_ms\": %.1f}\n",
           t_open - t0, t_model - t_open, t_step - t_model, t_step2 - t_step, t_step - t0);
    batches_free(&b);
    model_free(&m);
    kiln_close(ctx);
    return 0;
}

/* Runs this executable as a startup child with the given cache dirs; fills its JSON line and
 * the wall time from fork to exit. */
static int startup_run(const char *kiln_dir, const char *pocl_dir, char *line, size_t cap, double *wall) {
    int fd[2];
    if (pipe(fd) != 0) return -1;
    double t0 = bench_now_ms();
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        close(fd[0]);
        dup2(fd[1], 1);
        setenv("KILN_CACHE_DIR", kiln_dir, 1);
        if (pocl_dir) setenv("POCL_CACHE_DIR", pocl_dir, 1);
        execl("/proc/self/exe", "kiln", "bench", "startup", "--child", (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    size_t used = 0;
    ssize_t r;
    while (used + 1 < cap && (r = read(fd[0], line + used, cap - used - 1)) > 0) used += (size_t)r;
    line[used] = '\0';
    close(fd[0]);
    int status;
    waitpid(pid, &status, 0);
    *wall = bench_now_ms() - t0;
    char *nl = strchr(line, '\n');
    if (nl) *nl = '\0';
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 && line[0] == '{' ? 0 : -1;
}

static int cmd_startup(args *a, bool json) {
    if (!args_check(a, NULL, (const char *const[]){"--child", NULL})) return 2;
    if (arg_flag(a, "--child")) return startup_child();
    char tmpl[] = "/tmp/kiln-bench-startup-XXXXXX";
    if (!mkdtemp(tmpl)) {
        perror("kiln bench startup: mkdtemp");
        return 1;
    }
    char kdir[256], kdir2[256], pdir[256];
    snprintf(kdir, sizeof kdir, "%s/kiln", tmpl);
    snprintf(kdir2, sizeof kdir2, "%s/kiln2", tmpl);
    snprintf(pdir, sizeof pdir, "%s/pocl", tmpl);
    /* cold: both kiln's and POCL's (the driver's own compiled-kernel cache) empty;
     * kiln-cold: kiln's empty, POCL's warm (a new kiln cache on a machine that ran OpenCL);
     * warm: both filled by the runs before. */
    struct {
        const char *name, *kdir, *pdir;
    } runs[] = {{"cold", kdir, pdir}, {"warm", kdir, pdir}, {"kiln-cold", kdir2, pdir}};
    int rc = 0;
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        char line[1024];
        double wall;
        if (startup_run(runs[i].kdir, runs[i].pdir, line, sizeof line, &wall) != 0) {
            fprintf(stderr, "kiln bench startup: the %s run failed: %s\n", runs[i].name, line);
            rc = 1;
            break;
        }
        if (json) {
            printf("{\"bench\": \"startup\", \"cache\": \"%s\", \"process_wall_ms\": %.1f, %s\n", runs[i].name, wall,
                   line + 1);
        } else {
            double open_ms = NAN, first = NAN, to_first = NAN;
            const char *p;
            if ((p = strstr(line, "\"open_ms\": "))) open_ms = atof(p + 11);
            if ((p = strstr(line, "\"first_step_ms\": "))) first = atof(p + 17);
            if ((p = strstr(line, "\"to_first_step_ms\": "))) to_first = atof(p + 20);
            printf("startup %-9s: kiln_open %.0f ms, first MLP step %.0f ms, open to first step done %.0f ms, "
                   "whole process %.0f ms\n",
                   runs[i].name, open_ms, first, to_first, wall);
        }
    }
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpl);
    if (system(cmd) != 0) fprintf(stderr, "kiln bench startup: could not remove %s\n", tmpl);
    return rc;
}

/* ---- per-op times --------------------------------------------------------------------- */

typedef struct op_times {
    double fwd, bwd, fwd_cpu, bwd_cpu; /* medians: wall ms, process CPU ms */
} op_times;

/*
 * Times module mod on x: the forward, and a backward from its output with a ones seed
 * (graph retained). The input requires grad unless it is the data, and its gradient is
 * cleared before each backward, so a backward costs what it costs inside a training step:
 * the layer's rule plus the copy of the input gradient into its slot (kiln__accum). The
 * seed's copy into the output's slot is counted too (in a step, the next layer pays it).
 * *out_keep gets the next layer's input: a leaf with the output's values.
 */
/* What time_runs times: a forward of mod on x, or a retained backward of y from seed (after
 * clearing x's gradient), synchronised. */
typedef struct timed_op {
    kiln_ctx *ctx;
    kiln_module *mod;
    kiln_tensor *x, *y, *seed;
} timed_op;

static kiln_status run_forward(timed_op *o) {
    kiln_tensor *y = kiln_forward(o->mod, o->x);
    return y ? kiln_sync(o->ctx) : kiln_error_status(o->ctx);
}

static kiln_status run_backward(timed_op *o) {
    kiln_tensor_clear_grad(o->x);
    kiln_status s = kiln_backward_ex(o->y, o->seed, true);
    return s == KILN_OK ? kiln_sync(o->ctx) : s;
}

/* Median wall and process-CPU ms of `repeat` runs of fn (after two untimed ones), each in its
 * own scope; v holds 2 * repeat doubles. -1 when a run fails. */
static int time_runs(timed_op *o, kiln_status (*fn)(timed_op *), int repeat, double *v, double *wall, double *cpu) {
    double *c = v + repeat;
    for (int i = -2; i < repeat; i++) {
        kiln_scope_begin(o->ctx);
        double c0 = bench_cpu_ms(), t0 = bench_now_ms();
        kiln_status s = fn(o);
        double t1 = bench_now_ms(), c1 = bench_cpu_ms();
        kiln_scope_end(o->ctx);
        if (s != KILN_OK) return -1;
        if (i >= 0) v[i] = t1 - t0, c[i] = c1 - c0;
    }
    *wall = bench_median(v, repeat);
    *cpu = bench_median(c, repeat);
    return 0;
}

static int time_module(kiln_ctx *ctx, kiln_module *mod, kiln_tensor *x, int repeat, op_times *t,
                       kiln_tensor **out_keep) {
    double *v = calloc((size_t)repeat * 2, sizeof *v);
    if (!v) return -1;
    timed_op o = {ctx, mod, x, NULL, NULL};
    if (time_runs(&o, run_forward, repeat, v, &t->fwd, &t->fwd_cpu) != 0) {
        free(v);
        return -1;
    }
    kiln_tensor *y = kiln_forward(mod, x); /* outside any scope: kept */
    kiln_tensor *seed = y ? kiln_ones(ctx, kiln_tensor_ndim(y), kiln_tensor_shape(y)) : NULL;
    if (!seed) {
        free(v);
        return -1;
    }
    t->bwd = t->bwd_cpu = NAN;
    o.y = y;
    o.seed = seed;
    if (kiln_tensor_requires_grad(y) && time_runs(&o, run_backward, repeat, v, &t->bwd, &t->bwd_cpu) != 0) {
        free(v);
        kiln_tensor_free(seed);
        kiln_tensor_free(y);
        return -1;
    }
    free(v);
    kiln_tensor_free(seed);
    kiln_tensor *next = kiln_clone(ctx, kiln_detach(ctx, y));
    kiln_tensor_free(y);
    if (!next) return -1;
    kiln_tensor_set_requires_grad(next, true);
    *out_keep = next;
    return 0;
}

/* The layers `kiln bench ops` times in turn, each on the previous one's output: the CNN's
 * children; ResNet-20's stem layers, each residual block (layerN.K), the pool, a flatten
 * (inside its forward; *flatten gets the module, which the caller frees) and fc. */
static int ops_layers(kiln_ctx *ctx, model *m, kiln_module **layers, char (*names)[40], int cap,
                      kiln_module **flatten) {
    static const char *const cnn[] = {"conv1 conv(1,32,3)", "relu1",   "conv2 conv(32,64,3)",  "relu2", "maxpool2",
                                      "dropout(.25)",       "flatten", "fc1 linear(9216,128)", "relu3", "dropout(.5)",
                                      "fc2 linear(128,10)"};
    int n = 0;
    for (int i = 0; i < kiln_module_num_children(m->net) && n < cap; i++) {
        kiln_module *c = kiln_module_child(m->net, i);
        const char *cname = kiln_module_child_name(m->net, i);
        if (m->kind != MODEL_RESNET20) {
            snprintf(names[n], sizeof names[n], "%s", i < 11 ? cnn[i] : cname);
            layers[n++] = c;
        } else if (strcmp(kiln_module_kind(c), "Sequential") == 0) {
            for (int k = 0; k < kiln_module_num_children(c) && n < cap; k++) {
                snprintf(names[n], sizeof names[n], "%s.%s %s", cname, kiln_module_child_name(c, k),
                         kiln_module_find_child(kiln_module_child(c, k), "downsample") ? "block+proj" : "block");
                layers[n++] = kiln_module_child(c, k);
            }
        } else {
            snprintf(names[n], sizeof names[n], "%s", cname);
            layers[n++] = c;
            if (strcmp(cname, "avgpool") == 0 && n < cap) {
                if (!(*flatten = kiln_nn_flatten(ctx, 1, -1))) return -1;
                snprintf(names[n], sizeof names[n], "flatten");
                layers[n++] = *flatten;
            }
        }
    }
    return n;
}

/* ---- launch: the least a kiln op costs ----------------------------------------------- */

/* `kiln bench launch`: an op whose kernel does next to nothing, `repeat` calls back to back
 * and one wait, in rounds: what one op costs beyond its arithmetic (the output from the
 * pool, the kernel's lookup, the arguments, the enqueue, the device's dispatch), the floor
 * under every small product and elementwise op of a training step. Two ops: kiln_relu of
 * 64 floats, and the smallest product, kiln_matmul_ex of [4, 16] by [4, 16]^T (one block
 * of gemm_nt on CPUs, a product's whole set of arguments). The launches are counted
 * (kiln_ctx_stats): one per call, or the command fails. */
static const char *launch_rounds(kiln_ctx *ctx, bool product, kiln_tensor *x, int repeat, int rounds, double *us) {
    for (int r = -1; r < rounds; r++) { /* round -1: the warm-up (kernel built) */
        kiln_ctx_stats st = {0};
        kiln_ctx_stats_reset(ctx);
        double t0 = bench_now_ms();
        for (int i = 0; i < repeat; i++) {
            kiln_tensor *y = product ? kiln_matmul_ex(ctx, x, x, KILN_TRANS_B) : kiln_relu(ctx, x);
            if (!y) return kiln_error_message(ctx);
            kiln_tensor_free(y);
        }
        if (kiln_sync(ctx) != KILN_OK) return kiln_error_message(ctx);
        if (r >= 0) us[r] = (bench_now_ms() - t0) * 1e3 / repeat;
        if (kiln_ctx_stats_get(ctx, &st) != KILN_OK || st.launches != (uint64_t)repeat)
            return "not one launch per op (kiln_ctx_stats)";
    }
    return NULL;
}

static int cmd_launch(args *a, bool json) {
    if (!args_check(a, (const char *const[]){"--repeat", "--rounds", "--op", NULL}, NULL)) return 2;
    int repeat = (int)arg_long(a, "--repeat", 2000, 1, 1 << 24);
    int rounds = (int)arg_long(a, "--rounds", 5, 1, 1000);
    const char *which = arg_value(a, "--op");
    if (!which) which = "both";
    if (strcmp(which, "both") != 0 && strcmp(which, "relu") != 0 && strcmp(which, "matmul") != 0) {
        fprintf(stderr, "kiln bench launch: --op %s is not relu, matmul or both\n", which);
        return 2;
    }
    if (a->bad) return 2;
    kiln_ctx *ctx = open_ctx("kiln bench launch");
    if (!ctx) return 1;
    double *us = calloc((size_t)rounds, sizeof *us);
    kiln_tensor *v = kiln_ones(ctx, 1, (const int64_t[]){64});
    kiln_tensor *m = kiln_ones(ctx, 2, (const int64_t[]){4, 16});
    const char *why = !us ? "out of host memory" : !v || !m ? kiln_error_message(ctx) : NULL;
    static const char *const names[2] = {"kiln_relu of 64 floats", "kiln_matmul_ex of [4, 16] by [4, 16]^T"};
    for (int op = 0; op < 2 && !why; op++) {
        if (strcmp(which, "both") != 0 && strcmp(which, op ? "matmul" : "relu") != 0) continue;
        why = launch_rounds(ctx, op == 1, op ? m : v, repeat, rounds, us);
        if (why) break;
        double lo = us[0];
        for (int r = 1; r < rounds; r++)
            if (us[r] < lo) lo = us[r];
        double med = bench_median(us, rounds);
        if (json) {
            printf("{\"bench\": \"launch\", \"op\": \"%s\", \"repeat\": %d, \"rounds\": %d, "
                   "\"min_us\": %.3f, \"median_us\": %.3f, \"device\": ",
                   names[op], repeat, rounds, lo, med);
            tool_json_str(kiln_ctx_device(ctx)->name);
            printf("}\n");
        } else {
            printf("launch (%s, %d back to back, one wait): %.3f us each, median of %d rounds (least %.3f)  [%s]\n",
                   names[op], repeat, med, rounds, lo, kiln_ctx_device(ctx)->name);
        }
    }
    int rc = why ? 1 : 0;
    if (why) fprintf(stderr, "kiln bench launch: %s\n", why);
    kiln_tensor_free(v);
    kiln_tensor_free(m);
    free(us);
    kiln_close(ctx);
    return rc;
}

static int cmd_ops(args *a, bool json) {
    if (!args_check(a, (const char *const[]){"--model", "--batch", "--repeat", NULL}, NULL)) return 2;
    model_kind kind = MODEL_CNN;
    if (arg_value(a, "--model")) {
        if (parse_model(a, &kind) != 0) return 2;
        if (kind != MODEL_CNN && kind != MODEL_RESNET20) {
            fprintf(stderr, "kiln bench ops: --model %s: expected cnn or resnet20\n", model_info[kind].name);
            return 2;
        }
    }
    int batch = (int)arg_long(a, "--batch", model_info[kind].batch, 1, 1 << 16);
    int repeat = (int)arg_long(a, "--repeat", 10, 1, 100000);
    if (a->bad) return 2;
    kiln_ctx *ctx = open_ctx("kiln bench ops");
    if (!ctx) return 1;
    model m;
    if (model_new(ctx, kind, batch, &m) != 0) {
        fprintf(stderr, "kiln bench ops: %s\n", kiln_error_message(ctx));
        kiln_close(ctx);
        return 1;
    }
    kiln_module *layers[32], *flatten = NULL;
    char names[32][40];
    int nlayers = ops_layers(ctx, &m, layers, names, 32, &flatten);
    batches b = {0};
    int rc = 1;
    if (nlayers < 0 || batches_new(&b, 1, &m) != 0) goto out;
    kiln_tensor *x = kiln_from_host(ctx, b.x, KILN_F32, 4, m.xshape);
    double total_f = 0, total_b = 0, total_fc = 0, total_bc = 0;
    for (int i = 0; i < nlayers && x; i++) {
        op_times t;
        kiln_tensor *next = NULL;
        if (time_module(ctx, layers[i], x, repeat, &t, &next) != 0) {
            fprintf(stderr, "kiln bench ops: %s: %s\n", names[i], kiln_error_message(ctx));
            kiln_tensor_free(x);
            goto out;
        }
        kiln_tensor_free(x);
        x = next;
        total_f += t.fwd;
        total_b += isnan(t.bwd) ? 0 : t.bwd;
        total_fc += t.fwd_cpu;
        total_bc += isnan(t.bwd_cpu) ? 0 : t.bwd_cpu;
        if (json)
            printf("{\"bench\": \"ops\", \"model\": \"%s\", \"op\": \"%s\", \"batch\": %d, \"fwd_ms\": %.3f, "
                   "\"bwd_ms\": %.3f, \"fwd_cpu_ms\": %.3f, \"bwd_cpu_ms\": %.3f}\n",
                   kind == MODEL_RESNET20 ? "resnet20" : "cnn", names[i], batch, t.fwd, isnan(t.bwd) ? -1.0 : t.bwd,
                   t.fwd_cpu, isnan(t.bwd_cpu) ? -1.0 : t.bwd_cpu);
        else
            printf("%-24s fwd %8.3f ms   bwd %8.3f ms   (CPU fwd %8.3f ms, bwd %8.3f ms)\n", names[i], t.fwd, t.bwd,
                   t.fwd_cpu, t.bwd_cpu);
    }
    /* the loss and the optimizer step */
    kiln_tensor *y = kiln_from_host(ctx, b.y, KILN_I32, 1, (int64_t[]){batch});
    double *v = calloc((size_t)repeat, sizeof *v), *w = calloc((size_t)repeat, sizeof *w),
           *o = calloc((size_t)repeat, sizeof *o);
    for (int i = -2; i < repeat && x && y && v && w && o; i++) {
        kiln_scope_begin(ctx);
        double t0 = bench_now_ms();
        kiln_tensor *loss = kiln_cross_entropy(ctx, x, y, KILN_MEAN);
        kiln_status s = loss ? kiln_sync(ctx) : kiln_error_status(ctx);
        double t1 = bench_now_ms();
        if (s == KILN_OK) s = kiln_backward(loss);
        if (s == KILN_OK) s = kiln_sync(ctx);
        double t2 = bench_now_ms();
        if (s == KILN_OK) s = kiln_optim_step(m.opt);
        if (s == KILN_OK) s = kiln_sync(ctx);
        double t3 = bench_now_ms();
        kiln_scope_end(ctx);
        if (s != KILN_OK) {
            fprintf(stderr, "kiln bench ops: loss: %s\n", kiln_error_message(ctx));
            break;
        }
        if (i >= 0) v[i] = t1 - t0, w[i] = t2 - t1, o[i] = t3 - t2;
    }
    if (v && w && o && kiln_error_status(ctx) == KILN_OK) {
        double lf = bench_median(v, repeat), lb = bench_median(w, repeat), os = bench_median(o, repeat);
        if (json) {
            printf("{\"bench\": \"ops\", \"op\": \"%s\", \"batch\": %d, \"fwd_ms\": %.3f, \"bwd_ms\": %.3f}\n",
                   kiln__op_name(KILN__OP_CROSS_ENTROPY), batch, lf, lb);
            printf("{\"bench\": \"ops\", \"op\": \"%s_step\", \"batch\": %d, \"fwd_ms\": %.3f, \"bwd_ms\": -1}\n",
                   kiln__op_name(KILN__OP_SGD), batch, os);
            printf("{\"bench\": \"ops\", \"op\": \"total\", \"batch\": %d, \"fwd_ms\": %.3f, \"bwd_ms\": %.3f, "
                   "\"step_ms\": %.3f, \"layers_fwd_cpu_ms\": %.3f, \"layers_bwd_cpu_ms\": %.3f, \"gemm\": ",
                   batch, total_f + lf, total_b + lb, os, total_fc, total_bc);
            tool_json_str(gemm_route(ctx));
            printf(", \"tuning\": "), tool_json_str(kiln__tune_source());
            printf("}\n");
        } else {
            printf("%-24s fwd %8.3f ms   bwd %8.3f ms\n", kiln__op_name(KILN__OP_CROSS_ENTROPY), lf, lb);
            printf("%-24s     %8.3f ms\n", "sgd step (momentum)", os);
            printf("%-24s fwd %8.3f ms   bwd %8.3f ms   step %.3f ms (layers' CPU fwd %.3f, bwd %.3f ms)  "
                   "[GEMM: %s; CLBlast parameters: %s]\n",
                   "total", total_f + lf, total_b + lb, os, total_fc, total_bc, gemm_route(ctx), kiln__tune_source());
        }
        rc = 0;
    }
    free(v);
    free(w);
    free(o);
    kiln_tensor_free(y);
    kiln_tensor_free(x);
out:
    batches_free(&b);
    kiln_module_free(flatten);
    model_free(&m);
    kiln_close(ctx);
    return rc;
}

/* ---- scaled dot-product attention ------------------------------------------------------- */

/* One size of `kiln bench attention`: q, k, v [batch, heads, L, E] (L = S), forward and
 * backward of one impl, in a context of its own so that the pool's peak is this run's. */
typedef struct att_result {
    double fwd_ms, bwd_ms;
    uint64_t inputs_bytes, fwd_peak_bytes, bwd_peak_bytes; /* peaks over what the inputs hold */
} att_result;

static int att_run(int64_t L, int64_t heads, int64_t E, int64_t batch, bool causal, kiln_sdpa_impl impl, int repeat,
                   att_result *r) {
    kiln_ctx *ctx = open_ctx("kiln bench attention");
    if (!ctx) return -1;
    memset(r, 0, sizeof *r);
    int rc = -1;
    int64_t shape[4] = {batch, heads, L, E};
    kiln_manual_seed(ctx, 1);
    kiln_tensor *qkv[3], *g = kiln_rand_normal(ctx, 0, 1, 4, shape);
    for (int i = 0; i < 3; i++) {
        qkv[i] = kiln_rand_normal(ctx, 0, 1, 4, shape);
        if (qkv[i]) kiln_tensor_set_requires_grad(qkv[i], true);
    }
    double *tf = calloc((size_t)repeat, sizeof *tf), *tb = calloc((size_t)repeat, sizeof *tb);
    kiln_sdpa_opts o = kiln_sdpa_defaults();
    o.impl = impl, o.is_causal = causal;
    kiln_pool_stats ps;
    if (!tf || !tb || !g || kiln_sync(ctx) != KILN_OK || kiln_pool_stats_get(ctx, &ps) != KILN_OK) goto out;
    r->inputs_bytes = ps.in_use_bytes;
    /* one untimed round compiles the kernels; the peaks come from it */
    for (int i = -1; i < repeat; i++) {
        for (int j = 0; j < 3; j++) kiln_tensor_clear_grad(qkv[j]);
        kiln_scope_begin(ctx);
        double t0 = bench_now_ms();
        kiln_tensor *y = kiln_scaled_dot_product_attention(ctx, qkv[0], qkv[1], qkv[2], NULL, &o);
        kiln_status s = y ? kiln_sync(ctx) : kiln_error_status(ctx);
        double t1 = bench_now_ms();
        if (i < 0 && s == KILN_OK) s = kiln_pool_stats_get(ctx, &ps), r->fwd_peak_bytes = ps.peak_in_use_bytes;
        if (s == KILN_OK) s = kiln_backward_ex(y, g, false);
        if (s == KILN_OK) s = kiln_sync(ctx);
        double t2 = bench_now_ms();
        if (i < 0 && s == KILN_OK) s = kiln_pool_stats_get(ctx, &ps), r->bwd_peak_bytes = ps.peak_in_use_bytes;
        kiln_scope_end(ctx);
        if (s != KILN_OK) {
            fprintf(stderr, "kiln bench attention: L=%lld: %s\n", (long long)L, kiln_error_message(ctx));
            goto out;
        }
        if (i >= 0) tf[i] = t1 - t0, tb[i] = t2 - t1;
    }
    r->fwd_ms = bench_median(tf, repeat);
    r->bwd_ms = bench_median(tb, repeat);
    r->fwd_peak_bytes -= r->inputs_bytes;
    r->bwd_peak_bytes -= r->inputs_bytes;
    rc = 0;
out:
    free(tf);
    free(tb);
    kiln_close(ctx);
    return rc;
}

static int cmd_attention(args *a, bool json) {
    if (!args_check(a, (const char *const[]){"--sizes", "--heads", "--dim", "--batch", "--repeat", "--impl", NULL},
                    (const char *const[]){"--causal", NULL}))
        return 2;
    int64_t heads = arg_long(a, "--heads", 4, 1, 1024), E = arg_long(a, "--dim", 64, 1, 4096);
    int64_t batch = arg_long(a, "--batch", 1, 1, 1 << 16);
    int repeat = (int)arg_long(a, "--repeat", 3, 1, 1 << 20);
    bool causal = arg_flag(a, "--causal");
    const char *sizes = arg_value(a, "--sizes"), *impl = arg_value(a, "--impl");
    if (a->bad) return 2;
    if (!sizes) sizes = "128,512,2048";
    bool want[2] = {!impl || strcmp(impl, "fused") == 0, !impl || strcmp(impl, "composed") == 0};
    if (!want[0] && !want[1]) {
        fprintf(stderr, "kiln bench attention: --impl %s: expected fused or composed\n", impl);
        return 2;
    }
    long Ls[32];
    int nL = 0;
    for (const char *p = sizes; *p;) { /* every size is checked before any runs */
        char *end;
        long L = strtol(p, &end, 10);
        if (end == p || L < 1 || L > (1L << 24) || (*end && *end != ',') || nL == 32) {
            fprintf(stderr, "kiln bench attention: --sizes %s: expected lengths like 128,512,2048 (at most 32)\n",
                    sizes);
            return 2;
        }
        Ls[nL++] = L;
        p = *end == ',' ? end + 1 : end;
    }
    if (!json)
        printf("sdpa q, k, v [%lld, %lld, L, %lld]%s: median of %d; peak pool bytes over the inputs'\n"
               "%-9s %6s %10s %10s %12s %12s\n",
               (long long)batch, (long long)heads, (long long)E, causal ? ", causal" : "", repeat, "impl", "L",
               "fwd ms", "bwd ms", "fwd peak MiB", "bwd peak MiB");
    for (int li = 0; li < nL; li++) {
        long L = Ls[li];
        for (int k = 0; k < 2; k++) {
            if (!want[k]) continue;
            att_result r;
            kiln_sdpa_impl im = k ? KILN_SDPA_COMPOSED : KILN_SDPA_FUSED;
            if (att_run(L, heads, E, batch, causal, im, repeat, &r) != 0) return 1;
            const char *name = k ? "composed" : "fused";
            if (json)
                printf("{\"bench\": \"attention\", \"impl\": \"%s\", \"L\": %ld, \"S\": %ld, \"heads\": %lld, "
                       "\"E\": %lld, \"batch\": %lld, \"causal\": %s, \"fwd_ms\": %.3f, \"bwd_ms\": %.3f, "
                       "\"inputs_bytes\": %llu, \"fwd_peak_bytes\": %llu, \"bwd_peak_bytes\": %llu}\n",
                       name, L, L, (long long)heads, (long long)E, (long long)batch, causal ? "true" : "false",
                       r.fwd_ms, r.bwd_ms, (unsigned long long)r.inputs_bytes, (unsigned long long)r.fwd_peak_bytes,
                       (unsigned long long)r.bwd_peak_bytes);
            else
                printf("%-9s %6ld %10.2f %10.2f %12.2f %12.2f\n", name, L, r.fwd_ms, r.bwd_ms,
                       r.fwd_peak_bytes / 1048576.0, r.bwd_peak_bytes / 1048576.0);
            fflush(stdout);
        }
    }
    return 0;
}

/* ---- onnx: an ONNX model run by kiln beside PyTorch ----------------------------------- */

/* `kiln bench onnx MODEL [--batch 64] [--repeat 20] [--warmup 3] [--model cnn|resnet20
 * [--weights W] [--threads N]]`: kiln_onnx_run's median time at batch 1 (latency) and at
 * --batch (throughput) on random [N, C, H, W] inputs of the model's input shape, each run
 * drained (kiln_sync); with --model, tools/onnx_bench_torch.py's eval-mode PyTorch times of
 * the same model in the same sitting, and kiln's time over torch's. */
#include <kiln/onnx.h>

/* Median ms of `repeat` runs of m on a random input of `batch` rows, after `warmup`. */
static double onnx_time(kiln_ctx *ctx, kiln_onnx_model *m, const kiln_onnx_value_info *in, int64_t batch, int warmup,
                        int repeat) {
    int64_t shape[KILN_MAX_DIMS];
    for (int d = 0; d < in->ndim; d++) shape[d] = d == 0 ? batch : in->shape[d];
    double *v = calloc((size_t)repeat, sizeof *v);
    if (!v) return -1;
    kiln_tensor *x = kiln_rand_uniform(ctx, 0.0f, 1.0f, in->ndim, shape); /* outside any scope */
    double r = x ? 0 : -1;
    for (int i = -warmup; x && i < repeat; i++) {
        kiln_scope_begin(ctx);
        kiln_tensor *y = NULL;
        double t0 = bench_now_ms();
        kiln_status s = kiln_onnx_run(m, 1, &x, 1, &y);
        if (s == KILN_OK) s = kiln_sync(ctx);
        double t1 = bench_now_ms();
        kiln_scope_end(ctx);
        if (s != KILN_OK) {
            r = -1;
            break;
        }
        if (i >= 0) v[i] = t1 - t0;
    }
    if (r == 0) r = bench_median(v, repeat);
    kiln_tensor_free(x);
    free(v);
    return r;
}

/* tools/onnx_bench_torch.py's JSON line: latency_ms and batch_ms, or false. */
static bool torch_times(const char *model, const char *weights, int64_t batch, int repeat, int warmup, long threads,
                        double *lat, double *bat) {
    char cmd[2048];
    int n = snprintf(cmd, sizeof cmd,
                     "/usr/bin/python3 '" KILN_GOLDEN_SOURCE_DIR "/../../tools/onnx_bench_torch.py' --model %s "
                     "--batch %lld --repeat %d --warmup %d --threads %ld --json",
                     model, (long long)batch, repeat, warmup, threads);
    if (weights) snprintf(cmd + n, sizeof cmd - (size_t)n, " --weights '%s'", weights);
    FILE *p = popen(cmd, "r");
    if (!p) return false;
    char line[1024], last[1024] = "";
    while (fgets(line, sizeof line, p)) snprintf(last, sizeof last, "%s", line);
    int st = pclose(p);
    const char *l = strstr(last, "\"latency_ms\": "), *b = strstr(last, "\"batch_ms\": ");
    if (st != 0 || !l || !b) {
        fprintf(stderr, "kiln bench onnx: %s failed (status %d): %s", cmd, st, last);
        return false;
    }
    *lat = strtod(l + 14, NULL), *bat = strtod(b + 12, NULL);
    return true;
}

static int cmd_onnx(args *a, bool json) {
    static const char *const valued[] = {"--batch", "--repeat", "--warmup", "--model", "--weights", "--threads", NULL};
    const char *path = a->argc > 0 && a->argv[0][0] != '-' ? a->argv[0] : NULL;
    if (!path) {
        fprintf(stderr, "kiln bench onnx: expected a model file: kiln bench onnx MODEL.onnx [options]\n");
        return 2;
    }
    args rest = {a->argc - 1, a->argv + 1, false};
    if (!args_check(&rest, valued, NULL)) return 2;
    long batch = arg_long(&rest, "--batch", 64, 1, 1 << 16), repeat = arg_long(&rest, "--repeat", 20, 1, 100000),
         warmup = arg_long(&rest, "--warmup", 3, 0, 100000), threads = arg_long(&rest, "--threads", 0, 0, 4096);
    const char *model = arg_value(&rest, "--model"), *weights = arg_value(&rest, "--weights");
    if (model && strcmp(model, "cnn") && strcmp(model, "resnet20")) {
        fprintf(stderr, "kiln bench onnx: --model %s: expected cnn or resnet20 (torch_ref.py's, for PyTorch's time)\n",
                model);
        return 2;
    }
    if (rest.bad) return 2;
    kiln_ctx *ctx = open_ctx("kiln bench onnx");
    if (!ctx) return 1;
    kiln_onnx_model *m = NULL;
    kiln_onnx_value_info in;
    int rc = 1;
    if (kiln_onnx_load(ctx, path, &m) != KILN_OK || kiln_onnx_input_info(m, 0, &in) != KILN_OK) {
        fprintf(stderr, "kiln bench onnx: %s\n", kiln_error_message(ctx));
        goto done;
    }
    if (kiln_onnx_num_inputs(m) != 1 || in.ndim < 1 || in.dtype != KILN_F32) {
        fprintf(stderr, "kiln bench onnx: %s: one F32 input needed (it has %d inputs)\n", path,
                kiln_onnx_num_inputs(m));
        goto done;
    }
    for (int d = 1; d < in.ndim; d++)
        if (in.shape[d] < 0) {
            fprintf(stderr, "kiln bench onnx: %s: input %s has a symbolic dim %d besides the batch\n", path, in.name,
                    d);
            goto done;
        }
    bool fixed = in.shape[0] > 0; /* a fixed batch: that one only */
    int64_t b1 = fixed ? in.shape[0] : 1, bn = fixed ? in.shape[0] : batch;
    double lat = onnx_time(ctx, m, &in, b1, (int)warmup, (int)repeat);
    double bat = lat >= 0 ? onnx_time(ctx, m, &in, bn, (int)warmup, (int)repeat) : -1;
    if (lat < 0 || bat < 0) {
        fprintf(stderr, "kiln bench onnx: %s\n", kiln_error_message(ctx));
        goto done;
    }
    double tlat = NAN, tbat = NAN;
    if (model && !torch_times(model, weights, bn, (int)repeat, (int)warmup, threads, &tlat, &tbat)) goto done;
    double load[3] = {0};
    getloadavg(load, 3);
    if (json) {
        printf("{\"bench\":\"onnx\",\"model\":");
        tool_json_str(path);
        printf(",\"latency_ms\":%.4f,\"batch\":%lld,\"batch_ms\":%.4f,\"images_per_s\":%.1f", lat, (long long)bn, bat,
               (double)bn / (bat / 1e3));
        if (model)
            printf(",\"torch_latency_ms\":%.4f,\"torch_batch_ms\":%.4f,\"latency_ratio\":%.3f,\"batch_ratio\":%.3f",
                   tlat, tbat, lat / tlat, bat / tbat);
        printf(",\"loadavg\":%.2f}\n", load[0]);
    } else {
        printf("%s on %s (load average %.2f):\n", path, kiln_ctx_device(ctx)->name, load[0]);
        printf("  kiln   latency %9.3f ms (batch %lld)   %9.3f ms at batch %lld = %8.1f images/s\n", lat, (long long)b1,
               bat, (long long)bn, (double)bn / (bat / 1e3));
        if (model)
            printf("  torch  latency %9.3f ms             %9.3f ms at batch %lld = %8.1f images/s\n"
                   "  kiln / torch: latency %.2fx, batch %.2fx\n",
                   tlat, tbat, (long long)bn, (double)bn / (tbat / 1e3), lat / tlat, bat / tbat);
    }
    rc = 0;
done:
    kiln_onnx_free(m);
    kiln_close(ctx);
    return rc;
}

/* ---- dispatch ------------------------------------------------------------------------- */

static void bench_usage(FILE *f) {
    fprintf(f, "usage: kiln bench <what> [--json] [options]\n"
               "  gemm --m M --n N --k K [--trans-a] [--trans-b] [--repeat R] [--no-check]\n"
               "                    kiln's GEMM against OpenBLAS cblas_sgemm on the same data\n"
               "  gemm --model mlp|cnn|resnet20|lstm|ae [--batch B] [--repeat R] [--no-check]\n"
               "                    the same for every product one training step of the model issues\n"
               "  train --model mlp|cnn|resnet20|lstm|gpt|ae|dcgan\n"
               "        [--batch B (torch_ref.py's: 64, 64, 128, 32, 16, 64, 64)] [--steps N]\n"
               "        [--warmup 5] [--attention composed|fused (gpt's sdpa path)]\n"
               "                    training steps of torch_ref.py's models on random data\n"
               "  dist --model mlp|cnn|resnet20 [--batch B per rank] [--steps 20] [--warmup 3] [--bucket-mb 25]\n"
               "                    under mpirun: data-parallel steps (kiln/dist.h), samples/s of all ranks,\n"
               "                    bytes all-reduced and the wait after the backward\n"
               "  startup           kiln_open to the first MLP step, cold and warm caches\n"
               "  launch [--repeat 2000] [--rounds 5] [--op relu|matmul|both]\n"
               "                    the least a kiln op costs: kiln_relu of 64 floats and the smallest product\n"
               "                    (4 x 4 x 16 A B^T), back to back, one wait\n"
               "  ops [--model cnn|resnet20] [--batch 64 (resnet20: 128)] [--repeat R]\n"
               "                    forward/backward time of each layer (ResNet-20: each block) of the model\n"
               "  attention [--sizes 128,512,2048] [--heads 4] [--dim 64] [--batch 1] [--causal] [--repeat 3]\n"
               "        [--impl fused|composed]\n"
               "                    kiln_scaled_dot_product_attention forward and backward, time and peak\n"
               "                    device memory, fused against composed (tools/attention_torch.py: PyTorch's)\n"
               "  onnx MODEL.onnx [--batch 64] [--repeat 20] [--warmup 3] [--model cnn|resnet20 [--weights W]]\n"
               "        [--threads N]\n"
               "                    kiln_onnx_run at batch 1 and at --batch; with --model, beside PyTorch's\n"
               "                    eval-mode inference of it (tools/onnx_bench_torch.py)\n");
}

int kiln_cmd_bench(int argc, char **argv) {
    if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
        bench_usage(argc < 1 ? stderr : stdout);
        return argc < 1 ? 2 : 0;
    }
    args a = {argc - 1, argv + 1, false};
    bool json = arg_flag(&a, "--json");
    if (strcmp(argv[0], "gemm") == 0) return cmd_gemm(&a, json);
    if (strcmp(argv[0], "train") == 0) return cmd_train(&a, json);
    if (strcmp(argv[0], "dist") == 0) return cmd_dist(&a, json);
    if (strcmp(argv[0], "startup") == 0) return cmd_startup(&a, json);
    if (strcmp(argv[0], "ops") == 0) return cmd_ops(&a, json);
    if (strcmp(argv[0], "launch") == 0) return cmd_launch(&a, json);
    if (strcmp(argv[0], "attention") == 0) return cmd_attention(&a, json);
    if (strcmp(argv[0], "onnx") == 0) return cmd_onnx(&a, json);
    fprintf(stderr, "kiln bench: unknown benchmark '%s'\n", argv[0]);
    bench_usage(stderr);
    return 2;
}

/* tests/test_random.c - kiln_rand_uniform / kiln_rand_normal / kiln_manual_seed: Philox
 * known answers, device output against an independent host Philox (bit-exact for uniform),
 * reproducibility and counter continuity, statistics with bounds from the sample size, and
 * the error paths. */
#include "harness.h"

/* ---- an independent host Philox4x32-10 (Random123's philox4x32_R(10, ctr, key)) ------ */

static void philox_round(uint32_t c[4], const uint32_t k[2]) {
    uint64_t p0 = (uint64_t)0xD2511F53u * c[0], p1 = (uint64_t)0xCD9E8D57u * c[2];
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0, hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    uint32_t out[4] = {hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0};
    memcpy(c, out, sizeof out);
}

static void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c[4] = {ctr[0], ctr[1], ctr[2], ctr[3]}, k[2] = {key[0], key[1]};
    philox_round(c, k);
    for (int r = 1; r < 10; r++) {
        k[0] += 0x9E3779B9u;
        k[1] += 0xBB67AE85u;
        philox_round(c, k);
    }
    memcpy(out, c, sizeof c);
}

/* Output words of element at 64-bit counter `pos` under `seed`, as kiln uses them. */
static void host_block(uint64_t seed, uint64_t pos, uint32_t out[4]) {
    uint32_t ctr[4] = {(uint32_t)pos, (uint32_t)(pos >> 32), 0, 0}, key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    philox4x32_10(ctr, key, out);
}

/* The documented uniform formula, in f32 as the device must compute it. */
static float host_uniform(uint64_t seed, uint64_t pos, float low, float high) {
    uint32_t x[4];
    host_block(seed, pos, x);
    float u = (float)(x[0] >> 8) * 0x1.0p-24f;
    float top = high > low ? nextafterf(high, low) : low;
    return fminf(fmaf(high - low, u, low), top);
}

/* The documented normal formula in double (the exact value of z for the f32 u1, u2). */
static double host_normal_z(uint64_t seed, uint64_t pos, double *radius) {
    uint32_t x[4];
    host_block(seed, pos, x);
    double u1 = ((x[0] >> 8) + 1u) * 0x1.0p-24, u2 = (x[1] >> 8) * 0x1.0p-24;
    *radius = sqrt(-2.0 * log(u1));
    return *radius * cos(2.0 * 3.14159265358979323846 * u2);
}

static void test_kat(void) {
    /* Random123 kat_vectors: philox4x32 10, counter[4] key[2] -> output[4] */
    static const uint32_t kat[3][10] = {
        {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d, 0x41c83b0e, 0xa20bc7c6,
         0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09, 0x94fdcceb, 0x5001e420,
         0x24126ea1},
    };
    for (int v = 0; v < 3; v++) {
        uint32_t out[4];
        philox4x32_10(kat[v], kat[v] + 4, out);
        CHECK(memcmp(out, kat[v] + 6, sizeof out) == 0, "Philox KAT %d: got %08x %08x %08x %08x", v, out[0], out[1],
              out[2], out[3]);
    }
}

static bool same_bits(const float *x, const float *y, int64_t n) {
    return n == 0 || memcmp(x, y, sizeof(float) * (size_t)n) == 0;
}

/* Device uniform equals the host formula bit for bit; normal within the ulp bound. */
static void test_against_host(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    struct {
        uint64_t seed, counter;
        float low, high;
        int64_t n;
    } cases[] = {
        {0, 0, 0.0f, 1.0f, 4099},
        {0x0123456789ABCDEFull, 0, -2.5f, 7.25f, 1000},
        /* a counter crossing 2^32: the carry into word 1 */
        {42, 0xFFFFFF00ull, -1.0f, 1.0f, 777},
        {~0ull, 0xFFFFFFFFFFFFF000ull, 3.0f, 3.0f, 100}, /* low == high gives low */
        /* |low| >> high - low: the rounding reaches high unless clamped */
        {7, 0, 1.0f, 1.00000024f, 5000},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        kiln_manual_seed(ctx, cases[c].seed);
        ctx->rng_counter = cases[c].counter; /* internal: start anywhere in the stream */
        kiln_tensor *t = kiln_rand_uniform(ctx, cases[c].low, cases[c].high, 1, &cases[c].n);
        CHECK(t != NULL, "uniform case %zu: %s", c, kiln_error_message(ctx));
        if (!t) continue;
        CHECK(ctx->rng_counter == cases[c].counter + (uint64_t)cases[c].n, "case %zu: counter advanced by %llu", c,
              (unsigned long long)(ctx->rng_counter - cases[c].counter));
        float *got = h_read(t), *want = malloc(sizeof(float) * (size_t)cases[c].n);
        int64_t bad = 0, out_of_range = 0;
        for (int64_t i = 0; i < cases[c].n; i++) {
            want[i] = host_uniform(cases[c].seed, cases[c].counter + (uint64_t)i, cases[c].low, cases[c].high);
            bad += memcmp(&got[i], &want[i], sizeof(float)) != 0;
            out_of_range += !(got[i] >= cases[c].low && (got[i] < cases[c].high || cases[c].low == cases[c].high));
        }
        CHECK(bad == 0, "uniform case %zu: %lld of %lld values differ from the host Philox (first: got %.9g want %.9g)",
              c, (long long)bad, (long long)cases[c].n, got[0], want[0]);
        CHECK(out_of_range == 0, "uniform case %zu: %lld values outside [%g, %g)", c, (long long)out_of_range,
              cases[c].low, cases[c].high);
        free(got);
        free(want);
    }

    /* Normal against the exact z of the same words. OpenCL 1.2's limits: log <= 3 ulp,
     * sqrt <= 3 ulp, cospi <= 4 ulp, products correctly rounded: relative error of
     * sqrt(-2 log u1) * cos(2 pi u2) <= (3/2 + 3 + 4 + 1/2) ulp = 9 ulp of |z| (ulp <=
     * 2^-23 relative). An absolute 8 ulp(1) * radius term allows implementations that
     * reduce the argument 2 pi u2 in f32 (a cos, not cospi, whose error is absolute in the
     * cosine, scaled by the radius). mean + std * z adds one rounding of the result. */
    const double ulp = 0x1.0p-23;
    struct {
        uint64_t seed, counter;
        float mean, std;
    } nc[] = {{0, 0, 0.0f, 1.0f}, {99, 0xFFFFFF00ull, 2.0f, 3.0f}};
    for (size_t c = 0; c < 2; c++) {
        int64_t n = 20000;
        kiln_manual_seed(ctx, nc[c].seed);
        ctx->rng_counter = nc[c].counter;
        kiln_tensor *t = kiln_rand_normal(ctx, nc[c].mean, nc[c].std, 1, &n);
        CHECK(t != NULL, "normal case %zu: %s", c, kiln_error_message(ctx));
        if (!t) continue;
        float *got = h_read(t);
        int64_t bad = 0;
        double worst = 0;
        for (int64_t i = 0; i < n; i++) {
            double r, z = host_normal_z(nc[c].seed, nc[c].counter + (uint64_t)i, &r);
            double want = nc[c].mean + nc[c].std * z;
            double bound = nc[c].std * ulp * (9 * fabs(z) + 8 * r) + ulp * fabs(want) + 1e-30;
            double e = fabs(got[i] - want) / bound;
            if (e > worst) worst = e;
            if (!(e <= 1) && bad++ == 0)
                fprintf(stderr, "  normal case %zu element %lld: got %.9g want %.9g\n", c, (long long)i, got[i], want);
        }
        CHECK(bad == 0, "normal case %zu: %lld of %lld values outside the ulp bound (worst %.3g of the bound)", c,
              (long long)bad, (long long)n, worst);
        free(got);
    }
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

static void test_reproducible(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    int64_t shape[3] = {5, 7, 11}, n = 385, big = 2 * 385 + 100;
    kiln_manual_seed(ctx, 1234);
    float *a = h_read(kiln_rand_uniform(ctx, 0, 1, 3, shape));
    float *b = h_read(kiln_rand_uniform(ctx, 0, 1, 3, shape)); /* continues the stream */
    float *nb = h_read(kiln_rand_normal(ctx, 0, 1, 1, &big));
    kiln_manual_seed(ctx, 1234);
    float *a2 = h_read(kiln_rand_uniform(ctx, 0, 1, 3, shape));
    kiln_manual_seed(ctx, 1235);
    float *c = h_read(kiln_rand_uniform(ctx, 0, 1, 3, shape));
    CHECK(same_bits(a, a2, n), "the same seed must give the same numbers");
    CHECK(!same_bits(a, c, n), "different seeds must give different numbers");
    CHECK(!same_bits(a, b, n), "two consecutive calls must differ");

    /* continuity: [n] then [n] equals elements 0..2n of one [2n] call, whatever the shapes */
    int64_t two = 2 * n;
    kiln_manual_seed(ctx, 1234);
    float *whole = h_read(kiln_rand_uniform(ctx, 0, 1, 1, &two));
    CHECK(same_bits(whole, a, n) && same_bits(whole + n, b, n),
          "two calls of %lld must equal one call of %lld (counter continuity)", (long long)n, (long long)two);
    /* the normal draw that followed continues at 2n, too */
    kiln_manual_seed(ctx, 1234);
    ctx->rng_counter = (uint64_t)two;
    float *nb2 = h_read(kiln_rand_normal(ctx, 0, 1, 1, &big));
    CHECK(same_bits(nb, nb2, big), "normal numbers at a counter position are reproducible");

    /* empty and 0-d shapes: 0 and 1 elements of the stream */
    kiln_manual_seed(ctx, 1234);
    kiln_tensor *e = kiln_rand_uniform(ctx, 0, 1, 2, (int64_t[]){0, 3});
    CHECK(e && kiln_tensor_numel(e) == 0 && ctx->rng_counter == 0, "an empty tensor draws nothing");
    float s = kiln_tensor_item(kiln_rand_uniform(ctx, 0, 1, 0, NULL));
    CHECK(s == whole[0] && ctx->rng_counter == 1, "a 0-d tensor draws one number (%g vs %g)", s, whole[0]);

    /* the work-group size changes nothing */
    size_t wg = ctx->wg;
    size_t sizes[2] = {1, 64};
    for (int w = 0; w < 2; w++) {
        if (sizes[w] > ctx->info.max_work_group_size) continue;
        ctx->wg = sizes[w];
        kiln_manual_seed(ctx, 1234);
        float *u = h_read(kiln_rand_uniform(ctx, 0, 1, 1, &two));
        float *g = h_read(kiln_rand_normal(ctx, 0, 1, 1, &big));
        CHECK(same_bits(u, whole, two) && same_bits(g, nb, big), "work-group size %zu changed the numbers", sizes[w]);
        free(u);
        free(g);
    }
    ctx->wg = wg;
    free(a), free(b), free(a2), free(c), free(whole), free(nb), free(nb2);
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

static int cmp_float(const void *x, const void *y) {
    float a = *(const float *)x, b = *(const float *)y;
    return (a > b) - (a < b);
}

/* Kolmogorov-Smirnov statistic of sorted x against cdf. */
static double ks_stat(float *x, int64_t n, double (*cdf)(double)) {
    qsort(x, (size_t)n, sizeof *x, cmp_float);
    double d = 0;
    for (int64_t i = 0; i < n; i++) {
        double f = cdf(x[i]), lo = f - (double)i / n, hi = (double)(i + 1) / n - f;
        if (lo > d) d = lo;
        if (hi > d) d = hi;
    }
    return d;
}
static double cdf_uniform01(double x) { return x < 0 ? 0 : x > 1 ? 1 : x; }
static double cdf_normal(double x) { return 0.5 * erfc(-x / sqrt(2.0)); }

/* n = 10^6. Every bound is 5 standard errors of its statistic for that n, except KS,
 * whose bound is the asymptotic critical value at p = 1e-6: sqrt(-ln(p/2) / 2) / sqrt(n). */
static void test_statistics(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    const int64_t n = 1000000;
    const double rn = sqrt((double)n), ks_crit = sqrt(-log(0.5e-6) / 2) / rn;
    kiln_manual_seed(ctx, 20240229);
    float *u = h_read(kiln_rand_uniform(ctx, 0, 1, 1, &n));
    double sum = 0, sq = 0;
    int64_t hist[100] = {0};
    for (int64_t i = 0; i < n; i++) {
        sum += u[i];
        int bin = (int)(u[i] * 100);
        hist[bin < 0 ? 0 : bin > 99 ? 99 : bin]++;
    }
    double mean = sum / n;
    for (int64_t i = 0; i < n; i++) sq += (u[i] - mean) * (u[i] - mean);
    double var = sq / (n - 1);
    /* U(0,1): mean 1/2, var 1/12; SE(mean) = sqrt(1/12 / n); SE(var) = sqrt((mu4 - var^2) / n)
     * with mu4 = 1/80, so mu4 - var^2 = 1/180 */
    CHECK(fabs(mean - 0.5) <= 5 * sqrt(1.0 / 12) / rn, "uniform mean %.6f", mean);
    CHECK(fabs(var - 1.0 / 12) <= 5 * sqrt(1.0 / 180) / rn, "uniform variance %.6f (1/12 = %.6f)", var, 1.0 / 12);
    /* chi-square over 100 equal bins: 99 degrees of freedom, mean 99, sd sqrt(198) */
    double chi2 = 0, expect = n / 100.0;
    for (int b = 0; b < 100; b++) chi2 += (hist[b] - expect) * (hist[b] - expect) / expect;
    CHECK(chi2 <= 99 + 5 * sqrt(198.0), "uniform chi-square %.1f over 100 bins", chi2);
    double d = ks_stat(u, n, cdf_uniform01);
    CHECK(d <= ks_crit, "uniform KS statistic %.5f > %.5f", d, ks_crit);
    free(u);

    float *z = h_read(kiln_rand_normal(ctx, 3.0f, 2.0f, 1, &n));
    sum = sq = 0;
    for (int64_t i = 0; i < n; i++) sum += z[i];
    mean = sum / n;
    for (int64_t i = 0; i < n; i++) sq += (z[i] - mean) * (z[i] - mean);
    var = sq / (n - 1);
    /* N(3, 2^2): SE(mean) = 2 / sqrt(n), SE(var) = sqrt(2 * 2^4 / n) */
    CHECK(fabs(mean - 3.0) <= 5 * 2.0 / rn, "normal mean %.5f", mean);
    CHECK(fabs(var - 4.0) <= 5 * sqrt(2 * 16.0) / rn, "normal variance %.5f", var);
    for (int64_t i = 0; i < n; i++) z[i] = (z[i] - 3.0f) / 2.0f;
    d = ks_stat(z, n, cdf_normal);
    CHECK(d <= ks_crit, "normal KS statistic %.5f > %.5f", d, ks_crit);
    /* coarse histogram: the fraction within 1, 2, 3 sigma; SE sqrt(p (1 - p) / n) */
    const double within[3] = {0.682689492, 0.954499736, 0.997300204};
    for (int s = 0; s < 3; s++) {
        int64_t in = 0;
        for (int64_t i = 0; i < n; i++) in += fabsf(z[i]) < (float)(s + 1);
        double frac = (double)in / n, se = sqrt(within[s] * (1 - within[s]) / n);
        CHECK(fabs(frac - within[s]) <= 5 * se, "normal: %.5f within %d sigma, expected %.5f", frac, s + 1, within[s]);
    }
    free(z);
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

static void expect_fail(kiln_ctx *ctx, const char *what, kiln_tensor *t, kiln_status want, const char *sub) {
    CHECK(t == NULL && kiln_error_status(ctx) == want, "%s: got %s (%s)", what,
          kiln_status_name(kiln_error_status(ctx)), kiln_error_message(ctx));
    CHECK(strstr(kiln_error_message(ctx), sub) != NULL, "%s: message lacks \"%s\": %s", what, sub,
          kiln_error_message(ctx));
    kiln_error_clear(ctx);
}

static void test_errors(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    int64_t live = kiln_ctx_num_tensors(ctx);
    kiln_manual_seed(ctx, 5);
    int64_t n = 3;
    expect_fail(ctx, "negative dim", kiln_rand_uniform(ctx, 0, 1, 2, (int64_t[]){4, -1}), KILN_ERR_INVALID_ARGUMENT,
                "kiln_rand_uniform");
    expect_fail(ctx, "negative dim (normal)", kiln_rand_normal(ctx, 0, 1, 1, (int64_t[]){-2}),
                KILN_ERR_INVALID_ARGUMENT, "kiln_rand_normal");
    expect_fail(ctx, "too many dims", kiln_rand_uniform(ctx, 0, 1, KILN_MAX_DIMS + 1, (int64_t[9]){1}),
                KILN_ERR_INVALID_ARGUMENT, "kiln_rand_uniform");
    expect_fail(ctx, "NULL shape", kiln_rand_uniform(ctx, 0, 1, 2, NULL), KILN_ERR_NULL, "kiln_rand_uniform");
    expect_fail(ctx, "low > high", kiln_rand_uniform(ctx, 2, 1, 1, &n), KILN_ERR_INVALID_ARGUMENT, "[2, 1)");
    expect_fail(ctx, "NaN low", kiln_rand_uniform(ctx, NAN, 1, 1, &n), KILN_ERR_INVALID_ARGUMENT, "kiln_rand_uniform");
    expect_fail(ctx, "infinite high", kiln_rand_uniform(ctx, 0, INFINITY, 1, &n), KILN_ERR_INVALID_ARGUMENT,
                "kiln_rand_uniform");
    expect_fail(ctx, "range overflows f32", kiln_rand_uniform(ctx, -3e38f, 3e38f, 1, &n), KILN_ERR_INVALID_ARGUMENT,
                "kiln_rand_uniform");
    expect_fail(ctx, "negative std", kiln_rand_normal(ctx, 0, -1, 1, &n), KILN_ERR_INVALID_ARGUMENT, "std=-1");
    expect_fail(ctx, "NaN mean", kiln_rand_normal(ctx, NAN, 1, 1, &n), KILN_ERR_INVALID_ARGUMENT, "kiln_rand_normal");
    expect_fail(ctx, "infinite std", kiln_rand_normal(ctx, 0, INFINITY, 1, &n), KILN_ERR_INVALID_ARGUMENT,
                "kiln_rand_normal");
    CHECK(kiln_ctx_num_tensors(ctx) == live, "failed calls left %lld tensors",
          (long long)(kiln_ctx_num_tensors(ctx) - live));
    CHECK(ctx->rng_counter == 0, "failed calls advanced the counter to %llu", (unsigned long long)ctx->rng_counter);
    /* NULL ctx: NULL, no crash */
    CHECK(kiln_rand_uniform(NULL, 0, 1, 1, &n) == NULL && kiln_rand_normal(NULL, 0, 1, 1, &n) == NULL, "NULL ctx");
    kiln_manual_seed(NULL, 1);
    /* std = 0 is valid: every value is the mean */
    float *m = h_read(kiln_rand_normal(ctx, 1.5f, 0.0f, 1, &n));
    CHECK(m[0] == 1.5f && m[1] == 1.5f && m[2] == 1.5f, "std 0 gives the mean");
    free(m);
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

static void run(kiln_ctx *ctx) {
    /* sentinels around every storage, and outputs at a non-zero offset */
    kiln__set_guard(ctx, 67);
    test_against_host(ctx);
    test_reproducible(ctx);
    test_statistics(ctx);
    test_errors(ctx);
    kiln_scope_begin(ctx);
    int64_t shape[2] = {3, 333};
    kiln_rand_uniform(ctx, -1, 1, 2, shape);
    kiln_rand_normal(ctx, 0, 1, 2, shape);
    kiln_rand_uniform(ctx, 0, 1, 1, (int64_t[]){1});
    char msg[256];
    int bad = kiln__check_guards(ctx, msg, sizeof msg);
    CHECK(bad == 0, "%d guard regions overwritten: %s", bad, msg);
    kiln_scope_end(ctx);
    kiln__set_guard(ctx, 0);
    CHECK_OK(ctx);
}

int main(void) {
    test_kat();
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}

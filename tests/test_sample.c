/* tests/test_sample.c - kiln_sample_logits (src/ops/sample.c, cl_kernels/sample.cl): each
 * draw against a double-precision host computation from the same uniform numbers, the
 * argmax limits (temperature -> 0, top_k 1), frequencies over many draws against
 * softmax(logits / T) with a chi-square bound, top-k with ties, -inf, NaN rows, views,
 * seeding, and every argument error. */
#include "harness.h"

/* The expected id of a row x[0..V) for uniform u, in double: the first i whose cumulative
 * weight passes u * total. *margin receives the distance of u * total to the nearest
 * cumulative boundary, relative to the total (float rounding can pick the neighbour when it
 * is tiny). */
static int host_draw(const float *x, int V, double T, int k, float u, double *margin) {
    double m = -INFINITY;
    for (int i = 0; i < V; i++) m = x[i] > m ? x[i] : m;
    float thr = -INFINITY;
    if (k > 0 && k < V) { /* the k-th largest */
        float *s = malloc(sizeof(float) * (size_t)V);
        memcpy(s, x, sizeof(float) * (size_t)V);
        for (int a = 0; a < k; a++) /* partial selection sort, descending */
            for (int b = a + 1; b < V; b++)
                if (s[b] > s[a]) {
                    float t = s[a];
                    s[a] = s[b];
                    s[b] = t;
                }
        thr = s[k - 1];
        free(s);
    }
    double total = 0;
    for (int i = 0; i < V; i++) total += x[i] >= thr ? exp((x[i] - m) / T) : 0;
    double target = (double)u * total, cum = 0;
    int id = -1;
    *margin = INFINITY;
    for (int i = 0; i < V; i++) {
        double w = x[i] >= thr ? exp((x[i] - m) / T) : 0;
        if (w == 0) continue;
        cum += w;
        double d = fabs(cum - target) / total;
        if (d < *margin) *margin = d;
        if (id < 0 && target < cum) id = i;
    }
    return id;
}

/* Draws with kiln and checks every id against host_draw with the uniform numbers the op
 * used (seed s: kiln_rand_uniform of B after kiln_manual_seed(s) is the same stream). A
 * mismatch is allowed only where u * total lies within 1e-5 of the total from a boundary:
 * float sums of up to V terms round by far less (V * 2^-24 ~ 2e-5 at most for V = 300,
 * in practice ~1e-6). Returns the ids (caller frees). */
static int32_t *draw_checked(kiln_ctx *ctx, const char *what, kiln_tensor *logits, const float *hx, int B, int V,
                             int64_t row_stride, float T, int k, uint64_t seed) {
    kiln_manual_seed(ctx, seed);
    kiln_tensor *ids = kiln_sample_logits(ctx, logits, T, k);
    CHECK(ids && kiln_tensor_dtype(ids) == KILN_I32 && kiln_tensor_ndim(ids) == 1 && kiln_tensor_shape(ids)[0] == B,
          "%s: I32 [%d]: %s", what, B, kiln_error_message(ctx));
    if (!ids) {
        kiln_error_clear(ctx);
        return NULL;
    }
    int32_t *got = malloc(sizeof(int32_t) * (size_t)B);
    float *u = malloc(sizeof(float) * (size_t)B);
    CHECK(kiln_to_host(ids, got, sizeof(int32_t) * (size_t)B) == KILN_OK, "%s: read", what);
    kiln_manual_seed(ctx, seed);
    kiln_tensor *tu = kiln_rand_uniform(ctx, 0, 1, 1, (int64_t[]){B});
    CHECK(tu && kiln_to_host(tu, u, sizeof(float) * (size_t)B) == KILN_OK, "%s: uniforms", what);
    int bad = 0, near = 0;
    for (int b = 0; b < B; b++) {
        double margin;
        int want = host_draw(hx + (int64_t)b * row_stride, V, T, k, u[b], &margin);
        if (got[b] == want) continue;
        if (margin < 1e-5 && got[b] >= 0 && got[b] < V)
            near++;
        else if (bad++ < 5)
            fprintf(stderr, "%s: row %d: id %d, host %d (u %.9g, margin %.3g)\n", what, b, got[b], want, u[b], margin);
    }
    CHECK(bad == 0 && near <= B / 1000 + 1, "%s: %d of %d draws differ from the host's (%d at a boundary)", what, bad,
          B, near);
    kiln_tensor_free(tu);
    kiln_tensor_free(ids);
    free(u);
    return got;
}

/* Pearson's chi-square of counts against probabilities p (categories with p = 0 must have
 * no draws) below the 1e-6 upper quantile of chi-square with df = (categories - 1)
 * (Wilson-Hilferty: df (1 - 2/(9 df) + z sqrt(2/(9 df)))^3, z = 4.753). The draws come from
 * a fixed seed, so the check is deterministic; a wrong law (a temperature or top-k
 * ignored, an off-by-one in the search) gives statistics in the hundreds or more. */
static void chi_square(const char *what, const int32_t *ids, int n, const double *p, int V) {
    int64_t *count = calloc((size_t)V, sizeof(int64_t));
    int64_t outside = 0;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= V)
            outside++;
        else
            count[ids[i]]++;
    }
    double stat = 0;
    int cats = 0;
    int64_t impossible = 0;
    for (int i = 0; i < V; i++) {
        if (p[i] == 0) {
            impossible += count[i];
            continue;
        }
        double e = p[i] * n;
        stat += (count[i] - e) * (count[i] - e) / e;
        cats++;
    }
    double df = cats - 1, c = 2.0 / (9 * df), bound = df * pow(1 - c + 4.753 * sqrt(c), 3);
    CHECK(outside == 0 && impossible == 0, "%s: %lld ids out of range, %lld of zero probability", what,
          (long long)outside, (long long)impossible);
    CHECK(stat <= bound, "%s: chi-square %.1f over %d categories exceeds %.1f", what, stat, cats, bound);
    free(count);
}

/* softmax(x / T) over the top k (ties kept; k 0: all), in double. */
static void softmax_ref(const float *x, int V, double T, int k, double *p) {
    float thr = -INFINITY;
    if (k > 0 && k < V) {
        int *taken = calloc((size_t)V, sizeof(int));
        for (int a = 0; a < k; a++) {
            int best = -1;
            for (int i = 0; i < V; i++)
                if (!taken[i] && (best < 0 || x[i] > x[best])) best = i;
            taken[best] = 1;
            thr = x[best];
        }
        free(taken);
    }
    double m = -INFINITY, s = 0;
    for (int i = 0; i < V; i++) m = x[i] > m ? x[i] : m;
    for (int i = 0; i < V; i++) s += p[i] = x[i] >= thr ? exp((x[i] - m) / T) : 0;
    for (int i = 0; i < V; i++) p[i] /= s;
}

/* n draws from one row of logits, broadcast to [n, V] (a stride-0 view). */
static void frequencies(kiln_ctx *ctx, const char *what, const float *x, int V, float T, int k, int n) {
    kiln_tensor *row = kiln_from_host(ctx, x, KILN_F32, 2, (int64_t[]){1, V});
    kiln_tensor *rows = kiln_expand(ctx, row, 2, (int64_t[]){n, V});
    float *hx = malloc(sizeof(float) * (size_t)n * (size_t)V);
    for (int b = 0; b < n; b++) memcpy(hx + (size_t)b * V, x, sizeof(float) * (size_t)V);
    int32_t *ids = draw_checked(ctx, what, rows, hx, n, V, V, T, k, 1234);
    double *p = malloc(sizeof(double) * (size_t)V);
    softmax_ref(x, V, T, k, p);
    if (ids) chi_square(what, ids, n, p, V);
    free(ids);
    free(p);
    free(hx);
    kiln_tensor_free(rows);
    kiln_tensor_free(row);
}

static void test_frequencies(kiln_ctx *ctx) {
    float x10[10];
    for (int i = 0; i < 10; i++) x10[i] = 0.3f * (float)i - 1.0f + 0.05f * (float)((i * 7) % 3);
    frequencies(ctx, "V 10, T 1", x10, 10, 1.0f, 0, 20000);
    frequencies(ctx, "V 10, T 0.5", x10, 10, 0.5f, 0, 20000);
    frequencies(ctx, "V 10, T 2, top 4", x10, 10, 2.0f, 4, 20000);
    frequencies(ctx, "V 10, top_k V", x10, 10, 1.0f, 10, 20000);
    /* ties at the k-th largest are all kept; -inf is never drawn */
    float ties[7] = {3.0f, 2.0f, 2.0f, -INFINITY, 2.0f, 1.0f, 0.0f};
    frequencies(ctx, "ties, top 2", ties, 7, 1.0f, 2, 20000);
    frequencies(ctx, "-inf, T 3", ties, 7, 3.0f, 0, 20000);
    /* more entries than a work-group has work-items: blocks of several, the radix select
     * across them */
    float x300[300];
    h_fill(x300, 300, -2, 2);
    frequencies(ctx, "V 300, top 20", x300, 300, 1.0f, 20, 20000);
    frequencies(ctx, "V 300, T 0.25", x300, 300, 0.25f, 0, 20000);
    /* negative logits only (keys of negative floats), a signed zero */
    float neg[5] = {-0.0f, -1.0f, -3.5f, -0.5f, -2.0f};
    frequencies(ctx, "negative, top 3", neg, 5, 0.8f, 3, 20000);
}

static void host_argmax(const float *x, int B, int V, int32_t *am) {
    for (int b = 0; b < B; b++) {
        am[b] = 0;
        for (int i = 1; i < V; i++)
            if (x[b * V + i] > x[b * V + am[b]]) am[b] = i;
    }
}

static void test_argmax_limits(kiln_ctx *ctx) {
    enum { B = 37, V = 113 };
    static float x[B * V];
    /* distinct values, the largest of each row at least 0.1 above the next: with T = 1e-4
     * the others' weights are exp(-1000) = 0 */
    for (int i = 0; i < B * V; i++) x[i] = (float)((i * 7919) % (B * V)) * 1e-3f - 2.0f;
    for (int b = 0; b < B; b++) x[b * V + (b * 31) % V] = 10.0f + (float)b * 0.01f;
    int32_t am[B];
    host_argmax(x, B, V, am);
    kiln_tensor *t = kiln_from_host(ctx, x, KILN_F32, 2, (int64_t[]){B, V});
    kiln_tensor *ka = kiln_argmax(ctx, t, 1, false);
    int32_t kam[B];
    CHECK(ka && kiln_to_host(ka, kam, sizeof kam) == KILN_OK, "argmax");
    const struct {
        float T;
        int k;
    } cases[] = {{1e-4f, 0}, {1e-30f, 0}, {1.0f, 1}, {5.0f, 1}, {1e-4f, 7}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (uint64_t seed = 1; seed <= 3; seed++) {
            kiln_manual_seed(ctx, seed);
            kiln_tensor *ids = kiln_sample_logits(ctx, t, cases[c].T, cases[c].k);
            int32_t got[B];
            CHECK(ids && kiln_to_host(ids, got, sizeof got) == KILN_OK, "T %g k %d: %s", (double)cases[c].T, cases[c].k,
                  kiln_error_message(ctx));
            int wrong = 0;
            for (int b = 0; b < B; b++) wrong += got[b] != am[b] || got[b] != kam[b];
            CHECK(wrong == 0, "T %g, top_k %d, seed %llu: %d of %d draws are not the argmax", (double)cases[c].T,
                  cases[c].k, (unsigned long long)seed, wrong, B);
            kiln_tensor_free(ids);
        }
    kiln_tensor_free(ka);
    kiln_tensor_free(t);
}

static void test_draws(kiln_ctx *ctx) {
    enum { B = 500, V = 61 };
    static float x[B * V];
    h_fill(x, B * V, -3, 3);
    kiln_tensor *t = kiln_from_host(ctx, x, KILN_F32, 2, (int64_t[]){B, V});
    int32_t *a = draw_checked(ctx, "rows, T 1", t, x, B, V, V, 1.0f, 0, 5);
    int32_t *b = draw_checked(ctx, "rows, T 1 again", t, x, B, V, V, 1.0f, 0, 5);
    int32_t *c = draw_checked(ctx, "rows, seed 6", t, x, B, V, V, 1.0f, 0, 6);
    CHECK(a && b && memcmp(a, b, sizeof(int32_t) * B) == 0, "the same seed draws the same ids");
    int same = 0;
    for (int i = 0; a && c && i < B; i++) same += a[i] == c[i];
    CHECK(same < B / 2, "another seed draws other ids (%d of %d equal)", same, B);
    free(draw_checked(ctx, "rows, T 0.7, top 5", t, x, B, V, V, 0.7f, 5, 9));
    free(a), free(b), free(c);

    /* the stream advances by B: two calls draw what one call of 2B would */
    kiln_manual_seed(ctx, 77);
    kiln_tensor *both = kiln_concat(ctx, 2, (kiln_tensor *[]){t, t}, 0);
    kiln_tensor *one = kiln_sample_logits(ctx, both, 1.0f, 0);
    kiln_manual_seed(ctx, 77);
    kiln_tensor *first = kiln_sample_logits(ctx, t, 1.0f, 0), *second = kiln_sample_logits(ctx, t, 1.0f, 0);
    static int32_t h1[2 * B], h2[2 * B];
    CHECK(one && first && second && kiln_to_host(one, h1, sizeof h1) == KILN_OK &&
              kiln_to_host(first, h2, sizeof(int32_t) * B) == KILN_OK &&
              kiln_to_host(second, h2 + B, sizeof(int32_t) * B) == KILN_OK && memcmp(h1, h2, sizeof h1) == 0,
          "two calls of B rows draw as one call of 2B");
    kiln_tensor_free(one), kiln_tensor_free(first), kiln_tensor_free(second), kiln_tensor_free(both);

    /* a strided view: the transpose of [V, B] */
    static float xt[V * B];
    for (int r = 0; r < B; r++)
        for (int i = 0; i < V; i++) xt[i * B + r] = x[r * V + i];
    kiln_tensor *tt = kiln_from_host(ctx, xt, KILN_F32, 2, (int64_t[]){V, B});
    kiln_tensor *view = kiln_transpose(ctx, tt, 0, 1);
    free(draw_checked(ctx, "transposed view, top 3", view, x, B, V, V, 1.3f, 3, 11));
    /* a slice with an offset: rows 100.. of t, columns 0..40 */
    kiln_tensor *rows = kiln_slice(ctx, t, 0, 100, 300, 1), *sl = kiln_slice(ctx, rows, 1, 0, 40, 1);
    free(draw_checked(ctx, "sliced view", sl, x + 100 * V, 200, 40, V, 1.0f, 0, 12));
    kiln_tensor_free(sl), kiln_tensor_free(rows), kiln_tensor_free(view), kiln_tensor_free(tt);
    kiln_tensor_free(t);

    /* rows without a distribution get -1; the others are drawn as usual */
    float odd[4 * 3] = {0, 1, 2, NAN, 1, 2, -INFINITY, -INFINITY, -INFINITY, 0, INFINITY, 1};
    kiln_tensor *o = kiln_from_host(ctx, odd, KILN_F32, 2, (int64_t[]){4, 3});
    kiln_tensor *oi = kiln_sample_logits(ctx, o, 1e-4f, 0);
    int32_t oh[4];
    CHECK(oi && kiln_to_host(oi, oh, sizeof oh) == KILN_OK && oh[0] == 2 && oh[1] == -1 && oh[2] == -1 && oh[3] == -1,
          "NaN, all -inf and +inf rows give -1: %d %d %d %d", oh[0], oh[1], oh[2], oh[3]);
    kiln_tensor_free(oi), kiln_tensor_free(o);

    /* an empty batch */
    kiln_tensor *e = kiln_zeros(ctx, 2, (int64_t[]){0, 5});
    kiln_tensor *ei = kiln_sample_logits(ctx, e, 1.0f, 2);
    CHECK(ei && kiln_tensor_numel(ei) == 0 && kiln_tensor_dtype(ei) == KILN_I32, "B = 0: %s", kiln_error_message(ctx));
    kiln_tensor_free(ei), kiln_tensor_free(e);
    /* one class */
    kiln_tensor *one_c = kiln_full(ctx, -7.0f, 2, (int64_t[]){3, 1});
    kiln_tensor *oc = kiln_sample_logits(ctx, one_c, 2.0f, 1);
    int32_t och[3];
    CHECK(oc && kiln_to_host(oc, och, sizeof och) == KILN_OK && och[0] == 0 && och[1] == 0 && och[2] == 0,
          "V = 1 draws id 0");
    kiln_tensor_free(oc), kiln_tensor_free(one_c);
    CHECK_OK(ctx);
}

static void expect_err(kiln_ctx *ctx, const char *what, kiln_tensor *r, kiln_status st, const char *a, const char *b) {
    const char *msg = kiln_error_message(ctx);
    CHECK(r == NULL, "%s: did not fail", what);
    CHECK(kiln_error_status(ctx) == st, "%s: status %s (%s)", what, kiln_status_name(kiln_error_status(ctx)), msg);
    CHECK(strstr(msg, "kiln_sample_logits") && (!a || strstr(msg, a)) && (!b || strstr(msg, b)),
          "%s: message \"%s\" (wants %s, %s)", what, msg, a ? a : "", b ? b : "");
    kiln_error_clear(ctx);
}

static void test_errors(kiln_ctx *ctx) {
    kiln_tensor *t = kiln_zeros(ctx, 2, (int64_t[]){4, 6});
    expect_err(ctx, "T 0", kiln_sample_logits(ctx, t, 0.0f, 0), KILN_ERR_INVALID_ARGUMENT, "temperature 0", NULL);
    expect_err(ctx, "T < 0", kiln_sample_logits(ctx, t, -1.0f, 0), KILN_ERR_INVALID_ARGUMENT, "temperature -1", NULL);
    expect_err(ctx, "T NaN", kiln_sample_logits(ctx, t, NAN, 0), KILN_ERR_INVALID_ARGUMENT, "temperature nan", NULL);
    expect_err(ctx, "T inf", kiln_sample_logits(ctx, t, INFINITY, 0), KILN_ERR_INVALID_ARGUMENT, "temperature inf",
               NULL);
    expect_err(ctx, "k > V", kiln_sample_logits(ctx, t, 1.0f, 7), KILN_ERR_INVALID_ARGUMENT, "top_k 7", "[0, V = 6]");
    expect_err(ctx, "k < 0", kiln_sample_logits(ctx, t, 1.0f, -1), KILN_ERR_INVALID_ARGUMENT, "top_k -1", "[4, 6]");
    kiln_tensor *v1 = kiln_zeros(ctx, 1, (int64_t[]){6});
    expect_err(ctx, "1-D", kiln_sample_logits(ctx, v1, 1.0f, 0), KILN_ERR_SHAPE, "[6]", "[B, V]");
    kiln_tensor *v3 = kiln_zeros(ctx, 3, (int64_t[]){2, 3, 6});
    expect_err(ctx, "3-D", kiln_sample_logits(ctx, v3, 1.0f, 0), KILN_ERR_SHAPE, "[2, 3, 6]", "[B, V]");
    kiln_tensor *v0 = kiln_zeros(ctx, 2, (int64_t[]){3, 0});
    expect_err(ctx, "V 0", kiln_sample_logits(ctx, v0, 1.0f, 0), KILN_ERR_SHAPE, "[3, 0]", "no classes");
    int32_t ih[6] = {0};
    kiln_tensor *it = kiln_from_host(ctx, ih, KILN_I32, 2, (int64_t[]){2, 3});
    expect_err(ctx, "I32 logits", kiln_sample_logits(ctx, it, 1.0f, 0), KILN_ERR_DTYPE, "[2, 3]", "f32, f16 or bf16");
    /* a NULL input (from a failed op) propagates; a NULL context reports globally */
    CHECK(kiln_sample_logits(ctx, NULL, 1.0f, 0) == NULL && kiln_error_status(ctx) != KILN_OK, "NULL logits");
    kiln_error_clear(ctx);
    CHECK(kiln_sample_logits(NULL, t, 1.0f, 0) == NULL && strstr(kiln_last_error(), "kiln_sample_logits"),
          "NULL ctx: %s", kiln_last_error());
    /* a failed call leaves the random stream where it was */
    kiln_manual_seed(ctx, 3);
    kiln_sample_logits(ctx, t, -1.0f, 0);
    kiln_error_clear(ctx);
    kiln_tensor *u1 = kiln_rand_uniform(ctx, 0, 1, 1, (int64_t[]){4});
    kiln_manual_seed(ctx, 3);
    kiln_tensor *u2 = kiln_rand_uniform(ctx, 0, 1, 1, (int64_t[]){4});
    float a[4], b[4];
    CHECK(u1 && u2 && kiln_to_host(u1, a, sizeof a) == KILN_OK && kiln_to_host(u2, b, sizeof b) == KILN_OK &&
              memcmp(a, b, sizeof a) == 0,
          "a rejected call draws nothing");
    kiln_tensor_free(u1), kiln_tensor_free(u2);
    kiln_tensor_free(it), kiln_tensor_free(v0), kiln_tensor_free(v3), kiln_tensor_free(v1), kiln_tensor_free(t);
}

static void run(kiln_ctx *ctx) {
    test_argmax_limits(ctx);
    test_draws(ctx);
    test_frequencies(ctx);
    test_errors(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == 0, "%lld tensors left", (long long)kiln_ctx_num_tensors(ctx));
}

int main(void) {
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}

/* tests/test_faults.c - faults in the middle of training are errors, not crashes, and
 * training goes on once the cause is gone:
 *   - the device refuses an allocation (kiln__pool_fail_after), at every allocation of a
 *     training step in turn: the step fails with KILN_ERR_OUT_OF_MEMORY, leaves no tensor
 *     and no pool buffer behind, and the next step succeeds;
 *   - a kernel program fails to build half-way through training (its source replaced by a
 *     broken one, the caches emptied): KILN_ERR_BUILD with the build log, the model
 *     untouched, and the next step succeeds once the source is back;
 *   - KILN_CHECK_NUMERICS=1 in the environment names the first op of a step that made a
 *     NaN or Inf. */
#define _POSIX_C_SOURCE 200809L
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "kiln_test_hooks.h"
#include "device/kernels_embedded.h"
#include "small_cnn.h"

#define CAP 4096

/* CHECK that also clears `ok` when the condition fails. */
#define CHECK_ACC(ok, cond, ...)                                                                                       \
    do {                                                                                                               \
        bool c_ = (cond);                                                                                              \
        CHECK(c_, __VA_ARGS__);                                                                                        \
        ok = ok && c_;                                                                                                 \
    } while (0)

static bool warm_up(cnn *m, int steps) {
    for (int s = 0; s < steps; s++) {
        float l;
        if (cnn_step(m, s, &l) != KILN_OK || !isfinite(l)) {
            CHECK(0, "warm-up step %d: %s", s, kiln_error_message(m->ctx));
            return false;
        }
    }
    return true;
}

/* Every allocation of a step fails in turn. */
static void test_alloc_failures(kiln_ctx *ctx) {
    cnn m;
    if (!cnn_build(&m, ctx, 7)) {
        CHECK(0, "build: %s", kiln_error_message(ctx));
        cnn_free(&m);
        return;
    }
    if (!warm_up(&m, 2)) { /* programs built, optimizer state allocated */
        cnn_free(&m);
        return;
    }
    kiln_pool_stats p0, p1;
    kiln_pool_stats_get(ctx, &p0);
    float l;
    CHECK(cnn_step(&m, 2, &l) == KILN_OK, "step: %s", kiln_error_message(ctx));
    kiln_pool_stats_get(ctx, &p1);
    int64_t per_step = (int64_t)(p1.allocs - p0.allocs);
    CHECK(per_step > 10, "a step allocates (%lld allocations)", (long long)per_step);

    int tried = 0, clean = 0;
    for (int64_t nth = 1; nth <= per_step; nth++) {
        int64_t tensors = kiln_ctx_num_tensors(ctx);
        kiln_pool_stats before, after;
        kiln_pool_stats_get(ctx, &before);
        kiln__pool_fail_after(ctx, nth);
        kiln_status s = cnn_step(&m, 3, &l);
        kiln__pool_fail_after(ctx, 0);
        kiln_pool_stats_get(ctx, &after);
        tried++;
        bool ok = true;
        CHECK_ACC(ok, s == KILN_ERR_OUT_OF_MEMORY, "allocation %lld of %lld failing: status %s: %s", (long long)nth,
                  (long long)per_step, kiln_status_name(s), kiln_error_message(ctx));
        CHECK_ACC(ok, strstr(kiln_error_message(ctx), "injected failure") != NULL,
                  "allocation %lld: the message is the allocation's: %s", (long long)nth, kiln_error_message(ctx));
        CHECK_ACC(ok, isnan(l), "allocation %lld: a failed step reports no loss", (long long)nth);
        CHECK_ACC(ok, kiln_ctx_num_tensors(ctx) == tensors, "allocation %lld: %lld tensors leaked", (long long)nth,
                  (long long)(kiln_ctx_num_tensors(ctx) - tensors));
        CHECK_ACC(ok, after.in_use_bytes == before.in_use_bytes, "allocation %lld: %lld pool bytes still in use",
                  (long long)nth, (long long)(after.in_use_bytes - before.in_use_bytes));
        kiln_error_clear(ctx);
        /* memory is back: the next step trains */
        s = cnn_step(&m, 4, &l);
        CHECK_ACC(ok, s == KILN_OK && isfinite(l), "allocation %lld: the step after the failure: %s", (long long)nth,
                  kiln_error_message(ctx));
        kiln_error_clear(ctx);
        clean += ok;
    }
    fprintf(stderr, "%s: %d of %d allocation failure points clean (%lld allocations per step)\n",
            kiln_ctx_device(ctx)->name, clean, tried, (long long)per_step);
    cnn_free(&m);
    CHECK_OK(ctx);
}

/* The first step of a fresh model also allocates the optimizer's state: every allocation
 * of it fails in turn, in a new model each time; whatever the failed step made is freed
 * with the model, and the model trains on. */
static void test_first_step_failures(kiln_ctx *ctx) {
    int64_t base = kiln_ctx_num_tensors(ctx);
    kiln_pool_stats pb, p0, p1;
    kiln_pool_stats_get(ctx, &pb);
    cnn m;
    if (!cnn_build(&m, ctx, 5)) {
        CHECK(0, "build: %s", kiln_error_message(ctx));
        cnn_free(&m);
        return;
    }
    kiln_pool_stats_get(ctx, &p0);
    float l;
    CHECK(cnn_step(&m, 0, &l) == KILN_OK, "first step: %s", kiln_error_message(ctx));
    kiln_pool_stats_get(ctx, &p1);
    cnn_free(&m);
    int64_t first = (int64_t)(p1.allocs - p0.allocs);
    int clean = 0;
    for (int64_t nth = 1; nth <= first; nth++) {
        if (!cnn_build(&m, ctx, 5)) {
            CHECK(0, "build: %s", kiln_error_message(ctx));
            cnn_free(&m);
            return;
        }
        kiln__pool_fail_after(ctx, nth);
        kiln_status s = cnn_step(&m, 0, &l);
        kiln__pool_fail_after(ctx, 0);
        bool ok = true;
        CHECK_ACC(ok, s == KILN_ERR_OUT_OF_MEMORY, "first step, allocation %lld failing: %s: %s", (long long)nth,
                  kiln_status_name(s), kiln_error_message(ctx));
        kiln_error_clear(ctx);
        s = cnn_step(&m, 1, &l);
        CHECK_ACC(ok, s == KILN_OK && isfinite(l), "first step, allocation %lld: the next step: %s", (long long)nth,
                  kiln_error_message(ctx));
        kiln_error_clear(ctx);
        cnn_free(&m);
        CHECK_ACC(ok, kiln_ctx_num_tensors(ctx) == base, "first step, allocation %lld: %lld tensors outlive the model",
                  (long long)nth, (long long)(kiln_ctx_num_tensors(ctx) - base));
        clean += ok;
    }
    kiln_pool_stats_get(ctx, &p1);
    CHECK(p1.in_use_bytes == pb.in_use_bytes, "%lld pool bytes still in use after the models are freed",
          (long long)(p1.in_use_bytes - pb.in_use_bytes));
    fprintf(stderr, "%s: %d of %lld first-step allocation failure points clean\n", kiln_ctx_device(ctx)->name, clean,
            (long long)first);
}

/* Writes every embedded kernel source into dir, `broken` replaced by code that does not
 * compile. */
static bool write_sources(const char *dir, const char *broken) {
    for (size_t i = 0; i < kiln__n_embedded_sources; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s.cl", dir, kiln__embedded_sources[i].name);
        FILE *f = fopen(path, "wb");
        if (!f) return false;
        if (strcmp(kiln__embedded_sources[i].name, broken) == 0)
            fputs("kernel void broken(global float *x) { x[0] = no_such_identifier_k4; }\n", f);
        else
            fwrite(kiln__embedded_sources[i].data, 1, kiln__embedded_sources[i].len, f);
        if (fclose(f) != 0) return false;
    }
    return true;
}

static void remove_sources(const char *dir) {
    for (size_t i = 0; i < kiln__n_embedded_sources; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s.cl", dir, kiln__embedded_sources[i].name);
        unlink(path);
    }
    rmdir(dir);
}

/* A program that stops building half-way through training: batch norm's, and the GEMM
 * kernels' (kiln's own kernels forced on, as CPUs run them). */
static void build_failure(kiln_ctx *ctx, const char *program) {
    cnn m;
    if (!cnn_build(&m, ctx, 11)) {
        CHECK(0, "build: %s", kiln_error_message(ctx));
        cnn_free(&m);
        return;
    }
    if (!warm_up(&m, 2)) {
        cnn_free(&m);
        return;
    }
    char dir[] = "/tmp/kiln-test-faults-XXXXXX";
    if (!mkdtemp(dir) || !write_sources(dir, program)) {
        CHECK(0, "cannot write kernel sources to %s", dir);
        cnn_free(&m);
        return;
    }
    static uint32_t s0[CAP], s1[CAP];
    int64_t n0 = cnn_state(&m, s0, CAP);
    int64_t tensors = kiln_ctx_num_tensors(ctx);
    kiln_pool_stats before, after;
    kiln_pool_stats_get(ctx, &before);

    /* From here on programs come from dir, rebuilt: `program` does not compile. */
    kiln_sync(ctx);
    kiln__programs_destroy(ctx);
    bool disk = ctx->disk_cache;
    ctx->disk_cache = false;
    snprintf(ctx->kernel_dir, sizeof ctx->kernel_dir, "%s", dir);
    float l;
    kiln_status s = cnn_step(&m, 2, &l);
    kiln_pool_stats_get(ctx, &after);
    CHECK(s == KILN_ERR_BUILD, "a broken %s program mid-training: %s: %s", program, kiln_status_name(s),
          kiln_error_message(ctx));
    char named[64];
    snprintf(named, sizeof named, "'%s'", program);
    CHECK(strstr(kiln_error_message(ctx), named) && strstr(kiln_error_message(ctx), "no_such_identifier_k4"),
          "the error names the program %s and holds the build log: %s", named, kiln_error_message(ctx));
    CHECK(isnan(l), "no loss from the failed step");
    CHECK(kiln_ctx_num_tensors(ctx) == tensors, "%lld tensors leaked",
          (long long)(kiln_ctx_num_tensors(ctx) - tensors));
    CHECK(after.in_use_bytes == before.in_use_bytes, "%lld pool bytes leaked",
          (long long)(after.in_use_bytes - before.in_use_bytes));
    kiln_error_clear(ctx);
    int64_t n1 = cnn_state(&m, s1, CAP);
    CHECK(n0 > 0 && n0 == n1 && memcmp(s0, s1, sizeof(uint32_t) * (size_t)n0) == 0,
          "the failed step left the weights and running statistics as they were");
    if (strcmp(program, "gemm") == 0) {
        /* the step failed in a convolution; kiln_matmul reports the kernels' failure
         * through its own error path (src/ops/matmul.c), for both kernels */
        float h[12] = {0};
        kiln_tensor *a = kiln_from_host(ctx, h, KILN_F32, 2, (int64_t[]){3, 4});
        for (int f = 0; f < 2; f++) {
            kiln_tensor *c = a ? kiln_matmul_ex(ctx, a, a, f ? KILN_TRANS_B : KILN_TRANS_A) : NULL;
            CHECK(c == NULL && kiln_error_status(ctx) == KILN_ERR_BUILD &&
                      strstr(kiln_error_message(ctx), "'gemm'") != NULL,
                  "kiln_matmul_ex with gemm.cl broken (%s): %s: %s", f ? "A B^T" : "A^T B",
                  kiln_status_name(kiln_error_status(ctx)), kiln_error_message(ctx));
            kiln_tensor_free(c);
            kiln_error_clear(ctx);
        }
        kiln_tensor_free(a);
    }

    /* the source is fixed: training goes on */
    ctx->kernel_dir[0] = '\0';
    ctx->disk_cache = disk;
    s = cnn_step(&m, 3, &l);
    CHECK(s == KILN_OK && isfinite(l), "the step after the build failure: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    remove_sources(dir);
    cnn_free(&m);
    CHECK_OK(ctx);
}

static void test_build_failure(kiln_ctx *ctx) {
    build_failure(ctx, "norm");
    /* the direct 3x3 route's kernels (conv3_pad, the step's first launch) */
    setenv("KILN_CONV_ALGO", "direct", 1);
    build_failure(ctx, "conv");
    unsetenv("KILN_CONV_ALGO");
    kiln__hooks_of(ctx)->gemm_own = 1;
    /* through columns, so that the step fails in the first convolution's GEMM, before batch
     * norm moves its statistics (the direct 3x3 route has no GEMM: it would fail at the
     * linear layer) */
    setenv("KILN_CONV_ALGO", "im2col", 1);
    build_failure(ctx, "gemm");
    unsetenv("KILN_CONV_ALGO");
    kiln__hooks_of(ctx)->gemm_own = 0;
}

/* KILN_CHECK_NUMERICS=1 from the environment: a NaN in a batch is reported at the first
 * op that turns it into its output (the convolution), not at the loss. */
static void test_numerics(kiln_ctx *ctx) {
    char spec[16];
    snprintf(spec, sizeof spec, "%d:%d", kiln_ctx_device(ctx)->platform_index, kiln_ctx_device(ctx)->device_index);
    setenv("KILN_CHECK_NUMERICS", "1", 1);
    kiln_ctx *c;
    kiln_status s = kiln_open(&c, spec);
    unsetenv("KILN_CHECK_NUMERICS");
    CHECK(s == KILN_OK, "open: %s", kiln_last_error());
    if (s != KILN_OK) return;
    cnn m;
    if (cnn_build(&m, c, 3) && warm_up(&m, 1)) {
        float x[CNN_N * CNN_H * CNN_H];
        int32_t y[CNN_N];
        cnn_batch(0, x, y);
        x[CNN_H * CNN_H + 5] = NAN; /* sample 1 */
        int64_t tensors = kiln_ctx_num_tensors(c);
        kiln_scope_begin(c);
        kiln_tensor *xt = kiln_from_host(c, x, KILN_F32, 4, (int64_t[]){CNN_N, 1, CNN_H, CNN_H});
        kiln_tensor *yt = kiln_from_host(c, y, KILN_I32, 1, (int64_t[]){CNN_N});
        kiln_tensor *loss = kiln_cross_entropy(c, kiln_forward(m.net, xt), yt, KILN_MEAN);
        const char *msg = kiln_error_message(c);
        CHECK(loss == NULL && kiln_error_status(c) == KILN_ERR_RANGE, "a NaN input: %s", msg);
        CHECK(strncmp(msg, "kiln_conv2d", 11) == 0 && strstr(msg, "NaN") && strstr(msg, "KILN_CHECK_NUMERICS"),
              "the first op with a non-finite result is named: %s", msg);
        kiln_scope_end(c);
        kiln_error_clear(c);
        CHECK(kiln_ctx_num_tensors(c) == tensors, "the failed forward leaked %lld tensors",
              (long long)(kiln_ctx_num_tensors(c) - tensors));
        float l;
        CHECK(cnn_step(&m, 1, &l) == KILN_OK && isfinite(l), "a clean batch trains on: %s", kiln_error_message(c));
    } else {
        CHECK(0, "numerics model: %s", kiln_error_message(c));
    }
    cnn_free(&m);
    kiln_close(c);
}

/* A split-K product (kiln_matmul's partials) and a convolution backward whose weight
 * gradient is padded and split (63 taps: padded to the GEMM tile on a tuned device) make
 * scratch buffers on the way: every allocation of forward and backward fails in turn.
 * Both GEMM routes: CLBlast's (split and padded where the tiles are known) and kiln's own
 * kernels' (neither: their scratch is the columns alone). */
static kiln_status split_ops(kiln_ctx *ctx, kiln_tensor *a, kiln_tensor *b, kiln_tensor *x, kiln_tensor *w) {
    kiln_scope_begin(ctx);
    kiln_tensor *c = kiln_matmul(ctx, a, b);
    kiln_tensor *y = c ? kiln_conv2d(ctx, x, w, NULL, NULL) : NULL;
    kiln_tensor *l = y ? kiln_sum(ctx, y, 0, NULL, false) : NULL;
    kiln_status s = l ? kiln_backward(l) : kiln_error_status(ctx);
    kiln_scope_end(ctx);
    return s;
}

static void op_scratch_failures(kiln_ctx *ctx, int own) {
    kiln__hooks_of(ctx)->gemm_own = own ? 1 : -1;
    kiln__hooks_of(ctx)->conv_split_min = 8;
    kiln_tensor *a = kiln_rand_uniform(ctx, -1, 1, 2, (int64_t[]){5, 2500});
    kiln_tensor *b = kiln_rand_uniform(ctx, -1, 1, 2, (int64_t[]){2500, 7});
    kiln_tensor *x = kiln_rand_uniform(ctx, -1, 1, 4, (int64_t[]){2, 7, 5, 6});
    kiln_tensor *w = kiln_rand_uniform(ctx, -1, 1, 4, (int64_t[]){3, 7, 3, 3});
    kiln_tensor_set_requires_grad(x, true);
    kiln_tensor_set_requires_grad(w, true);
    kiln_pool_stats p0, p1;
    kiln_pool_stats_get(ctx, &p0);
    CHECK(split_ops(ctx, a, b, x, w) == KILN_OK, "split ops: %s", kiln_error_message(ctx));
    kiln_pool_stats_get(ctx, &p1);
    int64_t n = (int64_t)(p1.allocs - p0.allocs);
    int clean = 0;
    for (int64_t nth = 1; nth <= n; nth++) {
        kiln_tensor_clear_grad(x);
        kiln_tensor_clear_grad(w);
        int64_t tensors = kiln_ctx_num_tensors(ctx);
        kiln_pool_stats before, after;
        kiln_pool_stats_get(ctx, &before);
        kiln__pool_fail_after(ctx, nth);
        kiln_status s = split_ops(ctx, a, b, x, w);
        kiln__pool_fail_after(ctx, 0);
        kiln_pool_stats_get(ctx, &after);
        bool ok = true;
        CHECK_ACC(ok, s == KILN_ERR_OUT_OF_MEMORY, "split ops, allocation %lld of %lld failing: %s: %s", (long long)nth,
                  (long long)n, kiln_status_name(s), kiln_error_message(ctx));
        CHECK_ACC(ok, kiln_ctx_num_tensors(ctx) == tensors, "split ops, allocation %lld: %lld tensors leaked",
                  (long long)nth, (long long)(kiln_ctx_num_tensors(ctx) - tensors));
        CHECK_ACC(ok, after.in_use_bytes == before.in_use_bytes, "split ops, allocation %lld: %lld pool bytes in use",
                  (long long)nth, (long long)(after.in_use_bytes - before.in_use_bytes));
        kiln_error_clear(ctx);
        clean += ok;
    }
    kiln_tensor_clear_grad(x);
    kiln_tensor_clear_grad(w);
    CHECK(split_ops(ctx, a, b, x, w) == KILN_OK, "split ops after the failures: %s", kiln_error_message(ctx));
    fprintf(stderr, "%s, %s: split-K matmul and padded conv backward: %d of %lld allocation failure points clean\n",
            kiln_ctx_device(ctx)->name, own ? "kiln's GEMM kernels" : "CLBlast", clean, (long long)n);
    kiln__hooks_of(ctx)->conv_split_min = 0;
    kiln__hooks_of(ctx)->gemm_own = 0;
    kiln_tensor_free(a);
    kiln_tensor_free(b);
    kiln_tensor_free(x);
    kiln_tensor_free(w);
    CHECK_OK(ctx);
}

static void test_op_scratch_failures(kiln_ctx *ctx) {
    op_scratch_failures(ctx, 0);
    op_scratch_failures(ctx, 1);
}

static void run(kiln_ctx *ctx) {
    test_op_scratch_failures(ctx);
    test_alloc_failures(ctx);
    test_first_step_failures(ctx);
    test_build_failure(ctx);
    test_numerics(ctx);
}

int main(void) {
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}

/* tests/test_errors.c - bad input gets a clear error and leaves everything usable: NULL
 * handles, too-small host buffers, allocations beyond the device, exhausted pools, kernel
 * sources that do not build or cannot be found. */
#define _POSIX_C_SOURCE 200809L
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

/* After an error, the context must still compute correctly. */
static void check_usable(kiln_ctx *ctx, const char *after) {
    kiln_error_clear(ctx);
    kiln_tensor *t = kiln_full(ctx, 4.0f, 1, (int64_t[]){1000});
    float h[1000];
    CHECK(t && kiln_to_host(t, h, sizeof h) == KILN_OK && h[0] == 4.0f && h[999] == 4.0f,
          "context unusable after %s: %s", after, kiln_error_message(ctx));
    kiln_tensor_free(t);
}

static void test_null_handles(kiln_ctx *ctx) {
    float h[4];
    CHECK(kiln_to_host(NULL, h, sizeof h) == KILN_ERR_NULL, "to_host(NULL)");
    CHECK(isnan(kiln_item(NULL)), "item(NULL) is NaN");
    CHECK(kiln_fill(NULL, 1) == KILN_ERR_NULL, "fill(NULL)");
    CHECK(kiln_zeros(NULL, 1, (int64_t[]){3}) == NULL, "ops with a NULL context return NULL");
    CHECK(kiln_reshape(NULL, NULL, 1, (int64_t[]){3}) == NULL, "view with NULL context");
    CHECK(kiln_error_status(NULL) == KILN_ERR_NULL && kiln_error_message(NULL)[0], "error of NULL ctx");
    kiln_tensor_free(NULL);
    kiln_scope_end(NULL);

    CHECK(kiln_from_host(ctx, NULL, KILN_F32, 1, (int64_t[]){3}) == NULL && kiln_error_status(ctx) == KILN_ERR_NULL,
          "from_host(NULL data)");
    kiln_error_clear(ctx);
    CHECK(kiln_zeros(ctx, 2, NULL) == NULL && kiln_error_status(ctx) == KILN_ERR_NULL, "NULL shape");
    kiln_error_clear(ctx);
    CHECK(kiln_zeros(ctx, 9, (int64_t[]){1, 1, 1, 1, 1, 1, 1, 1, 1}) == NULL &&
              kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT,
          "9 dims");
    kiln_error_clear(ctx);
    CHECK(kiln_zeros(ctx, 2, (int64_t[]){3, -1}) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT,
          "negative size");
    CHECK(strstr(kiln_error_message(ctx), "[3, -1]"), "message names the shape: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(kiln_empty(ctx, (kiln_dtype)42, 1, (int64_t[]){3}) == NULL && kiln_error_status(ctx) == KILN_ERR_DTYPE,
          "bad dtype");
    kiln_error_clear(ctx);

    /* NULL propagates through a chain and the first error is the one kept */
    kiln_tensor *bad = kiln_zeros(ctx, 2, (int64_t[]){3, -1});
    const char *first = kiln_error_message(ctx);
    char saved[256];
    snprintf(saved, sizeof saved, "%s", first);
    kiln_tensor *chain = kiln_transpose(ctx, kiln_reshape(ctx, bad, 1, (int64_t[]){-1}), 0, 0);
    CHECK(chain == NULL && strcmp(kiln_error_message(ctx), saved) == 0,
          "a chain on a NULL keeps the first error (%s)", kiln_error_message(ctx));
    float x = kiln_item(chain);
    CHECK(isnan(x), "item of the failed chain is NaN");
    check_usable(ctx, "NULL handles");
}

static void test_host_buffers(kiln_ctx *ctx) {
    kiln_tensor *t = kiln_ones(ctx, 2, (int64_t[]){5, 7});
    float small[34];
    for (int i = 0; i < 34; i++) small[i] = -9;
    kiln_status s = kiln_to_host(t, small, sizeof small);
    CHECK(s == KILN_ERR_BUFFER_TOO_SMALL, "reading 35 floats into 34: %s", kiln_status_name(s));
    CHECK(strstr(kiln_error_message(ctx), "[5, 7]") && strstr(kiln_error_message(ctx), "140") &&
              strstr(kiln_error_message(ctx), "136"),
          "message names shape and sizes: %s", kiln_error_message(ctx));
    int touched = 0;
    for (int i = 0; i < 34; i++) touched += small[i] != -9;
    CHECK(touched == 0, "a refused read writes nothing");
    kiln_error_clear(ctx);
    CHECK(kiln_to_host(t, NULL, 1000) == KILN_ERR_NULL, "NULL destination");
    kiln_error_clear(ctx);
    CHECK(isnan(kiln_item(t)) && kiln_error_status(ctx) == KILN_ERR_SHAPE, "item of 35 elements");
    kiln_tensor_free(t);
    check_usable(ctx, "host buffer errors");
}

static void test_out_of_memory(kiln_ctx *ctx) {
    const kiln_device_info *d = kiln_ctx_device(ctx);
    /* one element more than the device's largest allocation */
    int64_t n = (int64_t)(d->max_alloc_bytes / 4) + 1024;
    if (n < INT32_MAX) {
        kiln_tensor *t = kiln_empty(ctx, KILN_F32, 1, &n);
        CHECK(t == NULL && kiln_error_status(ctx) == KILN_ERR_OUT_OF_MEMORY, "allocation beyond max: %s",
              kiln_error_message(ctx));
        char bytes[32];
        snprintf(bytes, sizeof bytes, "%llu", (unsigned long long)d->max_alloc_bytes);
        CHECK(strstr(kiln_error_message(ctx), "kiln_empty") && strstr(kiln_error_message(ctx), bytes),
              "OOM message names the op and the limit: %s", kiln_error_message(ctx));
        check_usable(ctx, "an allocation beyond the device's max");
    } else {
        int64_t big[2] = {65536, 65536};
        CHECK(kiln_empty(ctx, KILN_F32, 2, big) == NULL && kiln_error_status(ctx) == KILN_ERR_UNSUPPORTED,
              "2^32 elements refused");
        check_usable(ctx, "a too-large tensor");
    }

    /* a pool limit behaves like a full device: trim, retry once, then a clean error */
    kiln_pool_trim(ctx);
    kiln_pool_set_limit(ctx, 1 << 20);
    kiln_tensor *a = kiln_empty(ctx, KILN_F32, 1, (int64_t[]){150000}); /* 600 KB */
    CHECK(a != NULL, "600 KB under a 1 MiB limit");
    kiln_tensor_free(a); /* cached */
    kiln_pool_stats st0, st1;
    kiln_pool_stats_get(ctx, &st0);
    kiln_tensor *b = kiln_empty(ctx, KILN_F32, 1, (int64_t[]){180000}); /* 720 KB: needs the cache trimmed */
    kiln_pool_stats_get(ctx, &st1);
    CHECK(b != NULL && st0.cached_bytes > 0 && st1.cached_bytes == 0, "trim-and-retry served the request: %s",
          kiln_error_message(ctx));
    kiln_tensor *c = kiln_empty(ctx, KILN_F32, 1, (int64_t[]){100000});
    CHECK(c == NULL && kiln_error_status(ctx) == KILN_ERR_OUT_OF_MEMORY, "over the limit");
    CHECK(strstr(kiln_error_message(ctx), "pool limit 1048576"), "message names the limit: %s",
          kiln_error_message(ctx));
    kiln_tensor_free(b);
    kiln_pool_set_limit(ctx, 0);
    check_usable(ctx, "a pool limit");

    /* the test hook fails exactly the nth allocation */
    kiln__pool_fail_after(ctx, 2);
    kiln_tensor *ok = kiln_zeros(ctx, 1, (int64_t[]){1 << 20}); /* new bucket: 1st allocation */
    kiln_tensor *no = kiln_zeros(ctx, 1, (int64_t[]){3 << 20}); /* 2nd: fails */
    CHECK(ok && !no && kiln_error_status(ctx) == KILN_ERR_OUT_OF_MEMORY, "fail_after(2)");
    kiln_tensor_free(ok);
    check_usable(ctx, "an injected allocation failure");
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* Kernel sources that fail to build or are missing: the error carries the build log. */
static void test_build_failure(const char *spec) {
    char dir[] = "/tmp/kiln-test-kernels-XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp");
        return;
    }
    char p1[128], p2[128];
    snprintf(p1, sizeof p1, "%s/common.cl", dir);
    snprintf(p2, sizeof p2, "%s/copy.cl", dir);
    write_file(p1, "/* common */\n");
    write_file(p2, "kernel void fill_contig(global uint *d, int o, int n, uint v) { d[o] = undefined_name_q7; }\n");
    setenv("KILN_KERNEL_DIR", dir, 1);
    kiln_ctx *ctx;
    if (kiln_open(&ctx, spec) != KILN_OK) {
        CHECK(0, "open: %s", kiln_last_error());
        return;
    }
    kiln_tensor *t = kiln_zeros(ctx, 1, (int64_t[]){10});
    const char *msg = kiln_error_message(ctx);
    CHECK(t == NULL && kiln_error_status(ctx) == KILN_ERR_BUILD, "broken kernel: %s", kiln_status_name(kiln_error_status(ctx)));
    CHECK(strstr(msg, "copy") && strstr(msg, kiln_ctx_device(ctx)->name) && strstr(msg, "undefined_name_q7"),
          "the message names program and device and holds the build log: %s", msg);
    kiln_error_clear(ctx);
    /* the same context can still do what does not need the broken program */
    float one = 1;
    kiln_tensor *h = kiln_from_host(ctx, &one, KILN_F32, 1, (int64_t[]){1});
    CHECK(h && kiln_item(h) == 1.0f, "transfers still work");
    kiln_close(ctx);

    unlink(p2); /* missing source */
    CHECK(kiln_open(&ctx, spec) == KILN_OK, "open");
    CHECK(kiln_ones(ctx, 1, (int64_t[]){3}) == NULL && kiln_error_status(ctx) == KILN_ERR_IO &&
              strstr(kiln_error_message(ctx), p2),
          "missing source names the file: %s", kiln_error_message(ctx));
    kiln_close(ctx);
    unlink(p1);
    rmdir(dir);
    unsetenv("KILN_KERNEL_DIR");
    CHECK(kiln_open(&ctx, spec) == KILN_OK, "open");
    check_usable(ctx, "a build failure in another context");
    kiln_close(ctx);
}

static void run(kiln_ctx *ctx) {
    test_null_handles(ctx);
    test_host_buffers(ctx);
    test_out_of_memory(ctx);
    char spec[16];
    snprintf(spec, sizeof spec, "%d:%d", kiln_ctx_device(ctx)->platform_index, kiln_ctx_device(ctx)->device_index);
    test_build_failure(spec);
}

int main(void) {
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}

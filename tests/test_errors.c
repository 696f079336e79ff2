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
    CHECK(isnan(kiln_tensor_item(NULL)), "item(NULL) is NaN");
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
    CHECK(chain == NULL && strcmp(kiln_error_message(ctx), saved) == 0, "a chain on a NULL keeps the first error (%s)",
          kiln_error_message(ctx));
    float x = kiln_tensor_item(chain);
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
    CHECK(isnan(kiln_tensor_item(t)) && kiln_error_status(ctx) == KILN_ERR_SHAPE, "item of 35 elements");
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
    CHECK(t == NULL && kiln_error_status(ctx) == KILN_ERR_BUILD, "broken kernel: %s",
          kiln_status_name(kiln_error_status(ctx)));
    CHECK(strstr(msg, "copy") && strstr(msg, kiln_ctx_device(ctx)->name) && strstr(msg, "undefined_name_q7"),
          "the message names program and device and holds the build log: %s", msg);
    kiln_error_clear(ctx);
    /* the same context can still do what does not need the broken program */
    float one = 1;
    kiln_tensor *h = kiln_from_host(ctx, &one, KILN_F32, 1, (int64_t[]){1});
    CHECK(h && kiln_tensor_item(h) == 1.0f, "transfers still work");
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

/* Every public call that fails on a NULL handle or a NULL context says so in
 * kiln_last_error(), naming itself: a stale message of an earlier call must not be left
 * to be read as the reason. Each row calls one function with NULL handles; `failed` is its
 * documented failure result. */
typedef struct null_case {
    const char *fn;
    bool (*call)(void);
} null_case;

static float null_h[4];
static int64_t null_shp[2] = {2, 2};
static int null_dims[2] = {1, 0};
static kiln_tensor *null_ts[1] = {NULL};
#define NULL_CASE(name, failed)                                                                                        \
    static bool null_##name(void) {                                                                                    \
        float *h = null_h;                                                                                             \
        int64_t *shp = null_shp;                                                                                       \
        int *dims = null_dims;                                                                                         \
        kiln_tensor **ts = null_ts;                                                                                    \
        (void)h, (void)shp, (void)dims, (void)ts;                                                                      \
        return failed;                                                                                                 \
    }
NULL_CASE(from_host, kiln_from_host(NULL, NULL, KILN_F32, 1, shp) == NULL)
NULL_CASE(empty, kiln_empty(NULL, KILN_F32, 1, shp) == NULL)
NULL_CASE(full, kiln_full(NULL, 1.0f, 1, shp) == NULL)
NULL_CASE(zeros, kiln_zeros(NULL, 1, shp) == NULL)
NULL_CASE(ones, kiln_ones(NULL, 1, shp) == NULL)
NULL_CASE(arange, kiln_arange(NULL, 0, 3, 1) == NULL)
NULL_CASE(rand_uniform, kiln_rand_uniform(NULL, 0, 1, 1, shp) == NULL)
NULL_CASE(rand_normal, kiln_rand_normal(NULL, 0, 1, 1, shp) == NULL)
NULL_CASE(to_host, kiln_to_host(NULL, h, sizeof null_h) == KILN_ERR_NULL)
NULL_CASE(copy_from_host, kiln_copy_from_host(NULL, h, sizeof null_h) == KILN_ERR_NULL)
NULL_CASE(copy, kiln_copy(NULL, NULL) == KILN_ERR_NULL)
NULL_CASE(item, isnan(kiln_tensor_item(NULL)))
NULL_CASE(fill, kiln_fill(NULL, 1.0f) == KILN_ERR_NULL)
NULL_CASE(reshape, kiln_reshape(NULL, NULL, 1, shp) == NULL)
NULL_CASE(view, kiln_view(NULL, NULL, 1, shp) == NULL)
NULL_CASE(transpose, kiln_transpose(NULL, NULL, 0, 1) == NULL)
NULL_CASE(permute, kiln_permute(NULL, NULL, dims) == NULL)
NULL_CASE(slice, kiln_slice(NULL, NULL, 0, 0, 1, 1) == NULL)
NULL_CASE(expand, kiln_expand(NULL, NULL, 1, shp) == NULL)
NULL_CASE(unsqueeze, kiln_unsqueeze(NULL, NULL, 0) == NULL)
NULL_CASE(squeeze, kiln_squeeze(NULL, NULL, 0) == NULL)
NULL_CASE(contiguous, kiln_contiguous(NULL, NULL) == NULL)
NULL_CASE(clone, kiln_clone(NULL, NULL) == NULL)
NULL_CASE(add, kiln_add(NULL, NULL, NULL) == NULL)
NULL_CASE(sub, kiln_sub(NULL, NULL, NULL) == NULL)
NULL_CASE(mul, kiln_mul(NULL, NULL, NULL) == NULL)
NULL_CASE(div, kiln_div(NULL, NULL, NULL) == NULL)
NULL_CASE(pow, kiln_pow(NULL, NULL, NULL) == NULL)
NULL_CASE(minimum, kiln_minimum(NULL, NULL, NULL) == NULL)
NULL_CASE(maximum, kiln_maximum(NULL, NULL, NULL) == NULL)
NULL_CASE(eq, kiln_eq(NULL, NULL, NULL) == NULL)
NULL_CASE(ne, kiln_ne(NULL, NULL, NULL) == NULL)
NULL_CASE(lt, kiln_lt(NULL, NULL, NULL) == NULL)
NULL_CASE(le, kiln_le(NULL, NULL, NULL) == NULL)
NULL_CASE(gt, kiln_gt(NULL, NULL, NULL) == NULL)
NULL_CASE(ge, kiln_ge(NULL, NULL, NULL) == NULL)
NULL_CASE(where, kiln_where(NULL, NULL, NULL, NULL) == NULL)
NULL_CASE(neg, kiln_neg(NULL, NULL) == NULL)
NULL_CASE(exp, kiln_exp(NULL, NULL) == NULL)
NULL_CASE(log, kiln_log(NULL, NULL) == NULL)
NULL_CASE(sqrt, kiln_sqrt(NULL, NULL) == NULL)
NULL_CASE(abs, kiln_abs(NULL, NULL) == NULL)
NULL_CASE(add_scalar, kiln_add_scalar(NULL, NULL, 1) == NULL)
NULL_CASE(mul_scalar, kiln_mul_scalar(NULL, NULL, 1) == NULL)
NULL_CASE(pow_scalar, kiln_pow_scalar(NULL, NULL, 1) == NULL)
NULL_CASE(minimum_scalar, kiln_minimum_scalar(NULL, NULL, 1) == NULL)
NULL_CASE(maximum_scalar, kiln_maximum_scalar(NULL, NULL, 1) == NULL)
NULL_CASE(sum, kiln_sum(NULL, NULL, 0, NULL, false) == NULL)
NULL_CASE(mean, kiln_mean(NULL, NULL, 0, NULL, false) == NULL)
NULL_CASE(max, kiln_max(NULL, NULL, 0, NULL, false) == NULL)
NULL_CASE(min, kiln_min(NULL, NULL, 0, NULL, false) == NULL)
NULL_CASE(argmax, kiln_argmax(NULL, NULL, 0, false) == NULL)
NULL_CASE(matmul, kiln_matmul(NULL, NULL, NULL) == NULL)
NULL_CASE(matmul_ex, kiln_matmul_ex(NULL, NULL, NULL, 0) == NULL)
NULL_CASE(relu, kiln_relu(NULL, NULL) == NULL)
NULL_CASE(leaky_relu, kiln_leaky_relu(NULL, NULL, 0.01f) == NULL)
NULL_CASE(elu, kiln_elu(NULL, NULL, 1) == NULL)
NULL_CASE(gelu, kiln_gelu(NULL, NULL, false) == NULL)
NULL_CASE(sigmoid, kiln_sigmoid(NULL, NULL) == NULL)
NULL_CASE(tanh, kiln_tanh(NULL, NULL) == NULL)
NULL_CASE(softplus, kiln_softplus(NULL, NULL, 1, 20) == NULL)
NULL_CASE(softmax, kiln_softmax(NULL, NULL, 0) == NULL)
NULL_CASE(log_softmax, kiln_log_softmax(NULL, NULL, 0) == NULL)
NULL_CASE(concat, kiln_concat(NULL, 1, ts, 0) == NULL)
NULL_CASE(stack, kiln_stack(NULL, 1, ts, 0) == NULL)
NULL_CASE(pad, kiln_pad(NULL, NULL, 2, shp, 0) == NULL)
NULL_CASE(flatten, kiln_flatten(NULL, NULL, 0, -1) == NULL)
NULL_CASE(index_select, kiln_index_select(NULL, NULL, 0, NULL) == NULL)
NULL_CASE(gather, kiln_gather(NULL, NULL, 0, NULL) == NULL)
NULL_CASE(conv2d, kiln_conv2d(NULL, NULL, NULL, NULL, NULL) == NULL)
NULL_CASE(conv_transpose2d, kiln_conv_transpose2d(NULL, NULL, NULL, NULL, NULL) == NULL)
NULL_CASE(max_pool2d, kiln_max_pool2d(NULL, NULL, NULL, NULL) == NULL)
NULL_CASE(avg_pool2d, kiln_avg_pool2d(NULL, NULL, NULL) == NULL)
NULL_CASE(global_avg_pool2d, kiln_global_avg_pool2d(NULL, NULL) == NULL)
NULL_CASE(upsample, kiln_upsample(NULL, NULL, 2, 2, KILN_UPSAMPLE_NEAREST, false) == NULL)
NULL_CASE(batch_norm, kiln_batch_norm(NULL, NULL, NULL, NULL, NULL, NULL, true, 0.1f, 1e-5f) == NULL)
NULL_CASE(layer_norm, kiln_layer_norm(NULL, NULL, 1, NULL, NULL, 1e-5f) == NULL)
NULL_CASE(dropout, kiln_dropout(NULL, NULL, 0.5f, true) == NULL)
NULL_CASE(embedding, kiln_embedding(NULL, NULL, NULL) == NULL)
NULL_CASE(sample_logits, kiln_sample_logits(NULL, NULL, 1.0f, 0) == NULL)
NULL_CASE(scaled_dot_product_attention, kiln_scaled_dot_product_attention(NULL, NULL, NULL, NULL, NULL, NULL) == NULL)
NULL_CASE(mse_loss, kiln_mse_loss(NULL, NULL, NULL, KILN_MEAN) == NULL)
NULL_CASE(l1_loss, kiln_l1_loss(NULL, NULL, NULL, KILN_MEAN) == NULL)
NULL_CASE(smooth_l1_loss, kiln_smooth_l1_loss(NULL, NULL, NULL, KILN_MEAN, 1) == NULL)
NULL_CASE(cross_entropy, kiln_cross_entropy(NULL, NULL, NULL, KILN_MEAN) == NULL)
NULL_CASE(cross_entropy_ex, kiln_cross_entropy_ex(NULL, NULL, NULL, NULL, -100, 0, KILN_MEAN) == NULL)
NULL_CASE(nll_loss, kiln_nll_loss(NULL, NULL, NULL, NULL, -100, KILN_MEAN) == NULL)
NULL_CASE(bce_loss, kiln_bce_loss(NULL, NULL, NULL, NULL, KILN_MEAN) == NULL)
NULL_CASE(bce_with_logits, kiln_bce_with_logits(NULL, NULL, NULL, NULL, NULL, KILN_MEAN) == NULL)
NULL_CASE(lsgan_loss, kiln_lsgan_loss(NULL, NULL, 1, KILN_MEAN) == NULL)
NULL_CASE(l1_penalty, kiln_l1_penalty(NULL, 1, ts) == NULL)
NULL_CASE(l2_penalty, kiln_l2_penalty(NULL, 1, ts) == NULL)
NULL_CASE(set_requires_grad, kiln_tensor_set_requires_grad(NULL, true) == KILN_ERR_NULL)
NULL_CASE(zero_grad, kiln_tensor_zero_grad(NULL) == KILN_ERR_NULL)
NULL_CASE(backward, kiln_backward(NULL) == KILN_ERR_NULL)
NULL_CASE(backward_ex, kiln_backward_ex(NULL, NULL, false) == KILN_ERR_NULL)
NULL_CASE(detach, kiln_detach(NULL, NULL) == NULL)
NULL_CASE(devices, kiln_devices(NULL, 0, NULL) == KILN_ERR_NULL)
NULL_CASE(device_find, kiln_device_find(NULL, NULL) == KILN_ERR_NULL)
NULL_CASE(open, kiln_open(NULL, NULL) == KILN_ERR_NULL)
NULL_CASE(sync, kiln_sync(NULL) == KILN_ERR_NULL)
NULL_CASE(pool_stats_get, kiln_pool_stats_get(NULL, NULL) == KILN_ERR_NULL)
NULL_CASE(cache_stats_get, kiln_cache_stats_get(NULL, NULL) == KILN_ERR_NULL)
NULL_CASE(cache_dir, kiln_cache_dir(NULL, 0) < 0)
NULL_CASE(cache_summary_get, kiln_cache_summary_get(NULL) == KILN_ERR_NULL)
NULL_CASE(safetensors_save, kiln_safetensors_save(NULL, "x.safetensors", 0, NULL, 0, NULL) == KILN_ERR_NULL)
NULL_CASE(safetensors_open, kiln_safetensors_open(NULL, "x.safetensors") == NULL)
NULL_CASE(safetensors_parse, kiln_safetensors_parse(NULL, h, sizeof null_h, NULL) == NULL)
NULL_CASE(safetensors_tensor, kiln_safetensors_tensor(NULL, 0) == NULL)
NULL_CASE(module_save, kiln_module_save(NULL, "x.safetensors", NULL) == KILN_ERR_NULL)
NULL_CASE(module_load, kiln_module_load(NULL, "x.safetensors", true, NULL) == KILN_ERR_NULL)
NULL_CASE(checkpoint_save, kiln_checkpoint_save("x.safetensors", NULL, NULL, 0, NULL) == KILN_ERR_NULL)
NULL_CASE(checkpoint_load, kiln_checkpoint_load("x.safetensors", NULL, NULL, NULL) == KILN_ERR_NULL)
NULL_CASE(forward, kiln_forward(NULL, NULL) == NULL)
NULL_CASE(nn_linear, kiln_nn_linear(NULL, 2, 3, true) == NULL)
NULL_CASE(nn_conv2d, kiln_nn_conv2d(NULL, 1, 2, 3, 3, NULL, true) == NULL)
NULL_CASE(nn_conv_transpose2d, kiln_nn_conv_transpose2d(NULL, 1, 2, 3, 3, NULL, true) == NULL)
NULL_CASE(nn_batchnorm1d, kiln_nn_batchnorm1d(NULL, 4, 1e-5f, 0.1f) == NULL)
NULL_CASE(nn_batchnorm2d, kiln_nn_batchnorm2d(NULL, 4, 1e-5f, 0.1f) == NULL)
NULL_CASE(nn_layernorm, kiln_nn_layernorm(NULL, 1, (int64_t[]){4}, 1e-5f, true) == NULL)
NULL_CASE(nn_dropout, kiln_nn_dropout(NULL, 0.5f) == NULL)
NULL_CASE(nn_embedding, kiln_nn_embedding(NULL, 10, 4) == NULL)
NULL_CASE(rnn, kiln_rnn(NULL, KILN_RNN_LSTM, NULL, NULL, NULL, 0, NULL, NULL, NULL, true, NULL, NULL) == NULL)
NULL_CASE(nn_lstm, kiln_nn_lstm(NULL, 4, 4, NULL) == NULL)
NULL_CASE(nn_gru, kiln_nn_gru(NULL, 4, 4, NULL) == NULL)
NULL_CASE(nn_rnn, kiln_nn_rnn(NULL, 4, 4, KILN_ACT_TANH, NULL) == NULL)
NULL_CASE(nn_rnn_forward, kiln_nn_rnn_forward(NULL, NULL, NULL, NULL, NULL, ts, ts, ts) != KILN_OK)
NULL_CASE(nn_lstm_cell, kiln_nn_lstm_cell(NULL, 4, 4, true) == NULL)
NULL_CASE(nn_gru_cell, kiln_nn_gru_cell(NULL, 4, 4, true) == NULL)
NULL_CASE(nn_rnn_cell, kiln_nn_rnn_cell(NULL, 4, 4, true, KILN_ACT_TANH) == NULL)
NULL_CASE(nn_maxpool2d, kiln_nn_maxpool2d(NULL, NULL) == NULL)
NULL_CASE(nn_avgpool2d, kiln_nn_avgpool2d(NULL, NULL) == NULL)
NULL_CASE(nn_global_avgpool2d, kiln_nn_global_avgpool2d(NULL) == NULL)
NULL_CASE(nn_flatten, kiln_nn_flatten(NULL, 1, -1) == NULL)
NULL_CASE(nn_activation, kiln_nn_activation(NULL, KILN_ACT_RELU, 0) == NULL)
NULL_CASE(nn_sequential, kiln_nn_sequential(NULL, 0, NULL) == NULL)
NULL_CASE(module_new, kiln_module_new(NULL, NULL) == NULL)
NULL_CASE(module_forward, kiln_module_forward(NULL, 0, NULL, 0, NULL) != KILN_OK)
NULL_CASE(nn_sequential_append, kiln_nn_sequential_append(NULL, NULL) == KILN_ERR_NULL)
NULL_CASE(module_set_child_name, kiln_module_set_child_name(NULL, 0, "a") == KILN_ERR_NULL)
NULL_CASE(sgd, kiln_sgd(NULL, ts, 1, NULL) == NULL)
NULL_CASE(rmsprop, kiln_rmsprop(NULL, ts, 1, NULL) == NULL)
NULL_CASE(adam, kiln_adam(NULL, ts, 1, NULL) == NULL)
NULL_CASE(adamw, kiln_adamw(NULL, ts, 1, NULL) == NULL)
NULL_CASE(optim_step, kiln_optim_step(NULL) == KILN_ERR_NULL)
NULL_CASE(optim_zero_grad, kiln_optim_zero_grad(NULL) == KILN_ERR_NULL)
NULL_CASE(optim_set_lr, kiln_optim_set_lr(NULL, 0.1) == KILN_ERR_NULL)
NULL_CASE(optim_get_lr, isnan(kiln_optim_lr(NULL)))
NULL_CASE(optim_num_states, kiln_optim_num_states(NULL) == 0)
NULL_CASE(optim_state, kiln_optim_state(NULL, 0, NULL, NULL) == KILN_ERR_NULL)
NULL_CASE(optim_state_find, kiln_optim_state_find(NULL, "0.exp_avg", true) == NULL)
NULL_CASE(optim_get_step, kiln_optim_step_count(NULL, 0) == -1)
NULL_CASE(optim_set_step, kiln_optim_set_step_count(NULL, 0, 1) == KILN_ERR_NULL)
NULL_CASE(clip_grad_norm_tensor, kiln_clip_grad_norm_tensor(NULL, 1, ts, 1, 2) == NULL)
NULL_CASE(clip_grad_norm, isnan(kiln_clip_grad_norm(NULL, 1, ts, 1, 2)))
NULL_CASE(clip_grad_value, kiln_clip_grad_value(NULL, 1, ts, 1) == KILN_ERR_NULL)
NULL_CASE(step_lr, kiln_step_lr(NULL, 1, 0.1) == NULL)
NULL_CASE(multistep_lr, kiln_multistep_lr(NULL, dims, 1, 0.1) == NULL)
NULL_CASE(exponential_lr, kiln_exponential_lr(NULL, 0.9) == NULL)
NULL_CASE(cosine_annealing_lr, kiln_cosine_annealing_lr(NULL, 10, 0) == NULL)
NULL_CASE(linear_lr, kiln_linear_lr(NULL, 0.5, 1, 5) == NULL)
NULL_CASE(lr_sched_step, kiln_lr_sched_step(NULL) == KILN_ERR_NULL)
NULL_CASE(lr_sched_get_last_lr, isnan(kiln_lr_sched_last_lr(NULL)))
NULL_CASE(lr_sched_last_epoch, kiln_lr_sched_last_epoch(NULL) == -1)
NULL_CASE(lr_sched_set_last_epoch, kiln_lr_sched_set_last_epoch(NULL, 0) == KILN_ERR_NULL)
NULL_CASE(idx_parse, kiln_idx_parse(NULL, 4, NULL) == NULL)
NULL_CASE(idx_load, kiln_idx_load(NULL) == NULL)
NULL_CASE(csv_parse, kiln_csv_parse(NULL, 4, NULL, NULL) == NULL)
NULL_CASE(csv_load, kiln_csv_load(NULL, NULL) == NULL)
NULL_CASE(dataset_from_host, kiln_dataset_from_host(NULL, NULL, 1, 1, shp, 0) == NULL)
NULL_CASE(dataset_idx, kiln_dataset_idx(NULL, NULL, 0) == NULL)
NULL_CASE(dataset_csv, kiln_dataset_csv(NULL, -1, 0, NULL) == NULL)
NULL_CASE(dataset_from_csv, kiln_dataset_from_csv(NULL, -1, 0, NULL) == NULL)
NULL_CASE(dataset_subset, kiln_dataset_subset(NULL, NULL, 1) == NULL)
NULL_CASE(dataset_split, kiln_dataset_split(NULL, 0.1, 1, NULL, NULL) == KILN_ERR_NULL)
NULL_CASE(dataset_get, kiln_dataset_get(NULL, 0, NULL, 0, NULL) == KILN_ERR_NULL)
NULL_CASE(loader_new, kiln_loader_new(NULL, NULL, NULL) == NULL)
NULL_CASE(loader_next, !kiln_loader_next(NULL, NULL, NULL))
NULL_CASE(loader_set_epoch, kiln_loader_set_epoch(NULL, 0) == KILN_ERR_NULL)
NULL_CASE(loader_reset, kiln_loader_reset(NULL) == KILN_ERR_NULL)
NULL_CASE(text_from_memory, kiln_text_from_memory(NULL, 1, NULL) == NULL)
NULL_CASE(text_load, kiln_text_load(1, NULL) == NULL)
NULL_CASE(text_split, kiln_text_split(NULL, 0.1, NULL, NULL) == KILN_ERR_NULL)
NULL_CASE(vocab_new, kiln_vocab_new(NULL, 1) == NULL)
NULL_CASE(vocab_parse, kiln_vocab_parse(NULL, NULL) == NULL)
NULL_CASE(vocab_to_string, kiln_vocab_to_string(NULL, NULL, 0) == KILN_ERR_NULL)
NULL_CASE(vocab_encode, kiln_vocab_encode(NULL, NULL, 0, NULL) == KILN_ERR_NULL)
NULL_CASE(vocab_decode, kiln_vocab_decode(NULL, NULL, 0, NULL, 0) == KILN_ERR_NULL)
NULL_CASE(text_loader_new, kiln_text_loader_new(NULL, NULL, NULL) == NULL)
NULL_CASE(text_loader_next, !kiln_text_loader_next(NULL, NULL, NULL))
NULL_CASE(text_loader_set_epoch, kiln_text_loader_set_epoch(NULL, 0) == KILN_ERR_NULL)
NULL_CASE(text_loader_reset, kiln_text_loader_reset(NULL) == KILN_ERR_NULL)
NULL_CASE(confusion_add, kiln_confusion_add(NULL, NULL, NULL, 1) == KILN_ERR_NULL)
NULL_CASE(confusion_update, kiln_confusion_update(NULL, NULL, NULL) == KILN_ERR_NULL)
NULL_CASE(confusion_prf, kiln_confusion_prf(NULL, -1, NULL, NULL, NULL) == KILN_ERR_NULL)
NULL_CASE(topk_correct, kiln_topk_correct(NULL, NULL, 1, NULL) == KILN_ERR_NULL)
NULL_CASE(fit, kiln_fit(NULL, NULL, NULL) == KILN_ERR_NULL)
NULL_CASE(evaluate, kiln_evaluate(NULL, NULL, NULL, NULL, NULL, NULL, NULL) == KILN_ERR_NULL)
NULL_CASE(plot_history, kiln_plot_history(NULL, NULL, 0, NULL) == KILN_ERR_NULL)
NULL_CASE(plot_curves, kiln_plot_curves(NULL, NULL, NULL, NULL, 0, NULL, 1, NULL) == KILN_ERR_NULL)
NULL_CASE(metrics_csv_append, kiln_metrics_csv_append(NULL, NULL) == KILN_ERR_NULL)
#undef NULL_CASE

static const null_case null_cases[] = {
    {"kiln_from_host", null_from_host},
    {"kiln_empty", null_empty},
    {"kiln_full", null_full},
    {"kiln_zeros", null_zeros},
    {"kiln_ones", null_ones},
    {"kiln_arange", null_arange},
    {"kiln_rand_uniform", null_rand_uniform},
    {"kiln_rand_normal", null_rand_normal},
    {"kiln_to_host", null_to_host},
    {"kiln_copy_from_host", null_copy_from_host},
    {"kiln_copy", null_copy},
    {"kiln_tensor_item", null_item},
    {"kiln_fill", null_fill},
    {"kiln_reshape", null_reshape},
    {"kiln_view", null_view},
    {"kiln_transpose", null_transpose},
    {"kiln_permute", null_permute},
    {"kiln_slice", null_slice},
    {"kiln_expand", null_expand},
    {"kiln_unsqueeze", null_unsqueeze},
    {"kiln_squeeze", null_squeeze},
    {"kiln_contiguous", null_contiguous},
    {"kiln_clone", null_clone},
    {"kiln_add", null_add},
    {"kiln_sub", null_sub},
    {"kiln_mul", null_mul},
    {"kiln_div", null_div},
    {"kiln_pow", null_pow},
    {"kiln_minimum", null_minimum},
    {"kiln_maximum", null_maximum},
    {"kiln_eq", null_eq},
    {"kiln_ne", null_ne},
    {"kiln_lt", null_lt},
    {"kiln_le", null_le},
    {"kiln_gt", null_gt},
    {"kiln_ge", null_ge},
    {"kiln_where", null_where},
    {"kiln_neg", null_neg},
    {"kiln_exp", null_exp},
    {"kiln_log", null_log},
    {"kiln_sqrt", null_sqrt},
    {"kiln_abs", null_abs},
    {"kiln_add_scalar", null_add_scalar},
    {"kiln_mul_scalar", null_mul_scalar},
    {"kiln_pow_scalar", null_pow_scalar},
    {"kiln_minimum_scalar", null_minimum_scalar},
    {"kiln_maximum_scalar", null_maximum_scalar},
    {"kiln_sum", null_sum},
    {"kiln_mean", null_mean},
    {"kiln_max", null_max},
    {"kiln_min", null_min},
    {"kiln_argmax", null_argmax},
    {"kiln_matmul", null_matmul},
    {"kiln_matmul_ex", null_matmul_ex},
    {"kiln_relu", null_relu},
    {"kiln_leaky_relu", null_leaky_relu},
    {"kiln_elu", null_elu},
    {"kiln_gelu", null_gelu},
    {"kiln_sigmoid", null_sigmoid},
    {"kiln_tanh", null_tanh},
    {"kiln_softplus", null_softplus},
    {"kiln_softmax", null_softmax},
    {"kiln_log_softmax", null_log_softmax},
    {"kiln_concat", null_concat},
    {"kiln_stack", null_stack},
    {"kiln_pad", null_pad},
    {"kiln_flatten", null_flatten},
    {"kiln_index_select", null_index_select},
    {"kiln_gather", null_gather},
    {"kiln_conv2d", null_conv2d},
    {"kiln_conv_transpose2d", null_conv_transpose2d},
    {"kiln_max_pool2d", null_max_pool2d},
    {"kiln_avg_pool2d", null_avg_pool2d},
    {"kiln_global_avg_pool2d", null_global_avg_pool2d},
    {"kiln_upsample", null_upsample},
    {"kiln_batch_norm", null_batch_norm},
    {"kiln_layer_norm", null_layer_norm},
    {"kiln_dropout", null_dropout},
    {"kiln_embedding", null_embedding},
    {"kiln_sample_logits", null_sample_logits},
    {"kiln_scaled_dot_product_attention", null_scaled_dot_product_attention},
    {"kiln_mse_loss", null_mse_loss},
    {"kiln_l1_loss", null_l1_loss},
    {"kiln_smooth_l1_loss", null_smooth_l1_loss},
    {"kiln_cross_entropy", null_cross_entropy},
    {"kiln_cross_entropy_ex", null_cross_entropy_ex},
    {"kiln_nll_loss", null_nll_loss},
    {"kiln_bce_loss", null_bce_loss},
    {"kiln_bce_with_logits", null_bce_with_logits},
    {"kiln_lsgan_loss", null_lsgan_loss},
    {"kiln_l1_penalty", null_l1_penalty},
    {"kiln_l2_penalty", null_l2_penalty},
    {"kiln_tensor_set_requires_grad", null_set_requires_grad},
    {"kiln_tensor_zero_grad", null_zero_grad},
    {"kiln_backward", null_backward},
    {"kiln_backward_ex", null_backward_ex},
    {"kiln_detach", null_detach},
    {"kiln_devices", null_devices},
    {"kiln_device_find", null_device_find},
    {"kiln_open", null_open},
    {"kiln_sync", null_sync},
    {"kiln_pool_stats_get", null_pool_stats_get},
    {"kiln_cache_stats_get", null_cache_stats_get},
    {"kiln_cache_dir", null_cache_dir},
    {"kiln_cache_summary_get", null_cache_summary_get},
    {"kiln_safetensors_save", null_safetensors_save},
    {"kiln_safetensors_open", null_safetensors_open},
    {"kiln_safetensors_parse", null_safetensors_parse},
    {"kiln_safetensors_tensor", null_safetensors_tensor},
    {"kiln_module_save", null_module_save},
    {"kiln_module_load", null_module_load},
    {"kiln_checkpoint_save", null_checkpoint_save},
    {"kiln_checkpoint_load", null_checkpoint_load},
    {"kiln_forward", null_forward},
    {"kiln_nn_linear", null_nn_linear},
    {"kiln_nn_conv2d", null_nn_conv2d},
    {"kiln_nn_conv_transpose2d", null_nn_conv_transpose2d},
    {"kiln_nn_batchnorm1d", null_nn_batchnorm1d},
    {"kiln_nn_batchnorm2d", null_nn_batchnorm2d},
    {"kiln_nn_layernorm", null_nn_layernorm},
    {"kiln_nn_dropout", null_nn_dropout},
    {"kiln_nn_embedding", null_nn_embedding},
    {"kiln_rnn", null_rnn},
    {"kiln_nn_lstm", null_nn_lstm},
    {"kiln_nn_gru", null_nn_gru},
    {"kiln_nn_rnn", null_nn_rnn},
    {"kiln_nn_rnn_forward", null_nn_rnn_forward},
    {"kiln_nn_lstm_cell", null_nn_lstm_cell},
    {"kiln_nn_gru_cell", null_nn_gru_cell},
    {"kiln_nn_rnn_cell", null_nn_rnn_cell},
    {"kiln_nn_maxpool2d", null_nn_maxpool2d},
    {"kiln_nn_avgpool2d", null_nn_avgpool2d},
    {"kiln_nn_global_avgpool2d", null_nn_global_avgpool2d},
    {"kiln_nn_flatten", null_nn_flatten},
    {"kiln_nn_activation", null_nn_activation},
    {"kiln_nn_sequential", null_nn_sequential},
    {"kiln_module_new", null_module_new},
    {"kiln_module_forward", null_module_forward},
    {"kiln_nn_sequential_append", null_nn_sequential_append},
    {"kiln_module_set_child_name", null_module_set_child_name},
    {"kiln_sgd", null_sgd},
    {"kiln_rmsprop", null_rmsprop},
    {"kiln_adam", null_adam},
    {"kiln_adamw", null_adamw},
    {"kiln_optim_step", null_optim_step},
    {"kiln_optim_zero_grad", null_optim_zero_grad},
    {"kiln_optim_set_lr", null_optim_set_lr},
    {"kiln_optim_lr", null_optim_get_lr},
    {"kiln_optim_num_states", null_optim_num_states},
    {"kiln_optim_state", null_optim_state},
    {"kiln_optim_state_find", null_optim_state_find},
    {"kiln_optim_step_count", null_optim_get_step},
    {"kiln_optim_set_step_count", null_optim_set_step},
    {"kiln_clip_grad_norm_tensor", null_clip_grad_norm_tensor},
    {"kiln_clip_grad_norm", null_clip_grad_norm},
    {"kiln_clip_grad_value", null_clip_grad_value},
    {"kiln_step_lr", null_step_lr},
    {"kiln_multistep_lr", null_multistep_lr},
    {"kiln_exponential_lr", null_exponential_lr},
    {"kiln_cosine_annealing_lr", null_cosine_annealing_lr},
    {"kiln_linear_lr", null_linear_lr},
    {"kiln_lr_sched_step", null_lr_sched_step},
    {"kiln_lr_sched_last_lr", null_lr_sched_get_last_lr},
    {"kiln_lr_sched_last_epoch", null_lr_sched_last_epoch},
    {"kiln_lr_sched_set_last_epoch", null_lr_sched_set_last_epoch},
    {"kiln_idx_parse", null_idx_parse},
    {"kiln_idx_load", null_idx_load},
    {"kiln_csv_parse", null_csv_parse},
    {"kiln_csv_load", null_csv_load},
    {"kiln_dataset_from_host", null_dataset_from_host},
    {"kiln_dataset_idx", null_dataset_idx},
    {"kiln_dataset_csv", null_dataset_csv},
    {"kiln_dataset_from_csv", null_dataset_from_csv},
    {"kiln_dataset_subset", null_dataset_subset},
    {"kiln_dataset_split", null_dataset_split},
    {"kiln_dataset_get", null_dataset_get},
    {"kiln_loader_new", null_loader_new},
    {"kiln_loader_next", null_loader_next},
    {"kiln_loader_set_epoch", null_loader_set_epoch},
    {"kiln_loader_reset", null_loader_reset},
    {"kiln_text_from_memory", null_text_from_memory},
    {"kiln_text_load", null_text_load},
    {"kiln_text_split", null_text_split},
    {"kiln_vocab_new", null_vocab_new},
    {"kiln_vocab_parse", null_vocab_parse},
    {"kiln_vocab_to_string", null_vocab_to_string},
    {"kiln_vocab_encode", null_vocab_encode},
    {"kiln_vocab_decode", null_vocab_decode},
    {"kiln_text_loader_new", null_text_loader_new},
    {"kiln_text_loader_next", null_text_loader_next},
    {"kiln_text_loader_set_epoch", null_text_loader_set_epoch},
    {"kiln_text_loader_reset", null_text_loader_reset},
    {"kiln_confusion_add", null_confusion_add},
    {"kiln_confusion_update", null_confusion_update},
    {"kiln_confusion_prf", null_confusion_prf},
    {"kiln_topk_correct", null_topk_correct},
    {"kiln_fit", null_fit},
    {"kiln_evaluate", null_evaluate},
    {"kiln_plot_history", null_plot_history},
    {"kiln_plot_curves", null_plot_curves},
    {"kiln_metrics_csv_append", null_metrics_csv_append},
};

static void test_null_messages(void) {
    for (size_t i = 0; i < sizeof null_cases / sizeof null_cases[0]; i++) {
        /* a stale message from an earlier failed call */
        kiln_idx *stale = kiln_idx_load("/nonexistent/stale-marker");
        CHECK(stale == NULL && strstr(kiln_last_error(), "stale-marker"), "planting a stale message: %s",
              kiln_last_error());
        bool failed = null_cases[i].call();
        const char *msg = kiln_last_error();
        const char *at = strstr(msg, null_cases[i].fn);
        size_t len = strlen(null_cases[i].fn);
        /* the name must stand alone: "kiln_add" inside "kiln_add_scalar" does not count */
        bool named = false;
        for (; at; at = strstr(at + 1, null_cases[i].fn))
            if (!(at[len] == '_' || (at[len] >= 'a' && at[len] <= 'z') || (at[len] >= '0' && at[len] <= '9')))
                named = true;
        CHECK(failed, "%s with NULL handles did not fail", null_cases[i].fn);
        CHECK(named && !strstr(msg, "stale-marker"), "%s with NULL handles: kiln_last_error() is \"%s\"",
              null_cases[i].fn, msg);
    }
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
    test_null_messages();
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}

/* tests/test_amp.c - mixed precision (include/kiln/amp.h): autocast's dtype rules, an AMP
 * training step against the f32 step within half-precision bounds, and the GradScaler:
 * an overflowing step skipped on the device (parameters unchanged, scale halved), growth
 * after N good steps, unscaled updates equal to plain ones, the error paths. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "harness.h"
#include "kiln_test_hooks.h"

/* a [n] f32 leaf requiring grad */
static kiln_tensor *leaf(kiln_ctx *ctx, const float *v, int64_t n) {
    kiln_tensor *t = kiln_tensor_keep(kiln_from_host(ctx, v, KILN_F32, 1, &n));
    kiln_tensor_set_requires_grad(t, true);
    return t;
}

static void test_autocast_rules(kiln_ctx *ctx) {
    CHECK(kiln_ctx_autocast(ctx) == KILN_F32, "autocast starts off");
    CHECK(kiln_ctx_set_autocast(ctx, KILN_I32) == KILN_DTYPE_COUNT && kiln_error_status(ctx) == KILN_ERR_DTYPE &&
              strstr(kiln_error_message(ctx), "i32"),
          "autocast to i32 fails naming it: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(kiln_ctx_set_autocast(NULL, KILN_F16) == KILN_DTYPE_COUNT && kiln_last_status() == KILN_ERR_NULL,
          "autocast of a NULL ctx");
    for (int d = 0; d < 2; d++) {
        kiln_dtype dt = d ? KILN_BF16 : KILN_F16;
        kiln_scope_begin(ctx);
        kiln_module *lin = kiln_nn_linear(ctx, 12, 5, true);
        kiln_module *conv = kiln_nn_conv2d(ctx, 2, 3, 3, 3, NULL, true);
        kiln_tensor *x = kiln_rand_uniform(ctx, -1, 1, 2, (int64_t[]){4, 12});
        kiln_tensor *img = kiln_rand_uniform(ctx, -1, 1, 4, (int64_t[]){2, 2, 6, 6});
        kiln_tensor *labels = kiln_from_host(ctx, (int32_t[]){0, 1, 2, 3}, KILN_I32, 1, (int64_t[]){4});
        CHECK(kiln_ctx_set_autocast(ctx, dt) == KILN_F32 && kiln_ctx_autocast(ctx) == dt, "autocast on");
        kiln_tensor *y = kiln_forward(lin, x);
        kiln_tensor *c = kiln_forward(conv, img);
        kiln_tensor *mm = kiln_matmul(ctx, x, kiln_transpose(ctx, x, 0, 1));
        kiln_tensor *r = kiln_relu(ctx, y);
        kiln_tensor *sm = kiln_softmax(ctx, y, 1);
        kiln_tensor *s = kiln_sum(ctx, c, 0, NULL, false);
        kiln_tensor *loss = kiln_cross_entropy(ctx, y, labels, KILN_MEAN);
        kiln_pool2d_params pp = kiln_pool2d_defaults(2, 2);
        kiln_tensor *pool = kiln_max_pool2d(ctx, c, &pp, NULL);
        kiln_tensor *apool = kiln_avg_pool2d(ctx, c, &pp), *drop = kiln_dropout(ctx, y, 0.5f, true);
        kiln_ctx_set_autocast(ctx, KILN_F32);
        CHECK(y && c && mm && r && sm && s && loss && pool && apool && drop, "ops under autocast: %s",
              kiln_error_message(ctx));
        if (y && c && mm && r && sm && s && loss && pool && apool && drop) {
            CHECK(kiln_tensor_dtype(y) == dt && kiln_tensor_dtype(c) == dt && kiln_tensor_dtype(mm) == dt,
                  "linear, conv2d and matmul give %s under autocast", kiln_dtype_name(dt));
            CHECK(kiln_tensor_dtype(r) == dt && kiln_tensor_dtype(pool) == dt && kiln_tensor_dtype(apool) == dt &&
                      kiln_tensor_dtype(drop) == dt,
                  "relu, max and average pooling and dropout follow their input's dtype (as torch's autocast)");
            /* the fused half linear against f32 on the same rounded values: one rounding */
            kiln_tensor *lp[2];
            kiln_module_parameters(lin, lp, 2);
            kiln_tensor *r32[3] = {kiln_to_dtype(ctx, kiln_to_dtype(ctx, x, dt), KILN_F32),
                                   kiln_to_dtype(ctx, kiln_to_dtype(ctx, lp[0], dt), KILN_F32),
                                   kiln_to_dtype(ctx, kiln_to_dtype(ctx, lp[1], dt), KILN_F32)};
            kiln_tensor *mm32 = kiln_matmul_ex(ctx, r32[0], r32[1], KILN_TRANS_B);
            kiln_tensor *ref = kiln_add(ctx, mm32, r32[2]);
            float *g = h_read(kiln_to_dtype(ctx, y, KILN_F32)), *rf = ref ? h_read(ref) : NULL,
                  *rm = mm32 ? h_read(mm32) : NULL;
            /* where the bias is not fused into the GEMM (a device without kiln's own kernels,
             * KILN_GEMM_EPILOGUE=off), the product is rounded to the half dtype once more
             * before the bias is added */
            bool fused = kiln__gemm_bias_takes(ctx, false, true, 4, 5, 12, 1);
            double u = dt == KILN_F16 ? 0x1p-11 : 0x1p-8;
            int bad = 0;
            for (int i = 0; g && rf && rm && i < 20; i++)
                bad += fabs((double)g[i] - rf[i]) >
                       u * fabs((double)rf[i]) + (fused ? 0 : u * fabs((double)rm[i])) + 12 * 0x1p-24;
            CHECK(g && rf && rm && bad == 0, "linear under %s autocast (%s): %d outputs off f32's by more than %s",
                  kiln_dtype_name(dt), fused ? "bias fused" : "bias added", bad,
                  fused ? "a rounding" : "two roundings");
            free(g);
            free(rf);
            free(rm);
            CHECK(kiln_tensor_dtype(sm) == KILN_F32 && kiln_tensor_dtype(s) == KILN_F32 &&
                      kiln_tensor_dtype(loss) == KILN_F32,
                  "softmax, sum and cross-entropy run in f32 under autocast");
            /* the f32 master weights get f32 gradients, and the backward runs without autocast */
            CHECK(kiln_backward(kiln_add(ctx, loss, kiln_mul_scalar(ctx, s, 1e-3f))) == KILN_OK, "backward: %s",
                  kiln_error_message(ctx));
            kiln_tensor *p[2];
            int np = kiln_module_parameters(lin, p, 2);
            CHECK(np == 2 && kiln_tensor_grad(p[0]) && kiln_tensor_dtype(kiln_tensor_grad(p[0])) == KILN_F32 &&
                      kiln_tensor_dtype(p[0]) == KILN_F32,
                  "master weights stay f32 with f32 gradients");
            kiln_module_parameters(conv, p, 2);
            CHECK(kiln_tensor_grad(p[0]) && kiln_tensor_dtype(kiln_tensor_grad(p[0])) == KILN_F32, "conv weight grad");
            CHECK(kiln_ctx_autocast(ctx) == KILN_F32, "backward restores the autocast setting");
        }
        /* without autocast a half input with f32 weights promotes: f32 copies of the halves */
        kiln_tensor *ch = kiln_forward(conv, kiln_to_dtype(ctx, img, dt));
        CHECK(ch && kiln_tensor_dtype(ch) == KILN_F32, "conv2d of %s input, f32 weights: f32 (promoted): %s",
              kiln_dtype_name(dt), kiln_error_message(ctx));
        kiln_module_free(lin);
        kiln_module_free(conv);
        kiln_scope_end(ctx);
        kiln_error_clear(ctx);
    }
}

/* conv2d with half input and weights against f32 on the same values (half output) */
static void test_conv_half(kiln_ctx *ctx) {
    for (int d = 0; d < 2; d++) {
        kiln_dtype dt = d ? KILN_BF16 : KILN_F16;
        kiln_scope_begin(ctx);
        kiln_tensor *x = kiln_to_dtype(ctx, kiln_rand_uniform(ctx, -1, 1, 4, (int64_t[]){2, 3, 9, 7}), dt);
        kiln_tensor *w = kiln_to_dtype(ctx, kiln_rand_uniform(ctx, -1, 1, 4, (int64_t[]){4, 3, 3, 3}), dt);
        kiln_tensor *b = kiln_to_dtype(ctx, kiln_rand_uniform(ctx, -1, 1, 1, (int64_t[]){4}), dt);
        kiln_tensor *yh = kiln_conv2d(ctx, x, w, b, NULL);
        kiln_tensor *yf = kiln_conv2d(ctx, kiln_to_dtype(ctx, x, KILN_F32), kiln_to_dtype(ctx, w, KILN_F32),
                                      kiln_to_dtype(ctx, b, KILN_F32), NULL);
        CHECK(yh && yf && kiln_tensor_dtype(yh) == dt, "conv2d %s: %s", kiln_dtype_name(dt), kiln_error_message(ctx));
        if (yh && yf) {
            float *g = h_read(kiln_to_dtype(ctx, yh, KILN_F32)), *r = h_read(yf);
            double u = dt == KILN_F16 ? 0x1p-11 : 0x1p-8;
            int64_t bad = 0;
            for (int64_t i = 0; i < kiln_tensor_numel(yf); i++)
                bad += fabs((double)g[i] - r[i]) > u * fabs((double)r[i]) + 1e-7;
            CHECK(bad == 0, "conv2d %s: %lld elements off the f32 result by more than one rounding",
                  kiln_dtype_name(dt), (long long)bad);
            free(g);
            free(r);
        }
        kiln_scope_end(ctx);
        kiln_error_clear(ctx);
    }
}

/* one SGD step of a small MLP with AMP (f16 autocast, scaler) against the f32 step */
static void test_amp_step(kiln_ctx *ctx) {
    kiln_manual_seed(ctx, 7);
    kiln_module *a = kiln_nn_sequential(ctx, 3,
                                        (kiln_module *[]){kiln_nn_linear(ctx, 20, 32, true),
                                                          kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                                                          kiln_nn_linear(ctx, 32, 6, true)});
    kiln_manual_seed(ctx, 7);
    kiln_module *b = kiln_nn_sequential(ctx, 3,
                                        (kiln_module *[]){kiln_nn_linear(ctx, 20, 32, true),
                                                          kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                                                          kiln_nn_linear(ctx, 32, 6, true)});
    kiln_tensor *pa[4], *pb[4];
    CHECK(kiln_module_parameters(a, pa, 4) == 4 && kiln_module_parameters(b, pb, 4) == 4, "parameters");
    kiln_sgd_opts so = kiln_sgd_defaults();
    so.lr = 0.5;
    so.momentum = 0.9;
    kiln_optim *oa = kiln_sgd(ctx, pa, 4, &so), *ob = kiln_sgd(ctx, pb, 4, &so);
    kiln_grad_scaler *sc = kiln_grad_scaler_new(ctx, NULL);
    kiln_scope_begin(ctx);
    kiln_tensor *x = kiln_rand_uniform(ctx, -1, 1, 2, (int64_t[]){16, 20});
    int32_t lv[16];
    for (int i = 0; i < 16; i++) lv[i] = i % 6;
    kiln_tensor *y = kiln_from_host(ctx, lv, KILN_I32, 1, (int64_t[]){16});
    kiln_ctx_set_autocast(ctx, KILN_F16);
    kiln_tensor *la = kiln_cross_entropy(ctx, kiln_forward(a, x), y, KILN_MEAN);
    kiln_ctx_set_autocast(ctx, KILN_F32);
    kiln_tensor *lb = kiln_cross_entropy(ctx, kiln_forward(b, x), y, KILN_MEAN);
    CHECK(kiln_backward(kiln_grad_scaler_scale(sc, la)) == KILN_OK && kiln_grad_scaler_step(sc, oa) == KILN_OK &&
              kiln_grad_scaler_update(sc) == KILN_OK,
          "AMP step: %s", kiln_error_message(ctx));
    CHECK(kiln_backward(lb) == KILN_OK && kiln_optim_step(ob) == KILN_OK, "f32 step");
    double u = 0x1p-11;
    CHECK(fabs(kiln_tensor_item(la) - kiln_tensor_item(lb)) <= 8 * u * fabs(kiln_tensor_item(lb)),
          "AMP loss %.7g vs f32 %.7g", kiln_tensor_item(la), kiln_tensor_item(lb));
    for (int k = 0; k < 4; k++) {
        /* the gradients went through a few f16 roundings (inputs, weights, activations, each
         * once): within 8 units of f16 of the largest gradient of the tensor */
        float *ga = h_read(kiln_tensor_grad(pa[k])), *gb = h_read(kiln_tensor_grad(pb[k]));
        float *wa = h_read(pa[k]), *wb = h_read(pb[k]);
        int64_t n = kiln_tensor_numel(pb[k]), bad = 0, badw = 0;
        double gmax = 0;
        for (int64_t i = 0; i < n; i++) gmax = fmax(gmax, fabs((double)gb[i]));
        for (int64_t i = 0; i < n; i++) {
            bad += fabs((double)ga[i] - gb[i]) > 8 * u * gmax;
            badw += fabs((double)wa[i] - wb[i]) > so.lr * 8 * u * gmax + 1e-6 * fabs((double)wb[i]);
        }
        CHECK(bad == 0 && badw == 0, "parameter %d: %lld gradients, %lld weights outside half bounds of f32's", k,
              (long long)bad, (long long)badw);
        free(ga), free(gb), free(wa), free(wb);
    }
    CHECK(kiln_grad_scaler_get_scale(sc) == 65536.0f && kiln_grad_scaler_growth_tracker(sc) == 1,
          "a good step keeps the scale and counts 1");
    kiln_scope_end(ctx);
    kiln_grad_scaler_free(sc);
    kiln_optim_free(oa);
    kiln_optim_free(ob);
    kiln_module_free(a);
    kiln_module_free(b);
    kiln_error_clear(ctx);
}

/* The parameters' casts made ahead (kiln__optim_autocast, as kiln_fit does each step): the
 * forward takes fewer launches and gives the same bits, the gradients and updated weights
 * are the same, and the next region casts the updated weights (kiln_ctx_set_autocast
 * emptied the cache); an allocation failing while casting fails cleanly. */
static void test_autocast_ahead(kiln_ctx *ctx) {
    float *out[2][2] = {{0}}, *w[2][2] = {{0}};
    uint64_t launches[2][2] = {{0}};
    for (int ahead = 0; ahead < 2; ahead++) {
        kiln_manual_seed(ctx, 7);
        kiln_module *net = kiln_nn_sequential(ctx, 3,
                                              (kiln_module *[]){kiln_nn_linear(ctx, 20, 32, true),
                                                                kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                                                                kiln_nn_linear(ctx, 32, 6, true)});
        kiln_tensor *p[4];
        CHECK(net && kiln_module_parameters(net, p, 4) == 4, "parameters: %s", kiln_error_message(ctx));
        kiln_sgd_opts so = kiln_sgd_defaults();
        so.lr = 0.5;
        kiln_optim *opt = kiln_sgd(ctx, p, 4, &so);
        for (int step = 0; step < 2 && opt; step++) {
            kiln_scope_begin(ctx);
            kiln_manual_seed(ctx, 11);
            kiln_tensor *x = kiln_rand_uniform(ctx, -1, 1, 2, (int64_t[]){16, 20});
            int32_t lv[16];
            for (int i = 0; i < 16; i++) lv[i] = i % 6;
            kiln_tensor *y = kiln_from_host(ctx, lv, KILN_I32, 1, (int64_t[]){16});
            kiln_ctx_stats s0, s1;
            kiln_ctx_stats_get(ctx, &s0);
            kiln_ctx_set_autocast(ctx, KILN_F16);
            kiln_status st = ahead ? kiln__optim_autocast(opt, KILN_F16) : KILN_OK;
            kiln_tensor *o = st == KILN_OK ? kiln_forward(net, x) : NULL;
            kiln_ctx_stats_get(ctx, &s1);
            kiln_tensor *loss = o ? kiln_cross_entropy(ctx, o, y, KILN_MEAN) : NULL;
            kiln_ctx_set_autocast(ctx, KILN_F32);
            CHECK(kiln__hooks_of(ctx) && ctx->amp_ncache == 0, "leaving autocast empties its casts");
            launches[ahead][step] = s1.launches - s0.launches;
            CHECK(loss && kiln_optim_zero_grad(opt) == KILN_OK && kiln_backward(loss) == KILN_OK &&
                      kiln_optim_step(opt) == KILN_OK,
                  "step %d%s: %s", step, ahead ? " (casts ahead)" : "", kiln_error_message(ctx));
            out[ahead][step] = o ? h_read(kiln_to_dtype(ctx, o, KILN_F32)) : NULL;
            w[ahead][step] = h_read(p[0]);
            kiln_scope_end(ctx);
        }
        if (ahead) { /* the first allocation of the casts failing */
            int64_t before = kiln_ctx_num_tensors(ctx);
            kiln_ctx_set_autocast(ctx, KILN_F16);
            kiln__pool_fail_after(ctx, 1);
            kiln_status st = kiln__optim_autocast(opt, KILN_F16);
            kiln__pool_fail_after(ctx, 0);
            kiln_ctx_set_autocast(ctx, KILN_F32);
            CHECK(st == KILN_ERR_OUT_OF_MEMORY && strstr(kiln_error_message(ctx), "kiln_to_dtype") &&
                      kiln_ctx_num_tensors(ctx) == before,
                  "casts ahead, out of memory: %s (%lld tensors left behind)", kiln_error_message(ctx),
                  (long long)(kiln_ctx_num_tensors(ctx) - before));
            kiln_error_clear(ctx);
        }
        kiln_optim_free(opt);
        kiln_module_free(net);
    }
    for (int step = 0; step < 2; step++) {
        CHECK(out[0][step] && out[1][step] && !memcmp(out[0][step], out[1][step], 16 * 6 * sizeof(float)),
              "step %d: the output with the casts made ahead differs", step);
        CHECK(w[0][step] && w[1][step] && !memcmp(w[0][step], w[1][step], 32 * 20 * sizeof(float)),
              "step %d: the updated weights differ", step);
        /* four casts, one launch */
        CHECK(launches[1][step] + 3 == launches[0][step],
              "step %d: forward %llu launches with the casts ahead, %llu without", step,
              (unsigned long long)launches[1][step], (unsigned long long)launches[0][step]);
        free(out[0][step]), free(out[1][step]), free(w[0][step]), free(w[1][step]);
    }
    CHECK_OK(ctx);
}

/* loss = sum(p * k): gradient k (scaled: k * scale) */
static kiln_status scaled_step(kiln_ctx *ctx, kiln_grad_scaler *sc, kiln_optim *opt, kiln_tensor *p, float k) {
    kiln_scope_begin(ctx);
    kiln_optim_zero_grad(opt);
    kiln_tensor *loss = kiln_sum(ctx, kiln_mul_scalar(ctx, p, k), 0, NULL, false);
    kiln_status s = kiln_backward(kiln_grad_scaler_scale(sc, loss));
    if (s == KILN_OK) s = kiln_grad_scaler_step(sc, opt);
    if (s == KILN_OK) s = kiln_grad_scaler_update(sc);
    kiln_scope_end(ctx);
    return s;
}

static void test_scaler(kiln_ctx *ctx) {
    const float v[5] = {1.5f, -2.0f, 0.25f, 3.0f, -0.5f};
    for (int kind = 0; kind < 2; kind++) { /* SGD with momentum, Adam */
        kiln_tensor *p = leaf(ctx, v, 5), *q = leaf(ctx, v, 5);
        kiln_sgd_opts so = kiln_sgd_defaults();
        so.lr = 0.1;
        so.momentum = 0.9;
        kiln_adam_opts ao = kiln_adam_defaults();
        kiln_optim *opt = kind ? kiln_adam(ctx, &p, 1, &ao) : kiln_sgd(ctx, &p, 1, &so);
        kiln_optim *plain = kind ? kiln_adam(ctx, &q, 1, &ao) : kiln_sgd(ctx, &q, 1, &so);
        kiln_grad_scaler_opts o = kiln_grad_scaler_defaults();
        o.growth_interval = 3;
        kiln_grad_scaler *sc = kiln_grad_scaler_new(ctx, &o);
        const char *name = kind ? "adam" : "sgd";
        /* an overflowing step: 1e35 * 65536 is inf in f32 */
        CHECK(scaled_step(ctx, sc, opt, p, 1e35f) == KILN_OK, "%s: overflowing step runs: %s", name,
              kiln_error_message(ctx));
        float got[5];
        kiln_to_host(p, got, sizeof got);
        CHECK(!memcmp(got, v, sizeof v), "%s: the overflowing step left the parameters unchanged", name);
        CHECK(kiln_grad_scaler_get_scale(sc) == 32768.0f && kiln_grad_scaler_growth_tracker(sc) == 0,
              "%s: scale halved to %g (tracker %d)", name, kiln_grad_scaler_get_scale(sc),
              kiln_grad_scaler_growth_tracker(sc));
        /* good steps: the same updates as without a scaler (scale a power of two: the unscaled
         * gradient is exact), growth after 3 of them */
        for (int step = 0; step < 3; step++) {
            float k = 0.5f + (float)step;
            CHECK(scaled_step(ctx, sc, opt, p, k) == KILN_OK, "%s: good step %d: %s", name, step,
                  kiln_error_message(ctx));
            kiln_scope_begin(ctx);
            kiln_optim_zero_grad(plain);
            kiln_backward(kiln_sum(ctx, kiln_mul_scalar(ctx, q, k), 0, NULL, false));
            kiln_optim_step(plain);
            kiln_scope_end(ctx);
            float gp[5], gq[5];
            kiln_to_host(p, gp, sizeof gp);
            kiln_to_host(q, gq, sizeof gq);
            /* Adam counts the skipped step in its bias correction (amp.h): only SGD's match */
            if (kind == 0)
                CHECK(!memcmp(gp, gq, sizeof gp), "%s: good step %d equals the plain update", name, step);
            else
                CHECK(memcmp(gp, v, sizeof v) != 0, "%s: good step %d updates", name, step);
            if (step < 2)
                CHECK(kiln_grad_scaler_growth_tracker(sc) == step + 1 && kiln_grad_scaler_get_scale(sc) == 32768.0f,
                      "%s: %d good steps counted", name, step + 1);
        }
        CHECK(kiln_grad_scaler_get_scale(sc) == 65536.0f && kiln_grad_scaler_growth_tracker(sc) == 0,
              "%s: 3 good steps doubled the scale to %g", name, kiln_grad_scaler_get_scale(sc));
        /* a NaN gradient is skipped too */
        kiln_to_host(p, got, sizeof got);
        CHECK(scaled_step(ctx, sc, opt, p, NAN) == KILN_OK, "%s: NaN step", name);
        float after[5];
        kiln_to_host(p, after, sizeof after);
        CHECK(!memcmp(got, after, sizeof got) && kiln_grad_scaler_get_scale(sc) == 32768.0f,
              "%s: a NaN step is skipped and backs off", name);
        kiln_grad_scaler_free(sc);
        kiln_optim_free(opt);
        kiln_optim_free(plain);
        kiln_tensor_free(p);
        kiln_tensor_free(q);
    }
    CHECK_OK(ctx);
}

/* The unscale of many gradients: eight a launch (scaler_unscale_multi), the same values as
 * one launch per gradient (KILN_OPTIM_SINGLE), an inf found in whichever gradient holds it
 * (the first batch, the second, none), and a frozen parameter's gradient left alone. */
static void test_scaler_multi(kiln_ctx *ctx) {
    enum { NP = 11 };
    for (int bad = -1; bad < NP; bad += 5) { /* none, the 5th, the 10th */
        float *got[2][NP] = {{0}};
        uint64_t launches[2] = {0, 0};
        float scale[2] = {0, 0};
        for (int v = 0; v < 2; v++) {
            kiln_sync(ctx); /* setenv with nothing running: POCL's threads call getenv */
            if (v) setenv("KILN_OPTIM_SINGLE", "1", 1);
            kiln_scope_begin(ctx);
            kiln_tensor *p[NP];
            kiln_tensor *loss = kiln_zeros(ctx, 0, NULL);
            for (int i = 0; i < NP; i++) {
                int64_t n = 3 + 7 * i;
                float *h = malloc(sizeof(float) * (size_t)n), *c = malloc(sizeof(float) * (size_t)n);
                for (int64_t e = 0; e < n; e++)
                    h[e] = 0.5f + (float)e, c[e] = 0.25f * (float)(e % 5) - 0.5f + 0.01f * i;
                if (i == bad) c[n / 2] = INFINITY;
                p[i] = leaf(ctx, h, n);
                kiln_tensor *ct = kiln_from_host(ctx, c, KILN_F32, 1, &n);
                loss = kiln_add(ctx, loss, kiln_sum(ctx, kiln_mul(ctx, p[i], ct), 0, NULL, false));
                free(h), free(c);
            }
            kiln_sgd_opts so = kiln_sgd_defaults();
            kiln_optim *opt = kiln_sgd(ctx, p, NP, &so);
            kiln_grad_scaler *sc = kiln_grad_scaler_new(ctx, NULL);
            CHECK(kiln_backward(kiln_grad_scaler_scale(sc, loss)) == KILN_OK, "backward: %s", kiln_error_message(ctx));
            kiln_tensor_set_requires_grad(p[1], false); /* frozen after its gradient was made */
            kiln_ctx_stats s0, s1;
            kiln_ctx_stats_get(ctx, &s0);
            CHECK(kiln_grad_scaler_unscale(sc, opt) == KILN_OK, "unscale: %s", kiln_error_message(ctx));
            kiln_ctx_stats_get(ctx, &s1);
            launches[v] = s1.launches - s0.launches;
            for (int i = 0; i < NP; i++) got[v][i] = h_read(kiln_tensor_grad(p[i]));
            CHECK(kiln_grad_scaler_update(sc) == KILN_OK, "update: %s", kiln_error_message(ctx));
            scale[v] = kiln_grad_scaler_get_scale(sc);
            kiln_grad_scaler_free(sc);
            kiln_optim_free(opt);
            for (int i = 0; i < NP; i++) kiln_tensor_free(p[i]);
            kiln_scope_end(ctx);
            kiln_sync(ctx);
            if (v) unsetenv("KILN_OPTIM_SINGLE");
        }
        CHECK(launches[0] == 2 && launches[1] == NP - 1,
              "inf in %d: the unscale of %d trainable gradients took %llu launches, %llu one by one (want 2, %d)", bad,
              NP - 1, (unsigned long long)launches[0], (unsigned long long)launches[1], NP - 1);
        CHECK(scale[0] == scale[1] && scale[0] == (bad < 0 ? 65536.0f : 32768.0f),
              "inf in %d: the scale after the update is %g (one by one: %g)", bad, scale[0], scale[1]);
        for (int i = 0; i < NP; i++) {
            int64_t n = 3 + 7 * i;
            CHECK(got[0][i] && got[1][i] && !memcmp(got[0][i], got[1][i], sizeof(float) * (size_t)n),
                  "inf in %d: gradient %d unscaled eight a launch differs from one by one", bad, i);
            /* the frozen gradient stays scaled: 65536 c */
            if (i == 1 && got[0][i]) CHECK(got[0][i][0] == -0.49f * 65536.0f, "the frozen gradient was left alone");
            free(got[0][i]), free(got[1][i]);
        }
    }
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
}

static void test_scaler_errors(kiln_ctx *ctx) {
    kiln_grad_scaler_opts o = kiln_grad_scaler_defaults();
    o.backoff_factor = 1.5f;
    CHECK(kiln_grad_scaler_new(ctx, &o) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT &&
              strstr(kiln_error_message(ctx), "backoff_factor 1.5"),
          "bad backoff: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    o = kiln_grad_scaler_defaults();
    o.init_scale = INFINITY;
    CHECK(kiln_grad_scaler_new(ctx, &o) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT, "inf scale");
    kiln_error_clear(ctx);
    CHECK(kiln_grad_scaler_new(NULL, NULL) == NULL && kiln_last_status() == KILN_ERR_NULL, "NULL ctx");
    CHECK(kiln_grad_scaler_scale(NULL, NULL) == NULL && kiln_grad_scaler_step(NULL, NULL) == KILN_ERR_NULL &&
              kiln_grad_scaler_unscale(NULL, NULL) == KILN_ERR_NULL && kiln_grad_scaler_update(NULL) == KILN_ERR_NULL &&
              isnan(kiln_grad_scaler_get_scale(NULL)) && kiln_grad_scaler_growth_tracker(NULL) == -1,
          "NULL scaler");
    kiln_grad_scaler_free(NULL);
    kiln_grad_scaler *sc = kiln_grad_scaler_new(ctx, NULL);
    CHECK(kiln_grad_scaler_step(sc, NULL) == KILN_ERR_NULL && strstr(kiln_error_message(ctx), "optimizer is NULL"),
          "NULL optimizer: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    const float v[3] = {1, 2, 3};
    kiln_tensor *p = leaf(ctx, v, 3);
    kiln_sgd_opts so = kiln_sgd_defaults();
    so.lr = 0.1;
    so.momentum = 0.9;
    so.dampening = 0.1;
    kiln_optim *opt = kiln_sgd(ctx, &p, 1, &so);
    kiln_scope_begin(ctx);
    kiln_backward(kiln_grad_scaler_scale(sc, kiln_sum(ctx, p, 0, NULL, false)));
    CHECK(kiln_grad_scaler_unscale(sc, opt) == KILN_OK, "unscale");
    CHECK(kiln_grad_scaler_unscale(sc, opt) == KILN_ERR_INVALID_ARGUMENT &&
              strstr(kiln_error_message(ctx), "already called"),
          "unscale twice in a step: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    float before[3];
    kiln_to_host(p, before, sizeof before);
    CHECK(kiln_grad_scaler_step(sc, opt) == KILN_ERR_UNSUPPORTED && strstr(kiln_error_message(ctx), "dampening"),
          "SGD with dampening under a scaler: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    float after[3];
    kiln_to_host(p, after, sizeof after);
    CHECK(!memcmp(before, after, sizeof before), "the refused step changed nothing");
    kiln_scope_end(ctx);
    kiln_optim_free(opt);
    kiln_tensor_free(p);
    kiln_grad_scaler_free(sc);
}

/* kiln_fit with amp: runs (with clipping, which unscales first) and learns; a bad amp dtype */
static void test_fit_amp(kiln_ctx *ctx) {
    enum { N = 96, F = 8 };
    float x[N * F];
    int32_t y[N];
    for (int i = 0; i < N; i++) {
        y[i] = i % 3;
        for (int j = 0; j < F; j++) x[i * F + j] = (j % 3 == y[i] ? 1.0f : 0.0f) + h_uniform(-0.3f, 0.3f);
    }
    kiln_dataset *ds = kiln_dataset_from_host(x, y, N, 1, (int64_t[]){F}, 3);
    kiln_loader_opts lo = kiln_loader_defaults();
    lo.batch_size = 16;
    kiln_loader *l = kiln_loader_new(ctx, ds, &lo);
    kiln_module *net = kiln_nn_sequential(ctx, 3,
                                          (kiln_module *[]){kiln_nn_linear(ctx, F, 16, true),
                                                            kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                                                            kiln_nn_linear(ctx, 16, 3, true)});
    kiln_tensor *p[4];
    int np = kiln_module_parameters(net, p, 4);
    kiln_sgd_opts so = kiln_sgd_defaults();
    so.lr = 0.2;
    so.momentum = 0.9;
    kiln_optim *opt = kiln_sgd(ctx, p, np, &so);
    kiln_fit_opts o = kiln_fit_defaults();
    o.epochs = 8;
    o.train = l;
    o.opt = opt;
    o.amp = KILN_I32;
    kiln_fit_result r;
    CHECK(kiln_fit(net, &o, &r) == KILN_ERR_DTYPE && strstr(kiln_error_message(ctx), "amp is i32"),
          "fit with amp i32: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    o.amp = KILN_F16;
    o.clip_grad_norm = 5.0f;
    kiln_epoch_stats hist[8];
    o.history = hist;
    o.history_cap = 8;
    CHECK(kiln_fit(net, &o, &r) == KILN_OK, "fit with amp: %s", kiln_error_message(ctx));
    CHECK(r.epochs_run == 8 && hist[7].train_loss < 0.5 * hist[0].train_loss && hist[7].train_accuracy > 0.9,
          "AMP fit learns: loss %.4f -> %.4f, accuracy %.3f", hist[0].train_loss, hist[7].train_loss,
          hist[7].train_accuracy);
    CHECK(kiln_ctx_autocast(ctx) == KILN_F32, "kiln_fit leaves autocast off");
    kiln_optim_free(opt);
    kiln_module_free(net);
    kiln_loader_free(l);
    kiln_dataset_free(ds);
    kiln_error_clear(ctx);
}

static void run(kiln_ctx *ctx) {
    kiln__set_guard(ctx, 2);
    test_autocast_rules(ctx);
    test_conv_half(ctx);
    test_amp_step(ctx);
    test_autocast_ahead(ctx);
    test_scaler(ctx);
    test_scaler_multi(ctx);
    test_scaler_errors(ctx);
    test_fit_amp(ctx);
    char msg[200];
    CHECK(kiln__check_guards(ctx, msg, sizeof msg) == 0, "guards: %s", msg);
    CHECK_OK(ctx);
}

int main(void) {
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}

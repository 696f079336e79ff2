/* tests/test_transformer.c - MultiheadAttention, the Transformer encoder/decoder layers
 * (norm_first both ways, relu and gelu), the encoder stack, the positional embeddings and
 * the tied output projection, against PyTorch (tests/golden/gen_transformer.py: outputs,
 * input gradients and every parameter gradient; key_padding_mask, boolean and float
 * attn_mask 2-D and 3-D, causal masks, kdim/vdim, need_weights), a state dict torch saved
 * loaded strictly, and the error paths (embed_dim not divisible by heads, masks of the
 * wrong shape, a sequence longer than the positional table), and attention dropout (training
 * only, reproducible by seed).
 *
 * Tolerances. The references are float64; kiln computes in float32. Every value is a chain
 * of a few products of at most dim_feedforward = 16 terms, softmaxes and layer norms on
 * values of magnitude below ~5 (layer norm divides by a standard deviation that can be
 * small, amplifying the rounding of its input about tenfold), so forward values stay
 * within ~1e-5 absolute; gradients sum B * T <= 18 such terms per parameter element,
 * hence 1e-4. Both the fused and the composed sdpa paths are run. */
#include <math.h>
#include <stdlib.h>

#include "golden.h"
#include "harness.h"

#define FWD_ATOL 2e-5
#define FWD_RTOL 2e-5
#define GRAD_ATOL 1e-4
#define GRAD_RTOL 1e-4

static kiln_tensor *up(kiln_ctx *ctx, const golden_tensor *t, bool grad) {
    kiln_tensor *k = golden_upload(ctx, t);
    if (k && grad) kiln_tensor_set_requires_grad(k, true);
    return k;
}

/* An I32 0/1 golden mask as a U8 kiln tensor. */
static kiln_tensor *up_bool(kiln_ctx *ctx, const golden_tensor *t) {
    if (!t) return NULL;
    uint8_t *b = malloc((size_t)t->numel);
    for (int64_t i = 0; i < t->numel; i++) b[i] = (uint8_t)(t->i[i] != 0);
    kiln_tensor *k = kiln_from_host(ctx, b, KILN_U8, t->ndim, t->shape);
    free(b);
    return k;
}

/* Copies every entry of m's state from the golden "<pre>w.<name>". */
static void load_golden(kiln_module *m, golden *g, const char *pre) {
    kiln_named_tensor st[256];
    int n = kiln_module_state(m, st, 256);
    CHECK(n > 0 && n <= 256, "state of %d entries", n);
    for (int i = 0; i < n && i < 256; i++) {
        char key[300];
        snprintf(key, sizeof key, "%.60sw.%.128s", pre, st[i].name);
        const golden_tensor *t = golden_get(g, key);
        if (!t) continue;
        CHECK(kiln_tensor_numel(st[i].tensor) == t->numel, "%s: %lld elements, torch's %lld", key,
              (long long)kiln_tensor_numel(st[i].tensor), (long long)t->numel);
        if (kiln_tensor_numel(st[i].tensor) == t->numel)
            CHECK(kiln_copy_from_host(st[i].tensor, t->f, sizeof(float) * (size_t)t->numel) == KILN_OK, "load %s", key);
    }
}

/* sum(out * gout), backward, then every parameter's gradient against torch's. */
static void check_grads(kiln_ctx *ctx, kiln_module *m, golden *g, const char *pre, kiln_tensor *y, const char *what) {
    char key[300], w[400];
    snprintf(key, sizeof key, "%sout", pre);
    snprintf(w, sizeof w, "%s output", what);
    golden_compare(w, y, golden_get(g, key), FWD_ATOL, FWD_RTOL);
    snprintf(key, sizeof key, "%sgout", pre);
    kiln_tensor *loss = kiln_sum(ctx, kiln_mul(ctx, y, golden_upload(ctx, golden_get(g, key))), 0, NULL, false);
    CHECK(loss && kiln_backward(loss) == KILN_OK, "%s backward: %s", what, kiln_error_message(ctx));
    kiln_named_tensor st[256];
    int n = kiln_module_state(m, st, 256);
    int compared = 0;
    for (int i = 0; i < n && i < 256; i++) {
        if (st[i].is_buffer) continue;
        snprintf(key, sizeof key, "%.60sg.w.%.128s", pre, st[i].name);
        snprintf(w, sizeof w, "%.100s grad %.128s", what, st[i].name);
        golden_compare(w, kiln_tensor_grad(st[i].tensor), golden_get(g, key), GRAD_ATOL, GRAD_RTOL);
        compared++;
    }
    CHECK(compared >= 2, "%s: %d parameter gradients compared", what, compared);
}

static void zero_grads(kiln_module *m) {
    kiln_tensor *p[256];
    int n = kiln_module_parameters(m, p, 256);
    for (int i = 0; i < n && i < 256; i++) kiln_tensor_clear_grad(p[i]);
}

static void mha_case(kiln_ctx *ctx, golden *g, const char *name, kiln_sdpa_impl impl) {
    char pre[64], key[300], what[300];
    snprintf(pre, sizeof pre, "%s.", name);
#define G(n) (snprintf(key, sizeof key, "%s%s", pre, n), golden_get(g, key))
    const golden_tensor *p = G("p");
    if (!p) return;
    int E = p->i[0], H = p->i[1], bf = p->i[5], self_ = p->i[9], nw = p->i[10], has_kpm = p->i[11], am = p->i[12];
    snprintf(what, sizeof what, "%s (%s)", name, impl == KILN_SDPA_FUSED ? "fused" : "composed");
    kiln_mha_params mp = kiln_mha_defaults();
    mp.kdim = p->i[2], mp.vdim = p->i[3], mp.bias = p->i[4], mp.batch_first = bf, mp.impl = impl;
    kiln_module *m = kiln_nn_multihead_attention(ctx, E, H, &mp);
    CHECK(m != NULL, "%s: %s", what, kiln_error_message(ctx));
    if (!m) return;
    kiln_module_train(m, false);
    load_golden(m, g, pre);
    kiln_scope_begin(ctx);
    kiln_tensor *q = up(ctx, G("q"), true), *k = q, *v = q;
    if (!self_) k = up(ctx, G("k"), true), v = up(ctx, G("v"), true);
    kiln_attn_masks mk = kiln_attn_masks_none();
    if (has_kpm) mk.key_padding_mask = up_bool(ctx, G("kpm"));
    if (am == 2) mk.attn_mask = golden_upload(ctx, G("am"));
    if (am == 1 || am == 3) mk.attn_mask = up_bool(ctx, G("am"));
    kiln_tensor *y = NULL, *w = NULL;
    CHECK(kiln_nn_mha_forward(m, q, k, v, &mk, nw, &y, nw ? &w : NULL) == KILN_OK, "%s forward: %s", what,
          kiln_error_message(ctx));
    if (nw) {
        char ww[320];
        snprintf(ww, sizeof ww, "%s weights", what);
        golden_compare(ww, w, G("wts"), FWD_ATOL, FWD_RTOL);
    }
    if (y) {
        check_grads(ctx, m, g, pre, y, what);
        char gw[320];
        snprintf(gw, sizeof gw, "%s grad query", what);
        golden_compare(gw, kiln_tensor_grad(q), G("g.q"), GRAD_ATOL, GRAD_RTOL);
        if (!self_) {
            snprintf(gw, sizeof gw, "%s grad key", what);
            golden_compare(gw, kiln_tensor_grad(k), G("g.k"), GRAD_ATOL, GRAD_RTOL);
            snprintf(gw, sizeof gw, "%s grad value", what);
            golden_compare(gw, kiln_tensor_grad(v), G("g.v"), GRAD_ATOL, GRAD_RTOL);
        }
    }
    kiln_scope_end(ctx);
    kiln_module_free(m);
#undef G
}

static void layer_case(kiln_ctx *ctx, golden *g, const char *name, kiln_sdpa_impl impl) {
    char pre[64], key[300], what[300];
    snprintf(pre, sizeof pre, "%s.", name);
#define G(n) (snprintf(key, sizeof key, "%s%s", pre, n), golden_get(g, key))
    const golden_tensor *p = G("p");
    if (!p) return;
    snprintf(what, sizeof what, "%s (%s)", name, impl == KILN_SDPA_FUSED ? "fused" : "composed");
    kiln_transformer_params tp = kiln_transformer_defaults(p->i[0], p->i[1]);
    tp.dim_feedforward = p->i[2], tp.activation = p->i[3] ? KILN_ACT_GELU : KILN_ACT_RELU;
    tp.batch_first = p->i[4], tp.norm_first = p->i[5], tp.dropout = 0.0f, tp.impl = impl;
    int causal = p->i[9], dec = p->i[11], nl = p->i[12];
    kiln_module *m = dec  ? kiln_nn_transformer_decoder_layer(ctx, &tp)
                     : nl ? kiln_nn_transformer_encoder(ctx, &tp, nl, true)
                          : kiln_nn_transformer_encoder_layer(ctx, &tp);
    CHECK(m != NULL, "%s: %s", what, kiln_error_message(ctx));
    if (!m) return;
    kiln_module_train(m, false);
    load_golden(m, g, pre);
    kiln_scope_begin(ctx);
    kiln_tensor *x = up(ctx, G("src"), true), *mem = dec ? up(ctx, G("mem"), true) : NULL, *y;
    kiln_attn_masks mk = kiln_attn_masks_none(), mm = kiln_attn_masks_none();
    mk.is_causal = causal;
    if (dec) {
        mm.key_padding_mask = up_bool(ctx, G("mkpm"));
        y = kiln_nn_decoder_forward(m, x, mem, &mk, &mm);
    } else {
        mk.key_padding_mask = up_bool(ctx, G("kpm"));
        y = kiln_nn_encoder_forward(m, x, &mk);
    }
    CHECK(y != NULL, "%s forward: %s", what, kiln_error_message(ctx));
    if (y) {
        check_grads(ctx, m, g, pre, y, what);
        char gw[320];
        snprintf(gw, sizeof gw, "%s grad src", what);
        golden_compare(gw, kiln_tensor_grad(x), G("g.src"), GRAD_ATOL, GRAD_RTOL);
        if (dec) {
            snprintf(gw, sizeof gw, "%s grad memory", what);
            golden_compare(gw, kiln_tensor_grad(mem), G("g.mem"), GRAD_ATOL, GRAD_RTOL);
        }
    }
    /* the causal mask given as a boolean attn_mask gives the same (the other mask path) */
    if (causal && y) {
        int64_t T = p->i[6];
        uint8_t *b = malloc((size_t)(T * T));
        for (int64_t i = 0; i < T; i++)
            for (int64_t j = 0; j < T; j++) b[i * T + j] = j > i;
        mk.is_causal = false;
        mk.attn_mask = kiln_from_host(ctx, b, KILN_U8, 2, (int64_t[]){T, T});
        free(b);
        zero_grads(m);
        kiln_tensor *y2 = dec ? kiln_nn_decoder_forward(m, kiln_detach(ctx, x), kiln_detach(ctx, mem), &mk, &mm)
                              : kiln_nn_encoder_forward(m, kiln_detach(ctx, x), &mk);
        char w2[400];
        snprintf(w2, sizeof w2, "%s, causal as a boolean attn_mask", what);
        golden_compare(w2, y2, G("out"), FWD_ATOL, FWD_RTOL);
    }
    kiln_scope_end(ctx);
    kiln_module_free(m);
#undef G
}

static void test_names_and_load(kiln_ctx *ctx, golden *g) {
    kiln_mha_params mp = kiln_mha_defaults();
    kiln_module *m = kiln_nn_multihead_attention(ctx, 8, 2, &mp);
    kiln_named_tensor st[8];
    int n = kiln_module_state(m, st, 8);
    static const char *const want[4] = {"in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"};
    CHECK(n == 4, "MultiheadAttention state has %d entries, torch's 4", n);
    for (int i = 0; i < n && i < 4; i++) CHECK(strcmp(st[i].name, want[i]) == 0, "entry %d: %s", i, st[i].name);
    if (n == 4) {
        /* xavier_uniform [24, 8]: bound sqrt(6 / 32); zero biases */
        float *w = h_read(st[0].tensor), *b = h_read(st[1].tensor), *ob = h_read(st[3].tensor);
        double mx = 0, bz = 0;
        for (int i = 0; i < 24 * 8; i++) mx = fmax(mx, fabs(w[i]));
        for (int i = 0; i < 24; i++) bz = fmax(bz, fabs(b[i]));
        for (int i = 0; i < 8; i++) bz = fmax(bz, fabs(ob[i]));
        CHECK(mx <= sqrt(6.0 / 32) && mx > 0.3, "in_proj_weight max |w| %g: expected xavier U(-0.433, 0.433)", mx);
        CHECK(bz == 0, "in_proj_bias/out_proj.bias not zero (max %g)", bz);
        free(w), free(b), free(ob);
    }
    kiln_module_free(m);
    mp.kdim = 6, mp.vdim = 5, mp.bias = false;
    m = kiln_nn_multihead_attention(ctx, 8, 2, &mp);
    n = kiln_module_state(m, st, 8);
    CHECK(n == 4 && strcmp(st[0].name, "q_proj_weight") == 0 && strcmp(st[2].name, "v_proj_weight") == 0 &&
              strcmp(st[3].name, "out_proj.weight") == 0,
          "kdim/vdim state: %d entries", n);
    kiln_module_free(m);

    /* a torch-saved TransformerEncoderLayer(16, 4, 32, batch_first) loads strictly */
    kiln_transformer_params tp = kiln_transformer_defaults(16, 4);
    tp.dim_feedforward = 32, tp.batch_first = true, tp.dropout = 0;
    m = kiln_nn_transformer_encoder_layer(ctx, &tp);
    char path[1100];
    snprintf(path, sizeof path, "%s/transformer_state.safetensors", getenv("KILN_GOLDEN_DIR"));
    CHECK(kiln_module_load(m, path, true, NULL) == KILN_OK, "strict load of torch's encoder layer: %s",
          kiln_error_message(ctx));
    kiln_module_train(m, false);
    kiln_scope_begin(ctx);
    kiln_tensor *y = kiln_forward(m, golden_upload(ctx, golden_get(g, "sd.x")));
    golden_compare("loaded encoder layer output", y, golden_get(g, "sd.out"), FWD_ATOL, FWD_RTOL);
    kiln_scope_end(ctx);
    char desc[512];
    kiln_module_describe(m, desc, sizeof desc);
    CHECK(strstr(desc, "TransformerEncoderLayer(") && strstr(desc, "d_model=16, nhead=4, dim_feedforward=32") &&
              strstr(desc, "(self_attn): MultiheadAttention"),
          "describe: %s", desc);
    kiln_module_free(m);
}

static void test_positions_and_tying(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    /* sinusoidal: pe[pos, 2i] = sin(pos / 10000^(2i/d)), pe[pos, 2i+1] = cos(...) */
    kiln_module *s = kiln_nn_sinusoidal_encoding(ctx, 10, 4, true);
    kiln_tensor *z = kiln_zeros(ctx, 3, (int64_t[]){1, 3, 4});
    kiln_tensor *y = kiln_forward(s, z);
    CHECK(y != NULL, "sinusoidal forward: %s", kiln_error_message(ctx));
    if (y) {
        float *h = h_read(y);
        double want[12];
        for (int pos = 0; pos < 3; pos++)
            for (int i = 0; i < 4; i += 2) {
                double a = pos / pow(10000.0, i / 4.0);
                want[pos * 4 + i] = sin(a), want[pos * 4 + i + 1] = cos(a);
            }
        h_compare("sinusoidal table", h, want, 12, 1e-6, 1e-6);
        free(h);
    }
    CHECK(kiln_module_num_elements(s) == 0 && kiln_module_find(s, "pe"), "sinusoidal table is a buffer");
    /* longer than the table: an error naming the module and the shapes */
    kiln_tensor *big = kiln_zeros(ctx, 3, (int64_t[]){2, 11, 4});
    CHECK(kiln_forward(s, big) == NULL && kiln_error_status(ctx) == KILN_ERR_SHAPE, "11 positions of a 10 table");
    const char *msg = kiln_error_message(ctx);
    CHECK(strstr(msg, "SinusoidalPositionalEncoding") && strstr(msg, "[2, 11, 4]") && strstr(msg, "11 positions") &&
              strstr(msg, "10"),
          "message: %s", msg);
    kiln_error_clear(ctx);
    kiln_module_free(s);

    /* learned positions (time-major) add weight[t] to every batch entry; gradients reach the
     * one table; the tied head x @ wte^T adds its gradient to the embedding's weight */
    kiln_module *pe = kiln_nn_positional_embedding(ctx, 4, 3, false);
    kiln_tensor *pw = kiln_module_find(pe, "weight");
    float ones[2 * 2 * 3];
    for (int i = 0; i < 12; i++) ones[i] = 1;
    kiln_tensor *x = kiln_from_host(ctx, ones, KILN_F32, 3, (int64_t[]){2, 2, 3});
    kiln_tensor *py = kiln_forward(pe, x);
    CHECK(py != NULL, "positional forward: %s", kiln_error_message(ctx));
    kiln_tensor *big2 = kiln_zeros(ctx, 3, (int64_t[]){5, 1, 3});
    CHECK(kiln_forward(pe, big2) == NULL && strstr(kiln_error_message(ctx), "PositionalEmbedding") &&
              strstr(kiln_error_message(ctx), "[5, 1, 3]"),
          "learned table overflow: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_module *emb = kiln_nn_embedding(ctx, 5, 3);
    kiln_module *head = kiln_nn_tied_linear(ctx, emb, false);
    CHECK(head && kiln_module_num_elements(head) == 0, "tied head owns no weight");
    kiln_tensor *ew = kiln_module_find(emb, "weight");
    kiln_tensor *ids = kiln_from_host(ctx, (int32_t[]){1, 3}, KILN_I32, 1, (int64_t[]){2});
    kiln_tensor *e = kiln_forward(emb, ids);
    kiln_tensor *logits = kiln_forward(head, e); /* [2, 5] */
    kiln_tensor *loss = kiln_add(ctx, kiln_sum(ctx, logits, 0, NULL, false), kiln_sum(ctx, py, 0, NULL, false));
    CHECK(loss && kiln_backward(loss) == KILN_OK, "tied backward: %s", kiln_error_message(ctx));
    if (loss) {
        float *w = h_read(ew), *gw = h_read(kiln_tensor_grad(ew)), *gp = h_read(kiln_tensor_grad(pw));
        /* d/dW of sum_i sum_v e_i . W_v: each row v gets sum_i e_i (the head), rows 1 and 3
         * also get sum_v W_v (the lookup) */
        double want[15];
        for (int v = 0; v < 5; v++)
            for (int d = 0; d < 3; d++) {
                double s1 = w[1 * 3 + d] + w[3 * 3 + d], sv = 0;
                for (int u = 0; u < 5; u++) sv += w[u * 3 + d];
                want[v * 3 + d] = s1 + ((v == 1 || v == 3) ? sv : 0);
            }
        h_compare("tied embedding gradient (both uses)", gw, want, 15, 1e-5, 1e-5);
        /* positions 0, 1 of the table, each used by 2 batch entries: gradient 2; rows 2, 3: 0 */
        double wp[12] = {2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0};
        h_compare("learned position gradient", gp, wp, 12, 0, 0);
        free(w), free(gw), free(gp);
    }
    kiln_scope_end(ctx);
    kiln_module_free(head);
    kiln_module_free(emb);
    kiln_module_free(pe);
}

static void test_errors(kiln_ctx *ctx) {
    CHECK(kiln_nn_multihead_attention(ctx, 10, 3, NULL) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT,
          "embed_dim 10, 3 heads");
    const char *msg = kiln_error_message(ctx);
    CHECK(strstr(msg, "MultiheadAttention") && strstr(msg, "embed_dim=10") && strstr(msg, "num_heads=3") &&
              strstr(msg, "divisible"),
          "message: %s", msg);
    kiln_error_clear(ctx);
    kiln_transformer_params tp = kiln_transformer_defaults(10, 4);
    CHECK(kiln_nn_transformer_encoder_layer(ctx, &tp) == NULL &&
              strstr(kiln_error_message(ctx), "TransformerEncoderLayer: d_model=10, nhead=4"),
          "encoder layer 10/4: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);

    kiln_module *m = kiln_nn_multihead_attention(ctx, 8, 2, NULL);
    kiln_scope_begin(ctx);
    kiln_tensor *x = kiln_zeros(ctx, 3, (int64_t[]){5, 3, 8}), *y = NULL;
    /* attn_mask of the wrong shape */
    kiln_attn_masks mk = kiln_attn_masks_none();
    mk.attn_mask = kiln_zeros(ctx, 2, (int64_t[]){5, 4});
    CHECK(kiln_nn_mha_forward(m, x, x, x, &mk, false, &y, NULL) == KILN_ERR_SHAPE && !y, "attn_mask [5, 4]");
    msg = kiln_error_message(ctx);
    CHECK(strstr(msg, "MultiheadAttention") && strstr(msg, "attn_mask [5, 4]") && strstr(msg, "[5, 5]") &&
              strstr(msg, "[6, 5, 5]"),
          "message: %s", msg);
    kiln_error_clear(ctx);
    mk.attn_mask = NULL;
    mk.key_padding_mask = kiln_zeros(ctx, 2, (int64_t[]){3, 4});
    CHECK(kiln_nn_mha_forward(m, x, x, x, &mk, false, &y, NULL) == KILN_ERR_SHAPE, "key_padding_mask [3, 4]");
    msg = kiln_error_message(ctx);
    CHECK(strstr(msg, "key_padding_mask [3, 4]") && strstr(msg, "[3, 5]"), "message: %s", msg);
    kiln_error_clear(ctx);
    mk.key_padding_mask = kiln_zeros(ctx, 2, (int64_t[]){3, 5});
    kiln_tensor *bad = kiln_zeros(ctx, 3, (int64_t[]){5, 3, 7});
    CHECK(kiln_nn_mha_forward(m, bad, bad, bad, &mk, false, &y, NULL) == KILN_ERR_SHAPE, "7 features");
    msg = kiln_error_message(ctx);
    CHECK(strstr(msg, "query [5, 3, 7]") && strstr(msg, "8 features"), "message: %s", msg);
    kiln_error_clear(ctx);
    kiln_tensor *i32 = kiln_from_host(ctx, (int32_t[]){0, 0, 0, 0, 0}, KILN_I32, 2, (int64_t[]){1, 5});
    kiln_tensor *x1 = kiln_zeros(ctx, 3, (int64_t[]){5, 1, 8});
    mk.key_padding_mask = i32;
    CHECK(kiln_nn_mha_forward(m, x1, x1, x1, &mk, false, &y, NULL) == KILN_ERR_DTYPE &&
              strstr(kiln_error_message(ctx), "key_padding_mask [1, 5] has dtype i32"),
          "i32 mask: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(kiln_nn_mha_forward(m, x, x, x, NULL, true, &y, NULL) == KILN_ERR_NULL, "need_weights without a pointer");
    kiln_error_clear(ctx);
    kiln_module *lin = kiln_nn_linear(ctx, 8, 8, true);
    CHECK(kiln_nn_mha_forward(lin, x, x, x, NULL, false, &y, NULL) == KILN_ERR_INVALID_ARGUMENT &&
              kiln_nn_encoder_forward(lin, x, NULL) == NULL,
          "a Linear is not an attention module");
    kiln_error_clear(ctx);
    kiln_module_free(lin);
    kiln_scope_end(ctx);
    kiln_module_free(m);
}

/* Dropout on the attention weights: only in training, reproducible by seed, on both paths. */
static void test_dropout(kiln_ctx *ctx) {
    for (int impl = 0; impl < 2; impl++) {
        kiln_mha_params mp = kiln_mha_defaults();
        mp.dropout = 0.5f, mp.impl = (kiln_sdpa_impl)impl;
        kiln_module *m = kiln_nn_multihead_attention(ctx, 8, 2, &mp);
        kiln_scope_begin(ctx);
        kiln_tensor *x = kiln_rand_normal(ctx, 0, 1, 3, (int64_t[]){6, 2, 8}), *y[4] = {0};
        kiln_module_train(m, false);
        kiln_nn_mha_forward(m, x, x, x, NULL, false, &y[0], NULL);
        kiln_module_train(m, true);
        for (int i = 1; i < 4; i++) {
            if (i < 3) kiln_manual_seed(ctx, 7);
            kiln_nn_mha_forward(m, x, x, x, NULL, false, &y[i], NULL);
        }
        CHECK(y[0] && y[1] && y[2] && y[3], "dropout forwards: %s", kiln_error_message(ctx));
        if (y[0] && y[1] && y[2] && y[3]) {
            float *a = h_read(y[0]), *b = h_read(y[1]), *c = h_read(y[2]), *d = h_read(y[3]);
            int same = 0, diff_eval = 0, diff_next = 0;
            for (int i = 0; i < 96; i++) same += b[i] == c[i], diff_eval += a[i] != b[i], diff_next += c[i] != d[i];
            CHECK(same == 96 && diff_eval > 0 && diff_next > 0,
                  "impl %d: same seed same output (%d of 96), training differs from eval (%d) and the next draw (%d)",
                  impl, same, diff_eval, diff_next);
            free(a), free(b), free(c), free(d);
        }
        kiln_scope_end(ctx);
        kiln_module_free(m);
    }
}

static void run_all(kiln_ctx *ctx) {
    golden g;
    if (!golden_open(&g, "transformer")) return;
    static const char *const mha[] = {"mha1", "mha2", "mha3", "mha4"};
    static const char *const layers[] = {"enc_post", "enc_pre", "dec_post", "dec_pre", "enc_stack"};
    for (int impl = 0; impl < 2; impl++) {
        for (int i = 0; i < 4; i++) mha_case(ctx, &g, mha[i], (kiln_sdpa_impl)impl);
        for (int i = 0; i < 5; i++) layer_case(ctx, &g, layers[i], (kiln_sdpa_impl)impl);
    }
    test_names_and_load(ctx, &g);
    test_positions_and_tying(ctx);
    test_errors(ctx);
    test_dropout(ctx);
    golden_close(&g);
}

int main(void) {
    H_FOR_EACH_DEVICE(run_all);
    return h_finish();
}

/* src/nn/transformer.c - the attention modules of nn.h: MultiheadAttention,
 * TransformerEncoderLayer/DecoderLayer and their stacks (torch.nn's names, initialisation
 * and semantics), learned and sinusoidal positional embeddings, and the output projection
 * tied to an embedding. The attention itself is kiln_scaled_dot_product_attention; the
 * modules merge torch's two masks (key_padding_mask, attn_mask) into the one mask it takes.
 * Each is defined through the public module API; the *_forward functions with masks hand
 * them to the module's state for the one call and run it through kiln_module_forward, so
 * errors get the module's note as any other forward's. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn_internal.h"

#define PY_BOOL(b) ((b) ? "True" : "False")

static kiln_module *fail_free(kiln_module *m) {
    kiln_module_free(m);
    return NULL;
}

static kiln_tensor *add_param(kiln_module *m, const char *name, kiln_tensor *t) {
    return kiln_module_add_parameter(m, name, t) == KILN_OK ? t : NULL;
}

static kiln_tensor *add_child_param(kiln_module *child, const char *name) { return kiln_module_find(child, name); }

/* ---- masks ---------------------------------------------------------------------------- */

/* An additive F32 mask of m: m itself when F32; a U8 mask (torch's boolean: nonzero = not
 * allowed to attend) becomes -inf there and 0 elsewhere. The boolean is read back to the
 * host for this (one wait). */
static kiln_tensor *additive_mask(kiln_module *mod, kiln_tensor *m, const char *what) {
    kiln_ctx *ctx = mod->ctx;
    if (m->dtype == KILN_F32) return m;
    if (m->dtype != KILN_U8) {
        char s[96];
        kiln__fail(ctx, KILN_ERR_DTYPE, "%s: %s %s has dtype %s; it must be u8 (boolean) or f32 (additive)", mod->kind,
                   what, kiln__shape_str(m->ndim, m->shape, s, sizeof s), kiln_dtype_name(m->dtype));
        return NULL;
    }
    int64_t n = kiln_tensor_numel(m);
    uint8_t *h = malloc((size_t)(n ? n : 1));
    float *f = malloc(sizeof(float) * (size_t)(n ? n : 1));
    kiln_tensor *out = NULL;
    if (!h || !f)
        kiln__fail(ctx, KILN_ERR_OUT_OF_MEMORY, "%s: out of host memory for the %s", mod->kind, what);
    else if (kiln_to_host(m, h, (size_t)n) == KILN_OK) {
        for (int64_t i = 0; i < n; i++) f[i] = h[i] ? -INFINITY : 0.0f;
        out = kiln_from_host(ctx, f, KILN_F32, m->ndim, m->shape);
    }
    free(h);
    free(f);
    return out;
}

/* -inf above the diagonal of [L, S] (torch's generate_square_subsequent_mask, top-left). */
static kiln_tensor *causal_mask(kiln_ctx *ctx, int64_t L, int64_t S) {
    float *f = malloc(sizeof(float) * (size_t)(L * S));
    if (!f) return kiln__fail(ctx, KILN_ERR_OUT_OF_MEMORY, "causal mask: out of host memory"), NULL;
    for (int64_t i = 0; i < L; i++)
        for (int64_t j = 0; j < S; j++) f[i * S + j] = j > i ? -INFINITY : 0.0f;
    kiln_tensor *t = kiln_from_host(ctx, f, KILN_F32, 2, (int64_t[]){L, S});
    free(f);
    return t;
}

/* ---- MultiheadAttention ---------------------------------------------------------------- */

typedef struct mha_cfg {
    int64_t E, H, kdim, vdim;
    kiln_mha_params p;
    kiln_tensor *in_w, *q_w, *k_w, *v_w, *in_b; /* in_w when kdim == vdim == E, else q/k/v_w */
    kiln_module *out_proj;
    /* one call's masks and requests, set by kiln_nn_mha_forward */
    const kiln_attn_masks *masks;
    bool need_weights;
    kiln_tensor *weights;
} mha_cfg;

kiln_mha_params kiln_mha_defaults(void) {
    return (kiln_mha_params){.bias = true, .dropout = 0.0f, .impl = KILN_SDPA_FUSED};
}

kiln_attn_masks kiln_attn_masks_none(void) { return (kiln_attn_masks){0}; }

/* x [.., E] @ w[r0:r1]^T + b[r0:r1] */
static kiln_tensor *project(kiln_ctx *ctx, kiln_tensor *x, kiln_tensor *w, kiln_tensor *b, int64_t r0, int64_t r1,
                            bool whole) {
    kiln_tensor *ws = whole ? w : kiln_slice(ctx, w, 0, r0, r1, 1);
    kiln_tensor *y = kiln_matmul_ex(ctx, x, ws, KILN_TRANS_B);
    if (!b) return y;
    return kiln_add(ctx, y, whole ? b : kiln_slice(ctx, b, 0, r0, r1, 1));
}

/* [L, B, E] (or [B, L, E] batch-first) -> [B, H, L, E/H] */
static kiln_tensor *split_heads(kiln_ctx *ctx, kiln_tensor *x, int64_t H, bool batch_first) {
    if (!x) return NULL;
    int64_t d0 = x->shape[0], d1 = x->shape[1], E = x->shape[2];
    kiln_tensor *r = kiln_reshape(ctx, x, 4, (int64_t[]){d0, d1, H, E / H});
    return kiln_permute(ctx, r, batch_first ? (const int[]){0, 2, 1, 3} : (const int[]){1, 2, 0, 3});
}

static bool mha_check_input(kiln_module *m, kiln_tensor *x, const char *what, int64_t feat) {
    if (x->ndim != 3 || x->shape[2] != feat) {
        char s[96];
        kiln__fail(m->ctx, KILN_ERR_SHAPE, "%s: %s %s must be 3-D %s with %" PRId64 " features", m->kind, what,
                   kiln__shape_str(x->ndim, x->shape, s, sizeof s),
                   ((const mha_cfg *)m->data)->p.batch_first ? "[batch, seq, features]" : "[seq, batch, features]",
                   feat);
        return false;
    }
    return true;
}

/* The merged additive mask [B or 1, H or 1, L, S] of the call's masks, NULL (no error) when
 * there is none; *causal_only when the only mask is is_causal (sdpa does that itself). */
static bool mha_mask(kiln_module *m, int64_t B, int64_t L, int64_t S, kiln_tensor **out, bool *causal_only) {
    const mha_cfg *c = m->data;
    kiln_ctx *ctx = m->ctx;
    const kiln_attn_masks *mk = c->masks;
    *out = NULL;
    *causal_only = false;
    if (!mk) return true;
    char s[96];
    kiln_tensor *am = NULL, *kp = NULL;
    if (mk->attn_mask) {
        kiln_tensor *a = mk->attn_mask;
        bool ok2 = a->ndim == 2 && a->shape[0] == L && a->shape[1] == S;
        bool ok3 = a->ndim == 3 && a->shape[0] == B * c->H && a->shape[1] == L && a->shape[2] == S;
        if (!ok2 && !ok3) {
            kiln__fail(ctx, KILN_ERR_SHAPE,
                       "%s: attn_mask %s must be [L, S] = [%" PRId64 ", %" PRId64
                       "] or [batch * num_heads, L, S] = [%" PRId64 ", %" PRId64 ", %" PRId64 "]",
                       m->kind, kiln__shape_str(a->ndim, a->shape, s, sizeof s), L, S, B * c->H, L, S);
            return false;
        }
        if (!(am = additive_mask(m, a, "attn_mask"))) return false;
        am = ok2 ? kiln_reshape(ctx, am, 4, (int64_t[]){1, 1, L, S})
                 : kiln_reshape(ctx, am, 4, (int64_t[]){B, c->H, L, S});
        if (!am) return false;
    }
    if (mk->key_padding_mask) {
        kiln_tensor *k = mk->key_padding_mask;
        if (k->ndim != 2 || k->shape[0] != B || k->shape[1] != S) {
            kiln__fail(ctx, KILN_ERR_SHAPE, "%s: key_padding_mask %s must be [batch, S] = [%" PRId64 ", %" PRId64 "]",
                       m->kind, kiln__shape_str(k->ndim, k->shape, s, sizeof s), B, S);
            return false;
        }
        if (!(kp = additive_mask(m, k, "key_padding_mask"))) return false;
        if (!(kp = kiln_reshape(ctx, kp, 4, (int64_t[]){B, 1, 1, S}))) return false;
    }
    if (mk->is_causal && !am && !kp) {
        *causal_only = true;
        return true;
    }
    if (mk->is_causal) {
        kiln_tensor *cm = causal_mask(ctx, L, S);
        if (!cm) return false;
        am = am ? kiln_add(ctx, am, cm) : kiln_reshape(ctx, cm, 4, (int64_t[]){1, 1, L, S});
        if (!am) return false;
    }
    *out = am && kp ? kiln_add(ctx, am, kp) : am ? am : kp;
    return *out != NULL || (!am && !kp);
}

static kiln_status mha_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nin, (void)nout;
    mha_cfg *c = m->data;
    kiln_ctx *ctx = m->ctx;
    kiln_tensor *q = in[0], *k = in[1], *v = in[2];
    if (!mha_check_input(m, q, "query", c->E) || !mha_check_input(m, k, "key", c->kdim) ||
        !mha_check_input(m, v, "value", c->vdim))
        return kiln_error_status(ctx);
    bool bf = c->p.batch_first;
    int64_t B = q->shape[bf ? 0 : 1], L = q->shape[bf ? 1 : 0], S = k->shape[bf ? 1 : 0];
    if (k->shape[bf ? 0 : 1] != B || v->shape[bf ? 0 : 1] != B || v->shape[bf ? 1 : 0] != S) {
        char s1[96], s2[96], s3[96];
        return kiln__fail(ctx, KILN_ERR_SHAPE,
                          "%s: query %s, key %s and value %s must share the batch size, and key and value the "
                          "sequence length",
                          m->kind, kiln__shape_str(q->ndim, q->shape, s1, sizeof s1),
                          kiln__shape_str(k->ndim, k->shape, s2, sizeof s2),
                          kiln__shape_str(v->ndim, v->shape, s3, sizeof s3));
    }
    kiln_tensor *mask = NULL;
    bool causal_only = false;
    if (!mha_mask(m, B, L, S, &mask, &causal_only)) return kiln_error_status(ctx);
    int64_t E = c->E;
    kiln_tensor *qp, *kp, *vp;
    if (c->in_w && q == k && k == v) { /* self-attention: one product for q, k and v */
        kiln_tensor *qkv = project(ctx, q, c->in_w, c->in_b, 0, 3 * E, true);
        qp = kiln_slice(ctx, qkv, 2, 0, E, 1);
        kp = kiln_slice(ctx, qkv, 2, E, 2 * E, 1);
        vp = kiln_slice(ctx, qkv, 2, 2 * E, 3 * E, 1);
    } else if (c->in_w) {
        qp = project(ctx, q, c->in_w, c->in_b, 0, E, false);
        kp = project(ctx, k, c->in_w, c->in_b, E, 2 * E, false);
        vp = project(ctx, v, c->in_w, c->in_b, 2 * E, 3 * E, false);
    } else {
        kiln_tensor *bq = c->in_b ? kiln_slice(ctx, c->in_b, 0, 0, E, 1) : NULL;
        kiln_tensor *bk = c->in_b ? kiln_slice(ctx, c->in_b, 0, E, 2 * E, 1) : NULL;
        kiln_tensor *bv = c->in_b ? kiln_slice(ctx, c->in_b, 0, 2 * E, 3 * E, 1) : NULL;
        qp = project(ctx, q, c->q_w, bq, 0, E, true);
        kp = project(ctx, k, c->k_w, bk, 0, E, true);
        vp = project(ctx, v, c->v_w, bv, 0, E, true);
    }
    kiln_tensor *qh = split_heads(ctx, qp, c->H, bf), *kh = split_heads(ctx, kp, c->H, bf),
                *vh = split_heads(ctx, vp, c->H, bf);
    if (!qh || !kh || !vh) return kiln_error_status(ctx);
    kiln_sdpa_opts o = kiln_sdpa_defaults();
    o.impl = c->p.impl;
    o.is_causal = causal_only;
    o.dropout_p = m->training ? c->p.dropout : 0.0f;
    kiln_tensor *att = kiln_scaled_dot_product_attention(ctx, qh, kh, vh, mask, &o);
    if (!att) return kiln_error_status(ctx);
    /* [B, H, L, hd] -> [L, B, H, hd] (or [B, L, H, hd]) -> [L, B, E] */
    kiln_tensor *merged = kiln_permute(ctx, att, bf ? (const int[]){0, 2, 1, 3} : (const int[]){2, 0, 1, 3});
    merged = kiln_reshape(ctx, merged, 3, bf ? (int64_t[]){B, L, E} : (int64_t[]){L, B, E});
    if (!merged || !(out[0] = kiln_forward(c->out_proj, merged))) return kiln_error_status(ctx);
    if (c->need_weights) {
        /* torch's averaged weights: softmax(scale q k^T + mask) over the heads, [B, L, S] */
        kiln_tensor *sc =
            kiln_mul_scalar(ctx, kiln_matmul_ex(ctx, qh, kh, KILN_TRANS_B), (float)(1.0 / sqrt((double)(E / c->H))));
        if (causal_only) {
            kiln_tensor *cm = causal_mask(ctx, L, S);
            sc = cm ? kiln_add(ctx, sc, cm) : NULL;
        }
        if (mask) sc = kiln_add(ctx, sc, mask);
        kiln_tensor *w = kiln_mean(ctx, kiln_softmax(ctx, sc, -1), 1, (const int[]){1}, false);
        if (!w) return kiln_error_status(ctx);
        c->weights = w;
    }
    return KILN_OK;
}

static void mha_args(const kiln_module *m, char *buf, size_t cap) {
    const mha_cfg *c = m->data;
    int n = snprintf(buf, cap, "embed_dim=%" PRId64 ", num_heads=%" PRId64, c->E, c->H);
    if (n >= 0 && (size_t)n < cap && (c->kdim != c->E || c->vdim != c->E))
        n += snprintf(buf + n, cap - (size_t)n, ", kdim=%" PRId64 ", vdim=%" PRId64, c->kdim, c->vdim);
    if (n >= 0 && (size_t)n < cap && c->p.batch_first) snprintf(buf + n, cap - (size_t)n, ", batch_first=True");
}

static const kiln_module_def mha_def = {.kind = "MultiheadAttention",
                                        .state_size = sizeof(mha_cfg),
                                        .forward = mha_forward,
                                        .num_inputs = 3,
                                        .num_outputs = 1,
                                        .describe = mha_args};

static bool is_kind(const kiln_module *m, const kiln_module_def *def) {
    return m && m->def.forward == def->forward && strcmp(m->kind, def->kind) == 0;
}

/* xavier_uniform_ of [rows, cols] */
static kiln_tensor *xavier(kiln_ctx *ctx, int64_t rows, int64_t cols) {
    float b = (float)sqrt(6.0 / (double)(rows + cols));
    return kiln_rand_uniform(ctx, -b, b, 2, (int64_t[]){rows, cols});
}

kiln_module *kiln_nn_multihead_attention(kiln_ctx *ctx, int64_t embed_dim, int64_t num_heads,
                                         const kiln_mha_params *p) {
    if (!ctx) return kiln__fail(NULL, KILN_ERR_NULL, "kiln_nn_multihead_attention: ctx is NULL"), NULL;
    kiln_mha_params pp = p ? *p : kiln_mha_defaults();
    int64_t kdim = pp.kdim ? pp.kdim : embed_dim, vdim = pp.vdim ? pp.vdim : embed_dim;
    if (embed_dim <= 0 || num_heads <= 0 || embed_dim % num_heads != 0 || kdim < 0 || vdim < 0 ||
        !(pp.dropout >= 0 && pp.dropout <= 1)) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "MultiheadAttention: embed_dim=%" PRId64 ", num_heads=%" PRId64 ", kdim=%" PRId64 ", vdim=%" PRId64
                   ", dropout=%g: embed_dim must be divisible by num_heads (both > 0), dropout in [0, 1]",
                   embed_dim, num_heads, kdim, vdim, (double)pp.dropout);
        return NULL;
    }
    kiln_module *m = kiln_module_new(ctx, &mha_def);
    if (!m) return NULL;
    mha_cfg *c = m->data;
    c->E = embed_dim, c->H = num_heads, c->kdim = kdim, c->vdim = vdim, c->p = pp;
    int64_t E = embed_dim;
    if (kdim == E && vdim == E) {
        if (!(c->in_w = add_param(m, "in_proj_weight", xavier(ctx, 3 * E, E)))) return fail_free(m);
    } else if (!(c->q_w = add_param(m, "q_proj_weight", xavier(ctx, E, E))) ||
               !(c->k_w = add_param(m, "k_proj_weight", xavier(ctx, E, kdim))) ||
               !(c->v_w = add_param(m, "v_proj_weight", xavier(ctx, E, vdim))))
        return fail_free(m);
    if (pp.bias && !(c->in_b = add_param(m, "in_proj_bias", kiln_zeros(ctx, 1, (int64_t[]){3 * E}))))
        return fail_free(m);
    if (kiln_module_add_child(m, "out_proj", c->out_proj = kiln_nn_linear(ctx, E, E, pp.bias)) != KILN_OK)
        return fail_free(m);
    kiln_tensor *ob = add_child_param(c->out_proj, "bias");
    if (ob && kiln_fill(ob, 0.0f) != KILN_OK) return fail_free(m);
    return m;
}

kiln_status kiln_nn_mha_forward(kiln_module *m, kiln_tensor *query, kiln_tensor *key, kiln_tensor *value,
                                const kiln_attn_masks *masks, bool need_weights, kiln_tensor **out,
                                kiln_tensor **weights) {
    if (out) *out = NULL;
    if (weights) *weights = NULL;
    if (!m) return kiln__fail(NULL, KILN_ERR_NULL, "kiln_nn_mha_forward: module is NULL");
    if (!is_kind(m, &mha_def))
        return kiln__fail(m->ctx, KILN_ERR_INVALID_ARGUMENT,
                          "kiln_nn_mha_forward: module is a %s, not a MultiheadAttention", m->kind);
    if (!out) return kiln__fail(m->ctx, KILN_ERR_NULL, "kiln_nn_mha_forward: out is NULL");
    if (need_weights && !weights)
        return kiln__fail(m->ctx, KILN_ERR_NULL, "kiln_nn_mha_forward: need_weights without a weights pointer");
    mha_cfg *c = m->data;
    c->masks = masks, c->need_weights = need_weights, c->weights = NULL;
    kiln_status s = kiln_module_forward(m, 3, (kiln_tensor *[]){query, key, value}, 1, out);
    if (s == KILN_OK && need_weights) *weights = c->weights;
    c->masks = NULL, c->need_weights = false, c->weights = NULL;
    return s;
}

/* ---- Transformer layers ----------------------------------------------------------------- */

kiln_transformer_params kiln_transformer_defaults(int64_t d_model, int64_t nhead) {
    return (kiln_transformer_params){.d_model = d_model,
                                     .nhead = nhead,
                                     .dim_feedforward = 2048,
                                     .dropout = 0.1f,
                                     .activation = KILN_ACT_RELU,
                                     .layer_norm_eps = 1e-5f,
                                     .batch_first = false,
                                     .norm_first = false,
                                     .impl = KILN_SDPA_FUSED};
}

typedef struct layer_cfg {
    kiln_transformer_params p;
    bool decoder;
    kiln_module *self_attn, *mh_attn, *linear1, *linear2, *norm[3];
    const kiln_attn_masks *masks, *mem_masks; /* one call's, set by the *_forward functions */
} layer_cfg;

static kiln_tensor *drop(kiln_module *m, kiln_tensor *x) {
    const layer_cfg *c = m->data;
    return kiln_dropout(m->ctx, x, c->p.dropout, m->training);
}

static kiln_tensor *attn_block(kiln_module *m, kiln_module *attn, kiln_tensor *x, kiln_tensor *mem,
                               const kiln_attn_masks *mk) {
    if (!x || !mem) return NULL;
    kiln_tensor *y = NULL;
    if (kiln_nn_mha_forward(attn, x, mem, mem, mk, false, &y, NULL) != KILN_OK) return NULL;
    return drop(m, y);
}

static kiln_tensor *ff_block(kiln_module *m, kiln_tensor *x) {
    const layer_cfg *c = m->data;
    kiln_ctx *ctx = m->ctx;
    kiln_tensor *h = kiln_forward(c->linear1, x);
    h = c->p.activation == KILN_ACT_GELU ? kiln_gelu(ctx, h, false) : kiln_relu(ctx, h);
    return drop(m, kiln_forward(c->linear2, drop(m, h)));
}

static kiln_status layer_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nout;
    layer_cfg *c = m->data;
    kiln_ctx *ctx = m->ctx;
    kiln_tensor *x = in[0], *mem = c->decoder ? in[1] : NULL;
    (void)nin;
    if (c->p.norm_first) {
        kiln_tensor *h = kiln_forward(c->norm[0], x);
        x = kiln_add(ctx, x, attn_block(m, c->self_attn, h, h, c->masks));
        if (c->decoder) x = kiln_add(ctx, x, attn_block(m, c->mh_attn, kiln_forward(c->norm[1], x), mem, c->mem_masks));
        x = kiln_add(ctx, x, ff_block(m, kiln_forward(c->norm[c->decoder ? 2 : 1], x)));
    } else {
        x = kiln_forward(c->norm[0], kiln_add(ctx, x, attn_block(m, c->self_attn, x, x, c->masks)));
        if (c->decoder) x = kiln_forward(c->norm[1], kiln_add(ctx, x, attn_block(m, c->mh_attn, x, mem, c->mem_masks)));
        x = x ? kiln_forward(c->norm[c->decoder ? 2 : 1], kiln_add(ctx, x, ff_block(m, x))) : NULL;
    }
    out[0] = x;
    return x ? KILN_OK : kiln_error_status(ctx);
}

static void layer_args(const kiln_module *m, char *buf, size_t cap) {
    const layer_cfg *c = m->data;
    snprintf(buf, cap,
             "d_model=%" PRId64 ", nhead=%" PRId64 ", dim_feedforward=%" PRId64
             ", dropout=%g, activation=%s, batch_first=%s, norm_first=%s",
             c->p.d_model, c->p.nhead, c->p.dim_feedforward, (double)c->p.dropout,
             c->p.activation == KILN_ACT_GELU ? "gelu" : "relu", PY_BOOL(c->p.batch_first), PY_BOOL(c->p.norm_first));
}

static const kiln_module_def enc_layer_def = {.kind = "TransformerEncoderLayer",
                                              .state_size = sizeof(layer_cfg),
                                              .forward = layer_forward,
                                              .num_inputs = 1,
                                              .num_outputs = 1,
                                              .describe = layer_args};
static const kiln_module_def dec_layer_def = {.kind = "TransformerDecoderLayer",
                                              .state_size = sizeof(layer_cfg),
                                              .forward = layer_forward,
                                              .num_inputs = 2,
                                              .num_outputs = 1,
                                              .describe = layer_args};

static bool check_tparams(kiln_ctx *ctx, const char *kind, const kiln_transformer_params *p) {
    bool ok = p->d_model > 0 && p->nhead > 0 && p->d_model % p->nhead == 0 && p->dim_feedforward > 0 &&
              p->dropout >= 0 && p->dropout <= 1 && p->layer_norm_eps >= 0 &&
              (p->activation == KILN_ACT_RELU || p->activation == KILN_ACT_GELU);
    if (!ok)
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s: d_model=%" PRId64 ", nhead=%" PRId64 ", dim_feedforward=%" PRId64
                   ", dropout=%g, layer_norm_eps=%g: d_model must be divisible by nhead (all > 0), dropout in [0, 1], "
                   "activation relu or gelu",
                   kind, p->d_model, p->nhead, p->dim_feedforward, (double)p->dropout, (double)p->layer_norm_eps);
    return ok;
}

static kiln_module *layer_new(kiln_ctx *ctx, const kiln_transformer_params *p, bool decoder) {
    const char *kind = decoder ? "TransformerDecoderLayer" : "TransformerEncoderLayer";
    if (!ctx) return kiln__fail(NULL, KILN_ERR_NULL, "%s: ctx is NULL", kind), NULL;
    if (!p) return kiln__fail(ctx, KILN_ERR_NULL, "%s: params are NULL (kiln_transformer_defaults)", kind), NULL;
    if (!check_tparams(ctx, kind, p)) return NULL;
    kiln_module *m = kiln_module_new(ctx, decoder ? &dec_layer_def : &enc_layer_def);
    if (!m) return NULL;
    layer_cfg *c = m->data;
    c->p = *p, c->decoder = decoder;
    kiln_mha_params mp = kiln_mha_defaults();
    mp.dropout = p->dropout, mp.batch_first = p->batch_first, mp.impl = p->impl;
    int64_t d = p->d_model;
    static const char *const norms[3] = {"norm1", "norm2", "norm3"};
    if (kiln_module_add_child(m, "self_attn", c->self_attn = kiln_nn_multihead_attention(ctx, d, p->nhead, &mp)) !=
        KILN_OK)
        return fail_free(m);
    if (decoder && kiln_module_add_child(m, "multihead_attn",
                                         c->mh_attn = kiln_nn_multihead_attention(ctx, d, p->nhead, &mp)) != KILN_OK)
        return fail_free(m);
    if (kiln_module_add_child(m, "linear1", c->linear1 = kiln_nn_linear(ctx, d, p->dim_feedforward, true)) != KILN_OK ||
        kiln_module_add_child(m, "linear2", c->linear2 = kiln_nn_linear(ctx, p->dim_feedforward, d, true)) != KILN_OK)
        return fail_free(m);
    for (int i = 0; i < (decoder ? 3 : 2); i++)
        if (kiln_module_add_child(m, norms[i], c->norm[i] = kiln_nn_layernorm(ctx, 1, &d, p->layer_norm_eps, true)) !=
            KILN_OK)
            return fail_free(m);
    return m;
}

kiln_module *kiln_nn_transformer_encoder_layer(kiln_ctx *ctx, const kiln_transformer_params *p) {
    return layer_new(ctx, p, false);
}

kiln_module *kiln_nn_transformer_decoder_layer(kiln_ctx *ctx, const kiln_transformer_params *p) {
    return layer_new(ctx, p, true);
}

/* ---- stacks ----------------------------------------------------------------------------- */

typedef struct stack_cfg {
    bool decoder;
    int num_layers;
    kiln_module *layers, *norm; /* norm NULL without */
    const kiln_attn_masks *masks, *mem_masks;
} stack_cfg;

static kiln_status run_layer(kiln_module *layer, kiln_tensor *x, kiln_tensor *mem, const kiln_attn_masks *mk,
                             const kiln_attn_masks *mem_mk, kiln_tensor **out) {
    layer_cfg *c = layer->data;
    c->masks = mk, c->mem_masks = mem_mk;
    kiln_status s = kiln_module_forward(layer, mem ? 2 : 1, (kiln_tensor *[]){x, mem}, 1, out);
    c->masks = c->mem_masks = NULL;
    return s;
}

static kiln_status stack_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nin, (void)nout;
    stack_cfg *c = m->data;
    kiln_tensor *x = in[0];
    for (int i = 0; i < c->num_layers; i++) {
        kiln_tensor *y = NULL;
        kiln_status s =
            run_layer(kiln_module_child(c->layers, i), x, c->decoder ? in[1] : NULL, c->masks, c->mem_masks, &y);
        if (s != KILN_OK) return s;
        x = y;
    }
    if (c->norm) x = kiln_forward(c->norm, x);
    out[0] = x;
    return x ? KILN_OK : kiln_error_status(m->ctx);
}

static void stack_args(const kiln_module *m, char *buf, size_t cap) {
    const stack_cfg *c = m->data;
    snprintf(buf, cap, "num_layers=%d, norm=%s", c->num_layers, c->norm ? "LayerNorm" : "None");
}

static const kiln_module_def enc_def = {.kind = "TransformerEncoder",
                                        .state_size = sizeof(stack_cfg),
                                        .forward = stack_forward,
                                        .num_inputs = 1,
                                        .num_outputs = 1,
                                        .describe = stack_args};
static const kiln_module_def dec_def = {.kind = "TransformerDecoder",
                                        .state_size = sizeof(stack_cfg),
                                        .forward = stack_forward,
                                        .num_inputs = 2,
                                        .num_outputs = 1,
                                        .describe = stack_args};

static kiln_module *stack_new(kiln_ctx *ctx, const kiln_transformer_params *p, int num_layers, bool final_norm,
                              bool decoder) {
    const char *kind = decoder ? "TransformerDecoder" : "TransformerEncoder";
    if (!ctx) return kiln__fail(NULL, KILN_ERR_NULL, "%s: ctx is NULL", kind), NULL;
    if (!p) return kiln__fail(ctx, KILN_ERR_NULL, "%s: params are NULL (kiln_transformer_defaults)", kind), NULL;
    if (num_layers < 1) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: num_layers=%d (must be >= 1)", kind, num_layers);
        return NULL;
    }
    if (!check_tparams(ctx, kind, p)) return NULL;
    kiln_module *m = kiln_module_new(ctx, decoder ? &dec_def : &enc_def);
    if (!m) return NULL;
    stack_cfg *c = m->data;
    c->decoder = decoder, c->num_layers = num_layers;
    if (kiln_module_add_child(m, "layers", c->layers = kiln_nn_module_list(ctx, 0, NULL)) != KILN_OK)
        return fail_free(m);
    for (int i = 0; i < num_layers; i++)
        if (kiln_nn_module_list_append(c->layers, layer_new(ctx, p, decoder)) != KILN_OK) return fail_free(m);
    int64_t d = p->d_model;
    if (final_norm &&
        kiln_module_add_child(m, "norm", c->norm = kiln_nn_layernorm(ctx, 1, &d, p->layer_norm_eps, true)) != KILN_OK)
        return fail_free(m);
    return m;
}

kiln_module *kiln_nn_transformer_encoder(kiln_ctx *ctx, const kiln_transformer_params *p, int num_layers,
                                         bool final_norm) {
    return stack_new(ctx, p, num_layers, final_norm, false);
}

kiln_module *kiln_nn_transformer_decoder(kiln_ctx *ctx, const kiln_transformer_params *p, int num_layers,
                                         bool final_norm) {
    return stack_new(ctx, p, num_layers, final_norm, true);
}

static bool is_encoder(const kiln_module *m) { return is_kind(m, &enc_layer_def) || is_kind(m, &enc_def); }
static bool is_decoder(const kiln_module *m) { return is_kind(m, &dec_layer_def) || is_kind(m, &dec_def); }

static kiln_tensor *run_with_masks(kiln_module *m, kiln_tensor *x, kiln_tensor *mem, const kiln_attn_masks *mk,
                                   const kiln_attn_masks *mem_mk) {
    kiln_tensor *y = NULL;
    if (is_kind(m, &enc_layer_def) || is_kind(m, &dec_layer_def)) {
        run_layer(m, x, mem, mk, mem_mk, &y);
        return y;
    }
    stack_cfg *c = m->data;
    c->masks = mk, c->mem_masks = mem_mk;
    kiln_module_forward(m, mem ? 2 : 1, (kiln_tensor *[]){x, mem}, 1, &y);
    c->masks = c->mem_masks = NULL;
    return y;
}

kiln_tensor *kiln_nn_encoder_forward(kiln_module *m, kiln_tensor *src, const kiln_attn_masks *src_masks) {
    if (!m) return kiln__fail(NULL, KILN_ERR_NULL, "kiln_nn_encoder_forward: module is NULL"), NULL;
    if (!is_encoder(m)) {
        kiln__fail(m->ctx, KILN_ERR_INVALID_ARGUMENT,
                   "kiln_nn_encoder_forward: module is a %s, not a TransformerEncoderLayer or TransformerEncoder",
                   m->kind);
        return NULL;
    }
    return run_with_masks(m, src, NULL, src_masks, NULL);
}

kiln_tensor *kiln_nn_decoder_forward(kiln_module *m, kiln_tensor *tgt, kiln_tensor *memory,
                                     const kiln_attn_masks *tgt_masks, const kiln_attn_masks *memory_masks) {
    if (!m) return kiln__fail(NULL, KILN_ERR_NULL, "kiln_nn_decoder_forward: module is NULL"), NULL;
    if (!is_decoder(m)) {
        kiln__fail(m->ctx, KILN_ERR_INVALID_ARGUMENT,
                   "kiln_nn_decoder_forward: module is a %s, not a TransformerDecoderLayer or TransformerDecoder",
                   m->kind);
        return NULL;
    }
    if (!memory) return kiln__fail(m->ctx, KILN_ERR_NULL, "kiln_nn_decoder_forward: memory is NULL"), NULL;
    return run_with_masks(m, tgt, memory, tgt_masks, memory_masks);
}

/* ---- positional embeddings -------------------------------------------------------------- */

/* ---- configuration, for the ONNX exporter ------------------------------------------------- */

bool kiln__mha_config_of(const kiln_module *m, int64_t *embed_dim, int64_t *num_heads, kiln_mha_params *p,
                         bool *packed) {
    if (!m || m->def.forward != mha_forward) return false;
    const mha_cfg *c = m->data;
    *embed_dim = c->E, *num_heads = c->H, *p = c->p, *packed = c->in_w != NULL;
    return true;
}

bool kiln__encoder_config_of(const kiln_module *m, kiln_transformer_params *p, int *num_layers, bool *final_norm) {
    if (!m) return false;
    if (m->def.forward == layer_forward && !((const layer_cfg *)m->data)->decoder) {
        *p = ((const layer_cfg *)m->data)->p, *num_layers = 0, *final_norm = false;
        return true;
    }
    if (m->def.forward == stack_forward && !((const stack_cfg *)m->data)->decoder) {
        const stack_cfg *c = m->data;
        kiln_module *first = kiln_module_child(c->layers, 0);
        if (!first) return false;
        *p = ((const layer_cfg *)first->data)->p, *num_layers = c->num_layers, *final_norm = c->norm != NULL;
        return true;
    }
    return false;
}

bool kiln__decoder_config_of(const kiln_module *m, kiln_transformer_params *p, int *num_layers, bool *final_norm) {
    if (!m) return false;
    if (m->def.forward == layer_forward && ((const layer_cfg *)m->data)->decoder) {
        *p = ((const layer_cfg *)m->data)->p, *num_layers = 0, *final_norm = false;
        return true;
    }
    if (m->def.forward == stack_forward && ((const stack_cfg *)m->data)->decoder) {
        const stack_cfg *c = m->data;
        kiln_module *first = kiln_module_child(c->layers, 0);
        if (!first) return false;
        *p = ((const layer_cfg *)first->data)->p, *num_layers = c->num_layers, *final_norm = c->norm != NULL;
        return true;
    }
    return false;
}

typedef struct pos_cfg {
    int64_t max_len, dim;
    bool batch_first, learned;
    kiln_tensor *table; /* [max_len, dim]: parameter "weight" or buffer "pe" */
} pos_cfg;

static kiln_status pos_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nin, (void)nout;
    const pos_cfg *c = m->data;
    kiln_tensor *x = in[0];
    char s[96];
    if (x->ndim != 3 || x->shape[2] != c->dim)
        return kiln__fail(m->ctx, KILN_ERR_SHAPE, "%s: input %s must be 3-D %s with %" PRId64 " features", m->kind,
                          kiln__shape_str(x->ndim, x->shape, s, sizeof s),
                          c->batch_first ? "[batch, seq, features]" : "[seq, batch, features]", c->dim);
    int64_t T = x->shape[c->batch_first ? 1 : 0];
    if (T > c->max_len)
        return kiln__fail(m->ctx, KILN_ERR_SHAPE,
                          "%s: input %s has a sequence of %" PRId64 " positions, longer than the table's %" PRId64,
                          m->kind, kiln__shape_str(x->ndim, x->shape, s, sizeof s), T, c->max_len);
    kiln_tensor *pe = kiln_slice(m->ctx, c->table, 0, 0, T, 1);
    if (!c->batch_first) pe = kiln_unsqueeze(m->ctx, pe, 1); /* [T, 1, D] */
    out[0] = kiln_add(m->ctx, x, pe);
    return out[0] ? KILN_OK : kiln_error_status(m->ctx);
}

static void pos_args(const kiln_module *m, char *buf, size_t cap) {
    const pos_cfg *c = m->data;
    snprintf(buf, cap, "%" PRId64 ", %" PRId64 "%s", c->max_len, c->dim, c->batch_first ? ", batch_first=True" : "");
}

static const kiln_module_def learned_def = {.kind = "PositionalEmbedding",
                                            .state_size = sizeof(pos_cfg),
                                            .forward = pos_forward,
                                            .num_inputs = 1,
                                            .num_outputs = 1,
                                            .describe = pos_args};
static const kiln_module_def sin_def = {.kind = "SinusoidalPositionalEncoding",
                                        .state_size = sizeof(pos_cfg),
                                        .forward = pos_forward,
                                        .num_inputs = 1,
                                        .num_outputs = 1,
                                        .describe = pos_args};

static kiln_module *pos_new(kiln_ctx *ctx, int64_t max_len, int64_t dim, bool batch_first, bool learned) {
    const char *kind = learned ? "PositionalEmbedding" : "SinusoidalPositionalEncoding";
    if (!ctx) return kiln__fail(NULL, KILN_ERR_NULL, "%s: ctx is NULL", kind), NULL;
    if (max_len <= 0 || dim <= 0 || (!learned && dim % 2)) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: max_len=%" PRId64 ", dim=%" PRId64 " (both > 0%s)", kind,
                   max_len, dim, learned ? "" : ", dim even");
        return NULL;
    }
    kiln_module *m = kiln_module_new(ctx, learned ? &learned_def : &sin_def);
    if (!m) return NULL;
    pos_cfg *c = m->data;
    c->max_len = max_len, c->dim = dim, c->batch_first = batch_first, c->learned = learned;
    int64_t shape[2] = {max_len, dim};
    if (learned) {
        /* nn.Embedding's N(0, 1) */
        if (!(c->table = add_param(m, "weight", kiln_rand_normal(ctx, 0.0f, 1.0f, 2, shape)))) return fail_free(m);
        return m;
    }
    float *f = malloc(sizeof(float) * (size_t)(max_len * dim));
    if (!f) {
        kiln__fail(ctx, KILN_ERR_OUT_OF_MEMORY, "%s: out of host memory for a [%" PRId64 ", %" PRId64 "] table", kind,
                   max_len, dim);
        return fail_free(m);
    }
    /* pe[pos, 2i] = sin(pos / 10000^(2i/dim)), pe[pos, 2i+1] = cos(...) (Vaswani et al.; the
     * PyTorch tutorial's div_term = exp(2i * -ln(10000) / dim)) */
    for (int64_t pos = 0; pos < max_len; pos++)
        for (int64_t i = 0; i < dim; i += 2) {
            double a = (double)pos * exp((double)i * (-log(10000.0) / (double)dim));
            f[pos * dim + i] = (float)sin(a);
            f[pos * dim + i + 1] = (float)cos(a);
        }
    kiln_tensor *t = kiln_from_host(ctx, f, KILN_F32, 2, shape);
    free(f);
    if (kiln_module_add_buffer(m, "pe", t) != KILN_OK) return fail_free(m);
    c->table = t;
    return m;
}

kiln_module *kiln_nn_positional_embedding(kiln_ctx *ctx, int64_t max_len, int64_t dim, bool batch_first) {
    return pos_new(ctx, max_len, dim, batch_first, true);
}

kiln_module *kiln_nn_sinusoidal_encoding(kiln_ctx *ctx, int64_t max_len, int64_t dim, bool batch_first) {
    return pos_new(ctx, max_len, dim, batch_first, false);
}

bool kiln__pos_config_of(const kiln_module *m, bool *learned, bool *batch_first) {
    if (!m || m->def.forward != pos_forward) return false;
    const pos_cfg *c = m->data;
    *learned = c->learned, *batch_first = c->batch_first;
    return true;
}

/* ---- the output projection tied to an embedding ---------------------------------------- */

typedef struct tied_cfg {
    kiln_tensor *weight; /* the embedding's [V, D], not ours */
    kiln_tensor *bias;   /* ours: [V], or NULL */
} tied_cfg;

static kiln_status tied_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nin, (void)nout;
    const tied_cfg *c = m->data;
    kiln_tensor *x = in[0];
    int64_t D = c->weight->shape[1];
    if (x->ndim < 1 || x->shape[x->ndim - 1] != D) {
        char s[96];
        return kiln__fail(m->ctx, KILN_ERR_SHAPE, "%s: input %s must end in the embedding's %" PRId64 " features",
                          m->kind, kiln__shape_str(x->ndim, x->shape, s, sizeof s), D);
    }
    kiln_tensor *y = kiln_matmul_ex(m->ctx, x, c->weight, KILN_TRANS_B);
    out[0] = c->bias ? kiln_add(m->ctx, y, c->bias) : y;
    return out[0] ? KILN_OK : kiln_error_status(m->ctx);
}

static void tied_args(const kiln_module *m, char *buf, size_t cap) {
    const tied_cfg *c = m->data;
    snprintf(buf, cap, "in_features=%" PRId64 ", out_features=%" PRId64 ", bias=%s, tied", c->weight->shape[1],
             c->weight->shape[0], PY_BOOL(c->bias));
}

static const kiln_module_def tied_def = {.kind = "TiedLinear",
                                         .state_size = sizeof(tied_cfg),
                                         .forward = tied_forward,
                                         .num_inputs = 1,
                                         .num_outputs = 1,
                                         .describe = tied_args};

kiln_module *kiln_nn_tied_linear(kiln_ctx *ctx, kiln_module *embedding, bool bias) {
    if (!ctx) return kiln__fail(NULL, KILN_ERR_NULL, "kiln_nn_tied_linear: ctx is NULL"), NULL;
    kiln_tensor *w = embedding ? kiln_module_find(embedding, "weight") : NULL;
    if (!w || w->ndim != 2) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "kiln_nn_tied_linear: %s has no 2-D \"weight\" to tie to",
                   embedding ? embedding->kind : "a NULL module");
        return NULL;
    }
    kiln_module *m = kiln_module_new(ctx, &tied_def);
    if (!m) return NULL;
    tied_cfg *c = m->data;
    c->weight = w;
    if (bias && !(c->bias = add_param(m, "bias", kiln_zeros(ctx, 1, (int64_t[]){w->shape[0]})))) return fail_free(m);
    return m;
}

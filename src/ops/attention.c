/* src/ops/attention.c - scaled dot-product attention as torch.nn.functional's, with its
 * backward (kernels in cl_kernels/attention.cl).
 *
 * The fused path runs one kernel forward: a work-group per block of ATT_BM query rows
 * walks the keys in tiles of ATT_BN with an online softmax, so the L x S weights never
 * exist in device memory; it keeps the output and one log-sum-exp per query row. The
 * backward computes D = rowsum(dO * O) in a pre-pass, then dQ with a kernel parallel over
 * query blocks and dK, dV with one parallel over key blocks, each recomputing the score
 * tiles from q, k and the log-sum-exp; every gradient element is summed by one work-item
 * (no atomics), so results are deterministic. Device memory is O(B (L + S) E): the pool
 * statistics of tests/test_attention.c show it.
 *
 * Batch dims of query, key and value broadcast together (as torch's matmul-based
 * definition); the mask broadcasts to [batch..., L, S]. The kernels address every
 * operand through its strides over the batch dims and two more, so views, transposed
 * heads and broadcasts are read in place. Gradients are computed at the
 * broadcast batch shape and summed down by kiln__accum.
 *
 * The composed path (opts->impl = KILN_SDPA_COMPOSED) is matmul, softmax, dropout and
 * matmul through kiln's ops: the reference the tests compare the fused path against, and
 * the path for head dims whose tiles do not fit the device's local memory.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_internal.h"

#define ATT_PROGRAM "attention"
static const char op_name[] = "kiln_scaled_dot_product_attention";

/* Build options of attention.cl. ATT_BM, ATT_BN: tile sizes. On CPUs POCL runs a
 * work-group as a loop over its work-items on one core; 32 query rows per group and 32-key
 * tiles were the fastest of the sizes from 8 to 64 timed on POCL (L = S = 512, E = 64,
 * forward and backward). ATT_VW: the float vector width rows are held in, up to 16 on
 * CPUs (of 4, 8 and 16, 16 timed fastest on AVX-512). ATT_KB: keys per work-item of the
 * dK/dV kernel, so that each query vector read from local memory serves two keys (1, 2
 * and 4 timed alike within the noise of a shared machine; two query rows per work-item in
 * the dQ kernel timed slower). The GPU sizes are untimed: wider groups, as GPUs want. */
#define ATT_BM_CPU 32
#define ATT_BN_CPU 32
#define ATT_VW_MAX_CPU 16
#define ATT_KB 2
#define ATT_BM_GPU 64
#define ATT_BN_GPU 64

typedef enum { MASK_NONE = 0, MASK_BOOL = 1, MASK_FLOAT = 2 } mask_kind;

/* The shapes of one call, after broadcasting. */
typedef struct sdpa_geom {
    int nb;                        /* batch dims */
    int64_t bshape[KILN_MAX_DIMS]; /* broadcast batch shape */
    int64_t B, L, S, E, EV;        /* B = product of bshape */
    cl_int qrs, qcs, krs, kcs, vrs, vcs, mrs, mcs;
    /* the kernels' batch addressing (ATT_OPERANDS of attention.cl): the batch shape padded
     * in front with 1s to 8 dims, each operand's strides over it, their offsets */
    cl_int8 bsh, qbs, kbs, vbs, mbs;
    cl_int4 base;
} sdpa_geom;

typedef struct sdpa_state {
    sdpa_geom g;
    int bm, bn, vw, kb, mask, causal, drop;
    float scale, p, dscale;
    cl_uint key0, key1, ctr_lo, ctr_hi;
} sdpa_state;

/* ---- checks ---------------------------------------------------------------------------- */

static void shapes_str(kiln_tensor *q, kiln_tensor *k, kiln_tensor *v, kiln_tensor *m, char *buf, size_t cap) {
    char a[160], b[160], c[160], d[160];
    int n = snprintf(buf, cap, "query %s, key %s, value %s", kiln__shape_str(q->ndim, q->shape, a, sizeof a),
                     kiln__shape_str(k->ndim, k->shape, b, sizeof b), kiln__shape_str(v->ndim, v->shape, c, sizeof c));
    if (m && n > 0 && (size_t)n < cap)
        snprintf(buf + n, cap - (size_t)n, ", attn_mask %s", kiln__shape_str(m->ndim, m->shape, d, sizeof d));
}

/* Size of dim d (counted from the end, d = 1 the last) of t, 1 where t has fewer dims. */
static int64_t dim_from_end(const kiln_tensor *t, int d) { return d <= t->ndim ? t->shape[t->ndim - d] : 1; }
static int64_t stride_from_end(const kiln_tensor *t, int d) {
    return d <= t->ndim && t->shape[t->ndim - d] != 1 ? t->strides[t->ndim - d] : 0;
}

static bool sdpa_check(kiln_ctx *ctx, kiln_tensor *q, kiln_tensor *k, kiln_tensor *v, kiln_tensor *m,
                       const kiln_sdpa_opts *o, sdpa_geom *g, float *scale) {
    char sh[800];
    shapes_str(q, k, v, m, sh, sizeof sh);
    kiln_tensor *qkv[3] = {q, k, v};
    static const char *const names[3] = {"query", "key", "value"};
    for (int t = 0; t < 3; t++) {
        if (qkv[t]->dtype != KILN_F32) {
            kiln__fail(ctx, KILN_ERR_DTYPE, "%s: %s has dtype %s; only f32 is supported (%s)", op_name, names[t],
                       kiln_dtype_name(qkv[t]->dtype), sh);
            return false;
        }
        if (qkv[t]->ndim < 2) {
            kiln__fail(ctx, KILN_ERR_SHAPE, "%s: %s needs at least 2 dims [..., rows, features] (%s)", op_name,
                       names[t], sh);
            return false;
        }
    }
    if (m && m->dtype != KILN_U8 && m->dtype != KILN_F32) {
        kiln__fail(ctx, KILN_ERR_DTYPE, "%s: attn_mask has dtype %s; it must be u8 (boolean) or f32 (additive) (%s)",
                   op_name, kiln_dtype_name(m->dtype), sh);
        return false;
    }
    g->L = dim_from_end(q, 2), g->E = dim_from_end(q, 1);
    g->S = dim_from_end(k, 2), g->EV = dim_from_end(v, 1);
    if (dim_from_end(k, 1) != g->E) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: query and key differ in the last dim E (%lld vs %lld) (%s)", op_name,
                   (long long)g->E, (long long)dim_from_end(k, 1), sh);
        return false;
    }
    if (dim_from_end(v, 2) != g->S) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: key and value differ in the sequence dim S (%lld vs %lld) (%s)", op_name,
                   (long long)g->S, (long long)dim_from_end(v, 2), sh);
        return false;
    }
    if (g->E < 1 || g->EV < 1) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: the feature dims E and Ev must be >= 1 (%s)", op_name, sh);
        return false;
    }
    int nd = q->ndim > k->ndim ? q->ndim : k->ndim;
    if (v->ndim > nd) nd = v->ndim;
    g->nb = nd - 2;
    g->B = 1;
    for (int d = 0; d < g->nb; d++) {
        int fe = nd - d; /* from the end */
        int64_t s = 1;
        for (int t = 0; t < 3; t++) {
            int64_t ts = fe <= qkv[t]->ndim ? qkv[t]->shape[qkv[t]->ndim - fe] : 1;
            if (ts == 1) continue;
            if (s != 1 && s != ts) {
                kiln__fail(ctx, KILN_ERR_SHAPE, "%s: the batch dims of query, key and value do not broadcast (%s)",
                           op_name, sh);
                return false;
            }
            s = ts;
        }
        g->bshape[d] = s;
        g->B *= s;
    }
    if (m) {
        bool ok = m->ndim <= nd;
        for (int fe = 1; ok && fe <= m->ndim; fe++) {
            int64_t want = fe == 1 ? g->S : fe == 2 ? g->L : g->bshape[nd - fe];
            int64_t ms = m->shape[m->ndim - fe];
            ok = ms == 1 || ms == want;
        }
        if (!ok) {
            char tb[160];
            int64_t full[KILN_MAX_DIMS];
            memcpy(full, g->bshape, sizeof(int64_t) * (size_t)g->nb);
            full[g->nb] = g->L, full[g->nb + 1] = g->S;
            kiln__fail(ctx, KILN_ERR_SHAPE, "%s: attn_mask does not broadcast to the weights' shape %s (%s)", op_name,
                       kiln__shape_str(nd, full, tb, sizeof tb), sh);
            return false;
        }
        if (o->is_causal) {
            kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                       "%s: attn_mask and is_causal are both set; torch forbids it: pass one (%s)", op_name, sh);
            return false;
        }
    }
    if (!(o->dropout_p >= 0.0f && o->dropout_p <= 1.0f)) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: dropout_p = %g is outside [0, 1] (%s)", op_name,
                   (double)o->dropout_p, sh);
        return false;
    }
    if (isinf(o->scale)) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s: scale = %g is not finite (NAN means 1/sqrt(E); see kiln_sdpa_defaults) (%s)", op_name,
                   (double)o->scale, sh);
        return false;
    }
    if (o->impl != KILN_SDPA_FUSED && o->impl != KILN_SDPA_COMPOSED) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s: impl = %d is neither KILN_SDPA_FUSED nor KILN_SDPA_COMPOSED (see kiln_sdpa_defaults) (%s)",
                   op_name, (int)o->impl, sh);
        return false;
    }
    *scale = isnan(o->scale) ? (float)(1.0 / sqrt((double)g->E)) : o->scale;
    g->qrs = (cl_int)stride_from_end(q, 2), g->qcs = (cl_int)stride_from_end(q, 1);
    g->krs = (cl_int)stride_from_end(k, 2), g->kcs = (cl_int)stride_from_end(k, 1);
    g->vrs = (cl_int)stride_from_end(v, 2), g->vcs = (cl_int)stride_from_end(v, 1);
    g->mrs = m ? (cl_int)stride_from_end(m, 2) : 0, g->mcs = m ? (cl_int)stride_from_end(m, 1) : 0;
    return true;
}

kiln_sdpa_opts kiln_sdpa_defaults(void) {
    return (kiln_sdpa_opts){.dropout_p = 0.0f, .is_causal = false, .scale = NAN, .impl = KILN_SDPA_FUSED};
}

/* ---- the fused path ---------------------------------------------------------------------- */

/* g's batch addressing of the four operands (the mask may be NULL). */
static void batch_addressing(sdpa_geom *g, kiln_tensor *const *ops4) {
    cl_int8 *st[4] = {&g->qbs, &g->kbs, &g->vbs, &g->mbs};
    int nd = g->nb + 2, pad = 8 - g->nb;
    for (int d = 0; d < 8; d++) {
        int bd = d - pad; /* batch dim, or < 0 in the padding */
        g->bsh.s[d] = bd >= 0 ? (cl_int)g->bshape[bd] : 1;
        for (int t = 0; t < 4; t++) st[t]->s[d] = bd >= 0 && ops4[t] ? (cl_int)stride_from_end(ops4[t], nd - bd) : 0;
    }
    for (int t = 0; t < 4; t++) g->base.s[t] = ops4[t] ? (cl_int)ops4[t]->offset : 0;
}

static void build_options(const sdpa_state *st, char *buf, size_t cap) {
    snprintf(buf, cap,
             "-DATT_E=%lld -DATT_EV=%lld -DATT_BM=%d -DATT_BN=%d -DATT_VW=%d -DATT_KB=%d -DATT_MASK=%d -DATT_CAUSAL=%d "
             "-DATT_DROP=%d",
             (long long)st->g.E, (long long)st->g.EV, st->bm, st->bn, st->vw, st->kb, st->mask, st->causal, st->drop);
}

/* Tile sizes and vector width for the device: the vector as wide as the rows up to
 * ATT_VW_MAX (4 on GPUs, whose work-items are scalar lanes), the tiles halved until both
 * kernels' tiles fit its local memory and work-group limit; false when even single rows do
 * not fit. */
static bool choose_tiles(const kiln_ctx *ctx, int64_t E, int64_t EV, int *bm, int *bn, int *vw) {
    bool cpu = ctx->info.type == KILN_DEVICE_CPU;
    *bm = cpu ? ATT_BM_CPU : ATT_BM_GPU;
    *bn = cpu ? ATT_BN_CPU : ATT_BN_GPU;
    int64_t wide = E > EV ? E : EV;
    for (*vw = 4; *vw < (cpu ? ATT_VW_MAX_CPU : 4) && 2 * *vw <= wide;) *vw *= 2;
    uint64_t lmem = ctx->info.local_mem_bytes, maxwg = ctx->info.max_work_group_size;
    /* rows are padded to whole vectors in local memory (attention.cl) */
    uint64_t w = (uint64_t)*vw, e4 = ((uint64_t)E + w - 1) / w * w + ((uint64_t)EV + w - 1) / w * w;
    for (;;) {
        uint64_t fwd = 4u * (uint64_t)*bn * e4, dkv = 4u * (uint64_t)*bm * (e4 + 2);
        bool fits = fwd <= lmem && dkv <= lmem && (uint64_t)*bm <= maxwg && (uint64_t)*bn <= maxwg;
        if (fits) return true;
        if (*bm == 1 && *bn == 1) return false;
        if (*bn >= *bm && *bn > 1)
            *bn /= 2;
        else
            *bm /= 2;
    }
}

/* The common kernel arguments (ATT_OPERANDS of attention.cl). */
typedef struct sdpa_args {
    cl_mem q, k, v, m;
    cl_int L, S;
    sdpa_geom g;
    sdpa_state st;
} sdpa_args;

static int fill_args(sdpa_args *a, kiln__karg *args) {
    int n = 0;
    args[n++] = KILN__ARG(a->q), args[n++] = KILN__ARG(a->k), args[n++] = KILN__ARG(a->v);
    args[n++] = KILN__ARG(a->m), args[n++] = KILN__ARG(a->g.bsh), args[n++] = KILN__ARG(a->g.qbs);
    args[n++] = KILN__ARG(a->g.kbs), args[n++] = KILN__ARG(a->g.vbs), args[n++] = KILN__ARG(a->g.mbs);
    args[n++] = KILN__ARG(a->g.base);
    args[n++] = KILN__ARG(a->L), args[n++] = KILN__ARG(a->S);
    args[n++] = KILN__ARG(a->g.qrs), args[n++] = KILN__ARG(a->g.qcs), args[n++] = KILN__ARG(a->g.krs);
    args[n++] = KILN__ARG(a->g.kcs), args[n++] = KILN__ARG(a->g.vrs), args[n++] = KILN__ARG(a->g.vcs);
    args[n++] = KILN__ARG(a->g.mrs), args[n++] = KILN__ARG(a->g.mcs);
    args[n++] = KILN__ARG(a->st.scale), args[n++] = KILN__ARG(a->st.p), args[n++] = KILN__ARG(a->st.dscale);
    args[n++] = KILN__ARG(a->st.key0), args[n++] = KILN__ARG(a->st.key1);
    args[n++] = KILN__ARG(a->st.ctr_lo), args[n++] = KILN__ARG(a->st.ctr_hi);
    return n;
}

static void args_init(sdpa_args *a, const sdpa_state *st, kiln_tensor *q, kiln_tensor *k, kiln_tensor *v,
                      kiln_tensor *m) {
    a->q = q->st->mem, a->k = k->st->mem, a->v = v->st->mem;
    a->m = m ? m->st->mem : q->st->mem; /* not read without a mask */
    a->L = (cl_int)st->g.L, a->S = (cl_int)st->g.S;
    a->g = st->g;
    a->st = *st;
}

static kiln_status sdpa_backward_fn(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout) {
    const sdpa_state *st = KILN__NODE_STATE(n, sdpa_state);
    if (!st) return ctx->err;
    kiln_tensor *q = n->in[0], *k = n->in[1], *v = n->in[2], *out = n->out;
    kiln_tensor *lse = n->saved[0], *m = n->nsaved > 1 ? n->saved[1] : NULL;
    const sdpa_geom *g = &st->g;
    bool need_q = kiln__input_needs_grad(n, 0), need_kv = kiln__input_needs_grad(n, 1) || kiln__input_needs_grad(n, 2);
    char opts[256];
    build_options(st, opts, sizeof opts);
    kiln_status s = KILN_OK;
    kiln_tensor *dd = NULL, *dq = NULL, *dk = NULL, *dv = NULL;
    int64_t rows = g->B * g->L, nd = g->nb + 2, shp[KILN_MAX_DIMS];
    memcpy(shp, g->bshape, sizeof(int64_t) * (size_t)g->nb);
    if (!(dd = kiln__tensor_new(ctx, op_name, KILN_F32, 1, &rows))) return ctx->err;
    cl_int dooff = (cl_int)gout->offset, ooff = (cl_int)out->offset, nrows = (cl_int)rows;
    if (rows > 0) {
        kiln__karg a[] = {KILN__ARG(gout->st->mem), KILN__ARG(dooff),       KILN__ARG(out->st->mem),
                          KILN__ARG(ooff),          KILN__ARG(dd->st->mem), KILN__ARG(nrows)};
        s = kiln__launch(ctx, op_name, ATT_PROGRAM, opts, "sdpa_backward_d", 6, a, (size_t)rows, 0);
        if (s != KILN_OK) goto done;
    }
    sdpa_args sa;
    args_init(&sa, st, q, k, v, m);
    kiln__karg args[40];
    int na = fill_args(&sa, args);
    if (need_q) {
        shp[nd - 2] = g->L, shp[nd - 1] = g->E;
        if (!(dq = kiln__tensor_new(ctx, op_name, KILN_F32, (int)nd, shp))) goto fail;
        if (rows > 0) {
            int c = na;
            args[c++] = KILN__ARG(gout->st->mem), args[c++] = KILN__ARG(dooff), args[c++] = KILN__ARG(lse->st->mem);
            args[c++] = KILN__ARG(dd->st->mem), args[c++] = KILN__ARG(dq->st->mem);
            size_t gl[2] = {(size_t)((g->L + st->bm - 1) / st->bm * st->bm), (size_t)g->B}, lo[2] = {(size_t)st->bm, 1};
            s = kiln__launch2(ctx, op_name, ATT_PROGRAM, opts, "sdpa_backward_dq", (size_t)c, args, gl, lo);
            if (s != KILN_OK) goto done;
        }
    }
    if (need_kv) {
        shp[nd - 2] = g->S, shp[nd - 1] = g->E;
        if (!(dk = kiln__tensor_new(ctx, op_name, KILN_F32, (int)nd, shp))) goto fail;
        shp[nd - 1] = g->EV;
        if (!(dv = kiln__tensor_new(ctx, op_name, KILN_F32, (int)nd, shp))) goto fail;
        if (g->B * g->S > 0) {
            int c = na;
            args[c++] = KILN__ARG(gout->st->mem), args[c++] = KILN__ARG(dooff), args[c++] = KILN__ARG(lse->st->mem);
            args[c++] = KILN__ARG(dd->st->mem), args[c++] = KILN__ARG(dk->st->mem), args[c++] = KILN__ARG(dv->st->mem);
            int64_t keys = (int64_t)st->bn * st->kb; /* per work-group */
            size_t gl[2] = {(size_t)((g->S + keys - 1) / keys * st->bn), (size_t)g->B}, lo[2] = {(size_t)st->bn, 1};
            s = kiln__launch2(ctx, op_name, ATT_PROGRAM, opts, "sdpa_backward_dkv", (size_t)c, args, gl, lo);
            if (s != KILN_OK) goto done;
        }
    }
    kiln_tensor_free(dd);
    /* each gradient is new: it becomes the input's gradient (or is summed down to a
     * broadcast input's shape) without a copy; kiln__accum_owned takes it either way */
    if (need_q) s = kiln__accum_owned(ctx, n, 0, dq);
    if (need_kv) {
        kiln_status sk = s == KILN_OK && kiln__input_needs_grad(n, 1) ? kiln__accum_owned(ctx, n, 1, dk) : KILN_OK;
        if (s != KILN_OK || !kiln__input_needs_grad(n, 1)) kiln_tensor_free(dk);
        kiln_status sv =
            s == KILN_OK && sk == KILN_OK && kiln__input_needs_grad(n, 2) ? kiln__accum_owned(ctx, n, 2, dv) : KILN_OK;
        if (s != KILN_OK || sk != KILN_OK || !kiln__input_needs_grad(n, 2)) kiln_tensor_free(dv);
        if (s == KILN_OK) s = sk != KILN_OK ? sk : sv;
    }
    return s;
fail:
    s = ctx->err;
done:
    kiln_tensor_free(dd);
    kiln_tensor_free(dq);
    kiln_tensor_free(dk);
    kiln_tensor_free(dv);
    return s;
}

static kiln_tensor *sdpa_fused(kiln_ctx *ctx, kiln_tensor *q, kiln_tensor *k, kiln_tensor *v, kiln_tensor *m,
                               const sdpa_geom *g, const kiln_sdpa_opts *o, float scale, int bm, int bn, int vw) {
    sdpa_state st = {.g = *g, .bm = bm, .bn = bn, .vw = vw, .kb = ATT_KB, .causal = o->is_causal, .scale = scale};
    st.mask = !m ? MASK_NONE : m->dtype == KILN_U8 ? MASK_BOOL : MASK_FLOAT;
    /* p == 1 drops every weight (output 0, as torch) and draws nothing, as kiln_dropout */
    st.drop = o->dropout_p > 0.0f;
    st.p = o->dropout_p;
    st.dscale = o->dropout_p >= 1.0f ? 0.0f : (float)(1.0 / (1.0 - (double)o->dropout_p));
    st.key0 = (cl_uint)ctx->seed, st.key1 = (cl_uint)(ctx->seed >> 32);
    st.ctr_lo = (cl_uint)ctx->rng_counter, st.ctr_hi = (cl_uint)(ctx->rng_counter >> 32);
    int64_t nd = g->nb + 2, shp[KILN_MAX_DIMS], rows = g->B * g->L;
    memcpy(shp, g->bshape, sizeof(int64_t) * (size_t)g->nb);
    shp[nd - 2] = g->L, shp[nd - 1] = g->EV;
    kiln_tensor *ops4[4] = {q, k, v, m};
    batch_addressing(&st.g, ops4);
    kiln_tensor *out = kiln__tensor_new(ctx, op_name, KILN_F32, (int)nd, shp);
    kiln_tensor *lse = out ? kiln__tensor_new(ctx, op_name, KILN_F32, 1, &rows) : NULL;
    if (!lse) goto fail;
    if (rows > 0) {
        char opts[256];
        build_options(&st, opts, sizeof opts);
        sdpa_args sa;
        args_init(&sa, &st, q, k, v, m);
        kiln__karg args[40];
        int c = fill_args(&sa, args);
        args[c++] = KILN__ARG(out->st->mem), args[c++] = KILN__ARG(lse->st->mem);
        size_t gl[2] = {(size_t)((g->L + bm - 1) / bm * bm), (size_t)g->B}, lo[2] = {(size_t)bm, 1};
        if (kiln__launch2(ctx, op_name, ATT_PROGRAM, opts, "sdpa_forward", (size_t)c, args, gl, lo) != KILN_OK)
            goto fail;
    }
    kiln_tensor *in3[3] = {q, k, v};
    if (kiln__grad_wanted(ctx, 3, in3)) {
        kiln__node *n = kiln__node_new(ctx, op_name, out, 3, in3, sdpa_backward_fn);
        sdpa_state *ns = n ? KILN__NODE_STATE_NEW(n, sdpa_state) : NULL;
        if (!ns || kiln__node_save(n, lse) != KILN_OK || (m && kiln__node_save(n, m) != KILN_OK)) goto fail;
        *ns = st;
    }
    kiln_tensor_free(lse);
    if (st.drop && o->dropout_p < 1.0f) ctx->rng_counter += (uint64_t)(g->B * g->L * g->S);
    return kiln__finish(ctx, op_name, out);
fail:
    kiln_tensor_free(lse);
    kiln_tensor_free(out);
    return NULL;
}

/* ---- the composed path ------------------------------------------------------------------- */

/* The additive bias of a boolean mask (m given) or of the causal rule ([L, S]). */
static kiln_tensor *bias_of(kiln_ctx *ctx, kiln_tensor *m, int64_t L, int64_t S) {
    kiln_tensor *mc = m ? (kiln__is_contiguous(m) ? m : kiln__copy_contiguous(ctx, op_name, m)) : NULL;
    if (m && !mc) return NULL;
    int64_t ls[2] = {L, S};
    kiln_tensor *b = m ? kiln__tensor_new(ctx, op_name, KILN_F32, m->ndim, m->shape)
                       : kiln__tensor_new(ctx, op_name, KILN_F32, 2, ls);
    int64_t n = b ? kiln__numel(b->ndim, b->shape) : 0;
    if (b && n > 0) {
        cl_mem mm = mc ? mc->st->mem : b->st->mem;
        cl_int moff = mc ? (cl_int)mc->offset : 0, doff = (cl_int)b->offset, ni = (cl_int)n, si = (cl_int)S,
               causal = m == NULL;
        kiln__karg a[] = {KILN__ARG(mm), KILN__ARG(moff), KILN__ARG(b->st->mem), KILN__ARG(doff),
                          KILN__ARG(ni), KILN__ARG(si),   KILN__ARG(causal)};
        /* attention.cl always needs its build options; these select the smallest build */
        if (kiln__launch(ctx, op_name, ATT_PROGRAM,
                         "-DATT_E=1 -DATT_EV=1 -DATT_BM=1 -DATT_BN=1 -DATT_VW=4 -DATT_KB=1 -DATT_MASK=0 "
                         "-DATT_CAUSAL=0 -DATT_DROP=0",
                         "sdpa_bias", 7, a, (size_t)n, 0) != KILN_OK) {
            kiln_tensor_free(b);
            b = NULL;
        }
    }
    if (mc && mc != m) kiln_tensor_free(mc);
    return b;
}

/* Frees *t and replaces it by nt (NULL-safe chain step). */
static kiln_tensor *step(kiln_tensor **t, kiln_tensor *nt) {
    kiln_tensor_free(*t);
    *t = nt;
    return nt;
}

static kiln_tensor *sdpa_composed(kiln_ctx *ctx, kiln_tensor *q, kiln_tensor *k, kiln_tensor *v, kiln_tensor *m,
                                  const sdpa_geom *g, const kiln_sdpa_opts *o, float scale) {
    int nd = g->nb + 2;
    int64_t wshape[KILN_MAX_DIMS];
    memcpy(wshape, g->bshape, sizeof(int64_t) * (size_t)g->nb);
    wshape[nd - 2] = g->L, wshape[nd - 1] = g->S;
    kiln_tensor *w = kiln_matmul_ex(ctx, q, k, KILN_TRANS_B);
    if (!w) return NULL;
    /* value's batch dims may be broader than query's and key's: the weights get the full
     * batch shape so that dropout draws the fused path's positions */
    if (kiln_tensor_ndim(w) != nd || memcmp(kiln_tensor_shape(w), wshape, sizeof(int64_t) * (size_t)nd) != 0)
        if (!step(&w, kiln_expand(ctx, w, nd, wshape))) return NULL;
    if (!step(&w, kiln_mul_scalar(ctx, w, scale))) return NULL;
    if (m && m->dtype == KILN_F32) {
        /* the mask gets no gradient, as on the fused path */
        kiln_tensor *md = kiln_detach(ctx, m);
        kiln_tensor *nw = md ? kiln_add(ctx, w, md) : NULL;
        kiln_tensor_free(md);
        if (!step(&w, nw)) return NULL;
    } else if (m || o->is_causal) {
        kiln_tensor *b = bias_of(ctx, m, g->L, g->S);
        kiln_tensor *nw = b ? kiln_add(ctx, w, b) : NULL;
        kiln_tensor_free(b);
        if (!step(&w, nw)) return NULL;
    }
    if (!step(&w, kiln_softmax(ctx, w, nd - 1))) return NULL;
    if (o->dropout_p > 0.0f && !step(&w, kiln_dropout(ctx, w, o->dropout_p, true))) return NULL;
    kiln_tensor *out = kiln_matmul(ctx, w, v);
    kiln_tensor_free(w);
    return out;
}

/* ---- the op -------------------------------------------------------------------------------- */

kiln_tensor *kiln_scaled_dot_product_attention(kiln_ctx *ctx, kiln_tensor *query, kiln_tensor *key, kiln_tensor *value,
                                               kiln_tensor *attn_mask, const kiln_sdpa_opts *opts) {
    kiln_tensor *in[3] = {query, key, value};
    if (!kiln__check_inputs(ctx, op_name, 3, in)) return NULL;
    if (attn_mask && !kiln__check_inputs(ctx, op_name, 1, &attn_mask)) return NULL;
    kiln_sdpa_opts o = opts ? *opts : kiln_sdpa_defaults();
    sdpa_geom g;
    float scale;
    if (!sdpa_check(ctx, query, key, value, attn_mask, &o, &g, &scale)) return NULL;
    int bm, bn, vw;
    if (o.impl == KILN_SDPA_COMPOSED || !choose_tiles(ctx, g.E, g.EV, &bm, &bn, &vw))
        return sdpa_composed(ctx, query, key, value, attn_mask, &g, &o, scale);
    return sdpa_fused(ctx, query, key, value, attn_mask, &g, &o, scale, bm, bn, vw);
}

/* src/ops/attention.c - scaled dot-product attention as torch.nn.functional's, with its
 * backward (kernels in cl_kernels/attention.cl).
 *
 * The fused path runs one kernel forward: each work-item holds a few query rows and walks
 * the keys in tiles with an online softmax, so the L x S weights never exist in device
 * memory; it keeps the output and one log-sum-exp per query row. The backward computes
 * D = rowsum(dO * O) in a pre-pass, then dQ with a kernel parallel over query rows and dK,
 * dV with one parallel over key rows, each recomputing the score tiles from q, k and the
 * log-sum-exp; every gradient element is summed by one work-item (no atomics), so results
 * are deterministic. The kernels read packed copies of their operands (sdpa_pack: rows
 * padded to whole vectors, and transposed), so device memory is O(B (L + S) E): the pool
 * statistics of tests/test_attention.c show it.
 *
 * Batch dims of query, key and value broadcast together (as torch's matmul-based
 * definition); the mask broadcasts to [batch..., L, S]. The packing kernel and the mask
 * reads address every operand through its strides over the batch dims and two more, so
 * views, transposed heads and broadcasts need no contiguous copy first. Gradients are
 * computed at the broadcast batch shape and summed down by kiln__accum.
 *
 * The composed path (opts->impl = KILN_SDPA_COMPOSED) is matmul, softmax, dropout and
 * matmul through kiln's ops: the reference the tests compare the fused path against, and
 * the path for head dims past ATT_MAX_DIM.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_internal.h"

#define ATT_PROGRAM "attention"
static const char op_name[] = "kiln_scaled_dot_product_attention";

/* Tiles of attention.cl per device kind (attention.cl's build options in lower case; CPU
 * figures: README, "Scaled dot-product attention"). On CPUs the vector over a tile's keys
 * or queries is as wide as the CPU's float vectors (kw: kiln's GEMM parameter set for it,
 * 16 on AVX-512). A work-item holds rm = 4 query rows in the forward (tiles of 2 vectors of
 * keys) and qm = 4 in the dQ kernel (tiles of one vector), and rn = 3 key rows in the
 * dK/dV kernel (tiles of one vector of queries), so that at E = Ev = 64 the accumulators
 * and score tiles fill most of AVX-512's 32 vector registers without spilling: of the
 * shapes timed on POCL (rm 2-8, tiles of 1-4 vectors, qm 2-5, rn 1-4), these were the
 * fastest or within the noise of a shared machine (rn = 3 took the dK/dV kernel from 1.7x
 * the dQ kernel's time to 1.3x against rn = 2). The dK/dV kernel's work-groups of dg = 8
 * items walk the queries in chunks of dc = 8 tiles with a barrier after each (attention.cl
 * says why): its CPU time at L = S = 2048 went from about 155 to 105 ms; groups of 4-32 and
 * chunks of 2-16 tiles timed alike. The GPU sizes are untimed: narrow vectors and few rows,
 * as GPU work-items are scalar lanes. */
typedef struct att_tiles {
    int kw, vw, rm, fn, qm, qn, rn, dn, dg, dc;
} att_tiles;
static const att_tiles tiles_cpu = {
    .kw = 16, .vw = 16, .rm = 4, .fn = 2, .qm = 4, .qn = 1, .rn = 3, .dn = 1, .dg = 8, .dc = 8};
static const att_tiles tiles_gpu = {
    .kw = 4, .vw = 4, .rm = 2, .fn = 1, .qm = 2, .qn = 1, .rn = 2, .dn = 1, .dg = 64, .dc = 1};

typedef enum { MASK_NONE = 0, MASK_BOOL = 1, MASK_FLOAT = 2 } mask_kind;

/* The shapes of one call, after broadcasting. */
typedef struct sdpa_geom {
    int nb;                        /* batch dims */
    int64_t bshape[KILN_MAX_DIMS]; /* broadcast batch shape */
    int64_t B, L, S, E, EV;        /* B = product of bshape */
    cl_int mrs, mcs;               /* the mask's row and column strides (0 where it broadcasts) */
    /* the kernels' batch addressing (attention.cl's ATT_COMMON): the batch shape padded in
     * front with 1s to 8 dims, the mask's strides over it and its offset */
    cl_int8 bsh, mbs;
    cl_int mbase;
} sdpa_geom;

typedef struct sdpa_state {
    sdpa_geom g;
    att_tiles t;
    int64_t Lp, Sp; /* L and S padded to a multiple of every tile */
    int mask, causal, drop;
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
            kiln__fail(ctx, KILN_ERR_DTYPE, "%s: %s has dtype %s; f32, f16 and bf16 are supported (%s)", op_name,
                       names[t], kiln_dtype_name(qkv[t]->dtype), sh);
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
    g->mrs = m ? (cl_int)stride_from_end(m, 2) : 0, g->mcs = m ? (cl_int)stride_from_end(m, 1) : 0;
    return true;
}

kiln_sdpa_opts kiln_sdpa_defaults(void) {
    return (kiln_sdpa_opts){.dropout_p = 0.0f, .is_causal = false, .scale = NAN, .impl = KILN_SDPA_FUSED};
}

/* ---- the fused path ---------------------------------------------------------------------- */

/* g's batch shape and the mask's (NULL: none) addressing over it. */
static void batch_addressing(sdpa_geom *g, kiln_tensor *m) {
    int nd = g->nb + 2, pad = 8 - g->nb;
    for (int d = 0; d < 8; d++) {
        int bd = d - pad; /* batch dim, or < 0 in the padding */
        g->bsh.s[d] = bd >= 0 ? (cl_int)g->bshape[bd] : 1;
        g->mbs.s[d] = bd >= 0 && m ? (cl_int)stride_from_end(m, nd - bd) : 0;
    }
    g->mbase = m ? (cl_int)m->offset : 0;
}

static void build_options(const sdpa_state *st, char *buf, size_t cap) {
    const att_tiles *t = &st->t;
    snprintf(buf, cap,
             "-DATT_E=%lld -DATT_EV=%lld -DATT_VW=%d -DATT_KW=%d -DATT_RM=%d -DATT_FN=%d -DATT_QM=%d -DATT_QN=%d "
             "-DATT_RN=%d -DATT_DN=%d -DATT_DC=%d -DATT_MASK=%d -DATT_CAUSAL=%d -DATT_DROP=%d",
             (long long)st->g.E, (long long)st->g.EV, t->vw, t->kw, t->rm, t->fn, t->qm, t->qn, t->rn, t->dn, t->dc,
             st->mask, st->causal, st->drop);
}

/* The largest head dim the fused kernels take: a work-item keeps ATT_RM rows of
 * accumulators of E or Ev floats in registers (private memory past that); wider heads
 * take the composed path. */
#define ATT_MAX_DIM 512

static int64_t lcm64(int64_t a, int64_t b) {
    int64_t x = a, y = b;
    while (y) {
        int64_t r = x % y;
        x = y, y = r;
    }
    return a / x * b;
}

/* Tiles and vector widths for the device: the key vector as wide as the CPU's (kiln's
 * GEMM set for it), the feature vector as wide as the rows up to that; false (composed
 * path) for head dims past ATT_MAX_DIM. */
static bool choose_tiles(kiln_ctx *ctx, int64_t E, int64_t EV, att_tiles *t) {
    if (E > ATT_MAX_DIM || EV > ATT_MAX_DIM) return false;
    bool cpu = ctx->info.type == KILN_DEVICE_CPU;
    *t = cpu ? tiles_cpu : tiles_gpu;
    if (cpu) {
        const kiln__gemm_params *gp = kiln__gemm_params_of(ctx);
        int w = gp ? gp->nt_vw : 4;
        t->kw = w >= 16 ? 16 : w >= 8 ? 8 : 4;
    }
    int64_t wide = E > EV ? E : EV;
    for (t->vw = 4; t->vw < t->kw && 2 * t->vw <= wide;) t->vw *= 2;
    return true;
}

static int64_t round_up(int64_t x, int64_t u) { return (x + u - 1) / u * u; }

/* The padded lengths Lp and Sp of the packed operands: whole tiles of the loops over
 * queries (dK/dV) and keys (forward, dQ), whole row blocks of the work-items, and whole
 * vectors of sdpa_pack. */
static void padded_lengths(const att_tiles *t, int64_t L, int64_t S, int64_t *Lp, int64_t *Sp) {
    int64_t lq = round_up(L, (int64_t)t->dn * t->kw), lr = round_up(L, lcm64(t->rm, t->qm));
    int64_t sk = round_up(S, lcm64((int64_t)t->fn * t->kw, (int64_t)t->qn * t->kw)), sr = round_up(S, t->rn);
    *Lp = round_up(lq > lr ? lq : lr, t->kw);
    *Sp = round_up(sk > sr ? sk : sr, t->kw);
}

/* The arguments every attention kernel takes first (ATT_COMMON of attention.cl). */
typedef struct sdpa_common {
    cl_mem m;
    cl_int mbase, mrs, mcs, L, S, Lp, Sp;
    cl_uint key0, key1, ctr_lo, ctr_hi;
    float p, dscale;
    cl_int8 bsh, mbs;
    cl_int go; /* the element offset of every tensor the op allocates (kiln's guard regions) */
} sdpa_common;

static void common_init(kiln_ctx *ctx, sdpa_common *c, const sdpa_state *st, kiln_tensor *q, kiln_tensor *m) {
    c->m = m ? m->st->mem : q->st->mem; /* not read without a mask */
    c->bsh = st->g.bsh, c->mbs = st->g.mbs;
    c->mbase = st->g.mbase, c->mrs = st->g.mrs, c->mcs = st->g.mcs;
    c->L = (cl_int)st->g.L, c->S = (cl_int)st->g.S, c->Lp = (cl_int)st->Lp, c->Sp = (cl_int)st->Sp;
    c->p = st->p, c->dscale = st->dscale;
    c->key0 = st->key0, c->key1 = st->key1, c->ctr_lo = st->ctr_lo, c->ctr_hi = st->ctr_hi;
    c->go = (cl_int)ctx->guard;
}

static int common_args(sdpa_common *c, kiln__karg *a) {
    int n = 0;
    a[n++] = KILN__ARG(c->m), a[n++] = KILN__ARG(c->bsh), a[n++] = KILN__ARG(c->mbs), a[n++] = KILN__ARG(c->mbase);
    a[n++] = KILN__ARG(c->mrs), a[n++] = KILN__ARG(c->mcs), a[n++] = KILN__ARG(c->L), a[n++] = KILN__ARG(c->S);
    a[n++] = KILN__ARG(c->Lp), a[n++] = KILN__ARG(c->Sp), a[n++] = KILN__ARG(c->p), a[n++] = KILN__ARG(c->dscale);
    a[n++] = KILN__ARG(c->key0), a[n++] = KILN__ARG(c->key1), a[n++] = KILN__ARG(c->ctr_lo);
    a[n++] = KILN__ARG(c->ctr_hi), a[n++] = KILN__ARG(c->go);
    return n;
}

/* One operand for sdpa_pack: its buffer, batch strides over g's batch shape, offset,
 * rows n, and row and column strides over the last two dims of D columns. */
typedef struct pack_src {
    cl_mem x;
    cl_int8 bs;
    cl_int base, n, rs, cs, D;
} pack_src;

static pack_src pack_src_of(const sdpa_geom *g, kiln_tensor *t, int64_t n, int64_t D) {
    pack_src s = {.x = t->st->mem, .base = (cl_int)t->offset, .n = (cl_int)n, .D = (cl_int)D};
    int nd = g->nb + 2, pad = 8 - g->nb;
    for (int d = 0; d < 8; d++) {
        int bd = d - pad;
        s.bs.s[d] = bd >= 0 ? (cl_int)stride_from_end(t, nd - bd) : 0;
    }
    s.rs = (cl_int)stride_from_end(t, 2), s.cs = (cl_int)stride_from_end(t, 1);
    return s;
}

/* Packs src (times mult) for the kernels: *rows [B, np, Dp] when rows is not NULL, *cols
 * [B, D, np] when cols is not NULL (attention.cl's sdpa_pack). */
static kiln_status pack(kiln_ctx *ctx, const sdpa_state *st, const char *opts, pack_src *src, int64_t np, int64_t Dp,
                        float mult, kiln_tensor **rows, kiln_tensor **cols) {
    int64_t B = st->g.B, nr = B * np * Dp, nc = B * src->D * np;
    if (!rows && !cols) return KILN_OK;
    if (rows && !(*rows = kiln__tensor_new(ctx, op_name, KILN_F32, 1, &nr))) return ctx->err;
    if (cols && !(*cols = kiln__tensor_new(ctx, op_name, KILN_F32, 1, &nc))) return ctx->err;
    cl_mem rm = rows ? (*rows)->st->mem : (*cols)->st->mem, cm = cols ? (*cols)->st->mem : rm;
    cl_int npi = (cl_int)np, Dpi = (cl_int)Dp, mode = (rows ? 1 : 0) | (cols ? 2 : 0), go = (cl_int)ctx->guard;
    sdpa_geom g = st->g;
    kiln__karg a[] = {KILN__ARG(src->x), KILN__ARG(g.bsh),   KILN__ARG(src->bs), KILN__ARG(src->base),
                      KILN__ARG(src->n), KILN__ARG(src->rs), KILN__ARG(src->cs), KILN__ARG(src->D),
                      KILN__ARG(npi),    KILN__ARG(Dpi),     KILN__ARG(mult),    KILN__ARG(mode),
                      KILN__ARG(rm),     KILN__ARG(cm),      KILN__ARG(go)};
    size_t gl[2] = {(size_t)(np / st->t.kw), (size_t)B};
    return kiln__launch2(ctx, op_name, ATT_PROGRAM, opts, "sdpa_pack", sizeof a / sizeof a[0], a, gl, NULL);
}

static int64_t padded_dim(int64_t d, int vw) { return round_up(d, vw); }

/*
 * A new output [batch..., rows, cols] of the broadcast batch shape that stands for input
 * `like` (the output for the query, each gradient for its input), laid out in the memory
 * order of like's dims: the batch dims and the rows sorted by like's strides, largest
 * first, the cols innermost; contiguous when like broadcasts, has a size-1 dim or is not
 * row-major in its last dim. A query that a Transformer took from [B, L, H, E] memory by a
 * permute (the heads' split) so gives an output in [B, L, H, E] memory, which the heads'
 * merge (the inverse permute and a reshape) views without a copy, as PyTorch's fused
 * attention does; and gradients the split's backward views the same way. The kernels
 * address rows through the result's strides (out_addr).
 */
static kiln_tensor *new_like(kiln_ctx *ctx, const sdpa_geom *g, const kiln_tensor *like, int64_t rows, int64_t cols) {
    int nd = g->nb + 2;
    int64_t shp[KILN_MAX_DIMS];
    memcpy(shp, g->bshape, sizeof(int64_t) * (size_t)g->nb);
    shp[nd - 2] = rows, shp[nd - 1] = cols;
    int order[KILN_MAX_DIMS];
    bool perm = like->ndim == nd && like->strides[nd - 1] == 1, moved = false;
    for (int d = 0; d < nd; d++) {
        order[d] = d;
        perm = perm && like->shape[d] == shp[d] && shp[d] > 1;
    }
    /* a stable insertion sort of dims 0 .. nd - 2 by stride, largest first */
    for (int i = 1; perm && i < nd - 1; i++)
        for (int j = i; j > 0 && like->strides[order[j]] > like->strides[order[j - 1]]; j--) {
            int t = order[j];
            order[j] = order[j - 1], order[j - 1] = t;
            moved = true;
        }
    if (!moved) return kiln__tensor_new(ctx, op_name, KILN_F32, nd, shp);
    int64_t psh[KILN_MAX_DIMS], pst[KILN_MAX_DIMS], st[KILN_MAX_DIMS];
    for (int d = 0; d < nd; d++) psh[d] = shp[order[d]];
    kiln__contiguous_strides(nd, psh, pst);
    for (int d = 0; d < nd; d++) st[order[d]] = pst[d];
    kiln_tensor *base = kiln__tensor_new(ctx, op_name, KILN_F32, nd, psh);
    kiln_tensor *t = base ? kiln__tensor_view(ctx, base, nd, shp, st, base->offset) : NULL;
    kiln_tensor_free(base);
    return t;
}

/* The row addressing of an output of new_like (or of the op's output in the backward):
 * batch strides over the kernels' 8 padded batch dims and the row stride. */
typedef struct out_addr {
    cl_int8 bs;
    cl_int rs;
} out_addr;

static out_addr out_addr_of(const sdpa_geom *g, kiln_tensor *t) {
    pack_src p = pack_src_of(g, t, 0, 0);
    return (out_addr){.bs = p.bs, .rs = p.rs};
}

/* The local size of the row kernels (sdpa_forward, sdpa_backward_dq), which use no local
 * memory: at most ATT_ROW_WG work-items along the rows, a power of two dividing the global
 * size, one batch. Left to the driver, POCL made groups of every row of four batches (4096
 * work-items at L = 8192) and overflowed its thread's stack with their private arrays. */
#define ATT_ROW_WG 64
static void row_local(const size_t gl[2], size_t lw[2]) {
    lw[0] = 1, lw[1] = 1;
    while (lw[0] < ATT_ROW_WG && gl[0] % (lw[0] * 2) == 0) lw[0] *= 2;
}

static kiln_status sdpa_backward_fn(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout) {
    const sdpa_state *st = KILN__NODE_STATE(n, sdpa_state);
    if (!st) return ctx->err;
    kiln_tensor *q = n->in[0], *k = n->in[1], *v = n->in[2], *out = n->out;
    kiln_tensor *lse = n->saved[0], *m = n->nsaved > 1 ? n->saved[1] : NULL;
    const sdpa_geom *g = &st->g;
    const att_tiles *t = &st->t;
    bool need_q = kiln__input_needs_grad(n, 0), need_kv = kiln__input_needs_grad(n, 1) || kiln__input_needs_grad(n, 2);
    char opts[320];
    build_options(st, opts, sizeof opts);
    kiln_status s = KILN_OK;
    /* packed operands: rows (p) and transposed (t) */
    kiln_tensor *qp = NULL, *qt = NULL, *kp = NULL, *kt = NULL, *vp = NULL, *vt = NULL, *dop = NULL, *dot = NULL;
    kiln_tensor *dd = NULL, *dq = NULL, *dk = NULL, *dv = NULL;
    int64_t EP = padded_dim(g->E, t->vw), EVP = padded_dim(g->EV, t->vw);
    pack_src sq = pack_src_of(g, q, g->L, g->E), sk = pack_src_of(g, k, g->S, g->E);
    pack_src sv = pack_src_of(g, v, g->S, g->EV), so = pack_src_of(g, gout, g->L, g->EV);
    /* dQ reads qp, kt, vt, kp, dop; dK/dV kp, vp, qt, dot, qp, dop */
    if ((s = pack(ctx, st, opts, &sq, st->Lp, EP, st->scale, &qp, need_kv ? &qt : NULL)) != KILN_OK ||
        (s = pack(ctx, st, opts, &sk, st->Sp, EP, 1.0f, &kp, need_q ? &kt : NULL)) != KILN_OK ||
        (s = pack(ctx, st, opts, &sv, st->Sp, EVP, 1.0f, need_kv ? &vp : NULL, need_q ? &vt : NULL)) != KILN_OK ||
        (s = pack(ctx, st, opts, &so, st->Lp, EVP, 1.0f, &dop, need_kv ? &dot : NULL)) != KILN_OK)
        goto done;
    int64_t rows = g->B * st->Lp;
    if (!(dd = kiln__tensor_new(ctx, op_name, KILN_F32, 1, &rows))) goto fail;
    cl_int L = (cl_int)g->L, Lp = (cl_int)st->Lp, nrows = (cl_int)rows, go = (cl_int)ctx->guard;
    cl_int ooff = (cl_int)out->offset, lo = (cl_int)lse->offset;
    out_addr oa = out_addr_of(g, out), qa, ka, va;
    cl_int8 bsh = g->bsh;
    kiln__karg da[] = {KILN__ARG(dop->st->mem), KILN__ARG(out->st->mem), KILN__ARG(ooff),        KILN__ARG(bsh),
                       KILN__ARG(oa.bs),        KILN__ARG(oa.rs),        KILN__ARG(dd->st->mem), KILN__ARG(L),
                       KILN__ARG(Lp),           KILN__ARG(nrows),        KILN__ARG(go)};
    if ((s = kiln__launch(ctx, op_name, ATT_PROGRAM, opts, "sdpa_backward_d", 11, da, (size_t)rows, 0)) != KILN_OK)
        goto done;
    sdpa_common c;
    common_init(ctx, &c, st, q, m);
    kiln__karg args[40];
    int na = common_args(&c, args);
    if (need_q) {
        if (!(dq = new_like(ctx, g, q, g->L, g->E))) goto fail;
        qa = out_addr_of(g, dq);
        int ac = na;
        float scale = st->scale;
        cl_mem in[8] = {qp->st->mem,  kt->st->mem,  vt->st->mem, kp->st->mem,
                        dop->st->mem, lse->st->mem, dd->st->mem, dq->st->mem};
        for (int i = 0; i < 5; i++) args[ac++] = KILN__ARG(in[i]);
        args[ac++] = KILN__ARG(in[5]), args[ac++] = KILN__ARG(lo), args[ac++] = KILN__ARG(in[6]);
        args[ac++] = KILN__ARG(scale), args[ac++] = KILN__ARG(in[7]);
        args[ac++] = KILN__ARG(qa.bs), args[ac++] = KILN__ARG(qa.rs);
        size_t gl[2] = {(size_t)((g->L + t->qm - 1) / t->qm), (size_t)g->B}, lw[2];
        row_local(gl, lw);
        if ((s = kiln__launch2(ctx, op_name, ATT_PROGRAM, opts, "sdpa_backward_dq", (size_t)ac, args, gl, lw)) !=
            KILN_OK)
            goto done;
    }
    if (need_kv) {
        if (!(dk = new_like(ctx, g, k, g->S, g->E)) || !(dv = new_like(ctx, g, v, g->S, g->EV))) goto fail;
        ka = out_addr_of(g, dk), va = out_addr_of(g, dv);
        int ac = na;
        cl_mem in[10] = {kp->st->mem,  vp->st->mem,  qt->st->mem, dot->st->mem, qp->st->mem,
                         dop->st->mem, lse->st->mem, dd->st->mem, dk->st->mem,  dv->st->mem};
        for (int i = 0; i < 7; i++) args[ac++] = KILN__ARG(in[i]);
        args[ac++] = KILN__ARG(lo);
        args[ac++] = KILN__ARG(in[7]);
        args[ac++] = KILN__ARG(in[8]), args[ac++] = KILN__ARG(ka.bs), args[ac++] = KILN__ARG(ka.rs);
        args[ac++] = KILN__ARG(in[9]), args[ac++] = KILN__ARG(va.bs), args[ac++] = KILN__ARG(va.rs);
        /* work-groups of dg items, which walk the queries chunk by chunk together */
        size_t items = (size_t)((g->S + t->rn - 1) / t->rn), dg = (size_t)t->dg;
        size_t gl[2] = {(items + dg - 1) / dg * dg, (size_t)g->B}, lw[2] = {dg, 1};
        if ((s = kiln__launch2(ctx, op_name, ATT_PROGRAM, opts, "sdpa_backward_dkv", (size_t)ac, args, gl, lw)) !=
            KILN_OK)
            goto done;
    }
    kiln_tensor *tmp[9] = {qp, qt, kp, kt, vp, vt, dop, dot, dd};
    for (int i = 0; i < 9; i++) kiln_tensor_free(tmp[i]);
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
done:;
    kiln_tensor *all[12] = {qp, qt, kp, kt, vp, vt, dop, dot, dd, dq, dk, dv};
    for (int i = 0; i < 12; i++) kiln_tensor_free(all[i]);
    return s;
}

static kiln_tensor *sdpa_fused(kiln_ctx *ctx, kiln_tensor *q, kiln_tensor *k, kiln_tensor *v, kiln_tensor *m,
                               const sdpa_geom *g, const kiln_sdpa_opts *o, float scale, const att_tiles *t) {
    sdpa_state st = {.g = *g, .t = *t, .causal = o->is_causal, .scale = scale};
    padded_lengths(t, g->L, g->S, &st.Lp, &st.Sp);
    st.mask = !m ? MASK_NONE : m->dtype == KILN_U8 ? MASK_BOOL : MASK_FLOAT;
    /* p == 1 drops every weight (output 0, as torch) and draws nothing, as kiln_dropout */
    st.drop = o->dropout_p > 0.0f;
    st.p = o->dropout_p;
    st.dscale = o->dropout_p >= 1.0f ? 0.0f : (float)(1.0 / (1.0 - (double)o->dropout_p));
    st.key0 = (cl_uint)ctx->seed, st.key1 = (cl_uint)(ctx->seed >> 32);
    st.ctr_lo = (cl_uint)ctx->rng_counter, st.ctr_hi = (cl_uint)(ctx->rng_counter >> 32);
    int64_t rows = g->B * st.Lp;
    batch_addressing(&st.g, m);
    kiln_tensor *qp = NULL, *kt = NULL, *vp = NULL;
    kiln_tensor *out = new_like(ctx, g, q, g->L, g->EV);
    kiln_tensor *lse = out ? kiln__tensor_new(ctx, op_name, KILN_F32, 1, &rows) : NULL;
    if (!lse) goto fail;
    char opts[320];
    build_options(&st, opts, sizeof opts);
    {
        int64_t EP = padded_dim(g->E, t->vw), EVP = padded_dim(g->EV, t->vw);
        pack_src sq = pack_src_of(g, q, g->L, g->E), sk = pack_src_of(g, k, g->S, g->E);
        pack_src sv = pack_src_of(g, v, g->S, g->EV);
        if (pack(ctx, &st, opts, &sq, st.Lp, EP, scale, &qp, NULL) != KILN_OK ||
            pack(ctx, &st, opts, &sk, st.Sp, EP, 1.0f, NULL, &kt) != KILN_OK ||
            pack(ctx, &st, opts, &sv, st.Sp, EVP, 1.0f, &vp, NULL) != KILN_OK)
            goto fail;
        sdpa_common c;
        common_init(ctx, &c, &st, q, m);
        kiln__karg args[40];
        int ac = common_args(&c, args);
        args[ac++] = KILN__ARG(qp->st->mem), args[ac++] = KILN__ARG(kt->st->mem), args[ac++] = KILN__ARG(vp->st->mem);
        out_addr oa = out_addr_of(g, out);
        args[ac++] = KILN__ARG(out->st->mem), args[ac++] = KILN__ARG(oa.bs), args[ac++] = KILN__ARG(oa.rs);
        args[ac++] = KILN__ARG(lse->st->mem);
        size_t gl[2] = {(size_t)((st.Lp + t->rm - 1) / t->rm), (size_t)g->B}, lw[2];
        row_local(gl, lw);
        if (kiln__launch2(ctx, op_name, ATT_PROGRAM, opts, "sdpa_forward", (size_t)ac, args, gl, lw) != KILN_OK)
            goto fail;
    }
    kiln_tensor_free(qp), qp = NULL;
    kiln_tensor_free(kt), kt = NULL;
    kiln_tensor_free(vp), vp = NULL;
    kiln_tensor *in3[3] = {q, k, v};
    if (kiln__grad_wanted(ctx, 3, in3)) {
        kiln__node *n = kiln__node_new(ctx, op_name, out, 3, in3, sdpa_backward_fn);
        if (n) n->strided_grad = true; /* sdpa_pack reads the gradient through its strides */
        sdpa_state *ns = n ? KILN__NODE_STATE_NEW(n, sdpa_state) : NULL;
        if (!ns || kiln__node_save(n, lse) != KILN_OK || (m && kiln__node_save(n, m) != KILN_OK)) goto fail;
        *ns = st;
    }
    kiln_tensor_free(lse);
    if (st.drop && o->dropout_p < 1.0f) ctx->rng_counter += (uint64_t)(g->B * g->L * g->S);
    return kiln__finish(ctx, op_name, out);
fail:
    kiln_tensor_free(qp);
    kiln_tensor_free(kt);
    kiln_tensor_free(vp);
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
                         "-DATT_E=1 -DATT_EV=1 -DATT_VW=4 -DATT_KW=4 -DATT_RM=1 -DATT_FN=1 -DATT_QM=1 -DATT_QN=1 "
                         "-DATT_RN=1 -DATT_DN=1 -DATT_DC=1 -DATT_MASK=0 -DATT_CAUSAL=0 -DATT_DROP=0",
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

static kiln_tensor *sdpa_f32(kiln_ctx *ctx, kiln_tensor *const *in, const void *opts) {
    return kiln_scaled_dot_product_attention(ctx, in[0], in[1], in[2], in[3], opts);
}

kiln_tensor *kiln_scaled_dot_product_attention(kiln_ctx *ctx, kiln_tensor *query, kiln_tensor *key, kiln_tensor *value,
                                               kiln_tensor *attn_mask, const kiln_sdpa_opts *opts) {
    kiln_tensor *in[3] = {query, key, value};
    if (!kiln__check_inputs(ctx, op_name, 3, in)) return NULL;
    if (attn_mask && !kiln__check_inputs(ctx, op_name, 1, &attn_mask)) return NULL;
    /* half query, key, value or additive mask: through f32 copies, the result in their dtype */
    kiln_tensor *hin[4] = {query, key, value, attn_mask};
    if (kiln__any_half(4, hin)) return kiln__half_fallback(ctx, 4, hin, sdpa_f32, opts);
    kiln_sdpa_opts o = opts ? *opts : kiln_sdpa_defaults();
    sdpa_geom g;
    float scale;
    if (!sdpa_check(ctx, query, key, value, attn_mask, &o, &g, &scale)) return NULL;
    att_tiles t;
    if (o.impl == KILN_SDPA_COMPOSED || !choose_tiles(ctx, g.E, g.EV, &t))
        return sdpa_composed(ctx, query, key, value, attn_mask, &g, &o, scale);
    return sdpa_fused(ctx, query, key, value, attn_mask, &g, &o, scale, &t);
}

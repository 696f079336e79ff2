/* src/ops/matmul.c - matrix products with torch.matmul semantics on CLBlast's SGEMM and
 * strided-batched SGEMM, or on CPUs kiln's own kernels (kiln__sgemm decides, see
 * src/ops/gemm.c), reading views in place through offsets, leading dims and transpose
 * flags. Operands of f16 or bf16 go to kiln's own kernels on every device, which read
 * each operand in its dtype and sum in f32 (kiln__gemm_run_dt); two operands of one half
 * dtype give that dtype, f32 with a half gives f32 (the backward's products). */
#include <stdio.h>
#include <string.h>

#include "ops_internal.h" /* before clblast_c.h: it picks the OpenCL target version */

#include <clblast_c.h>

/*
 * How an operand maps onto CLBlast (row-major layout throughout):
 *
 *   - Its last two dims (after 1-D promotion) are a rows x cols matrix with strides
 *     (rs, cs). With cs == 1 and rs >= cols it is row-major with leading dim rs; with
 *     rs == 1 and cs >= rows it is the transpose of a row-major cols x rows matrix with
 *     leading dim cs, so the transpose flag flips. Size-1 dims have no meaningful stride.
 *     Anything else (a step-2 slice of the last dim, a broadcast row, overlapping rows) is
 *     copied to a contiguous tensor first: the only case that copies.
 *   - KILN_TRANS_A / KILN_TRANS_B flip the flag once more: free.
 *   - Batch dims broadcast; size-1 batch dims are dropped. When the operand's batch offset
 *     is one stride times the flat batch index over the remaining dims (a broadcast
 *     operand has stride 0, which CLBlast's strided-batched GEMM accepts), one
 *     strided-batched call does every batch. Otherwise the longest run of trailing batch
 *     dims that is linear for both operands goes into one call and the leading dims loop.
 *   - When B is not batched and A's batches are stacked rows of one row-major matrix
 *     (a [B, m, k] activation times a [k, n] weight), the batches fold into M: one SGEMM
 *     with M = B * m.
 *   - The output is a fresh contiguous tensor: C is row-major with ldc = n and batch
 *     stride m * n.
 *
 * CLBlast rejects k == 0 (kInvalidDimension) instead of writing beta * C, so an empty inner
 * dim fills the output with zeros; m == 0 or n == 0 is an empty result with no call. beta
 * is 0: CLBlast then never reads C (stale pool memory, even NaN, cannot leak in).
 */

typedef struct operand {
    kiln_tensor *t; /* the tensor read: the input or its contiguous copy */
    bool vec;       /* 1-D input, promoted to a row (left) or a column (right) */
    int nb;         /* batch dims */
    int64_t bshape[KILN_MAX_DIMS], bstrides[KILN_MAX_DIMS];
    int64_t rows, cols, rs, cs; /* the stored matrix, before any transpose flag */
    bool trans;                 /* CLBlast's transpose flag for this operand */
    int64_t ld;
} operand;

/* Geometry of t as the left (left = true) or right operand; 1-D promotes as torch. */
static void describe(operand *o, kiln_tensor *t, bool left) {
    memset(o, 0, sizeof *o);
    o->t = t;
    o->vec = t->ndim == 1;
    if (o->vec) {
        int64_t len = t->shape[0], st = t->strides[0];
        o->rows = left ? 1 : len;
        o->cols = left ? len : 1;
        o->rs = left ? len : st;
        o->cs = left ? st : 1;
        return;
    }
    o->nb = t->ndim - 2;
    for (int d = 0; d < o->nb; d++) {
        o->bshape[d] = t->shape[d];
        o->bstrides[d] = t->strides[d];
    }
    o->rows = t->shape[t->ndim - 2];
    o->cols = t->shape[t->ndim - 1];
    o->rs = t->strides[t->ndim - 2];
    o->cs = t->strides[t->ndim - 1];
}

/* Sets o->trans and o->ld for CLBlast, given whether the caller asked for the transpose.
 * False when the stored matrix is neither row- nor column-major with a valid leading dim. */
static bool blas_layout(operand *o, bool want_trans) {
    int64_t r = o->rows, c = o->cols;
    if ((c <= 1 || o->cs == 1) && (r <= 1 || o->rs >= c)) {
        o->trans = want_trans;
        o->ld = r <= 1 ? (c > 1 ? c : 1) : o->rs;
        return true;
    }
    if ((r <= 1 || o->rs == 1) && (c <= 1 || o->cs >= r)) {
        o->trans = !want_trans;
        o->ld = c <= 1 ? (r > 1 ? r : 1) : o->cs;
        return true;
    }
    return false;
}

static const char *clblast_name(CLBlastStatusCode s) {
    switch (s) {
    case CLBlastNotImplemented: return "kNotImplemented";
    case CLBlastInvalidMatrixA: return "kInvalidMatrixA";
    case CLBlastInvalidMatrixB: return "kInvalidMatrixB";
    case CLBlastInvalidMatrixC: return "kInvalidMatrixC";
    case CLBlastInvalidVectorX: return "kInvalidVectorX";
    case CLBlastInvalidVectorY: return "kInvalidVectorY";
    case CLBlastInvalidDimension: return "kInvalidDimension";
    case CLBlastInvalidLeadDimA: return "kInvalidLeadDimA";
    case CLBlastInvalidLeadDimB: return "kInvalidLeadDimB";
    case CLBlastInvalidLeadDimC: return "kInvalidLeadDimC";
    case CLBlastInvalidIncrementX: return "kInvalidIncrementX";
    case CLBlastInvalidIncrementY: return "kInvalidIncrementY";
    case CLBlastInsufficientMemoryA: return "kInsufficientMemoryA";
    case CLBlastInsufficientMemoryB: return "kInsufficientMemoryB";
    case CLBlastInsufficientMemoryC: return "kInsufficientMemoryC";
    case CLBlastInsufficientMemoryX: return "kInsufficientMemoryX";
    case CLBlastInsufficientMemoryY: return "kInsufficientMemoryY";
    case CLBlastInsufficientMemoryTemp: return "kInsufficientMemoryTemp";
    case CLBlastInvalidBatchCount: return "kInvalidBatchCount";
    case CLBlastInvalidOverrideKernel: return "kInvalidOverrideKernel";
    case CLBlastMissingOverrideParameter: return "kMissingOverrideParameter";
    case CLBlastInvalidLocalMemUsage: return "kInvalidLocalMemUsage";
    case CLBlastNoHalfPrecision: return "kNoHalfPrecision";
    case CLBlastNoDoublePrecision: return "kNoDoublePrecision";
    case CLBlastInvalidVectorScalar: return "kInvalidVectorScalar";
    case CLBlastInsufficientMemoryScalar: return "kInsufficientMemoryScalar";
    case CLBlastDatabaseError: return "kDatabaseError";
    case CLBlastUnknownError: return "kUnknownError";
    case CLBlastUnexpectedError: return "kUnexpectedError";
    default: return "unknown CLBlast status";
    }
}

/* What a matmul node keeps for its backward. */
typedef struct matmul_state {
    int flags; /* KILN_TRANS_A, KILN_TRANS_B */
} matmul_state;

/* What an error message names: the op and both input shapes; and the operands' dtypes. */
typedef struct mm_call {
    kiln_ctx *ctx;
    const char *op;
    const kiln_tensor *a, *b;
    kiln_dtype dt[3]; /* A, B and C */
    bool half;        /* some operand is f16 or bf16: kiln's own kernels (kiln__gemm_run_dt) */
} mm_call;

static kiln_status clblast_fail(const mm_call *mc, CLBlastStatusCode s, const char *routine, size_t m, size_t n,
                                size_t k, size_t batch) {
    if ((int)s == KILN__SGEMM_FAILED) return mc->ctx->err; /* kiln's own kernel said why */
    char sa[160], sb[160];
    kiln__shape_str(mc->a->ndim, mc->a->shape, sa, sizeof sa);
    kiln__shape_str(mc->b->ndim, mc->b->shape, sb, sizeof sb);
    /* CLBlast's codes above -1000 are OpenCL's own. */
    if (s > -1000)
        return kiln__fail(mc->ctx, kiln__cl_status((cl_int)s),
                          "%s: %s (m=%zu n=%zu k=%zu batch=%zu) for %s x %s failed on '%s': %s (%d)", mc->op, routine,
                          m, n, k, batch, sa, sb, mc->ctx->info.name, kiln__cl_name((cl_int)s), (int)s);
    return kiln__fail(mc->ctx, KILN_ERR_CLBLAST,
                      "%s: %s (m=%zu n=%zu k=%zu batch=%zu) for %s x %s failed on '%s': CLBlast %s (%d)", mc->op,
                      routine, m, n, k, batch, sa, sb, mc->ctx->info.name, clblast_name(s), (int)s);
}

/*
 * Parts of K for one product whose result has few GEMM tiles but a long K (the reference
 * CNN's fc1 forward, 64 x 128 x 9216 NT: two 64 x 64 tiles, so CLBlast's indirect kernel
 * keeps at most two cores busy for all of K): enough parts for ~16 work-groups per compute
 * unit, each part at least SPLIT_MIN_K long; 1 (no split) where the device's tiles are not
 * known (kiln__sgemm_tiles) or the partial results would take more than SPLIT_MAX_ELEMS.
 * Only for products CLBlast computes (on CPUs kiln's own kernels take every product).
 */
#define SPLIT_MIN_K 1024
#define SPLIT_MAX_PARTS 16
#define SPLIT_MAX_ELEMS ((size_t)1 << 22)
/* The parts split_parts picks, for tests (src/kiln_test_hooks.h declares it; not exported).
 * The parts the last product was split into go to ctx->hooks.matmul_last_parts. */
size_t kiln__matmul_split_parts(kiln_ctx *ctx, size_t m, size_t n, size_t k);
static size_t split_parts(kiln_ctx *ctx, size_t m, size_t n, size_t k);
size_t kiln__matmul_split_parts(kiln_ctx *ctx, size_t m, size_t n, size_t k) { return split_parts(ctx, m, n, k); }

static size_t split_parts(kiln_ctx *ctx, size_t m, size_t n, size_t k) {
    size_t tm, tn, tk;
    kiln__sgemm_tiles(ctx, &tm, &tn, &tk);
    if (tm <= 1 || tn <= 1 || m == 0 || n == 0 || k == 0) return 1;
    size_t tiles = ((m + tm - 1) / tm) * ((n + tn - 1) / tn);
    size_t want = 16 * (size_t)(ctx->info.compute_units > 0 ? ctx->info.compute_units : 1);
    if (tiles >= want) return 1;
    size_t parts = (want + tiles - 1) / tiles;
    if (parts > k / SPLIT_MIN_K) parts = k / SPLIT_MIN_K;
    if (parts > SPLIT_MAX_PARTS) parts = SPLIT_MAX_PARTS;
    while (parts > 1 && parts * m * n > SPLIT_MAX_ELEMS) parts--;
    return parts < 1 ? 1 : parts;
}

/* C = op(A) op(B) as `parts` products over consecutive ranges of K (one strided-batched
 * SGEMM into a scratch buffer, the last k % parts products added to part 0), then summed
 * in order into C (conv.cl's conv_sum_parts: one work-item per row). Deterministic. */
static kiln_status gemm_split(const mm_call *mc, const operand *a, const operand *b, cl_mem c, size_t m, size_t n,
                              size_t k, size_t lda, size_t aoff, size_t boff, size_t coff, size_t parts) {
    kiln_ctx *ctx = mc->ctx;
    size_t tm, tn, tk, ldb = (size_t)b->ld;
    kiln__sgemm_tiles(ctx, &tm, &tn, &tk);
    size_t len = k / parts;
    if (len >= tk) len = len / tk * tk;
    size_t rest = k - len * parts;
    /* a part's first element: A steps along its columns (rows when transposed), B along
     * its rows (columns when transposed) */
    size_t astep = a->trans ? len * lda : len, bstep = b->trans ? len : len * ldb;
    kiln_tensor *part = kiln__tensor_new(ctx, mc->op, KILN_F32, 1, (int64_t[]){(int64_t)(parts * m * n)});
    if (!part) return ctx->err;
    cl_mem pm = part->st->mem;
    size_t poff = (size_t)part->offset;
    CLBlastStatusCode s =
        (CLBlastStatusCode)kiln__sgemm(ctx, mc->op, a->trans, b->trans, m, n, len, 1.0f, a->t->st->mem, aoff, lda,
                                       astep, b->t->st->mem, boff, ldb, bstep, 0.0f, pm, poff, n, m * n, parts);
    kiln_status st =
        s == CLBlastSuccess ? KILN_OK : clblast_fail(mc, s, "CLBlastSgemmStridedBatched", m, n, len, parts);
    if (st == KILN_OK && rest > 0) {
        s = (CLBlastStatusCode)kiln__sgemm(ctx, mc->op, a->trans, b->trans, m, n, rest, 1.0f, a->t->st->mem,
                                           aoff + parts * astep, lda, 0, b->t->st->mem, boff + parts * bstep, ldb, 0,
                                           1.0f, pm, poff, n, m * n, 1);
        if (s != CLBlastSuccess) st = clblast_fail(mc, s, "CLBlastSgemm", m, n, rest, 1);
    }
    if (st == KILN_OK) {
        cl_int cpoff = (cl_int)poff, np = (cl_int)parts, cn = (cl_int)n, cdoff = (cl_int)coff, hdb = 0, zero = 0;
        cl_int rows = (cl_int)m;
        kiln__karg args[] = {KILN__ARG(pm), KILN__ARG(cpoff), KILN__ARG(np),    KILN__ARG(cn),
                             KILN__ARG(cn), KILN__ARG(c),     KILN__ARG(cdoff), KILN__ARG(hdb),
                             KILN__ARG(c),  KILN__ARG(zero),  KILN__ARG(rows)};
        st = kiln__launch(ctx, mc->op, "conv", "", "conv_sum_parts", sizeof args / sizeof args[0], args, m, 0);
    }
    /* the in-order queue runs every launch above before a later reuse of the scratch */
    kiln_tensor_free(part);
    return st;
}

/* C[batch] = op(A) op(B) for `batch` matrices at element offsets aoff + i*astride, ...;
 * one SGEMM when batch is 1 (split over K where that pays: split_parts), else one
 * strided-batched SGEMM. Enqueued only: no event is asked for (CLBlast accepts NULL) and
 * nothing waits. */
static kiln_status gemm(const mm_call *mc, const operand *a, const operand *b, cl_mem c, size_t m, size_t n, size_t k,
                        size_t lda, size_t aoff, size_t astride, size_t boff, size_t bstride, size_t coff,
                        size_t batch) {
    if (mc->half) {
        mc->ctx->hooks.matmul_last_parts = 1;
        return kiln__gemm_run_dt(mc->ctx, mc->op, mc->dt, a->trans, b->trans, m, n, k, 1.0f, a->t->st->mem, aoff, lda,
                                 astride, b->t->st->mem, boff, (size_t)b->ld, bstride, 0.0f, c, coff, n, m * n, batch);
    }
    /* kiln's own kernels (on CPUs) give every 4 x 4 or 8 x 32 block of C a work-item: enough
     * of them without a split */
    size_t parts = batch == 1 && !kiln__gemm_own_takes(mc->ctx, a->trans, b->trans, m, n, k, 1, 0.0f)
                       ? split_parts(mc->ctx, m, n, k)
                       : 1;
    mc->ctx->hooks.matmul_last_parts = parts; /* 1: not split */
    if (parts > 1) return gemm_split(mc, a, b, c, m, n, k, lda, aoff, boff, coff, parts);
    const char *routine = batch == 1 ? "CLBlastSgemm" : "CLBlastSgemmStridedBatched";
    CLBlastStatusCode s = (CLBlastStatusCode)kiln__sgemm(mc->ctx, mc->op, a->trans, b->trans, m, n, k, 1.0f,
                                                         a->t->st->mem, aoff, lda, astride, b->t->st->mem, boff,
                                                         (size_t)b->ld, bstride, 0.0f, c, coff, n, m * n, batch);
    return s == CLBlastSuccess ? KILN_OK : clblast_fail(mc, s, routine, m, n, k, batch);
}

/* Enqueues every product: the batch dims of size > 1 (shape sh, A/B strides sa/sb) are
 * split into leading dims looped on the host and a trailing run done in one call. */
static kiln_status run_batches(const mm_call *mc, const operand *a, const operand *b, kiln_tensor *out, int64_t m,
                               int64_t n, int64_t k, int nd, const int64_t *sh, const int64_t *sa, const int64_t *sb) {
    size_t coff0 = (size_t)out->offset;
    int64_t batch = 1;
    bool b_batched = false, a_linear = true;
    for (int d = 0; d < nd; d++) {
        batch *= sh[d];
        b_batched |= sb[d] != 0;
        if (d + 1 < nd) a_linear &= sa[d] == sa[d + 1] * sh[d + 1];
    }
    if (nd == 0)
        return gemm(mc, a, b, out->st->mem, (size_t)m, (size_t)n, (size_t)k, (size_t)a->ld, (size_t)a->t->offset, 0,
                    (size_t)b->t->offset, 0, coff0, 1);

    /* Fold the batches into M: A's batch stride must continue its rows. */
    if (!b_batched && a_linear && !a->trans) {
        int64_t st = sa[nd - 1];
        if (st == m * a->ld || (m == 1 && st >= k))
            return gemm(mc, a, b, out->st->mem, (size_t)(batch * m), (size_t)n, (size_t)k,
                        (size_t)(m == 1 ? st : a->ld), (size_t)a->t->offset, 0, (size_t)b->t->offset, 0, coff0, 1);
    }

    /* Trailing dims j..nd-1 whose offsets are linear in the flat index for both. */
    int j = nd - 1;
    while (j > 0 && sa[j - 1] == sa[j] * sh[j] && sb[j - 1] == sb[j] * sh[j]) j--;
    int64_t inner = 1, outer = 1;
    for (int d = j; d < nd; d++) inner *= sh[d];
    for (int d = 0; d < j; d++) outer *= sh[d];
    int64_t idx[KILN_MAX_DIMS] = {0};
    for (int64_t o = 0; o < outer; o++) {
        int64_t aoff = a->t->offset, boff = b->t->offset;
        for (int d = 0; d < j; d++) {
            aoff += idx[d] * sa[d];
            boff += idx[d] * sb[d];
        }
        kiln_status s = gemm(mc, a, b, out->st->mem, (size_t)m, (size_t)n, (size_t)k, (size_t)a->ld, (size_t)aoff,
                             (size_t)sa[nd - 1], (size_t)boff, (size_t)sb[nd - 1], coff0 + (size_t)(o * inner * m * n),
                             (size_t)inner);
        if (s != KILN_OK) return s;
        for (int d = j - 1; d >= 0 && ++idx[d] == sh[d]; d--) idx[d] = 0;
    }
    return KILN_OK;
}

/* "[3, 2] (transposed)" for messages. */
static char *operand_str(const kiln_tensor *t, bool flagged, char *buf, size_t cap) {
    kiln__shape_str(t->ndim, t->shape, buf, cap);
    if (flagged && t->ndim >= 2) {
        size_t len = strlen(buf);
        snprintf(buf + len, cap - len, " (transposed)");
    }
    return buf;
}

static kiln_tensor *matmul(kiln_ctx *ctx, const char *op, kiln_tensor *a, kiln_tensor *b, int flags) {
    kiln_tensor *in[2] = {a, b};
    if (!kiln__check_inputs(ctx, op, 2, in)) return NULL;
    char s1[192], s2[192];
    bool ta = (flags & KILN_TRANS_A) != 0, tb = (flags & KILN_TRANS_B) != 0;
    if (flags & ~(KILN_TRANS_A | KILN_TRANS_B)) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: unknown flags 0x%x", op, (unsigned)flags);
        return NULL;
    }
    bool fa = a->dtype == KILN_F32 || kiln_dtype_is_half(a->dtype),
         fb = b->dtype == KILN_F32 || kiln_dtype_is_half(b->dtype);
    if (!fa || !fb) {
        kiln__fail(ctx, KILN_ERR_DTYPE, "%s: f32, f16 and bf16 are supported, got %s %s and %s %s", op,
                   kiln_dtype_name(a->dtype), kiln__shape_str(a->ndim, a->shape, s1, sizeof s1),
                   kiln_dtype_name(b->dtype), kiln__shape_str(b->ndim, b->shape, s2, sizeof s2));
        return NULL;
    }
    if (a->ndim == 0 || b->ndim == 0) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: shapes %s and %s: both operands need at least 1 dim", op,
                   kiln__shape_str(a->ndim, a->shape, s1, sizeof s1),
                   kiln__shape_str(b->ndim, b->shape, s2, sizeof s2));
        return NULL;
    }
    /* one half dtype: its output is half; f32 and a half: f32 (torch's promotion), each
     * operand read in its own dtype */
    kiln_dtype odt = a->dtype == b->dtype ? a->dtype : KILN_F32;
    mm_call mc = {ctx, op, a, b, {a->dtype, b->dtype, odt}, a->dtype != KILN_F32 || b->dtype != KILN_F32};
    operand oa, ob;
    describe(&oa, a, true);
    describe(&ob, b, false);
    /* A 1-D operand has no pair of dims to swap: its flag changes nothing. */
    ta &= !oa.vec;
    tb &= !ob.vec;
    int64_t m = ta ? oa.cols : oa.rows, k = ta ? oa.rows : oa.cols;
    int64_t kb = tb ? ob.cols : ob.rows, n = tb ? ob.rows : ob.cols;
    if (k != kb) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: shapes %s and %s do not match (%lld != %lld)", op,
                   operand_str(a, ta, s1, sizeof s1), operand_str(b, tb, s2, sizeof s2), (long long)k, (long long)kb);
        return NULL;
    }

    /* Broadcast the batch dims (right-aligned); a missing or size-1 dim reads stride 0. */
    int nbo = oa.nb > ob.nb ? oa.nb : ob.nb;
    int64_t oshape[KILN_MAX_DIMS + 2], sh[KILN_MAX_DIMS], sa[KILN_MAX_DIMS], sb[KILN_MAX_DIMS];
    int nd = 0;
    for (int d = 0; d < nbo; d++) {
        int da = d - (nbo - oa.nb), db = d - (nbo - ob.nb);
        int64_t na = da >= 0 ? oa.bshape[da] : 1, nbb = db >= 0 ? ob.bshape[db] : 1;
        if (na != nbb && na != 1 && nbb != 1) {
            kiln__fail(ctx, KILN_ERR_SHAPE,
                       "%s: shapes %s and %s do not match: batch dims do not broadcast (%lld vs %lld at batch dim %d)",
                       op, operand_str(a, ta, s1, sizeof s1), operand_str(b, tb, s2, sizeof s2), (long long)na,
                       (long long)nbb, d);
            return NULL;
        }
        oshape[d] = na == 1 ? nbb : na; /* 0 against 1 gives 0 */
        if (oshape[d] == 1) continue;
        sh[nd] = oshape[d];
        sa[nd] = na == 1 ? 0 : oa.bstrides[da];
        sb[nd] = nbb == 1 ? 0 : ob.bstrides[db];
        nd++;
    }
    int ond = nbo;
    if (!oa.vec) oshape[ond++] = m;
    if (!ob.vec) oshape[ond++] = n;

    kiln_tensor *out = kiln__tensor_new(ctx, op, odt, ond, oshape);
    if (!out) return NULL;
    if (kiln__numel(ond, oshape) == 0) return out;
    if (k == 0) {
        if (kiln_fill(out, 0.0f) != KILN_OK) {
            kiln_tensor_free(out);
            return NULL;
        }
        return out;
    }

    /* Operands CLBlast cannot read in place become contiguous copies (then always can). */
    kiln_tensor *copies[2] = {NULL, NULL};
    operand *ops[2] = {&oa, &ob};
    bool want[2] = {ta, tb};
    kiln_status st = KILN_OK;
    for (int i = 0; i < 2 && st == KILN_OK; i++) {
        if (blas_layout(ops[i], want[i])) continue;
        copies[i] = kiln__copy_contiguous(ctx, op, in[i]);
        if (!copies[i]) {
            st = ctx->err;
            break;
        }
        describe(ops[i], copies[i], i == 0);
        blas_layout(ops[i], want[i]);
        /* the copy's batch strides replace the view's */
        for (int d = 0, q = 0; d < nbo; d++) {
            if (oshape[d] == 1) continue;
            int di = d - (nbo - ops[i]->nb);
            int64_t stv = (di >= 0 && ops[i]->bshape[di] != 1) ? ops[i]->bstrides[di] : 0;
            if (i == 0)
                sa[q] = stv;
            else
                sb[q] = stv;
            q++;
        }
    }
    if (st == KILN_OK) st = run_batches(&mc, &oa, &ob, out, m, n, k, nd, sh, sa, sb);
    /* The in-order queue runs the GEMM before any later reuse of a copy's buffer. */
    kiln_tensor_free(copies[0]);
    kiln_tensor_free(copies[1]);
    if (st != KILN_OK) {
        kiln_tensor_free(out);
        return NULL;
    }
    return out;
}

/* t [..., r, c] as a [rows, c] view when t is contiguous with batch dims, else NULL. With a
 * 2-D weight W and a batched operand X, the weight's gradient X^T G summed over the batch
 * is then one product over every row, as PyTorch computes it, instead of a product per
 * batch and a sum of the batch's products. */
static kiln_tensor *fold_rows(kiln_ctx *ctx, kiln_tensor *t) {
    if (t->ndim < 3 || !kiln__is_contiguous(t)) return NULL;
    int64_t c = t->shape[t->ndim - 1];
    return kiln_reshape(ctx, t, 2, (int64_t[]){c ? kiln__numel(t->ndim, t->shape) / c : 0, c});
}

/* ---- backward ------------------------------------------------------------------------
 * With C = op(A) op(B): d op(A) = dC op(B)^T and d op(B) = op(A)^T dC; the transposes map
 * onto matmul_ex flags, so no operand is copied. 1-D operands are promoted as in the
 * forward (the gradient of the removed dim is put back first) and their gradients summed
 * back to 1-D; broadcast batch dims are summed by kiln__accum. */
static kiln_status bw_matmul(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) {
    const matmul_state *st = KILN__NODE_STATE(n, matmul_state);
    if (!st) return ctx->err;
    kiln_tensor *a = n->in[0], *b = n->in[1];
    bool ta = st->flags & KILN_TRANS_A, tb = st->flags & KILN_TRANS_B;
    kiln_status s = KILN_OK;
    kiln_scope_begin(ctx);
    kiln_tensor *A = a, *B = b, *G = g;
    if (a->ndim == 1) {
        A = kiln_unsqueeze(ctx, a, 0); /* [1, k] */
        G = kiln_unsqueeze(ctx, G, G->ndim - (b->ndim == 1 ? 0 : 1));
    }
    if (b->ndim == 1) {
        B = kiln_unsqueeze(ctx, b, 1); /* [k, 1] */
        G = kiln_unsqueeze(ctx, G, G->ndim);
    }
    if (kiln__input_needs_grad(n, 0)) {
        kiln_tensor *ga = !ta ? kiln_matmul_ex(ctx, G, B, tb ? 0 : KILN_TRANS_B)
                              : kiln_matmul_ex(ctx, B, G, (tb ? KILN_TRANS_A : 0) | KILN_TRANS_B);
        if (ga && a->ndim == 1) ga = kiln_squeeze(ctx, ga, ga->ndim - 2);
        s = kiln__accum_owned(ctx, n, 0, ga);
    }
    if (s == KILN_OK && kiln__input_needs_grad(n, 1)) {
        /* a batched A with a 2-D B: the batches fold into the product's inner dim */
        kiln_tensor *A2 = !ta && b->ndim == 2 ? fold_rows(ctx, A) : NULL, *G2 = A2 ? fold_rows(ctx, G) : NULL;
        if (G2) A = A2, G = G2;
        kiln_tensor *gb = !tb ? kiln_matmul_ex(ctx, A, G, ta ? 0 : KILN_TRANS_A)
                              : kiln_matmul_ex(ctx, G, A, KILN_TRANS_A | (ta ? KILN_TRANS_B : 0));
        if (gb && b->ndim == 1) gb = kiln_squeeze(ctx, gb, gb->ndim - 1);
        s = kiln__accum_owned(ctx, n, 1, gb);
    }
    kiln_scope_end(ctx);
    return s;
}

static kiln_tensor *matmul_recorded(kiln_ctx *ctx, const char *op, kiln_tensor *a, kiln_tensor *b, int flags) {
    kiln_tensor *in[2] = {a, b}, *cast[2];
    int nc = kiln__autocast_inputs(ctx, 2, in, cast); /* autocast: f32 operands to half */
    if (nc != 0) {
        kiln_tensor *r = nc > 0 ? matmul_recorded(ctx, op, cast[0], cast[1], flags) : NULL;
        kiln__half_release(2, in, cast);
        return r;
    }
    kiln_tensor *out = matmul(ctx, op, a, b, flags);
    if (out && kiln__grad_wanted(ctx, 2, in)) {
        kiln__node *n = kiln__node_new(ctx, op, out, 2, in, bw_matmul);
        if (!n) {
            kiln_tensor_free(out);
            return NULL;
        }
        matmul_state *st = KILN__NODE_STATE_NEW(n, matmul_state);
        if (!st) {
            kiln_tensor_free(out);
            return NULL;
        }
        st->flags = flags;
    }
    return kiln__finish(ctx, op, out);
}

kiln_tensor *kiln_matmul(kiln_ctx *ctx, kiln_tensor *a, kiln_tensor *b) {
    return matmul_recorded(ctx, "kiln_matmul", a, b, 0);
}

kiln_tensor *kiln_matmul_ex(kiln_ctx *ctx, kiln_tensor *a, kiln_tensor *b, int flags) {
    return matmul_recorded(ctx, "kiln_matmul_ex", a, b, flags);
}

/* ---- linear: x W^T + b with the bias added in the GEMM's store --------------------------
 * The unfused forward is kiln_matmul_ex and kiln_add: two launches, the second reading and
 * writing the whole output once more. Where kiln's own A B^T kernel takes the product
 * (kiln__gemm_bias_takes) and x [..., in] and W [out, in] are contiguous, gemm_nt adds
 * b[j] to column j as it stores, rounded as kiln_add rounds it. The backward is the two
 * ops' backward, with the same products (bw_matmul's): d x = g W, d W = g^T x (one
 * product over the rows of every batch where x has leading dims), d b = g summed down to
 * b's shape by kiln__accum (as kiln_add's backward does). */
static kiln_status bw_linear(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) {
    kiln_tensor *x = n->in[0], *w = n->in[1];
    kiln_status s = KILN_OK;
    kiln_scope_begin(ctx);
    if (kiln__input_needs_grad(n, 0)) s = kiln__accum_owned(ctx, n, 0, kiln_matmul_ex(ctx, g, w, 0));
    if (s == KILN_OK && kiln__input_needs_grad(n, 1)) {
        kiln_tensor *x2 = fold_rows(ctx, x), *g2 = x2 ? fold_rows(ctx, g) : NULL;
        s = kiln__accum_owned(ctx, n, 1,
                              g2 ? kiln_matmul_ex(ctx, g2, x2, KILN_TRANS_A) : kiln_matmul_ex(ctx, g, x, KILN_TRANS_A));
    }
    if (s == KILN_OK && kiln__input_needs_grad(n, 2)) s = kiln__accum(ctx, n, 2, g);
    kiln_scope_end(ctx);
    return s;
}

/* relu(x W^T + b) fused: relu's backward, then bw_linear's products */
static kiln_status bw_linear_relu(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) {
    return kiln__relu_backward_then(ctx, n, g, bw_linear);
}

static kiln_tensor *linear(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *w, kiln_tensor *b, bool relu);

kiln_tensor *kiln__linear(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *w, kiln_tensor *b) {
    return linear(ctx, op, x, w, b, false);
}

kiln_tensor *kiln__linear_relu(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *w, kiln_tensor *b) {
    return linear(ctx, op, x, w, b, true);
}

/* The unfused ops: relu of kiln__linear's. */
static kiln_tensor *linear_unfused(kiln_ctx *ctx, kiln_tensor *y, bool relu) {
    if (!relu || !y) return y;
    kiln_tensor *r = kiln_relu(ctx, y);
    kiln_tensor_free(y);
    return r;
}

static kiln_tensor *linear(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *w, kiln_tensor *b, bool relu) {
    if (!b) return linear_unfused(ctx, kiln_matmul_ex(ctx, x, w, KILN_TRANS_B), relu);
    kiln_tensor *in3[3] = {x, w, b}, *cast[3];
    int nc = kiln__autocast_inputs(ctx, 3, in3, cast); /* autocast: x, W and b to half */
    if (nc != 0) {
        kiln_tensor *r = nc > 0 ? linear(ctx, op, cast[0], cast[1], cast[2], relu) : NULL;
        kiln__half_release(3, in3, cast);
        return r;
    }
    /* fused: f32, or x, W and b of one half dtype (kiln's own kernel reads them) */
    bool same = x && w && (x->dtype == KILN_F32 || kiln_dtype_is_half(x->dtype)) && w->dtype == x->dtype &&
                b->dtype == x->dtype;
    bool fuse = same && x->ndim >= 2 && w->ndim == 2 && b->ndim == 1 && x->shape[x->ndim - 1] == w->shape[1] &&
                b->shape[0] == w->shape[0] && kiln__is_contiguous(x) && kiln__is_contiguous(w);
    int64_t in = fuse ? w->shape[1] : 0, out = fuse ? w->shape[0] : 0;
    int64_t rows = fuse ? kiln__numel(x->ndim, x->shape) / (in ? in : 1) : 0;
    fuse = fuse && rows > 0 && in > 0 && out > 0 &&
           kiln__gemm_bias_takes(ctx, false, true, (size_t)rows, (size_t)out, (size_t)in, 1);
    if (!fuse) return linear_unfused(ctx, kiln_add(ctx, kiln_matmul_ex(ctx, x, w, KILN_TRANS_B), b), relu);
    kiln_tensor *inputs[3] = {x, w, b};
    if (!kiln__check_inputs(ctx, op, 3, inputs)) return NULL;
    if (ctx->hooks.gemm_seen)
        ctx->hooks.gemm_seen(ctx->hooks.gemm_seen_arg, op, false, true, (size_t)rows, (size_t)out, (size_t)in, 1);
    int64_t oshape[KILN_MAX_DIMS];
    memcpy(oshape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
    oshape[x->ndim - 1] = out;
    kiln_tensor *y = kiln__tensor_new(ctx, op, x->dtype, x->ndim, oshape);
    if (!y) return NULL;
    kiln_dtype dt[4] = {x->dtype, x->dtype, x->dtype, x->dtype};
    if (kiln__gemm_run_bias(ctx, op, (size_t)rows, (size_t)out, (size_t)in, x->st->mem, (size_t)x->offset, (size_t)in,
                            w->st->mem, (size_t)w->offset, (size_t)in, y->st->mem, (size_t)y->offset, (size_t)out,
                            b->st->mem, (size_t)b->offset, (size_t)b->strides[0], x->dtype == KILN_F32 ? NULL : dt,
                            relu) != KILN_OK) {
        kiln_tensor_free(y);
        return NULL;
    }
    if (kiln__grad_wanted(ctx, 3, inputs) &&
        !kiln__node_new(ctx, op, y, 3, inputs, relu ? bw_linear_relu : bw_linear)) {
        kiln_tensor_free(y);
        return NULL;
    }
    return kiln__finish(ctx, op, y);
}

/* src/ops/conv.c - 2-D convolution and transposed convolution, forward and backward, as
 * im2col/col2im kernels (cl_kernels/conv.cl) around GEMMs: kiln's own kernels on CPUs,
 * CLBlast elsewhere (kiln__sgemm decides, src/ops/gemm.c).
 *
 * Columns are laid out with a chunk's images side by side ([groups*kg][images*HW], kg =
 * Cin/groups*kH*kW), so each product is one GEMM over every image of the chunk, batched
 * over groups (groups 1: one plain GEMM). Two cores do all the work; "input" and "output"
 * are those of a convolution:
 *
 *   conv_fwd    out_g [Cout/g, N*HW] = W_g x cols_g(x), then a permute to NCHW that adds
 *               the bias on the way (one image without bias: the GEMM writes NCHW itself).
 *   conv_bwd    from gy (the output's gradient), permuted to [Cout, N*HW]:
 *                 d input: cols_g = W_g^T gy_g, then col2im gathers each input element's
 *                          entries in a fixed order (deterministic, no atomics), adding an
 *                          optional bias on the way (conv_transpose2d's forward);
 *                 d weight: dW_g = gy_g cols_g(x)^T. kiln's own A B^T kernel reads the
 *                          plain columns as they are; for CLBlast, im2col_t writes them
 *                          already transposed ([N*HW, kg] rows), so it has no 42 MB operand
 *                          to transpose (conv(32, 64, 3) of the reference CNN). Chunks
 *                          accumulate (beta 1) in order; the pixels are split into parts
 *                          summed after. With CLBlast, weights with few taps per output
 *                          channel (kg <= 32: first layers, depthwise) skip the columns:
 *                          conv_wgrad_small computes dW (and d bias) from x and gy directly.
 *               Where CLBlast computes the input gradient and its tile is known, kg is
 *               padded up to it (288 -> 320) when that adds at most a quarter: CLBlast then
 *               reads and writes the column buffers in place instead of copying them into
 *               padded ones (the input gradient's GEMM of conv(32, 64, 3) went from 45 to
 *               10 ms).
 *   d bias      conv2d: row sums of the permuted gy (made for the other gradients anyway);
 *               conv_transpose2d, or the bias alone: a deterministic kiln_sum over N, H, W.
 *
 * conv_transpose2d is the adjoint: its forward is conv_bwd's input gradient (with the
 * transposed conv's input as gy), its input gradient conv_fwd of its output gradient, its
 * weight gradient conv_bwd's weight gradient with the roles of x and gy exchanged. Weight
 * [Cin, Cout/groups, kH, kW] of conv_transpose2d is exactly the weight of that
 * convolution.
 *
 * Why one GEMM over the images (rather than a GEMM per image, which writes NCHW directly),
 * as measured with CLBlast before kiln had its own kernels: on POCL with CLBlast's default
 * parameters both run at the same ~20 GFLOPS for the
 * reference CNN's layers (64x288 times 288x576 per image), the backward products are 20-30%
 * faster as one GEMM, and once CLBlast is tuned for the device, large products switch to
 * its faster indirect kernel (2.7x on conv(32, 64, 3)'s forward in a trial), which per-image
 * products are too small for. K = kg is kept as is (no bias row appended) because the
 * indirect kernel pads K that is not a multiple of its tile, which cost 4x in the same
 * trial.
 *
 * Column buffers come from the pool and hold at most `chunk_budget` elements: the batch is
 * processed in chunks of images that fit (one image at least). One image's columns must
 * stay below 2^31 elements (kernels index with 32-bit ints); beyond that the op fails.
 */
#include <stdio.h>
#include <string.h>

#include "../kiln_internal.h" /* before clblast_c.h: it picks the OpenCL target version */

#include <clblast_c.h>

#define CONV_PROGRAM "conv"
#define CONV_OPTIONS ""
/* Largest buffer a kernel may index with 32-bit ints (as tensor.c's cap). */
#define CONV_MAX_ELEMS ((int64_t)INT32_MAX - 65536)

/* Elements of column (plus permuted gradient) buffer per chunk; 16 Mi floats = 64 MiB. */
#define CHUNK_BUDGET ((int64_t)1 << 24)
static int64_t chunk_budget = CHUNK_BUDGET;

/* The weight gradient's long inner dim (images x pixels) is split into parts that one
 * batched GEMM computes and a kernel sums after: a weight gradient is a small matrix
 * (64 x 320 for the reference CNN's second layer: five 64 x 64 tiles) that a GEMM tiles
 * into very few work-groups, leaving cores idle. Up to SPLIT_PER_UNIT parts per compute unit, each at
 * least split_min_k long, at most SPLIT_MAX. (With CLBlast's default parameters on POCL
 * this changes nothing; with XgemmDirect tuned for the CPU, 2 parts made the first layer's
 * weight gradient 2x and the second's 15% faster in a trial; with kiln's CPU table, whose
 * indirect kernel tiles 64 x 64, 8 parts instead of 2 took another 20% off conv(32, 64,
 * 3)'s backward, CPU time 198-222 -> 162-168 ms under load, kiln bench ops; over the
 * transposed columns, 2, 4 and 8 parts per unit measured the same within noise.) */
#define SPLIT_MIN_K 4096
#define SPLIT_MAX 16
#define SPLIT_PER_UNIT 4
static int64_t split_min_k = SPLIT_MIN_K;

/* Test hook (tests/test_conv.c declares it): a smaller chunk budget forces several chunks,
 * a smaller split_min splits small weight gradients; 0 restores a default. */
KILN_API void kiln__conv_tuning(int64_t budget, int64_t split_min);
void kiln__conv_tuning(int64_t budget, int64_t split_min) {
    chunk_budget = budget > 0 ? budget : CHUNK_BUDGET;
    split_min_k = split_min > 0 ? split_min : SPLIT_MIN_K;
}

/* Mirrors conv_geom in cl_kernels/conv.cl. */
typedef struct conv_geom {
    cl_int n, c, h, w;   /* convolution input */
    cl_int cout, ho, wo; /* convolution output */
    cl_int kh, kw, sh, sw, ph, pw, dh, dw;
    cl_int groups;
} conv_geom;

/* ---- CLBlast ------------------------------------------------------------------------ */

/* A matrix operand: buffer, element offset, leading dim, batch stride, transpose flag. */
typedef struct gmat {
    cl_mem mem;
    size_t off, ld, stride;
    bool trans;
} gmat;

static gmat gm(kiln_tensor *t, size_t off, size_t ld, size_t stride, bool trans) {
    return (gmat){t->st->mem, (size_t)t->offset + off, ld, stride, trans};
}

/* C = op(A) op(B) (+ beta C) for `batch` matrices; row-major; enqueued only. */
static kiln_status gemm(kiln_ctx *ctx, const char *op, size_t m, size_t n, size_t k, gmat a, gmat b, float beta, gmat c,
                        size_t batch) {
    const char *routine = batch == 1 ? "CLBlastSgemm" : "CLBlastSgemmStridedBatched";
    CLBlastStatusCode s = (CLBlastStatusCode)kiln__sgemm(ctx, op, a.trans, b.trans, m, n, k, 1.0f, a.mem, a.off, a.ld,
                                                         a.stride, b.mem, b.off, b.ld, b.stride, beta, c.mem, c.off,
                                                         c.ld, c.stride, batch);
    if (s == CLBlastSuccess) return KILN_OK;
    if ((int)s == KILN__SGEMM_FAILED) return ctx->err; /* kiln's own kernel said why */
    /* CLBlast's codes above -1000 are OpenCL's own. */
    if (s > -1000)
        return kiln__fail(ctx, kiln__cl_status((cl_int)s),
                          "%s: %s (m=%zu n=%zu k=%zu batch=%zu) failed on '%s': %s (%d)", op, routine, m, n, k, batch,
                          ctx->info.name, kiln__cl_name((cl_int)s), (int)s);
    return kiln__fail(ctx, KILN_ERR_CLBLAST, "%s: %s (m=%zu n=%zu k=%zu batch=%zu) failed on '%s': CLBlast status %d",
                      op, routine, m, n, k, batch, ctx->info.name, (int)s);
}

/* ---- kernel launches ---------------------------------------------------------------- */

static cl_int4 strides4(const kiln_tensor *t) {
    cl_int4 s;
    s.s[0] = (cl_int)t->strides[0];
    s.s[1] = (cl_int)t->strides[1];
    s.s[2] = (cl_int)t->strides[2];
    s.s[3] = (cl_int)t->strides[3];
    return s;
}

/* Transposed columns [nb*HW, groups*kgp] of images n0 .. n0+nb-1 of x (any view) into col,
 * each group's kg columns padded with zeros to kgp. */
static kiln_status im2col_t(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *col, const conv_geom *g,
                            int64_t kgp, int n0, int nb) {
    cl_int xoff = (cl_int)x->offset, coff = (cl_int)col->offset, ckgp = (cl_int)kgp, cn0 = n0, cnb = nb;
    cl_int4 xs = strides4(x);
    cl_int nitems = nb * g->ho;
    kiln__karg args[] = {KILN__ARG(x->st->mem),   KILN__ARG(xoff), KILN__ARG(xs),  KILN__ARG(col->st->mem),
                         KILN__ARG(coff),         KILN__ARG(*g),   KILN__ARG(ckgp), KILN__ARG(cn0),
                         KILN__ARG(cnb),          KILN__ARG(nitems)};
    return kiln__launch(ctx, op, CONV_PROGRAM, CONV_OPTIONS, "conv_im2col_t", sizeof args / sizeof args[0], args,
                        (size_t)nitems, 0);
}

/* dst [rows, kgp] = the contiguous [rows, kg] src with zero columns appended. */
static kiln_status pad_cols(kiln_ctx *ctx, const char *op, kiln_tensor *src, int64_t rows, int64_t kg, int64_t kgp,
                            kiln_tensor *dst) {
    cl_int soff = (cl_int)src->offset, doff = (cl_int)dst->offset, ckg = (cl_int)kg, ckgp = (cl_int)kgp;
    cl_int nitems = (cl_int)rows;
    kiln__karg args[] = {KILN__ARG(src->st->mem), KILN__ARG(soff), KILN__ARG(ckg),   KILN__ARG(ckgp),
                         KILN__ARG(dst->st->mem), KILN__ARG(doff), KILN__ARG(nitems)};
    return kiln__launch(ctx, op, CONV_PROGRAM, CONV_OPTIONS, "conv_pad_cols", sizeof args / sizeof args[0], args,
                        (size_t)nitems, 0);
}

/* Columns of images n0 .. n0+nb-1 of x (any view) into col. */
static kiln_status im2col(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *col, const conv_geom *g, int n0,
                          int nb) {
    cl_int xoff = (cl_int)x->offset, coff = (cl_int)col->offset, cn0 = n0, cnb = nb;
    cl_int4 xs = strides4(x);
    cl_int nitems = nb * g->c * g->kh * g->kw;
    kiln__karg args[] = {KILN__ARG(x->st->mem),   KILN__ARG(xoff), KILN__ARG(xs),
                         KILN__ARG(col->st->mem), KILN__ARG(coff), KILN__ARG(*g),
                         KILN__ARG(cn0),          KILN__ARG(cnb),  KILN__ARG(nitems)};
    return kiln__launch(ctx, op, CONV_PROGRAM, CONV_OPTIONS, "conv_im2col", sizeof args / sizeof args[0], args,
                        (size_t)nitems, 0);
}

/* Images n0 .. n0+nb-1 of out (contiguous NCHW, the convolution input's shape) from the
 * columns in col, plus bias[c] when bias is given. */
static kiln_status col2im(kiln_ctx *ctx, const char *op, kiln_tensor *col, kiln_tensor *out, kiln_tensor *bias,
                          const conv_geom *g, int64_t kgp, int n0, int nb) {
    cl_int coff = (cl_int)col->offset, ooff = (cl_int)out->offset, cn0 = n0, cnb = nb, hb = bias != NULL;
    cl_int ckgp = (cl_int)kgp;
    cl_int boff = bias ? (cl_int)bias->offset : 0;
    cl_mem bmem = bias ? bias->st->mem : col->st->mem;
    cl_int nitems = nb * g->c * g->h;
    kiln__karg args[] = {KILN__ARG(col->st->mem), KILN__ARG(coff), KILN__ARG(out->st->mem), KILN__ARG(ooff),
                         KILN__ARG(bmem),         KILN__ARG(boff), KILN__ARG(hb),           KILN__ARG(*g),
                         KILN__ARG(ckgp),         KILN__ARG(cn0),  KILN__ARG(cnb),          KILN__ARG(nitems)};
    return kiln__launch(ctx, op, CONV_PROGRAM, CONV_OPTIONS, "conv_col2im", sizeof args / sizeof args[0], args,
                        (size_t)nitems, 0);
}

/* dst [nc, nb, ph*pw] from images n0 .. n0+nb-1 of the NCHW view src. */
static kiln_status to_cnhw(kiln_ctx *ctx, const char *op, kiln_tensor *src, kiln_tensor *dst, int n0, int nb) {
    cl_int soff = (cl_int)src->offset, doff = (cl_int)dst->offset, cn0 = n0, cnb = nb;
    cl_int nc = (cl_int)src->shape[1], ph = (cl_int)src->shape[2], pw = (cl_int)src->shape[3];
    cl_int4 ss = strides4(src);
    cl_int nitems = nb * nc;
    kiln__karg args[] = {KILN__ARG(src->st->mem), KILN__ARG(soff), KILN__ARG(ss),    KILN__ARG(dst->st->mem),
                         KILN__ARG(doff),         KILN__ARG(nc),   KILN__ARG(ph),    KILN__ARG(pw),
                         KILN__ARG(cn0),          KILN__ARG(cnb),  KILN__ARG(nitems)};
    return kiln__launch(ctx, op, CONV_PROGRAM, CONV_OPTIONS, "conv_to_cnhw", sizeof args / sizeof args[0], args,
                        (size_t)nitems, 0);
}

/* Images n0 .. n0+nb-1 of out (contiguous NCHW) from the [cout, nb, HW] tmp, plus bias. */
static kiln_status from_cnhw(kiln_ctx *ctx, const char *op, kiln_tensor *tmp, kiln_tensor *out, kiln_tensor *bias,
                             int n0, int nb) {
    cl_int soff = (cl_int)tmp->offset, doff = (cl_int)out->offset, hb = bias != NULL, cn0 = n0, cnb = nb;
    cl_int boff = bias ? (cl_int)bias->offset : 0;
    cl_mem bmem = bias ? bias->st->mem : tmp->st->mem;
    cl_int nc = (cl_int)out->shape[1], hw = (cl_int)(out->shape[2] * out->shape[3]), nitems = nb * nc;
    kiln__karg args[] = {KILN__ARG(tmp->st->mem), KILN__ARG(soff), KILN__ARG(out->st->mem), KILN__ARG(doff),
                         KILN__ARG(bmem),         KILN__ARG(boff), KILN__ARG(hb),           KILN__ARG(nc),
                         KILN__ARG(hw),           KILN__ARG(cn0),  KILN__ARG(cnb),          KILN__ARG(nitems)};
    return kiln__launch(ctx, op, CONV_PROGRAM, CONV_OPTIONS, "conv_from_cnhw", sizeof args / sizeof args[0], args,
                        (size_t)nitems, 0);
}

/* db (+)= the row sums of the [cout, ld] matrix gb. */
static kiln_status bias_rows(kiln_ctx *ctx, const char *op, const gmat *gb, kiln_tensor *db, bool accumulate) {
    cl_int soff = (cl_int)gb->off, ld = (cl_int)gb->ld, dboff = (cl_int)db->offset, acc = accumulate;
    cl_int nitems = (cl_int)db->shape[0];
    kiln__karg args[] = {KILN__ARG(gb->mem), KILN__ARG(soff), KILN__ARG(ld),    KILN__ARG(db->st->mem),
                         KILN__ARG(dboff),   KILN__ARG(acc),  KILN__ARG(nitems)};
    /* one work-item per group: a handful of channels still spreads over every core */
    return kiln__launch(ctx, op, CONV_PROGRAM, CONV_OPTIONS, "conv_bias_grad", sizeof args / sizeof args[0], args,
                        (size_t)nitems, 1);
}

/* dst [rows, kg] = the sum, in order, of the nparts consecutive [rows, kgp] partials in part
 * (their padding columns dropped). */
static kiln_status sum_parts(kiln_ctx *ctx, const char *op, kiln_tensor *part, int nparts, int64_t rows, int64_t kg,
                             int64_t kgp, kiln_tensor *dst, kiln_tensor *db) {
    cl_int poff = (cl_int)part->offset, np = nparts, doff = (cl_int)dst->offset, ckg = (cl_int)kg;
    cl_int ckgp = (cl_int)kgp, nitems = (cl_int)rows, hdb = db != NULL, dboff = db ? (cl_int)db->offset : 0;
    cl_mem dbm = db ? db->st->mem : dst->st->mem;
    kiln__karg args[] = {KILN__ARG(part->st->mem), KILN__ARG(poff), KILN__ARG(np),    KILN__ARG(ckg),
                         KILN__ARG(ckgp),          KILN__ARG(dst->st->mem), KILN__ARG(doff), KILN__ARG(hdb),
                         KILN__ARG(dbm),           KILN__ARG(dboff), KILN__ARG(nitems)};
    return kiln__launch(ctx, op, CONV_PROGRAM, CONV_OPTIONS, "conv_sum_parts", sizeof args / sizeof args[0], args,
                        (size_t)nitems, 0);
}

/* Largest kg (input channels per group x taps) whose weight gradient conv_wgrad_small
 * computes; its private sums are sized for it (cl_kernels/conv.cl). */
#define SMALL_KG 32

/* part [nparts, cout, kg+1] = conv_wgrad_small's partial weight and bias gradients. */
static kiln_status wgrad_small(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *gy, kiln_tensor *part,
                               const conv_geom *g, int nparts) {
    cl_int xoff = (cl_int)x->offset, gyoff = (cl_int)gy->offset, poff = (cl_int)part->offset, np = nparts;
    cl_int4 xs = strides4(x), gs = strides4(gy);
    cl_int nitems = g->cout * nparts;
    kiln__karg args[] = {KILN__ARG(x->st->mem),    KILN__ARG(xoff), KILN__ARG(xs), KILN__ARG(gy->st->mem),
                         KILN__ARG(gyoff),         KILN__ARG(gs),   KILN__ARG(part->st->mem),
                         KILN__ARG(poff),          KILN__ARG(*g),   KILN__ARG(np), KILN__ARG(nitems)};
    return kiln__launch(ctx, op, CONV_PROGRAM, CONV_OPTIONS, "conv_wgrad_small", sizeof args / sizeof args[0], args,
                        (size_t)nitems, 0);
}

/* Images per chunk when one image needs `per` elements of scratch. */
static int chunk_images(int64_t per, int n) {
    int64_t nb = chunk_budget / (per > 0 ? per : 1);
    if (nb < 1) nb = 1;
    if (nb > n) nb = n;
    return (int)nb;
}

/* The row count kg of a weight matrix padded up to the GEMM tiles of both backward products
 * (rows of d input's columns, columns of d weight), so that CLBlast uses the column
 * buffers in place rather than copying them into padded ones: 42 MB each way for the
 * reference CNN's second layer, where padding 288 to 320 took the input gradient's GEMM
 * from 45 to 10 ms. Left as is where padding would add more than a quarter, and where
 * kiln's own kernels compute the input gradient (they read any kg in place). */
static int64_t pad_forced; /* kiln__conv_pad: a multiple to pad to whatever the device */

/* Test hook (tests/test_sweep.c and test_conv.c declare it): pad kg up to a multiple of
 * `multiple` on every device (0 restores the tile rule), so the padded path runs where kiln
 * knows no tiles (Oclgrind, GPUs with CLBlast's own parameters). */
KILN_API void kiln__conv_pad(int64_t multiple);
void kiln__conv_pad(int64_t multiple) { pad_forced = multiple > 0 ? multiple : 0; }

static int64_t padded_rows(kiln_ctx *ctx, int64_t kg, bool own_dx) {
    if (pad_forced > 0) return (kg + pad_forced - 1) / pad_forced * pad_forced;
    if (own_dx) return kg;
    size_t tm, tn, tk;
    kiln__sgemm_tiles(ctx, &tm, &tn, &tk);
    size_t t = tm;
    while (t % tn != 0 && t <= 1024)
        t += tm;
    if (t > 1024) return kg;
    int64_t kgp = (kg + (int64_t)t - 1) / (int64_t)t * (int64_t)t;
    return kgp * 4 <= kg * 5 ? kgp : kg;
}

/* ---- the three cores ---------------------------------------------------------------- */

/* out [n, cout, ho, wo] = conv(x, w) + bias. x any view, w any view [cout, c/groups, kh, kw]. */
static kiln_tensor *conv_fwd(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *w, kiln_tensor *bias,
                             const conv_geom *g) {
    kiln_tensor *out = kiln__tensor_new(ctx, op, KILN_F32, 4, (int64_t[]){g->n, g->cout, g->ho, g->wo});
    if (!out || g->n == 0) return out;
    int64_t hw = (int64_t)g->ho * g->wo, mg = g->cout / g->groups;
    int64_t kg = (int64_t)(g->c / g->groups) * g->kh * g->kw, krows = g->groups * kg;
    kiln_tensor *wc = NULL, *col = NULL, *tmp = NULL;
    kiln_status s = KILN_OK;
    if (!kiln__is_contiguous(w) && !(wc = kiln__copy_contiguous(ctx, op, w))) s = ctx->err;
    kiln_tensor *wt = wc ? wc : w;
    int nb = chunk_images((krows + g->cout) * hw, g->n);
    /* One image without bias: the GEMM's [cout, HW] result is the NCHW image itself. */
    bool direct = nb == 1 && !bias;
    if (s == KILN_OK && !(col = kiln__tensor_new(ctx, op, KILN_F32, 1, (int64_t[]){nb * krows * hw}))) s = ctx->err;
    if (s == KILN_OK && !direct && !(tmp = kiln__tensor_new(ctx, op, KILN_F32, 1, (int64_t[]){nb * g->cout * hw})))
        s = ctx->err;
    for (int n0 = 0; n0 < g->n && s == KILN_OK; n0 += nb) {
        int cnt = g->n - n0 < nb ? g->n - n0 : nb;
        size_t ld = (size_t)(cnt * hw);
        if ((s = im2col(ctx, op, x, col, g, n0, cnt)) != KILN_OK) break;
        gmat c = direct ? gm(out, (size_t)(n0 * g->cout * hw), ld, (size_t)mg * ld, false)
                        : gm(tmp, 0, ld, (size_t)mg * ld, false);
        s = gemm(ctx, op, (size_t)mg, ld, (size_t)kg, gm(wt, 0, (size_t)kg, (size_t)(mg * kg), false),
                 gm(col, 0, ld, (size_t)kg * ld, false), 0.0f, c, (size_t)g->groups);
        if (s == KILN_OK && !direct) s = from_cnhw(ctx, op, tmp, out, bias, n0, cnt);
    }
    /* The in-order queue runs every launch above before a later reuse of these buffers. */
    kiln_tensor_free(tmp);
    kiln_tensor_free(col);
    kiln_tensor_free(wc);
    if (s != KILN_OK) {
        kiln_tensor_free(out);
        return NULL;
    }
    return out;
}

/*
 * Gradients of a convolution from gy [n, cout, ho, wo] (any view), each when its pointer
 * is not NULL: *dx (the input's shape, plus dx_bias[c] when given), *dw (w's shape), *db
 * (the sum of gy over images and pixels, [cout]). x (any view) is needed only for dw, w
 * only for dx. Outputs are new tensors.
 */
static kiln_status conv_bwd(kiln_ctx *ctx, const char *op, const conv_geom *g, kiln_tensor *x, kiln_tensor *w,
                            kiln_tensor *gy, kiln_tensor *dx_bias, kiln_tensor **dx, kiln_tensor **dw,
                            kiln_tensor **db) {
    int64_t hw = (int64_t)g->ho * g->wo, cg = g->c / g->groups, mg = g->cout / g->groups;
    int64_t kg = cg * g->kh * g->kw;
    kiln_tensor *wc = NULL, *wp = NULL, *gyp = NULL, *col = NULL, *part = NULL;
    kiln_status s = KILN_OK;
    kiln_tensor **outs[3] = {dx, dw, db};
    for (int k = 0; k < 3; k++)
        if (outs[k]) *outs[k] = NULL;
    if (dx && !(*dx = kiln__tensor_new(ctx, op, KILN_F32, 4, (int64_t[]){g->n, g->c, g->h, g->w}))) s = ctx->err;
    if (dw && s == KILN_OK && !(*dw = kiln__tensor_new(ctx, op, KILN_F32, 4, (int64_t[]){g->cout, cg, g->kh, g->kw})))
        s = ctx->err;
    if (db && s == KILN_OK && !(*db = kiln__tensor_new(ctx, op, KILN_F32, 1, (int64_t[]){g->cout}))) s = ctx->err;
    if (s == KILN_OK && dw && g->n == 0) s = kiln_fill(*dw, 0.0f);
    if (s == KILN_OK && db && g->n == 0) s = kiln_fill(*db, 0.0f);
    if (s != KILN_OK || g->n == 0) goto done;

    /* On CPUs the weight gradient is gy_g cols_g^T through kiln's own A B^T kernel, which
     * reads both operands along the pixels: the plain columns of conv_im2col, unpadded
     * (src/ops/gemm.c). It ran the reference CNN's second layer's weight gradient faster
     * than CLBlast's product did, and conv_im2col writes its rows faster than
     * conv_im2col_t writes the transposed ones. (A chunk's columns are at most all n
     * images' pixels wide.) */
    bool own_dw = dw && kiln__gemm_own_takes(ctx, false, true, (size_t)mg, (size_t)kg, (size_t)(g->n * hw),
                                             (size_t)g->groups, 1.0f);
    /* Few taps per output channel, without kiln's own kernels: weight and bias gradients
     * straight from x and gy, in parts of the batch that spread over the compute units
     * (summed in order after). With them the GEMM is faster: the reference CNN's first
     * layer's weight gradient took 1.2-1.8 ms that way against 5.2-6.9 ms here. */
    if (dw && kg <= SMALL_KG && !own_dw) {
        int64_t np = (128 * (int64_t)ctx->info.compute_units + g->cout - 1) / g->cout;
        if (np > g->n) np = g->n;
        if (np > 64) np = 64;
        if (!(part = kiln__tensor_new(ctx, op, KILN_F32, 1, (int64_t[]){np * g->cout * (kg + 1)}))) {
            s = ctx->err;
            goto done;
        }
        if ((s = wgrad_small(ctx, op, x, gy, part, g, (int)np)) != KILN_OK ||
            (s = sum_parts(ctx, op, part, (int)np, g->cout, kg, kg + 1, *dw, db ? *db : NULL)) != KILN_OK)
            goto done;
        /* the in-order queue runs both kernels before any later use of the freed buffer */
        kiln_tensor_free(part);
        part = NULL;
        dw = db = NULL;
        if (!dx) goto done;
    }
    /* (a chunk's columns are at most all n images' pixels wide) */
    int64_t kgp = padded_rows(ctx, kg,
                              dx && kiln__gemm_own_takes(ctx, true, false, (size_t)kg, (size_t)(g->n * hw), (size_t)mg,
                                                         (size_t)g->groups, 0.0f));
    /* padding must not take one image's columns past 32-bit indexing (conv_setup checked
     * the unpadded ones) */
    if (g->groups * kgp * hw > CONV_MAX_ELEMS) kgp = kg;
    int64_t krp = g->groups * kgp;
    if (dx && !kiln__is_contiguous(w) && !(wc = kiln__copy_contiguous(ctx, op, w))) {
        s = ctx->err;
        goto done;
    }
    kiln_tensor *wt = wc ? wc : w;
    if (dx && kgp != kg) {
        if (!(wp = kiln__tensor_new(ctx, op, KILN_F32, 1, (int64_t[]){g->cout * kgp})) ||
            (s = pad_cols(ctx, op, wt, g->cout, kg, kgp, wp)) != KILN_OK) {
            s = ctx->err;
            goto done;
        }
        wt = wp;
    }
    int nb = chunk_images((krp + g->cout) * hw, g->n);
    /* One image of a contiguous gy already is its [cout, HW] matrix. */
    bool direct = nb == 1 && kiln__is_contiguous(gy);
    if (!direct && !(gyp = kiln__tensor_new(ctx, op, KILN_F32, 1, (int64_t[]){nb * g->cout * hw}))) {
        s = ctx->err;
        goto done;
    }
    if (!(col = kiln__tensor_new(ctx, op, KILN_F32, 1, (int64_t[]){nb * krp * hw}))) {
        s = ctx->err;
        goto done;
    }
    /* Split-K parts of the weight gradient (groups already give a batch of their own); the
     * parts of every chunk have the length of the first chunk's. A padded or split weight
     * gradient is computed into `part` and summed / cut to dw's shape after. */
    int64_t nsplit = dw && g->groups == 1 ? nb * hw / split_min_k : 1;
    if (nsplit > SPLIT_PER_UNIT * (int64_t)ctx->info.compute_units) nsplit = SPLIT_PER_UNIT * ctx->info.compute_units;
    if (nsplit > SPLIT_MAX) nsplit = SPLIT_MAX;
    if (nsplit < 1) nsplit = 1;
    /* dw's columns as the GEMM computes them: kg through kiln's own kernel, kgp through
     * CLBlast (padded rows of the transposed columns) */
    int64_t kw = own_dw ? kg : kgp;
    if (dw && (nsplit > 1 || kw != kg) &&
        !(part = kiln__tensor_new(ctx, op, KILN_F32, 1, (int64_t[]){nsplit * g->cout * kw}))) {
        s = ctx->err;
        goto done;
    }
    size_t tm, tn, tk;
    kiln__sgemm_tiles(ctx, &tm, &tn, &tk);
    for (int n0 = 0; n0 < g->n && s == KILN_OK; n0 += nb) {
        int cnt = g->n - n0 < nb ? g->n - n0 : nb;
        size_t ld = (size_t)(cnt * hw);
        gmat gb;
        if (direct) {
            gb = gm(gy, (size_t)(n0 * g->cout * hw), ld, (size_t)mg * ld, false);
        } else {
            if ((s = to_cnhw(ctx, op, gy, gyp, n0, cnt)) != KILN_OK) break;
            gb = gm(gyp, 0, ld, (size_t)mg * ld, false);
        }
        if (db && (s = bias_rows(ctx, op, &gb, *db, n0 > 0)) != KILN_OK) break;
        if (dw) {
            /* dw_g [mg, kw] (+)= gy_g [mg, cnt*HW] x cols_g^T, chunks accumulating in order.
             * kiln's own kernel reads the plain columns cols_g [kg, cnt*HW] as B^T (A B^T,
             * both along the pixels); CLBlast reads colT_g [cnt*HW, kgp], which
             * conv_im2col_t writes transposed. `step`: elements from one pixel's column
             * entries to the next one's. */
            size_t step = own_dw ? 1 : (size_t)kgp;
            s = own_dw ? im2col(ctx, op, x, col, g, n0, cnt) : im2col_t(ctx, op, x, col, g, kgp, n0, cnt);
            if (s != KILN_OK) break;
            float beta = n0 == 0 ? 0.0f : 1.0f;
            gmat c = part ? gm(part, 0, (size_t)kw, (size_t)(mg * kw), false)
                          : gm(*dw, 0, (size_t)kw, (size_t)(mg * kw), false);
            if (nsplit == 1) {
                gmat b = own_dw ? gm(col, 0, ld, (size_t)kg * ld, true) : gm(col, 0, (size_t)krp, (size_t)kgp, false);
                s = gemm(ctx, op, (size_t)mg, (size_t)kw, ld, gb, b, beta, c, (size_t)g->groups);
            } else {
                /* part s (+)= the products over [s*len, (s+1)*len) of the inner dim, len a
                 * multiple of CLBlast's K tile where it can be; the rest goes to part 0.
                 * Parts pay with kiln's kernel too: each part's rows stay in cache while
                 * every block uses them (conv2's weight gradient, 64 x 288 x 36864, ran at
                 * 138-152 GFLOP/s in 4 or 8 parts against 113-125 in one). */
                size_t len = ld / (size_t)nsplit;
                if (!own_dw && len >= tk) len = len / tk * tk;
                size_t rest = ld - len * (size_t)nsplit;
                gmat a = gb, b = own_dw ? gm(col, 0, ld, len, true) : gm(col, 0, (size_t)kgp, len * (size_t)kgp, false);
                a.stride = len;
                c.stride = (size_t)(g->cout * kw);
                if (len > 0) s = gemm(ctx, op, (size_t)mg, (size_t)kw, len, a, b, beta, c, (size_t)nsplit);
                if (s == KILN_OK && rest > 0) {
                    a.off += len * (size_t)nsplit;
                    b.off += len * (size_t)nsplit * step;
                    s = gemm(ctx, op, (size_t)mg, (size_t)kw, rest, a, b, len > 0 || n0 > 0 ? 1.0f : 0.0f, c, 1);
                }
            }
            if (s != KILN_OK) break;
        }
        if (dx) {
            /* cols_g [kgp, cnt*HW] = w_g^T gy_g (rows past kg are zero), then gathered into
             * the images */
            s = gemm(ctx, op, (size_t)kgp, ld, (size_t)mg, gm(wt, 0, (size_t)kgp, (size_t)(mg * kgp), true), gb, 0.0f,
                     gm(col, 0, ld, (size_t)kgp * ld, false), (size_t)g->groups);
            if (s == KILN_OK) s = col2im(ctx, op, col, *dx, dx_bias, g, kgp, n0, cnt);
        }
    }
    if (s == KILN_OK && part) s = sum_parts(ctx, op, part, (int)nsplit, g->cout, kg, kw, *dw, NULL);
done:
    kiln_tensor_free(part);
    kiln_tensor_free(col);
    kiln_tensor_free(gyp);
    kiln_tensor_free(wp);
    kiln_tensor_free(wc);
    if (s != KILN_OK) {
        for (int k = 0; k < 3; k++) {
            if (outs[k]) {
                kiln_tensor_free(*outs[k]);
                *outs[k] = NULL;
            }
        }
    }
    return s;
}

/* ---- validation --------------------------------------------------------------------- */

static const kiln_conv2d_params default_params = {{1, 1}, {0, 0}, {1, 1}, 1, {0, 0}};
kiln_conv2d_params kiln_conv2d_defaults(void) { return default_params; }

/* "stride (1, 1), padding (0, 0), dilation (1, 1), groups 1[, output_padding (0, 0)]" */
static char *params_str(const kiln_conv2d_params *p, bool transpose, char *buf, size_t cap) {
    int len = snprintf(buf, cap, "stride (%d, %d), padding (%d, %d), dilation (%d, %d), groups %d", p->stride[0],
                       p->stride[1], p->padding[0], p->padding[1], p->dilation[0], p->dilation[1], p->groups);
    if (transpose && len > 0 && (size_t)len < cap)
        snprintf(buf + len, cap - (size_t)len, ", output_padding (%d, %d)", p->output_padding[0], p->output_padding[1]);
    return buf;
}

/*
 * Checks the inputs and parameters of conv2d (transpose false) or conv_transpose2d and
 * fills the geometry of the convolution that does the work (for conv_transpose2d its
 * input is the transposed op's output). False with the error set.
 */
static bool conv_setup(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *w, kiln_tensor *bias,
                       const kiln_conv2d_params *p, bool transpose, conv_geom *g) {
    kiln_tensor *in[2] = {x, w};
    if (!kiln__check_inputs(ctx, op, 2, in)) return false;
    if (bias && !kiln__check_inputs(ctx, op, 1, &bias)) return false;
    char sx[160], sw[160], sb[160], sp[200];
    kiln__shape_str(x->ndim, x->shape, sx, sizeof sx);
    kiln__shape_str(w->ndim, w->shape, sw, sizeof sw);
    if (bias) kiln__shape_str(bias->ndim, bias->shape, sb, sizeof sb);
    params_str(p, transpose, sp, sizeof sp);
    if (x->dtype != KILN_F32 || w->dtype != KILN_F32 || (bias && bias->dtype != KILN_F32)) {
        kiln__fail(ctx, KILN_ERR_DTYPE, "%s: only f32 is supported, got input %s %s, weight %s %s%s%s%s", op,
                   kiln_dtype_name(x->dtype), sx, kiln_dtype_name(w->dtype), sw, bias ? ", bias " : "",
                   bias ? kiln_dtype_name(bias->dtype) : "", bias ? " " : "");
        return false;
    }
    if (x->ndim != 4) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: input %s must be 4-D (N, C, H, W); weight %s", op, sx, sw);
        return false;
    }
    if (w->ndim != 4) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: weight %s must be 4-D %s; input %s", op, sw,
                   transpose ? "[Cin, Cout/groups, kH, kW]" : "[Cout, Cin/groups, kH, kW]", sx);
        return false;
    }
    if (p->stride[0] < 1 || p->stride[1] < 1 || p->dilation[0] < 1 || p->dilation[1] < 1 || p->padding[0] < 0 ||
        p->padding[1] < 0 || p->groups < 1 || (transpose && (p->output_padding[0] < 0 || p->output_padding[1] < 0))) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s: invalid parameters for input %s, weight %s: %s (stride and dilation must be >= 1, padding%s "
                   ">= 0, groups >= 1; start from kiln_conv2d_defaults())",
                   op, sx, sw, sp, transpose ? " and output_padding" : "");
        return false;
    }
    if (transpose && ((p->output_padding[0] >= p->stride[0] && p->output_padding[0] >= p->dilation[0]) ||
                      (p->output_padding[1] >= p->stride[1] && p->output_padding[1] >= p->dilation[1]))) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s: input %s, weight %s: output_padding must be smaller than stride or dilation, got %s", op, sx,
                   sw, sp);
        return false;
    }
    int64_t n = x->shape[0], c = x->shape[1], kh = w->shape[2], kw = w->shape[3], gr = p->groups;
    if (c == 0 || x->shape[2] == 0 || x->shape[3] == 0 || w->shape[0] == 0 || w->shape[1] == 0 || kh == 0 || kw == 0) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: input %s, weight %s: only the batch dim may be empty", op, sx, sw);
        return false;
    }
    /* Channels: conv2d weight [Cout, Cin/groups], conv_transpose2d weight [Cin, Cout/groups]. */
    int64_t expect = transpose ? w->shape[0] : w->shape[1] * gr;
    if (c != expect) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: input %s has %lld channels but weight %s expects %lld (groups %lld)", op,
                   sx, (long long)c, sw, (long long)expect, (long long)gr);
        return false;
    }
    if (c % gr != 0 || (!transpose && w->shape[0] % gr != 0)) {
        kiln__fail(ctx, KILN_ERR_SHAPE,
                   "%s: groups %lld must divide the input channels (input %s) and the output channels (weight %s)", op,
                   (long long)gr, sx, sw);
        return false;
    }
    int64_t cout = transpose ? w->shape[1] * gr : w->shape[0];
    if (bias && (bias->ndim != 1 || bias->shape[0] != cout)) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: bias %s must be [%lld] for input %s and weight %s", op, sb,
                   (long long)cout, sx, sw);
        return false;
    }
    /* Spatial sizes; every intermediate index must fit 32-bit ints in the kernels. */
    int64_t os[2], is[2] = {x->shape[2], x->shape[3]}, ks[2] = {kh, kw};
    for (int d = 0; d < 2; d++) {
        int64_t span = (int64_t)p->dilation[d] * (ks[d] - 1) + 1;
        if (is[d] + 2 * (int64_t)p->padding[d] + span + p->stride[d] > INT32_MAX ||
            (transpose && (is[d] - 1) * p->stride[d] + span + p->output_padding[d] > INT32_MAX)) {
            kiln__fail(ctx, KILN_ERR_UNSUPPORTED, "%s: input %s, weight %s with %s: sizes exceed 32-bit indexing", op,
                       sx, sw, sp);
            return false;
        }
        if (transpose)
            os[d] = (is[d] - 1) * p->stride[d] - 2 * (int64_t)p->padding[d] + span + p->output_padding[d];
        else {
            int64_t num = is[d] + 2 * (int64_t)p->padding[d] - span;
            os[d] = num < 0 ? 0 : num / p->stride[d] + 1;
        }
    }
    if (os[0] <= 0 || os[1] <= 0) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: input %s with weight %s and %s gives an output of %lld x %lld", op, sx, sw,
                   sp, (long long)os[0], (long long)os[1]);
        return false;
    }
    /* The convolution doing the work: conv2d itself, or the one whose input gradient
     * conv_transpose2d is (its input is conv_transpose2d's output). */
    g->n = (cl_int)n;
    g->groups = (cl_int)gr;
    g->kh = (cl_int)kh;
    g->kw = (cl_int)kw;
    g->sh = p->stride[0];
    g->sw = p->stride[1];
    g->ph = p->padding[0];
    g->pw = p->padding[1];
    g->dh = p->dilation[0];
    g->dw = p->dilation[1];
    int64_t cin_conv = transpose ? cout : c, cout_conv = transpose ? c : cout;
    int64_t hin = transpose ? os[0] : is[0], win = transpose ? os[1] : is[1];
    int64_t hout = transpose ? is[0] : os[0], wout = transpose ? is[1] : os[1];
    int64_t kg = cin_conv / gr * kh * kw, percol = gr * kg * hout * wout;
    if (percol > CONV_MAX_ELEMS || hin * win * cin_conv > CONV_MAX_ELEMS || hout * wout * cout_conv > CONV_MAX_ELEMS) {
        kiln__fail(ctx, KILN_ERR_UNSUPPORTED,
                   "%s: input %s, weight %s with %s: one image needs %lld column elements (at most %lld: kernels "
                   "index with 32-bit ints)",
                   op, sx, sw, sp, (long long)percol, (long long)CONV_MAX_ELEMS);
        return false;
    }
    g->c = (cl_int)cin_conv;
    g->cout = (cl_int)cout_conv;
    g->h = (cl_int)hin;
    g->w = (cl_int)win;
    g->ho = (cl_int)hout;
    g->wo = (cl_int)wout;
    return true;
}

/* ---- autograd ----------------------------------------------------------------------- */

static void geom_save(kiln__node *nd, const conv_geom *g) {
    const cl_int *v = &g->n;
    for (int k = 0; k < 16; k++)
        nd->i[k] = v[k];
}

static void geom_load(const kiln__node *nd, conv_geom *g) {
    cl_int *v = &g->n;
    for (int k = 0; k < 16; k++)
        v[k] = (cl_int)nd->i[k];
}

/* Sum of gy over N, H and W: the bias gradient. */
static kiln_tensor *bias_grad(kiln_ctx *ctx, kiln_tensor *gy) {
    static const int axes[3] = {0, 2, 3};
    return kiln_sum(ctx, gy, 3, axes, false);
}

static kiln_status conv2d_backward(kiln_ctx *ctx, kiln__node *nd, kiln_tensor *gout) {
    conv_geom g;
    geom_load(nd, &g);
    kiln_tensor *x = nd->in[0], *w = nd->in[1];
    bool want_dx = kiln__input_needs_grad(nd, 0), want_dw = kiln__input_needs_grad(nd, 1);
    bool want_db = nd->nin > 2 && kiln__input_needs_grad(nd, 2);
    kiln_tensor *dx = NULL, *dw = NULL, *db = NULL;
    kiln_status s = KILN_OK;
    /* the bias gradient comes from the permuted gradient when that is made anyway */
    if (want_dx || want_dw)
        s = conv_bwd(ctx, nd->op, &g, x, w, gout, NULL, want_dx ? &dx : NULL, want_dw ? &dw : NULL,
                     want_db ? &db : NULL);
    else if (want_db && !(db = bias_grad(ctx, gout)))
        s = ctx->err;
    /* fresh tensors: each becomes the gradient as it is where the slot is empty */
    kiln_tensor *got[3] = {dx, dw, db};
    for (int k = 0; k < 3; k++) {
        if (s == KILN_OK && got[k]) s = kiln__accum_owned(ctx, nd, k, got[k]);
        else kiln_tensor_free(got[k]);
    }
    return s;
}

static kiln_status conv_transpose2d_backward(kiln_ctx *ctx, kiln__node *nd, kiln_tensor *gout) {
    conv_geom g;
    geom_load(nd, &g);
    kiln_tensor *x = nd->in[0], *w = nd->in[1];
    kiln_tensor *dx = NULL, *dw = NULL, *db = NULL;
    kiln_status s = KILN_OK;
    /* gout is the convolution's input: d x = conv(gout, w); d w from (gout, x) with x as
     * the convolution's output gradient; d bias sums gout. */
    if (kiln__input_needs_grad(nd, 0) && !(dx = conv_fwd(ctx, nd->op, gout, w, NULL, &g))) s = ctx->err;
    if (s == KILN_OK && kiln__input_needs_grad(nd, 1)) s = conv_bwd(ctx, nd->op, &g, gout, w, x, NULL, NULL, &dw, NULL);
    if (s == KILN_OK && nd->nin > 2 && kiln__input_needs_grad(nd, 2) && !(db = bias_grad(ctx, gout))) s = ctx->err;
    /* fresh tensors: each becomes the gradient as it is where the slot is empty */
    kiln_tensor *got[3] = {dx, dw, db};
    for (int k = 0; k < 3; k++) {
        if (s == KILN_OK && got[k]) s = kiln__accum_owned(ctx, nd, k, got[k]);
        else kiln_tensor_free(got[k]);
    }
    return s;
}

/* Records the op when some input requires grad; frees out and returns NULL on failure. */
static kiln_tensor *record(kiln_ctx *ctx, const char *op, kiln_tensor *out, kiln_tensor *x, kiln_tensor *w,
                           kiln_tensor *bias, const conv_geom *g, kiln__backward_fn fn) {
    kiln_tensor *in[3] = {x, w, bias};
    int nin = bias ? 3 : 2;
    if (kiln__grad_wanted(ctx, nin, in)) {
        kiln__node *nd = kiln__node_new(ctx, op, out, nin, in, fn);
        if (!nd) {
            kiln_tensor_free(out);
            return NULL;
        }
        geom_save(nd, g);
    }
    return kiln__finish(ctx, op, out);
}

/* ---- public ------------------------------------------------------------------------- */

kiln_tensor *kiln_conv2d(kiln_ctx *ctx, kiln_tensor *x, kiln_tensor *weight, kiln_tensor *bias,
                         const kiln_conv2d_params *p) {
    const char *op = "kiln_conv2d";
    conv_geom g;
    if (!conv_setup(ctx, op, x, weight, bias, p ? p : &default_params, false, &g)) return NULL;
    kiln_tensor *out = conv_fwd(ctx, op, x, weight, bias, &g);
    if (!out) return NULL;
    return record(ctx, op, out, x, weight, bias, &g, conv2d_backward);
}

kiln_tensor *kiln_conv_transpose2d(kiln_ctx *ctx, kiln_tensor *x, kiln_tensor *weight, kiln_tensor *bias,
                                   const kiln_conv2d_params *p) {
    const char *op = "kiln_conv_transpose2d";
    conv_geom g;
    if (!conv_setup(ctx, op, x, weight, bias, p ? p : &default_params, true, &g)) return NULL;
    kiln_tensor *out = NULL;
    if (conv_bwd(ctx, op, &g, NULL, weight, x, bias, &out, NULL, NULL) != KILN_OK) return NULL;
    return record(ctx, op, out, x, weight, bias, &g, conv_transpose2d_backward);
}

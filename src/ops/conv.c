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
 *                          already transposed ([N*HW, kg] rows), so CLBlast has no large
 *                          operand to transpose. Chunks accumulate (beta 1) in order; the
 *                          pixels are split into parts summed after. With CLBlast, weights
 *                          with few taps per output channel (kg <= 32: first layers,
 *                          depthwise) skip the columns: conv_wgrad_small computes dW (and
 *                          d bias) from x and gy directly.
 *               Where CLBlast computes the input gradient and its tile is known, kg is
 *               padded up to it (288 -> 320) when that adds at most a quarter: CLBlast then
 *               reads and writes the column buffers in place instead of copying them into
 *               padded ones.
 *               conv_bwd runs these as named steps over one bwd_plan (see there).
 *   d bias      conv2d: row sums of the permuted gy (made for the other gradients anyway);
 *               conv_transpose2d, or the bias alone: a deterministic kiln_sum over N, H, W.
 *
 * conv_transpose2d is the adjoint: its forward is conv_bwd's input gradient (with the
 * transposed conv's input as gy), its input gradient conv_fwd of its output gradient, its
 * weight gradient conv_bwd's weight gradient with the roles of x and gy exchanged. Weight
 * [Cin, Cout/groups, kH, kW] of conv_transpose2d is exactly the weight of that
 * convolution.
 *
 * One GEMM spans the images (rather than a GEMM per image, which would write NCHW
 * directly) because the backward products run faster that way and large products reach
 * CLBlast's faster indirect kernel, which per-image products are too small for. K = kg is
 * kept as is (no bias row appended) because the indirect kernel pads a K that is not a
 * multiple of its tile. README.md ("Speed", convolution) has the measurements.
 *
 * Column buffers come from the pool and hold at most `chunk_budget` elements: the batch is
 * processed in chunks of images that fit (one image at least). One image's columns must
 * stay below 2^31 elements (kernels index with 32-bit ints); beyond that the op fails.
 *
 * The direct route: a 3x3 convolution with stride 1, padding 1 and one group (every 3x3
 * convolution of ResNet-20 but the two strided ones) skips the columns for its forward and its
 * input gradient on CPUs with 8- or 16-float vectors: conv3_pad copies the input (or gy) into
 * zero-bordered planes, and conv3_direct (or conv3_flat, for rows shorter than half a
 * vector, or conv3_bcast, vectors along the output channels, for rows of up to 16 pixels)
 * computes the outputs from them with register-blocked accumulators (see
 * conv_direct_wanted and c3_choose for the rule and the measurements, KILN_CONV_ALGO to
 * force a route).
 * Their weight gradient skips the columns too: conv3_wgrad reads bordered planes of x and
 * gy (pitch w + 2) along their flat index, each tap one shifted vector load (see there);
 * on ResNet-20's step it took 17% less CPU time than columns and kiln's A B^T GEMM. (An
 * earlier direct version, one vector accumulator per output channel and tap with loads
 * masked to the row, had measured slower than the GEMM.) The forward keeps x's bordered
 * planes in the node for it. With stride 2 (padding 1), conv3_phase splits the bordered
 * input into its four (row, column) parity planes, on which every tap is again a fixed
 * offset: conv3_flat (or conv3_bcast) and conv3_wgrad built with C3_S2 compute the forward
 * and the weight gradient; the input gradient keeps columns (GEMM and col2im). On rows of
 * up to 16 pixels with a vector of output channels (stride 1), conv3_wgradc computes the
 * weight gradient with its vectors along the output channels instead, from a copy of gy
 * with its channels last (conv3_tocl): no lane idles on a border column (c3w_choose).
 *
 * Half precision: inputs of one dtype (f16 or bf16) run in it, kernel by kernel: each
 * launch that reads the input, weight or bias or writes the output uses the KILN_HALF build
 * of cl_kernels/conv.cl for that tensor's dtype, so no pass converts the input or the
 * output; the GEMMs read an f32 copy of a half weight (small), and the backward reads the
 * half input and weight the node saved, its gradients f32. f32 and halves mixed run on
 * f32 copies of the halves (torch's promotion).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_internal.h" /* before clblast_c.h: it picks the OpenCL target version */

#include <clblast_c.h>

#define CONV_PROGRAM "conv"
#define CONV_OPTIONS ""
/* The conv program's build for kernels that read or write tensors of dtype dt through
 * KILN_S (the input, weight, bias or output; scratch buffers are f32): f32's own build, or
 * the half variant (cl_kernels/common.cl), which converts as it moves the elements. */
#define CONV_DT_OPTIONS(dt) kiln__half_options(dt)
/* Largest buffer a kernel may index with 32-bit ints (as tensor.c's cap). */
#define CONV_MAX_ELEMS ((int64_t)INT32_MAX - 65536)

/* Elements of column (plus permuted gradient) buffer per chunk: 16 Mi floats = 64 MiB, and
 * on CPUs 1 Mi floats = 4 MiB, so that the columns a kernel writes are still in the cache
 * when the GEMM reads them (ResNet-20's step at batch 128 took about 20% less CPU time than
 * with the whole batch's 58 MB of columns per layer; 2 Mi and 512 Ki floats were as fast
 * or slower, README.md "Speed"). */
#define CHUNK_BUDGET ((int64_t)1 << 24)
#define CHUNK_BUDGET_CPU ((int64_t)1 << 20)

/* The weight gradient's long inner dim (images x pixels) is split into parts that one
 * batched GEMM computes and a kernel sums after: a weight gradient is a small matrix
 * (64 x 320 for the reference CNN's second layer: five 64 x 64 tiles) that a GEMM tiles
 * into very few work-groups, leaving cores idle. Up to SPLIT_PER_UNIT parts per compute
 * unit, each at least split_min_k long, at most SPLIT_MAX (README.md, "Speed", has the
 * measurements behind these). */
#define SPLIT_MIN_K 4096
#define SPLIT_MAX 16
#define SPLIT_PER_UNIT 4

/* The chunk budget and split minimum in use: ctx->hooks.conv_budget and .conv_split_min
 * (tests) make them smaller, to force several chunks and split small weight gradients;
 * 0 keeps the built-in values. */
static int64_t chunk_budget(const kiln_ctx *ctx) {
    if (ctx->hooks.conv_budget > 0) return ctx->hooks.conv_budget;
    return ctx->info.type == KILN_DEVICE_CPU ? CHUNK_BUDGET_CPU : CHUNK_BUDGET;
}
static int64_t split_min_k(const kiln_ctx *ctx) {
    return ctx->hooks.conv_split_min > 0 ? ctx->hooks.conv_split_min : SPLIT_MIN_K;
}

/* The geometry of the convolution doing the work, as the kernels read it (one argument,
 * by value; cl_kernels/kiln_shared.h). */
typedef kiln_conv_geom conv_geom;

/* What a conv2d or conv_transpose2d node keeps for its backward. */
typedef struct conv_state {
    conv_geom g;
} conv_state;

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
    CLBlastStatusCode s =
        (CLBlastStatusCode)kiln__sgemm(ctx, op, a.trans, b.trans, m, n, k, 1.0f, a.mem, a.off, a.ld, a.stride, b.mem,
                                       b.off, b.ld, b.stride, beta, c.mem, c.off, c.ld, c.stride, batch);
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
    kiln__karg args[] = {KILN__ARG(x->st->mem), KILN__ARG(xoff),  KILN__ARG(xs),   KILN__ARG(col->st->mem),
                         KILN__ARG(coff),       KILN__ARG(*g),    KILN__ARG(ckgp), KILN__ARG(cn0),
                         KILN__ARG(cnb),        KILN__ARG(nitems)};
    return kiln__launch(ctx, op, CONV_PROGRAM, CONV_DT_OPTIONS(x->dtype), "conv_im2col_t", sizeof args / sizeof args[0],
                        args, (size_t)nitems, KILN__SPREAD);
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
    cl_int nitems = nb * g->c * g->kh;
    kiln__karg args[] = {KILN__ARG(x->st->mem),   KILN__ARG(xoff), KILN__ARG(xs),
                         KILN__ARG(col->st->mem), KILN__ARG(coff), KILN__ARG(*g),
                         KILN__ARG(cn0),          KILN__ARG(cnb),  KILN__ARG(nitems)};
    return kiln__launch(ctx, op, CONV_PROGRAM, CONV_DT_OPTIONS(x->dtype), "conv_im2col", sizeof args / sizeof args[0],
                        args, (size_t)nitems, KILN__SPREAD);
}

/* Images n0 .. n0+nb-1 of out (contiguous NCHW, the convolution input's shape) from the
 * columns in col, plus bias[c] when bias (of out's dtype) is given. */
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
    return kiln__launch(ctx, op, CONV_PROGRAM, CONV_DT_OPTIONS(out->dtype), "conv_col2im", sizeof args / sizeof args[0],
                        args, (size_t)nitems, KILN__SPREAD);
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
    return kiln__launch(ctx, op, CONV_PROGRAM, CONV_DT_OPTIONS(src->dtype), "conv_to_cnhw",
                        sizeof args / sizeof args[0], args, (size_t)nitems, KILN__SPREAD);
}

/* Images n0 .. n0+nb-1 of out (contiguous NCHW) from the [cout, nb, HW] tmp, plus bias (of
 * out's dtype), and with relu (only with a bias) ReLU of that. */
static kiln_status from_cnhw(kiln_ctx *ctx, const char *op, kiln_tensor *tmp, kiln_tensor *out, kiln_tensor *bias,
                             bool relu, int n0, int nb) {
    cl_int soff = (cl_int)tmp->offset, doff = (cl_int)out->offset, hb = bias ? (relu ? 2 : 1) : 0, cn0 = n0, cnb = nb;
    cl_int boff = bias ? (cl_int)bias->offset : 0;
    cl_mem bmem = bias ? bias->st->mem : tmp->st->mem;
    cl_int nc = (cl_int)out->shape[1], hw = (cl_int)(out->shape[2] * out->shape[3]), nitems = nb * nc;
    kiln__karg args[] = {KILN__ARG(tmp->st->mem), KILN__ARG(soff), KILN__ARG(out->st->mem), KILN__ARG(doff),
                         KILN__ARG(bmem),         KILN__ARG(boff), KILN__ARG(hb),           KILN__ARG(nc),
                         KILN__ARG(hw),           KILN__ARG(cn0),  KILN__ARG(cnb),          KILN__ARG(nitems)};
    return kiln__launch(ctx, op, CONV_PROGRAM, CONV_DT_OPTIONS(out->dtype), "conv_from_cnhw",
                        sizeof args / sizeof args[0], args, (size_t)nitems, KILN__SPREAD);
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
    kiln__karg args[] = {KILN__ARG(part->st->mem), KILN__ARG(poff),         KILN__ARG(np),    KILN__ARG(ckg),
                         KILN__ARG(ckgp),          KILN__ARG(dst->st->mem), KILN__ARG(doff),  KILN__ARG(hdb),
                         KILN__ARG(dbm),           KILN__ARG(dboff),        KILN__ARG(nitems)};
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
    kiln__karg args[] = {
        KILN__ARG(x->st->mem), KILN__ARG(xoff),          KILN__ARG(xs),   KILN__ARG(gy->st->mem), KILN__ARG(gyoff),
        KILN__ARG(gs),         KILN__ARG(part->st->mem), KILN__ARG(poff), KILN__ARG(*g),          KILN__ARG(np),
        KILN__ARG(nitems)};
    return kiln__launch(ctx, op, CONV_PROGRAM, CONV_OPTIONS, "conv_wgrad_small", sizeof args / sizeof args[0], args,
                        (size_t)nitems, 0);
}

/* Floats per line that a chunk's column count is rounded to (kiln__conv_chunk_images): a
 * 64-byte cache line, two AVX2 vectors, one AVX-512 vector. */
#define CHUNK_ALIGN 16

/* Images per chunk when one image needs `per` elements of scratch and has hw output
 * pixels. The columns' leading dim is images * hw; where the budget leaves room, the count
 * is rounded down so that it is a multiple of CHUNK_ALIGN floats and every row of the
 * column and gradient matrices starts on a cache line: gemm_nn's vector loads of B then
 * never straddle two lines, which cost the avx2 set a fifth of its speed on the reference
 * GAN's rows of 18 images of 7 x 7 (README.md, "Speed"). */
int kiln__conv_chunk_images(const kiln_ctx *ctx, int64_t per, int64_t hw, int n) {
    int64_t nb = chunk_budget(ctx) / (per > 0 ? per : 1);
    if (nb < 1) nb = 1;
    if (nb >= n) return n;
    /* q images: the fewest whose pixels fill whole lines */
    int64_t q = CHUNK_ALIGN, r = hw > 0 ? hw : 1;
    while (r % 2 == 0 && q > 1) r /= 2, q /= 2;
    if (nb >= q) nb -= nb % q;
    return (int)nb;
}

/* The row count kg of a weight matrix padded up to the GEMM tiles of both backward products
 * (rows of d input's columns, columns of d weight), so that CLBlast uses the column
 * buffers in place rather than copying them into padded ones (42 MB each way for the
 * reference CNN's second layer). Left as is where padding would add more than a quarter, and where
 * kiln's own kernels compute the input gradient (they read any kg in place).
 * ctx->hooks.conv_pad > 0 (tests) pads kg up to a multiple of it on every device, so the
 * padded path runs where kiln knows no tiles (Oclgrind, GPUs with CLBlast's own
 * parameters). */
static int64_t padded_rows(kiln_ctx *ctx, int64_t kg, bool own_dx) {
    int64_t forced = ctx->hooks.conv_pad;
    if (forced > 0) return (kg + forced - 1) / forced * forced;
    if (own_dx) return kg;
    size_t tm, tn, tk;
    kiln__sgemm_tiles(ctx, &tm, &tn, &tk);
    size_t t = tm;
    while (t % tn != 0 && t <= 1024) t += tm;
    if (t > 1024) return kg;
    int64_t kgp = (kg + (int64_t)t - 1) / (int64_t)t * (int64_t)t;
    return kgp * 4 <= kg * 5 ? kgp : kg;
}

/* ---- the direct 3x3 route ----------------------------------------------------------- */

/* How a convolution (or its input gradient) is computed: through columns and a GEMM
 * (im2col / col2im), or by conv3_direct straight from zero-bordered planes (3x3, stride 1,
 * padding 1, dilation 1, one group only). */
enum { ALGO_AUTO, ALGO_IM2COL, ALGO_DIRECT };

/* conv3_direct's blocking: vw floats per vector, nv vectors per row segment, r output rows
 * and cb output channels per work-item (c3_choose). With bc (conv3_bcast), nv vectors of
 * output channels (cb = nv * vw) and r pixels of a row per work-item. */
typedef struct c3_params {
    int vw, nv, r, cb;
    int flat; /* conv3_flat (vectors along a plane's flat index) rather than conv3_direct */
    int kj3;  /* conv3_flat, stride 1: over three column-shifted planes (conv3_pad3) */
    int bc;   /* conv3_bcast (vectors along the output channels), stride 1 or 2 */
} c3_params;
static bool c3_override(c3_params *o);

/* KILN_CONV_ALGO=im2col|direct forces a route wherever it applies (tests, measurements);
 * unset or "auto" lets conv_direct_wanted decide. Anything else is an error, as is a
 * KILN_CONV3_PARAMS that is set but not valid. */
static kiln_status algo_override(kiln_ctx *ctx, const char *op, int *algo) {
    const char *e = getenv("KILN_CONV_ALGO"), *pe = getenv("KILN_CONV3_PARAMS"), *we = getenv("KILN_CONV3_WGRAD");
    c3_params o;
    *algo = ALGO_AUTO;
    if (pe && *pe && !c3_override(&o))
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                          "%s: KILN_CONV3_PARAMS='%s' is not \"vw,nv,r,cb[,route]\" with vw 4, 8 or 16, nv 1-4, r "
                          "1-8, cb 1-16 and route 0, 1 or 2",
                          op, pe);
    if (we && *we && strcmp(we, "auto") != 0 && strcmp(we, "planes") != 0 && strcmp(we, "channels") != 0)
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                          "%s: KILN_CONV3_WGRAD='%s' names no weight-gradient kernel (auto, planes or channels)", op,
                          we);
    if (!e || !*e || strcmp(e, "auto") == 0) return KILN_OK;
    if (strcmp(e, "im2col") == 0)
        *algo = ALGO_IM2COL;
    else if (strcmp(e, "direct") == 0)
        *algo = ALGO_DIRECT;
    else
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                          "%s: KILN_CONV_ALGO='%s' names no convolution route (auto, im2col or direct)", op, e);
    return KILN_OK;
}

/* KILN_CONV3_PARAMS="vw,nv,r,cb[,route]" (vw 4, 8 or 16; nv 1-4; r 1-8; cb 1-16; route 0
 * conv3_direct, 1 conv3_flat, 2 conv3_bcast with nv vectors of output channels and r pixels
 * per work-item, cb unused; default 0): true with *o set when it is set and valid. */
static bool c3_override(c3_params *o) {
    const char *e = getenv("KILN_CONV3_PARAMS");
    int at = -1, more = -1, route = 0;
    if (!e || sscanf(e, "%d,%d,%d,%d%n", &o->vw, &o->nv, &o->r, &o->cb, &at) != 4 || at < 0) return false;
    if (e[at] == ',' && (sscanf(e + at + 1, "%d%n", &route, &more) != 1 || more < 0)) return false;
    if (e[at] == ',') at += 1 + more;
    o->flat = route == 1;
    o->bc = route == 2;
    bool ok = e[at] == '\0' && (o->vw == 4 || o->vw == 8 || o->vw == 16) && o->nv >= 1 && o->nv <= 4 && o->r >= 1 &&
              o->r <= 8 && o->cb >= 1 && o->cb <= 16 && route >= 0 && route <= 2;
    if (o->bc) o->cb = o->nv * o->vw;
    return ok;
}

/* conv3_direct's blocking (its build options) for h x w planes and cout output
 * channels: vectors of the device's native width, up to two per row segment, and about half
 * the vector registers as accumulators (16 of AVX-512's 32; 8 of 16 elsewhere): 8 output
 * channels (4 where two vectors a segment would make that 16 of 8-float vectors) x the rows
 * that fill the rest; rows shorter than half a vector go to conv3_flat (two vectors along
 * the plane's flat index, one row block), and rows of up to 16 pixels with a vector of
 * output channels or more to conv3_bcast (below). KILN_CONV3_PARAMS sets them
 * (measurements). On ResNet-20's 28 x 28 and 14 x 14 stages (AVX-512, before conv3_bcast
 * took the 14 x 14 one) the 8-channel blocks with 16 accumulators were as fast as or faster
 * than blocks of 4 or 12 channels and 1-7 rows (12 channels: 1.5-2x slower); with haswell
 * code the 8-channel blocks of two vectors took 16 of the 16 ymm registers for
 * accumulators, and 4-channel ones ran those stages' forward in 25-40% less time
 * (README.md, "Speed"). */
/* Vectors of output channels per work-item for the kernels whose lanes are output channels
 * (conv3_bcast, conv3_wgradc): two of 16 floats where there are more than 16 channels
 * (their accumulators still fit AVX-512's 32 registers), else one (AVX2's 16 registers
 * hold one vector's accumulators). */
static int c3_chan_vectors(int vw, int cout) { return vw >= 16 && cout > vw ? 2 : 1; }

static c3_params c3_choose(const kiln_ctx *ctx, int h, int w, int cin, int cout, int stride) {
    c3_params p;
    int vw = kiln__float_vw(ctx) < 4 ? 4 : kiln__float_vw(ctx);
    int accs = vw >= 16 ? 16 : 8;
    /* rows shorter than half a vector: vectors along the flat index (conv3_flat) */
    p.flat = 2 * w <= vw;
    p.vw = vw;
    p.nv = p.flat || (w + vw - 1) / vw >= 2 ? 2 : 1;
    p.cb = cout >= 8 ? 8 : cout;
    /* no more accumulators than that: with AVX2's 8-float vectors, two a segment take 4
     * channels (16 accumulators, 6 input vectors and a broadcast would not fit 16 registers) */
    if (p.cb * p.nv > accs) p.cb = accs / p.nv;
    p.r = p.flat ? 1 : accs / (p.cb * p.nv);
    p.r = p.r < 1 ? 1 : p.r > 8 ? 8 : p.r;
    p.bc = 0;
    int seg = p.nv * p.vw;
    bool kj3_saves = p.flat && (h * w + seg - 1) / seg < (h * (w + 2) + seg - 1) / seg;
    /* Output rows of at most 16 pixels (ResNet-20's 14 x 14 and 7 x 7 planes, the
     * autoencoder's strided convolutions) with at least a vector of output channels, where
     * conv3_direct's row vectors or conv3_flat's border columns leave lanes idle, and 8 input
     * channels or more (with fewer, its scalar stores of each channel's pixels would outweigh
     * the sums): conv3_bcast, two vectors of output channels with 16-float vectors where
     * there are more than 16 channels, and segments of at most 7 pixels (segments of 14 or
     * 28 pixels, 28 accumulators, spilled). Not where the column-shifted planes fill whole
     * vectors (kj3_saves: 8 x 8), nor on 28 x 28 planes, where it ran as fast as
     * conv3_direct (README.md, "Speed"). */
    if (vw >= 8 && w <= 16 && cin >= 8 && cout >= vw && !(stride == 1 && kj3_saves)) {
        p.bc = 1;
        p.flat = 0;
        p.nv = c3_chan_vectors(vw, cout);
        p.cb = p.nv * vw;
        int nseg = (w + 6) / 7;
        p.r = (w + nseg - 1) / nseg;
    }
    c3_params o;
    if (c3_override(&o)) p = o;
    if (stride == 2 && !p.bc) { /* conv3_flat and conv3_bcast read phase planes */
        p.flat = 1;
        p.r = 1;
    }
    /* conv3_flat over column-shifted planes where the border columns would take more
     * vectors: 8 x 8 planes fill 4 vectors of 16 rather than 6, 7 x 7 ones 4 either way,
     * and there the bordered planes also serve the weight gradient (README.md, "Speed") */
    seg = p.nv * p.vw;
    p.kj3 = p.flat && stride == 1 && (h * w + seg - 1) / seg < (h * (w + 2) + seg - 1) / seg;
    return p;
}

/* The stride (1 or 2) of a convolution that the direct kernels compute: 3x3, padding 1,
 * dilation 1, one group, stride 1 or 2 in both dims; 0 for any other. */
static int c3_stride(const conv_geom *g) {
    if (g->kh != 3 || g->kw != 3 || g->ph != 1 || g->pw != 1 || g->dh != 1 || g->dw != 1 || g->groups != 1 ||
        g->sh != g->sw || (g->sh != 1 && g->sh != 2))
        return 0;
    return g->sh;
}

/* Floats of the input as the direct kernels read it, per image and channel: the bordered
 * plane ((h + 2) rows), for stride 2 four phase planes of ho + 1 rows, with kj3 three
 * column-shifted planes of h + 2 rows, each of pitch pw. */
static int64_t c3_in_plane(const conv_geom *g, int stride, bool kj3, int64_t pw) {
    return stride == 2 ? 4 * ((int64_t)g->ho + 1) * pw : (kj3 ? 3 : 1) * ((int64_t)g->h + 2) * pw;
}

/* The slack after the bordered planes: conv3_direct's last row block may read up to C3_R -
 * 1 (at most 7) rows past the last plane, conv3_flat's last segment up to a segment (at
 * most 64 floats) and 2, conv3_bcast's up to its segment less 2 (at most 6 floats). */
#define C3_SLACK_ROWS 8
#define C3_SLACK_FLOATS 66

/* Row length of the bordered planes for planes of width w: w + 2, the two border columns.
 * conv3_direct's vectors may run past a row's end into the next row (those lanes are
 * dropped at the store; past the last plane they read the slack); conv3_wgrad reads the
 * same pitch, so the input gradient's bordered gy serves the weight gradient too. (Rows
 * rounded up to whole segments had measured no faster on ResNet-20.) The column-shifted
 * planes of kj3 have no border columns: w. */
static int c3_pitch(const c3_params *p, int w) { return p->kj3 ? w : w + 2; }

/* Work-items of conv3_direct along a plane: row blocks x row segments (conv3_flat: 1 x the
 * segments of the flat index; conv3_bcast: rows x segments of r pixels). */
static void c3_grid(const c3_params *p, int h, int w, int *nrb, int *nseg) {
    int seg = p->bc ? p->r : p->nv * p->vw;
    *nrb = p->flat ? 1 : p->bc ? h : (h + p->r - 1) / p->r;
    *nseg = p->flat ? (h * c3_pitch(p, w) + seg - 1) / seg : (w + seg - 1) / seg;
}

/* Whether conv3_direct (or conv3_flat) computes this convolution's forward (dgrad false)
 * or its input gradient: only 3x3, stride 1, padding 1, dilation 1, one group, with every
 * index of the bordered planes within 32 bits. Where both routes apply, KILN_CONV_ALGO
 * decides if set; else CPU devices with 8- or 16-float vectors (AVX2, AVX-512) take it:
 * it beat columns and a GEMM on both (on AVX2 measured with POCL generating haswell code;
 * README.md, "Why convolution is laid out as it is"). Narrower vectors are unmeasured:
 * columns. */
static bool conv_direct_wanted(kiln_ctx *ctx, const conv_geom *g, int algo, bool dgrad) {
    int stride = c3_stride(g);
    if (stride == 0 || (stride == 2 && dgrad) || (stride == 1 && (g->h != g->ho || g->w != g->wo))) return false;
    int cin = dgrad ? g->cout : g->c, cout = dgrad ? g->c : g->cout;
    c3_params p = c3_choose(ctx, g->ho, g->wo, cin, cout, stride);
    int64_t pw = c3_pitch(&p, g->wo), seg = p.bc ? p.r : p.nv * p.vw;
    int64_t nrb = p.flat ? 1 : p.bc ? g->ho : (g->ho + p.r - 1) / p.r;
    int64_t nseg = p.flat ? ((int64_t)g->ho * pw + seg - 1) / seg : (g->wo + seg - 1) / seg;
    int64_t elems = (int64_t)g->n * cin * c3_in_plane(g, stride, p.kj3, pw) + C3_SLACK_ROWS * pw + C3_SLACK_FLOATS;
    int64_t items = (int64_t)g->n * ((cout + p.cb - 1) / p.cb) * nrb * nseg;
    if (elems > CONV_MAX_ELEMS || items > CONV_MAX_ELEMS) return false;
    if (algo != ALGO_AUTO) return algo == ALGO_DIRECT;
    return ctx->info.type == KILN_DEVICE_CPU && kiln__float_vw(ctx) >= 8;
}

/* A new [n, c, h + 2, pw] tensor (plus slack) of the zero-bordered planes of src [n, c, h, w]
 * (any view), by conv3_pad; with kj3 (pw = w), [n, c, 3, h + 2, w] of its column-shifted
 * planes, by conv3_pad3. */
static kiln_tensor *c3_pad(kiln_ctx *ctx, const char *op, kiln_tensor *src, int pw, bool kj3) {
    int n = (int)src->shape[0], c = (int)src->shape[1], h = (int)src->shape[2], w = (int)src->shape[3];
    int64_t planes = (int64_t)n * c;
    cl_int slack = C3_SLACK_ROWS * pw + C3_SLACK_FLOATS;
    kiln_tensor *xp =
        kiln__tensor_new(ctx, op, KILN_F32, 1, (int64_t[]){planes * (kj3 ? 3 : 1) * (h + 2) * pw + slack});
    if (!xp || planes == 0) return xp;
    cl_int soff = (cl_int)src->offset, cc = c, ch = h, cw = w, cpw = pw, np = (cl_int)planes;
    cl_int xpoff = (cl_int)xp->offset;
    cl_int4 ss = strides4(src);
    kiln__karg args[] = {KILN__ARG(src->st->mem), KILN__ARG(soff),  KILN__ARG(ss),  KILN__ARG(cc),
                         KILN__ARG(ch),           KILN__ARG(cw),    KILN__ARG(cpw), KILN__ARG(xp->st->mem),
                         KILN__ARG(xpoff),        KILN__ARG(slack), KILN__ARG(np)};
    if (kiln__launch(ctx, op, CONV_PROGRAM, CONV_DT_OPTIONS(src->dtype), kj3 ? "conv3_pad3" : "conv3_pad",
                     sizeof args / sizeof args[0], args, (size_t)planes, 0) != KILN_OK) {
        kiln_tensor_free(xp);
        return NULL;
    }
    return xp;
}

/* A new [n * h * w, cp] f32 tensor of src [n, c, h, w] (any view) with its channels last,
 * cp = c rounded up to a multiple of `mult` (the extra channels zero), by conv3_tocl. */
static kiln_tensor *c3_tocl(kiln_ctx *ctx, const char *op, kiln_tensor *src, int mult) {
    int n = (int)src->shape[0], c = (int)src->shape[1], h = (int)src->shape[2], w = (int)src->shape[3];
    int cp = (c + mult - 1) / mult * mult;
    int64_t pixels = (int64_t)n * h * w;
    kiln_tensor *gt = kiln__tensor_new(ctx, op, KILN_F32, 1, (int64_t[]){pixels * cp});
    if (!gt || pixels == 0) return gt;
    cl_int soff = (cl_int)src->offset, cc = c, ch = h, cw = w, ccp = cp, np = (cl_int)pixels;
    cl_int gtoff = (cl_int)gt->offset;
    cl_int4 ss = strides4(src);
    kiln__karg args[] = {KILN__ARG(src->st->mem), KILN__ARG(soff), KILN__ARG(ss),  KILN__ARG(cc),
                         KILN__ARG(ch),           KILN__ARG(cw),   KILN__ARG(ccp), KILN__ARG(gt->st->mem),
                         KILN__ARG(gtoff),        KILN__ARG(np)};
    if (kiln__launch(ctx, op, CONV_PROGRAM, CONV_DT_OPTIONS(src->dtype), "conv3_tocl", sizeof args / sizeof args[0],
                     args, (size_t)pixels, 0) != KILN_OK) {
        kiln_tensor_free(gt);
        return NULL;
    }
    return gt;
}

/* A new [n, c, 4, ho + 1, pw] tensor (plus slack) of the phase planes of src [n, c, h, w]
 * (any view) for a stride-2 convolution with output ho x wo, pw = wo + 2, by conv3_phase. */
static kiln_tensor *c3_phase(kiln_ctx *ctx, const char *op, kiln_tensor *src, const conv_geom *g) {
    int n = (int)src->shape[0], c = (int)src->shape[1], pw = g->wo + 2, hq = g->ho + 1;
    int64_t planes = (int64_t)n * c;
    cl_int slack = C3_SLACK_ROWS * pw + C3_SLACK_FLOATS;
    kiln_tensor *xq = kiln__tensor_new(ctx, op, KILN_F32, 1, (int64_t[]){planes * 4 * hq * pw + slack});
    if (!xq || planes == 0) return xq;
    cl_int soff = (cl_int)src->offset, cc = c, ch = (cl_int)src->shape[2], cw = (cl_int)src->shape[3];
    cl_int chq = hq, cpw = pw, np = (cl_int)planes, xqoff = (cl_int)xq->offset;
    cl_int4 ss = strides4(src);
    kiln__karg args[] = {KILN__ARG(src->st->mem), KILN__ARG(soff),  KILN__ARG(ss),    KILN__ARG(cc),
                         KILN__ARG(ch),           KILN__ARG(cw),    KILN__ARG(chq),   KILN__ARG(cpw),
                         KILN__ARG(xq->st->mem),  KILN__ARG(xqoff), KILN__ARG(slack), KILN__ARG(np)};
    if (kiln__launch(ctx, op, CONV_PROGRAM, CONV_DT_OPTIONS(src->dtype), "conv3_phase", sizeof args / sizeof args[0],
                     args, (size_t)planes, 0) != KILN_OK) {
        kiln_tensor_free(xq);
        return NULL;
    }
    return xq;
}

/* The forward kernels by their C3_KERNEL value (cl_kernels/conv.cl), and the one p picks. */
static const char *const c3_kernels[] = {NULL, "conv3_direct", "conv3_flat", "conv3_bcast"};
static int c3_kernel(const c3_params *p) { return p->bc ? 3 : p->flat ? 2 : 1; }

/* The build options of the forward kernel p picks (C3_KERNEL builds that one with
 * conv3_pack), for tensor operands of dtype dt. */
static void c3_options(const c3_params *p, int stride, kiln_dtype dt, char *buf, size_t cap) {
    snprintf(buf, cap, "-DC3_KERNEL=%d -DC3_VW=%d -DC3_NV=%d -DC3_R=%d -DC3_CB=%d -DC3_S2=%d -DC3_KJ3=%d%s",
             c3_kernel(p), p->vw, p->nv, p->r, p->cb, stride == 2, p->kj3, CONV_DT_OPTIONS(dt));
}

/*
 * out [n, cout, h, w] (contiguous, new, of dtype odt) = the 3x3 stride-1 padding-1
 * convolution by conv3_direct of the bordered planes xp of [n, cin, h, w] (c3_pad): the
 * forward (dgrad false: xp from x, the weight as it is) or the input gradient (xp from gy,
 * cin = the convolution's cout, taps flipped and channels exchanged by the strides), plus
 * bias[o] (of dtype odt) when given, and with relu (only with a bias) ReLU of that.
 */
static kiln_tensor *c3_run(kiln_ctx *ctx, const char *op, kiln_tensor *xp, kiln_tensor *w, kiln_tensor *bias, bool relu,
                           const conv_geom *g, bool dgrad, kiln_dtype odt) {
    /* (the output's size: stride 1 keeps it, the input gradient's too) */
    int cin = dgrad ? g->cout : g->c, cout = dgrad ? g->c : g->cout, h = g->ho, wd = g->wo, stride = c3_stride(g);
    kiln_tensor *out = kiln__tensor_new(ctx, op, odt, 4, (int64_t[]){g->n, cout, h, wd});
    if (!out || g->n == 0) return out;
    c3_params p = c3_choose(ctx, h, wd, cin, cout, stride);
    int pw = c3_pitch(&p, wd), nrb, nseg, ncb = (cout + p.cb - 1) / p.cb;
    c3_grid(&p, h, wd, &nrb, &nseg);
    char options[128], pack_options[128];
    c3_options(&p, stride, odt, options, sizeof options);
    c3_options(&p, stride, w->dtype, pack_options, sizeof pack_options);
    /* the weights packed per block of output channels; tap (ki, kj) of (o, i): forward
     * w[o, i, ki, kj], input gradient w[i, o, 2-ki, 2-kj] */
    cl_int4 ws = strides4(w);
    cl_int woff = (cl_int)w->offset;
    if (dgrad) {
        woff += 2 * ws.s[2] + 2 * ws.s[3];
        ws = (cl_int4){{ws.s[1], ws.s[0], -ws.s[2], -ws.s[3]}};
    }
    cl_int cc = cin, co = cout, npack = ncb * cin;
    kiln_tensor *wp = kiln__tensor_new(ctx, op, KILN_F32, 1, (int64_t[]){(int64_t)npack * 9 * p.cb});
    kiln_status s = wp ? KILN_OK : ctx->err;
    if (s == KILN_OK) {
        cl_int wpoff = (cl_int)wp->offset;
        kiln__karg args[] = {KILN__ARG(w->st->mem), KILN__ARG(woff),        KILN__ARG(ws),    KILN__ARG(cc),
                             KILN__ARG(co),         KILN__ARG(wp->st->mem), KILN__ARG(wpoff), KILN__ARG(npack)};
        s = kiln__launch(ctx, op, CONV_PROGRAM, pack_options, "conv3_pack", sizeof args / sizeof args[0], args,
                         (size_t)npack, 0);
    }
    if (s == KILN_OK) {
        cl_int ch = h, cw = wd, cpw = pw, cns = nseg, cnr = nrb, cnc = ncb, hb = bias ? (relu ? 2 : 1) : 0;
        cl_int boff = bias ? (cl_int)bias->offset : 0, ooff = (cl_int)out->offset, wpoff = (cl_int)wp->offset;
        cl_mem bmem = bias ? bias->st->mem : w->st->mem;
        cl_int nitems = g->n * ncb * nrb * nseg, xpoff = (cl_int)xp->offset;
        kiln__karg args[] = {KILN__ARG(xp->st->mem), KILN__ARG(xpoff),       KILN__ARG(cc),    KILN__ARG(ch),
                             KILN__ARG(cw),          KILN__ARG(cpw),         KILN__ARG(cns),   KILN__ARG(cnr),
                             KILN__ARG(cnc),         KILN__ARG(wp->st->mem), KILN__ARG(wpoff), KILN__ARG(bmem),
                             KILN__ARG(boff),        KILN__ARG(hb),          KILN__ARG(co),    KILN__ARG(out->st->mem),
                             KILN__ARG(ooff),        KILN__ARG(nitems)};
        const char *kernel = c3_kernels[c3_kernel(&p)];
        s = kiln__launch(ctx, op, CONV_PROGRAM, options, kernel, sizeof args / sizeof args[0], args, (size_t)nitems,
                         KILN__SPREAD);
    }
    /* the in-order queue runs both launches before a later reuse of wp */
    kiln_tensor_free(wp);
    if (s != KILN_OK) {
        kiln_tensor_free(out);
        return NULL;
    }
    return out;
}

/* The forward by conv3_direct: x bordered, then convolved. */
static kiln_tensor *conv_direct_fwd(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *w, kiln_tensor *bias,
                                    bool relu, const conv_geom *g, kiln_tensor **keep) {
    int stride = c3_stride(g);
    c3_params p = c3_choose(ctx, g->ho, g->wo, g->c, g->cout, stride);
    kiln_tensor *xp = stride == 2 ? c3_phase(ctx, op, x, g) : c3_pad(ctx, op, x, c3_pitch(&p, g->w), p.kj3);
    kiln_tensor *out = xp ? c3_run(ctx, op, xp, w, bias, relu, g, false, x->dtype) : NULL;
    /* (conv3_wgrad reads bordered or phase planes, not column-shifted ones) */
    if (out && keep && !p.kj3) {
        *keep = xp;
        return out;
    }
    /* the in-order queue runs the launches before a later reuse of xp */
    kiln_tensor_free(xp);
    return out;
}

/* ---- the three cores ---------------------------------------------------------------- */

static bool conv_direct_wgrad_wanted(kiln_ctx *ctx, const conv_geom *g, int algo);

/* out [n, cout, ho, wo] = conv(x, w) + bias, and with relu (only with a bias) ReLU of that,
 * in the same store. x any view, w any view [cout, c/groups, kh, kw]; each of them f32, f16
 * or bf16 (the kernels read each in its own dtype; the GEMM reads an f32 copy of a half
 * weight), bias and out of x's dtype. With keep, where the
 * direct route computes the forward and would compute the weight gradient, *keep = the
 * bordered (or phase) planes of x it made, which conv3_wgrad reads as they are (else, and
 * for column-shifted planes, *keep is left alone). */
static kiln_tensor *conv_fwd(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *w, kiln_tensor *bias,
                             bool relu, const conv_geom *g, kiln_tensor **keep) {
    int algo;
    if (algo_override(ctx, op, &algo) != KILN_OK) return NULL;
    if (conv_direct_wanted(ctx, g, algo, false))
        return conv_direct_fwd(ctx, op, x, w, bias, relu, g,
                               keep && conv_direct_wgrad_wanted(ctx, g, algo) && g->n > 0 ? keep : NULL);
    kiln_tensor *out = kiln__tensor_new(ctx, op, x->dtype, 4, (int64_t[]){g->n, g->cout, g->ho, g->wo});
    if (!out || g->n == 0) return out;
    int64_t hw = (int64_t)g->ho * g->wo, mg = g->cout / g->groups;
    int64_t kg = (int64_t)(g->c / g->groups) * g->kh * g->kw, krows = g->groups * kg;
    kiln_tensor *wc = NULL, *col = NULL, *tmp = NULL;
    kiln_status s = KILN_OK;
    if (w->dtype != KILN_F32 ? !(wc = kiln__convert(ctx, op, w, KILN_F32))
                             : !kiln__is_contiguous(w) && !(wc = kiln__copy_contiguous(ctx, op, w)))
        s = ctx->err;
    kiln_tensor *wt = wc ? wc : w;
    int nb = kiln__conv_chunk_images(ctx, (krows + g->cout) * hw, hw, g->n);
    /* One image without bias: the GEMM's [cout, HW] result is the NCHW image itself (f32). */
    bool direct = nb == 1 && !bias && out->dtype == KILN_F32;
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
        if (s == KILN_OK && !direct) s = from_cnhw(ctx, op, tmp, out, bias, relu, n0, cnt);
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
 * One conv_bwd call: what is left to compute, the sizes and choices its steps share, and
 * its scratch buffers. The steps, in order:
 *   bwd_outputs       the gradients' tensors (zero-filled for an empty batch);
 *   bwd_small_wgrad   few taps without kiln's own kernels: dW and d bias from x and gy
 *                     directly (conv_wgrad_small), done before the chunks;
 *   bwd_prepare       padded rows kgp, the weight as the input gradient's GEMM reads it,
 *                     images per chunk, split-K parts, scratch buffers;
 *   per chunk of images: bwd_chunk_gy (gy as [cout, cnt*HW] matrices, d bias rows),
 *                     bwd_chunk_wgrad (dW), bwd_chunk_dgrad (d input through col2im);
 *   bwd_finish        split or padded dW partials summed into dW, scratch freed.
 */
typedef struct bwd_plan {
    kiln_ctx *ctx;
    const char *op;
    const conv_geom *g;
    kiln_tensor *x, *w, *gy, *dx_bias;
    kiln_tensor *dx, *dw, *db;               /* the outputs */
    bool do_dw, do_db;                       /* dw / db still to be computed by the chunks */
    int64_t hw, mg, kg;                      /* pixels per image, output channels and taps per group */
    int64_t kgp, krp;                        /* kg padded for the GEMM tiles, and for every group */
    int64_t kw;                              /* dw's columns as its GEMM computes them (kg or kgp) */
    int64_t nsplit;                          /* split-K parts of dw (1: none) */
    int nb;                                  /* images per chunk */
    bool own_dw;                             /* kiln's own A B^T kernel computes dw */
    bool dx_done;                            /* dx came from conv3_direct: no chunk computes it */
    bool dw_direct;                          /* dw comes from conv3_wgrad (before the chunks) */
    kiln_tensor *xpad;                       /* x's planes as conv3_wgrad reads them, from the forward */
    kiln_tensor *gyb;                        /* gy bordered for conv3_direct, kept when its pitch */
    int gyb_pitch;                           /* is conv3_wgrad's too */
    bool direct;                             /* one image of a contiguous gy is read in place */
    size_t tk;                               /* the GEMM's K tile (kiln__sgemm_tiles) */
    kiln_tensor *wt;                         /* w for the input gradient: contiguous, rows padded to kgp */
    kiln_tensor *wc, *wp, *gyp, *col, *part; /* scratch */
} bwd_plan;

/* The requested gradients' tensors (dx of gy's dtype, dw and db f32); for an empty batch dw
 * and db are zeros (dx is empty). */
static kiln_status bwd_outputs(bwd_plan *p, bool want_dx, bool want_dw, bool want_db) {
    kiln_ctx *ctx = p->ctx;
    const conv_geom *g = p->g;
    int64_t cg = g->c / g->groups;
    if (want_dx && !(p->dx = kiln__tensor_new(ctx, p->op, p->gy->dtype, 4, (int64_t[]){g->n, g->c, g->h, g->w})))
        return ctx->err;
    if (want_dw && !(p->dw = kiln__tensor_new(ctx, p->op, KILN_F32, 4, (int64_t[]){g->cout, cg, g->kh, g->kw})))
        return ctx->err;
    if (want_db && !(p->db = kiln__tensor_new(ctx, p->op, KILN_F32, 1, (int64_t[]){g->cout}))) return ctx->err;
    kiln_status s = KILN_OK;
    if (want_dw && g->n == 0) s = kiln_fill(p->dw, 0.0f);
    if (s == KILN_OK && want_db && g->n == 0) s = kiln_fill(p->db, 0.0f);
    return s;
}

/* Few taps per output channel, without kiln's own kernels: weight and bias gradients
 * straight from x and gy, in parts of the batch that spread over the compute units
 * (summed in order after). With kiln's own kernels the GEMM is faster, so they skip this.
 * Leaves nothing for the chunks to do for dw and db. */
static kiln_status bwd_small_wgrad(bwd_plan *p) {
    kiln_ctx *ctx = p->ctx;
    const conv_geom *g = p->g;
    int64_t np = (128 * (int64_t)ctx->info.compute_units + g->cout - 1) / g->cout;
    if (np > g->n) np = g->n;
    if (np > 64) np = 64;
    /* (conv_wgrad_small reads f32: copies of half operands) */
    kiln_tensor *in[2] = {p->x, p->gy}, *use[2] = {p->x, p->gy};
    kiln_status s = KILN_OK;
    for (int j = 0; j < 2 && s == KILN_OK; j++)
        if (in[j]->dtype != KILN_F32 && !(use[j] = kiln__convert(ctx, p->op, in[j], KILN_F32))) s = ctx->err;
    kiln_tensor *part =
        s == KILN_OK ? kiln__tensor_new(ctx, p->op, KILN_F32, 1, (int64_t[]){np * g->cout * (p->kg + 1)}) : NULL;
    if (s == KILN_OK && !part) s = ctx->err;
    if (s == KILN_OK) s = wgrad_small(ctx, p->op, use[0], use[1], part, g, (int)np);
    if (s == KILN_OK)
        s = sum_parts(ctx, p->op, part, (int)np, g->cout, p->kg, p->kg + 1, p->dw, p->do_db ? p->db : NULL);
    /* the in-order queue runs the kernels before any later use of the freed buffers */
    kiln_tensor_free(part);
    kiln__half_release(2, in, use);
    p->do_dw = p->do_db = false;
    return s;
}

/* The choices and scratch buffers of the chunk loop. */
static kiln_status bwd_prepare(bwd_plan *p) {
    kiln_ctx *ctx = p->ctx;
    const conv_geom *g = p->g;
    bool dx = p->dx != NULL && !p->dx_done;
    /* (a chunk's columns are at most all n images' pixels wide) */
    p->kgp = padded_rows(ctx, p->kg,
                         dx && kiln__gemm_own_takes(ctx, true, false, (size_t)p->kg, (size_t)(g->n * p->hw),
                                                    (size_t)p->mg, (size_t)g->groups, 0.0f));
    /* padding must not take one image's columns past 32-bit indexing (conv_setup checked
     * the unpadded ones) */
    if (g->groups * p->kgp * p->hw > CONV_MAX_ELEMS) p->kgp = p->kg;
    p->krp = g->groups * p->kgp;
    /* (the GEMM reads an f32 copy of a half weight) */
    if (dx &&
        (p->w->dtype != KILN_F32 ? !(p->wc = kiln__convert(ctx, p->op, p->w, KILN_F32))
                                 : !kiln__is_contiguous(p->w) && !(p->wc = kiln__copy_contiguous(ctx, p->op, p->w))))
        return ctx->err;
    p->wt = p->wc ? p->wc : p->w;
    if (dx && p->kgp != p->kg) {
        if (!(p->wp = kiln__tensor_new(ctx, p->op, KILN_F32, 1, (int64_t[]){g->cout * p->kgp})) ||
            pad_cols(ctx, p->op, p->wt, g->cout, p->kg, p->kgp, p->wp) != KILN_OK)
            return ctx->err;
        p->wt = p->wp;
    }
    p->nb = kiln__conv_chunk_images(ctx, (p->krp + g->cout) * p->hw, p->hw, g->n);
    /* One image of a contiguous f32 gy already is its [cout, HW] matrix. */
    p->direct = p->nb == 1 && kiln__is_contiguous(p->gy) && p->gy->dtype == KILN_F32;
    if (!p->direct && !(p->gyp = kiln__tensor_new(ctx, p->op, KILN_F32, 1, (int64_t[]){p->nb * g->cout * p->hw})))
        return ctx->err;
    if (!(p->col = kiln__tensor_new(ctx, p->op, KILN_F32, 1, (int64_t[]){p->nb * p->krp * p->hw}))) return ctx->err;
    /* Split-K parts of the weight gradient (groups already give a batch of their own); the
     * parts of every chunk have the length of the first chunk's. A padded or split weight
     * gradient is computed into `part` and summed / cut to dw's shape after. */
    int64_t nsplit = p->do_dw && g->groups == 1 ? p->nb * p->hw / split_min_k(ctx) : 1;
    if (nsplit > SPLIT_PER_UNIT * (int64_t)ctx->info.compute_units) nsplit = SPLIT_PER_UNIT * ctx->info.compute_units;
    if (nsplit > SPLIT_MAX) nsplit = SPLIT_MAX;
    if (nsplit < 1) nsplit = 1;
    /* kiln's own kernel takes any part length: prefer a count down to half this one that
     * divides the chunk's pixels, so that no short remainder (ResNet-20's 14 x 14 stage at
     * batch 128: 25088 = 6 * 4181 + 2) needs a GEMM launch of its own */
    if (p->own_dw && nsplit > 1) {
        int64_t ld = p->nb * p->hw;
        for (int64_t t = nsplit; 2 * t >= nsplit && t > 1; t--) {
            if (ld % t == 0) {
                nsplit = t;
                break;
            }
        }
    }
    p->nsplit = nsplit;
    /* dw's columns as the GEMM computes them: kg through kiln's own kernel, kgp through
     * CLBlast (padded rows of the transposed columns) */
    p->kw = p->own_dw ? p->kg : p->kgp;
    if (p->do_dw && (nsplit > 1 || p->kw != p->kg) &&
        !(p->part = kiln__tensor_new(ctx, p->op, KILN_F32, 1, (int64_t[]){nsplit * g->cout * p->kw})))
        return ctx->err;
    size_t tm, tn;
    kiln__sgemm_tiles(ctx, &tm, &tn, &p->tk);
    return KILN_OK;
}

/* gy of images n0 .. n0+cnt-1 as the groups' [mg, cnt*HW] matrices (*gb), and their bias
 * gradient rows added to db. */
static kiln_status bwd_chunk_gy(bwd_plan *p, int n0, int cnt, gmat *gb) {
    const conv_geom *g = p->g;
    size_t ld = (size_t)(cnt * p->hw);
    if (p->direct) {
        *gb = gm(p->gy, (size_t)(n0 * g->cout * p->hw), ld, (size_t)p->mg * ld, false);
    } else {
        kiln_status s = to_cnhw(p->ctx, p->op, p->gy, p->gyp, n0, cnt);
        if (s != KILN_OK) return s;
        *gb = gm(p->gyp, 0, ld, (size_t)p->mg * ld, false);
    }
    return p->do_db ? bias_rows(p->ctx, p->op, gb, p->db, n0 > 0) : KILN_OK;
}

/* dw_g [mg, kw] (+)= gy_g [mg, cnt*HW] x cols_g^T for images n0 .. n0+cnt-1, chunks
 * accumulating in order. kiln's own kernel reads the plain columns cols_g [kg, cnt*HW] as
 * B^T (A B^T, both along the pixels); CLBlast reads colT_g [cnt*HW, kgp], which
 * conv_im2col_t writes transposed. */
static kiln_status bwd_chunk_wgrad(bwd_plan *p, int n0, int cnt, gmat gb) {
    kiln_ctx *ctx = p->ctx;
    const char *op = p->op;
    const conv_geom *g = p->g;
    size_t ld = (size_t)(cnt * p->hw), kw = (size_t)p->kw, mg = (size_t)p->mg;
    /* elements from one pixel's column entries to the next one's */
    size_t step = p->own_dw ? 1 : (size_t)p->kgp;
    kiln_status s =
        p->own_dw ? im2col(ctx, op, p->x, p->col, g, n0, cnt) : im2col_t(ctx, op, p->x, p->col, g, p->kgp, n0, cnt);
    if (s != KILN_OK) return s;
    float beta = n0 == 0 ? 0.0f : 1.0f;
    gmat c = gm(p->part ? p->part : p->dw, 0, kw, mg * kw, false);
    if (p->nsplit == 1) {
        gmat b = p->own_dw ? gm(p->col, 0, ld, (size_t)p->kg * ld, true)
                           : gm(p->col, 0, (size_t)p->krp, (size_t)p->kgp, false);
        return gemm(ctx, op, mg, kw, ld, gb, b, beta, c, (size_t)g->groups);
    }
    /* part s (+)= the products over [s*len, (s+1)*len) of the inner dim, len a multiple of
     * CLBlast's K tile where it can be; the rest goes to part 0. Parts pay with kiln's
     * kernel too: each part's rows stay in cache while every block uses them. */
    size_t nsplit = (size_t)p->nsplit, len = ld / nsplit;
    if (!p->own_dw && len >= p->tk) len = len / p->tk * p->tk;
    size_t rest = ld - len * nsplit;
    gmat a = gb,
         b = p->own_dw ? gm(p->col, 0, ld, len, true) : gm(p->col, 0, (size_t)p->kgp, len * (size_t)p->kgp, false);
    a.stride = len;
    c.stride = (size_t)g->cout * kw;
    if (len > 0) s = gemm(ctx, op, mg, kw, len, a, b, beta, c, nsplit);
    if (s == KILN_OK && rest > 0) {
        a.off += len * nsplit;
        b.off += len * nsplit * step;
        s = gemm(ctx, op, mg, kw, rest, a, b, len > 0 || n0 > 0 ? 1.0f : 0.0f, c, 1);
    }
    return s;
}

/* Images n0 .. n0+cnt-1 of dx: cols_g [kgp, cnt*HW] = w_g^T gy_g (rows past kg are zero),
 * then gathered into the images (plus dx_bias). */
static kiln_status bwd_chunk_dgrad(bwd_plan *p, int n0, int cnt, gmat gb) {
    const conv_geom *g = p->g;
    size_t ld = (size_t)(cnt * p->hw), kgp = (size_t)p->kgp, mg = (size_t)p->mg;
    kiln_status s = gemm(p->ctx, p->op, kgp, ld, mg, gm(p->wt, 0, kgp, mg * kgp, true), gb, 0.0f,
                         gm(p->col, 0, ld, kgp * ld, false), (size_t)g->groups);
    return s == KILN_OK ? col2im(p->ctx, p->op, p->col, p->dx, p->dx_bias, g, p->kgp, n0, cnt) : s;
}

/* dw from its split or padded partials (when s is still KILN_OK); frees the scratch. */
static kiln_status bwd_finish(bwd_plan *p, kiln_status s) {
    if (s == KILN_OK && p->part)
        s = sum_parts(p->ctx, p->op, p->part, (int)p->nsplit, p->g->cout, p->kg, p->kw, p->dw, NULL);
    kiln_tensor_free(p->part);
    kiln_tensor_free(p->gyb);
    kiln_tensor_free(p->col);
    kiln_tensor_free(p->gyp);
    kiln_tensor_free(p->wp);
    kiln_tensor_free(p->wc);
    return s;
}

/* dx by conv3_direct from a bordered (or column-shifted) copy of gy (before the chunks,
 * which then compute only dw and d bias). */
static kiln_status bwd_direct_dx(bwd_plan *p) {
    c3_params cp = c3_choose(p->ctx, p->g->h, p->g->w, p->g->cout, p->g->c, 1);
    int pw = c3_pitch(&cp, p->g->w);
    kiln_tensor *gp = c3_pad(p->ctx, p->op, p->gy, pw, cp.kj3);
    if (gp && !(p->dx = c3_run(p->ctx, p->op, gp, p->w, p->dx_bias, false, p->g, true, p->gy->dtype))) {
        kiln_tensor_free(gp);
        return p->ctx->err;
    }
    if (!gp) return p->ctx->err;
    /* conv3_wgrad reads the copy too (the same pitch); otherwise the in-order queue runs
     * the launches before a later reuse of it */
    if (p->dw_direct && !cp.kj3) {
        p->gyb = gp;
        p->gyb_pitch = pw;
    } else {
        kiln_tensor_free(gp);
    }
    return KILN_OK;
}

/* conv3_wgrad's choices: vw floats per vector, wb output channels per work-item (18 of
 * AVX-512's 32 vector registers, 9 of AVX2's 16 as accumulators), parts of the batch of
 * C3W_IMAGES images each, C3W_IMAGES_SMALL for output planes below C3W_SMALL pixels
 * (summed in order after; one part is written into dw directly). On ResNet-20's weight
 * gradients (batch 128, AVX-512; CPU samples of the kernel) blocks of 2 channels were as
 * fast as blocks of 3 or 4 and 1.6x as fast as blocks of 1; parts of 8 images were 10%
 * faster than 32 or 128 on 28 x 28 planes, parts of 16-32 10% faster than 8 or 128 on 7 x 7
 * ones (a work-item's closing sums weigh more there), all alike on 14 x 14.
 * chan: conv3_wgradc instead, nv vectors of output channels per work-item (two with 16-float
 * vectors and more than 16 channels: 18 accumulators), for stride-1 rows of up to 16 pixels
 * with at least a vector of output channels and 8-float vectors or wider: a 7 x 7 plane
 * fills 49 of conv3_wgrad's 64 lanes (its border columns and the last vector's slack), a
 * 14 x 14 one 196 of 224, while every lane of conv3_wgradc is a channel; on 28 x 28 planes
 * (784 of 848 lanes) it gained nothing (README.md, "Speed"). KILN_CONV3_WGRAD=planes|channels
 * forces either (channels for stride 1 only; for measurements and tests; another value
 * than those and auto fails the op in algo_override). */
#define C3W_IMAGES 8
#define C3W_IMAGES_SMALL 32
#define C3W_SMALL 128
typedef struct c3w_params {
    int vw, wb, nparts;
    bool chan; /* conv3_wgradc, nv vectors of output channels per work-item */
    int nv;
} c3w_params;

static c3w_params c3w_choose(const kiln_ctx *ctx, const conv_geom *g) {
    c3w_params p;
    p.vw = kiln__float_vw(ctx) < 4 ? 4 : kiln__float_vw(ctx);
    p.wb = p.vw >= 16 ? 2 : 1;
    int imgs = (int64_t)g->ho * g->wo < C3W_SMALL ? C3W_IMAGES_SMALL : C3W_IMAGES;
    p.nparts = g->n > imgs ? (g->n + imgs - 1) / imgs : 1;
    p.nv = c3_chan_vectors(p.vw, g->cout);
    p.chan = c3_stride(g) == 1 && p.vw >= 8 && g->wo <= 16 && g->cout >= p.vw;
    const char *e = getenv("KILN_CONV3_WGRAD");
    if (e && strcmp(e, "planes") == 0) p.chan = false;
    if (e && strcmp(e, "channels") == 0) p.chan = c3_stride(g) == 1;
    /* (conv3_tocl's copy, indexed with ints) */
    int64_t bcb = (int64_t)p.nv * p.vw, cpad = (g->cout + bcb - 1) / bcb * bcb;
    if ((int64_t)g->n * g->ho * g->wo * cpad > CONV_MAX_ELEMS) p.chan = false;
    return p;
}

static bool conv_direct_wgrad_wanted(kiln_ctx *ctx, const conv_geom *g, int algo) {
    int stride = c3_stride(g);
    if (stride == 0 || (stride == 1 && (g->h != g->ho || g->w != g->wo))) return false;
    c3w_params p = c3w_choose(ctx, g);
    int64_t pw = (int64_t)g->wo + 2, plane = ((int64_t)g->ho + 2) * pw;
    int64_t slack = C3_SLACK_ROWS * pw + C3_SLACK_FLOATS;
    if (2 * pw + (stride == 2 ? 3 : 1) < p.vw || (int64_t)g->n * g->cout * plane + slack > CONV_MAX_ELEMS ||
        (int64_t)g->n * g->c * c3_in_plane(g, stride, false, pw) + slack > CONV_MAX_ELEMS ||
        (int64_t)p.nparts * g->cout * g->c * 9 > CONV_MAX_ELEMS)
        return false;
    if (algo != ALGO_AUTO) return algo == ALGO_DIRECT;
    return ctx->info.type == KILN_DEVICE_CPU && kiln__float_vw(ctx) >= 8;
}

/* dw by conv3_wgrad from bordered copies of x and gy (before the chunks, which then compute
 * at most dx and d bias). */
static kiln_status bwd_direct_dw(bwd_plan *p) {
    kiln_ctx *ctx = p->ctx;
    const conv_geom *g = p->g;
    c3w_params cp = c3w_choose(ctx, g);
    int stride = c3_stride(g);
    /* (over gy's bordered planes: the output's size; stride 1 runs two positions further,
     * conv3_wgrad says why) */
    cl_int pw = g->wo + 2, plane = (g->ho + 2) * pw;
    cl_int nvec = (g->ho * pw - (stride == 2 ? 2 : 0) + cp.vw - 1) / cp.vw;
    cl_int c = g->c, cout = g->cout, n = g->n, np = cp.nparts, ncb = (g->cout + cp.wb - 1) / cp.wb;
    kiln_tensor *xp = p->xpad       ? p->xpad
                      : stride == 2 ? c3_phase(ctx, p->op, p->x, g)
                                    : c3_pad(ctx, p->op, p->x, pw, false);
    kiln_tensor *gp = !xp                            ? NULL
                      : cp.chan                      ? c3_tocl(ctx, p->op, p->gy, cp.nv * cp.vw)
                      : p->gyb && p->gyb_pitch == pw ? p->gyb
                                                     : c3_pad(ctx, p->op, p->gy, pw, false);
    kiln_tensor *part = NULL;
    kiln_status s = gp ? KILN_OK : ctx->err;
    if (s == KILN_OK && np > 1 &&
        !(part = kiln__tensor_new(ctx, p->op, KILN_F32, 1, (int64_t[]){(int64_t)np * cout * c * 9})))
        s = ctx->err;
    if (s == KILN_OK && cp.chan) {
        kiln_tensor *dst = part ? part : p->dw;
        char options[64];
        snprintf(options, sizeof options, "-DC3_KERNEL=5 -DC3_VW=%d -DC3_NV=%d", cp.vw, cp.nv);
        cl_int bcb = cp.nv * cp.vw, ncbc = (g->cout + bcb - 1) / bcb, cpad = ncbc * bcb, h = g->ho, w = g->wo;
        cl_int xpoff = (cl_int)xp->offset, gpoff = (cl_int)gp->offset, doff = (cl_int)dst->offset;
        cl_int nitems = np * ncbc * c;
        kiln__karg args[] = {
            KILN__ARG(xp->st->mem), KILN__ARG(xpoff),        KILN__ARG(gp->st->mem), KILN__ARG(gpoff),
            KILN__ARG(c),           KILN__ARG(cout),         KILN__ARG(cpad),        KILN__ARG(h),
            KILN__ARG(w),           KILN__ARG(pw),           KILN__ARG(n),           KILN__ARG(np),
            KILN__ARG(ncbc),        KILN__ARG(dst->st->mem), KILN__ARG(doff),        KILN__ARG(nitems)};
        s = kiln__launch(ctx, p->op, CONV_PROGRAM, options, "conv3_wgradc", sizeof args / sizeof args[0], args,
                         (size_t)nitems, KILN__SPREAD);
    } else if (s == KILN_OK) {
        kiln_tensor *dst = part ? part : p->dw;
        char options[64];
        snprintf(options, sizeof options, "-DC3_KERNEL=4 -DC3_VW=%d -DC3_WB=%d -DC3_S2=%d", cp.vw, cp.wb, stride == 2);
        cl_int xpoff = (cl_int)xp->offset, gpoff = (cl_int)gp->offset, doff = (cl_int)dst->offset;
        cl_int nitems = np * ncb * c;
        kiln__karg args[] = {
            KILN__ARG(xp->st->mem), KILN__ARG(xpoff), KILN__ARG(gp->st->mem),  KILN__ARG(gpoff), KILN__ARG(c),
            KILN__ARG(cout),        KILN__ARG(plane), KILN__ARG(pw),           KILN__ARG(nvec),  KILN__ARG(n),
            KILN__ARG(np),          KILN__ARG(ncb),   KILN__ARG(dst->st->mem), KILN__ARG(doff),  KILN__ARG(nitems)};
        s = kiln__launch(ctx, p->op, CONV_PROGRAM, options, "conv3_wgrad", sizeof args / sizeof args[0], args,
                         (size_t)nitems, KILN__SPREAD);
    }
    if (s == KILN_OK && part) s = sum_parts(ctx, p->op, part, np, cout, (int64_t)c * 9, (int64_t)c * 9, p->dw, NULL);
    /* the in-order queue runs the launches before a later reuse of the copies */
    kiln_tensor_free(part);
    if (gp != p->gyb) kiln_tensor_free(gp);
    if (xp != p->xpad) kiln_tensor_free(xp);
    p->do_dw = false;
    return s;
}

/*
 * Gradients of a convolution from gy [n, cout, ho, wo] (any view), each when its pointer
 * is not NULL: *dx (the input's shape, gy's dtype, plus dx_bias[c] of that dtype when
 * given), *dw (w's shape), *db (the sum of gy over images and pixels, [cout]), both f32. x
 * (any view) is needed only for dw, w only for dx; x, w and gy are each f32, f16 or bf16,
 * read in their own dtype. Outputs are new tensors (all NULL on failure).
 */
static kiln_status conv_bwd(kiln_ctx *ctx, const char *op, const conv_geom *g, kiln_tensor *x, kiln_tensor *xpad,
                            kiln_tensor *w, kiln_tensor *gy, kiln_tensor *dx_bias, kiln_tensor **dx, kiln_tensor **dw,
                            kiln_tensor **db) {
    bwd_plan p = {.ctx = ctx, .op = op, .g = g, .x = x, .xpad = xpad, .w = w, .gy = gy, .dx_bias = dx_bias};
    p.do_dw = dw != NULL;
    p.do_db = db != NULL;
    p.hw = (int64_t)g->ho * g->wo;
    p.mg = g->cout / g->groups;
    p.kg = (int64_t)(g->c / g->groups) * g->kh * g->kw;
    /* the input gradient by conv3_direct where it applies (computed first, on its own) */
    int algo;
    kiln_status s = algo_override(ctx, op, &algo);
    p.dx_done = s == KILN_OK && dx && conv_direct_wanted(ctx, g, algo, true);
    /* the weight gradient by conv3_wgrad where it applies (after dx: the bordered gy may
     * serve both) */
    p.dw_direct = s == KILN_OK && dw && g->n > 0 && conv_direct_wgrad_wanted(ctx, g, algo);
    if (s == KILN_OK) s = bwd_outputs(&p, dx != NULL && !p.dx_done, dw != NULL, db != NULL);
    if (s == KILN_OK && p.dx_done) s = bwd_direct_dx(&p);
    if (s == KILN_OK && p.dw_direct) s = bwd_direct_dw(&p);
    if (s == KILN_OK && g->n > 0) {
        /* On CPUs the weight gradient is gy_g cols_g^T through kiln's own A B^T kernel,
         * which reads both operands along the pixels: the plain columns of conv_im2col,
         * unpadded (src/ops/gemm.c), which conv_im2col writes faster than conv_im2col_t
         * writes the transposed ones. (A chunk's columns are at most all n images' pixels
         * wide.) */
        p.own_dw = p.do_dw && kiln__gemm_own_takes(ctx, false, true, (size_t)p.mg, (size_t)p.kg, (size_t)(g->n * p.hw),
                                                   (size_t)g->groups, 1.0f);
        if (p.do_dw && p.kg <= SMALL_KG && !p.own_dw) s = bwd_small_wgrad(&p);
        if (s == KILN_OK && ((p.dx && !p.dx_done) || p.do_dw || p.do_db)) s = bwd_prepare(&p);
        for (int n0 = 0; s == KILN_OK && p.col && n0 < g->n; n0 += p.nb) {
            int cnt = g->n - n0 < p.nb ? g->n - n0 : p.nb;
            gmat gb;
            s = bwd_chunk_gy(&p, n0, cnt, &gb);
            if (s == KILN_OK && p.do_dw) s = bwd_chunk_wgrad(&p, n0, cnt, gb);
            if (s == KILN_OK && p.dx && !p.dx_done) s = bwd_chunk_dgrad(&p, n0, cnt, gb);
        }
    }
    s = bwd_finish(&p, s);
    kiln_tensor **outs[3] = {dx, dw, db};
    kiln_tensor *got[3] = {p.dx, p.dw, p.db};
    for (int k = 0; k < 3; k++) {
        if (s != KILN_OK) kiln_tensor_free(got[k]);
        if (outs[k]) *outs[k] = s == KILN_OK ? got[k] : NULL;
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
    bool is_float[3] = {false, false, !bias};
    for (int j = 0; j < 3; j++) {
        kiln_tensor *t = j == 0 ? x : j == 1 ? w : bias;
        if (t) is_float[j] = t->dtype == KILN_F32 || kiln_dtype_is_half(t->dtype);
    }
    if (!is_float[0] || !is_float[1] || !is_float[2]) {
        kiln__fail(ctx, KILN_ERR_DTYPE, "%s: f32, f16 and bf16 are supported, got input %s %s, weight %s %s%s%s%s", op,
                   kiln_dtype_name(x->dtype), sx, kiln_dtype_name(w->dtype), sw, bias ? ", bias " : "",
                   bias ? kiln_dtype_name(bias->dtype) : "", bias ? sb : "");
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

/* Sum of gy over N, H and W: the bias gradient. */
static kiln_tensor *bias_grad(kiln_ctx *ctx, kiln_tensor *gy) {
    static const int axes[3] = {0, 2, 3};
    return kiln_sum(ctx, gy, 3, axes, false);
}

static kiln_status conv2d_backward(kiln_ctx *ctx, kiln__node *nd, kiln_tensor *gout) {
    const conv_state *st = KILN__NODE_STATE(nd, conv_state);
    if (!st) return ctx->err;
    conv_geom g = st->g;
    kiln_tensor *x = nd->in[0], *w = nd->in[1];
    bool want_dx = kiln__input_needs_grad(nd, 0), want_dw = kiln__input_needs_grad(nd, 1);
    bool want_db = nd->nin > 2 && kiln__input_needs_grad(nd, 2);
    kiln_tensor *dx = NULL, *dw = NULL, *db = NULL;
    kiln_status s = KILN_OK;
    /* the bias gradient comes from the permuted gradient when that is made anyway */
    if (want_dx || want_dw)
        s = conv_bwd(ctx, nd->op, &g, x, nd->nsaved > 0 ? nd->saved[0] : NULL, w, gout, NULL, want_dx ? &dx : NULL,
                     want_dw ? &dw : NULL, want_db ? &db : NULL);
    else if (want_db && !(db = bias_grad(ctx, gout)))
        s = ctx->err;
    /* fresh tensors: each becomes the gradient as it is where the slot is empty */
    kiln_tensor *got[3] = {dx, dw, db};
    for (int k = 0; k < 3; k++) {
        if (s == KILN_OK && got[k])
            s = kiln__accum_owned(ctx, nd, k, got[k]);
        else
            kiln_tensor_free(got[k]);
    }
    return s;
}

/* relu(conv2d(x, w) + b) fused: relu's backward, then conv2d's */
static kiln_status conv2d_relu_backward(kiln_ctx *ctx, kiln__node *nd, kiln_tensor *gout) {
    return kiln__relu_backward_then(ctx, nd, gout, conv2d_backward);
}

static kiln_status conv_transpose2d_backward(kiln_ctx *ctx, kiln__node *nd, kiln_tensor *gout) {
    const conv_state *st = KILN__NODE_STATE(nd, conv_state);
    if (!st) return ctx->err;
    conv_geom g = st->g;
    kiln_tensor *x = nd->in[0], *w = nd->in[1];
    kiln_tensor *dx = NULL, *dw = NULL, *db = NULL;
    kiln_status s = KILN_OK;
    /* gout is the convolution's input: d x = conv(gout, w); d w from (gout, x) with x as
     * the convolution's output gradient; d bias sums gout. */
    if (kiln__input_needs_grad(nd, 0) && !(dx = conv_fwd(ctx, nd->op, gout, w, NULL, false, &g, NULL))) s = ctx->err;
    if (s == KILN_OK && kiln__input_needs_grad(nd, 1))
        s = conv_bwd(ctx, nd->op, &g, gout, NULL, w, x, NULL, NULL, &dw, NULL);
    if (s == KILN_OK && nd->nin > 2 && kiln__input_needs_grad(nd, 2) && !(db = bias_grad(ctx, gout))) s = ctx->err;
    /* fresh tensors: each becomes the gradient as it is where the slot is empty */
    kiln_tensor *got[3] = {dx, dw, db};
    for (int k = 0; k < 3; k++) {
        if (s == KILN_OK && got[k])
            s = kiln__accum_owned(ctx, nd, k, got[k]);
        else
            kiln_tensor_free(got[k]);
    }
    return s;
}

/* Records the op when some input requires grad; frees out and returns NULL on failure. */
static kiln_tensor *record(kiln_ctx *ctx, const char *op, kiln_tensor *out, kiln_tensor *x, kiln_tensor *w,
                           kiln_tensor *bias, const conv_geom *g, kiln__backward_fn fn, kiln_tensor *xpad) {
    kiln_tensor *in[3] = {x, w, bias};
    int nin = bias ? 3 : 2;
    if (kiln__grad_wanted(ctx, nin, in)) {
        kiln__node *nd = kiln__node_new(ctx, op, out, nin, in, fn);
        conv_state *st = nd ? KILN__NODE_STATE_NEW(nd, conv_state) : NULL;
        /* the forward's planes of x for the weight gradient (saved[0]; NULL saves nothing) */
        if (!st || kiln__node_save(nd, xpad) != KILN_OK) {
            kiln_tensor_free(xpad);
            kiln_tensor_free(out);
            return NULL;
        }
        st->g = *g;
    }
    kiln_tensor_free(xpad);
    return kiln__finish(ctx, op, out);
}

/* ---- public ------------------------------------------------------------------------- */

/* conv2d, and with relu (only with a bias) relu of it in the same store. Inputs of one
 * dtype (f32, f16 or bf16) run in it, the output in that dtype; f32 and halves mixed run
 * on f32 copies of the halves (torch's promotion). The node records the caller's tensors:
 * the backward reads halves as they are. */
static kiln_tensor *conv2d_run(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *weight, kiln_tensor *bias,
                               const kiln_conv2d_params *p, bool relu) {
    conv_geom g;
    if (!conv_setup(ctx, op, x, weight, bias, p ? p : &default_params, false, &g)) return NULL;
    kiln_tensor *in[3] = {x, weight, bias}, *use[3];
    int nin = bias ? 3 : 2;
    if (kiln__half_inputs(ctx, op, nin, in, use) == KILN_DTYPE_COUNT) return NULL;
    /* the direct route's planes of x are kept for the weight gradient where it is wanted */
    kiln_tensor *xpad = NULL;
    kiln_tensor *out = conv_fwd(ctx, op, use[0], use[1], bias ? use[2] : NULL, relu, &g,
                                kiln__grad_wanted(ctx, 1, &weight) ? &xpad : NULL);
    kiln__half_release(nin, in, use);
    if (!out) return NULL;
    return record(ctx, op, out, x, weight, bias, &g, relu ? conv2d_relu_backward : conv2d_backward, xpad);
}

/* The public convolutions' entries: run(ctx, op, x, w, b, p, relu). */
typedef kiln_tensor *(*conv_entry)(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *w, kiln_tensor *b,
                                   const kiln_conv2d_params *p, bool relu);

/* Autocast (include/kiln/amp.h): with autocast on and an f32 input among x, w and b, *res =
 * run on the inputs cast to half, and true; false to go on with the inputs as they are. */
static bool conv_autocast(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *w, kiln_tensor *b,
                          const kiln_conv2d_params *p, bool relu, conv_entry run, kiln_tensor **res) {
    kiln_tensor *in3[3] = {x, w, b}, *cast[3];
    int nc = kiln__autocast_inputs(ctx, 3, in3, cast);
    if (nc == 0) return false;
    *res = nc > 0 ? run(ctx, op, cast[0], cast[1], cast[2], p, relu) : NULL;
    kiln__half_release(3, in3, cast);
    return true;
}

/* conv2d, and with relu ReLU of it: one op (conv2d_run's fused store) with a bias and
 * inputs of one dtype, else the two ops (the fused store is one dtype's). */
static kiln_tensor *conv2d_entry(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *w, kiln_tensor *b,
                                 const kiln_conv2d_params *p, bool relu) {
    kiln_tensor *r;
    if (conv_autocast(ctx, op, x, w, b, p, relu, conv2d_entry, &r)) return r;
    if (relu && (!x || !w || !b || x->dtype != w->dtype || x->dtype != b->dtype)) {
        kiln_tensor *y = conv2d_entry(ctx, "kiln_conv2d", x, w, b, p, false);
        r = y ? kiln_relu(ctx, y) : NULL;
        kiln_tensor_free(y);
        return r;
    }
    return conv2d_run(ctx, op, x, w, b, p, relu);
}

kiln_tensor *kiln_conv2d(kiln_ctx *ctx, kiln_tensor *x, kiln_tensor *weight, kiln_tensor *bias,
                         const kiln_conv2d_params *p) {
    return conv2d_entry(ctx, "kiln_conv2d", x, weight, bias, p, false);
}

kiln_tensor *kiln__conv2d_relu(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *weight, kiln_tensor *bias,
                               const kiln_conv2d_params *p) {
    return conv2d_entry(ctx, op, x, weight, bias, p, true);
}

/* conv_transpose2d (relu unused): inputs of one dtype run in it, f32 and halves mixed on
 * f32 copies of the halves. */
static kiln_tensor *conv_transpose2d_entry(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *weight,
                                           kiln_tensor *bias, const kiln_conv2d_params *p, bool relu) {
    kiln_tensor *r;
    if (conv_autocast(ctx, op, x, weight, bias, p, relu, conv_transpose2d_entry, &r)) return r;
    conv_geom g;
    if (!conv_setup(ctx, op, x, weight, bias, p ? p : &default_params, true, &g)) return NULL;
    kiln_tensor *in3[3] = {x, weight, bias}, *use[3];
    int nin = bias ? 3 : 2;
    if (kiln__half_inputs(ctx, op, nin, in3, use) == KILN_DTYPE_COUNT) return NULL;
    kiln_tensor *out = NULL;
    kiln_status s = conv_bwd(ctx, op, &g, NULL, NULL, use[1], use[0], bias ? use[2] : NULL, &out, NULL, NULL);
    kiln__half_release(nin, in3, use);
    if (s != KILN_OK) return NULL;
    return record(ctx, op, out, x, weight, bias, &g, conv_transpose2d_backward, NULL);
}

kiln_tensor *kiln_conv_transpose2d(kiln_ctx *ctx, kiln_tensor *x, kiln_tensor *weight, kiln_tensor *bias,
                                   const kiln_conv2d_params *p) {
    return conv_transpose2d_entry(ctx, "kiln_conv_transpose2d", x, weight, bias, p, false);
}

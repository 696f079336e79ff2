/* src/ops/rnn.c - the recurrent layers RNN (tanh, relu), LSTM and GRU as one op with
 * backpropagation through time (kernels in cl_kernels/rnn.cl).
 *
 * kiln_rnn runs the layers one after the other; each layer (both directions) is one
 * autograd node, rnn_layer. Its forward, per direction: the input projection of all T
 * steps as one GEMM (x W_ih^T, [T*B, G*H]), then per step one GEMM (h_prev W_hh^T) and one
 * fused kernel for the gates and the state update. Its backward, per direction, walks the
 * steps in reverse: one fused gate-gradient kernel and one GEMM (dh += da W_hh) per step,
 * then the input gradient and both weight gradients as one GEMM each over all steps and
 * the bias gradients as column sums. Every step reads and writes offsets inside whole
 * buffers, so the loop enqueues work on the in-order queue and never waits for the device.
 *
 * Saved for the backward: the layer's input, the states of every step (h and, for LSTM,
 * c: [D, T+1, B, H], slot 0 of the forward direction and slot T of the reverse one holding
 * the initial state) and the gate activations ([D, T, B, 4H]; none for RNN, whose
 * derivative comes from h itself).
 *
 * The node has one output: the packed tensor [T*B*D*H | D*B*H (h_n) | D*B*H (c_n, LSTM)].
 * kiln_rnn hands out differentiable views of its parts (kiln_slice + kiln_view), so a
 * gradient reaching any of the output, h_n and c_n flows into the one node. Internally
 * every layer is time-major; batch_first transposes the input and the output once.
 *
 * Variable lengths: sequence b is active at time s while s < lengths[b]; an inactive step
 * keeps the state and writes zeros. The reverse direction walks s = T-1 .. 0 and so starts
 * each sequence at its own last element, as torch's packed sequences do, and h_n is the
 * state after each sequence's own last step in both directions.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_internal.h"

#define RNN_PROGRAM "rnn"

/* gates per step of mode m: columns of W_ih are G*H */
static int rnn_gates(kiln_rnn_mode m) { return m == KILN_RNN_LSTM ? 4 : m == KILN_RNN_GRU ? 3 : 1; }
/* saved activations per step and hidden unit */
static int rnn_saved(kiln_rnn_mode m) { return m == KILN_RNN_RNN_TANH || m == KILN_RNN_RNN_RELU ? 0 : 4; }

const char *kiln_rnn_mode_name(kiln_rnn_mode m) {
    switch (m) {
    case KILN_RNN_RNN_TANH: return "RNN_TANH";
    case KILN_RNN_RNN_RELU: return "RNN_RELU";
    case KILN_RNN_LSTM: return "LSTM";
    case KILN_RNN_GRU: return "GRU";
    }
    return "?";
}

kiln_rnn_params kiln_rnn_defaults(void) {
    return (kiln_rnn_params){
        .num_layers = 1, .bias = true, .batch_first = false, .dropout = 0.0f, .bidirectional = false};
}

/* ---- one layer: node state and helpers -------------------------------------------------- */

/* in[0] x [T, B, I], in[1] h0 [D, B, H], in[2] c0, in[3 + 4d ...] w_ih, w_hh, b_ih, b_hh of
 * direction d (biases NULL when the layer has none). saved: xc (contiguous x), hs, gates,
 * then cs (LSTM) and the lengths (I32 [B]) when present; the indices are below. */
typedef struct rnn_layer_state {
    int mode, D;
    int64_t T, B, I, H;
    bool has_bias;
    int i_cs, i_len; /* saved index of cs and of the lengths, -1 when absent */
} rnn_layer_state;

static kiln_status gemm(kiln_ctx *ctx, const char *op, bool ta, bool tb, int64_t m, int64_t n, int64_t k,
                        kiln_tensor *a, int64_t aoff, int64_t lda, kiln_tensor *b, int64_t boff, int64_t ldb,
                        float beta, kiln_tensor *c, int64_t coff, int64_t ldc) {
    int s = kiln__sgemm(ctx, op, ta, tb, (size_t)m, (size_t)n, (size_t)k, 1.0f, a->st->mem, (size_t)(a->offset + aoff),
                        (size_t)lda, 0, b->st->mem, (size_t)(b->offset + boff), (size_t)ldb, 0, beta, c->st->mem,
                        (size_t)(c->offset + coff), (size_t)ldc, 0, 1);
    if (s == 0) return KILN_OK;
    if (s == KILN__SGEMM_FAILED) return ctx->err;
    return kiln__fail(ctx, KILN_ERR_CLBLAST, "%s: GEMM (m=%lld n=%lld k=%lld) failed on '%s': CLBlast status %d", op,
                      (long long)m, (long long)n, (long long)k, ctx->info.name, s);
}

/* t itself when contiguous, else a contiguous copy (free with free_copy). */
static kiln_tensor *contig(kiln_ctx *ctx, const char *op, kiln_tensor *t) {
    if (!t) return NULL;
    return kiln__is_contiguous(t) ? t : kiln__copy_contiguous(ctx, op, t);
}
static void free_copy(kiln_tensor *t, kiln_tensor *orig) {
    if (t && t != orig) kiln_tensor_free(t);
}

/* A contiguous [rows, cols] view of t's storage at element offset off (from t's start). */
static kiln_tensor *mat_view(kiln_ctx *ctx, kiln_tensor *t, int64_t off, int64_t rows, int64_t cols) {
    return kiln__tensor_view(ctx, t, 2, (int64_t[]){rows, cols}, (int64_t[]){cols, 1}, t->offset + off);
}

/* dst[doff ..] = src[soff ..] for n contiguous elements (both contiguous storages). */
static kiln_status copy_run(kiln_ctx *ctx, const char *op, kiln_tensor *src, int64_t soff, kiln_tensor *dst,
                            int64_t doff, int64_t n) {
    kiln_tensor *a = mat_view(ctx, src, soff, 1, n), *b = a ? mat_view(ctx, dst, doff, 1, n) : NULL;
    kiln_status s = b ? kiln__copy_into(ctx, op, a, b) : ctx->err;
    kiln_tensor_free(a);
    kiln_tensor_free(b);
    return s;
}

static kiln_status zero_run(kiln_ctx *ctx, kiln_tensor *dst, int64_t doff, int64_t n) {
    kiln_tensor *b = mat_view(ctx, dst, doff, 1, n);
    kiln_status s = b ? kiln_fill(b, 0.0f) : ctx->err;
    kiln_tensor_free(b);
    return s;
}

/* Hidden units per work-item of the step kernels (rnn.cl's RNN_VW): on CPUs the widest
 * float vector of the device (up to 16) that divides H, else 1 (GPUs: one unit each). With
 * one unit per work-item POCL ran them as scalar code: lstm_fwd took a fifth of the
 * reference LSTM's step on one core (README.md, "Speed"). */
static int step_vw(const kiln_ctx *ctx, int64_t H) {
    if (ctx->info.type != KILN_DEVICE_CPU) return 1;
    int v = kiln__float_vw(ctx);
    while (v > 1 && H % v != 0) v /= 2;
    return v;
}

/* A step kernel of rnn.cl over [H / RNN_VW, B] work-items (j fastest). */
static kiln_status step_launch(kiln_ctx *ctx, const char *op, const char *kernel, size_t nargs, const kiln__karg *args,
                               int64_t B, int64_t H) {
    int vw = step_vw(ctx, H);
    char options[32];
    snprintf(options, sizeof options, "-DRNN_VW=%d", vw);
    size_t global[2] = {(size_t)(H / vw), (size_t)B};
    return kiln__launch2(ctx, op, RNN_PROGRAM, options, kernel, nargs, args, global, NULL);
}

/* ---- one layer: backward ------------------------------------------------------------------ */

static kiln_status rnn_layer_backward(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout) {
    const char *op = n->op;
    const rnn_layer_state *st = KILN__NODE_STATE(n, rnn_layer_state);
    if (!st) return ctx->err;
    kiln_rnn_mode mode = (kiln_rnn_mode)st->mode;
    int D = st->D, G = rnn_gates(mode), GW = 4;
    int64_t T = st->T, B = st->B, I = st->I, H = st->H, GH = G * H, BH = B * H, DH = D * H;
    kiln_tensor *xc = n->saved[0], *hs = n->saved[1], *gates = n->saved[2];
    kiln_tensor *cs = st->i_cs >= 0 ? n->saved[st->i_cs] : NULL, *len = st->i_len >= 0 ? n->saved[st->i_len] : NULL;
    bool lstm = mode == KILN_RNN_LSTM, gru = mode == KILN_RNN_GRU;
    cl_int relu = mode == KILN_RNN_RNN_RELU, has_len = len != NULL, cB = (cl_int)B, cH = (cl_int)H;
    cl_mem lenm = len ? len->st->mem : hs->st->mem;
    cl_int loff = len ? (cl_int)len->offset : 0;
    kiln_status s = KILN_OK;
    kiln_tensor *dh = NULL, *dc = NULL, *da = NULL, *dah = NULL, *whT = NULL, *dx = NULL, *dw = NULL, *db = NULL;
    kiln_tensor *ones = NULL;

    /* the state gradients start as the gradients of h_n and c_n */
    int64_t ny = T * B * DH;
    dh = kiln__tensor_new(ctx, op, KILN_F32, 3, (int64_t[]){D, B, H});
    if (!dh || (s = copy_run(ctx, op, gout, ny, dh, 0, D * BH)) != KILN_OK) goto done;
    if (lstm) {
        dc = kiln__tensor_new(ctx, op, KILN_F32, 3, (int64_t[]){D, B, H});
        if (!dc || (s = copy_run(ctx, op, gout, ny + D * BH, dc, 0, D * BH)) != KILN_OK) goto done;
    }
    da = kiln__tensor_new(ctx, op, KILN_F32, 2, (int64_t[]){T * B, GH});
    if (!da) goto done;
    if (gru && !(dah = kiln__tensor_new(ctx, op, KILN_F32, 2, (int64_t[]){T * B, GH}))) goto done;
    kiln_tensor *dahs = gru ? dah : da; /* the hidden side's gate gradients */

    for (int d = 0; d < D; d++) {
        kiln_tensor *wih = n->in[3 + 4 * d], *whh = n->in[4 + 4 * d];
        bool fwd = d == 0;
        int64_t hbase = (int64_t)d * (T + 1) * BH, gbase = (int64_t)d * T * B * GW * H;
        /* W_hh^T, [H, G*H]: dh += da W_hh is then an "A B^T" product */
        kiln_tensor *tv = kiln_transpose(ctx, whh, 0, 1);
        whT = tv ? kiln__copy_contiguous(ctx, op, tv) : NULL;
        kiln_tensor_free(tv);
        if (!whT) goto done;
        cl_int dhoff = (cl_int)(dh->offset + d * BH), dcoff = dc ? (cl_int)(dc->offset + d * BH) : 0;
        for (int64_t k = 0; k < T; k++) {
            int64_t sidx = fwd ? T - 1 - k : k;
            int64_t prev = fwd ? sidx : sidx + 1, next = fwd ? sidx + 1 : sidx;
            cl_int cs_ = (cl_int)sidx, goff = (cl_int)(gates ? gates->offset + gbase + sidx * B * GW * H : 0);
            cl_int dyoff = (cl_int)(gout->offset + sidx * B * DH + d * H), dyld = (cl_int)DH;
            cl_int daoff = (cl_int)(da->offset + sidx * B * GH);
            if (lstm) {
                cl_int cp = (cl_int)(cs->offset + hbase + prev * BH), cn = (cl_int)(cs->offset + hbase + next * BH);
                kiln__karg args[] = {KILN__ARG(cB),
                                     KILN__ARG(cH),
                                     KILN__ARG(cs_),
                                     KILN__ARG(has_len),
                                     KILN__ARG(lenm),
                                     KILN__ARG(loff),
                                     KILN__ARG(gates->st->mem),
                                     KILN__ARG(goff),
                                     KILN__ARG(cs->st->mem),
                                     KILN__ARG(cp),
                                     KILN__ARG(cn),
                                     KILN__ARG(gout->st->mem),
                                     KILN__ARG(dyoff),
                                     KILN__ARG(dyld),
                                     KILN__ARG(dh->st->mem),
                                     KILN__ARG(dhoff),
                                     KILN__ARG(dc->st->mem),
                                     KILN__ARG(dcoff),
                                     KILN__ARG(da->st->mem),
                                     KILN__ARG(daoff)};
                s = step_launch(ctx, op, "lstm_bwd", sizeof args / sizeof args[0], args, B, H);
            } else if (gru) {
                cl_int hp = (cl_int)(hs->offset + hbase + prev * BH);
                kiln__karg args[] = {KILN__ARG(cB),
                                     KILN__ARG(cH),
                                     KILN__ARG(cs_),
                                     KILN__ARG(has_len),
                                     KILN__ARG(lenm),
                                     KILN__ARG(loff),
                                     KILN__ARG(gates->st->mem),
                                     KILN__ARG(goff),
                                     KILN__ARG(hs->st->mem),
                                     KILN__ARG(hp),
                                     KILN__ARG(gout->st->mem),
                                     KILN__ARG(dyoff),
                                     KILN__ARG(dyld),
                                     KILN__ARG(dh->st->mem),
                                     KILN__ARG(dhoff),
                                     KILN__ARG(da->st->mem),
                                     KILN__ARG(dah->st->mem),
                                     KILN__ARG(daoff)};
                s = step_launch(ctx, op, "gru_bwd", sizeof args / sizeof args[0], args, B, H);
            } else {
                cl_int hn = (cl_int)(hs->offset + hbase + next * BH);
                kiln__karg args[] = {KILN__ARG(cB),          KILN__ARG(cH),
                                     KILN__ARG(cs_),         KILN__ARG(has_len),
                                     KILN__ARG(lenm),        KILN__ARG(loff),
                                     KILN__ARG(hs->st->mem), KILN__ARG(hn),
                                     KILN__ARG(relu),        KILN__ARG(gout->st->mem),
                                     KILN__ARG(dyoff),       KILN__ARG(dyld),
                                     KILN__ARG(dh->st->mem), KILN__ARG(dhoff),
                                     KILN__ARG(da->st->mem), KILN__ARG(daoff)};
                s = step_launch(ctx, op, "rnn_bwd", sizeof args / sizeof args[0], args, B, H);
            }
            if (s != KILN_OK) goto done;
            /* dh (the gradient of h_prev) += da_s W_hh */
            s = gemm(ctx, op, false, true, B, H, GH, dahs, sidx * B * GH, GH, whT, 0, GH, 1.0f, dh, d * BH, H);
            if (s != KILN_OK) goto done;
        }
        kiln_tensor_free(whT);
        whT = NULL;
        /* over all steps: dx = da W_ih, dW_ih = da^T x, dW_hh = dah^T h_prev, biases */
        if (kiln__input_needs_grad(n, 0)) {
            dx = kiln__tensor_new(ctx, op, KILN_F32, 3, (int64_t[]){T, B, I});
            if (!dx) goto done;
            kiln_tensor *wic = contig(ctx, op, wih);
            if (!wic) goto done;
            s = gemm(ctx, op, false, false, T * B, I, GH, da, 0, GH, wic, 0, I, 0.0f, dx, 0, I);
            free_copy(wic, wih);
            if (s != KILN_OK || (s = kiln__accum(ctx, n, 0, dx)) != KILN_OK) goto done;
            kiln_tensor_free(dx);
            dx = NULL;
        }
        if (kiln__input_needs_grad(n, 3 + 4 * d)) {
            dw = kiln__tensor_new(ctx, op, KILN_F32, 2, (int64_t[]){GH, I});
            if (!dw) goto done;
            if ((s = gemm(ctx, op, true, false, GH, I, T * B, da, 0, GH, xc, 0, I, 0.0f, dw, 0, I)) != KILN_OK ||
                (s = kiln__accum(ctx, n, 3 + 4 * d, dw)) != KILN_OK)
                goto done;
            kiln_tensor_free(dw);
            dw = NULL;
        }
        if (kiln__input_needs_grad(n, 4 + 4 * d)) {
            dw = kiln__tensor_new(ctx, op, KILN_F32, 2, (int64_t[]){GH, H});
            if (!dw) goto done;
            int64_t h0slot = hbase + (fwd ? 0 : BH);
            if ((s = gemm(ctx, op, true, false, GH, H, T * B, dahs, 0, GH, hs, h0slot, H, 0.0f, dw, 0, H)) != KILN_OK ||
                (s = kiln__accum(ctx, n, 4 + 4 * d, dw)) != KILN_OK)
                goto done;
            kiln_tensor_free(dw);
            dw = NULL;
        }
        /* the bias gradients: column sums of the gate gradients, da^T ones as one GEMM
         * (LSTM and RNN share one sum for both biases) */
        for (int q = 0; q < 2; q++) {
            if (!kiln__input_needs_grad(n, 5 + 4 * d + q)) continue;
            if (!ones && !(ones = kiln_ones(ctx, 1, (int64_t[]){T * B}))) goto done;
            if (!db || (q == 1 && gru)) {
                kiln_tensor_free(db);
                if (!(db = kiln__tensor_new(ctx, op, KILN_F32, 1, &GH))) goto done;
                s = gemm(ctx, op, true, false, GH, 1, T * B, q == 0 ? da : dahs, 0, GH, ones, 0, 1, 0.0f, db, 0, 1);
                if (s != KILN_OK) goto done;
            }
            if ((s = kiln__accum(ctx, n, 5 + 4 * d + q, db)) != KILN_OK) goto done;
        }
        kiln_tensor_free(db);
        db = NULL;
    }
    if ((s = kiln__accum(ctx, n, 1, dh)) != KILN_OK) goto done;
    if (dc && (s = kiln__accum(ctx, n, 2, dc)) != KILN_OK) goto done;
done:
    if (s == KILN_OK && ctx->err != KILN_OK) s = ctx->err;
    kiln_tensor_free(dh);
    kiln_tensor_free(dc);
    kiln_tensor_free(da);
    kiln_tensor_free(dah);
    kiln_tensor_free(whT);
    kiln_tensor_free(dx);
    kiln_tensor_free(dw);
    kiln_tensor_free(db);
    kiln_tensor_free(ones);
    return s;
}

/* ---- one layer: forward -------------------------------------------------------------------- */

/*
 * One layer, D directions, over x [T, B, I] (time-major) from the states h0/c0 [D, B, H]
 * (NULL: zeros) with the weights w[4 * D] (w_ih, w_hh, b_ih, b_hh per direction; biases
 * NULL or all present) and the lengths len (I32 [B], NULL: all T). Returns the packed
 * tensor [T*B*D*H + D*B*H (+ D*B*H)] (see the top of the file).
 */
static kiln_tensor *rnn_layer(kiln_ctx *ctx, const char *op, kiln_rnn_mode mode, kiln_tensor *x, kiln_tensor *h0,
                              kiln_tensor *c0, kiln_tensor *const *w, int D, int64_t H, kiln_tensor *len) {
    int64_t T = x->shape[0], B = x->shape[1], I = x->shape[2];
    int G = rnn_gates(mode), GW = rnn_saved(mode);
    int64_t GH = G * H, BH = B * H, DH = D * H;
    bool lstm = mode == KILN_RNN_LSTM, gru = mode == KILN_RNN_GRU;
    kiln_tensor *in[11] = {x, h0, c0};
    for (int k = 0; k < 4 * D; k++) in[3 + k] = w[k];
    bool grad = kiln__grad_wanted(ctx, 3 + 4 * D, in);
    bool has_bias = w[2] != NULL;

    kiln_tensor *xc = NULL, *h0c = NULL, *c0c = NULL, *wc[8] = {0};
    kiln_tensor *out = NULL, *hs = NULL, *cs = NULL, *gates = NULL, *xg = NULL, *gh = NULL;
    xc = contig(ctx, op, x);
    if (!xc) goto fail;
    if (h0 && !(h0c = contig(ctx, op, h0))) goto fail;
    if (c0 && !(c0c = contig(ctx, op, c0))) goto fail;
    for (int k = 0; k < 4 * D; k++)
        if (w[k] && !(wc[k] = contig(ctx, op, w[k]))) goto fail;

    int64_t ny = T * B * DH, ntot = ny + (lstm ? 2 : 1) * D * BH;
    out = kiln__tensor_new(ctx, op, KILN_F32, 1, &ntot);
    hs = out ? kiln__tensor_new(ctx, op, KILN_F32, 4, (int64_t[]){D, T + 1, B, H}) : NULL;
    if (!hs) goto fail;
    if (lstm && !(cs = kiln__tensor_new(ctx, op, KILN_F32, 4, (int64_t[]){D, T + 1, B, H}))) goto fail;
    if (grad && GW && !(gates = kiln__tensor_new(ctx, op, KILN_F32, 4, (int64_t[]){D, T, B, GW * H}))) goto fail;
    xg = kiln__tensor_new(ctx, op, KILN_F32, 2, (int64_t[]){T * B, GH});
    gh = xg ? kiln__tensor_new(ctx, op, KILN_F32, 2, (int64_t[]){B, GH}) : NULL;
    if (!gh) goto fail;

    cl_int cB = (cl_int)B, cH = (cl_int)H, has_len = len != NULL, save = gates != NULL,
           relu = mode == KILN_RNN_RNN_RELU;
    cl_int cbias = has_bias;
    cl_mem any = hs->st->mem, lenm = len ? len->st->mem : any;
    cl_int loff = len ? (cl_int)len->offset : 0;
    for (int d = 0; d < D; d++) {
        kiln_tensor *wih = wc[4 * d], *whh = wc[4 * d + 1], *bih = wc[4 * d + 2], *bhh = wc[4 * d + 3];
        bool fwd = d == 0;
        int64_t hbase = (int64_t)d * (T + 1) * BH, first = hbase + (fwd ? 0 : T * BH),
                last = hbase + (fwd ? T * BH : 0);
        kiln_status s = h0c ? copy_run(ctx, op, h0c, d * BH, hs, first, BH) : zero_run(ctx, hs, first, BH);
        if (s == KILN_OK && lstm)
            s = c0c ? copy_run(ctx, op, c0c, d * BH, cs, first, BH) : zero_run(ctx, cs, first, BH);
        /* the input projection of every step */
        if (s == KILN_OK) s = gemm(ctx, op, false, true, T * B, GH, I, xc, 0, I, wih, 0, I, 0.0f, xg, 0, GH);
        if (s != KILN_OK) goto fail;
        cl_mem bim = bih ? bih->st->mem : any, bhm = bhh ? bhh->st->mem : any;
        cl_int bioff = bih ? (cl_int)bih->offset : 0, bhoff = bhh ? (cl_int)bhh->offset : 0;
        for (int64_t k = 0; k < T; k++) {
            int64_t sidx = fwd ? k : T - 1 - k;
            int64_t prev = fwd ? sidx : sidx + 1, next = fwd ? sidx + 1 : sidx;
            if ((s = gemm(ctx, op, false, true, B, GH, H, hs, hbase + prev * BH, H, whh, 0, H, 0.0f, gh, 0, GH)) !=
                KILN_OK)
                goto fail;
            cl_int cs_ = (cl_int)sidx, xoff = (cl_int)(xg->offset + sidx * B * GH), ghoff = (cl_int)gh->offset;
            cl_int hp = (cl_int)(hs->offset + hbase + prev * BH), hn = (cl_int)(hs->offset + hbase + next * BH);
            cl_int goff = gates ? (cl_int)(gates->offset + ((int64_t)d * T + sidx) * B * GW * H) : 0;
            cl_mem gm = gates ? gates->st->mem : any;
            cl_int yoff = (cl_int)(out->offset + sidx * B * DH + d * H), yld = (cl_int)DH;
            if (lstm) {
                cl_int cp = (cl_int)(cs->offset + hbase + prev * BH), cn = (cl_int)(cs->offset + hbase + next * BH);
                kiln__karg args[] = {
                    KILN__ARG(cB),      KILN__ARG(cH),          KILN__ARG(cs_),          KILN__ARG(xg->st->mem),
                    KILN__ARG(xoff),    KILN__ARG(gh->st->mem), KILN__ARG(ghoff),        KILN__ARG(cbias),
                    KILN__ARG(bim),     KILN__ARG(bioff),       KILN__ARG(bhm),          KILN__ARG(bhoff),
                    KILN__ARG(has_len), KILN__ARG(lenm),        KILN__ARG(loff),         KILN__ARG(hs->st->mem),
                    KILN__ARG(hp),      KILN__ARG(hs->st->mem), KILN__ARG(hn),           KILN__ARG(cs->st->mem),
                    KILN__ARG(cp),      KILN__ARG(cs->st->mem), KILN__ARG(cn),           KILN__ARG(save),
                    KILN__ARG(gm),      KILN__ARG(goff),        KILN__ARG(out->st->mem), KILN__ARG(yoff),
                    KILN__ARG(yld)};
                s = step_launch(ctx, op, "lstm_fwd", sizeof args / sizeof args[0], args, B, H);
            } else if (gru) {
                kiln__karg args[] = {
                    KILN__ARG(cB),      KILN__ARG(cH),          KILN__ARG(cs_),          KILN__ARG(xg->st->mem),
                    KILN__ARG(xoff),    KILN__ARG(gh->st->mem), KILN__ARG(ghoff),        KILN__ARG(cbias),
                    KILN__ARG(bim),     KILN__ARG(bioff),       KILN__ARG(bhm),          KILN__ARG(bhoff),
                    KILN__ARG(has_len), KILN__ARG(lenm),        KILN__ARG(loff),         KILN__ARG(hs->st->mem),
                    KILN__ARG(hp),      KILN__ARG(hs->st->mem), KILN__ARG(hn),           KILN__ARG(save),
                    KILN__ARG(gm),      KILN__ARG(goff),        KILN__ARG(out->st->mem), KILN__ARG(yoff),
                    KILN__ARG(yld)};
                s = step_launch(ctx, op, "gru_fwd", sizeof args / sizeof args[0], args, B, H);
            } else {
                kiln__karg args[] = {
                    KILN__ARG(cB),           KILN__ARG(cH),          KILN__ARG(cs_),   KILN__ARG(xg->st->mem),
                    KILN__ARG(xoff),         KILN__ARG(gh->st->mem), KILN__ARG(ghoff), KILN__ARG(cbias),
                    KILN__ARG(bim),          KILN__ARG(bioff),       KILN__ARG(bhm),   KILN__ARG(bhoff),
                    KILN__ARG(has_len),      KILN__ARG(lenm),        KILN__ARG(loff),  KILN__ARG(hs->st->mem),
                    KILN__ARG(hp),           KILN__ARG(hs->st->mem), KILN__ARG(hn),    KILN__ARG(relu),
                    KILN__ARG(out->st->mem), KILN__ARG(yoff),        KILN__ARG(yld)};
                s = step_launch(ctx, op, "rnn_fwd", sizeof args / sizeof args[0], args, B, H);
            }
            if (s != KILN_OK) goto fail;
        }
        /* h_n (and c_n) of this direction: its state after its last step */
        if ((s = copy_run(ctx, op, hs, last, out, ny + d * BH, BH)) != KILN_OK) goto fail;
        if (lstm && (s = copy_run(ctx, op, cs, last, out, ny + D * BH + d * BH, BH)) != KILN_OK) goto fail;
    }
    if (grad) {
        kiln__node *n = kiln__node_new(ctx, op, out, 3 + 4 * D, in, rnn_layer_backward);
        rnn_layer_state *st = n ? KILN__NODE_STATE_NEW(n, rnn_layer_state) : NULL;
        if (!st) goto fail;
        *st = (rnn_layer_state){(int)mode, D, T, B, I, H, has_bias, -1, -1};
        int idx = 3;
        if (kiln__node_save(n, xc) != KILN_OK || kiln__node_save(n, hs) != KILN_OK) goto fail;
        /* RNN has no gate activations: the slot holds hs again so the indices stay fixed */
        if (kiln__node_save(n, gates ? gates : hs) != KILN_OK) goto fail;
        if (cs) {
            if (kiln__node_save(n, cs) != KILN_OK) goto fail;
            st->i_cs = idx++;
        }
        if (len) {
            if (kiln__node_save(n, len) != KILN_OK) goto fail;
            st->i_len = idx++;
        }
    }
    free_copy(xc, x);
    free_copy(h0c, h0);
    free_copy(c0c, c0);
    for (int k = 0; k < 4 * D; k++) free_copy(wc[k], w[k]);
    kiln_tensor_free(hs);
    kiln_tensor_free(cs);
    kiln_tensor_free(gates);
    kiln_tensor_free(xg);
    kiln_tensor_free(gh);
    return out;
fail:
    free_copy(xc, x);
    free_copy(h0c, h0);
    free_copy(c0c, c0);
    for (int k = 0; k < 4 * D; k++) free_copy(wc[k], w[k]);
    kiln_tensor_free(out);
    kiln_tensor_free(hs);
    kiln_tensor_free(cs);
    kiln_tensor_free(gates);
    kiln_tensor_free(xg);
    kiln_tensor_free(gh);
    return NULL;
}

/* ---- kiln_rnn: the layers, their checks and the views of the results --------------------- */

/* The view [n0, n1, n2] of the packed tensor p at element start (differentiable). */
static kiln_tensor *part(kiln_ctx *ctx, kiln_tensor *p, int64_t start, int64_t n0, int64_t n1, int64_t n2) {
    kiln_tensor *sl = kiln_slice(ctx, p, 0, start, start + n0 * n1 * n2, 1);
    kiln_tensor *v = sl ? kiln_view(ctx, sl, 3, (int64_t[]){n0, n1, n2}) : NULL;
    kiln_tensor_free(sl);
    return v;
}

static bool is_float(const kiln_tensor *t) { return t->dtype == KILN_F32 || kiln_dtype_is_half(t->dtype); }

/* The checks of kiln_rnn: false with the error set, naming the op, the layer and shapes. */
static bool rnn_check(kiln_ctx *ctx, const char *op, kiln_rnn_mode mode, kiln_tensor *x, kiln_tensor *h0,
                      kiln_tensor *c0, int nweights, kiln_tensor *const *w, const int32_t *lengths,
                      const kiln_rnn_params *p, int64_t *Hout) {
    char sx[160], sw[160], sh[160];
    kiln__shape_str(x->ndim, x->shape, sx, sizeof sx);
    if ((int)mode < 0 || mode > KILN_RNN_GRU) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: mode %d is not a kiln_rnn_mode", op, (int)mode);
        return false;
    }
    const char *kind = kiln_rnn_mode_name(mode);
    if (p->num_layers < 1 || !(p->dropout >= 0.0f && p->dropout < 1.0f)) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s(%s): num_layers %d must be >= 1 and dropout %g in [0, 1) (kiln_rnn_defaults gives torch's)", op,
                   kind, p->num_layers, (double)p->dropout);
        return false;
    }
    int L = p->num_layers, D = p->bidirectional ? 2 : 1, G = rnn_gates(mode);
    if (!is_float(x) || x->ndim != 3) {
        kiln__fail(ctx, !is_float(x) ? KILN_ERR_DTYPE : KILN_ERR_SHAPE,
                   "%s(%s): input %s (%s) must be f32, f16 or bf16 of 3 dims, %s", op, kind, sx,
                   kiln_dtype_name(x->dtype),
                   p->batch_first ? "[batch, seq, features] (batch_first)" : "[seq, batch, features]");
        return false;
    }
    if (nweights != 4 * L * D || !w) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s(%s): %d weights given; %d layers x %d directions need %d (w_ih, w_hh, b_ih, b_hh each)", op,
                   kind, nweights, L, D, 4 * L * D);
        return false;
    }
    int64_t T = x->shape[p->batch_first ? 1 : 0], B = x->shape[p->batch_first ? 0 : 1];
    if (T < 1 || B < 1) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s(%s): input %s has an empty sequence or batch", op, kind, sx);
        return false;
    }
    if (!w[1] || w[1]->ndim != 2) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s(%s): weight_hh_l0 must be a 2-d tensor [%d * hidden, hidden]", op, kind, G);
        return false;
    }
    int64_t H = w[1]->shape[1];
    bool bias = w[2] != NULL;
    for (int l = 0; l < L; l++) {
        for (int d = 0; d < D; d++) {
            int64_t in = l == 0 ? x->shape[2] : D * H;
            const char *sfx = d ? "_reverse" : "";
            static const char *names[4] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
            for (int q = 0; q < 4; q++) {
                kiln_tensor *t = w[4 * (l * D + d) + q];
                int nd = q < 2 ? 2 : 1;
                int64_t want[2] = {G * H, q == 0 ? in : H};
                if (q >= 2 && (t != NULL) != bias) {
                    kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s(%s): %s_l%d%s is %s but bias_ih_l0 is %s", op, kind,
                               names[q], l, sfx, t ? "given" : "NULL", bias ? "given" : "NULL");
                    return false;
                }
                if (!t && q >= 2) continue;
                if (!t || t->ctx != ctx) {
                    kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s(%s): %s_l%d%s is %s", op, kind, names[q], l, sfx,
                               t ? "of another context" : "NULL");
                    return false;
                }
                if (!is_float(t) || t->ndim != nd || t->shape[0] != want[0] || (nd == 2 && t->shape[1] != want[1])) {
                    kiln__shape_str(t->ndim, t->shape, sw, sizeof sw);
                    kiln__shape_str(nd, want, sh, sizeof sh);
                    if (q == 0 && t->ndim == 2 && t->shape[0] == want[0] && l == 0)
                        kiln__fail(ctx, KILN_ERR_SHAPE,
                                   "%s(%s): input %s has %lld features but weight_ih_l0%s %s expects input_size %lld",
                                   op, kind, sx, (long long)x->shape[2], sfx, sw, (long long)t->shape[1]);
                    else
                        kiln__fail(ctx, KILN_ERR_SHAPE,
                                   "%s(%s): %s_l%d%s is %s (%s), expected a float %s (hidden %lld)", op, kind, names[q],
                                   l, sfx, sw, kiln_dtype_name(t->dtype), sh, (long long)H);
                    return false;
                }
            }
        }
    }
    int64_t want[3] = {(int64_t)L * D, B, H};
    kiln__shape_str(3, want, sw, sizeof sw);
    kiln_tensor *st[2] = {h0, c0};
    for (int q = 0; q < 2; q++) {
        kiln_tensor *t = st[q];
        if (!t) continue;
        const char *nm = q ? "c0" : "h0";
        if (q == 1 && mode != KILN_RNN_LSTM) {
            kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s(%s): only LSTM has a cell state; c0 must be NULL", op, kind);
            return false;
        }
        if (t->ctx != ctx) {
            kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s(%s): %s belongs to another context", op, kind, nm);
            return false;
        }
        if (!is_float(t) || t->ndim != 3 || memcmp(t->shape, want, sizeof want) != 0) {
            kiln__fail(ctx, KILN_ERR_SHAPE,
                       "%s(%s): %s %s (%s) must be a float %s [num_layers * directions, batch, hidden] for input %s",
                       op, kind, nm, kiln__shape_str(t->ndim, t->shape, sh, sizeof sh), kiln_dtype_name(t->dtype), sw,
                       sx);
            return false;
        }
    }
    if (lengths) {
        for (int64_t b = 0; b < B; b++) {
            if (lengths[b] < 1 || lengths[b] > T) {
                kiln__fail(ctx, KILN_ERR_RANGE,
                           "%s(%s): lengths[%lld] = %d is outside [1, %lld], the sequence length of input %s", op, kind,
                           (long long)b, (int)lengths[b], (long long)T, sx);
                return false;
            }
        }
    }
    *Hout = H;
    return true;
}

static bool half_any(kiln_tensor *x, kiln_tensor *h0, kiln_tensor *c0, int nweights, kiln_tensor *const *w) {
    kiln_tensor *s[3] = {x, h0, c0};
    return kiln__any_half(3, s) || kiln__any_half(nweights, w);
}

/* Half inputs or weights (checked already): kiln_rnn on f32 copies (differentiable
 * conversions); the results in x's dtype when x is half and autocast is off (kiln/amp.h:
 * autocast runs the recurrent layers in f32), else f32. */
static kiln_tensor *rnn_half(kiln_ctx *ctx, kiln_rnn_mode mode, kiln_tensor *x, kiln_tensor *h0, kiln_tensor *c0,
                             int nweights, kiln_tensor *const *weights, const int32_t *lengths,
                             const kiln_rnn_params *p, bool training, kiln_tensor **h_n, kiln_tensor **c_n);

kiln_tensor *kiln_rnn(kiln_ctx *ctx, kiln_rnn_mode mode, kiln_tensor *x, kiln_tensor *h0, kiln_tensor *c0, int nweights,
                      kiln_tensor *const *weights, const int32_t *lengths, const kiln_rnn_params *params, bool training,
                      kiln_tensor **h_n, kiln_tensor **c_n) {
    static const char op[] = "kiln_rnn";
    if (h_n) *h_n = NULL;
    if (c_n) *c_n = NULL;
    if (!kiln__check_inputs(ctx, op, 1, &x)) return NULL;
    kiln_rnn_params p = params ? *params : kiln_rnn_defaults();
    int64_t H = 0;
    if (!rnn_check(ctx, op, mode, x, h0, c0, nweights, weights, lengths, &p, &H)) return NULL;
    if (c_n && mode != KILN_RNN_LSTM) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s(%s): only LSTM has a cell state; c_n must be NULL", op,
                   kiln_rnn_mode_name(mode));
        return NULL;
    }
    if (half_any(x, h0, c0, nweights, weights))
        return rnn_half(ctx, mode, x, h0, c0, nweights, weights, lengths, &p, training, h_n, c_n);
    int L = p.num_layers, D = p.bidirectional ? 2 : 1;
    bool lstm = mode == KILN_RNN_LSTM;
    int64_t T = x->shape[p.batch_first ? 1 : 0], B = x->shape[p.batch_first ? 0 : 1];
    kiln_tensor *len = NULL;
    if (lengths) {
        bool all = true;
        for (int64_t b = 0; b < B; b++) all &= lengths[b] == T;
        if (!all && !(len = kiln_from_host(ctx, lengths, KILN_I32, 1, &B))) return NULL;
    }
    kiln_tensor *hn[64] = {0}, *cn[64] = {0};
    if (L > 64) {
        kiln__fail(ctx, KILN_ERR_UNSUPPORTED, "%s: at most 64 layers (num_layers %d)", op, L);
        kiln_tensor_free(len);
        return NULL;
    }
    kiln_tensor **res[2] = {h_n, c_n}, **parts[2] = {hn, cn};
    kiln_tensor *cur = p.batch_first ? kiln_transpose(ctx, x, 0, 1) : x, *out = NULL;
    bool ok = cur != NULL;
    for (int l = 0; l < L && ok; l++) {
        kiln_tensor *h0l = h0 ? kiln_slice(ctx, h0, 0, (int64_t)l * D, (int64_t)(l + 1) * D, 1) : NULL;
        kiln_tensor *c0l = c0 ? kiln_slice(ctx, c0, 0, (int64_t)l * D, (int64_t)(l + 1) * D, 1) : NULL;
        kiln_tensor *pk = NULL;
        if ((!h0 || h0l) && (!c0 || c0l)) pk = rnn_layer(ctx, op, mode, cur, h0l, c0l, weights + 4 * l * D, D, H, len);
        kiln_tensor_free(h0l);
        kiln_tensor_free(c0l);
        kiln_tensor *y = pk ? part(ctx, pk, 0, T, B, D * H) : NULL;
        if (pk && h_n) hn[l] = part(ctx, pk, T * B * D * H, D, B, H);
        if (pk && c_n && lstm) cn[l] = part(ctx, pk, T * B * D * H + D * B * H, D, B, H);
        kiln_tensor_free(pk);
        if (y && l + 1 < L && p.dropout > 0.0f && training) {
            kiln_tensor *yd = kiln_dropout(ctx, y, p.dropout, true);
            kiln_tensor_free(y);
            y = yd;
        }
        if (cur != x) kiln_tensor_free(cur);
        cur = y;
        ok = y && (!h_n || hn[l]) && (!c_n || cn[l]);
    }
    if (ok) {
        if (p.batch_first) {
            kiln_tensor *t = kiln_transpose(ctx, cur, 0, 1);
            out = t ? kiln_contiguous(ctx, t) : NULL;
            kiln_tensor_free(t);
        } else {
            out = cur;
            cur = NULL;
        }
    }
    /* one layer: its views are the results; more: the layers' states stacked */
    for (int q = 0; q < 2 && out; q++) {
        if (!res[q]) continue;
        if (L == 1) {
            *res[q] = parts[q][0];
            parts[q][0] = NULL;
        } else {
            *res[q] = kiln_concat(ctx, L, parts[q], 0);
        }
    }
    if (cur != x) kiln_tensor_free(cur);
    for (int l = 0; l < L; l++) {
        kiln_tensor_free(hn[l]);
        kiln_tensor_free(cn[l]);
    }
    kiln_tensor_free(len);
    if (out && ((h_n && !*h_n) || (c_n && !*c_n))) {
        kiln_tensor_free(out);
        out = NULL;
    }
    out = kiln__finish(ctx, op, out);
    if (!out) {
        for (int q = 0; q < 2; q++) {
            if (res[q]) {
                kiln_tensor_free(*res[q]);
                *res[q] = NULL;
            }
        }
    }
    return out;
}

#define RNN_HALF_MAX 512 /* weights: 4 per layer and direction, 64 layers, 2 directions */

static kiln_tensor *rnn_half(kiln_ctx *ctx, kiln_rnn_mode mode, kiln_tensor *x, kiln_tensor *h0, kiln_tensor *c0,
                             int nweights, kiln_tensor *const *weights, const int32_t *lengths,
                             const kiln_rnn_params *p, bool training, kiln_tensor **h_n, kiln_tensor **c_n) {
    if (nweights > RNN_HALF_MAX) {
        kiln__fail(ctx, KILN_ERR_UNSUPPORTED, "kiln_rnn: half tensors with %d weights (at most %d)", nweights,
                   RNN_HALF_MAX);
        return NULL;
    }
    kiln_tensor *in[3] = {x, h0, c0}, *fin[3] = {NULL}, *fw[RNN_HALF_MAX] = {NULL};
    bool ok = true;
    for (int j = 0; j < 3 && ok; j++)
        ok = !in[j] || (fin[j] = kiln_dtype_is_half(in[j]->dtype) ? kiln_to_dtype(ctx, in[j], KILN_F32) : in[j]);
    for (int j = 0; j < nweights && ok; j++)
        ok = !weights[j] ||
             (fw[j] = kiln_dtype_is_half(weights[j]->dtype) ? kiln_to_dtype(ctx, weights[j], KILN_F32) : weights[j]);
    kiln_dtype ac = ctx->autocast;
    ctx->autocast = KILN_F32;
    kiln_tensor *out =
        ok ? kiln_rnn(ctx, mode, fin[0], fin[1], fin[2], nweights, fw, lengths, p, training, h_n, c_n) : NULL;
    ctx->autocast = ac;
    kiln__half_release(3, in, fin);
    kiln__half_release(nweights, weights, fw);
    if (!out || !kiln_dtype_is_half(x->dtype) || kiln_dtype_is_half(ac)) return out;
    /* back to x's dtype: the output and the states */
    kiln_tensor **res[3] = {&out, h_n, c_n};
    for (int q = 0; q < 3; q++) {
        if (!res[q] || !*res[q]) continue;
        kiln_tensor *h = kiln_to_dtype(ctx, *res[q], x->dtype);
        kiln_tensor_free(*res[q]);
        *res[q] = h;
        ok &= h != NULL;
    }
    if (ok) return out;
    for (int q = 0; q < 3; q++)
        if (res[q]) {
            kiln_tensor_free(*res[q]);
            *res[q] = NULL;
        }
    return NULL;
}

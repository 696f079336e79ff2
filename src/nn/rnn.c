/* src/nn/rnn.c - the recurrent modules of nn.h: RNN, LSTM and GRU (torch.nn's, over
 * kiln_rnn) and the cells RNNCell, LSTMCell and GRUCell (one step of the same op), each
 * defined through the public module API with its own typed configuration, torch's
 * parameter names and torch's initialisation U(-1/sqrt(hidden), 1/sqrt(hidden)). */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn_internal.h"

#define PY_BOOL(b) ((b) ? "True" : "False")

/* mode: the layer's kiln_rnn_mode; w: 4 * num_layers * D weights in kiln_rnn's order
 * (biases NULL without bias), owned by the module as parameters (the array is ours). */
typedef struct rnn_cfg {
    kiln_rnn_mode mode;
    int64_t input_size, hidden_size;
    kiln_rnn_params p;
    int nw;
    kiln_tensor **w;
} rnn_cfg;

/* A cell: one step, one layer, one direction; w as rnn_cfg's for one layer. */
typedef struct cell_cfg {
    kiln_rnn_mode mode;
    int64_t input_size, hidden_size;
    bool bias;
    kiln_tensor *w[4];
} cell_cfg;

static int gates_of(kiln_rnn_mode mode) { return mode == KILN_RNN_LSTM ? 4 : mode == KILN_RNN_GRU ? 3 : 1; }

static kiln_module *fail_free(kiln_module *m) {
    kiln_module_free(m);
    return NULL;
}

/* U(-bound, bound) of `shape`, registered as parameter `name`; NULL (error set) on failure. */
static kiln_tensor *add_uniform(kiln_module *m, const char *name, double bound, int ndim, const int64_t *shape) {
    kiln_tensor *t = kiln_rand_uniform(m->ctx, (float)-bound, (float)bound, ndim, shape);
    return kiln_module_add_parameter(m, name, t) == KILN_OK ? t : NULL;
}

/* ---- RNN, LSTM, GRU --------------------------------------------------------------------- */

static void rnn_destroy(kiln_module *m) { free(((rnn_cfg *)kiln_module_data(m))->w); }

static void rnn_args(const kiln_module *m, char *buf, size_t cap) {
    const rnn_cfg *c = kiln_module_data(m);
    int n = snprintf(buf, cap, "%" PRId64 ", %" PRId64, c->input_size, c->hidden_size);
    if (n < 0 || (size_t)n >= cap) return;
    kiln_rnn_params d = kiln_rnn_defaults();
    /* torch's repr lists the arguments that differ from their defaults (RNN's nonlinearity
     * is not among them) */
    if (c->p.num_layers != d.num_layers) n += snprintf(buf + n, cap - (size_t)n, ", num_layers=%d", c->p.num_layers);
    if ((size_t)n < cap && !c->p.bias) n += snprintf(buf + n, cap - (size_t)n, ", bias=False");
    if ((size_t)n < cap && c->p.batch_first) n += snprintf(buf + n, cap - (size_t)n, ", batch_first=True");
    if ((size_t)n < cap && c->p.dropout != 0.0f)
        n += snprintf(buf + n, cap - (size_t)n, ", dropout=%g", (double)c->p.dropout);
    if ((size_t)n < cap && c->p.bidirectional) snprintf(buf + n, cap - (size_t)n, ", bidirectional=True");
}

static bool is_rnn_module(const kiln_module *m);

kiln_status kiln_nn_rnn_forward(kiln_module *m, kiln_tensor *x, kiln_tensor *h0, kiln_tensor *c0,
                                const int32_t *lengths, kiln_tensor **out, kiln_tensor **h_n, kiln_tensor **c_n) {
    if (out) *out = NULL;
    if (h_n) *h_n = NULL;
    if (c_n) *c_n = NULL;
    if (!m) return kiln__fail(NULL, KILN_ERR_NULL, "kiln_nn_rnn_forward: module is NULL");
    kiln_ctx *ctx = m->ctx;
    if (!is_rnn_module(m))
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                          "kiln_nn_rnn_forward: module is a %s, not an RNN, LSTM or GRU (kiln_nn_rnn, kiln_nn_lstm, "
                          "kiln_nn_gru)",
                          m->kind);
    if (!out) return kiln__fail(ctx, KILN_ERR_NULL, "kiln_nn_rnn_forward: %s: out is NULL", m->kind);
    if (ctx->err != KILN_OK) return ctx->err;
    const rnn_cfg *c = kiln_module_data(m);
    if (c_n && c->mode != KILN_RNN_LSTM) c_n = NULL; /* only LSTM has a cell state */
    if (c0 && c->mode != KILN_RNN_LSTM)
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "kiln_nn_rnn_forward: %s has no cell state; c0 must be NULL",
                          m->kind);
    *out = kiln_rnn(ctx, c->mode, x, h0, c0, c->nw, c->w, lengths, &c->p, m->training, h_n, c_n);
    if (*out) return KILN_OK;
    char args[256], path[256];
    rnn_args(m, args, sizeof args);
    kiln__module_path(m, path, sizeof path);
    /* name the layer as kiln_module_forward does */
    kiln__error_note(ctx, "in %s(%s)%s%s", m->kind, args, path[0] ? " at " : "", path);
    return ctx->err;
}

static kiln_status rnn_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    const rnn_cfg *c = kiln_module_data(m);
    bool lstm = c->mode == KILN_RNN_LSTM;
    (void)nout;
    kiln_ctx *ctx = kiln_module_ctx(m);
    out[0] = kiln_rnn(ctx, c->mode, in[0], nin > 1 ? in[1] : NULL, lstm && nin > 2 ? in[2] : NULL, c->nw, c->w, NULL,
                      &c->p, kiln_module_is_training(m), &out[1], lstm ? &out[2] : NULL);
    return out[0] ? KILN_OK : kiln_error_status(ctx);
}

static const kiln_module_def lstm_def = {.kind = "LSTM",
                                         .state_size = sizeof(rnn_cfg),
                                         .forward = rnn_forward,
                                         .num_inputs = 3,
                                         .optional_inputs = 2,
                                         .num_outputs = 3,
                                         .destroy = rnn_destroy,
                                         .describe = rnn_args};
static const kiln_module_def gru_def = {.kind = "GRU",
                                        .state_size = sizeof(rnn_cfg),
                                        .forward = rnn_forward,
                                        .num_inputs = 2,
                                        .optional_inputs = 1,
                                        .num_outputs = 2,
                                        .destroy = rnn_destroy,
                                        .describe = rnn_args};
static const kiln_module_def rnn_def = {.kind = "RNN",
                                        .state_size = sizeof(rnn_cfg),
                                        .forward = rnn_forward,
                                        .num_inputs = 2,
                                        .optional_inputs = 1,
                                        .num_outputs = 2,
                                        .destroy = rnn_destroy,
                                        .describe = rnn_args};

static bool is_rnn_module(const kiln_module *m) { return m->def.forward == rnn_forward; }

bool kiln__rnn_config_of(const kiln_module *m, kiln_rnn_mode *mode, int64_t *input_size, int64_t *hidden_size,
                         kiln_rnn_params *p) {
    if (!m || !is_rnn_module(m)) return false;
    const rnn_cfg *c = m->data;
    *mode = c->mode, *input_size = c->input_size, *hidden_size = c->hidden_size, *p = c->p;
    return true;
}

static kiln_module *rnn_new(kiln_ctx *ctx, const char *fn, kiln_rnn_mode mode, int64_t input_size, int64_t hidden_size,
                            const kiln_rnn_params *params) {
    if (!ctx) return kiln__fail(NULL, KILN_ERR_NULL, "%s: ctx is NULL", fn), NULL;
    kiln_rnn_params p = params ? *params : kiln_rnn_defaults();
    if (input_size <= 0 || hidden_size <= 0 || p.num_layers < 1 || p.num_layers > 64 ||
        !(p.dropout >= 0.0f && p.dropout < 1.0f)) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s: input_size=%" PRId64 ", hidden_size=%" PRId64
                   " (both must be > 0), num_layers=%d (1 to 64), dropout=%g (in [0, 1)); kiln_rnn_defaults "
                   "gives torch's defaults",
                   fn, input_size, hidden_size, p.num_layers, (double)p.dropout);
        return NULL;
    }
    const kiln_module_def *def = mode == KILN_RNN_LSTM ? &lstm_def : mode == KILN_RNN_GRU ? &gru_def : &rnn_def;
    kiln_module *m = kiln_module_new(ctx, def);
    if (!m) return NULL;
    rnn_cfg *c = kiln_module_data(m);
    int D = p.bidirectional ? 2 : 1, G = gates_of(mode);
    c->mode = mode, c->input_size = input_size, c->hidden_size = hidden_size, c->p = p;
    c->nw = 4 * p.num_layers * D;
    c->w = calloc((size_t)c->nw, sizeof *c->w);
    if (!c->w) {
        kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", fn);
        return fail_free(m);
    }
    double bound = 1.0 / sqrt((double)hidden_size);
    for (int l = 0; l < p.num_layers; l++) {
        for (int d = 0; d < D; d++) {
            int64_t in = l == 0 ? input_size : D * hidden_size;
            kiln_tensor **w = c->w + 4 * (l * D + d);
            char nm[64];
            const char *sfx = d ? "_reverse" : "";
            /* torch registers w_ih, w_hh, b_ih, b_hh of a layer and direction in this order */
            snprintf(nm, sizeof nm, "weight_ih_l%d%s", l, sfx);
            if (!(w[0] = add_uniform(m, nm, bound, 2, (int64_t[]){G * hidden_size, in}))) return fail_free(m);
            snprintf(nm, sizeof nm, "weight_hh_l%d%s", l, sfx);
            if (!(w[1] = add_uniform(m, nm, bound, 2, (int64_t[]){G * hidden_size, hidden_size}))) return fail_free(m);
            if (!p.bias) continue;
            snprintf(nm, sizeof nm, "bias_ih_l%d%s", l, sfx);
            if (!(w[2] = add_uniform(m, nm, bound, 1, (int64_t[]){G * hidden_size}))) return fail_free(m);
            snprintf(nm, sizeof nm, "bias_hh_l%d%s", l, sfx);
            if (!(w[3] = add_uniform(m, nm, bound, 1, (int64_t[]){G * hidden_size}))) return fail_free(m);
        }
    }
    return m;
}

kiln_module *kiln_nn_lstm(kiln_ctx *ctx, int64_t input_size, int64_t hidden_size, const kiln_rnn_params *p) {
    return rnn_new(ctx, "kiln_nn_lstm", KILN_RNN_LSTM, input_size, hidden_size, p);
}

kiln_module *kiln_nn_gru(kiln_ctx *ctx, int64_t input_size, int64_t hidden_size, const kiln_rnn_params *p) {
    return rnn_new(ctx, "kiln_nn_gru", KILN_RNN_GRU, input_size, hidden_size, p);
}

kiln_module *kiln_nn_rnn(kiln_ctx *ctx, int64_t input_size, int64_t hidden_size, kiln_activation nonlinearity,
                         const kiln_rnn_params *p) {
    if (ctx && nonlinearity != KILN_ACT_TANH && nonlinearity != KILN_ACT_RELU) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "kiln_nn_rnn: nonlinearity %d must be KILN_ACT_TANH or KILN_ACT_RELU (torch's 'tanh', 'relu')",
                   (int)nonlinearity);
        return NULL;
    }
    return rnn_new(ctx, "kiln_nn_rnn", nonlinearity == KILN_ACT_RELU ? KILN_RNN_RNN_RELU : KILN_RNN_RNN_TANH,
                   input_size, hidden_size, p);
}

/* ---- cells -------------------------------------------------------------------------------- */

static void cell_args(const kiln_module *m, char *buf, size_t cap) {
    const cell_cfg *c = kiln_module_data(m);
    snprintf(buf, cap, "%" PRId64 ", %" PRId64 "%s%s", c->input_size, c->hidden_size, c->bias ? "" : ", bias=False",
             c->mode == KILN_RNN_RNN_RELU ? ", nonlinearity=relu" : "");
}

/* x [B, I], h [B, H] (absent: zeros), c [B, H] (LSTM); out h' (and c'). */
static kiln_status cell_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    const cell_cfg *c = kiln_module_data(m);
    kiln_ctx *ctx = kiln_module_ctx(m);
    bool lstm = c->mode == KILN_RNN_LSTM;
    (void)nout;
    char sx[160], sh[160];
    for (int k = 0; k < nin; k++) {
        int64_t want = k == 0 ? c->input_size : c->hidden_size;
        kiln_tensor *t = in[k];
        if (t->ndim != 2 || t->shape[1] != want || (k > 0 && t->shape[0] != in[0]->shape[0])) {
            kiln__shape_str(in[0]->ndim, in[0]->shape, sx, sizeof sx);
            return kiln__fail(ctx, KILN_ERR_SHAPE, "%s: %s %s must be [batch, %" PRId64 "] (input %s)", m->kind,
                              k == 0   ? "input"
                              : k == 1 ? "h"
                                       : "c",
                              kiln__shape_str(t->ndim, t->shape, sh, sizeof sh), want, sx);
        }
    }
    kiln_tensor *xs = kiln_unsqueeze(ctx, in[0], 0);
    kiln_tensor *hs = nin > 1 ? kiln_unsqueeze(ctx, in[1], 0) : NULL;
    kiln_tensor *cs = nin > 2 ? kiln_unsqueeze(ctx, in[2], 0) : NULL;
    kiln_tensor *hn = NULL, *cn = NULL, *y = NULL;
    kiln_rnn_params p = kiln_rnn_defaults();
    if (xs && (nin < 2 || hs) && (nin < 3 || cs))
        y = kiln_rnn(ctx, c->mode, xs, hs, cs, 4, c->w, NULL, &p, false, &hn, lstm ? &cn : NULL);
    kiln_tensor_free(xs);
    kiln_tensor_free(hs);
    kiln_tensor_free(cs);
    kiln_tensor_free(y);
    out[0] = hn ? kiln_squeeze(ctx, hn, 0) : NULL;
    if (lstm) out[1] = cn ? kiln_squeeze(ctx, cn, 0) : NULL;
    kiln_tensor_free(hn);
    kiln_tensor_free(cn);
    if (!out[0] || (lstm && !out[1])) {
        kiln_tensor_free(out[0]);
        if (lstm) kiln_tensor_free(out[1]);
        out[0] = NULL;
        if (lstm) out[1] = NULL;
        return kiln_error_status(ctx);
    }
    return KILN_OK;
}

static const kiln_module_def lstm_cell_def = {.kind = "LSTMCell",
                                              .state_size = sizeof(cell_cfg),
                                              .forward = cell_forward,
                                              .num_inputs = 3,
                                              .optional_inputs = 2,
                                              .num_outputs = 2,
                                              .describe = cell_args};
static const kiln_module_def gru_cell_def = {.kind = "GRUCell",
                                             .state_size = sizeof(cell_cfg),
                                             .forward = cell_forward,
                                             .num_inputs = 2,
                                             .optional_inputs = 1,
                                             .num_outputs = 1,
                                             .describe = cell_args};
static const kiln_module_def rnn_cell_def = {.kind = "RNNCell",
                                             .state_size = sizeof(cell_cfg),
                                             .forward = cell_forward,
                                             .num_inputs = 2,
                                             .optional_inputs = 1,
                                             .num_outputs = 1,
                                             .describe = cell_args};

static kiln_module *cell_new(kiln_ctx *ctx, const char *fn, kiln_rnn_mode mode, int64_t input_size, int64_t hidden_size,
                             bool bias) {
    if (!ctx) return kiln__fail(NULL, KILN_ERR_NULL, "%s: ctx is NULL", fn), NULL;
    if (input_size <= 0 || hidden_size <= 0) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s: input_size=%" PRId64 ", hidden_size=%" PRId64 " (both must be > 0)", fn, input_size,
                   hidden_size);
        return NULL;
    }
    const kiln_module_def *def = mode == KILN_RNN_LSTM  ? &lstm_cell_def
                                 : mode == KILN_RNN_GRU ? &gru_cell_def
                                                        : &rnn_cell_def;
    kiln_module *m = kiln_module_new(ctx, def);
    if (!m) return NULL;
    cell_cfg *c = kiln_module_data(m);
    int64_t G = gates_of(mode);
    c->mode = mode, c->input_size = input_size, c->hidden_size = hidden_size, c->bias = bias;
    double bound = 1.0 / sqrt((double)hidden_size);
    if (!(c->w[0] = add_uniform(m, "weight_ih", bound, 2, (int64_t[]){G * hidden_size, input_size})) ||
        !(c->w[1] = add_uniform(m, "weight_hh", bound, 2, (int64_t[]){G * hidden_size, hidden_size})))
        return fail_free(m);
    if (bias && (!(c->w[2] = add_uniform(m, "bias_ih", bound, 1, (int64_t[]){G * hidden_size})) ||
                 !(c->w[3] = add_uniform(m, "bias_hh", bound, 1, (int64_t[]){G * hidden_size}))))
        return fail_free(m);
    return m;
}

kiln_module *kiln_nn_lstm_cell(kiln_ctx *ctx, int64_t input_size, int64_t hidden_size, bool bias) {
    return cell_new(ctx, "kiln_nn_lstm_cell", KILN_RNN_LSTM, input_size, hidden_size, bias);
}

kiln_module *kiln_nn_gru_cell(kiln_ctx *ctx, int64_t input_size, int64_t hidden_size, bool bias) {
    return cell_new(ctx, "kiln_nn_gru_cell", KILN_RNN_GRU, input_size, hidden_size, bias);
}

kiln_module *kiln_nn_rnn_cell(kiln_ctx *ctx, int64_t input_size, int64_t hidden_size, bool bias,
                              kiln_activation nonlinearity) {
    if (ctx && nonlinearity != KILN_ACT_TANH && nonlinearity != KILN_ACT_RELU) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "kiln_nn_rnn_cell: nonlinearity %d must be KILN_ACT_TANH or KILN_ACT_RELU (torch's 'tanh', 'relu')",
                   (int)nonlinearity);
        return NULL;
    }
    return cell_new(ctx, "kiln_nn_rnn_cell", nonlinearity == KILN_ACT_RELU ? KILN_RNN_RNN_RELU : KILN_RNN_RNN_TANH,
                    input_size, hidden_size, bias);
}

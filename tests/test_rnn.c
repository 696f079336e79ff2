/* tests/test_rnn.c - kiln_rnn (RNN tanh/relu, LSTM, GRU) and the recurrent modules against
 * PyTorch (tests/golden/gen_rnn.py: outputs, final states and every gradient; 1 and 2
 * layers, uni- and bidirectional, batch_first both ways, with and without initial states,
 * with lengths), against finite differences of a plain-C double-precision recurrence, a
 * torch.nn.LSTM state dict loaded strictly, the cells, and every error path.
 *
 * Tolerances. The golden references are float64; kiln computes in float32. A forward value
 * is a chain of at most num_layers * T = 10 steps, each a dot product of at most I + H + 2
 * <= 12 terms of magnitude below ~2 and a sigmoid/tanh (contracting, derivative <= 1), so
 * each step adds about 12 roundings of 2^-24 * 2 ~ 1.4e-6 at most and the chain (which
 * contracts) stays below 2e-6 absolute in practice; the observed worst is 4e-7. A gradient
 * sums up to T * B = 16 such products per element, hence 5e-6 (absolute and relative). */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include <math.h>

#include "golden.h"
#include "gradcheck.h"
#include "harness.h"

#define FWD_ATOL 2e-6
#define FWD_RTOL 2e-6
#define GRAD_ATOL 5e-6
#define GRAD_RTOL 5e-6

static const char *const MODES[4] = {"rnn_tanh", "rnn_relu", "lstm", "gru"}; /* by kiln_rnn_mode */

static kiln_tensor *up(kiln_ctx *ctx, const golden_tensor *t, bool grad) {
    kiln_tensor *k = golden_upload(ctx, t);
    if (k && grad) kiln_tensor_set_requires_grad(k, true);
    return k;
}

/* sum(a * b) */
static kiln_tensor *dot(kiln_ctx *ctx, kiln_tensor *a, kiln_tensor *b) {
    return kiln_sum(ctx, kiln_mul(ctx, a, b), 0, NULL, false);
}

/* The weight names of layer l, direction d, in kiln_rnn's order. */
static void wnames(char names[4][64], int l, int d) {
    const char *sfx = d ? "_reverse" : "";
    snprintf(names[0], 64, "weight_ih_l%d%s", l, sfx);
    snprintf(names[1], 64, "weight_hh_l%d%s", l, sfx);
    snprintf(names[2], 64, "bias_ih_l%d%s", l, sfx);
    snprintf(names[3], 64, "bias_hh_l%d%s", l, sfx);
}

/* ---- golden cases of kiln_rnn ---------------------------------------------------------------- */

static void golden_case(kiln_ctx *ctx, golden *g, kiln_rnn_mode mode, int k) {
    char pre[64], key[1200], what[1200];
    snprintf(pre, sizeof pre, "%s%d.", MODES[mode], k);
#define G(name) (snprintf(key, sizeof key, "%s%s", pre, name), golden_get(g, key))
    const golden_tensor *p = G("p");
    if (!p) return;
    int L = p->i[0], D = p->i[1] ? 2 : 1, has_h0 = p->i[3], has_len = p->i[4], bias = p->i[5];
    bool lstm = mode == KILN_RNN_LSTM;
    kiln_rnn_params prm = kiln_rnn_defaults();
    prm.num_layers = L, prm.bidirectional = D == 2, prm.batch_first = p->i[2], prm.bias = bias;
    kiln_scope_begin(ctx);
    kiln_tensor *x = up(ctx, G("x"), true);
    kiln_tensor *h0 = has_h0 ? up(ctx, G("h0"), true) : NULL;
    kiln_tensor *c0 = has_h0 && lstm ? up(ctx, G("c0"), true) : NULL;
    const golden_tensor *len = has_len ? G("len") : NULL;
    kiln_tensor *w[16] = {0};
    char names[16][64];
    for (int l = 0; l < L; l++)
        for (int d = 0; d < D; d++) {
            char nm[4][64];
            wnames(nm, l, d);
            for (int q = 0; q < 4; q++) {
                int i = 4 * (l * D + d) + q;
                snprintf(names[i], 64, "%s", nm[q]);
                if (q >= 2 && !bias) continue;
                snprintf(key, sizeof key, "%sw.%s", pre, nm[q]);
                w[i] = up(ctx, golden_get(g, key), true);
            }
        }
    kiln_tensor *hn = NULL, *cn = NULL;
    kiln_tensor *out =
        kiln_rnn(ctx, mode, x, h0, c0, 4 * L * D, w, len ? len->i : NULL, &prm, true, &hn, lstm ? &cn : NULL);
    snprintf(what, sizeof what, "%s%d output", MODES[mode], k);
    CHECK(out != NULL, "%s: %s", what, kiln_error_message(ctx));
    if (!out) {
        kiln_error_clear(ctx);
        kiln_scope_end(ctx);
        return;
    }
    golden_compare(what, out, G("out"), FWD_ATOL, FWD_RTOL);
    snprintf(what, sizeof what, "%s%d h_n", MODES[mode], k);
    golden_compare(what, hn, G("hn"), FWD_ATOL, FWD_RTOL);
    if (lstm) {
        snprintf(what, sizeof what, "%s%d c_n", MODES[mode], k);
        golden_compare(what, cn, G("cn"), FWD_ATOL, FWD_RTOL);
    }
    kiln_tensor *loss = kiln_add(ctx, dot(ctx, out, up(ctx, G("gout"), false)), dot(ctx, hn, up(ctx, G("ghn"), false)));
    if (lstm) loss = kiln_add(ctx, loss, dot(ctx, cn, up(ctx, G("gcn"), false)));
    CHECK(loss && kiln_backward(loss) == KILN_OK, "%s%d backward: %s", MODES[mode], k, kiln_error_message(ctx));
    snprintf(what, sizeof what, "%s%d grad x", MODES[mode], k);
    golden_compare(what, kiln_tensor_grad(x), G("gx"), GRAD_ATOL, GRAD_RTOL);
    if (h0) {
        snprintf(what, sizeof what, "%s%d grad h0", MODES[mode], k);
        golden_compare(what, kiln_tensor_grad(h0), G("gh0"), GRAD_ATOL, GRAD_RTOL);
    }
    if (c0) {
        snprintf(what, sizeof what, "%s%d grad c0", MODES[mode], k);
        golden_compare(what, kiln_tensor_grad(c0), G("gc0"), GRAD_ATOL, GRAD_RTOL);
    }
    for (int i = 0; i < 4 * L * D; i++) {
        if (!w[i]) continue;
        snprintf(what, sizeof what, "%s%d grad %s", MODES[mode], k, names[i]);
        snprintf(key, sizeof key, "%sg.%s", pre, names[i]);
        golden_compare(what, kiln_tensor_grad(w[i]), golden_get(g, key), GRAD_ATOL, GRAD_RTOL);
    }
#undef G
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
}

/* ---- finite differences over a plain-C recurrence ---------------------------------------- */

typedef struct fd_case {
    kiln_rnn_mode mode;
    int T, B, I, H, D;
    const int32_t *len; /* NULL: all T */
} fd_case;

static double sg(double v) { return 1.0 / (1.0 + exp(-v)); }

/* in: x [T, B, I], h0 [D, B, H], (c0,) then w_ih, w_hh, b_ih, b_hh per direction;
 * out: output [T, B, D*H], h_n [D, B, H] (, c_n) flattened one after the other. */
static void fd_ref(void *user, double *const *in, double *out) {
    const fd_case *c = user;
    int T = c->T, B = c->B, I = c->I, H = c->H, D = c->D;
    bool lstm = c->mode == KILN_RNN_LSTM, gru = c->mode == KILN_RNN_GRU;
    int G = lstm ? 4 : gru ? 3 : 1, wi = lstm ? 3 : 2;
    const double *x = in[0], *h0 = in[1], *c0 = lstm ? in[2] : NULL;
    double *y = out, *hn = out + T * B * D * H, *cn = hn + D * B * H;
    for (int d = 0; d < D; d++) {
        const double *Wi = in[wi + 4 * d], *Wh = in[wi + 4 * d + 1], *bi = in[wi + 4 * d + 2], *bh = in[wi + 4 * d + 3];
        for (int b = 0; b < B; b++) {
            double h[8], cc[8], a[32], ah[32];
            for (int j = 0; j < H; j++) h[j] = h0[(d * B + b) * H + j], cc[j] = c0 ? c0[(d * B + b) * H + j] : 0;
            for (int k = 0; k < T; k++) {
                int s = d == 0 ? k : T - 1 - k;
                if (c->len && s >= c->len[b]) {
                    for (int j = 0; j < H; j++) y[(s * B + b) * D * H + d * H + j] = 0;
                    continue;
                }
                for (int r = 0; r < G * H; r++) {
                    a[r] = bi[r], ah[r] = bh[r];
                    for (int q = 0; q < I; q++) a[r] += Wi[r * I + q] * x[(s * B + b) * I + q];
                    for (int q = 0; q < H; q++) ah[r] += Wh[r * H + q] * h[q];
                }
                for (int j = 0; j < H; j++) {
                    if (lstm) {
                        double ig = sg(a[j] + ah[j]), fg = sg(a[H + j] + ah[H + j]);
                        double gg = tanh(a[2 * H + j] + ah[2 * H + j]), og = sg(a[3 * H + j] + ah[3 * H + j]);
                        cc[j] = fg * cc[j] + ig * gg;
                        a[j] = og * tanh(cc[j]); /* a[j] is not read again for this j */
                    } else if (gru) {
                        double r = sg(a[j] + ah[j]), z = sg(a[H + j] + ah[H + j]);
                        double n = tanh(a[2 * H + j] + r * ah[2 * H + j]);
                        a[j] = (1 - z) * n + z * h[j];
                    } else {
                        double v = a[j] + ah[j];
                        a[j] = c->mode == KILN_RNN_RNN_RELU ? (v > 0 ? v : 0) : tanh(v);
                    }
                }
                for (int j = 0; j < H; j++) h[j] = a[j], y[(s * B + b) * D * H + d * H + j] = h[j];
            }
            for (int j = 0; j < H; j++) {
                hn[(d * B + b) * H + j] = h[j];
                if (lstm) cn[(d * B + b) * H + j] = cc[j];
            }
        }
    }
}

static void fd_check(kiln_ctx *ctx, kiln_rnn_mode mode, int D, const int32_t *len) {
    fd_case c = {mode, 3, 2, 3, 2, D, len};
    bool lstm = mode == KILN_RNN_LSTM;
    int G = lstm ? 4 : mode == KILN_RNN_GRU ? 3 : 1;
    kiln_scope_begin(ctx);
    int nin = (lstm ? 3 : 2) + 4 * D;
    kiln_tensor *xs[11];
    double *hin[11];
    bool wanted[11];
    int64_t shapes[11][3];
    int nd[11];
    nd[0] = 3, shapes[0][0] = c.T, shapes[0][1] = c.B, shapes[0][2] = c.I;
    for (int q = 1; q < (lstm ? 3 : 2); q++) nd[q] = 3, shapes[q][0] = D, shapes[q][1] = c.B, shapes[q][2] = c.H;
    for (int d = 0; d < D; d++) {
        int b = (lstm ? 3 : 2) + 4 * d;
        nd[b] = 2, shapes[b][0] = G * c.H, shapes[b][1] = c.I;
        nd[b + 1] = 2, shapes[b + 1][0] = G * c.H, shapes[b + 1][1] = c.H;
        nd[b + 2] = 1, shapes[b + 2][0] = G * c.H;
        nd[b + 3] = 1, shapes[b + 3][0] = G * c.H;
    }
    for (int q = 0; q < nin; q++) {
        int64_t n = h_numel(nd[q], shapes[q]);
        float *f = malloc(sizeof(float) * (size_t)n);
        h_fill(f, n, -1.0f, 1.0f);
        hin[q] = malloc(sizeof(double) * (size_t)n);
        for (int64_t i = 0; i < n; i++) hin[q][i] = f[i];
        xs[q] = kiln_from_host(ctx, f, KILN_F32, nd[q], shapes[q]);
        kiln_tensor_set_requires_grad(xs[q], true);
        wanted[q] = true;
        free(f);
    }
    kiln_rnn_params p = kiln_rnn_defaults();
    p.bidirectional = D == 2;
    kiln_tensor *hn = NULL, *cn = NULL;
    kiln_tensor *y = kiln_rnn(ctx, mode, xs[0], xs[1], lstm ? xs[2] : NULL, 4 * D, xs + (lstm ? 3 : 2), len, &p, true,
                              &hn, lstm ? &cn : NULL);
    kiln_tensor *parts[3] = {kiln_reshape(ctx, y, 1, (int64_t[]){-1}), kiln_reshape(ctx, hn, 1, (int64_t[]){-1}),
                             lstm ? kiln_reshape(ctx, cn, 1, (int64_t[]){-1}) : NULL};
    kiln_tensor *all = kiln_concat(ctx, lstm ? 3 : 2, parts, 0);
    char what[96];
    snprintf(what, sizeof what, "%s D=%d%s finite differences", MODES[mode], D, len ? " lengths" : "");
    /* float32 against a double reference of a few steps: 1e-3 of the gradient's scale */
    gc_check(ctx, what, fd_ref, &c, nin, xs, hin, wanted, all, 1e-3, 1e-3);
    for (int q = 0; q < nin; q++) free(hin[q]);
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
}

/* ---- modules -------------------------------------------------------------------------------- */

static void test_modules(kiln_ctx *ctx, golden *g) {
    /* torch's names, in torch's order, and torch's parameter count */
    kiln_rnn_params p = kiln_rnn_defaults();
    p.num_layers = 2, p.bidirectional = true;
    kiln_module *m = kiln_nn_lstm(ctx, 5, 4, &p);
    CHECK(m != NULL, "kiln_nn_lstm: %s", kiln_error_message(ctx));
    if (!m) return;
    kiln_named_tensor st[32];
    int n = kiln_module_state(m, st, 32);
    static const char *want[16] = {
        "weight_ih_l0",         "weight_hh_l0",         "bias_ih_l0",         "bias_hh_l0",
        "weight_ih_l0_reverse", "weight_hh_l0_reverse", "bias_ih_l0_reverse", "bias_hh_l0_reverse",
        "weight_ih_l1",         "weight_hh_l1",         "bias_ih_l1",         "bias_hh_l1",
        "weight_ih_l1_reverse", "weight_hh_l1_reverse", "bias_ih_l1_reverse", "bias_hh_l1_reverse"};
    CHECK(n == 16, "LSTM state has %d entries, torch's 16", n);
    for (int i = 0; i < n && i < 16; i++)
        CHECK(strcmp(st[i].name, want[i]) == 0, "LSTM state entry %d is %s, torch's %s", i, st[i].name, want[i]);
    /* init U(-1/sqrt(4), 1/sqrt(4)) */
    float *w0 = h_read(st[0].tensor);
    double mx = 0;
    for (int i = 0; i < 16 * 5; i++) mx = fmax(mx, fabs(w0[i]));
    CHECK(mx <= 0.5 && mx > 0.3, "LSTM weight_ih_l0 max |w| %g: expected U(-0.5, 0.5)", mx);
    free(w0);
    char desc[256];
    kiln_module_describe(m, desc, sizeof desc);
    CHECK(strcmp(desc, "LSTM(5, 4, num_layers=2, bidirectional=True)") == 0, "describe: %s", desc);

    /* a state dict torch saved, loaded strictly, then torch's outputs */
    char path[1100];
    snprintf(path, sizeof path, "%s/rnn_lstm_state.safetensors", getenv("KILN_GOLDEN_DIR"));
    kiln_status s = kiln_module_load(m, path, true, NULL);
    CHECK(s == KILN_OK, "strict load of torch's LSTM state dict: %s", kiln_error_message(ctx));
    kiln_scope_begin(ctx);
    kiln_tensor *x = golden_upload(ctx, golden_get(g, "lstm_sd.x"));
    kiln_tensor *outs[3] = {0};
    CHECK(kiln_module_forward(m, 1, &x, 3, outs) == KILN_OK, "LSTM module forward: %s", kiln_error_message(ctx));
    golden_compare("LSTM module output", outs[0], golden_get(g, "lstm_sd.out"), FWD_ATOL, FWD_RTOL);
    golden_compare("LSTM module h_n", outs[1], golden_get(g, "lstm_sd.hn"), FWD_ATOL, FWD_RTOL);
    golden_compare("LSTM module c_n", outs[2], golden_get(g, "lstm_sd.cn"), FWD_ATOL, FWD_RTOL);
    kiln_tensor *o = NULL, *hn = NULL, *cn = NULL;
    CHECK(kiln_nn_rnn_forward(m, x, NULL, NULL, NULL, &o, &hn, &cn) == KILN_OK, "kiln_nn_rnn_forward: %s",
          kiln_error_message(ctx));
    golden_compare("kiln_nn_rnn_forward output", o, golden_get(g, "lstm_sd.out"), FWD_ATOL, FWD_RTOL);

    /* errors name the layer and the shapes */
    kiln_tensor *bad = kiln_zeros(ctx, 3, (int64_t[]){3, 2, 6});
    CHECK(kiln_nn_rnn_forward(m, bad, NULL, NULL, NULL, &o, &hn, &cn) == KILN_ERR_SHAPE && !o && !hn && !cn,
          "LSTM forward of 6 features: status %s", kiln_status_name(kiln_error_status(ctx)));
    const char *msg = kiln_error_message(ctx);
    CHECK(strstr(msg, "kiln_rnn(LSTM)") && strstr(msg, "[3, 2, 6]") && strstr(msg, "input_size 5") &&
              strstr(msg, "in LSTM(5, 4, num_layers=2, bidirectional=True)"),
          "wrong input size message: %s", msg);
    kiln_error_clear(ctx);
    kiln_tensor *h0bad = kiln_zeros(ctx, 3, (int64_t[]){2, 2, 4});
    CHECK(kiln_nn_rnn_forward(m, x, h0bad, NULL, NULL, &o, &hn, &cn) == KILN_ERR_SHAPE, "LSTM h0 of a wrong shape");
    msg = kiln_error_message(ctx);
    CHECK(strstr(msg, "h0 [2, 2, 4]") && strstr(msg, "[4, 2, 4]") && strstr(msg, "LSTM"), "h0 message: %s", msg);
    kiln_error_clear(ctx);
    int32_t lens[2] = {3, 4};
    CHECK(kiln_nn_rnn_forward(m, x, NULL, NULL, lens, &o, &hn, &cn) == KILN_ERR_RANGE, "lengths longer than T");
    msg = kiln_error_message(ctx);
    CHECK(strstr(msg, "lengths[1] = 4") && strstr(msg, "[1, 3]") && strstr(msg, "[3, 2, 5]"), "lengths message: %s",
          msg);
    kiln_error_clear(ctx);
    lens[1] = 0;
    CHECK(kiln_nn_rnn_forward(m, x, NULL, NULL, lens, &o, &hn, &cn) == KILN_ERR_RANGE, "length 0");
    CHECK(strstr(kiln_error_message(ctx), "lengths[1] = 0"), "length 0 message: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
    kiln_module_free(m);

    /* the bench's model: parameter count of torch's (958,560 with embedding and fc) */
    p = kiln_rnn_defaults();
    p.num_layers = 2, p.batch_first = true;
    m = kiln_nn_lstm(ctx, 128, 256, &p);
    CHECK(m && kiln_module_num_elements(m) == 921600, "LSTM(128, 256, 2 layers) has %lld parameters, torch 921600",
          (long long)kiln_module_num_elements(m));
    kiln_module_free(m);
    kiln_module *gm = kiln_nn_gru(ctx, 3, 2, NULL), *rm = kiln_nn_rnn(ctx, 3, 2, KILN_ACT_RELU, NULL);
    kiln_module_describe(rm, desc, sizeof desc);
    CHECK(strcmp(desc, "RNN(3, 2)") == 0, "describe: %s", desc); /* torch's repr, without nonlinearity */
    p = kiln_rnn_defaults();
    p.num_layers = 2, p.dropout = 0.5f;
    kiln_module *gd = kiln_nn_gru(ctx, 3, 2, &p);
    kiln_module_describe(gd, desc, sizeof desc);
    CHECK(strcmp(desc, "GRU(3, 2, num_layers=2, dropout=0.5)") == 0, "describe: %s", desc);
    kiln_module_free(gd);
    kiln_module *cm = kiln_nn_rnn_cell(ctx, 3, 4, false, KILN_ACT_RELU);
    kiln_module_describe(cm, desc, sizeof desc);
    CHECK(strcmp(desc, "RNNCell(3, 4, bias=False, nonlinearity=relu)") == 0, "describe: %s", desc);
    kiln_module_free(cm);
    CHECK(kiln_module_num_elements(gm) == 3 * 2 * (3 + 2 + 2), "GRU(3, 2) parameters %lld",
          (long long)kiln_module_num_elements(gm));
    kiln_module_free(gm);
    kiln_module_free(rm);
    CHECK(kiln_nn_rnn(ctx, 3, 2, KILN_ACT_SIGMOID, NULL) == NULL && strstr(kiln_error_message(ctx), "nonlinearity"),
          "kiln_nn_rnn with sigmoid: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(kiln_nn_lstm(ctx, 0, 2, NULL) == NULL && strstr(kiln_error_message(ctx), "kiln_nn_lstm: input_size=0"),
          "kiln_nn_lstm(0, 2): %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
}

/* The cells against torch's, forward and backward. */
static void test_cells(kiln_ctx *ctx, golden *g) {
    static const char *names[3] = {"lstm_cell", "gru_cell", "rnn_cell"};
    for (int k = 0; k < 3; k++) {
        bool lstm = k == 0;
        kiln_module *m = k == 0   ? kiln_nn_lstm_cell(ctx, 3, 4, true)
                         : k == 1 ? kiln_nn_gru_cell(ctx, 3, 4, true)
                                  : kiln_nn_rnn_cell(ctx, 3, 4, true, KILN_ACT_RELU);
        CHECK(m != NULL, "%s: %s", names[k], kiln_error_message(ctx));
        if (!m) continue;
        char key[1200], what[1200];
#define G(name) (snprintf(key, sizeof key, "%s.%s", names[k], name), golden_get(g, key))
        kiln_named_tensor st[4];
        int n = kiln_module_state(m, st, 4);
        CHECK(n == 4, "%s has %d tensors", names[k], n);
        for (int i = 0; i < n && i < 4; i++) {
            snprintf(key, sizeof key, "%s.w.%s", names[k], st[i].name);
            const golden_tensor *t = golden_get(g, key);
            if (t) kiln_copy_from_host(st[i].tensor, t->f, sizeof(float) * (size_t)t->numel);
        }
        kiln_scope_begin(ctx);
        kiln_tensor *in[3] = {up(ctx, G("x"), true), up(ctx, G("h"), true), lstm ? up(ctx, G("c"), true) : NULL};
        kiln_tensor *out[2] = {0};
        CHECK(kiln_module_forward(m, lstm ? 3 : 2, in, lstm ? 2 : 1, out) == KILN_OK, "%s forward: %s", names[k],
              kiln_error_message(ctx));
        snprintf(what, sizeof what, "%s h'", names[k]);
        golden_compare(what, out[0], G("h1"), FWD_ATOL, FWD_RTOL);
        kiln_tensor *loss = dot(ctx, out[0], up(ctx, G("gh1"), false));
        if (lstm) {
            golden_compare("lstm_cell c'", out[1], G("c1"), FWD_ATOL, FWD_RTOL);
            loss = kiln_add(ctx, loss, dot(ctx, out[1], up(ctx, G("gc1"), false)));
        }
        CHECK(loss && kiln_backward(loss) == KILN_OK, "%s backward: %s", names[k], kiln_error_message(ctx));
        snprintf(what, sizeof what, "%s grad x", names[k]);
        golden_compare(what, kiln_tensor_grad(in[0]), G("gx"), GRAD_ATOL, GRAD_RTOL);
        snprintf(what, sizeof what, "%s grad h", names[k]);
        golden_compare(what, kiln_tensor_grad(in[1]), G("gh"), GRAD_ATOL, GRAD_RTOL);
        if (lstm) golden_compare("lstm_cell grad c", kiln_tensor_grad(in[2]), G("gc"), GRAD_ATOL, GRAD_RTOL);
        for (int i = 0; i < n && i < 4; i++) {
            snprintf(what, sizeof what, "%s grad %s", names[k], st[i].name);
            snprintf(key, sizeof key, "%s.g.%s", names[k], st[i].name);
            golden_compare(what, kiln_tensor_grad(st[i].tensor), golden_get(g, key), GRAD_ATOL, GRAD_RTOL);
        }
        /* without states: zeros, as torch; and a wrong h */
        if (!lstm) {
            kiln_tensor *y = kiln_forward(m, in[0]);
            CHECK(y != NULL, "%s forward without h: %s", names[k], kiln_error_message(ctx));
        }
        kiln_tensor *hb = kiln_zeros(ctx, 2, (int64_t[]){2, 5});
        kiln_tensor *bin[2] = {in[0], hb};
        CHECK(kiln_module_forward(m, 2, bin, lstm ? 2 : 1, out) == KILN_ERR_SHAPE, "%s with h [2, 5]", names[k]);
        const char *msg = kiln_error_message(ctx);
        CHECK(strstr(msg, "h [2, 5] must be [batch, 4]") && strstr(msg, "Cell"), "%s message: %s", names[k], msg);
        kiln_error_clear(ctx);
#undef G
        kiln_scope_end(ctx);
        kiln_module_free(m);
    }
}

/* Bad arguments of kiln_rnn itself. */
static void test_errors(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    kiln_tensor *x = kiln_zeros(ctx, 3, (int64_t[]){4, 2, 3});
    kiln_tensor *w[4] = {kiln_zeros(ctx, 2, (int64_t[]){6, 3}), kiln_zeros(ctx, 2, (int64_t[]){6, 2}),
                         kiln_zeros(ctx, 1, (int64_t[]){6}), kiln_zeros(ctx, 1, (int64_t[]){6})};
    kiln_tensor *hn = NULL, *cn = NULL;
    kiln_tensor *y = kiln_rnn(ctx, KILN_RNN_GRU, x, NULL, NULL, 4, w, NULL, NULL, false, &hn, NULL);
    CHECK(y && hn, "GRU on zeros: %s", kiln_error_message(ctx));
    /* a cell state for GRU */
    kiln_tensor *c0 = kiln_zeros(ctx, 3, (int64_t[]){1, 2, 2});
    CHECK(!kiln_rnn(ctx, KILN_RNN_GRU, x, NULL, c0, 4, w, NULL, NULL, false, &hn, NULL) && !hn &&
              strstr(kiln_error_message(ctx), "kiln_rnn(GRU): only LSTM has a cell state"),
          "c0 for GRU: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(!kiln_rnn(ctx, KILN_RNN_GRU, x, NULL, NULL, 4, w, NULL, NULL, false, &hn, &cn) &&
              strstr(kiln_error_message(ctx), "c_n must be NULL"),
          "c_n for GRU: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    /* LSTM weights of GRU's size */
    CHECK(!kiln_rnn(ctx, KILN_RNN_LSTM, x, NULL, NULL, 4, w, NULL, NULL, false, NULL, NULL) &&
              strstr(kiln_error_message(ctx), "kiln_rnn(LSTM): weight_hh_l0") == NULL &&
              strstr(kiln_error_message(ctx), "kiln_rnn(LSTM)") && strstr(kiln_error_message(ctx), "[6, 3]"),
          "LSTM with GRU's weights: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    /* the weight count of 2 layers */
    kiln_rnn_params p = kiln_rnn_defaults();
    p.num_layers = 2;
    CHECK(!kiln_rnn(ctx, KILN_RNN_GRU, x, NULL, NULL, 4, w, NULL, &p, false, NULL, NULL) &&
              strstr(kiln_error_message(ctx), "4 weights given; 2 layers x 1 directions need 8"),
          "weight count: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    p = kiln_rnn_defaults();
    p.dropout = 1.0f;
    CHECK(!kiln_rnn(ctx, KILN_RNN_GRU, x, NULL, NULL, 4, w, NULL, &p, false, NULL, NULL) &&
              strstr(kiln_error_message(ctx), "dropout 1"),
          "dropout 1: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_tensor *x2 = kiln_zeros(ctx, 2, (int64_t[]){4, 3});
    CHECK(!kiln_rnn(ctx, KILN_RNN_GRU, x2, NULL, NULL, 4, w, NULL, NULL, false, NULL, NULL) &&
              strstr(kiln_error_message(ctx), "input [4, 3] (f32) must be f32, f16 or bf16 of 3 dims"),
          "2-d input: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_tensor *wb[4] = {w[0], w[1], w[2], NULL};
    CHECK(!kiln_rnn(ctx, KILN_RNN_GRU, x, NULL, NULL, 4, wb, NULL, NULL, false, NULL, NULL) &&
              strstr(kiln_error_message(ctx), "bias_hh_l0 is NULL but bias_ih_l0 is given"),
          "half the biases: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(!kiln_rnn(ctx, KILN_RNN_GRU, NULL, NULL, NULL, 4, w, NULL, NULL, false, NULL, NULL), "NULL input");
    kiln_error_clear(ctx);
    CHECK(!kiln_rnn(ctx, (kiln_rnn_mode)7, x, NULL, NULL, 4, w, NULL, NULL, false, NULL, NULL) &&
              strstr(kiln_error_message(ctx), "mode 7"),
          "bad mode: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
    CHECK(kiln_nn_rnn_forward(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL) == KILN_ERR_NULL, "NULL module");
    kiln_module *lin = kiln_nn_linear(ctx, 2, 2, true);
    kiln_tensor *o = NULL;
    CHECK(kiln_nn_rnn_forward(lin, x, NULL, NULL, NULL, &o, NULL, NULL) == KILN_ERR_INVALID_ARGUMENT &&
              strstr(kiln_error_message(ctx), "is a Linear, not an RNN"),
          "rnn forward of a Linear: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_module_free(lin);
}

/* Dropout between layers: in training some outputs of layer 0 are dropped (the result
 * differs from eval's), and eval mode is deterministic. */
static void test_dropout(kiln_ctx *ctx) {
    kiln_rnn_params p = kiln_rnn_defaults();
    p.num_layers = 2, p.dropout = 0.5f;
    kiln_module *m = kiln_nn_gru(ctx, 3, 4, &p);
    kiln_scope_begin(ctx);
    float hx[5 * 2 * 3];
    h_fill(hx, 30, -1, 1);
    kiln_tensor *x = kiln_from_host(ctx, hx, KILN_F32, 3, (int64_t[]){5, 2, 3});
    kiln_tensor *o1 = NULL, *o2 = NULL, *o3 = NULL;
    kiln_module_train(m, false);
    kiln_nn_rnn_forward(m, x, NULL, NULL, NULL, &o1, NULL, NULL);
    kiln_nn_rnn_forward(m, x, NULL, NULL, NULL, &o2, NULL, NULL);
    kiln_module_train(m, true);
    kiln_nn_rnn_forward(m, x, NULL, NULL, NULL, &o3, NULL, NULL);
    CHECK(o1 && o2 && o3, "GRU dropout forward: %s", kiln_error_message(ctx));
    if (o1 && o2 && o3) {
        float *a = h_read(o1), *b = h_read(o2), *c = h_read(o3);
        int same = 0, diff = 0;
        for (int i = 0; i < 40; i++) same += a[i] == b[i], diff += a[i] != c[i];
        CHECK(same == 40 && diff > 0, "eval repeatable (%d of 40), training differs (%d of 40)", same, diff);
        free(a), free(b), free(c);
    }
    kiln_scope_end(ctx);
    kiln_module_free(m);
}

/* Nothing waits for the host inside the time loop: an LSTM's forward and backward through
 * time (2 layers, both directions) make no host wait at all without lengths, and the same
 * number (the one upload of the lengths) for 4 and for 24 steps with them
 * (kiln_ctx_stats). */
static uint64_t rnn_waits(kiln_ctx *ctx, int T, const int32_t *lengths) {
    kiln_rnn_params p = kiln_rnn_defaults();
    p.num_layers = 2, p.bidirectional = true;
    kiln_module *m = kiln_nn_lstm(ctx, 3, 4, &p);
    kiln_scope_begin(ctx);
    float hx[24 * 2 * 3];
    h_fill(hx, T * 2 * 3, -1, 1);
    kiln_tensor *x = kiln_from_host(ctx, hx, KILN_F32, 3, (int64_t[]){T, 2, 3});
    kiln_tensor_set_requires_grad(x, true);
    kiln_tensor *o = NULL, *hn = NULL, *cn = NULL;
    kiln_ctx_stats st = {0};
    kiln_ctx_stats_reset(ctx);
    kiln_status s = kiln_nn_rnn_forward(m, x, NULL, NULL, lengths, &o, &hn, &cn);
    if (s == KILN_OK) s = kiln_backward(kiln_sum(ctx, o, 0, NULL, false));
    kiln_ctx_stats_get(ctx, &st);
    CHECK(s == KILN_OK && st.launches > 0, "LSTM T=%d forward + backward: %s", T, kiln_error_message(ctx));
    kiln_scope_end(ctx);
    kiln_module_free(m);
    return st.host_waits;
}

static void test_no_host_waits(kiln_ctx *ctx) {
    uint64_t w4 = rnn_waits(ctx, 4, NULL), w24 = rnn_waits(ctx, 24, NULL);
    CHECK(w4 == 0 && w24 == 0, "no lengths: %llu and %llu host waits for 4 and 24 steps, want 0",
          (unsigned long long)w4, (unsigned long long)w24);
    static const int32_t len4[2] = {4, 2}, len24[2] = {24, 7};
    uint64_t l4 = rnn_waits(ctx, 4, len4), l24 = rnn_waits(ctx, 24, len24);
    CHECK(l4 == l24 && l4 <= 1, "with lengths: %llu and %llu host waits for 4 and 24 steps, want the same, <= 1",
          (unsigned long long)l4, (unsigned long long)l24);
}

/* One bidirectional layer of mode over T = 5 steps, B = 3 with lengths {5, 2, 4}, I = 4,
 * H = 16 on ctx from the host data in (x, h0, c0, then w_ih, w_hh, b_ih, b_hh per
 * direction): the output, h_n and c_n, then every input's gradient of sum(y * r), in
 * *res (one host array, caller frees), *n floats. */
static bool vw_pass(kiln_ctx *ctx, kiln_rnn_mode mode, float *const *in, const int64_t (*shapes)[3], const int *nd,
                    int nin, const float *r, float **res, size_t *n) {
    bool lstm = mode == KILN_RNN_LSTM;
    kiln_scope_begin(ctx);
    kiln_tensor *xs[11];
    for (int q = 0; q < nin; q++) {
        xs[q] = kiln_from_host(ctx, in[q], KILN_F32, nd[q], shapes[q]);
        kiln_tensor_set_requires_grad(xs[q], true);
    }
    static const int32_t len[3] = {5, 2, 4};
    kiln_rnn_params p = kiln_rnn_defaults();
    p.bidirectional = true;
    kiln_tensor *hn = NULL, *cn = NULL;
    kiln_tensor *y = kiln_rnn(ctx, mode, xs[0], xs[1], lstm ? xs[2] : NULL, 8, xs + (lstm ? 3 : 2), len, &p, true, &hn,
                              lstm ? &cn : NULL);
    kiln_tensor *rt = kiln_from_host(ctx, r, KILN_F32, 3, (int64_t[]){5, 3, 32});
    kiln_status st = y ? kiln_backward(kiln_sum(ctx, kiln_mul(ctx, y, rt), 0, NULL, false)) : kiln_error_status(ctx);
    CHECK(st == KILN_OK, "%s: %s", MODES[mode], kiln_error_message(ctx));
    kiln_tensor *outs[14] = {y, hn, cn};
    int no = 3;
    for (int q = 0; q < nin; q++) outs[no++] = kiln_tensor_grad(xs[q]);
    size_t tot = 0;
    for (int q = 0; q < no; q++) tot += outs[q] ? (size_t)kiln_tensor_numel(outs[q]) : 0;
    *res = calloc(tot, sizeof(float));
    *n = tot;
    bool ok = st == KILN_OK && *res;
    size_t at = 0;
    for (int q = 0; ok && q < no; q++) {
        if (!outs[q]) continue;
        size_t k = (size_t)kiln_tensor_numel(outs[q]);
        ok = kiln_to_host(outs[q], *res + at, k * sizeof(float)) == KILN_OK;
        at += k;
    }
    kiln_scope_end(ctx);
    return ok;
}

/* The step kernels compute RNN_VW hidden units per work-item (src/ops/rnn.c's step_vw: on a
 * CPU the widest vector that divides H): every mode's outputs and gradients, with lengths
 * and both directions, bit for bit those of one unit per work-item (the same device told
 * 1-float vectors through KILN_DEVICE_LIMITS). */
static void test_vector_units(kiln_ctx *ctx) {
    if (getenv("KILN_DEVICE_LIMITS")) return; /* (already a narrowed device) */
    kiln_ctx *one = NULL;
    kiln_sync(ctx); /* (POCL's workers read the environment) */
    setenv("KILN_DEVICE_LIMITS", "vec=1", 1);
    kiln_status os = kiln_open(&one, kiln_ctx_device(ctx)->name);
    unsetenv("KILN_DEVICE_LIMITS");
    CHECK(os == KILN_OK, "open with vec=1: %s", kiln_last_error());
    if (os != KILN_OK) return;
    for (int mode = 0; mode < 4; mode++) {
        bool lstm = mode == KILN_RNN_LSTM;
        int G = lstm ? 4 : mode == KILN_RNN_GRU ? 3 : 1, nin = (lstm ? 3 : 2) + 8;
        int64_t shapes[11][3] = {{5, 3, 4}, {2, 3, 16}, {2, 3, 16}};
        int nd[11] = {3, 3, 3};
        for (int d = 0; d < 2; d++) {
            int b = (lstm ? 3 : 2) + 4 * d;
            nd[b] = 2, shapes[b][0] = G * 16, shapes[b][1] = 4;
            nd[b + 1] = 2, shapes[b + 1][0] = G * 16, shapes[b + 1][1] = 16;
            nd[b + 2] = 1, shapes[b + 2][0] = G * 16;
            nd[b + 3] = 1, shapes[b + 3][0] = G * 16;
        }
        float *in[11] = {0}, r[5 * 3 * 32];
        for (int q = 0; q < nin; q++) {
            int64_t k = h_numel(nd[q], shapes[q]);
            in[q] = malloc(sizeof(float) * (size_t)k);
            if (in[q]) h_fill(in[q], k, -2.0f, 2.0f);
        }
        h_fill(r, 5 * 3 * 32, -1.0f, 1.0f);
        float *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        if (vw_pass(ctx, (kiln_rnn_mode)mode, in, (const int64_t(*)[3])shapes, nd, nin, r, &a, &na) &&
            vw_pass(one, (kiln_rnn_mode)mode, in, (const int64_t(*)[3])shapes, nd, nin, r, &b, &nb)) {
            size_t bad = 0;
            for (size_t e = 0; e < na && na == nb; e++) bad += memcmp(&a[e], &b[e], sizeof(float)) != 0;
            CHECK(na == nb && na > 0 && bad == 0,
                  "%s: outputs and gradients with vectors of hidden units differ from one unit per work-item in "
                  "%zu of %zu values",
                  MODES[mode], bad, na);
        }
        free(a), free(b);
        for (int q = 0; q < nin; q++) free(in[q]);
    }
    kiln_close(one);
}

static void run_all(kiln_ctx *ctx) {
    golden g;
    if (!golden_open(&g, "rnn")) return;
    for (int mode = 0; mode < 4; mode++)
        for (int k = 1; k <= 5; k++) golden_case(ctx, &g, (kiln_rnn_mode)mode, k);
    static const int32_t len2[2] = {3, 1};
    for (int mode = 0; mode < 4; mode++) {
        fd_check(ctx, (kiln_rnn_mode)mode, 1, NULL);
        fd_check(ctx, (kiln_rnn_mode)mode, 2, len2);
    }
    test_modules(ctx, &g);
    test_cells(ctx, &g);
    test_errors(ctx);
    test_dropout(ctx);
    test_no_host_waits(ctx);
    test_vector_units(ctx);
    golden_close(&g);
}

int main(void) {
    H_FOR_EACH_DEVICE(run_all);
    return h_finish();
}

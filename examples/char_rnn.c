/* examples/char_rnn.c - a character-level language model that writes text: a 2-layer LSTM
 * trained on Debian's fortunes, the recipe of tools/char_rnn_torch.py (the `lstm` model of
 * torch_ref.py: embedding 128, LSTM 128->256 x2, a linear layer to the vocabulary; Adam lr
 * 2e-3, gradient norm clipped at 1.0, batch 32, 64-character windows at random starts).
 * Both programs read the same bytes, split them the same way (the last 5% validates) and
 * train on the very same windows in the same order for a seed; the initial weights come
 * from each library's own generator, so compare their losses at the same step.
 *
 *   build/examples/char_rnn [--steps N] [--interval N] [--save PATH] ...    # train
 *   build/examples/char_rnn --generate 500 --load char_rnn.safetensors --prime "The "
 *   mpirun -np 2 build/examples/char_rnn --distributed   # data-parallel, own windows per rank
 *
 * Training prints, every interval, the mean training loss of the interval and the loss over
 * every target of the consecutive validation windows, in nats and bits per character, then
 * a sample of generated text; it saves the model with its vocabulary in the file's metadata
 * (KILN_VOCAB_META_KEY). The state_dict names are those of char_rnn_torch.py's CharLSTM
 * (embed.weight, lstm.weight_ih_l0, ..., fc.bias). The last lines are key=value figures
 * (val_loss=..., and chars_per_second=... after --generate).
 *
 * Generation feeds the prime through the network in one call, then steps the LSTM one
 * character at a time (a sequence of length 1 with the carried h and c): the sampled id
 * stays on the device for the next step; the host reads it only to print it.
 */
#include "text_dist.h"

#include <stddef.h>
#include <unistd.h>

#define PROG "char_rnn"
#define LN2 0.69314718055994530942

/* ---- the model: embedding -> LSTM -> linear, with its recurrent state in and out -------- */

typedef struct char_lstm {
    kiln_module *embed, *lstm, *fc;
    int64_t vocab, embed_dim, hidden, layers;
} char_lstm;

/* in: ids [B, T] I32 [, h0 [, c0]] ([layers, B, hidden]; absent: zeros); out: logits
 * [B, T, vocab], h_n, c_n. */
static kiln_status char_lstm_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nout;
    char_lstm *s = kiln_module_data(m);
    kiln_ctx *ctx = kiln_module_ctx(m);
    kiln_tensor *e = kiln_forward(s->embed, in[0]), *h = NULL;
    if (!e) return kiln_error_status(ctx);
    kiln_status st =
        kiln_nn_rnn_forward(s->lstm, e, nin > 1 ? in[1] : NULL, nin > 2 ? in[2] : NULL, NULL, &h, &out[1], &out[2]);
    if (st != KILN_OK) return st;
    out[0] = kiln_forward(s->fc, h);
    return out[0] ? KILN_OK : kiln_error_status(ctx);
}

static void char_lstm_describe(const kiln_module *m, char *buf, size_t cap) {
    const char_lstm *s = kiln_module_data(m);
    snprintf(buf, cap, "vocab=%lld, embed=%lld, hidden=%lld, layers=%lld", (long long)s->vocab, (long long)s->embed_dim,
             (long long)s->hidden, (long long)s->layers);
}

static kiln_module *char_lstm_new(kiln_ctx *ctx, int64_t vocab, int64_t embed, int64_t hidden, int64_t layers) {
    static const kiln_module_def def = {.kind = "CharLSTM",
                                        .state_size = sizeof(char_lstm),
                                        .forward = char_lstm_forward,
                                        .num_inputs = 3,
                                        .optional_inputs = 2,
                                        .num_outputs = 3,
                                        .describe = char_lstm_describe};
    kiln_module *m = kiln_module_new(ctx, &def);
    if (!m) return NULL;
    char_lstm *s = kiln_module_data(m);
    s->vocab = vocab, s->embed_dim = embed, s->hidden = hidden, s->layers = layers;
    kiln_rnn_params rp = kiln_rnn_defaults();
    rp.num_layers = (int)layers, rp.batch_first = true;
    if (kiln_module_add_child(m, "embed", s->embed = kiln_nn_embedding(ctx, vocab, embed)) != KILN_OK ||
        kiln_module_add_child(m, "lstm", s->lstm = kiln_nn_lstm(ctx, embed, hidden, &rp)) != KILN_OK ||
        kiln_module_add_child(m, "fc", s->fc = kiln_nn_linear(ctx, hidden, vocab, true)) != KILN_OK) {
        kiln_module_free(m);
        return NULL;
    }
    return m;
}

/* ---- flags -------------------------------------------------------------------------------- */

typedef struct opts {
    int64_t steps, interval, batch, seq_len, generate, sample, top_k, embed, hidden, layers;
    double lr, clip, val_frac, temperature;
    uint64_t seed;
    const char *dir, *device, *save, *load, *prime;
    bool progress, distributed;
} opts;

static const opts defaults = {.steps = 3000,
                              .interval = 250,
                              .batch = 32,
                              .seq_len = 64,
                              .generate = 0,
                              .sample = 200,
                              .top_k = 0,
                              .embed = 128,
                              .hidden = 256,
                              .layers = 2,
                              .lr = 2e-3,
                              .clip = 1.0,
                              .val_frac = 0.05,
                              .temperature = 0.8,
                              .seed = 1,
                              .dir = KILN_FORTUNES_DIR,
                              .save = "char_rnn.safetensors",
                              .prime = "The ",
                              .progress = true};

static void usage(FILE *f) {
    const opts *d = &defaults;
    fprintf(f,
            "usage: %s [options]              train on the fortunes and save the model\n"
            "       %s --generate N --load PATH [--prime TEXT] [--temperature T] [--top-k K]\n"
            "  a 2-layer LSTM character model (tools/char_rnn_torch.py's recipe)\n\n"
            "training (defaults in brackets):\n"
            "  --steps N          training steps (batches) [%lld]\n"
            "  --interval N       steps between reports, validation and samples [%lld]\n"
            "  --batch N          windows per batch [%lld]\n"
            "  --seq-len N        characters per window [%lld]\n"
            "  --lr X             Adam learning rate [%g]\n"
            "  --clip X           gradient norm clip, 0: none [%g]\n"
            "  --val-frac X       the last fraction of the corpus validates [%g]\n"
            "  --dir DIR          the fortunes directory [%s]\n"
            "  --embed N, --hidden N, --layers N   the model [%lld, %lld, %lld]\n"
            "  --sample N         characters generated after each report, 0: none [%lld]\n"
            "  --save PATH        where the model goes (with its vocabulary) [%s]\n"
            "  --progress, --no-progress   progress bar on stderr (a terminal) [on]\n"
            "  --distributed      data-parallel under mpirun: every rank trains --batch windows of its\n"
            "                     own a step (kiln/dist.h); rank 0 prints, samples and saves\n"
            "generation:\n"
            "  --generate N       write N characters from the model of --load, no training\n"
            "  --load PATH        a model saved by this program\n"
            "  --prime TEXT       the text the model continues [\"%s\"]\n"
            "  --temperature T    softmax temperature, > 0 [%g]\n"
            "  --top-k K          sample among the K most likely characters, 0: all [%lld]\n"
            "both:\n"
            "  --seed N           windows, initial weights and sampling [%llu]\n"
            "  --device SPEC      gpu, cpu, P:D or part of a device name [$KILN_DEVICE, else the\n"
            "                     first GPU, else the first CPU]\n"
            "  --help             this message\n",
            PROG, PROG, (long long)d->steps, (long long)d->interval, (long long)d->batch, (long long)d->seq_len, d->lr,
            d->clip, d->val_frac, d->dir, (long long)d->embed, (long long)d->hidden, (long long)d->layers,
            (long long)d->sample, d->save, d->prime, d->temperature, (long long)d->top_k, (unsigned long long)d->seed);
}

/* Returns -1 to go on, else the exit code (0 after --help, 2 after a usage error). */
static int parse(int argc, char **argv, opts *o) {
    setvbuf(stdout, NULL, _IOLBF, 0);
#define F(name, kind, field, lo, hi)                                                                                   \
    { name, kind, offsetof(opts, field), lo, hi }
    static const ex_flag flags[] = {
        F("--progress", EX_FLAG_SWITCH, progress, 1, 0),
        F("--no-progress", EX_FLAG_SWITCH, progress, 0, 0),
        F("--distributed", EX_FLAG_SWITCH, distributed, 1, 0),
        F("--steps", EX_FLAG_I64, steps, 0, 100000000),
        F("--interval", EX_FLAG_I64, interval, 1, 100000000),
        F("--batch", EX_FLAG_I64, batch, 1, 1 << 16),
        F("--generate", EX_FLAG_I64, generate, 0, 1 << 30),
        F("--sample", EX_FLAG_I64, sample, 0, 1 << 20),
        F("--top-k", EX_FLAG_I64, top_k, 0, 256),
        F("--lr", EX_FLAG_F64, lr, 0, 1e6),
        F("--clip", EX_FLAG_F64, clip, 0, 1e30),
        F("--val-frac", EX_FLAG_F64, val_frac, 1e-9, 0.5),
        F("--temperature", EX_FLAG_F64, temperature, 1e-6, 1e6),
        F("--seed", EX_FLAG_SEED, seed, 0, 0),
        F("--dir", EX_FLAG_STR, dir, 0, 0),
        F("--device", EX_FLAG_STR, device, 0, 0),
        F("--save", EX_FLAG_STR, save, 0, 0),
        F("--load", EX_FLAG_STR, load, 0, 0),
        F("--prime", EX_FLAG_STR, prime, 0, 0),
        F("--seq-len", EX_FLAG_I64, seq_len, 1, 1 << 16),
        F("--embed", EX_FLAG_I64, embed, 1, 1 << 16),
        F("--hidden", EX_FLAG_I64, hidden, 1, 1 << 16),
        F("--layers", EX_FLAG_I64, layers, 1, 16),
    };
#undef F
    int rc = ex_parse_flags(argc, argv, PROG, flags, (int)(sizeof flags / sizeof flags[0]), o, usage);
    if (rc != -1) return rc;
    if (o->generate > 0 && !o->load) {
        fprintf(stderr, "%s: --generate needs --load PATH (a model saved by %s)\n", PROG, PROG);
        goto bad;
    }
    if (o->load && o->generate == 0) {
        fprintf(stderr, "%s: --load is for --generate N (N > 0)\n", PROG);
        goto bad;
    }
    return -1;
bad:
    fprintf(stderr, "usage: %s [options]  (%s --help lists them)\n", PROG, PROG);
    return 2;
}

/* ---- generation ------------------------------------------------------------------------------ */

/* Continues the prime's ids with n sampled characters, written to f as they come (when f is
 * not NULL) and into text (cap >= n + 1, may be NULL). The model in eval mode, without
 * gradients. Returns the seconds spent stepping (the prime's pass excluded), or -1 with the
 * context's error set. */
static double generate(kiln_module *net, const kiln_vocab *v, const int32_t *prime, int64_t plen, int64_t n,
                       float temperature, int top_k, FILE *f) {
    kiln_ctx *ctx = kiln_module_ctx(net);
    const char_lstm *s = kiln_module_data(net);
    bool was_training = kiln_module_is_training(net);
    bool grad = kiln_ctx_set_grad_enabled(ctx, false);
    kiln_module_train(net, false);
    double secs = -1, t0 = 0;
    kiln_tensor *hc[2] = {NULL, NULL}, *ids = NULL; /* the carried state and the next input, kept */

    kiln_scope_begin(ctx);
    kiln_tensor *x = kiln_from_host(ctx, prime, KILN_I32, 2, (int64_t[]){1, plen}), *out[3] = {0};
    if (!x || kiln_module_forward(net, 1, &x, 3, out) != KILN_OK) goto scope_fail;
    /* the logits of the prime's last character [1, V] */
    kiln_tensor *last = kiln_reshape(ctx, kiln_slice(ctx, out[0], 1, plen - 1, plen, 1), 2, (int64_t[]){1, s->vocab});
    ids = kiln_sample_logits(ctx, last, temperature, top_k);
    if (!ids) goto scope_fail;
    kiln_tensor_keep(ids);
    kiln_tensor_keep(hc[0] = out[1]);
    kiln_tensor_keep(hc[1] = out[2]);
    kiln_scope_end(ctx);

    t0 = ex_now_ms();
    for (int64_t i = 0; i < n; i++) {
        int32_t id;
        /* the one read of a step: the id to print (the embedding of the next step checks it
         * on the host too, but the queue is empty by then) */
        if (kiln_to_host(ids, &id, sizeof id) != KILN_OK) goto done;
        int c = kiln_vocab_char(v, id);
        if (c < 0) {
            fprintf(stderr, "%s: the model sampled id %d outside the vocabulary of %d (non-finite logits?)\n", PROG,
                    (int)id, kiln_vocab_num_chars(v));
            goto done;
        }
        if (f) fputc(c, f);
        if (i + 1 == n) break;
        kiln_scope_begin(ctx);
        kiln_tensor *in[3] = {kiln_reshape(ctx, ids, 2, (int64_t[]){1, 1}), hc[0], hc[1]};
        if (!in[0] || kiln_module_forward(net, 3, in, 3, out) != KILN_OK) goto scope_fail;
        kiln_tensor *next =
            kiln_sample_logits(ctx, kiln_reshape(ctx, out[0], 2, (int64_t[]){1, s->vocab}), temperature, top_k);
        if (!next) goto scope_fail;
        kiln_tensor_free(ids);
        kiln_tensor_free(hc[0]);
        kiln_tensor_free(hc[1]);
        kiln_tensor_keep(ids = next);
        kiln_tensor_keep(hc[0] = out[1]);
        kiln_tensor_keep(hc[1] = out[2]);
        kiln_scope_end(ctx);
    }
    secs = (ex_now_ms() - t0) / 1e3;
    goto done;
scope_fail:
    kiln_scope_end(ctx);
done:
    if (f) fflush(f);
    kiln_tensor_free(ids);
    kiln_tensor_free(hc[0]);
    kiln_tensor_free(hc[1]);
    kiln_module_train(net, was_training);
    kiln_ctx_set_grad_enabled(ctx, grad);
    return secs;
}

/* The LSTM model's logits: the first of its outputs (h_n, c_n unused). */
static kiln_tensor *lstm_logits(kiln_module *net, kiln_tensor *x) {
    kiln_tensor *out[3] = {0};
    return kiln_module_forward(net, 1, &x, 3, out) == KILN_OK ? out[0] : NULL;
}

/* ---- the two modes ------------------------------------------------------------------------ */

static void fmt_duration(char *buf, size_t cap, double sec) {
    long s = (long)(sec > 0 && isfinite(sec) ? sec + 0.5 : 0);
    snprintf(buf, cap, "%ld:%02ld", s / 60, s % 60);
}

static int run_generate(kiln_ctx *ctx, const opts *o) {
    int rc = 1;
    kiln_safetensors *f = kiln_safetensors_open(ctx, o->load);
    kiln_vocab *v = NULL;
    kiln_module *net = NULL;
    int32_t *ids = NULL;
    if (!f) {
        fprintf(stderr, "%s: --load: %s\n", PROG, kiln_error_message(ctx));
        goto done;
    }
    const char *vs = kiln_safetensors_meta(f, KILN_VOCAB_META_KEY);
    if (!vs) {
        fprintf(stderr, "%s: --load: %s has no vocabulary (metadata \"%s\"): not a model saved by %s\n", PROG, o->load,
                KILN_VOCAB_META_KEY, PROG);
        goto done;
    }
    v = kiln_vocab_parse(vs, o->load);
    if (!v) {
        fprintf(stderr, "%s: --load: %s\n", PROG, kiln_last_error());
        goto done;
    }
    /* the model's sizes from the file: embed.weight [V, E], lstm.weight_hh_l0 [4H, H], and
     * the number of layers from the weight_ih_l{k} present */
    int ie = kiln_safetensors_find(f, "embed.weight"), ih = kiln_safetensors_find(f, "lstm.weight_hh_l0");
    const int64_t *se = NULL, *sh = NULL;
    if (ie < 0 || ih < 0 || kiln_safetensors_shape(f, ie, &se) != 2 || kiln_safetensors_shape(f, ih, &sh) != 2) {
        fprintf(stderr,
                "%s: --load: %s lacks embed.weight [V, E] or lstm.weight_hh_l0 [4H, H]: not a model saved by %s\n",
                PROG, o->load, PROG);
        goto done;
    }
    int64_t layers = 0;
    for (char key[64];; layers++) {
        snprintf(key, sizeof key, "lstm.weight_ih_l%lld", (long long)layers);
        if (kiln_safetensors_find(f, key) < 0) break;
    }
    if (se[0] != kiln_vocab_num_chars(v)) {
        fprintf(stderr, "%s: --load: %s: embed.weight has %lld rows but the vocabulary %d characters\n", PROG, o->load,
                (long long)se[0], kiln_vocab_num_chars(v));
        goto done;
    }
    kiln_manual_seed(ctx, o->seed);
    net = char_lstm_new(ctx, se[0], se[1], sh[1], layers > 0 ? layers : 1);
    if (!net) {
        fprintf(stderr, "%s: --load: %s: the model it describes cannot be built: %s\n", PROG, o->load,
                kiln_error_message(ctx));
        goto done;
    }
    kiln_load_report rep;
    if (kiln_module_load(net, o->load, true, &rep) != KILN_OK) {
        fprintf(stderr, "%s: --load: %s\n", PROG, kiln_error_message(ctx));
        goto done;
    }
    ids = ex_text_encode_prime(PROG, v, o->prime);
    if (!ids) goto done;
    if (o->top_k > kiln_vocab_num_chars(v)) {
        fprintf(stderr, "%s: --top-k %lld is larger than the vocabulary (%d characters)\n", PROG, (long long)o->top_k,
                kiln_vocab_num_chars(v));
        goto done;
    }
    printf("model %s: vocabulary %d, embedding %lld, LSTM %lld x%lld, %lld parameters\n", o->load,
           kiln_vocab_num_chars(v), (long long)se[1], (long long)sh[1], (long long)layers,
           (long long)kiln_module_num_elements(net));
    printf("--- %lld characters (temperature %g, top-k %lld, seed %llu) ---\n", (long long)o->generate, o->temperature,
           (long long)o->top_k, (unsigned long long)o->seed);
    fputs(o->prime, stdout);
    double secs =
        generate(net, v, ids, (int64_t)strlen(o->prime), o->generate, (float)o->temperature, (int)o->top_k, stdout);
    if (secs < 0) {
        if (kiln_error_status(ctx) != KILN_OK) fprintf(stderr, "\n%s: generating: %s\n", PROG, kiln_error_message(ctx));
        goto done;
    }
    printf("\n---\n");
    printf("generated %lld characters in %.2f s\n", (long long)o->generate, secs);
    printf("chars_per_second=%.1f\n", secs > 0 ? (double)o->generate / secs : 0.0);
    rc = 0;
done:
    free(ids);
    kiln_module_free(net);
    kiln_vocab_free(v);
    kiln_safetensors_close(f);
    return rc;
}

static int run_train(kiln_ctx *ctx, const opts *o) {
    int rc = 1;
    kiln_text *all = NULL, *train = NULL, *val = NULL;
    kiln_text_loader *tl = NULL, *vl = NULL;
    kiln_module *net = NULL;
    kiln_optim *opt = NULL;
    kiln_tensor **params = NULL;
    kiln_dist_model *dm = NULL;
    int32_t *prime = NULL;
    bool tty = o->progress && isatty(2) && kiln_dist_rank() == 0;

    all = kiln_text_fortunes(o->dir);
    if (!all || kiln_text_split(all, o->val_frac, &train, &val) != KILN_OK) {
        fprintf(stderr, "%s: %s\n", PROG, kiln_last_error());
        goto done;
    }
    const kiln_vocab *v = kiln_text_vocab(all);
    int64_t V = kiln_vocab_num_chars(v);
    kiln_text_loader_opts lo = kiln_text_loader_defaults(o->seq_len);
    lo.batch_size = o->batch, lo.random_windows = true, lo.drop_last = true;
    lo.seed = ex_text_dist_seed(o->seed, o->distributed); /* --distributed: each rank its windows */
    tl = kiln_text_loader_new(ctx, train, &lo);
    lo.random_windows = false, lo.drop_last = false;
    vl = tl ? kiln_text_loader_new(ctx, val, &lo) : NULL;
    if (!tl || !vl) {
        fprintf(stderr, "%s: %s\n", PROG, kiln_error_message(ctx));
        goto done;
    }
    int64_t nbat = kiln_text_loader_num_batches(tl);
    if (nbat < 1) {
        fprintf(stderr, "%s: %s holds no full batch of %lld windows of %lld characters\n", PROG, kiln_text_name(train),
                (long long)o->batch, (long long)o->seq_len);
        goto done;
    }
    printf("corpus %s: %lld characters, vocabulary %lld; train %lld, validation %lld; %lld batches of %lld x %lld an "
           "epoch\n",
           kiln_text_name(all), (long long)kiln_text_num_chars(all), (long long)V,
           (long long)kiln_text_num_chars(train), (long long)kiln_text_num_chars(val), (long long)nbat,
           (long long)o->batch, (long long)o->seq_len);

    kiln_manual_seed(ctx, o->seed);
    net = char_lstm_new(ctx, V, o->embed, o->hidden, o->layers);
    if (!net) {
        fprintf(stderr, "%s: building the model: %s\n", PROG, kiln_error_message(ctx));
        goto done;
    }
    int np = kiln_module_parameters(net, NULL, 0);
    params = malloc(sizeof *params * (size_t)np);
    if (!params) {
        fprintf(stderr, "%s: out of host memory\n", PROG);
        goto done;
    }
    kiln_module_parameters(net, params, np);
    if (o->distributed && !(dm = kiln_dist_wrap(net, NULL))) { /* rank 0's weights everywhere */
        fprintf(stderr, "%s: %s\n", PROG, kiln_error_message(ctx));
        goto done;
    }
    kiln_adam_opts ao = kiln_adam_defaults();
    ao.lr = o->lr;
    opt = kiln_adam(ctx, params, np, &ao);
    if (!opt) {
        fprintf(stderr, "%s: %s\n", PROG, kiln_error_message(ctx));
        goto done;
    }
    printf("model: embedding %lldx%lld, LSTM %lld->%lld x%lld, fc %lld->%lld: %lld parameters; Adam lr %g, clip %g, "
           "seed %llu\n",
           (long long)V, (long long)o->embed, (long long)o->embed, (long long)o->hidden, (long long)o->layers,
           (long long)o->hidden, (long long)V, (long long)kiln_module_num_elements(net), o->lr, o->clip,
           (unsigned long long)o->seed);
    if (o->sample > 0) {
        prime = ex_text_encode_prime(PROG, v, o->prime);
        if (!prime) goto done;
    }

    double t0 = ex_now_ms(), last_draw = 0, run_loss = 0, vloss = NAN, tr = NAN;
    int64_t run_n = 0;
    for (int64_t step = 0; step < o->steps; step++) {
        kiln_scope_begin(ctx);
        kiln_tensor *x = NULL, *y = NULL, *out[3] = {0};
        if (!kiln_text_loader_next(tl, &x, &y) && kiln_error_status(ctx) == KILN_OK)
            kiln_text_loader_next(tl, &x, &y); /* the end of an epoch: the next call starts the next one */
        kiln_tensor *loss = NULL;
        if (!x && kiln_error_status(ctx) == KILN_OK)
            fprintf(stderr, "%s: the training loader gave no batch\n", PROG);
        else if (x && kiln_module_forward(net, 1, &x, 3, out) == KILN_OK)
            loss = kiln_cross_entropy(ctx, kiln_reshape(ctx, out[0], 2, (int64_t[]){-1, V}),
                                      kiln_reshape(ctx, y, 1, (int64_t[]){-1}), KILN_MEAN);
        kiln_status st = loss ? kiln_optim_zero_grad(opt) : KILN_ERR_INVALID_ARGUMENT;
        if (st == KILN_OK) st = kiln_backward(loss);
        if (st == KILN_OK && dm) st = kiln_dist_sync_grads(dm); /* the mean over the ranks, then the clip */
        if (st == KILN_OK && o->clip > 0 && !kiln_clip_grad_norm_tensor(ctx, np, params, o->clip, 2.0))
            st = kiln_error_status(ctx);
        if (st == KILN_OK) st = kiln_optim_step(opt);
        float lv = st == KILN_OK ? kiln_tensor_item(loss) : NAN; /* as loss.item() in the reference */
        kiln_scope_end(ctx);
        if (st != KILN_OK || kiln_error_status(ctx) != KILN_OK) {
            fprintf(stderr, "%s%s: step %lld: %s\n", tty ? "\n" : "", PROG, (long long)step + 1,
                    kiln_error_message(ctx));
            goto done;
        }
        if (!isfinite(lv)) {
            fprintf(stderr, "%s%s: step %lld: the loss is %g\n", tty ? "\n" : "", PROG, (long long)step + 1, lv);
            goto done;
        }
        run_loss += lv, run_n++;
        double now = ex_now_ms();
        int64_t in_iv = step % o->interval + 1, iv_len = o->interval;
        if (o->steps - (step + 1 - in_iv) < iv_len) iv_len = o->steps - (step + 1 - in_iv);
        if (tty && (in_iv == 1 || in_iv == iv_len || now - last_draw >= 100)) {
            enum { BAR = 20 };
            char bar[BAR + 1], eta[48];
            for (int i = 0; i < BAR; i++) bar[i] = i < (int)(BAR * in_iv / iv_len) ? '#' : '-';
            bar[BAR] = 0;
            double el = (now - t0) / 1e3;
            fmt_duration(eta, sizeof eta, el / (double)(step + 1) * (double)(o->steps - step - 1));
            fprintf(stderr, "\r\033[Kstep %lld/%lld [%s] %lld/%lld loss %.4f %.0f chars/s ETA %s", (long long)step + 1,
                    (long long)o->steps, bar, (long long)in_iv, (long long)iv_len, run_loss / (double)run_n,
                    (double)(step + 1) * (double)(o->batch * o->seq_len) / el, eta);
            fflush(stderr);
            last_draw = now;
        }
        if (in_iv == iv_len) {
            if (tty) fprintf(stderr, "\r\033[K");
            vloss = ex_text_evaluate(PROG, net, vl, V, dm, lstm_logits);
            if (isnan(vloss)) {
                fprintf(stderr, "%s: validation after step %lld: %s\n", PROG, (long long)step + 1,
                        kiln_error_message(ctx));
                goto done;
            }
            tr = run_loss / (double)run_n;
            if (dm) { /* the mean of the ranks' interval means (their batches are as large) */
                if (!ex_text_dist_sum(PROG, dm, &tr, 1)) goto done;
                tr /= kiln_dist_world_size();
            }
            double el = (ex_now_ms() - t0) / 1e3;
            printf("step %6lld epoch %6.3f  train %.4f nats (%.4f bits)  val %.4f nats (%.4f bits)/char  %7.1f s "
                   "(%.1f ms/step)\n",
                   (long long)step + 1, (double)(step + 1) / (double)nbat, tr, tr / LN2, vloss, vloss / LN2, el,
                   1e3 * el / (double)(step + 1));
            run_loss = 0, run_n = 0;
            if (o->sample > 0 && kiln_dist_rank() == 0) {
                printf("--- sample (temperature %g, top-k %lld) ---\n%s", o->temperature, (long long)o->top_k,
                       o->prime);
                double s = generate(net, v, prime, (int64_t)strlen(o->prime), o->sample, (float)o->temperature,
                                    (int)o->top_k, stdout);
                if (s < 0) {
                    if (kiln_error_status(ctx) != KILN_OK)
                        fprintf(stderr, "\n%s: sampling: %s\n", PROG, kiln_error_message(ctx));
                    goto done;
                }
                printf("\n---\n");
            }
        }
    }
    double secs = (ex_now_ms() - t0) / 1e3;

    if (dm && !ex_text_dist_check_params(PROG, net)) goto done;
    if (o->save && o->steps > 0 && kiln_dist_rank() == 0) {
        char vs[2 * 256 + 1], desc[160];
        snprintf(desc, sizeof desc, "%s: %lld steps, val_loss=%.4f", PROG, (long long)o->steps, vloss);
        if (kiln_vocab_to_string(v, vs, sizeof vs) != KILN_OK ||
            kiln_checkpoint_save(o->save, net, NULL, 2, (kiln_meta[]){{KILN_VOCAB_META_KEY, vs}, {"trained", desc}}) !=
                KILN_OK) {
            fprintf(stderr, "%s: saving %s: %s\n", PROG, o->save,
                    kiln_error_status(ctx) != KILN_OK ? kiln_error_message(ctx) : kiln_last_error());
            goto done;
        }
        printf("saved the model and its vocabulary to %s\n", o->save);
    }
    printf("steps=%lld\n", (long long)o->steps);
    printf("train_loss=%.4f\n", tr);
    printf("val_loss=%.4f\n", vloss);
    printf("val_bits=%.4f\n", vloss / LN2);
    printf("seconds=%.1f\n", secs);
    rc = 0;
done:
    kiln_dist_model_free(dm);
    free(prime);
    free(params);
    kiln_optim_free(opt);
    kiln_module_free(net);
    kiln_text_loader_free(tl);
    kiln_text_loader_free(vl);
    kiln_text_free(all);
    kiln_text_free(train);
    kiln_text_free(val);
    return rc;
}

int main(int argc, char **argv) {
    opts o = defaults;
    int rc = parse(argc, argv, &o);
    if (rc >= 0) return rc;
    char dev[64];
    if (!ex_text_dist_init(PROG, o.distributed, &argc, &argv, &o.device, dev, sizeof dev)) return 1;
    ex_opts eo = {.device = o.device};
    kiln_ctx *ctx = ex_open(PROG, &eo);
    if (ctx) {
        rc = o.generate > 0 ? run_generate(ctx, &o) : run_train(ctx, &o);
        kiln_close(ctx);
    } else {
        rc = 1;
    }
    if (o.distributed) kiln_dist_finalize();
    return rc;
}

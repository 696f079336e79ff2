/* examples/gpt_char.c - a character-level GPT that writes text: the `gpt` model of
 * shared/bench/torch_ref.py (4 pre-norm causal blocks, 4 heads, width 128, context 128, GELU
 * MLP, learned positions, the output head tied to the token embedding) trained on Debian's
 * fortunes with the recipe of tools/gpt_char_torch.py: AdamW (lr 1e-3, betas 0.9/0.95,
 * weight decay 0.1), a linear warm-up then cosine decay to lr/10 (kiln_sequential_lr),
 * gradient norm clipped at 1.0, batch 16 windows of 128 characters at random starts.
 * Both programs read the same bytes, split them the same way (the last 5% validates) and
 * train on the very same windows in the same order for a seed; the initial weights come
 * from each library's own generator, so compare their losses at the same step.
 *
 *   build/examples/gpt_char [--steps N] [--interval N] [--save PATH] ...    # train
 *   build/examples/gpt_char --generate 500 --load gpt_char.safetensors --prime "The "
 *   mpirun -np 2 build/examples/gpt_char --distributed   # data-parallel, own windows per rank
 *
 * Training prints, every interval, the mean training loss of the interval and the loss over
 * every target of the consecutive validation windows (nats and bits per character), then a
 * sample of generated text; it saves the model with its vocabulary and head count in the
 * file's metadata. The state_dict names are torch_ref.py's GPT (wte, wpe, h.<i>.{ln_1,
 * c_attn, attn_proj, ln_2, c_fc, mlp_proj}, ln_f). The last lines are key=value figures.
 *
 * Generation keeps a key/value cache: the prime goes through the network once, keeping
 * every block's keys and values [1, heads, t, width/heads]; each new character then costs
 * one step of one position (its query attends to the cached keys, its key and value are
 * appended). --no-cache re-runs the whole window for each character instead, and
 * --verify-cache does both from the same seed and counts the characters that differ.
 * The positions are learned up to the context length: without the cache the window slides
 * by one character once the text is longer (nanoGPT's crop to the last `context`
 * characters); with the cache, when it is full the cache is rebuilt from the last half
 * context of text in one pass, so the cache costs one such pass every context/2 characters.
 * Both give the same characters while the text fits the context; after that the cached
 * model sees between context/2 and context characters, the uncached one always context.
 */
#include "text_dist.h"

#include <stddef.h>
#include <unistd.h>

#define PROG "gpt_char"
#define LN2 0.69314718055994530942
#define HEADS_META_KEY "gpt_char.heads"

/* ---- the model ---------------------------------------------------------------------------- */

typedef struct gpt_block {
    kiln_module *ln_1, *c_attn, *attn_proj, *ln_2, *c_fc, *mlp_proj;
    int64_t heads;
} gpt_block;

/* One block on x [B, T, C]. kv_in (NULL: none) holds the cached keys and values of the
 * positions before x's [B, H, S, C/H]; their concatenation with x's goes to kv_out (when
 * not NULL). Without a cache the attention is causal over x; with one, x is a single
 * position (T = 1) that may see every cached key and itself. */
static kiln_tensor *block_apply(kiln_module *m, kiln_tensor *x, kiln_tensor *const *kv_in, kiln_tensor **kv_out) {
    gpt_block *b = kiln_module_data(m);
    kiln_ctx *ctx = kiln_module_ctx(m);
    const int64_t *sh = kiln_tensor_shape(x);
    int64_t B = sh[0], T = sh[1], C = sh[2], H = b->heads;
    kiln_tensor *qkv = kiln_forward(b->c_attn, kiln_forward(b->ln_1, x)), *h[3];
    if (!qkv) return NULL;
    for (int i = 0; i < 3; i++) /* split(C, dim=2), view(B, T, H, C/H).transpose(1, 2) */
        h[i] = kiln_permute(
            ctx, kiln_reshape(ctx, kiln_slice(ctx, qkv, 2, i * C, (i + 1) * C, 1), 4, (int64_t[]){B, T, H, C / H}),
            (const int[]){0, 2, 1, 3});
    if (kv_in) {
        for (int i = 0; i < 2; i++) h[1 + i] = kiln_concat(ctx, 2, (kiln_tensor *[]){kv_in[i], h[1 + i]}, 2);
    }
    if (kv_out) kv_out[0] = h[1], kv_out[1] = h[2];
    kiln_sdpa_opts o = kiln_sdpa_defaults();
    /* fused (the default): about 20% less CPU per step than the composed path at context
     * 128 on POCL (README, "Scaled dot-product attention") */
    o.is_causal = kv_in == NULL;
    kiln_tensor *a = kiln_scaled_dot_product_attention(ctx, h[0], h[1], h[2], NULL, &o);
    a = kiln_reshape(ctx, kiln_permute(ctx, a, (const int[]){0, 2, 1, 3}), 3, (int64_t[]){B, T, C});
    x = kiln_add(ctx, x, kiln_forward(b->attn_proj, a));
    return kiln_add(ctx, x,
                    kiln_forward(b->mlp_proj, kiln_gelu(ctx, kiln_forward(b->c_fc, kiln_forward(b->ln_2, x)), false)));
}

static kiln_status block_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nin, (void)nout;
    out[0] = block_apply(m, in[0], NULL, NULL);
    return out[0] ? KILN_OK : kiln_error_status(kiln_module_ctx(m));
}

static kiln_module *block_new(kiln_ctx *ctx, int64_t d, int64_t heads) {
    static const kiln_module_def def = {
        .kind = "Block", .state_size = sizeof(gpt_block), .forward = block_forward, .num_inputs = 1, .num_outputs = 1};
    kiln_module *m = kiln_module_new(ctx, &def);
    if (!m) return NULL;
    gpt_block *b = kiln_module_data(m);
    b->heads = heads;
    if (kiln_module_add_child(m, "ln_1", b->ln_1 = kiln_nn_layernorm(ctx, 1, &d, 1e-5f, true)) != KILN_OK ||
        kiln_module_add_child(m, "c_attn", b->c_attn = kiln_nn_linear(ctx, d, 3 * d, true)) != KILN_OK ||
        kiln_module_add_child(m, "attn_proj", b->attn_proj = kiln_nn_linear(ctx, d, d, true)) != KILN_OK ||
        kiln_module_add_child(m, "ln_2", b->ln_2 = kiln_nn_layernorm(ctx, 1, &d, 1e-5f, true)) != KILN_OK ||
        kiln_module_add_child(m, "c_fc", b->c_fc = kiln_nn_linear(ctx, d, 4 * d, true)) != KILN_OK ||
        kiln_module_add_child(m, "mlp_proj", b->mlp_proj = kiln_nn_linear(ctx, 4 * d, d, true)) != KILN_OK) {
        kiln_module_free(m);
        return NULL;
    }
    return m;
}

typedef struct gpt {
    kiln_module *wte, *wpe, *h, *ln_f, *head;
    int64_t vocab, context, width, layers, heads;
} gpt;

/* Logits [B, T, V] of ids [B, T] at positions pos0 .. pos0 + T - 1. kv (NULL: no cache)
 * holds 2 tensors a layer: the cache in (NULL entries: empty), replaced by the cache out
 * (the caller owns both). */
static kiln_tensor *gpt_apply(kiln_module *m, kiln_tensor *ids, int64_t pos0, kiln_tensor **kv) {
    gpt *g = kiln_module_data(m);
    kiln_ctx *ctx = kiln_module_ctx(m);
    int64_t T = kiln_tensor_shape(ids)[1];
    /* the caller keeps pos0 + T <= context (else the slice of wpe fails and says so) */
    /* wte(x) + wpe(arange(pos0, pos0 + T)): rows of wpe's table */
    kiln_tensor *x = kiln_add(ctx, kiln_forward(g->wte, ids),
                              kiln_slice(ctx, kiln_module_find(g->wpe, "weight"), 0, pos0, pos0 + T, 1));
    for (int i = 0; i < g->layers && x; i++) {
        kiln_module *b = kiln_module_child(g->h, i);
        x = kv ? block_apply(b, x, kv[2 * i] ? &kv[2 * i] : NULL, &kv[2 * i]) : kiln_forward(b, x);
    }
    return kiln_forward(g->head, kiln_forward(g->ln_f, x));
}

static kiln_status gpt_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nin, (void)nout;
    out[0] = gpt_apply(m, in[0], 0, NULL);
    return out[0] ? KILN_OK : kiln_error_status(kiln_module_ctx(m));
}

static void gpt_describe(const kiln_module *m, char *buf, size_t cap) {
    const gpt *g = kiln_module_data(m);
    snprintf(buf, cap, "vocab=%lld, context=%lld, width=%lld, layers=%lld, heads=%lld", (long long)g->vocab,
             (long long)g->context, (long long)g->width, (long long)g->layers, (long long)g->heads);
}

static void gpt_destroy(kiln_module *m) { kiln_module_free(((gpt *)kiln_module_data(m))->head); }

static kiln_module *gpt_new(kiln_ctx *ctx, int64_t vocab, int64_t context, int64_t d, int64_t layers, int64_t heads) {
    static const kiln_module_def def = {.kind = "GPT",
                                        .state_size = sizeof(gpt),
                                        .forward = gpt_forward,
                                        .num_inputs = 1,
                                        .num_outputs = 1,
                                        .describe = gpt_describe,
                                        .destroy = gpt_destroy};
    kiln_module *m = kiln_module_new(ctx, &def);
    if (!m) return NULL;
    gpt *g = kiln_module_data(m);
    g->vocab = vocab, g->context = context, g->width = d, g->layers = layers, g->heads = heads;
    if (kiln_module_add_child(m, "wte", g->wte = kiln_nn_embedding(ctx, vocab, d)) != KILN_OK ||
        kiln_module_add_child(m, "wpe", g->wpe = kiln_nn_embedding(ctx, context, d)) != KILN_OK ||
        kiln_module_add_child(m, "h", g->h = kiln_nn_module_list(ctx, 0, NULL)) != KILN_OK)
        goto fail;
    for (int64_t i = 0; i < layers; i++)
        if (kiln_nn_module_list_append(g->h, block_new(ctx, d, heads)) != KILN_OK) goto fail;
    /* the tied head holds no weight of its own, so it is not a child (torch's GPT has none) */
    if (kiln_module_add_child(m, "ln_f", g->ln_f = kiln_nn_layernorm(ctx, 1, &d, 1e-5f, true)) != KILN_OK ||
        !(g->head = kiln_nn_tied_linear(ctx, g->wte, false)))
        goto fail;
    return m;
fail:
    kiln_module_free(m);
    return NULL;
}

/* ---- flags -------------------------------------------------------------------------------- */

typedef struct opts {
    int64_t steps, interval, warmup, batch, context, width, layers, heads, generate, sample, top_k;
    double lr, min_lr, weight_decay, clip, val_frac, temperature;
    uint64_t seed;
    const char *dir, *device, *save, *load, *prime;
    bool progress, no_cache, verify_cache, distributed;
} opts;

static const opts defaults = {.steps = 3000,
                              .interval = 250,
                              .warmup = 100,
                              .batch = 16,
                              .context = 128,
                              .width = 128,
                              .layers = 4,
                              .heads = 4,
                              .generate = 0,
                              .sample = 200,
                              .top_k = 0,
                              .lr = 1e-3,
                              .min_lr = 1e-4,
                              .weight_decay = 0.1,
                              .clip = 1.0,
                              .val_frac = 0.05,
                              .temperature = 0.8,
                              .seed = 1,
                              .dir = KILN_FORTUNES_DIR,
                              .save = "gpt_char.safetensors",
                              .prime = "The ",
                              .progress = true};

static void usage(FILE *f) {
    const opts *d = &defaults;
    fprintf(f,
            "usage: %s [options]              train on the fortunes and save the model\n"
            "       %s --generate N --load PATH [--prime TEXT] [--temperature T] [--top-k K] [--no-cache]\n"
            "  a character GPT (torch_ref.py's gpt model; tools/gpt_char_torch.py's recipe)\n\n"
            "training (defaults in brackets):\n"
            "  --steps N          training steps (batches) [%lld]\n"
            "  --interval N       steps between reports, validation and samples [%lld]\n"
            "  --warmup N         steps of linear learning-rate warm-up, then cosine decay [%lld]\n"
            "  --batch N          windows per batch [%lld]\n"
            "  --lr X, --min-lr X AdamW's peak learning rate and the end of the cosine [%g, %g]\n"
            "  --weight-decay X   AdamW's decoupled weight decay [%g]\n"
            "  --clip X           gradient norm clip, 0: none [%g]\n"
            "  --val-frac X       the last fraction of the corpus validates [%g]\n"
            "  --dir DIR          the fortunes directory (any directory of text files) [%s]\n"
            "  --context N, --width N, --layers N, --heads N   the model [%lld, %lld, %lld, %lld]\n"
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
            "  --no-cache         re-run the whole window for each character (no key/value cache)\n"
            "  --verify-cache     generate with and without the cache from the same seed, count the\n"
            "                     characters that differ (cache_mismatches=) and time both\n"
            "both:\n"
            "  --seed N           windows, initial weights and sampling [%llu]\n"
            "  --device SPEC      gpu, cpu, P:D or part of a device name [$KILN_DEVICE, else the\n"
            "                     first GPU, else the first CPU]\n"
            "  --help             this message\n",
            PROG, PROG, (long long)d->steps, (long long)d->interval, (long long)d->warmup, (long long)d->batch, d->lr,
            d->min_lr, d->weight_decay, d->clip, d->val_frac, d->dir, (long long)d->context, (long long)d->width,
            (long long)d->layers, (long long)d->heads, (long long)d->sample, d->save, d->prime, d->temperature,
            (long long)d->top_k, (unsigned long long)d->seed);
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
        F("--no-cache", EX_FLAG_SWITCH, no_cache, 1, 0),
        F("--verify-cache", EX_FLAG_SWITCH, verify_cache, 1, 0),
        F("--warmup", EX_FLAG_I64, warmup, 0, 100000000),
        F("--context", EX_FLAG_I64, context, 1, 1 << 16),
        F("--width", EX_FLAG_I64, width, 1, 1 << 16),
        F("--layers", EX_FLAG_I64, layers, 1, 64),
        F("--heads", EX_FLAG_I64, heads, 1, 1 << 10),
        F("--min-lr", EX_FLAG_F64, min_lr, 0, 1e6),
        F("--weight-decay", EX_FLAG_F64, weight_decay, 0, 1e6),
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
    if (o->width % o->heads != 0) {
        fprintf(stderr, "%s: --width %lld is not a multiple of --heads %lld\n", PROG, (long long)o->width,
                (long long)o->heads);
        goto bad;
    }
    if (o->generate == 0 && o->steps > 0 && o->warmup >= o->steps) {
        fprintf(stderr, "%s: --warmup %lld must be less than --steps %lld (the cosine decay follows it)\n", PROG,
                (long long)o->warmup, (long long)o->steps);
        goto bad;
    }
    return -1;
bad:
    fprintf(stderr, "usage: %s [options]  (%s --help lists them)\n", PROG, PROG);
    return 2;
}

/* ---- generation ------------------------------------------------------------------------------ */

/* Appends n sampled characters to text[0 .. plen) (room for plen + n ids), writing them to
 * f as they come (when f is not NULL). With the cache: one pass over the last `context`
 * characters, then one position a step, the cache rebuilt from the last context/2
 * characters when full; without: a pass over the last `context` characters for each one.
 * The model in eval mode, without gradients. Returns the seconds spent (the first pass
 * included), or -1 with the context's error set or a message printed. */
static double generate(kiln_module *net, const kiln_vocab *v, int32_t *text, int64_t plen, int64_t n, float temperature,
                       int top_k, bool cache, FILE *f) {
    kiln_ctx *ctx = kiln_module_ctx(net);
    const gpt *g = kiln_module_data(net);
    bool was_training = kiln_module_is_training(net);
    bool grad = kiln_ctx_set_grad_enabled(ctx, false);
    kiln_module_train(net, false);
    double secs = -1, t0 = ex_now_ms();
    int64_t nkv = 2 * g->layers, len = plen, cached = 0; /* cached: the positions in kv */
    kiln_tensor **kv = calloc((size_t)(2 * nkv), sizeof *kv), **fresh = kv ? kv + nkv : NULL;
    if (!kv) {
        fprintf(stderr, "%s: out of host memory\n", PROG);
        goto done;
    }
    for (int64_t i = 0; i < n; i++) {
        kiln_scope_begin(ctx);
        kiln_tensor *logits = NULL;
        int64_t T;
        if (cache && i > 0 && cached < g->context) { /* one step: the last character at position `cached` */
            T = 1;
            memcpy(fresh, kv, sizeof *kv * (size_t)nkv);
            kiln_tensor *x = kiln_from_host(ctx, text + len - 1, KILN_I32, 2, (int64_t[]){1, 1});
            logits = x ? gpt_apply(net, x, cached, fresh) : NULL;
        } else { /* a pass over the window: the prime, the sliding window, or a cache rebuild */
            int64_t w = cache && i > 0 ? (g->context / 2 > 0 ? g->context / 2 : 1) : g->context;
            T = len < w ? len : w;
            memset(fresh, 0, sizeof *kv * (size_t)nkv);
            kiln_tensor *x = kiln_from_host(ctx, text + len - T, KILN_I32, 2, (int64_t[]){1, T});
            logits = x ? gpt_apply(net, x, 0, cache ? fresh : NULL) : NULL;
        }
        kiln_tensor *next = NULL;
        if (logits) /* the logits of the last position [1, V] */
            next = kiln_sample_logits(
                ctx, kiln_reshape(ctx, kiln_slice(ctx, logits, 1, T - 1, T, 1), 2, (int64_t[]){1, g->vocab}),
                temperature, top_k);
        int32_t id = -1;
        if (!next || kiln_to_host(next, &id, sizeof id) != KILN_OK) {
            kiln_scope_end(ctx);
            goto done;
        }
        if (cache) {
            for (int64_t k = 0; k < nkv; k++) {
                if (kv[k] != fresh[k]) kiln_tensor_free(kv[k]);
                kiln_tensor_keep(kv[k] = fresh[k]);
            }
            cached = cached < g->context && i > 0 ? cached + 1 : T;
        }
        kiln_scope_end(ctx);
        int c = kiln_vocab_char(v, id);
        if (c < 0) {
            fprintf(stderr, "%s: the model sampled id %d outside the vocabulary of %d (non-finite logits?)\n", PROG,
                    (int)id, kiln_vocab_num_chars(v));
            goto done;
        }
        text[len++] = id;
        if (f) fputc(c, f);
    }
    secs = (ex_now_ms() - t0) / 1e3;
done:
    if (f) fflush(f);
    for (int64_t k = 0; kv && k < nkv; k++) kiln_tensor_free(kv[k]);
    free(kv);
    kiln_module_train(net, was_training);
    kiln_ctx_set_grad_enabled(ctx, grad);
    return secs;
}

/* ---- the two modes ------------------------------------------------------------------------ */

static void fmt_duration(char *buf, size_t cap, double sec) {
    long s = (long)(sec > 0 && isfinite(sec) ? sec + 0.5 : 0);
    snprintf(buf, cap, "%ld:%02ld", s / 60, s % 60);
}

/* Generates o->generate characters after the prime (with and without the cache under
 * --verify-cache), printing the text and the key=value figures. Returns the exit code. */
static int generate_report(kiln_module *net, const kiln_vocab *v, const opts *o) {
    kiln_ctx *ctx = kiln_module_ctx(net);
    const gpt *g = kiln_module_data(net);
    int rc = 1;
    int32_t *prime = ex_text_encode_prime(PROG, v, o->prime), *text[2] = {NULL, NULL};
    int64_t plen = (int64_t)strlen(o->prime), n = o->generate;
    if (!prime) return 1;
    if (o->top_k > kiln_vocab_num_chars(v)) {
        fprintf(stderr, "%s: --top-k %lld is larger than the vocabulary (%d characters)\n", PROG, (long long)o->top_k,
                kiln_vocab_num_chars(v));
        goto done;
    }
    if (plen > g->context)
        fprintf(stderr,
                "%s: note: the prime has %lld characters, more than the context of %lld: the model sees its "
                "last %lld\n",
                PROG, (long long)plen, (long long)g->context, (long long)g->context);
    else if (plen + n > g->context)
        fprintf(stderr, "%s: note: prime and text (%lld characters) outgrow the context of %lld: %s\n", PROG,
                (long long)(plen + n), (long long)g->context,
                o->no_cache ? "the window slides by one character"
                            : "the cache is rebuilt from the last context/2 characters when full");
    int runs = o->verify_cache ? 2 : 1;
    double secs[2] = {0, 0};
    /* a few untimed characters in each mode first: the device programs are built on first use */
    for (int r = 0; r < 2; r++) {
        int32_t warm[2 * 64 + 4];
        int64_t wl = plen < 64 ? plen : 64;
        memcpy(warm, prime + plen - wl, sizeof *warm * (size_t)wl);
        if (generate(net, v, warm, wl, 3, (float)o->temperature, (int)o->top_k, r == 0, NULL) < 0) {
            if (kiln_error_status(ctx) != KILN_OK)
                fprintf(stderr, "%s: generating: %s\n", PROG, kiln_error_message(ctx));
            goto done;
        }
    }
    for (int r = 0; r < runs; r++) {
        bool cache = o->verify_cache ? r == 0 : !o->no_cache;
        text[r] = malloc(sizeof *text[r] * (size_t)(plen + n));
        if (!text[r]) {
            fprintf(stderr, "%s: out of host memory\n", PROG);
            goto done;
        }
        memcpy(text[r], prime, sizeof *prime * (size_t)plen);
        kiln_manual_seed(ctx, o->seed); /* the same draws for both runs */
        if (r == 0) {
            printf("--- %lld characters (%s, temperature %g, top-k %lld, seed %llu) ---\n", (long long)n,
                   cache ? "key/value cache" : "no cache", o->temperature, (long long)o->top_k,
                   (unsigned long long)o->seed);
            fputs(o->prime, stdout);
        }
        secs[r] =
            generate(net, v, text[r], plen, n, (float)o->temperature, (int)o->top_k, cache, r == 0 ? stdout : NULL);
        if (secs[r] < 0) {
            if (kiln_error_status(ctx) != KILN_OK)
                fprintf(stderr, "\n%s: generating: %s\n", PROG, kiln_error_message(ctx));
            goto done;
        }
        if (r == 0) printf("\n---\n");
        printf("%s: %lld characters in %.2f s\n", cache ? "with the cache" : "without the cache", (long long)n,
               secs[r]);
    }
    if (o->verify_cache) {
        int64_t diff = 0, first = -1;
        for (int64_t i = plen; i < plen + n; i++)
            if (text[0][i] != text[1][i]) diff++, first = first < 0 ? i - plen : first;
        printf("cache_tokens_compared=%lld\n", (long long)n);
        printf("cache_mismatches=%lld\n", (long long)diff);
        if (diff) printf("first_mismatch=%lld\n", (long long)first);
        printf("tokens_per_second_cache=%.1f\n", secs[0] > 0 ? (double)n / secs[0] : 0.0);
        printf("tokens_per_second_no_cache=%.1f\n", secs[1] > 0 ? (double)n / secs[1] : 0.0);
    }
    printf("tokens_per_second=%.1f\n", secs[0] > 0 ? (double)n / secs[0] : 0.0);
    rc = 0;
done:
    free(prime);
    free(text[0]);
    free(text[1]);
    return rc;
}

static int run_generate(kiln_ctx *ctx, const opts *o) {
    int rc = 1;
    kiln_safetensors *f = kiln_safetensors_open(ctx, o->load);
    kiln_vocab *v = NULL;
    kiln_module *net = NULL;
    if (!f) {
        fprintf(stderr, "%s: --load: %s\n", PROG, kiln_error_message(ctx));
        goto done;
    }
    const char *vs = kiln_safetensors_meta(f, KILN_VOCAB_META_KEY), *hs = kiln_safetensors_meta(f, HEADS_META_KEY);
    if (!vs || !hs) {
        fprintf(stderr,
                "%s: --load: %s has no vocabulary or head count (metadata \"%s\", \"%s\"): not a model saved "
                "by %s\n",
                PROG, o->load, KILN_VOCAB_META_KEY, HEADS_META_KEY, PROG);
        goto done;
    }
    v = kiln_vocab_parse(vs, o->load);
    if (!v) {
        fprintf(stderr, "%s: --load: %s\n", PROG, kiln_last_error());
        goto done;
    }
    /* the sizes from the file: wte.weight [V, C], wpe.weight [context, C], the layers from
     * the h.<i>.ln_1.weight present, the heads from the metadata */
    int ie = kiln_safetensors_find(f, "wte.weight"), ip = kiln_safetensors_find(f, "wpe.weight");
    const int64_t *se = NULL, *sp = NULL;
    int64_t heads = 0, layers = 0;
    if (ie < 0 || ip < 0 || kiln_safetensors_shape(f, ie, &se) != 2 || kiln_safetensors_shape(f, ip, &sp) != 2 ||
        se[1] != sp[1]) {
        fprintf(stderr, "%s: --load: %s lacks wte.weight [V, C] or wpe.weight [context, C]: not a model saved by %s\n",
                PROG, o->load, PROG);
        goto done;
    }
    for (char key[64];; layers++) {
        snprintf(key, sizeof key, "h.%lld.ln_1.weight", (long long)layers);
        if (kiln_safetensors_find(f, key) < 0) break;
    }
    if (!ex_parse_i64(hs, 1, 1 << 10, &heads) || se[1] % heads != 0 || layers < 1) {
        fprintf(stderr, "%s: --load: %s: %lld layers and %s=\"%s\" heads do not describe a model of width %lld\n", PROG,
                o->load, (long long)layers, HEADS_META_KEY, hs, (long long)se[1]);
        goto done;
    }
    if (se[0] != kiln_vocab_num_chars(v)) {
        fprintf(stderr, "%s: --load: %s: wte.weight has %lld rows but the vocabulary %d characters\n", PROG, o->load,
                (long long)se[0], kiln_vocab_num_chars(v));
        goto done;
    }
    net = gpt_new(ctx, se[0], sp[0], se[1], layers, heads);
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
    printf("model %s: vocabulary %d, context %lld, width %lld, %lld layers, %lld heads, %lld parameters\n", o->load,
           kiln_vocab_num_chars(v), (long long)sp[0], (long long)se[1], (long long)layers, (long long)heads,
           (long long)kiln_module_num_elements(net));
    rc = generate_report(net, v, o);
done:
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
    kiln_lr_sched *sched = NULL;
    kiln_tensor **params = NULL;
    kiln_dist_model *dm = NULL;
    int32_t *sample = NULL;
    int64_t plen = (int64_t)strlen(o->prime);
    bool tty = o->progress && isatty(2) && kiln_dist_rank() == 0;

    all = kiln_text_fortunes(o->dir);
    if (!all || kiln_text_split(all, o->val_frac, &train, &val) != KILN_OK) {
        fprintf(stderr, "%s: %s\n", PROG, kiln_last_error());
        goto done;
    }
    const kiln_vocab *v = kiln_text_vocab(all);
    int64_t V = kiln_vocab_num_chars(v);
    kiln_text_loader_opts lo = kiln_text_loader_defaults(o->context);
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
                (long long)o->batch, (long long)o->context);
        goto done;
    }
    printf("corpus %s: %lld characters, vocabulary %lld; train %lld, validation %lld; %lld batches of %lld x %lld an "
           "epoch\n",
           kiln_text_name(all), (long long)kiln_text_num_chars(all), (long long)V,
           (long long)kiln_text_num_chars(train), (long long)kiln_text_num_chars(val), (long long)nbat,
           (long long)o->batch, (long long)o->context);

    kiln_manual_seed(ctx, o->seed);
    net = gpt_new(ctx, V, o->context, o->width, o->layers, o->heads);
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
    /* torch_ref.py's optimizer (weight decay on every parameter, as there) */
    kiln_adam_opts ao = kiln_adamw_defaults();
    ao.lr = o->lr, ao.beta2 = 0.95, ao.weight_decay = o->weight_decay;
    opt = kiln_adamw(ctx, params, np, &ao);
    if (opt && o->steps > 0) {
        /* warm-up from lr/W to lr over W steps, then cosine to min_lr over the rest (torch's
         * SequentialLR of LinearLR and CosineAnnealingLR), stepped every batch */
        int W = (int)o->warmup, rest = (int)(o->steps - o->warmup);
        if (W == 0) {
            sched = kiln_cosine_annealing_lr(opt, rest, o->min_lr);
        } else { /* made in order just before kiln_sequential_lr, which owns them */
            kiln_lr_sched *ph[2];
            ph[0] = kiln_linear_lr(opt, 1.0 / W, 1.0, W);
            ph[1] = kiln_cosine_annealing_lr(opt, rest, o->min_lr);
            sched = kiln_sequential_lr(opt, ph, 2, (int[]){W});
        }
    }
    if (!opt || (o->steps > 0 && !sched)) {
        fprintf(stderr, "%s: %s\n", PROG, kiln_error_message(ctx));
        goto done;
    }
    printf("model: GPT context %lld, width %lld, %lld layers, %lld heads, vocabulary %lld: %lld parameters; AdamW lr "
           "%g (warm-up %lld, cosine to %g), betas 0.9/0.95, weight decay %g, clip %g, seed %llu\n",
           (long long)o->context, (long long)o->width, (long long)o->layers, (long long)o->heads, (long long)V,
           (long long)kiln_module_num_elements(net), o->lr, (long long)o->warmup, o->min_lr, o->weight_decay, o->clip,
           (unsigned long long)o->seed);
    if (o->sample > 0) {
        int32_t *p = ex_text_encode_prime(PROG, v, o->prime);
        sample = p ? malloc(sizeof *sample * (size_t)(plen + o->sample)) : NULL;
        if (sample) memcpy(sample, p, sizeof *p * (size_t)plen);
        free(p);
        if (!sample) goto done;
    }

    double t0 = ex_now_ms(), last_draw = 0, run_loss = 0, vloss = NAN, tr = NAN;
    int64_t run_n = 0;
    for (int64_t step = 0; step < o->steps; step++) {
        kiln_scope_begin(ctx);
        kiln_tensor *x = NULL, *y = NULL;
        if (!kiln_text_loader_next(tl, &x, &y) && kiln_error_status(ctx) == KILN_OK)
            kiln_text_loader_next(tl, &x, &y); /* the end of an epoch: the next call starts the next one */
        kiln_tensor *loss = NULL, *logits = x ? kiln_forward(net, x) : NULL;
        if (!x && kiln_error_status(ctx) == KILN_OK) fprintf(stderr, "%s: the training loader gave no batch\n", PROG);
        if (logits)
            loss = kiln_cross_entropy(ctx, kiln_reshape(ctx, logits, 2, (int64_t[]){-1, V}),
                                      kiln_reshape(ctx, y, 1, (int64_t[]){-1}), KILN_MEAN);
        kiln_status st = loss ? kiln_optim_zero_grad(opt) : KILN_ERR_INVALID_ARGUMENT;
        if (st == KILN_OK) st = kiln_backward(loss);
        if (st == KILN_OK && dm) st = kiln_dist_sync_grads(dm); /* the mean over the ranks, then the clip */
        if (st == KILN_OK && o->clip > 0 && !kiln_clip_grad_norm_tensor(ctx, np, params, o->clip, 2.0))
            st = kiln_error_status(ctx);
        if (st == KILN_OK) st = kiln_optim_step(opt);
        if (st == KILN_OK) st = kiln_lr_sched_step(sched);
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
            fprintf(stderr, "\r\033[Kstep %lld/%lld [%s] %lld/%lld loss %.4f lr %.2e %.0f chars/s ETA %s",
                    (long long)step + 1, (long long)o->steps, bar, (long long)in_iv, (long long)iv_len,
                    run_loss / (double)run_n, kiln_lr_sched_last_lr(sched),
                    (double)(step + 1) * (double)(o->batch * o->context) / el, eta);
            fflush(stderr);
            last_draw = now;
        }
        if (in_iv == iv_len) {
            if (tty) fprintf(stderr, "\r\033[K");
            vloss = ex_text_evaluate(PROG, net, vl, V, dm, kiln_forward);
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
            printf("step %6lld epoch %6.3f  train %.4f nats (%.4f bits)  val %.4f nats (%.4f bits)/char  lr %.2e  "
                   "%7.1f s (%.1f ms/step)\n",
                   (long long)step + 1, (double)(step + 1) / (double)nbat, tr, tr / LN2, vloss, vloss / LN2,
                   kiln_lr_sched_last_lr(sched), el, 1e3 * el / (double)(step + 1));
            run_loss = 0, run_n = 0;
            if (o->sample > 0 && kiln_dist_rank() == 0) {
                printf("--- sample (temperature %g, top-k %lld) ---\n%s", o->temperature, (long long)o->top_k,
                       o->prime);
                double s =
                    generate(net, v, sample, plen, o->sample, (float)o->temperature, (int)o->top_k, true, stdout);
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
        char vs[2 * 256 + 1], hs[32], desc[160];
        snprintf(hs, sizeof hs, "%lld", (long long)o->heads);
        snprintf(desc, sizeof desc, "%s: %lld steps, val_loss=%.4f", PROG, (long long)o->steps, vloss);
        if (kiln_vocab_to_string(v, vs, sizeof vs) != KILN_OK ||
            kiln_checkpoint_save(o->save, net, NULL, 3,
                                 (kiln_meta[]){{KILN_VOCAB_META_KEY, vs}, {HEADS_META_KEY, hs}, {"trained", desc}}) !=
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
    free(sample);
    free(params);
    kiln_lr_sched_free(sched);
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

/* examples/text_dist.h - what the character models (char_rnn, gpt_char) share: the prime
 * encoder, the validation loss, and --distributed, for training loops that are their own
 * (the classifiers get --distributed from common.h through kiln_fit):
 *
 *     mpirun -np 2 build/examples/char_rnn --distributed
 *
 * Every rank wraps the model (rank 0's weights everywhere), draws its own random windows
 * (the text loader's seed offset per rank: rank 0 keeps --seed, so one rank draws the
 * windows of a single-process run), averages the gradients with kiln_dist_sync_grads before
 * the clip and the optimizer step, and validates a share of the validation batches (batch
 * b on rank b mod N); the sums are added over the ranks, so the reported loss is the one of
 * the whole validation text. Rank 0 prints, samples and saves; the other ranks' stdout goes
 * to /dev/null. At the end each rank hashes its parameters' bytes and rank 0 prints
 * params_identical=1 when every rank's hash is rank 0's.
 */
#ifndef EX_TEXT_DIST_H
#define EX_TEXT_DIST_H

#include "common.h"

/* Joins the MPI world when on (else does nothing): the other ranks' stdout to /dev/null,
 * *device the rank's device unless one was given (dev: its buffer). False, printed, on
 * failure. */
static inline bool ex_text_dist_init(const char *prog, bool on, int *argc, char ***argv, const char **device, char *dev,
                                     size_t cap) {
    if (!on) return true;
    if (kiln_dist_init(argc, argv) != KILN_OK) {
        fprintf(stderr, "%s: --distributed: %s\n", prog, kiln_last_error());
        return false;
    }
    if (kiln_dist_rank() != 0 && !freopen("/dev/null", "w", stdout)) {
        fprintf(stderr, "%s: rank %d: cannot send stdout to /dev/null\n", prog, kiln_dist_rank());
        return false;
    }
    if (!*device) *device = kiln_dist_device(dev, cap);
    printf("distributed: %d ranks\n", kiln_dist_world_size());
    return true;
}

/* The random windows' seed of this rank: rank r draws from seed + r * 2^64 / golden ratio
 * (splitmix64's increment, so nearby seeds of nearby ranks do not collide). */
static inline uint64_t ex_text_dist_seed(uint64_t seed, bool on) {
    return on ? seed + (uint64_t)kiln_dist_rank() * 0x9E3779B97F4A7C15ULL : seed;
}

/* v[0..n) summed over the ranks when dm is set (every rank calls it); false, printed, on
 * failure. */
static inline bool ex_text_dist_sum(const char *prog, const kiln_dist_model *dm, double *v, int n) {
    if (!dm || kiln_dist_allreduce_f64(v, n, KILN_DIST_SUM) == KILN_OK) return true;
    fprintf(stderr, "%s: %s\n", prog, kiln_last_error());
    return false;
}

/* Hashes every parameter's bytes (FNV-1a) and checks that every rank has rank 0's hash:
 * prints param_hash and params_identical (1 or 0) on rank 0. False, printed, when the
 * hashes could not be compared. */
static inline bool ex_text_dist_check_params(const char *prog, kiln_module *net) {
    int n = kiln_module_parameters(net, NULL, 0);
    kiln_tensor **ps = malloc(sizeof *ps * (size_t)(n > 0 ? n : 1));
    if (!ps) return false;
    kiln_module_parameters(net, ps, n);
    uint64_t h = 1469598103934665603ULL;
    bool ok = true;
    for (int i = 0; i < n && ok; i++) {
        size_t bytes = (size_t)kiln_tensor_numel(ps[i]) * kiln_dtype_size(kiln_tensor_dtype(ps[i]));
        unsigned char *b = malloc(bytes ? bytes : 1);
        ok = b && kiln_to_host(ps[i], b, bytes) == KILN_OK;
        for (size_t j = 0; ok && j < bytes; j++) h = (h ^ b[j]) * 1099511628211ULL;
        free(b);
    }
    free(ps);
    if (!ok) {
        fprintf(stderr, "%s: reading the parameters: %s\n", prog, kiln_error_message(kiln_module_ctx(net)));
        return false;
    }
    /* the hash as two exact 32-bit halves; max == min over the ranks when all agree */
    double mx[2] = {(double)(h >> 32), (double)(h & 0xffffffffu)}, mn[2] = {mx[0], mx[1]};
    if (kiln_dist_allreduce_f64(mx, 2, KILN_DIST_MAX) != KILN_OK ||
        kiln_dist_allreduce_f64(mn, 2, KILN_DIST_MIN) != KILN_OK) {
        fprintf(stderr, "%s: comparing the parameters: %s\n", prog, kiln_last_error());
        return false;
    }
    printf("param_hash=%016llx\n", (unsigned long long)h);
    printf("params_identical=%d\n", mx[0] == mn[0] && mx[1] == mn[1]);
    return true;
}

/* ---- shared by the character models, distributed or not ------------------------------- */

/* The prime's ids, or NULL with a message printed (a character the model does not know). */
static inline int32_t *ex_text_encode_prime(const char *prog, const kiln_vocab *v, const char *prime) {
    size_t len = strlen(prime);
    int32_t *ids = malloc(sizeof *ids * (len ? len : 1));
    if (!ids) {
        fprintf(stderr, "%s: out of host memory\n", prog);
        return NULL;
    }
    if (kiln_vocab_encode(v, prime, len, ids) != KILN_OK) {
        fprintf(stderr, "%s: --prime: %s\n", prog, kiln_last_error());
        free(ids);
        return NULL;
    }
    return ids;
}

/* The model's logits [B, T, vocab] for the ids x [B, T] (NULL with the context's error set). */
typedef kiln_tensor *(*ex_text_logits_fn)(kiln_module *net, kiln_tensor *x);

/* Mean loss over every target of the loader's consecutive windows (nats), NaN on error.
 * With dm (--distributed) rank r computes batches r, r + N, ... and the sums are added over
 * the ranks: every rank returns the loss of the whole text. */
static inline double ex_text_evaluate(const char *prog, kiln_module *net, kiln_text_loader *l, int64_t vocab,
                                      const kiln_dist_model *dm, ex_text_logits_fn logits_of) {
    kiln_ctx *ctx = kiln_module_ctx(net);
    bool grad = kiln_ctx_set_grad_enabled(ctx, false);
    kiln_module_train(net, false);
    kiln_text_loader_reset(l);
    kiln_tensor *total = NULL; /* summed on the device, read once */
    int64_t count = 0, batch = 0;
    const int rank = dm ? kiln_dist_rank() : 0, world = dm ? kiln_dist_world_size() : 1;
    bool ok = true;
    for (;; batch++) {
        kiln_scope_begin(ctx);
        kiln_tensor *x, *y;
        if (!kiln_text_loader_next(l, &x, &y)) {
            kiln_scope_end(ctx);
            ok = kiln_error_status(ctx) == KILN_OK;
            break;
        }
        if (batch % world != rank) { /* another rank's share */
            kiln_scope_end(ctx);
            continue;
        }
        kiln_tensor *logits = logits_of(net, x), *sum = NULL;
        if (logits)
            sum = kiln_cross_entropy(ctx, kiln_reshape(ctx, logits, 2, (int64_t[]){-1, vocab}),
                                     kiln_reshape(ctx, y, 1, (int64_t[]){-1}), KILN_SUM);
        kiln_tensor *t = sum && total ? kiln_add(ctx, total, sum) : sum;
        if (!t) {
            kiln_scope_end(ctx);
            ok = false;
            break;
        }
        count += kiln_tensor_numel(y);
        kiln_tensor_keep(t);
        kiln_tensor_free(total);
        total = t;
        kiln_scope_end(ctx);
    }
    /* the sum, the count and the failures over the ranks: every rank takes part, also one
     * that failed, so that none waits for it */
    double v[3] = {ok && total ? kiln_tensor_item(total) : 0, (double)count, !ok};
    if (!ex_text_dist_sum(prog, dm, v, 3)) v[2] = 1;
    double r = v[2] == 0 && v[1] > 0 ? v[0] / v[1] : NAN;
    kiln_tensor_free(total);
    kiln_module_train(net, true);
    kiln_ctx_set_grad_enabled(ctx, grad);
    return r;
}

#endif

/* tests/test_determinism.c - the same seed on the same device gives bit-identical
 * training: a small CNN (conv, batch norm, dropout, linear, cross-entropy, Adam) trained
 * for a few steps twice, in two contexts one after the other and again in one context,
 * ends with the same bits in every weight, buffer and loss. A different seed must give
 * different weights (so the comparison is not vacuous), and so must leaving dropout's
 * stream out (the mask really comes from the seeded RNG). */
#include "harness.h"
#include "small_cnn.h"

#define STEPS 6 /* at most; KILN_TEST_SMALL=1 (Oclgrind runs) trains 2 */
#define CAP 4096

typedef struct run_result {
    float loss[STEPS];
    uint32_t state[CAP];
    int64_t nstate;
} run_result;

static int steps = STEPS;

/* Builds with `seed`, trains STEPS steps; false on any error. `skip` values of the RNG
 * stream are drawn between building and training (moving every dropout mask). */
static bool train(kiln_ctx *ctx, uint64_t seed, int64_t skip, run_result *r) {
    cnn m;
    memset(r, 0, sizeof *r);
    if (!cnn_build(&m, ctx, seed)) {
        CHECK(0, "build: %s", kiln_error_message(ctx));
        cnn_free(&m);
        return false;
    }
    if (skip) kiln_tensor_free(kiln_rand_uniform(ctx, 0, 1, 1, (int64_t[]){skip}));
    bool ok = true;
    for (int s = 0; s < steps && ok; s++) {
        ok = cnn_step(&m, s, &r->loss[s]) == KILN_OK;
        CHECK(ok, "step %d: %s", s, kiln_error_message(ctx));
    }
    r->nstate = ok ? cnn_state(&m, r->state, CAP) : -1;
    CHECK(r->nstate > 0, "reading the state back: %s", kiln_error_message(ctx));
    cnn_free(&m);
    return ok && r->nstate > 0;
}

static int64_t first_diff(const run_result *a, const run_result *b) {
    if (a->nstate != b->nstate) return 0;
    for (int64_t i = 0; i < a->nstate; i++)
        if (a->state[i] != b->state[i]) return i;
    return -1;
}

static run_result ra, rb, rc, rd;

static void run(kiln_ctx *ctx) {
    const char *spec_name = kiln_ctx_device(ctx)->name;
    char spec[16];
    snprintf(spec, sizeof spec, "%d:%d", kiln_ctx_device(ctx)->platform_index, kiln_ctx_device(ctx)->device_index);

    /* two runs in one context, one after the other */
    if (!train(ctx, 1234, 0, &ra) || !train(ctx, 1234, 0, &rb)) return;
    int64_t d = first_diff(&ra, &rb);
    CHECK(d < 0, "same seed, same context: state word %lld differs (0x%08x vs 0x%08x)", (long long)d,
          d >= 0 ? ra.state[d] : 0, d >= 0 ? rb.state[d] : 0);
    CHECK(memcmp(ra.loss, rb.loss, sizeof ra.loss) == 0, "same seed, same context: losses differ (%.9g vs %.9g)",
          (double)ra.loss[steps - 1], (double)rb.loss[steps - 1]);
    for (int s = 0; s < steps; s++) CHECK(isfinite(ra.loss[s]), "loss of step %d is %g", s, (double)ra.loss[s]);

    /* a fresh context on the same device (new programs from the cache, new pool) */
    kiln_ctx *c2;
    CHECK(kiln_open(&c2, spec) == KILN_OK, "open %s: %s", spec, kiln_last_error());
    if (!c2) return;
    bool ok = train(c2, 1234, 0, &rc);
    kiln_close(c2);
    if (!ok) return;
    d = first_diff(&ra, &rc);
    CHECK(d < 0, "same seed, new context: state word %lld differs", (long long)d);
    CHECK(memcmp(ra.loss, rc.loss, sizeof ra.loss) == 0, "same seed, new context: losses differ");

    /* another seed: other weights */
    if (!train(ctx, 4321, 0, &rd)) return;
    CHECK(first_diff(&ra, &rd) >= 0, "a different seed gives different weights");
    /* the same weights at the start, other dropout masks: other weights at the end */
    if (!train(ctx, 1234, 1, &rd)) return;
    CHECK(first_diff(&ra, &rd) >= 0, "dropout masks come from the seeded stream");
    fprintf(stderr, "%s: %lld state words and %d losses bit-identical over %d runs of %d steps (loss %.6f -> %.6f)\n",
            spec_name, (long long)ra.nstate, steps, 3, steps, (double)ra.loss[0], (double)ra.loss[steps - 1]);
    CHECK_OK(ctx);
}

int main(void) {
    const char *small = getenv("KILN_TEST_SMALL");
    if (small && *small && strcmp(small, "0") != 0) steps = 2;
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}

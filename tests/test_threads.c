/* tests/test_threads.c - contexts are independent: two threads, each with its own
 * context, train the small CNN at the same time and end with exactly the weights and
 * losses of the same trainings run one after the other on one thread. An error in one
 * thread's context (and in its thread-local kiln_last_error) does not show in the other.
 * Run under ThreadSanitizer by scripts/test --sanitize when available. */
#include <pthread.h>

#include "harness.h"
#include "small_cnn.h"

#define STEPS 4
#define CAP 4096
#define NTHREADS 2

typedef struct job {
    char spec[16];
    uint64_t seed;
    bool fail_first; /* provoke errors in this thread while the other trains */
    /* results */
    bool ok;
    char err[512];
    float loss[STEPS];
    uint32_t state[CAP];
    int64_t nstate;
} job;

static void *train(void *arg) {
    job *j = arg;
    j->ok = false;
    kiln_ctx *ctx;
    if (kiln_open(&ctx, j->spec) != KILN_OK) {
        snprintf(j->err, sizeof j->err, "open: %s", kiln_last_error());
        return NULL;
    }
    cnn m;
    if (!cnn_build(&m, ctx, j->seed)) {
        snprintf(j->err, sizeof j->err, "build: %s", kiln_error_message(ctx));
        cnn_free(&m);
        kiln_close(ctx);
        return NULL;
    }
    bool ok = true;
    for (int s = 0; s < STEPS && ok; s++) {
        if (j->fail_first) {
            /* errors of this thread: a bad op in its context, a bad spec in its thread */
            kiln_scope_begin(ctx);
            kiln_tensor *bad =
                kiln_matmul(ctx, kiln_zeros(ctx, 2, (int64_t[]){2, 3}), kiln_zeros(ctx, 2, (int64_t[]){2, 3}));
            kiln_scope_end(ctx);
            kiln_device_info info;
            if (bad || kiln_error_status(ctx) != KILN_ERR_SHAPE ||
                kiln_device_find("no-such-device-xyz", &info) != KILN_ERR_DEVICE_NOT_FOUND) {
                snprintf(j->err, sizeof j->err, "provoked errors did not happen");
                ok = false;
                break;
            }
            kiln_error_clear(ctx);
        }
        ok = cnn_step(&m, s, &j->loss[s]) == KILN_OK;
        if (!ok) snprintf(j->err, sizeof j->err, "step %d: %s", s, kiln_error_message(ctx));
    }
    if (ok) {
        j->nstate = cnn_state(&m, j->state, CAP);
        ok = j->nstate > 0;
        if (!ok) snprintf(j->err, sizeof j->err, "state: %s", kiln_error_message(ctx));
    }
    if (ok && !j->fail_first && kiln_last_error()[0]) {
        snprintf(j->err, sizeof j->err, "another thread's error shows here: %s", kiln_last_error());
        ok = false;
    }
    cnn_free(&m);
    kiln_close(ctx);
    j->ok = ok;
    return NULL;
}

static job ref[NTHREADS], par[NTHREADS];

static bool same(const job *a, const job *b) {
    return a->nstate == b->nstate && memcmp(a->state, b->state, sizeof(uint32_t) * (size_t)a->nstate) == 0 &&
           memcmp(a->loss, b->loss, sizeof a->loss) == 0;
}

static void run(kiln_ctx *ctx) {
    char spec[16];
    snprintf(spec, sizeof spec, "%d:%d", kiln_ctx_device(ctx)->platform_index, kiln_ctx_device(ctx)->device_index);
    /* the references: one after the other, on this thread */
    for (int t = 0; t < NTHREADS; t++) {
        memset(&ref[t], 0, sizeof ref[t]);
        snprintf(ref[t].spec, sizeof ref[t].spec, "%s", spec);
        ref[t].seed = 100 + (uint64_t)t;
        train(&ref[t]);
        CHECK(ref[t].ok, "reference %d: %s", t, ref[t].err);
        if (!ref[t].ok) return;
    }
    CHECK(!same(&ref[0], &ref[1]), "the two seeds train differently");
    /* concurrently, three times (thread 1 also makes errors on its side) */
    for (int round = 0; round < 3; round++) {
        pthread_t th[NTHREADS];
        for (int t = 0; t < NTHREADS; t++) {
            memset(&par[t], 0, sizeof par[t]);
            snprintf(par[t].spec, sizeof par[t].spec, "%s", spec);
            par[t].seed = 100 + (uint64_t)t;
            par[t].fail_first = t == 1 && round > 0;
            CHECK(pthread_create(&th[t], NULL, train, &par[t]) == 0, "pthread_create");
        }
        for (int t = 0; t < NTHREADS; t++) pthread_join(th[t], NULL);
        for (int t = 0; t < NTHREADS; t++) {
            CHECK(par[t].ok, "round %d, thread %d: %s", round, t, par[t].err);
            CHECK(par[t].ok && same(&par[t], &ref[t]),
                  "round %d, thread %d: weights or losses differ from the single-thread run", round, t);
        }
    }
    CHECK_OK(ctx);
}

int main(void) {
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}

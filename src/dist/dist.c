/* src/dist/dist.c - data-parallel training over MPI (kiln/dist.h): the MPI world, host
 * collectives with a watchdog, and wrapped models whose gradients are averaged in buckets
 * that start during the backward.
 *
 * How a step goes. autograd tells us (kiln__set_grad_ready) of each parameter whose
 * gradient is final; we enqueue its read into its bucket's host buffer without waiting
 * (kiln__read_async). Whenever we are called (the next grad-ready, or the sync) we poll the
 * reads of the next bucket in order and, once they are all done, post its header and data
 * MPI_Iallreduce. Buckets start strictly in order (0, 1, ...) so every rank issues the same
 * collectives in the same order. kiln_dist_sync_grads posts what is left, polls every
 * request with a deadline, scales by 1 / world and writes the means back (non-blocking,
 * then polled). Host threads never block in MPI: every wait is a poll loop that sleeps a
 * little between polls (ranks may share a core with their POCL device) and gives up with a
 * named error at the deadline. */
#define _POSIX_C_SOURCE 200809L
#include "dist_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_BUCKET_BYTES ((size_t)25 << 20)
#define DEFAULT_TIMEOUT_S 300.0

/* Errors go to the context when there is one, else to kiln_last_error(). */
static kiln_status dfail(kiln_ctx *ctx, kiln_status s, const char *fmt, ...) KILN__PRINTF(3, 4);
static kiln_status dfail(kiln_ctx *ctx, kiln_status s, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ctx ? kiln__fail(ctx, s, "%s", msg) : kiln__fail_global(s, "%s", msg);
}

static double timeout_from_env(void) {
    const char *e = getenv("KILN_DIST_TIMEOUT");
    if (e && *e) {
        char *end;
        double v = strtod(e, &end);
        if (*end == '\0' && v > 0) return v;
    }
    return DEFAULT_TIMEOUT_S;
}

static double g_timeout = 0; /* 0: not read yet */

double kiln_dist_set_timeout(double seconds) {
    double prev = g_timeout > 0 ? g_timeout : timeout_from_env();
    if (seconds > 0) g_timeout = seconds;
    return prev;
}

#ifndef KILN_HAVE_MPI

/* ---- built without MPI ------------------------------------------------------------------ */

#define NO_MPI "kiln was built without MPI (install libopenmpi-dev and configure with meson -Dmpi=enabled)"

bool kiln_dist_available(void) { return false; }
kiln_status kiln_dist_init(int *argc, char ***argv) {
    (void)argc, (void)argv;
    return dfail(NULL, KILN_ERR_UNSUPPORTED, "kiln_dist_init: " NO_MPI);
}
kiln_status kiln_dist_finalize(void) { return KILN_OK; }
void kiln_dist_abort(int code) { (void)code; }
int kiln_dist_rank(void) { return 0; }
int kiln_dist_world_size(void) { return 1; }
int kiln_dist_local_rank(void) { return 0; }
int kiln_dist_local_size(void) { return 1; }
const char *kiln_dist_device(char *buf, size_t cap) {
    const char *e = getenv("KILN_DEVICE");
    if (!e || !*e || !buf || cap == 0) return NULL;
    snprintf(buf, cap, "%s", e);
    return buf;
}
kiln_status kiln_dist_allreduce_f64(double *v, int n, kiln_dist_op op) {
    (void)v, (void)n, (void)op;
    return dfail(NULL, KILN_ERR_UNSUPPORTED, "kiln_dist_allreduce_f64: " NO_MPI);
}
kiln_status kiln_dist_allreduce_f32(float *v, int64_t n, kiln_dist_op op) {
    (void)v, (void)n, (void)op;
    return dfail(NULL, KILN_ERR_UNSUPPORTED, "kiln_dist_allreduce_f32: " NO_MPI);
}
kiln_status kiln_dist_broadcast(void *data, size_t bytes, int root) {
    (void)data, (void)bytes, (void)root;
    return dfail(NULL, KILN_ERR_UNSUPPORTED, "kiln_dist_broadcast: " NO_MPI);
}
kiln_status kiln_dist_barrier(void) { return dfail(NULL, KILN_ERR_UNSUPPORTED, "kiln_dist_barrier: " NO_MPI); }
kiln_dist_model *kiln_dist_wrap(kiln_module *m, const kiln_dist_opts *opts) {
    (void)opts;
    dfail(m ? kiln_module_ctx(m) : NULL, KILN_ERR_UNSUPPORTED, "kiln_dist_wrap: " NO_MPI);
    return NULL;
}
kiln_status kiln_dist_sync_grads(kiln_dist_model *dm) {
    (void)dm;
    return dfail(NULL, KILN_ERR_UNSUPPORTED, "kiln_dist_sync_grads: " NO_MPI);
}
kiln_status kiln_dist_broadcast_model(kiln_dist_model *dm) {
    (void)dm;
    return dfail(NULL, KILN_ERR_UNSUPPORTED, "kiln_dist_broadcast_model: " NO_MPI);
}
void kiln_dist_model_free(kiln_dist_model *dm) { (void)dm; }
kiln_status kiln_dist_model_stats(const kiln_dist_model *dm, kiln_dist_stats *out) {
    (void)dm, (void)out;
    return dfail(NULL, KILN_ERR_UNSUPPORTED, "kiln_dist_model_stats: " NO_MPI);
}

#else

static double timeout_s(void) {
    if (g_timeout <= 0) g_timeout = timeout_from_env();
    return g_timeout;
}

static void nap_us(long us) {
    struct timespec ts = {0, us * 1000L};
    nanosleep(&ts, NULL);
}

#include <mpi.h>

/* ---- the world ---------------------------------------------------------------------------- */

static struct {
    bool inited;  /* kiln_dist_init succeeded */
    bool we_init; /* kiln called MPI_Init (and so calls MPI_Finalize) */
    bool broken;  /* a collective failed or timed out: the communicator is unusable */
    MPI_Comm comm;
    /* SyncBatchNorm's blocking sums, apart: the bucket all-reduces on comm start whenever
     * reads finish, so no other collective may share their order */
    MPI_Comm bn_comm;
    /* the roll call's point-to-point messages (roll_call), apart from every collective */
    MPI_Comm roll_comm;
    int rank, size, local_rank, local_size;
} W = {.size = 1, .local_size = 1};

static const char *mpi_err(int code, char *buf) {
    int len = 0;
    if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) snprintf(buf, MPI_MAX_ERROR_STRING, "MPI error %d", code);
    return buf;
}

bool kiln_dist_available(void) { return true; }
int kiln_dist_rank(void) { return W.rank; }
int kiln_dist_world_size(void) { return W.size; }
int kiln_dist_local_rank(void) { return W.local_rank; }
int kiln_dist_local_size(void) { return W.local_size; }

kiln_status kiln_dist_init(int *argc, char ***argv) {
    static const char *op = "kiln_dist_init";
    if (W.inited) return KILN_OK;
    char eb[MPI_MAX_ERROR_STRING];
    int flag = 0, e;
    MPI_Initialized(&flag);
    if (!flag) {
        int provided = 0;
        e = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
        if (e != MPI_SUCCESS)
            return dfail(NULL, KILN_ERR_UNSUPPORTED, "%s: MPI_Init_thread failed: %s", op, mpi_err(e, eb));
        W.we_init = true;
    }
    MPI_Comm local;
    e = MPI_Comm_dup(MPI_COMM_WORLD, &W.comm);
    if (e == MPI_SUCCESS) e = MPI_Comm_set_errhandler(W.comm, MPI_ERRORS_RETURN);
    if (e == MPI_SUCCESS) e = MPI_Comm_dup(W.comm, &W.bn_comm); /* inherits MPI_ERRORS_RETURN */
    if (e == MPI_SUCCESS) e = MPI_Comm_dup(W.comm, &W.roll_comm);
    if (e == MPI_SUCCESS) e = MPI_Comm_rank(W.comm, &W.rank);
    if (e == MPI_SUCCESS) e = MPI_Comm_size(W.comm, &W.size);
    if (e == MPI_SUCCESS) e = MPI_Comm_split_type(W.comm, MPI_COMM_TYPE_SHARED, W.rank, MPI_INFO_NULL, &local);
    if (e == MPI_SUCCESS) {
        MPI_Comm_rank(local, &W.local_rank);
        MPI_Comm_size(local, &W.local_size);
        MPI_Comm_free(&local);
    }
    if (e != MPI_SUCCESS) {
        W.rank = 0, W.size = 1, W.local_rank = 0, W.local_size = 1;
        return dfail(NULL, KILN_ERR_UNSUPPORTED, "%s: setting up kiln's communicator failed: %s", op, mpi_err(e, eb));
    }
    W.inited = true;
    W.broken = false;
    return KILN_OK;
}

kiln_status kiln_dist_finalize(void) {
    if (!W.inited) return KILN_OK;
    W.inited = false;
    /* After a failed collective the lost rank never answers: freeing the communicator or
     * MPI_Finalize would wait for it. The program exits and mpirun ends the job. */
    if (W.broken) return KILN_OK;
    MPI_Comm_free(&W.roll_comm);
    MPI_Comm_free(&W.bn_comm);
    MPI_Comm_free(&W.comm);
    if (W.we_init) {
        int e = MPI_Finalize();
        W.we_init = false;
        if (e != MPI_SUCCESS) {
            char eb[MPI_MAX_ERROR_STRING];
            return dfail(NULL, KILN_ERR_UNSUPPORTED, "kiln_dist_finalize: MPI_Finalize failed: %s", mpi_err(e, eb));
        }
    }
    W.rank = 0, W.size = 1, W.local_rank = 0, W.local_size = 1;
    return KILN_OK;
}

void kiln_dist_abort(int code) {
    int flag = 0, fin = 0;
    MPI_Initialized(&flag);
    MPI_Finalized(&fin);
    if (flag && !fin) MPI_Abort(MPI_COMM_WORLD, code);
}

const char *kiln_dist_device(char *buf, size_t cap) {
    if (!buf || cap == 0) return NULL;
    const char *e = getenv("KILN_DEVICE");
    if (e && *e) {
        snprintf(buf, cap, "%s", e);
        return buf;
    }
    int n = 0;
    if (kiln_devices(NULL, 0, &n) != KILN_OK || n <= 0) return NULL;
    kiln_device_info *all = calloc((size_t)n, sizeof *all);
    if (!all) return NULL;
    const char *r = NULL;
    if (kiln_devices(all, n, &n) == KILN_OK) {
        int gpus = 0;
        for (int i = 0; i < n; i++) gpus += all[i].type == KILN_DEVICE_GPU;
        if (gpus > 1) {
            int want = W.local_rank % gpus;
            for (int i = 0; i < n; i++)
                if (all[i].type == KILN_DEVICE_GPU && want-- == 0) {
                    snprintf(buf, cap, "%d:%d", all[i].platform_index, all[i].device_index);
                    r = buf;
                    break;
                }
        }
    }
    free(all);
    return r;
}

static kiln_status need_world(kiln_ctx *ctx, const char *op) {
    if (!W.inited) return dfail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: call kiln_dist_init first", op);
    if (W.broken)
        return dfail(ctx, KILN_ERR_UNSUPPORTED,
                     "%s: rank %d of %d: an earlier collective failed; the communicator is unusable", op, W.rank,
                     W.size);
    return KILN_OK;
}

/* ---- the roll call ------------------------------------------------------------------------
 *
 * A collective that times out (or fails) only tells a rank that someone did not take part.
 * To name who, the rank that gives up sends a small message, "rank r gives up at step s", to
 * every other rank on roll_comm (non-blocking) and listens for theirs during a grace period
 * (a quarter of the timeout, within [0.2, 10] s). Every kiln wait loop probes roll_comm
 * (every PROBE_MS): a rank that hears another give up knows its own collectives can no longer
 * complete (the one who gave up posts nothing more), so it gives up too and runs its own roll
 * call, answering the first one. The ranks never heard from by the end of the grace are the
 * ones that died or hang outside kiln's waits (in a computation, or stopped). Everything is
 * bounded: Isend, Irecv, Test and Cancel only, never a blocking call. */

#define ROLL_TAG 0x6b6c /* "kl" */
#define PROBE_MS 5.0

enum { ROLL_TIMEOUT = 1, ROLL_ERROR = 2, ROLL_JOINED = 3 };

static double roll_grace_s(void) {
    double g = 0.25 * timeout_s();
    return g < 0.2 ? 0.2 : g > 10 ? 10 : g;
}

/* Whether another rank's roll call has reached us (its rank in *from); never waits. */
static bool roll_heard(int *from) {
    int flag = 0;
    MPI_Status st;
    if (MPI_Iprobe(MPI_ANY_SOURCE, ROLL_TAG, W.roll_comm, &flag, &st) != MPI_SUCCESS || !flag) return false;
    *from = st.MPI_SOURCE;
    return true;
}

/* "r1, r2" of the ranks with mark[r] == want (other than this one) into buf; their count. */
static int rank_list(const bool *mark, bool want, char *buf, size_t cap) {
    int n = 0;
    size_t at = 0;
    buf[0] = '\0';
    for (int r = 0; r < W.size; r++) {
        if (r == W.rank || mark[r] != want) continue;
        if (at + 16 < cap) at += (size_t)snprintf(buf + at, cap - at, "%s%d", n ? ", " : "", r);
        n++;
    }
    return n;
}

/* Tells every other rank that this one gives up (why: ROLL_*, at step, -1 for none) and
 * listens for theirs; the verdict, naming the ranks never heard from, into out. */
static void roll_call(int why, int64_t step, char *out, size_t cap) {
    /* the message and the receive buffers stay valid after we return: a send to a dead rank
     * or a receive that could not be cancelled may still touch them (once per process: the
     * communicator is broken afterwards) */
    static int64_t msg[2];
    out[0] = '\0';
    if (W.size <= 1) return;
    msg[0] = why, msg[1] = step;
    const int n = W.size;
    MPI_Request *sreq = malloc(sizeof(MPI_Request) * (size_t)n), *rreq = malloc(sizeof(MPI_Request) * (size_t)n);
    int64_t *rbuf = malloc(sizeof(int64_t) * 2 * (size_t)n);
    bool *heard = calloc((size_t)n, sizeof *heard);
    if (!sreq || !rreq || !rbuf || !heard) {
        free(sreq), free(rreq), free(rbuf), free(heard);
        snprintf(out, cap, "; no roll call (out of host memory)");
        return;
    }
    for (int r = 0; r < n; r++) {
        sreq[r] = rreq[r] = MPI_REQUEST_NULL;
        if (r == W.rank) continue;
        if (MPI_Irecv(rbuf + 2 * r, 2, MPI_INT64_T, r, ROLL_TAG, W.roll_comm, &rreq[r]) != MPI_SUCCESS)
            rreq[r] = MPI_REQUEST_NULL;
        if (MPI_Isend(msg, 2, MPI_INT64_T, r, ROLL_TAG, W.roll_comm, &sreq[r]) != MPI_SUCCESS)
            sreq[r] = MPI_REQUEST_NULL;
    }
    const double grace = roll_grace_s(), t0 = kiln__now_ms();
    int missing = n - 1;
    while (missing > 0 && kiln__now_ms() - t0 < grace * 1e3) {
        for (int r = 0; r < n; r++) {
            int done = 0;
            if (rreq[r] != MPI_REQUEST_NULL && MPI_Test(&rreq[r], &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && done) {
                heard[r] = true;
                missing--;
            }
            if (sreq[r] != MPI_REQUEST_NULL) MPI_Test(&sreq[r], &done, MPI_STATUS_IGNORE);
        }
        if (missing > 0) nap_us(200);
    }
    bool leftover = false;
    for (int r = 0; r < n; r++) {
        if (rreq[r] != MPI_REQUEST_NULL) {
            MPI_Cancel(&rreq[r]);
            MPI_Request_free(&rreq[r]);
            leftover = true;
        }
        if (sreq[r] != MPI_REQUEST_NULL) MPI_Request_free(&sreq[r]);
    }
    char gone[120], alive[120];
    int nl = rank_list(heard, false, gone, sizeof gone);
    rank_list(heard, true, alive, sizeof alive);
    if (nl == 0)
        snprintf(out, cap,
                 "; roll call: every other rank answered within %g s, so none died: the ranks are waiting on "
                 "different collectives",
                 grace);
    else
        snprintf(out, cap, "; roll call: rank%s %s of %d did not answer within %g s: %s died or hang%s (%s%s)",
                 nl > 1 ? "s" : "", gone, n, grace, nl > 1 ? "they" : "it", nl > 1 ? "" : "s",
                 alive[0] ? "ranks that answered: " : "no other rank answered", alive);
    if (!leftover) free(rbuf);
    free(sreq), free(rreq), free(heard);
}

/* A collective of this rank failed: the communicator is broken. The message (fmt) gets the
 * roll call's verdict appended; why and step travel to the other ranks. */
static kiln_status lost(kiln_ctx *ctx, int why, int64_t step, const char *fmt, ...) KILN__PRINTF(4, 5);
static kiln_status lost(kiln_ctx *ctx, int why, int64_t step, const char *fmt, ...) {
    char msg[640], verdict[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    W.broken = true;
    roll_call(why, step, verdict, sizeof verdict);
    return dfail(ctx, KILN_ERR_UNSUPPORTED, "%s%s", msg, verdict);
}

/* For the wait loops: when another rank's roll call has arrived (probed every PROBE_MS),
 * this rank gives up on `what` too, naming who gave up first. *last_probe: the loop's. */
static bool roll_joined(kiln_ctx *ctx, const char *op, const char *what, int64_t step, double *last_probe,
                        kiln_status *s) {
    double now = kiln__now_ms();
    if (now - *last_probe < PROBE_MS) return false;
    *last_probe = now;
    int from = -1;
    if (!roll_heard(&from)) return false;
    char at[40] = "";
    if (step >= 0) snprintf(at, sizeof at, " (step %lld)", (long long)step);
    *s = lost(ctx, ROLL_JOINED, step,
              "%s: rank %d of %d: %s%s was abandoned: rank %d gave up on the collectives (its watchdog or an MPI "
              "error)",
              op, W.rank, W.size, what, at, from);
    return true;
}

/* The watchdog: polls *req until it completes, an MPI error (named) or the deadline. */
static kiln_status wait_req(kiln_ctx *ctx, const char *op, const char *what, MPI_Request *req) {
    const double limit = timeout_s(), t0 = kiln__now_ms();
    double last_probe = -1e300;
    char eb[MPI_MAX_ERROR_STRING];
    kiln_status s;
    for (long spin = 0;; spin++) {
        int done = 0, e = MPI_Test(req, &done, MPI_STATUS_IGNORE);
        if (e != MPI_SUCCESS)
            return lost(ctx, ROLL_ERROR, -1, "%s: rank %d of %d: %s failed: %s", op, W.rank, W.size, what,
                        mpi_err(e, eb));
        if (done) return KILN_OK;
        if (roll_joined(ctx, op, what, -1, &last_probe, &s)) return s;
        if (kiln__now_ms() - t0 > limit * 1e3)
            return lost(ctx, ROLL_TIMEOUT, -1,
                        "%s: rank %d of %d: %s did not complete within %g s (watchdog, KILN_DIST_TIMEOUT)", op, W.rank,
                        W.size, what, limit);
        if (spin > 64) nap_us(50);
    }
}

static MPI_Op mpi_op(kiln_dist_op op) {
    return op == KILN_DIST_MAX ? MPI_MAX : op == KILN_DIST_MIN ? MPI_MIN : MPI_SUM;
}

/* One collective posted with `post` (its error named), then waited for. */
#define POST_AND_WAIT(ctx, op, what, call)                                                                             \
    do {                                                                                                               \
        MPI_Request rq_;                                                                                               \
        char eb_[MPI_MAX_ERROR_STRING];                                                                                \
        int e_ = (call);                                                                                               \
        if (e_ != MPI_SUCCESS)                                                                                         \
            return lost(ctx, ROLL_ERROR, -1, "%s: rank %d of %d: posting %s failed: %s", op, W.rank, W.size, what,     \
                        mpi_err(e_, eb_));                                                                             \
        kiln_status s_ = wait_req(ctx, op, what, &rq_);                                                                \
        if (s_ != KILN_OK) return s_;                                                                                  \
    } while (0)

kiln_status kiln_dist_allreduce_f64(double *v, int n, kiln_dist_op op) {
    static const char *fn = "kiln_dist_allreduce_f64";
    kiln_status s = need_world(NULL, fn);
    if (s != KILN_OK) return s;
    if (!v || n < 0) return dfail(NULL, KILN_ERR_INVALID_ARGUMENT, "%s: values NULL or count %d < 0", fn, n);
    POST_AND_WAIT(NULL, fn, "the all-reduce", MPI_Iallreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, mpi_op(op), W.comm, &rq_));
    return KILN_OK;
}

kiln_status kiln_dist_allreduce_f32(float *v, int64_t n, kiln_dist_op op) {
    static const char *fn = "kiln_dist_allreduce_f32";
    kiln_status s = need_world(NULL, fn);
    if (s != KILN_OK) return s;
    if (!v || n < 0 || n > INT32_MAX)
        return dfail(NULL, KILN_ERR_INVALID_ARGUMENT, "%s: values NULL or count %lld outside [0, 2^31)", fn,
                     (long long)n);
    POST_AND_WAIT(NULL, fn, "the all-reduce",
                  MPI_Iallreduce(MPI_IN_PLACE, v, (int)n, MPI_FLOAT, mpi_op(op), W.comm, &rq_));
    return KILN_OK;
}

static kiln_status bcast(kiln_ctx *ctx, const char *fn, void *data, size_t bytes, int root) {
    const size_t chunk = (size_t)1 << 30;
    for (size_t at = 0; at < bytes; at += chunk) {
        int n = (int)(bytes - at < chunk ? bytes - at : chunk);
        POST_AND_WAIT(ctx, fn, "the broadcast", MPI_Ibcast((char *)data + at, n, MPI_BYTE, root, W.comm, &rq_));
    }
    return KILN_OK;
}

kiln_status kiln_dist_broadcast(void *data, size_t bytes, int root) {
    static const char *fn = "kiln_dist_broadcast";
    kiln_status s = need_world(NULL, fn);
    if (s != KILN_OK) return s;
    if ((!data && bytes) || root < 0 || root >= W.size)
        return dfail(NULL, KILN_ERR_INVALID_ARGUMENT, "%s: data NULL or root %d outside [0, %d)", fn, root, W.size);
    return bcast(NULL, fn, data, bytes, root);
}

kiln_status kiln_dist_barrier(void) {
    static const char *fn = "kiln_dist_barrier";
    kiln_status s = need_world(NULL, fn);
    if (s != KILN_OK) return s;
    POST_AND_WAIT(NULL, fn, "the barrier", MPI_Ibarrier(W.comm, &rq_));
    return KILN_OK;
}

/* ---- SyncBatchNorm ------------------------------------------------------------------------- */

/* t summed over the ranks (blocking, on bn_comm), as a new tensor of t's shape. */
static kiln_tensor *host_sum(kiln_ctx *ctx, const char *op, kiln_tensor *t) {
    int64_t n = kiln_tensor_numel(t);
    float *h = malloc(sizeof(float) * (size_t)(n ? n : 1));
    if (!h) return dfail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", op), NULL;
    kiln_tensor *out = NULL;
    MPI_Request rq;
    char eb[MPI_MAX_ERROR_STRING];
    if (kiln_to_host(t, h, sizeof(float) * (size_t)n) == KILN_OK) {
        int e = MPI_Iallreduce(MPI_IN_PLACE, h, (int)n, MPI_FLOAT, MPI_SUM, W.bn_comm, &rq);
        if (e != MPI_SUCCESS) {
            W.broken = true;
            dfail(ctx, KILN_ERR_UNSUPPORTED, "%s: rank %d of %d: posting the all-reduce failed: %s", op, W.rank, W.size,
                  mpi_err(e, eb));
        } else if (wait_req(ctx, op, "the all-reduce of the batch statistics", &rq) == KILN_OK) {
            out = kiln_from_host(ctx, h, KILN_F32, t->ndim, t->shape);
        }
    }
    free(h);
    return out;
}

/* The sum over the ranks is linear: its backward sums the gradients over the ranks. */
static kiln_status sync_sum_backward(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout) {
    kiln_tensor *g = host_sum(ctx, "SyncBatchNorm (backward)", gout);
    return g ? kiln__grad_add(ctx, n, 0, g, true) : ctx->err;
}

/* batch norm's sync_sum hook (kiln__bn_set_sync); user is the context. */
static kiln_tensor *sync_sum(void *user, kiln_tensor *t) {
    kiln_ctx *ctx = user;
    if (!t || need_world(ctx, "SyncBatchNorm") != KILN_OK) return NULL;
    bool want = kiln__grad_wanted(ctx, 1, &t);
    kiln_tensor *out = host_sum(ctx, "SyncBatchNorm (forward)", t);
    if (out && want && !kiln__node_new(ctx, "SyncBatchNorm", out, 1, &t, sync_sum_backward)) {
        kiln_tensor_free(out);
        return NULL;
    }
    return out;
}

/* Every batch norm module of m gets fn (NULL: none); returns how many. */
static int set_sync_bn(kiln_module *m, kiln_tensor *(*fn)(void *, kiln_tensor *), void *user) {
    int n = kiln__bn_set_sync(m, fn, user);
    for (int i = 0; i < kiln_module_num_children(m); i++) n += set_sync_bn(kiln_module_child(m, i), fn, user);
    return n;
}

/* ---- wrapped models ------------------------------------------------------------------------ */

typedef struct dparam {
    kiln_tensor *t;
    int bucket;
    int64_t off, numel; /* elements: where its gradient sits in the bucket's host buffer */
    bool ready;         /* its read is enqueued (or its slot zeroed) this step */
    cl_event ev;        /* the read, then the write back */
} dparam;

enum { B_IDLE, B_POSTED, B_DONE };

typedef struct dbucket {
    int first, count; /* params [first, first + count) of dm->p */
    int64_t numel;
    float *host;
    int nready, state;
    MPI_Request hreq, req;
    int64_t hdr[8]; /* model, step, bucket, numel and their negatives, reduced with MAX */
} dbucket;

typedef struct pindex {
    const kiln_tensor *t;
    int i;
} pindex;

struct kiln_dist_model {
    kiln_ctx *ctx;
    kiln_module *m;
    kiln_dist_opts o;
    int np, nb;
    dparam *p; /* reverse registration order */
    pindex *by_ptr;
    dbucket *b;
    int next_post; /* the next bucket to post */
    int64_t id;    /* 1 + the wraps before it in this process: the same on every rank */
    /* the model's own communicator: its buckets start whenever their reads finish, which
     * differs between ranks, so no other collective (another model's) may share it */
    MPI_Comm comm;
    bool has_comm;
    kiln_dist_model *next; /* the live wrapped models: a sync moves them all on */
    bool in_sync;          /* false while the backward's hook drives progress */
    bool twice;            /* a second backward reported a gradient before the sync */
    int64_t step;          /* kiln_dist_sync_grads calls so far */
    kiln_dist_stats st;
};

static kiln_dist_model *g_models; /* every live wrapped model of the process */

static int cmp_pindex(const void *a, const void *b) {
    uintptr_t x = (uintptr_t)((const pindex *)a)->t, y = (uintptr_t)((const pindex *)b)->t;
    return x < y ? -1 : x > y;
}

static void reset_step(kiln_dist_model *dm) {
    for (int i = 0; i < dm->np; i++) {
        kiln__event_release(dm->p[i].ev);
        dm->p[i].ev = NULL;
        dm->p[i].ready = false;
    }
    for (int k = 0; k < dm->nb; k++) {
        dm->b[k].nready = 0;
        dm->b[k].state = B_IDLE;
    }
    dm->next_post = 0;
}

static kiln_status post_bucket(kiln_dist_model *dm, int k) {
    static const char *fn = "kiln_dist_sync_grads";
    dbucket *b = &dm->b[k];
    char eb[MPI_MAX_ERROR_STRING];
    int64_t v[4] = {dm->id, dm->step, k, b->numel};
    for (int j = 0; j < 4; j++) b->hdr[j] = v[j], b->hdr[4 + j] = -v[j];
    int e = MPI_Iallreduce(MPI_IN_PLACE, b->hdr, 8, MPI_INT64_T, MPI_MAX, dm->comm, &b->hreq);
    if (e == MPI_SUCCESS)
        e = MPI_Iallreduce(MPI_IN_PLACE, b->host, (int)b->numel, MPI_FLOAT, MPI_SUM, dm->comm, &b->req);
    if (e != MPI_SUCCESS)
        return lost(dm->ctx, ROLL_ERROR, dm->step,
                    "%s: rank %d of %d: posting the all-reduce of bucket %d/%d failed: %s", fn, W.rank, W.size, k,
                    dm->nb, mpi_err(e, eb));
    b->state = B_POSTED;
    if (!dm->in_sync) dm->st.buckets_early++;
    return KILN_OK;
}

/* Posts the buckets whose reads are done, in order, and lets MPI progress the posted ones.
 * Never waits. */
static kiln_status progress(kiln_dist_model *dm) {
    static const char *fn = "kiln_dist_sync_grads";
    while (dm->next_post < dm->nb) {
        dbucket *b = &dm->b[dm->next_post];
        if (b->nready < b->count) break;
        bool pending = false;
        for (int i = b->first; i < b->first + b->count; i++) {
            if (!dm->p[i].ev) continue;
            int r = kiln__event_poll(dm->ctx, fn, dm->p[i].ev);
            if (r < 0) return (kiln_status)r;
            if (r == 0) {
                pending = true;
                break;
            }
            kiln__event_release(dm->p[i].ev);
            dm->p[i].ev = NULL;
        }
        if (pending) break;
        kiln_status s = post_bucket(dm, dm->next_post);
        if (s != KILN_OK) return s;
        dm->next_post++;
    }
    /* Open MPI moves non-blocking collectives on inside MPI calls: one test of the oldest
     * posted request progresses them all */
    for (int k = 0; k < dm->next_post; k++) {
        if (dm->b[k].state != B_POSTED) continue;
        int done = 0;
        char eb[MPI_MAX_ERROR_STRING];
        int e = MPI_Test(&dm->b[k].hreq, &done, MPI_STATUS_IGNORE);
        if (e != MPI_SUCCESS) {
            W.broken = true;
            return dfail(dm->ctx, KILN_ERR_UNSUPPORTED, "%s: rank %d of %d: the all-reduce of bucket %d failed: %s", fn,
                         W.rank, W.size, k, mpi_err(e, eb));
        }
        break;
    }
    return KILN_OK;
}

/* autograd's grad-ready hook: reads the gradient back without waiting. */
static void on_grad_ready(void *user, kiln_tensor *leaf) {
    kiln_dist_model *dm = user;
    if (dm->ctx->err != KILN_OK || W.broken) return;
    pindex key = {leaf, 0};
    pindex *hit = bsearch(&key, dm->by_ptr, (size_t)dm->np, sizeof *hit, cmp_pindex);
    if (!hit) return; /* a leaf that is no parameter of the model (an input) */
    dparam *p = &dm->p[hit->i];
    if (p->ready) {
        dm->twice = true; /* its first value is on its way already: the sync says so */
        return;
    }
    kiln_tensor *g = leaf->grad;
    if (!kiln__is_contiguous(g)) return; /* the sync reads it with a copy */
    dbucket *b = &dm->b[p->bucket];
    if (kiln__read_async(dm->ctx, "kiln_backward (kiln_dist)", g->st->mem, (size_t)g->offset * sizeof(float),
                         (size_t)p->numel * sizeof(float), b->host + p->off, &p->ev) != KILN_OK)
        return;
    p->ready = true;
    b->nready++;
    progress(dm); /* an error is on the context: the backward stops at its next node */
}

static kiln_status check_header(kiln_dist_model *dm, int k) {
    static const char *fn = "kiln_dist_sync_grads";
    dbucket *b = &dm->b[k];
    bool same = true;
    for (int j = 0; j < 4; j++) same = same && b->hdr[j] == -b->hdr[4 + j];
    if (same) return KILN_OK;
    /* every rank sees the same reduced header, so every rank gathers: name who differs */
    int64_t mine[4] = {dm->id, dm->step, k, b->numel}, *all = malloc(sizeof(int64_t) * 4 * (size_t)W.size);
    if (!all) return dfail(dm->ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", fn);
    MPI_Request rq;
    int e = MPI_Iallgather(mine, 4, MPI_INT64_T, all, 4, MPI_INT64_T, dm->comm, &rq);
    kiln_status s = e == MPI_SUCCESS ? wait_req(dm->ctx, fn, "gathering the collective headers", &rq)
                                     : dfail(dm->ctx, KILN_ERR_UNSUPPORTED, "%s: posting the gather failed", fn);
    char list[512] = "";
    if (s == KILN_OK) {
        size_t at = 0;
        for (int r = 0; r < W.size && at < sizeof list - 80; r++)
            at += (size_t)snprintf(list + at, sizeof list - at,
                                   "%srank %d: model %lld, step %lld, bucket %lld of %lld values", r ? "; " : "", r,
                                   (long long)all[4 * r], (long long)all[4 * r + 1], (long long)all[4 * r + 2],
                                   (long long)all[4 * r + 3]);
    }
    free(all);
    /* every rank stopped at this bucket: only buckets posted after it are left unmatched */
    if (s != KILN_OK || k + 1 < dm->next_post) W.broken = true;
    return dfail(dm->ctx, KILN_ERR_INVALID_ARGUMENT,
                 "%s: rank %d of %d: collective order mismatch: the ranks are not reducing the same bucket (%s); every "
                 "rank must run the same steps on the same model",
                 fn, W.rank, W.size, list[0] ? list : "the ranks could not be gathered");
}

kiln_status kiln_dist_sync_grads(kiln_dist_model *dm) {
    static const char *fn = "kiln_dist_sync_grads";
    if (!dm) return dfail(NULL, KILN_ERR_NULL, "%s: model is NULL", fn);
    kiln_ctx *ctx = dm->ctx;
    if (ctx->err != KILN_OK) return ctx->err;
    kiln_status s = need_world(ctx, fn);
    if (s != KILN_OK) return s;
    const double t0 = kiln__now_ms();
    dm->in_sync = true;
    /* what the backward did not report: read now, or a zero gradient */
    for (int i = 0; i < dm->np && s == KILN_OK; i++) {
        dparam *p = &dm->p[i];
        if (p->ready) continue;
        dbucket *b = &dm->b[p->bucket];
        kiln_tensor *g = p->t->grad;
        if (!g) {
            memset(b->host + p->off, 0, sizeof(float) * (size_t)p->numel);
        } else {
            kiln_tensor *c = kiln__is_contiguous(g) ? g : kiln__copy_contiguous(ctx, fn, g);
            if (!c) {
                s = ctx->err;
                break;
            }
            s = kiln__read_async(ctx, fn, c->st->mem, (size_t)c->offset * sizeof(float),
                                 (size_t)p->numel * sizeof(float), b->host + p->off, &p->ev);
            if (c != g) kiln_tensor_free(c); /* the queue keeps the buffer until the read ran */
        }
        p->ready = true;
        b->nready++;
    }
    const double limit = timeout_s();
    double last = kiln__now_ms(), all_posted = -1, last_probe = -1e300;
    int finished = 0;
    for (long spin = 0; s == KILN_OK && finished < dm->nb; spin++) {
        s = progress(dm);
        if (s != KILN_OK) break;
        /* another wrapped model's buckets may be what a peer waits for (the ranks sync them
         * in any order): they move on too; their errors surface in their own sync */
        for (kiln_dist_model *o = g_models; o; o = o->next)
            if (o != dm && o->ctx->err == KILN_OK) progress(o);
        if (all_posted < 0 && dm->next_post == dm->nb) all_posted = kiln__now_ms();
        bool moved = false;
        for (int k = 0; k < dm->next_post && s == KILN_OK; k++) {
            dbucket *b = &dm->b[k];
            if (b->state != B_POSTED) continue;
            int hd = 0, dd = 0;
            char eb[MPI_MAX_ERROR_STRING];
            int e = MPI_Test(&b->hreq, &hd, MPI_STATUS_IGNORE);
            if (e == MPI_SUCCESS && hd) e = MPI_Test(&b->req, &dd, MPI_STATUS_IGNORE);
            if (e != MPI_SUCCESS) {
                s = lost(ctx, ROLL_ERROR, dm->step,
                         "%s: rank %d of %d: the all-reduce of bucket %d/%d (step %lld) failed: %s", fn, W.rank, W.size,
                         k, dm->nb, (long long)dm->step, mpi_err(e, eb));
                break;
            }
            if (!dd) continue;
            s = check_header(dm, k);
            if (s != KILN_OK) break;
            const float inv = 1.0f / (float)W.size;
            for (int64_t j = 0; j < b->numel; j++) b->host[j] *= inv;
            for (int i = b->first; i < b->first + b->count && s == KILN_OK; i++) {
                dparam *p = &dm->p[i];
                if (!p->t->grad) {
                    kiln_tensor *z = kiln__tensor_new(ctx, fn, KILN_F32, p->t->ndim, p->t->shape);
                    if (!z) {
                        s = ctx->err;
                        break;
                    }
                    z->scope = 0; /* as autograd's slots: the gradient outlives the step */
                    p->t->grad = z;
                } else if (!kiln__is_contiguous(p->t->grad)) {
                    s = dfail(ctx, KILN_ERR_UNSUPPORTED, "%s: the gradient of a parameter of shape [%lld...] is a view",
                              fn, (long long)p->t->shape[0]);
                    break;
                }
                kiln_tensor *g = p->t->grad;
                s = kiln__write_async(ctx, fn, g->st->mem, (size_t)g->offset * sizeof(float),
                                      (size_t)p->numel * sizeof(float), b->host + p->off, &p->ev);
            }
            b->state = B_DONE;
            finished++;
            moved = true;
        }
        if (s != KILN_OK) break;
        double now = kiln__now_ms();
        if (moved) last = now;
        if (finished < dm->nb && (now - last_probe >= PROBE_MS || now - last > limit * 1e3)) {
            int k = 0;
            while (k < dm->nb && dm->b[k].state == B_DONE) k++;
            char what[96];
            snprintf(what, sizeof what, "the all-reduce of bucket %d/%d", k, dm->nb);
            if (roll_joined(ctx, fn, what, dm->step, &last_probe, &s)) break;
            if (now - last > limit * 1e3) {
                s = lost(ctx, ROLL_TIMEOUT, dm->step,
                         "%s: rank %d of %d: %s (step %lld) %s within %g s (watchdog, KILN_DIST_TIMEOUT)", fn, W.rank,
                         W.size, what, (long long)dm->step,
                         dm->b[k].state == B_IDLE ? "could not start (its gradients were not read back)"
                                                  : "did not complete",
                         limit);
                break;
            }
        }
        if (!moved && spin > 64) nap_us(50);
    }
    /* the writes back read the host buffers: done before they are reused or freed */
    for (int i = 0; i < dm->np && s == KILN_OK; i++) {
        while (dm->p[i].ev) {
            int r = kiln__event_poll(ctx, fn, dm->p[i].ev);
            if (r < 0) {
                s = (kiln_status)r;
                break;
            }
            if (r == 1) {
                kiln__event_release(dm->p[i].ev);
                dm->p[i].ev = NULL;
            } else {
                nap_us(20);
            }
        }
    }
    dm->in_sync = false;
    const double t1 = kiln__now_ms(), waited = t1 - t0, comm = all_posted < 0 ? 0 : t1 - all_posted;
    if (s == KILN_OK) {
        dm->st.steps++;
        dm->st.last_wait_ms = waited;
        dm->st.wait_ms += waited;
        dm->st.last_comm_wait_ms = comm;
        dm->st.comm_wait_ms += comm;
        dm->step++;
        reset_step(dm);
        if (dm->twice) /* the step itself completed: every bucket is back to idle */
            s = dfail(ctx, KILN_ERR_INVALID_ARGUMENT,
                      "%s: rank %d of %d: step %lld: a second backward ran before this sync; only the first one's "
                      "gradients were averaged (call kiln_dist_sync_grads after every backward)",
                      fn, W.rank, W.size, (long long)dm->step - 1);
    }
    dm->twice = false;
    return s;
}

/* Rank 0's parameters and buffers to every rank, in one broadcast. */
kiln_status kiln_dist_broadcast_model(kiln_dist_model *dm) {
    static const char *fn = "kiln_dist_broadcast_model";
    if (!dm) return dfail(NULL, KILN_ERR_NULL, "%s: model is NULL", fn);
    kiln_ctx *ctx = dm->ctx;
    kiln_status s = need_world(ctx, fn);
    if (s != KILN_OK) return s;
    int n = kiln_module_state(dm->m, NULL, 0);
    kiln_named_tensor *nt = calloc((size_t)(n > 0 ? n : 1), sizeof *nt);
    if (!nt) return dfail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", fn);
    kiln_module_state(dm->m, nt, n);
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += (size_t)kiln_tensor_numel(nt[i].tensor) * kiln_dtype_size(kiln_tensor_dtype(nt[i].tensor));
    char *buf = malloc(total ? total : 1);
    if (!buf) {
        free(nt);
        return dfail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory for %zu bytes of state", fn, total);
    }
    size_t at = 0;
    for (int i = 0; i < n && s == KILN_OK; i++) {
        size_t bytes = (size_t)kiln_tensor_numel(nt[i].tensor) * kiln_dtype_size(kiln_tensor_dtype(nt[i].tensor));
        if (W.rank == 0) s = kiln_to_host(nt[i].tensor, buf + at, bytes);
        at += bytes;
    }
    if (s == KILN_OK) s = bcast(ctx, fn, buf, total, 0);
    at = 0;
    for (int i = 0; i < n && s == KILN_OK; i++) {
        size_t bytes = (size_t)kiln_tensor_numel(nt[i].tensor) * kiln_dtype_size(kiln_tensor_dtype(nt[i].tensor));
        if (W.rank != 0) s = kiln_copy_from_host(nt[i].tensor, buf + at, bytes);
        at += bytes;
    }
    free(buf);
    free(nt);
    return s;
}

void kiln_dist_model_free(kiln_dist_model *dm) {
    if (!dm) return;
    if (dm->ctx && dm->ctx->grad_ready_user == dm) kiln__set_grad_ready(dm->ctx, NULL, NULL);
    if (dm->m && dm->o.sync_batchnorm) set_sync_bn(dm->m, NULL, NULL);
    /* reads or writes still queued target the host buffers: let them finish first */
    bool queued = false;
    for (int i = 0; i < dm->np; i++) queued = queued || dm->p[i].ev;
    if (queued && dm->ctx) kiln_sync(dm->ctx);
    for (int i = 0; i < dm->np; i++) kiln__event_release(dm->p[i].ev);
    for (int k = 0; k < dm->nb; k++) free(dm->b[k].host);
    for (kiln_dist_model **pp = &g_models; *pp; pp = &(*pp)->next)
        if (*pp == dm) {
            *pp = dm->next;
            break;
        }
    if (dm->has_comm && !W.broken) MPI_Comm_free(&dm->comm);
    free(dm->b);
    free(dm->p);
    free(dm->by_ptr);
    free(dm);
}

/* Every rank must have planned the same buckets: their sizes, hashed with the parameters'
 * shapes, are gathered and compared with rank 0's. */
static kiln_status check_plan(kiln_dist_model *dm) {
    static const char *fn = "kiln_dist_wrap";
    uint64_t h = 1469598103934665603ULL;
#define MIX(v) (h = (h ^ (uint64_t)(v)) * 1099511628211ULL)
    for (int i = 0; i < dm->np; i++) {
        MIX(dm->p[i].bucket);
        MIX(dm->p[i].t->ndim);
        for (int d = 0; d < dm->p[i].t->ndim; d++) MIX(dm->p[i].t->shape[d]);
    }
#undef MIX
    int64_t mine[3] = {dm->np, dm->nb, (int64_t)(h >> 1)};
    int64_t *all = malloc(sizeof(int64_t) * 3 * (size_t)W.size);
    if (!all) return dfail(dm->ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", fn);
    MPI_Request rq;
    char eb[MPI_MAX_ERROR_STRING];
    int e = MPI_Iallgather(mine, 3, MPI_INT64_T, all, 3, MPI_INT64_T, dm->comm, &rq);
    if (e != MPI_SUCCESS) {
        free(all);
        W.broken = true;
        return dfail(dm->ctx, KILN_ERR_UNSUPPORTED, "%s: rank %d of %d: gathering the bucket plans failed: %s", fn,
                     W.rank, W.size, mpi_err(e, eb));
    }
    kiln_status s = wait_req(dm->ctx, fn, "gathering the bucket plans", &rq);
    if (s == KILN_OK) {
        char list[256] = "";
        size_t at = 0;
        for (int r = 1; r < W.size && at < sizeof list - 32; r++)
            if (memcmp(all + 3 * r, all, sizeof(int64_t) * 3) != 0)
                at += (size_t)snprintf(list + at, sizeof list - at, "%s%d (%lld parameters, %lld buckets%s)",
                                       at ? ", " : "", r, (long long)all[3 * r], (long long)all[3 * r + 1],
                                       all[3 * r] == all[0] && all[3 * r + 1] == all[1] ? ", other shapes" : "");
        if (at)
            s = dfail(dm->ctx, KILN_ERR_INVALID_ARGUMENT,
                      "%s: rank %d of %d: the ranks wrapped different models: rank 0 has %lld trainable parameters in "
                      "%lld buckets, and these ranks differ from it: %s",
                      fn, W.rank, W.size, (long long)all[0], (long long)all[1], list);
    }
    free(all);
    return s;
}

kiln_dist_model *kiln_dist_wrap(kiln_module *m, const kiln_dist_opts *opts) {
    static const char *fn = "kiln_dist_wrap";
    if (!m) {
        dfail(NULL, KILN_ERR_NULL, "%s: module is NULL", fn);
        return NULL;
    }
    static int64_t wraps = 0;
    const int64_t id = ++wraps; /* counted on every rank, also when the wrap fails */
    kiln_ctx *ctx = kiln_module_ctx(m);
    if (need_world(ctx, fn) != KILN_OK) return NULL;
    if (ctx->grad_ready) {
        dfail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: the context already has a wrapped model (one per context)", fn);
        return NULL;
    }
    kiln_dist_opts o = opts ? *opts : (kiln_dist_opts){0};
    if (o.bucket_bytes == 0) o.bucket_bytes = DEFAULT_BUCKET_BYTES;
    kiln_dist_model *dm = calloc(1, sizeof *dm);
    if (dm) {
        char eb[MPI_MAX_ERROR_STRING];
        int e = MPI_Comm_dup(W.comm, &dm->comm); /* collective: before anything that fails on one rank only */
        if (e != MPI_SUCCESS) {
            free(dm);
            W.broken = true;
            dfail(ctx, KILN_ERR_UNSUPPORTED, "%s: rank %d of %d: duplicating the communicator failed: %s", fn, W.rank,
                  W.size, mpi_err(e, eb));
            return NULL;
        }
        dm->has_comm = true;
    }
    int n = kiln_module_parameters(m, NULL, 0);
    kiln_tensor **all = calloc((size_t)(n > 0 ? n : 1), sizeof *all);
    if (!dm || !all) goto oom;
    dm->ctx = ctx;
    dm->m = m;
    dm->o = o;
    dm->id = id;
    kiln_module_parameters(m, all, n);
    dm->p = calloc((size_t)(n > 0 ? n : 1), sizeof *dm->p);
    dm->by_ptr = calloc((size_t)(n > 0 ? n : 1), sizeof *dm->by_ptr);
    dm->b = calloc((size_t)(n > 0 ? n : 1), sizeof *dm->b);
    if (!dm->p || !dm->by_ptr || !dm->b) goto oom;
    /* reverse registration order: the backward finishes the last layers first */
    for (int i = n - 1; i >= 0; i--) {
        kiln_tensor *t = all[i];
        if (!kiln_tensor_requires_grad(t)) continue; /* frozen */
        if (kiln_tensor_dtype(t) != KILN_F32) continue;
        dparam *p = &dm->p[dm->np];
        p->t = t;
        p->numel = kiln_tensor_numel(t);
        dbucket *b = dm->nb ? &dm->b[dm->nb - 1] : NULL;
        size_t bytes = (size_t)p->numel * sizeof(float);
        if (!b || (b->count > 0 && (size_t)(b->numel * (int64_t)sizeof(float)) + bytes > o.bucket_bytes) ||
            b->numel + p->numel > INT32_MAX) {
            b = &dm->b[dm->nb++];
            b->first = dm->np;
        }
        p->bucket = (int)(b - dm->b);
        p->off = b->numel;
        b->numel += p->numel;
        b->count++;
        dm->by_ptr[dm->np] = (pindex){t, dm->np};
        dm->np++;
    }
    free(all);
    all = NULL;
    qsort(dm->by_ptr, (size_t)dm->np, sizeof *dm->by_ptr, cmp_pindex);
    for (int k = 0; k < dm->nb; k++) {
        dm->b[k].host = malloc(sizeof(float) * (size_t)(dm->b[k].numel ? dm->b[k].numel : 1));
        if (!dm->b[k].host) goto oom;
        dm->st.params += dm->b[k].numel;
    }
    dm->st.buckets = dm->nb;
    dm->st.bytes_per_step = (uint64_t)dm->st.params * sizeof(float);
    reset_step(dm);
    if (check_plan(dm) != KILN_OK || (!o.no_broadcast && kiln_dist_broadcast_model(dm) != KILN_OK)) {
        kiln_dist_model_free(dm);
        return NULL;
    }
    kiln__set_grad_ready(ctx, on_grad_ready, dm);
    dm->next = g_models;
    g_models = dm;
    if (o.sync_batchnorm) dm->st.sync_batchnorms = set_sync_bn(m, sync_sum, ctx);
    return dm;
oom:
    free(all);
    kiln_dist_model_free(dm);
    dfail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory for %d parameters", fn, n);
    return NULL;
}

kiln_status kiln_dist_model_stats(const kiln_dist_model *dm, kiln_dist_stats *out) {
    if (!dm || !out) return dfail(NULL, KILN_ERR_NULL, "kiln_dist_model_stats: model or out is NULL");
    *out = dm->st;
    return KILN_OK;
}

#endif

#ifdef KILN_HAVE_MPI
void kiln__dist_test_skip_step(kiln_dist_model *dm) {
    if (dm) dm->step++;
}
#else
void kiln__dist_test_skip_step(kiln_dist_model *dm) { (void)dm; }
#endif

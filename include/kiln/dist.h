/* kiln/dist.h - data-parallel training over MPI, one process per device, on one machine
 * or many (as PyTorch's DistributedDataParallel):
 *
 *     kiln_dist_init(&argc, &argv);                        // MPI_Init unless done already
 *     char spec[64];
 *     kiln_open(&ctx, kiln_dist_device(spec, sizeof spec));   // KILN_DEVICE or local rank's GPU
 *     kiln_module *net = ...;
 *     kiln_dist_model *dm = kiln_dist_wrap(net, NULL);     // rank 0's weights everywhere
 *     lo.shard_rank = kiln_dist_rank(), lo.shard_count = kiln_dist_world_size();  // kiln/data.h
 *     for (each batch of this rank's shard) {
 *         kiln_optim_zero_grad(opt);
 *         kiln_backward(loss);          // buckets start their all-reduce as their grads are ready
 *         kiln_dist_sync_grads(dm);     // waits: every rank now holds the mean gradient
 *         kiln_optim_step(opt);
 *     }
 *     kiln_dist_model_free(dm);  kiln_close(ctx);  kiln_dist_finalize();
 *
 *     mpirun -np 2 ./train      (POCL_CPU_MAX_CU_COUNT=1 per rank when ranks share a CPU)
 *
 * Gradients. kiln_dist_wrap groups the trainable parameters (requires_grad at wrap time:
 * frozen ones are skipped) into buckets of at most bucket_bytes in reverse registration
 * order, the order the backward finishes them. While kiln_backward runs, each gradient that
 * is final is read back to the host without blocking the queue; once a bucket's reads are
 * done its sum starts (MPI_Iallreduce), overlapping the rest of the backward.
 * kiln_dist_sync_grads waits for every bucket, divides by the world size and writes the
 * means back into each parameter's .grad: a parameter the backward did not reach counts as
 * a zero gradient. One backward per sync (no accumulation across backwards).
 *
 * Agreement. Every rank must wrap the same model (kiln_dist_wrap compares the bucket plans
 * and names the ranks that differ) and run the same number of steps (the distributed
 * sampler pads shards to equal lengths). Each wrapped model has a communicator of its own (its buckets
 * start whenever their reads finish, so no other collective may share their order), and a
 * sync also moves the other wrapped models' buckets on: several models (on several
 * contexts) may be synchronised in any order. A small header travels with each bucket
 * (model: the wraps' order, step, bucket, size); ranks that disagree fail with every rank's
 * header named instead of mixing steps.
 *
 * Failure. kiln's communicator returns MPI errors instead of aborting, and every wait polls
 * with a deadline (timeout_s, default KILN_DIST_TIMEOUT or 300 s): a rank that died, hung
 * or stopped issuing collectives makes the others fail with a message naming the
 * collective, never an indefinite hang. To name the lost rank, a rank whose wait fails holds
 * a roll call on a communicator of its own: it tells every other rank, without blocking,
 * that it gives up, and listens for theirs for a quarter of the timeout (0.2 to 10 s); every
 * kiln wait probes for such messages, and a rank that hears one gives up too and answers.
 * The message names the ranks never heard from ("roll call: rank 2 of 3 did not answer
 * within 0.75 s: it died or hangs"), or says that every rank answered (none died: they wait
 * on different collectives). After such an error the communicator is broken:
 * kiln_dist_finalize then skips MPI_Finalize (which would wait for the lost rank), the
 * program exits non-zero, and mpirun ends the job. A program may call kiln_dist_abort to
 * end every rank at once.
 *
 * Without MPI (meson -Dmpi=disabled or no libopenmpi-dev) the functions exist: the queries
 * describe a world of one process and everything else fails with KILN_ERR_UNSUPPORTED
 * ("kiln was built without MPI").
 *
 * Threads: call these from one thread (the one that runs the backward).
 */
#ifndef KILN_DIST_H
#define KILN_DIST_H

#include "common.h"
#include "module.h"

#ifdef __cplusplus
extern "C" {
#endif

/* True when kiln was built with MPI. */
KILN_API bool kiln_dist_available(void);
/* Joins the MPI world: MPI_Init_thread (funneled) unless the program initialised MPI
 * already (then kiln leaves MPI_Finalize to it), kiln's own communicator (a duplicate of
 * MPI_COMM_WORLD returning errors), the rank, the world size and the local rank (the rank
 * among the processes of this machine, MPI_Comm_split_type). argc/argv may be NULL. A
 * second call is a no-op. Sets kiln_last_error() on failure. */
KILN_API kiln_status kiln_dist_init(int *argc, char ***argv);
/* Frees kiln's communicator and calls MPI_Finalize when kiln_dist_init called MPI_Init,
 * unless a collective failed (see Failure above). No-op without kiln_dist_init. */
KILN_API kiln_status kiln_dist_finalize(void);
/* Ends every rank of the job (MPI_Abort with code): for programs that want the job down at
 * once after an error. Returns only when MPI is not initialised. */
KILN_API void kiln_dist_abort(int code);
/* This process's rank, the number of processes, the rank among this machine's processes and
 * their number; 0, 1, 0, 1 before kiln_dist_init (and without MPI). */
KILN_API int kiln_dist_rank(void);
KILN_API int kiln_dist_world_size(void);
KILN_API int kiln_dist_local_rank(void);
KILN_API int kiln_dist_local_size(void);
/* The device spec this rank should open (kiln_open): KILN_DEVICE when set; else, when the
 * machine has several GPUs, "P:D" of GPU number (local rank mod GPUs); else NULL (the
 * default device). Written into buf; returns buf or NULL. */
KILN_API const char *kiln_dist_device(char *buf, size_t cap);
/* The deadline of each wait in seconds (> 0); returns the previous one. The default is
 * KILN_DIST_TIMEOUT from the environment, or 300. */
KILN_API double kiln_dist_set_timeout(double seconds);

/* ---- collectives on host values (every rank calls them in the same order) --------------- */

typedef enum kiln_dist_op { KILN_DIST_SUM = 0, KILN_DIST_MAX = 1, KILN_DIST_MIN = 2 } kiln_dist_op;
/* v[0..n) becomes the reduction of every rank's v, the same on every rank. */
KILN_API kiln_status kiln_dist_allreduce_f64(double *v, int n, kiln_dist_op op);
KILN_API kiln_status kiln_dist_allreduce_f32(float *v, int64_t n, kiln_dist_op op);
/* bytes of data from rank root to every rank. */
KILN_API kiln_status kiln_dist_broadcast(void *data, size_t bytes, int root);
KILN_API kiln_status kiln_dist_barrier(void);

/* ---- data-parallel models -------------------------------------------------------------- */

typedef struct kiln_dist_model kiln_dist_model;

typedef struct kiln_dist_opts {
    size_t bucket_bytes; /* gradient bytes per bucket (torch's bucket_cap_mb); 0: 25 MiB */
    bool no_broadcast;   /* skip the broadcast of rank 0's parameters and buffers at wrap */
    bool sync_batchnorm; /* SyncBatchNorm: in training, every batch norm layer of the model
                            normalises with the mean and variance of all ranks' batches
                            together (summed across ranks in the forward and, for the
                            gradients, in the backward) and keeps those as its running
                            statistics, as torch.nn.SyncBatchNorm; eval is unchanged.
                            Off: per-rank statistics (DDP's default) */
} kiln_dist_opts;

/* Wraps m (which stays the caller's; free the wrapper first): broadcasts rank 0's
 * parameters and buffers, plans the buckets, checks that every rank planned the same ones
 * and hooks the backward of m's context (one wrapped model per context). opts NULL: the
 * defaults. NULL with the context's error set on failure. */
KILN_API kiln_dist_model *kiln_dist_wrap(kiln_module *m, const kiln_dist_opts *opts);
/* Waits for every bucket of the last backward (starting those the backward did not) and
 * leaves the mean gradient over the ranks in every trainable parameter's .grad: call it
 * between kiln_backward and kiln_optim_step. Errors name the rank, the step and the bucket. */
KILN_API kiln_status kiln_dist_sync_grads(kiln_dist_model *dm);
/* Broadcasts rank 0's parameters and buffers again (after loading a checkpoint on rank 0). */
KILN_API kiln_status kiln_dist_broadcast_model(kiln_dist_model *dm);
KILN_API void kiln_dist_model_free(kiln_dist_model *dm);

/* What the wrapped model's synchronisation cost (since kiln_dist_wrap). */
typedef struct kiln_dist_stats {
    int64_t steps;           /* kiln_dist_sync_grads calls that succeeded */
    int buckets;             /* buckets per step */
    int64_t params;          /* trainable parameters (elements) reduced each step */
    uint64_t bytes_per_step; /* gradient bytes each rank all-reduces per step */
    double wait_ms;          /* total time kiln_dist_sync_grads waited: for the device to finish
                                the backward and the reads back, then for the all-reduces */
    double last_wait_ms;     /* the last step's */
    double comm_wait_ms;     /* the part of wait_ms after the last bucket was posted: the
                                communication that the backward did not hide */
    double last_comm_wait_ms;
    int64_t buckets_early; /* buckets whose all-reduce started during a backward */
    int sync_batchnorms;   /* batch norm layers whose statistics are reduced (sync_batchnorm) */
} kiln_dist_stats;
KILN_API kiln_status kiln_dist_model_stats(const kiln_dist_model *dm, kiln_dist_stats *out);

#ifdef __cplusplus
}
#endif
#endif

/* src/device/device_internal.h - the device floor: the context, the buffer pool, programs
 * and kernel launches, launch-shape choice, CLBlast's parameter tables (the files of src/device).
 * Includes the core floor; see src/core/core_internal.h for the floors. */
#ifndef KILN_DEVICE_INTERNAL_H
#define KILN_DEVICE_INTERNAL_H

#include "../core/core_internal.h"
#include "../../cl_kernels/kiln_shared.h" /* KILN_ERRBUF_* */

#include <stdatomic.h>

/* ---- buffer pool (src/device/pool.c) ----------------------------------------------- */

typedef struct kiln__free_buf {
    cl_mem mem;
    size_t bytes;
} kiln__free_buf;

typedef struct kiln__pool {
    kiln__free_buf *free;
    size_t nfree, capfree;
    uint64_t in_use, cached, peak, limit;
    uint64_t allocs, device_allocs, reuses;
    int64_t fail_countdown; /* test hook: fail the Nth next allocation (0 = off) */
} kiln__pool;

/* Rounds a request up to its bucket size. */
size_t kiln__pool_bucket(size_t bytes);
/* A buffer of at least `bytes` (its bucket size goes to *got). `op` names the requester in
 * the OOM message. NULL on failure with the context's error set. */
cl_mem kiln__pool_alloc(kiln_ctx *ctx, size_t bytes, size_t *got, const char *op);
void kiln__pool_release(kiln_ctx *ctx, cl_mem mem, size_t bucket_bytes);
void kiln__pool_destroy(kiln_ctx *ctx);
/* Test hook: the nth allocation from now fails as if the device were full (0 disables). */
void kiln__pool_fail_after(kiln_ctx *ctx, int64_t nth);

/* ---- programs and kernels (src/device/program.c) ----------------------------------- */

typedef struct kiln__kernel_entry {
    char name[64];
    cl_kernel kernel;
    size_t wg; /* 1-D work-group size for this kernel: ctx->wg capped by the kernel's limit */
} kiln__kernel_entry;

typedef struct kiln__program {
    char *name;
    char *options;
    cl_program program;
    kiln__kernel_entry *kernels;
    size_t nkernels;
    struct kiln__program *next;
} kiln__program;

/* The embedded source of cl_kernels/<name>.cl (the table tools/embed_cl.c generates);
 * $KILN_KERNEL_DIR or the kernels_from_source build option make it read from disk instead.
 * Returns a malloc'ed, NUL-terminated string or NULL with the context's error set. */
char *kiln__program_source(kiln_ctx *ctx, const char *name, size_t *len);
/* The kernel `kernel` of program `program` compiled with `options` (added to the common
 * options), from the memory cache, the disk cache or a build. NULL with the error set. */
cl_kernel kiln__kernel(kiln_ctx *ctx, const char *program, const char *options, const char *kernel);
void kiln__programs_destroy(kiln_ctx *ctx);

/* One kernel argument. */
typedef struct kiln__karg {
    size_t size;
    const void *ptr;
} kiln__karg;
#define KILN__ARG(x) ((kiln__karg){sizeof(x), &(x)})
#define KILN__LOCAL(bytes) ((kiln__karg){(bytes), NULL})

/* Sets the arguments and enqueues a 1-D launch of `global` work-items, rounded up to a
 * multiple of the work-group size (local 0 = let kiln choose; KILN__SPREAD = kiln's
 * choice, on a CPU smaller where that leaves fewer than KILN__SPREAD_GROUPS work-groups per
 * compute unit, for kernels whose few work-items each do much work). Kernels guard i < n. */
#define KILN__SPREAD ((size_t)-1)
#define KILN__SPREAD_GROUPS 4
/* KILN__SPREAD's work-group for `global` items on `units` compute units (0 counts as 1),
 * starting from wg: halved while the launch would have fewer than KILN__SPREAD_GROUPS
 * groups per unit and the half holds at least 16 items. CPUs only: a GPU's groups hold
 * whole warps, and the device's units are not the groups it runs at once. */
size_t kiln__spread_local(size_t wg, size_t global, size_t units);
kiln_status kiln__launch(kiln_ctx *ctx, const char *op, const char *program, const char *options, const char *kernel,
                         size_t nargs, const kiln__karg *args, size_t global, size_t local);
/* 2-D version: global[] already multiples of local[] when local is given. */
kiln_status kiln__launch2(kiln_ctx *ctx, const char *op, const char *program, const char *options, const char *kernel,
                          size_t nargs, const kiln__karg *args, const size_t global[2], const size_t local[2]);
/* The work-group size used for 1-D launches on this device (before a kernel's own cap). */
size_t kiln__wg_size(const kiln_ctx *ctx);
/* The work-group size for a kernel that sums through a local-memory tree: the context's
 * size, lowered to what the compiled kernel allows on this device and to cap (0 = no cap),
 * as a power of two (>= 1). Fails, with the error set, when the kernel cannot be built. */
kiln_status kiln__tree_wg(kiln_ctx *ctx, const char *program, const char *options, const char *kernel, size_t cap,
                          size_t *wg);

/* ---- CLBlast parameters per device (src/device/tuning.c) --------------------------- */

/* CLBlast's GEMM kernel sets (Xgemm, XgemmDirect, GemmRoutine, Copy, Pad, Transpose,
 * Padtranspose) and their parameters; a set of values, each marked when present. */
#define KILN__TUNE_KERNELS 7
#define KILN__TUNE_MAXP 16

/* One parameter set of kiln's own GEMM kernels (cl_kernels/gemm.cl, chosen by
 * src/ops/gemm.c), passed to them as build options: gemm_nt computes nt_rm x nt_rn outputs
 * per work-item with float<nt_vw> accumulators and nt_ku vectors of K per loop iteration;
 * gemm_nn nn_rm x (nn_nv * nn_vw) outputs with float<nn_vw> accumulators, nn_ku values of k
 * per iteration. Here, below the ops floor, because the tune file stores one (its KilnGemm
 * line) and the context holds it. */
typedef struct kiln__gemm_params {
    const char *name; /* the instruction set it is for ("avx512", "avx2", "neon", "vec4"), or "tuned" */
    int nt_rm, nt_rn, nt_vw, nt_ku;
    int nn_rm, nn_nv, nn_vw, nn_ku;
} kiln__gemm_params;

typedef struct kiln__tune_set {
    size_t v[KILN__TUNE_KERNELS][KILN__TUNE_MAXP];
    bool has[KILN__TUNE_KERNELS][KILN__TUNE_MAXP];
    /* the KilnGemm line: kiln's own kernels' set, when present and valid */
    bool has_gemm;
    kiln__gemm_params gemm;
    /* why a KilnGemm line was dropped ("" when none was): the rest of the file still
     * applies, kiln's kernels keep the table's set */
    char gemm_err[192];
} kiln__tune_set;

const char *kiln__tune_kernel(int k);
int kiln__tune_nparams(int k);
const char *kiln__tune_param(int k, int p);
int kiln__tune_kernel_index(const char *name);
int kiln__tune_param_index(int k, const char *name);
void kiln__tune_set_value(kiln__tune_set *s, int k, int p, size_t v);
bool kiln__tune_complete(const kiln__tune_set *s, int k);
bool kiln__tune_any(const kiln__tune_set *s, int k);
/* dst takes every value present in src. */
void kiln__tune_merge(kiln__tune_set *dst, const kiln__tune_set *src);
/* The built-in values for a device (false, empty set when the table has none). */
bool kiln__tune_builtin(const kiln_device_info *info, kiln__tune_set *out);
/* Parses "Kernel NAME=v ..." lines; with expect, "device:"/"driver:" lines must match it.
 * A bad "KilnGemm ..." line is not an error: it is dropped, with the reason in
 * out->gemm_err. */
kiln_status kiln__tune_parse(const char *text, kiln__tune_set *out, const kiln_device_info *expect, char *err,
                             size_t cap);
char *kiln__tune_format(const kiln__tune_set *s, char *buf, size_t cap);
/* $KILN_CACHE_DIR/kiln-tune-<hash of device name, driver, platform>.txt */
kiln_status kiln__tune_path(const kiln_device_info *info, char *buf, size_t cap);
kiln_status kiln__tune_load(const kiln_device_info *info, const char *path, kiln__tune_set *out, char *err, size_t cap);
/* Writes the file atomically; its path into path. Sets kiln_last_error on failure. */
kiln_status kiln__tune_save(const kiln_device_info *info, const kiln__tune_set *s, const char *comment, char *path,
                            size_t cap);
/* CLBlastOverrideParameters for every kernel set present in s (each must be complete). */
kiln_status kiln__tune_apply(kiln_ctx *ctx, const kiln__tune_set *s);
/* "on", "auto", "builtin" or "off" from $KILN_TUNE ("auto" applies as "on" does, and lets
 * src/ops/gemm.c search kiln's GEMM kernels' set at the first product). */
const char *kiln__tune_mode(void);
/* The KilnGemm line's limits: a vector width of 4, 8 or 16, blocks (nt_rm, nt_rn, nn_rm,
 * nn_nv) of 1..KILN__GEMM_MAX_BLOCK, K unrolls of 1..KILN__GEMM_MAX_KU. False, with the
 * reason in why, for a set outside them. */
#define KILN__GEMM_MAX_BLOCK 16
#define KILN__GEMM_MAX_KU 8
bool kiln__gemm_params_check(const kiln__gemm_params *p, char *why, size_t cap);
/* kiln_open's step: built-in table, then the stored file, applied; never fails. Returns
 * where the parameters came from; *applied (optional) gets them. A KilnGemm set it finds
 * (not with KILN_TUNE=off or builtin) goes to ctx->gemm_tuned. */
const char *kiln__tune_open(kiln_ctx *ctx, kiln__tune_set *applied);
/* What the last kiln__tune_open applied ("built-in table", "stored by kiln tune", ...). */
const char *kiln__tune_source(void);

/* What the GEMM router (kiln__sgemm, src/ops/sgemm.c) needs to know of the parameters kiln
 * applied, to route each product to the CLBlast kernel that pads it least. */
typedef struct kiln__gemm_route {
    bool colmajor;        /* kiln calls CLBlast in the column-major form (see src/ops/sgemm.c) */
    bool known;           /* kiln set GEMMK 0 parameters on ctx's device itself: the rest holds */
    size_t mwg, nwg, kwg; /* Xgemm's tiles (kwg is KWG * KREG) */
    size_t wgd;           /* XgemmDirect's tile */
    size_t thr;           /* GemmRoutine's XGEMM_MIN_INDIRECT_SIZE as applied */
} kiln__gemm_route;
/* The lock over CLBlast's parameters: kiln__tune_apply takes it, and the router holds it
 * from reading the route through a call made with a switched threshold, so concurrent
 * calls never see each other's switch. */
void kiln__tune_lock(void);
void kiln__tune_unlock(void);
/* The route for ctx's device; with the lock held. */
void kiln__tune_route(const kiln_ctx *ctx, kiln__gemm_route *out);
/* Sets GemmRoutine's XGEMM_MIN_INDIRECT_SIZE on ctx's device; with the lock held. */
void kiln__tune_threshold(kiln_ctx *ctx, size_t v);

/* ---- context (src/device/device.c) -------------------------------------------------- */

/* Switches that tests and kiln's tools set on one context to force a code path the device
 * would not choose (tests reach them through src/kiln_test_hooks.h). Zero everywhere means
 * "the device decides", so a fresh context has every hook off. */
typedef struct kiln__hooks {
    int reduce_layout;                   /* 0 device, 1 GPU-style layout, 2 CPU-style (src/ops/reduce.c) */
    int softmax_layout;                  /* 0 device, 1 rows, 2 groups CPU-style, 3 groups GPU-style (activation.c) */
    int loss_layout;                     /* as reduce_layout (src/ops/loss.c) */
    int norm_layout;                     /* 0 device, 1 rows, 2 groups, 3 BN planes, 4 LN vec rows (ops/norm.c) */
    int shape_layout;                    /* 1 per element, 2 per row (ops/shape.c, tensor/tensor.c copies) */
    int act_vw;                          /* 0 device, w: gelu's floats per work-item (ops/activation.c) */
    int gemm_own;                        /* 0 device, 1 every product kiln's kernels can take, -1 none */
    int gemm_params;                     /* 0 device, i: set i - 1 (ops/gemm.c), own kernels unless gemm_own -1 */
    int gemm_epilogue;                   /* 0 KILN_GEMM_EPILOGUE, 1 bias fused into gemm_nt, -1 never */
    bool sgemm_fixed;                    /* kiln tune: no per-call choice between CLBlast's kernels */
    int64_t conv_pad;                    /* the padded conv path with this multiple (0 = off) */
    int64_t conv_budget, conv_split_min; /* conv's column budget and split-K minimum (0 = built-in) */
    size_t matmul_last_parts;            /* written by matmul: parts of the last split-K product */
    size_t gemm_scratch;                 /* counted by ops/gemm.c: padded or transposed operand copies made */
    int gemm_autotune_timed;             /* written by ops/gemm.c: sets KILN_TUNE=auto timed */
    /* told every product kiln__sgemm is given, before it runs (kiln bench gemm --model lists
     * the products of a training step): NULL off */
    void (*gemm_seen)(void *arg, const char *op, bool ta, bool tb, size_t m, size_t n, size_t k, size_t batch);
    void *gemm_seen_arg;
} kiln__hooks;

/* A floor above this one that keeps state on a context registers how to free it when the
 * context closes (the tensor floor: every tensor that is left). kiln_close runs the hooks
 * newest first, before the programs and the buffer pool go. */
typedef void (*kiln__close_fn)(kiln_ctx *ctx);
#define KILN__CLOSE_HOOKS 8
/* Registers fn once (registering it again is a no-op). Fails, with the error set, when
 * KILN__CLOSE_HOOKS hooks are registered already. */
kiln_status kiln__on_close(kiln_ctx *ctx, kiln__close_fn fn);

/* What the context asked of the device since kiln_open or kiln_ctx_stats_reset (the
 * public view: kiln_ctx_stats in include/kiln/device.h). Atomic: the loader's worker thread
 * writes batches on the same context. Count through KILN__COUNT. */
typedef struct kiln__stats {
    _Atomic uint64_t launches, library_calls, blocking_reads, blocking_writes, finishes, event_waits;
    _Atomic uint64_t bytes_to_host, bytes_to_device;
    uint64_t pool_device_allocs0, pool_reuses0; /* the pool's counters at the last reset */
} kiln__stats;
#define KILN__COUNT(ctx, field, n) atomic_fetch_add_explicit(&(ctx)->stats.field, (uint64_t)(n), memory_order_relaxed)

/* ---- deferred index errors (src/device/deverr.c) ------------------------------------ */

/* One launch that checks indices on the device: what its message says. */
#define KILN__DEVERR_SITES 64
typedef struct kiln__deverr_site {
    char op[48];   /* "kiln_cross_entropy" */
    char what[16]; /* "label", "index" */
    int ndim;      /* shape of the indices, for the position; 0: the position is printed flat */
    int64_t shape[KILN_MAX_DIMS];
    char text[256]; /* the message after the position: "of target [3] is out of range ..." */
} kiln__deverr_site;

typedef struct kiln__deverr {
    cl_mem mem;                    /* KILN_ERRBUF_INTS ints (cl_kernels/kiln_shared.h); NULL until needed */
    cl_int host[KILN_ERRBUF_INTS]; /* its last read */
    bool pending;                  /* a checking kernel was enqueued since the last read */
    bool read_enqueued;            /* a read into host is in the queue */
    uint32_t nsites;               /* sites registered; site id % KILN__DEVERR_SITES is its slot */
    kiln__deverr_site sites[KILN__DEVERR_SITES];
} kiln__deverr;

/* Registers a checking launch: *buf and *site go to the kernel, which records a bad index
 * with kiln_bad_index (cl_kernels/common.cl). Fails only when the buffer cannot be made. */
kiln_status kiln__deverr_register(kiln_ctx *ctx, const char *op, const char *what, int ndim, const int64_t *shape,
                                  const char *text, cl_mem *buf, cl_int *site);
/* Before a wait: enqueues a non-blocking read of the error buffer when a checking kernel
 * ran since the last one (the wait then completes it). */
void kiln__deverr_enqueue(kiln_ctx *ctx);
/* After the wait: KILN_ERR_RANGE with the op's message (naming the index, its position and
 * `where`, the waiting call) when a bad index was recorded; the buffer is cleared. */
kiln_status kiln__deverr_check(kiln_ctx *ctx, const char *where);
void kiln__deverr_destroy(kiln_ctx *ctx);
/* ---- non-blocking host copies (src/device/device.c) -------------------------------- */

/* For floors that overlap host work with the queue (src/dist reads gradients while the
 * backward goes on): the copy of `bytes` bytes at byte `offset` of mem is enqueued on the
 * context's in-order queue (so it follows every command before it), the queue is flushed
 * and *ev gets the copy's event. host must stay valid, and untouched, until the event is
 * done. Fails with the error set (naming op) when the enqueue fails. */
kiln_status kiln__read_async(kiln_ctx *ctx, const char *op, cl_mem mem, size_t offset, size_t bytes, void *host,
                             cl_event *ev);
kiln_status kiln__write_async(kiln_ctx *ctx, const char *op, cl_mem mem, size_t offset, size_t bytes, const void *host,
                              cl_event *ev);
/* 1 when ev has completed, 0 while it is queued or running, an error (set, naming op)
 * when the command failed. Never waits. */
int kiln__event_poll(kiln_ctx *ctx, const char *op, cl_event ev);
/* Frees an event of the calls above (NULL is fine). */
void kiln__event_release(cl_event ev);

struct kiln_tensor;
struct kiln__node;

struct kiln_ctx {
    /* First: core's view of the context (src/core/core_internal.h). The union names the
     * same fields twice: as core's struct and as ctx->err, ctx->errmsg, ctx->err_noted. */
    union {
        kiln__error_state error;
        struct {
            KILN__ERROR_FIELDS
        };
    };

    cl_platform_id platform;
    cl_device_id device;
    cl_context context;
    cl_command_queue queue;
    kiln_device_info info;

    kiln__program *programs;
    kiln_cache_stats cache;
    bool disk_cache;
    char cache_dir[1024];
    char kernel_dir[1024]; /* "" = embedded sources */

    kiln__pool pool;
    kiln__stats stats;
    kiln__hooks hooks;
    /* kiln's GEMM kernels' set from the tune file (kiln__tune_open), when there is one;
     * src/ops/gemm.c prefers it to its table */
    kiln__gemm_params gemm_tuned;
    bool has_gemm_tuned;
    /* 1 + the table's set for this device (src/ops/gemm.c derives it from info once, on the
     * first product); 0 until then */
    int gemm_table_set;
    /* KILN_TUNE=auto (src/ops/gemm.c): 0 not decided yet, 1 searching, 2 done, 3 not
     * wanted (another mode, a GPU, or kiln's kernels not in use) */
    int gemm_autotune;
    /* src/ops/gemm.c's build options for gemm_opts_set, by [NN_TC][NN_BETA][NT_BIAS]: made
     * once ("" until then), not formatted again for every product */
    kiln__gemm_params gemm_opts_set;
    char gemm_opts[2][2][3][192];
    kiln__close_fn close_hooks[KILN__CLOSE_HOOKS];
    int nclose_hooks;
    size_t wg;
    uint64_t seed, rng_counter; /* kiln_manual_seed's stream (src/ops/random.c) */

    /* The tensor floor's state (src/tensor/tensor.c): the device floor only keeps it. */
    struct kiln_tensor *tensors; /* every live tensor, newest first */
    int64_t ntensors;
    int scope_depth;
    struct kiln_tensor *dead; /* tensors to free */
    bool releasing;
    int64_t guard; /* see kiln__set_guard */
    /* Frees a tensor's autograd node, releasing its references to other tensors (discard:
     * without them, when every tensor goes); installed by the autograd floor with the
     * first node, so the tensor floor frees nodes without calling autograd. */
    void (*node_release)(kiln_ctx *ctx, struct kiln__node *n, bool discard);

    /* The autograd floor's state (src/autograd/autograd.c). */
    bool grad_enabled;   /* autograd records ops (default true) */
    bool check_numerics; /* KILN_CHECK_NUMERICS: every op's output checked for NaN/Inf */
    uint64_t node_seq;   /* creation counter of autograd nodes */
    /* autocast's half dtype (include/kiln/amp.h; src/ops/cast.c reads it): KILN_F32 is off.
     * A backward clears it while it runs, so backward rules compute as their forward did. */
    kiln_dtype autocast;
    /* autocast's casts made ahead (src/ops/cast.c, kiln__autocast_cache_put): amp_cache
     * holds amp_ncache pairs (f32 parameter, its half copy), which kiln__autocast_inputs
     * hands out instead of converting again; every kiln_ctx_set_autocast empties it (the
     * copies are the cache's, outside every scope), as torch's autocast drops its cast cache
     * on leaving the autocast region. */
    struct kiln_tensor **amp_cache;
    int amp_ncache, amp_cap;

    kiln__deverr deverr; /* deferred index errors (src/device/deverr.c) */
    /* told of each leaf whose gradient a backward has made final (kiln__set_grad_ready,
     * src/autograd/autograd_internal.h; src/dist starts its all-reduces from it): NULL off */
    void (*grad_ready)(void *user, struct kiln_tensor *leaf);
    void *grad_ready_user;
};
_Static_assert(offsetof(struct kiln_ctx, error) == 0, "core reaches the error state at the context's start");

#endif

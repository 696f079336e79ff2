/* src/kiln_internal.h - structures and helpers shared by the library's sources. */
#ifndef KILN_INTERNAL_H
#define KILN_INTERNAL_H

#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>

#include "kiln/kiln.h"

#if defined(__GNUC__)
#define KILN__PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define KILN__PRINTF(f, a)
#endif

/* ---- errors (src/core/error.c) ----------------------------------------------------- */

/* Records status and a formatted message as the context's error unless one is already
 * held (the first error is the root cause). Returns status. ctx may be NULL. */
kiln_status kiln__fail(kiln_ctx *ctx, kiln_status status, const char *fmt, ...) KILN__PRINTF(3, 4);
/* Same, for calls with no context: sets the thread's kiln_last_error(). */
kiln_status kiln__fail_global(kiln_status status, const char *fmt, ...) KILN__PRINTF(2, 3);
/* Appends " [note]" to the context's error message once (the innermost caller wins):
 * modules name themselves in the errors of the ops they run. */
void kiln__error_note(kiln_ctx *ctx, const char *fmt, ...) KILN__PRINTF(2, 3);
void kiln__clear_global(void);
/* Maps an OpenCL error code to a kiln status. */
kiln_status kiln__cl_status(cl_int err);
const char *kiln__cl_name(cl_int err);
void kiln__log(int level, const char *fmt, ...) KILN__PRINTF(2, 3);
double kiln__now_ms(void);

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
KILN_API void kiln__pool_fail_after(kiln_ctx *ctx, int64_t nth);

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

/* The embedded source of cl_kernels/<name>.cl (src/device/sources.c + generated table);
 * $KILN_KERNEL_DIR or the kernel_dir build option make it read from disk instead.
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
 * multiple of the work-group size (local 0 = let kiln choose). Kernels guard i < n. */
kiln_status kiln__launch(kiln_ctx *ctx, const char *op, const char *program, const char *options,
                         const char *kernel, size_t nargs, const kiln__karg *args, size_t global,
                         size_t local);
/* 2-D version: global[] already multiples of local[] when local is given. */
kiln_status kiln__launch2(kiln_ctx *ctx, const char *op, const char *program, const char *options,
                          const char *kernel, size_t nargs, const kiln__karg *args,
                          const size_t global[2], const size_t local[2]);
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
typedef struct kiln__tune_set {
    size_t v[KILN__TUNE_KERNELS][KILN__TUNE_MAXP];
    bool has[KILN__TUNE_KERNELS][KILN__TUNE_MAXP];
} kiln__tune_set;

KILN_API const char *kiln__tune_kernel(int k);
KILN_API int kiln__tune_nparams(int k);
KILN_API const char *kiln__tune_param(int k, int p);
KILN_API int kiln__tune_kernel_index(const char *name);
KILN_API int kiln__tune_param_index(int k, const char *name);
KILN_API void kiln__tune_set_value(kiln__tune_set *s, int k, int p, size_t v);
KILN_API bool kiln__tune_complete(const kiln__tune_set *s, int k);
KILN_API bool kiln__tune_any(const kiln__tune_set *s, int k);
/* dst takes every value present in src. */
KILN_API void kiln__tune_merge(kiln__tune_set *dst, const kiln__tune_set *src);
/* The built-in values for a device (false, empty set when the table has none). */
KILN_API bool kiln__tune_builtin(const kiln_device_info *info, kiln__tune_set *out);
/* Parses "Kernel NAME=v ..." lines; with expect, "device:"/"driver:" lines must match it. */
KILN_API kiln_status kiln__tune_parse(const char *text, kiln__tune_set *out, const kiln_device_info *expect,
                                      char *err, size_t cap);
KILN_API char *kiln__tune_format(const kiln__tune_set *s, char *buf, size_t cap);
/* $KILN_CACHE_DIR/kiln-tune-<hash of device name, driver, platform>.txt */
KILN_API kiln_status kiln__tune_path(const kiln_device_info *info, char *buf, size_t cap);
KILN_API kiln_status kiln__tune_load(const kiln_device_info *info, const char *path, kiln__tune_set *out,
                                     char *err, size_t cap);
/* Writes the file atomically; its path into path. Sets kiln_last_error on failure. */
KILN_API kiln_status kiln__tune_save(const kiln_device_info *info, const kiln__tune_set *s, const char *comment,
                                     char *path, size_t cap);
/* CLBlastOverrideParameters for every kernel set present in s (each must be complete). */
KILN_API kiln_status kiln__tune_apply(kiln_ctx *ctx, const kiln__tune_set *s);
/* "on", "builtin" or "off" from $KILN_TUNE. */
KILN_API const char *kiln__tune_mode(void);
/* kiln_open's step: built-in table, then the stored file, applied; never fails. Returns
 * where the parameters came from; *applied (optional) gets them. */
KILN_API const char *kiln__tune_open(kiln_ctx *ctx, kiln__tune_set *applied);
/* What the last kiln__tune_open applied ("built-in table", "stored by kiln tune", ...). */
KILN_API const char *kiln__tune_source(void);
/* Row-major C = alpha op(A) op(B) + beta C, enqueued on ctx's queue with no event; batch
 * > 1 is strided-batched (strides in elements). Products kiln__gemm_own_takes goes to
 * kiln's own kernels; the rest to CLBlast, with the operand order and, where kiln set
 * CLBlast's parameters, the kernel (direct or indirect) that run fastest on the device.
 * Returns CLBlast's status code (0 = success), or KILN__SGEMM_FAILED when kiln's own
 * kernel failed: the context's error then says why. */
#define KILN__SGEMM_FAILED (-100000)
int kiln__sgemm(kiln_ctx *ctx, const char *op, bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, cl_mem a,
                size_t aoff, size_t lda, size_t astride, cl_mem b, size_t boff, size_t ldb, size_t bstride, float beta,
                cl_mem c, size_t coff, size_t ldc, size_t cstride, size_t batch);
/* The multiple of each row-major dim (m, n, k of kiln__sgemm) at which CLBlast's indirect
 * kernel, as kiln set it up for ctx's device, uses the operands in place instead of copying
 * them into padded buffers first; 1 where that is not known (CLBlast's own parameters, or
 * the row-major call order). Ops that own their operands' layout pad to these. */
void kiln__sgemm_tiles(kiln_ctx *ctx, size_t *tm, size_t *tn, size_t *tk);
/* Turns kiln__sgemm's per-call choice between CLBlast's direct and indirect kernels on
 * (default) or off (kiln tune measures each kernel as the parameters force it). */
KILN_API void kiln__sgemm_routing(bool on);

/* ---- kiln's own GEMM kernels (src/ops/gemm.c) ---------------------------------------- */

/* Whether kiln__sgemm gives this product to kiln's own kernels: every transpose
 * combination but op(A)^T B^T, on a CPU device (A B and A^T B only with beta 0). */
bool kiln__gemm_own_takes(const kiln_ctx *ctx, bool ta, bool tb, size_t m, size_t n, size_t k, size_t batch,
                          float beta);
/* Row-major C = alpha op(A) op(B) + beta C for `batch` matrices through gemm_nt (tb) or
 * gemm_nn (!tb, beta 0), as kiln__sgemm's arguments; enqueued. Not for ta && tb. */
kiln_status kiln__gemm_run(kiln_ctx *ctx, const char *op, bool ta, bool tb, size_t m, size_t n, size_t k, float alpha,
                           cl_mem a, size_t aoff, size_t lda, size_t astride, cl_mem b, size_t boff, size_t ldb,
                           size_t bstride, float beta, cl_mem c, size_t coff, size_t ldc, size_t cstride,
                           size_t batch);

/* ---- context ------------------------------------------------------------------------ */

struct kiln_tensor;

/* Switches that tests and kiln's tools set on one context to force a code path the device
 * would not choose (tests reach them through src/kiln_test_hooks.h). Zero everywhere means
 * "the device decides", so a fresh context has every hook off. */
typedef struct kiln__hooks {
    int reduce_layout;  /* 0 device, 1 GPU-style layout, 2 CPU-style (src/ops/reduce.c) */
    int softmax_layout; /* as reduce_layout, for softmax (src/ops/activation.c) */
    int loss_layout;    /* as reduce_layout (src/ops/loss.c) */
    int norm_layout;    /* 0 device, 1 and 2 the two layouts (src/ops/norm.c) */
    int shape_layout;   /* as reduce_layout (src/ops/shape.c) */
    int gemm_own;       /* 0 device, 1 every product kiln's kernels can take, -1 none */
    bool sgemm_fixed;   /* kiln tune: no per-call choice between CLBlast's kernels */
    int64_t conv_pad;   /* the padded conv path with this multiple (0 = off) */
    int64_t conv_budget, conv_split_min; /* conv's column budget and split-K minimum (0 = built-in) */
    size_t matmul_last_parts; /* written by matmul: parts of the last split-K product */
} kiln__hooks;

struct kiln_ctx {
    cl_platform_id platform;
    cl_device_id device;
    cl_context context;
    cl_command_queue queue;
    kiln_device_info info;

    kiln_status err;
    char *errmsg; /* malloc'ed; NULL when no error */
    bool err_noted; /* kiln__error_note already added its note */

    kiln__program *programs;
    kiln_cache_stats cache;
    bool disk_cache;
    char cache_dir[1024];
    char kernel_dir[1024]; /* "" = embedded sources */

    kiln__pool pool;

    struct kiln_tensor *tensors; /* every live tensor, newest first */
    int64_t ntensors;
    int scope_depth;

    uint64_t seed, rng_counter;
    size_t wg;
    bool grad_enabled;    /* autograd records ops (default true) */
    bool check_numerics;  /* KILN_CHECK_NUMERICS: every op's output checked for NaN/Inf */
    uint64_t node_seq;    /* creation counter of autograd nodes */
    struct kiln_tensor *dead; /* tensors to free (see src/tensor/tensor.c) */
    bool releasing;
    int64_t guard; /* see kiln__set_guard */
    kiln__hooks hooks;
};

/* ---- tensors (src/tensor/tensor.c) ------------------------------------------------- */

typedef struct kiln__storage {
    cl_mem mem;
    size_t bytes;  /* bucket size of mem */
    int refs;      /* tensors viewing it */
    int64_t guard; /* elements of sentinel before and after the payload (test mode) */
    int64_t numel; /* payload elements */
    size_t esize;
} kiln__storage;

/* Test hooks: with n > 0 every new storage gets n sentinel elements before and after its
 * payload; kiln__check_guards reads them back and counts storages whose sentinels were
 * overwritten (naming the first in msg). */
KILN_API void kiln__set_guard(kiln_ctx *ctx, int64_t n);
KILN_API int kiln__check_guards(kiln_ctx *ctx, char *msg, size_t cap);

struct kiln__node;

struct kiln_tensor {
    kiln_ctx *ctx;
    kiln__storage *st;
    kiln_dtype dtype;
    int ndim;
    int64_t shape[KILN_MAX_DIMS];
    int64_t strides[KILN_MAX_DIMS]; /* in elements */
    int64_t offset;                 /* in elements */
    int scope;                      /* scope depth it belongs to; 0 = none */
    struct kiln_tensor *prev, *next;

    /* autograd (src/autograd/autograd.c) */
    bool requires_grad;       /* a leaf the user marked, or the output of a recorded op */
    bool graph_freed;         /* backward ran through this tensor's graph and released it */
    struct kiln__node *node;  /* the op that made it (NULL for leaves); owned by the tensor */
    struct kiln_tensor *grad; /* accumulated gradient of a leaf (kept: outside every scope) */
    struct kiln_tensor *gacc; /* gradient being accumulated during one backward pass */
    int refs;                 /* references from nodes; the handle is freed when 0 and dropped */
    bool dropped;             /* the user (or a scope) let it go; freed once refs is 0 */
    struct kiln_tensor *dead_next; /* the context's list of tensors waiting to be freed */
};

/* A new contiguous tensor with fresh storage; `op` names the caller for errors. */
kiln_tensor *kiln__tensor_new(kiln_ctx *ctx, const char *op, kiln_dtype dtype, int ndim,
                              const int64_t *shape);
/* A new view of base's storage with the given geometry. */
kiln_tensor *kiln__tensor_view(kiln_ctx *ctx, kiln_tensor *base, int ndim, const int64_t *shape,
                               const int64_t *strides, int64_t offset);
int64_t kiln__numel(int ndim, const int64_t *shape);
/* src/optim/optim.c: whether "<i>.<key>" names state this optimizer's configuration uses
 * (kiln_optim_state_find(opt, name, true) would succeed), without creating it. */
struct kiln_optim;
bool kiln__optim_state_known(const struct kiln_optim *opt, const char *name);
void kiln__contiguous_strides(int ndim, const int64_t *shape, int64_t *strides);
bool kiln__is_contiguous(const kiln_tensor *t);
/* "[5, 7, 11]" into buf. */
char *kiln__shape_str(int ndim, const int64_t *shape, char *buf, size_t cap);
/* Checks ctx and a list of inputs: NULL ctx, NULL inputs (error or propagation) and
 * tensors of another context. Returns false with the error set. */
bool kiln__check_inputs(kiln_ctx *ctx, const char *op, int n, kiln_tensor *const *ts);
/* Normalises a possibly negative axis for ndim dims; -1 when out of range. */
int kiln__axis(int axis, int ndim);

/* ---- strided indexing shared with the kernels (cl_kernels/common.cl) --------------- */

/* Geometry of an elementwise launch: output is contiguous with `shape`; each input has its
 * own strides (0 where broadcast) and offset. kiln_geom comes from the header the kernels
 * include too (cl_kernels/kiln_shared.h), with the other structs both sides read. */
#include "../cl_kernels/kiln_shared.h"
#define KILN__GEOM_IN KILN_GEOM_IN
typedef kiln_geom kiln__geom;

/* Fills g for an output of `shape` (ndim dims) and nin inputs whose strides are already
 * broadcast to ndim dims; size-1 dims are dropped and contiguous runs merged. */
void kiln__geom_build(kiln__geom *g, int ndim, const int64_t *shape, int nin,
                      const int64_t (*strides)[KILN_MAX_DIMS]);

/* Copies src into dst (any views of one shape and dtype; dst must not overlap itself). */
kiln_status kiln__copy_into(kiln_ctx *ctx, const char *op, kiln_tensor *src, kiln_tensor *dst);
/* Copies t into a new contiguous tensor with a kernel (src/tensor/tensor.c). */
kiln_tensor *kiln__copy_contiguous(kiln_ctx *ctx, const char *op, kiln_tensor *t);

/* ---- autograd (src/autograd/autograd.c) -------------------------------------------- */
/*
 * How an op becomes differentiable. After computing `out` from inputs in[0..nin):
 *
 *     if (kiln__grad_wanted(ctx, nin, in)) {
 *         kiln__node *n = kiln__node_new(ctx, "kiln_foo", out, nin, in, foo_backward);
 *         if (!n) { kiln_tensor_free(out); return NULL; }
 *         n->f[0] = alpha;                 // parameters the backward needs
 *         kiln__node_save(n, mask);        // extra tensors the backward needs
 *     }
 *     return kiln__finish(ctx, "kiln_foo", out);
 *
 * The node keeps its inputs and saved tensors alive (a reference each) until the node is
 * freed: when backward has run through it (unless the graph is retained) or when `out`
 * itself is freed. n->out is `out` (not referenced: the node lives inside it).
 *
 * foo_backward(ctx, n, gout) runs with grad mode off. gout is the gradient of n->out: a
 * contiguous F32 tensor of n->out's shape. For each input i with kiln__input_needs_grad(n,
 * i) it computes that input's gradient with ordinary ops or its own kernels and passes it
 * to kiln__accum(ctx, n, i, g). g may have a larger broadcast shape than the input (as from
 * an elementwise op): kiln__accum sums it down to the input's shape. Tensors the backward
 * creates belong to the caller's scope; it returns KILN_OK or the error status.
 *
 * Ops that are not differentiable (argmax, comparisons) skip all this; their outputs do
 * not require grad. Non-F32 inputs (indices) never require grad.
 */
/* DEPRECATED: a node takes any number of inputs; kiln_cat and the penalties still split
 * their operands into chunks of this many. */
#define KILN__NODE_IN 4
typedef struct kiln__node kiln__node;
typedef kiln_status (*kiln__backward_fn)(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout);
struct kiln__node {
    const char *op;
    kiln__backward_fn backward;
    kiln_tensor *out;
    int nin;
    kiln_tensor **in;  /* nin inputs (NULL entries allowed), owned array */
    int nsaved, capsaved;
    kiln_tensor **saved; /* tensors the backward reads, owned array */
    /* The op's typed state (see KILN__NODE_STATE_NEW): a zeroed block of state_size bytes
     * whose type is named state_type; state_destroy (optional) frees what it owns. */
    void *state;
    size_t state_size;
    const char *state_type;
    void (*state_destroy)(void *state);
    double f[8];       /* DEPRECATED positional slots, being replaced by typed state */
    int64_t i[24];     /* DEPRECATED positional slots, being replaced by typed state */
    void *extra;       /* DEPRECATED: malloc'ed op data, freed with the node */
    uint64_t seq;      /* creation order: backward visits nodes from newest to oldest */
};

/* Typed per-op state. An op family declares its own struct and the forward attaches it:
 *
 *     typedef struct { int axis; bool keepdim; } sum_state;
 *     sum_state *st = KILN__NODE_STATE_NEW(n, sum_state);   // zeroed; NULL + error on OOM
 *     ...
 *     const sum_state *st = KILN__NODE_STATE(n, sum_state); // in the backward
 *
 * KILN__NODE_STATE checks that the node carries a state of that type name and size and
 * fails (NULL, the context's error set, naming the op) otherwise, so a backward can never
 * read another op's slots. The state is freed with the node. */
void *kiln__node_state_new(kiln__node *n, size_t size, const char *type);
void *kiln__node_state_get(const kiln__node *n, size_t size, const char *type);
#define KILN__NODE_STATE_NEW(n, T) ((T *)kiln__node_state_new((n), sizeof(T), #T))
#define KILN__NODE_STATE(n, T) ((T *)kiln__node_state_get((n), sizeof(T), #T))

/* True when grad mode is on and some input requires grad. */
bool kiln__grad_wanted(const kiln_ctx *ctx, int nin, kiln_tensor *const *in);
/* Attaches a new node with nin inputs (any number) to out (out->requires_grad becomes
 * true). NULL with the error set on host OOM. */
kiln__node *kiln__node_new(kiln_ctx *ctx, const char *op, kiln_tensor *out, int nin, kiln_tensor *const *in,
                           kiln__backward_fn backward);
/* Keeps t alive for the backward (any number; NULL t is a no-op). Fails only on host OOM,
 * with the context's error set. */
kiln_status kiln__node_save(kiln__node *n, kiln_tensor *t);
bool kiln__input_needs_grad(const kiln__node *n, int i);
/* Adds g (summed down to input i's shape where it is broadcast) into input i's gradient. */
kiln_status kiln__accum(kiln_ctx *ctx, kiln__node *n, int i, kiln_tensor *g);
/* The same for a g the caller made for this call and gives up (NULL-safe): g must be its
 * own new tensor, not gout, an input, a saved tensor or a view of one. When the slot is
 * empty and nothing else views g's storage, g becomes the gradient (no copy); otherwise it
 * is accumulated as by kiln__accum and freed. Either way the caller no longer holds g. */
kiln_status kiln__accum_owned(kiln_ctx *ctx, kiln__node *n, int i, kiln_tensor *g);
/* Sums g over broadcast dims so it has `ndim`/`shape` (shape must broadcast to g's). */
kiln_tensor *kiln__sum_to(kiln_ctx *ctx, kiln_tensor *g, int ndim, const int64_t *shape);
/* The last step of every op: with KILN_CHECK_NUMERICS=1 (or kiln_set_check_numerics) it
 * reads out back and fails naming `op` when it holds NaN or Inf. Returns out, or NULL
 * (out freed) on failure. NULL-safe. */
kiln_tensor *kiln__finish(kiln_ctx *ctx, const char *op, kiln_tensor *out);
/* Frees a node's memory without touching the tensors it references (kiln_close, where
 * every tensor goes anyway). NULL-safe. */
void kiln__node_discard(kiln__node *n);
/* Frees t's node (releasing its references); called when a tensor is really freed. */
void kiln__node_free(kiln_ctx *ctx, kiln__node *n);
/* Frees the tensors kiln__tensor_unref queued (after freeing nodes outside tensor.c). */
void kiln__release_dead(kiln_ctx *ctx);
/* Frees every tensor and node of the context (kiln_close). */
void kiln__tensors_destroy(kiln_ctx *ctx);
/* Drops one node reference to t; frees t when it was dropped by the user and unreferenced. */
void kiln__tensor_unref(kiln_tensor *t);

#endif

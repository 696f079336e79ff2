/* src/tensor/tensor_internal.h - the tensor floor: storage, geometry, lifetime and scopes,
 * host transfer, fills and copies (src/tensor/tensor.c). No autograd here: a tensor's node
 * is freed through ctx->node_release, which the autograd floor installs. Includes the device
 * floor; see src/core/core_internal.h for the floors. */
#ifndef KILN_TENSOR_INTERNAL_H
#define KILN_TENSOR_INTERNAL_H

#include "../device/device_internal.h"

/* Kernels index with 32-bit ints: the largest storage a tensor may have, in elements. The
 * margin keeps a launch rounded up to whole work-groups below INT32_MAX too, so a kernel's
 * `int i = get_global_id(0)` never wraps. */
#define KILN__MAX_ELEMS ((int64_t)INT32_MAX - 65536)

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
void kiln__set_guard(kiln_ctx *ctx, int64_t n);
int kiln__check_guards(kiln_ctx *ctx, char *msg, size_t cap);

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

    /* Autograd's fields (src/autograd/autograd.c): the tensor floor only frees them. */
    bool requires_grad;            /* a leaf the user marked, or the output of a recorded op */
    bool graph_freed;              /* backward ran through this tensor's graph and released it */
    struct kiln__node *node;       /* the op that made it (NULL for leaves); owned by the tensor */
    struct kiln_tensor *grad;      /* accumulated gradient of a leaf (kept: outside every scope) */
    struct kiln_tensor *gacc;      /* gradient being accumulated during one backward pass */
    int refs;                      /* references from nodes; the handle is freed when 0 and dropped */
    bool dropped;                  /* the user (or a scope) let it go; freed once refs is 0 */
    struct kiln_tensor *dead_next; /* the context's list of tensors waiting to be freed */
};

/* A new contiguous tensor with fresh storage; `op` names the caller for errors. */
kiln_tensor *kiln__tensor_new(kiln_ctx *ctx, const char *op, kiln_dtype dtype, int ndim, const int64_t *shape);
/* A new view of base's storage with the given geometry (no autograd: see src/ops/view.c). */
kiln_tensor *kiln__tensor_view(kiln_ctx *ctx, kiln_tensor *base, int ndim, const int64_t *shape, const int64_t *strides,
                               int64_t offset);
int64_t kiln__numel(int ndim, const int64_t *shape);
void kiln__contiguous_strides(int ndim, const int64_t *shape, int64_t *strides);
bool kiln__is_contiguous(const kiln_tensor *t);
/* "[5, 7, 11]" into buf. */
char *kiln__shape_str(int ndim, const int64_t *shape, char *buf, size_t cap);
/* Checks ctx and a list of inputs: NULL ctx, NULL inputs (error or propagation) and
 * tensors of another context. Returns false with the error set. */
bool kiln__check_inputs(kiln_ctx *ctx, const char *op, int n, kiln_tensor *const *ts);
/* Normalises a possibly negative axis for ndim dims; -1 when out of range. */
int kiln__axis(int axis, int ndim);

/* Frees the tensors kiln__tensor_unref queued (after freeing nodes outside tensor.c). */
void kiln__release_dead(kiln_ctx *ctx);
/* Drops one node reference to t; queues t to be freed when it was dropped by the user and
 * is no longer referenced (kiln__release_dead frees it). */
void kiln__tensor_unref(kiln_tensor *t);

/* ---- strided indexing shared with the kernels (cl_kernels/kiln_shared.h) ------------- */

/* Geometry of an elementwise launch: output is contiguous with `shape`; each input has its
 * own strides (0 where broadcast) and offset. kiln_geom comes from the header the kernels
 * include too (cl_kernels/kiln_shared.h), with the other structs both sides read. */
#include "../../cl_kernels/kiln_shared.h"
#define KILN__GEOM_IN KILN_GEOM_IN
typedef kiln_geom kiln__geom;

/* Fills g for an output of `shape` (ndim dims) and nin inputs whose strides are already
 * broadcast to ndim dims; size-1 dims are dropped and contiguous runs merged. */
void kiln__geom_build(kiln__geom *g, int ndim, const int64_t *shape, int nin, const int64_t (*strides)[KILN_MAX_DIMS]);

/* Copies src into dst (any views of one shape and dtype; dst must not overlap itself). */
kiln_status kiln__copy_into(kiln_ctx *ctx, const char *op, kiln_tensor *src, kiln_tensor *dst);
/* Copies t into a new contiguous tensor with a kernel. */
kiln_tensor *kiln__copy_contiguous(kiln_ctx *ctx, const char *op, kiln_tensor *t);

#endif

/* src/autograd/autograd_internal.h - the autograd floor: the tape's nodes with their typed
 * state, gradient slots, the backward traversal, grad mode (src/autograd/autograd.c). It
 * calls no op: the ops floor records nodes and writes the backward rules (see
 * src/ops/ops_internal.h for how an op becomes differentiable). Includes the tensor floor;
 * see src/core/core_internal.h for the floors. */
#ifndef KILN_AUTOGRAD_INTERNAL_H
#define KILN_AUTOGRAD_INTERNAL_H

#include "../tensor/tensor_internal.h"

typedef struct kiln__node kiln__node;
typedef kiln_status (*kiln__backward_fn)(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout);
struct kiln__node {
    const char *op;
    kiln__backward_fn backward;
    kiln_tensor *out;
    int nin;
    kiln_tensor **in; /* nin inputs (NULL entries allowed), owned array */
    int nsaved, capsaved;
    kiln_tensor **saved; /* tensors the backward reads, owned array */
    /* The op's typed state (see KILN__NODE_STATE_NEW): a zeroed block of state_size bytes
     * whose type is named state_type; state_destroy (optional) frees what it owns. */
    void *state;
    size_t state_size;
    const char *state_type;
    void (*state_destroy)(void *state);
    uint64_t seq; /* creation order: backward visits nodes from newest to oldest */
    /* The rule reads a gradient of any dense layout (a permutation of a contiguous one),
     * not only a contiguous one: the backward hands it the gradient as it accumulated (the
     * view ops; attention, which reads it through its strides) instead of a copy. */
    bool strided_grad;
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
/* Adds g, a gradient of exactly input i's shape, into input i's gradient slot (a leaf's
 * .grad, or the gradient being accumulated for the node that made it); a no-op when input i
 * needs no gradient. With own, g is the caller's own new tensor and the caller gives it up
 * (NULL-safe): it becomes the slot's tensor as it is when the slot is empty and nothing else
 * views its storage, and is freed otherwise. Without own, g stays the caller's and the slot
 * gets a copy. The ops floor's kiln__accum sums a broadcast gradient down first. */
kiln_status kiln__grad_add(kiln_ctx *ctx, kiln__node *n, int i, kiln_tensor *g, bool own);
/* The grad-ready hook (one per context; fn NULL removes it): during kiln_backward_ex, fn is
 * called once for every leaf that requires grad as soon as the last backward rule feeding
 * it has run, so that its .grad holds its final value for this backward (the value's
 * kernels are enqueued, not necessarily finished). Leaves the backward gives no gradient
 * are not reported; nor is anything after a backward rule failed. Data-parallel training
 * (src/dist) starts each bucket's all-reduce from it while the rest of the backward runs.
 * fn must not run ops that record on the tape. */
void kiln__set_grad_ready(kiln_ctx *ctx, void (*fn)(void *user, kiln_tensor *leaf), void *user);

/* The last step of every op: with KILN_CHECK_NUMERICS=1 (or kiln_ctx_set_check_numerics) it
 * reads out back and fails naming `op` when it holds NaN or Inf. Returns out, or NULL
 * (out freed) on failure. NULL-safe. */
kiln_tensor *kiln__finish(kiln_ctx *ctx, const char *op, kiln_tensor *out);

#endif

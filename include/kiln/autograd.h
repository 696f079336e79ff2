/* kiln/autograd.h - reverse-mode automatic differentiation.
 *
 * Mark leaves with kiln_tensor_set_requires_grad; every differentiable op whose input requires
 * grad records itself on its output. kiln_backward(loss) runs the recorded rules from the
 * newest op to the oldest and adds (+=) into each leaf's .grad (kiln_tensor_grad). As in PyTorch
 * the graph is released by the backward pass: a second backward through it is an error
 * unless the first one asked to retain it. The graph also ends where its tensors are
 * freed: a scope that ends releases every intermediate of the step. */
#ifndef KILN_AUTOGRAD_H
#define KILN_AUTOGRAD_H

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Marks a leaf (a tensor not made by a recorded op) as a parameter whose gradient is
 * accumulated. F32 only. Turning it off on a recorded output is an error (use detach). */
KILN_API kiln_status kiln_tensor_set_requires_grad(kiln_tensor *t, bool requires_grad);
KILN_API bool kiln_tensor_requires_grad(const kiln_tensor *t);
/* True when t was made by a recorded op (it has a backward rule), false for leaves. */
KILN_API bool kiln_tensor_has_grad_fn(const kiln_tensor *t);
/* The accumulated gradient of a leaf, or NULL when backward has not reached it yet. The
 * gradient belongs to t: it lives outside every scope and is freed with t. */
KILN_API kiln_tensor *kiln_tensor_grad(const kiln_tensor *t);
/* Sets t's gradient to zero (keeps its memory; as torch's zero_grad(set_to_none=False)). */
KILN_API kiln_status kiln_tensor_zero_grad(kiln_tensor *t);
/* Frees t's gradient (as set_to_none=True). */
KILN_API void kiln_tensor_clear_grad(kiln_tensor *t);

/* Backward from a one-element tensor (the seed gradient is 1). A tensor with more than one
 * element needs kiln_backward_ex with an explicit seed. */
KILN_API kiln_status kiln_backward(kiln_tensor *loss);
/* Backward from `out` with seed gradient `seed` (out's shape; NULL allowed only for one
 * element). retain_graph keeps the graph for another backward. */
KILN_API kiln_status kiln_backward_ex(kiln_tensor *out, kiln_tensor *seed, bool retain_graph);

/* Turns recording on or off for the context; returns the previous setting. Off is
 * PyTorch's no_grad: evaluation and optimizer updates. */
KILN_API bool kiln_ctx_set_grad_enabled(kiln_ctx *ctx, bool enabled);
KILN_API bool kiln_ctx_grad_enabled(const kiln_ctx *ctx);
/* A view of t's data that does not require grad (torch.Tensor.detach). */
KILN_API kiln_tensor *kiln_detach(kiln_ctx *ctx, kiln_tensor *t);

/* Checks every op's output for NaN and Inf and fails naming the first op that produced one
 * (it synchronises after every op: for debugging). KILN_CHECK_NUMERICS=1 in the
 * environment turns it on when a context opens. Returns the previous setting. */
KILN_API bool kiln_ctx_set_check_numerics(kiln_ctx *ctx, bool on);

#ifdef __cplusplus
}
#endif
#endif

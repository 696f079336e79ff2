/* kiln/module.h - defining a module in C, as a torch.nn.Module subclass: a kind name, a
 * typed state, a forward over N inputs giving M outputs, and named children, parameters
 * and buffers. Every built-in layer (kiln/nn.h) is built on this same API.
 *
 *     typedef struct block { kiln_module *fc1, *fc2; } block;   // the typed state
 *
 *     static kiln_status block_forward(kiln_module *m, int nin, kiln_tensor *const *in,
 *                                      int nout, kiln_tensor **out) {
 *         (void)nin, (void)nout;                   // 1 and 1: kiln checked them
 *         block *b = kiln_module_data(m);
 *         kiln_ctx *ctx = kiln_module_ctx(m);
 *         kiln_tensor *h = kiln_relu(ctx, kiln_forward(b->fc1, in[0]));
 *         out[0] = kiln_add(ctx, in[0], kiln_forward(b->fc2, h));
 *         return out[0] ? KILN_OK : kiln_error_status(ctx);
 *     }
 *
 *     static const kiln_module_def block_def = {
 *         .kind = "Block", .state_size = sizeof(block), .forward = block_forward,
 *         .num_inputs = 1, .num_outputs = 1};
 *
 *     kiln_module *block_new(kiln_ctx *ctx, int64_t dim) {
 *         kiln_module *m = kiln_module_new(ctx, &block_def);
 *         if (!m) return NULL;
 *         block *b = kiln_module_data(m);
 *         // add_child owns the child from now on, also when it fails; a child made only
 *         // when its turn comes is never left over when an earlier one fails
 *         if (kiln_module_add_child(m, "fc1", b->fc1 = kiln_nn_linear(ctx, dim, dim, true)) != KILN_OK ||
 *             kiln_module_add_child(m, "fc2", b->fc2 = kiln_nn_linear(ctx, dim, dim, true)) != KILN_OK) {
 *             kiln_module_free(m);                 // destroy() once, then children, tensors
 *             return NULL;
 *         }
 *         return m;                                // state_dict: fc1.weight, fc1.bias, ...
 *     }
 *
 * Ownership. kiln_module_new returns a module the caller frees with kiln_module_free,
 * unless it is handed to a parent (kiln_module_add_child, a container): the parent owns
 * it then and frees it with itself. The add functions take ownership of what they are
 * given also when they fail (it is freed there), so a constructor can be passed directly;
 * the exceptions, which are left untouched, are a child that already has a parent and a
 * child that is the module itself or one of its ancestors. A NULL child or tensor (its
 * constructor failed) makes them fail keeping the constructor's error.
 *
 * Names are state_dict keys: 1 to 63 characters, no '.', unique among a module's
 * children, parameters and buffers. kiln_module_state lists, as torch's state_dict, a
 * module's own parameters (in registration order), then its own buffers, then each
 * child's entries under "<child>.".
 *
 * Errors: an op failing inside a module's forward gets the innermost module's
 * description and path appended to the message: " [in BasicBlock(64, 64) at layer1.0]".
 */
#ifndef KILN_MODULE_H
#define KILN_MODULE_H

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kiln_module kiln_module;

/* m's forward: in[0..nin) are never NULL; it writes out[0..nout) (kiln sets them to NULL
 * before the call) and returns KILN_OK, or an error with the context's error set (an op's
 * NULL result already did that: return kiln_error_status(ctx)). */
typedef kiln_status (*kiln_forward_fn)(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out);

typedef struct kiln_module_def {
    /* The type name of describe and error notes ("BasicBlock"); copied, 1 to 63 chars. */
    const char *kind;
    /* Bytes of typed state kiln allocates zeroed with the module (kiln_module_data); 0: none. */
    size_t state_size;
    /* Required. */
    kiln_forward_fn forward;
    /* The forward takes num_inputs inputs, of which the last optional_inputs may be left
     * out (attention's mask), and gives num_outputs outputs. num_inputs, num_outputs >= 1. */
    int num_inputs, optional_inputs, num_outputs;
    /* Frees what the state owns (not the state itself, nor children or registered tensors,
     * which kiln frees after it). Called exactly once, by kiln_module_free, also for a
     * module whose construction failed half-way. NULL: nothing to free. */
    void (*destroy)(kiln_module *m);
    /* Writes the constructor arguments torch-style ("64, 128, stride=2") for
     * kiln_module_describe and error notes. NULL: none, "BasicBlock()". */
    void (*describe)(const kiln_module *m, char *buf, size_t cap);
} kiln_module_def;

/* A new module of `def` (copied: it may live on the stack) in training mode, with its
 * state zeroed and no children or tensors. NULL with the context's error set for a NULL
 * def, kind or forward, a bad kind or bad input/output counts (a NULL ctx: NULL with
 * kiln_last_error() set). Free with kiln_module_free. */
KILN_API kiln_module *kiln_module_new(kiln_ctx *ctx, const kiln_module_def *def);
/* The typed state of m (state_size bytes), or NULL when m is NULL or has none. */
KILN_API void *kiln_module_data(const kiln_module *m);
/* def.kind of m ("Linear", "Sequential", "BasicBlock"), or "(null)". */
KILN_API const char *kiln_module_kind(const kiln_module *m);

/* Registers `child` under `name`; m owns it from now on (see Ownership above). The child
 * takes m's train/eval mode. */
KILN_API kiln_status kiln_module_add_child(kiln_module *m, const char *name, kiln_module *child);
/* Registers t (of m's context) as a trainable parameter: requires_grad is turned on and t
 * leaves every scope; m owns it, also on failure. */
KILN_API kiln_status kiln_module_add_parameter(kiln_module *m, const char *name, kiln_tensor *t);
/* Registers t as a buffer (running statistics: saved and loaded, not trained); m owns it,
 * also on failure. */
KILN_API kiln_status kiln_module_add_buffer(kiln_module *m, const char *name, kiln_tensor *t);

/* Runs m's forward: nin inputs (none NULL), nout outputs written to out (all NULL on
 * failure). Fails with the context's error set when m is NULL, an input is NULL (keeping
 * the error of the op that gave the NULL), the counts differ from m's definition, or the
 * forward fails; an op's error inside gets m named in a note (see above). The outputs are
 * ordinary tensors of the current scope. */
KILN_API kiln_status kiln_module_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out);
/* One input, one output (m's definition must say so): NULL on failure, as an op. */
KILN_API kiln_tensor *kiln_forward(kiln_module *m, kiln_tensor *x);

/* Frees m, its children and its tensors (destroy first). m must not be a registered child
 * of another module (its parent frees it). NULL is fine. */
KILN_API void kiln_module_free(kiln_module *m);
KILN_API kiln_ctx *kiln_module_ctx(const kiln_module *m);

/* ---- tree ------------------------------------------------------------------------------- */

KILN_API int kiln_module_num_children(const kiln_module *m);
KILN_API kiln_module *kiln_module_child(const kiln_module *m, int index);
/* The name of child `index` ("conv1", "0"), or NULL. */
KILN_API const char *kiln_module_child_name(const kiln_module *m, int index);
/* The descendant at a dotted path ("layer1.0.downsample"), or NULL. */
KILN_API kiln_module *kiln_module_find_child(const kiln_module *m, const char *path);
/* Renames child `index` (validated as above): a container's "0" becomes "features". */
KILN_API kiln_status kiln_module_set_child_name(kiln_module *m, int index, const char *name);

/* train (true) or eval (false), for m and every descendant: dropout and batch norm switch. */
KILN_API void kiln_module_train(kiln_module *m, bool training);
KILN_API bool kiln_module_is_training(const kiln_module *m);
/* "Linear(in_features=784, out_features=128, bias=True)", children nested as torch's repr.
 * Always NUL-terminated (truncated to cap); returns buf. */
KILN_API char *kiln_module_describe(const kiln_module *m, char *buf, size_t cap);

/* ---- parameters and buffers -------------------------------------------------------------- */

typedef struct kiln_named_tensor {
    char name[128]; /* dotted state_dict key */
    kiln_tensor *tensor;
    bool is_buffer; /* running statistics; not trained */
} kiln_named_tensor;

/* Writes up to cap parameters (trainable, in state_dict order) and returns how many exist
 * (call with cap 0 to count). The tensors stay m's. */
KILN_API int kiln_module_parameters(kiln_module *m, kiln_tensor **out, int cap);
/* Parameters and buffers with their names, in state_dict order; returns how many exist. */
KILN_API int kiln_module_state(kiln_module *m, kiln_named_tensor *out, int cap);
/* The parameter or buffer of that dotted name, or NULL. */
KILN_API kiln_tensor *kiln_module_find(kiln_module *m, const char *name);
/* Total number of trainable elements. */
KILN_API int64_t kiln_module_num_elements(kiln_module *m);
/* Turns requires_grad of every parameter of m and its descendants off (freeze) or on. */
KILN_API void kiln_module_set_requires_grad(kiln_module *m, bool requires_grad);

#ifdef __cplusplus
}
#endif
#endif

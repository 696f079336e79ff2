/* src/ops/registry.h - the one list of kiln's public ops (internal; not installed).
 *
 * Every op of the public API (ops.h, tensor.h's creation functions and views,
 * functional.h, the optimizers' updates and gradient clipping of optim.h) has one line in
 * KILN__OPS below. Everything that enumerates ops is derived from it:
 *   - enum kiln__op and the name/metadata table of src/ops/registry.c (size static-asserted);
 *   - `kiln ops` (tools/ops.c): the inventory and a smoke run of each op, whose run
 *     function run_<name> must exist for every line (a designated-initialiser table, so a
 *     missing one fails to compile);
 *   - tests/test_sweep.c: every op of the list must be reached by the sweep of every kernel;
 *   - tests/test_registry.c: a differentiable op must record a backward, a golden case
 *     must be in tests/golden/<family>.safetensors, the reference tests must call the op,
 *     and every `kiln_tensor *kiln_x(kiln_ctx *, ...)` of functional.h, ops.h and tensor.h
 *     must be on the list.
 *
 * Adding an op: its line here (in its family's block), its run_<name> in tools/ops.c, its
 * cases in the sweep and in its family's test (and gen_<family>.py for a golden case).
 *
 * A line: X(ID, name, fn, FAMILY, grad, golden, tests, refs)
 *   ID      enum kiln__op value KILN__OP_<ID>
 *   name    the op's name in `kiln ops` (the function without kiln_, or a variant of it:
 *           gelu_tanh is kiln_gelu with tanh_approx, upsample_* are kiln_upsample's modes)
 *   fn      the public function
 *   FAMILY  KILN__FAM_<FAMILY>: its source and kernel files (KILN__FAMILIES)
 *   grad    KILN__GRAD: differentiable (records a backward rule), or KILN__NOGRAD
 *   golden  KILN__G(prefix): a key of tests/golden/<family>.safetensors starts with prefix
 *           (names from tests/golden/gen_<family>.py); KILN__GP(prefix, i, v): and the
 *           case's parameter vector "<prefix>N.p" holds v at index i (upsample's modes share
 *           a prefix); KILN__G_NONE: no PyTorch case (the reference is a host computation).
 *           G_NONE ops: random numbers (kiln's Philox stream is not torch's generator, so
 *           no value can match: test_random.c checks moments and ranges; test_sample.c
 *           checks sample_logits' frequencies against softmax), and the
 *           creation ops that are defined by their arguments alone with no arithmetic
 *           (from_host, empty, full, zeros, ones, fill, copy: a byte copy or a constant,
 *           checked bit-exactly on the host; torch would only restate the argument).
 *           arange computes values, so it has a case.
 *   tests   the test files (under tests/) that check the op against a reference
 *   refs    KILN__REF_*: what those tests compare against besides PyTorch golden files
 */
#ifndef KILN_OPS_REGISTRY_H
#define KILN_OPS_REGISTRY_H

#include <stdbool.h>

/* X(ID, name, source file, kernel file or NULL) - an op family: its host code and kernels. */
#define KILN__FAMILIES(X)                                                                                              \
    X(COPY, copy, "src/tensor/tensor.c", "cl_kernels/copy.cl")                                                         \
    X(VIEW, view, "src/ops/view.c", NULL)                                                                              \
    X(RANDOM, random, "src/ops/random.c", "cl_kernels/random.cl")                                                      \
    X(ELEMENTWISE, elementwise, "src/ops/elementwise.c", "cl_kernels/elementwise.cl")                                  \
    X(REDUCE, reduce, "src/ops/reduce.c", "cl_kernels/reduce.cl")                                                      \
    X(MATMUL, matmul, "src/ops/matmul.c", "cl_kernels/gemm.cl")                                                        \
    X(ACTIVATION, activation, "src/ops/activation.c", "cl_kernels/activation.cl")                                      \
    X(SHAPE, shape, "src/ops/shape.c", "cl_kernels/shape.cl")                                                          \
    X(CONV, conv, "src/ops/conv.c", "cl_kernels/conv.cl")                                                              \
    X(POOL, pool, "src/ops/pool.c", "cl_kernels/pool.cl")                                                              \
    X(NORM, norm, "src/ops/norm.c", "cl_kernels/norm.cl")                                                              \
    X(RNN, rnn, "src/ops/rnn.c", "cl_kernels/rnn.cl")                                                                  \
    X(LOSS, loss, "src/ops/loss.c", "cl_kernels/loss.cl")                                                              \
    X(SAMPLE, sample, "src/ops/sample.c", "cl_kernels/sample.cl")                                                      \
    X(ATTENTION, attention, "src/ops/attention.c", "cl_kernels/attention.cl")                                          \
    X(OPTIM, optim, "src/optim/optim.c", "cl_kernels/optim.cl")                                                        \
    X(CAST, cast, "src/ops/cast.c", "cl_kernels/cast.cl")

#define KILN__GRAD true
#define KILN__NOGRAD false
#define KILN__G_NONE NULL, -1, 0
#define KILN__G(prefix) prefix, -1, 0
#define KILN__GP(prefix, index, value) prefix, index, value
/* What the reference tests compare an op against (PyTorch golden cases are the golden column). */
#define KILN__REF_F64 1u /* a plain-C double-precision host computation */
#define KILN__REF_FD 2u  /* gradients by finite differences */

/* clang-format off */
#define KILN__OPS(X)                                                                                                   \
    /* creation and copies (src/tensor/tensor.c, cl_kernels/copy.cl); golden copy.safetensors (gen_copy.py) */     \
    X(FROM_HOST, from_host, kiln_from_host, COPY, KILN__NOGRAD, KILN__G_NONE, "test_tensor.c", KILN__REF_F64)          \
    X(EMPTY, empty, kiln_empty, COPY, KILN__NOGRAD, KILN__G_NONE, "test_shape.c", KILN__REF_F64)                       \
    X(FULL, full, kiln_full, COPY, KILN__NOGRAD, KILN__G_NONE, "test_tensor.c", KILN__REF_F64)                         \
    X(ZEROS, zeros, kiln_zeros, COPY, KILN__NOGRAD, KILN__G_NONE, "test_tensor.c", KILN__REF_F64)                      \
    X(ONES, ones, kiln_ones, COPY, KILN__NOGRAD, KILN__G_NONE, "test_tensor.c", KILN__REF_F64)                         \
    X(ARANGE, arange, kiln_arange, COPY, KILN__NOGRAD, KILN__G("arange."), "test_tensor.c", KILN__REF_F64)                   \
    X(FILL, fill, kiln_fill, COPY, KILN__NOGRAD, KILN__G_NONE, "test_tensor.c", KILN__REF_F64)                         \
    X(COPY, copy, kiln_copy, COPY, KILN__NOGRAD, KILN__G_NONE, "test_sweep.c", KILN__REF_F64)                          \
    X(CONTIGUOUS, contiguous, kiln_contiguous, COPY, KILN__GRAD, KILN__G("contiguous."), "test_tensor.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(CLONE, clone, kiln_clone, COPY, KILN__GRAD, KILN__G("clone."), "test_tensor.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    /* views (src/ops/view.c): test_tensor.c, host view model and golden view.safetensors (gen_view.py) */      \
    X(RESHAPE, reshape, kiln_reshape, VIEW, KILN__GRAD, KILN__G("reshape."), "test_tensor.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(VIEW, view, kiln_view, VIEW, KILN__GRAD, KILN__G("view."), "test_tensor.c", KILN__REF_F64)                           \
    X(TRANSPOSE, transpose, kiln_transpose, VIEW, KILN__GRAD, KILN__G("transpose."), "test_tensor.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(PERMUTE, permute, kiln_permute, VIEW, KILN__GRAD, KILN__G("permute."), "test_tensor.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(SLICE, slice, kiln_slice, VIEW, KILN__GRAD, KILN__G("slice."), "test_tensor.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(EXPAND, expand, kiln_expand, VIEW, KILN__GRAD, KILN__G("expand."), "test_tensor.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(UNSQUEEZE, unsqueeze, kiln_unsqueeze, VIEW, KILN__GRAD, KILN__G("unsqueeze."), "test_tensor.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(SQUEEZE, squeeze, kiln_squeeze, VIEW, KILN__GRAD, KILN__G("squeeze."), "test_tensor.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    /* random (tests/test_random.c: moments and ranges) */                                                             \
    X(RAND_UNIFORM, rand_uniform, kiln_rand_uniform, RANDOM, KILN__NOGRAD, KILN__G_NONE, "test_random.c", KILN__REF_F64) \
    X(RAND_NORMAL, rand_normal, kiln_rand_normal, RANDOM, KILN__NOGRAD, KILN__G_NONE, "test_random.c", KILN__REF_F64) \
    /* elementwise: double reference, golden elementwise.safetensors (gen_elementwise.py: "<op>.<variant>.*") */ \
    X(ADD, add, kiln_add, ELEMENTWISE, KILN__GRAD, KILN__G("add."), "test_elementwise.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(SUB, sub, kiln_sub, ELEMENTWISE, KILN__GRAD, KILN__G("sub."), "test_elementwise.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(MUL, mul, kiln_mul, ELEMENTWISE, KILN__GRAD, KILN__G("mul."), "test_elementwise.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(DIV, div, kiln_div, ELEMENTWISE, KILN__GRAD, KILN__G("div."), "test_elementwise.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(POW, pow, kiln_pow, ELEMENTWISE, KILN__GRAD, KILN__G("pow."), "test_elementwise.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(MINIMUM, minimum, kiln_minimum, ELEMENTWISE, KILN__GRAD, KILN__G("minimum."), "test_elementwise.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(MAXIMUM, maximum, kiln_maximum, ELEMENTWISE, KILN__GRAD, KILN__G("maximum."), "test_elementwise.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(EQ, eq, kiln_eq, ELEMENTWISE, KILN__NOGRAD, KILN__G("eq."), "test_elementwise.c", KILN__REF_F64)                  \
    X(NE, ne, kiln_ne, ELEMENTWISE, KILN__NOGRAD, KILN__G("ne."), "test_elementwise.c", KILN__REF_F64)                  \
    X(LT, lt, kiln_lt, ELEMENTWISE, KILN__NOGRAD, KILN__G("lt."), "test_elementwise.c", KILN__REF_F64)                  \
    X(LE, le, kiln_le, ELEMENTWISE, KILN__NOGRAD, KILN__G("le."), "test_elementwise.c", KILN__REF_F64)                  \
    X(GT, gt, kiln_gt, ELEMENTWISE, KILN__NOGRAD, KILN__G("gt."), "test_elementwise.c", KILN__REF_F64)                  \
    X(GE, ge, kiln_ge, ELEMENTWISE, KILN__NOGRAD, KILN__G("ge."), "test_elementwise.c", KILN__REF_F64)                  \
    X(WHERE, where, kiln_where, ELEMENTWISE, KILN__GRAD, KILN__G("where."), "test_elementwise.c", KILN__REF_F64)           \
    X(NEG, neg, kiln_neg, ELEMENTWISE, KILN__GRAD, KILN__G("neg."), "test_elementwise.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(EXP, exp, kiln_exp, ELEMENTWISE, KILN__GRAD, KILN__G("exp."), "test_elementwise.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(LOG, log, kiln_log, ELEMENTWISE, KILN__GRAD, KILN__G("log."), "test_elementwise.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(SQRT, sqrt, kiln_sqrt, ELEMENTWISE, KILN__GRAD, KILN__G("sqrt."), "test_elementwise.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(ABS, abs, kiln_abs, ELEMENTWISE, KILN__GRAD, KILN__G("abs."), "test_elementwise.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(ADD_SCALAR, add_scalar, kiln_add_scalar, ELEMENTWISE, KILN__GRAD, KILN__G("add_scalar."), "test_elementwise.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(MUL_SCALAR, mul_scalar, kiln_mul_scalar, ELEMENTWISE, KILN__GRAD, KILN__G("mul_scalar."), "test_elementwise.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(POW_SCALAR, pow_scalar, kiln_pow_scalar, ELEMENTWISE, KILN__GRAD, KILN__G("pow_scalar."), "test_elementwise.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(MINIMUM_SCALAR, minimum_scalar, kiln_minimum_scalar, ELEMENTWISE, KILN__GRAD, KILN__G("minimum_scalar."), "test_elementwise.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(MAXIMUM_SCALAR, maximum_scalar, kiln_maximum_scalar, ELEMENTWISE, KILN__GRAD, KILN__G("maximum_scalar."), "test_elementwise.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    /* reductions: double reference; finite differences; golden reduce.safetensors (gen_reduce.py) */            \
    X(SUM, sum, kiln_sum, REDUCE, KILN__GRAD, KILN__G("sum."), "test_reduce.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(MEAN, mean, kiln_mean, REDUCE, KILN__GRAD, KILN__G("mean."), "test_reduce.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(MAX, max, kiln_max, REDUCE, KILN__GRAD, KILN__G("max."), "test_reduce.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(MIN, min, kiln_min, REDUCE, KILN__GRAD, KILN__G("min."), "test_reduce.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    X(ARGMAX, argmax, kiln_argmax, REDUCE, KILN__NOGRAD, KILN__G("argmax."), "test_reduce.c", KILN__REF_F64)               \
    /* matrix products: double reference; golden matmul.safetensors (gen_matmul.py: matmul.*, matmul_ex.fN.*) */ \
    X(MATMUL, matmul, kiln_matmul, MATMUL, KILN__GRAD, KILN__G("matmul."), "test_matmul.c", KILN__REF_F64)                  \
    X(MATMUL_EX, matmul_ex, kiln_matmul_ex, MATMUL, KILN__GRAD, KILN__G("matmul_ex."), "test_matmul.c test_autograd.c", KILN__REF_F64 | KILN__REF_FD) \
    /* activations: tests/golden/activation.safetensors (gen_activation.py: "<case>.x" ...) */                       \
    X(RELU, relu, kiln_relu, ACTIVATION, KILN__GRAD, KILN__G("relu."), "test_activation.c", KILN__REF_F64 | KILN__REF_FD) \
    X(LEAKY_RELU, leaky_relu, kiln_leaky_relu, ACTIVATION, KILN__GRAD, KILN__G("leaky_relu_"), "test_activation.c", KILN__REF_F64 | KILN__REF_FD) \
    X(ELU, elu, kiln_elu, ACTIVATION, KILN__GRAD, KILN__G("elu_"), "test_activation.c", KILN__REF_F64 | KILN__REF_FD) \
    X(GELU, gelu, kiln_gelu, ACTIVATION, KILN__GRAD, KILN__G("gelu."), "test_activation.c", KILN__REF_F64 | KILN__REF_FD) \
    X(GELU_TANH, gelu_tanh, kiln_gelu, ACTIVATION, KILN__GRAD, KILN__G("gelu_tanh."), "test_activation.c", KILN__REF_F64 | KILN__REF_FD) \
    X(SIGMOID, sigmoid, kiln_sigmoid, ACTIVATION, KILN__GRAD, KILN__G("sigmoid."), "test_activation.c", KILN__REF_F64 | KILN__REF_FD) \
    X(TANH, tanh, kiln_tanh, ACTIVATION, KILN__GRAD, KILN__G("tanh."), "test_activation.c", KILN__REF_F64 | KILN__REF_FD) \
    X(SOFTPLUS, softplus, kiln_softplus, ACTIVATION, KILN__GRAD, KILN__G("softplus_"), "test_activation.c", KILN__REF_F64 | KILN__REF_FD) \
    X(SOFTMAX, softmax, kiln_softmax, ACTIVATION, KILN__GRAD, KILN__G("softmax_"), "test_activation.c", KILN__REF_F64 | KILN__REF_FD) \
    X(LOG_SOFTMAX, log_softmax, kiln_log_softmax, ACTIVATION, KILN__GRAD, KILN__G("log_softmax_"), "test_activation.c", KILN__REF_F64 | KILN__REF_FD) \
    /* shape ops: golden shape.safetensors (gen_shape.py: cat, stack, pad, flatten, isel, gather) */                  \
    X(CONCAT, concat, kiln_concat, SHAPE, KILN__GRAD, KILN__G("cat"), "test_shape.c", KILN__REF_F64 | KILN__REF_FD)   \
    X(STACK, stack, kiln_stack, SHAPE, KILN__GRAD, KILN__G("stack"), "test_shape.c", KILN__REF_F64 | KILN__REF_FD)    \
    X(PAD, pad, kiln_pad, SHAPE, KILN__GRAD, KILN__G("pad."), "test_shape.c", KILN__REF_F64 | KILN__REF_FD)           \
    X(FLATTEN, flatten, kiln_flatten, SHAPE, KILN__GRAD, KILN__G("flatten."), "test_shape.c", KILN__REF_F64 | KILN__REF_FD) \
    X(INDEX_SELECT, index_select, kiln_index_select, SHAPE, KILN__GRAD, KILN__G("isel"), "test_shape.c", KILN__REF_F64 | KILN__REF_FD) \
    X(GATHER, gather, kiln_gather, SHAPE, KILN__GRAD, KILN__G("gather"), "test_shape.c", KILN__REF_F64 | KILN__REF_FD) \
    /* convolution: golden conv.safetensors (gen_conv.py: conv_*, convt_*) */                                         \
    X(CONV2D, conv2d, kiln_conv2d, CONV, KILN__GRAD, KILN__G("conv_"), "test_conv.c", KILN__REF_F64 | KILN__REF_FD)   \
    X(CONV_TRANSPOSE2D, conv_transpose2d, kiln_conv_transpose2d, CONV, KILN__GRAD, KILN__G("convt_"), "test_conv.c", KILN__REF_F64 | KILN__REF_FD) \
    /* pooling: golden pool.safetensors (gen_pool.py: mp*, ap*, gp*, up* with p = out_h out_w mode align_corners) */  \
    X(MAX_POOL2D, max_pool2d, kiln_max_pool2d, POOL, KILN__GRAD, KILN__G("mp"), "test_pool.c", KILN__REF_F64 | KILN__REF_FD) \
    X(AVG_POOL2D, avg_pool2d, kiln_avg_pool2d, POOL, KILN__GRAD, KILN__G("ap"), "test_pool.c", KILN__REF_F64 | KILN__REF_FD) \
    X(GLOBAL_AVG_POOL2D, global_avg_pool2d, kiln_global_avg_pool2d, POOL, KILN__GRAD, KILN__G("gp"), "test_pool.c", KILN__REF_F64 | KILN__REF_FD) \
    X(UPSAMPLE_NEAREST, upsample_nearest, kiln_upsample, POOL, KILN__GRAD, KILN__GP("up", 2, 0), "test_pool.c", KILN__REF_F64 | KILN__REF_FD) \
    X(UPSAMPLE_BILINEAR, upsample_bilinear, kiln_upsample, POOL, KILN__GRAD, KILN__GP("up", 2, 1), "test_pool.c", KILN__REF_F64 | KILN__REF_FD) \
    /* normalisation, dropout, embedding: golden norm.safetensors (gen_norm.py: bn*, ln*, do_*, emb*) */             \
    X(BATCH_NORM, batch_norm, kiln_batch_norm, NORM, KILN__GRAD, KILN__G("bn"), "test_norm.c", KILN__REF_F64 | KILN__REF_FD) \
    X(LAYER_NORM, layer_norm, kiln_layer_norm, NORM, KILN__GRAD, KILN__G("ln"), "test_norm.c", KILN__REF_F64 | KILN__REF_FD) \
    X(DROPOUT, dropout, kiln_dropout, NORM, KILN__GRAD, KILN__G("do_"), "test_norm.c", KILN__REF_F64 | KILN__REF_FD)  \
    X(EMBEDDING, embedding, kiln_embedding, NORM, KILN__GRAD, KILN__G("emb"), "test_norm.c", KILN__REF_F64 | KILN__REF_FD) \
    /* recurrent layers, one function with four modes: golden rnn.safetensors (gen_rnn.py: lstm*, gru*, rnn_tanh*, rnn_relu*) */ \
    X(LSTM, lstm, kiln_rnn, RNN, KILN__GRAD, KILN__G("lstm"), "test_rnn.c", KILN__REF_FD)                               \
    X(GRU, gru, kiln_rnn, RNN, KILN__GRAD, KILN__G("gru"), "test_rnn.c", KILN__REF_FD)                                  \
    X(RNN_TANH, rnn_tanh, kiln_rnn, RNN, KILN__GRAD, KILN__G("rnn_tanh"), "test_rnn.c", KILN__REF_FD)                   \
    X(RNN_RELU, rnn_relu, kiln_rnn, RNN, KILN__GRAD, KILN__G("rnn_relu"), "test_rnn.c", KILN__REF_FD)                   \
    /* losses: golden loss.safetensors (gen_loss.py: mse., l1., ..., ce*, nll*, *_penalty.) */                        \
    X(MSE_LOSS, mse_loss, kiln_mse_loss, LOSS, KILN__GRAD, KILN__G("mse."), "test_loss.c", KILN__REF_F64 | KILN__REF_FD) \
    X(L1_LOSS, l1_loss, kiln_l1_loss, LOSS, KILN__GRAD, KILN__G("l1."), "test_loss.c", KILN__REF_F64 | KILN__REF_FD)  \
    X(SMOOTH_L1_LOSS, smooth_l1_loss, kiln_smooth_l1_loss, LOSS, KILN__GRAD, KILN__G("smooth_l1."), "test_loss.c", KILN__REF_F64 | KILN__REF_FD) \
    X(CROSS_ENTROPY, cross_entropy, kiln_cross_entropy, LOSS, KILN__GRAD, KILN__G("ce"), "test_loss.c", KILN__REF_F64 | KILN__REF_FD) \
    X(CROSS_ENTROPY_EX, cross_entropy_ex, kiln_cross_entropy_ex, LOSS, KILN__GRAD, KILN__G("ce.w."), "test_loss.c", KILN__REF_F64 | KILN__REF_FD) \
    X(NLL_LOSS, nll_loss, kiln_nll_loss, LOSS, KILN__GRAD, KILN__G("nll"), "test_loss.c", KILN__REF_F64 | KILN__REF_FD) \
    X(BCE_LOSS, bce_loss, kiln_bce_loss, LOSS, KILN__GRAD, KILN__G("bce."), "test_loss.c", KILN__REF_F64 | KILN__REF_FD) \
    X(BCE_WITH_LOGITS, bce_with_logits, kiln_bce_with_logits, LOSS, KILN__GRAD, KILN__G("bcel."), "test_loss.c", KILN__REF_F64 | KILN__REF_FD) \
    X(LSGAN_LOSS, lsgan_loss, kiln_lsgan_loss, LOSS, KILN__GRAD, KILN__G("lsgan."), "test_loss.c", KILN__REF_F64 | KILN__REF_FD) \
    X(L1_PENALTY, l1_penalty, kiln_l1_penalty, LOSS, KILN__GRAD, KILN__G("l1_penalty."), "test_loss.c", KILN__REF_F64 | KILN__REF_FD) \
    X(L2_PENALTY, l2_penalty, kiln_l2_penalty, LOSS, KILN__GRAD, KILN__G("l2_penalty."), "test_loss.c", KILN__REF_F64 | KILN__REF_FD) \
    /* sampling for generation (tests/test_sample.c: argmax limits and frequencies against softmax) */              \
    X(SAMPLE_LOGITS, sample_logits, kiln_sample_logits, SAMPLE, KILN__NOGRAD, KILN__G_NONE, "test_sample.c", KILN__REF_F64) \
    /* attention: golden attention.safetensors (gen_attention.py: sdpa.<case>.*); composed path, finite differences */ \
    X(SCALED_DOT_PRODUCT_ATTENTION, scaled_dot_product_attention, kiln_scaled_dot_product_attention, ATTENTION, KILN__GRAD, KILN__G("sdpa."), "test_attention.c", KILN__REF_F64 | KILN__REF_FD) \
    /* optimizer updates and clipping (not differentiable): golden optim.safetensors */                               \
    /* (gen_optim.py: "<config>.traj.*", clipN.*, clipv.*) */                                                         \
    X(SGD, sgd, kiln_sgd, OPTIM, KILN__NOGRAD, KILN__G("sgd_"), "test_optim.c", KILN__REF_F64)                         \
    X(RMSPROP, rmsprop, kiln_rmsprop, OPTIM, KILN__NOGRAD, KILN__G("rmsprop_"), "test_optim.c", KILN__REF_F64)         \
    X(ADAM, adam, kiln_adam, OPTIM, KILN__NOGRAD, KILN__G("adam_"), "test_optim.c", KILN__REF_F64)                     \
    X(ADAMW, adamw, kiln_adamw, OPTIM, KILN__NOGRAD, KILN__G("adamw_"), "test_optim.c", KILN__REF_F64)                 \
    X(CLIP_GRAD_NORM, clip_grad_norm, kiln_clip_grad_norm_tensor, OPTIM, KILN__NOGRAD, KILN__G("clip0."), "test_optim.c", KILN__REF_F64) \
    X(CLIP_GRAD_VALUE, clip_grad_value, kiln_clip_grad_value, OPTIM, KILN__NOGRAD, KILN__G("clipv."), "test_optim.c", 0u) \
    /* dtype conversions: host reference and golden cast.safetensors (gen_cast.py: torch's .to()) */                 \
    X(TO_DTYPE, to_dtype, kiln_to_dtype, CAST, KILN__GRAD, KILN__G("to_dtype."), "test_half.c", KILN__REF_F64)
/* clang-format on */

typedef enum kiln__family {
#define KILN__X(id, name, src, cl) KILN__FAM_##id,
    KILN__FAMILIES(KILN__X)
#undef KILN__X
        KILN__FAM_COUNT
} kiln__family;

typedef enum kiln__op {
#define KILN__X(id, name, fn, fam, grad, golden, tests, refs) KILN__OP_##id,
    KILN__OPS(KILN__X)
#undef KILN__X
        KILN__OP_COUNT
} kiln__op;

/* One family's row. */
typedef struct kiln__family_info {
    const char *name;   /* golden cases live in tests/golden/<name>.safetensors */
    const char *source; /* relative to the source root */
    const char *kernel; /* relative to the source root; NULL: none of its own */
} kiln__family_info;

/* One op's row of KILN__OPS. */
typedef struct kiln__op_info {
    const char *name;             /* `kiln ops` name */
    const char *fn;               /* the public function, "kiln_..." */
    kiln__family family;          /* KILN__FAM_* */
    bool grad;                    /* differentiable: its output records a backward rule */
    const char *golden_prefix;    /* NULL: no PyTorch golden case */
    int golden_pidx, golden_pval; /* golden_pidx >= 0: "<prefix>N.p"[golden_pidx] == golden_pval */
    const char *tests;            /* space-separated test files under tests/ */
    unsigned refs;                /* KILN__REF_* */
} kiln__op_info;

/* The row of op (NULL when op is out of range). */
const kiln__op_info *kiln__op_get(kiln__op op);
/* Its name ("?" when out of range). */
const char *kiln__op_name(kiln__op op);
/* The op named name (the `kiln ops` name), or -1. */
int kiln__op_find(const char *name);
/* The row of family f (NULL when out of range). */
const kiln__family_info *kiln__family_get(kiln__family f);

#endif

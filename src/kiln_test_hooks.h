/* src/kiln_test_hooks.h - the one header through which tests (and kiln's tools) reach
 * kiln's internals: the per-context hooks (kiln__hooks, src/device/device_internal.h), the
 * fault injectors (kiln__pool_fail_after, kiln__io_fail_after), the storage sentinels
 * (kiln__set_guard, kiln__check_guards), CLBlast's parameter tables (kiln__tune_*),
 * kiln__dist_test_skip_step and the optimizers' autocast casts (kiln__optim_autocast).
 * Tests include this instead of re-declaring internal functions, so the compiler checks
 * every signature. It sits above every floor of the library (it includes the top internal
 * headers); nothing in src/ includes it. Nothing here is exported from the shared library:
 * tests and tools link the static one. */
#ifndef KILN_TEST_HOOKS_H
#define KILN_TEST_HOOKS_H

#include "io/io_internal.h"
#include "ops/ops_internal.h"
#include "optim/optim_internal.h" /* kiln__optim_autocast: kiln bench train --amp, test_amp */

/* The context's switches: kiln__hooks_of(ctx)->reduce_layout = 2, ... */
static inline kiln__hooks *kiln__hooks_of(kiln_ctx *ctx) { return &ctx->hooks; }

/* src/ops/matmul.c: the parts of K kiln_matmul splits an m x n x k product into where
 * CLBlast computes it (ctx->hooks.matmul_last_parts says what the last product used). */
size_t kiln__matmul_split_parts(kiln_ctx *ctx, size_t m, size_t n, size_t k);

/* src/dist/dist.c: counts one more step on this rank only, so that the next bucket header
 * disagrees with the other ranks' (the order check of tests/test_dist.c). */
void kiln__dist_test_skip_step(kiln_dist_model *dm);

#endif

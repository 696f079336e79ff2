/* src/kiln_test_hooks.h - the one header through which tests (and kiln's tools) reach
 * kiln's internal switches: the per-context hooks (kiln__hooks in kiln_internal.h) and the
 * fault injectors. Tests include this instead of re-declaring internal functions, so the
 * compiler checks every signature. Nothing here is exported from the shared library: tests
 * and tools link the static one. */
#ifndef KILN_TEST_HOOKS_H
#define KILN_TEST_HOOKS_H

#include "kiln_internal.h"

/* The context's switches: kiln__hooks_of(ctx)->reduce_layout = 2, ... */
static inline kiln__hooks *kiln__hooks_of(kiln_ctx *ctx) { return &ctx->hooks; }

/* src/ops/matmul.c: the parts of K kiln_matmul splits an m x n x k product into where
 * CLBlast computes it (ctx->hooks.matmul_last_parts says what the last product used). */
size_t kiln__matmul_split_parts(kiln_ctx *ctx, size_t m, size_t n, size_t k);

#endif

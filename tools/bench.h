/* tools/bench.h - `kiln bench` (GEMM against OpenBLAS, training steps, start-up, per-op
 * times) and the timing helpers `kiln tune` shares. */
#ifndef KILN_TOOLS_BENCH_H
#define KILN_TOOLS_BENCH_H

#include <stdbool.h>
#include <stdint.h>

#include <kiln/kiln.h>

#include "json.h" /* tool_json_str */

/* `kiln bench <what> [options]`; returns the process exit code. */
int kiln_cmd_bench(int argc, char **argv);

/* Milliseconds since an arbitrary start (CLOCK_MONOTONIC). */
double bench_now_ms(void);
/* Median of n values (sorts v). */
double bench_median(double *v, int n);

/* One GEMM problem in kiln's terms: C [m, n] = op(A) op(B), row-major. */
typedef struct bench_gemm_shape {
    const char *name; /* what issues it, e.g. "mlp fc1 fwd" */
    int64_t m, n, k;
    bool ta, tb;
} bench_gemm_shape;

/* Device operands of a shape, filled with uniform [-1, 1) values from seed. */
typedef struct bench_gemm_data {
    kiln_tensor *a, *b;
    float *ha, *hb; /* host copies (row-major as stored) */
} bench_gemm_data;
/* 0, or -1 with the reason in why (cap bytes): host memory for the copies, or the
 * context's error. */
int bench_gemm_data_new(kiln_ctx *ctx, const bench_gemm_shape *s, uint64_t seed, bench_gemm_data *d, char *why,
                        size_t cap);
void bench_gemm_data_free(bench_gemm_data *d);
/* Median ms of `repeat` timed kiln_matmul_ex calls (each synchronised) after one warm-up,
 * the fastest into *min_ms and the least process CPU time of a call into *min_cpu_ms (both
 * optional); negative when kiln failed (the context's error). */
double bench_gemm_kiln_ms(kiln_ctx *ctx, const bench_gemm_shape *s, bench_gemm_data *d, int repeat, double *min_ms,
                          double *min_cpu_ms);
/* CPU time of the whole process (every thread, POCL's workers included) in ms: what a
 * kernel costs, nearly independent of other load competing for the cores. */
double bench_cpu_ms(void);
/* Largest |kiln - reference| over C, the reference computed on the host in double. */
double bench_gemm_check(kiln_ctx *ctx, const bench_gemm_shape *s, bench_gemm_data *d);
/* The worst, over nrows rows of C spread over M (first and last included), of
 * |kiln - reference| / (2 k u sum_p |a_ip b_pj|), u = 2^-24: the error bound of any f32
 * summation order (tests/test_matmul.c's); <= 1 passes. INFINITY when kiln failed. */
double bench_gemm_check_bound(kiln_ctx *ctx, const bench_gemm_shape *s, bench_gemm_data *d, int nrows);

#endif

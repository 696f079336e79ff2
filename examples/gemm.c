/* examples/gemm.c - multiply two random matrices on an OpenCL device and check the
 * product against a host computation in double precision.
 *
 *   build/examples/gemm [--device SPEC] [--m M] [--n N] [--k K] [--repeat R]
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <kiln/kiln.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void usage(void) {
    printf("usage: gemm [--device SPEC] [--m M] [--n N] [--k K] [--repeat R]\n"
           "  Computes C = A B for random A (MxK) and B (KxN) on the device, checks C against\n"
           "  a double-precision host product and prints the error and the device's GFLOP/s.\n"
           "  SPEC: gpu, cpu, P:D or part of a device name (default: $KILN_DEVICE, else the\n"
           "  first GPU, else the first CPU). Defaults: M=N=K=512, R=5.\n");
}

int main(int argc, char **argv) {
    const char *spec = NULL;
    long m = 512, n = 512, k = 512, repeat = 5;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage();
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "gemm: %s needs a value (see --help)\n", a);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--device"))
            spec = v;
        else if (!strcmp(a, "--m"))
            m = atol(v);
        else if (!strcmp(a, "--n"))
            n = atol(v);
        else if (!strcmp(a, "--k"))
            k = atol(v);
        else if (!strcmp(a, "--repeat"))
            repeat = atol(v);
        else {
            fprintf(stderr, "gemm: unknown option %s (see --help)\n", a);
            return 2;
        }
    }
    if (m < 1 || n < 1 || k < 1 || repeat < 1 || m * k > (1L << 26) || k * n > (1L << 26) || m * n > (1L << 26)) {
        fprintf(stderr, "gemm: sizes must be positive and each matrix at most 2^26 elements\n");
        return 2;
    }

    kiln_ctx *ctx;
    if (kiln_open(&ctx, spec) != KILN_OK) {
        fprintf(stderr, "gemm: %s\n", kiln_last_error());
        return 1;
    }
    const kiln_device_info *d = kiln_ctx_device(ctx);
    printf("device %d:%d  %s  (%s, %s)\n", d->platform_index, d->device_index, d->name, d->platform_name,
           kiln_device_type_name(d->type));

    float *a = malloc(sizeof(float) * (size_t)(m * k));
    float *b = malloc(sizeof(float) * (size_t)(k * n));
    float *c = malloc(sizeof(float) * (size_t)(m * n));
    if (!a || !b || !c) {
        fprintf(stderr, "gemm: out of host memory\n");
        return 1;
    }
    uint64_t s = 42;
    for (long i = 0; i < m * k; i++)
        a[i] = (float)((s = s * 6364136223846793005ULL + 1442695040888963407ULL) >> 40) / 16777216.0f - 0.5f;
    for (long i = 0; i < k * n; i++)
        b[i] = (float)((s = s * 6364136223846793005ULL + 1442695040888963407ULL) >> 40) / 16777216.0f - 0.5f;

    kiln_tensor *A = kiln_from_host(ctx, a, KILN_F32, 2, (int64_t[]){m, k});
    kiln_tensor *B = kiln_from_host(ctx, b, KILN_F32, 2, (int64_t[]){k, n});
    double t0 = now_ms();
    kiln_tensor *C = kiln_matmul(ctx, A, B); /* the first call compiles CLBlast's kernels */
    kiln_status st = kiln_to_host(C, c, sizeof(float) * (size_t)(m * n));
    double first_ms = now_ms() - t0;
    if (st != KILN_OK) {
        fprintf(stderr, "gemm: %s\n", kiln_error_message(ctx));
        kiln_close(ctx);
        return 1;
    }
    t0 = now_ms();
    for (long r = 0; r < repeat; r++) {
        kiln_scope_begin(ctx);
        kiln_matmul(ctx, A, B);
        kiln_scope_end(ctx);
    }
    if (kiln_sync(ctx) != KILN_OK || kiln_error_status(ctx) != KILN_OK) {
        fprintf(stderr, "gemm: %s\n", kiln_error_message(ctx));
        kiln_close(ctx);
        return 1;
    }
    double ms = (now_ms() - t0) / (double)repeat;

    /* host reference in double; error relative to sum |a||b|, the natural scale of a dot product */
    double worst = 0;
    for (long i = 0; i < m; i++) {
        for (long j = 0; j < n; j++) {
            double ref = 0, scale = 0;
            for (long p = 0; p < k; p++) {
                ref += (double)a[i * k + p] * b[p * n + j];
                scale += fabs((double)a[i * k + p] * b[p * n + j]);
            }
            double e = fabs(c[i * n + j] - ref) / (scale > 0 ? scale : 1);
            if (e > worst) worst = e;
        }
    }
    double bound = 2.0 * (double)k * 5.96e-8; /* k roundings of at most eps/2 each, doubled */
    printf("C = A(%ldx%ld) B(%ldx%ld): first call %.1f ms (includes kernel builds), then %.2f ms = %.1f GFLOP/s\n", m,
           k, k, n, first_ms, ms, 2.0 * m * n * k / (ms * 1e6));
    printf("max error relative to sum|a*b|: %.3g (bound %.3g) -> %s\n", worst, bound, worst <= bound ? "OK" : "WRONG");
    free(a);
    free(b);
    free(c);
    kiln_close(ctx);
    return worst <= bound ? 0 : 1;
}

/* tests/gradcheck.h - gradients checked against finite differences of a plain-C
 * double-precision reference.
 *
 * For an op y = f(x0, x1, ...), the test picks a random seed gradient w (y's shape), runs
 * kiln_backward_ex(y, w) and compares each input's kiln_tensor_grad with the central difference
 *     d/dx_j[k] sum_m w[m] * f_ref(x)[m]  ~  (L(x + h e_k) - L(x - h e_k)) / 2h
 * computed on the host reference in double (h = 1e-5 relative to |x|, error ~1e-10, far
 * below float32 rounding), so the only error left is kiln's float32 arithmetic.
 *
 *     static void ref(void *user, double *const *in, double *out) { ... }   // f in double
 *     gc_check(ctx, "kiln_foo", ref, user, nin, inputs, shapes..., out_numel, y, grads, atol, rtol);
 */
#ifndef KILN_TEST_GRADCHECK_H
#define KILN_TEST_GRADCHECK_H

#include "harness.h"

/* Computes f's outputs (double) from its inputs (double arrays, row-major). */
typedef void (*gc_ref_fn)(void *user, double *const *in, double *out);

/* sum_m w[m] * f(in)[m] */
static inline double gc__loss(gc_ref_fn f, void *user, double *const *in, double *out, int64_t nout, const double *w) {
    f(user, in, out);
    double s = 0;
    for (int64_t m = 0; m < nout; m++) s += w[m] * out[m];
    return s;
}

/* Numerical gradient of sum(w * f) with respect to input j (n_j elements) into grad. */
static inline void gc_numeric(gc_ref_fn f, void *user, double *const *in, int j, int64_t nj, int64_t nout,
                              const double *w, double *grad) {
    double *out = malloc(sizeof(double) * (size_t)(nout > 0 ? nout : 1));
    for (int64_t k = 0; k < nj; k++) {
        double x0 = in[j][k], h = 1e-5 * (fabs(x0) > 1 ? fabs(x0) : 1);
        in[j][k] = x0 + h;
        double lp = gc__loss(f, user, in, out, nout, w);
        in[j][k] = x0 - h;
        double lm = gc__loss(f, user, in, out, nout, w);
        in[j][k] = x0;
        grad[k] = (lp - lm) / (2 * h);
    }
    free(out);
}

/*
 * Checks kiln's gradients of `y` (already computed by the op from the kiln tensors xs[],
 * which require grad where wanted[j]) against finite differences of `f` over the host
 * copies hin[] (double, the same values as xs[]). Uses a fixed pseudo-random seed
 * gradient. Tolerance: |kiln - numeric| <= atol*max|numeric| + rtol*|numeric| per input
 * (atol is relative to the gradient's scale, so one bound serves any magnitude).
 */
static inline void gc_check(kiln_ctx *ctx, const char *what, gc_ref_fn f, void *user, int nin, kiln_tensor *const *xs,
                            double *const *hin, const bool *wanted, kiln_tensor *y, double atol, double rtol) {
    CHECK(y != NULL, "%s: forward failed: %s", what, kiln_error_message(ctx));
    if (!y) return;
    int64_t nout = kiln_tensor_numel(y);
    double *w = malloc(sizeof(double) * (size_t)(nout > 0 ? nout : 1));
    float *wf = malloc(sizeof(float) * (size_t)(nout > 0 ? nout : 1));
    for (int64_t m = 0; m < nout; m++) w[m] = wf[m] = h_uniform(-1, 1);
    kiln_tensor *seed = kiln_from_host(ctx, wf, KILN_F32, kiln_tensor_ndim(y), kiln_tensor_shape(y));
    kiln_status s = kiln_backward_ex(y, seed, false);
    CHECK(s == KILN_OK, "%s: backward failed: %s", what, kiln_error_message(ctx));
    for (int j = 0; j < nin && s == KILN_OK; j++) {
        if (!wanted[j]) continue;
        int64_t nj = kiln_tensor_numel(xs[j]);
        double *num = malloc(sizeof(double) * (size_t)(nj > 0 ? nj : 1));
        gc_numeric(f, user, hin, j, nj, nout, w, num);
        kiln_tensor *g = kiln_tensor_grad(xs[j]);
        CHECK(g != NULL, "%s: input %d has no gradient", what, j);
        if (g) {
            float *got = h_read(g);
            double scale = 0;
            for (int64_t k = 0; k < nj; k++) scale = fmax(scale, fabs(num[k]));
            char label[256];
            snprintf(label, sizeof label, "%s d/dinput%d", what, j);
            h_compare(label, got, num, nj, atol * (scale > 0 ? scale : 1), rtol);
            free(got);
        }
        free(num);
    }
    kiln_tensor_free(seed);
    free(w);
    free(wf);
}

#endif

/* cl_kernels/optim.cl - fused optimizer updates (SGD, RMSprop, Adam/AdamW: one launch per
 * parameter tensor, weight decay + moments + update in one pass) and gradient clipping
 * (norm partials, the total and the clip coefficient on the device, scaling, clamping).
 *
 * Each update does torch 1.13's float32 operations in torch's order:
 *   x.mul_(s)             x * s
 *   x.add_(y, alpha=a)    fma(y, a, x)          (ATen's vectorised add is vec::fmadd)
 *   x.addcmul_(y, z, v)   fma(v * y, z, x)      (ATen's x + v * y * z, which GCC contracts)
 *   x.addcdiv_(y, z, v)   x + (v * y) / z
 * With these roundings the golden trajectories (tests/test_optim.c) agree with PyTorch's
 * CPU build bit for bit. fma is correctly rounded on every OpenCL device (hardware on GPUs
 * and on x86 since 2013; a slower library call elsewhere, in a memory-bound kernel).
 * Contraction is off so no other a*b+c is fused behind our back. Scalars arrive as the
 * float roundings of the host's double values, as torch's Python scalars reach its
 * kernels. Indices are 32-bit: parameters have fewer than 2^31 elements. */
#pragma OPENCL FP_CONTRACT OFF

#define ADD_ALPHA(x, y, a) fma((y), (a), (x))

/* The update kernels' flags are KILN_OPT_* and clipping's modes KILN_CLIP_* (kiln_shared.h). */

/* torch.maximum: NaN wins. */
inline float opt_max(float a, float b) { return (a > b || isnan(a)) ? a : (isnan(b) ? b : fmax(a, b)); }

/* torch.optim.SGD (_single_tensor_sgd). neg_lr = -lr, damp1 = 1 - dampening. */
kernel void sgd_step(global float *p, int poff, global const float *g, int goff, global float *buf, int boff,
                     int n, float neg_lr, float momentum, float damp1, float wd, int flags) {
    int i = get_global_id(0);
    if (i >= n) return;
    float x = p[poff + i];
    float d = g[goff + i];
    if (flags & KILN_OPT_MAXIMIZE) d = -d;
    if (flags & KILN_OPT_DECAY) d = ADD_ALPHA(d, x, wd);
    if (flags & KILN_OPT_MOMENTUM) {
        float b = (flags & KILN_OPT_FIRST) ? d : ADD_ALPHA(buf[boff + i] * momentum, d, damp1);
        buf[boff + i] = b;
        d = (flags & KILN_OPT_NESTEROV) ? ADD_ALPHA(d, b, momentum) : b;
    }
    p[poff + i] = ADD_ALPHA(x, d, neg_lr);
}

/* torch.optim.RMSprop (_single_tensor_rmsprop). oma = 1 - alpha, neg_lr = -lr. */
kernel void rmsprop_step(global float *p, int poff, global const float *g, int goff, global float *sq, int sqoff,
                         global float *buf, int boff, global float *ga, int gaoff, int n, float neg_lr, float alpha,
                         float oma, float eps, float wd, float momentum, int flags) {
    int i = get_global_id(0);
    if (i >= n) return;
    float x = p[poff + i];
    float d = g[goff + i];
    if (flags & KILN_OPT_MAXIMIZE) d = -d;
    if (flags & KILN_OPT_DECAY) d = ADD_ALPHA(d, x, wd);
    float s = fma(oma * d, d, sq[sqoff + i] * alpha);
    sq[sqoff + i] = s;
    float avg;
    if (flags & KILN_OPT_CENTERED) {
        float a = ADD_ALPHA(ga[gaoff + i] * alpha, d, oma);
        ga[gaoff + i] = a;
        avg = sqrt(fma(-1.0f * a, a, s));
    } else {
        avg = sqrt(s);
    }
    avg = avg + eps;
    if (flags & KILN_OPT_MOMENTUM) {
        float b = buf[boff + i] * momentum + d / avg;
        buf[boff + i] = b;
        p[poff + i] = ADD_ALPHA(x, b, neg_lr);
    } else {
        p[poff + i] = x + neg_lr * d / avg;
    }
}

/* torch.optim.Adam and AdamW (_single_tensor_adam/_adamw). omb1/omb2 = 1 - beta1/2,
 * decay = 1 - lr * wd (AdamW), neg_step = -lr / (1 - beta1^t), bc2s = sqrt(1 - beta2^t). */
kernel void adam_step(global float *p, int poff, global const float *g, int goff, global float *m, int moff,
                      global float *v, int voff, global float *vmax, int vmoff, int n, float beta1, float omb1,
                      float beta2, float omb2, float wd, float decay, float neg_step, float bc2s, float eps,
                      int flags) {
    int i = get_global_id(0);
    if (i >= n) return;
    float x = p[poff + i];
    float d = g[goff + i];
    if (flags & KILN_OPT_MAXIMIZE) d = -d;
    if (flags & KILN_OPT_DECOUPLED) x = x * decay;
    else if (flags & KILN_OPT_DECAY) d = ADD_ALPHA(d, x, wd);
    float mi = ADD_ALPHA(m[moff + i] * beta1, d, omb1);
    float vi = fma(omb2 * d, d, v[voff + i] * beta2);
    m[moff + i] = mi;
    v[voff + i] = vi;
    if (flags & KILN_OPT_AMSGRAD) {
        vi = opt_max(vmax[vmoff + i], vi);
        vmax[vmoff + i] = vi;
    }
    float denom = sqrt(vi) / bc2s + eps;
    p[poff + i] = x + neg_step * mi / denom;
}

/* ---- gradient clipping ---------------------------------------------------------------- */

/* The term clipping sums (or maxes) for element x: x*x, |x| or |x|^p (mode: KILN_CLIP_*). */
inline float clip_term(float x, int mode, float p) {
    float a = fabs(x);
    return mode == KILN_CLIP_L2 ? x * x : mode == KILN_CLIP_LP ? pow(a, p) : a;
}

/* One partial per work-group: part[pbase + group] = the group's sum (compensated) or
 * NaN-propagating max over g[i], i = global id, + global size, ... < n. */
kernel void clip_partial(global const float *g, int goff, int n, global float *part, int pbase, int mode, float p,
                         local float *scratch) {
    int lid = get_local_id(0), L = get_local_size(0);
    int stride = get_global_size(0);
    float s = 0.0f, c = 0.0f;
    for (int i = get_global_id(0); i < n; i += stride) {
        float t = clip_term(g[goff + i], mode, p);
        if (mode == KILN_CLIP_LINF) {
            s = opt_max(s, t);
        } else { /* Kahan: float partials of ~n/stride terms stay within a few ulps */
            float y = t - c;
            float u = s + y;
            c = (u - s) - y;
            s = u;
        }
    }
    scratch[lid] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = L >> 1; h > 0; h >>= 1) {
        if (lid < h)
            scratch[lid] = mode == KILN_CLIP_LINF ? opt_max(scratch[lid], scratch[lid + h])
                                                  : scratch[lid] + scratch[lid + h];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) part[pbase + get_group_id(0)] = scratch[0];
}

/* One work-group: out[ooff] = total norm of the npart partials, out[ooff + 1] = torch's
 * clamp(max_norm / (total + 1e-6), max=1) (NaN stays NaN). */
kernel void clip_total(global const float *part, int poff, int npart, int mode, float p, float max_norm,
                       global float *out, int ooff, local float *scratch) {
    int lid = get_local_id(0), L = get_local_size(0);
    float s = 0.0f, c = 0.0f;
    for (int i = lid; i < npart; i += L) {
        float t = part[poff + i];
        if (mode == KILN_CLIP_LINF) {
            s = opt_max(s, t);
        } else {
            float y = t - c;
            float u = s + y;
            c = (u - s) - y;
            s = u;
        }
    }
    scratch[lid] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = L >> 1; h > 0; h >>= 1) {
        if (lid < h)
            scratch[lid] = mode == KILN_CLIP_LINF ? opt_max(scratch[lid], scratch[lid + h])
                                                  : scratch[lid] + scratch[lid + h];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) {
        float sum = scratch[0];
        float total = mode == KILN_CLIP_L2 ? sqrt(sum) : mode == KILN_CLIP_LP ? pow(sum, 1.0f / p) : sum;
        float coef = max_norm / (total + 1e-6f);
        if (!isnan(coef) && coef > 1.0f) coef = 1.0f;
        out[ooff] = total;
        out[ooff + 1] = coef;
    }
}

/* g *= coef (torch multiplies even when coef is 1). */
kernel void clip_scale(global float *g, int goff, int n, global const float *coef, int coff) {
    int i = get_global_id(0);
    if (i >= n) return;
    g[goff + i] = g[goff + i] * coef[coff];
}

/* torch.clamp_(min=lo, max=hi): min(max(x, lo), hi), NaN kept. */
kernel void clip_value(global float *g, int goff, int n, float lo, float hi) {
    int i = get_global_id(0);
    if (i >= n) return;
    float x = g[goff + i];
    g[goff + i] = isnan(x) ? x : fmin(fmax(x, lo), hi);
}

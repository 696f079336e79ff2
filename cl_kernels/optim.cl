/* cl_kernels/optim.cl - fused optimizer updates (SGD, RMSprop, Adam/AdamW: weight decay +
 * moments + update in one pass, for one parameter tensor or, *_multi, up to eight per launch) and gradient clipping
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

/* Built with -DKILN_SKIP (a GradScaler's step, include/kiln/amp.h), every update kernel
 * takes one more argument, the scaler's found-inf flag, and changes nothing when it is
 * set: the step is skipped on the device, without the host reading the flag. */
#ifdef KILN_SKIP
#define SKIP_ARG , global const int *found_inf, int fioff
#define SKIP_CHECK                                                                                                     \
    if (found_inf[fioff]) return;
#else
#define SKIP_ARG
#define SKIP_CHECK
#endif

/* torch.maximum: NaN wins. */
inline float opt_max(float a, float b) { return (a > b || isnan(a)) ? a : (isnan(b) ? b : fmax(a, b)); }

/* torch.optim.SGD (_single_tensor_sgd) on element i. neg_lr = -lr, damp1 = 1 - dampening. */
inline void sgd_elem(global float *p, global const float *g, global float *buf, int i, float neg_lr, float momentum,
                     float damp1, float wd, int flags) {
    float x = p[i];
    float d = g[i];
    if (flags & KILN_OPT_MAXIMIZE) d = -d;
    if (flags & KILN_OPT_DECAY) d = ADD_ALPHA(d, x, wd);
    if (flags & KILN_OPT_MOMENTUM) {
        float b = (flags & KILN_OPT_FIRST) ? d : ADD_ALPHA(buf[i] * momentum, d, damp1);
        buf[i] = b;
        d = (flags & KILN_OPT_NESTEROV) ? ADD_ALPHA(d, b, momentum) : b;
    }
    p[i] = ADD_ALPHA(x, d, neg_lr);
}

kernel void sgd_step(global float *p, int poff, global const float *g, int goff, global float *buf, int boff, int n,
                     float neg_lr, float momentum, float damp1, float wd, int flags SKIP_ARG) {
    int i = get_global_id(0);
    if (i >= n) return;
    SKIP_CHECK
    sgd_elem(p + poff, g + goff, buf + boff, i, neg_lr, momentum, damp1, wd, flags);
}

/* torch.optim.RMSprop (_single_tensor_rmsprop) on element i. oma = 1 - alpha, neg_lr = -lr. */
inline void rmsprop_elem(global float *p, global const float *g, global float *sq, global float *buf, global float *ga,
                         int i, float neg_lr, float alpha, float oma, float eps, float wd, float momentum, int flags) {
    float x = p[i];
    float d = g[i];
    if (flags & KILN_OPT_MAXIMIZE) d = -d;
    if (flags & KILN_OPT_DECAY) d = ADD_ALPHA(d, x, wd);
    float s = fma(oma * d, d, sq[i] * alpha);
    sq[i] = s;
    float avg;
    if (flags & KILN_OPT_CENTERED) {
        float a = ADD_ALPHA(ga[i] * alpha, d, oma);
        ga[i] = a;
        avg = sqrt(fma(-1.0f * a, a, s));
    } else {
        avg = sqrt(s);
    }
    avg = avg + eps;
    if (flags & KILN_OPT_MOMENTUM) {
        float b = buf[i] * momentum + d / avg;
        buf[i] = b;
        p[i] = ADD_ALPHA(x, b, neg_lr);
    } else {
        p[i] = x + neg_lr * d / avg;
    }
}

kernel void rmsprop_step(global float *p, int poff, global const float *g, int goff, global float *sq, int sqoff,
                         global float *buf, int boff, global float *ga, int gaoff, int n, float neg_lr, float alpha,
                         float oma, float eps, float wd, float momentum, int flags SKIP_ARG) {
    int i = get_global_id(0);
    if (i >= n) return;
    SKIP_CHECK
    rmsprop_elem(p + poff, g + goff, sq + sqoff, buf + boff, ga + gaoff, i, neg_lr, alpha, oma, eps, wd, momentum,
                 flags);
}

/* torch.optim.Adam and AdamW (_single_tensor_adam/_adamw) on element i. omb1/omb2 =
 * 1 - beta1/2, decay = 1 - lr * wd (AdamW), neg_step = -lr / (1 - beta1^t), bc2s =
 * sqrt(1 - beta2^t). */
inline void adam_elem(global float *p, global const float *g, global float *m, global float *v, global float *vmax,
                      int i, float beta1, float omb1, float beta2, float omb2, float wd, float decay, float neg_step,
                      float bc2s, float eps, int flags) {
    float x = p[i];
    float d = g[i];
    if (flags & KILN_OPT_MAXIMIZE) d = -d;
    if (flags & KILN_OPT_DECOUPLED)
        x = x * decay;
    else if (flags & KILN_OPT_DECAY)
        d = ADD_ALPHA(d, x, wd);
    float mi = ADD_ALPHA(m[i] * beta1, d, omb1);
    float vi = fma(omb2 * d, d, v[i] * beta2);
    m[i] = mi;
    v[i] = vi;
    if (flags & KILN_OPT_AMSGRAD) {
        vi = opt_max(vmax[i], vi);
        vmax[i] = vi;
    }
    float denom = sqrt(vi) / bc2s + eps;
    p[i] = x + neg_step * mi / denom;
}

kernel void adam_step(global float *p, int poff, global const float *g, int goff, global float *m, int moff,
                      global float *v, int voff, global float *vmax, int vmoff, int n, float beta1, float omb1,
                      float beta2, float omb2, float wd, float decay, float neg_step, float bc2s, float eps,
                      int flags SKIP_ARG) {
    int i = get_global_id(0);
    if (i >= n) return;
    SKIP_CHECK
    adam_elem(p + poff, g + goff, m + moff, v + voff, vmax + vmoff, i, beta1, omb1, beta2, omb2, wd, decay, neg_step,
              bc2s, eps, flags);
}

/* ---- multi-tensor updates: up to KILN_OPT_MULTI parameters in one launch ---------------- */
/*
 * As torch's foreach/fused optimizers: the elements of all the launch's parameters, which
 * share their scalars (one parameter group, one step count), KILN_OPT_CHUNK consecutive ones
 * per work-item. T (a kiln_opt_table, kiln_shared.h) gives parameter k's elements
 * [start[k], start[k+1]) of the global range and its buffers' offsets; the buffers are
 * arguments a0..a7 of each role. Each element gets the same *_elem update as the one-tensor
 * kernels, bit for bit. A work-item finds its parameter once and runs a plain loop over that
 * parameter's elements (the next parameter's where its chunk crosses into it): with one
 * element per work-item, each finding its parameter and buffers, the per-element selects
 * kept POCL from vectorising, and Adam's step took 40% of the MLP's training step.
 */
#define MT_ARGS(q, a) q a##0, q a##1, q a##2, q a##3, q a##4, q a##5, q a##6, q a##7
#define MT_PICK(a, k)                                                                                                  \
    ((k) == 0   ? a##0                                                                                                 \
     : (k) == 1 ? a##1                                                                                                 \
     : (k) == 2 ? a##2                                                                                                 \
     : (k) == 3 ? a##3                                                                                                 \
     : (k) == 4 ? a##4                                                                                                 \
     : (k) == 5 ? a##5                                                                                                 \
     : (k) == 6 ? a##6                                                                                                 \
                : a##7)

/* The parameter k of global element i (T->count parameters). */
inline int mt_which(const kiln_opt_table *T, int i) {
    int k = 0;
    while (k + 1 < T->count && i >= T->start[k + 1]) k++;
    return k;
}

/* This work-item's chunk [i, i1) of the global range, split at parameters' ends: the body runs
 * with k (the parameter) and its local elements [e0, e1). */
#define MT_CHUNKS(...) MT_CHUNKS_(SKIP_CHECK, __VA_ARGS__)
/* the same for the kernels that take no found_inf (clipping and zeroing gradients) */
#define MT_CHUNKS_NOSKIP(...) MT_CHUNKS_(, __VA_ARGS__)
#define MT_CHUNKS_(CHECK, ...)                                                                                         \
    int i = (int)get_global_id(0) * KILN_OPT_CHUNK, total = T.start[T.count];                                          \
    if (i >= total) return;                                                                                            \
    CHECK                                                                                                              \
    int i1 = min(i + KILN_OPT_CHUNK, total);                                                                           \
    for (int k = mt_which(&T, i); i < i1; k++) {                                                                       \
        int e0 = i - T.start[k], e1 = min(i1, T.start[k + 1]) - T.start[k];                                            \
        __VA_ARGS__;                                                                                                   \
        i += e1 - e0;                                                                                                  \
    }

kernel void sgd_multi(kiln_opt_table T, MT_ARGS(global float *, p), MT_ARGS(global const float *, g),
                      MT_ARGS(global float *, b), float neg_lr, float momentum, float damp1, float wd,
                      int flags SKIP_ARG){MT_CHUNKS({
    global float *pk = MT_PICK(p, k) + T.poff[k], *bk = MT_PICK(b, k) + T.soff[0][k];
    global const float *gk = MT_PICK(g, k) + T.goff[k];
    for (int e = e0; e < e1; e++) sgd_elem(pk, gk, bk, e, neg_lr, momentum, damp1, wd, flags);
})}

kernel
    void rmsprop_multi(kiln_opt_table T, MT_ARGS(global float *, p), MT_ARGS(global const float *, g),
                       MT_ARGS(global float *, s), MT_ARGS(global float *, b), MT_ARGS(global float *, a), float neg_lr,
                       float alpha, float oma, float eps, float wd, float momentum, int flags SKIP_ARG){MT_CHUNKS({
        global float *pk = MT_PICK(p, k) + T.poff[k], *sk = MT_PICK(s, k) + T.soff[0][k],
                     *bk = MT_PICK(b, k) + T.soff[1][k], *ak = MT_PICK(a, k) + T.soff[2][k];
        global const float *gk = MT_PICK(g, k) + T.goff[k];
        for (int e = e0; e < e1; e++) rmsprop_elem(pk, gk, sk, bk, ak, e, neg_lr, alpha, oma, eps, wd, momentum, flags);
    })}

kernel void adam_multi(kiln_opt_table T, MT_ARGS(global float *, p), MT_ARGS(global const float *, g),
                       MT_ARGS(global float *, m), MT_ARGS(global float *, v), MT_ARGS(global float *, x), float beta1,
                       float omb1, float beta2, float omb2, float wd, float decay, float neg_step, float bc2s,
                       float eps, int flags SKIP_ARG) {
    MT_CHUNKS({
        global float *pk = MT_PICK(p, k) + T.poff[k], *mk = MT_PICK(m, k) + T.soff[0][k],
                     *vk = MT_PICK(v, k) + T.soff[1][k], *xk = MT_PICK(x, k) + T.soff[2][k];
        global const float *gk = MT_PICK(g, k) + T.goff[k];
        for (int e = e0; e < e1; e++)
            adam_elem(pk, gk, mk, vk, xk, e, beta1, omb1, beta2, omb2, wd, decay, neg_step, bc2s, eps, flags);
    })
}

/* ---- gradient clipping ---------------------------------------------------------------- */

/* The term clipping sums (or maxes) for element x: x*x, |x| or |x|^p (mode: KILN_CLIP_*). */
inline float clip_term(float x, int mode, float p) {
    float a = fabs(x);
    return mode == KILN_CLIP_L2 ? x * x : mode == KILN_CLIP_LP ? pow(a, p) : a;
}

/* Kahan's carry after u = s + y. Once the sum is infinite the carry would be inf - inf =
 * NaN and turn the next term's sum into NaN: torch's norm of a gradient holding an Inf is
 * inf (and the clip coefficient 0), so the carry stops there. */
inline float kahan_carry(float s, float u, float y) { return isfinite(u) ? (u - s) - y : 0.0f; }

/* clip_term and kahan_carry on eight lanes, and opt_max's NaN-propagating max. */
inline float8 clip_term8(float8 x, int mode, float p) {
    float8 a = fabs(x);
    return mode == KILN_CLIP_L2 ? x * x : mode == KILN_CLIP_LP ? pow(a, (float8)p) : a;
}
inline float8 kahan_carry8(float8 s, float8 u, float8 y) { return select((float8)0.0f, (u - s) - y, isfinite(u)); }
inline float8 opt_max8(float8 a, float8 b) { return select(select(fmax(a, b), b, isnan(b)), a, (a > b) | isnan(a)); }

/* The eight lanes of v combined pairwise: summed, or (inf) maxed as opt_max. */
inline float clip_lanes(float8 v, bool inf) {
    if (!inf) {
        float4 a = v.lo + v.hi;
        float2 b = a.lo + a.hi;
        return b.x + b.y;
    }
    float a0 = opt_max(v.s0, v.s4), a1 = opt_max(v.s1, v.s5), a2 = opt_max(v.s2, v.s6), a3 = opt_max(v.s3, v.s7);
    return opt_max(opt_max(a0, a2), opt_max(a1, a3));
}

/* The partial of one work-group (all its work-items call it): the group's sum (compensated)
 * or NaN-propagating max over g[0 .. n). The gradient is read as float8 units (unit u is
 * g[8u .. 8u + 8)): the work-item visits units first, + stride, ... of the n / 8 whole
 * ones, first its index in its gradient's launch and stride that launch's size, with a sum
 * (or max) per lane; the lanes are then combined pairwise, and the work-item with first 0
 * adds the n % 8 elements after the last unit. */
inline float clip_group(global const float *g, int first, int n, int stride, int mode, float p, local float *scratch) {
    int lid = get_local_id(0), L = get_local_size(0), nu = n / 8;
    bool inf = mode == KILN_CLIP_LINF;
    float8 s8 = (float8)0.0f, c8 = (float8)0.0f;
    for (int u = first; u < nu; u += stride) {
        float8 t = clip_term8(vload8(u, g), mode, p);
        if (inf) {
            s8 = opt_max8(s8, t);
        } else { /* Kahan: float partials of ~n/stride terms stay within a few ulps */
            float8 y = t - c8;
            float8 v = s8 + y;
            c8 = kahan_carry8(s8, v, y);
            s8 = v;
        }
    }
    float s = clip_lanes(s8, inf), c = 0.0f;
    for (int i = first == 0 ? nu * 8 : n; i < n; i++) {
        float t = clip_term(g[i], mode, p);
        if (inf) {
            s = opt_max(s, t);
        } else {
            float y = t - c;
            float v = s + y;
            c = kahan_carry(s, v, y);
            s = v;
        }
    }
    scratch[lid] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = L >> 1; h > 0; h >>= 1) {
        if (lid < h)
            scratch[lid] =
                mode == KILN_CLIP_LINF ? opt_max(scratch[lid], scratch[lid + h]) : scratch[lid] + scratch[lid + h];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    return scratch[0];
}

/* One partial per work-group: part[pbase + group] = clip_group over the gradient. */
kernel void clip_partial(global const float *g, int goff, int n, global float *part, int pbase, int mode, float p,
                         local float *scratch) {
    float r = clip_group(g + goff, (int)get_global_id(0), n, (int)get_global_size(0), mode, p, scratch);
    if (get_local_id(0) == 0) part[pbase + get_group_id(0)] = r;
}

/* clip_partial of up to KILN_OPT_MULTI gradients in one launch: work-group gid is group
 * gid - gstart[k] of gradient k's own clip_partial launch, so each partial is that launch's,
 * at the same index of part. */
kernel void clip_partial_multi(kiln_clip_table T, MT_ARGS(global const float *, g), global float *part, int pbase,
                               int mode, float p, local float *scratch) {
    int gid = get_group_id(0), L = get_local_size(0), k = 0;
    while (k + 1 < T.count && gid >= T.gstart[k + 1]) k++;
    int groups = T.gstart[k + 1] - T.gstart[k], first = (gid - T.gstart[k]) * L + (int)get_local_id(0);
    float r = clip_group(MT_PICK(g, k) + T.goff[k], first, T.n[k], groups * L, mode, p, scratch);
    if (get_local_id(0) == 0) part[pbase + gid] = r;
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
            c = kahan_carry(s, u, y);
            s = u;
        }
    }
    scratch[lid] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = L >> 1; h > 0; h >>= 1) {
        if (lid < h)
            scratch[lid] =
                mode == KILN_CLIP_LINF ? opt_max(scratch[lid], scratch[lid + h]) : scratch[lid] + scratch[lid + h];
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

/* clip_scale of up to KILN_OPT_MULTI gradients (T's start and goff, as the *_multi updates). */
kernel void clip_scale_multi(kiln_opt_table T, MT_ARGS(global float *, g), global const float *coef, int coff) {
    float cf = coef[coff];
    MT_CHUNKS_NOSKIP({
        global float *gk = MT_PICK(g, k) + T.goff[k];
        for (int e = e0; e < e1; e++) gk[e] = gk[e] * cf;
    })
}

/* zero_grad of up to KILN_OPT_MULTI gradients (T's start and goff): every element 0. */
kernel void zero_multi(kiln_opt_table T, MT_ARGS(global float *, g)){MT_CHUNKS_NOSKIP({
    global float *gk = MT_PICK(g, k) + T.goff[k];
    for (int e = e0; e < e1; e++) gk[e] = 0.0f;
})}

/* d_k = s_k converted to the KILN_HALF build's dtype, for up to KILN_OPT_MULTI tensors (T's
 * start; goff the sources', poff the copies' offsets): autocast's casts of an optimizer's
 * parameters, made ahead (src/optim/optim.c, kiln__optim_autocast). */
kernel void cast_multi(kiln_opt_table T, MT_ARGS(global const float *, s), MT_ARGS(global KILN_S *, d)){
    MT_CHUNKS_NOSKIP({
        global const float *sk = MT_PICK(s, k) + T.goff[k];
        global KILN_S *dk = MT_PICK(d, k) + T.poff[k];
        for (int e = e0; e < e1; e++) KILN_ST(dk, e, sk[e]);
    })}

/* torch.clamp_(min=lo, max=hi): min(max(x, lo), hi), NaN kept. */
kernel void clip_value(global float *g, int goff, int n, float lo, float hi) {
    int i = get_global_id(0);
    if (i >= n) return;
    float x = g[goff + i];
    g[goff + i] = isnan(x) ? x : fmin(fmax(x, lo), hi);
}

/* ---- the GradScaler's device side (src/optim/scaler.c) --------------------------------- */

/* g *= 1 / scale (torch's _amp_foreach_non_finite_check_and_unscale_: inv_scale is the
 * float reciprocal of the scale), and found_inf[0] = 1 when any g was inf or NaN. */
kernel void scaler_unscale(global float *g, int goff, int n, global const float *scale, int soff, global int *state,
                           int stoff) {
    int i = get_global_id(0);
    if (i >= n) return;
    float x = g[goff + i];
    if (!isfinite(x)) atomic_or(&state[stoff], 1);
    g[goff + i] = x * (1.0f / scale[soff]);
}

/* scaler_unscale of up to KILN_OPT_MULTI gradients (T's start and goff, as the *_multi
 * updates): the same product, and one atomic per work-item that saw an inf or NaN. */
kernel void scaler_unscale_multi(kiln_opt_table T, MT_ARGS(global float *, g), global const float *scale, int soff,
                                 global int *state, int stoff) {
    float inv = 1.0f / scale[soff];
    int bad = 0;
    MT_CHUNKS_NOSKIP({
        global float *gk = MT_PICK(g, k) + T.goff[k];
        for (int e = e0; e < e1; e++) {
            float x = gk[e];
            bad |= !isfinite(x);
            gk[e] = x * inv;
        }
    })
    if (bad) atomic_or(&state[stoff], 1);
}

/* torch's _amp_update_scale_ (one work-item): a step with inf/NaN multiplies the scale by
 * backoff and restarts the good-step count; the interval-th good step in a row multiplies
 * it by growth when the product is finite. state[0] found_inf (cleared here), state[1] the
 * good-step count. */
kernel void scaler_update(global float *scale, int soff, global int *state, int stoff, float growth, float backoff,
                          int interval) {
    if (get_global_id(0) != 0) return;
    global int *st = state + stoff;
    if (st[0]) {
        scale[soff] = scale[soff] * backoff;
        st[1] = 0;
    } else {
        int good = st[1] + 1;
        if (good == interval) {
            float grown = scale[soff] * growth;
            if (isfinite(grown)) scale[soff] = grown;
            good = 0;
        }
        st[1] = good;
    }
    st[0] = 0;
}

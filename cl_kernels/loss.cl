/* cl_kernels/loss.cl - loss functions and their gradients (src/ops/loss.c): elementwise
 * losses (mse, l1, smooth_l1, bce, bce_with_logits, lsgan) and the penalties, fused
 * cross-entropy and nll rows, and the deterministic sums that reduce them.
 *
 * Elementwise losses come from one macro per loss, each in three kernels and two operand
 * layouts (the penalties, always reduced, without the first):
 *   <loss>_none_<layout>  out[i] = w[i] * loss(x[i], t[i])              (reduction none)
 *   <loss>_part_<layout>  each work-group writes scale * the sum of its share of the
 *                         terms (mean/sum: with one group that is the result itself)
 *   <loss>_bwd_<layout>   gx[i], gt[i] = w[i] * g * d loss / d x, d t
 * layout contig: every operand holds element i at its offset + i; strided: operand j at
 * its offset + sum_d idx_d * g.strides[j][d] (0 where broadcast: weight, pos_weight).
 * Operands: x (input), t (target; x again for lsgan and the penalties, which have none),
 * w (weight), pw (pos_weight); flags: KILN_LOSS_* (cl_kernels/kiln_shared.h); p: beta
 * (smooth_l1) or the target value (lsgan).
 *
 * No atomics anywhere: every sum runs in an order fixed by the shapes and the launch
 * geometry, so results are bit-identical from run to run.
 */

/* The strided kernels' geometry, shared with src/ops/loss.c (cl_kernels/kiln_shared.h). */
typedef kiln_loss_geom loss_geom;

inline int4 loss_offsets(const loss_geom *g, int i) {
    int4 o = (int4)(0, 0, 0, 0);
    for (int d = g->ndim - 1; d >= 0; d--) {
        int n = g->shape[d], idx = i % n;
        i /= n;
        o.x += idx * g->strides[0][d];
        o.y += idx * g->strides[1][d];
        o.z += idx * g->strides[2][d];
        o.w += idx * g->strides[3][d];
    }
    return o;
}

/* ---- the losses: value and derivatives per element --------------------------------- */

/* sign with sign(0) = 0 (torch's sgn, the derivative of |x| it uses). */
inline float loss_sgn(float d) { return (d > 0.0f) ? 1.0f : ((d < 0.0f) ? -1.0f : 0.0f); }

/* d smooth_l1(d) / d d as torch 1.13: -1 at or below -beta, 1 at or above beta (so beta 0
 * gives -1 at d = 0, as torch does), d / beta between. */
inline float sl1_grad(float d, float beta) { return d <= -beta ? -1.0f : (d >= beta ? 1.0f : d / beta); }

/* softplus(-x) = -log(sigmoid(x)), without overflow for any x */
inline float loss_sp_neg(float x) { return fmax(-x, 0.0f) + log1p(exp(-fabs(x))); }

inline float loss_sigmoid(float x) {
    float e = exp(-fabs(x));
    return x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

/* value */
#define V_mse ((x - t) * (x - t))
#define V_l1 (fabs(x - t))
#define V_sl1 (fabs(x - t) < p ? 0.5f * (x - t) * (x - t) / p : fabs(x - t) - 0.5f * p)
/* torch: (t - 1) * max(log1p(-x), -100) - t * max(log(x), -100) */
#define V_bce ((t - 1.0f) * fmax(log1p(-x), -100.0f) - t * fmax(log(x), -100.0f))
/* (1 - t) x + (1 + (pw - 1) t) softplus(-x); with pw = 1: max(x,0) - x t + log1p(exp(-|x|)) */
#define V_bcel ((1.0f - t) * x + (1.0f + (pw - 1.0f) * t) * loss_sp_neg(x))
#define V_lsgan (0.5f * (x - p) * (x - p))
#define V_pen1 (fabs(x))
#define V_pen2 (x * x)

/* d/dx */
#define GX_mse (2.0f * (x - t))
#define GX_l1 (loss_sgn(x - t))
#define GX_sl1 (sl1_grad(x - t, p))
/* torch: (x - t) / max((1 - x) x, 1e-12) */
#define GX_bce ((x - t) / fmax((1.0f - x) * x, 1e-12f))
#define GX_bcel ((1.0f + (pw - 1.0f) * t) * loss_sigmoid(x) - pw * t)
#define GX_lsgan (x - p)
#define GX_pen1 (loss_sgn(x))
#define GX_pen2 (2.0f * x)

/* d/dt (torch's target gradients; smooth_l1 evaluates its derivative at t - x as torch) */
#define GT_mse (-2.0f * (x - t))
#define GT_l1 (-loss_sgn(x - t))
#define GT_sl1 (sl1_grad(t - x, p))
/* torch: -logit(x) */
#define GT_bce (log1p(-x) - log(x))
#define GT_bcel (-x + (pw - 1.0f) * loss_sp_neg(x))
#define GT_lsgan 0.0f
#define GT_pen1 0.0f
#define GT_pen2 0.0f

/* ---- tree sum of a work-group's partials in local memory (L a power of two) --------- */

inline float loss_tree(local float *sc, float v) {
    int lid = get_local_id(0), L = get_local_size(0);
    sc[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = L / 2; s > 0; s >>= 1) {
        if (lid < s) sc[lid] += sc[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    return sc[0];
}

/* The range of terms [*lo, *hi) and step of this work-item among nitems = G*L: blocked
 * (a contiguous run per work-item: POCL runs a group's work-items one after another on one
 * core) or interleaved (neighbouring work-items read neighbouring terms: GPUs). */
#define LOSS_RANGE(n, blocked, lo, hi, step)                                          \
    int nitems_ = get_global_size(0), k_ = get_global_id(0);                          \
    int lo, hi, step;                                                                 \
    if (blocked) {                                                                    \
        int per_ = ((n) + nitems_ - 1) / nitems_;                                     \
        lo = k_ * per_;                                                               \
        hi = min((n), lo + per_);                                                     \
        step = 1;                                                                     \
    } else {                                                                          \
        lo = k_;                                                                      \
        hi = (n);                                                                     \
        step = nitems_;                                                               \
    }

#define LOSS_ARGS                                                                      \
    global const float *X, int xo, global const float *T, int to, global const float *W, int wo, \
        global const float *PW, int pwo, int flags, float p

#define LOAD_CONTIG(i)                                                                 \
    float x = X[xo + (i)], t = T[to + (i)];                                            \
    float w = (flags & KILN_LOSS_W) ? W[wo + (i)] : 1.0f;                              \
    float pw = (flags & KILN_LOSS_PW) ? PW[pwo + (i)] : 1.0f;                          \
    (void)t;                                                                           \
    (void)pw;

#define LOAD_STRIDED(i)                                                                \
    int4 o_ = loss_offsets(&g, (i));                                                   \
    float x = X[xo + o_.x], t = T[to + o_.y];                                          \
    float w = (flags & KILN_LOSS_W) ? W[wo + o_.z] : 1.0f;                             \
    float pw = (flags & KILN_LOSS_PW) ? PW[pwo + o_.w] : 1.0f;                         \
    (void)t;                                                                           \
    (void)pw;

#define EL_NONE(name, layout, GEOM_ARG, LOAD)                                                \
    kernel void name##_none_##layout(LOSS_ARGS, global float *out, int oo, int n GEOM_ARG) { \
        int i = get_global_id(0);                                                            \
        if (i >= n) return;                                                                  \
        LOAD(i)                                                                              \
        out[oo + i] = w * (V_##name);                                                        \
    }
#define EL_PART_BWD(name, layout, GEOM_ARG, LOAD)                                            \
    kernel void name##_part_##layout(LOSS_ARGS, global float *out, int oo, int n, int blocked, \
                                     float scale, local float *sc GEOM_ARG) {                \
        LOSS_RANGE(n, blocked, lo, hi, step)                                                 \
        float acc = 0.0f;                                                                    \
        for (int i = lo; i < hi; i += step) {                                                \
            LOAD(i)                                                                          \
            acc += w * (V_##name);                                                           \
        }                                                                                    \
        float s = loss_tree(sc, acc);                                                        \
        if (get_local_id(0) == 0) out[oo + get_group_id(0)] = s * scale;                     \
    }                                                                                        \
    kernel void name##_bwd_##layout(LOSS_ARGS, global const float *G, int go, int gscalar,   \
                                    float gscale, global float *GX, int gxo, global float *GT, \
                                    int gto, int n GEOM_ARG) {                               \
        int i = get_global_id(0);                                                            \
        if (i >= n) return;                                                                  \
        LOAD(i)                                                                              \
        float gw = (gscalar ? G[go] : G[go + i]) * gscale * w;                               \
        if (flags & KILN_LOSS_GX) GX[gxo + i] = gw * (GX_##name);                            \
        if (flags & KILN_LOSS_GT) GT[gto + i] = gw * (GT_##name);                            \
    }

#define COMMA ,
/* Penalties (pen1, pen2) are always reduced: no _none kernels. */
#define PEN_KERNELS(name)                                    \
    EL_PART_BWD(name, contig, , LOAD_CONTIG)                 \
    EL_PART_BWD(name, strided, COMMA loss_geom g, LOAD_STRIDED)
#define EL_KERNELS(name)                                     \
    EL_NONE(name, contig, , LOAD_CONTIG)                     \
    EL_NONE(name, strided, COMMA loss_geom g, LOAD_STRIDED)  \
    PEN_KERNELS(name)

EL_KERNELS(mse)
EL_KERNELS(l1)
EL_KERNELS(sl1)
EL_KERNELS(bce)
EL_KERNELS(bcel)
EL_KERNELS(lsgan)
PEN_KERNELS(pen1)
PEN_KERNELS(pen2)

/* ---- sums ---------------------------------------------------------------------------- */

/* Partial sums of A (and B when has_b) per work-group: PA[group], PB[group]. */
kernel void sum_part(global const float *A, int ao, global const float *B, int bo, int n, int has_b, int blocked,
                     global float *PA, int pao, global float *PB, int pbo, local float *sc) {
    LOSS_RANGE(n, blocked, lo, hi, step)
    float sa = 0.0f, sb = 0.0f;
    for (int i = lo; i < hi; i += step) {
        sa += A[ao + i];
        if (has_b) sb += B[bo + i];
    }
    float ta = loss_tree(sc, sa);
    if (get_local_id(0) == 0) PA[pao + get_group_id(0)] = ta;
    if (has_b) {
        barrier(CLK_LOCAL_MEM_FENCE);
        float tb = loss_tree(sc, sb);
        if (get_local_id(0) == 0) PB[pbo + get_group_id(0)] = tb;
    }
}

/* One work-group: out = scale * sum(A) / (has_b ? sum(B) : 1); den = sum(B) when has_b
 * (the mean's divisor, kept for the backward). */
kernel void sum_final(global const float *A, int ao, global const float *B, int bo, int n, int has_b, int blocked,
                      float scale, global float *out, int oo, global float *den, int deno, local float *sc) {
    LOSS_RANGE(n, blocked, lo, hi, step)
    float sa = 0.0f, sb = 0.0f;
    for (int i = lo; i < hi; i += step) {
        sa += A[ao + i];
        if (has_b) sb += B[bo + i];
    }
    float ta = loss_tree(sc, sa);
    float tb = 1.0f;
    if (has_b) {
        barrier(CLK_LOCAL_MEM_FENCE);
        tb = loss_tree(sc, sb);
    }
    if (get_local_id(0) == 0) {
        out[oo] = has_b ? scale * ta / tb : scale * ta;
        if (has_b) den[deno] = tb;
    }
}

/* ---- cross-entropy and nll: one work-item per row ------------------------------------ */
/*
 * Logits (or log-probabilities) [N, C, S] with strides sN, sC, sS (S: the product of the
 * trailing dims, 1 for [N, C]); row r = n * S + s has label Y[r]. weight [C] at stride wst.
 * Row outputs: L[r] the row's loss, RW[r] its weight (w[y], 0 when ignored: the mean's
 * divisor sums them) when flags has KILN_ROWS_RW, LSE[r] the log-sum-exp when it has
 * KILN_ROWS_LSE; KILN_ROWS_W: weight present (cl_kernels/kiln_shared.h). A label outside
 * [0, C) that is not `ignore` is recorded in the index-error buffer E as launch `site`
 * (kiln_bad_index) and its row counts as ignored.
 *
 * cross-entropy with label smoothing ls, as torch 1.13: with logp = x - lse,
 *   loss_r = (1 - ls) w[y] (-logp[y]) + (ls / C) sum_c w[c] (-logp[c])
 * computed from m = max_c x: lse - x_c = log(sum exp(x - m)) + (m - x_c), every term >= 0.
 */
kernel void ce_rows(global const float *X, int xo, int sN, int sC, int sS, int S, int C, global const int *Y,
                    int yo, global const float *W, int wo, int wst, int ignore, float ls, int flags, int nrows,
                    global float *L, int lo, global float *RW, int rwo, global float *LSE, int lseo,
                    global int *E, int site) {
    int r = get_global_id(0);
    if (r >= nrows) return;
    int n = r / S, s = r - n * S;
    int y = Y[yo + r];
    bool bad = y != ignore && (y < 0 || y >= C);
    if (bad) kiln_bad_index(E, site, y, r);
    if (y == ignore || bad) {
        L[lo + r] = 0.0f;
        if (flags & KILN_ROWS_RW) RW[rwo + r] = 0.0f;
        if (flags & KILN_ROWS_LSE) LSE[lseo + r] = 0.0f;
        return;
    }
    global const float *xr = X + xo + n * sN + s * sS;
    float m = -INFINITY;
    for (int c = 0; c < C; c++) {
        float v = xr[c * sC];
        m = v > m ? v : m;
    }
    float se = 0.0f, smooth = 0.0f, wsum = 0.0f;
    if (ls > 0.0f) {
        for (int c = 0; c < C; c++) {
            float d = xr[c * sC] - m;
            float wc = (flags & KILN_ROWS_W) ? W[wo + c * wst] : 1.0f;
            se += exp(d);
            smooth -= wc * d;
            wsum += wc;
        }
    } else {
        for (int c = 0; c < C; c++) se += exp(xr[c * sC] - m);
    }
    float lz = log(se);
    float wy = (flags & KILN_ROWS_W) ? W[wo + y * wst] : 1.0f;
    float l = (1.0f - ls) * wy * (lz - (xr[y * sC] - m));
    if (ls > 0.0f) l += (ls / (float)C) * (wsum * lz + smooth);
    L[lo + r] = l;
    if (flags & KILN_ROWS_RW) RW[rwo + r] = wy;
    if (flags & KILN_ROWS_LSE) LSE[lseo + r] = m + lz;
}

/*
 * Gradient of cross-entropy, one work-item per logit (output contiguous [N, C, S]):
 *   d loss_r / d x_c = softmax_c * Q - q_c,  q_c = (1 - ls) w[y] [c == y] + (ls / C) w[c],
 *   Q = sum_c q_c = (1 - ls) w[y] + (ls / C) WT   (WT = sum of the class weights, or C)
 * times the row's seed: G[r] (none) or G[0] (sum), divided by DEN[0] (mean: the summed
 * weights of the rows). flags: KILN_ROWS_BWD_* (cl_kernels/kiln_shared.h): weight given,
 * one scalar seed, divide by DEN, WT given (else WT = C).
 */
kernel void ce_bwd(global const float *X, int xo, int sN, int sC, int sS, int S, int C, global const int *Y, int yo,
                   global const float *W, int wo, int wst, int ignore, float ls, int flags, global const float *LSE,
                   int lseo, global const float *G, int go, global const float *DEN, int deno, global const float *WT,
                   int wto, global float *GX, int gxo, int nel) {
    int i = get_global_id(0);
    if (i >= nel) return;
    int q = i / S, s = i - q * S;
    int n = q / C, c = q - n * C;
    int r = n * S + s;
    int y = Y[yo + r];
    if (y == ignore || y < 0 || y >= C) { /* a bad label: the forward recorded it */
        GX[gxo + i] = 0.0f;
        return;
    }
    float g = (flags & KILN_ROWS_BWD_SCALAR) ? G[go] : G[go + r];
    if (flags & KILN_ROWS_BWD_DEN) g /= DEN[deno];
    float x = X[xo + n * sN + c * sC + s * sS];
    float sm = exp(x - LSE[lseo + r]);
    float wy = (flags & KILN_ROWS_BWD_W) ? W[wo + y * wst] : 1.0f;
    float gr;
    if (ls > 0.0f) {
        float wc = (flags & KILN_ROWS_BWD_W) ? W[wo + c * wst] : 1.0f;
        float wt = (flags & KILN_ROWS_BWD_WT) ? WT[wto] : (float)C;
        float k = ls / (float)C;
        float Q = (1.0f - ls) * wy + k * wt;
        gr = sm * Q - k * wc - (c == y ? (1.0f - ls) * wy : 0.0f);
    } else {
        gr = wy * (c == y ? sm - 1.0f : sm);
    }
    GX[gxo + i] = g * gr;
}

/* nll: loss_r = -w[y] logp[y] (same row layout and outputs as ce_rows, no LSE). */
kernel void nll_rows(global const float *X, int xo, int sN, int sC, int sS, int S, int C, global const int *Y,
                     int yo, global const float *W, int wo, int wst, int ignore, int flags, int nrows,
                     global float *L, int lo, global float *RW, int rwo, global int *E, int site) {
    int r = get_global_id(0);
    if (r >= nrows) return;
    int n = r / S, s = r - n * S;
    int y = Y[yo + r];
    float wy = 0.0f, l = 0.0f;
    bool bad = y != ignore && (y < 0 || y >= C);
    if (bad) kiln_bad_index(E, site, y, r);
    if (y != ignore && !bad) {
        wy = (flags & KILN_ROWS_W) ? W[wo + y * wst] : 1.0f;
        l = -wy * X[xo + n * sN + y * sC + s * sS];
    }
    L[lo + r] = l;
    if (flags & KILN_ROWS_RW) RW[rwo + r] = wy;
}

/* d nll / d logp: -w[y] * seed at the label, 0 elsewhere (flags as ce_bwd). */
kernel void nll_bwd(int S, int C, global const int *Y, int yo, global const float *W, int wo, int wst, int ignore,
                    int flags, global const float *G, int go, global const float *DEN, int deno, global float *GX,
                    int gxo, int nel) {
    int i = get_global_id(0);
    if (i >= nel) return;
    int q = i / S, s = i - q * S;
    int n = q / C, c = q - n * C;
    int r = n * S + s;
    int y = Y[yo + r];
    float v = 0.0f;
    if (y != ignore && c == y) { /* a bad label matches no c: the forward recorded it */
        float g = (flags & KILN_ROWS_BWD_SCALAR) ? G[go] : G[go + r];
        if (flags & KILN_ROWS_BWD_DEN) g /= DEN[deno];
        v = -((flags & KILN_ROWS_BWD_W) ? W[wo + y * wst] : 1.0f) * g;
    }
    GX[gxo + i] = v;
}

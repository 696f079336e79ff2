/* cl_kernels/reduce.cl - sum, max, min and argmax over any set of axes (src/ops/reduce.c).
 *
 * The host splits the input's dims into kept dims (one output each, the output is
 * contiguous) and reduced dims, coalesces each group and hands both over with the
 * input's strides. Two shapes of kernel:
 *   *_rows    one work-item per output, visiting its reduced elements in order;
 *   *_groups  one work-group of L work-items per output, or per contiguous segment of an
 *             output when few outputs have long reductions (a second launch then reduces
 *             the segments' partial results); each work-item reduces its share of the
 *             range, then the group combines its L partials in a tree in local memory.
 * No atomics: the order of every operation depends only on the shapes and the launch
 * geometry the host derives from them and the device, so a result is bit-identical from
 * run to run.
 */

/* kiln_red_geom, the reduction's geometry, comes from cl_kernels/kiln_shared.h. */

/* Offset of row-major index i over dims [0, n) of shape/stride. */
inline int red_off(const int *shape, const int *stride, int n, int i) {
    int off = 0;
    for (int d = n - 1; d >= 0; d--) {
        off += (i % shape[d]) * stride[d];
        i /= shape[d];
    }
    return off;
}

/* ---- accumulators ------------------------------------------------------------------- */

/*
 * A float sum whose rounding error grows with log2(n), not n: terms are added in order in
 * runs of RED_RUN, and the runs' sums are combined pairwise by a binary counter (level k
 * holds the sum of 2^k runs while bit k of nruns is set). Each term meets at most
 * RED_RUN + log2(n / RED_RUN) + 1 additions, against n for a plain running sum.
 */
#define RED_RUN 16
#define RED_LEVELS 32
typedef struct {
    float run;
    int nrun;
    uint nruns;
    float level[RED_LEVELS];
} red_sum;

inline void rs_init(red_sum *s) {
    s->run = 0.0f;
    s->nrun = 0;
    s->nruns = 0;
}

inline void rs_add(red_sum *s, float v) {
    s->run += v;
    if (++s->nrun < RED_RUN) return;
    float c = s->run;
    uint n = s->nruns;
    int k = 0;
    for (; n & 1u; n >>= 1, k++) c = s->level[k] + c;
    s->level[k] = c;
    s->nruns++;
    s->run = 0.0f;
    s->nrun = 0;
}

inline float rs_total(const red_sum *s) {
    float t = s->run;
    uint n = s->nruns;
    for (int k = 0; n; n >>= 1, k++)
        if (n & 1u) t += s->level[k];
    return t;
}

/* max/min that propagate NaN, as torch.max/torch.min (used to combine partials). */
inline float red_max(float a, float b) { return (a > b || isnan(a)) ? a : b; }
inline float red_min(float a, float b) { return (a < b || isnan(a)) ? a : b; }

/* Whether (v, i) beats the best (m, j) so far for argmax: NaN is the largest value (the
 * first NaN wins, as torch.argmax), ties go to the lower index. */
inline bool red_better(float v, int i, float m, int j) {
    if (isnan(v) || isnan(m)) return isnan(v) && (!isnan(m) || i < j);
    return v > m || (v == m && i < j);
}

/*
 * In the loops over elements, NaN is tracked apart from the comparisons: a plain
 * compare-and-select chain per element (one instruction on most hardware) plus an
 * independent flag, instead of a longer dependent chain that tests for NaN at every step
 * (that was markedly slower on POCL; README.md, "Speed", has the figure). The loops visit
 * indices in increasing order, so for argmax a strictly greater value is the only reason to
 * move, and the first NaN is the smallest index at which one was seen.
 */
#define RED_NAN_FIRST(fn, v, r) fn = (isnan(v) & ((fn) == INT_MAX)) ? (r) : (fn)

/* ---- loops over one output's reduced elements --------------------------------------- */

/* Every reduced element of the output whose first element is x[base], in order: r is the
 * row-major index over the reduced dims, v the value. The innermost dim is a plain
 * strided loop; only the outer dims pay for divisions. */
#define RED_ROW_LOOP(g, base, r, v, BODY)                                                 \
    do {                                                                                  \
        int last_ = (g).rndim - 1;                                                        \
        int inner_ = (g).rshape[last_], istr_ = (g).rstride[last_];                       \
        int nouter_ = inner_ ? (g).nred / inner_ : 0;                                     \
        for (int q_ = 0; q_ < nouter_; q_++) {                                            \
            int p_ = (base) + red_off((g).rshape, (g).rstride, last_, q_);                \
            for (int j_ = 0; j_ < inner_; j_++) {                                         \
                int r = q_ * inner_ + j_;                                                 \
                float v = x[p_ + j_ * istr_];                                             \
                (void)r;                                                                  \
                BODY;                                                                     \
            }                                                                             \
        }                                                                                 \
    } while (0)

/* Reduced elements r = start, start + step, ... < end (uint: start + step may pass
 * INT_MAX on the last turn). A contiguous range (step 1: the CPU's blocked layout) walks
 * the innermost reduced dim in runs, paying the divisions of red_off once per run instead
 * of once per element; the elements and their order are the same either way. */
#define RED_STRIDED_LOOP(g, base, start, end, step, r, v, BODY)                           \
    if ((step) == 1 && (g).rndim > 1) {                                                   \
        int last_ = (g).rndim - 1, inner_ = (g).rshape[last_], istr_ = (g).rstride[last_]; \
        for (int r0_ = (start); r0_ < (end);) {                                           \
            int q_ = r0_ / inner_, j0_ = r0_ - q_ * inner_;                               \
            int n_ = min(inner_ - j0_, (end) - r0_);                                      \
            int p_ = (base) + red_off((g).rshape, (g).rstride, last_, q_) + j0_ * istr_;  \
            for (int j_ = 0; j_ < n_; j_++) {                                             \
                int r = r0_ + j_;                                                         \
                float v = x[p_ + j_ * istr_];                                             \
                (void)r;                                                                  \
                BODY;                                                                     \
            }                                                                             \
            r0_ += n_;                                                                    \
        }                                                                                 \
    } else                                                                                \
        for (uint u_ = (uint)(start); u_ < (uint)(end); u_ += (uint)(step)) {             \
            int r = (int)u_;                                                              \
            int p_ = (base) + ((g).rndim == 1 ? r * (g).rstride[0]                        \
                                              : red_off((g).rshape, (g).rstride, (g).rndim, r)); \
            float v = x[p_];                                                              \
            (void)r;                                                                      \
            BODY;                                                                         \
        }

/* The work-group's output o, its segment's range [lo, hi) of reduced indices (segments
 * are whole multiples of L long), the offset of the output's first element, and the
 * work-item's elements: r = i0, i0 + istep, ... < i1. On GPUs (blocked = 0) neighbouring
 * work-items read neighbouring elements; on CPUs (blocked = 1), where POCL runs a group's
 * work-items one after another, each takes a contiguous block instead, so that each does
 * not stream through the whole segment for one element per cache line. */
#define RED_GROUP_SETUP(g, nseg, blocked)                                                 \
    int grp = get_group_id(0), o = grp / (nseg), seg = grp - o * (nseg);                  \
    int lid = get_local_id(0), L = get_local_size(0);                                     \
    int seglen = (((g).nred - 1) / ((nseg) * L) + 1) * L, per = seglen / L;               \
    int lo = seg * seglen, hi = min((g).nred - lo, seglen) + lo;                          \
    int i0 = (blocked) ? lo + lid * per : lo + lid;                                       \
    int i1 = (blocked) ? min(hi - i0, per) + i0 : hi;                                     \
    int istep = (blocked) ? 1 : L;                                                        \
    int base = xoff + red_off((g).kshape, (g).kstride, (g).kndim, o)

/* ---- sum (mean: div = number of reduced elements; sum: div = 1) --------------------- */

kernel void sum_rows(global const float *x, int xoff, global float *y, int yoff, kiln_red_geom g, float div) {
    int o = get_global_id(0);
    if (o >= g.nout) return;
    int base = xoff + red_off(g.kshape, g.kstride, g.kndim, o);
    red_sum s;
    rs_init(&s);
    RED_ROW_LOOP(g, base, r, v, rs_add(&s, v));
    y[yoff + o] = rs_total(&s) / div;
}

/*
 * sum_rows for RED_VW neighbouring outputs per work-item, when the kept dims coalesce into
 * one dim of stride 1 (a linear's bias gradient: a [rows, n] gradient summed over its
 * rows). Each vector lane makes exactly the additions sum_rows makes for its output, in
 * the same order, so the results are bit-identical to sum_rows'; the vectors only let the
 * lanes share instructions (red_sum's private array keeps POCL from vectorising sum_rows
 * across work-items). A work-item left with fewer than RED_VW outputs sums them one by
 * one, as sum_rows.
 */
#define RED_VW 8
typedef struct {
    float8 run;
    int nrun;
    uint nruns;
    float8 level[RED_LEVELS];
} red_sum8;

inline void rs8_add(red_sum8 *s, float8 v) {
    s->run += v;
    if (++s->nrun < RED_RUN) return;
    float8 c = s->run;
    uint n = s->nruns;
    int k = 0;
    for (; n & 1u; n >>= 1, k++) c = s->level[k] + c;
    s->level[k] = c;
    s->nruns++;
    s->run = (float8)(0.0f);
    s->nrun = 0;
}

inline float8 rs8_total(const red_sum8 *s) {
    float8 t = s->run;
    uint n = s->nruns;
    for (int k = 0; n; n >>= 1, k++)
        if (n & 1u) t += s->level[k];
    return t;
}

kernel void sum_rows_vec(global const float *x, int xoff, global float *y, int yoff, kiln_red_geom g, float div) {
    int o = get_global_id(0) * RED_VW;
    if (o >= g.nout) return;
    if (o + RED_VW > g.nout) {
        for (; o < g.nout; o++) {
            red_sum s;
            rs_init(&s);
            RED_ROW_LOOP(g, xoff + o, r, v, rs_add(&s, v));
            y[yoff + o] = rs_total(&s) / div;
        }
        return;
    }
    int last = g.rndim - 1, inner = g.rshape[last], istr = g.rstride[last];
    int nouter = inner ? g.nred / inner : 0;
    red_sum8 s;
    s.run = (float8)(0.0f);
    s.nrun = 0;
    s.nruns = 0;
    for (int q = 0; q < nouter; q++) {
        int p = xoff + o + red_off(g.rshape, g.rstride, last, q);
        for (int j = 0; j < inner; j++) rs8_add(&s, vload8(0, x + p + j * istr));
    }
    vstore8(rs8_total(&s) / div, 0, y + yoff + o);
}

/* y[yoff + group] for group = o * nseg + segment. */
kernel void sum_groups(global const float *x, int xoff, global float *y, int yoff, kiln_red_geom g, int nseg,
                       int blocked, float div, local float *part) {
    RED_GROUP_SETUP(g, nseg, blocked);
    red_sum s;
    rs_init(&s);
    RED_STRIDED_LOOP(g, base, i0, i1, istep, r, v, rs_add(&s, v));
    part[lid] = rs_total(&s);
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = L >> 1; h > 0; h >>= 1) {
        if (lid < h) part[lid] += part[lid + h];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) y[yoff + grp] = part[0] / div;
}

/* ---- max, min ----------------------------------------------------------------------- */

#define RED_MINMAX(NAME, FN, CMP, INIT)                                                     \
    kernel void NAME##_rows(global const float *x, int xoff, global float *y, int yoff,     \
                            kiln_red_geom g) {                                              \
        int o = get_global_id(0);                                                           \
        if (o >= g.nout) return;                                                            \
        int base = xoff + red_off(g.kshape, g.kstride, g.kndim, o);                         \
        float m = INIT;                                                                     \
        int saw_nan = 0;                                                                    \
        RED_ROW_LOOP(g, base, r, v, m = (v CMP m) ? v : m; saw_nan |= isnan(v));            \
        y[yoff + o] = saw_nan ? NAN : m;                                                    \
    }                                                                                       \
    kernel void NAME##_groups(global const float *x, int xoff, global float *y, int yoff,   \
                              kiln_red_geom g, int nseg, int blocked, local float *part) {  \
        RED_GROUP_SETUP(g, nseg, blocked);                                                  \
        float m = INIT;                                                                     \
        int saw_nan = 0;                                                                    \
        RED_STRIDED_LOOP(g, base, i0, i1, istep, r, v, m = (v CMP m) ? v : m;               \
                         saw_nan |= isnan(v));                                              \
        part[lid] = saw_nan ? NAN : m;                                                      \
        barrier(CLK_LOCAL_MEM_FENCE);                                                       \
        for (int h = L >> 1; h > 0; h >>= 1) {                                              \
            if (lid < h) part[lid] = FN(part[lid], part[lid + h]);                          \
            barrier(CLK_LOCAL_MEM_FENCE);                                                   \
        }                                                                                   \
        if (lid == 0) y[yoff + grp] = part[0];                                              \
    }

RED_MINMAX(max, red_max, >, -INFINITY)
RED_MINMAX(min, red_min, <, INFINITY)

/* ---- argmax ------------------------------------------------------------------------- */

kernel void argmax_rows(global const float *x, int xoff, global int *y, int yoff, kiln_red_geom g) {
    int o = get_global_id(0);
    if (o >= g.nout) return;
    int base = xoff + red_off(g.kshape, g.kstride, g.kndim, o);
    /* j starts at the first index: an all -Inf row never moves it */
    float m = -INFINITY;
    int j = 0, fn = INT_MAX;
    RED_ROW_LOOP(g, base, r, v, bool gt = v > m; m = gt ? v : m; j = gt ? r : j; RED_NAN_FIRST(fn, v, r));
    y[yoff + o] = fn != INT_MAX ? fn : j;
}

/* Writes each group's best value to yv and its index to yi (argmax_merge combines the
 * segments' results when nseg > 1). */
kernel void argmax_groups(global const float *x, int xoff, global float *yv, int yvoff, global int *yi, int yioff,
                          kiln_red_geom g, int nseg, int blocked, local float *pv, local int *pi) {
    RED_GROUP_SETUP(g, nseg, blocked);
    /* j starts at the item's first index. An item gets no element only in the segment
     * that holds the end of the reduction (or past it), so then j >= nred: its (-Inf, j)
     * loses every tie with a real element. */
    float m = -INFINITY;
    int j = i0, fn = INT_MAX;
    RED_STRIDED_LOOP(g, base, i0, i1, istep, r, v, bool gt = v > m; m = gt ? v : m; j = gt ? r : j;
                     RED_NAN_FIRST(fn, v, r));
    pv[lid] = fn != INT_MAX ? NAN : m;
    pi[lid] = fn != INT_MAX ? fn : j;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = L >> 1; h > 0; h >>= 1) {
        if (lid < h && red_better(pv[lid + h], pi[lid + h], pv[lid], pi[lid])) {
            pv[lid] = pv[lid + h];
            pi[lid] = pi[lid + h];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) {
        yv[yvoff + grp] = pv[0];
        yi[yioff + grp] = pi[0];
    }
}

/* y[o] = the index of the best of the nseg (value, index) partials of output o. */
kernel void argmax_merge(global const float *pv, int pvoff, global const int *pi, int pioff, int nout, int nseg,
                         global int *y, int yoff) {
    int o = get_global_id(0);
    if (o >= nout) return;
    float m = -INFINITY;
    int j = INT_MAX;
    for (int s = 0; s < nseg; s++) {
        float v = pv[pvoff + o * nseg + s];
        int i = pi[pioff + o * nseg + s];
        if (red_better(v, i, m, j)) {
            m = v;
            j = i;
        }
    }
    y[yoff + o] = j;
}

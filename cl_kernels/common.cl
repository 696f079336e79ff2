/* cl_kernels/common.cl - types and index helpers put in front of every kiln program, after
 * cl_kernels/kiln_shared.h (the structs the host shares: kiln_geom, ...). */

#define KILN_MAX_DIMS KILN_SHARED_DIMS

/* Offset of row-major linear index i of the output in input j. */
inline int kiln_offset(const kiln_geom *g, int j, int i) {
    int off = 0;
    for (int d = g->ndim - 1; d >= 0; d--) {
        int n = g->shape[d];
        off += (i % n) * g->strides[j][d];
        i /= n;
    }
    return off;
}

/* Records bad index `value` at flat position `pos` of launch `site` in the context's
 * index-error buffer E (src/device/deverr.c): the first one recorded keeps its value and
 * position (claimed with a compare-and-swap; a claimed but unfilled record reads -1 and is
 * filled before the kernel ends), every one is counted. The caller then skips the index. */
inline void kiln_bad_index(global int *E, int site, int value, int pos) {
    atomic_inc(&E[KILN_ERRBUF_COUNT]);
    if (atomic_cmpxchg(&E[KILN_ERRBUF_FLAG], 0, -1) == 0) {
        E[KILN_ERRBUF_VALUE] = value;
        E[KILN_ERRBUF_POS] = pos;
        atomic_xchg(&E[KILN_ERRBUF_FLAG], site + 1);
    }
}

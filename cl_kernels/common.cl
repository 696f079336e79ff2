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

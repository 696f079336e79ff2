/* cl_kernels/common.cl - types and index helpers put in front of every kiln program. */

#define KILN_MAX_DIMS 8
#define KILN_GEOM_IN 3

/* Geometry of a strided launch, mirrored by kiln__geom in src/tensor/tensor_internal.h: the output
 * is contiguous with `shape`; input j reads element i at sum_d idx_d * strides[j][d]. */
typedef struct {
    int ndim;
    int shape[KILN_MAX_DIMS];
    int strides[KILN_GEOM_IN][KILN_MAX_DIMS];
} kiln_geom;

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

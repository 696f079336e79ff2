/* cl_kernels/cast.cl - dtype conversions between f32, f16 and bf16 (src/ops/cast.c). Built
 * with -DSRC=<dtype> -DDST=<dtype> (kiln_dtype values: 0 f32, 1 f16, 4 bf16). Rounding is
 * to nearest, ties to even, as the host's kiln_f32_to_f16/kiln_f32_to_bf16, by integer
 * operations (common.cl's kiln_f16_rte, the bits vstore_half_rte gives; overflow gives inf)
 * and bf16's (NaN kept); f16 is read with vload_half (core OpenCL 1.2, no cl_khr_fp16
 * needed). Widening is exact. */

#if SRC == 0
#define SRC_T float
#define SRC_LD(p, i) ((p)[i])
#elif SRC == 1
#define SRC_T ushort
#define SRC_LD(p, i) vload_half((i), (const global half *)(p))
#else
#define SRC_T ushort
#define SRC_LD(p, i) kiln_bf16_ld((p)[i])
#endif

#if DST == 0
#define DST_T float
#define DST_ST(p, i, v) ((p)[i] = (v))
#elif DST == 1
#define DST_T ushort
#define DST_ST(p, i, v) ((p)[i] = kiln_f16_rte(v))
#else
#define DST_T ushort
#define DST_ST(p, i, v) ((p)[i] = kiln_bf16_rte(v))
#endif

/* dst[doff + i] = convert(src[soff + offset(i)]): any view in, contiguous out. */
kernel void cast_strided(global const SRC_T *src, int soff, global DST_T *dst, int doff, int n, kiln_geom g) {
    int i = get_global_id(0);
    if (i >= n) return;
    int o = g.ndim == 1 ? i * g.strides[0][0] : kiln_offset(&g, 0, i);
    float v = SRC_LD(src, soff + o);
    DST_ST(dst, doff + i, v);
}

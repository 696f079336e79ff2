/* cl_kernels/random.cl - Philox4x32-10 counter-based random numbers (Salmon, Moraes, Dror,
 * Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11), as in Random123.
 *
 * Element i of a launch encrypts the 128-bit counter (ctr + i as a 64-bit value in words
 * 0 and 1, words 2 and 3 zero) under the key (seed low 32, seed high 32): common.cl's
 * KILN_PHILOX_X01, which dropout (norm.cl) shares. Its value depends only on (seed, ctr + i):
 * not on the work-group size, the launch shape or the device. src/ops/random.c describes how
 * words become floats. */

/* dst[off + i] = min(fma(range, u, low), top), u = (x0 >> 8) * 2^-24 in [0, 1). range =
 * high - low and top = the largest float below high come from the host, so every device
 * computes the same correctly rounded value: the output is bit-exact across devices. */
kernel void rand_uniform(global float *dst, int off, int n, uint key0, uint key1, uint ctr_lo, uint ctr_hi,
                         float low, float range, float top) {
    size_t i = get_global_id(0);
    if (i >= (size_t)n) return;
    uint x0, x1; /* (x1 unused: dead code) */
    KILN_PHILOX_X01(x0, x1, (uint)i, key0, key1, ctr_lo, ctr_hi);
    float u = (float)(x0 >> 8) * 0x1.0p-24f;
    dst[off + (int)i] = fmin(fma(range, u, low), top);
}

/* Box-Muller: u1 = ((x0 >> 8) + 1) * 2^-24 in (0, 1], u2 = (x1 >> 8) * 2^-24 in [0, 1),
 * z = sqrt(-2 log u1) * cos(2 pi u2) (cospi(2 u2): no rounding of 2 pi u2), value =
 * mean + std * z. log/sqrt/cospi are the device's (within OpenCL's ulp limits). */
kernel void rand_normal(global float *dst, int off, int n, uint key0, uint key1, uint ctr_lo, uint ctr_hi,
                        float mean, float stdev) {
    size_t i = get_global_id(0);
    if (i >= (size_t)n) return;
    uint x0, x1;
    KILN_PHILOX_X01(x0, x1, (uint)i, key0, key1, ctr_lo, ctr_hi);
    float u1 = (float)((x0 >> 8) + 1u) * 0x1.0p-24f;
    float u2 = (float)(x1 >> 8) * 0x1.0p-24f;
    float z = sqrt(-2.0f * log(u1)) * cospi(2.0f * u2);
    dst[off + (int)i] = fma(stdev, z, mean);
}

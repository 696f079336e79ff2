/* cl_kernels/random.cl - Philox4x32-10 counter-based random numbers (Salmon, Moraes, Dror,
 * Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11), as in Random123.
 *
 * Element i of a launch encrypts the 128-bit counter (ctr + i as a 64-bit value in words
 * 0 and 1, words 2 and 3 zero) under the key (seed low 32, seed high 32). Its value depends
 * only on (seed, ctr + i): not on the work-group size, the launch shape or the device.
 * src/ops/random.c describes how words become floats. */

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

/* Ten rounds; the key is bumped by the Weyl constants before every round after the first
 * (Random123's philox4x32_R order). */
inline uint4 philox4x32_10(uint4 c, uint2 k) {
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k.x += PHILOX_W0;
            k.y += PHILOX_W1;
        }
        uint hi0 = mul_hi(PHILOX_M0, c.x), lo0 = PHILOX_M0 * c.x;
        uint hi1 = mul_hi(PHILOX_M1, c.z), lo1 = PHILOX_M1 * c.z;
        c = (uint4)(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    }
    return c;
}

/* The output block of element i: counter (ctr_lo, ctr_hi) + i with the carry. */
inline uint4 philox_at(uint i, uint key0, uint key1, uint ctr_lo, uint ctr_hi) {
    uint lo = ctr_lo + i;
    uint hi = ctr_hi + (lo < ctr_lo ? 1u : 0u);
    return philox4x32_10((uint4)(lo, hi, 0u, 0u), (uint2)(key0, key1));
}

/* dst[off + i] = min(fma(range, u, low), top), u = (x0 >> 8) * 2^-24 in [0, 1). range =
 * high - low and top = the largest float below high come from the host, so every device
 * computes the same correctly rounded value: the output is bit-exact across devices. */
kernel void rand_uniform(global float *dst, int off, int n, uint key0, uint key1, uint ctr_lo, uint ctr_hi,
                         float low, float range, float top) {
    size_t i = get_global_id(0);
    if (i >= (size_t)n) return;
    uint4 x = philox_at((uint)i, key0, key1, ctr_lo, ctr_hi);
    float u = (float)(x.x >> 8) * 0x1.0p-24f;
    dst[off + (int)i] = fmin(fma(range, u, low), top);
}

/* Box-Muller: u1 = ((x0 >> 8) + 1) * 2^-24 in (0, 1], u2 = (x1 >> 8) * 2^-24 in [0, 1),
 * z = sqrt(-2 log u1) * cos(2 pi u2) (cospi(2 u2): no rounding of 2 pi u2), value =
 * mean + std * z. log/sqrt/cospi are the device's (within OpenCL's ulp limits). */
kernel void rand_normal(global float *dst, int off, int n, uint key0, uint key1, uint ctr_lo, uint ctr_hi,
                        float mean, float stdev) {
    size_t i = get_global_id(0);
    if (i >= (size_t)n) return;
    uint4 x = philox_at((uint)i, key0, key1, ctr_lo, ctr_hi);
    float u1 = (float)((x.x >> 8) + 1u) * 0x1.0p-24f;
    float u2 = (float)(x.y >> 8) * 0x1.0p-24f;
    float z = sqrt(-2.0f * log(u1)) * cospi(2.0f * u2);
    dst[off + (int)i] = fma(stdev, z, mean);
}

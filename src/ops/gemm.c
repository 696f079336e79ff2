/* src/ops/gemm.c - kiln's own GEMM kernels (cl_kernels/gemm.cl), which products
 * kiln__sgemm hands them instead of CLBlast, and which parameter set each device gets.
 *
 * On CPU devices CLBlast's indirect kernel copies its operands into padded (and, for a
 * transposed B, transposed) temporaries on every call, and its tuned parameters stay well
 * below OpenBLAS: a linear layer's x W^T re-copied the whole weight each step, and the
 * reference CNN's and MLP's fc1 forward ran at a fraction of OpenBLAS's speed. kiln's two
 * kernels read the operands in place, with register blocks sized to the vector register
 * file:
 *   - gemm_nt, A B^T with both K contiguous: dot products of rows;
 *   - gemm_nn, op(A) B with B's rows contiguous: outer products; and A^T B^T as gemm_nn
 *     on (B, A), whose product is C^T, stored transposed.
 * Both compute alpha op(A) op(B) + beta C, so on CPUs they take every product and CLBlast
 * none (README, "Speed", has the figures); GPUs keep CLBlast, whose kernels use local
 * memory as these do not. A K operand whose rows fall into the same cache sets is read
 * through a padded copy (kiln__gemm_pad_wanted says when).
 *
 * The block shape, vector width and K unroll are build options of the kernels; the table
 * below holds one set per instruction set, chosen from the LLVM target in POCL's device
 * name ("pthread-haswell-AMD EPYC") or, for a target it does not know, from the device's
 * vector width. A set that needs more vector registers than the CPU has spills its
 * accumulators to the stack every k: on AVX2 the AVX-512 set (16 float16 accumulators of
 * two ymm registers each) ran at 0.4-0.6x OpenBLAS (issue 14). `kiln tune` and, with
 * KILN_TUNE=auto, the first product search the sets around the table's (the last section). */
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ops_internal.h"

#define GEMM_PROGRAM "gemm"

enum { SET_AVX512, SET_AVX2, SET_NEON, SET_VEC4, SET_DEVICES };

/* Registers counted per k step: gemm_nt holds RM*RN accumulators, RN vectors of B and one
 * of A; gemm_nn holds RM*NV accumulators, NV vectors of B and one broadcast of A. */
const kiln__gemm_params kiln__gemm_sets[KILN__GEMM_SETS] = {
    /* AVX-512, 32 zmm of 16 floats: nt 4x4 -> 16 + 4 + 1 = 21; nn 8x32 -> 16 + 2 + 1 = 19.
     * The shapes kiln's figures on AVX-512 were measured with (README, "Speed"). */
    [SET_AVX512] = {"avx512", 4, 4, 16, 1, 8, 2, 16, 1},
    /* AVX2, 16 ymm of 8 floats: nt 4x3 -> 12 + 3 + 1 = 16, one vector per step (the mirror
     * 3x4 takes 17 and spills; a second vector per step would too). nn 6x16 -> 12 + 2 + 1 =
     * 15 (8x16 would take 19): the block BLIS and OpenBLAS use on Haswell. Both were the
     * fastest of the shapes measured with POCL generating haswell code (README, "Speed"). */
    [SET_AVX2] = {"avx2", 4, 3, 8, 1, 6, 2, 8, 1},
    /* NEON (AArch64), 32 q registers of 4 floats, unmeasured: nt 4x4 -> 16 + 4 + 1 = 21,
     * two vectors (32 bytes of each row) per iteration; nn 8x12 -> 24 + 3 + 1 = 28, the
     * block of OpenBLAS's ARMv8 sgemm kernel. */
    [SET_NEON] = {"neon", 4, 4, 4, 2, 8, 3, 4, 1},
    /* 4-wide vectors with 16 registers (SSE, or a device whose register file is not
     * known): nt 3x3 -> 13; nn 4x8 -> 8 + 2 + 1 = 11. */
    [SET_VEC4] = {"vec4", 3, 3, 4, 2, 4, 2, 4, 1},
    /* Never chosen for a device: odd shapes that tests run so that the kernels' block
     * arithmetic is checked away from the powers of two (narrow vectors, one vector per
     * row, a K unroll that does not divide a vector's multiple). */
    {"odd-a", 5, 2, 2, 3, 3, 1, 4, 3},
    {"odd-b", 1, 7, 8, 1, 7, 3, 2, 2},
};

/* LLVM CPU names in POCL's device names, by the instruction set whose parameter set they
 * get; a name ending in '*' matches every name that starts with the rest. */
static const struct {
    const char *cpu;
    int set;
} targets[] = {
    {"skylake-avx512", SET_AVX512}, {"cascadelake", SET_AVX512},    {"cooperlake", SET_AVX512},
    {"cannonlake", SET_AVX512},     {"icelake-client", SET_AVX512}, {"icelake-server", SET_AVX512},
    {"tigerlake", SET_AVX512},      {"rocketlake", SET_AVX512},     {"sapphirerapids", SET_AVX512},
    {"emeraldrapids", SET_AVX512},  {"graniterapids*", SET_AVX512}, {"znver4", SET_AVX512},
    {"znver5", SET_AVX512},         {"x86-64-v4", SET_AVX512},      {"haswell", SET_AVX2},
    {"broadwell", SET_AVX2},        {"skylake", SET_AVX2},          {"alderlake", SET_AVX2},
    {"raptorlake", SET_AVX2},       {"meteorlake", SET_AVX2},       {"arrowlake*", SET_AVX2},
    {"lunarlake", SET_AVX2},        {"gracemont", SET_AVX2},        {"znver1", SET_AVX2},
    {"znver2", SET_AVX2},           {"znver3", SET_AVX2},           {"x86-64-v3", SET_AVX2},
    {"cortex-a*", SET_NEON},        {"cortex-x*", SET_NEON},        {"neoverse-*", SET_NEON},
    {"apple-*", SET_NEON},          {"ampere1*", SET_NEON},         {"thunderx*", SET_NEON},
    {"generic-armv8*", SET_NEON},
};

/* POCL's CPU device names: "<driver>-<llvm cpu>-<the CPU's own name>". */
static const char *const pocl_prefixes[] = {"pthread-", "cpu-", "basic-", "cpu-minimal-"};

int kiln__gemm_choose(const kiln_device_info *info, char *target, size_t cap, const char **isa) {
    if (cap) target[0] = '\0';
    if (isa) *isa = "unknown";
    const char *rest = NULL;
    for (size_t i = 0; i < sizeof pocl_prefixes / sizeof pocl_prefixes[0]; i++) {
        size_t n = strlen(pocl_prefixes[i]);
        if (strncmp(info->name, pocl_prefixes[i], n) == 0) rest = info->name + n;
    }
    if (rest) {
        for (size_t i = 0; i < sizeof targets / sizeof targets[0]; i++) {
            const char *cpu = targets[i].cpu;
            size_t n = strlen(cpu);
            bool family = cpu[n - 1] == '*';
            if (family) n--;
            if (strncmp(rest, cpu, n) != 0) continue;
            /* the whole name, or (a family) up to the next '-' */
            size_t end = n;
            if (family)
                while (rest[end] && rest[end] != '-') end++;
            else if (rest[end] != '\0' && rest[end] != '-')
                continue;
            if (cap) snprintf(target, cap, "%.*s", (int)end, rest);
            if (isa) *isa = kiln__gemm_sets[targets[i].set].name;
            return targets[i].set;
        }
        /* an unknown target: its name up to the next '-' for the record */
        size_t end = 0;
        while (rest[end] && rest[end] != '-') end++;
        if (cap) snprintf(target, cap, "%.*s", (int)end, rest);
    }
    /* unknown: by the widest vector the device says suits floats */
    uint32_t w = info->native_vector_width_float > info->preferred_vector_width_float
                     ? info->native_vector_width_float
                     : info->preferred_vector_width_float;
    return w >= 16 ? SET_AVX512 : w >= 8 ? SET_AVX2 : SET_VEC4;
}

/* Whether KILN_TUNE=auto's search applies to ctx: a CPU device whose products kiln's
 * kernels take (not forced elsewhere by a hook, KILN_GEMM_OWN=off or `kiln tune`), and the
 * stored file in use (not KILN_TUNE_FILE's). */
static bool autotune_wanted(const kiln_ctx *ctx) {
    if (ctx->info.type != KILN_DEVICE_CPU || ctx->hooks.gemm_own != 0 || strcmp(kiln__tune_mode(), "auto") != 0)
        return false;
    const char *own = getenv("KILN_GEMM_OWN"), *file = getenv("KILN_TUNE_FILE");
    return !(own && (strcmp(own, "off") == 0 || strcmp(own, "0") == 0)) && !(file && *file);
}

const kiln__gemm_params *kiln__gemm_params_of(kiln_ctx *ctx) {
    int i = ctx->hooks.gemm_params;
    if (i != 0) return i > 0 && i <= KILN__GEMM_SETS ? &kiln__gemm_sets[i - 1] : NULL;
    /* KILN_GEMM_PARAMS=<set name>: one set on any device, to compare sets in one sitting */
    const char *e = getenv("KILN_GEMM_PARAMS");
    if (e && *e) {
        for (int s = 0; s < KILN__GEMM_SETS; s++)
            if (strcmp(e, kiln__gemm_sets[s].name) == 0) return &kiln__gemm_sets[s];
        return NULL;
    }
    /* what kiln tune found best on this device (src/device/tuning.c checked its ranges) */
    if (ctx->has_gemm_tuned) return &ctx->gemm_tuned;
    /* KILN_TUNE=auto: searched for here, at the first product, once per context */
    if (ctx->gemm_autotune == 0) {
        ctx->gemm_autotune = autotune_wanted(ctx) ? 0 : 3;
        kiln__gemm_autotune(ctx);
        if (ctx->has_gemm_tuned) return &ctx->gemm_tuned;
    }
    /* the device's name and vector widths never change: parse them once, not per product */
    if (!ctx->gemm_table_set) ctx->gemm_table_set = 1 + kiln__gemm_choose(&ctx->info, NULL, 0, NULL);
    return &kiln__gemm_sets[ctx->gemm_table_set - 1];
}

void kiln__gemm_describe(const kiln__gemm_params *p, char *buf, size_t cap) {
    snprintf(buf, cap, "%s: nt %dx%d float%d k-unroll %d, nn %dx%d float%d k-unroll %d", p->name, p->nt_rm, p->nt_rn,
             p->nt_vw, p->nt_ku, p->nn_rm, p->nn_nv * p->nn_vw, p->nn_vw, p->nn_ku);
}

static size_t blocks(size_t x, size_t b) { return (x + b - 1) / b; }

/* Work-groups: gemm_nt's are nt_groups[set] (blocks along M x along N) of neighbouring
 * blocks sharing rows of A and B; gemm_nn's NN_LY column blocks of one row block, sharing
 * A's rows. POCL runs a group's items one after another on one thread, and each group
 * costs a dispatch: with a short K (the LSTM's 2048 x 1024 x 128 A B^T) groups of one item
 * spent a third of their time there. The avx2 set once ran its gemm_nt 30-40% slower in
 * 4 x 4 groups than in groups of one; that was with the lane sums through a private array
 * (nt_hsum in gemm.cl); with the tree of vector adds 4 x 4 was as fast or faster on every
 * shape timed (README.md, "Speed"). (1 x 4 and 4 x 1 ran some shapes at half speed: POCL
 * compiles each group shape on its own.) The neon and vec4 sets keep 4 x 4 (unmeasured);
 * odd-b's odd group checks the launch's rounding. */
#define NT_GROUP_MAX 4
static const size_t nt_groups[KILN__GEMM_SETS][2] = {
    [SET_AVX512] = {4, 4}, [SET_AVX2] = {4, 4}, [SET_NEON] = {4, 4}, [SET_VEC4] = {4, 4}, {4, 4}, {2, 3},
};
#define NN_LY 8

/* The table entry p is, or for a set kiln tune stored (a copy), the entry the device's
 * table gives it (the same instruction set): the index of nt_groups and pad_reuse. */
static int set_of(kiln_ctx *ctx, const kiln__gemm_params *p) {
    for (int i = 0; i < KILN__GEMM_SETS; i++)
        if (p == &kiln__gemm_sets[i]) return i;
    if (!ctx->gemm_table_set) ctx->gemm_table_set = 1 + kiln__gemm_choose(&ctx->info, NULL, 0, NULL);
    return ctx->gemm_table_set - 1;
}

/* The kernel's view of a product: gemm_nt for A B^T, gemm_nn for op(A) B, and for A^T B^T
 * gemm_nn on (B, A) with a transposed store (NN_TC): C^T = B A, where kiln's B [n, k] is the
 * kernel's A (not transposed) and kiln's A [k, m] its B. With narrow (narrow_n, A^T B) the
 * same transposed store: C^T = B^T A, kiln's B [k, n] the kernel's A read transposed and
 * kiln's A [k, m] its B. */
typedef struct {
    bool nt, tc;
    size_t m, n; /* the kernel's M and N */
    size_t bm, bn;
} kernel_view;

#define NARROW 16
/* Whether op(A) B (B not transposed) has fewer columns than the widest set's vector (NARROW),
 * more than one, and more rows: gemm_nn computes a row narrower than its vector one column
 * at a time, with scalar loads of A: 2048 x 8 x 512 took 1.05 ms so against OpenBLAS's 0.19,
 * 512 x 10 x 2048 A^T B 2.2 against 0.31, a policy network's weight gradient 128 x 4 x 256
 * A^T B 0.031 against 0.007. gemm_run runs A^T B as C^T = B^T A (view_of's narrow) and A B
 * in gemm_nt on a transposed copy of B. */
static bool narrow_n(bool tb, size_t m, size_t n) { return !tb && n > 1 && n < NARROW && m > n; }

static kernel_view view_of(const kiln__gemm_params *p, bool ta, bool tb, size_t m, size_t n, bool narrow) {
    kernel_view v;
    v.nt = tb && !ta;
    v.tc = (ta && tb) || narrow;
    v.m = v.tc ? n : m;
    v.n = v.tc ? m : n;
    v.bm = v.nt ? (size_t)p->nt_rm : (size_t)p->nn_rm;
    v.bn = v.nt ? (size_t)p->nt_rn : (size_t)(p->nn_nv * p->nn_vw);
    return v;
}

bool kiln__gemm_own_takes(kiln_ctx *ctx, bool ta, bool tb, size_t m, size_t n, size_t k, size_t batch, float beta) {
    (void)beta; /* both kernels compute alpha op(A) op(B) + beta C */
    /* the kernels' dims are ints, and so are a block's first row and column (up to a
     * work-group past m or n), k plus a vector step, the flat index over every batch's
     * column blocks, and gemm_copy's rows * batch. A forced set that does not exist takes
     * every product, to fail there. */
    const kiln__gemm_params *p = kiln__gemm_params_of(ctx);
    if (p) {
        kernel_view v = view_of(p, ta, tb, m, n, narrow_n(tb, m, n));
        size_t span = v.nt ? NT_GROUP_MAX * (v.bm > v.bn ? v.bm : v.bn) : (v.bm > NN_LY * v.bn ? v.bm : NN_LY * v.bn);
        size_t kstep = (size_t)(p->nt_vw * p->nt_ku), lim = (size_t)INT_MAX - span - kstep;
        size_t nb = v.n ? blocks(v.n, v.bn) : 1, kb = k ? k : 1;
        if (m > lim || n > lim || k > lim || batch > lim / nb || batch > lim / kb) return false;
    }
    /* ctx->hooks.gemm_own (tests, kiln tune): 1 always, -1 never, 0 the device decides */
    int mode = ctx->hooks.gemm_own;
    if (mode != 0) return mode > 0;
    if (ctx->hooks.gemm_params != 0) return true;
    const char *e = getenv("KILN_GEMM_OWN");
    if (e && (strcmp(e, "off") == 0 || strcmp(e, "0") == 0)) return false;
    return ctx->info.type == KILN_DEVICE_CPU;
}

/*
 * Whether gemm_nn reads its K operand (B, or A when transposed) through a padded copy.
 * Rows a multiple of 4096 bytes apart fall into the same sets of an L1 or L2 cache (4 KiB
 * is the period of a 32 KiB 8-way L1's set index), so the rows of a K panel evict each
 * other instead of staying in cache while every row block reuses them: with haswell code
 * the 1024^3 product ran at ~0.6x OpenBLAS, N = 1040 at 0.94-1.69x (README.md, "Speed").
 * A copy with a padded leading dim costs a read and a write of the operand, against the
 * kernel's `reuse` reads of it (row blocks reading B's panels, column blocks A^T's): it
 * pays when the operand is read at least `min_reuse` times and K is not short. A^T pays at
 * any reuse (gemm_nn reads NN_RM floats of each of its rows per k: without the copy,
 * 1024 x 1 x 2048 A^T B took 3x, 1024 x 128 x 2048 2x the time); B at 8 reads with the
 * avx2 set (the reference CNN's fc1 gradients: 25% less time), while at 8 reads the
 * avx512 set's copy of B cost more than it saved (conv2 forward, 64 x 36864 x 288, before
 * convolutions were chunked), hence 16 there (pad_reuse below). `period` is the leading
 * dim in floats whose multiples conflict: 1024 (4 KiB), and for the avx2 set's A^T 256
 * (at_period below).
 * KILN_GEMM_PAD=off|on overrides (for measurements and tests).
 */
bool kiln__gemm_pad_wanted(size_t ld, size_t k, size_t reuse, size_t min_reuse, size_t period) {
    const char *e = getenv("KILN_GEMM_PAD");
    bool conflict = period && ld % period == 0;
    if (e && strcmp(e, "off") == 0) return false;
    if (e && strcmp(e, "on") == 0) return conflict && k > 0;
    return conflict && k >= 64 && reuse >= min_reuse;
}

/* The leading dim (floats) whose multiples conflict in cache for every set: 4 KiB */
#define PAD_PERIOD 1024

/* The reads of B below which gemm_nn reads it in place, per set (kiln__gemm_pad_wanted) */
static const size_t pad_reuse[KILN__GEMM_SETS] = {
    [SET_AVX512] = 16, [SET_AVX2] = 8, [SET_NEON] = 8, [SET_VEC4] = 8, 8, 8,
};

/* The leading dims (floats) whose multiples make gemm_nn read A^T through a padded copy, per
 * set. The avx2 set reads 6 floats of each of A's rows per k, and with rows 1, 2 or 3 KiB
 * apart as well as 4 those rows crowd a few cache sets: the copy paid for the MLP's fc1
 * weight gradient (512 x 784 x 64 A^T B) and the GPT's. The avx512 set's copy cost more
 * than it saved there: 4 KiB as for B (README.md, "Speed", has both). */
static const size_t at_period[KILN__GEMM_SETS] = {
    [SET_AVX512] = PAD_PERIOD, [SET_AVX2] = 256, [SET_NEON] = PAD_PERIOD,
    [SET_VEC4] = PAD_PERIOD,   PAD_PERIOD,       PAD_PERIOD,
};

/* The padded leading dim of a copy of rows of `cols` floats: whole 64-byte lines, and not a
 * multiple of 1024 bytes. */
static size_t padded_ld(size_t cols) {
    size_t ld = (cols + 15) / 16 * 16;
    return ld % 256 == 0 ? ld + 16 : ld;
}

/* Enqueues a copy of batch x rows x cols (src at off + b * stride, leading dim ld) into
 * *copy, a new pool tensor: with transpose, batch [cols, rows] matrices (gemm_transpose),
 * else batch [rows, cols] ones (gemm_copy), rows padded to the leading dim *dld (padded_ld).
 * The caller frees it once it has enqueued its reads (the in-order queue runs them before
 * the storage is reused). On failure *copy is NULL. */
static kiln_status operand_copy(kiln_ctx *ctx, const char *op, const char *options, bool transpose, size_t rows,
                                size_t cols, size_t batch, cl_mem src, size_t off, size_t ld, size_t stride,
                                kiln_tensor **copy, size_t *dld) {
    size_t drows = transpose ? cols : rows;
    *dld = padded_ld(transpose ? rows : cols);
    *copy = kiln__tensor_new(ctx, op, KILN_F32, 1, (int64_t[]){(int64_t)(batch * drows * *dld)});
    if (!*copy) return ctx->err;
    ctx->hooks.gemm_scratch++;
    cl_mem dm = (*copy)->st->mem;
    cl_int cr = (cl_int)rows, cc = (cl_int)cols, cb = (cl_int)batch;
    cl_ulong so = off, sl = ld, ss = stride, doff = (cl_ulong)(*copy)->offset, dl = *dld;
    kiln__karg args[] = {KILN__ARG(cr), KILN__ARG(cc), KILN__ARG(cb), KILN__ARG(src),  KILN__ARG(so),
                         KILN__ARG(sl), KILN__ARG(ss), KILN__ARG(dm), KILN__ARG(doff), KILN__ARG(dl)};
    kiln_status st = kiln__launch(ctx, op, GEMM_PROGRAM, options, transpose ? "gemm_transpose" : "gemm_copy",
                                  sizeof args / sizeof args[0], args, drows * batch, KILN__SPREAD);
    if (st != KILN_OK) {
        kiln_tensor_free(*copy);
        *copy = NULL;
    }
    return st;
}

/* Whether A B^T (M x N x K, f32) runs as gemm_nn on a transposed copy of B. For a
 * short K, gemm_nt's per-output work (the lane sums and stores) is a large part of its time:
 * with haswell code the LSTM's 2048 x 1024 x 128 took 6.1 ms in gemm_nt and 4.1 in gemm_nn
 * (one thread), 2048 x 1024 x 256 10.4 against 8.5. The copy reads and writes B once, small
 * beside the product when M is large; with K = 1024 (1024^3) gemm_nn's long panels made it
 * slower than gemm_nt, hence K <= 512. The same with the avx512 set: 4.9 -> 2.2 ms and
 * 7.1 -> 4.4 ms. Not with fewer than NARROW columns, which gemm_nn would compute one at a
 * time (narrow_n): 2048 x 10 x 128 took 0.64 ms so, against OpenBLAS's 0.26. */
static bool nt_as_nn(size_t m, size_t n, size_t k) { return m >= 512 && n >= NARROW && k <= 512; }

/* Whether A B^T (f32, no bias) runs as A^T B^T (gemm_nn on (B, A^T) with the transposed
 * store) on a transposed copy of A: with a short K and few rows of A against many of B, each
 * of gemm_nt's outputs is a few vector steps and then its lane sums, which took most of its
 * time: the reference GAN's 64 x 6272 x 64 ran at 0.64-0.69 of OpenBLAS, and on a
 * transposed copy of B (nt_as_nn's way, a copy of 6272 rows) 0.46 against 0.37 ms. A's copy
 * is at most 64 Ki floats. */
static bool nt_as_tc(size_t m, size_t n, size_t k) { return m < 512 && k <= 128 && n >= 1024 && m * k <= 65536; }

/* An f32 product with one output row or column runs in gemv_rows or gemv_cols (gemm.cl):
 * gemm_nn's 8 x 32 blocks (avx512) computed 32 columns or 8 rows there to use one, and the
 * LSTM's bias gradient, 1024 x 1 x 2048 A^T B, took 0.81 ms against OpenBLAS's 0.29. */
static bool gemv_takes(size_t m, size_t n) { return m == 1 || n == 1; }

/* An f32 product with K = 1 (an outer product) and op(B)'s row contiguous (B^T: ldb 1), no
 * bias, runs in gemm_ger (gemm.cl): all its time is C's stores, which gemm_nn's blocks
 * issued too slowly (the reference GAN's 64 x 6272 x 1, the input gradient of its
 * discriminator's last layer: README.md, "Speed"). GER_RM: gemm.cl's rows per work-item;
 * GER_LY its column blocks per work-group. */
#define GER_RM 16
#define GER_LY 8
static bool ger_takes(bool tb, size_t m, size_t n, size_t k, size_t ldb) {
    return k == 1 && !gemv_takes(m, n) && (!tb || ldb == 1);
}

const char *kiln__gemm_kernel(bool ta, bool tb, size_t m, size_t n, size_t k) {
    if (gemv_takes(m, n)) return (n == 1 ? !ta : tb) ? "gemv_rows" : "gemv_cols";
    if (ger_takes(tb, m, n, k, 1)) return "gemm_ger";
    if (narrow_n(tb, m, n)) return ta ? "gemm_nn" : "gemm_nt";
    return tb && !ta && !nt_as_nn(m, n, k) && !nt_as_tc(m, n, k) ? "gemm_nt" : "gemm_nn";
}

bool kiln__gemm_bias_takes(kiln_ctx *ctx, bool ta, bool tb, size_t m, size_t n, size_t k, size_t batch) {
    if (ta || !tb || !kiln__gemm_own_takes(ctx, ta, tb, m, n, k, batch, 0.0f)) return false;
    /* a product that runs as A^T B^T (transposed store) takes the bias in a kernel of its
     * own: there is no fused result that could differ from the unfused one */
    if (nt_as_tc(m, n, k)) return false;
    int mode = ctx->hooks.gemm_epilogue; /* tests: 1 always, -1 never, 0 the environment */
    if (mode != 0) return mode > 0;
    const char *e = getenv("KILN_GEMM_EPILOGUE");
    return !(e && (strcmp(e, "off") == 0 || strcmp(e, "0") == 0));
}

/* The arguments of gemm.cl's product kernels: the operands and the bias, and the scalars
 * packed in three vectors (dims, scal, offs; each kernel says what its slots hold). POCL
 * copies each argument of each launch into an allocation of its own, so twenty scalars
 * cost a small product more host time than its arithmetic (README.md, "Speed", has the
 * figures). */
typedef struct {
    cl_int8 dims;
    cl_float2 scal;
    cl_ulong16 offs;
    cl_mem a, b, c, bias;
    kiln__karg args[7];
} gemm_pack;

/* Fills *pk from dims[6] and offs[11]; returns the arguments' count (the bias only when
 * there is one). pk must stay in place until the launch: its args point into it. */
static size_t gemm_pack_fill(gemm_pack *pk, const cl_int dims[6], float alpha, float beta, cl_mem a, cl_mem b, cl_mem c,
                             const cl_ulong offs[11], cl_mem bias) {
    memset(pk, 0, sizeof *pk);
    memcpy(pk->dims.s, dims, 6 * sizeof *dims);
    pk->scal.s[0] = alpha, pk->scal.s[1] = beta;
    memcpy(pk->offs.s, offs, 11 * sizeof *offs);
    pk->a = a, pk->b = b, pk->c = c, pk->bias = bias;
    pk->args[0] = KILN__ARG(pk->dims);
    pk->args[1] = KILN__ARG(pk->scal);
    pk->args[2] = KILN__ARG(pk->a);
    pk->args[3] = KILN__ARG(pk->b);
    pk->args[4] = KILN__ARG(pk->c);
    pk->args[5] = KILN__ARG(pk->offs);
    pk->args[6] = KILN__ARG(pk->bias);
    return bias ? 7 : 6;
}

/* The product as gemv_rows or gemv_cols compute it (gemv_takes: m or n is 1): y = alpha
 * P x + beta y over L outputs, where for n == 1 y is C's column, P op(A) and x B's column,
 * and for m == 1 y is C's row, P op(B)^T and x A's row. options: gemm_run's (the same
 * program); bias as gemm_run's. */
static kiln_status gemv_run(kiln_ctx *ctx, const char *op, const char *options, bool ta, bool tb, size_t m, size_t n,
                            size_t k, float alpha, cl_mem a, size_t aoff, size_t lda, size_t astride, cl_mem b,
                            size_t boff, size_t ldb, size_t bstride, float beta, cl_mem c, size_t coff, size_t ldc,
                            size_t cstride, size_t batch, cl_mem bias, size_t bias_off, size_t bias_st) {
    bool col = n == 1;
    cl_int L = (cl_int)(col ? m : n), K = (cl_int)k, cb = (cl_int)batch;
    cl_mem pm = col ? a : b, xm = col ? b : a;
    cl_ulong po = col ? aoff : boff, pl = col ? lda : ldb, ps = col ? astride : bstride;
    cl_ulong xo = col ? boff : aoff, xs = col ? (tb ? 1 : ldb) : (ta ? lda : 1), xst = col ? bstride : astride;
    cl_ulong ys = col ? ldc : 1, bis = col ? 0 : bias_st;
    const char *kernel = kiln__gemm_kernel(ta, tb, m, n, k);
    bool rows = strcmp(kernel, "gemv_rows") == 0;
    size_t vw = (size_t)kiln__gemm_params_of(ctx)->nn_vw;
    /* gemv_cols's strips of GV_CV (8) vectors where that leaves four or more work-items */
    cl_int wide = (size_t)L >= 4 * 8 * vw;
    size_t per = rows ? 4 /* gemm.cl's GV_R */ : wide ? 8 * vw : vw;
    gemm_pack pk;
    size_t nargs = gemm_pack_fill(&pk, (cl_int[6]){L, K, 1, wide, 1, cb}, alpha, beta, pm, xm, c,
                                  (cl_ulong[11]){po, pl, ps, xo, xs, xst, coff, ys, cstride, bias_off, bis}, bias);
    /* groups of one work-item: POCL runs a group on one thread, and these products have few
     * (the 1 x 6272 x 64 A^T B of the reference GAN: four) */
    size_t global[2] = {blocks((size_t)L, per), batch}, local[2] = {1, 1};
    return kiln__launch2(ctx, op, GEMM_PROGRAM, options, kernel, nargs, pk.args, global, local);
}

/* Whether two sets hold the same parameters (their names aside). */
static bool same_set(const kiln__gemm_params *a, const kiln__gemm_params *b) {
    return a->nt_rm == b->nt_rm && a->nt_rn == b->nt_rn && a->nt_vw == b->nt_vw && a->nt_ku == b->nt_ku &&
           a->nn_rm == b->nn_rm && a->nn_nv == b->nn_nv && a->nn_vw == b->nn_vw && a->nn_ku == b->nn_ku;
}

/* The -D options of gemm.cl's program for parameter set p: NN_TC (the A^T B^T path) and
 * NN_BETA (beta != 0) select gemm_nn's stores, programs of their own, so that the common
 * product's kernel carries neither (gemm.cl says why); bias is NT_BIAS. Made once per set and
 * variant (ctx->gemm_opts) and copied into buf; returns the length. */
static int gemm_options(kiln_ctx *ctx, char *buf, size_t cap, const kiln__gemm_params *p, bool tc, bool beta,
                        int bias) {
    if (!same_set(&ctx->gemm_opts_set, p)) {
        memset(ctx->gemm_opts, 0, sizeof ctx->gemm_opts);
        ctx->gemm_opts_set = *p;
    }
    char *o = ctx->gemm_opts[tc][beta][bias];
    size_t n = strlen(o);
    if (n == 0) {
        snprintf(o, sizeof ctx->gemm_opts[0][0][0],
                 "-DNT_RM=%d -DNT_RN=%d -DNT_VW=%d -DNT_KU=%d -DNN_RM=%d -DNN_NV=%d -DNN_VW=%d -DNN_KU=%d "
                 "-DNN_TC=%d -DNN_BETA=%d -DNT_BIAS=%d",
                 p->nt_rm, p->nt_rn, p->nt_vw, p->nt_ku, p->nn_rm, p->nn_nv, p->nn_vw, p->nn_ku, tc ? 1 : 0,
                 beta ? 1 : 0, bias);
        n = strlen(o); /* (what fitted: the string is far shorter than the buffer) */
    }
    if (n >= cap) n = cap - 1;
    memcpy(buf, o, n);
    buf[n] = '\0';
    return (int)n;
}

/* The outer product (K = 1) as gemm_ger computes it (ger_takes): C = alpha op(A) op(B) +
 * beta C, op(A)'s column a_i at aoff + i (A^T: A is [1, M]) or aoff + i lda, op(B)'s row
 * contiguous. gemm_ger's stores are aligned where C's offset, leading dim and batch stride
 * are multiples of the vector (OpenCL aligns a buffer to at least 128 bytes: the minimum of
 * CL_DEVICE_MEM_BASE_ADDR_ALIGN). */
static kiln_status ger_run(kiln_ctx *ctx, const char *op, const char *options, const kiln__gemm_params *p, bool ta,
                           size_t m, size_t n, float alpha, cl_mem a, size_t aoff, size_t lda, size_t astride, cl_mem b,
                           size_t boff, size_t bstride, float beta, cl_mem c, size_t coff, size_t ldc, size_t cstride,
                           size_t batch) {
    size_t vw = (size_t)p->nn_vw, cap = 0, ly = GER_LY;
    cl_int cm = (cl_int)m, cn = (cl_int)n, mb = (cl_int)blocks(m, GER_RM), cb = (cl_int)batch;
    cl_int al = coff % vw == 0 && ldc % vw == 0 && (batch == 1 || cstride % vw == 0);
    gemm_pack pk;
    size_t nargs =
        gemm_pack_fill(&pk, (cl_int[6]){cm, cn, 1, al, mb, cb}, alpha, beta, a, b, c,
                       (cl_ulong[11]){aoff, ta ? 1 : lda, astride, boff, 1, bstride, coff, ldc, cstride}, NULL);
    if (kiln__tree_wg(ctx, GEMM_PROGRAM, options, "gemm_ger", 0, &cap) != KILN_OK) return ctx->err;
    while (ly > cap) ly /= 2;
    size_t global[2] = {(size_t)mb * batch, blocks(blocks(n, vw), ly) * ly}, local[2] = {1, ly};
    return kiln__launch2(ctx, op, GEMM_PROGRAM, options, "gemm_ger", nargs, pk.args, global, local);
}

/* bias: NULL, or (only kiln__gemm_run_bias passes one: A B^T, beta 0) the row added to every
 * row of C, element j at bias_off + j * bias_st, and with relu ReLU after it. dt: NULL
 * (every operand f32), or the dtypes of A, B, C and the bias (f32, f16 or bf16: gemm.cl's
 * A_DT ... options). */
static kiln_status gemm_run(kiln_ctx *ctx, const char *op, bool ta, bool tb, size_t m, size_t n, size_t k, float alpha,
                            cl_mem a, size_t aoff, size_t lda, size_t astride, cl_mem b, size_t boff, size_t ldb,
                            size_t bstride, float beta, cl_mem c, size_t coff, size_t ldc, size_t cstride, size_t batch,
                            cl_mem bias, size_t bias_off, size_t bias_st, const kiln_dtype *dt, bool relu) {
    const kiln__gemm_params *p = kiln__gemm_params_of(ctx);
    if (!p && ctx->hooks.gemm_params != 0)
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                          "%s: kiln's GEMM kernels forced to parameter set %d (hooks.gemm_params), which does not "
                          "exist: the table holds 1..%d (m=%zu n=%zu k=%zu)",
                          op, ctx->hooks.gemm_params, KILN__GEMM_SETS, m, n, k);
    if (!p) {
        char names[128] = "";
        for (int s = 0; s < KILN__GEMM_SETS; s++)
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", s ? ", " : "",
                     kiln__gemm_sets[s].name);
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                          "%s: KILN_GEMM_PARAMS='%s' names no parameter set of kiln's GEMM kernels (%s) (m=%zu n=%zu "
                          "k=%zu)",
                          op, getenv("KILN_GEMM_PARAMS"), names, m, n, k);
    }
    /* nothing to compute; k == 0 still scales C by beta (the kernels' sums are empty) */
    if (m == 0 || n == 0 || batch == 0) return KILN_OK;
    bool half = dt && (dt[0] || dt[1] || dt[2] || dt[3]);
    /* (gemm_ger's dim 0, every batch's row blocks, is an int too) */
    if (!half && !bias && ger_takes(tb, m, n, k, ldb) && blocks(m, GER_RM) <= (size_t)INT_MAX / batch) {
        char options[288];
        gemm_options(ctx, options, sizeof options, p, false, false, 0);
        return ger_run(ctx, op, options, p, ta, m, n, alpha, a, aoff, lda, astride, b, boff, bstride, beta, c, coff,
                       ldc, cstride, batch);
    }
    /* a large A B^T with a short K as A (B^T) through a transposed copy of B (nt_as_nn;
     * gemm_nn then adds a bias as gemm_nt would) */
    bool tr = tb && !ta && !half && !gemv_takes(m, n) && nt_as_nn(m, n, k);
    if (tr) tb = false;
    /* a short-K A B^T with a small A as A^T B^T through a transposed copy of A (nt_as_tc) */
    bool ta_tr = tb && !ta && !bias && !half && !gemv_takes(m, n) && nt_as_tc(m, n, k);
    if (ta_tr) ta = true;
    /* fewer columns than a vector (narrow_n): A^T B as C^T = B^T A, gemm_nn with the
     * transposed store reading B transposed; A B as A (B^T)^T, gemm_nt on a transposed copy
     * of B (n x k, small; the copy moves floats) */
    bool narrow_in = !tr && !gemv_takes(m, n) && narrow_n(tb, m, n);
    bool narrow = narrow_in && ta, narrow_nt = narrow_in && !ta && !half;
    if (narrow_nt) tb = true;
    kernel_view v = view_of(p, ta, tb, m, n, narrow);
    char options[288];
    int on = gemm_options(ctx, options, sizeof options, p, v.tc, !v.nt && beta != 0.0f, bias ? (relu ? 2 : 1) : 0);
    if (!half && gemv_takes(m, n))
        return gemv_run(ctx, op, options, ta, tb, m, n, k, alpha, a, aoff, lda, astride, b, boff, ldb, bstride, beta, c,
                        coff, ldc, cstride, batch, bias, bias_off, bias_st);
    if (half) /* the kernel's A and B: swapped below for A^T B^T */
        snprintf(options + on, sizeof options - (size_t)on, " -DA_DT=%d -DB_DT=%d -DC_DT=%d -DBI_DT=%d",
                 (int)dt[v.tc ? 1 : 0], (int)dt[v.tc ? 0 : 1], (int)dt[2], (int)dt[3]);
    kiln_tensor *pat = NULL;
    if (ta_tr) {
        /* A [m, k] -> A^T [k, m]: kiln's A of the A^T B^T product below */
        size_t dld;
        if (operand_copy(ctx, op, options, true, m, k, batch, a, aoff, lda, astride, &pat, &dld) != KILN_OK)
            return ctx->err;
        a = pat->st->mem, aoff = (size_t)pat->offset, lda = dld, astride = k * dld;
    }
    if (narrow_nt) {
        /* B [k, n] -> B^T [n, k]: the B of the A B^T product below */
        size_t dld;
        if (operand_copy(ctx, op, options, true, k, n, batch, b, boff, ldb, bstride, &pat, &dld) != KILN_OK)
            return ctx->err;
        b = pat->st->mem, boff = (size_t)pat->offset, ldb = dld, bstride = n * dld;
    }
    if (v.tc) {
        /* C^T = B A: the kernel's A is kiln's B [n, k] (narrow: [k, n], read transposed),
         * its B kiln's A [k, m] */
        cl_mem tm = a;
        size_t to = aoff, tl = lda, ts = astride;
        a = b, aoff = boff, lda = ldb, astride = bstride;
        b = tm, boff = to, ldb = tl, bstride = ts;
        ta = narrow;
    }
    cl_int cm = (cl_int)v.m, cn = (cl_int)v.n, ck = (cl_int)k, nb = (cl_int)blocks(v.n, v.bn), cb = (cl_int)batch;
    size_t lx = 1, ly = NN_LY, cap = 0;
    if (v.nt) lx = nt_groups[set_of(ctx, p)][0], ly = nt_groups[set_of(ctx, p)][1];
    /* a device (or a kernel of many registers) that allows smaller groups gets them */
    if (kiln__tree_wg(ctx, GEMM_PROGRAM, options, v.nt ? "gemm_nt" : "gemm_nn", 0, &cap) != KILN_OK) return ctx->err;
    while (lx * ly > cap) {
        if (ly > 1)
            ly /= 2;
        else
            lx /= 2;
    }
    size_t global[2] = {blocks(blocks(v.m, v.bm), lx) * lx, blocks((size_t)nb * batch, ly) * ly};
    size_t local[2] = {lx, ly};
    if (v.nt) {
        gemm_pack pk;
        size_t nargs = gemm_pack_fill(
            &pk, (cl_int[6]){cm, cn, ck, 0, nb, cb}, alpha, beta, a, b, c,
            (cl_ulong[11]){aoff, lda, astride, boff, ldb, bstride, coff, ldc, cstride, bias_off, bias_st}, bias);
        kiln_status st = kiln__launch2(ctx, op, GEMM_PROGRAM, options, "gemm_nt", nargs, pk.args, global, local);
        kiln_tensor_free(pat); /* (after the launch that reads it: the in-order queue) */
        return st;
    }
    /* gemm_nn's K operands through padded copies where their rows conflict in cache: B's
     * panel is read by every row block, A^T's by every column block */
    kiln_tensor *pa = NULL, *pb = NULL, *pt = NULL;
    kiln_status st = KILN_OK;
    if (tr) {
        /* B [n, k] -> B^T [k, n] */
        size_t dld;
        st = operand_copy(ctx, op, options, true, n, k, batch, b, boff, ldb, bstride, &pt, &dld);
        if (st != KILN_OK) {
            kiln_tensor_free(pat);
            return st;
        }
        b = pt->st->mem, boff = (size_t)pt->offset, ldb = dld, bstride = k * dld;
    }
    /* (gemm_copy moves floats: half operands are read in place) */
    if (!half && ta && kiln__gemm_pad_wanted(lda, k, blocks(v.n, v.bn), 1, at_period[set_of(ctx, p)])) {
        size_t dld;
        st = operand_copy(ctx, op, options, false, k, v.m, batch, a, aoff, lda, astride, &pa, &dld);
        if (st == KILN_OK) a = pa->st->mem, aoff = (size_t)pa->offset, lda = dld, astride = k * dld;
    }
    if (st == KILN_OK && !half &&
        kiln__gemm_pad_wanted(ldb, k, blocks(v.m, v.bm), pad_reuse[set_of(ctx, p)], PAD_PERIOD)) {
        size_t dld;
        st = operand_copy(ctx, op, options, false, k, v.n, batch, b, boff, ldb, bstride, &pb, &dld);
        if (st == KILN_OK) b = pb->st->mem, boff = (size_t)pb->offset, ldb = dld, bstride = k * dld;
    }
    if (st == KILN_OK) {
        gemm_pack pk;
        size_t nargs = gemm_pack_fill(
            &pk, (cl_int[6]){cm, cn, ck, ta, nb, cb}, alpha, beta, a, b, c,
            (cl_ulong[11]){aoff, lda, astride, boff, ldb, bstride, coff, ldc, cstride, bias_off, bias_st}, bias);
        st = kiln__launch2(ctx, op, GEMM_PROGRAM, options, "gemm_nn", nargs, pk.args, global, local);
    }
    /* the in-order queue runs the launches above before a later reuse of the copies */
    kiln_tensor_free(pa);
    kiln_tensor_free(pb);
    kiln_tensor_free(pt);
    kiln_tensor_free(pat);
    return st;
}

/* Whether an f32 product through gemm_nn runs as slices of KSPLIT values of k, the first
 * with the caller's beta and the others adding into C (beta 1). gemm_nn reads a K x NN_LY
 * column blocks panel of B per work-group, reused by every row block: with K = 2048 that
 * panel (1 MiB for the avx2 set, 2 MiB for avx512) no longer stays in a core's L2 from one
 * row block to the next. In slices of 512 (one thread, haswell code): the LSTM's
 * 1024 x 256 x 2048 A^T B 11-13 -> 8.8-9.2 ms, 1024 x 128 x 2048 5.1-6.3 -> 4.5; avx512
 * 7.5-8.2 -> 4.3-4.8 and 2.8-4.2 -> 2.3-2.6, 2048^3 A^T B^T 92-100 -> 78-84 (README.md,
 * "Speed"). Products narrower than 64 (a matrix-vector product) read no panel twice and
 * only gain launches. A B^T runs in gemm_nt, whose work-items read their rows once. */
#define KSPLIT 512
static bool ksplit_wanted(bool ta, bool tb, size_t m, size_t n, size_t k) {
    return k > 2 * KSPLIT && m >= 64 && n >= 64 && !(tb && !ta);
}

kiln_status kiln__gemm_run(kiln_ctx *ctx, const char *op, bool ta, bool tb, size_t m, size_t n, size_t k, float alpha,
                           cl_mem a, size_t aoff, size_t lda, size_t astride, cl_mem b, size_t boff, size_t ldb,
                           size_t bstride, float beta, cl_mem c, size_t coff, size_t ldc, size_t cstride,
                           size_t batch) {
    /* a long K through gemm_nn in slices of KSPLIT k, each adding into C (ksplit_wanted) */
    if (ksplit_wanted(ta, tb, m, n, k)) {
        for (size_t k0 = 0; k0 < k; k0 += KSPLIT) {
            size_t kn = k - k0 < KSPLIT ? k - k0 : KSPLIT;
            kiln_status st = gemm_run(ctx, op, ta, tb, m, n, kn, alpha, a, aoff + (ta ? k0 * lda : k0), lda, astride, b,
                                      boff + (tb ? k0 : k0 * ldb), ldb, bstride, k0 ? 1.0f : beta, c, coff, ldc,
                                      cstride, batch, NULL, 0, 0, NULL, false);
            if (st != KILN_OK) return st;
        }
        return KILN_OK;
    }
    return gemm_run(ctx, op, ta, tb, m, n, k, alpha, a, aoff, lda, astride, b, boff, ldb, bstride, beta, c, coff, ldc,
                    cstride, batch, NULL, 0, 0, NULL, false);
}

kiln_status kiln__gemm_run_dt(kiln_ctx *ctx, const char *op, const kiln_dtype dt[3], bool ta, bool tb, size_t m,
                              size_t n, size_t k, float alpha, cl_mem a, size_t aoff, size_t lda, size_t astride,
                              cl_mem b, size_t boff, size_t ldb, size_t bstride, float beta, cl_mem c, size_t coff,
                              size_t ldc, size_t cstride, size_t batch) {
    kiln_dtype d4[4] = {dt[0], dt[1], dt[2], KILN_F32};
    return gemm_run(ctx, op, ta, tb, m, n, k, alpha, a, aoff, lda, astride, b, boff, ldb, bstride, beta, c, coff, ldc,
                    cstride, batch, NULL, 0, 0, d4, false);
}

kiln_status kiln__gemm_run_bias(kiln_ctx *ctx, const char *op, size_t m, size_t n, size_t k, cl_mem a, size_t aoff,
                                size_t lda, cl_mem b, size_t boff, size_t ldb, cl_mem c, size_t coff, size_t ldc,
                                cl_mem bias, size_t bias_off, size_t bias_st, const kiln_dtype *dt, bool relu) {
    return gemm_run(ctx, op, false, true, m, n, k, 1.0f, a, aoff, lda, 0, b, boff, ldb, 0, 0.0f, c, coff, ldc, 0, 1,
                    bias, bias_off, bias_st, dt, relu);
}

/* ---- searching the parameters ----------------------------------------------------------
 *
 * The sets near a table entry (what `kiln tune` and the automatic tune search), and the
 * automatic tune: with KILN_TUNE=auto, the first product a context gives kiln's kernels on
 * a CPU device that has no stored set (no KilnGemm line in its tune file) first times the
 * table's set and its nearest neighbours on three products, for about KILN_TUNE_SECONDS
 * (default 10), and stores the fastest as the file's KilnGemm line, so that later contexts
 * on the device load it at kiln_open and do not search again.
 *
 * Why bounded and off by default: every set is a build of gemm.cl (about 3 s on POCL), and
 * the search waits for the device, which a context otherwise never does inside an op. The
 * table's sets were measured on the CPUs kiln's developers had; on another CPU a neighbour
 * may fit its register file or caches better. `kiln tune` searches more sets on more
 * shapes.
 *
 * Nothing the search does reaches the caller: its inputs come from the host (the context's
 * random stream is not drawn from), a set that fails to build or run is skipped, any other
 * failure leaves the table's set with a log line and the context's error cleared as it was,
 * and a winner must match the table's set's products before it is kept. */

void kiln__gemm_regfile(const char *isa, int *regs, int *width) {
    *regs = 16, *width = 4; /* vec4: SSE, or a register file that is not known */
    if (strcmp(isa, "avx512") == 0) *regs = 32, *width = 16;
    if (strcmp(isa, "avx2") == 0) *regs = 16, *width = 8;
    if (strcmp(isa, "neon") == 0) *regs = 32, *width = 4;
}

/* Registers a set holds per k step: gemm_nt RM*RN accumulators, RN vectors of B and one of
 * A; gemm_nn RM*NV accumulators, NV vectors of B and a broadcast of A; a vector wider than
 * a register takes several (the table's comments count the same way). */
static int regs_nt(const kiln__gemm_params *g, int width) {
    return (g->nt_rm * g->nt_rn + g->nt_rn + 1) * ((g->nt_vw + width - 1) / width);
}
static int regs_nn(const kiln__gemm_params *g, int width) {
    return (g->nn_rm * g->nn_nv + g->nn_nv + 1) * ((g->nn_vw + width - 1) / width);
}

int kiln__gemm_candidates(const kiln__gemm_params *base, bool nt, bool quick, int regs, int width,
                          kiln__gemm_params *out, int cap) {
    int n = 0;
    if (cap < 1) return 0;
    out[n++] = *base;
    static const int vws[] = {4, 8, 16};
    if (quick) {
        kiln__gemm_params q[3];
        for (int i = 0; i < 3; i++) q[i] = *base;
        if (nt) {
            q[0].nt_rm++, q[1].nt_rn++, q[2].nt_ku = base->nt_ku == 1 ? 2 : 1;
        } else {
            q[0].nn_rm += 2, q[1].nn_rm -= 2, q[2].nn_nv++;
        }
        for (int i = 0; i < 3 && n < cap; i++) {
            bool fits = nt ? regs_nt(&q[i], width) <= regs : regs_nn(&q[i], width) <= regs;
            if (fits && (nt ? q[i].nt_rm : q[i].nn_rm) >= 1) out[n++] = q[i];
        }
        return n;
    }
    if (nt) {
        for (int rm = 1; rm <= 4; rm++)
            for (int rn = 1; rn <= 4; rn++)
                for (int v = 0; v < 3; v++)
                    for (int ku = 1; ku <= 2 && n < cap; ku++) {
                        kiln__gemm_params g = *base;
                        g.nt_rm = rm, g.nt_rn = rn, g.nt_vw = vws[v], g.nt_ku = ku;
                        if (!same_set(&g, base) && regs_nt(&g, width) <= regs) out[n++] = g;
                    }
    } else {
        for (int rm = 2; rm <= 8; rm++)
            for (int nv = 1; nv <= 4; nv++)
                for (int v = 0; v < 3 && n < cap; v++) {
                    kiln__gemm_params g = *base;
                    g.nn_rm = rm, g.nn_nv = nv, g.nn_vw = vws[v];
                    if (!same_set(&g, base) && regs_nn(&g, width) <= regs) out[n++] = g;
                }
    }
    return n;
}

/* ---- the automatic tune ---------------------------------------------------------------- */

#define AUTO_SECONDS 10.0
#define AUTO_REPEAT 5
/* a set must take less than this share of the table's time to replace it: smaller
 * differences are within what other load moves a timing */
#define AUTO_MARGIN 0.97

double kiln__tune_seconds(char *why, size_t cap) {
    if (cap) why[0] = '\0';
    const char *e = getenv("KILN_TUNE_SECONDS");
    if (!e || !*e) return AUTO_SECONDS;
    char *end = NULL;
    double v = strtod(e, &end);
    if (end == e || *end || !(v >= 0.0 && v <= 3600.0)) {
        if (cap) snprintf(why, cap, "KILN_TUNE_SECONDS=%s: expected seconds in [0, 3600]; %g used", e, AUTO_SECONDS);
        return AUTO_SECONDS;
    }
    return v;
}

/* The products timed: a linear layer of 512 inputs and outputs on a batch of 128, forward
 * (A B^T: gemm_nt), input gradient (A B) and weight gradient (A^T B), both gemm_nn. */
static const struct {
    bool ta, tb;
    size_t m, n, k;
} shapes[] = {{false, true, 128, 512, 512}, {false, false, 128, 512, 512}, {true, false, 512, 512, 128}};
#define NSHAPES (sizeof shapes / sizeof shapes[0])
#define AUTO_FLOATS (512 * 512) /* the largest operand or result of the shapes */

typedef struct {
    kiln_ctx *ctx;
    kiln_tensor *a, *b, *c;
    bool nt[NSHAPES]; /* the shape runs in gemm_nt (else gemm_nn) */
} bench;

static kiln_status wait_all(kiln_ctx *ctx) {
    cl_int err = clFinish(ctx->queue);
    KILN__COUNT(ctx, finishes, 1);
    if (err != CL_SUCCESS)
        return kiln__fail(ctx, kiln__cl_status(err), "KILN_TUNE=auto: the device reported %s (%d)", kiln__cl_name(err),
                          err);
    return KILN_OK;
}

static kiln_status run_shape(bench *b, size_t i) {
    size_t m = shapes[i].m, n = shapes[i].n, k = shapes[i].k;
    size_t lda = shapes[i].ta ? m : k, ldb = shapes[i].tb ? k : n;
    return kiln__gemm_run(b->ctx, "KILN_TUNE=auto", shapes[i].ta, shapes[i].tb, m, n, k, 1.0f, b->a->st->mem,
                          (size_t)b->a->offset, lda, 0, b->b->st->mem, (size_t)b->b->offset, ldb, 0, 0.0f,
                          b->c->st->mem, (size_t)b->c->offset, n, 0, 1);
}

/* The fastest of AUTO_REPEAT runs of shape i, after one that builds and warms (ms; -1 with
 * the context's error set when a run failed). */
static double time_shape(bench *b, size_t i) {
    if (run_shape(b, i) != KILN_OK || wait_all(b->ctx) != KILN_OK) return -1.0;
    double best = INFINITY;
    for (int r = 0; r < AUTO_REPEAT; r++) {
        double t0 = kiln__now_ms();
        if (run_shape(b, i) != KILN_OK || wait_all(b->ctx) != KILN_OK) return -1.0;
        double t = kiln__now_ms() - t0;
        if (t < best) best = t;
    }
    return best;
}

/* The context's kernels run set g from here on (kiln__gemm_params_of returns the context's
 * tuned slot). */
static void use(kiln_ctx *ctx, const kiln__gemm_params *g) {
    ctx->gemm_tuned = *g;
    ctx->gemm_tuned.name = "tuned";
    ctx->has_gemm_tuned = true;
}

/* The summed time of the shapes of one kernel (nt) or of all (all), under set g; -1 when a
 * run failed: with skip, the error logged and cleared (the set is skipped), else kept. */
static double time_set(bench *b, const kiln__gemm_params *g, bool nt, bool all, bool skip) {
    use(b->ctx, g);
    double sum = 0;
    for (size_t i = 0; i < NSHAPES; i++) {
        if (!all && b->nt[i] != nt) continue;
        double t = time_shape(b, i);
        if (t < 0) {
            if (skip) {
                kiln__log(1, "KILN_TUNE=auto: a parameter set skipped: %s", kiln_error_message(b->ctx));
                kiln_error_clear(b->ctx);
            }
            return -1.0;
        }
        sum += t;
    }
    return sum;
}

/* Runs every shape under the context's set and reads the results into out (NSHAPES x
 * AUTO_FLOATS floats). */
static kiln_status results(bench *b, float *out) {
    for (size_t i = 0; i < NSHAPES; i++) {
        cl_event ev = NULL;
        kiln_status s = run_shape(b, i);
        if (s == KILN_OK)
            s = kiln__read_async(b->ctx, "KILN_TUNE=auto", b->c->st->mem, (size_t)b->c->offset * sizeof(float),
                                 shapes[i].m * shapes[i].n * sizeof(float), out + i * AUTO_FLOATS, &ev);
        if (s == KILN_OK) s = wait_all(b->ctx);
        kiln__event_release(ev);
        if (s != KILN_OK) return s;
    }
    return KILN_OK;
}

/* Whether got agrees with ref on every shape: inputs in [-1, 1], so each output sums k
 * products of at most 1 and two summation orders differ by at most 2 k^2 u. A set that
 * builds wrong code is off by far more. */
static bool agrees(const float *got, const float *ref, double *worst) {
    *worst = 0;
    for (size_t i = 0; i < NSHAPES; i++) {
        double k = (double)shapes[i].k, tol = 2.0 * k * k * FLT_EPSILON;
        for (size_t j = 0; j < shapes[i].m * shapes[i].n; j++) {
            double d = fabs((double)got[i * AUTO_FLOATS + j] - (double)ref[i * AUTO_FLOATS + j]) / tol;
            if (!(d <= *worst)) *worst = d; /* NaN too */
        }
    }
    return *worst <= 1.0;
}

/* The search: the table's set, then its neighbours (kiln__gemm_candidates, quick), gemm_nt's
 * and gemm_nn's in turn, each on its kernel's shapes, while the budget lasts; the fastest
 * of each kernel's, combined, against the table's set on all shapes. Returns the set to
 * keep in *win (the table's when nothing beat it) and in *timed how many sets were timed
 * on their kernel's shapes (the table's and the neighbours tried). */
static kiln_status search(bench *b, const kiln__gemm_params *table, double budget_ms, double t_start,
                          kiln__gemm_params *win, int *timed, double *table_ms, double *win_ms) {
    kiln_ctx *ctx = b->ctx;
    *win = *table;
    *timed = 0;
    int regs, width;
    kiln__gemm_regfile(table->name, &regs, &width);
    kiln__gemm_params cand[2][4];
    int ncand[2] = {kiln__gemm_candidates(table, true, true, regs, width, cand[0], 4),
                    kiln__gemm_candidates(table, false, true, regs, width, cand[1], 4)};
    double base[2], best[2];
    kiln__gemm_params pick[2] = {*table, *table};
    for (int kn = 0; kn < 2; kn++) {
        base[kn] = best[kn] = time_set(b, table, kn == 0, false, false);
        if (base[kn] < 0) return ctx->err;
    }
    *timed = 1;
    /* gemm_nt's and gemm_nn's neighbours alternately: a short budget tries both kernels */
    double slowest = kiln__now_ms() - t_start; /* the longest a set took: a build and the runs */
    for (int j = 1; j < 4; j++)
        for (int kn = 0; kn < 2; kn++) {
            if (j >= ncand[kn]) continue;
            double t0 = kiln__now_ms();
            if (t0 - t_start + slowest > budget_ms) continue;
            double t = time_set(b, &cand[kn][j], kn == 0, false, true);
            (*timed)++;
            double took = kiln__now_ms() - t0;
            if (took > slowest) slowest = took;
            if (t >= 0 && t < AUTO_MARGIN * best[kn]) best[kn] = t, pick[kn] = cand[kn][j];
        }
    kiln__gemm_params both = *table;
    both.nt_rm = pick[0].nt_rm, both.nt_rn = pick[0].nt_rn, both.nt_vw = pick[0].nt_vw, both.nt_ku = pick[0].nt_ku;
    both.nn_rm = pick[1].nn_rm, both.nn_nv = pick[1].nn_nv, both.nn_vw = pick[1].nn_vw, both.nn_ku = pick[1].nn_ku;
    *table_ms = base[0] + base[1];
    *win_ms = NAN;
    if (same_set(&both, table)) return KILN_OK;
    /* the winner against the table's set on all shapes, back to back in three rounds: it
     * must be faster in each (other load comes and goes over seconds, and a round's two
     * timings share it); then its results against the table's */
    double tw = INFINITY, tt = INFINITY;
    bool faster = true;
    for (int r = 0; r < 3; r++) {
        double x = time_set(b, &both, false, true, true), y = time_set(b, table, false, true, true);
        if (x < 0 || y < 0) return KILN_OK; /* skipped: the table's set */
        faster &= x < AUTO_MARGIN * y;
        if (x < tw) tw = x;
        if (y < tt) tt = y;
    }
    *table_ms = tt;
    *win_ms = tw;
    if (!faster) return KILN_OK;
    float *ref = malloc(2 * NSHAPES * AUTO_FLOATS * sizeof(float));
    if (!ref) return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "KILN_TUNE=auto: out of host memory");
    float *got = ref + NSHAPES * AUTO_FLOATS;
    use(ctx, table);
    kiln_status s = results(b, ref);
    use(ctx, &both);
    if (s == KILN_OK) s = results(b, got);
    double worst = 0;
    if (s == KILN_OK && agrees(got, ref, &worst)) {
        *win = both;
    } else if (s == KILN_OK) {
        kiln__log(1,
                  "KILN_TUNE=auto: the fastest set's products differ from the table set's (error ratio %.3g): "
                  "the table's set kept",
                  worst);
    }
    free(ref);
    return s;
}

/* Fills the operands with a fixed sequence in [-1, 1] (not the context's random stream,
 * which the caller's results depend on). */
static kiln_status fill(kiln_ctx *ctx, kiln_tensor *t, float *host, uint32_t seed) {
    for (size_t i = 0; i < AUTO_FLOATS; i++) {
        seed = seed * 1664525u + 1013904223u;
        host[i] = (float)(seed >> 8) / 8388608.0f - 1.0f;
    }
    cl_event ev = NULL;
    kiln_status s = kiln__write_async(ctx, "KILN_TUNE=auto", t->st->mem, (size_t)t->offset * sizeof(float),
                                      AUTO_FLOATS * sizeof(float), host, &ev);
    if (s == KILN_OK) s = wait_all(ctx);
    kiln__event_release(ev);
    return s;
}

/* The tune; the context's tuned slot holds its result (the table's set on failure, then
 * with the error cleared and a log line). */
static void autotune(kiln_ctx *ctx, const kiln__gemm_params *table) {
    double t_start = kiln__now_ms();
    char why[160], path[1200], err[512];
    double budget = kiln__tune_seconds(why, sizeof why);
    if (why[0]) kiln__log(1, "%s", why);
    kiln__tune_set file;
    memset(&file, 0, sizeof file);
    if (kiln__tune_path(&ctx->info, path, sizeof path) != KILN_OK) {
        kiln__log(1, "KILN_TUNE=auto: no cache directory to store a result in (KILN_CACHE=off?): not tuned");
        return;
    }
    /* another context may have stored a set since this one opened; a file that is there
     * but does not parse is left as it is (the search's result would replace it) */
    bool exists = access(path, F_OK) == 0;
    if (exists && kiln__tune_load(&ctx->info, path, &file, err, sizeof err) != KILN_OK) {
        kiln__log(1, "KILN_TUNE=auto: %s: %s; not tuned (mend or delete the file)", path, err);
        return;
    }
    if (exists && file.has_gemm) {
        use(ctx, &file.gemm);
        return;
    }
    if (!exists) memset(&file, 0, sizeof file);
    bench b = {.ctx = ctx};
    for (size_t i = 0; i < NSHAPES; i++)
        b.nt[i] = strcmp(kiln__gemm_kernel(shapes[i].ta, shapes[i].tb, shapes[i].m, shapes[i].n, shapes[i].k),
                         "gemm_nt") == 0;
    float *host = malloc(AUTO_FLOATS * sizeof(float));
    int64_t shape[1] = {AUTO_FLOATS};
    kiln_status s = host ? KILN_OK : KILN_ERR_HOST_OUT_OF_MEMORY;
    if (s == KILN_OK) {
        b.a = kiln__tensor_new(ctx, "KILN_TUNE=auto", KILN_F32, 1, shape);
        b.b = kiln__tensor_new(ctx, "KILN_TUNE=auto", KILN_F32, 1, shape);
        b.c = kiln__tensor_new(ctx, "KILN_TUNE=auto", KILN_F32, 1, shape);
        s = b.a && b.b && b.c ? KILN_OK : ctx->err;
    }
    if (s == KILN_OK) s = fill(ctx, b.a, host, 1);
    if (s == KILN_OK) s = fill(ctx, b.b, host, 2);
    kiln__gemm_params win = *table;
    int timed = 0;
    double table_ms = 0, win_ms = 0;
    if (s == KILN_OK) s = search(&b, table, budget * 1e3, t_start, &win, &timed, &table_ms, &win_ms);
    kiln_tensor_free(b.a);
    kiln_tensor_free(b.b);
    kiln_tensor_free(b.c);
    free(host);
    ctx->hooks.gemm_autotune_timed = timed;
    if (s != KILN_OK) {
        kiln__log(1, "KILN_TUNE=auto: not tuned, the table's set kept: %s",
                  ctx->errmsg ? ctx->errmsg : kiln_status_name(s));
        kiln_error_clear(ctx);
        ctx->has_gemm_tuned = false;
        return;
    }
    use(ctx, &win);
    bool same = same_set(&win, table);
    char comment[320], desc[160];
    kiln__gemm_describe(&ctx->gemm_tuned, desc, sizeof desc);
    int w = snprintf(comment, sizeof comment, "kiln's automatic tune (KILN_TUNE=auto): %d set%s timed in %.1f s; ",
                     timed, timed == 1 ? "" : "s", (kiln__now_ms() - t_start) / 1e3);
    size_t used = w > 0 && (size_t)w < sizeof comment ? (size_t)w : 0;
    if (!same)
        snprintf(comment + used, sizeof comment - used, "the table's %s set %.3f ms, the winner %.3f ms", table->name,
                 table_ms, win_ms);
    else if (isnan(win_ms))
        snprintf(comment + used, sizeof comment - used, "the table's %s set kept (%.3f ms; %s)", table->name, table_ms,
                 timed == 1 ? "the budget left no time for another"
                            : "no other set 3% faster on its kernel's products");
    else
        snprintf(comment + used, sizeof comment - used, "the table's %s set kept (%.3f ms; the fastest other %.3f ms)",
                 table->name, table_ms, win_ms);
    /* stored whichever set won, so that no later context searches again; the file's
     * CLBlast lines are kept */
    file.has_gemm = true;
    file.gemm = ctx->gemm_tuned;
    char saved[1200];
    if (kiln__tune_save(&ctx->info, &file, comment, saved, sizeof saved) != KILN_OK)
        kiln__log(1, "KILN_TUNE=auto: %s (the result holds for this context only)", kiln_last_error());
    kiln__log(2, "%s; %s (%s)", comment, desc, saved);
}

void kiln__gemm_autotune(kiln_ctx *ctx) {
    if (ctx->gemm_autotune != 0 || ctx->err != KILN_OK) return;
    ctx->gemm_autotune = 1; /* running: the search's own products do not start another */
    if (!ctx->gemm_table_set) ctx->gemm_table_set = 1 + kiln__gemm_choose(&ctx->info, NULL, 0, NULL);
    autotune(ctx, &kiln__gemm_sets[ctx->gemm_table_set - 1]);
    ctx->gemm_autotune = 2;
}

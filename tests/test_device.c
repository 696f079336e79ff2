/* tests/test_device.c - device listing, device specs, several contexts at once, status
 * names. */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>

#include "harness.h"

static bool same(const kiln_device_info *a, const kiln_device_info *b) {
    return a->platform_index == b->platform_index && a->device_index == b->device_index;
}

static void test_listing(void) {
    kiln_device_info d[16];
    int n = 0;
    CHECK(kiln_devices(d, 16, &n) == KILN_OK && n >= 1, "kiln_devices: %s", kiln_last_error());
    int total = -1;
    CHECK(kiln_devices(NULL, 0, &total) == KILN_OK && total == n, "count-only call gives %d, want %d", total, n);
    CHECK(kiln_devices(NULL, 1, &total) == KILN_ERR_NULL, "NULL out with cap > 0 must fail");
    CHECK(kiln_devices(d, 16, NULL) == KILN_ERR_NULL, "NULL count must fail");
    int defaults = 0, first_gpu = -1, first_cpu = -1;
    for (int i = 0; i < n && i < 16; i++) {
        CHECK(d[i].name[0] && d[i].platform_name[0] && d[i].version[0], "device %d has empty names", i);
        CHECK(d[i].compute_units > 0 && d[i].global_mem_bytes > 0 && d[i].max_alloc_bytes > 0 &&
                  d[i].max_work_group_size > 0,
              "device %d: zero limits", i);
        defaults += d[i].is_default;
        if (d[i].type == KILN_DEVICE_GPU && first_gpu < 0) first_gpu = i;
        if (d[i].type == KILN_DEVICE_CPU && first_cpu < 0) first_cpu = i;
    }
    CHECK(defaults == 1, "%d devices marked default", defaults);
    int want = first_gpu >= 0 ? first_gpu : first_cpu >= 0 ? first_cpu : 0;
    CHECK(d[want].is_default, "the default is the first GPU, else the first CPU");

    /* every way to name a device resolves to the device it names */
    kiln_device_info f;
    for (int i = 0; i < n && i < 16; i++) {
        char spec[32];
        snprintf(spec, sizeof spec, "%d:%d", d[i].platform_index, d[i].device_index);
        CHECK(kiln_device_find(spec, &f) == KILN_OK && same(&f, &d[i]), "spec %s", spec);
    }
    CHECK(kiln_device_find(NULL, &f) == KILN_OK && same(&f, &d[want]), "NULL spec = default");
    CHECK(kiln_device_find("", &f) == KILN_OK && same(&f, &d[want]), "empty spec = default");
    CHECK(kiln_device_find("default", &f) == KILN_OK && same(&f, &d[want]), "'default'");
    if (first_cpu >= 0) {
        CHECK(kiln_device_find("cpu", &f) == KILN_OK && same(&f, &d[first_cpu]), "'cpu'");
        CHECK(kiln_device_find("CPU", &f) == KILN_OK && same(&f, &d[first_cpu]), "'CPU' (case)");
    }
    if (first_gpu >= 0) CHECK(kiln_device_find("gpu", &f) == KILN_OK && same(&f, &d[first_gpu]), "'gpu'");
    /* a case-flipped middle part of the first device's name */
    char part[8] = {0};
    size_t len = strlen(d[0].name);
    if (len >= 6) {
        for (int i = 0; i < 5; i++) part[i] = (char)toupper((unsigned char)d[0].name[len / 2 - 2 + i]);
        CHECK(kiln_device_find(part, &f) == KILN_OK, "substring '%s' of '%s'", part, d[0].name);
    }
    if (strstr(d[0].platform_vendor, "pocl"))
        CHECK(kiln_device_find("POCL", &f) == KILN_OK && f.platform_index == d[0].platform_index, "'POCL'");

    /* unknown specs: a clear error that lists what exists */
    const char *bad[] = {"no-such-device-xyz", "99:0", "0:99", "0:", ":0", "1:2:3"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kiln_status s = kiln_device_find(bad[i], &f);
        CHECK(s == KILN_ERR_DEVICE_NOT_FOUND, "spec '%s' gives %s", bad[i], kiln_status_name(s));
        CHECK(strstr(kiln_last_error(), bad[i]) && strstr(kiln_last_error(), d[0].name),
              "message names the spec and the devices: %s", kiln_last_error());
    }
    if (first_gpu < 0) CHECK(kiln_device_find("gpu", &f) == KILN_ERR_DEVICE_NOT_FOUND, "no GPU here");
    kiln_ctx *ctx = (kiln_ctx *)1;
    CHECK(kiln_open(&ctx, "no-such-device-xyz") == KILN_ERR_DEVICE_NOT_FOUND && ctx == NULL,
          "kiln_open with a bad spec fails and sets *out to NULL");
    CHECK(kiln_open(NULL, NULL) == KILN_ERR_NULL, "kiln_open(NULL out)");

    /* KILN_DEVICE is read when the spec is NULL; an explicit spec wins over it */
    setenv("KILN_DEVICE", "no-such-device-xyz", 1);
    CHECK(kiln_open(&ctx, NULL) == KILN_ERR_DEVICE_NOT_FOUND, "KILN_DEVICE is honoured");
    CHECK(kiln_open(&ctx, "0:0") == KILN_OK || d[0].platform_index != 0, "explicit spec overrides KILN_DEVICE");
    if (ctx) kiln_close(ctx);
    unsetenv("KILN_DEVICE");
}

/* Two contexts on one device at once: separate queues, pools, caches and errors. */
static void test_two_contexts(void) {
    kiln_ctx *a, *b;
    CHECK(kiln_open(&a, NULL) == KILN_OK && kiln_open(&b, NULL) == KILN_OK, "two contexts: %s", kiln_last_error());
    kiln_tensor *ta = kiln_full(a, 2.0f, 1, (int64_t[]){100});
    kiln_tensor *tb = kiln_full(b, 3.0f, 1, (int64_t[]){100});
    CHECK(kiln_contiguous(a, tb) == NULL && kiln_error_status(a) == KILN_ERR_INVALID_ARGUMENT,
          "a tensor of another context is refused");
    CHECK(kiln_error_status(b) == KILN_OK, "the other context's error state is untouched");
    kiln_error_clear(a);
    kiln_pool_stats pa, pb;
    kiln_pool_stats_get(a, &pa);
    kiln_pool_stats_get(b, &pb);
    CHECK(pa.in_use_bytes > 0 && pb.in_use_bytes > 0, "each context has its own pool");
    kiln_close(a); /* frees ta; b must be unaffected */
    float h[100];
    CHECK(kiln_to_host(tb, h, sizeof h) == KILN_OK && h[0] == 3.0f && h[99] == 3.0f, "b still works after a closes");
    (void)ta;
    kiln_close(b);
    kiln_close(NULL); /* harmless */
}

/* kiln_close frees what the floors above the device keep on the context through the hooks
 * they register (kiln__on_close): each once, newest first; a full list is an error. */
static int closed[KILN__CLOSE_HOOKS + 1], nclosed;
// clang-format off
#define HOOK(k) \
    static void hook_##k(kiln_ctx *ctx) { (void)ctx; closed[nclosed++] = k; }
HOOK(0) HOOK(1) HOOK(2) HOOK(3) HOOK(4) HOOK(5) HOOK(6) HOOK(7) HOOK(8)
#undef HOOK
static const kiln__close_fn hooks[] = {hook_0, hook_1, hook_2, hook_3, hook_4, hook_5, hook_6, hook_7, hook_8};
// clang-format on
_Static_assert(sizeof hooks / sizeof hooks[0] == KILN__CLOSE_HOOKS + 1, "one hook more than the context holds");

static void test_close_hooks(void) {
    kiln_ctx *ctx;
    CHECK(kiln_open(&ctx, NULL) == KILN_OK, "open: %s", kiln_last_error());
    nclosed = 0;
    CHECK(kiln__on_close(ctx, hook_0) == KILN_OK && kiln__on_close(ctx, hook_1) == KILN_OK, "register two hooks");
    CHECK(kiln__on_close(ctx, hook_0) == KILN_OK, "registering a hook again is a no-op");
    kiln_close(ctx);
    CHECK(nclosed == 2 && closed[0] == 1 && closed[1] == 0, "hooks run once each, newest first (%d ran)", nclosed);

    /* a full list: the ninth hook is refused, and so is the tensor floor's own */
    CHECK(kiln_open(&ctx, NULL) == KILN_OK, "open: %s", kiln_last_error());
    nclosed = 0;
    for (int k = 0; k < KILN__CLOSE_HOOKS; k++)
        CHECK(kiln__on_close(ctx, hooks[k]) == KILN_OK, "hook %d: %s", k, kiln_error_message(ctx));
    CHECK(kiln__on_close(ctx, hooks[KILN__CLOSE_HOOKS]) == KILN_ERR_INVALID_ARGUMENT, "a ninth hook must fail");
    CHECK(strstr(kiln_error_message(ctx), "kiln__on_close: the context holds 8 close hooks already") != NULL,
          "message: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(kiln_zeros(ctx, 1, (int64_t[]){4}) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT,
          "a tensor whose floor cannot register its close hook is refused");
    kiln_close(ctx);
    bool order = nclosed == KILN__CLOSE_HOOKS;
    for (int k = 0; order && k < KILN__CLOSE_HOOKS; k++) order = closed[k] == KILN__CLOSE_HOOKS - 1 - k;
    CHECK(order, "the eight hooks run newest first (%d ran)", nclosed);

    /* the tensor floor's hook: tensors, views, gradients and nodes left at close all go (the
     * sanitizer build sees a leak otherwise), registered once however often the list empties */
    CHECK(kiln_open(&ctx, NULL) == KILN_OK, "open: %s", kiln_last_error());
    kiln_tensor *a = kiln_ones(ctx, 1, (int64_t[]){6});
    kiln_tensor_free(a);
    a = kiln_ones(ctx, 1, (int64_t[]){6});
    kiln_tensor_set_requires_grad(a, true);
    kiln_tensor *v = kiln_reshape(ctx, kiln_mul_scalar(ctx, a, 3.0f), 2, (int64_t[]){2, 3});
    CHECK(kiln_backward(kiln_sum(ctx, v, 0, NULL, false)) == KILN_OK && kiln_tensor_grad(a), "backward: %s",
          kiln_error_message(ctx));
    kiln_tensor *keep = kiln_mul_scalar(ctx, kiln_slice(ctx, a, 0, 1, 5, 2), 2.0f); /* its graph stays */
    CHECK(keep && keep->node && ctx->nclose_hooks == 1, "one close hook for the tensor floor (%d)", ctx->nclose_hooks);
    kiln_close(ctx);
}

static void test_status_names(void) {
    const kiln_status all[] = {
#define X(name, value, text) name,
        KILN_STATUS_LIST(X)
#undef X
    };
    size_t n = sizeof all / sizeof all[0];
    for (size_t i = 0; i < n; i++) {
        CHECK(strncmp(kiln_status_name(all[i]), "KILN_", 5) == 0, "name of %d", (int)all[i]);
        CHECK(all[i] <= 0, "statuses are 0 or negative");
        for (size_t j = 0; j < i; j++)
            CHECK(all[i] != all[j] && strcmp(kiln_status_str(all[i]), kiln_status_str(all[j])) != 0,
                  "duplicate status %d", (int)all[i]);
    }
    CHECK(strcmp(kiln_status_str((kiln_status)-999), "unknown status") == 0, "unknown status text");
    CHECK(kiln_dtype_size(KILN_F32) == 4 && kiln_dtype_size(KILN_U8) == 1 && kiln_dtype_size(KILN_DTYPE_COUNT) == 0,
          "dtype sizes");
}

/* kiln_ctx_stats counts what the context asked of the device: each launch, each wait of
 * the host (blocking copies both ways, kiln_sync) and the bytes, from the last reset. */
static void test_stats(void) {
    kiln_ctx *ctx;
    CHECK(kiln_open(&ctx, NULL) == KILN_OK, "open: %s", kiln_last_error());
    kiln_ctx_stats st;
    CHECK(kiln_ctx_stats_reset(ctx) == KILN_OK && kiln_ctx_stats_get(ctx, &st) == KILN_OK, "stats");
    CHECK(st.launches == 0 && st.host_waits == 0 && st.bytes_to_host == 0 && st.bytes_to_device == 0 &&
              st.pool_device_allocs == 0 && st.pool_reuses == 0,
          "zero after a reset");
    float h[100];
    for (int i = 0; i < 100; i++) h[i] = (float)i;
    kiln_tensor *a = kiln_from_host(ctx, h, KILN_F32, 1, (int64_t[]){100});
    kiln_ctx_stats_get(ctx, &st);
    CHECK(st.blocking_writes == 1 && st.bytes_to_device == 400 && st.host_waits == 1 && st.launches == 0,
          "kiln_from_host: one blocking write of 400 bytes (got %llu writes, %llu bytes, %llu launches)",
          (unsigned long long)st.blocking_writes, (unsigned long long)st.bytes_to_device,
          (unsigned long long)st.launches);
    kiln_ctx_stats_reset(ctx);
    kiln_tensor *b = kiln_add(ctx, a, a);
    kiln_tensor *c = kiln_add(ctx, b, a);
    kiln_ctx_stats_get(ctx, &st);
    CHECK(st.launches == 2 && st.host_waits == 0 && st.pool_device_allocs + st.pool_reuses == 2,
          "two adds: two launches, no waits, two pool requests (got %llu launches, %llu waits, %llu + %llu)",
          (unsigned long long)st.launches, (unsigned long long)st.host_waits, (unsigned long long)st.pool_device_allocs,
          (unsigned long long)st.pool_reuses);
    CHECK(kiln_to_host(c, h, sizeof h) == KILN_OK && h[7] == 21.0f, "3 * 7");
    CHECK(kiln_sync(ctx) == KILN_OK, "sync");
    kiln_ctx_stats_get(ctx, &st);
    CHECK(st.blocking_reads == 1 && st.bytes_to_host == 400 && st.finishes == 1 && st.host_waits == 2,
          "a read and a sync: two waits (got %llu reads of %llu bytes, %llu finishes)",
          (unsigned long long)st.blocking_reads, (unsigned long long)st.bytes_to_host, (unsigned long long)st.finishes);
    CHECK(kiln_ctx_stats_get(NULL, &st) == KILN_ERR_NULL && strstr(kiln_last_error(), "kiln_ctx_stats_get"),
          "NULL ctx");
    CHECK(kiln_ctx_stats_get(ctx, NULL) == KILN_ERR_NULL && strstr(kiln_error_message(ctx), "out is NULL"), "NULL out");
    kiln_error_clear(ctx);
    CHECK(kiln_ctx_stats_reset(NULL) == KILN_ERR_NULL, "NULL ctx reset");
    kiln_close(ctx);
}

/* KILN_DEVICE_LIMITS: refused specs, what the context is told, and launches the narrower
 * device would refuse. */
static kiln_status open_limited(kiln_ctx **ctx, const char *limits) {
    setenv("KILN_DEVICE_LIMITS", limits, 1);
    kiln_status s = kiln_open(ctx, NULL);
    unsetenv("KILN_DEVICE_LIMITS");
    return s;
}

static void test_limits(void) {
    kiln_device_info real;
    CHECK(kiln_device_find(NULL, &real) == KILN_OK, "find: %s", kiln_last_error());
    char toobig[64];
    snprintf(toobig, sizeof toobig, "wg=%llu", (unsigned long long)real.max_work_group_size + 1);
    const struct {
        const char *spec, *says;
    } bad[] = {
        {"wg", "'wg' is not key=value"},
        {"=4", "'=4' is not key=value"},
        {"wg=", "'wg=' is not key=value"},
        {"wg=abc", "wg=abc is not a number"},
        {"wg=-4", "wg=-4 is not a number"},
        {"wg=0", "wg=0 must be at least 1"},
        {toobig, "at most what"},
        {"color=red", "unknown key 'color'"},
        {"type=fpga", "type=fpga is not gpu, cpu"},
        {"fp16=1", "only fp16=0"},
        {"vec=3", "vec=3 is not 1, 2, 4, 8 or 16"},
        {"cu=0", "cu=0 must be at least 1"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kiln_ctx *ctx = (kiln_ctx *)1;
        kiln_status s = open_limited(&ctx, bad[i].spec);
        CHECK(s == KILN_ERR_INVALID_ARGUMENT && ctx == NULL && strstr(kiln_last_error(), bad[i].says) &&
                  strstr(kiln_last_error(), "KILN_DEVICE_LIMITS"),
              "KILN_DEVICE_LIMITS='%s' must be refused saying '%s': %s", bad[i].spec, bad[i].says, kiln_last_error());
    }

    kiln_ctx *ctx;
    kiln_status s = open_limited(&ctx, "type=gpu,wg=8,lmem=64,cu=40,fp16=0,vec=2");
    CHECK(s == KILN_OK, "open: %s", kiln_last_error());
    if (s != KILN_OK) return;
    const kiln_device_info *d = kiln_ctx_device(ctx);
    CHECK(d->limited && d->type == KILN_DEVICE_GPU && d->max_work_group_size == 8 && d->local_mem_bytes == 64 &&
              d->compute_units == 40 && !d->fp16 && d->preferred_vector_width_float == 2 &&
              d->native_vector_width_float == 2,
          "the context is told the narrower device");
    CHECK(kiln__wg_size(ctx) == 8, "1-D launches use groups of %zu, want 8", kiln__wg_size(ctx));

    /* a launch over the limits is refused as the narrower device would refuse it */
    kiln_tensor *g = kiln_zeros(ctx, 1, (int64_t[]){16});
    cl_int off = 0, n = 0;
    kiln__karg a[] = {KILN__ARG(g->st->mem), KILN__ARG(off), KILN__ARG(n), KILN__ARG(g->st->mem), KILN__ARG(off)};
    CHECK(kiln__launch(ctx, "test_limits", "optim", "", "clip_scale", 5, a, 16, 16) == KILN_ERR_OPENCL &&
              strstr(kiln_error_message(ctx), "test_limits: kernel 'clip_scale' asks for work-groups of 16 items, "
                                              "more than the 8 the device allows"),
          "a group of 16 on a device of 8: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(kiln__launch(ctx, "test_limits", "optim", "", "clip_scale", 5, a, 16, 8) == KILN_OK, "a group of 8: %s",
          kiln_error_message(ctx));
    cl_int mode = 0;
    cl_float p = 2;
    kiln__karg b[] = {KILN__ARG(g->st->mem), KILN__ARG(off),  KILN__ARG(n), KILN__ARG(g->st->mem),
                      KILN__ARG(off),        KILN__ARG(mode), KILN__ARG(p), KILN__LOCAL(8 * sizeof(cl_float) * 4)};
    CHECK(kiln__launch(ctx, "test_limits", "optim", "", "clip_partial", 8, b, 8, 8) == KILN_ERR_OPENCL &&
              strstr(kiln_error_message(ctx), "needs 128 bytes of local memory, more than the 64 the device has"),
          "128 bytes of local memory on a device of 64: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);

    /* the ops fit themselves to it: gemm_nt's 4 x 4 groups and the loss trees shrink */
    float xa[6] = {1, 2, 3, 4, 5, 6}, wb[6] = {1, 0, -1, 2, 1, 0}, want[4] = {-2, 4, -2, 13}, got[4] = {0};
    kiln_tensor *x = kiln_from_host(ctx, xa, KILN_F32, 2, (int64_t[]){2, 3});
    kiln_tensor *w = kiln_from_host(ctx, wb, KILN_F32, 2, (int64_t[]){2, 3});
    kiln_tensor *y = kiln_matmul_ex(ctx, x, w, KILN_TRANS_B);
    CHECK(y && kiln_to_host(y, got, sizeof got) == KILN_OK, "x w^T with groups of at most 8: %s",
          kiln_error_message(ctx));
    for (int i = 0; i < 4; i++) CHECK(got[i] == want[i], "x w^T [%d] = %g, want %g", i, got[i], want[i]);
    kiln_close(ctx);
}

/* KILN__SPREAD's group size (src/device/program.c): halved from the kernel's size until the
 * launch has KILN__SPREAD_GROUPS groups per compute unit, never below 16 items, never
 * raised. ResNet-20's 7 x 7 stage: conv3_bcast's 1792 work-items and conv3_wgradc's 512. */
static void test_spread_local(void) {
    static const struct {
        size_t wg, global, units, want;
    } cases[] = {
        {256, 1792, 2, 128},     /* 7 groups of 256 -> 14 of 128 (>= 8) */
        {256, 3584, 2, 256},     /* 14 groups already */
        {256, 512, 2, 64},       /* 2 -> 8 */
        {256, 512, 1, 128},      /* 2 -> 4 */
        {256, 1792, 16, 16},     /* 7 -> 112: 64 wanted, 16 items the least */
        {256, 100, 2, 16},       /* 7 groups of 16: no smaller group */
        {256, 1 << 20, 64, 256}, /* 4096 groups */
        {256, 1792, 0, 256},     /* no unit count: one unit, 7 >= 4 */
        {64, 1792, 2, 64},       /* the kernel's own size, 28 groups */
        {8, 64, 2, 8},           /* a kernel capped below 16 keeps its size */
        {256, 0, 2, 16},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t got = kiln__spread_local(cases[i].wg, cases[i].global, cases[i].units);
        CHECK(got == cases[i].want, "spread of %zu items on %zu units from groups of %zu: %zu, want %zu",
              cases[i].global, cases[i].units, cases[i].wg, got, cases[i].want);
    }
}

/* The group size a 1-D launch of clip_partial (optim.cl) ran with: each work-group writes the
 * sum of |g| over its work-items' float8 units to part[group], so with g all ones and one
 * unit per work-item part[0] is 8 times the group's size. 0 when the launch fails. */
static size_t launched_group(kiln_ctx *ctx, size_t global, size_t local) {
    kiln_tensor *g = kiln_ones(ctx, 1, (int64_t[]){(int64_t)global * 8});
    kiln_tensor *part = kiln_zeros(ctx, 1, (int64_t[]){(int64_t)global});
    float *host = calloc(global, sizeof *host), first = 0;
    if (g && part && host) {
        cl_int goff = (cl_int)g->offset, n = (cl_int)global * 8, pbase = (cl_int)part->offset, mode = KILN_CLIP_L1;
        cl_float p = 1;
        kiln__karg a[] = {
            KILN__ARG(g->st->mem), KILN__ARG(goff), KILN__ARG(n), KILN__ARG(part->st->mem),
            KILN__ARG(pbase),      KILN__ARG(mode), KILN__ARG(p), KILN__LOCAL(kiln__wg_size(ctx) * sizeof(cl_float))};
        if (kiln__launch(ctx, "test_spread", "optim", "", "clip_partial", 8, a, global, local) != KILN_OK ||
            kiln_to_host(part, host, global * sizeof *host) != KILN_OK)
            host[0] = 0;
        first = host[0];
    }
    free(host);
    kiln_tensor_free(g);
    kiln_tensor_free(part);
    return (size_t)first / 8;
}

/* kiln__launch with KILN__SPREAD: on a CPU the group kiln__spread_local gives for the
 * device's compute units, on a GPU the kernel's own group (that of local 0). Two groups'
 * worth of items, so that the CPU's spread must halve the group. */
static void test_spread_launch(void) {
    const struct {
        const char *limits;
        bool cpu;
        size_t units;
    } devs[] = {{"type=cpu,cu=1", true, 1}, {"type=cpu,cu=16", true, 16}, {"type=gpu,cu=16", false, 16}};
    for (size_t i = 0; i < sizeof devs / sizeof devs[0]; i++) {
        kiln_ctx *ctx;
        CHECK(open_limited(&ctx, devs[i].limits) == KILN_OK, "open %s: %s", devs[i].limits, kiln_last_error());
        if (!ctx) continue;
        size_t own = launched_group(ctx, 256, 0);
        CHECK(own >= 32, "%s: the kernel's own group is %zu items (%s)", devs[i].limits, own, kiln_error_message(ctx));
        size_t global = 2 * own, want = devs[i].cpu ? kiln__spread_local(own, global, devs[i].units) : own;
        size_t got = launched_group(ctx, global, KILN__SPREAD);
        CHECK(got == want && (!devs[i].cpu || got < own), "%s: KILN__SPREAD over %zu items ran groups of %zu, want %zu",
              devs[i].limits, global, got, want);
        kiln_close(ctx);
    }
}

/* The context's program cache: a lookup matches a program's whole options, not a prefix of
 * them or a string they begin with; no options is a program of its own; options too long
 * to build are refused, naming the program. */
static void test_kernel_lookup(void) {
    kiln_ctx *ctx;
    CHECK(kiln_open(&ctx, NULL) == KILN_OK, "open: %s", kiln_last_error());
    kiln_cache_stats c0, c1;
    const struct {
        const char *options;
        bool hit;
    } seq[] = {
        {"-DKILN_TEST_LOOKUP=1", false},
        {"-DKILN_TEST_LOOKUP=1", true},
        {"-DKILN_TEST_LOOKUP=10", false},
        {"-DKILN_TEST_LOOKUP=1", true},
        {"-DKILN_TEST_LOOKUP=", false},
        {"", false},
        {NULL, true},
        {"", true},
    };
    cl_kernel first = NULL;
    for (size_t i = 0; i < sizeof seq / sizeof seq[0]; i++) {
        kiln_cache_stats_get(ctx, &c0);
        cl_kernel k = kiln__kernel(ctx, "optim", seq[i].options, "clip_scale");
        kiln_cache_stats_get(ctx, &c1);
        bool hit = c1.memory_hits == c0.memory_hits + 1;
        CHECK(k != NULL && hit == seq[i].hit, "lookup %zu, options '%s': %s, want %s (%s)", i,
              seq[i].options ? seq[i].options : "(NULL)", hit ? "a hit" : "a new program",
              seq[i].hit ? "a hit" : "a new program", kiln_error_message(ctx));
        if (i == 0) first = k;
        if (i == 3) CHECK(k == first, "options '-DKILN_TEST_LOOKUP=1' again: the same kernel");
    }
    char big[1100];
    memset(big, 'x', sizeof big - 1);
    memcpy(big, "-DKILN_", 7);
    big[sizeof big - 1] = '\0';
    kiln_cache_stats_get(ctx, &c0);
    CHECK(kiln__kernel(ctx, "optim", big, "clip_scale") == NULL &&
              kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT &&
              strstr(kiln_error_message(ctx), "program 'optim': build options of"),
          "options of 1099 characters: %s", kiln_error_message(ctx));
    kiln_cache_stats_get(ctx, &c1);
    CHECK(c1.builds == c0.builds && c1.disk_hits == c0.disk_hits, "nothing built for them");
    kiln_error_clear(ctx);
    CHECK(kiln__kernel(ctx, "optim", "", "clip_scale") != NULL, "the context works after: %s", kiln_error_message(ctx));
    kiln_close(ctx);
}

int main(void) {
    char specs[16][16];
    h_devices(specs, 16); /* exits 77 when there is no device */
    test_listing();
    test_two_contexts();
    test_close_hooks();
    test_status_names();
    test_stats();
    test_limits();
    test_kernel_lookup();
    test_spread_local();
    test_spread_launch();
    return h_finish();
}

/* src/device/device.c - platform and device enumeration, device specs, opening a context. */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <stdatomic.h>

#include "device_internal.h" /* before clblast_c.h: it picks the OpenCL target version */

#include <clblast_c.h>

/* Open contexts in the process. CLBlast keeps compiled programs (and a reference to their
 * cl_context) in one process-wide cache that can only be cleared whole: the last
 * kiln_close clears it, so closed contexts are not kept alive by it. */
static atomic_int open_contexts;

const char *kiln_device_type_name(kiln_device_type t) {
    switch (t) {
    case KILN_DEVICE_CPU: return "CPU";
    case KILN_DEVICE_GPU: return "GPU";
    case KILN_DEVICE_ACCELERATOR: return "accelerator";
    default: return "other";
    }
}

/* One device found by enumeration, with its CL handles. */
typedef struct found {
    cl_platform_id platform;
    cl_device_id device;
    kiln_device_info info;
} found;

static void dev_str(cl_device_id d, cl_device_info what, char *out, size_t cap) {
    out[0] = '\0';
    if (clGetDeviceInfo(d, what, cap, out, NULL) != CL_SUCCESS) out[0] = '\0';
    out[cap - 1] = '\0';
}

static void plat_str(cl_platform_id p, cl_platform_info what, char *out, size_t cap) {
    out[0] = '\0';
    if (clGetPlatformInfo(p, what, cap, out, NULL) != CL_SUCCESS) out[0] = '\0';
    out[cap - 1] = '\0';
}

static uint64_t dev_u64(cl_device_id d, cl_device_info what) {
    cl_ulong v = 0;
    clGetDeviceInfo(d, what, sizeof v, &v, NULL);
    return v;
}

static uint32_t dev_u32(cl_device_id d, cl_device_info what) {
    cl_uint v = 0;
    clGetDeviceInfo(d, what, sizeof v, &v, NULL);
    return v;
}

static void fill_info(cl_platform_id p, cl_device_id d, kiln_device_info *o) {
    dev_str(d, CL_DEVICE_NAME, o->name, sizeof o->name);
    dev_str(d, CL_DEVICE_VENDOR, o->vendor, sizeof o->vendor);
    dev_str(d, CL_DEVICE_VERSION, o->version, sizeof o->version);
    dev_str(d, CL_DRIVER_VERSION, o->driver_version, sizeof o->driver_version);
    dev_str(d, CL_DEVICE_OPENCL_C_VERSION, o->opencl_c_version, sizeof o->opencl_c_version);
    plat_str(p, CL_PLATFORM_NAME, o->platform_name, sizeof o->platform_name);
    plat_str(p, CL_PLATFORM_VENDOR, o->platform_vendor, sizeof o->platform_vendor);
    plat_str(p, CL_PLATFORM_VERSION, o->platform_version, sizeof o->platform_version);
    cl_device_type t = 0;
    clGetDeviceInfo(d, CL_DEVICE_TYPE, sizeof t, &t, NULL);
    o->type = (t & CL_DEVICE_TYPE_GPU)           ? KILN_DEVICE_GPU
              : (t & CL_DEVICE_TYPE_CPU)         ? KILN_DEVICE_CPU
              : (t & CL_DEVICE_TYPE_ACCELERATOR) ? KILN_DEVICE_ACCELERATOR
                                                 : KILN_DEVICE_OTHER;
    o->compute_units = dev_u32(d, CL_DEVICE_MAX_COMPUTE_UNITS);
    o->max_clock_mhz = dev_u32(d, CL_DEVICE_MAX_CLOCK_FREQUENCY);
    o->global_mem_bytes = dev_u64(d, CL_DEVICE_GLOBAL_MEM_SIZE);
    o->local_mem_bytes = dev_u64(d, CL_DEVICE_LOCAL_MEM_SIZE);
    o->max_alloc_bytes = dev_u64(d, CL_DEVICE_MAX_MEM_ALLOC_SIZE);
    size_t wg = 0;
    clGetDeviceInfo(d, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof wg, &wg, NULL);
    o->max_work_group_size = wg;
    char ext[8192];
    dev_str(d, CL_DEVICE_EXTENSIONS, ext, sizeof ext);
    o->fp16 = strstr(ext, "cl_khr_fp16") != NULL;
    o->fp64 = strstr(ext, "cl_khr_fp64") != NULL;
    o->preferred_vector_width_float = dev_u32(d, CL_DEVICE_PREFERRED_VECTOR_WIDTH_FLOAT);
    o->preferred_vector_width_half = dev_u32(d, CL_DEVICE_PREFERRED_VECTOR_WIDTH_HALF);
    o->native_vector_width_float = dev_u32(d, CL_DEVICE_NATIVE_VECTOR_WIDTH_FLOAT);
}

/* Enumerates every device into a malloc'ed array; marks the default. */
static kiln_status enumerate(found **out, int *count) {
    *out = NULL;
    *count = 0;
    cl_uint np = 0;
    cl_int err = clGetPlatformIDs(0, NULL, &np);
    if (err == -1001 || (err == CL_SUCCESS && np == 0))
        return kiln__fail_global(KILN_ERR_NO_DEVICE,
                                 "no OpenCL platform found: install an OpenCL driver (on a CPU-only "
                                 "machine: apt-get install pocl-opencl-icd)");
    if (err != CL_SUCCESS)
        return kiln__fail_global(kiln__cl_status(err), "clGetPlatformIDs failed: %s (%d)", kiln__cl_name(err), err);
    cl_platform_id *plats = calloc(np, sizeof *plats);
    if (!plats) return kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "kiln_devices: out of memory");
    clGetPlatformIDs(np, plats, NULL);
    found *all = NULL;
    int n = 0;
    for (cl_uint p = 0; p < np; p++) {
        cl_uint nd = 0;
        if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, 0, NULL, &nd) != CL_SUCCESS || nd == 0) continue;
        cl_device_id *devs = calloc(nd, sizeof *devs);
        found *grown = realloc(all, (size_t)(n + (int)nd) * sizeof *all);
        if (!devs || !grown) {
            free(devs);
            free(grown ? grown : all);
            free(plats);
            return kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "kiln_devices: out of memory");
        }
        all = grown;
        clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, nd, devs, NULL);
        for (cl_uint d = 0; d < nd; d++) {
            found *f = &all[n++];
            memset(f, 0, sizeof *f);
            f->platform = plats[p];
            f->device = devs[d];
            fill_info(plats[p], devs[d], &f->info);
            f->info.platform_index = (int)p;
            f->info.device_index = (int)d;
        }
        free(devs);
    }
    free(plats);
    if (n == 0) {
        free(all);
        return kiln__fail_global(KILN_ERR_NO_DEVICE, "OpenCL platforms exist but offer no device");
    }
    int def = -1;
    for (int i = 0; i < n && def < 0; i++)
        if (all[i].info.type == KILN_DEVICE_GPU) def = i;
    for (int i = 0; i < n && def < 0; i++)
        if (all[i].info.type == KILN_DEVICE_CPU) def = i;
    all[def < 0 ? 0 : def].info.is_default = true;
    *out = all;
    *count = n;
    return KILN_OK;
}

kiln_status kiln_devices(kiln_device_info *out, int cap, int *count) {
    kiln__clear_global();
    if (!count) return kiln__fail_global(KILN_ERR_NULL, "kiln_devices: count is NULL");
    *count = 0;
    if (cap > 0 && !out) return kiln__fail_global(KILN_ERR_NULL, "kiln_devices: out is NULL");
    found *all;
    int n;
    kiln_status s = enumerate(&all, &n);
    if (s != KILN_OK) return s;
    for (int i = 0; i < n && i < cap; i++) out[i] = all[i].info;
    *count = n;
    free(all);
    return KILN_OK;
}

static bool contains_ci(const char *hay, const char *needle) {
    size_t nl = strlen(needle);
    for (; *hay; hay++) {
        size_t i = 0;
        while (i < nl && hay[i] && tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i])) i++;
        if (i == nl) return true;
    }
    return false;
}

static bool parse_pd(const char *s, int *p, int *d) {
    char *end;
    if (!isdigit((unsigned char)s[0])) return false;
    long a = strtol(s, &end, 10);
    if (*end != ':' || !isdigit((unsigned char)end[1])) return false;
    long b = strtol(end + 1, &end, 10);
    if (*end != '\0' || a > 1000000 || b > 1000000) return false;
    *p = (int)a;
    *d = (int)b;
    return true;
}

/* Picks the index in `all` that spec names, or -1. */
static int match_spec(const found *all, int n, const char *spec) {
    if (!spec || !*spec || strcmp(spec, "default") == 0) {
        for (int i = 0; i < n; i++)
            if (all[i].info.is_default) return i;
        return -1;
    }
    static const struct {
        const char *word;
        kiln_device_type type;
    } types[] = {{"gpu", KILN_DEVICE_GPU}, {"cpu", KILN_DEVICE_CPU}, {"accelerator", KILN_DEVICE_ACCELERATOR}};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        if (strcasecmp(spec, types[t].word) != 0) continue;
        for (int i = 0; i < n; i++)
            if (all[i].info.type == types[t].type) return i;
        return -1;
    }
    int p, d;
    if (parse_pd(spec, &p, &d)) {
        for (int i = 0; i < n; i++)
            if (all[i].info.platform_index == p && all[i].info.device_index == d) return i;
        return -1;
    }
    for (int i = 0; i < n; i++) {
        const kiln_device_info *f = &all[i].info;
        if (contains_ci(f->name, spec) || contains_ci(f->vendor, spec) || contains_ci(f->platform_name, spec) ||
            contains_ci(f->platform_vendor, spec))
            return i;
    }
    return -1;
}

static kiln_status not_found(const found *all, int n, const char *spec) {
    char list[4096];
    size_t used = 0;
    for (int i = 0; i < n && used < sizeof list; i++) {
        int w = snprintf(list + used, sizeof list - used, "\n  %d:%d  %s  [%s, %s]", all[i].info.platform_index,
                         all[i].info.device_index, all[i].info.name, all[i].info.platform_name,
                         kiln_device_type_name(all[i].info.type));
        if (w < 0) break;
        used += (size_t)w;
    }
    return kiln__fail_global(KILN_ERR_DEVICE_NOT_FOUND,
                             "no OpenCL device matches '%s' (specs: gpu, cpu, P:D, or part of a "
                             "device or platform name); devices present:%s",
                             spec, list);
}

static kiln_status resolve(const char *spec, found *out) {
    found *all;
    int n;
    kiln_status s = enumerate(&all, &n);
    if (s != KILN_OK) return s;
    int i = match_spec(all, n, spec);
    if (i < 0) {
        s = not_found(all, n, spec ? spec : "");
        free(all);
        return s;
    }
    *out = all[i];
    free(all);
    return KILN_OK;
}

kiln_status kiln_device_find(const char *spec, kiln_device_info *out) {
    kiln__clear_global();
    if (!out) return kiln__fail_global(KILN_ERR_NULL, "kiln_device_find: out is NULL");
    found f;
    kiln_status s = resolve(spec, &f);
    if (s == KILN_OK) *out = f.info;
    return s;
}

/*
 * KILN_DEVICE_LIMITS="type=gpu,wg=64,lmem=16384,cu=1,fp16=0,vec=4": what the context is told
 * about its device, narrowed, so that one machine's tests run the code paths and fallbacks
 * of another (a GPU's layouts, a small work-group or local-memory limit, no cl_khr_fp16,
 * narrow vectors; cu and vec, being hints rather than capabilities, may also be raised). wg
 * and lmem are also enforced at every launch (kiln__launch fails as the
 * narrower device would), so a kernel that assumes more than a device offers is caught on
 * POCL. A limit can only narrow what the device reports; anything else is refused.
 */
static kiln_status apply_limits(kiln_device_info *info, const char *spec) {
    char buf[256];
    if (strlen(spec) >= sizeof buf)
        return kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "KILN_DEVICE_LIMITS: '%.40s...' is too long", spec);
    snprintf(buf, sizeof buf, "%s", spec);
    char *save = NULL;
    for (char *it = strtok_r(buf, ",", &save); it; it = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(it, '=');
        if (!eq || eq == it || !eq[1])
            return kiln__fail_global(KILN_ERR_INVALID_ARGUMENT,
                                     "KILN_DEVICE_LIMITS: '%s' is not key=value (keys: type, wg, lmem, cu, fp16, vec)",
                                     it);
        *eq = '\0';
        const char *key = it, *val = eq + 1;
        if (strcmp(key, "type") == 0) {
            if (strcasecmp(val, "gpu") == 0)
                info->type = KILN_DEVICE_GPU;
            else if (strcasecmp(val, "cpu") == 0)
                info->type = KILN_DEVICE_CPU;
            else if (strcasecmp(val, "accelerator") == 0)
                info->type = KILN_DEVICE_ACCELERATOR;
            else
                return kiln__fail_global(KILN_ERR_INVALID_ARGUMENT,
                                         "KILN_DEVICE_LIMITS: type=%s is not gpu, cpu or accelerator", val);
            continue;
        }
        uint64_t *u64 = NULL;
        uint32_t *u32 = NULL;
        if (strcmp(key, "wg") == 0)
            u64 = &info->max_work_group_size;
        else if (strcmp(key, "lmem") == 0)
            u64 = &info->local_mem_bytes;
        else if (strcmp(key, "cu") == 0)
            u32 = &info->compute_units;
        else if (strcmp(key, "vec") == 0)
            u32 = &info->preferred_vector_width_float;
        else if (strcmp(key, "fp16") == 0) {
            if (strcmp(val, "0") != 0)
                return kiln__fail_global(KILN_ERR_INVALID_ARGUMENT,
                                         "KILN_DEVICE_LIMITS: fp16=%s: only fp16=0 (hide cl_khr_fp16) can be asked",
                                         val);
            info->fp16 = false;
            info->preferred_vector_width_half = 0;
            continue;
        } else
            return kiln__fail_global(KILN_ERR_INVALID_ARGUMENT,
                                     "KILN_DEVICE_LIMITS: unknown key '%s' (keys: type, wg, lmem, cu, fp16, vec)", key);
        char *end = NULL;
        unsigned long long v = strtoull(val, &end, 10);
        if (!end || *end || val[0] == '-')
            return kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "KILN_DEVICE_LIMITS: %s=%s is not a number", key, val);
        uint64_t have = u64 ? *u64 : *u32;
        /* compute units and vector widths are hints that size partitions and pick kernel
         * variants, not capabilities: any count, and any vector width OpenCL has */
        bool hint = u32 != NULL;
        if (u32 == &info->preferred_vector_width_float && (v > 16 || (v & (v - 1)) != 0))
            return kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "KILN_DEVICE_LIMITS: vec=%s is not 1, 2, 4, 8 or 16",
                                     val);
        if (hint && (v == 0 || v > UINT32_MAX))
            return kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "KILN_DEVICE_LIMITS: %s=%s must be at least 1", key,
                                     val);
        if (v == 0 || (!hint && have && v > have))
            return kiln__fail_global(
                KILN_ERR_INVALID_ARGUMENT,
                "KILN_DEVICE_LIMITS: %s=%llu must be at least 1 and at most what '%s' reports (%llu)", key, v,
                info->name, (unsigned long long)have);
        if (u64)
            *u64 = v;
        else
            *u32 = (uint32_t)v;
        if (u32 == &info->preferred_vector_width_float) info->native_vector_width_float = (uint32_t)v;
    }
    info->limited = true;
    return KILN_OK;
}

kiln_status kiln_open(kiln_ctx **out, const char *spec) {
    kiln__clear_global();
    if (!out) return kiln__fail_global(KILN_ERR_NULL, "kiln_open: out is NULL");
    *out = NULL;
    if (!spec) spec = getenv("KILN_DEVICE");
    found f;
    kiln_status s = resolve(spec, &f);
    if (s != KILN_OK) return s;
    const char *limits = getenv("KILN_DEVICE_LIMITS");
    if (limits && *limits && (s = apply_limits(&f.info, limits)) != KILN_OK) return s;

    kiln_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "kiln_open: out of host memory");
    ctx->platform = f.platform;
    ctx->device = f.device;
    ctx->info = f.info;
    cl_int err;
    cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)f.platform, 0};
    ctx->context = clCreateContext(props, 1, &f.device, NULL, NULL, &err);
    if (!ctx->context) {
        free(ctx);
        return kiln__fail_global(kiln__cl_status(err), "kiln_open: clCreateContext failed on '%s': %s (%d)",
                                 f.info.name, kiln__cl_name(err), err);
    }
    ctx->queue = clCreateCommandQueue(ctx->context, f.device, 0, &err);
    if (!ctx->queue) {
        clReleaseContext(ctx->context);
        free(ctx);
        return kiln__fail_global(kiln__cl_status(err), "kiln_open: clCreateCommandQueue failed on '%s': %s (%d)",
                                 f.info.name, kiln__cl_name(err), err);
    }
    /* Work-group size for 1-D launches: 256 suits GPUs, and on POCL, which runs a work-group
     * as one vectorised loop, it amortises the per-group cost. One size for every launch
     * also matters there: POCL compiles a kernel again for each local size it meets. */
    ctx->wg = 256;
    if (ctx->wg > f.info.max_work_group_size && f.info.max_work_group_size > 0)
        ctx->wg = (size_t)f.info.max_work_group_size;

    const char *cache = getenv("KILN_CACHE");
    ctx->disk_cache = !(cache && (strcmp(cache, "off") == 0 || strcmp(cache, "0") == 0));
    if (ctx->disk_cache && kiln_cache_dir(ctx->cache_dir, sizeof ctx->cache_dir) != KILN_OK) ctx->disk_cache = false;
    const char *kdir = getenv("KILN_KERNEL_DIR");
#ifdef KILN_KERNEL_SOURCE_DIR
    if (!kdir || !*kdir) kdir = KILN_KERNEL_SOURCE_DIR;
#endif
    if (kdir) snprintf(ctx->kernel_dir, sizeof ctx->kernel_dir, "%s", kdir);
    ctx->seed = 0;
    ctx->rng_counter = 0;
    ctx->grad_enabled = true;
    const char *num = getenv("KILN_CHECK_NUMERICS");
    ctx->check_numerics = num && *num && strcmp(num, "0") != 0;
    /* CLBlast compiles GEMM with the parameters current at its first call: set them now. */
    kiln__tune_open(ctx, NULL);
    atomic_fetch_add(&open_contexts, 1);
    *out = ctx;
    kiln__log(2, "opened %d:%d %s (%s)", f.info.platform_index, f.info.device_index, f.info.name, f.info.platform_name);
    return KILN_OK;
}

kiln_status kiln__on_close(kiln_ctx *ctx, kiln__close_fn fn) {
    for (int i = 0; i < ctx->nclose_hooks; i++)
        if (ctx->close_hooks[i] == fn) return KILN_OK;
    if (ctx->nclose_hooks == KILN__CLOSE_HOOKS)
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "kiln__on_close: the context holds %d close hooks already",
                          KILN__CLOSE_HOOKS);
    ctx->close_hooks[ctx->nclose_hooks++] = fn;
    return KILN_OK;
}

void kiln_close(kiln_ctx *ctx) {
    if (!ctx) return;
    if (ctx->queue) clFinish(ctx->queue);
    /* the floors above free what they keep on the context (every tensor), newest first */
    while (ctx->nclose_hooks > 0) ctx->close_hooks[--ctx->nclose_hooks](ctx);
    kiln__programs_destroy(ctx);
    kiln__deverr_destroy(ctx);
    kiln__pool_destroy(ctx);
    if (ctx->queue) clReleaseCommandQueue(ctx->queue);
    if (ctx->context) clReleaseContext(ctx->context);
    free(ctx->amp_cache); /* (its tensors went with every other) */
    free(ctx->errmsg);
    free(ctx);
    if (atomic_fetch_sub(&open_contexts, 1) == 1) CLBlastClearCache();
}

const kiln_device_info *kiln_ctx_device(const kiln_ctx *ctx) { return ctx ? &ctx->info : NULL; }

static uint64_t stat(const _Atomic uint64_t *v) { return atomic_load_explicit(v, memory_order_relaxed); }

kiln_status kiln_ctx_stats_get(const kiln_ctx *ctx, kiln_ctx_stats *out) {
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "kiln_ctx_stats_get: ctx is NULL");
    if (!out) return kiln__fail((kiln_ctx *)ctx, KILN_ERR_NULL, "kiln_ctx_stats_get: out is NULL");
    const kiln__stats *s = &ctx->stats;
    *out = (kiln_ctx_stats){0};
    out->launches = stat(&s->launches);
    out->library_calls = stat(&s->library_calls);
    out->blocking_reads = stat(&s->blocking_reads);
    out->blocking_writes = stat(&s->blocking_writes);
    out->finishes = stat(&s->finishes);
    out->event_waits = stat(&s->event_waits);
    out->host_waits = out->blocking_reads + out->blocking_writes + out->finishes + out->event_waits;
    out->bytes_to_host = stat(&s->bytes_to_host);
    out->bytes_to_device = stat(&s->bytes_to_device);
    out->pool_device_allocs = ctx->pool.device_allocs - s->pool_device_allocs0;
    out->pool_reuses = ctx->pool.reuses - s->pool_reuses0;
    return KILN_OK;
}

kiln_status kiln_ctx_stats_reset(kiln_ctx *ctx) {
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "kiln_ctx_stats_reset: ctx is NULL");
    kiln__stats *s = &ctx->stats;
    _Atomic uint64_t *all[] = {&s->launches, &s->library_calls, &s->blocking_reads, &s->blocking_writes,
                               &s->finishes, &s->event_waits,   &s->bytes_to_host,  &s->bytes_to_device};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) atomic_store_explicit(all[i], 0, memory_order_relaxed);
    s->pool_device_allocs0 = ctx->pool.device_allocs;
    s->pool_reuses0 = ctx->pool.reuses;
    return KILN_OK;
}

kiln_status kiln_sync(kiln_ctx *ctx) {
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "kiln_sync: ctx is NULL");
    kiln__deverr_enqueue(ctx);
    cl_int err = clFinish(ctx->queue);
    KILN__COUNT(ctx, finishes, 1);
    if (err != CL_SUCCESS)
        return kiln__fail(ctx, kiln__cl_status(err), "kiln_sync: the device reported %s (%d) on '%s'",
                          kiln__cl_name(err), err, ctx->info.name);
    return kiln__deverr_check(ctx, "kiln_sync");
}

/* ---- non-blocking host copies --------------------------------------------------------- */

kiln_status kiln__read_async(kiln_ctx *ctx, const char *op, cl_mem mem, size_t offset, size_t bytes, void *host,
                             cl_event *ev) {
    *ev = NULL;
    cl_int err = clEnqueueReadBuffer(ctx->queue, mem, CL_FALSE, offset, bytes, host, 0, NULL, ev);
    if (err == CL_SUCCESS) err = clFlush(ctx->queue);
    if (err != CL_SUCCESS) {
        kiln__event_release(*ev);
        *ev = NULL;
        return kiln__fail(ctx, kiln__cl_status(err), "%s: reading %zu bytes back from '%s' failed: %s (%d)", op, bytes,
                          ctx->info.name, kiln__cl_name(err), err);
    }
    KILN__COUNT(ctx, bytes_to_host, bytes);
    return KILN_OK;
}

kiln_status kiln__write_async(kiln_ctx *ctx, const char *op, cl_mem mem, size_t offset, size_t bytes, const void *host,
                              cl_event *ev) {
    *ev = NULL;
    cl_int err = clEnqueueWriteBuffer(ctx->queue, mem, CL_FALSE, offset, bytes, host, 0, NULL, ev);
    if (err == CL_SUCCESS) err = clFlush(ctx->queue);
    if (err != CL_SUCCESS) {
        kiln__event_release(*ev);
        *ev = NULL;
        return kiln__fail(ctx, kiln__cl_status(err), "%s: writing %zu bytes to '%s' failed: %s (%d)", op, bytes,
                          ctx->info.name, kiln__cl_name(err), err);
    }
    KILN__COUNT(ctx, bytes_to_device, bytes);
    return KILN_OK;
}

int kiln__event_poll(kiln_ctx *ctx, const char *op, cl_event ev) {
    cl_int st = CL_COMPLETE;
    cl_int err = clGetEventInfo(ev, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof st, &st, NULL);
    if (err != CL_SUCCESS || st < 0) {
        cl_int code = err != CL_SUCCESS ? err : st;
        return kiln__fail(ctx, kiln__cl_status(code), "%s: a copy between host and '%s' failed: %s (%d)", op,
                          ctx->info.name, kiln__cl_name(code), code);
    }
    return st == CL_COMPLETE;
}

void kiln__event_release(cl_event ev) {
    if (ev) clReleaseEvent(ev);
}

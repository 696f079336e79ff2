/* src/device/program.c - kernel sources, run-time builds, the memory and disk program
 * caches, and kernel launches. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "device_internal.h"
#include "kernels_embedded.h"

/* Bump when the cache file layout or the meaning of a cached binary changes. */
#define CACHE_FORMAT "kiln-program-cache-2"
static const char cache_magic[8] = {'K', 'I', 'L', 'N', 'B', 'I', 'N', '2'};

/* Options every program is built with; ops add -D definitions. */
static const char *base_options = "-cl-std=CL1.2";

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}
#define FNV_BASIS 0xcbf29ce484222325ULL

/* ---- sources ------------------------------------------------------------------------ */

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1))) {
            if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
                free(buf);
                buf = NULL;
            } else {
                buf[n] = '\0';
                *len = (size_t)n;
            }
        }
    }
    fclose(f);
    return buf;
}

/* The source `name`: from the kernel directory when one is set and from_dir, else the
 * copy embedded in the library. */
static char *one_source(kiln_ctx *ctx, const char *name, bool from_dir, size_t *len) {
    if (from_dir && ctx->kernel_dir[0]) {
        char path[1200];
        snprintf(path, sizeof path, "%s/%s.cl", ctx->kernel_dir, name);
        char *s = read_file(path, len);
        if (!s) kiln__fail(ctx, KILN_ERR_IO, "kernel source '%s' cannot be read: %s", path, strerror(errno));
        return s;
    }
    for (size_t i = 0; i < kiln__n_embedded_sources; i++) {
        if (strcmp(kiln__embedded_sources[i].name, name) != 0) continue;
        char *s = malloc(kiln__embedded_sources[i].len + 1);
        if (!s) {
            kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "kernel source '%s': out of host memory", name);
            return NULL;
        }
        memcpy(s, kiln__embedded_sources[i].data, kiln__embedded_sources[i].len);
        s[kiln__embedded_sources[i].len] = '\0';
        *len = kiln__embedded_sources[i].len;
        return s;
    }
    kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "no kernel program named '%s' is built into kiln", name);
    return NULL;
}

char *kiln__program_source(kiln_ctx *ctx, const char *name, size_t *len) {
    /* kiln_shared.h (the structs the host passes) and common.cl (index helpers) go in front
     * of every program: OpenCL's #include cannot see sources that are embedded in the
     * library. kiln_shared.h always comes from the library: the host was compiled against
     * that copy, and one read from a kernel directory could disagree with it. */
    size_t ls = 0, lc = 0, ln = 0;
    char *shared = one_source(ctx, "kiln_shared", false, &ls);
    if (!shared) return NULL;
    char *common = one_source(ctx, "common", true, &lc);
    char *body = common ? one_source(ctx, name, true, &ln) : NULL;
    char *all = body ? malloc(ls + lc + ln + 96 + strlen(name)) : NULL;
    if (body && !all) kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "kernel source '%s': out of host memory", name);
    if (all) {
        int head = sprintf(all, "#line 1 \"kiln_shared.h\"\n%s\n#line 1 \"common.cl\"\n%s\n#line 1 \"%s.cl\"\n", shared,
                           common, name);
        memcpy(all + head, body, ln + 1);
        *len = (size_t)head + ln;
    }
    free(shared);
    free(common);
    free(body);
    return all;
}

/* ---- disk cache --------------------------------------------------------------------- */

kiln_status kiln_cache_dir(char *buf, size_t cap) {
    if (!buf || cap == 0)
        return kiln__fail_global(KILN_ERR_NULL, "kiln_cache_dir: %s", !buf ? "buf is NULL" : "cap is 0");
    buf[0] = '\0';
    const char *off = getenv("KILN_CACHE");
    if (off && (strcmp(off, "off") == 0 || strcmp(off, "0") == 0)) return KILN_OK;
    const char *dir = getenv("KILN_CACHE_DIR");
    int n;
    if (dir && *dir) {
        n = snprintf(buf, cap, "%s", dir);
    } else if ((dir = getenv("XDG_CACHE_HOME")) && *dir) {
        n = snprintf(buf, cap, "%s/kiln", dir);
    } else if ((dir = getenv("HOME")) && *dir) {
        n = snprintf(buf, cap, "%s/.cache/kiln", dir);
    } else {
        return kiln__fail_global(KILN_ERR_IO, "no cache directory: set KILN_CACHE_DIR or HOME");
    }
    if (n < 0 || (size_t)n >= cap) {
        buf[0] = '\0';
        return kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "cache directory path too long");
    }
    return KILN_OK;
}

static bool is_cache_file(const char *name) {
    size_t n = strlen(name);
    return n > 6 && strcmp(name + n - 6, ".clbin") == 0 && strncmp(name, "kiln-", 5) == 0;
}

kiln_status kiln_cache_summary_get(kiln_cache_summary *out) {
    if (!out) return kiln__fail_global(KILN_ERR_NULL, "kiln_cache_summary_get: out is NULL");
    *out = (kiln_cache_summary){0, 0};
    char dir[1024];
    kiln_status s = kiln_cache_dir(dir, sizeof dir);
    if (s != KILN_OK || !dir[0]) return s;
    DIR *d = opendir(dir);
    if (!d) return KILN_OK; /* no cache yet */
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!is_cache_file(e->d_name)) continue;
        char path[1400];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &st) == 0) {
            out->files++;
            out->bytes += (uint64_t)st.st_size;
        }
    }
    closedir(d);
    return KILN_OK;
}

kiln_status kiln_cache_clear(void) {
    char dir[1024];
    kiln_status s = kiln_cache_dir(dir, sizeof dir);
    if (s != KILN_OK || !dir[0]) return s;
    DIR *d = opendir(dir);
    if (!d) return KILN_OK;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!is_cache_file(e->d_name) && !strstr(e->d_name, ".clbin.tmp")) continue;
        char path[1400];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (unlink(path) != 0 && errno != ENOENT) {
            closedir(d);
            return kiln__fail_global(KILN_ERR_IO, "cannot remove '%s': %s", path, strerror(errno));
        }
    }
    closedir(d);
    return KILN_OK;
}

static int mkdir_p(const char *path) {
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return (mkdir(tmp, 0755) != 0 && errno != EEXIST) ? -1 : 0;
}

/* The cache key: everything that can change the binary. Stored whole in the file and
 * compared on load, so a hash collision can never load the wrong program. */
static char *cache_key(kiln_ctx *ctx, const char *options, const char *src, size_t srclen, size_t *keylen) {
    const kiln_device_info *i = &ctx->info;
    int head = snprintf(NULL, 0, "%s\n%s\n%s\n%s\n%s\n%s\n%s\n", CACHE_FORMAT, i->name, i->driver_version,
                        i->platform_version, i->version, i->platform_name, options);
    char *k = malloc((size_t)head + srclen + 1);
    if (!k) return NULL;
    sprintf(k, "%s\n%s\n%s\n%s\n%s\n%s\n%s\n", CACHE_FORMAT, i->name, i->driver_version, i->platform_version,
            i->version, i->platform_name, options);
    memcpy(k + head, src, srclen + 1);
    *keylen = (size_t)head + srclen;
    return k;
}

static void cache_path(kiln_ctx *ctx, const char *name, const char *key, size_t keylen, char *out, size_t cap) {
    snprintf(out, cap, "%s/kiln-%s-%016llx.clbin", ctx->cache_dir, name,
             (unsigned long long)fnv1a(FNV_BASIS, key, keylen));
}

/* Loads the binary for `key` from `path`; NULL on any fault (counted, never reported). */
static unsigned char *cache_load(kiln_ctx *ctx, const char *path, const char *key, size_t keylen, size_t *binlen) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL; /* a plain miss */
    unsigned char *bin = NULL;
    char magic[8];
    uint64_t kl = 0, bl = 0, sum = 0;
    char *k = NULL;
    bool ok = fread(magic, 1, 8, f) == 8 && memcmp(magic, cache_magic, 8) == 0 && fread(&kl, 8, 1, f) == 1 &&
              kl == keylen && (k = malloc(keylen)) && fread(k, 1, keylen, f) == keylen && memcmp(k, key, keylen) == 0 &&
              fread(&bl, 8, 1, f) == 1 && bl > 0 && bl < ((uint64_t)1 << 32) && (bin = malloc(bl)) &&
              fread(bin, 1, bl, f) == bl && fread(&sum, 8, 1, f) == 1 && sum == fnv1a(FNV_BASIS, bin, bl) &&
              fgetc(f) == EOF;
    fclose(f);
    free(k);
    if (!ok) {
        free(bin);
        ctx->cache.disk_faults++;
        return NULL;
    }
    *binlen = (size_t)bl;
    return bin;
}

/* Writes to a temporary file and renames it into place, so a reader never sees half a
 * file. Failures are silent: the cache is an optimisation. */
static void cache_store(kiln_ctx *ctx, const char *path, const char *key, size_t keylen, const unsigned char *bin,
                        size_t binlen) {
    if (mkdir_p(ctx->cache_dir) != 0) return;
    char tmp[1500];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%p", path, (long)getpid(), (void *)ctx);
    FILE *f = fopen(tmp, "wb");
    if (!f) return;
    uint64_t kl = keylen, bl = binlen, sum = fnv1a(FNV_BASIS, bin, binlen);
    bool ok = fwrite(cache_magic, 1, 8, f) == 8 && fwrite(&kl, 8, 1, f) == 1 && fwrite(key, 1, keylen, f) == keylen &&
              fwrite(&bl, 8, 1, f) == 1 && fwrite(bin, 1, binlen, f) == binlen && fwrite(&sum, 8, 1, f) == 1;
    ok = (fflush(f) == 0) && ok;
    ok = (fclose(f) == 0) && ok;
    if (ok && rename(tmp, path) == 0) {
        ctx->cache.disk_writes++;
        return;
    }
    unlink(tmp);
}

/* ---- building ----------------------------------------------------------------------- */

static char *build_log(kiln_ctx *ctx, cl_program p) {
    size_t n = 0;
    clGetProgramBuildInfo(p, ctx->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &n);
    char *log = malloc(n + 1);
    if (!log) return NULL;
    log[0] = '\0';
    clGetProgramBuildInfo(p, ctx->device, CL_PROGRAM_BUILD_LOG, n, log, NULL);
    log[n] = '\0';
    return log;
}

static cl_program build_program(kiln_ctx *ctx, const char *name, const char *options) {
    size_t srclen = 0;
    char *src = kiln__program_source(ctx, name, &srclen);
    if (!src) return NULL;
    double t0 = kiln__now_ms();
    size_t keylen = 0;
    char *key = ctx->disk_cache ? cache_key(ctx, options, src, srclen, &keylen) : NULL;
    char path[1400];
    cl_int err;
    cl_program prog = NULL;

    if (key) {
        cache_path(ctx, name, key, keylen, path, sizeof path);
        size_t binlen = 0;
        unsigned char *bin = cache_load(ctx, path, key, keylen, &binlen);
        if (bin) {
            const unsigned char *bins[1] = {bin};
            cl_int status;
            prog = clCreateProgramWithBinary(ctx->context, 1, &ctx->device, &binlen, bins, &status, &err);
            if (prog && clBuildProgram(prog, 1, &ctx->device, options, NULL, NULL) != CL_SUCCESS) {
                clReleaseProgram(prog);
                prog = NULL;
            }
            if (prog)
                ctx->cache.disk_hits++;
            else
                ctx->cache.disk_faults++;
            free(bin);
        }
    }
    if (!prog) {
        const char *srcs[1] = {src};
        prog = clCreateProgramWithSource(ctx->context, 1, srcs, &srclen, &err);
        if (!prog) {
            kiln__fail(ctx, kiln__cl_status(err), "program '%s': clCreateProgramWithSource failed on '%s': %s (%d)",
                       name, ctx->info.name, kiln__cl_name(err), err);
            goto out;
        }
        err = clBuildProgram(prog, 1, &ctx->device, options, NULL, NULL);
        ctx->cache.builds++;
        if (err != CL_SUCCESS) {
            char *log = build_log(ctx, prog);
            kiln__fail(ctx, KILN_ERR_BUILD,
                       "program '%s' failed to build on '%s' (%s) with options '%s': %s (%d)\n"
                       "build log:\n%s",
                       name, ctx->info.name, ctx->info.platform_name, options, kiln__cl_name(err), err,
                       log ? log : "(no log)");
            free(log);
            clReleaseProgram(prog);
            prog = NULL;
            goto out;
        }
        if (key) {
            size_t binlen = 0;
            if (clGetProgramInfo(prog, CL_PROGRAM_BINARY_SIZES, sizeof binlen, &binlen, NULL) == CL_SUCCESS &&
                binlen > 0) {
                unsigned char *bin = malloc(binlen);
                unsigned char *bins[1] = {bin};
                if (bin && clGetProgramInfo(prog, CL_PROGRAM_BINARIES, sizeof bins, bins, NULL) == CL_SUCCESS)
                    cache_store(ctx, path, key, keylen, bin, binlen);
                free(bin);
            }
        }
    }
out:
    ctx->cache.build_ms += kiln__now_ms() - t0;
    free(key);
    free(src);
    return prog;
}

/* Whether a program's stored options (base_options, then " " and the caller's options when
 * there are any) are those of `options`. Compared in place, not formatted first: every
 * launch looks its kernel up. */
static bool options_match(const char *stored, const char *options) {
    size_t bl = strlen(base_options);
    if (strncmp(stored, base_options, bl) != 0) return false;
    stored += bl;
    if (!options || !*options) return *stored == '\0';
    return *stored == ' ' && strcmp(stored + 1, options) == 0;
}

static kiln__kernel_entry *find_kernel(kiln_ctx *ctx, const char *program, const char *options, const char *kernel) {
    kiln__program *p = ctx->programs;
    while (p && !(strcmp(p->name, program) == 0 && options_match(p->options, options))) p = p->next;
    if (p) {
        ctx->cache.memory_hits++;
    } else {
        char opts[1024];
        int n =
            snprintf(opts, sizeof opts, "%s%s%s", base_options, options && *options ? " " : "", options ? options : "");
        if (n < 0 || (size_t)n >= sizeof opts) {
            kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "program '%s': build options of %d characters (at most %zu)",
                       program, n, sizeof opts - 1);
            return NULL;
        }
        cl_program prog = build_program(ctx, program, opts);
        if (!prog) return NULL;
        p = calloc(1, sizeof *p);
        if (p) p->name = strdup(program);
        if (p) p->options = strdup(opts);
        if (!p || !p->name || !p->options) {
            if (p) free(p->name);
            free(p);
            clReleaseProgram(prog);
            kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "program '%s': out of host memory", program);
            return NULL;
        }
        p->program = prog;
        p->next = ctx->programs;
        ctx->programs = p;
    }
    for (size_t i = 0; i < p->nkernels; i++)
        if (strcmp(p->kernels[i].name, kernel) == 0) return &p->kernels[i];
    cl_int err;
    cl_kernel k = clCreateKernel(p->program, kernel, &err);
    if (!k) {
        kiln__fail(ctx, kiln__cl_status(err), "kernel '%s' of program '%s': clCreateKernel failed on '%s': %s (%d)",
                   kernel, program, ctx->info.name, kiln__cl_name(err), err);
        return NULL;
    }
    kiln__kernel_entry *grown = realloc(p->kernels, (p->nkernels + 1) * sizeof *grown);
    if (!grown) {
        clReleaseKernel(k);
        kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "kernel '%s': out of host memory", kernel);
        return NULL;
    }
    p->kernels = grown;
    kiln__kernel_entry *e = &p->kernels[p->nkernels++];
    snprintf(e->name, sizeof e->name, "%s", kernel);
    e->kernel = k;
    /* A kernel that needs many registers may allow less than the device's maximum. */
    size_t kw = 0;
    e->wg = ctx->wg;
    if (clGetKernelWorkGroupInfo(k, ctx->device, CL_KERNEL_WORK_GROUP_SIZE, sizeof kw, &kw, NULL) == CL_SUCCESS &&
        kw > 0 && kw < e->wg) {
        size_t p2 = 1;
        while (p2 * 2 <= kw) p2 *= 2;
        e->wg = p2;
    }
    return e;
}

cl_kernel kiln__kernel(kiln_ctx *ctx, const char *program, const char *options, const char *kernel) {
    kiln__kernel_entry *e = find_kernel(ctx, program, options, kernel);
    return e ? e->kernel : NULL;
}

void kiln__programs_destroy(kiln_ctx *ctx) {
    while (ctx->programs) {
        kiln__program *p = ctx->programs;
        ctx->programs = p->next;
        for (size_t i = 0; i < p->nkernels; i++) clReleaseKernel(p->kernels[i].kernel);
        free(p->kernels);
        clReleaseProgram(p->program);
        free(p->name);
        free(p->options);
        free(p);
    }
}

kiln_status kiln_cache_stats_get(const kiln_ctx *ctx, kiln_cache_stats *out) {
    if (!ctx || !out) return kiln__fail_global(KILN_ERR_NULL, "kiln_cache_stats_get: %s is NULL", !ctx ? "ctx" : "out");
    *out = ctx->cache;
    return KILN_OK;
}

/* ---- launching ---------------------------------------------------------------------- */

size_t kiln__wg_size(const kiln_ctx *ctx) { return ctx->wg; }

kiln_status kiln__tree_wg(kiln_ctx *ctx, const char *program, const char *options, const char *kernel, size_t cap,
                          size_t *wg) {
    kiln__kernel_entry *e = find_kernel(ctx, program, options, kernel);
    if (!e) return ctx->err;
    size_t w = e->wg; /* the context's size, or what the kernel allows when less (find_kernel asked once) */
    if (cap && w > cap) w = cap;
    size_t p = 1;
    while (p <= w / 2) p *= 2;
    *wg = p;
    return KILN_OK;
}

static kiln_status set_args(kiln_ctx *ctx, const char *op, const char *kname, cl_kernel k, size_t nargs,
                            const kiln__karg *args) {
    for (size_t i = 0; i < nargs; i++) {
        cl_int err = clSetKernelArg(k, (cl_uint)i, args[i].size, args[i].ptr);
        if (err != CL_SUCCESS)
            return kiln__fail(ctx, kiln__cl_status(err), "%s: setting argument %zu of kernel '%s' failed: %s (%d)", op,
                              i, kname, kiln__cl_name(err), err);
    }
    return KILN_OK;
}

/* Under KILN_DEVICE_LIMITS (src/device/device.c), refuses what the narrower device would:
 * a work-group larger than its maximum, or more local memory than it has. */
static kiln_status check_limits(kiln_ctx *ctx, const char *op, const char *kname, cl_kernel k, cl_uint dims,
                                const size_t *local) {
    size_t items = 1;
    for (cl_uint d = 0; local && d < dims; d++) items *= local[d];
    if (ctx->info.max_work_group_size && items > ctx->info.max_work_group_size)
        return kiln__fail(ctx, KILN_ERR_OPENCL,
                          "%s: kernel '%s' asks for work-groups of %zu items, more than the %llu the device allows "
                          "(KILN_DEVICE_LIMITS)",
                          op, kname, items, (unsigned long long)ctx->info.max_work_group_size);
    cl_ulong lmem = 0;
    if (clGetKernelWorkGroupInfo(k, ctx->device, CL_KERNEL_LOCAL_MEM_SIZE, sizeof lmem, &lmem, NULL) == CL_SUCCESS &&
        lmem > ctx->info.local_mem_bytes)
        return kiln__fail(ctx, KILN_ERR_OPENCL,
                          "%s: kernel '%s' needs %llu bytes of local memory, more than the %llu the device has "
                          "(KILN_DEVICE_LIMITS)",
                          op, kname, (unsigned long long)lmem, (unsigned long long)ctx->info.local_mem_bytes);
    return KILN_OK;
}

static kiln_status enqueue(kiln_ctx *ctx, const char *op, const char *kname, cl_kernel k, cl_uint dims,
                           const size_t *global, const size_t *local) {
    if (ctx->info.limited) {
        kiln_status s = check_limits(ctx, op, kname, k, dims, local);
        if (s != KILN_OK) return s;
    }
    cl_int err = clEnqueueNDRangeKernel(ctx->queue, k, dims, NULL, global, local, 0, NULL, NULL);
    KILN__COUNT(ctx, launches, 1);
    if (err != CL_SUCCESS)
        return kiln__fail(ctx, kiln__cl_status(err), "%s: launching kernel '%s' on '%s' failed: %s (%d)", op, kname,
                          ctx->info.name, kiln__cl_name(err), err);
    return KILN_OK;
}

/* The least work-group KILN__SPREAD makes: POCL packs up to 16 of a group's work-items into
 * the lanes of a vector */
#define SPREAD_MIN 16

size_t kiln__spread_local(size_t wg, size_t global, size_t units) {
    /* A device runs a launch's work-groups in parallel, one compute unit each (a POCL worker
     * thread on a CPU): 7 groups on 2 units leave one unit idle for an eighth of the launch,
     * on 16 units 9 units idle throughout. Halving the group until each unit has several
     * groups evens out their ends. */
    size_t target = KILN__SPREAD_GROUPS * (units ? units : 1);
    while (wg / 2 >= SPREAD_MIN && (global + wg - 1) / wg < target) wg /= 2;
    return wg;
}

kiln_status kiln__launch(kiln_ctx *ctx, const char *op, const char *program, const char *options, const char *kernel,
                         size_t nargs, const kiln__karg *args, size_t global, size_t local) {
    kiln__kernel_entry *e = find_kernel(ctx, program, options, kernel);
    if (!e) return ctx->err;
    cl_kernel k = e->kernel;
    kiln_status s = set_args(ctx, op, kernel, k, nargs, args);
    if (s != KILN_OK) return s;
    if (global == 0) return KILN_OK;
    if (local == KILN__SPREAD)
        local = ctx->info.type == KILN_DEVICE_CPU ? kiln__spread_local(e->wg, global, ctx->info.compute_units) : e->wg;
    else if (local == 0)
        local = e->wg;
    size_t g = (global + local - 1) / local * local;
    return enqueue(ctx, op, kernel, k, 1, &g, &local);
}

kiln_status kiln__launch2(kiln_ctx *ctx, const char *op, const char *program, const char *options, const char *kernel,
                          size_t nargs, const kiln__karg *args, const size_t global[2], const size_t local[2]) {
    cl_kernel k = kiln__kernel(ctx, program, options, kernel);
    if (!k) return ctx->err;
    kiln_status s = set_args(ctx, op, kernel, k, nargs, args);
    if (s != KILN_OK) return s;
    if (global[0] == 0 || global[1] == 0) return KILN_OK;
    return enqueue(ctx, op, kernel, k, 2, global, local);
}

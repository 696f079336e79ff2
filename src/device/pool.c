/* src/device/pool.c - the size-bucketed caching allocator of device buffers. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device_internal.h"

/* KILN_MEMCHECK=1: buffers for device memory checkers (scripts/test --oclgrind): each of
 * exactly the size asked for, so an access past the end of a tensor is outside its buffer
 * (a bucket would hide it); written once with zeros when created, so that a checker that
 * tracks initialisation from host writes (Oclgrind 21.10 keeps the state of a released
 * buffer for the next one it creates) starts each buffer from its true size; released to
 * the device when freed instead of cached. Read once per process. */
static bool memcheck(void) {
    static atomic_int v = -1;
    int x = atomic_load(&v);
    if (x < 0) {
        const char *e = getenv("KILN_MEMCHECK");
        x = e && *e && strcmp(e, "0") != 0;
        atomic_store(&v, x);
    }
    return x;
}

size_t kiln__pool_bucket(size_t bytes) {
    /* Four buckets per power of two: at most 25% waste, and a training step's repeated
     * shapes land on the same buckets so their buffers are reused. */
    if (bytes <= 256) return 256;
    size_t p = 1;
    while (p <= bytes / 2) p <<= 1; /* highest power of two <= bytes */
    size_t step = p / 4;
    return (bytes + step - 1) / step * step;
}

void kiln_pool_trim(kiln_ctx *ctx) {
    if (!ctx) return;
    kiln__pool *p = &ctx->pool;
    for (size_t i = 0; i < p->nfree; i++) clReleaseMemObject(p->free[i].mem);
    p->nfree = 0;
    p->cached = 0;
}

void kiln_pool_set_limit(kiln_ctx *ctx, uint64_t bytes) {
    if (ctx) ctx->pool.limit = bytes;
}

void kiln__pool_fail_after(kiln_ctx *ctx, int64_t nth) {
    if (ctx) ctx->pool.fail_countdown = nth;
}

kiln_status kiln_pool_stats_get(const kiln_ctx *ctx, kiln_pool_stats *out) {
    if (!ctx || !out) return kiln__fail_global(KILN_ERR_NULL, "kiln_pool_stats_get: %s is NULL", !ctx ? "ctx" : "out");
    const kiln__pool *p = &ctx->pool;
    *out = (kiln_pool_stats){p->in_use, p->cached, p->peak, p->limit, p->allocs, p->device_allocs, p->reuses};
    return KILN_OK;
}

static void mark_used(kiln__pool *p, size_t bytes) {
    p->in_use += bytes;
    if (p->in_use > p->peak) p->peak = p->in_use;
}

static kiln_status oom(kiln_ctx *ctx, const char *op, size_t bytes, const char *why) {
    const kiln__pool *p = &ctx->pool;
    char limit[64] = "none";
    if (p->limit) snprintf(limit, sizeof limit, "%llu", (unsigned long long)p->limit);
    return kiln__fail(ctx, KILN_ERR_OUT_OF_MEMORY,
                      "%s: cannot allocate %zu bytes on '%s' (%s); device memory %llu bytes, "
                      "max single allocation %llu bytes, pool in use %llu bytes, pool limit %s",
                      op, bytes, ctx->info.name, why, (unsigned long long)ctx->info.global_mem_bytes,
                      (unsigned long long)ctx->info.max_alloc_bytes, (unsigned long long)p->in_use, limit);
}

/* One attempt to create a buffer; CL_SUCCESS or the CL error. */
static cl_int try_create(kiln_ctx *ctx, size_t bytes, cl_mem *out) {
    kiln__pool *p = &ctx->pool;
    if (p->limit && p->in_use + p->cached + bytes > p->limit) return CL_MEM_OBJECT_ALLOCATION_FAILURE;
    cl_int err;
    *out = clCreateBuffer(ctx->context, CL_MEM_READ_WRITE, bytes, NULL, &err);
    if (*out && memcheck()) {
        void *zeros = calloc(1, bytes);
        err = zeros ? clEnqueueWriteBuffer(ctx->queue, *out, CL_TRUE, 0, bytes, zeros, 0, NULL, NULL)
                    : CL_OUT_OF_HOST_MEMORY;
        if (zeros) KILN__COUNT(ctx, blocking_writes, 1), KILN__COUNT(ctx, bytes_to_device, bytes);
        free(zeros);
        if (err != CL_SUCCESS) {
            clReleaseMemObject(*out);
            *out = NULL;
        }
    }
    return *out ? CL_SUCCESS : err;
}

cl_mem kiln__pool_alloc(kiln_ctx *ctx, size_t bytes, size_t *got, const char *op) {
    kiln__pool *p = &ctx->pool;
    size_t b = memcheck() ? (bytes ? bytes : 1) : kiln__pool_bucket(bytes ? bytes : 1);
    p->allocs++;
    if (p->fail_countdown > 0 && --p->fail_countdown == 0) {
        oom(ctx, op, b, "injected failure (kiln__pool_fail_after)");
        return NULL;
    }
    for (size_t i = p->nfree; i-- > 0;) {
        if (p->free[i].bytes != b) continue;
        cl_mem m = p->free[i].mem;
        p->free[i] = p->free[--p->nfree];
        p->cached -= b;
        p->reuses++;
        mark_used(p, b);
        *got = b;
        return m;
    }
    if (b > ctx->info.max_alloc_bytes && ctx->info.max_alloc_bytes) {
        oom(ctx, op, b, "larger than the device's max single allocation");
        return NULL;
    }
    cl_mem m = NULL;
    cl_int err = try_create(ctx, b, &m);
    if (err != CL_SUCCESS && kiln__cl_status(err) == KILN_ERR_OUT_OF_MEMORY) {
        kiln_pool_trim(ctx);
        err = try_create(ctx, b, &m);
    }
    if (err != CL_SUCCESS) {
        if (kiln__cl_status(err) == KILN_ERR_OUT_OF_MEMORY) {
            oom(ctx, op, b, kiln__cl_name(err));
        } else {
            kiln__fail(ctx, kiln__cl_status(err), "%s: clCreateBuffer(%zu bytes) failed on '%s': %s (%d)", op, b,
                       ctx->info.name, kiln__cl_name(err), err);
        }
        return NULL;
    }
    p->device_allocs++;
    mark_used(p, b);
    *got = b;
    return m;
}

void kiln__pool_release(kiln_ctx *ctx, cl_mem mem, size_t bucket_bytes) {
    kiln__pool *p = &ctx->pool;
    p->in_use -= bucket_bytes;
    if (memcheck()) {
        clReleaseMemObject(mem);
        return;
    }
    if (p->nfree == p->capfree) {
        size_t cap = p->capfree ? p->capfree * 2 : 64;
        kiln__free_buf *grown = realloc(p->free, cap * sizeof *grown);
        if (!grown) { /* cannot cache it: give it back to the device */
            clReleaseMemObject(mem);
            return;
        }
        p->free = grown;
        p->capfree = cap;
    }
    p->free[p->nfree++] = (kiln__free_buf){mem, bucket_bytes};
    p->cached += bucket_bytes;
}

void kiln__pool_destroy(kiln_ctx *ctx) {
    kiln_pool_trim(ctx);
    free(ctx->pool.free);
    ctx->pool.free = NULL;
    ctx->pool.capfree = 0;
}

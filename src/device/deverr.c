/* src/device/deverr.c - deferred index errors: ops that take indices (cross-entropy and nll
 * labels, embedding, gather and index_select) check them on the device instead of reading
 * them back. A kernel that meets a bad index records it in the context's small error buffer
 * (KILN_ERRBUF_* in cl_kernels/kiln_shared.h; kiln_bad_index in cl_kernels/common.cl) and
 * skips it; the host reads the buffer together with the next read it waits for anyway
 * (kiln_to_host and so kiln_tensor_item, kiln_sync) and fails there with the op's message.
 *
 * Each launch that checks indices registers a "site" first: the op's name, what the
 * indices are ("label", "index"), their shape (to print the position) and the rest of the
 * message. Sites are kept in a ring of KILN__DEVERR_SITES, deduplicated, so a training
 * loop that repeats the same calls reuses the same few. */
#include <stdio.h>
#include <string.h>

#include "device_internal.h"

/* Zeros for the buffer's reset; static so a non-blocking write may read it later. */
static const cl_int errbuf_zero[KILN_ERRBUF_INTS];

static bool same_site(const kiln__deverr_site *a, const kiln__deverr_site *b) {
    return a->ndim == b->ndim &&
           memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)(a->ndim > 0 ? a->ndim : 0)) == 0 &&
           strcmp(a->op, b->op) == 0 && strcmp(a->what, b->what) == 0 && strcmp(a->text, b->text) == 0;
}

kiln_status kiln__deverr_register(kiln_ctx *ctx, const char *op, const char *what, int ndim, const int64_t *shape,
                                  const char *text, cl_mem *buf, cl_int *site) {
    kiln__deverr *d = &ctx->deverr;
    if (!d->mem) {
        cl_int err;
        d->mem = clCreateBuffer(ctx->context, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, sizeof errbuf_zero,
                                (void *)errbuf_zero, &err);
        if (!d->mem)
            return kiln__fail(ctx, kiln__cl_status(err), "%s: creating the index-error buffer failed on '%s': %s (%d)",
                              op, ctx->info.name, kiln__cl_name(err), err);
    }
    kiln__deverr_site s;
    memset(&s, 0, sizeof s);
    snprintf(s.op, sizeof s.op, "%s", op);
    snprintf(s.what, sizeof s.what, "%s", what);
    snprintf(s.text, sizeof s.text, "%s", text);
    s.ndim = ndim > KILN_MAX_DIMS ? KILN_MAX_DIMS : ndim;
    if (s.ndim > 0) memcpy(s.shape, shape, sizeof(int64_t) * (size_t)s.ndim);
    /* the newest sites first: a loop's sites are the last ones registered */
    uint32_t n = d->nsites < KILN__DEVERR_SITES ? d->nsites : KILN__DEVERR_SITES;
    for (uint32_t k = 1; k <= n; k++) {
        uint32_t id = d->nsites - k;
        if (same_site(&d->sites[id % KILN__DEVERR_SITES], &s)) {
            *site = (cl_int)id;
            *buf = d->mem;
            d->pending = true;
            return KILN_OK;
        }
    }
    uint32_t id = d->nsites++;
    d->sites[id % KILN__DEVERR_SITES] = s;
    *site = (cl_int)id;
    *buf = d->mem;
    d->pending = true;
    return KILN_OK;
}

void kiln__deverr_enqueue(kiln_ctx *ctx) {
    kiln__deverr *d = &ctx->deverr;
    if (!d->pending || d->read_enqueued) return;
    cl_int err = clEnqueueReadBuffer(ctx->queue, d->mem, CL_FALSE, 0, sizeof d->host, d->host, 0, NULL, NULL);
    if (err != CL_SUCCESS) return; /* d->pending stays: the next wait reads it */
    KILN__COUNT(ctx, bytes_to_host, sizeof d->host);
    d->pending = false;
    d->read_enqueued = true;
}

/* "[i, j, k]" of flat position pos in shape, or "pos" when the site has no shape. */
static void position_str(const kiln__deverr_site *s, int64_t pos, char *buf, size_t cap) {
    if (s->ndim <= 0) {
        snprintf(buf, cap, "%lld", (long long)pos);
        return;
    }
    int64_t idx[KILN_MAX_DIMS], rem = pos;
    for (int d = s->ndim - 1; d >= 0; d--) {
        idx[d] = s->shape[d] > 0 ? rem % s->shape[d] : 0;
        rem = s->shape[d] > 0 ? rem / s->shape[d] : 0;
    }
    size_t used = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < s->ndim && used < cap; d++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%lld", d ? ", " : "", (long long)idx[d]);
    if (used < cap) snprintf(buf + used, cap - used, "]");
}

kiln_status kiln__deverr_check(kiln_ctx *ctx, const char *where) {
    kiln__deverr *d = &ctx->deverr;
    if (!d->read_enqueued) return KILN_OK;
    d->read_enqueued = false; /* the caller's wait completed the read (an in-order queue) */
    cl_int flag = d->host[KILN_ERRBUF_FLAG];
    if (flag == 0) return KILN_OK;
    cl_int count = d->host[KILN_ERRBUF_COUNT];
    /* clear it for what follows; the zeros are static, so the write need not wait */
    if (clEnqueueWriteBuffer(ctx->queue, d->mem, CL_FALSE, 0, sizeof errbuf_zero, errbuf_zero, 0, NULL, NULL) ==
        CL_SUCCESS)
        KILN__COUNT(ctx, bytes_to_device, sizeof errbuf_zero);
    uint32_t id = (uint32_t)(flag - 1);
    char pos[200], more[96] = "";
    if (count > 1) snprintf(more, sizeof more, "; %d bad indices in all since the last check", (int)count);
    if (id >= d->nsites || d->nsites - id > KILN__DEVERR_SITES)
        return kiln__fail(ctx, KILN_ERR_RANGE,
                          "an op's index %d at position %d is out of range (checked on the device, reported at %s%s)",
                          (int)d->host[KILN_ERRBUF_VALUE], (int)d->host[KILN_ERRBUF_POS], where, more);
    const kiln__deverr_site *s = &d->sites[id % KILN__DEVERR_SITES];
    position_str(s, d->host[KILN_ERRBUF_POS], pos, sizeof pos);
    return kiln__fail(ctx, KILN_ERR_RANGE,
                      "%s: %s %d at position %s %s (checked on the device, reported at %s, the next call that waited "
                      "for it%s)",
                      s->op, s->what, (int)d->host[KILN_ERRBUF_VALUE], pos, s->text, where, more);
}

void kiln__deverr_destroy(kiln_ctx *ctx) {
    if (ctx->deverr.mem) clReleaseMemObject(ctx->deverr.mem);
    ctx->deverr.mem = NULL;
}

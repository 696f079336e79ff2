/* src/data/idx.c - IDX files (raw or gzip) and the file reader the data sources share. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "data_internal.h"

/* ---- reading files ------------------------------------------------------------------ */

bool kiln__data_gz_name(const char *path) {
    size_t n = path ? strlen(path) : 0;
    return n >= 3 && strcmp(path + n - 3, ".gz") == 0;
}

static const char *errno_str(int e, char *buf, size_t cap) {
    /* strerror is not thread-safe; the XSI strerror_r is. */
    if (strerror_r(e, buf, cap) != 0) snprintf(buf, cap, "error %d", e);
    return buf;
}

/* Inflates one or more concatenated gzip members; anything else after them is an error. */
static kiln_status gunzip(const char *op, const char *path, const unsigned char *in, size_t inlen, unsigned char **out,
                          size_t *outlen) {
    /* The last 4 bytes hold the uncompressed size mod 2^32: a good first guess, capped by
     * deflate's best ratio (~1032:1) so a lying trailer cannot make us allocate much. */
    size_t cap = 1 << 16;
    if (inlen >= 18) {
        size_t hint = (size_t)in[inlen - 4] | (size_t)in[inlen - 3] << 8 | (size_t)in[inlen - 2] << 16 |
                      (size_t)in[inlen - 1] << 24;
        size_t most = inlen > SIZE_MAX / 1100 ? SIZE_MAX / 2 : inlen * 1100;
        if (hint + 1 > cap) cap = hint + 1 < most ? hint + 1 : most;
    }
    unsigned char *o = malloc(cap);
    if (!o) return kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: %s: out of host memory", op, path);
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, 15 + 16) != Z_OK) {
        free(o);
        return kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: %s: inflateInit2 failed", op, path);
    }
    size_t ipos = 0, opos = 0;
    kiln_status st = KILN_OK;
    for (;;) {
        if (opos == cap) {
            size_t ncap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
            unsigned char *no = ncap > cap ? realloc(o, ncap) : NULL;
            if (!no) {
                st = kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY,
                                       "%s: %s: out of host memory inflating (%zu bytes so far)", op, path, opos);
                break;
            }
            o = no;
            cap = ncap;
        }
        size_t ain = inlen - ipos, aout = cap - opos;
        zs.next_in = (Bytef *)(uintptr_t)(in + ipos);
        zs.avail_in = ain > UINT_MAX ? UINT_MAX : (uInt)ain;
        zs.next_out = o + opos;
        zs.avail_out = aout > UINT_MAX ? UINT_MAX : (uInt)aout;
        uInt gave_in = zs.avail_in, gave_out = zs.avail_out;
        int r = inflate(&zs, Z_NO_FLUSH);
        ipos += gave_in - zs.avail_in;
        opos += gave_out - zs.avail_out;
        if (r == Z_STREAM_END) {
            if (ipos == inlen) break;
            if (inlen - ipos >= 2 && in[ipos] == 0x1f && in[ipos + 1] == 0x8b) { /* another member */
                inflateReset(&zs);
                continue;
            }
            st = kiln__fail_global(KILN_ERR_CORRUPT, "%s: %s: %zu bytes of trailing data after the gzip stream", op,
                                   path, inlen - ipos);
            break;
        }
        if (r == Z_OK) continue;
        if (r == Z_BUF_ERROR && ipos == inlen && opos < cap) {
            st = kiln__fail_global(KILN_ERR_CORRUPT,
                                   "%s: %s: gzip stream is truncated (input ends after %zu compressed bytes, "
                                   "%zu bytes inflated)",
                                   op, path, inlen, opos);
            break;
        }
        if (r == Z_BUF_ERROR) continue; /* output full: grow */
        if (r == Z_MEM_ERROR) {
            st = kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: %s: out of host memory inflating", op, path);
            break;
        }
        st = kiln__fail_global(KILN_ERR_CORRUPT, "%s: %s: gzip data is corrupt at compressed byte %zu: %s", op, path,
                               ipos, zs.msg ? zs.msg : "inflate failed");
        break;
    }
    inflateEnd(&zs);
    if (st != KILN_OK) {
        free(o);
        return st;
    }
    /* Room for the NUL the callers rely on. */
    if (opos == cap) {
        unsigned char *no = realloc(o, cap + 1);
        if (!no) {
            free(o);
            return kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: %s: out of host memory", op, path);
        }
        o = no;
    }
    o[opos] = 0;
    *out = o;
    *outlen = opos;
    return KILN_OK;
}

kiln_status kiln__data_read_file(const char *op, const char *path, unsigned char **buf, size_t *len, bool *was_gzip) {
    char eb[128];
    *buf = NULL;
    *len = 0;
    if (was_gzip) *was_gzip = false;
    if (!path) return kiln__fail_global(KILN_ERR_NULL, "%s: path is NULL", op);
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        return kiln__fail_global(KILN_ERR_IO, "%s: %s: cannot open: %s", op, path, errno_str(e, eb, sizeof eb));
    }
    struct stat sb;
    size_t cap = 1 << 16;
    if (fstat(fileno(f), &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size >= 0 &&
        (uint64_t)sb.st_size < (uint64_t)SIZE_MAX - 1)
        cap = (size_t)sb.st_size + 1;
    unsigned char *b = malloc(cap);
    size_t n = 0;
    kiln_status st = KILN_OK;
    if (!b)
        st = kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: %s: out of host memory (%zu bytes)", op, path, cap);
    while (st == KILN_OK) {
        if (n == cap) {
            size_t ncap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
            unsigned char *nb = ncap > cap ? realloc(b, ncap) : NULL;
            if (!nb) {
                st = kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: %s: out of host memory", op, path);
                break;
            }
            b = nb;
            cap = ncap;
        }
        size_t got = fread(b + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) {
                int e = errno;
                st = kiln__fail_global(KILN_ERR_IO, "%s: %s: read failed: %s", op, path, errno_str(e, eb, sizeof eb));
            }
            break;
        }
    }
    fclose(f);
    if (st != KILN_OK) {
        free(b);
        return st;
    }
    if (n >= 2 && b[0] == 0x1f && b[1] == 0x8b) {
        unsigned char *o = NULL;
        size_t olen = 0;
        st = gunzip(op, path, b, n, &o, &olen);
        free(b);
        if (st != KILN_OK) return st;
        if (was_gzip) *was_gzip = true;
        *buf = o;
        *len = olen;
        return KILN_OK;
    }
    if (n == cap) {
        unsigned char *nb = realloc(b, cap + 1);
        if (!nb) {
            free(b);
            return kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: %s: out of host memory", op, path);
        }
        b = nb;
    }
    b[n] = 0;
    *buf = b;
    *len = n;
    return KILN_OK;
}

/* ---- IDX ---------------------------------------------------------------------------- */

static size_t type_size(int t) {
    switch (t) {
    case KILN_IDX_U8:
    case KILN_IDX_I8: return 1;
    case KILN_IDX_I16: return 2;
    case KILN_IDX_I32:
    case KILN_IDX_F32: return 4;
    case KILN_IDX_F64: return 8;
    }
    return 0;
}

const char *kiln_idx_type_name(kiln_idx_type type) {
    switch (type) {
    case KILN_IDX_U8: return "u8";
    case KILN_IDX_I8: return "i8";
    case KILN_IDX_I16: return "i16";
    case KILN_IDX_I32: return "i32";
    case KILN_IDX_F32: return "f32";
    case KILN_IDX_F64: return "f64";
    }
    return "invalid";
}

static void dims_str(int ndim, const int64_t *dims, char *buf, size_t cap) {
    size_t p = 0;
    buf[0] = 0;
    for (int d = 0; d < ndim && p < cap; d++) {
        int w = snprintf(buf + p, cap - p, "%s%lld", d ? "x" : "", (long long)dims[d]);
        if (w < 0) break;
        p += (size_t)w;
    }
}

/* Parses buf[0..len). When `owned`, buf is a malloc'ed block this takes over (and frees on
 * failure): the values are converted in place and the block becomes idx->data, so a big
 * file is never held twice. */
static kiln_idx *idx_parse(const char *op, const char *what, unsigned char *buf, size_t len, bool owned) {
    const unsigned char *b = buf;
    char ds[160];
    kiln_status st = KILN_OK;
    kiln_idx *idx = NULL;
    if (len == 0) {
        st = kiln__fail_global(KILN_ERR_CORRUPT, "%s: %s: file is empty", op, what);
        goto fail;
    }
    if (len < 4) {
        st = kiln__fail_global(KILN_ERR_CORRUPT,
                               "%s: %s: truncated header: file is %zu bytes, the IDX magic alone is 4", op, what, len);
        goto fail;
    }
    if (b[0] != 0 || b[1] != 0) {
        st = kiln__fail_global(KILN_ERR_CORRUPT,
                               "%s: %s: wrong magic 0x%02x%02x%02x%02x: an IDX file starts with two zero bytes, a "
                               "type byte and the number of dimensions",
                               op, what, b[0], b[1], b[2], b[3]);
        goto fail;
    }
    int type = b[2], ndim = b[3];
    size_t es = type_size(type);
    if (!es) {
        st = kiln__fail_global(KILN_ERR_CORRUPT,
                               "%s: %s: bad type byte 0x%02x (IDX types: 0x08 u8, 0x09 i8, 0x0B i16, 0x0C i32, 0x0D "
                               "f32, 0x0E f64)",
                               op, what, type);
        goto fail;
    }
    if (ndim < 1 || ndim > KILN_MAX_DIMS) {
        st = kiln__fail_global(KILN_ERR_CORRUPT, "%s: %s: header has ndim %d; kiln reads 1 to %d dimensions", op, what,
                               ndim, KILN_MAX_DIMS);
        goto fail;
    }
    size_t hdr = 4 + 4 * (size_t)ndim;
    if (len < hdr) {
        st = kiln__fail_global(KILN_ERR_CORRUPT,
                               "%s: %s: truncated header: %d dimensions need a %zu-byte header, file has %zu bytes", op,
                               what, ndim, hdr, len);
        goto fail;
    }
    int64_t dims[KILN_MAX_DIMS];
    for (int d = 0; d < ndim; d++) {
        const unsigned char *p = b + 4 + 4 * d;
        dims[d] = (int64_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3]);
    }
    dims_str(ndim, dims, ds, sizeof ds);
    /* The count is checked for overflow before anything is allocated (a dimension of 0
     * makes every product fit). */
    int64_t count = 1;
    bool zero = false;
    for (int d = 0; d < ndim; d++) zero |= dims[d] == 0;
    if (zero)
        count = 0;
    else
        for (int d = 0; d < ndim; d++) {
            if (count > INT64_MAX / dims[d]) {
                st = kiln__fail_global(KILN_ERR_CORRUPT, "%s: %s: header dims %s: the element count overflows int64",
                                       op, what, ds);
                goto fail;
            }
            count *= dims[d];
        }
    if ((uint64_t)count > (uint64_t)INT64_MAX / es || (uint64_t)count * es > (uint64_t)SIZE_MAX - hdr) {
        st = kiln__fail_global(KILN_ERR_CORRUPT, "%s: %s: header dims %s of %s: %lld elements are too many bytes", op,
                               what, ds, kiln_idx_type_name((kiln_idx_type)type), (long long)count);
        goto fail;
    }
    size_t bytes = (size_t)count * es, payload = len - hdr;
    if (payload != bytes) {
        char tail[64];
        if (payload < bytes)
            snprintf(tail, sizeof tail, "truncated");
        else
            snprintf(tail, sizeof tail, "%zu trailing bytes", payload - bytes);
        st = kiln__fail_global(
            KILN_ERR_CORRUPT,
            "%s: %s: header says %s %s = %zu bytes of data, file has %zu after the %zu-byte header (%s)", op, what, ds,
            kiln_idx_type_name((kiln_idx_type)type), bytes, payload, hdr, tail);
        goto fail;
    }
    idx = calloc(1, sizeof *idx);
    if (!idx) {
        st = kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: %s: out of host memory", op, what);
        goto fail;
    }
    idx->type = (kiln_idx_type)type;
    idx->ndim = ndim;
    memcpy(idx->dims, dims, sizeof(int64_t) * (size_t)ndim);
    idx->count = count;
    idx->elem_size = es;
    unsigned char *data;
    if (owned) {
        memmove(buf, buf + hdr, bytes);
        data = bytes ? realloc(buf, bytes) : NULL;
        if (!data) data = buf; /* shrinking failed (or empty): keep the block */
        buf = NULL;
    } else {
        data = malloc(bytes ? bytes : 1);
        if (!data) {
            st = kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: %s: out of host memory (%zu bytes)", op, what,
                                   bytes);
            goto fail;
        }
        memcpy(data, b + hdr, bytes);
    }
    /* Big-endian to host order, whatever the host is. */
    if (es > 1) {
        for (size_t i = 0; i < (size_t)count; i++) {
            unsigned char *p = data + i * es;
            uint64_t v = 0;
            for (size_t k = 0; k < es; k++) v = v << 8 | p[k];
            if (es == 2) {
                uint16_t w = (uint16_t)v;
                memcpy(p, &w, 2);
            } else if (es == 4) {
                uint32_t w = (uint32_t)v;
                memcpy(p, &w, 4);
            } else {
                memcpy(p, &v, 8);
            }
        }
    }
    idx->data = data;
    return idx;
fail:
    (void)st;
    free(idx);
    if (owned) free(buf);
    return NULL;
}

kiln_idx *kiln_idx_parse(const void *buf, size_t len, const char *what) {
    kiln__clear_global();
    if (!what) what = "<memory>";
    if (!buf && len) {
        kiln__fail_global(KILN_ERR_NULL, "kiln_idx_parse: %s: buf is NULL", what);
        return NULL;
    }
    static const unsigned char empty[1];
    return idx_parse("kiln_idx_parse", what, (unsigned char *)(uintptr_t)(buf ? buf : empty), len, false);
}

kiln_idx *kiln_idx_load(const char *path) {
    kiln__clear_global();
    unsigned char *buf;
    size_t len;
    bool gz;
    if (kiln__data_read_file("kiln_idx_load", path, &buf, &len, &gz) != KILN_OK) return NULL;
    kiln_idx *idx = idx_parse("kiln_idx_load", path, buf, len, true);
    if (!idx && !gz && kiln__data_gz_name(path)) {
        char msg[8192];
        snprintf(msg, sizeof msg, "%s", kiln_last_error());
        kiln__fail_global(kiln_last_status(),
                          "%s (the name ends in .gz but the file is not gzip-compressed; it "
                          "was read as raw IDX)",
                          msg);
    }
    return idx;
}

void kiln_idx_free(kiln_idx *idx) {
    if (!idx) return;
    free(idx->data);
    free(idx);
}

double kiln_idx_value(const kiln_idx *idx, int64_t i) {
    if (!idx || i < 0 || i >= idx->count) return NAN;
    const unsigned char *p = (const unsigned char *)idx->data + (size_t)i * idx->elem_size;
    switch (idx->type) {
    case KILN_IDX_U8: return *p;
    case KILN_IDX_I8: return (int8_t)*p;
    case KILN_IDX_I16: {
        int16_t v;
        memcpy(&v, p, 2);
        return v;
    }
    case KILN_IDX_I32: {
        int32_t v;
        memcpy(&v, p, 4);
        return v;
    }
    case KILN_IDX_F32: {
        float v;
        memcpy(&v, p, 4);
        return v;
    }
    case KILN_IDX_F64: {
        double v;
        memcpy(&v, p, 8);
        return v;
    }
    }
    return NAN;
}

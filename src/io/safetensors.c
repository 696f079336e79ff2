/* src/io/safetensors.c - the safetensors format: a strict header parser (every byte of
 * untrusted input is checked: this parser is fuzzed), host conversion of the stored
 * dtypes, and an atomic writer (temporary file, fsync, rename, fsync of the directory). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io_internal.h"

#define MAX_HEADER (100u << 20) /* as the reference implementation: 100 MB */
#define MAX_ENTRIES 65536

/* ---- the JSON header ------------------------------------------------------------------ */

typedef struct jp {
    const char *s, *end;
    const char *err; /* first problem found */
} jp;

static void jws(jp *p) {
    while (p->s < p->end && (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r')) p->s++;
}

static bool jfail(jp *p, const char *why) {
    if (!p->err) p->err = why;
    return false;
}

static bool jlit(jp *p, char c) {
    jws(p);
    if (p->s < p->end && *p->s == c) {
        p->s++;
        return true;
    }
    return false;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A JSON string into a malloc'ed UTF-8 C string (no embedded NULs). */
static char *jstring(jp *p) {
    jws(p);
    if (p->s >= p->end || *p->s != '"') {
        jfail(p, "expected a string");
        return NULL;
    }
    p->s++;
    size_t cap = 32, n = 0;
    char *out = malloc(cap);
    if (!out) {
        jfail(p, "out of host memory");
        return NULL;
    }
    while (p->s < p->end && *p->s != '"') {
        unsigned char c = (unsigned char)*p->s++;
        char buf[4];
        size_t len = 1;
        if (c < 0x20) {
            jfail(p, "control character in a string");
            goto bad;
        }
        if (c == '\\') {
            if (p->s >= p->end) break;
            char e = *p->s++;
            switch (e) {
            case '"': buf[0] = '"'; break;
            case '\\': buf[0] = '\\'; break;
            case '/': buf[0] = '/'; break;
            case 'b': buf[0] = '\b'; break;
            case 'f': buf[0] = '\f'; break;
            case 'n': buf[0] = '\n'; break;
            case 'r': buf[0] = '\r'; break;
            case 't': buf[0] = '\t'; break;
            case 'u': {
                if (p->end - p->s < 4) {
                    jfail(p, "truncated \\u escape");
                    goto bad;
                }
                unsigned v = 0;
                for (int k = 0; k < 4; k++) {
                    int h = hexval(p->s[k]);
                    if (h < 0) {
                        jfail(p, "bad \\u escape");
                        goto bad;
                    }
                    v = v << 4 | (unsigned)h;
                }
                p->s += 4;
                if (v == 0 || (v >= 0xD800 && v <= 0xDFFF)) { /* NUL or a surrogate half */
                    jfail(p, "unsupported \\u escape");
                    goto bad;
                }
                if (v < 0x80)
                    buf[0] = (char)v;
                else if (v < 0x800) {
                    buf[0] = (char)(0xC0 | v >> 6);
                    buf[1] = (char)(0x80 | (v & 0x3F));
                    len = 2;
                } else {
                    buf[0] = (char)(0xE0 | v >> 12);
                    buf[1] = (char)(0x80 | ((v >> 6) & 0x3F));
                    buf[2] = (char)(0x80 | (v & 0x3F));
                    len = 3;
                }
                break;
            }
            default: jfail(p, "bad escape in a string"); goto bad;
            }
        } else {
            buf[0] = (char)c;
        }
        if (n + len + 1 > cap) {
            cap = 2 * cap + len;
            char *m = realloc(out, cap);
            if (!m) {
                jfail(p, "out of host memory");
                goto bad;
            }
            out = m;
        }
        memcpy(out + n, buf, len);
        n += len;
    }
    if (p->s >= p->end) {
        jfail(p, "unterminated string");
        goto bad;
    }
    p->s++;
    out[n] = '\0';
    return out;
bad:
    free(out);
    return NULL;
}

/* A non-negative integer below 2^62. */
static bool juint(jp *p, int64_t *v) {
    jws(p);
    if (p->s >= p->end || *p->s < '0' || *p->s > '9') return jfail(p, "expected a non-negative integer");
    int64_t x = 0;
    const char *first = p->s;
    while (p->s < p->end && *p->s >= '0' && *p->s <= '9') {
        if (x > ((INT64_C(1) << 62) - 10) / 10) return jfail(p, "integer too large");
        x = x * 10 + (*p->s++ - '0');
    }
    if (*first == '0' && p->s - first > 1) return jfail(p, "integer with leading zeros"); /* JSON has none */
    if (p->s < p->end && (*p->s == '.' || *p->s == 'e' || *p->s == 'E')) return jfail(p, "expected an integer");
    *v = x;
    return true;
}

/* [a, b, ...] of at most cap non-negative integers. */
static int juint_array(jp *p, int64_t *v, int cap) {
    if (!jlit(p, '[')) return jfail(p, "expected an array"), -1;
    int n = 0;
    if (jlit(p, ']')) return 0;
    do {
        if (n == cap) return jfail(p, "array too long"), -1;
        if (!juint(p, &v[n++])) return -1;
    } while (jlit(p, ','));
    if (!jlit(p, ']')) return jfail(p, "expected ']'"), -1;
    return n;
}

static const struct {
    const char *name;
    int size;
} dtypes[] = {{"F32", 4}, {"F16", 2}, {"F64", 8}, {"BF16", 2}, {"I64", 8},
              {"I32", 4}, {"I16", 2}, {"I8", 1},  {"U8", 1},   {"BOOL", 1}};

static int dtype_size(const char *name) {
    for (size_t k = 0; k < sizeof dtypes / sizeof dtypes[0]; k++)
        if (strcmp(dtypes[k].name, name) == 0) return dtypes[k].size;
    return 0;
}

void kiln__st_free(kiln_safetensors *f) {
    if (!f) return;
    for (int i = 0; i < f->n; i++) free(f->e[i].name);
    for (int i = 0; i < f->nmeta; i++) {
        free(f->meta[i].key);
        free(f->meta[i].value);
    }
    free(f->e);
    free(f->meta);
    free(f->buf);
    free(f->what);
    free(f);
}

/* {"key": "value", ...} */
static bool parse_meta(jp *p, kiln_safetensors *f) {
    if (!jlit(p, '{')) return jfail(p, "__metadata__ is not an object");
    if (jlit(p, '}')) return true;
    do {
        char *k = jstring(p);
        if (!k) return false;
        if (!jlit(p, ':')) {
            free(k);
            return jfail(p, "expected ':'");
        }
        jws(p);
        if (p->s < p->end && *p->s != '"') {
            free(k);
            return jfail(p, "__metadata__ values must be strings");
        }
        char *v = jstring(p);
        if (!v) {
            free(k);
            return false;
        }
        if (f->nmeta % 16 == 0) {
            kiln__st_meta *m = realloc(f->meta, sizeof *m * (size_t)(f->nmeta + 16));
            if (!m) {
                free(k), free(v);
                return jfail(p, "out of host memory");
            }
            f->meta = m;
        }
        f->meta[f->nmeta].key = k;
        f->meta[f->nmeta++].value = v;
    } while (jlit(p, ','));
    if (!jlit(p, '}')) return jfail(p, "expected '}'");
    return true;
}

/* {"dtype": "F32", "shape": [..], "data_offsets": [b, e]} in any order, each once. */
static bool parse_entry(jp *p, kiln__st_entry *e) {
    if (!jlit(p, '{')) return jfail(p, "a tensor entry is not an object");
    bool have_dtype = false, have_shape = false, have_off = false;
    do {
        char *k = jstring(p);
        if (!k) return false;
        bool ok = jlit(p, ':');
        if (!ok) jfail(p, "expected ':'");
        if (ok && strcmp(k, "dtype") == 0 && !have_dtype) {
            char *d = jstring(p);
            ok = d && strlen(d) < sizeof e->dtype && dtype_size(d) > 0;
            if (ok)
                strcpy(e->dtype, d);
            else
                jfail(p, "unknown dtype");
            free(d);
            have_dtype = true;
        } else if (ok && strcmp(k, "shape") == 0 && !have_shape) {
            int n = juint_array(p, e->shape, KILN_MAX_DIMS);
            ok = n >= 0;
            e->ndim = n;
            have_shape = true;
        } else if (ok && strcmp(k, "data_offsets") == 0 && !have_off) {
            int64_t o[2];
            ok = juint_array(p, o, 2) == 2;
            if (!ok) jfail(p, "data_offsets must hold two integers");
            e->begin = o[0];
            e->end = o[1];
            have_off = true;
        } else if (ok) {
            ok = jfail(p, "unknown or repeated key in a tensor entry");
        }
        free(k);
        if (!ok) return false;
    } while (jlit(p, ','));
    if (!jlit(p, '}')) return jfail(p, "expected '}'");
    if (!have_dtype || !have_shape || !have_off) return jfail(p, "a tensor entry lacks dtype, shape or data_offsets");
    return true;
}

static int by_begin(const void *a, const void *b) {
    const kiln__st_entry *x = *(kiln__st_entry *const *)a, *y = *(kiln__st_entry *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : 0;
}

/* Takes ownership of buf (len bytes). */
static kiln_safetensors *parse_owned(kiln_ctx *ctx, unsigned char *buf, size_t len, const char *what) {
    kiln_safetensors *f = calloc(1, sizeof *f);
    if (!f) {
        free(buf);
        kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", what);
        return NULL;
    }
    f->ctx = ctx;
    f->buf = buf;
    f->len = len;
    f->what = strdup(what);
    const char *why = NULL;
    char detail[256] = "";
    if (len < 8) {
        why = "shorter than the 8-byte header length";
        goto bad;
    }
    uint64_t hl = 0;
    for (int k = 7; k >= 0; k--) hl = hl << 8 | buf[k];
    if (hl < 2 || hl > MAX_HEADER || hl > len - 8) {
        snprintf(detail, sizeof detail, "header length %llu does not fit the file of %zu bytes (or exceeds %u)",
                 (unsigned long long)hl, len, MAX_HEADER);
        why = detail;
        goto bad;
    }
    f->data = buf + 8 + hl;
    f->data_len = len - 8 - (size_t)hl;
    jp p = {(const char *)buf + 8, (const char *)buf + 8 + hl, NULL};
    if (!jlit(&p, '{')) {
        why = "header is not a JSON object";
        goto bad;
    }
    int cap = 0;
    if (!jlit(&p, '}')) {
        do {
            char *name = jstring(&p);
            if (!name) break;
            if (!jlit(&p, ':')) {
                free(name);
                jfail(&p, "expected ':'");
                break;
            }
            if (strcmp(name, "__metadata__") == 0) {
                free(name);
                if (f->have_meta) {
                    jfail(&p, "__metadata__ repeated");
                    break;
                }
                f->have_meta = true;
                if (!parse_meta(&p, f)) break;
                continue;
            }
            if (f->n == MAX_ENTRIES) {
                free(name);
                jfail(&p, "too many tensors");
                break;
            }
            if (f->n == cap) {
                cap = cap ? 2 * cap : 16;
                kiln__st_entry *ne = realloc(f->e, sizeof *ne * (size_t)cap);
                if (!ne) {
                    free(name);
                    jfail(&p, "out of host memory");
                    break;
                }
                f->e = ne;
            }
            kiln__st_entry *e = &f->e[f->n];
            memset(e, 0, sizeof *e);
            e->name = name;
            f->n++;
            if (!parse_entry(&p, e)) break;
        } while (jlit(&p, ','));
        if (!p.err && !jlit(&p, '}')) jfail(&p, "expected ',' or '}'");
    }
    jws(&p);
    while (!p.err && p.s < p.end && *p.s == ' ') p.s++;
    if (!p.err && p.s != p.end) jfail(&p, "bytes after the header object");
    if (p.err) {
        snprintf(detail, sizeof detail, "header JSON: %s at byte %lld", p.err, (long long)(p.s - (const char *)buf));
        why = detail;
        goto bad;
    }
    /* names unique; sizes agree with shapes; ranges in order, contiguous, inside the data */
    kiln__st_entry **order = malloc(sizeof *order * (size_t)(f->n ? f->n : 1));
    if (!order) {
        why = "out of host memory";
        goto bad;
    }
    for (int i = 0; i < f->n; i++) order[i] = &f->e[i];
    for (int i = 0; i < f->n && !why; i++) {
        kiln__st_entry *e = &f->e[i];
        int64_t numel = 1;
        for (int d = 0; d < e->ndim; d++) {
            if (e->shape[d] != 0 && numel > (INT64_C(1) << 40) / e->shape[d]) {
                snprintf(detail, sizeof detail, "tensor '%.100s': shape too large", e->name);
                why = detail;
                break; /* before the product overflows */
            }
            numel *= e->shape[d];
        }
        if (why) break;
        e->numel = numel;
        if (e->end < e->begin || e->end - e->begin != numel * dtype_size(e->dtype)) {
            snprintf(detail, sizeof detail, "tensor '%.100s' (%s, %lld elements) has data_offsets [%lld, %lld]",
                     e->name, e->dtype, (long long)numel, (long long)e->begin, (long long)e->end);
            why = detail;
        }
        for (int j = 0; j < i && !why; j++)
            if (strcmp(f->e[j].name, e->name) == 0) {
                snprintf(detail, sizeof detail, "tensor '%.100s' appears twice", e->name);
                why = detail;
            }
    }
    if (!why) {
        qsort(order, (size_t)f->n, sizeof *order, by_begin);
        int64_t at = 0;
        for (int i = 0; i < f->n && !why; i++) {
            if (order[i]->begin != at) {
                snprintf(detail, sizeof detail,
                         "tensor '%.100s' starts at byte %lld of the data, expected %lld (gap or "
                         "overlap)",
                         order[i]->name, (long long)order[i]->begin, (long long)at);
                why = detail;
            }
            at = order[i]->end;
        }
        if (!why && (uint64_t)at != f->data_len) {
            snprintf(detail, sizeof detail,
                     "the header describes %lld data bytes, the file has %zu (truncated or "
                     "trailing bytes)",
                     (long long)at, f->data_len);
            why = detail;
        }
    }
    free(order);
    if (why) goto bad;
    return f;
bad:
    kiln__fail(ctx, KILN_ERR_CORRUPT, "%s: not a valid safetensors file: %s", what, why);
    kiln__st_free(f);
    return NULL;
}

kiln_safetensors *kiln_safetensors_parse(kiln_ctx *ctx, const void *data, size_t len, const char *what) {
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "kiln_safetensors_parse: ctx is NULL"), NULL;
    if (!data && len) {
        kiln__fail(ctx, KILN_ERR_NULL, "kiln_safetensors_parse: data is NULL");
        return NULL;
    }
    unsigned char *buf = malloc(len ? len : 1);
    if (!buf) {
        kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory for %zu bytes", what ? what : "buffer",
                   len);
        return NULL;
    }
    if (len) memcpy(buf, data, len);
    return parse_owned(ctx, buf, len, what ? what : "buffer");
}

kiln_safetensors *kiln_safetensors_open(kiln_ctx *ctx, const char *path) {
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "kiln_safetensors_open: ctx is NULL"), NULL;
    if (!path) {
        kiln__fail(ctx, KILN_ERR_NULL, "kiln_safetensors_open: path is NULL");
        return NULL;
    }
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        kiln__fail(ctx, KILN_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    if (fstat(fileno(fp), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(fp);
        kiln__fail(ctx, KILN_ERR_IO, "%s: not a regular file", path);
        return NULL;
    }
    size_t len = (size_t)sb.st_size;
    unsigned char *buf = malloc(len ? len : 1);
    if (!buf) {
        fclose(fp);
        kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory for %zu bytes", path, len);
        return NULL;
    }
    size_t got = len ? fread(buf, 1, len, fp) : 0;
    bool err = ferror(fp);
    fclose(fp);
    if (got != len || err) {
        free(buf);
        kiln__fail(ctx, KILN_ERR_IO, "%s: read %zu of %zu bytes", path, got, len);
        return NULL;
    }
    return parse_owned(ctx, buf, len, path);
}

void kiln_safetensors_close(kiln_safetensors *f) { kiln__st_free(f); }
int kiln_safetensors_num_tensors(const kiln_safetensors *f) { return f ? f->n : 0; }
const char *kiln_safetensors_name(const kiln_safetensors *f, int i) {
    return f && i >= 0 && i < f->n ? f->e[i].name : NULL;
}
const char *kiln_safetensors_dtype(const kiln_safetensors *f, int i) {
    return f && i >= 0 && i < f->n ? f->e[i].dtype : NULL;
}
int kiln_safetensors_shape(const kiln_safetensors *f, int i, const int64_t **shape) {
    if (!f || i < 0 || i >= f->n) return -1;
    if (shape) *shape = f->e[i].shape;
    return f->e[i].ndim;
}

int kiln_safetensors_find(const kiln_safetensors *f, const char *name) {
    if (!f || !name) return -1;
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->e[i].name, name) == 0) return i;
    return -1;
}

const char *kiln_safetensors_meta(const kiln_safetensors *f, const char *key) {
    if (!f || !key) return NULL;
    for (int i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta[i].key, key) == 0) return f->meta[i].value;
    return NULL;
}

bool kiln__st_is_float(const kiln__st_entry *e) { return e->dtype[0] == 'F' || strcmp(e->dtype, "BF16") == 0; }

/* Converts entry e to F32 (floats) or I32 (integers) into out (numel elements). */
kiln_status kiln__st_convert(kiln_ctx *ctx, const kiln_safetensors *f, const kiln__st_entry *e, void *out) {
    const unsigned char *src = f->data + e->begin;
    float *of = out;
    int32_t *oi = out;
    for (int64_t k = 0; k < e->numel; k++) {
        const unsigned char *b = src + k * dtype_size(e->dtype);
        uint64_t u = 0;
        int sz = dtype_size(e->dtype);
        for (int j = sz - 1; j >= 0; j--) u = u << 8 | b[j]; /* little-endian */
        if (!strcmp(e->dtype, "F32")) {
            uint32_t w = (uint32_t)u;
            memcpy(&of[k], &w, 4);
        } else if (!strcmp(e->dtype, "F16")) {
            of[k] = kiln_f16_to_f32((uint16_t)u);
        } else if (!strcmp(e->dtype, "BF16")) {
            uint32_t w = (uint32_t)u << 16;
            memcpy(&of[k], &w, 4);
        } else if (!strcmp(e->dtype, "F64")) {
            double d;
            memcpy(&d, &u, 8);
            of[k] = (float)d;
        } else {
            int64_t v;
            if (!strcmp(e->dtype, "I64"))
                memcpy(&v, &u, 8);
            else if (!strcmp(e->dtype, "I32"))
                v = (int32_t)(uint32_t)u;
            else if (!strcmp(e->dtype, "I16"))
                v = (int16_t)(uint16_t)u;
            else if (!strcmp(e->dtype, "I8"))
                v = (int8_t)(uint8_t)u;
            else
                v = (int64_t)u; /* U8, BOOL */
            if (v < INT32_MIN || v > INT32_MAX)
                return kiln__fail(ctx, KILN_ERR_RANGE, "%s: tensor '%s' (%s) holds %lld, outside kiln's i32", f->what,
                                  e->name, e->dtype, (long long)v);
            oi[k] = (int32_t)v;
        }
    }
    return KILN_OK;
}

kiln_tensor *kiln_safetensors_tensor(kiln_safetensors *f, int i) {
    if (!f) return kiln__fail_global(KILN_ERR_NULL, "kiln_safetensors_tensor: file is NULL"), NULL;
    kiln_ctx *ctx = f->ctx;
    if (i < 0 || i >= f->n) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: entry %d of %d", f->what, i, f->n);
        return NULL;
    }
    const kiln__st_entry *e = &f->e[i];
    void *host = malloc((size_t)(e->numel ? e->numel : 1) * 4);
    if (!host) {
        kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory for '%s'", f->what, e->name);
        return NULL;
    }
    kiln_tensor *t = NULL;
    if (kiln__st_convert(ctx, f, e, host) == KILN_OK)
        t = kiln_from_host(ctx, host, kiln__st_is_float(e) ? KILN_F32 : KILN_I32, e->ndim, e->shape);
    free(host);
    return t;
}

kiln_tensor *kiln_safetensors_tensor_as(kiln_safetensors *f, int i, kiln_dtype dtype) {
    if (!f) return kiln__fail_global(KILN_ERR_NULL, "kiln_safetensors_tensor_as: file is NULL"), NULL;
    kiln_ctx *ctx = f->ctx;
    if (i < 0 || i >= f->n) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: entry %d of %d", f->what, i, f->n);
        return NULL;
    }
    const kiln__st_entry *e = &f->e[i];
    bool fl = kiln__st_is_float(e);
    bool want_fl = dtype == KILN_F32 || dtype == KILN_F16 || dtype == KILN_BF16;
    if (fl != want_fl || (!fl && dtype != KILN_I32)) {
        kiln__fail(ctx, KILN_ERR_DTYPE,
                   "%s: tensor '%s' (%s) cannot be read as %s (float entries as f32, f16 or bf16, "
                   "integer entries as i32)",
                   f->what, e->name, e->dtype, kiln_dtype_name(dtype));
        return NULL;
    }
    if (dtype == KILN_F32 || dtype == KILN_I32) return kiln_safetensors_tensor(f, i);
    const char *same = dtype == KILN_F16 ? "F16" : "BF16";
    size_t n = (size_t)(e->numel ? e->numel : 1);
    uint16_t *h = malloc(n * 2);
    float *wide = strcmp(e->dtype, same) != 0 ? malloc(n * 4) : NULL;
    kiln_tensor *t = NULL;
    if (!h || (strcmp(e->dtype, same) != 0 && !wide)) {
        kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory for '%s'", f->what, e->name);
    } else if (!wide) { /* the file's own bits: no rounding */
        memcpy(h, f->data + e->begin, (size_t)e->numel * 2);
        t = kiln_from_host(ctx, h, dtype, e->ndim, e->shape);
    } else if (kiln__st_convert(ctx, f, e, wide) == KILN_OK) { /* exact for F32, F16 and BF16; F64 rounds twice */
        for (int64_t k = 0; k < e->numel; k++)
            h[k] = dtype == KILN_F16 ? kiln_f32_to_f16(wide[k]) : kiln_f32_to_bf16(wide[k]);
        t = kiln_from_host(ctx, h, dtype, e->ndim, e->shape);
    }
    free(h);
    free(wide);
    return t;
}

/* ---- writing ---------------------------------------------------------------------------- */

static int64_t fail_countdown; /* test hook: fail the nth write step (0 = off) */

void kiln__io_fail_after(int64_t nth) { fail_countdown = nth; }

/* True when the test hook fails this step of a save (errno ENOSPC, as a full disk). It is
 * asked before the step runs, so a failed step has no effect (a rename "failing" after it
 * was done would replace the file and report an error). */
static bool injected_failure(void) {
    if (fail_countdown > 0 && --fail_countdown == 0) {
        errno = ENOSPC;
        return true;
    }
    return false;
}

bool kiln__io_injected_failure(void) { return injected_failure(); }

/* JSON string literal of s into buf at *n (cap checked by the caller's sizing). */
static void put_json_str(char *buf, size_t *n, const char *s) {
    buf[(*n)++] = '"';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[(*n)++] = '\\';
            buf[(*n)++] = (char)c;
        } else if (c < 0x20) {
            *n += (size_t)sprintf(buf + *n, "\\u%04x", c);
        } else {
            buf[(*n)++] = (char)c;
        }
    }
    buf[(*n)++] = '"';
}

kiln_status kiln__st_write(kiln_ctx *ctx, const char *path, int n, const kiln__st_out *t, int nmeta,
                           const kiln_meta *meta) {
    /* header size bound: each string may grow 6x when escaped */
    size_t cap = 64;
    for (int i = 0; i < n; i++) cap += 6 * strlen(t[i].name) + 64 + 24 * (size_t)(t[i].ndim + 2);
    for (int i = 0; i < nmeta; i++) cap += 6 * (strlen(meta[i].key) + strlen(meta[i].value)) + 8;
    char *h = malloc(cap + 8);
    if (!h) return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory for the header", path);
    size_t hn = 0;
    h[hn++] = '{';
    if (nmeta) {
        hn += (size_t)sprintf(h + hn, "\"__metadata__\":{");
        for (int i = 0; i < nmeta; i++) {
            if (i) h[hn++] = ',';
            put_json_str(h, &hn, meta[i].key);
            h[hn++] = ':';
            put_json_str(h, &hn, meta[i].value);
        }
        h[hn++] = '}';
    }
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        if (hn > 1) h[hn++] = ',';
        put_json_str(h, &hn, t[i].name);
        const char *dt = t[i].half == KILN_F16 ? "F16" : t[i].half == KILN_BF16 ? "BF16" : t[i].is_int ? "I32" : "F32";
        hn += (size_t)sprintf(h + hn, ":{\"dtype\":\"%s\",\"shape\":[", dt);
        for (int d = 0; d < t[i].ndim; d++)
            hn += (size_t)sprintf(h + hn, "%s%lld", d ? "," : "", (long long)t[i].shape[d]);
        int64_t bytes = t[i].numel * (t[i].half ? 2 : 4);
        hn += (size_t)sprintf(h + hn, "],\"data_offsets\":[%lld,%lld]}", (long long)off, (long long)(off + bytes));
        off += bytes;
    }
    h[hn++] = '}';
    while (hn % 8) h[hn++] = ' '; /* the data starts 8-byte aligned */

    /* temporary file next to the target, so the rename is atomic */
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    if (!tmp) {
        free(h);
        return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", path);
    }
    snprintf(tmp, plen + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        kiln_status s =
            kiln__fail(ctx, KILN_ERR_IO, "%s: cannot create a temporary file next to it: %s", path, strerror(errno));
        free(h), free(tmp);
        return s;
    }
    fchmod(fd, 0644);
    errno = 0;
    FILE *fp = fdopen(fd, "wb");
    bool ok = fp != NULL && !injected_failure();
    unsigned char len8[8];
    for (int k = 0; k < 8; k++) len8[k] = (unsigned char)((uint64_t)hn >> (8 * k));
    ok = ok && !injected_failure() && fwrite(len8, 1, 8, fp) == 8;
    ok = ok && !injected_failure() && fwrite(h, 1, hn, fp) == hn;
    for (int i = 0; ok && i < n; i++) {
        size_t bytes = (size_t)t[i].numel * (t[i].half ? 2 : 4);
        /* little-endian on disk: kiln's hosts are little-endian (checked at build time) */
        ok = !injected_failure() && (bytes == 0 || fwrite(t[i].data, 1, bytes, fp) == bytes);
    }
    ok = ok && !injected_failure() && fflush(fp) == 0;
    ok = ok && !injected_failure() && fsync(fileno(fp)) == 0;
    int saved_errno = ok ? 0 : errno; /* the cause of the first failed step */
    if (fp) {
        if (fclose(fp) != 0 && ok) {
            ok = false;
            saved_errno = errno;
        }
    } else {
        close(fd);
    }
    if (ok && (injected_failure() || rename(tmp, path) != 0)) {
        ok = false;
        saved_errno = errno;
    }
    if (!ok) {
        unlink(tmp);
        kiln_status s = kiln__fail(ctx, KILN_ERR_IO, "%s: write failed (%s); the previous file, if any, is unchanged",
                                   path, strerror(saved_errno ? saved_errno : EIO));
        free(h), free(tmp);
        return s;
    }
    /* make the rename durable */
    char *dir = strdup(path);
    if (dir) {
        char *slash = strrchr(dir, '/');
        if (slash) *slash = '\0';
        int dfd = open(slash ? (*dir ? dir : "/") : ".", O_RDONLY);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
        free(dir);
    }
    free(h), free(tmp);
    return KILN_OK;
}

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian; kiln writes host order");

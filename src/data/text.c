/* src/data/text.c - character (byte) corpora: reading files and the fortunes directory,
 * vocabularies (encode, decode, save as a string), splits by position, and the loader of
 * windows with their next-character targets. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data_internal.h"

/* The xoshiro stream of the random windows (loader.c uses 1..3 for its own). */
enum { STREAM_TEXT_WINDOWS = 4 };

/* The bytes, shared by a text, its split halves and loaders. */
typedef struct text_store {
    atomic_int refs;
    unsigned char *bytes;
    int64_t n;
} text_store;

struct kiln_vocab {
    int n;
    uint8_t chars[256]; /* increasing */
    int16_t id[256];    /* -1: not in the vocabulary */
};

struct kiln_text {
    text_store *st;
    int64_t start, n; /* the characters st->bytes[start .. start + n) */
    kiln_vocab vocab;
    char *name;
};

struct kiln_text_loader {
    kiln_ctx *ctx;
    text_store *st;
    int64_t start, n;
    kiln_vocab vocab;
    kiln_text_loader_opts o;
    int64_t windows, batches; /* per epoch */
    int64_t epoch, batch;     /* the next batch */
    int64_t *starts;          /* batch_size starts of the last batch */
    int64_t last;             /* how many of them */
    int32_t *hx, *hy;         /* host staging of one batch */
};

static void store_unref(text_store *st) {
    if (!st || atomic_fetch_sub(&st->refs, 1) != 1) return;
    free(st->bytes);
    free(st);
}

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* ---- vocabularies ------------------------------------------------------------------- */

static void vocab_build(kiln_vocab *v, const bool present[256]) {
    v->n = 0;
    for (int c = 0; c < 256; c++) {
        v->id[c] = -1;
        if (present[c]) {
            v->id[c] = (int16_t)v->n;
            v->chars[v->n++] = (uint8_t)c;
        }
    }
}

/* "'a' (0x61)" or "0x07" for what does not print. */
static const char *char_str(int c, char *buf, size_t cap) {
    if (c >= 0x20 && c < 0x7f && c != '\'')
        snprintf(buf, cap, "'%c' (0x%02x)", c, c);
    else
        snprintf(buf, cap, "0x%02x", c);
    return buf;
}

kiln_vocab *kiln_vocab_new(const uint8_t *bytes, int n) {
    static const char *op = "kiln_vocab_new";
    kiln__clear_global();
    if (!bytes) return kiln__fail_global(KILN_ERR_NULL, "%s: bytes is NULL", op), NULL;
    if (n < 1 || n > 256)
        return kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "%s: %d characters (1 to 256)", op, n), NULL;
    bool present[256] = {0};
    for (int i = 0; i < n; i++) {
        if (present[bytes[i]]) {
            char cb[24];
            kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "%s: character %s appears twice (at %d)", op,
                              char_str(bytes[i], cb, sizeof cb), i);
            return NULL;
        }
        present[bytes[i]] = true;
    }
    kiln_vocab *v = malloc(sizeof *v);
    if (!v) return kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", op), NULL;
    vocab_build(v, present);
    return v;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

kiln_vocab *kiln_vocab_parse(const char *s, const char *what) {
    static const char *op = "kiln_vocab_parse";
    kiln__clear_global();
    if (!what) what = "<string>";
    if (!s) return kiln__fail_global(KILN_ERR_NULL, "%s: %s: the string is NULL", op, what), NULL;
    size_t len = strlen(s);
    if (len == 0 || len % 2 || len > 512) {
        kiln__fail_global(KILN_ERR_CORRUPT, "%s: %s: %zu hex digits; expected 2 per character, 1 to 256 characters", op,
                          what, len);
        return NULL;
    }
    bool present[256] = {0};
    int prev = -1;
    for (size_t i = 0; i < len; i += 2) {
        int hi = hex_digit(s[i]), lo = hex_digit(s[i + 1]);
        if (hi < 0 || lo < 0) {
            kiln__fail_global(KILN_ERR_CORRUPT, "%s: %s: '%c%c' at offset %zu is not a hex byte", op, what, s[i],
                              s[i + 1], i);
            return NULL;
        }
        int c = hi * 16 + lo;
        if (c <= prev) {
            kiln__fail_global(KILN_ERR_CORRUPT,
                              "%s: %s: byte 0x%02x at offset %zu does not follow 0x%02x in increasing order", op, what,
                              c, i, prev);
            return NULL;
        }
        present[c] = true;
        prev = c;
    }
    kiln_vocab *v = malloc(sizeof *v);
    if (!v) return kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", op), NULL;
    vocab_build(v, present);
    return v;
}

kiln_status kiln_vocab_to_string(const kiln_vocab *v, char *buf, size_t cap) {
    static const char *op = "kiln_vocab_to_string";
    kiln__clear_global();
    if (!v || !buf) return kiln__fail_global(KILN_ERR_NULL, "%s: %s is NULL", op, !v ? "vocab" : "buf");
    size_t need = 2 * (size_t)v->n + 1;
    if (cap < need)
        return kiln__fail_global(KILN_ERR_BUFFER_TOO_SMALL, "%s: %d characters need %zu bytes; buf has %zu", op, v->n,
                                 need, cap);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < v->n; i++) {
        buf[2 * i] = hex[v->chars[i] >> 4];
        buf[2 * i + 1] = hex[v->chars[i] & 15];
    }
    buf[2 * v->n] = 0;
    return KILN_OK;
}

int kiln_vocab_num_chars(const kiln_vocab *v) { return v ? v->n : 0; }

int kiln_vocab_char(const kiln_vocab *v, int id) { return v && id >= 0 && id < v->n ? v->chars[id] : -1; }

int kiln_vocab_id(const kiln_vocab *v, uint8_t c) { return v ? v->id[c] : -1; }

kiln_status kiln_vocab_encode(const kiln_vocab *v, const char *text, size_t len, int32_t *ids) {
    static const char *op = "kiln_vocab_encode";
    kiln__clear_global();
    if (!v || (!text && len) || (!ids && len))
        return kiln__fail_global(KILN_ERR_NULL, "%s: %s is NULL", op, !v ? "vocab" : !text ? "text" : "ids");
    for (size_t i = 0; i < len; i++) {
        int id = v->id[(unsigned char)text[i]];
        if (id < 0) {
            char cb[24];
            return kiln__fail_global(KILN_ERR_RANGE,
                                     "%s: character %s at position %zu of the text is not in the vocabulary of %d "
                                     "characters",
                                     op, char_str((unsigned char)text[i], cb, sizeof cb), i, v->n);
        }
        ids[i] = id;
    }
    return KILN_OK;
}

kiln_status kiln_vocab_decode(const kiln_vocab *v, const int32_t *ids, size_t n, char *text, size_t cap) {
    static const char *op = "kiln_vocab_decode";
    kiln__clear_global();
    if (!v || (!ids && n) || !text)
        return kiln__fail_global(KILN_ERR_NULL, "%s: %s is NULL", op, !v ? "vocab" : !text ? "text" : "ids");
    if (cap < n + 1 || n == SIZE_MAX)
        return kiln__fail_global(KILN_ERR_BUFFER_TOO_SMALL, "%s: %zu ids need %zu bytes with the NUL; text has %zu", op,
                                 n, n + 1, cap);
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= v->n) {
            text[0] = 0;
            return kiln__fail_global(KILN_ERR_RANGE, "%s: id %d at position %zu is outside the vocabulary [0, %d)", op,
                                     (int)ids[i], i, v->n);
        }
        text[i] = (char)v->chars[ids[i]];
    }
    text[n] = 0;
    return KILN_OK;
}

void kiln_vocab_free(kiln_vocab *v) { free(v); }

/* ---- texts -------------------------------------------------------------------------- */

/* A text owning `bytes` (malloc'ed, n > 0; freed on failure) with its vocabulary. */
static kiln_text *text_new(const char *op, unsigned char *bytes, int64_t n, const char *name) {
    kiln_text *t = calloc(1, sizeof *t);
    text_store *st = calloc(1, sizeof *st);
    char *nm = dup_str(name);
    if (!t || !st || !nm) {
        free(t), free(st), free(nm), free(bytes);
        kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: %s: out of host memory", op, name);
        return NULL;
    }
    atomic_init(&st->refs, 1);
    st->bytes = bytes;
    st->n = n;
    bool present[256] = {0};
    for (int64_t i = 0; i < n; i++) present[bytes[i]] = true;
    vocab_build(&t->vocab, present);
    t->st = st;
    t->start = 0;
    t->n = n;
    t->name = nm;
    return t;
}

kiln_text *kiln_text_from_memory(const void *buf, size_t len, const char *what) {
    static const char *op = "kiln_text_from_memory";
    kiln__clear_global();
    if (!what) what = "<memory>";
    if (!buf && len) return kiln__fail_global(KILN_ERR_NULL, "%s: %s: buf is NULL", op, what), NULL;
    if (len == 0) return kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "%s: %s: the text is empty", op, what), NULL;
    if (len > (size_t)INT64_MAX / 2)
        return kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "%s: %s: %zu bytes is too long", op, what, len), NULL;
    unsigned char *b = malloc(len);
    if (!b) return kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: %s: out of host memory", op, what), NULL;
    memcpy(b, buf, len);
    return text_new(op, b, (int64_t)len, what);
}

/* Appends len bytes to *buf (size *n, capacity *cap). */
static bool append(unsigned char **buf, size_t *n, size_t *cap, const void *src, size_t len) {
    if (*n + len > *cap) {
        size_t nc = *cap ? *cap : 4096;
        while (nc < *n + len) nc *= 2;
        unsigned char *nb = realloc(*buf, nc);
        if (!nb) return false;
        *buf = nb;
        *cap = nc;
    }
    if (len) memcpy(*buf + *n, src, len);
    *n += len;
    return true;
}

/* Reads the files in order into one buffer; fortunes: each file ends with a "%" line. */
static kiln_text *load_files(const char *op, int n, const char *const *paths, bool fortunes, const char *name) {
    unsigned char *all = NULL;
    size_t len = 0, cap = 0;
    for (int i = 0; i < n; i++) {
        unsigned char *b = NULL;
        size_t bl = 0;
        if (kiln__data_read_file(op, paths[i], &b, &bl, NULL) != KILN_OK) {
            free(all);
            return NULL;
        }
        bool ok = append(&all, &len, &cap, b, bl);
        if (ok && fortunes && bl > 0) {
            /* the last line is "%" when the file ends "\n%\n" or is just "%\n" */
            bool sep = bl >= 2 && b[bl - 1] == '\n' && b[bl - 2] == '%' && (bl == 2 || b[bl - 3] == '\n');
            if (!sep)
                ok = b[bl - 1] == '\n' ? append(&all, &len, &cap, "%\n", 2) : append(&all, &len, &cap, "\n%\n", 3);
        }
        free(b);
        if (!ok) {
            free(all);
            kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: %s: out of host memory", op, paths[i]);
            return NULL;
        }
    }
    if (len == 0) {
        free(all);
        kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "%s: %s: the corpus is empty (0 bytes)", op, name);
        return NULL;
    }
    return text_new(op, all, (int64_t)len, name);
}

/* "a", "a and b", "a and 4 more files" */
static void files_name(int n, const char *const *paths, char *buf, size_t cap) {
    if (n == 1)
        snprintf(buf, cap, "%s", paths[0]);
    else if (n == 2)
        snprintf(buf, cap, "%s and %s", paths[0], paths[1]);
    else
        snprintf(buf, cap, "%s and %d more files", paths[0], n - 1);
}

kiln_text *kiln_text_load(int n, const char *const *paths) {
    static const char *op = "kiln_text_load";
    kiln__clear_global();
    if (!paths && n) return kiln__fail_global(KILN_ERR_NULL, "%s: paths is NULL", op), NULL;
    if (n < 1) return kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "%s: %d files (at least 1)", op, n), NULL;
    for (int i = 0; i < n; i++)
        if (!paths[i]) return kiln__fail_global(KILN_ERR_NULL, "%s: paths[%d] is NULL", op, i), NULL;
    char name[1200];
    files_name(n, paths, name, sizeof name);
    return load_files(op, n, paths, false, name);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

kiln_text *kiln_text_fortunes(const char *dir) {
    static const char *op = "kiln_text_fortunes";
    kiln__clear_global();
    if (!dir) dir = KILN_FORTUNES_DIR;
    DIR *d = opendir(dir);
    if (!d)
        return kiln__fail_global(KILN_ERR_IO,
                                 "%s: %s: cannot open the directory (Debian's fortunes package installs it)", op, dir),
               NULL;
    char **paths = NULL;
    int n = 0, cap = 0;
    bool oom = false;
    struct dirent *e;
    while (!oom && (e = readdir(d)) != NULL) {
        const char *nm = e->d_name;
        size_t l = strlen(nm);
        if (nm[0] == '.' || (l >= 4 && strcmp(nm + l - 4, ".dat") == 0)) continue;
        char *p = malloc(strlen(dir) + l + 2);
        if (!p) {
            oom = true;
            break;
        }
        sprintf(p, "%s/%s", dir, nm);
        struct stat sb;
        /* lstat: the .u8 names are links to the files themselves */
        if (lstat(p, &sb) != 0 || !S_ISREG(sb.st_mode)) {
            free(p);
            continue;
        }
        if (n == cap) {
            int nc = cap ? cap * 2 : 64;
            char **np = realloc(paths, sizeof *paths * (size_t)nc);
            if (!np) {
                free(p);
                oom = true;
                break;
            }
            paths = np;
            cap = nc;
        }
        paths[n++] = p;
    }
    closedir(d);
    kiln_text *t = NULL;
    if (oom)
        kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: %s: out of host memory", op, dir);
    else if (n == 0)
        kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "%s: %s: no fortune files (regular files other than *.dat)", op,
                          dir);
    else {
        qsort(paths, (size_t)n, sizeof *paths, cmp_str);
        char name[1100];
        snprintf(name, sizeof name, "%s (%d files)", dir, n);
        t = load_files(op, n, (const char *const *)paths, true, name);
    }
    for (int i = 0; i < n; i++) free(paths[i]);
    free(paths);
    return t;
}

/* A view of t's characters [start, start + n) sharing its bytes and vocabulary. */
static kiln_text *text_part(const char *op, const kiln_text *t, int64_t start, int64_t n, const char *suffix) {
    kiln_text *p = calloc(1, sizeof *p);
    char *nm = malloc(strlen(t->name) + strlen(suffix) + 1);
    if (!p || !nm) {
        free(p), free(nm);
        kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", op);
        return NULL;
    }
    sprintf(nm, "%s%s", t->name, suffix);
    atomic_fetch_add(&t->st->refs, 1);
    p->st = t->st;
    p->start = t->start + start;
    p->n = n;
    p->vocab = t->vocab;
    p->name = nm;
    return p;
}

kiln_status kiln_text_split(const kiln_text *t, double val_frac, kiln_text **train, kiln_text **val) {
    static const char *op = "kiln_text_split";
    kiln__clear_global();
    if (train) *train = NULL;
    if (val) *val = NULL;
    if (!t || !train || !val)
        return kiln__fail_global(KILN_ERR_NULL, "%s: %s is NULL", op, !t ? "text" : !train ? "train" : "val");
    if (!(val_frac >= 0 && val_frac <= 1))
        return kiln__fail_global(KILN_ERR_RANGE, "%s: %s: val_frac %g is outside [0, 1]", op, t->name, val_frac);
    int64_t nv = (int64_t)llround(val_frac * (double)t->n);
    if (nv > t->n) nv = t->n;
    kiln_text *tr = text_part(op, t, 0, t->n - nv, " [train]");
    kiln_text *va = tr ? text_part(op, t, t->n - nv, nv, " [validation]") : NULL;
    if (!va) {
        kiln_text_free(tr);
        return KILN_ERR_HOST_OUT_OF_MEMORY;
    }
    *train = tr;
    *val = va;
    return KILN_OK;
}

int64_t kiln_text_num_chars(const kiln_text *t) { return t ? t->n : 0; }

int64_t kiln_text_bytes(const kiln_text *t, const uint8_t **bytes) {
    if (bytes) *bytes = t ? t->st->bytes + t->start : NULL;
    return t ? t->n : 0;
}

const kiln_vocab *kiln_text_vocab(const kiln_text *t) { return t ? &t->vocab : NULL; }

const char *kiln_text_name(const kiln_text *t) { return t ? t->name : ""; }

void kiln_text_free(kiln_text *t) {
    if (!t) return;
    store_unref(t->st);
    free(t->name);
    free(t);
}

/* ---- the window loader -------------------------------------------------------------- */

kiln_text_loader_opts kiln_text_loader_defaults(int64_t seq_len) {
    return (kiln_text_loader_opts){
        .batch_size = 1, .seq_len = seq_len, .random_windows = false, .seed = 0, .drop_last = false};
}

kiln_text_loader *kiln_text_loader_new(kiln_ctx *ctx, const kiln_text *t, const kiln_text_loader_opts *opts) {
    static const char *op = "kiln_text_loader_new";
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "%s: ctx is NULL", op), NULL;
    if (!t) return kiln__fail(ctx, KILN_ERR_NULL, "%s: text is NULL", op), NULL;
    if (!opts)
        return kiln__fail(ctx, KILN_ERR_NULL,
                          "%s: options are NULL (seq_len has no default: start from "
                          "kiln_text_loader_defaults(seq_len))",
                          op),
               NULL;
    kiln_text_loader_opts o = *opts;
    const char *hint = " (start from kiln_text_loader_defaults(seq_len) and change fields)";
    if (o.seq_len < 1 || o.batch_size < 1 || o.batch_size > (INT32_MAX / 2) / o.seq_len) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s: batch_size %lld and seq_len %lld must be positive, with fewer than 2^30 ids per batch%s", op,
                   (long long)o.batch_size, (long long)o.seq_len, o.batch_size == 0 || o.seq_len == 0 ? hint : "");
        return NULL;
    }
    if (t->n < o.seq_len + 1) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s: %s: %lld characters hold no window of seq_len %lld (a window needs seq_len + 1 = %lld: its "
                   "characters and the next one as the last target)",
                   op, t->name, (long long)t->n, (long long)o.seq_len, (long long)o.seq_len + 1);
        return NULL;
    }
    kiln_text_loader *l = calloc(1, sizeof *l);
    size_t bt = (size_t)(o.batch_size * o.seq_len);
    if (l) {
        l->starts = malloc(sizeof(int64_t) * (size_t)o.batch_size);
        l->hx = malloc(sizeof(int32_t) * bt);
        l->hy = malloc(sizeof(int32_t) * bt);
    }
    if (!l || !l->starts || !l->hx || !l->hy) {
        if (l) free(l->starts), free(l->hx), free(l->hy);
        free(l);
        kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory for batches of %lld x %lld", op,
                   (long long)o.batch_size, (long long)o.seq_len);
        return NULL;
    }
    atomic_fetch_add(&t->st->refs, 1);
    l->ctx = ctx;
    l->st = t->st;
    l->start = t->start;
    l->n = t->n;
    l->vocab = t->vocab;
    l->o = o;
    l->windows = (t->n - 1) / o.seq_len;
    l->batches = o.drop_last ? l->windows / o.batch_size : (l->windows + o.batch_size - 1) / o.batch_size;
    return l;
}

bool kiln_text_loader_next(kiln_text_loader *l, kiln_tensor **x, kiln_tensor **y) {
    static const char *op = "kiln_text_loader_next";
    if (x) *x = NULL;
    if (y) *y = NULL;
    if (!l) return kiln__fail_global(KILN_ERR_NULL, "%s: loader is NULL", op), false;
    if (!x || !y) return kiln__fail(l->ctx, KILN_ERR_NULL, "%s: %s is NULL", op, !x ? "x" : "y"), false;
    if (l->batch >= l->batches) {
        l->epoch++;
        l->batch = 0;
        return false;
    }
    const kiln_text_loader_opts *o = &l->o;
    int64_t first = l->batch * o->batch_size, b = l->windows - first;
    if (b > o->batch_size) b = o->batch_size;
    if (o->random_windows) {
        kiln__rng r;
        kiln__rng_init(&r, o->seed, (uint64_t)l->epoch, (uint64_t)l->batch, STREAM_TEXT_WINDOWS);
        for (int64_t i = 0; i < b; i++) l->starts[i] = (int64_t)kiln__rng_below(&r, (uint64_t)(l->n - o->seq_len));
    } else {
        for (int64_t i = 0; i < b; i++) l->starts[i] = (first + i) * o->seq_len;
    }
    const unsigned char *text = l->st->bytes + l->start;
    int64_t T = o->seq_len;
    for (int64_t i = 0; i < b; i++)
        for (int64_t j = 0; j < T; j++) {
            l->hx[i * T + j] = l->vocab.id[text[l->starts[i] + j]];
            l->hy[i * T + j] = l->vocab.id[text[l->starts[i] + j + 1]];
        }
    int64_t shape[2] = {b, T};
    kiln_tensor *tx = kiln_from_host(l->ctx, l->hx, KILN_I32, 2, shape);
    kiln_tensor *ty = tx ? kiln_from_host(l->ctx, l->hy, KILN_I32, 2, shape) : NULL;
    if (!ty) {
        kiln_tensor_free(tx);
        l->last = 0;
        return false;
    }
    l->last = b;
    l->batch++;
    *x = tx;
    *y = ty;
    return true;
}

int64_t kiln_text_loader_num_batches(const kiln_text_loader *l) { return l ? l->batches : 0; }

int64_t kiln_text_loader_epoch(const kiln_text_loader *l) { return l ? l->epoch : 0; }

kiln_status kiln_text_loader_set_epoch(kiln_text_loader *l, int64_t epoch) {
    static const char *op = "kiln_text_loader_set_epoch";
    if (!l) return kiln__fail_global(KILN_ERR_NULL, "%s: loader is NULL", op);
    if (epoch < 0)
        return kiln__fail(l->ctx, KILN_ERR_INVALID_ARGUMENT, "%s: epoch %lld is negative", op, (long long)epoch);
    l->epoch = epoch;
    l->batch = 0;
    l->last = 0;
    return KILN_OK;
}

kiln_status kiln_text_loader_reset(kiln_text_loader *l) {
    if (!l) return kiln__fail_global(KILN_ERR_NULL, "kiln_text_loader_reset: loader is NULL");
    l->batch = 0;
    l->last = 0;
    return KILN_OK;
}

int64_t kiln_text_loader_batch_starts(const kiln_text_loader *l, const int64_t **starts) {
    if (starts) *starts = l ? l->starts : NULL;
    return l ? l->last : 0;
}

void kiln_text_loader_free(kiln_text_loader *l) {
    if (!l) return;
    store_unref(l->st);
    free(l->starts);
    free(l->hx);
    free(l->hy);
    free(l);
}

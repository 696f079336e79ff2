/* src/data/csv.c - CSV tables of numbers. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data_internal.h"

/* A growing array. */
typedef struct vec {
    void *p;
    size_t n, cap, es;
} vec;

static bool vec_push(vec *v, const void *x) {
    if (v->n == v->cap) {
        size_t nc = v->cap ? v->cap * 2 : 64;
        if (nc < v->cap || nc > SIZE_MAX / v->es) return false;
        void *np = realloc(v->p, nc * v->es);
        if (!np) return false;
        v->p = np;
        v->cap = nc;
    }
    memcpy((char *)v->p + v->n * v->es, x, v->es);
    v->n++;
    return true;
}

/* One field of a record: [s, s+len) after unquoting (into the scratch buffer when quoted). */
typedef struct field {
    const char *s;
    size_t len;
    bool quoted;
} field;

typedef struct parser {
    const char *op, *what;
    const unsigned char *b;
    size_t len, pos;
    int64_t line; /* current line (1-based) */
    char delim;
    /* fields of the current record; unquoted text of quoted fields lives in `text` */
    field *f;
    size_t nf, capf;
    char *text;
    size_t ntext, captext;
} parser;

static bool is_space(int c, char delim) { return (c == ' ' || c == '\t') && c != delim; }

static bool text_put(parser *p, char c) {
    if (p->ntext == p->captext) {
        size_t nc = p->captext ? p->captext * 2 : 256;
        char *nt = realloc(p->text, nc);
        if (!nt) return false;
        p->text = nt;
        p->captext = nc;
    }
    p->text[p->ntext++] = c;
    return true;
}

static bool field_put(parser *p, field fl) {
    if (p->nf == p->capf) {
        size_t nc = p->capf ? p->capf * 2 : 16;
        field *nf = realloc(p->f, nc * sizeof *nf);
        if (!nf) return false;
        p->f = nf;
        p->capf = nc;
    }
    p->f[p->nf++] = fl;
    return true;
}

static kiln_status oom(parser *p) {
    return kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: %s: out of host memory at line %lld", p->op, p->what,
                             (long long)p->line);
}

/* Reads one record into p->f. *start_line gets the line it starts on. Returns KILN_OK and
 * sets *got false at the end of the input. Quoted fields keep offsets into p->text until
 * the record is complete (text may move while it grows), then get pointers. */
static kiln_status read_record(parser *p, bool *got, int64_t *start_line) {
    p->nf = 0;
    p->ntext = 0;
    *got = false;
    if (p->pos >= p->len) return KILN_OK;
    *start_line = p->line;
    for (;;) {
        /* one field */
        size_t i = p->pos;
        while (i < p->len && is_space(p->b[i], p->delim)) i++;
        field fl = {0};
        if (i < p->len && p->b[i] == '"') {
            int64_t qline = p->line;
            size_t off = p->ntext;
            i++;
            for (;;) {
                if (i >= p->len)
                    return kiln__fail_global(KILN_ERR_CORRUPT,
                                             "%s: %s: line %lld, column %zu: unterminated quoted field", p->op, p->what,
                                             (long long)qline, p->nf + 1);
                unsigned char c = p->b[i];
                if (c == '"') {
                    if (i + 1 < p->len && p->b[i + 1] == '"') {
                        if (!text_put(p, '"')) return oom(p);
                        i += 2;
                        continue;
                    }
                    i++;
                    break;
                }
                if (c == '\n' || (c == '\r' && !(i + 1 < p->len && p->b[i + 1] == '\n'))) p->line++;
                if (!text_put(p, (char)c)) return oom(p);
                i++;
            }
            while (i < p->len && is_space(p->b[i], p->delim)) i++;
            if (i < p->len && p->b[i] != (unsigned char)p->delim && p->b[i] != '\n' && p->b[i] != '\r')
                return kiln__fail_global(KILN_ERR_CORRUPT,
                                         "%s: %s: line %lld, column %zu: unexpected character after a quoted field",
                                         p->op, p->what, (long long)p->line, p->nf + 1);
            fl.s = (const char *)(uintptr_t)off; /* an offset until the record ends */
            fl.len = p->ntext - off;
            fl.quoted = true;
        } else {
            size_t s = i;
            while (i < p->len && p->b[i] != (unsigned char)p->delim && p->b[i] != '\n' && p->b[i] != '\r') i++;
            size_t e = i;
            while (e > s && is_space(p->b[e - 1], p->delim)) e--;
            fl.s = (const char *)p->b + s;
            fl.len = e - s;
        }
        if (!field_put(p, fl)) return oom(p);
        if (i < p->len && p->b[i] == (unsigned char)p->delim) {
            p->pos = i + 1;
            continue;
        }
        /* end of record */
        if (i < p->len) { /* at "\r\n", "\r" or "\n" */
            if (p->b[i] == '\r' && i + 1 < p->len && p->b[i + 1] == '\n') i++;
            i++;
            p->line++;
        }
        p->pos = i;
        break;
    }
    for (size_t k = 0; k < p->nf; k++)
        if (p->f[k].quoted) p->f[k].s = p->text ? p->text + (uintptr_t)p->f[k].s : "";
    *got = true;
    return KILN_OK;
}

/* "abc" for messages: at most 32 bytes, unprintable ones as '?'. */
static void show(const field *f, char *buf, size_t cap) {
    size_t n = f->len < 32 ? f->len : 32, k = 0;
    for (size_t i = 0; i < n && k + 1 < cap; i++) {
        unsigned char c = (unsigned char)f->s[i];
        buf[k++] = (c >= 32 && c < 127) ? (char)c : '?';
    }
    if (f->len > n && k + 4 < cap) {
        memcpy(buf + k, "...", 3);
        k += 3;
    }
    buf[k] = 0;
}

/* Parses a numeric cell: NUM_BAD when it is not exactly a number, NUM_RANGE when it is one
 * too large for a double (strtod's ERANGE overflow: "1e400" is not read as inf; "inf"
 * itself is a number, and underflow rounds towards 0 as strtod does). strtod runs in the
 * C locale (set by the caller) so a program's LC_NUMERIC cannot change what "1.5" means. */
enum { NUM_OK, NUM_BAD, NUM_RANGE };
static int to_number(const field *f, double *out) {
    char tmp[320];
    if (f->len == 0 || f->len >= sizeof tmp) return NUM_BAD;
    memcpy(tmp, f->s, f->len);
    tmp[f->len] = 0;
    if (strlen(tmp) != f->len) return NUM_BAD; /* a NUL byte inside */
    char *end;
    errno = 0;
    *out = strtod(tmp, &end);
    if (end != tmp + f->len) return NUM_BAD;
    return errno == ERANGE && isinf(*out) ? NUM_RANGE : NUM_OK;
}

kiln_csv_opts kiln_csv_defaults(void) { return (kiln_csv_opts){.delimiter = ',', .header = KILN_CSV_HEADER_AUTO}; }

static bool blank_record(const parser *p) { return p->nf == 1 && p->f[0].len == 0 && !p->f[0].quoted; }

static kiln_csv *csv_parse(const char *op, const char *what, const unsigned char *buf, size_t len,
                           const kiln_csv_opts *opts) {
    kiln_csv_opts o = opts ? *opts : kiln_csv_defaults();
    char delim = o.delimiter;
    if (delim == '"' || delim == '\n' || delim == '\r' || delim == 0) {
        kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "%s: %s: delimiter 0x%02x is not allowed%s", op, what,
                          (unsigned char)delim, delim == 0 ? " (start from kiln_csv_defaults() for ',')" : "");
        return NULL;
    }
    if (o.header != KILN_CSV_HEADER_AUTO && o.header != KILN_CSV_HEADER_YES && o.header != KILN_CSV_HEADER_NO) {
        kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "%s: %s: header option %d is not a kiln_csv_header", op, what,
                          (int)o.header);
        return NULL;
    }
    parser p = {.op = op, .what = what, .b = buf, .len = len, .line = 1, .delim = delim};
    vec data = {.es = sizeof(double)}, lines = {.es = sizeof(int64_t)};
    kiln_csv *csv = calloc(1, sizeof *csv);
    locale_t cloc = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    locale_t old = cloc ? uselocale(cloc) : (locale_t)0;
    kiln_status st = KILN_OK;
    int64_t cols = -1, first_line = 0;
    bool first = true;
    char sb[40];
    if (!csv || !cloc) {
        st = oom(&p);
        goto done;
    }
    for (;;) {
        bool got;
        int64_t line = 0;
        st = read_record(&p, &got, &line);
        if (st != KILN_OK || !got) break;
        if (blank_record(&p)) continue;
        if (first) {
            first = false;
            bool header = o.header == KILN_CSV_HEADER_YES;
            if (o.header == KILN_CSV_HEADER_AUTO) {
                for (size_t k = 0; k < p.nf && !header; k++) {
                    double v;
                    if (p.f[k].len && to_number(&p.f[k], &v) == NUM_BAD) header = true;
                }
            }
            cols = (int64_t)p.nf;
            first_line = line;
            if (header) {
                csv->names = calloc(p.nf, sizeof(char *));
                if (!csv->names) {
                    st = oom(&p);
                    break;
                }
                csv->cols = cols; /* so kiln_csv_free frees the names */
                for (size_t k = 0; k < p.nf; k++) {
                    csv->names[k] = malloc(p.f[k].len + 1);
                    if (!csv->names[k]) {
                        st = oom(&p);
                        break;
                    }
                    if (p.f[k].len) memcpy(csv->names[k], p.f[k].s, p.f[k].len);
                    csv->names[k][p.f[k].len] = 0;
                }
                if (st != KILN_OK) break;
                continue;
            }
        }
        if ((int64_t)p.nf != cols) {
            st = kiln__fail_global(KILN_ERR_CORRUPT, "%s: %s: line %lld has %zu columns, expected %lld (as line %lld)",
                                   op, what, (long long)line, p.nf, (long long)cols, (long long)first_line);
            break;
        }
        for (size_t k = 0; k < p.nf; k++) {
            double v;
            if (p.f[k].len == 0) {
                st = kiln__fail_global(KILN_ERR_CORRUPT, "%s: %s: line %lld, column %zu: empty cell", op, what,
                                       (long long)line, k + 1);
                break;
            }
            int num = to_number(&p.f[k], &v);
            if (num != NUM_OK) {
                show(&p.f[k], sb, sizeof sb);
                st = kiln__fail_global(
                    KILN_ERR_CORRUPT, "%s: %s: line %lld, column %zu: '%s' %s", op, what, (long long)line, k + 1, sb,
                    num == NUM_RANGE ? "is out of range (beyond the largest double)" : "is not a number");
                break;
            }
            if (!vec_push(&data, &v)) {
                st = oom(&p);
                break;
            }
        }
        if (st != KILN_OK) break;
        if (!vec_push(&lines, &line)) {
            st = oom(&p);
            break;
        }
    }
done:
    if (cloc) {
        uselocale(old);
        freelocale(cloc);
    }
    free(p.f);
    free(p.text);
    if (st == KILN_OK && cols < 0)
        st = kiln__fail_global(KILN_ERR_CORRUPT, "%s: %s: no rows (empty or blank input)", op, what);
    if (st != KILN_OK) {
        free(data.p);
        free(lines.p);
        kiln_csv_free(csv);
        return NULL;
    }
    csv->rows = (int64_t)lines.n;
    csv->cols = cols;
    csv->data = data.p ? data.p : malloc(sizeof(double));
    csv->lines = lines.p ? lines.p : malloc(sizeof(int64_t));
    if (!csv->data || !csv->lines) {
        oom(&p);
        kiln_csv_free(csv);
        return NULL;
    }
    return csv;
}

kiln_csv *kiln_csv_parse(const void *buf, size_t len, const char *what, const kiln_csv_opts *opts) {
    kiln__clear_global();
    if (!what) what = "<memory>";
    if (!buf && len) {
        kiln__fail_global(KILN_ERR_NULL, "kiln_csv_parse: %s: buf is NULL", what);
        return NULL;
    }
    return csv_parse("kiln_csv_parse", what, buf ? buf : (const void *)"", len, opts);
}

kiln_csv *kiln_csv_load(const char *path, const kiln_csv_opts *opts) {
    kiln__clear_global();
    unsigned char *buf;
    size_t len;
    if (kiln__data_read_file("kiln_csv_load", path, &buf, &len, NULL) != KILN_OK) return NULL;
    kiln_csv *csv = csv_parse("kiln_csv_load", path, buf, len, opts);
    free(buf);
    return csv;
}

void kiln_csv_free(kiln_csv *csv) {
    if (!csv) return;
    if (csv->names)
        for (int64_t k = 0; k < csv->cols; k++) free(csv->names[k]);
    free(csv->names);
    free(csv->data);
    free(csv->lines);
    free(csv);
}

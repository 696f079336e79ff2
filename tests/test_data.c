/* tests/test_data.c - IDX and CSV readers, datasets, splits and the batching loader.
 *
 * The readers and datasets need no device: their checks run first and on any machine. The
 * loader checks run on every OpenCL device. Malformed inputs are written to a fresh temp
 * directory by the test itself (raw and gzip), and every error is checked for its status
 * and for the pieces of its message a user needs (the file, the line and column, the
 * sizes). References for batch values are computed here in double precision from the
 * dataset's own samples; the only float rounding in the loader is (v * scale - mean) / std,
 * three correctly rounded operations, so normalised values get rtol 4 * 2^-24 and atol
 * 1e-7 (an absolute bound where the result cancels to ~0).
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <unistd.h>
#include <zlib.h>

#include "harness.h"
#include <kiln/data.h>

static char tmpdir[256];

/* ---- helpers -------------------------------------------------------------------------- */

static void path_in(char *buf, size_t cap, const char *name) { snprintf(buf, cap, "%s/%s", tmpdir, name); }

static void write_file(const char *name, const void *data, size_t len) {
    char p[512];
    path_in(p, sizeof p, name);
    FILE *f = fopen(p, "wb");
    if (!f) {
        CHECK(0, "cannot write %s", p);
        return;
    }
    if (len) fwrite(data, 1, len, f);
    fclose(f);
}

static void write_gz(const char *name, const void *data, size_t len) {
    char p[512];
    path_in(p, sizeof p, name);
    gzFile g = gzopen(p, "wb");
    if (!g) {
        CHECK(0, "cannot write %s", p);
        return;
    }
    if (len) gzwrite(g, data, (unsigned)len);
    gzclose(g);
}

static unsigned char *read_whole(const char *p, size_t *len) {
    FILE *f = fopen(p, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    *len = fread(b, 1, (size_t)n, f);
    fclose(f);
    return b;
}

/* An IDX image: header for type/ndim/dims, then `payload` bytes (already big-endian). */
static unsigned char *idx_make(int type, int ndim, const uint32_t *dims, const void *payload, size_t plen,
                               size_t *len) {
    size_t hdr = 4 + 4 * (size_t)ndim;
    unsigned char *b = malloc(hdr + plen + 1);
    b[0] = 0;
    b[1] = 0;
    b[2] = (unsigned char)type;
    b[3] = (unsigned char)ndim;
    for (int d = 0; d < ndim; d++) {
        b[4 + 4 * d] = (unsigned char)(dims[d] >> 24);
        b[5 + 4 * d] = (unsigned char)(dims[d] >> 16);
        b[6 + 4 * d] = (unsigned char)(dims[d] >> 8);
        b[7 + 4 * d] = (unsigned char)dims[d];
    }
    if (plen) memcpy(b + hdr, payload, plen);
    *len = hdr + plen;
    return b;
}

/* Checks that a call failed with `status` and that kiln_last_error() holds each of the
 * given pieces. */
static void expect_global(const char *what, bool failed, kiln_status status, kiln_status want, const char *a,
                          const char *b, const char *c) {
    const char *m = kiln_last_error();
    CHECK(failed, "%s: did not fail", what);
    CHECK(status == want, "%s: status %s, expected %s (%s)", what, kiln_status_name(status), kiln_status_name(want), m);
    const char *parts[3] = {a, b, c};
    for (int i = 0; i < 3; i++)
        if (parts[i]) CHECK(strstr(m, parts[i]) != NULL, "%s: message '%s' lacks '%s'", what, m, parts[i]);
}

static uint64_t fnv1a(const unsigned char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* ---- IDX: real files ------------------------------------------------------------------ */

#define FM KILN_FASHION_MNIST_DIR

static bool have_fashion(void) { return access(FM "/train-images-idx3-ubyte.gz", R_OK) == 0; }

static void test_idx_real(void) {
    if (!have_fashion()) {
        fprintf(stderr, "Fashion-MNIST not installed in %s: real-data checks skipped\n", FM);
        return;
    }
    struct {
        const char *file;
        int ndim;
        int64_t d0;
    } files[] = {{FM "/train-images-idx3-ubyte.gz", 3, 60000},
                 {FM "/train-labels-idx1-ubyte.gz", 1, 60000},
                 {FM "/t10k-images-idx3-ubyte.gz", 3, 10000},
                 {FM "/t10k-labels-idx1-ubyte.gz", 1, 10000}};
    for (int f = 0; f < 4; f++) {
        kiln_idx *x = kiln_idx_load(files[f].file);
        CHECK(x != NULL, "kiln_idx_load(%s): %s", files[f].file, kiln_last_error());
        if (!x) continue;
        CHECK(x->type == KILN_IDX_U8 && x->elem_size == 1, "%s: type %s", files[f].file, kiln_idx_type_name(x->type));
        CHECK(x->ndim == files[f].ndim && x->dims[0] == files[f].d0, "%s: ndim %d dims[0] %lld", files[f].file, x->ndim,
              (long long)x->dims[0]);
        if (x->ndim == 3) {
            CHECK(x->dims[1] == 28 && x->dims[2] == 28 && x->count == files[f].d0 * 784, "%s: dims", files[f].file);
            /* The first image against an independent read of the file (zlib's gzread)
             * and against constants computed once with Python's gzip module. */
            gzFile g = gzopen(files[f].file, "rb");
            unsigned char raw[16 + 784];
            int got = g ? gzread(g, raw, sizeof raw) : -1;
            if (g) gzclose(g);
            CHECK(got == (int)sizeof raw && memcmp(raw + 16, x->data, 784) == 0,
                  "%s: first image differs from gzread's", files[f].file);
            uint64_t sum = 0;
            for (int i = 0; i < 784; i++) sum += ((unsigned char *)x->data)[i];
            uint64_t h = fnv1a(x->data, 784);
            bool train = f == 0;
            CHECK(sum == (train ? 76247u : 33456u), "%s: first image sum %llu", files[f].file, (unsigned long long)sum);
            CHECK(h == (train ? 0x01fdf72590541338ULL : 0xcb45b7589f1b853bULL), "%s: first image FNV-1a %016llx",
                  files[f].file, (unsigned long long)h);
        } else {
            CHECK(kiln_idx_value(x, 0) == 9, "%s: first label %g", files[f].file, kiln_idx_value(x, 0));
        }
        CHECK(isnan(kiln_idx_value(x, -1)) && isnan(kiln_idx_value(x, x->count)), "out-of-range value is not NaN");
        kiln_idx_free(x);
    }
}

static void test_fashion_dataset(void) {
    if (!have_fashion()) return;
    for (int t = 0; t < 2; t++) {
        bool train = t == 0;
        int64_t n = train ? 60000 : 10000;
        kiln_dataset *ds = kiln_fashion_mnist(NULL, train);
        CHECK(ds != NULL, "kiln_fashion_mnist(%d): %s", train, kiln_last_error());
        if (!ds) continue;
        const int64_t *shape;
        int nd = kiln_dataset_shape(ds, &shape);
        CHECK(kiln_dataset_num_samples(ds) == n, "size %lld", (long long)kiln_dataset_num_samples(ds));
        CHECK(nd == 3 && shape[0] == 1 && shape[1] == 28 && shape[2] == 28, "sample shape");
        CHECK(kiln_dataset_sample_numel(ds) == 784 && kiln_dataset_num_classes(ds) == 10, "numel/classes");
        int64_t hist[10] = {0};
        bool ok = true;
        double s = 0, s2 = 0;
        float x[784];
        for (int64_t i = 0; i < n; i++) {
            int32_t y;
            ok &= kiln_dataset_get(ds, i, train ? x : NULL, 784, &y) == KILN_OK && y >= 0 && y < 10;
            if (y >= 0 && y < 10) hist[y]++;
            if (train)
                for (int k = 0; k < 784; k++) {
                    s += x[k] / 255.0;
                    s2 += (x[k] / 255.0) * (x[k] / 255.0);
                }
        }
        CHECK(ok, "kiln_dataset_get failed or a label is out of range");
        for (int c = 0; c < 10; c++) CHECK(hist[c] == n / 10, "class %d has %lld samples", c, (long long)hist[c]);
        kiln_dataset_get(ds, 0, x, 784, NULL);
        double sum = 0;
        for (int k = 0; k < 784; k++) sum += x[k];
        CHECK(sum == (train ? 76247 : 33456), "first image sum %g", sum);
        if (train) {
            double mean = s / (n * 784.0), sd = sqrt(s2 / (n * 784.0) - mean * mean);
            CHECK(fabs(mean - KILN_FASHION_MNIST_MEAN) < 1e-4 && fabs(sd - KILN_FASHION_MNIST_STD) < 1e-4,
                  "pixel mean %.6f std %.6f vs the header's constants", mean, sd);
        }
        kiln_dataset_free(ds);
    }
    CHECK(strcmp(kiln_fashion_mnist_class_name(9), "Ankle boot") == 0 &&
              strcmp(kiln_fashion_mnist_class_name(10), "") == 0,
          "class names");
    kiln_dataset *none = kiln_fashion_mnist(tmpdir, true);
    expect_global("fashion in an empty dir", none == NULL, kiln_last_status(), KILN_ERR_IO, "train-images-idx3-ubyte",
                  tmpdir, NULL);
}

/* ---- IDX: synthetic files, every type and every fault ------------------------------------ */

static void test_idx_types(void) {
    /* One value list per type, big-endian on disk. */
    uint32_t d2[2] = {1, 3};
    struct {
        int type;
        unsigned char payload[24];
        size_t plen;
        double want[3];
    } cases[] = {
        {KILN_IDX_U8, {0, 200, 255}, 3, {0, 200, 255}},
        {KILN_IDX_I8, {0x80, 0xff, 0x7f}, 3, {-128, -1, 127}},
        {KILN_IDX_I16, {0x80, 0x00, 0xff, 0xfe, 0x01, 0x02}, 6, {-32768, -2, 258}},
        {KILN_IDX_I32, {0xff, 0xfe, 0xee, 0x90, 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 5}, 12, {-70000, 2147483647, 5}},
        {KILN_IDX_F32, {0x3f, 0xc0, 0, 0, 0xc0, 0x10, 0, 0, 0x7f, 0x80, 0, 0}, 12, {1.5, -2.25, INFINITY}},
        {KILN_IDX_F64,
         {0x3f, 0xf8, 0, 0, 0, 0, 0, 0, 0xc0, 0x02, 0, 0, 0, 0, 0, 0, 0x3f, 0xb9, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a},
         24,
         {1.5, -2.25, 0.1}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t len;
        unsigned char *b = idx_make(cases[c].type, 2, d2, cases[c].payload, cases[c].plen, &len);
        kiln_idx *x = kiln_idx_parse(b, len, "types");
        CHECK(x != NULL, "type 0x%02x: %s", cases[c].type, kiln_last_error());
        if (x) {
            CHECK((int)x->type == cases[c].type && x->ndim == 2 && x->dims[1] == 3 && x->count == 3,
                  "type 0x%02x header", cases[c].type);
            for (int i = 0; i < 3; i++)
                CHECK(kiln_idx_value(x, i) == cases[c].want[i], "type %s value %d: %.17g, want %.17g",
                      kiln_idx_type_name(x->type), i, kiln_idx_value(x, i), cases[c].want[i]);
        }
        kiln_idx_free(x);
        /* the same through a file, raw and gzip */
        write_file("types.idx", b, len);
        write_gz("types.idx.gz", b, len);
        char p[512];
        for (int g = 0; g < 2; g++) {
            path_in(p, sizeof p, g ? "types.idx.gz" : "types.idx");
            x = kiln_idx_load(p);
            CHECK(x && kiln_idx_value(x, 2) == cases[c].want[2], "%s: %s", p, kiln_last_error());
            kiln_idx_free(x);
        }
        free(b);
    }
    /* A zero size is a valid, empty file. */
    uint32_t dz[2] = {0, 5};
    size_t len;
    unsigned char *b = idx_make(KILN_IDX_F32, 2, dz, NULL, 0, &len);
    kiln_idx *x = kiln_idx_parse(b, len, NULL);
    CHECK(x && x->count == 0 && x->dims[1] == 5, "zero-size IDX: %s", kiln_last_error());
    kiln_idx_free(x);
    free(b);
    /* Two gzip members concatenated inflate as one stream (as gzip -d does). */
    uint32_t d1[1] = {4};
    unsigned char v[4] = {1, 2, 3, 4};
    b = idx_make(KILN_IDX_U8, 1, d1, v, 4, &len);
    char p1[512], p2[512], pc[512];
    write_gz("m1.gz", b, 6);
    write_gz("m2.gz", b + 6, len - 6);
    path_in(p1, sizeof p1, "m1.gz");
    path_in(p2, sizeof p2, "m2.gz");
    size_t l1, l2;
    unsigned char *g1 = read_whole(p1, &l1), *g2 = read_whole(p2, &l2);
    unsigned char *cat = malloc(l1 + l2);
    memcpy(cat, g1, l1);
    memcpy(cat + l1, g2, l2);
    write_file("multi.idx.gz", cat, l1 + l2);
    path_in(pc, sizeof pc, "multi.idx.gz");
    x = kiln_idx_load(pc);
    CHECK(x && x->count == 4 && kiln_idx_value(x, 3) == 4, "two gzip members: %s", kiln_last_error());
    kiln_idx_free(x);
    free(g1);
    free(g2);
    free(cat);
    free(b);
    CHECK(strcmp(kiln_idx_type_name((kiln_idx_type)0x0A), "invalid") == 0, "type name of 0x0A");
}

/* Each malformed input through the memory parser and through a raw and a gzip file. */
static void idx_fault(const char *name, const unsigned char *b, size_t len, const char *want1, const char *want2) {
    kiln_idx *x = kiln_idx_parse(b, len, name);
    char what[160];
    snprintf(what, sizeof what, "kiln_idx_parse(%s)", name);
    expect_global(what, x == NULL, kiln_last_status(), KILN_ERR_CORRUPT, name, want1, want2);
    kiln_idx_free(x);
    char fname[128], p[512];
    for (int g = 0; g < 2; g++) {
        snprintf(fname, sizeof fname, "%s%s", name, g ? ".gz" : "");
        if (g)
            write_gz(fname, b, len);
        else
            write_file(fname, b, len);
        path_in(p, sizeof p, fname);
        x = kiln_idx_load(p);
        snprintf(what, sizeof what, "kiln_idx_load(%s)", fname);
        expect_global(what, x == NULL, kiln_last_status(), KILN_ERR_CORRUPT, p, want1, want2);
        kiln_idx_free(x);
    }
}

static void test_idx_faults(void) {
    size_t len;
    unsigned char *b;
    idx_fault("empty", (const unsigned char *)"", 0, "file is empty", NULL);
    idx_fault("short-magic", (const unsigned char[]){0, 0, 8}, 3, "truncated header", "3 bytes");
    /* 3 dims need 16 header bytes; give 10 */
    idx_fault("short-header", (const unsigned char[]){0, 0, 8, 3, 0, 0, 0, 10, 0, 0}, 10, "truncated header",
              "16-byte header, file has 10");
    uint32_t d3[3] = {10, 28, 28};
    unsigned char *pix = calloc(7840 + 8, 1);
    b = idx_make(KILN_IDX_U8, 3, d3, pix, 7839, &len);
    idx_fault("short-payload", b, len, "header says 10x28x28 u8 = 7840 bytes of data, file has 7839", "truncated");
    free(b);
    b = idx_make(KILN_IDX_U8, 3, d3, pix, 7843, &len);
    idx_fault("trailing", b, len, "file has 7843", "3 trailing bytes");
    free(b);
    uint32_t di[1] = {3};
    b = idx_make(KILN_IDX_I32, 1, di, pix, 11, &len);
    idx_fault("short-i32", b, len, "header says 3 i32 = 12 bytes of data, file has 11", NULL);
    free(b);
    b = idx_make(KILN_IDX_U8, 3, d3, pix, 7840, &len);
    b[0] = 1;
    b[1] = 2;
    idx_fault("magic", b, len, "wrong magic 0x01020803", NULL);
    b[0] = b[1] = 0;
    b[2] = 0x0A;
    idx_fault("type", b, len, "bad type byte 0x0a", NULL);
    b[2] = 0x07;
    idx_fault("type7", b, len, "bad type byte 0x07", NULL);
    free(b);
    b = idx_make(KILN_IDX_U8, 0, NULL, pix, 4, &len);
    idx_fault("ndim0", b, len, "ndim 0", NULL);
    free(b);
    uint32_t d9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    b = idx_make(KILN_IDX_U8, 9, d9, pix, 1, &len);
    idx_fault("ndim9", b, len, "ndim 9", NULL);
    free(b);
    uint32_t big[8] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu,
                       0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};
    b = idx_make(KILN_IDX_U8, 8, big, pix, 16, &len);
    idx_fault("overflow", b, len, "overflows int64", "4294967295x4294967295");
    free(b);
    /* fits int64 as a count (2^62) but not as f64 bytes */
    uint32_t big2[2] = {0x80000000u, 0x80000000u};
    b = idx_make(KILN_IDX_F64, 2, big2, pix, 8, &len);
    idx_fault("overflow-bytes", b, len, "2147483648x2147483648", "too many bytes");
    free(b);
    /* a count that fits but a file far too short: no allocation of the header's size */
    uint32_t huge[2] = {0x7fffffffu, 0x7fffffffu};
    b = idx_make(KILN_IDX_U8, 2, huge, pix, 8, &len);
    idx_fault("lying", b, len, "4611686014132420609 bytes of data, file has 8", "truncated");
    free(b);
    free(pix);

    char p[512];
    /* non-gzip garbage under a .gz name */
    write_file("garbage.gz", "this is not gzip at all\n", 24);
    path_in(p, sizeof p, "garbage.gz");
    kiln_idx *x = kiln_idx_load(p);
    expect_global("garbage.gz", x == NULL, kiln_last_status(), KILN_ERR_CORRUPT, p, "wrong magic 0x74686973",
                  "not gzip-compressed");
    kiln_idx_free(x);
    /* a valid raw IDX under a .gz name loads (browsers inflate downloads but keep the name) */
    uint32_t d1[1] = {2};
    b = idx_make(KILN_IDX_U8, 1, d1, "\x05\x06", 2, &len);
    write_file("raw-named.gz", b, len);
    path_in(p, sizeof p, "raw-named.gz");
    x = kiln_idx_load(p);
    CHECK(x && kiln_idx_value(x, 1) == 6, "raw IDX named .gz: %s", kiln_last_error());
    kiln_idx_free(x);
    free(b);
    /* a gzip stream cut short, and one with a damaged body */
    uint32_t d2[2] = {100, 100};
    unsigned char *vals = malloc(10000);
    for (int i = 0; i < 10000; i++) vals[i] = (unsigned char)(i * 7919 % 251);
    b = idx_make(KILN_IDX_U8, 2, d2, vals, 10000, &len);
    write_gz("whole.gz", b, len);
    path_in(p, sizeof p, "whole.gz");
    size_t gl;
    unsigned char *gz = read_whole(p, &gl);
    write_file("cut.gz", gz, gl / 2);
    path_in(p, sizeof p, "cut.gz");
    x = kiln_idx_load(p);
    expect_global("cut.gz", x == NULL, kiln_last_status(), KILN_ERR_CORRUPT, p, "gzip stream is truncated", NULL);
    kiln_idx_free(x);
    for (size_t i = gl / 3; i < gl / 3 + 40; i++) gz[i] ^= 0x5a;
    write_file("damaged.gz", gz, gl);
    path_in(p, sizeof p, "damaged.gz");
    x = kiln_idx_load(p);
    expect_global("damaged.gz", x == NULL, kiln_last_status(), KILN_ERR_CORRUPT, p, "gzip", NULL);
    kiln_idx_free(x);
    /* trailing garbage after a complete gzip stream */
    free(gz);
    path_in(p, sizeof p, "whole.gz");
    gz = read_whole(p, &gl);
    unsigned char *gzt = malloc(gl + 5);
    memcpy(gzt, gz, gl);
    memcpy(gzt + gl, "junk!", 5);
    write_file("tail.gz", gzt, gl + 5);
    path_in(p, sizeof p, "tail.gz");
    x = kiln_idx_load(p);
    expect_global("tail.gz", x == NULL, kiln_last_status(), KILN_ERR_CORRUPT, p,
                  "5 bytes of trailing data after the gzip stream", NULL);
    kiln_idx_free(x);
    free(gzt);
    free(gz);
    free(b);
    free(vals);
    /* files that are not there, directories, NULLs */
    path_in(p, sizeof p, "missing.idx");
    x = kiln_idx_load(p);
    expect_global("missing", x == NULL, kiln_last_status(), KILN_ERR_IO, p, "cannot open", NULL);
    x = kiln_idx_load(tmpdir);
    expect_global("directory", x == NULL, kiln_last_status(), KILN_ERR_IO, tmpdir, NULL, NULL);
    CHECK(kiln_idx_load(NULL) == NULL && strstr(kiln_last_error(), "NULL"), "load(NULL): %s", kiln_last_error());
    CHECK(kiln_idx_parse(NULL, 5, "n") == NULL && strstr(kiln_last_error(), "NULL"), "parse(NULL): %s",
          kiln_last_error());
    x = kiln_idx_parse(NULL, 0, "n");
    CHECK(x == NULL && strstr(kiln_last_error(), "empty"), "parse(NULL, 0): %s", kiln_last_error());
    kiln_idx_free(NULL);
    CHECK(isnan(kiln_idx_value(NULL, 0)), "value(NULL)");
    /* a successful call clears the previous message */
    b = idx_make(KILN_IDX_U8, 1, d1, "\x05\x06", 2, &len);
    x = kiln_idx_parse(b, len, "ok");
    CHECK(x && kiln_last_error()[0] == 0, "last error not cleared: %s", kiln_last_error());
    kiln_idx_free(x);
    free(b);
}

/* Mutated inputs must fail cleanly or parse; nothing may crash (run under ASan/valgrind to
 * see more). The libFuzzer harnesses will go much further. */
static void test_idx_mutations(void) {
    uint32_t d[3] = {2, 3, 4};
    unsigned char pay[96];
    for (int i = 0; i < 96; i++) pay[i] = (unsigned char)i;
    size_t len;
    unsigned char *base = idx_make(KILN_IDX_I32, 3, d, pay, 96, &len);
    unsigned char *b = malloc(len + 8);
    uint64_t r = 12345;
    int parsed = 0, failed = 0;
    for (int it = 0; it < 20000; it++) {
        memcpy(b, base, len);
        size_t l = len;
        int nm = 1 + (int)(r % 4);
        for (int m = 0; m < nm; m++) {
            r = r * 6364136223846793005ULL + 1442695040888963407ULL;
            size_t pos = (size_t)(r >> 33) % 32;
            b[pos % l] = (unsigned char)(r >> 13);
        }
        r = r * 6364136223846793005ULL + 1442695040888963407ULL;
        if ((r >> 60) < 4) l = (size_t)(r >> 20) % (len + 8); /* cut or extend */
        kiln_idx *x = kiln_idx_parse(b, l, "mut");
        if (x) {
            parsed++;
            CHECK((size_t)x->count * x->elem_size + 4 + 4 * (size_t)x->ndim == l, "mutation %d: size mismatch accepted",
                  it);
            kiln_idx_free(x);
        } else {
            failed++;
            if (strstr(kiln_last_error(), "mut") == NULL) CHECK(0, "mutation %d: message %s", it, kiln_last_error());
        }
    }
    CHECK(parsed > 0 && failed > 0, "mutations: %d parsed, %d failed", parsed, failed);
    free(b);
    free(base);
}

/* ---- CSV ---------------------------------------------------------------------------------- */

static void test_csv(void) {
    const char *t1 = "a,b,c\n1,2,3\r\n\n  4 , 5.5,-6e-1\n\"7\",\"8\" , 9\n";
    kiln_csv *c = kiln_csv_parse(t1, strlen(t1), "t1", NULL);
    CHECK(c != NULL, "t1: %s", kiln_last_error());
    if (c) {
        CHECK(c->rows == 3 && c->cols == 3, "t1: %lldx%lld", (long long)c->rows, (long long)c->cols);
        CHECK(c->names && strcmp(c->names[0], "a") == 0 && strcmp(c->names[2], "c") == 0, "t1 names");
        double want[9] = {1, 2, 3, 4, 5.5, -0.6, 7, 8, 9};
        for (int i = 0; i < 9; i++) CHECK(c->data[i] == want[i], "t1[%d] = %g", i, c->data[i]);
        CHECK(c->lines[0] == 2 && c->lines[1] == 4 && c->lines[2] == 5, "t1 lines %lld %lld %lld",
              (long long)c->lines[0], (long long)c->lines[1], (long long)c->lines[2]);
    }
    kiln_csv_free(c);
    /* no header (auto), no trailing newline, a lone \r as line end */
    const char *t2 = "1;2\r3;4";
    c = kiln_csv_parse(t2, strlen(t2), "t2", &(kiln_csv_opts){.delimiter = ';'});
    CHECK(c && c->rows == 2 && !c->names && c->data[3] == 4 && c->lines[1] == 2, "t2: %s", kiln_last_error());
    kiln_csv_free(c);
    /* forced header of numbers; tabs */
    const char *t3 = "10\t20\n1\t2\n";
    c = kiln_csv_parse(t3, strlen(t3), "t3", &(kiln_csv_opts){.delimiter = '\t', .header = KILN_CSV_HEADER_YES});
    CHECK(c && c->rows == 1 && c->names && strcmp(c->names[1], "20") == 0 && c->data[1] == 2, "t3: %s",
          kiln_last_error());
    kiln_csv_free(c);
    /* quoted header names with a delimiter, a quote and a newline inside */
    const char *t4 = "\"x,1\",\"say \"\"hi\"\"\",\"multi\nline\"\n1,2,3\n";
    c = kiln_csv_parse(t4, strlen(t4), "t4", NULL);
    CHECK(c && c->rows == 1 && c->cols == 3 && strcmp(c->names[0], "x,1") == 0 &&
              strcmp(c->names[1], "say \"hi\"") == 0 && strcmp(c->names[2], "multi\nline") == 0 && c->lines[0] == 3,
          "t4: %s", kiln_last_error());
    kiln_csv_free(c);
    /* nan and inf are numbers; a program's locale does not matter (C locale inside) */
    const char *t5 = "nan,inf,-1.25e2\n";
    c = kiln_csv_parse(t5, strlen(t5), "t5", &(kiln_csv_opts){.delimiter = ',', .header = KILN_CSV_HEADER_NO});
    CHECK(c && isnan(c->data[0]) && isinf(c->data[1]) && c->data[2] == -125, "t5: %s", kiln_last_error());
    kiln_csv_free(c);
    /* header only: zero rows */
    c = kiln_csv_parse("a,b\n", 4, "t6", NULL);
    CHECK(c && c->rows == 0 && c->cols == 2, "header only: %s", kiln_last_error());
    kiln_csv_free(c);

    struct {
        const char *name, *text;
        kiln_csv_header h;
        const char *w1, *w2;
    } bad[] = {
        {"ragged.csv", "a,b,c\n1,2,3\n4,5\n", KILN_CSV_HEADER_AUTO, "line 3 has 2 columns, expected 3", NULL},
        {"ragged2.csv", "1,2\n\n3,4,5\n", KILN_CSV_HEADER_AUTO, "line 3 has 3 columns, expected 2 (as line 1)", NULL},
        {"nonnum.csv", "a,b\n1,2\n3,x7\n", KILN_CSV_HEADER_AUTO, "line 3, column 2", "'x7' is not a number"},
        {"nonnum-first.csv", "1,zz\n", KILN_CSV_HEADER_NO, "line 1, column 2", "'zz' is not a number"},
        {"partial.csv", "1,2.5.5\n", KILN_CSV_HEADER_NO, "line 1, column 2", "'2.5.5'"},
        /* beyond the largest double: an error, not inf (an explicit "inf" is a number) */
        {"range.csv", "a,b\n1,2\n3,1e400\n", KILN_CSV_HEADER_AUTO, "line 3, column 2", "'1e400' is out of range"},
        {"range-neg.csv", "-1e999,2\n", KILN_CSV_HEADER_NO, "line 1, column 1", "'-1e999' is out of range"},
        {"empty-cell.csv", "1,2\n3,\n", KILN_CSV_HEADER_AUTO, "line 2, column 2: empty cell", NULL},
        {"quote.csv", "1,\"2\n3,4\n", KILN_CSV_HEADER_AUTO, "line 1, column 2: unterminated quoted field", NULL},
        {"after-quote.csv", "1,\"2\"x\n", KILN_CSV_HEADER_AUTO, "line 1, column 2", "after a quoted field"},
        {"nul.csv", "1,2\n3,4\0\n", KILN_CSV_HEADER_AUTO, "line 2, column 2", "not a number"},
        {"blank.csv", "\n\n  \n", KILN_CSV_HEADER_AUTO, "no rows", NULL},
        {"empty.csv", "", KILN_CSV_HEADER_AUTO, "no rows", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t len = strlen(bad[i].text);
        if (strcmp(bad[i].name, "nul.csv") == 0) len = 9;
        kiln_csv_opts o = {.delimiter = ',', .header = bad[i].h};
        c = kiln_csv_parse(bad[i].text, len, bad[i].name, &o);
        expect_global(bad[i].name, c == NULL, kiln_last_status(), KILN_ERR_CORRUPT, bad[i].name, bad[i].w1, bad[i].w2);
        kiln_csv_free(c);
        /* the same from a file (gzip: the reader inflates CSV too) */
        char fname[128], p[512];
        snprintf(fname, sizeof fname, "%s.gz", bad[i].name);
        write_gz(fname, bad[i].text, len);
        path_in(p, sizeof p, fname);
        c = kiln_csv_load(p, &o);
        expect_global(fname, c == NULL, kiln_last_status(), KILN_ERR_CORRUPT, p, bad[i].w1, bad[i].w2);
        kiln_csv_free(c);
    }
    c = kiln_csv_parse("1\n", 2, "d", &(kiln_csv_opts){.delimiter = '"'});
    expect_global("quote delimiter", c == NULL, kiln_last_status(), KILN_ERR_INVALID_ARGUMENT, "delimiter", NULL, NULL);
    /* options are literal: delimiter 0 is not ',' but an error that says where the defaults are */
    c = kiln_csv_parse("1\n", 2, "d", &(kiln_csv_opts){.header = KILN_CSV_HEADER_NO});
    expect_global("zero delimiter", c == NULL, kiln_last_status(), KILN_ERR_INVALID_ARGUMENT,
                  "delimiter 0x00 is not allowed (start from kiln_csv_defaults()", NULL, NULL);
    kiln_csv_opts cd = kiln_csv_defaults();
    CHECK(cd.delimiter == ',' && cd.header == KILN_CSV_HEADER_AUTO, "kiln_csv_defaults");
    c = kiln_csv_parse("a,b\n1,2\n", 8, "d", NULL);
    CHECK(c && c->rows == 1 && c->cols == 2 && c->names, "NULL options are the defaults: %s", kiln_last_error());
    kiln_csv_free(c);
    c = kiln_csv_parse("1\n", 2, "d", &(kiln_csv_opts){.delimiter = ',', .header = (kiln_csv_header)7});
    expect_global("bad header option", c == NULL, kiln_last_status(), KILN_ERR_INVALID_ARGUMENT, "header option 7",
                  NULL, NULL);
    CHECK(kiln_csv_parse(NULL, 3, NULL, NULL) == NULL && strstr(kiln_last_error(), "NULL"), "csv parse NULL");
    CHECK(kiln_csv_load(NULL, NULL) == NULL && strstr(kiln_last_error(), "NULL"), "csv load NULL");
    kiln_csv_free(NULL);

    /* random bytes from a small alphabet: parse or fail, never crash */
    const char alpha[] = "0123456789.,;\"\n\r e-+ax\t";
    char buf[64];
    uint64_t r = 99;
    int ok = 0, fail = 0;
    for (int it = 0; it < 20000; it++) {
        r = r * 6364136223846793005ULL + 1442695040888963407ULL;
        size_t n = (size_t)(r >> 58);
        for (size_t k = 0; k < n; k++) {
            r = r * 6364136223846793005ULL + 1442695040888963407ULL;
            buf[k] = alpha[(r >> 40) % (sizeof alpha - 1)];
        }
        c = kiln_csv_parse(buf, n, "rnd", NULL);
        if (c) {
            ok++;
            CHECK(c->rows >= 0 && c->cols >= 1, "rnd %d", it);
        } else {
            fail++;
        }
        kiln_csv_free(c);
    }
    CHECK(ok > 0 && fail > 0, "random CSV: %d parsed, %d failed", ok, fail);
}

/* ---- datasets --------------------------------------------------------------------------- */

static void test_dataset_idx_faults(void) {
    char pi[512], pl[512], pl2[512], pl3[512];
    uint32_t di[3] = {5, 2, 3};
    unsigned char px[30];
    for (int i = 0; i < 30; i++) px[i] = (unsigned char)(i + 1);
    size_t len;
    unsigned char *b = idx_make(KILN_IDX_U8, 3, di, px, 30, &len);
    write_gz("img.idx.gz", b, len);
    free(b);
    uint32_t dl[1] = {4};
    b = idx_make(KILN_IDX_U8, 1, dl, "\x01\x02\x03\x04", 4, &len);
    write_file("lab4.idx", b, len);
    free(b);
    uint32_t dl5[1] = {5};
    b = idx_make(KILN_IDX_U8, 1, dl5, "\x01\x02\x09\x0a\x04", 5, &len);
    write_file("lab5.idx", b, len);
    free(b);
    b = idx_make(KILN_IDX_F32, 1, dl5, (unsigned char[20]){0}, 20, &len);
    write_file("labf.idx", b, len);
    free(b);
    path_in(pi, sizeof pi, "img.idx.gz");
    path_in(pl, sizeof pl, "lab4.idx");
    path_in(pl2, sizeof pl2, "lab5.idx");
    path_in(pl3, sizeof pl3, "labf.idx");
    kiln_dataset *ds = kiln_dataset_idx(pi, pl, 10);
    expect_global("count mismatch", ds == NULL, kiln_last_status(), KILN_ERR_SHAPE, pi, pl,
                  "hold 5 samples but labels");
    ds = kiln_dataset_idx(pi, pl2, 10);
    expect_global("label range", ds == NULL, kiln_last_status(), KILN_ERR_RANGE, pl2,
                  "label 10 at index 3 is outside [0, 10)", pi);
    ds = kiln_dataset_idx(pi, pl3, 10);
    expect_global("float labels", ds == NULL, kiln_last_status(), KILN_ERR_SHAPE, pl3, "f32", NULL);
    /* inferred class count; the images' bytes stay bytes */
    ds = kiln_dataset_idx(pi, pl2, 0);
    CHECK(ds && kiln_dataset_num_classes(ds) == 11, "inferred classes: %s", kiln_last_error());
    if (ds) {
        const int64_t *shape;
        CHECK(kiln_dataset_shape(ds, &shape) == 3 && shape[0] == 1 && shape[1] == 2 && shape[2] == 3,
              "[N,H,W] -> [1,H,W]");
        float x[6];
        int32_t y;
        CHECK(kiln_dataset_get(ds, 4, x, 6, &y) == KILN_OK && x[0] == 25 && x[5] == 30 && y == 4, "sample 4");
        CHECK(kiln_dataset_get(ds, 5, x, 6, &y) == KILN_ERR_RANGE && strstr(kiln_last_error(), "index 5"), "get 5: %s",
              kiln_last_error());
        CHECK(kiln_dataset_get(ds, 0, x, 5, &y) == KILN_ERR_BUFFER_TOO_SMALL, "get with a short buffer");
    }
    kiln_dataset_free(ds);
    /* a missing label file names itself */
    char pm[512];
    path_in(pm, sizeof pm, "nolabels.idx");
    ds = kiln_dataset_idx(pi, pm, 10);
    expect_global("missing labels", ds == NULL, kiln_last_status(), KILN_ERR_IO, pm, NULL, NULL);
    CHECK(kiln_dataset_idx(NULL, pl, 10) == NULL && strstr(kiln_last_error(), "NULL"), "idx(NULL)");
    /* 1-D images cannot be samples */
    b = idx_make(KILN_IDX_U8, 1, dl, "\x01\x02\x03\x04", 4, &len);
    write_file("flat.idx", b, len);
    free(b);
    char pf[512];
    path_in(pf, sizeof pf, "flat.idx");
    ds = kiln_dataset_idx(pf, pl, 10);
    expect_global("1-D images", ds == NULL, kiln_last_status(), KILN_ERR_SHAPE, pf, "[N, ...]", NULL);
}

static void test_dataset_csv(void) {
    const char *t = "f1,f2,label\n0.5,1,2\n1.5,-1,0\n2.5,3,1\n";
    write_file("iris.csv", t, strlen(t));
    char p[512];
    path_in(p, sizeof p, "iris.csv");
    kiln_dataset *ds = kiln_dataset_csv(p, -1, 3, NULL);
    CHECK(ds != NULL, "csv dataset: %s", kiln_last_error());
    if (ds) {
        const int64_t *shape;
        CHECK(kiln_dataset_num_samples(ds) == 3 && kiln_dataset_shape(ds, &shape) == 1 && shape[0] == 2, "csv shape");
        float x[2];
        int32_t y;
        kiln_dataset_get(ds, 1, x, 2, &y);
        CHECK(x[0] == 1.5f && x[1] == -1 && y == 0, "csv sample 1: %g %g %d", x[0], x[1], y);
    }
    kiln_dataset_free(ds);
    ds = kiln_dataset_csv(p, 0, 0, NULL); /* label in column 0 (0.5: not an integer) */
    expect_global("csv float label", ds == NULL, kiln_last_status(), KILN_ERR_CORRUPT, p,
                  "line 2, column 1: label 0.5 is not an integer", "kiln_dataset_csv");
    ds = kiln_dataset_csv(p, 2, 2, NULL);
    expect_global("csv label range", ds == NULL, kiln_last_status(), KILN_ERR_RANGE, p,
                  "line 2, column 3: label 2 is outside [0, 2)", NULL);
    ds = kiln_dataset_csv(p, 3, 2, NULL);
    expect_global("csv label column", ds == NULL, kiln_last_status(), KILN_ERR_RANGE, p, "label column 3", NULL);
    const char *r = "1,2,0\n3,4\n";
    write_file("ragged-ds.csv", r, strlen(r));
    path_in(p, sizeof p, "ragged-ds.csv");
    ds = kiln_dataset_csv(p, -1, 0, NULL);
    expect_global("csv dataset ragged", ds == NULL, kiln_last_status(), KILN_ERR_CORRUPT, p,
                  "line 2 has 2 columns, expected 3", NULL);
    const char *big = "1e39,0\n";
    kiln_csv *c = kiln_csv_parse(big, strlen(big), "big", NULL);
    ds = kiln_dataset_from_csv(c, 1, 0, "big");
    expect_global("csv float overflow", ds == NULL, kiln_last_status(), KILN_ERR_RANGE, "line 1, column 1",
                  "does not fit in a float", NULL);
    kiln_csv_free(c);
    CHECK(kiln_dataset_from_csv(NULL, 0, 0, NULL) == NULL && strstr(kiln_last_error(), "NULL"), "from_csv(NULL)");
}

static void test_dataset_host_split(void) {
    enum { N = 103 };
    float x[N * 2];
    int32_t y[N];
    for (int i = 0; i < N; i++) {
        x[2 * i] = (float)i;
        x[2 * i + 1] = (float)-i;
        y[i] = i % 7;
    }
    kiln_dataset *ds = kiln_dataset_from_host(x, y, N, 1, (int64_t[]){2}, 7);
    CHECK(ds && kiln_dataset_num_samples(ds) == N && kiln_dataset_num_classes(ds) == 7, "from_host: %s",
          kiln_last_error());
    if (!ds) return;
    kiln_dataset *tr, *va, *tr2, *va2, *tr3, *va3;
    CHECK(kiln_dataset_split(ds, 0.2, 7, &tr, &va) == KILN_OK, "split: %s", kiln_last_error());
    CHECK(kiln_dataset_split(ds, 0.2, 7, &tr2, &va2) == KILN_OK, "split again");
    CHECK(kiln_dataset_split(ds, 0.2, 8, &tr3, &va3) == KILN_OK, "split seed 8");
    CHECK(kiln_dataset_num_samples(va) == 21 && kiln_dataset_num_samples(tr) == 82, "sizes %lld/%lld",
          (long long)kiln_dataset_num_samples(tr), (long long)kiln_dataset_num_samples(va));
    /* every sample in exactly one part, each part in dataset order, same seed same split */
    int seen[N] = {0};
    bool same = true, ordered = true, differs = false;
    kiln_dataset *parts[2] = {tr, va}, *again[2] = {tr2, va2}, *other[2] = {tr3, va3};
    for (int p = 0; p < 2; p++) {
        float prev = -1;
        for (int64_t i = 0; i < kiln_dataset_num_samples(parts[p]); i++) {
            float a[2], b2[2], c2[2];
            int32_t ya;
            kiln_dataset_get(parts[p], i, a, 2, &ya);
            kiln_dataset_get(again[p], i, b2, 2, NULL);
            if (kiln_dataset_get(other[p], i, c2, 2, NULL) == KILN_OK && c2[0] != a[0]) differs = true;
            int id = (int)a[0];
            if (id >= 0 && id < N) seen[id]++;
            same &= b2[0] == a[0];
            ordered &= a[0] > prev && a[1] == -a[0] && ya == id % 7;
            prev = a[0];
        }
    }
    bool complete = true;
    for (int i = 0; i < N; i++) complete &= seen[i] == 1;
    CHECK(complete, "split parts are not disjoint and complete");
    CHECK(same, "same seed gave another split");
    CHECK(ordered, "split parts not in dataset order or samples mangled");
    CHECK(differs, "seeds 7 and 8 gave the same split");
    /* a split of a split still maps to the right samples after the parent is freed */
    kiln_dataset *a, *b;
    CHECK(kiln_dataset_split(tr, 0.5, 1, &a, &b) == KILN_OK &&
              kiln_dataset_num_samples(a) + kiln_dataset_num_samples(b) == 82,
          "split of split");
    kiln_dataset_free(tr);
    int seen2[N] = {0};
    for (int p = 0; p < 2; p++)
        for (int64_t i = 0; i < kiln_dataset_num_samples(p ? b : a); i++) {
            float v[2];
            kiln_dataset_get(p ? b : a, i, v, 2, NULL);
            seen2[(int)v[0]]++;
        }
    int in_val = 0, twice = 0;
    for (int64_t i = 0; i < kiln_dataset_num_samples(va); i++) {
        float v[2];
        kiln_dataset_get(va, i, v, 2, NULL);
        in_val += seen2[(int)v[0]];
    }
    for (int i = 0; i < N; i++) twice += seen2[i] > 1;
    CHECK(in_val == 0 && twice == 0, "split of split overlaps the validation part (%d) or repeats (%d)", in_val, twice);
    kiln_dataset_free(a);
    kiln_dataset_free(b);
    /* edge fractions */
    CHECK(kiln_dataset_split(ds, 0, 1, &a, &b) == KILN_OK && kiln_dataset_num_samples(a) == N &&
              kiln_dataset_num_samples(b) == 0,
          "frac 0");
    kiln_dataset_free(a);
    kiln_dataset_free(b);
    CHECK(kiln_dataset_split(ds, 1, 1, &a, &b) == KILN_OK && kiln_dataset_num_samples(a) == 0 &&
              kiln_dataset_num_samples(b) == N,
          "frac 1");
    kiln_dataset_free(a);
    kiln_dataset_free(b);
    kiln_status s = kiln_dataset_split(ds, 1.5, 1, &a, &b);
    expect_global("frac 1.5", s != KILN_OK, s, KILN_ERR_RANGE, "val_frac 1.5", NULL, NULL);
    CHECK(a == NULL && b == NULL, "outputs not NULL on error");
    s = kiln_dataset_split(ds, NAN, 1, &a, &b);
    expect_global("frac nan", s != KILN_OK, s, KILN_ERR_RANGE, "val_frac", NULL, NULL);
    s = kiln_dataset_split(NULL, 0.5, 1, &a, &b);
    expect_global("split NULL", s != KILN_OK, s, KILN_ERR_NULL, "dataset is NULL", NULL, NULL);
    s = kiln_dataset_split(ds, 0.5, 1, NULL, &b);
    expect_global("split NULL out", s != KILN_OK, s, KILN_ERR_NULL, "train is NULL", NULL, NULL);
    /* subsets */
    kiln_dataset *sub = kiln_dataset_subset(ds, (int64_t[]){5, 5, 0}, 3);
    float v[2];
    int32_t yy;
    CHECK(sub && kiln_dataset_get(sub, 1, v, 2, &yy) == KILN_OK && v[0] == 5 && yy == 5, "subset");
    kiln_dataset_free(sub);
    sub = kiln_dataset_subset(ds, (int64_t[]){N}, 1);
    expect_global("subset range", sub == NULL, kiln_last_status(), KILN_ERR_RANGE, "idx[0] = 103 is outside", NULL,
                  NULL);
    kiln_dataset_free(va);
    kiln_dataset_free(tr2);
    kiln_dataset_free(va2);
    kiln_dataset_free(tr3);
    kiln_dataset_free(va3);
    kiln_dataset_free(ds);
    /* from_host faults */
    int32_t yb[3] = {0, 7, 1};
    ds = kiln_dataset_from_host(x, yb, 3, 1, (int64_t[]){2}, 7);
    expect_global("host label range", ds == NULL, kiln_last_status(), KILN_ERR_RANGE,
                  "label 7 at index 1 is outside [0, 7)", NULL, NULL);
    ds = kiln_dataset_from_host(x, y, 0, 1, (int64_t[]){2}, 7);
    expect_global("host n 0", ds == NULL, kiln_last_status(), KILN_ERR_INVALID_ARGUMENT, "no samples", NULL, NULL);
    ds = kiln_dataset_from_host(x, y, 3, 8, (int64_t[]){1, 1, 1, 1, 1, 1, 1, 1}, 7);
    expect_global("host ndim 8", ds == NULL, kiln_last_status(), KILN_ERR_INVALID_ARGUMENT, "8 dims", NULL, NULL);
    ds = kiln_dataset_from_host(x, y, 3, 2, (int64_t[]){2, 0}, 7);
    expect_global("host zero dim", ds == NULL, kiln_last_status(), KILN_ERR_INVALID_ARGUMENT, "[2, 0]", NULL, NULL);
    ds = kiln_dataset_from_host(NULL, y, 3, 1, (int64_t[]){2}, 7);
    expect_global("host NULL", ds == NULL, kiln_last_status(), KILN_ERR_NULL, "x is NULL", NULL, NULL);
    /* accessors on NULL */
    const int64_t *sh = (const int64_t *)1;
    CHECK(kiln_dataset_num_samples(NULL) == 0 && kiln_dataset_shape(NULL, &sh) == 0 && sh == NULL &&
              kiln_dataset_num_classes(NULL) == 0 && kiln_dataset_sample_numel(NULL) == 0,
          "NULL accessors");
    CHECK(kiln_dataset_get(NULL, 0, v, 2, NULL) == KILN_ERR_NULL, "get(NULL)");
    CHECK(kiln_dataset_subset(NULL, NULL, 0) == NULL, "subset(NULL)");
    kiln_dataset_free(NULL);
}

/* ---- the loader (device) ---------------------------------------------------------------- */

/* n samples of shape [C, H, W] with distinct positive values; labels = sample index. */
static kiln_dataset *make_indexed(int64_t n, int64_t C, int64_t H, int64_t W, float **xs) {
    int64_t m = C * H * W;
    float *x = malloc(sizeof(float) * (size_t)(n * m));
    int32_t *y = malloc(sizeof(int32_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++) {
        y[i] = (int32_t)i;
        for (int64_t k = 0; k < m; k++) x[i * m + k] = (float)(1 + (i * 131 + k * 7) % 251);
    }
    kiln_dataset *ds = kiln_dataset_from_host(x, y, n, 3, (int64_t[]){C, H, W}, (int)n);
    free(y);
    if (xs)
        *xs = x;
    else
        free(x);
    return ds;
}

/* ---- an independent model of the loader's shuffle ---------------------------------------- */

static uint64_t ref_sm64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

typedef struct ref_rng {
    uint64_t s[4];
} ref_rng;

static uint64_t ref_next(ref_rng *r) {
    uint64_t *s = r->s;
    uint64_t out = ((s[1] * 5) << 7 | (s[1] * 5) >> 57) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = s[3] << 45 | s[3] >> 19;
    return out;
}

/* Key words (seed, epoch, 0, stream 1 = shuffle), each mixed by a splitmix64 step. */
static void ref_permutation(uint64_t seed, uint64_t epoch, int32_t *p, int n) {
    uint64_t x = seed, h = ref_sm64(&x);
    x = h ^ epoch;
    h = ref_sm64(&x);
    x = h ^ 0;
    h = ref_sm64(&x);
    x = h ^ 1;
    ref_rng r;
    for (int i = 0; i < 4; i++) r.s[i] = ref_sm64(&x);
    for (int i = 0; i < n; i++) p[i] = i;
    for (int i = n - 1; i > 0; i--) {
        uint64_t bound = (uint64_t)i + 1, v, xx;
        do {
            xx = ref_next(&r);
            v = xx % bound;
        } while (xx - v > UINT64_MAX - (bound - 1));
        int32_t t = p[i];
        p[i] = p[v];
        p[v] = t;
    }
}

/* Runs one epoch; appends the labels (sample indices) to order[]; returns the batch count. */
static int64_t epoch_labels(kiln_ctx *ctx, kiln_loader *l, int32_t *order, int64_t cap, int64_t *got) {
    int64_t nb = 0;
    *got = 0;
    for (;;) {
        kiln_tensor *x, *y;
        kiln_scope_begin(ctx);
        if (!kiln_loader_next(l, &x, &y)) {
            kiln_scope_end(ctx);
            break;
        }
        int64_t b = kiln_tensor_shape(y)[0];
        if (*got + b <= cap) kiln_to_host(y, order + *got, sizeof(int32_t) * (size_t)b);
        const int64_t *bi;
        int64_t nbi = kiln_loader_batch_indices(l, &bi);
        bool match = nbi == b;
        for (int64_t k = 0; k < nbi && match && *got + k < cap; k++) match = bi[k] == order[*got + k];
        CHECK(match, "kiln_loader_batch_indices disagrees with the labels");
        *got += b;
        nb++;
        kiln_scope_end(ctx);
    }
    return nb;
}

static void test_loader_batches(kiln_ctx *ctx) {
    float *xs;
    const int64_t C = 2, H = 3, W = 5, m = C * H * W;
    kiln_dataset *ds = make_indexed(10, C, H, W, &xs);
    int64_t before = kiln_ctx_num_tensors(ctx);
    for (int sync = 0; sync < 2; sync++) {
        kiln_loader *l = kiln_loader_new(ctx, ds, &(kiln_loader_opts){.scale = 1, .batch_size = 4, .sync = sync});
        CHECK(l && kiln_loader_num_batches(l) == 3, "loader: %s", kiln_error_message(ctx));
        if (!l) continue;
        int64_t sizes[3] = {4, 4, 2};
        for (int e = 0; e < 2; e++) {
            CHECK(kiln_loader_epoch(l) == e, "epoch %lld, expected %d", (long long)kiln_loader_epoch(l), e);
            for (int b = 0; b < 3; b++) {
                kiln_tensor *x, *y;
                kiln_scope_begin(ctx);
                bool ok = kiln_loader_next(l, &x, &y);
                CHECK(ok, "batch %d: %s", b, kiln_error_message(ctx));
                if (ok) {
                    const int64_t *xsh = kiln_tensor_shape(x);
                    CHECK(kiln_tensor_ndim(x) == 4 && xsh[0] == sizes[b] && xsh[1] == C && xsh[2] == H && xsh[3] == W &&
                              kiln_tensor_dtype(x) == KILN_F32,
                          "batch %d x shape", b);
                    CHECK(kiln_tensor_ndim(y) == 1 && kiln_tensor_shape(y)[0] == sizes[b] &&
                              kiln_tensor_dtype(y) == KILN_I32,
                          "batch %d y shape", b);
                    float hx[4 * 30];
                    int32_t hy[4];
                    kiln_to_host(x, hx, sizeof(float) * (size_t)(sizes[b] * m));
                    kiln_to_host(y, hy, sizeof(int32_t) * (size_t)sizes[b]);
                    bool vals = true;
                    for (int64_t k = 0; k < sizes[b]; k++) {
                        vals &= hy[k] == b * 4 + k;
                        vals &= memcmp(hx + k * m, xs + (b * 4 + k) * m, sizeof(float) * (size_t)m) == 0;
                    }
                    CHECK(vals, "batch %d values are not samples %d.. in order", b, b * 4);
                }
                kiln_scope_end(ctx);
            }
            kiln_tensor *x = (kiln_tensor *)1, *y = (kiln_tensor *)1;
            CHECK(!kiln_loader_next(l, &x, &y) && x == NULL && y == NULL && kiln_error_status(ctx) == KILN_OK,
                  "end of epoch %d not signalled cleanly", e);
        }
        kiln_loader_free(l);
        l = kiln_loader_new(ctx, ds, &(kiln_loader_opts){.scale = 1, .batch_size = 4, .drop_last = true, .sync = sync});
        int32_t order[16];
        int64_t got;
        CHECK(l && kiln_loader_num_batches(l) == 2 && epoch_labels(ctx, l, order, 16, &got) == 2 && got == 8,
              "drop_last: %s", kiln_error_message(ctx));
        kiln_loader_free(l);
    }
    /* guard regions around every storage: the uploads honour the tensor's offset */
    kiln__set_guard(ctx, 7);
    kiln_loader *l = kiln_loader_new(ctx, ds, &(kiln_loader_opts){.scale = 1, .batch_size = 3});
    for (int b = 0; b < 4; b++) {
        kiln_tensor *x, *y;
        kiln_scope_begin(ctx);
        if (kiln_loader_next(l, &x, &y)) {
            float hx[3 * 30];
            kiln_to_host(x, hx, sizeof(float) * (size_t)kiln_tensor_numel(x));
            CHECK(memcmp(hx, xs + b * 3 * m, sizeof(float) * (size_t)kiln_tensor_numel(x)) == 0, "guarded batch %d", b);
        }
        char msg[256];
        CHECK(kiln__check_guards(ctx, msg, sizeof msg) == 0, "guard overwritten: %s", msg);
        kiln_scope_end(ctx);
    }
    kiln_loader_free(l);
    kiln__set_guard(ctx, 0);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "tensors leaked: %lld -> %lld", (long long)before,
          (long long)kiln_ctx_num_tensors(ctx));
    CHECK_OK(ctx);
    free(xs);
    kiln_dataset_free(ds);
}

static void test_loader_shuffle(kiln_ctx *ctx) {
    enum { N = 103, E = 3 };
    kiln_dataset *ds = make_indexed(N, 1, 2, 2, NULL);
    int32_t ord[4][E][N];
    int64_t got;
    /* [0] threaded seed 5, [1] sync seed 5, [2] threaded seed 5 again, [3] seed 6 */
    uint64_t seeds[4] = {5, 5, 5, 6};
    for (int r = 0; r < 4; r++) {
        kiln_loader *l = kiln_loader_new(
            ctx, ds,
            &(kiln_loader_opts){.scale = 1, .batch_size = 10, .shuffle = true, .seed = seeds[r], .sync = r == 1});
        for (int e = 0; e < E; e++) {
            int64_t nb = epoch_labels(ctx, l, ord[r][e], N, &got);
            CHECK(nb == 11 && got == N, "run %d epoch %d: %lld batches %lld samples", r, e, (long long)nb,
                  (long long)got);
            int seen[N] = {0};
            bool perm = true;
            for (int i = 0; i < N; i++) {
                if (ord[r][e][i] >= 0 && ord[r][e][i] < N)
                    seen[ord[r][e][i]]++;
                else
                    perm = false;
            }
            for (int i = 0; i < N; i++) perm &= seen[i] == 1;
            CHECK(perm, "run %d epoch %d: not every sample exactly once", r, e);
        }
        kiln_loader_free(l);
    }
    CHECK(memcmp(ord[0], ord[1], sizeof ord[0]) == 0, "threaded and sync loaders differ");
    CHECK(memcmp(ord[0], ord[2], sizeof ord[0]) == 0, "same seed, another order");
    CHECK(memcmp(ord[0][0], ord[3][0], sizeof ord[0][0]) != 0, "seeds 5 and 6 give the same order");
    CHECK(memcmp(ord[0][0], ord[0][1], sizeof ord[0][0]) != 0 && memcmp(ord[0][1], ord[0][2], sizeof ord[0][0]) != 0,
          "epochs repeat the same order");
    int ident = 0;
    for (int i = 0; i < N; i++) ident += ord[0][0][i] == i;
    CHECK(ident < N / 4, "shuffled order looks unshuffled (%d fixed points)", ident);
    /* The order is a function of (seed, epoch) only, as documented: an independent
     * Fisher-Yates driven by xoshiro256** seeded through splitmix64 reproduces it. */
    for (int e = 0; e < E; e++) {
        int32_t want[N];
        ref_permutation(5, (uint64_t)e, want, N);
        CHECK(memcmp(want, ord[0][e], sizeof want) == 0, "epoch %d order differs from the reference permutation", e);
    }
    /* set_epoch and reset replay; a loader mid-epoch restarts cleanly */
    kiln_loader *l =
        kiln_loader_new(ctx, ds, &(kiln_loader_opts){.scale = 1, .batch_size = 10, .shuffle = true, .seed = 5});
    int32_t tmp[N];
    CHECK(kiln_loader_set_epoch(l, 2) == KILN_OK && kiln_loader_epoch(l) == 2, "set_epoch");
    epoch_labels(ctx, l, tmp, N, &got);
    CHECK(memcmp(tmp, ord[0][2], sizeof tmp) == 0, "set_epoch(2) does not replay epoch 2");
    CHECK(kiln_loader_epoch(l) == 3, "after epoch 2 the loader is at %lld", (long long)kiln_loader_epoch(l));
    for (int k = 0; k < 4; k++) { /* take 4 batches of epoch 3, then restart it */
        kiln_tensor *x, *y;
        kiln_scope_begin(ctx);
        kiln_loader_next(l, &x, &y);
        kiln_scope_end(ctx);
    }
    CHECK(kiln_loader_reset(l) == KILN_OK && kiln_loader_epoch(l) == 3, "reset");
    int32_t tmp2[N];
    epoch_labels(ctx, l, tmp2, N, &got);
    kiln_loader_set_epoch(l, 3);
    epoch_labels(ctx, l, tmp, N, &got);
    CHECK(got == N && memcmp(tmp, tmp2, sizeof tmp) == 0, "reset mid-epoch does not replay the epoch");
    kiln_status s = kiln_loader_set_epoch(l, -1);
    CHECK(s == KILN_ERR_RANGE && strstr(kiln_error_message(ctx), "epoch -1"), "set_epoch(-1): %s",
          kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_loader_free(l);
    /* Without shuffle the order is the dataset's (checked in test_loader_batches). */
    kiln_dataset_free(ds);
    CHECK_OK(ctx);
}

static void test_loader_normalise(kiln_ctx *ctx) {
    float *xs;
    const int64_t C = 3, H = 4, W = 5, m = C * H * W, N = 7;
    kiln_dataset *ds = make_indexed(N, C, H, W, &xs);
    float mean[3] = {0.5f, 0.25f, -0.125f}, sd[3] = {0.3f, 0.2f, 1.7f};
    struct {
        float scale;
        int nc;
    } cases[] = {{1.0f / 255, 3}, {1.0f / 255, 1}, {0.5f, 0}, {1, 3}, {-2, 1}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        kiln_loader *l = kiln_loader_new(
            ctx, ds,
            &(kiln_loader_opts){
                .batch_size = N, .scale = cases[c].scale, .norm_count = cases[c].nc, .mean = mean, .std = sd});
        kiln_tensor *x, *y;
        kiln_scope_begin(ctx);
        if (kiln_loader_next(l, &x, &y)) {
            float *got = h_read(x);
            double *ref = malloc(sizeof(double) * (size_t)(N * m));
            double scale = cases[c].scale;
            for (int64_t i = 0; i < N * m; i++) {
                int ch = (int)((i % m) / (H * W));
                double v = xs[i] * scale;
                if (cases[c].nc == 3) v = (v - mean[ch]) / sd[ch];
                if (cases[c].nc == 1) v = (v - mean[0]) / sd[0];
                ref[i] = v;
            }
            char what[64];
            snprintf(what, sizeof what, "normalise case %zu", c);
            h_compare(what, got, ref, N * m, 1e-7, 4 * 0x1p-24);
            free(got);
            free(ref);
        } else {
            CHECK(0, "normalise case %zu: %s", c, kiln_error_message(ctx));
        }
        kiln_scope_end(ctx);
        kiln_loader_free(l);
    }
    /* per-feature normalisation of 1-D samples */
    float fx[6] = {1, 10, 2, 20, 3, 30};
    int32_t fy[3] = {0, 1, 0};
    kiln_dataset *fds = kiln_dataset_from_host(fx, fy, 3, 1, (int64_t[]){2}, 2);
    kiln_loader *l = kiln_loader_new(
        ctx, fds,
        &(kiln_loader_opts){
            .scale = 1, .batch_size = 3, .norm_count = 2, .mean = (float[]){2, 20}, .std = (float[]){1, 10}});
    kiln_tensor *x, *y;
    kiln_scope_begin(ctx);
    if (l && kiln_loader_next(l, &x, &y)) {
        float h[6];
        kiln_to_host(x, h, sizeof h);
        CHECK(h[0] == -1 && h[1] == -1 && h[2] == 0 && h[3] == 0 && h[4] == 1 && h[5] == 1,
              "per-feature: %g %g %g %g %g %g", h[0], h[1], h[2], h[3], h[4], h[5]);
    } else {
        CHECK(0, "per-feature loader: %s", kiln_error_message(ctx));
    }
    kiln_scope_end(ctx);
    kiln_loader_free(l);
    kiln_dataset_free(fds);
    free(xs);
    kiln_dataset_free(ds);
    CHECK_OK(ctx);
}

/* Finds the (dy, dx, flip) that maps src [C, H, W] onto out exactly, with zeros where the
 * window leaves the sample. Returns false when none does. */
static bool explain_aug(const float *src, const float *out, int64_t C, int64_t H, int64_t W, int pad, bool allow_flip,
                        int *fdy, int *fdx, int *fflip, int64_t *zeros) {
    for (int flip = 0; flip <= (allow_flip ? 1 : 0); flip++)
        for (int dy = -pad; dy <= pad; dy++)
            for (int dx = -pad; dx <= pad; dx++) {
                bool ok = true;
                int64_t z = 0;
                for (int64_t c = 0; c < C && ok; c++)
                    for (int64_t yy = 0; yy < H && ok; yy++)
                        for (int64_t xx = 0; xx < W && ok; xx++) {
                            int64_t sy = yy + dy, sx = (flip ? W - 1 - xx : xx) + dx;
                            float want = (sy >= 0 && sy < H && sx >= 0 && sx < W) ? src[(c * H + sy) * W + sx] : 0.0f;
                            ok = out[(c * H + yy) * W + xx] == want;
                            z += want == 0;
                        }
                if (ok) {
                    *fdy = dy;
                    *fdx = dx;
                    *fflip = flip;
                    *zeros = z;
                    return true;
                }
            }
    return false;
}

static void test_loader_augment(kiln_ctx *ctx) {
    float *xs;
    const int64_t C = 2, H = 5, W = 6, m = C * H * W, N = 64;
    kiln_dataset *ds = make_indexed(N, C, H, W, &xs); /* values 1..251: a 0 is padding */
    struct {
        int pad;
        bool flip;
    } cases[] = {{0, true}, {2, false}, {3, true}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        float *out[2] = {NULL, NULL};
        for (int r = 0; r < 2; r++) { /* twice, threaded then sync: same augmentation */
            kiln_loader *l = kiln_loader_new(ctx, ds,
                                             &(kiln_loader_opts){.scale = 1,
                                                                 .batch_size = N,
                                                                 .seed = 3,
                                                                 .sync = r == 1,
                                                                 .crop_padding = cases[c].pad,
                                                                 .hflip = cases[c].flip});
            kiln_tensor *x, *y;
            kiln_scope_begin(ctx);
            if (l && kiln_loader_next(l, &x, &y)) {
                const int64_t *sh = kiln_tensor_shape(x);
                CHECK(sh[0] == N && sh[1] == C && sh[2] == H && sh[3] == W, "augment keeps the shape");
                out[r] = h_read(x);
            } else {
                CHECK(0, "augment case %zu: %s", c, kiln_error_message(ctx));
            }
            kiln_scope_end(ctx);
            kiln_loader_free(l);
        }
        if (!out[0] || !out[1]) {
            free(out[0]);
            free(out[1]);
            continue;
        }
        CHECK(memcmp(out[0], out[1], sizeof(float) * (size_t)(N * m)) == 0, "case %zu: threaded and sync differ", c);
        int flips = 0, shifts = 0, bad = 0;
        int64_t zeros = 0;
        bool zeros_ok = true;
        for (int64_t i = 0; i < N; i++) {
            int dy, dx, fl;
            int64_t z;
            if (!explain_aug(xs + i * m, out[0] + i * m, C, H, W, cases[c].pad, cases[c].flip, &dy, &dx, &fl, &z)) {
                bad++;
                continue;
            }
            flips += fl;
            shifts += dy != 0 || dx != 0;
            zeros += z;
            /* exactly the vacated rows/columns are zero */
            int64_t want_z = C * (H * W - (H - llabs(dy)) * (W - llabs(dx)));
            zeros_ok &= z == want_z;
        }
        CHECK(bad == 0, "case %zu: %d samples are not a crop/flip of their source", c, bad);
        CHECK(zeros_ok, "case %zu: padding is not exactly the vacated border", c);
        if (cases[c].flip) CHECK(flips > 8 && flips < N - 8, "case %zu: %d of %lld flipped", c, flips, (long long)N);
        if (cases[c].pad)
            CHECK(shifts > N / 2 && zeros > 0, "case %zu: %d of %lld shifted", c, shifts, (long long)N);
        else
            CHECK(shifts == 0 && zeros == 0, "case %zu: shifted without padding", c);
        free(out[0]);
        free(out[1]);
    }
    /* the next epoch draws other augmentations; padding becomes -mean/std after normalising */
    kiln_loader *l = kiln_loader_new(ctx, ds,
                                     &(kiln_loader_opts){.batch_size = N,
                                                         .seed = 3,
                                                         .crop_padding = 2,
                                                         .hflip = true,
                                                         .scale = 0.5f,
                                                         .norm_count = 1,
                                                         .mean = (float[]){1},
                                                         .std = (float[]){4}});
    float *e[2] = {NULL, NULL};
    for (int ep = 0; ep < 2; ep++) {
        kiln_tensor *x, *y;
        kiln_scope_begin(ctx);
        if (kiln_loader_next(l, &x, &y)) e[ep] = h_read(x);
        kiln_tensor *x2, *y2;
        CHECK(!kiln_loader_next(l, &x2, &y2), "one batch per epoch");
        kiln_scope_end(ctx);
    }
    if (e[0] && e[1]) {
        CHECK(memcmp(e[0], e[1], sizeof(float) * (size_t)(N * m)) != 0, "epochs 0 and 1 augment alike");
        int64_t pads = 0;
        bool ok = true;
        for (int64_t i = 0; i < N * m; i++) {
            pads += e[0][i] == -0.25f;
            /* every value is (v * 0.5 - 1) / 4 for some v in {0} + 1..251 */
            float v = (e[0][i] * 4 + 1) * 2;
            ok &= v == roundf(v) && v >= 0 && v <= 251;
        }
        CHECK(pads > 0 && ok, "normalised padding: %lld values at -mean/std, values ok %d", (long long)pads, ok);
    }
    free(e[0]);
    free(e[1]);
    kiln_loader_free(l);
    free(xs);
    kiln_dataset_free(ds);
    CHECK_OK(ctx);
}

static void test_loader_fashion(kiln_ctx *ctx) {
    if (!have_fashion()) return;
    kiln_dataset *ds = kiln_fashion_mnist(NULL, false);
    if (!ds) {
        CHECK(0, "fashion: %s", kiln_last_error());
        return;
    }
    int64_t before = kiln_ctx_num_tensors(ctx);
    kiln_loader *l = kiln_loader_new(ctx, ds, &(kiln_loader_opts){.batch_size = 64, .scale = 1.0f / 255});
    kiln_dataset_free(ds); /* the loader keeps the data */
    CHECK(kiln_loader_num_batches(l) == 157, "10000 / 64: %lld batches", (long long)kiln_loader_num_batches(l));
    int64_t nb = 0, total = 0, last = 0;
    double t0 = kiln__now_ms();
    for (;;) {
        kiln_tensor *x, *y;
        kiln_scope_begin(ctx);
        if (!kiln_loader_next(l, &x, &y)) {
            kiln_scope_end(ctx);
            break;
        }
        last = kiln_tensor_shape(x)[0];
        if (nb == 0) {
            CHECK(kiln_tensor_ndim(x) == 4 && kiln_tensor_shape(x)[1] == 1 && kiln_tensor_shape(x)[2] == 28 &&
                      kiln_tensor_shape(x)[3] == 28,
                  "fashion batch shape");
            float *h = h_read(x);
            double s = 0;
            for (int k = 0; k < 784; k++) s += h[k];
            CHECK(fabs(s * 255 - 33456) < 1e-2, "first test image sum %.4f * 255", s);
            int32_t hy[64];
            kiln_to_host(y, hy, sizeof hy);
            int want[10] = {9, 2, 1, 1, 6, 1, 4, 6, 5, 7};
            bool ok = true;
            for (int k = 0; k < 10; k++) ok &= hy[k] == want[k];
            CHECK(ok, "first test labels");
            free(h);
        }
        nb++;
        total += last;
        kiln_scope_end(ctx);
    }
    fprintf(stderr, "  fashion test set: %lld batches in %.0f ms\n", (long long)nb, kiln__now_ms() - t0);
    CHECK(nb == 157 && total == 10000 && last == 16, "%lld batches, %lld samples, last %lld", (long long)nb,
          (long long)total, (long long)last);
    kiln_loader_free(l);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "fashion loader leaked tensors");
    CHECK_OK(ctx);
}

static void test_loader_errors(kiln_ctx *ctx) {
    kiln_dataset *ds = make_indexed(10, 1, 2, 3, NULL);
    float fx[4] = {1, 2, 3, 4};
    int32_t fy[2] = {0, 1};
    kiln_dataset *flat = kiln_dataset_from_host(fx, fy, 2, 1, (int64_t[]){2}, 2);
    int64_t before = kiln_ctx_num_tensors(ctx);
    struct {
        const char *name;
        const kiln_dataset *ds;
        kiln_loader_opts o;
        kiln_status st;
        const char *want;
    } cases[] = {
        {"negative batch", ds, {.batch_size = -2, .scale = 1}, KILN_ERR_INVALID_ARGUMENT, "batch_size -2"},
        /* options are literal: a zeroed struct is not the defaults, and says where they are */
        {"zero batch",
         ds,
         {.scale = 1},
         KILN_ERR_INVALID_ARGUMENT,
         "batch_size 0 (samples [1, 2, 3]) must be "
         "positive and give batches of fewer than 2^31 values (start from kiln_loader_defaults()"},
        {"zero scale",
         ds,
         {.batch_size = 2},
         KILN_ERR_INVALID_ARGUMENT,
         "scale 0 must be finite and non-zero (start from kiln_loader_defaults()"},
        {"drop_last empty",
         ds,
         {.batch_size = 11, .scale = 1, .drop_last = true},
         KILN_ERR_INVALID_ARGUMENT,
         "10 samples make no full batch of 11"},
        {"norm count",
         ds,
         {.batch_size = 1, .scale = 1, .norm_count = 2, .mean = (float[]){0, 0}, .std = (float[]){1, 1}},
         KILN_ERR_SHAPE,
         "norm_count 2 must be 0, 1 or the size of the first dim of the samples [1, 2, 3] (1)"},
        {"norm NULL", ds, {.batch_size = 1, .scale = 1, .norm_count = 1}, KILN_ERR_NULL, "mean is NULL"},
        {"std zero",
         ds,
         {.batch_size = 1, .scale = 1, .norm_count = 1, .mean = (float[]){0}, .std = (float[]){0}},
         KILN_ERR_INVALID_ARGUMENT,
         "std[0] = 0"},
        {"crop 1-D", flat, {.batch_size = 1, .scale = 1, .crop_padding = 1}, KILN_ERR_SHAPE, "samples are [2]"},
        {"flip 1-D", flat, {.batch_size = 1, .scale = 1, .hflip = true}, KILN_ERR_SHAPE, "samples are [2]"},
        {"negative pad",
         ds,
         {.batch_size = 1, .scale = 1, .crop_padding = -1},
         KILN_ERR_INVALID_ARGUMENT,
         "crop_padding -1"},
        {"scale inf", ds, {.batch_size = 1, .scale = INFINITY}, KILN_ERR_INVALID_ARGUMENT, "scale inf"},
        {"huge batch", ds, {.batch_size = 1LL << 40, .scale = 1}, KILN_ERR_INVALID_ARGUMENT, "fewer than 2^31"},
        {"NULL dataset", NULL, {.batch_size = 1, .scale = 1}, KILN_ERR_NULL, "dataset is NULL"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        kiln_loader *l = kiln_loader_new(ctx, cases[c].ds, &cases[c].o);
        const char *m = kiln_error_message(ctx);
        CHECK(l == NULL && kiln_error_status(ctx) == cases[c].st && strstr(m, "kiln_loader_new") &&
                  strstr(m, cases[c].want),
              "%s: status %s message '%s'", cases[c].name, kiln_status_name(kiln_error_status(ctx)), m);
        kiln_loader_free(l);
        kiln_error_clear(ctx);
    }
    kiln_dataset *tr, *va;
    kiln_dataset_split(ds, 0, 1, &tr, &va);
    kiln_loader *l = kiln_loader_new(ctx, va, NULL);
    CHECK(l == NULL && strstr(kiln_error_message(ctx), "empty"), "empty dataset: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_dataset_free(tr);
    kiln_dataset_free(va);
    CHECK(kiln_loader_new(NULL, ds, NULL) == NULL && strstr(kiln_last_error(), "ctx is NULL"), "NULL ctx");
    kiln_tensor *x = (kiln_tensor *)1, *y = (kiln_tensor *)1;
    CHECK(!kiln_loader_next(NULL, &x, &y) && x == NULL && y == NULL && strstr(kiln_last_error(), "loader is NULL"),
          "next(NULL)");
    kiln_loader_opts dflt = kiln_loader_defaults(); /* torch's DataLoader: batch_size 1, no shuffle */
    CHECK(dflt.batch_size == 1 && !dflt.shuffle && !dflt.drop_last && dflt.scale == 1 && dflt.norm_count == 0 &&
              dflt.crop_padding == 0 && !dflt.hflip && !dflt.sync,
          "kiln_loader_defaults");
    l = kiln_loader_new(ctx, ds, NULL); /* the defaults: ten batches of one */
    CHECK(l && kiln_loader_num_batches(l) == 10, "default loader: %s", kiln_error_message(ctx));
    CHECK(!kiln_loader_next(l, NULL, &y) && kiln_error_status(ctx) == KILN_ERR_NULL &&
              strstr(kiln_error_message(ctx), "x is NULL"),
          "next(x NULL): %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    /* a failed upload (device memory "full") leaves the batch for a retry and leaks nothing */
    kiln_scope_begin(ctx);
    kiln__pool_fail_after(ctx, 1);
    bool ok = kiln_loader_next(l, &x, &y);
    CHECK(!ok && x == NULL && kiln_error_status(ctx) == KILN_ERR_OUT_OF_MEMORY, "injected OOM: %s",
          kiln_error_message(ctx));
    kiln__pool_fail_after(ctx, 0);
    kiln_error_clear(ctx);
    ok = kiln_loader_next(l, &x, &y);
    CHECK(ok && kiln_tensor_shape(x)[0] == 1, "retry after OOM: %s", kiln_error_message(ctx));
    kiln_scope_end(ctx);
    kiln_loader_free(l);
    CHECK(kiln_loader_num_batches(NULL) == 0 && kiln_loader_epoch(NULL) == 0 &&
              kiln_loader_batch_indices(NULL, NULL) == 0 && kiln_loader_set_epoch(NULL, 0) == KILN_ERR_NULL &&
              kiln_loader_reset(NULL) == KILN_ERR_NULL,
          "NULL loader accessors");
    kiln_loader_free(NULL);
    /* free a loader whose worker is ahead, mid-epoch, with writes in flight */
    l = kiln_loader_new(ctx, ds, &(kiln_loader_opts){.scale = 1, .batch_size = 2, .shuffle = true});
    kiln_scope_begin(ctx);
    kiln_loader_next(l, &x, &y);
    kiln_loader_free(l);
    kiln_scope_end(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "loader errors leaked tensors: %lld -> %lld", (long long)before,
          (long long)kiln_ctx_num_tensors(ctx));
    kiln_dataset_free(ds);
    kiln_dataset_free(flat);
    CHECK_OK(ctx);
}

static void run(kiln_ctx *ctx) {
    test_loader_batches(ctx);
    test_loader_shuffle(ctx);
    test_loader_normalise(ctx);
    test_loader_augment(ctx);
    test_loader_fashion(ctx);
    test_loader_errors(ctx);
}

/* Removes the fixtures (the directory is flat and ours: mkdtemp made it). */
static void cleanup_tmp(void) {
    DIR *d = opendir(tmpdir);
    if (!d) return;
    struct dirent *e;
    char p[600];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(tmpdir);
}

int main(void) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/kiln-data-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "mkdtemp failed\n");
        return 1;
    }
    test_idx_real();
    test_fashion_dataset();
    test_idx_types();
    test_idx_faults();
    test_idx_mutations();
    test_csv();
    test_dataset_idx_faults();
    test_dataset_csv();
    test_dataset_host_split();

    kiln_device_info info[16];
    int nd = 0;
    if (kiln_devices(info, 16, &nd) != KILN_OK || nd == 0) {
        fprintf(stderr, "no OpenCL device: loader checks skipped (%s)\n", kiln_last_error());
        cleanup_tmp();
        printf("%d checks, %d failed\n", h_checks, h_failed);
        return h_failed ? 1 : 77;
    }
    H_FOR_EACH_DEVICE(run);
    cleanup_tmp();
    return h_finish();
}

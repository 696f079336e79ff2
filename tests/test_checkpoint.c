/* tests/test_checkpoint.c - the safetensors reader and writer (src/io/safetensors.c) and
 * model / training checkpoints (src/io/checkpoint.c).
 *
 * What is checked, and how each check can fail:
 *   round trip    a conv-batchnorm-relu-flatten-linear model (with running statistics and an
 *                 I32 num_batches_tracked advanced by training forwards) saved and loaded
 *                 into a model built from another seed: every tensor bit-identical (memcmp of
 *                 host copies; the two models differ before the load), and the next training
 *                 forward of both gives identical outputs and counts (a stale host copy of
 *                 num_batches_tracked would not). Metadata: version, model, description.
 *   PyTorch       tests/golden/torch_state.safetensors (gen_checkpoint.py: a torch
 *                 state_dict, I64 num_batches_tracked = 3) loads into the kiln twin: every
 *                 value bit-identical to the file's bytes (read by an independent text scan
 *                 of the header, not by the library), and the eval output on the golden
 *                 input matches torch's (tests/golden/checkpoint.safetensors x, y) within
 *                 atol = rtol = 1e-5: a 3x3 conv, batch norm and a 64-term dot product in
 *                 float, summed in another order than ATen's (a few ulp of |terms| ~ 1).
 *                 A kiln-written file and torch's file obey the same header layout: 8-byte
 *                 little-endian length, JSON object padded with spaces to 8 bytes, data
 *                 offsets contiguous from 0 to the end of the file.
 *   strict        missing, unexpected, other-shape and other-dtype tensors: strict load fails
 *                 naming them with the model unchanged (all tensors compared before/after);
 *                 non-strict loads exactly the matching ones and the report counts them.
 *   corruption    every truncation of two valid files, and ~50 malformed headers (bad
 *                 lengths, non-JSON, duplicate keys, overlapping / reversed / gapped /
 *                 out-of-range offsets, size disagreeing with shape x dtype, unknown dtypes,
 *                 dims that overflow, bad escapes), a missing file and a directory: each
 *                 fails with KILN_ERR_CORRUPT or KILN_ERR_IO naming the source; a model that
 *                 was the target of all the file cases is unchanged at the end.
 *   dtypes        F16, BF16, F64, I64, I16, I8, U8 and BOOL entries convert to F32 / I32 with
 *                 exact expected values; an I64 outside i32 is KILN_ERR_RANGE.
 *   atomic save   kiln__io_fail_after(n) fails the nth write step for n = 1, 2, ... until a
 *                 save succeeds: every failure returns KILN_ERR_IO naming the file, leaves
 *                 the previous file byte-identical and loadable and no temporary file.
 *   resume        training 8 steps straight equals training 4, checkpointing, loading into a
 *                 fresh model and optimizer (other seed, other lr, RNG moved) and training 4
 *                 more, bit for bit, for Adam and for SGD with momentum; the model has
 *                 dropout and batch norm. Controls: moving the RNG after the load changes the
 *                 result (so the check sees the RNG position). Loading into another optimizer
 *                 kind, or a checkpoint lacking a step count, a state tensor of the wrong
 *                 shape or an unknown state key fails and changes nothing (model, optimizer
 *                 state, steps, lr, RNG position compared).
 *   arguments     NULL arguments return KILN_ERR_NULL (or NULL) without crashing; duplicate
 *                 names and metadata keys kiln writes itself are refused; views save row-major.
 *
 * Files live in a fresh mkdtemp directory, removed at the end.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "golden.h"
#include "io/io_internal.h"

static char tmpdir[256];

/* ---- files ------------------------------------------------------------------------------ */

static void path_in(char *buf, size_t cap, const char *name) { snprintf(buf, cap, "%s/%s", tmpdir, name); }

static bool write_bytes(const char *p, const void *data, size_t len) {
    FILE *f = fopen(p, "wb");
    if (!f) return false;
    bool ok = len == 0 || fwrite(data, 1, len, f) == len;
    return fclose(f) == 0 && ok;
}

static unsigned char *read_bytes(const char *p, size_t *len) {
    *len = 0;
    FILE *f = fopen(p, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)(n > 0 ? n : 1));
    if (b) *len = fread(b, 1, (size_t)n, f);
    fclose(f);
    return b;
}

/* Files in the temp dir whose name contains `part` (temporary files of the writer). */
static int count_files_with(const char *part) {
    DIR *d = opendir(tmpdir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, part)) n++;
    closedir(d);
    return n;
}

static void cleanup_tmp(void) {
    DIR *d = opendir(tmpdir);
    if (!d) return;
    struct dirent *e;
    char p[600];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
        if (unlink(p) != 0) rmdir(p);
    }
    closedir(d);
    rmdir(tmpdir);
}

/* ---- errors ----------------------------------------------------------------------------- */

/* Checks that `got` is `want`, that the context holds it with a message containing every
 * needle, then clears the error. */
static void expect_err_(kiln_ctx *ctx, int line, const char *what, kiln_status got, kiln_status want,
                        const char *const *needles) {
    const char *msg = kiln_error_message(ctx);
    CHECK(got == want, "line %d, %s: status %s, expected %s (%s)", line, what, kiln_status_name(got),
          kiln_status_name(want), msg);
    CHECK(kiln_error_status(ctx) == want, "line %d, %s: context holds %s, expected %s", line, what,
          kiln_status_name(kiln_error_status(ctx)), kiln_status_name(want));
    for (int k = 0; needles[k]; k++)
        CHECK(strstr(msg, needles[k]) != NULL, "line %d, %s: message lacks '%s': %s", line, what, needles[k], msg);
    kiln_error_clear(ctx);
}
#define EXPECT_ERR(ctx, what, got, want, ...)                                                                          \
    expect_err_(ctx, __LINE__, what, got, want, (const char *const[]){__VA_ARGS__, NULL})

/* ---- snapshots: host copies of every tensor of a model (and optimizer) ------------------ */

typedef struct snap_t {
    char name[128];
    kiln_dtype dtype;
    int ndim;
    int64_t shape[KILN_MAX_DIMS];
    size_t bytes;
    unsigned char *data;
} snap_t;

typedef struct snap {
    int n;
    snap_t t[64];
    /* optimizer */
    bool has_opt;
    int64_t steps[32];
    int nsteps;
    double lr;
    uint64_t seed, counter; /* the context's RNG position */
} snap;

static void snap_add(snap *s, const char *name, kiln_tensor *t) {
    if (s->n == 64 || !t) {
        CHECK(0, "snapshot: too many tensors or NULL '%s'", name);
        return;
    }
    snap_t *e = &s->t[s->n++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->dtype = kiln_tensor_dtype(t);
    e->ndim = kiln_tensor_ndim(t);
    memcpy(e->shape, kiln_tensor_shape(t), sizeof(int64_t) * (size_t)e->ndim);
    e->bytes = (size_t)kiln_tensor_numel(t) * kiln_dtype_size(e->dtype);
    e->data = malloc(e->bytes ? e->bytes : 1);
    kiln_status st = kiln_to_host(t, e->data, e->bytes);
    CHECK(st == KILN_OK, "snapshot of %s: %s", name, kiln_error_message(kiln_tensor_ctx(t)));
}

static snap *snap_take(kiln_module *m, kiln_optim *opt) {
    snap *s = calloc(1, sizeof *s);
    kiln_named_tensor st[64];
    int n = kiln_module_state(m, st, 64);
    for (int i = 0; i < n && i < 64; i++) snap_add(s, st[i].name, st[i].tensor);
    if (opt) {
        s->has_opt = true;
        const char *name;
        kiln_tensor *t;
        char full[160];
        for (int i = 0; i < kiln_optim_num_states(opt) && kiln_optim_state(opt, i, &name, &t) == KILN_OK; i++) {
            snprintf(full, sizeof full, "optimizer.%s", name);
            snap_add(s, full, t);
        }
        s->nsteps = kiln_optim_num_params(opt);
        for (int i = 0; i < s->nsteps && i < 32; i++) s->steps[i] = kiln_optim_step_count(opt, i);
        s->lr = kiln_optim_lr(opt);
    }
    kiln_ctx *ctx = kiln_module_ctx(m);
    s->seed = ctx->seed;
    s->counter = ctx->rng_counter;
    return s;
}

static void snap_free(snap *s) {
    if (!s) return;
    for (int i = 0; i < s->n; i++) free(s->t[i].data);
    free(s);
}

static const snap_t *snap_get(const snap *s, const char *name) {
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->t[i].name, name) == 0) return &s->t[i];
    return NULL;
}

static bool snap_t_equal(const snap_t *a, const snap_t *b) {
    return a && b && a->dtype == b->dtype && a->ndim == b->ndim &&
           memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim) == 0 && a->bytes == b->bytes &&
           memcmp(a->data, b->data, a->bytes) == 0;
}

/* Number of differences between two snapshots (tensors by name, the set of names, steps,
 * lr, RNG position when rng); the first goes into why. */
static int snap_diff(const snap *a, const snap *b, bool rng, char *why, size_t cap) {
    int d = 0;
    why[0] = '\0';
#define DIFF(...)                                                                                                      \
    do {                                                                                                               \
        if (d++ == 0) snprintf(why, cap, __VA_ARGS__);                                                                 \
    } while (0)
    if (a->n != b->n) DIFF("%d tensors vs %d", a->n, b->n);
    for (int i = 0; i < a->n; i++) {
        const snap_t *o = snap_get(b, a->t[i].name);
        if (!o)
            DIFF("'%s' only in one", a->t[i].name);
        else if (!snap_t_equal(&a->t[i], o))
            DIFF("'%s' differs", a->t[i].name);
    }
    if (a->has_opt && b->has_opt) {
        if (a->nsteps != b->nsteps) DIFF("%d vs %d step counts", a->nsteps, b->nsteps);
        for (int i = 0; i < a->nsteps && i < b->nsteps && i < 32; i++)
            if (a->steps[i] != b->steps[i])
                DIFF("step of parameter %d: %lld vs %lld", i, (long long)a->steps[i], (long long)b->steps[i]);
        if (a->lr != b->lr) DIFF("lr %.17g vs %.17g", a->lr, b->lr);
    }
    if (rng && (a->seed != b->seed || a->counter != b->counter))
        DIFF("RNG (%llu, %llu) vs (%llu, %llu)", (unsigned long long)a->seed, (unsigned long long)a->counter,
             (unsigned long long)b->seed, (unsigned long long)b->counter);
#undef DIFF
    return d;
}

/* ---- models ------------------------------------------------------------------------------ */

/* torch: Sequential(Conv2d(1, 4, 3), BatchNorm2d(4), ReLU(), Flatten(), Linear(64, 3)),
 * input [N, 1, 6, 6]: the twin of tests/golden/gen_checkpoint.py. */
static kiln_module *cnn(kiln_ctx *ctx, uint64_t seed) {
    kiln_manual_seed(ctx, seed);
    return kiln_nn_sequential(ctx, 5,
                              (kiln_module *[]){kiln_nn_conv2d(ctx, 1, 4, 3, 3, NULL, true),
                                                kiln_nn_batchnorm2d(ctx, 4, 1e-5f, 0.1f),
                                                kiln_nn_activation(ctx, KILN_ACT_RELU, 0), kiln_nn_flatten(ctx, 1, -1),
                                                kiln_nn_linear(ctx, 64, 3, true)});
}
#define CNN_TENSORS 9

/* n training forwards on random inputs: running statistics and num_batches_tracked move. */
static void cnn_forwards(kiln_ctx *ctx, kiln_module *m, int n) {
    kiln_module_train(m, true);
    for (int i = 0; i < n; i++) {
        kiln_scope_begin(ctx);
        kiln_tensor *y = kiln_forward(m, kiln_rand_normal(ctx, 0, 1, 4, (int64_t[]){8, 1, 6, 6}));
        float h[24];
        CHECK(y && kiln_to_host(y, h, sizeof h) == KILN_OK, "training forward: %s", kiln_error_message(ctx));
        kiln_scope_end(ctx);
    }
}

static int32_t nbt_value(kiln_module *m, const char *name) {
    int32_t v = -1;
    kiln_tensor *t = kiln_module_find(m, name);
    CHECK(t && kiln_tensor_dtype(t) == KILN_I32 && kiln_to_host(t, &v, sizeof v) == KILN_OK, "%s unreadable", name);
    return v;
}

/* ---- an independent reader of header text (not the library's parser) ------------------- */

typedef struct rawfile {
    unsigned char *buf;
    size_t len;
    uint64_t hl;
    char *hdr; /* NUL-terminated copy of the header */
} rawfile;

static bool raw_open(rawfile *r, const char *path) {
    memset(r, 0, sizeof *r);
    r->buf = read_bytes(path, &r->len);
    if (!r->buf || r->len < 8) return false;
    for (int k = 7; k >= 0; k--) r->hl = r->hl << 8 | r->buf[k];
    if (r->hl > r->len - 8) return false;
    r->hdr = malloc(r->hl + 1);
    memcpy(r->hdr, r->buf + 8, r->hl);
    r->hdr[r->hl] = '\0';
    return true;
}

static void raw_close(rawfile *r) {
    free(r->buf);
    free(r->hdr);
    memset(r, 0, sizeof *r);
}

/* Entry `name`: dtype and data range (relative to the data section). */
static bool raw_entry(const rawfile *r, const char *name, char dtype[16], int64_t *b, int64_t *e) {
    char needle[200];
    snprintf(needle, sizeof needle, "\"%s\"", name);
    const char *p = r->hdr;
    while ((p = strstr(p, needle)) != NULL) {
        const char *q = p + strlen(needle);
        while (*q == ' ') q++;
        if (*q == ':') break;
        p = q;
    }
    if (!p) return false;
    const char *close = strchr(p, '}');
    const char *dt = strstr(p, "\"dtype\"");
    const char *of = strstr(p, "\"data_offsets\"");
    if (!close || !dt || !of || dt > close || of > close) return false;
    dt = strchr(dt + 7, '"');
    if (!dt) return false;
    size_t k = 0;
    for (dt++; *dt && *dt != '"' && k < 15; dt++) dtype[k++] = *dt;
    dtype[k] = '\0';
    of = strchr(of, '[');
    if (!of) return false;
    char *end;
    *b = strtoll(of + 1, &end, 10);
    while (*end == ' ' || *end == ',') end++;
    *e = strtoll(end, &end, 10);
    return true;
}

static int cmp_pair(const void *a, const void *b) {
    const int64_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* The layout rules of the format, checked on the raw bytes: 8-byte little-endian length,
 * a JSON object padded with spaces to a multiple of 8, no control bytes, one __metadata__,
 * ntensors data_offsets pairs that tile the data section exactly. */
static void check_layout(const char *path, int ntensors) {
    rawfile r;
    bool ok = raw_open(&r, path);
    CHECK(ok, "%s: unreadable or bad header length", path);
    if (!ok) {
        raw_close(&r);
        return;
    }
    CHECK(r.hl % 8 == 0, "%s: header length %llu not a multiple of 8", path, (unsigned long long)r.hl);
    CHECK(r.hl >= 2 && r.hdr[0] == '{', "%s: header does not start with '{'", path);
    size_t last = r.hl;
    while (last > 0 && r.hdr[last - 1] == ' ') last--;
    CHECK(last > 0 && r.hdr[last - 1] == '}', "%s: header does not end with '}' and spaces", path);
    bool ctl = false;
    for (size_t k = 0; k < r.hl; k++) ctl |= (unsigned char)r.hdr[k] < 0x20;
    CHECK(!ctl, "%s: control byte in the header", path);
    const char *m1 = strstr(r.hdr, "\"__metadata__\"");
    CHECK(m1 && !strstr(m1 + 1, "\"__metadata__\""), "%s: __metadata__ missing or repeated", path);
    int64_t pairs[128][2];
    int n = 0;
    for (const char *p = r.hdr; (p = strstr(p, "\"data_offsets\"")) != NULL && n < 128; p++) {
        const char *q = strchr(p, '[');
        char *end;
        pairs[n][0] = strtoll(q + 1, &end, 10);
        while (*end == ' ' || *end == ',') end++;
        pairs[n][1] = strtoll(end, &end, 10);
        n++;
    }
    CHECK(n == ntensors, "%s: %d data_offsets, expected %d", path, n, ntensors);
    qsort(pairs, (size_t)n, sizeof pairs[0], cmp_pair);
    int64_t at = 0;
    bool contiguous = true;
    for (int k = 0; k < n; k++) {
        contiguous &= pairs[k][0] == at && pairs[k][1] >= pairs[k][0];
        at = pairs[k][1];
    }
    CHECK(contiguous, "%s: data offsets are not contiguous from 0", path);
    CHECK((uint64_t)at == r.len - 8 - r.hl, "%s: offsets end at %lld, the data section has %llu bytes", path,
          (long long)at, (unsigned long long)(r.len - 8 - r.hl));
    raw_close(&r);
}

/* ---- 1. round trip ------------------------------------------------------------------------ */

static void test_round_trip(kiln_ctx *ctx) {
    char path[512];
    path_in(path, sizeof path, "roundtrip.safetensors");
    kiln_module *a = cnn(ctx, 1);
    CHECK(a != NULL, "cnn: %s", kiln_error_message(ctx));
    if (!a) return;
    cnn_forwards(ctx, a, 3);
    CHECK(nbt_value(a, "1.num_batches_tracked") == 3, "three forwards counted");
    CHECK(kiln_module_save(a, path, "round trip of test_checkpoint") == KILN_OK, "save: %s", kiln_error_message(ctx));
    snap *sa = snap_take(a, NULL);
    CHECK(sa->n == CNN_TENSORS, "%d state tensors", sa->n);

    kiln_module *b = cnn(ctx, 2);
    snap *sb0 = snap_take(b, NULL);
    char why[256];
    int nd = snap_diff(sa, sb0, false, why, sizeof why);
    CHECK(nd >= 7, "the two models should differ before loading (weights, biases, running stats, count): %d", nd);
    kiln_load_report r;
    memset(&r, 0x5A, sizeof r);
    CHECK(kiln_module_load(b, path, true, &r) == KILN_OK, "load: %s", kiln_error_message(ctx));
    CHECK(r.loaded == CNN_TENSORS && r.missing == 0 && r.unexpected == 0 && r.mismatched == 0 && r.detail[0] == '\0',
          "report %d loaded, %d/%d/%d, '%.100s'", r.loaded, r.missing, r.unexpected, r.mismatched, r.detail);
    snap *sb = snap_take(b, NULL);
    nd = snap_diff(sa, sb, false, why, sizeof why);
    CHECK(nd == 0, "round trip not bit-identical: %d differences, first %s", nd, why);
    const snap_t *nbt = snap_get(sb, "1.num_batches_tracked");
    CHECK(nbt && nbt->dtype == KILN_I32 && nbt->ndim == 0, "num_batches_tracked is an I32 scalar");

    /* the next training forward continues from the loaded count (3 -> 4) in both */
    kiln_manual_seed(ctx, 77);
    cnn_forwards(ctx, a, 1);
    kiln_manual_seed(ctx, 77);
    cnn_forwards(ctx, b, 1);
    CHECK(nbt_value(b, "1.num_batches_tracked") == 4, "count after load + forward: %d, expected 4",
          nbt_value(b, "1.num_batches_tracked"));
    snap *sa2 = snap_take(a, NULL), *sb2 = snap_take(b, NULL);
    nd = snap_diff(sa2, sb2, false, why, sizeof why);
    CHECK(nd == 0, "a training forward after the load differs: %s", why);
    /* eval outputs identical */
    kiln_module_train(a, false);
    kiln_module_train(b, false);
    kiln_scope_begin(ctx);
    kiln_tensor *x = kiln_rand_normal(ctx, 0, 1, 4, (int64_t[]){2, 1, 6, 6});
    float ya[6], yb[6];
    CHECK(kiln_to_host(kiln_forward(a, x), ya, sizeof ya) == KILN_OK &&
              kiln_to_host(kiln_forward(b, x), yb, sizeof yb) == KILN_OK && memcmp(ya, yb, sizeof ya) == 0,
          "eval outputs differ after the round trip: %s", kiln_error_message(ctx));
    kiln_scope_end(ctx);

    /* metadata and entries */
    kiln_safetensors *f = kiln_safetensors_open(ctx, path);
    CHECK(f != NULL, "open: %s", kiln_error_message(ctx));
    if (f) {
        const char *v = kiln_safetensors_meta(f, "kiln_version");
        CHECK(v && strcmp(v, KILN_VERSION_STRING) == 0, "kiln_version '%s'", v ? v : "(none)");
        v = kiln_safetensors_meta(f, "model");
        CHECK(v && strstr(v, "Sequential") && strstr(v, "Conv2d") && strstr(v, "BatchNorm2d") && strstr(v, "Linear"),
              "model description '%s'", v ? v : "(none)");
        v = kiln_safetensors_meta(f, "description");
        CHECK(v && strcmp(v, "round trip of test_checkpoint") == 0, "description '%s'", v ? v : "(none)");
        v = kiln_safetensors_meta(f, "format");
        CHECK(v && strcmp(v, "pt") == 0, "format '%s'", v ? v : "(none)");
        CHECK(kiln_safetensors_meta(f, "no such key") == NULL, "unknown metadata key");
        CHECK(kiln_safetensors_num_tensors(f) == CNN_TENSORS, "%d entries", kiln_safetensors_num_tensors(f));
        int k = kiln_safetensors_find(f, "1.num_batches_tracked");
        const int64_t *shape = NULL;
        CHECK(k >= 0 && strcmp(kiln_safetensors_dtype(f, k), "I32") == 0 && kiln_safetensors_shape(f, k, &shape) == 0,
              "num_batches_tracked entry: I32 scalar");
        k = kiln_safetensors_find(f, "0.weight");
        int nd0 = kiln_safetensors_shape(f, k, &shape);
        CHECK(k >= 0 && strcmp(kiln_safetensors_dtype(f, k), "F32") == 0 && nd0 == 4 && shape[0] == 4 &&
                  shape[1] == 1 && shape[2] == 3 && shape[3] == 3,
              "0.weight entry: F32 [4, 1, 3, 3]");
        /* entries read back as tensors equal the model's */
        bool same = true;
        for (int i = 0; i < kiln_safetensors_num_tensors(f); i++) {
            kiln_scope_begin(ctx);
            kiln_tensor *t = kiln_safetensors_tensor(f, i);
            const snap_t *s = snap_get(sa, kiln_safetensors_name(f, i));
            unsigned char buf[1024];
            same &= t && s && kiln_tensor_dtype(t) == s->dtype && s->bytes <= sizeof buf &&
                    kiln_to_host(t, buf, s->bytes) == KILN_OK && memcmp(buf, s->data, s->bytes) == 0;
            kiln_scope_end(ctx);
        }
        CHECK(same, "kiln_safetensors_tensor differs from the saved model: %s", kiln_error_message(ctx));
        kiln_safetensors_close(f);
    }
    check_layout(path, CNN_TENSORS);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    snap_free(sa), snap_free(sb0), snap_free(sb), snap_free(sa2), snap_free(sb2);
    kiln_module_free(a);
    kiln_module_free(b);
}

/* ---- 2. PyTorch interop ------------------------------------------------------------------- */

static void test_torch(kiln_ctx *ctx) {
    const char *dir = getenv("KILN_GOLDEN_DIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/torch_state.safetensors", dir ? dir : "tests/golden");
    kiln_module *m = cnn(ctx, 3);
    if (!m) return;
    kiln_load_report r;
    CHECK(kiln_module_load(m, path, true, &r) == KILN_OK, "torch state dict: %s", kiln_error_message(ctx));
    CHECK(r.loaded == CNN_TENSORS && !r.missing && !r.unexpected && !r.mismatched, "report %d loaded", r.loaded);
    kiln_error_clear(ctx);

    /* every value equals the file's bytes, read without the library */
    rawfile raw;
    bool ok = raw_open(&raw, path);
    CHECK(ok, "%s unreadable", path);
    snap *s = snap_take(m, NULL);
    for (int i = 0; ok && i < s->n; i++) {
        char dt[16];
        int64_t b, e;
        const snap_t *t = &s->t[i];
        if (!raw_entry(&raw, t->name, dt, &b, &e)) {
            CHECK(0, "%s not in torch's header", t->name);
            continue;
        }
        const unsigned char *data = raw.buf + 8 + raw.hl + b;
        if (strcmp(t->name, "1.num_batches_tracked") == 0) {
            int64_t v64;
            int32_t v32;
            memcpy(&v64, data, 8);
            memcpy(&v32, t->data, 4);
            CHECK(strcmp(dt, "I64") == 0 && e - b == 8 && v64 == 3 && v32 == 3 && t->dtype == KILN_I32,
                  "num_batches_tracked: torch %s %lld, kiln %d", dt, (long long)v64, v32);
        } else {
            CHECK(strcmp(dt, "F32") == 0 && (size_t)(e - b) == t->bytes && memcmp(data, t->data, t->bytes) == 0,
                  "%s differs from torch's bytes", t->name);
        }
    }
    raw_close(&raw);
    snap_free(s);
    check_layout(path, CNN_TENSORS);

    /* the loaded model computes torch's function (eval mode: running statistics) */
    golden g;
    if (golden_open(&g, "checkpoint")) {
        kiln_module_train(m, false);
        kiln_scope_begin(ctx);
        kiln_tensor *y = kiln_forward(m, golden_upload(ctx, golden_get(&g, "x")));
        CHECK(y != NULL, "eval forward: %s", kiln_error_message(ctx));
        golden_compare("torch twin eval output", y, golden_get(&g, "y"), 1e-5, 1e-5);
        kiln_scope_end(ctx);
        golden_close(&g);
    }
    /* a training forward continues torch's count: 3 -> 4 */
    cnn_forwards(ctx, m, 1);
    CHECK(nbt_value(m, "1.num_batches_tracked") == 4, "torch's count continued: %d",
          nbt_value(m, "1.num_batches_tracked"));
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    kiln_module_free(m);
}

/* ---- 3. strict and non-strict loads -------------------------------------------------------- */

typedef struct variant {
    const char *name;
    const char *drop[3]; /* names left out */
    bool add_unexpected; /* extra.weight [2], 9.bias [3] */
    bool bad_shape;      /* 4.weight as [64, 3] */
    bool bad_dtype;      /* 1.num_batches_tracked as F32, 0.bias as I32 */
    int missing, unexpected, mismatched;
    const char *needles[6];
} variant;

static void test_strict(kiln_ctx *ctx) {
    static const variant vs[] = {
        {"missing",
         {"4.bias", "1.running_var"},
         false,
         false,
         false,
         2,
         0,
         0,
         {"missing 4.bias", "missing 1.running_var", "2 missing"}},
        {"unexpected",
         {NULL},
         true,
         false,
         false,
         0,
         2,
         0,
         {"unexpected extra.weight", "unexpected 9.bias", "2 unexpected"}},
        {"shape", {NULL}, false, true, false, 0, 0, 1, {"mismatched 4.weight", "[3, 64]", "[64, 3]"}},
        {"dtype",
         {NULL},
         false,
         false,
         true,
         0,
         0,
         2,
         {"mismatched 1.num_batches_tracked", "mismatched 0.bias", "I32", "F32"}},
        {"all",
         {"0.weight"},
         true,
         true,
         true,
         1,
         2,
         3,
         {"missing 0.weight", "unexpected 9.bias", "mismatched 4.weight", "mismatched 0.bias"}},
    };
    kiln_module *src = cnn(ctx, 30);
    if (!src) return;
    cnn_forwards(ctx, src, 3);
    snap *ssrc = snap_take(src, NULL);
    kiln_named_tensor st[CNN_TENSORS];
    kiln_module_state(src, st, CNN_TENSORS);
    for (size_t v = 0; v < sizeof vs / sizeof vs[0]; v++) {
        const variant *V = &vs[v];
        kiln_scope_begin(ctx);
        kiln_named_tensor out[16];
        int n = 0;
        for (int i = 0; i < CNN_TENSORS; i++) {
            bool drop = false;
            for (int k = 0; k < 3 && V->drop[k]; k++) drop |= strcmp(st[i].name, V->drop[k]) == 0;
            if (drop) continue;
            out[n] = st[i];
            if (V->bad_shape && strcmp(st[i].name, "4.weight") == 0)
                out[n].tensor = kiln_zeros(ctx, 2, (int64_t[]){64, 3});
            if (V->bad_dtype && strcmp(st[i].name, "1.num_batches_tracked") == 0)
                out[n].tensor = kiln_full(ctx, 3, 0, NULL);
            if (V->bad_dtype && strcmp(st[i].name, "0.bias") == 0) {
                out[n].tensor = kiln_empty(ctx, KILN_I32, 1, (int64_t[]){4});
                kiln_fill(out[n].tensor, 1);
            }
            n++;
        }
        if (V->add_unexpected) {
            out[n] = (kiln_named_tensor){.name = "extra.weight", .tensor = kiln_zeros(ctx, 1, (int64_t[]){2})};
            n++;
            out[n] = (kiln_named_tensor){.name = "9.bias", .tensor = kiln_ones(ctx, 1, (int64_t[]){3})};
            n++;
        }
        char path[512], file[64];
        snprintf(file, sizeof file, "strict-%s.safetensors", V->name);
        path_in(path, sizeof path, file);
        CHECK(kiln_safetensors_save(ctx, path, n, out, 0, NULL) == KILN_OK, "%s: save: %s", V->name,
              kiln_error_message(ctx));
        kiln_scope_end(ctx);
        kiln_error_clear(ctx);

        kiln_module *t = cnn(ctx, 40 + v);
        cnn_forwards(ctx, t, 1);
        snap *before = snap_take(t, NULL);
        kiln_load_report r;
        kiln_status s = kiln_module_load(t, path, true, &r);
        char what[64];
        snprintf(what, sizeof what, "strict load of %s", V->name);
        for (int k = 0; V->needles[k]; k++)
            CHECK(strstr(kiln_error_message(ctx), V->needles[k]) != NULL, "%s: message lacks '%s': %s", V->name,
                  V->needles[k], kiln_error_message(ctx));
        EXPECT_ERR(ctx, what, s, KILN_ERR_INVALID_ARGUMENT, path, "nothing was loaded");
        CHECK(r.loaded == 0 && r.missing == V->missing && r.unexpected == V->unexpected &&
                  r.mismatched == V->mismatched,
              "%s strict report: loaded %d, missing %d, unexpected %d, mismatched %d", V->name, r.loaded, r.missing,
              r.unexpected, r.mismatched);
        snap *after = snap_take(t, NULL);
        char why[256];
        int nd = snap_diff(before, after, false, why, sizeof why);
        CHECK(nd == 0, "%s: a failed strict load changed the model: %s", V->name, why);
        snap_free(after);

        /* non-strict: the matching tensors load, the rest stay */
        memset(&r, 0x5A, sizeof r);
        s = kiln_module_load(t, path, false, &r);
        CHECK(s == KILN_OK, "%s: non-strict load: %s", V->name, kiln_error_message(ctx));
        kiln_error_clear(ctx);
        CHECK(r.loaded == CNN_TENSORS - V->missing - V->mismatched && r.missing == V->missing &&
                  r.unexpected == V->unexpected && r.mismatched == V->mismatched,
              "%s report: loaded %d, missing %d, unexpected %d, mismatched %d", V->name, r.loaded, r.missing,
              r.unexpected, r.mismatched);
        for (int k = 0; V->needles[k]; k++)
            if (strncmp(V->needles[k], "missing ", 8) == 0 || strncmp(V->needles[k], "unexpected ", 11) == 0 ||
                strncmp(V->needles[k], "mismatched ", 11) == 0)
                CHECK(strstr(r.detail, V->needles[k]) != NULL, "%s: report detail lacks '%s': %s", V->name,
                      V->needles[k], r.detail);
        after = snap_take(t, NULL);
        int wrong = 0;
        for (int i = 0; i < after->n; i++) {
            const char *nm = after->t[i].name;
            bool loads = true;
            for (int k = 0; k < 3 && V->drop[k]; k++) loads &= strcmp(nm, V->drop[k]) != 0;
            if (V->bad_shape && strcmp(nm, "4.weight") == 0) loads = false;
            if (V->bad_dtype && (strcmp(nm, "1.num_batches_tracked") == 0 || strcmp(nm, "0.bias") == 0)) loads = false;
            const snap_t *want = loads ? snap_get(ssrc, nm) : snap_get(before, nm);
            if (!snap_t_equal(&after->t[i], want)) {
                if (wrong++ == 0)
                    fprintf(stderr, "  %s: %s is not the %s value\n", V->name, nm, loads ? "file's" : "old");
            }
        }
        CHECK(wrong == 0, "%s: %d tensors wrong after a non-strict load", V->name, wrong);
        /* report may be NULL */
        CHECK(kiln_module_load(t, path, false, NULL) == KILN_OK, "%s: NULL report: %s", V->name,
              kiln_error_message(ctx));
        kiln_error_clear(ctx);
        snap_free(before);
        snap_free(after);
        kiln_module_free(t);
    }
    snap_free(ssrc);
    kiln_module_free(src);
}

/* ---- 4. corrupt files ---------------------------------------------------------------------- */

/* 8-byte little-endian length (hl) + header + dlen bytes of data; the caller frees. */
static unsigned char *mk(uint64_t hl, const char *hdr, size_t dlen, size_t *len) {
    size_t h = strlen(hdr);
    *len = 8 + h + dlen;
    unsigned char *b = calloc(*len, 1);
    for (int k = 0; k < 8; k++) b[k] = (unsigned char)(hl >> (8 * k));
    memcpy(b + 8, hdr, h);
    for (size_t k = 0; k < dlen; k++) b[8 + h + k] = (unsigned char)(k * 7);
    return b;
}

typedef struct bad_case {
    const char *what;
    const char *hdr;
    size_t dlen;
    const char *needle; /* a piece of the reason; NULL: only the name is checked */
} bad_case;

#define E1(n, d) "\"" n "\":{\"dtype\":\"" d "\",\"shape\":[1],\"data_offsets\":[0,4]}"

static const bad_case bad_cases[] = {
    {"not-json", "not json", 0, "not a JSON object"},
    {"array", "[1, 2, 3]", 0, "not a JSON object"},
    {"unclosed", "{" E1("a", "F32"), 4, "expected"},
    {"unclosed-string", "{\"a", 0, "unterminated string"},
    {"garbage-after", "{" E1("a", "F32") "}x", 4, "bytes after the header"},
    {"two-objects", "{}{}", 0, "bytes after the header"},
    {"trailing-comma", "{" E1("a", "F32") ",}", 4, "expected a string"},
    {"missing-colon", "{\"a\" {\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "expected ':'"},
    {"entry-not-object", "{\"a\":5}", 0, "not an object"},
    {"duplicate-name", "{" E1("a", "F32") ",\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
     "appears twice"},
    {"duplicate-metadata", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, "__metadata__ repeated"},
    {"duplicate-dtype", "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     "repeated key"},
    {"unknown-key", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"foo\":1}}", 4, "unknown"},
    {"no-shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "lacks"},
    {"no-offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "lacks"},
    {"overlap",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],"
     "\"data_offsets\":[4,12]}}",
     12, "overlap"},
    {"same-range",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],"
     "\"data_offsets\":[0,8]}}",
     8, "overlap"},
    {"gap",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],"
     "\"data_offsets\":[8,12]}}",
     12, "gap"},
    {"not-from-zero", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "expected 0"},
    {"reversed", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, "data_offsets"},
    {"beyond-end",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"F32\",\"shape\":[3],"
     "\"data_offsets\":[4,16]}}",
     12, "truncated"},
    {"far-beyond-end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1000000],\"data_offsets\":[0,4000000]}}", 4, "truncated"},
    {"trailing-data", "{" E1("a", "F32") "}", 8, "trailing"},
    {"size-vs-shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "data_offsets [0, 8]"},
    {"size-vs-dtype", "{\"a\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "I64, 2 elements"},
    {"scalar-size", "{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,8]}}", 8, "1 elements"},
    {"unknown-dtype", "{" E1("a", "F8") "}", 4, "unknown dtype"},
    {"lowercase-dtype", "{" E1("a", "f32") "}", 4, "unknown dtype"},
    {"empty-dtype", "{" E1("a", "") "}", 4, "unknown dtype"},
    {"long-dtype", "{" E1("a", "F32F32F32F32") "}", 4, "unknown dtype"},
    {"numeric-dtype", "{\"a\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "expected a string"},
    {"huge-dims", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],\"data_offsets\":[0,0]}}", 0,
     "shape too large"},
    {"overflowing-dims",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2305843009213693952,2305843009213693952,2305843009213693952,0],"
     "\"data_offsets\":[0,0]}}",
     0, "shape too large"},
    {"huge-dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387000,4],\"data_offsets\":[0,4]}}", 4,
     "shape too large"},
    {"dim-too-many-digits", "{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,4]}}", 4,
     "integer too large"},
    {"offset-too-large", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[18446744073709551612,0]}}", 4,
     "integer too large"},
    {"negative-dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "non-negative integer"},
    {"fractional-dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4, "expected an integer"},
    {"exponent-dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1e0],\"data_offsets\":[0,4]}}", 4, "expected an integer"},
    {"leading-zeros", "{\"a\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", 4, "leading zeros"},
    {"nine-dims", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, "too long"},
    {"three-offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,4]}}", 4, "too long"},
    {"one-offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}", 4, "two integers"},
    {"shape-not-array", "{\"a\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", 4, "expected an array"},
    {"meta-number", "{\"__metadata__\":{\"a\":1}}", 0, "must be strings"},
    {"meta-array", "{\"__metadata__\":[]}", 0, "not an object"},
    {"bad-escape", "{\"a\\x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "bad escape"},
    {"nul-escape", "{\"a\\u0000\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unsupported"},
    {"surrogate-escape", "{\"a\\ud800\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unsupported"},
    {"short-escape", "{\"a\\u12", 0, "escape"},
    {"control-char", "{\"a\x01\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "control character"},
    {"empty", "", 0, "header length"},
    {"one-byte", "{", 0, "header length"},
};

static void test_corrupt(kiln_ctx *ctx) {
    /* malformed headers, in memory */
    for (size_t c = 0; c < sizeof bad_cases / sizeof bad_cases[0]; c++) {
        const bad_case *B = &bad_cases[c];
        size_t len;
        unsigned char *b = mk(strlen(B->hdr), B->hdr, B->dlen, &len);
        char what[96];
        snprintf(what, sizeof what, "case-%s.safetensors", B->what);
        kiln_safetensors *f = kiln_safetensors_parse(ctx, b, len, what);
        CHECK(f == NULL, "%s parsed", what);
        kiln_safetensors_close(f);
        EXPECT_ERR(ctx, what, kiln_error_status(ctx), KILN_ERR_CORRUPT, what, "not a valid safetensors file",
                   B->needle ? B->needle : what);
        free(b);
    }
    /* bad header lengths */
    static const struct {
        uint64_t hl;
        const char *hdr;
    } lens[] = {
        {0, "{}"}, {1, "{}"}, {3, "{}"}, {UINT64_C(1) << 63, "{}"}, {UINT64_MAX, "{}"}, {(100u << 20) + 1, "{}"}};
    for (size_t c = 0; c < sizeof lens / sizeof lens[0]; c++) {
        size_t len;
        unsigned char *b = mk(lens[c].hl, lens[c].hdr, 0, &len);
        kiln_safetensors *f = kiln_safetensors_parse(ctx, b, len, "badlen.safetensors");
        CHECK(f == NULL, "header length %llu accepted", (unsigned long long)lens[c].hl);
        kiln_safetensors_close(f);
        EXPECT_ERR(ctx, "bad header length", kiln_error_status(ctx), KILN_ERR_CORRUPT, "badlen.safetensors",
                   "header length");
        free(b);
    }
    /* valid variants: spacing, key order, listing order, escapes, metadata, empty and scalar tensors */
    {
        const char *hdr = " { \"b\" : {\"shape\" : [ 2 ] , \"dtype\":\"I32\",\"data_offsets\":[8, 16]} ,\n"
                          "\t\"a\":{\"data_offsets\":[0,8],\"dtype\":\"F32\",\"shape\":[2]},"
                          "\"z\\u00e9\\n\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[16,16]},"
                          "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[16,20]},"
                          "\"__metadata__\":{\"k\\u00e9y\":\"v\\\"q\\\\\",\"e\":\"\"}}    ";
        size_t len;
        unsigned char *b = mk(strlen(hdr), hdr, 20, &len);
        kiln_safetensors *f = kiln_safetensors_parse(ctx, b, len, "valid");
        CHECK(f != NULL, "valid variant rejected: %s", kiln_error_message(ctx));
        kiln_error_clear(ctx);
        if (f) {
            CHECK(kiln_safetensors_num_tensors(f) == 4, "count %d", kiln_safetensors_num_tensors(f));
            CHECK(kiln_safetensors_find(f, "a") >= 0 && kiln_safetensors_find(f, "b") >= 0 &&
                      kiln_safetensors_find(f, "z\xc3\xa9\n") >= 0 && kiln_safetensors_find(f, "s") >= 0 &&
                      kiln_safetensors_find(f, "c") == -1,
                  "names with escapes");
            const char *v = kiln_safetensors_meta(f, "k\xc3\xa9y");
            CHECK(v && strcmp(v, "v\"q\\") == 0, "escaped metadata '%s'", v ? v : "(none)");
            v = kiln_safetensors_meta(f, "e");
            CHECK(v && *v == '\0', "empty metadata value");
            const int64_t *shape;
            int z = kiln_safetensors_find(f, "z\xc3\xa9\n");
            CHECK(kiln_safetensors_shape(f, z, &shape) == 2 && shape[0] == 0 && shape[1] == 5, "empty tensor shape");
            kiln_scope_begin(ctx);
            kiln_tensor *ta = kiln_safetensors_tensor(f, kiln_safetensors_find(f, "a"));
            kiln_tensor *tb = kiln_safetensors_tensor(f, kiln_safetensors_find(f, "b"));
            kiln_tensor *tz = kiln_safetensors_tensor(f, z);
            kiln_tensor *ts = kiln_safetensors_tensor(f, kiln_safetensors_find(f, "s"));
            unsigned char ha[8], hb[8], hs[4];
            CHECK(ta && tb && tz && ts && kiln_tensor_numel(tz) == 0 && kiln_tensor_ndim(ts) == 0 &&
                      kiln_tensor_dtype(tb) == KILN_I32 && kiln_to_host(ta, ha, 8) == KILN_OK &&
                      kiln_to_host(tb, hb, 8) == KILN_OK && kiln_to_host(ts, hs, 4) == KILN_OK &&
                      memcmp(ha, b + len - 20, 8) == 0 && memcmp(hb, b + len - 12, 8) == 0 &&
                      memcmp(hs, b + len - 4, 4) == 0,
                  "values of the valid variant: %s", kiln_error_message(ctx));
            kiln_scope_end(ctx);
            kiln_error_clear(ctx);
            kiln_safetensors_close(f);
        }
        free(b);
        b = mk(2, "{}", 0, &len);
        f = kiln_safetensors_parse(ctx, b, len, "empty-object");
        CHECK(f && kiln_safetensors_num_tensors(f) == 0, "{} rejected: %s", kiln_error_message(ctx));
        kiln_error_clear(ctx);
        kiln_safetensors_close(f);
        free(b);
    }

    /* a small valid file: every truncation fails */
    char small[512];
    path_in(small, sizeof small, "small.safetensors");
    kiln_scope_begin(ctx);
    kiln_named_tensor two[2] = {{.name = "w", .tensor = kiln_rand_uniform(ctx, -1, 1, 1, (int64_t[]){3})},
                                {.name = "n", .tensor = kiln_empty(ctx, KILN_I32, 1, (int64_t[]){2})}};
    kiln_fill(two[1].tensor, 7);
    CHECK(kiln_safetensors_save(ctx, small, 2, two, 1, &(kiln_meta){"k", "v"}) == KILN_OK, "small: %s",
          kiln_error_message(ctx));
    kiln_scope_end(ctx);
    kiln_error_clear(ctx);
    size_t slen;
    unsigned char *sb = read_bytes(small, &slen);
    CHECK(sb && slen > 40, "small file %zu bytes", slen);
    kiln_safetensors *f = sb ? kiln_safetensors_parse(ctx, sb, slen, "small.safetensors") : NULL;
    CHECK(f && kiln_safetensors_num_tensors(f) == 2, "whole small file: %s", kiln_error_message(ctx));
    kiln_safetensors_close(f);
    kiln_error_clear(ctx);
    int rejected = 0, named = 0;
    for (size_t L = 0; sb && L < slen; L++) {
        f = kiln_safetensors_parse(ctx, sb, L, "small.safetensors");
        rejected += f == NULL && kiln_error_status(ctx) == KILN_ERR_CORRUPT;
        named += strstr(kiln_error_message(ctx), "small.safetensors") != NULL;
        kiln_safetensors_close(f);
        kiln_error_clear(ctx);
    }
    CHECK(rejected == (int)slen && named == (int)slen, "truncations of the small file: %d of %zu rejected, %d named",
          rejected, slen, named);
    free(sb);

    /* the target of every file case below; compared at the end */
    kiln_module *t = cnn(ctx, 50);
    cnn_forwards(ctx, t, 1);
    snap *before = snap_take(t, NULL);

    /* every truncation of a model file, as a file, loaded non-strict */
    char full[512], trunc[512];
    path_in(full, sizeof full, "full.safetensors");
    path_in(trunc, sizeof trunc, "trunc.safetensors");
    kiln_module *src = cnn(ctx, 51);
    CHECK(kiln_module_save(src, full, NULL) == KILN_OK, "save: %s", kiln_error_message(ctx));
    kiln_module_free(src);
    kiln_error_clear(ctx);
    size_t flen;
    unsigned char *fb = read_bytes(full, &flen);
    rejected = named = 0;
    for (size_t L = 0; fb && L < flen; L++) {
        if (!write_bytes(trunc, fb, L)) {
            CHECK(0, "cannot write %s", trunc);
            break;
        }
        kiln_load_report r;
        kiln_status s = kiln_module_load(t, trunc, false, &r);
        rejected += s == KILN_ERR_CORRUPT && r.loaded == 0;
        named += strstr(kiln_error_message(ctx), trunc) != NULL;
        kiln_error_clear(ctx);
    }
    CHECK(fb && rejected == (int)flen && named == (int)flen,
          "truncations of a model file: %d of %zu rejected, %d named", rejected, flen, named);
    free(fb);

    /* malformed files on disk: the module loaders and open name the path */
    char bad[512];
    path_in(bad, sizeof bad, "bad.safetensors");
    for (size_t c = 0; c < sizeof bad_cases / sizeof bad_cases[0]; c += 5) {
        size_t len;
        unsigned char *b = mk(strlen(bad_cases[c].hdr), bad_cases[c].hdr, bad_cases[c].dlen, &len);
        write_bytes(bad, b, len);
        free(b);
        EXPECT_ERR(ctx, bad_cases[c].what, kiln_module_load(t, bad, false, NULL), KILN_ERR_CORRUPT, bad);
        EXPECT_ERR(ctx, bad_cases[c].what, kiln_checkpoint_load(bad, t, NULL, NULL), KILN_ERR_CORRUPT, bad);
        kiln_safetensors *g = kiln_safetensors_open(ctx, bad);
        CHECK(g == NULL, "%s opened", bad_cases[c].what);
        kiln_safetensors_close(g);
        EXPECT_ERR(ctx, bad_cases[c].what, kiln_error_status(ctx), KILN_ERR_CORRUPT, bad, bad_cases[c].needle);
    }
    /* a model file with one entry's dtype changed to an unknown one (same length) */
    {
        size_t len;
        unsigned char *b = read_bytes(full, &len);
        char *hit = b ? strstr((char *)b + 8, "\"I32\"") : NULL;
        CHECK(hit != NULL, "I32 entry in the model file");
        if (hit) {
            memcpy(hit, "\"Q32\"", 5);
            write_bytes(bad, b, len);
            EXPECT_ERR(ctx, "unknown dtype on disk", kiln_module_load(t, bad, false, NULL), KILN_ERR_CORRUPT, bad,
                       "unknown dtype");
        }
        free(b);
    }
    /* a missing file and a directory */
    char missing[512], adir[512];
    path_in(missing, sizeof missing, "does-not-exist.safetensors");
    path_in(adir, sizeof adir, "a-directory.safetensors");
    mkdir(adir, 0755);
    EXPECT_ERR(ctx, "missing file", kiln_module_load(t, missing, false, NULL), KILN_ERR_IO, missing, "cannot open");
    EXPECT_ERR(ctx, "missing checkpoint", kiln_checkpoint_load(missing, t, NULL, NULL), KILN_ERR_IO, missing);
    f = kiln_safetensors_open(ctx, missing);
    CHECK(f == NULL, "missing file opened");
    EXPECT_ERR(ctx, "open missing", kiln_error_status(ctx), KILN_ERR_IO, missing, "No such file");
    EXPECT_ERR(ctx, "directory", kiln_module_load(t, adir, false, NULL), KILN_ERR_IO, adir, "not a regular file");
    f = kiln_safetensors_open(ctx, adir);
    CHECK(f == NULL, "directory opened");
    EXPECT_ERR(ctx, "open directory", kiln_error_status(ctx), KILN_ERR_IO, adir);
    /* saving onto a directory or into a missing directory fails cleanly */
    char nodir[600];
    snprintf(nodir, sizeof nodir, "%s/no/such/dir/x.safetensors", tmpdir);
    EXPECT_ERR(ctx, "save into a missing dir", kiln_module_save(t, nodir, NULL), KILN_ERR_IO, nodir);
    EXPECT_ERR(ctx, "save onto a directory", kiln_module_save(t, adir, NULL), KILN_ERR_IO, adir);
    CHECK(count_files_with(".tmp.") == 0, "temporary files left by failed saves");
    rmdir(adir);

    snap *after = snap_take(t, NULL);
    char why[256];
    int nd = snap_diff(before, after, false, why, sizeof why);
    CHECK(nd == 0, "bad files changed the model: %s", why);
    snap_free(before);
    snap_free(after);
    kiln_module_free(t);
}

/* ---- dtypes ------------------------------------------------------------------------------- */

static void test_dtypes(kiln_ctx *ctx) {
    /* one entry per stored dtype with known values */
    unsigned char data[256];
    size_t at = 0;
    char hdr[2048];
    size_t hn = (size_t)snprintf(hdr, sizeof hdr, "{");
#define ENTRY(name, dt, n, sz)                                                                                         \
    hn += (size_t)snprintf(hdr + hn, sizeof hdr - hn,                                                                  \
                           "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[%d],\"data_offsets\":[%zu,%zu]}", hn > 1 ? "," : "", \
                           name, dt, n, at, at + (size_t)(n) * (sz))
    uint16_t f16[] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x7C00, 0x8000, 0x3555};
    ENTRY("f16", "F16", 7, 2);
    memcpy(data + at, f16, sizeof f16), at += sizeof f16;
    uint16_t bf16[] = {0x3F80, 0xBF00, 0x4049};
    ENTRY("bf16", "BF16", 3, 2);
    memcpy(data + at, bf16, sizeof bf16), at += sizeof bf16;
    double f64[] = {0.1, -2.5, 1e300};
    ENTRY("f64", "F64", 3, 8);
    memcpy(data + at, f64, sizeof f64), at += sizeof f64;
    int64_t i64[] = {-5, 2147483647, -2147483648LL};
    ENTRY("i64", "I64", 3, 8);
    memcpy(data + at, i64, sizeof i64), at += sizeof i64;
    int16_t i16[] = {-32768, 32767};
    ENTRY("i16", "I16", 2, 2);
    memcpy(data + at, i16, sizeof i16), at += sizeof i16;
    int8_t i8[] = {-128, 127};
    ENTRY("i8", "I8", 2, 1);
    memcpy(data + at, i8, sizeof i8), at += sizeof i8;
    uint8_t u8[] = {255, 0};
    ENTRY("u8", "U8", 2, 1);
    memcpy(data + at, u8, sizeof u8), at += sizeof u8;
    uint8_t bl[] = {1, 0};
    ENTRY("bool", "BOOL", 2, 1);
    memcpy(data + at, bl, sizeof bl), at += sizeof bl;
    int64_t big[] = {3000000000LL};
    ENTRY("big", "I64", 1, 8);
    memcpy(data + at, big, sizeof big), at += sizeof big;
    float f32[] = {1.5f, -0.0f};
    ENTRY("f32", "F32", 2, 4);
    memcpy(data + at, f32, sizeof f32), at += sizeof f32;
    int32_t i32[] = {-7, 123456789};
    ENTRY("i32", "I32", 2, 4);
    memcpy(data + at, i32, sizeof i32), at += sizeof i32;
#undef ENTRY
    hn += (size_t)snprintf(hdr + hn, sizeof hdr - hn, "}");
    size_t len;
    unsigned char *b = mk(hn, hdr, 0, &len);
    b = realloc(b, len + at);
    memcpy(b + len, data, at);
    len += at;
    kiln_safetensors *f = kiln_safetensors_parse(ctx, b, len, "dtypes");
    free(b);
    CHECK(f != NULL, "dtypes file: %s", kiln_error_message(ctx));
    if (!f) return;
    static const struct {
        const char *name;
        bool is_int;
        int n;
        double want[7];
    } exp[] = {
        {"f16", false, 7, {1.0, -2.0, 65504.0, 5.9604644775390625e-08, INFINITY, -0.0, 0.333251953125}},
        {"bf16", false, 3, {1.0, -0.5, 3.140625}},
        {"f64", false, 3, {(float)0.1, -2.5, INFINITY}},
        {"i64", true, 3, {-5, 2147483647, -2147483648.0}},
        {"i16", true, 2, {-32768, 32767}},
        {"i8", true, 2, {-128, 127}},
        {"u8", true, 2, {255, 0}},
        {"bool", true, 2, {1, 0}},
        {"f32", false, 2, {1.5, -0.0}},
        {"i32", true, 2, {-7, 123456789}},
    };
    for (size_t k = 0; k < sizeof exp / sizeof exp[0]; k++) {
        int i = kiln_safetensors_find(f, exp[k].name);
        kiln_scope_begin(ctx);
        kiln_tensor *t = kiln_safetensors_tensor(f, i);
        CHECK(t && kiln_tensor_dtype(t) == (exp[k].is_int ? KILN_I32 : KILN_F32) && kiln_tensor_numel(t) == exp[k].n,
              "%s: %s", exp[k].name, kiln_error_message(ctx));
        union {
            float f[8];
            int32_t i[8];
        } h;
        if (t && kiln_to_host(t, &h, (size_t)exp[k].n * 4) == KILN_OK) {
            for (int j = 0; j < exp[k].n; j++) {
                double got = exp[k].is_int ? (double)h.i[j] : (double)h.f[j];
                bool same = got == exp[k].want[j] && signbit(got) == signbit(exp[k].want[j]);
                CHECK(same, "%s[%d] = %.17g, expected %.17g", exp[k].name, j, got, exp[k].want[j]);
            }
        }
        kiln_scope_end(ctx);
        kiln_error_clear(ctx);
    }
    /* an I64 outside i32 */
    kiln_tensor *t = kiln_safetensors_tensor(f, kiln_safetensors_find(f, "big"));
    CHECK(t == NULL, "3e9 became an i32");
    EXPECT_ERR(ctx, "I64 out of range", kiln_error_status(ctx), KILN_ERR_RANGE, "dtypes", "big", "3000000000");
    t = kiln_safetensors_tensor(f, kiln_safetensors_num_tensors(f));
    CHECK(t == NULL, "entry past the end");
    EXPECT_ERR(ctx, "entry past the end", kiln_error_status(ctx), KILN_ERR_INVALID_ARGUMENT, "dtypes");
    t = kiln_safetensors_tensor(f, -1);
    CHECK(t == NULL, "entry -1");
    EXPECT_ERR(ctx, "entry -1", kiln_error_status(ctx), KILN_ERR_INVALID_ARGUMENT, "dtypes");
    CHECK(kiln_safetensors_name(f, -1) == NULL && kiln_safetensors_name(f, 99) == NULL &&
              kiln_safetensors_dtype(f, 99) == NULL && kiln_safetensors_shape(f, 99, NULL) == -1,
          "accessors out of range");
    kiln_safetensors_close(f);

    /* a model file of F64 weights and an I64 count loads (converted), as torch's double models */
    kiln_module *m = kiln_nn_batchnorm1d(ctx, 2, 1e-5f, 0.1f);
    double w[2] = {0.25, -3}, bb[2] = {1, 2}, rm[2] = {0.5, 0.5}, rv[2] = {2, 4};
    int64_t nbt = 9;
    char h2[1024];
    int n2 = snprintf(h2, sizeof h2,
                      "{\"weight\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]},"
                      "\"bias\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[16,32]},"
                      "\"running_mean\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[32,48]},"
                      "\"running_var\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[48,64]},"
                      "\"num_batches_tracked\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[64,72]}}");
    b = mk((uint64_t)n2, h2, 72, &len);
    memcpy(b + len - 72, w, 16), memcpy(b + len - 56, bb, 16), memcpy(b + len - 40, rm, 16);
    memcpy(b + len - 24, rv, 16), memcpy(b + len - 8, &nbt, 8);
    char p[512];
    path_in(p, sizeof p, "f64.safetensors");
    write_bytes(p, b, len);
    free(b);
    kiln_load_report r;
    CHECK(m && kiln_module_load(m, p, true, &r) == KILN_OK && r.loaded == 5, "F64 state: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    float got[2];
    CHECK(m && kiln_to_host(kiln_module_find(m, "running_var"), got, 8) == KILN_OK && got[0] == 2 && got[1] == 4,
          "F64 running_var loaded as %g %g", got[0], got[1]);
    CHECK(m && nbt_value(m, "num_batches_tracked") == 9, "I64 count");
    kiln_module_free(m);
}

/* ---- 5. atomic save ----------------------------------------------------------------------- */

static void test_atomic(kiln_ctx *ctx) {
    char path[512], ref[512];
    path_in(path, sizeof path, "atomic.safetensors");
    path_in(ref, sizeof ref, "atomic-ref.safetensors");
    kiln_module *a = cnn(ctx, 60), *b = cnn(ctx, 61), *c = cnn(ctx, 62);
    cnn_forwards(ctx, b, 2);
    CHECK(kiln_module_save(a, path, "first") == KILN_OK, "first save: %s", kiln_error_message(ctx));
    CHECK(kiln_module_save(b, ref, "second") == KILN_OK, "reference save: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    snap *sa = snap_take(a, NULL), *sb = snap_take(b, NULL);
    size_t olen, rlen;
    unsigned char *orig = read_bytes(path, &olen), *refb = read_bytes(ref, &rlen);
    int failures = 0, bad_status = 0, changed = 0, unloadable = 0, leftovers = 0, unnamed = 0;
    bool saved = false;
    int n;
    for (n = 1; n <= 200 && !saved; n++) {
        kiln__io_fail_after(n);
        kiln_status s = kiln_module_save(b, path, "second");
        kiln__io_fail_after(0);
        if (s == KILN_OK) {
            saved = true;
            break;
        }
        failures++;
        bad_status += s != KILN_ERR_IO;
        unnamed += !strstr(kiln_error_message(ctx), path) || !strstr(kiln_error_message(ctx), "No space left");
        kiln_error_clear(ctx);
        size_t len;
        unsigned char *now = read_bytes(path, &len);
        changed += !now || len != olen || memcmp(now, orig, olen) != 0;
        free(now);
        leftovers += count_files_with(".tmp.") != 0;
        kiln_status l = kiln_module_load(c, path, true, NULL);
        unloadable += l != KILN_OK;
        kiln_error_clear(ctx);
    }
    /* steps: open, length, header, one per tensor, flush, fsync, rename */
    CHECK(saved && failures >= CNN_TENSORS + 5, "save succeeded after %d injected failures (saved %d)", failures,
          saved);
    CHECK(bad_status == 0, "%d failed saves returned another status than KILN_ERR_IO", bad_status);
    CHECK(unnamed == 0, "%d failed saves without the path and cause in the message", unnamed);
    CHECK(changed == 0, "%d failed saves changed the previous file", changed);
    CHECK(unloadable == 0, "%d failed saves left an unloadable file", unloadable);
    CHECK(leftovers == 0, "%d failed saves left a temporary file", leftovers);
    snap *sc = snap_take(c, NULL);
    char why[256];
    CHECK(snap_diff(sa, sc, false, why, sizeof why) == 0, "the previous file holds the first model: %s", why);
    snap_free(sc);
    /* the successful save wrote the new model: same bytes as an uninterrupted save */
    size_t len;
    unsigned char *now = read_bytes(path, &len);
    CHECK(now && len == rlen && memcmp(now, refb, rlen) == 0, "successful save differs from an uninterrupted one");
    free(now);
    CHECK(kiln_module_load(c, path, true, NULL) == KILN_OK, "load: %s", kiln_error_message(ctx));
    sc = snap_take(c, NULL);
    CHECK(snap_diff(sb, sc, false, why, sizeof why) == 0, "the new file holds the second model: %s", why);
    snap_free(sc);
    CHECK(count_files_with(".tmp.") == 0, "temporary files left");
    /* the hook is off again: a save succeeds at once */
    CHECK(kiln_module_save(a, path, NULL) == KILN_OK, "save after the hook: %s", kiln_error_message(ctx));
    /* a checkpoint save fails the same way */
    kiln__io_fail_after(3);
    EXPECT_ERR(ctx, "checkpoint save", kiln_checkpoint_save(path, b, NULL, 0, NULL), KILN_ERR_IO, path);
    kiln__io_fail_after(0);
    CHECK(kiln_module_load(c, path, true, NULL) == KILN_OK, "file after a failed checkpoint save: %s",
          kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(count_files_with(".tmp.") == 0, "temporary files left");
    free(orig), free(refb);
    snap_free(sa), snap_free(sb);
    kiln_module_free(a), kiln_module_free(b), kiln_module_free(c);
}

/* ---- 6. resume-exact training ------------------------------------------------------------- */

#define RB 6  /* batch */
#define RIN 8 /* features */
#define ROUT 4
#define RSTEPS 8

static float rx[RSTEPS][RB * RIN], ry[RSTEPS][RB * ROUT];

static kiln_module *rnet(kiln_ctx *ctx, uint64_t seed) {
    kiln_manual_seed(ctx, seed);
    return kiln_nn_sequential(ctx, 5,
                              (kiln_module *[]){kiln_nn_linear(ctx, RIN, 16, true),
                                                kiln_nn_batchnorm1d(ctx, 16, 1e-5f, 0.1f),
                                                kiln_nn_activation(ctx, KILN_ACT_RELU, 0), kiln_nn_dropout(ctx, 0.3f),
                                                kiln_nn_linear(ctx, 16, ROUT, true)});
}

enum { OPT_ADAM, OPT_SGD };

static kiln_optim *ropt(kiln_ctx *ctx, kiln_module *m, int kind, double lr) {
    kiln_tensor *ps[16];
    int n = kiln_module_parameters(m, ps, 16);
    if (kind == OPT_ADAM) {
        kiln_adam_opts o = kiln_adam_defaults();
        o.lr = lr;
        return kiln_adam(ctx, ps, n, &o);
    }
    kiln_sgd_opts o = kiln_sgd_defaults();
    o.lr = lr;
    o.momentum = 0.9;
    o.weight_decay = 1e-3;
    return kiln_sgd(ctx, ps, n, &o);
}

static void rtrain(kiln_ctx *ctx, kiln_module *m, kiln_optim *opt, int from, int to) {
    kiln_module_train(m, true);
    for (int k = from; k < to; k++) {
        kiln_scope_begin(ctx);
        kiln_tensor *x = kiln_from_host(ctx, rx[k], KILN_F32, 2, (int64_t[]){RB, RIN});
        kiln_tensor *y = kiln_from_host(ctx, ry[k], KILN_F32, 2, (int64_t[]){RB, ROUT});
        kiln_tensor *loss = kiln_mse_loss(ctx, kiln_forward(m, x), y, KILN_MEAN);
        kiln_optim_zero_grad(opt);
        kiln_backward(loss);
        kiln_optim_step(opt);
        float l = kiln_tensor_item(loss);
        CHECK(isfinite(l), "step %d: loss %g: %s", k, l, kiln_error_message(ctx));
        kiln_scope_end(ctx);
    }
}

/* A copy of checkpoint src without entry `skip`, with `swap` (if not NULL) in place of
 * entry `swap_name` or added, and the known metadata keys. */
static void rewrite(kiln_ctx *ctx, const char *src, const char *dst, const char *skip, const char *swap_name,
                    kiln_tensor *swap) {
    static const char *const keys[] = {"format",        "kiln_version",     "model",
                                       "description",   "kiln_optimizer",   "kiln_lr",
                                       "kiln_rng_seed", "kiln_rng_counter", "epoch"};
    kiln_safetensors *f = kiln_safetensors_open(ctx, src);
    CHECK(f != NULL, "open %s: %s", src, kiln_error_message(ctx));
    if (!f) return;
    kiln_named_tensor all[64];
    int n = 0;
    bool swapped = false;
    kiln_scope_begin(ctx);
    for (int i = 0; i < kiln_safetensors_num_tensors(f) && n < 63; i++) {
        const char *name = kiln_safetensors_name(f, i);
        if (skip && strcmp(name, skip) == 0) continue;
        snprintf(all[n].name, sizeof all[n].name, "%s", name);
        if (swap_name && strcmp(name, swap_name) == 0) {
            all[n++].tensor = swap;
            swapped = true;
        } else {
            all[n++].tensor = kiln_safetensors_tensor(f, i);
        }
    }
    if (swap_name && !swapped) {
        snprintf(all[n].name, sizeof all[n].name, "%s", swap_name);
        all[n++].tensor = swap;
    }
    kiln_meta meta[16];
    int nm = 0;
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        const char *v = kiln_safetensors_meta(f, keys[k]);
        if (v) meta[nm++] = (kiln_meta){keys[k], v};
    }
    CHECK(kiln_safetensors_save(ctx, dst, n, all, nm, meta) == KILN_OK, "rewrite %s: %s", dst, kiln_error_message(ctx));
    kiln_scope_end(ctx);
    kiln_error_clear(ctx);
    kiln_safetensors_close(f);
}

static void test_resume_kind(kiln_ctx *ctx, int kind) {
    const char *kname = kind == OPT_ADAM ? "Adam" : "SGD";
    double lr = kind == OPT_ADAM ? 1e-2 : 0.05;
    char path[512];
    path_in(path, sizeof path, kind == OPT_ADAM ? "resume-adam.safetensors" : "resume-sgd.safetensors");

    /* straight: 8 steps */
    kiln_module *m = rnet(ctx, 7);
    kiln_optim *opt = ropt(ctx, m, kind, lr);
    CHECK(m && opt, "%s: build: %s", kname, kiln_error_message(ctx));
    if (!m || !opt) return;
    rtrain(ctx, m, opt, 0, RSTEPS);
    snap *straight = snap_take(m, opt);
    kiln_optim_free(opt);
    kiln_module_free(m);

    /* 4 steps, checkpoint */
    m = rnet(ctx, 7);
    opt = ropt(ctx, m, kind, lr);
    rtrain(ctx, m, opt, 0, RSTEPS / 2);
    snap *half = snap_take(m, opt);
    char why[256];
    CHECK(snap_diff(half, straight, false, why, sizeof why) > 0, "%s: 4 steps equal 8", kname);
    kiln_meta meta[2] = {{"epoch", "4"}, {"note", "resume test"}};
    CHECK(kiln_checkpoint_save(path, m, opt, 2, meta) == KILN_OK, "%s: checkpoint save: %s", kname,
          kiln_error_message(ctx));
    kiln_error_clear(ctx);
    int nstate = 0;
    { nstate = kiln_optim_num_states(opt); }
    int nparams = kiln_optim_num_params(opt);
    CHECK(nstate == (kind == OPT_ADAM ? 2 : 1) * nparams, "%s: %d state tensors", kname, nstate);
    kiln_optim_free(opt);
    kiln_module_free(m);
    check_layout(path, 9 + nstate + nparams);

    kiln_safetensors *f = kiln_safetensors_open(ctx, path);
    CHECK(f != NULL, "%s: open: %s", kname, kiln_error_message(ctx));
    if (f) {
        const char *v = kiln_safetensors_meta(f, "epoch");
        CHECK(v && strcmp(v, "4") == 0, "epoch '%s'", v ? v : "(none)");
        v = kiln_safetensors_meta(f, "note");
        CHECK(v && strcmp(v, "resume test") == 0, "note '%s'", v ? v : "(none)");
        v = kiln_safetensors_meta(f, "kiln_optimizer");
        CHECK(v && strcmp(v, kname) == 0, "kiln_optimizer '%s'", v ? v : "(none)");
        int k = kiln_safetensors_find(f, "optimizer.0.step");
        CHECK(k >= 0 && strcmp(kiln_safetensors_dtype(f, k), "I32") == 0, "optimizer.0.step entry");
        kiln_safetensors_close(f);
    }
    kiln_error_clear(ctx);

    /* fresh model and optimizer (other seed, other lr, RNG moved), load, 4 more steps */
    for (int control = 0; control < 2; control++) {
        m = rnet(ctx, 555 + (uint64_t)control);
        opt = ropt(ctx, m, kind, 0.5);
        kiln_scope_begin(ctx);
        kiln_rand_uniform(ctx, 0, 1, 1, (int64_t[]){1000});
        kiln_scope_end(ctx);
        kiln_load_report r;
        CHECK(kiln_checkpoint_load(path, m, opt, &r) == KILN_OK, "%s: checkpoint load: %s", kname,
              kiln_error_message(ctx));
        kiln_error_clear(ctx);
        CHECK(r.loaded == 9 + nstate && r.missing == 0 && r.unexpected == 0 && r.mismatched == 0,
              "%s: report %d loaded, %d/%d/%d: %s", kname, r.loaded, r.missing, r.unexpected, r.mismatched, r.detail);
        snap *loaded = snap_take(m, opt);
        CHECK(snap_diff(half, loaded, true, why, sizeof why) == 0, "%s: loaded state differs from the saved: %s", kname,
              why);
        snap_free(loaded);
        if (control) { /* moving the RNG must change the result: the check sees the RNG position */
            kiln_scope_begin(ctx);
            kiln_rand_uniform(ctx, 0, 1, 1, (int64_t[]){1});
            kiln_scope_end(ctx);
        }
        rtrain(ctx, m, opt, RSTEPS / 2, RSTEPS);
        snap *resumed = snap_take(m, opt);
        int nd = snap_diff(straight, resumed, false, why, sizeof why);
        if (!control)
            CHECK(nd == 0, "%s: resumed training is not bit-identical to the straight run: %d differences, first %s",
                  kname, nd, why);
        else
            CHECK(nd > 0, "%s: control: moving the RNG after the load did not change the result", kname);
        snap_free(resumed);
        kiln_optim_free(opt);
        kiln_module_free(m);
    }

    /* faults: each fails and changes nothing (model, optimizer state, steps, lr, RNG) */
    m = rnet(ctx, 900);
    kiln_optim *other = ropt(ctx, m, kind == OPT_ADAM ? OPT_SGD : OPT_ADAM, 0.02);
    rtrain(ctx, m, other, 0, 1);
    snap *before = snap_take(m, other);
    EXPECT_ERR(ctx, "another optimizer kind", kiln_checkpoint_load(path, m, other, NULL), KILN_ERR_INVALID_ARGUMENT,
               path, kname, kind == OPT_ADAM ? "SGD" : "Adam", "nothing was loaded");
    snap *after = snap_take(m, other);
    CHECK(snap_diff(before, after, true, why, sizeof why) == 0, "%s: a refused load changed state: %s", kname, why);
    snap_free(after);
    snap_free(before);
    kiln_optim_free(other);

    opt = ropt(ctx, m, kind, 0.02);
    rtrain(ctx, m, opt, 0, 1);
    before = snap_take(m, opt);
    char bad[512];
    path_in(bad, sizeof bad, "resume-bad.safetensors");
    static const char *const steps_gone = "optimizer.0.step";
    rewrite(ctx, path, bad, steps_gone, NULL, NULL);
    EXPECT_ERR(ctx, "missing step count", kiln_checkpoint_load(bad, m, opt, NULL), KILN_ERR_CORRUPT, bad,
               "no step count for optimizer parameter 0", "nothing was loaded");
    after = snap_take(m, opt);
    CHECK(snap_diff(before, after, true, why, sizeof why) == 0, "%s: missing step: state changed: %s", kname, why);
    snap_free(after);

    kiln_scope_begin(ctx);
    kiln_tensor *wrong = kiln_zeros(ctx, 1, (int64_t[]){3});
    char key[64];
    snprintf(key, sizeof key, "optimizer.1.%s", kind == OPT_ADAM ? "exp_avg" : "momentum_buffer");
    rewrite(ctx, path, bad, NULL, key, wrong);
    kiln_scope_end(ctx);
    EXPECT_ERR(ctx, "state of another shape", kiln_checkpoint_load(bad, m, opt, NULL), KILN_ERR_SHAPE, bad, key, "[3]",
               "nothing was loaded");
    after = snap_take(m, opt);
    CHECK(snap_diff(before, after, true, why, sizeof why) == 0, "%s: wrong state shape: state changed: %s", kname, why);
    snap_free(after);

    kiln_scope_begin(ctx);
    kiln_tensor *extra = kiln_zeros(ctx, 2, (int64_t[]){16, RIN});
    rewrite(ctx, path, bad, NULL, "optimizer.0.bogus", extra);
    kiln_scope_end(ctx);
    kiln_status s = kiln_checkpoint_load(bad, m, opt, NULL);
    EXPECT_ERR(ctx, "unknown state key", s, KILN_ERR_INVALID_ARGUMENT, "bogus");
    after = snap_take(m, opt);
    CHECK(snap_diff(before, after, true, why, sizeof why) == 0, "%s: unknown state key: state changed: %s", kname, why);
    snap_free(after);

    /* the same into a fresh optimizer (no state yet): the valid entries before the unknown one
     * must not have been created */
    {
        kiln_optim *fresh = ropt(ctx, m, kind, 0.02);
        snap *fb = snap_take(m, fresh);
        EXPECT_ERR(ctx, "unknown state key, fresh optimizer", kiln_checkpoint_load(bad, m, fresh, NULL),
                   KILN_ERR_INVALID_ARGUMENT, "bogus");
        snap *fa = snap_take(m, fresh);
        CHECK(snap_diff(fb, fa, true, why, sizeof why) == 0,
              "%s: unknown state key: a fresh optimizer changed (%d state tensors before, %d after): %s", kname,
              fb->n - 9, fa->n - 9, why);
        snap_free(fa);
        snap_free(fb);
        kiln_optim_free(fresh);
    }

    rewrite(ctx, path, bad, "1.running_mean", NULL, NULL);
    EXPECT_ERR(ctx, "model tensor missing", kiln_checkpoint_load(bad, m, opt, NULL), KILN_ERR_INVALID_ARGUMENT, bad,
               "1.running_mean", "nothing was loaded");
    after = snap_take(m, opt);
    CHECK(snap_diff(before, after, true, why, sizeof why) == 0, "%s: model mismatch: state changed: %s", kname, why);
    snap_free(after);

    /* a model-only file (no optimizer metadata) as a checkpoint with an optimizer */
    char model_only[512];
    path_in(model_only, sizeof model_only, "model-only.safetensors");
    CHECK(kiln_module_save(m, model_only, NULL) == KILN_OK, "model save: %s", kiln_error_message(ctx));
    EXPECT_ERR(ctx, "model-only file", kiln_checkpoint_load(model_only, m, opt, NULL), KILN_ERR_INVALID_ARGUMENT,
               model_only, "none");
    after = snap_take(m, opt);
    CHECK(snap_diff(before, after, true, why, sizeof why) == 0, "%s: model-only file: state changed: %s", kname, why);
    snap_free(after);
    snap_free(before);

    /* the checkpoint loads as a plain model (optimizer entries are not "unexpected") */
    kiln_load_report r;
    CHECK(kiln_module_load(m, path, true, &r) == KILN_OK && r.loaded == 9 && r.unexpected == 0,
          "%s: checkpoint as a model: %s", kname, kiln_error_message(ctx));
    kiln_error_clear(ctx);
    /* and without an optimizer */
    CHECK(kiln_checkpoint_load(path, m, NULL, &r) == KILN_OK && r.loaded == 9, "%s: checkpoint without optimizer: %s",
          kname, kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_optim_free(opt);
    kiln_module_free(m);
    snap_free(half);
    snap_free(straight);
}

static void test_resume(kiln_ctx *ctx) {
    for (int k = 0; k < RSTEPS; k++) {
        h_fill(rx[k], RB * RIN, -1, 1);
        h_fill(ry[k], RB * ROUT, -1, 1);
    }
    test_resume_kind(ctx, OPT_ADAM);
    test_resume_kind(ctx, OPT_SGD);
}

/* ---- 7. arguments ------------------------------------------------------------------------- */

static void test_null(kiln_ctx *ctx) {
    char p[512];
    path_in(p, sizeof p, "null.safetensors");
    kiln_module *m = cnn(ctx, 70);
    kiln_optim *opt = ropt(ctx, m, OPT_ADAM, 1e-3);
    kiln_load_report r;
    CHECK(kiln_module_save(NULL, p, NULL) == KILN_ERR_NULL, "module_save(NULL)");
    EXPECT_ERR(ctx, "module_save path NULL", kiln_module_save(m, NULL, NULL), KILN_ERR_NULL, "NULL");
    CHECK(kiln_module_load(NULL, p, true, &r) == KILN_ERR_NULL, "module_load(NULL)");
    EXPECT_ERR(ctx, "module_load path NULL", kiln_module_load(m, NULL, true, &r), KILN_ERR_NULL, "NULL");
    CHECK(kiln_checkpoint_save(p, NULL, opt, 0, NULL) == KILN_ERR_NULL, "checkpoint_save(NULL model)");
    EXPECT_ERR(ctx, "checkpoint_save path NULL", kiln_checkpoint_save(NULL, m, opt, 0, NULL), KILN_ERR_NULL, "NULL");
    EXPECT_ERR(ctx, "checkpoint_save meta NULL", kiln_checkpoint_save(p, m, opt, 2, NULL), KILN_ERR_NULL, "NULL");
    EXPECT_ERR(ctx, "checkpoint_save meta key NULL", kiln_checkpoint_save(p, m, opt, 1, &(kiln_meta){NULL, "v"}),
               KILN_ERR_NULL, "NULL");
    EXPECT_ERR(ctx, "checkpoint_save reserved key", kiln_checkpoint_save(p, m, opt, 1, &(kiln_meta){"kiln_lr", "1"}),
               KILN_ERR_INVALID_ARGUMENT, p, "kiln_lr");
    CHECK(access(p, F_OK) != 0, "a refused checkpoint save created %s", p);
    CHECK(kiln_checkpoint_load(p, NULL, opt, &r) == KILN_ERR_NULL, "checkpoint_load(NULL model)");
    EXPECT_ERR(ctx, "checkpoint_load path NULL", kiln_checkpoint_load(NULL, m, opt, &r), KILN_ERR_NULL, "NULL");
    CHECK(kiln_safetensors_open(NULL, p) == NULL, "open(NULL ctx)");
    CHECK(kiln_safetensors_open(ctx, NULL) == NULL, "open(NULL path)");
    EXPECT_ERR(ctx, "open path NULL", kiln_error_status(ctx), KILN_ERR_NULL, "NULL");
    CHECK(kiln_safetensors_parse(NULL, "x", 1, "w") == NULL, "parse(NULL ctx)");
    CHECK(kiln_safetensors_parse(ctx, NULL, 10, "w") == NULL, "parse(NULL data)");
    EXPECT_ERR(ctx, "parse data NULL", kiln_error_status(ctx), KILN_ERR_NULL, "NULL");
    CHECK(kiln_safetensors_parse(ctx, NULL, 0, NULL) == NULL, "parse(NULL, 0)");
    EXPECT_ERR(ctx, "parse empty", kiln_error_status(ctx), KILN_ERR_CORRUPT, "buffer");
    kiln_named_tensor nt = {.name = "x", .tensor = NULL};
    CHECK(kiln_safetensors_save(NULL, p, 0, NULL, 0, NULL) == KILN_ERR_NULL, "save(NULL ctx)");
    EXPECT_ERR(ctx, "save tensors NULL", kiln_safetensors_save(ctx, p, 1, NULL, 0, NULL), KILN_ERR_NULL, "NULL");
    EXPECT_ERR(ctx, "save path NULL", kiln_safetensors_save(ctx, NULL, 0, NULL, 0, NULL), KILN_ERR_NULL, "NULL");
    EXPECT_ERR(ctx, "save tensor NULL", kiln_safetensors_save(ctx, p, 1, &nt, 0, NULL), KILN_ERR_NULL, "'x'");
    EXPECT_ERR(ctx, "save meta value NULL", kiln_safetensors_save(ctx, p, 0, NULL, 1, &(kiln_meta){"k", NULL}),
               KILN_ERR_NULL, "metadata");
    kiln_scope_begin(ctx);
    kiln_named_tensor dup[2] = {{.name = "d", .tensor = kiln_zeros(ctx, 1, (int64_t[]){2})},
                                {.name = "d", .tensor = kiln_zeros(ctx, 1, (int64_t[]){2})}};
    EXPECT_ERR(ctx, "duplicate names", kiln_safetensors_save(ctx, p, 2, dup, 0, NULL), KILN_ERR_INVALID_ARGUMENT, "'d'",
               "twice");
    kiln_scope_end(ctx);
    CHECK(access(p, F_OK) != 0, "a refused save created %s", p);
    CHECK(kiln_safetensors_num_tensors(NULL) == 0 && kiln_safetensors_name(NULL, 0) == NULL &&
              kiln_safetensors_dtype(NULL, 0) == NULL && kiln_safetensors_shape(NULL, 0, NULL) == -1 &&
              kiln_safetensors_find(NULL, "x") == -1 && kiln_safetensors_meta(NULL, "x") == NULL &&
              kiln_safetensors_tensor(NULL, 0) == NULL,
          "accessors with NULL");
    kiln_safetensors_close(NULL);
    /* an empty file list and a view save and load */
    CHECK(kiln_safetensors_save(ctx, p, 0, NULL, 0, NULL) == KILN_OK, "empty save: %s", kiln_error_message(ctx));
    kiln_safetensors *f = kiln_safetensors_open(ctx, p);
    CHECK(f && kiln_safetensors_num_tensors(f) == 0 && kiln_safetensors_find(f, NULL) == -1 &&
              kiln_safetensors_meta(f, NULL) == NULL,
          "empty file: %s", kiln_error_message(ctx));
    kiln_safetensors_close(f);
    kiln_scope_begin(ctx);
    float v[6] = {1, 2, 3, 4, 5, 6};
    kiln_tensor *base = kiln_from_host(ctx, v, KILN_F32, 2, (int64_t[]){2, 3});
    kiln_named_tensor views[1] = {{.name = "t", .tensor = kiln_transpose(ctx, base, 0, 1)}};
    CHECK(kiln_safetensors_save(ctx, p, 1, views, 0, NULL) == KILN_OK, "view save: %s", kiln_error_message(ctx));
    f = kiln_safetensors_open(ctx, p);
    float got[6] = {0};
    const int64_t *shape = NULL;
    CHECK(f && kiln_safetensors_shape(f, 0, &shape) == 2 && shape[0] == 3 && shape[1] == 2 &&
              kiln_to_host(kiln_safetensors_tensor(f, 0), got, sizeof got) == KILN_OK && got[0] == 1 && got[1] == 4 &&
              got[2] == 2 && got[5] == 6,
          "a transposed view saves row-major: %g %g %g", got[0], got[1], got[2]);
    kiln_safetensors_close(f);
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    kiln_optim_free(opt);
    kiln_module_free(m);
}

static void run(kiln_ctx *ctx) {
    test_round_trip(ctx);
    test_torch(ctx);
    test_strict(ctx);
    test_corrupt(ctx);
    test_dtypes(ctx);
    test_atomic(ctx);
    test_resume(ctx);
    test_null(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) < 200, "%lld tensors alive at the end", (long long)kiln_ctx_num_tensors(ctx));
}

int main(void) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/kiln-ckpt-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "mkdtemp failed\n");
        return 1;
    }
    H_FOR_EACH_DEVICE(run);
    cleanup_tmp();
    return h_finish();
}

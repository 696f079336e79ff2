/* tests/test_registry.c - the op list (src/ops/registry.h) against what the code, the
 * headers and the test data hold. It fails naming the op when
 *   - a differentiable op's output (inputs requiring grad) has no grad_fn, or its backward
 *     fails or gives a non-finite gradient; or a non-differentiable one records a backward
 *     (the smoke run of `kiln ops`, tools/ops.c's ops_smoke, on every device);
 *   - its golden case prefix has no key in tests/golden/<family>.safetensors;
 *   - it names no reference test, or a named test file does not use its function;
 *   - its function is declared in no public header;
 * and naming the function when functional.h, ops.h or tensor.h declares an op - a
 * `kiln_tensor *kiln_x(kiln_ctx *ctx, ...)` - that the list lacks. Files are read from the
 * source tree: $KILN_GOLDEN_DIR is <source>/tests/golden. */
#include <ctype.h>

#include "golden.h"
#include "ops/registry.h"
#include "../tools/ops.h"

static char src_root[1024];

/* The whole of <source>/rel (malloc'ed, NUL-terminated), or NULL. */
static char *slurp(const char *rel) {
    char path[1400];
    snprintf(path, sizeof path, "%s/%s", src_root, rel);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)(n > 0 ? n : 0) + 1);
    size_t got = s ? fread(s, 1, (size_t)(n > 0 ? n : 0), f) : 0;
    fclose(f);
    if (s) s[got] = 0;
    return s;
}

static bool file_exists(const char *rel) {
    char *s = slurp(rel);
    free(s);
    return s != NULL;
}

/* Whether text calls or declares fn: "fn(" not preceded by an identifier character. */
static bool mentions_call(const char *text, const char *fn) {
    size_t n = strlen(fn);
    for (const char *p = strstr(text, fn); p; p = strstr(p + 1, fn))
        if ((p == text || !(isalnum((unsigned char)p[-1]) || p[-1] == '_')) && p[n] == '(') return true;
    return false;
}

/* Whether a test file uses fn: calls it, or names its stem first in a table macro that
 * pastes kiln_##stem (test_elementwise.c's "BIN(pow, ..."). */
static bool test_uses(const char *text, const char *fn) {
    if (mentions_call(text, fn)) return true;
    char stem[128];
    snprintf(stem, sizeof stem, "(%s,", fn + strlen("kiln_"));
    return strstr(text, stem) != NULL;
}

static int find_fn(const char *fn) {
    for (int k = 0; k < KILN__OP_COUNT; k++)
        if (strcmp(kiln__op_get((kiln__op)k)->fn, fn) == 0) return k;
    return -1;
}

/* ---- the public headers: every op they declare is on the list ---------------------------- */

/* Removes comments, so that a declaration's text is plain C. */
static void strip_comments(char *s) {
    char *w = s;
    for (const char *r = s; *r;) {
        if (r[0] == '/' && r[1] == '*') {
            const char *e = strstr(r + 2, "*/");
            r = e ? e + 2 : r + strlen(r);
            *w++ = ' ';
        } else if (r[0] == '/' && r[1] == '/') {
            while (*r && *r != '\n') r++;
        } else {
            *w++ = *r++;
        }
    }
    *w = 0;
}

static const char *skip_space(const char *p) {
    while (isspace((unsigned char)*p)) p++;
    return p;
}

/* If p starts "KILN_API kiln_tensor *kiln_x(kiln_ctx *", copies kiln_x into name. */
static bool op_declaration(const char *p, char *name, size_t cap) {
    static const char *const words[] = {"KILN_API", "kiln_tensor", "*"};
    for (int w = 0; w < 3; w++) {
        p = skip_space(p);
        size_t n = strlen(words[w]);
        if (strncmp(p, words[w], n) != 0) return false;
        p += n;
    }
    p = skip_space(p);
    size_t n = 0;
    while (isalnum((unsigned char)p[n]) || p[n] == '_') n++;
    if (n == 0 || n >= cap || strncmp(p, "kiln_", 5) != 0) return false;
    memcpy(name, p, n);
    name[n] = 0;
    p = skip_space(p + n);
    if (*p != '(') return false;
    p = skip_space(p + 1);
    return strncmp(p, "kiln_ctx", 8) == 0 && isspace((unsigned char)p[8]) | (p[8] == '*');
}

static void test_headers_declare_only_listed_ops(void) {
    static const char *const hdrs[] = {"include/kiln/functional.h", "include/kiln/ops.h", "include/kiln/tensor.h"};
    int found = 0;
    for (size_t h = 0; h < sizeof hdrs / sizeof hdrs[0]; h++) {
        char *text = slurp(hdrs[h]);
        CHECK(text != NULL, "%s/%s cannot be read", src_root, hdrs[h]);
        if (!text) continue;
        strip_comments(text);
        for (const char *p = strstr(text, "KILN_API"); p; p = strstr(p + 1, "KILN_API")) {
            char name[128];
            if (!op_declaration(p, name, sizeof name)) continue;
            found++;
            CHECK(find_fn(name) >= 0, "%s declares the op %s, which src/ops/registry.h does not list", hdrs[h], name);
        }
        free(text);
    }
    /* the parser itself: the headers hold dozens of ops */
    CHECK(found > KILN__OP_COUNT / 2, "only %d op declarations found in the headers: the parser is broken", found);
}

/* ---- each op's files, tests and golden case ----------------------------------------------- */

static void test_families(void) {
    for (int f = 0; f < KILN__FAM_COUNT; f++) {
        const kiln__family_info *fi = kiln__family_get((kiln__family)f);
        CHECK(file_exists(fi->source), "family %s: its source %s does not exist", fi->name, fi->source);
        CHECK(!fi->kernel || file_exists(fi->kernel), "family %s: its kernels %s do not exist", fi->name, fi->kernel);
    }
}

static void test_declared(void) {
    static const char *const hdrs[] = {"include/kiln/functional.h", "include/kiln/ops.h", "include/kiln/tensor.h",
                                       "include/kiln/optim.h"};
    char *text[4];
    for (int h = 0; h < 4; h++) text[h] = slurp(hdrs[h]);
    for (int k = 0; k < KILN__OP_COUNT; k++) {
        const kiln__op_info *op = kiln__op_get((kiln__op)k);
        bool declared = false;
        for (int h = 0; h < 4; h++) declared |= text[h] && mentions_call(text[h], op->fn);
        CHECK(declared, "op %s: its function %s is declared in no public header", op->name, op->fn);
    }
    for (int h = 0; h < 4; h++) free(text[h]);
}

static void test_reference_tests(void) {
    for (int k = 0; k < KILN__OP_COUNT; k++) {
        const kiln__op_info *op = kiln__op_get((kiln__op)k);
        int named = 0;
        for (const char *p = op->tests; p && *p;) {
            p = skip_space(p);
            size_t n = strcspn(p, " ");
            if (n == 0) break;
            char rel[256];
            snprintf(rel, sizeof rel, "tests/%.*s", (int)n, p);
            p += n;
            named++;
            char *text = slurp(rel);
            CHECK(text != NULL, "op %s: its reference test %s does not exist", op->name, rel);
            CHECK(!text || test_uses(text, op->fn), "op %s: its reference test %s never calls %s", op->name, rel,
                  op->fn);
            free(text);
        }
        CHECK(named > 0, "op %s has no reference test in src/ops/registry.h", op->name);
        CHECK(op->golden_prefix || op->refs, "op %s is compared against nothing (no golden case, no KILN__REF_*)",
              op->name);
    }
}

static void test_golden_cases(void) {
    for (int f = 0; f < KILN__FAM_COUNT; f++) {
        const kiln__family_info *fi = kiln__family_get((kiln__family)f);
        bool used = false;
        for (int k = 0; k < KILN__OP_COUNT; k++)
            used |= kiln__op_get((kiln__op)k)->family == (kiln__family)f && kiln__op_get((kiln__op)k)->golden_prefix;
        if (!used) continue;
        golden g;
        bool open = golden_open(&g, fi->name); /* a failed CHECK names the file */
        for (int k = 0; k < KILN__OP_COUNT; k++) {
            const kiln__op_info *op = kiln__op_get((kiln__op)k);
            if (op->family != (kiln__family)f || !op->golden_prefix) continue;
            if (op->golden_pidx < 0)
                CHECK(open && golden_has_prefix(&g, op->golden_prefix, -1, 0),
                      "op %s: no golden case \"%s*\" in tests/golden/%s.safetensors (tests/golden/gen_%s.py)", op->name,
                      op->golden_prefix, fi->name, fi->name);
            else
                CHECK(open && golden_has_prefix(&g, op->golden_prefix, op->golden_pidx, op->golden_pval),
                      "op %s: no golden case \"%s*\" with parameter %d = %d in tests/golden/%s.safetensors", op->name,
                      op->golden_prefix, op->golden_pidx, op->golden_pval, fi->name);
        }
        if (open) golden_close(&g);
    }
}

/* ---- on each device: backward where the list says so, none where it does not ---------------- */

static void run(kiln_ctx *ctx) {
    static const kiln_dtype dts[3] = {KILN_F32, KILN_F16, KILN_BF16};
    for (int d = 0; d < 3; d++)
        for (int k = 0; k < KILN__OP_COUNT; k++) {
            char why[512] = "";
            bool ok = ops_smoke(ctx, k, dts[d], why, sizeof why);
            CHECK(ok, "op %s (%s, %s) on %s inputs: %s", kiln__op_name((kiln__op)k), kiln__op_get((kiln__op)k)->fn,
                  kiln__op_get((kiln__op)k)->grad ? "differentiable" : "not differentiable", kiln_dtype_name(dts[d]),
                  why);
        }
    CHECK(kiln_ctx_num_tensors(ctx) == 0, "%lld tensors left after the smoke runs",
          (long long)kiln_ctx_num_tensors(ctx));
    CHECK_OK(ctx);
}

/* The registry's own lookups. */
static void test_lookups(void) {
    for (int k = 0; k < KILN__OP_COUNT; k++)
        CHECK(kiln__op_find(kiln__op_name((kiln__op)k)) == k, "op %s: two ops share its name",
              kiln__op_name((kiln__op)k));
    CHECK(kiln__op_find("no_such_op") == -1 && kiln__op_get(KILN__OP_COUNT) == NULL &&
              strcmp(kiln__op_name(KILN__OP_COUNT), "?") == 0 && kiln__family_get(KILN__FAM_COUNT) == NULL,
          "lookups out of range");
    CHECK(strcmp(kiln__op_name(KILN__OP_RELU), "relu") == 0 &&
              kiln__op_get(KILN__OP_RELU)->family == KILN__FAM_ACTIVATION,
          "relu's row");
}

int main(void) {
    const char *g = getenv("KILN_GOLDEN_DIR");
    if (!g || !*g) {
        fprintf(stderr, "KILN_GOLDEN_DIR is not set (tests/meson.build sets it to <source>/tests/golden)\n");
        return 1;
    }
    snprintf(src_root, sizeof src_root, "%s/../..", g);
    test_lookups();
    test_families();
    test_headers_declare_only_listed_ops();
    test_declared();
    test_reference_tests();
    test_golden_cases();
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}

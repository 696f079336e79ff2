/* tests/test_tune.c - the KilnGemm line of the tune file (src/device/tuning.c): kiln's own
 * GEMM kernels' parameter set as `kiln tune` stores it. Parsed and formatted back; a bad
 * line dropped alone (the rest of the file still applies, kiln's kernels keep the table's
 * set, a log line says why); a file of another device, KILN_TUNE=off and KILN_TUNE=builtin
 * ignored; a stored set is what kiln__gemm_params_of returns after kiln_open, below the
 * KILN_GEMM_PARAMS override; and products computed with a stored odd set match a
 * double-precision reference (tolerance as tests/test_matmul.c: C k u sum |a||b|, C = 2).
 * KILN_TUNE=auto's search at the first product (src/ops/gemm.c): test_auto says what it
 * checks; and the file stays whole when threads store at once. */
#define _POSIX_C_SOURCE 200809L /* setenv, mkdtemp */
#include <dirent.h>
#include <pthread.h>
#include <unistd.h>

#include "harness.h"

#define U_F32 (1.0 / 16777216.0)

/* kiln__log's lines while a test listens */
static char g_log[4096];
static void on_log(int level, const char *msg, void *user) {
    (void)level, (void)user;
    size_t n = strlen(g_log);
    snprintf(g_log + n, sizeof g_log - n, "%s\n", msg);
}

static bool same_params(const kiln__gemm_params *a, const kiln__gemm_params *b) {
    return a->nt_rm == b->nt_rm && a->nt_rn == b->nt_rn && a->nt_vw == b->nt_vw && a->nt_ku == b->nt_ku &&
           a->nn_rm == b->nn_rm && a->nn_nv == b->nn_nv && a->nn_vw == b->nn_vw && a->nn_ku == b->nn_ku;
}

/* An odd set, none of the table's: blocks and unrolls away from the powers of two. */
static const kiln__gemm_params odd = {"tuned", 3, 2, 4, 3, 5, 3, 4, 2};
#define ODD_LINE "KilnGemm NT_RM=3 NT_RN=2 NT_VW=4 NT_KU=3 NN_RM=5 NN_NV=3 NN_VW=4 NN_KU=2"

static void test_parse_format(void) {
    kiln__tune_set s, back;
    char err[256], buf[4096];
    CHECK(kiln__tune_parse("# c\nGemmRoutine XGEMM_MIN_INDIRECT_SIZE=5\n" ODD_LINE "\n", &s, NULL, err, sizeof err) ==
              KILN_OK,
          "parse: %s", err);
    CHECK(s.has_gemm && same_params(&s.gemm, &odd) && !s.gemm_err[0], "KilnGemm parsed: %s", s.gemm_err);
    CHECK(s.has[2][0] && s.v[2][0] == 5, "the CLBlast line beside it parsed");
    kiln__tune_format(&s, buf, sizeof buf);
    CHECK(strstr(buf, ODD_LINE "\n") != NULL, "formatted: '%s'", buf);
    CHECK(kiln__tune_parse(buf, &back, NULL, err, sizeof err) == KILN_OK && back.has_gemm &&
              same_params(&back.gemm, &odd) && back.has[2][0] && back.v[2][0] == 5,
          "round trip of '%s': %s", buf, err);
    /* a buffer too small for the line: no partial line (it would parse as another set) */
    kiln__tune_set only;
    memset(&only, 0, sizeof only);
    only.has_gemm = true;
    only.gemm = odd;
    char small[40];
    kiln__tune_format(&only, small, sizeof small);
    CHECK(small[0] == '\0', "partial KilnGemm line in a %zu-byte buffer: '%s'", sizeof small, small);
    char tight[sizeof ODD_LINE]; /* the line and its NUL, no room for the newline */
    kiln__tune_format(&only, tight, sizeof tight);
    CHECK(tight[0] == '\0', "KilnGemm line without its newline: '%s'", tight);
    /* merge: the KilnGemm set goes over */
    kiln__tune_set dst;
    memset(&dst, 0, sizeof dst);
    kiln__tune_merge(&dst, &s);
    CHECK(dst.has_gemm && same_params(&dst.gemm, &odd), "merge takes the KilnGemm set");

    /* bad lines: dropped alone, the reason kept, the other lines still parsed */
    static const struct {
        const char *line, *why;
    } bad[] = {
        {"KilnGemm NT_RM=3 NT_RN=2 NT_VW=4 NT_KU=3 NN_RM=5 NN_NV=3 NN_VW=4", "NN_KU missing"},
        {"KilnGemm NT_RM=0 NT_RN=2 NT_VW=4 NT_KU=3 NN_RM=5 NN_NV=3 NN_VW=4 NN_KU=2", "NT_RM=0: must be in 1..16"},
        {"KilnGemm NT_RM=3 NT_RN=2 NT_VW=6 NT_KU=3 NN_RM=5 NN_NV=3 NN_VW=4 NN_KU=2", "NT_VW=6: the vector width"},
        {"KilnGemm NT_RM=3 NT_RN=2 NT_VW=4 NT_KU=3 NN_RM=5 NN_NV=17 NN_VW=4 NN_KU=2", "NN_NV=17"},
        {"KilnGemm NT_RM=3 NT_RN=2 NT_VW=4 NT_KU=9 NN_RM=5 NN_NV=3 NN_VW=4 NN_KU=2", "NT_KU=9: must be in 1..8"},
        {"KilnGemm NT_RM=3 NT_RN=2 NT_VW=4 NT_KU=3 NN_RM=-5 NN_NV=3 NN_VW=4 NN_KU=2", "NN_RM=-5"},
        {"KilnGemm NT_RM=x NT_RN=2 NT_VW=4 NT_KU=3 NN_RM=5 NN_NV=3 NN_VW=4 NN_KU=2", "bad parameter 'NT_RM=x'"},
        {"KilnGemm NT_RM=3 NT_RM=3 NT_RN=2 NT_VW=4 NT_KU=3 NN_RM=5 NN_NV=3 NN_VW=4 NN_KU=2", "given twice"},
        {"KilnGemm MWG=64 NT_RN=2 NT_VW=4 NT_KU=3 NN_RM=5 NN_NV=3 NN_VW=4 NN_KU=2", "bad parameter 'MWG=64'"},
        {"KilnGemm NT_RM=99999999999 NT_RN=2 NT_VW=4 NT_KU=3 NN_RM=5 NN_NV=3 NN_VW=4 NN_KU=2", "NT_RM=99999999999"},
        {"KilnGemm", "NT_RM missing"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[512];
        snprintf(text, sizeof text, "GemmRoutine XGEMM_MIN_INDIRECT_SIZE=5\n%s\nCopy COPY_DIMX=32\n", bad[i].line);
        kiln_status st = kiln__tune_parse(text, &s, NULL, err, sizeof err);
        CHECK(st == KILN_OK, "'%s': the rest of the file must still parse: %s", bad[i].line, err);
        CHECK(!s.has_gemm, "'%s' accepted", bad[i].line);
        CHECK(strstr(s.gemm_err, "line 2: KilnGemm") && strstr(s.gemm_err, bad[i].why), "'%s': reason '%s'",
              bad[i].line, s.gemm_err);
        CHECK(s.has[2][0] && s.v[2][0] == 5 && s.has[3][0] && s.v[3][0] == 32, "'%s': the other lines dropped",
              bad[i].line);
    }
}

/* Writes text to the device's tune file. */
static bool write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return false;
    fputs(text, f);
    return fclose(f) == 0;
}

/* Opens spec (NULL, with a failed check, when it does not open). */
static kiln_ctx *open_spec(const char *spec) {
    kiln_ctx *ctx = NULL;
    if (kiln_open(&ctx, spec) != KILN_OK) {
        CHECK(0, "kiln_open(%s): %s", spec, kiln_last_error());
        return NULL;
    }
    return ctx;
}

/* Products with the stored set through kiln's kernels: A B, A^T B, A B^T against double. */
static void check_products(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    kiln__hooks_of(ctx)->gemm_own = 1;
    enum { m = 11, n = 29, k = 19 }; /* past a block, a vector and a K step of the odd set */
    float a[m * k], b[k * n];
    h_fill(a, m * k, -1, 1);
    h_fill(b, k * n, -1, 1);
    static const int flags[] = {0, KILN_TRANS_A, KILN_TRANS_B};
    for (int f = 0; f < 3; f++) {
        bool ta = flags[f] & KILN_TRANS_A, tb = flags[f] & KILN_TRANS_B;
        /* the same logical A (m x k) and B (k x n), stored transposed where the flag says */
        float as[m * k], bs[k * n];
        for (int64_t i = 0; i < m; i++)
            for (int64_t p = 0; p < k; p++) as[ta ? p * m + i : i * k + p] = a[i * k + p];
        for (int64_t p = 0; p < k; p++)
            for (int64_t j = 0; j < n; j++) bs[tb ? j * k + p : p * n + j] = b[p * n + j];
        kiln_tensor *A = kiln_from_host(ctx, as, KILN_F32, 2, ta ? (int64_t[]){k, m} : (int64_t[]){m, k});
        kiln_tensor *B = kiln_from_host(ctx, bs, KILN_F32, 2, tb ? (int64_t[]){n, k} : (int64_t[]){k, n});
        kiln_tensor *C = kiln_matmul_ex(ctx, A, B, flags[f]);
        float *got = C ? h_read(C) : NULL;
        CHECK(got != NULL, "flags %d: %s", flags[f], kiln_error_message(ctx));
        double worst = 0;
        for (int64_t i = 0; got && i < m; i++)
            for (int64_t j = 0; j < n; j++) {
                double s = 0, mag = 0;
                for (int64_t p = 0; p < k; p++) {
                    s += (double)a[i * k + p] * b[p * n + j];
                    mag += fabs((double)a[i * k + p] * b[p * n + j]);
                }
                double r = fabs(got[i * n + j] - s) / (2.0 * (double)k * U_F32 * mag + 1e-30);
                if (r > worst) worst = r;
            }
        CHECK(got && worst <= 1.0, "stored odd set, flags %d (%lldx%lldx%lld): error ratio %.3g", flags[f],
              (long long)m, (long long)n, (long long)k, worst);
        free(got);
    }
    kiln__hooks_of(ctx)->gemm_own = 0;
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

static void test_stored(const char *spec) {
    kiln_ctx *ctx = open_spec(spec);
    if (!ctx) return;
    kiln_device_info info = *kiln_ctx_device(ctx);
    const kiln__gemm_params *table = &kiln__gemm_sets[kiln__gemm_choose(&info, NULL, 0, NULL)];
    CHECK(kiln__gemm_params_of(ctx) == table, "no file: the table's set");
    kiln_close(ctx);
    char path[1200];
    CHECK(kiln__tune_path(&info, path, sizeof path) == KILN_OK, "tune path: %s", kiln_last_error());

    /* a stored set: what kiln's kernels run with after kiln_open, and the products agree */
    kiln__tune_set s;
    memset(&s, 0, sizeof s);
    s.has_gemm = true;
    s.gemm = odd;
    char saved[1200];
    CHECK(kiln__tune_save(&info, &s, "test_tune", saved, sizeof saved) == KILN_OK && strcmp(saved, path) == 0,
          "save: %s", kiln_last_error());
    if ((ctx = open_spec(spec))) {
        const kiln__gemm_params *p = kiln__gemm_params_of(ctx);
        CHECK(p && same_params(p, &odd) && strcmp(p->name, "tuned") == 0, "stored set not used: %s",
              p ? p->name : "none");
        CHECK(strcmp(kiln__tune_source(), "stored by kiln tune") == 0, "source '%s'", kiln__tune_source());
        check_products(ctx);
        /* KILN_GEMM_PARAMS and the test hook still come first */
        setenv("KILN_GEMM_PARAMS", "vec4", 1);
        CHECK(kiln__gemm_params_of(ctx) == &kiln__gemm_sets[3], "KILN_GEMM_PARAMS=vec4 over the stored set");
        unsetenv("KILN_GEMM_PARAMS");
        kiln__hooks_of(ctx)->gemm_params = 1;
        CHECK(kiln__gemm_params_of(ctx) == &kiln__gemm_sets[0], "hooks.gemm_params over the stored set");
        kiln__hooks_of(ctx)->gemm_params = 0;
        kiln_close(ctx);
    }
    /* KILN_TUNE=off and builtin: the table's set */
    static const char *const modes[] = {"off", "builtin"};
    for (int i = 0; i < 2; i++) {
        setenv("KILN_TUNE", modes[i], 1);
        if ((ctx = open_spec(spec))) {
            CHECK(kiln__gemm_params_of(ctx) == table, "KILN_TUNE=%s: the stored set used", modes[i]);
            kiln_close(ctx);
        }
        unsetenv("KILN_TUNE");
    }

    /* a bad KilnGemm line: the table's set, a log line, the rest of the file applied */
    char text[1024];
    snprintf(text, sizeof text,
             "device: %s\ndriver: %s\nGemmRoutine XGEMM_MIN_INDIRECT_SIZE=3\n"
             "KilnGemm NT_RM=3 NT_RN=2 NT_VW=5 NT_KU=3 NN_RM=5 NN_NV=3 NN_VW=4 NN_KU=2\n",
             info.name, info.driver_version);
    CHECK(write_file(path, text), "cannot write %s", path);
    g_log[0] = '\0';
    kiln_set_log(on_log, NULL);
    kiln__tune_set applied;
    if ((ctx = open_spec(spec))) {
        CHECK(kiln__gemm_params_of(ctx) == table, "bad KilnGemm line: not the table's set");
        CHECK(strstr(g_log, "kiln's GEMM kernel set in") && strstr(g_log, "NT_VW=5") && strstr(g_log, path),
              "no log line for the bad KilnGemm line: '%s'", g_log);
        CHECK(strcmp(kiln__tune_source(), "stored by kiln tune") == 0, "the rest of the file not applied: '%s'",
              kiln__tune_source());
        /* what kiln_open applied from that file, again: the threshold is there */
        kiln__tune_open(ctx, &applied);
        CHECK(!applied.has_gemm && applied.has[2][0] && applied.v[2][0] == 3,
              "the file's GemmRoutine line not applied beside the bad KilnGemm line");
        kiln_close(ctx);
    }
    kiln_set_log(NULL, NULL);

    /* a file written for another device: ignored, KilnGemm line and all */
    snprintf(text, sizeof text, "device: some other device\ndriver: %s\n" ODD_LINE "\n", info.driver_version);
    CHECK(write_file(path, text), "cannot write %s", path);
    if ((ctx = open_spec(spec))) {
        CHECK(kiln__gemm_params_of(ctx) == table, "another device's KilnGemm set used");
        kiln_close(ctx);
    }
    unlink(path);
}

/* The file's text ("" when there is none). */
static void read_text(const char *path, char *buf, size_t cap) {
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f) return;
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
}

/* KILN_TUNE=auto (src/ops/gemm.c): the first product searches once, stores the set it
 * keeps (CLBlast lines beside it kept), and later contexts load it; without the mode, a
 * cache dir, or on another device type nothing is searched; a bad KILN_TUNE_SECONDS falls
 * back to the default. full: a whole search (every neighbour, about 7 builds of gemm.cl). */
static void test_auto(const char *spec, bool full) {
    char why[160];
    static const struct {
        const char *value;
        double want;
        bool bad;
    } secs[] = {{NULL, 10.0, false}, {"2.5", 2.5, false}, {"0", 0.0, false},   {"-1", 10.0, true},
                {"x", 10.0, true},   {"5s", 10.0, true},  {"1e9", 10.0, true}, {"nan", 10.0, true}};
    for (size_t i = 0; i < sizeof secs / sizeof secs[0]; i++) {
        if (secs[i].value)
            setenv("KILN_TUNE_SECONDS", secs[i].value, 1);
        else
            unsetenv("KILN_TUNE_SECONDS");
        double got = kiln__tune_seconds(why, sizeof why);
        CHECK(got == secs[i].want && (why[0] != '\0') == secs[i].bad &&
                  (!secs[i].bad || strstr(why, "KILN_TUNE_SECONDS") != NULL),
              "KILN_TUNE_SECONDS=%s: %g, '%s'", secs[i].value ? secs[i].value : "(unset)", got, why);
    }
    kiln_ctx *ctx = open_spec(spec);
    if (!ctx) return;
    kiln_device_info info = *kiln_ctx_device(ctx);
    const kiln__gemm_params *table = &kiln__gemm_sets[kiln__gemm_choose(&info, NULL, 0, NULL)];
    char path[1200], text[4096];
    CHECK(kiln__tune_path(&info, path, sizeof path) == KILN_OK, "tune path: %s", kiln_last_error());
    unlink(path);
    /* off by default: the first product searches nothing and stores nothing */
    CHECK(kiln__gemm_params_of(ctx) == table && kiln__hooks_of(ctx)->gemm_autotune_timed == 0 &&
              access(path, F_OK) != 0,
          "KILN_TUNE unset: a search ran or a file was written");
    kiln_close(ctx);
    setenv("KILN_TUNE", "auto", 1);
    if (info.type != KILN_DEVICE_CPU) { /* kiln's kernels serve CPUs only */
        if ((ctx = open_spec(spec))) {
            CHECK(kiln__gemm_params_of(ctx) == table && access(path, F_OK) != 0, "KILN_TUNE=auto on a GPU");
            kiln_close(ctx);
        }
        unsetenv("KILN_TUNE");
        return;
    }

    /* a budget of 0 s: the table's set alone timed, and stored, beside the file's CLBlast line */
    snprintf(text, sizeof text, "device: %s\ndriver: %s\nGemmRoutine XGEMM_MIN_INDIRECT_SIZE=3\n", info.name,
             info.driver_version);
    CHECK(write_file(path, text), "cannot write %s", path);
    setenv("KILN_TUNE_SECONDS", "0", 1);
    g_log[0] = '\0';
    kiln_set_log(on_log, NULL);
    if ((ctx = open_spec(spec))) {
        CHECK(kiln__hooks_of(ctx)->gemm_autotune_timed == 0, "searched before the first product");
        const kiln__gemm_params *p = kiln__gemm_params_of(ctx);
        CHECK(p && same_params(p, table) && kiln__hooks_of(ctx)->gemm_autotune_timed == 1,
              "budget 0: %d sets timed, set %s", kiln__hooks_of(ctx)->gemm_autotune_timed, p ? p->name : "none");
        CHECK(strstr(g_log, "automatic tune (KILN_TUNE=auto): 1 set timed") && strstr(g_log, path),
              "no log line for the search: '%s'", g_log);
        kiln__tune_set st;
        char err[256];
        CHECK(kiln__tune_load(&info, path, &st, err, sizeof err) == KILN_OK && st.has_gemm &&
                  same_params(&st.gemm, table) && st.has[2][0] && st.v[2][0] == 3,
              "stored: KilnGemm of the table's set and the GemmRoutine line expected (%s)", err);
        read_text(path, text, sizeof text);
        CHECK(strstr(text, "# kiln's automatic tune (KILN_TUNE=auto)") != NULL, "no comment in '%s'", text);
        kiln__gemm_params_of(ctx);
        CHECK(kiln__hooks_of(ctx)->gemm_autotune_timed == 1, "searched twice in one context");
        check_products(ctx);
        kiln_close(ctx);
    }
    kiln_set_log(NULL, NULL);
    /* a later context loads the stored set and searches nothing */
    if ((ctx = open_spec(spec))) {
        const kiln__gemm_params *p = kiln__gemm_params_of(ctx);
        CHECK(p && same_params(p, table) && strcmp(p->name, "tuned") == 0 &&
                  kiln__hooks_of(ctx)->gemm_autotune_timed == 0,
              "second context: %d sets timed", kiln__hooks_of(ctx)->gemm_autotune_timed);
        kiln_close(ctx);
    }
    /* a set stored by another context after this one opened: taken, nothing searched */
    unlink(path);
    if ((ctx = open_spec(spec))) {
        kiln__tune_set s;
        memset(&s, 0, sizeof s);
        s.has_gemm = true;
        s.gemm = odd;
        char saved[1200];
        CHECK(kiln__tune_save(&info, &s, "another context", saved, sizeof saved) == KILN_OK, "save: %s",
              kiln_last_error());
        const kiln__gemm_params *p = kiln__gemm_params_of(ctx);
        CHECK(p && same_params(p, &odd) && kiln__hooks_of(ctx)->gemm_autotune_timed == 0,
              "the set stored meanwhile not taken");
        check_products(ctx);
        kiln_close(ctx);
    }
    unlink(path);
    /* a file that does not parse: left as it is, nothing searched, a log line */
    snprintf(text, sizeof text, "device: %s\ndriver: %s\nNoSuchKernel X=1\n", info.name, info.driver_version);
    CHECK(write_file(path, text), "cannot write %s", path);
    g_log[0] = '\0';
    kiln_set_log(on_log, NULL);
    if ((ctx = open_spec(spec))) {
        CHECK(kiln__gemm_params_of(ctx) == table && kiln__hooks_of(ctx)->gemm_autotune_timed == 0,
              "a file that does not parse: searched");
        CHECK(strstr(g_log, "KILN_TUNE=auto: ") && strstr(g_log, "NoSuchKernel") && strstr(g_log, "not tuned"),
              "a file that does not parse: no log line: '%s'", g_log);
        char now[4096];
        read_text(path, now, sizeof now);
        CHECK(strcmp(now, text) == 0, "a file that does not parse was rewritten: '%s'", now);
        check_products(ctx);
        kiln_close(ctx);
    }
    kiln_set_log(NULL, NULL);
    unlink(path);
    /* no cache dir: nothing to store in, so nothing searched (it would repeat at every open) */
    setenv("KILN_CACHE", "off", 1);
    g_log[0] = '\0';
    kiln_set_log(on_log, NULL);
    if ((ctx = open_spec(spec))) {
        CHECK(kiln__gemm_params_of(ctx) == table && kiln__hooks_of(ctx)->gemm_autotune_timed == 0,
              "KILN_CACHE=off: searched");
        CHECK(strstr(g_log, "KILN_TUNE=auto: no cache directory"), "no log line for KILN_CACHE=off: '%s'", g_log);
        kiln_close(ctx);
    }
    kiln_set_log(NULL, NULL);
    unsetenv("KILN_CACHE");
    /* the device refuses one of the search's three buffers: not tuned, nothing stored, a log
     * line, the context's error clear, and the product that asked computes */
    for (int nth = 1; nth <= 3; nth++) {
        g_log[0] = '\0';
        kiln_set_log(on_log, NULL);
        if ((ctx = open_spec(spec))) {
            kiln__pool_fail_after(ctx, nth);
            const kiln__gemm_params *p = kiln__gemm_params_of(ctx);
            kiln__pool_fail_after(ctx, 0);
            CHECK(p == table && kiln__hooks_of(ctx)->gemm_autotune_timed == 0 && access(path, F_OK) != 0,
                  "allocation %d refused: the search went on or stored", nth);
            CHECK(strstr(g_log, "KILN_TUNE=auto: not tuned, the table's set kept") && strstr(g_log, "injected"),
                  "allocation %d refused: no log line: '%s'", nth, g_log);
            CHECK(kiln_error_message(ctx)[0] == '\0', "allocation %d refused: the context keeps the error '%s'", nth,
                  kiln_error_message(ctx));
            check_products(ctx);
            kiln_close(ctx);
        }
        kiln_set_log(NULL, NULL);
    }
    /* KILN_GEMM_OWN=off (CLBlast takes every product) and KILN_TUNE_FILE: nothing searched */
    static const char *const envs[][2] = {{"KILN_GEMM_OWN", "off"}, {"KILN_TUNE_FILE", "/nonexistent/kiln-tune"}};
    for (int i = 0; i < 2; i++) {
        setenv(envs[i][0], envs[i][1], 1);
        if ((ctx = open_spec(spec))) {
            kiln__gemm_params_of(ctx);
            CHECK(kiln__hooks_of(ctx)->gemm_autotune_timed == 0 && access(path, F_OK) != 0, "%s=%s: searched",
                  envs[i][0], envs[i][1]);
            kiln_close(ctx);
        }
        unsetenv(envs[i][0]);
    }
    /* a whole search: every neighbour timed; the set kept is stored, loads, and computes
     * products that match the double-precision reference */
    if (full) {
        setenv("KILN_TUNE_SECONDS", "3600", 1);
        kiln__gemm_params kept = *table;
        if ((ctx = open_spec(spec))) {
            kept = *kiln__gemm_params_of(ctx);
            int timed = kiln__hooks_of(ctx)->gemm_autotune_timed, regs, width;
            kiln__gemm_params c[2][4];
            kiln__gemm_regfile(table->name, &regs, &width);
            int want = kiln__gemm_candidates(table, true, true, regs, width, c[0], 4) +
                       kiln__gemm_candidates(table, false, true, regs, width, c[1], 4) - 1;
            CHECK(timed == want, "whole search: %d sets timed, the table's and %d neighbours expected", timed,
                  want - 1);
            kiln__tune_set st;
            char err[256];
            CHECK(kiln__tune_load(&info, path, &st, err, sizeof err) == KILN_OK && st.has_gemm &&
                      same_params(&st.gemm, &kept),
                  "the kept set not stored (%s)", err);
            check_products(ctx);
            kiln_close(ctx);
        }
        if ((ctx = open_spec(spec))) {
            const kiln__gemm_params *p = kiln__gemm_params_of(ctx);
            CHECK(p && same_params(p, &kept) && kiln__hooks_of(ctx)->gemm_autotune_timed == 0,
                  "the kept set not loaded by the next context");
            kiln_close(ctx);
        }
        unlink(path);
    }
    unsetenv("KILN_TUNE_SECONDS");
    unsetenv("KILN_TUNE");
}

/* kiln__tune_save on several threads at once, each writing its own set many times: every
 * save succeeds and the file is always one whole set (each write has a temporary file of
 * its own: with one per process, threads truncated each other's and renamed it away). */
#define SAVES 200
typedef struct {
    const kiln_device_info *info;
    int id, failed;
    char err[256]; /* the first failure's (kiln_last_error is per thread) */
} save_job;

static void *save_thread(void *arg) {
    save_job *j = arg;
    kiln__tune_set s;
    memset(&s, 0, sizeof s);
    s.has_gemm = true;
    s.gemm = odd;
    s.gemm.nn_rm = 1 + j->id; /* each thread's own set */
    char path[1200];
    for (int i = 0; i < SAVES; i++)
        if (kiln__tune_save(j->info, &s, "test_tune threads", path, sizeof path) != KILN_OK && !j->failed++)
            snprintf(j->err, sizeof j->err, "%s", kiln_last_error());
    return NULL;
}

static void test_save_threads(const char *spec) {
    kiln_device_info info;
    char path[1200];
    if (kiln_device_find(spec, &info) != KILN_OK || kiln__tune_path(&info, path, sizeof path) != KILN_OK) return;
    pthread_t th[4];
    save_job jobs[4];
    for (int t = 0; t < 4; t++) {
        jobs[t] = (save_job){&info, t, 0, ""};
        CHECK(pthread_create(&th[t], NULL, save_thread, &jobs[t]) == 0, "pthread_create");
    }
    for (int t = 0; t < 4; t++) {
        pthread_join(th[t], NULL);
        CHECK(jobs[t].failed == 0, "thread %d: %d of %d saves failed, the first: %s", t, jobs[t].failed, SAVES,
              jobs[t].err);
    }
    kiln__tune_set st;
    char err[256];
    bool loaded = kiln__tune_load(&info, path, &st, err, sizeof err) == KILN_OK;
    CHECK(loaded && st.has_gemm && st.gemm.nn_rm >= 1 && st.gemm.nn_rm <= 4 && st.gemm.nt_rm == odd.nt_rm,
          "save threads: the file is not one whole set (%s%s)", err, loaded ? st.gemm_err : "");
    unlink(path);
}

/* KILN_TUNE=auto on several threads at once, each with its own context and nothing
 * stored yet: each searches (budget 0 s) and stores; the file left is whole, and no
 * temporary file stays behind. */
#define NTHREADS 4
typedef struct {
    const char *spec;
    bool ok;
} auto_job;

static void *auto_thread(void *arg) {
    auto_job *j = arg;
    kiln_ctx *ctx = NULL;
    j->ok = kiln_open(&ctx, j->spec) == KILN_OK && kiln__gemm_params_of(ctx) != NULL &&
            kiln__hooks_of(ctx)->gemm_autotune_timed <= 1;
    kiln_close(ctx);
    return NULL;
}

static void test_auto_threads(const char *spec, const char *dir) {
    kiln_device_info info;
    if (kiln_device_find(spec, &info) != KILN_OK || info.type != KILN_DEVICE_CPU) return;
    const kiln__gemm_params *table = &kiln__gemm_sets[kiln__gemm_choose(&info, NULL, 0, NULL)];
    char path[1200];
    if (kiln__tune_path(&info, path, sizeof path) != KILN_OK) return;
    unlink(path);
    setenv("KILN_TUNE", "auto", 1);
    setenv("KILN_TUNE_SECONDS", "0", 1);
    pthread_t th[NTHREADS];
    auto_job jobs[NTHREADS];
    for (int t = 0; t < NTHREADS; t++) {
        jobs[t] = (auto_job){spec, false};
        CHECK(pthread_create(&th[t], NULL, auto_thread, &jobs[t]) == 0, "pthread_create");
    }
    for (int t = 0; t < NTHREADS; t++) {
        pthread_join(th[t], NULL);
        CHECK(jobs[t].ok, "thread %d: KILN_TUNE=auto failed", t);
    }
    kiln__tune_set st;
    char err[256];
    CHECK(kiln__tune_load(&info, path, &st, err, sizeof err) == KILN_OK && st.has_gemm && same_params(&st.gemm, table),
          "threads: the stored file is not whole (%s)", err);
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) CHECK(!strstr(e->d_name, ".tmp"), "threads: %s left behind", e->d_name);
    if (d) closedir(d);
    unlink(path);
    unsetenv("KILN_TUNE_SECONDS");
    unsetenv("KILN_TUNE");
}

/* Empties and removes the temporary cache dir. */
static void remove_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char p[1200];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

int main(void) {
    unsetenv("KILN_TUNE");
    unsetenv("KILN_TUNE_FILE");
    unsetenv("KILN_GEMM_PARAMS");
    unsetenv("KILN_GEMM_OWN");
    test_parse_format();
    char dir[] = "/tmp/kiln-test-tune-XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    setenv("KILN_CACHE_DIR", dir, 1);
    char specs[16][16];
    int nd = h_devices(specs, 16);
    bool full = false;
    for (int i = 0; i < nd; i++) {
        h_device = specs[i];
        test_stored(specs[i]);
        kiln_device_info info;
        bool cpu = kiln_device_find(specs[i], &info) == KILN_OK && info.type == KILN_DEVICE_CPU;
        test_auto(specs[i], cpu && !full); /* the whole search on the first CPU device */
        full |= cpu;
        test_save_threads(specs[i]);
        test_auto_threads(specs[i], dir);
    }
    remove_dir(dir);
    return h_finish();
}

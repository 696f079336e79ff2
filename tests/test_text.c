/* tests/test_text.c - character corpora (include/kiln/data.h, src/data/text.c): reading
 * files and a fortunes directory, vocabularies, splits by position, the window loader (its
 * windows against the text, the seeded draws' determinism and spread) and every error. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "harness.h"
#include <kiln/data.h>

static char tmpdir[256];

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

static void write_str(const char *name, const char *s) { write_file(name, s, strlen(s)); }

/* The last error must have status st and name every non-NULL string given. */
static void expect_global(const char *what, bool failed, kiln_status st, const char *a, const char *b, const char *c) {
    const char *msg = kiln_last_error();
    CHECK(failed, "%s: did not fail", what);
    CHECK(kiln_last_status() == st, "%s: status %s, expected %s (%s)", what, kiln_status_name(kiln_last_status()),
          kiln_status_name(st), msg);
    const char *need[3] = {a, b, c};
    for (int i = 0; i < 3; i++)
        CHECK(!need[i] || strstr(msg, need[i]), "%s: the message \"%s\" does not name \"%s\"", what, msg, need[i]);
}

static void expect_ctx(kiln_ctx *ctx, const char *what, bool failed, kiln_status st, const char *a, const char *b,
                       const char *c) {
    const char *msg = kiln_error_message(ctx);
    CHECK(failed, "%s: did not fail", what);
    CHECK(kiln_error_status(ctx) == st, "%s: status %s, expected %s (%s)", what,
          kiln_status_name(kiln_error_status(ctx)), kiln_status_name(st), msg);
    const char *need[3] = {a, b, c};
    for (int i = 0; i < 3; i++)
        CHECK(!need[i] || strstr(msg, need[i]), "%s: the message \"%s\" does not name \"%s\"", what, msg, need[i]);
    kiln_error_clear(ctx);
}

static bool same_bytes(const kiln_text *t, const char *want, size_t len) {
    const uint8_t *b;
    int64_t n = kiln_text_bytes(t, &b);
    return n == (int64_t)len && memcmp(b, want, len) == 0;
}

/* ---- texts and vocabularies ----------------------------------------------------------- */

static void test_memory(void) {
    const char s[] = "hello, world\n";
    kiln_text *t = kiln_text_from_memory(s, strlen(s), "greeting");
    CHECK(t && same_bytes(t, s, strlen(s)), "from_memory keeps the bytes: %s", kiln_last_error());
    CHECK(strcmp(kiln_text_name(t), "greeting") == 0, "name %s", kiln_text_name(t));
    const kiln_vocab *v = kiln_text_vocab(t);
    /* the distinct bytes, sorted: "\n ,dehlorw" */
    const char *chars = "\n ,dehlorw";
    CHECK(kiln_vocab_num_chars(v) == (int)strlen(chars), "vocab of %d chars, expected %zu", kiln_vocab_num_chars(v),
          strlen(chars));
    for (int i = 0; chars[i]; i++) {
        CHECK(kiln_vocab_char(v, i) == (unsigned char)chars[i], "char of id %d: %d", i, kiln_vocab_char(v, i));
        CHECK(kiln_vocab_id(v, (uint8_t)chars[i]) == i, "id of '%c': %d", chars[i],
              kiln_vocab_id(v, (uint8_t)chars[i]));
    }
    CHECK(kiln_vocab_id(v, 'z') == -1 && kiln_vocab_char(v, 10) == -1 && kiln_vocab_char(v, -1) == -1,
          "absent characters and ids are -1");

    /* encode and decode are inverse */
    int32_t ids[16];
    char back[16];
    CHECK(kiln_vocab_encode(v, "world", 5, ids) == KILN_OK, "encode: %s", kiln_last_error());
    CHECK(ids[0] == 9 && ids[1] == 7 && ids[2] == 8 && ids[3] == 6 && ids[4] == 3, "ids of world: %d %d %d %d %d",
          ids[0], ids[1], ids[2], ids[3], ids[4]);
    CHECK(kiln_vocab_decode(v, ids, 5, back, sizeof back) == KILN_OK && strcmp(back, "world") == 0, "decode: '%s'",
          back);

    /* an unknown character in a prime names the character and its position */
    expect_global("encode unknown", kiln_vocab_encode(v, "word!", 5, ids) != KILN_OK, KILN_ERR_RANGE,
                  "kiln_vocab_encode", "'!' (0x21)", "position 4");
    expect_global("encode unprintable", kiln_vocab_encode(v, "w\x07", 2, ids) != KILN_OK, KILN_ERR_RANGE, "0x07",
                  "position 1", "10 characters");
    ids[2] = 10;
    expect_global("decode id out of range", kiln_vocab_decode(v, ids, 5, back, sizeof back) != KILN_OK, KILN_ERR_RANGE,
                  "kiln_vocab_decode", "id 10 at position 2", "[0, 10)");
    ids[2] = -3;
    expect_global("decode negative id", kiln_vocab_decode(v, ids, 5, back, sizeof back) != KILN_OK, KILN_ERR_RANGE,
                  "id -3", NULL, NULL);
    expect_global("decode small buffer", kiln_vocab_decode(v, ids, 5, back, 5) != KILN_OK, KILN_ERR_BUFFER_TOO_SMALL,
                  "6 bytes", NULL, NULL);
    expect_global("encode NULL", kiln_vocab_encode(NULL, "a", 1, ids) != KILN_OK, KILN_ERR_NULL, "kiln_vocab_encode",
                  NULL, NULL);
    expect_global("decode NULL", kiln_vocab_decode(v, ids, 1, NULL, 4) != KILN_OK, KILN_ERR_NULL, "kiln_vocab_decode",
                  NULL, NULL);

    /* the string form round-trips */
    char str[600];
    CHECK(kiln_vocab_to_string(v, str, sizeof str) == KILN_OK && strcmp(str, "0a202c6465686c6f7277") == 0,
          "to_string: %s", str);
    kiln_vocab *p = kiln_vocab_parse(str, "checkpoint");
    CHECK(p && kiln_vocab_num_chars(p) == kiln_vocab_num_chars(v), "parse: %s", kiln_last_error());
    for (int i = 0; p && i < kiln_vocab_num_chars(v); i++)
        CHECK(kiln_vocab_char(p, i) == kiln_vocab_char(v, i), "parsed char %d", i);
    kiln_vocab_free(p);
    expect_global("to_string small", kiln_vocab_to_string(v, str, 20) != KILN_OK, KILN_ERR_BUFFER_TOO_SMALL, "21 bytes",
                  NULL, NULL);
    expect_global("parse odd", kiln_vocab_parse("0a2", "ckpt.safetensors") == NULL, KILN_ERR_CORRUPT,
                  "kiln_vocab_parse", "ckpt.safetensors", "3 hex digits");
    expect_global("parse empty", kiln_vocab_parse("", NULL) == NULL, KILN_ERR_CORRUPT, "<string>", NULL, NULL);
    expect_global("parse not hex", kiln_vocab_parse("0a2g", NULL) == NULL, KILN_ERR_CORRUPT, "'2g' at offset 2", NULL,
                  NULL);
    expect_global("parse order", kiln_vocab_parse("200a", NULL) == NULL, KILN_ERR_CORRUPT, "0x0a", "0x20", NULL);
    expect_global("parse repeat", kiln_vocab_parse("2020", NULL) == NULL, KILN_ERR_CORRUPT, "increasing", NULL, NULL);
    expect_global("parse NULL", kiln_vocab_parse(NULL, NULL) == NULL, KILN_ERR_NULL, "kiln_vocab_parse", NULL, NULL);

    /* a vocabulary from bytes in any order */
    kiln_vocab *nv = kiln_vocab_new((const uint8_t *)"cab", 3);
    CHECK(nv && kiln_vocab_char(nv, 0) == 'a' && kiln_vocab_id(nv, 'c') == 2, "vocab_new sorts: %s", kiln_last_error());
    kiln_vocab_free(nv);
    expect_global("vocab_new repeat", kiln_vocab_new((const uint8_t *)"aba", 3) == NULL, KILN_ERR_INVALID_ARGUMENT,
                  "'a' (0x61) appears twice", NULL, NULL);
    expect_global("vocab_new 0", kiln_vocab_new((const uint8_t *)"a", 0) == NULL, KILN_ERR_INVALID_ARGUMENT,
                  "kiln_vocab_new", "0 characters", NULL);
    expect_global("vocab_new NULL", kiln_vocab_new(NULL, 3) == NULL, KILN_ERR_NULL, "kiln_vocab_new", NULL, NULL);
    /* all 256 byte values */
    uint8_t every[256];
    for (int i = 0; i < 256; i++) every[i] = (uint8_t)(255 - i);
    kiln_vocab *all = kiln_vocab_new(every, 256);
    char big[513];
    CHECK(all && kiln_vocab_to_string(all, big, sizeof big) == KILN_OK && strlen(big) == 512 &&
              strncmp(big, "000102", 6) == 0 && strcmp(big + 506, "fdfeff") == 0,
          "256 characters: %s", kiln_last_error());
    kiln_vocab *all2 = kiln_vocab_parse(big, NULL);
    CHECK(all2 && kiln_vocab_num_chars(all2) == 256 && kiln_vocab_id(all2, 255) == 255, "parse 256: %s",
          kiln_last_error());
    kiln_vocab_free(all2);
    kiln_vocab_free(all);

    expect_global("empty memory", kiln_text_from_memory("", 0, "nothing") == NULL, KILN_ERR_INVALID_ARGUMENT,
                  "kiln_text_from_memory", "nothing", "empty");
    expect_global("NULL memory", kiln_text_from_memory(NULL, 3, NULL) == NULL, KILN_ERR_NULL, "<memory>", NULL, NULL);

    /* NULL handles: getters give their documented values */
    CHECK(kiln_text_num_chars(NULL) == 0 && kiln_text_bytes(NULL, NULL) == 0 && kiln_text_vocab(NULL) == NULL &&
              kiln_vocab_num_chars(NULL) == 0 && kiln_vocab_char(NULL, 0) == -1 && kiln_vocab_id(NULL, 'a') == -1 &&
              strcmp(kiln_text_name(NULL), "") == 0,
          "NULL getters");
    kiln_text_free(NULL);
    kiln_vocab_free(NULL);
    kiln_text_free(t);
}

static void test_files(void) {
    write_str("one.txt", "abc\n");
    write_str("two.txt", "xyz");
    char p1[512], p2[512], p3[512], missing[512];
    path_in(p1, sizeof p1, "one.txt");
    path_in(p2, sizeof p2, "two.txt");
    path_in(missing, sizeof missing, "missing.txt");
    /* a gzip-compressed file is inflated */
    path_in(p3, sizeof p3, "three.txt.gz");
    gzFile g = gzopen(p3, "wb");
    CHECK(g != NULL, "gzopen %s", p3);
    if (g) {
        gzwrite(g, "gz!", 3);
        gzclose(g);
    }
    const char *paths[3] = {p2, p1, p3};
    kiln_text *t = kiln_text_load(3, paths);
    CHECK(t && same_bytes(t, "xyzabc\ngz!", 10), "files in the order given: %s", kiln_last_error());
    CHECK(t && strstr(kiln_text_name(t), "two.txt") && strstr(kiln_text_name(t), "2 more files"), "name: %s",
          kiln_text_name(t));
    kiln_text_free(t);

    const char *with_missing[2] = {p1, missing};
    expect_global("missing file", kiln_text_load(2, with_missing) == NULL, KILN_ERR_IO, "kiln_text_load", "missing.txt",
                  NULL);
    write_file("empty1", "", 0);
    write_file("empty2", "", 0);
    char e1[512], e2[512];
    path_in(e1, sizeof e1, "empty1");
    path_in(e2, sizeof e2, "empty2");
    const char *empties[2] = {e1, e2};
    expect_global("empty corpus", kiln_text_load(2, empties) == NULL, KILN_ERR_INVALID_ARGUMENT, "empty1", "empty2",
                  "empty (0 bytes)");
    expect_global("no files", kiln_text_load(0, paths) == NULL, KILN_ERR_INVALID_ARGUMENT, "kiln_text_load", "0 files",
                  NULL);
    const char *nullpath[2] = {p1, NULL};
    expect_global("NULL path", kiln_text_load(2, nullpath) == NULL, KILN_ERR_NULL, "paths[1]", NULL, NULL);
    expect_global("NULL paths", kiln_text_load(1, NULL) == NULL, KILN_ERR_NULL, "kiln_text_load", NULL, NULL);
}

static void test_fortunes_dir(void) {
    char dir[512], p[600], q[600];
    path_in(dir, sizeof dir, "fortunes");
    CHECK(mkdir(dir, 0700) == 0, "mkdir %s", dir);
    /* "b" ends with its "%" line; "a" does not (a newline-terminated last entry); "c" lacks
     * even the newline; "d" is empty; the rest must be skipped */
    snprintf(p, sizeof p, "%s/b", dir);
    FILE *f = fopen(p, "wb");
    if (f) fputs("B one\n%\nB two\n%\n", f), fclose(f);
    snprintf(p, sizeof p, "%s/a", dir);
    f = fopen(p, "wb");
    if (f) fputs("A one\n%\nA two\n", f), fclose(f);
    snprintf(p, sizeof p, "%s/c", dir);
    f = fopen(p, "wb");
    if (f) fputs("C", f), fclose(f);
    snprintf(p, sizeof p, "%s/d", dir);
    f = fopen(p, "wb");
    if (f) fclose(f);
    snprintf(p, sizeof p, "%s/a.dat", dir);
    f = fopen(p, "wb");
    if (f) fputs("\x01\x02index", f), fclose(f);
    snprintf(p, sizeof p, "%s/.hidden", dir);
    f = fopen(p, "wb");
    if (f) fputs("hidden", f), fclose(f);
    snprintf(p, sizeof p, "%s/a.u8", dir);
    CHECK(symlink("a", p) == 0, "symlink %s", p);
    snprintf(q, sizeof q, "%s/sub", dir);
    CHECK(mkdir(q, 0700) == 0, "mkdir %s", q);

    kiln_text *t = kiln_text_fortunes(dir);
    const char *want = "A one\n%\nA two\n%\nB one\n%\nB two\n%\nC\n%\n";
    const uint8_t *b = NULL;
    int64_t n = kiln_text_bytes(t, &b);
    CHECK(t && same_bytes(t, want, strlen(want)), "fortunes: %lld bytes '%.*s' (%s)", (long long)n, (int)n,
          b ? (const char *)b : "", kiln_last_error());
    CHECK(t && strstr(kiln_text_name(t), "(4 files)"), "name: %s", kiln_text_name(t));
    kiln_text_free(t);

    path_in(q, sizeof q, "fortunes/sub");
    expect_global("no fortune files", kiln_text_fortunes(q) == NULL, KILN_ERR_INVALID_ARGUMENT, "kiln_text_fortunes",
                  "sub", "no fortune files");
    path_in(q, sizeof q, "no-such-dir");
    expect_global("missing dir", kiln_text_fortunes(q) == NULL, KILN_ERR_IO, "no-such-dir", "fortunes package", NULL);
    /* a directory of empty files is an empty corpus */
    path_in(q, sizeof q, "fortunes/sub/e");
    f = fopen(q, "wb");
    if (f) fclose(f);
    path_in(q, sizeof q, "fortunes/sub");
    expect_global("empty fortunes", kiln_text_fortunes(q) == NULL, KILN_ERR_INVALID_ARGUMENT, "sub (1 files)", "empty",
                  NULL);

    /* the real corpus when Debian's fortunes package is installed */
    struct stat sb;
    if (stat(KILN_FORTUNES_DIR, &sb) == 0) {
        kiln_text *r = kiln_text_fortunes(NULL);
        CHECK(r != NULL, "fortunes: %s", kiln_last_error());
        const kiln_vocab *v = kiln_text_vocab(r);
        CHECK(kiln_text_num_chars(r) > 2000000 && kiln_vocab_id(v, '%') >= 0 && kiln_vocab_id(v, 'e') >= 0,
              "the fortunes corpus: %lld characters, %d in the vocabulary", (long long)kiln_text_num_chars(r),
              kiln_vocab_num_chars(v));
        fprintf(stderr, "%s: %lld characters, vocabulary of %d\n", kiln_text_name(r), (long long)kiln_text_num_chars(r),
                kiln_vocab_num_chars(v));
        kiln_text_free(r);
    } else {
        fprintf(stderr, "%s is not there (Debian's fortunes package): the real corpus is not read\n",
                KILN_FORTUNES_DIR);
    }
}

static void test_split(void) {
    const char *s = "abcdefghij0123456789"; /* 20 characters */
    kiln_text *t = kiln_text_from_memory(s, 20, "digits");
    kiln_text *tr = NULL, *va = NULL;
    CHECK(kiln_text_split(t, 0.25, &tr, &va) == KILN_OK, "split: %s", kiln_last_error());
    CHECK(same_bytes(tr, s, 15) && same_bytes(va, s + 15, 5), "split by position: the last 25%% validates");
    CHECK(kiln_vocab_num_chars(kiln_text_vocab(va)) == 20 && kiln_vocab_id(kiln_text_vocab(tr), 'j') == 19,
          "the parts keep the whole text's vocabulary");
    CHECK(strstr(kiln_text_name(tr), "digits [train]") && strstr(kiln_text_name(va), "digits [validation]"),
          "names %s, %s", kiln_text_name(tr), kiln_text_name(va));
    /* a part of a part, after its parent is freed */
    kiln_text_free(t);
    kiln_text *tr2 = NULL, *va2 = NULL;
    CHECK(kiln_text_split(tr, 0.2, &tr2, &va2) == KILN_OK && same_bytes(tr2, s, 12) && same_bytes(va2, s + 12, 3),
          "split of a split");
    kiln_text_free(tr2);
    kiln_text_free(va2);
    kiln_text_free(tr);
    kiln_text_free(va);

    t = kiln_text_from_memory(s, 20, "digits");
    CHECK(kiln_text_split(t, 0, &tr, &va) == KILN_OK && kiln_text_num_chars(tr) == 20 && kiln_text_num_chars(va) == 0,
          "val_frac 0: an empty validation part");
    kiln_text_free(tr);
    kiln_text_free(va);
    expect_global("val_frac > 1", kiln_text_split(t, 1.5, &tr, &va) != KILN_OK && !tr && !va, KILN_ERR_RANGE,
                  "kiln_text_split", "1.5", "digits");
    expect_global("val_frac NaN", kiln_text_split(t, NAN, &tr, &va) != KILN_OK, KILN_ERR_RANGE, "nan", NULL, NULL);
    expect_global("NULL out", kiln_text_split(t, 0.5, &tr, NULL) != KILN_OK, KILN_ERR_NULL, "val", NULL, NULL);
    expect_global("NULL text", kiln_text_split(NULL, 0.5, &tr, &va) != KILN_OK, KILN_ERR_NULL, "kiln_text_split", NULL,
                  NULL);
    kiln_text_free(t);
}

/* ---- the loader (on a device) ------------------------------------------------------- */

/* Reads one batch back and checks that row i holds the ids of text[s_i ..] and its
 * targets those one further on. */
static void check_batch(const char *what, const kiln_text *t, kiln_tensor *x, kiln_tensor *y, const int64_t *starts,
                        int64_t b, int64_t T) {
    CHECK(x && y && kiln_tensor_dtype(x) == KILN_I32 && kiln_tensor_dtype(y) == KILN_I32 && kiln_tensor_ndim(x) == 2 &&
              kiln_tensor_shape(x)[0] == b && kiln_tensor_shape(x)[1] == T && kiln_tensor_shape(y)[0] == b &&
              kiln_tensor_shape(y)[1] == T,
          "%s: I32 [%lld, %lld] tensors", what, (long long)b, (long long)T);
    if (!x || !y) return;
    int32_t *hx = malloc(sizeof(int32_t) * (size_t)(b * T)), *hy = malloc(sizeof(int32_t) * (size_t)(b * T));
    CHECK(kiln_to_host(x, hx, sizeof(int32_t) * (size_t)(b * T)) == KILN_OK &&
              kiln_to_host(y, hy, sizeof(int32_t) * (size_t)(b * T)) == KILN_OK,
          "%s: read back", what);
    const uint8_t *bytes;
    int64_t n = kiln_text_bytes(t, &bytes);
    const kiln_vocab *v = kiln_text_vocab(t);
    int64_t bad = 0;
    for (int64_t i = 0; i < b; i++) {
        if (starts[i] < 0 || starts[i] + T + 1 > n) {
            bad++;
            continue;
        }
        for (int64_t j = 0; j < T; j++) {
            bad += hx[i * T + j] != kiln_vocab_id(v, bytes[starts[i] + j]);
            bad += hy[i * T + j] != kiln_vocab_id(v, bytes[starts[i] + j + 1]);
        }
    }
    CHECK(bad == 0, "%s: %lld ids are not the text's", what, (long long)bad);
    free(hx);
    free(hy);
}

static void test_contiguous(kiln_ctx *ctx) {
    char s[104];
    for (int i = 0; i < 103; i++) s[i] = (char)('a' + (i * 7) % 26);
    kiln_text *t = kiln_text_from_memory(s, 103, "letters");
    kiln_text_loader_opts o = kiln_text_loader_defaults(10);
    CHECK(o.batch_size == 1 && o.seq_len == 10 && !o.random_windows && !o.drop_last, "defaults");
    o.batch_size = 4;
    kiln_text_loader *l = kiln_text_loader_new(ctx, t, &o);
    kiln_text_free(t); /* the loader keeps the bytes */
    t = kiln_text_from_memory(s, 103, "letters");
    CHECK(l && kiln_text_loader_num_batches(l) == 3, "(103 - 1) / 10 = 10 windows in 3 batches: %lld (%s)",
          (long long)kiln_text_loader_num_batches(l), kiln_error_message(ctx));
    for (int e = 0; l && e < 2; e++) {
        int64_t seen = 0;
        for (int k = 0; k < 3; k++) {
            kiln_scope_begin(ctx);
            kiln_tensor *x, *y;
            bool ok = kiln_text_loader_next(l, &x, &y);
            const int64_t *st;
            int64_t b = kiln_text_loader_batch_starts(l, &st);
            CHECK(ok && b == (k < 2 ? 4 : 2), "epoch %d batch %d: %lld windows (%s)", e, k, (long long)b,
                  kiln_error_message(ctx));
            for (int64_t i = 0; ok && i < b; i++)
                CHECK(st[i] == (seen + i) * 10, "window %lld starts at %lld", (long long)(seen + i), (long long)st[i]);
            if (ok) check_batch("contiguous", t, x, y, st, b, 10);
            seen += b;
            kiln_scope_end(ctx);
        }
        kiln_tensor *x = (kiln_tensor *)1, *y = (kiln_tensor *)1;
        CHECK(!kiln_text_loader_next(l, &x, &y) && !x && !y && kiln_error_status(ctx) == KILN_OK, "the end of epoch %d",
              e);
        CHECK(kiln_text_loader_epoch(l) == e + 1, "epoch %lld after the end", (long long)kiln_text_loader_epoch(l));
    }
    kiln_text_loader_free(l);
    o.drop_last = true;
    l = kiln_text_loader_new(ctx, t, &o);
    CHECK(kiln_text_loader_num_batches(l) == 2, "drop_last: 2 batches, got %lld",
          (long long)kiln_text_loader_num_batches(l));
    kiln_text_loader_free(l);
    /* exactly seq_len + 1 characters: one window */
    kiln_text *w = kiln_text_from_memory(s, 11, "eleven");
    o = kiln_text_loader_defaults(10);
    l = kiln_text_loader_new(ctx, w, &o);
    CHECK(l && kiln_text_loader_num_batches(l) == 1, "11 characters hold one window of 10");
    kiln_scope_begin(ctx);
    kiln_tensor *x, *y;
    const int64_t *st;
    CHECK(kiln_text_loader_next(l, &x, &y) && kiln_text_loader_batch_starts(l, &st) == 1, "the one window: %s",
          kiln_error_message(ctx));
    if (x) check_batch("one window", w, x, y, st, 1, 10);
    kiln_scope_end(ctx);
    kiln_text_loader_free(l);
    kiln_text_free(w);
    kiln_text_free(t);
    CHECK(kiln_ctx_num_tensors(ctx) == 0, "%lld tensors left", (long long)kiln_ctx_num_tensors(ctx));
}

/* The starts of every batch of one epoch into out (returns their number). */
static int64_t epoch_starts(kiln_ctx *ctx, kiln_text_loader *l, const kiln_text *t, int64_t T, int64_t *out,
                            int64_t cap) {
    int64_t n = 0;
    for (;;) {
        kiln_scope_begin(ctx);
        kiln_tensor *x, *y;
        if (!kiln_text_loader_next(l, &x, &y)) {
            kiln_scope_end(ctx);
            break;
        }
        const int64_t *st;
        int64_t b = kiln_text_loader_batch_starts(l, &st);
        check_batch("random", t, x, y, st, b, T);
        for (int64_t i = 0; i < b && n < cap; i++) out[n++] = st[i];
        kiln_scope_end(ctx);
    }
    return n;
}

static void test_random(kiln_ctx *ctx) {
    enum { N = 600, T = 8, W = (N - 1) / T, CAP = 4 * W };
    char s[N];
    for (int i = 0; i < N; i++) s[i] = (char)(' ' + (i * 31 + i / 7) % 90);
    kiln_text *t = kiln_text_from_memory(s, N, "mixed");
    kiln_text_loader_opts o = kiln_text_loader_defaults(T);
    o.batch_size = 16, o.random_windows = true, o.seed = 42;
    kiln_text_loader *a = kiln_text_loader_new(ctx, t, &o), *b = kiln_text_loader_new(ctx, t, &o);
    o.seed = 43;
    kiln_text_loader *c = kiln_text_loader_new(ctx, t, &o);
    CHECK(a && b && c, "loaders: %s", kiln_error_message(ctx));
    if (!a || !b || !c) return;
    CHECK(kiln_text_loader_num_batches(a) == (W + 15) / 16, "an epoch of W windows: %lld batches",
          (long long)kiln_text_loader_num_batches(a));
    static int64_t sa[3][CAP], sb[CAP], sc[CAP];
    int64_t na[3];
    for (int e = 0; e < 3; e++) na[e] = epoch_starts(ctx, a, t, T, sa[e], CAP);
    int64_t nb = epoch_starts(ctx, b, t, T, sb, CAP), nc = epoch_starts(ctx, c, t, T, sc, CAP);
    CHECK(na[0] == W && nb == W && nc == W, "W = %d windows an epoch: %lld %lld %lld", W, (long long)na[0],
          (long long)nb, (long long)nc);
    CHECK(memcmp(sa[0], sb, sizeof(int64_t) * W) == 0, "the same seed draws the same windows");
    CHECK(memcmp(sa[0], sc, sizeof(int64_t) * W) != 0, "another seed draws other windows");
    CHECK(memcmp(sa[0], sa[1], sizeof(int64_t) * W) != 0, "each epoch draws new windows");
    /* set_epoch replays an epoch; reset replays the current one from its start */
    CHECK(kiln_text_loader_set_epoch(b, 1) == KILN_OK, "set_epoch");
    int64_t again[CAP];
    CHECK(epoch_starts(ctx, b, t, T, again, CAP) == W && memcmp(again, sa[1], sizeof(int64_t) * W) == 0,
          "set_epoch(1) replays epoch 1");
    kiln_scope_begin(ctx);
    kiln_tensor *x, *y;
    CHECK(kiln_text_loader_next(b, &x, &y), "a batch of epoch 2");
    CHECK(kiln_text_loader_reset(b) == KILN_OK && kiln_text_loader_batch_starts(b, NULL) == 0, "reset");
    kiln_scope_end(ctx);
    CHECK(epoch_starts(ctx, b, t, T, again, CAP) == W && memcmp(again, sa[2], sizeof(int64_t) * W) == 0,
          "reset replays epoch 2 from its first batch");
    expect_ctx(ctx, "set_epoch -1", kiln_text_loader_set_epoch(b, -1) != KILN_OK, KILN_ERR_INVALID_ARGUMENT,
               "kiln_text_loader_set_epoch", "-1", NULL);

    /* the draws are uniform over [0, N - T - 1]: a 48-character text has 40 starts; 425
     * epochs of 5 windows draw each start 53 times on average (sd ~ 7.2) */
    kiln_text *sh = kiln_text_from_memory(s, 48, "short");
    kiln_text_loader_opts so = kiln_text_loader_defaults(T);
    so.batch_size = 3, so.random_windows = true, so.seed = 5;
    kiln_text_loader *d = kiln_text_loader_new(ctx, sh, &so);
    int64_t count[40] = {0}, total = 0, out_of_range = 0;
    for (int e = 0; d && e < 425; e++) {
        int64_t st[8];
        int64_t n = epoch_starts(ctx, d, sh, T, st, 8);
        for (int64_t i = 0; i < n; i++) {
            if (st[i] < 0 || st[i] >= 40)
                out_of_range++;
            else
                count[st[i]]++;
            total++;
        }
    }
    int64_t missing = 0, lo = total, hi = 0;
    for (int i = 0; i < 40; i++) {
        missing += count[i] == 0;
        lo = count[i] < lo ? count[i] : lo;
        hi = count[i] > hi ? count[i] : hi;
    }
    /* a count below 20 or above 100 is more than 4.5 standard deviations out, and a start
     * never drawn has probability (39/40)^2125 < 1e-23 */
    CHECK(total == 2125 && out_of_range == 0 && missing == 0 && lo >= 20 && hi <= 100,
          "random starts: %lld draws, %lld out of range, %lld of 40 never drawn, counts %lld..%lld", (long long)total,
          (long long)out_of_range, (long long)missing, (long long)lo, (long long)hi);
    kiln_text_loader_free(d);
    kiln_text_free(sh);
    kiln_text_loader_free(a);
    kiln_text_loader_free(b);
    kiln_text_loader_free(c);
    kiln_text_free(t);
    CHECK(kiln_ctx_num_tensors(ctx) == 0, "%lld tensors left", (long long)kiln_ctx_num_tensors(ctx));
}

static void test_loader_errors(kiln_ctx *ctx) {
    kiln_text *t = kiln_text_from_memory("0123456789", 10, "ten.txt");
    kiln_text_loader_opts o = kiln_text_loader_defaults(10);
    expect_ctx(ctx, "no complete window", kiln_text_loader_new(ctx, t, &o) == NULL, KILN_ERR_INVALID_ARGUMENT,
               "ten.txt", "10 characters hold no window of seq_len 10", "seq_len + 1 = 11");
    kiln_text *tr, *va;
    CHECK(kiln_text_split(t, 0, &tr, &va) == KILN_OK, "split");
    o = kiln_text_loader_defaults(2);
    expect_ctx(ctx, "empty part", kiln_text_loader_new(ctx, va, &o) == NULL, KILN_ERR_INVALID_ARGUMENT,
               "ten.txt [validation]", "0 characters", NULL);
    kiln_text_free(tr);
    kiln_text_free(va);
    o = kiln_text_loader_defaults(0);
    expect_ctx(ctx, "seq_len 0", kiln_text_loader_new(ctx, t, &o) == NULL, KILN_ERR_INVALID_ARGUMENT, "seq_len 0",
               "kiln_text_loader_defaults", NULL);
    o = kiln_text_loader_defaults(3);
    o.batch_size = 0;
    expect_ctx(ctx, "batch_size 0", kiln_text_loader_new(ctx, t, &o) == NULL, KILN_ERR_INVALID_ARGUMENT, "batch_size 0",
               NULL, NULL);
    o.batch_size = INT64_MAX / 2;
    expect_ctx(ctx, "huge batch", kiln_text_loader_new(ctx, t, &o) == NULL, KILN_ERR_INVALID_ARGUMENT, "2^30", NULL,
               NULL);
    expect_ctx(ctx, "NULL options", kiln_text_loader_new(ctx, t, NULL) == NULL, KILN_ERR_NULL, "seq_len has no default",
               NULL, NULL);
    expect_ctx(ctx, "NULL text", kiln_text_loader_new(ctx, NULL, &o) == NULL, KILN_ERR_NULL, "kiln_text_loader_new",
               NULL, NULL);
    expect_global("NULL ctx", kiln_text_loader_new(NULL, t, &o) == NULL, KILN_ERR_NULL, "kiln_text_loader_new", NULL,
                  NULL);
    kiln_tensor *x, *y;
    expect_global("next NULL", !kiln_text_loader_next(NULL, &x, &y), KILN_ERR_NULL, "kiln_text_loader_next", NULL,
                  NULL);
    expect_global("set_epoch NULL", kiln_text_loader_set_epoch(NULL, 0) == KILN_ERR_NULL, KILN_ERR_NULL,
                  "kiln_text_loader_set_epoch", NULL, NULL);
    expect_global("reset NULL", kiln_text_loader_reset(NULL) == KILN_ERR_NULL, KILN_ERR_NULL, "kiln_text_loader_reset",
                  NULL, NULL);
    o = kiln_text_loader_defaults(3);
    kiln_text_loader *l = kiln_text_loader_new(ctx, t, &o);
    expect_ctx(ctx, "next NULL out", !kiln_text_loader_next(l, NULL, &y), KILN_ERR_NULL, "kiln_text_loader_next", "x",
               NULL);
    CHECK(kiln_text_loader_num_batches(NULL) == 0 && kiln_text_loader_epoch(NULL) == 0 &&
              kiln_text_loader_batch_starts(NULL, NULL) == 0,
          "NULL loader getters");
    kiln_text_loader_free(NULL);
    kiln_text_loader_free(l);
    kiln_text_free(t);
}

static void run(kiln_ctx *ctx) {
    test_contiguous(ctx);
    test_random(ctx);
    test_loader_errors(ctx);
}

static void remove_tree(const char *path) {
    struct stat sb;
    if (lstat(path, &sb) != 0) return;
    if (S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char p[1024];
            snprintf(p, sizeof p, "%s/%s", path, e->d_name);
            remove_tree(p);
        }
        if (d) closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

int main(void) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/kiln-text-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "mkdtemp failed\n");
        return 1;
    }
    test_memory();
    test_files();
    test_fortunes_dir();
    test_split();
    kiln_device_info info[16];
    int nd = 0;
    if (kiln_devices(info, 16, &nd) != KILN_OK || nd == 0) {
        fprintf(stderr, "no OpenCL device: loader checks skipped (%s)\n", kiln_last_error());
        remove_tree(tmpdir);
        printf("%d checks, %d failed\n", h_checks, h_failed);
        return h_failed ? 1 : 77;
    }
    H_FOR_EACH_DEVICE(run);
    remove_tree(tmpdir);
    return h_finish();
}

/* tests/test_image.c - kiln_save_image_grid (src/io/image.c), read back with libpng's own
 * reader.
 *
 * What is checked, and how each check can fail:
 *   grey grid     5 images [5,1,3,4] of distinct values, nrow 2, padding 2, pad 0: the file
 *                 decodes as 8-bit grey of 2*(4+2)+2 x 3*(3+2)+2 pixels, every pixel equal to
 *                 a reference computed here from torchvision's layout (image k at row k/nrow,
 *                 column k%nrow; the unused cell of the last row stays padding) and its byte
 *                 formula; values below lo / above hi clamp to 0 / 255, NaN is 0.
 *   rgb, range    [2,3,2,2] with range [-1, 1], pad_value 1 (white), padding 1, a strided view
 *                 (transpose of H and W): RGB, pixels as the reference.
 *   single        one image gets no padding (make_grid's rule): the PNG is H x W.
 *   errors        a missing directory, a regular file used as a directory, and a read-only
 *                 directory (skipped as root, who may write there): KILN_ERR_IO naming the
 *                 path, no file and no temporary file left; an existing target in the
 *                 read-only directory keeps its bytes. A target that is a directory: the
 *                 rename fails after the PNG was written, and the temporary is gone. Bad
 *                 shapes (3-D, C = 2, N = 0), i32 dtype, nrow 0, padding -1, lo = hi, hi NaN,
 *                 pad_value 2: each its status, naming the shape or option, and no file.
 *                 NULL images and NULL path: KILN_ERR_NULL.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <png.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

static char tmpdir[256];

static void path_in(char *buf, size_t cap, const char *name) { snprintf(buf, cap, "%s/%s", tmpdir, name); }

static bool exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* Number of entries in dir other than . and .. */
static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

/* Decodes path with libpng's simplified reader in its own format; malloc'ed pixels. */
static unsigned char *read_png(const char *path, int *w, int *h, int *channels) {
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_file(&img, path)) {
        fprintf(stderr, "  libpng: %s: %s\n", path, img.message);
        return NULL;
    }
    *channels = (img.format & PNG_FORMAT_FLAG_COLOR) ? 3 : 1;
    img.format = *channels == 3 ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
    unsigned char *buf = malloc(PNG_IMAGE_SIZE(img));
    if (!buf || !png_image_finish_read(&img, NULL, buf, 0, NULL)) {
        fprintf(stderr, "  libpng: %s: %s\n", path, img.message);
        free(buf);
        png_image_free(&img);
        return NULL;
    }
    *w = (int)img.width;
    *h = (int)img.height;
    return buf;
}

static unsigned char ref_byte(double x, double lo, double hi) {
    if (isnan(x)) return 0;
    double v = (x - lo) / (hi - lo);
    v = v < 0 ? 0 : v > 1 ? 1 : v;
    return (unsigned char)floor(v * 255 + 0.5);
}

/* The reference grid of torchvision's make_grid for host images [n,c,h,w]. */
static unsigned char *ref_grid(const float *x, int n, int c, int h, int w, int nrow, int pad, double pad_value,
                               double lo, double hi, int *gw, int *gh) {
    if (n == 1) pad = 0;
    int cols = n < nrow ? n : nrow, rows = (n + cols - 1) / cols;
    *gw = cols * (w + pad) + pad;
    *gh = rows * (h + pad) + pad;
    unsigned char *g = malloc((size_t)(*gw * *gh * c));
    for (int i = 0; i < *gw * *gh * c; i++) g[i] = ref_byte(pad_value, 0, 1);
    for (int k = 0; k < n; k++)
        for (int ch = 0; ch < c; ch++)
            for (int y = 0; y < h; y++)
                for (int xx = 0; xx < w; xx++) {
                    int gy = (k / cols) * (h + pad) + pad + y, gx = (k % cols) * (w + pad) + pad + xx;
                    g[(gy * *gw + gx) * c + ch] = ref_byte(x[((k * c + ch) * h + y) * w + xx], lo, hi);
                }
    return g;
}

static void compare_file(const char *what, const char *path, const unsigned char *ref, int gw, int gh, int c) {
    int w = 0, h = 0, ch = 0;
    unsigned char *got = read_png(path, &w, &h, &ch);
    CHECK(got != NULL, "%s: %s does not decode", what, path);
    if (!got) return;
    CHECK(w == gw && h == gh && ch == c, "%s: decoded %d x %d x %d, expected %d x %d x %d", what, w, h, ch, gw, gh, c);
    if (w == gw && h == gh && ch == c) {
        int bad = 0;
        for (int i = 0; i < gw * gh * c; i++)
            if (got[i] != ref[i] && bad++ == 0)
                fprintf(stderr, "  %s: byte %d (x %d, y %d): got %d, expected %d\n", what, i, (i / c) % gw, i / c / gw,
                        got[i], ref[i]);
        CHECK(bad == 0, "%s: %d bytes differ", what, bad);
    }
    free(got);
}

static void test_grey(kiln_ctx *ctx) {
    enum { N = 5, C = 1, H = 3, W = 4 };
    float x[N * C * H * W];
    for (int i = 0; i < N * C * H * W; i++) x[i] = (float)i / (N * C * H * W - 1); /* 0..1, all distinct bytes */
    x[0] = -0.5f;                                                                  /* clamps to 0 */
    x[7] = 3.0f;                                                                   /* clamps to 255 */
    x[9] = NAN;
    kiln_tensor *t = kiln_from_host(ctx, x, KILN_F32, 4, (int64_t[]){N, C, H, W});
    char p[512];
    path_in(p, sizeof p, "grey.png");
    kiln_image_grid_opts o = kiln_image_grid_defaults();
    CHECK(o.nrow == 8 && o.padding == 2 && o.pad_value == 0 && o.lo == 0 && o.hi == 1, "defaults are torchvision's");
    o.nrow = 2;
    CHECK(kiln_save_image_grid(t, p, &o) == KILN_OK, "grey: %s", kiln_error_message(ctx));
    int gw, gh;
    unsigned char *ref = ref_grid(x, N, C, H, W, 2, 2, 0, 0, 1, &gw, &gh);
    CHECK(gw == 14 && gh == 17, "reference grid %d x %d", gw, gh);
    CHECK(ref[(2 * gw + 2)] == 0 && ref[(2 * gw + 3)] > 0, "clamped low and a positive pixel in the reference");
    compare_file("grey", p, ref, gw, gh, 1);
    free(ref);
    /* the default options (NULL) give one row of 5 */
    CHECK(kiln_save_image_grid(t, p, NULL) == KILN_OK, "grey defaults: %s", kiln_error_message(ctx));
    ref = ref_grid(x, N, C, H, W, 8, 2, 0, 0, 1, &gw, &gh);
    CHECK(gw == 5 * 6 + 2 && gh == 7, "reference grid %d x %d", gw, gh);
    compare_file("grey defaults", p, ref, gw, gh, 1);
    free(ref);
    kiln_tensor_free(t);
    CHECK_OK(ctx);
}

static void test_rgb(kiln_ctx *ctx) {
    enum { N = 2, C = 3, H = 2, W = 2 };
    float x[N * C * H * W];
    h_fill(x, N * C * H * W, -1.3f, 1.3f); /* some outside [-1, 1] */
    kiln_tensor *t = kiln_from_host(ctx, x, KILN_F32, 4, (int64_t[]){N, C, H, W});
    kiln_tensor *v = kiln_transpose(ctx, t, 2, 3); /* a strided view: images transposed */
    float xt[N * C * H * W];
    for (int k = 0; k < N * C; k++)
        for (int i = 0; i < H; i++)
            for (int j = 0; j < W; j++) xt[(k * W + j) * H + i] = x[(k * H + i) * W + j];
    char p[512];
    path_in(p, sizeof p, "rgb.png");
    kiln_image_grid_opts o = kiln_image_grid_defaults();
    o.lo = -1;
    o.hi = 1;
    o.pad_value = 1;
    o.padding = 1;
    CHECK(kiln_save_image_grid(v, p, &o) == KILN_OK, "rgb: %s", kiln_error_message(ctx));
    int gw, gh;
    unsigned char *ref = ref_grid(xt, N, C, W, H, 8, 1, 1, -1, 1, &gw, &gh);
    CHECK(ref[0] == 255, "white padding in the reference");
    compare_file("rgb", p, ref, gw, gh, 3);
    free(ref);

    /* one image: no padding */
    kiln_tensor *one = kiln_slice(ctx, t, 0, 1, 2, 1);
    path_in(p, sizeof p, "single.png");
    CHECK(kiln_save_image_grid(one, p, &o) == KILN_OK, "single: %s", kiln_error_message(ctx));
    ref = ref_grid(x + C * H * W, 1, C, H, W, 8, 1, 1, -1, 1, &gw, &gh);
    CHECK(gw == W && gh == H, "single image reference %d x %d", gw, gh);
    compare_file("single", p, ref, gw, gh, 3);
    free(ref);
    kiln_tensor_free(one);
    kiln_tensor_free(v);
    kiln_tensor_free(t);
    CHECK_OK(ctx);
}

/* fn fails with status, its message containing each of the words, and leaves no file. */
static void expect_fail(kiln_ctx *ctx, const char *what, kiln_status got, kiln_status want, const char *path,
                        const char *w1, const char *w2) {
    const char *m = kiln_error_message(ctx);
    CHECK(got == want, "%s: status %s, expected %s (%s)", what, kiln_status_name(got), kiln_status_name(want), m);
    CHECK(strstr(m, "kiln_save_image_grid") && (!w1 || strstr(m, w1)) && (!w2 || strstr(m, w2)),
          "%s: message '%s' lacks the function, '%s' or '%s'", what, m, w1 ? w1 : "", w2 ? w2 : "");
    if (path) CHECK(!exists(path), "%s: %s exists after the failure", what, path);
    kiln_error_clear(ctx);
}

static void test_errors(kiln_ctx *ctx) {
    float x[2 * 3 * 4 * 4] = {0};
    kiln_tensor *t = kiln_from_host(ctx, x, KILN_F32, 4, (int64_t[]){2, 1, 4, 4});
    char p[512], dir[512];
    int before = count_entries(tmpdir);

    /* a directory that does not exist */
    path_in(p, sizeof p, "missing/grid.png");
    expect_fail(ctx, "missing directory", kiln_save_image_grid(t, p, NULL), KILN_ERR_IO, p, p, "[2, 1, 4, 4]");
    /* a "directory" that is a regular file (fails for root too) */
    path_in(dir, sizeof dir, "plain");
    FILE *pf = fopen(dir, "wb");
    CHECK(pf != NULL, "creating %s", dir);
    if (pf) fclose(pf);
    path_in(p, sizeof p, "plain/grid.png");
    expect_fail(ctx, "file as directory", kiln_save_image_grid(t, p, NULL), KILN_ERR_IO, p, p, NULL);
    unlink(dir);
    /* the target is a directory: the temporary is written, the rename fails, and the
     * temporary is removed (fails for root too) */
    path_in(dir, sizeof dir, "target.png");
    CHECK(mkdir(dir, 0755) == 0, "mkdir %s", dir);
    expect_fail(ctx, "target is a directory", kiln_save_image_grid(t, dir, NULL), KILN_ERR_IO, NULL, dir, "unchanged");
    CHECK(count_entries(tmpdir) == before + 1, "entries in %s: %d, expected %d (a temporary left?)", tmpdir,
          count_entries(tmpdir), before + 1);
    CHECK(count_entries(dir) == 0, "the target directory was changed");
    rmdir(dir);
    /* a directory that cannot be written (root may write anyway: then only the existing
     * target's bytes are checked to change, not the failure) */
    path_in(dir, sizeof dir, "ro");
    CHECK(mkdir(dir, 0755) == 0, "mkdir %s", dir);
    path_in(p, sizeof p, "ro/grid.png");
    FILE *f = fopen(p, "wb");
    CHECK(f != NULL, "creating %s", p);
    if (f) fputs("previous", f), fclose(f);
    chmod(dir, 0555);
    bool root_writes = access(dir, W_OK) == 0;
    kiln_status st = kiln_save_image_grid(t, p, NULL);
    if (!root_writes) {
        expect_fail(ctx, "read-only directory", st, KILN_ERR_IO, NULL, p, "temporary");
        char buf[32] = {0};
        f = fopen(p, "rb");
        CHECK(f && fread(buf, 1, sizeof buf - 1, f) == 8 && !strcmp(buf, "previous"),
              "the previous file is unchanged: '%s'", buf);
        if (f) fclose(f);
        CHECK(count_entries(dir) == 1, "%d entries in the read-only directory (a temporary left?)", count_entries(dir));
    } else {
        fprintf(stderr, "  (running as root: the read-only directory is writable, that case is skipped)\n");
        kiln_error_clear(ctx);
    }
    chmod(dir, 0755);
    unlink(p);
    rmdir(dir);
    CHECK(count_entries(tmpdir) == before, "entries in %s: %d before, %d after", tmpdir, before, count_entries(tmpdir));

    path_in(p, sizeof p, "bad.png");
    kiln_tensor *t3 = kiln_from_host(ctx, x, KILN_F32, 3, (int64_t[]){2, 4, 4});
    expect_fail(ctx, "3-D", kiln_save_image_grid(t3, p, NULL), KILN_ERR_SHAPE, p, "[2, 4, 4]", "[N, C, H, W]");
    kiln_tensor *c2 = kiln_from_host(ctx, x, KILN_F32, 4, (int64_t[]){2, 2, 4, 4});
    expect_fail(ctx, "C = 2", kiln_save_image_grid(c2, p, NULL), KILN_ERR_SHAPE, p, "[2, 2, 4, 4]", "C 1 or 3");
    kiln_tensor *e0 = kiln_slice(ctx, t, 0, 0, 0, 1); /* N = 0 */
    expect_fail(ctx, "N = 0", kiln_save_image_grid(e0, p, NULL), KILN_ERR_SHAPE, p, "[0, 1, 4, 4]", NULL);
    int32_t xi[16] = {0};
    kiln_tensor *ti = kiln_from_host(ctx, xi, KILN_I32, 4, (int64_t[]){1, 1, 4, 4});
    expect_fail(ctx, "i32", kiln_save_image_grid(ti, p, NULL), KILN_ERR_DTYPE, p, "i32", "f32");
    kiln_image_grid_opts o = kiln_image_grid_defaults();
    o.nrow = 0;
    expect_fail(ctx, "nrow 0", kiln_save_image_grid(t, p, &o), KILN_ERR_INVALID_ARGUMENT, p, "nrow",
                "kiln_image_grid_defaults");
    o = kiln_image_grid_defaults();
    o.padding = -1;
    expect_fail(ctx, "padding -1", kiln_save_image_grid(t, p, &o), KILN_ERR_INVALID_ARGUMENT, p, "padding", NULL);
    o = kiln_image_grid_defaults();
    o.lo = 1;
    o.hi = 1;
    expect_fail(ctx, "lo = hi", kiln_save_image_grid(t, p, &o), KILN_ERR_INVALID_ARGUMENT, p, "range", NULL);
    o = kiln_image_grid_defaults();
    o.hi = NAN;
    expect_fail(ctx, "hi NaN", kiln_save_image_grid(t, p, &o), KILN_ERR_INVALID_ARGUMENT, p, "range", NULL);
    o = kiln_image_grid_defaults();
    o.pad_value = 2;
    expect_fail(ctx, "pad_value 2", kiln_save_image_grid(t, p, &o), KILN_ERR_INVALID_ARGUMENT, p, "pad_value", NULL);
    expect_fail(ctx, "NULL path", kiln_save_image_grid(t, NULL, NULL), KILN_ERR_NULL, NULL, "path", NULL);
    CHECK(kiln_save_image_grid(NULL, p, NULL) == KILN_ERR_NULL, "NULL images");
    CHECK(strstr(kiln_last_error(), "kiln_save_image_grid") && strstr(kiln_last_error(), "images"), "NULL images: '%s'",
          kiln_last_error());
    CHECK(!exists(p), "%s exists", p);
    kiln_tensor_free(ti);
    kiln_tensor_free(e0);
    kiln_tensor_free(c2);
    kiln_tensor_free(t3);
    kiln_tensor_free(t);
    CHECK_OK(ctx);
}

static void run(kiln_ctx *ctx) {
    test_grey(ctx);
    test_rgb(ctx);
    test_errors(ctx);
}

int main(void) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/kiln-image-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "mkdtemp failed\n");
        return 1;
    }
    H_FOR_EACH_DEVICE(run);
    char p[512];
    const char *names[] = {"grey.png", "rgb.png", "single.png"};
    for (int i = 0; i < 3; i++) path_in(p, sizeof p, names[i]), unlink(p);
    rmdir(tmpdir);
    return h_finish();
}

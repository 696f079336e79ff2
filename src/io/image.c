/* src/io/image.c - kiln_save_image_grid: a batch of images laid out as one grid and written
 * as PNG through libpng, as torchvision's make_grid + save_image.
 *
 * The grid is built on the host from one read of the tensor. Like the safetensors writer
 * it writes under a temporary name in the target's directory and renames over the target,
 * so a failure at any step leaves no partial file and the previous file as it was. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io_internal.h"

kiln_image_grid_opts kiln_image_grid_defaults(void) {
    return (kiln_image_grid_opts){.nrow = 8, .padding = 2, .pad_value = 0.0f, .lo = 0.0f, .hi = 1.0f};
}

/* libpng reports errors through a callback that must not return: keep the message and
 * jump back to the writer. */
typedef struct png_err {
    char msg[256];
} png_err;

static void on_png_error(png_structp png, png_const_charp msg) {
    png_err *e = png_get_error_ptr(png);
    snprintf(e->msg, sizeof e->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void on_png_warning(png_structp png, png_const_charp msg) {
    (void)png, (void)msg; /* warnings (none for what is written here) are not errors */
}

/* Writes rows (h rows of w * channels bytes) to fp; false with e->msg set on failure. */
static bool write_png(FILE *fp, png_err *e, const unsigned char *pixels, int64_t w, int64_t h, int channels) {
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, e, on_png_error, on_png_warning);
    if (!png) {
        snprintf(e->msg, sizeof e->msg, "libpng could not start a writer");
        return false;
    }
    png_infop info = png_create_info_struct(png);
    png_bytep *volatile rows = NULL;
    if (!info || setjmp(png_jmpbuf(png))) {
        if (!info) snprintf(e->msg, sizeof e->msg, "libpng could not start a writer");
        free(rows);
        png_destroy_write_struct(&png, info ? &info : NULL);
        return false;
    }
    rows = malloc(sizeof *rows * (size_t)h);
    if (!rows) png_error(png, "out of host memory");
    for (int64_t y = 0; y < h; y++) rows[y] = (png_bytep)(pixels + (size_t)(y * w * channels));
    png_init_io(png, fp);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_set_rows(png, info, rows);
    png_write_png(png, info, PNG_TRANSFORM_IDENTITY, NULL);
    free(rows);
    png_destroy_write_struct(&png, &info);
    return true;
}

/* value -> 0..255 as save_image: clamp to [lo, hi], scale to [0, 1], x * 255 + 0.5
 * truncated. NaN becomes 0. */
static unsigned char to_byte(float x, float lo, float hi) {
    double v = ((double)x - lo) / ((double)hi - lo);
    if (!(v > 0)) v = 0; /* also NaN */
    if (v > 1) v = 1;
    return (unsigned char)(v * 255.0 + 0.5);
}

kiln_status kiln_save_image_grid(kiln_tensor *images, const char *path, const kiln_image_grid_opts *opts) {
    static const char fn[] = "kiln_save_image_grid";
    if (!images) return kiln__fail_global(KILN_ERR_NULL, "%s: images is NULL", fn);
    kiln_ctx *ctx = kiln_tensor_ctx(images);
    if (!path) return kiln__fail(ctx, KILN_ERR_NULL, "%s: path is NULL", fn);
    kiln_image_grid_opts o = opts ? *opts : kiln_image_grid_defaults();
    char sb[160];
    kiln_tensor_shape_str(images, sb, sizeof sb);
    const int64_t *s = kiln_tensor_shape(images);
    int nd = kiln_tensor_ndim(images);
    if (kiln_tensor_dtype(images) != KILN_F32)
        return kiln__fail(ctx, KILN_ERR_DTYPE, "%s: %s: images %s are %s, f32 is needed", fn, path, sb,
                          kiln_dtype_name(kiln_tensor_dtype(images)));
    if (nd != 4 || (s[1] != 1 && s[1] != 3) || s[0] < 1 || s[2] < 1 || s[3] < 1)
        return kiln__fail(ctx, KILN_ERR_SHAPE, "%s: %s: images %s must be [N, C, H, W] with N, H, W >= 1 and C 1 or 3",
                          fn, path, sb);
    if (o.nrow < 1)
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                          "%s: %s: nrow %d must be >= 1 (kiln_image_grid_defaults() gives 8)", fn, path, o.nrow);
    if (o.padding < 0)
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                          "%s: %s: padding %d must be >= 0 (kiln_image_grid_defaults() gives 2)", fn, path, o.padding);
    if (!isfinite(o.lo) || !isfinite(o.hi) || !(o.hi > o.lo))
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: %s: value range [%g, %g] must be finite with lo < hi",
                          fn, path, (double)o.lo, (double)o.hi);
    if (!(o.pad_value >= 0 && o.pad_value <= 1))
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                          "%s: %s: pad_value %g must be in [0, 1] (of the output range)", fn, path,
                          (double)o.pad_value);

    int64_t n = s[0], c = s[1], h = s[2], w = s[3];
    /* make_grid: a single image is returned without padding */
    int64_t pad = n == 1 ? 0 : o.padding;
    int64_t cols = n < o.nrow ? n : o.nrow, rows = (n + cols - 1) / cols;
    int64_t gw = cols * (w + pad) + pad, gh = rows * (h + pad) + pad;
    if (gw > 1000000 || gh > 1000000 || gw * gh * c > ((int64_t)1 << 31))
        return kiln__fail(ctx, KILN_ERR_RANGE, "%s: %s: a grid of %lld x %lld pixels from images %s is too large", fn,
                          path, (long long)gw, (long long)gh, sb);

    int64_t numel = n * c * h * w;
    float *x = malloc(sizeof *x * (size_t)numel);
    unsigned char *px = malloc((size_t)(gw * gh * c));
    if (!x || !px) {
        free(x), free(px);
        return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: %s: out of host memory for images %s", fn, path, sb);
    }
    kiln_status st = kiln_to_host(images, x, sizeof *x * (size_t)numel);
    if (st != KILN_OK) {
        free(x), free(px);
        kiln__error_note(ctx, "%s: %s", fn, path);
        return st;
    }
    memset(px, to_byte(o.pad_value, 0.0f, 1.0f), (size_t)(gw * gh * c));
    for (int64_t k = 0; k < n; k++) {
        int64_t y0 = (k / cols) * (h + pad) + pad, x0 = (k % cols) * (w + pad) + pad;
        for (int64_t ch = 0; ch < c; ch++)
            for (int64_t y = 0; y < h; y++)
                for (int64_t xx = 0; xx < w; xx++)
                    px[((y0 + y) * gw + x0 + xx) * c + ch] = to_byte(x[((k * c + ch) * h + y) * w + xx], o.lo, o.hi);
    }
    free(x);

    /* temporary file next to the target, so the rename is atomic */
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    if (!tmp) {
        free(px);
        return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: %s: out of host memory", fn, path);
    }
    snprintf(tmp, plen + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        st = kiln__fail(ctx, KILN_ERR_IO, "%s: %s: cannot create a temporary file next to it for images %s: %s", fn,
                        path, sb, strerror(errno));
        free(px), free(tmp);
        return st;
    }
    fchmod(fd, 0644);
    png_err e = {{0}};
    errno = 0;
    FILE *fp = fdopen(fd, "wb");
    bool ok = fp != NULL;
    if (!ok) {
        snprintf(e.msg, sizeof e.msg, "%s", strerror(errno));
        close(fd);
    }
    ok = ok && write_png(fp, &e, px, gw, gh, (int)c);
    if (ok && (fflush(fp) != 0 || fsync(fileno(fp)) != 0)) {
        ok = false;
        snprintf(e.msg, sizeof e.msg, "%s", strerror(errno));
    }
    if (fp && fclose(fp) != 0 && ok) {
        ok = false;
        snprintf(e.msg, sizeof e.msg, "%s", strerror(errno));
    }
    if (ok && rename(tmp, path) != 0) {
        ok = false;
        snprintf(e.msg, sizeof e.msg, "%s", strerror(errno));
    }
    if (!ok) {
        unlink(tmp);
        st = kiln__fail(ctx, KILN_ERR_IO,
                        "%s: %s: writing the %lld x %lld PNG of images %s failed (%s); the previous file, if any, is "
                        "unchanged",
                        fn, path, (long long)gw, (long long)gh, sb, e.msg[0] ? e.msg : "I/O error");
    }
    free(px), free(tmp);
    return ok ? KILN_OK : st;
}

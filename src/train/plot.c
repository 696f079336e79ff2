/* src/train/plot.c - training curves as an SVG image (written atomically) and the
 * per-epoch CSV log. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../ops/ops_internal.h"
#include "kiln/train.h"

/* ---- a growing string ------------------------------------------------------------------ */

typedef struct str {
    char *p;
    size_t len, cap;
    bool oom;
} str;

static void sp(str *s, const char *fmt, ...) KILN__PRINTF(2, 3);
static void sp(str *s, const char *fmt, ...) {
    if (s->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int w = vsnprintf(s->p ? s->p + s->len : NULL, s->p ? s->cap - s->len : 0, fmt, ap);
        va_end(ap);
        if (w < 0) {
            s->oom = true;
            return;
        }
        if (s->p && s->len + (size_t)w < s->cap) {
            s->len += (size_t)w;
            return;
        }
        size_t cap = s->cap ? s->cap : 4096;
        while (cap <= s->len + (size_t)w) cap *= 2;
        char *q = realloc(s->p, cap);
        if (!q) {
            s->oom = true;
            return;
        }
        s->p = q;
        s->cap = cap;
    }
}

/* Text with XML's special characters escaped. */
static void sp_xml(str *s, const char *t) {
    for (; *t; t++) {
        switch (*t) {
        case '&': sp(s, "&amp;"); break;
        case '<': sp(s, "&lt;"); break;
        case '>': sp(s, "&gt;"); break;
        case '"': sp(s, "&quot;"); break;
        default:
            if ((unsigned char)*t < 0x20 && *t != '\t') break; /* control characters are not XML */
            sp(s, "%c", *t);
        }
    }
}

/* ---- atomic file write ----------------------------------------------------------------- */

static kiln_status write_atomic(const char *op, const char *path, const char *data, size_t len) {
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    if (!tmp) return kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: %s: out of host memory", op, path);
    snprintf(tmp, plen + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        kiln_status s = kiln__fail_global(KILN_ERR_IO, "%s: %s: cannot create a temporary file next to it: %s", op,
                                          path, strerror(errno));
        free(tmp);
        return s;
    }
    fchmod(fd, 0644);
    FILE *fp = fdopen(fd, "wb");
    int err = 0;
    if (!fp) err = errno;
    if (!err && len && fwrite(data, 1, len, fp) != len) err = errno ? errno : EIO;
    if (!err && fflush(fp) != 0) err = errno;
    if (!err && fsync(fileno(fp)) != 0) err = errno;
    if (fp) {
        if (fclose(fp) != 0 && !err) err = errno;
    } else {
        close(fd);
    }
    if (!err && rename(tmp, path) != 0) err = errno;
    if (err) {
        unlink(tmp);
        free(tmp);
        return kiln__fail_global(KILN_ERR_IO, "%s: %s: write failed (%s); the previous file, if any, is unchanged", op,
                                 path, strerror(err));
    }
    free(tmp);
    return KILN_OK;
}

/* ---- axes -------------------------------------------------------------------------------- */

/* A "nice" step (1, 2 or 5 times a power of ten) of at least span / max_ticks. */
static double nice_step(double span, int max_ticks) {
    double raw = span / max_ticks;
    if (!(raw > 0) || !isfinite(raw)) return 1;
    double mag = pow(10, floor(log10(raw)));
    double f = raw / mag;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

typedef struct axis {
    double lo, hi, step;
    int decimals;
} axis;

/* An axis covering [lo, hi] with nice ticks; its ends are tick multiples. */
static axis make_axis(double lo, double hi) {
    axis a;
    if (!isfinite(lo) || !isfinite(hi)) {
        lo = 0;
        hi = 1;
    }
    if (hi - lo < 1e-12 * (fabs(lo) + fabs(hi)) || hi == lo) {
        double pad = lo != 0 ? fabs(lo) * 0.1 : 0.5;
        lo -= pad;
        hi += pad;
    }
    a.step = nice_step(hi - lo, 5);
    a.lo = floor(lo / a.step) * a.step;
    a.hi = ceil(hi / a.step) * a.step;
    if (a.hi <= a.lo) a.hi = a.lo + a.step;
    int d = (int)-floor(log10(a.step) + 1e-9);
    a.decimals = d < 0 ? 0 : d > 8 ? 8 : d;
    return a;
}

/* ---- panels ------------------------------------------------------------------------------ */

enum { H = 440, PANEL_W = 480, ML = 72, MR = 24, MT = 64, MB = 58 };

/* What one panel draws: n points at x[i] (NULL: 1..n), up to two series of y values (NaN
 * leaves a gap), series 0 solid and series 1 dashed. */
typedef struct curves {
    int n;
    const double *x;
    const double *y[2];
    const char *label[2];
    const char *name, *xlabel; /* the panel's title and y label; its x label */
    bool unit;                 /* keep the y axis inside [0, 1] where the data is (accuracy) */
} curves;

typedef struct panel {
    double x0, y0, w, h; /* plot area in pixels */
    double xlo, xhi;
    axis y;
} panel;

static double px(const panel *p, double x) { return p->x0 + (x - p->xlo) / (p->xhi - p->xlo) * p->w; }
static double py(const panel *p, double y) { return p->y0 + p->h - (y - p->y.lo) / (p->y.hi - p->y.lo) * p->h; }

static double cx_at(const curves *c, int i) { return c->x ? c->x[i] : i + 1; }
static double cy_at(const curves *c, int k, int i) { return c->y[k] ? c->y[k][i] : NAN; }

static const char *const COLOR[2] = {"#1f77b4", "#ff7f0e"};

/* One curve: runs of finite points become polylines, isolated points circles (markers on
 * every point as well when there are few points). */
static void draw_series(str *s, const panel *p, const curves *c, int k) {
    const char *color = COLOR[k];
    const char *dash = k ? " stroke-dasharray=\"7,4\"" : "";
    int i = 0, n = c->n;
    while (i < n) {
        while (i < n && !(isfinite(cy_at(c, k, i)) && isfinite(cx_at(c, i)))) i++;
        int start = i;
        while (i < n && isfinite(cy_at(c, k, i)) && isfinite(cx_at(c, i))) i++;
        int len = i - start;
        if (len == 1) {
            sp(s, "<circle cx=\"%.2f\" cy=\"%.2f\" r=\"4\" fill=\"%s\"/>\n", px(p, cx_at(c, start)),
               py(p, cy_at(c, k, start)), color);
        } else if (len > 1) {
            sp(s, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s stroke-linejoin=\"round\" points=\"",
               color, dash);
            for (int j = start; j < i; j++)
                sp(s, "%s%.2f,%.2f", j > start ? " " : "", px(p, cx_at(c, j)), py(p, cy_at(c, k, j)));
            sp(s, "\"/>\n");
            if (n <= 30)
                for (int j = start; j < i; j++)
                    sp(s, "<circle cx=\"%.2f\" cy=\"%.2f\" r=\"2.5\" fill=\"%s\"/>\n", px(p, cx_at(c, j)),
                       py(p, cy_at(c, k, j)), color);
        }
    }
}

static void draw_panel(str *s, int index, const curves *c) {
    int n = c->n;
    panel p;
    p.x0 = index * PANEL_W + ML;
    p.y0 = MT;
    p.w = PANEL_W - ML - MR;
    p.h = H - MT - MB;
    /* x: the points' range (a single point sits in the middle); whole-number ticks when
     * every x is a whole number (epochs, episodes) */
    double emin = INFINITY, emax = -INFINITY;
    bool whole = true;
    for (int i = 0; i < n; i++) {
        double x = cx_at(c, i);
        if (!isfinite(x)) continue;
        if (x < emin) emin = x;
        if (x > emax) emax = x;
        whole = whole && x == floor(x);
    }
    bool any_x = isfinite(emin);
    double tick_lo = any_x ? emin : 1, tick_hi = any_x ? emax : 1; /* ticks only where points are */
    if (!any_x) emin = emax = 1;
    if (!(emax > emin)) {
        emin -= 1;
        emax += 1;
    }
    /* a margin so the first and last points sit off the frame */
    p.xlo = emin - 0.04 * (emax - emin);
    p.xhi = emax + 0.04 * (emax - emin);
    /* y: every finite value of both series */
    double lo = INFINITY, hi = -INFINITY;
    bool has[2] = {false, false};
    for (int i = 0; i < n; i++)
        for (int k = 0; k < 2; k++) {
            double v = cy_at(c, k, i);
            if (!isfinite(v) || !isfinite(cx_at(c, i))) continue;
            has[k] = true;
            if (v < lo) lo = v;
            if (v > hi) hi = v;
        }
    double pad = isfinite(lo) && hi > lo ? 0.05 * (hi - lo) : 0; /* a margin above and below */
    p.y = make_axis(lo - pad, hi + pad);
    if (c->unit && isfinite(lo)) { /* accuracy: keep the axis inside [0, 1] where the data is */
        if (p.y.lo < 0 && lo >= 0) p.y.lo = 0;
        if (p.y.hi > 1 && hi <= 1) p.y.hi = 1;
    }

    sp(s, "<g>\n<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#ffffff\" stroke=\"#444444\"/>\n",
       p.x0, p.y0, p.w, p.h);
    /* y ticks with grid lines */
    for (int k = 0;; k++) {
        double v = p.y.lo + k * p.y.step;
        if (v > p.y.hi + p.y.step * 1e-6) break;
        if (v < p.y.lo - p.y.step * 1e-6) continue;
        double y = py(&p, v);
        sp(s, "<line x1=\"%.1f\" y1=\"%.2f\" x2=\"%.1f\" y2=\"%.2f\" stroke=\"#e4e4e4\"/>\n", p.x0, y, p.x0 + p.w, y);
        sp(s, "<line x1=\"%.1f\" y1=\"%.2f\" x2=\"%.1f\" y2=\"%.2f\" stroke=\"#444444\"/>\n", p.x0 - 5, y, p.x0, y);
        sp(s, "<text x=\"%.1f\" y=\"%.2f\" text-anchor=\"end\" dominant-baseline=\"middle\">%.*f</text>\n", p.x0 - 8, y,
           p.y.decimals, fabs(v) < p.y.step * 1e-9 ? 0.0 : v);
        if (k > 1000) break;
    }
    /* x ticks, a nice step apart */
    double xs = nice_step(tick_hi - tick_lo, 8);
    if (whole && xs < 1) xs = 1;
    if (!(tick_hi > tick_lo)) xs = 1;
    int d = (int)-floor(log10(xs) + 1e-9), xdec = whole || d < 0 ? 0 : d > 8 ? 8 : d;
    int ticks = 0;
    for (double v = ceil(tick_lo / xs - 1e-9) * xs; v <= tick_hi + xs * 1e-9 && ticks < 1000; v += xs, ticks++) {
        double x = px(&p, v);
        sp(s, "<line x1=\"%.2f\" y1=\"%.1f\" x2=\"%.2f\" y2=\"%.1f\" stroke=\"#444444\"/>\n", x, p.y0 + p.h, x,
           p.y0 + p.h + 5);
        sp(s, "<text x=\"%.2f\" y=\"%.1f\" text-anchor=\"middle\">%.*f</text>\n", x, p.y0 + p.h + 20, xdec,
           fabs(v) < xs * 1e-9 ? 0.0 : v);
    }
    sp(s, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", p.x0 + p.w / 2, (double)H - 14);
    sp_xml(s, c->xlabel);
    sp(s, "</text>\n<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" transform=\"rotate(-90 %.1f %.1f)\">", p.x0 - 54,
       p.y0 + p.h / 2, p.x0 - 54, p.y0 + p.h / 2);
    sp_xml(s, c->name);
    sp(s, "</text>\n<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-weight=\"bold\">", p.x0 + p.w / 2,
       p.y0 - 10);
    sp_xml(s, c->name);
    sp(s, "</text>\n");
    /* the curves, clipped to the plot area */
    sp(s, "<g clip-path=\"url(#clip%d)\">\n", index);
    for (int k = 0; k < 2; k++) draw_series(s, &p, c, k);
    sp(s, "</g>\n");
    /* legend in the corner that hides the fewest points: top right, bottom right, top left,
     * bottom left */
    int entries = has[0] + has[1];
    if (entries) {
        size_t longest = 0;
        for (int k = 0; k < 2; k++)
            if (has[k] && strlen(c->label[k]) > longest) longest = strlen(c->label[k]);
        double lw = 52 + 7.0 * (double)(longest < 10 ? 10 : longest > 40 ? 40 : longest), lh = 10 + 20 * entries;
        double lx = 0, ly = 0;
        int least = -1;
        for (int corner = 0; corner < 4; corner++) {
            double cx = corner < 2 ? p.x0 + p.w - lw - 8 : p.x0 + 8, cy = corner % 2 ? p.y0 + p.h - lh - 8 : p.y0 + 8;
            int hidden = 0;
            for (int i = 0; i < n; i++)
                for (int k = 0; k < 2; k++) {
                    double v = cy_at(c, k, i);
                    if (!isfinite(v) || !isfinite(cx_at(c, i))) continue;
                    double x = px(&p, cx_at(c, i)), y = py(&p, v);
                    hidden += x >= cx - 6 && x <= cx + lw + 6 && y >= cy - 6 && y <= cy + lh + 6;
                }
            if (least < 0 || hidden < least) {
                least = hidden;
                lx = cx;
                ly = cy;
            }
        }
        sp(s,
           "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#ffffff\" fill-opacity=\"0.85\" "
           "stroke=\"#bbbbbb\"/>\n",
           lx, ly, lw, lh);
        int row = 0;
        for (int k = 0; k < 2; k++) {
            if (!has[k]) continue;
            double y = ly + 15 + 20 * row++;
            sp(s, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"%s/>\n",
               lx + 8, y, lx + 36, y, COLOR[k], k ? " stroke-dasharray=\"7,4\"" : "");
            sp(s, "<text x=\"%.1f\" y=\"%.1f\" dominant-baseline=\"middle\">", lx + 44, y);
            sp_xml(s, c->label[k]);
            sp(s, "</text>\n");
        }
    }
    if (!has[0] && !has[1])
        sp(s, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#888888\">no data</text>\n", p.x0 + p.w / 2,
           p.y0 + p.h / 2);
    sp(s, "</g>\n");
}

/* The whole image: a title over npanels panels side by side, written atomically. */
static kiln_status write_panels(const char *op, const char *path, const char *title, int npanels, const curves *c) {
    int w = npanels * PANEL_W;
    str s = {0};
    sp(&s,
       "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
       "font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">\n",
       w, H, w, H);
    sp(&s, "<title>");
    sp_xml(&s, title);
    sp(&s, "</title>\n<defs>\n");
    for (int k = 0; k < npanels; k++)
        sp(&s, "<clipPath id=\"clip%d\"><rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\"/></clipPath>\n", k,
           k * PANEL_W + ML, MT, PANEL_W - ML - MR, H - MT - MB);
    sp(&s, "</defs>\n<rect width=\"%d\" height=\"%d\" fill=\"#fafafa\"/>\n", w, H);
    sp(&s, "<text x=\"%d\" y=\"26\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\">", w / 2);
    sp_xml(&s, title);
    sp(&s, "</text>\n");
    for (int k = 0; k < npanels; k++) draw_panel(&s, k, &c[k]);
    sp(&s, "</svg>\n");
    if (s.oom) {
        free(s.p);
        return kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: %s: out of host memory for the image", op, path);
    }
    kiln_status st = write_atomic(op, path, s.p, s.len);
    free(s.p);
    return st;
}

kiln_status kiln_plot_history(const char *path, const kiln_epoch_stats *h, int n, const char *title) {
    static const char *op = "kiln_plot_history";
    kiln__clear_global();
    if (!path) return kiln__fail_global(KILN_ERR_NULL, "%s: path is NULL", op);
    if (n < 0) return kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "%s: n is %d", op, n);
    if (n > 0 && !h) return kiln__fail_global(KILN_ERR_NULL, "%s: history is NULL", op);
    double *v = malloc(sizeof *v * 5 * (size_t)(n > 0 ? n : 1));
    if (!v) return kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: %s: out of host memory for the image", op, path);
    double *x = v, *tl = v + n, *vl = v + 2 * n, *ta = v + 3 * n, *va = v + 4 * n;
    for (int i = 0; i < n; i++) {
        x[i] = h[i].epoch > 0 ? h[i].epoch : i + 1;
        tl[i] = h[i].train_loss, vl[i] = h[i].val_loss, ta[i] = h[i].train_accuracy, va[i] = h[i].val_accuracy;
    }
    curves c[2] = {
        {n, x, {tl, vl}, {"train", "validation"}, "loss", "epoch", false},
        {n, x, {ta, va}, {"train", "validation"}, "accuracy", "epoch", true},
    };
    kiln_status st = write_panels(op, path, title ? title : "training history", 2, c);
    free(v);
    return st;
}

kiln_status kiln_plot_curves(const char *path, const char *title, const char *xlabel, const char *ylabel, int n,
                             const double *x, int nseries, const kiln_plot_series *series) {
    static const char *op = "kiln_plot_curves";
    kiln__clear_global();
    if (!path) return kiln__fail_global(KILN_ERR_NULL, "%s: path is NULL", op);
    if (n < 0) return kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "%s: n is %d", op, n);
    if (nseries < 1 || nseries > 2)
        return kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "%s: %d series (1 or 2 are drawn)", op, nseries);
    if (!series) return kiln__fail_global(KILN_ERR_NULL, "%s: series is NULL", op);
    curves c = {n, x, {NULL, NULL}, {"", ""}, ylabel ? ylabel : "", xlabel ? xlabel : "", false};
    for (int k = 0; k < nseries; k++) {
        if (n > 0 && !series[k].y) return kiln__fail_global(KILN_ERR_NULL, "%s: series %d has NULL values", op, k);
        c.y[k] = series[k].y;
        c.label[k] = series[k].name ? series[k].name : "";
    }
    return write_panels(op, path, title ? title : "", 1, &c);
}

/* ---- CSV log ---------------------------------------------------------------------------- */

static void csv_num(FILE *f, double v, const char *fmt) {
    if (isnan(v))
        fputs("nan", f);
    else if (isinf(v))
        fputs(v > 0 ? "inf" : "-inf", f);
    else
        fprintf(f, fmt, v);
}

kiln_status kiln_metrics_csv_append(const char *path, const kiln_epoch_stats *e) {
    static const char *op = "kiln_metrics_csv_append";
    kiln__clear_global();
    if (!path || !e) return kiln__fail_global(KILN_ERR_NULL, "%s: %s is NULL", op, !path ? "path" : "stats");
    FILE *f = fopen(path, "a");
    if (!f) return kiln__fail_global(KILN_ERR_IO, "%s: %s: cannot open for appending: %s", op, path, strerror(errno));
    int err = 0;
    if (fseek(f, 0, SEEK_END) != 0) err = errno;
    long pos = err ? 0 : ftell(f);
    if (!err && pos < 0) err = errno;
    if (!err && pos == 0)
        fputs("epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,seconds,samples_per_second\n", f);
    if (!err) {
        fprintf(f, "%d,", e->epoch);
        csv_num(f, e->train_loss, "%.9g");
        fputc(',', f);
        csv_num(f, e->train_accuracy, "%.9g");
        fputc(',', f);
        csv_num(f, e->val_loss, "%.9g");
        fputc(',', f);
        csv_num(f, e->val_accuracy, "%.9g");
        fputc(',', f);
        csv_num(f, e->lr, "%.9g");
        fputc(',', f);
        csv_num(f, e->seconds, "%.3f");
        fputc(',', f);
        csv_num(f, e->samples_per_second, "%.1f");
        fputc('\n', f);
        if (ferror(f) || fflush(f) != 0) err = errno ? errno : EIO;
    }
    if (fclose(f) != 0 && !err) err = errno ? errno : EIO;
    if (err) return kiln__fail_global(KILN_ERR_IO, "%s: %s: write failed: %s", op, path, strerror(err));
    return KILN_OK;
}

/* tools/tune.c - `kiln tune`: searches CLBlast's GEMM parameters (XgemmDirect, Xgemm and the
 * direct/indirect threshold) on the GEMM shapes kiln issues for the reference MLP and CNN
 * plus 1024^3, checks the winner's results, and stores it in the cache dir, where
 * kiln_open finds it (src/device/tuning.c).
 *
 * How: CLBlast picks its single-kernel "direct" GEMM when m*n*k is below
 * XGEMM_MIN_INDIRECT_SIZE^3 and otherwise the "indirect" one (pad/transpose kernels around
 * a faster main kernel). The search forces each path in turn (threshold huge, then 1),
 * times every candidate of that path's kernel on every shape through kiln_matmul_ex (the
 * fastest of a few runs: the least disturbed by other load), keeps the best per path, then
 * sets the threshold that sends each shape to the faster path. Each candidate costs one
 * compile of CLBlast's GEMM program (a few seconds on POCL), which dominates the time.
 *
 * On CPUs kiln's own kernels (cl_kernels/gemm.cl) compute every product but A^T B^T, so
 * there the parameters matter only for that one; the search switches them off so that it
 * measures CLBlast. A second search then tunes kiln's own kernels (their register block,
 * vector width and K unroll, src/ops/gemm.c) on the same shapes and stores the winner as
 * the file's KilnGemm line when it beats the set gemm.c's table gives the device.
 *
 * Candidates: for CPUs, register tiles of explicit float vectors without local memory
 * (what POCL runs well), plus a few local-memory tilings; for GPUs, CLBlast's own tuner
 * (clblast_tuner_xgemm) explores far more and is the better tool. */
#define _GNU_SOURCE
#include "tune.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "kiln_test_hooks.h"

/* The GEMMs of one training step of each reference model at batch 64, as kiln issues them
 * (row-major C = op(A) op(B)); weight = how many such calls one step makes. The data input's
 * gradient is never computed, so the first layers have no dx product. */
typedef struct tshape {
    bench_gemm_shape s;
    int weight;
} tshape;

static const tshape shapes[] = {
    /* MLP 784-512-256-10: y = x W^T; dx = g W; dW = g^T x */
    {{"mlp fc1 fwd", 64, 512, 784, false, true}, 1},
    {{"mlp fc1 dW", 512, 784, 64, true, false}, 1},
    {{"mlp fc2 fwd", 64, 256, 512, false, true}, 1},
    {{"mlp fc2 dx", 64, 512, 256, false, false}, 1},
    {{"mlp fc2 dW", 256, 512, 64, true, false}, 1},
    {{"mlp fc3 fwd", 64, 10, 256, false, true}, 1},
    {{"mlp fc3 dx", 64, 256, 10, false, false}, 1},
    {{"mlp fc3 dW", 10, 256, 64, true, false}, 1},
    /* CNN: convolutions as im2col GEMMs over the whole batch (src/ops/conv.c): out = W cols,
     * dW = gy cols^T in 2 split-K parts, dcols = W^T gy */
    {{"cnn conv1 fwd", 32, 43264, 9, false, false}, 1},
    {{"cnn conv1 dW", 32, 9, 21632, false, true}, 2},
    {{"cnn conv2 fwd", 64, 36864, 288, false, false}, 1},
    {{"cnn conv2 dW", 64, 288, 18432, false, true}, 2},
    {{"cnn conv2 dx", 288, 36864, 64, true, false}, 1},
    {{"cnn fc1 fwd", 64, 128, 9216, false, true}, 1},
    {{"cnn fc1 dx", 64, 9216, 128, false, false}, 1},
    {{"cnn fc1 dW", 128, 9216, 64, true, false}, 1},
    {{"cnn fc2 fwd", 64, 10, 128, false, true}, 1},
    {{"cnn fc2 dx", 64, 128, 10, false, false}, 1},
    {{"cnn fc2 dW", 10, 128, 64, true, false}, 1},
    /* the yardstick */
    {{"1024^3", 1024, 1024, 1024, false, false}, 1},
};
#define NSHAPES ((int)(sizeof shapes / sizeof shapes[0]))

enum { K_XGEMM, K_DIRECT, K_ROUTINE, K_COPY, K_PAD, K_TRANSPOSE, K_PADTRANSPOSE };

/* ---- candidates ------------------------------------------------------------------------ */

/* XgemmDirect: WGD MDIMCD NDIMCD MDIMAD NDIMBD KWID VWMD VWND PADA PADB */
typedef struct direct_p {
    int wgd, mdimcd, ndimcd, mdimad, ndimbd, kwid, vwmd, vwnd, pada, padb;
} direct_p;

/* Xgemm: MWG NWG KWG MDIMC NDIMC MDIMA NDIMB KWI VWM VWN STRM STRN SA SB (GEMMK 0, KREG 1) */
typedef struct xgemm_p {
    int mwg, nwg, kwg, mdimc, ndimc, mdima, ndimb, kwi, vwm, vwn, strm, strn, sa, sb;
} xgemm_p;

static bool mult(int x, int y) { return y > 0 && x % y == 0; }

/* CLBlast's constraints (src/tuning/kernels/xgemm_direct.hpp, xgemm.hpp), plus a cap on the
 * work-group size and on the local memory POCL gives (it has plenty, but the copy costs). */
static bool direct_valid(const direct_p *p) {
    return mult(p->wgd, p->kwid) && mult(p->wgd, p->mdimcd * p->vwmd) && mult(p->wgd, p->ndimcd * p->vwnd) &&
           mult(p->wgd, p->mdimad * p->vwmd) && mult(p->wgd, p->ndimbd * p->vwnd) &&
           mult(p->wgd, p->mdimcd * p->ndimcd / p->mdimad) && mult(p->wgd, p->mdimcd * p->ndimcd / p->ndimbd) &&
           p->mdimcd * p->ndimcd <= 1024;
}

static bool xgemm_valid(const xgemm_p *p) {
    return mult(p->kwg, p->kwi) && mult(p->mwg, p->mdimc * p->vwm) && mult(p->nwg, p->ndimc * p->vwn) &&
           mult(p->mwg, p->mdima * p->vwm) && mult(p->nwg, p->ndimb * p->vwn) &&
           mult(p->kwg, p->mdimc * p->ndimc / p->mdima) && mult(p->kwg, p->mdimc * p->ndimc / p->ndimb) &&
           p->mdimc * p->ndimc <= 1024;
}

static void set_direct(kiln__tune_set *t, const direct_p *p) {
    /* in CLBlast's order: KWID MDIMAD MDIMCD NDIMBD NDIMCD PADA PADB VWMD VWND WGD */
    const int v[10] = {p->kwid, p->mdimad, p->mdimcd, p->ndimbd, p->ndimcd, p->pada, p->padb, p->vwmd, p->vwnd, p->wgd};
    for (int i = 0; i < 10; i++)
        kiln__tune_set_value(t, K_DIRECT, kiln__tune_param_index(K_DIRECT, kiln__tune_param(K_DIRECT, i)),
                             (size_t)v[i]);
}

static void set_xgemm(kiln__tune_set *t, const xgemm_p *p) {
    const char *n[] = {"GEMMK", "KREG", "KWG", "KWI", "MDIMA", "MDIMC", "MWG", "NDIMB",
                       "NDIMC", "NWG",  "SA",  "SB",  "STRM",  "STRN",  "VWM", "VWN"};
    const int v[] = {0,        1,      p->kwg, p->kwi, p->mdima, p->mdimc, p->mwg, p->ndimb,
                     p->ndimc, p->nwg, p->sa,  p->sb,  p->strm,  p->strn,  p->vwm, p->vwn};
    for (int i = 0; i < 16; i++) kiln__tune_set_value(t, K_XGEMM, kiln__tune_param_index(K_XGEMM, n[i]), (size_t)v[i]);
}

/*
 * The candidates, from what measuring POCL on x86-64 taught (kiln bench gemm, kiln tune
 * --eval; see src/device/tuning.c): without local memory (SA = SB = 0) the indirect kernel
 * is a plain register-tiled loop per work-item, which is what a CPU runs well; 8-float
 * vectors beat 16-float ones even with AVX-512 (LLVM prefers 256-bit vectors there and the
 * 16-wide tiles spill); the work-item tile (MWG/MDIMC x NWG/NDIMC floats) should fill but
 * not overflow the 16-32 vector registers. The direct kernel always stages tiles through
 * local memory with barriers, which POCL turns into per-work-item copies, so it is slower
 * per flop but skips the pad/transpose passes: it can still win on small products.
 * GPUs want other candidates: CLBlast's own tuner explores far more there.
 */
static const direct_p direct_list[] = {
    /* WGD MDIMCD NDIMCD MDIMAD NDIMBD KWID VWMD VWND PADA PADB; the first ones are --quick's */
    {64, 8, 4, 4, 8, 2, 8, 8, 0, 0}, {32, 4, 4, 4, 4, 2, 8, 8, 0, 0},    {64, 4, 8, 4, 8, 2, 8, 8, 0, 0},
    {64, 8, 8, 8, 8, 2, 8, 8, 0, 0}, {64, 8, 4, 8, 4, 2, 8, 8, 0, 0},    {32, 4, 4, 4, 4, 2, 4, 4, 0, 0},
    {64, 8, 4, 4, 8, 8, 8, 8, 0, 0}, {128, 16, 8, 8, 16, 2, 8, 8, 0, 0}, {64, 8, 4, 4, 8, 2, 8, 8, 1, 1},
};
#define NDIRECT_QUICK 3

static const xgemm_p xgemm_list[] = {
    /* MWG NWG KWG MDIMC NDIMC MDIMA NDIMB KWI VWM VWN STRM STRN SA SB; the first ones are --quick's */
    {64, 64, 32, 4, 8, 4, 8, 2, 8, 8, 0, 0, 0, 0},       {96, 64, 32, 4, 8, 4, 8, 2, 8, 8, 0, 0, 0, 0},
    {64, 64, 32, 8, 8, 8, 8, 2, 8, 8, 0, 0, 0, 0},       {128, 64, 32, 8, 8, 8, 8, 2, 8, 8, 0, 0, 0, 0},
    {64, 128, 32, 8, 8, 8, 8, 2, 8, 8, 0, 0, 0, 0},      {64, 64, 16, 8, 8, 8, 8, 2, 4, 4, 0, 0, 0, 0},
    {64, 64, 32, 4, 4, 4, 4, 2, 8, 8, 0, 0, 0, 0},       {64, 64, 16, 4, 8, 4, 8, 2, 8, 8, 0, 0, 0, 0},
    {64, 64, 32, 8, 8, 8, 8, 8, 8, 8, 0, 0, 0, 0},       {32, 32, 32, 4, 4, 4, 4, 2, 8, 8, 0, 0, 0, 0},
    {128, 128, 32, 16, 16, 16, 16, 2, 8, 8, 0, 0, 0, 0}, {64, 64, 32, 8, 8, 8, 8, 2, 8, 4, 0, 0, 0, 0},
    {64, 64, 32, 8, 8, 8, 8, 2, 8, 8, 0, 0, 1, 1},       {128, 128, 32, 8, 8, 8, 8, 2, 16, 16, 0, 0, 0, 0},
};
#define NXGEMM_QUICK 4

static int direct_candidates(direct_p *out, int cap, bool quick) {
    int n = 0, total = quick ? NDIRECT_QUICK : (int)(sizeof direct_list / sizeof direct_list[0]);
    for (int i = 0; i < total && n < cap; i++)
        if (direct_valid(&direct_list[i])) out[n++] = direct_list[i];
    return n;
}

static int xgemm_candidates(xgemm_p *out, int cap, bool quick) {
    int n = 0, total = quick ? NXGEMM_QUICK : (int)(sizeof xgemm_list / sizeof xgemm_list[0]);
    for (int i = 0; i < total && n < cap; i++)
        if (xgemm_valid(&xgemm_list[i])) out[n++] = xgemm_list[i];
    return n;
}

/* Products (m*n*k) the direct kernel is tried on: up to 256^3. */
#define DIRECT_MAX_MNK (256.0 * 256.0 * 256.0)

/* ---- measuring ------------------------------------------------------------------------- */

typedef struct tuner {
    kiln_ctx *ctx;
    bench_gemm_data data[NSHAPES];
    bool use[NSHAPES];
    int repeat;
    bool json, verbose, wall;
} tuner;

static bool is_direct(const bench_gemm_shape *s, size_t v);

/* Work-groups CLBlast launches for shape x under parameters p: C's tiles. */
static double work_groups(const bench_gemm_shape *x, const kiln__tune_set *p) {
    size_t thr = p->has[K_ROUTINE][0] ? p->v[K_ROUTINE][0] : 0;
    int iw = kiln__tune_param_index(K_DIRECT, "WGD"), im = kiln__tune_param_index(K_XGEMM, "MWG"),
        in = kiln__tune_param_index(K_XGEMM, "NWG");
    double tm = 64, tn = 64;
    if (is_direct(x, thr) && p->has[K_DIRECT][iw])
        tm = tn = (double)p->v[K_DIRECT][iw];
    else if (!is_direct(x, thr) && p->has[K_XGEMM][im])
        tm = (double)p->v[K_XGEMM][im], tn = (double)p->v[K_XGEMM][in];
    /* either operand order (kiln may hand CLBlast C^T): the count is the same */
    return ceil((double)x->m / tm) * ceil((double)x->n / tn);
}

static double time_shapes_own(tuner *t, const kiln__tune_set *p, const kiln__gemm_params *own, double *ms,
                              double *cost);

/* Times each shape under the parameters now in effect: ms[] the fastest wall-clock time,
 * cost[] (optional) the wall time the least CPU time of a call implies with no other load:
 * CPU time spread over the cores in rounds of whole work-groups. Wall-clock time is what
 * matters but swings 2x when other processes load the cores; CPU time barely moves, so the
 * search ranks candidates by cost (by wall time with --wall). Returns the weighted sum of
 * the ranking metric (INFINITY when a GEMM fails). */
static double own_work_groups(const bench_gemm_shape *x, const kiln__gemm_params *g);

static double time_shapes_p(tuner *t, const kiln__tune_set *p, double *ms, double *cost) {
    return time_shapes_own(t, p, NULL, ms, cost);
}

/* As time_shapes_p, for kiln's own kernels running with the set own (their work-groups). */
static double time_shapes_own(tuner *t, const kiln__tune_set *p, const kiln__gemm_params *own, double *ms,
                              double *cost) {
    double total = 0;
    int units = (int)kiln_ctx_device(t->ctx)->compute_units;
    if (units < 1) units = 1;
    for (int i = 0; i < NSHAPES; i++) {
        ms[i] = NAN;
        if (cost) cost[i] = NAN;
        if (!t->use[i]) continue;
        double best, cpu;
        if (bench_gemm_kiln_ms(t->ctx, &shapes[i].s, &t->data[i], t->repeat, &best, &cpu) < 0) {
            kiln_error_clear(t->ctx);
            return INFINITY;
        }
        double wg = own ? own_work_groups(&shapes[i].s, own) : work_groups(&shapes[i].s, p),
               c = cpu / wg * ceil(wg / units);
        if (c > best) c = best; /* never slower than it was seen to run */
        ms[i] = best;
        if (cost) cost[i] = c;
        total += (t->wall ? best : c) * shapes[i].weight;
    }
    return total;
}

/* Worst error ratio (<= 1 passes) on a few rows of every shape. */
static double check_shapes(tuner *t) {
    double worst = 0;
    for (int i = 0; i < NSHAPES; i++) {
        if (!t->use[i]) continue;
        double r = bench_gemm_check_bound(t->ctx, &shapes[i].s, &t->data[i], 3);
        if (!(r <= worst)) worst = r;
    }
    /* an odd shape with both transposes: partial tiles everywhere */
    bench_gemm_shape odd = {"odd", 67, 131, 97, true, true};
    bench_gemm_data d;
    char why[512];
    if (bench_gemm_data_new(t->ctx, &odd, 7, &d, why, sizeof why) == 0) {
        double r = bench_gemm_check_bound(t->ctx, &odd, &d, 67);
        if (!(r <= worst)) worst = r;
        bench_gemm_data_free(&d);
    } else {
        worst = INFINITY;
    }
    kiln_error_clear(t->ctx);
    return worst;
}

static bool apply(tuner *t, const kiln__tune_set *s) {
    if (kiln__tune_apply(t->ctx, s) != KILN_OK) {
        fprintf(stderr, "kiln tune: %s\n", kiln_error_message(t->ctx));
        kiln_error_clear(t->ctx);
        return false;
    }
    return true;
}

static void set_threshold(kiln__tune_set *s, size_t v) { kiln__tune_set_value(s, K_ROUTINE, 0, v); }

/* The path each shape takes under threshold v. */
static bool is_direct(const bench_gemm_shape *s, size_t v) {
    double mnk = (double)s->m * (double)s->n * (double)s->k;
    return mnk < (double)v * (double)v * (double)v;
}

static void print_shapes(const tuner *t, const char *label, const double *ms, const double *cost,
                         const kiln__tune_set *s) {
    size_t thr = s->has[K_ROUTINE][0] ? s->v[K_ROUTINE][0] : 0;
    for (int i = 0; i < NSHAPES; i++) {
        if (!t->use[i]) continue;
        const bench_gemm_shape *x = &shapes[i].s;
        double fl = 2.0 * (double)x->m * (double)x->n * (double)x->k;
        const char *path = !s->has[K_ROUTINE][0] ? "CLBlast's choice" : is_direct(x, thr) ? "direct" : "indirect";
        if (t->json)
            printf("{\"tune\": \"%s\", \"shape\": \"%s\", \"m\": %lld, \"n\": %lld, \"k\": %lld, \"trans_a\": %s, "
                   "\"trans_b\": %s, \"ms\": %.4f, \"gflops\": %.2f, \"cost_ms\": %.4f, \"cost_gflops\": %.2f, "
                   "\"path\": \"%s\"}\n",
                   label, x->name, (long long)x->m, (long long)x->n, (long long)x->k, x->ta ? "true" : "false",
                   x->tb ? "true" : "false", ms[i], fl / ms[i] / 1e6, cost[i], fl / cost[i] / 1e6, path);
        else
            printf("  %-7s %-14s %4lldx%5lldx%5lld %s%s %9.3f ms %6.1f GFLOP/s | cost %9.3f ms %6.1f GFLOP/s  %s\n",
                   label, x->name, (long long)x->m, (long long)x->n, (long long)x->k, x->ta ? "T" : "N",
                   x->tb ? "T" : "N", ms[i], fl / ms[i] / 1e6, cost[i], fl / cost[i] / 1e6, path);
    }
}

static double sum_w(const tuner *t, const double *v) {
    double s = 0;
    for (int i = 0; i < NSHAPES; i++)
        if (t->use[i]) s += v[i] * shapes[i].weight;
    return s;
}

/* ---- the search ------------------------------------------------------------------------ */

/* True when some comma-separated part of list occurs in name. */
static bool name_listed(const char *list, const char *name) {
    char buf[512];
    snprintf(buf, sizeof buf, "%s", list);
    char *save = NULL;
    for (char *p = strtok_r(buf, ",", &save); p; p = strtok_r(NULL, ",", &save))
        if (*p && strstr(name, p)) return true;
    return false;
}

static void usage(FILE *f) {
    fprintf(f, "usage: kiln tune [--quick] [--kiln-only] [--no-store] [--json] [--verbose] [--wall] [--repeat R]\n"
               "                 [--shapes A,B,..] [--eval 'Kernel NAME=v ...; ...']\n"
               "  searches CLBlast's GEMM parameters, then (on CPUs) kiln's own GEMM kernels' register blocks,\n"
               "  vector width and K unroll, on the GEMMs of the reference MLP and CNN (and 1024^3), checks the\n"
               "  results, and stores the best in the cache dir, where kiln_open applies it.\n"
               "  --quick     fewer candidates (about a third of the time; a handful for kiln's kernels)\n"
               "  --kiln-only only kiln's own kernels (the CLBlast search skipped)\n"
               "  --wall      rank by wall-clock time instead of CPU cost (only on an otherwise idle machine)\n"
               "  --shapes    only the shapes whose names contain one of these parts (mlp, cnn, conv2, ...)\n"
               "  --eval      time these parameters (merged over the current ones) against the current ones\n");
}

/* The command line of kiln tune. */
typedef struct tune_args {
    bool quick, store, json, verbose, wall, kiln_only;
    const char *eval, *only;
    int repeat;
} tune_args;

/* -1 when parsed, else the exit status (0 after --help, 2 for a bad argument). */
static int tune_parse_args(int argc, char **argv, tune_args *a) {
    *a = (tune_args){.store = true};
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            a->quick = true;
        else if (strcmp(argv[i], "--kiln-only") == 0)
            a->kiln_only = true;
        else if (strcmp(argv[i], "--no-store") == 0)
            a->store = false;
        else if (strcmp(argv[i], "--json") == 0)
            a->json = true;
        else if (strcmp(argv[i], "--verbose") == 0)
            a->verbose = true;
        else if (strcmp(argv[i], "--wall") == 0)
            a->wall = true;
        else if (strcmp(argv[i], "--eval") == 0 && i + 1 < argc)
            a->eval = argv[++i];
        else if (strcmp(argv[i], "--shapes") == 0 && i + 1 < argc)
            a->only = argv[++i];
        else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) {
            char *end;
            long r = strtol(argv[++i], &end, 10);
            if (*end || end == argv[i] || r < 1 || r > 1000) {
                fprintf(stderr, "kiln tune: --repeat %s: expected an integer in [1, 1000]\n", argv[i]);
                return 2;
            }
            a->repeat = (int)r;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            bool valued =
                strcmp(argv[i], "--eval") == 0 || strcmp(argv[i], "--shapes") == 0 || strcmp(argv[i], "--repeat") == 0;
            fprintf(stderr, valued ? "kiln tune: %s needs a value\n\n" : "kiln tune: unknown argument '%s'\n\n",
                    argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (a->repeat <= 0) a->repeat = a->quick ? 2 : 3;
    return -1;
}

/* The parameters kiln_open applied (the starting point and the baseline to beat) and
 * their timings. */
typedef struct tune_base {
    kiln__tune_set cur;
    const char *source;
    double total, ms[NSHAPES], cost[NSHAPES];
} tune_base;

/* --eval: times the given parameters (merged over the current ones) against the current
 * ones and checks them. The exit status. */
static int tune_eval(tuner *t, const tune_args *a, const tune_base *b) {
    char text[4096];
    snprintf(text, sizeof text, "%s", a->eval);
    for (char *p = text; *p; p++)
        if (*p == ';') *p = '\n';
    kiln__tune_set e, want = b->cur;
    char err[256];
    if (kiln__tune_parse(text, &e, NULL, err, sizeof err) != KILN_OK) {
        fprintf(stderr, "kiln tune --eval: %s\n", err);
        return 1;
    }
    kiln__tune_merge(&want, &e);
    if (!apply(t, &want)) return 1;
    double ms[NSHAPES], cost[NSHAPES];
    double total = time_shapes_p(t, &want, ms, cost);
    double worst = check_shapes(t);
    if (!a->json) printf("current parameters (%s):\n", b->source);
    print_shapes(t, "current", b->ms, b->cost, &b->cur);
    print_shapes(t, "eval", ms, cost, &want);
    if (a->json)
        printf("{\"tune\": \"eval-summary\", \"current_ms\": %.3f, \"eval_ms\": %.3f, \"current_cost_ms\": %.3f, "
               "\"eval_cost_ms\": %.3f, \"check\": %.3g}\n",
               sum_w(t, b->ms), sum_w(t, ms), sum_w(t, b->cost), sum_w(t, cost), worst);
    else
        printf("eval: %.2f ms weighted wall (current %.2f), cost %.2f ms (current %.2f): %.2fx; error check "
               "%.3g (<= 1 passes)\n",
               sum_w(t, ms), sum_w(t, b->ms), sum_w(t, cost), sum_w(t, b->cost), b->total / total, worst);
    return worst <= 1.0 ? 0 : 1;
}

/* The winners of the search phases: candidate indices (-1: none ran correctly) and each
 * shape's timing under them. */
typedef struct tune_search {
    int nd, nx;     /* candidates tried */
    int dwin, xwin; /* winning direct and xgemm candidate */
    double dm[NSHAPES], dc[NSHAPES], xm[NSHAPES], xc[NSHAPES];
} tune_search;

static direct_p dcand[512];
static xgemm_p xcand[512];

/* Phase 1: the smaller shapes through XgemmDirect. The direct kernel is CLBlast's answer
 * for small products; products above DIRECT_MAX_MNK only take time to measure there
 * (on POCL it ran them at a third of the indirect kernel's speed). */
static void tune_direct(tuner *t, const tune_args *a, kiln__tune_set *work, tune_search *r) {
    double dbest = INFINITY, ms[NSHAPES], cost[NSHAPES];
    r->dwin = -1;
    bool use_all[NSHAPES];
    memcpy(use_all, t->use, sizeof use_all);
    for (int i = 0; i < NSHAPES; i++)
        t->use[i] =
            use_all[i] && (double)shapes[i].s.m * (double)shapes[i].s.n * (double)shapes[i].s.k < DIRECT_MAX_MNK;
    set_threshold(work, 1u << 20);
    kiln__hooks_of(t->ctx)->sgemm_fixed = true; /* each kernel as the threshold forces it */
    for (int c = 0; c < r->nd; c++) {
        set_direct(work, &dcand[c]);
        if (!apply(t, work)) continue;
        double tot = time_shapes_p(t, work, ms, cost);
        if (a->verbose && !a->json) {
            const direct_p *p = &dcand[c];
            printf("  direct %3d/%d WGD=%d MDIMCD=%d NDIMCD=%d MDIMAD=%d NDIMBD=%d VWMD=%d VWND=%d KWID=%d: %.2f ms\n",
                   c + 1, r->nd, p->wgd, p->mdimcd, p->ndimcd, p->mdimad, p->ndimbd, p->vwmd, p->vwnd, p->kwid, tot);
            fflush(stdout);
        }
        if (tot < dbest && check_shapes(t) <= 1.0) {
            dbest = tot;
            r->dwin = c;
            memcpy(r->dm, ms, sizeof ms);
            memcpy(r->dc, cost, sizeof cost);
        }
    }
    memcpy(t->use, use_all, sizeof use_all);
    for (int i = 0; i < NSHAPES && r->dwin >= 0; i++)
        if ((double)shapes[i].s.m * (double)shapes[i].s.n * (double)shapes[i].s.k >= DIRECT_MAX_MNK)
            r->dm[i] = r->dc[i] = INFINITY;
}

/* Phase 2: every shape through the indirect Xgemm (with phase 1's direct winner set). */
static void tune_xgemm(tuner *t, const tune_args *a, kiln__tune_set *work, tune_search *r) {
    double xbest = INFINITY, ms[NSHAPES], cost[NSHAPES];
    r->xwin = -1;
    if (r->dwin >= 0) set_direct(work, &dcand[r->dwin]);
    set_threshold(work, 1);
    for (int c = 0; c < r->nx; c++) {
        set_xgemm(work, &xcand[c]);
        if (!apply(t, work)) continue;
        double tot = time_shapes_p(t, work, ms, cost);
        if (a->verbose && !a->json) {
            const xgemm_p *p = &xcand[c];
            printf("  xgemm %3d/%d MWG=%d NWG=%d KWG=%d MDIMC=%d NDIMC=%d VWM=%d VWN=%d SA=%d SB=%d: %.2f ms\n", c + 1,
                   r->nx, p->mwg, p->nwg, p->kwg, p->mdimc, p->ndimc, p->vwm, p->vwn, p->sa, p->sb, tot);
            fflush(stdout);
        }
        if (tot < xbest && check_shapes(t) <= 1.0) {
            xbest = tot;
            r->xwin = c;
            memcpy(r->xm, ms, sizeof ms);
            memcpy(r->xc, cost, sizeof cost);
        }
    }
    if (r->xwin >= 0) set_xgemm(work, &xcand[r->xwin]);
}

/* Phase 3: the threshold. CLBlast runs the direct kernel when m*n*k < thr^3: try a cut
 * just above each shape's size (and all-indirect, all-direct), keep the cheapest. */
static size_t tune_threshold(const tuner *t, const tune_args *a, const tune_search *r) {
    size_t thr_best = 1u << 20;
    double thr_cost = INFINITY;
    for (int c = -1; c <= NSHAPES; c++) {
        size_t thr = c < 0 ? 1 : c == NSHAPES ? (1u << 20) : 0;
        if (c >= 0 && c < NSHAPES) {
            if (!t->use[c]) continue;
            const bench_gemm_shape *x = &shapes[c].s;
            thr = (size_t)ceil(cbrt((double)x->m * (double)x->n * (double)x->k)) + 1;
        }
        double tot = 0;
        for (int i = 0; i < NSHAPES; i++) {
            if (!t->use[i]) continue;
            bool d = r->dwin >= 0 && (r->xwin < 0 || is_direct(&shapes[i].s, thr));
            tot += (a->wall ? (d ? r->dm[i] : r->xm[i]) : (d ? r->dc[i] : r->xc[i])) * shapes[i].weight;
        }
        if (tot < thr_cost) thr_cost = tot, thr_best = thr;
    }
    return thr_best;
}

/* Checks and times the result as a whole, then the starting point again right after it
 * (the load may have changed); keeps and stores the result only when it beats the start,
 * and reports. The exit status. */
static int tune_finish(tuner *t, const tune_args *a, tune_base *b, const kiln__tune_set *work, const tune_search *r,
                       size_t thr_best, double t_start) {
    double final = INFINITY, worst = INFINITY, ms[NSHAPES], cost[NSHAPES];
    for (int i = 0; i < NSHAPES; i++) ms[i] = cost[i] = NAN; /* the result did not run: nothing measured */
    if (apply(t, work)) {
        final = time_shapes_p(t, work, ms, cost);
        worst = check_shapes(t);
    }
    if (apply(t, &b->cur)) b->total = time_shapes_p(t, &b->cur, b->ms, b->cost);
    double base = b->total;
    bool better = worst <= 1.0 && final < base;
    apply(t, better ? work : &b->cur);
    double elapsed = (bench_now_ms() - t_start) / 1e3;
    char body[2048];
    kiln__tune_format(work, body, sizeof body);
    print_shapes(t, "before", b->ms, b->cost, &b->cur);
    print_shapes(t, "after", ms, cost, work);
    char path[1200] = "";
    if (better && a->store) {
        char comment[256];
        snprintf(comment, sizeof comment, "kiln tune%s: weighted GEMM cost %.1f ms -> %.1f ms over %d shapes, %.0f s",
                 a->quick ? " --quick" : "", base, final, NSHAPES, elapsed);
        if (kiln__tune_save(kiln_ctx_device(t->ctx), work, comment, path, sizeof path) != KILN_OK) {
            fprintf(stderr, "kiln tune: %s\n", kiln_last_error());
            return 1;
        }
    }
    if (a->json) {
        printf("{\"tune\": \"summary\", \"quick\": %s, \"candidates_direct\": %d, \"candidates_xgemm\": %d, "
               "\"before_ms\": %.3f, \"after_ms\": %.3f, \"before_cost_ms\": %.3f, \"after_cost_ms\": %.3f, "
               "\"threshold\": %zu, \"check\": %.3g, \"stored\": %s, \"seconds\": %.1f, \"parameters\": ",
               a->quick ? "true" : "false", r->nd, r->nx, sum_w(t, b->ms), sum_w(t, ms), sum_w(t, b->cost),
               sum_w(t, cost), thr_best, worst, better && a->store ? "true" : "false", elapsed);
        putchar('"');
        for (const char *p = body; *p; p++) fputs(*p == '\n' ? "; " : (char[]){*p, 0}, stdout);
        printf("\"}\n");
    } else {
        printf("parameters:\n%s", body);
        printf("weighted GEMM %s %.2f ms -> %.2f ms (%.2fx); wall %.2f -> %.2f ms; error check %.3g (<= 1 passes); "
               "%d + %d candidates\n",
               a->wall ? "wall time" : "cost", base, final, base / final, sum_w(t, b->ms), sum_w(t, ms), worst, r->nd,
               r->nx);
        if (better && a->store)
            printf("stored in %s\n", path);
        else if (!better)
            printf("not stored: no better than what kiln_open applied (%s)\n", b->source);
        printf("tuning took %.1f s\n", elapsed);
    }
    return 0;
}

/* The search: direct kernel, indirect kernel, the threshold between them, then the
 * result against the start. The exit status. */
static int tune_search_all(tuner *t, const tune_args *a, tune_base *b, double t_start) {
    if (!a->json) {
        printf("kiln tune%s on '%s': %d shapes, best of %d runs each; starting from %s (%.1f ms weighted %s)\n",
               a->quick ? " --quick" : "", kiln_ctx_device(t->ctx)->name, NSHAPES, a->repeat, b->source, b->total,
               a->wall ? "wall" : "cost");
        fflush(stdout);
    }
    tune_search r;
    r.nd = direct_candidates(dcand, 512, a->quick);
    r.nx = xgemm_candidates(xcand, 512, a->quick);
    kiln__tune_set work = b->cur;
    tune_direct(t, a, &work, &r);
    tune_xgemm(t, a, &work, &r);
    if (r.dwin < 0 && r.xwin < 0) {
        kiln__hooks_of(t->ctx)->sgemm_fixed = false;
        fprintf(stderr, "kiln tune: no candidate ran correctly; nothing stored\n");
        return 1;
    }
    size_t thr_best = tune_threshold(t, a, &r);
    set_threshold(&work, thr_best);
    kiln__hooks_of(t->ctx)->sgemm_fixed = false;
    return tune_finish(t, a, b, &work, &r, thr_best, t_start);
}

/* ---- kiln's own kernels ---------------------------------------------------------------- */

/* Work-groups kiln__gemm_run launches for shape x under set g (src/ops/gemm.c: gemm_nt in
 * 4 x 4 groups of blocks, gemm_nn in groups of 8 column blocks). */
static double own_work_groups(const bench_gemm_shape *x, const kiln__gemm_params *g) {
    double m = (double)x->m, n = (double)x->n;
    if (x->tb) return ceil(ceil(m / g->nt_rm) / 4) * ceil(ceil(n / g->nt_rn) / 4);
    return ceil(m / g->nn_rm) * ceil(ceil(n / (g->nn_nv * g->nn_vw)) / 8);
}

static void own_line(const kiln__gemm_params *g, char *buf, size_t cap) {
    kiln__tune_set one;
    memset(&one, 0, sizeof one);
    one.has_gemm = true;
    one.gemm = *g;
    kiln__tune_format(&one, buf, cap);
    size_t n = strlen(buf);
    if (n && buf[n - 1] == '\n') buf[n - 1] = '\0';
}

/* The weighted sum of the ranking metric (INFINITY when a GEMM failed). */
static double own_total(const tuner *t, const double *ms, const double *cost) {
    double s = t->wall ? sum_w(t, ms) : sum_w(t, cost);
    return isnan(s) ? INFINITY : s;
}

/* Runs kiln's kernels with set g (the context's tuned slot, as kiln_open would fill it). */
static void own_use(tuner *t, const kiln__gemm_params *g) {
    t->ctx->gemm_tuned = *g;
    t->ctx->has_gemm_tuned = true;
}

/* Times the candidates of one kernel on its shapes (use[]), each checked when it leads;
 * returns the winner's index (0: the table's set) and its weighted cost in *best. */
static int own_search(tuner *t, const tune_args *a, const char *label, const kiln__gemm_params *cand, int n,
                      double *best) {
    int win = -1;
    *best = INFINITY;
    for (int c = 0; c < n; c++) {
        double ms[NSHAPES], cost[NSHAPES];
        own_use(t, &cand[c]);
        double tot = time_shapes_own(t, NULL, &cand[c], ms, cost);
        bool lead = tot < *best, ok = lead && check_shapes(t) <= 1.0; /* checked when it leads */
        char line[256];
        own_line(&cand[c], line, sizeof line);
        if (a->json)
            printf("{\"tune\": \"%s\", \"candidate\": %d, \"of\": %d, \"parameters\": \"%s\", \"ms\": %.3f, "
                   "\"cost_ms\": %.3f, \"check\": \"%s\"}\n",
                   label, c + 1, n, line, sum_w(t, ms), sum_w(t, cost),
                   !lead ? "not run (slower)"
                   : ok  ? "passed"
                         : "failed");
        else
            printf("  %s %2d/%d %s: wall %.2f ms, cost %.2f ms%s\n", label, c + 1, n, line, sum_w(t, ms),
                   sum_w(t, cost), lead && !ok ? " (failed the check)" : "");
        fflush(stdout);
        if (ok) *best = tot, win = c;
    }
    return win;
}

/* Phase 4: kiln's own kernels. gemm_nt on the A B^T shapes, then gemm_nn on the A B and
 * A^T B ones with gemm_nt's winner; the result against the table's set on all of them,
 * checked; stored as the file's KilnGemm line only when it beats the table's set (a
 * KilnGemm line stored before is dropped otherwise). The exit status. */
static int tune_own(tuner *t, const tune_args *a, double t_start) {
    kiln_ctx *ctx = t->ctx;
    const char *env = getenv("KILN_GEMM_PARAMS");
    if (env && *env) {
        printf("kiln tune: KILN_GEMM_PARAMS=%s fixes kiln's GEMM kernel set: its search skipped\n", env);
        return 0;
    }
    if (kiln_ctx_device(ctx)->type != KILN_DEVICE_CPU) {
        if (!a->json) printf("kiln's own GEMM kernels serve CPU devices only: their search skipped\n");
        return 0;
    }
    const char *isa = NULL;
    const kiln__gemm_params *table = &kiln__gemm_sets[kiln__gemm_choose(kiln_ctx_device(ctx), NULL, 0, &isa)];
    int regs, width;
    kiln__gemm_regfile(table->name, &regs, &width);
    kiln__hooks_of(ctx)->gemm_own = 1;
    bool use_all[NSHAPES], has_nt = false, has_nn = false;
    memcpy(use_all, t->use, sizeof use_all);
    static kiln__gemm_params cand[256];
    /* gemm_nt: A B^T */
    kiln__gemm_params win = *table;
    double nt_best = INFINITY, nn_best = INFINITY;
    for (int i = 0; i < NSHAPES; i++) has_nt |= (t->use[i] = use_all[i] && shapes[i].s.tb && !shapes[i].s.ta);
    if (!a->json)
        printf("kiln's GEMM kernels on '%s' (table set %s, %d registers of %d floats):\n", kiln_ctx_device(ctx)->name,
               table->name, regs, width);
    if (has_nt) {
        int n = kiln__gemm_candidates(table, true, a->quick, regs, width, cand, 256);
        int w = own_search(t, a, "kiln-nt", cand, n, &nt_best);
        if (w >= 0) win = cand[w];
    }
    /* gemm_nn: A B and A^T B, with gemm_nt's winner */
    for (int i = 0; i < NSHAPES; i++) has_nn |= (t->use[i] = use_all[i] && !shapes[i].s.tb);
    if (has_nn) {
        kiln__gemm_params base = *table;
        base.nt_rm = win.nt_rm, base.nt_rn = win.nt_rn, base.nt_vw = win.nt_vw, base.nt_ku = win.nt_ku;
        int n = kiln__gemm_candidates(&base, false, a->quick, regs, width, cand, 256);
        int w = own_search(t, a, "kiln-nn", cand, n, &nn_best);
        win = w >= 0 ? cand[w] : base;
    }
    /* the winner against the table's set on every shape, alternately in two rounds, each
     * shape's fastest kept: other load moves one round's figures by tens of percent */
    for (int i = 0; i < NSHAPES; i++) t->use[i] = use_all[i] && !(shapes[i].s.ta && shapes[i].s.tb);
    win.name = "tuned";
    double ms[NSHAPES], cost[NSHAPES], tms[NSHAPES], tcost[NSHAPES];
    own_use(t, &win);
    double worst = check_shapes(t);
    for (int round = 0; round < 2; round++)
        for (int w = 0; w < 2; w++) {
            const kiln__gemm_params *g = w ? table : &win;
            double *bm = w ? tms : ms, *bc = w ? tcost : cost, m1[NSHAPES], c1[NSHAPES];
            own_use(t, g);
            time_shapes_own(t, NULL, g, m1, c1);
            for (int i = 0; i < NSHAPES; i++) {
                bm[i] = round == 0 || !(bm[i] <= m1[i]) ? m1[i] : bm[i];
                bc[i] = round == 0 || !(bc[i] <= c1[i]) ? c1[i] : bc[i];
            }
        }
    double final = own_total(t, ms, cost), base = own_total(t, tms, tcost);
    for (int w = 0; w < 2 && (a->json || a->verbose); w++)
        for (int i = 0; i < NSHAPES; i++) {
            if (!t->use[i]) continue;
            const bench_gemm_shape *x = &shapes[i].s;
            double fl = 2.0 * (double)x->m * (double)x->n * (double)x->k, m = w ? tms[i] : ms[i],
                   c = w ? tcost[i] : cost[i];
            if (a->json)
                printf("{\"tune\": \"%s\", \"shape\": \"%s\", \"m\": %lld, \"n\": %lld, \"k\": %lld, "
                       "\"trans_a\": %s, \"trans_b\": %s, \"ms\": %.4f, \"gflops\": %.2f, \"cost_ms\": %.4f}\n",
                       w ? "kiln-table" : "kiln-winner", x->name, (long long)x->m, (long long)x->n, (long long)x->k,
                       x->ta ? "true" : "false", x->tb ? "true" : "false", m, fl / m / 1e6, c);
            else
                printf("  %-11s %-14s %4lldx%5lldx%5lld %s%s %9.3f ms %6.1f GFLOP/s | cost %9.3f ms\n",
                       w ? "kiln-table" : "kiln-winner", x->name, (long long)x->m, (long long)x->n, (long long)x->k,
                       x->ta ? "T" : "N", x->tb ? "T" : "N", m, fl / m / 1e6, c);
        }
    memcpy(t->use, use_all, sizeof use_all);
    kiln__hooks_of(ctx)->gemm_own = -1;
    ctx->has_gemm_tuned = false;
    kiln__gemm_params tw = win;
    tw.name = table->name;
    bool same = memcmp(&tw, table, sizeof tw) == 0;
    /* a 2% margin: a set that only ties the table's is measurement noise */
    bool better = !same && worst <= 1.0 && final < 0.98 * base;
    /* into the stored file, keeping what the CLBlast search (or an earlier run) put there */
    char path[1200] = "", line[256];
    own_line(&win, line, sizeof line);
    bool stored = false;
    if (a->store) {
        kiln__tune_set file;
        char err[512];
        memset(&file, 0, sizeof file);
        bool exists = kiln__tune_path(kiln_ctx_device(ctx), path, sizeof path) == KILN_OK &&
                      kiln__tune_load(kiln_ctx_device(ctx), path, &file, err, sizeof err) == KILN_OK;
        if (!exists) memset(&file, 0, sizeof file);
        bool had = file.has_gemm;
        file.has_gemm = better;
        file.gemm = win;
        if (better || had) {
            char comment[256];
            snprintf(comment, sizeof comment,
                     "kiln tune%s: kiln's GEMM kernels weighted cost %.1f ms (table set %s) -> %.1f ms, %.0f s",
                     a->quick ? " --quick" : "", base, table->name, better ? final : base,
                     (bench_now_ms() - t_start) / 1e3);
            if (kiln__tune_save(kiln_ctx_device(ctx), &file, comment, path, sizeof path) != KILN_OK) {
                fprintf(stderr, "kiln tune: %s\n", kiln_last_error());
                return 1;
            }
            stored = better;
        }
    }
    if (a->json)
        printf("{\"tune\": \"kiln-summary\", \"table\": \"%s\", \"table_cost_ms\": %.3f, \"table_ms\": %.3f, "
               "\"winner\": \"%s\", \"winner_cost_ms\": %.3f, \"winner_ms\": %.3f, \"check\": %.3g, \"stored\": %s}\n",
               table->name, base, sum_w(t, tms), line, final, sum_w(t, ms), worst, stored ? "true" : "false");
    else {
        printf("kiln's GEMM kernels: table set %s %.2f ms -> %s %.2f ms weighted %s; error check %.3g (<= 1 "
               "passes)\n",
               table->name, base, line, final, a->wall ? "wall time" : "cost", worst);
        if (stored)
            printf("stored in %s\n", path);
        else
            printf("KilnGemm not stored: %s\n", !better ? "not 2% better than the table's set" : "--no-store");
    }
    return worst <= 1.0 ? 0 : 1;
}

static int cmd_tune(int argc, char **argv) {
    tune_args a;
    int parsed = tune_parse_args(argc, argv, &a);
    if (parsed >= 0) return parsed;
    double t_start = bench_now_ms();
    setvbuf(stdout, NULL, _IOLBF, 0); /* each result line as it comes, also into a file or pipe */
    tuner t = {0};
    t.repeat = a.repeat;
    t.json = a.json;
    t.verbose = a.verbose;
    t.wall = a.wall;
    if (kiln_open(&t.ctx, NULL) != KILN_OK) {
        fprintf(stderr, "kiln tune: %s\n", kiln_last_error());
        return 1;
    }
    int rc = 1;
    /* Every product measured here goes to CLBlast: on CPUs kiln's own kernels
     * (src/ops/gemm.c) would otherwise take all but op(A)^T op(B)^T, whatever the
     * parameters. */
    kiln__hooks_of(t.ctx)->gemm_own = -1;
    if (!a.json && kiln_ctx_device(t.ctx)->type == KILN_DEVICE_CPU)
        printf("note: on CPUs kiln's own GEMM kernels compute every product but A^T B^T; the CLBlast parameters "
               "tuned here serve the rest\n");
    for (int i = 0; i < NSHAPES; i++) {
        t.use[i] = !a.only || name_listed(a.only, shapes[i].s.name);
        char why[512];
        if (t.use[i] && bench_gemm_data_new(t.ctx, &shapes[i].s, 100 + (uint64_t)i, &t.data[i], why, sizeof why) != 0) {
            fprintf(stderr, "kiln tune: %s: %s\n", shapes[i].s.name, why);
            goto out;
        }
    }
    tune_base b;
    b.source = kiln__tune_open(t.ctx, &b.cur);
    memset(b.ms, 0, sizeof b.ms), memset(b.cost, 0, sizeof b.cost);
    b.total = a.kiln_only && !a.eval ? 0 : time_shapes_p(&t, &b.cur, b.ms, b.cost); /* CLBlast's start */
    if (a.eval)
        rc = tune_eval(&t, &a, &b);
    else {
        rc = a.kiln_only ? 0 : tune_search_all(&t, &a, &b, t_start);
        int own = tune_own(&t, &a, t_start);
        if (rc == 0) rc = own;
    }
out:
    for (int i = 0; i < NSHAPES; i++) bench_gemm_data_free(&t.data[i]);
    kiln_close(t.ctx);
    return rc;
}

int kiln_cmd_tune(int argc, char **argv) { return cmd_tune(argc, argv); }

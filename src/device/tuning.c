/* src/device/tuning.c - CLBlast kernel parameters per device: a built-in table for devices
 * measured by kiln's developers, and the parameters `kiln tune` stored in the cache dir,
 * applied with CLBlastOverrideParameters when a context opens.
 *
 * Why: CLBlast ships tuned parameters for many GPUs but none for POCL on x86-64 CPUs, where
 * its generic defaults leave SGEMM far below what the same CPU does with OpenBLAS. CLBlast
 * compiles its GEMM program with the parameters current at the first call (its program
 * cache is keyed by the values), so they have to be set before the first GEMM: kiln_open
 * does it.
 *
 * Precedence, per parameter: the stored file ($KILN_CACHE_DIR/kiln-tune-<hash>.txt, keyed by
 * device name, driver version and platform) over the built-in table over CLBlast's own
 * database. KILN_TUNE=off applies nothing, KILN_TUNE=builtin ignores the stored file,
 * KILN_TUNE_FILE=path reads that file instead of the stored one (for experiments),
 * KILN_TUNE=auto applies as the default does and lets src/ops/gemm.c store a KilnGemm
 * line it searched for at the first product when the file has none. A kernel
 * set is only overridden when every one of its parameters is known (CLBlast rejects partial
 * sets); anything wrong is logged and skipped, never fatal: CLBlast's defaults still work.
 *
 * The overrides are process-wide per cl_device_id (CLBlast's database cache): every context
 * on that device shares them.
 *
 * The same file holds, on a "KilnGemm" line, the parameter set `kiln tune` found for kiln's
 * own GEMM kernels (cl_kernels/gemm.cl); kiln__tune_open puts it on the context, where
 * src/ops/gemm.c prefers it to its table. A bad KilnGemm line only drops that line.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <stdatomic.h>
#include <unistd.h>

#include "device_internal.h" /* before clblast_c.h: it picks the OpenCL target version */

#include <clblast_c.h>

/* The kernel sets of CLBlast's GEMM routines and their parameters, in CLBlast 1.5's
 * database order (any order works: they are passed by name). */
static const struct {
    const char *kernel;
    int n;
    const char *names[KILN__TUNE_MAXP];
} sets[KILN__TUNE_KERNELS] = {
    {"Xgemm",
     16,
     {"GEMMK", "KREG", "KWG", "KWI", "MDIMA", "MDIMC", "MWG", "NDIMB", "NDIMC", "NWG", "SA", "SB", "STRM", "STRN",
      "VWM", "VWN"}},
    {"XgemmDirect", 10, {"KWID", "MDIMAD", "MDIMCD", "NDIMBD", "NDIMCD", "PADA", "PADB", "VWMD", "VWND", "WGD"}},
    {"GemmRoutine", 1, {"XGEMM_MIN_INDIRECT_SIZE"}},
    {"Copy", 4, {"COPY_DIMX", "COPY_DIMY", "COPY_VW", "COPY_WPT"}},
    {"Pad", 4, {"PAD_DIMX", "PAD_DIMY", "PAD_WPTX", "PAD_WPTY"}},
    {"Transpose", 4, {"TRA_DIM", "TRA_PAD", "TRA_SHUFFLE", "TRA_WPT"}},
    {"Padtranspose", 3, {"PADTRA_PAD", "PADTRA_TILE", "PADTRA_WPT"}},
};

const char *kiln__tune_kernel(int k) { return k >= 0 && k < KILN__TUNE_KERNELS ? sets[k].kernel : NULL; }
int kiln__tune_nparams(int k) { return k >= 0 && k < KILN__TUNE_KERNELS ? sets[k].n : 0; }
const char *kiln__tune_param(int k, int p) { return p >= 0 && p < kiln__tune_nparams(k) ? sets[k].names[p] : NULL; }

int kiln__tune_kernel_index(const char *name) {
    for (int k = 0; k < KILN__TUNE_KERNELS; k++)
        if (strcmp(sets[k].kernel, name) == 0) return k;
    return -1;
}

int kiln__tune_param_index(int k, const char *name) {
    for (int p = 0; p < kiln__tune_nparams(k); p++)
        if (strcmp(sets[k].names[p], name) == 0) return p;
    return -1;
}

void kiln__tune_set_value(kiln__tune_set *s, int k, int p, size_t v) {
    if (k < 0 || k >= KILN__TUNE_KERNELS || p < 0 || p >= sets[k].n) return;
    s->v[k][p] = v;
    s->has[k][p] = true;
}

bool kiln__tune_complete(const kiln__tune_set *s, int k) {
    for (int p = 0; p < kiln__tune_nparams(k); p++)
        if (!s->has[k][p]) return false;
    return kiln__tune_nparams(k) > 0;
}

bool kiln__tune_any(const kiln__tune_set *s, int k) {
    for (int p = 0; p < kiln__tune_nparams(k); p++)
        if (s->has[k][p]) return true;
    return false;
}

void kiln__tune_merge(kiln__tune_set *dst, const kiln__tune_set *src) {
    for (int k = 0; k < KILN__TUNE_KERNELS; k++)
        for (int p = 0; p < sets[k].n; p++)
            if (src->has[k][p]) kiln__tune_set_value(dst, k, p, src->v[k][p]);
    if (src->has_gemm) {
        dst->has_gemm = true;
        dst->gemm = src->gemm;
    }
}

/* ---- kiln's own GEMM kernels: the KilnGemm line ---------------------------------------- */

/* The line's parameter names are gemm.cl's build options. */
static const char *const gemm_names[8] = {"NT_RM", "NT_RN", "NT_VW", "NT_KU", "NN_RM", "NN_NV", "NN_VW", "NN_KU"};

static int *gemm_field(kiln__gemm_params *p, int i) {
    int *f[8] = {&p->nt_rm, &p->nt_rn, &p->nt_vw, &p->nt_ku, &p->nn_rm, &p->nn_nv, &p->nn_vw, &p->nn_ku};
    return f[i];
}

bool kiln__gemm_params_check(const kiln__gemm_params *p, char *why, size_t cap) {
    kiln__gemm_params q = *p;
    for (int i = 0; i < 8; i++) {
        int v = *gemm_field(&q, i);
        bool vw = i == 2 || i == 6, ku = i == 3 || i == 7;
        bool ok = vw ? v == 4 || v == 8 || v == 16 : v >= 1 && v <= (ku ? KILN__GEMM_MAX_KU : KILN__GEMM_MAX_BLOCK);
        if (!ok) {
            if (vw)
                snprintf(why, cap, "%s=%d: the vector width must be 4, 8 or 16", gemm_names[i], v);
            else
                snprintf(why, cap, "%s=%d: must be in 1..%d", gemm_names[i], v,
                         ku ? KILN__GEMM_MAX_KU : KILN__GEMM_MAX_BLOCK);
            return false;
        }
    }
    return true;
}

/* The parameters after "KilnGemm" (tok_save's rest of the line): every one of the eight,
 * once each, in range. False with the reason in why. */
static bool parse_gemm(char **tok_save, kiln__gemm_params *out, char *why, size_t cap) {
    bool seen[8] = {false};
    *out = (kiln__gemm_params){.name = "tuned"};
    for (char *kv = strtok_r(NULL, " \t", tok_save); kv; kv = strtok_r(NULL, " \t", tok_save)) {
        char *eq = strchr(kv, '=');
        int i = -1;
        if (eq) {
            *eq = '\0';
            for (int j = 0; j < 8; j++)
                if (strcmp(kv, gemm_names[j]) == 0) i = j;
        }
        char *end = NULL;
        errno = 0;
        long v = eq ? strtol(eq + 1, &end, 10) : 0;
        if (i < 0 || end == eq + 1 || *end || errno || v < INT_MIN || v > INT_MAX || seen[i]) {
            snprintf(why, cap, "bad parameter '%s%s%s'%s", kv, eq ? "=" : "", eq ? eq + 1 : "",
                     i >= 0 && seen[i] ? " (given twice)" : "");
            return false;
        }
        seen[i] = true;
        *gemm_field(out, i) = (int)v;
    }
    for (int i = 0; i < 8; i++)
        if (!seen[i]) {
            snprintf(why, cap, "%s missing: every one of %s %s %s %s %s %s %s %s is needed", gemm_names[i],
                     gemm_names[0], gemm_names[1], gemm_names[2], gemm_names[3], gemm_names[4], gemm_names[5],
                     gemm_names[6], gemm_names[7]);
            return false;
        }
    return kiln__gemm_params_check(out, why, cap);
}

/* ---- the built-in table ---------------------------------------------------------------
 * One row per kernel set as "Kernel NAME=value ...", the stored file's syntax. Chosen by
 * measurement with `kiln bench gemm` on the GEMM shapes of the reference MLP and CNN and
 * 1024^3 (see tools/tune.c for the shapes); the reasoning is beside each row. */

/* POCL's pthread device on x86-64 (AVX2 / AVX-512). POCL runs a work-group as loops over
 * its work-items on one core: local memory is only a copy and every barrier splits those
 * loops (private tiles then live in memory), so what pays is a plain register tile per
 * work-item built from explicit float vectors and no local memory (SA = SB = 0).
 * Chosen with kiln tune --eval by CPU time per GEMM, which moves far less with other load
 * than wall time (README.md, "Speed", has the figures):
 *   - Xgemm: 8-float vectors beat 16 (LLVM prefers 256-bit vectors for AVX-512 targets and
 *     16-wide tiles spill): VWM=VWN=8. A 16 x 8 work-item tile (MWG/MDIMC = 64/4,
 *     NWG/NDIMC = 64/8) beat 8 x 8 on 1024^3 and conv2's forward GEMM; in 4 x 8 work-groups
 *     it beat the same tile in 8 x 8 groups over all shapes (smaller groups, better
 *     balance); 8 x 16 lost overall, 24 x 8 won on long-K products and lost on the MLP's
 *     (kiln tune tries it). KWG=32 over 16.
 *   - GemmRoutine: by size, the indirect kernel beat the direct one on every shape of the
 *     reference MLP, down to the smallest (64 x 10 x 256), so the threshold is 1 (always
 *     indirect) and kiln__sgemm sends the products the indirect kernel pads badly (the
 *     CNN's first layer) to the direct one call by call.
 *   - XgemmDirect: 32 x 32 tiles, 8 x 8 per work-item, 8-float vectors, no local-memory
 *     padding: faster than 64 x 64 tiles over the small shapes, and the smaller tile pads
 *     conv1's K = 9 and N = 32 less.
 *   - Copy, Pad, Transpose, Padtranspose (the indirect path's operand preparation): wider
 *     work per work-item and vector copies, which cut the cost of the long-K weight
 *     gradient and MLP shapes. */
static const char *const pocl_x86_cpu =
    "Xgemm GEMMK=0 KREG=1 KWG=32 KWI=2 MDIMA=4 MDIMC=4 MWG=64 NDIMB=8 NDIMC=8 NWG=64 SA=0 SB=0 STRM=0 STRN=0 "
    "VWM=8 VWN=8\n"
    "GemmRoutine XGEMM_MIN_INDIRECT_SIZE=1\n"
    "XgemmDirect KWID=2 MDIMAD=4 MDIMCD=4 NDIMBD=4 NDIMCD=4 PADA=0 PADB=0 VWMD=8 VWND=8 WGD=32\n"
    "Copy COPY_DIMX=32 COPY_DIMY=8 COPY_VW=8 COPY_WPT=4\n"
    "Pad PAD_DIMX=32 PAD_DIMY=8 PAD_WPTX=4 PAD_WPTY=2\n"
    "Transpose TRA_DIM=16 TRA_PAD=0 TRA_SHUFFLE=0 TRA_WPT=8\n"
    "Padtranspose PADTRA_PAD=0 PADTRA_TILE=16 PADTRA_WPT=2\n";

bool kiln__tune_builtin(const kiln_device_info *info, kiln__tune_set *out) {
    memset(out, 0, sizeof *out);
    if (!info) return false;
    bool pocl = strstr(info->platform_name, "Portable Computing Language") != NULL;
    if (!pocl || info->type != KILN_DEVICE_CPU) return false;
    /* POCL names its CPU device after the LLVM target: "pthread-skylake-avx512-...",
     * "cpu-haswell-...", "pthread-x86-64-v3-..."; other architectures (aarch64, riscv)
     * were not measured. */
    static const char *const x86[] = {"x86-64",      "x86_64",     "skylake",     "haswell",        "broadwell",
                                      "znver",       "zen",        "sandybridge", "ivybridge",      "icelake",
                                      "cascadelake", "cooperlake", "tigerlake",   "sapphirerapids", "alderlake",
                                      "rocketlake",  "avx",        "EPYC",        "Intel",          "AMD"};
    bool is_x86 = false;
    for (size_t i = 0; i < sizeof x86 / sizeof x86[0] && !is_x86; i++)
        is_x86 = strstr(info->name, x86[i]) != NULL || strstr(info->vendor, x86[i]) != NULL;
    if (!is_x86) return false;
    char err[256];
    return kiln__tune_parse(pocl_x86_cpu, out, NULL, err, sizeof err) == KILN_OK;
}

/* ---- the text format ------------------------------------------------------------------
 *
 *     # comment
 *     device: <CL_DEVICE_NAME>           (stored files: must match the device)
 *     driver: <CL_DRIVER_VERSION>
 *     Xgemm MWG=64 NWG=64 ...            (any subset of a kernel set's parameters)
 */

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t' || *s == '\r') s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n')) s[--n] = '\0';
    return s;
}

kiln_status kiln__tune_parse(const char *text, kiln__tune_set *out, const kiln_device_info *expect, char *err,
                             size_t cap) {
    memset(out, 0, sizeof *out);
    err[0] = '\0';
    char *copy = strdup(text ? text : "");
    if (!copy) {
        snprintf(err, cap, "out of host memory");
        return KILN_ERR_HOST_OUT_OF_MEMORY;
    }
    kiln_status st = KILN_OK;
    int lineno = 0;
    char *save = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line && st == KILN_OK; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        line = trim(line);
        if (!*line || *line == '#') continue;
        if (strncmp(line, "device:", 7) == 0 || strncmp(line, "driver:", 7) == 0) {
            const char *val = trim(line + 7);
            const char *want = !expect ? NULL : line[1] == 'e' ? expect->name : expect->driver_version;
            if (want && strcmp(val, want) != 0) {
                snprintf(err, cap, "line %d: written for %s '%s', this is '%s'", lineno,
                         line[1] == 'e' ? "device" : "driver", val, want);
                st = KILN_ERR_INVALID_ARGUMENT;
            }
            continue;
        }
        char *tok_save = NULL;
        char *kname = strtok_r(line, " \t", &tok_save);
        if (strcmp(kname, "KilnGemm") == 0) {
            /* dropped alone when bad: the CLBlast sets still apply, kiln's kernels keep the
             * table's set */
            char why[160];
            out->has_gemm = parse_gemm(&tok_save, &out->gemm, why, sizeof why);
            if (!out->has_gemm) snprintf(out->gemm_err, sizeof out->gemm_err, "line %d: KilnGemm: %s", lineno, why);
            continue;
        }
        int k = kiln__tune_kernel_index(kname);
        if (k < 0) {
            snprintf(err, cap, "line %d: unknown CLBlast kernel set '%s'", lineno, kname);
            st = KILN_ERR_INVALID_ARGUMENT;
            break;
        }
        for (char *kv = strtok_r(NULL, " \t", &tok_save); kv; kv = strtok_r(NULL, " \t", &tok_save)) {
            char *eq = strchr(kv, '=');
            char *end = NULL;
            if (eq) {
                *eq = '\0';
                errno = 0;
            }
            unsigned long long v = eq ? strtoull(eq + 1, &end, 10) : 0;
            int p = eq ? kiln__tune_param_index(k, kv) : -1;
            if (!eq || p < 0 || end == eq + 1 || *end || errno || eq[1] == '-') {
                snprintf(err, cap, "line %d: bad parameter '%s%s%s' for %s", lineno, kv, eq ? "=" : "",
                         eq ? eq + 1 : "", sets[k].kernel);
                st = KILN_ERR_INVALID_ARGUMENT;
                break;
            }
            kiln__tune_set_value(out, k, p, (size_t)v);
        }
    }
    free(copy);
    return st;
}

char *kiln__tune_format(const kiln__tune_set *s, char *buf, size_t cap) {
    size_t used = 0;
    buf[0] = '\0';
    for (int k = 0; k < KILN__TUNE_KERNELS; k++) {
        if (!kiln__tune_any(s, k)) continue;
        int w = snprintf(buf + used, cap - used, "%s", sets[k].kernel);
        if (w < 0 || (size_t)w >= cap - used) break;
        used += (size_t)w;
        for (int p = 0; p < sets[k].n; p++) {
            if (!s->has[k][p]) continue;
            w = snprintf(buf + used, cap - used, " %s=%zu", sets[k].names[p], s->v[k][p]);
            if (w < 0 || (size_t)w >= cap - used) return buf;
            used += (size_t)w;
        }
        w = snprintf(buf + used, cap - used, "\n");
        if (w < 0 || (size_t)w >= cap - used) break;
        used += (size_t)w;
    }
    if (s->has_gemm) {
        kiln__gemm_params g = s->gemm;
        size_t before = used;
        bool fits = true;
        for (int i = 0; i <= 9 && fits; i++) {
            int w = i == 0   ? snprintf(buf + used, cap - used, "KilnGemm")
                    : i == 9 ? snprintf(buf + used, cap - used, "\n")
                             : snprintf(buf + used, cap - used, " %s=%d", gemm_names[i - 1], *gemm_field(&g, i - 1));
            fits = w >= 0 && (size_t)w < cap - used;
            if (fits) used += (size_t)w;
        }
        if (!fits) buf[before] = '\0'; /* no partial line */
    }
    return buf;
}

/* ---- the stored file ------------------------------------------------------------------ */

static uint64_t fnv1a(uint64_t h, const char *s) {
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    h ^= 0xff; /* separator */
    return h * 1099511628211ull;
}

kiln_status kiln__tune_path(const kiln_device_info *info, char *buf, size_t cap) {
    buf[0] = '\0';
    char dir[1024];
    kiln_status s = kiln_cache_dir(dir, sizeof dir);
    if (s != KILN_OK) return s;
    if (!dir[0]) return KILN_ERR_UNSUPPORTED; /* KILN_CACHE=off */
    uint64_t h = 14695981039346656037ull;
    h = fnv1a(h, info->name);
    h = fnv1a(h, info->driver_version);
    h = fnv1a(h, info->platform_name);
    int n = snprintf(buf, cap, "%s/kiln-tune-%016llx.txt", dir, (unsigned long long)h);
    if (n < 0 || (size_t)n >= cap) {
        buf[0] = '\0';
        return KILN_ERR_INVALID_ARGUMENT;
    }
    return KILN_OK;
}

static char *read_all(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            if (cap > (1u << 20)) break; /* a parameter file is a few hundred bytes */
            char *g = realloc(buf, cap);
            if (!g) break;
            buf = g;
        }
        size_t got = fread(buf + len, 1, cap - len - 1, f);
        len += got;
        if (got == 0) break;
    }
    fclose(f);
    if (buf) buf[len] = '\0';
    return buf;
}

kiln_status kiln__tune_load(const kiln_device_info *info, const char *path, kiln__tune_set *out, char *err,
                            size_t cap) {
    memset(out, 0, sizeof *out);
    err[0] = '\0';
    char *text = read_all(path);
    if (!text) {
        snprintf(err, cap, "cannot read %s: %s", path, strerror(errno));
        return KILN_ERR_IO;
    }
    kiln_status s = kiln__tune_parse(text, out, info, err, cap);
    free(text);
    return s;
}

kiln_status kiln__tune_save(const kiln_device_info *info, const kiln__tune_set *s, const char *comment, char *path,
                            size_t cap) {
    kiln_status st = kiln__tune_path(info, path, cap);
    if (st != KILN_OK) return kiln__fail_global(st, "kiln tune: no cache directory to store parameters in");
    char dir[1024];
    kiln_cache_dir(dir, sizeof dir);
    /* mkdir -p of the cache dir, as the program cache does */
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        mkdir(dir, 0755);
        *p = '/';
    }
    mkdir(dir, 0755);
    /* a name of its own for every write, also between threads of one process (contexts
     * opened on several threads may store a KILN_TUNE=auto result at once): each rename
     * puts a whole file in place */
    static _Atomic unsigned long writes;
    char tmp[1200];
    snprintf(tmp, sizeof tmp, "%s.%ld.%lu.tmp", path, (long)getpid(), atomic_fetch_add(&writes, 1));
    FILE *f = fopen(tmp, "w");
    if (!f) return kiln__fail_global(KILN_ERR_IO, "kiln tune: cannot write %s: %s", tmp, strerror(errno));
    char body[4096];
    fprintf(f, "# kiln: CLBlast single-precision parameters and kiln's GEMM kernel set (KilnGemm) for this "
               "device, applied by kiln_open\n");
    if (comment && *comment) fprintf(f, "# %s\n", comment);
    fprintf(f, "device: %s\ndriver: %s\n%s", info->name, info->driver_version, kiln__tune_format(s, body, sizeof body));
    bool ok = fflush(f) == 0;
    ok &= fclose(f) == 0;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return kiln__fail_global(KILN_ERR_IO, "kiln tune: cannot write %s: %s", path, strerror(errno));
    }
    return KILN_OK;
}

/* ---- applying ------------------------------------------------------------------------- */

/* What the GEMM router (src/ops/sgemm.c) needs of the parameters last applied: their
 * tiles, guarded by route_mu with the overrides made under it. */
static pthread_mutex_t route_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    bool known;
    cl_device_id device;
    size_t mwg, nwg, kwg, wgd, thr;
} route = {false, NULL, 0, 0, 0, 0, 0};
/* The operand order kiln__sgemm hands CLBlast (column-major where kiln set GEMMK 0, see
 * src/ops/sgemm.c); set by every kiln__tune_open, to the same value for the same device. */
static _Atomic bool gemm_colmajor;

static size_t value(const kiln__tune_set *s, int k, const char *name) {
    return s->v[k][kiln__tune_param_index(k, name)];
}

static void route_record(kiln_ctx *ctx, const kiln__tune_set *s) {
    if (!kiln__tune_complete(s, 0) || !kiln__tune_complete(s, 1) || !kiln__tune_complete(s, 2)) return;
    pthread_mutex_lock(&route_mu);
    route.known = value(s, 0, "GEMMK") == 0;
    route.device = ctx->device;
    route.mwg = value(s, 0, "MWG");
    route.nwg = value(s, 0, "NWG");
    route.kwg = value(s, 0, "KWG") * value(s, 0, "KREG");
    route.wgd = value(s, 1, "WGD");
    route.thr = value(s, 2, "XGEMM_MIN_INDIRECT_SIZE");
    pthread_mutex_unlock(&route_mu);
}

void kiln__tune_lock(void) { pthread_mutex_lock(&route_mu); }
void kiln__tune_unlock(void) { pthread_mutex_unlock(&route_mu); }

void kiln__tune_route(const kiln_ctx *ctx, kiln__gemm_route *out) {
    *out = (kiln__gemm_route){.colmajor = gemm_colmajor};
    if (!route.known || route.device != ctx->device) return;
    out->known = true;
    out->mwg = route.mwg;
    out->nwg = route.nwg;
    out->kwg = route.kwg;
    out->wgd = route.wgd;
    out->thr = route.thr;
}

void kiln__tune_threshold(kiln_ctx *ctx, size_t v) {
    const char *name[1] = {"XGEMM_MIN_INDIRECT_SIZE"};
    size_t val[1] = {v};
    CLBlastOverrideParameters(ctx->device, "GemmRoutine", CLBlastPrecisionSingle, 1, name, val);
}

kiln_status kiln__tune_apply(kiln_ctx *ctx, const kiln__tune_set *s) {
    route_record(ctx, s);
    for (int k = 0; k < KILN__TUNE_KERNELS; k++) {
        if (!kiln__tune_any(s, k)) continue;
        if (!kiln__tune_complete(s, k))
            return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                              "CLBlast parameters for %s are incomplete: every one of its %d parameters is needed",
                              sets[k].kernel, sets[k].n);
        CLBlastStatusCode r = CLBlastOverrideParameters(ctx->device, sets[k].kernel, CLBlastPrecisionSingle,
                                                        (size_t)sets[k].n, (const char **)sets[k].names, s->v[k]);
        if (r != CLBlastSuccess)
            return kiln__fail(ctx, KILN_ERR_CLBLAST, "CLBlastOverrideParameters(%s) failed on '%s': status %d",
                              sets[k].kernel, ctx->info.name, (int)r);
    }
    return KILN_OK;
}

const char *kiln__tune_mode(void) {
    const char *m = getenv("KILN_TUNE");
    if (!m || !*m) return "on";
    if (strcmp(m, "off") == 0 || strcmp(m, "0") == 0) return "off";
    if (strcmp(m, "builtin") == 0) return "builtin";
    if (strcmp(m, "auto") == 0) return "auto";
    return "on";
}

/* Atomic: contexts may be opened on several threads at once (tests/test_threads.c). */
static const char *_Atomic last_source = "CLBlast defaults";
const char *kiln__tune_source(void) { return last_source; }

static const char *tune_open(kiln_ctx *ctx, kiln__tune_set *applied);
const char *kiln__tune_open(kiln_ctx *ctx, kiln__tune_set *applied) {
    kiln__tune_set got;
    const char *s = tune_open(ctx, &got);
    if (applied) *applied = got;
    ctx->has_gemm_tuned = got.has_gemm;
    if (got.has_gemm) ctx->gemm_tuned = got.gemm;
    int gk = kiln__tune_param_index(0, "GEMMK");
    bool col = got.has[0][gk] && got.v[0][gk] == 0;
    const char *e = getenv("KILN_GEMM_LAYOUT");
    if (e && strcmp(e, "row") == 0) col = false;
    if (e && strcmp(e, "col") == 0) col = true;
    gemm_colmajor = col;
    last_source = s;
    return s;
}

static const char *tune_open(kiln_ctx *ctx, kiln__tune_set *applied) {
    kiln__tune_set want, stored;
    memset(&want, 0, sizeof want);
    if (applied) memset(applied, 0, sizeof *applied);
    const char *mode = kiln__tune_mode();
    if (strcmp(mode, "off") == 0) return "off (KILN_TUNE=off)";
    const char *source = "CLBlast defaults";
    if (kiln__tune_builtin(&ctx->info, &want)) source = "built-in table";
    char path[1200], err[512];
    const char *file = getenv("KILN_TUNE_FILE");
    bool have_path = file && *file;
    if (have_path)
        snprintf(path, sizeof path, "%s", file);
    else if (strcmp(mode, "builtin") != 0)
        have_path = kiln__tune_path(&ctx->info, path, sizeof path) == KILN_OK && access(path, R_OK) == 0;
    if (have_path) {
        if (kiln__tune_load(&ctx->info, path, &stored, err, sizeof err) == KILN_OK) {
            if (stored.gemm_err[0])
                kiln__log(1, "kiln's GEMM kernel set in %s ignored (the table's set is used): %s", path,
                          stored.gemm_err);
            kiln__tune_merge(&want, &stored);
            source = file && *file ? "KILN_TUNE_FILE" : "stored by kiln tune";
        } else {
            kiln__log(1, "CLBlast parameters in %s ignored: %s", path, err);
        }
    }
    /* Kernel sets that stay incomplete (a stored partial set on a device without a built-in
     * row) are left to CLBlast. */
    for (int k = 0; k < KILN__TUNE_KERNELS; k++) {
        if (kiln__tune_any(&want, k) && !kiln__tune_complete(&want, k)) {
            kiln__log(1, "CLBlast parameters for %s incomplete: left to CLBlast", sets[k].kernel);
            for (int p = 0; p < sets[k].n; p++) want.has[k][p] = false;
        }
    }
    bool any = false;
    for (int k = 0; k < KILN__TUNE_KERNELS; k++) any |= kiln__tune_any(&want, k);
    if (want.has_gemm && applied) { /* kiln's own kernels' set: no CLBlast call */
        applied->has_gemm = true;
        applied->gemm = want.gemm;
    }
    if (!any) return want.has_gemm ? source : "CLBlast defaults";
    /* Never fatal: a failed override leaves CLBlast's own parameters. The error is not kept
     * on the context, which has to start clean. */
    kiln_status s = kiln__tune_apply(ctx, &want);
    if (s != KILN_OK) {
        kiln__log(1, "%s", kiln_error_message(ctx));
        kiln_error_clear(ctx);
        return want.has_gemm ? "CLBlast defaults (override failed), kiln's GEMM set stored by kiln tune"
                             : "CLBlast defaults (override failed)";
    }
    if (applied) *applied = want;
    char body[2048];
    kiln__log(2, "CLBlast parameters (%s):\n%s", source, kiln__tune_format(&want, body, sizeof body));
    return source;
}

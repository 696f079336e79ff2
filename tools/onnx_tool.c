/* tools/onnx_tool.c - `kiln onnx info|run|test`: inspect an ONNX model, run it on NumPy
 * .npy inputs, and run ONNX's backend node tests (model.onnx + test_data_set_N/input_K.pb,
 * output_K.pb) with ONNX's tolerances, reporting per operator. */
#define _XOPEN_SOURCE 700
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <kiln/kiln.h>
#include <kiln/onnx.h>
#include <onnx.pb-c.h>

#include "onnx_tool.h"

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void onnx_usage(FILE *f) {
    fprintf(f, "usage: kiln onnx info MODEL\n"
               "       kiln onnx run MODEL --input NAME=FILE.npy ... [--output-dir DIR]\n"
               "       kiln onnx test DIR [--filter SUBSTRING] [--verbose]\n"
               "\n"
               "  info   inputs, outputs, opsets, the operator histogram and which operators kiln lacks\n"
               "  run    runs MODEL on .npy inputs (float32; int32/int64/bool become I32) and writes each\n"
               "         output as DIR/NAME.npy (default: the current directory)\n"
               "  test   runs every ONNX backend test directory under DIR (model.onnx, test_data_set_*)\n"
               "         with ONNX's tolerances (rtol 1e-3, atol 1e-7) and prints passed / failed /\n"
               "         unsupported per operator; exit 1 when any test failed\n");
}

/* ---- model file (protobuf) ------------------------------------------------------------- */

static unsigned char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    unsigned char *buf = malloc(cap);
    while (buf) {
        size_t k = fread(buf + n, 1, cap - n, f);
        n += k;
        if (n < cap) break;
        unsigned char *nb = realloc(buf, cap * 2);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb, cap *= 2;
    }
    fclose(f);
    *len = n;
    return buf;
}

static const char *type_name(int t) {
    static const char *names[] = {"undefined", "float",  "uint8",     "int8",       "uint16",  "int16",
                                  "int32",     "int64",  "string",    "bool",       "float16", "double",
                                  "uint32",    "uint64", "complex64", "complex128", "bfloat16"};
    return t >= 0 && t < (int)(sizeof names / sizeof *names) ? names[t] : "?";
}

static void print_value_info(const Onnx__ValueInfoProto *v) {
    printf("  %-24s ", v->name ? v->name : "");
    if (!v->type || v->type->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE) {
        printf("(not a tensor)\n");
        return;
    }
    const Onnx__TypeProto__Tensor *t = v->type->tensor_type;
    printf("%-8s ", type_name(t->elem_type));
    if (!t->shape) {
        printf("(rank unknown)\n");
        return;
    }
    printf("[");
    for (size_t d = 0; d < t->shape->n_dim; d++) {
        const Onnx__TensorShapeProto__Dimension *dim = t->shape->dim[d];
        if (d) printf(", ");
        if (dim->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE)
            printf("%lld", (long long)dim->dim_value);
        else if (dim->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM)
            printf("%s", dim->dim_param);
        else
            printf("?");
    }
    printf("]\n");
}

typedef struct opcount {
    char name[64];
    int count;
} opcount;

static int cmd_info(int argc, char **argv) {
    if (argc != 1) {
        if (argc > 1)
            fprintf(stderr, "kiln onnx info: unknown argument '%s'\n\n", argv[1]);
        else
            fprintf(stderr, "kiln onnx info: expected MODEL\n\n");
        onnx_usage(stderr);
        return 2;
    }
    size_t len;
    unsigned char *buf = read_all(argv[0], &len);
    if (!buf) {
        fprintf(stderr, "kiln onnx info: cannot read %s: %s\n", argv[0], strerror(errno));
        return 1;
    }
    Onnx__ModelProto *m = onnx__model_proto__unpack(NULL, len, buf);
    free(buf);
    if (!m || !m->graph) {
        fprintf(stderr, "kiln onnx info: %s is not an ONNX model (malformed protobuf)\n", argv[0]);
        if (m) onnx__model_proto__free_unpacked(m, NULL);
        return 1;
    }
    const Onnx__GraphProto *g = m->graph;
    printf("model: %s\nir_version: %lld  producer: %s %s\nopsets:", argv[0], (long long)m->ir_version,
           m->producer_name ? m->producer_name : "", m->producer_version ? m->producer_version : "");
    for (size_t i = 0; i < m->n_opset_import; i++)
        printf(" %s:%lld",
               m->opset_import[i]->domain && m->opset_import[i]->domain[0] ? m->opset_import[i]->domain : "ai.onnx",
               (long long)m->opset_import[i]->version);
    printf("  (kiln runs ai.onnx %d..%d)\n", KILN_ONNX_OPSET_MIN, KILN_ONNX_OPSET_MAX);
    printf("inputs:\n");
    for (size_t i = 0; i < g->n_input; i++) {
        bool init = false;
        for (size_t j = 0; j < g->n_initializer; j++)
            init = init || (g->initializer[j]->name && g->input[i]->name &&
                            !strcmp(g->initializer[j]->name, g->input[i]->name));
        if (!init) print_value_info(g->input[i]);
    }
    printf("outputs:\n");
    for (size_t i = 0; i < g->n_output; i++) print_value_info(g->output[i]);
    int64_t params = 0;
    for (size_t i = 0; i < g->n_initializer; i++) {
        int64_t c = 1;
        for (size_t d = 0; d < g->initializer[i]->n_dims; d++) c *= g->initializer[i]->dims[d];
        params += c;
    }
    printf("initializers: %zu (%lld values)\nnodes: %zu\n", g->n_initializer, (long long)params, g->n_node);
    opcount *ops = calloc(g->n_node + 1, sizeof *ops);
    int nops = 0;
    for (size_t i = 0; ops && i < g->n_node; i++) {
        char name[64];
        const char *dom = g->node[i]->domain;
        snprintf(name, sizeof name, "%s%s%s", dom && dom[0] ? dom : "", dom && dom[0] ? "." : "",
                 g->node[i]->op_type ? g->node[i]->op_type : "?");
        int k = 0;
        while (k < nops && strcmp(ops[k].name, name)) k++;
        if (k == nops) snprintf(ops[nops++].name, sizeof ops[k].name, "%s", name);
        ops[k].count++;
    }
    printf("operators:\n");
    int unsupported = 0;
    for (int k = 0; k < nops; k++) {
        bool ok = !strchr(ops[k].name, '.') && kiln_onnx_op_supported(ops[k].name);
        unsupported += !ok;
        printf("  %-28s %5d%s\n", ops[k].name, ops[k].count, ok ? "" : "  UNSUPPORTED");
    }
    free(ops);
    onnx__model_proto__free_unpacked(m, NULL);
    /* the full check: load it */
    kiln_ctx *ctx;
    if (kiln_open(&ctx, NULL) != KILN_OK) {
        printf("load: not tried (no OpenCL device: %s)\n", kiln_last_error());
        return unsupported ? 1 : 0;
    }
    kiln_onnx_model *model;
    int rc = 0;
    if (kiln_onnx_load(ctx, argv[0], &model) == KILN_OK) {
        printf("load: ok (%d inputs, %d outputs)\n", kiln_onnx_num_inputs(model), kiln_onnx_num_outputs(model));
        /* what shape inference made of the outputs */
        for (int i = 0; i < kiln_onnx_num_outputs(model); i++) {
            kiln_onnx_value_info vi;
            if (kiln_onnx_output_info(model, i, &vi) != KILN_OK) continue;
            printf("  output %-21s %-8s ", vi.name, kiln_dtype_name(vi.dtype));
            if (vi.ndim < 0) printf("(rank unknown)");
            for (int d = 0; d < vi.ndim; d++) {
                if (vi.shape[d] >= 0)
                    printf("%s%lld", d ? ", " : "[", (long long)vi.shape[d]);
                else
                    printf("%s%s", d ? ", " : "[", vi.dim_names[d] ? vi.dim_names[d] : "?");
            }
            printf("%s\n", vi.ndim > 0 ? "]" : vi.ndim == 0 ? "[]" : "");
        }
        kiln_onnx_free(model);
    } else {
        printf("load: FAILED: %s\n", kiln_error_message(ctx));
        rc = 1;
    }
    kiln_close(ctx);
    return rc;
}

/* ---- .npy ------------------------------------------------------------------------------- */

/* Reads a version 1/2/3 .npy of dtype <f4, <i4, <i8, |b1, |u1 (C order) into a tensor. */
static kiln_tensor *npy_read(kiln_ctx *ctx, const char *path, char *err, size_t cap) {
    size_t len;
    unsigned char *buf = read_all(path, &len);
    if (!buf) return snprintf(err, cap, "cannot read %s: %s", path, strerror(errno)), NULL;
    kiln_tensor *t = NULL;
    if (len < 10 || memcmp(buf, "\x93NUMPY", 6) != 0) {
        snprintf(err, cap, "%s: not a .npy file", path);
        goto out;
    }
    size_t hl, ho;
    if (buf[6] == 1)
        hl = buf[8] | (size_t)buf[9] << 8, ho = 10;
    else
        hl = len >= 12 ? (buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 | (size_t)buf[11] << 24) : len, ho = 12;
    if (hl > len - ho) {
        snprintf(err, cap, "%s: truncated header", path);
        goto out;
    }
    char *h = malloc(hl + 1);
    if (!h) goto out;
    memcpy(h, buf + ho, hl);
    h[hl] = 0;
    char *descr = strstr(h, "'descr':"), *fo = strstr(h, "'fortran_order':"), *sh = strstr(h, "'shape':");
    if (!descr || !fo || !sh) {
        snprintf(err, cap, "%s: header lacks descr/fortran_order/shape", path);
        free(h);
        goto out;
    }
    char d[8] = {0};
    char *q = strchr(descr + 8, '\'');
    if (q) snprintf(d, sizeof d, "%.3s", q + 1);
    if (strstr(fo, "True") && strstr(fo, "True") < strchr(fo, ',')) {
        snprintf(err, cap, "%s: Fortran order is not supported", path);
        free(h);
        goto out;
    }
    int64_t shape[KILN_MAX_DIMS];
    int nd = 0;
    char *p = strchr(sh, '(');
    while (p && *p && *p != ')') {
        p++;
        while (*p == ' ') p++;
        if (*p == ')') break;
        if (nd == KILN_MAX_DIMS) {
            snprintf(err, cap, "%s: more than %d dims", path, KILN_MAX_DIMS);
            free(h);
            goto out;
        }
        shape[nd++] = strtoll(p, &p, 10);
        while (*p == ' ') p++;
        if (*p != ',' && *p != ')') break;
    }
    free(h);
    int64_t cnt = 1;
    for (int i = 0; i < nd; i++) {
        if (shape[i] < 0 || shape[i] > (1LL << 31)) {
            snprintf(err, cap, "%s: bad shape", path);
            goto out;
        }
        cnt *= shape[i];
        if (cnt > (1LL << 31)) {
            snprintf(err, cap, "%s: too many elements", path);
            goto out;
        }
    }
    size_t es = !strcmp(d, "<f4") || !strcmp(d, "<i4")     ? 4
                : !strcmp(d, "<i8")                        ? 8
                : (!strcmp(d, "|b1") || !strcmp(d, "|u1")) ? 1
                                                           : 0;
    if (!es) {
        snprintf(err, cap, "%s: dtype '%s' is not supported (float32, int32, int64, bool, uint8)", path, d);
        goto out;
    }
    const unsigned char *data = buf + ho + hl;
    if ((size_t)cnt * es != len - ho - hl) {
        snprintf(err, cap, "%s: %zu data bytes for %lld elements of %zu bytes", path, len - ho - hl, (long long)cnt,
                 es);
        goto out;
    }
    if (!strcmp(d, "<f4")) {
        t = kiln_from_host(ctx, data, KILN_F32, nd, shape);
    } else {
        int32_t *v = malloc((size_t)(cnt ? cnt : 1) * 4);
        for (int64_t i = 0; v && i < cnt; i++) {
            if (es == 8) {
                int64_t x;
                memcpy(&x, data + i * 8, 8);
                v[i] = (int32_t)x;
            } else if (es == 4) {
                memcpy(&v[i], data + i * 4, 4);
            } else {
                v[i] = data[i];
            }
        }
        if (v) t = kiln_from_host(ctx, v, KILN_I32, nd, shape);
        free(v);
    }
    if (!t) snprintf(err, cap, "%s: %s", path, kiln_error_message(ctx));
out:
    free(buf);
    return t;
}

static int npy_write(kiln_tensor *t, const char *path) {
    int nd = kiln_tensor_ndim(t);
    const int64_t *sh = kiln_tensor_shape(t);
    char hdr[256];
    int k = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                     kiln_tensor_dtype(t) == KILN_F32 ? "<f4" : "<i4");
    for (int d = 0; d < nd; d++)
        k += snprintf(hdr + k, sizeof hdr - (size_t)k, "%lld,%s", (long long)sh[d], d + 1 < nd ? " " : "");
    k += snprintf(hdr + k, sizeof hdr - (size_t)k, "), }");
    int total = 10 + k + 1;
    int pad = (64 - total % 64) % 64;
    size_t bytes = (size_t)kiln_tensor_numel(t) * 4;
    void *data = malloc(bytes ? bytes : 1);
    if (!data || kiln_to_host(t, data, bytes) != KILN_OK) {
        free(data);
        return -1;
    }
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(data);
        return -1;
    }
    unsigned hl = (unsigned)(k + pad + 1);
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fputc((int)(hl & 0xff), f), fputc((int)(hl >> 8), f);
    fwrite(hdr, 1, (size_t)k, f);
    for (int i = 0; i < pad; i++) fputc(' ', f);
    fputc('\n', f);
    fwrite(data, 1, bytes, f);
    free(data);
    return fclose(f) == 0 ? 0 : -1;
}

static int cmd_run(int argc, char **argv) {
    if (argc < 1) {
        fprintf(stderr, "kiln onnx run: expected MODEL\n\n");
        onnx_usage(stderr);
        return 2;
    }
    const char *model_path = argv[0], *outdir = ".";
    const char *names[64], *files[64];
    int ni = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--input") && i + 1 < argc) {
            char *eq = strchr(argv[++i], '=');
            if (!eq || ni == 64) {
                fprintf(stderr, "kiln onnx run: --input wants NAME=FILE.npy, not '%s'\n", argv[i]);
                return 2;
            }
            *eq = 0;
            names[ni] = argv[i], files[ni++] = eq + 1;
        } else if (!strcmp(argv[i], "--output-dir") && i + 1 < argc) {
            outdir = argv[++i];
        } else {
            fprintf(stderr, "kiln onnx run: unknown argument '%s'\n\n", argv[i]);
            onnx_usage(stderr);
            return 2;
        }
    }
    kiln_ctx *ctx;
    if (kiln_open(&ctx, NULL) != KILN_OK) {
        fprintf(stderr, "kiln onnx run: %s\n", kiln_last_error());
        return 1;
    }
    kiln_onnx_model *m;
    int rc = 1;
    if (kiln_onnx_load(ctx, model_path, &m) != KILN_OK) {
        fprintf(stderr, "kiln onnx run: %s\n", kiln_error_message(ctx));
        kiln_close(ctx);
        return 1;
    }
    int nin = kiln_onnx_num_inputs(m), nout = kiln_onnx_num_outputs(m);
    kiln_tensor *in[64] = {0}, *out[64] = {0};
    char err[512];
    if (nin > 64 || nout > 64) {
        fprintf(stderr, "kiln onnx run: more than 64 inputs or outputs\n");
        goto done;
    }
    for (int i = 0; i < nin; i++) {
        kiln_onnx_value_info info;
        kiln_onnx_input_info(m, i, &info);
        int k = 0;
        while (k < ni && strcmp(names[k], info.name)) k++;
        if (k == ni) {
            fprintf(stderr, "kiln onnx run: no --input for the model's input '%s'\n", info.name);
            goto done;
        }
        in[i] = npy_read(ctx, files[k], err, sizeof err);
        if (!in[i]) {
            fprintf(stderr, "kiln onnx run: %s\n", err);
            goto done;
        }
    }
    for (int k = 0; k < ni; k++) {
        bool found = false;
        for (int i = 0; i < nin; i++) {
            kiln_onnx_value_info info;
            kiln_onnx_input_info(m, i, &info);
            found = found || !strcmp(info.name, names[k]);
        }
        if (!found) {
            fprintf(stderr, "kiln onnx run: the model has no input '%s'\n", names[k]);
            goto done;
        }
    }
    double t0 = now_ms();
    if (kiln_onnx_run(m, nin, in, nout, out) != KILN_OK) {
        fprintf(stderr, "kiln onnx run: %s\n", kiln_error_message(ctx));
        goto done;
    }
    for (int i = 0; i < nout; i++) {
        kiln_onnx_value_info info;
        kiln_onnx_output_info(m, i, &info);
        char path[4096], shape[160];
        /* output names may hold '/' (torch's "/fc/Gemm_output_0"): replace it in the file name */
        char safe[1024];
        snprintf(safe, sizeof safe, "%s", info.name);
        for (char *c = safe; *c; c++)
            if (*c == '/' || *c == '\\') *c = '_';
        snprintf(path, sizeof path, "%s/%s.npy", outdir, safe);
        if (npy_write(out[i], path) != 0) {
            fprintf(stderr, "kiln onnx run: cannot write %s\n", path);
            goto done;
        }
        printf("%s: %s %s -> %s\n", info.name, kiln_dtype_name(kiln_tensor_dtype(out[i])),
               kiln_tensor_shape_str(out[i], shape, sizeof shape), path);
    }
    printf("ran in %.1f ms\n", now_ms() - t0);
    rc = 0;
done:
    kiln_onnx_free(m);
    kiln_close(ctx);
    return rc;
}

/* ---- conformance ------------------------------------------------------------------------ */

typedef struct opstat {
    char name[64];
    int passed, failed, unsupported;
} opstat;

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static bool is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* The operator a node test exercises: the single node's type; for a multi-node graph (an
 * "_expanded" function body) the operator whose name the test's name starts with. */
static void test_op(const char *model_path, const char *test_name, char *op, size_t cap) {
    size_t len;
    unsigned char *buf = read_all(model_path, &len);
    snprintf(op, cap, "(unreadable)");
    if (!buf) return;
    Onnx__ModelProto *m = onnx__model_proto__unpack(NULL, len, buf);
    free(buf);
    if (!m || !m->graph) {
        if (m) onnx__model_proto__free_unpacked(m, NULL);
        return;
    }
    const Onnx__GraphProto *g = m->graph;
    if (g->n_node == 1) {
        snprintf(op, cap, "%s", g->node[0]->op_type);
    } else {
        char norm[256];
        size_t k = 0;
        const char *s = strncmp(test_name, "test_", 5) == 0 ? test_name + 5 : test_name;
        for (; *s && k + 1 < sizeof norm; s++)
            if (*s != '_') norm[k++] = (char)(*s >= 'A' && *s <= 'Z' ? *s + 32 : *s);
        norm[k] = 0;
        size_t best = 0;
        snprintf(op, cap, "(multi-node)");
        for (size_t i = 0; i < g->n_node; i++) {
            const char *t = g->node[i]->op_type;
            size_t tl = strlen(t), j = 0;
            while (j < tl && j < k && (char)(t[j] >= 'A' && t[j] <= 'Z' ? t[j] + 32 : t[j]) == norm[j]) j++;
            if (j == tl && tl > best) best = tl, snprintf(op, cap, "%.63s", t);
        }
    }
    onnx__model_proto__free_unpacked(m, NULL);
}

typedef enum verdict { V_PASS, V_FAIL, V_UNSUP } verdict;

static verdict compare(kiln_tensor *got, kiln_tensor *want, char *why, size_t cap) {
    char a[160], b[160];
    if (kiln_tensor_dtype(got) != kiln_tensor_dtype(want) || kiln_tensor_ndim(got) != kiln_tensor_ndim(want) ||
        memcmp(kiln_tensor_shape(got), kiln_tensor_shape(want), sizeof(int64_t) * (size_t)kiln_tensor_ndim(got))) {
        snprintf(why, cap, "got %s %s, expected %s %s", kiln_dtype_name(kiln_tensor_dtype(got)),
                 kiln_tensor_shape_str(got, a, sizeof a), kiln_dtype_name(kiln_tensor_dtype(want)),
                 kiln_tensor_shape_str(want, b, sizeof b));
        return V_FAIL;
    }
    int64_t n = kiln_tensor_numel(got);
    void *g = malloc((size_t)(n ? n : 1) * 4), *w = malloc((size_t)(n ? n : 1) * 4);
    verdict v = V_PASS;
    if (!g || !w || kiln_to_host(got, g, (size_t)n * 4) || kiln_to_host(want, w, (size_t)n * 4)) {
        snprintf(why, cap, "cannot read the results back");
        v = V_FAIL;
    }
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; v == V_PASS && i < n; i++) {
        bool ok;
        if (kiln_tensor_dtype(got) == KILN_F32) {
            float x = ((float *)g)[i], y = ((float *)w)[i];
            /* numpy.testing.assert_allclose(rtol=1e-3, atol=1e-7), NaN equal to NaN */
            ok = (isnan(x) && isnan(y)) || x == y || fabs((double)x - y) <= 1e-7 + 1e-3 * fabs((double)y);
        } else {
            ok = ((int32_t *)g)[i] == ((int32_t *)w)[i];
        }
        if (!ok && bad++ == 0) first = i;
    }
    if (bad) {
        if (kiln_tensor_dtype(got) == KILN_F32)
            snprintf(why, cap, "%lld of %lld values differ; first at %lld: %.9g, expected %.9g", (long long)bad,
                     (long long)n, (long long)first, ((float *)g)[first], ((float *)w)[first]);
        else
            snprintf(why, cap, "%lld of %lld values differ; first at %lld: %d, expected %d", (long long)bad,
                     (long long)n, (long long)first, ((int32_t *)g)[first], ((int32_t *)w)[first]);
        v = V_FAIL;
    }
    free(g), free(w);
    return v;
}

/* Runs one test directory; why says what failed or is unsupported. */
static verdict run_test(kiln_ctx *ctx, const char *dir, char *why, size_t cap) {
    char path[4096];
    snprintf(path, sizeof path, "%.4000s/model.onnx", dir);
    kiln_onnx_model *m;
    kiln_error_clear(ctx);
    if (kiln_onnx_load(ctx, path, &m) != KILN_OK) {
        snprintf(why, cap, "%s", kiln_error_message(ctx));
        return kiln_error_status(ctx) == KILN_ERR_UNSUPPORTED ? V_UNSUP : V_FAIL;
    }
    verdict v = V_PASS;
    int nin = kiln_onnx_num_inputs(m), nout = kiln_onnx_num_outputs(m);
    for (int set = 0; v == V_PASS; set++) {
        char sd[4096];
        snprintf(sd, sizeof sd, "%.4000s/test_data_set_%d", dir, set);
        if (!is_dir(sd)) {
            if (set == 0) snprintf(why, cap, "no test_data_set_0"), v = V_FAIL;
            break;
        }
        kiln_scope_begin(ctx);
        kiln_tensor *in[64] = {0}, *out[64] = {0}, *want[64] = {0};
        int nfiles = 0;
        while (nfiles < 64) {
            snprintf(path, sizeof path, "%.4050s/input_%d.pb", sd, nfiles);
            if (!exists(path)) break;
            nfiles++;
        }
        if (nin > 64 || nout > 64 || nfiles != nin) {
            snprintf(why, cap, "the model has %d inputs, the data set %d files", nin, nfiles);
            v = V_FAIL;
        }
        for (int i = 0; v == V_PASS && i < nin; i++) {
            snprintf(path, sizeof path, "%.4050s/input_%d.pb", sd, i);
            if (kiln_onnx_load_tensor(ctx, path, &in[i]) != KILN_OK) {
                snprintf(why, cap, "%s", kiln_error_message(ctx));
                v = kiln_error_status(ctx) == KILN_ERR_UNSUPPORTED ? V_UNSUP : V_FAIL;
            }
        }
        for (int i = 0; v == V_PASS && i < nout; i++) {
            snprintf(path, sizeof path, "%.4050s/output_%d.pb", sd, i);
            if (kiln_onnx_load_tensor(ctx, path, &want[i]) != KILN_OK) {
                snprintf(why, cap, "%s", kiln_error_message(ctx));
                v = kiln_error_status(ctx) == KILN_ERR_UNSUPPORTED ? V_UNSUP : V_FAIL;
            }
        }
        if (v == V_PASS && kiln_onnx_run(m, nin, in, nout, out) != KILN_OK) {
            snprintf(why, cap, "run: %s", kiln_error_message(ctx));
            v = kiln_error_status(ctx) == KILN_ERR_UNSUPPORTED ? V_UNSUP : V_FAIL;
        }
        for (int i = 0; v == V_PASS && i < nout; i++) {
            char w[400];
            if (compare(out[i], want[i], w, sizeof w) != V_PASS) {
                kiln_onnx_value_info info;
                kiln_onnx_output_info(m, i, &info);
                snprintf(why, cap, "output '%s' (data set %d): %s", info.name, set, w);
                v = V_FAIL;
            }
        }
        kiln_scope_end(ctx);
        kiln_error_clear(ctx);
    }
    kiln_onnx_free(m);
    return v;
}

static int cmd_test(int argc, char **argv) {
    if (argc < 1) {
        fprintf(stderr, "kiln onnx test: expected DIR\n\n");
        onnx_usage(stderr);
        return 2;
    }
    const char *root = argv[0], *filter = NULL;
    bool verbose = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--filter") && i + 1 < argc)
            filter = argv[++i];
        else if (!strcmp(argv[i], "--verbose"))
            verbose = true;
        else {
            fprintf(stderr, "kiln onnx test: unknown argument '%s'\n\n", argv[i]);
            onnx_usage(stderr);
            return 2;
        }
    }
    DIR *d = opendir(root);
    if (!d) {
        fprintf(stderr, "kiln onnx test: cannot open %s: %s\n", root, strerror(errno));
        return 2;
    }
    char **tests = NULL;
    size_t nt = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || (filter && !strstr(e->d_name, filter))) continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s/model.onnx", root, e->d_name);
        if (!exists(p)) continue;
        if (nt == cap) {
            cap = cap ? cap * 2 : 256;
            char **nt2 = realloc(tests, cap * sizeof *tests);
            if (!nt2) break;
            tests = nt2;
        }
        tests[nt++] = strdup(e->d_name);
    }
    closedir(d);
    if (!nt) {
        fprintf(stderr, "kiln onnx test: no test directories (with model.onnx) under %s\n", root);
        free(tests);
        return 2;
    }
    qsort(tests, nt, sizeof *tests, by_name);
    kiln_ctx *ctx;
    if (kiln_open(&ctx, NULL) != KILN_OK) {
        fprintf(stderr, "kiln onnx test: %s\n", kiln_last_error());
        return 77;
    }
    opstat *st = calloc(nt, sizeof *st);
    int nst = 0, pass = 0, fail = 0, unsup = 0;
    for (size_t i = 0; st && i < nt; i++) {
        char dir[4096], mp[4200], op[64], why[1024] = "";
        snprintf(dir, sizeof dir, "%s/%s", root, tests[i]);
        snprintf(mp, sizeof mp, "%s/model.onnx", dir);
        test_op(mp, tests[i], op, sizeof op);
        verdict v = run_test(ctx, dir, why, sizeof why);
        int k = 0;
        while (k < nst && strcmp(st[k].name, op)) k++;
        if (k == nst) snprintf(st[nst++].name, sizeof st[k].name, "%s", op);
        if (v == V_PASS) st[k].passed++, pass++;
        if (v == V_FAIL) st[k].failed++, fail++;
        if (v == V_UNSUP) st[k].unsupported++, unsup++;
        if (v == V_FAIL)
            printf("FAIL %s [%s]: %s\n", tests[i], op, why);
        else if (verbose)
            printf("%s %s [%s]%s%s\n", v == V_PASS ? "pass" : "unsupported", tests[i], op, v == V_PASS ? "" : ": ",
                   why);
        fflush(stdout);
    }
    printf("\n%-28s %6s %6s %11s\n", "operator", "passed", "failed", "unsupported");
    int ops_all = 0, ops_some = 0;
    for (int k = 0; k < nst; k++) {
        printf("%-28s %6d %6d %11d\n", st[k].name, st[k].passed, st[k].failed, st[k].unsupported);
        ops_all += st[k].passed && !st[k].failed && !st[k].unsupported;
        ops_some += st[k].passed > 0;
    }
    printf("\n%zu tests: %d passed, %d failed, %d unsupported; %d operators with every test passing, %d with at least "
           "one\n",
           nt, pass, fail, unsup, ops_all, ops_some);
    for (size_t i = 0; i < nt; i++) free(tests[i]);
    free(tests), free(st);
    kiln_close(ctx);
    return fail ? 1 : 0;
}

int kiln_cmd_onnx(int argc, char **argv) {
    if (argc < 1 || !strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")) {
        onnx_usage(argc < 1 ? stderr : stdout);
        return argc < 1 ? 2 : 0;
    }
    if (!strcmp(argv[0], "info")) return cmd_info(argc - 1, argv + 1);
    if (!strcmp(argv[0], "run")) return cmd_run(argc - 1, argv + 1);
    if (!strcmp(argv[0], "test")) return cmd_test(argc - 1, argv + 1);
    fprintf(stderr, "kiln onnx: unknown subcommand '%s'\n\n", argv[0]);
    onnx_usage(stderr);
    return 2;
}

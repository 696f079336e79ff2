/* src/io/onnx_load.c - reading an ONNX model: protobuf-c unpacks the file through an
 * allocator with a budget (so a few hostile bytes cannot ask for gigabytes), then the
 * graph is validated before anything runs: the opset of the default domain in 11..17,
 * every operator and attribute known (else an error naming the operator, its node and the
 * opset), every node input produced by something, no value produced twice, no cycle (the
 * nodes are sorted topologically), initializers whose data matches their shape, external
 * data files only inside the model's directory. Constant nodes, initializers and every
 * node whose inputs are all constants (the Shape/Gather/Concat/Unsqueeze chains of an
 * exported model) are evaluated here, once; then every value's dtype and shape is inferred
 * (src/io/onnx_infer.c) and an inference BatchNormalization after a Conv, Gemm or MatMul is
 * folded into its weights. */
#define _XOPEN_SOURCE 700
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "onnx_internal.h"

/* ---- a bounded allocator for protobuf-c ------------------------------------------------ */

typedef struct budget {
    ProtobufCAllocator a; /* first: protobuf-c hands back &a as allocator_data */
    size_t used, limit;
    bool exceeded;
} budget;

static void *b_alloc(void *data, size_t size) {
    budget *b = data;
    if (size > b->limit - b->used || size > SIZE_MAX - 16) {
        b->exceeded = true;
        return NULL;
    }
    size_t *p = malloc(size + 16);
    if (!p) return NULL;
    p[0] = size;
    b->used += size;
    return (char *)p + 16;
}

static void b_free(void *data, void *ptr) {
    budget *b = data;
    if (!ptr) return;
    size_t *p = (size_t *)((char *)ptr - 16);
    b->used -= p[0];
    free(p);
}

/* ---- names ------------------------------------------------------------------------------ */

typedef struct names {
    char **keys;
    int *ids;
    size_t cap;
    int n;
} names;

static uint64_t hash(const char *s) {
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static int names_find(const names *t, const char *s) {
    if (!t->cap) return -1;
    for (size_t i = hash(s) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
        if (!t->keys[i]) return -1;
        if (strcmp(t->keys[i], s) == 0) return t->ids[i];
    }
}

/* Adds s (not copied) with the next id; returns it, -1 when out of memory. */
static int names_add(names *t, char *s) {
    if ((size_t)(t->n + 1) * 2 > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        char **k = calloc(cap, sizeof *k);
        int *v = calloc(cap, sizeof *v);
        if (!k || !v) return free(k), free(v), -1;
        for (size_t i = 0; i < t->cap; i++)
            if (t->keys[i]) {
                size_t j = hash(t->keys[i]) & (cap - 1);
                while (k[j]) j = (j + 1) & (cap - 1);
                k[j] = t->keys[i], v[j] = t->ids[i];
            }
        free(t->keys), free(t->ids);
        t->keys = k, t->ids = v, t->cap = cap;
    }
    size_t j = hash(s) & (t->cap - 1);
    while (t->keys[j]) j = (j + 1) & (t->cap - 1);
    t->keys[j] = s, t->ids[j] = t->n;
    return t->n++;
}

/* ---- helpers ---------------------------------------------------------------------------- */

void kiln_onnx_free(kiln_onnx_model *m) {
    if (!m) return;
    for (int i = 0; i < m->nvals; i++) {
        if (m->consts) kiln__onnx_val_clear(&m->consts[i]);
        if (m->vals) kiln__onnx_val_clear(&m->vals[i]);
    }
    for (int i = 0; i < m->nnodes; i++) free(m->nodes[i].in), free(m->nodes[i].out), free((char *)m->nodes[i].name);
    free(m->nodes);
    free(m->consts), free(m->vals), free(m->last_use), free(m->is_output), free(m->names);
    free(m->inputs), free(m->outputs), free(m->info), free(m->decl);
    if (m->proto) onnx__model_proto__free_unpacked(m->proto, m->alloc);
    free(m->alloc);
    free(m->what), free(m->dir);
    free(m);
}

static bool name_ok(const char *s) { return s != NULL; }

/* Reads the bytes of an external-data tensor: the file must lie inside the model's directory. */
static kiln_status read_external(kiln_onnx_model *m, const Onnx__TensorProto *tp, int64_t numel, void **data,
                                 size_t *len) {
    kiln_ctx *ctx = m->ctx;
    const char *tname = tp->name ? tp->name : "";
    if (!m->dir)
        return kiln__fail(ctx, KILN_ERR_UNSUPPORTED,
                          "onnx %s: tensor '%s' has external data, which a model loaded from "
                          "memory cannot have",
                          m->what, tname);
    const char *loc = NULL;
    long long offset = 0, length = -1;
    for (size_t i = 0; i < tp->n_external_data; i++) {
        const Onnx__StringStringEntryProto *e = tp->external_data[i];
        if (!e->key || !e->value) continue;
        char *end;
        if (strcmp(e->key, "location") == 0)
            loc = e->value;
        else if (strcmp(e->key, "offset") == 0 || strcmp(e->key, "length") == 0) {
            errno = 0;
            long long v = strtoll(e->value, &end, 10);
            if (errno || *end || end == e->value || v < 0)
                return kiln__fail(ctx, KILN_ERR_CORRUPT, "onnx %s: tensor '%s': external data %s '%s' is not a size",
                                  m->what, tname, e->key, e->value);
            if (e->key[0] == 'o')
                offset = v;
            else
                length = v;
        }
    }
    if (!loc || !loc[0])
        return kiln__fail(ctx, KILN_ERR_CORRUPT, "onnx %s: tensor '%s': external data without a location", m->what,
                          tname);
    /* no absolute path, no ".." component: the file must lie below the model's directory */
    bool bad = loc[0] == '/' || loc[0] == '\\';
    for (const char *p = loc; !bad && *p;) {
        const char *q = p;
        while (*q && *q != '/' && *q != '\\') q++;
        if (q - p == 2 && p[0] == '.' && p[1] == '.') bad = true;
        p = *q ? q + 1 : q;
    }
    if (bad)
        return kiln__fail(ctx, KILN_ERR_CORRUPT,
                          "onnx %s: tensor '%s': external data location '%s' leaves the model's "
                          "directory (absolute paths and '..' are refused)",
                          m->what, tname, loc);
    size_t plen = strlen(m->dir) + strlen(loc) + 2;
    char *path = malloc(plen);
    if (!path) return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "onnx %s: out of host memory", m->what);
    snprintf(path, plen, "%s/%s", m->dir, loc);
    /* a symbolic link may still point out of the directory: compare the resolved paths */
    char *real = realpath(path, NULL), *rdir = realpath(m->dir, NULL);
    size_t dl = rdir ? strlen(rdir) : 0;
    if (!real || !rdir || strncmp(real, rdir, dl) != 0 || (real[dl] != '/' && !(dl == 1 && rdir[0] == '/'))) {
        kiln_status s = !real ? kiln__fail(ctx, KILN_ERR_IO, "onnx %s: tensor '%s': cannot open external data '%s': %s",
                                           m->what, tname, path, strerror(errno))
                              : kiln__fail(ctx, KILN_ERR_CORRUPT,
                                           "onnx %s: tensor '%s': external data '%s' resolves to "
                                           "'%s', outside the model's directory",
                                           m->what, tname, loc, real);
        free(real), free(rdir), free(path);
        return s;
    }
    free(rdir);
    int fd = open(real, O_RDONLY);
    free(real);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        kiln_status s =
            kiln__fail(ctx, KILN_ERR_IO, "onnx %s: tensor '%s': cannot read external data '%s'", m->what, tname, path);
        if (fd >= 0) close(fd);
        free(path);
        return s;
    }
    size_t es = tp->data_type == OT_FLOAT || tp->data_type == OT_INT32 || tp->data_type == OT_UINT32 ? 4
                : tp->data_type == OT_INT64 || tp->data_type == OT_UINT64                            ? 8
                : tp->data_type == OT_INT16 || tp->data_type == OT_UINT16                            ? 2
                                                                                                     : 1;
    long long need = numel * (long long)es;
    if ((length >= 0 && length != need) || offset > (long long)st.st_size || need > (long long)st.st_size - offset) {
        kiln_status s = kiln__fail(ctx, KILN_ERR_CORRUPT,
                                   "onnx %s: tensor '%s' needs %lld bytes at offset %lld of '%s' "
                                   "(%lld bytes; length field %lld)",
                                   m->what, tname, need, offset, path, (long long)st.st_size, length);
        close(fd), free(path);
        return s;
    }
    char *buf = malloc((size_t)need + 1);
    size_t got = 0;
    while (buf && got < (size_t)need) {
        ssize_t k = pread(fd, buf + got, (size_t)need - got, (off_t)(offset + (long long)got));
        if (k <= 0) break;
        got += (size_t)k;
    }
    close(fd);
    if (!buf || got != (size_t)need) {
        free(buf);
        kiln_status s = kiln__fail(ctx, buf ? KILN_ERR_IO : KILN_ERR_HOST_OUT_OF_MEMORY,
                                   "onnx %s: tensor '%s': short read of '%s'", m->what, tname, path);
        free(path);
        return s;
    }
    free(path);
    *data = buf, *len = (size_t)need;
    return KILN_OK;
}

static kiln_status load_tensor(kiln_onnx_model *m, const Onnx__TensorProto *tp, onnx_val *v) {
    int64_t numel;
    kiln_status s = kiln__onnx_tensor_check(m->ctx, m->what, tp, &numel);
    if (s) return s;
    if (tp->has_data_location && tp->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL) {
        void *data = NULL;
        size_t len = 0;
        s = read_external(m, tp, numel, &data, &len);
        if (s) return s;
        s = kiln__onnx_tensor_to_val(m->ctx, m->what, tp, data, len, v);
        free(data);
    } else {
        s = kiln__onnx_tensor_to_val(m->ctx, m->what, tp, NULL, 0, v);
    }
    if (!s && v->t) kiln_tensor_keep(v->t);
    return s;
}

/* A Constant node's value. */
static kiln_status constant_value(kiln_onnx_model *m, const onnx_node *n, onnx_val *v) {
    const Onnx__NodeProto *p = n->p;
    if (p->n_attribute != 1)
        return kiln__fail(m->ctx, KILN_ERR_CORRUPT, "onnx %s: Constant node '%s' needs exactly one value attribute",
                          m->what, n->name);
    const Onnx__AttributeProto *a = p->attribute[0];
    const char *an = a->name ? a->name : "";
    Onnx__TensorProto tp;
    onnx__tensor_proto__init(&tp);
    int64_t one = 1;
    float f;
    if (strcmp(an, "value") == 0) {
        if (!a->t)
            return kiln__fail(m->ctx, KILN_ERR_CORRUPT, "onnx %s: Constant node '%s': value holds no tensor", m->what,
                              n->name);
        return load_tensor(m, a->t, v);
    } else if (strcmp(an, "value_float") == 0) {
        f = a->f;
        tp.data_type = OT_FLOAT, tp.n_float_data = 1, tp.float_data = &f;
    } else if (strcmp(an, "value_floats") == 0) {
        tp.data_type = OT_FLOAT, tp.n_float_data = a->n_floats, tp.float_data = a->floats, tp.n_dims = 1;
        one = (int64_t)a->n_floats, tp.dims = &one;
    } else if (strcmp(an, "value_int") == 0) {
        tp.data_type = OT_INT64, tp.n_int64_data = 1, tp.int64_data = (int64_t *)&a->i;
    } else if (strcmp(an, "value_ints") == 0) {
        tp.data_type = OT_INT64, tp.n_int64_data = a->n_ints, tp.int64_data = a->ints, tp.n_dims = 1;
        one = (int64_t)a->n_ints, tp.dims = &one;
    } else {
        return kiln__fail(m->ctx, KILN_ERR_UNSUPPORTED,
                          "onnx %s: Constant node '%s' (opset %d): attribute '%s' is not "
                          "supported",
                          m->what, n->name, m->rt.opset, an);
    }
    kiln_status s = kiln__onnx_tensor_to_val(m->ctx, m->what, &tp, NULL, 0, v);
    if (!s && v->t) kiln_tensor_keep(v->t);
    return s;
}

static kiln_status io_info(kiln_onnx_model *m, const Onnx__ValueInfoProto *vi, onnx_io *io, const char *kind) {
    kiln_ctx *ctx = m->ctx;
    const Onnx__TypeProto *tp = vi->type;
    io->info.name = vi->name;
    io->info.ndim = -1; /* unknown rank */
    io->info.shape = io->shape;
    io->info.dim_names = io->dim_names;
    /* an output or value_info may leave its type to shape inference */
    if (strcmp(kind, "input") != 0 && (!tp || tp->value_case == ONNX__TYPE_PROTO__VALUE__NOT_SET)) return KILN_OK;
    if (!tp || tp->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !tp->tensor_type)
        return kiln__fail(ctx, KILN_ERR_UNSUPPORTED,
                          "onnx %s: %s '%s' is not a tensor (sequences, maps, optionals and "
                          "sparse tensors are not supported)",
                          m->what, kind, vi->name);
    const Onnx__TypeProto__Tensor *tt = tp->tensor_type;
    io->type = tt->elem_type;
    if (!kiln__onnx_type_ok(io->type) && (io->type || !strcmp(kind, "input")))
        return kiln__fail(ctx, KILN_ERR_UNSUPPORTED,
                          "onnx %s: %s '%s' has dtype %s; kiln runs float, bool and integer "
                          "tensors",
                          m->what, kind, vi->name, kiln__onnx_type_name(io->type));
    io->info.dtype = io->type == OT_FLOAT ? KILN_F32 : KILN_I32;
    if (tt->shape) {
        if (tt->shape->n_dim > KILN_MAX_DIMS)
            return kiln__fail(ctx, KILN_ERR_UNSUPPORTED, "onnx %s: %s '%s' has %zu dims (kiln holds %d)", m->what, kind,
                              vi->name, tt->shape->n_dim, KILN_MAX_DIMS);
        io->info.ndim = (int)tt->shape->n_dim;
        for (size_t d = 0; d < tt->shape->n_dim; d++) {
            const Onnx__TensorShapeProto__Dimension *dim = tt->shape->dim[d];
            io->shape[d] = -1;
            io->dim_names[d] = NULL;
            if (dim->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE) {
                if (dim->dim_value < 0 || dim->dim_value > ONNX_MAX_DIM)
                    return kiln__fail(ctx, KILN_ERR_CORRUPT,
                                      "onnx %s: %s '%s': dimension %zu of size %lld (at most %lld)", m->what, kind,
                                      vi->name, d, (long long)dim->dim_value, ONNX_MAX_DIM);
                io->shape[d] = dim->dim_value;
            } else if (dim->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM) {
                io->dim_names[d] = dim->dim_param;
            }
        }
    }
    io->info.shape = io->shape;
    io->info.dim_names = io->dim_names;
    return KILN_OK;
}

/* A scalar constant's value (host integer or device float), NaN when there is none. */
static double const_scalar(const kiln_onnx_model *m, int id) {
    const onnx_val *v = id >= 0 ? &m->consts[id] : NULL;
    if (!v || !v->set || kiln__onnx_numel(v) != 1) return NAN;
    return v->t ? (double)kiln_tensor_item(v->t) : (double)v->h[0];
}

/* Whether folding n at load makes a result of at most 2^20 elements: ConstantOfShape,
 * Expand, Tile, Pad, Range and OneHot can ask for 2^31 from a few bytes, which a run may
 * want (the caller's inputs decide then) but loading must not allocate; Resize is left to
 * run time too. */
static bool small_result(const kiln_onnx_model *m, const onnx_node *n) {
    const char *op = n->op->name;
    const double limit = (double)(1 << 20);
    if (!strcmp(op, "Resize")) return false;
    if (!strcmp(op, "Range")) {
        double a = const_scalar(m, n->in[0]), b = const_scalar(m, n->in[1]), d = const_scalar(m, n->in[2]);
        return isfinite(a) && isfinite(b) && isfinite(d) && d != 0 && ceil((b - a) / d) <= limit;
    }
    if (!strcmp(op, "OneHot")) {
        double depth = const_scalar(m, n->in[1]);
        return isfinite(depth) && fabs(depth) * (double)kiln__onnx_numel(&m->consts[n->in[0]]) <= limit;
    }
    bool cos = !strcmp(op, "ConstantOfShape"), exp = !strcmp(op, "Expand"), tile = !strcmp(op, "Tile"),
         pad = !strcmp(op, "Pad");
    if (!cos && !exp && !tile && !pad) return true;
    const onnx_val *x = &m->consts[n->in[0]], *shape = &m->consts[n->in[cos ? 0 : 1]];
    int64_t k = kiln__onnx_numel(shape);
    if (shape->t || k > 2 * KILN_MAX_DIMS) return false;
    if (pad) {
        if (k != 2 * x->ndim) return true; /* the operator's own error */
        double total = 1;
        for (int d = 0; d < x->ndim; d++)
            total *= fmax(1.0, (double)x->shape[d] + (double)shape->h[d] + (double)shape->h[x->ndim + d]);
        return total <= limit;
    }
    double total = cos ? 1.0 : (double)kiln__onnx_numel(x);
    for (int64_t i = 0; i < k; i++) total *= shape->h[i] > 1 ? (double)shape->h[i] : 1.0;
    return total <= limit;
}

/* The ONNX elem type and rank of value id where the file fixes them (a graph input with a
 * declared type, an initializer); false when only running tells. */
static bool known(const kiln_onnx_model *m, int id, int *type, int *rank) {
    if (id < 0) return false;
    if (m->consts[id].set) {
        *type = m->consts[id].type, *rank = m->consts[id].ndim;
        return true;
    }
    if (m->info && m->info[id].type) {
        *type = m->info[id].type, *rank = m->info[id].ndim;
        return true;
    }
    for (int i = 0; i < m->nin; i++)
        if (m->inputs[i].id == id) {
            *type = m->inputs[i].type, *rank = m->inputs[i].info.ndim;
            return true;
        }
    return false;
}

/* Refuses at load what a node would refuse at run given the declared or inferred dtype and
 * rank of its first input: an integer input to an operator kiln runs on floats only, a 3-D (volumetric)
 * convolution or pooling. */
static kiln_status static_check(const kiln_onnx_model *m, const onnx_node *n) {
    static const char *float_only[] = {"Conv",
                                       "ConvTranspose",
                                       "MaxPool",
                                       "AveragePool",
                                       "GlobalAveragePool",
                                       "GlobalMaxPool",
                                       "BatchNormalization",
                                       "LayerNormalization",
                                       "Gemm",
                                       "MatMul",
                                       "Softmax",
                                       "LogSoftmax",
                                       "Sigmoid",
                                       "Tanh",
                                       "Sqrt",
                                       "Exp",
                                       "Log",
                                       "Erf",
                                       "LeakyRelu",
                                       "Elu",
                                       "HardSigmoid",
                                       "Softplus",
                                       "Reciprocal",
                                       "ReduceMean",
                                       "ReduceSum",
                                       "ReduceMax",
                                       "ReduceMin",
                                       "ReduceSumSquare",
                                       "ReduceL1",
                                       "ReduceL2",
                                       "ReduceLogSum",
                                       "ReduceLogSumExp",
                                       "ArgMax",
                                       "ArgMin",
                                       "LSTM",
                                       "GRU",
                                       "RNN",
                                       NULL};
    static const char *spatial[] = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", NULL};
    int type, rank;
    if (n->nin < 1 || !known(m, n->in[0], &type, &rank)) return KILN_OK;
    for (int k = 0; float_only[k]; k++)
        if (!strcmp(float_only[k], n->op->name) && type != OT_FLOAT)
            return kiln__fail(m->ctx, KILN_ERR_UNSUPPORTED,
                              "onnx %s: %s node '%s' (opset %d): input '%s' has dtype %s; "
                              "kiln runs this operator on float tensors",
                              m->what, n->p->op_type, n->name, m->rt.opset, m->names[n->in[0]],
                              kiln__onnx_type_name(type));
    for (int k = 0; spatial[k]; k++)
        if (!strcmp(spatial[k], n->op->name) && rank >= 0 && rank != 3 && rank != 4)
            return kiln__fail(m->ctx, KILN_ERR_UNSUPPORTED,
                              "onnx %s: %s node '%s' (opset %d): input '%s' has %d dims; "
                              "kiln runs 1-D and 2-D %s (3-D or 4-D input)",
                              m->what, n->p->op_type, n->name, m->rt.opset, m->names[n->in[0]], rank, n->p->op_type);
    return KILN_OK;
}

/* ---- load ------------------------------------------------------------------------------- */

/* ---- folding BatchNormalization into the Conv, Gemm or MatMul(+Add) before it ------------ */

/* Adds a value of the model (after the graph's own) named `name`, a string that outlives
 * the model (one of the proto's); returns its id, -1 when out of host memory. */
static int add_value(kiln_onnx_model *m, char *name) {
    size_t n = (size_t)m->nvals + 2;
    onnx_val *c = realloc(m->consts, n * sizeof *c);
    if (c) m->consts = c;
    onnx_val *v = realloc(m->vals, n * sizeof *v);
    if (v) m->vals = v;
    int *lu = realloc(m->last_use, n * sizeof *lu);
    if (lu) m->last_use = lu;
    bool *o = realloc(m->is_output, n * sizeof *o);
    if (o) m->is_output = o;
    char **nm = realloc(m->names, n * sizeof *nm);
    if (nm) m->names = nm;
    if (!c || !v || !lu || !o || !nm) return -1;
    int id = m->nvals++;
    memset(&m->consts[id], 0, sizeof *m->consts);
    memset(&m->vals[id], 0, sizeof *m->vals);
    m->last_use[id] = -1;
    m->is_output[id] = false;
    m->names[id] = name;
    return id;
}

/* How many input slots of the nodes that run (neither folded nor fused) read value v. */
static int readers(const kiln_onnx_model *m, int v) {
    int c = 0;
    for (int i = 0; i < m->nnodes; i++)
        if (!m->nodes[i].folded && !m->nodes[i].fused)
            for (int k = 0; k < m->nodes[i].nin; k++) c += m->nodes[i].in[k] == v;
    return c;
}

static bool const_f32(const kiln_onnx_model *m, int id) {
    return id >= 0 && m->consts[id].set && m->consts[id].type == OT_FLOAT && m->consts[id].t;
}

/* A float constant onto the host (numel floats, malloc'ed), NULL on failure. */
static float *const_host(kiln_onnx_model *m, int id) {
    int64_t cnt = kiln__onnx_numel(&m->consts[id]);
    float *h = malloc((size_t)(cnt > 0 ? cnt : 1) * sizeof *h);
    if (h && cnt && kiln_to_host(m->consts[id].t, h, (size_t)cnt * sizeof *h) != KILN_OK) free(h), h = NULL;
    return h;
}

/* The folded weight (hw, the shape of constant wid) and bias (nb, [ch]) as two new
 * constants, named after the weight and the BN's bias (bias_name): *nw and *nb_id. */
static kiln_status fold_store(kiln_onnx_model *m, int wid, int bias_name, const float *hw, const float *nb, int64_t ch,
                              int *nw, int *nb_id) {
    kiln_ctx *ctx = m->ctx;
    *nw = add_value(m, m->names[wid]);
    *nb_id = *nw < 0 ? -1 : add_value(m, m->names[bias_name]);
    if (*nb_id < 0) return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "onnx %s: out of host memory", m->what);
    onnx_val *vw = &m->consts[*nw], *vb = &m->consts[*nb_id];
    *vw = m->consts[wid];
    vw->set = false;
    vw->t = kiln_from_host(ctx, hw, KILN_F32, vw->ndim, vw->shape);
    vb->type = OT_FLOAT, vb->ndim = 1, vb->shape[0] = ch;
    vb->t = kiln_from_host(ctx, nb, KILN_F32, 1, &ch);
    if (!vw->t || !vb->t) {
        kiln_tensor_free(vw->t), kiln_tensor_free(vb->t);
        vw->t = vb->t = NULL;
        return kiln_error_status(ctx);
    }
    kiln_tensor_keep(vw->t), kiln_tensor_keep(vb->t);
    vw->set = vb->set = true;
    return KILN_OK;
}

/* Folds bn (an inference BatchNormalization whose X is conv's only output, read by nobody
 * else) into conv: with a = scale / sqrt(var + epsilon) per output channel,
 * W' = W * a and B' = (B - mean) * a + bias, computed in double. The conv then writes the
 * BN's output and the BN no longer runs. Returns KILN_OK also when the pair does not fit. */
static kiln_status fold_bn(kiln_onnx_model *m, onnx_node *conv, onnx_node *bn) {
    kiln_ctx *ctx = m->ctx;
    int x = bn->in[0], wid = conv->in[1], bid = conv->nin > 2 ? conv->in[2] : -1;
    if (conv->nout != 1 || conv->out[0] != x || m->is_output[x] || readers(m, x) != 1 || bn->nout != 1 ||
        bn->nin != 5 || !const_f32(m, wid) || (bid >= 0 && !const_f32(m, bid)))
        return KILN_OK;
    const onnx_val *w = &m->consts[wid];
    if (w->ndim < 3 || w->shape[0] < 1) return KILN_OK;
    int64_t ch = w->shape[0], per = kiln__onnx_numel(w) / ch;
    if (bid >= 0 && (m->consts[bid].ndim != 1 || m->consts[bid].shape[0] != ch)) return KILN_OK;
    for (int k = 1; k < 5; k++)
        if (!const_f32(m, bn->in[k]) || m->consts[bn->in[k]].ndim != 1 || m->consts[bn->in[k]].shape[0] != ch)
            return KILN_OK;
    const Onnx__AttributeProto *ea = kiln__onnx_attr(bn, "epsilon");
    double eps = ea ? (double)ea->f : 1e-5;
    float *hw = const_host(m, wid), *hb = bid >= 0 ? const_host(m, bid) : NULL, *p[4] = {0};
    bool ok = hw && (bid < 0 || hb);
    for (int k = 0; k < 4; k++) ok = (p[k] = ok ? const_host(m, bn->in[k + 1]) : NULL) != NULL;
    float *nb = ok ? malloc((size_t)ch * sizeof *nb) : NULL;
    kiln_status s = KILN_OK;
    if (!nb) {
        s = kiln_error_status(ctx)
                ? kiln_error_status(ctx)
                : kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "onnx %s: out of host memory", m->what);
        goto out;
    }
    for (int64_t c = 0; c < ch; c++) {
        /* p: scale, bias, mean, var */
        double a = (double)p[0][c] / sqrt((double)p[3][c] + eps);
        for (int64_t j = 0; j < per; j++) hw[c * per + j] = (float)((double)hw[c * per + j] * a);
        nb[c] = (float)(((hb ? (double)hb[c] : 0.0) - (double)p[2][c]) * a + (double)p[1][c]);
    }
    int nw, nbid;
    if ((s = fold_store(m, wid, bn->in[2], hw, nb, ch, &nw, &nbid)) != KILN_OK) goto out;
    conv->in[1] = nw, conv->in[2] = nbid, conv->nin = 3; /* in[] has room for 3 (nin + 1) */
    conv->out[0] = bn->out[0];
    bn->fused = true;
    /* the unfolded W and B stay only when something else reads them */
    int old[2] = {wid, bid};
    for (int k = 0; k < 2; k++) {
        bool used = old[k] < 0 || m->is_output[old[k]];
        for (int i = 0; i < m->nnodes && !used; i++)
            for (int j = 0; j < m->nodes[i].nin; j++) used = used || m->nodes[i].in[j] == old[k];
        if (!used) kiln__onnx_val_clear(&m->consts[old[k]]);
    }
out:
    free(hw), free(hb), free(nb);
    for (int k = 0; k < 4; k++) free(p[k]);
    return s;
}

/* Whether bn reads a value of 2 dims ([batch, features]: its channels are the features)
 * that only it reads, and its scale, B, mean and var are float constants of ch values. */
static bool bn_foldable(const kiln_onnx_model *m, const onnx_node *bn, int64_t ch) {
    int x = bn->in[0];
    if (bn->nout != 1 || bn->nin != 5 || m->is_output[x] || readers(m, x) != 1 || !m->info || m->info[x].ndim != 2)
        return false;
    for (int k = 1; k < 5; k++)
        if (!const_f32(m, bn->in[k]) || m->consts[bn->in[k]].ndim != 1 || m->consts[bn->in[k]].shape[0] != ch)
            return false;
    return true;
}

/* A bias of ch values: [ch] or [1, ch]. */
static bool row_bias(const kiln_onnx_model *m, int id, int64_t ch) {
    if (!const_f32(m, id)) return false;
    const onnx_val *v = &m->consts[id];
    return (v->ndim == 1 && v->shape[0] == ch) || (v->ndim == 2 && v->shape[0] == 1 && v->shape[1] == ch);
}

/* Folds bn into a dense layer: a Gemm (Y = alpha A B + beta C), a MatMul, or a MatMul whose
 * output only an Add of a [N] bias reads (add). With a = scale / sqrt(var + epsilon) per
 * output feature: B' = B a (per column of op(B)), C' = ((beta C - mean) a + B_bn) / beta.
 * A MatMul becomes a Gemm (alpha = beta = 1) with C'; the Add and the BN no longer run.
 * Returns KILN_OK also when the pattern does not fit. */
static kiln_status fold_dense_bn(kiln_onnx_model *m, onnx_node *lin, onnx_node *add, onnx_node *bn) {
    kiln_ctx *ctx = m->ctx;
    bool gemm = strcmp(lin->op->name, "Gemm") == 0;
    int wid = lin->in[1];
    if (lin->nout != 1 || !const_f32(m, wid) || m->consts[wid].ndim != 2) return KILN_OK;
    const onnx_val *w = &m->consts[wid];
    bool tb = gemm && kiln__onnx_attr(lin, "transB") && kiln__onnx_attr(lin, "transB")->i;
    int64_t ch = tb ? w->shape[0] : w->shape[1], k = tb ? w->shape[1] : w->shape[0];
    double beta = 1.0;
    int cid = -1;
    if (gemm) {
        const Onnx__AttributeProto *ba = kiln__onnx_attr(lin, "beta");
        beta = ba ? (double)ba->f : 1.0;
        cid = lin->nin > 2 ? lin->in[2] : -1;
        if (beta == 0.0 || (cid >= 0 && !row_bias(m, cid, ch)) || lin->out[0] != bn->in[0]) return KILN_OK;
    } else if (add) {
        /* MatMul -> Add(bias) -> BN: the MatMul's output read by the Add alone */
        int mm = lin->out[0], other = add->in[0] == mm ? add->in[1] : add->in[0];
        if (add->nin != 2 || add->nout != 1 || add->out[0] != bn->in[0] || (add->in[0] != mm && add->in[1] != mm) ||
            add->in[0] == add->in[1] || m->is_output[mm] || readers(m, mm) != 1 || !row_bias(m, other, ch) ||
            !m->info || m->info[mm].ndim != 2)
            return KILN_OK;
        cid = other;
    } else if (lin->out[0] != bn->in[0]) {
        return KILN_OK;
    }
    if (!bn_foldable(m, bn, ch)) return KILN_OK;
    const Onnx__AttributeProto *ea = kiln__onnx_attr(bn, "epsilon");
    double eps = ea ? (double)ea->f : 1e-5;
    float *hw = const_host(m, wid), *hc = cid >= 0 ? const_host(m, cid) : NULL, *p[4] = {0};
    bool ok = hw && (cid < 0 || hc);
    for (int j = 0; j < 4; j++) ok = (p[j] = ok ? const_host(m, bn->in[j + 1]) : NULL) != NULL;
    float *nc = ok ? malloc((size_t)ch * sizeof *nc) : NULL;
    kiln_status s = KILN_OK;
    if (!nc) {
        s = kiln_error_status(ctx)
                ? kiln_error_status(ctx)
                : kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "onnx %s: out of host memory", m->what);
        goto out;
    }
    for (int64_t c = 0; c < ch; c++) {
        /* p: scale, bias, mean, var */
        double a = (double)p[0][c] / sqrt((double)p[3][c] + eps);
        for (int64_t j = 0; j < k; j++) {
            float *e = tb ? &hw[c * k + j] : &hw[j * ch + c];
            *e = (float)((double)*e * a);
        }
        double cc = hc ? beta * (double)hc[c] : 0.0;
        nc[c] = (float)(((cc - (double)p[2][c]) * a + (double)p[1][c]) / beta);
    }
    int nw, ncid;
    if ((s = fold_store(m, wid, bn->in[2], hw, nc, ch, &nw, &ncid)) != KILN_OK) goto out;
    if (!gemm) lin->op = kiln__onnx_find_op("Gemm");  /* the MatMul node has no attributes: Gemm's defaults */
    lin->in[1] = nw, lin->in[2] = ncid, lin->nin = 3; /* in[] has room for 3 (nin + 1) */
    lin->out[0] = bn->out[0];
    bn->fused = true;
    if (add) add->fused = true;
    /* the unfolded weights and bias stay only when something else reads them */
    int old[2] = {wid, cid};
    for (int j = 0; j < 2; j++) {
        bool used = old[j] < 0 || m->is_output[old[j]];
        for (int i = 0; i < m->nnodes && !used; i++)
            if (!m->nodes[i].fused)
                for (int q = 0; q < m->nodes[i].nin; q++) used = used || m->nodes[i].in[q] == old[j];
        if (!used) kiln__onnx_val_clear(&m->consts[old[j]]);
    }
out:
    free(hw), free(hc), free(nc);
    for (int j = 0; j < 4; j++) free(p[j]);
    return s;
}

/* KILN_ONNX_NO_FOLD=1 keeps every BatchNormalization a node of its own (to compare). */
static kiln_status fold_batch_norms(kiln_onnx_model *m) {
    const char *e = getenv("KILN_ONNX_NO_FOLD");
    if (e && e[0] && strcmp(e, "0") != 0) return KILN_OK;
    int *producer = malloc(sizeof(int) * (size_t)(m->nvals + 1));
    if (!producer) return kiln__fail(m->ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "onnx %s: out of host memory", m->what);
    for (int v = 0; v < m->nvals; v++) producer[v] = -1;
    for (int i = 0; i < m->nnodes; i++)
        for (int o = 0; o < m->nodes[i].nout; o++)
            if (m->nodes[i].out[o] >= 0) producer[m->nodes[i].out[o]] = i;
    kiln_status s = KILN_OK;
    int nv = m->nvals; /* fold_bn adds values after these; none of them is a node's output */
    for (int i = 0; i < m->nnodes && !s; i++) {
        onnx_node *bn = &m->nodes[i];
        if (bn->folded || strcmp(bn->op->name, "BatchNormalization") != 0 || bn->in[0] < 0 || bn->in[0] >= nv) continue;
        int c = producer[bn->in[0]];
        if (c < 0 || m->nodes[c].folded || m->nodes[c].fused) continue;
        onnx_node *pn = &m->nodes[c], *add = NULL;
        const char *op = pn->op->name;
        if (!strcmp(op, "Add")) {
            /* MatMul -> Add -> BN: the MatMul producing either input */
            for (int k = 0; k < 2 && !add && pn->nin == 2; k++) {
                int q = pn->in[k] >= 0 && pn->in[k] < nv ? producer[pn->in[k]] : -1;
                if (q >= 0 && !m->nodes[q].folded && !m->nodes[q].fused && !strcmp(m->nodes[q].op->name, "MatMul"))
                    add = pn, pn = &m->nodes[q];
            }
            if (!add) continue;
        } else if (strcmp(op, "Conv") != 0 && strcmp(op, "Gemm") != 0 && strcmp(op, "MatMul") != 0) {
            continue;
        }
        kiln_scope_begin(m->ctx);
        s = !strcmp(pn->op->name, "Conv") ? fold_bn(m, pn, bn) : fold_dense_bn(m, pn, add, bn);
        kiln_scope_end(m->ctx);
    }
    free(producer);
    return s;
}

static kiln_status fail_node(kiln_onnx_model *m, const onnx_node *n, kiln_status s, const char *fmt, const char *arg) {
    char msg[300];
    snprintf(msg, sizeof msg, fmt, arg);
    return kiln__fail(m->ctx, s, "onnx %s: %s node '%s' (opset %d): %s", m->what, n->p->op_type, n->name, m->rt.opset,
                      msg);
}

/* The types and shapes the file declares for graph outputs and value_info entries (m->decl),
 * for shape inference to check against. */
static kiln_status declared(kiln_onnx_model *m, const Onnx__GraphProto *g, const names *tab) {
    m->decl = calloc((size_t)m->nout + g->n_value_info + 1, sizeof *m->decl);
    if (!m->decl) return kiln__fail(m->ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "onnx %s: out of host memory", m->what);
    for (size_t i = 0; i < (size_t)m->nout + g->n_value_info; i++) {
        onnx_io tmp = {0}, *io = i < (size_t)m->nout ? &m->outputs[i] : &tmp;
        if (i >= (size_t)m->nout) {
            const Onnx__ValueInfoProto *vi = g->value_info[i - (size_t)m->nout];
            io->id = vi->name ? names_find(tab, vi->name) : -1;
            if (io->id < 0) continue; /* a name no node makes: nothing to check */
            kiln_status s = io_info(m, vi, io, "value_info");
            if (s) return s;
        }
        onnx_decl *d = &m->decl[m->ndecl++];
        d->id = io->id;
        d->f.type = io->type;
        d->f.ndim = io->info.ndim;
        d->f.ndata = -1;
        for (int k = 0; k < io->info.ndim; k++)
            d->f.d[k] =
                io->shape[k] >= 0 ? (onnx_dim){io->shape[k], NULL, true} : (onnx_dim){0, io->dim_names[k], false};
    }
    return KILN_OK;
}

static kiln_status build(kiln_onnx_model *m) {
    kiln_ctx *ctx = m->ctx;
    Onnx__ModelProto *mp = m->proto;
    Onnx__GraphProto *g = mp->graph;
    if (!g) return kiln__fail(ctx, KILN_ERR_CORRUPT, "onnx %s: the model has no graph", m->what);
    int opset = -1;
    for (size_t i = 0; i < mp->n_opset_import; i++) {
        const char *d = mp->opset_import[i]->domain;
        if (!d || !d[0] || strcmp(d, "ai.onnx") == 0) opset = (int)mp->opset_import[i]->version;
    }
    m->rt.opset = opset;
    if (opset > ONNX_OPSET_MAX)
        return kiln__fail(ctx, KILN_ERR_UNSUPPORTED,
                          "onnx %s: opset %d of the default domain is newer than the %d..%d "
                          "kiln runs",
                          m->what, opset, ONNX_OPSET_MIN, ONNX_OPSET_MAX);
    if (g->n_sparse_initializer)
        return kiln__fail(ctx, KILN_ERR_UNSUPPORTED, "onnx %s: sparse initializers are not supported", m->what);
    if (g->n_node > 1000000 || g->n_initializer > 1000000)
        return kiln__fail(ctx, KILN_ERR_CORRUPT, "onnx %s: %zu nodes, %zu initializers", m->what, g->n_node,
                          g->n_initializer);

    names tab = {0};
    kiln_status s = KILN_OK;
#define ADD_NAME(str, dupmsg)                                                                                          \
    do {                                                                                                               \
        if (names_find(&tab, (str)) >= 0) {                                                                            \
            s = kiln__fail(ctx, KILN_ERR_CORRUPT, "onnx %s: value '%s' " dupmsg, m->what, (str));                      \
            goto done;                                                                                                 \
        }                                                                                                              \
        if (names_add(&tab, (str)) < 0) {                                                                              \
            s = kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "onnx %s: out of host memory", m->what);                  \
            goto done;                                                                                                 \
        }                                                                                                              \
    } while (0)
    for (size_t i = 0; i < g->n_initializer; i++) {
        if (!name_ok(g->initializer[i]->name) || !g->initializer[i]->name[0]) {
            s = kiln__fail(ctx, KILN_ERR_CORRUPT, "onnx %s: initializer %zu has no name", m->what, i);
            goto done;
        }
        ADD_NAME(g->initializer[i]->name, "is defined by two initializers");
    }
    int n_real_in = 0;
    for (size_t i = 0; i < g->n_input; i++) {
        const char *nm = g->input[i]->name;
        if (!nm || !nm[0]) {
            s = kiln__fail(ctx, KILN_ERR_CORRUPT, "onnx %s: graph input %zu has no name", m->what, i);
            goto done;
        }
        if (names_find(&tab, nm) >= 0) {
            /* an input with an initializer of the same name (IR < 4): the initializer is the value */
            bool init = false;
            for (size_t j = 0; j < g->n_initializer; j++) init = init || strcmp(g->initializer[j]->name, nm) == 0;
            if (init) continue;
        }
        ADD_NAME(g->input[i]->name, "is a graph input twice");
        n_real_in++;
    }
    /* nodes */
    m->nnodes = (int)g->n_node;
    m->nodes = calloc(g->n_node + 1, sizeof *m->nodes);
    if (!m->nodes) {
        s = kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "onnx %s: out of host memory", m->what);
        goto done;
    }
    onnx_node *raw = m->nodes;
    for (size_t i = 0; i < g->n_node; i++) {
        onnx_node *n = &raw[i];
        n->p = g->node[i];
        char nb[32];
        snprintf(nb, sizeof nb, "#%zu", i);
        n->name = strdup(n->p->name && n->p->name[0] ? n->p->name : nb);
        if (!n->name) {
            s = kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "onnx %s: out of host memory", m->what);
            goto done;
        }
        if (!n->p->op_type) {
            s = kiln__fail(ctx, KILN_ERR_CORRUPT, "onnx %s: node '%s' has no op_type", m->what, n->name);
            goto done;
        }
        const char *dom = n->p->domain;
        if (dom && dom[0] && strcmp(dom, "ai.onnx") != 0) {
            s = kiln__fail(ctx, KILN_ERR_UNSUPPORTED,
                           "onnx %s: operator %s of domain '%s' (node '%s') is not supported", m->what, n->p->op_type,
                           dom, n->name);
            goto done;
        }
        if (opset < 0) {
            s = kiln__fail(ctx, KILN_ERR_CORRUPT,
                           "onnx %s: node '%s' uses the default domain, which the model imports "
                           "no opset of",
                           m->what, n->name);
            goto done;
        }
        n->op = kiln__onnx_find_op(n->p->op_type);
        if (!n->op) {
            s = fail_node(m, n, KILN_ERR_UNSUPPORTED, "operator %s is not supported", n->p->op_type);
            goto done;
        }
        if (opset < kiln__onnx_op_since(n->p->op_type)) {
            char msg[64];
            snprintf(msg, sizeof msg, "%d", kiln__onnx_op_since(n->p->op_type));
            s = fail_node(m, n, KILN_ERR_UNSUPPORTED, "kiln runs this operator from opset %s on", msg);
            goto done;
        }
        for (size_t a = 0; a < n->p->n_attribute; a++) {
            const Onnx__AttributeProto *at = n->p->attribute[a];
            bool known = false;
            for (const char *const *k = n->op->attrs; *k && at->name; k++) known = known || strcmp(*k, at->name) == 0;
            if (!known) {
                s = fail_node(m, n, KILN_ERR_UNSUPPORTED, "attribute '%s' is not supported", at->name ? at->name : "");
                goto done;
            }
            if (at->ref_attr_name && at->ref_attr_name[0]) {
                s = fail_node(m, n, KILN_ERR_UNSUPPORTED, "attribute '%s' refers to a function attribute", at->name);
                goto done;
            }
        }
        /* trailing empty names are absent optional inputs/outputs */
        int nin = (int)n->p->n_input, nout = (int)n->p->n_output;
        while (nin > 0 && !n->p->input[nin - 1][0]) nin--;
        while (nout > 0 && !n->p->output[nout - 1][0]) nout--;
        if (nin < n->op->min_in || nin > n->op->max_in || nout < n->op->min_out || nout > n->op->max_out || nout < 1) {
            char msg[120];
            snprintf(msg, sizeof msg, "%d inputs and %d outputs (the operator takes %d..%d and gives %d..%d)", nin,
                     nout, n->op->min_in, n->op->max_in, n->op->min_out > 1 ? n->op->min_out : 1, n->op->max_out);
            s = fail_node(m, n, KILN_ERR_CORRUPT, "%s", msg);
            goto done;
        }
        n->nin = nin, n->nout = nout;
        n->in = malloc(sizeof(int) * (size_t)(nin + 1));
        n->out = malloc(sizeof(int) * (size_t)(nout + 1));
        if (!n->in || !n->out) {
            s = kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "onnx %s: out of host memory", m->what);
            goto done;
        }
        for (int o = 0; o < nout; o++) {
            char *nm = n->p->output[o];
            if (!nm[0]) {
                n->out[o] = -1;
                continue;
            }
            if (names_find(&tab, nm) >= 0) {
                s = fail_node(m, n, KILN_ERR_CORRUPT, "output '%s' is already defined elsewhere in the graph", nm);
                goto done;
            }
            ADD_NAME(nm, "is defined twice");
            n->out[o] = tab.n - 1;
        }
    }
    m->nvals = tab.n;
    for (int i = 0; i < m->nnodes; i++) {
        onnx_node *n = &raw[i];
        for (int k = 0; k < n->nin; k++) {
            const char *nm = n->p->input[k];
            if (!nm[0]) {
                /* only optional inputs may be absent (every input of the variadic operators is required) */
                if (k < n->op->min_in || n->op->max_in == 64) {
                    char msg[32];
                    snprintf(msg, sizeof msg, "%d", k);
                    s = fail_node(m, n, KILN_ERR_CORRUPT, "input %s is required but has an empty name", msg);
                    goto done;
                }
                n->in[k] = -1;
                continue;
            }
            n->in[k] = names_find(&tab, nm);
            if (n->in[k] < 0) {
                s = fail_node(m, n, KILN_ERR_CORRUPT,
                              "input '%s' is never produced (no graph input, initializer or "
                              "node output has that name)",
                              nm);
                goto done;
            }
        }
    }
    /* topological order (Kahn): a node is ready when every node producing its inputs ran */
    {
        int *producer = malloc(sizeof(int) * (size_t)(m->nvals + 1));
        int *indeg = calloc((size_t)m->nnodes + 1, sizeof(int));
        int *order = malloc(sizeof(int) * (size_t)(m->nnodes + 1));
        int *cons_n = calloc((size_t)m->nvals + 1, sizeof(int));
        if (!producer || !indeg || !order || !cons_n) {
            free(producer), free(indeg), free(order), free(cons_n);
            s = kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "onnx %s: out of host memory", m->what);
            goto done;
        }
        for (int v = 0; v < m->nvals; v++) producer[v] = -1;
        for (int i = 0; i < m->nnodes; i++)
            for (int o = 0; o < raw[i].nout; o++)
                if (raw[i].out[o] >= 0) producer[raw[i].out[o]] = i;
        for (int i = 0; i < m->nnodes; i++)
            for (int k = 0; k < raw[i].nin; k++)
                if (raw[i].in[k] >= 0 && producer[raw[i].in[k]] >= 0) indeg[i]++;
        int head = 0, tail = 0;
        for (int i = 0; i < m->nnodes; i++)
            if (!indeg[i]) order[tail++] = i;
        while (head < tail) {
            int i = order[head++];
            /* every consumer of i's outputs loses one dependency per input slot */
            for (int j = 0; j < m->nnodes; j++) {
                if (!indeg[j]) continue;
                for (int k = 0; k < raw[j].nin; k++)
                    if (raw[j].in[k] >= 0 && producer[raw[j].in[k]] == i && --indeg[j] == 0) order[tail++] = j;
            }
        }
        if (tail < m->nnodes) {
            int stuck = -1;
            for (int i = 0; i < m->nnodes && stuck < 0; i++)
                if (indeg[i]) stuck = i;
            s = fail_node(m, &raw[stuck], KILN_ERR_CORRUPT, "%s", "the graph has a cycle through this node");
            free(producer), free(indeg), free(order), free(cons_n);
            goto done;
        }
        onnx_node *sorted = malloc(sizeof *sorted * (size_t)(m->nnodes + 1));
        if (!sorted) {
            free(producer), free(indeg), free(order), free(cons_n);
            s = kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "onnx %s: out of host memory", m->what);
            goto done;
        }
        for (int i = 0; i < m->nnodes; i++) sorted[i] = raw[order[i]];
        free(m->nodes);
        m->nodes = sorted;
        free(producer), free(indeg), free(order), free(cons_n);
    }
    m->consts = calloc((size_t)m->nvals + 1, sizeof *m->consts);
    m->vals = calloc((size_t)m->nvals + 1, sizeof *m->vals);
    m->last_use = malloc(sizeof(int) * (size_t)(m->nvals + 1));
    m->is_output = calloc((size_t)m->nvals + 1, sizeof(bool));
    m->names = calloc((size_t)m->nvals + 1, sizeof(char *));
    m->inputs = calloc((size_t)n_real_in + 1, sizeof *m->inputs);
    m->outputs = calloc(g->n_output + 1, sizeof *m->outputs);
    if (!m->consts || !m->vals || !m->last_use || !m->is_output || !m->names || !m->inputs || !m->outputs) {
        s = kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "onnx %s: out of host memory", m->what);
        goto done;
    }
    for (size_t i = 0; i < tab.cap; i++)
        if (tab.keys[i]) m->names[tab.ids[i]] = tab.keys[i];
    /* initializers */
    for (size_t i = 0; i < g->n_initializer; i++) {
        int id = names_find(&tab, g->initializer[i]->name);
        if ((s = load_tensor(m, g->initializer[i], &m->consts[id])) != KILN_OK) goto done;
    }
    /* graph inputs and outputs */
    for (size_t i = 0; i < g->n_input; i++) {
        int id = names_find(&tab, g->input[i]->name);
        if (m->consts[id].set) continue;
        onnx_io *io = &m->inputs[m->nin++];
        io->id = id;
        if ((s = io_info(m, g->input[i], io, "input")) != KILN_OK) goto done;
    }
    if (g->n_output == 0) {
        s = kiln__fail(ctx, KILN_ERR_CORRUPT, "onnx %s: the graph has no output", m->what);
        goto done;
    }
    for (size_t i = 0; i < g->n_output; i++) {
        const char *nm = g->output[i]->name;
        int id = nm ? names_find(&tab, nm) : -1;
        if (id < 0) {
            s = kiln__fail(ctx, KILN_ERR_CORRUPT, "onnx %s: graph output '%s' is never produced", m->what,
                           nm ? nm : "");
            goto done;
        }
        onnx_io *io = &m->outputs[m->nout++];
        io->id = id;
        m->is_output[id] = true;
        if ((s = io_info(m, g->output[i], io, "output")) != KILN_OK) goto done;
    }
    /* each operator's own checks, and what the declared dtypes and ranks of graph inputs
     * and initializers already tell */
    for (int i = 0; i < m->nnodes; i++) {
        onnx_node *n = &m->nodes[i];
        if (n->op->check && (s = n->op->check(&m->rt, n)) != KILN_OK) goto done;
        if ((s = static_check(m, n)) != KILN_OK) goto done;
    }
    /* constants and constant folding, in order */
    for (int i = 0; i < m->nnodes; i++) {
        onnx_node *n = &m->nodes[i];
        if (strcmp(n->op->name, "Constant") == 0) {
            if ((s = constant_value(m, n, &m->consts[n->out[0]])) != KILN_OK) goto done;
            n->folded = true;
            continue;
        }
        bool all = true;
        for (int k = 0; k < n->nin && all; k++) all = n->in[k] < 0 || m->consts[n->in[k]].set;
        if (!all || !small_result(m, n)) continue;
        onnx_val *in[256], *out[256];
        for (int k = 0; k < n->nin; k++) in[k] = n->in[k] >= 0 ? &m->consts[n->in[k]] : NULL;
        onnx_val dummy = {0};
        for (int k = 0; k < n->nout; k++) out[k] = n->out[k] >= 0 ? &m->consts[n->out[k]] : &dummy;
        kiln_scope_begin(ctx);
        s = n->op->run(&m->rt, n, in, out);
        for (int k = 0; k < n->nout; k++)
            if (n->out[k] >= 0 && out[k]->t) {
                /* a result that is an input's own tensor object gets a view of its own */
                for (int j = 0; j < n->nin; j++)
                    if (in[j] && in[j]->t == out[k]->t)
                        out[k]->t = kiln_reshape(ctx, out[k]->t, out[k]->ndim, out[k]->shape);
                kiln_tensor_keep(out[k]->t);
            }
        kiln__onnx_val_clear(&dummy);
        kiln_scope_end(ctx);
        if (s) goto done;
        n->folded = true;
    }
    /* types and shapes of every value, checked against what the file declares */
    if ((s = declared(m, g, &tab)) != KILN_OK || (s = kiln__onnx_infer(m)) != KILN_OK) goto done;
    for (int i = 0; i < m->nnodes; i++)
        if (!m->nodes[i].folded && (s = static_check(m, &m->nodes[i])) != KILN_OK) goto done;
    if ((s = fold_batch_norms(m)) != KILN_OK) goto done;
    /* last consumers */
    for (int v = 0; v < m->nvals; v++) m->last_use[v] = -1;
    for (int i = 0; i < m->nnodes; i++)
        if (!m->nodes[i].folded && !m->nodes[i].fused)
            for (int k = 0; k < m->nodes[i].nin; k++)
                if (m->nodes[i].in[k] >= 0) m->last_use[m->nodes[i].in[k]] = i;
done:
    free(tab.keys), free(tab.ids);
#undef ADD_NAME
    return s;
}

static kiln_status load(kiln_ctx *ctx, const void *data, size_t len, const char *what, const char *dir,
                        kiln_onnx_model **out) {
    kiln_onnx_model *m = calloc(1, sizeof *m);
    budget *b = calloc(1, sizeof *b);
    if (!m || !b) {
        free(m), free(b);
        return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "onnx %s: out of host memory", what);
    }
    m->ctx = ctx;
    m->what = strdup(what);
    m->dir = dir ? strdup(dir) : NULL;
    m->rt.ctx = ctx;
    m->rt.what = m->what ? m->what : "";
    /* protobuf-c's unpacked structs take a few times the encoded size; a hostile length field
     * asks for more than the budget and fails instead of allocating */
    b->limit = (size_t)64 << 20;
    b->limit += len < ((size_t)1 << 40) / 8 ? len * 8 : len;
    b->a.alloc = b_alloc, b->a.free = b_free, b->a.allocator_data = b;
    m->alloc = &b->a;
    if (!m->what || (dir && !m->dir)) {
        kiln_onnx_free(m);
        return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "onnx %s: out of host memory", what);
    }
    m->proto = onnx__model_proto__unpack(m->alloc, len, data);
    if (!m->proto) {
        kiln_status s = b->exceeded ? kiln__fail(ctx, KILN_ERR_CORRUPT,
                                                 "onnx %s: the file asks for more memory than its "
                                                 "%zu bytes can describe (a corrupt length)",
                                                 what, len)
                                    : kiln__fail(ctx, KILN_ERR_CORRUPT,
                                                 "onnx %s: not a valid ONNX model (truncated or "
                                                 "malformed protobuf, %zu bytes)",
                                                 what, len);
        kiln_onnx_free(m);
        return s;
    }
    bool grad = kiln_ctx_set_grad_enabled(ctx, false);
    kiln_status s = build(m);
    kiln_ctx_set_grad_enabled(ctx, grad);
    if (s) {
        kiln_onnx_free(m);
        return s;
    }
    *out = m;
    return KILN_OK;
}

kiln_status kiln_onnx_load_memory(kiln_ctx *ctx, const void *data, size_t len, const char *what,
                                  kiln_onnx_model **out) {
    if (out) *out = NULL;
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "kiln_onnx_load_memory: ctx is NULL");
    if (!out || (!data && len)) return kiln__fail(ctx, KILN_ERR_NULL, "kiln_onnx_load_memory: NULL argument");
    if (kiln_error_status(ctx) != KILN_OK) return kiln_error_status(ctx);
    return load(ctx, data, len, what ? what : "(memory)", NULL, out);
}

kiln_status kiln_onnx_load(kiln_ctx *ctx, const char *path, kiln_onnx_model **out) {
    if (out) *out = NULL;
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "kiln_onnx_load: ctx is NULL");
    if (!path || !out) return kiln__fail(ctx, KILN_ERR_NULL, "kiln_onnx_load: NULL argument");
    if (kiln_error_status(ctx) != KILN_OK) return kiln_error_status(ctx);
    FILE *f = fopen(path, "rb");
    if (!f) return kiln__fail(ctx, KILN_ERR_IO, "onnx %s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > ((off_t)2 << 30)) {
        fclose(f);
        return kiln__fail(ctx, KILN_ERR_IO, "onnx %s: not a regular file of at most 2 GiB (the protobuf limit)", path);
    }
    size_t len = (size_t)st.st_size;
    unsigned char *buf = malloc(len ? len : 1);
    if (!buf) {
        fclose(f);
        return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "onnx %s: out of host memory for %zu bytes", path, len);
    }
    size_t got = fread(buf, 1, len, f);
    fclose(f);
    if (got != len) {
        free(buf);
        return kiln__fail(ctx, KILN_ERR_IO, "onnx %s: short read (%zu of %zu bytes)", path, got, len);
    }
    char *dir = strdup(path);
    if (!dir) {
        free(buf);
        return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "onnx %s: out of host memory", path);
    }
    char *slash = strrchr(dir, '/');
    if (slash)
        *(slash == dir ? slash + 1 : slash) = 0;
    else
        strcpy(dir, ".");
    kiln_status s = load(ctx, buf, len, path, dir, out);
    free(buf), free(dir);
    return s;
}

kiln_status kiln_onnx_load_tensor(kiln_ctx *ctx, const char *path, kiln_tensor **out) {
    if (out) *out = NULL;
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "kiln_onnx_load_tensor: ctx is NULL");
    if (!path || !out) return kiln__fail(ctx, KILN_ERR_NULL, "kiln_onnx_load_tensor: NULL argument");
    FILE *f = fopen(path, "rb");
    if (!f) return kiln__fail(ctx, KILN_ERR_IO, "onnx tensor %s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > ((off_t)2 << 30)) {
        fclose(f);
        return kiln__fail(ctx, KILN_ERR_IO, "onnx tensor %s: not a regular file of at most 2 GiB", path);
    }
    size_t len = (size_t)st.st_size;
    unsigned char *buf = malloc(len ? len : 1);
    size_t got = buf ? fread(buf, 1, len, f) : 0;
    fclose(f);
    if (!buf || got != len) {
        free(buf);
        return kiln__fail(ctx, buf ? KILN_ERR_IO : KILN_ERR_HOST_OUT_OF_MEMORY, "onnx tensor %s: cannot read", path);
    }
    budget b = {.used = 0, .limit = ((size_t)64 << 20) + len * 8};
    b.a.alloc = b_alloc, b.a.free = b_free, b.a.allocator_data = &b;
    Onnx__TensorProto *tp = onnx__tensor_proto__unpack(&b.a, len, buf);
    free(buf);
    if (!tp) return kiln__fail(ctx, KILN_ERR_CORRUPT, "onnx tensor %s: not a valid TensorProto", path);
    onnx_val v = {0};
    kiln_status s = KILN_OK;
    if (tp->has_data_location && tp->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL)
        s = kiln__fail(ctx, KILN_ERR_UNSUPPORTED, "onnx tensor %s: external data", path);
    if (!s) s = kiln__onnx_tensor_to_val(ctx, path, tp, NULL, 0, &v);
    onnx__tensor_proto__free_unpacked(tp, &b.a);
    if (s) return s;
    if (v.t) {
        *out = v.t;
        return KILN_OK;
    }
    int64_t cnt = kiln__onnx_numel(&v);
    int32_t *i32 = malloc((size_t)(cnt > 0 ? cnt : 1) * sizeof *i32);
    for (int64_t i = 0; i32 && i < cnt; i++) {
        if (v.h[i] < INT32_MIN || v.h[i] > INT32_MAX) {
            free(i32);
            kiln__onnx_val_clear(&v);
            return kiln__fail(ctx, KILN_ERR_UNSUPPORTED, "onnx tensor %s: value %lld at %lld is outside the I32 range",
                              path, (long long)v.h[i], (long long)i);
        }
        i32[i] = (int32_t)v.h[i];
    }
    if (!i32) {
        kiln__onnx_val_clear(&v);
        return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "onnx tensor %s: out of host memory", path);
    }
    *out = kiln_from_host(ctx, i32, KILN_I32, v.ndim, v.shape);
    free(i32);
    kiln__onnx_val_clear(&v);
    return *out ? KILN_OK : kiln_error_status(ctx);
}

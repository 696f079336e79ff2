/* src/io/onnx_save.c - kiln_onnx_save: a module tree of built-in modules written as an ONNX
 * model (opset 17) with protobuf-c. The tree is walked as its forwards run it (Sequential in
 * order, the residual blocks as conv-bn-relu-conv-bn + shortcut, Add, Relu) while each layer
 * also runs on the traced example input, so every value's shape is known and the export
 * fails, naming the layer, where the module itself would. Parameters and buffers become
 * initializers under their state_dict names; the file is written atomically. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io_internal.h"
#include "kiln/onnx.h"
#include "../nn/nn_internal.h"
#include "onnx.pb-c.h"

#define OPSET 17
#define IR_VERSION 8 /* the IR of opset 17 (ONNX 1.12) */
#define FN "kiln_onnx_save"

/* ---- the export's state: everything allocated is freed together at the end ----------------- */

typedef struct ex {
    kiln_ctx *ctx;
    void **allocs;
    size_t nallocs, capallocs;
    Onnx__NodeProto **nodes;
    size_t nnodes, capnodes;
    Onnx__TensorProto **inits;
    size_t ninits, capinits;
} ex;

/* A value of the graph: its ONNX name and kiln's value of it on the example input. */
typedef struct val {
    const char *name;
    kiln_tensor *t;
    int batch_axis;       /* the symbolic "batch" dimension, -1 once flattened away */
    int seq_axis;         /* the symbolic "sequence" dimension of a recurrent layer's values, or -1 */
    const char *seq_name; /* that dimension's name; NULL: "sequence" */
} val;

static bool oom(ex *e) {
    kiln__fail(e->ctx, KILN_ERR_HOST_OUT_OF_MEMORY, FN ": out of host memory");
    return false;
}

/* Grows *arr (of *cap pointers) to hold n + 1. */
static bool grow(void ***arr, size_t *cap, size_t n) {
    if (n < *cap) return true;
    size_t nc = *cap ? 2 * *cap : 64;
    void **na = realloc(*arr, nc * sizeof *na);
    if (!na) return false;
    *arr = na, *cap = nc;
    return true;
}

/* n zeroed bytes owned by the export; NULL (error set) when out of memory. */
static void *ex_alloc(ex *e, size_t n) {
    void *p = calloc(1, n ? n : 1);
    if (!p || !grow(&e->allocs, &e->capallocs, e->nallocs)) {
        free(p);
        oom(e);
        return NULL;
    }
    e->allocs[e->nallocs++] = p;
    return p;
}

static char *ex_printf(ex *e, const char *fmt, ...) KILN__PRINTF(2, 3);
static char *ex_printf(ex *e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *s = n >= 0 ? ex_alloc(e, (size_t)n + 1) : NULL;
    if (!s) return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* "where" of an error: the module's path, or "the root module". */
static const char *where(const char *path) { return *path ? path : "(root)"; }

/* ---- nodes, attributes, initializers ---------------------------------------------------------- */

static bool name_used(const ex *e, const char *name) {
    for (size_t i = 0; i < e->nnodes; i++)
        if (!strcmp(e->nodes[i]->name, name)) return true;
    return false;
}

/* A node `op` of the module at path (torch's naming: "/layer1/0/conv1/Conv", a suffix "_1",
 * "_2" when a module emits the op again) with inputs in[0..nin) ("" for an omitted optional
 * one) and nout outputs "<name>_output_<k>". */
static Onnx__NodeProto *node_n(ex *e, const char *op, const char *path, int nin, const char *const *in, int nout) {
    Onnx__NodeProto *n = ex_alloc(e, sizeof *n);
    char **ins = ex_alloc(e, sizeof *ins * (size_t)(nin ? nin : 1));
    char **outs = ex_alloc(e, sizeof *outs * (size_t)nout);
    if (!n || !ins || !outs || !grow((void ***)&e->nodes, &e->capnodes, e->nnodes)) return oom(e), NULL;
    *n = (Onnx__NodeProto)ONNX__NODE_PROTO__INIT;
    char base[512];
    snprintf(base, sizeof base, "/%s%s%s", path, *path ? "/" : "", op);
    for (char *c = base; *c; c++)
        if (*c == '.') *c = '/';
    char *name = ex_printf(e, "%s", base);
    for (int k = 1; name && name_used(e, name); k++) name = ex_printf(e, "%s_%d", base, k);
    if (!name) return NULL;
    for (int k = 0; k < nout; k++)
        if (!(outs[k] = ex_printf(e, "%s_output_%d", name, k))) return NULL;
    for (int i = 0; i < nin; i++) ins[i] = (char *)in[i];
    n->name = name;
    n->op_type = (char *)op;
    n->n_input = (size_t)nin, n->input = ins;
    n->n_output = (size_t)nout, n->output = outs;
    e->nodes[e->nnodes++] = n;
    return n;
}

static Onnx__NodeProto *node(ex *e, const char *op, const char *path, int nin, const char *const *in) {
    for (int i = 0; i < nin; i++)
        if (!in[i]) return NULL; /* an input that failed to be made: its error is set */
    return node_n(e, op, path, nin, in, 1);
}

/* One node `op` on inputs in[0..nin) with its output's name, or NULL. */
static const char *op1(ex *e, const char *op, const char *path, int nin, const char *const *in) {
    Onnx__NodeProto *n = node(e, op, path, nin, in);
    return n ? n->output[0] : NULL;
}

static Onnx__AttributeProto *attr(ex *e, Onnx__NodeProto *n, const char *name, Onnx__AttributeProto__AttributeType t) {
    if (!n) return NULL;
    Onnx__AttributeProto *a = ex_alloc(e, sizeof *a);
    Onnx__AttributeProto **as = ex_alloc(e, sizeof *as * (n->n_attribute + 1));
    if (!a || !as) return NULL;
    *a = (Onnx__AttributeProto)ONNX__ATTRIBUTE_PROTO__INIT;
    a->name = (char *)name;
    a->has_type = 1, a->type = t;
    if (n->n_attribute) memcpy(as, n->attribute, sizeof *as * n->n_attribute);
    as[n->n_attribute++] = a;
    n->attribute = as;
    return a;
}

static bool attr_int(ex *e, Onnx__NodeProto *n, const char *name, int64_t v) {
    Onnx__AttributeProto *a = attr(e, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
    if (a) a->has_i = 1, a->i = v;
    return a != NULL;
}

static bool attr_float(ex *e, Onnx__NodeProto *n, const char *name, float v) {
    Onnx__AttributeProto *a = attr(e, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT);
    if (a) a->has_f = 1, a->f = v;
    return a != NULL;
}

static bool attr_ints(ex *e, Onnx__NodeProto *n, const char *name, int count, const int64_t *v) {
    Onnx__AttributeProto *a = attr(e, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
    int64_t *copy = a ? ex_alloc(e, sizeof *copy * (size_t)count) : NULL;
    if (!copy) return false;
    memcpy(copy, v, sizeof *copy * (size_t)count);
    a->n_ints = (size_t)count, a->ints = copy;
    return true;
}

static bool attr_strings(ex *e, Onnx__NodeProto *n, const char *name, int count, const char *const *v) {
    Onnx__AttributeProto *a = attr(e, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRINGS);
    ProtobufCBinaryData *copy = a ? ex_alloc(e, sizeof *copy * (size_t)count) : NULL;
    if (!copy) return false;
    for (int i = 0; i < count; i++) copy[i].data = (uint8_t *)v[i], copy[i].len = strlen(v[i]);
    a->n_strings = (size_t)count, a->strings = copy;
    return true;
}

static bool attr_string(ex *e, Onnx__NodeProto *n, const char *name, const char *v) {
    Onnx__AttributeProto *a = attr(e, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING);
    if (a) a->has_s = 1, a->s.data = (uint8_t *)v, a->s.len = strlen(v);
    return a != NULL;
}

static Onnx__TensorProto *tensor_proto(ex *e, const char *name, int32_t dtype, int ndim, const int64_t *shape) {
    Onnx__TensorProto *t = ex_alloc(e, sizeof *t);
    int64_t *dims = ex_alloc(e, sizeof *dims * (size_t)(ndim ? ndim : 1));
    if (!t || !dims) return NULL;
    *t = (Onnx__TensorProto)ONNX__TENSOR_PROTO__INIT;
    t->name = (char *)name;
    t->has_data_type = 1, t->data_type = dtype;
    if (ndim > 0) memcpy(dims, shape, sizeof *dims * (size_t)ndim);
    t->n_dims = (size_t)ndim, t->dims = dims;
    return t;
}

/* The parameter or buffer `tname` of m as an initializer named by its state_dict key
 * ("layer1.0.conv1.weight"), once; its name, or NULL (error set). */
static const char *init(ex *e, kiln_module *m, const char *path, const char *tname) {
    char *key = ex_printf(e, "%s%s%s", path, *path ? "." : "", tname);
    if (!key) return NULL;
    for (size_t i = 0; i < e->ninits; i++)
        if (!strcmp(e->inits[i]->name, key)) return e->inits[i]->name;
    kiln_tensor *t = kiln_module_find(m, tname);
    if (!t) {
        kiln__fail(e->ctx, KILN_ERR_INVALID_ARGUMENT, FN ": the %s at %s has no tensor '%s'", m->kind, where(path),
                   tname);
        return NULL;
    }
    if (t->dtype != KILN_F32 && t->dtype != KILN_I32) {
        kiln__fail(e->ctx, KILN_ERR_UNSUPPORTED, FN ": %s is %s; the exporter writes F32 and I32 tensors", key,
                   kiln_dtype_name(t->dtype));
        return NULL;
    }
    size_t bytes = (size_t)kiln_tensor_numel(t) * 4;
    Onnx__TensorProto *p = tensor_proto(
        e, key, t->dtype == KILN_F32 ? ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT : ONNX__TENSOR_PROTO__DATA_TYPE__INT32,
        t->ndim, t->shape);
    void *data = p ? ex_alloc(e, bytes) : NULL;
    if (!data || !grow((void ***)&e->inits, &e->capinits, e->ninits)) return oom(e), NULL;
    if (kiln_to_host(t, data, bytes) != KILN_OK) return NULL;
    /* raw_data is little-endian: kiln's hosts are (safetensors.c asserts it) */
    p->has_raw_data = 1, p->raw_data.len = bytes, p->raw_data.data = data;
    e->inits[e->ninits++] = p;
    return key;
}

/* A Constant node of float data [ndim, shape] (ndim 0: a scalar); its output's name. */
static const char *constant_f(ex *e, const char *path, int ndim, const int64_t *shape, const float *v, int64_t n) {
    Onnx__NodeProto *c = node(e, "Constant", path, 0, NULL);
    Onnx__AttributeProto *a = attr(e, c, "value", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR);
    Onnx__TensorProto *t = a ? tensor_proto(e, NULL, ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, ndim, shape) : NULL;
    float *data = t ? ex_alloc(e, sizeof *data * (size_t)n) : NULL;
    if (!data) return NULL;
    memcpy(data, v, sizeof *data * (size_t)n);
    t->n_float_data = (size_t)n, t->float_data = data;
    a->t = t;
    return c->output[0];
}

static const char *scalar(ex *e, const char *path, float v) { return constant_f(e, path, 0, NULL, &v, 1); }

/* A Constant node of int64 data [n]; its output's name. */
static const char *constant_i64(ex *e, const char *path, int n, const int64_t *v) {
    Onnx__NodeProto *c = node(e, "Constant", path, 0, NULL);
    Onnx__AttributeProto *a = attr(e, c, "value", ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR);
    Onnx__TensorProto *t = a ? tensor_proto(e, NULL, ONNX__TENSOR_PROTO__DATA_TYPE__INT64, 1, (int64_t[]){n}) : NULL;
    int64_t *data = t ? ex_alloc(e, sizeof *data * (size_t)n) : NULL;
    if (!data) return NULL;
    memcpy(data, v, sizeof *data * (size_t)n);
    t->n_int64_data = (size_t)n, t->int64_data = data;
    a->t = t;
    return c->output[0];
}

/* A node `op` on inputs (x's name first, then more) whose kiln value is y; x becomes it. */
static Onnx__NodeProto *step(ex *e, val *x, const char *op, const char *path, int nmore, const char *const *more,
                             kiln_tensor *y) {
    if (!y) return NULL; /* the layer failed on the traced input: its error names it */
    const char *in[8] = {x->name};
    for (int i = 0; i < nmore && i < 7; i++) {
        if (!more[i]) return NULL;
        in[i + 1] = more[i];
    }
    Onnx__NodeProto *n = node(e, op, path, 1 + nmore, in);
    if (!n) return NULL;
    x->name = n->output[0];
    x->t = y;
    return n;
}

/* ---- the modules ------------------------------------------------------------------------------- */

static bool emit(ex *e, kiln_module *m, const char *path, val *x);

static const char *child_path(ex *e, const char *path, const char *name) {
    return ex_printf(e, "%s%s%s", path, *path ? "." : "", name);
}

/* x's dims as int64 in pads order [begin_h, begin_w, end_h, end_w] from torch's symmetric padding. */
static void pads4(const int p[2], int64_t out[4]) { out[0] = out[2] = p[0], out[1] = out[3] = p[1]; }

static bool emit_conv(ex *e, kiln_module *m, const char *path, const kiln__layer_config *c, val *x) {
    kiln_ctx *ctx = e->ctx;
    const char *w = init(e, m, path, "weight"), *b = c->bias ? init(e, m, path, "bias") : NULL;
    if (!w || (c->bias && !b)) return false;
    kiln_tensor *y = kiln_forward(m, x->t);
    Onnx__NodeProto *n =
        step(e, x, c->transposed ? "ConvTranspose" : "Conv", path, c->bias ? 2 : 1, (const char *[]){w, b}, y);
    const kiln_conv2d_params *p = &c->conv;
    int64_t pads[4];
    pads4(p->padding, pads);
    bool ok = n && attr_ints(e, n, "kernel_shape", 2, (int64_t[]){c->kh, c->kw}) &&
              attr_ints(e, n, "strides", 2, (int64_t[]){p->stride[0], p->stride[1]}) &&
              attr_ints(e, n, "pads", 4, pads) &&
              attr_ints(e, n, "dilations", 2, (int64_t[]){p->dilation[0], p->dilation[1]}) &&
              attr_int(e, n, "group", p->groups);
    if (ok && c->transposed)
        ok = attr_ints(e, n, "output_padding", 2, (int64_t[]){p->output_padding[0], p->output_padding[1]});
    (void)ctx;
    return ok;
}

static bool emit_linear(ex *e, kiln_module *m, const char *path, const kiln__layer_config *c, val *x) {
    const char *w = init(e, m, path, "weight"), *b = c->bias ? init(e, m, path, "bias") : NULL;
    if (!w || (c->bias && !b)) return false;
    kiln_tensor *y = kiln_forward(m, x->t);
    if (!y) return false;
    if (x->t->ndim == 2) { /* y = x W^T + b */
        Onnx__NodeProto *n = step(e, x, "Gemm", path, c->bias ? 2 : 1, (const char *[]){w, b}, y);
        return n && attr_int(e, n, "transB", 1);
    }
    /* [..., in] inputs: MatMul with the transposed weight, then the bias */
    Onnx__NodeProto *t = node(e, "Transpose", path, 1, (const char *[]){w});
    if (!t || !attr_ints(e, t, "perm", 2, (int64_t[]){1, 0})) return false;
    if (!step(e, x, "MatMul", path, 1, (const char *const[]){t->output[0]}, y)) return false;
    return !c->bias || step(e, x, "Add", path, 1, (const char *[]){b}, y);
}

static bool emit_batchnorm(ex *e, kiln_module *m, const char *path, const kiln__layer_config *c, val *x) {
    const char *in[4] = {init(e, m, path, "weight"), init(e, m, path, "bias"), init(e, m, path, "running_mean"),
                         init(e, m, path, "running_var")};
    Onnx__NodeProto *n = step(e, x, "BatchNormalization", path, 4, in, kiln_forward(m, x->t));
    return n && attr_float(e, n, "epsilon", c->eps);
}

static bool emit_layernorm(ex *e, kiln_module *m, const char *path, const kiln__layer_config *c, val *x) {
    kiln_tensor *y = kiln_forward(m, x->t);
    if (!y) return false;
    const char *w, *b;
    if (c->bias) {
        w = init(e, m, path, "weight"), b = init(e, m, path, "bias");
    } else { /* LayerNormalization wants a scale: ones (and zeros) of the normalised shape */
        const int64_t *shape = x->t->shape + x->t->ndim - c->ndim;
        int64_t n = 1;
        for (int d = 0; d < c->ndim; d++) n *= shape[d];
        float *ones = ex_alloc(e, sizeof *ones * (size_t)n), *zeros = ex_alloc(e, sizeof *zeros * (size_t)n);
        if (!ones || !zeros) return false;
        for (int64_t i = 0; i < n; i++) ones[i] = 1.0f;
        w = constant_f(e, path, c->ndim, shape, ones, n), b = constant_f(e, path, c->ndim, shape, zeros, n);
    }
    Onnx__NodeProto *n = step(e, x, "LayerNormalization", path, 2, (const char *[]){w, b}, y);
    return n && attr_int(e, n, "axis", -c->ndim) && attr_float(e, n, "epsilon", c->eps);
}

static bool emit_pool(ex *e, kiln_module *m, const char *path, const kiln__layer_config *c, bool max, val *x) {
    const kiln_pool2d_params *p = &c->pool;
    if (!max && (p->dilation[0] != 1 || p->dilation[1] != 1)) {
        kiln__fail(e->ctx, KILN_ERR_UNSUPPORTED,
                   FN ": the AvgPool2d at %s has dilation (%d, %d): ONNX's AveragePool has none before opset 19",
                   where(path), p->dilation[0], p->dilation[1]);
        return false;
    }
    Onnx__NodeProto *n = step(e, x, max ? "MaxPool" : "AveragePool", path, 0, NULL, kiln_forward(m, x->t));
    int64_t pads[4];
    pads4(p->padding, pads);
    bool ok = n && attr_ints(e, n, "kernel_shape", 2, (int64_t[]){p->kernel[0], p->kernel[1]}) &&
              attr_ints(e, n, "strides", 2, (int64_t[]){p->stride[0], p->stride[1]}) &&
              attr_ints(e, n, "pads", 4, pads) && attr_int(e, n, "ceil_mode", p->ceil_mode);
    if (ok && max) ok = attr_ints(e, n, "dilations", 2, (int64_t[]){p->dilation[0], p->dilation[1]});
    if (ok && !max) ok = attr_int(e, n, "count_include_pad", p->count_include_pad);
    return ok;
}

/* torch.flatten(x, start, end) on the traced value y = flatten(x): ONNX's Flatten where it is
 * the same (start 1, end the last dim: ONNX's output is always 2-D), a Reshape otherwise. */
static bool emit_flatten(ex *e, const char *path, int start, int end, kiln_tensor *y, val *x) {
    if (!y) return false;
    int nd = x->t->ndim;
    if (start < 0) start += nd;
    if (end < 0) end += nd;
    if (nd == 0) start = end = 0;
    if (start == 1 && end == nd - 1) {
        Onnx__NodeProto *n = step(e, x, "Flatten", path, 0, NULL, y);
        return n && attr_int(e, n, "axis", 1);
    }
    int64_t shape[KILN_MAX_DIMS + 1];
    int k = 0;
    for (int d = 0; d < start; d++) shape[k++] = 0; /* copy the input's (the batch among them) */
    shape[k++] = -1;
    for (int d = end + 1; d < nd; d++) shape[k++] = x->t->shape[d];
    const char *s = constant_i64(e, path, k, shape);
    int batch = x->batch_axis;
    if (!step(e, x, "Reshape", path, 1, &s, y)) return false;
    x->batch_axis = batch < start ? batch : batch > end ? batch - (end - start) : -1;
    return true;
}

/* The nodes of activation c->act on x, whose traced value is y. */
static bool act_nodes(ex *e, const char *path, const kiln__layer_config *c, val *x, kiln_tensor *y) {
    if (!y) return false;
    float p = c->act_param;
    Onnx__NodeProto *n;
    switch (c->act) {
    case KILN_ACT_RELU: return step(e, x, "Relu", path, 0, NULL, y) != NULL;
    case KILN_ACT_SIGMOID: return step(e, x, "Sigmoid", path, 0, NULL, y) != NULL;
    case KILN_ACT_TANH: return step(e, x, "Tanh", path, 0, NULL, y) != NULL;
    case KILN_ACT_LEAKY_RELU: n = step(e, x, "LeakyRelu", path, 0, NULL, y); return n && attr_float(e, n, "alpha", p);
    case KILN_ACT_ELU: n = step(e, x, "Elu", path, 0, NULL, y); return n && attr_float(e, n, "alpha", p);
    case KILN_ACT_SOFTMAX:
    case KILN_ACT_LOG_SOFTMAX:
        n = step(e, x, c->act == KILN_ACT_SOFTMAX ? "Softmax" : "LogSoftmax", path, 0, NULL, y);
        return n && attr_int(e, n, "axis", (int64_t)p);
    case KILN_ACT_SOFTPLUS: {
        /* torch's threshold (20) makes no difference in F32: log1p(exp(x)) rounds to x there */
        if (p == 1.0f) return step(e, x, "Softplus", path, 0, NULL, y) != NULL;
        const char *beta = scalar(e, path, p);
        val h = *x;
        return step(e, &h, "Mul", path, 1, &beta, y) && step(e, &h, "Softplus", path, 0, NULL, y) &&
               step(e, &h, "Div", path, 1, &beta, y) && (*x = h, true);
    }
    case KILN_ACT_GELU:
    case KILN_ACT_GELU_TANH: {
        /* opset 17 has no Gelu (it came in 20): erf form 0.5 x (1 + erf(x / sqrt 2)); tanh
         * form 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
        const char *in = x->name;
        val h = *x;
        bool ok;
        if (c->act == KILN_ACT_GELU) {
            const char *r2 = scalar(e, path, 1.4142135623730951f);
            ok = step(e, &h, "Div", path, 1, &r2, y) && step(e, &h, "Erf", path, 0, NULL, y);
        } else {
            const char *k = scalar(e, path, 0.044715f), *three = scalar(e, path, 3.0f),
                       *s = scalar(e, path, 0.7978845608028654f);
            ok = step(e, &h, "Pow", path, 1, &three, y) && step(e, &h, "Mul", path, 1, &k, y) &&
                 step(e, &h, "Add", path, 1, &in, y) && step(e, &h, "Mul", path, 1, &s, y) &&
                 step(e, &h, "Tanh", path, 0, NULL, y);
        }
        const char *one = scalar(e, path, 1.0f), *half = scalar(e, path, 0.5f);
        ok = ok && step(e, &h, "Add", path, 1, &one, y) && step(e, &h, "Mul", path, 1, &in, y) &&
             step(e, &h, "Mul", path, 1, &half, y);
        if (ok) *x = h;
        return ok;
    }
    }
    return false;
}

static bool emit_activation(ex *e, kiln_module *m, const char *path, const kiln__layer_config *c, val *x) {
    return act_nodes(e, path, c, x, kiln_forward(m, x->t));
}

static bool emit_layer(ex *e, kiln_module *m, const char *path, const kiln__layer_config *c, val *x) {
    const char *k = m->kind;
    if (!strcmp(k, "Linear")) return emit_linear(e, m, path, c, x);
    if (!strcmp(k, "Conv2d") || !strcmp(k, "ConvTranspose2d")) return emit_conv(e, m, path, c, x);
    if (!strcmp(k, "BatchNorm1d") || !strcmp(k, "BatchNorm2d")) return emit_batchnorm(e, m, path, c, x);
    if (!strcmp(k, "LayerNorm")) return emit_layernorm(e, m, path, c, x);
    if (!strcmp(k, "MaxPool2d") || !strcmp(k, "AvgPool2d")) return emit_pool(e, m, path, c, k[0] == 'M', x);
    if (!strcmp(k, "AdaptiveAvgPool2d"))
        return step(e, x, "GlobalAveragePool", path, 0, NULL, kiln_forward(m, x->t)) != NULL;
    if (!strcmp(k, "Flatten")) return emit_flatten(e, path, c->start_dim, c->end_dim, kiln_forward(m, x->t), x);
    if (!strcmp(k, "Dropout")) { /* the identity in eval mode: no node */
        kiln_tensor *y = kiln_forward(m, x->t);
        x->t = y;
        return y != NULL;
    }
    if (!strcmp(k, "Embedding")) {
        const char *w = init(e, m, path, "weight");
        kiln_tensor *y = kiln_forward(m, x->t);
        if (!w || !y) return false;
        Onnx__NodeProto *n = node(e, "Gather", path, 2, (const char *[]){w, x->name});
        if (!n || !attr_int(e, n, "axis", 0)) return false;
        x->name = n->output[0], x->t = y;
        return true;
    }
    return emit_activation(e, m, path, c, x);
}

/* Child `name` of m, or NULL. */
static kiln_module *child(kiln_module *m, const char *name) {
    for (int k = 0; k < m->nchildren; k++)
        if (!strcmp(m->children[k].name, name)) return m->children[k].m;
    return NULL;
}

/* A BasicBlock or Bottleneck of models.c: conv1-bn1-relu-conv2-bn2 (Bottleneck: -relu-conv3-
 * bn3), the shortcut (downsample or the input), Add, Relu (as block_forward runs them). */
static bool emit_block(ex *e, kiln_module *m, const char *path, val *x) {
    bool bottleneck = !strcmp(m->kind, "Bottleneck");
    static const char *const basic[] = {"conv1", "bn1", "relu", "conv2", "bn2"};
    static const char *const bneck[] = {"conv1", "bn1", "relu", "conv2", "bn2", "relu", "conv3", "bn3"};
    const char *const *seq = bottleneck ? bneck : basic;
    int n = bottleneck ? 8 : 5;
    val h = *x, id = *x;
    for (int i = 0; i < n; i++) {
        const char *cp = child_path(e, path, seq[i]);
        if (!cp || !emit(e, child(m, seq[i]), cp, &h)) return false;
    }
    kiln_module *ds = child(m, "downsample");
    const char *dp = ds ? child_path(e, path, "downsample") : NULL;
    if (ds && (!dp || !emit(e, ds, dp, &id))) return false;
    if (!step(e, &h, "Add", path, 1, &id.name, kiln_add(e->ctx, h.t, id.t))) return false;
    const char *rp = child_path(e, path, "relu");
    if (!rp || !emit(e, child(m, "relu"), rp, &h)) return false;
    *x = h;
    return true;
}

/* ---- Transformer encoders ------------------------------------------------------------------ */

/* q, k or v of the attention in heads: [L, B, E] -> [L, B, H, d] -> [B, H, L, d] (batch_first:
 * [B, L, H, d] -> [B, H, L, d]); the keys straight to [B, H, d, S]. */
static const char *to_heads(ex *e, const char *path, const char *x, const char *hshape, bool bf, bool key) {
    const char *r = op1(e, "Reshape", path, 2, (const char *[]){x, hshape});
    Onnx__NodeProto *t = node(e, "Transpose", path, 1, &r);
    int64_t kperm[4] = {1, 2, 3, 0}, perm[4] = {1, 2, 0, 3};
    if (bf) kperm[0] = 0, kperm[1] = 2, kperm[2] = 3, kperm[3] = 1, perm[0] = 0, perm[1] = 2, perm[2] = 1;
    if (!t || !attr_ints(e, t, "perm", 4, key ? kperm : perm)) return NULL;
    return t->output[0];
}

/* The MultiheadAttention mha (at path) on query q, key k and value v, unmasked, written out:
 * the projections (self-attention with packed weights: one MatMul with in_proj_weight and
 * a Split; otherwise in_proj_weight split into its q, k and v rows, or q/k/v_proj_weight),
 * heads [B, H, T, d], softmax(q k^T / sqrt d) v, merged, out_proj. q becomes its output
 * (traced by the module itself on the three values). */
static bool emit_attention(ex *e, kiln_module *mha, const char *path, val *q, const val *k, const val *v) {
    int64_t E, H;
    kiln_mha_params p;
    bool packed;
    if (!kiln__mha_config_of(mha, &E, &H, &p, &packed)) {
        kiln__fail(e->ctx, KILN_ERR_INVALID_ARGUMENT, FN ": no MultiheadAttention at %s", where(path));
        return false;
    }
    kiln_tensor *y = NULL;
    if (kiln_module_forward(mha, 3, (kiln_tensor *[]){q->t, k->t, v->t}, 1, &y) != KILN_OK) return false;
    bool bf = p.batch_first;
    const char *heads[3], *hshape = constant_i64(e, path, 4, (const int64_t[]){0, 0, H, E / H});
    if (packed && !strcmp(q->name, k->name) && !strcmp(q->name, v->name)) {
        /* self-attention: qkv = x in_proj_weight^T (+ in_proj_bias), split in three */
        const char *w = init(e, mha, path, "in_proj_weight");
        Onnx__NodeProto *wt = node(e, "Transpose", path, 1, &w);
        if (!wt || !attr_ints(e, wt, "perm", 2, (const int64_t[]){1, 0})) return false;
        const char *qkv = op1(e, "MatMul", path, 2, (const char *[]){q->name, wt->output[0]});
        if (p.bias) qkv = op1(e, "Add", path, 2, (const char *[]){qkv, init(e, mha, path, "in_proj_bias")});
        if (!qkv) return false;
        Onnx__NodeProto *sp = node_n(e, "Split", path, 1, &qkv, 3);
        if (!sp || !attr_int(e, sp, "axis", 2)) return false;
        for (int j = 0; j < 3; j++) heads[j] = to_heads(e, path, sp->output[j], hshape, bf, j == 1);
    } else {
        const char *ws[3], *bs[3] = {NULL, NULL, NULL};
        if (packed) {
            const char *w = init(e, mha, path, "in_proj_weight");
            Onnx__NodeProto *sw = w ? node_n(e, "Split", path, 1, &w, 3) : NULL;
            if (!sw || !attr_int(e, sw, "axis", 0)) return false;
            for (int j = 0; j < 3; j++) ws[j] = sw->output[j];
        } else {
            static const char *const names[3] = {"q_proj_weight", "k_proj_weight", "v_proj_weight"};
            for (int j = 0; j < 3; j++)
                if (!(ws[j] = init(e, mha, path, names[j]))) return false;
        }
        if (p.bias) {
            const char *b = init(e, mha, path, "in_proj_bias");
            Onnx__NodeProto *sb = b ? node_n(e, "Split", path, 1, &b, 3) : NULL;
            if (!sb || !attr_int(e, sb, "axis", 0)) return false;
            for (int j = 0; j < 3; j++) bs[j] = sb->output[j];
        }
        const val *xs[3] = {q, k, v};
        for (int j = 0; j < 3; j++) {
            Onnx__NodeProto *wt = node(e, "Transpose", path, 1, &ws[j]);
            if (!wt || !attr_ints(e, wt, "perm", 2, (const int64_t[]){1, 0})) return false;
            const char *pj = op1(e, "MatMul", path, 2, (const char *[]){xs[j]->name, wt->output[0]});
            if (p.bias) pj = op1(e, "Add", path, 2, (const char *[]){pj, bs[j]});
            if (!pj) return false;
            heads[j] = to_heads(e, path, pj, hshape, bf, j == 1);
        }
    }
    for (int j = 0; j < 3; j++)
        if (!heads[j]) return false;
    const char *scale = scalar(e, path, (float)(1.0 / sqrt((double)(E / H))));
    const char *sc = op1(e, "Mul", path, 2, (const char *[]){op1(e, "MatMul", path, 2, heads), scale});
    Onnx__NodeProto *sm = node(e, "Softmax", path, 1, &sc);
    if (!sm || !attr_int(e, sm, "axis", -1)) return false;
    const char *att = op1(e, "MatMul", path, 2, (const char *[]){sm->output[0], heads[2]});
    Onnx__NodeProto *mt = node(e, "Transpose", path, 1, &att); /* [B, H, L, d] -> [L, B, H, d] */
    if (!mt || !attr_ints(e, mt, "perm", 4, bf ? (const int64_t[]){0, 2, 1, 3} : (const int64_t[]){2, 0, 1, 3}))
        return false;
    const char *mshape = constant_i64(e, path, 3, (const int64_t[]){0, 0, E});
    val o = {op1(e, "Reshape", path, 2, (const char *[]){mt->output[0], mshape}), y, q->batch_axis, q->seq_axis,
             q->seq_name};
    if (!o.name) return false;
    /* out_proj's nodes, traced on a tensor of the merged shape (the output's), then the real value */
    kiln__layer_config lc;
    kiln_module *op = kiln_module_find_child(mha, "out_proj");
    const char *opath = child_path(e, path, "out_proj");
    if (!op || !opath || !kiln__layer_config_of(op, &lc) || !emit_layer(e, op, opath, &lc, &o)) return false;
    q->name = o.name, q->t = y;
    return true;
}

/* A child layer (Linear, LayerNorm) of the encoder layer m at path. */
static bool emit_child(ex *e, kiln_module *m, const char *path, const char *name, val *x) {
    const char *cp = child_path(e, path, name);
    return cp && emit(e, kiln_module_find_child(m, name), cp, x);
}

/* TransformerEncoderLayer (layer_forward, unmasked, eval): post-norm
 * x = norm1(x + sa(x)); x = norm2(x + ff(x)), or pre-norm x = x + sa(norm1(x));
 * x = x + ff(norm2(x)); ff = linear2(act(linear1(.))). */
static bool emit_encoder_layer(ex *e, kiln_module *m, const char *path, val *x) {
    kiln_transformer_params p;
    int nl;
    bool fn;
    kiln__encoder_config_of(m, &p, &nl, &fn);
    kiln_ctx *ctx = e->ctx;
    const char *sa_path = child_path(e, path, "self_attn");
    kiln_module *sa = kiln_module_find_child(m, "self_attn");
    kiln__layer_config act = {.act = p.activation == KILN_ACT_GELU ? KILN_ACT_GELU : KILN_ACT_RELU};
    for (int part = 0; part < 2; part++) {
        val h = *x;
        if (p.norm_first && !emit_child(e, m, path, part ? "norm2" : "norm1", &h)) return false;
        if (part == 0) {
            if (!sa_path || !emit_attention(e, sa, sa_path, &h, &h, &h)) return false;
        } else {
            if (!emit_child(e, m, path, "linear1", &h)) return false;
            kiln_tensor *a = act.act == KILN_ACT_GELU ? kiln_gelu(ctx, h.t, false) : kiln_relu(ctx, h.t);
            if (!act_nodes(e, path, &act, &h, a) || !emit_child(e, m, path, "linear2", &h)) return false;
        }
        if (!step(e, x, "Add", path, 1, &h.name, kiln_add(ctx, x->t, h.t))) return false;
        if (!p.norm_first && !emit_child(e, m, path, part ? "norm2" : "norm1", x)) return false;
    }
    return true;
}

/* TransformerEncoder: layers.0 .. layers.(n-1), then norm when it has one. */
static bool emit_encoder(ex *e, kiln_module *m, const char *path, val *x) {
    kiln_transformer_params p;
    int nl;
    bool fn;
    kiln__encoder_config_of(m, &p, &nl, &fn);
    if (nl == 0) return emit_encoder_layer(e, m, path, x);
    for (int i = 0; i < nl; i++) {
        char name[32];
        snprintf(name, sizeof name, "layers.%d", i);
        const char *cp = child_path(e, path, name);
        if (!cp || !emit_encoder_layer(e, kiln_module_find_child(m, name), cp, x)) return false;
    }
    return !fn || emit_child(e, m, path, "norm", x);
}

/* TransformerDecoderLayer (layer_forward, unmasked, eval) on tgt x and memory mem: post-norm
 * x = norm1(x + sa(x)); x = norm2(x + mha(x, mem)); x = norm3(x + ff(x)), or pre-norm
 * x = x + sa(norm1(x)); x = x + mha(norm2(x), mem); x = x + ff(norm3(x)). */
static bool emit_decoder_layer(ex *e, kiln_module *m, const char *path, val *x, const val *mem) {
    kiln_transformer_params p;
    int nl;
    bool fn;
    kiln__decoder_config_of(m, &p, &nl, &fn);
    kiln_ctx *ctx = e->ctx;
    kiln__layer_config act = {.act = p.activation == KILN_ACT_GELU ? KILN_ACT_GELU : KILN_ACT_RELU};
    static const char *const norms[3] = {"norm1", "norm2", "norm3"}, *const attns[2] = {"self_attn", "multihead_attn"};
    for (int part = 0; part < 3; part++) {
        val h = *x;
        if (p.norm_first && !emit_child(e, m, path, norms[part], &h)) return false;
        if (part < 2) {
            const char *ap = child_path(e, path, attns[part]);
            kiln_module *a = kiln_module_find_child(m, attns[part]);
            if (!ap || !emit_attention(e, a, ap, &h, part ? mem : &h, part ? mem : &h)) return false;
        } else {
            if (!emit_child(e, m, path, "linear1", &h)) return false;
            kiln_tensor *a = act.act == KILN_ACT_GELU ? kiln_gelu(ctx, h.t, false) : kiln_relu(ctx, h.t);
            if (!act_nodes(e, path, &act, &h, a) || !emit_child(e, m, path, "linear2", &h)) return false;
        }
        if (!step(e, x, "Add", path, 1, &h.name, kiln_add(ctx, x->t, h.t))) return false;
        if (!p.norm_first && !emit_child(e, m, path, norms[part], x)) return false;
    }
    return true;
}

/* TransformerDecoder: layers.0 .. layers.(n-1) each on memory, then norm when it has one. */
static bool emit_decoder(ex *e, kiln_module *m, const char *path, val *x, const val *mem) {
    kiln_transformer_params p;
    int nl;
    bool fn;
    kiln__decoder_config_of(m, &p, &nl, &fn);
    if (nl == 0) return emit_decoder_layer(e, m, path, x, mem);
    for (int i = 0; i < nl; i++) {
        char name[32];
        snprintf(name, sizeof name, "layers.%d", i);
        const char *cp = child_path(e, path, name);
        if (!cp || !emit_decoder_layer(e, kiln_module_find_child(m, name), cp, x, mem)) return false;
    }
    return !fn || emit_child(e, m, path, "norm", x);
}

/* PositionalEmbedding / SinusoidalPositionalEncoding (pos_forward): x + table[:T] with T
 * read from x's shape (Shape, Slice), [T, 1, D] for time-major x. */
static bool emit_positional(ex *e, kiln_module *m, const char *path, bool learned, bool bf, val *x) {
    kiln_tensor *y = kiln_forward(m, x->t);
    if (!y) return false;
    const char *table = init(e, m, path, learned ? "weight" : "pe");
    Onnx__NodeProto *sh = node(e, "Shape", path, 1, &x->name);
    if (!table || !sh || !attr_int(e, sh, "start", bf ? 1 : 0) || !attr_int(e, sh, "end", bf ? 2 : 1)) return false;
    const char *zero = constant_i64(e, path, 1, (const int64_t[]){0});
    const char *pe = op1(e, "Slice", path, 4, (const char *[]){table, zero, sh->output[0], zero});
    if (!bf) pe = op1(e, "Unsqueeze", path, 2, (const char *[]){pe, constant_i64(e, path, 1, (const int64_t[]){1})});
    return step(e, x, "Add", path, 1, &pe, y) != NULL;
}

/* A ResNet of models.c: its children in order, flattened before fc (resnet_forward). */
static bool emit_resnet(ex *e, kiln_module *m, const char *path, val *x) {
    for (int k = 0; k < m->nchildren; k++) {
        const char *name = m->children[k].name;
        if (!strcmp(name, "fc") && !emit_flatten(e, path, 1, -1, kiln_flatten(e->ctx, x->t, 1, -1), x)) return false;
        const char *cp = child_path(e, path, name);
        if (!cp || !emit(e, m->children[k].m, cp, x)) return false;
    }
    return true;
}

static bool emit(ex *e, kiln_module *m, const char *path, val *x) {
    if (!m) {
        kiln__fail(e->ctx, KILN_ERR_INVALID_ARGUMENT, FN ": no module at %s", where(path));
        return false;
    }
    kiln__layer_config c;
    if (kiln__layer_config_of(m, &c)) return emit_layer(e, m, path, &c, x);
    if (kiln__is_sequential(m)) {
        for (int k = 0; k < m->nchildren; k++) {
            const char *cp = child_path(e, path, m->children[k].name);
            if (!cp || !emit(e, m->children[k].m, cp, x)) return false;
        }
        return true;
    }
    if (kiln__is_resnet_part(m))
        return !strcmp(m->kind, "ResNet") ? emit_resnet(e, m, path, x) : emit_block(e, m, path, x);
    kiln_transformer_params tp;
    int nl;
    bool fn;
    if (kiln__encoder_config_of(m, &tp, &nl, &fn)) return emit_encoder(e, m, path, x);
    bool learned, bf;
    if (kiln__pos_config_of(m, &learned, &bf)) return emit_positional(e, m, path, learned, bf, x);
    if (kiln__decoder_config_of(m, &tp, &nl, &fn) ||
        kiln__mha_config_of(m, &(int64_t){0}, &(int64_t){0}, &(kiln_mha_params){0}, &(bool){0})) {
        kiln__fail(e->ctx, KILN_ERR_UNSUPPORTED,
                   FN ": the %s at %s takes %d inputs: it is exported only as the model itself "
                      "(kiln_onnx_save_inputs)",
                   m->kind, where(path), m->def.num_inputs);
        return false;
    }
    kiln_rnn_mode mode;
    int64_t isz, hsz;
    kiln_rnn_params rp;
    if (kiln__rnn_config_of(m, &mode, &isz, &hsz, &rp)) {
        kiln__fail(e->ctx, KILN_ERR_UNSUPPORTED,
                   FN ": the %s at %s is exported only as the model itself (its forward gives %d outputs)", m->kind,
                   where(path), mode == KILN_RNN_LSTM ? 3 : 2);
        return false;
    }
    kiln__fail(e->ctx, KILN_ERR_UNSUPPORTED,
               FN ": the %s at %s has no ONNX export (exported: Sequential, ResNet, BasicBlock, Bottleneck and the "
                  "layers Linear, Conv2d, ConvTranspose2d, BatchNorm1d/2d, LayerNorm, MaxPool2d, AvgPool2d, "
                  "AdaptiveAvgPool2d, Flatten, Dropout, Embedding, the activations and the positional encodings; "
                  "TransformerEncoder(Layer); MultiheadAttention, TransformerDecoder(Layer), RNN, LSTM and GRU as "
                  "the model itself)",
               m->kind, where(path));
    return false;
}

/* ---- recurrent layers ---------------------------------------------------------------------- */

static const char *unsqueeze0(ex *e, const char *path, const char *x) {
    const char *axes = constant_i64(e, path, 1, (const int64_t[]){0});
    return op1(e, "Unsqueeze", path, 2, (const char *[]){x, axes});
}

static const char *concat0(ex *e, const char *path, int n, const char *const *in) {
    if (n == 1) return in[0];
    Onnx__NodeProto *c = node(e, "Concat", path, n, in);
    return c && attr_int(e, c, "axis", 0) ? c->output[0] : NULL;
}

/* A torch weight or bias of `gates` row blocks in torch's gate order, its blocks in ONNX's:
 * order[k] is the torch block that becomes ONNX's block k (Split, Concat: the initializer
 * keeps its state_dict name and layout). */
static const char *regate(ex *e, const char *path, const char *w, int gates, const int *order) {
    if (!w || gates == 1) return w;
    Onnx__NodeProto *s = node_n(e, "Split", path, 1, &w, gates);
    if (!s || !attr_int(e, s, "axis", 0)) return NULL;
    const char *parts[4];
    for (int k = 0; k < gates; k++) parts[k] = s->output[order[k]];
    return concat0(e, path, gates, parts);
}

/* torch.nn.RNN/LSTM/GRU as one ONNX RNN/LSTM/GRU node per layer (both directions in it),
 * time-major inside (layout 0; batch_first transposed in and out), each layer's Y [T, D, B, H]
 * made [T, B, D * H] for the next; outs: output, h_n [L * D, B, H] (, c_n). */
static bool emit_rnn(ex *e, kiln_module *m, val *x, val *outs, int *nout) {
    kiln_rnn_mode mode;
    int64_t isz, hsz;
    kiln_rnn_params p;
    kiln__rnn_config_of(m, &mode, &isz, &hsz, &p);
    bool lstm = mode == KILN_RNN_LSTM, gru = mode == KILN_RNN_GRU;
    kiln_tensor *y = NULL, *hn = NULL, *cn = NULL;
    if (kiln_nn_rnn_forward(m, x->t, NULL, NULL, NULL, &y, &hn, lstm ? &cn : NULL) != KILN_OK) return false;
    static const int lstm_order[4] = {0, 3, 1, 2}; /* ONNX i, o, f, c from torch's i, f, g, o */
    static const int gru_order[3] = {1, 0, 2};     /* ONNX z, r, h from torch's r, z, n */
    const int *order = lstm ? lstm_order : gru ? gru_order : NULL;
    int gates = lstm ? 4 : gru ? 3 : 1, D = p.bidirectional ? 2 : 1, L = p.num_layers;
    const char *op = lstm ? "LSTM" : gru ? "GRU" : "RNN", *path = "";
    const char *cur = x->name, *hs[2 * 64], *cs[2 * 64];
    if (L > 64) {
        kiln__fail(e->ctx, KILN_ERR_UNSUPPORTED, FN ": the %s has %d layers; the exporter writes up to 64", m->kind, L);
        return false;
    }
    if (p.batch_first) {
        Onnx__NodeProto *t = node(e, "Transpose", path, 1, &cur);
        if (!t || !attr_ints(e, t, "perm", 3, (const int64_t[]){1, 0, 2})) return false;
        cur = t->output[0];
    }
    for (int l = 0; l < L; l++) {
        const char *W[2], *R[2], *B[2];
        for (int d = 0; d < D; d++) {
            char nm[4][64];
            const char *sfx = d ? "_reverse" : "";
            snprintf(nm[0], sizeof nm[0], "weight_ih_l%d%s", l, sfx);
            snprintf(nm[1], sizeof nm[1], "weight_hh_l%d%s", l, sfx);
            snprintf(nm[2], sizeof nm[2], "bias_ih_l%d%s", l, sfx);
            snprintf(nm[3], sizeof nm[3], "bias_hh_l%d%s", l, sfx);
            W[d] = unsqueeze0(e, path, regate(e, path, init(e, m, "", nm[0]), gates, order));
            R[d] = unsqueeze0(e, path, regate(e, path, init(e, m, "", nm[1]), gates, order));
            if (p.bias) {
                const char *b2[2] = {regate(e, path, init(e, m, "", nm[2]), gates, order),
                                     regate(e, path, init(e, m, "", nm[3]), gates, order)};
                B[d] = b2[0] && b2[1] ? unsqueeze0(e, path, concat0(e, path, 2, b2)) : NULL;
            }
        }
        const char *in[4] = {cur, concat0(e, path, D, W), concat0(e, path, D, R), p.bias ? concat0(e, path, D, B) : ""};
        for (int i = 0; i < 4; i++)
            if (!in[i]) return false;
        Onnx__NodeProto *n = node_n(e, op, path, p.bias ? 4 : 3, in, lstm ? 3 : 2);
        if (!n || !attr_int(e, n, "hidden_size", hsz) ||
            !attr_string(e, n, "direction", p.bidirectional ? "bidirectional" : "forward"))
            return false;
        if (gru && !attr_int(e, n, "linear_before_reset", 1)) return false;
        if (mode == KILN_RNN_RNN_RELU && !attr_strings(e, n, "activations", D, (const char *[]){"Relu", "Relu"}))
            return false;
        hs[l] = n->output[1];
        if (lstm) cs[l] = n->output[2];
        Onnx__NodeProto *t = node(e, "Transpose", path, 1, (const char *const *)&n->output[0]);
        if (!t || !attr_ints(e, t, "perm", 4, (const int64_t[]){0, 2, 1, 3})) return false;
        const char *shape = constant_i64(e, path, 3, (const int64_t[]){0, 0, -1});
        cur = op1(e, "Reshape", path, 2, (const char *[]){t->output[0], shape});
        if (!cur) return false;
    }
    if (p.batch_first) {
        Onnx__NodeProto *t = node(e, "Transpose", path, 1, &cur);
        if (!t || !attr_ints(e, t, "perm", 3, (const int64_t[]){1, 0, 2})) return false;
        cur = t->output[0];
    }
    outs[0] = (val){cur, y, p.batch_first ? 0 : 1, p.batch_first ? 1 : 0, NULL};
    outs[1] = (val){concat0(e, path, L, hs), hn, 1, -1, NULL};
    if (lstm) outs[2] = (val){concat0(e, path, L, cs), cn, 1, -1, NULL};
    *nout = lstm ? 3 : 2;
    for (int k = 0; k < *nout; k++)
        if (!outs[k].name) return false;
    return true;
}

/* ---- the model and the file ------------------------------------------------------------------- */

static Onnx__ValueInfoProto *value_info(ex *e, const char *name, const val *x) {
    const kiln_tensor *t = x->t;
    int batch_axis = x->batch_axis;
    Onnx__ValueInfoProto *v = ex_alloc(e, sizeof *v);
    Onnx__TypeProto *tp = ex_alloc(e, sizeof *tp);
    Onnx__TypeProto__Tensor *tt = ex_alloc(e, sizeof *tt);
    Onnx__TensorShapeProto *sp = ex_alloc(e, sizeof *sp);
    Onnx__TensorShapeProto__Dimension **dims = ex_alloc(e, sizeof *dims * (size_t)(t->ndim ? t->ndim : 1));
    if (!v || !tp || !tt || !sp || !dims) return NULL;
    for (int d = 0; d < t->ndim; d++) {
        Onnx__TensorShapeProto__Dimension *dim = ex_alloc(e, sizeof *dim);
        if (!dim) return NULL;
        *dim = (Onnx__TensorShapeProto__Dimension)ONNX__TENSOR_SHAPE_PROTO__DIMENSION__INIT;
        if (d == batch_axis || d == x->seq_axis) {
            dim->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
            dim->dim_param = d == batch_axis ? "batch" : x->seq_name ? (char *)x->seq_name : "sequence";
        } else if (batch_axis >= 0 || t->ndim == 0) {
            dim->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
            dim->dim_value = t->shape[d];
        } /* else: the batch was flattened into some dim; left unknown */
        dims[d] = dim;
    }
    *sp = (Onnx__TensorShapeProto)ONNX__TENSOR_SHAPE_PROTO__INIT;
    sp->n_dim = (size_t)t->ndim, sp->dim = dims;
    *tt = (Onnx__TypeProto__Tensor)ONNX__TYPE_PROTO__TENSOR__INIT;
    tt->has_elem_type = 1;
    tt->elem_type = t->dtype == KILN_I32 ? ONNX__TENSOR_PROTO__DATA_TYPE__INT32 : ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    tt->shape = sp;
    *tp = (Onnx__TypeProto)ONNX__TYPE_PROTO__INIT;
    tp->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE, tp->tensor_type = tt;
    *v = (Onnx__ValueInfoProto)ONNX__VALUE_INFO_PROTO__INIT;
    v->name = (char *)name, v->type = tp;
    return v;
}

/* protobuf-c's output buffer onto a FILE; the first failed write is kept. */
typedef struct file_buffer {
    ProtobufCBuffer base;
    FILE *fp;
    bool failed;
    int err;
} file_buffer;

static void file_append(ProtobufCBuffer *b, size_t len, const uint8_t *data) {
    file_buffer *f = (file_buffer *)b;
    if (f->failed) return;
    if (kiln__io_injected_failure() || fwrite(data, 1, len, f->fp) != len) f->failed = true, f->err = errno;
}

/* Writes the packed model to path through a temporary file next to it: fsync, rename, fsync
 * of the directory (as kiln__st_write); on any failure the previous file is left as it was. */
static kiln_status write_atomic(kiln_ctx *ctx, const char *path, const Onnx__ModelProto *model) {
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    if (!tmp) return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, FN ": %s: out of host memory", path);
    snprintf(tmp, plen + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        kiln_status s = kiln__fail(ctx, KILN_ERR_IO, FN ": %s: cannot create a temporary file next to it: %s", path,
                                   strerror(errno));
        free(tmp);
        return s;
    }
    fchmod(fd, 0644);
    errno = 0;
    file_buffer fb = {.base = {.append = file_append}, .fp = fdopen(fd, "wb")};
    bool ok = fb.fp != NULL;
    int saved = ok ? 0 : errno;
    if (ok) {
        onnx__model_proto__pack_to_buffer(model, &fb.base);
        if (fb.failed) ok = false, saved = fb.err;
    }
    if (ok && (kiln__io_injected_failure() || fflush(fb.fp) != 0 || fsync(fileno(fb.fp)) != 0))
        ok = false, saved = errno;
    if (fb.fp) {
        if (fclose(fb.fp) != 0 && ok) ok = false, saved = errno;
    } else {
        close(fd);
    }
    if (ok && (kiln__io_injected_failure() || rename(tmp, path) != 0)) ok = false, saved = errno;
    if (!ok) {
        unlink(tmp);
        free(tmp);
        return kiln__fail(ctx, KILN_ERR_IO, FN ": %s: write failed (%s); the previous file, if any, is unchanged", path,
                          strerror(saved ? saved : EIO));
    }
    free(tmp);
    char *dir = strdup(path);
    if (dir) { /* make the rename durable */
        char *slash = strrchr(dir, '/');
        if (slash) *slash = '\0';
        int dfd = open(slash ? (*dir ? dir : "/") : ".", O_RDONLY);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
        free(dir);
    }
    return KILN_OK;
}

/* The training flags of m's subtree in pre-order, saved and restored around the export. */
static int save_modes(const kiln_module *m, bool *modes, int n, int cap) {
    if (n < cap) modes[n] = m->training;
    n++;
    for (int k = 0; k < m->nchildren; k++) n = save_modes(m->children[k].m, modes, n, cap);
    return n;
}

static int restore_modes(kiln_module *m, const bool *modes, int n) {
    m->training = modes[n++];
    for (int k = 0; k < m->nchildren; k++) n = restore_modes(m->children[k].m, modes, n);
    return n;
}

static kiln_status build_and_write(ex *e, kiln_module *module, const char *path, int nin, kiln_tensor *const *xs) {
    kiln_ctx *ctx = e->ctx;
    kiln_rnn_mode mode;
    int64_t isz, hsz, E, H;
    kiln_rnn_params rp;
    kiln_mha_params mp;
    bool packed, learned, pbf;
    kiln_transformer_params tp;
    int nl;
    bool fn;
    bool rnn = kiln__rnn_config_of(module, &mode, &isz, &hsz, &rp);
    bool mha = kiln__mha_config_of(module, &E, &H, &mp, &packed);
    bool dec = kiln__decoder_config_of(module, &tp, &nl, &fn);
    /* the graph's inputs: "input", or the module's argument names */
    static const char *const mha_names[3] = {"query", "key", "value"}, *const dec_names[2] = {"tgt", "memory"};
    static const char *const mha_seq[3] = {"sequence", "source_sequence", "source_sequence"}, *const dec_seq[2] = {
                                                                                                  "sequence",
                                                                                                  "memory_sequence"};
    val v[3];
    for (int i = 0; i < nin; i++) {
        v[i] = (val){.name = mha   ? mha_names[i]
                             : dec ? dec_names[i]
                                   : "input",
                     .t = xs[i],
                     .batch_axis = rnn && !rp.batch_first ? 1 : 0,
                     .seq_axis = -1};
        if (rnn) v[i].seq_axis = rp.batch_first ? 1 : 0;
        if (mha || dec || kiln__encoder_config_of(module, &tp, &nl, &fn)) { /* [T, B, E] or [B, T, E] */
            bool bf = mha ? mp.batch_first : tp.batch_first;
            v[i].batch_axis = bf ? 0 : 1, v[i].seq_axis = bf ? 1 : 0;
            v[i].seq_name = mha ? mha_seq[i] : dec ? dec_seq[i] : NULL;
        } else if (kiln__pos_config_of(module, &learned, &pbf)) {
            v[i].batch_axis = pbf ? 0 : 1, v[i].seq_axis = pbf ? 1 : 0;
        }
    }
    val in_v[3] = {v[0], v[1], v[2]}, outv[3];
    int nout = 1;
    static const char *const rnn_names[3] = {"output", "h_n", "c_n"};
    bool ok = rnn   ? emit_rnn(e, module, &v[0], outv, &nout)
              : mha ? emit_attention(e, module, "", &v[0], &v[1], &v[2])
              : dec ? emit_decoder(e, module, "", &v[0], &v[1])
                    : emit(e, module, "", &v[0]);
    if (!ok) return kiln_error_status(ctx) != KILN_OK ? kiln_error_status(ctx) : KILN_ERR_IO;
    if (!rnn) outv[0] = v[0];
    /* the graph's outputs are "output" (, "h_n", "c_n"): the last node's output renamed, or
     * an Identity of the value (a lone Dropout computes nothing; a recurrent layer's outputs
     * come from several nodes) */
    for (int k = 0; k < nout; k++) {
        Onnx__NodeProto *last = e->nnodes ? e->nodes[e->nnodes - 1] : NULL;
        if (rnn || !last || strcmp(last->output[0], outv[k].name) != 0) {
            last = node(e, "Identity", "", 1, &outv[k].name);
            if (!last) return kiln_error_status(ctx);
        }
        last->output[0] = (char *)rnn_names[k];
        outv[k].name = rnn_names[k];
    }
    Onnx__ValueInfoProto **ins = ex_alloc(e, sizeof *ins * (size_t)nin);
    Onnx__ValueInfoProto **outs = ex_alloc(e, sizeof *outs * (size_t)nout);
    if (!ins || !outs) return kiln_error_status(ctx);
    for (int i = 0; i < nin; i++)
        if (!(ins[i] = value_info(e, in_v[i].name, &in_v[i]))) return kiln_error_status(ctx);
    for (int k = 0; k < nout; k++)
        if (!(outs[k] = value_info(e, outv[k].name, &outv[k]))) return kiln_error_status(ctx);
    Onnx__GraphProto *g = ex_alloc(e, sizeof *g);
    Onnx__ModelProto *model = ex_alloc(e, sizeof *model);
    Onnx__OperatorSetIdProto *opset = ex_alloc(e, sizeof *opset);
    Onnx__OperatorSetIdProto **opsets = ex_alloc(e, sizeof *opsets);
    if (!g || !model || !opset || !opsets) return kiln_error_status(ctx);
    *g = (Onnx__GraphProto)ONNX__GRAPH_PROTO__INIT;
    g->name = (char *)module->kind;
    g->n_node = e->nnodes, g->node = e->nodes;
    g->n_initializer = e->ninits, g->initializer = e->inits;
    g->n_input = (size_t)nin, g->input = ins;
    g->n_output = (size_t)nout, g->output = outs;
    *opset = (Onnx__OperatorSetIdProto)ONNX__OPERATOR_SET_ID_PROTO__INIT;
    opset->domain = "", opset->has_version = 1, opset->version = OPSET;
    opsets[0] = opset;
    *model = (Onnx__ModelProto)ONNX__MODEL_PROTO__INIT;
    model->has_ir_version = 1, model->ir_version = IR_VERSION;
    model->n_opset_import = 1, model->opset_import = opsets;
    model->producer_name = "kiln", model->producer_version = KILN_VERSION_STRING;
    model->doc_string = ex_printf(e, "a kiln %s, exported by kiln_onnx_save", module->kind);
    model->graph = g;
    /* a protobuf message is at most 2 GiB; this writer puts every tensor inside the file */
    size_t size = onnx__model_proto__get_packed_size(model);
    if (size > (size_t)INT32_MAX)
        return kiln__fail(ctx, KILN_ERR_UNSUPPORTED,
                          FN ": %s: the model is %zu bytes, over protobuf's 2 GiB (external data is not written)", path,
                          size);
    return write_atomic(ctx, path, model);
}

kiln_status kiln_onnx_save(kiln_module *module, const char *path, kiln_tensor *example_input) {
    if (!module) return kiln__fail_global(KILN_ERR_NULL, FN ": module is NULL");
    if (!example_input && module->ctx->err == KILN_OK)
        return kiln__fail(module->ctx, KILN_ERR_NULL, FN ": example_input is NULL");
    return kiln_onnx_save_inputs(module, path, 1, &example_input);
}

kiln_status kiln_onnx_save_inputs(kiln_module *module, const char *path, int n_inputs, kiln_tensor *const inputs[]) {
    if (!module) return kiln__fail_global(KILN_ERR_NULL, FN ": module is NULL");
    kiln_ctx *ctx = module->ctx;
    if (ctx->err != KILN_OK) return ctx->err;
    if (!path || !*path) return kiln__fail(ctx, KILN_ERR_NULL, FN ": path is NULL or empty");
    kiln_rnn_mode mode;
    int64_t isz, hsz, E, H;
    kiln_rnn_params rp;
    kiln_mha_params mp;
    kiln_transformer_params tp;
    bool packed, fn;
    int nl;
    bool rnn = kiln__rnn_config_of(module, &mode, &isz, &hsz, &rp);
    int want = kiln__mha_config_of(module, &E, &H, &mp, &packed) ? 3
               : kiln__decoder_config_of(module, &tp, &nl, &fn)  ? 2
                                                                 : 1;
    if (want == 1 && !rnn && (module->def.num_inputs - module->def.optional_inputs > 1 || module->def.num_outputs != 1))
        return kiln__fail(ctx, KILN_ERR_UNSUPPORTED,
                          FN ": the %s takes %d inputs and gives %d outputs; the exporter writes one-input, "
                             "one-output models (and MultiheadAttention, TransformerDecoder(Layer) and the recurrent "
                             "layers)",
                          module->kind, module->def.num_inputs, module->def.num_outputs);
    if (n_inputs != want || !inputs)
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, FN ": the %s takes %d input%s (%s); %d example input%s given",
                          module->kind, want, want > 1 ? "s" : "",
                          want == 3   ? "query, key, value"
                          : want == 2 ? "tgt, memory"
                                      : "one",
                          n_inputs, n_inputs == 1 ? " was" : "s were");
    for (int i = 0; i < n_inputs; i++) {
        kiln_tensor *x = inputs[i];
        if (!x) return kiln__fail(ctx, KILN_ERR_NULL, FN ": example input %d is NULL", i);
        if (x->ctx != ctx)
            return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, FN ": example input %d belongs to another context", i);
        if (x->ndim < 1 || (x->dtype != KILN_F32 && x->dtype != KILN_I32)) {
            char s[96];
            return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                              FN
                              ": example input %d is %s %s: an F32 (or I32 token id) tensor with a batch dim is needed",
                              i, kiln_dtype_name(x->dtype), kiln_tensor_shape_str(x, s, sizeof s));
        }
    }

    /* traced in eval mode without autograd, as torch.onnx.export; modes restored after */
    bool fixed[256], *modes = fixed;
    int nmod = save_modes(module, fixed, 0, 256);
    if (nmod > 256) {
        modes = malloc(sizeof *modes * (size_t)nmod);
        if (!modes) return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, FN ": out of host memory");
        save_modes(module, modes, 0, nmod);
    }
    kiln_module_train(module, false);
    bool grad = kiln_ctx_set_grad_enabled(ctx, false);
    ex e = {.ctx = ctx};
    kiln_scope_begin(ctx);
    kiln_status s = build_and_write(&e, module, path, n_inputs, inputs);
    kiln_scope_end(ctx);
    kiln_ctx_set_grad_enabled(ctx, grad);
    restore_modes(module, modes, 0);
    if (modes != fixed) free(modes);
    for (size_t i = 0; i < e.nallocs; i++) free(e.allocs[i]);
    free(e.allocs), free(e.nodes), free(e.inits);
    return s;
}

/* src/io/onnx_ops.c - the ONNX operators kiln runs: one table (name, input and output
 * counts, the attributes the spec gives the op, a load-time check, the run function), the
 * run functions built on kiln's ops, and the host arithmetic for integer tensors (shape
 * computations: Shape, Gather, Concat, Unsqueeze, ... on int64 values, which constant
 * folding evaluates at load).
 *
 * Each run function gets its inputs (NULL for an absent optional one) and writes its
 * outputs; it runs inside a scope of its own (src/io/onnx_run.c keeps what it returns), so
 * temporaries need no freeing. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onnx_internal.h"

/* ---- errors ------------------------------------------------------------------------- */

static kiln_status nfail(onnx_rt *r, const onnx_node *n, kiln_status s, const char *fmt, ...) KILN__PRINTF(4, 5);
static kiln_status nfail(onnx_rt *r, const onnx_node *n, kiln_status s, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return kiln__fail(r->ctx, s, "onnx %s: %s node '%s' (opset %d): %s", r->what, n->p->op_type, n->name, r->opset,
                      msg);
}

/* An op that failed inside kiln: its error is already held; note the node. */
static kiln_status kfail(onnx_rt *r, const onnx_node *n) {
    kiln_status s = kiln_error_status(r->ctx);
    if (s == KILN_OK) s = kiln__fail(r->ctx, KILN_ERR_INVALID_ARGUMENT, "onnx: operation failed");
    kiln__error_note(r->ctx, "onnx %s: %s node '%s'", r->what, n->p->op_type, n->name);
    return s;
}

static char *shp(int ndim, const int64_t *shape, char *buf, size_t cap) {
    return kiln__shape_str(ndim, shape, buf, cap);
}

/* ---- values ------------------------------------------------------------------------- */

bool kiln__onnx_type_ok(int type) {
    switch (type) {
    case OT_FLOAT:
    case OT_UINT8:
    case OT_INT8:
    case OT_UINT16:
    case OT_INT16:
    case OT_INT32:
    case OT_INT64:
    case OT_BOOL:
    case OT_UINT32:
    case OT_UINT64: return true;
    default: return false;
    }
}

const char *kiln__onnx_type_name(int type) {
    static const char *names[] = {"undefined", "float",  "uint8",     "int8",       "uint16",  "int16",
                                  "int32",     "int64",  "string",    "bool",       "float16", "double",
                                  "uint32",    "uint64", "complex64", "complex128", "bfloat16"};
    if (type >= 0 && type < (int)(sizeof names / sizeof *names)) return names[type];
    return "unknown";
}

static size_t type_size(int type) {
    switch (type) {
    case OT_FLOAT:
    case OT_INT32:
    case OT_UINT32: return 4;
    case OT_UINT8:
    case OT_INT8:
    case OT_BOOL: return 1;
    case OT_UINT16:
    case OT_INT16: return 2;
    case OT_INT64:
    case OT_UINT64:
    case OT_DOUBLE: return 8;
    default: return 0;
    }
}

static int64_t shape_numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    return n;
}

int64_t kiln__onnx_numel(const onnx_val *v) { return shape_numel(v->ndim, v->shape); }

void kiln__onnx_val_clear(onnx_val *v) {
    if (v->t) kiln_tensor_free(v->t);
    free(v->h);
    memset(v, 0, sizeof *v);
}

static kiln_status set_dev(onnx_rt *r, const onnx_node *n, onnx_val *out, kiln_tensor *t) {
    if (!t) return kfail(r, n);
    out->type = OT_FLOAT;
    out->t = t;
    out->h = NULL;
    out->ndim = kiln_tensor_ndim(t);
    memcpy(out->shape, kiln_tensor_shape(t), sizeof(int64_t) * (size_t)out->ndim);
    out->set = true;
    return KILN_OK;
}

/* Takes ownership of h (malloc'ed, numel values). */
static kiln_status set_host(onnx_rt *r, const onnx_node *n, onnx_val *out, int type, int ndim, const int64_t *shape,
                            int64_t *h) {
    if (!h && shape_numel(ndim, shape) > 0) return nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    out->type = type;
    out->t = NULL;
    out->h = h;
    out->ndim = ndim;
    if (ndim) memcpy(out->shape, shape, sizeof(int64_t) * (size_t)ndim);
    out->set = true;
    return KILN_OK;
}

static int64_t *alloc_i(int64_t n) { return malloc((size_t)(n > 0 ? n : 1) * sizeof(int64_t)); }

/* Wraps an integer to the range of its ONNX type (as a C cast would). */
static int64_t wrap_int(int type, int64_t x) {
    switch (type) {
    case OT_UINT8: return (uint8_t)x;
    case OT_INT8: return (int8_t)x;
    case OT_UINT16: return (uint16_t)x;
    case OT_INT16: return (int16_t)x;
    case OT_INT32: return (int32_t)x;
    case OT_UINT32: return (uint32_t)x;
    case OT_BOOL: return x != 0;
    default: return x;
    }
}

/* v's values on the host as int64 (a device tensor is read back and truncated); malloc'ed. */
static int64_t *host_ints(onnx_rt *r, const onnx_node *n, const onnx_val *v) {
    int64_t cnt = kiln__onnx_numel(v);
    int64_t *o = alloc_i(cnt);
    if (!o) return nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory"), NULL;
    if (v->h) {
        memcpy(o, v->h, (size_t)cnt * sizeof *o);
        return o;
    }
    if (!v->t) return o;
    float *f = malloc((size_t)(cnt > 0 ? cnt : 1) * sizeof *f);
    if (!f || kiln_to_host(v->t, f, (size_t)cnt * sizeof *f) != KILN_OK) {
        free(f), free(o);
        if (!f) nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
        return NULL;
    }
    for (int64_t i = 0; i < cnt; i++) o[i] = isfinite(f[i]) ? (int64_t)f[i] : 0;
    free(f);
    return o;
}

/* v as a device F32 tensor (host integers are uploaded as floats). */
static kiln_tensor *dev_f32(onnx_rt *r, const onnx_node *n, const onnx_val *v) {
    if (v->t) return v->t;
    int64_t cnt = kiln__onnx_numel(v);
    float *f = malloc((size_t)(cnt > 0 ? cnt : 1) * sizeof *f);
    if (!f) return nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory"), NULL;
    for (int64_t i = 0; i < cnt; i++) f[i] = (float)v->h[i];
    kiln_tensor *t = kiln_from_host(r->ctx, f, KILN_F32, v->ndim, v->shape);
    free(f);
    return t;
}

static bool is_float(const onnx_val *v) { return v->type == OT_FLOAT; }

/* The elements of a 1-D (or scalar) integer input, for shapes and axes: at most cap. */
static kiln_status small_ints(onnx_rt *r, const onnx_node *n, const onnx_val *v, const char *what, int64_t *out,
                              int cap, int *count) {
    int64_t cnt = kiln__onnx_numel(v);
    if (v->ndim > 1 || cnt > cap)
        return nfail(r, n, KILN_ERR_SHAPE, "input '%s' must be 1-D with at most %d values, not %lld values", what, cap,
                     (long long)cnt);
    int64_t *h = host_ints(r, n, v);
    if (!h) return kiln_error_status(r->ctx);
    memcpy(out, h, (size_t)cnt * sizeof *out);
    free(h);
    *count = (int)cnt;
    return KILN_OK;
}

/* ---- attributes ----------------------------------------------------------------------- */

const Onnx__AttributeProto *kiln__onnx_attr(const onnx_node *n, const char *name) {
    for (size_t i = 0; i < n->p->n_attribute; i++)
        if (n->p->attribute[i]->name && strcmp(n->p->attribute[i]->name, name) == 0) return n->p->attribute[i];
    return NULL;
}

static int64_t attr_i(const onnx_node *n, const char *name, int64_t def) {
    const Onnx__AttributeProto *a = kiln__onnx_attr(n, name);
    return a ? a->i : def;
}

static float attr_f(const onnx_node *n, const char *name, float def) {
    const Onnx__AttributeProto *a = kiln__onnx_attr(n, name);
    return a ? a->f : def;
}

static const char *attr_s(const onnx_node *n, const char *name, const char *def, char *buf, size_t cap) {
    const Onnx__AttributeProto *a = kiln__onnx_attr(n, name);
    if (!a || !a->has_s) return def;
    size_t len = a->s.len < cap - 1 ? a->s.len : cap - 1;
    memcpy(buf, a->s.data, len);
    buf[len] = 0;
    return buf;
}

/* An ints attribute: its count, -1 when absent. */
static int attr_ints(const onnx_node *n, const char *name, const int64_t **v) {
    const Onnx__AttributeProto *a = kiln__onnx_attr(n, name);
    if (!a) return -1;
    *v = a->ints;
    return (int)a->n_ints;
}

static int norm_axis(int64_t axis, int ndim, bool *ok) {
    if (axis < 0) axis += ndim;
    *ok = axis >= 0 && axis < (ndim > 0 ? ndim : 1);
    return (int)axis;
}

/* ---- TensorProto ---------------------------------------------------------------------- */

kiln_status kiln__onnx_tensor_check(kiln_ctx *ctx, const char *what, const Onnx__TensorProto *tp, int64_t *numel) {
    const char *name = tp->name ? tp->name : "";
    if (!kiln__onnx_type_ok(tp->data_type))
        return kiln__fail(ctx, KILN_ERR_UNSUPPORTED,
                          "onnx %s: tensor '%s' has dtype %s; kiln reads float, bool and "
                          "integer tensors",
                          what, name, kiln__onnx_type_name(tp->data_type));
    if (tp->n_dims > KILN_MAX_DIMS)
        return kiln__fail(ctx, KILN_ERR_UNSUPPORTED, "onnx %s: tensor '%s' has %zu dims; kiln holds at most %d", what,
                          name, tp->n_dims, KILN_MAX_DIMS);
    int64_t cnt = 1;
    for (size_t d = 0; d < tp->n_dims; d++) {
        if (tp->dims[d] < 0 || tp->dims[d] > ONNX_MAX_DIM)
            return kiln__fail(ctx, KILN_ERR_CORRUPT,
                              "onnx %s: tensor '%s' has dimension %zu of size %lld (at most %lld)", what, name, d,
                              (long long)tp->dims[d], ONNX_MAX_DIM);
        cnt *= tp->dims[d];
        if (cnt > ONNX_MAX_DIM)
            return kiln__fail(ctx, KILN_ERR_CORRUPT, "onnx %s: tensor '%s' has more than %lld elements", what, name,
                              ONNX_MAX_DIM);
    }
    *numel = cnt;
    if (tp->segment) return kiln__fail(ctx, KILN_ERR_UNSUPPORTED, "onnx %s: tensor '%s' is segmented", what, name);
    if (tp->has_data_location && tp->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL) return KILN_OK;
    size_t have;
    const char *field;
    if (tp->has_raw_data) {
        have = tp->raw_data.len / type_size(tp->data_type);
        field = "raw_data";
        if (tp->raw_data.len % type_size(tp->data_type) != 0)
            return kiln__fail(ctx, KILN_ERR_CORRUPT,
                              "onnx %s: tensor '%s': raw_data of %zu bytes is not a whole number "
                              "of %s elements",
                              what, name, tp->raw_data.len, kiln__onnx_type_name(tp->data_type));
    } else {
        switch (tp->data_type) {
        case OT_FLOAT: have = tp->n_float_data, field = "float_data"; break;
        case OT_INT64: have = tp->n_int64_data, field = "int64_data"; break;
        case OT_UINT32:
        case OT_UINT64: have = tp->n_uint64_data, field = "uint64_data"; break;
        default: have = tp->n_int32_data, field = "int32_data"; break;
        }
    }
    if ((int64_t)have != cnt) {
        char sb[160];
        return kiln__fail(ctx, KILN_ERR_CORRUPT,
                          "onnx %s: tensor '%s' of shape %s needs %lld elements; its %s holds %zu", what, name,
                          shp((int)tp->n_dims, tp->dims, sb, sizeof sb), (long long)cnt, field, have);
    }
    return KILN_OK;
}

kiln_status kiln__onnx_tensor_to_val(kiln_ctx *ctx, const char *what, const Onnx__TensorProto *tp, const void *data,
                                     size_t len, onnx_val *v) {
    int64_t cnt;
    kiln_status s = kiln__onnx_tensor_check(ctx, what, tp, &cnt);
    if (s != KILN_OK) return s;
    int type = tp->data_type;
    size_t es = type_size(type);
    if (!data && tp->has_raw_data) data = tp->raw_data.data, len = tp->raw_data.len;
    if (data && len != (size_t)cnt * es)
        return kiln__fail(ctx, KILN_ERR_CORRUPT, "onnx %s: tensor '%s' needs %lld bytes, its data holds %zu", what,
                          tp->name ? tp->name : "", (long long)((size_t)cnt * es), len);
    memset(v, 0, sizeof *v);
    v->type = type;
    v->ndim = (int)tp->n_dims;
    for (int d = 0; d < v->ndim; d++) v->shape[d] = tp->dims[d];
    const unsigned char *b = data;
    if (type == OT_FLOAT) {
        float *f = malloc((size_t)(cnt ? cnt : 1) * sizeof *f);
        if (!f) return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "onnx %s: out of host memory", what);
        if (b)
            memcpy(f, b, (size_t)cnt * 4);
        else if (cnt)
            memcpy(f, tp->float_data, (size_t)cnt * 4);
        v->t = kiln_from_host(ctx, f, KILN_F32, v->ndim, v->shape);
        free(f);
        if (!v->t) return kiln_error_status(ctx);
        v->set = true;
        return KILN_OK;
    }
    v->h = alloc_i(cnt);
    if (!v->h) return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "onnx %s: out of host memory", what);
    for (int64_t i = 0; i < cnt; i++) {
        int64_t x;
        if (b) {
            const unsigned char *p = b + (size_t)i * es;
            switch (type) {
            case OT_UINT8: x = p[0]; break;
            case OT_BOOL: x = p[0] != 0; break;
            case OT_INT8: x = (int8_t)p[0]; break;
            case OT_UINT16: {
                uint16_t u;
                memcpy(&u, p, 2);
                x = u;
                break;
            }
            case OT_INT16: {
                int16_t u;
                memcpy(&u, p, 2);
                x = u;
                break;
            }
            case OT_INT32: {
                int32_t u;
                memcpy(&u, p, 4);
                x = u;
                break;
            }
            case OT_UINT32: {
                uint32_t u;
                memcpy(&u, p, 4);
                x = u;
                break;
            }
            default: memcpy(&x, p, 8); break;
            }
        } else if (type == OT_INT64) {
            x = tp->int64_data[i];
        } else if (type == OT_UINT32 || type == OT_UINT64) {
            x = (int64_t)tp->uint64_data[i];
        } else {
            x = wrap_int(type, tp->int32_data[i]);
        }
        v->h[i] = x;
    }
    v->set = true;
    return KILN_OK;
}

/* ---- host arithmetic on integer tensors --------------------------------------------- */

/* Contiguous copy of the strided view (shape, strides, offset) of src. */
static int64_t *h_gather_view(const int64_t *src, int ndim, const int64_t *shape, const int64_t *strides, int64_t off) {
    int64_t cnt = shape_numel(ndim, shape);
    int64_t *o = alloc_i(cnt);
    if (!o) return NULL;
    int64_t idx[KILN_MAX_DIMS] = {0};
    for (int64_t i = 0; i < cnt; i++) {
        int64_t p = off;
        for (int d = 0; d < ndim; d++) p += idx[d] * strides[d];
        o[i] = src[p];
        for (int d = ndim - 1; d >= 0; d--) {
            if (++idx[d] < shape[d]) break;
            idx[d] = 0;
        }
    }
    return o;
}

static void contig_strides(int ndim, const int64_t *shape, int64_t *st) {
    int64_t s = 1;
    for (int d = ndim - 1; d >= 0; d--) st[d] = s, s *= shape[d];
}

/* The broadcast shape of a and b (NumPy rules); false when they do not broadcast. */
static bool bcast_shape(int na, const int64_t *a, int nb, const int64_t *b, int *nout, int64_t *out) {
    int n = na > nb ? na : nb;
    for (int i = 0; i < n; i++) {
        int64_t x = i < n - na ? 1 : a[i - (n - na)];
        int64_t y = i < n - nb ? 1 : b[i - (n - nb)];
        if (x != y && x != 1 && y != 1) return false;
        out[i] = x == 1 ? y : x;
    }
    *nout = n;
    return true;
}

/* Strides that read a (shape na) broadcast to out (n dims): 0 on broadcast dims. */
static void bcast_strides(int na, const int64_t *a, int n, const int64_t *out, int64_t *st) {
    int64_t cs[KILN_MAX_DIMS];
    contig_strides(na, a, cs);
    for (int i = 0; i < n; i++) {
        int j = i - (n - na);
        st[i] = (j < 0 || a[j] != out[i]) ? 0 : cs[j];
    }
}

static int64_t *h_broadcast(const onnx_val *v, int n, const int64_t *out) {
    int64_t st[KILN_MAX_DIMS];
    bcast_strides(v->ndim, v->shape, n, out, st);
    return h_gather_view(v->h, n, out, st, 0);
}

typedef enum hop {
    H_ADD,
    H_SUB,
    H_MUL,
    H_DIV,
    H_POW,
    H_EQ,
    H_LT,
    H_GT,
    H_LE,
    H_GE,
    H_AND,
    H_OR,
    H_XOR,
    H_MAX,
    H_MIN,
    H_MOD,
    H_FMOD,
    H_SHL,
    H_SHR
} hop;

static kiln_status h_binary(onnx_rt *r, const onnx_node *n, hop op, const onnx_val *a, const onnx_val *b, int out_type,
                            onnx_val *out) {
    int nd;
    int64_t shape[KILN_MAX_DIMS];
    char sa[160], sb[160];
    /* host arithmetic: integer and bool values only (a float value lives on the device; the
     * dtype checks at load see declared types, not what a graph computes) */
    if (is_float(a) || is_float(b))
        return nfail(r, n, KILN_ERR_UNSUPPORTED, "float inputs: kiln runs this operator on integer and bool tensors");
    if (!bcast_shape(a->ndim, a->shape, b->ndim, b->shape, &nd, shape))
        return nfail(r, n, KILN_ERR_SHAPE, "shapes %s and %s do not broadcast", shp(a->ndim, a->shape, sa, sizeof sa),
                     shp(b->ndim, b->shape, sb, sizeof sb));
    int64_t *x = h_broadcast(a, nd, shape), *y = h_broadcast(b, nd, shape);
    int64_t cnt = shape_numel(nd, shape);
    int64_t *o = alloc_i(cnt);
    if (!x || !y || !o) {
        free(x), free(y), free(o);
        return nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    }
    for (int64_t i = 0; i < cnt; i++) {
        int64_t p = x[i], q = y[i], v = 0;
        switch (op) {
        case H_ADD: v = (int64_t)((uint64_t)p + (uint64_t)q); break;
        case H_SUB: v = (int64_t)((uint64_t)p - (uint64_t)q); break;
        case H_MUL: v = (int64_t)((uint64_t)p * (uint64_t)q); break;
        case H_SHL: v = q < 0 || q >= 64 ? 0 : (int64_t)((uint64_t)p << q); break;
        case H_SHR: v = q < 0 || q >= 64 ? 0 : (int64_t)((uint64_t)wrap_int(out_type, p) >> q); break;
        case H_DIV:
        case H_FMOD:
        case H_MOD:
            if (q == 0) {
                free(x), free(y), free(o);
                return nfail(r, n, KILN_ERR_RANGE, "integer division by zero at element %lld", (long long)i);
            }
            if (p == INT64_MIN && q == -1)
                v = op == H_DIV ? INT64_MIN : 0;
            else if (op == H_DIV)
                v = p / q;
            else if (op == H_FMOD)
                v = p % q; /* fmod=1: the sign of the dividend, as C */
            else {
                v = p % q; /* Mod with fmod=0: the sign of the divisor, as Python */
                if (v != 0 && ((v < 0) != (q < 0))) v += q;
            }
            break;
        case H_POW: {
            int64_t acc = 1, base = p, e = q;
            if (e < 0)
                acc = (p == 1) ? 1 : (p == -1 ? ((e & 1) ? -1 : 1) : 0);
            else
                while (e > 0) {
                    if (e & 1) acc = (int64_t)((uint64_t)acc * (uint64_t)base);
                    base = (int64_t)((uint64_t)base * (uint64_t)base);
                    e >>= 1;
                }
            v = acc;
            break;
        }
        case H_EQ: v = p == q; break;
        case H_LT: v = p < q; break;
        case H_GT: v = p > q; break;
        case H_LE: v = p <= q; break;
        case H_GE: v = p >= q; break;
        case H_AND: v = p && q; break;
        case H_OR: v = p || q; break;
        case H_XOR: v = (p != 0) != (q != 0); break;
        case H_MAX: v = p > q ? p : q; break;
        case H_MIN: v = p < q ? p : q; break;
        }
        o[i] = wrap_int(out_type, v);
    }
    free(x), free(y);
    return set_host(r, n, out, out_type, nd, shape, o);
}

/* ---- the run functions ---------------------------------------------------------------- */

#define RUN(name) static kiln_status name(onnx_rt *r, const onnx_node *n, onnx_val *const *in, onnx_val *const *out)
#define CTX (r->ctx)

static kiln_status need_float(onnx_rt *r, const onnx_node *n, const onnx_val *v, const char *what) {
    if (v && !is_float(v))
        return nfail(r, n, KILN_ERR_UNSUPPORTED, "input '%s' has dtype %s; kiln runs this operator on float tensors",
                     what, kiln__onnx_type_name(v->type));
    return KILN_OK;
}

/* Binary arithmetic: floats on the device, integers on the host. */
static kiln_status binary(onnx_rt *r, const onnx_node *n, onnx_val *const *in, onnx_val *out, hop op) {
    const onnx_val *a = in[0], *b = in[1];
    if (!is_float(a) && !is_float(b)) {
        int t = (op >= H_EQ && op <= H_XOR) ? OT_BOOL : a->type;
        return h_binary(r, n, op, a, b, t, out);
    }
    if (op == H_POW && !is_float(a)) {
        /* an integer base keeps its type: pow in double, truncated (NumPy's astype) */
        int nd;
        int64_t shape[KILN_MAX_DIMS];
        if (!bcast_shape(a->ndim, a->shape, b->ndim, b->shape, &nd, shape))
            return nfail(r, n, KILN_ERR_SHAPE, "shapes do not broadcast");
        int64_t bn = kiln__onnx_numel(b);
        float *e = malloc((size_t)(bn > 0 ? bn : 1) * sizeof *e);
        if (!e || kiln_to_host(b->t, e, (size_t)bn * sizeof *e) != KILN_OK) {
            free(e);
            return kfail(r, n);
        }
        int64_t st[KILN_MAX_DIMS], idx[KILN_MAX_DIMS] = {0}, cnt = shape_numel(nd, shape);
        bcast_strides(b->ndim, b->shape, nd, shape, st);
        int64_t *x = h_broadcast(a, nd, shape);
        if (!x) {
            free(e);
            return nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
        }
        for (int64_t i = 0; i < cnt; i++) {
            int64_t p = 0;
            for (int d = 0; d < nd; d++) p += idx[d] * st[d];
            double v = pow((double)x[i], (double)e[p]);
            x[i] = wrap_int(a->type, isfinite(v) && fabs(v) < 9.2e18 ? (int64_t)v : 0);
            for (int d = nd - 1; d >= 0; d--) {
                if (++idx[d] < shape[d]) break;
                idx[d] = 0;
            }
        }
        free(e);
        return set_host(r, n, out, a->type, nd, shape, x);
    }
    kiln_tensor *x = dev_f32(r, n, a), *y = dev_f32(r, n, b), *z = NULL;
    if (!x || !y) return kfail(r, n);
    switch (op) {
    case H_ADD: z = kiln_add(CTX, x, y); break;
    case H_SUB: z = kiln_sub(CTX, x, y); break;
    case H_MUL: z = kiln_mul(CTX, x, y); break;
    case H_DIV: z = kiln_div(CTX, x, y); break;
    case H_POW: z = kiln_pow(CTX, x, y); break;
    case H_MAX: z = kiln_maximum(CTX, x, y); break;
    case H_MIN: z = kiln_minimum(CTX, x, y); break;
    case H_EQ:
    case H_LT:
    case H_GT:
    case H_LE:
    case H_GE: {
        kiln_tensor *m = op == H_EQ   ? kiln_eq(CTX, x, y)
                         : op == H_LT ? kiln_lt(CTX, x, y)
                         : op == H_GT ? kiln_gt(CTX, x, y)
                         : op == H_LE ? kiln_le(CTX, x, y)
                                      : kiln_ge(CTX, x, y);
        onnx_val tmp = {0};
        if (set_dev(r, n, &tmp, m) != KILN_OK) return kiln_error_status(CTX);
        int64_t *h = host_ints(r, n, &tmp);
        if (!h) return kiln_error_status(CTX);
        return set_host(r, n, out, OT_BOOL, tmp.ndim, tmp.shape, h);
    }
    default: return nfail(r, n, KILN_ERR_UNSUPPORTED, "float operands");
    }
    return set_dev(r, n, out, z);
}

RUN(run_add) { return binary(r, n, in, out[0], H_ADD); }
RUN(run_sub) { return binary(r, n, in, out[0], H_SUB); }
RUN(run_mul) { return binary(r, n, in, out[0], H_MUL); }
RUN(run_div) { return binary(r, n, in, out[0], H_DIV); }
RUN(run_pow) { return binary(r, n, in, out[0], H_POW); }
RUN(run_equal) { return binary(r, n, in, out[0], H_EQ); }
RUN(run_less) { return binary(r, n, in, out[0], H_LT); }
RUN(run_greater) { return binary(r, n, in, out[0], H_GT); }
RUN(run_less_equal) { return binary(r, n, in, out[0], H_LE); }
RUN(run_greater_equal) { return binary(r, n, in, out[0], H_GE); }
RUN(run_and) { return h_binary(r, n, H_AND, in[0], in[1], OT_BOOL, out[0]); }
RUN(run_or) { return h_binary(r, n, H_OR, in[0], in[1], OT_BOOL, out[0]); }
RUN(run_xor) { return h_binary(r, n, H_XOR, in[0], in[1], OT_BOOL, out[0]); }

static kiln_status bool_inputs(onnx_rt *r, const onnx_node *n) {
    (void)r, (void)n;
    return KILN_OK;
}

/* Max / Min / Sum / Mean of 1 or more inputs. */
static kiln_status variadic(onnx_rt *r, const onnx_node *n, onnx_val *const *in, onnx_val *out, hop op, bool mean) {
    int k = n->nin;
    bool all_int = true;
    for (int i = 0; i < k; i++) all_int = all_int && !is_float(in[i]);
    if (all_int) {
        onnx_val acc = {0};
        acc = *in[0];
        acc.h = host_ints(r, n, in[0]);
        if (!acc.h) return kiln_error_status(CTX);
        for (int i = 1; i < k; i++) {
            onnx_val next = {0};
            kiln_status s = h_binary(r, n, op, &acc, in[i], acc.type, &next);
            free(acc.h);
            if (s != KILN_OK) return s;
            acc = next;
        }
        if (mean) {
            free(acc.h);
            return nfail(r, n, KILN_ERR_UNSUPPORTED, "Mean of integer tensors");
        }
        *out = acc;
        out->set = true;
        return KILN_OK;
    }
    kiln_tensor *z = dev_f32(r, n, in[0]);
    for (int i = 1; i < k && z; i++) {
        kiln_tensor *y = dev_f32(r, n, in[i]);
        z = op == H_ADD ? kiln_add(CTX, z, y) : op == H_MAX ? kiln_maximum(CTX, z, y) : kiln_minimum(CTX, z, y);
    }
    if (z && mean) z = kiln_mul_scalar(CTX, z, 1.0f / (float)k);
    if (z && k == 1) z = kiln_clone(CTX, z);
    return set_dev(r, n, out, z);
}

RUN(run_max) { return variadic(r, n, in, out[0], H_MAX, false); }
RUN(run_min) { return variadic(r, n, in, out[0], H_MIN, false); }
RUN(run_sum) { return variadic(r, n, in, out[0], H_ADD, false); }
RUN(run_mean) { return variadic(r, n, in, out[0], H_ADD, true); }

RUN(run_not) {
    int64_t *h = host_ints(r, n, in[0]);
    if (!h) return kiln_error_status(CTX);
    for (int64_t i = 0; i < kiln__onnx_numel(in[0]); i++) h[i] = !h[i];
    return set_host(r, n, out[0], OT_BOOL, in[0]->ndim, in[0]->shape, h);
}

typedef enum uop { U_RELU, U_SIGMOID, U_TANH, U_SQRT, U_NEG, U_EXP, U_LOG, U_ABS, U_ERF, U_RECIP, U_SOFTPLUS } uop;

/* erf(y) = (gelu(√2 y) + gelu(-√2 y)) / (√2 y), since gelu(x) + gelu(-x) = x erf(x/√2);
 * near 0, where that quotient cancels, the series 2/√π (y - y³/3 + y⁵/10). */
static kiln_tensor *erf_of(kiln_ctx *ctx, kiln_tensor *y) {
    const float s2 = 1.41421356237f;
    kiln_tensor *x = kiln_mul_scalar(ctx, y, s2);
    kiln_tensor *g = kiln_add(ctx, kiln_gelu(ctx, x, false), kiln_gelu(ctx, kiln_neg(ctx, x), false));
    kiln_tensor *big = kiln_div(ctx, g, x);
    kiln_tensor *y2 = kiln_mul(ctx, y, y);
    /* 1 - y²/3 + y⁴/10 */
    kiln_tensor *poly = kiln_add_scalar(
        ctx, kiln_mul(ctx, y2, kiln_add_scalar(ctx, kiln_mul_scalar(ctx, y2, 0.1f), -1.0f / 3.0f)), 1.0f);
    kiln_tensor *small = kiln_mul_scalar(ctx, kiln_mul(ctx, y, poly), 1.1283791671f);
    kiln_tensor *cond = kiln_lt(ctx, kiln_abs(ctx, y), kiln_full(ctx, 0.05f, 0, NULL));
    /* NaN stays NaN; erf(±inf) = ±1 (gelu(inf)/inf would be NaN) */
    kiln_tensor *r = kiln_where(ctx, cond, small, big);
    kiln_tensor *inf = kiln_eq(ctx, kiln_abs(ctx, y), kiln_full(ctx, INFINITY, 0, NULL));
    kiln_tensor *sgn = kiln_div(ctx, y, kiln_abs(ctx, y));
    return kiln_where(ctx, inf, sgn, r);
}

static kiln_status unary(onnx_rt *r, const onnx_node *n, onnx_val *const *in, onnx_val *out, uop op) {
    const onnx_val *a = in[0];
    if (!is_float(a)) {
        if (op != U_NEG && op != U_ABS && op != U_RELU)
            return nfail(r, n, KILN_ERR_UNSUPPORTED, "input has dtype %s; kiln runs %s on float tensors",
                         kiln__onnx_type_name(a->type), n->p->op_type);
        int64_t *h = host_ints(r, n, a);
        if (!h) return kiln_error_status(CTX);
        for (int64_t i = 0; i < kiln__onnx_numel(a); i++)
            h[i] = wrap_int(a->type, op == U_NEG   ? -h[i]
                                     : op == U_ABS ? (h[i] < 0 ? -h[i] : h[i])
                                                   : (h[i] > 0 ? h[i] : 0));
        return set_host(r, n, out, a->type, a->ndim, a->shape, h);
    }
    kiln_tensor *x = a->t, *y = NULL;
    switch (op) {
    case U_RELU: y = kiln_relu(CTX, x); break;
    case U_SIGMOID: y = kiln_sigmoid(CTX, x); break;
    case U_TANH: y = kiln_tanh(CTX, x); break;
    case U_SQRT: y = kiln_sqrt(CTX, x); break;
    case U_NEG: y = kiln_neg(CTX, x); break;
    case U_EXP: y = kiln_exp(CTX, x); break;
    case U_LOG: y = kiln_log(CTX, x); break;
    case U_ABS: y = kiln_abs(CTX, x); break;
    case U_ERF: y = erf_of(CTX, x); break;
    case U_RECIP: y = kiln_div(CTX, kiln_full(CTX, 1.0f, 0, NULL), x); break;
    case U_SOFTPLUS: y = kiln_softplus(CTX, x, 1.0f, INFINITY); break;
    }
    return set_dev(r, n, out, y);
}

RUN(run_relu) { return unary(r, n, in, out[0], U_RELU); }
RUN(run_sigmoid) { return unary(r, n, in, out[0], U_SIGMOID); }
RUN(run_tanh) { return unary(r, n, in, out[0], U_TANH); }
RUN(run_sqrt) { return unary(r, n, in, out[0], U_SQRT); }
RUN(run_neg) { return unary(r, n, in, out[0], U_NEG); }
RUN(run_exp) { return unary(r, n, in, out[0], U_EXP); }
RUN(run_log) { return unary(r, n, in, out[0], U_LOG); }
RUN(run_abs) { return unary(r, n, in, out[0], U_ABS); }
RUN(run_erf) { return unary(r, n, in, out[0], U_ERF); }
RUN(run_reciprocal) { return unary(r, n, in, out[0], U_RECIP); }
RUN(run_softplus) { return unary(r, n, in, out[0], U_SOFTPLUS); }

RUN(run_leaky_relu) {
    kiln_status s = need_float(r, n, in[0], "X");
    if (s) return s;
    return set_dev(r, n, out[0], kiln_leaky_relu(CTX, in[0]->t, attr_f(n, "alpha", 0.01f)));
}

RUN(run_elu) {
    kiln_status s = need_float(r, n, in[0], "X");
    if (s) return s;
    return set_dev(r, n, out[0], kiln_elu(CTX, in[0]->t, attr_f(n, "alpha", 1.0f)));
}

RUN(run_hard_sigmoid) {
    kiln_status s = need_float(r, n, in[0], "X");
    if (s) return s;
    kiln_tensor *y =
        kiln_add_scalar(CTX, kiln_mul_scalar(CTX, in[0]->t, attr_f(n, "alpha", 0.2f)), attr_f(n, "beta", 0.5f));
    return set_dev(r, n, out[0], kiln_minimum_scalar(CTX, kiln_maximum_scalar(CTX, y, 0.0f), 1.0f));
}

/* Softmax/LogSoftmax: opset 13 normalises along axis; before it the input is seen as 2-D
 * [prod(dims < axis), prod(dims >= axis)] and normalised along the second dim. */
static kiln_status softmax_like(onnx_rt *r, const onnx_node *n, onnx_val *const *in, onnx_val *out, bool log) {
    kiln_status s = need_float(r, n, in[0], "input");
    if (s) return s;
    kiln_tensor *x = in[0]->t;
    int nd = in[0]->ndim;
    bool ok;
    int axis = norm_axis(attr_i(n, "axis", r->opset >= 13 ? -1 : 1), nd, &ok);
    if (!ok || nd == 0)
        return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "axis %lld out of range for %d dims",
                     (long long)attr_i(n, "axis", -1), nd);
    if (r->opset >= 13) return set_dev(r, n, out, log ? kiln_log_softmax(CTX, x, axis) : kiln_softmax(CTX, x, axis));
    int64_t two[2] = {shape_numel(axis, in[0]->shape), shape_numel(nd - axis, in[0]->shape + axis)};
    kiln_tensor *x2 = kiln_reshape(CTX, x, 2, two);
    kiln_tensor *y = log ? kiln_log_softmax(CTX, x2, 1) : kiln_softmax(CTX, x2, 1);
    return set_dev(r, n, out, kiln_reshape(CTX, y, nd, in[0]->shape));
}

RUN(run_softmax) { return softmax_like(r, n, in, out[0], false); }
RUN(run_log_softmax) { return softmax_like(r, n, in, out[0], true); }

RUN(run_gemm) {
    for (int i = 0; i < n->nin; i++)
        if (in[i] && !is_float(in[i])) return need_float(r, n, in[i], i == 0 ? "A" : i == 1 ? "B" : "C");
    if (in[0]->ndim != 2 || in[1]->ndim != 2) {
        char sa[160], sb[160];
        return nfail(r, n, KILN_ERR_SHAPE, "A %s and B %s must be 2-D", shp(in[0]->ndim, in[0]->shape, sa, sizeof sa),
                     shp(in[1]->ndim, in[1]->shape, sb, sizeof sb));
    }
    int flags = (attr_i(n, "transA", 0) ? KILN_TRANS_A : 0) | (attr_i(n, "transB", 0) ? KILN_TRANS_B : 0);
    float alpha = attr_f(n, "alpha", 1.0f), beta = attr_f(n, "beta", 1.0f);
    kiln_tensor *y = kiln_matmul_ex(CTX, in[0]->t, in[1]->t, flags);
    if (y && alpha != 1.0f) y = kiln_mul_scalar(CTX, y, alpha);
    if (y && n->nin > 2 && in[2]) {
        kiln_tensor *c = in[2]->t;
        if (beta != 1.0f) c = kiln_mul_scalar(CTX, c, beta);
        y = kiln_add(CTX, y, c);
    }
    return set_dev(r, n, out[0], y);
}

RUN(run_matmul) {
    kiln_status s = need_float(r, n, in[0], "A");
    if (!s) s = need_float(r, n, in[1], "B");
    if (s) return s;
    return set_dev(r, n, out[0], kiln_matmul(CTX, in[0]->t, in[1]->t));
}

/* ---- convolution and pooling ---------------------------------------------------------- */

typedef struct spatial {
    int nd; /* 1 or 2 spatial dims of the ONNX node */
    int64_t k[2], s[2], d[2], pb[2], pe[2];
} spatial;

/* Reads kernel_shape / strides / dilations / pads / auto_pad for an input of spatial size
 * in[] (nd dims); kernel from kshape when the attribute is absent. */
static kiln_status spatial_attrs(onnx_rt *r, const onnx_node *n, int nd, const int64_t *insz, const int64_t *kshape,
                                 bool transpose, spatial *sp) {
    memset(sp, 0, sizeof *sp);
    sp->nd = nd;
    const int64_t *v;
    int c;
    for (int i = 0; i < nd; i++) sp->k[i] = kshape ? kshape[i] : 1, sp->s[i] = 1, sp->d[i] = 1;
    if ((c = attr_ints(n, "kernel_shape", &v)) >= 0) {
        if (c != nd)
            return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "kernel_shape has %d values for %d spatial dims", c, nd);
        for (int i = 0; i < nd; i++) sp->k[i] = v[i];
    } else if (!kshape) {
        return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "attribute kernel_shape is required");
    }
    if ((c = attr_ints(n, "strides", &v)) >= 0) {
        if (c != nd) return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "strides has %d values for %d spatial dims", c, nd);
        for (int i = 0; i < nd; i++) sp->s[i] = v[i];
    }
    if ((c = attr_ints(n, "dilations", &v)) >= 0) {
        if (c != nd)
            return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "dilations has %d values for %d spatial dims", c, nd);
        for (int i = 0; i < nd; i++) sp->d[i] = v[i];
    }
    for (int i = 0; i < nd; i++)
        if (sp->k[i] < 1 || sp->s[i] < 1 || sp->d[i] < 1 || sp->k[i] > ONNX_MAX_DIM || sp->s[i] > ONNX_MAX_DIM ||
            sp->d[i] > ONNX_MAX_DIM)
            return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "kernel %lld, stride %lld, dilation %lld: each must be >= 1",
                         (long long)sp->k[i], (long long)sp->s[i], (long long)sp->d[i]);
    char buf[32];
    const char *ap = attr_s(n, "auto_pad", "NOTSET", buf, sizeof buf);
    if (strcmp(ap, "NOTSET") == 0) {
        if ((c = attr_ints(n, "pads", &v)) >= 0) {
            if (c != 2 * nd)
                return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "pads has %d values for %d spatial dims", c, nd);
            for (int i = 0; i < nd; i++) {
                sp->pb[i] = v[i], sp->pe[i] = v[i + nd];
                if (sp->pb[i] < 0 || sp->pe[i] < 0 || sp->pb[i] > ONNX_MAX_DIM || sp->pe[i] > ONNX_MAX_DIM)
                    return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "pads must be >= 0");
            }
        }
    } else if (strcmp(ap, "VALID") == 0) {
    } else if (strcmp(ap, "SAME_UPPER") == 0 || strcmp(ap, "SAME_LOWER") == 0) {
        for (int i = 0; i < nd; i++) {
            int64_t total;
            if (transpose) {
                total = 0; /* set by the ConvTranspose code from output_shape = in * stride */
            } else {
                int64_t o = (insz[i] + sp->s[i] - 1) / sp->s[i];
                total = (o - 1) * sp->s[i] + (sp->k[i] - 1) * sp->d[i] + 1 - insz[i];
                if (total < 0) total = 0;
            }
            bool upper = ap[5] == 'U';
            sp->pb[i] = upper ? total / 2 : total - total / 2;
            sp->pe[i] = total - sp->pb[i];
        }
    } else {
        return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "auto_pad '%s' is none of NOTSET, SAME_UPPER, SAME_LOWER, VALID",
                     ap);
    }
    return KILN_OK;
}

/* A 3-D [N, C, L] tensor as 4-D [N, C, 1, L]. */
static kiln_tensor *as_2d(kiln_ctx *ctx, kiln_tensor *x, int nd) { return nd == 1 ? kiln_unsqueeze(ctx, x, 2) : x; }
static kiln_tensor *from_2d(kiln_ctx *ctx, kiln_tensor *y, int nd) {
    return nd == 1 && y ? kiln_squeeze(ctx, y, 2) : y;
}

/* spatial params in kiln's [H, W] order: a 1-D op becomes H = 1. */
static void to_hw(const spatial *sp, const int64_t *src, int64_t one, int64_t out[2]) {
    if (sp->nd == 1)
        out[0] = one, out[1] = src[0];
    else
        out[0] = src[0], out[1] = src[1];
}

static kiln_status conv_rank(onnx_rt *r, const onnx_node *n, const onnx_val *x) {
    if (x->ndim != 3 && x->ndim != 4) {
        char sb[160];
        return nfail(r, n, KILN_ERR_UNSUPPORTED, "input X %s: kiln runs 1-D and 2-D %s (3-D or 4-D input)",
                     shp(x->ndim, x->shape, sb, sizeof sb), n->p->op_type);
    }
    return KILN_OK;
}

/* Pads a 4-D tensor's H and W (kiln_pad order: W pair first); negative amounts crop. */
static kiln_tensor *pad_hw(kiln_ctx *ctx, kiln_tensor *x, const int64_t b[2], const int64_t e[2], float value) {
    int64_t pad[4] = {b[1], e[1], b[0], e[0]};
    if (!pad[0] && !pad[1] && !pad[2] && !pad[3]) return x;
    return kiln_pad(ctx, x, 4, pad, value);
}

/* What Conv and ConvTranspose check first: float X and W, X of 3 or 4 dims, W of as many;
 * *nd the spatial dims, *sp the spatial attributes. */
static kiln_status conv_prelude(onnx_rt *r, const onnx_node *n, onnx_val *const *in, bool transposed, int *nd,
                                spatial *sp) {
    kiln_status s = need_float(r, n, in[0], "X");
    if (!s) s = need_float(r, n, in[1], "W");
    if (!s) s = conv_rank(r, n, in[0]);
    if (s) return s;
    *nd = in[0]->ndim - 2;
    if (in[1]->ndim != *nd + 2) {
        char sb[160];
        return nfail(r, n, KILN_ERR_SHAPE, "W %s must have %d dims", shp(in[1]->ndim, in[1]->shape, sb, sizeof sb),
                     *nd + 2);
    }
    return spatial_attrs(r, n, *nd, in[0]->shape + 2, in[1]->shape + 2, transposed, sp);
}

RUN(run_conv) {
    int nd;
    spatial sp;
    kiln_status s = conv_prelude(r, n, in, false, &nd, &sp);
    if (s) return s;
    int64_t k[2], st[2], dl[2], pb[2], pe[2];
    to_hw(&sp, sp.k, 1, k), to_hw(&sp, sp.s, 1, st), to_hw(&sp, sp.d, 1, dl), to_hw(&sp, sp.pb, 0, pb),
        to_hw(&sp, sp.pe, 0, pe);
    for (int i = 0; i < nd; i++)
        if (sp.k[i] != in[1]->shape[2 + i])
            return nfail(r, n, KILN_ERR_SHAPE, "kernel_shape %lld differs from W's size %lld", (long long)sp.k[i],
                         (long long)in[1]->shape[2 + i]);
    kiln_conv2d_params p = kiln_conv2d_defaults();
    p.groups = (int)attr_i(n, "group", 1);
    for (int i = 0; i < 2; i++) p.stride[i] = (int)st[i], p.dilation[i] = (int)dl[i];
    kiln_tensor *x = as_2d(CTX, in[0]->t, nd), *w = as_2d(CTX, in[1]->t, nd);
    if (pb[0] == pe[0] && pb[1] == pe[1]) {
        p.padding[0] = (int)pb[0], p.padding[1] = (int)pb[1];
    } else {
        x = pad_hw(CTX, x, pb, pe, 0.0f);
    }
    kiln_tensor *y = kiln_conv2d(CTX, x, w, n->nin > 2 && in[2] ? in[2]->t : NULL, &p);
    return set_dev(r, n, out[0], from_2d(CTX, y, nd));
}

RUN(run_conv_transpose) {
    int nd;
    spatial sp;
    kiln_status s = conv_prelude(r, n, in, true, &nd, &sp);
    if (s) return s;
    const int64_t *v;
    int64_t op[2] = {0, 0};
    int c;
    if ((c = attr_ints(n, "output_padding", &v)) >= 0) {
        if (c != nd) return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "output_padding has %d values for %d dims", c, nd);
        for (int i = 0; i < nd; i++) op[i] = v[i];
    }
    char buf[32];
    const char *ap = attr_s(n, "auto_pad", "NOTSET", buf, sizeof buf);
    int64_t want[2];
    int nwant = attr_ints(n, "output_shape", &v);
    if (nwant >= 0) {
        if (nwant != nd && nwant != nd + 2)
            return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "output_shape has %d values for %d dims", nwant, nd);
        for (int i = 0; i < nd; i++) want[i] = v[nwant - nd + i];
    } else if (ap[0] == 'S') {
        for (int i = 0; i < nd; i++) want[i] = in[0]->shape[2 + i] * sp.s[i];
        nwant = nd;
    }
    for (int i = 0; i < nd; i++) {
        if (op[i] < 0 || op[i] > ONNX_MAX_DIM)
            return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "output_padding must be >= 0");
        if (nwant >= 0) {
            int64_t full = (in[0]->shape[2 + i] - 1) * sp.s[i] + (sp.k[i] - 1) * sp.d[i] + 1;
            int64_t total = full + op[i] - want[i];
            /* Python's floor division: a negative total (output_shape beyond the full
             * result) extends the output at its end */
            int64_t half = total >= 0 ? total / 2 : -((-total + 1) / 2);
            if (strcmp(ap, "SAME_UPPER") == 0)
                sp.pb[i] = half, sp.pe[i] = total - half;
            else
                sp.pb[i] = total - half, sp.pe[i] = half;
        }
    }
    int64_t k[2], st[2], dl[2], pb[2], pe[2], oph[2];
    to_hw(&sp, sp.k, 1, k), to_hw(&sp, sp.s, 1, st), to_hw(&sp, sp.d, 1, dl), to_hw(&sp, sp.pb, 0, pb),
        to_hw(&sp, sp.pe, 0, pe), to_hw(&sp, op, 0, oph);
    (void)k;
    kiln_conv2d_params p = kiln_conv2d_defaults();
    p.groups = (int)attr_i(n, "group", 1);
    for (int i = 0; i < 2; i++) p.stride[i] = (int)st[i], p.dilation[i] = (int)dl[i];
    kiln_tensor *x = as_2d(CTX, in[0]->t, nd), *w = as_2d(CTX, in[1]->t, nd);
    kiln_tensor *b = n->nin > 2 && in[2] ? in[2]->t : NULL;
    kiln_tensor *y;
    if (pb[0] == pe[0] && pb[1] == pe[1] && pb[0] >= 0 && pb[1] >= 0 && oph[0] == 0 && oph[1] == 0) {
        p.padding[0] = (int)pb[0], p.padding[1] = (int)pb[1];
        y = kiln_conv_transpose2d(CTX, x, w, b, &p);
    } else {
        /* the full transposed convolution, then crop pads (or zero-extend output_padding) */
        y = kiln_conv_transpose2d(CTX, x, w, NULL, &p);
        int64_t nb[2] = {-pb[0], -pb[1]}, ne[2] = {oph[0] - pe[0], oph[1] - pe[1]};
        y = pad_hw(CTX, y, nb, ne, 0.0f);
        if (b) y = kiln_add(CTX, y, kiln_reshape(CTX, b, 3, (int64_t[]){-1, 1, 1}));
    }
    return set_dev(r, n, out[0], from_2d(CTX, y, nd));
}

static kiln_status pool(onnx_rt *r, const onnx_node *n, onnx_val *const *in, onnx_val *out, bool max) {
    kiln_status s = need_float(r, n, in[0], "X");
    if (!s) s = conv_rank(r, n, in[0]);
    if (s) return s;
    int nd = in[0]->ndim - 2;
    spatial sp;
    s = spatial_attrs(r, n, nd, in[0]->shape + 2, NULL, false, &sp);
    if (s) return s;
    bool ceil_mode = attr_i(n, "ceil_mode", 0) != 0;
    bool cip = attr_i(n, "count_include_pad", 0) != 0;
    int64_t k[2], st[2], dl[2], pb[2], pe[2];
    to_hw(&sp, sp.k, 1, k), to_hw(&sp, sp.s, 1, st), to_hw(&sp, sp.d, 1, dl), to_hw(&sp, sp.pb, 0, pb),
        to_hw(&sp, sp.pe, 0, pe);
    kiln_pool2d_params p = kiln_pool2d_defaults((int)k[0], (int)k[1]);
    for (int i = 0; i < 2; i++) p.stride[i] = (int)st[i], p.dilation[i] = (int)dl[i];
    p.ceil_mode = ceil_mode;
    p.count_include_pad = cip;
    kiln_tensor *x = as_2d(CTX, in[0]->t, nd);
    bool sym = true;
    for (int i = 0; i < 2; i++)
        if (pb[i] != pe[i] || 2 * pb[i] > (k[i] - 1) * dl[i] + 1) sym = false;
    kiln_tensor *y;
    if (sym) {
        p.padding[0] = (int)pb[0], p.padding[1] = (int)pb[1];
        y = max ? kiln_max_pool2d(CTX, x, &p, NULL) : kiln_avg_pool2d(CTX, x, &p);
    } else if (ceil_mode) {
        return nfail(r, n, KILN_ERR_UNSUPPORTED, "ceil_mode with asymmetric pads (or pads over half the kernel)");
    } else if (max) {
        y = kiln_max_pool2d(CTX, pad_hw(CTX, x, pb, pe, -INFINITY), &p, NULL);
    } else {
        y = kiln_avg_pool2d(CTX, pad_hw(CTX, x, pb, pe, 0.0f), &p);
        if (!cip && y) {
            /* divide by the window's count of real (unpadded) elements */
            kiln_tensor *ones = kiln_ones(CTX, 4, (int64_t[]){1, 1, kiln_tensor_shape(x)[2], kiln_tensor_shape(x)[3]});
            kiln_tensor *cnt = kiln_avg_pool2d(CTX, pad_hw(CTX, ones, pb, pe, 0.0f), &p);
            y = kiln_div(CTX, y, cnt);
        }
    }
    return set_dev(r, n, out, from_2d(CTX, y, nd));
}

RUN(run_max_pool) { return pool(r, n, in, out[0], true); }
RUN(run_average_pool) { return pool(r, n, in, out[0], false); }

static kiln_status check_max_pool(onnx_rt *r, const onnx_node *n) {
    if (n->nout > 1 && n->out[1] >= 0) return nfail(r, n, KILN_ERR_UNSUPPORTED, "output Indices is not supported");
    if (attr_i(n, "storage_order", 0) != 0)
        return nfail(r, n, KILN_ERR_UNSUPPORTED, "storage_order 1 is not supported");
    return KILN_OK;
}

static kiln_status global_pool(onnx_rt *r, const onnx_node *n, onnx_val *const *in, onnx_val *out, bool max) {
    kiln_status s = need_float(r, n, in[0], "X");
    if (s) return s;
    int nd = in[0]->ndim;
    if (nd < 3) return nfail(r, n, KILN_ERR_SHAPE, "input must have at least 3 dims, not %d", nd);
    if (nd == 4 && !max) return set_dev(r, n, out, kiln_global_avg_pool2d(CTX, in[0]->t));
    int axes[KILN_MAX_DIMS];
    for (int i = 2; i < nd; i++) axes[i - 2] = i;
    return set_dev(r, n, out,
                   max ? kiln_max(CTX, in[0]->t, nd - 2, axes, true) : kiln_mean(CTX, in[0]->t, nd - 2, axes, true));
}

RUN(run_global_average_pool) { return global_pool(r, n, in, out[0], false); }
RUN(run_global_max_pool) { return global_pool(r, n, in, out[0], true); }

RUN(run_batch_norm) {
    for (int i = 0; i < 5; i++) {
        kiln_status s = need_float(r, n, in[i], "X/scale/B/mean/var");
        if (s) return s;
    }
    if (in[0]->ndim < 2) return nfail(r, n, KILN_ERR_SHAPE, "X must have at least 2 dims");
    kiln_tensor *y = kiln_batch_norm(CTX, in[0]->t, in[3]->t, in[4]->t, in[1]->t, in[2]->t, false,
                                     attr_f(n, "momentum", 0.9f), attr_f(n, "epsilon", 1e-5f));
    return set_dev(r, n, out[0], y);
}

static kiln_status check_batch_norm(onnx_rt *r, const onnx_node *n) {
    if (attr_i(n, "training_mode", 0) != 0)
        return nfail(r, n, KILN_ERR_UNSUPPORTED, "training_mode 1 is not supported (inference only)");
    for (int i = 1; i < n->nout; i++)
        if (n->out[i] >= 0)
            return nfail(r, n, KILN_ERR_UNSUPPORTED, "the training outputs (running mean/var) are not supported");
    return KILN_OK;
}

RUN(run_layer_norm) {
    kiln_status s = need_float(r, n, in[0], "X");
    if (!s) s = need_float(r, n, in[1], "Scale");
    if (!s && n->nin > 2) s = need_float(r, n, in[2], "B");
    if (s) return s;
    int nd = in[0]->ndim;
    bool ok;
    int axis = norm_axis(attr_i(n, "axis", -1), nd, &ok);
    if (!ok)
        return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "axis %lld out of range for %d dims",
                     (long long)attr_i(n, "axis", -1), nd);
    float eps = attr_f(n, "epsilon", 1e-5f);
    bool stats = (n->nout > 1 && n->out[1] >= 0) || (n->nout > 2 && n->out[2] >= 0);
    kiln_tensor *x = in[0]->t, *w = in[1]->t, *b = n->nin > 2 && in[2] ? in[2]->t : NULL;
    bool exact =
        in[1]->ndim == nd - axis && !memcmp(in[1]->shape, in[0]->shape + axis, sizeof(int64_t) * (size_t)(nd - axis));
    if (b)
        exact = exact && in[2]->ndim == nd - axis &&
                !memcmp(in[2]->shape, in[0]->shape + axis, sizeof(int64_t) * (size_t)(nd - axis));
    if (exact && !stats) return set_dev(r, n, out[0], kiln_layer_norm(CTX, x, nd - axis, w, b, eps));
    int axes[KILN_MAX_DIMS];
    for (int i = axis; i < nd; i++) axes[i - axis] = i;
    kiln_tensor *mean = kiln_mean(CTX, x, nd - axis, axes, true);
    kiln_tensor *d = kiln_sub(CTX, x, mean);
    kiln_tensor *var = kiln_mean(CTX, kiln_mul(CTX, d, d), nd - axis, axes, true);
    kiln_tensor *inv = kiln_pow_scalar(CTX, kiln_add_scalar(CTX, var, eps), -0.5f);
    kiln_tensor *y = kiln_mul(CTX, kiln_mul(CTX, d, inv), w);
    if (b) y = kiln_add(CTX, y, b);
    s = set_dev(r, n, out[0], y);
    if (!s && n->nout > 1 && n->out[1] >= 0) s = set_dev(r, n, out[1], mean);
    if (!s && n->nout > 2 && n->out[2] >= 0) s = set_dev(r, n, out[2], inv);
    return s;
}

static kiln_status check_layer_norm(onnx_rt *r, const onnx_node *n) {
    int64_t st = attr_i(n, "stash_type", 1);
    if (st != 1) return nfail(r, n, KILN_ERR_UNSUPPORTED, "stash_type %lld (kiln computes in float)", (long long)st);
    return KILN_OK;
}

/* ---- shape operators (device views or host copies) ---------------------------------- */

/* out = in's values with a new shape (same numel). */
static kiln_status reshape_to(onnx_rt *r, const onnx_node *n, const onnx_val *x, int nd, const int64_t *shape,
                              onnx_val *out) {
    if (shape_numel(nd, shape) != kiln__onnx_numel(x)) {
        char sa[160], sb[160];
        return nfail(r, n, KILN_ERR_SHAPE, "cannot reshape %s to %s", shp(x->ndim, x->shape, sa, sizeof sa),
                     shp(nd, shape, sb, sizeof sb));
    }
    if (is_float(x)) return set_dev(r, n, out, kiln_reshape(CTX, x->t, nd, shape));
    int64_t *h = host_ints(r, n, x);
    if (!h) return kiln_error_status(CTX);
    return set_host(r, n, out, x->type, nd, shape, h);
}

RUN(run_reshape) {
    int64_t sh[KILN_MAX_DIMS];
    int nd;
    kiln_status s = small_ints(r, n, in[1], "shape", sh, KILN_MAX_DIMS, &nd);
    if (s) return s;
    bool allowzero = attr_i(n, "allowzero", 0) != 0;
    int infer = -1;
    int64_t known = 1;
    for (int i = 0; i < nd; i++) {
        if (sh[i] == 0 && !allowzero) {
            if (i >= in[0]->ndim) return nfail(r, n, KILN_ERR_SHAPE, "shape[%d] = 0 copies a dim the input lacks", i);
            sh[i] = in[0]->shape[i];
        }
        if (sh[i] == -1) {
            if (infer >= 0) return nfail(r, n, KILN_ERR_SHAPE, "more than one -1 in shape");
            infer = i;
        } else if (sh[i] < 0) {
            return nfail(r, n, KILN_ERR_SHAPE, "shape[%d] = %lld", i, (long long)sh[i]);
        } else {
            known *= sh[i];
        }
    }
    if (infer >= 0) {
        int64_t total = kiln__onnx_numel(in[0]);
        if (known == 0 || total % known) {
            char sa[160];
            return nfail(r, n, KILN_ERR_SHAPE, "cannot infer the -1 of shape for input %s",
                         shp(in[0]->ndim, in[0]->shape, sa, sizeof sa));
        }
        sh[infer] = total / known;
    }
    return reshape_to(r, n, in[0], nd, sh, out[0]);
}

RUN(run_flatten) {
    int nd = in[0]->ndim;
    int64_t axis = attr_i(n, "axis", 1);
    if (axis < 0) axis += nd;
    if (axis < 0 || axis > nd)
        return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "axis %lld out of range for %d dims",
                     (long long)attr_i(n, "axis", 1), nd);
    int64_t sh[2] = {shape_numel((int)axis, in[0]->shape), shape_numel(nd - (int)axis, in[0]->shape + axis)};
    return reshape_to(r, n, in[0], 2, sh, out[0]);
}

/* The axes of Squeeze/Unsqueeze/Reduce*: attribute before opset 13 (18 for the reduces
 * other than ReduceSum), second input from then on. *count -1: none given. */
static kiln_status axes_of(onnx_rt *r, const onnx_node *n, onnx_val *const *in, bool from_input, int64_t *axes,
                           int *count) {
    *count = -1;
    if (from_input) {
        if (n->nin > 1 && in[1]) return small_ints(r, n, in[1], "axes", axes, KILN_MAX_DIMS, count);
        return KILN_OK;
    }
    const int64_t *v;
    int c = attr_ints(n, "axes", &v);
    if (c > KILN_MAX_DIMS) return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "%d axes", c);
    if (c > 0) memcpy(axes, v, sizeof(int64_t) * (size_t)c); /* an empty list has no array */
    *count = c;
    return KILN_OK;
}

RUN(run_squeeze) {
    int64_t axes[KILN_MAX_DIMS];
    int c;
    kiln_status s = axes_of(r, n, in, r->opset >= 13, axes, &c);
    if (s) return s;
    bool drop[KILN_MAX_DIMS] = {false};
    int nd = in[0]->ndim;
    for (int i = 0; i < c; i++) {
        bool ok;
        int a = norm_axis(axes[i], nd, &ok);
        if (!ok || in[0]->shape[a] != 1)
            return nfail(r, n, KILN_ERR_SHAPE, "axis %lld is not a dim of size 1", (long long)axes[i]);
        drop[a] = true;
    }
    int64_t sh[KILN_MAX_DIMS];
    int k = 0;
    for (int d = 0; d < nd; d++)
        if (!(c < 0 ? in[0]->shape[d] == 1 : drop[d])) sh[k++] = in[0]->shape[d];
    return reshape_to(r, n, in[0], k, sh, out[0]);
}

RUN(run_unsqueeze) {
    int64_t axes[KILN_MAX_DIMS];
    int c;
    kiln_status s = axes_of(r, n, in, r->opset >= 13, axes, &c);
    if (s) return s;
    if (c < 0) return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "axes are required");
    int nd = in[0]->ndim + c;
    if (nd > KILN_MAX_DIMS) return nfail(r, n, KILN_ERR_UNSUPPORTED, "%d dims (kiln holds %d)", nd, KILN_MAX_DIMS);
    bool ins[KILN_MAX_DIMS] = {false};
    for (int i = 0; i < c; i++) {
        bool ok;
        int a = norm_axis(axes[i], nd, &ok);
        if (!ok || ins[a])
            return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "axis %lld out of range or repeated", (long long)axes[i]);
        ins[a] = true;
    }
    int64_t sh[KILN_MAX_DIMS];
    for (int d = 0, j = 0; d < nd; d++) sh[d] = ins[d] ? 1 : in[0]->shape[j++];
    return reshape_to(r, n, in[0], nd, sh, out[0]);
}

RUN(run_transpose) {
    int nd = in[0]->ndim;
    const int64_t *v;
    int c = attr_ints(n, "perm", &v);
    int perm[KILN_MAX_DIMS];
    bool seen[KILN_MAX_DIMS] = {false};
    if (c >= 0 && c != nd) return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "perm has %d values for %d dims", c, nd);
    for (int i = 0; i < nd; i++) {
        int64_t p = c >= 0 ? v[i] : nd - 1 - i;
        if (p < 0) p += nd;
        if (p < 0 || p >= nd || seen[p]) return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "perm is not a permutation");
        seen[p] = true;
        perm[i] = (int)p;
    }
    if (is_float(in[0])) return set_dev(r, n, out[0], kiln_contiguous(CTX, kiln_permute(CTX, in[0]->t, perm)));
    int64_t cs[KILN_MAX_DIMS], st[KILN_MAX_DIMS], sh[KILN_MAX_DIMS];
    contig_strides(nd, in[0]->shape, cs);
    for (int i = 0; i < nd; i++) st[i] = cs[perm[i]], sh[i] = in[0]->shape[perm[i]];
    return set_host(r, n, out[0], in[0]->type, nd, sh, h_gather_view(in[0]->h, nd, sh, st, 0));
}

RUN(run_concat) {
    int k = n->nin, nd = in[0]->ndim;
    bool ok;
    int axis = norm_axis(attr_i(n, "axis", 0), nd, &ok);
    if (!ok)
        return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "axis %lld out of range for %d dims",
                     (long long)attr_i(n, "axis", 0), nd);
    int64_t sh[KILN_MAX_DIMS];
    memcpy(sh, in[0]->shape, sizeof sh);
    sh[axis] = 0;
    bool flt = is_float(in[0]);
    for (int i = 0; i < k; i++) {
        char sa[160], sb[160];
        bool same = in[i]->ndim == nd && is_float(in[i]) == flt;
        for (int d = 0; same && d < nd; d++) same = d == axis || in[i]->shape[d] == in[0]->shape[d];
        if (!same)
            return nfail(r, n, KILN_ERR_SHAPE, "input %d %s (%s) does not match input 0 %s (%s)", i,
                         shp(in[i]->ndim, in[i]->shape, sa, sizeof sa), kiln__onnx_type_name(in[i]->type),
                         shp(nd, in[0]->shape, sb, sizeof sb), kiln__onnx_type_name(in[0]->type));
        sh[axis] += in[i]->shape[axis];
    }
    if (flt) {
        kiln_tensor *ts[64];
        int m = 0;
        if (k > 64) return nfail(r, n, KILN_ERR_UNSUPPORTED, "%d inputs (at most 64)", k);
        for (int i = 0; i < k; i++)
            if (in[i]->shape[axis] > 0) ts[m++] = in[i]->t;
        if (m == 0) return set_dev(r, n, out[0], kiln_empty(CTX, KILN_F32, nd, sh));
        return set_dev(r, n, out[0], m == 1 ? kiln_clone(CTX, ts[0]) : kiln_concat(CTX, m, ts, axis));
    }
    int64_t total = shape_numel(nd, sh), outer = shape_numel(axis, sh),
            inner = shape_numel(nd - axis - 1, sh + axis + 1);
    int64_t *h = alloc_i(total);
    if (!h) return nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    int64_t pos = 0;
    for (int64_t o = 0; o < outer; o++)
        for (int i = 0; i < k; i++) {
            int64_t len = in[i]->shape[axis] * inner;
            if (len) memcpy(h + pos, in[i]->h + o * len, (size_t)len * sizeof *h);
            pos += len;
        }
    return set_host(r, n, out[0], in[0]->type, nd, sh, h);
}

/* The values of x along axis from start by step (negative allowed), count of them. */
static kiln_status slice_axis(onnx_rt *r, const onnx_node *n, const onnx_val *x, int axis, int64_t start, int64_t step,
                              int64_t count, onnx_val *out) {
    int nd = x->ndim;
    int64_t sh[KILN_MAX_DIMS];
    memcpy(sh, x->shape, sizeof sh);
    sh[axis] = count;
    if (!is_float(x)) {
        int64_t st[KILN_MAX_DIMS];
        contig_strides(nd, x->shape, st);
        int64_t off = start * st[axis];
        st[axis] *= step;
        return set_host(r, n, out, x->type, nd, sh, h_gather_view(x->h, nd, sh, st, count ? off : 0));
    }
    if (count == 0) return set_dev(r, n, out, kiln_empty(CTX, KILN_F32, nd, sh));
    if (step > 0) return set_dev(r, n, out, kiln_slice(CTX, x->t, axis, start, start + (count - 1) * step + 1, step));
    int32_t *idx = malloc((size_t)count * sizeof *idx);
    if (!idx) return nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    for (int64_t i = 0; i < count; i++) idx[i] = (int32_t)(start + i * step);
    kiln_tensor *it = kiln_from_host(CTX, idx, KILN_I32, 1, &count);
    free(idx);
    return set_dev(r, n, out, kiln_index_select(CTX, x->t, axis, it));
}

RUN(run_slice) {
    int64_t starts[KILN_MAX_DIMS], ends[KILN_MAX_DIMS], axes[KILN_MAX_DIMS], steps[KILN_MAX_DIMS];
    int ns, ne, na = -1, nst = -1;
    kiln_status s = small_ints(r, n, in[1], "starts", starts, KILN_MAX_DIMS, &ns);
    if (!s) s = small_ints(r, n, in[2], "ends", ends, KILN_MAX_DIMS, &ne);
    if (!s && n->nin > 3 && in[3]) s = small_ints(r, n, in[3], "axes", axes, KILN_MAX_DIMS, &na);
    if (!s && n->nin > 4 && in[4]) s = small_ints(r, n, in[4], "steps", steps, KILN_MAX_DIMS, &nst);
    if (s) return s;
    if (ne != ns || (na >= 0 && na != ns) || (nst >= 0 && nst != ns))
        return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "starts, ends, axes and steps differ in length");
    int nd = in[0]->ndim;
    onnx_val cur = *in[0], tmp = {0};
    bool owned = false, seen[KILN_MAX_DIMS] = {false};
    for (int i = 0; i < ns; i++) {
        bool ok;
        int a = norm_axis(na >= 0 ? axes[i] : i, nd, &ok);
        if (!ok || seen[a])
            return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "axis %lld out of range or repeated",
                         (long long)(na >= 0 ? axes[i] : i));
        seen[a] = true;
        int64_t step = nst >= 0 ? steps[i] : 1, dim = cur.shape[a], st = starts[i], en = ends[i];
        if (step == 0) return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "step 0");
        if (st < 0) st += dim;
        if (en < 0) en += dim;
        int64_t count;
        if (step > 0) {
            st = st < 0 ? 0 : st > dim ? dim : st;
            en = en < 0 ? 0 : en > dim ? dim : en;
            count = en > st ? (en - st + step - 1) / step : 0;
        } else {
            st = st < 0 ? -1 : st > dim - 1 ? dim - 1 : st;
            en = en < -1 ? -1 : en > dim - 1 ? dim - 1 : en;
            count = st > en ? (st - en + (-step) - 1) / (-step) : 0;
        }
        if (count == dim && step == 1) continue;
        onnx_val next = {0};
        s = slice_axis(r, n, &cur, a, count ? st : 0, step, count, &next);
        if (owned) kiln__onnx_val_clear(&tmp);
        if (s) return s;
        tmp = next, cur = next, owned = true;
    }
    if (!owned) return reshape_to(r, n, in[0], nd, in[0]->shape, out[0]);
    *out[0] = tmp;
    return KILN_OK;
}

RUN(run_split) {
    int nd = in[0]->ndim;
    bool ok;
    int axis = norm_axis(attr_i(n, "axis", 0), nd, &ok);
    if (!ok) return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "axis out of range");
    int k = n->nout;
    int64_t sizes[256];
    if (k > 256) return nfail(r, n, KILN_ERR_UNSUPPORTED, "%d outputs", k);
    int c = -1;
    const int64_t *v;
    if (r->opset >= 13) {
        if (n->nin > 1 && in[1]) {
            kiln_status s = small_ints(r, n, in[1], "split", sizes, 256, &c);
            if (s) return s;
        }
    } else if ((c = attr_ints(n, "split", &v)) >= 0) {
        if (c > 256) return nfail(r, n, KILN_ERR_UNSUPPORTED, "%d parts", c);
        if (c > 0) memcpy(sizes, v, sizeof(int64_t) * (size_t)c);
    }
    int64_t dim = in[0]->shape[axis];
    if (c < 0) {
        if (dim % k)
            return nfail(r, n, KILN_ERR_SHAPE, "dim %lld does not split into %d equal parts", (long long)dim, k);
        for (int i = 0; i < k; i++) sizes[i] = dim / k;
    } else {
        int64_t tot = 0;
        for (int i = 0; i < c; i++) tot += sizes[i] < 0 ? -ONNX_MAX_DIM : sizes[i];
        if (c != k || tot != dim)
            return nfail(r, n, KILN_ERR_SHAPE, "split has %d sizes summing to %lld for %d outputs and dim %lld", c,
                         (long long)tot, k, (long long)dim);
    }
    int64_t start = 0;
    for (int i = 0; i < k; i++) {
        if (n->out[i] >= 0) {
            kiln_status s = slice_axis(r, n, in[0], axis, start, 1, sizes[i], out[i]);
            if (s) return s;
        }
        start += sizes[i];
    }
    return KILN_OK;
}

RUN(run_gather) {
    int nd = in[0]->ndim;
    bool ok;
    int axis = norm_axis(attr_i(n, "axis", 0), nd, &ok);
    if (!ok || nd == 0)
        return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "axis %lld out of range for %d dims",
                     (long long)attr_i(n, "axis", 0), nd);
    if (is_float(in[1])) return nfail(r, n, KILN_ERR_DTYPE, "indices must be integers");
    int64_t *idx = host_ints(r, n, in[1]);
    if (!idx) return kiln_error_status(CTX);
    int64_t cnt = kiln__onnx_numel(in[1]), dim = in[0]->shape[axis];
    for (int64_t i = 0; i < cnt; i++) {
        if (idx[i] < 0) idx[i] += dim;
        if (idx[i] < 0 || idx[i] >= dim) {
            long long bad = (long long)idx[i];
            free(idx);
            return nfail(r, n, KILN_ERR_RANGE, "index %lld out of range for dim %lld", bad, (long long)dim);
        }
    }
    int ond = nd - 1 + in[1]->ndim;
    if (ond > KILN_MAX_DIMS) {
        free(idx);
        return nfail(r, n, KILN_ERR_UNSUPPORTED, "%d output dims", ond);
    }
    int64_t sh[KILN_MAX_DIMS];
    int k = 0;
    for (int d = 0; d < axis; d++) sh[k++] = in[0]->shape[d];
    for (int d = 0; d < in[1]->ndim; d++) sh[k++] = in[1]->shape[d];
    for (int d = axis + 1; d < nd; d++) sh[k++] = in[0]->shape[d];
    if (is_float(in[0])) {
        kiln_tensor *y;
        if (cnt == 0) {
            y = kiln_empty(CTX, KILN_F32, ond, sh);
        } else {
            int32_t *i32 = malloc((size_t)cnt * sizeof *i32);
            if (!i32) {
                free(idx);
                return nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
            }
            for (int64_t i = 0; i < cnt; i++) i32[i] = (int32_t)idx[i];
            kiln_tensor *it = kiln_from_host(CTX, i32, KILN_I32, 1, &cnt);
            free(i32);
            y = kiln_reshape(CTX, kiln_index_select(CTX, in[0]->t, axis, it), ond, sh);
        }
        free(idx);
        return set_dev(r, n, out[0], y);
    }
    int64_t outer = shape_numel(axis, in[0]->shape), inner = shape_numel(nd - axis - 1, in[0]->shape + axis + 1);
    int64_t *h = alloc_i(outer * cnt * inner);
    if (!h) {
        free(idx);
        return nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    }
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < cnt; i++)
            if (inner)
                memcpy(h + (o * cnt + i) * inner, in[0]->h + (o * dim + idx[i]) * inner, (size_t)inner * sizeof *h);
    free(idx);
    return set_host(r, n, out[0], in[0]->type, ond, sh, h);
}

RUN(run_shape) {
    int nd = in[0]->ndim;
    int64_t st = attr_i(n, "start", 0), en = attr_i(n, "end", nd);
    if (st < 0) st += nd;
    if (en < 0) en += nd;
    st = st < 0 ? 0 : st > nd ? nd : st;
    en = en < 0 ? 0 : en > nd ? nd : en;
    int64_t cnt = en > st ? en - st : 0;
    int64_t *h = alloc_i(cnt);
    if (h && cnt) memcpy(h, in[0]->shape + st, (size_t)cnt * sizeof *h);
    return set_host(r, n, out[0], OT_INT64, 1, &cnt, h);
}

RUN(run_size) {
    int64_t *h = alloc_i(1);
    if (h) h[0] = kiln__onnx_numel(in[0]);
    return set_host(r, n, out[0], OT_INT64, 0, NULL, h);
}

RUN(run_identity) { return reshape_to(r, n, in[0], in[0]->ndim, in[0]->shape, out[0]); }

RUN(run_dropout) {
    if (n->nin > 2 && in[2]) {
        int64_t *t = host_ints(r, n, in[2]);
        if (!t) return kiln_error_status(CTX);
        bool train = kiln__onnx_numel(in[2]) > 0 && t[0];
        free(t);
        /* training with ratio 0 keeps everything: the inference result */
        float ratio = 0.5f;
        if (train && n->nin > 1 && in[1] && is_float(in[1]) && kiln__onnx_numel(in[1]) == 1)
            ratio = kiln_tensor_item(in[1]->t);
        if (train && ratio != 0.0f)
            return nfail(r, n, KILN_ERR_UNSUPPORTED,
                         "training_mode true with ratio %g (kiln runs ONNX models for "
                         "inference)",
                         ratio);
    }
    kiln_status s = reshape_to(r, n, in[0], in[0]->ndim, in[0]->shape, out[0]);
    if (!s && n->nout > 1 && n->out[1] >= 0) {
        int64_t cnt = kiln__onnx_numel(in[0]);
        int64_t *h = alloc_i(cnt);
        for (int64_t i = 0; h && i < cnt; i++) h[i] = 1;
        s = set_host(r, n, out[1], OT_BOOL, in[0]->ndim, in[0]->shape, h);
    }
    return s;
}

RUN(run_constant_of_shape) {
    int64_t sh[KILN_MAX_DIMS];
    int nd;
    kiln_status s = small_ints(r, n, in[0], "input", sh, KILN_MAX_DIMS, &nd);
    if (s) return s;
    int64_t cnt = 1;
    for (int i = 0; i < nd; i++) {
        if (sh[i] < 0 || sh[i] > ONNX_MAX_DIM || (cnt *= sh[i]) > ONNX_MAX_DIM) {
            char sb[160];
            return nfail(r, n, KILN_ERR_SHAPE, "shape %s: sizes must be in [0, 2^31) with at most 2^31 elements",
                         shp(nd, sh, sb, sizeof sb));
        }
    }
    const Onnx__AttributeProto *a = kiln__onnx_attr(n, "value");
    onnx_val v = {0};
    if (a && a->t) {
        s = kiln__onnx_tensor_to_val(CTX, r->what, a->t, NULL, 0, &v);
        if (s) return s;
        if (kiln__onnx_numel(&v) != 1) {
            kiln__onnx_val_clear(&v);
            return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "value must hold one element");
        }
    }
    if (!a || v.type == OT_FLOAT) {
        float f = a ? kiln_tensor_item(v.t) : 0.0f;
        kiln__onnx_val_clear(&v);
        return set_dev(r, n, out[0], kiln_full(CTX, f, nd, sh));
    }
    int64_t x = v.h[0];
    int type = v.type;
    kiln__onnx_val_clear(&v);
    int64_t *h = alloc_i(cnt);
    for (int64_t i = 0; h && i < cnt; i++) h[i] = x;
    return set_host(r, n, out[0], type, nd, sh, h);
}

RUN(run_expand) {
    int64_t sh[KILN_MAX_DIMS], osh[KILN_MAX_DIMS];
    int nd, ond;
    kiln_status s = small_ints(r, n, in[1], "shape", sh, KILN_MAX_DIMS, &nd);
    if (s) return s;
    char sa[160], sb[160];
    for (int i = 0; i < nd; i++)
        if (sh[i] < 0 || sh[i] > ONNX_MAX_DIM)
            return nfail(r, n, KILN_ERR_SHAPE, "shape[%d] = %lld", i, (long long)sh[i]);
    if (!bcast_shape(in[0]->ndim, in[0]->shape, nd, sh, &ond, osh) || shape_numel(ond, osh) > ONNX_MAX_DIM)
        return nfail(r, n, KILN_ERR_SHAPE, "input %s does not broadcast to %s",
                     shp(in[0]->ndim, in[0]->shape, sa, sizeof sa), shp(nd, sh, sb, sizeof sb));
    if (is_float(in[0])) {
        kiln_tensor *x = in[0]->t;
        if (kiln__onnx_numel(in[0]) == 0 || shape_numel(ond, osh) == 0)
            return set_dev(r, n, out[0], kiln_empty(CTX, KILN_F32, ond, osh));
        return set_dev(r, n, out[0], kiln_contiguous(CTX, kiln_expand(CTX, x, ond, osh)));
    }
    return set_host(r, n, out[0], in[0]->type, ond, osh, h_broadcast(in[0], ond, osh));
}

RUN(run_where) {
    const onnx_val *c = in[0], *a = in[1], *b = in[2];
    if (is_float(a) != is_float(b))
        return nfail(r, n, KILN_ERR_DTYPE, "X (%s) and Y (%s) differ in dtype", kiln__onnx_type_name(a->type),
                     kiln__onnx_type_name(b->type));
    if (is_float(a)) {
        kiln_tensor *ct = dev_f32(r, n, c);
        if (!ct) return kfail(r, n);
        return set_dev(r, n, out[0], kiln_where(CTX, ct, a->t, b->t));
    }
    int nd, nd2;
    int64_t sh[KILN_MAX_DIMS], sh2[KILN_MAX_DIMS];
    char s1[160], s2[160], s3[160];
    if (!bcast_shape(c->ndim, c->shape, a->ndim, a->shape, &nd, sh) ||
        !bcast_shape(nd, sh, b->ndim, b->shape, &nd2, sh2))
        return nfail(r, n, KILN_ERR_SHAPE, "condition %s, X %s and Y %s do not broadcast",
                     shp(c->ndim, c->shape, s1, sizeof s1), shp(a->ndim, a->shape, s2, sizeof s2),
                     shp(b->ndim, b->shape, s3, sizeof s3));
    if (is_float(c)) return nfail(r, n, KILN_ERR_DTYPE, "condition must be bool");
    int64_t *x = h_broadcast(c, nd2, sh2), *y = h_broadcast(a, nd2, sh2), *z = h_broadcast(b, nd2, sh2);
    if (!x || !y || !z) {
        free(x), free(y), free(z);
        return nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    }
    for (int64_t i = 0; i < shape_numel(nd2, sh2); i++) x[i] = x[i] ? y[i] : z[i];
    free(y), free(z);
    return set_host(r, n, out[0], a->type, nd2, sh2, x);
}

static kiln_status check_cast(onnx_rt *r, const onnx_node *n) {
    int64_t to = attr_i(n, "to", 0);
    if (!kiln__onnx_type_ok((int)to))
        return nfail(r, n, KILN_ERR_UNSUPPORTED, "cast to %s: kiln holds float, bool and integer tensors",
                     kiln__onnx_type_name((int)to));
    return KILN_OK;
}

RUN(run_cast) {
    int to = (int)attr_i(n, "to", 0);
    const onnx_val *x = in[0];
    if (to == OT_FLOAT) {
        if (is_float(x)) return reshape_to(r, n, x, x->ndim, x->shape, out[0]);
        return set_dev(r, n, out[0], dev_f32(r, n, x));
    }
    int64_t *h = host_ints(r, n, x);
    if (!h) return kiln_error_status(CTX);
    if (is_float(x) && to == OT_BOOL) {
        /* host_ints truncated: 0.5 must stay true */
        float *f = malloc((size_t)(kiln__onnx_numel(x) + 1) * sizeof *f);
        if (!f || kiln_to_host(x->t, f, (size_t)kiln__onnx_numel(x) * sizeof *f) != KILN_OK) {
            free(f), free(h);
            return kfail(r, n);
        }
        for (int64_t i = 0; i < kiln__onnx_numel(x); i++) h[i] = f[i] != 0.0f;
        free(f);
    }
    for (int64_t i = 0; i < kiln__onnx_numel(x); i++) h[i] = wrap_int(to, h[i]);
    return set_host(r, n, out[0], to, x->ndim, x->shape, h);
}

static kiln_status reduce(onnx_rt *r, const onnx_node *n, onnx_val *const *in, onnx_val *out, int kind) {
    kiln_status s = need_float(r, n, in[0], "data");
    if (s) return s;
    int64_t axes[KILN_MAX_DIMS];
    int c;
    bool from_input = kind == 0 && r->opset >= 13;
    s = axes_of(r, n, in, from_input, axes, &c);
    if (s) return s;
    bool keep = attr_i(n, "keepdims", 1) != 0;
    int nd = in[0]->ndim;
    if (c <= 0 && from_input && attr_i(n, "noop_with_empty_axes", 0))
        return reshape_to(r, n, in[0], nd, in[0]->shape, out);
    int ax[KILN_MAX_DIMS];
    for (int i = 0; i < (c > 0 ? c : 0); i++) {
        bool ok;
        ax[i] = norm_axis(axes[i], nd, &ok);
        if (!ok)
            return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "axis %lld out of range for %d dims", (long long)axes[i], nd);
    }
    int na = c > 0 ? c : 0;
    if (nd == 0) return reshape_to(r, n, in[0], 0, NULL, out);
    if (kiln__onnx_numel(in[0]) == 0) return nfail(r, n, KILN_ERR_UNSUPPORTED, "reduction of an empty tensor");
    kiln_tensor *x = in[0]->t, *y = NULL;
    switch (kind) {
    case 0: y = kiln_sum(CTX, x, na, ax, keep); break;
    case 1: y = kiln_mean(CTX, x, na, ax, keep); break;
    case 2: y = kiln_max(CTX, x, na, ax, keep); break;
    case 3: y = kiln_min(CTX, x, na, ax, keep); break;
    case 4: y = kiln_sum(CTX, kiln_mul(CTX, x, x), na, ax, keep); break;
    }
    return set_dev(r, n, out, y);
}

RUN(run_reduce_sum) { return reduce(r, n, in, out[0], 0); }
RUN(run_reduce_mean) { return reduce(r, n, in, out[0], 1); }
RUN(run_reduce_max) { return reduce(r, n, in, out[0], 2); }
RUN(run_reduce_min) { return reduce(r, n, in, out[0], 3); }
RUN(run_reduce_sum_square) { return reduce(r, n, in, out[0], 4); }

RUN(run_clip) {
    if (!is_float(in[0])) {
        int64_t lo = INT64_MIN, hi = INT64_MAX;
        for (int i = 1; i < 3; i++) {
            if (n->nin <= i || !in[i]) continue;
            if (is_float(in[i]) || kiln__onnx_numel(in[i]) != 1)
                return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "min/max must be scalars of the input's dtype");
            if (i == 1)
                lo = in[i]->h[0];
            else
                hi = in[i]->h[0];
        }
        int64_t *h = host_ints(r, n, in[0]);
        if (!h) return kiln_error_status(CTX);
        for (int64_t i = 0; i < kiln__onnx_numel(in[0]); i++) h[i] = h[i] < lo ? lo : h[i] > hi ? hi : h[i];
        return set_host(r, n, out[0], in[0]->type, in[0]->ndim, in[0]->shape, h);
    }
    kiln_tensor *y = in[0]->t;
    for (int i = 1; i < 3; i++) {
        if (n->nin <= i || !in[i]) continue;
        if (!is_float(in[i]) || kiln__onnx_numel(in[i]) != 1)
            return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "min/max must be float scalars");
        y = i == 1 ? kiln_maximum(CTX, y, in[i]->t) : kiln_minimum(CTX, y, in[i]->t);
    }
    if (y == in[0]->t) y = kiln_clone(CTX, y);
    return set_dev(r, n, out[0], y);
}

static kiln_status check_clip(onnx_rt *r, const onnx_node *n) {
    (void)r, (void)n;
    return KILN_OK;
}

static kiln_status reduce_more(onnx_rt *r, const onnx_node *n, onnx_val *const *in, onnx_val *out, int kind) {
    kiln_status s = need_float(r, n, in[0], "data");
    if (s) return s;
    int64_t axes[KILN_MAX_DIMS];
    int c;
    s = axes_of(r, n, in, false, axes, &c);
    if (s) return s;
    bool keep = attr_i(n, "keepdims", 1) != 0;
    int nd = in[0]->ndim, ax[KILN_MAX_DIMS];
    for (int i = 0; i < (c > 0 ? c : 0); i++) {
        bool ok;
        ax[i] = norm_axis(axes[i], nd, &ok);
        if (!ok)
            return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "axis %lld out of range for %d dims", (long long)axes[i], nd);
    }
    int na = c > 0 ? c : 0;
    if (nd == 0 || kiln__onnx_numel(in[0]) == 0)
        return nfail(r, n, KILN_ERR_UNSUPPORTED, "reduction of a scalar or an empty tensor");
    kiln_tensor *x = in[0]->t, *y = NULL;
    switch (kind) {
    case 0: y = kiln_sum(CTX, kiln_abs(CTX, x), na, ax, keep); break;                    /* L1 */
    case 1: y = kiln_sqrt(CTX, kiln_sum(CTX, kiln_mul(CTX, x, x), na, ax, keep)); break; /* L2 */
    case 2: y = kiln_log(CTX, kiln_sum(CTX, x, na, ax, keep)); break;                    /* LogSum */
    case 3: {                                                                            /* LogSumExp */
        kiln_tensor *m = kiln_max(CTX, x, na, ax, true);
        /* an all -inf row keeps -inf (exp(x - max) would be NaN there) */
        m = kiln_where(CTX, kiln_eq(CTX, kiln_abs(CTX, m), kiln_full(CTX, INFINITY, 0, NULL)),
                       kiln_full(CTX, 0.0f, 0, NULL), m);
        kiln_tensor *e = kiln_sum(CTX, kiln_exp(CTX, kiln_sub(CTX, x, m)), na, ax, true);
        y = kiln_add(CTX, kiln_log(CTX, e), m);
        if (y && !keep) {
            int64_t sh[KILN_MAX_DIMS];
            int k = 0;
            bool red[KILN_MAX_DIMS] = {false};
            for (int i = 0; i < na; i++) red[ax[i]] = true;
            for (int d = 0; d < nd; d++)
                if (!(na == 0 || red[d])) sh[k++] = in[0]->shape[d];
            y = kiln_reshape(CTX, y, k, sh);
        }
        break;
    }
    }
    return set_dev(r, n, out, y);
}

RUN(run_reduce_l1) { return reduce_more(r, n, in, out[0], 0); }
RUN(run_reduce_l2) { return reduce_more(r, n, in, out[0], 1); }
RUN(run_reduce_log_sum) { return reduce_more(r, n, in, out[0], 2); }
RUN(run_reduce_log_sum_exp) { return reduce_more(r, n, in, out[0], 3); }

static kiln_status arg_extreme(onnx_rt *r, const onnx_node *n, onnx_val *const *in, onnx_val *out, bool min) {
    kiln_status s = need_float(r, n, in[0], "data");
    if (s) return s;
    int nd = in[0]->ndim;
    bool ok;
    int axis = norm_axis(attr_i(n, "axis", 0), nd, &ok);
    if (!ok || nd == 0)
        return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "axis %lld out of range for %d dims",
                     (long long)attr_i(n, "axis", 0), nd);
    kiln_tensor *x = min ? kiln_neg(CTX, in[0]->t) : in[0]->t;
    /* select_last_index: the first extreme of the reversed axis, counted from its end */
    bool last = attr_i(n, "select_last_index", 0) != 0;
    int64_t dim = in[0]->shape[axis];
    if (last && dim > 0) {
        int32_t *rev = malloc((size_t)dim * sizeof *rev);
        if (!rev) return nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
        for (int64_t i = 0; i < dim; i++) rev[i] = (int32_t)(dim - 1 - i);
        kiln_tensor *it = kiln_from_host(CTX, rev, KILN_I32, 1, &dim);
        free(rev);
        x = kiln_index_select(CTX, x, axis, it);
    }
    onnx_val tmp = {0};
    s = set_dev(r, n, &tmp, kiln_argmax(CTX, x, axis, attr_i(n, "keepdims", 1) != 0));
    if (s) return s;
    /* an I32 index tensor: read back to the host as ONNX's int64 */
    int64_t cnt = kiln__onnx_numel(&tmp);
    int32_t *i32 = malloc((size_t)(cnt > 0 ? cnt : 1) * sizeof *i32);
    int64_t *h = alloc_i(cnt);
    if (!i32 || !h || kiln_to_host(tmp.t, i32, (size_t)cnt * sizeof *i32) != KILN_OK) {
        free(i32), free(h);
        return kfail(r, n);
    }
    for (int64_t i = 0; i < cnt; i++) h[i] = last ? dim - 1 - i32[i] : i32[i];
    free(i32);
    return set_host(r, n, out, OT_INT64, tmp.ndim, tmp.shape, h);
}

RUN(run_argmax) { return arg_extreme(r, n, in, out[0], false); }
RUN(run_argmin) { return arg_extreme(r, n, in, out[0], true); }

RUN(run_gather_elements) {
    int nd = in[0]->ndim;
    bool ok;
    int axis = norm_axis(attr_i(n, "axis", 0), nd, &ok);
    if (!ok || nd == 0 || in[1]->ndim != nd)
        return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "axis out of range or ranks differ");
    if (is_float(in[1])) return nfail(r, n, KILN_ERR_DTYPE, "indices must be integers");
    int64_t cnt = kiln__onnx_numel(in[1]), dim = in[0]->shape[axis];
    int64_t *idx = host_ints(r, n, in[1]);
    if (!idx) return kiln_error_status(CTX);
    for (int64_t i = 0; i < cnt; i++) {
        if (idx[i] < 0) idx[i] += dim;
        if (idx[i] < 0 || idx[i] >= dim) {
            long long bad = (long long)idx[i];
            free(idx);
            return nfail(r, n, KILN_ERR_RANGE, "index %lld out of range for dim %lld", bad, (long long)dim);
        }
    }
    if (!is_float(in[0])) {
        free(idx);
        return nfail(r, n, KILN_ERR_UNSUPPORTED, "integer data");
    }
    int32_t *i32 = malloc((size_t)(cnt > 0 ? cnt : 1) * sizeof *i32);
    if (!i32) {
        free(idx);
        return nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    }
    for (int64_t i = 0; i < cnt; i++) i32[i] = (int32_t)idx[i];
    free(idx);
    kiln_tensor *it = kiln_from_host(CTX, i32, KILN_I32, in[1]->ndim, in[1]->shape);
    free(i32);
    return set_dev(r, n, out[0], kiln_gather(CTX, in[0]->t, axis, it));
}

RUN(run_range) {
    for (int i = 0; i < 3; i++)
        if (kiln__onnx_numel(in[i]) != 1) return nfail(r, n, KILN_ERR_SHAPE, "start, limit and delta must be scalars");
    if (is_float(in[0])) {
        float v[3];
        for (int i = 0; i < 3; i++) {
            if (!is_float(in[i])) return nfail(r, n, KILN_ERR_DTYPE, "start, limit and delta differ in dtype");
            v[i] = kiln_tensor_item(in[i]->t);
        }
        if (v[2] == 0.0f || !isfinite(v[0]) || !isfinite(v[1]) || !isfinite(v[2]))
            return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "delta 0 or a non-finite bound");
        double cntd = ceil(((double)v[1] - v[0]) / v[2]);
        int64_t cnt = cntd > 0 ? (int64_t)cntd : 0;
        if (cnt > ONNX_MAX_DIM) return nfail(r, n, KILN_ERR_SHAPE, "%g elements", cntd);
        float *f = malloc((size_t)(cnt > 0 ? cnt : 1) * sizeof *f);
        if (!f) return nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
        for (int64_t i = 0; i < cnt; i++) f[i] = v[0] + (float)i * v[2];
        kiln_tensor *t = kiln_from_host(CTX, f, KILN_F32, 1, &cnt);
        free(f);
        return set_dev(r, n, out[0], t);
    }
    int64_t v[3];
    for (int i = 0; i < 3; i++) {
        if (is_float(in[i])) return nfail(r, n, KILN_ERR_DTYPE, "start, limit and delta differ in dtype");
        v[i] = in[i]->h[0];
    }
    if (v[2] == 0) return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "delta 0");
    double cntd = ceil(((double)v[1] - (double)v[0]) / (double)v[2]);
    int64_t cnt = cntd > 0 ? (int64_t)cntd : 0;
    if (cnt > ONNX_MAX_DIM) return nfail(r, n, KILN_ERR_SHAPE, "%g elements", cntd);
    int64_t *h = alloc_i(cnt);
    for (int64_t i = 0; h && i < cnt; i++) h[i] = v[0] + i * v[2];
    return set_host(r, n, out[0], in[0]->type, 1, &cnt, h);
}

static kiln_status check_pad(onnx_rt *r, const onnx_node *n) {
    char buf[32];
    const char *mode = attr_s(n, "mode", "constant", buf, sizeof buf);
    if (strcmp(mode, "constant") && strcmp(mode, "reflect") && strcmp(mode, "edge"))
        return nfail(r, n, KILN_ERR_UNSUPPORTED, "attribute mode '%s' (constant, reflect and edge run)", mode);
    return KILN_OK;
}

/* Pad: constant through kiln_pad; edge and reflect as a gather of source positions along each
 * padded axis (which also crops for negative pads). */
/* Integer Pad on the host: per padded axis, out[o, i, k] = src[o, idx[i], k], -1 = value. */
static kiln_status pad_host(onnx_rt *r, const onnx_node *n, const onnx_val *x, const int64_t *pads, const char *mode,
                            int64_t value, onnx_val *out) {
    int nd = x->ndim;
    int64_t sh[KILN_MAX_DIMS];
    memcpy(sh, x->shape, sizeof sh);
    int64_t *cur = host_ints(r, n, x);
    if (!cur) return kiln_error_status(CTX);
    for (int d = 0; d < nd; d++) {
        if (!pads[d] && !pads[d + nd]) continue;
        int64_t dim = sh[d], cnt = dim + pads[d] + pads[d + nd];
        if (strcmp(mode, "constant") && (dim == 0 || (mode[0] == 'r' && (pads[d] >= dim || pads[d + nd] >= dim)))) {
            free(cur);
            return nfail(r, n, KILN_ERR_SHAPE, "%s pads %lld, %lld for a dim of size %lld", mode, (long long)pads[d],
                         (long long)pads[d + nd], (long long)dim);
        }
        int64_t outer = shape_numel(d, sh), inner = shape_numel(nd - d - 1, sh + d + 1);
        int64_t *o = alloc_i(outer * cnt * inner);
        if (!o) {
            free(cur);
            return nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
        }
        for (int64_t i = 0; i < cnt; i++) {
            int64_t p = i - pads[d];
            if (mode[0] == 'e')
                p = p < 0 ? 0 : p >= dim ? dim - 1 : p;
            else if (mode[0] == 'r')
                p = p < 0 ? -p : p >= dim ? 2 * (dim - 1) - p : p;
            else if (p < 0 || p >= dim)
                p = -1;
            for (int64_t a = 0; a < outer; a++)
                for (int64_t k = 0; k < inner; k++)
                    o[(a * cnt + i) * inner + k] = p < 0 ? value : cur[(a * dim + p) * inner + k];
        }
        free(cur);
        cur = o;
        sh[d] = cnt;
    }
    return set_host(r, n, out, x->type, nd, sh, cur);
}

RUN(run_pad) {
    kiln_status s = KILN_OK;
    int nd = in[0]->ndim, np;
    int64_t pads[2 * KILN_MAX_DIMS];
    s = small_ints(r, n, in[1], "pads", pads, 2 * KILN_MAX_DIMS, &np);
    if (s) return s;
    if (np != 2 * nd) return nfail(r, n, KILN_ERR_SHAPE, "pads has %d values for %d dims", np, nd);
    for (int d = 0; d < nd; d++)
        if (pads[d] > ONNX_MAX_DIM || pads[d + nd] > ONNX_MAX_DIM || pads[d] < -ONNX_MAX_DIM ||
            pads[d + nd] < -ONNX_MAX_DIM || in[0]->shape[d] + pads[d] + pads[d + nd] < 0)
            return nfail(r, n, KILN_ERR_SHAPE, "pads of dim %d: %lld and %lld", d, (long long)pads[d],
                         (long long)pads[d + nd]);
    char buf[32];
    const char *mode = attr_s(n, "mode", "constant", buf, sizeof buf);
    if (!is_float(in[0])) {
        int64_t v = 0;
        if (n->nin > 2 && in[2]) {
            if (is_float(in[2]) || kiln__onnx_numel(in[2]) != 1)
                return nfail(r, n, KILN_ERR_SHAPE, "constant_value must be one value of the data's dtype");
            v = in[2]->h[0];
        }
        return pad_host(r, n, in[0], pads, mode, v, out[0]);
    }
    if (!strcmp(mode, "constant")) {
        float v = 0.0f;
        if (n->nin > 2 && in[2]) {
            if (!is_float(in[2]) || kiln__onnx_numel(in[2]) != 1)
                return nfail(r, n, KILN_ERR_SHAPE, "constant_value must be one float");
            v = kiln_tensor_item(in[2]->t);
        }
        int64_t kp[2 * KILN_MAX_DIMS];
        for (int d = 0; d < nd; d++) kp[2 * (nd - 1 - d)] = pads[d], kp[2 * (nd - 1 - d) + 1] = pads[d + nd];
        bool any = false;
        for (int i = 0; i < 2 * nd; i++) any = any || kp[i];
        return set_dev(r, n, out[0], any ? kiln_pad(CTX, in[0]->t, 2 * nd, kp, v) : kiln_clone(CTX, in[0]->t));
    }
    bool edge = !strcmp(mode, "edge");
    kiln_tensor *y = in[0]->t;
    for (int d = 0; d < nd && y; d++) {
        if (!pads[d] && !pads[d + nd]) continue;
        int64_t dim = in[0]->shape[d], cnt = dim + pads[d] + pads[d + nd];
        if (dim == 0 || (!edge && dim == 1 && (pads[d] > 0 || pads[d + nd] > 0)))
            return nfail(r, n, KILN_ERR_SHAPE, "%s padding of a dim of size %lld", mode, (long long)dim);
        if (!edge && (pads[d] >= dim || pads[d + nd] >= dim))
            return nfail(r, n, KILN_ERR_SHAPE, "reflect pads %lld, %lld must be less than the dim %lld",
                         (long long)pads[d], (long long)pads[d + nd], (long long)dim);
        int32_t *idx = malloc((size_t)(cnt > 0 ? cnt : 1) * sizeof *idx);
        if (!idx) return nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
        for (int64_t i = 0; i < cnt; i++) {
            int64_t p = i - pads[d];
            if (edge)
                p = p < 0 ? 0 : p >= dim ? dim - 1 : p;
            else
                p = p < 0 ? -p : p >= dim ? 2 * (dim - 1) - p : p;
            idx[i] = (int32_t)p;
        }
        kiln_tensor *it = kiln_from_host(CTX, idx, KILN_I32, 1, &cnt);
        free(idx);
        y = cnt ? kiln_index_select(CTX, y, d, it) : NULL;
        if (!cnt) return nfail(r, n, KILN_ERR_UNSUPPORTED, "an empty result");
    }
    return set_dev(r, n, out[0], y == in[0]->t ? kiln_clone(CTX, y) : y);
}

/* Tile: each axis d repeated r times, as x unsqueezed before d, expanded to r and merged. */
RUN(run_tile) {
    int nd = in[0]->ndim, nr;
    int64_t reps[KILN_MAX_DIMS];
    kiln_status s = small_ints(r, n, in[1], "repeats", reps, KILN_MAX_DIMS, &nr);
    if (s) return s;
    if (nr != nd) return nfail(r, n, KILN_ERR_SHAPE, "repeats has %d values for %d dims", nr, nd);
    int64_t sh[KILN_MAX_DIMS];
    double total = 1;
    for (int d = 0; d < nd; d++) {
        if (reps[d] < 0 || reps[d] > ONNX_MAX_DIM)
            return nfail(r, n, KILN_ERR_SHAPE, "repeats[%d] = %lld", d, (long long)reps[d]);
        sh[d] = in[0]->shape[d] * reps[d];
        total *= (double)sh[d];
    }
    if (total > (double)ONNX_MAX_DIM) return nfail(r, n, KILN_ERR_SHAPE, "the result would hold %.0f elements", total);
    if (!is_float(in[0])) {
        int64_t st[KILN_MAX_DIMS], cnt = shape_numel(nd, sh), idx[KILN_MAX_DIMS] = {0};
        contig_strides(nd, in[0]->shape, st);
        int64_t *h = alloc_i(cnt);
        if (!h) return nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
        for (int64_t i = 0; i < cnt; i++) {
            int64_t p = 0;
            for (int d = 0; d < nd; d++) p += (idx[d] % in[0]->shape[d]) * st[d];
            h[i] = in[0]->h[p];
            for (int d = nd - 1; d >= 0; d--) {
                if (++idx[d] < sh[d]) break;
                idx[d] = 0;
            }
        }
        return set_host(r, n, out[0], in[0]->type, nd, sh, h);
    }
    if (total == 0) return set_dev(r, n, out[0], kiln_empty(CTX, KILN_F32, nd, sh));
    kiln_tensor *y = in[0]->t;
    for (int d = 0; d < nd && y; d++) {
        if (reps[d] == 1) continue;
        const int64_t *ys = kiln_tensor_shape(y);
        int64_t ex[KILN_MAX_DIMS + 1], merged[KILN_MAX_DIMS];
        if (nd + 1 > KILN_MAX_DIMS) return nfail(r, n, KILN_ERR_UNSUPPORTED, "%d dims", nd);
        for (int k = 0, j = 0; k <= nd; k++) ex[k] = k == d ? reps[d] : ys[j++];
        for (int k = 0; k < nd; k++) merged[k] = k == d ? ys[d] * reps[d] : ys[k];
        y = kiln_reshape(CTX, kiln_expand(CTX, kiln_unsqueeze(CTX, y, d), nd + 1, ex), nd, merged);
    }
    return set_dev(r, n, out[0], y == in[0]->t ? kiln_clone(CTX, y) : y);
}

/* Trilu: the upper (upper 1) or lower triangle of the last two dims, from diagonal k. */
RUN(run_trilu) {
    int nd = in[0]->ndim;
    if (nd < 2) return nfail(r, n, KILN_ERR_SHAPE, "input must have at least 2 dims");
    int64_t k = 0;
    if (n->nin > 1 && in[1]) {
        if (is_float(in[1]) || kiln__onnx_numel(in[1]) != 1)
            return nfail(r, n, KILN_ERR_SHAPE, "k must be one integer");
        k = in[1]->h[0];
    }
    bool upper = attr_i(n, "upper", 1) != 0;
    int64_t rows = in[0]->shape[nd - 2], cols = in[0]->shape[nd - 1];
    int64_t *mask = alloc_i(rows * cols);
    if (!mask) return nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) mask[i * cols + j] = upper ? j - i >= k : j - i <= k;
    if (!is_float(in[0])) {
        int64_t *h = host_ints(r, n, in[0]);
        if (!h) {
            free(mask);
            return kiln_error_status(CTX);
        }
        for (int64_t i = 0; i < kiln__onnx_numel(in[0]); i++)
            if (!mask[i % (rows * cols)]) h[i] = 0;
        free(mask);
        return set_host(r, n, out[0], in[0]->type, nd, in[0]->shape, h);
    }
    onnx_val mv = {0};
    mv.type = OT_BOOL, mv.ndim = 2, mv.shape[0] = rows, mv.shape[1] = cols, mv.h = mask;
    kiln_tensor *m = kiln__onnx_numel(in[0]) ? dev_f32(r, n, &mv) : NULL;
    free(mask);
    if (!kiln__onnx_numel(in[0])) return set_dev(r, n, out[0], kiln_empty(CTX, KILN_F32, nd, in[0]->shape));
    return set_dev(r, n, out[0], kiln_where(CTX, m, in[0]->t, kiln_full(CTX, 0.0f, 0, NULL)));
}

/* Resize: on the device (kiln_upsample) where torch's interpolate does what ONNX asks: 4-D
 * NCHW, nearest with integer factors (half_pixel with rounding or asymmetric with floor: all
 * equal to floor(x / factor)), linear as bilinear with align_corners, half_pixel or
 * pytorch_half_pixel, at output sizes that are exactly in * scale. Everything else (cubic,
 * other ranks and coordinate modes, fractional scales, tf_crop_and_resize) runs on the host
 * in double, as ONNX's reference implementation. */
static double *host_vals(onnx_rt *r, const onnx_node *n, const onnx_val *v);
static kiln_status set_vals(onnx_rt *r, const onnx_node *n, onnx_val *out, int type, int ndim, const int64_t *shape,
                            double *d);

static bool resize_attrs_known(const char *mode, const char *ctm, const char *nm) {
    static const char *const ctms[] = {"half_pixel", "pytorch_half_pixel",   "align_corners",
                                       "asymmetric", "tf_half_pixel_for_nn", "tf_crop_and_resize",
                                       NULL};
    bool c = false;
    for (int i = 0; ctms[i]; i++) c = c || !strcmp(ctm, ctms[i]);
    return c && (!strcmp(mode, "nearest") || !strcmp(mode, "linear") || !strcmp(mode, "cubic")) &&
           (!strcmp(nm, "round_prefer_floor") || !strcmp(nm, "round_prefer_ceil") || !strcmp(nm, "floor") ||
            !strcmp(nm, "ceil"));
}

static kiln_status check_resize(onnx_rt *r, const onnx_node *n) {
    char b1[32], b2[32], b3[32];
    const char *mode = attr_s(n, "mode", "nearest", b1, sizeof b1);
    const char *ctm = attr_s(n, "coordinate_transformation_mode", "half_pixel", b2, sizeof b2);
    const char *nm = attr_s(n, "nearest_mode", "round_prefer_floor", b3, sizeof b3);
    if (!resize_attrs_known(mode, ctm, nm))
        return nfail(r, n, KILN_ERR_INVALID_ARGUMENT,
                     "mode '%s', coordinate_transformation_mode '%s', nearest_mode '%s': one is not ONNX's", mode, ctm,
                     nm);
    return KILN_OK;
}

/* The host Resize: axis by axis (the last first), each output coordinate mapped back as
 * coordinate_transformation_mode says and interpolated from its 2 (nearest, linear) or 4
 * (cubic) neighbours, the input extended by its edge values (exclude_outside: outside
 * neighbours weigh 0, the others renormalised); tf_crop_and_resize gives
 * extrapolation_value outside the input. */
static kiln_status resize_host(onnx_rt *r, const onnx_node *n, const onnx_val *x, const int64_t *outsz,
                               const double *scale, const float *roi, onnx_val *out) {
    char b1[32], b2[32], b3[32];
    const char *mode = attr_s(n, "mode", "nearest", b1, sizeof b1);
    const char *ctm = attr_s(n, "coordinate_transformation_mode", "half_pixel", b2, sizeof b2);
    const char *nm = attr_s(n, "nearest_mode", "round_prefer_floor", b3, sizeof b3);
    double A = attr_f(n, "cubic_coeff_a", -0.75f), extrap = attr_f(n, "extrapolation_value", 0.0f);
    bool excl = attr_i(n, "exclude_outside", 0) != 0, cubic = !strcmp(mode, "cubic"), lin = !strcmp(mode, "linear");
    bool crop = !strcmp(ctm, "tf_crop_and_resize");
    int nd = x->ndim, taps = cubic ? 4 : 2;
    int64_t cur[KILN_MAX_DIMS];
    memcpy(cur, x->shape, sizeof(int64_t) * (size_t)nd);
    double total = 1;
    for (int d = 0; d < nd; d++) total *= (double)(outsz[d] > x->shape[d] ? outsz[d] : x->shape[d]);
    if (total > (double)ONNX_MAX_DIM) return nfail(r, n, KILN_ERR_SHAPE, "a result of %.0f elements", total);
    double *v = host_vals(r, n, x);
    if (!v) return kiln_error_status(CTX);
    for (int d = nd - 1; d >= 0; d--) {
        int64_t in = cur[d], on = outsz[d];
        bool same_ctm = strcmp(ctm, "tf_half_pixel_for_nn") != 0 && !crop;
        if (on == in && scale[d] == 1.0 && same_ctm) continue;
        int64_t outer = shape_numel(d, cur), inner = shape_numel(nd - d - 1, cur + d + 1);
        double *o = malloc((size_t)(outer * on * inner > 0 ? outer * on * inner : 1) * sizeof *o);
        if (!o) return free(v), nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
        double ow = scale[d] * (double)in; /* the reference's (fractional) output width */
        for (int64_t j = 0; j < on; j++) {
            double xo, xj = (double)j;
            bool outside = false;
            if (!strcmp(ctm, "align_corners"))
                xo = ow == 1 ? 0 : xj * (double)(in - 1) / (ow - 1);
            else if (!strcmp(ctm, "asymmetric"))
                xo = xj / scale[d];
            else if (crop) {
                double s0 = roi[d], s1 = roi[nd + d];
                xo = (ow == 1 ? (s1 - s0) * (double)(in - 1) / 2 : xj * (s1 - s0) * (double)(in - 1) / (ow - 1)) +
                     s0 * (double)(in - 1);
                outside = xo < 0 || xo > (double)(in - 1);
            } else if (!strcmp(ctm, "pytorch_half_pixel"))
                xo = ow == 1 ? -0.5 : (xj + 0.5) / scale[d] - 0.5;
            else if (!strcmp(ctm, "tf_half_pixel_for_nn"))
                xo = (xj + 0.5) / scale[d];
            else
                xo = (xj + 0.5) / scale[d] - 0.5;
            /* neighbours: the taps nearest xo (ties to the lower), ratio in (0, 1] */
            double fl = floor(xo), ratio = xo == fl ? 1.0 : xo - fl;
            int64_t first = (int64_t)(xo == fl ? xo - 1 : fl) - (taps / 2 - 1);
            double c[4];
            if (cubic) {
                double t = ratio, u = 1 - ratio;
                c[0] = ((A * (t + 1) - 5 * A) * (t + 1) + 8 * A) * (t + 1) - 4 * A;
                c[1] = ((A + 2) * t - (A + 3)) * t * t + 1;
                c[2] = ((A + 2) * u - (A + 3)) * u * u + 1;
                c[3] = ((A * (u + 1) - 5 * A) * (u + 1) + 8 * A) * (u + 1) - 4 * A;
            } else if (lin) {
                c[0] = 1 - ratio, c[1] = ratio;
            } else {
                bool up = ratio == 1.0                        ? true
                          : !strcmp(nm, "round_prefer_floor") ? ratio > 0.5
                          : !strcmp(nm, "round_prefer_ceil")  ? ratio >= 0.5
                          : !strcmp(nm, "floor")              ? false
                                                              : true;
                c[0] = !up, c[1] = up;
            }
            if (excl) {
                double sum = 0;
                for (int k = 0; k < taps; k++) {
                    if (first + k < 0 || first + k >= in) c[k] = 0;
                    sum += c[k];
                }
                for (int k = 0; k < taps && sum != 0; k++) c[k] /= sum;
            }
            for (int64_t p = 0; p < outer; p++)
                for (int64_t i = 0; i < inner; i++) {
                    double acc = 0;
                    if (outside) {
                        acc = extrap;
                    } else {
                        for (int k = 0; k < taps; k++) {
                            int64_t q = first + k < 0 ? 0 : first + k >= in ? in - 1 : first + k;
                            acc += c[k] * v[(p * in + q) * inner + i];
                        }
                    }
                    o[(p * on + j) * inner + i] = acc;
                }
        }
        free(v);
        v = o;
        cur[d] = on;
    }
    return set_vals(r, n, out, OT_FLOAT, nd, outsz, v);
}

RUN(run_resize) {
    kiln_status s = need_float(r, n, in[0], "X");
    if (s) return s;
    char b1[32], b2[32], b3[32];
    const char *mode = attr_s(n, "mode", "nearest", b1, sizeof b1);
    const char *ctm = attr_s(n, "coordinate_transformation_mode", "half_pixel", b2, sizeof b2);
    const char *nm = attr_s(n, "nearest_mode", "round_prefer_floor", b3, sizeof b3);
    const onnx_val *x = in[0];
    int nd = x->ndim;
    const int64_t *sh = x->shape;
    int64_t outsz[KILN_MAX_DIMS];
    double scale[KILN_MAX_DIMS];
    float sf[KILN_MAX_DIMS], roi[2 * KILN_MAX_DIMS] = {0};
    bool from_scales = false;
    if (n->nin > 3 && in[3] && kiln__onnx_numel(in[3]) > 0) {
        int c;
        s = small_ints(r, n, in[3], "sizes", outsz, KILN_MAX_DIMS, &c);
        if (s) return s;
        if (c != nd) return nfail(r, n, KILN_ERR_SHAPE, "sizes has %d values for %d dims", c, nd);
        for (int d = 0; d < nd; d++) {
            if (outsz[d] < 1 || outsz[d] > ONNX_MAX_DIM)
                return nfail(r, n, KILN_ERR_SHAPE, "output size %lld", (long long)outsz[d]);
            scale[d] = (double)outsz[d] / (double)sh[d];
        }
    } else if (n->nin > 2 && in[2] && kiln__onnx_numel(in[2]) == nd && is_float(in[2])) {
        if (kiln_to_host(in[2]->t, sf, sizeof(float) * (size_t)nd) != KILN_OK) return kfail(r, n);
        for (int d = 0; d < nd; d++) {
            double o = floor((double)sh[d] * sf[d]);
            if (!(sf[d] > 0) || o < 1 || o > (double)ONNX_MAX_DIM)
                return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "scale %g of a dim of %lld", sf[d], (long long)sh[d]);
            outsz[d] = (int64_t)o, scale[d] = sf[d];
        }
        from_scales = true;
    } else {
        return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "neither %d scales nor %d sizes given", nd, nd);
    }
    if (!strcmp(ctm, "tf_crop_and_resize")) {
        if (n->nin < 2 || !in[1] || !is_float(in[1]) || kiln__onnx_numel(in[1]) != 2 * nd)
            return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "tf_crop_and_resize needs roi of %d values", 2 * nd);
        if (kiln_to_host(in[1]->t, roi, sizeof(float) * (size_t)(2 * nd)) != KILN_OK) return kfail(r, n);
    }
    /* the device when kiln_upsample computes exactly this, else the host */
    bool dev = nd == 4 && outsz[0] == sh[0] && outsz[1] == sh[1] && strcmp(mode, "cubic") != 0 &&
               (!strcmp(ctm, "half_pixel") || !strcmp(ctm, "pytorch_half_pixel") || !strcmp(ctm, "align_corners") ||
                !strcmp(ctm, "asymmetric"));
    bool nearest = !strcmp(mode, "nearest");
    for (int d = 2; dev && d < 4; d++) {
        if (outsz[d] > INT32_MAX || (from_scales && (double)sh[d] * sf[d] != (double)outsz[d])) dev = false;
        bool half = !strcmp(ctm, "half_pixel") || !strcmp(ctm, "pytorch_half_pixel");
        bool rounds = !strcmp(nm, "round_prefer_floor") || !strcmp(nm, "round_prefer_ceil");
        /* with an integer factor f, half_pixel maps x to x/f + a fraction under 1/2 either way
         * (rounding gives floor(x/f)); asymmetric maps it to x/f (floor gives it) */
        if (nearest && (outsz[d] % sh[d] || !(half ? rounds : !strcmp(nm, "floor")) || !strcmp(ctm, "align_corners")))
            dev = false;
        if (!nearest && (!strcmp(ctm, "asymmetric") || (!strcmp(ctm, "pytorch_half_pixel") && outsz[d] == 1)))
            dev = false;
    }
    if (!dev) return resize_host(r, n, x, outsz, scale, roi, out[0]);
    kiln_tensor *y =
        kiln_upsample(CTX, x->t, (int)outsz[2], (int)outsz[3], nearest ? KILN_UPSAMPLE_NEAREST : KILN_UPSAMPLE_BILINEAR,
                      !strcmp(ctm, "align_corners"));
    return set_dev(r, n, out[0], y);
}

/* ---- recurrent layers -------------------------------------------------------------- */

/* Reorders the G gate blocks of rows of w ([G*H, ...]) by src[] (torch's block j is
 * ONNX's block src[j]). */
static kiln_tensor *regate(kiln_ctx *ctx, kiln_tensor *w, int g, int64_t h, const int *src) {
    kiln_tensor *parts[4];
    for (int j = 0; j < g; j++) parts[j] = kiln_slice(ctx, w, 0, src[j] * h, (src[j] + 1) * h, 1);
    return kiln_concat(ctx, g, parts, 0);
}

/* ONNX's default GRU (linear_before_reset 0: the reset gate scales h before R_h, unlike
 * torch), step by step with kiln's ops: z = sigmoid(x W_z + h R_z + b_z), r likewise,
 * n = tanh(x W_h + (r * h) R_h + Wb_h + Rb_h), h' = (1 - z) * n + z * h. */
static kiln_status gru_reset_first(onnx_rt *r, const onnx_node *n, onnx_val *const *in, onnx_val *const *out) {
    kiln_ctx *ctx = CTX;
    int layout = (int)attr_i(n, "layout", 0);
    int64_t hs = in[2]->shape[2];
    int dirs = (int)in[1]->shape[0];
    kiln_tensor *x = in[0]->t;
    if (layout == 1) x = kiln_transpose(ctx, x, 0, 1);
    if (!x) return kfail(r, n);
    int64_t T = kiln_tensor_shape(x)[0], B = kiln_tensor_shape(x)[1];
    if (T < 1 || T > 100000) return nfail(r, n, KILN_ERR_UNSUPPORTED, "%lld steps", (long long)T);
    kiln_tensor *h0 = n->nin > 5 && in[5] ? in[5]->t : NULL;
    if (h0 && layout == 1) h0 = kiln_transpose(ctx, h0, 0, 1);
    kiln_tensor *ys[2] = {NULL, NULL}, *hn[2] = {NULL, NULL};
    for (int d = 0; d < dirs; d++) {
        kiln_tensor *w = kiln_squeeze(ctx, kiln_slice(ctx, in[1]->t, 0, d, d + 1, 1), 0);
        kiln_tensor *rr = kiln_squeeze(ctx, kiln_slice(ctx, in[2]->t, 0, d, d + 1, 1), 0);
        kiln_tensor *xw = kiln_matmul_ex(ctx, x, w, KILN_TRANS_B); /* [T, B, 3H] */
        kiln_tensor *rb = NULL;
        if (n->nin > 3 && in[3]) {
            kiln_tensor *b = kiln_squeeze(ctx, kiln_slice(ctx, in[3]->t, 0, d, d + 1, 1), 0);
            xw = kiln_add(ctx, xw, kiln_slice(ctx, b, 0, 0, 3 * hs, 1));
            rb = kiln_slice(ctx, b, 0, 3 * hs, 6 * hs, 1);
        }
        kiln_tensor *r_zr = kiln_slice(ctx, rr, 0, 0, 2 * hs, 1), *r_h = kiln_slice(ctx, rr, 0, 2 * hs, 3 * hs, 1);
        kiln_tensor *h =
            h0 ? kiln_squeeze(ctx, kiln_slice(ctx, h0, 0, d, d + 1, 1), 0) : kiln_zeros(ctx, 2, (int64_t[]){B, hs});
        kiln_tensor **steps = calloc((size_t)T, sizeof *steps);
        if (!steps) return nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
        for (int64_t k = 0; k < T && h; k++) {
            int64_t t = d == 0 ? k : T - 1 - k;
            kiln_tensor *xt = kiln_squeeze(ctx, kiln_slice(ctx, xw, 0, t, t + 1, 1), 0);
            kiln_tensor *hr = kiln_matmul_ex(ctx, h, r_zr, KILN_TRANS_B);
            if (rb) hr = kiln_add(ctx, hr, kiln_slice(ctx, rb, 0, 0, 2 * hs, 1));
            kiln_tensor *zr = kiln_sigmoid(ctx, kiln_add(ctx, kiln_slice(ctx, xt, 1, 0, 2 * hs, 1), hr));
            kiln_tensor *z = kiln_slice(ctx, zr, 1, 0, hs, 1), *rg = kiln_slice(ctx, zr, 1, hs, 2 * hs, 1);
            kiln_tensor *hh = kiln_matmul_ex(ctx, kiln_mul(ctx, rg, h), r_h, KILN_TRANS_B);
            if (rb) hh = kiln_add(ctx, hh, kiln_slice(ctx, rb, 0, 2 * hs, 3 * hs, 1));
            hh = kiln_tanh(ctx, kiln_add(ctx, hh, kiln_slice(ctx, xt, 1, 2 * hs, 3 * hs, 1)));
            h = kiln_add(ctx, hh, kiln_mul(ctx, z, kiln_sub(ctx, h, hh)));
            steps[t] = h;
        }
        ys[d] = h ? kiln_stack(ctx, (int)T, steps, 0) : NULL; /* [T, B, H] */
        hn[d] = h;
        free(steps);
        if (!ys[d]) return kfail(r, n);
    }
    kiln_tensor *y = kiln_stack(ctx, dirs, ys, 1);  /* [T, D, B, H] */
    kiln_tensor *yh = kiln_stack(ctx, dirs, hn, 0); /* [D, B, H] */
    if (layout == 1) {
        y = kiln_contiguous(ctx, kiln_permute(ctx, y, (int[]){2, 0, 1, 3}));
        yh = kiln_contiguous(ctx, kiln_transpose(ctx, yh, 0, 1));
    }
    kiln_status s = KILN_OK;
    if (n->nout > 0 && n->out[0] >= 0) s = set_dev(r, n, out[0], y);
    if (!s && n->nout > 1 && n->out[1] >= 0) s = set_dev(r, n, out[1], yh);
    return s;
}

static kiln_status rnn_common(onnx_rt *r, const onnx_node *n, onnx_val *const *in, onnx_val *const *out,
                              kiln_rnn_mode mode) {
    int g = mode == KILN_RNN_LSTM ? 4 : mode == KILN_RNN_GRU ? 3 : 1;
    static const int lstm_src[4] = {0, 2, 3, 1}; /* torch i f g o <- ONNX i o f c */
    static const int gru_src[3] = {1, 0, 2};     /* torch r z n <- ONNX z r h */
    static const int rnn_src[1] = {0};
    const int *src = mode == KILN_RNN_LSTM ? lstm_src : mode == KILN_RNN_GRU ? gru_src : rnn_src;
    for (int i = 0; i < 3; i++) {
        kiln_status s = need_float(r, n, in[i], i == 0 ? "X" : i == 1 ? "W" : "R");
        if (s) return s;
    }
    if (in[0]->ndim != 3 || in[1]->ndim != 3 || in[2]->ndim != 3)
        return nfail(r, n, KILN_ERR_SHAPE, "X, W and R must be 3-D");
    int layout = (int)attr_i(n, "layout", 0);
    int64_t hs = attr_i(n, "hidden_size", in[2]->shape[2]);
    int dirs = (int)in[1]->shape[0];
    if (hs != in[2]->shape[2] || in[1]->shape[1] != g * hs || dirs < 1 || dirs > 2)
        return nfail(r, n, KILN_ERR_SHAPE, "W/R shapes do not match hidden_size %lld", (long long)hs);
    if (n->nin > 4 && in[4]) return nfail(r, n, KILN_ERR_UNSUPPORTED, "input sequence_lens is not supported");
    if (mode == KILN_RNN_GRU && attr_i(n, "linear_before_reset", 0) == 0) return gru_reset_first(r, n, in, out);
    kiln_tensor *wts[8];
    for (int d = 0; d < dirs; d++) {
        kiln_tensor *w = kiln_squeeze(CTX, kiln_slice(CTX, in[1]->t, 0, d, d + 1, 1), 0);
        kiln_tensor *rr = kiln_squeeze(CTX, kiln_slice(CTX, in[2]->t, 0, d, d + 1, 1), 0);
        wts[4 * d] = regate(CTX, w, g, hs, src);
        wts[4 * d + 1] = regate(CTX, rr, g, hs, src);
        if (n->nin > 3 && in[3]) {
            kiln_tensor *b = kiln_squeeze(CTX, kiln_slice(CTX, in[3]->t, 0, d, d + 1, 1), 0);
            wts[4 * d + 2] = regate(CTX, kiln_slice(CTX, b, 0, 0, g * hs, 1), g, hs, src);
            wts[4 * d + 3] = regate(CTX, kiln_slice(CTX, b, 0, g * hs, 2 * g * hs, 1), g, hs, src);
        } else {
            wts[4 * d + 2] = kiln_zeros(CTX, 1, (int64_t[]){g * hs});
            wts[4 * d + 3] = kiln_zeros(CTX, 1, (int64_t[]){g * hs});
        }
    }
    kiln_rnn_params p = kiln_rnn_defaults();
    p.bidirectional = dirs == 2;
    p.batch_first = layout == 1;
    kiln_tensor *h0 = n->nin > 5 && in[5] ? in[5]->t : NULL, *c0 = n->nin > 6 && in[6] ? in[6]->t : NULL;
    if (h0 && layout == 1) h0 = kiln_contiguous(CTX, kiln_transpose(CTX, h0, 0, 1));
    if (c0 && layout == 1) c0 = kiln_contiguous(CTX, kiln_transpose(CTX, c0, 0, 1));
    kiln_tensor *hn = NULL, *cn = NULL;
    kiln_tensor *y =
        kiln_rnn(CTX, mode, in[0]->t, h0, c0, 4 * dirs, wts, NULL, &p, false, &hn, mode == KILN_RNN_LSTM ? &cn : NULL);
    if (!y) return kfail(r, n);
    /* kiln: [T, B, D*H] (batch_first [B, T, D*H]); ONNX: [T, D, B, H] (layout 1: [B, T, D, H]) */
    const int64_t *ys = kiln_tensor_shape(y);
    kiln_tensor *y4 = kiln_reshape(CTX, y, 4, (int64_t[]){ys[0], ys[1], dirs, hs});
    if (layout == 0) y4 = kiln_contiguous(CTX, kiln_transpose(CTX, y4, 1, 2));
    kiln_status s = KILN_OK;
    if (n->nout > 0 && n->out[0] >= 0) s = set_dev(r, n, out[0], y4);
    if (layout == 1) {
        hn = kiln_contiguous(CTX, kiln_transpose(CTX, hn, 0, 1));
        if (cn) cn = kiln_contiguous(CTX, kiln_transpose(CTX, cn, 0, 1));
    }
    if (!s && n->nout > 1 && n->out[1] >= 0) s = set_dev(r, n, out[1], hn);
    if (!s && n->nout > 2 && n->out[2] >= 0) s = set_dev(r, n, out[2], cn);
    return s;
}

/* Whether an RNN node's first activation is Relu (check_rnn holds the rest to the same). */
static bool rnn_relu(const onnx_node *n) {
    const Onnx__AttributeProto *a = kiln__onnx_attr(n, "activations");
    return a && a->n_strings > 0 && a->strings[0].len == 4 && memcmp(a->strings[0].data, "Relu", 4) == 0;
}

static kiln_status check_rnn(onnx_rt *r, const onnx_node *n) {
    char buf[32];
    const char *dir = attr_s(n, "direction", "forward", buf, sizeof buf);
    if (strcmp(dir, "forward") != 0 && strcmp(dir, "bidirectional") != 0)
        return nfail(r, n, KILN_ERR_UNSUPPORTED, "attribute direction '%s' (kiln runs forward and bidirectional)", dir);
    if (kiln__onnx_attr(n, "clip")) return nfail(r, n, KILN_ERR_UNSUPPORTED, "attribute clip is not supported");
    if (kiln__onnx_attr(n, "activation_alpha") || kiln__onnx_attr(n, "activation_beta"))
        return nfail(r, n, KILN_ERR_UNSUPPORTED, "attributes activation_alpha/beta are not supported");
    const Onnx__AttributeProto *a = kiln__onnx_attr(n, "activations");
    bool lstm = strcmp(n->p->op_type, "LSTM") == 0, gru = strcmp(n->p->op_type, "GRU") == 0;
    if (a) {
        /* A plain RNN runs Tanh or Relu (kiln_rnn's two modes), the same in both directions. */
        const char *rnn_act = !lstm && !gru && rnn_relu(n) ? "Relu" : "Tanh";
        for (size_t i = 0; i < a->n_strings; i++) {
            const char *want = lstm  ? (i % 3 == 0 ? "Sigmoid" : "Tanh")
                               : gru ? (i % 2 == 0 ? "Sigmoid" : "Tanh")
                                     : rnn_act;
            if (a->strings[i].len != strlen(want) || memcmp(a->strings[i].data, want, a->strings[i].len) != 0)
                return nfail(r, n, KILN_ERR_UNSUPPORTED, "attribute activations: only the defaults are supported");
        }
    }
    if (lstm && attr_i(n, "input_forget", 0)) return nfail(r, n, KILN_ERR_UNSUPPORTED, "attribute input_forget 1");
    if (lstm && n->nin > 7 && n->in[7] >= 0) return nfail(r, n, KILN_ERR_UNSUPPORTED, "input P (peepholes)");
    return KILN_OK;
}

RUN(run_lstm) { return rnn_common(r, n, in, out, KILN_RNN_LSTM); }
RUN(run_gru) { return rnn_common(r, n, in, out, KILN_RNN_GRU); }
RUN(run_rnn) { return rnn_common(r, n, in, out, rnn_relu(n) ? KILN_RNN_RNN_RELU : KILN_RNN_RNN_TANH); }

/* ---- the table -------------------------------------------------------------------------- */

/* ---- host fallbacks and compositions: math kiln has no kernel for -------------------------- */

/* A float value's elements on the host (malloc'ed); NULL with the error set. */
static float *host_floats(onnx_rt *r, const onnx_node *n, const onnx_val *v) {
    int64_t cnt = kiln__onnx_numel(v);
    float *f = malloc((size_t)(cnt > 0 ? cnt : 1) * sizeof *f);
    if (!f) return nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory"), NULL;
    if (cnt && kiln_to_host(v->t, f, (size_t)cnt * sizeof *f) != KILN_OK) {
        free(f);
        kfail(r, n);
        return NULL;
    }
    return f;
}

/* Host floats (taken) onto the device as out. */
static kiln_status set_floats(onnx_rt *r, const onnx_node *n, onnx_val *out, int ndim, const int64_t *shape, float *f) {
    kiln_tensor *t = kiln_from_host(CTX, f, KILN_F32, ndim, shape);
    free(f);
    return set_dev(r, n, out, t);
}

typedef enum hmath {
    M_FLOOR,
    M_CEIL,
    M_ROUND,
    M_SIGN,
    M_SIN,
    M_COS,
    M_TAN,
    M_ASIN,
    M_ACOS,
    M_ATAN,
    M_SINH,
    M_COSH,
    M_ASINH,
    M_ACOSH,
    M_ATANH
} hmath;

/* Elementwise math that kiln has no kernel for, on the host: the values go to the host and
 * back (a round trip per node). Sign also takes integers. */
static kiln_status host_math(onnx_rt *r, const onnx_node *n, const onnx_val *a, onnx_val *out, hmath op) {
    int64_t cnt = kiln__onnx_numel(a);
    if (!is_float(a)) {
        if (op != M_SIGN)
            return nfail(r, n, KILN_ERR_UNSUPPORTED, "input has dtype %s; kiln runs %s on float tensors",
                         kiln__onnx_type_name(a->type), n->p->op_type);
        int64_t *h = host_ints(r, n, a);
        if (!h) return kiln_error_status(CTX);
        for (int64_t i = 0; i < cnt; i++) h[i] = (h[i] > 0) - (h[i] < 0);
        return set_host(r, n, out, a->type, a->ndim, a->shape, h);
    }
    float *f = host_floats(r, n, a);
    if (!f) return kiln_error_status(CTX);
    for (int64_t i = 0; i < cnt; i++) {
        float x = f[i];
        switch (op) {
        case M_FLOOR: x = floorf(x); break;
        case M_CEIL: x = ceilf(x); break;
        case M_ROUND: x = nearbyintf(x); break; /* halves to even, as ONNX */
        case M_SIGN: x = isnan(x) ? x : (float)((x > 0) - (x < 0)); break;
        case M_SIN: x = sinf(x); break;
        case M_COS: x = cosf(x); break;
        case M_TAN: x = tanf(x); break;
        case M_ASIN: x = asinf(x); break;
        case M_ACOS: x = acosf(x); break;
        case M_ATAN: x = atanf(x); break;
        case M_SINH: x = sinhf(x); break;
        case M_COSH: x = coshf(x); break;
        case M_ASINH: x = asinhf(x); break;
        case M_ACOSH: x = acoshf(x); break;
        case M_ATANH: x = atanhf(x); break;
        }
        f[i] = x;
    }
    return set_floats(r, n, out, a->ndim, a->shape, f);
}

RUN(run_floor) { return host_math(r, n, in[0], out[0], M_FLOOR); }
RUN(run_ceil) { return host_math(r, n, in[0], out[0], M_CEIL); }
RUN(run_round) { return host_math(r, n, in[0], out[0], M_ROUND); }
RUN(run_sign) { return host_math(r, n, in[0], out[0], M_SIGN); }
RUN(run_sin) { return host_math(r, n, in[0], out[0], M_SIN); }
RUN(run_cos) { return host_math(r, n, in[0], out[0], M_COS); }
RUN(run_tan) { return host_math(r, n, in[0], out[0], M_TAN); }
RUN(run_asin) { return host_math(r, n, in[0], out[0], M_ASIN); }
RUN(run_acos) { return host_math(r, n, in[0], out[0], M_ACOS); }
RUN(run_atan) { return host_math(r, n, in[0], out[0], M_ATAN); }
RUN(run_sinh) { return host_math(r, n, in[0], out[0], M_SINH); }
RUN(run_cosh) { return host_math(r, n, in[0], out[0], M_COSH); }
RUN(run_asinh) { return host_math(r, n, in[0], out[0], M_ASINH); }
RUN(run_acosh) { return host_math(r, n, in[0], out[0], M_ACOSH); }
RUN(run_atanh) { return host_math(r, n, in[0], out[0], M_ATANH); }

RUN(run_is_inf) {
    kiln_status s = need_float(r, n, in[0], "X");
    if (s) return s;
    bool neg = attr_i(n, "detect_negative", 1) != 0, pos = attr_i(n, "detect_positive", 1) != 0;
    int64_t cnt = kiln__onnx_numel(in[0]);
    float *f = host_floats(r, n, in[0]);
    int64_t *h = f ? alloc_i(cnt) : NULL;
    if (!h)
        return free(f), kiln_error_status(CTX) ? kiln_error_status(CTX)
                                               : nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    for (int64_t i = 0; i < cnt; i++) h[i] = isinf(f[i]) && ((f[i] > 0 && pos) || (f[i] < 0 && neg));
    free(f);
    return set_host(r, n, out[0], OT_BOOL, in[0]->ndim, in[0]->shape, h);
}

/* The activations that are compositions of kiln's ops. */
RUN(run_selu) {
    kiln_status s = need_float(r, n, in[0], "X");
    if (s) return s;
    float alpha = attr_f(n, "alpha", 1.67326319217681884765625f),
          gamma = attr_f(n, "gamma", 1.05070102214813232421875f);
    return set_dev(r, n, out[0], kiln_mul_scalar(CTX, kiln_elu(CTX, in[0]->t, alpha), gamma));
}

RUN(run_softsign) {
    kiln_status s = need_float(r, n, in[0], "input");
    if (s) return s;
    kiln_tensor *x = in[0]->t;
    return set_dev(r, n, out[0], kiln_div(CTX, x, kiln_add_scalar(CTX, kiln_abs(CTX, x), 1.0f)));
}

RUN(run_thresholded_relu) {
    kiln_status s = need_float(r, n, in[0], "X");
    if (s) return s;
    kiln_tensor *x = in[0]->t, *zero = kiln_full(CTX, 0.0f, 0, NULL);
    return set_dev(r, n, out[0],
                   kiln_where(CTX, kiln_gt(CTX, x, kiln_full(CTX, attr_f(n, "alpha", 1.0f), 0, NULL)), x, zero));
}

RUN(run_shrink) {
    kiln_status s = need_float(r, n, in[0], "input");
    if (s) return s;
    float lambd = attr_f(n, "lambd", 0.5f), bias = attr_f(n, "bias", 0.0f);
    kiln_tensor *x = in[0]->t, *zero = kiln_full(CTX, 0.0f, 0, NULL);
    kiln_tensor *lo =
        kiln_where(CTX, kiln_lt(CTX, x, kiln_full(CTX, -lambd, 0, NULL)), kiln_add_scalar(CTX, x, bias), zero);
    return set_dev(
        r, n, out[0],
        kiln_where(CTX, kiln_gt(CTX, x, kiln_full(CTX, lambd, 0, NULL)), kiln_add_scalar(CTX, x, -bias), lo));
}

/* Celu: max(0, x) + min(0, alpha (exp(x / alpha) - 1)). */
RUN(run_celu) {
    kiln_status s = need_float(r, n, in[0], "X");
    if (s) return s;
    float alpha = attr_f(n, "alpha", 1.0f);
    kiln_tensor *x = in[0]->t;
    kiln_tensor *e =
        kiln_mul_scalar(CTX, kiln_add_scalar(CTX, kiln_exp(CTX, kiln_mul_scalar(CTX, x, 1.0f / alpha)), -1.0f), alpha);
    return set_dev(r, n, out[0], kiln_add(CTX, kiln_relu(CTX, x), kiln_minimum_scalar(CTX, e, 0.0f)));
}

/* HardSwish: x max(0, min(1, x / 6 + 1 / 2)). */
RUN(run_hard_swish) {
    kiln_status s = need_float(r, n, in[0], "X");
    if (s) return s;
    kiln_tensor *x = in[0]->t;
    kiln_tensor *h = kiln_minimum_scalar(
        CTX, kiln_maximum_scalar(CTX, kiln_add_scalar(CTX, kiln_mul_scalar(CTX, x, 1.0f / 6.0f), 0.5f), 0.0f), 1.0f);
    return set_dev(r, n, out[0], kiln_mul(CTX, x, h));
}

RUN(run_is_nan) {
    kiln_status s = need_float(r, n, in[0], "X");
    if (s) return s;
    int64_t cnt = kiln__onnx_numel(in[0]);
    float *f = host_floats(r, n, in[0]);
    int64_t *h = f ? alloc_i(cnt) : NULL;
    if (!h)
        return free(f), kiln_error_status(CTX) ? kiln_error_status(CTX)
                                               : nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    for (int64_t i = 0; i < cnt; i++) h[i] = isnan(f[i]) != 0;
    free(f);
    return set_host(r, n, out[0], OT_BOOL, in[0]->ndim, in[0]->shape, h);
}

/* PRelu: x where x >= 0, slope x elsewhere (slope broadcast to x). */
RUN(run_prelu) {
    kiln_status s = need_float(r, n, in[0], "X");
    if (!s) s = need_float(r, n, in[1], "slope");
    if (s) return s;
    kiln_tensor *x = in[0]->t;
    kiln_tensor *y = kiln_add(CTX, kiln_relu(CTX, x), kiln_mul(CTX, in[1]->t, kiln_minimum_scalar(CTX, x, 0.0f)));
    if (y && kiln_tensor_ndim(y) != in[0]->ndim) {
        char sa[160], sb[160];
        return nfail(r, n, KILN_ERR_SHAPE, "slope %s does not broadcast to X %s",
                     shp(in[1]->ndim, in[1]->shape, sa, sizeof sa), shp(in[0]->ndim, in[0]->shape, sb, sizeof sb));
    }
    return set_dev(r, n, out[0], y);
}

/* InstanceNormalization: per sample and channel over the spatial dims, then scale and B
 * per channel. */
RUN(run_instance_norm) {
    for (int i = 0; i < 3; i++) {
        kiln_status s = need_float(r, n, in[i], i == 0 ? "input" : i == 1 ? "scale" : "B");
        if (s) return s;
    }
    int nd = in[0]->ndim;
    if (nd < 3) return nfail(r, n, KILN_ERR_SHAPE, "input must have at least 3 dims, not %d", nd);
    int axes[KILN_MAX_DIMS];
    for (int i = 2; i < nd; i++) axes[i - 2] = i;
    kiln_tensor *x = in[0]->t;
    kiln_tensor *mu = kiln_mean(CTX, x, nd - 2, axes, true);
    kiln_tensor *d = kiln_sub(CTX, x, mu);
    kiln_tensor *var = kiln_mean(CTX, kiln_mul(CTX, d, d), nd - 2, axes, true);
    kiln_tensor *y = kiln_div(CTX, d, kiln_sqrt(CTX, kiln_add_scalar(CTX, var, attr_f(n, "epsilon", 1e-5f))));
    int64_t cs[KILN_MAX_DIMS];
    cs[0] = -1;
    for (int i = 1; i < nd - 1; i++) cs[i] = 1;
    y = kiln_mul(CTX, y, kiln_reshape(CTX, in[1]->t, nd - 1, cs));
    return set_dev(r, n, out[0], kiln_add(CTX, y, kiln_reshape(CTX, in[2]->t, nd - 1, cs)));
}

/* DepthToSpace (DCR or CRD) and SpaceToDepth on [N, C, H, W]: a reshape, a permutation and
 * a reshape. */
static kiln_status depth_space(onnx_rt *r, const onnx_node *n, const onnx_val *x, onnx_val *out, bool to_space) {
    kiln_status s = need_float(r, n, x, "input");
    if (s) return s;
    int64_t b = attr_i(n, "blocksize", 0);
    char sb[160];
    if (x->ndim != 4 || b < 1 || (to_space && x->shape[1] % (b * b)) ||
        (!to_space && (x->shape[2] % b || x->shape[3] % b)))
        return nfail(r, n, KILN_ERR_SHAPE, "input %s and blocksize %lld do not fit",
                     shp(x->ndim, x->shape, sb, sizeof sb), (long long)b);
    int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    char mb[8];
    bool crd = to_space && strcmp(attr_s(n, "mode", "DCR", mb, sizeof mb), "CRD") == 0;
    kiln_tensor *t;
    if (to_space) {
        int64_t c = C / (b * b);
        int64_t s6[6] = {N, b, b, c, H, W};
        int p[6] = {0, 3, 4, 1, 5, 2};
        if (crd) s6[1] = c, s6[2] = b, s6[3] = b, p[1] = 1, p[2] = 4, p[3] = 2, p[4] = 5, p[5] = 3;
        t = kiln_permute(CTX, kiln_reshape(CTX, x->t, 6, s6), p);
        t = kiln_reshape(CTX, kiln_contiguous(CTX, t), 4, (int64_t[]){N, c, H * b, W * b});
    } else {
        int64_t s6[6] = {N, C, H / b, b, W / b, b};
        int p[6] = {0, 3, 5, 1, 2, 4};
        t = kiln_permute(CTX, kiln_reshape(CTX, x->t, 6, s6), p);
        t = kiln_reshape(CTX, kiln_contiguous(CTX, t), 4, (int64_t[]){N, C * b * b, H / b, W / b});
    }
    return set_dev(r, n, out, t);
}

RUN(run_depth_to_space) { return depth_space(r, n, in[0], out[0], true); }
RUN(run_space_to_depth) { return depth_space(r, n, in[0], out[0], false); }

/* NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss, on the host in double: input
 * [N, C, d...] (SoftmaxCrossEntropyLoss: scores, log-softmax along C first), target
 * [N, d...] of class indices, optional weight [C]; ignore_index; reduction none, sum or mean
 * (by the summed weights of the targets counted). */
static kiln_status nll(onnx_rt *r, const onnx_node *n, onnx_val *const *in, onnx_val *const *out, bool softmax) {
    const onnx_val *x = in[0], *tg = in[1], *w = n->nin > 2 ? in[2] : NULL;
    kiln_status s = need_float(r, n, x, "input");
    if (!s) s = need_float(r, n, w, "weight");
    if (s) return s;
    if (is_float(tg)) return nfail(r, n, KILN_ERR_UNSUPPORTED, "target must be an integer tensor");
    char sa[160], sb[160];
    bool ok = x->ndim >= 2 && tg->ndim == x->ndim - 1 && tg->shape[0] == x->shape[0];
    for (int d = 2; ok && d < x->ndim; d++) ok = tg->shape[d - 1] == x->shape[d];
    if (!ok || (w && (w->ndim != 1 || w->shape[0] != x->shape[1])))
        return nfail(r, n, KILN_ERR_SHAPE, "input %s, target %s%s: target must be input's shape without dim 1",
                     shp(x->ndim, x->shape, sa, sizeof sa), shp(tg->ndim, tg->shape, sb, sizeof sb),
                     w ? " and weight [C]" : "");
    char rb[16];
    const char *red = attr_s(n, "reduction", "mean", rb, sizeof rb);
    int mode = !strcmp(red, "none") ? 0 : !strcmp(red, "sum") ? 1 : !strcmp(red, "mean") ? 2 : -1;
    if (mode < 0) return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "reduction '%s' is none of none, sum, mean", red);
    const Onnx__AttributeProto *ia = kiln__onnx_attr(n, "ignore_index");
    int64_t N = x->shape[0], C = x->shape[1], D = shape_numel(x->ndim - 2, x->shape + 2), cnt = N * C * D;
    float *xf = host_floats(r, n, x), *wf = w && xf ? host_floats(r, n, w) : NULL;
    int64_t *t = xf && (!w || wf) ? host_ints(r, n, tg) : NULL;
    float *loss = t ? malloc((size_t)(N * D > 0 ? N * D : 1) * sizeof *loss) : NULL;
    if (!loss) {
        free(xf), free(wf), free(t);
        return kiln_error_status(CTX) ? kiln_error_status(CTX)
                                      : nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    }
    if (softmax)
        for (int64_t b = 0; b < N; b++)
            for (int64_t j = 0; j < D; j++) {
                double mx = -INFINITY, sum = 0;
                for (int64_t c = 0; c < C; c++) mx = fmax(mx, (double)xf[(b * C + c) * D + j]);
                for (int64_t c = 0; c < C; c++) sum += exp((double)xf[(b * C + c) * D + j] - mx);
                double lse = mx + log(sum);
                for (int64_t c = 0; c < C; c++)
                    xf[(b * C + c) * D + j] = (float)((double)xf[(b * C + c) * D + j] - lse);
            }
    double total = 0, wsum = 0;
    for (int64_t b = 0; b < N; b++)
        for (int64_t j = 0; j < D; j++) {
            int64_t c = t[b * D + j];
            if (ia && c == ia->i) {
                loss[b * D + j] = 0;
                continue;
            }
            if (c < 0 || c >= C) {
                free(xf), free(wf), free(t), free(loss);
                return nfail(r, n, KILN_ERR_RANGE, "target %lld at %lld is outside [0, %lld)", (long long)c,
                             (long long)(b * D + j), (long long)C);
            }
            double wc = wf ? (double)wf[c] : 1.0, l = -(double)xf[(b * C + c) * D + j] * wc;
            loss[b * D + j] = (float)l;
            total += l, wsum += wc;
        }
    free(wf), free(t);
    (void)cnt;
    if (softmax && n->nout > 1 && n->out[1] >= 0) {
        float *lp = malloc((size_t)(cnt > 0 ? cnt : 1) * sizeof *lp);
        if (!lp) return free(xf), free(loss), nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
        memcpy(lp, xf, (size_t)cnt * sizeof *lp);
        s = set_floats(r, n, out[1], x->ndim, x->shape, lp);
    }
    free(xf);
    if (s) return free(loss), s;
    if (mode == 0) return set_floats(r, n, out[0], tg->ndim, tg->shape, loss);
    loss[0] = (float)(mode == 1 ? total : total / wsum);
    return set_floats(r, n, out[0], 0, NULL, loss);
}

RUN(run_nll_loss) { return nll(r, n, in, out, false); }
RUN(run_softmax_cross_entropy) { return nll(r, n, in, out, true); }

/* ---- more host operators: indexing, sorting and integer arithmetic ------------------------- */

/* Any value's elements as doubles on the host (malloc'ed); NULL with the error set. */
static double *host_vals(onnx_rt *r, const onnx_node *n, const onnx_val *v) {
    int64_t cnt = kiln__onnx_numel(v);
    double *d = malloc((size_t)(cnt > 0 ? cnt : 1) * sizeof *d);
    if (!d) return nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory"), NULL;
    if (is_float(v)) {
        float *f = host_floats(r, n, v);
        if (!f) return free(d), NULL;
        for (int64_t i = 0; i < cnt; i++) d[i] = f[i];
        free(f);
    } else {
        for (int64_t i = 0; i < cnt; i++) d[i] = (double)v->h[i];
    }
    return d;
}

/* Doubles (taken) as a value of ONNX type `type`: floats to the device, integers to the host. */
static kiln_status set_vals(onnx_rt *r, const onnx_node *n, onnx_val *out, int type, int ndim, const int64_t *shape,
                            double *d) {
    int64_t cnt = shape_numel(ndim, shape);
    if (type == OT_FLOAT) {
        float *f = malloc((size_t)(cnt > 0 ? cnt : 1) * sizeof *f);
        if (!f) return free(d), nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
        for (int64_t i = 0; i < cnt; i++) f[i] = (float)d[i];
        free(d);
        return set_floats(r, n, out, ndim, shape, f);
    }
    int64_t *h = alloc_i(cnt);
    if (!h) return free(d), nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    for (int64_t i = 0; i < cnt; i++) h[i] = wrap_int(type, isfinite(d[i]) ? (int64_t)d[i] : 0);
    free(d);
    return set_host(r, n, out, type, ndim, shape, h);
}

/* Mod: integers on the host (fmod 0: the sign of the divisor; 1: of the dividend); floats
 * need fmod = 1 (C's fmod), computed on the host. */
RUN(run_mod) {
    bool fm = attr_i(n, "fmod", 0) != 0;
    const onnx_val *a = in[0], *b = in[1];
    if (!is_float(a) && !is_float(b)) return h_binary(r, n, fm ? H_FMOD : H_MOD, a, b, a->type, out[0]);
    if (!fm) return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "fmod must be 1 for float inputs");
    int nd;
    int64_t shape[KILN_MAX_DIMS], sa[KILN_MAX_DIMS], sb[KILN_MAX_DIMS], idx[KILN_MAX_DIMS] = {0};
    if (!bcast_shape(a->ndim, a->shape, b->ndim, b->shape, &nd, shape))
        return nfail(r, n, KILN_ERR_SHAPE, "shapes do not broadcast");
    double *x = host_vals(r, n, a), *y = x ? host_vals(r, n, b) : NULL;
    int64_t cnt = shape_numel(nd, shape);
    double *o = y ? malloc((size_t)(cnt > 0 ? cnt : 1) * sizeof *o) : NULL;
    if (!o)
        return free(x), free(y),
               kiln_error_status(CTX) ? kiln_error_status(CTX)
                                      : nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    bcast_strides(a->ndim, a->shape, nd, shape, sa), bcast_strides(b->ndim, b->shape, nd, shape, sb);
    for (int64_t i = 0; i < cnt; i++) {
        int64_t p = 0, q = 0;
        for (int d = 0; d < nd; d++) p += idx[d] * sa[d], q += idx[d] * sb[d];
        o[i] = fmod(x[p], y[q]);
        for (int d = nd - 1; d >= 0; d--) {
            if (++idx[d] < shape[d]) break;
            idx[d] = 0;
        }
    }
    free(x), free(y);
    return set_vals(r, n, out[0], OT_FLOAT, nd, shape, o);
}

RUN(run_bitshift) {
    char db[8];
    const char *dir = attr_s(n, "direction", "", db, sizeof db);
    if (strcmp(dir, "LEFT") != 0 && strcmp(dir, "RIGHT") != 0)
        return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "direction '%s' is neither LEFT nor RIGHT", dir);
    return h_binary(r, n, dir[0] == 'L' ? H_SHL : H_SHR, in[0], in[1], in[0]->type, out[0]);
}

/* outer x axis x inner: the dims before axis, at it and after it. */
static void split3(const onnx_val *v, int axis, int64_t *outer, int64_t *len, int64_t *inner) {
    *outer = shape_numel(axis, v->shape), *len = v->shape[axis];
    *inner = shape_numel(v->ndim - axis - 1, v->shape + axis + 1);
}

/* ReduceProd over the axes attribute (all when absent), on the host in double. */
RUN(run_reduce_prod) {
    const onnx_val *x = in[0];
    int nd = x->ndim;
    int64_t axes[KILN_MAX_DIMS];
    int c;
    kiln_status s = axes_of(r, n, in, false, axes, &c);
    if (s) return s;
    bool mark[KILN_MAX_DIMS] = {0};
    for (int i = 0; i < c; i++) {
        bool ok;
        int a = norm_axis(axes[i], nd, &ok);
        if (!ok) return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "axis %lld out of range", (long long)axes[i]);
        mark[a] = true;
    }
    if (c <= 0)
        for (int d = 0; d < nd; d++) mark[d] = true;
    bool keep = attr_i(n, "keepdims", 1) != 0;
    int64_t oshape[KILN_MAX_DIMS], kshape[KILN_MAX_DIMS];
    int ond = 0;
    for (int d = 0; d < nd; d++) {
        kshape[d] = mark[d] ? 1 : x->shape[d];
        if (!mark[d] || keep) oshape[ond++] = kshape[d];
    }
    int64_t cnt = kiln__onnx_numel(x), ocnt = shape_numel(nd, kshape), kst[KILN_MAX_DIMS], idx[KILN_MAX_DIMS] = {0};
    contig_strides(nd, kshape, kst);
    double *v = host_vals(r, n, x), *o = v ? malloc((size_t)(ocnt > 0 ? ocnt : 1) * sizeof *o) : NULL;
    if (!o)
        return free(v), kiln_error_status(CTX) ? kiln_error_status(CTX)
                                               : nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    for (int64_t i = 0; i < ocnt; i++) o[i] = 1;
    for (int64_t i = 0; i < cnt; i++) {
        int64_t p = 0;
        for (int d = 0; d < nd; d++) p += mark[d] ? 0 : idx[d] * kst[d];
        o[p] *= v[i];
        for (int d = nd - 1; d >= 0; d--) {
            if (++idx[d] < x->shape[d]) break;
            idx[d] = 0;
        }
    }
    free(v);
    return set_vals(r, n, out[0], x->type, ond, oshape, o);
}

/* Hardmax: 1 at the first maximum along axis (before opset 13: of the input seen as 2-D
 * [prod(dims < axis), prod(dims >= axis)]), 0 elsewhere. */
RUN(run_hardmax) {
    kiln_status s = need_float(r, n, in[0], "input");
    if (s) return s;
    const onnx_val *x = in[0];
    bool ok;
    int axis = norm_axis(attr_i(n, "axis", r->opset >= 13 ? -1 : 1), x->ndim, &ok);
    if (!ok || x->ndim == 0) return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "axis out of range for %d dims", x->ndim);
    int64_t outer, len, inner;
    if (r->opset >= 13)
        split3(x, axis, &outer, &len, &inner);
    else
        outer = shape_numel(axis, x->shape), len = shape_numel(x->ndim - axis, x->shape + axis), inner = 1;
    double *v = host_vals(r, n, x);
    if (!v) return kiln_error_status(CTX);
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < inner; i++) {
            int64_t best = 0;
            for (int64_t k = 1; k < len; k++)
                if (v[(o * len + k) * inner + i] > v[(o * len + best) * inner + i]) best = k;
            for (int64_t k = 0; k < len; k++) v[(o * len + k) * inner + i] = k == best;
        }
    return set_vals(r, n, out[0], OT_FLOAT, x->ndim, x->shape, v);
}

/* TopK: the K largest (or smallest) along axis, sorted, ties to the lower index; Values and
 * Indices (int64). */
RUN(run_topk) {
    const onnx_val *x = in[0];
    int64_t kk[1];
    int c;
    kiln_status s = small_ints(r, n, in[1], "K", kk, 1, &c);
    if (s) return s;
    bool ok;
    int axis = norm_axis(attr_i(n, "axis", -1), x->ndim, &ok);
    if (!ok || c != 1 || kk[0] < 0 || kk[0] > x->shape[axis])
        return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "K must be one value in [0, the axis' size] on a valid axis");
    bool largest = attr_i(n, "largest", 1) != 0;
    int64_t outer, len, inner, K = kk[0];
    split3(x, axis, &outer, &len, &inner);
    int64_t oshape[KILN_MAX_DIMS];
    memcpy(oshape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
    oshape[axis] = K;
    int64_t ocnt = outer * K * inner;
    double *v = host_vals(r, n, x), *vals = v ? malloc((size_t)(ocnt > 0 ? ocnt : 1) * sizeof *vals) : NULL;
    int64_t *ids = vals ? alloc_i(ocnt) : NULL, *taken = ids ? alloc_i(len) : NULL;
    if (!taken)
        return free(v), free(vals), free(ids),
               kiln_error_status(CTX) ? kiln_error_status(CTX)
                                      : nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < inner; i++) {
            for (int64_t k = 0; k < len; k++) taken[k] = 0;
            for (int64_t j = 0; j < K; j++) {
                int64_t best = -1;
                for (int64_t k = 0; k < len; k++) {
                    if (taken[k]) continue;
                    double a = v[(o * len + k) * inner + i];
                    if (best < 0 ||
                        (largest ? a > v[(o * len + best) * inner + i] : a < v[(o * len + best) * inner + i]))
                        best = k;
                }
                taken[best] = 1;
                vals[(o * K + j) * inner + i] = v[(o * len + best) * inner + i];
                ids[(o * K + j) * inner + i] = best;
            }
        }
    free(v), free(taken);
    s = set_vals(r, n, out[0], x->type, x->ndim, oshape, vals);
    if (s) return free(ids), s;
    if (n->nout > 1 && n->out[1] >= 0) return set_host(r, n, out[1], OT_INT64, x->ndim, oshape, ids);
    free(ids);
    return KILN_OK;
}

/* OneHot: values[1] where the index (negative ones from the end) is the position along the
 * new axis, values[0] elsewhere; indices out of range give a row of values[0]. */
RUN(run_onehot) {
    const onnx_val *ix = in[0], *vv = in[2];
    double *idx = host_vals(r, n, ix), *dp = idx ? host_vals(r, n, in[1]) : NULL,
           *val = dp ? host_vals(r, n, vv) : NULL;
    if (!val) return free(idx), free(dp), kiln_error_status(CTX);
    int64_t depth = (int64_t)dp[0];
    double off = val[0], on = kiln__onnx_numel(vv) > 1 ? val[1] : val[0];
    bool bad = kiln__onnx_numel(in[1]) != 1 || kiln__onnx_numel(vv) != 2 || depth < 1 || ix->ndim + 1 > KILN_MAX_DIMS;
    free(dp), free(val);
    if (bad) return free(idx), nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "depth must be one value >= 1 and values two");
    int nd = ix->ndim + 1;
    bool ok;
    int axis = norm_axis(attr_i(n, "axis", -1), nd, &ok);
    if (!ok) return free(idx), nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "axis out of range");
    int64_t shape[KILN_MAX_DIMS];
    for (int d = 0, j = 0; d < nd; d++) shape[d] = d == axis ? depth : ix->shape[j++];
    int64_t outer = shape_numel(axis, shape), inner = shape_numel(nd - axis - 1, shape + axis + 1),
            cnt = outer * depth * inner;
    double *o = malloc((size_t)(cnt > 0 ? cnt : 1) * sizeof *o);
    if (!o) return free(idx), nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    for (int64_t p = 0; p < outer; p++)
        for (int64_t i = 0; i < inner; i++) {
            int64_t k = (int64_t)idx[p * inner + i];
            if (k < 0) k += depth;
            for (int64_t d = 0; d < depth; d++) o[(p * depth + d) * inner + i] = d == k ? on : off;
        }
    free(idx);
    return set_vals(r, n, out[0], vv->type, nd, shape, o);
}

/* EyeLike: ones on diagonal k of a 2-D input's shape, of dtype `dtype` (the input's when absent). */
RUN(run_eyelike) {
    const onnx_val *x = in[0];
    int type = (int)attr_i(n, "dtype", x->type);
    if (x->ndim != 2) return nfail(r, n, KILN_ERR_SHAPE, "input must be 2-D, not %d-D", x->ndim);
    if (!kiln__onnx_type_ok(type))
        return nfail(r, n, KILN_ERR_UNSUPPORTED, "dtype %s is not one kiln holds", kiln__onnx_type_name(type));
    int64_t k = attr_i(n, "k", 0), cnt = kiln__onnx_numel(x);
    double *o = malloc((size_t)(cnt > 0 ? cnt : 1) * sizeof *o);
    if (!o) return nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    for (int64_t i = 0; i < x->shape[0]; i++)
        for (int64_t j = 0; j < x->shape[1]; j++) o[i * x->shape[1] + j] = j - i == k;
    return set_vals(r, n, out[0], type, 2, x->shape, o);
}

/* GatherND (batch_dims b): for each index tuple of indices[..., :], the slice of data it picks. */
RUN(run_gather_nd) {
    const onnx_val *x = in[0], *ix = in[1];
    int64_t b = attr_i(n, "batch_dims", 0);
    char sa[160], sb[160];
    int64_t m = ix->ndim ? ix->shape[ix->ndim - 1] : 0;
    bool ok = ix->ndim >= 1 && b >= 0 && b < ix->ndim && b < x->ndim && m >= 1 && b + m <= x->ndim &&
              x->ndim + ix->ndim - 1 - m - b <= KILN_MAX_DIMS;
    for (int d = 0; ok && d < b; d++) ok = x->shape[d] == ix->shape[d];
    if (!ok || is_float(ix))
        return nfail(r, n, KILN_ERR_SHAPE, "data %s and indices %s (batch_dims %lld) do not fit",
                     shp(x->ndim, x->shape, sa, sizeof sa), shp(ix->ndim, ix->shape, sb, sizeof sb), (long long)b);
    int64_t shape[KILN_MAX_DIMS];
    int nd = 0;
    for (int d = 0; d < ix->ndim - 1; d++) shape[nd++] = ix->shape[d];
    for (int d = (int)(b + m); d < x->ndim; d++) shape[nd++] = x->shape[d];
    int64_t B = shape_numel((int)b, x->shape), tuples = shape_numel(ix->ndim - 1 - (int)b, ix->shape + b);
    int64_t slice = shape_numel(x->ndim - (int)(b + m), x->shape + b + m),
            per_b = shape_numel(x->ndim - (int)b, x->shape + b);
    int64_t xst[KILN_MAX_DIMS];
    contig_strides(x->ndim, x->shape, xst);
    double *v = host_vals(r, n, x),
           *o = v ? malloc((size_t)(B * tuples * slice > 0 ? B * tuples * slice : 1) * sizeof *o) : NULL;
    if (!o)
        return free(v), kiln_error_status(CTX) ? kiln_error_status(CTX)
                                               : nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    for (int64_t bi = 0; bi < B; bi++)
        for (int64_t t = 0; t < tuples; t++) {
            int64_t off = bi * per_b;
            for (int64_t j = 0; j < m; j++) {
                int64_t k = ix->h[(bi * tuples + t) * m + j], dim = x->shape[b + j];
                if (k < 0) k += dim;
                if (k < 0 || k >= dim) {
                    free(v), free(o);
                    return nfail(r, n, KILN_ERR_RANGE, "index %lld out of range for dim %lld of size %lld",
                                 (long long)ix->h[(bi * tuples + t) * m + j], (long long)(b + j), (long long)dim);
                }
                off += k * xst[b + j];
            }
            memcpy(o + (bi * tuples + t) * slice, v + off, (size_t)slice * sizeof *o);
        }
    free(v);
    return set_vals(r, n, out[0], x->type, nd, shape, o);
}

/* reduction none/add/mul of ScatterElements and ScatterND: -1 when unknown. */
static int scatter_reduction(const onnx_node *n) {
    char rb[8];
    const char *red = attr_s(n, "reduction", "none", rb, sizeof rb);
    return !strcmp(red, "none") ? 0 : !strcmp(red, "add") ? 1 : !strcmp(red, "mul") ? 2 : -1;
}

static void scatter_one(double *dst, double v, int red) { *dst = red == 1 ? *dst + v : red == 2 ? *dst * v : v; }

/* ScatterElements (and the Scatter of opsets 9..10): data with updates written at the
 * positions indices give along axis. */
RUN(run_scatter_elements) {
    const onnx_val *x = in[0], *ix = in[1], *u = in[2];
    int red = scatter_reduction(n);
    if (red < 0) return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "reduction is none of none, add, mul");
    bool ok;
    int axis = norm_axis(attr_i(n, "axis", 0), x->ndim, &ok);
    char sa[160], sb[160];
    bool fit = ok && ix->ndim == x->ndim && u->ndim == x->ndim && !is_float(ix);
    for (int d = 0; fit && d < x->ndim; d++)
        fit = ix->shape[d] == u->shape[d] && (d == axis || ix->shape[d] <= x->shape[d]);
    if (!fit)
        return nfail(r, n, KILN_ERR_SHAPE, "data %s, indices %s and updates of the indices' shape do not fit",
                     shp(x->ndim, x->shape, sa, sizeof sa), shp(ix->ndim, ix->shape, sb, sizeof sb));
    int64_t xst[KILN_MAX_DIMS], idx[KILN_MAX_DIMS] = {0}, cnt = kiln__onnx_numel(ix);
    contig_strides(x->ndim, x->shape, xst);
    double *v = host_vals(r, n, x), *uv = v ? host_vals(r, n, u) : NULL;
    if (!uv) return free(v), kiln_error_status(CTX);
    for (int64_t i = 0; i < cnt; i++) {
        int64_t k = ix->h[i], p = 0;
        if (k < 0) k += x->shape[axis];
        if (k < 0 || k >= x->shape[axis]) {
            free(v), free(uv);
            return nfail(r, n, KILN_ERR_RANGE, "index %lld out of range for axis %d of size %lld", (long long)ix->h[i],
                         axis, (long long)x->shape[axis]);
        }
        for (int d = 0; d < x->ndim; d++) p += (d == axis ? k : idx[d]) * xst[d];
        scatter_one(&v[p], uv[i], red);
        for (int d = x->ndim - 1; d >= 0; d--) {
            if (++idx[d] < ix->shape[d]) break;
            idx[d] = 0;
        }
    }
    free(uv);
    return set_vals(r, n, out[0], x->type, x->ndim, x->shape, v);
}

/* ScatterND: updates[i...] written at data[indices[i..., :]] (a slice when the tuple is short). */
RUN(run_scatter_nd) {
    const onnx_val *x = in[0], *ix = in[1], *u = in[2];
    int red = scatter_reduction(n);
    if (red < 0) return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "reduction is none of none, add, mul");
    int64_t m = ix->ndim ? ix->shape[ix->ndim - 1] : 0;
    char sa[160], sb[160];
    bool fit = ix->ndim >= 1 && m >= 1 && m <= x->ndim && !is_float(ix) && u->ndim == ix->ndim - 1 + x->ndim - m;
    for (int d = 0; fit && d < ix->ndim - 1; d++) fit = u->shape[d] == ix->shape[d];
    for (int d = 0; fit && d < x->ndim - m; d++) fit = u->shape[ix->ndim - 1 + d] == x->shape[m + d];
    if (!fit)
        return nfail(r, n, KILN_ERR_SHAPE, "data %s, indices %s and updates do not fit",
                     shp(x->ndim, x->shape, sa, sizeof sa), shp(ix->ndim, ix->shape, sb, sizeof sb));
    int64_t xst[KILN_MAX_DIMS], tuples = shape_numel(ix->ndim - 1, ix->shape),
                                slice = shape_numel(x->ndim - (int)m, x->shape + m);
    contig_strides(x->ndim, x->shape, xst);
    double *v = host_vals(r, n, x), *uv = v ? host_vals(r, n, u) : NULL;
    if (!uv) return free(v), kiln_error_status(CTX);
    for (int64_t t = 0; t < tuples; t++) {
        int64_t off = 0;
        for (int64_t j = 0; j < m; j++) {
            int64_t k = ix->h[t * m + j];
            if (k < 0) k += x->shape[j];
            if (k < 0 || k >= x->shape[j]) {
                free(v), free(uv);
                return nfail(r, n, KILN_ERR_RANGE, "index %lld out of range for dim %lld of size %lld",
                             (long long)ix->h[t * m + j], (long long)j, (long long)x->shape[j]);
            }
            off += k * xst[j];
        }
        for (int64_t e = 0; e < slice; e++) scatter_one(&v[off + e], uv[t * slice + e], red);
    }
    free(uv);
    return set_vals(r, n, out[0], x->type, x->ndim, x->shape, v);
}

/* Compress: the slices along axis (the flattened input without one) whose condition is true. */
RUN(run_compress) {
    const onnx_val *x = in[0], *c = in[1];
    const Onnx__AttributeProto *aa = kiln__onnx_attr(n, "axis");
    bool ok = true;
    int axis = aa ? norm_axis(aa->i, x->ndim, &ok) : 0;
    if (!ok || is_float(c) || c->ndim != 1) return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "axis or condition invalid");
    int64_t outer = 1, len = kiln__onnx_numel(x), inner = 1;
    if (aa) split3(x, axis, &outer, &len, &inner);
    int64_t keep = 0, cn = kiln__onnx_numel(c) < len ? kiln__onnx_numel(c) : len;
    for (int64_t k = 0; k < cn; k++) keep += c->h[k] != 0;
    double *v = host_vals(r, n, x),
           *o = v ? malloc((size_t)(outer * keep * inner > 0 ? outer * keep * inner : 1) * sizeof *o) : NULL;
    if (!o)
        return free(v), kiln_error_status(CTX) ? kiln_error_status(CTX)
                                               : nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    int64_t q = 0;
    for (int64_t p = 0; p < outer; p++)
        for (int64_t k = 0; k < cn; k++)
            if (c->h[k])
                for (int64_t i = 0; i < inner; i++) o[q++] = v[(p * len + k) * inner + i];
    free(v);
    int64_t shape[KILN_MAX_DIMS];
    int nd = aa ? x->ndim : 1;
    if (aa)
        memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->ndim), shape[axis] = keep;
    else
        shape[0] = keep;
    return set_vals(r, n, out[0], x->type, nd, shape, o);
}

/* NonZero: the indices of the non-zero elements, [rank, count] in row-major order. */
RUN(run_nonzero) {
    const onnx_val *x = in[0];
    double *v = host_vals(r, n, x);
    if (!v) return kiln_error_status(CTX);
    int64_t cnt = kiln__onnx_numel(x), nz = 0, nd = x->ndim > 0 ? x->ndim : 1, idx[KILN_MAX_DIMS] = {0};
    for (int64_t i = 0; i < cnt; i++) nz += v[i] != 0;
    int64_t *o = alloc_i(nd * nz), q = 0;
    if (!o) return free(v), nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    for (int64_t i = 0; i < cnt; i++) {
        if (v[i] != 0) {
            for (int d = 0; d < x->ndim; d++) o[d * nz + q] = idx[d];
            if (x->ndim == 0) o[q] = 0;
            q++;
        }
        for (int d = x->ndim - 1; d >= 0; d--) {
            if (++idx[d] < x->shape[d]) break;
            idx[d] = 0;
        }
    }
    free(v);
    return set_host(r, n, out[0], OT_INT64, 2, (int64_t[]){nd, nz}, o);
}

/* MeanVarianceNormalization: (x - mean) / (sqrt(mean(x^2) - mean^2) + 1e-9) over axes
 * (default [0, 2, 3]), as its ONNX function body. */
RUN(run_mvn) {
    kiln_status s = need_float(r, n, in[0], "X");
    if (s) return s;
    const int64_t *v;
    int c = attr_ints(n, "axes", &v), axes[KILN_MAX_DIMS];
    int64_t def[3] = {0, 2, 3};
    if (c < 0) c = 3, v = def;
    if (c > KILN_MAX_DIMS) return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "%d axes", c);
    for (int i = 0; i < c; i++) {
        bool ok;
        axes[i] = norm_axis(v[i], in[0]->ndim, &ok);
        if (!ok) return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "axis %lld out of range", (long long)v[i]);
    }
    kiln_tensor *x = in[0]->t, *mu = kiln_mean(CTX, x, c, axes, true);
    kiln_tensor *var = kiln_sub(CTX, kiln_mean(CTX, kiln_mul(CTX, x, x), c, axes, true), kiln_mul(CTX, mu, mu));
    kiln_tensor *sd = kiln_add_scalar(CTX, kiln_sqrt(CTX, kiln_maximum_scalar(CTX, var, 0.0f)), 1e-9f);
    return set_dev(r, n, out[0], kiln_div(CTX, kiln_sub(CTX, x, mu), sd));
}

/* Det of the last two dims (square), by LU with partial pivoting in double on the host. */
RUN(run_det) {
    kiln_status s = need_float(r, n, in[0], "X");
    if (s) return s;
    const onnx_val *x = in[0];
    if (x->ndim < 2 || x->shape[x->ndim - 1] != x->shape[x->ndim - 2]) {
        char sb[160];
        return nfail(r, n, KILN_ERR_SHAPE, "input %s must end in a square matrix",
                     shp(x->ndim, x->shape, sb, sizeof sb));
    }
    int64_t k = x->shape[x->ndim - 1], B = shape_numel(x->ndim - 2, x->shape);
    double *v = host_vals(r, n, x), *o = v ? malloc((size_t)(B > 0 ? B : 1) * sizeof *o) : NULL;
    if (!o)
        return free(v), kiln_error_status(CTX) ? kiln_error_status(CTX)
                                               : nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    for (int64_t b = 0; b < B; b++) {
        double *a = v + b * k * k, det = 1;
        for (int64_t c = 0; c < k; c++) {
            int64_t piv = c;
            for (int64_t i = c + 1; i < k; i++)
                if (fabs(a[i * k + c]) > fabs(a[piv * k + c])) piv = i;
            if (a[piv * k + c] == 0) {
                det = 0;
                break;
            }
            if (piv != c) {
                for (int64_t j = 0; j < k; j++) {
                    double t = a[c * k + j];
                    a[c * k + j] = a[piv * k + j], a[piv * k + j] = t;
                }
                det = -det;
            }
            det *= a[c * k + c];
            for (int64_t i = c + 1; i < k; i++) {
                double f = a[i * k + c] / a[c * k + c];
                for (int64_t j = c; j < k; j++) a[i * k + j] -= f * a[c * k + j];
            }
        }
        o[b] = det;
    }
    free(v);
    return set_vals(r, n, out[0], OT_FLOAT, x->ndim - 2, x->shape, o);
}

/* ReverseSequence: along time_axis, the first sequence_lens[b] steps of each batch entry reversed. */
RUN(run_reverse_sequence) {
    const onnx_val *x = in[0], *sl = in[1];
    int64_t ta = attr_i(n, "time_axis", 0), ba = attr_i(n, "batch_axis", 1);
    if (x->ndim < 2 || ta < 0 || ba < 0 || ta > 1 || ba > 1 || ta == ba || is_float(sl) || sl->ndim != 1 ||
        sl->shape[0] != x->shape[ba])
        return nfail(r, n, KILN_ERR_INVALID_ARGUMENT,
                     "time_axis and batch_axis must be 0 and 1 (either way) and "
                     "sequence_lens one length per batch entry");
    int64_t T = x->shape[ta], Bn = x->shape[ba], inner = shape_numel(x->ndim - 2, x->shape + 2);
    double *v = host_vals(r, n, x),
           *o = v ? malloc((size_t)(kiln__onnx_numel(x) > 0 ? kiln__onnx_numel(x) : 1) * sizeof *o) : NULL;
    if (!o)
        return free(v), kiln_error_status(CTX) ? kiln_error_status(CTX)
                                               : nfail(r, n, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    for (int64_t b = 0; b < Bn; b++) {
        int64_t L = sl->h[b] < 0 ? 0 : sl->h[b] > T ? T : sl->h[b];
        for (int64_t t = 0; t < T; t++) {
            int64_t src = t < L ? L - 1 - t : t;
            int64_t po = ta == 0 ? (t * Bn + b) : (b * T + t), ps = ta == 0 ? (src * Bn + b) : (b * T + src);
            memcpy(o + po * inner, v + ps * inner, (size_t)inner * sizeof *o);
        }
    }
    free(v);
    return set_vals(r, n, out[0], x->type, x->ndim, x->shape, o);
}

/* LRN: x / (bias + alpha / size * sum of x^2 over the size channels around c)^beta. */
RUN(run_lrn) {
    kiln_status s = need_float(r, n, in[0], "X");
    if (s) return s;
    const onnx_val *x = in[0];
    int64_t size = attr_i(n, "size", 0);
    if (x->ndim < 3 || size < 1) return nfail(r, n, KILN_ERR_INVALID_ARGUMENT, "size must be >= 1 and X at least 3-D");
    float alpha = attr_f(n, "alpha", 1e-4f), beta = attr_f(n, "beta", 0.75f), bias = attr_f(n, "bias", 1.0f);
    int64_t N = x->shape[0], C = x->shape[1], S = shape_numel(x->ndim - 2, x->shape + 2);
    /* [N, 1, C, S]: an average pool of (size, 1) over the channels, padded (size-1)/2 before
     * and the rest after, counting the padding, is the windowed sum / size */
    kiln_tensor *sq = kiln_reshape(CTX, kiln_mul(CTX, x->t, x->t), 4, (int64_t[]){N, 1, C, S});
    int64_t pb[2] = {(size - 1) / 2, 0}, pe[2] = {size - 1 - (size - 1) / 2, 0};
    kiln_pool2d_params p = kiln_pool2d_defaults((int)size, 1);
    p.stride[0] = p.stride[1] = 1;
    kiln_tensor *avg = kiln_avg_pool2d(CTX, pad_hw(CTX, sq, pb, pe, 0.0f), &p);
    kiln_tensor *den = kiln_pow_scalar(CTX, kiln_add_scalar(CTX, kiln_mul_scalar(CTX, avg, alpha), bias), beta);
    return set_dev(r, n, out[0], kiln_div(CTX, x->t, kiln_reshape(CTX, den, x->ndim, x->shape)));
}

#define A(...) ((const char *const[]){__VA_ARGS__, NULL})
#define NOATTR ((const char *const[]){NULL})
#define CONV_ATTRS "auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"

static kiln_status check_constant(onnx_rt *r, const onnx_node *n) {
    (void)r, (void)n;
    return KILN_OK; /* src/io/onnx_load.c turns Constant nodes into constants itself */
}

static const onnx_op ops[] = {
    {"Abs", 1, 1, 1, 1, NOATTR, NULL, run_abs},
    {"ArgMax", 1, 1, 1, 1, A("axis", "keepdims", "select_last_index"), NULL, run_argmax},
    {"ArgMin", 1, 1, 1, 1, A("axis", "keepdims", "select_last_index"), NULL, run_argmin},
    {"Add", 2, 2, 1, 1, NOATTR, NULL, run_add},
    {"And", 2, 2, 1, 1, NOATTR, bool_inputs, run_and},
    {"AveragePool", 1, 1, 1, 1, A("auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides"),
     NULL, run_average_pool},
    {"BatchNormalization", 5, 5, 1, 3, A("epsilon", "momentum", "training_mode"), check_batch_norm, run_batch_norm},
    {"Cast", 1, 1, 1, 1, A("to"), check_cast, run_cast},
    {"Clip", 1, 3, 1, 1, NOATTR, check_clip, run_clip},
    {"Concat", 1, 64, 1, 1, A("axis"), NULL, run_concat},
    {"Constant", 0, 0, 1, 1, A("value", "value_float", "value_floats", "value_int", "value_ints"), check_constant,
     NULL},
    {"ConstantOfShape", 1, 1, 1, 1, A("value"), NULL, run_constant_of_shape},
    {"Conv", 2, 3, 1, 1, A(CONV_ATTRS), NULL, run_conv},
    {"ConvTranspose", 2, 3, 1, 1, A(CONV_ATTRS, "output_padding", "output_shape"), NULL, run_conv_transpose},
    {"Div", 2, 2, 1, 1, NOATTR, NULL, run_div},
    {"Dropout", 1, 3, 1, 2, A("ratio", "seed"), NULL, run_dropout},
    {"Elu", 1, 1, 1, 1, A("alpha"), NULL, run_elu},
    {"Equal", 2, 2, 1, 1, NOATTR, NULL, run_equal},
    {"Erf", 1, 1, 1, 1, NOATTR, NULL, run_erf},
    {"Exp", 1, 1, 1, 1, NOATTR, NULL, run_exp},
    {"Expand", 2, 2, 1, 1, NOATTR, NULL, run_expand},
    {"Flatten", 1, 1, 1, 1, A("axis"), NULL, run_flatten},
    {"GRU", 3, 6, 0, 2,
     A("activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size", "layout",
       "linear_before_reset"),
     check_rnn, run_gru},
    {"Gather", 2, 2, 1, 1, A("axis"), NULL, run_gather},
    {"GatherElements", 2, 2, 1, 1, A("axis"), NULL, run_gather_elements},
    {"Gemm", 2, 3, 1, 1, A("alpha", "beta", "transA", "transB"), NULL, run_gemm},
    {"GlobalAveragePool", 1, 1, 1, 1, NOATTR, NULL, run_global_average_pool},
    {"GlobalMaxPool", 1, 1, 1, 1, NOATTR, NULL, run_global_max_pool},
    {"Greater", 2, 2, 1, 1, NOATTR, NULL, run_greater},
    {"GreaterOrEqual", 2, 2, 1, 1, NOATTR, NULL, run_greater_equal},
    {"HardSigmoid", 1, 1, 1, 1, A("alpha", "beta"), NULL, run_hard_sigmoid},
    {"Identity", 1, 1, 1, 1, NOATTR, NULL, run_identity},
    {"LSTM", 3, 8, 0, 3,
     A("activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size", "input_forget",
       "layout"),
     check_rnn, run_lstm},
    {"LayerNormalization", 2, 3, 1, 3, A("axis", "epsilon", "stash_type"), check_layer_norm, run_layer_norm},
    {"LeakyRelu", 1, 1, 1, 1, A("alpha"), NULL, run_leaky_relu},
    {"Less", 2, 2, 1, 1, NOATTR, NULL, run_less},
    {"LessOrEqual", 2, 2, 1, 1, NOATTR, NULL, run_less_equal},
    {"Log", 1, 1, 1, 1, NOATTR, NULL, run_log},
    {"LogSoftmax", 1, 1, 1, 1, A("axis"), NULL, run_log_softmax},
    {"MatMul", 2, 2, 1, 1, NOATTR, NULL, run_matmul},
    {"Max", 1, 64, 1, 1, NOATTR, NULL, run_max},
    {"MaxPool", 1, 1, 1, 2, A("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order", "strides"),
     check_max_pool, run_max_pool},
    {"Mean", 1, 64, 1, 1, NOATTR, NULL, run_mean},
    {"Min", 1, 64, 1, 1, NOATTR, NULL, run_min},
    {"Mul", 2, 2, 1, 1, NOATTR, NULL, run_mul},
    {"Neg", 1, 1, 1, 1, NOATTR, NULL, run_neg},
    {"Not", 1, 1, 1, 1, NOATTR, bool_inputs, run_not},
    {"Or", 2, 2, 1, 1, NOATTR, bool_inputs, run_or},
    {"Pad", 2, 3, 1, 1, A("mode"), check_pad, run_pad},
    {"Pow", 2, 2, 1, 1, NOATTR, NULL, run_pow},
    {"RNN", 3, 6, 0, 2,
     A("activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size", "layout"), check_rnn,
     run_rnn},
    {"Reciprocal", 1, 1, 1, 1, NOATTR, NULL, run_reciprocal},
    {"Range", 3, 3, 1, 1, NOATTR, NULL, run_range},
    {"ReduceL1", 1, 1, 1, 1, A("axes", "keepdims"), NULL, run_reduce_l1},
    {"ReduceL2", 1, 1, 1, 1, A("axes", "keepdims"), NULL, run_reduce_l2},
    {"ReduceLogSum", 1, 1, 1, 1, A("axes", "keepdims"), NULL, run_reduce_log_sum},
    {"ReduceLogSumExp", 1, 1, 1, 1, A("axes", "keepdims"), NULL, run_reduce_log_sum_exp},
    {"ReduceMax", 1, 1, 1, 1, A("axes", "keepdims"), NULL, run_reduce_max},
    {"ReduceMean", 1, 1, 1, 1, A("axes", "keepdims"), NULL, run_reduce_mean},
    {"ReduceMin", 1, 1, 1, 1, A("axes", "keepdims"), NULL, run_reduce_min},
    {"ReduceSum", 1, 2, 1, 1, A("axes", "keepdims", "noop_with_empty_axes"), NULL, run_reduce_sum},
    {"ReduceSumSquare", 1, 1, 1, 1, A("axes", "keepdims"), NULL, run_reduce_sum_square},
    {"Relu", 1, 1, 1, 1, NOATTR, NULL, run_relu},
    {"Reshape", 2, 2, 1, 1, A("allowzero"), NULL, run_reshape},
    {"Resize", 1, 4, 1, 1,
     A("coordinate_transformation_mode", "cubic_coeff_a", "exclude_outside", "extrapolation_value", "mode",
       "nearest_mode"),
     check_resize, run_resize},
    {"Shape", 1, 1, 1, 1, A("end", "start"), NULL, run_shape},
    {"Sigmoid", 1, 1, 1, 1, NOATTR, NULL, run_sigmoid},
    {"Size", 1, 1, 1, 1, NOATTR, NULL, run_size},
    {"Slice", 3, 5, 1, 1, NOATTR, NULL, run_slice},
    {"Softmax", 1, 1, 1, 1, A("axis"), NULL, run_softmax},
    {"Softplus", 1, 1, 1, 1, NOATTR, NULL, run_softplus},
    {"Split", 1, 2, 1, 256, A("axis", "split"), NULL, run_split},
    {"Sqrt", 1, 1, 1, 1, NOATTR, NULL, run_sqrt},
    {"Squeeze", 1, 2, 1, 1, A("axes"), NULL, run_squeeze},
    {"Sub", 2, 2, 1, 1, NOATTR, NULL, run_sub},
    {"Sum", 1, 64, 1, 1, NOATTR, NULL, run_sum},
    {"Tanh", 1, 1, 1, 1, NOATTR, NULL, run_tanh},
    {"Tile", 2, 2, 1, 1, NOATTR, NULL, run_tile},
    {"Transpose", 1, 1, 1, 1, A("perm"), NULL, run_transpose},
    {"Trilu", 1, 2, 1, 1, A("upper"), NULL, run_trilu},
    {"Unsqueeze", 1, 2, 1, 1, A("axes"), NULL, run_unsqueeze},
    {"Where", 3, 3, 1, 1, NOATTR, NULL, run_where},
    {"Xor", 2, 2, 1, 1, NOATTR, bool_inputs, run_xor},
    /* on the host (a round trip per node): math kiln has no kernel for */
    {"Floor", 1, 1, 1, 1, NOATTR, NULL, run_floor},
    {"Ceil", 1, 1, 1, 1, NOATTR, NULL, run_ceil},
    {"Round", 1, 1, 1, 1, NOATTR, NULL, run_round},
    {"Sign", 1, 1, 1, 1, NOATTR, NULL, run_sign},
    {"Sin", 1, 1, 1, 1, NOATTR, NULL, run_sin},
    {"Cos", 1, 1, 1, 1, NOATTR, NULL, run_cos},
    {"Tan", 1, 1, 1, 1, NOATTR, NULL, run_tan},
    {"Asin", 1, 1, 1, 1, NOATTR, NULL, run_asin},
    {"Acos", 1, 1, 1, 1, NOATTR, NULL, run_acos},
    {"Atan", 1, 1, 1, 1, NOATTR, NULL, run_atan},
    {"Sinh", 1, 1, 1, 1, NOATTR, NULL, run_sinh},
    {"Cosh", 1, 1, 1, 1, NOATTR, NULL, run_cosh},
    {"Asinh", 1, 1, 1, 1, NOATTR, NULL, run_asinh},
    {"Acosh", 1, 1, 1, 1, NOATTR, NULL, run_acosh},
    {"Atanh", 1, 1, 1, 1, NOATTR, NULL, run_atanh},
    {"IsInf", 1, 1, 1, 1, A("detect_negative", "detect_positive"), NULL, run_is_inf},
    {"NegativeLogLikelihoodLoss", 2, 3, 1, 1, A("ignore_index", "reduction"), NULL, run_nll_loss},
    {"SoftmaxCrossEntropyLoss", 2, 3, 1, 2, A("ignore_index", "reduction"), NULL, run_softmax_cross_entropy},
    /* compositions of kiln's ops */
    {"Selu", 1, 1, 1, 1, A("alpha", "gamma"), NULL, run_selu},
    {"Softsign", 1, 1, 1, 1, NOATTR, NULL, run_softsign},
    {"ThresholdedRelu", 1, 1, 1, 1, A("alpha"), NULL, run_thresholded_relu},
    {"Shrink", 1, 1, 1, 1, A("bias", "lambd"), NULL, run_shrink},
    {"PRelu", 2, 2, 1, 1, NOATTR, NULL, run_prelu},
    {"InstanceNormalization", 3, 3, 1, 1, A("epsilon"), NULL, run_instance_norm},
    {"DepthToSpace", 1, 1, 1, 1, A("blocksize", "mode"), NULL, run_depth_to_space},
    {"SpaceToDepth", 1, 1, 1, 1, A("blocksize"), NULL, run_space_to_depth},
    {"MeanVarianceNormalization", 1, 1, 1, 1, A("axes"), NULL, run_mvn},
    {"Celu", 1, 1, 1, 1, A("alpha"), NULL, run_celu},
    {"HardSwish", 1, 1, 1, 1, NOATTR, NULL, run_hard_swish},
    {"IsNaN", 1, 1, 1, 1, NOATTR, NULL, run_is_nan},
    {"LRN", 1, 1, 1, 1, A("alpha", "beta", "bias", "size"), NULL, run_lrn},
    /* indexing, sorting and integer arithmetic on the host */
    {"Mod", 2, 2, 1, 1, A("fmod"), NULL, run_mod},
    {"BitShift", 2, 2, 1, 1, A("direction"), NULL, run_bitshift},
    {"ReduceProd", 1, 1, 1, 1, A("axes", "keepdims"), NULL, run_reduce_prod},
    {"Hardmax", 1, 1, 1, 1, A("axis"), NULL, run_hardmax},
    {"TopK", 2, 2, 2, 2, A("axis", "largest", "sorted"), NULL, run_topk},
    {"OneHot", 3, 3, 1, 1, A("axis"), NULL, run_onehot},
    {"EyeLike", 1, 1, 1, 1, A("dtype", "k"), NULL, run_eyelike},
    {"GatherND", 2, 2, 1, 1, A("batch_dims"), NULL, run_gather_nd},
    {"ScatterElements", 3, 3, 1, 1, A("axis", "reduction"), NULL, run_scatter_elements},
    {"Scatter", 3, 3, 1, 1, A("axis"), NULL, run_scatter_elements},
    {"ScatterND", 3, 3, 1, 1, A("reduction"), NULL, run_scatter_nd},
    {"Compress", 2, 2, 1, 1, A("axis"), NULL, run_compress},
    {"NonZero", 1, 1, 1, 1, NOATTR, NULL, run_nonzero},
    {"Det", 1, 1, 1, 1, NOATTR, NULL, run_det},
    {"ReverseSequence", 2, 2, 1, 1, A("batch_axis", "time_axis"), NULL, run_reverse_sequence},
};

/* The first opset whose definition of the operator kiln implements (where later versions
 * only added dtypes or relaxed checks); 11 for the others. A model of an older opset loads
 * when every operator it uses is listed here at or below its opset. */
static const struct {
    const char *name;
    int since;
} since[] = {
    {"Abs", 6},
    {"Add", 7},
    {"And", 7},
    {"BatchNormalization", 9},
    {"Cast", 9},
    {"Concat", 4},
    {"ConstantOfShape", 9},
    {"Conv", 1},
    {"ConvTranspose", 1},
    {"Div", 7},
    {"Elu", 6},
    {"Equal", 7},
    {"Erf", 9},
    {"Exp", 6},
    {"Expand", 8},
    {"Flatten", 9},
    {"GRU", 7},
    {"Gather", 1},
    {"Gemm", 7},
    {"GlobalAveragePool", 1},
    {"GlobalMaxPool", 1},
    {"Greater", 7},
    {"HardSigmoid", 6},
    {"Identity", 1},
    {"LSTM", 7},
    {"LeakyRelu", 6},
    {"Less", 7},
    {"Log", 6},
    {"LogSoftmax", 1},
    {"MatMul", 1},
    {"Max", 8},
    {"Mean", 8},
    {"Min", 8},
    {"Mul", 7},
    {"Neg", 6},
    {"Not", 1},
    {"Or", 7},
    {"Pow", 7},
    {"RNN", 7},
    {"Reciprocal", 6},
    {"ReduceMax", 1},
    {"ReduceMean", 1},
    {"ReduceMin", 1},
    {"ReduceSum", 1},
    {"ReduceSumSquare", 1},
    {"Relu", 6},
    {"Reshape", 5},
    {"Shape", 1},
    {"Sigmoid", 6},
    {"Size", 1},
    {"Slice", 10},
    {"Softmax", 1},
    {"Softplus", 1},
    {"Split", 2},
    {"Sqrt", 6},
    {"Squeeze", 1},
    {"Sub", 7},
    {"Sum", 8},
    {"Tanh", 6},
    {"Transpose", 1},
    {"Unsqueeze", 1},
    {"Where", 9},
    {"Xor", 7},
    {"Constant", 9},
    {"ReduceL1", 1},
    {"ReduceL2", 1},
    {"ReduceLogSum", 1},
    {"ReduceLogSumExp", 1},
    {"Tile", 6},
    {"Floor", 6},
    {"Ceil", 6},
    {"Sign", 9},
    {"Sin", 7},
    {"Cos", 7},
    {"Tan", 7},
    {"Asin", 7},
    {"Acos", 7},
    {"Atan", 7},
    {"Sinh", 9},
    {"Cosh", 9},
    {"Asinh", 9},
    {"Acosh", 9},
    {"Atanh", 9},
    {"IsInf", 10},
    {"NegativeLogLikelihoodLoss", 12},
    {"SoftmaxCrossEntropyLoss", 12},
    {"Selu", 6},
    {"Softsign", 1},
    {"ThresholdedRelu", 10},
    {"Shrink", 9},
    {"PRelu", 9},
    {"InstanceNormalization", 6},
    {"DepthToSpace", 11},
    {"SpaceToDepth", 1},
    {"MeanVarianceNormalization", 9},
    {"Celu", 12},
    {"HardSwish", 14},
    {"IsNaN", 13},
    {"LRN", 1},
    {"Mod", 10},
    {"BitShift", 11},
    {"ReduceProd", 1},
    {"Hardmax", 1},
    {"OneHot", 11},
    {"EyeLike", 9},
    {"Scatter", 9},
    {"Compress", 11},
    {"NonZero", 9},
    {"ScatterND", 11},
    {"Det", 11},
    {"ReverseSequence", 10},
};

int kiln__onnx_op_since(const char *name) {
    for (size_t i = 0; i < sizeof since / sizeof *since; i++)
        if (strcmp(since[i].name, name) == 0) return since[i].since;
    return strcmp(name, "LayerNormalization") == 0 ? 17 : ONNX_OPSET_MIN;
}

const onnx_op *kiln__onnx_find_op(const char *name) {
    for (size_t i = 0; i < sizeof ops / sizeof *ops; i++)
        if (strcmp(ops[i].name, name) == 0) return &ops[i];
    return NULL;
}

int kiln__onnx_op_names(const char **names, int cap) {
    int n = (int)(sizeof ops / sizeof *ops);
    for (int i = 0; i < n && i < cap; i++) names[i] = ops[i].name;
    return n;
}

bool kiln_onnx_op_supported(const char *op_type) { return op_type && kiln__onnx_find_op(op_type) != NULL; }

/* src/io/onnx_infer.c - shape and dtype inference at load: every value of the graph gets an
 * ONNX elem type and a shape whose dims are known sizes, symbols (the dim_param of a graph
 * input, "batch") or unknown, propagated through each operator from the declared graph
 * inputs and the constants. Small integer vectors also carry their elements (the
 * Shape -> Gather -> Concat -> Reshape chains of an exported model with a symbolic batch),
 * so a Reshape to [batch, -1] has a known shape. Where the file declares a shape (graph
 * outputs, value_info), a contradiction with what the operator makes is a load error naming
 * the node, the value and both shapes; so are inputs whose known dims the operator cannot
 * take (a MatMul of [N, 3] and [4, 5]). Where the semantics leave a dim open (a
 * data-dependent size, two different symbols broadcast together) it stays unknown. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onnx_internal.h"

typedef onnx_dim D;

static D dk(int64_t v) { return (D){v, NULL, true}; }
static D du(void) { return (D){0, NULL, false}; }
static bool is1(D a) { return a.k && a.v == 1; }
/* A size computed from the file's numbers: unknown when negative or when the arithmetic
 * overflowed (the operator's own checks at run say why). */
static D dsz(int64_t v, bool ok) { return ok && v >= 0 ? dk(v) : du(); }
/* Checked int64 arithmetic: *ok turns false on overflow (the file's numbers are arbitrary). */
static int64_t sadd(int64_t a, int64_t b, bool *ok) {
    int64_t r = 0;
    if (__builtin_add_overflow(a, b, &r)) *ok = false;
    return r;
}
static int64_t ssub(int64_t a, int64_t b, bool *ok) {
    int64_t r = 0;
    if (__builtin_sub_overflow(a, b, &r)) *ok = false;
    return r;
}
static int64_t smul(int64_t a, int64_t b, bool *ok) {
    int64_t r = 0;
    if (__builtin_mul_overflow(a, b, &r)) *ok = false;
    return r;
}
/* Whether two dims are certainly equal. */
static bool same(D a, D b) {
    if (a.k || b.k) return a.k && b.k && a.v == b.v;
    return a.sym && b.sym && strcmp(a.sym, b.sym) == 0;
}

void kiln__onnx_info_str(const onnx_info *f, char *buf, size_t cap) {
    if (f->ndim < 0) {
        snprintf(buf, cap, "%s (any shape)", kiln__onnx_type_name(f->type));
        return;
    }
    size_t k = (size_t)snprintf(buf, cap, "%s [", kiln__onnx_type_name(f->type));
    for (int d = 0; d < f->ndim && k < cap; d++) {
        if (f->d[d].k)
            k += (size_t)snprintf(buf + k, cap - k, "%s%lld", d ? ", " : "", (long long)f->d[d].v);
        else
            k += (size_t)snprintf(buf + k, cap - k, "%s%s", d ? ", " : "", f->d[d].sym ? f->d[d].sym : "?");
    }
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

static kiln_status ifail(const kiln_onnx_model *m, const onnx_node *n, const char *fmt, ...) KILN__PRINTF(3, 4);
static kiln_status ifail(const kiln_onnx_model *m, const onnx_node *n, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return kiln__fail(m->ctx, KILN_ERR_SHAPE, "onnx %s: %s node '%s' (opset %d): %s", m->what, n->p->op_type, n->name,
                      m->rt.opset, msg);
}

static int64_t ai(const onnx_node *n, const char *name, int64_t def) {
    const Onnx__AttributeProto *a = kiln__onnx_attr(n, name);
    return a ? a->i : def;
}

static int aints(const onnx_node *n, const char *name, const int64_t **v) {
    const Onnx__AttributeProto *a = kiln__onnx_attr(n, name);
    if (!a) return -1;
    *v = a->ints;
    return (int)a->n_ints;
}

static bool astr_is(const onnx_node *n, const char *name, const char *want) {
    const Onnx__AttributeProto *a = kiln__onnx_attr(n, name);
    return a && a->has_s && a->s.len == strlen(want) && memcmp(a->s.data, want, a->s.len) == 0;
}

static void unknown(onnx_info *f) {
    memset(f, 0, sizeof *f);
    f->ndim = -1;
    f->ndata = -1;
}

void kiln__onnx_info_from_val(onnx_info *f, const onnx_val *v) {
    unknown(f);
    f->type = v->type;
    f->ndim = v->ndim;
    for (int d = 0; d < v->ndim; d++) f->d[d] = dk(v->shape[d]);
    int64_t cnt = kiln__onnx_numel(v);
    if (!v->t && v->ndim <= 1 && cnt <= KILN_MAX_DIMS && (cnt == 0 || v->h)) {
        f->ndata = (int)cnt;
        for (int64_t i = 0; i < cnt; i++) f->data[i] = dk(v->h[i]);
    }
}

/* The elements of a small integer vector when every one is known; -1 otherwise. */
static int known_data(const onnx_info *f, int64_t *out) {
    if (!f || f->ndata < 0) return -1;
    for (int i = 0; i < f->ndata; i++) {
        if (!f->data[i].k) return -1;
        out[i] = f->data[i].v;
    }
    return f->ndata;
}

static void copy_shape(onnx_info *o, const onnx_info *x) {
    o->ndim = x->ndim;
    memcpy(o->d, x->d, sizeof o->d);
}

/* Multidirectional (numpy) broadcasting of cnt shapes into o. */
static kiln_status bcast(const kiln_onnx_model *m, const onnx_node *n, int cnt, const onnx_info *const *xs,
                         onnx_info *o) {
    int nd = 0;
    for (int i = 0; i < cnt; i++) {
        if (!xs[i]) continue;
        if (xs[i]->ndim < 0) {
            o->ndim = -1;
            return KILN_OK;
        }
        if (xs[i]->ndim > nd) nd = xs[i]->ndim;
    }
    o->ndim = nd;
    for (int d = 0; d < nd; d++) {
        D r = dk(1);
        for (int i = 0; i < cnt; i++) {
            if (!xs[i]) continue;
            int j = d - (nd - xs[i]->ndim);
            if (j < 0) continue;
            D a = xs[i]->d[j];
            if (is1(a)) continue;
            if (is1(r)) {
                r = a;
            } else if (r.k && a.k) {
                if (r.v != a.v) {
                    char sa[160], sb[160];
                    kiln__onnx_info_str(xs[0], sa, sizeof sa), kiln__onnx_info_str(xs[i], sb, sizeof sb);
                    return ifail(m, n, "inputs %s and %s do not broadcast (sizes %lld and %lld)", sa, sb,
                                 (long long)r.v, (long long)a.v);
                }
            } else if (a.k) {
                r = a; /* the other is 1 or the same at run time: either way this size */
            } else if (!r.k && !same(r, a)) {
                r = du();
            }
        }
        o->d[d] = r;
    }
    return KILN_OK;
}

/* Integer arithmetic of Add/Sub/Mul/Div on the elements of two small vectors. */
static void arith_data(const onnx_info *a, const onnx_info *b, char op, onnx_info *o) {
    if (a->ndata < 0 || b->ndata < 0 || o->ndim > 1) return;
    int len = a->ndata > b->ndata ? a->ndata : b->ndata;
    if ((a->ndata != len && a->ndata != 1) || (b->ndata != len && b->ndata != 1)) return;
    for (int i = 0; i < len; i++) {
        D x = a->data[a->ndata == 1 ? 0 : i], y = b->data[b->ndata == 1 ? 0 : i], r = du();
        if (x.k && y.k) {
            bool ok = true;
            int64_t v = op == '+'                                 ? sadd(x.v, y.v, &ok)
                        : op == '-'                               ? ssub(x.v, y.v, &ok)
                        : op == '*'                               ? smul(x.v, y.v, &ok)
                        : y.v && !(x.v == INT64_MIN && y.v == -1) ? x.v / y.v
                                                                  : (ok = false, 0);
            if (ok) r = dk(v); /* an element may be negative (-1 in a shape) */
        } else if ((op == '*' || op == '/') && is1(y)) {
            r = x;
        } else if (op == '*' && is1(x)) {
            r = y;
        } else if ((op == '+' || op == '-') && y.k && y.v == 0) {
            r = x;
        } else if (op == '+' && x.k && x.v == 0) {
            r = y;
        }
        o->data[i] = r;
    }
    o->ndata = len;
}

/* The product of dims [lo, hi): known, the one dim itself, or unknown. */
static D prod(const onnx_info *x, int lo, int hi) {
    if (hi - lo == 1) return x->d[lo];
    int64_t p = 1;
    bool ok = true;
    for (int i = lo; i < hi; i++) {
        if (!x->d[i].k) return du();
        p = smul(p, x->d[i].v, &ok);
    }
    return dsz(p, ok);
}

static int norm(int64_t axis, int nd, bool *ok) {
    if (axis < 0) axis += nd;
    *ok = axis >= 0 && axis < nd;
    return (int)axis;
}

/* ---- convolution and pooling -------------------------------------------------------------- */

static kiln_status spatial(const kiln_onnx_model *m, const onnx_node *n, const onnx_info *x, const onnx_info *w,
                           bool transposed, bool is_pool, onnx_info *o) {
    int nd = x->ndim - 2;
    if (nd < 1) return KILN_OK;
    o->ndim = x->ndim;
    o->d[0] = x->d[0];
    if (is_pool) {
        o->d[1] = x->d[1];
    } else if (!transposed) {
        o->d[1] = w && w->ndim == x->ndim ? w->d[0] : du();
    } else {
        int64_t g = ai(n, "group", 1);
        bool ok = true;
        int64_t c = w && w->ndim == x->ndim && w->d[1].k ? smul(w->d[1].v, g, &ok) : -1;
        o->d[1] = dsz(c, ok);
    }
    int64_t k[KILN_MAX_DIMS], s[KILN_MAX_DIMS], dl[KILN_MAX_DIMS], pb[KILN_MAX_DIMS] = {0}, pe[KILN_MAX_DIMS] = {0},
                                                                   op[KILN_MAX_DIMS] = {0};
    bool kk[KILN_MAX_DIMS];
    const int64_t *v = NULL;
    for (int i = 0; i < nd; i++) {
        kk[i] = w && w->ndim == x->ndim && w->d[2 + i].k;
        k[i] = kk[i] ? w->d[2 + i].v : 1, s[i] = 1, dl[i] = 1;
    }
    if (aints(n, "kernel_shape", &v) == nd)
        for (int i = 0; i < nd; i++) k[i] = v[i], kk[i] = true;
    if (aints(n, "strides", &v) == nd)
        for (int i = 0; i < nd; i++) s[i] = v[i];
    if (aints(n, "dilations", &v) == nd)
        for (int i = 0; i < nd; i++) dl[i] = v[i];
    if (aints(n, "pads", &v) == 2 * nd)
        for (int i = 0; i < nd; i++) pb[i] = v[i], pe[i] = v[nd + i];
    if (aints(n, "output_padding", &v) == nd)
        for (int i = 0; i < nd; i++) op[i] = v[i];
    bool same_pad = astr_is(n, "auto_pad", "SAME_UPPER") || astr_is(n, "auto_pad", "SAME_LOWER");
    bool valid = astr_is(n, "auto_pad", "VALID");
    bool ceil_mode = is_pool && ai(n, "ceil_mode", 0) != 0;
    int nos = transposed ? aints(n, "output_shape", &v) : -1;
    for (int i = 0; i < nd; i++) {
        D in = x->d[2 + i];
        if (s[i] < 1 || dl[i] < 1 || k[i] < 1 || s[i] > ONNX_MAX_DIM)
            return KILN_OK; /* the operator's own check says why */
        if (nos == nd || nos == nd + 2) {
            o->d[2 + i] = dsz(v[nos - nd + i], true);
            continue;
        }
        if (!in.k || !kk[i]) {
            o->d[2 + i] = du();
            continue;
        }
        bool ok = true;
        int64_t ek = sadd(smul(k[i] - 1, dl[i], &ok), 1, &ok), r, pads = valid ? 0 : sadd(pb[i], pe[i], &ok);
        if (transposed) {
            r = same_pad ? smul(in.v, s[i], &ok)
                         : ssub(sadd(sadd(smul(s[i], in.v - 1, &ok), op[i], &ok), ek, &ok), pads, &ok);
        } else if (same_pad) {
            r = (in.v + s[i] - 1) / s[i];
        } else {
            int64_t num = ssub(sadd(in.v, pads, &ok), ek, &ok);
            if (ok && num < 0) {
                char sx[160];
                kiln__onnx_info_str(x, sx, sizeof sx);
                return ifail(m, n, "input %s: a window of %lld does not fit dim %d padded by %lld + %lld", sx,
                             (long long)ek, 2 + i, (long long)pb[i], (long long)pe[i]);
            }
            if (!ok) {
                r = -1;
            } else if (ceil_mode) {
                r = num / s[i] + (num % s[i] != 0) + 1;
                if ((r - 1) * s[i] >= sadd(in.v, valid ? 0 : pb[i], &ok)) r--; /* the last window must start inside */
            } else {
                r = num / s[i] + 1;
            }
        }
        o->d[2 + i] = dsz(r, ok);
    }
    return KILN_OK;
}

/* ---- the operators ---------------------------------------------------------------------- */

static bool op_is(const onnx_node *n, const char *const *list) {
    for (; *list; list++)
        if (strcmp(*list, n->op->name) == 0) return true;
    return false;
}

static const char *const same_shape[] = {"Abs",
                                         "Relu",
                                         "Sigmoid",
                                         "Tanh",
                                         "Sqrt",
                                         "Neg",
                                         "Exp",
                                         "Log",
                                         "Erf",
                                         "Reciprocal",
                                         "Softplus",
                                         "Elu",
                                         "LeakyRelu",
                                         "HardSigmoid",
                                         "Softmax",
                                         "LogSoftmax",
                                         "Identity",
                                         "Clip",
                                         "Trilu",
                                         "BatchNormalization",
                                         "Floor",
                                         "Ceil",
                                         "Round",
                                         "Sign",
                                         "Sin",
                                         "Cos",
                                         "Tan",
                                         "Asin",
                                         "Acos",
                                         "Atan",
                                         "Sinh",
                                         "Cosh",
                                         "Asinh",
                                         "Acosh",
                                         "Atanh",
                                         "Selu",
                                         "Softsign",
                                         "ThresholdedRelu",
                                         "Shrink",
                                         "InstanceNormalization",
                                         "Celu",
                                         "HardSwish",
                                         "Hardmax",
                                         "MeanVarianceNormalization",
                                         "LRN",
                                         "ScatterElements",
                                         "Scatter",
                                         "ScatterND",
                                         "ReverseSequence",
                                         NULL};
static const char *const compare[] = {"Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "And", "Or",
                                      "Xor",   NULL};
static const char *const variadic[] = {"Max", "Min", "Mean", "Sum", NULL};

/* Reads the axes of Squeeze/Unsqueeze/Reduce*: from the attribute, or from input 1 where
 * from_input; returns the count, -1 none given, -2 given but not known at load. */
static int axes(const onnx_node *n, const onnx_info *const *in, bool from_input, int64_t *out) {
    if (from_input) {
        if (n->nin < 2 || !in[1]) return -1;
        return known_data(in[1], out) >= 0 ? in[1]->ndata : -2;
    }
    const int64_t *v;
    int c = aints(n, "axes", &v);
    if (c > KILN_MAX_DIMS) return -2;
    if (c > 0) memcpy(out, v, sizeof(int64_t) * (size_t)c);
    return c;
}

static kiln_status infer_node(const kiln_onnx_model *m, const onnx_node *n, const onnx_info *const *in,
                              onnx_info *const *out) {
    const char *op = n->op->name;
    const onnx_info *x = in[0];
    onnx_info *o = out[0];
    int opset = m->rt.opset;
    if (op_is(n, same_shape)) {
        o->type = x->type;
        copy_shape(o, x);
        if (!strcmp(op, "Identity")) {
            o->ndata = x->ndata;
            memcpy(o->data, x->data, sizeof o->data);
        }
        return KILN_OK;
    }
    if (!strcmp(op, "IsInf") || !strcmp(op, "IsNaN")) {
        o->type = OT_BOOL;
        copy_shape(o, x);
        return KILN_OK;
    }
    if (!strcmp(op, "Mod") || !strcmp(op, "BitShift")) {
        o->type = x->type;
        return bcast(m, n, 2, in, o);
    }
    if (!strcmp(op, "EyeLike")) {
        o->type = (int)ai(n, "dtype", x->type);
        copy_shape(o, x);
        return KILN_OK;
    }
    if (!strcmp(op, "Det")) {
        o->type = x->type;
        if (x->ndim >= 2) o->ndim = x->ndim - 2, memcpy(o->d, x->d, sizeof(D) * (size_t)o->ndim);
        return KILN_OK;
    }
    if (!strcmp(op, "TopK")) {
        int64_t k[1];
        bool ok = false;
        int axis = x->ndim >= 0 ? norm(ai(n, "axis", -1), x->ndim, &ok) : 0;
        for (int j = 0; j < 2 && j < n->nout; j++) {
            out[j]->type = j ? OT_INT64 : x->type;
            if (!ok) continue;
            copy_shape(out[j], x);
            out[j]->d[axis] = known_data(in[1], k) == 1 ? dsz(k[0], true) : du();
        }
        return KILN_OK;
    }
    if (!strcmp(op, "Compress") || !strcmp(op, "NonZero")) {
        /* sizes that depend on the values */
        o->type = op[0] == 'N' ? OT_INT64 : x->type;
        const Onnx__AttributeProto *aa = kiln__onnx_attr(n, "axis");
        if (op[0] == 'N') {
            o->ndim = 2, o->d[0] = x->ndim >= 0 ? dk(x->ndim > 0 ? x->ndim : 1) : du(), o->d[1] = du();
        } else if (!aa) {
            o->ndim = 1, o->d[0] = du();
        } else if (x->ndim >= 0) {
            bool ok;
            int axis = norm(aa->i, x->ndim, &ok);
            copy_shape(o, x);
            if (ok) o->d[axis] = du();
        }
        return KILN_OK;
    }
    if (!strcmp(op, "GatherND")) {
        const onnx_info *ix = in[1];
        o->type = x->type;
        int64_t b = ai(n, "batch_dims", 0);
        if (x->ndim < 0 || ix->ndim < 1 || !ix->d[ix->ndim - 1].k) return KILN_OK;
        int64_t mm = ix->d[ix->ndim - 1].v;
        if (b < 0 || mm < 1 || b > x->ndim || mm > x->ndim || b + mm > x->ndim) return KILN_OK;
        int nd = ix->ndim - 1 + x->ndim - (int)(b + mm);
        if (nd < 0 || nd > KILN_MAX_DIMS) return KILN_OK;
        o->ndim = nd;
        memcpy(o->d, ix->d, sizeof(D) * (size_t)(ix->ndim - 1));
        memcpy(o->d + ix->ndim - 1, x->d + b + mm, sizeof(D) * (size_t)(x->ndim - b - mm));
        return KILN_OK;
    }
    if (!strcmp(op, "OneHot")) {
        o->type = in[2]->type;
        if (x->ndim < 0 || x->ndim + 1 > KILN_MAX_DIMS) return KILN_OK;
        bool ok;
        int axis = norm(ai(n, "axis", -1), x->ndim + 1, &ok);
        if (!ok) return KILN_OK;
        int64_t dp[1];
        o->ndim = x->ndim + 1;
        for (int d = 0, j = 0; d < o->ndim; d++)
            o->d[d] = d == axis ? (known_data(in[1], dp) == 1 ? dsz(dp[0], true) : du()) : x->d[j++];
        return KILN_OK;
    }
    if (!strcmp(op, "PRelu")) {
        o->type = x->type;
        return bcast(m, n, 2, in, o);
    }
    if (!strcmp(op, "DepthToSpace") || !strcmp(op, "SpaceToDepth")) {
        o->type = x->type;
        int64_t b = ai(n, "blocksize", 0);
        if (x->ndim != 4 || b < 1) return KILN_OK;
        bool ds = op[0] == 'D';
        o->ndim = 4;
        o->d[0] = x->d[0];
        /* sizes that do not divide are the operator's error at run */
        bool ok = true;
        int64_t bb = smul(b, b, &ok);
        o->d[1] = !ok || !x->d[1].k || (ds && x->d[1].v % bb) ? du()
                                                              : dsz(ds ? x->d[1].v / bb : smul(x->d[1].v, bb, &ok), ok);
        for (int d = 2; d < 4; d++)
            o->d[d] =
                !x->d[d].k || (!ds && x->d[d].v % b) ? du() : dsz(ds ? smul(x->d[d].v, b, &ok) : x->d[d].v / b, ok);
        return KILN_OK;
    }
    if (!strcmp(op, "NegativeLogLikelihoodLoss") || !strcmp(op, "SoftmaxCrossEntropyLoss")) {
        o->type = x->type;
        if (n->nout > 1) out[1]->type = x->type, copy_shape(out[1], x);
        if (astr_is(n, "reduction", "none"))
            copy_shape(o, in[1]);
        else
            o->ndim = 0;
        return KILN_OK;
    }
    if (!strcmp(op, "Not")) {
        o->type = OT_BOOL;
        copy_shape(o, x);
        return KILN_OK;
    }
    if (!strcmp(op, "Cast")) {
        o->type = (int)ai(n, "to", 0);
        copy_shape(o, x);
        if (o->type != OT_FLOAT && o->type != OT_BOOL && x->type != OT_FLOAT) {
            o->ndata = x->ndata;
            memcpy(o->data, x->data, sizeof o->data);
        }
        return KILN_OK;
    }
    if (!strcmp(op, "Dropout")) {
        o->type = x->type;
        copy_shape(o, x);
        if (n->nout > 1) out[1]->type = OT_BOOL, copy_shape(out[1], x);
        return KILN_OK;
    }
    if (!strcmp(op, "LayerNormalization")) {
        o->type = x->type;
        copy_shape(o, x);
        bool ok = false;
        int axis = x->ndim >= 0 ? norm(ai(n, "axis", -1), x->ndim, &ok) : 0;
        for (int k = 1; k < n->nout && x->ndim >= 0 && ok; k++) {
            out[k]->type = OT_FLOAT;
            copy_shape(out[k], x);
            for (int d = axis; d < x->ndim; d++) out[k]->d[d] = dk(1);
        }
        return KILN_OK;
    }
    if (op_is(n, compare) || !strcmp(op, "Add") || !strcmp(op, "Sub") || !strcmp(op, "Mul") || !strcmp(op, "Div") ||
        !strcmp(op, "Pow")) {
        o->type = op_is(n, compare) ? OT_BOOL : x->type;
        kiln_status s = bcast(m, n, 2, in, o);
        if (!s && strchr("ASMD", op[0]) && strlen(op) == 3 && o->type != OT_FLOAT)
            arith_data(in[0], in[1], op[0] == 'A' ? '+' : op[0] == 'S' ? '-' : op[0] == 'M' ? '*' : '/', o);
        return s;
    }
    if (op_is(n, variadic)) {
        o->type = x->type;
        return bcast(m, n, n->nin, in, o);
    }
    if (!strcmp(op, "Where")) {
        o->type = in[1]->type;
        return bcast(m, n, 3, in, o);
    }
    if (!strcmp(op, "MatMul")) {
        const onnx_info *a = in[0], *b = in[1];
        o->type = a->type;
        if (a->ndim < 1 || b->ndim < 1) return KILN_OK;
        D ka = a->d[a->ndim - 1], kb = b->d[b->ndim == 1 ? 0 : b->ndim - 2];
        if (ka.k && kb.k && ka.v != kb.v) {
            char sa[160], sb[160];
            kiln__onnx_info_str(a, sa, sizeof sa), kiln__onnx_info_str(b, sb, sizeof sb);
            return ifail(m, n, "inputs %s and %s: inner dims %lld and %lld differ", sa, sb, (long long)ka.v,
                         (long long)kb.v);
        }
        onnx_info ba, bb, bo;
        unknown(&ba), unknown(&bb), unknown(&bo);
        ba.ndim = a->ndim > 2 ? a->ndim - 2 : 0, bb.ndim = b->ndim > 2 ? b->ndim - 2 : 0;
        memcpy(ba.d, a->d, sizeof(D) * (size_t)ba.ndim), memcpy(bb.d, b->d, sizeof(D) * (size_t)bb.ndim);
        const onnx_info *pair[2] = {&ba, &bb};
        kiln_status s = bcast(m, n, 2, pair, &bo);
        if (s) return s;
        int nd = bo.ndim;
        memcpy(o->d, bo.d, sizeof(D) * (size_t)nd);
        if (a->ndim > 1) o->d[nd++] = a->d[a->ndim - 2];
        if (b->ndim > 1) o->d[nd++] = b->d[b->ndim - 1];
        o->ndim = nd;
        return KILN_OK;
    }
    if (!strcmp(op, "Gemm")) {
        const onnx_info *a = in[0], *b = in[1];
        o->type = a->type;
        if (a->ndim != 2 || b->ndim != 2) return KILN_OK;
        bool ta = ai(n, "transA", 0) != 0, tb = ai(n, "transB", 0) != 0;
        D ka = a->d[ta ? 0 : 1], kb = b->d[tb ? 1 : 0];
        if (ka.k && kb.k && ka.v != kb.v) {
            char sa[160], sb[160];
            kiln__onnx_info_str(a, sa, sizeof sa), kiln__onnx_info_str(b, sb, sizeof sb);
            return ifail(m, n, "A %s and B %s (transA %d, transB %d): inner dims %lld and %lld differ", sa, sb, ta, tb,
                         (long long)ka.v, (long long)kb.v);
        }
        o->ndim = 2;
        o->d[0] = a->d[ta ? 1 : 0], o->d[1] = b->d[tb ? 0 : 1];
        return KILN_OK;
    }
    if (!strcmp(op, "Conv") || !strcmp(op, "ConvTranspose")) {
        o->type = x->type;
        if (x->ndim < 3) return KILN_OK;
        return spatial(m, n, x, in[1], op[4] == 'T', false, o);
    }
    if (!strcmp(op, "MaxPool") || !strcmp(op, "AveragePool")) {
        o->type = x->type;
        if (x->ndim < 3) return KILN_OK;
        return spatial(m, n, x, NULL, false, true, o);
    }
    if (!strcmp(op, "GlobalAveragePool") || !strcmp(op, "GlobalMaxPool")) {
        o->type = x->type;
        copy_shape(o, x);
        for (int d = 2; d < x->ndim; d++) o->d[d] = dk(1);
        return KILN_OK;
    }
    if (!strcmp(op, "Flatten")) {
        o->type = x->type;
        if (x->ndim < 0) return KILN_OK;
        int64_t axis = ai(n, "axis", 1);
        if (axis < 0) axis += x->ndim;
        if (axis < 0 || axis > x->ndim) return KILN_OK;
        o->ndim = 2;
        o->d[0] = axis == 0 ? dk(1) : prod(x, 0, (int)axis);
        o->d[1] = axis == x->ndim ? dk(1) : prod(x, (int)axis, x->ndim);
        return KILN_OK;
    }
    if (!strcmp(op, "Reshape")) {
        o->type = x->type;
        const onnx_info *sh = in[1];
        if (sh->ndim != 1) return KILN_OK;
        if (sh->ndata < 0) {
            if (sh->d[0].k && sh->d[0].v <= KILN_MAX_DIMS) {
                o->ndim = (int)sh->d[0].v;
                for (int d = 0; d < o->ndim; d++) o->d[d] = du();
            }
            return KILN_OK;
        }
        bool allowzero = ai(n, "allowzero", 0) != 0;
        o->ndim = sh->ndata;
        int infer = -1;
        int64_t kout = 1;
        bool prod_ok = true;
        const char *osyms[KILN_MAX_DIMS];
        int nos = 0;
        bool open = false; /* an output dim whose size is unknown and has no symbol */
        for (int d = 0; d < sh->ndata; d++) {
            D e = sh->data[d];
            if (e.k && e.v == 0 && !allowzero)
                e = x->ndim > d ? x->d[d] : du();
            else if (e.k && e.v == -1) {
                infer = d;
                continue;
            } else if (e.k && e.v < -1) {
                return ifail(m, n, "shape[%d] is %lld", d, (long long)e.v);
            }
            o->d[d] = e;
            if (e.k)
                kout = smul(kout, e.v, &prod_ok);
            else if (e.sym)
                osyms[nos++] = e.sym;
            else
                open = true;
        }
        if (infer >= 0) {
            o->d[infer] = du();
            /* -1 = numel(x) / the product of the others, the symbols on both sides cancelling */
            int64_t kin = 1;
            const char *isyms[KILN_MAX_DIMS];
            int nis = 0;
            bool ok = x->ndim >= 0 && !open && prod_ok;
            for (int d = 0; ok && d < x->ndim; d++) {
                if (x->d[d].k)
                    kin = smul(kin, x->d[d].v, &prod_ok);
                else if (x->d[d].sym)
                    isyms[nis++] = x->d[d].sym;
                else
                    ok = false;
            }
            for (int j = 0; ok && j < nos; j++) {
                int hit = -1;
                for (int i = 0; i < nis && hit < 0; i++)
                    if (isyms[i] && !strcmp(isyms[i], osyms[j])) hit = i;
                if (hit < 0)
                    ok = false;
                else
                    isyms[hit] = NULL;
            }
            int left = 0, last = -1;
            for (int i = 0; ok && i < nis; i++)
                if (isyms[i]) left++, last = i;
            if (ok && left == 0 && kout > 0 && kin % kout == 0)
                o->d[infer] = dk(kin / kout);
            else if (ok && left == 1 && kin == kout)
                o->d[infer] = (D){0, isyms[last], false};
            else if (ok && left == 0 && kout > 0 && kin % kout != 0) {
                char sx[160];
                kiln__onnx_info_str(x, sx, sizeof sx);
                return ifail(m, n, "input %s (%lld elements) does not reshape into %lld-element rows", sx,
                             (long long)kin, (long long)kout);
            }
        }
        if (o->ndim <= 1 && x->ndata >= 0) {
            o->ndata = x->ndata;
            memcpy(o->data, x->data, sizeof o->data);
        }
        return KILN_OK;
    }
    if (!strcmp(op, "Transpose")) {
        o->type = x->type;
        if (x->ndim < 0) return KILN_OK;
        const int64_t *p;
        int c = aints(n, "perm", &p);
        if (c >= 0 && c != x->ndim) return KILN_OK;
        o->ndim = x->ndim;
        for (int d = 0; d < x->ndim; d++) {
            int64_t src = c >= 0 ? p[d] : x->ndim - 1 - d;
            if (src < 0 || src >= x->ndim) return KILN_OK;
            o->d[d] = x->d[src];
        }
        return KILN_OK;
    }
    if (!strcmp(op, "Squeeze") || !strcmp(op, "Unsqueeze")) {
        o->type = x->type;
        int64_t ax[KILN_MAX_DIMS];
        int c = axes(n, in, opset >= 13, ax);
        bool uns = op[0] == 'U';
        if (x->ndim < 0 || c == -2) {
            if (uns && x->ndim >= 0 && c == -2 && in[1]->ndim == 1 && in[1]->d[0].k && in[1]->d[0].v <= KILN_MAX_DIMS) {
                o->ndim = x->ndim + (int)in[1]->d[0].v;
                for (int d = 0; d < o->ndim && o->ndim <= KILN_MAX_DIMS; d++) o->d[d] = du();
                if (o->ndim > KILN_MAX_DIMS) o->ndim = -1;
            }
            return KILN_OK;
        }
        bool mark[KILN_MAX_DIMS] = {0};
        int nd = uns ? x->ndim + (c > 0 ? c : 0) : x->ndim;
        if (nd > KILN_MAX_DIMS) return KILN_OK;
        for (int i = 0; i < c; i++) {
            bool ok;
            int a = norm(ax[i], nd, &ok);
            if (!ok) return KILN_OK; /* the operator names the axis */
            mark[a] = true;
        }
        if (!uns && c < 0)
            for (int d = 0; d < x->ndim; d++) {
                if (!x->d[d].k) return KILN_OK; /* which dims go is known only at run time */
                mark[d] = x->d[d].v == 1;
            }
        int k = 0;
        if (uns) {
            for (int d = 0, j = 0; d < nd; d++) o->d[k++] = mark[d] ? dk(1) : x->d[j++];
        } else {
            for (int d = 0; d < x->ndim; d++)
                if (!mark[d]) o->d[k++] = x->d[d];
        }
        o->ndim = k;
        if (k <= 1 && x->ndata >= 0) {
            o->ndata = x->ndata;
            memcpy(o->data, x->data, sizeof o->data);
        }
        return KILN_OK;
    }
    if (!strcmp(op, "Concat")) {
        o->type = x->type;
        int nd = -1;
        for (int i = 0; i < n->nin; i++)
            if (in[i]->ndim >= 0) nd = in[i]->ndim;
        if (nd < 0) return KILN_OK;
        bool ok;
        int axis = norm(ai(n, "axis", 0), nd, &ok);
        if (!ok) return KILN_OK;
        o->ndim = nd;
        int64_t tot = 0;
        bool tk = true;
        for (int d = 0; d < nd; d++) o->d[d] = du();
        for (int i = 0; i < n->nin; i++) {
            const onnx_info *y = in[i];
            if (y->ndim < 0) {
                tk = false;
                continue;
            }
            if (y->ndim != nd) {
                char sa[160], sb[160];
                kiln__onnx_info_str(x, sa, sizeof sa), kiln__onnx_info_str(y, sb, sizeof sb);
                return ifail(m, n, "inputs %s and %s differ in rank", sa, sb);
            }
            for (int d = 0; d < nd; d++) {
                if (d == axis) {
                    if (y->d[d].k)
                        tot = sadd(tot, y->d[d].v, &tk);
                    else
                        tk = false;
                } else if (y->d[d].k) {
                    if (o->d[d].k && o->d[d].v != y->d[d].v) {
                        char sa[160], sb[160];
                        kiln__onnx_info_str(x, sa, sizeof sa), kiln__onnx_info_str(y, sb, sizeof sb);
                        return ifail(m, n, "inputs %s and %s differ in dim %d outside axis %d", sa, sb, d, axis);
                    }
                    o->d[d] = y->d[d];
                } else if (!o->d[d].k && !o->d[d].sym) {
                    o->d[d] = y->d[d];
                }
            }
        }
        o->d[axis] = tk ? dk(tot) : du();
        if (nd == 1 && o->type != OT_FLOAT) {
            int len = 0;
            for (int i = 0; i < n->nin && len >= 0; i++)
                if (in[i]->ndata < 0 || len + in[i]->ndata > KILN_MAX_DIMS)
                    len = -1;
                else
                    memcpy(o->data + len, in[i]->data, sizeof(D) * (size_t)in[i]->ndata), len += in[i]->ndata;
            o->ndata = len;
        }
        return KILN_OK;
    }
    if (!strcmp(op, "Split")) {
        for (int k = 0; k < n->nout; k++) out[k]->type = x->type;
        if (x->ndim < 0) return KILN_OK;
        bool ok;
        int axis = norm(ai(n, "axis", 0), x->ndim, &ok);
        if (!ok) return KILN_OK;
        int64_t sz[KILN_MAX_DIMS];
        int c = -1;
        const int64_t *v;
        if (opset >= 13) {
            if (n->nin > 1 && in[1]) c = known_data(in[1], sz) >= 0 ? in[1]->ndata : -2;
        } else if ((c = aints(n, "split", &v)) >= 0) {
            if (c > KILN_MAX_DIMS)
                c = -2;
            else if (c > 0)
                memcpy(sz, v, sizeof(int64_t) * (size_t)c);
        }
        if (c >= 0 && c != n->nout) c = -2;
        if (c == -1 && x->d[axis].k && x->d[axis].v % n->nout == 0 && n->nout <= KILN_MAX_DIMS) {
            c = n->nout;
            for (int k = 0; k < c; k++) sz[k] = x->d[axis].v / n->nout;
        }
        for (int k = 0; k < n->nout; k++) {
            copy_shape(out[k], x);
            out[k]->d[axis] = c >= 0 ? dsz(sz[k], true) : du();
        }
        return KILN_OK;
    }
    if (!strcmp(op, "Slice")) {
        o->type = x->type;
        if (x->ndim < 0) return KILN_OK;
        copy_shape(o, x);
        int64_t st[KILN_MAX_DIMS], en[KILN_MAX_DIMS], ax[KILN_MAX_DIMS], sp[KILN_MAX_DIMS];
        int c = known_data(in[1], st);
        bool known = c >= 0 && known_data(in[2], en) == c;
        if (known && n->nin > 3 && in[3])
            known = known_data(in[3], ax) == c;
        else
            for (int i = 0; i < c; i++) ax[i] = i;
        if (known && n->nin > 4 && in[4])
            known = known_data(in[4], sp) == c;
        else
            for (int i = 0; i < c; i++) sp[i] = 1;
        if (!known) {
            /* the sliced axes are unknown: so is every dim they may be */
            if (n->nin > 3 && in[3] && known_data(in[3], ax) >= 0) {
                for (int i = 0; i < in[3]->ndata; i++) {
                    bool ok;
                    int a = norm(ax[i], x->ndim, &ok);
                    if (ok) o->d[a] = du();
                }
            } else {
                for (int d = 0; d < x->ndim; d++) o->d[d] = du();
            }
            return KILN_OK;
        }
        int64_t first[KILN_MAX_DIMS], step[KILN_MAX_DIMS];
        for (int d = 0; d < x->ndim; d++) first[d] = 0, step[d] = 1;
        for (int i = 0; i < c; i++) {
            bool ok;
            int a = norm(ax[i], x->ndim, &ok);
            if (!ok || sp[i] == 0) return KILN_OK;
            if (!x->d[a].k) {
                o->d[a] = du();
                continue;
            }
            int64_t dim = x->d[a].v, s = st[i], e = en[i], len;
            if (s < 0) s += dim; /* dim >= 0: no overflow */
            if (e < 0) e += dim;
            if (sp[i] > 0) {
                s = s < 0 ? 0 : s > dim ? dim : s;
                e = e < 0 ? 0 : e > dim ? dim : e;
                len = e > s ? (e - s - 1) / sp[i] + 1 : 0;
            } else {
                s = s < 0 ? 0 : s > dim - 1 ? dim - 1 : s;
                e = e < -1 ? -1 : e > dim - 1 ? dim - 1 : e;
                len = s > e ? (sp[i] == INT64_MIN ? 1 : (s - e - 1) / -sp[i] + 1) : 0;
            }
            o->d[a] = dk(len);
            first[a] = s, step[a] = sp[i];
        }
        if (x->ndim == 1 && x->ndata >= 0 && o->d[0].k && o->d[0].v <= KILN_MAX_DIMS) {
            o->ndata = (int)o->d[0].v;
            for (int i = 0; i < o->ndata; i++) o->data[i] = x->data[first[0] + i * step[0]];
        }
        return KILN_OK;
    }
    if (!strcmp(op, "Gather")) {
        const onnx_info *idx = in[1];
        o->type = x->type;
        if (x->ndim < 1 || idx->ndim < 0) return KILN_OK;
        bool ok;
        int axis = norm(ai(n, "axis", 0), x->ndim, &ok);
        if (!ok || x->ndim - 1 + idx->ndim > KILN_MAX_DIMS) return KILN_OK;
        int k = 0;
        for (int d = 0; d < axis; d++) o->d[k++] = x->d[d];
        for (int d = 0; d < idx->ndim; d++) o->d[k++] = idx->d[d];
        for (int d = axis + 1; d < x->ndim; d++) o->d[k++] = x->d[d];
        o->ndim = k;
        int64_t iv[KILN_MAX_DIMS];
        int c = known_data(idx, iv);
        if (x->ndim == 1 && x->ndata >= 0 && c >= 0 && k <= 1) {
            for (int i = 0; i < c; i++) {
                int64_t j = iv[i] < 0 ? iv[i] + x->ndata : iv[i];
                if (j < 0 || j >= x->ndata) return KILN_OK;
                o->data[i] = x->data[j];
            }
            o->ndata = c;
        }
        return KILN_OK;
    }
    if (!strcmp(op, "GatherElements")) {
        o->type = x->type;
        copy_shape(o, in[1]);
        return KILN_OK;
    }
    if (!strcmp(op, "Shape")) {
        o->type = OT_INT64;
        o->ndim = 1;
        if (x->ndim < 0) {
            o->d[0] = du();
            return KILN_OK;
        }
        int nd = x->ndim;
        int64_t st = ai(n, "start", 0), en = ai(n, "end", nd);
        if (st < 0) st += nd;
        if (en < 0) en += nd;
        st = st < 0 ? 0 : st > nd ? nd : st;
        en = en < 0 ? 0 : en > nd ? nd : en;
        int cnt = en > st ? (int)(en - st) : 0;
        o->d[0] = dk(cnt);
        o->ndata = cnt;
        for (int i = 0; i < cnt; i++) o->data[i] = x->d[st + i];
        return KILN_OK;
    }
    if (!strcmp(op, "Size")) {
        o->type = OT_INT64;
        o->ndim = 0;
        D p = x->ndim >= 0 ? prod(x, 0, x->ndim) : du();
        if (x->ndim == 0) p = dk(1);
        o->ndata = 1;
        o->data[0] = p;
        return KILN_OK;
    }
    if (!strcmp(op, "ConstantOfShape") || !strcmp(op, "Expand") || !strcmp(op, "Tile")) {
        const onnx_info *sh = in[!strcmp(op, "ConstantOfShape") ? 0 : 1];
        o->type = x->type;
        if (op[0] == 'C') {
            const Onnx__AttributeProto *a = kiln__onnx_attr(n, "value");
            o->type = a && a->t ? a->t->data_type : OT_FLOAT;
        }
        if (sh->ndim != 1) return KILN_OK;
        onnx_info t;
        unknown(&t);
        if (sh->ndata >= 0) {
            t.ndim = sh->ndata;
            for (int d = 0; d < sh->ndata; d++) t.d[d] = sh->data[d].k && sh->data[d].v < 0 ? du() : sh->data[d];
        } else if (sh->d[0].k && sh->d[0].v <= KILN_MAX_DIMS) {
            t.ndim = (int)sh->d[0].v;
            for (int d = 0; d < t.ndim; d++) t.d[d] = du();
        } else {
            return KILN_OK;
        }
        if (op[0] == 'C') {
            copy_shape(o, &t);
            /* an integer fill of a short vector: its elements (a shape being built) */
            const Onnx__AttributeProto *a = kiln__onnx_attr(n, "value");
            const Onnx__TensorProto *vt = a ? a->t : NULL;
            int64_t fill = 0;
            bool have = vt && vt->data_type == OT_INT64 &&
                        ((vt->n_int64_data == 1 && (fill = vt->int64_data[0], true)) ||
                         (vt->has_raw_data && vt->raw_data.len == 8 && (memcpy(&fill, vt->raw_data.data, 8), true)));
            if (have && t.ndim == 1 && t.d[0].k && t.d[0].v <= KILN_MAX_DIMS) {
                o->ndata = (int)t.d[0].v;
                for (int i = 0; i < o->ndata; i++) o->data[i] = dk(fill);
            }
            return KILN_OK;
        }
        if (op[0] == 'E') {
            const onnx_info *pair[2] = {x, &t};
            return bcast(m, n, 2, pair, o);
        }
        if (x->ndim < 0 || x->ndim != t.ndim) return KILN_OK; /* Tile: repeats per dim */
        o->ndim = x->ndim;
        for (int d = 0; d < x->ndim; d++) {
            bool ok = true;
            o->d[d] = is1(t.d[d]) ? x->d[d] : t.d[d].k && x->d[d].k ? dsz(smul(t.d[d].v, x->d[d].v, &ok), ok) : du();
        }
        return KILN_OK;
    }
    if (!strcmp(op, "Range")) {
        o->type = x->type;
        o->ndim = 1;
        o->d[0] = du();
        return KILN_OK;
    }
    if (!strcmp(op, "Pad")) {
        o->type = x->type;
        if (x->ndim < 0) return KILN_OK;
        int64_t p[2 * KILN_MAX_DIMS];
        copy_shape(o, x);
        /* more than 8 pads do not travel as elements: read them from the constant */
        const onnx_val *c = &m->consts[n->in[1]];
        if (known_data(in[1], p) == 2 * x->ndim) {
        } else if (c->set && !c->t && x->ndim > 0 && kiln__onnx_numel(c) == 2 * x->ndim) {
            memcpy(p, c->h, sizeof(int64_t) * (size_t)(2 * x->ndim));
        } else {
            for (int d = 0; d < x->ndim; d++) o->d[d] = du();
            return KILN_OK;
        }
        for (int d = 0; d < x->ndim; d++) {
            bool ok = true;
            int64_t add = sadd(p[d], p[x->ndim + d], &ok);
            o->d[d] = !ok ? du() : x->d[d].k ? dsz(sadd(x->d[d].v, add, &ok), ok) : add == 0 ? x->d[d] : du();
        }
        return KILN_OK;
    }
    if (!strcmp(op, "Resize")) {
        o->type = x->type;
        if (x->ndim < 0) return KILN_OK;
        copy_shape(o, x);
        if (n->nin > 3 && in[3] && in[3]->ndata == x->ndim) {
            for (int d = 0; d < x->ndim; d++)
                o->d[d] = in[3]->data[d].k && in[3]->data[d].v < 0 ? du() : in[3]->data[d];
            return KILN_OK;
        }
        int sid = n->nin > 2 ? n->in[2] : -1;
        const onnx_val *c = sid >= 0 ? &m->consts[sid] : NULL;
        float sc[KILN_MAX_DIMS];
        if (c && c->set && c->t && kiln__onnx_numel(c) == x->ndim &&
            kiln_to_host(c->t, sc, sizeof(float) * (size_t)x->ndim) == KILN_OK) {
            for (int d = 0; d < x->ndim; d++) {
                double r = x->d[d].k ? floor((double)x->d[d].v * (double)sc[d]) : -1;
                o->d[d] = r >= 0 && r <= (double)ONNX_MAX_DIM ? dk((int64_t)r) : sc[d] == 1.0f ? x->d[d] : du();
            }
            return KILN_OK;
        }
        for (int d = 0; d < x->ndim; d++) o->d[d] = du();
        return KILN_OK;
    }
    if (!strncmp(op, "Reduce", 6) || !strcmp(op, "ArgMax") || !strcmp(op, "ArgMin")) {
        bool arg = op[0] == 'A';
        o->type = arg ? OT_INT64 : x->type;
        if (x->ndim < 0) return KILN_OK;
        bool keep = ai(n, "keepdims", 1) != 0;
        int64_t ax[KILN_MAX_DIMS];
        int c;
        if (arg) {
            c = 1, ax[0] = ai(n, "axis", 0);
        } else {
            c = axes(n, in, !strcmp(op, "ReduceSum") && opset >= 13, ax);
        }
        if (c == -2) {
            if (keep) {
                o->ndim = x->ndim;
                for (int d = 0; d < x->ndim; d++) o->d[d] = du();
            }
            return KILN_OK;
        }
        bool mark[KILN_MAX_DIMS] = {0};
        if (c <= 0) {
            bool noop = ai(n, "noop_with_empty_axes", 0) != 0;
            if (noop) {
                copy_shape(o, x);
                return KILN_OK;
            }
            for (int d = 0; d < x->ndim; d++) mark[d] = true;
        }
        for (int i = 0; i < c; i++) {
            bool ok;
            int a = norm(ax[i], x->ndim, &ok);
            if (!ok) return KILN_OK;
            mark[a] = true;
        }
        int k = 0;
        for (int d = 0; d < x->ndim; d++)
            if (!mark[d])
                o->d[k++] = x->d[d];
            else if (keep)
                o->d[k++] = dk(1);
        o->ndim = k;
        return KILN_OK;
    }
    if (!strcmp(op, "RNN") || !strcmp(op, "GRU") || !strcmp(op, "LSTM")) {
        for (int k = 0; k < n->nout; k++) out[k]->type = x->type;
        if (x->ndim != 3) return KILN_OK;
        bool bf = ai(n, "layout", 0) != 0;
        D T = x->d[bf ? 1 : 0], B = x->d[bf ? 0 : 1];
        D dirs = dk(astr_is(n, "direction", "bidirectional") ? 2 : 1);
        const Onnx__AttributeProto *ha = kiln__onnx_attr(n, "hidden_size");
        D H = ha ? dsz(ha->i, true) : in[2]->ndim == 3 ? in[2]->d[2] : du();
        onnx_info *y = out[0];
        y->ndim = 4;
        if (bf)
            y->d[0] = B, y->d[1] = T, y->d[2] = dirs, y->d[3] = H;
        else
            y->d[0] = T, y->d[1] = dirs, y->d[2] = B, y->d[3] = H;
        for (int k = 1; k < n->nout; k++) {
            out[k]->ndim = 3;
            if (bf)
                out[k]->d[0] = B, out[k]->d[1] = dirs, out[k]->d[2] = H;
            else
                out[k]->d[0] = dirs, out[k]->d[1] = B, out[k]->d[2] = H;
        }
        return KILN_OK;
    }
    return KILN_OK; /* Constant: folded at load; anything else: unknown */
}

/* ---- declared shapes -------------------------------------------------------------------- */

/* Whether a declared type/shape admits the inferred one: ranks equal, every pair of known
 * sizes equal; symbols and unknown dims accept anything. */
static bool compatible(const onnx_info *decl, const onnx_info *inf) {
    if (decl->type && inf->type && decl->type != inf->type) return false;
    if (decl->ndim < 0 || inf->ndim < 0) return true;
    if (decl->ndim != inf->ndim) return false;
    for (int d = 0; d < decl->ndim; d++)
        if (decl->d[d].k && inf->d[d].k && decl->d[d].v != inf->d[d].v) return false;
    return true;
}

/* What both tell: the inferred type where the file gives none, a known size over a symbol,
 * the file's symbol over an unknown dim. */
static void refine(onnx_info *inf, const onnx_info *decl) {
    if (!inf->type) inf->type = decl->type;
    if (decl->ndim < 0) return;
    if (inf->ndim < 0) {
        inf->ndim = decl->ndim;
        for (int d = 0; d < decl->ndim; d++) inf->d[d] = decl->d[d];
        return;
    }
    for (int d = 0; d < inf->ndim; d++)
        if (!inf->d[d].k && (decl->d[d].k || (!inf->d[d].sym && decl->d[d].sym))) inf->d[d] = decl->d[d];
}

static kiln_status check_declared(kiln_onnx_model *m, const onnx_node *n, int id) {
    onnx_info *inf = &m->info[id];
    for (int i = 0; i < m->ndecl; i++) {
        if (m->decl[i].id != id) continue;
        const onnx_info *decl = &m->decl[i].f;
        if (!compatible(decl, inf)) {
            char sa[200], sb[200];
            kiln__onnx_info_str(inf, sa, sizeof sa), kiln__onnx_info_str(decl, sb, sizeof sb);
            if (!n)
                return kiln__fail(m->ctx, KILN_ERR_SHAPE, "onnx %s: value '%s' is %s but the graph declares it %s",
                                  m->what, m->names[id], sa, sb);
            return kiln__fail(m->ctx, KILN_ERR_SHAPE,
                              "onnx %s: %s node '%s' (opset %d): output '%s' is %s by shape inference but the graph "
                              "declares it %s",
                              m->what, n->p->op_type, n->name, m->rt.opset, m->names[id], sa, sb);
        }
        refine(inf, decl);
    }
    return KILN_OK;
}

kiln_status kiln__onnx_infer(kiln_onnx_model *m) {
    m->info = calloc((size_t)m->nvals + 1, sizeof *m->info);
    if (!m->info) return kiln__fail(m->ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "onnx %s: out of host memory", m->what);
    for (int v = 0; v < m->nvals; v++) {
        if (m->consts[v].set)
            kiln__onnx_info_from_val(&m->info[v], &m->consts[v]);
        else
            unknown(&m->info[v]);
    }
    for (int i = 0; i < m->nin; i++) {
        const onnx_io *io = &m->inputs[i];
        onnx_info *f = &m->info[io->id];
        f->type = io->type;
        f->ndim = io->info.ndim;
        for (int d = 0; d < io->info.ndim; d++)
            f->d[d] = io->shape[d] >= 0 ? dk(io->shape[d]) : (D){0, io->dim_names[d], false};
    }
    for (int i = 0; i < m->nnodes; i++) {
        onnx_node *n = &m->nodes[i];
        if (!n->folded) {
            const onnx_info *in[256];
            onnx_info *out[256], dummy;
            onnx_info absent;
            unknown(&absent);
            for (int k = 0; k < n->nin; k++) in[k] = n->in[k] >= 0 ? &m->info[n->in[k]] : NULL;
            for (int k = 0; k < n->nout; k++) {
                out[k] = n->out[k] >= 0 ? &m->info[n->out[k]] : &dummy;
                unknown(out[k]);
            }
            /* a required input missing is the loader's error; the infer code may read in[0..min_in) */
            for (int k = 0; k < n->op->min_in; k++)
                if (!in[k]) in[k] = &absent;
            kiln_status s = infer_node(m, n, in, out);
            if (s) return s;
            for (int k = 0; k < n->nout; k++)
                if (n->out[k] >= 0 && out[k]->ndata >= 0 &&
                    (out[k]->type == OT_FLOAT || out[k]->ndim > 1 ||
                     (out[k]->ndim == 1 && !(out[k]->d[0].k && out[k]->d[0].v == out[k]->ndata)) ||
                     (out[k]->ndim == 0 && out[k]->ndata != 1)))
                    out[k]->ndata = -1; /* elements only where they describe the whole value */
        }
        for (int k = 0; k < n->nout; k++)
            if (n->out[k] >= 0) {
                kiln_status s = check_declared(m, n, n->out[k]);
                if (s) return s;
            }
    }
    /* graph outputs that are graph inputs or initializers */
    for (int i = 0; i < m->nout; i++) {
        kiln_status s = check_declared(m, NULL, m->outputs[i].id);
        if (s) return s;
    }
    /* the outputs' query answers what inference knows */
    for (int i = 0; i < m->nout; i++) {
        onnx_io *io = &m->outputs[i];
        const onnx_info *f = &m->info[io->id];
        if (!f->type)
            return kiln__fail(m->ctx, KILN_ERR_CORRUPT,
                              "onnx %s: graph output '%s' declares no type and none is inferred", m->what,
                              io->info.name);
        io->type = f->type;
        io->info.dtype = f->type == OT_FLOAT ? KILN_F32 : KILN_I32;
        io->info.ndim = f->ndim;
        for (int d = 0; d < f->ndim; d++) {
            io->shape[d] = f->d[d].k ? f->d[d].v : -1;
            io->dim_names[d] = f->d[d].k ? NULL : f->d[d].sym;
        }
    }
    return KILN_OK;
}

kiln_status kiln__onnx_check_result(const kiln_onnx_model *m, const onnx_node *n, int id, const onnx_val *v) {
    const onnx_info *f = &m->info[id];
    bool ok = !f->type || f->type == v->type;
    if (ok && f->ndim >= 0) {
        ok = f->ndim == v->ndim;
        for (int d = 0; ok && d < v->ndim; d++) ok = !f->d[d].k || f->d[d].v == v->shape[d];
    }
    if (ok) return KILN_OK;
    char sa[200], sb[200];
    onnx_info got;
    kiln__onnx_info_from_val(&got, v);
    kiln__onnx_info_str(&got, sa, sizeof sa), kiln__onnx_info_str(f, sb, sizeof sb);
    return kiln__fail(m->ctx, KILN_ERR_SHAPE,
                      "kiln_onnx_run %s: %s node '%s' made '%s' %s, but shape inference at load gave %s (inputs "
                      "whose dims of one symbol differ, or a fault of kiln's)",
                      m->what, n->p->op_type, n->name, m->names[id], sa, sb);
}

/* src/ops/view.c - the differentiable views and copies: kiln_view, kiln_reshape,
 * kiln_flatten, kiln_permute, kiln_transpose, kiln_slice, kiln_expand, kiln_squeeze,
 * kiln_unsqueeze, kiln_contiguous and kiln_clone, with their backward rules. The views share their input's
 * storage (kiln__tensor_view); kiln_reshape copies only when the strides do not allow a
 * view. */
#include <string.h>

#include "ops_internal.h"

/* Strides for viewing t with a new shape without copying, as torch's computeStride: fails
 * when some reshaped dims are not contiguous with each other. */
static bool view_strides(const kiln_tensor *t, int ndim, const int64_t *shape, int64_t *out) {
    if (kiln__numel(t->ndim, t->shape) == 0) {
        kiln__contiguous_strides(ndim, shape, out);
        return true;
    }
    int view_d = ndim - 1;
    int64_t chunk_base_stride = t->ndim ? t->strides[t->ndim - 1] : 1;
    int64_t tensor_numel = 1, view_numel = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        tensor_numel *= t->shape[d];
        if (d == 0 || (t->shape[d - 1] != 1 && t->strides[d - 1] != tensor_numel * chunk_base_stride)) {
            while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
                out[view_d] = view_numel * chunk_base_stride;
                view_numel *= shape[view_d];
                view_d--;
            }
            if (view_numel != tensor_numel) return false;
            if (d > 0) {
                chunk_base_stride = t->strides[d - 1];
                tensor_numel = 1;
                view_numel = 1;
            }
        }
    }
    return view_d == -1;
}

/* Validates a target shape (one -1 inferred) against numel; writes the resolved shape. */
static bool resolve_shape(kiln_ctx *ctx, const char *op, const kiln_tensor *t, int ndim, const int64_t *shape,
                          int64_t *out) {
    char a[160], b[160];
    if (ndim < 0 || ndim > KILN_MAX_DIMS || (ndim > 0 && !shape)) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: bad target rank %d", op, ndim);
        return false;
    }
    int infer = -1;
    int64_t known = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] == -1 && infer < 0) {
            infer = d;
        } else if (shape[d] < 0) {
            kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: bad target shape %s", op,
                       kiln__shape_str(ndim, shape, a, sizeof a));
            return false;
        } else {
            known *= shape[d];
        }
        out[d] = shape[d];
    }
    int64_t n = kiln__numel(t->ndim, t->shape);
    if (infer >= 0) {
        if (known == 0 || n % known != 0) goto bad;
        out[infer] = n / known;
    } else if (known != n) {
        goto bad;
    }
    return true;
bad:
    kiln__fail(ctx, KILN_ERR_SHAPE, "%s: cannot reshape tensor %s (%lld elements) to %s", op,
               kiln__shape_str(t->ndim, t->shape, a, sizeof a), (long long)n,
               kiln__shape_str(ndim, shape, b, sizeof b));
    return false;
}

/* ---- backward of views and copies ------------------------------------------------- */

/* kiln_permute's forward permutation (normalised axes) */
typedef struct permute_state {
    int dims[KILN_MAX_DIMS];
} permute_state;

/* kiln_slice's dim, normalised start and step */
typedef struct slice_state {
    int dim;
    int64_t start, step;
} slice_state;

/* expand, contiguous, clone: the gradient as it is (kiln__accum sums broadcast dims) */
static kiln_status bw_identity(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) { return kiln__accum(ctx, n, 0, g); }

/* view, reshape, squeeze, unsqueeze: the gradient in the input's shape */
static kiln_status bw_reshape(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) {
    kiln_tensor *r = kiln_reshape(ctx, g, n->in[0]->ndim, n->in[0]->shape);
    kiln_status s = r ? kiln__accum(ctx, n, 0, r) : ctx->err;
    kiln_tensor_free(r);
    return s;
}

/* the inverse permutation */
static kiln_status bw_permute(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) {
    const permute_state *st = KILN__NODE_STATE(n, permute_state);
    if (!st) return ctx->err;
    int inv[KILN_MAX_DIMS];
    for (int d = 0; d < g->ndim; d++) inv[st->dims[d]] = d;
    kiln_tensor *r = kiln_permute(ctx, g, inv);
    kiln_status s = r ? kiln__accum(ctx, n, 0, r) : ctx->err;
    kiln_tensor_free(r);
    return s;
}

/* zeros of the input's shape with the gradient written into the sliced positions: for a
 * step of 1 the gradient padded with zeros (one pass, a row per work-item on CPUs), else
 * zeros and a strided copy */
static kiln_status bw_slice(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) {
    const slice_state *st = KILN__NODE_STATE(n, slice_state);
    if (!st) return ctx->err;
    kiln_tensor *x = n->in[0];
    if (st->step == 1 && g->dtype == KILN_F32) {
        int64_t pad[2 * KILN_MAX_DIMS] = {0};
        int np = 2 * (x->ndim - st->dim); /* kiln_pad's pairs run from the last dim */
        pad[np - 2] = st->start, pad[np - 1] = x->shape[st->dim] - st->start - g->shape[st->dim];
        kiln_tensor *p = kiln_pad(ctx, g, np, pad, 0.0f);
        return p ? kiln__accum_owned(ctx, n, 0, p) : ctx->err;
    }
    kiln_tensor *z = kiln_zeros(ctx, x->ndim, x->shape);
    if (!z) return ctx->err;
    int d = st->dim;
    kiln_tensor *v = kiln_slice(ctx, z, d, st->start, st->start + st->step * (g->shape[d] - 1) + 1, st->step);
    kiln_status s = v ? kiln__copy_into(ctx, "kiln_slice backward", g, v) : ctx->err;
    if (s == KILN_OK) s = kiln__accum(ctx, n, 0, z);
    kiln_tensor_free(v);
    kiln_tensor_free(z);
    return s;
}

/* Records the backward of a view op on *out when grad is wanted (NULL-safe). Returns the
 * node, or NULL when none was recorded; on failure *out is freed and set to NULL. */
static kiln__node *record(kiln_ctx *ctx, const char *op, kiln_tensor **out, kiln_tensor *t, kiln__backward_fn bw) {
    if (!*out || !kiln__grad_wanted(ctx, 1, &t)) return NULL;
    kiln__node *n = kiln__node_new(ctx, op, *out, 1, &t, bw);
    if (!n) {
        kiln_tensor_free(*out);
        *out = NULL;
    } else {
        n->strided_grad = true; /* every rule here reads its gradient through its strides */
    }
    return n;
}

/* Attaches the backward of a view op to out (NULL-safe) and finishes the op. */
static kiln_tensor *record_view(kiln_ctx *ctx, const char *op, kiln_tensor *out, kiln_tensor *t, kiln__backward_fn bw) {
    record(ctx, op, &out, t, bw);
    return kiln__finish(ctx, op, out);
}

/* ---- copies ------------------------------------------------------------------------ */

kiln_tensor *kiln_clone(kiln_ctx *ctx, kiln_tensor *t) {
    if (!kiln__check_inputs(ctx, "kiln_clone", 1, &t)) return NULL;
    return record_view(ctx, "kiln_clone", kiln__copy_contiguous(ctx, "kiln_clone", t), t, bw_identity);
}

kiln_tensor *kiln_contiguous(kiln_ctx *ctx, kiln_tensor *t) {
    if (!kiln__check_inputs(ctx, "kiln_contiguous", 1, &t)) return NULL;
    kiln_tensor *out = kiln__is_contiguous(t) ? kiln__tensor_view(ctx, t, t->ndim, t->shape, t->strides, t->offset)
                                              : kiln__copy_contiguous(ctx, "kiln_contiguous", t);
    return record_view(ctx, "kiln_contiguous", out, t, bw_identity);
}

/* ---- views -------------------------------------------------------------------------- */

kiln_tensor *kiln_view(kiln_ctx *ctx, kiln_tensor *t, int ndim, const int64_t *shape) {
    if (!kiln__check_inputs(ctx, "kiln_view", 1, &t)) return NULL;
    int64_t sh[KILN_MAX_DIMS], st[KILN_MAX_DIMS];
    if (!resolve_shape(ctx, "kiln_view", t, ndim, shape, sh)) return NULL;
    if (!view_strides(t, ndim, sh, st)) {
        char a[160], b[160];
        kiln__fail(ctx, KILN_ERR_SHAPE,
                   "kiln_view: tensor %s with its strides cannot be viewed as %s without a copy "
                   "(use kiln_reshape)",
                   kiln__shape_str(t->ndim, t->shape, a, sizeof a), kiln__shape_str(ndim, sh, b, sizeof b));
        return NULL;
    }
    return record_view(ctx, "kiln_view", kiln__tensor_view(ctx, t, ndim, sh, st, t->offset), t, bw_reshape);
}

kiln_tensor *kiln_reshape(kiln_ctx *ctx, kiln_tensor *t, int ndim, const int64_t *shape) {
    if (!kiln__check_inputs(ctx, "kiln_reshape", 1, &t)) return NULL;
    int64_t sh[KILN_MAX_DIMS], st[KILN_MAX_DIMS];
    if (!resolve_shape(ctx, "kiln_reshape", t, ndim, shape, sh)) return NULL;
    if (view_strides(t, ndim, sh, st))
        return record_view(ctx, "kiln_reshape", kiln__tensor_view(ctx, t, ndim, sh, st, t->offset), t, bw_reshape);
    kiln_tensor *c = kiln__copy_contiguous(ctx, "kiln_reshape", t);
    if (!c) return NULL;
    c->ndim = ndim;
    memcpy(c->shape, sh, sizeof(int64_t) * (size_t)ndim);
    kiln__contiguous_strides(ndim, c->shape, c->strides);
    return record_view(ctx, "kiln_reshape", c, t, bw_reshape);
}

kiln_tensor *kiln_flatten(kiln_ctx *ctx, kiln_tensor *x, int start_dim, int end_dim) {
    const char *op = "kiln_flatten";
    if (!kiln__check_inputs(ctx, op, 1, &x)) return NULL;
    int nd = x->ndim ? x->ndim : 1; /* a 0-d tensor flattens to [1], as torch */
    int s = kiln__axis(start_dim, nd), e = kiln__axis(end_dim, nd);
    char a[160];
    if (s < 0 || e < 0 || s > e) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: start_dim %d and end_dim %d are %s for input %s", op, start_dim,
                   end_dim, s < 0 || e < 0 ? "out of range" : "in the wrong order",
                   kiln__shape_str(x->ndim, x->shape, a, sizeof a));
        return NULL;
    }
    /* a 0-d tensor becomes a [1] view (kiln_reshape would copy it) */
    if (x->ndim == 0) return kiln__finish(ctx, op, kiln_unsqueeze(ctx, x, 0));
    int64_t sh[KILN_MAX_DIMS], merged = 1;
    int m = 0;
    for (int d = 0; d < s; d++) sh[m++] = x->shape[d];
    for (int d = s; d <= e; d++) merged *= x->shape[d];
    sh[m++] = merged;
    for (int d = e + 1; d < x->ndim; d++) sh[m++] = x->shape[d];
    /* a view when the strides allow it; kiln_reshape records its own backward */
    return kiln__finish(ctx, op, kiln_reshape(ctx, x, m, sh));
}

kiln_tensor *kiln_permute(kiln_ctx *ctx, kiln_tensor *t, const int *dims) {
    if (!kiln__check_inputs(ctx, "kiln_permute", 1, &t)) return NULL;
    if (!dims && t->ndim > 0) {
        kiln__fail(ctx, KILN_ERR_NULL, "kiln_permute: dims is NULL");
        return NULL;
    }
    int64_t sh[KILN_MAX_DIMS], st[KILN_MAX_DIMS];
    bool seen[KILN_MAX_DIMS] = {false};
    for (int d = 0; d < t->ndim; d++) {
        int s = kiln__axis(dims[d], t->ndim);
        if (s < 0 || seen[s]) {
            char a[160];
            kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                       "kiln_permute: dims is not a permutation of %d axes of tensor %s "
                       "(entry %d is %d)",
                       t->ndim, kiln__shape_str(t->ndim, t->shape, a, sizeof a), d, dims[d]);
            return NULL;
        }
        seen[s] = true;
        sh[d] = t->shape[s];
        st[d] = t->strides[s];
    }
    kiln_tensor *out = kiln__tensor_view(ctx, t, t->ndim, sh, st, t->offset);
    kiln__node *node = record(ctx, "kiln_permute", &out, t, bw_permute);
    if (node) {
        permute_state *ps = KILN__NODE_STATE_NEW(node, permute_state);
        if (!ps) {
            kiln_tensor_free(out);
            return NULL;
        }
        for (int d = 0; d < t->ndim; d++) ps->dims[d] = kiln__axis(dims[d], t->ndim);
    }
    return kiln__finish(ctx, "kiln_permute", out);
}

kiln_tensor *kiln_transpose(kiln_ctx *ctx, kiln_tensor *t, int dim0, int dim1) {
    if (!kiln__check_inputs(ctx, "kiln_transpose", 1, &t)) return NULL;
    int a = kiln__axis(dim0, t->ndim), b = kiln__axis(dim1, t->ndim);
    if (a < 0 || b < 0) {
        char s[160];
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "kiln_transpose: dims %d, %d out of range for tensor %s", dim0, dim1,
                   kiln__shape_str(t->ndim, t->shape, s, sizeof s));
        return NULL;
    }
    int dims[KILN_MAX_DIMS];
    for (int d = 0; d < t->ndim; d++) dims[d] = d;
    dims[a] = b;
    dims[b] = a;
    return kiln_permute(ctx, t, dims);
}

kiln_tensor *kiln_slice(kiln_ctx *ctx, kiln_tensor *t, int dim, int64_t start, int64_t end, int64_t step) {
    if (!kiln__check_inputs(ctx, "kiln_slice", 1, &t)) return NULL;
    int d = kiln__axis(dim, t->ndim);
    char s[160];
    if (d < 0 || step < 1) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "kiln_slice: dim %d / step %lld invalid for tensor %s", dim,
                   (long long)step, kiln__shape_str(t->ndim, t->shape, s, sizeof s));
        return NULL;
    }
    int64_t n = t->shape[d];
    if (start < 0) start += n;
    if (end < 0) end += n;
    if (start < 0) start = 0;
    if (start > n) start = n;
    if (end > n) end = n;
    if (end < start) end = start;
    int64_t sh[KILN_MAX_DIMS], st[KILN_MAX_DIMS];
    memcpy(sh, t->shape, sizeof sh);
    memcpy(st, t->strides, sizeof st);
    sh[d] = (end - start + step - 1) / step;
    st[d] = t->strides[d] * step;
    kiln_tensor *out = kiln__tensor_view(ctx, t, t->ndim, sh, st, t->offset + start * t->strides[d]);
    kiln__node *node = record(ctx, "kiln_slice", &out, t, bw_slice);
    if (node) {
        slice_state *ss = KILN__NODE_STATE_NEW(node, slice_state);
        if (!ss) {
            kiln_tensor_free(out);
            return NULL;
        }
        *ss = (slice_state){.dim = d, .start = start, .step = step};
    }
    return kiln__finish(ctx, "kiln_slice", out);
}

kiln_tensor *kiln_expand(kiln_ctx *ctx, kiln_tensor *t, int ndim, const int64_t *shape) {
    if (!kiln__check_inputs(ctx, "kiln_expand", 1, &t)) return NULL;
    char a[160], b[160];
    if (ndim < t->ndim || ndim > KILN_MAX_DIMS || !shape) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "kiln_expand: cannot expand tensor %s to %d dims",
                   kiln__shape_str(t->ndim, t->shape, a, sizeof a), ndim);
        return NULL;
    }
    int64_t sh[KILN_MAX_DIMS], st[KILN_MAX_DIMS];
    int lead = ndim - t->ndim;
    for (int d = 0; d < ndim; d++) {
        int s = d - lead;
        int64_t have = s >= 0 ? t->shape[s] : 1;
        int64_t want = shape[d] == -1 && s >= 0 ? have : shape[d];
        if (want < 0 || (have != want && have != 1)) {
            kiln__fail(ctx, KILN_ERR_SHAPE, "kiln_expand: cannot expand tensor %s to %s (dim %d: %lld vs %lld)",
                       kiln__shape_str(t->ndim, t->shape, a, sizeof a), kiln__shape_str(ndim, shape, b, sizeof b), d,
                       (long long)have, (long long)shape[d]);
            return NULL;
        }
        sh[d] = want;
        st[d] = (s >= 0 && have == want) ? t->strides[s] : 0;
    }
    int64_t n = 1;
    for (int d = 0; d < ndim && n <= KILN__MAX_ELEMS; d++) n *= sh[d] ? sh[d] : 1;
    if (n > KILN__MAX_ELEMS) {
        kiln__fail(ctx, KILN_ERR_UNSUPPORTED, "kiln_expand: %s has more than %lld elements",
                   kiln__shape_str(ndim, sh, b, sizeof b), (long long)KILN__MAX_ELEMS);
        return NULL;
    }
    return record_view(ctx, "kiln_expand", kiln__tensor_view(ctx, t, ndim, sh, st, t->offset), t, bw_identity);
}

kiln_tensor *kiln_unsqueeze(kiln_ctx *ctx, kiln_tensor *t, int dim) {
    if (!kiln__check_inputs(ctx, "kiln_unsqueeze", 1, &t)) return NULL;
    int d = kiln__axis(dim, t->ndim + 1);
    if (d < 0 || t->ndim == KILN_MAX_DIMS) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "kiln_unsqueeze: dim %d invalid for %d dims", dim, t->ndim);
        return NULL;
    }
    int64_t sh[KILN_MAX_DIMS], st[KILN_MAX_DIMS];
    for (int i = 0, j = 0; i <= t->ndim; i++) {
        if (i == d) {
            sh[i] = 1;
            st[i] = (j < t->ndim) ? t->strides[j] * t->shape[j] : 1;
            continue;
        }
        sh[i] = t->shape[j];
        st[i] = t->strides[j];
        j++;
    }
    return record_view(ctx, "kiln_unsqueeze", kiln__tensor_view(ctx, t, t->ndim + 1, sh, st, t->offset), t, bw_reshape);
}

kiln_tensor *kiln_squeeze(kiln_ctx *ctx, kiln_tensor *t, int dim) {
    if (!kiln__check_inputs(ctx, "kiln_squeeze", 1, &t)) return NULL;
    bool all = dim == -KILN_MAX_DIMS - 1;
    int d = all ? -1 : kiln__axis(dim, t->ndim);
    if (!all && d < 0) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "kiln_squeeze: dim %d invalid for %d dims", dim, t->ndim);
        return NULL;
    }
    int64_t sh[KILN_MAX_DIMS], st[KILN_MAX_DIMS];
    int n = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] == 1 && (all || i == d)) continue;
        sh[n] = t->shape[i];
        st[n++] = t->strides[i];
    }
    return record_view(ctx, "kiln_squeeze", kiln__tensor_view(ctx, t, n, sh, st, t->offset), t, bw_reshape);
}

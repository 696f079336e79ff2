/* src/io/onnx_run.c - running a loaded ONNX model (kiln_onnx_run) and the queries of its
 * inputs and outputs. Nodes run in topological order without autograd; each node's
 * temporaries live in a scope of its own, its results are kept until their last consumer
 * ran and are then freed (their buffers go back to the pool for the next node or run).
 * KILN_ONNX_PROFILE=1 times each node (draining the queue before and after it) and logs the
 * time per operator after each run at info level (KILN_LOG=1 prints it). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onnx_internal.h"

int kiln_onnx_num_inputs(const kiln_onnx_model *m) { return m ? m->nin : 0; }
int kiln_onnx_num_outputs(const kiln_onnx_model *m) { return m ? m->nout : 0; }

kiln_status kiln_onnx_input_info(const kiln_onnx_model *m, int i, kiln_onnx_value_info *info) {
    if (!m || !info) return kiln__fail_global(KILN_ERR_NULL, "kiln_onnx_input_info: NULL argument");
    if (i < 0 || i >= m->nin)
        return kiln__fail(m->ctx, KILN_ERR_RANGE, "kiln_onnx_input_info: input %d of %d (%s)", i, m->nin, m->what);
    *info = m->inputs[i].info;
    return KILN_OK;
}

kiln_status kiln_onnx_output_info(const kiln_onnx_model *m, int i, kiln_onnx_value_info *info) {
    if (!m || !info) return kiln__fail_global(KILN_ERR_NULL, "kiln_onnx_output_info: NULL argument");
    if (i < 0 || i >= m->nout)
        return kiln__fail(m->ctx, KILN_ERR_RANGE, "kiln_onnx_output_info: output %d of %d (%s)", i, m->nout, m->what);
    *info = m->outputs[i].info;
    return KILN_OK;
}

/* "[batch, 1, 28, 28]" for a declared shape. */
static void decl_shape(const onnx_io *io, char *buf, size_t cap) {
    if (io->info.ndim < 0) {
        snprintf(buf, cap, "(any shape)");
        return;
    }
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < io->info.ndim && k < cap; d++) {
        if (io->shape[d] >= 0)
            k += (size_t)snprintf(buf + k, cap - k, "%s%lld", d ? ", " : "", (long long)io->shape[d]);
        else
            k += (size_t)snprintf(buf + k, cap - k, "%s%s", d ? ", " : "", io->dim_names[d] ? io->dim_names[d] : "?");
    }
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

static kiln_status bind_input(kiln_onnx_model *m, const onnx_io *io, kiln_tensor *t, onnx_val *v) {
    kiln_ctx *ctx = m->ctx;
    char got[160], want[160];
    if (!t) return kiln__fail(ctx, KILN_ERR_NULL, "kiln_onnx_run %s: input '%s' is NULL", m->what, io->info.name);
    int nd = kiln_tensor_ndim(t);
    const int64_t *sh = kiln_tensor_shape(t);
    kiln_dtype dt = kiln_tensor_dtype(t);
    bool ok = dt == io->info.dtype && (io->info.ndim < 0 || io->info.ndim == nd);
    for (int d = 0; ok && io->info.ndim >= 0 && d < nd; d++) ok = io->shape[d] < 0 || io->shape[d] == sh[d];
    if (!ok) {
        kiln_tensor_shape_str(t, got, sizeof got);
        decl_shape(io, want, sizeof want);
        return kiln__fail(ctx, dt != io->info.dtype ? KILN_ERR_DTYPE : KILN_ERR_SHAPE,
                          "kiln_onnx_run %s: input '%s' is %s %s; the model wants %s %s (ONNX %s)", m->what,
                          io->info.name, kiln_dtype_name(dt), got, kiln_dtype_name(io->info.dtype), want,
                          kiln__onnx_type_name(io->type));
    }
    memset(v, 0, sizeof *v);
    v->type = io->type;
    v->ndim = nd;
    memcpy(v->shape, sh, sizeof(int64_t) * (size_t)nd);
    if (io->type == OT_FLOAT) {
        v->t = kiln_reshape(ctx, t, nd, sh); /* a tensor object of the runtime's own */
        if (!v->t) return kiln_error_status(ctx);
        kiln_tensor_keep(v->t);
    } else {
        int64_t cnt = kiln_tensor_numel(t);
        int32_t *buf = malloc((size_t)(cnt > 0 ? cnt : 1) * sizeof *buf);
        v->h = malloc((size_t)(cnt > 0 ? cnt : 1) * sizeof *v->h);
        if (!buf || !v->h) {
            free(buf);
            return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "kiln_onnx_run %s: out of host memory", m->what);
        }
        if (cnt && kiln_to_host(t, buf, (size_t)cnt * sizeof *buf) != KILN_OK) {
            free(buf);
            return kiln_error_status(ctx);
        }
        for (int64_t i = 0; i < cnt; i++) v->h[i] = io->type == OT_BOOL ? buf[i] != 0 : buf[i];
        free(buf);
    }
    v->set = true;
    return KILN_OK;
}

/* A graph output as a new tensor of the caller's scope. */
static kiln_tensor *export_val(kiln_onnx_model *m, const onnx_io *io, const onnx_val *v, bool constant) {
    kiln_ctx *ctx = m->ctx;
    if (v->t) return constant ? kiln_clone(ctx, v->t) : kiln_reshape(ctx, v->t, v->ndim, v->shape);
    int64_t cnt = kiln__onnx_numel(v);
    int32_t *buf = malloc((size_t)(cnt > 0 ? cnt : 1) * sizeof *buf);
    if (!buf)
        return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "kiln_onnx_run %s: out of host memory", m->what), NULL;
    for (int64_t i = 0; i < cnt; i++) {
        if (v->h[i] < INT32_MIN || v->h[i] > INT32_MAX) {
            free(buf);
            return kiln__fail(ctx, KILN_ERR_UNSUPPORTED,
                              "kiln_onnx_run %s: output '%s' holds %lld, outside the I32 "
                              "range kiln returns integers in",
                              m->what, io->info.name, (long long)v->h[i]),
                   NULL;
        }
        buf[i] = (int32_t)v->h[i];
    }
    kiln_tensor *t = kiln_from_host(ctx, buf, KILN_I32, v->ndim, v->shape);
    free(buf);
    return t;
}

typedef struct prof_row {
    const char *op;
    double ms;
    int n;
} prof_row;

enum { PROF_ROWS = 64 };

static void prof_add(prof_row *rows, int *nrows, const char *op, double ms) {
    int i = 0;
    while (i < *nrows && strcmp(rows[i].op, op) != 0) i++;
    if (i == *nrows) {
        if (*nrows == PROF_ROWS) return;
        rows[(*nrows)++] = (prof_row){op, 0, 0};
    }
    rows[i].ms += ms, rows[i].n++;
}

/* The rows, slowest operator first, with the total. */
static void prof_log(const kiln_onnx_model *m, prof_row *rows, int nrows) {
    double total = 0;
    for (int i = 0; i < nrows; i++) total += rows[i].ms;
    kiln__log(2, "onnx %s: %.3f ms in %d operators", m->what, total, nrows);
    for (int i = 0; i < nrows; i++) {
        int best = i;
        for (int j = i + 1; j < nrows; j++)
            if (rows[j].ms > rows[best].ms) best = j;
        prof_row t = rows[i];
        rows[i] = rows[best], rows[best] = t;
        kiln__log(2, "onnx %s:   %-20s %4d nodes %9.3f ms %5.1f%%", m->what, rows[i].op, rows[i].n, rows[i].ms,
                  total > 0 ? 100 * rows[i].ms / total : 0.0);
    }
}

kiln_status kiln_onnx_run(kiln_onnx_model *m, int n_in, kiln_tensor *const in[], int n_out, kiln_tensor *out[]) {
    if (!m) return kiln__fail_global(KILN_ERR_NULL, "kiln_onnx_run: model is NULL");
    kiln_ctx *ctx = m->ctx;
    for (int i = 0; i < n_out && out; i++) out[i] = NULL;
    if ((n_in && !in) || (n_out && !out))
        return kiln__fail(ctx, KILN_ERR_NULL, "kiln_onnx_run %s: NULL array", m->what);
    if (kiln_error_status(ctx) != KILN_OK) return kiln_error_status(ctx);
    if (n_in != m->nin || n_out < 0 || n_out > m->nout)
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                          "kiln_onnx_run %s: %d inputs and %d outputs given; the model "
                          "has %d inputs and %d outputs",
                          m->what, n_in, n_out, m->nin, m->nout);
    bool grad = kiln_ctx_set_grad_enabled(ctx, false);
    kiln_status s = KILN_OK;
    onnx_val *vals = m->vals;
    const char *pe = getenv("KILN_ONNX_PROFILE");
    bool prof = pe && pe[0] && strcmp(pe, "0") != 0;
    prof_row rows[PROF_ROWS];
    int nrows = 0;
    for (int i = 0; i < m->nin && !s; i++) s = bind_input(m, &m->inputs[i], in[i], &vals[m->inputs[i].id]);
    for (int i = 0; i < m->nnodes && !s; i++) {
        onnx_node *n = &m->nodes[i];
        if (n->folded || n->fused) continue;
        onnx_val *iv[256], *ov[256], dummy = {0};
        for (int k = 0; k < n->nin; k++) {
            int id = n->in[k];
            iv[k] = id < 0 ? NULL : m->consts[id].set ? &m->consts[id] : &vals[id];
            if (iv[k] && !iv[k]->set) {
                s = kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                               "kiln_onnx_run %s: %s node '%s': input '%s' has no value", m->what, n->p->op_type,
                               n->name, m->names[id]);
                break;
            }
        }
        if (s) break;
        for (int k = 0; k < n->nout; k++) ov[k] = n->out[k] >= 0 ? &vals[n->out[k]] : &dummy;
        double t0 = 0;
        if (prof && kiln_sync(ctx) == KILN_OK) t0 = kiln__now_ms();
        kiln_scope_begin(ctx);
        s = n->op->run(&m->rt, n, iv, ov);
        for (int k = 0; k < n->nout; k++) {
            if (n->out[k] < 0 || !ov[k]->t) continue;
            for (int j = 0; j < n->nin; j++)
                if (iv[j] && iv[j]->t == ov[k]->t) ov[k]->t = kiln_reshape(ctx, ov[k]->t, ov[k]->ndim, ov[k]->shape);
            kiln_tensor_keep(ov[k]->t);
        }
        kiln__onnx_val_clear(&dummy);
        kiln_scope_end(ctx);
        if (prof && !s && kiln_sync(ctx) == KILN_OK) prof_add(rows, &nrows, n->op->name, kiln__now_ms() - t0);
        if (!s && kiln_error_status(ctx) != KILN_OK) s = kiln_error_status(ctx);
        /* each result as shape inference said at load */
        for (int k = 0; k < n->nout && !s; k++)
            if (n->out[k] >= 0 && ov[k]->set) s = kiln__onnx_check_result(m, n, n->out[k], ov[k]);
        if (s) break;
        /* free what no later node reads */
        for (int k = 0; k < n->nin; k++) {
            int id = n->in[k];
            if (id >= 0 && m->last_use[id] == i && !m->is_output[id] && !m->consts[id].set)
                kiln__onnx_val_clear(&vals[id]);
        }
        for (int k = 0; k < n->nout; k++) {
            int id = n->out[k];
            if (id >= 0 && m->last_use[id] < 0 && !m->is_output[id]) kiln__onnx_val_clear(&vals[id]);
        }
    }
    for (int i = 0; i < n_out && !s; i++) {
        const onnx_io *io = &m->outputs[i];
        bool c = m->consts[io->id].set;
        const onnx_val *v = c ? &m->consts[io->id] : &vals[io->id];
        if (!v->set) {
            s = kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "kiln_onnx_run %s: output '%s' has no value", m->what,
                           io->info.name);
            break;
        }
        out[i] = export_val(m, io, v, c);
        if (!out[i]) s = kiln_error_status(ctx);
    }
    for (int v = 0; v < m->nvals; v++) kiln__onnx_val_clear(&vals[v]);
    if (prof && !s) prof_log(m, rows, nrows);
    if (s)
        for (int i = 0; i < n_out; i++) kiln_tensor_free(out[i]), out[i] = NULL;
    kiln_ctx_set_grad_enabled(ctx, grad);
    return s;
}

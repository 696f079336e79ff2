/* tests/test_onnx.c - the ONNX runtime (kiln/onnx.h): models exported by torch.onnx
 * (tests/golden/gen_onnx.py) against torch's outputs at two batch sizes, a small graph built
 * here with protobuf-c against a host computation, and every rejection the reader promises:
 * a truncated file, tensor data shorter than its shape, an external-data path leaving the
 * model's directory, a cycle, an input nobody produces, a 2^40 dimension, an unsupported
 * operator / attribute / opset, wrong input dtype or shape at run. A Conv followed by a
 * BatchNormalization is folded at load into one Conv (checked against the unfolded graph and
 * a host computation), and not folded when the Conv's output has a second reader. */
#define _XOPEN_SOURCE 700
#include <sys/stat.h>
#include <unistd.h>

#include <kiln/onnx.h>
#include <onnx.pb-c.h>

#include "harness.h"

/* ---- building models with protobuf-c ------------------------------------------------ */

typedef struct mb {
    Onnx__ModelProto m;
    Onnx__GraphProto g;
    Onnx__OperatorSetIdProto opset, *opsets[1];
    Onnx__NodeProto nodes[8], *pnodes[8];
    Onnx__TensorProto inits[8], *pinits[8];
    Onnx__ValueInfoProto ins[2], outs[2], *pins[2], *pouts[2];
    Onnx__TypeProto types[4];
    Onnx__TypeProto__Tensor tts[4];
    Onnx__TensorShapeProto shapes[4];
    Onnx__TensorShapeProto__Dimension dims[4][4], *pdims[4][4];
    Onnx__AttributeProto attrs[8], *pattrs[8][2];
    int ntypes, nattrs;
} mb;

static void mb_init(mb *b, int opset) {
    memset(b, 0, sizeof *b);
    onnx__model_proto__init(&b->m);
    onnx__graph_proto__init(&b->g);
    onnx__operator_set_id_proto__init(&b->opset);
    b->opset.domain = "";
    b->opset.has_version = 1;
    b->opset.version = opset;
    b->opsets[0] = &b->opset;
    b->m.n_opset_import = 1;
    b->m.opset_import = b->opsets;
    b->m.has_ir_version = 1;
    b->m.ir_version = 8;
    b->m.graph = &b->g;
    b->g.name = "test";
    b->g.node = b->pnodes;
    b->g.initializer = b->pinits;
    b->g.input = b->pins;
    b->g.output = b->pouts;
}

/* A float tensor value info; dims: >= 0 sizes, -1 the symbolic "N". */
static void mb_value(mb *b, bool input, const char *name, int ndim, const int64_t *dims) {
    int k = b->ntypes++;
    Onnx__ValueInfoProto *v = input ? &b->ins[b->g.n_input] : &b->outs[b->g.n_output];
    onnx__value_info_proto__init(v);
    onnx__type_proto__init(&b->types[k]);
    onnx__type_proto__tensor__init(&b->tts[k]);
    onnx__tensor_shape_proto__init(&b->shapes[k]);
    v->name = (char *)name;
    v->type = &b->types[k];
    b->types[k].value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    b->types[k].tensor_type = &b->tts[k];
    b->tts[k].has_elem_type = 1;
    b->tts[k].elem_type = 1;
    b->tts[k].shape = &b->shapes[k];
    b->shapes[k].n_dim = (size_t)ndim;
    b->shapes[k].dim = b->pdims[k];
    for (int d = 0; d < ndim; d++) {
        Onnx__TensorShapeProto__Dimension *x = &b->dims[k][d];
        onnx__tensor_shape_proto__dimension__init(x);
        if (dims[d] >= 0)
            x->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE, x->dim_value = dims[d];
        else
            x->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM, x->dim_param = "N";
        b->pdims[k][d] = x;
    }
    if (input)
        b->pins[b->g.n_input++] = v;
    else
        b->pouts[b->g.n_output++] = v;
}

static Onnx__TensorProto *mb_init_f32(mb *b, const char *name, int ndim, int64_t *dims, int nvals, float *vals) {
    Onnx__TensorProto *t = &b->inits[b->g.n_initializer];
    onnx__tensor_proto__init(t);
    t->name = (char *)name;
    t->has_data_type = 1;
    t->data_type = 1;
    t->n_dims = (size_t)ndim;
    t->dims = dims;
    t->n_float_data = (size_t)nvals;
    t->float_data = vals;
    b->pinits[b->g.n_initializer++] = t;
    return t;
}

static Onnx__NodeProto *mb_node(mb *b, const char *op, const char *name, int nin, char **in, int nout, char **out) {
    Onnx__NodeProto *n = &b->nodes[b->g.n_node];
    onnx__node_proto__init(n);
    n->op_type = (char *)op;
    n->name = (char *)name;
    n->n_input = (size_t)nin;
    n->input = in;
    n->n_output = (size_t)nout;
    n->output = out;
    b->pnodes[b->g.n_node++] = n;
    return n;
}

static void mb_attr_i(mb *b, Onnx__NodeProto *n, const char *name, int64_t v) {
    Onnx__AttributeProto *a = &b->attrs[b->nattrs];
    onnx__attribute_proto__init(a);
    a->name = (char *)name;
    a->has_type = 1;
    a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT;
    a->has_i = 1;
    a->i = v;
    b->pattrs[b->nattrs][0] = a;
    n->n_attribute = 1;
    n->attribute = b->pattrs[b->nattrs++];
}

static uint8_t *mb_pack(mb *b, size_t *len) {
    *len = onnx__model_proto__get_packed_size(&b->m);
    uint8_t *buf = malloc(*len + 1);
    onnx__model_proto__pack(&b->m, buf);
    return buf;
}

/* The MLP y = relu(x W^T + c) with x [N, 4], W [3, 4], c [3]. */
static float W[12], C[3];
static int64_t wdims[2] = {3, 4}, cdims[1] = {3};
static char *gemm_in[] = {"x", "W", "c"}, *gemm_out[] = {"h"}, *relu_in[] = {"h"}, *relu_out[] = {"y"};

static void mlp_model(mb *b, int opset) {
    mb_init(b, opset);
    for (int i = 0; i < 12; i++) W[i] = 0.1f * (float)(i % 7) - 0.3f;
    for (int i = 0; i < 3; i++) C[i] = 0.05f * (float)i;
    mb_value(b, true, "x", 2, (int64_t[]){-1, 4});
    mb_value(b, false, "y", 2, (int64_t[]){-1, 3});
    mb_init_f32(b, "W", 2, wdims, 12, W);
    mb_init_f32(b, "c", 1, cdims, 3, C);
    Onnx__NodeProto *g = mb_node(b, "Gemm", "fc", 3, gemm_in, 1, gemm_out);
    mb_attr_i(b, g, "transB", 1);
    mb_node(b, "Relu", "act", 1, relu_in, 1, relu_out);
}

/* Loads the packed model; returns the status and leaves the message in ctx. */
static kiln_status load_packed(kiln_ctx *ctx, mb *b, size_t cut, kiln_onnx_model **m) {
    size_t len;
    uint8_t *buf = mb_pack(b, &len);
    kiln_error_clear(ctx);
    kiln_status s = kiln_onnx_load_memory(ctx, buf, cut ? cut : len, "test-model", m);
    free(buf);
    return s;
}

#define EXPECT_LOAD_FAIL(ctx, b, cut, status, ...)                                                                     \
    do {                                                                                                               \
        kiln_onnx_model *m_ = (kiln_onnx_model *)1;                                                                    \
        kiln_status s_ = load_packed(ctx, b, cut, &m_);                                                                \
        CHECK(s_ == (status) && m_ == NULL, "load gave %s (want %s): %s", kiln_status_name(s_),                        \
              kiln_status_name(status), kiln_error_message(ctx));                                                      \
        const char *subs_[] = {__VA_ARGS__, NULL};                                                                     \
        for (int i_ = 0; subs_[i_]; i_++)                                                                              \
            CHECK(strstr(kiln_error_message(ctx), subs_[i_]), "message lacks '%s': %s", subs_[i_],                     \
                  kiln_error_message(ctx));                                                                            \
        kiln_onnx_free(m_);                                                                                            \
        kiln_error_clear(ctx);                                                                                         \
    } while (0)

static void test_mlp(kiln_ctx *ctx) {
    mb b;
    mlp_model(&b, 13);
    kiln_onnx_model *m = NULL;
    CHECK(load_packed(ctx, &b, 0, &m) == KILN_OK, "load: %s", kiln_error_message(ctx));
    if (!m) return;
    CHECK(kiln_onnx_num_inputs(m) == 1 && kiln_onnx_num_outputs(m) == 1, "1 input, 1 output");
    kiln_onnx_value_info info;
    CHECK(kiln_onnx_input_info(m, 0, &info) == KILN_OK && !strcmp(info.name, "x") && info.ndim == 2 &&
              info.shape[0] == -1 && info.dim_names[0] && !strcmp(info.dim_names[0], "N") && info.shape[1] == 4 &&
              info.dtype == KILN_F32,
          "input info");
    CHECK(kiln_onnx_input_info(m, 1, &info) == KILN_ERR_RANGE, "input 1 of 1 is out of range");
    kiln_error_clear(ctx);
    for (int batch = 1; batch <= 5; batch += 4) {
        int64_t before = kiln_ctx_num_tensors(ctx);
        float x[20];
        h_fill(x, batch * 4, -1, 1);
        kiln_scope_begin(ctx);
        kiln_tensor *xt = kiln_from_host(ctx, x, KILN_F32, 2, (int64_t[]){batch, 4}), *y = NULL;
        CHECK(kiln_onnx_run(m, 1, &xt, 1, &y) == KILN_OK, "run batch %d: %s", batch, kiln_error_message(ctx));
        if (y) {
            CHECK(kiln_tensor_shape(y)[0] == batch && kiln_tensor_shape(y)[1] == 3, "output shape");
            double ref[15];
            for (int n = 0; n < batch; n++)
                for (int o = 0; o < 3; o++) {
                    double acc = C[o];
                    for (int i = 0; i < 4; i++) acc += (double)x[n * 4 + i] * W[o * 4 + i];
                    ref[n * 3 + o] = acc > 0 ? acc : 0;
                }
            float *got = h_read(y);
            h_compare("mlp", got, ref, batch * 3, 1e-6, 1e-5);
            free(got);
        }
        /* the run leaves only its input and output behind */
        CHECK(kiln_ctx_num_tensors(ctx) == before + 2, "tensors: %lld before, %lld after", (long long)before,
              (long long)kiln_ctx_num_tensors(ctx));
        kiln_scope_end(ctx);
    }
    /* wrong shape and dtype name the input and both shapes */
    kiln_scope_begin(ctx);
    kiln_tensor *bad = kiln_zeros(ctx, 2, (int64_t[]){2, 5}), *y = NULL;
    CHECK(kiln_onnx_run(m, 1, &bad, 1, &y) == KILN_ERR_SHAPE && y == NULL, "wrong shape: %s", kiln_error_message(ctx));
    CHECK(strstr(kiln_error_message(ctx), "'x'") && strstr(kiln_error_message(ctx), "[2, 5]") &&
              strstr(kiln_error_message(ctx), "[N, 4]"),
          "message: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_tensor *bad3 = kiln_zeros(ctx, 3, (int64_t[]){2, 4, 1});
    CHECK(kiln_onnx_run(m, 1, &bad3, 1, &y) == KILN_ERR_SHAPE, "wrong rank: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    int32_t ints[8] = {0};
    kiln_tensor *bi = kiln_from_host(ctx, ints, KILN_I32, 2, (int64_t[]){2, 4});
    CHECK(kiln_onnx_run(m, 1, &bi, 1, &y) == KILN_ERR_DTYPE, "wrong dtype: %s", kiln_error_message(ctx));
    CHECK(strstr(kiln_error_message(ctx), "'x'") && strstr(kiln_error_message(ctx), "i32") &&
              strstr(kiln_error_message(ctx), "f32"),
          "message: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(kiln_onnx_run(m, 0, NULL, 1, &y) == KILN_ERR_INVALID_ARGUMENT, "missing input: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
    kiln_onnx_free(m);
}

static void test_rejections(kiln_ctx *ctx) {
    mb b;
    /* truncated file */
    mlp_model(&b, 13);
    size_t len;
    free(mb_pack(&b, &len));
    for (size_t cut = 1; cut < len; cut += len / 7 + 1) EXPECT_LOAD_FAIL(ctx, &b, cut, KILN_ERR_CORRUPT, "test-model");
    /* data shorter than the shape */
    mlp_model(&b, 13);
    b.inits[0].n_float_data = 5;
    EXPECT_LOAD_FAIL(ctx, &b, 0, KILN_ERR_CORRUPT, "'W'", "[3, 4]", "12 elements", "holds 5");
    /* raw data shorter than the shape */
    mlp_model(&b, 13);
    b.inits[0].n_float_data = 0;
    b.inits[0].has_raw_data = 1;
    b.inits[0].raw_data.len = 40;
    b.inits[0].raw_data.data = (uint8_t *)W;
    EXPECT_LOAD_FAIL(ctx, &b, 0, KILN_ERR_CORRUPT, "'W'", "raw_data holds 10");
    /* a 2^40 dimension, in an initializer and in an input */
    mlp_model(&b, 13);
    wdims[0] = (int64_t)1 << 40;
    EXPECT_LOAD_FAIL(ctx, &b, 0, KILN_ERR_CORRUPT, "'W'", "1099511627776");
    wdims[0] = 3;
    mlp_model(&b, 13);
    b.dims[0][1].dim_value = (int64_t)1 << 40;
    EXPECT_LOAD_FAIL(ctx, &b, 0, KILN_ERR_CORRUPT, "'x'", "1099511627776");
    /* an undefined node input */
    mlp_model(&b, 13);
    relu_in[0] = "nobody";
    EXPECT_LOAD_FAIL(ctx, &b, 0, KILN_ERR_CORRUPT, "'nobody'", "never produced", "'act'");
    relu_in[0] = "h";
    /* a cycle: fc reads y, which act makes from fc's h */
    mlp_model(&b, 13);
    gemm_in[0] = "y";
    EXPECT_LOAD_FAIL(ctx, &b, 0, KILN_ERR_CORRUPT, "cycle");
    gemm_in[0] = "x";
    /* a required input left empty */
    mlp_model(&b, 13);
    gemm_in[0] = "";
    EXPECT_LOAD_FAIL(ctx, &b, 0, KILN_ERR_CORRUPT, "input 0 is required", "'fc'");
    gemm_in[0] = "x";
    /* a value produced twice */
    mlp_model(&b, 13);
    relu_out[0] = "h";
    EXPECT_LOAD_FAIL(ctx, &b, 0, KILN_ERR_CORRUPT, "'h'");
    relu_out[0] = "y";
    /* an unsupported operator names itself, its node and the opset */
    mlp_model(&b, 13);
    b.nodes[1].op_type = "FancyActivation";
    EXPECT_LOAD_FAIL(ctx, &b, 0, KILN_ERR_UNSUPPORTED, "FancyActivation", "'act'", "opset 13");
    /* an unknown attribute */
    mlp_model(&b, 13);
    b.attrs[0].name = "transC";
    EXPECT_LOAD_FAIL(ctx, &b, 0, KILN_ERR_UNSUPPORTED, "transC", "Gemm", "'fc'");
    /* an opset past 17, an operator older than kiln's version of it */
    mlp_model(&b, 18);
    EXPECT_LOAD_FAIL(ctx, &b, 0, KILN_ERR_UNSUPPORTED, "opset 18");
    mlp_model(&b, 6);
    EXPECT_LOAD_FAIL(ctx, &b, 0, KILN_ERR_UNSUPPORTED, "Gemm", "from opset 7");
    /* an operator of another domain */
    mlp_model(&b, 13);
    b.nodes[1].domain = "com.example";
    EXPECT_LOAD_FAIL(ctx, &b, 0, KILN_ERR_UNSUPPORTED, "com.example", "'act'");
    /* a graph output nobody produces */
    mlp_model(&b, 13);
    b.outs[0].name = "z";
    EXPECT_LOAD_FAIL(ctx, &b, 0, KILN_ERR_CORRUPT, "'z'");
    /* external data: from memory refused; '..' and absolute paths refused */
    mlp_model(&b, 13);
    Onnx__StringStringEntryProto loc = ONNX__STRING_STRING_ENTRY_PROTO__INIT, *plocs[1] = {&loc};
    loc.key = "location";
    loc.value = "weights.bin";
    b.inits[0].n_float_data = 0;
    b.inits[0].has_data_location = 1;
    b.inits[0].data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
    b.inits[0].n_external_data = 1;
    b.inits[0].external_data = plocs;
    EXPECT_LOAD_FAIL(ctx, &b, 0, KILN_ERR_UNSUPPORTED, "external data", "'W'");
    char dir[] = "/tmp/kiln_onnx_XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp failed");
        return;
    }
    char model[128], data[128], sub[128];
    snprintf(model, sizeof model, "%s/m.onnx", dir);
    snprintf(data, sizeof data, "%s/weights.bin", dir);
    snprintf(sub, sizeof sub, "%s/sub", dir);
    FILE *f = fopen(data, "wb");
    fwrite(W, 4, 12, f);
    fclose(f);
    const char *bad_locs[] = {"../weights.bin", "/etc/passwd", "a/../../weights.bin", NULL};
    for (int i = 0; i <= 3; i++) {
        loc.value = (char *)(bad_locs[i] ? bad_locs[i] : "weights.bin");
        uint8_t *buf = mb_pack(&b, &len);
        f = fopen(model, "wb");
        fwrite(buf, 1, len, f);
        fclose(f);
        free(buf);
        kiln_onnx_model *m = NULL;
        kiln_error_clear(ctx);
        kiln_status s = kiln_onnx_load(ctx, model, &m);
        if (bad_locs[i]) {
            CHECK(s == KILN_ERR_CORRUPT && !m && strstr(kiln_error_message(ctx), "leaves the model's directory"),
                  "location %s: %s", bad_locs[i], kiln_error_message(ctx));
        } else {
            CHECK(s == KILN_OK && m, "external data inside the directory: %s", kiln_error_message(ctx));
            if (m) {
                kiln_scope_begin(ctx);
                float x[4] = {1, 2, 3, 4};
                kiln_tensor *xt = kiln_from_host(ctx, x, KILN_F32, 2, (int64_t[]){1, 4}), *y = NULL;
                CHECK(kiln_onnx_run(m, 1, &xt, 1, &y) == KILN_OK && y, "run: %s", kiln_error_message(ctx));
                kiln_scope_end(ctx);
            }
        }
        kiln_onnx_free(m);
    }
    /* a symbolic link inside the directory that points out of it */
    CHECK(mkdir(sub, 0700) == 0, "mkdir");
    char link[160];
    snprintf(link, sizeof link, "%s/sub/w.bin", dir);
    snprintf(model, sizeof model, "%s/sub/m.onnx", dir);
    CHECK(symlink(data, link) == 0, "symlink");
    loc.value = "w.bin";
    uint8_t *buf = mb_pack(&b, &len);
    f = fopen(model, "wb");
    fwrite(buf, 1, len, f);
    fclose(f);
    free(buf);
    kiln_onnx_model *m = NULL;
    kiln_error_clear(ctx);
    CHECK(kiln_onnx_load(ctx, model, &m) == KILN_ERR_CORRUPT && !m && strstr(kiln_error_message(ctx), "outside"),
          "symlink out of the directory: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    /* data shorter than the shape, in the external file */
    snprintf(model, sizeof model, "%s/m.onnx", dir);
    f = fopen(data, "wb");
    fwrite(W, 4, 11, f);
    fclose(f);
    loc.value = "weights.bin";
    buf = mb_pack(&b, &len);
    f = fopen(model, "wb");
    fwrite(buf, 1, len, f);
    fclose(f);
    free(buf);
    CHECK(kiln_onnx_load(ctx, model, &m) == KILN_ERR_CORRUPT && !m && strstr(kiln_error_message(ctx), "48 bytes"),
          "short external file: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    unlink(link), unlink(model), unlink(data);
    snprintf(model, sizeof model, "%s/sub/m.onnx", dir);
    unlink(model), rmdir(sub), rmdir(dir);
    /* a missing file */
    CHECK(kiln_onnx_load(ctx, "/nonexistent/model.onnx", &m) == KILN_ERR_IO &&
              strstr(kiln_error_message(ctx), "/nonexistent/model.onnx"),
          "missing file: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
}

/* Cast from float to int64 (truncation toward zero, as C and NumPy) and to bool: integer
 * values come back as I32. */
static void test_cast(kiln_ctx *ctx) {
    static char *cin[] = {"x"}, *cout_[] = {"y"}, *bin[] = {"x"}, *bout[] = {"b"};
    for (int to = 7; to <= 9; to += 2) {
        mb b;
        mb_init(&b, 13);
        mb_value(&b, true, "x", 1, (int64_t[]){4});
        mb_value(&b, false, to == 7 ? "y" : "b", 1, (int64_t[]){4});
        b.tts[1].elem_type = to;
        Onnx__NodeProto *n = mb_node(&b, "Cast", "cast", 1, to == 7 ? cin : bin, 1, to == 7 ? cout_ : bout);
        mb_attr_i(&b, n, "to", to);
        kiln_onnx_model *m = NULL;
        CHECK(load_packed(ctx, &b, 0, &m) == KILN_OK, "load: %s", kiln_error_message(ctx));
        if (!m) continue;
        kiln_onnx_value_info info;
        CHECK(kiln_onnx_output_info(m, 0, &info) == KILN_OK && info.dtype == KILN_I32, "output dtype");
        kiln_scope_begin(ctx);
        float x[4] = {-1.7f, 0.2f, 2.9f, 0.0f};
        kiln_tensor *xt = kiln_from_host(ctx, x, KILN_F32, 1, (int64_t[]){4}), *y = NULL;
        CHECK(kiln_onnx_run(m, 1, &xt, 1, &y) == KILN_OK && y, "cast run: %s", kiln_error_message(ctx));
        if (y) {
            int32_t got[4] = {0}, want_int[4] = {-1, 0, 2, 0}, want_bool[4] = {1, 1, 1, 0};
            CHECK(kiln_tensor_dtype(y) == KILN_I32 && kiln_to_host(y, got, sizeof got) == KILN_OK, "cast output");
            CHECK(!memcmp(got, to == 7 ? want_int : want_bool, sizeof got), "cast to %d: %d %d %d %d", to, got[0],
                  got[1], got[2], got[3]);
        }
        kiln_scope_end(ctx);
        kiln_onnx_free(m);
    }
}

/* Pad with mode reflect and edge on float data (ONNX's node tests pad integers). */
static void test_pad_modes(kiln_ctx *ctx) {
    static char *pin[] = {"x", "p"}, *pout[] = {"y"};
    static int64_t pads[4] = {0, 1, 0, 2}, pdims[1] = {4};
    const char *modes[2] = {"reflect", "edge"};
    const float want[2][12] = {{2, 1, 2, 3, 2, 1, 5, 4, 5, 6, 5, 4}, {1, 1, 2, 3, 3, 3, 4, 4, 5, 6, 6, 6}};
    for (int k = 0; k < 2; k++) {
        mb b;
        mb_init(&b, 13);
        mb_value(&b, true, "x", 2, (int64_t[]){2, 3});
        mb_value(&b, false, "y", 2, (int64_t[]){2, 6});
        Onnx__TensorProto *t = mb_init_f32(&b, "p", 1, pdims, 0, NULL);
        t->data_type = 7;
        t->n_int64_data = 4;
        t->int64_data = pads;
        Onnx__NodeProto *n = mb_node(&b, "Pad", "pad", 2, pin, 1, pout);
        mb_attr_i(&b, n, "mode", 0);
        b.attrs[b.nattrs - 1].type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING;
        b.attrs[b.nattrs - 1].has_i = 0;
        b.attrs[b.nattrs - 1].has_s = 1;
        b.attrs[b.nattrs - 1].s.data = (uint8_t *)modes[k];
        b.attrs[b.nattrs - 1].s.len = strlen(modes[k]);
        kiln_onnx_model *m = NULL;
        CHECK(load_packed(ctx, &b, 0, &m) == KILN_OK, "load: %s", kiln_error_message(ctx));
        if (!m) continue;
        kiln_scope_begin(ctx);
        float x[6] = {1, 2, 3, 4, 5, 6};
        kiln_tensor *xt = kiln_from_host(ctx, x, KILN_F32, 2, (int64_t[]){2, 3}), *y = NULL;
        CHECK(kiln_onnx_run(m, 1, &xt, 1, &y) == KILN_OK && y, "pad %s: %s", modes[k], kiln_error_message(ctx));
        if (y) {
            float got[12] = {0};
            CHECK(kiln_tensor_numel(y) == 12 && kiln_to_host(y, got, sizeof got) == KILN_OK, "pad output");
            CHECK(!memcmp(got, want[k], sizeof got), "pad %s: %g %g %g %g %g %g", modes[k], got[0], got[1], got[2],
                  got[3], got[4], got[5]);
        }
        kiln_scope_end(ctx);
        kiln_onnx_free(m);
    }
}

/* Trilu on floats (ONNX's node tests use integers) and Tile on integers (they use floats). */
static void test_trilu_tile(kiln_ctx *ctx) {
    static char *tin[] = {"x"}, *tout[] = {"y"}, *pin[] = {"x", "r"};
    static int64_t reps[2] = {2, 1}, rdims[1] = {2};
    for (int k = 0; k < 2; k++) {
        mb b;
        mb_init(&b, 14);
        mb_value(&b, true, "x", 2, (int64_t[]){2, 3});
        mb_value(&b, false, "y", 2, (int64_t[]){k ? 4 : 2, 3});
        if (k) {
            b.tts[0].elem_type = b.tts[1].elem_type = 7;
            Onnx__TensorProto *t = mb_init_f32(&b, "r", 1, rdims, 0, NULL);
            t->data_type = 7, t->n_int64_data = 2, t->int64_data = reps;
            mb_node(&b, "Tile", "tile", 2, pin, 1, tout);
        } else {
            mb_node(&b, "Trilu", "triu", 1, tin, 1, tout);
        }
        kiln_onnx_model *m = NULL;
        CHECK(load_packed(ctx, &b, 0, &m) == KILN_OK, "load: %s", kiln_error_message(ctx));
        if (!m) continue;
        kiln_scope_begin(ctx);
        float xf[6] = {1, 2, 3, 4, 5, 6};
        int32_t xi[6] = {1, 2, 3, 4, 5, 6};
        kiln_tensor *xt = k ? kiln_from_host(ctx, xi, KILN_I32, 2, (int64_t[]){2, 3})
                            : kiln_from_host(ctx, xf, KILN_F32, 2, (int64_t[]){2, 3}),
                    *y = NULL;
        CHECK(kiln_onnx_run(m, 1, &xt, 1, &y) == KILN_OK && y, "%s: %s", k ? "Tile" : "Trilu", kiln_error_message(ctx));
        if (y && !k) {
            float got[6], want[6] = {1, 2, 3, 0, 5, 6};
            CHECK(kiln_to_host(y, got, sizeof got) == KILN_OK && !memcmp(got, want, sizeof got),
                  "Trilu: %g %g %g %g %g %g", got[0], got[1], got[2], got[3], got[4], got[5]);
        }
        if (y && k) {
            int32_t got[12], want[12] = {1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6};
            CHECK(kiln_tensor_dtype(y) == KILN_I32 && kiln_to_host(y, got, sizeof got) == KILN_OK &&
                      !memcmp(got, want, sizeof got),
                  "Tile on integers");
        }
        kiln_scope_end(ctx);
        kiln_onnx_free(m);
    }
}

/* ---- BatchNormalization folded into the Conv before it ------------------------------ */

static float bw[54], bb[3], bscale[3], bbias[3], bmean[3], bvar[3];
static int64_t bwdims[4] = {3, 2, 3, 3}, bcdims[1] = {3};
static char *bconv_in[] = {"x", "w", "b"}, *bconv_out[] = {"h"}, *bbn_in[] = {"h", "scale", "bias", "mean", "var"},
            *bbn_out[] = {"y"}, *brelu_in[] = {"h"}, *brelu_out[] = {"r"};
#define BN_EPS 1e-3f

/* x [N, 2, 5, 5] -> Conv (3x3, no padding) -> h -> BatchNormalization -> y; with
 * second_reader, h is also read by a Relu whose output r is a second graph output. */
static void conv_bn_model(mb *b, bool second_reader) {
    mb_init(b, 15);
    for (int i = 0; i < 54; i++) bw[i] = 0.5f * sinf(0.7f * (float)i + 0.3f);
    for (int c = 0; c < 3; c++) {
        bb[c] = 0.1f * (float)c - 0.05f;
        bscale[c] = 0.5f + 0.6f * (float)c;
        bbias[c] = 0.2f - 0.15f * (float)c;
        bmean[c] = 0.3f * (float)c - 0.2f;
        bvar[c] = 0.1f + 0.8f * (float)c;
    }
    mb_value(b, true, "x", 4, (int64_t[]){-1, 2, 5, 5});
    mb_value(b, false, "y", 4, (int64_t[]){-1, 3, 3, 3});
    if (second_reader) mb_value(b, false, "r", 4, (int64_t[]){-1, 3, 3, 3});
    mb_init_f32(b, "w", 4, bwdims, 54, bw);
    mb_init_f32(b, "b", 1, bcdims, 3, bb);
    mb_init_f32(b, "scale", 1, bcdims, 3, bscale);
    mb_init_f32(b, "bias", 1, bcdims, 3, bbias);
    mb_init_f32(b, "mean", 1, bcdims, 3, bmean);
    mb_init_f32(b, "var", 1, bcdims, 3, bvar);
    mb_node(b, "Conv", "conv", 3, bconv_in, 1, bconv_out);
    Onnx__NodeProto *bn = mb_node(b, "BatchNormalization", "bn", 5, bbn_in, 1, bbn_out);
    Onnx__AttributeProto *a = &b->attrs[b->nattrs];
    onnx__attribute_proto__init(a);
    a->name = "epsilon";
    a->has_type = 1;
    a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT;
    a->has_f = 1;
    a->f = BN_EPS;
    b->pattrs[b->nattrs][0] = a;
    bn->n_attribute = 1;
    bn->attribute = b->pattrs[b->nattrs++];
    if (second_reader) mb_node(b, "Relu", "act", 1, brelu_in, 1, brelu_out);
}

/* The operators KILN_ONNX_PROFILE's log names (its rows: "<model>:   <op> ..."). */
static char prof_seen[256];
static void prof_log_fn(int level, const char *msg, void *user) {
    (void)level, (void)user;
    const char *p = strstr(msg, ":   ");
    if (p && strlen(prof_seen) + 40 < sizeof prof_seen) {
        char op[32] = "";
        sscanf(p + 4, "%31s", op);
        strcat(prof_seen, op), strcat(prof_seen, " ");
    }
}

/* Runs the model on x [batch, 2, 5, 5] into y (and r), with KILN_ONNX_PROFILE set (its
 * operator rows land in prof_seen); returns the kernels it launched. */
static uint64_t conv_bn_run(kiln_ctx *ctx, bool fold, bool second_reader, const float *x, int batch, float *y,
                            float *r) {
    mb b;
    conv_bn_model(&b, second_reader);
    prof_seen[0] = 0;
    if (!fold) setenv("KILN_ONNX_NO_FOLD", "1", 1);
    kiln_onnx_model *m = NULL;
    kiln_status s = load_packed(ctx, &b, 0, &m);
    unsetenv("KILN_ONNX_NO_FOLD");
    CHECK(s == KILN_OK, "conv+bn load: %s", kiln_error_message(ctx));
    if (!m) return 0;
    kiln_scope_begin(ctx);
    kiln_tensor *xt = kiln_from_host(ctx, x, KILN_F32, 4, (int64_t[]){batch, 2, 5, 5}), *out[2] = {NULL, NULL};
    kiln_ctx_stats st = {0};
    kiln_ctx_stats_reset(ctx);
    setenv("KILN_ONNX_PROFILE", "1", 1);
    kiln_set_log(prof_log_fn, NULL);
    CHECK(kiln_onnx_run(m, 1, &xt, second_reader ? 2 : 1, out) == KILN_OK, "conv+bn run: %s", kiln_error_message(ctx));
    kiln_set_log(NULL, NULL);
    unsetenv("KILN_ONNX_PROFILE");
    kiln_ctx_stats_get(ctx, &st);
    size_t bytes = (size_t)batch * 27 * sizeof(float);
    if (out[0]) CHECK(kiln_to_host(out[0], y, bytes) == KILN_OK, "read y");
    if (out[1]) CHECK(kiln_to_host(out[1], r, bytes) == KILN_OK, "read r");
    kiln_scope_end(ctx);
    kiln_onnx_free(m);
    return st.launches;
}

static void test_bn_fold(kiln_ctx *ctx) {
    enum { B = 2 };
    float x[B * 50];
    h_fill(x, B * 50, -1, 1);
    mb b0;
    conv_bn_model(&b0, false); /* fills the weights */
    /* host reference in double; a float32 sum of k terms is within k*u*sum|terms| of the
     * exact one (u = 2^-24), so each output gets the bound (k + 4)*u*(sum|x w a| + |B a| +
     * |mean a| + |bias|) with k = 18 products and 4 more roundings (a, the bias, the BN);
     * atol is the largest of them */
    double yref[B * 27], rref[B * 27], bound = 0;
    for (int n = 0; n < B; n++)
        for (int o = 0; o < 3; o++) {
            double a = bscale[o] / sqrt((double)bvar[o] + (double)BN_EPS);
            for (int i = 0; i < 3; i++)
                for (int j = 0; j < 3; j++) {
                    double h = bb[o], mag = 0;
                    for (int c = 0; c < 2; c++)
                        for (int ki = 0; ki < 3; ki++)
                            for (int kj = 0; kj < 3; kj++) {
                                double t = (double)x[((n * 2 + c) * 5 + i + ki) * 5 + j + kj] *
                                           bw[((o * 2 + c) * 3 + ki) * 3 + kj];
                                h += t, mag += fabs(t);
                            }
                    int k = (n * 3 + o) * 9 + i * 3 + j;
                    yref[k] = (h - bmean[o]) * a + bbias[o];
                    rref[k] = h > 0 ? h : 0;
                    double e =
                        22 * 0x1p-24 * ((mag + fabs((double)bb[o])) * fabs(a) + fabs(bmean[o] * a) + fabs(bbias[o]));
                    if (e > bound) bound = e;
                }
        }
    float yf[B * 27], yu[B * 27], rf[B * 27], ru[B * 27];
    uint64_t lf = conv_bn_run(ctx, true, false, x, B, yf, NULL);
    uint64_t lu = conv_bn_run(ctx, false, false, x, B, yu, NULL);
    h_compare("conv+bn folded", yf, yref, B * 27, bound, 0);
    h_compare("conv+bn unfolded", yu, yref, B * 27, bound, 0);
    CHECK(lf > 0 && lf < lu, "the folded model launches fewer kernels (%llu) than the unfolded one (%llu)",
          (unsigned long long)lf, (unsigned long long)lu);
    /* the profile of the last (unfolded) run names both operators */
    CHECK(strstr(prof_seen, "Conv ") && strstr(prof_seen, "BatchNormalization "), "profile rows: %s", prof_seen);
    conv_bn_run(ctx, true, false, x, B, yf, NULL);
    CHECK(strstr(prof_seen, "Conv ") && !strstr(prof_seen, "BatchNormalization"), "folded profile rows: %s", prof_seen);
    /* h read by the Relu too: the BN stays a node and both outputs are right */
    lf = conv_bn_run(ctx, true, true, x, B, yf, rf);
    lu = conv_bn_run(ctx, false, true, x, B, yu, ru);
    h_compare("conv+bn, second reader: y", yf, yref, B * 27, bound, 0);
    h_compare("conv+bn, second reader: r", rf, rref, B * 27, bound, 0);
    CHECK(lf == lu, "a Conv output with a second reader is not folded (%llu launches, %llu unfolded)",
          (unsigned long long)lf, (unsigned long long)lu);
    kiln_error_clear(ctx);
}

/* x [N, 4] -> a dense layer of 3 outputs -> h -> BatchNormalization -> y, the dense layer
 * being (kind 0) Gemm with transB = 1 and beta = 2, (1) MatMul, (2) MatMul then Add of a
 * bias; bscale, bbias, bmean and bvar (3 channels) of the conv test serve as the BN's. */
static float dwo[12], dwi[12], dc[3];
static int64_t dwt_dims[2] = {3, 4}, dw_dims[2] = {4, 3};
static char *dgemm_in[] = {"x", "w", "c"}, *dmm_in[] = {"x", "w"}, *dmm_out[] = {"m"}, *dadd_in[] = {"c", "m"};

static void dense_bn_model(mb *b, int kind) {
    conv_bn_model(b, false); /* fills the BN's statistics */
    mb_init(b, 15);
    for (int o = 0; o < 3; o++) {
        dc[o] = 0.3f - 0.2f * (float)o;
        for (int i = 0; i < 4; i++)
            dwo[o * 4 + i] = 0.6f * cosf(1.3f * (float)(o * 4 + i)), dwi[i * 3 + o] = dwo[o * 4 + i];
    }
    mb_value(b, true, "x", 2, (int64_t[]){-1, 4});
    mb_value(b, false, "y", 2, (int64_t[]){-1, 3});
    mb_init_f32(b, "w", 2, kind == 0 ? dwt_dims : dw_dims, 12, kind == 0 ? dwo : dwi);
    if (kind != 1) mb_init_f32(b, "c", 1, bcdims, 3, dc);
    mb_init_f32(b, "scale", 1, bcdims, 3, bscale);
    mb_init_f32(b, "bias", 1, bcdims, 3, bbias);
    mb_init_f32(b, "mean", 1, bcdims, 3, bmean);
    mb_init_f32(b, "var", 1, bcdims, 3, bvar);
    if (kind == 0) {
        Onnx__NodeProto *g = mb_node(b, "Gemm", "fc", 3, dgemm_in, 1, bconv_out);
        mb_attr_i(b, g, "transB", 1);
        Onnx__AttributeProto *a = &b->attrs[b->nattrs++];
        onnx__attribute_proto__init(a);
        a->name = "beta";
        a->has_type = 1;
        a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT;
        a->has_f = 1;
        a->f = 2.0f;
        g->attribute[1] = a; /* pattrs[..][1], beside transB */
        g->n_attribute = 2;
    } else if (kind == 1) {
        mb_node(b, "MatMul", "fc", 2, dmm_in, 1, bconv_out);
    } else {
        mb_node(b, "MatMul", "fc", 2, dmm_in, 1, dmm_out);
        mb_node(b, "Add", "fc_bias", 2, dadd_in, 1, bconv_out);
    }
    Onnx__NodeProto *bn = mb_node(b, "BatchNormalization", "bn", 5, bbn_in, 1, bbn_out);
    Onnx__AttributeProto *a = &b->attrs[b->nattrs];
    onnx__attribute_proto__init(a);
    a->name = "epsilon";
    a->has_type = 1;
    a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT;
    a->has_f = 1;
    a->f = BN_EPS;
    b->pattrs[b->nattrs][0] = a;
    bn->n_attribute = 1;
    bn->attribute = b->pattrs[b->nattrs++];
}

/* Runs dense_bn_model(kind) on x [B, 4], folded or not, profiled (rows in prof_seen). */
static void dense_bn_run(kiln_ctx *ctx, int kind, bool fold, const float *x, int batch, float *y) {
    mb b;
    dense_bn_model(&b, kind);
    prof_seen[0] = 0;
    if (!fold) setenv("KILN_ONNX_NO_FOLD", "1", 1);
    kiln_onnx_model *m = NULL;
    kiln_status s = load_packed(ctx, &b, 0, &m);
    unsetenv("KILN_ONNX_NO_FOLD");
    CHECK(s == KILN_OK, "dense+bn %d load: %s", kind, kiln_error_message(ctx));
    if (!m) return;
    kiln_scope_begin(ctx);
    kiln_tensor *xt = kiln_from_host(ctx, x, KILN_F32, 2, (int64_t[]){batch, 4}), *out = NULL;
    setenv("KILN_ONNX_PROFILE", "1", 1);
    kiln_set_log(prof_log_fn, NULL);
    CHECK(kiln_onnx_run(m, 1, &xt, 1, &out) == KILN_OK, "dense+bn %d run: %s", kind, kiln_error_message(ctx));
    kiln_set_log(NULL, NULL);
    unsetenv("KILN_ONNX_PROFILE");
    if (out) CHECK(kiln_to_host(out, y, (size_t)batch * 3 * sizeof(float)) == KILN_OK, "read y");
    kiln_scope_end(ctx);
    kiln_onnx_free(m);
}

/* BatchNormalization after Gemm, MatMul and MatMul + Add is folded into the weights at
 * load: folded and unfolded agree with a host computation in double, and the folded
 * profile has no BatchNormalization (nor Add) left. */
static void test_dense_bn_fold(kiln_ctx *ctx) {
    enum { B = 5 };
    float x[B * 4];
    h_fill(x, B * 4, -1, 1);
    static const char *kinds[] = {"Gemm", "MatMul", "MatMul+Add"};
    for (int kind = 0; kind < 3; kind++) {
        mb b0;
        dense_bn_model(&b0, kind); /* fills the weights */
        double ref[B * 3], bound = 0;
        for (int n = 0; n < B; n++)
            for (int o = 0; o < 3; o++) {
                double a = bscale[o] / sqrt((double)bvar[o] + (double)BN_EPS), h = 0, mag = 0;
                for (int i = 0; i < 4; i++) {
                    double t = (double)x[n * 4 + i] * dwo[o * 4 + i];
                    h += t, mag += fabs(t);
                }
                double c = kind == 0 ? 2.0 * dc[o] : kind == 2 ? dc[o] : 0.0;
                h += c, mag += fabs(c);
                ref[n * 3 + o] = (h - bmean[o]) * a + bbias[o];
                /* float32 sums of 4 products and 4 more roundings, as in test_bn_fold */
                double e = 12 * 0x1p-24 * (mag * fabs(a) + fabs(bmean[o] * a) + fabs(bbias[o]));
                if (e > bound) bound = e;
            }
        float yf[B * 3], yu[B * 3];
        dense_bn_run(ctx, kind, false, x, B, yu);
        CHECK(strstr(prof_seen, "BatchNormalization "), "%s unfolded profile rows: %s", kinds[kind], prof_seen);
        dense_bn_run(ctx, kind, true, x, B, yf);
        CHECK(strstr(prof_seen, "Gemm ") && !strstr(prof_seen, "BatchNormalization") && !strstr(prof_seen, "Add") &&
                  !strstr(prof_seen, "MatMul"),
              "%s folded profile rows: %s", kinds[kind], prof_seen);
        char what[64];
        snprintf(what, sizeof what, "%s+bn folded", kinds[kind]);
        h_compare(what, yf, ref, B * 3, bound, 0);
        snprintf(what, sizeof what, "%s+bn unfolded", kinds[kind]);
        h_compare(what, yu, ref, B * 3, bound, 0);
    }
    kiln_error_clear(ctx);
}

static Onnx__TensorProto *mb_init_i64(mb *b, const char *name, int64_t *dim, int64_t *vals) {
    Onnx__TensorProto *t = &b->inits[b->g.n_initializer];
    onnx__tensor_proto__init(t);
    t->name = (char *)name;
    t->has_data_type = 1;
    t->data_type = 7;
    t->n_dims = 1;
    t->dims = dim;
    t->n_int64_data = (size_t)*dim;
    t->int64_data = vals;
    b->pinits[b->g.n_initializer++] = t;
    return t;
}

/* "[batch, 3]" of an input or output query. */
static void info_str(const kiln_onnx_value_info *v, char *buf, size_t cap) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < v->ndim && k < cap; d++)
        k += v->shape[d] >= 0
                 ? (size_t)snprintf(buf + k, cap - k, "%s%lld", d ? ", " : "", (long long)v->shape[d])
                 : (size_t)snprintf(buf + k, cap - k, "%s%s", d ? ", " : "", v->dim_names[d] ? v->dim_names[d] : "?");
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

static int64_t s_one = 1, s_zero_v[1] = {0}, s_one_v[1] = {1}, s_m1_v[1] = {-1};
static char *sh_shape_in[] = {"z"}, *sh_shape_out[] = {"s"}, *sh_slice_in[] = {"s", "zero", "one"},
            *sh_slice_out[] = {"s0"}, *sh_cat_in[] = {"s0", "m1"}, *sh_cat_out[] = {"shp"}, *sh_rs_in[] = {"x", "shp"},
            *sh_rs_out[] = {"y"};

/* Shape inference at load: outputs the file leaves undeclared get their type and shape,
 * a declared shape that contradicts the graph is refused naming the node, the value and
 * both shapes, and a run whose inputs break what a symbol promised is an error. */
static void test_shape_inference(kiln_ctx *ctx) {
    mb b;
    kiln_onnx_model *m = NULL;
    kiln_onnx_value_info info;
    char got[160];
    /* the MLP with its output's type left out: f32 [N, 3] */
    mlp_model(&b, 13);
    b.outs[0].type = NULL;
    CHECK(load_packed(ctx, &b, 0, &m) == KILN_OK, "undeclared output: %s", kiln_error_message(ctx));
    if (m) {
        CHECK(kiln_onnx_output_info(m, 0, &info) == KILN_OK, "output info");
        info_str(&info, got, sizeof got);
        CHECK(info.dtype == KILN_F32 && !strcmp(got, "[N, 3]"), "inferred output: %s %s", kiln_dtype_name(info.dtype),
              got);
        kiln_onnx_free(m), m = NULL;
    }
    /* a declared output shape the graph cannot make */
    mlp_model(&b, 13);
    b.dims[1][1].dim_value = 4;
    EXPECT_LOAD_FAIL(ctx, &b, 0, KILN_ERR_SHAPE, "Relu node 'act'", "'y'", "float [N, 3]", "declares it float [N, 4]");
    /* the same through value_info, for a value inside the graph */
    mlp_model(&b, 13);
    mb_value(&b, false, "h", 3, (int64_t[]){-1, 3, 1});
    b.g.n_output = 1;
    b.g.n_value_info = 1;
    b.g.value_info = &b.pouts[1];
    EXPECT_LOAD_FAIL(ctx, &b, 0, KILN_ERR_SHAPE, "Gemm node 'fc'", "'h'", "[N, 3]", "[N, 3, 1]");
    /* an input whose declared size the operator cannot take */
    mlp_model(&b, 13);
    b.dims[0][1].dim_value = 5;
    EXPECT_LOAD_FAIL(ctx, &b, 0, KILN_ERR_SHAPE, "Gemm node 'fc'", "inner dims 5 and 4");
    /* y = Reshape(x [N, 4], [Shape(z)[0:1], -1]): the symbol N cancels, y is [N, 4] */
    mb_init(&b, 13);
    mb_value(&b, true, "x", 2, (int64_t[]){-1, 4});
    mb_value(&b, true, "z", 2, (int64_t[]){-1, 2});
    mb_value(&b, false, "y", 2, (int64_t[]){-1, -1});
    b.outs[0].type = NULL;
    mb_init_i64(&b, "zero", &s_one, s_zero_v);
    mb_init_i64(&b, "one", &s_one, s_one_v);
    mb_init_i64(&b, "m1", &s_one, s_m1_v);
    mb_node(&b, "Shape", "shape", 1, sh_shape_in, 1, sh_shape_out);
    mb_node(&b, "Slice", "slice", 3, sh_slice_in, 1, sh_slice_out);
    mb_attr_i(&b, mb_node(&b, "Concat", "cat", 2, sh_cat_in, 1, sh_cat_out), "axis", 0);
    mb_node(&b, "Reshape", "rs", 2, sh_rs_in, 1, sh_rs_out);
    CHECK(load_packed(ctx, &b, 0, &m) == KILN_OK, "shape chain: %s", kiln_error_message(ctx));
    if (m) {
        CHECK(kiln_onnx_output_info(m, 0, &info) == KILN_OK, "output info");
        info_str(&info, got, sizeof got);
        CHECK(!strcmp(got, "[N, 4]"), "Reshape through Shape/Slice/Concat: %s", got);
        kiln_scope_begin(ctx);
        kiln_tensor *in[2] = {kiln_zeros(ctx, 2, (int64_t[]){2, 4}), kiln_zeros(ctx, 2, (int64_t[]){2, 2})}, *y = NULL;
        CHECK(kiln_onnx_run(m, 2, in, 1, &y) == KILN_OK && y && kiln_tensor_shape(y)[0] == 2, "run: %s",
              kiln_error_message(ctx));
        /* x and z disagree about N: the Reshape makes [4, 2], not the [N, 4] inferred */
        in[1] = kiln_zeros(ctx, 2, (int64_t[]){4, 2});
        CHECK(kiln_onnx_run(m, 2, in, 1, &y) == KILN_ERR_SHAPE, "symbols broken: %s", kiln_error_message(ctx));
        CHECK(strstr(kiln_error_message(ctx), "Reshape node 'rs'") && strstr(kiln_error_message(ctx), "[4, 2]") &&
                  strstr(kiln_error_message(ctx), "[N, 4]"),
              "message: %s", kiln_error_message(ctx));
        kiln_error_clear(ctx);
        kiln_scope_end(ctx);
        kiln_onnx_free(m), m = NULL;
    }
    /* torch's exports with every output's type removed: the query gives torch's output
     * shape, the batch dim the symbolic "batch" */
    static const struct {
        const char *name;
        int batch_dim;
    } golden[] = {{"cnn", 0}, {"mlp", 0}, {"resnet", 0}, {"rnn", 1}, {"upsample", 0}};
    const char *dir = getenv("KILN_GOLDEN_DIR");
    for (size_t gi = 0; gi < sizeof golden / sizeof *golden; gi++) {
        char path[1024], out_path[1024];
        snprintf(path, sizeof path, "%s/onnx_%s.onnx", dir ? dir : "tests/golden", golden[gi].name);
        snprintf(out_path, sizeof out_path, "%s/onnx_%s_out.pb", dir ? dir : "tests/golden", golden[gi].name);
        FILE *f = fopen(path, "rb");
        CHECK(f != NULL, "open %s", path);
        if (!f) continue;
        fseek(f, 0, SEEK_END);
        long len = ftell(f);
        fseek(f, 0, SEEK_SET);
        uint8_t *buf = malloc((size_t)len);
        CHECK(fread(buf, 1, (size_t)len, f) == (size_t)len, "read %s", path);
        fclose(f);
        Onnx__ModelProto *mp = onnx__model_proto__unpack(NULL, (size_t)len, buf);
        free(buf);
        CHECK(mp && mp->graph, "unpack %s", path);
        if (!mp) continue;
        /* types and value_info taken out for packing, put back for freeing */
        Onnx__TypeProto *types[8] = {NULL};
        size_t nvi = mp->graph->n_value_info;
        for (size_t o = 0; o < mp->graph->n_output && o < 8; o++)
            types[o] = mp->graph->output[o]->type, mp->graph->output[o]->type = NULL;
        mp->graph->n_value_info = 0;
        size_t plen = onnx__model_proto__get_packed_size(mp);
        uint8_t *packed = malloc(plen);
        onnx__model_proto__pack(mp, packed);
        for (size_t o = 0; o < mp->graph->n_output && o < 8; o++) mp->graph->output[o]->type = types[o];
        mp->graph->n_value_info = nvi;
        onnx__model_proto__free_unpacked(mp, NULL);
        CHECK(kiln_onnx_load_memory(ctx, packed, plen, golden[gi].name, &m) == KILN_OK, "%s undeclared: %s",
              golden[gi].name, kiln_error_message(ctx));
        free(packed);
        kiln_scope_begin(ctx);
        kiln_tensor *want = NULL;
        CHECK(kiln_onnx_load_tensor(ctx, out_path, &want) == KILN_OK, "%s", kiln_error_message(ctx));
        if (m && want && kiln_onnx_output_info(m, 0, &info) == KILN_OK) {
            bool ok = info.dtype == KILN_F32 && info.ndim == kiln_tensor_ndim(want);
            for (int d = 0; ok && d < info.ndim; d++)
                ok = d == golden[gi].batch_dim
                         ? info.shape[d] == -1 && info.dim_names[d] && !strcmp(info.dim_names[d], "batch")
                         : info.shape[d] == kiln_tensor_shape(want)[d];
            char ws[160];
            info_str(&info, got, sizeof got);
            kiln_tensor_shape_str(want, ws, sizeof ws);
            CHECK(ok, "%s: inferred output %s, torch's output %s (batch dim %d)", golden[gi].name, got, ws,
                  golden[gi].batch_dim);
        }
        kiln_scope_end(ctx);
        kiln_onnx_free(m), m = NULL;
    }
    kiln_error_clear(ctx);
}

static int64_t nl_tdim[1] = {2}, nl_t[2] = {0, 5};
static char *nl_in[] = {"x", "t"}, *nl_out[] = {"y"}, *fl_in[] = {"t"}, *fl_out[] = {"y"};

/* One node `op` on float x [2, 3] (with ni > 0: x, the int64 constant "i" of ni values and,
 * for a third input, x again; else x for every input) with one int or string attribute; run on zeros, it must fail with
 * `want` and a message holding `sub`. */
static int64_t oe_idim[1];
static int64_t oe_ivals[4];
static char *oe_in2[] = {"x", "i"}, *oe_in3[] = {"x", "i", "x"}, *oe_xs[] = {"x", "x", "x"}, *oe_out2[] = {"y", "yi"};
static void op_error(kiln_ctx *ctx, const char *op, int nin, int nout, const char *aname, int64_t aint,
                     const char *astr, int ni, const int64_t *ivals, kiln_status want, const char *sub) {
    mb b;
    mb_init(&b, 13);
    mb_value(&b, true, "x", 2, (int64_t[]){2, 3});
    mb_value(&b, false, "y", 0, NULL);
    b.outs[0].type = NULL;
    if (ni) {
        oe_idim[0] = ni;
        memcpy(oe_ivals, ivals, sizeof(int64_t) * (size_t)ni);
        mb_init_i64(&b, "i", oe_idim, oe_ivals);
    }
    Onnx__NodeProto *nd = mb_node(&b, op, "op", nin, !ni ? oe_xs : nin == 3 ? oe_in3 : oe_in2, nout, oe_out2);
    if (aname) {
        Onnx__AttributeProto *a = &b.attrs[b.nattrs];
        onnx__attribute_proto__init(a);
        a->name = (char *)aname;
        a->has_type = 1;
        if (astr) {
            a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING;
            a->has_s = 1, a->s.data = (uint8_t *)astr, a->s.len = strlen(astr);
        } else {
            a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT;
            a->has_i = 1, a->i = aint;
        }
        b.pattrs[b.nattrs][0] = a;
        nd->n_attribute = 1;
        nd->attribute = b.pattrs[b.nattrs++];
    }
    kiln_onnx_model *m = NULL;
    kiln_status s = load_packed(ctx, &b, 0, &m);
    if (s == KILN_OK) {
        kiln_scope_begin(ctx);
        kiln_tensor *x = kiln_zeros(ctx, 2, (int64_t[]){2, 3}), *y[2] = {NULL, NULL};
        s = kiln_onnx_run(m, 1, &x, 1, y);
        kiln_scope_end(ctx);
        kiln_onnx_free(m);
    }
    CHECK(s == want && strstr(kiln_error_message(ctx), sub) && strstr(kiln_error_message(ctx), "node 'op'"),
          "%s: %s (want %s, '%s'): %s", op, kiln_status_name(s), kiln_status_name(want), sub, kiln_error_message(ctx));
    kiln_error_clear(ctx);
}

/* The errors of the operators added on the host and by composition (their values are
 * checked by ONNX's node tests): a target out of range, an unknown reduction, a blocksize
 * that does not divide, an integer input to float math. */
static void test_added_op_errors(kiln_ctx *ctx) {
    mb b;
    kiln_onnx_model *m = NULL;
    for (int bad_reduction = 0; bad_reduction < 2; bad_reduction++) {
        mb_init(&b, 13);
        mb_value(&b, true, "x", 2, (int64_t[]){2, 3});
        mb_value(&b, false, "y", 0, NULL);
        Onnx__TensorProto *t = mb_init_i64(&b, "t", nl_tdim, nl_t);
        (void)t;
        Onnx__NodeProto *nd = mb_node(&b, "NegativeLogLikelihoodLoss", "nll", 2, nl_in, 1, nl_out);
        if (bad_reduction) {
            Onnx__AttributeProto *a = &b.attrs[b.nattrs];
            onnx__attribute_proto__init(a);
            a->name = "reduction";
            a->has_type = 1;
            a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING;
            a->has_s = 1;
            a->s.data = (uint8_t *)"average";
            a->s.len = 7;
            b.pattrs[b.nattrs][0] = a;
            nd->n_attribute = 1;
            nd->attribute = b.pattrs[b.nattrs++];
        }
        CHECK(load_packed(ctx, &b, 0, &m) == KILN_OK, "nll load: %s", kiln_error_message(ctx));
        if (!m) continue;
        kiln_scope_begin(ctx);
        kiln_tensor *x = kiln_zeros(ctx, 2, (int64_t[]){2, 3}), *y = NULL;
        kiln_status s = kiln_onnx_run(m, 1, &x, 1, &y);
        if (bad_reduction)
            CHECK(s == KILN_ERR_INVALID_ARGUMENT && strstr(kiln_error_message(ctx), "reduction 'average'"),
                  "bad reduction: %s", kiln_error_message(ctx));
        else
            CHECK(s == KILN_ERR_RANGE && strstr(kiln_error_message(ctx), "target 5 at 1 is outside [0, 3)") &&
                      strstr(kiln_error_message(ctx), "'nll'"),
                  "target out of range: %s", kiln_error_message(ctx));
        kiln_error_clear(ctx);
        kiln_scope_end(ctx);
        kiln_onnx_free(m), m = NULL;
    }
    /* DepthToSpace: 3 channels do not make 2x2 blocks */
    mb_init(&b, 13);
    mb_value(&b, true, "x", 4, (int64_t[]){1, 3, 2, 2});
    mb_value(&b, false, "y", 4, (int64_t[]){1, -1, 4, 4});
    mb_attr_i(&b, mb_node(&b, "DepthToSpace", "d2s", 1, (char *[]){"x"}, 1, fl_out), "blocksize", 2);
    CHECK(load_packed(ctx, &b, 0, &m) == KILN_OK, "d2s load: %s", kiln_error_message(ctx));
    if (m) {
        kiln_scope_begin(ctx);
        kiln_tensor *x = kiln_zeros(ctx, 4, (int64_t[]){1, 3, 2, 2}), *y = NULL;
        CHECK(kiln_onnx_run(m, 1, &x, 1, &y) == KILN_ERR_SHAPE && strstr(kiln_error_message(ctx), "blocksize 2"),
              "blocksize: %s", kiln_error_message(ctx));
        kiln_error_clear(ctx);
        kiln_scope_end(ctx);
        kiln_onnx_free(m), m = NULL;
    }
    /* the host indexing and arithmetic operators */
    op_error(ctx, "TopK", 2, 2, NULL, 0, NULL, 1, (int64_t[]){4}, KILN_ERR_INVALID_ARGUMENT, "K must be one value");
    op_error(ctx, "GatherND", 2, 1, NULL, 0, NULL, 2, (int64_t[]){0, 7}, KILN_ERR_RANGE, "index 7 out of range");
    op_error(ctx, "ScatterElements", 3, 1, "reduction", 0, "max", 0, NULL, KILN_ERR_INVALID_ARGUMENT,
             "reduction is none of");
    op_error(ctx, "ScatterND", 3, 1, NULL, 0, NULL, 1, (int64_t[]){0}, KILN_ERR_SHAPE, "do not fit");
    op_error(ctx, "Mod", 2, 1, NULL, 0, NULL, 0, NULL, KILN_ERR_INVALID_ARGUMENT, "fmod must be 1");
    op_error(ctx, "BitShift", 2, 1, "direction", 0, "UP", 0, NULL, KILN_ERR_INVALID_ARGUMENT, "direction 'UP'");
    op_error(ctx, "Det", 1, 1, NULL, 0, NULL, 0, NULL, KILN_ERR_SHAPE, "square matrix");
    op_error(ctx, "OneHot", 3, 1, NULL, 0, NULL, 1, (int64_t[]){0}, KILN_ERR_INVALID_ARGUMENT, "depth must be");
    op_error(ctx, "EyeLike", 1, 1, "dtype", 11, NULL, 0, NULL, KILN_ERR_UNSUPPORTED, "dtype double");
    op_error(ctx, "ReverseSequence", 2, 1, NULL, 0, NULL, 1, (int64_t[]){1}, KILN_ERR_INVALID_ARGUMENT,
             "sequence_lens");
    op_error(ctx, "Compress", 2, 1, "axis", 5, NULL, 1, (int64_t[]){1}, KILN_ERR_INVALID_ARGUMENT, "axis");
    op_error(ctx, "LRN", 1, 1, "size", 0, NULL, 0, NULL, KILN_ERR_INVALID_ARGUMENT, "size must be >= 1");
    op_error(ctx, "Resize", 3, 1, "mode", 0, "bicubic", 1, (int64_t[]){0}, KILN_ERR_INVALID_ARGUMENT, "mode 'bicubic'");
    op_error(ctx, "PRelu", 2, 1, NULL, 0, NULL, 1, (int64_t[]){1}, KILN_ERR_UNSUPPORTED, "'slope' has dtype int64");
    /* a constant Range of 2^31 - 2 elements is not folded at load (which would allocate and
     * fill 16 GiB on the host, and fail or be killed): the size is left to run time */
    mb_init(&b, 13);
    mb_value(&b, false, "y", 1, (int64_t[]){-1});
    b.outs[0].type = NULL;
    static int64_t r_one = 1, r_v[3] = {0, 2147483646, 1};
    mb_init_i64(&b, "start", &r_one, &r_v[0]);
    mb_init_i64(&b, "limit", &r_one, &r_v[1]);
    mb_init_i64(&b, "delta", &r_one, &r_v[2]);
    mb_node(&b, "Range", "range", 3, (char *[]){"start", "limit", "delta"}, 1, fl_out);
    CHECK(load_packed(ctx, &b, 0, &m) == KILN_OK, "huge constant Range: %s", kiln_error_message(ctx));
    kiln_onnx_free(m), m = NULL;
    /* Floor of an integer constant: refused when it is folded at load */
    mb_init(&b, 13);
    mb_value(&b, false, "y", 1, (int64_t[]){2});
    mb_init_i64(&b, "t", nl_tdim, nl_t);
    mb_node(&b, "Floor", "fl", 1, fl_in, 1, fl_out);
    EXPECT_LOAD_FAIL(ctx, &b, 0, KILN_ERR_UNSUPPORTED, "Floor node 'fl'", "float tensors");
}

/* A model exported by torch.onnx (tests/golden/gen_onnx.py) against torch's output, then
 * at another batch size (the batch dim is symbolic) against its own first rows. */
static void test_torch_export(kiln_ctx *ctx, const char *name, int batch_dim) {
    const char *dir = getenv("KILN_GOLDEN_DIR");
    char path[1024], in_path[1024], out_path[1024];
    snprintf(path, sizeof path, "%s/onnx_%s.onnx", dir ? dir : "tests/golden", name);
    snprintf(in_path, sizeof in_path, "%s/onnx_%s_in.pb", dir ? dir : "tests/golden", name);
    snprintf(out_path, sizeof out_path, "%s/onnx_%s_out.pb", dir ? dir : "tests/golden", name);
    kiln_onnx_model *m = NULL;
    CHECK(kiln_onnx_load(ctx, path, &m) == KILN_OK, "%s: %s", name, kiln_error_message(ctx));
    if (!m) return;
    kiln_scope_begin(ctx);
    kiln_tensor *x = NULL, *want = NULL, *y = NULL;
    CHECK(kiln_onnx_load_tensor(ctx, in_path, &x) == KILN_OK && kiln_onnx_load_tensor(ctx, out_path, &want) == KILN_OK,
          "%s: %s", name, kiln_error_message(ctx));
    for (int rep = 0; rep < 2 && x; rep++) {
        /* the second round takes every device buffer from the pool */
        if (rep == 1) kiln_ctx_stats_reset(ctx);
        CHECK(kiln_onnx_run(m, 1, &x, 1, &y) == KILN_OK && y, "%s run: %s", name, kiln_error_message(ctx));
        if (!y) break;
        CHECK(kiln_tensor_numel(y) == kiln_tensor_numel(want), "%s: output size", name);
        float *g = h_read(y), *w = h_read(want);
        int64_t n = kiln_tensor_numel(want);
        double *ref = malloc(sizeof *ref * (size_t)n);
        for (int64_t i = 0; i < n; i++) ref[i] = w[i];
        h_compare(name, g, ref, n, 1e-5, 1e-4);
        /* batch 1: the first sample */
        kiln_tensor *x1 = kiln_slice(ctx, x, batch_dim, 0, 1, 1), *y1 = NULL;
        CHECK(kiln_onnx_run(m, 1, &x1, 1, &y1) == KILN_OK && y1, "%s batch 1: %s", name, kiln_error_message(ctx));
        if (y1) {
            kiln_tensor *w1 = kiln_slice(ctx, want, batch_dim, 0, 1, 1);
            float *g1 = h_read(y1), *r1 = h_read(w1);
            int64_t n1 = kiln_tensor_numel(w1);
            CHECK(kiln_tensor_numel(y1) == n1, "%s batch 1: output size", name);
            for (int64_t i = 0; i < n1; i++) ref[i] = r1[i];
            h_compare(name, g1, ref, n1, 1e-5, 1e-4);
            free(g1), free(r1);
        }
        /* the outputs go back to the pool too (a caller that keeps them holds their buffers) */
        kiln_tensor_free(y), kiln_tensor_free(y1);
        kiln_ctx_stats st;
        if (rep == 1 && kiln_ctx_stats_get(ctx, &st) == KILN_OK)
            CHECK(st.pool_device_allocs == 0, "%s: a repeated run created %llu device buffers (%llu reused)", name,
                  (unsigned long long)st.pool_device_allocs, (unsigned long long)st.pool_reuses);
        free(g), free(w), free(ref);
    }
    kiln_scope_end(ctx);
    kiln_onnx_free(m);
}

static void run_all(kiln_ctx *ctx) {
    test_mlp(ctx);
    test_rejections(ctx);
    test_cast(ctx);
    test_pad_modes(ctx);
    test_trilu_tile(ctx);
    test_bn_fold(ctx);
    test_dense_bn_fold(ctx);
    test_shape_inference(ctx);
    test_added_op_errors(ctx);
    test_torch_export(ctx, "cnn", 0);
    test_torch_export(ctx, "mlp", 0);
    test_torch_export(ctx, "resnet", 0);
    test_torch_export(ctx, "rnn", 1);
    test_torch_export(ctx, "upsample", 0);
    CHECK_OK(ctx);
}

int main(void) {
    H_FOR_EACH_DEVICE(run_all);
    return h_finish();
}

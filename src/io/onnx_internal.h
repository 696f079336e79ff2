/* src/io/onnx_internal.h - the ONNX runtime shared by src/io/onnx_load.c (parsing,
 * validation, constant folding, BatchNormalization folding), src/io/onnx_infer.c (dtype and
 * shape inference), src/io/onnx_ops.c (the operator table) and src/io/onnx_run.c
 * (kiln_onnx_run and the queries).
 *
 * Values: FLOAT tensors live on the device as KILN_F32; integer and BOOL tensors (shape
 * arithmetic, indices, masks) live on the host as int64 and go to the device as KILN_I32
 * only where a kiln op needs them (gather indices, where's condition, graph outputs). Other
 * ONNX dtypes (double, float16, strings, ...) are refused at load. */
#ifndef KILN_ONNX_INTERNAL_H
#define KILN_ONNX_INTERNAL_H

#include <onnx.pb-c.h> /* generated at build time by protoc-c (meson.build: onnx_pb_c) */

#include "io_internal.h"
#include "kiln/onnx.h"

#define ONNX_OPSET_MIN KILN_ONNX_OPSET_MIN
#define ONNX_OPSET_MAX KILN_ONNX_OPSET_MAX
/* No dimension or element count beyond this (2^31 - 1) is accepted from a file. */
#define ONNX_MAX_DIM 2147483647LL

/* ONNX TensorProto.DataType values kiln reads. */
enum {
    OT_FLOAT = 1,
    OT_UINT8 = 2,
    OT_INT8 = 3,
    OT_UINT16 = 4,
    OT_INT16 = 5,
    OT_INT32 = 6,
    OT_INT64 = 7,
    OT_BOOL = 9,
    OT_DOUBLE = 11,
    OT_UINT32 = 12,
    OT_UINT64 = 13,
};

/* One value of the graph at run time (or a constant of the model). */
typedef struct onnx_val {
    int type; /* ONNX elem type; OT_FLOAT values are on the device, the others on the host */
    int ndim;
    int64_t shape[KILN_MAX_DIMS];
    kiln_tensor *t; /* OT_FLOAT */
    int64_t *h;     /* integer / bool types: numel values, malloc'ed (NULL when numel is 0) */
    bool set;
} onnx_val;

/* A dim as shape inference knows it (src/io/onnx_infer.c): a size (k), or unknown with the
 * symbol it is equal to (the dim_param "batch" of an input) or none. */
typedef struct onnx_dim {
    int64_t v; /* when k */
    const char *sym;
    bool k;
} onnx_dim;

/* What load-time inference knows of a value: its ONNX elem type (0 unknown), rank (-1
 * unknown) and dims; for an integer vector of at most KILN_MAX_DIMS elements (a shape being
 * computed) its elements (ndata of them; -1 not tracked). */
typedef struct onnx_info {
    int type;
    int ndim;
    onnx_dim d[KILN_MAX_DIMS];
    int ndata;
    onnx_dim data[KILN_MAX_DIMS];
} onnx_info;

/* A type and shape the file declares for a value (graph output or value_info). */
typedef struct onnx_decl {
    int id;
    onnx_info f;
} onnx_decl;

typedef struct onnx_node onnx_node;
typedef struct onnx_rt onnx_rt;

/* An operator: run computes the outputs from the inputs (NULL for an absent optional
 * input); check (optional) refuses at load what run cannot do, naming the attribute. */
typedef struct onnx_op {
    const char *name;
    int min_in, max_in, min_out, max_out;
    const char *const *attrs; /* the attributes the spec gives it, NULL-terminated */
    kiln_status (*check)(onnx_rt *r, const onnx_node *n);
    kiln_status (*run)(onnx_rt *r, const onnx_node *n, onnx_val *const *in, onnx_val *const *out);
} onnx_op;

struct onnx_node {
    const Onnx__NodeProto *p;
    const onnx_op *op;
    const char *name; /* node name, or "#<index>" when the file gives none */
    int nin, nout;
    int *in, *out; /* value ids, -1 for an absent optional one */
    bool folded;   /* evaluated at load: its outputs are constants */
    bool fused;    /* merged at load into the node producing its input (BatchNormalization into Conv) */
};

/* What an op sees: the context and the model's opset. */
struct onnx_rt {
    kiln_ctx *ctx;
    int opset;
    const char *what; /* model path or name, for errors */
};

typedef struct onnx_io {
    int id; /* value id */
    kiln_onnx_value_info info;
    int64_t shape[KILN_MAX_DIMS];
    const char *dim_names[KILN_MAX_DIMS];
    int type; /* ONNX elem type */
} onnx_io;

struct kiln_onnx_model {
    kiln_ctx *ctx;
    char *what;
    Onnx__ModelProto *proto;
    ProtobufCAllocator *alloc; /* the bounded allocator proto was unpacked with */
    onnx_rt rt;
    int nvals;
    char **names;     /* value names (point into proto) */
    onnx_val *consts; /* per value: set when a constant (initializer, Constant, folded) */
    int *last_use;    /* per value: index in order[] of its last consumer, -1 none */
    bool *is_output;  /* per value */
    int nnodes;
    onnx_node *nodes; /* in topological order */
    int nin, nout;
    onnx_io *inputs, *outputs;
    onnx_val *vals;  /* run-time values (nvals) */
    char *dir;       /* directory of the model file (external data), NULL from memory */
    onnx_info *info; /* per value: inferred type and shape (src/io/onnx_infer.c) */
    int ndecl;
    onnx_decl *decl; /* declared types and shapes of graph outputs and value_info entries */
};

/* ---- src/io/onnx_ops.c ---- */
const onnx_op *kiln__onnx_find_op(const char *name);
/* The first opset whose definition of the operator kiln runs. */
int kiln__onnx_op_since(const char *name);
/* Names every op of the table in `names` (up to cap); returns their number. */
int kiln__onnx_op_names(const char **names, int cap);
/* The attribute `name` of node n, NULL when absent. */
const Onnx__AttributeProto *kiln__onnx_attr(const onnx_node *n, const char *name);
/* A TensorProto (already validated) into a value: floats to the device, integers to the host. */
kiln_status kiln__onnx_tensor_to_val(kiln_ctx *ctx, const char *what, const Onnx__TensorProto *tp, const void *data,
                                     size_t len, onnx_val *v);
/* Checks a TensorProto's dtype, dims and (unless the data is external) data length. */
kiln_status kiln__onnx_tensor_check(kiln_ctx *ctx, const char *what, const Onnx__TensorProto *tp, int64_t *numel);
void kiln__onnx_val_clear(onnx_val *v);
int64_t kiln__onnx_numel(const onnx_val *v);
/* Whether the elem type is one kiln holds. */
bool kiln__onnx_type_ok(int type);
const char *kiln__onnx_type_name(int type);

/* ---- src/io/onnx_infer.c ---- */
/* Infers every value's type and shape (m->info) in topological order, checks them against
 * m->decl (a contradiction is KILN_ERR_SHAPE naming the node, the value and both shapes) and
 * fills the outputs' query from them. */
kiln_status kiln__onnx_infer(kiln_onnx_model *m);
void kiln__onnx_info_from_val(onnx_info *f, const onnx_val *v);
void kiln__onnx_info_str(const onnx_info *f, char *buf, size_t cap);
/* At run: whether the value node n made for value id has the inferred type and known dims. */
kiln_status kiln__onnx_check_result(const kiln_onnx_model *m, const onnx_node *n, int id, const onnx_val *v);

#endif

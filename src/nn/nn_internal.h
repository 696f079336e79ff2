/* src/nn/nn_internal.h - the module structure shared by src/nn/module.c (containers,
 * names, state) and src/nn/layers.c (the layers). */
#ifndef KILN_NN_INTERNAL_H
#define KILN_NN_INTERNAL_H

#include "../ops/ops_internal.h"

#define KILN__MODULE_TENSORS 8

typedef struct kiln__mtensor {
    char name[32];
    kiln_tensor *t;
    bool buffer;
} kiln__mtensor;

struct kiln_module {
    kiln_ctx *ctx;
    const char *kind; /* "Linear", "Sequential", ... */
    kiln_tensor *(*forward)(kiln_module *m, kiln_tensor *x);
    /* writes the constructor arguments: "in_features=784, out_features=128, bias=True" */
    void (*args)(const kiln_module *m, char *buf, size_t cap);
    kiln__mtensor tensors[KILN__MODULE_TENSORS];
    int ntensors;
    kiln_module **children;
    char (*child_names)[64];
    int nchildren, capchildren;
    kiln_module *parent;
    bool training;
    /* layer configuration */
    int64_t i[8];
    double f[4];
    kiln_conv2d_params conv;
    kiln_pool2d_params pool;
    int64_t batches_tracked; /* host copy of num_batches_tracked; -1: read it from the device */
};

/* A new module of `kind` (training mode, no tensors); NULL with the error set. */
kiln_module *kiln__module_new(kiln_ctx *ctx, const char *kind, kiln_tensor *(*forward)(kiln_module *, kiln_tensor *),
                              void (*args)(const kiln_module *, char *, size_t));
/* Registers t (kept out of every scope, owned by m) as a parameter (requires grad) or a
 * buffer. False with the error set (t is freed) on failure. */
bool kiln__module_add(kiln_module *m, const char *name, kiln_tensor *t, bool buffer);
kiln_tensor *kiln__module_tensor(const kiln_module *m, const char *name);
/* The module's path from the root ("features.3"), "" for the root. */
void kiln__module_path(const kiln_module *m, char *buf, size_t cap);

/* Tensors of m and its children were overwritten (a checkpoint load): host copies of
 * buffer values (num_batches_tracked) are re-read from the device when next needed. */
void kiln__module_state_loaded(kiln_module *m);

#endif

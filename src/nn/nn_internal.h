/* src/nn/nn_internal.h - the module structure behind kiln/module.h, shared by
 * src/nn/module.c (the module API, containers, names, state) and src/nn/layers.c (the
 * built-in layers, each defined through the public API with its own typed state). */
#ifndef KILN_NN_INTERNAL_H
#define KILN_NN_INTERNAL_H

#include "../ops/ops_internal.h"

#define KILN__NAME_MAX 64 /* names of children and tensors: 1 to 63 characters */

typedef struct kiln__mtensor {
    char name[KILN__NAME_MAX];
    kiln_tensor *t;
    bool buffer;
} kiln__mtensor;

typedef struct kiln__mchild {
    char name[KILN__NAME_MAX];
    kiln_module *m;
} kiln__mchild;

struct kiln_module {
    kiln_ctx *ctx;
    kiln_module_def def; /* a copy; def.kind points at kind */
    char kind[KILN__NAME_MAX];
    void *data;             /* def.state_size zeroed bytes, or NULL */
    kiln__mtensor *tensors; /* parameters and buffers in registration order */
    int ntensors, captensors;
    kiln__mchild *children;
    int nchildren, capchildren;
    kiln_module *parent;
    bool training;
    /* internal hook: the module's tensors were overwritten (a load); BatchNorm drops its
     * host copy of num_batches_tracked */
    void (*state_loaded)(kiln_module *m);
};

/* Tensors of m and its children were overwritten (a checkpoint load): host copies of
 * buffer values (num_batches_tracked) are re-read from the device when next needed. */
void kiln__module_state_loaded(kiln_module *m);
/* SyncBatchNorm (src/dist): batch norm module m's training forward sums its batch
 * statistics over the processes with fn (differentiable: fn's backward sums gradients the
 * same way); fn NULL: per-process statistics again. False when m is no batch norm. */
bool kiln__bn_set_sync(kiln_module *m, kiln_tensor *(*fn)(void *user, kiln_tensor *t), void *user);
/* The module's path from the root ("features.3"), "" for the root. */
void kiln__module_path(const kiln_module *m, char *buf, size_t cap);

#endif

/* src/dist/dist_internal.h - the dist floor (data-parallel training over MPI,
 * src/dist/dist.c): above nn, optim, io and data, below train. Includes the ops floor's
 * internals (tensors, autograd's grad-ready hook, the device's non-blocking copies, batch
 * norm's SyncBatchNorm hook) and the
 * public headers; <mpi.h> stays inside dist.c so that nothing else needs MPI's headers. */
#ifndef KILN_DIST_INTERNAL_H
#define KILN_DIST_INTERNAL_H

#include "../nn/nn_internal.h"
#include "kiln/dist.h"
#include "kiln/module.h"

#endif

/* kiln/kiln.h - the umbrella header.
 *
 * kiln trains and runs neural networks on any OpenCL device. A first program:
 *
 *     #include <kiln/kiln.h>
 *
 *     kiln_ctx *ctx;
 *     if (kiln_open(&ctx, NULL) != KILN_OK) {          // NULL: $KILN_DEVICE or the default
 *         fprintf(stderr, "%s\n", kiln_last_error());
 *         return 1;
 *     }
 *     float a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {1, 0, 0, 1, 1, 1};
 *     kiln_scope_begin(ctx);                             // frees what the block creates
 *     kiln_tensor *A = kiln_from_host(ctx, a, KILN_F32, 2, (int64_t[]){2, 3});
 *     kiln_tensor *B = kiln_from_host(ctx, b, KILN_F32, 2, (int64_t[]){3, 2});
 *     kiln_tensor *C = kiln_matmul(ctx, A, B);           // (2, 2), enqueued, not waited for
 *     float c[4];
 *     if (kiln_to_host(C, c, sizeof c) != KILN_OK)       // the sync point; NULL C is caught here
 *         fprintf(stderr, "%s\n", kiln_error_message(ctx));
 *     kiln_scope_end(ctx);
 *     kiln_close(ctx);
 *
 * Errors: every fallible call returns a kiln_status or NULL; the context keeps the first
 * error's message (op name and shapes) until kiln_error_clear(). kiln never exits, aborts
 * or prints on its own.
 */
#ifndef KILN_KILN_H
#define KILN_KILN_H

#include "autograd.h"
#include "common.h"
#include "device.h"
#include "functional.h"
#include "ops.h"
#include "tensor.h"
#include "data.h"
#include "io.h"
#include "nn.h"
#include "models.h"
#include "optim.h"
#include "amp.h"
#include "train.h"
#include "dist.h"
#include "onnx.h"

#endif

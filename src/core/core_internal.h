/* src/core/core_internal.h - the core floor, bottom of the library: status codes, a
 * context's error message, logging (src/core/error.c).
 *
 * The library's floors, bottom to top: core, device, tensor, autograd, ops, nn / optim,
 * io / data, dist, train, then the tools. Each floor has one internal header that includes the one
 * below it (src/device/device_internal.h, src/tensor/tensor_internal.h,
 * src/autograd/autograd_internal.h, src/ops/ops_internal.h); a source includes its own
 * floor's header and calls nothing above it. scripts/check_layers checks both. */
#ifndef KILN_CORE_INTERNAL_H
#define KILN_CORE_INTERNAL_H

#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>

#include "kiln/kiln.h"

#if defined(__GNUC__)
#define KILN__PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define KILN__PRINTF(f, a)
#endif

/* A context's error state. struct kiln_ctx (src/device/device_internal.h) starts with it,
 * so core reads and writes a context's error without knowing the rest of the context; the
 * floors above name its fields ctx->err, ctx->errmsg, ctx->err_noted. */
#define KILN__ERROR_FIELDS                                                                                             \
    kiln_status err;                                                                                                   \
    char *errmsg;   /* malloc'ed; NULL when no error */                                                                \
    bool err_noted; /* kiln__error_note already added its note */
typedef struct kiln__error_state {
    KILN__ERROR_FIELDS
} kiln__error_state;

/* Records status and a formatted message as the context's error unless one is already
 * held (the first error is the root cause). Returns status. ctx may be NULL. */
kiln_status kiln__fail(kiln_ctx *ctx, kiln_status status, const char *fmt, ...) KILN__PRINTF(3, 4);
/* Same, for calls with no context: sets the thread's kiln_last_error(). */
kiln_status kiln__fail_global(kiln_status status, const char *fmt, ...) KILN__PRINTF(2, 3);
/* Appends " [note]" to the context's error message once (the innermost caller wins):
 * modules name themselves in the errors of the ops they run. */
void kiln__error_note(kiln_ctx *ctx, const char *fmt, ...) KILN__PRINTF(2, 3);
void kiln__clear_global(void);
/* Maps an OpenCL error code to a kiln status. */
kiln_status kiln__cl_status(cl_int err);
const char *kiln__cl_name(cl_int err);
void kiln__log(int level, const char *fmt, ...) KILN__PRINTF(2, 3);
double kiln__now_ms(void);

#endif

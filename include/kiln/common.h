/* kiln/common.h - status codes, dtypes, the context handle and its error state. */
#ifndef KILN_COMMON_H
#define KILN_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(KILN_BUILDING_SHARED)
#define KILN_API __declspec(dllexport)
#elif defined(_WIN32) && defined(KILN_SHARED)
#define KILN_API __declspec(dllimport)
#elif defined(__GNUC__) && defined(KILN_BUILDING)
#define KILN_API __attribute__((visibility("default")))
#else
#define KILN_API
#endif

#define KILN_VERSION_MAJOR 0
#define KILN_VERSION_MINOR 1
#define KILN_VERSION_PATCH 0
#define KILN_VERSION_STRING "0.1.0"

/* Maximum number of tensor dimensions. */
#define KILN_MAX_DIMS 8

/*
 * Status codes. 0 is success, every error is negative. The list is the single source of
 * the enum, the names (kiln_status_name) and the descriptions (kiln_status_str).
 */
#define KILN_STATUS_LIST(X)                                                                                            \
    X(KILN_OK, 0, "success")                                                                                           \
    X(KILN_ERR_INVALID_ARGUMENT, -1, "invalid argument")                                                               \
    X(KILN_ERR_NULL, -2, "NULL handle or pointer")                                                                     \
    X(KILN_ERR_SHAPE, -3, "shape mismatch")                                                                            \
    X(KILN_ERR_DTYPE, -4, "unsupported or mismatched dtype")                                                           \
    X(KILN_ERR_NO_DEVICE, -5, "no OpenCL device found")                                                                \
    X(KILN_ERR_DEVICE_NOT_FOUND, -6, "no device matches the device spec")                                              \
    X(KILN_ERR_OUT_OF_MEMORY, -7, "device memory exhausted")                                                           \
    X(KILN_ERR_HOST_OUT_OF_MEMORY, -8, "host memory exhausted")                                                        \
    X(KILN_ERR_BUILD, -9, "kernel build failed")                                                                       \
    X(KILN_ERR_OPENCL, -10, "OpenCL call failed")                                                                      \
    X(KILN_ERR_CLBLAST, -11, "CLBlast call failed")                                                                    \
    X(KILN_ERR_IO, -12, "file input/output failed")                                                                    \
    X(KILN_ERR_CORRUPT, -13, "corrupt or malformed data")                                                              \
    X(KILN_ERR_BUFFER_TOO_SMALL, -14, "destination buffer too small")                                                  \
    X(KILN_ERR_UNSUPPORTED, -15, "operation not supported")                                                            \
    X(KILN_ERR_INPUT_ERROR, -16, "an input is NULL because an earlier operation failed")                               \
    X(KILN_ERR_RANGE, -17, "value or index out of range")

typedef enum kiln_status {
#define KILN__STATUS_ENUM(name, value, text) name = value,
    KILN_STATUS_LIST(KILN__STATUS_ENUM)
#undef KILN__STATUS_ENUM
} kiln_status;

/* A short description of a status ("device memory exhausted"). Never NULL. */
KILN_API const char *kiln_status_str(kiln_status s);
/* The enumerator's name ("KILN_ERR_OUT_OF_MEMORY"). Never NULL. */
KILN_API const char *kiln_status_name(kiln_status s);

/* Element types. KILN_F32 is computed on by every op; KILN_I32 holds indices (argmax) and
 * KILN_U8 masks. KILN_F16 (IEEE binary16) and KILN_BF16 (bfloat16: the top 16 bits of an
 * f32) are storage types on every device, cl_khr_fp16 or not, taken by every op: each
 * computes in f32, either in kernels that load and store halves or on f32 copies of its
 * half inputs (README.md, "Half precision and mixed precision", says which), and returns
 * the inputs' dtype (f32 where f32 and halves mix, as torch promotes). Host data of a half
 * tensor (kiln_from_host, kiln_to_host) is the raw 16-bit values; kiln_to_dtype converts. */
typedef enum kiln_dtype {
    KILN_F32 = 0,
    KILN_F16 = 1,
    KILN_I32 = 2,
    KILN_U8 = 3,
    KILN_BF16 = 4,
    KILN_DTYPE_COUNT
} kiln_dtype;

KILN_API const char *kiln_dtype_name(kiln_dtype t);
/* Size of one element in bytes, 0 for an invalid dtype. */
KILN_API size_t kiln_dtype_size(kiln_dtype t);
/* Whether t is a half-precision float type (KILN_F16 or KILN_BF16). */
KILN_API bool kiln_dtype_is_half(kiln_dtype t);

/* Host conversions, the same rounding as the device's (kiln_to_dtype): f32 to f16 and to
 * bf16 round to nearest, ties to even; f16 overflow gives +-inf, values below f16's
 * smallest denormal round to +-0; NaN stays NaN (bf16 keeps the sign and sets a quiet
 * bit). Converting back is exact. */
KILN_API uint16_t kiln_f32_to_f16(float f);
KILN_API float kiln_f16_to_f32(uint16_t h);
KILN_API uint16_t kiln_f32_to_bf16(float f);
KILN_API float kiln_bf16_to_f32(uint16_t h);

/* A context: one open device with its queue, kernel cache, buffer pool, tensors and error
 * state. A context is used by one thread at a time; different contexts are independent. */
typedef struct kiln_ctx kiln_ctx;

/*
 * Error state. Each context keeps the first error that happened since the last
 * kiln_error_clear(): the status and a message naming the operation and the shapes.
 * Ops that return a tensor return NULL on error; an op given a NULL input returns NULL
 * at once, so a chain of ops can be checked once at its end.
 */
KILN_API kiln_status kiln_error_status(const kiln_ctx *ctx);
/* The message of the sticky error, "" when there is none. Owned by ctx; valid until the
 * next kiln_error_clear() or kiln_close(). */
KILN_API const char *kiln_error_message(const kiln_ctx *ctx);
KILN_API void kiln_error_clear(kiln_ctx *ctx);

/* The message of the last failed call in this thread that had no context to hold it:
 * context-less calls (kiln_open, kiln_devices, the data readers, ...) and any call given a
 * NULL handle or NULL context. Thread-local; "" when there is none. A context-less call
 * that can fail clears it on entry. */
KILN_API const char *kiln_last_error(void);
/* The status that goes with kiln_last_error() (KILN_OK when it is ""): for the calls that
 * return a pointer or a value rather than a kiln_status. */
KILN_API kiln_status kiln_last_status(void);

/* Optional log callback. By default kiln prints nothing; with KILN_LOG=1 in the
 * environment it logs to stderr. level: 0 error, 1 warning, 2 info, 3 debug. */
typedef void (*kiln_log_fn)(int level, const char *message, void *user);
KILN_API void kiln_set_log(kiln_log_fn fn, void *user);

#ifdef __cplusplus
}
#endif
#endif

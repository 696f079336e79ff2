/* src/core/error.c - status names, the sticky per-context error, logging. */
#define _POSIX_C_SOURCE 200809L
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core_internal.h"

const char *kiln_status_str(kiln_status s) {
    switch (s) {
#define KILN__STATUS_STR(name, value, text)                                                                            \
    case name: return text;
        KILN_STATUS_LIST(KILN__STATUS_STR)
#undef KILN__STATUS_STR
    }
    return "unknown status";
}

const char *kiln_status_name(kiln_status s) {
    switch (s) {
#define KILN__STATUS_NAME(name, value, text)                                                                           \
    case name: return #name;
        KILN_STATUS_LIST(KILN__STATUS_NAME)
#undef KILN__STATUS_NAME
    }
    return "KILN_STATUS_UNKNOWN";
}

static const struct {
    const char *name;
    size_t size;
} dtype_table[] = {
    [KILN_F32] = {"f32", 4}, [KILN_F16] = {"f16", 2},   [KILN_I32] = {"i32", 4},
    [KILN_U8] = {"u8", 1},   [KILN_BF16] = {"bf16", 2},
};
_Static_assert(sizeof dtype_table / sizeof dtype_table[0] == KILN_DTYPE_COUNT, "every dtype needs a name and a size");

const char *kiln_dtype_name(kiln_dtype t) { return (unsigned)t < KILN_DTYPE_COUNT ? dtype_table[t].name : "invalid"; }

size_t kiln_dtype_size(kiln_dtype t) { return (unsigned)t < KILN_DTYPE_COUNT ? dtype_table[t].size : 0; }

bool kiln_dtype_is_half(kiln_dtype t) { return t == KILN_F16 || t == KILN_BF16; }

/* ---- half-precision conversions on the host (the device's are cl_kernels/cast.cl) ---- */

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t kiln_f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7FFFFFFFu;
    if (a >= 0x7F800000u) /* inf, or NaN with a quiet bit and the top payload bits kept */
        return (uint16_t)(sign | 0x7C00u | (a > 0x7F800000u ? 0x0200u | ((a >> 13) & 0x03FFu) : 0u));
    if (a >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* rounds past 65504: inf */
    if (a < 0x38800000u) {                                   /* below 2^-14: an f16 denormal or 0 */
        if (a < 0x33000000u) return sign;                    /* at most half the smallest denormal: 0 */
        int e = (int)(a >> 23);                              /* 102 .. 112 */
        uint32_t m = (a & 0x007FFFFFu) | 0x00800000u;
        int shift = 126 - e; /* the denormal's unit is 2^-24: m * 2^(e-150) / 2^-24 */
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = a - 0x38000000u; /* rebias the exponent: 127 - 15 = 112 */
    uint32_t q = r >> 13, rem = r & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) q++; /* a carry into the exponent is right */
    return (uint16_t)(sign | q);
}

float kiln_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x03FFu;
    if (e == 0x1F) return bits_f32(sign | 0x7F800000u | (m << 13));
    if (e == 0) { /* 0 or a denormal: m * 2^-24, exact in f32 */
        float v = (float)m * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

uint16_t kiln_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x0040u); /* NaN stays NaN */
    u += 0x7FFFu + ((u >> 16) & 1u); /* to nearest, ties to even; overflow carries into inf */
    return (uint16_t)(u >> 16);
}

float kiln_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

static char *vformat(const char *fmt, va_list ap) {
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0) return NULL;
    char *s = malloc((size_t)n + 1);
    if (s) vsnprintf(s, (size_t)n + 1, fmt, ap);
    return s;
}

/* A context's error state: struct kiln_ctx starts with it (src/core/core_internal.h), and
 * core knows no more of the context. NULL for a NULL ctx. */
static kiln__error_state *state_of(const kiln_ctx *ctx) { return (kiln__error_state *)(void *)ctx; }

static kiln_status vfail_global(kiln_status status, const char *fmt, va_list ap);

kiln_status kiln__fail(kiln_ctx *ctx, kiln_status status, const char *fmt, ...) {
    kiln__error_state *e = state_of(ctx);
    va_list ap;
    if (!ctx) { /* no context to hold it: the thread's kiln_last_error() does */
        va_start(ap, fmt);
        vfail_global(status, fmt, ap);
        va_end(ap);
        return status;
    }
    if (e->err != KILN_OK) return status;
    va_start(ap, fmt);
    e->errmsg = vformat(fmt, ap);
    va_end(ap);
    e->err = status;
    kiln__log(0, "%s", e->errmsg ? e->errmsg : kiln_status_str(status));
    return status;
}

kiln_status kiln_error_status(const kiln_ctx *ctx) { return ctx ? state_of(ctx)->err : KILN_ERR_NULL; }

const char *kiln_error_message(const kiln_ctx *ctx) {
    if (!ctx) return "kiln_error_message: ctx is NULL";
    const kiln__error_state *e = state_of(ctx);
    if (e->err == KILN_OK) return "";
    return e->errmsg ? e->errmsg : kiln_status_str(e->err);
}

void kiln_error_clear(kiln_ctx *ctx) {
    if (!ctx) return;
    kiln__error_state *e = state_of(ctx);
    free(e->errmsg);
    e->errmsg = NULL;
    e->err = KILN_OK;
    e->err_noted = false;
}

void kiln__error_note(kiln_ctx *ctx, const char *fmt, ...) {
    kiln__error_state *e = state_of(ctx);
    if (!e || e->err == KILN_OK || e->err_noted || !e->errmsg) return;
    va_list ap;
    va_start(ap, fmt);
    char *note = vformat(fmt, ap);
    va_end(ap);
    if (!note) return;
    size_t a = strlen(e->errmsg), b = strlen(note);
    char *m = realloc(e->errmsg, a + b + 4);
    if (m) {
        snprintf(m + a, b + 4, " [%s]", note);
        e->errmsg = m;
        e->err_noted = true;
    }
    free(note);
}

static _Thread_local char last_error[8192];
static _Thread_local kiln_status last_status;

static kiln_status vfail_global(kiln_status status, const char *fmt, va_list ap) {
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    last_status = status;
    kiln__log(0, "%s", last_error);
    return status;
}

kiln_status kiln__fail_global(kiln_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfail_global(status, fmt, ap);
    va_end(ap);
    return status;
}

void kiln__clear_global(void) {
    last_error[0] = '\0';
    last_status = KILN_OK;
}

const char *kiln_last_error(void) { return last_error; }

kiln_status kiln_last_status(void) { return last_status; }

static kiln_log_fn log_fn;
static void *log_user;

void kiln_set_log(kiln_log_fn fn, void *user) {
    log_fn = fn;
    log_user = user;
}

void kiln__log(int level, const char *fmt, ...) {
    const char *env = log_fn ? NULL : getenv("KILN_LOG");
    if (!log_fn && !(env && *env && strcmp(env, "0") != 0)) return;
    if (!log_fn && env && atoi(env) > 0 && level > atoi(env) + 1) return;
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (log_fn) {
        log_fn(level, buf, log_user);
    } else {
        static const char *names[] = {"error", "warning", "info", "debug"};
        fprintf(stderr, "kiln %s: %s\n", names[level < 0 ? 0 : level > 3 ? 3 : level], buf);
    }
}

double kiln__now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

kiln_status kiln__cl_status(cl_int err) {
    switch (err) {
    case CL_SUCCESS: return KILN_OK;
    case CL_MEM_OBJECT_ALLOCATION_FAILURE:
    case CL_OUT_OF_RESOURCES:
    case CL_INVALID_BUFFER_SIZE: return KILN_ERR_OUT_OF_MEMORY;
    case CL_OUT_OF_HOST_MEMORY: return KILN_ERR_HOST_OUT_OF_MEMORY;
    case CL_BUILD_PROGRAM_FAILURE:
    case CL_COMPILER_NOT_AVAILABLE:
    case CL_INVALID_BUILD_OPTIONS: return KILN_ERR_BUILD;
    case CL_DEVICE_NOT_FOUND:
    case -1001 /* CL_PLATFORM_NOT_FOUND_KHR */: return KILN_ERR_NO_DEVICE;
    default: return KILN_ERR_OPENCL;
    }
}

const char *kiln__cl_name(cl_int err) {
    switch (err) {
#define N(x)                                                                                                           \
    case x: return #x
        N(CL_SUCCESS);
        N(CL_DEVICE_NOT_FOUND);
        N(CL_DEVICE_NOT_AVAILABLE);
        N(CL_COMPILER_NOT_AVAILABLE);
        N(CL_MEM_OBJECT_ALLOCATION_FAILURE);
        N(CL_OUT_OF_RESOURCES);
        N(CL_OUT_OF_HOST_MEMORY);
        N(CL_PROFILING_INFO_NOT_AVAILABLE);
        N(CL_MEM_COPY_OVERLAP);
        N(CL_BUILD_PROGRAM_FAILURE);
        N(CL_MAP_FAILURE);
        N(CL_MISALIGNED_SUB_BUFFER_OFFSET);
        N(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST);
        N(CL_COMPILE_PROGRAM_FAILURE);
        N(CL_LINK_PROGRAM_FAILURE);
        N(CL_INVALID_VALUE);
        N(CL_INVALID_DEVICE_TYPE);
        N(CL_INVALID_PLATFORM);
        N(CL_INVALID_DEVICE);
        N(CL_INVALID_CONTEXT);
        N(CL_INVALID_QUEUE_PROPERTIES);
        N(CL_INVALID_COMMAND_QUEUE);
        N(CL_INVALID_HOST_PTR);
        N(CL_INVALID_MEM_OBJECT);
        N(CL_INVALID_BINARY);
        N(CL_INVALID_BUILD_OPTIONS);
        N(CL_INVALID_PROGRAM);
        N(CL_INVALID_PROGRAM_EXECUTABLE);
        N(CL_INVALID_KERNEL_NAME);
        N(CL_INVALID_KERNEL_DEFINITION);
        N(CL_INVALID_KERNEL);
        N(CL_INVALID_ARG_INDEX);
        N(CL_INVALID_ARG_VALUE);
        N(CL_INVALID_ARG_SIZE);
        N(CL_INVALID_KERNEL_ARGS);
        N(CL_INVALID_WORK_DIMENSION);
        N(CL_INVALID_WORK_GROUP_SIZE);
        N(CL_INVALID_WORK_ITEM_SIZE);
        N(CL_INVALID_GLOBAL_OFFSET);
        N(CL_INVALID_EVENT_WAIT_LIST);
        N(CL_INVALID_EVENT);
        N(CL_INVALID_OPERATION);
        N(CL_INVALID_BUFFER_SIZE);
        N(CL_INVALID_GLOBAL_WORK_SIZE);
#undef N
    case -1001: return "CL_PLATFORM_NOT_FOUND_KHR";
    }
    return "CL_UNKNOWN_ERROR";
}

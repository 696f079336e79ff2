/* kiln/device.h - OpenCL platforms and devices: listing, selection, opening a context,
 * the buffer pool and the kernel caches. */
#ifndef KILN_DEVICE_H
#define KILN_DEVICE_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum kiln_device_type {
    KILN_DEVICE_CPU = 1,
    KILN_DEVICE_GPU = 2,
    KILN_DEVICE_ACCELERATOR = 4,
    KILN_DEVICE_OTHER = 8
} kiln_device_type;

typedef struct kiln_device_info {
    int platform_index; /* P in "P:D" */
    int device_index;   /* D in "P:D", counted within the platform */
    char name[256];
    char vendor[256];
    char platform_name[256];
    char platform_vendor[256];
    char platform_version[256];
    char version[256]; /* CL_DEVICE_VERSION */
    char driver_version[128];
    char opencl_c_version[128];
    kiln_device_type type;
    uint32_t compute_units;
    uint32_t max_clock_mhz;
    uint64_t global_mem_bytes;
    uint64_t local_mem_bytes;
    uint64_t max_alloc_bytes;
    uint64_t max_work_group_size;
    bool fp16;
    bool fp64;
    uint32_t preferred_vector_width_float;
    uint32_t preferred_vector_width_half;
    uint32_t native_vector_width_float;
    bool is_default; /* the device kiln_open(NULL) picks without KILN_DEVICE */
    bool limited;    /* narrowed by $KILN_DEVICE_LIMITS (kiln_open; README, "Portability") */
} kiln_device_info;

KILN_API const char *kiln_device_type_name(kiln_device_type t);

/*
 * Lists every device of every platform. Writes up to `cap` entries to `out` (which may be
 * NULL when cap is 0) and the total number to *count. Returns KILN_ERR_NO_DEVICE when no
 * OpenCL platform or device exists (message in kiln_last_error()).
 */
KILN_API kiln_status kiln_devices(kiln_device_info *out, int cap, int *count);

/*
 * Resolves a device spec without opening the device:
 *   NULL or ""       the default: the first GPU, else the first CPU, else the first device
 *   "gpu" "cpu" "accelerator"   the first device of that type
 *   "P:D"            platform P, device D, as printed by `kiln devices`
 *   anything else    the first device whose device name, device vendor, platform name or
 *                    platform vendor contains it, case-insensitively ("pocl", "nvidia")
 * An unknown spec returns KILN_ERR_DEVICE_NOT_FOUND with a message listing every device.
 */
KILN_API kiln_status kiln_device_find(const char *spec, kiln_device_info *out);

/*
 * Opens a device and creates its context, in-order queue, kernel cache and buffer pool.
 * spec as for kiln_device_find; a NULL spec reads KILN_DEVICE from the environment and
 * falls back to the default device. On error *out is NULL and kiln_last_error() says why.
 * The caller frees the context with kiln_close(), which frees every tensor it still holds.
 */
KILN_API kiln_status kiln_open(kiln_ctx **out, const char *spec);
KILN_API void kiln_close(kiln_ctx *ctx);

/* The device the context runs on. */
KILN_API const kiln_device_info *kiln_ctx_device(const kiln_ctx *ctx);

/* Waits until every operation enqueued so far has finished. Errors the device reports
 * while finishing become the context's error.
 *
 * Deferred index errors: ops that take indices (kiln_cross_entropy and kiln_nll_loss
 * labels, kiln_embedding, kiln_index_select, kiln_gather) check them on the device instead
 * of waiting for them. The first bad index is recorded in a small per-context buffer, which
 * the host reads along with the next wait it makes anyway: kiln_sync, kiln_to_host and
 * kiln_tensor_item (kiln_fit: the end of each epoch) then fail with KILN_ERR_RANGE, naming
 * the op, the index, its position and the call that waited, and the buffer is cleared. */
KILN_API kiln_status kiln_sync(kiln_ctx *ctx);

/* ---- buffer pool -------------------------------------------------------------------- */

typedef struct kiln_pool_stats {
    uint64_t in_use_bytes; /* held by live tensors (bucket sizes) */
    uint64_t cached_bytes; /* free buffers kept for reuse */
    uint64_t peak_in_use_bytes;
    uint64_t limit_bytes;   /* 0: no limit besides the device's */
    uint64_t allocs;        /* requests served */
    uint64_t device_allocs; /* requests that created a new OpenCL buffer */
    uint64_t reuses;        /* requests served from the cache */
} kiln_pool_stats;

KILN_API kiln_status kiln_pool_stats_get(const kiln_ctx *ctx, kiln_pool_stats *out);
/* Releases every cached buffer back to the device. */
KILN_API void kiln_pool_trim(kiln_ctx *ctx);
/* Caps in_use + cached bytes (0 removes the cap). A request over the cap trims the cache,
 * retries once, then fails with KILN_ERR_OUT_OF_MEMORY, as a full device would. */
KILN_API void kiln_pool_set_limit(kiln_ctx *ctx, uint64_t bytes);

/* ---- what a context asks of its device ------------------------------------------------ */

/* Counted since kiln_open or the last kiln_ctx_stats_reset. A training step that never
 * waits for the device has host_waits == 0; `kiln bench train --json` reports these per
 * step. */
typedef struct kiln_ctx_stats {
    uint64_t launches;           /* kernels kiln enqueued */
    uint64_t library_calls;      /* CLBlast calls (each enqueues one or more kernels of its own) */
    uint64_t host_waits;         /* blocking_reads + blocking_writes + finishes + event_waits */
    uint64_t blocking_reads;     /* device-to-host copies the host waited for (kiln_to_host, kiln_tensor_item, ...) */
    uint64_t blocking_writes;    /* host-to-device copies the host waited for (kiln_from_host, ...) */
    uint64_t finishes;           /* waits for the whole queue (kiln_sync) */
    uint64_t event_waits;        /* waits for one transfer (the loader's batch writes) */
    uint64_t bytes_to_host;      /* bytes read back */
    uint64_t bytes_to_device;    /* bytes written, blocking or not */
    uint64_t pool_device_allocs; /* pool requests that created an OpenCL buffer */
    uint64_t pool_reuses;        /* pool requests served from its cache */
} kiln_ctx_stats;

KILN_API kiln_status kiln_ctx_stats_get(const kiln_ctx *ctx, kiln_ctx_stats *out);
KILN_API kiln_status kiln_ctx_stats_reset(kiln_ctx *ctx);

/* ---- kernel caches ------------------------------------------------------------------ */

typedef struct kiln_cache_stats {
    uint64_t memory_hits; /* program found in this context's memory cache */
    uint64_t disk_hits;   /* program binary loaded from the disk cache */
    uint64_t builds;      /* programs compiled from source */
    uint64_t disk_writes; /* binaries written to the disk cache */
    uint64_t disk_faults; /* unreadable or stale cache files ignored (a build followed) */
    double build_ms;      /* time spent compiling or loading programs */
} kiln_cache_stats;

KILN_API kiln_status kiln_cache_stats_get(const kiln_ctx *ctx, kiln_cache_stats *out);

/* The disk cache directory: $KILN_CACHE_DIR, else $XDG_CACHE_HOME/kiln, else
 * $HOME/.cache/kiln. Writes "" when KILN_CACHE=off. */
KILN_API kiln_status kiln_cache_dir(char *buf, size_t cap);

typedef struct kiln_cache_summary {
    uint64_t files;
    uint64_t bytes;
} kiln_cache_summary;

KILN_API kiln_status kiln_cache_summary_get(kiln_cache_summary *out);
/* Removes every kiln cache file from the disk cache directory. */
KILN_API kiln_status kiln_cache_clear(void);

#ifdef __cplusplus
}
#endif
#endif

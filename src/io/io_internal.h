/* src/io/io_internal.h - the parsed safetensors file shared by src/io/safetensors.c and
 * src/io/checkpoint.c. */
#ifndef KILN_IO_INTERNAL_H
#define KILN_IO_INTERNAL_H

#include "../ops/ops_internal.h"
#include "kiln/io.h"

typedef struct kiln__st_entry {
    char *name;
    char dtype[8];
    int ndim;
    int64_t shape[KILN_MAX_DIMS];
    int64_t begin, end; /* byte range in the data section */
    int64_t numel;
} kiln__st_entry;

typedef struct kiln__st_meta {
    char *key, *value;
} kiln__st_meta;

struct kiln_safetensors {
    kiln_ctx *ctx;
    unsigned char *buf; /* the whole file */
    size_t len;
    const unsigned char *data; /* after the header */
    size_t data_len;
    char *what; /* path or name for errors */
    kiln__st_entry *e;
    int n;
    kiln__st_meta *meta;
    int nmeta;
    bool have_meta;
};

/* One tensor to write: host data, little-endian: F32 or I32 (is_int), or F16/BF16 when
 * half is KILN_F16/KILN_BF16 (16-bit values; 0, KILN_F32, otherwise). */
typedef struct kiln__st_out {
    const char *name;
    int ndim;
    const int64_t *shape;
    int64_t numel;
    bool is_int;
    const void *data;
    kiln_dtype half;
} kiln__st_out;

void kiln__st_free(kiln_safetensors *f);
bool kiln__st_is_float(const kiln__st_entry *e);
/* Entry e converted to F32 (float dtypes) or I32 (integer dtypes) into out. */
kiln_status kiln__st_convert(kiln_ctx *ctx, const kiln_safetensors *f, const kiln__st_entry *e, void *out);
/* Writes the file atomically (temporary name, fsync, rename, fsync of the directory). */
kiln_status kiln__st_write(kiln_ctx *ctx, const char *path, int n, const kiln__st_out *t, int nmeta,
                           const kiln_meta *meta);
/* Test hook: the nth step of the next saves fails as a full disk would (0 = off). */
void kiln__io_fail_after(int64_t nth);
/* The hook's check before a write step of another writer (src/io/onnx_save.c): true (errno
 * ENOSPC) when this step is to fail. */
bool kiln__io_injected_failure(void);
/* src/optim/optim.c: whether "<i>.<key>" names state this optimizer's configuration uses
 * (kiln_optim_state_find(opt, name, true) would succeed), without creating it. */
bool kiln__optim_state_known(const kiln_optim *opt, const char *name);

#endif

/* src/data/data_internal.h - helpers shared by the data sources (idx.c, csv.c, loader.c). */
#ifndef KILN_DATA_INTERNAL_H
#define KILN_DATA_INTERNAL_H

#include "../ops/ops_internal.h"
#include "kiln/data.h"

/* Reads a whole file into a malloc'ed buffer (with one extra NUL byte after it), inflating
 * it when its content is gzip. *was_gzip tells which (may be NULL). Errors go to
 * kiln_last_error, prefixed "op: path: ". */
kiln_status kiln__data_read_file(const char *op, const char *path, unsigned char **buf, size_t *len, bool *was_gzip);

/* True when path ends in ".gz". */
bool kiln__data_gz_name(const char *path);

/* xoshiro256** seeded through splitmix64: the same stream on every machine. */
typedef struct kiln__rng {
    uint64_t s[4];
} kiln__rng;

/* A generator for (seed, a, b, stream): independent streams for shuffles and augmentation. */
void kiln__rng_init(kiln__rng *r, uint64_t seed, uint64_t a, uint64_t b, uint64_t stream);
uint64_t kiln__rng_next(kiln__rng *r);
/* Uniform in [0, n) without modulo bias; n > 0. */
uint64_t kiln__rng_below(kiln__rng *r, uint64_t n);

#endif

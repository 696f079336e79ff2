/* src/device/kernels_embedded.h - the table of cl_kernels sources that tools/embed_cl
 * writes into the library at build time. */
#ifndef KILN_KERNELS_EMBEDDED_H
#define KILN_KERNELS_EMBEDDED_H

#include <stddef.h>

typedef struct kiln__embedded_source {
    const char *name; /* file name without directory and ".cl" */
    const unsigned char *data;
    size_t len;
} kiln__embedded_source;

extern const kiln__embedded_source kiln__embedded_sources[];
extern const size_t kiln__n_embedded_sources;

#endif

/* tests/fuzz/fuzz_idx.c - fuzzes the IDX reader: kiln_idx_parse on the raw bytes and, for
 * inputs that start with the gzip magic, kiln_idx_load on them as a file (the inflating
 * path). Either a parse whose header, count and values agree with the input, or NULL with
 * a status and a message; never a crash, a leak or a read outside the input. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

#include <kiln/kiln.h>

#include "fuzz.h"

static char gz_path[256];

static void remove_tmp(void) {
    if (gz_path[0]) unlink(gz_path);
}

/* Checks a successful parse against the uncompressed bytes it came from (raw != NULL). */
static void check_idx(const kiln_idx *idx, const uint8_t *raw, size_t len) {
    FUZZ_CHECK(idx->ndim >= 1 && idx->ndim <= KILN_MAX_DIMS, "ndim %d", idx->ndim);
    int64_t count = 1;
    bool zero = false;
    for (int d = 0; d < idx->ndim; d++) {
        FUZZ_CHECK(idx->dims[d] >= 0, "dim %d is %lld", d, (long long)idx->dims[d]);
        zero |= idx->dims[d] == 0;
    }
    for (int d = 0; d < idx->ndim && !zero; d++) { /* a zero dim makes any other size valid */
        FUZZ_CHECK(count <= INT64_MAX / (idx->dims[d] ? idx->dims[d] : 1), "count overflows");
        count *= idx->dims[d];
    }
    if (zero) count = 0;
    FUZZ_CHECK(count == idx->count, "count %lld, dims say %lld", (long long)idx->count, (long long)count);
    static const size_t sizes[] = {[0x08] = 1, [0x09] = 1, [0x0B] = 2, [0x0C] = 4, [0x0D] = 4, [0x0E] = 8};
    FUZZ_CHECK((int)idx->type >= 0x08 && (int)idx->type <= 0x0E && sizes[idx->type] == idx->elem_size,
               "type 0x%02x with %zu-byte elements", (int)idx->type, idx->elem_size);
    FUZZ_CHECK(strcmp(kiln_idx_type_name(idx->type), "invalid") != 0, "type name");
    if (raw) {
        size_t hdr = 4 + 4 * (size_t)idx->ndim;
        FUZZ_CHECK(hdr + (size_t)idx->count * idx->elem_size == len, "%lld values of %zu bytes in a %zu-byte input",
                   (long long)idx->count, idx->elem_size, len);
        /* values are the big-endian input, in host order */
        for (int64_t i = 0; i < idx->count; i++) {
            const uint8_t *p = raw + hdr + (size_t)i * idx->elem_size;
            uint64_t u = 0;
            for (size_t k = 0; k < idx->elem_size; k++) u = u << 8 | p[k];
            double want;
            switch (idx->type) {
            case KILN_IDX_U8: want = (uint8_t)u; break;
            case KILN_IDX_I8: want = (int8_t)(uint8_t)u; break;
            case KILN_IDX_I16: want = (int16_t)(uint16_t)u; break;
            case KILN_IDX_I32: want = (int32_t)(uint32_t)u; break;
            case KILN_IDX_F32: {
                uint32_t w = (uint32_t)u;
                float f;
                memcpy(&f, &w, 4);
                want = f;
                break;
            }
            default: {
                double f;
                memcpy(&f, &u, 8);
                want = f;
            }
            }
            double got = kiln_idx_value(idx, i);
            FUZZ_CHECK(got == want || (isnan(got) && isnan(want)), "value %lld: %g, input says %g", (long long)i, got,
                       want);
        }
    } else {
        for (int64_t i = 0; i < idx->count; i++) (void)kiln_idx_value(idx, i); /* every value readable */
    }
    FUZZ_CHECK(isnan(kiln_idx_value(idx, -1)) && isnan(kiln_idx_value(idx, idx->count)), "out-of-range value");
}

static void check_failure(const char *what) {
    FUZZ_CHECK(kiln_last_status() != KILN_OK, "%s failed without a status", what);
    FUZZ_CHECK(kiln_last_error()[0] != '\0', "%s failed without a message", what);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kiln_idx *idx = kiln_idx_parse(data, size, "fuzz-input");
    if (idx) {
        FUZZ_CHECK(kiln_last_status() == KILN_OK, "parsed with status %d", (int)kiln_last_status());
        check_idx(idx, data, size);
        kiln_idx_free(idx);
    } else {
        check_failure("kiln_idx_parse");
        FUZZ_CHECK(strstr(kiln_last_error(), "fuzz-input") != NULL, "message does not name the source: %s",
                   kiln_last_error());
    }
    if (size >= 2 && data[0] == 0x1f && data[1] == 0x8b) {
        if (!gz_path[0]) {
            snprintf(gz_path, sizeof gz_path, "%s/kiln-fuzz-idx-%ld.gz", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
                     (long)getpid());
            atexit(remove_tmp);
        }
        FILE *f = fopen(gz_path, "wb");
        FUZZ_CHECK(f && fwrite(data, 1, size, f) == size && fclose(f) == 0, "cannot write %s", gz_path);
        idx = kiln_idx_load(gz_path);
        if (idx) {
            check_idx(idx, NULL, 0);
            kiln_idx_free(idx);
        } else {
            check_failure("kiln_idx_load");
        }
    }
    return 0;
}

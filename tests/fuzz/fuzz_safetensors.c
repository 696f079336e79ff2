/* tests/fuzz/fuzz_safetensors.c - fuzzes the safetensors reader (kiln_safetensors_parse):
 * any bytes either parse into entries that keep the format's promises (names unique and
 * found, byte ranges inside the file, every entry converts) or fail with
 * KILN_ERR_CORRUPT and a message naming the source; never a crash, a leak or a read
 * outside the input.
 *
 * The parser reports through a context, so one is opened once (KILN_DEVICE, else the
 * default device); only small entries are uploaded to it, the rest is host code. */
#include <string.h>

#include <kiln/kiln.h>
#include "io/io_internal.h"

#include "fuzz.h"

static kiln_ctx *ctx;
static char skip[512];

static void close_ctx(void) {
    kiln_close(ctx);
    ctx = NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    if (ctx || skip[0]) return 0;
    if (kiln_open(&ctx, NULL) != KILN_OK) {
        snprintf(skip, sizeof skip, "no OpenCL device: %s", kiln_last_error());
        fprintf(stderr, "fuzz harness skipped: %s\n", skip); /* scripts/fuzz reports it */
        ctx = NULL;
        return 0;
    }
    atexit(close_ctx);
    return 0;
}

const char *fuzz_skip_reason(void) { return skip[0] ? skip : NULL; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!ctx) LLVMFuzzerInitialize(NULL, NULL);
    if (!ctx) return 0;
    kiln_error_clear(ctx);
    int64_t tensors_before = kiln_ctx_num_tensors(ctx);
    kiln_safetensors *f = kiln_safetensors_parse(ctx, data, size, "fuzz-input");
    if (!f) {
        kiln_status s = kiln_error_status(ctx);
        FUZZ_CHECK(s == KILN_ERR_CORRUPT || s == KILN_ERR_HOST_OUT_OF_MEMORY, "parse failed with %s: %s",
                   kiln_status_name(s), kiln_error_message(ctx));
        FUZZ_CHECK(strstr(kiln_error_message(ctx), "fuzz-input") != NULL, "message does not name the source: %s",
                   kiln_error_message(ctx));
        kiln_error_clear(ctx);
        return 0;
    }
    FUZZ_CHECK(kiln_error_status(ctx) == KILN_OK, "parsed, yet the context holds %s", kiln_error_message(ctx));
    int n = kiln_safetensors_num_tensors(f);
    FUZZ_CHECK(n >= 0 && n <= 65536, "count %d", n);
    int64_t bytes = 0;
    for (int i = 0; i < n; i++) {
        const char *name = kiln_safetensors_name(f, i);
        const char *dtype = kiln_safetensors_dtype(f, i);
        const int64_t *shape = NULL;
        int nd = kiln_safetensors_shape(f, i, &shape);
        FUZZ_CHECK(name && dtype && shape, "entry %d incomplete", i);
        FUZZ_CHECK(nd >= 0 && nd <= KILN_MAX_DIMS, "entry %d: %d dims", i, nd);
        FUZZ_CHECK(kiln_safetensors_find(f, name) == i, "entry %d: names are not unique", i);
        const kiln__st_entry *e = &f->e[i];
        int64_t numel = 1;
        for (int d = 0; d < nd; d++) {
            FUZZ_CHECK(shape[d] >= 0, "entry %d: negative size", i);
            numel *= shape[d];
        }
        FUZZ_CHECK(numel == e->numel, "entry %d: numel %lld, shape says %lld", i, (long long)e->numel,
                   (long long)numel);
        FUZZ_CHECK(e->begin >= 0 && e->begin <= e->end && (uint64_t)e->end <= f->data_len,
                   "entry %d: range [%lld, %lld) outside %zu data bytes", i, (long long)e->begin, (long long)e->end,
                   f->data_len);
        bytes += e->end - e->begin;
        /* every entry converts on the host (integers out of i32 range are a clean error) */
        void *host = malloc((size_t)(numel ? numel : 1) * 4);
        FUZZ_CHECK(host != NULL, "out of memory for %lld elements", (long long)numel);
        kiln_status s = kiln__st_convert(ctx, f, e, host);
        FUZZ_CHECK(s == KILN_OK || s == KILN_ERR_RANGE, "convert: %s", kiln_error_message(ctx));
        free(host);
        kiln_error_clear(ctx);
        /* small ones also go to the device, as a load would */
        if (numel <= 64) {
            kiln_tensor *t = kiln_safetensors_tensor(f, i);
            if (t) {
                FUZZ_CHECK(kiln_tensor_numel(t) == numel, "tensor of entry %d has %lld elements", i,
                           (long long)kiln_tensor_numel(t));
                kiln_tensor_free(t);
            } else {
                FUZZ_CHECK(kiln_error_status(ctx) == KILN_ERR_RANGE, "tensor of entry %d: %s", i,
                           kiln_error_message(ctx));
            }
            kiln_error_clear(ctx);
        }
    }
    FUZZ_CHECK((uint64_t)bytes == f->data_len, "entries cover %lld of %zu data bytes", (long long)bytes, f->data_len);
    FUZZ_CHECK(kiln_safetensors_name(f, n) == NULL && kiln_safetensors_name(f, -1) == NULL, "out-of-range entry");
    for (int i = 0; i < f->nmeta; i++)
        FUZZ_CHECK(kiln_safetensors_meta(f, f->meta[i].key) != NULL, "metadata key %d not found", i);
    kiln_safetensors_close(f);
    FUZZ_CHECK(kiln_ctx_num_tensors(ctx) == tensors_before, "tensors leaked: %lld -> %lld", (long long)tensors_before,
               (long long)kiln_ctx_num_tensors(ctx));
    return 0;
}

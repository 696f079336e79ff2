/* tests/fuzz/fuzz_csv.c - fuzzes the CSV reader (kiln_csv_parse). The first input byte
 * picks the options (delimiter and header mode, an invalid one now and then), the rest is
 * the text. Either a table whose shape, line numbers and header names are consistent, or
 * NULL with a status and a message; never a crash, a leak or a read outside the input. */
#include <math.h>
#include <string.h>

#include <kiln/kiln.h>

#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    static const char delims[8] = {0, ',', ';', '\t', ' ', '|', ':', '"'}; /* '"' is refused */
    uint8_t o = data[0];
    kiln_csv_opts opts = {.delimiter = delims[o & 7], .header = (kiln_csv_header)((o >> 3) & 3)}; /* 3 is invalid */
    const uint8_t *text = data + 1;
    size_t len = size - 1;
    kiln_csv *csv = kiln_csv_parse(text, len, "fuzz-input", (o & 0x80) ? NULL : &opts);
    if (!csv) {
        FUZZ_CHECK(kiln_last_status() != KILN_OK, "failed without a status");
        FUZZ_CHECK(strstr(kiln_last_error(), "fuzz-input") != NULL, "message does not name the source: %s",
                   kiln_last_error());
        return 0;
    }
    FUZZ_CHECK(!(o & 0x80) ? opts.delimiter != '"' && opts.header != 3 : 1, "invalid options accepted");
    FUZZ_CHECK(kiln_last_status() == KILN_OK, "parsed with a status");
    FUZZ_CHECK(csv->cols >= 1 && csv->rows >= 0, "%lld x %lld table", (long long)csv->rows, (long long)csv->cols);
    FUZZ_CHECK(csv->data && csv->lines, "NULL arrays");
    /* every cell came from at least one byte and a separator */
    FUZZ_CHECK((uint64_t)csv->rows * (uint64_t)csv->cols <= len, "%lld cells from %zu bytes",
               (long long)(csv->rows * csv->cols), len);
    double sum = 0;
    for (int64_t i = 0; i < csv->rows * csv->cols; i++) sum += isnan(csv->data[i]) ? 0 : 1; /* all readable */
    (void)sum;
    for (int64_t r = 0; r < csv->rows; r++) {
        FUZZ_CHECK(csv->lines[r] >= 1 && (uint64_t)csv->lines[r] <= len + 1, "row %lld on line %lld", (long long)r,
                   (long long)csv->lines[r]);
        FUZZ_CHECK(r == 0 || csv->lines[r] > csv->lines[r - 1], "rows %lld and %lld not in line order",
                   (long long)r - 1, (long long)r);
    }
    if (csv->names) {
        FUZZ_CHECK(opts.header != KILN_CSV_HEADER_NO || (o & 0x80), "a header with header=NO");
        for (int64_t c = 0; c < csv->cols; c++) {
            FUZZ_CHECK(csv->names[c] != NULL, "header name %lld is NULL", (long long)c);
            FUZZ_CHECK(strlen(csv->names[c]) <= len, "header name %lld longer than the input", (long long)c);
        }
    } else {
        FUZZ_CHECK(opts.header != KILN_CSV_HEADER_YES || (o & 0x80), "no header with header=YES");
    }
    kiln_csv_free(csv);
    return 0;
}

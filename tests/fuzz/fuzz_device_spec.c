/* tests/fuzz/fuzz_device_spec.c - fuzzes the device spec parser behind KILN_DEVICE
 * (kiln_device_find: "gpu", "cpu", "P:D", a name fragment, or garbage). Either a device
 * that is really present and matches what the spec says, or KILN_ERR_DEVICE_NOT_FOUND
 * with a message quoting the spec; never a crash or a read past the string. */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <string.h>
#include <strings.h>

#include <kiln/kiln.h>

#include "fuzz.h"

static kiln_device_info all[64];
static int nall;
static char skip[512];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    if (nall || skip[0]) return 0;
    int n = 0;
    if (kiln_devices(all, 64, &n) != KILN_OK || n == 0) {
        snprintf(skip, sizeof skip, "no OpenCL device: %s", kiln_last_error());
        fprintf(stderr, "fuzz harness skipped: %s\n", skip); /* scripts/fuzz reports it */
        return 0;
    }
    nall = n < 64 ? n : 64;
    return 0;
}

const char *fuzz_skip_reason(void) { return skip[0] ? skip : NULL; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!nall) LLVMFuzzerInitialize(NULL, NULL);
    if (!nall) return 0;
    if (size > 4096) return 0;
    char *spec = malloc(size + 1); /* a C string: the input up to its first NUL */
    FUZZ_CHECK(spec != NULL, "out of memory");
    memcpy(spec, data, size);
    spec[size] = '\0';
    kiln_device_info info;
    memset(&info, 0xAB, sizeof info);
    kiln_status s = kiln_device_find(spec, &info);
    if (s == KILN_OK) {
        int k = -1;
        for (int i = 0; i < nall && k < 0; i++)
            if (all[i].platform_index == info.platform_index && all[i].device_index == info.device_index) k = i;
        FUZZ_CHECK(k >= 0, "'%s' gave %d:%d, which kiln_devices does not list", spec, info.platform_index,
                   info.device_index);
        FUZZ_CHECK(memchr(info.name, 0, sizeof info.name) != NULL, "name not terminated");
        FUZZ_CHECK(strcmp(info.name, all[k].name) == 0, "'%s': name '%s', listed as '%s'", spec, info.name,
                   all[k].name);
        int p, d;
        char tail;
        if (isdigit((unsigned char)spec[0]) && sscanf(spec, "%d:%d%c", &p, &d, &tail) == 2 &&
            strspn(spec, "0123456789:") == strlen(spec))
            FUZZ_CHECK(p == info.platform_index && d == info.device_index, "'%s' gave %d:%d", spec, info.platform_index,
                       info.device_index);
        if (strcasecmp(spec, "cpu") == 0) FUZZ_CHECK(info.type == KILN_DEVICE_CPU, "'cpu' gave another type");
        if (strcasecmp(spec, "gpu") == 0) FUZZ_CHECK(info.type == KILN_DEVICE_GPU, "'gpu' gave another type");
    } else {
        FUZZ_CHECK(s == KILN_ERR_DEVICE_NOT_FOUND, "'%s': status %s", spec, kiln_status_name(s));
        FUZZ_CHECK(strstr(kiln_last_error(), "no OpenCL device matches") != NULL, "message: %s", kiln_last_error());
    }
    free(spec);
    return 0;
}

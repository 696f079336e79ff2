/* tests/fuzz/fuzz.h - what the fuzz harnesses share: a check that crashes the input (so
 * libFuzzer records it and the replay test fails) and the optional skip hook.
 *
 * Each fuzz_<name>.c defines LLVMFuzzerTestOneInput (and may define LLVMFuzzerInitialize).
 * Built with -fsanitize=fuzzer it is a libFuzzer target (scripts/fuzz); linked with
 * replay.c it is a plain program that feeds it every file of a corpus directory (the
 * regression test `fuzz_<name>` of the unit suite, and what valgrind runs). */
#ifndef KILN_FUZZ_H
#define KILN_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* An invariant of the parser's contract failed: report and crash. */
#define FUZZ_CHECK(cond, ...)                                                                                          \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "%s:%d: FUZZ_CHECK(%s) failed: ", __FILE__, __LINE__, #cond);                              \
            fprintf(stderr, __VA_ARGS__);                                                                              \
            fputc('\n', stderr);                                                                                       \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);
/* A harness that cannot run here (no OpenCL device) returns the reason; replay.c then
 * exits 77 (skip). Defined only by harnesses that need a device. */
const char *fuzz_skip_reason(void);

#endif

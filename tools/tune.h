/* tools/tune.h - `kiln tune`: searches CLBlast's GEMM parameters and kiln's own GEMM kernels'
 * parameter set for the device. */
#ifndef KILN_TOOLS_TUNE_H
#define KILN_TOOLS_TUNE_H

/* `kiln tune [--quick] [...]`; returns the process exit code. */
int kiln_cmd_tune(int argc, char **argv);

#endif

/* tools/ops.h - `kiln ops`: the op inventory (backward, test references, PyTorch golden
 * coverage) and a smoke run of every op on every device. */
#ifndef KILN_TOOLS_OPS_H
#define KILN_TOOLS_OPS_H

/* argv holds the arguments after "ops". Returns the process exit status: 0 every op
 * passed on every device run, 1 an op failed, 2 bad usage, 77 no OpenCL device (nothing
 * could be run). */
int kiln_cmd_ops(int argc, char **argv);

#endif

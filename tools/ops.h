/* tools/ops.h - `kiln ops`: the op inventory (backward, test references, PyTorch golden
 * coverage) and a smoke run of every op on every device, both from src/ops/registry.h. */
#ifndef KILN_TOOLS_OPS_H
#define KILN_TOOLS_OPS_H

#include <stdbool.h>
#include <stddef.h>

#include <kiln/kiln.h>

/* argv holds the arguments after "ops". Returns the process exit status: 0 every op
 * passed on every device run, 1 an op failed, 2 bad usage, 77 no OpenCL device (nothing
 * could be run). */
int kiln_cmd_ops(int argc, char **argv);

/* The smoke run of op (a kiln__op of src/ops/registry.h) on ctx: its forward on small
 * inputs against a host computation, finite outputs, and - as the registry says - that a
 * differentiable op's output records a backward rule (inputs requiring grad) and that one
 * backward gives every input a finite gradient, or that a non-differentiable one records
 * none. dt: the dtype of the float inputs; with KILN_F16 or KILN_BF16 the host values are
 * rounded to it, the op must return that dtype (or integers) and match the reference
 * within one more rounding (ops that take no half data pass at once). true when it passed;
 * else why holds what failed. */
bool ops_smoke(kiln_ctx *ctx, int op, kiln_dtype dt, char *why, size_t cap);

#endif

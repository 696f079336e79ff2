/* src/ops/reduce.c - placeholder until the op family lands. */
#include "../kiln_internal.h"

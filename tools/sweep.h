/* tools/sweep.h - `kiln sweep CONFIG`: hyperparameter search over a training program
 * (grid, seeded random, asynchronous successive halving), with a resumable journal. */
#ifndef KILN_TOOLS_SWEEP_H
#define KILN_TOOLS_SWEEP_H

/* `kiln sweep CONFIG [--out DIR] [--strategy S] [--parallel N] [--show]`; returns the
 * process exit code: 0 when the sweep finished (failed trials included), 1 when it could
 * not run (journal, output files), 2 on a usage or config error (the message names the
 * file and line), 130 when interrupted by a signal (run it again to resume). */
int kiln_cmd_sweep(int argc, char **argv);

#endif

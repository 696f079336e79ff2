/* src/device/affinity.c - POCL's worker threads pinned one to a core (POCL_AFFINITY=1) where
 * that is safe, before the process's first OpenCL call.
 *
 * POCL 3.1 leaves its pthread workers to the kernel's scheduler. Woken together for a
 * launch after the queue was idle, both of a 2-core machine's workers were often placed on
 * one core for the next ten-odd milliseconds or longer: the same product took 0.50 or
 * 0.95 ms (128 x 490 x 1024) and 0.20 or 0.37 ms (64 x 6272 x 64 A B^T) from run to run;
 * with POCL_AFFINITY=1, which pins worker i to CPU i, 0.50-0.55 and 0.20-0.22 in every run
 * (README.md, "Per-ISA tables"). POCL pins to CPU i whatever the process may run on, and
 * aborts where that fails, so kiln asks for it only when worker i's CPU i is certainly
 * allowed and the cores are not shared by design:
 *   - POCL_AFFINITY is not set (a user's choice either way stands), and neither is
 *     POCL_MAX_PTHREAD_COUNT or POCL_CPU_MAX_CU_COUNT (other thread counts than the CPUs');
 *   - the process may run on every online CPU, and they are numbered 0 .. n-1 (no taskset,
 *     cgroup cpuset or MPI binding narrowed it);
 *   - it is not one of several MPI ranks on the node (OMPI_COMM_WORLD_LOCAL_SIZE,
 *     MPI_LOCALNRANKS or PMI_LOCAL_SIZE above 1: their workers would share CPU i);
 *   - KILN_POCL_AFFINITY is not "off" or "0".
 * Only kiln's first device enumeration in the process sets it, before its first OpenCL call
 * (POCL reads it when it starts its workers; a program that started POCL itself before
 * kiln_open keeps its workers as they are). Elsewhere than Linux it does nothing.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "device_internal.h"

static bool several_local_ranks(void) {
    static const char *const vars[] = {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && atol(v) > 1) return true;
    }
    return false;
}

bool kiln__pocl_affinity_safe(void) {
#ifdef __linux__
    const char *off = getenv("KILN_POCL_AFFINITY");
    if (off && (strcmp(off, "off") == 0 || strcmp(off, "0") == 0)) return false;
    if (getenv("POCL_AFFINITY") || getenv("POCL_MAX_PTHREAD_COUNT") || getenv("POCL_CPU_MAX_CU_COUNT")) return false;
    if (several_local_ranks()) return false;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;
    if (online < 2 || online > CPU_SETSIZE || sched_getaffinity(0, sizeof set, &set) != 0) return false;
    if (CPU_COUNT(&set) != online) return false;
    for (long i = 0; i < online; i++)
        if (!CPU_ISSET((int)i, &set)) return false;
    return true;
#else
    return false;
#endif
}

void kiln__pocl_affinity_once(void) {
    static atomic_flag done = ATOMIC_FLAG_INIT;
    if (atomic_flag_test_and_set(&done)) return;
    if (kiln__pocl_affinity_safe()) setenv("POCL_AFFINITY", "1", 0);
}

/* tests/test_cache.c - the disk program cache across processes: a cold process builds and
 * writes, a second process loads the binaries instead of building; corrupt files and
 * KILN_CACHE=off fall back to builds. Prints the time from process start to the first
 * finished kernel for each case. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

static double mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Child: open the device, run kernels from two programs, report the cache counters. */
static int child(const char *spec, double t_exec) {
    double t0 = mono_ms();
    kiln_ctx *ctx;
    if (kiln_open(&ctx, spec) != KILN_OK) return 3;
    kiln_tensor *t = kiln_full(ctx, 2.0f, 1, (int64_t[]){1000});
    kiln_tensor *v = kiln_contiguous(ctx, kiln_slice(ctx, t, 0, 1, 1000, 3));
    float x = kiln_tensor_item(kiln_slice(ctx, v, 0, 5, 6, 1));
    double t1 = mono_ms();
    kiln_cache_stats s;
    kiln_cache_stats_get(ctx, &s);
    printf("%g %llu %llu %llu %llu %.1f %.1f %.1f\n", x, (unsigned long long)s.builds, (unsigned long long)s.disk_hits,
           (unsigned long long)s.disk_writes, (unsigned long long)s.disk_faults, s.build_ms, t1 - t0, t1 - t_exec);
    kiln_close(ctx);
    return 0;
}

typedef struct result {
    float x;
    unsigned long long builds, hits, writes, faults;
    double build_ms, first_ms, since_exec_ms, wall_ms;
} result;

/* Runs this program as a child with the given environment; parses its report. */
static bool run_child(const char *self, const char *spec, const char *cache_dir, const char *cache, bool pocl_cache,
                      result *r) {
    int fd[2];
    if (pipe(fd) != 0) return false;
    double t0 = mono_ms();
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd[1], 1);
        close(fd[0]);
        setenv("KILN_CACHE_DIR", cache_dir, 1);
        if (cache)
            setenv("KILN_CACHE", cache, 1);
        else
            unsetenv("KILN_CACHE");
        /* POCL keeps its own cache of compiled kernels; off, a cold start is really cold */
        if (!pocl_cache) setenv("POCL_KERNEL_CACHE", "0", 1);
        char t[64];
        snprintf(t, sizeof t, "%.3f", t0);
        execl(self, self, "--child", spec, t, (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    char buf[512] = {0};
    ssize_t n = read(fd[0], buf, sizeof buf - 1);
    close(fd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    r->wall_ms = mono_ms() - t0;
    if (n <= 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return false;
    return sscanf(buf, "%f %llu %llu %llu %llu %lf %lf %lf", &r->x, &r->builds, &r->hits, &r->writes, &r->faults,
                  &r->build_ms, &r->first_ms, &r->since_exec_ms) == 8;
}

static int count_files(const char *dir, bool corrupt) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strstr(e->d_name, ".clbin")) continue;
        n++;
        if (!corrupt) continue;
        char p[512];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        FILE *f = fopen(p, "r+b");
        if (f) { /* flip bytes in the middle of the binary */
            fseek(f, 0, SEEK_END);
            long len = ftell(f);
            fseek(f, len / 2, SEEK_SET);
            fputs("garbage-garbage", f);
            fclose(f);
        }
    }
    closedir(d);
    return n;
}

static void report(const char *what, const result *r) {
    printf("%-34s first kernel finished %7.1f ms after kiln_open began (%7.1f ms after exec); "
           "builds %llu, disk hits %llu, writes %llu, faults %llu, build/load %6.1f ms\n",
           what, r->first_ms, r->since_exec_ms, r->builds, r->hits, r->writes, r->faults, r->build_ms);
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "--child") == 0) return child(argv[2], atof(argv[3]));
    char specs[16][16];
    int nd = h_devices(specs, 16);
    for (int i = 0; i < nd; i++) {
        char dir[] = "/tmp/kiln-test-cache-XXXXXX";
        if (!mkdtemp(dir)) {
            CHECK(0, "mkdtemp");
            continue;
        }
        h_device = specs[i];
        result cold, warm, bad, off;
        CHECK(run_child(argv[0], specs[i], dir, NULL, false, &cold), "cold child failed");
        CHECK(cold.x == 2.0f && cold.builds >= 1 && cold.writes == cold.builds && cold.hits == 0,
              "cold: value %g, %llu builds, %llu writes, %llu hits", cold.x, cold.builds, cold.writes, cold.hits);
        int files = count_files(dir, false);
        CHECK(files == (int)cold.writes, "%d cache files for %llu writes", files, cold.writes);
        CHECK(run_child(argv[0], specs[i], dir, NULL, false, &warm), "warm child failed");
        CHECK(warm.x == 2.0f && warm.builds == 0 && warm.hits == cold.builds && warm.faults == 0,
              "warm: a second process loads every program from disk (%llu builds, %llu hits)", warm.builds, warm.hits);
        count_files(dir, true);
        CHECK(run_child(argv[0], specs[i], dir, NULL, false, &bad), "child with corrupt cache failed");
        CHECK(bad.x == 2.0f && bad.faults >= 1 && bad.builds == bad.faults && bad.writes == bad.builds,
              "corrupt files are ignored, rebuilt and rewritten (%llu faults, %llu builds)", bad.faults, bad.builds);
        char dir2[] = "/tmp/kiln-test-cache-XXXXXX";
        if (mkdtemp(dir2)) {
            CHECK(run_child(argv[0], specs[i], dir2, "off", false, &off), "KILN_CACHE=off child failed");
            CHECK(off.x == 2.0f && off.writes == 0 && off.hits == 0 && count_files(dir2, false) == 0,
                  "KILN_CACHE=off writes nothing");
            rmdir(dir2);
        }
        /* kiln_cache_clear empties the directory it is pointed at */
        setenv("KILN_CACHE_DIR", dir, 1);
        kiln_cache_summary sum;
        CHECK(kiln_cache_summary_get(&sum) == KILN_OK && sum.files == (uint64_t)files && sum.bytes > 0,
              "summary: %llu files", (unsigned long long)sum.files);
        CHECK(kiln_cache_clear() == KILN_OK && count_files(dir, false) == 0, "clear removes the files");
        unsetenv("KILN_CACHE_DIR");
        rmdir(dir);
        result warm_pocl;
        setenv("KILN_CACHE_DIR", dir, 1);
        kiln_cache_clear();
        bool have_wp = run_child(argv[0], specs[i], dir, NULL, true, &warm_pocl) &&
                       run_child(argv[0], specs[i], dir, NULL, true, &warm_pocl);
        kiln_cache_clear();
        unsetenv("KILN_CACHE_DIR");
        report("cold (empty cache):", &cold);
        if (have_wp) report("warm, POCL's own cache also on:", &warm_pocl);
        report("warm (second process):", &warm);
        report("corrupt cache files:", &bad);
        report("KILN_CACHE=off:", &off);
    }
    return h_finish();
}

/* tests/hpsweep_objective.c - a stand-in training program for tests/test_hpsweep.c: its
 * "metric" is a known function of its flags, so a search's result can be checked.
 *
 *   hpsweep_objective [--x X] [--y Y] [--cat a|b|c] [--epochs N] [--sleep-ms MS]
 *                     [--mode ok|fail|crash|hang|hang_term|nometric] [--log PATH]
 *
 * score = (1 - (x - 0.3)^2 - (y - 0.7)^2 + {a: 0, b: 0.1, c: -0.1}) * (1 - 0.5^epoch), printed
 * as "epoch=E score=V" after each epoch and "score=V" at the end: the optimum is x = 0.3,
 * y = 0.7, cat b, and the ranking of two settings is the same after every epoch. --log
 * appends "x=X y=Y cat=C epochs=N" to PATH at the start of every run (one write, O_APPEND), so
 * the test counts how often each trial ran. Modes: fail exits 3; crash dies of SIGSEGV after
 * the first epoch; hang sleeps after the first epoch until killed; hang_term does too and
 * ignores SIGTERM; nometric prints no score. When the sweep passed KILN_SWEEP_X it must equal
 * --x (else exit 4): the environment carries the same values as the flags. */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *xs = "0", *ys = "0", *cat = "a", *mode = "ok", *log = NULL;
    int epochs = 1, sleep_ms = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--x"))
            xs = v;
        else if (!strcmp(k, "--y"))
            ys = v;
        else if (!strcmp(k, "--cat"))
            cat = v;
        else if (!strcmp(k, "--epochs"))
            epochs = atoi(v);
        else if (!strcmp(k, "--sleep-ms"))
            sleep_ms = atoi(v);
        else if (!strcmp(k, "--mode"))
            mode = v;
        else if (!strcmp(k, "--log"))
            log = v;
        else {
            fprintf(stderr, "hpsweep_objective: unknown option '%s'\n", k);
            return 2;
        }
    }
    if (argc % 2 == 0) {
        fprintf(stderr, "hpsweep_objective: '%s' needs a value\n", argv[argc - 1]);
        return 2;
    }
    const char *env = getenv("KILN_SWEEP_X");
    if (env && strcmp(env, xs)) {
        fprintf(stderr, "hpsweep_objective: KILN_SWEEP_X=%s but --x %s\n", env, xs);
        return 4;
    }
    if (log) {
        char line[256];
        int n = snprintf(line, sizeof line, "x=%s y=%s cat=%s epochs=%d\n", xs, ys, cat, epochs);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd < 0 || write(fd, line, (size_t)n) != n) return 5;
        close(fd);
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    double x = atof(xs), y = atof(ys);
    double score = 1 - (x - 0.3) * (x - 0.3) - (y - 0.7) * (y - 0.7);
    score += !strcmp(cat, "b") ? 0.1 : !strcmp(cat, "c") ? -0.1 : 0;
    if (!strcmp(mode, "fail")) {
        fprintf(stderr, "hpsweep_objective: failing on purpose\n");
        return 3;
    }
    if (!strcmp(mode, "hang_term")) signal(SIGTERM, SIG_IGN);
    double v = 0;
    for (int e = 1; e <= epochs; e++) {
        if (sleep_ms > 0) nanosleep(&(struct timespec){sleep_ms / 1000, (sleep_ms % 1000) * 1000000L}, NULL);
        v = score * (1 - pow(0.5, e));
        if (strcmp(mode, "nometric")) printf("epoch=%d score=%.6f\n", e, v);
        if (!strcmp(mode, "crash")) {
            printf("about to crash\n");
            setrlimit(RLIMIT_CORE, &(struct rlimit){0, 0}); /* no time spent writing a core file */
            signal(SIGSEGV, SIG_DFL); /* the default action even where a sanitizer installed a handler */
            raise(SIGSEGV);
        }
        if (!strncmp(mode, "hang", 4)) {
            printf("hanging\n");
            for (;;) pause();
        }
    }
    if (strcmp(mode, "nometric")) printf("score=%.6f\n", v);
    return 0;
}

/* tests/test_hpsweep.c - `kiln sweep` (tools/sweep.c) on tests/hpsweep_objective.c, whose
 * metric is a known function of its flags: grid covers the grid, random search finds the
 * optimum region, successive halving stops the bad trials at the first rung and keeps the
 * good ones, a sweep killed mid-run resumes without losing or repeating a trial, crashing,
 * failing and hanging trials are recorded, and a malformed config names its line.
 *
 *   test_hpsweep OBJECTIVE WORKDIR
 *
 * Each sweep runs kiln_cmd_sweep in a child process (its output in WORKDIR/NAME.out), so
 * the test can kill it as a user would. */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../tools/sweep.h"

static int checks, failed;
#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        checks++;                                                                                                      \
        if (!(cond)) {                                                                                                 \
            failed++;                                                                                                  \
            fprintf(stderr, "%s:%d CHECK(%s) failed: ", __FILE__, __LINE__, #cond);                                    \
            fprintf(stderr, __VA_ARGS__);                                                                              \
            fputc('\n', stderr);                                                                                       \
        }                                                                                                              \
    } while (0)

static const char *objective, *work;

static char *path_of(const char *name) {
    static char buf[8][4096];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 4096, "%s/%s", work, name);
    return p;
}

static void write_file(const char *path, const char *fmt, ...) {
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
        exit(1);
    }
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fclose(f);
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return calloc(1, 1);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = calloc((size_t)n + 1, 1);
    if (fread(s, 1, (size_t)n, f) != (size_t)n) s[0] = 0;
    fclose(f);
    return s;
}

static int count_substr(const char *s, const char *sub) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, sub)); p += strlen(sub)) n++;
    return n;
}

/* Starts `kiln sweep CONF --out OUTDIR [extra [extra2]]` in a child, output to OUT.out. */
static pid_t spawn_sweep2(const char *conf, const char *outdir, const char *outfile, const char *extra,
                          const char *extra2) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(outfile, "w", stdout) || dup2(fileno(stdout), 2) < 0) _exit(99);
        char *argv[6] = {(char *)conf, "--out", (char *)outdir, NULL, NULL, NULL};
        int argc = 3;
        if (extra) argv[argc++] = (char *)extra;
        if (extra2) argv[argc++] = (char *)extra2;
        int rc = kiln_cmd_sweep(argc, argv);
        fflush(NULL);
        _exit(rc);
    }
    return pid;
}

static pid_t spawn_sweep(const char *conf, const char *outdir, const char *outfile, const char *extra) {
    return spawn_sweep2(conf, outdir, outfile, extra, NULL);
}

static int wait_rc(pid_t pid) {
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Runs the sweep NAME (config NAME.conf, out NAME.sweep); returns its exit code. */
static int sweep(const char *name, const char *extra) {
    char conf[4096], out[4096], log[4096];
    snprintf(conf, sizeof conf, "%s/%s.conf", work, name);
    snprintf(out, sizeof out, "%s/%s.sweep", work, name);
    snprintf(log, sizeof log, "%s/%s.out", work, name);
    return wait_rc(spawn_sweep(conf, out, log, extra));
}

/* ---- trials.csv ------------------------------------------------------------------------- */

#define MAXROWS 256
#define MAXCOLS 32
typedef struct table {
    int rows, cols;
    char *head[MAXCOLS];
    char *cell[MAXROWS][MAXCOLS];
    char *text;
} table;

static void read_csv(const char *path, table *t) {
    memset(t, 0, sizeof *t);
    t->text = read_file(path);
    char *s = t->text;
    int row = -1;
    while (*s && row < MAXROWS) {
        int col = 0;
        for (;;) {
            char *start = s, *w = s;
            if (*s == '"') {
                start = w = ++s;
                for (; *s; s++) {
                    if (*s == '"' && s[1] == '"')
                        *w++ = '"', s++;
                    else if (*s == '"') {
                        s++;
                        break;
                    } else
                        *w++ = *s;
                }
            } else {
                while (*s && *s != ',' && *s != '\n') *w++ = *s++;
            }
            char end = *s;
            *w = 0;
            if (col < MAXCOLS) {
                if (row < 0)
                    t->head[col] = start;
                else
                    t->cell[row][col] = start;
            }
            col++;
            if (end == ',') {
                s++;
                continue;
            }
            if (end == '\n') s++;
            break;
        }
        if (row < 0) t->cols = col;
        row++;
    }
    t->rows = row < 0 ? 0 : row;
}

static const char *cell(const table *t, int row, const char *col) {
    for (int c = 0; c < t->cols; c++)
        if (!strcmp(t->head[c], col)) return t->cell[row][c] ? t->cell[row][c] : "";
    fprintf(stderr, "trials.csv has no column %s\n", col);
    return "";
}

static double num(const table *t, int row, const char *col) {
    const char *s = cell(t, row, col);
    return *s ? strtod(s, NULL) : NAN;
}

static double objective_score(double x, double y, const char *cat, int epochs) {
    double s = 1 - (x - 0.3) * (x - 0.3) - (y - 0.7) * (y - 0.7) +
               (!strcmp(cat, "b")   ? 0.1
                : !strcmp(cat, "c") ? -0.1
                                    : 0);
    return s * (1 - pow(0.5, epochs));
}

/* ---- the tests -------------------------------------------------------------------------- */

static void test_grid(void) {
    write_file(path_of("grid.conf"),
               "# every point of x in {0.1, 0.3, 0.5} x y in {0, 0.5, 1} x cat in {a, b}\n"
               "command = %s --x {x} --y {y} --cat {cat} --epochs {epochs}\n"
               "metric = score\n"
               "strategy = grid\n"
               "epochs = 2\n"
               "parallel = 2\n"
               "grid_points = 3\n"
               "param.x = choice 0.1 0.3 0.5\n"
               "param.y = uniform 0 1\n"
               "param.cat = choice a b\n",
               objective);
    CHECK(sweep("grid", NULL) == 0, "grid sweep failed (tests/hpsweep/grid.out)");
    table t;
    read_csv(path_of("grid.sweep/trials.csv"), &t);
    CHECK(t.rows == 18, "grid: %d trials, expected 3 x 3 x 2 = 18", t.rows);
    int seen[3][3][2] = {{{0}}}, best = -1;
    for (int r = 0; r < t.rows; r++) {
        double x = num(&t, r, "x"), y = num(&t, r, "y");
        const char *cat = cell(&t, r, "cat");
        int xi = (int)lround((x - 0.1) / 0.2), yi = (int)lround(y / 0.5), ci = !strcmp(cat, "b");
        CHECK(xi >= 0 && xi < 3 && yi >= 0 && yi < 3 && fabs(x - (0.1 + 0.2 * xi)) < 1e-9 &&
                  fabs(y - 0.5 * yi) < 1e-9 && (ci || !strcmp(cat, "a")),
              "grid: trial %d off the grid: x=%g y=%g cat=%s", r + 1, x, y, cat);
        if (xi >= 0 && xi < 3 && yi >= 0 && yi < 3) seen[xi][yi][ci]++;
        CHECK(!strcmp(cell(&t, r, "state"), "finished"), "grid: trial %d is %s", r + 1, cell(&t, r, "state"));
        CHECK(fabs(num(&t, r, "score") - objective_score(x, y, cat, 2)) < 1e-5, "grid: trial %d score %g, expected %g",
              r + 1, num(&t, r, "score"), objective_score(x, y, cat, 2));
        if (best < 0 || num(&t, r, "score") > num(&t, best, "score")) best = r;
    }
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++)
            for (int c = 0; c < 2; c++)
                CHECK(seen[a][b][c] == 1, "grid point (%d,%d,%d) run %d times", a, b, c, seen[a][b][c]);
    CHECK(best >= 0 && num(&t, best, "x") == 0.3 && num(&t, best, "y") == 0.5 && !strcmp(cell(&t, best, "cat"), "b"),
          "grid: best is not x=0.3 y=0.5 cat=b");
    char *out = read_file(path_of("grid.out"));
    CHECK(strstr(out, "command: ") && strstr(out, "--x 0.3 --y 0.5 --cat b --epochs 2"),
          "grid: the best command line is not printed:\n%s", out);
    char *svg = read_file(path_of("grid.sweep/sweep.svg"));
    CHECK(strstr(svg, "<svg") && count_substr(svg, "<title>trial ") == 3 * 18,
          "grid: the SVG lacks a point per trial and parameter");
    free(svg);
    free(out);
    free(t.text);
}

static void test_random(void) {
    static const char *conf = "command = %s --x {x} --y {y} --cat {cat}\n"
                              "metric = score\n"
                              "strategy = random\n"
                              "trials = %d\n"
                              "parallel = 2\n"
                              "seed = 7\n"
                              "param.x = uniform 0 1\n"
                              "param.y = uniform 0 1\n"
                              "param.cat = choice a b c\n";
    /* trial i's values depend on the seed and i alone: a shorter sweep draws the same first ones */
    write_file(path_of("random.conf"), conf, objective, 60);
    write_file(path_of("random2.conf"), conf, objective, 10);
    CHECK(sweep("random", NULL) == 0, "random sweep failed (tests/hpsweep/random.out)");
    CHECK(sweep("random2", NULL) == 0, "second random sweep failed");
    table t, u;
    read_csv(path_of("random.sweep/trials.csv"), &t);
    read_csv(path_of("random2.sweep/trials.csv"), &u);
    CHECK(t.rows == 60 && u.rows == 10, "random: %d and %d trials, expected 60 and 10", t.rows, u.rows);
    int best = -1, distinct = 0, cats[3] = {0};
    for (int r = 0; r < t.rows; r++) {
        double x = num(&t, r, "x"), y = num(&t, r, "y");
        CHECK(x >= 0 && x <= 1 && y >= 0 && y <= 1, "random: trial %d outside the space", r + 1);
        if (r < u.rows)
            CHECK(!strcmp(cell(&t, r, "x"), cell(&u, r, "x")) && !strcmp(cell(&t, r, "y"), cell(&u, r, "y")) &&
                      !strcmp(cell(&t, r, "cat"), cell(&u, r, "cat")),
                  "random: the same seed drew other values for trial %d", r + 1);
        int same = 0;
        for (int q = 0; q < r; q++) same |= !strcmp(cell(&t, q, "x"), cell(&t, r, "x"));
        distinct += !same;
        cats[cell(&t, r, "cat")[0] - 'a' < 3 ? cell(&t, r, "cat")[0] - 'a' : 0]++;
        if (best < 0 || num(&t, r, "score") > num(&t, best, "score")) best = r;
    }
    CHECK(distinct == 60, "random: %d distinct x values in 60 trials", distinct);
    CHECK(cats[0] > 5 && cats[1] > 5 && cats[2] > 5, "random: choices drawn %d %d %d times", cats[0], cats[1], cats[2]);
    /* the optimum is x = 0.3, y = 0.7, cat b */
    CHECK(best >= 0 && fabs(num(&t, best, "x") - 0.3) < 0.2 && fabs(num(&t, best, "y") - 0.7) < 0.2 &&
              !strcmp(cell(&t, best, "cat"), "b"),
          "random: best trial %d (x=%s y=%s cat=%s) is not near the optimum", best + 1, cell(&t, best, "x"),
          cell(&t, best, "y"), cell(&t, best, "cat"));
    free(t.text);
    free(u.text);
}

/* Successive halving: 27 trials, rungs 1, 3 and 9 epochs, reduction 3. */
static void test_halving(const char *strat) {
    char name[64];
    snprintf(name, sizeof name, "%s", strat);
    char confname[128];
    snprintf(confname, sizeof confname, "%s.conf", name);
    write_file(path_of(confname),
               "command = %s --x {x} --y {y} --epochs {epochs}\n"
               "metric = score\n"
               "strategy = %s\n"
               "trials = 27\n"
               "epochs = 9\n"
               "parallel = 1\n"
               "seed = 3\n"
               "param.x = uniform 0 1\n"
               "param.y = uniform 0 1\n"
               "asha.min_epochs = 1\n"
               "asha.reduction = 3\n",
               objective, strat);
    CHECK(sweep(name, NULL) == 0, "%s sweep failed", strat);
    char csv[128], journal[128];
    snprintf(csv, sizeof csv, "%s.sweep/trials.csv", name);
    snprintf(journal, sizeof journal, "%s.sweep/journal", name);
    table t;
    read_csv(path_of(csv), &t);
    CHECK(t.rows == 27, "%s: %d trials", strat, t.rows);
    if (t.rows != 27) return;
    /* rank at rung 0 (1 epoch) */
    int rank[27];
    for (int r = 0; r < 27; r++) {
        rank[r] = 1;
        for (int q = 0; q < 27; q++)
            rank[r] += num(&t, q, "score_at_1") > num(&t, r, "score_at_1") ||
                       (num(&t, q, "score_at_1") == num(&t, r, "score_at_1") && q < r);
    }
    int at3 = 0, at9 = 0, bad_checked = 0, epochs = 0;
    for (int r = 0; r < 27; r++) {
        bool has3 = !isnan(num(&t, r, "score_at_3")), has9 = !isnan(num(&t, r, "score_at_9"));
        at3 += has3, at9 += has9;
        epochs += 1 + 3 * has3 + 9 * has9;
        /* the good: the top 27/3 after one epoch all get 3 epochs */
        if (rank[r] <= 9)
            CHECK(has3, "%s: trial %d ranks %d of 27 after 1 epoch but was stopped", strat, r + 1, rank[r]);
        if (!strcmp(strat, "sha")) {
            CHECK(has3 == (rank[r] <= 9), "sha: trial %d (rank %d at 1 epoch) %s", r + 1, rank[r],
                  has3 ? "promoted" : "stopped");
        } else if (r + 1 >= 14 && rank[r] > 18) {
            /* asynchronous: with one slot, trial i's rung-0 result is the i-th, and a trial
             * in the bottom third of all 27 that arrives after half of them can never rank
             * in the top n/3 of the n results present: it must stop at the first rung */
            CHECK(!has3, "asha: trial %d ranks %d of 27 after 1 epoch but went on", r + 1, rank[r]);
            bad_checked++;
        }
        CHECK(!strcmp(cell(&t, r, "state"), has9 ? "finished" : "stopped"), "%s: trial %d state %s", strat, r + 1,
              cell(&t, r, "state"));
    }
    if (!strcmp(strat, "sha")) {
        CHECK(at3 == 9 && at9 == 3, "sha: %d trials got 3 epochs, %d got 9 (expected 9 and 3)", at3, at9);
        /* the same config with --strategy random (its asha.* keys unused): the same 27
         * configurations, each run to 9 epochs */
        CHECK(wait_rc(spawn_sweep2(path_of("sha.conf"), path_of("sha_random.sweep"), path_of("sha_random.out"),
                                   "--strategy", "random")) == 0,
              "sha --strategy random failed");
        table u;
        read_csv(path_of("sha_random.sweep/trials.csv"), &u);
        CHECK(u.rows == 27, "sha --strategy random: %d trials", u.rows);
        for (int r = 0; r < 27 && r < u.rows; r++) {
            CHECK(!strcmp(cell(&t, r, "x"), cell(&u, r, "x")) && !strcmp(cell(&t, r, "y"), cell(&u, r, "y")),
                  "trial %d: sha and random drew other values with one seed", r + 1);
            CHECK(!strcmp(cell(&u, r, "state"), "finished") && num(&u, r, "epochs") == 9,
                  "random: trial %d %s after %g epochs", r + 1, cell(&u, r, "state"), num(&u, r, "epochs"));
        }
        free(u.text);
    } else {
        CHECK(bad_checked >= 3, "asha: only %d late bad trials to check", bad_checked);
        CHECK(at3 >= 9 && at9 >= at3 / 3, "asha: %d trials got 3 epochs, %d got 9", at3, at9);
    }
    /* every promotion ranked in the top 1/3 of its rung when it was made */
    char *j = read_file(path_of(journal));
    int promos = 0;
    for (const char *p = j; (p = strstr(p, "\npromote ")); p++) {
        int id, rung, ep, rk, of;
        if (sscanf(p, "\npromote id=%d rung=%d epochs=%d rank=%d of=%d", &id, &rung, &ep, &rk, &of) == 5) {
            CHECK(rk >= 1 && rk <= of / 3, "%s: trial %d promoted at rank %d of %d", strat, id, rk, of);
            promos++;
        }
    }
    CHECK(promos == at3 + at9, "%s: %d promotions in the journal, %d in the table", strat, promos, at3 + at9);
    CHECK(2 * epochs < 27 * 9, "%s: %d epochs run, no saving on %d", strat, epochs, 27 * 9);
    /* the best has the full budget and is the best of the ones that got it */
    int best = -1;
    for (int r = 0; r < 27; r++)
        if (!isnan(num(&t, r, "score_at_9")) && (best < 0 || num(&t, r, "score_at_9") > num(&t, best, "score_at_9")))
            best = r;
    char *out = read_file(path_of(!strcmp(strat, "sha") ? "sha.out" : "asha.out"));
    char want[128];
    snprintf(want, sizeof want, "best: trial %d,", best + 1);
    CHECK(best >= 0 && strstr(out, want), "%s: the output does not name trial %d as best", strat, best + 1);
    free(out);
    free(j);
    free(t.text);
}

static void test_sha(void) { test_halving("sha"); }
static void test_asha(void) { test_halving("asha"); }

static int journal_count(const char *j, const char *kind, int id) {
    char pat[64];
    snprintf(pat, sizeof pat, "\n%s id=%d ", kind, id);
    return count_substr(j, pat);
}

static void test_resume(void) {
    char *log = path_of("resume.log");
    unlink(log);
    write_file(path_of("resume.conf"),
               "command = %s --x {x} --y {y} --epochs {epochs} --sleep-ms 40 --log %s\n"
               "metric = score\n"
               "strategy = random\n"
               "trials = 8\n"
               "epochs = 3\n"
               "parallel = 2\n"
               "param.x = uniform 0 1\n"
               "param.y = uniform 0 1\n",
               objective, log);
    char *jpath = path_of("resume.sweep/journal");
    pid_t pid = spawn_sweep(path_of("resume.conf"), path_of("resume.sweep"), path_of("resume1.out"), NULL);
    /* kill -9 once three runs have ended, while others run */
    bool killed = false;
    for (int i = 0; i < 6000 && !killed; i++) {
        char *j = read_file(jpath);
        int ends = count_substr(j, "\nend "), starts = count_substr(j, "\nstart ");
        free(j);
        if (ends >= 3 && starts > ends) {
            kill(pid, SIGKILL);
            killed = true;
        } else {
            if (waitpid(pid, NULL, WNOHANG) == pid) break;
            usleep(5000);
        }
    }
    CHECK(killed, "resume: the sweep ended before it could be killed mid-run");
    if (killed) wait_rc(pid);
    /* a record torn by the kill: resume must cut it off */
    FILE *f = fopen(jpath, "a");
    fputs("end id=1 rung=0 sta", f);
    fclose(f);
    char *before = read_file(jpath);
    int ended_before = count_substr(before, "\nend ");
    usleep(400000); /* the orphaned runs die on their next write to the closed pipe */
    CHECK(sweep("resume", NULL) == 0, "resume: the resumed sweep failed (resume.out)");
    char *j = read_file(jpath), *logs = read_file(log), *out = read_file(path_of("resume.out"));
    CHECK(strstr(out, "dropping a torn last record"), "resume: the torn record was not reported");
    int interrupted = count_substr(j, "\ninterrupted ");
    CHECK(interrupted >= 1, "resume: no run recorded as interrupted");
    CHECK(strstr(out, "was running") != NULL, "resume: the interrupted trials are not named");
    table t;
    read_csv(path_of("resume.sweep/trials.csv"), &t);
    CHECK(t.rows == 8, "resume: %d trials, expected 8", t.rows);
    for (int id = 1; id <= 8; id++) {
        int ends = journal_count(j, "end", id), intr = journal_count(j, "interrupted", id),
            starts = journal_count(j, "start", id);
        CHECK(ends == 1, "resume: trial %d ended %d times", id, ends);
        CHECK(starts == 1 + intr, "resume: trial %d started %d times with %d interruptions", id, starts, intr);
        if (id <= t.rows) {
            char line[256];
            snprintf(line, sizeof line, "x=%s y=%s cat=a epochs=3\n", cell(&t, id - 1, "x"), cell(&t, id - 1, "y"));
            int runs = count_substr(logs, line);
            /* an interrupted run may have been killed before the program began */
            CHECK(runs >= 1 && runs <= 1 + intr, "resume: trial %d ran %d times (%d interruptions)", id, runs, intr);
            CHECK(!strcmp(cell(&t, id - 1, "state"), "finished"), "resume: trial %d is %s", id,
                  cell(&t, id - 1, "state"));
        }
    }
    CHECK(count_substr(j, "\nend ") >= ended_before, "resume: ended runs were lost");
    /* finished: a third run only prints the table */
    int runs_before = count_substr(logs, "\n");
    CHECK(sweep("resume", NULL) == 0, "resume: re-printing the finished sweep failed");
    char *logs2 = read_file(log), *out2 = read_file(path_of("resume.out")), *j2 = read_file(jpath);
    CHECK(count_substr(logs2, "\n") == runs_before, "resume: the finished sweep ran trials again");
    CHECK(strstr(out2, "is finished") && strstr(out2, "best: trial"), "resume: no table from the finished sweep:\n%s",
          out2);
    CHECK(!strcmp(j, j2), "resume: the finished sweep's journal changed");
    /* another search in the same place is refused */
    write_file(path_of("resume.conf"),
               "command = %s --x {x} --y {y} --epochs {epochs} --log %s\n"
               "metric = score\nstrategy = random\ntrials = 8\nepochs = 3\n"
               "param.x = uniform 0 1\nparam.y = uniform 0 1\n",
               objective, log);
    CHECK(sweep("resume", NULL) == 2, "resume: a changed config was not refused");
    char *out3 = read_file(path_of("resume.out"));
    CHECK(strstr(out3, "was written for another search"), "resume: refusal without reason:\n%s", out3);
    free(out3);
    free(logs2), free(out2), free(j2);
    free(t.text);
    free(j), free(logs), free(out), free(before);
}

static void test_failures(void) {
    write_file(path_of("fail.conf"),
               "command = %s --x {x} --mode {mode} --epochs 2\n"
               "metric = score\n"
               "strategy = grid\n"
               "parallel = 3\n"
               "time_limit = 2\n"
               "kill_grace = 0.3\n"
               "param.x = choice 0.3\n"
               "param.mode = choice ok fail crash hang hang_term nometric\n",
               objective);
    CHECK(sweep("fail", NULL) == 0, "failures: the sweep did not go on past failed trials (fail.out)");
    table t;
    read_csv(path_of("fail.sweep/trials.csv"), &t);
    CHECK(t.rows == 6, "failures: %d trials", t.rows);
    static const char *const want[][3] = {
        {"ok", "finished", ""},
        {"fail", "failed", "exit status 3"},
        {"crash", "failed", "killed by SIGSEGV"},
        {"hang", "timeout", "time limit 2 s: SIGTERM"},
        {"hang_term", "timeout", "SIGTERM, then SIGKILL"},
        {"nometric", "failed", "no 'score=' in its output"},
    };
    for (int r = 0; r < t.rows && r < 6; r++) {
        const char *mode = cell(&t, r, "mode");
        for (int w = 0; w < 6; w++) {
            if (strcmp(mode, want[w][0])) continue;
            CHECK(!strcmp(cell(&t, r, "state"), want[w][1]), "failures: mode %s: state %s, expected %s", mode,
                  cell(&t, r, "state"), want[w][1]);
            CHECK(strstr(cell(&t, r, "why"), want[w][2]), "failures: mode %s: why '%s', expected '%s'", mode,
                  cell(&t, r, "why"), want[w][2]);
        }
        if (!strcmp(mode, "hang") || !strcmp(mode, "hang_term"))
            CHECK(num(&t, r, "seconds") < 8, "failures: %s took %g s with a 2 s limit", mode, num(&t, r, "seconds"));
    }
    /* the journal keeps the exit status and the tail of the output */
    char *j = read_file(path_of("fail.sweep/journal"));
    CHECK(strstr(j, "exit=3 ") && strstr(j, "failing%20on%20purpose"),
          "failures: no exit status / tail in the journal");
    CHECK(strstr(j, "exit=-11 ") && strstr(j, "about%20to%20crash"), "failures: the crash's signal / tail is missing");
    free(j);
    free(t.text);
}

/* devices: each slot's KILN_DEVICE; values in the environment */
static void test_env(void) {
    char *log = path_of("env.log");
    unlink(log);
    write_file(path_of("env.conf"),
               "command = echo \"$KILN_DEVICE $KILN_SWEEP_X $KILN_SWEEP_NAME {trial}\" >> %s; echo score={x} {name}\n"
               "metric = score\nstrategy = grid\ndevices = dev0, dev1\n"
               "param.x = choice 1 2 3 4\nparam.name = choice \"it's\"\n",
               log);
    CHECK(sweep("env", NULL) == 0, "env: sweep failed");
    char *l = read_file(log);
    for (int x = 1; x <= 4; x++) {
        char a[64], b[64];
        snprintf(a, sizeof a, "dev0 %d \"it's\" %d\n", x, x);
        snprintf(b, sizeof b, "dev1 %d \"it's\" %d\n", x, x);
        CHECK(count_substr(l, a) + count_substr(l, b) == 1, "env: trial %d's environment is wrong:\n%s", x, l);
    }
    free(l);
}

static void test_bad_configs(void) {
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"command = x\nmetric = m\nthis line has no equals sign\n", "bad.conf:3: expected 'key = value'"},
        {"command = x\nmetric = m\ncolour = red\n", "bad.conf:3: unknown key 'colour'"},
        {"command = x\nmetric = m\nmetric = n\n", "bad.conf:3: 'metric' set twice (first at line 2)"},
        {"command = x\nmetric = m\ntrials = 5\nparam.a = normal 0 1\n", "bad.conf:4: param.a: unknown kind 'normal'"},
        {"command = x\nmetric = m\ntrials = 5\nparam.a = loguniform 0 1\n",
         "bad.conf:4: param.a: loguniform needs positive"},
        {"command = x\nmetric = m\ntrials = 5\nparam.a = uniform 1 0\n",
         "bad.conf:4: param.a: low 1 must be below high 0"},
        {"# comment\ncommand = run {lr}\nmetric = m\ntrials = 5\nparam.a = uniform 0 1\n",
         "bad.conf:2: command: {lr} is no parameter"},
        {"command = x {epochs}\nmetric = m\nstrategy = asha\ntrials = 5\nparam.a = uniform 0 1\n",
         "bad.conf:1: command uses {epochs} but no 'epochs = N'"},
        {"command = x\nmetric = m\nstrategy = asha\ntrials = 5\nparam.a = uniform 0 1\n",
         "bad.conf:3: strategy asha needs 'epochs = N'"},
        {"command = x\nmetric = m\ntrials = many\nparam.a = uniform 0 1\n", "bad.conf:3: trials 'many'"},
        {"command = x\nmetric = m\ntrials = 3\nepochs = 4\nasha.reduction = 3\nparam.a = uniform 0 1\n",
         "bad.conf:5: asha.* keys apply only to strategy asha or sha"},
        {"command = x\nmetric =\n", "bad.conf:2: 'metric' has no value"},
        {"metric = m\ntrials = 3\nparam.a = uniform 0 1\n", "bad.conf: no 'command = ...' line"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        write_file(path_of("bad.conf"), "%s", cases[i].text);
        int rc = sweep("bad", NULL);
        char *out = read_file(path_of("bad.out"));
        CHECK(rc == 2, "bad config %zu: exit %d, expected 2", i, rc);
        CHECK(strstr(out, cases[i].want), "bad config %zu: expected '%s' in:\n%s", i, cases[i].want, out);
        free(out);
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: test_hpsweep OBJECTIVE WORKDIR\n");
        return 2;
    }
    objective = argv[1];
    work = argv[2];
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", work, work);
    if (system(cmd) != 0) return 1;
    struct {
        const char *name;
        void (*fn)(void);
    } tests[] = {{"bad configs", test_bad_configs},
                 {"grid", test_grid},
                 {"random", test_random},
                 {"sha", test_sha},
                 {"asha", test_asha},
                 {"failures", test_failures},
                 {"environment", test_env},
                 {"resume", test_resume}};
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    double t0 = a.tv_sec + a.tv_nsec / 1e9;
    for (size_t i = 0; i < sizeof tests / sizeof *tests; i++) {
        clock_gettime(CLOCK_MONOTONIC, &a);
        tests[i].fn();
        clock_gettime(CLOCK_MONOTONIC, &b);
        printf("%-12s %.1f s\n", tests[i].name, (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%d checks, %d failed (%.1f s)\n", checks, failed, b.tv_sec + b.tv_nsec / 1e9 - t0);
    return failed ? 1 : 0;
}

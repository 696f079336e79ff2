/* tools/sweep.c - `kiln sweep CONFIG`: hyperparameter search over any training program.
 *
 * The config is `key = value` lines ('#' starts a comment at the start of a line or after
 * a blank); a malformed line is an error naming file:line:
 *
 *     command   = build/examples/cnn_fashion --epochs {epochs} --lr {lr} --no-progress
 *     metric    = test_accuracy        # the program prints "epoch=N test_accuracy=V" lines
 *     direction = max                  # and/or a last "test_accuracy=V" line
 *     strategy  = asha                 # grid | random | asha | sha
 *     trials    = 20                   # random, asha, sha: configurations sampled
 *     epochs    = 9                    # the full budget of a trial ({epochs})
 *     parallel  = 2                    # trials run at once (processes)
 *     devices   = 0:0,0:1              # KILN_DEVICE of slot i: devices[i % n]
 *     seed      = 1
 *     time_limit = 600                 # seconds per run; then SIGTERM, SIGKILL after kill_grace
 *     param.lr      = loguniform 1e-4 1e-1
 *     param.batch   = choice 32 64 128
 *     param.dropout = uniform 0.0 0.5
 *     param.width   = int 16 128
 *     asha.min_epochs = 1
 *     asha.reduction  = 3
 *
 * Each run is `/bin/sh -c COMMAND` with {name} replaced by the trial's value (shell-quoted
 * when it is not a plain word), {epochs} by the run's budget and {trial} by the trial's
 * number; the values are also in the environment as KILN_SWEEP_<NAME> (upper case), with
 * KILN_SWEEP_EPOCHS, KILN_SWEEP_TRIAL and, when devices is given, KILN_DEVICE. stdout and
 * stderr go to one pipe (and to OUT/logs/trial-NNNN-eE.log); a line with the tokens
 * `epoch=N METRIC=V` is a point of the learning curve, a line with `METRIC=V` and no epoch
 * the final result (else the last epoch's value counts). Every run gets its own process
 * group, so the time limit ends the whole command (shell, program, its children).
 *
 * Strategies: grid runs the product of every parameter's values (ranges take grid_points
 * evenly spaced values, log-spaced for loguniform); random samples `trials` configurations
 * (trial i's values depend only on seed and i, so random and asha with one seed try the
 * same configurations). Both run every trial for `epochs` (grid ignores `trials`: its size is
 * the product). time_limit 0 (the default) sets no limit.
 *
 * asha is asynchronous successive halving (Li et al., "A System for Massively Parallel
 * Hyperparameter Tuning", 2020): rungs at min_epochs * reduction^k epochs (below epochs)
 * and at epochs. Whenever a slot is free, the highest rung holding a trial that ranks in
 * the top floor(n/reduction) of the n results of its rung and was not yet promoted gives
 * that trial its next rung; otherwise a new trial starts at rung 0. Promotion happens as
 * results arrive, so no slot waits for a rung to fill; the price is that among the first
 * results of a rung a trial can be promoted that a full rung would not promote. sha is the
 * synchronous variant (successive halving): a rung is ranked only once every trial of it
 * has finished, so exactly the top floor(n/reduction) go on. The budget of a rung is
 * given by rerunning the trial from scratch with more epochs ({epochs}): any program that
 * takes an epoch count can be searched, a run's result does not depend on the rungs before
 * it, and the cost is the repeated lower-rung epochs of the promoted trials (with
 * reduction 3 about a third more epochs than continuing would take).
 *
 * The journal (OUT/journal) is append-only text, one record a line, written and fsynced
 * before the sweep goes on: the config's fingerprint, each trial's values, each run's
 * start, each promotion, each run's end (status, metric, learning curve, seconds; exit
 * status, reason and the tail of the output when it failed or timed out), `done`. Run
 * again, the sweep replays it: a run started but not ended (the sweep was killed) is
 * recorded as interrupted and runs again; nothing that ended runs twice; a finished sweep
 * only prints its table. A torn last line is cut off. A changed search (command, metric,
 * space, strategy, seed, budgets) is refused: it needs another --out.
 *
 * Outputs: the live table (redrawn on a terminal; one line per event otherwise), the final
 * table, OUT/trials.csv, OUT/sweep.svg (metric against each parameter; written here since
 * src/train/plot.c draws only learning curves), and the best trial's command line. */
#define _GNU_SOURCE
#include "sweep.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_PARAMS 32
#define MAX_CHOICES 64
#define MAX_RUNGS 16
#define MAX_SLOTS 256
#define MAX_DEVICES 64
#define MAX_GRID 100000
#define TAIL_BYTES 1024
#define LINE_BYTES 4096

#if defined(__GNUC__)
#define SW_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define SW_PRINTF(a, b)
#endif

/* ---- small helpers ---------------------------------------------------------------------- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static char *xstrdup(const char *s) {
    char *p = strdup(s ? s : "");
    if (!p) {
        fprintf(stderr, "kiln sweep: out of memory\n");
        exit(1);
    }
    return p;
}

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        fprintf(stderr, "kiln sweep: out of memory\n");
        exit(1);
    }
    return p;
}

/* A growing string. */
typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf;

static void sb_printf(sbuf *s, const char *fmt, ...) SW_PRINTF(2, 3);
static void sb_printf(sbuf *s, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int w = vsnprintf(s->p ? s->p + s->len : NULL, s->p ? s->cap - s->len : 0, fmt, ap);
        va_end(ap);
        if (w < 0) return;
        if (s->p && s->len + (size_t)w < s->cap) {
            s->len += (size_t)w;
            return;
        }
        size_t cap = s->cap ? s->cap : 1024;
        while (cap <= s->len + (size_t)w) cap *= 2;
        char *q = realloc(s->p, cap);
        if (!q) {
            fprintf(stderr, "kiln sweep: out of memory\n");
            exit(1);
        }
        s->p = q;
        s->cap = cap;
    }
}

static void sb_putc(sbuf *s, char c) { sb_printf(s, "%c", c); }

static bool parse_double(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v)) return false;
    *out = v;
    return true;
}

static bool parse_long(const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi) return false;
    *out = v;
    return true;
}

/* Journal escaping: every byte outside a safe set becomes %XX, so a value never holds a
 * blank, '=' or a newline. */
static void sb_esc(sbuf *s, const char *t) {
    for (const unsigned char *c = (const unsigned char *)t; *c; c++) {
        if (isalnum(*c) || strchr("._+-/:,@^", *c))
            sb_putc(s, (char)*c);
        else
            sb_printf(s, "%%%02X", *c);
    }
}

static void unesc(char *t) {
    char *w = t;
    for (char *r = t; *r; r++) {
        if (*r == '%' && isxdigit((unsigned char)r[1]) && isxdigit((unsigned char)r[2])) {
            char hex[3] = {r[1], r[2], 0};
            *w++ = (char)strtol(hex, NULL, 16);
            r += 2;
        } else {
            *w++ = *r;
        }
    }
    *w = 0;
}

/* A value as one shell word: plain words as they are, anything else in single quotes. */
static void sb_shell_word(sbuf *s, const char *v) {
    bool plain = *v != 0;
    for (const char *c = v; *c; c++)
        if (!isalnum((unsigned char)*c) && !strchr("._+-/:,@%^=", *c)) plain = false;
    if (plain) {
        sb_printf(s, "%s", v);
        return;
    }
    sb_putc(s, '\'');
    for (const char *c = v; *c; c++) {
        if (*c == '\'')
            sb_printf(s, "'\\''");
        else
            sb_putc(s, *c);
    }
    sb_putc(s, '\'');
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* ---- the config ------------------------------------------------------------------------- */

typedef enum { P_CHOICE, P_UNIFORM, P_LOGUNIFORM, P_INT } ptype;
static const char *const ptype_names[] = {"choice", "uniform", "loguniform", "int"};

typedef struct param {
    char name[64];
    ptype type;
    double lo, hi;
    int nchoices;
    char *choices[MAX_CHOICES];
    int line;
} param;

typedef enum { S_GRID, S_RANDOM, S_ASHA, S_SHA } strategy;
static const char *const strategy_names[] = {"grid", "random", "asha", "sha"};

typedef struct config {
    char *path;
    char *command;
    int command_line;
    char metric[128];
    bool maximize;
    strategy strat;
    int trials; /* 0: not given */
    int trials_line;
    int parallel;
    uint64_t seed;
    double time_limit, kill_grace;
    int epochs; /* 0: not given */
    int grid_points;
    char *devices[MAX_DEVICES];
    int ndevices;
    char *out;
    int min_epochs, reduction;
    param params[MAX_PARAMS];
    int nparams;
    int rungs[MAX_RUNGS]; /* epochs of each rung; grid and random have one */
    int nrungs;
} config;

static void config_free(config *c) {
    free(c->path);
    free(c->command);
    free(c->out);
    for (int i = 0; i < c->ndevices; i++) free(c->devices[i]);
    for (int p = 0; p < c->nparams; p++)
        for (int k = 0; k < c->params[p].nchoices; k++) free(c->params[p].choices[k]);
}

static int cfg_error(const config *c, int line, const char *fmt, ...) SW_PRINTF(3, 4);
static int cfg_error(const config *c, int line, const char *fmt, ...) {
    if (line > 0)
        fprintf(stderr, "kiln sweep: %s:%d: ", c->path, line);
    else
        fprintf(stderr, "kiln sweep: %s: ", c->path);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 2;
}

static bool valid_name(const char *s) {
    if (!*s) return false;
    for (; *s; s++)
        if (!islower((unsigned char)*s) && !isdigit((unsigned char)*s) && *s != '_') return false;
    return true;
}

static int parse_param(config *c, const char *name, char *v, int line) {
    if (!valid_name(name) || strlen(name) >= sizeof c->params[0].name)
        return cfg_error(c, line, "parameter name '%s': expected lower-case letters, digits and '_'", name);
    if (!strcmp(name, "epochs") || !strcmp(name, "trial"))
        return cfg_error(c, line, "parameter name '%s' is reserved ({%s} is set by the sweep)", name, name);
    if (c->nparams == MAX_PARAMS) return cfg_error(c, line, "more than %d parameters", MAX_PARAMS);
    param *p = &c->params[c->nparams++]; /* counted at once: config_free frees a half-read one */
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->line = line;
    char *words[MAX_CHOICES + 2];
    int n = 0;
    for (char *w = strtok(v, " \t"); w; w = strtok(NULL, " \t")) {
        if (n == MAX_CHOICES + 1) return cfg_error(c, line, "param.%s: more than %d values", name, MAX_CHOICES);
        words[n++] = w;
    }
    if (n == 0) return cfg_error(c, line, "param.%s: expected choice, uniform, loguniform or int", name);
    int t = -1;
    for (int i = 0; i < 4; i++)
        if (!strcmp(words[0], ptype_names[i])) t = i;
    if (t < 0)
        return cfg_error(c, line, "param.%s: unknown kind '%s': expected choice, uniform, loguniform or int", name,
                         words[0]);
    p->type = (ptype)t;
    if (p->type == P_CHOICE) {
        if (n < 2) return cfg_error(c, line, "param.%s: choice needs at least one value", name);
        for (int i = 1; i < n; i++) {
            for (int j = 0; j < p->nchoices; j++)
                if (!strcmp(p->choices[j], words[i]))
                    return cfg_error(c, line, "param.%s: value '%s' given twice", name, words[i]);
            p->choices[p->nchoices++] = xstrdup(words[i]);
        }
    } else {
        if (n != 3) return cfg_error(c, line, "param.%s: %s needs two bounds: LOW HIGH", name, words[0]);
        if (p->type == P_INT) {
            long long lo, hi;
            if (!parse_long(words[1], -1000000000000LL, 1000000000000LL, &lo) ||
                !parse_long(words[2], -1000000000000LL, 1000000000000LL, &hi))
                return cfg_error(c, line, "param.%s: int bounds '%s %s': expected integers", name, words[1], words[2]);
            if (lo > hi) return cfg_error(c, line, "param.%s: low %lld is above high %lld", name, lo, hi);
            p->lo = (double)lo, p->hi = (double)hi;
        } else {
            if (!parse_double(words[1], &p->lo) || !parse_double(words[2], &p->hi))
                return cfg_error(c, line, "param.%s: bounds '%s %s': expected numbers", name, words[1], words[2]);
            if (!(p->lo < p->hi))
                return cfg_error(c, line, "param.%s: low %s must be below high %s", name, words[1], words[2]);
            if (p->type == P_LOGUNIFORM && p->lo <= 0)
                return cfg_error(c, line, "param.%s: loguniform needs positive bounds", name);
        }
    }
    return 0;
}

static bool is_param(const config *c, const char *name, size_t len) {
    for (int p = 0; p < c->nparams; p++)
        if (strlen(c->params[p].name) == len && !strncmp(c->params[p].name, name, len)) return true;
    return false;
}

/* Reads and checks the config; 0, or 2 with the error printed. */
static int config_load(config *c, const char *path, const char *strategy_override) {
    memset(c, 0, sizeof *c);
    c->path = xstrdup(path);
    c->maximize = true;
    c->strat = S_RANDOM;
    c->seed = 1;
    c->kill_grace = 5;
    c->grid_points = 3;
    c->min_epochs = 1;
    c->reduction = 3;
    FILE *f = fopen(path, "r");
    if (!f) return cfg_error(c, 0, "cannot open: %s", strerror(errno));
    static const char *const keys[] = {"command",  "metric", "direction",   "strategy",        "trials",
                                       "parallel", "seed",   "time_limit",  "kill_grace",      "epochs",
                                       "devices",  "out",    "grid_points", "asha.min_epochs", "asha.reduction"};
    enum { NKEYS = sizeof keys / sizeof *keys };
    int seen[NKEYS] = {0}, metric_line = 0, direction_line = 0, strat_line = 0, rc = 0, lineno = 0;
    int min_line = 0, red_line = 0;
    char line[8192];
    while (!rc && fgets(line, sizeof line, f)) {
        lineno++;
        size_t len = strlen(line);
        if (len == sizeof line - 1 && line[len - 1] != '\n' && !feof(f)) {
            rc = cfg_error(c, lineno, "line longer than %zu bytes", sizeof line - 2);
            break;
        }
        for (char *h = line; *h; h++)
            if (*h == '#' && (h == line || isspace((unsigned char)h[-1]))) {
                *h = 0;
                break;
            }
        char *s = line;
        while (isspace((unsigned char)*s)) s++;
        char *e = s + strlen(s);
        while (e > s && isspace((unsigned char)e[-1])) *--e = 0;
        if (!*s) continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            rc = cfg_error(c, lineno, "expected 'key = value', got '%s'", s);
            break;
        }
        char *k = s, *ke = eq;
        while (ke > k && isspace((unsigned char)ke[-1])) ke--;
        *ke = 0;
        char *v = eq + 1;
        while (isspace((unsigned char)*v)) v++;
        if (!*k) {
            rc = cfg_error(c, lineno, "a value without a key");
            break;
        }
        if (!*v) {
            rc = cfg_error(c, lineno, "'%s' has no value", k);
            break;
        }
        if (!strncmp(k, "param.", 6)) {
            for (int p = 0; p < c->nparams; p++)
                if (!strcmp(c->params[p].name, k + 6)) {
                    rc = cfg_error(c, lineno, "'%s' set twice (first at line %d)", k, c->params[p].line);
                    break;
                }
            if (!rc) rc = parse_param(c, k + 6, v, lineno);
            continue;
        }
        int ki = -1;
        for (int i = 0; i < NKEYS; i++)
            if (!strcmp(k, keys[i])) ki = i;
        if (ki < 0) {
            rc = cfg_error(c, lineno,
                           "unknown key '%s' (keys: command, metric, direction, strategy, trials, epochs, parallel, "
                           "devices, seed, time_limit, kill_grace, out, grid_points, asha.min_epochs, "
                           "asha.reduction, param.NAME)",
                           k);
            break;
        }
        if (seen[ki]) {
            rc = cfg_error(c, lineno, "'%s' set twice (first at line %d)", k, seen[ki]);
            break;
        }
        seen[ki] = lineno;
        long long n;
        double d;
        if (!strcmp(k, "command")) {
            c->command = xstrdup(v);
            c->command_line = lineno;
        } else if (!strcmp(k, "metric")) {
            if (strlen(v) >= sizeof c->metric || strpbrk(v, " \t=")) {
                rc = cfg_error(c, lineno, "metric '%s': expected one word (the name before '=' in the output)", v);
                break;
            }
            snprintf(c->metric, sizeof c->metric, "%s", v);
            metric_line = lineno;
        } else if (!strcmp(k, "direction")) {
            if (strcmp(v, "max") && strcmp(v, "min")) {
                rc = cfg_error(c, lineno, "direction '%s': expected max or min", v);
                break;
            }
            c->maximize = !strcmp(v, "max");
            direction_line = lineno;
        } else if (!strcmp(k, "strategy")) {
            int t = -1;
            for (int i = 0; i < 4; i++)
                if (!strcmp(v, strategy_names[i])) t = i;
            if (t < 0) {
                rc = cfg_error(c, lineno, "strategy '%s': expected grid, random, asha or sha", v);
                break;
            }
            c->strat = (strategy)t;
            strat_line = lineno;
        } else if (!strcmp(k, "trials")) {
            if (!parse_long(v, 1, 1000000, &n)) {
                rc = cfg_error(c, lineno, "trials '%s': expected an integer from 1 to 1000000", v);
                break;
            }
            c->trials = (int)n;
            c->trials_line = lineno;
        } else if (!strcmp(k, "parallel")) {
            if (!parse_long(v, 1, MAX_SLOTS, &n)) {
                rc = cfg_error(c, lineno, "parallel '%s': expected an integer from 1 to %d", v, MAX_SLOTS);
                break;
            }
            c->parallel = (int)n;
        } else if (!strcmp(k, "seed")) {
            if (!parse_long(v, 0, INT64_MAX, &n)) {
                rc = cfg_error(c, lineno, "seed '%s': expected a non-negative integer", v);
                break;
            }
            c->seed = (uint64_t)n;
        } else if (!strcmp(k, "time_limit") || !strcmp(k, "kill_grace")) {
            if (!parse_double(v, &d) || d < 0 || d > 1e7) {
                rc = cfg_error(c, lineno, "%s '%s': expected seconds (0 or more)", k, v);
                break;
            }
            *(k[0] == 't' ? &c->time_limit : &c->kill_grace) = d;
        } else if (!strcmp(k, "epochs")) {
            if (!parse_long(v, 1, 1000000, &n)) {
                rc = cfg_error(c, lineno, "epochs '%s': expected a positive integer", v);
                break;
            }
            c->epochs = (int)n;
        } else if (!strcmp(k, "grid_points")) {
            if (!parse_long(v, 2, 1000, &n)) {
                rc = cfg_error(c, lineno, "grid_points '%s': expected an integer from 2 to 1000", v);
                break;
            }
            c->grid_points = (int)n;
        } else if (!strcmp(k, "asha.min_epochs")) {
            if (!parse_long(v, 1, 1000000, &n)) {
                rc = cfg_error(c, lineno, "asha.min_epochs '%s': expected a positive integer", v);
                break;
            }
            c->min_epochs = (int)n;
            min_line = lineno;
        } else if (!strcmp(k, "asha.reduction")) {
            if (!parse_long(v, 2, 100, &n)) {
                rc = cfg_error(c, lineno, "asha.reduction '%s': expected an integer from 2 to 100", v);
                break;
            }
            c->reduction = (int)n;
            red_line = lineno;
        } else if (!strcmp(k, "out")) {
            c->out = xstrdup(v);
        } else if (!strcmp(k, "devices")) {
            char *save = NULL;
            for (char *w = strtok_r(v, ",", &save); w && !rc; w = strtok_r(NULL, ",", &save)) {
                while (isspace((unsigned char)*w)) w++;
                char *we = w + strlen(w);
                while (we > w && isspace((unsigned char)we[-1])) *--we = 0;
                if (!*w || c->ndevices == MAX_DEVICES)
                    rc = cfg_error(c, lineno, "devices: expected 1 to %d comma-separated device specs", MAX_DEVICES);
                else
                    c->devices[c->ndevices++] = xstrdup(w);
            }
        }
    }
    fclose(f);
    if (rc) return rc;
    (void)direction_line;
    if (strategy_override) {
        int t = -1;
        for (int i = 0; i < 4; i++)
            if (!strcmp(strategy_override, strategy_names[i])) t = i;
        if (t < 0) {
            fprintf(stderr, "kiln sweep: --strategy %s: expected grid, random, asha or sha\n", strategy_override);
            return 2;
        }
        c->strat = (strategy)t;
        strat_line = 0;
    }
    if (!c->command) return cfg_error(c, 0, "no 'command = ...' line");
    if (!c->metric[0]) return cfg_error(c, 0, "no 'metric = ...' line (the name the program prints as NAME=VALUE)");
    (void)metric_line;
    if (c->nparams == 0) return cfg_error(c, 0, "no parameter to search (param.NAME = ...)");
    if (c->parallel == 0) c->parallel = c->ndevices > 0 ? c->ndevices : 1;
    /* every {placeholder} of the command is known ("${" is the shell's, left alone) */
    bool uses_epochs = false;
    for (const char *s = c->command; (s = strchr(s, '{')); s++) {
        if (s > c->command && s[-1] == '$') continue;
        const char *e = strchr(s, '}');
        if (!e) return cfg_error(c, c->command_line, "command: '{' without '}'");
        size_t len = (size_t)(e - s - 1);
        if (len == 6 && !strncmp(s + 1, "epochs", 6))
            uses_epochs = true;
        else if (!(len == 5 && !strncmp(s + 1, "trial", 5)) && !is_param(c, s + 1, len))
            return cfg_error(c, c->command_line, "command: {%.*s} is no parameter (param.%.*s) nor {epochs}, {trial}",
                             (int)len, s + 1, (int)len, s + 1);
    }
    bool halving = c->strat == S_ASHA || c->strat == S_SHA;
    if (uses_epochs && !c->epochs) return cfg_error(c, c->command_line, "command uses {epochs} but no 'epochs = N'");
    if (halving && !c->epochs)
        return cfg_error(c, strat_line, "strategy %s needs 'epochs = N' (the budget of its last rung)",
                         strategy_names[c->strat]);
    if (c->strat != S_GRID && !c->trials)
        return cfg_error(c, strat_line, "strategy %s needs 'trials = N'", strategy_names[c->strat]);
    if (!halving && (min_line || red_line) && !strategy_override) /* with --strategy: unused */
        return cfg_error(c, min_line ? min_line : red_line, "asha.* keys apply only to strategy asha or sha");
    c->nrungs = 0;
    if (halving) {
        if (c->min_epochs >= c->epochs)
            return cfg_error(c, min_line, "asha.min_epochs %d must be below epochs %d", c->min_epochs, c->epochs);
        for (long long r = c->min_epochs; r < c->epochs && c->nrungs < MAX_RUNGS - 1; r *= c->reduction)
            c->rungs[c->nrungs++] = (int)r;
    }
    c->rungs[c->nrungs++] = c->epochs;
    if (c->strat == S_GRID) {
        double size = 1;
        for (int p = 0; p < c->nparams; p++) {
            const param *q = &c->params[p];
            size *= q->type == P_CHOICE                                      ? q->nchoices
                    : q->type == P_INT && q->hi - q->lo + 1 < c->grid_points ? q->hi - q->lo + 1
                                                                             : c->grid_points;
        }
        if (size > MAX_GRID) return cfg_error(c, 0, "the grid has %.0f points (at most %d)", size, MAX_GRID);
        c->trials = (int)size;
    }
    return 0;
}

/* The fingerprint of what the search is: a journal from another search is refused. */
static uint64_t config_hash(const config *c) {
    sbuf s = {0};
    sb_printf(&s, "%s\n%s\n%d\n%d\n%d\n%llu\n%d\n%d\n%d\n%d\n", c->command, c->metric, c->maximize, (int)c->strat,
              c->trials, (unsigned long long)c->seed, c->epochs, c->grid_points, c->min_epochs, c->reduction);
    for (int p = 0; p < c->nparams; p++) {
        const param *q = &c->params[p];
        sb_printf(&s, "%s %d %.17g %.17g", q->name, (int)q->type, q->lo, q->hi);
        for (int k = 0; k < q->nchoices; k++) sb_printf(&s, " %s", q->choices[k]);
        sb_putc(&s, '\n');
    }
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < s.len; i++) h = (h ^ (unsigned char)s.p[i]) * 0x100000001b3ull;
    free(s.p);
    return h;
}

/* ---- the search space ------------------------------------------------------------------- */

static int grid_size(const config *c, const param *p) {
    if (p->type == P_CHOICE) return p->nchoices;
    if (p->type == P_INT && p->hi - p->lo + 1 < c->grid_points) return (int)(p->hi - p->lo + 1);
    return c->grid_points;
}

static void format_value(const param *p, double x, char *out, size_t cap) {
    if (p->type == P_INT)
        snprintf(out, cap, "%lld", (long long)llround(x));
    else
        snprintf(out, cap, "%.4g", x);
}

/* Value i of n evenly spaced ones (log-spaced for loguniform). */
static double grid_value(const param *p, int i, int n) {
    double t = n > 1 ? (double)i / (n - 1) : 0;
    if (p->type == P_LOGUNIFORM) return exp(log(p->lo) + t * (log(p->hi) - log(p->lo)));
    if (p->type == P_INT && p->hi - p->lo + 1 <= n) return p->lo + i;
    return p->lo + t * (p->hi - p->lo);
}

/* Trial id's values (1-based id): grid point id-1, the first parameter varying slowest, or
 * draws from a generator seeded by (seed, id) alone. */
static void sample_trial(const config *c, int id, char vals[][64]) {
    if (c->strat == S_GRID) {
        long long rest = id - 1;
        for (int p = c->nparams - 1; p >= 0; p--) {
            const param *q = &c->params[p];
            int n = grid_size(c, q), i = (int)(rest % n);
            rest /= n;
            if (q->type == P_CHOICE)
                snprintf(vals[p], 64, "%s", q->choices[i]);
            else
                format_value(q, grid_value(q, i, n), vals[p], 64);
        }
        return;
    }
    /* a stream per trial: the seed and the id, each mixed, seed the trial's generator */
    uint64_t a = c->seed ^ 0x5851F42D4C957F2Dull, h = splitmix64(&a);
    uint64_t b = h ^ ((uint64_t)id * 0xD1B54A32D192ED03ull), st = splitmix64(&b);
    for (int p = 0; p < c->nparams; p++) {
        const param *q = &c->params[p];
        double u = (double)(splitmix64(&st) >> 11) * 0x1.0p-53;
        switch (q->type) {
        case P_CHOICE: snprintf(vals[p], 64, "%s", q->choices[(int)(u * q->nchoices)]); break;
        case P_UNIFORM: format_value(q, q->lo + u * (q->hi - q->lo), vals[p], 64); break;
        case P_LOGUNIFORM: format_value(q, exp(log(q->lo) + u * (log(q->hi) - log(q->lo))), vals[p], 64); break;
        case P_INT: format_value(q, q->lo + floor(u * (q->hi - q->lo + 1)), vals[p], 64); break;
        }
    }
}

/* ---- trials and the journal --------------------------------------------------------------- */

typedef enum { RS_NONE, RS_OK, RS_FAILED, RS_TIMEOUT } rstatus;
static const char *const rstatus_names[] = {"none", "ok", "failed", "timeout"};

typedef struct result {
    rstatus status;
    double value, seconds;
    int exit_code; /* exit status, or -signal */
    char *why, *curve, *tail;
} result;

typedef struct trial {
    int id;
    char (*vals)[64];
    int granted; /* highest rung it may run */
    int running; /* rung running now (or started and not ended in the journal), -1 */
    int slot;
    result res[MAX_RUNGS];
    int interrupted;
    int promo_rank, promo_of; /* of the last promotion */
    double live;              /* last epoch value seen while running (NaN: none) */
    int live_epoch;
} trial;

typedef struct sweep {
    config cfg;
    uint64_t hash;
    char *out, *journal_path;
    int jfd;
    trial *t;
    int nt, cap;
    bool done;
    double t0;
    bool tty;
    int drawn_lines;
} sweep;

static trial *trial_new(sweep *sw) {
    if (sw->nt == sw->cap) {
        sw->cap = sw->cap ? 2 * sw->cap : 64;
        trial *t = realloc(sw->t, sizeof *t * (size_t)sw->cap);
        if (!t) {
            fprintf(stderr, "kiln sweep: out of memory\n");
            exit(1);
        }
        sw->t = t;
    }
    trial *t = &sw->t[sw->nt];
    memset(t, 0, sizeof *t);
    t->id = ++sw->nt;
    t->vals = xcalloc((size_t)sw->cfg.nparams, sizeof *t->vals);
    t->granted = 0;
    t->running = -1;
    t->slot = -1;
    t->live = NAN;
    return t;
}

/* Appends one record and fsyncs it: the journal holds it before the sweep acts on it. */
static int journal_write(sweep *sw, sbuf *rec) {
    sb_putc(rec, '\n');
    size_t off = 0;
    while (off < rec->len) {
        ssize_t w = write(sw->jfd, rec->p + off, rec->len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            fprintf(stderr, "kiln sweep: writing %s: %s\n", sw->journal_path, strerror(errno));
            free(rec->p);
            return 1;
        }
        off += (size_t)w;
    }
    free(rec->p);
    if (fsync(sw->jfd) != 0) {
        fprintf(stderr, "kiln sweep: fsync %s: %s\n", sw->journal_path, strerror(errno));
        return 1;
    }
    return 0;
}

static int journal_trial(sweep *sw, const trial *t) {
    sbuf s = {0};
    sb_printf(&s, "trial id=%d", t->id);
    for (int p = 0; p < sw->cfg.nparams; p++) {
        sb_printf(&s, " p.%s=", sw->cfg.params[p].name);
        sb_esc(&s, t->vals[p]);
    }
    return journal_write(sw, &s);
}

static bool better(const sweep *sw, double a, double b) { return sw->cfg.maximize ? a > b : a < b; }

static int journal_error(const sweep *sw, int line, const char *what) {
    fprintf(stderr, "kiln sweep: %s:%d: %s (a journal kiln sweep did not write?)\n", sw->journal_path, line, what);
    return 1;
}

/* Replays the journal into sw (after cutting a torn last line off); 0, or 1 printed. */
static int journal_replay(sweep *sw, char *text, size_t len) {
    int lineno = 0;
    char *save_line = NULL;
    for (char *ln = strtok_r(text, "\n", &save_line); ln; ln = strtok_r(NULL, "\n", &save_line)) {
        lineno++;
        char *save = NULL, *kind = strtok_r(ln, " ", &save);
        if (!kind) continue;
        if (lineno == 1) {
            char *ver = strtok_r(NULL, " ", &save), *fp = strtok_r(NULL, " ", &save);
            if (strcmp(kind, "kiln-sweep") || !ver || strcmp(ver, "1") || !fp || strncmp(fp, "config=", 7))
                return journal_error(sw, lineno, "expected the header 'kiln-sweep 1 config=...'");
            char want[32];
            snprintf(want, sizeof want, "%016llx", (unsigned long long)sw->hash);
            if (strcmp(fp + 7, want)) {
                fprintf(stderr,
                        "kiln sweep: %s was written for another search (config %s, this one %s): the command, "
                        "metric, strategy, trials, seed, budgets or parameters changed; give another --out or "
                        "remove %s\n",
                        sw->journal_path, fp + 7, want, sw->out);
                return 2;
            }
            continue;
        }
        if (!strcmp(kind, "done")) {
            sw->done = true;
            continue;
        }
        /* key=value fields */
        char *keys[MAX_PARAMS + 16], *vals[MAX_PARAMS + 16];
        int nf = 0;
        for (char *f = strtok_r(NULL, " ", &save); f; f = strtok_r(NULL, " ", &save)) {
            char *eq = strchr(f, '=');
            if (!eq || nf == MAX_PARAMS + 16) return journal_error(sw, lineno, "malformed field");
            *eq = 0;
            unesc(eq + 1);
            keys[nf] = f, vals[nf] = eq + 1, nf++;
        }
        const char *ids = NULL, *rungs = NULL;
        for (int i = 0; i < nf; i++) {
            if (!strcmp(keys[i], "id")) ids = vals[i];
            if (!strcmp(keys[i], "rung")) rungs = vals[i];
        }
        long long id, rung = 0;
        if (!ids || !parse_long(ids, 1, sw->nt + 1, &id)) return journal_error(sw, lineno, "bad or missing id");
        if (!strcmp(kind, "trial")) {
            if (id != sw->nt + 1) return journal_error(sw, lineno, "trials out of order");
            trial *t = trial_new(sw);
            for (int p = 0; p < sw->cfg.nparams; p++) {
                bool found = false;
                for (int i = 0; i < nf; i++)
                    if (!strncmp(keys[i], "p.", 2) && !strcmp(keys[i] + 2, sw->cfg.params[p].name)) {
                        snprintf(t->vals[p], 64, "%s", vals[i]);
                        found = true;
                    }
                if (!found) return journal_error(sw, lineno, "a trial without a value of every parameter");
            }
            continue;
        }
        if (id > sw->nt) return journal_error(sw, lineno, "a record of an unknown trial");
        trial *t = &sw->t[id - 1];
        if (!rungs || !parse_long(rungs, 0, sw->cfg.nrungs - 1, &rung))
            return journal_error(sw, lineno, "bad or missing rung");
        if (!strcmp(kind, "start")) {
            if (rung > t->granted) return journal_error(sw, lineno, "a run above the trial's rung");
            t->running = (int)rung;
        } else if (!strcmp(kind, "promote")) {
            t->granted = (int)rung;
            for (int i = 0; i < nf; i++) {
                if (!strcmp(keys[i], "rank")) t->promo_rank = atoi(vals[i]);
                if (!strcmp(keys[i], "of")) t->promo_of = atoi(vals[i]);
            }
        } else if (!strcmp(kind, "interrupted")) {
            t->running = -1;
            t->interrupted++;
        } else if (!strcmp(kind, "end")) {
            result *r = &t->res[rung];
            t->running = -1;
            r->status = RS_FAILED;
            r->value = NAN;
            for (int i = 0; i < nf; i++) {
                const char *k = keys[i], *v = vals[i];
                if (!strcmp(k, "status")) {
                    for (int s = 1; s < 4; s++)
                        if (!strcmp(v, rstatus_names[s])) r->status = (rstatus)s;
                } else if (!strcmp(k, "value"))
                    r->value = strtod(v, NULL);
                else if (!strcmp(k, "seconds"))
                    r->seconds = strtod(v, NULL);
                else if (!strcmp(k, "exit"))
                    r->exit_code = atoi(v);
                else if (!strcmp(k, "why"))
                    r->why = xstrdup(v);
                else if (!strcmp(k, "curve"))
                    r->curve = xstrdup(v);
                else if (!strcmp(k, "tail"))
                    r->tail = xstrdup(v);
            }
        } else {
            return journal_error(sw, lineno, "unknown record");
        }
    }
    (void)len;
    return 0;
}

/* Opens (creating) OUT/journal and replays it; 0, or the exit code with the error printed. */
static int journal_open(sweep *sw, bool show_only) {
    char *text = NULL;
    size_t len = 0;
    int fd = open(sw->journal_path, (show_only ? O_RDONLY : O_RDWR | O_CREAT) | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "kiln sweep: %s: %s\n", sw->journal_path, strerror(errno));
        return 1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        fprintf(stderr, "kiln sweep: %s: %s\n", sw->journal_path, strerror(errno));
        close(fd);
        return 1;
    }
    text = xcalloc((size_t)st.st_size + 1, 1);
    while (len < (size_t)st.st_size) {
        ssize_t r = read(fd, text + len, (size_t)st.st_size - len);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        len += (size_t)r;
    }
    text[len] = 0;
    /* a record torn by a kill in the middle of its write has no newline: cut it off */
    size_t keep = len;
    while (keep > 0 && text[keep - 1] != '\n') keep--;
    if (keep < len) {
        fprintf(stderr, "kiln sweep: %s: dropping a torn last record (%zu bytes)\n", sw->journal_path, len - keep);
        if (!show_only && ftruncate(fd, (off_t)keep) != 0) {
            fprintf(stderr, "kiln sweep: %s: %s\n", sw->journal_path, strerror(errno));
            free(text);
            close(fd);
            return 1;
        }
        text[keep] = 0;
        len = keep;
    }
    sw->jfd = fd;
    if (lseek(fd, 0, SEEK_END) < 0) {
        free(text);
        return 1;
    }
    int rc = 0;
    if (len == 0) {
        if (!show_only) {
            sbuf s = {0};
            sb_printf(&s, "kiln-sweep 1 config=%016llx strategy=%s metric=", (unsigned long long)sw->hash,
                      strategy_names[sw->cfg.strat]);
            sb_esc(&s, sw->cfg.metric);
            sb_printf(&s, " command=");
            sb_esc(&s, sw->cfg.command);
            rc = journal_write(sw, &s);
        }
    } else {
        rc = journal_replay(sw, text, len);
    }
    free(text);
    return rc;
}

/* ---- status of a trial --------------------------------------------------------------------- */

typedef enum { T_PENDING, T_RUNNING, T_FINISHED, T_STOPPED, T_FAILED, T_TIMEOUT } tstate;

static tstate trial_state(const sweep *sw, const trial *t) {
    if (t->running >= 0) return T_RUNNING;
    const result *r = &t->res[t->granted];
    if (r->status == RS_NONE) return T_PENDING;
    if (r->status == RS_FAILED) return T_FAILED;
    if (r->status == RS_TIMEOUT) return T_TIMEOUT;
    return t->granted == sw->cfg.nrungs - 1 ? T_FINISHED : T_STOPPED;
}

/* The best result at the highest rung that has an ok one: (trial index, rung) or -1. */
static int best_trial(const sweep *sw, int *rung_out) {
    for (int k = sw->cfg.nrungs - 1; k >= 0; k--) {
        int best = -1;
        for (int i = 0; i < sw->nt; i++) {
            const result *r = &sw->t[i].res[k];
            if (r->status == RS_OK && (best < 0 || better(sw, r->value, sw->t[best].res[k].value))) best = i;
        }
        if (best >= 0) {
            if (rung_out) *rung_out = k;
            return best;
        }
    }
    return -1;
}

/* The highest rung with an ok result of t (-1: none). */
static int top_ok_rung(const trial *t, int nrungs) {
    for (int k = nrungs - 1; k >= 0; k--)
        if (t->res[k].status == RS_OK) return k;
    return -1;
}

/* ---- scheduling ------------------------------------------------------------------------------ */

static int cmp_sweep_dir; /* qsort context: 1 maximize */
static const trial *cmp_trials;
static int cmp_rung;
static int cmp_by_value(const void *a, const void *b) {
    const trial *x = &cmp_trials[*(const int *)a], *y = &cmp_trials[*(const int *)b];
    double u = x->res[cmp_rung].value, v = y->res[cmp_rung].value;
    if (u != v) return (cmp_sweep_dir ? u > v : u < v) ? -1 : 1;
    return x->id - y->id;
}

/* The trials with an ok result at rung k, best first; returns their count. */
static int rung_ranking(const sweep *sw, int k, int *idx) {
    int n = 0;
    for (int i = 0; i < sw->nt; i++)
        if (sw->t[i].res[k].status == RS_OK) idx[n++] = i;
    cmp_sweep_dir = sw->cfg.maximize;
    cmp_trials = sw->t;
    cmp_rung = k;
    qsort(idx, (size_t)n, sizeof *idx, cmp_by_value);
    return n;
}

/* sha: rung k is complete when every trial that will run it has ended it. */
static bool rung_complete(const sweep *sw, int k, int *idx) {
    for (int i = 0; i < sw->nt; i++)
        if (sw->t[i].granted == k && sw->t[i].res[k].status == RS_NONE) return false;
    if (k == 0) return sw->nt == sw->cfg.trials;
    if (!rung_complete(sw, k - 1, idx)) return false;
    int n = rung_ranking(sw, k - 1, idx), q = n / sw->cfg.reduction;
    for (int j = 0; j < q; j++)
        if (sw->t[idx[j]].granted < k) return false;
    return true;
}

/* The trial (index) to promote from rung k, or -1; *rank, *of: its place in the rung. */
static int promotable(const sweep *sw, int k, int *rank, int *of) {
    int *idx = xcalloc((size_t)sw->nt, sizeof *idx);
    int found = -1;
    if (sw->cfg.strat != S_SHA || rung_complete(sw, k, idx)) {
        int n = rung_ranking(sw, k, idx), q = n / sw->cfg.reduction;
        for (int j = 0; j < q && found < 0; j++) {
            const trial *t = &sw->t[idx[j]];
            if (t->granted == k && t->running < 0) found = idx[j], *rank = j + 1, *of = n;
        }
    }
    free(idx);
    return found;
}

/* Picks the next run for a free slot: a granted rung not yet run (a resumed or promoted
 * trial), else a promotion (highest rung first), else a new trial. Journals what it
 * decides. Returns the trial index (its granted rung is the one to run), -1 when there is
 * nothing to start now, -2 on a journal error. */
static int next_job(sweep *sw) {
    for (int i = 0; i < sw->nt; i++) {
        trial *t = &sw->t[i];
        if (t->running < 0 && t->res[t->granted].status == RS_NONE) return i;
    }
    if (sw->cfg.strat == S_ASHA || sw->cfg.strat == S_SHA) {
        for (int k = sw->cfg.nrungs - 2; k >= 0; k--) {
            int rank = 0, of = 0, i = promotable(sw, k, &rank, &of);
            if (i < 0) continue;
            trial *t = &sw->t[i];
            sbuf s = {0};
            sb_printf(&s, "promote id=%d rung=%d epochs=%d rank=%d of=%d", t->id, k + 1, sw->cfg.rungs[k + 1], rank,
                      of);
            if (journal_write(sw, &s)) return -2;
            t->granted = k + 1;
            t->promo_rank = rank, t->promo_of = of;
            if (!sw->tty)
                printf("[%7.1fs] trial %d promoted to %d epochs (rank %d of %d at %d epochs)\n", now_s() - sw->t0,
                       t->id, sw->cfg.rungs[k + 1], rank, of, sw->cfg.rungs[k]);
            return i;
        }
    }
    if (sw->nt < sw->cfg.trials) {
        trial *t = trial_new(sw);
        sample_trial(&sw->cfg, t->id, t->vals);
        if (journal_trial(sw, t)) return -2;
        return sw->nt - 1;
    }
    return -1;
}

/* ---- running a trial ------------------------------------------------------------------------ */

typedef struct run {
    int ti; /* trial index; -1: slot free */
    int rung;
    pid_t pid;
    int fd;
    FILE *log;
    double t0, deadline, kill_at;
    bool term_sent, kill_sent, timed_out, reaped, eof;
    int wstatus;
    char line[LINE_BYTES];
    size_t linelen;
    char tail[TAIL_BYTES];
    size_t tail_len;
    bool tail_cut; /* the tail lost its start: show it from its first whole line */
    double final;
    bool have_final;
    sbuf curve;
    int ncurve;
    double last_epoch_value;
} run;

static void build_command(const sweep *sw, const trial *t, int rung, sbuf *cmd) {
    for (const char *s = sw->cfg.command; *s; s++) {
        const char *e;
        if (*s == '{' && !(s > sw->cfg.command && s[-1] == '$') && (e = strchr(s, '}'))) {
            size_t len = (size_t)(e - s - 1);
            if (len == 6 && !strncmp(s + 1, "epochs", 6))
                sb_printf(cmd, "%d", sw->cfg.rungs[rung]);
            else if (len == 5 && !strncmp(s + 1, "trial", 5))
                sb_printf(cmd, "%d", t->id);
            else
                for (int p = 0; p < sw->cfg.nparams; p++)
                    if (strlen(sw->cfg.params[p].name) == len && !strncmp(sw->cfg.params[p].name, s + 1, len))
                        sb_shell_word(cmd, t->vals[p]);
            s = e;
        } else {
            sb_putc(cmd, *s);
        }
    }
}

/* A single command (no ';', '&', '|', newline, subshell or compound statement) runs as
 * `[NAME=VALUE ...] exec PROGRAM ...`: the program itself is the shell's process, so its
 * exit status and the signal that ended it are its own, and a SIGTERM it ignores is
 * answered by SIGKILL. Returns where "exec " goes in the command (after its leading
 * assignments), or -1 to run it as it is. */
static long exec_point(const char *c) {
    if (strpbrk(c, ";&|()\n`")) return -1;
    const char *s = c;
    for (;;) {
        while (isspace((unsigned char)*s)) s++;
        const char *w = s;
        while (*w == '_' || isalnum((unsigned char)*w)) w++;
        if (w == s || *w != '=' || isdigit((unsigned char)*s)) break;
        while (*w && !isspace((unsigned char)*w)) {
            if (*w == '\'' || *w == '"' || *w == '\\') return -1; /* a quoted assignment: leave it to sh */
            w++;
        }
        s = w;
    }
    static const char *const words[] = {"if", "for", "while", "until", "case", "{", "!", "exec"};
    for (size_t i = 0; i < sizeof words / sizeof *words; i++) {
        size_t n = strlen(words[i]);
        if (!strncmp(s, words[i], n) && (!s[n] || isspace((unsigned char)s[n]))) return -1;
    }
    return *s ? (long)(s - c) : -1;
}

static void env_name(const char *param, char *out, size_t cap) {
    size_t n = (size_t)snprintf(out, cap, "KILN_SWEEP_%s", param);
    for (size_t i = 11; i < n && i < cap; i++) out[i] = (char)toupper((unsigned char)out[i]);
}

static int start_run(sweep *sw, run *r, int ti, int slot) {
    trial *t = &sw->t[ti];
    int rung = t->granted;
    sbuf s = {0};
    sb_printf(&s, "start id=%d rung=%d epochs=%d slot=%d", t->id, rung, sw->cfg.rungs[rung], slot);
    if (journal_write(sw, &s)) return 1;
    sbuf built = {0}, cmd = {0};
    build_command(sw, t, rung, &built);
    long at = exec_point(built.p);
    if (at >= 0)
        sb_printf(&cmd, "%.*sexec %s", (int)at, built.p, built.p + at);
    else
        sb_printf(&cmd, "%s", built.p);
    free(built.p);
    char logpath[4096];
    snprintf(logpath, sizeof logpath, "%s/logs/trial-%04d-e%d.log", sw->out, t->id, sw->cfg.rungs[rung]);
    int lfd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    r->log = lfd >= 0 ? fdopen(lfd, "w") : NULL;
    if (r->log) fprintf(r->log, "$ %s\n", cmd.p);
    int pfd[2];
    if (pipe(pfd) != 0) {
        fprintf(stderr, "kiln sweep: pipe: %s\n", strerror(errno));
        free(cmd.p);
        return 1;
    }
    fcntl(pfd[0], F_SETFD, FD_CLOEXEC);
    fcntl(pfd[1], F_SETFD, FD_CLOEXEC);
    fcntl(pfd[0], F_SETFL, O_NONBLOCK);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "kiln sweep: fork: %s\n", strerror(errno));
        close(pfd[0]), close(pfd[1]);
        free(cmd.p);
        return 1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        int dn = open("/dev/null", O_RDONLY);
        if (dn >= 0) dup2(dn, 0);
        dup2(pfd[1], 1);
        dup2(pfd[1], 2);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        char name[128], val[32];
        for (int p = 0; p < sw->cfg.nparams; p++) {
            env_name(sw->cfg.params[p].name, name, sizeof name);
            setenv(name, t->vals[p], 1);
        }
        snprintf(val, sizeof val, "%d", sw->cfg.rungs[rung]);
        if (sw->cfg.epochs) setenv("KILN_SWEEP_EPOCHS", val, 1);
        snprintf(val, sizeof val, "%d", t->id);
        setenv("KILN_SWEEP_TRIAL", val, 1);
        if (sw->cfg.ndevices > 0) setenv("KILN_DEVICE", sw->cfg.devices[slot % sw->cfg.ndevices], 1);
        execl("/bin/sh", "sh", "-c", cmd.p, (char *)NULL);
        fprintf(stderr, "kiln sweep: /bin/sh: %s\n", strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid); /* also here: a kill right after fork must reach the group */
    close(pfd[1]);
    free(cmd.p);
    memset(r->line, 0, 1);
    r->ti = ti;
    r->rung = rung;
    r->pid = pid;
    r->fd = pfd[0];
    r->t0 = now_s();
    r->deadline = sw->cfg.time_limit > 0 ? r->t0 + sw->cfg.time_limit : INFINITY;
    r->kill_at = INFINITY;
    r->term_sent = r->kill_sent = r->timed_out = r->reaped = r->eof = false;
    r->linelen = r->tail_len = 0;
    r->tail_cut = false;
    r->have_final = false;
    r->final = NAN;
    r->curve = (sbuf){0};
    r->ncurve = 0;
    r->last_epoch_value = NAN;
    t->running = rung;
    t->slot = slot;
    t->live = NAN;
    t->live_epoch = 0;
    if (!sw->tty) {
        printf("[%7.1fs] trial %d start, %d epochs, slot %d:", now_s() - sw->t0, t->id, sw->cfg.rungs[rung], slot);
        for (int p = 0; p < sw->cfg.nparams; p++) printf(" %s=%s", sw->cfg.params[p].name, t->vals[p]);
        printf("\n");
        fflush(stdout);
    }
    return 0;
}

/* The value of token NAME=V in a line (tokens split at blanks and commas); false if absent. */
static bool find_token(const char *line, const char *name, double *v) {
    size_t n = strlen(name);
    for (const char *s = line; *s;) {
        while (*s && (isspace((unsigned char)*s) || *s == ',' || *s == ';')) s++;
        const char *e = s;
        while (*e && !isspace((unsigned char)*e) && *e != ',' && *e != ';') e++;
        if ((size_t)(e - s) > n && !strncmp(s, name, n) && s[n] == '=') {
            char buf[64];
            size_t len = (size_t)(e - s) - n - 1;
            if (len < sizeof buf) {
                memcpy(buf, s + n + 1, len);
                buf[len] = 0;
                char *end;
                double x = strtod(buf, &end);
                if (end != buf && (*end == 0 || *end == '%')) {
                    *v = x;
                    return true;
                }
            }
        }
        s = e;
    }
    return false;
}

static void on_line(sweep *sw, run *r, const char *line) {
    double ep, v;
    if (!find_token(line, sw->cfg.metric, &v)) return;
    if (find_token(line, "epoch", &ep)) {
        sb_printf(&r->curve, "%s%.6g", r->ncurve ? "," : "", v);
        r->ncurve++;
        r->last_epoch_value = v;
        sw->t[r->ti].live = v;
        sw->t[r->ti].live_epoch = (int)ep;
    } else {
        r->final = v;
        r->have_final = true;
    }
}

static void take_output(sweep *sw, run *r, const char *buf, size_t n) {
    if (r->log) fwrite(buf, 1, n, r->log);
    for (size_t i = 0; i < n; i++) {
        /* the tail: the last TAIL_BYTES bytes */
        if (r->tail_len == TAIL_BYTES) {
            memmove(r->tail, r->tail + TAIL_BYTES / 2, TAIL_BYTES / 2);
            r->tail_len = TAIL_BYTES / 2;
            r->tail_cut = true;
        }
        r->tail[r->tail_len++] = buf[i];
        if (buf[i] == '\n' || r->linelen == LINE_BYTES - 1) {
            r->line[r->linelen] = 0;
            on_line(sw, r, r->line);
            r->linelen = 0;
            if (buf[i] != '\n') r->line[r->linelen++] = buf[i];
        } else {
            r->line[r->linelen++] = buf[i];
        }
    }
}

static void drain(sweep *sw, run *r) {
    char buf[8192];
    for (;;) {
        ssize_t n = read(r->fd, buf, sizeof buf);
        if (n > 0) {
            take_output(sw, r, buf, (size_t)n);
            continue;
        }
        if (n == 0) r->eof = true;
        if (n < 0 && errno == EINTR) continue;
        return;
    }
}

static const char *signame(int sig) {
    switch (sig) {
    case SIGSEGV: return "SIGSEGV";
    case SIGABRT: return "SIGABRT";
    case SIGKILL: return "SIGKILL";
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    case SIGPIPE: return "SIGPIPE";
    default: return "signal";
    }
}

/* Records the end of a reaped run and frees its slot. */
static int finish_run(sweep *sw, run *r) {
    trial *t = &sw->t[r->ti];
    result *res = &t->res[r->rung];
    if (r->linelen) {
        r->line[r->linelen] = 0;
        on_line(sw, r, r->line);
        r->linelen = 0;
    }
    res->seconds = now_s() - r->t0;
    res->value = r->have_final ? r->final : r->last_epoch_value;
    char why[256] = "";
    int code = 0;
    if (WIFEXITED(r->wstatus))
        code = WEXITSTATUS(r->wstatus);
    else if (WIFSIGNALED(r->wstatus))
        code = -WTERMSIG(r->wstatus);
    if (r->timed_out) {
        res->status = RS_TIMEOUT;
        snprintf(why, sizeof why, "time limit %g s: SIGTERM%s", sw->cfg.time_limit,
                 r->kill_sent ? ", then SIGKILL" : "");
    } else if (code > 128 && code < 128 + 65) {
        res->status = RS_FAILED;
        snprintf(why, sizeof why, "exit status %d (the shell's code for %s, %d)", code, signame(code - 128),
                 code - 128);
    } else if (code > 0) {
        res->status = RS_FAILED;
        snprintf(why, sizeof why, "exit status %d", code);
    } else if (code < 0) {
        res->status = RS_FAILED;
        snprintf(why, sizeof why, "killed by %s (%d)", signame(-code), -code);
    } else if (isnan(res->value) && !r->have_final && r->ncurve == 0) {
        res->status = RS_FAILED;
        snprintf(why, sizeof why, "no '%s=' in its output", sw->cfg.metric);
    } else if (!isfinite(res->value)) {
        res->status = RS_FAILED;
        snprintf(why, sizeof why, "%s is %g", sw->cfg.metric, res->value);
    } else {
        res->status = RS_OK;
    }
    res->exit_code = code;
    res->curve = r->curve.p ? r->curve.p : xstrdup("");
    r->curve = (sbuf){0};
    if (res->status != RS_OK) {
        res->why = xstrdup(why);
        size_t off = 0;
        /* the tail from a line start */
        if (r->tail_cut)
            while (off < r->tail_len && r->tail[off] != '\n') off++;
        char tail[TAIL_BYTES + 1];
        memcpy(tail, r->tail + off, r->tail_len - off);
        tail[r->tail_len - off] = 0;
        res->tail = xstrdup(tail[0] == '\n' ? tail + 1 : tail);
    }
    sbuf s = {0};
    sb_printf(&s, "end id=%d rung=%d epochs=%d status=%s value=%.9g seconds=%.3f exit=%d curve=", t->id, r->rung,
              sw->cfg.rungs[r->rung], rstatus_names[res->status], res->value, res->seconds, code);
    sb_esc(&s, res->curve);
    if (res->status != RS_OK) {
        sb_printf(&s, " why=");
        sb_esc(&s, res->why);
        sb_printf(&s, " tail=");
        sb_esc(&s, res->tail);
    }
    int rc = journal_write(sw, &s);
    t->running = -1;
    t->slot = -1;
    close(r->fd);
    if (r->log) fclose(r->log);
    r->log = NULL;
    r->ti = -1;
    if (!sw->tty) {
        int bk = 0, b = best_trial(sw, &bk);
        printf("[%7.1fs] trial %d end, %d epochs, %.1f s: ", now_s() - sw->t0, t->id, sw->cfg.rungs[r->rung],
               res->seconds);
        if (res->status == RS_OK)
            printf("%s=%.6g", sw->cfg.metric, res->value);
        else
            printf("%s (%s)", res->status == RS_TIMEOUT ? "TIMED OUT" : "FAILED", res->why);
        if (b >= 0) printf("; best %.6g (trial %d, %d epochs)", sw->t[b].res[bk].value, sw->t[b].id, sw->cfg.rungs[bk]);
        printf("\n");
        fflush(stdout);
    }
    return rc;
}

/* ---- output: table, CSV, SVG ------------------------------------------------------------------ */

static const char *state_name(tstate s) {
    static const char *const n[] = {"pending", "running", "finished", "stopped", "failed", "timeout"};
    return n[s];
}

static int count_state(const sweep *sw, tstate s) {
    int n = 0;
    for (int i = 0; i < sw->nt; i++) n += trial_state(sw, &sw->t[i]) == s;
    return n;
}

static int cmp_rank(const void *a, const void *b) {
    const trial *x = &cmp_trials[*(const int *)a], *y = &cmp_trials[*(const int *)b];
    int kx = top_ok_rung(x, MAX_RUNGS), ky = top_ok_rung(y, MAX_RUNGS);
    if (kx != ky) return ky - kx;
    if (kx >= 0 && x->res[kx].value != y->res[ky].value)
        return (cmp_sweep_dir ? x->res[kx].value > y->res[ky].value : x->res[kx].value < y->res[ky].value) ? -1 : 1;
    return x->id - y->id;
}

/* The table; returns the number of lines printed. With max_rows > 0 (the live table on a
 * terminal, which must fit the screen to be redrawn) only the running trials and the best
 * ones up to max_rows are shown. */
static int print_table(const sweep *sw, FILE *f, int max_rows) {
    const config *c = &sw->cfg;
    int lines = 0, bk = 0, b = best_trial(sw, &bk);
    bool *show = xcalloc((size_t)sw->nt, sizeof *show);
    int shown = 0;
    if (max_rows <= 0 || sw->nt <= max_rows) {
        for (int i = 0; i < sw->nt; i++) show[i] = true;
        shown = sw->nt;
    } else {
        for (int i = 0; i < sw->nt; i++)
            if (sw->t[i].running >= 0) show[i] = true, shown++;
        int *idx = xcalloc((size_t)sw->nt, sizeof *idx);
        for (int i = 0; i < sw->nt; i++) idx[i] = i;
        cmp_sweep_dir = c->maximize;
        cmp_trials = sw->t;
        qsort(idx, (size_t)sw->nt, sizeof *idx, cmp_rank);
        for (int j = 0; j < sw->nt && shown < max_rows; j++)
            if (!show[idx[j]]) show[idx[j]] = true, shown++;
        free(idx);
    }
    fprintf(f, "%-7s %-9s", "trial", "state");
    for (int k = 0; k < c->nrungs; k++) {
        char h[32];
        snprintf(h, sizeof h, "@%d", c->rungs[k]);
        fprintf(f, " %9s", h);
    }
    fprintf(f, " %8s", "seconds");
    for (int p = 0; p < c->nparams; p++) fprintf(f, " %10s", c->params[p].name);
    fprintf(f, "\n");
    lines++;
    for (int i = 0; i < sw->nt; i++) {
        const trial *t = &sw->t[i];
        if (!show[i]) continue;
        tstate st = trial_state(sw, t);
        char idbuf[16];
        snprintf(idbuf, sizeof idbuf, "%d%s", t->id, i == b ? " *" : "");
        fprintf(f, "%-7s %-9s", idbuf, state_name(st));
        double secs = 0;
        for (int k = 0; k < c->nrungs; k++) {
            const result *r = &t->res[k];
            secs += r->seconds;
            if (r->status == RS_OK)
                fprintf(f, " %9.4f", r->value);
            else if (r->status == RS_FAILED)
                fprintf(f, " %9s", "failed");
            else if (r->status == RS_TIMEOUT)
                fprintf(f, " %9s", "timeout");
            else if (t->running == k && !isnan(t->live)) {
                char live[32];
                snprintf(live, sizeof live, "%.4f e%d", t->live, t->live_epoch);
                fprintf(f, " %9s", live);
            } else
                fprintf(f, " %9s", t->running == k ? "..." : "-");
        }
        fprintf(f, " %8.1f", secs);
        for (int p = 0; p < c->nparams; p++) fprintf(f, " %10s", t->vals[p]);
        fprintf(f, "\n");
        lines++;
    }
    if (shown < sw->nt) {
        fprintf(f, "(%d more trials in the final table)\n", sw->nt - shown);
        lines++;
    }
    free(show);
    int epochs = 0;
    double secs = 0;
    for (int i = 0; i < sw->nt; i++)
        for (int k = 0; k < c->nrungs; k++) {
            epochs += sw->t[i].res[k].status != RS_NONE ? c->rungs[k] : 0;
            secs += sw->t[i].res[k].seconds;
        }
    fprintf(f,
            "%s, %d of %d trials: %d running, %d finished, %d stopped early, %d failed, %d timed out; "
            "%d epochs run (every trial to the end: %d), %.1f s in trials\n",
            strategy_names[c->strat], sw->nt, c->trials, count_state(sw, T_RUNNING), count_state(sw, T_FINISHED),
            count_state(sw, T_STOPPED), count_state(sw, T_FAILED), count_state(sw, T_TIMEOUT), epochs,
            c->trials * c->epochs, secs);
    lines++;
    if (b >= 0) {
        fprintf(f, "best so far: trial %d, %s=%.6g after %d epochs\n", sw->t[b].id, c->metric, sw->t[b].res[bk].value,
                c->rungs[bk]);
        lines++;
    }
    return lines;
}

static void live_redraw(sweep *sw) {
    if (!sw->tty) return;
    if (sw->drawn_lines) printf("\033[%dA\033[J", sw->drawn_lines);
    sw->drawn_lines = print_table(sw, stdout, 20) + 1;
    printf("[%.0f s]\n", now_s() - sw->t0);
    fflush(stdout);
}

static void csv_field(FILE *f, const char *s) {
    if (!strpbrk(s, ",\"\n\r")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static int write_csv(const sweep *sw, const char *path) {
    const config *c = &sw->cfg;
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "kiln sweep: %s: %s\n", path, strerror(errno));
        return 1;
    }
    fprintf(f, "trial,state,epochs,%s,seconds", c->metric);
    for (int p = 0; p < c->nparams; p++) fprintf(f, ",%s", c->params[p].name);
    for (int k = 0; k < c->nrungs; k++) fprintf(f, ",%s_at_%d", c->metric, c->rungs[k]);
    fprintf(f, ",exit,why,command\n");
    for (int i = 0; i < sw->nt; i++) {
        const trial *t = &sw->t[i];
        int k = top_ok_rung(t, c->nrungs);
        const result *last = &t->res[t->granted];
        double secs = 0;
        for (int j = 0; j < c->nrungs; j++) secs += t->res[j].seconds;
        fprintf(f, "%d,%s,%d,", t->id, state_name(trial_state(sw, t)), k >= 0 ? c->rungs[k] : 0);
        if (k >= 0) fprintf(f, "%.9g", t->res[k].value);
        fprintf(f, ",%.3f", secs);
        for (int p = 0; p < c->nparams; p++) fputc(',', f), csv_field(f, t->vals[p]);
        for (int j = 0; j < c->nrungs; j++) {
            fputc(',', f);
            if (t->res[j].status == RS_OK) fprintf(f, "%.9g", t->res[j].value);
        }
        fprintf(f, ",%d,", last->exit_code);
        csv_field(f, last->why ? last->why : "");
        fputc(',', f);
        sbuf cmd = {0};
        build_command(sw, t, t->granted, &cmd);
        csv_field(f, cmd.p);
        free(cmd.p);
        fputc('\n', f);
    }
    if (fclose(f) != 0) {
        fprintf(stderr, "kiln sweep: %s: %s\n", path, strerror(errno));
        return 1;
    }
    return 0;
}

static void svg_text(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '<')
            fputs("&lt;", f);
        else if (*s == '>')
            fputs("&gt;", f);
        else if (*s == '&')
            fputs("&amp;", f);
        else if (*s == '"')
            fputs("&quot;", f);
        else
            fputc(*s, f);
    }
}

/* Light to dark: the rungs from the first to the last. */
static const char *rung_colour(int k, int n) {
    static const char *const colours[] = {"#9ecae1", "#4292c6", "#2171b5", "#08519c", "#08306b"};
    return colours[n == 1 ? 4 : k * 4 / (n - 1)];
}

/* A scatter of the metric (its value at the highest rung each trial reached) against each
 * parameter, one panel each; the colour says the rung. Choices sit at even positions. */
static int write_svg(const sweep *sw, const char *path) {
    const config *c = &sw->cfg;
    const int pw = 300, ph = 240, ml = 58, mr = 14, mt = 30, mb = 44;
    int ncol = c->nparams < 3 ? c->nparams : 3, nrow = (c->nparams + ncol - 1) / ncol;
    int width = ncol * pw, height = nrow * ph + 30;
    double ylo = INFINITY, yhi = -INFINITY;
    for (int i = 0; i < sw->nt; i++) {
        int k = top_ok_rung(&sw->t[i], c->nrungs);
        if (k < 0) continue;
        double v = sw->t[i].res[k].value;
        ylo = fmin(ylo, v), yhi = fmax(yhi, v);
    }
    if (!(ylo <= yhi)) ylo = 0, yhi = 1;
    if (yhi - ylo < 1e-12) ylo -= 0.5, yhi += 0.5;
    double pad = (yhi - ylo) * 0.05;
    ylo -= pad, yhi += pad;
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "kiln sweep: %s: %s\n", path, strerror(errno));
        return 1;
    }
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" "
            "font-size=\"11\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            width, height);
    /* legend: one colour per rung */
    for (int k = 0; k < c->nrungs; k++)
        fprintf(f, "<circle cx=\"%d\" cy=\"16\" r=\"4\" fill=\"%s\"/><text x=\"%d\" y=\"20\">%d epochs</text>\n",
                10 + k * 90, rung_colour(k, c->nrungs), 18 + k * 90, c->rungs[k]);
    for (int p = 0; p < c->nparams; p++) {
        const param *q = &c->params[p];
        int ox = (p % ncol) * pw, oy = 30 + (p / ncol) * ph;
        int x0 = ox + ml, x1 = ox + pw - mr, y0 = oy + mt, y1 = oy + ph - mb;
        bool logx = q->type == P_LOGUNIFORM;
        double xlo = q->type == P_CHOICE ? -0.5 : q->lo, xhi = q->type == P_CHOICE ? q->nchoices - 0.5 : q->hi;
        if (q->type == P_INT && xlo == xhi) xlo -= 0.5, xhi += 0.5;
        if (logx) xlo = log10(xlo), xhi = log10(xhi);
        fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#888\"/>\n", x0, y0,
                x1 - x0, y1 - y0);
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">", (x0 + x1) / 2, y1 + 32);
        svg_text(f, q->name);
        fprintf(f, "%s</text>\n", logx ? " (log scale)" : "");
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" transform=\"rotate(-90 %d %d)\">", ox + 14,
                (y0 + y1) / 2, ox + 14, (y0 + y1) / 2);
        svg_text(f, c->metric);
        fprintf(f, "</text>\n");
        for (int j = 0; j <= 4; j++) { /* y ticks */
            double v = ylo + (yhi - ylo) * j / 4;
            double y = y1 - (double)(y1 - y0) * j / 4;
            fprintf(f,
                    "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#eee\"/><text x=\"%d\" y=\"%.1f\" "
                    "text-anchor=\"end\">%.4g</text>\n",
                    x0, y, x1, y, x0 - 4, y + 4, v);
        }
        int nt = q->type == P_CHOICE ? q->nchoices : 4;
        for (int j = 0; j <= nt; j++) { /* x ticks */
            if (q->type == P_CHOICE && j == nt) break;
            double xv = q->type == P_CHOICE ? j : xlo + (xhi - xlo) * j / nt;
            double x = x0 + (x1 - x0) * (xv - xlo) / (xhi - xlo);
            fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">", x, y1 + 14);
            if (q->type == P_CHOICE)
                svg_text(f, q->choices[j]);
            else
                fprintf(f, "%.3g", logx ? pow(10, xv) : xv);
            fprintf(f, "</text>\n");
        }
        for (int i = 0; i < sw->nt; i++) {
            const trial *t = &sw->t[i];
            int k = top_ok_rung(t, c->nrungs);
            if (k < 0) continue;
            double xv;
            if (q->type == P_CHOICE) {
                xv = 0;
                for (int j = 0; j < q->nchoices; j++)
                    if (!strcmp(q->choices[j], t->vals[p])) xv = j;
                xv += ((t->id * 37) % 11 - 5) * 0.03; /* a little jitter keeps equal values apart */
            } else {
                xv = strtod(t->vals[p], NULL);
                if (logx) xv = log10(xv);
            }
            double x = x0 + (x1 - x0) * (xv - xlo) / (xhi - xlo);
            double y = y1 - (y1 - y0) * (t->res[k].value - ylo) / (yhi - ylo);
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\" stroke=\"#333\" stroke-width=\"0.5\">", x,
                    y, rung_colour(k, c->nrungs));
            fprintf(f, "<title>trial %d: %s=%.6g after %d epochs</title></circle>\n", t->id, c->metric, t->res[k].value,
                    c->rungs[k]);
        }
    }
    fprintf(f, "</svg>\n");
    if (fclose(f) != 0) {
        fprintf(stderr, "kiln sweep: %s: %s\n", path, strerror(errno));
        return 1;
    }
    return 0;
}

static int write_outputs(sweep *sw, bool finished) {
    const config *c = &sw->cfg;
    char path[4096];
    print_table(sw, stdout, 0);
    int bk = 0, b = best_trial(sw, &bk);
    if (b >= 0) {
        const trial *t = &sw->t[b];
        sbuf cmd = {0};
        build_command(sw, t, c->nrungs - 1, &cmd);
        printf("\nbest: trial %d, %s=%.6g after %d epochs%s\n", t->id, c->metric, t->res[bk].value, c->rungs[bk],
               bk < c->nrungs - 1 ? " (no trial reached the full budget)" : "");
        printf("command: %s\nenvironment:", cmd.p);
        char name[128];
        for (int p = 0; p < c->nparams; p++) {
            env_name(c->params[p].name, name, sizeof name);
            printf(" %s=%s", name, t->vals[p]);
        }
        if (c->epochs) printf(" KILN_SWEEP_EPOCHS=%d", c->epochs);
        printf("\n");
        free(cmd.p);
    } else {
        printf("\nno trial has a result yet\n");
    }
    int rc = 0;
    snprintf(path, sizeof path, "%s/trials.csv", sw->out);
    rc |= write_csv(sw, path);
    printf("trials: %s\n", path);
    snprintf(path, sizeof path, "%s/sweep.svg", sw->out);
    rc |= write_svg(sw, path);
    printf("plot: %s\njournal: %s%s\n", path, sw->journal_path, finished ? "" : " (unfinished: run again to resume)");
    fflush(stdout);
    return rc;
}

/* ---- the main loop ---------------------------------------------------------------------------- */

static volatile sig_atomic_t got_signal;
static void on_signal(int sig) { got_signal = sig; }

static int mkdir_p(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *s = buf + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
        *s = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
    return 0;
}

/* Ends every running run's process group (SIGTERM, SIGKILL after the grace time); their
 * journal records stay without an end, so a resumed sweep runs them again. */
static void stop_all(sweep *sw, run *runs, int n) {
    double until = now_s() + sw->cfg.kill_grace;
    for (int i = 0; i < n; i++)
        if (runs[i].ti >= 0) kill(-runs[i].pid, SIGTERM);
    for (;;) {
        int left = 0;
        for (int i = 0; i < n; i++) {
            if (runs[i].ti < 0 || runs[i].reaped) continue;
            if (waitpid(runs[i].pid, &runs[i].wstatus, WNOHANG) == runs[i].pid)
                runs[i].reaped = true;
            else
                left++;
        }
        if (!left) break;
        if (now_s() >= until) {
            for (int i = 0; i < n; i++)
                if (runs[i].ti >= 0 && !runs[i].reaped) kill(-runs[i].pid, SIGKILL);
            until = INFINITY;
        }
        usleep(20000);
    }
    for (int i = 0; i < n; i++)
        if (runs[i].ti >= 0) kill(-runs[i].pid, SIGKILL); /* whatever of the group is left */
}

static int run_sweep(sweep *sw) {
    const config *c = &sw->cfg;
    int nslots = c->parallel;
    run *runs = xcalloc((size_t)nslots, sizeof *runs);
    for (int i = 0; i < nslots; i++) runs[i].ti = -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    int rc = 0;
    double last_draw = 0;
    struct pollfd *pf = xcalloc((size_t)nslots, sizeof *pf);
    for (;;) {
        if (got_signal) break;
        /* fill the free slots */
        bool nothing = false;
        for (int s = 0; s < nslots && !nothing; s++) {
            if (runs[s].ti >= 0) continue;
            int ti = next_job(sw);
            if (ti == -2) {
                rc = 1;
                break;
            }
            if (ti < 0) {
                nothing = true;
                break;
            }
            if (start_run(sw, &runs[s], ti, s)) {
                rc = 1;
                break;
            }
            live_redraw(sw);
        }
        if (rc) break;
        int nrun = 0;
        for (int s = 0; s < nslots; s++) nrun += runs[s].ti >= 0;
        if (nrun == 0) break; /* nothing running and nothing to start: the sweep is over */
        /* wait for output, an exit or a deadline */
        double now = now_s(), wake = now + (sw->tty ? 1.0 : 0.25);
        int np = 0;
        for (int s = 0; s < nslots; s++) {
            run *r = &runs[s];
            if (r->ti < 0) continue;
            wake = fmin(wake, fmin(r->deadline, r->kill_at));
            if (!r->eof) pf[np].fd = r->fd, pf[np].events = POLLIN, pf[np].revents = 0, np++;
        }
        int ms = (int)ceil((wake - now) * 1000);
        if (np > 0)
            poll(pf, (nfds_t)np, ms < 0 ? 0 : ms);
        else
            usleep((useconds_t)(ms < 0 ? 0 : ms > 50 ? 50000 : ms * 1000));
        now = now_s();
        for (int s = 0; s < nslots; s++) {
            run *r = &runs[s];
            if (r->ti < 0) continue;
            if (!r->eof) drain(sw, r);
            if (!r->reaped && waitpid(r->pid, &r->wstatus, WNOHANG) == r->pid) r->reaped = true;
            if (r->reaped) {
                /* whatever it wrote before it ended is in the pipe; a child of it that holds
                 * the pipe on is ended with the run */
                drain(sw, r);
                kill(-r->pid, SIGKILL);
                if (finish_run(sw, r)) rc = 1;
                live_redraw(sw);
                continue;
            }
            if (now >= r->deadline && !r->term_sent) {
                r->timed_out = r->term_sent = true;
                kill(-r->pid, SIGTERM);
                r->kill_at = now + c->kill_grace;
            } else if (now >= r->kill_at && !r->kill_sent) {
                r->kill_sent = true;
                kill(-r->pid, SIGKILL);
                r->kill_at = INFINITY;
            }
        }
        if (rc) break;
        if (sw->tty && now - last_draw >= 1.0) {
            live_redraw(sw);
            last_draw = now;
        }
    }
    if (got_signal || rc) {
        stop_all(sw, runs, nslots);
        for (int s = 0; s < nslots; s++)
            if (runs[s].ti >= 0) {
                close(runs[s].fd);
                if (runs[s].log) fclose(runs[s].log);
                free(runs[s].curve.p);
            }
    }
    free(pf);
    free(runs);
    if (got_signal) {
        fprintf(stderr,
                "\nkiln sweep: interrupted by %s: the trials that were running run again when the sweep "
                "is resumed (kiln sweep %s)\n",
                signame(got_signal), c->path);
        return 130;
    }
    return rc;
}

static void usage(FILE *f) {
    fprintf(f, "usage: kiln sweep CONFIG [--out DIR] [--strategy grid|random|asha|sha] [--parallel N] [--show]\n"
               "  runs the hyperparameter search CONFIG describes (tools/sweep.c documents the format); run\n"
               "  again, it resumes from OUT/journal, or only prints the table of a finished sweep\n"
               "  --out DIR      journal, trials.csv, sweep.svg and logs/ [the config's out, else NAME.sweep]\n"
               "  --strategy S   override the config's strategy\n"
               "  --parallel N   override how many trials run at once\n"
               "  --show         print the table from the journal and run nothing\n");
}

int kiln_cmd_sweep(int argc, char **argv) {
    const char *conf = NULL, *out = NULL, *strat = NULL;
    long long parallel = 0;
    bool show = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--show")) {
            show = true;
        } else if (!strcmp(a, "--out") || !strcmp(a, "--strategy") || !strcmp(a, "--parallel")) {
            if (i + 1 >= argc || !argv[i + 1][0]) {
                fprintf(stderr, "kiln sweep: %s needs a value\n", a);
                return 2;
            }
            const char *v = argv[++i];
            if (!strcmp(a, "--out"))
                out = v;
            else if (!strcmp(a, "--strategy"))
                strat = v;
            else if (!parse_long(v, 1, MAX_SLOTS, &parallel)) {
                fprintf(stderr, "kiln sweep: --parallel %s: expected an integer from 1 to %d\n", v, MAX_SLOTS);
                return 2;
            }
        } else if (a[0] == '-' || conf) {
            fprintf(stderr, "kiln sweep: unknown argument '%s'\n", a);
            usage(stderr);
            return 2;
        } else {
            conf = a;
        }
    }
    if (!conf) {
        fprintf(stderr, "kiln sweep: expected a config file\n");
        usage(stderr);
        return 2;
    }
    sweep sw;
    memset(&sw, 0, sizeof sw);
    sw.jfd = -1;
    int rc = config_load(&sw.cfg, conf, strat);
    if (rc) {
        config_free(&sw.cfg);
        return rc;
    }
    if (parallel) sw.cfg.parallel = (int)parallel;
    sw.hash = config_hash(&sw.cfg);
    if (out)
        sw.out = xstrdup(out);
    else if (sw.cfg.out)
        sw.out = xstrdup(sw.cfg.out);
    else {
        const char *base = strrchr(conf, '/') ? strrchr(conf, '/') + 1 : conf;
        const char *dot = strrchr(base, '.');
        size_t n = dot && dot != base ? (size_t)(dot - base) : strlen(base);
        sbuf s = {0};
        sb_printf(&s, "%.*s.sweep", (int)n, base);
        sw.out = s.p;
    }
    sbuf jp = {0}, logs = {0};
    sb_printf(&jp, "%s/journal", sw.out);
    sb_printf(&logs, "%s/logs", sw.out);
    sw.journal_path = jp.p;
    if (!show && mkdir_p(logs.p) != 0) {
        fprintf(stderr, "kiln sweep: cannot create %s: %s\n", logs.p, strerror(errno));
        rc = 1;
        goto done;
    }
    rc = journal_open(&sw, show);
    if (rc) goto done;
    setvbuf(stdout, NULL, _IOLBF, 0);
    sw.t0 = now_s();
    if (show) {
        rc = write_outputs(&sw, sw.done);
        goto done;
    }
    if (sw.done) {
        printf("%s: the sweep in %s is finished; its table:\n\n", conf, sw.out);
        rc = write_outputs(&sw, true);
        goto done;
    }
    /* a run the journal saw start but never end was cut off: record it, run it again */
    int resumed = 0;
    for (int i = 0; i < sw.nt; i++) {
        trial *t = &sw.t[i];
        if (t->running < 0) continue;
        sbuf s = {0};
        sb_printf(&s, "interrupted id=%d rung=%d epochs=%d", t->id, t->running, sw.cfg.rungs[t->running]);
        if (journal_write(&sw, &s)) {
            rc = 1;
            goto done;
        }
        printf("trial %d was running (%d epochs) when the sweep stopped: it runs again\n", t->id,
               sw.cfg.rungs[t->running]);
        t->running = -1;
        t->interrupted++;
        resumed++;
    }
    if (sw.nt > 0) printf("resuming %s: %d trials in the journal, %d interrupted\n", sw.journal_path, sw.nt, resumed);
    sw.tty = isatty(1);
    printf("kiln sweep %s: %s, %d trials, %s %s, rungs", conf, strategy_names[sw.cfg.strat], sw.cfg.trials,
           sw.cfg.maximize ? "maximize" : "minimize", sw.cfg.metric);
    for (int k = 0; k < sw.cfg.nrungs; k++) printf("%s%d", k ? "," : " ", sw.cfg.rungs[k]);
    printf(" epochs, %d at once\n", sw.cfg.parallel);
    rc = run_sweep(&sw);
    if (sw.tty && sw.drawn_lines) printf("\033[%dA\033[J", sw.drawn_lines);
    if (rc == 0) {
        sbuf s = {0};
        sb_printf(&s, "done");
        rc = journal_write(&sw, &s);
        printf("\nfinished in %.1f s\n", now_s() - sw.t0);
    }
    if (rc != 130) {
        int orc = write_outputs(&sw, rc == 0);
        if (!rc) rc = orc;
    }
done:
    if (sw.jfd >= 0) close(sw.jfd);
    for (int i = 0; i < sw.nt; i++) {
        for (int k = 0; k < MAX_RUNGS; k++) {
            free(sw.t[i].res[k].why);
            free(sw.t[i].res[k].curve);
            free(sw.t[i].res[k].tail);
        }
        free(sw.t[i].vals);
    }
    free(sw.t);
    free(sw.out);
    free(jp.p);
    free(logs.p);
    config_free(&sw.cfg);
    return rc;
}

/* tools/kiln.c - the kiln command line: list devices, inspect and clear the kernel cache. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kiln/kiln.h>

#include "bench.h"
#include "onnx_tool.h"
#include "ops.h"
#include "sweep.h"
#include "tune.h"

static void usage(FILE *f) {
    fprintf(f, "usage: kiln <command> [options]\n"
               "\n"
               "commands:\n"
               "  devices [--json]     list every OpenCL platform and device; '*' marks the default\n"
               "  cache info           where the kernel disk cache is, how many files and bytes\n"
               "  cache clear          remove kiln's files from the kernel disk cache\n"
               "  ops [--json] [--device SPEC]\n"
               "                       every op: backward, test references, PyTorch golden test, smoke run per device\n"
               "  bench gemm|train|startup|ops [--json] [options]\n"
               "                       GEMM against OpenBLAS, training steps, start-up, per-op times (bench --help)\n"
               "  onnx info|run|test   inspect, run (.npy in and out) or conformance-test ONNX models (onnx --help)\n"
               "  tune [--quick]       search CLBlast's GEMM parameters for the device and store the best\n"
               "  sweep CONFIG [--out DIR] [--strategy S] [--parallel N] [--show]\n"
               "                       hyperparameter search (grid, random, asha) over a training program\n"
               "  version              print kiln's version\n"
               "\n"
               "environment:\n"
               "  KILN_DEVICE          device to open: gpu, cpu, P:D, or part of a device/platform name\n"
               "  KILN_CACHE_DIR       kernel cache directory (default $XDG_CACHE_HOME/kiln or ~/.cache/kiln)\n"
               "  KILN_CACHE=off       disable the kernel disk cache\n"
               "  KILN_LOG=1           log to stderr\n"
               "  KILN_TUNE=off        use CLBlast's own parameters (builtin: ignore what kiln tune stored;\n"
               "                       auto: search kiln's GEMM kernels' set at the first product, for about\n"
               "                       KILN_TUNE_SECONDS (10), and store it)\n");
}

/* Every subcommand rejects what it does not know: exit 2 naming the argument. */
static int unknown_arg(const char *cmd, const char *arg) {
    fprintf(stderr, "kiln %s: unknown argument '%s'\n\n", cmd, arg);
    usage(stderr);
    return 2;
}

static int cmd_devices(int argc, char **argv) {
    int json = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else
            return unknown_arg("devices", argv[i]);
    }
    int n = 0;
    kiln_status s = kiln_devices(NULL, 0, &n);
    if (s != KILN_OK) {
        if (json)
            printf("{\"devices\": [], \"error\": "), tool_json_str(kiln_last_error()), printf("}\n");
        else
            fprintf(stderr, "kiln devices: %s\n", kiln_last_error());
        return 1;
    }
    kiln_device_info *d = calloc((size_t)n, sizeof *d);
    if (!d || kiln_devices(d, n, &n) != KILN_OK) {
        fprintf(stderr, "kiln devices: %s\n", kiln_last_error());
        free(d);
        return 1;
    }
    kiln_device_info chosen;
    int have_env = getenv("KILN_DEVICE") && kiln_device_find(getenv("KILN_DEVICE"), &chosen) == KILN_OK;
    if (json) {
        printf("{\"devices\": [");
        for (int i = 0; i < n; i++) {
            const kiln_device_info *x = &d[i];
            printf("%s\n  {\"spec\": \"%d:%d\", \"default\": %s, \"name\": ", i ? "," : "", x->platform_index,
                   x->device_index, x->is_default ? "true" : "false");
            tool_json_str(x->name);
            printf(", \"vendor\": "), tool_json_str(x->vendor);
            printf(", \"type\": "), tool_json_str(kiln_device_type_name(x->type));
            printf(", \"platform\": "), tool_json_str(x->platform_name);
            printf(", \"platform_vendor\": "), tool_json_str(x->platform_vendor);
            printf(", \"platform_version\": "), tool_json_str(x->platform_version);
            printf(", \"version\": "), tool_json_str(x->version);
            printf(", \"driver_version\": "), tool_json_str(x->driver_version);
            printf(", \"opencl_c_version\": "), tool_json_str(x->opencl_c_version);
            printf(", \"compute_units\": %u, \"max_clock_mhz\": %u, \"global_mem_bytes\": %llu, "
                   "\"local_mem_bytes\": %llu, \"max_alloc_bytes\": %llu, \"max_work_group_size\": %llu, "
                   "\"fp16\": %s, \"fp64\": %s, \"preferred_vector_width_float\": %u, "
                   "\"preferred_vector_width_half\": %u, \"native_vector_width_float\": %u}",
                   x->compute_units, x->max_clock_mhz, (unsigned long long)x->global_mem_bytes,
                   (unsigned long long)x->local_mem_bytes, (unsigned long long)x->max_alloc_bytes,
                   (unsigned long long)x->max_work_group_size, x->fp16 ? "true" : "false", x->fp64 ? "true" : "false",
                   x->preferred_vector_width_float, x->preferred_vector_width_half, x->native_vector_width_float);
        }
        printf("\n]}\n");
    } else {
        printf("    %-5s %-12s %-36s %-28s %5s %9s %9s %5s %5s  %s\n", "spec", "type", "device", "platform", "CUs",
               "mem MiB", "alloc MiB", "fp16", "fp64", "driver / OpenCL C");
        for (int i = 0; i < n; i++) {
            const kiln_device_info *x = &d[i];
            int picked = have_env
                             ? (x->platform_index == chosen.platform_index && x->device_index == chosen.device_index)
                             : x->is_default;
            char spec[16];
            snprintf(spec, sizeof spec, "%d:%d", x->platform_index, x->device_index);
            printf("%s %-5s %-12s %-36.36s %-28.28s %5u %9llu %9llu %5s %5s  %s / %s\n", picked ? " * " : "   ", spec,
                   kiln_device_type_name(x->type), x->name, x->platform_name, x->compute_units,
                   (unsigned long long)(x->global_mem_bytes >> 20), (unsigned long long)(x->max_alloc_bytes >> 20),
                   x->fp16 ? "yes" : "no", x->fp64 ? "yes" : "no", x->driver_version, x->opencl_c_version);
        }
        printf("\n* = the device kiln_open(NULL) picks%s\n",
               have_env ? " (from KILN_DEVICE)" : "; set KILN_DEVICE=gpu|cpu|P:D|name to choose another");
        if (getenv("KILN_DEVICE") && !have_env) {
            printf("warning: KILN_DEVICE='%s' matches no device: kiln_open(NULL) will fail\n", getenv("KILN_DEVICE"));
        }
    }
    free(d);
    return 0;
}

static int cmd_cache(int argc, char **argv) {
    if (argc < 1) {
        fprintf(stderr, "kiln cache: expected info or clear\n\n");
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[0], "info") != 0 && strcmp(argv[0], "clear") != 0) return unknown_arg("cache", argv[0]);
    if (argc > 1) return unknown_arg(argv[0][0] == 'i' ? "cache info" : "cache clear", argv[1]);
    char dir[1024];
    if (kiln_cache_dir(dir, sizeof dir) != KILN_OK) {
        fprintf(stderr, "kiln cache: %s\n", kiln_last_error());
        return 1;
    }
    if (!dir[0]) {
        printf("kernel disk cache: off (KILN_CACHE=off)\n");
        return 0;
    }
    kiln_cache_summary sum;
    if (strcmp(argv[0], "clear") == 0) {
        kiln_cache_summary_get(&sum);
        if (kiln_cache_clear() != KILN_OK) {
            fprintf(stderr, "kiln cache clear: %s\n", kiln_last_error());
            return 1;
        }
        printf("removed %llu files (%.1f KiB) from %s\n", (unsigned long long)sum.files, sum.bytes / 1024.0, dir);
        return 0;
    }
    kiln_cache_summary_get(&sum);
    printf("kernel disk cache: %s\nprograms: %llu files, %.1f KiB\n", dir, (unsigned long long)sum.files,
           sum.bytes / 1024.0);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "devices") == 0) return cmd_devices(argc - 2, argv + 2);
    if (strcmp(argv[1], "cache") == 0) return cmd_cache(argc - 2, argv + 2);
    if (strcmp(argv[1], "ops") == 0) return kiln_cmd_ops(argc - 2, argv + 2);
    if (strcmp(argv[1], "bench") == 0) return kiln_cmd_bench(argc - 2, argv + 2);
    if (strcmp(argv[1], "onnx") == 0) return kiln_cmd_onnx(argc - 2, argv + 2);
    if (strcmp(argv[1], "tune") == 0) return kiln_cmd_tune(argc - 2, argv + 2);
    if (strcmp(argv[1], "sweep") == 0) return kiln_cmd_sweep(argc - 2, argv + 2);
    if (strcmp(argv[1], "version") == 0) {
        if (argc > 2) return unknown_arg("version", argv[2]);
        printf("kiln %s\n", KILN_VERSION_STRING);
        return 0;
    }
    fprintf(stderr, "kiln: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}

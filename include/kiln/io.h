/* kiln/io.h - checkpoints in the safetensors format, and image grids as PNG (at the end)
 * (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length, a JSON header naming each tensor's
 * dtype, shape and byte range, then the raw little-endian data. PyTorch reads them with safetensors.torch.load_file or
 * a few lines of Python (tools/kiln_torch.py), and kiln reads PyTorch state dicts saved that way.
 *
 * Writing is atomic: the file is written under a temporary name in the same directory,
 * flushed to disk (fsync) and renamed over the target, so a crash or a failed write at any
 * point leaves the previous file as it was. Reading validates everything (header syntax,
 * dtypes, shapes, that byte ranges are in the file, in order, non-overlapping and of the
 * right size) before a single tensor is changed: a bad file leaves the model untouched.
 */
#ifndef KILN_IO_H
#define KILN_IO_H

#include "nn.h"
#include "optim.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A metadata entry of the header's "__metadata__" (both strings). */
typedef struct kiln_meta {
    const char *key;
    const char *value;
} kiln_meta;

/* ---- raw files ------------------------------------------------------------------------ */

/* Writes the tensors (F32, F16, BF16 or I32, any views) under their names, with metadata;
 * half tensors are stored as F16/BF16, bit for bit. */
KILN_API kiln_status kiln_safetensors_save(kiln_ctx *ctx, const char *path, int n, const kiln_named_tensor *tensors,
                                           int nmeta, const kiln_meta *meta);

/* A parsed, validated file held in host memory. */
typedef struct kiln_safetensors kiln_safetensors;
/* Reads and validates a file; NULL with the context's error naming the file and the
 * fault. F32, F16, BF16, F64, I64, I32, I16, I8, U8 and BOOL entries are accepted. */
KILN_API kiln_safetensors *kiln_safetensors_open(kiln_ctx *ctx, const char *path);
/* The same from memory (copied); `what` names the source in errors. For fuzzing and
 * embedded files. */
KILN_API kiln_safetensors *kiln_safetensors_parse(kiln_ctx *ctx, const void *data, size_t len, const char *what);
KILN_API void kiln_safetensors_close(kiln_safetensors *f);
KILN_API int kiln_safetensors_num_tensors(const kiln_safetensors *f);
/* Entry i: its name, dtype string ("F32"), dims and shape (pointer owned by f). */
KILN_API const char *kiln_safetensors_name(const kiln_safetensors *f, int i);
KILN_API const char *kiln_safetensors_dtype(const kiln_safetensors *f, int i);
KILN_API int kiln_safetensors_shape(const kiln_safetensors *f, int i, const int64_t **shape);
/* Index of `name`, or -1. */
KILN_API int kiln_safetensors_find(const kiln_safetensors *f, const char *name);
/* Metadata value for key, or NULL. */
KILN_API const char *kiln_safetensors_meta(const kiln_safetensors *f, const char *key);
/* Entry i as a new tensor: float types become F32 (F16 and BF16 widened exactly), integer
 * types I32 (an integer that does not fit is an error). */
KILN_API kiln_tensor *kiln_safetensors_tensor(kiln_safetensors *f, int i);
/* Entry i as a new tensor of dtype: a float entry as KILN_F32, KILN_F16 or KILN_BF16 (an
 * entry of that dtype keeps its bits; others are rounded to nearest, ties to even: F64
 * through f32), an integer entry as KILN_I32. KILN_ERR_DTYPE for any other pairing. */
KILN_API kiln_tensor *kiln_safetensors_tensor_as(kiln_safetensors *f, int i, kiln_dtype dtype);

/* ---- models and training state -------------------------------------------------------- */

/* What a load did. Names are listed comma-separated in detail (truncated if long). */
typedef struct kiln_load_report {
    int loaded;     /* tensors copied into the model (and optimizer) */
    int missing;    /* model tensors the file lacks */
    int unexpected; /* file tensors the model lacks */
    int mismatched; /* same name, other shape */
    char detail[2048];
} kiln_load_report;

/* Saves m's parameters and buffers under their state_dict names; description goes into
 * the metadata (with kiln's version and the module's description). */
KILN_API kiln_status kiln_module_save(kiln_module *m, const char *path, const char *description);
/* Loads a file saved by kiln_module_save or a PyTorch state dict. strict: every model
 * tensor must be in the file with its shape and no other tensor may be (an error naming
 * them, the model unchanged); non-strict loads what matches and reports the rest. report
 * may be NULL. */
KILN_API kiln_status kiln_module_load(kiln_module *m, const char *path, bool strict, kiln_load_report *report);

/* A training checkpoint: the model, the optimizer's state ("optimizer.<i>.<key>", step
 * counts, learning rate), the context's RNG position and the caller's metadata (epoch,
 * ...), so that loading it and training on gives bit-identical weights to never having
 * stopped (same device). opt may be NULL. A caller's metadata key that kiln writes itself
 * ("format", "kiln_version", "model", "kiln_optimizer", "kiln_lr", ...) is refused
 * (KILN_ERR_INVALID_ARGUMENT). */
KILN_API kiln_status kiln_checkpoint_save(const char *path, kiln_module *m, kiln_optim *opt, int nmeta,
                                          const kiln_meta *meta);
/* Restores what kiln_checkpoint_save wrote (strict for the model; the optimizer must be
 * of the same kind with parameters of the same shapes). Metadata values can be read with
 * kiln_safetensors_open + kiln_safetensors_meta. */
KILN_API kiln_status kiln_checkpoint_load(const char *path, kiln_module *m, kiln_optim *opt, kiln_load_report *report);

/* ---- pictures ------------------------------------------------------------------------- */

/* How kiln_save_image_grid lays images out and maps values to 0..255 (torchvision's
 * make_grid / save_image arguments). */
typedef struct kiln_image_grid_opts {
    int nrow;        /* images per row of the grid [8] */
    int padding;     /* pixels between images and around the grid [2] */
    float pad_value; /* colour of the padding, in the output range 0..1 (0 black, 1 white) [0] */
    float lo, hi;    /* the value range mapped to 0..255; values outside are clamped [0, 1] */
} kiln_image_grid_opts;

/* torchvision's defaults: nrow 8, padding 2, pad_value 0, range [0, 1]. */
KILN_API kiln_image_grid_opts kiln_image_grid_defaults(void);

/* Writes images [N, C, H, W] (f32, C 1 or 3, any view) as one PNG: N images in rows of
 * nrow, padded as make_grid (a single image gets no padding); a pixel is
 * (clamp(x, lo, hi) - lo) / (hi - lo) * 255 + 0.5 truncated, NaN black. C = 1 writes an
 * 8-bit grey PNG, C = 3 an 8-bit RGB one (libpng). Written under a temporary name in the
 * same directory and renamed, so a failure leaves no partial file. opts NULL: the
 * defaults. Errors name the path and the shape. */
KILN_API kiln_status kiln_save_image_grid(kiln_tensor *images, const char *path, const kiln_image_grid_opts *opts);

#ifdef __cplusplus
}
#endif
#endif

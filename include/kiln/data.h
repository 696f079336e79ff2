/* kiln/data.h - data on the host: IDX and CSV readers, datasets, and a loader that turns
 * them into batches of tensors; text corpora and their loader of character windows (below).
 *
 *     kiln_dataset *all = kiln_fashion_mnist(NULL, true);       // 60000 x [1, 28, 28]
 *     kiln_dataset *train, *val;
 *     kiln_dataset_split(all, 0.1, 42, &train, &val);           // 54000 / 6000, seeded
 *     kiln_dataset_free(all);                                   // the halves keep the data
 *     kiln_loader_opts lo = kiln_loader_defaults();             // torch's DataLoader defaults
 *     lo.batch_size = 64, lo.shuffle = true, lo.seed = 1, lo.scale = 1.0f / 255;
 *     lo.norm_count = 1, lo.mean = (float[]){KILN_FASHION_MNIST_MEAN};
 *     lo.std = (float[]){KILN_FASHION_MNIST_STD}, lo.crop_padding = 2, lo.hflip = true;
 *     kiln_loader *loader = kiln_loader_new(ctx, train, &lo);
 *     for (int epoch = 0; epoch < 10; epoch++) {
 *         for (;;) {
 *             kiln_tensor *x, *y;
 *             kiln_scope_begin(ctx);
 *             if (!kiln_loader_next(loader, &x, &y)) {          // end of the epoch (or error)
 *                 kiln_scope_end(ctx);
 *                 break;
 *             }
 *             ...                                               // x [64, 1, 28, 28] F32, y [64] I32
 *             kiln_scope_end(ctx);
 *         }
 *     }
 *     kiln_loader_free(loader);
 *     kiln_dataset_free(train);
 *     kiln_dataset_free(val);
 *
 * Errors. The readers and datasets live on the host and need no device, so they take no
 * context: a failing kiln_idx_*, kiln_csv_*, kiln_dataset_* or kiln_fashion_mnist call
 * returns NULL (or a negative kiln_status) and sets the thread's kiln_last_error(), which
 * each of these calls that can fail clears on entry. Messages name the function, the file (or the `what`
 * given to a memory parser) and what is wrong in it: line and column for CSV, the header's
 * sizes against the file's for IDX. The loader makes tensors on a context and, like every
 * op, reports through that context (kiln_error_message(ctx)); kiln_loader_new(NULL, ...)
 * and calls on a NULL loader report through kiln_last_error(). kiln_last_status()
 * (common.h) gives the status that goes with kiln_last_error(), as for every context-less
 * call.
 * Every function accepts NULL handles without crashing.
 *
 * Ownership: every object returned here is owned by the caller and freed with its _free
 * function (NULL-safe). Datasets are immutable and share their sample storage: subsets,
 * splits and loaders keep it alive, so the dataset they came from may be freed first.
 *
 * Threads: the readers and datasets are reentrant. A loader (with its context) is used by
 * one thread at a time; it runs its own background thread to prepare the next batches.
 */
#ifndef KILN_DATA_H
#define KILN_DATA_H

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- IDX files (the MNIST format) --------------------------------------------------- */
/*
 * An IDX file is a 4-byte magic (0x00 0x00, a type byte, the number of dimensions), one
 * big-endian 32-bit size per dimension, then the values in row-major order, big-endian.
 * Readers accept gzip-compressed files (detected by content, not by name) and raw ones, and
 * validate everything before allocating: the magic, the type, 1 to 8 dimensions, that the
 * element count fits in int64, and that the data is exactly as long as the header says
 * (a short file and trailing bytes are both KILN_ERR_CORRUPT). Concatenated gzip members
 * are read as one stream; a damaged or cut gzip stream, or other bytes after it, is
 * KILN_ERR_CORRUPT too. A file named .gz that is not gzip is read raw (its errors say so).
 */
typedef enum kiln_idx_type {
    KILN_IDX_U8 = 0x08,
    KILN_IDX_I8 = 0x09,
    KILN_IDX_I16 = 0x0B,
    KILN_IDX_I32 = 0x0C,
    KILN_IDX_F32 = 0x0D,
    KILN_IDX_F64 = 0x0E
} kiln_idx_type;

/* A parsed IDX file. Read-only for the caller. */
typedef struct kiln_idx {
    kiln_idx_type type;
    int ndim;                    /* 1..KILN_MAX_DIMS */
    int64_t dims[KILN_MAX_DIMS]; /* sizes; a size may be 0 */
    int64_t count;               /* product of dims */
    size_t elem_size;            /* 1, 1, 2, 4, 4 or 8 bytes */
    void *data;                  /* count values of `type` in host byte order */
} kiln_idx;

/* Parses an uncompressed IDX image held in memory (copied: buf may be freed after). `what`
 * names the source in errors (NULL: "<memory>"). For fuzzing and embedded data. */
KILN_API kiln_idx *kiln_idx_parse(const void *buf, size_t len, const char *what);
/* Reads a file, gzip-compressed or raw. */
KILN_API kiln_idx *kiln_idx_load(const char *path);
KILN_API void kiln_idx_free(kiln_idx *idx);
/* Value i (row-major) as a double; NaN when idx is NULL or i is out of range. */
KILN_API double kiln_idx_value(const kiln_idx *idx, int64_t i);
/* "u8", "i8", "i16", "i32", "f32", "f64", or "invalid". */
KILN_API const char *kiln_idx_type_name(kiln_idx_type type);

/* ---- CSV tables of numbers ---------------------------------------------------------- */
/*
 * Records end at "\n", "\r\n" or "\r"; blank lines are skipped. Fields are separated by
 * the delimiter, surrounding spaces and tabs are ignored, and a field may be quoted
 * ("1.5", with "" for a quote inside). Every data cell must be a number as C's strtod reads
 * it in the "C" locale (so "1e-3", "nan" and "inf" are numbers whatever the program's
 * locale); an empty or non-numeric cell, a number too large for a double ("1e400"; it is
 * not read as inf) and a row with another number of cells than the first are
 * KILN_ERR_CORRUPT naming the file, line and column. Files may be gzip-compressed.
 */
typedef enum kiln_csv_header {
    KILN_CSV_HEADER_AUTO = 0, /* the first row is a header when any of its cells is not a number */
    KILN_CSV_HEADER_YES,      /* the first row is a header */
    KILN_CSV_HEADER_NO        /* every row is data */
} kiln_csv_header;

typedef struct kiln_csv_opts {
    char delimiter; /* any byte but 0, '"', '\r' and '\n' (use '\t' for TSV) */
    kiln_csv_header header;
} kiln_csv_opts;
/* delimiter ',', header KILN_CSV_HEADER_AUTO; what NULL options mean. */
KILN_API kiln_csv_opts kiln_csv_defaults(void);

/* A parsed table. Read-only for the caller. */
typedef struct kiln_csv {
    int64_t rows, cols;
    double *data;   /* rows x cols, row-major */
    char **names;   /* cols header names, or NULL when there was no header */
    int64_t *lines; /* the 1-based line of the source on which each row starts */
} kiln_csv;

/* Parses CSV text held in memory (not gzip). `what` names the source in errors (NULL:
 * "<memory>"). opts may be NULL (kiln_csv_defaults()). */
KILN_API kiln_csv *kiln_csv_parse(const void *buf, size_t len, const char *what, const kiln_csv_opts *opts);
KILN_API kiln_csv *kiln_csv_load(const char *path, const kiln_csv_opts *opts);
KILN_API void kiln_csv_free(kiln_csv *csv);

/* ---- datasets ----------------------------------------------------------------------- */
/*
 * N samples held in host memory, each a float array of one shape (the sample shape; a
 * batch of them is a tensor [B, shape...]) with an int32 class label in [0, num_classes).
 * Byte data (IDX u8) stays bytes in memory and becomes float only in a batch.
 */
typedef struct kiln_dataset kiln_dataset;

/* Copies n samples: x holds n * prod(shape) floats, y n labels in [0, num_classes)
 * (num_classes <= 0: inferred as the largest label + 1). */
KILN_API kiln_dataset *kiln_dataset_from_host(const float *x, const int32_t *y, int64_t n, int ndim,
                                              const int64_t *shape, int num_classes);
/* Images from one IDX file (N as the first dimension; [N, H, W] gives samples [1, H, W],
 * any other [N, d1, ...] samples [d1, ...]) and labels from another ([N], an integer type).
 * Counts must match and labels must lie in [0, num_classes) (num_classes <= 0: inferred);
 * errors name both files. */
KILN_API kiln_dataset *kiln_dataset_idx(const char *images, const char *labels, int num_classes);
/* From a CSV table: column label_col (negative counts from the end: -1 is the last) holds
 * integral labels, the other columns are the features (samples of shape [cols - 1]). */
KILN_API kiln_dataset *kiln_dataset_csv(const char *path, int label_col, int num_classes, const kiln_csv_opts *opts);
/* The same from a parsed table; `what` names it in errors (NULL: "<csv>"). */
KILN_API kiln_dataset *kiln_dataset_from_csv(const kiln_csv *csv, int label_col, int num_classes, const char *what);

/* Debian's dataset-fashion-mnist installs the files here. */
#define KILN_FASHION_MNIST_DIR "/usr/share/datasets/fashion-mnist"
/* Mean and standard deviation of the training images' pixels scaled to [0, 1]. */
#define KILN_FASHION_MNIST_MEAN 0.2860f
#define KILN_FASHION_MNIST_STD 0.3530f
/* Fashion-MNIST (60000 training or 10000 test images [1, 28, 28] of bytes 0..255, labels
 * 0..9) from {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] in dir (NULL:
 * KILN_FASHION_MNIST_DIR). */
KILN_API kiln_dataset *kiln_fashion_mnist(const char *dir, bool train);
/* "T-shirt/top", "Trouser", ... "Ankle boot" for labels 0..9; "" otherwise. */
KILN_API const char *kiln_fashion_mnist_class_name(int label);

/* A new dataset of samples idx[0..n) of ds (in that order; repeats allowed), sharing
 * ds's storage. */
KILN_API kiln_dataset *kiln_dataset_subset(const kiln_dataset *ds, const int64_t *idx, int64_t n);
/* Splits ds at random into a validation part of round(val_frac * N) samples and a
 * training part of the rest; the same seed gives the same split on every machine. Both
 * keep ds's sample order. val_frac in [0, 1]; either part may be empty. */
KILN_API kiln_status kiln_dataset_split(const kiln_dataset *ds, double val_frac, uint64_t seed, kiln_dataset **train,
                                        kiln_dataset **val);

/* Number of samples (0 for NULL). */
KILN_API int64_t kiln_dataset_num_samples(const kiln_dataset *ds);
/* The sample shape: returns its number of dims, *shape points into ds (0 for NULL). */
KILN_API int kiln_dataset_shape(const kiln_dataset *ds, const int64_t **shape);
/* Elements per sample. */
KILN_API int64_t kiln_dataset_sample_numel(const kiln_dataset *ds);
KILN_API int kiln_dataset_num_classes(const kiln_dataset *ds);
/* Sample i as stored (bytes as 0..255, no scaling) into x (x_count floats, at least the
 * sample's numel; x may be NULL to read only the label) and its label into *label (may be
 * NULL). */
KILN_API kiln_status kiln_dataset_get(const kiln_dataset *ds, int64_t i, float *x, size_t x_count, int32_t *label);
KILN_API void kiln_dataset_free(kiln_dataset *ds);

/* ---- loader: batches as tensors ----------------------------------------------------- */
/*
 * Each epoch visits every sample once, in dataset order or, with shuffle, in a permutation
 * that is a function of (seed, epoch) only (Fisher-Yates driven by xoshiro256** seeded
 * through splitmix64, in integers): the same on every machine and whatever the timing, and
 * a loader moved to epoch e with kiln_loader_set_epoch gives what it gave the first time. A batch's values, in this
 * order:
 *
 *     crop:  with crop_padding p > 0, the last two dims (H, W) of the sample are padded with
 *            p zeros on every side and an H x W window is taken at a random offset
 *     flip:  with hflip, the window is mirrored left-right with probability 1/2
 *     value: (v * scale - mean[c]) / std[c], c the index along the sample's first dim
 *            (the channel of [C, H, W]; the feature of a [F] sample)
 *
 * so padded pixels are value 0 before scaling and normalisation (as torchvision's
 * RandomCrop before ToTensor and Normalize). Augmentation draws are a function of (seed,
 * epoch, batch) too. The next batches are prepared on a background thread while the
 * current one is used, then written to the device without waiting for it.
 */
typedef struct kiln_loader_opts {
    int64_t batch_size; /* samples per batch, >= 1 */
    bool shuffle;       /* a new permutation every epoch */
    uint64_t seed;      /* shuffling and augmentation */
    bool drop_last;     /* skip the last batch when it is short */
    float scale;        /* multiplies every value first, finite and non-zero (1/255 for bytes) */
    int norm_count;     /* 0: no normalisation; 1: mean[0], std[0] for every value; else the
                           sample's first dim, one pair per index along it */
    const float *mean;  /* norm_count values (copied) */
    const float *std;   /* norm_count values > 0 (copied) */
    int crop_padding;   /* > 0: random crop of the padded sample (samples of >= 2 dims) */
    bool hflip;         /* random horizontal flip (samples of >= 2 dims) */
    bool sync;          /* prepare batches on the calling thread (no background thread);
                           always so on Oclgrind, which is not safe to drive from two threads */
    /* Distributed sampler (torch's DistributedSampler; kiln/dist.h gives rank and world):
     * with shard_count > 1 the loader reads only shard shard_rank of shard_count. Each epoch
     * the order of the whole dataset (shuffled with `seed`, which every rank must share, or
     * as stored) is padded by repeating its first samples to a multiple of shard_count and
     * dealt out round-robin (rank r takes positions r, r + count, ...), so the shards are
     * disjoint but for the padding, cover the dataset, and every rank gets ceil(n / count)
     * samples: the same number of batches. Augmentation draws differ between ranks.
     * 0 or 1: no sharding (shard_rank must be 0). */
    int shard_rank, shard_count;
} kiln_loader_opts;

typedef struct kiln_loader kiln_loader;

/* torch's DataLoader defaults: batch_size 1, no shuffle, drop_last false; scale 1, no
 * normalisation or augmentation, a background thread. Start from it and change fields:
 * every field is literal (a zero batch_size or scale is an error, not a default). */
KILN_API kiln_loader_opts kiln_loader_defaults(void);

/* A loader over ds (which it keeps alive) producing tensors on ctx; opts NULL:
 * kiln_loader_defaults(). Free it before closing ctx. */
KILN_API kiln_loader *kiln_loader_new(kiln_ctx *ctx, const kiln_dataset *ds, const kiln_loader_opts *opts);
/* The next batch of the epoch as new tensors in the caller's current scope: *x [B, shape...]
 * F32 and *y [B] I32 (B = batch_size but for a short last batch). Returns false with *x and
 * *y NULL at the end of an epoch (the next call starts the next epoch) and on error (the
 * context's error set). Does not wait for the device. */
KILN_API bool kiln_loader_next(kiln_loader *l, kiln_tensor **x, kiln_tensor **y);
/* Batches per epoch. */
KILN_API int64_t kiln_loader_num_batches(const kiln_loader *l);
/* The epoch the next batch comes from (0 first). */
KILN_API int64_t kiln_loader_epoch(const kiln_loader *l);
/* Restarts at the first batch of epoch `epoch` (>= 0), e.g. to resume training. */
KILN_API kiln_status kiln_loader_set_epoch(kiln_loader *l, int64_t epoch);
/* Restarts the current epoch from its first batch (same order). */
KILN_API kiln_status kiln_loader_reset(kiln_loader *l);
/* Dataset indices of the samples of the last batch returned; *idx (may be NULL) points
 * into the loader until the next call. Returns their number (0 before the first batch). */
KILN_API int64_t kiln_loader_batch_indices(const kiln_loader *l, const int64_t **idx);
KILN_API void kiln_loader_free(kiln_loader *l);

/* ---- text: character (byte) corpora for language models ----------------------------- */
/*
 * A kiln_text is a corpus of bytes held in host memory with its vocabulary: the sorted byte
 * values that occur in it, id i standing for the i-th smallest. Characters are bytes (UTF-8
 * text is modelled byte by byte). A text is immutable; the halves of kiln_text_split and
 * the loaders made from it share its bytes, so it may be freed first.
 *
 * These do not fit kiln_dataset and kiln_loader above: a sample there is a float array with
 * one class label, while a language model reads windows of character ids with a target id
 * per position, and a text's windows overlap (any start is a sample).
 *
 *     kiln_text *all = kiln_text_fortunes(NULL);                 // 2.5 MB, 114 characters
 *     kiln_text *train, *val;
 *     kiln_text_split(all, 0.05, &train, &val);                  // the last 5% validates
 *     kiln_text_loader_opts o = kiln_text_loader_defaults(64);   // windows of 64 characters
 *     o.batch_size = 32, o.random_windows = true, o.seed = 1;
 *     kiln_text_loader *tl = kiln_text_loader_new(ctx, train, &o);
 *     kiln_tensor *x, *y;                                        // I32 [32, 64] each
 *     while (kiln_text_loader_next(tl, &x, &y)) { ... }          // y[b][i] follows x[b][i]
 *
 * Errors go as for the datasets above: kiln_text_* and kiln_vocab_* calls that can fail
 * clear and set kiln_last_error() (naming the function, the file or text, and the sizes);
 * a text loader reports through its context.
 */
typedef struct kiln_text kiln_text;
/* The set of characters (byte values) a model knows, id i for the i-th smallest. */
typedef struct kiln_vocab kiln_vocab;

/* Where Debian's fortunes package installs its files. */
#define KILN_FORTUNES_DIR "/usr/share/games/fortunes"
/* The metadata key under which a model's vocabulary is saved (kiln_vocab_to_string) in a
 * checkpoint, e.g. with kiln_checkpoint_save; read it back with kiln_safetensors_meta. */
#define KILN_VOCAB_META_KEY "vocab"

/* A copy of len bytes of memory; `what` names it in errors (NULL: "<memory>"). An empty
 * text is an error (KILN_ERR_INVALID_ARGUMENT). */
KILN_API kiln_text *kiln_text_from_memory(const void *buf, size_t len, const char *what);
/* The files' bytes concatenated in the given order (gzip-compressed files are inflated).
 * A missing file is KILN_ERR_IO naming it; a corpus of 0 bytes is KILN_ERR_INVALID_ARGUMENT
 * naming the files. */
KILN_API kiln_text *kiln_text_load(int n, const char *const *paths);
/* The fortune files of dir (NULL: KILN_FORTUNES_DIR): its regular files in byte order of
 * their names, skipping symbolic links (the .u8 names), the strfile indexes (*.dat) and
 * hidden files. Each file's entries end with a line "%", which is kept: the model learns
 * where a fortune ends and a generated text can be cut there. A file that does not end
 * with a "%" line gets one ("\n" first when its last line lacks it), so entries of two
 * files never run together. tools/char_rnn_torch.py reads the same bytes. */
KILN_API kiln_text *kiln_text_fortunes(const char *dir);
/* Splits by position: *val gets the last round(val_frac * N) characters, *train the
 * characters before them. Both keep t's vocabulary (that of the whole text, so every
 * validation character has an id). val_frac in [0, 1]; a part may be empty (a loader on it
 * fails: no window). */
KILN_API kiln_status kiln_text_split(const kiln_text *t, double val_frac, kiln_text **train, kiln_text **val);
/* Number of characters (bytes); 0 for NULL. */
KILN_API int64_t kiln_text_num_chars(const kiln_text *t);
/* The bytes: returns their number, *bytes (may be NULL) points into t. */
KILN_API int64_t kiln_text_bytes(const kiln_text *t, const uint8_t **bytes);
/* The vocabulary, owned by t (NULL for NULL). */
KILN_API const kiln_vocab *kiln_text_vocab(const kiln_text *t);
/* What the text is, for messages: a file, "dir (43 files)", "... [train]". */
KILN_API const char *kiln_text_name(const kiln_text *t);
KILN_API void kiln_text_free(kiln_text *t);

/* A vocabulary of the n distinct byte values given (any order; n in [1, 256]). */
KILN_API kiln_vocab *kiln_vocab_new(const uint8_t *bytes, int n);
/* The same from kiln_vocab_to_string's form; `what` names the source in errors (NULL:
 * "<string>"). Anything else (odd length, not hex, not strictly increasing, empty) is
 * KILN_ERR_CORRUPT. */
KILN_API kiln_vocab *kiln_vocab_parse(const char *s, const char *what);
/* Writes the byte values in increasing order as two lowercase hex digits each
 * ("090a20..."), NUL-terminated: cap must be at least 2 * n + 1 (KILN_ERR_BUFFER_TOO_SMALL). */
KILN_API kiln_status kiln_vocab_to_string(const kiln_vocab *v, char *buf, size_t cap);
/* Number of characters (ids 0 .. n-1); 0 for NULL. */
KILN_API int kiln_vocab_num_chars(const kiln_vocab *v);
/* The byte of id (0..255), or -1 when id is out of range or v is NULL. */
KILN_API int kiln_vocab_char(const kiln_vocab *v, int id);
/* The id of byte c, or -1 when c is not in v. */
KILN_API int kiln_vocab_id(const kiln_vocab *v, uint8_t c);
/* ids[i] = the id of text[i] for i < len. A character that is not in the vocabulary is
 * KILN_ERR_RANGE naming it and its position (ids then unspecified). */
KILN_API kiln_status kiln_vocab_encode(const kiln_vocab *v, const char *text, size_t len, int32_t *ids);
/* The characters of n ids into text, NUL-terminated (cap >= n + 1, else
 * KILN_ERR_BUFFER_TOO_SMALL); an id out of range is KILN_ERR_RANGE naming it. */
KILN_API kiln_status kiln_vocab_decode(const kiln_vocab *v, const int32_t *ids, size_t n, char *text, size_t cap);
KILN_API void kiln_vocab_free(kiln_vocab *v);

/* Windows of seq_len characters with their targets, the seq_len characters one further on:
 * a window starting at s holds ids of t[s .. s + seq_len) and its targets those of
 * t[s + 1 .. s + seq_len], so it needs seq_len + 1 characters. An epoch has
 * W = floor((N - 1) / seq_len) windows (N characters), in batches of batch_size windows
 * (the last one shorter unless drop_last):
 *   random_windows false: window w starts at w * seq_len, in order: the characters at
 *       positions 1 .. W * seq_len are each a target exactly once (validation);
 *   random_windows true: each start is uniform in [0, N - seq_len - 1], drawn from (seed,
 *       epoch, batch) only with xoshiro256** seeded through splitmix64 (as the loader's
 *       shuffle), so every machine and a loader moved to the same epoch draw the same
 *       windows (tools/char_rnn_torch.py draws them too). */
typedef struct kiln_text_loader_opts {
    int64_t batch_size;  /* windows per batch, >= 1 */
    int64_t seq_len;     /* characters per window, >= 1 */
    bool random_windows; /* random starts instead of consecutive windows */
    uint64_t seed;       /* the random starts */
    bool drop_last;      /* skip the last batch when it is short */
} kiln_text_loader_opts;

typedef struct kiln_text_loader kiln_text_loader;

/* Windows of seq_len (no default: NULL options are an error), batch_size 1 (DataLoader's),
 * consecutive windows, seed 0, drop_last false. */
KILN_API kiln_text_loader_opts kiln_text_loader_defaults(int64_t seq_len);
/* A loader over t (it keeps t's bytes alive) making tensors on ctx. A text too short for
 * one window is KILN_ERR_INVALID_ARGUMENT naming it, its length and seq_len. */
KILN_API kiln_text_loader *kiln_text_loader_new(kiln_ctx *ctx, const kiln_text *t, const kiln_text_loader_opts *opts);
/* The next batch as new tensors in the caller's current scope: *x and *y I32 [B, seq_len]
 * (B = batch_size but for a short last batch): ids for kiln_embedding, targets for
 * kiln_cross_entropy. Returns false with *x and *y NULL at the end of an epoch (the next
 * call starts the next one) and on error (the context's error set). */
KILN_API bool kiln_text_loader_next(kiln_text_loader *l, kiln_tensor **x, kiln_tensor **y);
/* Batches per epoch. */
KILN_API int64_t kiln_text_loader_num_batches(const kiln_text_loader *l);
/* The epoch the next batch comes from (0 first). */
KILN_API int64_t kiln_text_loader_epoch(const kiln_text_loader *l);
/* Restarts at the first batch of epoch `epoch` (>= 0). */
KILN_API kiln_status kiln_text_loader_set_epoch(kiln_text_loader *l, int64_t epoch);
/* Restarts the current epoch from its first batch (the same windows). */
KILN_API kiln_status kiln_text_loader_reset(kiln_text_loader *l);
/* The starts (positions in the text) of the last batch's windows; *starts (may be NULL)
 * points into the loader until the next call. Returns their number (0 before the first). */
KILN_API int64_t kiln_text_loader_batch_starts(const kiln_text_loader *l, const int64_t **starts);
KILN_API void kiln_text_loader_free(kiln_text_loader *l);

#ifdef __cplusplus
}
#endif
#endif

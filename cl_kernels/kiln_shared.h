/* cl_kernels/kiln_shared.h - the structs and flag values that the host and the kernels
 * both read, in one header that C (through src/tensor/tensor_internal.h) and OpenCL C
 * (src/device/program.c puts it in front of every program) include, so that their layouts
 * and meanings cannot drift apart.
 *
 * Each struct is passed to a kernel by value as one argument. Fields are 32-bit ints only
 * (kiln_i32), so host and device lay them out alike with no padding; the host checks each
 * struct's size with a static assertion. */
#ifndef KILN_SHARED_H
#define KILN_SHARED_H

/* Dims of a strided geometry; kiln.h's KILN_MAX_DIMS must equal it (checked below). */
#define KILN_SHARED_DIMS 8
/* Inputs of an elementwise launch. */
#define KILN_GEOM_IN 3
/* Operands of an elementwise-loss launch: x, t, weight, pos_weight. */
#define KILN_LOSS_IN 4

#ifdef __OPENCL_VERSION__
typedef int kiln_i32;
#else
typedef cl_int kiln_i32;
#endif

/* Geometry of a strided launch: the output is contiguous with `shape`; input j reads
 * element i at sum_d idx_d * strides[j][d] (src/kiln_internal.h: kiln__geom_build). */
typedef struct kiln_geom {
    kiln_i32 ndim;
    kiln_i32 shape[KILN_SHARED_DIMS];
    kiln_i32 strides[KILN_GEOM_IN][KILN_SHARED_DIMS];
} kiln_geom;

/* A reduction (src/ops/reduce.c, cl_kernels/reduce.cl): the kept dims (one output each) and
 * the reduced dims, each coalesced, with the input's strides. */
typedef struct kiln_red_geom {
    kiln_i32 nout; /* outputs: product of kshape */
    kiln_i32 nred; /* reduced elements per output: product of rshape */
    kiln_i32 kndim;
    kiln_i32 kshape[KILN_SHARED_DIMS];
    kiln_i32 kstride[KILN_SHARED_DIMS];
    kiln_i32 rndim;
    kiln_i32 rshape[KILN_SHARED_DIMS];
    kiln_i32 rstride[KILN_SHARED_DIMS];
} kiln_red_geom;

/* The convolution that does the work of conv2d and conv_transpose2d (src/ops/conv.c). */
typedef struct kiln_conv_geom {
    kiln_i32 n, c, h, w;   /* convolution input */
    kiln_i32 cout, ho, wo; /* convolution output */
    kiln_i32 kh, kw, sh, sw, ph, pw, dh, dw;
    kiln_i32 groups;
} kiln_conv_geom;

/* Pooling and upsampling (src/ops/pool.c). */
typedef struct kiln_pool_geom {
    kiln_i32 C, H, W, OH, OW;          /* channels, input and output plane sizes */
    kiln_i32 kh, kw, sh, sw;           /* kernel, stride */
    kiln_i32 ph, pw, dh, dw;           /* padding, dilation */
    kiln_i32 xoff, xsn, xsc, xsh, xsw; /* input offset and strides (forward only) */
    kiln_i32 merged;                   /* xsn == C * xsc: plane p starts at p * xsc */
    kiln_i32 n;                        /* planes (global_avg_pool2d_fwd, max_pool2d) */
    kiln_i32 flag;                     /* avg: count_include_pad; bilinear: align_corners */
} kiln_pool_geom;

/* An elementwise loss over operands broadcast to the loss's shape (src/ops/loss.c,
 * cl_kernels/loss.cl): operand j (x, t, weight, pos_weight) reads element i at
 * sum_d idx_d * strides[j][d]; an absent operand's strides are 0. */
typedef struct kiln_loss_geom {
    kiln_i32 ndim;
    kiln_i32 shape[KILN_SHARED_DIMS];
    kiln_i32 strides[KILN_LOSS_IN][KILN_SHARED_DIMS];
} kiln_loss_geom;

/* Constant padding (kiln_pad and the crops, src/ops/shape.c, cl_kernels/shape.cl). */
typedef struct kiln_pad_geom {
    kiln_i32 ndim;
    kiln_i32 oshape[KILN_SHARED_DIMS];
    kiln_i32 ishape[KILN_SHARED_DIMS];
    kiln_i32 before[KILN_SHARED_DIMS]; /* elements added before the input along each dim (< 0 crops) */
    kiln_i32 istride[KILN_SHARED_DIMS];
} kiln_pad_geom;

/* index_select and gather, forward and backward (src/ops/shape.c, cl_kernels/shape.cl). */
typedef struct kiln_idx_geom {
    kiln_i32 ndim;
    kiln_i32 dim;                      /* the indexed dim */
    kiln_i32 xsize;                    /* the input's size along dim: indices are clamped below it */
    kiln_i32 shape[KILN_SHARED_DIMS];  /* iteration shape (the output's; gather_bwd: the input's) */
    kiln_i32 shape2[KILN_SHARED_DIMS]; /* gather_bwd: the index's shape */
    kiln_i32 sa[KILN_SHARED_DIMS];     /* the input's strides (gather_bwd: the output gradient's) */
    kiln_i32 sb[KILN_SHARED_DIMS];     /* the index's strides (gather) */
} kiln_idx_geom;

/* Flag bits of the elementwise-loss kernels (<loss>_none/_part/_bwd, cl_kernels/loss.cl). */
#define KILN_LOSS_W 1  /* weight given */
#define KILN_LOSS_PW 2 /* pos_weight given */
#define KILN_LOSS_GX 4 /* _bwd: write the gradient of x */
#define KILN_LOSS_GT 8 /* _bwd: write the gradient of t */

/* Flag bits of the cross-entropy and nll row kernels (ce_rows, nll_rows). */
#define KILN_ROWS_W 1   /* class weights given */
#define KILN_ROWS_RW 2  /* write each row's weight (0 when ignored) */
#define KILN_ROWS_LSE 4 /* write each row's log-sum-exp (ce_rows) */

/* Flag bits of their backward (ce_bwd, nll_bwd). */
#define KILN_ROWS_BWD_W 1      /* class weights given */
#define KILN_ROWS_BWD_SCALAR 2 /* one seed G[0] for every row (sum, mean), else G[r] */
#define KILN_ROWS_BWD_DEN 4    /* divide by DEN[0] (mean: the rows' summed weights) */
#define KILN_ROWS_BWD_WT 8     /* ce_bwd: the summed class weights WT given (else WT = C) */

/* How batch norm and layer norm apply weight and bias (the wmode argument of the norm
 * kernels, src/ops/norm.c, cl_kernels/norm.cl; has_w and has_b say which is present). */
#define KILN_NORM_W_GROUP 1 /* one per group (batch norm's channels) */
#define KILN_NORM_W_ELEM 2  /* one per element s of a group (layer norm) */

/* Flag bits of the optimizer updates (the flags argument of sgd_step, rmsprop_step and
 * adam_step, src/optim/optim.c, cl_kernels/optim.cl). */
#define KILN_OPT_MAXIMIZE 1    /* g = -g */
#define KILN_OPT_DECAY 2       /* weight_decay != 0: g += wd * p (L2, torch's coupled decay) */
#define KILN_OPT_MOMENTUM 4    /* SGD/RMSprop momentum buffer in use */
#define KILN_OPT_FIRST 8       /* SGD: the buffer is new: buf = g (torch clones d_p) */
#define KILN_OPT_NESTEROV 16   /* SGD */
#define KILN_OPT_CENTERED 32   /* RMSprop */
#define KILN_OPT_AMSGRAD 64    /* Adam/AdamW */
#define KILN_OPT_DECOUPLED 128 /* AdamW: p *= 1 - lr * wd before the update */

/* A multi-tensor optimizer launch (cl_kernels/optim.cl *_multi, src/optim/optim.c): its
 * count parameters' elements are [start[k], start[k+1]) of the global range; poff, goff and
 * soff[slot] are the offsets of parameter k, its gradient and its state tensors. */
#define KILN_OPT_MULTI 8
/* Elements per work-item of a multi-tensor launch (its global size is the elements over
 * this, rounded up): a loop over one parameter's elements, which the compiler vectorises,
 * instead of one element per work-item, each finding its parameter and buffers. */
#define KILN_OPT_CHUNK 64
typedef struct kiln_opt_table {
    kiln_i32 count;
    kiln_i32 start[KILN_OPT_MULTI + 1];
    kiln_i32 poff[KILN_OPT_MULTI];
    kiln_i32 goff[KILN_OPT_MULTI];
    kiln_i32 soff[3][KILN_OPT_MULTI];
} kiln_opt_table;

/* clip_partial_multi's gradients (up to KILN_OPT_MULTI per launch): gradient k's work-groups
 * are [gstart[k], gstart[k+1]) of the launch, its n[k] elements start at goff[k]. */
typedef struct kiln_clip_table {
    kiln_i32 count;
    kiln_i32 gstart[KILN_OPT_MULTI + 1];
    kiln_i32 n[KILN_OPT_MULTI];
    kiln_i32 goff[KILN_OPT_MULTI];
} kiln_clip_table;

/* What gradient clipping sums per element (the mode argument of clip_partial and
 * clip_total): norm_type 2, 1, any other p > 0, and infinity. */
#define KILN_CLIP_L2 0   /* sum of x*x; total = sqrt(sum) */
#define KILN_CLIP_L1 1   /* sum of |x|; total = sum */
#define KILN_CLIP_LP 2   /* sum of |x|^p; total = sum^(1/p) */
#define KILN_CLIP_LINF 3 /* max |x| (NaN wins); total = max */

/* The context's index-error buffer (src/device/deverr.c; kiln_bad_index in common.cl):
 * FLAG is 0, or 1 + the site id of the launch that recorded the first bad index, whose
 * value and flat position follow; COUNT counts every bad index recorded. */
#define KILN_ERRBUF_FLAG 0
#define KILN_ERRBUF_VALUE 1
#define KILN_ERRBUF_POS 2
#define KILN_ERRBUF_COUNT 3
#define KILN_ERRBUF_INTS 4

#ifndef __OPENCL_VERSION__
_Static_assert(KILN_MAX_DIMS == KILN_SHARED_DIMS, "kiln.h's KILN_MAX_DIMS must match the kernels' dims");
_Static_assert(sizeof(kiln_i32) == 4, "kiln_i32 must be 32 bits");
_Static_assert(sizeof(kiln_geom) == (1 + KILN_SHARED_DIMS * (1 + KILN_GEOM_IN)) * 4, "kiln_geom has padding");
_Static_assert(sizeof(kiln_red_geom) == (4 + 4 * KILN_SHARED_DIMS) * 4, "kiln_red_geom has padding");
_Static_assert(sizeof(kiln_conv_geom) == 16 * 4, "kiln_conv_geom has padding");
_Static_assert(sizeof(kiln_pool_geom) == 21 * 4, "kiln_pool_geom has padding");
_Static_assert(sizeof(kiln_loss_geom) == (1 + KILN_SHARED_DIMS * (1 + KILN_LOSS_IN)) * 4, "kiln_loss_geom has padding");
_Static_assert(sizeof(kiln_pad_geom) == (1 + 4 * KILN_SHARED_DIMS) * 4, "kiln_pad_geom has padding");
_Static_assert(sizeof(kiln_opt_table) == (2 + 6 * KILN_OPT_MULTI) * 4, "kiln_opt_table has padding");
_Static_assert(sizeof(kiln_clip_table) == (2 + 3 * KILN_OPT_MULTI) * 4, "kiln_clip_table has padding");
_Static_assert(sizeof(kiln_idx_geom) == (3 + 4 * KILN_SHARED_DIMS) * 4, "kiln_idx_geom has padding");
#endif

#endif

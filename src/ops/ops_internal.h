/* src/ops/ops_internal.h - the ops floor: what the op families (the files of src/ops) share: the
 * gradient accumulation of backward rules, the GEMM router and kiln's own GEMM kernels.
 * Includes the autograd floor; see src/core/core_internal.h for the floors.
 *
 * How an op becomes differentiable. After computing `out` from inputs in[0..nin):
 *
 *     if (kiln__grad_wanted(ctx, nin, in)) {
 *         kiln__node *n = kiln__node_new(ctx, "kiln_foo", out, nin, in, foo_backward);
 *         foo_state *st = n ? KILN__NODE_STATE_NEW(n, foo_state) : NULL;
 *         if (!st) { kiln_tensor_free(out); return NULL; }  // frees n with out
 *         st->alpha = alpha;               // parameters the backward needs
 *         kiln__node_save(n, mask);        // extra tensors the backward needs
 *     }
 *     return kiln__finish(ctx, "kiln_foo", out);
 *
 * The node keeps its inputs and saved tensors alive (a reference each) until the node is
 * freed: when backward has run through it (unless the graph is retained) or when `out`
 * itself is freed. n->out is `out` (not referenced: the node lives inside it).
 *
 * foo_backward(ctx, n, gout) runs with grad mode off. gout is the gradient of n->out: a
 * contiguous F32 tensor of n->out's shape. For each input i with kiln__input_needs_grad(n,
 * i) it computes that input's gradient with ordinary ops or its own kernels and passes it
 * to kiln__accum(ctx, n, i, g). g may have a larger broadcast shape than the input (as from
 * an elementwise op): kiln__accum sums it down to the input's shape. Tensors the backward
 * creates belong to the caller's scope; it returns KILN_OK or the error status.
 *
 * Ops that are not differentiable (argmax, comparisons) skip all this; their outputs do
 * not require grad. Non-F32 inputs (indices) never require grad. */
#ifndef KILN_OPS_INTERNAL_H
#define KILN_OPS_INTERNAL_H

#include "../autograd/autograd_internal.h"

/* The device's native float vector width rounded down to a power of two, at most 16 (16 on
 * AVX-512, 8 on AVX2, 4 on NEON; 1 for a device that reports none): the vector the CPU
 * kernels that take their width as a build option (the step kernels of rnn.cl, gelu's
 * vector kernels, the direct 3x3 convolutions) compute on. */
static inline int kiln__float_vw(const kiln_ctx *ctx) {
    int w = (int)ctx->info.native_vector_width_float, v = 1;
    while (v < 16 && 2 * v <= w) v *= 2;
    return v;
}

/* ---- reductions without autograd (src/ops/reduce_kernels.c) ---------------------- */

typedef enum kiln__red_kind {
    KILN__RED_SUM,
    KILN__RED_MEAN,
    KILN__RED_MAX,
    KILN__RED_MIN,
    KILN__RED_ARGMAX
} kiln__red_kind;

/* Marks in red[] the dims of t that naxes/axes name (naxes 0: every dim; negative axes
 * count from the end; a 0-d tensor accepts axis 0 or -1, reducing nothing, as torch does).
 * False with the error set, naming op, on a bad or repeated axis. */
bool kiln__reduce_axes(kiln_ctx *ctx, const char *op, const kiln_tensor *t, int naxes, const int *axes,
                       bool red[KILN_MAX_DIMS]);
/* A new tensor holding the reduction `kind` of t over the dims marked in red (I32 indices
 * for argmax), keeping them as size 1 with keepdim; no autograd node. NULL with the error
 * set, naming op (an empty max/min/argmax, more elements than the kernels index). */
kiln_tensor *kiln__reduce(kiln_ctx *ctx, const char *op, kiln__red_kind kind, kiln_tensor *t, const bool *red,
                          bool keepdim);

/* ---- gradients of broadcast operands (src/ops/reduce_kernels.c) ------------------- */

/* Sums g over broadcast dims so it has `ndim`/`shape` (shape must broadcast to g's).
 * Returns g itself when nothing is to be summed, else a new tensor. */
kiln_tensor *kiln__sum_to(kiln_ctx *ctx, kiln_tensor *g, int ndim, const int64_t *shape);
/* Adds g (summed down to input i's shape where it is broadcast) into input i's gradient. */
kiln_status kiln__accum(kiln_ctx *ctx, kiln__node *n, int i, kiln_tensor *g);
/* The same for a g the caller made for this call and gives up (NULL-safe): g must be its
 * own new tensor, not gout, an input, a saved tensor or a view of one. When the slot is
 * empty and nothing else views g's storage, g becomes the gradient (no copy); otherwise it
 * is accumulated as by kiln__accum and freed. Either way the caller no longer holds g. */
kiln_status kiln__accum_owned(kiln_ctx *ctx, kiln__node *n, int i, kiln_tensor *g);

/* ---- half precision (src/ops/cast.c) --------------------------------------------- */

/* t (f32, f16 or bf16, any view) converted into a new contiguous tensor of dtype, as
 * kiln_to_dtype but without autograd; KILN_ERR_DTYPE naming op for other dtypes. */
kiln_tensor *kiln__convert(kiln_ctx *ctx, const char *op, kiln_tensor *t, kiln_dtype dtype);

/* How an op gets a half variant: its kernels read and write through KILN_S/KILN_LD/KILN_ST
 * (cl_kernels/common.cl) and compute in float; the host builds them with the options
 * kiln__half_options(dtype) adds (none for f32: the f32 build is unchanged). The op calls
 * kiln__half_inputs on its float inputs: when all have one dtype it returns it (the op
 * runs that build and its output has that dtype); when f32 and halves mix it converts the
 * halves into f32 copies in use[] and returns KILN_F32 (torch's promotion); a non-float
 * input fails naming op (KILN_DTYPE_COUNT returned). use[j] is ts[j] where nothing was
 * converted; kiln__half_release frees the copies after the launch. The op records its
 * node with ts (the gradient goes to the caller's tensors) and its backward reads f32
 * gradients (gradients on the tape are f32 whatever the forward's dtype).
 *
 * An op without a half variant calls kiln__refuse_half first (or checks for f32 itself):
 * a half input fails with KILN_ERR_DTYPE naming the op and the dtype, never a silent
 * misread of 16-bit data. */
const char *kiln__half_options(kiln_dtype dt);
kiln_dtype kiln__half_inputs(kiln_ctx *ctx, const char *op, int n, kiln_tensor *const *ts, kiln_tensor **use);
void kiln__half_release(int n, kiln_tensor *const *ts, kiln_tensor **use);
bool kiln__refuse_half(kiln_ctx *ctx, const char *op, int n, kiln_tensor *const *ts);

/* Autocast (include/kiln/amp.h). The ops that run in half under autocast (matmul, linear,
 * conv2d) call kiln__autocast_inputs: with autocast on, their f32 inputs among ts[0..n)
 * (NULL allowed) are converted to the autocast dtype in cast[] by kiln_to_dtype (so the
 * f32 tensors get the gradients); returns how many (0: run as is; the op then calls
 * itself on cast[] and frees them with kiln__half_release), -1 with the error set. The ops
 * without a half variant begin with t = kiln__autocast_f32(ctx, t) for each float input:
 * with autocast on, a half t comes back as a differentiable f32 conversion (the op calls
 * itself on it and frees it), otherwise t itself. */
int kiln__autocast_inputs(kiln_ctx *ctx, int n, kiln_tensor *const *ts, kiln_tensor **cast);
/* Casts made ahead for the current autocast region (src/optim/optim.c makes an
 * optimizer's parameters' in a few launches): half, a new conversion of src to the
 * autocast dtype, is handed out by kiln__autocast_inputs for src (as a view of it: no
 * launch) until the next kiln_ctx_set_autocast, which frees it; the cache owns half (also
 * on failure). kiln__cast_record records out (a new conversion of t, or NULL: passed on)
 * as kiln_to_dtype of t: the node that hands out's gradient to t. */
kiln_status kiln__autocast_cache_put(kiln_ctx *ctx, kiln_tensor *src, kiln_tensor *half);
kiln_tensor *kiln__cast_record(kiln_ctx *ctx, kiln_tensor *t, kiln_tensor *out);
kiln_tensor *kiln__autocast_f32(kiln_ctx *ctx, kiln_tensor *t);

/* A half variant through f32 copies, for ops whose kernels read only f32: the ops that
 * autocast computes in f32 (kiln/amp.h: softmax, the losses, the norms, the reductions,
 * ...). When kiln__any_half(n, ts), the op returns kiln__half_fallback(ctx, n, ts, fn,
 * arg), which runs fn on the inputs with every half converted to f32 (differentiably; NULL
 * inputs stay NULL); with autocast on the result stays f32, otherwise it is converted to
 * the inputs' half dtype (f32 when f32 and halves mix, as torch promotes). Costs a
 * conversion of each half input and of the output. n <= KILN__VIA_F32_MAX. */
#define KILN__VIA_F32_MAX 4
typedef kiln_tensor *(*kiln__f32_fn)(kiln_ctx *ctx, kiln_tensor *const *in, const void *arg);
bool kiln__any_half(int n, kiln_tensor *const *ts);
kiln_tensor *kiln__half_fallback(kiln_ctx *ctx, int n, kiln_tensor *const *ts, kiln__f32_fn fn, const void *arg);

/* ---- the GEMM router (src/ops/sgemm.c) --------------------------------------------- */

/* Row-major C = alpha op(A) op(B) + beta C, enqueued on ctx's queue with no event; batch
 * > 1 is strided-batched (strides in elements). Products kiln__gemm_own_takes goes to
 * kiln's own kernels; the rest to CLBlast, with the operand order and, where kiln set
 * CLBlast's parameters, the kernel (direct or indirect) that run fastest on the device.
 * Returns CLBlast's status code (0 = success), or KILN__SGEMM_FAILED when kiln's own
 * kernel failed: the context's error then says why. */
#define KILN__SGEMM_FAILED (-100000)
int kiln__sgemm(kiln_ctx *ctx, const char *op, bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, cl_mem a,
                size_t aoff, size_t lda, size_t astride, cl_mem b, size_t boff, size_t ldb, size_t bstride, float beta,
                cl_mem c, size_t coff, size_t ldc, size_t cstride, size_t batch);
/* The multiple of each row-major dim (m, n, k of kiln__sgemm) at which CLBlast's indirect
 * kernel, as kiln set it up for ctx's device, uses the operands in place instead of copying
 * them into padded buffers first; 1 where that is not known (CLBlast's own parameters, or
 * the row-major call order). Ops that own their operands' layout pad to these. */
void kiln__sgemm_tiles(kiln_ctx *ctx, size_t *tm, size_t *tn, size_t *tk);

/* ---- kiln's own GEMM kernels (src/ops/gemm.c) ---------------------------------------- */

/* kiln__gemm_params, one parameter set of kiln's GEMM kernels, is declared in
 * src/device/device_internal.h (the tune file and the context hold one). */
/* The table: the sets devices get, then odd ones only tests force (src/ops/gemm.c). */
#define KILN__GEMM_SETS 6
extern const kiln__gemm_params kiln__gemm_sets[KILN__GEMM_SETS];
/* The index into kiln__gemm_sets of the set for this device: by the LLVM target in POCL's
 * device name, else by its float vector width. Writes the target ("" when the name carries
 * none) to target (cap bytes, may be 0) and the target's instruction set, or "unknown", to
 * *isa (may be NULL). */
int kiln__gemm_choose(const kiln_device_info *info, char *target, size_t cap, const char **isa);
/* The set ctx's GEMM kernels run with: set ctx->hooks.gemm_params - 1 when that hook is
 * set, else the set KILN_GEMM_PARAMS names when that is set (NULL when either names no
 * set), else the set `kiln tune` (or KILN_TUNE=auto) stored for the device
 * (ctx->gemm_tuned), else, with KILN_TUNE=auto on a CPU device, the set
 * kiln__gemm_autotune finds at this first call, else kiln__gemm_choose's. */
const kiln__gemm_params *kiln__gemm_params_of(kiln_ctx *ctx);
/* The vector registers of the instruction set a table entry is for (its name), and how many
 * floats one holds (src/ops/gemm.c). */
void kiln__gemm_regfile(const char *isa, int *regs, int *width);
/* The sets of one kernel (nt: gemm_nt's RM RN VW KU; else gemm_nn's RM NV VW) around base,
 * which comes first, the other kernel's values base's, none needing more than regs
 * registers of width floats; quick: base and its nearest neighbours only. At most cap into
 * out; returns how many. */
int kiln__gemm_candidates(const kiln__gemm_params *base, bool nt, bool quick, int regs, int width,
                          kiln__gemm_params *out, int cap);
/* KILN_TUNE_SECONDS, the automatic tune's budget (default 10); a bad value gives the
 * default with the reason in why ("" otherwise). */
double kiln__tune_seconds(char *why, size_t cap);
/* KILN_TUNE=auto's search at the first product (src/ops/gemm.c): the set it finds, or
 * one stored meanwhile, goes to ctx->gemm_tuned; never fails (the table's set stays). Runs
 * once per context, and not while ctx holds an error. */
void kiln__gemm_autotune(kiln_ctx *ctx);
/* "avx512: nt 4x4 float16 k-unroll 1, nn 8x32 float16 k-unroll 1" into buf. */
void kiln__gemm_describe(const kiln__gemm_params *p, char *buf, size_t cap);
/* Whether kiln__sgemm gives this product to kiln's own kernels: every product (any
 * transposes, beta, batch, offsets and strides) on a CPU device, unless a dim is too large
 * for the kernels' int indices; none elsewhere. ctx->hooks.gemm_own and KILN_GEMM_OWN=off
 * override. */
bool kiln__gemm_own_takes(kiln_ctx *ctx, bool ta, bool tb, size_t m, size_t n, size_t k, size_t batch, float beta);
/* Whether gemm_nn reads a K operand with leading dim ld (elements), K rows and `reuse`
 * blocks reading each of its panels through a padded copy (its rows conflict in cache: ld a
 * multiple of `period` elements; and at least min_reuse blocks read them). */
bool kiln__gemm_pad_wanted(size_t ld, size_t k, size_t reuse, size_t min_reuse, size_t period);
/* Row-major C = alpha op(A) op(B) + beta C for `batch` matrices, as kiln__sgemm's
 * arguments, enqueued: gemm_nt for A B^T, gemm_nn for A B and A^T B, gemm_nn on (B, A) with
 * a transposed store for A^T B^T, gemv_rows or gemv_cols where m or n is 1, gemm_ger
 * where k is 1 (kiln__gemm_kernel says which); K operands whose rows conflict in cache
 * through padded pool copies (gemm_copy). m, n or batch 0 enqueue nothing; k 0 scales C by beta. */
kiln_status kiln__gemm_run(kiln_ctx *ctx, const char *op, bool ta, bool tb, size_t m, size_t n, size_t k, float alpha,
                           cl_mem a, size_t aoff, size_t lda, size_t astride, cl_mem b, size_t boff, size_t ldb,
                           size_t bstride, float beta, cl_mem c, size_t coff, size_t ldc, size_t cstride, size_t batch);
/* The kernel of gemm.cl that runs an f32 product without bias when kiln's kernels take it:
 * gemv_rows or gemv_cols (m or n is 1), gemm_ger (k is 1, op(B)'s row contiguous: a B^T
 * with a leading dim above 1, or a bias, keeps its product in gemm_nt or gemm_nn), gemm_nt
 * (A B^T, except with a short K and a large M or a small A), or gemm_nn (the rest: A B^T
 * of a short K and a large M on a transposed copy of B, of a short K, a small A and a
 * large N as A^T B^T on a transposed copy of A). */
const char *kiln__gemm_kernel(bool ta, bool tb, size_t m, size_t n, size_t k);
/* Whether kiln's own A B^T kernel takes this product with a bias added as it stores (C = A
 * B^T + bias, one launch): A B^T that kiln__gemm_own_takes, unless ctx->hooks.gemm_epilogue
 * is -1 or KILN_GEMM_EPILOGUE=off (then the caller adds the bias itself). */
bool kiln__gemm_bias_takes(kiln_ctx *ctx, bool ta, bool tb, size_t m, size_t n, size_t k, size_t batch);
/* kiln__gemm_run with A, B and C of dtypes dt[0..3) (f32, f16 or bf16 each): kiln's own
 * kernels built to read and write halves (gemm.cl's A_DT, B_DT, C_DT), every product and
 * sum in f32; half operands are never padded. For every device: CLBlast's HGEMM would
 * need cl_khr_fp16 and accumulates in half precision, less accurately than PyTorch. */
kiln_status kiln__gemm_run_dt(kiln_ctx *ctx, const char *op, const kiln_dtype dt[3], bool ta, bool tb, size_t m,
                              size_t n, size_t k, float alpha, cl_mem a, size_t aoff, size_t lda, size_t astride,
                              cl_mem b, size_t boff, size_t ldb, size_t bstride, float beta, cl_mem c, size_t coff,
                              size_t ldc, size_t cstride, size_t batch);
/* Row-major C [m, n] = A [m, k] B^T (B [n, k]) + bias, bias[j] at bias_off + j * bias_st,
 * and with relu ReLU of that: a linear layer's forward in one launch of gemm_nt (its
 * NT_BIAS program). dt: NULL (all f32) or the dtypes of A, B, C and the bias. */
kiln_status kiln__gemm_run_bias(kiln_ctx *ctx, const char *op, size_t m, size_t n, size_t k, cl_mem a, size_t aoff,
                                size_t lda, cl_mem b, size_t boff, size_t ldb, cl_mem c, size_t coff, size_t ldc,
                                cl_mem bias, size_t bias_off, size_t bias_st, const kiln_dtype *dt, bool relu);
/* A linear layer's forward x W^T + b (b NULL: none), differentiable in all three: with
 * kiln__gemm_bias_takes one fused launch where x and W are contiguous, else kiln_matmul_ex
 * and kiln_add. kiln__linear_relu is relu(x W^T + b), the ReLU in that launch's store too
 * (else kiln_relu of kiln__linear), the output and every gradient bit for bit the three
 * ops'. */
kiln_tensor *kiln__linear(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *w, kiln_tensor *b);
kiln_tensor *kiln__linear_relu(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *w, kiln_tensor *b);
/* relu(kiln_conv2d(x, w, b, p)) as one op, the ReLU in the store that adds the bias (the
 * direct 3x3 kernels' or the copy of the GEMM's result into NCHW): one launch fewer and one
 * pass less over the output. Backward: relu's mask from the output, then conv2d's. Halves
 * (and autocast) too: the store keeps what the two ops give, relu of the rounded sum (a
 * rounded -0 stays -0, KILN_ST_RELU). Without a bias, or with dtypes that mix, it runs the
 * two ops. */
kiln_tensor *kiln__conv2d_relu(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *weight, kiln_tensor *bias,
                               const kiln_conv2d_params *p);
/* Images per chunk of the convolutions' column buffers (src/ops/conv.c) when one image needs
 * `per` elements of scratch and has hw output pixels, of a batch of n: what the chunk budget
 * holds (ctx->hooks.conv_budget in tests), at least 1 and at most n, and below n rounded
 * down, where the budget allows, to a count whose pixels fill whole 64-byte lines. */
int kiln__conv_chunk_images(const kiln_ctx *ctx, int64_t per, int64_t hw, int n);
/* The backward of an op fused with a ReLU after it (kiln__linear_relu, kiln__conv2d_relu):
 * relu's backward on g, its mask from n's output (the same test as from the input), then fn,
 * the unfused op's backward, on that gradient. */
kiln_status kiln__relu_backward_then(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g, kiln__backward_fn fn);

/* relu(kiln_batch_norm(x, ...) + residual) (residual NULL: relu(batch norm)), the same
 * numbers as those three ops: one op over one pass where batch norm's plane kernels run
 * (src/ops/norm.c), the three ops elsewhere. For the residual blocks of src/nn/models.c. */
kiln_tensor *kiln__batch_norm_relu(kiln_ctx *ctx, kiln_tensor *x, kiln_tensor *residual, kiln_tensor *running_mean,
                                   kiln_tensor *running_var, kiln_tensor *weight, kiln_tensor *bias, bool training,
                                   float momentum, float eps);
#endif

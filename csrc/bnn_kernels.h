/* bnnkit native deployment kernels: shared declarations.
 *
 * Layouts (all little-endian 64-bit words; bit j of word w holds channel 64*w + j of a group;
 * bit value 1 means -1, 0 means +1; unused bits of the last word are 0):
 *   packed activations  [N][Hp][Wp][G][Cw]        Hp = H + 2*bpad_h, Wp = W + 2*bpad_w, zero border
 *   kernel weights      [G][OBg][K][Cw][8]        8 output channels interleaved per block (OBg = ceil(Og/8))
 *   border corrections  [R][C][G][OBg][8] int32   for an output pixel of row class r and column
 *                                                 class c: what its (+1) padded positions add to the
 *                                                 dot product (the sum over them of Cg - 2*popcount(w)),
 *                                                 subtracted back; zero for a window inside the input
 *   row / column classes [Ho] / [Wo] int32        r and c of each output row and column (C = ncls_col)
 *   pre, scale, bias    [G][OBg][8] float32       the model's scale alpha, then its BatchNorm as an
 *                                                 affine map (zero for padding channels)
 *   ties, residual      see BConvArgs
 *   output              [N][Ho][Wo][G*Og] float32 (NHWC, i.e. PyTorch channels_last), or with
 *                       out_nchw [N][G*Og][Ho][Wo] (PyTorch's default layout)
 *   pack input          NHWC float32, or with nchw NCHW
 *
 * Every pointer comes with its length in elements. The Python side validates all shapes before a
 * call; with BNNKIT_DEBUG defined every single access is also checked against these lengths.
 */
#ifndef BNNKIT_KERNELS_H
#define BNNKIT_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Whether this CPU runs the AVX2 code paths: AVX2, FMA and POPCNT (csrc/bnn_module.cpp). */
int bnn_cpu_has_avx2(void);

typedef struct {
    const uint64_t* act; int64_t act_len;
    int64_t N, H, W, Hp, Wp, bpad_h, bpad_w;
    int64_t G, Cg, Cw;
    int64_t Og, OBg;
    int64_t KH, KW, sh, sw, ph, pw, dh, dw;
    int64_t Ho, Wo;
    const uint64_t* wk; int64_t wk_len;
    const int32_t* bcorr; int64_t bcorr_len;
    const int32_t* row_cls; const int32_t* col_cls; int64_t ncls_col;
    const float* pre; const float* scale; const float* bias; int64_t sb_len;
    float* out; int64_t out_len;
    int64_t out_nchw;                    /* 1: write the output NCHW instead of NHWC */
    /* Ties: inputs exactly at their threshold (sign 0), which the packed bits read as +1. Each
     * tile subtracts what its ties added before its epilogue. */
    const int32_t* ties; int64_t nties;  /* [nties][4] rows (n, y, x, c), inside the input */
    const int64_t* tie_rows;             /* set by the binding, which sorts the ties by (n, y):
                                          * [N*H + 1], the ties of input row (n, y) are rows
                                          * tie_rows[n*H + y] .. tie_rows[n*H + y + 1] - 1 */
    const int8_t* tie_w; int64_t tie_w_len; /* [G][OBg][KH*tie_KW][tie_Cg][8] weight signs (+1/-1,
                                          * 0 for padding channels) */
    int64_t tie_KW, tie_dw, tie_Cg;      /* the conv's own kernel width, dilation and channels per
                                          * group (a tap-packed conv passes KW = 1, dw = 1 and
                                          * Cg = KW * channels above) */
    const float* res; int64_t res_len;   /* NULL, or a residual in the output's layout and shape,
                                          * added to each result after its epilogue (one rounding,
                                          * as PyTorch's `bn(conv(x)) + residual`) */
    /* The block's nonlinearity, applied to each result last (after the residual), with PyTorch's
     * own formula so the bits are the same: 0 none; 1 PReLU, nonlin_p = [G*Og] slopes,
     * v > 0 ? v : slope * v; 2 Hardtanh, nonlin_p = [lo, hi], v < lo ? lo : v > hi ? hi : v
     * (NaN and -0.0 pass through, as torch.clamp's). */
    int64_t nonlin; const float* nonlin_p; int64_t nonlin_len;
} BConvArgs;

/* Index of output (n, channel o, row oy, column ox) in either layout. */
static inline int64_t bconv_out_index(const BConvArgs* a, int64_t n, int64_t o, int64_t oy, int64_t ox) {
    const int64_t O = a->G * a->Og;
    return a->out_nchw ? ((n * O + o) * a->Ho + oy) * a->Wo + ox : ((n * a->Ho + oy) * a->Wo + ox) * O + o;
}

typedef struct {
    const float* x; int64_t x_len;       /* NHWC float32 (NCHW when nchw) */
    int64_t N, H, W, C;
    int64_t G, Cg, Cw, pad_h, pad_w;
    int64_t center;                      /* 1: threshold = per-sample mean over (H,W,C) in double; 3: as PyTorch computes it (float32); 4: as PyTorch computes it for the NCHW copy of this channels-last x */
    uint64_t* out; int64_t out_len;
    float* thr_out; int64_t thr_len;     /* receives the N thresholds used */
    const float* thr_in;                 /* center == 2: the N thresholds to use (thr_len of them) */
    int32_t* ties; int64_t ties_cap;     /* receives (n, y, x, c) of every x == threshold (sign 0), */
    int64_t* ties_count;                 /* up to ties_cap rows; *ties_count = how many there were  */
    int64_t nchw;                        /* 1: x is NCHW */
} PackArgs;

/* One implementation per instruction set; each processes tasks [t0, t1) of the same decomposition. */
int64_t bconv_num_tasks_portable(const BConvArgs* a);
int64_t bconv_num_tasks_avx2(const BConvArgs* a);
int64_t bconv_num_tasks_avx512(const BConvArgs* a);
void bconv_tasks_portable(const BConvArgs* a, int64_t t0, int64_t t1);
void bconv_tasks_avx2(const BConvArgs* a, int64_t t0, int64_t t1);
void bconv_tasks_avx512(const BConvArgs* a, int64_t t0, int64_t t1);
/* AArch64 only (csrc/bnn_neon.cpp; defined where it is compiled, never on x86) */
int64_t bconv_num_tasks_neon(const BConvArgs* a);
void bconv_tasks_neon(const BConvArgs* a, int64_t t0, int64_t t1);

/* pack rows [r0, r1) of the N*H input rows; thr[n] is the threshold of sample n */
void pack_rows_portable(const PackArgs* a, const float* thr, int64_t r0, int64_t r1);
void pack_rows_avx2(const PackArgs* a, const float* thr, int64_t r0, int64_t r1);
void pack_rows_avx512(const PackArgs* a, const float* thr, int64_t r0, int64_t r1);
void pack_rows_neon(const PackArgs* a, const float* thr, int64_t r0, int64_t r1);

double sample_sum_portable(const float* x, int64_t n);
double sample_sum_avx512(const float* x, int64_t n);
double sample_sum_neon(const float* x, int64_t n);

/* the float32 sum of x[0..n), n >= 8, in the order of PyTorch's CPU sum (csrc/bnn_torch_sum.h) */
float torch_sum_portable(const float* x, int64_t n);
float torch_sum_avx2(const float* x, int64_t n);
float torch_sum_avx512(const float* x, int64_t n);
float torch_sum_neon(const float* x, int64_t n);

/* Training-time activation kernels (csrc/bnn_act.cpp): N samples of n floats each, dense. */
typedef struct {
    const float* x; int64_t x_len;       /* [N][n], x_len = N * n; grad and out alike */
    const float* grad;                   /* backward: dL/d sign(...) */
    float* out;                          /* forward: the signs; backward: dL/dx */
    float* mean; float* rstd;            /* [N]: written by the forward, read by the backward */
    int64_t N, n;
    int64_t centered;                    /* 1: SiMaN's sign(x - mean); 0: BiPer's sign(x) */
    int64_t sign_slope;                  /* backward: 1 for sign(y) (the gradient of |y|), 0 for ApproxSign's */
    const float* triangle;               /* NULL, or RBNN's [k, h, t2]: no eps in rstd, the triangle's slope */
} ActArgs;

void act_forward_samples(const ActArgs* a, int64_t s0, int64_t s1);
void act_backward_samples(const ActArgs* a, int64_t s0, int64_t s1);

/* SiMaN's weight binarizer (csrc/bnn_act.cpp): O rows of k floats each, dense. */
typedef struct {
    float* w; int64_t len;               /* [O][k], len = O * k; code and wb alike */
    float* code;                         /* 0/1 per weight: read, and rewritten when update */
    float* wb;                           /* out: 2 code - 1 */
    float* mean; float* rstd;            /* [O]: the row statistics the backward needs */
    int64_t O, k;
    int64_t center;                      /* first subtract each row's mean from w, in place */
    const float* clip;                   /* NULL, or [2]: clip |w| to [low, high] in place (after center) */
    int64_t update;                      /* recompute the code (training) */
} SimanWeightArgs;

void siman_weight_rows(const SimanWeightArgs* a, int64_t r0, int64_t r1);
void siman_center_rows(const SimanWeightArgs* a, uint32_t* keys, int64_t r0, int64_t r1);
/* out[j] = the key of ascending rank ranks[j] among keys[0, n), bit patterns of non-negative
 * floats, on `slices` OpenMP tasks (n < 2^31) */
void select_ranks(const uint32_t* keys, int64_t n, const int64_t* ranks, int64_t count, uint32_t* out, int slices);

typedef struct {
    const float* grad; const float* y;   /* [N][C][P] (NCHW, P = H*W) or [N][P][C] (nhwc) */
    float* dy; int64_t len;              /* len = N * C * P for each of the three */
    const float* alpha;                  /* [C] */
    const float* inv_alpha;              /* [C] 1 / alpha, read when `scaled` */
    double* partial;                     /* [N][C]: sample s's sum of grad * y per channel */
    int64_t N, C, P, nhwc;
    int64_t scaled;                      /* y holds y * alpha of integer y, |y| < 2^21: use rint(y / alpha) */
} ScaleArgs;

void scale_backward_samples(const ScaleArgs* a, int64_t s0, int64_t s1);

/* Binary weights to the deploy layout: out [O][K][Cw] words, bit c % 64 of word c / 64 set where
 * w[o, c, k] < 0 (element (o, c, k) at o*so + c*sc + k*sk); bad[o] = how many of row o's values
 * are not exactly +1 or -1. */
typedef struct {
    const float* w; int64_t w_len;
    int64_t O, Cg, K, Cw, so, sc, sk;
    uint64_t* out; int64_t out_len;
    int64_t* bad;                        /* [O] */
} WeightPackArgs;

void pack_weight_rows(const WeightPackArgs* a, int64_t o0, int64_t o1);

/* Max pooling of a channels-last float32 tensor, then optionally an eval-mode BatchNorm and a
 * nonlinearity, written NCHW (csrc/bnn_act.cpp): out[n, c, oy, ox] = act(fma(m, scale[c], bias[c]))
 * with m the maximum of in[n, oy*sh + ky, ox*sw + kx, c] over the window (ky, then kx; m starts at
 * -inf and takes a value that is greater or NaN, as PyTorch's max_pool2d), no padding. */
typedef struct {
    const float* in; int64_t in_len;     /* [N][H][W][C] */
    float* out; int64_t out_len;         /* [N][C][Ho][Wo] */
    int64_t N, C, H, W, Ho, Wo, kh, kw, sh, sw;
    const float* scale; const float* bias;  /* [C] each, or both NULL: no BatchNorm */
    int64_t nonlin;                      /* 0 none; 1 PReLU, nonlin_p = [C] slopes; 2 Hardtanh, [lo, hi] */
    const float* nonlin_p; int64_t nonlin_len;
} PoolArgs;

void pool_samples(const PoolArgs* a, int64_t s0, int64_t s1);

/* A ResNet stem after its conv: eval-mode BatchNorm, a nonlinearity, then max pooling with
 * padding, written channels-last (csrc/bnn_act.cpp): out[n, oy, ox, c] is the maximum over the
 * window's positions inside the input (ky, then kx; starting at -inf, a value that is greater or
 * NaN is taken, as PyTorch's max_pool2d) of act(fma(in[n, c, y, x], scale[c], bias[c])), each as
 * PyTorch's batch_norm, activation and max_pool2d compute it, in one pass instead of three. */
typedef struct {
    const float* in; int64_t in_len;     /* [N][H][W][C], or [N][C][H][W] if in_nchw */
    float* out; int64_t out_len;         /* [N][Ho][Wo][C] */
    int64_t N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, in_nchw;
    const float* scale; const float* bias;  /* [C] each */
    int64_t nonlin;                      /* as PoolArgs */
    const float* nonlin_p; int64_t nonlin_len;
} BnPoolArgs;

/* output rows [r0, r1) of the N * Ho */
void bn_pool_rows(const BnPoolArgs* a, int64_t r0, int64_t r1);

/* k x k average pooling with stride k (floor mode, no padding) of NCHW planes, with `pad` zero
 * channels on each side of the output (csrc/bnn_act.cpp), as PyTorch's CPU kernels round it:
 * forward out = ((0 + x0) + x1 + ...) / (k*k), window read row by row; backward (x = dL/dout,
 * out = dL/din) din = 0 + dout / (k*k) inside a window, 0 outside every window. */
typedef struct {
    const float* x; int64_t x_len;       /* forward [N][C][H][W]; backward [N][C+2pad][Ho][Wo] */
    float* out; int64_t out_len;         /* forward [N][C+2pad][Ho][Wo]; backward [N][C][H][W] */
    int64_t N, C, H, W, k, pad, backward;
} AvgPoolArgs;

void avg_pool_planes(const AvgPoolArgs* a, int64_t p0, int64_t p1);

/* Bounds checking (debug builds only): BNN_AT(what, idx, span, len) is idx when elements
 * [idx, idx+span) lie inside a buffer of len elements; otherwise the failure is recorded (and
 * reported as a Python exception after the call) and index 0 is used instead, so a debug build
 * never touches memory outside its buffers. Release builds compile it to plain idx. */
#ifdef BNNKIT_DEBUG
int64_t bnn_debug_fail(const char* what, int64_t idx, int64_t span, int64_t len);
#define BNN_AT(what, idx, span, len) \
    (((int64_t)(idx) >= 0 && (int64_t)(idx) + (int64_t)(span) <= (int64_t)(len)) \
         ? (int64_t)(idx) : bnn_debug_fail(what, (int64_t)(idx), (int64_t)(span), (int64_t)(len)))
#else
#define BNN_AT(what, idx, span, len) ((int64_t)(idx))
#endif

#ifdef __cplusplus
}
#endif

#endif

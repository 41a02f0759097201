/* The binary convolution and packing loops, written once over an instruction-set policy `P`.
 *
 * Included by each bnn_<isa>.cpp inside its `#pragma GCC target` region, after that file defines
 * its policy; everything here has internal linkage, so the copies compiled for different
 * instruction sets never meet at link time.
 *
 * Policy interface:
 *   typedef ... acc_t;   accumulators of 8 output channels (64-bit counts of mismatching bits)
 *   typedef ... w_t;     8 weight words of one (kernel position, word) for the 8 channels
 *   static acc_t zero();
 *   static w_t   loadw(const uint64_t* p);                 p[0..7]
 *   static acc_t step(acc_t acc, w_t w, uint64_t a);       acc[j] += popcount(w[j] ^ a)
 *   static void  epilogue(acc_t acc, const int32_t* corr8, int32_t kc, const float* pre8,
 *                         const float* scale8, const float* bias8, float* out, int nch);
 *            out[j] = fma((kc - 2*acc[j] - corr8[j]) * pre8[j], scale8[j], bias8[j]) for j < nch,
 *            rounding exactly as PyTorch's `y * alpha` followed by its eval-mode BatchNorm
 *   static uint64_t pack_word(const float* x, int nb, float thr, uint64_t* eq);
 *            bit i = x[i] < thr, i < nb <= 64; *eq gets bit i = (x[i] == thr)
 */
#ifndef BNN_POLICY
#error "define the policy before including bnn_impl.h"
#endif

#include <string.h>
#include <stdlib.h>

#include "bnn_nonlin.h"

namespace {

typedef BNN_POLICY P;

#if defined(BNN_AVX_TRANSPOSE8)
/* out[j][t] = in[t][j]: 8 pixels x 8 channels to 8 channels x 8 pixels, in AVX registers
 * (unpack, shuffle, 128-bit lane permute) */
static inline void transpose8(const float* in, float (*out)[8]) {
    __m256 r[8], t[8], s[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(in + 8 * i);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        s[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        s[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        s[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        s[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(out[i], _mm256_permute2f128_ps(s[i], s[i + 4], 0x20));
        _mm256_storeu_ps(out[i + 4], _mm256_permute2f128_ps(s[i], s[i + 4], 0x31));
    }
}
#else
static inline void transpose8(const float* in, float (*out)[8]) {
    for (int t = 0; t < 8; ++t)
        for (int j = 0; j < 8; ++j) out[j][t] = in[8 * t + j];
}
#endif

/* What the ties read by the tile's T pixels x NB blocks added to its dot products: tc[b][t][j] =
 * the sum of the weight signs at their taps (a tie is packed as +1 but its sign is 0). Returns
 * false, leaving tc untouched, when the tile reads no tie. Ties are looked up by input row, so a
 * tile without any costs KH row lookups. */
template <int T, int NB>
static inline bool tile_ties(const BConvArgs* a, int64_t n, int64_t oy, int64_t ox, int64_t g, int64_t blk,
                             int32_t (*tc)[T][8]) {
    bool any = false;
    const int64_t K0 = a->KH * a->tie_KW, rows_len = a->N * a->H + 1;
    (void)rows_len;  /* read by the bounds checks of debug builds only */
    const bool unit = a->sw == 1 && a->tie_dw == 1;
    for (int64_t ky = 0; ky < a->KH; ++ky) {
        const int64_t y = oy * a->sh - a->ph + ky * a->dh;
        if (y < 0 || y >= a->H) continue;
        const int64_t r = n * a->H + y;
        const int64_t z1 = a->tie_rows[BNN_AT("tie rows", r + 1, 1, rows_len)];
        for (int64_t z = a->tie_rows[BNN_AT("tie rows", r, 1, rows_len)]; z < z1; ++z) {
            const int32_t* tie = a->ties + BNN_AT("ties", 4 * z, 4, 4 * a->nties);
            const int64_t cl = tie[3] - g * a->tie_Cg;
            if ((uint64_t)cl >= (uint64_t)a->tie_Cg) continue;  /* another group's channel */
            /* the taps kx whose pixel t lies in the tile: with unit stride and dilation a range,
             * t = d - kx, found without a branch per tap */
            const int64_t d = tie[2] + a->pw - ox;
            const int64_t kx0 = unit ? (d - T + 1 > 0 ? d - T + 1 : 0) : 0;
            const int64_t kx1 = unit ? (d + 1 < a->tie_KW ? d + 1 : a->tie_KW) : a->tie_KW;
            for (int64_t kx = kx0; kx < kx1; ++kx) {
                const int64_t nx = tie[2] + a->pw - kx * a->tie_dw;  /* (ox + t) * sw for the pixel t reading it */
                int64_t t = d - kx;
                if (!unit) {
                    if (nx < 0 || nx % a->sw) continue;
                    t = nx / a->sw - ox;
                    if (t < 0 || t >= T) continue;
                }
                if (!any) {
                    memset(tc, 0, sizeof(int32_t) * NB * T * 8);
                    any = true;
                }
                const int64_t k = ky * a->tie_KW + kx;
                for (int b = 0; b < NB; ++b) {
                    const int8_t* s = a->tie_w + BNN_AT("tie weights", (((blk + b) * K0 + k) * a->tie_Cg + cl) * 8, 8,
                                                        a->tie_w_len);
                    for (int j = 0; j < 8; ++j) tc[b][t][j] += s[j];
                }
            }
        }
    }
    return any;
}

#if defined(BNN_AVX_TRANSPOSE8)
/* 8 results: v (+ the residual at res), then the nonlinearity (bnn_nonlin.h's formulas, 8 lanes). */
template <int NL, bool RES>
static inline __m256 finish8(__m256 v, const float* res, __m256 slope, __m256 lo, __m256 hi) {
    if (RES) v = _mm256_add_ps(v, _mm256_loadu_ps(res));
    if (NL == 1) v = _mm256_blendv_ps(_mm256_mul_ps(slope, v), v, _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ));
    if (NL == 2) v = _mm256_blendv_ps(_mm256_blendv_ps(v, hi, _mm256_cmp_ps(v, hi, _CMP_GT_OQ)), lo,
                                      _mm256_cmp_ps(v, lo, _CMP_LT_OQ));
    return v;
}
#endif

/* dst[x] = nonlin(src[x] (+ res[x])) for x < n (bnn_nonlin.h): one loop per case (with AVX,
 * a channel's row 8 lanes at a time). The PReLU slope is slope[x] with PER (the channels of one pixel), else slope[0]
 * (one channel's row). */
template <int NL, bool RES, bool PER>
static inline void store_channel_row(const float* src, const float* res, float* dst, int64_t n, const float* slope,
                                     float lo, float hi) {
    int64_t x = 0;
#if defined(BNN_AVX_TRANSPOSE8)
    if (!PER) {  /* one channel's row: 8 at a time, the slope in a register (a float store may alias it) */
        const __m256 s = _mm256_set1_ps(NL == 1 ? slope[0] : 0.0f), l = _mm256_set1_ps(lo), h = _mm256_set1_ps(hi);
        for (; x + 8 <= n; x += 8)
            _mm256_storeu_ps(dst + x, finish8<NL, RES>(_mm256_loadu_ps(src + x), RES ? res + x : res, s, l, h));
    }
#endif
    for (; x < n; ++x) {
        float v = src[x];
        if (RES) v += res[x];  /* only with one: + 0 would turn -0.0 into +0.0 */
        if (NL == 1) v = bnn_prelu(v, slope[PER ? x : 0]);
        if (NL == 2) v = bnn_hardtanh(v, lo, hi);
        dst[x] = v;
    }
}

template <bool PER>
static inline void store_row_nonlin(const BConvArgs* a, const float* src, const float* res, float* dst, int64_t n,
                                    const float* slope) {
    const float lo = a->nonlin == 2 ? a->nonlin_p[0] : 0.0f, hi = a->nonlin == 2 ? a->nonlin_p[1] : 0.0f;
    if (res) {
        if (a->nonlin == 1) store_channel_row<1, true, PER>(src, res, dst, n, slope, lo, hi);
        else if (a->nonlin == 2) store_channel_row<2, true, PER>(src, res, dst, n, slope, lo, hi);
        else store_channel_row<0, true, PER>(src, res, dst, n, slope, lo, hi);
    } else {
        if (a->nonlin == 1) store_channel_row<1, false, PER>(src, res, dst, n, slope, lo, hi);
        else if (a->nonlin == 2) store_channel_row<2, false, PER>(src, res, dst, n, slope, lo, hi);
        else store_channel_row<0, false, PER>(src, res, dst, n, slope, lo, hi);
    }
}

/* Channel o's row of n results: residual, then the nonlinearity (NCHW output). */
static inline void bconv_store_channel_row(const BConvArgs* a, const float* src, const float* res, float* dst,
                                           int64_t n, int64_t o) {
    const float* slope = a->nonlin == 1 ? a->nonlin_p + BNN_AT("bconv PReLU slopes", o, 1, a->nonlin_len) : NULL;
    store_row_nonlin<false>(a, src, res, dst, n, slope);
}

/* One pixel's nch results of channels o .. o+nch-1, in place: residual, then the nonlinearity
 * (channels-last output). */
static inline void bconv_finish_pixel(const BConvArgs* a, const float* res, float* dst, int nch, int64_t o) {
    const float* slope = a->nonlin == 1 ? a->nonlin_p + BNN_AT("bconv PReLU slopes", o, nch, a->nonlin_len) : NULL;
    store_row_nonlin<true>(a, dst, res, dst, nch, slope);
}

#if defined(BNN_AVX_TRANSPOSE8)
/* n pixels' 8 channels, `stride` floats apart, in place: the residual, then the nonlinearity, 8
 * lanes at once. Everything in locals: the compiler must assume a float store may change *a. */
template <int NL, bool RES>
static inline void finish_pixels8(float* dst, const float* res, int64_t stride, int64_t n, const float* slope8,
                                  float lo_, float hi_) {
    const __m256 slope = NL == 1 ? _mm256_loadu_ps(slope8) : _mm256_setzero_ps();
    const __m256 lo = _mm256_set1_ps(lo_), hi = _mm256_set1_ps(hi_);
    for (int64_t x = 0; x < n; ++x, dst += stride, res += RES ? stride : 0)
        _mm256_storeu_ps(dst, finish8<NL, RES>(_mm256_loadu_ps(dst), res, slope, lo, hi));
}
#endif

/* Residual and nonlinearity of the channels-last results of row oy, blocks ob .. ob+NB-1, while
 * they are in L1. A call of its own: inlined into the tile, its constants took registers from
 * the XOR-popcount loop. */
__attribute__((noinline)) static void bconv_finish_row(const BConvArgs* a, int64_t n, int64_t oy, int64_t g,
                                                       int64_t ob, int NB) {
    const int64_t O = a->G * a->Og, Wo = a->Wo, nl = a->nonlin;
    const float lo = nl == 2 ? a->nonlin_p[0] : 0.0f, hi = nl == 2 ? a->nonlin_p[1] : 0.0f;
    (void)lo; (void)hi;  /* the portable build's loop reads them from *a */
    for (int b = 0; b < NB; ++b) {
        int nch = (int)(a->Og - (ob + b) * 8);
        if (nch > 8) nch = 8;
        const int64_t ch = g * a->Og + (ob + b) * 8, i0 = (n * a->Ho + oy) * Wo * O + ch;
        float* dst = a->out + BNN_AT("bconv output", i0, (Wo - 1) * O + nch, a->out_len);
        const float* res = a->res ? a->res + BNN_AT("bconv residual", i0, (Wo - 1) * O + nch, a->res_len) : NULL;
#if defined(BNN_AVX_TRANSPOSE8)
        if (nch == 8) {
            const float* slope = nl == 1 ? a->nonlin_p + BNN_AT("bconv PReLU slopes", ch, 8, a->nonlin_len) : NULL;
            if (res) {
                if (nl == 1) finish_pixels8<1, true>(dst, res, O, Wo, slope, lo, hi);
                else if (nl == 2) finish_pixels8<2, true>(dst, res, O, Wo, slope, lo, hi);
                else finish_pixels8<0, true>(dst, res, O, Wo, slope, lo, hi);
            } else {
                if (nl == 1) finish_pixels8<1, false>(dst, res, O, Wo, slope, lo, hi);
                else if (nl == 2) finish_pixels8<2, false>(dst, res, O, Wo, slope, lo, hi);
            }
            continue;
        }
#endif
        for (int64_t ox = 0; ox < Wo; ++ox)
            bconv_finish_pixel(a, res ? res + ox * O : NULL, dst + ox * O, nch, ch);
    }
}

/* T output pixels (ox ... ox+T-1 of row oy) by NB blocks of 8 output channels (ob, ob+1, ...).
 * offs[i], i = k*Cw + w: word offset of (kernel position k, word w) from a pixel's first word.
 * The epilogue writes NHWC output directly, or with rowbuf (NCHW output) the row's [NB][Wo][8]
 * buffer that store_row_nchw transposes once the row is done. Every pixel, border or not, takes
 * its zero-padding correction from the table of its (row class, column class), and its ties'
 * correction from tile_ties. */
template <int T, int NB>
static inline void bconv_tile(const BConvArgs* a, const int64_t* offs, int64_t n, int64_t oy, int64_t ox,
                              int64_t g, int64_t ob, float* rowbuf) {
    const int64_t K = a->KH * a->KW, Cw = a->Cw, PW = a->G * a->Cw, KC = K * Cw;
    const int64_t blk = g * a->OBg + ob;
    const int64_t by0 = oy * a->sh - a->ph + a->bpad_h;
    const int64_t bx0 = ox * a->sw - a->pw + a->bpad_w;
    const int64_t base = ((n * a->Hp + by0) * a->Wp + bx0) * PW + g * Cw;
    const int64_t tstep = a->sw * PW;
    const uint64_t* wp = a->wk + BNN_AT("bconv weights", blk * KC * 8, NB * KC * 8, a->wk_len);
    typename P::acc_t acc[NB][T];
    for (int b = 0; b < NB; ++b)
        for (int t = 0; t < T; ++t) acc[b][t] = P::zero();
    for (int64_t i = 0; i < KC; ++i) {
        typename P::w_t wv[NB];
        for (int b = 0; b < NB; ++b) wv[b] = P::loadw(wp + b * KC * 8 + i * 8);
        const int64_t o = base + offs[i];
        for (int t = 0; t < T; ++t) {
            const uint64_t av = a->act[BNN_AT("bconv activations", o + t * tstep, 1, a->act_len)];
            for (int b = 0; b < NB; ++b) acc[b][t] = P::step(acc[b][t], wv[b], av);
        }
    }
    /* The epilogue reads *a through locals: with -fno-strict-aliasing every float store could
     * change *a, and reloading its fields after each store cost more than the stores. */
    const int64_t O = a->G * a->Og, OB8 = a->G * a->OBg * 8, Og = a->Og, Wo = a->Wo;
    const int32_t kc = (int32_t)(K * a->Cg);
    const int32_t* const bcorr = a->bcorr;
    const float* const pre = a->pre;
    const float* const scale = a->scale;
    const float* const bias = a->bias;
    float* const out = a->out;
    const int64_t bcorr_len = a->bcorr_len, sb_len = a->sb_len, out_len = a->out_len;
    (void)bcorr_len; (void)sb_len; (void)out_len;  /* read by the bounds checks of debug builds only */
    const int64_t crow = (int64_t)a->row_cls[BNN_AT("bconv row classes", oy, 1, a->Ho)] * a->ncls_col;
    int64_t corr_at[T];  /* each pixel's row of the corrections table */
    for (int t = 0; t < T; ++t)
        corr_at[t] = (crow + a->col_cls[BNN_AT("bconv column classes", ox + t, 1, Wo)]) * OB8 + blk * 8;
    int32_t tc[NB][T][8];
    const bool tied = a->nties > 0 && tile_ties<T, NB>(a, n, oy, ox, g, blk, tc);
    const int64_t o_first = ((n * a->Ho + oy) * Wo + ox) * O + g * Og + ob * 8;
#if defined(BNN_EPILOGUE16)
    /* two full blocks side by side in a channels-last output: one 16-lane epilogue a pixel, its
     * constants, corrections and results contiguous (same operations lane by lane, same bits) */
    if (NB == 2 && !rowbuf && !tied && Og - ob * 8 >= 16) {
        const int64_t sb = BNN_AT("bconv scale", blk * 8, 16, sb_len);
        for (int t = 0; t < T; ++t)
            P::epilogue16(acc[0][t], acc[NB - 1][t], bcorr + BNN_AT("bconv border corrections", corr_at[t], 16, bcorr_len),
                          kc, pre + sb, scale + sb, bias + sb, out + BNN_AT("bconv output", o_first + t * O, 16, out_len));
        return;
    }
#endif
    for (int b = 0; b < NB; ++b) {
        int nch = (int)(Og - (ob + b) * 8);
        if (nch > 8) nch = 8;
        const int64_t sb = BNN_AT("bconv scale", (blk + b) * 8, 8, sb_len);
        for (int t = 0; t < T; ++t) {
            const int32_t* corr = bcorr + BNN_AT("bconv border corrections", corr_at[t] + b * 8, 8, bcorr_len);
            int32_t corr_tied[8];
            if (tied) {  /* dot = kc - 2*mismatches - corrections: a tie's sign joins the corrections */
                for (int j = 0; j < 8; ++j) corr_tied[j] = corr[j] + tc[b][t][j];
                corr = corr_tied;
            }
            if (rowbuf)  /* all 8 lanes: the padding channels of a block have zero constants */
                P::epilogue(acc[b][t], corr, kc, pre + sb, scale + sb, bias + sb, rowbuf + ((int64_t)b * Wo + ox + t) * 8, 8);
            else {
                float* dst = out + BNN_AT("bconv output", o_first + t * O + b * 8, nch, out_len);
                P::epilogue(acc[b][t], corr, kc, pre + sb, scale + sb, bias + sb, dst, nch);
            }
        }
    }
}

/* Outputs of at least this many floats (4 MiB) are stored NCHW with non-temporal stores: they
 * outgrow the caches before the next layer reads them, and short rows planes apart cost a read
 * for ownership of every line they write (ResNet-20's 16-channel layer at batch 256, 16 MiB:
 * 8.3-8.6 against 6.4-6.7 ms a conv; its eval forward 193-206 against 181-187 ms). */
#define BNN_STREAM_MIN_FLOATS ((int64_t)1 << 20)

/* NCHW output: the row's [NB][Wo][8] results, transposed into tmp's [8][Wo] (one channel's row
 * contiguous), then stored one channel row after the other. Storing 8 channels' rows
 * interleaved, 8 pixels at a time, revisited each cache line once per 8 pixels across 8 planes
 * (16 with a residual) that are often a multiple of 4 KiB apart, which evicted the lines between
 * visits. */
static inline void store_row_nchw(const BConvArgs* a, const float* rowbuf, float* tmp, int64_t n, int64_t oy,
                                  int64_t g, int64_t ob, int NB) {
    const int64_t Wo = a->Wo;
    const bool stream = a->out_len >= BNN_STREAM_MIN_FLOATS;
    (void)stream;
    for (int b = 0; b < NB; ++b) {
        int nch = (int)(a->Og - (ob + b) * 8);
        if (nch > 8) nch = 8;
        const int64_t ch0 = g * a->Og + (ob + b) * 8;
        const float* rb = rowbuf + (int64_t)b * Wo * 8;
        int64_t x = 0;
        float col[8][8];
        for (; x + 8 <= Wo; x += 8) {
            transpose8(rb + x * 8, col);
            for (int j = 0; j < 8; ++j) memcpy(tmp + j * Wo + x, col[j], 8 * sizeof(float));
        }
        for (; x < Wo; ++x)
            for (int j = 0; j < 8; ++j) tmp[j * Wo + x] = rb[x * 8 + j];
        for (int j = 0; j < nch; ++j) {
            const int64_t i = bconv_out_index(a, n, ch0 + j, oy, 0);
            float* dst = a->out + BNN_AT("bconv output", i, Wo, a->out_len);
            const float* r = a->res ? a->res + BNN_AT("bconv residual", i, Wo, a->res_len) : NULL;
#if defined(BNN_AVX_TRANSPOSE8)
            if (stream && Wo % 8 == 0 && ((uintptr_t)dst & 31) == 0) {
                bconv_store_channel_row(a, tmp + j * Wo, r, tmp + j * Wo, Wo, ch0 + j);
                for (int64_t xs = 0; xs < Wo; xs += 8) _mm256_stream_ps(dst + xs, _mm256_loadu_ps(tmp + j * Wo + xs));
            } else
#endif
            bconv_store_channel_row(a, tmp + j * Wo, r, dst, Wo, ch0 + j);
            if (r && oy + 1 < a->Ho)  /* the next row's, for the task that follows: the residual's
                                       * short rows, planes apart, defeat the hardware prefetchers */
                for (int64_t x = 0; x < Wo; x += 16) __builtin_prefetch(r + Wo + x);
        }
    }
}

#ifndef BNN_TILE
#define BNN_TILE 8
#endif
#ifndef BNN_BLOCKS
#define BNN_BLOCKS 1
#endif

template <int T, int NB>
static inline void bconv_tiles(const BConvArgs* a, const int64_t* offs, int64_t n, int64_t oy, int64_t g,
                               int64_t ob, float* rowbuf, float* tmp) {
    int64_t ox = 0;
    for (; ox + T <= a->Wo; ox += T) bconv_tile<T, NB>(a, offs, n, oy, ox, g, ob, rowbuf);
    if (T > 8)
        for (; ox + 8 <= a->Wo; ox += 8) bconv_tile<(T > 8 ? 8 : T), NB>(a, offs, n, oy, ox, g, ob, rowbuf);
    switch (a->Wo - ox) {  /* the remainder as one tile */
        case 0: break;
        case 1: bconv_tile<1, NB>(a, offs, n, oy, ox, g, ob, rowbuf); break;
        case 2: bconv_tile<2, NB>(a, offs, n, oy, ox, g, ob, rowbuf); break;
        case 3: bconv_tile<3, NB>(a, offs, n, oy, ox, g, ob, rowbuf); break;
        case 4: bconv_tile<4, NB>(a, offs, n, oy, ox, g, ob, rowbuf); break;
        case 5: bconv_tile<5, NB>(a, offs, n, oy, ox, g, ob, rowbuf); break;
        case 6: bconv_tile<6, NB>(a, offs, n, oy, ox, g, ob, rowbuf); break;
        default: bconv_tile<7, NB>(a, offs, n, oy, ox, g, ob, rowbuf); break;
    }
    if (rowbuf) store_row_nchw(a, rowbuf, tmp, n, oy, g, ob, NB);
    else if (a->res || a->nonlin) bconv_finish_row(a, n, oy, g, ob, NB);
}

/* Tasks: (n, oy, g, group of BNN_BLOCKS blocks of 8 output channels), the last index fastest. */
static inline int64_t bconv_task_count(const BConvArgs* a) {
    return a->N * a->Ho * a->G * ((a->OBg + BNN_BLOCKS - 1) / BNN_BLOCKS);
}

static void bconv_run(const BConvArgs* a, int64_t t0, int64_t t1) {
    const int64_t K = a->KH * a->KW, Cw = a->Cw, PW = a->G * a->Cw, KC = K * Cw;
    const int64_t OBP = (a->OBg + BNN_BLOCKS - 1) / BNN_BLOCKS;
    int64_t small[1024];
    int64_t* offs = KC <= 1024 ? small : (int64_t*)malloc((size_t)KC * sizeof(int64_t));
    /* NCHW: the row's results [BNN_BLOCKS][Wo][8], then their transpose [8][Wo] */
    float* rowbuf = a->out_nchw ? (float*)malloc((size_t)((BNN_BLOCKS + 1) * a->Wo * 8) * sizeof(float)) : NULL;
    float* tmp = rowbuf ? rowbuf + BNN_BLOCKS * a->Wo * 8 : NULL;
    if (!offs || (a->out_nchw && !rowbuf)) {
        if (offs != small) free(offs);
        free(rowbuf);
        return;
    }
    for (int64_t ky = 0; ky < a->KH; ++ky)
        for (int64_t kx = 0; kx < a->KW; ++kx)
            for (int64_t w = 0; w < Cw; ++w)
                offs[(ky * a->KW + kx) * Cw + w] = (ky * a->dh * a->Wp + kx * a->dw) * PW + w;
    for (int64_t t = t0; t < t1; ++t) {
        int64_t r = t;
        const int64_t obp = r % OBP; r /= OBP;
        const int64_t g = r % a->G; r /= a->G;
        const int64_t oy = r % a->Ho;
        const int64_t n = r / a->Ho;
        const int64_t ob = obp * BNN_BLOCKS;
        if (BNN_BLOCKS == 2 && ob + 1 < a->OBg)
            bconv_tiles<BNN_TILE, BNN_BLOCKS>(a, offs, n, oy, g, ob, rowbuf, tmp);
        else
            for (int64_t b = ob; b < a->OBg && b < ob + BNN_BLOCKS; ++b)
                bconv_tiles<BNN_TILE, 1>(a, offs, n, oy, g, b, rowbuf, tmp);
    }
    if (offs != small) free(offs);
    free(rowbuf);
#if defined(BNN_AVX_TRANSPOSE8)
    _mm_sfence();  /* non-temporal stores are weakly ordered: make them visible before the join */
#endif
}

/* nw whole words from 64 * nw floats; whether any float equals thr (a tie). BNN_PACK_WORDS: the
 * policy has a run-long version of its own. */
static inline bool pack_words(const float* x, int64_t nw, float thr, uint64_t* out) {
#if defined(BNN_PACK_WORDS)
    return P::pack_words(x, nw, thr, out);
#else
    uint64_t any = 0;
    for (int64_t k = 0; k < nw; ++k) {
        uint64_t eq = 0;
        out[k] = P::pack_word(x + 64 * k, 64, thr, &eq);
        any |= eq;
    }
    return any != 0;
#endif
}

static inline void record_ties(const PackArgs* a, uint64_t eq, int64_t n, int64_t y, int64_t x, int64_t c0) {
    while (eq) {  /* exact ties are rare: record them for the convs' fix-up */
        const int bit = __builtin_ctzll(eq);
        eq &= eq - 1;
        const int64_t slot = __atomic_fetch_add(a->ties_count, 1, __ATOMIC_RELAXED);
        if (slot < a->ties_cap) {
            int32_t* row = a->ties + 4 * slot;
            row[0] = (int32_t)n; row[1] = (int32_t)y; row[2] = (int32_t)x; row[3] = (int32_t)(c0 + bit);
        }
    }
}

#if defined(BNN_AVX_TRANSPOSE8)
/* One word of P consecutive pixels of a sample (whole rows, contiguous in each channel plane):
 * channels c0 .. c0+nb-1 (nb <= 64), the first at x[at0], planes `plane` floats apart. Each
 * channel's P values are read in one contiguous sweep (reading many planes at the same offset at
 * once defeats the prefetchers and, with planes a multiple of 4 KiB apart, thrashes L1) and OR
 * its bit into the pixels' low (channels 0-31) or high halves, 8 pixels per compare. lo, hi:
 * scratch of P values each. Returns false, with bits unspecified, when an input equals the
 * threshold (a tie: the caller's scalar loop records it). */
static inline bool pack_word_nchw_avx(const PackArgs* a, int64_t at0, int64_t plane, int64_t nb, int64_t P,
                                      float th, uint32_t* lo, uint32_t* hi, uint64_t* bits) {
    const int64_t Pv = P / 8 * 8;
    const __m256 t = _mm256_set1_ps(th);
    __m256 eq = _mm256_setzero_ps();
    bool eq_tail = false;
    memset(lo, 0, (size_t)P * sizeof(uint32_t));
    memset(hi, 0, (size_t)P * sizeof(uint32_t));
    for (int64_t c = 0; c < nb; ++c) {
        const float* src = a->x + BNN_AT("pack input", at0 + c * plane, P, a->x_len);
        uint32_t* acc = c < 32 ? lo : hi;
        const uint32_t b = 1u << (c & 31);
        const __m256i bit = _mm256_set1_epi32((int)b);
        for (int64_t p = 0; p < Pv; p += 8) {
            const __m256 v = _mm256_loadu_ps(src + p);
            const __m256i m = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(v, t, _CMP_LT_OQ)), bit);
            _mm256_storeu_si256((__m256i*)(acc + p), _mm256_or_si256(_mm256_loadu_si256((const __m256i*)(acc + p)), m));
            eq = _mm256_or_ps(eq, _mm256_cmp_ps(v, t, _CMP_EQ_OQ));
        }
        for (int64_t p = Pv; p < P; ++p) {
            acc[p] |= src[p] < th ? b : 0u;
            eq_tail |= src[p] == th;
        }
    }
    if (eq_tail || _mm256_movemask_ps(eq)) return false;
    for (int64_t p = 0; p < P; ++p) bits[p] = (uint64_t)lo[p] | (uint64_t)hi[p] << 32;
    return true;
}
#endif

/* NCHW input: blocks of whole rows of one sample (up to 2048 pixels, contiguous in every channel
 * plane), one channel at a time, OR-ing its bit into the block's words; with AVX, 8 pixels per
 * compare. */
static void pack_run_nchw(const PackArgs* a, const float* thr, int64_t r0, int64_t r1) {
    const int64_t Hp = a->H + 2 * a->pad_h, Wp = a->W + 2 * a->pad_w, PW = a->G * a->Cw, W = a->W;
    const int64_t Rmax = W >= 2048 ? 1 : 2048 / W, Pmax = Rmax * W;
    /* bits and eqs: Pmax words each; lo and hi: Pmax uint32 each */
    uint64_t* bits = (uint64_t*)malloc((size_t)Pmax * (2 * sizeof(uint64_t) + 2 * sizeof(uint32_t)));
    if (!bits) return;
    uint64_t* eqs = bits + Pmax;
    uint32_t* lo = (uint32_t*)(eqs + Pmax);
    uint32_t* hi = lo + Pmax;
    (void)lo; (void)hi;
    for (int64_t r = r0; r < r1;) {
        const int64_t n = r / a->H, y0 = r % a->H;
        int64_t R = a->H - y0;
        if (R > Rmax) R = Rmax;
        if (R > r1 - r) R = r1 - r;
        const int64_t P = R * W;
        const float th = thr[n];
        for (int64_t g = 0; g < a->G; ++g) {
            for (int64_t w = 0; w < a->Cw; ++w) {
                int64_t nb = a->Cg - 64 * w;
                if (nb > 64) nb = 64;
                const int64_t c0 = g * a->Cg + 64 * w;
                const int64_t at0 = ((n * a->C + c0) * a->H + y0) * W;
                bool done = false;
#if defined(BNN_AVX_TRANSPOSE8)
                done = pack_word_nchw_avx(a, at0, a->H * W, nb, P, th, lo, hi, bits);
#endif
                uint64_t any_eq = 0;
                if (!done) {
                    for (int64_t p = 0; p < P; ++p) bits[p] = eqs[p] = 0;
                    for (int64_t c = 0; c < nb; ++c) {
                        const float* src = a->x + BNN_AT("pack input", at0 + c * a->H * W, P, a->x_len);
                        for (int64_t p = 0; p < P; ++p) {
                            bits[p] |= (uint64_t)(src[p] < th) << c;
                            eqs[p] |= (uint64_t)(src[p] == th) << c;
                        }
                    }
                    for (int64_t p = 0; p < P; ++p) any_eq |= eqs[p];
                }
                for (int64_t dy = 0; dy < R; ++dy) {
                    const int64_t oi = ((n * Hp + y0 + dy + a->pad_h) * Wp + a->pad_w) * PW + g * a->Cw + w;
                    for (int64_t x = 0; x < W; ++x)
                        a->out[BNN_AT("pack output", oi + x * PW, 1, a->out_len)] = bits[dy * W + x];
                }
                if (any_eq)
                    for (int64_t p = 0; p < P; ++p) record_ties(a, eqs[p], n, y0 + p / W, p % W, c0);
            }
        }
        r += R;
    }
    free(bits);
}

static void pack_run(const PackArgs* a, const float* thr, int64_t r0, int64_t r1) {
    if (a->nchw) {
        pack_run_nchw(a, thr, r0, r1);
        return;
    }
    /* *a through locals: with -fno-strict-aliasing each word stored could change it */
    const int64_t H = a->H, W = a->W, C = a->C, G = a->G, Cg = a->Cg, Cw = a->Cw, pad_h = a->pad_h, pad_w = a->pad_w;
    const int64_t Hp = H + 2 * pad_h, Wp = W + 2 * pad_w, PW = G * Cw, x_len = a->x_len, out_len = a->out_len;
    (void)x_len; (void)out_len;  /* read by the bounds checks of debug builds only */
    const float* const x_in = a->x;
    uint64_t* const out = a->out;
    if (Cg % 64 == 0) {
        /* whole words only: a pixel's C floats are its PW words in order, and a row of the input
         * is one run of W * PW words; ties, rare, are looked for once a row, then word by word */
        const int64_t row_words = W * PW;
        for (int64_t r = r0; r < r1; ++r) {
            const int64_t n = r / H, y = r % H;
            const float* src = x_in + BNN_AT("pack input", r * W * C, W * C, x_len);
            uint64_t* dst = out + BNN_AT("pack output", ((n * Hp + y + pad_h) * Wp + pad_w) * PW, row_words, out_len);
            if (!pack_words(src, row_words, thr[n], dst)) continue;
            for (int64_t k = 0; k < row_words; ++k) {
                uint64_t eq = 0;
                P::pack_word(src + 64 * k, 64, thr[n], &eq);
                if (eq) record_ties(a, eq, n, y, k / PW, 64 * (k % PW));
            }
        }
        return;
    }
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / H, y = r % H;
        const float th = thr[n];
        for (int64_t x = 0; x < W; ++x) {
            const int64_t xi = ((n * H + y) * W + x) * C;
            const int64_t oi = ((n * Hp + y + pad_h) * Wp + x + pad_w) * PW;
            for (int64_t g = 0; g < G; ++g) {
                for (int64_t w = 0; w < Cw; ++w) {
                    int64_t nb = Cg - 64 * w;
                    if (nb > 64) nb = 64;
                    const int64_t c0 = g * Cg + 64 * w;
                    const float* src = x_in + BNN_AT("pack input", xi + c0, nb, x_len);
                    uint64_t eq = 0;
                    out[BNN_AT("pack output", oi + g * Cw + w, 1, out_len)] = P::pack_word(src, (int)nb, th, &eq);
                    if (eq) record_ties(a, eq, n, y, x, c0);
                }
            }
        }
    }
}

}  // namespace

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

namespace {

typedef BNN_POLICY P;

static const int32_t kZeroCorr[8] = {0, 0, 0, 0, 0, 0, 0, 0};

#ifndef BNN_HAVE_TRANSPOSE8
/* out[j][t] = in[t][j]: 8 pixels x 8 channels to 8 channels x 8 pixels (NCHW stores) */
static inline void transpose8(const float (*in)[8], float (*out)[8]) {
    for (int t = 0; t < 8; ++t)
        for (int j = 0; j < 8; ++j) out[j][t] = in[t][j];
}
#endif

/* The zero-padding correction of output pixel (oy, x) for block blk: padded positions hold +1 bits,
 * subtract what each of them added. Returns kZeroCorr for a pixel whose window lies inside. */
static inline const int32_t* border_corr(const BConvArgs* a, int64_t oy, int64_t x, int64_t blk, bool rows_ok,
                                         int32_t* csum) {
    const int64_t K = a->KH * a->KW;
    const int64_t ix0 = x * a->sw - a->pw;
    if (rows_ok && ix0 >= 0 && ix0 + (a->KW - 1) * a->dw < a->W) return kZeroCorr;
    for (int j = 0; j < 8; ++j) csum[j] = 0;
    const int64_t iy0 = oy * a->sh - a->ph;
    for (int64_t ky = 0; ky < a->KH; ++ky) {
        const int64_t iy = iy0 + ky * a->dh;
        const bool ry = iy >= 0 && iy < a->H;
        for (int64_t kx = 0; kx < a->KW; ++kx) {
            const int64_t ix = ix0 + kx * a->dw;
            if (ry && ix >= 0 && ix < a->W) continue;
            const int64_t ci = BNN_AT("bconv corrections", (blk * K + ky * a->KW + kx) * 8, 8, a->corr_len);
            for (int j = 0; j < 8; ++j) csum[j] += a->corr[ci + j];
        }
    }
    return csum;
}

/* T output pixels (ox ... ox+T-1 of row oy) by NB blocks of 8 output channels (ob, ob+1, ...).
 * offs[i], i = k*Cw + w: word offset of (kernel position k, word w) from a pixel's first word. */
template <int T, int NB>
static inline void bconv_tile(const BConvArgs* a, const int64_t* offs, int64_t n, int64_t oy, int64_t ox,
                              int64_t g, int64_t ob, bool rows_ok) {
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
    const int64_t ixa = ox * a->sw - a->pw, ixb = (ox + T - 1) * a->sw - a->pw + (a->KW - 1) * a->dw;
    const bool interior = rows_ok && ixa >= 0 && ixb < a->W;
    const int64_t O = a->G * a->Og;
    const int32_t kc = (int32_t)(K * a->Cg);
    if (interior && !a->out_nchw) {  /* the common case, kept branch-free: contiguous NHWC stores */
        for (int b = 0; b < NB; ++b) {
            int nch = (int)(a->Og - (ob + b) * 8);
            if (nch > 8) nch = 8;
            const int64_t sb = BNN_AT("bconv scale", (blk + b) * 8, 8, a->sb_len);
            const int64_t o0 = ((n * a->Ho + oy) * a->Wo + ox) * O + g * a->Og + (ob + b) * 8;
            float* out = a->out + BNN_AT("bconv output", o0, (T - 1) * O + nch, a->out_len);
            for (int t = 0; t < T; ++t) P::epilogue(acc[b][t], kZeroCorr, kc, a->pre + sb, a->scale + sb, a->bias + sb, out + t * O, nch);
        }
        return;
    }
    int32_t csum[8];
    for (int b = 0; b < NB; ++b) {
        int nch = (int)(a->Og - (ob + b) * 8);
        if (nch > 8) nch = 8;
        const int64_t sb = BNN_AT("bconv scale", (blk + b) * 8, 8, a->sb_len);
        const int64_t ch0 = g * a->Og + (ob + b) * 8;
        if (!a->out_nchw) {  /* NHWC: each pixel's 8 channels are contiguous */
            for (int t = 0; t < T; ++t) {
                const int32_t* corr = interior ? kZeroCorr : border_corr(a, oy, ox + t, blk + b, rows_ok, csum);
                const int64_t oi = BNN_AT("bconv output", ((n * a->Ho + oy) * a->Wo + ox + t) * O + ch0, nch, a->out_len);
                P::epilogue(acc[b][t], corr, kc, a->pre + sb, a->scale + sb, a->bias + sb, a->out + oi, nch);
            }
            continue;
        }
        /* NCHW: through a T x 8 buffer, transposed, then T contiguous values per channel */
        float tmp[T][8], col[8][8];
        for (int t = 0; t < T; ++t) {
            const int32_t* corr = interior ? kZeroCorr : border_corr(a, oy, ox + t, blk + b, rows_ok, csum);
            P::epilogue(acc[b][t], corr, kc, a->pre + sb, a->scale + sb, a->bias + sb, tmp[t], nch);
        }
        if (T == 8) transpose8((const float (*)[8])tmp, col);
        for (int j = 0; j < nch; ++j) {
            float* out = a->out + BNN_AT("bconv output", bconv_out_index(a, n, ch0 + j, oy, ox), T, a->out_len);
            if (T == 8)
                memcpy(out, col[j], 8 * sizeof(float));
            else
                for (int t = 0; t < T; ++t) out[t] = tmp[t][j];
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
                               int64_t ob, bool rows_ok) {
    int64_t ox = 0;
    for (; ox + T <= a->Wo; ox += T) bconv_tile<T, NB>(a, offs, n, oy, ox, g, ob, rows_ok);
    if (T > 8)
        for (; ox + 8 <= a->Wo; ox += 8) bconv_tile<(T > 8 ? 8 : T), NB>(a, offs, n, oy, ox, g, ob, rows_ok);
    switch (a->Wo - ox) {  /* the remainder as one tile */
        case 0: break;
        case 1: bconv_tile<1, NB>(a, offs, n, oy, ox, g, ob, rows_ok); break;
        case 2: bconv_tile<2, NB>(a, offs, n, oy, ox, g, ob, rows_ok); break;
        case 3: bconv_tile<3, NB>(a, offs, n, oy, ox, g, ob, rows_ok); break;
        case 4: bconv_tile<4, NB>(a, offs, n, oy, ox, g, ob, rows_ok); break;
        case 5: bconv_tile<5, NB>(a, offs, n, oy, ox, g, ob, rows_ok); break;
        case 6: bconv_tile<6, NB>(a, offs, n, oy, ox, g, ob, rows_ok); break;
        default: bconv_tile<7, NB>(a, offs, n, oy, ox, g, ob, rows_ok); break;
    }
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
    if (!offs) return;
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
        const int64_t iy0 = oy * a->sh - a->ph;
        const bool rows_ok = iy0 >= 0 && iy0 + (a->KH - 1) * a->dh < a->H;
        const int64_t ob = obp * BNN_BLOCKS;
        if (BNN_BLOCKS == 2 && ob + 1 < a->OBg)
            bconv_tiles<BNN_TILE, BNN_BLOCKS>(a, offs, n, oy, g, ob, rows_ok);
        else
            for (int64_t b = ob; b < a->OBg && b < ob + BNN_BLOCKS; ++b)
                bconv_tiles<BNN_TILE, 1>(a, offs, n, oy, g, b, rows_ok);
    }
    if (offs != small) free(offs);
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

/* NCHW input: one channel row at a time (contiguous reads), OR-ing its bit into the row's words. */
static void pack_run_nchw(const PackArgs* a, const float* thr, int64_t r0, int64_t r1) {
    const int64_t Hp = a->H + 2 * a->pad_h, Wp = a->W + 2 * a->pad_w, PW = a->G * a->Cw;
    uint64_t small[2 * 512];
    uint64_t* bits = a->W <= 512 ? small : (uint64_t*)malloc((size_t)(2 * a->W) * sizeof(uint64_t));
    if (!bits) return;
    uint64_t* eqs = bits + a->W;
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / a->H, y = r % a->H;
        const float th = thr[n];
        for (int64_t g = 0; g < a->G; ++g) {
            for (int64_t w = 0; w < a->Cw; ++w) {
                int64_t nb = a->Cg - 64 * w;
                if (nb > 64) nb = 64;
                const int64_t c0 = g * a->Cg + 64 * w;
                uint64_t any_eq = 0;
                for (int64_t x = 0; x < a->W; ++x) bits[x] = eqs[x] = 0;
                for (int64_t c = 0; c < nb; ++c) {
                    const float* src = a->x + BNN_AT("pack input", ((n * a->C + c0 + c) * a->H + y) * a->W, a->W, a->x_len);
                    for (int64_t x = 0; x < a->W; ++x) {
                        bits[x] |= (uint64_t)(src[x] < th) << c;
                        eqs[x] |= (uint64_t)(src[x] == th) << c;
                    }
                }
                const int64_t oi = ((n * Hp + y + a->pad_h) * Wp + a->pad_w) * PW + g * a->Cw + w;
                for (int64_t x = 0; x < a->W; ++x) {
                    a->out[BNN_AT("pack output", oi + x * PW, 1, a->out_len)] = bits[x];
                    any_eq |= eqs[x];
                }
                if (any_eq)
                    for (int64_t x = 0; x < a->W; ++x) record_ties(a, eqs[x], n, y, x, c0);
            }
        }
    }
    if (bits != small) free(bits);
}

static void pack_run(const PackArgs* a, const float* thr, int64_t r0, int64_t r1) {
    if (a->nchw) {
        pack_run_nchw(a, thr, r0, r1);
        return;
    }
    const int64_t Hp = a->H + 2 * a->pad_h, Wp = a->W + 2 * a->pad_w, PW = a->G * a->Cw;
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / a->H, y = r % a->H;
        const float th = thr[n];
        for (int64_t x = 0; x < a->W; ++x) {
            const int64_t xi = ((n * a->H + y) * a->W + x) * a->C;
            const int64_t oi = ((n * Hp + y + a->pad_h) * Wp + x + a->pad_w) * PW;
            for (int64_t g = 0; g < a->G; ++g) {
                for (int64_t w = 0; w < a->Cw; ++w) {
                    int64_t nb = a->Cg - 64 * w;
                    if (nb > 64) nb = 64;
                    const int64_t c0 = g * a->Cg + 64 * w;
                    const float* src = a->x + BNN_AT("pack input", xi + c0, nb, a->x_len);
                    uint64_t eq = 0;
                    a->out[BNN_AT("pack output", oi + g * a->Cw + w, 1, a->out_len)] = P::pack_word(src, (int)nb, th, &eq);
                    record_ties(a, eq, n, y, x, c0);
                }
            }
        }
    }
}

}  // namespace

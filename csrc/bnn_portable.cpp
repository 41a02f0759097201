/* Portable kernels: plain C++, no instruction-set extensions assumed. */
#include <math.h>
#include "bnn_kernels.h"

namespace {

static inline uint64_t popcount64(uint64_t x) {
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (x * 0x0101010101010101ULL) >> 56;
}

struct PortablePolicy {
    struct acc_t { uint64_t v[8]; };
    struct w_t { uint64_t v[8]; };
    static inline acc_t zero() { acc_t r; for (int j = 0; j < 8; ++j) r.v[j] = 0; return r; }
    static inline w_t loadw(const uint64_t* p) { w_t r; for (int j = 0; j < 8; ++j) r.v[j] = p[j]; return r; }
    static inline acc_t step(acc_t acc, const w_t& w, uint64_t a) {
        for (int j = 0; j < 8; ++j) acc.v[j] += popcount64(w.v[j] ^ a);
        return acc;
    }
    static inline void epilogue(const acc_t& acc, const int32_t* corr8, int32_t kc, const float* pre8,
                                const float* scale8, const float* bias8, float* out, int nch) {
        for (int j = 0; j < nch; ++j) {
            const int32_t v = kc - 2 * (int32_t)acc.v[j] - corr8[j];
            const float y = (float)v * pre8[j];
            out[j] = fmaf(y, scale8[j], bias8[j]);
        }
    }
    static inline uint64_t pack_word(const float* x, int nb, float thr, uint64_t* eq) {
        uint64_t w = 0, e = 0;
        for (int i = 0; i < nb; ++i) {
            w |= (uint64_t)(x[i] < thr) << i;
            e |= (uint64_t)(x[i] == thr) << i;
        }
        *eq = e;
        return w;
    }
};

}  // namespace

#define BNN_POLICY PortablePolicy
#define BNN_TILE 4
#include "bnn_impl.h"

extern "C" {

int64_t bconv_num_tasks_portable(const BConvArgs* a) { return bconv_task_count(a); }

void bconv_tasks_portable(const BConvArgs* a, int64_t t0, int64_t t1) { bconv_run(a, t0, t1); }

void bconv_fix_ties(const BConvArgs* a, int64_t o0, int64_t o1) {
    const int64_t K = a->KH * a->KW;
    for (int64_t z = 0; z < a->nties; ++z) {
        const int32_t* row = a->ties + 4 * z;
        const int64_t n = row[0], y = row[1], x = row[2], c = row[3];
        if (n < 0 || n >= a->N || y < 0 || y >= a->H || x < 0 || x >= a->W || c < 0 || c >= a->G * a->Cg) continue;
        const int64_t g = c / a->Cg, cl = c % a->Cg, w = cl / 64, bit = cl % 64;
        for (int64_t ky = 0; ky < a->KH; ++ky) {
            const int64_t ny = y + a->ph - ky * a->dh;  /* = oy * sh for the output that reads this tap */
            if (ny < 0 || ny % a->sh) continue;
            const int64_t oy = ny / a->sh;
            if (oy >= a->Ho) continue;
            for (int64_t kx = 0; kx < a->KW; ++kx) {
                const int64_t nx = x + a->pw - kx * a->dw;
                if (nx < 0 || nx % a->sw) continue;
                const int64_t ox = nx / a->sw;
                if (ox >= a->Wo) continue;
                const int64_t k = ky * a->KW + kx;
                for (int64_t ol = o0; ol < o1 && ol < a->Og; ++ol) {
                    const int64_t blk = g * a->OBg + ol / 8, j = ol % 8;
                    const uint64_t word = a->wk[BNN_AT("tie weights", ((blk * K + k) * a->Cw + w) * 8 + j, 1, a->wk_len)];
                    const float sw = ((word >> bit) & 1) ? -1.0f : 1.0f;
                    a->out[BNN_AT("tie output", bconv_out_index(a, n, g * a->Og + ol, oy, ox), 1, a->out_len)] -=
                        a->scale[BNN_AT("tie scale", blk * 8 + j, 1, a->sb_len)] * sw;
                }
            }
        }
    }
}

void pack_rows_portable(const PackArgs* a, const float* thr, int64_t r0, int64_t r1) { pack_run(a, thr, r0, r1); }

/* 16 lanes summed in double, lane l taking x[16*i + l]; the AVX-512 version keeps this order. */
double sample_sum_portable(const float* x, int64_t n) {
    double lanes[16];
    for (int l = 0; l < 16; ++l) lanes[l] = 0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; ++l) lanes[l] += (double)x[i + l];
    double s = 0;
    for (int l = 0; l < 16; ++l) s += lanes[l];
    for (; i < n; ++i) s += x[i];
    return s;
}

}

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

#define BNN_TORCH_SUM_NAME torch_sum_portable
#include "bnn_torch_sum.h"

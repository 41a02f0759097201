/* AVX2 kernels: byte-wise popcount by nibble lookup (vpshufb), summed with vpsadbw. */
#include <immintrin.h>
#include "bnn_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,popcnt")

namespace {

struct Avx2Policy {
    struct acc_t { __m256i lo, hi; };
    struct w_t { __m256i lo, hi; };
    static inline __m256i popcnt_epi64(__m256i x) {
        const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                             0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
        const __m256i low = _mm256_set1_epi8(0x0f);
        const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(x, low));
        const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
        return _mm256_sad_epu8(_mm256_add_epi8(lo, hi), _mm256_setzero_si256());
    }
    static inline acc_t zero() { acc_t r; r.lo = _mm256_setzero_si256(); r.hi = r.lo; return r; }
    static inline w_t loadw(const uint64_t* p) {
        w_t r;
        r.lo = _mm256_loadu_si256((const __m256i*)p);
        r.hi = _mm256_loadu_si256((const __m256i*)(p + 4));
        return r;
    }
    static inline acc_t step(acc_t acc, const w_t& w, uint64_t a) {
        const __m256i av = _mm256_set1_epi64x((long long)a);
        acc.lo = _mm256_add_epi64(acc.lo, popcnt_epi64(_mm256_xor_si256(w.lo, av)));
        acc.hi = _mm256_add_epi64(acc.hi, popcnt_epi64(_mm256_xor_si256(w.hi, av)));
        return acc;
    }
    static inline void epilogue(const acc_t& acc, const int32_t* corr8, int32_t kc, const float* pre8,
                                const float* scale8, const float* bias8, float* out, int nch) {
        /* counts fit in 32 bits: gather the low halves of the 8 64-bit lanes */
        const __m256i idx = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
        const __m128i c0 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(acc.lo, idx));
        const __m128i c1 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(acc.hi, idx));
        const __m256i cnt = _mm256_inserti128_si256(_mm256_castsi128_si256(c0), c1, 1);
        const __m256i corr = _mm256_loadu_si256((const __m256i*)corr8);
        const __m256i v = _mm256_sub_epi32(_mm256_sub_epi32(_mm256_set1_epi32(kc), _mm256_add_epi32(cnt, cnt)), corr);
        const __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_loadu_ps(pre8));
        const __m256 r = _mm256_fmadd_ps(y, _mm256_loadu_ps(scale8), _mm256_loadu_ps(bias8));
        if (nch == 8) {
            _mm256_storeu_ps(out, r);
        } else {
            float tmp[8];
            _mm256_storeu_ps(tmp, r);
            for (int j = 0; j < nch; ++j) out[j] = tmp[j];
        }
    }
    static inline uint64_t pack_word(const float* x, int nb, float thr, uint64_t* eq) {
        uint64_t w = 0, e = 0;
        int i = 0;
        const __m256 t = _mm256_set1_ps(thr);
        for (; i + 8 <= nb; i += 8) {
            const __m256 v = _mm256_loadu_ps(x + i);
            w |= (uint64_t)(unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v, t, _CMP_LT_OQ)) << i;
            e |= (uint64_t)(unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v, t, _CMP_EQ_OQ)) << i;
        }
        for (; i < nb; ++i) {
            w |= (uint64_t)(x[i] < thr) << i;
            e |= (uint64_t)(x[i] == thr) << i;
        }
        *eq = e;
        return w;
    }
};

}  // namespace

#define BNN_AVX_TRANSPOSE8
#define BNN_POLICY Avx2Policy
/* the AVX-512 tile (8 pixels x 2 blocks): on a Zen 3 as fast as 4 x 1 or faster (2.2-2.3 vs
 * 2.5-2.6 ns a step), and it runs the AVX-512 build's template code on AVX2-only machines too */
#define BNN_TILE 8
#define BNN_BLOCKS 2
#include "bnn_impl.h"

extern "C" {
int64_t bconv_num_tasks_avx2(const BConvArgs* a) { return bconv_task_count(a); }
void bconv_tasks_avx2(const BConvArgs* a, int64_t t0, int64_t t1) { bconv_run(a, t0, t1); }
void pack_rows_avx2(const PackArgs* a, const float* thr, int64_t r0, int64_t r1) { pack_run(a, thr, r0, r1); }
}

#define BNN_TORCH_SUM_NAME torch_sum_avx2
#include "bnn_torch_sum.h"

#pragma GCC pop_options

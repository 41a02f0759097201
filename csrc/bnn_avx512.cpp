/* AVX-512 kernels: VPOPCNTQ (AVX512_VPOPCNTDQ) on 8 output channels at once, one broadcast
 * activation word per pixel; masked compares for packing. */
#include <immintrin.h>
#include "bnn_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512vpopcntdq,avx2,fma,popcnt")

namespace {

struct Avx512Policy {
    typedef __m512i acc_t;
    typedef __m512i w_t;
    static inline acc_t zero() { return _mm512_setzero_si512(); }
    static inline w_t loadw(const uint64_t* p) { return _mm512_loadu_si512((const void*)p); }
    static inline acc_t step(acc_t acc, w_t w, uint64_t a) {
        return _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(w, _mm512_set1_epi64((long long)a))));
    }
    static inline void epilogue(acc_t acc, const int32_t* corr8, int32_t kc, const float* pre8,
                                const float* scale8, const float* bias8, float* out, int nch) {
        const __m256i cnt = _mm512_cvtepi64_epi32(acc);
        const __m256i corr = _mm256_loadu_si256((const __m256i*)corr8);
        const __m256i v = _mm256_sub_epi32(_mm256_sub_epi32(_mm256_set1_epi32(kc), _mm256_add_epi32(cnt, cnt)), corr);
        const __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_loadu_ps(pre8));
        const __m256 r = _mm256_fmadd_ps(y, _mm256_loadu_ps(scale8), _mm256_loadu_ps(bias8));
        if (nch == 8)
            _mm256_storeu_ps(out, r);
        else
            _mm256_mask_storeu_ps(out, (__mmask8)((1u << nch) - 1u), r);
    }
    static inline void epilogue16(acc_t acc0, acc_t acc1, const int32_t* corr16, int32_t kc, const float* pre16,
                                  const float* scale16, const float* bias16, float* out) {
        const __m512i cnt = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(acc0)),
                                               _mm512_cvtepi64_epi32(acc1), 1);
        const __m512i v = _mm512_sub_epi32(_mm512_sub_epi32(_mm512_set1_epi32(kc), _mm512_add_epi32(cnt, cnt)),
                                           _mm512_loadu_si512((const void*)corr16));
        const __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_loadu_ps(pre16));
        _mm512_storeu_ps(out, _mm512_fmadd_ps(y, _mm512_loadu_ps(scale16), _mm512_loadu_ps(bias16)));
    }
    /* see pack_words in bnn_impl.h: the tie compares joined over the whole run */
    static inline bool pack_words(const float* x, int64_t nw, float thr, uint64_t* out) {
        const __m512 t = _mm512_set1_ps(thr);
        const __m512i tb = _mm512_castps_si512(t), magnitude = _mm512_set1_epi32(0x7fffffff);
        __m512i closest = magnitude;  /* min over the run of (x ^ t) & 0x7fffffff: 0 for a tie (or x == -t) */
        for (int64_t k = 0; k < nw; ++k, x += 64) {
            const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
            const __m512 v2 = _mm512_loadu_ps(x + 32), v3 = _mm512_loadu_ps(x + 48);
            const __mmask32 lo = _mm512_kunpackw(_mm512_cmp_ps_mask(v1, t, _CMP_LT_OQ), _mm512_cmp_ps_mask(v0, t, _CMP_LT_OQ));
            const __mmask32 hi = _mm512_kunpackw(_mm512_cmp_ps_mask(v3, t, _CMP_LT_OQ), _mm512_cmp_ps_mask(v2, t, _CMP_LT_OQ));
            const __m512i d01 = _mm512_min_epu32(_mm512_ternarylogic_epi32(_mm512_castps_si512(v0), tb, magnitude, 0x28),
                                                 _mm512_ternarylogic_epi32(_mm512_castps_si512(v1), tb, magnitude, 0x28));
            const __m512i d23 = _mm512_min_epu32(_mm512_ternarylogic_epi32(_mm512_castps_si512(v2), tb, magnitude, 0x28),
                                                 _mm512_ternarylogic_epi32(_mm512_castps_si512(v3), tb, magnitude, 0x28));
            closest = _mm512_min_epu32(closest, _mm512_min_epu32(d01, d23));
            out[k] = (uint64_t)_mm512_kunpackd(hi, lo);
        }
        return _mm512_testn_epi32_mask(closest, closest) != 0;
    }
    static inline uint64_t pack_word(const float* x, int nb, float thr, uint64_t* eq) {
        uint64_t w = 0, e = 0;
        const __m512 t = _mm512_set1_ps(thr);
        if (nb == 64) {  /* a whole word: four plain loads, the bits joined in mask registers */
            const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
            const __m512 v2 = _mm512_loadu_ps(x + 32), v3 = _mm512_loadu_ps(x + 48);
            const __mmask32 lo = _mm512_kunpackw(_mm512_cmp_ps_mask(v1, t, _CMP_LT_OQ), _mm512_cmp_ps_mask(v0, t, _CMP_LT_OQ));
            const __mmask32 hi = _mm512_kunpackw(_mm512_cmp_ps_mask(v3, t, _CMP_LT_OQ), _mm512_cmp_ps_mask(v2, t, _CMP_LT_OQ));
            const __mmask16 any_eq = _mm512_cmp_ps_mask(v0, t, _CMP_EQ_OQ) | _mm512_cmp_ps_mask(v1, t, _CMP_EQ_OQ) |
                                     _mm512_cmp_ps_mask(v2, t, _CMP_EQ_OQ) | _mm512_cmp_ps_mask(v3, t, _CMP_EQ_OQ);
            if (__builtin_expect(any_eq != 0, 0))  /* ties are rare: find them again, lane by lane */
                for (int i = 0; i < 64; i += 16)
                    e |= (uint64_t)_mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), t, _CMP_EQ_OQ) << i;
            *eq = e;
            return (uint64_t)_mm512_kunpackd(hi, lo);
        }
        for (int i = 0; i < nb; i += 16) {
            const int left = nb - i;
            const __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
            const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
            w |= (uint64_t)_mm512_mask_cmp_ps_mask(m, v, t, _CMP_LT_OQ) << i;
            e |= (uint64_t)_mm512_mask_cmp_ps_mask(m, v, t, _CMP_EQ_OQ) << i;
        }
        *eq = e;
        return w;
    }
};

}  // namespace

#define BNN_AVX_TRANSPOSE8
#define BNN_EPILOGUE16
#define BNN_PACK_WORDS
#define BNN_POLICY Avx512Policy
#define BNN_TILE 8
#define BNN_BLOCKS 2
#include "bnn_impl.h"

extern "C" {
int64_t bconv_num_tasks_avx512(const BConvArgs* a) { return bconv_task_count(a); }
void bconv_tasks_avx512(const BConvArgs* a, int64_t t0, int64_t t1) { bconv_run(a, t0, t1); }
void pack_rows_avx512(const PackArgs* a, const float* thr, int64_t r0, int64_t r1) { pack_run(a, thr, r0, r1); }

double sample_sum_avx512(const float* x, int64_t n) {
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm256_loadu_ps(x + i)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_loadu_ps(x + i + 8)));
    }
    /* same lane order and final reduction as sample_sum_portable: results are bit-identical */
    double lanes[16];
    _mm512_storeu_pd(lanes, s0);
    _mm512_storeu_pd(lanes + 8, s1);
    double s = 0;
    for (int l = 0; l < 16; ++l) s += lanes[l];
    for (; i < n; ++i) s += x[i];
    return s;
}
}

#define BNN_TORCH_SUM_NAME torch_sum_avx512
#include "bnn_torch_sum.h"

#pragma GCC pop_options

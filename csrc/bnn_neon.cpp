/* NEON kernels (AArch64): byte-wise popcount (vcntq_u8) widened pairwise into 32-bit lanes
 * (vpaddlq_u8, vpadalq_u16), two lanes a weight word, joined by one vpaddq_u32 per 4 channels in
 * the epilogue; sign packing by compare masks narrowed to bytes and summed pairwise into bits.
 *
 * The results are those of bnn_portable.cpp to the bit: the dot products are exact integers, the
 * epilogue's fused multiply-add (vfmaq_f32, FMADD) rounds once as fmaf does, and the sums keep the
 * portable lane orders. Compiled only for AArch64, where NEON is part of the base ISA. */
#if !defined(__aarch64__)
#error "bnn_neon.cpp is for AArch64 only"
#endif

#include <arm_neon.h>
#include "bnn_kernels.h"

namespace {

struct NeonPolicy {
    /* c[k]: words 2k and 2k+1 (channels 2k, 2k+1), two 32-bit halves of each word's count; 32-bit
     * lanes cannot overflow for any kernel a conv can have (2^26 steps) */
    struct acc_t { uint32x4_t c[4]; };
    struct w_t { uint64x2_t v[4]; };
    static inline acc_t zero() {
        acc_t r;
        for (int k = 0; k < 4; ++k) r.c[k] = vdupq_n_u32(0);
        return r;
    }
    static inline w_t loadw(const uint64_t* p) {
        w_t r;
        for (int k = 0; k < 4; ++k) r.v[k] = vld1q_u64(p + 2 * k);
        return r;
    }
    static inline acc_t step(acc_t acc, const w_t& w, uint64_t a) {
        const uint64x2_t av = vdupq_n_u64(a);
        for (int k = 0; k < 4; ++k) {
            const uint8x16_t bits = vcntq_u8(vreinterpretq_u8_u64(veorq_u64(w.v[k], av)));
            acc.c[k] = vpadalq_u16(acc.c[k], vpaddlq_u8(bits));
        }
        return acc;
    }
    /* 4 channels: (kc - 2*count - corr) * pre, then fma(., scale, bias) */
    static inline float32x4_t finish4(uint32x4_t halves01, uint32x4_t halves23, const int32_t* corr4, int32_t kc,
                                      const float* pre4, const float* scale4, const float* bias4) {
        const int32x4_t cnt = vreinterpretq_s32_u32(vpaddq_u32(halves01, halves23));
        const int32x4_t v = vsubq_s32(vsubq_s32(vdupq_n_s32(kc), vaddq_s32(cnt, cnt)), vld1q_s32(corr4));
        const float32x4_t y = vmulq_f32(vcvtq_f32_s32(v), vld1q_f32(pre4));
        return vfmaq_f32(vld1q_f32(bias4), y, vld1q_f32(scale4));
    }
    static inline void epilogue(const acc_t& acc, const int32_t* corr8, int32_t kc, const float* pre8,
                                const float* scale8, const float* bias8, float* out, int nch) {
        const float32x4_t lo = finish4(acc.c[0], acc.c[1], corr8, kc, pre8, scale8, bias8);
        const float32x4_t hi = finish4(acc.c[2], acc.c[3], corr8 + 4, kc, pre8 + 4, scale8 + 4, bias8 + 4);
        if (nch == 8) {
            vst1q_f32(out, lo);
            vst1q_f32(out + 4, hi);
        } else {
            float tmp[8];
            vst1q_f32(tmp, lo);
            vst1q_f32(tmp + 4, hi);
            for (int j = 0; j < nch; ++j) out[j] = tmp[j];
        }
    }
    /* 16 floats' compare masks as 16 bytes of 0xff / 0 */
    static inline uint8x16_t mask16(const float* x, float32x4_t t, bool eq) {
        uint32x4_t m[4];
        for (int i = 0; i < 4; ++i) {
            const float32x4_t v = vld1q_f32(x + 4 * i);
            m[i] = eq ? vceqq_f32(v, t) : vcltq_f32(v, t);
        }
        const uint16x8_t m01 = vcombine_u16(vmovn_u32(m[0]), vmovn_u32(m[1]));
        const uint16x8_t m23 = vcombine_u16(vmovn_u32(m[2]), vmovn_u32(m[3]));
        return vcombine_u8(vmovn_u16(m01), vmovn_u16(m23));
    }
    /* 64 floats' masks to one word, bit i = float i: each byte weighted by 1 << (i % 8), then three
     * pairwise additions join 8 bytes into one */
    static inline uint64_t bits64(const float* x, float32x4_t t, bool eq) {
        static const uint8_t weights[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
        const uint8x16_t w = vld1q_u8(weights);
        const uint8x16_t b0 = vandq_u8(mask16(x, t, eq), w), b1 = vandq_u8(mask16(x + 16, t, eq), w);
        const uint8x16_t b2 = vandq_u8(mask16(x + 32, t, eq), w), b3 = vandq_u8(mask16(x + 48, t, eq), w);
        const uint8x16_t s = vpaddq_u8(vpaddq_u8(b0, b1), vpaddq_u8(b2, b3));
        return vgetq_lane_u64(vreinterpretq_u64_u8(vpaddq_u8(s, s)), 0);
    }
    static inline uint64_t pack_word(const float* x, int nb, float thr, uint64_t* eq) {
        const float32x4_t t = vdupq_n_f32(thr);
        if (nb == 64) {
            /* ties are rare: one joined equality test, the tie bits only when it finds one */
            uint32x4_t any = vdupq_n_u32(0);
            for (int i = 0; i < 64; i += 4) any = vorrq_u32(any, vceqq_f32(vld1q_f32(x + i), t));
            *eq = vmaxvq_u32(any) ? bits64(x, t, true) : 0;
            return bits64(x, t, false);
        }
        static const uint32_t lane_bits[4] = {1, 2, 4, 8};
        const uint32x4_t lb = vld1q_u32(lane_bits);
        uint64_t w = 0, e = 0;
        int i = 0;
        for (; i + 4 <= nb; i += 4) {
            const float32x4_t v = vld1q_f32(x + i);
            w |= (uint64_t)vaddvq_u32(vandq_u32(vcltq_f32(v, t), lb)) << i;
            e |= (uint64_t)vaddvq_u32(vandq_u32(vceqq_f32(v, t), lb)) << i;
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

#define BNN_POLICY NeonPolicy
/* 4 pixels x 1 block: 16 accumulator and 4 weight registers of the 32 */
#define BNN_TILE 4
#define BNN_BLOCKS 1
#include "bnn_impl.h"

extern "C" {
int64_t bconv_num_tasks_neon(const BConvArgs* a) { return bconv_task_count(a); }
void bconv_tasks_neon(const BConvArgs* a, int64_t t0, int64_t t1) { bconv_run(a, t0, t1); }
void pack_rows_neon(const PackArgs* a, const float* thr, int64_t r0, int64_t r1) { pack_run(a, thr, r0, r1); }

/* sample_sum_portable's 16 double lanes (lane l takes x[16*i + l]) in 8 registers of 2 */
double sample_sum_neon(const float* x, int64_t n) {
    float64x2_t s[8];
    for (int k = 0; k < 8; ++k) s[k] = vdupq_n_f64(0.0);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < 8; k += 2) {
            const float32x4_t v = vld1q_f32(x + i + 2 * k);
            s[k] = vaddq_f64(s[k], vcvt_f64_f32(vget_low_f32(v)));
            s[k + 1] = vaddq_f64(s[k + 1], vcvt_high_f64_f32(v));
        }
    double lanes[16];
    for (int k = 0; k < 8; ++k) vst1q_f64(lanes + 2 * k, s[k]);
    double total = 0;
    for (int l = 0; l < 16; ++l) total += lanes[l];
    for (; i < n; ++i) total += x[i];
    return total;
}
}

#define BNN_TORCH_SUM_NAME torch_sum_neon
#include "bnn_torch_sum.h"

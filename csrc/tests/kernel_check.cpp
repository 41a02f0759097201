/* Standalone check of the torch-free kernels (csrc/bnn_kernels.h): every instruction-set path this
 * build has and this CPU runs (portable; AVX2 and AVX-512 on x86-64; NEON on AArch64) against a
 * naive oracle computed from the unpacked signs, and against each other, bit for bit.
 *
 * Covered: sign packing (pack_rows_*: NHWC and NCHW input, groups, borders, ties), the binary
 * convolution (bconv_tasks_*: channel counts 3 to 512, groups, 1x1 and 3x3 kernels, strides,
 * padding, dilation, ties, residuals, PReLU and Hardtanh, NHWC and NCHW output, batch 1 and 3, the
 * tap-packed narrow-layer form, task ranges split as threads split them), and the two per-sample
 * sums (sample_sum_*, torch_sum_*) on lengths that reach every level of torch_sum's cascade.
 * The buffers are laid out as bnnkit/native/kernels.py's PackedConv and pack() lay them out.
 *
 * Build (x86-64):  g++ -O2 -std=c++17 -ffp-contract=off -Icsrc csrc/tests/kernel_check.cpp \
 *                      csrc/bnn_portable.cpp csrc/bnn_avx2.cpp csrc/bnn_avx512.cpp
 * Build (AArch64): aarch64-linux-gnu-g++ -O2 -static -std=c++17 -ffp-contract=off -Icsrc \
 *                      csrc/tests/kernel_check.cpp csrc/bnn_portable.cpp csrc/bnn_neon.cpp
 * (scripts/check_kernels_arm.sh does both and runs the second under qemu-aarch64.)
 * Usage: kernel_check [seed]. Prints one line per case; exits 1 on any difference. */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <array>
#include <string>
#include <vector>

#if defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

#include "bnn_kernels.h"

namespace {

struct Isa {
    const char* name;
    int64_t (*num_tasks)(const BConvArgs*);
    void (*tasks)(const BConvArgs*, int64_t, int64_t);
    void (*pack)(const PackArgs*, const float*, int64_t, int64_t);
    double (*sample_sum)(const float*, int64_t);
    float (*torch_sum)(const float*, int64_t);
};

std::vector<Isa> available_isas(std::vector<std::string>* skipped) {
    std::vector<Isa> isas;
    isas.push_back({"portable", bconv_num_tasks_portable, bconv_tasks_portable, pack_rows_portable,
                    sample_sum_portable, torch_sum_portable});
#if defined(__x86_64__)
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                        __builtin_cpu_supports("avx512vpopcntdq");
    /* the module has no AVX2 sample_sum: it uses the portable one */
    if (avx2) isas.push_back({"avx2", bconv_num_tasks_avx2, bconv_tasks_avx2, pack_rows_avx2, sample_sum_portable, torch_sum_avx2});
    else skipped->push_back("avx2");
    if (avx512)
        isas.push_back({"avx512", bconv_num_tasks_avx512, bconv_tasks_avx512, pack_rows_avx512, sample_sum_avx512,
                        torch_sum_avx512});
    else skipped->push_back("avx512");
#elif defined(__aarch64__)
    bool neon = true;
#if defined(__linux__)
    neon = (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0;
#endif
    if (neon) isas.push_back({"neon", bconv_num_tasks_neon, bconv_tasks_neon, pack_rows_neon, sample_sum_neon, torch_sum_neon});
    else skipped->push_back("neon");
#endif
    return isas;
}

/* splitmix64: the same cases on every machine for a given seed */
struct Rng {
    uint64_t s;
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }
    int64_t below(int64_t n) { return (int64_t)(next() % (uint64_t)n); }
    float uniform(float lo, float hi) { return lo + (hi - lo) * (float)((next() >> 40) * (1.0 / 16777216.0)); }
    bool chance(double p) { return (double)(next() >> 11) * (1.0 / 9007199254740992.0) < p; }
};

uint32_t bits_of(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}

int failures = 0;

/* a failure line, counted */
void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void fail(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("  FAIL ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    ++failures;
}

/* first differing float of two result buffers, bit for bit; true when equal */
bool same_floats(const std::vector<float>& got, const std::vector<float>& want, const char* isa, const char* what) {
    for (size_t i = 0; i < want.size(); ++i)
        if (bits_of(got[i]) != bits_of(want[i])) {
            fail("%s %s: element %zu is %.9g (0x%08x), expected %.9g (0x%08x)", isa, what, i, (double)got[i],
                 bits_of(got[i]), (double)want[i], bits_of(want[i]));
            return false;
        }
    return true;
}

/* ---- one input: floats, thresholds, signs, the oracle's packed words and ties ------------------ */
struct Input {
    int64_t N, H, W, C, G, Cg, Cw, bpad_h, bpad_w;
    bool nchw;                           /* x stored NCHW (else NHWC) */
    std::vector<float> x, thr;
    std::vector<int8_t> sign;            /* [N][H][W][C]: -1, 0 (tie) or +1 */
    std::vector<uint64_t> packed;        /* [N][Hp][Wp][G][Cw] */
    std::vector<std::array<int32_t, 4>> ties;  /* (n, y, x, c), sorted */
    int64_t Hp() const { return H + 2 * bpad_h; }
    int64_t Wp() const { return W + 2 * bpad_w; }
    int64_t xi(int64_t n, int64_t y, int64_t x_, int64_t c) const {
        return nchw ? ((n * C + c) * H + y) * W + x_ : ((n * H + y) * W + x_) * C + c;
    }
};

/* Random activations; centred: per-sample thresholds (torch_sum's mean of the sample), else 0;
 * about tie_rate of them set exactly to their threshold (0.0 or -0.0 when it is 0) */
Input make_input(Rng& rng, int64_t N, int64_t H, int64_t W, int64_t C, int64_t G, int64_t bpad_h, int64_t bpad_w,
                 bool nchw, bool centred, double tie_rate) {
    Input in{N, H, W, C, G, C / G, (C / G + 63) / 64, bpad_h, bpad_w, nchw, {}, {}, {}, {}, {}};
    const int64_t per = H * W * C;
    in.x.resize((size_t)(N * per));
    for (auto& v : in.x) v = rng.uniform(-1.5f, 1.8f);
    in.thr.assign((size_t)N, 0.0f);
    for (int64_t n = 0; n < N; ++n) {
        if (centred) in.thr[(size_t)n] = per >= 8 ? torch_sum_portable(&in.x[(size_t)(n * per)], per) / (float)per : 0.1f;
        for (int64_t i = 0; i < per; ++i)
            if (rng.chance(tie_rate))
                in.x[(size_t)(n * per + i)] = centred ? in.thr[(size_t)n] : (rng.chance(0.5) ? 0.0f : -0.0f);
    }
    in.sign.resize((size_t)(N * per));
    in.packed.assign((size_t)(N * in.Hp() * in.Wp() * G * in.Cw), 0);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t y = 0; y < H; ++y)
            for (int64_t x_ = 0; x_ < W; ++x_)
                for (int64_t c = 0; c < C; ++c) {
                    const float v = in.x[(size_t)in.xi(n, y, x_, c)], t = in.thr[(size_t)n];
                    const int8_t s = v < t ? -1 : v == t ? 0 : 1;
                    in.sign[(size_t)(((n * H + y) * W + x_) * C + c)] = s;
                    if (s == 0) in.ties.push_back({(int32_t)n, (int32_t)y, (int32_t)x_, (int32_t)c});
                    if (s < 0) {
                        const int64_t g = c / in.Cg, cl = c % in.Cg;
                        const int64_t wi = (((n * in.Hp() + y + bpad_h) * in.Wp() + x_ + bpad_w) * G + g) * in.Cw + cl / 64;
                        in.packed[(size_t)wi] |= (uint64_t)1 << (cl % 64);
                    }
                }
    std::sort(in.ties.begin(), in.ties.end());
    return in;
}

/* pack_rows of every ISA against the oracle's words and ties; the rows split in two calls sharing
 * one tie counter, as two threads would run them */
void check_pack(const Input& in, const std::vector<Isa>& isas) {
    const int64_t rows = in.N * in.H;
    for (const Isa& isa : isas) {
        std::vector<uint64_t> out(in.packed.size(), 0);
        const int64_t cap = (int64_t)in.ties.size() + 4;
        std::vector<int32_t> ties((size_t)(4 * cap), -1);
        int64_t count = 0;
        PackArgs a;
        a.x = in.x.data(); a.x_len = (int64_t)in.x.size();
        a.N = in.N; a.H = in.H; a.W = in.W; a.C = in.C;
        a.G = in.G; a.Cg = in.Cg; a.Cw = in.Cw; a.pad_h = in.bpad_h; a.pad_w = in.bpad_w;
        a.center = 2;
        a.out = out.data(); a.out_len = (int64_t)out.size();
        a.thr_out = NULL; a.thr_len = in.N; a.thr_in = in.thr.data();
        a.ties = ties.data(); a.ties_cap = cap; a.ties_count = &count;
        a.nchw = in.nchw ? 1 : 0;
        const int64_t mid = rows / 2;
        isa.pack(&a, in.thr.data(), 0, mid);
        isa.pack(&a, in.thr.data(), mid, rows);
        for (size_t i = 0; i < out.size(); ++i)
            if (out[i] != in.packed[i]) {
                fail("%s pack: word %zu is %016llx, expected %016llx", isa.name, i, (unsigned long long)out[i],
                     (unsigned long long)in.packed[i]);
                break;
            }
        std::vector<std::array<int32_t, 4>> got;
        for (int64_t z = 0; z < count && z < cap; ++z)
            got.push_back({ties[(size_t)(4 * z)], ties[(size_t)(4 * z + 1)], ties[(size_t)(4 * z + 2)], ties[(size_t)(4 * z + 3)]});
        std::sort(got.begin(), got.end());
        if (count != (int64_t)in.ties.size() || got != in.ties)
            fail("%s pack: %lld ties recorded, expected %zu (or other positions)", isa.name, (long long)count, in.ties.size());
    }
}

/* ---- one binary convolution -------------------------------------------------------------------- */
struct Conv {
    int64_t O, Og, OBg, KH, KW, sh, sw, ph, pw, dh, dw, Ho, Wo;
    bool out_nchw, taps;
    int64_t nonlin;                      /* 0 none, 1 PReLU, 2 Hardtanh */
    bool residual;
};

std::string describe(const Input& in, const Conv& cv, bool centred) {
    char buf[320];
    snprintf(buf, sizeof buf, "N=%lld C=%lld G=%lld O=%lld %lldx%lld s=%lld,%lld p=%lld,%lld d=%lld,%lld in=%lldx%lld "
             "bpad=%lld,%lld %s->%s %s ties=%zu%s%s%s",
             (long long)in.N, (long long)in.C, (long long)in.G, (long long)cv.O, (long long)cv.KH, (long long)cv.KW,
             (long long)cv.sh, (long long)cv.sw, (long long)cv.ph, (long long)cv.pw, (long long)cv.dh, (long long)cv.dw,
             (long long)in.H, (long long)in.W, (long long)in.bpad_h, (long long)in.bpad_w, in.nchw ? "nchw" : "nhwc",
             cv.out_nchw ? "nchw" : "nhwc", centred ? "centred" : "thr=0", in.ties.size(), cv.residual ? " +res" : "",
             cv.nonlin == 1 ? " prelu" : cv.nonlin == 2 ? " hardtanh" : "", cv.taps ? " taps" : "");
    return buf;
}

/* FNV-1a of a result buffer's bits: printed with each case, so that the runs on two machines
 * (x86-64 natively, AArch64 under qemu) can be compared line by line */
uint64_t fnv1a(const std::vector<float>& v) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (float f : v) {
        const uint32_t b = bits_of(f);
        for (int i = 0; i < 4; ++i) h = (h ^ ((b >> (8 * i)) & 0xff)) * 0x100000001b3ULL;
    }
    return h;
}

/* Returns the number of ISAs that matched; *hash gets the oracle's fnv1a. */
int check_bconv(Rng& rng, const Input& in, const Conv& cv, const std::vector<Isa>& isas, uint64_t* hash) {
    const int64_t N = in.N, H = in.H, W = in.W, G = in.G, Cg = in.Cg, Cw = in.Cw, C = in.C;
    const int64_t O = cv.O, Og = cv.Og, OBg = cv.OBg, KH = cv.KH, KW = cv.KW, K = KH * KW, Ho = cv.Ho, Wo = cv.Wo;
    /* weights: signs [O][Cg][K], their bits [O][K][Cw] (1 = -1) */
    std::vector<int8_t> ws((size_t)(O * Cg * K));
    for (auto& s : ws) s = rng.chance(0.5) ? -1 : 1;
    auto wsign = [&](int64_t o, int64_t c, int64_t k) { return ws[(size_t)((o * Cg + c) * K + k)]; };
    std::vector<uint64_t> wbits((size_t)(O * K * Cw), 0);
    for (int64_t o = 0; o < O; ++o)
        for (int64_t k = 0; k < K; ++k)
            for (int64_t c = 0; c < Cg; ++c)
                if (wsign(o, c, k) < 0) wbits[(size_t)((o * K + k) * Cw + c / 64)] |= (uint64_t)1 << (c % 64);
    /* kernel weights [G][OBg][K][Cw][8] and corrections [G][OBg][K][8]; zero in padding channels */
    std::vector<uint64_t> wk((size_t)(G * OBg * K * Cw * 8), 0);
    std::vector<int32_t> corr((size_t)(G * OBg * K * 8), 0);
    for (int64_t g = 0; g < G; ++g)
        for (int64_t j8 = 0; j8 < Og; ++j8) {
            const int64_t o = g * Og + j8, ob = j8 / 8, j = j8 % 8;
            for (int64_t k = 0; k < K; ++k) {
                int32_t neg = 0;
                for (int64_t w = 0; w < Cw; ++w) {
                    const uint64_t word = wbits[(size_t)((o * K + k) * Cw + w)];
                    wk[(size_t)(((((g * OBg + ob) * K + k) * Cw + w) * 8) + j)] = word;
                    neg += __builtin_popcountll(word);
                }
                corr[(size_t)(((g * OBg + ob) * K + k) * 8 + j)] = (int32_t)Cg - 2 * neg;
            }
        }
    /* border corrections: one class per output row and per column (the kernel only indexes the
     * table; PackedConv merges equal classes, which changes no entry a pixel reads) */
    std::vector<int32_t> row_cls((size_t)Ho), col_cls((size_t)Wo);
    for (int64_t i = 0; i < Ho; ++i) row_cls[(size_t)i] = (int32_t)i;
    for (int64_t i = 0; i < Wo; ++i) col_cls[(size_t)i] = (int32_t)(Wo - 1 - i);  /* not the identity */
    const int64_t OB8 = G * OBg * 8;
    std::vector<int32_t> table((size_t)(Ho * Wo * OB8), 0);
    for (int64_t oy = 0; oy < Ho; ++oy)
        for (int64_t ox = 0; ox < Wo; ++ox) {
            int32_t* row = &table[(size_t)((row_cls[(size_t)oy] * Wo + col_cls[(size_t)ox]) * OB8)];
            for (int64_t ky = 0; ky < KH; ++ky)
                for (int64_t kx = 0; kx < KW; ++kx) {
                    const int64_t y = oy * cv.sh - cv.ph + ky * cv.dh, x_ = ox * cv.sw - cv.pw + kx * cv.dw;
                    if (y >= 0 && y < H && x_ >= 0 && x_ < W) continue;
                    for (int64_t b = 0; b < G * OBg; ++b)
                        for (int64_t j = 0; j < 8; ++j) row[b * 8 + j] += corr[(size_t)((b * K + ky * KW + kx) * 8 + j)];
                }
        }
    /* tie weights [G][OBg][K][Cg][8] */
    std::vector<int8_t> tie_w((size_t)(G * OBg * K * Cg * 8), 0);
    for (int64_t g = 0; g < G; ++g)
        for (int64_t j8 = 0; j8 < Og; ++j8)
            for (int64_t k = 0; k < K; ++k)
                for (int64_t c = 0; c < Cg; ++c)
                    tie_w[(size_t)(((((g * OBg + j8 / 8) * K + k) * Cg + c) * 8) + j8 % 8)] = wsign(g * Og + j8, c, k);
    /* epilogue constants [G][OBg][8], residual, nonlinearity */
    std::vector<float> pre((size_t)OB8, 0.0f), scale((size_t)OB8, 0.0f), bias((size_t)OB8, 0.0f);
    for (int64_t g = 0; g < G; ++g)
        for (int64_t j8 = 0; j8 < Og; ++j8) {
            const size_t i = (size_t)((g * OBg + j8 / 8) * 8 + j8 % 8);
            pre[i] = rng.uniform(0.01f, 1.5f);
            scale[i] = rng.uniform(-2.0f, 2.0f);
            bias[i] = rng.uniform(-3.0f, 3.0f);
        }
    const int64_t out_len = N * O * Ho * Wo;
    auto out_index = [&](int64_t n, int64_t o, int64_t oy, int64_t ox) {
        return cv.out_nchw ? ((n * O + o) * Ho + oy) * Wo + ox : ((n * Ho + oy) * Wo + ox) * O + o;
    };
    std::vector<float> res;
    if (cv.residual) {
        res.resize((size_t)out_len);
        for (auto& v : res) v = rng.uniform(-2.0f, 2.0f);
    }
    std::vector<float> nl_p;
    if (cv.nonlin == 1) {
        nl_p.resize((size_t)O);
        for (auto& v : nl_p) v = rng.uniform(-0.5f, 0.7f);
    } else if (cv.nonlin == 2) {
        nl_p = {rng.uniform(-1.5f, -0.2f), rng.uniform(0.2f, 1.5f)};
    }
    /* the oracle: the dot products of the signs, zero padding, then the epilogue's formulas */
    std::vector<float> want((size_t)out_len);
    for (int64_t n = 0; n < N; ++n)
        for (int64_t o = 0; o < O; ++o) {
            const int64_t g = o / Og;
            const size_t ci = (size_t)((g * OBg + (o % Og) / 8) * 8 + (o % Og) % 8);
            for (int64_t oy = 0; oy < Ho; ++oy)
                for (int64_t ox = 0; ox < Wo; ++ox) {
                    int32_t dot = 0;
                    for (int64_t ky = 0; ky < KH; ++ky)
                        for (int64_t kx = 0; kx < KW; ++kx) {
                            const int64_t y = oy * cv.sh - cv.ph + ky * cv.dh, x_ = ox * cv.sw - cv.pw + kx * cv.dw;
                            if (y < 0 || y >= H || x_ < 0 || x_ >= W) continue;
                            const int8_t* s = &in.sign[(size_t)(((n * H + y) * W + x_) * C + g * Cg)];
                            for (int64_t c = 0; c < Cg; ++c) dot += s[c] * wsign(o, c, ky * KW + kx);
                        }
                    const int64_t i = out_index(n, o, oy, ox);
                    float v = fmaf((float)dot * pre[ci], scale[ci], bias[ci]);
                    if (cv.residual) v += res[(size_t)i];
                    if (cv.nonlin == 1) {
                        const float m = nl_p[(size_t)o] * v;
                        v = v > 0.0f ? v : m;
                    } else if (cv.nonlin == 2) {
                        v = v < nl_p[0] ? nl_p[0] : v > nl_p[1] ? nl_p[1] : v;
                    }
                    want[(size_t)i] = v;
                }
        }
    /* the ties in the kernel's lookup order: by input row (n, y), with the rows' offsets */
    std::vector<int32_t> ties_flat;
    std::vector<int64_t> tie_rows((size_t)(N * H + 1), 0);
    for (const auto& t : in.ties) ++tie_rows[(size_t)(t[0] * H + t[1]) + 1];
    for (int64_t r = 0; r < N * H; ++r) tie_rows[(size_t)r + 1] += tie_rows[(size_t)r];
    for (const auto& t : in.ties) ties_flat.insert(ties_flat.end(), t.begin(), t.end());  /* sorted: rows in order */
    /* the activations and weights as the kernel reads them: direct, or tap-packed (PackedConv's
     * narrow-layer form: a KH x 1 conv over words holding `per` taps of one kernel row each) */
    const uint64_t* act = in.packed.data();
    int64_t act_len = (int64_t)in.packed.size(), Wp = in.Wp(), a_Cg = Cg, a_Cw = Cw, a_KW = KW, a_dw = cv.dw;
    const uint64_t* wkp = wk.data();
    int64_t wk_len = (int64_t)wk.size();
    std::vector<uint64_t> tap_act, tap_wk;
    if (cv.taps) {
        const int64_t per = std::min<int64_t>(KW, 64 / Cg), TW = (KW + per - 1) / per, Wq = in.Wp() - (KW - 1) * cv.dw;
        const int64_t rows = N * in.Hp();
        tap_act.assign((size_t)(rows * Wq * TW), 0);
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t x_ = 0; x_ < Wq; ++x_)
                for (int64_t kx = 0; kx < KW; ++kx)
                    tap_act[(size_t)((r * Wq + x_) * TW + kx / per)] |= in.packed[(size_t)(r * in.Wp() + x_ + kx * cv.dw)]
                                                                      << (kx % per * Cg);
        tap_wk.assign((size_t)(OBg * KH * TW * 8), 0);
        for (int64_t o = 0; o < O; ++o)
            for (int64_t ky = 0; ky < KH; ++ky)
                for (int64_t kx = 0; kx < KW; ++kx)
                    tap_wk[(size_t)((((o / 8) * KH + ky) * TW + kx / per) * 8 + o % 8)] |=
                        wbits[(size_t)(o * K + ky * KW + kx)] << (kx % per * Cg);
        act = tap_act.data(); act_len = (int64_t)tap_act.size(); Wp = Wq;
        a_Cg = KW * Cg; a_Cw = TW; a_KW = 1; a_dw = 1;
        wkp = tap_wk.data(); wk_len = (int64_t)tap_wk.size();
    }
    BConvArgs a;
    memset(&a, 0, sizeof a);
    a.act = act; a.act_len = act_len;
    a.N = N; a.H = H; a.W = W; a.Hp = in.Hp(); a.Wp = Wp; a.bpad_h = in.bpad_h; a.bpad_w = in.bpad_w;
    a.G = G; a.Cg = a_Cg; a.Cw = a_Cw; a.Og = Og; a.OBg = OBg;
    a.KH = KH; a.KW = a_KW; a.sh = cv.sh; a.sw = cv.sw; a.ph = cv.ph; a.pw = cv.pw; a.dh = cv.dh; a.dw = a_dw;
    a.Ho = Ho; a.Wo = Wo;
    a.wk = wkp; a.wk_len = wk_len;
    a.bcorr = table.data(); a.bcorr_len = (int64_t)table.size();
    a.row_cls = row_cls.data(); a.col_cls = col_cls.data(); a.ncls_col = Wo;
    a.pre = pre.data(); a.scale = scale.data(); a.bias = bias.data(); a.sb_len = OB8;
    a.out_len = out_len; a.out_nchw = cv.out_nchw ? 1 : 0;
    a.nties = (int64_t)in.ties.size();
    a.ties = a.nties ? ties_flat.data() : NULL;
    a.tie_rows = a.nties ? tie_rows.data() : NULL;
    a.tie_w = tie_w.data(); a.tie_w_len = (int64_t)tie_w.size();
    a.tie_KW = KW; a.tie_dw = cv.dw; a.tie_Cg = Cg;
    a.res = cv.residual ? res.data() : NULL; a.res_len = cv.residual ? out_len : 0;
    a.nonlin = cv.nonlin; a.nonlin_p = nl_p.empty() ? NULL : nl_p.data(); a.nonlin_len = (int64_t)nl_p.size();
    *hash = fnv1a(want);
    int ok = 0;
    std::vector<float> first;
    for (const Isa& isa : isas) {
        std::vector<float> out((size_t)out_len);
        memset(out.data(), 0xff, out.size() * sizeof(float));  /* NaN: an output left unwritten shows */
        a.out = out.data();
        /* the tasks in three ranges, as threads split them */
        const int64_t T = isa.num_tasks(&a), t1 = T / 3, t2 = 2 * T / 3;
        isa.tasks(&a, 0, t1);
        isa.tasks(&a, t1, t2);
        isa.tasks(&a, t2, T);
        if (same_floats(out, want, isa.name, "bconv vs oracle")) ++ok;
        if (first.empty()) first = out;
        else same_floats(out, first, isa.name, "bconv vs portable");
    }
    return ok;
}

/* Ho, Wo of a geometry; false when the kernel does not fit the input */
bool out_size(int64_t H, int64_t W, Conv* cv) {
    cv->Ho = (H + 2 * cv->ph - cv->dh * (cv->KH - 1) - 1) / cv->sh + 1;
    cv->Wo = (W + 2 * cv->pw - cv->dw * (cv->KW - 1) - 1) / cv->sw + 1;
    return H + 2 * cv->ph - cv->dh * (cv->KH - 1) - 1 >= 0 && W + 2 * cv->pw - cv->dw * (cv->KW - 1) - 1 >= 0;
}

void check_sums(Rng& rng, const std::vector<Isa>& isas) {
    /* lengths: tails, whole groups, and every cascade level (steps of 16, 256 and 4096 groups of 32) */
    const int64_t lengths[] = {8, 9, 15, 31, 32, 33, 100, 513, 1000, 4097, 8192 + 5, 40000, 131072 + 77, 300001};
    for (int64_t n : lengths) {
        std::vector<float> x((size_t)n);
        for (auto& v : x) v = rng.uniform(-3.0f, 3.4f) * (rng.chance(0.01) ? 1000.0f : 1.0f);
        const float ts = torch_sum_portable(x.data(), n);
        const double ss = sample_sum_portable(x.data(), n);
        std::string line;
        for (const Isa& isa : isas) {
            const float t = isa.torch_sum(x.data(), n);
            const double s = isa.sample_sum(x.data(), n);
            if (bits_of(t) != bits_of(ts)) fail("%s torch_sum(n=%lld) = %.9g, portable %.9g", isa.name, (long long)n, (double)t, (double)ts);
            if (memcmp(&s, &ss, sizeof s)) fail("%s sample_sum(n=%lld) = %.17g, portable %.17g", isa.name, (long long)n, s, ss);
            line += std::string(" ") + isa.name;
        }
        printf("sums n=%lld: torch_sum %.9g sample_sum %.17g, same in%s\n", (long long)n, (double)ts, ss, line.c_str());
    }
}

}  // namespace

int main(int argc, char** argv) {
    const uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : 25;
    std::vector<std::string> skipped;
    const std::vector<Isa> isas = available_isas(&skipped);
    std::string names;
    for (const Isa& isa : isas) names += std::string(" ") + isa.name;
    std::string missing;
    for (const auto& s : skipped) missing += " " + s;
    printf("kernel_check (seed %llu): instruction sets%s%s%s\n", (unsigned long long)seed, names.c_str(),
           missing.empty() ? "" : "; not on this CPU:", missing.c_str());
    Rng rng{seed};
    check_sums(rng, isas);

    /* pack-only cases: wide rows (NCHW blocks of one row), many channels, odd groups */
    struct PackCase { int64_t N, H, W, C, G, bh, bw; bool nchw, centred; };
    const PackCase packs[] = {{2, 2, 2100, 3, 1, 0, 1, true, true},   {1, 3, 5, 1024, 2, 1, 1, false, true},
                              {3, 4, 7, 192, 3, 1, 0, true, false},   {2, 5, 3, 130, 1, 0, 2, false, false},
                              {1, 9, 9, 64, 1, 1, 1, false, true},    {2, 6, 70, 40, 4, 1, 1, true, true}};
    int cases = 0;
    for (const PackCase& p : packs) {
        const Input in = make_input(rng, p.N, p.H, p.W, p.C, p.G, p.bh, p.bw, p.nchw, p.centred, 0.01);
        const int before = failures;
        check_pack(in, isas);
        printf("pack %d: N=%lld C=%lld G=%lld %lldx%lld %s %s ties=%zu: %s\n", ++cases, (long long)p.N, (long long)p.C,
               (long long)p.G, (long long)p.H, (long long)p.W, p.nchw ? "nchw" : "nhwc",
               p.centred ? "centred" : "thr=0", in.ties.size(), failures == before ? "ok" : "DIFFERENT");
    }

    /* bconv cases: each channel count with several geometries and options, drawn from the seed */
    const int64_t channels[] = {3, 16, 64, 96, 128, 256, 512};
    const int64_t og_choices[] = {1, 5, 8, 13, 16, 17, 24};
    int bconv_cases = 0;
    for (int64_t C : channels) {
        const int reps = C <= 16 ? 6 : 5;
        for (int rep = 0; rep < reps; ++rep) {
            const int variant = bconv_cases;  /* cycles the options so that each count meets most of them */
            int64_t G = 1;
            if (rep % 2 == 1) {  /* grouped: 2, 3, 4 or depthwise-like for small counts */
                const int64_t options[] = {2, 3, 4, C};
                for (int tries = 0; tries < 8; ++tries) {
                    const int64_t g = options[rng.below(C <= 16 ? 4 : 3)];
                    if (C % g == 0 && g > 1) { G = g; break; }
                }
            }
            Conv cv;
            cv.Og = og_choices[rng.below(7)];
            if (C >= 256 && cv.Og > 16) cv.Og = 16;  /* keep the oracle quick under qemu */
            cv.O = G * cv.Og;
            cv.OBg = (cv.Og + 7) / 8;
            const bool k3 = rep % 3 != 2;
            cv.KH = cv.KW = k3 ? 3 : 1;
            cv.sh = cv.sw = (variant % 4 == 1) ? 2 : 1;
            if (variant % 7 == 3) cv.sw = 3 - cv.sh;  /* unequal strides */
            cv.ph = cv.pw = k3 && variant % 5 != 4 ? 1 : 0;
            if (variant % 9 == 6) cv.pw = 0;
            cv.dh = cv.dw = k3 && variant % 6 == 5 ? 2 : 1;
            if (k3 && variant % 8 == 2) cv.dh = 2;
            cv.out_nchw = variant % 2 == 1;
            cv.residual = variant % 3 == 0;
            cv.nonlin = variant % 4 == 3 ? 0 : (variant % 4) % 3;  /* 0 none, 1 PReLU, 2 Hardtanh */
            const int64_t N = variant % 2 == 0 ? 3 : 1;
            const bool centred = variant % 5 == 1 || variant % 5 == 3;
            const bool in_nchw = variant % 3 == 1;
            const double tie_rate = variant % 4 == 2 ? 0.0 : 0.03;
            const int64_t span = C >= 256 ? 5 : 9;
            int64_t H, W;
            do {
                H = 1 + rng.below(span) + (k3 ? 2 : 0);
                W = 1 + rng.below(span + 4) + (k3 ? 2 : 0);
            } while (!out_size(H, W, &cv));
            const int64_t bh = cv.ph + (variant % 5 == 2 ? 1 : 0), bw = cv.pw + (variant % 7 == 5 ? 1 : 0);
            const int64_t Cg = C / G;
            cv.taps = G == 1 && Cg <= 32 && std::min<int64_t>(cv.KW, 64 / Cg) >= 2 && rep % 2 == 0;
            const Input in = make_input(rng, N, H, W, C, G, bh, bw, in_nchw, centred, tie_rate);
            const int before = failures;
            check_pack(in, isas);
            uint64_t hash = 0;
            const int ok = check_bconv(rng, in, cv, isas, &hash);
            ++bconv_cases;
            printf("bconv %d: %s: hash %016llx, %d/%zu ISAs bit-identical to the oracle%s\n", bconv_cases,
                   describe(in, cv, centred).c_str(), (unsigned long long)hash, ok, isas.size(),
                   failures == before ? "" : " -- DIFFERENT");
        }
    }
    if (failures) {
        printf("kernel_check: %d difference(s) in %d pack and %d bconv cases\n", failures, cases, bconv_cases);
        return 1;
    }
    printf("kernel_check: ok, %d pack and %d bconv cases and the sums, bit-identical across%s\n", cases, bconv_cases,
           names.c_str());
    return 0;
}

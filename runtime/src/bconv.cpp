// Binary convolutions on csrc's kernels (see bconv.hpp).
#include "bconv.hpp"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

#include "bnn_host.h"
#include "bnn_kernels.h"
#include "ops.hpp"

extern "C" int bnn_cpu_has_avx2(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt");
#else
    return 0;
#endif
}

namespace bnn {

extern float (*g_torch_sum)(const float*, int64_t);

namespace {

#if defined(BNN_HAVE_X86)
bool cpu_has_avx512() {
    __builtin_cpu_init();
    return bnn_cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512vpopcntdq");
}
#endif

// Advanced SIMD, as the kernel reports it: part of the base AArch64 ISA, yet a kernel (or qemu
// -cpu) may disable it, and then its instructions trap
#if defined(__aarch64__) && defined(BNN_HAVE_NEON)
bool cpu_has_asimd() {
#if defined(__linux__)
    return (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0;
#else
    return true;
#endif
}
#endif

struct Kernels {
    const char* name;
    int64_t (*num_tasks)(const BConvArgs*);
    void (*tasks)(const BConvArgs*, int64_t, int64_t);
    void (*pack_rows)(const PackArgs*, const float*, int64_t, int64_t);
    float (*tsum)(const float*, int64_t);
};

const Kernels kPortable = {"portable", bconv_num_tasks_portable, bconv_tasks_portable, pack_rows_portable,
                           torch_sum_portable};
#if defined(BNN_HAVE_X86)
const Kernels kAvx2 = {"avx2", bconv_num_tasks_avx2, bconv_tasks_avx2, pack_rows_avx2, torch_sum_avx2};
const Kernels kAvx512 = {"avx512", bconv_num_tasks_avx512, bconv_tasks_avx512, pack_rows_avx512, torch_sum_avx512};
#endif
#if defined(__aarch64__) && defined(BNN_HAVE_NEON)
const Kernels kNeon = {"neon", bconv_num_tasks_neon, bconv_tasks_neon, pack_rows_neon, torch_sum_neon};
#endif

const Kernels* g_kernels = nullptr;

const Kernels* choose() {
    const char* want = getenv("BNN_ISA");
    std::string w = want && *want ? want : "auto";
    std::vector<const Kernels*> have = {&kPortable};
#if defined(BNN_HAVE_X86)
    if (bnn_cpu_has_avx2()) have.push_back(&kAvx2);
    if (cpu_has_avx512()) have.push_back(&kAvx512);
#endif
#if defined(__aarch64__) && defined(BNN_HAVE_NEON)
    if (cpu_has_asimd()) have.push_back(&kNeon);
#endif
    if (w == "auto") return have.back();
    std::string names;
    for (const Kernels* k : have) {
        if (w == k->name) return k;
        names += std::string(names.empty() ? "" : ", ") + k->name;
    }
    const bool known = w == "portable" || w == "avx2" || w == "avx512" || w == "neon";
    throw Error(1, std::string("BNN_ISA=") + w + (known ? " is not supported by this CPU or build" : " is unknown") +
                       "; unset it or use one of auto, " + names);
}


}  // namespace

void init_isa() {
    if (!g_kernels) {
        g_kernels = choose();
        g_torch_sum = g_kernels->tsum;
    }
}
const char* isa_name() { return g_kernels ? g_kernels->name : "unset"; }

namespace {
// the bconv kernels' tasks split between at most `threads` OpenMP threads (csrc/bnn_host.h)
template <typename Run>
void parallel_tasks(int64_t total, int threads, Run run) {
    parallel_ranges(total, threads_for(threads, total), run);
}
}  // namespace

std::pair<int64_t, int64_t> BinaryConv::out_size(int64_t H, int64_t W) const {
    const int64_t nh = H + 2 * pad[0] - dil[0] * (kh - 1) - 1, nw = W + 2 * pad[1] - dil[1] * (kw - 1) - 1;
    if (nh < 0 || nw < 0) fail_run("binary conv: input " + std::to_string(H) + "x" + std::to_string(W) + " is smaller than its kernel");
    return {nh / stride[0] + 1, nw / stride[1] + 1};
}

void BinaryConv::prepare() {
    Og = O / G;
    OBg = (Og + 7) / 8;
    if (real_input) {
        wfloat_.assign((size_t)(O * Cg * K), 0.0f);
        for (int64_t o = 0; o < O; ++o)
            for (int64_t k = 0; k < K; ++k)
                for (int64_t c = 0; c < Cg; ++c) {
                    const uint64_t word = w_bits[(size_t)((o * K + k) * Cw + c / 64)];
                    wfloat_[(size_t)((o * Cg + c) * K + k)] = (word >> (c % 64)) & 1 ? -1.0f : 1.0f;
                }
        for (size_t z = 0; z < zeros.size() / 4; ++z) {
            const int32_t* r = &zeros[4 * z];
            wfloat_[(size_t)((r[0] * Cg + r[1]) * K + r[2] * kw + r[3])] = 0.0f;
        }
        return;
    }
    const int64_t B8 = OBg * 8;
    wk_.assign((size_t)(G * OBg * K * Cw * 8), 0);
    corr_.assign((size_t)(G * OBg * K * 8), 0);
    tie_w_.assign((size_t)(G * OBg * K * Cg * 8), 0);
    for (int64_t g = 0; g < G; ++g)
        for (int64_t ol = 0; ol < Og; ++ol) {
            const int64_t o = g * Og + ol, ob = ol / 8, j = ol % 8;
            for (int64_t k = 0; k < K; ++k) {
                int64_t neg = 0;
                for (int64_t w = 0; w < Cw; ++w) {
                    const uint64_t word = w_bits[(size_t)((o * K + k) * Cw + w)];
                    wk_[(size_t)((((g * OBg + ob) * K + k) * Cw + w) * 8 + j)] = word;
                    neg += __builtin_popcountll(word);
                }
                corr_[(size_t)(((g * OBg + ob) * K + k) * 8 + j)] = (int32_t)(Cg - 2 * neg);
                for (int64_t c = 0; c < Cg; ++c) {
                    const uint64_t word = w_bits[(size_t)((o * K + k) * Cw + c / 64)];
                    tie_w_[(size_t)((((g * OBg + ob) * K + k) * Cg + c) * 8 + j)] = (word >> (c % 64)) & 1 ? -1 : 1;
                }
            }
        }
    auto padded = [&](const std::vector<float>& v) {
        std::vector<float> out((size_t)(G * B8), 0.0f);
        for (int64_t g = 0; g < G; ++g)
            for (int64_t ol = 0; ol < Og; ++ol) out[(size_t)(g * B8 + ol)] = v[(size_t)(g * Og + ol)];
        return out;
    };
    pre_ = padded(prescale);
    scale_ = padded(scale);
    bias_ = padded(bias);
    ones_ = padded(std::vector<float>((size_t)O, 1.0f));
    zero_.assign((size_t)(G * B8), 0.0f);
}

const BinaryConv::Borders& BinaryConv::borders(int64_t H, int64_t W) const {
    auto key = std::make_pair(H, W);
    auto it = borders_.find(key);
    if (it != borders_.end()) return it->second;
    const auto hw = out_size(H, W);
    const int64_t Ho = hw.first, Wo = hw.second;
    Borders b;
    // classes of output rows (columns) by which kernel rows (columns) fall inside the input
    auto classes = [](int64_t n_out, int64_t n_in, int64_t k, int64_t s, int64_t p, int64_t d,
                      std::vector<int32_t>& cls, std::vector<std::vector<char>>& pats) {
        cls.resize((size_t)n_out);
        for (int64_t o = 0; o < n_out; ++o) {
            std::vector<char> pat((size_t)k);
            for (int64_t t = 0; t < k; ++t) {
                const int64_t i = o * s - p + t * d;
                pat[(size_t)t] = i >= 0 && i < n_in;
            }
            size_t c = 0;
            while (c < pats.size() && pats[c] != pat) ++c;
            if (c == pats.size()) pats.push_back(pat);
            cls[(size_t)o] = (int32_t)c;
        }
    };
    std::vector<std::vector<char>> rp, cp;
    classes(Ho, H, kh, stride[0], pad[0], dil[0], b.rows, rp);
    classes(Wo, W, kw, stride[1], pad[1], dil[1], b.cols, cp);
    const int64_t R = (int64_t)rp.size(), C = (int64_t)cp.size(), L = G * OBg * 8;
    b.ncols = C;
    b.table.assign((size_t)(R * C * L), 0);
    for (int64_t r = 0; r < R; ++r)
        for (int64_t c = 0; c < C; ++c) {
            int32_t* t = &b.table[(size_t)((r * C + c) * L)];
            for (int64_t ky = 0; ky < kh; ++ky)
                for (int64_t kx = 0; kx < kw; ++kx) {
                    if (rp[(size_t)r][(size_t)ky] && cp[(size_t)c][(size_t)kx]) continue;
                    const int64_t k = ky * kw + kx;
                    for (int64_t gb = 0; gb < G * OBg; ++gb)
                        for (int j = 0; j < 8; ++j) t[gb * 8 + j] += corr_[(size_t)((gb * K + k) * 8 + j)];
                }
        }
    if (borders_.size() >= 16) borders_.clear();
    return borders_.emplace(key, std::move(b)).first->second;
}

Tensor BinaryConv::run(const Tensor& x, int threads) const {
    if (x.dim() != 4 || x.shape[1] != Cin)
        fail_run("binary conv expects (N, " + std::to_string(Cin) + ", H, W) input, got " + x.shape_str());
    const int64_t N = x.shape[0], H = x.shape[2], W = x.shape[3];
    const auto hw = out_size(H, W);
    const int64_t Ho = hw.first, Wo = hw.second;
    if (real_input) {  // wconv: a real conv with the ±1 weights, then the epilogue
        Tensor y = conv2d(x, wfloat_.data(), O, Cg, kh, kw, nullptr, stride, pad, dil, G);
        conv_epilogue(y.data(), N, O, Ho * Wo, prescale.data(), scale.data(), bias.data());
        return y;
    }
    const int64_t per = Cin * H * W;
    // thresholds: 0, or the sample's mean as PyTorch computes it
    std::vector<float> thr((size_t)N, 0.0f);
    if (center)
        for (int64_t n = 0; n < N; ++n) thr[(size_t)n] = torch_sum(x.data() + n * per, per) / (float)per;
    const int64_t Hp = H + 2 * pad[0], Wp = W + 2 * pad[1];
    const int64_t act_len = mul_checked(mul_checked(N * Hp, Wp, "packed size"), G * Cw, "packed size");
    check_alloc(act_len, 8, "binary conv's packed input");
    Tensor y = Tensor::empty({N, O, Ho, Wo});
    std::vector<uint64_t> act((size_t)act_len, 0);
    std::vector<int32_t> ties((size_t)4 * 1024);
    int64_t nties = 0;
    PackArgs pa;
    memset(&pa, 0, sizeof pa);
    pa.x = x.data(); pa.x_len = x.numel();
    pa.N = N; pa.H = H; pa.W = W; pa.C = Cin; pa.G = G; pa.Cg = Cg; pa.Cw = Cw; pa.pad_h = pad[0]; pa.pad_w = pad[1];
    pa.center = center ? 2 : 0;
    pa.out = act.data(); pa.out_len = act_len;
    pa.thr_out = thr.data(); pa.thr_len = N; pa.thr_in = thr.data();
    pa.nchw = 1;
    while (true) {
        pa.ties = ties.data();
        pa.ties_cap = (int64_t)ties.size() / 4;
        pa.ties_count = &nties;
        nties = 0;
        parallel_tasks(N * H, threads, [&](int64_t b, int64_t e) { g_kernels->pack_rows(&pa, thr.data(), b, e); });
        if (nties <= pa.ties_cap) break;
        ties.assign((size_t)(4 * nties), 0);  // rare: room for all, pack again
    }
    const Borders& bd = borders(H, W);
    const bool raw = !zeros.empty();
    BConvArgs a;
    memset(&a, 0, sizeof a);
    a.act = act.data(); a.act_len = act_len;
    a.N = N; a.H = H; a.W = W; a.Hp = Hp; a.Wp = Wp; a.bpad_h = pad[0]; a.bpad_w = pad[1];
    a.G = G; a.Cg = Cg; a.Cw = Cw; a.Og = Og; a.OBg = OBg;
    a.KH = kh; a.KW = kw; a.sh = stride[0]; a.sw = stride[1]; a.ph = pad[0]; a.pw = pad[1]; a.dh = dil[0]; a.dw = dil[1];
    a.Ho = Ho; a.Wo = Wo;
    a.wk = wk_.data(); a.wk_len = (int64_t)wk_.size();
    a.bcorr = bd.table.data(); a.bcorr_len = (int64_t)bd.table.size();
    a.row_cls = bd.rows.data(); a.col_cls = bd.cols.data(); a.ncls_col = bd.ncols;
    a.pre = raw ? ones_.data() : pre_.data();
    a.scale = raw ? ones_.data() : scale_.data();
    a.bias = raw ? zero_.data() : bias_.data();
    a.sb_len = (int64_t)pre_.size();
    a.out = y.data(); a.out_len = y.numel();
    a.out_nchw = 1;
    std::vector<int32_t> sorted;
    std::vector<int64_t> rows;
    if (nties > 0) {  // the ties, counting-sorted by input row (n, y), as the kernel looks them up
        if (sort_ties(ties.data(), nties, N, H, W, Cin, sorted, rows) >= 0) fail_run("binary conv: a tie outside the input");
        a.ties = sorted.data(); a.nties = nties; a.tie_rows = rows.data();
        a.tie_w = tie_w_.data(); a.tie_w_len = (int64_t)tie_w_.size();
    }
    a.tie_KW = kw; a.tie_dw = dil[1]; a.tie_Cg = Cg;
    const int64_t tasks = g_kernels->num_tasks(&a);
    parallel_tasks(tasks, threads, [&](int64_t b, int64_t e) { g_kernels->tasks(&a, b, e); });
    if (raw) {
        // weights exactly 0 were packed as +1: take back what they added (sign(x - t), 0 at a tie
        // or in the padding), then the epilogue
        const int64_t P = Ho * Wo;
        for (size_t z = 0; z < zeros.size() / 4; ++z) {
            const int32_t* r = &zeros[4 * z];
            const int64_t o = r[0], c = (o / Og) * Cg + r[1], ky = r[2], kx = r[3];
            for (int64_t n = 0; n < N; ++n) {
                const float* plane = x.data() + (n * Cin + c) * H * W;
                float* out = y.data() + (n * O + o) * P;
                const float t = thr[(size_t)n];
                for (int64_t oy = 0; oy < Ho; ++oy) {
                    const int64_t iy = oy * stride[0] - pad[0] + ky * dil[0];
                    if (iy < 0 || iy >= H) continue;
                    for (int64_t ox = 0; ox < Wo; ++ox) {
                        const int64_t ix = ox * stride[1] - pad[1] + kx * dil[1];
                        if (ix < 0 || ix >= W) continue;
                        const float v = plane[iy * W + ix];
                        out[oy * Wo + ox] -= v > t ? 1.0f : v < t ? -1.0f : 0.0f;
                    }
                }
            }
        }
        conv_epilogue(y.data(), N, O, P, prescale.data(), scale.data(), bias.data());
    }
    return y;
}

}  // namespace bnn

/* Training kernels around the binary convolutions (bnnkit/functional.py). SiMaN's and BiPer's
 * activation binarizers (StandardizedApproxSign, ScaledApproxSign): per-sample statistics and the
 * sign in the forward pass, the exact gradient of ApproxSign after the per-sample standardisation
 * in the backward pass. And the backward of the per-channel scale y * alpha (ChannelScale).
 *
 * Each sample is a dense block of n floats (NCHW or channels-last alike: statistics over (C,H,W)
 * do not depend on the order, and everything else is elementwise). Two sweeps per sample instead
 * of eager PyTorch's dozen passes over the activations. Sums run over 8 fixed float lanes, each
 * lane's partial moved into double every 256 elements, and -ffp-contract=off forbids fused
 * multiply-adds: the results do not depend on the thread count or the instruction set. */
#include <math.h>
#include <string.h>

#include <vector>

#include "bnn_kernels.h"
#include "bnn_nonlin.h"

/* The 32-byte vector helpers below are always inlined, so no call passes a vector across an ABI
 * boundary that GCC would warn about. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define BNN_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define BNN_CLONES
#endif

namespace {

typedef float v8f __attribute__((vector_size(32)));
constexpr int64_t LANES = 8, BLOCK = 256;  /* BLOCK: elements per float partial sum of 8 lanes */
constexpr double EPS = 1e-5;               /* the variance epsilon of both published methods */

__attribute__((always_inline)) inline v8f load(const float* p) { v8f v; memcpy(&v, p, sizeof v); return v; }
__attribute__((always_inline)) inline void store(float* p, v8f v) { memcpy(p, &v, sizeof v); }
__attribute__((always_inline)) inline v8f splat(float f) { return v8f{f, f, f, f, f, f, f, f}; }

/* torch.sign: 0 at 0 and at NaN */
__attribute__((always_inline)) inline float sign_of(float d) { return (float)((d > 0.0f) - (d < 0.0f)); }
__attribute__((always_inline)) inline v8f sign_of(v8f d) {
    const v8f zero = splat(0.0f), one = splat(1.0f);
    return d > zero ? one : (d < zero ? -one : zero);
}

/* ApproxSign's derivative max(0, 2 - 2|y|) */
__attribute__((always_inline)) inline float surrogate(float y) {
    const float s = 2.0f - 2.0f * fabsf(y);
    return s > 0.0f ? s : 0.0f;
}
__attribute__((always_inline)) inline v8f surrogate(v8f y) {
    const v8f zero = splat(0.0f), two = splat(2.0f);
    const v8f s = two - two * (y < zero ? -y : y);
    return s > zero ? s : zero;
}

/* the backward's elementwise slope: ApproxSign's, or sign(y), the gradient of |y| */
/* RBNN's triangle max(0, k (h - |t2 y|)), in the order of rbnn.py's TriangleSign: tri = [k, h, t2] */
__attribute__((always_inline)) inline float triangle(float y, const float* tri) {
    const float s = tri[0] * (tri[1] - fabsf(tri[2] * y));
    return s > 0.0f ? s : 0.0f;
}
__attribute__((always_inline)) inline v8f triangle(v8f y, const float* tri) {
    const v8f zero = splat(0.0f), t2y = splat(tri[2]) * y;
    const v8f s = splat(tri[0]) * (splat(tri[1]) - (t2y < zero ? -t2y : t2y));
    return s > zero ? s : zero;
}

/* the backward's elementwise slope: ApproxSign's (SLOPE_APPROX), sign(y), the gradient of |y|
 * (SLOPE_SIGN), or RBNN's triangle (SLOPE_TRIANGLE) */
enum { SLOPE_APPROX, SLOPE_SIGN, SLOPE_TRIANGLE };
template <int SLOPE, class T>
__attribute__((always_inline)) inline T slope(T y, const float* tri) {
    return SLOPE == SLOPE_SIGN ? sign_of(y) : SLOPE == SLOPE_TRIANGLE ? triangle(y, tri) : surrogate(y);
}

/* Running sums: 8 float lanes within a block, flushed into double between blocks. */
struct Sum {
    v8f part = splat(0.0f);
    double total = 0;
    void flush() {
        for (int j = 0; j < LANES; ++j) total += (double)part[j];
        part = splat(0.0f);
    }
};

}  // namespace

/* mean and rstd = 1/sqrt(var + eps) (unbiased var) of x[0, n), and with SIGN_OUT out = sign(x) in
 * the same sweep; NO_EPS: rstd = 1/sqrt(var) (RBNN's std). The sums are taken about x[0] so that a
 * large mean does not cancel the variance away. */
template <bool SIGN_OUT, bool NO_EPS = false>
__attribute__((always_inline)) inline void sample_stats(const float* x, int64_t n, float* out, float* mean,
                                                        float* rstd) {
    const int64_t nv = n / LANES * LANES;
    const float shift = x[0];
    const v8f vshift = splat(shift);
    Sum s1, s2;
    for (int64_t b = 0; b < nv; b += BLOCK) {
        const int64_t e = b + BLOCK < nv ? b + BLOCK : nv;
        for (int64_t i = b; i < e; i += LANES) {
            const v8f v = load(x + i), d = v - vshift;
            s1.part += d;
            s2.part += d * d;
            if (SIGN_OUT) store(out + i, sign_of(v));
        }
        s1.flush();
        s2.flush();
    }
    for (int64_t i = nv; i < n; ++i) {
        const double d = (double)x[i] - shift;
        s1.total += d;
        s2.total += d * d;
        if (SIGN_OUT) out[i] = sign_of(x[i]);
    }
    double var = n > 1 ? (s2.total - s1.total * s1.total / (double)n) / (double)(n - 1) : NAN;
    if (var < 0) var = 0;
    *mean = (float)((double)shift + s1.total / (double)n);
    *rstd = (float)(1.0 / sqrt(NO_EPS ? var : var + EPS));
}

/* Sample s: mean, rstd and out = sign(x - mean) (centered) or sign(x). */
BNN_CLONES void act_forward_samples(const ActArgs* a, int64_t s0, int64_t s1) {
    const int64_t n = a->n, nv = n / LANES * LANES;
    for (int64_t s = s0; s < s1; ++s) {
        const float* x = a->x + BNN_AT("act x", s * n, n, a->x_len);
        float* out = a->out + BNN_AT("act out", s * n, n, a->x_len);
        float* mean = a->mean + BNN_AT("act mean", s, 1, a->N);
        float* rstd = a->rstd + BNN_AT("act rstd", s, 1, a->N);
        if (!a->centered) {
            sample_stats<true>(x, n, out, mean, rstd);
            continue;
        }
        if (a->triangle) sample_stats<false, true>(x, n, nullptr, mean, rstd);
        else sample_stats<false>(x, n, nullptr, mean, rstd);
        const float m = *mean;
        const v8f vmean = splat(m);
        for (int64_t i = 0; i < nv; i += LANES) store(out + i, sign_of(load(x + i) - vmean));
        for (int64_t i = nv; i < n; ++i) out[i] = sign_of(x[i] - m);
    }
}

/* The key of rank `rank` (0-based, ascending) among cur[0, m): bit patterns of non-negative
 * floats, which order as the floats do. Radix selection on bits 30-20 (exponent and 3 mantissa
 * bits: a row's magnitudes span few exponents, so the bucket of the rank holds a few percent of
 * them), then 19-10, then 9-0: a histogram picks the bucket holding the rank, and the next pass
 * looks only at that bucket's keys (copied to tmp). Two interleaved histograms and a branch-free
 * copy: the keys crowd into few buckets, in no predictable order. It starts at pass p0, on keys
 * that share the bits of `prefix` above that pass (0 and 0 for a whole selection). */
static const int RADIX_SHIFT[3] = {20, 10, 0};
static const uint32_t RADIX_MASK[3] = {0x7FF, 0x3FF, 0x3FF};

static uint32_t select_from(const uint32_t* cur, int64_t m, int64_t rank, int p0, uint32_t prefix, uint32_t* tmp) {
    int32_t hist[2][2048];
    for (int p = p0; p < 3; ++p) {
        const int shift = RADIX_SHIFT[p];
        const uint32_t mask = RADIX_MASK[p];
        int32_t* h0 = hist[0];
        int32_t* h1 = hist[1];
        memset(h0, 0, sizeof(int32_t) * (mask + 1));
        memset(h1, 0, sizeof(int32_t) * (mask + 1));
        const int64_t m2 = m / 2 * 2;
        for (int64_t i = 0; i < m2; i += 2) {
            ++h0[(cur[i] >> shift) & mask];
            ++h1[(cur[i + 1] >> shift) & mask];
        }
        if (m2 < m) ++h0[(cur[m2] >> shift) & mask];
        uint32_t bucket = 0;
        for (;; ++bucket) {  /* rank < m: ends inside the table */
            const int64_t count = (int64_t)h0[bucket] + h1[bucket];
            if (rank < count) break;
            rank -= count;
        }
        prefix |= bucket << shift;
        if (p == 2) break;
        int64_t kept = 0;
        for (int64_t i = 0; i < m; ++i) {
            const uint32_t key = cur[i];
            tmp[kept] = key;
            kept += ((key >> shift) & mask) == bucket;
        }
        cur = tmp;
        m = kept;
    }
    return prefix;
}

/* out[j] = the key of rank ranks[j] among keys[0, n), for `count` ranks (each in [0, n)), on
 * `slices` OpenMP tasks: one shared histogram of bits 30-20 and one gathering pass for all the
 * buckets the ranks fall in (each slice writes at its own offsets, known from its histogram),
 * then the remaining passes of each rank on its bucket's keys alone. The clipping's four
 * percentile neighbours cost two passes over the tensor instead of eight. */
void select_ranks(const uint32_t* keys, int64_t n, const int64_t* ranks, int64_t count, uint32_t* out, int slices) {
    if (slices < 1) slices = 1;
    const int64_t B = 2048;
    std::vector<int64_t> hist((size_t)(slices * B), 0);
#pragma omp parallel for schedule(static) num_threads(slices)
    for (int t = 0; t < slices; ++t) {
        int32_t h[2][2048];  /* two interleaved: the keys crowd into few buckets */
        memset(h, 0, sizeof h);
        const int64_t b = n * t / slices, e = n * (t + 1) / slices, e2 = b + (e - b) / 2 * 2;
        for (int64_t i = b; i < e2; i += 2) {
            ++h[0][keys[i] >> 20];
            ++h[1][keys[i + 1] >> 20];
        }
        if (e2 < e) ++h[0][keys[e2] >> 20];
        for (int64_t k = 0; k < B; ++k) hist[(size_t)(t * B + k)] = (int64_t)h[0][k] + h[1][k];
    }
    std::vector<int64_t> total((size_t)B, 0);
    for (int t = 0; t < slices; ++t)
        for (int64_t b = 0; b < B; ++b) total[(size_t)b] += hist[(size_t)(t * B + b)];
    std::vector<uint32_t> bucket_of((size_t)count), buckets;
    std::vector<int64_t> residual((size_t)count);
    for (int64_t j = 0; j < count; ++j) {
        int64_t r = ranks[j];
        uint32_t b = 0;
        while (b + 1 < (uint32_t)B && r >= total[b]) r -= total[b++];
        bucket_of[(size_t)j] = b;
        residual[(size_t)j] = r;
        bool seen = false;
        for (uint32_t d : buckets) seen = seen || d == b;
        if (!seen) buckets.push_back(b);
    }
    const int64_t D = (int64_t)buckets.size();
    std::vector<std::vector<uint32_t>> sets((size_t)D);
    std::vector<int64_t> offset((size_t)(slices * D));
    for (int64_t d = 0; d < D; ++d) {
        sets[(size_t)d].resize((size_t)total[buckets[(size_t)d]]);
        int64_t at = 0;
        for (int t = 0; t < slices; ++t) {
            offset[(size_t)(t * D + d)] = at;
            at += hist[(size_t)(t * B + buckets[(size_t)d])];
        }
    }
#pragma omp parallel for schedule(static) num_threads(slices)
    for (int t = 0; t < slices; ++t) {
        int64_t* at = offset.data() + t * D;
        for (int64_t i = n * t / slices, e = n * (t + 1) / slices; i < e; ++i) {
            const uint32_t key = keys[i], b = key >> 20;
            for (int64_t d = 0; d < D; ++d)
                if (b == buckets[(size_t)d]) {
                    std::vector<uint32_t>& set = sets[(size_t)d];
                    const int64_t slot = at[d]++;  /* BNN_AT may evaluate its index more than once */
                    set[BNN_AT("select set", slot, 1, (int64_t)set.size())] = key;
                }
        }
    }
    for (int64_t j = 0; j < count; ++j) {
        int64_t d = 0;
        while (buckets[(size_t)d] != bucket_of[(size_t)j]) ++d;
        std::vector<uint32_t>& set = sets[(size_t)d];
        std::vector<uint32_t> tmp(set.size());
        out[j] = select_from(set.data(), (int64_t)set.size(), residual[(size_t)j], 1, bucket_of[(size_t)j] << 20,
                             tmp.data());
    }
}

/* the sum of x[0, n) in float lanes flushed into double, as the statistics take it */
__attribute__((always_inline)) inline double sample_sum(const float* x, int64_t n) {
    const int64_t nv = n / LANES * LANES;
    Sum sum;
    for (int64_t b = 0; b < nv; b += BLOCK) {
        const int64_t e = b + BLOCK < nv ? b + BLOCK : nv;
        for (int64_t i = b; i < e; i += LANES) sum.part += load(x + i);
        sum.flush();
    }
    for (int64_t i = nv; i < n; ++i) sum.total += (double)x[i];
    return sum.total;
}

/* w[0, k) -= its mean (summed as the statistics are), in place */
__attribute__((always_inline)) inline void center_row(float* w, int64_t k) {
    const float m = (float)(sample_sum(w, k) / (double)k);
    for (int64_t i = 0; i < k; ++i) w[i] -= m;
}

/* w -= mean of the row, in place, for rows [r0, r1); with keys, the bit patterns of the centred
 * |w| into keys[r * k, (r + 1) * k) (for the clipping's percentiles over the whole tensor) */
BNN_CLONES void siman_center_rows(const SimanWeightArgs* a, uint32_t* keys, int64_t r0, int64_t r1) {
    const int64_t k = a->k;
    for (int64_t r = r0; r < r1; ++r) {
        float* w = a->w + BNN_AT("siman w", r * k, k, a->len);
        center_row(w, k);
        if (!keys) continue;
        uint32_t* key = keys + BNN_AT("siman keys", r * k, k, a->len);
        for (int64_t i = 0; i < k; ++i) {
            const float mag = fabsf(w[i]);
            memcpy(key + i, &mag, sizeof mag);
        }
    }
}

/* SiMaN's weight binarizer on rows [r0, r1) of w [O][k] (bnnkit/methods/siman.py):
 *   center:  w -= mean of the row, in place (quirk Q1);
 *   clip:    w = sign(w) * min(max(|w|, low), high), in place (Q1's percentile clipping, after
 *            the centring, with the bounds taken over the whole tensor);
 *   then mean and rstd of the row as the activations' statistics (for the backward);
 *   update:  code = 1 where |w - mean| is above the row's lower median (rank (k-1)/2, as
 *            torch.median), else 0: the larger floor(k/2) magnitudes. Dividing by the row's
 *            standard deviation keeps the order, so the selection skips it;
 *   wb = 2 code - 1. */
BNN_CLONES void siman_weight_rows(const SimanWeightArgs* a, int64_t r0, int64_t r1) {
    const int64_t k = a->k;
    std::vector<uint32_t> keys(a->update ? (size_t)(2 * k) : 0);
    for (int64_t r = r0; r < r1; ++r) {
        float* w = a->w + BNN_AT("siman w", r * k, k, a->len);
        float* code = a->code + BNN_AT("siman code", r * k, k, a->len);
        float* wb = a->wb + BNN_AT("siman wb", r * k, k, a->len);
        float* mean = a->mean + BNN_AT("siman mean", r, 1, a->O);
        float* rstd = a->rstd + BNN_AT("siman rstd", r, 1, a->O);
        if (a->center) center_row(w, k);
        if (a->clip) {
            const float low = a->clip[0], high = a->clip[1];
            for (int64_t i = 0; i < k; ++i) w[i] = sign_of(w[i]) * fminf(fmaxf(fabsf(w[i]), low), high);
        }
        sample_stats<false>(w, k, nullptr, mean, rstd);
        if (a->update) {
            const float m = *mean;
            for (int64_t i = 0; i < k; ++i) {
                const float mag = fabsf(w[i] - m);
                memcpy(&keys[(size_t)i], &mag, sizeof mag);
            }
            const uint32_t median = select_from(keys.data(), k, (k - 1) / 2, 0, 0, keys.data() + k);
            for (int64_t i = 0; i < k; ++i) code[i] = keys[(size_t)i] > median ? 1.0f : 0.0f;
        }
        for (int64_t i = 0; i < k; ++i) wb[i] = 2.0f * code[i] - 1.0f;
    }
}

/* Sample s, with y = (x - mean) * rstd (centered) or x * rstd, and g' = g * max(0, 2 - 2|y|)
 * (ApproxSign) or g' = g * sign(y) (sign_slope: the gradient of |y|, SiMaN's weights):
 *   centered: dx = rstd * (g' - sum(g')/n - y * sum(g' y)/(n - 1))
 *   scaled:   dx = rstd * (g' - (x - mean) * rstd * sum(g' y)/(n - 1))          */
template <int SLOPE>
__attribute__((always_inline)) inline void backward_samples(const ActArgs* a, int64_t s0, int64_t s1) {
    const int64_t n = a->n, nv = n / LANES * LANES;
    for (int64_t s = s0; s < s1; ++s) {
        const float* x = a->x + BNN_AT("act x", s * n, n, a->x_len);
        const float* g = a->grad + BNN_AT("act grad", s * n, n, a->x_len);
        float* dx = a->out + BNN_AT("act dx", s * n, n, a->x_len);
        const float m = a->mean[BNN_AT("act mean", s, 1, a->N)];
        const float r = a->rstd[BNN_AT("act rstd", s, 1, a->N)];
        const float shift = a->centered ? m : 0.0f;
        const float* tri = a->triangle;
        const v8f vshift = splat(shift), vr = splat(r), vm = splat(m);
        Sum sg, sgy;
        for (int64_t b = 0; b < nv; b += BLOCK) {
            const int64_t e = b + BLOCK < nv ? b + BLOCK : nv;
            for (int64_t i = b; i < e; i += LANES) {
                const v8f y = (load(x + i) - vshift) * vr;
                const v8f gp = load(g + i) * slope<SLOPE>(y, tri);
                sg.part += gp;
                sgy.part += gp * y;
            }
            sg.flush();
            sgy.flush();
        }
        for (int64_t i = nv; i < n; ++i) {
            const float y = (x[i] - shift) * r;
            const float gp = g[i] * slope<SLOPE>(y, tri);
            sg.total += (double)gp;
            sgy.total += (double)gp * (double)y;
        }
        const float proj = (float)(sgy.total / (double)(n - 1));
        if (a->centered) {
            const float mean_gp = (float)(sg.total / (double)n);
            const v8f vmg = splat(mean_gp), vp = splat(proj);
            for (int64_t i = 0; i < nv; i += LANES) {
                const v8f y = (load(x + i) - vm) * vr;
                store(dx + i, vr * (load(g + i) * slope<SLOPE>(y, tri) - vmg - y * vp));
            }
            for (int64_t i = nv; i < n; ++i) {
                const float y = (x[i] - m) * r;
                dx[i] = r * (g[i] * slope<SLOPE>(y, tri) - mean_gp - y * proj);
            }
        } else {
            const v8f vp = splat(proj);
            for (int64_t i = 0; i < nv; i += LANES) {
                const v8f v = load(x + i);
                store(dx + i, vr * (load(g + i) * slope<SLOPE>(v * vr, tri) - (v - vm) * vr * vp));
            }
            for (int64_t i = nv; i < n; ++i) {
                const float y = x[i] * r;
                dx[i] = r * (g[i] * slope<SLOPE>(y, tri) - (x[i] - m) * r * proj);
            }
        }
    }
}

BNN_CLONES void act_backward_samples(const ActArgs* a, int64_t s0, int64_t s1) {
    if (a->triangle) backward_samples<SLOPE_TRIANGLE>(a, s0, s1);
    else if (a->sign_slope) backward_samples<SLOPE_SIGN>(a, s0, s1);
    else backward_samples<SLOPE_APPROX>(a, s0, s1);
}

/* An integer y from its product v = y * alpha, given inv = 1 / alpha: v * inv is within three
 * float32 roundings of y, under 0.375 for |y| < 2^21, and adding then subtracting 1.5 * 2^23
 * rounds it to the nearest integer (round-to-nearest, no fast-math; exact for |t| < 2^22). */
__attribute__((always_inline)) inline float unscale(float v, float inv) {
    const float t = v * inv;
    return (t + 12582912.0f) - 12582912.0f;
}
__attribute__((always_inline)) inline v8f unscale(v8f v, v8f inv) {
    const v8f magic = splat(12582912.0f);
    return (v * inv + magic) - magic;
}

template <bool SCALED, class T>
__attribute__((always_inline)) inline T conv_output(T v, T inv) { return SCALED ? unscale(v, inv) : v; }

/* Backward of y * alpha (alpha per channel) for samples [s0, s1): dy = g * alpha, and each
 * sample's per-channel sum of g * y into partial[s][c] (double), summed over the samples in order
 * by the binding. NCHW: each channel's H*W values are contiguous; NHWC: channels are innermost.
 * SCALED: the saved tensor is y * alpha (a packed conv's output), y recovered exactly. */
template <bool SCALED>
__attribute__((always_inline)) inline void scale_backward(const ScaleArgs* a, int64_t s0, int64_t s1) {
    const int64_t C = a->C, P = a->P, n = C * P;
    for (int64_t s = s0; s < s1; ++s) {
        const float* g = a->grad + BNN_AT("scale grad", s * n, n, a->len);
        const float* y = a->y + BNN_AT("scale y", s * n, n, a->len);
        float* dy = a->dy + BNN_AT("scale dy", s * n, n, a->len);
        double* part = a->partial + BNN_AT("scale partial", s * C, C, a->N * C);
        if (!a->nhwc) {
            const int64_t pv = P / LANES * LANES;
            for (int64_t c = 0; c < C; ++c) {
                const float al = a->alpha[BNN_AT("scale alpha", c, 1, C)];
                const float inv = SCALED ? a->inv_alpha[BNN_AT("scale 1/alpha", c, 1, C)] : 1.0f;
                const v8f va = splat(al), vinv = splat(inv);
                const float* gc = g + c * P;
                const float* yc = y + c * P;
                float* dc = dy + c * P;
                Sum sum;
                for (int64_t b = 0; b < pv; b += BLOCK) {
                    const int64_t e = b + BLOCK < pv ? b + BLOCK : pv;
                    for (int64_t i = b; i < e; i += LANES) {
                        const v8f vg = load(gc + i);
                        store(dc + i, vg * va);
                        sum.part += vg * conv_output<SCALED>(load(yc + i), vinv);
                    }
                    sum.flush();
                }
                for (int64_t i = pv; i < P; ++i) {
                    dc[i] = gc[i] * al;
                    sum.total += (double)(gc[i] * conv_output<SCALED>(yc[i], inv));
                }
                part[c] = sum.total;
            }
        } else {
            /* float partials per channel, flushed into double every 32 pixels */
            for (int64_t c = 0; c < C; ++c) part[c] = 0;
            const int64_t FLUSH = 32;
            for (int64_t p0 = 0; p0 < P; p0 += FLUSH) {
                const int64_t p1 = p0 + FLUSH < P ? p0 + FLUSH : P;
                for (int64_t c0 = 0; c0 < C; c0 += LANES) {
                    if (c0 + LANES <= C) {
                        const v8f va = load(a->alpha + BNN_AT("scale alpha", c0, LANES, C));
                        const v8f vinv = SCALED ? load(a->inv_alpha + BNN_AT("scale 1/alpha", c0, LANES, C)) : va;
                        v8f sum = splat(0.0f);
                        for (int64_t p = p0; p < p1; ++p) {
                            const v8f vg = load(g + BNN_AT("scale pixel", p * C + c0, LANES, n));
                            store(dy + p * C + c0, vg * va);
                            sum += vg * conv_output<SCALED>(load(y + p * C + c0), vinv);
                        }
                        for (int j = 0; j < LANES; ++j) part[c0 + j] += (double)sum[j];
                    } else {
                        for (int64_t c = c0; c < C; ++c) {
                            float sum = 0;
                            const float inv = SCALED ? a->inv_alpha[c] : 1.0f;
                            for (int64_t p = p0; p < p1; ++p) {
                                dy[p * C + c] = g[p * C + c] * a->alpha[c];
                                sum += g[p * C + c] * conv_output<SCALED>(y[p * C + c], inv);
                            }
                            part[c] += (double)sum;
                        }
                    }
                }
            }
        }
    }
}

BNN_CLONES void scale_backward_samples(const ScaleArgs* a, int64_t s0, int64_t s1) {
    if (a->scaled) scale_backward<true>(a, s0, s1);
    else scale_backward<false>(a, s0, s1);
}

/* Rows [o0, o1) of a weight tensor's signs, packed (WeightPackArgs). */
void pack_weight_rows(const WeightPackArgs* a, int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
        int64_t bad = 0;
        for (int64_t k = 0; k < a->K; ++k) {
            for (int64_t w = 0; w < a->Cw; ++w) {
                uint64_t word = 0;
                const int64_t c1 = a->Cg < 64 * w + 64 ? a->Cg : 64 * w + 64;
                for (int64_t c = 64 * w; c < c1; ++c) {
                    const float v = a->w[BNN_AT("weight", o * a->so + c * a->sc + k * a->sk, 1, a->w_len)];
                    word |= (uint64_t)(v < 0.0f) << (c - 64 * w);
                    bad += v != 1.0f && v != -1.0f;
                }
                a->out[BNN_AT("weight words", (o * a->K + k) * a->Cw + w, 1, a->out_len)] = word;
            }
        }
        a->bad[BNN_AT("weight bad counts", o, 1, a->O)] = bad;
    }
}

/* Samples [s0, s1) of PoolArgs: a sample's Ho x Wo x C results are computed channels-last
 * (vectorized over the channels), then each channel's plane is stored in one sequential sweep
 * (a row at a time, 64 bytes per plane, paid a read for ownership per line and ran at half the
 * speed). The arguments are copied to restrict-qualified locals: with -fno-strict-aliasing
 * every store to the buffer would otherwise reload them, and the loops would not vectorize. */
__attribute__((always_inline)) inline void pool_samples_body(const PoolArgs* a, int64_t s0, int64_t s1) {
    const int64_t C = a->C, Wo = a->Wo, Ho = a->Ho, H = a->H, W = a->W, kh = a->kh, kw = a->kw, sh = a->sh, sw = a->sw;
    const int64_t P = Ho * Wo;
    const float* __restrict in = a->in;
    const float* __restrict scale = a->scale;
    const float* __restrict bias = a->bias;
    const float* __restrict slope = a->nonlin == 1 ? a->nonlin_p : nullptr;
    const int64_t nonlin = a->nonlin;
    const float lo = nonlin == 2 ? a->nonlin_p[0] : 0.0f, hi = nonlin == 2 ? a->nonlin_p[1] : 0.0f;
    /* rows of C + 16 floats: with C a power of two, the transposing sweep's reads down a column,
     * rows a multiple of 512 bytes apart, would fall into 8 of L1's 64 sets and miss every time */
    const int64_t Cs = C + 16;
    std::vector<float> buf((size_t)(P * Cs));
    float* __restrict res = buf.data();
    if (nonlin == 1) (void)BNN_AT("pool PReLU slopes", 0, C, a->nonlin_len);
    for (int64_t n = s0; n < s1; ++n) {
        for (int64_t p = 0; p < P; ++p) {
            const int64_t oy = p / Wo, ox = p % Wo;
            float* __restrict m = res + p * Cs;
            for (int64_t c = 0; c < C; ++c) m[c] = -INFINITY;
            for (int64_t ky = 0; ky < kh; ++ky)
                for (int64_t kx = 0; kx < kw; ++kx) {
                    const int64_t i = ((n * H + oy * sh + ky) * W + ox * sw + kx) * C;
                    const float* __restrict v = in + BNN_AT("pool input", i, C, a->in_len);
                    for (int64_t c = 0; c < C; ++c) {
                        const float x = v[c], cur = m[c];
                        m[c] = (x > cur) | (x != x) ? x : cur;
                    }
                }
            if (scale)
                for (int64_t c = 0; c < C; ++c) m[c] = fmaf(m[c], scale[c], bias[c]);
            if (nonlin == 1)
                for (int64_t c = 0; c < C; ++c) m[c] = bnn_prelu(m[c], slope[c]);
            if (nonlin == 2)
                for (int64_t c = 0; c < C; ++c) m[c] = bnn_hardtanh(m[c], lo, hi);
        }
        float* __restrict dst = a->out + BNN_AT("pool output", n * C * P, C * P, a->out_len);
        for (int64_t c = 0; c < C; ++c)
            for (int64_t p = 0; p < P; ++p) dst[c * P + p] = res[p * Cs + c];
    }
}

/* An AVX2 + FMA copy chosen at run time: target_clones("avx2") would leave fmaf a library call in
 * the loop, and an "arch=" clone is chosen by CPU model, not by its features. */
#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx2,fma"))) static void pool_samples_avx2(const PoolArgs* a, int64_t s0, int64_t s1) {
    pool_samples_body(a, s0, s1);
}
#endif

void pool_samples(const PoolArgs* a, int64_t s0, int64_t s1) {
#if defined(__x86_64__) || defined(__i386__)
    static const bool avx2 = bnn_cpu_has_avx2();
    if (avx2) {
        pool_samples_avx2(a, s0, s1);
        return;
    }
#endif
    pool_samples_body(a, s0, s1);
}

template <int NL>
__attribute__((always_inline)) inline float bn_act(float x, float scale, float bias, float slope, float lo, float hi) {
    const float v = fmaf(x, scale, bias);
    return NL == 1 ? bnn_prelu(v, slope) : NL == 2 ? bnn_hardtanh(v, lo, hi) : v;
}

template <int NL>
__attribute__((always_inline)) inline void bn_pool_rows_body(const BnPoolArgs* a, int64_t r0, int64_t r1) {
    const int64_t C = a->C, H = a->H, W = a->W, Ho = a->Ho, Wo = a->Wo, kh = a->kh, kw = a->kw;
    const int64_t sh = a->sh, sw = a->sw, ph = a->ph, pw = a->pw;
    const float* __restrict in = a->in;
    const float* __restrict scale = a->scale;
    const float* __restrict bias = a->bias;
    const float* __restrict slopes = NL == 1 ? a->nonlin_p + BNN_AT("stem PReLU slopes", 0, C, a->nonlin_len) : nullptr;
    const float lo = NL == 2 ? a->nonlin_p[0] : 0.0f, hi = NL == 2 ? a->nonlin_p[1] : 0.0f;
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / Ho, oy = r % Ho, y0 = oy * sh - ph;
        const int64_t ky0 = y0 < 0 ? -y0 : 0, ky1 = H - y0 < kh ? H - y0 : kh;
        float* __restrict orow = a->out + BNN_AT("stem pool output", r * Wo * C, Wo * C, a->out_len);
        for (int64_t ox = 0; ox < Wo; ++ox) {
            const int64_t x0 = ox * sw - pw;
            const int64_t kx0 = x0 < 0 ? -x0 : 0, kx1 = W - x0 < kw ? W - x0 : kw;
            float* __restrict m = orow + ox * C;
            for (int64_t c = 0; c < C; ++c) m[c] = -INFINITY;
            for (int64_t ky = ky0; ky < ky1; ++ky)
                for (int64_t kx = kx0; kx < kx1; ++kx) {
                    if (a->in_nchw) {
                        const int64_t i = (n * C * H + y0 + ky) * W + x0 + kx;  /* channel c at i + c * H * W */
                        (void)BNN_AT("stem pool input", i, (C - 1) * H * W + 1, a->in_len);
                        for (int64_t c = 0; c < C; ++c) {
                            const float v = bn_act<NL>(in[i + c * H * W], scale[c], bias[c], NL == 1 ? slopes[c] : 0.0f, lo, hi);
                            m[c] = (v > m[c]) | (v != v) ? v : m[c];
                        }
                    } else {
                        const float* __restrict x = in + BNN_AT("stem pool input", ((n * H + y0 + ky) * W + x0 + kx) * C, C, a->in_len);
                        for (int64_t c = 0; c < C; ++c) {
                            const float v = bn_act<NL>(x[c], scale[c], bias[c], NL == 1 ? slopes[c] : 0.0f, lo, hi);
                            m[c] = (v > m[c]) | (v != v) ? v : m[c];
                        }
                    }
                }
        }
    }
}

__attribute__((always_inline)) inline void bn_pool_rows_any(const BnPoolArgs* a, int64_t r0, int64_t r1) {
    if (a->nonlin == 1)
        bn_pool_rows_body<1>(a, r0, r1);
    else if (a->nonlin == 2)
        bn_pool_rows_body<2>(a, r0, r1);
    else
        bn_pool_rows_body<0>(a, r0, r1);
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx2,fma"))) static void bn_pool_rows_avx2(const BnPoolArgs* a, int64_t r0, int64_t r1) {
    bn_pool_rows_any(a, r0, r1);
}
#endif

void bn_pool_rows(const BnPoolArgs* a, int64_t r0, int64_t r1) {
#if defined(__x86_64__) || defined(__i386__)
    static const bool avx2 = bnn_cpu_has_avx2();
    if (avx2) {
        bn_pool_rows_avx2(a, r0, r1);
        return;
    }
#endif
    bn_pool_rows_any(a, r0, r1);
}

/* Output planes [p0, p1) of AvgPoolArgs (index n * (C + 2 pad) + channel) for the forward, input
 * planes (n * C + c) for the backward. PyTorch's NCHW kernel reads each window with a scalar
 * loop (about 2 GB/s here); these loops vectorize across a row, with the window's size a
 * constant K (2: every published shortcut), or 0 for any k. */
template <int K>
__attribute__((always_inline)) inline void avg_pool_body(const AvgPoolArgs* a, int64_t p0, int64_t p1) {
    const int64_t H = a->H, W = a->W, k = K ? K : a->k, Ho = H / k, Wo = W / k, Co = a->C + 2 * a->pad;
    const float div = (float)(k * k);
    for (int64_t p = p0; p < p1; ++p) {
        if (!a->backward) {
            const int64_t n = p / Co, c = p % Co - a->pad;
            float* __restrict o = a->out + BNN_AT("avg pool output", p * Ho * Wo, Ho * Wo, a->out_len);
            if (c < 0 || c >= a->C) {
                for (int64_t i = 0; i < Ho * Wo; ++i) o[i] = 0.0f;
                continue;
            }
            const float* __restrict x = a->x + BNN_AT("avg pool input", (n * a->C + c) * H * W, H * W, a->x_len);
            for (int64_t oy = 0; oy < Ho; ++oy) {
                float* __restrict orow = o + oy * Wo;
                for (int64_t ox = 0; ox < Wo; ++ox) orow[ox] = 0.0f;
                for (int64_t ky = 0; ky < k; ++ky) {
                    const float* __restrict xrow = x + (oy * k + ky) * W;
                    for (int64_t kx = 0; kx < k; ++kx)
                        for (int64_t ox = 0; ox < Wo; ++ox) orow[ox] += xrow[ox * k + kx];
                }
                for (int64_t ox = 0; ox < Wo; ++ox) orow[ox] = orow[ox] / div;
            }
        } else {
            const int64_t n = p / a->C, c = p % a->C;
            const float* __restrict g = a->x + BNN_AT("avg pool grad", (n * Co + c + a->pad) * Ho * Wo, Ho * Wo, a->x_len);
            float* __restrict d = a->out + BNN_AT("avg pool input grad", p * H * W, H * W, a->out_len);
            for (int64_t y = 0; y < H; ++y) {
                float* __restrict drow = d + y * W;
                for (int64_t x = 0; x < W; ++x) drow[x] = 0.0f;
                if (y >= Ho * k) continue;
                const float* __restrict grow = g + (y / k) * Wo;
                for (int64_t kx = 0; kx < k; ++kx)
                    for (int64_t ox = 0; ox < Wo; ++ox) drow[ox * k + kx] = 0.0f + grow[ox] / div;
            }
        }
    }
}

BNN_CLONES void avg_pool_planes(const AvgPoolArgs* a, int64_t p0, int64_t p1) {
    if (a->k == 2) avg_pool_body<2>(a, p0, p1);
    else avg_pool_body<0>(a, p0, p1);
}

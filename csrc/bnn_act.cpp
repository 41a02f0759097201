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

#include "bnn_kernels.h"

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

/* Sample s: mean, rstd = 1/sqrt(var + eps) (unbiased var) and out = sign(x - mean) (centered) or
 * sign(x). The sums are taken about x[0] so that a large mean does not cancel the variance away. */
BNN_CLONES void act_forward_samples(const ActArgs* a, int64_t s0, int64_t s1) {
    const int64_t n = a->n, nv = n / LANES * LANES;
    for (int64_t s = s0; s < s1; ++s) {
        const float* x = a->x + BNN_AT("act x", s * n, n, a->x_len);
        float* out = a->out + BNN_AT("act out", s * n, n, a->x_len);
        const float shift = x[0];
        const v8f vshift = splat(shift);
        Sum s1, s2;
        for (int64_t b = 0; b < nv; b += BLOCK) {
            const int64_t e = b + BLOCK < nv ? b + BLOCK : nv;
            for (int64_t i = b; i < e; i += LANES) {
                const v8f v = load(x + i), d = v - vshift;
                s1.part += d;
                s2.part += d * d;
                if (!a->centered) store(out + i, sign_of(v));
            }
            s1.flush();
            s2.flush();
        }
        for (int64_t i = nv; i < n; ++i) {
            const double d = (double)x[i] - shift;
            s1.total += d;
            s2.total += d * d;
            if (!a->centered) out[i] = sign_of(x[i]);
        }
        double var = n > 1 ? (s2.total - s1.total * s1.total / (double)n) / (double)(n - 1) : NAN;
        if (var < 0) var = 0;
        const float mean = (float)((double)shift + s1.total / (double)n);
        a->mean[BNN_AT("act mean", s, 1, a->N)] = mean;
        a->rstd[BNN_AT("act rstd", s, 1, a->N)] = (float)(1.0 / sqrt(var + EPS));
        if (!a->centered) continue;
        const v8f vmean = splat(mean);
        for (int64_t i = 0; i < nv; i += LANES) store(out + i, sign_of(load(x + i) - vmean));
        for (int64_t i = nv; i < n; ++i) out[i] = sign_of(x[i] - mean);
    }
}

/* Sample s, with y = (x - mean) * rstd (centered) or x * rstd, g' = g * max(0, 2 - 2|y|):
 *   centered: dx = rstd * (g' - sum(g')/n - y * sum(g' y)/(n - 1))
 *   scaled:   dx = rstd * (g' - (x - mean) * rstd * sum(g' y)/(n - 1))          */
BNN_CLONES void act_backward_samples(const ActArgs* a, int64_t s0, int64_t s1) {
    const int64_t n = a->n, nv = n / LANES * LANES;
    for (int64_t s = s0; s < s1; ++s) {
        const float* x = a->x + BNN_AT("act x", s * n, n, a->x_len);
        const float* g = a->grad + BNN_AT("act grad", s * n, n, a->x_len);
        float* dx = a->out + BNN_AT("act dx", s * n, n, a->x_len);
        const float m = a->mean[BNN_AT("act mean", s, 1, a->N)];
        const float r = a->rstd[BNN_AT("act rstd", s, 1, a->N)];
        const float shift = a->centered ? m : 0.0f;
        const v8f vshift = splat(shift), vr = splat(r), vm = splat(m);
        Sum sg, sgy;
        for (int64_t b = 0; b < nv; b += BLOCK) {
            const int64_t e = b + BLOCK < nv ? b + BLOCK : nv;
            for (int64_t i = b; i < e; i += LANES) {
                const v8f y = (load(x + i) - vshift) * vr;
                const v8f gp = load(g + i) * surrogate(y);
                sg.part += gp;
                sgy.part += gp * y;
            }
            sg.flush();
            sgy.flush();
        }
        for (int64_t i = nv; i < n; ++i) {
            const float y = (x[i] - shift) * r;
            const float gp = g[i] * surrogate(y);
            sg.total += (double)gp;
            sgy.total += (double)gp * (double)y;
        }
        const float proj = (float)(sgy.total / (double)(n - 1));
        if (a->centered) {
            const float mean_gp = (float)(sg.total / (double)n);
            const v8f vmg = splat(mean_gp), vp = splat(proj);
            for (int64_t i = 0; i < nv; i += LANES) {
                const v8f y = (load(x + i) - vm) * vr;
                store(dx + i, vr * (load(g + i) * surrogate(y) - vmg - y * vp));
            }
            for (int64_t i = nv; i < n; ++i) {
                const float y = (x[i] - m) * r;
                dx[i] = r * (g[i] * surrogate(y) - mean_gp - y * proj);
            }
        } else {
            const v8f vp = splat(proj);
            for (int64_t i = 0; i < nv; i += LANES) {
                const v8f v = load(x + i);
                store(dx + i, vr * (load(g + i) * surrogate(v * vr) - (v - vm) * vr * vp));
            }
            for (int64_t i = nv; i < n; ++i) {
                const float y = x[i] * r;
                dx[i] = r * (g[i] * surrogate(y) - (x[i] - m) * r * proj);
            }
        }
    }
}

/* Backward of y * alpha (alpha per channel) for samples [s0, s1): dy = g * alpha, and each
 * sample's per-channel sum of g * y into partial[s][c] (double), summed over the samples in order
 * by the binding. NCHW: each channel's H*W values are contiguous; NHWC: channels are innermost. */
BNN_CLONES void scale_backward_samples(const ScaleArgs* a, int64_t s0, int64_t s1) {
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
                const v8f va = splat(al);
                const float* gc = g + c * P;
                const float* yc = y + c * P;
                float* dc = dy + c * P;
                Sum sum;
                for (int64_t b = 0; b < pv; b += BLOCK) {
                    const int64_t e = b + BLOCK < pv ? b + BLOCK : pv;
                    for (int64_t i = b; i < e; i += LANES) {
                        const v8f vg = load(gc + i);
                        store(dc + i, vg * va);
                        sum.part += vg * load(yc + i);
                    }
                    sum.flush();
                }
                for (int64_t i = pv; i < P; ++i) {
                    dc[i] = gc[i] * al;
                    sum.total += (double)(gc[i] * yc[i]);
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
                        v8f sum = splat(0.0f);
                        for (int64_t p = p0; p < p1; ++p) {
                            const v8f vg = load(g + BNN_AT("scale pixel", p * C + c0, LANES, n));
                            store(dy + p * C + c0, vg * va);
                            sum += vg * load(y + p * C + c0);
                        }
                        for (int j = 0; j < LANES; ++j) part[c0 + j] += (double)sum[j];
                    } else {
                        for (int64_t c = c0; c < C; ++c) {
                            float sum = 0;
                            for (int64_t p = p0; p < p1; ++p) {
                                dy[p * C + c] = g[p * C + c] * a->alpha[c];
                                sum += g[p * C + c] * y[p * C + c];
                            }
                            part[c] += (double)sum;
                        }
                    }
                }
            }
        }
    }
}

/* The nonlinearities the kernels apply to their results, with PyTorch's CPU formulas so that the
 * bits are the same: PReLU v > 0 ? v : slope * v, Hardtanh v < lo ? lo : v > hi ? hi : v (NaN and
 * -0.0 pass through both). Both sides are computed unconditionally: a conditional multiply or
 * compare may raise a floating-point exception, so the compiler would not vectorize a loop over
 * them, and it sinks a ternary's multiply back into a branch: hence PReLU's bitwise select. */
#ifndef BNN_NONLIN_H
#define BNN_NONLIN_H

#include <stdint.h>
#include <string.h>

static inline float bnn_prelu(float v, float slope) {
    const float m = slope * v;
    const uint32_t keep = 0u - (uint32_t)(v > 0.0f);
    uint32_t vb, mb;
    memcpy(&vb, &v, 4);
    memcpy(&mb, &m, 4);
    vb = (vb & keep) | (mb & ~keep);
    memcpy(&v, &vb, 4);
    return v;
}

static inline float bnn_hardtanh(float v, float lo, float hi) {
    const bool l = v < lo, g = v > hi;
    return l ? lo : (g ? hi : v);
}

#endif

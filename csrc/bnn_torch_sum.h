/* The float32 sum of n floats added in the order PyTorch's CPU `sum` adds them (ATen's cascade
 * sum, serial, 8 lanes), so that `sum / n` is, to the last bit, PyTorch's `mean` of a sample
 * stored as these n floats. SiMaN binarizes activations at that mean: a threshold one ulp off
 * flips every activation between the two values, and the network's output with them.
 *
 * The order, for groups of 4 vectors of 8 lanes (vector v = x[8v .. 8v+8)):
 *   - each of the 4 rows r keeps 8 lane sums at each of 4 levels; group g adds its vector r to
 *     level 0 of row r;
 *   - after every `step` groups (step = 2^p, p = max(4, ceil(log2 groups) / 4)), level 0 is added
 *     to level 1 and cleared, then level 1 to level 2 if the group count is a multiple of step^2,
 *     and level 2 to level 3 if it is a multiple of step^3;
 *   - groups after the last whole step go to level 0; then levels 1, 2, 3 are added to level 0;
 *   - the vectors after the last whole group go to row 0, then rows 1, 2, 3 are added to row 0;
 *   - a scalar total adds the floats after the last whole vector, then the 8 lanes of row 0.
 * Only lane-wise float additions, so any instruction set gives the same bits. n >= 8 (PyTorch
 * sums shorter rows another way); bnnkit.deploy._native checks the match against torch.mean
 * before it relies on it. Include once per instruction-set file, with BNN_TORCH_SUM_NAME set. */
#include <stdint.h>

#ifndef BNN_TORCH_SUM_TYPES
#define BNN_TORCH_SUM_TYPES
/* one vector of PyTorch's sum: 8 lanes, read from any float address */
typedef float bnn_v8f __attribute__((vector_size(32), aligned(4)));
#define BNN_V8F_AT(p) (*(const bnn_v8f*)(p))
#endif

/* Each `step` groups form a block whose level-0 sum starts from zero, so blocks are independent
 * chains of additions: four are summed side by side (16 vectors in flight instead of 4, which a
 * single chain's add latency would leave idle), then passed up the levels in order. */
extern "C" float BNN_TORCH_SUM_NAME(const float* x, int64_t n) {
    enum { L = 8, ROWS = 4, LEVELS = 4, SIDE = 4 };
    const int64_t vecs = n / L, groups = vecs / ROWS;
    const int64_t ceil_log2 = groups <= 2 ? 1 : 64 - __builtin_clzll((unsigned long long)(groups - 1));
    const int64_t power = ceil_log2 / LEVELS > 4 ? ceil_log2 / LEVELS : 4;
    const int64_t step = (int64_t)1 << power, mask = step - 1;
    const bnn_v8f zero = {0, 0, 0, 0, 0, 0, 0, 0};
    bnn_v8f acc[LEVELS][ROWS];  /* level 0 is the block being summed */
    for (int lev = 0; lev < LEVELS; ++lev)
        for (int r = 0; r < ROWS; ++r) acc[lev][r] = zero;
    int64_t g = 0;
    while (g + step <= groups) {
        int64_t side = (groups - g) / step;
        if (side > SIDE) side = SIDE;
        bnn_v8f blk[SIDE][ROWS];
        for (int b = 0; b < SIDE; ++b)
            for (int r = 0; r < ROWS; ++r) blk[b][r] = zero;
        if (side == SIDE) {
            for (int64_t j = 0; j < step; ++j)
                for (int b = 0; b < SIDE; ++b) {
                    const float* v = x + (g + b * step + j) * (ROWS * L);
                    for (int r = 0; r < ROWS; ++r) blk[b][r] += BNN_V8F_AT(v + r * L);
                }
        } else {
            for (int b = 0; b < side; ++b)
                for (int64_t j = 0; j < step; ++j) {
                    const float* v = x + (g + b * step + j) * (ROWS * L);
                    for (int r = 0; r < ROWS; ++r) blk[b][r] += BNN_V8F_AT(v + r * L);
                }
        }
        for (int b = 0; b < side; ++b) {
            g += step;
            for (int r = 0; r < ROWS; ++r) acc[0][r] = blk[b][r];
            for (int lev = 1; lev < LEVELS; ++lev) {
                for (int r = 0; r < ROWS; ++r) {
                    acc[lev][r] += acc[lev - 1][r];
                    acc[lev - 1][r] = zero;
                }
                if (g & (mask << (lev * power))) break;
            }
        }
    }
    for (; g < groups; ++g)
        for (int r = 0; r < ROWS; ++r) acc[0][r] += BNN_V8F_AT(x + g * (ROWS * L) + r * L);
    for (int lev = 1; lev < LEVELS; ++lev)
        for (int r = 0; r < ROWS; ++r) acc[0][r] += acc[lev][r];
    for (int64_t v = groups * ROWS; v < vecs; ++v) acc[0][0] += BNN_V8F_AT(x + v * L);
    for (int r = 1; r < ROWS; ++r) acc[0][0] += acc[0][r];
    float total = 0.0f;
    for (int64_t k = vecs * L; k < n; ++k) total += x[k];
    for (int l = 0; l < L; ++l) total += acc[0][0][l];
    return total;
}

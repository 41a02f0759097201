// The real-valued operations of a .bnn graph, with PyTorch's CPU semantics and, where cheap, its
// float32 rounding order (reductions, pooling, BatchNorm's fma).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "core.hpp"

namespace bnn {

struct Args {
    std::vector<Value> pos;
    std::vector<std::pair<std::string, Value>> kw;
};

// A call or method node's implementation: its arguments materialized (refs replaced by values).
typedef Value (*OpFn)(Args& a);

// nullptr for a name libbnn does not provide
OpFn find_function(const std::string& fn);
OpFn find_method(const std::string& method);

// threads for the parallel loops of the ops below (set by a run)
void set_op_threads(int threads);
int op_threads();

// F.conv2d of float32 NCHW x with weight [O, C/groups, kh, kw] (im2col + Eigen GEMM; depthwise
// and other grouped convs with few channels a group by direct loops); bias may be null
Tensor conv2d(const Tensor& x, const float* w, int64_t O, int64_t Cg, int64_t kh, int64_t kw, const float* bias,
              const int64_t stride[2], const int64_t pad[2], const int64_t dil[2], int64_t groups);
// F.linear of x [..., in] with weight [out, in]
Tensor linear(const Tensor& x, const float* w, int64_t out_f, int64_t in_f, const float* bias);
// y = fma(x, a[c], b[c]) over channel dim 1 (eval-mode BatchNorm, as PyTorch's CPU kernel rounds it)
Tensor channel_fma(const Tensor& x, const std::vector<float>& a, const std::vector<float>& b);
// in place on y [N, O, P]: y = fma(y * pre[o], scale[o], bias[o]), a binary conv's epilogue as the
// kernels round it (their prescale, then the folded BatchNorm)
void conv_epilogue(float* y, int64_t N, int64_t O, int64_t P, const float* pre, const float* scale, const float* bias);
Tensor prelu(const Tensor& x, const std::vector<float>& w);
// PyTorch's float32 sum of n contiguous floats (its cascade order for n >= 8)
float torch_sum(const float* x, int64_t n);

}  // namespace bnn

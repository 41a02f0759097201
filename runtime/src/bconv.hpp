// Binary convolutions (bconv, wconv nodes) on csrc's XOR-popcount kernels: the kernel buffers
// prepared as bnnkit/native/kernels.py's PackedConv prepares them, and the instruction set chosen
// at run time.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core.hpp"

namespace bnn {

// The instruction set in use: $BNN_ISA (portable, avx2, avx512, neon) if set, else the best this
// CPU runs. Throws Error for an unknown or unavailable one.
const char* isa_name();
void init_isa();

struct BinaryConv {
    int64_t Cin = 0, O = 0, G = 1, Cg = 0, Og = 0, OBg = 0, Cw = 0, K = 0;
    int64_t kh = 1, kw = 1, stride[2] = {1, 1}, pad[2] = {0, 0}, dil[2] = {1, 1};
    bool center = false, real_input = false;  // real_input: wconv (binary weights, real activations)
    std::vector<uint64_t> w_bits;             // the file's [O][K][Cw]
    std::vector<int32_t> zeros;               // [Z][4] (o, c, ky, kx) of weights exactly 0
    std::vector<float> prescale, scale, bias; // [O]

    // prepare the kernel buffers (after the fields above are set and checked)
    void prepare();
    // the node's output for float32 NCHW x
    Tensor run(const Tensor& x, int threads) const;
    // output spatial size, or throws if the input is smaller than the kernel
    std::pair<int64_t, int64_t> out_size(int64_t H, int64_t W) const;

private:
    std::vector<uint64_t> wk_;               // [G][OBg][K][Cw][8]
    std::vector<int32_t> corr_;              // [G][OBg][K][8]
    std::vector<int8_t> tie_w_;              // [G][OBg][K][Cg][8]
    std::vector<float> pre_, scale_, bias_;  // [G][OBg*8]
    std::vector<float> ones_, zero_;         // raw epilogue (zero weights: fixed up, then the epilogue)
    std::vector<float> wfloat_;              // wconv: the weights as float32 [O][Cg][kh][kw]
    struct Borders { std::vector<int32_t> rows, cols, table; int64_t ncols; };
    mutable std::map<std::pair<int64_t, int64_t>, Borders> borders_;
    const Borders& borders(int64_t H, int64_t W) const;
};

}  // namespace bnn

// libbnn's values: float32 tensors (rank 0 to 4, contiguous, logical NCHW order) and the Python
// values a graph passes between nodes (int, float, bool, None, str, tuple, list, slice).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace bnn {

// A problem of the file or of the input; the C API turns it into an error code and one line.
struct Error : std::runtime_error {
    int code;
    Error(int c, const std::string& m) : std::runtime_error(m), code(c) {}
};

[[noreturn]] inline void fail_run(const std::string& m) { throw Error(4, m); }

// a*b, refused (throws) on overflow or a negative factor
inline int64_t mul_checked(int64_t a, int64_t b, const char* what) {
    int64_t r;
    if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r)) throw Error(3, std::string(what) + " overflows 64 bits");
    return r;
}

// The most floats one buffer of a run may hold: BNN_MAX_TENSOR_MB (default 4096) caps it, and
// within that a run of input x gets max(2^26, 1024 * x.numel()) (set_run_limit), so that a file
// with absurd shapes fails with a clear error instead of exhausting memory.
inline int64_t& run_limit_floats() {
    thread_local int64_t limit = int64_t(1) << 30;
    return limit;
}
inline int64_t max_tensor_floats() {
    const char* env = getenv("BNN_MAX_TENSOR_MB");
    long long mb = env && *env ? atoll(env) : 4096;
    if (mb < 1 || mb > (1LL << 24)) mb = 4096;
    return (int64_t)mb << 18;  // MiB of float32
}
inline void set_run_limit(int64_t input_floats) {
    const int64_t floor = int64_t(1) << 26, scaled = input_floats > (int64_t(1) << 40) ? (int64_t(1) << 50) : 1024 * input_floats;
    run_limit_floats() = std::min(max_tensor_floats(), std::max(floor, scaled));
}
// refuses (throws) a buffer of n elements of `size` bytes over the run's limit
inline void check_alloc(int64_t n, int64_t size, const char* what) {
    if (n < 0 || n > run_limit_floats() * 4 / size)
        throw Error(4, std::string(what) + " of " + std::to_string(n) + " elements exceeds libbnn's limit of " +
                           std::to_string(run_limit_floats() >> 18) + " MiB a buffer (set BNN_MAX_TENSOR_MB to raise it)");
}

// Freed tensor buffers of 64 KiB and more, kept for the next run's tensors of the same size (up to
// 256 MiB in all): fresh ones come from mmap, and touching their pages cost a BatchNorm or PReLU of
// a ResNet stem more than its arithmetic. Shared by every model of the process.
struct BufferPool {
    static constexpr size_t kMin = 64 << 10, kCap = size_t(256) << 20;
    std::mutex mu;
    std::multimap<size_t, void*> free_;
    size_t held = 0;
    static BufferPool& get() {
        static BufferPool* pool = new BufferPool();  // never destroyed: buffers may be freed at exit
        return *pool;
    }
    void* take(size_t bytes) {
        if (bytes >= kMin) {
            std::lock_guard<std::mutex> lock(mu);
            auto it = free_.find(bytes);
            if (it != free_.end()) {
                void* p = it->second;
                free_.erase(it);
                held -= bytes;
                return p;
            }
        }
        return aligned_alloc(64, bytes);
    }
    void give(void* p, size_t bytes) {
        if (bytes >= kMin) {
            std::lock_guard<std::mutex> lock(mu);
            if (held + bytes <= kCap) {
                free_.emplace(bytes, p);
                held += bytes;
                return;
            }
        }
        free(p);
    }
};

struct Tensor {
    std::vector<int64_t> shape;
    std::shared_ptr<float> buf;  // numel() floats, 64-byte aligned
    int64_t offset = 0;

    int dim() const { return (int)shape.size(); }
    int64_t numel() const {
        int64_t n = 1;
        for (int64_t s : shape) n *= s;
        return n;
    }
    float* data() const { return buf.get() + offset; }
    static Tensor empty(std::vector<int64_t> shape) {
        Tensor t;
        int64_t n = 1;
        for (int64_t s : shape) {
            if (s < 0) fail_run("negative tensor size");
            n = mul_checked(n, s, "tensor size");
        }
        check_alloc(n, 4, "a tensor");
        t.shape = std::move(shape);
        void* p = nullptr;
        size_t bytes = (size_t)(n > 0 ? n : 1) * sizeof(float);
        bytes = (bytes + 63) / 64 * 64;
        p = BufferPool::get().take(bytes);
        if (!p) throw std::bad_alloc();
        t.buf = std::shared_ptr<float>((float*)p, [bytes](float* q) { BufferPool::get().give(q, bytes); });
        return t;
    }
    static Tensor zeros(std::vector<int64_t> shape) {
        Tensor t = empty(std::move(shape));
        memset(t.data(), 0, (size_t)t.numel() * sizeof(float));
        return t;
    }
    std::string shape_str() const {
        std::string s = "(";
        for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
        return s + (shape.size() == 1 ? ",)" : ")");
    }
};

struct Value {
    enum Kind { None, Bool, Int, Float, Str, Tens, Tuple, List, Slice, Ellipsis, Ref } kind = None;
    bool b = false;
    int64_t i = 0;
    double f = 0;
    std::string s;
    Tensor t;
    std::vector<Value> items;  // tuple, list; slice: start, stop, step
    int slot = -1;             // Ref: the node whose value this is

    static Value none() { return Value(); }
    static Value of_int(int64_t v) { Value x; x.kind = Int; x.i = v; return x; }
    static Value of_float(double v) { Value x; x.kind = Float; x.f = v; return x; }
    static Value of_bool(bool v) { Value x; x.kind = Bool; x.b = v; return x; }
    static Value of_tensor(Tensor v) { Value x; x.kind = Tens; x.t = std::move(v); return x; }
    static Value seq(Kind k, std::vector<Value> v) { Value x; x.kind = k; x.items = std::move(v); return x; }
    bool is_num() const { return kind == Int || kind == Float || kind == Bool; }
    double num() const { return kind == Float ? f : kind == Int ? (double)i : (double)b; }
    bool is_seq() const { return kind == Tuple || kind == List; }
    const char* type_name() const {
        static const char* names[] = {"None", "bool", "int", "float", "str", "tensor", "tuple", "list", "slice",
                                      "Ellipsis", "ref"};
        return names[kind];
    }
};

}  // namespace bnn

// The real-valued operations of a .bnn graph (see ops.hpp).
#include "ops.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include <Eigen/Core>

#if defined(__x86_64__) || defined(__i386__) || defined(__SSE2__)
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace bnn {

float (*g_torch_sum)(const float*, int64_t) = nullptr;  // set by the kernel dispatch (bconv.cpp)

namespace {
int g_threads = 1;
}

void set_op_threads(int threads) {
    g_threads = threads < 1 ? 1 : threads;
    Eigen::setNbThreads(g_threads);
}
int op_threads() { return g_threads; }

float torch_sum(const float* x, int64_t n) {
    if (n >= 8 && g_torch_sum) return g_torch_sum(x, n);
    float s = 0.0f;
    for (int64_t k = 0; k < n; ++k) s += x[k];
    return s;
}

namespace {

// ---- argument binding ------------------------------------------------------------------------
struct Bound {
    std::vector<const Value*> v;
    const Value* operator[](size_t k) const { return v[k]; }
};

Bound bind(const Args& a, const char* what, std::initializer_list<const char*> names) {
    std::vector<const char*> ns(names);
    Bound b;
    b.v.assign(ns.size(), nullptr);
    if (a.pos.size() > ns.size()) fail_run(std::string(what) + " takes at most " + std::to_string(ns.size()) + " arguments");
    for (size_t k = 0; k < a.pos.size(); ++k) b.v[k] = &a.pos[k];
    for (const auto& kv : a.kw) {
        size_t k = 0;
        while (k < ns.size() && kv.first != ns[k]) ++k;
        if (k == ns.size()) fail_run(std::string(what) + " got an unexpected keyword argument '" + kv.first + "'");
        if (b.v[k]) fail_run(std::string(what) + " got argument '" + kv.first + "' twice");
        b.v[k] = &kv.second;
    }
    return b;
}

bool given(const Value* v) { return v && v->kind != Value::None; }

const Tensor& tensor_arg(const Value* v, const char* what) {
    if (!v || v->kind != Value::Tens) fail_run(std::string(what) + " expects a tensor, got " + (v ? v->type_name() : "nothing"));
    return v->t;
}
int64_t int_arg(const Value* v, const char* what) {
    if (!v || (v->kind != Value::Int && v->kind != Value::Bool))
        fail_run(std::string(what) + " expects an integer, got " + (v ? v->type_name() : "nothing"));
    return v->kind == Value::Int ? v->i : (int64_t)v->b;
}
double num_arg(const Value* v, const char* what) {
    if (!v || !v->is_num()) fail_run(std::string(what) + " expects a number, got " + (v ? v->type_name() : "nothing"));
    return v->num();
}
bool bool_arg(const Value* v, bool dflt, const char* what) {
    if (!given(v)) return dflt;
    if (v->kind == Value::Bool) return v->b;
    if (v->kind == Value::Int) return v->i != 0;
    fail_run(std::string(what) + " expects a bool");
}
// an int or a sequence of n ints (one int repeated); empty sequence -> dflt
std::vector<int64_t> ints_arg(const Value* v, size_t n, const char* what) {
    std::vector<int64_t> out;
    if (v && (v->kind == Value::Int)) out.assign(n, v->i);
    else if (v && v->is_seq()) {
        for (const auto& e : v->items) out.push_back(int_arg(&e, what));
        if (out.size() == 1 && n > 1) out.assign(n, out[0]);
    } else fail_run(std::string(what) + " expects integers");
    if (out.size() != n) fail_run(std::string(what) + " expects " + std::to_string(n) + " integers");
    for (int64_t v : out)  // kernel, stride, padding, dilation: their sums and products must not overflow
        if (v <= -(int64_t(1) << 31) || v >= (int64_t(1) << 31)) fail_run(std::string(what) + " out of range: " + std::to_string(v));
    return out;
}
// a list of ints given as one sequence argument or as the remaining positionals
std::vector<int64_t> shape_args(const Args& a, size_t from, const char* what) {
    std::vector<int64_t> out;
    if (a.pos.size() == from + 1 && a.pos[from].is_seq()) {
        for (const auto& e : a.pos[from].items) out.push_back(int_arg(&e, what));
    } else {
        for (size_t k = from; k < a.pos.size(); ++k) out.push_back(int_arg(&a.pos[k], what));
    }
    return out;
}
int64_t norm_dim(int64_t d, int64_t rank, const char* what) {
    int64_t r = rank > 0 ? rank : 1;
    if (d < -r || d >= r) fail_run(std::string(what) + ": dimension " + std::to_string(d) + " out of range for rank " + std::to_string(rank));
    return d < 0 ? d + r : d;
}

Value tv(Tensor t) { return Value::of_tensor(std::move(t)); }

// ---- elementwise -------------------------------------------------------------------------------
template <typename F>
Tensor unary(const Tensor& x, F f) {
    Tensor y = Tensor::empty(x.shape);
    const float* s = x.data();
    float* d = y.data();
    const int64_t n = x.numel();
    for (int64_t k = 0; k < n; ++k) d[k] = f(s[k]);
    return y;
}

// broadcast shapes (numpy rules), up to rank 4
std::vector<int64_t> broadcast(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
    size_t r = std::max(a.size(), b.size());
    std::vector<int64_t> out(r);
    for (size_t k = 0; k < r; ++k) {
        int64_t x = k < r - a.size() ? 1 : a[k - (r - a.size())];
        int64_t y = k < r - b.size() ? 1 : b[k - (r - b.size())];
        if (x != y && x != 1 && y != 1) fail_run("shapes cannot be broadcast together");
        out[k] = x == 1 ? y : x;
    }
    if (r > 4) fail_run("tensors of more than 4 dimensions are not supported");
    return out;
}

// strides (in elements) of t read as `shape` (broadcast: stride 0), padded to rank 4
void bstrides(const std::vector<int64_t>& ts, const std::vector<int64_t>& shape, int64_t st[4]) {
    size_t r = shape.size(), off = r - ts.size();
    int64_t acc = 1;
    int64_t full[4] = {0, 0, 0, 0};
    for (size_t k = r; k-- > 0;) {
        if (k < off) { full[k] = 0; continue; }
        int64_t s = ts[k - off];
        full[k] = s == 1 ? 0 : acc;
        acc *= s;
    }
    for (int k = 0; k < 4; ++k) st[k] = 0;
    for (size_t k = 0; k < r; ++k) st[4 - r + k] = full[k];
}

template <typename F>
Tensor binary_tt(const Tensor& a, const Tensor& b, F f) {
    if (a.shape == b.shape) {
        Tensor y = Tensor::empty(a.shape);
        const float *p = a.data(), *q = b.data();
        float* d = y.data();
        const int64_t n = a.numel();
        for (int64_t k = 0; k < n; ++k) d[k] = f(p[k], q[k]);
        return y;
    }
    std::vector<int64_t> shape = broadcast(a.shape, b.shape);
    Tensor y = Tensor::empty(shape);
    int64_t sa[4], sb[4], ext[4] = {1, 1, 1, 1};
    bstrides(a.shape, shape, sa);
    bstrides(b.shape, shape, sb);
    for (size_t k = 0; k < shape.size(); ++k) ext[4 - shape.size() + k] = shape[k];
    const float *p = a.data(), *q = b.data();
    float* d = y.data();
    for (int64_t i0 = 0; i0 < ext[0]; ++i0)
        for (int64_t i1 = 0; i1 < ext[1]; ++i1)
            for (int64_t i2 = 0; i2 < ext[2]; ++i2) {
                const float* pa = p + i0 * sa[0] + i1 * sa[1] + i2 * sa[2];
                const float* pb = q + i0 * sb[0] + i1 * sb[1] + i2 * sb[2];
                for (int64_t i3 = 0; i3 < ext[3]; ++i3) *d++ = f(pa[i3 * sa[3]], pb[i3 * sb[3]]);
            }
    return y;
}

enum BinOp { ADD, SUB, MUL, DIV, FLOORDIV };

float apply(BinOp op, float x, float y) {
    switch (op) {
        case ADD: return x + y;
        case SUB: return x - y;
        case MUL: return x * y;
        case DIV: return x / y;
        default: {
            // torch.floor_divide (float): floor of the true quotient, as PyTorch's div_floor
            if (y == 0.0f) return x / y;
            float mod = std::fmod(x, y), div = (x - mod) / y;
            if (mod != 0.0f && ((y < 0) != (mod < 0))) div -= 1.0f;
            float fl;
            if (div != 0.0f) {
                fl = std::floor(div);
                if (div - fl > 0.5f) fl += 1.0f;
            } else {
                fl = std::copysign(0.0f, x / y);
            }
            return fl;
        }
    }
}

Value binop(BinOp op, const Value& a, const Value& b, double alpha = 1.0) {
    if (a.kind == Value::Tens || b.kind == Value::Tens) {
        if (a.kind == Value::Tens && b.kind == Value::Tens) {
            if (alpha != 1.0) {
                const float al = (float)alpha;
                return tv(binary_tt(a.t, b.t, [op, al](float x, float y) { return apply(op, x, y * al); }));
            }
            switch (op) {
                case ADD: return tv(binary_tt(a.t, b.t, [](float x, float y) { return x + y; }));
                case SUB: return tv(binary_tt(a.t, b.t, [](float x, float y) { return x - y; }));
                case MUL: return tv(binary_tt(a.t, b.t, [](float x, float y) { return x * y; }));
                case DIV: return tv(binary_tt(a.t, b.t, [](float x, float y) { return x / y; }));
                default: return tv(binary_tt(a.t, b.t, [](float x, float y) { return apply(FLOORDIV, x, y); }));
            }
        }
        // a Python scalar with a float32 tensor: the scalar is taken as float32
        const bool left = a.kind == Value::Tens;
        const Value& s = left ? b : a;
        if (!s.is_num()) fail_run(std::string("cannot combine a tensor with a ") + s.type_name());
        const float c = (float)(s.num() * (op == ADD || op == SUB ? alpha : 1.0));
        const Tensor& t = left ? a.t : b.t;
        if (left) return tv(unary(t, [op, c](float x) { return apply(op, x, c); }));
        return tv(unary(t, [op, c](float x) { return apply(op, c, x); }));
    }
    if (!a.is_num() || !b.is_num())
        fail_run(std::string("unsupported operand types ") + a.type_name() + " and " + b.type_name());
    const bool ints = a.kind != Value::Float && b.kind != Value::Float && op != DIV;
    if (ints) {
        int64_t x = a.kind == Value::Int ? a.i : a.b, y = b.kind == Value::Int ? b.i : b.b;
        int64_t r = 0;
        switch (op) {
            case ADD: if (__builtin_add_overflow(x, y, &r)) fail_run("integer overflow"); break;
            case SUB: if (__builtin_sub_overflow(x, y, &r)) fail_run("integer overflow"); break;
            case MUL: if (__builtin_mul_overflow(x, y, &r)) fail_run("integer overflow"); break;
            default:
                if (y == 0) fail_run("integer division by zero");
                if (x == INT64_MIN && y == -1) fail_run("integer overflow");
                r = x / y;
                if ((x % y != 0) && ((x < 0) != (y < 0))) --r;
        }
        return Value::of_int(r);
    }
    double x = a.num(), y = b.num();
    switch (op) {
        case ADD: return Value::of_float(x + y);
        case SUB: return Value::of_float(x - y);
        case MUL: return Value::of_float(x * y);
        case DIV: if (y == 0) fail_run("division by zero"); return Value::of_float(x / y);
        default: if (y == 0) fail_run("division by zero"); return Value::of_float(std::floor(x / y));
    }
}

Value op_add(Args& a) {
    Bound b = bind(a, "add", {"input", "other", "alpha"});
    if (!b[0] || !b[1]) fail_run("add takes two values");
    return binop(ADD, *b[0], *b[1], given(b[2]) ? num_arg(b[2], "add alpha") : 1.0);
}
Value op_sub(Args& a) {
    Bound b = bind(a, "sub", {"input", "other", "alpha"});
    if (!b[0] || !b[1]) fail_run("sub takes two values");
    return binop(SUB, *b[0], *b[1], given(b[2]) ? num_arg(b[2], "sub alpha") : 1.0);
}
Value op_mul(Args& a) {
    Bound b = bind(a, "mul", {"input", "other"});
    if (!b[0] || !b[1]) fail_run("mul takes two values");
    return binop(MUL, *b[0], *b[1]);
}
Value op_truediv(Args& a) {
    Bound b = bind(a, "div", {"input", "other"});
    if (!b[0] || !b[1]) fail_run("div takes two values");
    return binop(DIV, *b[0], *b[1]);
}
Value op_floordiv(Args& a) {
    Bound b = bind(a, "floordiv", {"input", "other"});
    if (!b[0] || !b[1]) fail_run("floordiv takes two values");
    return binop(FLOORDIV, *b[0], *b[1]);
}
Value op_neg(Args& a) {
    Bound b = bind(a, "neg", {"input"});
    if (!b[0]) fail_run("neg takes one value");
    if (b[0]->kind == Value::Tens) return tv(unary(b[0]->t, [](float x) { return -x; }));
    if (b[0]->kind == Value::Float) return Value::of_float(-b[0]->f);
    int64_t v = int_arg(b[0], "neg");
    if (v == INT64_MIN) fail_run("integer overflow");
    return Value::of_int(-v);
}

float hardtanh1(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

Value op_relu(Args& a) {
    Bound b = bind(a, "relu", {"input", "inplace"});
    return tv(unary(tensor_arg(b[0], "relu"), [](float x) { return std::isnan(x) ? x : (x > 0.0f ? x : 0.0f); }));
}
Value op_relu6(Args& a) {
    Bound b = bind(a, "relu6", {"input", "inplace"});
    return tv(unary(tensor_arg(b[0], "relu6"), [](float x) { return hardtanh1(x, 0.0f, 6.0f); }));
}
Value op_leaky_relu(Args& a) {
    Bound b = bind(a, "leaky_relu", {"input", "negative_slope", "inplace"});
    const float s = given(b[1]) ? (float)num_arg(b[1], "leaky_relu negative_slope") : 0.01f;
    return tv(unary(tensor_arg(b[0], "leaky_relu"), [s](float x) { return x > 0.0f ? x : x * s; }));
}
Value op_hardtanh(Args& a) {
    Bound b = bind(a, "hardtanh", {"input", "min_val", "max_val", "inplace"});
    const float lo = given(b[1]) ? (float)num_arg(b[1], "hardtanh min_val") : -1.0f;
    const float hi = given(b[2]) ? (float)num_arg(b[2], "hardtanh max_val") : 1.0f;
    return tv(unary(tensor_arg(b[0], "hardtanh"), [lo, hi](float x) { return hardtanh1(x, lo, hi); }));
}
Value op_clamp(Args& a) {
    Bound b = bind(a, "clamp", {"input", "min", "max"});
    const Tensor& x = tensor_arg(b[0], "clamp");
    const bool has_lo = given(b[1]), has_hi = given(b[2]);
    const float lo = has_lo ? (float)num_arg(b[1], "clamp min") : 0.0f, hi = has_hi ? (float)num_arg(b[2], "clamp max") : 0.0f;
    return tv(unary(x, [=](float v) {
        if (std::isnan(v)) return v;
        if (has_lo && v < lo) v = lo;
        if (has_hi && v > hi) v = hi;
        return v;
    }));
}
Value op_sigmoid(Args& a) {
    Bound b = bind(a, "sigmoid", {"input"});
    return tv(unary(tensor_arg(b[0], "sigmoid"), [](float x) { return 1.0f / (1.0f + std::exp(-x)); }));
}
Value op_tanh(Args& a) {
    Bound b = bind(a, "tanh", {"input"});
    return tv(unary(tensor_arg(b[0], "tanh"), [](float x) { return std::tanh(x); }));
}
Value op_dropout(Args& a) {
    Bound b = bind(a, "dropout", {"input", "p", "training", "inplace"});
    if (bool_arg(b[2], false, "dropout training")) fail_run("dropout in training mode is not supported");
    return *b[0];
}

// ---- shape ops ----------------------------------------------------------------------------------
Tensor reshaped(const Tensor& x, std::vector<int64_t> shape) {
    int64_t known = 1, infer = -1;
    for (size_t k = 0; k < shape.size(); ++k) {
        if (shape[k] == -1) {
            if (infer >= 0) fail_run("view: only one dimension can be -1");
            infer = (int64_t)k;
        } else if (shape[k] < 0) {
            fail_run("view: negative size");
        } else {
            known = mul_checked(known, shape[k], "view size");
        }
    }
    if (infer >= 0) {
        if (known == 0 || x.numel() % known) fail_run("view: shape " + x.shape_str() + " is invalid for the new shape");
        shape[infer] = x.numel() / known;
    } else if (known != x.numel()) {
        fail_run("view: shape is invalid for an input of shape " + x.shape_str());
    }
    if (shape.size() > 4) fail_run("tensors of more than 4 dimensions are not supported");
    Tensor y = x;
    y.shape = shape;
    return y;
}

Value op_view(Args& a) {
    if (a.pos.empty() || !a.kw.empty()) fail_run("view takes a tensor and sizes");
    return tv(reshaped(tensor_arg(&a.pos[0], "view"), shape_args(a, 1, "view")));
}
Value op_flatten(Args& a) {
    Bound b = bind(a, "flatten", {"input", "start_dim", "end_dim"});
    const Tensor& x = tensor_arg(b[0], "flatten");
    const int64_t r = x.dim();
    if (r == 0) return tv(reshaped(x, {1}));
    int64_t s = norm_dim(given(b[1]) ? int_arg(b[1], "flatten start_dim") : 0, r, "flatten");
    int64_t e = norm_dim(given(b[2]) ? int_arg(b[2], "flatten end_dim") : -1, r, "flatten");
    if (s > e) fail_run("flatten: start_dim after end_dim");
    std::vector<int64_t> shape;
    for (int64_t k = 0; k < s; ++k) shape.push_back(x.shape[k]);
    int64_t m = 1;
    for (int64_t k = s; k <= e; ++k) m *= x.shape[k];
    shape.push_back(m);
    for (int64_t k = e + 1; k < r; ++k) shape.push_back(x.shape[k]);
    return tv(reshaped(x, shape));
}
Value op_size(Args& a) {
    Bound b = bind(a, "size", {"input", "dim"});
    const Tensor& x = tensor_arg(b[0], "size");
    if (given(b[1]) && x.dim() == 0) fail_run("size: a tensor of 0 dimensions has no dimension to size");
    if (given(b[1])) return Value::of_int(x.shape[norm_dim(int_arg(b[1], "size"), x.dim(), "size")]);
    std::vector<Value> dims;
    for (int64_t s : x.shape) dims.push_back(Value::of_int(s));
    return Value::seq(Value::Tuple, dims);
}
Value op_dim(Args& a) {
    Bound b = bind(a, "dim", {"input"});
    return Value::of_int(tensor_arg(b[0], "dim").dim());
}
Value op_contiguous(Args& a) {
    if (a.pos.empty()) fail_run("expects an input");
    tensor_arg(&a.pos[0], "contiguous");
    return a.pos[0];
}
Value op_clone(Args& a) {
    if (a.pos.empty()) fail_run("clone expects an input");
    const Tensor& x = tensor_arg(&a.pos[0], "clone");
    Tensor y = Tensor::empty(x.shape);
    memcpy(y.data(), x.data(), (size_t)x.numel() * 4);
    return tv(y);
}
Value op_squeeze(Args& a) {
    Bound b = bind(a, "squeeze", {"input", "dim"});
    const Tensor& x = tensor_arg(b[0], "squeeze");
    std::vector<int64_t> shape;
    if (given(b[1])) {
        int64_t d = norm_dim(int_arg(b[1], "squeeze"), x.dim(), "squeeze");
        for (int64_t k = 0; k < x.dim(); ++k)
            if (k != d || x.shape[k] != 1) shape.push_back(x.shape[k]);
    } else {
        for (int64_t s : x.shape)
            if (s != 1) shape.push_back(s);
    }
    return tv(reshaped(x, shape));
}
Value op_unsqueeze(Args& a) {
    Bound b = bind(a, "unsqueeze", {"input", "dim"});
    const Tensor& x = tensor_arg(b[0], "unsqueeze");
    int64_t d = norm_dim(int_arg(b[1], "unsqueeze"), x.dim() + 1, "unsqueeze");
    std::vector<int64_t> shape = x.shape;
    shape.insert(shape.begin() + d, 1);
    return tv(reshaped(x, shape));
}

Tensor permuted(const Tensor& x, const std::vector<int64_t>& perm) {
    const int r = x.dim();
    std::vector<int64_t> shape(r), st(r), ist(r);
    int64_t acc = 1;
    for (int k = r - 1; k >= 0; --k) { ist[k] = acc; acc *= x.shape[k]; }
    for (int k = 0; k < r; ++k) { shape[k] = x.shape[perm[k]]; st[k] = ist[perm[k]]; }
    Tensor y = Tensor::empty(shape);
    int64_t ext[4] = {1, 1, 1, 1}, s4[4] = {0, 0, 0, 0};
    for (int k = 0; k < r; ++k) { ext[4 - r + k] = shape[k]; s4[4 - r + k] = st[k]; }
    const float* p = x.data();
    float* d = y.data();
    for (int64_t i0 = 0; i0 < ext[0]; ++i0)
        for (int64_t i1 = 0; i1 < ext[1]; ++i1)
            for (int64_t i2 = 0; i2 < ext[2]; ++i2)
                for (int64_t i3 = 0; i3 < ext[3]; ++i3) *d++ = p[i0 * s4[0] + i1 * s4[1] + i2 * s4[2] + i3 * s4[3]];
    return y;
}
Value op_permute(Args& a) {
    if (a.pos.empty() || !a.kw.empty()) fail_run("permute takes a tensor and dimensions");
    const Tensor& x = tensor_arg(&a.pos[0], "permute");
    std::vector<int64_t> perm = shape_args(a, 1, "permute");
    if ((int)perm.size() != x.dim()) fail_run("permute: wrong number of dimensions");
    std::vector<bool> seen(perm.size(), false);
    for (auto& p : perm) {
        p = norm_dim(p, x.dim(), "permute");
        if (seen[p]) fail_run("permute: repeated dimension");
        seen[p] = true;
    }
    return tv(permuted(x, perm));
}
Value op_transpose(Args& a) {
    Bound b = bind(a, "transpose", {"input", "dim0", "dim1"});
    const Tensor& x = tensor_arg(b[0], "transpose");
    if (x.dim() == 0) fail_run("transpose: a tensor of 0 dimensions has nothing to transpose");
    int64_t d0 = norm_dim(int_arg(b[1], "transpose"), x.dim(), "transpose");
    int64_t d1 = norm_dim(int_arg(b[2], "transpose"), x.dim(), "transpose");
    std::vector<int64_t> perm(x.dim());
    for (int k = 0; k < x.dim(); ++k) perm[k] = k;
    std::swap(perm[d0], perm[d1]);
    return tv(permuted(x, perm));
}

Value op_cat(Args& a) {
    Bound b = bind(a, "cat", {"tensors", "dim"});
    if (!b[0] || !b[0]->is_seq() || b[0]->items.empty()) fail_run("cat expects a non-empty list of tensors");
    const auto& items = b[0]->items;
    const Tensor& first = tensor_arg(&items[0], "cat");
    if (first.dim() == 0) fail_run("cat: tensors of 0 dimensions cannot be concatenated");
    const int64_t d = norm_dim(given(b[1]) ? int_arg(b[1], "cat dim") : 0, first.dim(), "cat");
    std::vector<int64_t> shape = first.shape;
    shape[d] = 0;
    for (const auto& it : items) {
        const Tensor& t = tensor_arg(&it, "cat");
        if (t.dim() != first.dim()) fail_run("cat: tensors of different ranks");
        for (int k = 0; k < t.dim(); ++k)
            if (k != d && t.shape[k] != first.shape[k]) fail_run("cat: sizes of tensors must match except in the concatenated dimension");
        shape[d] += t.shape[d];
    }
    Tensor y = Tensor::empty(shape);
    int64_t outer = 1, inner = 1;
    for (int64_t k = 0; k < d; ++k) outer *= shape[k];
    for (int64_t k = d + 1; k < (int64_t)shape.size(); ++k) inner *= shape[k];
    float* dst = y.data();
    for (int64_t o = 0; o < outer; ++o)
        for (const auto& it : items) {
            const int64_t run = it.t.shape[d] * inner;
            memcpy(dst, it.t.data() + o * run, (size_t)run * 4);
            dst += run;
        }
    return tv(y);
}

// Python's slice.indices for a dimension of size n
void slice_indices(const Value& s, int64_t n, int64_t& start, int64_t& stop, int64_t& step) {
    auto get = [](const Value& v, bool& has) -> int64_t {
        has = v.kind != Value::None;
        return has ? int_arg(&v, "slice") : 0;
    };
    bool h0, h1, h2;
    int64_t a0 = get(s.items[0], h0), a1 = get(s.items[1], h1), a2 = get(s.items[2], h2);
    step = h2 ? a2 : 1;
    if (step == 0) fail_run("slice step cannot be zero");
    if (step < 0) fail_run("negative slice steps are not supported");
    auto clampi = [n](int64_t v) {
        if (v < 0) v += n;
        return v < 0 ? 0 : (v > n ? n : v);
    };
    start = h0 ? clampi(a0) : 0;
    stop = h1 ? clampi(a1) : n;
    if (stop < start) stop = start;
    if (step > n) step = n > 0 ? n : 1;  // the same elements (at most one), without overflowing start + step
}

Value index_tensor(const Tensor& x, const Value& idx) {
    std::vector<Value> items = idx.kind == Value::Tuple ? idx.items : std::vector<Value>{idx};
    // expand Ellipsis
    int64_t consumed = 0, ell = -1;
    for (size_t k = 0; k < items.size(); ++k) {
        if (items[k].kind == Value::Ellipsis) {
            if (ell >= 0) fail_run("an index can only have one ellipsis");
            ell = (int64_t)k;
        } else if (items[k].kind != Value::None) {
            ++consumed;
        }
    }
    if (consumed > x.dim()) fail_run("too many indices for a tensor of dimension " + std::to_string(x.dim()));
    std::vector<Value> full;
    for (size_t k = 0; k < items.size(); ++k) {
        if ((int64_t)k == ell) {
            for (int64_t j = 0; j < x.dim() - consumed; ++j) full.push_back(Value::seq(Value::Slice, {Value(), Value(), Value()}));
        } else {
            full.push_back(items[k]);
        }
    }
    while (true) {
        int64_t c = 0;
        for (auto& v : full) c += v.kind != Value::None;
        if (c >= x.dim()) break;
        full.push_back(Value::seq(Value::Slice, {Value(), Value(), Value()}));
    }
    // per input dim: start, count, step; output shape
    int64_t st[4] = {0, 0, 0, 0}, cnt[4] = {1, 1, 1, 1}, sp[4] = {1, 1, 1, 1};
    std::vector<int64_t> out_shape;
    int d = 0;
    for (auto& v : full) {
        if (v.kind == Value::None) { out_shape.push_back(1); continue; }
        const int64_t n = x.shape[d];
        if (v.kind == Value::Int || v.kind == Value::Bool) {
            int64_t i = int_arg(&v, "index");
            if (i < -n || i >= n) fail_run("index " + std::to_string(i) + " is out of bounds for size " + std::to_string(n));
            st[d] = i < 0 ? i + n : i;
            cnt[d] = 1;
        } else if (v.kind == Value::Slice) {
            int64_t a0, a1, s;
            slice_indices(v, n, a0, a1, s);
            st[d] = a0;
            sp[d] = s;
            cnt[d] = (a1 - a0 + s - 1) / s;
            out_shape.push_back(cnt[d]);
        } else {
            fail_run(std::string("tensors cannot be indexed by a ") + v.type_name());
        }
        ++d;
    }
    if (out_shape.size() > 4) fail_run("tensors of more than 4 dimensions are not supported");
    // strides of x padded to 4
    int64_t xs[4] = {0, 0, 0, 0}, acc = 1;
    const int r = x.dim();
    int64_t S[4] = {0, 0, 0, 0}, C[4] = {1, 1, 1, 1}, P[4] = {1, 1, 1, 1};
    for (int k = r - 1; k >= 0; --k) { xs[k] = acc; acc *= x.shape[k]; }
    for (int k = 0; k < r; ++k) { S[4 - r + k] = st[k]; C[4 - r + k] = cnt[k]; P[4 - r + k] = sp[k] * xs[k]; }
    int64_t X[4] = {0, 0, 0, 0};
    for (int k = 0; k < r; ++k) X[4 - r + k] = xs[k];
    Tensor y = Tensor::empty(out_shape);
    const float* p = x.data() + S[0] * X[0] + S[1] * X[1] + S[2] * X[2] + S[3] * X[3];
    float* o = y.data();
    for (int64_t i0 = 0; i0 < C[0]; ++i0)
        for (int64_t i1 = 0; i1 < C[1]; ++i1)
            for (int64_t i2 = 0; i2 < C[2]; ++i2)
                for (int64_t i3 = 0; i3 < C[3]; ++i3) *o++ = p[i0 * P[0] + i1 * P[1] + i2 * P[2] + i3 * P[3]];
    return tv(y);
}

Value op_getitem(Args& a) {
    if (a.pos.size() != 2 || !a.kw.empty()) fail_run("getitem takes a value and an index");
    const Value& obj = a.pos[0];
    const Value& idx = a.pos[1];
    if (obj.kind == Value::Tens) return index_tensor(obj.t, idx);
    if (obj.is_seq()) {
        const int64_t n = (int64_t)obj.items.size();
        if (idx.kind == Value::Int) {
            int64_t i = idx.i < 0 ? idx.i + n : idx.i;
            if (i < 0 || i >= n) fail_run("tuple index out of range");
            return obj.items[i];
        }
        if (idx.kind == Value::Slice) {
            int64_t s0, s1, s;
            slice_indices(idx, n, s0, s1, s);
            std::vector<Value> out;
            for (int64_t i = s0; i < s1; i += s) out.push_back(obj.items[i]);
            return Value::seq(obj.kind, out);
        }
    }
    fail_run(std::string("cannot index a ") + obj.type_name() + " with a " + idx.type_name());
}

// ---- reductions -------------------------------------------------------------------------------
// sum or mean over `dims` of contiguous x: the reduced dims must be the trailing ones for
// PyTorch's order (torch_sum over each contiguous run); others are summed serially
Value reduce(const Tensor& x, const Value* dimv, bool keepdim, bool mean, const char* what) {
    const int r = x.dim();
    if (r == 0 && given(dimv)) fail_run(std::string(what) + ": a tensor of 0 dimensions has no dimension to reduce");
    std::vector<bool> red(r, false);
    if (!given(dimv)) {
        for (int k = 0; k < r; ++k) red[k] = true;
    } else if (dimv->kind == Value::Int) {
        red[norm_dim(dimv->i, r, what)] = true;
    } else if (dimv->is_seq()) {
        if (dimv->items.empty()) for (int k = 0; k < r; ++k) red[k] = true;
        for (const auto& e : dimv->items) red[norm_dim(int_arg(&e, what), r, what)] = true;
    } else {
        fail_run(std::string(what) + ": dim must be an int or a tuple of ints");
    }
    std::vector<int64_t> out_shape, kept;
    int64_t inner = 1, outer = 1;
    bool trailing = true;
    bool seen_kept_after = false;
    for (int k = r - 1; k >= 0; --k) {
        if (red[k]) {
            if (seen_kept_after) trailing = false;
            inner *= x.shape[k];
        } else {
            seen_kept_after = true;
            outer *= x.shape[k];
        }
    }
    for (int k = 0; k < r; ++k) {
        if (!red[k]) out_shape.push_back(x.shape[k]);
        else if (keepdim) out_shape.push_back(1);
    }
    Tensor y = Tensor::empty(out_shape);
    if (trailing) {
        for (int64_t o = 0; o < outer; ++o) {
            float s = torch_sum(x.data() + o * inner, inner);
            y.data()[o] = mean ? s / (float)inner : s;
        }
        return tv(y);
    }
    // general case: permute reduced dims to the end, then reduce
    std::vector<int64_t> perm;
    for (int k = 0; k < r; ++k) if (!red[k]) perm.push_back(k);
    for (int k = 0; k < r; ++k) if (red[k]) perm.push_back(k);
    Tensor p = permuted(x, perm);
    for (int64_t o = 0; o < outer; ++o) {
        float s = torch_sum(p.data() + o * inner, inner);
        y.data()[o] = mean ? s / (float)inner : s;
    }
    return tv(y);
}
Value op_mean(Args& a) {
    Bound b = bind(a, "mean", {"input", "dim", "keepdim", "dtype"});
    if (given(b[3])) fail_run("mean with a dtype is not supported");
    return reduce(tensor_arg(b[0], "mean"), b[1], bool_arg(b[2], false, "mean keepdim"), true, "mean");
}
Value op_sum(Args& a) {
    Bound b = bind(a, "sum", {"input", "dim", "keepdim", "dtype"});
    if (given(b[3])) fail_run("sum with a dtype is not supported");
    return reduce(tensor_arg(b[0], "sum"), b[1], bool_arg(b[2], false, "sum keepdim"), false, "sum");
}

Value op_log_softmax(Args& a) {
    Bound b = bind(a, "log_softmax", {"input", "dim", "_stacklevel", "dtype"});
    if (given(b[3])) fail_run("log_softmax with a dtype is not supported");
    const Tensor& x = tensor_arg(b[0], "log_softmax");
    if (!given(b[1])) fail_run("log_softmax needs dim");
    const int64_t d = norm_dim(int_arg(b[1], "log_softmax dim"), x.dim(), "log_softmax");
    int64_t outer = 1, inner = 1, n = x.dim() ? x.shape[d] : 1;
    for (int64_t k = 0; k < d; ++k) outer *= x.shape[k];
    for (int64_t k = d + 1; k < x.dim(); ++k) inner *= x.shape[k];
    Tensor y = Tensor::empty(x.shape);
    for (int64_t o = 0; o < outer; ++o)
        for (int64_t i = 0; i < inner; ++i) {
            const float* p = x.data() + o * n * inner + i;
            float* q = y.data() + o * n * inner + i;
            float m = -std::numeric_limits<float>::infinity();
            for (int64_t k = 0; k < n; ++k) m = std::max(m, p[k * inner]);
            float s = 0.0f;
            for (int64_t k = 0; k < n; ++k) s += std::exp(p[k * inner] - m);
            const float ls = std::log(s);
            for (int64_t k = 0; k < n; ++k) q[k * inner] = p[k * inner] - m - ls;
        }
    return tv(y);
}

// ---- padding and pooling -----------------------------------------------------------------------
Value op_pad(Args& a) {
    Bound b = bind(a, "pad", {"input", "pad", "mode", "value"});
    const Tensor& x = tensor_arg(b[0], "pad");
    if (given(b[2]) && (b[2]->kind != Value::Str || b[2]->s != "constant")) fail_run("pad: only mode 'constant' is supported");
    const float value = given(b[3]) ? (float)num_arg(b[3], "pad value") : 0.0f;
    if (!b[1] || !b[1]->is_seq()) fail_run("pad expects a sequence of paddings");
    std::vector<int64_t> p;
    for (const auto& e : b[1]->items) p.push_back(int_arg(&e, "pad"));
    if (p.size() % 2 || (int64_t)p.size() / 2 > x.dim()) fail_run("pad: padding length must be even and at most twice the rank");
    const int r = x.dim();
    int64_t lo[4] = {0, 0, 0, 0}, ext[4] = {1, 1, 1, 1}, in[4] = {1, 1, 1, 1};
    std::vector<int64_t> shape = x.shape;
    for (int64_t v : p)
        if (v <= -(int64_t(1) << 31) || v >= (int64_t(1) << 31)) fail_run("pad: padding " + std::to_string(v) + " out of range");
    for (size_t k = 0; k < p.size() / 2; ++k) {
        const int d = r - 1 - (int)k;
        shape[d] = x.shape[d] + p[2 * k] + p[2 * k + 1];
        if (shape[d] < 0) fail_run("pad: resulting size is negative");
        lo[4 - r + d] = p[2 * k];
    }
    for (int k = 0; k < r; ++k) { ext[4 - r + k] = shape[k]; in[4 - r + k] = x.shape[k]; }
    Tensor y = Tensor::empty(shape);
    float* o = y.data();
    const float* s = x.data();
    for (int64_t i0 = 0; i0 < ext[0]; ++i0)
        for (int64_t i1 = 0; i1 < ext[1]; ++i1)
            for (int64_t i2 = 0; i2 < ext[2]; ++i2)
                for (int64_t i3 = 0; i3 < ext[3]; ++i3) {
                    const int64_t j0 = i0 - lo[0], j1 = i1 - lo[1], j2 = i2 - lo[2], j3 = i3 - lo[3];
                    const bool inside = j0 >= 0 && j0 < in[0] && j1 >= 0 && j1 < in[1] && j2 >= 0 && j2 < in[2] && j3 >= 0 && j3 < in[3];
                    *o++ = inside ? s[((j0 * in[1] + j1) * in[2] + j2) * in[3] + j3] : value;
                }
    return tv(y);
}

// PyTorch's pooling_output_shape
int64_t pool_out(int64_t in, int64_t k, int64_t pad, int64_t stride, int64_t dil, bool ceil) {
    int64_t num = in + 2 * pad - dil * (k - 1) - 1 + (ceil ? stride - 1 : 0);
    int64_t out = (num >= 0 ? num / stride : -((-num + stride - 1) / stride)) + 1;
    if (ceil && (out - 1) * stride >= in + pad) --out;
    return out;
}

const Tensor& pool_input(const Value* v, const char* what) {
    const Tensor& x = tensor_arg(v, what);
    if (x.dim() != 4 && x.dim() != 3) fail_run(std::string(what) + " expects a 3- or 4-dimensional input, got " + x.shape_str());
    if (x.numel() == 0) fail_run(std::string(what) + " expects a non-empty input, got " + x.shape_str());
    return x;
}
std::vector<int64_t> pool_shape(const Tensor& x, int64_t Ho, int64_t Wo) {
    if (x.dim() == 3) return {x.shape[0], Ho, Wo};
    return {x.shape[0], x.shape[1], Ho, Wo};
}

Value op_max_pool2d(Args& a) {
    Bound b = bind(a, "max_pool2d", {"input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"});
    const Tensor& x = pool_input(b[0], "max_pool2d");
    auto k = ints_arg(b[1], 2, "max_pool2d kernel_size");
    auto s = (!given(b[2]) || (b[2]->is_seq() && b[2]->items.empty())) ? k : ints_arg(b[2], 2, "max_pool2d stride");
    auto p = given(b[3]) ? ints_arg(b[3], 2, "max_pool2d padding") : std::vector<int64_t>{0, 0};
    auto d = given(b[4]) ? ints_arg(b[4], 2, "max_pool2d dilation") : std::vector<int64_t>{1, 1};
    const bool ceil = bool_arg(b[5], false, "max_pool2d ceil_mode");
    if (bool_arg(b[6], false, "max_pool2d return_indices")) fail_run("max_pool2d with return_indices is not supported");
    if (k[0] < 1 || k[1] < 1 || s[0] < 1 || s[1] < 1 || d[0] < 1 || d[1] < 1 || p[0] < 0 || p[1] < 0)
        fail_run("max_pool2d: kernel, stride and dilation must be positive, padding non-negative");
    if (2 * p[0] > k[0] || 2 * p[1] > k[1]) fail_run("max_pool2d: pad should be at most half of the kernel size");
    const int64_t H = x.shape[x.dim() - 2], W = x.shape[x.dim() - 1];
    const int64_t Ho = pool_out(H, k[0], p[0], s[0], d[0], ceil), Wo = pool_out(W, k[1], p[1], s[1], d[1], ceil);
    if (Ho < 1 || Wo < 1) fail_run("max_pool2d: output size is too small for input " + x.shape_str());
    Tensor y = Tensor::empty(pool_shape(x, Ho, Wo));
    // each plane copied into a -inf border wide enough for every window (ceil mode's too), then
    // the maxima along rows, then down columns: max with NaN winning is associative, so this is
    // the window's max as PyTorch takes it, without a bounds test a tap
    const int64_t planes = x.numel() / (H * W);
    const int64_t Hp = (Ho - 1) * s[0] + (k[0] - 1) * d[0] + 1, Wp = (Wo - 1) * s[1] + (k[1] - 1) * d[1] + 1;
    const float ninf = -std::numeric_limits<float>::infinity();
    const int64_t span = (Wo - 1) * s[1] + 1;
    std::vector<float> padded((size_t)(Hp * Wp)), rowmax((size_t)(Hp * Wo)), full((size_t)span);
    auto wins = [](float v, float m) { return (v > m) | (v != v); };  // no branch: vectorizes
    for (int64_t pl = 0; pl < planes; ++pl) {
        const float* src = x.data() + pl * H * W;
        float* dst = y.data() + pl * Ho * Wo;
        std::fill(padded.begin(), padded.end(), ninf);
        for (int64_t iy = 0; iy < H && iy + p[0] < Hp; ++iy)
            std::copy(src + iy * W, src + iy * W + std::min(W, Wp - p[1]), padded.data() + (iy + p[0]) * Wp + p[1]);
        for (int64_t r = 0; r < Hp; ++r) {  // at every position (vectorized), then every s-th kept
            const float* in = padded.data() + r * Wp;
            std::copy(in, in + span, full.data());
            for (int64_t kx = 1; kx < k[1]; ++kx) {
                const float* v = in + kx * d[1];
                for (int64_t i = 0; i < span; ++i) full[(size_t)i] = wins(v[i], full[(size_t)i]) ? v[i] : full[(size_t)i];
            }
            float* out = rowmax.data() + r * Wo;
            for (int64_t ox = 0; ox < Wo; ++ox) out[ox] = full[(size_t)(ox * s[1])];
        }
        for (int64_t oy = 0; oy < Ho; ++oy) {
            float* out = dst + oy * Wo;
            std::copy(rowmax.data() + oy * s[0] * Wo, rowmax.data() + (oy * s[0] + 1) * Wo, out);
            for (int64_t ky = 1; ky < k[0]; ++ky) {
                const float* in = rowmax.data() + (oy * s[0] + ky * d[0]) * Wo;
                for (int64_t ox = 0; ox < Wo; ++ox) out[ox] = wins(in[ox], out[ox]) ? in[ox] : out[ox];
            }
        }
    }
    return tv(y);
}

Value op_avg_pool2d(Args& a) {
    Bound b = bind(a, "avg_pool2d", {"input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"});
    const Tensor& x = pool_input(b[0], "avg_pool2d");
    auto k = ints_arg(b[1], 2, "avg_pool2d kernel_size");
    auto s = (!given(b[2]) || (b[2]->is_seq() && b[2]->items.empty())) ? k : ints_arg(b[2], 2, "avg_pool2d stride");
    auto p = given(b[3]) ? ints_arg(b[3], 2, "avg_pool2d padding") : std::vector<int64_t>{0, 0};
    const bool ceil = bool_arg(b[4], false, "avg_pool2d ceil_mode");
    const bool include_pad = bool_arg(b[5], true, "avg_pool2d count_include_pad");
    const int64_t divisor = given(b[6]) ? int_arg(b[6], "avg_pool2d divisor_override") : 0;
    if (k[0] < 1 || k[1] < 1 || s[0] < 1 || s[1] < 1 || p[0] < 0 || p[1] < 0 || (given(b[6]) && divisor == 0))
        fail_run("avg_pool2d: kernel and stride must be positive, padding non-negative, divisor non-zero");
    if (2 * p[0] > k[0] || 2 * p[1] > k[1]) fail_run("avg_pool2d: pad should be at most half of the kernel size");
    const int64_t H = x.shape[x.dim() - 2], W = x.shape[x.dim() - 1];
    const int64_t Ho = pool_out(H, k[0], p[0], s[0], 1, ceil), Wo = pool_out(W, k[1], p[1], s[1], 1, ceil);
    if (Ho < 1 || Wo < 1) fail_run("avg_pool2d: output size is too small for input " + x.shape_str());
    Tensor y = Tensor::empty(pool_shape(x, Ho, Wo));
    const int64_t planes = x.numel() / (H * W);
    for (int64_t pl = 0; pl < planes; ++pl) {
        const float* src = x.data() + pl * H * W;
        float* dst = y.data() + pl * Ho * Wo;
        for (int64_t oy = 0; oy < Ho; ++oy)
            for (int64_t ox = 0; ox < Wo; ++ox) {
                int64_t hs = oy * s[0] - p[0], ws = ox * s[1] - p[1];
                int64_t he = std::min(hs + k[0], H + p[0]), we = std::min(ws + k[1], W + p[1]);
                const int64_t pool_size = (he - hs) * (we - ws);
                hs = std::max<int64_t>(hs, 0); ws = std::max<int64_t>(ws, 0);
                he = std::min(he, H); we = std::min(we, W);
                if (hs >= he || ws >= we) { dst[oy * Wo + ox] = 0.0f; continue; }
                float sum = 0.0f;
                for (int64_t iy = hs; iy < he; ++iy)
                    for (int64_t ix = ws; ix < we; ++ix) sum += src[iy * W + ix];
                const int64_t div = divisor ? divisor : include_pad ? pool_size : (he - hs) * (we - ws);
                dst[oy * Wo + ox] = sum / (float)div;
            }
    }
    return tv(y);
}

Value adaptive_pool(Args& a, bool is_max) {
    const char* what = is_max ? "adaptive_max_pool2d" : "adaptive_avg_pool2d";
    Bound b = bind(a, what, {"input", "output_size", "return_indices"});
    const Tensor& x = pool_input(b[0], what);
    if (bool_arg(b[2], false, "return_indices")) fail_run(std::string(what) + " with return_indices is not supported");
    const int64_t H = x.shape[x.dim() - 2], W = x.shape[x.dim() - 1];
    std::vector<int64_t> os;
    if (b[1] && b[1]->is_seq()) {
        for (const auto& e : b[1]->items) os.push_back(e.kind == Value::None ? -1 : int_arg(&e, what));
        if (os.size() != 2) fail_run(std::string(what) + ": output_size must be 2 integers");
        if (os[0] < 0) os[0] = H;
        if (os[1] < 0) os[1] = W;
    } else {
        os.assign(2, int_arg(b[1], what));
    }
    if (os[0] < 1 || os[1] < 1) fail_run(std::string(what) + ": output_size must be positive");
    const int64_t Ho = os[0], Wo = os[1], planes = x.numel() / (H * W);
    Tensor y = Tensor::empty(pool_shape(x, Ho, Wo));
    if (!is_max && Ho == 1 && Wo == 1) {  // PyTorch takes the mean over (H, W) here
        for (int64_t pl = 0; pl < planes; ++pl) y.data()[pl] = torch_sum(x.data() + pl * H * W, H * W) / (float)(H * W);
        return tv(y);
    }
    for (int64_t pl = 0; pl < planes; ++pl) {
        const float* src = x.data() + pl * H * W;
        float* dst = y.data() + pl * Ho * Wo;
        for (int64_t oy = 0; oy < Ho; ++oy) {
            const int64_t y0 = oy * H / Ho, y1 = ((oy + 1) * H + Ho - 1) / Ho;
            for (int64_t ox = 0; ox < Wo; ++ox) {
                const int64_t x0 = ox * W / Wo, x1 = ((ox + 1) * W + Wo - 1) / Wo;
                float acc = is_max ? -std::numeric_limits<float>::infinity() : 0.0f;
                for (int64_t iy = y0; iy < y1; ++iy)
                    for (int64_t ix = x0; ix < x1; ++ix) {
                        const float v = src[iy * W + ix];
                        if (is_max) { if (v > acc || std::isnan(v)) acc = v; }
                        else acc += v;
                    }
                dst[oy * Wo + ox] = is_max ? acc : acc / (float)(y1 - y0) / (float)(x1 - x0);
            }
        }
    }
    return tv(y);
}
Value op_adaptive_avg_pool2d(Args& a) { return adaptive_pool(a, false); }
Value op_adaptive_max_pool2d(Args& a) { return adaptive_pool(a, true); }

const std::map<std::string, OpFn>& functions() {
    static const std::map<std::string, OpFn> m = {
        {"operator.add", op_add}, {"operator.sub", op_sub}, {"operator.mul", op_mul},
        {"operator.truediv", op_truediv}, {"operator.floordiv", op_floordiv}, {"operator.neg", op_neg},
        {"operator.getitem", op_getitem}, {"torch.add", op_add}, {"torch.mul", op_mul}, {"torch.cat", op_cat},
        {"torch.flatten", op_flatten}, {"torch.relu", op_relu}, {"torch.sigmoid", op_sigmoid},
        {"torch.tanh", op_tanh}, {"torch.mean", op_mean}, {"F.relu", op_relu}, {"F.relu6", op_relu6},
        {"F.leaky_relu", op_leaky_relu}, {"F.hardtanh", op_hardtanh}, {"F.sigmoid", op_sigmoid},
        {"F.tanh", op_tanh}, {"F.pad", op_pad}, {"F.avg_pool2d", op_avg_pool2d}, {"F.max_pool2d", op_max_pool2d},
        {"F.adaptive_avg_pool2d", op_adaptive_avg_pool2d}, {"F.adaptive_max_pool2d", op_adaptive_max_pool2d},
        {"F.log_softmax", op_log_softmax}, {"F.dropout", op_dropout}};
    return m;
}
const std::map<std::string, OpFn>& methods() {
    static const std::map<std::string, OpFn> m = {
        {"size", op_size}, {"view", op_view}, {"reshape", op_view}, {"flatten", op_flatten}, {"mean", op_mean},
        {"sum", op_sum}, {"contiguous", op_contiguous}, {"add", op_add}, {"sub", op_sub}, {"mul", op_mul},
        {"div", op_truediv}, {"relu", op_relu}, {"squeeze", op_squeeze}, {"unsqueeze", op_unsqueeze},
        {"permute", op_permute}, {"transpose", op_transpose}, {"clamp", op_clamp}, {"hardtanh", op_hardtanh},
        {"sigmoid", op_sigmoid}, {"tanh", op_tanh}, {"neg", op_neg}, {"__getitem__", op_getitem}, {"dim", op_dim},
        {"float", op_contiguous}, {"clone", op_clone}, {"detach", op_contiguous}};
    return m;
}

}  // namespace

OpFn find_function(const std::string& fn) {
    auto it = functions().find(fn);
    return it == functions().end() ? nullptr : it->second;
}
OpFn find_method(const std::string& method) {
    auto it = methods().find(method);
    return it == methods().end() ? nullptr : it->second;
}

// ---- layers ------------------------------------------------------------------------------------
typedef Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> RowMat;

namespace {
// A network's first conv (1-3 input channels, e.g. the 3x3 CIFAR and 7x7 ImageNet stems) computed
// as PyTorch's CPU convolution (oneDNN's first-conv kernels, AVX2 and AVX-512 alike) rounds it: one
// fused multiply-add a tap into a float32 accumulator that starts at 0, taps in (ky, kx, c) order.
// A GEMM sums the same products in another order, a float32 ulp away; after the stem's BatchNorm
// such a difference flips the sign of an activation that lies that close to 0, and the flip
// spreads: matched here, the stems give PyTorch's bits (tests/test_deploy_models.py).
constexpr int64_t kFirstP = 48;  // positions a task: their K taps (28 KiB for a 7x7 stem) stay in L1

// y[o * ldy + q] for outputs [o0, o1) and positions [q0, q1) of a panel c (tap k of position q at
// c[k * ldc + q]), each summed over the K taps in order (always_inline: in the AVX2 function below
// std::fma becomes one vfmadd, not a call to fmaf)
__attribute__((always_inline)) inline void first_conv_scalar(const float* c, int64_t ldc, int64_t K, const float* w,
                                                             int64_t o0, int64_t o1, int64_t q0, int64_t q1, float* y,
                                                             int64_t ldy) {
    for (int64_t o = o0; o < o1; ++o)
        for (int64_t q = q0; q < q1; ++q) {
            float acc = 0.0f;
            for (int64_t k = 0; k < K; ++k) acc = std::fma(c[k * ldc + q], w[o * K + k], acc);
            y[o * ldy + q] = acc;
        }
}

void first_conv_panel_plain(const float* c, int64_t K, const float* w, int64_t O, int64_t nq, float* y, int64_t ldy) {
    first_conv_scalar(c, kFirstP, K, w, 0, O, 0, nq, y, ldy);
}

#if defined(__x86_64__) || defined(__i386__)
// 4 channels x 24 positions of accumulators in 12 registers; the same fma per tap as above
__attribute__((target("avx2,fma"))) void first_conv_panel_fma(const float* c, int64_t K, const float* w, int64_t O,
                                                               int64_t nq, float* y, int64_t ldy) {
    const int64_t o_end = O / 4 * 4, q_end = nq / 24 * 24;
    for (int64_t o = 0; o < o_end; o += 4)
        for (int64_t q = 0; q < q_end; q += 24) {
            __m256 acc[4][3];
            for (auto& r : acc)
                for (auto& v : r) v = _mm256_setzero_ps();
            const float* ck = c + q;
            for (int64_t k = 0; k < K; ++k, ck += kFirstP) {
                const __m256 c0 = _mm256_loadu_ps(ck), c1 = _mm256_loadu_ps(ck + 8), c2 = _mm256_loadu_ps(ck + 16);
                for (int j = 0; j < 4; ++j) {
                    const __m256 wk = _mm256_broadcast_ss(w + (o + j) * K + k);
                    acc[j][0] = _mm256_fmadd_ps(c0, wk, acc[j][0]);
                    acc[j][1] = _mm256_fmadd_ps(c1, wk, acc[j][1]);
                    acc[j][2] = _mm256_fmadd_ps(c2, wk, acc[j][2]);
                }
            }
            for (int j = 0; j < 4; ++j)
                for (int v = 0; v < 3; ++v) _mm256_storeu_ps(y + (o + j) * ldy + q + 8 * v, acc[j][v]);
        }
    first_conv_scalar(c, kFirstP, K, w, 0, o_end, q_end, nq, y, ldy);  // the positions left
    first_conv_scalar(c, kFirstP, K, w, o_end, O, 0, nq, y, ldy);      // the channels left
}
bool cpu_has_fma() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
#endif

// y[o, p] for every output channel o and position p of one sample; col: [K = kh*kw*C][P], (ky, kx, c) rows
void first_conv(const float* col, int64_t K, int64_t P, const float* w, int64_t O, float* y) {
    auto panel = first_conv_panel_plain;
#if defined(__x86_64__) || defined(__i386__)
    static const bool fma = cpu_has_fma();  // the same bits either way (fma rounds once): only speed
    if (fma) panel = first_conv_panel_fma;
#endif
    const int64_t tiles = (P + kFirstP - 1) / kFirstP;
#pragma omp parallel num_threads(op_threads()) if (op_threads() > 1)
    {
        std::vector<float> buf((size_t)(K * kFirstP));  // the tile's taps, contiguous: read once per 4 channels
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tiles; ++t) {
            const int64_t p0 = t * kFirstP, nq = std::min(kFirstP, P - p0);
            for (int64_t k = 0; k < K; ++k) std::copy(col + k * P + p0, col + k * P + p0 + nq, buf.data() + k * kFirstP);
            panel(buf.data(), K, w, O, nq, y + p0, P);
        }
    }
}
}  // namespace

Tensor conv2d(const Tensor& x, const float* w, int64_t O, int64_t Cg, int64_t kh, int64_t kw, const float* bias,
              const int64_t stride[2], const int64_t pad[2], const int64_t dil[2], int64_t G) {
    if (x.dim() != 4) fail_run("conv expects a 4-dimensional input, got " + x.shape_str());
    const int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3];
    if (C != Cg * G) fail_run("conv expects " + std::to_string(Cg * G) + " input channels, got " + std::to_string(C));
    const int64_t Ho = (H + 2 * pad[0] - dil[0] * (kh - 1) - 1) / stride[0] + 1;
    const int64_t Wo = (W + 2 * pad[1] - dil[1] * (kw - 1) - 1) / stride[1] + 1;
    if (H + 2 * pad[0] - dil[0] * (kh - 1) - 1 < 0 || W + 2 * pad[1] - dil[1] * (kw - 1) - 1 < 0)
        fail_run("conv: input " + x.shape_str() + " is smaller than the kernel");
    Tensor y = Tensor::empty({N, O, Ho, Wo});  // refuses sizes that overflow or exceed the limit
    const int64_t Og = O / G, K = Cg * kh * kw, P = Ho * Wo;
    // a first conv, or a real 1x1 conv of at most 192 input channels (oneDNN sums those with one fma a
    // channel, in order; wider ones it splits into partial sums of a size its own heuristics choose,
    // left to the GEMM): PyTorch's bits on the machines measured (docs/deploy.md, "libbnn")
    const bool first = C <= 3, pointwise1x1 = kh == 1 && kw == 1 && pad[0] == 0 && pad[1] == 0 && C <= 192;
    if (G == 1 && (first || pointwise1x1) && dil[0] == 1 && dil[1] == 1) {
        const int64_t K = kh * kw * C;
        const bool direct = pointwise1x1 && stride[0] == 1 && stride[1] == 1;
        // col: taps x positions (a pooled buffer: a zero-filled vector cost the stem a page fault a 4 KiB)
        Tensor colt = Tensor::empty({direct ? 1 : K, direct ? 1 : P});
        float* col = colt.data();
        std::vector<float> wt((size_t)(O * K));
        for (int64_t o = 0; o < O; ++o)  // the weight's columns in the taps' (ky, kx, c) order
            for (int64_t c = 0; c < C; ++c)
                for (int64_t ky = 0; ky < kh; ++ky)
                    for (int64_t kx = 0; kx < kw; ++kx)
                        wt[(size_t)(o * K + (ky * kw + kx) * C + c)] = w[((o * C + c) * kh + ky) * kw + kx];
        for (int64_t n = 0; n < N; ++n) {
            const float* src = x.data() + n * C * H * W;
            for (int64_t ky = 0; ky < kh && !direct; ++ky)
                for (int64_t kx = 0; kx < kw; ++kx)
                    for (int64_t c = 0; c < C; ++c) {
                        float* row = col + ((ky * kw + kx) * C + c) * P;
                        const float* plane = src + c * H * W;
                        // the columns whose tap lies inside the row: ox in [lo, hi); a tap in the zero
                        // padding adds fma(0, w, acc) = acc, the same as skipping it
                        const int64_t sx = stride[1], off = kx - pad[1];
                        const int64_t lo = std::min(Wo, off >= 0 ? 0 : (-off + sx - 1) / sx);
                        const int64_t hi = std::max(lo, std::min(Wo, W - off > 0 ? (W - off + sx - 1) / sx : 0));
                        for (int64_t oy = 0; oy < Ho; ++oy) {
                            const int64_t iy = oy * stride[0] - pad[0] + ky;
                            float* r = row + oy * Wo;
                            if (iy < 0 || iy >= H) {
                                std::fill(r, r + Wo, 0.0f);
                                continue;
                            }
                            const float* in = plane + iy * W + off;
                            std::fill(r, r + lo, 0.0f);
                            for (int64_t ox = lo; ox < hi; ++ox) r[ox] = in[ox * sx];
                            std::fill(r + hi, r + Wo, 0.0f);
                        }
                    }
            float* dst = y.data() + n * O * P;
            first_conv(direct ? src : col, K, P, wt.data(), O, dst);
            if (bias)
                for (int64_t o = 0; o < O; ++o)
                    for (int64_t p = 0; p < P; ++p) dst[o * P + p] += bias[o];
        }
        return y;
    }
    if (Cg * kh * kw <= 16 && Og <= 4) {  // depthwise-like: direct loops
        for (int64_t n = 0; n < N; ++n)
            for (int64_t o = 0; o < O; ++o) {
                const int64_t g = o / Og;
                float* dst = y.data() + (n * O + o) * P;
                const float* wo = w + o * K;
                for (int64_t oy = 0; oy < Ho; ++oy)
                    for (int64_t ox = 0; ox < Wo; ++ox) {
                        float acc = 0.0f;
                        for (int64_t c = 0; c < Cg; ++c) {
                            const float* src = x.data() + ((n * C + g * Cg + c) * H) * W;
                            for (int64_t ky = 0; ky < kh; ++ky) {
                                const int64_t iy = oy * stride[0] - pad[0] + ky * dil[0];
                                if (iy < 0 || iy >= H) continue;
                                for (int64_t kx = 0; kx < kw; ++kx) {
                                    const int64_t ix = ox * stride[1] - pad[1] + kx * dil[1];
                                    if (ix < 0 || ix >= W) continue;
                                    acc += src[iy * W + ix] * wo[(c * kh + ky) * kw + kx];
                                }
                            }
                        }
                        dst[oy * Wo + ox] = bias ? acc + bias[o] : acc;
                    }
            }
        return y;
    }
    const bool pointwise = kh == 1 && kw == 1 && stride[0] == 1 && stride[1] == 1 && pad[0] == 0 && pad[1] == 0;
    if (!pointwise) check_alloc(mul_checked(K, P, "conv buffer"), 4, "conv's im2col buffer");
    std::vector<float> col(pointwise ? 0 : (size_t)(K * P));
    for (int64_t n = 0; n < N; ++n)
        for (int64_t g = 0; g < G; ++g) {
            const float* src = x.data() + (n * C + g * Cg) * H * W;
            if (!pointwise) {
                for (int64_t c = 0; c < Cg; ++c)
                    for (int64_t ky = 0; ky < kh; ++ky)
                        for (int64_t kx = 0; kx < kw; ++kx) {
                            float* row = col.data() + ((c * kh + ky) * kw + kx) * P;
                            const float* plane = src + c * H * W;
                            for (int64_t oy = 0; oy < Ho; ++oy) {
                                const int64_t iy = oy * stride[0] - pad[0] + ky * dil[0];
                                float* r = row + oy * Wo;
                                if (iy < 0 || iy >= H) {
                                    for (int64_t ox = 0; ox < Wo; ++ox) r[ox] = 0.0f;
                                    continue;
                                }
                                for (int64_t ox = 0; ox < Wo; ++ox) {
                                    const int64_t ix = ox * stride[1] - pad[1] + kx * dil[1];
                                    r[ox] = (ix >= 0 && ix < W) ? plane[iy * W + ix] : 0.0f;
                                }
                            }
                        }
            }
            Eigen::Map<const RowMat> Wm(w + g * Og * K, Og, K);
            Eigen::Map<const RowMat> Xm(pointwise ? src : col.data(), K, P);
            Eigen::Map<RowMat> Ym(y.data() + (n * O + g * Og) * P, Og, P);
            Ym.noalias() = Wm * Xm;
            if (bias)
                for (int64_t o = 0; o < Og; ++o) {
                    float* r = y.data() + (n * O + g * Og + o) * P;
                    const float bo = bias[g * Og + o];
                    for (int64_t p = 0; p < P; ++p) r[p] += bo;
                }
        }
    return y;
}

Tensor linear(const Tensor& x, const float* w, int64_t out_f, int64_t in_f, const float* bias) {
    if (x.dim() < 1 || x.shape.back() != in_f || in_f < 1)
        fail_run("linear expects inputs of width " + std::to_string(in_f) + ", got " + x.shape_str());
    const int64_t rows = x.numel() / in_f;
    std::vector<int64_t> shape = x.shape;
    shape.back() = out_f;
    Tensor y = Tensor::empty(shape);
    Eigen::Map<const RowMat> Xm(x.data(), rows, in_f);
    Eigen::Map<const RowMat> Wm(w, out_f, in_f);
    Eigen::Map<RowMat> Ym(y.data(), rows, out_f);
    Ym.noalias() = Xm * Wm.transpose();
    if (bias)
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t o = 0; o < out_f; ++o) y.data()[r * out_f + o] += bias[o];
    return y;
}

namespace {
// d[i] = fma(s[i] * pre, a, b): always_inline, so that in the AVX2 copy std::fma is one vfmadd
// (fmaf calls otherwise); s may be d
__attribute__((always_inline)) inline void fma_row_body(const float* s, float* d, int64_t n, float pre, float a,
                                                        float b) {
    for (int64_t i = 0; i < n; ++i) d[i] = std::fma(s[i] * pre, a, b);
}
void fma_row_plain(const float* s, float* d, int64_t n, float pre, float a, float b) {
    fma_row_body(s, d, n, pre, a, b);
}
#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx2,fma"))) void fma_row_avx2(const float* s, float* d, int64_t n, float pre, float a,
                                                      float b) {
    fma_row_body(s, d, n, pre, a, b);
}
#endif
using FmaRow = void (*)(const float*, float*, int64_t, float, float, float);
FmaRow fma_row() {
#if defined(__x86_64__) || defined(__i386__)
    static const bool fma = cpu_has_fma();  // the same bits either way: only speed
    if (fma) return fma_row_avx2;
#endif
    return fma_row_plain;
}
}  // namespace

Tensor channel_fma(const Tensor& x, const std::vector<float>& a, const std::vector<float>& b) {
    const int64_t C = (int64_t)a.size();
    if (x.dim() < 2 || x.shape[1] != C)
        fail_run("batchnorm expects " + std::to_string(C) + " channels, got input " + x.shape_str());
    int64_t inner = 1;
    for (int k = 2; k < x.dim(); ++k) inner *= x.shape[k];
    Tensor y = Tensor::empty(x.shape);
    const int64_t N = x.shape[0];
    const FmaRow row = fma_row();
    for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < C; ++c)  // x * 1 is x to the bit: fma(x, a, b), as PyTorch's BatchNorm
            row(x.data() + (n * C + c) * inner, y.data() + (n * C + c) * inner, inner, 1.0f, a[c], b[c]);
    return y;
}

void conv_epilogue(float* y, int64_t N, int64_t O, int64_t P, const float* pre, const float* scale, const float* bias) {
    const FmaRow row = fma_row();
    for (int64_t n = 0; n < N; ++n)
        for (int64_t o = 0; o < O; ++o) row(y + (n * O + o) * P, y + (n * O + o) * P, P, pre[o], scale[o], bias[o]);
}

namespace {
// x > 0 ? x : slope * x as a select: GCC keeps the plain loop scalar with a branch a value (it may not
// move a multiply that could trap past the branch), and that was a sixth of ResNet-18's time
void prelu_row(const float* __restrict s, float* __restrict d, int64_t n, float slope) {
    int64_t i = 0;
#if defined(__SSE2__)
    const __m128 sl = _mm_set1_ps(slope), zero = _mm_setzero_ps();
    for (; i + 4 <= n; i += 4) {
        const __m128 v = _mm_loadu_ps(s + i), positive = _mm_cmpgt_ps(v, zero);
        _mm_storeu_ps(d + i, _mm_or_ps(_mm_and_ps(positive, v), _mm_andnot_ps(positive, _mm_mul_ps(v, sl))));
    }
#endif
    for (; i < n; ++i) d[i] = s[i] > 0.0f ? s[i] : slope * s[i];
}
}  // namespace

Tensor prelu(const Tensor& x, const std::vector<float>& w) {
    const int64_t C = x.dim() >= 2 ? x.shape[1] : 1;
    if (w.size() != 1 && (int64_t)w.size() != C)
        fail_run("prelu has " + std::to_string(w.size()) + " slopes for input " + x.shape_str());
    int64_t inner = 1;
    for (int k = 2; k < x.dim(); ++k) inner *= x.shape[k];
    Tensor y = Tensor::empty(x.shape);
    const int64_t N = x.dim() >= 1 ? x.shape[0] : 1;
    for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < C; ++c) {
            const float* s = x.data() + (n * C + c) * inner;
            float* d = y.data() + (n * C + c) * inner;
            prelu_row(s, d, inner, w.size() == 1 ? w[0] : w[c]);
        }
    return y;
}

}  // namespace bnn

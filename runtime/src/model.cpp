// libbnn: reading and checking a .bnn file, the graph interpreter and the C API.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <new>
#include <set>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "bconv.hpp"
#include "core.hpp"
#include "json.hpp"
#include "libbnn.h"
#include "ops.hpp"
#include "sha256.hpp"

namespace bnn {
namespace {

const char* kReexport = "re-export the model with `bnnkit export CKPT -o FILE`";
const int kFormatVersion = 3;
const size_t kMaxHeader = size_t(100) << 20;

struct FileTensor {
    std::string dtype;
    std::vector<int64_t> shape;
    const uint8_t* data = nullptr;
    size_t nbytes = 0;
    int64_t numel = 0;
};

int64_t dtype_size(const std::string& d) {
    if (d == "F64" || d == "I64" || d == "U64") return 8;
    if (d == "F32" || d == "I32" || d == "U32") return 4;
    if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
    if (d == "I8" || d == "U8" || d == "BOOL") return 1;
    return 0;
}
const char* torch_dtype(const std::string& d) {
    static const std::map<std::string, const char*> m = {
        {"F64", "torch.float64"}, {"F32", "torch.float32"}, {"F16", "torch.float16"}, {"BF16", "torch.bfloat16"},
        {"I64", "torch.int64"}, {"I32", "torch.int32"}, {"I16", "torch.int16"}, {"I8", "torch.int8"},
        {"U8", "torch.uint8"}, {"BOOL", "torch.bool"}, {"U16", "torch.uint16"}, {"U32", "torch.uint32"},
        {"U64", "torch.uint64"}};
    auto it = m.find(d);
    return it == m.end() ? "unknown" : it->second;
}

float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    int32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {  // subnormal: normalize
            exp = 1;
            while (!(mant & 0x400)) { mant <<= 1; --exp; }
            mant &= 0x3ff;
            bits = sign | (uint32_t)(exp + 127 - 15) << 23 | (mant << 13);
        }
    } else {
        bits = sign | (uint32_t)(exp + 127 - 15) << 23 | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

std::string shape_str(const std::vector<int64_t>& s) {
    std::string r = "(";
    for (size_t k = 0; k < s.size(); ++k) r += (k ? ", " : "") + std::to_string(s[k]);
    return r + (s.size() == 1 ? ",)" : ")");
}

std::string json_brief(const Json& j) {
    switch (j.kind) {
        case Json::Null: return "None";
        case Json::Bool: return j.b ? "True" : "False";
        case Json::Int: return std::to_string(j.i);
        case Json::Float: { char b[32]; snprintf(b, sizeof b, "%g", j.f); return b; }
        case Json::String: return "'" + j.s.substr(0, 40) + "'";
        case Json::Array: return "[...]";
        default: return "{...}";
    }
}

void collect_refs(const Value& v, std::set<int>& out) {
    if (v.kind == Value::Ref) out.insert(v.slot);
    for (const auto& e : v.items) collect_refs(e, out);
}

Value materialize(const Value& v, const std::vector<Value>& env) {
    if (v.kind == Value::Ref) return env[(size_t)v.slot];
    if (v.items.empty()) return v;
    Value out;
    out.kind = v.kind;
    out.items.reserve(v.items.size());
    for (const auto& e : v.items) out.items.push_back(materialize(e, env));
    return out;
}

}  // namespace

struct Step {
    std::string name, op;
    std::function<Value(std::vector<Value>&)> run;
    std::vector<int> reads;
    std::vector<int> free_after;
    double seconds = 0;
};

struct Model {
    std::string source;
    std::vector<int64_t> input_shape;
    std::vector<int64_t> trial_out_shape;
    std::vector<Step> steps;
    int threads = 0;
    bool profile = false;

    // ---- loading ----------------------------------------------------------------------------
    std::vector<uint8_t> bytes;
    std::map<std::string, FileTensor> tensors;

    [[noreturn]] void fail(const std::string& problem, const std::string& fix = kReexport) const {
        throw Error(BNN_E_FORMAT, source + ": " + problem + "; " + fix);
    }

    void read_container() {
        auto corrupt = [&](const std::string& why) {
            fail("not a readable .bnn (safetensors) file, it is corrupt or truncated (" + why + ")");
        };
        if (bytes.size() < 8) corrupt("shorter than the 8-byte header length");
        uint64_t hlen = 0;
        for (int k = 7; k >= 0; --k) hlen = hlen << 8 | bytes[(size_t)k];
        if (hlen > bytes.size() - 8) corrupt("its header length " + std::to_string(hlen) + " runs past the end of the file");
        if (hlen > kMaxHeader) corrupt("its header is larger than 100 MiB");
        Json header;
        std::string err;
        JsonParser parser;
        if (!parser.parse((const char*)bytes.data() + 8, (size_t)hlen, header, err)) corrupt("its header is not valid JSON: " + err);
        if (header.kind != Json::Object) corrupt("its header is not a JSON object");
        const uint8_t* data = bytes.data() + 8 + hlen;
        const uint64_t data_len = bytes.size() - 8 - hlen;
        std::vector<std::pair<uint64_t, uint64_t>> spans;
        std::map<std::string, std::string> meta;
        for (const auto& kv : header.obj) {
            const Json& v = kv.second;
            if (kv.first == "__metadata__") {
                if (v.kind != Json::Object) corrupt("its __metadata__ is not an object");
                for (const auto& m : v.obj) {
                    if (m.second.kind != Json::String) corrupt("its __metadata__ holds a value that is not a string");
                    meta[m.first] = m.second.s;
                }
                continue;
            }
            const Json *dt = v.kind == Json::Object ? v.get("dtype") : nullptr, *sh = dt ? v.get("shape") : nullptr,
                       *off = sh ? v.get("data_offsets") : nullptr;
            if (!dt || !sh || !off || dt->kind != Json::String || sh->kind != Json::Array || off->kind != Json::Array ||
                off->arr.size() != 2)
                corrupt("tensor '" + kv.first + "' lacks a dtype, shape or data_offsets");
            FileTensor t;
            t.dtype = dt->s;
            const int64_t es = dtype_size(t.dtype);
            if (!es) corrupt("tensor '" + kv.first + "' has an unknown dtype " + t.dtype);
            int64_t numel = 1;
            for (const auto& d : sh->arr) {
                if (d.kind != Json::Int || d.i < 0) corrupt("tensor '" + kv.first + "' has a bad shape");
                if (__builtin_mul_overflow(numel, d.i, &numel) || numel > (int64_t(1) << 40))
                    corrupt("tensor '" + kv.first + "' has a shape whose size overflows");
                t.shape.push_back(d.i);
            }
            if (t.shape.size() > 8) corrupt("tensor '" + kv.first + "' has more than 8 dimensions");
            const Json &b = off->arr[0], &e = off->arr[1];
            if (b.kind != Json::Int || e.kind != Json::Int || b.i < 0 || e.i < b.i || (uint64_t)e.i > data_len)
                corrupt("tensor '" + kv.first + "' has data offsets outside the file's data");
            if ((uint64_t)(e.i - b.i) != (uint64_t)numel * (uint64_t)es)
                corrupt("tensor '" + kv.first + "' has " + std::to_string(e.i - b.i) + " bytes for its shape and dtype");
            t.data = data + b.i;
            t.nbytes = (size_t)(e.i - b.i);
            t.numel = numel;
            spans.emplace_back((uint64_t)b.i, (uint64_t)e.i);
            tensors[kv.first] = t;
        }
        std::sort(spans.begin(), spans.end());
        for (size_t k = 1; k < spans.size(); ++k)
            if (spans[k].first < spans[k - 1].second) corrupt("two tensors' data overlap");
        // the format
        auto fmt = meta.find("format");
        if (fmt == meta.end() || fmt->second != "bnnkit-deploy")
            fail("not a bnnkit deployment file (format " + (fmt == meta.end() ? std::string("None") : "'" + fmt->second.substr(0, 40) + "'") +
                 ", expected 'bnnkit-deploy')");
        auto ver = meta.find("format_version");
        const std::string vs = ver == meta.end() ? "" : ver->second;
        char* endp = nullptr;
        errno = 0;
        long long version = vs.empty() ? 0 : strtoll(vs.c_str(), &endp, 10);
        if (vs.empty() || *endp || errno) fail("unreadable format version '" + vs.substr(0, 40) + "'");
        if (version < 3) fail("format version " + std::to_string(version) + " has no graph checksum, this libbnn reads version 3");
        if (version != kFormatVersion) fail("format version " + std::to_string(version) + ", this libbnn reads version 3", "upgrade bnnkit (libbnn)");
        auto graph_it = meta.find("graph");
        const std::string graph_text = graph_it == meta.end() ? "" : graph_it->second;
        auto gsha = meta.find("graph_sha256");
        if (gsha == meta.end()) fail("lacks its graph checksum (the header was edited or is corrupt)");
        if (gsha->second != Sha256::of(graph_text.data(), graph_text.size()))
            fail("its graph does not match its checksum (the header was edited or is corrupt)");
        Json graph;
        if (!parser.parse(graph_text.data(), graph_text.size(), graph, err)) fail("its graph metadata is not valid JSON (" + err + ")");
        if (graph.kind != Json::Object) fail("its graph metadata is not a JSON object");
        const Json* digests = graph.get("digests");
        bool same = digests && digests->kind == Json::Object && digests->obj.size() == tensors.size();
        if (same)
            for (const auto& kv : digests->obj)
                if (!tensors.count(kv.first) || kv.second.kind != Json::String) same = false;
        if (!same) fail("its tensor checksums do not list exactly the tensors in the file");
        for (const auto& kv : digests->obj) {
            const FileTensor& t = tensors[kv.first];
            if (Sha256::of(t.data, t.nbytes) != kv.second.s)
                fail("tensor '" + kv.first + "' does not match its checksum (the file is corrupt)");
        }
        build(graph);
    }

    // ---- tensors of a node ------------------------------------------------------------------
    const FileTensor* node_tensor(const Json& node, const std::string& name, const char* role, bool optional) const {
        const Json* ts = node.get("tensors");
        const Json* t = ts ? ts->get(role) : nullptr;
        if (!t) {
            if (optional) return nullptr;
            fail("node '" + name + "' lacks tensor '" + role + "'");
        }
        if (t->kind != Json::String || !tensors.count(t->s))
            fail("node '" + name + "' names a tensor " + json_brief(*t) + " that is not in the file");
        return &tensors.at(t->s);
    }
    std::string tname(const Json& node, const char* role) const { return node.get("tensors")->get(role)->s; }

    void expect(const Json& node, const std::string& name, const char* role, const FileTensor* t, const char* dtype,
                const std::vector<int64_t>* shape, int dims) const {
        if (t->dtype != dtype)
            fail("tensor '" + tname(node, role) + "' has dtype " + torch_dtype(t->dtype) + ", expected " + torch_dtype(dtype));
        if (dims >= 0 && (int)t->shape.size() != dims)
            fail("tensor '" + tname(node, role) + "' has shape " + shape_str(t->shape) + ", expected " + std::to_string(dims) + " dimensions");
        if (shape && t->shape != *shape)
            fail("tensor '" + tname(node, role) + "' has shape " + shape_str(t->shape) + ", expected " + shape_str(*shape));
        (void)name;
    }
    std::vector<float> f32(const Json& node, const std::string& name, const char* role, const std::vector<int64_t>* shape,
                           int dims, bool optional, bool* present = nullptr) const {
        const FileTensor* t = node_tensor(node, name, role, optional);
        if (present) *present = t != nullptr;
        if (!t) return {};
        expect(node, name, role, t, "F32", shape, dims);
        std::vector<float> v((size_t)t->numel);
        memcpy(v.data(), t->data, t->nbytes);
        return v;
    }
    // a conv's or linear layer's weight: float32, float16, or int8 with per-row weight_scale
    std::vector<float> real_weight(const Json& node, const std::string& name, int dims, std::vector<int64_t>& shape) const {
        const FileTensor* t = node_tensor(node, name, "weight", false);
        if ((int)t->shape.size() != dims)
            fail("tensor '" + tname(node, "weight") + "' has shape " + shape_str(t->shape) + ", expected " + std::to_string(dims) + " dimensions");
        shape = t->shape;
        const bool scaled = node_tensor(node, name, "weight_scale", true) != nullptr;
        if (scaled && t->dtype != "I8") fail("node '" + name + "' has a weight_scale but its weight is not int8");
        std::vector<float> v((size_t)t->numel);
        if (t->dtype == "F32") {
            memcpy(v.data(), t->data, t->nbytes);
        } else if (t->dtype == "F16") {
            for (int64_t k = 0; k < t->numel; ++k) {
                uint16_t h;
                memcpy(&h, t->data + 2 * k, 2);
                v[(size_t)k] = half_to_float(h);
            }
        } else if (t->dtype == "I8") {
            std::vector<int64_t> sshape = {shape[0]};
            std::vector<float> sc = f32(node, name, "weight_scale", &sshape, 1, false);
            for (float f : sc)
                if (!std::isfinite(f) || !(f > 0))
                    fail("tensor '" + tname(node, "weight_scale") + "' of int8 weight '" + tname(node, "weight") +
                         "' must be finite and > 0");
            const int64_t row = shape[0] ? t->numel / shape[0] : 0;
            for (int64_t k = 0; k < t->numel; ++k)
                v[(size_t)k] = (float)(int8_t)t->data[k] * sc[(size_t)(k / row)];
        } else {
            fail("tensor '" + tname(node, "weight") + "' has dtype " + torch_dtype(t->dtype) +
                 ", expected torch.float32 (or a compact torch.float16 / torch.int8)");
        }
        return v;
    }

    int64_t int_attr(const Json& attrs, const std::string& name, const char* key, int64_t minimum) const {
        const Json* v = attrs.get(key);
        if (!v || v->kind != Json::Int || v->i < minimum || v->i >= (int64_t(1) << 31))
            fail("node '" + name + "': attribute '" + key + "' must be 1 integer(s) >= " + std::to_string(minimum) +
                 ", got " + (v ? json_brief(*v) : "None"));
        return v->i;
    }
    void int2_attr(const Json& attrs, const std::string& name, const char* key, int64_t minimum, int64_t out[2]) const {
        const Json* v = attrs.get(key);
        bool ok = v && v->kind == Json::Array && v->arr.size() == 2;
        if (ok)
            for (const auto& e : v->arr) ok = ok && e.kind == Json::Int && e.i >= minimum && e.i < (int64_t(1) << 31);
        if (!ok)
            fail("node '" + name + "': attribute '" + key + "' must be 2 integer(s) >= " + std::to_string(minimum) +
                 ", got " + (v ? json_brief(*v) : "None"));
        out[0] = v->arr[0].i;
        out[1] = v->arr[1].i;
    }

    // ---- the graph --------------------------------------------------------------------------
    Value decode(const Json& a, const std::map<std::string, int>& slots, const std::string& node) const {
        switch (a.kind) {
            case Json::Null: return Value();
            case Json::Bool: return Value::of_bool(a.b);
            case Json::Int: return Value::of_int(a.i);
            case Json::Float: return Value::of_float(a.f);
            case Json::String: { Value v; v.kind = Value::Str; v.s = a.s; return v; }
            case Json::Object:
                if (a.obj.size() == 1) {
                    const std::string& k = a.obj[0].first;
                    const Json& v = a.obj[0].second;
                    if (k == "ref") {
                        auto it = v.kind == Json::String ? slots.find(v.s) : slots.end();
                        if (it == slots.end()) fail("node '" + node + "' refers to " + json_brief(v) + ", which is not an earlier node");
                        Value r;
                        r.kind = Value::Ref;
                        r.slot = it->second;
                        return r;
                    }
                    if (k == "slice" && v.kind == Json::Array && v.arr.size() == 3) {
                        std::vector<Value> parts;
                        for (const auto& e : v.arr) parts.push_back(decode(e, slots, node));
                        return Value::seq(Value::Slice, parts);
                    }
                    if ((k == "tuple" || k == "list") && v.kind == Json::Array) {
                        std::vector<Value> parts;
                        for (const auto& e : v.arr) parts.push_back(decode(e, slots, node));
                        return Value::seq(k == "tuple" ? Value::Tuple : Value::List, parts);
                    }
                    if (k == "ellipsis") { Value e; e.kind = Value::Ellipsis; return e; }
                }
                break;
            default: break;
        }
        fail("node '" + node + "' has an argument of unknown form " + json_brief(a));
    }

    static bool known_op(const std::string& op) {
        static const std::set<std::string> ops = {"input", "bconv", "wconv", "conv", "linear", "batchnorm", "prelu",
                                                  "constant", "call", "method", "alias", "output"};
        return ops.count(op) > 0;
    }

    void build(const Json& graph) {
        const Json* nodes = graph.get("nodes");
        if (!nodes || nodes->kind != Json::Array || nodes->arr.size() < 2) fail("the graph has no node list");
        const Json* shape = graph.get("input_shape");
        bool ok = shape && shape->kind == Json::Array && shape->arr.size() == 4;
        if (ok)
            for (const auto& s : shape->arr) ok = ok && s.kind == Json::Int && s.i > 0 && s.i < (int64_t(1) << 20);
        if (ok) {
            int64_t n = 1;
            for (const auto& s : shape->arr) n *= s.i;
            ok = n <= (int64_t(1) << 26);
        }
        if (!ok) fail("the graph's input_shape must be 4 positive integers of at most 2^26 values in all");
        run_limit_floats() = max_tensor_floats();  // the constants: as large as the file holds
        for (const auto& s : shape->arr) input_shape.push_back(s.i);
        std::map<std::string, int> slots;
        const size_t count = nodes->arr.size();
        for (size_t i = 0; i < count; ++i) {
            const Json& node = nodes->arr[i];
            const Json* nm = node.kind == Json::Object ? node.get("name") : nullptr;
            const Json* op = node.kind == Json::Object ? node.get("op") : nullptr;
            auto dict_or_absent = [&](const char* key, Json::Kind kind) {
                const Json* v = node.get(key);
                return !v || v->kind == kind;
            };
            if (!nm || nm->kind != Json::String || !op || op->kind != Json::String || !known_op(op->s) ||
                !dict_or_absent("args", Json::Array) || !dict_or_absent("kwargs", Json::Object) ||
                !dict_or_absent("attrs", Json::Object) || !dict_or_absent("tensors", Json::Object))
                fail("graph node " + std::to_string(i) + " is malformed or has an unknown operation " +
                         (op && op->kind == Json::String ? "'" + op->s.substr(0, 40) + "'" : std::string("None")) + " (a newer bnnkit may have written it)",
                     "upgrade bnnkit (libbnn) or re-export the model");
            const std::string name = nm->s, kind = op->s;
            if (slots.count(name)) fail("node name '" + name.substr(0, 60) + "' is used twice");
            if ((kind == "input") != (i == 0) || (kind == "output") != (i == count - 1))
                fail("the graph must start with its input node and end with its output node");
            static const Json empty_arr = [] { Json j; j.kind = Json::Array; return j; }();
            static const Json empty_obj = [] { Json j; j.kind = Json::Object; return j; }();
            const Json& args_j = node.get("args") ? *node.get("args") : empty_arr;
            const Json& kwargs_j = node.get("kwargs") ? *node.get("kwargs") : empty_obj;
            const Json& attrs = node.get("attrs") ? *node.get("attrs") : empty_obj;
            std::vector<Value> args;
            for (const auto& a : args_j.arr) args.push_back(decode(a, slots, name));
            std::vector<std::pair<std::string, Value>> kwargs;
            for (const auto& kv : kwargs_j.obj) kwargs.emplace_back(kv.first, decode(kv.second, slots, name));
            std::set<int> reads;
            for (const auto& a : args) collect_refs(a, reads);
            for (const auto& kv : kwargs) collect_refs(kv.second, reads);
            Step st;
            st.name = name;
            st.op = kind;
            st.reads.assign(reads.begin(), reads.end());
            st.run = make(node, name, kind, attrs, args, kwargs);
            const int slot = (int)slots.size();
            slots[name] = slot;
            steps.push_back(std::move(st));
        }
        // the last use of every value, to free intermediates early
        std::vector<int> last(steps.size(), -1);
        for (size_t k = 0; k < steps.size(); ++k)
            for (int r : steps[k].reads) last[(size_t)r] = (int)k;
        for (size_t s = 0; s < steps.size(); ++s)
            if (last[s] >= 0 && last[s] < (int)steps.size() - 1) steps[(size_t)last[s]].free_after.push_back((int)s);
        tensors.clear();
        std::vector<uint8_t>().swap(bytes);
        trial_run();
    }

    std::function<Value(std::vector<Value>&)> make(const Json& node, const std::string& name, const std::string& op,
                                                   const Json& attrs, std::vector<Value>& args,
                                                   std::vector<std::pair<std::string, Value>>& kwargs) {
        auto one_input = [&]() -> int {
            if (args.size() != 1 || args[0].kind != Value::Ref || !kwargs.empty())
                fail("node '" + name + "' (" + op + ") takes exactly one input");
            return args[0].slot;
        };
        auto tensor_in = [name](std::vector<Value>& env, int slot) -> const Tensor& {
            const Value& v = env[(size_t)slot];
            if (v.kind != Value::Tens) fail_run(std::string("expects a tensor input, got a ") + v.type_name());
            return v.t;
        };
        if (op == "input") return [](std::vector<Value>&) { return Value(); };
        if (op == "output") {
            if (args.size() != 1) fail("the output node takes one value");
            Value out = args[0];
            return [out](std::vector<Value>& env) { return materialize(out, env); };
        }
        if (op == "alias") {
            int src = one_input();
            return [src](std::vector<Value>& env) { return env[(size_t)src]; };
        }
        if (op == "constant") {
            const FileTensor* t = node_tensor(node, name, "value", true);
            if (!t) fail("constant '" + name + "' lacks its tensor");
            if (t->dtype != "F32" || t->shape.size() > 4)
                fail("constant '" + name + "' is a " + torch_dtype(t->dtype) + " tensor of shape " + shape_str(t->shape) +
                         ", libbnn runs float32 constants of up to 4 dimensions",
                     "export a model whose constants are float32");
            Tensor c = Tensor::empty(t->shape);
            memcpy(c.data(), t->data, t->nbytes);
            return [c](std::vector<Value>&) { return Value::of_tensor(c); };
        }
        if (op == "bconv" || op == "wconv") {
            int src = one_input();
            auto conv = std::make_shared<BinaryConv>();
            BinaryConv& b = *conv;
            b.Cin = int_attr(attrs, name, "in_channels", 1);
            b.O = int_attr(attrs, name, "out_channels", 1);
            int64_t kernel[2];
            int2_attr(attrs, name, "kernel", 1, kernel);
            int2_attr(attrs, name, "stride", 1, b.stride);
            int2_attr(attrs, name, "padding", 0, b.pad);
            int2_attr(attrs, name, "dilation", 1, b.dil);
            b.G = int_attr(attrs, name, "groups", 1);
            const Json* center = attrs.get("center");
            if (center && center->kind != Json::Bool) fail("node '" + name + "': attribute 'center' must be true or false");
            b.center = center && center->b;
            if (b.Cin % b.G || b.O % b.G)
                fail("node '" + name + "': channels " + std::to_string(b.Cin) + "->" + std::to_string(b.O) +
                     " are not divisible by groups " + std::to_string(b.G));
            b.kh = kernel[0];
            b.kw = kernel[1];
            b.K = b.kh * b.kw;
            if (b.K > 4096 || b.kh > 1024 || b.kw > 1024) fail("node '" + name + "': kernel " + std::to_string(b.kh) + "x" + std::to_string(b.kw) + " is too large");
            b.Cg = b.Cin / b.G;
            b.Cw = (b.Cg + 63) / 64;
            b.real_input = op == "wconv";
            std::vector<int64_t> wshape = {b.O, b.K, b.Cw}, oshape = {b.O};
            const FileTensor* w = node_tensor(node, name, "weight", false);
            expect(node, name, "weight", w, "I64", &wshape, -1);
            b.w_bits.resize((size_t)w->numel);
            memcpy(b.w_bits.data(), w->data, w->nbytes);
            b.prescale = f32(node, name, "prescale", &oshape, -1, false);
            b.scale = f32(node, name, "scale", &oshape, -1, false);
            b.bias = f32(node, name, "bias", &oshape, -1, false);
            const int64_t used = b.Cg - 64 * (b.Cw - 1);
            if (used < 64)
                for (size_t k = b.Cw - 1; k < b.w_bits.size(); k += (size_t)b.Cw)
                    if (b.w_bits[k] >> used) fail("node '" + name + "': packed weights have bits set beyond channel " + std::to_string(b.Cg));
            const FileTensor* z = node_tensor(node, name, "zeros", true);
            if (z) {
                expect(node, name, "zeros", z, "I32", nullptr, 2);
                const int64_t lim[4] = {b.O, b.Cg, b.kh, b.kw};
                bool bad = z->shape[1] != 4 || z->shape[0] == 0;
                b.zeros.resize((size_t)z->numel);
                memcpy(b.zeros.data(), z->data, z->nbytes);
                for (size_t k = 0; !bad && k < b.zeros.size(); ++k) bad = b.zeros[k] < 0 || b.zeros[k] >= lim[k % 4];
                if (bad) fail("node '" + name + "': its list of zero weights has rows outside the weight's shape");
            }
            b.prepare();
            return [conv, src, tensor_in, this](std::vector<Value>& env) {
                return Value::of_tensor(conv->run(tensor_in(env, src), run_threads()));
            };
        }
        if (op == "conv") {
            int src = one_input();
            std::vector<int64_t> ws;
            auto w = std::make_shared<std::vector<float>>(real_weight(node, name, 4, ws));
            const int64_t groups = int_attr(attrs, name, "groups", 1);
            std::vector<int64_t> bshape = {ws[0]};
            bool has_bias = false;
            auto bias = std::make_shared<std::vector<float>>(f32(node, name, "bias", &bshape, -1, true, &has_bias));
            int64_t stride[2], pad[2], dil[2];
            int2_attr(attrs, name, "stride", 1, stride);
            int2_attr(attrs, name, "padding", 0, pad);
            int2_attr(attrs, name, "dilation", 1, dil);
            if (ws[0] % groups)
                fail("node '" + name + "': " + std::to_string(ws[0]) + " output channels not divisible by groups " + std::to_string(groups));
            if (ws[0] < 1 || ws[1] < 1 || ws[2] < 1 || ws[3] < 1) fail("node '" + name + "': conv weight of shape " + shape_str(ws) + " is empty");
            return [=](std::vector<Value>& env) {
                const int64_t st[2] = {stride[0], stride[1]}, pd[2] = {pad[0], pad[1]}, dl[2] = {dil[0], dil[1]};
                return Value::of_tensor(conv2d(tensor_in(env, src), w->data(), ws[0], ws[1], ws[2], ws[3],
                                               has_bias ? bias->data() : nullptr, st, pd, dl, groups));
            };
        }
        if (op == "linear") {
            int src = one_input();
            std::vector<int64_t> ws;
            auto w = std::make_shared<std::vector<float>>(real_weight(node, name, 2, ws));
            if (ws[0] < 1 || ws[1] < 1) fail("node '" + name + "': linear weight of shape " + shape_str(ws) + " is empty");
            std::vector<int64_t> bshape = {ws[0]};
            bool has_bias = false;
            auto bias = std::make_shared<std::vector<float>>(f32(node, name, "bias", &bshape, -1, true, &has_bias));
            return [=](std::vector<Value>& env) {
                return Value::of_tensor(linear(tensor_in(env, src), w->data(), ws[0], ws[1], has_bias ? bias->data() : nullptr));
            };
        }
        if (op == "batchnorm") {
            int src = one_input();
            std::vector<float> rm = f32(node, name, "running_mean", nullptr, 1, false);
            std::vector<int64_t> cs = {(int64_t)rm.size()};
            std::vector<float> rv = f32(node, name, "running_var", &cs, -1, false);
            bool has_w = false, has_b = false;
            std::vector<float> bw = f32(node, name, "weight", &cs, -1, true, &has_w);
            std::vector<float> bb = f32(node, name, "bias", &cs, -1, !has_w, &has_b);
            const Json* eps = attrs.get("eps");
            if (!eps || eps->kind != Json::Float || !(eps->f > 0) || !std::isfinite(eps->f))
                fail("node '" + name + "': eps must be a positive finite number, got " + (eps ? json_brief(*eps) : "None"));
            // PyTorch's CPU eval kernel: scale = w * rsqrt(var + eps), bias = b - mean * scale (one rounding)
            std::vector<float> a(rm.size()), c(rm.size());
            const float e = (float)eps->f;
            for (size_t k = 0; k < rm.size(); ++k) {
                const float inv = 1.0f / std::sqrt(rv[k] + e);
                a[k] = inv * (has_w ? bw[k] : 1.0f);
                c[k] = std::fma(-rm[k], a[k], has_b ? bb[k] : 0.0f);
            }
            return [=](std::vector<Value>& env) { return Value::of_tensor(channel_fma(tensor_in(env, src), a, c)); };
        }
        if (op == "prelu") {
            int src = one_input();
            std::vector<float> w = f32(node, name, "weight", nullptr, 1, false);
            return [=](std::vector<Value>& env) { return Value::of_tensor(prelu(tensor_in(env, src), w)); };
        }
        if (op == "call" || op == "method") {
            const Json* which = attrs.get(op == "call" ? "fn" : "method");
            const std::string fname = which && which->kind == Json::String ? which->s : "";
            OpFn fn = op == "call" ? find_function(fname) : find_method(fname);
            if (!fn) {
                const bool listed = op == "call" ? (fname == "F.adaptive_max_pool2d") : false;
                (void)listed;
                if (op == "call")
                    fail("node '" + name + "' calls '" + fname.substr(0, 60) + "', which libbnn does not provide",
                         "run it with bnnkit's Python runtime (engine=\"python\") or upgrade libbnn");
                fail("node '" + name + "' calls tensor method '" + fname.substr(0, 60) + "', which libbnn does not provide",
                     "run it with bnnkit's Python runtime (engine=\"python\") or upgrade libbnn");
            }
            if (op == "method" && (args.empty() || args[0].kind != Value::Ref))
                fail("node '" + name + "' calls tensor method '" + fname + "' without a value to call it on");
            std::vector<Value> a = args;
            auto kw = kwargs;
            return [fn, a, kw](std::vector<Value>& env) {
                Args call;
                call.pos.reserve(a.size());
                for (const auto& v : a) call.pos.push_back(materialize(v, env));
                for (const auto& kv : kw) call.kw.emplace_back(kv.first, materialize(kv.second, env));
                return fn(call);
            };
        }
        fail("unknown operation '" + op + "'");
    }

    // ---- running ----------------------------------------------------------------------------
    int run_threads() const {
#ifdef _OPENMP
        return threads > 0 ? threads : omp_get_max_threads();
#else
        return 1;
#endif
    }

    Tensor run(const Tensor& x, bool trial) {
        set_op_threads(run_threads());
        set_run_limit(x.numel());
        std::vector<Value> env(steps.size());
        env[0] = Value::of_tensor(x);
        for (size_t k = 1; k < steps.size(); ++k) {
            Step& s = steps[k];
            try {
                if (profile && !trial) {
                    auto t0 = std::chrono::steady_clock::now();
                    env[k] = s.run(env);
                    s.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                } else {
                    env[k] = s.run(env);
                }
            } catch (const Error& e) {
                std::string reason = e.what();
                if (trial)
                    fail("node '" + s.name + "' (" + s.op + ") cannot run on the file's input shape " + shape_str(input_shape) +
                         ": " + reason.substr(0, 200));
                throw Error(BNN_E_RUN, "node '" + s.name + "' (" + s.op + ") failed: " + reason + "; check the input, or " + kReexport);
            }
            for (int f : s.free_after) env[(size_t)f] = Value();
        }
        Value& out = env.back();
        if (out.kind != Value::Tens) {
            if (trial) fail(std::string("the graph's output is a ") + out.type_name() + ", not a tensor");
            throw Error(BNN_E_RUN, "the graph's output is not a tensor");
        }
        return out.t;
    }

    void trial_run() {
        Tensor x = Tensor::zeros(input_shape);
        Tensor y = run(x, true);
        trial_out_shape = y.shape;
        if (y.dim() < 1 || y.shape[0] != input_shape[0]) fail("the graph's output " + y.shape_str() + " does not have the batch as its first dimension");
    }
};

}  // namespace bnn

struct bnn_model {
    bnn::Model m;
};

namespace {

thread_local std::string g_error;

// the message as one line: names and strings from the file may hold newlines or other control
// characters, written here as \n, \xNN
std::string one_line(const std::string& m) {
    std::string out;
    out.reserve(m.size());
    for (unsigned char c : m) {
        if (c == '\n') out += "\\n";
        else if (c < 0x20 || c == 0x7f) { char b[8]; snprintf(b, sizeof b, "\\x%02x", c); out += b; }
        else out += (char)c;
    }
    return out;
}

template <typename F>
int guarded(F f) {
    g_error.clear();
    try {
        f();
        return BNN_OK;
    } catch (const bnn::Error& e) {
        g_error = one_line(e.what());
        return e.code;
    } catch (const std::bad_alloc&) {
        g_error = "out of memory; use a smaller batch or free memory";
        return BNN_E_MEMORY;
    } catch (const std::exception& e) {
        g_error = one_line(std::string("internal error: ") + e.what() + "; please report it");
        return BNN_E_RUN;
    } catch (...) {
        g_error = "internal error; please report it";
        return BNN_E_RUN;
    }
}

int load_bytes(std::vector<uint8_t>&& bytes, const std::string& source, bnn_model** out) {
    if (!out) {
        g_error = "bnn_load: out is NULL; pass the address of a bnn_model pointer";
        return BNN_E_ARGUMENT;
    }
    *out = nullptr;
    bnn_model* model = nullptr;
    int rc = guarded([&] {
        bnn::init_isa();
        model = new bnn_model();
        model->m.source = source;
        model->m.bytes = std::move(bytes);
        model->m.read_container();
    });
    if (rc != BNN_OK) {
        delete model;
        return rc;
    }
    *out = model;
    return BNN_OK;
}

}  // namespace

extern "C" {

int bnn_load(const char* path, bnn_model** out) {
    g_error.clear();
    if (!path) {
        g_error = "bnn_load: path is NULL; pass the .bnn file's path";
        return BNN_E_ARGUMENT;
    }
    std::vector<uint8_t> bytes;
    int rc = guarded([&] {
        FILE* f = fopen(path, "rb");
        if (!f) throw bnn::Error(BNN_E_IO, std::string(path) + ": no such file or not readable (" + strerror(errno) + "); check the path");
        if (fseek(f, 0, SEEK_END) != 0) {
            fclose(f);
            throw bnn::Error(BNN_E_IO, std::string(path) + ": not a regular file; check the path");
        }
        long n = ftell(f);
        if (n < 0 || fseek(f, 0, SEEK_SET) != 0) {
            fclose(f);
            throw bnn::Error(BNN_E_IO, std::string(path) + ": not a regular file; check the path");
        }
        bytes.resize((size_t)n);
        size_t got = n ? fread(bytes.data(), 1, (size_t)n, f) : 0;
        fclose(f);
        if (got != (size_t)n) throw bnn::Error(BNN_E_IO, std::string(path) + ": could not be read completely; check the file");
    });
    if (rc != BNN_OK) return rc;
    return load_bytes(std::move(bytes), path, out);
}

int bnn_load_memory(const void* data, size_t len, const char* name, bnn_model** out) {
    g_error.clear();
    if (!data && len) {
        g_error = "bnn_load_memory: data is NULL; pass the file's bytes";
        return BNN_E_ARGUMENT;
    }
    std::vector<uint8_t> bytes;
    int rc = guarded([&] { bytes.assign((const uint8_t*)data, (const uint8_t*)data + len); });
    if (rc != BNN_OK) return rc;
    return load_bytes(std::move(bytes), name ? name : "<memory>", out);
}

int bnn_input_shape(const bnn_model* m, int64_t shape[4]) {
    g_error.clear();
    if (!m || !shape) {
        g_error = "bnn_input_shape: NULL argument; pass a loaded model and room for 4 sizes";
        return BNN_E_ARGUMENT;
    }
    for (int k = 0; k < 4; ++k) shape[k] = m->m.input_shape[(size_t)k];
    return BNN_OK;
}

int bnn_output_shape(const bnn_model* m, int64_t batch, int64_t shape[4], int* ndim) {
    g_error.clear();
    if (!m || !shape || !ndim || batch < 1) {
        g_error = "bnn_output_shape: NULL argument or batch < 1; pass a loaded model, a batch >= 1 and room for 4 sizes";
        return BNN_E_ARGUMENT;
    }
    const auto& s = m->m.trial_out_shape;
    if (s.size() > 4) {
        g_error = "bnn_output_shape: the output has more than 4 dimensions";
        return BNN_E_RUN;
    }
    *ndim = (int)s.size();
    for (size_t k = 0; k < s.size(); ++k) shape[k] = k == 0 ? batch : s[k];
    return BNN_OK;
}

int bnn_run(bnn_model* m, const float* x, int64_t n, float* out, int64_t out_len) {
    g_error.clear();
    if (!m || !x || !out || n < 1) {
        g_error = "bnn_run: NULL argument or n < 1; pass a loaded model, n >= 1 samples and an output buffer";
        return BNN_E_ARGUMENT;
    }
    bnn::Model& model = m->m;
    int64_t per = model.input_shape[1] * model.input_shape[2] * model.input_shape[3];
    int64_t want = 1, total = 0;
    for (size_t k = 1; k < model.trial_out_shape.size(); ++k) want *= model.trial_out_shape[k];  // checked at load
    const bool too_many = n > (int64_t(1) << 40) / per || __builtin_mul_overflow(n, want, &total);
    if (too_many || out_len != total) {
        g_error = "bnn_run: the output buffer holds " + std::to_string(out_len) + " floats, the output of " +
                  std::to_string(n) + " samples has " + (too_many ? std::string("too many") : std::to_string(total)) +
                  "; size it with bnn_output_shape";
        return BNN_E_ARGUMENT;
    }
    return guarded([&] {
        bnn::Tensor t = bnn::Tensor::empty({n, model.input_shape[1], model.input_shape[2], model.input_shape[3]});
        memcpy(t.data(), x, (size_t)(n * per) * sizeof(float));
        bnn::Tensor y = model.run(t, false);
        if (y.numel() != out_len)
            throw bnn::Error(BNN_E_RUN, "the output has shape " + y.shape_str() + ", not " + std::to_string(out_len) +
                                            " values; the batch changed the graph's output shape");
        memcpy(out, y.data(), (size_t)out_len * sizeof(float));
    });
}

int bnn_set_threads(bnn_model* m, int threads) {
    g_error.clear();
    if (!m) {
        g_error = "bnn_set_threads: model is NULL; pass a loaded model";
        return BNN_E_ARGUMENT;
    }
    m->m.threads = threads > 0 ? threads : 0;
    return BNN_OK;
}

const char* bnn_isa(const bnn_model* m) {
    (void)m;
    return bnn::isa_name();
}

int bnn_profile(bnn_model* m, int enable) {
    g_error.clear();
    if (!m) {
        g_error = "bnn_profile: model is NULL; pass a loaded model";
        return BNN_E_ARGUMENT;
    }
    m->m.profile = enable != 0;
    for (auto& s : m->m.steps) s.seconds = 0;
    return BNN_OK;
}

int64_t bnn_layer_count(const bnn_model* m) { return m ? (int64_t)m->m.steps.size() : 0; }

int bnn_layer_info(const bnn_model* m, int64_t i, const char** name, const char** op, double* seconds) {
    g_error.clear();
    if (!m || i < 0 || i >= (int64_t)m->m.steps.size()) {
        g_error = "bnn_layer_info: no such layer; pass 0 <= i < bnn_layer_count(m)";
        return BNN_E_ARGUMENT;
    }
    const bnn::Step& s = m->m.steps[(size_t)i];
    if (name) *name = s.name.c_str();
    if (op) *op = s.op.c_str();
    if (seconds) *seconds = s.seconds;
    return BNN_OK;
}

const char* bnn_last_error(void) { return g_error.c_str(); }

void bnn_free(bnn_model* m) { delete m; }

}  // extern "C"

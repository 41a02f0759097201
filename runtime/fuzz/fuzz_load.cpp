// libFuzzer target for libbnn: the bytes as a .bnn file through bnn_load_memory and, when the file
// loads, bnn_run on one sample of its input shape. Every failure must be an error code with one
// non-empty line in bnn_last_error; anything else (a crash, a sanitizer report, a multi-line or
// empty message, a model handed back with an error) aborts.
//
// A mutated file almost never passes the SHA-256 checks, which would keep the fuzzer at the door,
// so every input is loaded twice: as it is (the checksum checks themselves), and with its
// checksums recomputed (graph_sha256 and every tensor digest), which lets the mutations of the
// graph, the shapes, dtypes and offsets reach the code behind the checks.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "json.hpp"
#include "libbnn.h"
#include "sha256.hpp"

namespace {

using bnn::Json;

// larger inputs are not run again after the load's own trial run (that run already covered them)
const int64_t kMaxRunFloats = int64_t(1) << 22;

void check_error(int rc, const char* where) {
    const char* e = bnn_last_error();
    const bool bad = rc < BNN_E_ARGUMENT || rc > BNN_E_MEMORY || !e || !*e || strchr(e, '\n') || strchr(e, '\r');
    if (!bad) return;
    fprintf(stderr, "fuzz_load: %s returned %d with a bad error message: '%s'\n", where, rc, e ? e : "(null)");
    abort();
}

void dump(const Json& j, std::string& o);

void dump_string(const std::string& s, std::string& o) {
    o += '"';
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') { o += '\\'; o += (char)c; }
        else if (c < 0x20) { char b[8]; snprintf(b, sizeof b, "\\u%04x", c); o += b; }
        else o += (char)c;
    }
    o += '"';
}

void dump(const Json& j, std::string& o) {
    switch (j.kind) {
        case Json::Null: o += "null"; break;
        case Json::Bool: o += j.b ? "true" : "false"; break;
        case Json::Int: o += std::to_string(j.i); break;
        case Json::Float: {
            if (std::isnan(j.f)) { o += "NaN"; break; }
            if (std::isinf(j.f)) { o += j.f > 0 ? "Infinity" : "-Infinity"; break; }
            char b[40];
            snprintf(b, sizeof b, "%.17g", j.f);
            o += b;
            if (!strpbrk(b, ".eEn")) o += ".0";  // stays a float when read back
            break;
        }
        case Json::String: dump_string(j.s, o); break;
        case Json::Array:
            o += '[';
            for (size_t k = 0; k < j.arr.size(); ++k) { if (k) o += ", "; dump(j.arr[k], o); }
            o += ']';
            break;
        case Json::Object:
            o += '{';
            for (size_t k = 0; k < j.obj.size(); ++k) {
                if (k) o += ", ";
                dump_string(j.obj[k].first, o);
                o += ": ";
                dump(j.obj[k].second, o);
            }
            o += '}';
            break;
    }
}

Json* member(Json& j, const char* key) {
    for (auto& kv : j.obj)
        if (kv.first == key) return &kv.second;
    return nullptr;
}

// the file with its graph checksum and tensor digests recomputed; false when its container or
// metadata is too broken to say what they would be
bool with_checksums(const uint8_t* d, size_t n, std::vector<uint8_t>& out) {
    if (n < 8) return false;
    uint64_t hlen = 0;
    for (int k = 7; k >= 0; --k) hlen = hlen << 8 | d[k];
    if (hlen > n - 8) return false;
    Json header;
    std::string err;
    bnn::JsonParser parser;
    if (!parser.parse((const char*)d + 8, (size_t)hlen, header, err) || header.kind != Json::Object) return false;
    Json* meta = member(header, "__metadata__");
    Json* graph_text = meta && meta->kind == Json::Object ? member(*meta, "graph") : nullptr;
    if (!graph_text || graph_text->kind != Json::String) return false;
    const uint8_t* data = d + 8 + hlen;
    const uint64_t data_len = n - 8 - hlen;
    Json graph;
    if (parser.parse(graph_text->s.data(), graph_text->s.size(), graph, err) && graph.kind == Json::Object) {
        Json* digests = member(graph, "digests");
        if (digests && digests->kind == Json::Object)
            for (auto& kv : digests->obj) {
                const Json* t = header.get(kv.first);
                const Json* off = t && t->kind == Json::Object ? t->get("data_offsets") : nullptr;
                if (!off || off->kind != Json::Array || off->arr.size() != 2) continue;
                const Json &b = off->arr[0], &e = off->arr[1];
                if (b.kind != Json::Int || e.kind != Json::Int || b.i < 0 || e.i < b.i || (uint64_t)e.i > data_len) continue;
                kv.second = Json();
                kv.second.kind = Json::String;
                kv.second.s = bnn::Sha256::of(data + b.i, (size_t)(e.i - b.i));
            }
        graph_text->s.clear();
        dump(graph, graph_text->s);
    }
    Json* sha = member(*meta, "graph_sha256");
    if (sha) {
        *sha = Json();
        sha->kind = Json::String;
        sha->s = bnn::Sha256::of(graph_text->s.data(), graph_text->s.size());
    }
    std::string text;
    dump(header, text);
    out.resize(8);
    for (int k = 0; k < 8; ++k) out[(size_t)k] = (uint8_t)((uint64_t)text.size() >> (8 * k));
    out.insert(out.end(), text.begin(), text.end());
    out.insert(out.end(), data, data + data_len);
    return true;
}

void load_and_run(const uint8_t* d, size_t n) {
    bnn_model* m = (bnn_model*)&m;  // must come back NULL on failure
    int rc = bnn_load_memory(d, n, "fuzz.bnn", &m);
    if (rc != BNN_OK) {
        check_error(rc, "bnn_load_memory");
        if (m) { fprintf(stderr, "fuzz_load: a failed load handed back a model\n"); abort(); }
        return;
    }
    if (*bnn_last_error()) { fprintf(stderr, "fuzz_load: success with an error message\n"); abort(); }
    int64_t in[4];
    if (bnn_input_shape(m, in) != BNN_OK) abort();
    int64_t shape[4];
    int nd = 0;
    rc = bnn_output_shape(m, 1, shape, &nd);
    if (rc != BNN_OK) {
        check_error(rc, "bnn_output_shape");
    } else if (in[1] * in[2] * in[3] <= kMaxRunFloats) {
        int64_t per = in[1] * in[2] * in[3], out_len = 1;
        for (int k = 0; k < nd; ++k) out_len *= shape[k];
        std::vector<float> x((size_t)per), y((size_t)(out_len > 0 ? out_len : 1));
        // negatives, positives and exact zeros (ties of the binary activations)
        for (int64_t k = 0; k < per; ++k) x[(size_t)k] = (float)((k * 7919) % 11 - 5) * 0.25f;
        rc = bnn_run(m, x.data(), 1, y.data(), out_len);
        if (rc != BNN_OK) check_error(rc, "bnn_run");
    }
    bnn_free(m);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    // the fuzzer's memory limit: libbnn's own cap on a tensor, well under -rss_limit_mb
    setenv("BNN_MAX_TENSOR_MB", "128", 0);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    load_and_run(data, size);
    std::vector<uint8_t> fixed;
    if (with_checksums(data, size, fixed) && (fixed.size() != size || memcmp(fixed.data(), data, size) != 0))
        load_and_run(fixed.data(), fixed.size());
    return 0;
}

// A small JSON reader for the .bnn graph: a DOM of null, bool, int, float, string, array and
// object, with limits on nesting depth and input size, and an error message instead of an
// exception. Numbers without '.', 'e' or 'E' are integers (int64, refused if out of range), as
// Python's json writes them; NaN, Infinity and -Infinity are accepted (json.dumps(allow_nan=True)).
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace bnn {

struct Json {
    enum Kind { Null, Bool, Int, Float, String, Array, Object } kind = Null;
    bool b = false;
    int64_t i = 0;
    double f = 0;
    std::string s;
    std::vector<Json> arr;
    std::vector<std::pair<std::string, Json>> obj;  // in file order; keys unique (checked)

    const Json* get(const std::string& key) const {
        for (const auto& kv : obj)
            if (kv.first == key) return &kv.second;
        return nullptr;
    }
    bool is_num() const { return kind == Int || kind == Float; }
    double num() const { return kind == Int ? (double)i : f; }
};

class JsonParser {
public:
    static constexpr int kMaxDepth = 64;
    static constexpr size_t kMaxSize = size_t(256) << 20;

    // true on success; else `err` says what and where
    bool parse(const char* text, size_t n, Json& out, std::string& err) {
        p_ = text; end_ = text + n; begin_ = text;
        if (n > kMaxSize) { err = "JSON text larger than 256 MiB"; return false; }
        if (!value(out, 0)) { err = err_; return false; }
        ws();
        if (p_ != end_) { err = at("trailing characters after the JSON value"); return false; }
        return true;
    }

private:
    const char *p_ = nullptr, *end_ = nullptr, *begin_ = nullptr;
    std::string err_;

    std::string at(const char* what) const {
        return std::string(what) + " at offset " + std::to_string(p_ - begin_);
    }
    bool fail(const char* what) { err_ = at(what); return false; }
    void ws() { while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_; }
    bool lit(const char* w) {
        size_t n = strlen(w);
        if ((size_t)(end_ - p_) < n || memcmp(p_, w, n) != 0) return false;
        p_ += n;
        return true;
    }

    bool value(Json& v, int depth) {
        if (depth > kMaxDepth) return fail("JSON nested deeper than 64 levels");
        ws();
        if (p_ >= end_) return fail("unexpected end of JSON");
        char c = *p_;
        if (c == '{') return object(v, depth);
        if (c == '[') return array(v, depth);
        if (c == '"') { v.kind = Json::String; return string(v.s); }
        if (lit("null")) { v.kind = Json::Null; return true; }
        if (lit("true")) { v.kind = Json::Bool; v.b = true; return true; }
        if (lit("false")) { v.kind = Json::Bool; v.b = false; return true; }
        if (lit("NaN")) { v.kind = Json::Float; v.f = __builtin_nan(""); return true; }
        if (lit("Infinity")) { v.kind = Json::Float; v.f = __builtin_inf(); return true; }
        if (lit("-Infinity")) { v.kind = Json::Float; v.f = -__builtin_inf(); return true; }
        if (c == '-' || (c >= '0' && c <= '9')) return number(v);
        return fail("unexpected character in JSON");
    }

    bool number(Json& v) {
        const char* s = p_;
        bool is_float = false;
        if (p_ < end_ && *p_ == '-') ++p_;
        if (p_ >= end_ || !(*p_ >= '0' && *p_ <= '9')) return fail("malformed JSON number");
        if (*p_ == '0') ++p_;
        else while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
        if (p_ < end_ && *p_ == '.') {
            is_float = true;
            ++p_;
            if (p_ >= end_ || !(*p_ >= '0' && *p_ <= '9')) return fail("malformed JSON number");
            while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
        }
        if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
            is_float = true;
            ++p_;
            if (p_ < end_ && (*p_ == '+' || *p_ == '-')) ++p_;
            if (p_ >= end_ || !(*p_ >= '0' && *p_ <= '9')) return fail("malformed JSON number");
            while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
        }
        if (p_ - s > 64) return fail("JSON number longer than 64 characters");
        char buf[72];
        memcpy(buf, s, (size_t)(p_ - s));
        buf[p_ - s] = 0;
        char* e = nullptr;
        if (is_float) {
            v.kind = Json::Float;
            v.f = strtod(buf, &e);
        } else {
            v.kind = Json::Int;
            errno = 0;
            long long x = strtoll(buf, &e, 10);
            if (errno == ERANGE) return fail("JSON integer out of the 64-bit range");
            v.i = x;
        }
        return true;
    }

    static void utf8(std::string& out, uint32_t cp) {
        if (cp < 0x80) out += (char)cp;
        else if (cp < 0x800) { out += (char)(0xC0 | (cp >> 6)); out += (char)(0x80 | (cp & 0x3F)); }
        else if (cp < 0x10000) {
            out += (char)(0xE0 | (cp >> 12)); out += (char)(0x80 | ((cp >> 6) & 0x3F)); out += (char)(0x80 | (cp & 0x3F));
        } else {
            out += (char)(0xF0 | (cp >> 18)); out += (char)(0x80 | ((cp >> 12) & 0x3F));
            out += (char)(0x80 | ((cp >> 6) & 0x3F)); out += (char)(0x80 | (cp & 0x3F));
        }
    }
    bool hex4(uint32_t& cp) {
        cp = 0;
        if (end_ - p_ < 4) return fail("truncated \\u escape in JSON string");
        for (int k = 0; k < 4; ++k) {
            char h = *p_++;
            cp <<= 4;
            if (h >= '0' && h <= '9') cp |= (uint32_t)(h - '0');
            else if (h >= 'a' && h <= 'f') cp |= (uint32_t)(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') cp |= (uint32_t)(h - 'A' + 10);
            else return fail("bad \\u escape in JSON string");
        }
        return true;
    }
    bool string(std::string& out) {
        ++p_;  // opening quote
        out.clear();
        while (true) {
            if (p_ >= end_) return fail("unterminated JSON string");
            char c = *p_++;
            if (c == '"') return true;
            if ((unsigned char)c < 0x20) return fail("control character in JSON string");
            if (c != '\\') { out += c; continue; }
            if (p_ >= end_) return fail("unterminated JSON string");
            char e = *p_++;
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    uint32_t cp = 0;
                    if (!hex4(cp)) return false;
                    if (cp >= 0xD800 && cp < 0xDC00) {  // a surrogate pair
                        uint32_t lo = 0;
                        if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u') return fail("lone surrogate in JSON string");
                        p_ += 2;
                        if (!hex4(lo)) return false;
                        if (lo < 0xDC00 || lo >= 0xE000) return fail("bad surrogate pair in JSON string");
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    } else if (cp >= 0xDC00 && cp < 0xE000) {
                        return fail("lone surrogate in JSON string");
                    }
                    utf8(out, cp);
                    break;
                }
                default: return fail("bad escape in JSON string");
            }
        }
    }
    bool array(Json& v, int depth) {
        ++p_;
        v.kind = Json::Array;
        ws();
        if (p_ < end_ && *p_ == ']') { ++p_; return true; }
        while (true) {
            v.arr.emplace_back();
            if (!value(v.arr.back(), depth + 1)) return false;
            ws();
            if (p_ >= end_) return fail("unterminated JSON array");
            if (*p_ == ',') { ++p_; continue; }
            if (*p_ == ']') { ++p_; return true; }
            return fail("expected ',' or ']' in JSON array");
        }
    }
    bool object(Json& v, int depth) {
        ++p_;
        v.kind = Json::Object;
        ws();
        if (p_ < end_ && *p_ == '}') { ++p_; return true; }
        while (true) {
            ws();
            if (p_ >= end_ || *p_ != '"') return fail("expected a string key in JSON object");
            std::string key;
            if (!string(key)) return false;
            if (v.get(key)) return fail("duplicate key in JSON object");
            ws();
            if (p_ >= end_ || *p_ != ':') return fail("expected ':' in JSON object");
            ++p_;
            v.obj.emplace_back(std::move(key), Json());
            if (!value(v.obj.back().second, depth + 1)) return false;
            ws();
            if (p_ >= end_) return fail("unterminated JSON object");
            if (*p_ == ',') { ++p_; continue; }
            if (*p_ == '}') { ++p_; return true; }
            return fail("expected ',' or '}' in JSON object");
        }
    }
};

}  // namespace bnn

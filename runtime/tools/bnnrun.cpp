// bnnrun: run a bnnkit .bnn file on a float32 .npy batch, or time it.
//   bnnrun model.bnn input.npy -o logits.npy [--threads T] [--verbose]
//   bnnrun --bench model.bnn [--threads T] [--batch N] [--rounds R]
// Bad input: one line `bnnrun: error: PROBLEM; FIX` on stderr, exit 2 for usage errors, 1 for bad
// files; the output is written to a temporary file and renamed, so nothing is overwritten on failure.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "libbnn.h"

namespace {

struct Failure {
    int code;
    std::string msg;
};

[[noreturn]] void usage_error(const std::string& m) { throw Failure{2, m}; }
[[noreturn]] void file_error(const std::string& m) { throw Failure{1, m}; }

const char* kUsage =
    "usage: bnnrun MODEL.bnn INPUT.npy -o OUTPUT.npy [--threads T] [--verbose]\n"
    "       bnnrun --bench MODEL.bnn [--threads T] [--batch N] [--rounds R]\n";

// a float32 C-order little-endian .npy file: its shape and values
std::vector<float> read_npy(const std::string& path, std::vector<int64_t>& shape) {
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) file_error(path + ": no such file or not readable (" + strerror(errno) + "); check the path");
    std::vector<unsigned char> head(10);
    auto bad = [&](const std::string& why) {
        fclose(f);
        file_error(path + ": not a float32 .npy file (" + why + "); save the input with numpy.save(path, x.astype('float32'))");
    };
    if (fread(head.data(), 1, 10, f) != 10 || memcmp(head.data(), "\x93NUMPY", 6) != 0) bad("no .npy magic");
    const int major = head[6];
    uint32_t hlen = 0;
    if (major == 1) {
        hlen = head[8] | (uint32_t)head[9] << 8;
    } else if (major == 2 || major == 3) {
        unsigned char more[2];
        if (fread(more, 1, 2, f) != 2) bad("truncated header");
        hlen = head[8] | (uint32_t)head[9] << 8 | (uint32_t)more[0] << 16 | (uint32_t)more[1] << 24;
    } else {
        bad("unknown .npy version " + std::to_string(major));
    }
    if (hlen > (1u << 20)) bad("header too large");
    std::string h(hlen, '\0');
    if (fread(&h[0], 1, hlen, f) != hlen) bad("truncated header");
    auto field = [&](const char* key) -> std::string {
        size_t p = h.find(std::string("'") + key + "'");
        if (p == std::string::npos) bad(std::string("no '") + key + "' in its header");
        p = h.find(':', p);
        if (p == std::string::npos) bad("malformed header");
        ++p;
        while (p < h.size() && h[p] == ' ') ++p;
        return h.substr(p);
    };
    std::string descr = field("descr");
    if (descr.compare(0, 5, "'<f4'") != 0 && descr.compare(0, 5, "'=f4'") != 0)
        bad("dtype " + descr.substr(0, descr.find(',')) + ", expected '<f4' (little-endian float32)");
    std::string order = field("fortran_order");
    if (order.compare(0, 5, "False") != 0) bad("Fortran order, expected C order");
    std::string sh = field("shape");
    if (sh.empty() || sh[0] != '(') bad("malformed shape");
    size_t close = sh.find(')');
    if (close == std::string::npos) bad("malformed shape");
    std::string dims = sh.substr(1, close - 1);
    int64_t numel = 1;
    size_t p = 0;
    while (p < dims.size()) {
        while (p < dims.size() && (dims[p] == ' ' || dims[p] == ',')) ++p;
        if (p >= dims.size()) break;
        char* end = nullptr;
        long long v = strtoll(dims.c_str() + p, &end, 10);
        if (end == dims.c_str() + p || v < 0 || v > (1ll << 40)) bad("malformed shape");
        shape.push_back(v);
        if (__builtin_mul_overflow(numel, (int64_t)v, &numel) || numel > (int64_t(1) << 34)) bad("shape too large");
        p = (size_t)(end - dims.c_str());
    }
    std::vector<float> data((size_t)numel);
    size_t got = numel ? fread(data.data(), 4, (size_t)numel, f) : 0;
    if (got != (size_t)numel) bad("truncated data: " + std::to_string(got) + " of " + std::to_string(numel) + " values");
    unsigned char extra;
    if (fread(&extra, 1, 1, f) == 1) bad("data longer than its shape");
    fclose(f);
    return data;
}

std::string shape_str(const std::vector<int64_t>& s) {
    std::string r = "(";
    for (size_t k = 0; k < s.size(); ++k) r += (k ? ", " : "") + std::to_string(s[k]);
    return r + (s.size() == 1 ? ",)" : ")");
}

// written to a temporary file in the same folder, then renamed over path
void write_npy(const std::string& path, const std::vector<int64_t>& shape, const float* data, int64_t n) {
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape_str(shape) + ", }";
    size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header += '\n';
    std::string blob = "\x93NUMPY";
    blob += (char)1;
    blob += (char)0;
    blob += (char)(header.size() & 0xff);
    blob += (char)(header.size() >> 8);
    blob += header;
    struct stat st;
    const bool special = stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode);
    std::string tmp = special ? path : path + ".tmp" + std::to_string(getpid());
    int fd = open(tmp.c_str(), special ? O_WRONLY : (O_WRONLY | O_CREAT | O_EXCL), 0666);
    if (fd < 0) file_error(path + ": cannot write (" + strerror(errno) + "); check the output folder");
    auto write_all = [&](const void* p, size_t len) {
        const char* c = (const char*)p;
        while (len) {
            ssize_t w = write(fd, c, len);
            if (w <= 0) return false;
            c += w;
            len -= (size_t)w;
        }
        return true;
    };
    bool ok = write_all(blob.data(), blob.size()) && write_all(data, (size_t)n * 4);
    if (!special) ok = ok && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    if (!ok || (!special && rename(tmp.c_str(), path.c_str()) != 0)) {
        int e = errno;
        if (!special) unlink(tmp.c_str());
        file_error(path + ": cannot write (" + strerror(e) + "); check the disk and the output folder");
    }
}

int64_t int_option(const std::string& flag, const char* v, int64_t lo, int64_t hi) {
    char* end = nullptr;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi)
        usage_error(flag + " " + v + " is not an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                    "]; give e.g. " + flag + " " + std::to_string(lo));
    return x;
}

bnn_model* load(const std::string& path, int threads) {
    bnn_model* m = nullptr;
    int rc = bnn_load(path.c_str(), &m);
    if (rc != BNN_OK) {
        std::string e = bnn_last_error();
        throw Failure{rc == BNN_E_ARGUMENT ? 2 : 1, e};
    }
    bnn_set_threads(m, threads);
    return m;
}

int run_main(int argc, char** argv) {
    std::vector<std::string> pos;
    std::string out;
    bool bench = false, have_out = false, verbose = false;
    int64_t threads = 0, batch = 1, rounds = 20;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&](const char* flag) -> const char* {
            if (i + 1 >= argc) usage_error(std::string(flag) + " needs a value; see bnnrun --help");
            return argv[++i];
        };
        if (a == "-h" || a == "--help") {
            fputs(kUsage, stdout);
            return 0;
        } else if (a == "--bench") {
            bench = true;
        } else if (a == "-v" || a == "--verbose") {
            verbose = true;
        } else if (a == "-o" || a == "--output") {
            out = value("-o");
            have_out = true;
        } else if (a == "--threads") {
            threads = int_option("--threads", value("--threads"), 1, 1024);
        } else if (a == "--batch") {
            batch = int_option("--batch", value("--batch"), 1, 1 << 16);
        } else if (a == "--rounds") {
            rounds = int_option("--rounds", value("--rounds"), 1, 1 << 20);
        } else if (a.size() > 1 && a[0] == '-') {
            usage_error("unknown option " + a + "; see bnnrun --help");
        } else {
            pos.push_back(a);
        }
    }
    if (bench) {
        if (pos.size() != 1 || have_out) usage_error("--bench takes one MODEL.bnn and no -o; see bnnrun --help");
        bnn_model* m = load(pos[0], (int)threads);
        int64_t in[4], outs[4];
        int nd = 0;
        bnn_input_shape(m, in);
        bnn_output_shape(m, batch, outs, &nd);
        int64_t n_in = batch * in[1] * in[2] * in[3], n_out = 1;
        for (int k = 0; k < nd; ++k) n_out *= outs[k];
        std::vector<float> x((size_t)n_in), y((size_t)n_out);
        uint32_t s = 12345;
        for (auto& v : x) {
            s = s * 1664525u + 1013904223u;
            v = (float)((s >> 8) & 0xffff) / 32768.0f - 1.0f;
        }
        auto once = [&]() {
            if (bnn_run(m, x.data(), batch, y.data(), n_out) != BNN_OK) {
                std::string e = bnn_last_error();
                bnn_free(m);
                throw Failure{1, e};
            }
        };
        once();  // warm-up
        std::vector<double> times;
        for (int64_t r = 0; r < rounds; ++r) {
            auto t0 = std::chrono::steady_clock::now();
            once();
            times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        bnn_profile(m, 1);
        for (int64_t r = 0; r < rounds; ++r) once();
        std::vector<double> sorted = times;
        std::sort(sorted.begin(), sorted.end());
        const double median = sorted[sorted.size() / 2];
        printf("model %s  isa %s  threads %lld  batch %lld  rounds %lld\n", pos[0].c_str(), bnn_isa(m),
               (long long)(threads ? threads : 0), (long long)batch, (long long)rounds);
        printf("%-40s %-10s %12s %7s\n", "layer", "op", "median_ms*", "share");
        double total = 0;
        const int64_t L = bnn_layer_count(m);
        for (int64_t i = 0; i < L; ++i) {
            double sec;
            bnn_layer_info(m, i, nullptr, nullptr, &sec);
            total += sec;
        }
        for (int64_t i = 0; i < L; ++i) {
            const char *name, *op;
            double sec;
            bnn_layer_info(m, i, &name, &op, &sec);
            if (sec / rounds < 1e-6) continue;
            printf("%-40s %-10s %12.4f %6.1f%%\n", name, op, 1e3 * sec / rounds, total > 0 ? 100 * sec / total : 0.0);
        }
        printf("(* per-layer: mean of %lld profiled runs)\n", (long long)rounds);
        printf("end-to-end: median %.3f ms, min %.3f ms, %.1f images/s\n", 1e3 * median, 1e3 * sorted[0], batch / median);
        bnn_free(m);
        return 0;
    }
    if (pos.size() != 2 || !have_out) usage_error("expected MODEL.bnn INPUT.npy -o OUTPUT.npy; see bnnrun --help");
    std::vector<int64_t> shape;
    std::vector<float> x = read_npy(pos[1], shape);
    bnn_model* m = load(pos[0], (int)threads);
    int64_t in[4];
    bnn_input_shape(m, in);
    if (shape.size() != 4 || shape[0] < 1 || shape[1] != in[1] || shape[2] != in[2] || shape[3] != in[3]) {
        bnn_free(m);
        file_error(pos[1] + ": input of shape " + shape_str(shape) + ", the model takes (N, " + std::to_string(in[1]) + ", " +
                   std::to_string(in[2]) + ", " + std::to_string(in[3]) + "); save a float32 N x C x H x W batch");
    }
    int64_t os[4];
    int nd = 0;
    bnn_output_shape(m, shape[0], os, &nd);
    int64_t n_out = 1;
    for (int k = 0; k < nd; ++k) n_out *= os[k];
    std::vector<float> y((size_t)n_out);
    if (bnn_run(m, x.data(), shape[0], y.data(), n_out) != BNN_OK) {
        std::string e = bnn_last_error();
        bnn_free(m);
        file_error(e);
    }
    // which kernels ran (auto-detected or $BNN_ISA): what a cross-machine comparison must name
    if (verbose) fprintf(stderr, "bnnrun: isa %s\n", bnn_isa(m));
    bnn_free(m);
    write_npy(out, std::vector<int64_t>(os, os + nd), y.data(), n_out);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run_main(argc, argv);
    } catch (const Failure& f) {
        std::string m = f.msg;
        for (auto& c : m)
            if (c == '\n') c = ' ';
        fprintf(stderr, "bnnrun: error: %s\n", m.c_str());
        return f.code;
    } catch (const std::exception& e) {
        fprintf(stderr, "bnnrun: error: %s; please report it\n", e.what());
        return 1;
    }
}

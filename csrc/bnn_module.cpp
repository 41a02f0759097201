/* CPython bindings of the bnnkit native kernels: run-time instruction-set dispatch and
 * OpenMP threading. Functions take raw buffer addresses (tensor.data_ptr()) with their lengths in
 * elements; bnnkit/deploy/_native.py and bnnkit/functional.py validate every shape before calling
 * here (and each binding checks that the lengths it is given agree). No torch headers. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <atomic>
#include <memory>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "bnn_host.h"
#include "bnn_kernels.h"

#ifndef BNNKIT_MODULE_NAME
#define BNNKIT_MODULE_NAME _ext
#endif
#define BNN_STR2(x) #x
#define BNN_STR(x) BNN_STR2(x)
#define BNN_CAT2(a, b) a##b
#define BNN_CAT(a, b) BNN_CAT2(a, b)

enum { ISA_PORTABLE = 1, ISA_AVX2 = 2, ISA_AVX512 = 3 };

int bnn_cpu_has_avx2(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt");
#else
    return 0;
#endif
}

static int cpu_has_avx512(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return bnn_cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512vpopcntdq");
#else
    return 0;
#endif
}

/* ---- debug-build bounds failures --------------------------------------------------------- */
#ifdef BNNKIT_DEBUG
static std::atomic<long long> g_fail_count(0);
static char g_fail_msg[256];

extern "C" int64_t bnn_debug_fail(const char* what, int64_t idx, int64_t span, int64_t len) {
    if (g_fail_count.fetch_add(1) == 0)
        snprintf(g_fail_msg, sizeof g_fail_msg, "%s: elements [%lld, %lld) outside a buffer of %lld",
                 what, (long long)idx, (long long)(idx + span), (long long)len);
    return 0;
}
#endif

static int raise_debug_failures(void) {
#ifdef BNNKIT_DEBUG
    long long n = g_fail_count.exchange(0);
    if (n) {
        PyErr_Format(PyExc_RuntimeError, "bnnkit native bounds check failed %lld time(s); first: %s", n, g_fail_msg);
        return -1;
    }
#endif
    return 0;
}

/* ---- argument helpers -------------------------------------------------------------------- */
static int read_ints(PyObject* seq, int64_t* out, Py_ssize_t n, const char* what) {
    PyObject* fast = PySequence_Fast(seq, "expected a tuple of integers");
    if (!fast) return -1;
    if (PySequence_Fast_GET_SIZE(fast) != n) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd integers, got %zd", what, n, PySequence_Fast_GET_SIZE(fast));
        Py_DECREF(fast);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; ++i) {
        out[i] = (int64_t)PyLong_AsLongLong(PySequence_Fast_GET_ITEM(fast, i));
        if (out[i] == -1 && PyErr_Occurred()) { Py_DECREF(fast); return -1; }
    }
    Py_DECREF(fast);
    return 0;
}

static int resolve_isa(int isa) {
    if (isa == ISA_AVX512 && !cpu_has_avx512()) return -1;
    if (isa == ISA_AVX2 && !bnn_cpu_has_avx2()) return -1;
    if (isa < ISA_PORTABLE || isa > ISA_AVX512) return -1;
    return isa;
}

/* (isa, threads, sequence of n integers) -> isa, threads and v; -1 with a Python error set */
static int parse_call(PyObject* args, int* isa, int* nt, int64_t* v, Py_ssize_t n, const char* what) {
    PyObject* seq;
    if (!PyArg_ParseTuple(args, "iiO", isa, nt, &seq)) return -1;
    if (read_ints(seq, v, n, what) < 0) return -1;
    if (resolve_isa(*isa) < 0) {
        PyErr_Format(PyExc_ValueError, "instruction set %d is not available on this CPU", *isa);
        return -1;
    }
    return 0;
}

/* (threads, sequence of n integers) -> threads and v; -1 with a Python error set (the training
 * kernels, which have a single code path) */
static int parse_threads_call(PyObject* args, int* nt, int64_t* v, Py_ssize_t n, const char* what) {
    PyObject* seq;
    if (!PyArg_ParseTuple(args, "iO", nt, &seq)) return -1;
    return read_ints(seq, v, n, what);
}

/* ---- bconv -------------------------------------------------------------------------------- */
/* The ties in the order the kernel looks them up: counting-sorted by input row (n, y), with the
 * row offsets; every tie checked to lie inside the input first. -1 with a Python error set. */
static int sort_ties(BConvArgs* a, std::vector<int32_t>& sorted, std::vector<int64_t>& rows) {
    if (!a->ties || !a->tie_w || a->tie_KW < 1 || a->tie_dw < 1 || a->tie_Cg < 1 || a->N < 0 || a->H < 1) {
        PyErr_Format(PyExc_ValueError, "bconv: ties need their weights and the conv's geometry");
        return -1;
    }
    const int64_t z = ::sort_ties(a->ties, a->nties, a->N, a->H, a->W, a->G * a->tie_Cg, sorted, rows);
    if (z >= 0) {
        const int32_t* t = a->ties + 4 * z;
        PyErr_Format(PyExc_ValueError, "bconv: tie %lld at (n, y, x, c) = (%d, %d, %d, %d) lies outside the "
                     "%lld x %lld x %lld x %lld input", (long long)z, t[0], t[1], t[2], t[3], (long long)a->N,
                     (long long)a->H, (long long)a->W, (long long)(a->G * a->tie_Cg));
        return -1;
    }
    a->ties = sorted.data();
    a->tie_rows = rows.data();
    return 0;
}

/* a nonlinearity's kind and parameters as the kernels read them: 0 none, 1 PReLU with one slope per
 * channel, 2 Hardtanh with [lo, hi] */
static bool nonlin_ok(int64_t kind, const float* params, int64_t len, int64_t channels) {
    return kind == 0 || (kind == 1 && params && len == channels) || (kind == 2 && params && len == 2);
}

static PyObject* py_bconv(PyObject*, PyObject* args) {
    int isa, nt;
    int64_t v[50];
    if (parse_call(args, &isa, &nt, v, 50, "bconv") < 0) return NULL;
    BConvArgs a;
    a.act = (const uint64_t*)(uintptr_t)v[0]; a.act_len = v[1];
    a.N = v[2]; a.H = v[3]; a.W = v[4]; a.Hp = v[5]; a.Wp = v[6]; a.bpad_h = v[7]; a.bpad_w = v[8];
    a.G = v[9]; a.Cg = v[10]; a.Cw = v[11]; a.Og = v[12]; a.OBg = v[13];
    a.KH = v[14]; a.KW = v[15]; a.sh = v[16]; a.sw = v[17]; a.ph = v[18]; a.pw = v[19]; a.dh = v[20]; a.dw = v[21];
    a.Ho = v[22]; a.Wo = v[23];
    a.wk = (const uint64_t*)(uintptr_t)v[24]; a.wk_len = v[25];
    a.bcorr = (const int32_t*)(uintptr_t)v[26]; a.bcorr_len = v[27];
    a.scale = (const float*)(uintptr_t)v[28]; a.bias = (const float*)(uintptr_t)v[29]; a.sb_len = v[30];
    a.out = (float*)(uintptr_t)v[31]; a.out_len = v[32];
    a.ties = (const int32_t*)(uintptr_t)v[33]; a.nties = v[34];
    a.pre = (const float*)(uintptr_t)v[35];
    a.out_nchw = v[36];
    a.row_cls = (const int32_t*)(uintptr_t)v[37]; a.col_cls = (const int32_t*)(uintptr_t)v[38]; a.ncls_col = v[39];
    a.tie_rows = NULL;
    a.tie_w = (const int8_t*)(uintptr_t)v[40]; a.tie_w_len = v[41];
    a.tie_KW = v[42]; a.tie_dw = v[43]; a.tie_Cg = v[44];
    a.res = (const float*)(uintptr_t)v[45]; a.res_len = v[46];
    a.nonlin = v[47]; a.nonlin_p = (const float*)(uintptr_t)v[48]; a.nonlin_len = v[49];
    if (!nonlin_ok(a.nonlin, a.nonlin_p, a.nonlin_len, a.G * a.Og)) {
        PyErr_Format(PyExc_ValueError, "bconv: nonlinearity %lld with %lld parameters (PReLU needs one per output "
                     "channel, Hardtanh two)", (long long)a.nonlin, (long long)a.nonlin_len);
        return NULL;
    }
    std::vector<int32_t> tie_sorted;
    std::vector<int64_t> tie_rows;
    if (a.nties > 0 && sort_ties(&a, tie_sorted, tie_rows) < 0) return NULL;
    const int64_t tasks = isa == ISA_AVX512 ? bconv_num_tasks_avx512(&a)
                          : isa == ISA_AVX2 ? bconv_num_tasks_avx2(&a) : bconv_num_tasks_portable(&a);
    nt = threads_for(nt, tasks);
    void (*fn)(const BConvArgs*, int64_t, int64_t) =
        isa == ISA_AVX512 ? bconv_tasks_avx512 : isa == ISA_AVX2 ? bconv_tasks_avx2 : bconv_tasks_portable;
    Py_BEGIN_ALLOW_THREADS
    parallel_ranges(tasks, nt, [&](int64_t b, int64_t e) { fn(&a, b, e); });
    Py_END_ALLOW_THREADS
    if (raise_debug_failures() < 0) return NULL;
    Py_RETURN_NONE;
}

/* ---- pack --------------------------------------------------------------------------------- */
static PyObject* py_pack(PyObject*, PyObject* args) {
    int isa, nt;
    int64_t v[21];
    if (parse_call(args, &isa, &nt, v, 21, "pack") < 0) return NULL;
    PackArgs a;
    a.x = (const float*)(uintptr_t)v[0]; a.x_len = v[1];
    a.N = v[2]; a.H = v[3]; a.W = v[4]; a.C = v[5];
    a.G = v[6]; a.Cg = v[7]; a.Cw = v[8]; a.pad_h = v[9]; a.pad_w = v[10]; a.center = v[11];
    a.out = (uint64_t*)(uintptr_t)v[12]; a.out_len = v[13];
    a.thr_out = (float*)(uintptr_t)v[14]; a.thr_len = v[15];
    a.thr_in = (const float*)(uintptr_t)v[16];
    a.ties = (int32_t*)(uintptr_t)v[17]; a.ties_cap = v[18]; a.ties_count = (int64_t*)(uintptr_t)v[19];
    a.nchw = v[20];
    if (!a.ties_count) return PyErr_Format(PyExc_ValueError, "pack: a tie counter is required");
    *a.ties_count = 0;
    if (a.center == 2 && !a.thr_in) return PyErr_Format(PyExc_ValueError, "pack: center=2 needs thresholds");
    if ((a.center == 3 || a.center == 4) && a.H * a.W * a.C < 8)
        return PyErr_Format(PyExc_ValueError, "pack: center=3/4 (PyTorch's mean) needs at least 8 values a sample");
    if (a.center == 4 && a.nchw)
        return PyErr_Format(PyExc_ValueError, "pack: center=4 reads a channels-last input in NCHW order");
    std::vector<float> thr((size_t)(a.N > 0 ? a.N : 1), 0.0f);
    void (*fn)(const PackArgs*, const float*, int64_t, int64_t) =
        isa == ISA_AVX512 ? pack_rows_avx512 : isa == ISA_AVX2 ? pack_rows_avx2 : pack_rows_portable;
    double (*sum)(const float*, int64_t) = isa == ISA_AVX512 ? sample_sum_avx512 : sample_sum_portable;
    const int64_t per = a.H * a.W * a.C, rows = a.N * a.H;
    nt = threads_for(nt, rows);
    Py_BEGIN_ALLOW_THREADS
    if (a.center == 2) {
        for (int64_t n = 0; n < a.N; ++n) thr[(size_t)n] = a.thr_in[BNN_AT("pack thresholds in", n, 1, a.thr_len)];
    } else if (a.center == 3 || a.center == 4) {
        /* PyTorch's mean: its float32 sum, divided by n in float32; of x as stored (3), or of x's
         * NCHW copy (4), made here 16x16 tiles at a time into a buffer kept by the thread */
        float (*tsum)(const float*, int64_t) =
            isa == ISA_AVX512 ? torch_sum_avx512 : isa == ISA_AVX2 ? torch_sum_avx2 : torch_sum_portable;
        static thread_local std::vector<float> nchw;
        if (a.center == 4) nchw.resize((size_t)per);
        const int64_t HW = a.H * a.W, C = a.C;
        for (int64_t n = 0; n < a.N; ++n) {
            if (BNN_AT("pack mean", n * per, per, a.x_len) != n * per) continue;
            const float* src = a.x + n * per;
            if (a.center == 4) {
                float* dst = nchw.data();
                for (int64_t p0 = 0; p0 < HW; p0 += 16)
                    for (int64_t c0 = 0; c0 < C; c0 += 16) {
                        const int64_t p1 = p0 + 16 < HW ? p0 + 16 : HW, c1 = c0 + 16 < C ? c0 + 16 : C;
                        for (int64_t c = c0; c < c1; ++c)
                            for (int64_t p = p0; p < p1; ++p) dst[c * HW + p] = src[p * C + c];
                    }
                src = dst;
            }
            thr[(size_t)n] = tsum(src, per) / (float)per;
        }
    } else if (a.center) {
        for (int64_t n = 0; n < a.N; ++n) {
            if (BNN_AT("pack mean", n * per, per, a.x_len) != n * per) continue;
            thr[(size_t)n] = (float)(sum(a.x + n * per, per) / (double)per);
        }
    }
    for (int64_t n = 0; n < a.N; ++n) a.thr_out[BNN_AT("pack thresholds", n, 1, a.thr_len)] = thr[(size_t)n];
    memset(a.out, 0, (size_t)a.out_len * sizeof(uint64_t));
    parallel_ranges(rows, nt, [&](int64_t b, int64_t e) { fn(&a, thr.data(), b, e); });
    Py_END_ALLOW_THREADS
    if (raise_debug_failures() < 0) return NULL;
    Py_RETURN_NONE;
}

/* ---- taps --------------------------------------------------------------------------------- */
/* src [N][Hp][Wp] words of Cg bits -> dst [N][Hp][Wq][TW], Wq = Wp - (KW-1)*dw, TW = ceil(KW/per):
 * word j of column x holds columns x + kx*dw, kx = j*per + p < KW, at bits p*Cg, per*Cg <= 64
 * (see PackedConv._taps_setup) */
static PyObject* py_taps(PyObject*, PyObject* args) {
    int isa, nt;
    int64_t v[11];
    if (parse_call(args, &isa, &nt, v, 11, "taps") < 0) return NULL;
    const uint64_t* src = (const uint64_t*)(uintptr_t)v[0];
    const int64_t src_len = v[1], N = v[2], Hp = v[3], Wp = v[4], KW = v[5], dw = v[6], Cg = v[7], per = v[8];
    uint64_t* dst = (uint64_t*)(uintptr_t)v[9];
    const int64_t dst_len = v[10], Wq = Wp - (KW - 1) * dw, TW = per >= 1 ? (KW + per - 1) / per : 0;
    if (N < 0 || Hp < 0 || Wq < 1 || KW < 1 || dw < 1 || Cg < 1 || per < 1 || per > KW || per * Cg > 64 ||
        src_len != N * Hp * Wp || dst_len != N * Hp * Wq * TW)
        return PyErr_Format(PyExc_ValueError, "taps: inconsistent arguments");
    nt = threads_for(nt, N * Hp);
    Py_BEGIN_ALLOW_THREADS
    parallel_ranges(N * Hp, nt, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
            const uint64_t* s = src + BNN_AT("taps input", r * Wp, Wp, src_len);
            uint64_t* d = dst + BNN_AT("taps output", r * Wq * TW, Wq * TW, dst_len);
            if (KW == 3 && TW <= 2) {  /* 3x3 kernels in one sweep that vectorizes: about 3x faster than the loop below */
                const int64_t o1 = dw, o2 = 2 * dw;
                const uint64_t* __restrict sr = s;
                uint64_t* __restrict dr = d;
                if (TW == 1)
                    for (int64_t x = 0; x < Wq; ++x) dr[x] = sr[x] | sr[x + o1] << Cg | sr[x + o2] << (2 * Cg);
                else
                    for (int64_t x = 0; x < Wq; ++x) {
                        dr[2 * x] = sr[x] | sr[x + o1] << Cg;
                        dr[2 * x + 1] = sr[x + o2];
                    }
                continue;
            }
            for (int64_t x = 0; x < Wq; ++x)
                for (int64_t j = 0; j < TW; ++j) {
                    const int64_t k0 = j * per, k1 = k0 + per < KW ? k0 + per : KW;
                    uint64_t word = 0;
                    for (int64_t kx = k0; kx < k1; ++kx) word |= s[x + kx * dw] << ((kx - k0) * Cg);
                    d[x * TW + j] = word;
                }
        }
    });
    Py_END_ALLOW_THREADS
    if (raise_debug_failures() < 0) return NULL;
    Py_RETURN_NONE;
}

/* ---- training activation kernels (csrc/bnn_act.cpp) --------------------------------------- */
/* (threads, (x, x_len, grad, out, mean, rstd, N, n, centered, sign_slope)); grad is 0 for the forward.
 * The triangle calls add an 11th value, the address of RBNN's float32 [k, h, t2]. */
static PyObject* act_call(PyObject* args, int backward, int triangle) {
    int nt;
    int64_t v[11] = {0};
    const char* what = triangle ? (backward ? "act_triangle_backward" : "act_triangle_forward")
                                : (backward ? "act_backward" : "act_forward");
    if (parse_threads_call(args, &nt, v, triangle ? 11 : 10, what) < 0) return NULL;
    ActArgs a;
    a.x = (const float*)(uintptr_t)v[0]; a.x_len = v[1];
    a.grad = (const float*)(uintptr_t)v[2]; a.out = (float*)(uintptr_t)v[3];
    a.mean = (float*)(uintptr_t)v[4]; a.rstd = (float*)(uintptr_t)v[5];
    a.N = v[6]; a.n = v[7]; a.centered = v[8]; a.sign_slope = v[9];
    a.triangle = (const float*)(uintptr_t)v[10];
    if ((triangle && (!a.triangle || !a.centered || a.sign_slope)) || !a.x || !a.out || !a.mean || !a.rstd || (backward && !a.grad) || a.N < 0 || a.n < 1 || a.x_len != a.N * a.n)
        return PyErr_Format(PyExc_ValueError, "act: inconsistent arguments");
    nt = threads_for(nt, a.N);
    void (*fn)(const ActArgs*, int64_t, int64_t) = backward ? act_backward_samples : act_forward_samples;
    Py_BEGIN_ALLOW_THREADS
    parallel_ranges(a.N, nt, [&](int64_t b, int64_t e) { fn(&a, b, e); });
    Py_END_ALLOW_THREADS
    if (raise_debug_failures() < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject* py_act_forward(PyObject*, PyObject* args) { return act_call(args, 0, 0); }
static PyObject* py_act_backward(PyObject*, PyObject* args) { return act_call(args, 1, 0); }
static PyObject* py_act_triangle_forward(PyObject*, PyObject* args) { return act_call(args, 0, 1); }
static PyObject* py_act_triangle_backward(PyObject*, PyObject* args) { return act_call(args, 1, 1); }

/* (threads, (w, len, code, wb, mean, rstd, O, k, center, clip, update)): SiMaN's weight binarizer;
 * clip is 0 or the address of float32 [low, high] */
static PyObject* py_siman_weight(PyObject*, PyObject* args) {
    int nt;
    int64_t v[11];
    if (parse_threads_call(args, &nt, v, 11, "siman_weight") < 0) return NULL;
    SimanWeightArgs a;
    a.w = (float*)(uintptr_t)v[0]; a.len = v[1];
    a.code = (float*)(uintptr_t)v[2]; a.wb = (float*)(uintptr_t)v[3];
    a.mean = (float*)(uintptr_t)v[4]; a.rstd = (float*)(uintptr_t)v[5];
    a.O = v[6]; a.k = v[7]; a.center = v[8]; a.clip = (const float*)(uintptr_t)v[9]; a.update = v[10];
    /* a row's selection counts in int32 */
    if (!a.w || !a.code || !a.wb || !a.mean || !a.rstd || a.O < 0 || a.k < 1 || a.k >= (int64_t)1 << 31 ||
        a.len != a.O * a.k)
        return PyErr_Format(PyExc_ValueError, "siman_weight: inconsistent arguments");
    nt = threads_for(nt, a.O);
    Py_BEGIN_ALLOW_THREADS
    parallel_ranges(a.O, nt, [&](int64_t b, int64_t e) { siman_weight_rows(&a, b, e); });
    Py_END_ALLOW_THREADS
    if (raise_debug_failures() < 0) return NULL;
    Py_RETURN_NONE;
}

/* (threads, (w, len, O, k, ranks, nranks, values)): SiMaN's rows centred in place, then values[j]
 * = the centred |w| of ascending rank ranks[j] (int64) over the whole tensor, as float32 */
static PyObject* py_siman_center_ranks(PyObject*, PyObject* args) {
    int nt;
    int64_t v[7];
    if (parse_threads_call(args, &nt, v, 7, "siman_center_ranks") < 0) return NULL;
    SimanWeightArgs a = {};
    a.w = (float*)(uintptr_t)v[0]; a.len = v[1]; a.O = v[2]; a.k = v[3];
    const int64_t* ranks = (const int64_t*)(uintptr_t)v[4];
    const int64_t nranks = v[5];
    float* values = (float*)(uintptr_t)v[6];
    if (!a.w || !ranks || !values || a.O < 1 || a.k < 1 || a.len != a.O * a.k || a.len >= (int64_t)1 << 31 ||
        nranks < 0 || nranks > 16)
        return PyErr_Format(PyExc_ValueError, "siman_center_ranks: inconsistent arguments");
    for (int64_t j = 0; j < nranks; ++j)
        if (ranks[j] < 0 || ranks[j] >= a.len) return PyErr_Format(PyExc_ValueError, "siman_center_ranks: rank out of range");
    std::unique_ptr<uint32_t[]> keys(new uint32_t[(size_t)a.len]);  /* every element written below: no zeroing pass */
    Py_BEGIN_ALLOW_THREADS
    parallel_ranges(a.O, threads_for(nt, a.O), [&](int64_t b, int64_t e) { siman_center_rows(&a, keys.get(), b, e); });
    std::vector<uint32_t> selected((size_t)nranks);
    select_ranks(keys.get(), a.len, ranks, nranks, selected.data(), threads_for(nt, a.len));
    memcpy(values, selected.data(), sizeof(uint32_t) * (size_t)nranks);
    Py_END_ALLOW_THREADS
    if (raise_debug_failures() < 0) return NULL;
    Py_RETURN_NONE;
}

/* (threads, (grad, y, dy, len, alpha, dalpha, N, C, P, nhwc, inv_alpha)): dy = grad * alpha and
 * dalpha[c] = sum over samples and pixels of grad * y, as float32. With inv_alpha (1 / alpha per
 * channel; 0 for none), `y` holds y * alpha of integer-valued y, which the kernel recovers. */
static PyObject* py_scale_backward(PyObject*, PyObject* args) {
    int nt;
    int64_t v[11];
    if (parse_threads_call(args, &nt, v, 11, "scale_backward") < 0) return NULL;
    ScaleArgs a;
    a.grad = (const float*)(uintptr_t)v[0]; a.y = (const float*)(uintptr_t)v[1];
    a.dy = (float*)(uintptr_t)v[2]; a.len = v[3];
    a.alpha = (const float*)(uintptr_t)v[4];
    float* dalpha = (float*)(uintptr_t)v[5];
    a.N = v[6]; a.C = v[7]; a.P = v[8]; a.nhwc = v[9];
    a.inv_alpha = (const float*)(uintptr_t)v[10]; a.scaled = a.inv_alpha != nullptr;
    if (!a.grad || !a.y || !a.dy || !a.alpha || !dalpha || a.N < 0 || a.C < 1 || a.P < 1 || a.len != a.N * a.C * a.P)
        return PyErr_Format(PyExc_ValueError, "scale_backward: inconsistent arguments");
    std::vector<double> partial((size_t)(a.N * a.C), 0.0);
    a.partial = partial.data();
    nt = threads_for(nt, a.N);
    Py_BEGIN_ALLOW_THREADS
    parallel_ranges(a.N, nt, [&](int64_t b, int64_t e) { scale_backward_samples(&a, b, e); });
    for (int64_t c = 0; c < a.C; ++c) {
        double total = 0;
        for (int64_t s = 0; s < a.N; ++s) total += partial[(size_t)(s * a.C + c)];
        dalpha[c] = (float)total;
    }
    Py_END_ALLOW_THREADS
    if (raise_debug_failures() < 0) return NULL;
    Py_RETURN_NONE;
}

/* (threads, (in, in_len, out, out_len, N, C, H, W, Ho, Wo, kh, kw, sh, sw, scale, bias, nonlin,
 * nonlin_p, nonlin_len)): channels-last max pooling, BatchNorm and nonlinearity, NCHW out
 * (PoolArgs) */
static PyObject* py_pool(PyObject*, PyObject* args) {
    int nt;
    int64_t v[19];
    if (parse_threads_call(args, &nt, v, 19, "pool") < 0) return NULL;
    PoolArgs a;
    a.in = (const float*)(uintptr_t)v[0]; a.in_len = v[1];
    a.out = (float*)(uintptr_t)v[2]; a.out_len = v[3];
    a.N = v[4]; a.C = v[5]; a.H = v[6]; a.W = v[7]; a.Ho = v[8]; a.Wo = v[9];
    a.kh = v[10]; a.kw = v[11]; a.sh = v[12]; a.sw = v[13];
    a.scale = (const float*)(uintptr_t)v[14]; a.bias = (const float*)(uintptr_t)v[15];
    a.nonlin = v[16]; a.nonlin_p = (const float*)(uintptr_t)v[17]; a.nonlin_len = v[18];
    const bool geometry = a.N >= 0 && a.C >= 1 && a.kh >= 1 && a.kw >= 1 && a.sh >= 1 && a.sw >= 1 && a.Ho >= 1 &&
                          a.Wo >= 1 && (a.Ho - 1) * a.sh + a.kh <= a.H && (a.Wo - 1) * a.sw + a.kw <= a.W;
    const bool nonlin = nonlin_ok(a.nonlin, a.nonlin_p, a.nonlin_len, a.C);
    if (!a.in || !a.out || !geometry || a.in_len != a.N * a.H * a.W * a.C || a.out_len != a.N * a.C * a.Ho * a.Wo ||
        (a.scale == nullptr) != (a.bias == nullptr) || !nonlin)
        return PyErr_Format(PyExc_ValueError, "pool: inconsistent arguments");
    nt = threads_for(nt, a.N);
    Py_BEGIN_ALLOW_THREADS
    parallel_ranges(a.N, nt, [&](int64_t b, int64_t e) { pool_samples(&a, b, e); });
    Py_END_ALLOW_THREADS
    if (raise_debug_failures() < 0) return NULL;
    Py_RETURN_NONE;
}

/* (threads, (in, in_len, out, out_len, N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, in_nchw, scale,
 * bias, nonlin, nonlin_p, nonlin_len)): a stem's BatchNorm, nonlinearity and padded max pooling,
 * channels-last out (BnPoolArgs) */
static PyObject* py_bn_pool(PyObject*, PyObject* args) {
    int nt;
    int64_t v[22];
    if (parse_threads_call(args, &nt, v, 22, "bn_pool") < 0) return NULL;
    BnPoolArgs a;
    a.in = (const float*)(uintptr_t)v[0]; a.in_len = v[1];
    a.out = (float*)(uintptr_t)v[2]; a.out_len = v[3];
    a.N = v[4]; a.C = v[5]; a.H = v[6]; a.W = v[7]; a.Ho = v[8]; a.Wo = v[9];
    a.kh = v[10]; a.kw = v[11]; a.sh = v[12]; a.sw = v[13]; a.ph = v[14]; a.pw = v[15]; a.in_nchw = v[16];
    a.scale = (const float*)(uintptr_t)v[17]; a.bias = (const float*)(uintptr_t)v[18];
    a.nonlin = v[19]; a.nonlin_p = (const float*)(uintptr_t)v[20]; a.nonlin_len = v[21];
    /* every window holds at least one input position (PyTorch's rule pad <= kernel / 2 and floor
     * mode guarantee it), so no output stays -inf for lack of input */
    const bool geometry = a.N >= 0 && a.C >= 1 && a.H >= 1 && a.W >= 1 && a.kh >= 1 && a.kw >= 1 && a.sh >= 1 &&
                          a.sw >= 1 && a.ph >= 0 && a.pw >= 0 && 2 * a.ph <= a.kh && 2 * a.pw <= a.kw &&
                          a.Ho == (a.H + 2 * a.ph - a.kh) / a.sh + 1 && a.Wo == (a.W + 2 * a.pw - a.kw) / a.sw + 1 &&
                          a.Ho >= 1 && a.Wo >= 1;
    const bool nonlin = nonlin_ok(a.nonlin, a.nonlin_p, a.nonlin_len, a.C);
    if (!a.in || !a.out || !a.scale || !a.bias || !geometry || !nonlin || a.in_len != a.N * a.C * a.H * a.W ||
        a.out_len != a.N * a.Ho * a.Wo * a.C)
        return PyErr_Format(PyExc_ValueError, "bn_pool: inconsistent arguments");
    const int64_t rows = a.N * a.Ho;
    nt = threads_for(nt, rows);
    Py_BEGIN_ALLOW_THREADS
    parallel_ranges(rows, nt, [&](int64_t b, int64_t e) { bn_pool_rows(&a, b, e); });
    Py_END_ALLOW_THREADS
    if (raise_debug_failures() < 0) return NULL;
    Py_RETURN_NONE;
}

/* (threads, (x, x_len, out, out_len, N, C, H, W, k, pad, backward)): k x k average pooling with
 * zero channel padding, or its backward (AvgPoolArgs) */
static PyObject* py_avg_pool(PyObject*, PyObject* args) {
    int nt;
    int64_t v[11];
    if (parse_threads_call(args, &nt, v, 11, "avg_pool") < 0) return NULL;
    AvgPoolArgs a;
    a.x = (const float*)(uintptr_t)v[0]; a.x_len = v[1];
    a.out = (float*)(uintptr_t)v[2]; a.out_len = v[3];
    a.N = v[4]; a.C = v[5]; a.H = v[6]; a.W = v[7]; a.k = v[8]; a.pad = v[9]; a.backward = v[10];
    const bool shape = a.N >= 0 && a.C >= 1 && a.k >= 1 && a.H >= a.k && a.W >= a.k && a.pad >= 0;
    const int64_t big = a.N * a.C * a.H * a.W, small = shape ? a.N * (a.C + 2 * a.pad) * (a.H / a.k) * (a.W / a.k) : -1;
    if (!a.x || !a.out || !shape || a.x_len != (a.backward ? small : big) || a.out_len != (a.backward ? big : small))
        return PyErr_Format(PyExc_ValueError, "avg_pool: inconsistent arguments");
    const int64_t planes = a.N * (a.backward ? a.C : a.C + 2 * a.pad);
    nt = threads_for(nt, planes);
    Py_BEGIN_ALLOW_THREADS
    parallel_ranges(planes, nt, [&](int64_t b, int64_t e) { avg_pool_planes(&a, b, e); });
    Py_END_ALLOW_THREADS
    if (raise_debug_failures() < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject* py_cpu_features(PyObject*, PyObject*) {
    return Py_BuildValue("{s:O,s:O}", "avx2", bnn_cpu_has_avx2() ? Py_True : Py_False,
                         "avx512", cpu_has_avx512() ? Py_True : Py_False);
}

static PyObject* py_build_info(PyObject*, PyObject*) {
#ifdef BNNKIT_DEBUG
    PyObject* dbg = Py_True;
#else
    PyObject* dbg = Py_False;
#endif
#ifdef _OPENMP
    PyObject* omp = Py_True;
#else
    PyObject* omp = Py_False;
#endif
    return Py_BuildValue("{s:O,s:O}", "debug", dbg, "openmp", omp);
}

/* (threads, (w, w_len, O, Cg, K, Cw, so, sc, sk, out, out_len, bad)): pack_weight_rows over all rows */
static PyObject* py_pack_weights(PyObject*, PyObject* args) {
    int nt;
    int64_t v[12];
    if (parse_threads_call(args, &nt, v, 12, "pack_weights") < 0) return NULL;
    WeightPackArgs a;
    a.w = (const float*)(uintptr_t)v[0]; a.w_len = v[1];
    a.O = v[2]; a.Cg = v[3]; a.K = v[4]; a.Cw = v[5]; a.so = v[6]; a.sc = v[7]; a.sk = v[8];
    a.out = (uint64_t*)(uintptr_t)v[9]; a.out_len = v[10]; a.bad = (int64_t*)(uintptr_t)v[11];
    if (!a.w || !a.out || !a.bad || a.O < 1 || a.Cg < 1 || a.K < 1 || a.Cw != (a.Cg + 63) / 64 || a.so < 0 || a.sc < 0
        || a.sk < 0 || a.out_len != a.O * a.K * a.Cw
        || (a.O - 1) * a.so + (a.Cg - 1) * a.sc + (a.K - 1) * a.sk >= a.w_len)
        return PyErr_Format(PyExc_ValueError, "pack_weights: inconsistent arguments");
    nt = threads_for(nt, a.O);
    Py_BEGIN_ALLOW_THREADS
    parallel_ranges(a.O, nt, [&](int64_t b, int64_t e) { pack_weight_rows(&a, b, e); });
    Py_END_ALLOW_THREADS
    if (raise_debug_failures() < 0) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"bconv", py_bconv, METH_VARARGS, "bconv(isa, threads, args): binary convolution, see csrc/bnn_kernels.h"},
    {"taps", py_taps, METH_VARARGS, "taps(isa, threads, args): kernel-row taps side by side, see PackedConv"},
    {"pack", py_pack, METH_VARARGS, "pack(isa, threads, args): binarize and bit-pack NHWC activations"},
    {"act_forward", py_act_forward, METH_VARARGS, "act_forward(threads, args): per-sample statistics and sign, see csrc/bnn_act.cpp"},
    {"act_backward", py_act_backward, METH_VARARGS, "act_backward(threads, args): ApproxSign after standardisation, backward"},
    {"act_triangle_forward", py_act_triangle_forward, METH_VARARGS, "act_triangle_forward(threads, args): RBNN's per-sample statistics (no eps) and sign(x - mean)"},
    {"act_triangle_backward", py_act_triangle_backward, METH_VARARGS, "act_triangle_backward(threads, args): RBNN's triangle after standardisation, backward"},
    {"siman_weight", py_siman_weight, METH_VARARGS, "siman_weight(threads, args): SiMaN's weight code and statistics, see csrc/bnn_act.cpp"},
    {"siman_center_ranks", py_siman_center_ranks, METH_VARARGS, "siman_center_ranks(threads, args): SiMaN's centring and clipping percentiles"},
    {"scale_backward", py_scale_backward, METH_VARARGS, "scale_backward(threads, args): backward of y * alpha per channel"},
    {"pack_weights", py_pack_weights, METH_VARARGS, "pack_weights(threads, args): binary weights to packed sign bits"},
    {"pool", py_pool, METH_VARARGS, "pool(threads, args): channels-last max pooling + BatchNorm + nonlinearity to NCHW"},
    {"bn_pool", py_bn_pool, METH_VARARGS, "bn_pool(threads, args): a stem's BatchNorm + nonlinearity + padded max pooling, channels-last"},
    {"avg_pool", py_avg_pool, METH_VARARGS, "avg_pool(threads, args): k x k average pooling with zero channel padding, or its backward"},
    {"cpu_features", py_cpu_features, METH_NOARGS, "instruction sets this CPU supports"},
    {"build_info", py_build_info, METH_NOARGS, "how this library was built"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, BNN_STR(BNNKIT_MODULE_NAME),
                                    "bnnkit native kernels (XOR-popcount binary convolution; training activation kernels)", -1, methods};

PyMODINIT_FUNC BNN_CAT(PyInit_, BNNKIT_MODULE_NAME)(void) { return PyModule_Create(&moddef); }

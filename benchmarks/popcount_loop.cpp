/* The bound of the binary conv's inner loop on this CPU: XOR, popcount and accumulate in registers,
 * nothing else (no loads beyond L1, no packing, no epilogue), as quoted in docs/deploy.md.
 *
 *   g++ -O3 -o /tmp/popcount_loop benchmarks/popcount_loop.cpp && /tmp/popcount_loop
 *
 * (-O3, as setup.py builds the kernels: at -O2 GCC keeps the accumulators in memory.)
 *
 * Prints the clock (from a chain of dependent adds, 1 cycle each) and the time per 256-bit step of
 * the AVX2 nibble-table popcount (the kernel's AVX2 path) and, where the CPU has it, per 512-bit
 * step of AVX-512 VPOPCNTQ. 8 independent accumulators, as in the kernel's 8-pixel tiles. */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

static double now() {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static uint64_t words[512] __attribute__((aligned(64)));

__attribute__((noinline)) static uint64_t dependent_adds(long n) {
    uint64_t x = 1;
    for (long i = 0; i < n; i++) asm volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
    return x;
}

__attribute__((target("avx2"))) static inline __m256i popcount_bytes(__m256i x) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(x, low)),
                           _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low)));
}

/* n iterations of 8 steps: two weight vectors against four broadcast activation words */
__attribute__((target("avx2"), noinline)) static uint64_t avx2_steps(long n) {
    __m256i acc[8];
    for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_si256();
    const __m256i w0 = _mm256_load_si256((const __m256i*)words), w1 = _mm256_load_si256((const __m256i*)(words + 4));
    for (long i = 0; i < n; i++) {
        const uint64_t* a = words + (i & 63) * 8;
        for (int t = 0; t < 4; t++) {
            const __m256i b = _mm256_set1_epi64x((long long)a[t]);
            acc[2 * t] = _mm256_add_epi8(acc[2 * t], popcount_bytes(_mm256_xor_si256(w0, b)));
            acc[2 * t + 1] = _mm256_add_epi8(acc[2 * t + 1], popcount_bytes(_mm256_xor_si256(w1, b)));
        }
    }
    __m256i s = acc[0];
    for (int j = 1; j < 8; j++) s = _mm256_add_epi8(s, acc[j]);
    return (uint64_t)_mm256_extract_epi64(s, 0);
}

__attribute__((target("avx512f,avx512vpopcntdq"), noinline)) static uint64_t avx512_steps(long n) {
    __m512i acc[8];
    for (int j = 0; j < 8; j++) acc[j] = _mm512_setzero_si512();
    const __m512i w = _mm512_load_si512((const void*)words);
    for (long i = 0; i < n; i++) {
        const uint64_t* a = words + (i & 63) * 8;
        for (int t = 0; t < 8; t++)
            acc[t] = _mm512_add_epi64(acc[t], _mm512_popcnt_epi64(_mm512_xor_si512(w, _mm512_set1_epi64((long long)a[t]))));
    }
    __m512i s = acc[0];
    for (int j = 1; j < 8; j++) s = _mm512_add_epi64(s, acc[j]);
    return (uint64_t)_mm512_reduce_add_epi64(s);
}

int main() {
    for (int i = 0; i < 512; i++) words[i] = (uint64_t)i * 0x9E3779B97F4A7C15ULL;
    const long n = 20000000;
    volatile uint64_t sink;
    double t = now();
    sink = dependent_adds(n);
    const double ghz = 4.0 * n / (now() - t) / 1e9;
    printf("clock: %.2f GHz (dependent adds)\n", ghz);
    if (__builtin_cpu_supports("avx2")) {
        t = now();
        sink = avx2_steps(n);
        const double ns = (now() - t) / (8.0 * n) * 1e9;
        printf("AVX2 nibble-table XOR-popcount-add: %.3f ns = %.2f cycles per 256-bit step\n", ns, ns * ghz);
    }
    if (__builtin_cpu_supports("avx512vpopcntdq")) {
        t = now();
        sink = avx512_steps(n);
        const double ns = (now() - t) / (8.0 * n) * 1e9;
        printf("AVX-512 VPOPCNTQ XOR-popcount-add: %.3f ns = %.2f cycles per 512-bit step\n", ns, ns * ghz);
    } else {
        printf("AVX-512 VPOPCNTDQ: not on this CPU\n");
    }
    (void)sink;
    return 0;
}

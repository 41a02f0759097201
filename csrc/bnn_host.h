/* Host-side helpers around the kernels, shared by the Python extension (bnn_module.cpp) and libbnn
 * (runtime/src/bconv.cpp): splitting work between OpenMP threads, and the ties in the order the
 * bconv kernel looks them up. No Python, no PyTorch. */
#ifndef BNN_HOST_H
#define BNN_HOST_H

#include <stdint.h>
#include <string.h>

#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

/* the threads to use for `tasks` independent tasks: at least 1, at most one a task */
static inline int threads_for(int nt, int64_t tasks) {
    if (nt < 1) nt = 1;
    return tasks < nt ? (int)(tasks > 0 ? tasks : 1) : nt;
}

/* thread tid's slice [*b, *e) of [0, total) cut into nt nearly equal contiguous slices */
static inline void split(int64_t total, int nt, int tid, int64_t* b, int64_t* e) {
    int64_t q = total / nt, r = total % nt;
    *b = tid * q + (tid < r ? tid : r);
    *e = *b + q + (tid < r ? 1 : 0);
}

/* run(b, e) on nt contiguous slices of [0, total), one per OpenMP thread (inline when nt == 1) */
template <typename Run>
static void parallel_ranges(int64_t total, int nt, Run run) {
    if (nt <= 1) {
        run(0, total);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        int tid = 0, n = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num(); n = omp_get_num_threads();
#endif
        int64_t b, e;
        split(total, n, tid, &b, &e);
        run(b, e);
    }
}

/* The nties ties (n, y, x, c) counting-sorted by input row (n, y) into `sorted`, with the row
 * offsets into `rows` (N*H + 1 of them). Returns -1, or the index of the first tie that lies
 * outside the N x H x W x C input (then nothing is sorted). */
static inline int64_t sort_ties(const int32_t* ties, int64_t nties, int64_t N, int64_t H, int64_t W, int64_t C,
                                std::vector<int32_t>& sorted, std::vector<int64_t>& rows) {
    const int64_t R = N * H;
    rows.assign((size_t)R + 1, 0);
    for (int64_t z = 0; z < nties; ++z) {
        const int32_t* t = ties + 4 * z;
        if (t[0] < 0 || t[0] >= N || t[1] < 0 || t[1] >= H || t[2] < 0 || t[2] >= W || t[3] < 0 || t[3] >= C) return z;
        ++rows[(size_t)(t[0] * H + t[1]) + 1];
    }
    for (int64_t r = 0; r < R; ++r) rows[(size_t)r + 1] += rows[(size_t)r];
    std::vector<int64_t> next(rows.begin(), rows.end() - 1);
    sorted.resize((size_t)(4 * nties));
    for (int64_t z = 0; z < nties; ++z) {
        const int32_t* t = ties + 4 * z;
        memcpy(&sorted[(size_t)(4 * next[(size_t)(t[0] * H + t[1])]++)], t, 4 * sizeof(int32_t));
    }
    return -1;
}

#endif

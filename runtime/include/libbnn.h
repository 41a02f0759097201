/* libbnn: runs a bnnkit .bnn file (docs/deploy_format.md) without Python or PyTorch.
 *
 *     bnn_model* m;
 *     if (bnn_load("model.bnn", &m) != BNN_OK) { fprintf(stderr, "%s\n", bnn_last_error()); ... }
 *     int64_t in[4]; bnn_input_shape(m, in);            // N, C, H, W of the file's example input
 *     int64_t out[4]; int nd; bnn_output_shape(m, n, out, &nd);
 *     bnn_run(m, x, n, logits, out_len);                // x: n*C*H*W float32, NCHW, C order
 *     bnn_free(m);
 *
 * Every function returns BNN_OK (0) or an error code; bnn_last_error() then holds one line
 * naming the problem and the fix (per thread, valid until the thread's next libbnn call). Nothing
 * aborts, throws or exits. A model may be run from one thread at a time; distinct models are
 * independent.
 */
#ifndef LIBBNN_H
#define LIBBNN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define BNN_API __declspec(dllexport)
#else
#define BNN_API __attribute__((visibility("default")))
#endif

enum {
    BNN_OK = 0,
    BNN_E_ARGUMENT = 1, /* a NULL pointer, a wrong length or shape passed by the caller */
    BNN_E_IO = 2,       /* the file is missing or unreadable */
    BNN_E_FORMAT = 3,   /* the file is not a valid .bnn file: corrupt, edited, unsupported */
    BNN_E_RUN = 4,      /* the graph failed on this input */
    BNN_E_MEMORY = 5    /* out of memory */
};

typedef struct bnn_model bnn_model;

/* Load and check a .bnn file, then run it once on zeros of its input shape. */
BNN_API int bnn_load(const char* path, bnn_model** out);
/* The same from bytes in memory (copied); name is used in messages (NULL: "<memory>"). */
BNN_API int bnn_load_memory(const void* data, size_t len, const char* name, bnn_model** out);
/* N, C, H, W of the file's example input: at run time N is free, C, H, W must match. */
BNN_API int bnn_input_shape(const bnn_model* m, int64_t shape[4]);
/* Shape of the output for a batch of `batch` samples: *ndim dimensions (at most 4) into shape. */
BNN_API int bnn_output_shape(const bnn_model* m, int64_t batch, int64_t shape[4], int* ndim);
/* Run n samples x (n*C*H*W float32, NCHW) into out (out_len floats, the output's size). */
BNN_API int bnn_run(bnn_model* m, const float* x, int64_t n, float* out, int64_t out_len);
/* Threads for the following runs (OpenMP); 0 or less: the OpenMP default. */
BNN_API int bnn_set_threads(bnn_model* m, int threads);
/* The kernels' instruction set in use: "avx512", "avx2", "neon" or "portable" (from $BNN_ISA,
 * else the best this CPU runs). */
BNN_API const char* bnn_isa(const bnn_model* m);
/* Per-node timing of the runs that follow (enable 1) or not (0); bnn_layer_info reads it. */
BNN_API int bnn_profile(bnn_model* m, int enable);
BNN_API int64_t bnn_layer_count(const bnn_model* m);
/* Node i's name and op (valid while m lives), and the seconds spent in it since profiling began. */
BNN_API int bnn_layer_info(const bnn_model* m, int64_t i, const char** name, const char** op, double* seconds);
/* The last error of this thread, one line; "" after success. */
BNN_API const char* bnn_last_error(void);
BNN_API void bnn_free(bnn_model* m);

#ifdef __cplusplus
}
#endif

#endif

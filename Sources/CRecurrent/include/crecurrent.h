/* crecurrent.h: the two per-step recurrent products of rnn-dp with W_hh packed once (issue 17).
 *
 * W_hh is (G*H, H) row-major, PyTorch's layout. With W packed into a handle:
 *   forward   out(B, G*H) += hPrev(B, H) * W^T      (cblas_sgemm NoTrans, Trans,   beta = 1)
 *   backward  out(B, H)   += dz(B, G*H) * W         (cblas_sgemm NoTrans, NoTrans, beta = 1)
 * Every output element is its old value followed by one fused multiply-add per k, k ascending:
 * out = fma(a[K-1], w[K-1], ... fma(a[0], w[0], out)). That order depends on nothing else (not B,
 * not the tiles, not the ISA), so every kernel level gives the same bits for the same inputs.
 * Except CREC_AVX512BF16, which is another product: bf16(out += bf16(a) * bf16(W)) with W and the
 * activations rounded to bf16 (nearest even) and fp32 accumulation, one vdpbf16ps per k pair, pairs
 * ascending (vdpbf16ps treats bf16 subnormals as zero and flushes subnormal results). Its bits too
 * depend only on the inputs (not B, not the tiles), but they are not the other levels' bits.
 *
 * Not thread-safe per handle (the handle owns a scratch copy of the activations). */
#ifndef CRECURRENT_H
#define CRECURRENT_H

#ifdef __cplusplus
extern "C" {
#endif

/* Kernel levels. CREC_LIBXSMM: libxsmm's JIT kernels on the same panels (64 wide), usable after
 * crec_libxsmm_load; its summation order is libxsmm's, fixed for a shape and a JIT target. */
enum { CREC_SCALAR = 0, CREC_AVX2 = 1, CREC_AVX512 = 2, CREC_LIBXSMM = 3, CREC_AVX512BF16 = 4 };

/* The best level this CPU runs: CREC_AVX512 (avx512f), CREC_AVX2 (avx2 and fma) or CREC_SCALAR;
 * never CREC_AVX512BF16 (it changes the numerics: only when asked for). */
int crec_best_level(void);
/* 1 when this CPU runs `level` (CREC_LIBXSMM: when libxsmm is loaded; CREC_AVX512BF16: avx512f and
 * AVX512_BF16, cpuid leaf 7 subleaf 1 EAX bit 5, and a compiler that knew its intrinsics). */
int crec_supports(int level);
/* Loads libxsmm (1.17's API) with dlopen from `path`, or when NULL from libxsmm.so and
 * libxsmm.so.1; returns 1 when loaded, else 0 with the reason in crec_libxsmm_info. Call once,
 * before any other thread uses this library. */
int crec_libxsmm_load(const char *path);
/* After a load: libxsmm's JIT target (e.g. "cpx"), or why it did not load. */
const char *crec_libxsmm_info(void);

typedef struct crec_packed crec_packed;

/* A handle for a (gh, h) W_hh at a kernel level (the CPU must support it); NULL when out of memory.
 * Holds both packed copies (2 * gh * h floats, padded to the panel width; bf16: half of that). */
crec_packed *crec_create(int gh, int h, int level);
/* Packs W (gh, h) row-major into the handle, for both products. Call again after W changes. */
void crec_pack(crec_packed *p, const float *w);
/* out(rows, gh) += hPrev(rows, h) * W^T; hPrev rows h floats apart, out rows gh floats apart. */
void crec_forward(crec_packed *p, const float *hPrev, int rows, float *out);
/* out(rows, h) += dz(rows, gh) * W; dz rows gh floats apart, out rows h floats apart. */
void crec_backward(crec_packed *p, const float *dz, int rows, float *out);
/* out(rows, h) = dz(rows, gh) * W: crec_backward into an out of zeros, the same bits, without
 * reading out first. */
void crec_backward_set(crec_packed *p, const float *dz, int rows, float *out);
void crec_free(crec_packed *p);
/* Threads for the fp32 levels' products (default 1): their column panels are split over n
 * threads when a K block is large enough. The bits do not depend on n (each output element is
 * still one fma chain, computed by one thread). Set it once, before products run. */
void crec_set_threads(int n);
int crec_threads(void);

#ifdef __cplusplus
}
#endif
#endif

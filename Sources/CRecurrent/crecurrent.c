/* crecurrent.c: our packed sgemm kernel for the per-step recurrent products (issue 17; measured in
 * bench/products/bench_products.c and BENCHMARKS.md, "Recurrent products: which library").
 *
 * A product out(M, N) += A(M, K) * Weff(K, N) runs on Weff packed once into column panels of NR
 * floats (each panel a contiguous (K, NR) block, the last one zero-padded), in K blocks of KC:
 * per K block the block of A is copied tile by tile, k-major (rows of A are K floats apart, which
 * for K = 1024 or 4096 puts every row of a tile in the same L1 set), then every panel runs register
 * tiles of MR rows over it. Rows past M and columns past N go through a scratch tile, so any shape
 * works. Levels: AVX-512 (NR 32, tiles 12/8/4 rows, 24 zmm accumulators), AVX2+FMA (NR 16, tiles
 * 6/4/2 rows), scalar (NR 16, tiles 4/2/1 rows, fmaf). Each output element is one fma chain over k
 * ascending, starting from its old value (crecurrent.h), whatever the level or tile. libxsmm, when
 * loaded, runs its own JIT kernels on the same panels at width 64.
 *
 * CREC_AVX512BF16 (opt-in, it changes the numerics): W packed once as bf16 (round to nearest even),
 * the activations rounded to bf16 per product, fp32 accumulation with vdpbf16ps, which multiplies
 * pairs of bf16 along k and adds both products to a float lane. Its panels interleave k pairs: row
 * pair kp of panel j holds (Weff(2kp, n), Weff(2kp+1, n)) for its NR = 32 columns n, so one zmm is 16
 * columns x 2 k's and a broadcast 32-bit (a[i, 2kp], a[i, 2kp+1]) feeds it; odd K gets a zero k.
 * Same register tiles (12/8/4 rows x 32 columns, 24 accumulators) as AVX-512, half the bytes of W
 * to stream, half the instructions per k. */
#include "crecurrent.h"

#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif
/* Compilers that know vdpbf16ps's intrinsics (clang 9, GCC 10); elsewhere the level is absent. */
#if defined(__x86_64__) && ((defined(__clang__) && __clang_major__ >= 9) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 10))
#define CREC_HAVE_BF16 1
#endif

enum { KC = 256, KPC = 256, MAX_MR = 12, MAX_NR = 32, CREC_MAX_THREADS = 64, DIRECT_K = 512 };
/* A K block of fewer FLOPs than this runs on one thread: waking a worker costs microseconds. */
#define PARALLEL_FLOPS 4e6
/* Packed weights larger than this are streamed from L3 or memory, and panels() prefetches them
 * (measured: no gain at 1-3 MB, which stay in L2 or near it; 8-13% at 16 MB). */
#define PREFETCH_BYTES (4 << 20)
static int crec_nthreads = 1;
struct crec_packed;
typedef struct {
    struct crec_packed *p;
    const struct pack_s *P;
    int M;
    float *c;
    int k0, kc;
    const float *a;  /* A itself (M, K), for the direct tiles */
    const float *ab; /* this K block of A, copied tile by tile k-major (see run()) */
    int direct;      /* full row tiles read A in place (run()) */
    int zero;        /* out starts from zero (the first K block of an overwriting product) */
    int prefetch;    /* Weff is larger than PREFETCH_BYTES: panels() prefetches the next panel */
    int tiles;       /* row tiles per panel (next_rows' split of M) */
    int mpad;        /* their rows: M rounded up to whole tiles (a K block of abuf is mpad x KC) */
} panels_job;
static void panels(const panels_job *job, int j0, int j1);
static void run_parallel(const panels_job *job);

/* zero: the tile starts from zeros instead of loading c (an overwriting product's first K block). */
typedef void (*tile_fn)(const float *a, const float *p, float *c, int ldc, int kc, int zero);
/* A tile reading A in place: rows lda floats apart. */
typedef void (*tile_direct_fn)(const float *a, int lda, const float *p, float *c, int ldc, int kc, int zero);

typedef void (*xs_fn)(const float *a, const float *b, float *c, ...);
typedef struct pack_s {
    float *panels;  /* np panels of (K, nr), row k of panel j at panels + (j*K + k)*nr */
    uint16_t *bf;   /* bf16 level instead: np panels of (Kp, nr, 2) bf16, Kp = ceil(K/2) k pairs;
                       Weff(k, n) at bf + ((j*Kp + k/2)*nr + n%nr)*2 + k%2, j = n/nr */
    int K, N, np;
    int xs_rows;    /* libxsmm: the M its kernels below were dispatched for (0: none yet) */
    xs_fn xs_full, xs_tail;
} pack_t;

struct crec_packed {
    int gh, h, level, nr;
    pack_t fwd;     /* Weff = W^T: (h, gh) */
    pack_t bwd;     /* Weff = W:   (gh, h) */
    float *abuf;    /* A's K blocks, tile by tile, k-major: (rows rounded up to a tile, KC), one block
                       at a time on one thread, all of them before a parallel product */
    size_t abuf_floats;
    uint16_t *abf;  /* bf16 level: A rounded to bf16, row-major (M, 2*Kp), the pad k zero */
    size_t abf_halves;
};

/* ------------------------------------------------------------------ tiles */
/* c(MR, NR) += a(MR, kc; stored k-major: a[k*MR + i]) * p(kc, NR); c rows ldc floats apart. */
#if defined(__x86_64__)
#define TILE512(MR) \
__attribute__((target("avx512f"))) static void tile512_##MR(const float *a, const float *p, float *c, int ldc, int kc, int zero) { \
    __m512 acc[MR][2]; \
    if (zero) { _Pragma("GCC unroll 16") for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps(); } \
    else { _Pragma("GCC unroll 16") for (int i = 0; i < MR; i++) { acc[i][0] = _mm512_loadu_ps(c + (size_t)i * ldc); acc[i][1] = _mm512_loadu_ps(c + (size_t)i * ldc + 16); } } \
    for (int k = 0; k < kc; k++) { \
        __m512 b0 = _mm512_load_ps(p + (size_t)k * 32), b1 = _mm512_load_ps(p + (size_t)k * 32 + 16); \
        _Pragma("GCC unroll 16") for (int i = 0; i < MR; i++) { \
            __m512 ai = _mm512_set1_ps(a[(size_t)k * MR + i]); \
            acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]); \
            acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]); \
        } \
    } \
    _Pragma("GCC unroll 16") for (int i = 0; i < MR; i++) { _mm512_storeu_ps(c + (size_t)i * ldc, acc[i][0]); _mm512_storeu_ps(c + (size_t)i * ldc + 16, acc[i][1]); } \
}
/* The AVX2 tile, its A operand either packed k-major (A_AT a[k*MR + i], run() copied it) or read
 * in place from row-major A (a[i*lda + k], the direct tiles; see run()): the same fma chains. */
#define TILE256_BODY(MR, A_AT) \
    __m256 acc[MR][2]; \
    if (zero) { _Pragma("GCC unroll 16") for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps(); } \
    else { _Pragma("GCC unroll 16") for (int i = 0; i < MR; i++) { acc[i][0] = _mm256_loadu_ps(c + (size_t)i * ldc); acc[i][1] = _mm256_loadu_ps(c + (size_t)i * ldc + 8); } } \
    for (int k = 0; k < kc; k++) { \
        __m256 b0 = _mm256_load_ps(p + (size_t)k * 16), b1 = _mm256_load_ps(p + (size_t)k * 16 + 8); \
        _Pragma("GCC unroll 16") for (int i = 0; i < MR; i++) { \
            __m256 ai = _mm256_broadcast_ss(A_AT); \
            acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]); \
            acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]); \
        } \
    } \
    _Pragma("GCC unroll 16") for (int i = 0; i < MR; i++) { _mm256_storeu_ps(c + (size_t)i * ldc, acc[i][0]); _mm256_storeu_ps(c + (size_t)i * ldc + 8, acc[i][1]); }
#define TILE256(MR) \
__attribute__((target("avx2,fma"))) static void tile256_##MR(const float *a, const float *p, float *c, int ldc, int kc, int zero) { \
    TILE256_BODY(MR, a + (size_t)k * MR + i) \
}
#define TILE256D(MR) \
__attribute__((target("avx2,fma"))) static void tile256d_##MR(const float *a, int lda, const float *p, float *c, int ldc, int kc, int zero) { \
    TILE256_BODY(MR, a + (size_t)i * lda + k) \
}
TILE512(12) TILE512(8) TILE512(4)
TILE256(6) TILE256(4) TILE256(2)
TILE256D(6) TILE256D(4) TILE256D(2)
#endif

/* bf16: c(MR, 32) += a(MR, 2*kpc) * p(2*kpc, 32); a k-major in k pairs (a[kp*MR + i] holds bf16
 * a(i, 2kp) in its low half, a(i, 2kp+1) in its high half), p row pair kp = 64 bf16 (32 columns x 2). */
typedef void (*tilebf_fn)(const uint32_t *a, const uint16_t *p, float *c, int ldc, int kpc);
#if defined(CREC_HAVE_BF16)
#define TILEBF(MR) \
__attribute__((target("avx512f,avx512bf16"))) static void tilebf_##MR(const uint32_t *a, const uint16_t *p, float *c, int ldc, int kpc) { \
    __m512 acc[MR][2]; \
    _Pragma("GCC unroll 16") for (int i = 0; i < MR; i++) { acc[i][0] = _mm512_loadu_ps(c + (size_t)i * ldc); acc[i][1] = _mm512_loadu_ps(c + (size_t)i * ldc + 16); } \
    for (int k = 0; k < kpc; k++) { \
        __m512bh b0 = (__m512bh)_mm512_load_si512((const void *)(p + (size_t)k * 64)); \
        __m512bh b1 = (__m512bh)_mm512_load_si512((const void *)(p + (size_t)k * 64 + 32)); \
        _Pragma("GCC unroll 16") for (int i = 0; i < MR; i++) { \
            __m512bh ai = (__m512bh)_mm512_set1_epi32((int)a[(size_t)k * MR + i]); \
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0); \
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1); \
        } \
    } \
    _Pragma("GCC unroll 16") for (int i = 0; i < MR; i++) { _mm512_storeu_ps(c + (size_t)i * ldc, acc[i][0]); _mm512_storeu_ps(c + (size_t)i * ldc + 16, acc[i][1]); } \
}
TILEBF(12) TILEBF(8) TILEBF(4)
#endif

/* float -> bf16, round to nearest even (NaN stays a quiet NaN, subnormals kept; overflow rounds to
 * infinity as it should). The same rounding for W at pack time and the activations per product. */
static inline uint16_t bf16_rne(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
#define TILESCALAR(MR) \
static void tile1_##MR(const float *a, const float *p, float *c, int ldc, int kc, int zero) { \
    float acc[MR][16]; \
    for (int i = 0; i < MR; i++) for (int j = 0; j < 16; j++) acc[i][j] = zero ? 0 : c[(size_t)i * ldc + j]; \
    for (int k = 0; k < kc; k++) \
        for (int i = 0; i < MR; i++) { \
            const float ai = a[(size_t)k * MR + i]; \
            for (int j = 0; j < 16; j++) acc[i][j] = fmaf(ai, p[(size_t)k * 16 + j], acc[i][j]); \
        } \
    for (int i = 0; i < MR; i++) for (int j = 0; j < 16; j++) c[(size_t)i * ldc + j] = acc[i][j]; \
}
TILESCALAR(4) TILESCALAR(2) TILESCALAR(1)

/* The rows of the next tile when `left` rows remain: as many full tiles as fit, but never a tail
 * narrower than half a tile when two middle-sized tiles can take it (16 rows = 8+8 at AVX-512,
 * 8 = 4+4 at AVX2). The last tile may be taller than `left` (its extra rows are zeros). */
static int next_rows(int level, int left, tile_fn *fn) {
#if defined(__x86_64__)
    if (level == CREC_AVX512) {
        if (left >= 12 && left != 16) { *fn = tile512_12; return 12; }
        if (left >= 8) { *fn = tile512_8; return 8; }
        *fn = tile512_4; return 4;
    }
    if (level == CREC_AVX2) {
        if (left >= 6 && left != 8) { *fn = tile256_6; return 6; }
        if (left >= 4) { *fn = tile256_4; return 4; }
        *fn = tile256_2; return 2;
    }
#endif
    if (left >= 4) { *fn = tile1_4; return 4; }
    if (left >= 2) { *fn = tile1_2; return 2; }
    *fn = tile1_1; return 1;
}

/* The direct twin of next_rows' AVX2 tile of r rows. */
static tile_direct_fn direct_tile(int r) {
#if defined(__x86_64__)
    return r == 6 ? tile256d_6 : r == 4 ? tile256d_4 : tile256d_2;
#else
    (void)r; return NULL;
#endif
}

#if defined(CREC_HAVE_BF16)
static int next_rows_bf(int left, tilebf_fn *fn) {  /* next_rows' AVX-512 tiles */
    if (left >= 12 && left != 16) { *fn = tilebf_12; return 12; }
    if (left >= 8) { *fn = tilebf_8; return 8; }
    *fn = tilebf_4; return 4;
}
#endif

/* ------------------------------------------------------------------ libxsmm */
/* libxsmm 1.17: libxsmm_smmdispatch(m, n, k, lda, ldb, ldc, alpha, beta, flags, prefetch), column
 * major. Our step out(M, N) += a(M, K) * Weff(K, N) is, column major, out^T(N, M) += Weff^T(N, K) *
 * a^T(K, M); panel j (K, 64) row-major is exactly Weff^T's rows j*64.. as a (64, K) column-major
 * block with lda = 64. */
typedef xs_fn (*xs_dispatch_fn)(int m, int n, int k, const int *lda, const int *ldb, const int *ldc,
                                const float *alpha, const float *beta, const int *flags, const int *prefetch);
static xs_dispatch_fn xs_dispatch;
static char xs_info[256] = "not loaded";

int crec_libxsmm_load(const char *path) {
    if (xs_dispatch) return 1;
    const char *names[3] = {path, path ? NULL : "libxsmm.so", path ? NULL : "libxsmm.so.1"};
    void *h = NULL;
    for (int i = 0; i < 3 && !h; i++) {
        if (!names[i]) continue;
        h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (!h) snprintf(xs_info, sizeof xs_info, "%s", dlerror());
    }
    if (!h) return 0;
    void (*init)(void) = (void (*)(void))dlsym(h, "libxsmm_init");
    const char *(*arch)(void) = (const char *(*)(void))dlsym(h, "libxsmm_get_target_arch");
    xs_dispatch_fn d = (xs_dispatch_fn)dlsym(h, "libxsmm_smmdispatch");
    if (!init || !arch || !d) { snprintf(xs_info, sizeof xs_info, "libxsmm_init, libxsmm_get_target_arch or libxsmm_smmdispatch missing"); return 0; }
    init();
    snprintf(xs_info, sizeof xs_info, "%s", arch());
    xs_dispatch = d;
    return 1;
}

const char *crec_libxsmm_info(void) { return xs_info; }

static xs_fn xs_kernel(int m, int rows, int K, int N) {
    const int lda = 64, ldb = K, ldc = N, flags = 0, prefetch = 0;
    const float alpha = 1, beta = 1;
    xs_fn f = xs_dispatch(m, rows, K, &lda, &ldb, &ldc, &alpha, &beta, &flags, &prefetch);
    if (!f) { fprintf(stderr, "crecurrent: libxsmm has no kernel for %d x %d x %d\n", m, rows, K); abort(); }
    return f;
}

static void run_xsmm(pack_t *P, const float *a, int M, float *c) {
    const int K = P->K, N = P->N, full = N / 64, tail = N % 64;
    if (M <= 0) return;
    if (P->xs_rows != M) {  /* dispatch is a lookup once JIT-ed; keep the last M's kernels */
        P->xs_full = full ? xs_kernel(64, M, K, N) : NULL;
        P->xs_tail = tail ? xs_kernel(tail, M, K, N) : NULL;
        P->xs_rows = M;
    }
    for (int j = 0; j < full; j++) P->xs_full(P->panels + (size_t)j * K * 64, a, c + (size_t)j * 64);
    if (tail) P->xs_tail(P->panels + (size_t)full * K * 64, a, c + (size_t)full * 64);
}

/* ------------------------------------------------------------------ levels */
int crec_supports(int level) {
    if (level == CREC_SCALAR) return 1;
    if (level == CREC_LIBXSMM) return xs_dispatch != NULL;
#if defined(__x86_64__)
    if (level == CREC_AVX2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (level == CREC_AVX512) return __builtin_cpu_supports("avx512f");
#if defined(CREC_HAVE_BF16)
    if (level == CREC_AVX512BF16) {  /* AVX512_BF16: cpuid leaf 7 subleaf 1, EAX bit 5 */
        unsigned a, b, c, d;
        return __builtin_cpu_supports("avx512f") && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> 5 & 1);
    }
#endif
#endif
    return 0;
}

int crec_best_level(void) {
    if (crec_supports(CREC_AVX512)) return CREC_AVX512;
    if (crec_supports(CREC_AVX2)) return CREC_AVX2;
    return CREC_SCALAR;
}

/* ------------------------------------------------------------------ handle */
static void *aligned(size_t floats) {
    void *q = NULL;
    if (posix_memalign(&q, 64, (floats ? floats : 16) * sizeof(float))) return NULL;
    return q;
}

crec_packed *crec_create(int gh, int h, int level) {
    if (gh <= 0 || h <= 0 || !crec_supports(level)) return NULL;
    crec_packed *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->gh = gh; p->h = h; p->level = level;
    p->nr = level == CREC_LIBXSMM ? 64 : level == CREC_AVX512 || level == CREC_AVX512BF16 ? 32 : 16;
    p->fwd.K = h;  p->fwd.N = gh; p->fwd.np = (gh + p->nr - 1) / p->nr;
    p->bwd.K = gh; p->bwd.N = h;  p->bwd.np = (h + p->nr - 1) / p->nr;
    if (level == CREC_AVX512BF16) {  /* bf16 panels only, k padded to pairs; padding stays zero */
        const size_t f = (size_t)p->fwd.np * p->nr * 2 * ((h + 1) / 2), b = (size_t)p->bwd.np * p->nr * 2 * ((gh + 1) / 2);
        p->fwd.bf = aligned((f + 1) / 2);
        p->bwd.bf = aligned((b + 1) / 2);
        if (!p->fwd.bf || !p->bwd.bf) { crec_free(p); return NULL; }
        memset(p->fwd.bf, 0, f * sizeof(uint16_t));
        memset(p->bwd.bf, 0, b * sizeof(uint16_t));
        return p;
    }
    p->fwd.panels = aligned((size_t)p->fwd.np * p->nr * h);
    p->bwd.panels = aligned((size_t)p->bwd.np * p->nr * gh);
    if (!p->fwd.panels || !p->bwd.panels) { crec_free(p); return NULL; }
    /* padded columns stay zero */
    memset(p->fwd.panels, 0, (size_t)p->fwd.np * p->nr * h * sizeof(float));
    memset(p->bwd.panels, 0, (size_t)p->bwd.np * p->nr * gh * sizeof(float));
    return p;
}

void crec_free(crec_packed *p) {
    if (!p) return;
    free(p->fwd.panels); free(p->bwd.panels); free(p->fwd.bf); free(p->bwd.bf); free(p->abuf); free(p->abf); free(p);
}

/* The bf16 panels of W (gh, h): a rounded copy; W itself (the fp32 master weights) is untouched. */
static void pack_bf16(crec_packed *p, const float *w) {
    const int nr = p->nr, gh = p->gh, h = p->h;
    const size_t kpf = (size_t)(h + 1) / 2, kpb = (size_t)(gh + 1) / 2;
    /* forward: Weff(k, n) = W[n*h + k]; read W's rows, write panel columns */
    for (int n = 0; n < gh; n++) {
        uint16_t *dst = p->fwd.bf + (size_t)(n / nr) * kpf * nr * 2 + (size_t)(n % nr) * 2;
        const float *src = w + (size_t)n * h;
        for (int k = 0; k < h; k++) dst[(size_t)(k / 2) * nr * 2 + k % 2] = bf16_rne(src[k]);
    }
    /* backward: Weff(k, n) = W[k*h + n]; read W row by row */
    for (int k = 0; k < gh; k++) {
        const float *src = w + (size_t)k * h;
        for (int n = 0; n < h; n++)
            p->bwd.bf[(((size_t)(n / nr) * kpb + k / 2) * nr + n % nr) * 2 + k % 2] = bf16_rne(src[n]);
    }
}

void crec_pack(crec_packed *p, const float *w) {
    const int nr = p->nr, gh = p->gh, h = p->h;
    if (p->level == CREC_AVX512BF16) { pack_bf16(p, w); return; }
    /* forward: Weff(k, n) = W[n*h + k]; read W's rows, write panel columns */
    for (int n = 0; n < gh; n++) {
        float *dst = p->fwd.panels + (size_t)(n / nr) * h * nr + n % nr;
        const float *src = w + (size_t)n * h;
        for (int k = 0; k < h; k++) dst[(size_t)k * nr] = src[k];
    }
    /* backward: Weff(k, n) = W[k*h + n]; read W row by row, nr floats to each panel */
    for (int k = 0; k < gh; k++) {
        for (int j = 0; j < p->bwd.np; j++) {
            const int cols = h - j * nr < nr ? h - j * nr : nr;
            memcpy(p->bwd.panels + ((size_t)j * gh + k) * nr, w + (size_t)k * h + (size_t)j * nr, cols * sizeof(float));
        }
    }
}

/* out(M, N) += a(M, K) * Weff(K, N); a rows K floats apart, out rows N floats apart. */
static void run(crec_packed *p, const pack_t *P, const float *a, int M, float *c, int zero) {
    const int K = P->K, N = P->N;
    if (M <= 0) return;
    /* With threads, one parallel region for the whole product: every K block of A is copied
     * first, then each thread runs its own panels through all K blocks (a wake and a wait per
     * product, not per K block; the K blocks of one column still run in order, so the bits are
     * the one-thread bits). */
    const int parallel = crec_nthreads > 1 && 2.0 * M * K * N >= PARALLEL_FLOPS;
    const int nblocks = parallel ? (K + KC - 1) / KC : 1;
    const size_t need = (size_t)(M + MAX_MR) * KC * nblocks;
    if (p->abuf_floats < need) {  /* grows to the largest M (and K, with threads) seen, then stays */
        free(p->abuf);
        p->abuf = aligned(need);
        p->abuf_floats = p->abuf ? need : 0;
        if (!p->abuf) abort();
    }
    /* Short rows (K <= DIRECT_K) at AVX2: full row tiles read A in place, as the direct tiles
     * broadcast a[i*K + k] straight from its rows; copying them k-major took 6% of an rnn-h128
     * step (K = 128, N = 128: one copied float per 128 multiply-adds). Rows K floats apart are only
     * a problem for L1 sets at large power-of-two K, which keep the copy. The last, partial row tile
     * is still copied zero-padded, so no tile reads past row M. */
    const int direct = p->level == CREC_AVX2 && K <= DIRECT_K;
    const int prefetch = (double)K * P->np * p->nr * sizeof(float) > PREFETCH_BYTES;
    tile_fn fn;
    int tiles = 0, mpad = 0;
    for (int r; mpad < M; mpad += r) { r = next_rows(p->level, M - mpad, &fn); tiles++; }
    float *ab = p->abuf;
    for (int k0 = 0; k0 < K; k0 += KC) {
        const int kc = K - k0 < KC ? K - k0 : KC;
        float *const block = ab;
        for (int i = 0, r; i < M; i += r) {
            r = next_rows(p->level, M - i, &fn);
            if (direct && i + r <= M) { ab += (size_t)r * kc; continue; }
            for (int ii = 0; ii < r; ii++) {
                if (i + ii < M) {
                    const float *src = a + (size_t)(i + ii) * K + k0;
                    for (int k = 0; k < kc; k++) ab[(size_t)k * r + ii] = src[k];
                } else {
                    for (int k = 0; k < kc; k++) ab[(size_t)k * r + ii] = 0;
                }
            }
            ab += (size_t)r * kc;
        }
        if (parallel) continue;  /* the next block goes beside this one */
        const panels_job job = {p, P, M, c, k0, kc, a, block, direct, zero && k0 == 0, prefetch, tiles, mpad};
        panels(&job, 0, P->np);
        ab = p->abuf;
    }
    if (parallel) {  /* the whole product: blocks() sets k0, kc, ab and zero for each K block */
        const panels_job job = {p, P, M, c, 0, 0, a, p->abuf, direct, zero, prefetch, tiles, mpad};
        run_parallel(&job);
    }
}

/* Panels j0..<j1 of a parallel product through every K block in order: block b starts at row
 * b*KC of Weff and at abuf + b*(rows rounded up to tiles)*KC, as run() copied them. */
static void blocks(const panels_job *job, int j0, int j1) {
    const int K = job->P->K;
    const size_t stride = (size_t)job->mpad * KC;
    panels_job b = *job;
    for (int k0 = 0, n = 0; k0 < K; k0 += KC, n++) {
        b.k0 = k0;
        b.kc = K - k0 < KC ? K - k0 : KC;
        b.ab = job->ab + (size_t)n * stride;
        b.zero = job->zero && k0 == 0;
        panels(&b, j0, j1);
    }
}

/* Column panels j0..<j1 of one K block (its A block already copied, at job->ab). Panels write
 * disjoint columns, so splitting them over threads leaves every output element's fma chain, and
 * so its bits, as one thread computes it. */
static void panels(const panels_job *job, int j0, int j1) {
    crec_packed *p = job->p;
    const pack_t *P = job->P;
    const int nr = p->nr, K = P->K, N = P->N, M = job->M, kc = job->kc;
    _Alignas(64) float scratch[MAX_MR * MAX_NR];
    tile_fn fn;
    for (int j = j0; j < j1; j++) {
        const float *pj = P->panels + ((size_t)j * K + job->k0) * nr;
        const int cols = N - j * nr < nr ? N - j * nr : nr;
        const float *ap = job->ab;
        /* Weff beyond the caches: fetch the next panel's chunk of this K block into L1 while this
         * one runs, a share of its lines before each row tile. The hardware prefetchers stop at
         * every 4 KB page, so without this each chunk's first row tile waits on L3 (lstm-h1024's
         * 16 MB W_hh: medians 71-80 GFLOP/s without, 79-85 with; BENCHMARKS.md). No effect on the sums. */
        const char *next = (const char *)(P->panels + ((size_t)(j + 1) * K + job->k0) * nr);
        const int lines = job->prefetch && j + 1 < j1 ? kc * nr * (int)sizeof(float) / 64 : 0;
        const int per = (lines + job->tiles - 1) / job->tiles;
        int sent = 0;
        for (int i = 0, r; i < M; i += r) {
            for (int q = 0; q < per && sent < lines; q++, sent++) __builtin_prefetch(next + (size_t)sent * 64, 0, 3);
            r = next_rows(p->level, M - i, &fn);
            const int rows = M - i < r ? M - i : r;
            float *ct = job->c + (size_t)i * N + (size_t)j * nr;
            const float *arow = job->a + (size_t)i * K + job->k0;  /* the direct tiles' A */
            const int direct = job->direct && rows == r;
            if (rows == r && cols == nr) {
                if (direct) direct_tile(r)(arow, K, pj, ct, N, kc, job->zero);
                else fn(ap, pj, ct, N, kc, job->zero);
            } else {  /* a partial tile: through the scratch tile, nr floats a row */
                memset(scratch, 0, sizeof scratch);
                if (!job->zero) for (int ii = 0; ii < rows; ii++) memcpy(scratch + ii * nr, ct + (size_t)ii * N, cols * sizeof(float));
                if (direct) direct_tile(r)(arow, K, pj, scratch, nr, kc, 0);
                else fn(ap, pj, scratch, nr, kc, 0);
                for (int ii = 0; ii < rows; ii++) memcpy(ct + (size_t)ii * N, scratch + ii * nr, cols * sizeof(float));
            }
            ap += (size_t)r * kc;
        }
    }
}

/* Threads for the fp32 kernel's column panels: the caller takes share 0, crec_nthreads - 1
 * workers (started on first use) the others. A worker that has finished spins for up to SPIN_NS
 * on the generation counter before it sleeps on the condition variable, and so does the caller
 * waiting for the workers. The premise: waking a sleeping thread costs tens of microseconds (more
 * under a hypervisor, whose idle vCPU has halted), against a per-step product of a few hundred,
 * and the next product usually comes after one cell's elementwise step. The wake itself was not
 * timed; BENCHMARKS.md has the measured gain (gru-h512 at 2 threads +11-19%). */
#define SPIN_NS 200000
static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_go = PTHREAD_COND_INITIALIZER, pool_done = PTHREAD_COND_INITIALIZER;
static const panels_job *pool_job;
static int pool_workers, pool_shares;
static atomic_int pool_pending;
static atomic_ulong pool_generation;
/* The generation each worker was started at: it waits for the next one. (A worker started for a
 * larger thread count must not take the previous, finished product's job for a new one.) */
static unsigned long pool_born[CREC_MAX_THREADS];

static inline long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
static inline void cpu_relax(void) {
#if defined(__x86_64__)
    _mm_pause();
#endif
}
/* Spin until *gen differs from seen (1) or SPIN_NS have passed (0). */
static int spin_for_generation(unsigned long seen) {
    const long long until = now_ns() + SPIN_NS;
    for (int n = 0;; n++) {
        if (atomic_load_explicit(&pool_generation, memory_order_acquire) != seen) return 1;
        if ((n & 63) == 63 && now_ns() > until) return 0;
        cpu_relax();
    }
}

static void *pool_worker(void *arg) {
    const int id = (int)(intptr_t)arg;
    unsigned long seen = pool_born[id];  /* written before pthread_create */
    for (;;) {
        if (!spin_for_generation(seen)) {
            pthread_mutex_lock(&pool_mu);
            while (atomic_load(&pool_generation) == seen) pthread_cond_wait(&pool_go, &pool_mu);
            pthread_mutex_unlock(&pool_mu);
        }
        seen = atomic_load(&pool_generation);  /* acquire: pool_job and pool_shares were set before it */
        const panels_job *job = pool_job;
        const int shares = pool_shares, np = job->P->np;
        if (id < shares) blocks(job, id * np / shares, (id + 1) * np / shares);
        if (atomic_fetch_sub(&pool_pending, 1) == 1) {  /* the last one: wake the caller if it sleeps */
            pthread_mutex_lock(&pool_mu);
            pthread_cond_signal(&pool_done);
            pthread_mutex_unlock(&pool_mu);
        }
    }
    return NULL;
}

static void run_parallel(const panels_job *job) {
    const int shares = crec_nthreads, np = job->P->np;
    pthread_mutex_lock(&pool_mu);
    while (pool_workers < shares - 1) {
        pthread_t t;
        pool_born[pool_workers + 1] = atomic_load(&pool_generation);
        if (pthread_create(&t, NULL, pool_worker, (void *)(intptr_t)(pool_workers + 1)) != 0) break;
        pthread_detach(t);
        pool_workers++;
    }
    if (pool_workers < shares - 1) {  /* no threads to be had: one thread does it all */
        pthread_mutex_unlock(&pool_mu);
        blocks(job, 0, np);
        return;
    }
    pool_job = job;
    pool_shares = shares;
    atomic_store(&pool_pending, pool_workers);
    atomic_fetch_add(&pool_generation, 1);  /* release: the job is published with it */
    pthread_cond_broadcast(&pool_go);
    pthread_mutex_unlock(&pool_mu);
    blocks(job, 0, np / shares);
    const long long until = now_ns() + SPIN_NS;
    for (int n = 0; atomic_load(&pool_pending) > 0; n++) {
        if ((n & 63) == 63 && now_ns() > until) {
            pthread_mutex_lock(&pool_mu);
            while (atomic_load(&pool_pending) > 0) pthread_cond_wait(&pool_done, &pool_mu);
            pthread_mutex_unlock(&pool_mu);
            break;
        }
        cpu_relax();
    }
}

void crec_set_threads(int n) { crec_nthreads = n < 1 ? 1 : n > CREC_MAX_THREADS ? CREC_MAX_THREADS : n; }
int crec_threads(void) { return crec_nthreads; }

#if defined(CREC_HAVE_BF16)
/* a (M, K) fp32 -> abf (M, 2*Kp) bf16 rows, the pad k of odd K zero. Plain loops the compiler
 * vectorizes at AVX-512 (a product's M*K roundings against its M*K*N multiply-adds). */
__attribute__((target("avx512f"))) static void to_bf16_rows(const float *a, int M, int K, uint16_t *abf) {
    const int ld = K + (K & 1);
    for (int i = 0; i < M; i++) {
        const float *src = a + (size_t)i * K;
        uint16_t *dst = abf + (size_t)i * ld;
        for (int k = 0; k < K; k++) dst[k] = bf16_rne(src[k]);
        if (K & 1) dst[K] = 0;
    }
}

/* out(M, N) += bf16(a)(M, K) * bf16(Weff)(K, N) in fp32: run()'s blocking in k pairs (KPC pairs a
 * block). Each output element: its old value, then one vdpbf16ps per k pair, pairs ascending. */
static void run_bf16(crec_packed *p, const pack_t *P, const float *a, int M, float *c) {
    const int nr = p->nr, K = P->K, N = P->N, Kp = (K + 1) / 2;
    if (M <= 0) return;
    const size_t need = (size_t)(M + MAX_MR) * KPC, halves = (size_t)M * Kp * 2;
    if (p->abuf_floats < need) {  /* grows to the largest M seen, then stays (32-bit pairs here) */
        free(p->abuf);
        p->abuf = aligned(need);
        p->abuf_floats = p->abuf ? need : 0;
        if (!p->abuf) abort();
    }
    if (p->abf_halves < halves) {
        free(p->abf);
        p->abf = aligned((halves + 1) / 2);
        p->abf_halves = p->abf ? halves : 0;
        if (!p->abf) abort();
    }
    to_bf16_rows(a, M, K, p->abf);
    uint32_t *abuf = (uint32_t *)p->abuf;
    _Alignas(64) float scratch[MAX_MR * MAX_NR];
    tilebf_fn fn;
    for (int k0 = 0; k0 < Kp; k0 += KPC) {
        const int kpc = Kp - k0 < KPC ? Kp - k0 : KPC;
        uint32_t *ab = abuf;
        for (int i = 0, r; i < M; i += r) {
            r = next_rows_bf(M - i, &fn);
            for (int ii = 0; ii < r; ii++) {
                if (i + ii < M) {
                    const uint16_t *src = p->abf + ((size_t)(i + ii) * Kp + k0) * 2;
                    for (int k = 0; k < kpc; k++) memcpy(ab + (size_t)k * r + ii, src + 2 * k, sizeof(uint32_t));
                } else {
                    for (int k = 0; k < kpc; k++) ab[(size_t)k * r + ii] = 0;
                }
            }
            ab += (size_t)r * kpc;
        }
        for (int j = 0; j < P->np; j++) {
            const uint16_t *pj = P->bf + ((size_t)j * Kp + k0) * nr * 2;
            const int cols = N - j * nr < nr ? N - j * nr : nr;
            const uint32_t *ap = abuf;
            for (int i = 0, r; i < M; i += r) {
                r = next_rows_bf(M - i, &fn);
                const int rows = M - i < r ? M - i : r;
                float *ct = c + (size_t)i * N + (size_t)j * nr;
                if (rows == r && cols == nr) {
                    fn(ap, pj, ct, N, kpc);
                } else {
                    memset(scratch, 0, sizeof scratch);
                    for (int ii = 0; ii < rows; ii++) memcpy(scratch + ii * nr, ct + (size_t)ii * N, cols * sizeof(float));
                    fn(ap, pj, scratch, nr, kpc);
                    for (int ii = 0; ii < rows; ii++) memcpy(ct + (size_t)ii * N, scratch + ii * nr, cols * sizeof(float));
                }
                ap += (size_t)r * kpc;
            }
        }
    }
}
#else
static void run_bf16(crec_packed *p, const pack_t *P, const float *a, int M, float *c) { (void)p; (void)P; (void)a; (void)M; (void)c; abort(); }
#endif

void crec_forward(crec_packed *p, const float *hPrev, int rows, float *out) {
    if (p->level == CREC_LIBXSMM) run_xsmm(&p->fwd, hPrev, rows, out);
    else if (p->level == CREC_AVX512BF16) run_bf16(p, &p->fwd, hPrev, rows, out);
    else run(p, &p->fwd, hPrev, rows, out, 0);
}
void crec_backward(crec_packed *p, const float *dz, int rows, float *out) {
    if (p->level == CREC_LIBXSMM) run_xsmm(&p->bwd, dz, rows, out);
    else if (p->level == CREC_AVX512BF16) run_bf16(p, &p->bwd, dz, rows, out);
    else run(p, &p->bwd, dz, rows, out, 0);
}
void crec_backward_set(crec_packed *p, const float *dz, int rows, float *out) {
    if (p->level == CREC_LIBXSMM || p->level == CREC_AVX512BF16) {
        if (rows > 0) memset(out, 0, (size_t)rows * p->h * sizeof(float));
        crec_backward(p, dz, rows, out);
    } else run(p, &p->bwd, dz, rows, out, 1);
}

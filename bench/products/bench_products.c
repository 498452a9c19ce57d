/* bench_products.c: the per-step recurrent matrix products of rnn-dp, repeated T times with the
 * same weights, for each available library (issue 17, phase 1). Standalone C, not part of the
 * Swift package; scripts/bench-products.sh builds and runs it.
 *
 * Layout (as in Sources/RNN/Network.swift): W_hh is (G*H, H) row-major, PyTorch's layout.
 *   forward  zt(B, G*H) += h(B, H) * W_hh^T    cblas_sgemm(RowMajor, NoTrans, Trans,   B, G*H, H,   lda=H,   ldb=H, beta=1, ldc=G*H)
 *   backward dh(B, H)   += dU(B, G*H) * W_hh   cblas_sgemm(RowMajor, NoTrans, NoTrans, B, H,   G*H, lda=G*H, ldb=H, beta=1, ldc=H)
 * One measurement = one sequence: pack/reorder W once (timed), then T products with a different
 * input and output block per step (timed). Caches are flushed before each sequence.
 *
 * Options compiled in only when their library was found: HAVE_MKL (MKL_RT=path of libmkl_rt,
 * loaded with dlopen so that its cblas_* symbols do not clash with OpenBLAS's), HAVE_DNNL,
 * HAVE_XSMM. OpenBLAS is always there: it is rnn-dp's library and the reference.
 *
 * Output: tab-separated lines, "R" rows per (case, option, round), "V" rows with the max abs
 * difference against OpenBLAS, "I" info rows. scripts/bench_products_report.py makes the tables.
 */
#define _GNU_SOURCE
#include <cblas.h>
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>
#ifndef DNNL_OPTION_NAME
#define DNNL_OPTION_NAME "dnnl"
#endif
#endif
#ifdef HAVE_XSMM
#include <libxsmm.h>
#endif

void openblas_set_num_threads(int);
char *openblas_get_corename(void);
char *openblas_get_config(void);

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float frand(void) { /* uniform in [-1, 1) */
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

static void *xalloc(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64)) { fprintf(stderr, "out of memory\n"); exit(1); }
    return p;
}

#define FLUSH_BYTES (96u << 20) /* larger than the 32 MB L3 */
static char *flushbuf;
static volatile long flush_sink;
static void flush_caches(void) {
    long s = 0;
    for (size_t i = 0; i < FLUSH_BYTES; i += 64) { flushbuf[i] += 1; s += flushbuf[i]; }
    flush_sink = s;
}

/* ---------------------------------------------------------------- problem */
typedef struct {
    int bwd;         /* 0: forward (B,H)x(H,GH); 1: backward (B,GH)x(GH,H) */
    int B, H, G, T;
    int M, N, K;     /* row-major product C(M,N) += A(M,K) * Weff(K,N), M = B */
    float *W;        /* (G*H, H) row-major, the stored W_hh */
    float *A;        /* T blocks of (M, K) */
    float *C;        /* T blocks of (M, N) */
    float *C0;       /* initial value of C (the input projection part), same for every run */
    float *Cref;     /* OpenBLAS result */
} prob_t;

/* ---------------------------------------------------------------- options */
typedef struct option option_t;
struct option {
    const char *name;
    int packs;                         /* keeps a packed copy of W */
    void *(*setup)(prob_t *);          /* once per case, untimed (primitive creation, JIT) */
    void (*pack)(void *, prob_t *);    /* once per sequence, timed */
    void (*step)(void *, prob_t *, int t);
    void (*teardown)(void *);
};

/* (a) OpenBLAS, exactly rnn-dp's calls */
static void *ob_setup(prob_t *p) { (void)p; return NULL; }
static void ob_pack(void *s, prob_t *p) { (void)s; (void)p; }
static void ob_step(void *s, prob_t *p, int t) {
    (void)s;
    const float *a = p->A + (size_t)t * p->M * p->K;
    float *c = p->C + (size_t)t * p->M * p->N;
    if (!p->bwd)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, p->M, p->N, p->K, 1.0f, a, p->K, p->W, p->H, 1.0f, c, p->N);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, p->M, p->N, p->K, 1.0f, a, p->K, p->W, p->H, 1.0f, c, p->N);
}
static void ob_teardown(void *s) { (void)s; }

/* (d) MKL through libmkl_rt, dlopen'ed with its own symbol scope */
#ifdef HAVE_MKL
enum { kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162 };
typedef void (*mkl_sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int, float, float *, int);
typedef size_t (*mkl_pack_size_fn)(int, int, int, int);
typedef void (*mkl_pack_fn)(int, int, int, int, int, int, float, const float *, int, float *);
typedef void (*mkl_compute_fn)(int, int, int, int, int, int, const float *, int, const float *, int, float, float *, int);
typedef void (*mkl_version_fn)(char *, int);
static mkl_sgemm_fn mkl_sgemm;
static mkl_pack_size_fn mkl_pack_size;
static mkl_pack_fn mkl_pack;
static mkl_compute_fn mkl_compute;
static int mkl_loaded;
static void mkl_load(void) {
    const char *path = getenv("MKL_RT") ? getenv("MKL_RT") : MKL_RT_DEFAULT;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!h) { printf("I\tmkl\tnot loaded: %s\n", dlerror()); return; }
    mkl_sgemm = (mkl_sgemm_fn)dlsym(h, "cblas_sgemm");
    mkl_pack_size = (mkl_pack_size_fn)dlsym(h, "cblas_sgemm_pack_get_size");
    mkl_pack = (mkl_pack_fn)dlsym(h, "cblas_sgemm_pack");
    mkl_compute = (mkl_compute_fn)dlsym(h, "cblas_sgemm_compute");
    mkl_version_fn ver = (mkl_version_fn)dlsym(h, "mkl_get_version_string");
    if (!mkl_sgemm || !mkl_pack_size || !mkl_pack || !mkl_compute) { printf("I\tmkl\tsymbols missing\n"); return; }
    char buf[256];
    memset(buf, 0, sizeof buf);
    if (ver) ver(buf, sizeof buf - 1);
    for (int i = (int)strlen(buf) - 1; i >= 0 && (buf[i] == ' ' || (unsigned char)buf[i] > 126); i--) buf[i] = 0;
    printf("I\tmkl\t%s\n", buf);
    mkl_loaded = 1;
}
static void *mkls_setup(prob_t *p) { (void)p; return NULL; }
static void mkls_step(void *s, prob_t *p, int t) {
    (void)s;
    const float *a = p->A + (size_t)t * p->M * p->K;
    float *c = p->C + (size_t)t * p->M * p->N;
    mkl_sgemm(kRowMajor, kNoTrans, p->bwd ? kNoTrans : kTrans, p->M, p->N, p->K, 1.0f, a, p->K, p->W, p->H, 1.0f, c, p->N);
}
typedef struct { float *packed; } mklp_t;
static void *mklp_setup(prob_t *p) {
    mklp_t *s = calloc(1, sizeof *s);
    size_t bytes = mkl_pack_size(kBMatrix, p->M, p->N, p->K);
    s->packed = xalloc(bytes);
    return s;
}
static void mklp_pack(void *v, prob_t *p) {
    mklp_t *s = v;
    mkl_pack(kRowMajor, kBMatrix, p->bwd ? kNoTrans : kTrans, p->M, p->N, p->K, 1.0f, p->W, p->H, s->packed);
}
static void mklp_step(void *v, prob_t *p, int t) {
    mklp_t *s = v;
    const float *a = p->A + (size_t)t * p->M * p->K;
    float *c = p->C + (size_t)t * p->M * p->N;
    mkl_compute(kRowMajor, kNoTrans, kPacked, p->M, p->N, p->K, a, p->K, s->packed, p->H, 1.0f, c, p->N);
}
static void mklp_teardown(void *v) { mklp_t *s = v; free(s->packed); free(s); }
#endif

/* (b) oneDNN matmul, weights format_tag::any, reordered once per sequence; beta=1 as a sum post-op */
#ifdef HAVE_DNNL
#define DN(x) do { dnnl_status_t st_ = (x); if (st_ != dnnl_success) { fprintf(stderr, "dnnl error %d at %s:%d\n", (int)st_, __FILE__, __LINE__); exit(1); } } while (0)
static dnnl_engine_t dn_engine;
static dnnl_stream_t dn_stream;
typedef struct {
    dnnl_primitive_t mm, reorder;
    dnnl_memory_t src, wuser, wpacked, dst;
    int needs_reorder;
} dn_t;
#if DNNL_VERSION_MAJOR >= 3
/* oneDNN 3.x C API: memory descriptors are opaque handles, primitive descriptors are made directly */
static void *dn_setup(prob_t *p) {
    dn_t *s = calloc(1, sizeof *s);
    dnnl_memory_desc_t src_md, wuser_md, wany_md, dst_md;
    dnnl_dims_t sd = {p->M, p->K}, wd = {p->K, p->N}, dd = {p->M, p->N};
    DN(dnnl_memory_desc_create_with_tag(&src_md, 2, sd, dnnl_f32, dnnl_ab));
    DN(dnnl_memory_desc_create_with_tag(&dst_md, 2, dd, dnnl_f32, dnnl_ab));
    DN(dnnl_memory_desc_create_with_tag(&wuser_md, 2, wd, dnnl_f32, p->bwd ? dnnl_ab : dnnl_ba));
    DN(dnnl_memory_desc_create_with_tag(&wany_md, 2, wd, dnnl_f32, dnnl_format_tag_any));
    dnnl_post_ops_t po; dnnl_primitive_attr_t attr;
    DN(dnnl_post_ops_create(&po));
    DN(dnnl_post_ops_append_sum(po, 1.0f, 0, dnnl_data_type_undef));
    DN(dnnl_primitive_attr_create(&attr));
    DN(dnnl_primitive_attr_set_post_ops(attr, po));
    dnnl_primitive_desc_t pd;
    DN(dnnl_matmul_primitive_desc_create(&pd, dn_engine, src_md, wany_md, NULL, dst_md, attr));
    const char *impl = NULL;
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    const_dnnl_memory_desc_t wmd = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    s->needs_reorder = !dnnl_memory_desc_equal(wmd, wuser_md);
    printf("I\tdnnl-impl\t%s %s B=%d H=%d G=%d: %s, weights %s\n", getenv("ISA_LABEL") ? getenv("ISA_LABEL") : "",
           p->bwd ? "bwd" : "fwd", p->B, p->H, p->G, impl ? impl : "?", s->needs_reorder ? "reordered (blocked)" : "plain");
    DN(dnnl_memory_create(&s->src, src_md, dn_engine, DNNL_MEMORY_NONE));
    DN(dnnl_memory_create(&s->dst, dst_md, dn_engine, DNNL_MEMORY_NONE));
    DN(dnnl_memory_create(&s->wuser, wuser_md, dn_engine, p->W));
    if (s->needs_reorder) {
        DN(dnnl_memory_create(&s->wpacked, wmd, dn_engine, DNNL_MEMORY_ALLOCATE));
        dnnl_primitive_desc_t rpd;
        DN(dnnl_reorder_primitive_desc_create(&rpd, wuser_md, dn_engine, wmd, dn_engine, NULL));
        DN(dnnl_primitive_create(&s->reorder, rpd));
        dnnl_primitive_desc_destroy(rpd);
    } else {
        s->wpacked = s->wuser;
    }
    DN(dnnl_primitive_create(&s->mm, pd));
    dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_attr_destroy(attr);
    dnnl_post_ops_destroy(po);
    dnnl_memory_desc_destroy(src_md); dnnl_memory_desc_destroy(dst_md);
    dnnl_memory_desc_destroy(wuser_md); dnnl_memory_desc_destroy(wany_md);
    return s;
}
#else
static void *dn_setup(prob_t *p) {
    dn_t *s = calloc(1, sizeof *s);
    dnnl_memory_desc_t src_md, wuser_md, wany_md, dst_md;
    dnnl_dims_t sd = {p->M, p->K}, wd = {p->K, p->N}, dd = {p->M, p->N};
    DN(dnnl_memory_desc_init_by_tag(&src_md, 2, sd, dnnl_f32, dnnl_ab));
    DN(dnnl_memory_desc_init_by_tag(&dst_md, 2, dd, dnnl_f32, dnnl_ab));
    /* logical weights (K, N): forward Weff = W^T, stored (N, K) row-major -> tag ba; backward Weff = W -> ab */
    DN(dnnl_memory_desc_init_by_tag(&wuser_md, 2, wd, dnnl_f32, p->bwd ? dnnl_ab : dnnl_ba));
    DN(dnnl_memory_desc_init_by_tag(&wany_md, 2, wd, dnnl_f32, dnnl_format_tag_any));
    dnnl_matmul_desc_t md;
    DN(dnnl_matmul_desc_init(&md, &src_md, &wany_md, NULL, &dst_md));
    dnnl_post_ops_t po; dnnl_primitive_attr_t attr;
    DN(dnnl_post_ops_create(&po));
    DN(dnnl_post_ops_append_sum(po, 1.0f));
    DN(dnnl_primitive_attr_create(&attr));
    DN(dnnl_primitive_attr_set_post_ops(attr, po));
    dnnl_primitive_desc_t pd;
    DN(dnnl_primitive_desc_create(&pd, &md, attr, dn_engine, NULL));
    const char *impl = NULL;
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    const dnnl_memory_desc_t *wmd = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    s->needs_reorder = !dnnl_memory_desc_equal(wmd, &wuser_md);
    printf("I\tdnnl-impl\t%s %s B=%d H=%d G=%d: %s, weights %s\n", getenv("ISA_LABEL") ? getenv("ISA_LABEL") : "",
           p->bwd ? "bwd" : "fwd", p->B, p->H, p->G, impl ? impl : "?", s->needs_reorder ? "reordered (blocked)" : "plain");
    DN(dnnl_memory_create(&s->src, &src_md, dn_engine, DNNL_MEMORY_NONE));
    DN(dnnl_memory_create(&s->dst, &dst_md, dn_engine, DNNL_MEMORY_NONE));
    DN(dnnl_memory_create(&s->wuser, &wuser_md, dn_engine, p->W));
    if (s->needs_reorder) {
        DN(dnnl_memory_create(&s->wpacked, wmd, dn_engine, DNNL_MEMORY_ALLOCATE));
        dnnl_primitive_desc_t rpd;
        DN(dnnl_reorder_primitive_desc_create(&rpd, &wuser_md, dn_engine, wmd, dn_engine, NULL));
        DN(dnnl_primitive_create(&s->reorder, rpd));
        dnnl_primitive_desc_destroy(rpd);
    } else {
        s->wpacked = s->wuser;
    }
    DN(dnnl_primitive_create(&s->mm, pd));
    dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_attr_destroy(attr);
    dnnl_post_ops_destroy(po);
    return s;
}
#endif
static void dn_pack(void *v, prob_t *p) {
    dn_t *s = v; (void)p;
    if (!s->needs_reorder) return;
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, s->wuser}, {DNNL_ARG_TO, s->wpacked}};
    DN(dnnl_primitive_execute(s->reorder, dn_stream, 2, args));
}
static void dn_step(void *v, prob_t *p, int t) {
    dn_t *s = v;
    DN(dnnl_memory_set_data_handle(s->src, p->A + (size_t)t * p->M * p->K));
    DN(dnnl_memory_set_data_handle(s->dst, p->C + (size_t)t * p->M * p->N));
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, s->src}, {DNNL_ARG_WEIGHTS, s->wpacked}, {DNNL_ARG_DST, s->dst}};
    DN(dnnl_primitive_execute(s->mm, dn_stream, 3, args));
}
static void dn_teardown(void *v) {
    dn_t *s = v;
    dnnl_stream_wait(dn_stream);
    dnnl_primitive_destroy(s->mm);
    if (s->needs_reorder) { dnnl_primitive_destroy(s->reorder); dnnl_memory_destroy(s->wpacked); }
    dnnl_memory_destroy(s->wuser); dnnl_memory_destroy(s->src); dnnl_memory_destroy(s->dst);
    free(s);
}
#endif

/* (c) libxsmm 1.17: W packed once into column panels of width BM (each a contiguous column-major
 * (BM x K) block), then one JIT kernel per panel per step. In column-major terms the step is
 * C^T(N x B) += Weff^T(N x K) * A^T(K x B); panel j holds rows j*BM.. of Weff^T. */
#ifdef HAVE_XSMM
static int xsmm_bm = 64;
typedef struct { float *panels; libxsmm_smmfunction k; int bm, np; } xs_t;
static void *xs_setup(prob_t *p) {
    xs_t *s = calloc(1, sizeof *s);
    s->bm = xsmm_bm;
    while (p->N % s->bm) s->bm /= 2;
    s->np = p->N / s->bm;
    s->panels = xalloc((size_t)p->N * p->K * sizeof(float));
    libxsmm_blasint lda = s->bm, ldb = p->K, ldc = p->N;
    float alpha = 1.0f, beta = 1.0f;
    int flags = LIBXSMM_GEMM_FLAG_NONE, prefetch = LIBXSMM_PREFETCH_NONE;
    s->k = libxsmm_smmdispatch(s->bm, p->M, p->K, &lda, &ldb, &ldc, &alpha, &beta, &flags, &prefetch);
    if (!s->k) { fprintf(stderr, "libxsmm: no kernel for %d x %d x %d\n", s->bm, p->M, p->K); exit(1); }
    return s;
}
static void xs_pack(void *v, prob_t *p) {
    xs_t *s = v;
    const int bm = s->bm, K = p->K, H = p->H;
    if (p->bwd) { /* Weff^T(n, k) = W[k*H + n]: read W row by row, bm floats to each panel */
        for (int k = 0; k < K; k++)
            for (int j = 0; j < s->np; j++) memcpy(s->panels + (size_t)j * bm * K + (size_t)k * bm, p->W + (size_t)k * H + j * bm, bm * sizeof(float));
        return;
    }
    for (int j = 0; j < s->np; j++) {
        float *dst = s->panels + (size_t)j * bm * K;
        if (!p->bwd) { /* Weff^T(n, k) = W[n*H + k]: panel column k is W's column k over rows n */
            for (int i = 0; i < bm; i++) {
                const float *src = p->W + (size_t)(j * bm + i) * H;
                for (int k = 0; k < K; k++) dst[(size_t)k * bm + i] = src[k];
            }
        } else {       /* Weff^T(n, k) = W[k*H + n]: contiguous runs of bm */
            for (int k = 0; k < K; k++) memcpy(dst + (size_t)k * bm, p->W + (size_t)k * H + j * bm, bm * sizeof(float));
        }
    }
}
static void xs_step(void *v, prob_t *p, int t) {
    xs_t *s = v;
    const float *a = p->A + (size_t)t * p->M * p->K;
    float *c = p->C + (size_t)t * p->M * p->N;
    for (int j = 0; j < s->np; j++) s->k(s->panels + (size_t)j * s->bm * p->K, a, c + (size_t)j * s->bm);
}
static void xs_teardown(void *v) { xs_t *s = v; free(s->panels); free(s); }
#endif

/* (e) our own packed kernel: rnn-dp's, Sources/CRecurrent/crecurrent.c, compiled into this binary,
 * so the benchmark measures exactly the code training runs. W is packed once into column panels;
 * register tiles of 12 x 32 (AVX-512) or 6 x 16 (AVX2+FMA). BENCH_OWN_ISA=avx2 forces the AVX2
 * level. */
#include "crecurrent.h"
static int own_level(void) {
    const char *f = getenv("BENCH_OWN_ISA");
    return crec_supports(CREC_AVX512) && !(f && !strcmp(f, "avx2")) ? CREC_AVX512 : CREC_AVX2;
}
static void *own_setup(prob_t *p) {
    crec_packed *s = crec_create(p->G * p->H, p->H, own_level());
    if (!s) { fprintf(stderr, "own kernel: out of memory\n"); exit(1); }
    return s;
}
static void own_pack(void *v, prob_t *p) { crec_pack(v, p->W); }
static void own_step(void *v, prob_t *p, int t) {
    const float *a = p->A + (size_t)t * p->M * p->K;
    float *c = p->C + (size_t)t * p->M * p->N;
    if (p->bwd) crec_backward(v, a, p->M, c); else crec_forward(v, a, p->M, c);
}
static void own_teardown(void *v) { crec_free(v); }

static option_t options[8];
static int nopt;

/* ---------------------------------------------------------------- driver */
static double run_sequence(option_t *o, void *st, prob_t *p, double *pack_s) {
    memcpy(p->C, p->C0, (size_t)p->T * p->M * p->N * sizeof(float));
    flush_caches();
    double t0 = now();
    o->pack(st, p);
    double t1 = now();
    for (int t = 0; t < p->T; t++) o->step(st, p, t);
#ifdef HAVE_DNNL
    dnnl_stream_wait(dn_stream);
#endif
    double t2 = now();
    *pack_s = t1 - t0;
    return t2 - t0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    int rounds = 7, T = 50;
    const char *isa = getenv("ISA_LABEL") ? getenv("ISA_LABEL") : "default";
    const char *only = getenv("BENCH_CASES"); /* e.g. "quick" */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--T") && i + 1 < argc) T = atoi(argv[++i]);
    }
    if (getenv("XSMM_BM")) {
#ifdef HAVE_XSMM
        xsmm_bm = atoi(getenv("XSMM_BM"));
#endif
    }
    flushbuf = xalloc(FLUSH_BYTES);
    memset(flushbuf, 1, FLUSH_BYTES);
    openblas_set_num_threads(1);
    printf("I\topenblas\t%s (core %s)\n", openblas_get_config(), openblas_get_corename());

    options[nopt++] = (option_t){"openblas", 0, ob_setup, ob_pack, ob_step, ob_teardown};
#ifdef HAVE_MKL
    mkl_load();
    if (mkl_loaded) {
        options[nopt++] = (option_t){"mkl-sgemm", 0, mkls_setup, ob_pack, mkls_step, ob_teardown};
        options[nopt++] = (option_t){"mkl-packed", 1, mklp_setup, mklp_pack, mklp_step, mklp_teardown};
    }
#endif
#ifdef HAVE_DNNL
    {
        const dnnl_version_t *v = dnnl_version();
        printf("I\tdnnl\toneDNN %d.%d.%d (cpu runtime %u)\n", v->major, v->minor, v->patch, v->cpu_runtime);
        DN(dnnl_engine_create(&dn_engine, dnnl_cpu, 0));
        DN(dnnl_stream_create(&dn_stream, dn_engine, dnnl_stream_default_flags));
        options[nopt++] = (option_t){DNNL_OPTION_NAME, 1, dn_setup, dn_pack, dn_step, dn_teardown};
    }
#endif
#ifdef HAVE_XSMM
    libxsmm_init();
    printf("I\tlibxsmm\tlibxsmm %s, target %s, panel width %d\n", LIBXSMM_CONFIG_VERSION, libxsmm_get_target_arch(), xsmm_bm);
    options[nopt++] = (option_t){"libxsmm", 1, xs_setup, xs_pack, xs_step, xs_teardown};
#endif
    printf("I\town\trnn-dp's packed kernel (Sources/CRecurrent): %s\n", own_level() == CREC_AVX512 ? "AVX-512, 12x32 tiles" : "AVX2+FMA, 6x16 tiles");
    options[nopt++] = (option_t){"own-packed", 1, own_setup, own_pack, own_step, own_teardown};

    /* BENCH_OPTIONS=a,b keeps only those options (openblas, the reference, always stays) */
    if (getenv("BENCH_OPTIONS")) {
        char want[256];
        snprintf(want, sizeof want, ",%s,", getenv("BENCH_OPTIONS"));
        int k = 1;
        for (int o = 1; o < nopt; o++) {
            char key[64];
            snprintf(key, sizeof key, ",%s,", options[o].name);
            if (strstr(want, key)) options[k++] = options[o];
        }
        nopt = k;
    }
    /* reference rate: single-thread OpenBLAS sgemm 1024^3 (and MKL's), best of 5 after a warm-up */
    {
        const int n = 1024;
        float *a = xalloc((size_t)n * n * 4), *b = xalloc((size_t)n * n * 4), *c = xalloc((size_t)n * n * 4);
        for (size_t i = 0; i < (size_t)n * n; i++) { a[i] = frand(); b[i] = frand(); c[i] = 0; }
        for (int lib = 0; lib < 2; lib++) {
            double ts[5];
#ifndef HAVE_MKL
            if (lib == 1) break;
#else
            if (lib == 1 && !mkl_loaded) break;
#endif
            for (int r = -1; r < 5; r++) {
                double t0 = now();
                if (lib == 0) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
#ifdef HAVE_MKL
                else mkl_sgemm(kRowMajor, kNoTrans, kNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
#endif
                double dt = now() - t0;
                if (r >= 0) ts[r] = dt;
            }
            qsort(ts, 5, sizeof(double), cmp_double);
            printf("P\t%s\t%s\t%.1f\t%.1f\n", isa, lib == 0 ? "openblas" : "mkl-sgemm", 2.0 * n * n * n / ts[2] * 1e-9, 2.0 * n * n * n / ts[0] * 1e-9);
        }
        free(a); free(b); free(c);
    }
#ifdef HAVE_MKL
    /* which MKL code path ran: MKL_VERBOSE names no ISA on AMD CPUs, so list the CPU-specific
     * libraries that libmkl_rt loaded, and MKL's own "auto" conditional-reproducibility branch */
    if (mkl_loaded) {
        FILE *f = fopen("/proc/self/maps", "r");
        char line[1024], seen[1024] = "";
        while (f && fgets(line, sizeof line, f)) {
            char *q = strstr(line, "libmkl_");
            if (!q) continue;
            q[strcspn(q, "\n")] = 0;
            if (!strstr(seen, q) && strlen(seen) + strlen(q) + 2 < sizeof seen) { strcat(seen, q); strcat(seen, " "); }
        }
        if (f) fclose(f);
        typedef int (*mkl_branch_fn)(void);
        mkl_branch_fn br = (mkl_branch_fn)dlsym(RTLD_DEFAULT, "mkl_cbwr_get_auto_branch");
        void *h = dlopen(getenv("MKL_RT") ? getenv("MKL_RT") : MKL_RT_DEFAULT, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
        if (h) br = (mkl_branch_fn)dlsym(h, "mkl_cbwr_get_auto_branch");
        printf("I\tmkl-path\t%s: loaded %s; mkl_cbwr_get_auto_branch() = %d\n", isa, seen, br ? br() : -1);
    }
#endif

    /* cases: LSTM G=4 at every B and H, GRU G=3 at H=512 */
    int cases[64][3], nc = 0;
    const int Bs[3] = {16, 32, 64}, Hs[4] = {128, 256, 512, 1024};
    for (int hi = 0; hi < 4; hi++)
        for (int bi = 0; bi < 3; bi++) { cases[nc][0] = 4; cases[nc][1] = Bs[bi]; cases[nc][2] = Hs[hi]; nc++; }
    for (int bi = 0; bi < 3; bi++) { cases[nc][0] = 3; cases[nc][1] = Bs[bi]; cases[nc][2] = 512; nc++; }
    if (only && !strcmp(only, "quick")) { /* smoke test: two cases */
        cases[0][0] = 4; cases[0][1] = 32; cases[0][2] = 256;
        cases[1][0] = 3; cases[1][1] = 64; cases[1][2] = 512;
        nc = 2;
    }

    for (int ci = 0; ci < nc; ci++) {
        for (int bwd = 0; bwd < 2; bwd++) {
            prob_t p = {0};
            p.bwd = bwd; p.G = cases[ci][0]; p.B = cases[ci][1]; p.H = cases[ci][2]; p.T = T;
            const int GH = p.G * p.H;
            p.M = p.B; p.N = bwd ? p.H : GH; p.K = bwd ? GH : p.H;
            p.W = xalloc((size_t)GH * p.H * 4);
            p.A = xalloc((size_t)T * p.M * p.K * 4);
            p.C = xalloc((size_t)T * p.M * p.N * 4);
            p.C0 = xalloc((size_t)T * p.M * p.N * 4);
            p.Cref = xalloc((size_t)T * p.M * p.N * 4);
            const float ws = 1.0f / sqrtf((float)p.H);
            for (size_t i = 0; i < (size_t)GH * p.H; i++) p.W[i] = ws * frand();
            for (size_t i = 0; i < (size_t)T * p.M * p.K; i++) p.A[i] = frand();
            for (size_t i = 0; i < (size_t)T * p.M * p.N; i++) p.C0[i] = frand();
            const double flops = 2.0 * p.B * p.H * GH * T;
            const char *dir = bwd ? "bwd" : "fwd";

            void *st[8];
            for (int o = 0; o < nopt; o++) st[o] = options[o].setup(&p);
            /* warm-up (JIT, page faults) and verification against OpenBLAS */
            double dummy;
            run_sequence(&options[0], st[0], &p, &dummy);
            memcpy(p.Cref, p.C, (size_t)T * p.M * p.N * 4);
            for (int o = 1; o < nopt; o++) {
                run_sequence(&options[o], st[o], &p, &dummy);
                double md = 0, mref = 0;
                for (size_t i = 0; i < (size_t)T * p.M * p.N; i++) {
                    double d = fabs((double)p.C[i] - p.Cref[i]);
                    if (d > md || d != d) md = d;
                    if (fabs(p.Cref[i]) > mref) mref = fabs(p.Cref[i]);
                }
                printf("V\t%s\t%s\t%d\t%d\t%d\t%s\t%.3g\t%.3g\n", isa, dir, p.G, p.B, p.H, options[o].name, md, mref);
            }
            /* timed rounds, options interleaved, order rotated per round */
            for (int r = 0; r < rounds; r++) {
                for (int j = 0; j < nopt; j++) {
                    int o = (j + r) % nopt;
                    double pk, tt = run_sequence(&options[o], st[o], &p, &pk);
                    printf("R\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t%d\t%.6f\t%.6f\t%.2f\n", isa, dir, p.G, p.B, p.H, T,
                           options[o].name, r, tt, pk, flops / tt * 1e-9);
                }
            }
            fflush(stdout);
            for (int o = 0; o < nopt; o++) options[o].teardown(st[o]);
            free(p.W); free(p.A); free(p.C); free(p.C0); free(p.Cref);
        }
    }
    return 0;
}

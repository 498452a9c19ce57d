/* cmpi.c: see include/cmpi.h. Plain wrappers; no state beyond what MPI keeps. */
#include "cmpi.h"
#include <mpi.h>
#include <limits.h>
#include <string.h>
#include <stdio.h>

#define CHUNK ((int64_t)1 << 30)

/* Communicators by handle: 0 is MPI_COMM_WORLD, the others come from cmpi_comm_split. */
#define CMPI_MAX_COMMS 64
static MPI_Comm comms[CMPI_MAX_COMMS];
static int comm_count = 0;
static MPI_Comm C(int handle) { return handle >= 0 && handle < comm_count ? comms[handle] : MPI_COMM_NULL; }

int cmpi_init(void) {
    int provided = 0;
    int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) return rc;
    comms[0] = MPI_COMM_WORLD;
    comm_count = 1;
    return MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
}

int cmpi_finalize(void) { return MPI_Finalize(); }

int cmpi_is_initialized(void) {
    int flag = 0, finalized = 0;
    MPI_Initialized(&flag);
    MPI_Finalized(&finalized);
    return flag && !finalized;
}

int cmpi_rank(int comm) { int r = 0; MPI_Comm_rank(C(comm), &r); return r; }
int cmpi_size(int comm) { int s = 1; MPI_Comm_size(C(comm), &s); return s; }

int cmpi_comm_split(int parent, int color, int key, int *handle) {
    if (comm_count >= CMPI_MAX_COMMS) return MPI_ERR_COMM;
    MPI_Comm out;
    int rc = MPI_Comm_split(C(parent), color, key, &out);
    if (rc != MPI_SUCCESS) return rc;
    rc = MPI_Comm_set_errhandler(out, MPI_ERRORS_RETURN);
    if (rc != MPI_SUCCESS) return rc;
    comms[comm_count] = out;
    *handle = comm_count++;
    return MPI_SUCCESS;
}

int cmpi_local_size(void) {
    MPI_Comm local;
    int s = 1;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local) != MPI_SUCCESS)
        return 1;
    MPI_Comm_size(local, &s);
    MPI_Comm_free(&local);
    return s;
}

void cmpi_abort(int code) { MPI_Abort(MPI_COMM_WORLD, code); }

void cmpi_error_string(int code, char *buf, int buflen) {
    char tmp[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, tmp, &len) != MPI_SUCCESS) snprintf(tmp, sizeof tmp, "MPI error %d", code);
    snprintf(buf, (size_t)buflen, "%s", tmp);
}

int cmpi_barrier(int comm) { return MPI_Barrier(C(comm)); }

/* In-place allreduce in pieces of at most CHUNK elements. */
static int allreduce_chunked(int comm, void *buf, int64_t count, MPI_Datatype type, size_t elem, MPI_Op op) {
    char *p = (char *)buf;
    while (count > 0) {
        int n = (int)(count < CHUNK ? count : CHUNK);
        int rc = MPI_Allreduce(MPI_IN_PLACE, p, n, type, op, C(comm));
        if (rc != MPI_SUCCESS) return rc;
        p += (size_t)n * elem;
        count -= n;
    }
    return MPI_SUCCESS;
}

int cmpi_allreduce_sum_f32(int comm, float *b, int64_t n) { return allreduce_chunked(comm, b, n, MPI_FLOAT, sizeof(float), MPI_SUM); }
int cmpi_allreduce_sum_f64(int comm, double *b, int64_t n) { return allreduce_chunked(comm, b, n, MPI_DOUBLE, sizeof(double), MPI_SUM); }
int cmpi_allreduce_sum_i64(int comm, int64_t *b, int64_t n) { return allreduce_chunked(comm, b, n, MPI_INT64_T, sizeof(int64_t), MPI_SUM); }
int cmpi_allreduce_max_f64(int comm, double *b, int64_t n) { return allreduce_chunked(comm, b, n, MPI_DOUBLE, sizeof(double), MPI_MAX); }

static int bcast_chunked(int comm, void *buf, int64_t count, MPI_Datatype type, size_t elem, int root) {
    char *p = (char *)buf;
    while (count > 0) {
        int n = (int)(count < CHUNK ? count : CHUNK);
        int rc = MPI_Bcast(p, n, type, root, C(comm));
        if (rc != MPI_SUCCESS) return rc;
        p += (size_t)n * elem;
        count -= n;
    }
    return MPI_SUCCESS;
}

int cmpi_bcast_f32(int comm, float *b, int64_t n, int root) { return bcast_chunked(comm, b, n, MPI_FLOAT, sizeof(float), root); }
int cmpi_bcast_bytes(int comm, uint8_t *b, int64_t n, int root) { return bcast_chunked(comm, b, n, MPI_BYTE, 1, root); }

int cmpi_allgather_u64(int comm, uint64_t value, uint64_t *recv) {
    return MPI_Allgather(&value, 1, MPI_UINT64_T, recv, 1, MPI_UINT64_T, C(comm));
}

/* Variable-count gathers of floats (counts and displacements in elements, one per rank). */
int cmpi_gatherv_f32(int comm, const float *send, int count, float *recv, const int *counts, const int *displs, int root) {
    return MPI_Gatherv(send, count, MPI_FLOAT, recv, counts, displs, MPI_FLOAT, root, C(comm));
}

int cmpi_allgatherv_f32(int comm, const float *send, int count, float *recv, const int *counts, const int *displs) {
    return MPI_Allgatherv(send, count, MPI_FLOAT, recv, counts, displs, MPI_FLOAT, C(comm));
}

/* Outstanding nonblocking requests. Only the thread that calls MPI (FUNNELED) touches them. */
static MPI_Request requests[CMPI_MAX_REQUESTS];
static int request_used[CMPI_MAX_REQUESTS];

static int free_slot(void) {
    for (int i = 0; i < CMPI_MAX_REQUESTS; i++) if (!request_used[i]) return i;
    return -1;
}

/* Starts an in-place MPI_Iallreduce in a free slot of the request table. */
static int start_iallreduce(int comm, void *buf, int64_t count, MPI_Datatype type, MPI_Op op, int *handle) {
    if (count > INT_MAX) return MPI_ERR_COUNT;
    int slot = free_slot();
    if (slot < 0) return MPI_ERR_REQUEST;
    int rc = MPI_Iallreduce(MPI_IN_PLACE, buf, (int)count, type, op, C(comm), &requests[slot]);
    if (rc != MPI_SUCCESS) return rc;
    request_used[slot] = 1;
    *handle = slot;
    return MPI_SUCCESS;
}

int cmpi_iallreduce_sum_f32(int comm, float *buf, int64_t count, int *handle) {
    return start_iallreduce(comm, buf, count, MPI_FLOAT, MPI_SUM, handle);
}

/* A float message to (send) or from (receive) `peer`, in a free slot of the request table. */
static int start_p2p(int comm, float *buf, int64_t count, int peer, int tag, int send, int *handle) {
    if (count > INT_MAX) return MPI_ERR_COUNT;
    int slot = free_slot();
    if (slot < 0) return MPI_ERR_REQUEST;
    int rc = send ? MPI_Isend(buf, (int)count, MPI_FLOAT, peer, tag, C(comm), &requests[slot])
                  : MPI_Irecv(buf, (int)count, MPI_FLOAT, peer, tag, C(comm), &requests[slot]);
    if (rc != MPI_SUCCESS) return rc;
    request_used[slot] = 1;
    *handle = slot;
    return MPI_SUCCESS;
}

int cmpi_isend_f32(int comm, const float *buf, int64_t count, int dest, int tag, int *handle) {
    return start_p2p(comm, (float *)buf, count, dest, tag, 1, handle);
}

int cmpi_irecv_f32(int comm, float *buf, int64_t count, int source, int tag, int *handle) {
    return start_p2p(comm, buf, count, source, tag, 0, handle);
}

int cmpi_test(int handle, int *done) {
    if (handle < 0 || handle >= CMPI_MAX_REQUESTS || !request_used[handle]) return MPI_ERR_REQUEST;
    int rc = MPI_Test(&requests[handle], done, MPI_STATUS_IGNORE);
    if (rc == MPI_SUCCESS && *done) request_used[handle] = 0;
    return rc;
}

int cmpi_wait(int handle) {
    if (handle < 0 || handle >= CMPI_MAX_REQUESTS || !request_used[handle]) return MPI_ERR_REQUEST;
    int rc = MPI_Wait(&requests[handle], MPI_STATUS_IGNORE);
    request_used[handle] = 0;
    return rc;
}

/* 16-bit float sums for compressed gradient exchange. */
static float bf16_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static uint16_t f32_to_bf16(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float h16_to_f32(uint16_t h) { _Float16 x; memcpy(&x, &h, 2); return (float)x; }
static inline uint16_t f32_to_h16(float f) { _Float16 x = (_Float16)f; uint16_t h; memcpy(&h, &x, 2); return h; }

static void sum_bf16(void *in, void *inout, int *len, MPI_Datatype *type) {
    (void)type;
    uint16_t *a = in, *b = inout;
    for (int i = 0; i < *len; i++) b[i] = f32_to_bf16(bf16_to_f32(a[i]) + bf16_to_f32(b[i]));
}
/* fp16 <-> fp32 in software costs a library call per element; x86 CPUs since Ivy Bridge convert
   8 at a time (F16C). The F16C twin of the loop is chosen at run time, so the shim still runs on
   CPUs without it. Both round to nearest even, so they give the same bits. */
static inline void sum_h16_loop(const uint16_t *a, uint16_t *b, int n) {
    for (int i = 0; i < n; i++) b[i] = f32_to_h16(h16_to_f32(a[i]) + h16_to_f32(b[i]));
}
#if defined(__x86_64__)
/* The same loop, inlined and compiled with F16C. */
__attribute__((target("avx,f16c")))
static void sum_h16_f16c(const uint16_t *a, uint16_t *b, int n) { sum_h16_loop(a, b, n); }
#endif
static void sum_h16(void *in, void *inout, int *len, MPI_Datatype *type) {
    (void)type;
    uint16_t *a = in, *b = inout;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("f16c")) { sum_h16_f16c(a, b, *len); return; }
#endif
    sum_h16_loop(a, b, *len);
}

static MPI_Op half_ops[2] = {MPI_OP_NULL, MPI_OP_NULL};

/* The user-defined sum of 16-bit floats of `kind`, created on first use. */
static int half_op(int kind, MPI_Op *op) {
    if (kind < 0 || kind > 1) return MPI_ERR_ARG;
    if (half_ops[kind] == MPI_OP_NULL) {
        int rc = MPI_Op_create(kind == 0 ? sum_bf16 : sum_h16, 1, &half_ops[kind]);
        if (rc != MPI_SUCCESS) return rc;
    }
    *op = half_ops[kind];
    return MPI_SUCCESS;
}

int cmpi_iallreduce_sum_half(int comm, uint16_t *buf, int64_t count, int kind, int *handle) {
    MPI_Op op;
    int rc = half_op(kind, &op);
    if (rc != MPI_SUCCESS) return rc;
    return start_iallreduce(comm, buf, count, MPI_UINT16_T, op, handle);
}

int cmpi_allreduce_sum_half(int comm, uint16_t *buf, int64_t count, int kind) {
    MPI_Op op;
    int rc0 = half_op(kind, &op);
    if (rc0 != MPI_SUCCESS) return rc0;
    char *p = (char *)buf;
    while (count > 0) {
        int n = (int)(count < CHUNK ? count : CHUNK);
        int rc = MPI_Allreduce(MPI_IN_PLACE, p, n, MPI_UINT16_T, op, C(comm));
        if (rc != MPI_SUCCESS) return rc;
        p += (size_t)n * 2;
        count -= n;
    }
    return MPI_SUCCESS;
}

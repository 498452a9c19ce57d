/*
 * cmpi.h: a thin, plain-C boundary over MPI for rnn-dp.
 *
 * Swift cannot import OpenMPI's handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM are macros over
 * incomplete globals), so Swift only ever sees these functions. Every function works on
 * the communicator named by its first argument `comm` (0: MPI_COMM_WORLD; others from
 * cmpi_comm_split), returns 0 on success or an MPI error code (see cmpi_error_string), and takes
 * element counts as int64_t (large buffers are sent in pieces of at most INT_MAX elements).
 * This header offers no stable API outside rnn-dp.
 */
#ifndef CMPI_H
#define CMPI_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Initializes MPI (thread level FUNNELED) and makes errors return codes instead of aborting. */
int cmpi_init(void);
int cmpi_finalize(void);
int cmpi_is_initialized(void);
int cmpi_rank(int comm);
int cmpi_size(int comm);
/* MPI_Comm_split of `parent`: ranks with the same color form a communicator, ordered by key;
 * *handle names it (errors return codes on it too). At most 63 are made per process. */
int cmpi_comm_split(int parent, int color, int key, int *handle);
/* Number of ranks on this node (MPI_Comm_split_type SHARED). */
int cmpi_local_size(void);
/* Ends every rank of the job with the given exit code. Does not return. */
void cmpi_abort(int code);
/* Writes a message for an MPI error code into buf (NUL-terminated). */
void cmpi_error_string(int code, char *buf, int buflen);

int cmpi_barrier(int comm);
/* In-place sums over all ranks. */
int cmpi_allreduce_sum_f32(int comm, float *buf, int64_t count);
int cmpi_allreduce_sum_f64(int comm, double *buf, int64_t count);
int cmpi_allreduce_sum_i64(int comm, int64_t *buf, int64_t count);
/* In-place max / min over all ranks. */
int cmpi_allreduce_max_f64(int comm, double *buf, int64_t count);
/* Broadcast from root, in place. */
int cmpi_bcast_f32(int comm, float *buf, int64_t count, int root);
int cmpi_bcast_bytes(int comm, uint8_t *buf, int64_t count, int root);
/* Nonblocking in-place float sum (count <= INT_MAX). On success *handle names the request
 * (a slot of a small table, at most CMPI_MAX_REQUESTS outstanding). */
#define CMPI_MAX_REQUESTS 256
int cmpi_iallreduce_sum_f32(int comm, float *buf, int64_t count, int *handle);
/* Rank i's `count` floats go to recv + displs[i] (counts[i] of them) on `root` (gatherv) or on
 * every rank (allgatherv); counts and displacements in elements (at most INT_MAX). */
int cmpi_gatherv_f32(int comm, const float *send, int count, float *recv, const int *counts, const int *displs, int root);
int cmpi_allgatherv_f32(int comm, const float *send, int count, float *recv, const int *counts, const int *displs);
/* Nonblocking point-to-point float messages (count <= INT_MAX), completed by cmpi_test or
 * cmpi_wait; the buffer must stay untouched until then. */
int cmpi_isend_f32(int comm, const float *buf, int64_t count, int dest, int tag, int *handle);
int cmpi_irecv_f32(int comm, float *buf, int64_t count, int source, int tag, int *handle);
/* *done = 1 when the request has completed (its slot is then free). Drives MPI's progress. */
int cmpi_test(int handle, int *done);
/* Blocks until the request completes; frees its slot. */
int cmpi_wait(int handle);

/* In-place sum of 16-bit floats: kind 0 = bfloat16, 1 = IEEE half. Each pairwise sum is done in
 * float32 and rounded back to 16 bits (round to nearest even). */
int cmpi_allreduce_sum_half(int comm, uint16_t *buf, int64_t count, int kind);
/* The nonblocking twin of cmpi_allreduce_sum_half (count <= INT_MAX), completed by cmpi_test or
 * cmpi_wait like cmpi_iallreduce_sum_f32. */
int cmpi_iallreduce_sum_half(int comm, uint16_t *buf, int64_t count, int kind, int *handle);

/* Every rank contributes `value`; recv (size cmpi_size()) receives all of them in rank order. */
int cmpi_allgather_u64(int comm, uint64_t value, uint64_t *recv);

#ifdef __cplusplus
}
#endif
#endif

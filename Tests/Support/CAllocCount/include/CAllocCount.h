// Counts the heap allocations the calling thread makes between alloc_count_start() and
// alloc_count_stop(). Linked only into the test executable, where its malloc family overrides
// libc's for the whole process (ELF symbol interposition) and forwards to glibc's own entry points.
#ifndef C_ALLOC_COUNT_H
#define C_ALLOC_COUNT_H
void alloc_count_start(void);
/// The number of malloc/calloc/realloc/aligned allocations since alloc_count_start on this thread.
long alloc_count_stop(void);
#endif

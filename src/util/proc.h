/* Facts about a process from /proc, for metrics and for watching child processes. */
#ifndef BW_UTIL_PROC_H
#define BW_UTIL_PROC_H

#include <stdint.h>
#include <sys/types.h>

/* Virtual and resident size of process pid (0: this process) in bytes, from /proc/<pid>/statm; both 0
   when it cannot be read (the process is gone). Any thread. */
void bw_proc_memory(pid_t pid, int64_t *virtual_bytes, int64_t *resident_bytes);

#endif

/* Preloaded into a server: one page mapped 2 MiB above the program break, so that glibc's main
 * arena cannot grow with brk past it and goes on in memory it maps (what node's heap meets when a
 * mapping of V8's lands above it). Everything else in the process is as it was.
 * Build: cc -shared -fPIC -O1 -o brk_wall.so brk_wall.c */
#define _GNU_SOURCE
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

__attribute__((constructor)) static void wall(void)
{
    uintptr_t above = ((uintptr_t)sbrk(0) + (2u << 20) + 4095) & ~(uintptr_t)4095;
    mmap((void *)above, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
}

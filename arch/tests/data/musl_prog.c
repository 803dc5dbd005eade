/* A static musl program with syscalls in wrappers, cancellation points and inline asm. */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static long raw_getpid(void)
{
    long ret;
#if defined(__x86_64__)
    __asm__ volatile("syscall" : "=a"(ret) : "a"(SYS_getpid) : "rcx", "r11", "memory");
#else
    register long x8 __asm__("x8") = SYS_getpid;
    register long x0 __asm__("x0");
    __asm__ volatile("svc #0" : "=r"(x0) : "r"(x8) : "memory");
    ret = x0;
#endif
    return ret;
}

static void *worker(void *arg)
{
    return arg;
}

int main(int argc, char **argv)
{
    char buf[64];
    int fd = open(argc > 1 ? argv[1] : "/proc/self/stat", O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf) : -1;
    if (fd >= 0)
        close(fd);
    pthread_t t;
    if (argc > 2 && pthread_create(&t, 0, worker, 0) == 0)
        pthread_join(t, 0);
    printf("%ld %zd %ld\n", raw_getpid(), n, syscall(SYS_gettid));
    return 0;
}

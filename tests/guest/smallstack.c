/* smallstack WORKDIR: system calls made on a small stack. A system call needs no room on
 * the caller's stack, so programs run code that makes them on small ones: musl's posix_spawn
 * runs its child on 5 KiB (1024 + PATH_MAX bytes). A child made by clone(CLONE_VM |
 * CLONE_VFORK), as posix_spawn makes it, runs on a 5 KiB stack carved from a buffer whose
 * lower part holds a known pattern, makes calls of several kinds (served by the kernel
 * library, passed to the host, failing), and exits 0 only if the pattern is intact and every
 * call gave what it should. An interceptor that serves calls on the guest's stack tramples
 * the pattern (or worse) there.
 * Guest test convention: exit 0 means pass. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

#define PATTERN_BYTES (16 * 1024)
#define STACK_BYTES (1024 + 4096)

static unsigned char area[PATTERN_BYTES + STACK_BYTES] __attribute__((aligned(64)));
static const char *workdir;

/* How many bytes below the stack were changed (0: none). */
static size_t pattern_damage(void)
{
    for (size_t i = 0; i < PATTERN_BYTES; i++)
        if (area[i] != (unsigned char)(i * 7 + 3))
            return PATTERN_BYTES - i;
    return 0;
}

static int pattern_intact(void)
{
    return pattern_damage() == 0;
}

/* Child: 1 when a call went wrong, 2 when the pattern below its stack changed. */
static int child(void *arg)
{
    (void)arg;
    char path[256];
    size_t n = 0;
    for (const char *p = workdir; *p && n < 200; p++)
        path[n++] = *p;
    const char name[] = "/smallstack-file";
    for (size_t i = 0; i < sizeof name; i++)
        path[n++] = name[i];
    int fd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0600);
    if (fd < 0 || write(fd, "abc", 3) != 3 || lseek(fd, 0, SEEK_SET) != 0)
        return 1;
    char buf[4];
    if (read(fd, buf, sizeof buf) != 3 || buf[0] != 'a' || close(fd) != 0)
        return 1;
    struct stat st;
    if (stat(path, &st) != 0 || st.st_size != 3 || unlink(path) != 0)
        return 1;
    if (getpid() <= 0 || close(-1) != -1 || errno != EBADF)
        return 1;
    sigset_t set;
    sigemptyset(&set);
    if (sigprocmask(SIG_SETMASK, &set, NULL) != 0)
        return 1;
    size_t damage = pattern_damage();
    if (damage != 0) {
        char line[80];
        int n = snprintf(line, sizeof line, "the memory below the stack changed, %zu bytes deep\n",
                         damage);
        if (n > 0)
            (void)write(1, line, (size_t)n);
        return 2;
    }
    return 0;
}

int main(int argc, char **argv)
{
    workdir = argc > 1 ? argv[1] : "/tmp";
    for (size_t i = 0; i < PATTERN_BYTES; i++)
        area[i] = (unsigned char)(i * 7 + 3);
    check(pattern_intact(), "pattern written", "%ld%ld", 0, 0);
    for (int round = 0; round < 3; round++) {
        pid_t pid = clone(child, area + sizeof area, CLONE_VM | CLONE_VFORK | SIGCHLD, NULL);
        int st = -1;
        if (pid > 0)
            while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                ;
        check(pid > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "calls on a 5 KiB stack",
              "status %#lx (1: a call failed, 2: the memory below the stack changed, "
              "a signal: it crashed), round %ld", st, round);
    }
    return failures != 0;
}

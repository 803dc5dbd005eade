/* probe: the guest side of the seccomp transport tests (bin/seccomp/tests.rs). Each mode
 * makes one syscall the test's filter notifies and checks what the supervisor answered;
 * exit 0 means the answer was the expected one, any other code names the failed check.
 * Raw syscall() is used so libc cannot substitute or cache anything. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

static int mkdir_errno(const char *path)
{
    long r = syscall(SYS_mkdirat, AT_FDCWD, path, 0700);
    return r == 0 ? 0 : errno;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 100;
    const char *mode = argv[1];

    if (!strcmp(mode, "getppid")) /* answered with a value: argv[2] */
        return syscall(SYS_getppid) == atol(argv[2]) ? 0 : 1;

    if (!strcmp(mode, "getppid-enosys")) /* left unanswered by the supervisor */
        return syscall(SYS_getppid) == -1 && errno == ENOSYS ? 0 : 1;

    if (!strcmp(mode, "uname-eperm")) { /* answered with EPERM */
        struct utsname u;
        return syscall(SYS_uname, &u) == -1 && errno == EPERM ? 0 : 1;
    }

    if (!strcmp(mode, "getpid")) { /* continued: the host's answer, checked via /proc */
        char link[32] = {0};
        long pid = syscall(SYS_getpid);
        if (readlink("/proc/self", link, sizeof link - 1) <= 0)
            return 2;
        return pid == atol(link) ? 0 : 1;
    }

    if (!strcmp(mode, "uname-fake")) { /* answered 0 with a struct written into our buffer */
        struct utsname u;
        memset(&u, 0, sizeof u);
        if (syscall(SYS_uname, &u) != 0)
            return 1;
        return !strcmp(u.sysname, "kbox") && !strcmp(u.release, "9.9.9") ? 0 : 2;
    }

    if (!strcmp(mode, "addfd")) { /* openat answered by ADDFD|SEND at fd argv[2] */
        long fd = syscall(SYS_openat, AT_FDCWD, "/kbox-addfd", O_RDONLY);
        if (fd != atol(argv[2]))
            return 1;
        char buf[64] = {0};
        if (read((int)fd, buf, sizeof buf - 1) <= 0)
            return 2;
        return !strcmp(buf, argv[3]) ? 0 : 3;
    }

    if (!strcmp(mode, "path")) /* mkdirat(argv[2]): the supervisor answers 0 iff it read it */
        return mkdir_errno(argv[2]);

    long page = sysconf(_SC_PAGESIZE);
    char *two = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (two == MAP_FAILED)
        return 101;

    if (!strcmp(mode, "path-straddle")) { /* "kbox/straddle" split across two pages */
        const char *s = "kbox/straddle";
        char *at = two + page - 5;
        memcpy(at, s, strlen(s) + 1);
        return mkdir_errno(at);
    }

    if (!strcmp(mode, "path-fault")) { /* no NUL before an unmapped page: EFAULT */
        if (munmap(two + page, page) != 0)
            return 102;
        memset(two, 'x', page);
        return mkdir_errno(two + page - 16) == EFAULT ? 0 : 1;
    }

    if (!strcmp(mode, "path-long")) { /* PATH_MAX bytes without a NUL: ENAMETOOLONG */
        memset(two, 'a', 2 * page);
        two[4096] = '\0';
        return mkdir_errno(two) == ENAMETOOLONG ? 0 : 1;
    }

    return 100;
}

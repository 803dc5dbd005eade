/* fdtest WORKDIR: file-descriptor table semantics and error numbers.
 * Prints one line per check ("ok NAME" or "FAIL NAME: ...") and exits 1 when any check
 * fails. WORKDIR must be an empty writable directory. Raw syscall() is used where libc might
 * otherwise check arguments itself (bad pointers), so the kernel's answer is what is tested. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "check.h"

#define EXPECT_ERR(call, want, name)         \
    do {                                     \
        errno = 0;                           \
        long r_ = (long)(call);              \
        check_err(r_, errno, want, name);    \
    } while (0)

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s WORKDIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    char file[PATH_MAX], missing[PATH_MAX], under_file[PATH_MAX];
    snprintf(file, sizeof file, "%s/fdtest.data", dir);
    snprintf(missing, sizeof missing, "%s/does-not-exist", dir);
    snprintf(under_file, sizeof under_file, "%s/fdtest.data/child", dir);

    /* Setup: a file with known content. stdout stays the report channel. */
    int fd = open(file, O_CREAT | O_TRUNC | O_RDWR, 0644);
    if (fd < 0) {
        printf("FAIL setup: open %s: %s\n", file, strerror(errno));
        return 1;
    }
    const char content[] = "kbox-fdtest\n";
    check(write(fd, content, sizeof content - 1) == (ssize_t)(sizeof content - 1),
          "write-content", "short write (%ld %ld)", 0, 0);

    /* Lowest free descriptor: after close(0), open returns 0. */
    close(0);
    int z = open(file, O_RDONLY);
    check(z == 0, "close0-open-returns-0", "open returned %ld, want %ld", z, 0);
    char buf[64] = {0};
    ssize_t n = read(0, buf, sizeof buf);
    check(n == (ssize_t)(sizeof content - 1) && memcmp(buf, content, n) == 0, "read-via-fd0",
          "read %ld bytes, want %ld", n, (long)(sizeof content - 1));

    /* dup2 to a descriptor above 1024 (raise the soft limit if it is the usual 1024). */
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur <= 1025) {
        struct rlimit want = rl;
        want.rlim_cur = (rl.rlim_max == RLIM_INFINITY || rl.rlim_max > 2048) ? 2048 : rl.rlim_max;
        check(setrlimit(RLIMIT_NOFILE, &want) == 0 && want.rlim_cur > 1025, "raise-nofile-above-1025",
              "cannot raise RLIMIT_NOFILE soft limit above 1025 (hard=%ld) errno=%ld",
              (long)rl.rlim_max, errno);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    int d = dup2(fd, 1025);
    check(d == 1025, "dup2-to-1025", "dup2 returned %ld, want %ld", d, 1025);
    check(fcntl(1025, F_GETFD) == 0, "dup2-clears-cloexec", "F_GETFD=%ld errno=%ld",
          fcntl(1025, F_GETFD), errno);
    check(lseek(1025, 0, SEEK_CUR) == lseek(fd, 0, SEEK_CUR) && lseek(1025, 0, SEEK_SET) == 0 &&
              lseek(fd, 0, SEEK_CUR) == 0,
          "dup-shares-offset", "offset via 1025=%ld, via original=%ld", lseek(1025, 0, SEEK_CUR),
          lseek(fd, 0, SEEK_CUR));
    memset(buf, 0, sizeof buf);
    n = read(1025, buf, 4);
    check(n == 4 && memcmp(buf, "kbox", 4) == 0, "read-via-1025", "read returned %ld errno=%ld", n,
          errno);
    check(dup2(1025, 1025) == 1025, "dup2-same-fd", "dup2(1025,1025) != 1025 (%ld %ld)", 0, 0);
    EXPECT_ERR(dup2(fd, -1), EBADF, "dup2-negative-ebadf");
    EXPECT_ERR(dup2(fd, (int)rl.rlim_cur), EBADF, "dup2-at-rlimit-ebadf");
    check(close(1025) == 0, "close-1025", "close failed errno=%ld %ld", errno, 0);
    EXPECT_ERR(close(1025), EBADF, "close-twice-ebadf");

    /* O_CLOEXEC and F_DUPFD_CLOEXEC. */
    int c = open(file, O_RDONLY | O_CLOEXEC);
    check(c >= 0 && fcntl(c, F_GETFD) == FD_CLOEXEC, "o-cloexec-sets-fd-cloexec",
          "fd=%ld F_GETFD=%ld", c, fcntl(c, F_GETFD));
    int c2 = fcntl(c, F_DUPFD_CLOEXEC, 100);
    check(c2 >= 100 && fcntl(c2, F_GETFD) == FD_CLOEXEC, "f-dupfd-cloexec-min-100", "fd=%ld F_GETFD=%ld",
          c2, fcntl(c2, F_GETFD));
    close(c);
    close(c2);

    /* dup3: flags other than O_CLOEXEC are EINVAL (and make nothing); O_CLOEXEC sets it.
     * dup2 over an open descriptor replaces it with the same file (fstat agrees). */
    EXPECT_ERR(syscall(SYS_dup3, fd, 200, O_APPEND), EINVAL, "dup3-bad-flags-einval");
    EXPECT_ERR(fcntl(200, F_GETFD), EBADF, "dup3-bad-flags-made-nothing");
    check(dup3(fd, 200, O_CLOEXEC) == 200 && fcntl(200, F_GETFD) == FD_CLOEXEC, "dup3-cloexec",
          "F_GETFD=%ld errno=%ld", fcntl(200, F_GETFD), errno);
    int other = open("/", O_RDONLY | O_DIRECTORY);
    struct stat sa, sb;
    check(other >= 0 && dup2(fd, other) == other && fstat(fd, &sa) == 0 && fstat(other, &sb) == 0 &&
              sa.st_ino == sb.st_ino && S_ISREG(sb.st_mode),
          "dup2-over-open-replaces", "fd=%ld errno=%ld", other, errno);
    close(other);
    close(200);

    /* EMFILE: with a small limit, opening until failure fills exactly 0..limit-1. */
    struct rlimit small = {.rlim_cur = 64, .rlim_max = rl.rlim_max};
    check(setrlimit(RLIMIT_NOFILE, &small) == 0, "set-nofile-64", "setrlimit errno=%ld %ld", errno, 0);
    /* The process's own limit bounds dup2, not kbox's. */
    EXPECT_ERR(dup2(fd, 100), EBADF, "dup2-above-lowered-limit-ebadf");
    EXPECT_ERR(fcntl(100, F_GETFD), EBADF, "dup2-above-limit-made-nothing");
    int opened = 0, last = -1, err = 0;
    for (int i = 0; i < 200; i++) {
        int f = open(file, O_RDONLY);
        if (f < 0) {
            err = errno;
            break;
        }
        last = f;
        opened++;
    }
    check(err == EMFILE, "exhaust-emfile", "open failed with errno %ld, want EMFILE(%ld)", err, EMFILE);
    check(last == 63, "exhaust-last-fd-63", "last fd opened %ld, want %ld", last, 63);
    int all_valid = 1;
    for (int i = 0; i < 64; i++)
        if (fcntl(i, F_GETFD) < 0)
            all_valid = 0;
    check(all_valid, "exhaust-table-full", "some fd below 64 is not open (%ld %ld)", 0, 0);
    EXPECT_ERR(dup(fd), EMFILE, "dup-when-full-emfile");
    close(40);
    int again = open(file, O_RDONLY);
    check(again == 40, "reuse-lowest-after-close", "open returned %ld, want %ld", again, 40);
    for (int i = 3; i < 64; i++)
        if (i != fd)
            close(i);
    setrlimit(RLIMIT_NOFILE, &rl);

    /* EBADF family. */
    EXPECT_ERR(close(-1), EBADF, "close-negative-ebadf");
    EXPECT_ERR(close(999), EBADF, "close-unopened-ebadf");
    EXPECT_ERR(read(999, buf, 1), EBADF, "read-unopened-ebadf");
    struct stat st;
    EXPECT_ERR(fstat(999, &st), EBADF, "fstat-unopened-ebadf");
    int ro = open(file, O_RDONLY);
    EXPECT_ERR(write(ro, "x", 1), EBADF, "write-on-rdonly-ebadf");
    int wo = open(file, O_WRONLY);
    EXPECT_ERR(read(wo, buf, 1), EBADF, "read-on-wronly-ebadf");
    close(wo);

    /* Path errors. */
    EXPECT_ERR(open(missing, O_RDONLY), ENOENT, "open-missing-enoent");
    EXPECT_ERR(open(dir, O_WRONLY), EISDIR, "open-dir-wronly-eisdir");
    EXPECT_ERR(open(under_file, O_RDONLY), ENOTDIR, "open-under-file-enotdir");
    EXPECT_ERR(open(file, O_RDONLY | O_DIRECTORY), ENOTDIR, "o-directory-on-file-enotdir");
    EXPECT_ERR(open(file, O_CREAT | O_EXCL | O_WRONLY, 0644), EEXIST, "o-excl-existing-eexist");

    /* EFAULT: bad user pointers straight to the kernel. */
    EXPECT_ERR(syscall(SYS_openat, AT_FDCWD, (const char *)1, O_RDONLY), EFAULT, "openat-bad-path-efault");
    lseek(ro, 0, SEEK_SET);
    EXPECT_ERR(syscall(SYS_read, ro, (void *)1, 4), EFAULT, "read-bad-buffer-efault");
    EXPECT_ERR(syscall(SYS_write, fd, (const void *)1, 4), EFAULT, "write-bad-buffer-efault");
    EXPECT_ERR(syscall(SYS_fstat, ro, (void *)1), EFAULT, "fstat-bad-buffer-efault");
    close(ro);

    /* /proc/self/fd lists every FD of the process: pipes too, and exactly the open ones. */
    int pfd[2];
    if (pipe(pfd) == 0) {
        DIR *d = opendir("/proc/self/fd");
        int listed = 0, pipes = 0, open_fds = 0;
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            int n = atoi(e->d_name);
            listed++;
            pipes += n == pfd[0] || n == pfd[1];
        }
        for (int n = 0; n < 1024; n++)
            open_fds += fcntl(n, F_GETFD) != -1;
        check(d && pipes == 2 && listed == open_fds, "proc-self-fd-lists-every-fd",
              "listed %ld, open %ld", listed, open_fds);
        if (d)
            closedir(d);
        char link[64], target[64] = "";
        snprintf(link, sizeof(link), "/proc/self/fd/%d", pfd[0]);
        ssize_t n = readlink(link, target, sizeof(target) - 1);
        if (n > 0)
            target[n] = 0;
        check(strncmp(target, "pipe:[", 6) == 0, "proc-self-fd-pipe-link", "readlink gave %ld%ld",
              (long)n, 0);
        /* Opening /proc/self/fd/N reopens the pipe itself (what /dev/stdin and a shell's
         * <(...) rely on). */
        char got[8] = "";
        int re = open(link, O_RDONLY);
        long w = write(pfd[1], "piped", 5), r = re < 0 ? -1 : read(re, got, 5);
        check(w == 5 && r == 5 && memcmp(got, "piped", 5) == 0, "proc-self-fd-reopens-pipe",
              "open %ld, read %ld", re, r);
        if (re >= 0)
            close(re);
        /* And stat of that name is the pipe's (diff <(a) <(b) stats its arguments). */
        struct stat pst;
        int sr = stat(link, &pst);
        check(sr == 0 && S_ISFIFO(pst.st_mode), "proc-self-fd-stat-is-the-pipe",
              "stat %ld, mode %lo", sr, sr == 0 ? (long)pst.st_mode : 0);
        close(pfd[0]);
        close(pfd[1]);
    }

    close(fd);
    unlink(file);
    printf("fdtest: %d failure(s)\n", failures);
    return failures ? 1 : 0;
}

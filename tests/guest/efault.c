/* efault WORKDIR: every syscall that takes a user pointer (path string, in-buffer, out-buffer,
 * struct pointer) must answer a bad one with -1/EFAULT exactly as Linux does, without crashing
 * and without writing through it. Bad pointers: NULL, address 1, the x86_64 vsyscall page, a
 * kernel-half address, an unmapped page, a string that runs into the unmapped page without a
 * NUL (paths), a read-only page (out-buffers; it must still be all zero afterwards) and a
 * buffer whose first bytes are mapped but whose tail is in the unmapped page ("partial").
 * Check names read "CALL(ARG=KIND)". Where Linux does not answer EFAULT (a short read/write
 * through a partial buffer, getgroups with no groups to copy) the check expects what Linux does.
 * Prints one line per check ("ok NAME" or "FAIL NAME: ...") and exits 1 when any check fails.
 * WORKDIR must be an empty writable directory. Raw syscall() is used throughout so libc never
 * looks at the bad pointers itself; nothing may allocate memory once the hole is made, so the
 * unmapped page stays unmapped. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "check.h"

/* Kinds of bad pointer. */
enum { K_NULL, K_ONE, K_VSYSCALL, K_KERNEL, K_UNMAPPED, K_UNTERM, K_RO, K_PARTIAL, NKINDS };
static const char *const kind_name[NKINDS] = {"NULL",     "1",            "vsyscall", "kernel",
                                              "unmapped", "unterminated", "ro",       "partial"};
#define B(k) (1u << (k))
#if defined(__x86_64__)
#define VSYS B(K_VSYSCALL)
#else
#define VSYS 0u
#endif
#define COMMON (B(K_NULL) | B(K_ONE) | VSYS | B(K_KERNEL) | B(K_UNMAPPED))
#define PATH (COMMON | B(K_UNTERM))          /* NUL-terminated string the kernel reads */
#define IN (COMMON | B(K_PARTIAL))           /* fixed-size buffer the kernel reads */
#define OUT (COMMON | B(K_RO) | B(K_PARTIAL)) /* buffer the kernel writes (or reads then writes) */
#define EACH(mask, k)                     \
    for (int k = 0; k < NKINDS; k++)      \
        if ((mask) & B(k))

static size_t pagesz;
static char *hole;           /* first byte of an unmapped page; the page before it is read-write */
static unsigned char *ro;    /* a read-only page of zeros */
static unsigned char *roval; /* a read-only page holding valid in-values: int 16 at 0, int 4 at 64 */
static unsigned char roval_copy[128];

/* The bad pointer of kind k. For K_PARTIAL only the last `mapped` bytes before the hole are
 * mapped; for an in/out pointer (socklen_t *) K_RO gives `roptr`, a valid value in ro memory. */
static void *bad_io(int k, size_t mapped, void *roptr)
{
    switch (k) {
    case K_NULL:
        return NULL;
    case K_ONE:
        return (void *)1;
    case K_VSYSCALL:
        return (void *)0xffffffffff600000UL;
    case K_KERNEL:
        return (void *)0xffff800000000000UL;
    case K_UNMAPPED:
        return hole;
    case K_UNTERM:
        memset(hole - 64, 'a', 64);
        return hole - 64;
    case K_RO:
        return roptr;
    case K_PARTIAL:
        memset(hole - mapped, 0, mapped);
        return hole - mapped;
    }
    return NULL;
}
static void *bad(int k, size_t mapped) { return bad_io(k, mapped, ro); }

static int ro_intact(void)
{
    for (size_t i = 0; i < pagesz; i++)
        if (ro[i])
            return 0;
    return memcmp(roval, roval_copy, sizeof roval_copy) == 0;
}

static char namebuf[160];
static const char *nm(const char *call, const char *arg, int k)
{
    snprintf(namebuf, sizeof namebuf, "%s(%s=%s)", call, arg, kind_name[k]);
    return namebuf;
}

/* want_ret == -1: expects -1 with errno == want_err; otherwise expects ret == want_ret. Every
 * check also requires the read-only pages to be untouched and `extra` (with `why`) to hold. */
static void expect_x(const char *name, long ret, int err, long want_ret, int want_err, int extra,
                     const char *why)
{
    int intact = ro_intact();
    int ok = (want_ret == -1 ? (ret == -1 && err == want_err) : ret == want_ret) && intact && extra;
    if (ok) {
        printf("ok %s\n", name);
    } else {
        printf("FAIL %s: ret=%ld errno=%d (%s), want %ld", name, ret, ret == -1 ? err : 0,
               ret == -1 ? strerror(err) : "-", want_ret);
        if (want_ret == -1)
            printf(" errno=%d (%s)", want_err, strerror(want_err));
        if (!intact)
            printf("; read-only memory was written");
        if (!extra)
            printf("; %s", why);
        printf("\n");
        failures++;
    }
    fflush(stdout);
}

#define EXPECT(call, name, want_ret, want_err)                               \
    do {                                                                     \
        errno = 0;                                                           \
        long r_ = (long)(call);                                              \
        int e_ = errno;                                                      \
        expect_x(name, r_, e_, want_ret, want_err, 1, "");                   \
    } while (0)
#define FAULT(call, fn, arg, k) EXPECT(call, nm(fn, arg, k), -1, EFAULT)

#define FILE_NAME "efault-regular-file" /* longer than 8 bytes: readlink of LINK_NAME overflows "partial" */
#define LINK_NAME "efault-link"
#define WFILE_NAME "efault-write-file"
#define NEW_NAME "efault-new-name" /* never exists */
#define SUBDIR "efault-working-directory-with-a-long-name"
#define XATTR_NAME "user.efault-attribute"
#define XATTR_SET_NAME "user.efault-set"
static const char xattr_value[] = "0123456789abcdef0123456789abcdef"; /* 32 bytes */
static const char content[] = "0123456789abcdefghijklmnopqrstuv";   /* 32 bytes */

int main(int argc, char **argv)
{
    static char outbuf[4096]; /* no malloc'd stdio buffer: nothing may be mapped into the hole */
    setvbuf(stdout, outbuf, _IOLBF, sizeof outbuf);
    if (argc != 2) {
        fprintf(stderr, "usage: %s WORKDIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];

    /* Our own executable by absolute path, for execve checks that must get past the lookup. */
    static char self[PATH_MAX];
    int have_self = strchr(argv[0], '/') != NULL;
    if (have_self && argv[0][0] != '/') {
        char cwd[PATH_MAX];
        if (syscall(SYS_getcwd, cwd, sizeof cwd) < 0 ||
            (size_t)snprintf(self, sizeof self, "%s/%s", cwd, argv[0]) >= sizeof self)
            have_self = 0;
    } else if (have_self) {
        snprintf(self, sizeof self, "%s", argv[0]);
    }

    /* Setup: a long-named working directory (so getcwd's answer is longer than 8 bytes), a
     * file with known content, a symlink to it, a file for write checks, a directory fd. */
    if (chdir(dir) != 0 || (mkdir(SUBDIR, 0755) != 0 && errno != EEXIST) || chdir(SUBDIR) != 0) {
        printf("FAIL setup: cannot create and enter %s/%s: %s\n", dir, SUBDIR, strerror(errno));
        return 1;
    }
    unlink(LINK_NAME); /* leftovers of an earlier, interrupted run */
    unlink(NEW_NAME);
    int fd = open(FILE_NAME, O_CREAT | O_TRUNC | O_RDWR, 0644);
    int wfd = open(WFILE_NAME, O_CREAT | O_TRUNC | O_RDWR, 0644);
    int dfd = open(".", O_RDONLY | O_DIRECTORY);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || wfd < 0 || dfd < 0 || sock < 0 ||
        write(fd, content, sizeof content - 1) != (ssize_t)(sizeof content - 1) ||
        symlink(FILE_NAME, LINK_NAME) != 0) {
        printf("FAIL setup: files/socket: %s\n", strerror(errno));
        return 1;
    }
    int have_xattr = syscall(SYS_setxattr, FILE_NAME, XATTR_NAME, xattr_value,
                             sizeof xattr_value - 1, 0) == 0;
    int xattr_errno = errno;

    /* Memory: [rw page][hole], a zero read-only page, and a read-only page of valid values. */
    pagesz = (size_t)sysconf(_SC_PAGESIZE);
    char *two = mmap(NULL, 2 * pagesz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ro = mmap(NULL, pagesz, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    roval = mmap(NULL, pagesz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (two == MAP_FAILED || ro == MAP_FAILED || roval == MAP_FAILED ||
        munmap(two + pagesz, pagesz) != 0) {
        printf("FAIL setup: mmap: %s\n", strerror(errno));
        return 1;
    }
    hole = two + pagesz;
    *(int *)(roval + 0) = 16; /* getsockname addrlen */
    *(int *)(roval + 64) = 4; /* getsockopt optlen */
    memcpy(roval_copy, roval, sizeof roval_copy);
    if (mprotect(roval, pagesz, PROT_READ) != 0) {
        printf("FAIL setup: mprotect: %s\n", strerror(errno));
        return 1;
    }
    unsigned char vec[1];
    check(mincore(hole, pagesz, vec) == -1 && errno == ENOMEM, "setup-hole-unmapped",
          "mincore on the hole: errno=%ld (%ld)", errno, 0);

    static char buf[4096];  /* a good buffer for the arguments not under test */
    static char buf2[4096]; /* and another */
    char *const good_argv[] = {self, NULL};
    char *const good_envp[] = {NULL};

    /* ---- open ---- */
    EACH(PATH, k) FAULT(syscall(SYS_openat, AT_FDCWD, bad(k, 8), O_RDONLY), "openat", "path", k);
#ifdef SYS_open
    EACH(PATH, k) FAULT(syscall(SYS_open, bad(k, 8), O_RDONLY), "open", "path", k);
#endif
#ifdef SYS_creat
    EACH(PATH, k) FAULT(syscall(SYS_creat, bad(k, 8), 0644), "creat", "path", k);
#endif

    /* ---- stat family ---- */
#ifdef SYS_newfstatat
    EACH(PATH, k) FAULT(syscall(SYS_newfstatat, AT_FDCWD, bad(k, 8), buf, 0), "newfstatat", "path", k);
    EACH(OUT, k) FAULT(syscall(SYS_newfstatat, AT_FDCWD, FILE_NAME, bad(k, 8), 0), "newfstatat", "buf", k);
#endif
#ifdef SYS_stat
    EACH(PATH, k) FAULT(syscall(SYS_stat, bad(k, 8), buf), "stat", "path", k);
    EACH(OUT, k) FAULT(syscall(SYS_stat, FILE_NAME, bad(k, 8)), "stat", "buf", k);
#endif
#ifdef SYS_lstat
    EACH(PATH, k) FAULT(syscall(SYS_lstat, bad(k, 8), buf), "lstat", "path", k);
    EACH(OUT, k) FAULT(syscall(SYS_lstat, LINK_NAME, bad(k, 8)), "lstat", "buf", k);
#endif
    EACH(OUT, k) FAULT(syscall(SYS_fstat, fd, bad(k, 8)), "fstat", "buf", k);
#ifdef SYS_statx
    EACH(PATH, k) FAULT(syscall(SYS_statx, AT_FDCWD, bad(k, 8), 0, 0x7ffU, buf), "statx", "path", k);
    EACH(OUT, k) FAULT(syscall(SYS_statx, AT_FDCWD, FILE_NAME, 0, 0x7ffU, bad(k, 8)), "statx", "buf", k);
#endif

    /* ---- access, readlink ---- */
    EACH(PATH, k) FAULT(syscall(SYS_faccessat, AT_FDCWD, bad(k, 8), F_OK), "faccessat", "path", k);
#ifdef SYS_faccessat2
    EACH(PATH, k) FAULT(syscall(SYS_faccessat2, AT_FDCWD, bad(k, 8), F_OK, 0), "faccessat2", "path", k);
#endif
#ifdef SYS_access
    EACH(PATH, k) FAULT(syscall(SYS_access, bad(k, 8), F_OK), "access", "path", k);
#endif
    EACH(PATH, k) FAULT(syscall(SYS_readlinkat, AT_FDCWD, bad(k, 8), buf, 64), "readlinkat", "path", k);
    EACH(OUT, k) FAULT(syscall(SYS_readlinkat, AT_FDCWD, LINK_NAME, bad(k, 8), 64), "readlinkat", "buf", k);
#ifdef SYS_readlink
    EACH(PATH, k) FAULT(syscall(SYS_readlink, bad(k, 8), buf, 64), "readlink", "path", k);
    EACH(OUT, k) FAULT(syscall(SYS_readlink, LINK_NAME, bad(k, 8), 64), "readlink", "buf", k);
#endif

    /* ---- getcwd, chdir ---- */
    EACH(OUT, k) FAULT(syscall(SYS_getcwd, bad(k, 8), 100), "getcwd", "buf", k);
    EACH(PATH, k) FAULT(syscall(SYS_chdir, bad(k, 8)), "chdir", "path", k);
    check(syscall(SYS_getcwd, buf, sizeof buf) > 0 && strstr(buf, SUBDIR) != NULL, "cwd-unchanged",
          "cwd moved (%ld %ld)", 0, 0);

    /* ---- directory entries: create, remove, rename, link ---- */
    EACH(PATH, k) FAULT(syscall(SYS_mkdirat, AT_FDCWD, bad(k, 8), 0755), "mkdirat", "path", k);
    EACH(PATH, k) FAULT(syscall(SYS_unlinkat, AT_FDCWD, bad(k, 8), 0), "unlinkat", "path", k);
    EACH(PATH, k) FAULT(syscall(SYS_unlinkat, AT_FDCWD, bad(k, 8), AT_REMOVEDIR), "unlinkat-removedir", "path", k);
#ifdef SYS_mkdir
    EACH(PATH, k) FAULT(syscall(SYS_mkdir, bad(k, 8), 0755), "mkdir", "path", k);
#endif
#ifdef SYS_unlink
    EACH(PATH, k) FAULT(syscall(SYS_unlink, bad(k, 8)), "unlink", "path", k);
#endif
#ifdef SYS_rmdir
    EACH(PATH, k) FAULT(syscall(SYS_rmdir, bad(k, 8)), "rmdir", "path", k);
#endif
#ifdef SYS_renameat
    EACH(PATH, k) FAULT(syscall(SYS_renameat, AT_FDCWD, bad(k, 8), AT_FDCWD, NEW_NAME), "renameat", "old", k);
    EACH(PATH, k) FAULT(syscall(SYS_renameat, AT_FDCWD, FILE_NAME, AT_FDCWD, bad(k, 8)), "renameat", "new", k);
#endif
#ifdef SYS_renameat2
    EACH(PATH, k) FAULT(syscall(SYS_renameat2, AT_FDCWD, bad(k, 8), AT_FDCWD, NEW_NAME, 0), "renameat2", "old", k);
    EACH(PATH, k) FAULT(syscall(SYS_renameat2, AT_FDCWD, FILE_NAME, AT_FDCWD, bad(k, 8), 0), "renameat2", "new", k);
#endif
#ifdef SYS_rename
    EACH(PATH, k) FAULT(syscall(SYS_rename, bad(k, 8), NEW_NAME), "rename", "old", k);
    EACH(PATH, k) FAULT(syscall(SYS_rename, FILE_NAME, bad(k, 8)), "rename", "new", k);
#endif
    EACH(PATH, k) FAULT(syscall(SYS_linkat, AT_FDCWD, bad(k, 8), AT_FDCWD, NEW_NAME, 0), "linkat", "old", k);
    EACH(PATH, k) FAULT(syscall(SYS_linkat, AT_FDCWD, FILE_NAME, AT_FDCWD, bad(k, 8), 0), "linkat", "new", k);
#ifdef SYS_link
    EACH(PATH, k) FAULT(syscall(SYS_link, bad(k, 8), NEW_NAME), "link", "old", k);
    EACH(PATH, k) FAULT(syscall(SYS_link, FILE_NAME, bad(k, 8)), "link", "new", k);
#endif
    EACH(PATH, k) FAULT(syscall(SYS_symlinkat, bad(k, 8), AT_FDCWD, NEW_NAME), "symlinkat", "target", k);
    EACH(PATH, k) FAULT(syscall(SYS_symlinkat, FILE_NAME, AT_FDCWD, bad(k, 8)), "symlinkat", "linkpath", k);
#ifdef SYS_symlink
    EACH(PATH, k) FAULT(syscall(SYS_symlink, bad(k, 8), NEW_NAME), "symlink", "target", k);
    EACH(PATH, k) FAULT(syscall(SYS_symlink, FILE_NAME, bad(k, 8)), "symlink", "linkpath", k);
#endif
    check(faccessat(AT_FDCWD, FILE_NAME, F_OK, 0) == 0 && faccessat(AT_FDCWD, NEW_NAME, F_OK, 0) != 0,
          "names-unchanged", "file present=%ld, new name absent=%ld",
          faccessat(AT_FDCWD, FILE_NAME, F_OK, 0) == 0, faccessat(AT_FDCWD, NEW_NAME, F_OK, 0) != 0);

    /* ---- attributes: mode, owner, times, size ---- */
    EACH(PATH, k) FAULT(syscall(SYS_fchmodat, AT_FDCWD, bad(k, 8), 0644), "fchmodat", "path", k);
    EACH(PATH, k) FAULT(syscall(SYS_fchownat, AT_FDCWD, bad(k, 8), -1, -1, 0), "fchownat", "path", k);
#ifdef SYS_chmod
    EACH(PATH, k) FAULT(syscall(SYS_chmod, bad(k, 8), 0644), "chmod", "path", k);
#endif
#ifdef SYS_chown
    EACH(PATH, k) FAULT(syscall(SYS_chown, bad(k, 8), -1, -1), "chown", "path", k);
#endif
#ifdef SYS_lchown
    EACH(PATH, k) FAULT(syscall(SYS_lchown, bad(k, 8), -1, -1), "lchown", "path", k);
#endif
    /* A NULL times pointer means "now", so times=NULL is not a bad pointer. */
    EACH(PATH, k) FAULT(syscall(SYS_utimensat, AT_FDCWD, bad(k, 8), NULL, 0), "utimensat", "path", k);
    EACH(IN & ~B(K_NULL), k) FAULT(syscall(SYS_utimensat, AT_FDCWD, FILE_NAME, bad(k, 8), 0), "utimensat", "times", k);
#ifdef SYS_utimes
    EACH(PATH, k) FAULT(syscall(SYS_utimes, bad(k, 8), NULL), "utimes", "path", k);
    EACH(IN & ~B(K_NULL), k) FAULT(syscall(SYS_utimes, FILE_NAME, bad(k, 8)), "utimes", "times", k);
#endif
#ifdef SYS_utime
    EACH(PATH, k) FAULT(syscall(SYS_utime, bad(k, 8), NULL), "utime", "path", k);
    EACH(IN & ~B(K_NULL), k) FAULT(syscall(SYS_utime, FILE_NAME, bad(k, 8)), "utime", "times", k);
#endif
    EACH(PATH, k) FAULT(syscall(SYS_truncate, bad(k, 8), 0), "truncate", "path", k);

    /* ---- statfs ---- */
    EACH(PATH, k) FAULT(syscall(SYS_statfs, bad(k, 8), buf), "statfs", "path", k);
    EACH(OUT, k) FAULT(syscall(SYS_statfs, ".", bad(k, 8)), "statfs", "buf", k);
    EACH(OUT, k) FAULT(syscall(SYS_fstatfs, dfd, bad(k, 8)), "fstatfs", "buf", k);

    /* ---- directory listing: the first entry (".") is 24 bytes, more than "partial" holds ---- */
    EACH(OUT, k) {
        lseek(dfd, 0, SEEK_SET);
        FAULT(syscall(SYS_getdents64, dfd, bad(k, 8), 4096), "getdents64", "buf", k);
    }
#ifdef SYS_getdents
    EACH(OUT, k) {
        lseek(dfd, 0, SEEK_SET);
        FAULT(syscall(SYS_getdents, dfd, bad(k, 8), 4096), "getdents", "buf", k);
    }
#endif
    lseek(dfd, 0, SEEK_SET);
    check(syscall(SYS_getdents64, dfd, buf, sizeof buf) > 0, "getdents64-still-works",
          "getdents64 after the faults: errno=%ld (%ld)", errno, 0);

    /* ---- execve: every case must fail before the point of no return. NULL argv/envp and a
     * read-only page of zeros are valid (empty) vectors, so they are not used as bad pointers. ---- */
    EACH(PATH, k) FAULT(syscall(SYS_execve, bad(k, 8), good_argv, good_envp), "execve", "path", k);
    if (have_self) {
        EACH(COMMON & ~B(K_NULL), k)
            FAULT(syscall(SYS_execve, self, bad(k, 8), good_envp), "execve", "argv", k);
        *(char **)(hole - sizeof(char *)) = self; /* argv[0] valid, argv[1] in the hole */
        FAULT(syscall(SYS_execve, self, hole - sizeof(char *), good_envp), "execve", "argv", K_PARTIAL);
        EACH(PATH & ~B(K_NULL), k) {
            char *v[] = {bad(k, 8), NULL};
            FAULT(syscall(SYS_execve, self, v, good_envp), "execve", "argv[0]", k);
        }
        EACH(COMMON & ~B(K_NULL), k)
            FAULT(syscall(SYS_execve, self, good_argv, bad(k, 8)), "execve", "envp", k);
        *(char **)(hole - sizeof(char *)) = self;
        FAULT(syscall(SYS_execve, self, good_argv, hole - sizeof(char *)), "execve", "envp", K_PARTIAL);
        EACH(PATH & ~B(K_NULL), k) {
            char *v[] = {bad(k, 8), NULL};
            FAULT(syscall(SYS_execve, self, good_argv, v), "execve", "envp[0]", k);
        }
    } else {
        printf("skip execve argv/envp checks: argv[0] (%s) is not a path\n", argv[0]);
    }

    /* ---- uname, sysinfo ---- */
    EACH(OUT, k) FAULT(syscall(SYS_uname, bad(k, 8)), "uname", "buf", k);
    EACH(OUT, k) FAULT(syscall(SYS_sysinfo, bad(k, 8)), "sysinfo", "buf", k);

    /* ---- extended attributes. The value must be copied in before the filesystem is asked, so
     * setxattr's checks hold even without xattr support; get/list only copy out when there is
     * something to copy (an existing attribute longer than 8 bytes). ---- */
    EACH(PATH, k) FAULT(syscall(SYS_getxattr, bad(k, 8), XATTR_NAME, buf, 64), "getxattr", "path", k);
    EACH(PATH, k) FAULT(syscall(SYS_getxattr, FILE_NAME, bad(k, 8), buf, 64), "getxattr", "name", k);
    EACH(PATH, k) FAULT(syscall(SYS_setxattr, bad(k, 8), XATTR_SET_NAME, "v", 1, 0), "setxattr", "path", k);
    EACH(PATH, k) FAULT(syscall(SYS_setxattr, FILE_NAME, bad(k, 8), "v", 1, 0), "setxattr", "name", k);
    EACH(IN, k) FAULT(syscall(SYS_setxattr, FILE_NAME, XATTR_SET_NAME, bad(k, 8), 16, 0), "setxattr", "value", k);
    EACH(PATH, k) FAULT(syscall(SYS_listxattr, bad(k, 8), buf, 256), "listxattr", "path", k);
    if (have_xattr) {
        EACH(OUT, k) FAULT(syscall(SYS_getxattr, FILE_NAME, XATTR_NAME, bad(k, 8), 64), "getxattr", "value", k);
        EACH(OUT, k) FAULT(syscall(SYS_listxattr, FILE_NAME, bad(k, 8), 256), "listxattr", "list", k);
        check(syscall(SYS_getxattr, FILE_NAME, XATTR_NAME, buf, 64) == (long)sizeof xattr_value - 1 &&
                  memcmp(buf, xattr_value, sizeof xattr_value - 1) == 0,
              "getxattr-still-works", "getxattr after the faults: errno=%ld (%ld)", errno, 0);
    } else {
        printf("skip getxattr/listxattr value checks: setxattr %s: %s\n", XATTR_NAME, strerror(xattr_errno));
    }

    /* ---- sockets (AF_UNIX, unbound: its name is 2 bytes, so "partial" is 1 byte there) ---- */
    EACH(IN, k) FAULT(syscall(SYS_bind, sock, bad(k, 8), 16), "bind", "addr", k);
    EACH(IN, k) FAULT(syscall(SYS_connect, sock, bad(k, 8), 16), "connect", "addr", k);
    EACH(OUT, k) {
        socklen_t len = 16;
        FAULT(syscall(SYS_getsockname, sock, bad(k, 1), &len), "getsockname", "addr", k);
    }
    EACH(OUT, k) FAULT(syscall(SYS_getsockname, sock, buf, bad_io(k, 2, roval + 0)), "getsockname", "addrlen", k);
    EACH(IN, k) FAULT(syscall(SYS_setsockopt, sock, SOL_SOCKET, SO_RCVBUF, bad(k, 2), 4), "setsockopt", "optval", k);
    EACH(OUT, k) {
        socklen_t len = 4;
        FAULT(syscall(SYS_getsockopt, sock, SOL_SOCKET, SO_TYPE, bad(k, 2), &len), "getsockopt", "optval", k);
    }
    EACH(OUT, k)
        FAULT(syscall(SYS_getsockopt, sock, SOL_SOCKET, SO_TYPE, buf, bad_io(k, 2, roval + 64)), "getsockopt", "optlen", k);

    /* ---- getgroups: Linux copies (and so faults) only when there are groups to copy ---- */
    long ngroups = syscall(SYS_getgroups, 0, NULL);
    EACH(OUT, k) EXPECT(syscall(SYS_getgroups, 64, bad(k, 2)), nm("getgroups", "list", k),
                        ngroups > 0 ? -1 : 0, EFAULT);

    /* ---- pipe2/pipe: the fds must not be left open when they cannot be reported ---- */
    int probe = dup(dfd);
    close(probe);
    EACH(OUT, k) FAULT(syscall(SYS_pipe2, bad(k, 4), O_CLOEXEC), "pipe2", "fds", k);
#ifdef SYS_pipe
    EACH(OUT, k) FAULT(syscall(SYS_pipe, bad(k, 4)), "pipe", "fds", k);
#endif
    int probe2 = dup(dfd);
    close(probe2);
    check(probe2 == probe, "pipe-no-fd-leak", "lowest free fd was %ld, now %ld", probe, probe2);

    /* ---- read/write on a regular file. A partly mapped buffer gives a short count, as Linux
     * copies up to the fault; nothing is transferred (and the offset stays) on EFAULT. ---- */
    EACH(OUT & ~B(K_PARTIAL), k) {
        lseek(fd, 0, SEEK_SET);
        errno = 0;
        long r = syscall(SYS_read, fd, bad(k, 8), 16);
        int e = errno;
        expect_x(nm("read", "buf", k), r, e, -1, EFAULT, lseek(fd, 0, SEEK_CUR) == 0, "file offset moved");
    }
    {
        lseek(fd, 0, SEEK_SET);
        char *p = bad(K_PARTIAL, 8);
        errno = 0;
        long r = syscall(SYS_read, fd, p, 16);
        int e = errno;
        int extra = r >= 1 && r <= 8 && memcmp(p, content, r) == 0 && lseek(fd, 0, SEEK_CUR) == r;
        expect_x(nm("read", "buf", K_PARTIAL), r, e, r >= 1 && r <= 8 ? r : 8, 0, extra,
                 "want a short read of 1..8 bytes of the file's start, offset advanced by as much");
    }
    EACH(IN & ~B(K_PARTIAL), k) {
        errno = 0;
        long r = syscall(SYS_write, wfd, bad(k, 8), 16);
        int e = errno;
        expect_x(nm("write", "buf", k), r, e, -1, EFAULT,
                 lseek(wfd, 0, SEEK_CUR) == 0 && lseek(wfd, 0, SEEK_END) == 0, "file offset or size changed");
        lseek(wfd, 0, SEEK_SET);
    }
    {
        char *p = bad(K_PARTIAL, 8);
        memcpy(p, "ABCDEFGH", 8);
        errno = 0;
        long r = syscall(SYS_write, wfd, p, 16);
        int e = errno;
        long size = lseek(wfd, 0, SEEK_END);
        int extra = r >= 1 && r <= 8 && size == r && pread(wfd, buf2, 16, 0) == r && memcmp(buf2, "ABCDEFGH", r) == 0;
        expect_x(nm("write", "buf", K_PARTIAL), r, e, r >= 1 && r <= 8 ? r : 8, 0, extra,
                 "want a short write of 1..8 bytes, file holding exactly those");
    }

    /* Cleanup. */
    close(sock);
    close(dfd);
    close(fd);
    close(wfd);
    unlink(LINK_NAME);
    unlink(FILE_NAME);
    unlink(WFILE_NAME);
    if (chdir("..") == 0)
        rmdir(SUBDIR);
    printf("efault: %d failure(s)\n", failures);
    return failures ? 1 : 0;
}

/* coherence WORKDIR [ROUNDS]: what one process writes, every reader sees at once, whatever the
 * clock's granularity. Each check changes a file in a way that keeps its size (so a cache
 * keyed by mtime and size within one clock tick cannot tell the versions apart) and reads it
 * back:
 *   rewrite     4 threads, each rewriting its own 4 KiB file ROUNDS times (open O_TRUNC,
 *               write, close), reopening read-only and comparing;
 *   early-fd    a read-only FD opened *before* a rewrite reads the new data (Linux shares one
 *               page cache);
 *   truncate    truncate(2) and ftruncate(2) by path/FD are seen by an FD opened before;
 *   rename      a same-size file renamed over the name is what a new open reads;
 *   reuse       unlink + create (the inode number is often reused) reads the new data;
 *   mmap        writes through a shared writable mapping reach a reader after close;
 *   pread-loop  the same file rewritten in place with pwrite and read through a fresh FD;
 *   utime       a file written and closed, then given a far-future mtime, keeps that mtime
 *               through a read (nothing writes it back behind the guest's back).
 * Prints "ok NAME" or "FAIL NAME: ..." per check and exits 1 when any failed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define SIZE 4096
#define THREADS 4

static int failures;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static const char *workdir;
static int rounds = 200;

static void report(int ok, const char *name, const char *detail)
{
    pthread_mutex_lock(&out_lock);
    if (ok) {
        printf("ok %s\n", name);
    } else {
        printf("FAIL %s: %s\n", name, detail);
        failures++;
    }
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
}

static void fill(char *buf, int seed)
{
    for (int i = 0; i < SIZE; i++)
        buf[i] = (char)('a' + (seed * 7 + i) % 26);
    snprintf(buf, 32, "version %08d|", seed);
}

/* Writes exactly SIZE bytes of version `seed` to `path` (truncating first). */
static int write_version(const char *path, int seed)
{
    char buf[SIZE];
    fill(buf, seed);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, buf, SIZE);
    close(fd);
    return n == SIZE ? 0 : -1;
}

/* Reads SIZE bytes at offset 0 of `fd` and says whether they are version `seed`. */
static int fd_has_version(int fd, int seed, char *got)
{
    char want[SIZE], buf[SIZE];
    fill(want, seed);
    ssize_t n = pread(fd, buf, SIZE, 0);
    if (n != SIZE) {
        snprintf(got, 64, "read %zd bytes (errno %d)", n, n < 0 ? errno : 0);
        return 0;
    }
    if (memcmp(buf, want, SIZE) != 0) {
        snprintf(got, 64, "read \"%.16s\", want version %08d", buf, seed);
        return 0;
    }
    return 1;
}

static int path_has_version(const char *path, int seed, char *got)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        snprintf(got, 64, "open: %s", strerror(errno));
        return 0;
    }
    int ok = fd_has_version(fd, seed, got);
    close(fd);
    return ok;
}

static void *rewriter(void *arg)
{
    long id = (long)arg;
    char path[PATH_MAX], got[64], detail[128];
    snprintf(path, sizeof path, "%s/rewrite-%ld", workdir, id);
    for (int r = 0; r < rounds; r++) {
        int seed = (int)id * 100000 + r;
        if (write_version(path, seed) != 0) {
            snprintf(detail, sizeof detail, "thread %ld round %d: write: %s", id, r,
                     strerror(errno));
            report(0, "rewrite", detail);
            return NULL;
        }
        if (!path_has_version(path, seed, got)) {
            snprintf(detail, sizeof detail, "thread %ld round %d: %s", id, r, got);
            report(0, "rewrite", detail);
            return NULL;
        }
    }
    return (void *)1;
}

static void check_rewrite_threads(void)
{
    pthread_t t[THREADS];
    int passed = 0;
    for (long i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, rewriter, (void *)i);
    for (int i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(t[i], &r);
        passed += r != NULL;
    }
    if (passed == THREADS)
        report(1, "rewrite", "");
}

static void check_early_fd(void)
{
    char path[PATH_MAX], got[64];
    snprintf(path, sizeof path, "%s/early", workdir);
    write_version(path, 1);
    int early = open(path, O_RDONLY);
    char first[64];
    int ok = fd_has_version(early, 1, first);
    for (int r = 2; ok && r < 2 + rounds / 10; r++) {
        write_version(path, r);
        ok = fd_has_version(early, r, got);
    }
    close(early);
    report(ok, "early-fd", got);
}

static void check_truncate(void)
{
    char path[PATH_MAX], detail[128];
    snprintf(path, sizeof path, "%s/trunc", workdir);
    write_version(path, 5);
    int early = open(path, O_RDONLY);
    struct stat st;
    int ok = truncate(path, 100) == 0 && fstat(early, &st) == 0 && st.st_size == 100;
    char buf[SIZE];
    ssize_t n = pread(early, buf, SIZE, 0);
    snprintf(detail, sizeof detail, "after truncate(100) an earlier FD reads %zd bytes", n);
    ok = ok && n == 100;
    int w = open(path, O_WRONLY);
    ok = ok && w >= 0 && ftruncate(w, 10) == 0;
    close(w);
    n = pread(early, buf, SIZE, 0);
    if (ok && n != 10)
        snprintf(detail, sizeof detail, "after ftruncate(10) an earlier FD reads %zd bytes", n);
    ok = ok && n == 10;
    close(early);
    report(ok, "truncate", detail);
}

static void check_rename(void)
{
    char a[PATH_MAX], b[PATH_MAX], got[64];
    snprintf(a, sizeof a, "%s/rename-target", workdir);
    snprintf(b, sizeof b, "%s/rename-new", workdir);
    int ok = 1;
    for (int r = 0; ok && r < rounds / 4; r++) {
        write_version(a, 2 * r);
        ok = path_has_version(a, 2 * r, got);
        write_version(b, 2 * r + 1);
        ok = ok && rename(b, a) == 0 && path_has_version(a, 2 * r + 1, got);
    }
    report(ok, "rename", got);
}

static void check_reuse(void)
{
    char a[PATH_MAX], b[PATH_MAX], got[64];
    snprintf(a, sizeof a, "%s/reuse-a", workdir);
    snprintf(b, sizeof b, "%s/reuse-b", workdir);
    int ok = 1;
    for (int r = 0; ok && r < rounds / 4; r++) {
        write_version(a, 3 * r);
        ok = path_has_version(a, 3 * r, got);
        unlink(a);
        /* A new file, likely on the inode number just freed. */
        write_version(b, 3 * r + 1);
        ok = ok && path_has_version(b, 3 * r + 1, got);
        unlink(b);
    }
    report(ok, "reuse", got);
}

static void check_mmap(void)
{
    char path[PATH_MAX], got[64];
    snprintf(path, sizeof path, "%s/mapped", workdir);
    int ok = 1;
    for (int r = 0; ok && r < rounds / 10; r++) {
        write_version(path, 10 * r);
        ok = path_has_version(path, 10 * r, got);
        int fd = open(path, O_RDWR);
        char *m = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED) {
            snprintf(got, sizeof got, "mmap: %s", strerror(errno));
            ok = 0;
            close(fd);
            break;
        }
        char want[SIZE];
        fill(want, 10 * r + 1);
        memcpy(m, want, SIZE);
        munmap(m, SIZE);
        close(fd);
        ok = path_has_version(path, 10 * r + 1, got);
    }
    report(ok, "mmap", got);
}

static void check_pwrite_loop(void)
{
    char path[PATH_MAX], got[64];
    snprintf(path, sizeof path, "%s/pwrite", workdir);
    write_version(path, 0);
    int ok = 1;
    for (int r = 1; ok && r < rounds; r++) {
        char buf[SIZE];
        fill(buf, r);
        int fd = open(path, O_WRONLY);
        ok = fd >= 0 && pwrite(fd, buf, SIZE, 0) == SIZE;
        close(fd);
        ok = ok && path_has_version(path, r, got);
    }
    report(ok, "pwrite-loop", got);
}

static void check_utime(void)
{
    char path[PATH_MAX], got[64], detail[128];
    snprintf(path, sizeof path, "%s/utime", workdir);
    write_version(path, 7);
    /* 2108-12-30, as CPython's test_add_file_after_2107 sets it. */
    const struct timespec far[2] = {{4386268800, 0}, {4386268800, 0}};
    struct stat before = {0}, after = {0};
    int ok = utimensat(AT_FDCWD, path, far, 0) == 0 && stat(path, &before) == 0 &&
             path_has_version(path, 7, got) && stat(path, &after) == 0;
    snprintf(detail, sizeof detail, "mtime %lld, then %lld after a read; want 4386268800",
             (long long)before.st_mtime, (long long)after.st_mtime);
    report(ok && before.st_mtime == 4386268800 && after.st_mtime == 4386268800, "utime",
           detail);
}

/* A child that makes no call of its own but exit_group writes through an FD it inherited,
 * after its parent has changed state (cd) and closed its own copy: a later open of the file
 * (which reads what the kernel has) sees the child's bytes. */
static void check_unmet_child_write(void)
{
    char path[PATH_MAX], detail[160];
    snprintf(path, sizeof path, "%s/unmet", workdir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int go[2];
    if (fd < 0 || pipe(go) != 0) {
        report(0, "unmet-child-write", "setup failed");
        return;
    }
    pid_t pid = fork();
    if (pid == 0) {
        char c;
        /* Only calls the host runs unasked until the exit. */
        if (read(go[0], &c, 1) == 1 && write(fd, "child-bytes", 11) == 11)
            _exit(0);
        _exit(1);
    }
    int ok = pid > 0 && chdir(workdir) == 0 && close(fd) == 0 && write(go[1], "g", 1) == 1;
    int status = 0;
    ok = ok && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    char got[32] = {0};
    int r = open(path, O_RDONLY);
    ssize_t n = r >= 0 ? read(r, got, sizeof got - 1) : -1;
    if (r >= 0)
        close(r);
    close(go[0]);
    close(go[1]);
    snprintf(detail, sizeof detail, "read %zd bytes: '%s'; want 'child-bytes'", n, got);
    report(ok && n == 11 && memcmp(got, "child-bytes", 11) == 0, "unmet-child-write", detail);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: coherence WORKDIR [ROUNDS]\n");
        return 2;
    }
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/coherence.%d", argv[1], (int)getpid());
    if (mkdir(dir, 0755) != 0) {
        perror("mkdir");
        return 1;
    }
    workdir = dir;
    if (argc > 2)
        rounds = atoi(argv[2]) > 0 ? atoi(argv[2]) : rounds;
    check_rewrite_threads();
    check_early_fd();
    check_truncate();
    check_rename();
    check_reuse();
    check_mmap();
    check_pwrite_loop();
    check_utime();
    check_unmet_child_write();
    printf("coherence: %d failure(s)\n", failures);
    return failures ? 1 : 0;
}

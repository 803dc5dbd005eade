/* threads WORKDIR: 4 pthreads do file I/O at the same time, each on its own file in WORKDIR,
 * then the main thread checks every file again. Each thread writes a pattern unique to it in
 * chunks (write and pwrite), fsyncs, reads it back through a fresh descriptor and compares.
 * Prints one line per thread and exits 1 on any mismatch or error. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NTHREADS 4
#define CHUNK 4096
#define NCHUNKS 64 /* 256 KiB per file */

struct job {
    int id;
    char path[PATH_MAX];
    char err[256];
    pid_t tid;
};

static pthread_barrier_t start;

static unsigned char pattern(int id, long off)
{
    return (unsigned char)((off * 31 + id * 97 + (off >> 12)) & 0xff);
}

static void fill(unsigned char *buf, int id, long off, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = pattern(id, off + (long)i);
}

/* Reads the whole file through a new descriptor and compares it with the pattern. */
static int verify(const char *path, int id, char *err, size_t errlen)
{
    unsigned char got[CHUNK], want[CHUNK];
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        snprintf(err, errlen, "reopen %.200s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size != (off_t)CHUNK * NCHUNKS) {
        snprintf(err, errlen, "size %lld, want %d", (long long)st.st_size, CHUNK * NCHUNKS);
        close(fd);
        return -1;
    }
    for (long c = 0; c < NCHUNKS; c++) {
        ssize_t n = read(fd, got, CHUNK);
        if (n != CHUNK) {
            snprintf(err, errlen, "read chunk %ld returned %zd (%s)", c, n, n < 0 ? strerror(errno) : "short");
            close(fd);
            return -1;
        }
        fill(want, id, c * CHUNK, CHUNK);
        if (memcmp(got, want, CHUNK) != 0) {
            snprintf(err, errlen, "content mismatch in chunk %ld", c);
            close(fd);
            return -1;
        }
    }
    char extra;
    ssize_t n = read(fd, &extra, 1);
    close(fd);
    if (n != 0) {
        snprintf(err, errlen, "read past end returned %zd, want 0 (EOF)", n);
        return -1;
    }
    return 0;
}

static void *worker(void *arg)
{
    struct job *j = arg;
    unsigned char buf[CHUNK];
    j->tid = gettid();
    pthread_barrier_wait(&start);

    int fd = open(j->path, O_CREAT | O_TRUNC | O_RDWR, 0600);
    if (fd < 0) {
        snprintf(j->err, sizeof j->err, "open %.200s: %s", j->path, strerror(errno));
        return NULL;
    }
    /* Even chunks with sequential write(), odd chunks afterwards with pwrite() into the
     * holes, so both the shared offset and positional I/O are exercised. */
    for (long c = 0; c < NCHUNKS; c++) {
        fill(buf, j->id, c * CHUNK, CHUNK);
        if (c % 2 == 0) {
            if (lseek(fd, c * CHUNK, SEEK_SET) != c * CHUNK || write(fd, buf, CHUNK) != CHUNK) {
                snprintf(j->err, sizeof j->err, "write chunk %ld: %s", c, strerror(errno));
                close(fd);
                return NULL;
            }
        }
    }
    for (long c = 1; c < NCHUNKS; c += 2) {
        fill(buf, j->id, c * CHUNK, CHUNK);
        if (pwrite(fd, buf, CHUNK, c * CHUNK) != CHUNK) {
            snprintf(j->err, sizeof j->err, "pwrite chunk %ld: %s", c, strerror(errno));
            close(fd);
            return NULL;
        }
    }
    if (fsync(fd) != 0) {
        snprintf(j->err, sizeof j->err, "fsync: %s", strerror(errno));
        close(fd);
        return NULL;
    }
    /* pread one chunk back through the same descriptor before closing. */
    unsigned char want[CHUNK];
    fill(want, j->id, 5L * CHUNK, CHUNK);
    if (pread(fd, buf, CHUNK, 5L * CHUNK) != CHUNK || memcmp(buf, want, CHUNK) != 0) {
        snprintf(j->err, sizeof j->err, "pread chunk 5 mismatch");
        close(fd);
        return NULL;
    }
    close(fd);
    verify(j->path, j->id, j->err, sizeof j->err);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s WORKDIR\n", argv[0]);
        return 2;
    }
    struct job jobs[NTHREADS];
    pthread_t th[NTHREADS];
    int failures = 0;
    pthread_barrier_init(&start, NULL, NTHREADS);
    for (int i = 0; i < NTHREADS; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].id = i;
        snprintf(jobs[i].path, sizeof jobs[i].path, "%s/thread-%d.dat", argv[1], i);
        int e = pthread_create(&th[i], NULL, worker, &jobs[i]);
        if (e != 0) {
            printf("FAIL pthread_create %d: %s\n", i, strerror(e));
            return 1;
        }
    }
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);

    pid_t me = getpid();
    for (int i = 0; i < NTHREADS; i++) {
        struct job *j = &jobs[i];
        if (j->err[0] == '\0' && (j->tid == me || j->tid <= 0))
            snprintf(j->err, sizeof j->err, "thread id %d is not a separate task (pid %d)", j->tid, me);
        for (int k = 0; k < i && j->err[0] == '\0'; k++)
            if (jobs[k].tid == j->tid)
                snprintf(j->err, sizeof j->err, "thread id %d shared with thread %d", j->tid, k);
        /* The main thread sees every thread's data too. */
        if (j->err[0] == '\0')
            verify(j->path, j->id, j->err, sizeof j->err);
        if (j->err[0] == '\0' && unlink(j->path) != 0)
            snprintf(j->err, sizeof j->err, "unlink: %s", strerror(errno));
        if (j->err[0] != '\0') {
            printf("FAIL thread %d: %s\n", i, j->err);
            failures++;
        } else {
            printf("ok thread %d: %d bytes written and verified\n", i, CHUNK * NCHUNKS);
        }
    }
    printf("threads: %d failure(s)\n", failures);
    return failures ? 1 : 0;
}

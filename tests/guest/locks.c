/* locks WORKDIR: file locks lock between processes and between open file descriptions, and
 * what one process writes through its FD another reads through its own at once.
 *   flock           a parent holds LOCK_EX; a child's LOCK_EX|LOCK_NB on its own open of the
 *                   file is EWOULDBLOCK, and succeeds once the parent unlocks
 *   flock-same-proc two opens in one process are two descriptions: the second's LOCK_NB
 *                   fails while the first holds the lock
 *   posix           a parent's F_SETLK write lock on bytes 0..99: the child's F_SETLK there is
 *                   EAGAIN (EACCES allowed), its F_GETLK names the parent's pid, and bytes
 *                   100.. are free
 *   ofd             F_OFD_SETLK on one description blocks F_OFD_SETLK on another
 *   shared-writes   a writer's bytes are read by another process's read-write FD before any
 *                   close or fsync (one file, as on Linux)
 * Prints "ok NAME" or "FAIL NAME: ..." per check and exits 1 when any failed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

static char path[PATH_MAX];

/* Runs `body` in a child and returns its exit status (0..255), -1 if it died. */
static int in_child(int (*body)(void))
{
    pid_t pid = fork();
    if (pid == 0)
        _exit(body());
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
        return -1;
    return WEXITSTATUS(st);
}

/* Child: 0 if LOCK_EX|LOCK_NB fails with EWOULDBLOCK, 1 if granted, 2 on other errors. */
static int child_flock_nb(void)
{
    int fd = open(path, O_RDWR);
    if (fd < 0)
        return 2;
    if (flock(fd, LOCK_EX | LOCK_NB) == 0)
        return 1;
    return errno == EWOULDBLOCK ? 0 : 2;
}

static pid_t parent_pid;

/* Child: 0 if bytes 0..99 are locked by the parent (F_SETLK fails, F_GETLK names it) and
 * bytes 100..199 are free; a code saying what differed otherwise. */
static int child_posix(void)
{
    int fd = open(path, O_RDWR);
    if (fd < 0)
        return 10;
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100};
    if (fcntl(fd, F_SETLK, &fl) == 0)
        return 11;
    if (errno != EAGAIN && errno != EACCES)
        return 12;
    struct flock q = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100};
    if (fcntl(fd, F_GETLK, &q) != 0 || q.l_type != F_WRLCK)
        return 13;
    if (q.l_pid != parent_pid)
        return 14;
    struct flock free_range = {
        .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 100, .l_len = 100};
    if (fcntl(fd, F_SETLK, &free_range) != 0)
        return 15;
    return 0;
}

/* Child: reads what the parent wrote (and did not close or sync) through its own FD. */
static int child_reads_shared(void)
{
    int fd = open(path, O_RDWR);
    char buf[16] = {0};
    if (fd < 0 || pread(fd, buf, 10, 0) != 10)
        return 20;
    return memcmp(buf, "fresh-data", 10) == 0 ? 0 : 21;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: locks WORKDIR\n");
        return 2;
    }
    snprintf(path, sizeof path, "%s/locks.%d", argv[1], (int)getpid());
    parent_pid = getpid();
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, "0123456789", 10) != 10) {
        perror(path);
        return 1;
    }

    check(flock(fd, LOCK_EX) == 0, "flock-parent", "errno %ld%ld", errno, 0);
    int r = in_child(child_flock_nb);
    check(r == 0, "flock", "child's LOCK_EX|LOCK_NB: %ld (0 refused, 1 granted, 2 error)%ld", r,
          0);
    flock(fd, LOCK_UN);
    r = in_child(child_flock_nb);
    check(r == 1, "flock-after-unlock", "child's lock after LOCK_UN: %ld%ld", r, 0);

    int fd2 = open(path, O_RDWR);
    flock(fd, LOCK_EX);
    int nb = flock(fd2, LOCK_EX | LOCK_NB);
    check(nb == -1 && errno == EWOULDBLOCK, "flock-same-proc", "second description: %ld errno %ld",
          nb, errno);
    flock(fd, LOCK_UN);

    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100};
    check(fcntl(fd, F_SETLK, &fl) == 0, "posix-parent", "errno %ld%ld", errno, 0);
    r = in_child(child_posix);
    check(r == 0, "posix", "child's view of the parent's record lock: code %ld%ld", r, 0);
    fl.l_type = F_UNLCK;
    fcntl(fd, F_SETLK, &fl);

    struct flock ofd = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    check(fcntl(fd, F_OFD_SETLK, &ofd) == 0, "ofd-first", "errno %ld%ld", errno, 0);
    struct flock ofd2 = ofd;
    int o = fcntl(fd2, F_OFD_SETLK, &ofd2);
    check(o == -1 && (errno == EAGAIN || errno == EACCES), "ofd",
          "second description's OFD lock: %ld errno %ld", o, errno);
    ofd.l_type = F_UNLCK;
    fcntl(fd, F_OFD_SETLK, &ofd);

    check(pwrite(fd, "fresh-data", 10, 0) == 10, "shared-write", "errno %ld%ld", errno, 0);
    r = in_child(child_reads_shared);
    check(r == 0, "shared-writes", "child read code %ld%ld", r, 0);

    close(fd2);
    close(fd);
    unlink(path);
    printf("locks: %d failure(s)\n", failures);
    return failures ? 1 : 0;
}

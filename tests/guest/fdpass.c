/* fdpass WORKDIR: FDs passed over a unix stream socket (SCM_RIGHTS) between two processes,
 * as Python's multiprocessing (forkserver, passing connections) does.
 *
 * A parent listens on WORKDIR/sock; a forked child connects. The parent sends, with data,
 * the read end of a pipe holding a message, then two FDs in one message (another pipe and a
 * regular file of WORKDIR), then plain bytes. The child checks that each set of FDs comes
 * with the bytes it was sent with, that it can read through them, and that the plain bytes
 * carry no FDs; it writes to the file through the FD it got, after the parent closed its
 * own, and reports back over the socket. The parent then finds the child's bytes in the
 * file (its size and a fresh open). The same once more over a socketpair (the way Python's
 * multiprocessing.reduction.send_handle goes). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

static int send_fds(int s, const char *data, const int *fds, int n)
{
    char space[CMSG_SPACE(sizeof(int) * 4)] = {0};
    struct iovec iov = {.iov_base = (void *)data, .iov_len = strlen(data)};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    if (n > 0) {
        m.msg_control = space;
        m.msg_controllen = CMSG_SPACE(sizeof(int) * n);
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * n);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
    }
    return sendmsg(s, &m, 0) == (ssize_t)strlen(data) ? 0 : -1;
}

/* Receives exactly `len` bytes into buf; the FDs that came with them go to fds. */
static int recv_fds(int s, char *buf, size_t len, int *fds, int max)
{
    char space[CMSG_SPACE(sizeof(int) * 4)];
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = space,
                       .msg_controllen = sizeof(space)};
    ssize_t got = recvmsg(s, &m, MSG_WAITALL);
    if (got != (ssize_t)len)
        return -1;
    buf[len] = 0;
    int n = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
            for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int) && n < max; i++)
                memcpy(&fds[n++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
    return n;
}

static int read_text(int fd, char *buf, size_t size)
{
    ssize_t n = read(fd, buf, size - 1);
    buf[n > 0 ? n : 0] = 0;
    return n > 0 ? 0 : -1;
}

/* The child's checks, as a bit mask of failures. */
static int child_checks(int s)
{
    int bad = 0, fds[4], n;
    char buf[64], text[64];

    n = recv_fds(s, buf, 5, fds, 4);
    if (n != 1 || strcmp(buf, "pipe:") || read_text(fds[0], text, sizeof(text)) ||
        strcmp(text, "through the pipe"))
        bad |= 1;
    n = recv_fds(s, buf, 4, fds, 4);
    if (n != 2 || strcmp(buf, "two:") || read_text(fds[0], text, sizeof(text)) ||
        strcmp(text, "second pipe") || pread(fds[1], text, 9, 0) != 9 ||
        memcmp(text, "file body", 9))
        bad |= 2;
    if (n != 2 || pwrite(fds[1], " and more", 9, 9) != 9 || close(fds[1]))
        bad |= 8;
    n = recv_fds(s, buf, 6, fds, 4);
    if (n != 0 || strcmp(buf, "plain."))
        bad |= 4;
    return bad;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s WORKDIR\n", argv[0]);
        return 2;
    }
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/sock", argv[1]);
    char file[4096];
    snprintf(file, sizeof(file), "%s/file", argv[1]);
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&addr, sizeof(addr)) || listen(l, 1))
        return 2;
    pid_t kid = fork();
    if (kid == 0) {
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof(addr)))
            _exit(3);
        int bad = child_checks(s);
        _exit(write(s, &bad, sizeof(bad)) == sizeof(bad) ? 0 : 3);
    }
    int s = accept(l, NULL, NULL);
    int p1[2], p2[2];
    int f = open(file, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (s < 0 || pipe(p1) || pipe(p2) || f < 0 || write(f, "file body", 9) != 9 ||
        write(p1[1], "through the pipe", 16) != 16 || write(p2[1], "second pipe", 11) != 11)
        return 2;
    int two[2] = {p2[0], f};
    int sent = send_fds(s, "pipe:", &p1[0], 1) == 0 && send_fds(s, "two:", two, 2) == 0 &&
               send_fds(s, "plain.", NULL, 0) == 0;
    /* The receiver's copies are its own: the sender's may go at once. */
    close(p1[0]);
    close(p2[0]);
    close(f);
    int bad = -1;
    ssize_t got = read(s, &bad, sizeof(bad));
    int st = 0;
    waitpid(kid, &st, 0);
    check(sent && got == sizeof(bad) && !(bad & 1), "one pipe with its bytes",
          "report %ld, bits %ld", (long)got, bad);
    check(sent && got == sizeof(bad) && !(bad & 2), "a pipe and a file in one message",
          "report %ld, bits %ld", (long)got, bad);
    check(sent && got == sizeof(bad) && !(bad & 4), "plain bytes carry no FDs",
          "report %ld, bits %ld", (long)got, bad);
    check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child exited 0", "status %ld%ld", st, 0);
    struct stat fst = {0};
    char text[64] = {0};
    int again = open(file, O_RDONLY);
    ssize_t n = again < 0 ? -1 : read(again, text, sizeof(text) - 1);
    check(!(bad & 8), "the receiver writes to the passed file", "report %ld, bits %ld",
          (long)got, bad);
    if (stat(file, &fst) != 0)
        fst.st_size = -1;
    check(fst.st_size == 18 && n == 18 && strcmp(text, "file body and more") == 0,
          "a file passed for writing keeps what the receiver wrote", "size %ld, read %ld",
          (long)fst.st_size, (long)n);

    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp))
        return 2;
    pid_t writer = fork();
    if (writer == 0) {
        int got[4];
        char tag[8];
        close(sp[0]);
        _exit(recv_fds(sp[1], tag, 3, got, 4) == 1 && write(got[0], "foo", 3) == 3 &&
                      close(got[0]) == 0
                  ? 0
                  : 3);
    }
    close(sp[1]);
    snprintf(file, sizeof(file), "%s/file2", argv[1]);
    int f2 = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    long open_err = f2 < 0 ? errno : 0;
    int passed = f2 >= 0 && send_fds(sp[0], "fd:", &f2, 1) == 0;
    check(passed, "a new file passed over a socketpair", "fd %ld, errno %ld", f2, open_err);
    close(f2);
    waitpid(writer, &st, 0);
    memset(text, 0, sizeof(text));
    fst.st_size = -1;
    again = open(file, O_RDONLY);
    n = again < 0 ? -1 : read(again, text, sizeof(text) - 1);
    long read_err = n < 0 ? errno : 0;
    if (stat(file, &fst) != 0)
        fst.st_size = -errno;
    check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the receiver over a socketpair exited 0",
          "status %ld%ld", st, 0);
    check(fst.st_size == 3 && n == 3 && strcmp(text, "foo") == 0, "the same over a socketpair",
          "size or -errno %ld, read errno %ld", (long)fst.st_size, read_err);
    return failures ? 1 : 0;
}

/* interrupt WORKDIR: a signal interrupts a blocked call as Linux says. Each case runs in a
 * child of its own that the parent kills after 10 s (a call that never returns is a FAIL
 * "hung", not a hung test). A 300 ms timer (SIGALRM) interrupts:
 *   fifo-open        open of a FIFO nobody writes: EINTR without SA_RESTART
 *   fifo-open-restart  with SA_RESTART the open goes on until a writer comes (1 s later)
 *   fifo-read        read of a FIFO with no data: EINTR
 *   accept           accept on a loopback TCP listener: EINTR
 *   accept-restart   with SA_RESTART accept returns the connection made 1 s later
 *   accept-fatal     with the default action, SIGALRM ends the process in accept
 *   unix-connect     connect to a unix listener whose backlog is full: EINTR
 *   recv             recv on a connected TCP socket with no data: EINTR
 *   poll             poll (even with SA_RESTART, as Linux does): EINTR
 *   epoll            epoll_wait on a listener: EINTR
 *   flock            flock(LOCK_EX) of a file another process holds: EINTR
 *   setlkw           fcntl(F_SETLKW) of a range another process holds: EINTR
 *   sleep            nanosleep: EINTR with the time left
 *   wait             waitpid for a child that runs on: EINTR
 *   sigchld          a child's exit (SIGCHLD handler, no SA_RESTART) interrupts accept
 * Each interrupted call must return after the timer (>= 250 ms) and well before 5 s.
 * Prints "ok NAME" or "FAIL NAME: ..." per case and exits 1 when any failed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

static char dir[PATH_MAX];
static volatile sig_atomic_t caught;

static void on_signal(int sig)
{
    (void)sig;
    caught++;
}

static void handle(int sig, int flags)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
}

/* SIGALRM in `ms` milliseconds, once. */
static void timer_in(long ms)
{
    struct itimerval it;
    memset(&it, 0, sizeof it);
    it.it_value.tv_sec = ms / 1000;
    it.it_value.tv_usec = (ms % 1000) * 1000;
    setitimer(ITIMER_REAL, &it, NULL);
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The check every "EINTR" case makes: ret -1, errno EINTR, the handler ran, and the call
 * returned after the timer but long before 5 s. Returns the child's exit status. */
static int expect_eintr(const char *name, long ret, int err, long started)
{
    long took = now_ms() - started;
    if (ret == -1 && err == EINTR && caught == 1 && took >= 250 && took < 5000) {
        printf("ok %s\n", name);
        fflush(stdout);
        return 0;
    }
    printf("FAIL %s: ret=%ld errno=%d (%s) caught=%d after %ld ms\n", name, ret,
           ret == -1 ? err : 0, ret == -1 ? strerror(err) : "-", (int)caught, took);
    fflush(stdout);
    return 1;
}

static char fifo[PATH_MAX + 16];

static int case_fifo_open(void)
{
    handle(SIGALRM, 0);
    timer_in(300);
    long t = now_ms();
    long r = open(fifo, O_RDONLY);
    return expect_eintr("fifo-open", r, errno, t);
}

/* A child that opens `path` for writing after `ms` and writes one byte. */
static pid_t late_writer(const char *path, long ms)
{
    pid_t pid = fork();
    if (pid == 0) {
        usleep(ms * 1000);
        int fd = open(path, O_WRONLY);
        if (fd < 0 || write(fd, "x", 1) != 1)
            _exit(1);
        _exit(0);
    }
    return pid;
}

static int case_fifo_open_restart(void)
{
    handle(SIGALRM, SA_RESTART);
    pid_t w = late_writer(fifo, 1000);
    timer_in(300);
    int fd = open(fifo, O_RDONLY);
    int e = errno;
    char c = 0;
    long n = fd >= 0 ? read(fd, &c, 1) : -1;
    int st = 0;
    waitpid(w, &st, 0);
    if (fd >= 0 && n == 1 && c == 'x' && caught == 1 && WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        printf("ok fifo-open-restart\n");
        return 0;
    }
    printf("FAIL fifo-open-restart: fd=%d errno=%d read=%ld caught=%d writer=%#x\n", fd,
           fd < 0 ? e : 0, n, (int)caught, st);
    return 1;
}

static int case_fifo_read(void)
{
    handle(SIGALRM, 0);
    int fd = open(fifo, O_RDWR); /* never blocks on Linux */
    if (fd < 0) {
        printf("FAIL fifo-read: open: %s\n", strerror(errno));
        return 1;
    }
    char c;
    timer_in(300);
    long t = now_ms();
    long r = read(fd, &c, 1);
    return expect_eintr("fifo-read", r, errno, t);
}

/* A TCP listener on 127.0.0.1 (an ephemeral port); its port in *port. */
static int tcp_listener(unsigned short *port)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 8) ||
        getsockname(s, (struct sockaddr *)&a, &len))
        return -1;
    *port = ntohs(a.sin_port);
    return s;
}

static int tcp_connect(unsigned short port)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a))
        return -1;
    return s;
}

static int case_accept(void)
{
    unsigned short port;
    int s = tcp_listener(&port);
    if (s < 0) {
        printf("FAIL accept: listener: %s\n", strerror(errno));
        return 1;
    }
    handle(SIGALRM, 0);
    timer_in(300);
    long t = now_ms();
    long r = accept(s, NULL, NULL);
    return expect_eintr("accept", r, errno, t);
}

static int case_accept_restart(void)
{
    unsigned short port;
    int s = tcp_listener(&port);
    if (s < 0) {
        printf("FAIL accept-restart: listener: %s\n", strerror(errno));
        return 1;
    }
    handle(SIGALRM, SA_RESTART);
    pid_t c = fork();
    if (c == 0) {
        usleep(1000 * 1000);
        int fd = tcp_connect(port);
        _exit(fd >= 0 && write(fd, "y", 1) == 1 ? 0 : 1);
    }
    timer_in(300);
    int fd = accept(s, NULL, NULL);
    int e = errno;
    char ch = 0;
    long n = fd >= 0 ? read(fd, &ch, 1) : -1;
    int st = 0;
    waitpid(c, &st, 0);
    if (fd >= 0 && n == 1 && ch == 'y' && caught == 1) {
        printf("ok accept-restart\n");
        return 0;
    }
    printf("FAIL accept-restart: fd=%d errno=%d read=%ld caught=%d\n", fd, fd < 0 ? e : 0, n,
           (int)caught);
    return 1;
}

/* Runs in a child of the case: SIGALRM's default action ends the process in accept. */
static int case_accept_fatal(void)
{
    unsigned short port;
    int s = tcp_listener(&port);
    if (s < 0) {
        printf("FAIL accept-fatal: listener: %s\n", strerror(errno));
        return 1;
    }
    pid_t c = fork();
    if (c == 0) {
        signal(SIGALRM, SIG_DFL);
        timer_in(300);
        accept(s, NULL, NULL);
        _exit(3);
    }
    long t = now_ms();
    int st = 0;
    waitpid(c, &st, 0);
    long took = now_ms() - t;
    if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM && took < 5000) {
        printf("ok accept-fatal\n");
        return 0;
    }
    printf("FAIL accept-fatal: status %#x after %ld ms\n", st, took);
    return 1;
}

static int case_unix_connect(void)
{
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    strcpy(a.sun_path, "sock"); /* in WORKDIR, the cwd: no length limit on WORKDIR */
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 0)) {
        printf("FAIL unix-connect: listener: %s\n", strerror(errno));
        return 1;
    }
    /* A backlog of 0 holds one waiting connection; the next connect waits for room. */
    int first = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(first, (struct sockaddr *)&a, sizeof a)) {
        printf("FAIL unix-connect: first connect: %s\n", strerror(errno));
        return 1;
    }
    int second = socket(AF_UNIX, SOCK_STREAM, 0);
    handle(SIGALRM, 0);
    timer_in(300);
    long t = now_ms();
    long r = connect(second, (struct sockaddr *)&a, sizeof a);
    int e = errno;
    unlink(a.sun_path);
    return expect_eintr("unix-connect", r, e, t);
}

/* A connected TCP pair over loopback: *client and *server. */
static int tcp_pair(int *client, int *server)
{
    unsigned short port;
    int l = tcp_listener(&port);
    if (l < 0)
        return -1;
    *client = tcp_connect(port);
    *server = accept(l, NULL, NULL);
    close(l);
    return *client >= 0 && *server >= 0 ? 0 : -1;
}

static int case_recv(void)
{
    int c, s;
    if (tcp_pair(&c, &s)) {
        printf("FAIL recv: pair: %s\n", strerror(errno));
        return 1;
    }
    handle(SIGALRM, 0);
    char b;
    timer_in(300);
    long t = now_ms();
    long r = recv(c, &b, 1, 0);
    return expect_eintr("recv", r, errno, t);
}

static int case_poll(void)
{
    unsigned short port;
    int s = tcp_listener(&port);
    handle(SIGALRM, SA_RESTART);
    struct pollfd p = {.fd = s, .events = POLLIN};
    timer_in(300);
    long t = now_ms();
    long r = poll(&p, 1, 8000);
    return expect_eintr("poll", r, errno, t);
}

static int case_epoll(void)
{
    unsigned short port;
    int s = tcp_listener(&port);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN};
    if (s < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev)) {
        printf("FAIL epoll: set-up: %s\n", strerror(errno));
        return 1;
    }
    handle(SIGALRM, 0);
    timer_in(300);
    long t = now_ms();
    long r = epoll_wait(ep, &ev, 1, 8000);
    return expect_eintr("epoll", r, errno, t);
}

/* A child that holds a lock on `path` (flock, or a write lock on bytes 0..9) until the
 * parent ends it; returns once the lock is held. */
static pid_t lock_holder(const char *path, int posix)
{
    int ready[2];
    if (pipe(ready))
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(path, O_RDWR | O_CREAT, 0644);
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10};
        int r = posix ? fcntl(fd, F_SETLK, &fl) : flock(fd, LOCK_EX);
        if (fd < 0 || r)
            _exit(1);
        if (write(ready[1], "L", 1) != 1)
            _exit(1);
        pause();
        _exit(0);
    }
    close(ready[1]);
    char c;
    if (read(ready[0], &c, 1) != 1)
        return -1;
    close(ready[0]);
    return pid;
}

static int case_lock(const char *name, int posix)
{
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    pid_t holder = lock_holder(path, posix);
    if (holder < 0) {
        printf("FAIL %s: the holder did not lock\n", name);
        return 1;
    }
    int fd = open(path, O_RDWR);
    handle(SIGALRM, 0);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10};
    timer_in(300);
    long t = now_ms();
    long r = posix ? fcntl(fd, F_SETLKW, &fl) : flock(fd, LOCK_EX);
    int e = errno;
    kill(holder, SIGKILL);
    waitpid(holder, NULL, 0);
    return expect_eintr(name, r, e, t);
}

static int case_flock(void) { return case_lock("flock", 0); }
static int case_setlkw(void) { return case_lock("setlkw", 1); }

static int case_sleep(void)
{
    handle(SIGALRM, SA_RESTART);
    struct timespec want = {.tv_sec = 5}, left = {0};
    timer_in(300);
    long t = now_ms();
    long r = nanosleep(&want, &left);
    int e = errno;
    if (left.tv_sec < 4 || left.tv_sec > 5) {
        printf("FAIL sleep: %ld s left of 5\n", (long)left.tv_sec);
        return 1;
    }
    return expect_eintr("sleep", r, e, t);
}

static int case_wait(void)
{
    pid_t c = fork();
    if (c == 0) {
        sleep(8);
        _exit(0);
    }
    handle(SIGALRM, 0);
    timer_in(300);
    long t = now_ms();
    long r = waitpid(c, NULL, 0);
    int e = errno;
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
    return expect_eintr("wait", r, e, t);
}

static int case_sigchld(void)
{
    unsigned short port;
    int s = tcp_listener(&port);
    handle(SIGCHLD, 0);
    pid_t c = fork();
    if (c == 0) {
        usleep(300 * 1000);
        _exit(0);
    }
    long t = now_ms();
    long r = accept(s, NULL, NULL);
    return expect_eintr("sigchld", r, errno, t);
}

struct test_case {
    const char *name;
    int (*run)(void);
};

static const struct test_case cases[] = {
    {"fifo-open", case_fifo_open},
    {"fifo-open-restart", case_fifo_open_restart},
    {"fifo-read", case_fifo_read},
    {"accept", case_accept},
    {"accept-restart", case_accept_restart},
    {"accept-fatal", case_accept_fatal},
    {"unix-connect", case_unix_connect},
    {"recv", case_recv},
    {"poll", case_poll},
    {"epoll", case_epoll},
    {"flock", case_flock},
    {"setlkw", case_setlkw},
    {"sleep", case_sleep},
    {"wait", case_wait},
    {"sigchld", case_sigchld},
};

/* Runs one case in a child; kills it (and says so) if it has not ended after 10 s. */
static void run_case(const struct test_case *c)
{
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        _exit(c->run());
    }
    setpgid(pid, pid);
    long t = now_ms();
    int st = 0;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            break;
        if (now_ms() - t > 10000) {
            kill(-pid, SIGKILL);
            waitpid(pid, &st, 0);
            printf("FAIL %s: hung (killed after 10 s)\n", c->name);
            fflush(stdout);
            failures++;
            return;
        }
        usleep(20 * 1000);
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        if (!WIFEXITED(st))
            printf("FAIL %s: died with status %#x\n", c->name, st);
        failures++;
    }
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s WORKDIR [CASE]\n", argv[0]);
        return 2;
    }
    snprintf(dir, sizeof dir, "%s", argv[1]);
    if (chdir(dir)) {
        perror(dir);
        return 2;
    }
    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    unlink(fifo);
    if (mkfifo(fifo, 0600)) {
        perror("mkfifo");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (argc < 3 || strcmp(argv[2], cases[i].name) == 0)
            run_case(&cases[i]);
    unlink(fifo);
    return failures ? 1 : 0;
}

/* sigstress WORKDIR [ROUNDS]: file syscalls under a storm of signals. A thread sends SIGUSR1
 * to the process as fast as it can and children exit all the time (SIGCHLD), while the main
 * thread opens, stats, reads, lists and closes files. The handlers are installed with
 * SA_RESTART (what signal() and most programs do): on Linux none of these calls on regular
 * files and directories ever fails with EINTR, so every call must succeed, and every
 * signal sent must be delivered.
 * Prints one line per part and exits 1 on any failure. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t usr1_seen, chld_seen;
static volatile int stop;
static long sent;
static int failures;

static void on_usr1(int s)
{
    (void)s;
    usr1_seen++;
}

static void on_chld(int s)
{
    (void)s;
    int saved = errno;
    while (waitpid(-1, NULL, WNOHANG) > 0)
        chld_seen++;
    errno = saved;
}

static void fail(const char *what, int round, int err)
{
    printf("FAIL %s in round %d: %s\n", what, round, strerror(err));
    fflush(stdout);
    failures++;
}

static void *sender(void *arg)
{
    pid_t pid = *(pid_t *)arg;
    while (!stop) {
        kill(pid, SIGUSR1);
        sent++;
        if (sent % 8 == 0) {
            pid_t c = fork();
            if (c == 0)
                _exit(0);
        }
        usleep(20);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: sigstress WORKDIR [ROUNDS]\n");
        return 2;
    }
    int rounds = argc > 2 && atoi(argv[2]) > 0 ? atoi(argv[2]) : 2000;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/sigstress.%d", argv[1], (int)getpid());
    struct sigaction sa = {0};
    sa.sa_flags = SA_RESTART;
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_chld;
    sigaction(SIGCHLD, &sa, NULL);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, "signal storm\n", 13) != 13) {
        perror("setup");
        return 1;
    }
    close(fd);
    pid_t me = getpid();
    pthread_t t;
    pthread_create(&t, NULL, sender, &me);
    char buf[64];
    struct stat st;
    /* Past ROUNDS, the calls go on until a signal of each kind has come (at most 10 s more):
     * natively 2,000 rounds can end before the sender has forked once. */
    time_t until = time(NULL) + 10;
    int extra = 0;
    for (int r = 0; failures < 5; r++) {
        if (r >= rounds) {
            if ((usr1_seen > 0 && chld_seen > 0) || time(NULL) > until)
                break;
            extra++;
        }
        int f = open(path, O_RDONLY);
        if (f < 0) {
            fail("open", r, errno);
            continue;
        }
        if (fstat(f, &st) != 0)
            fail("fstat", r, errno);
        if (read(f, buf, sizeof buf) != 13)
            fail("read", r, errno);
        if (close(f) != 0)
            fail("close", r, errno);
        if (stat(path, &st) != 0)
            fail("stat", r, errno);
        if (r % 16 == 0) {
            DIR *d = opendir(argv[1]);
            if (!d) {
                fail("opendir", r, errno);
                continue;
            }
            errno = 0;
            while (readdir(d))
                ;
            if (errno)
                fail("readdir", r, errno);
            closedir(d);
        }
    }
    stop = 1;
    pthread_join(t, NULL);
    /* Every child is reaped and at least one of each signal arrived. */
    while (waitpid(-1, NULL, 0) > 0 || errno == EINTR)
        ;
    if (usr1_seen == 0 || chld_seen == 0) {
        printf("FAIL no signals arrived (usr1 %d, chld %d)\n", (int)usr1_seen, (int)chld_seen);
        failures++;
    }
    unlink(path);
    printf("%s sigstress: %d rounds of file calls (and %d more until signals came), %ld signals sent\n",
           failures ? "FAIL" : "ok", rounds, extra, sent);
    return failures ? 1 : 0;
}

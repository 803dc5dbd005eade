/* spawnstress WORKDIR [ROUNDS]: process creation under fire. Two threads spawn children as
 * fast as they can — posix_spawn (clone with CLONE_VM|CLONE_VFORK), vfork+execve and
 * fork+execve, each child running this program again as a tiny worker that checks its argv
 * and exits with a known status — while a third thread keeps a socket pair and a pipe busy
 * and a fourth rewrites a file. The parent's own memory (the argv arrays and path strings it
 * passed, and a canary on its stack) must be intact after every spawn: a supervisor that
 * writes into a vfork parent's memory, or below a stack pointer, shows up here.
 * Prints one line per part and exits 1 on any failure. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static const char *self;
static const char *workdir;
static int rounds = 100;
static volatile int stop;
static int failures;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void fail(const char *what, long a, long b)
{
    pthread_mutex_lock(&out_lock);
    printf("FAIL %s (%ld, %ld)\n", what, a, b);
    fflush(stdout);
    failures++;
    pthread_mutex_unlock(&out_lock);
}

/* The worker: `spawnstress --worker N TAG` exits with N % 200 when argv is as expected. */
static int worker(int argc, char **argv)
{
    if (argc != 4 || strcmp(argv[3], "tag-intact") != 0)
        return 250;
    return atoi(argv[2]) % 200;
}

static int wait_status(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 300 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* One spawn of kind k (0 posix_spawn, 1 vfork, 2 fork); checks the child's status and
 * that the strings and arrays handed over are unchanged afterwards. */
static void spawn_one(int kind, int n)
{
    volatile unsigned long canary[32];
    for (int i = 0; i < 32; i++)
        canary[i] = 0x6b626f78UL * (unsigned long)(i + 1) ^ (unsigned long)n;
    char path[PATH_MAX], num[16], tag[] = "tag-intact", flag[] = "--worker";
    snprintf(path, sizeof path, "%s", self);
    snprintf(num, sizeof num, "%d", n);
    char *argv[] = {path, flag, num, tag, NULL};
    char *const saved[] = {path, flag, num, tag};
    char path_copy[PATH_MAX];
    memcpy(path_copy, path, sizeof path);
    pid_t pid = -1;
    if (kind == 0) {
        if (posix_spawn(&pid, path, NULL, NULL, argv, environ) != 0)
            pid = -1;
    } else if (kind == 1) {
        pid = vfork();
        if (pid == 0) {
            execve(path, argv, environ);
            _exit(127);
        }
    } else {
        pid = fork();
        if (pid == 0) {
            execve(path, argv, environ);
            _exit(127);
        }
    }
    if (pid < 0) {
        fail("spawn", kind, errno);
        return;
    }
    int st = wait_status(pid);
    if (st != n % 200)
        fail(kind == 0 ? "posix_spawn status" : kind == 1 ? "vfork status" : "fork status", n,
             st);
    for (int i = 0; i < 4; i++)
        if (argv[i] != saved[i])
            fail("argv pointer changed", kind, i);
    if (memcmp(path, path_copy, sizeof path) != 0 || strcmp(tag, "tag-intact") != 0 ||
        strcmp(flag, "--worker") != 0)
        fail("argument strings changed", kind, n);
    for (int i = 0; i < 32; i++)
        if (canary[i] != (0x6b626f78UL * (unsigned long)(i + 1) ^ (unsigned long)n))
            fail("stack canary changed", kind, i);
}

static void *spawner(void *arg)
{
    long id = (long)arg;
    for (int n = 0; n < rounds; n++)
        spawn_one((int)((n + id) % 3), n + (int)id * 1000);
    return NULL;
}

static void *socket_traffic(void *arg)
{
    (void)arg;
    int sv[2], p[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0 || pipe(p) != 0) {
        fail("socketpair/pipe", errno, 0);
        return NULL;
    }
    long moved = 0;
    char buf[512];
    while (!stop) {
        memset(buf, (int)(moved & 0xff), sizeof buf);
        if (write(sv[0], buf, sizeof buf) != sizeof buf || read(sv[1], buf, sizeof buf) <= 0 ||
            write(p[1], buf, 64) != 64 || read(p[0], buf, 64) != 64) {
            fail("socket traffic", errno, moved);
            break;
        }
        moved++;
    }
    close(sv[0]);
    close(sv[1]);
    close(p[0]);
    close(p[1]);
    return NULL;
}

static void *file_traffic(void *arg)
{
    (void)arg;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/spawnstress.%d", workdir, (int)getpid());
    for (long r = 0; !stop; r++) {
        char buf[64], back[64];
        int len = snprintf(buf, sizeof buf, "round %ld\n", r);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || write(fd, buf, (size_t)len) != len) {
            fail("file write", errno, r);
            break;
        }
        close(fd);
        fd = open(path, O_RDONLY);
        ssize_t n = read(fd, back, sizeof back);
        close(fd);
        if (n != len || memcmp(buf, back, (size_t)len) != 0) {
            fail("file read back", r, n);
            break;
        }
    }
    unlink(path);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "--worker") == 0)
        return worker(argc, argv);
    if (argc < 2) {
        fprintf(stderr, "usage: spawnstress WORKDIR [ROUNDS]\n");
        return 2;
    }
    self = argv[0];
    if (!strchr(self, '/')) {
        fprintf(stderr, "spawnstress: run me by a path\n");
        return 2;
    }
    workdir = argv[1];
    if (argc > 2 && atoi(argv[2]) > 0)
        rounds = atoi(argv[2]);
    pthread_t spawners[2], sock, file;
    pthread_create(&sock, NULL, socket_traffic, NULL);
    pthread_create(&file, NULL, file_traffic, NULL);
    for (long i = 0; i < 2; i++)
        pthread_create(&spawners[i], NULL, spawner, (void *)i);
    for (int i = 0; i < 2; i++)
        pthread_join(spawners[i], NULL);
    stop = 1;
    pthread_join(sock, NULL);
    pthread_join(file, NULL);
    printf("%s spawnstress: %d spawns in 2 threads with socket and file traffic\n",
           failures ? "FAIL" : "ok", 2 * rounds);
    return failures ? 1 : 0;
}

/* escape WORKDIR [--expect reached|stopped HOSTPID SHMID FD HOSTPROG HOSTFILE HOSTIF]
 *
 * Tries each way out of a sandbox that a guest of kbox must not have, and reports one line
 * per attack: "reached NAME" when it worked, "stopped NAME: why" when it did not, "skip
 * NAME: why" when the host itself forbids it here (no such attack to stop). With --expect,
 * the exit status says whether every attack ended as expected: natively (the attacks
 * must work, proving each check can fail) and under kbox (each must be stopped).
 *   HOSTPID   a process outside the sandbox (signals, priority, limits, affinity, pidfd)
 *   SHMID     a SysV shared memory segment outside it (readable by the caller)
 *   FD        an FD the caller left open on a host file
 *   HOSTPROG  a host program (not in the image) that prints ESCAPED
 *   HOSTFILE  a host file (not in the image) that holds KBOX-HOST-SECRET
 *   HOSTIF    a network interface of the host (its default route's)
 * kill(-1, SIGCONT) is tried too: the caller tells from HOSTPID whether it arrived.
 * Without --expect (the native check of every guest program), the program makes its own
 * targets (a child process, a segment, an FD) and expects every attack to be reached.
 * Also: clone/clone3/unshare creating namespaces, TIOCSTI into a terminal, the host's
 * interfaces reconfigured through a socket (SIOCSIFMTU on HOSTIF, or the loopback without
 * --expect, to the MTU it has, so a native run changes nothing), and the races of a second thread rewriting a path buffer during execve and openat. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef CLONE_NEWUSER
#define CLONE_NEWUSER 0x10000000
#endif

static int want_reached = 1;
static int unexpected;

static void outcome(const char *name, int reached, const char *why)
{
    if (reached)
        printf("reached %s\n", name);
    else
        printf("stopped %s: %s\n", name, why);
    if (reached != want_reached)
        unexpected++;
    fflush(stdout);
}

static void skip(const char *name, const char *why)
{
    printf("skip %s: %s\n", name, why);
    fflush(stdout);
}

static void by_errno(const char *name, long ret)
{
    outcome(name, ret >= 0, ret >= 0 ? "" : strerror(errno));
}

/* ---- the execve and openat races ---- */

static char race_buf[PATH_MAX];
static char race_a[PATH_MAX], race_b[PATH_MAX];
static volatile int race_stop;

static volatile int flipping;

static void *flipper(void *arg)
{
    (void)arg;
    flipping = 1;
    while (!race_stop) {
        memcpy(race_buf, race_a, sizeof race_buf);
        memcpy(race_buf, race_b, sizeof race_buf);
    }
    return NULL;
}

/* One child races execve of race_buf (flipping between /bin/true and HOSTPROG); returns 1
 * if HOSTPROG ran (its exit status 42). */
static int exec_race_once(void)
{
    pid_t pid = fork();
    if (pid == 0) {
        memcpy(race_buf, race_a, sizeof race_buf);
        flipping = 0;
        pthread_t t;
        pthread_create(&t, NULL, flipper, NULL);
        /* Race only once the other thread is rewriting the buffer. */
        while (!flipping)
            ;
        char *argv[] = {race_buf, NULL};
        for (int i = 0; i < 1000; i++)
            syscall(SYS_execve, race_buf, argv, environ);
        _exit(3);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) && WEXITSTATUS(st) == 42;
}

/* 100 races, or as many as fit in 3 s past the tenth: an emulated machine (make check-vm
 * under TCG) runs each ten times slower, and natively 100 fit. */
static void exec_race(const char *hostprog)
{
    snprintf(race_a, sizeof race_a, "/bin/true");
    snprintf(race_b, sizeof race_b, "%s", hostprog);
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    int i;
    for (i = 0; i < 100; i++) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (i >= 10 && now.tv_sec - start.tv_sec >= 3)
            break;
        if (exec_race_once()) {
            outcome("execve-path-race", 1, "");
            return;
        }
    }
    char why[64];
    snprintf(why, sizeof why, "the host program never ran in %d races", i);
    outcome("execve-path-race", 0, why);
}

static void open_race(const char *hostfile, const char *secret)
{
    snprintf(race_a, sizeof race_a, "/etc/hostname");
    snprintf(race_b, sizeof race_b, "%s", hostfile);
    race_stop = 0;
    flipping = 0;
    pthread_t t;
    pthread_create(&t, NULL, flipper, NULL);
    /* Race only once the other thread is rewriting the buffer, and for long enough that a
     * busy machine still gives it time on a CPU (20000 tries alone once missed natively).
     * Where the race must be lost (under kbox, which reads the path once) 3 s is the bound:
     * an emulated machine (make check-vm) takes a minute for 20000 served opens. */
    long least = want_reached ? 20000 : 2000;
    while (!flipping)
        ;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    int reached = 0;
    for (long i = 0; !reached; i++) {
        if (i % 1000 == 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (i >= least && now.tv_sec - start.tv_sec >= 3)
                break;
        }
        int fd = (int)syscall(SYS_openat, AT_FDCWD, race_buf, O_RDONLY);
        if (fd < 0)
            continue;
        char buf[256] = {0};
        if (read(fd, buf, sizeof buf - 1) > 0 && strstr(buf, secret))
            reached = 1;
        close(fd);
    }
    race_stop = 1;
    pthread_join(t, NULL);
    outcome("openat-path-race", reached, "the host file never opened in 3 s of races");
}

/* ---- the rest ---- */

static void namespaces(void)
{
    long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0)
        _exit(0);
    if (pid > 0)
        waitpid((pid_t)pid, NULL, 0);
    by_errno("clone-CLONE_NEWUSER", pid);
#ifdef SYS_clone3
    struct {
        unsigned long long flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size,
            tls;
    } args = {.flags = CLONE_NEWUSER, .exit_signal = SIGCHLD};
    pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid == 0)
        _exit(0);
    if (pid > 0)
        waitpid((pid_t)pid, NULL, 0);
    by_errno("clone3-CLONE_NEWUSER", pid);
#endif
    pid = fork();
    if (pid == 0)
        _exit(unshare(CLONE_NEWUSER) == 0 ? 0 : 1);
    int st = 1;
    waitpid((pid_t)pid, &st, 0);
    outcome("unshare-CLONE_NEWUSER", WIFEXITED(st) && WEXITSTATUS(st) == 0, "refused");
}

static void terminal_injection(void)
{
    char c = 'x';
    if (isatty(0)) {
        /* The terminal the guest was started on: the user's. */
        by_errno("TIOCSTI", ioctl(0, TIOCSTI, &c));
        return;
    }
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    if (m < 0 || grantpt(m) != 0 || unlockpt(m) != 0) {
        skip("TIOCSTI", "no pseudo-terminal here");
        return;
    }
    int s = open(ptsname(m), O_RDWR | O_NOCTTY);
    if (s < 0) {
        skip("TIOCSTI", "cannot open the pty's slave");
        close(m);
        return;
    }
    long r = ioctl(s, TIOCSTI, &c);
    if (r != 0 && want_reached && (errno == EIO || errno == EPERM))
        skip("TIOCSTI", "the host forbids it here (dev.tty.legacy_tiocsti, no CAP_SYS_ADMIN)");
    else
        by_errno("TIOCSTI", r);
    close(s);
    close(m);
}

/*
 * The host's network configuration through a socket's ioctls: setting a host interface's
 * MTU to the value it already has needs CAP_NET_ADMIN on the host, which a guest must not
 * have even when kbox runs as root; nor should it see the host's interfaces at all unless
 * its sockets are the host's (--net=host).
 */
static void host_interface(const char *name)
{
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0) {
        skip("SIOCSIFMTU-host", "no socket");
        return;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", name);
    if (ioctl(s, SIOCGIFMTU, &ifr) != 0) {
        outcome("SIOCSIFMTU-host", 0, strerror(errno));
    } else {
        by_errno("SIOCSIFMTU-host", ioctl(s, SIOCSIFMTU, &ifr));
    }
    close(s);
}

static void on_process(pid_t target)
{
    by_errno("setpriority", setpriority(PRIO_PROCESS, (id_t)target, 19));
    struct rlimit lim = {64, 64};
    by_errno("prlimit64", syscall(SYS_prlimit64, target, RLIMIT_NOFILE, &lim, NULL));
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(0, &set);
    by_errno("sched_setaffinity", sched_setaffinity(target, sizeof set, &set));
#ifdef SYS_pidfd_open
    long pidfd = syscall(SYS_pidfd_open, target, 0);
    by_errno("pidfd_open", pidfd);
    if (pidfd >= 0)
        close((int)pidfd);
#endif
    by_errno("kill-SIGKILL", kill(target, SIGKILL));
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: escape WORKDIR [--expect reached|stopped HOSTPID SHMID FD "
                        "HOSTPROG HOSTFILE HOSTIF]\n");
        return 2;
    }
    if (argc == 10 && strcmp(argv[2], "--expect") == 0) {
        want_reached = strcmp(argv[3], "reached") == 0;
        pid_t target = (pid_t)atoi(argv[4]);
        int shmid = atoi(argv[5]);
        int fd = atoi(argv[6]);
        struct shmid_ds ds;
        by_errno("kill-minus-1-SIGCONT", kill(-1, SIGCONT));
        /* Time for the target to note the signal before it may be killed below. */
        usleep(500000);
        on_process(target);
        by_errno("shmctl-host-segment", shmctl(shmid, IPC_STAT, &ds));
        char buf[16];
        by_errno("read-inherited-fd", read(fd, buf, sizeof buf));
        namespaces();
        terminal_injection();
        host_interface(argv[9]);
        exec_race(argv[7]);
        open_race(argv[8], "KBOX-HOST-SECRET");
        printf("escape: %d unexpected\n", unexpected);
        return unexpected ? 1 : 0;
    }
    /* The native check of every guest program: targets of our own, every attack reached
     * (except the races and kill -1, which need targets outside). */
    pid_t target = fork();
    if (target == 0) {
        pause();
        _exit(0);
    }
    int id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
    char own_file[PATH_MAX];
    snprintf(own_file, sizeof own_file, "%s/escape-fd", argv[1]);
    int fd = open(own_file, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (id < 0 || fd < 0 || write(fd, "host data\n", 10) != 10) {
        perror("setup");
        return 1;
    }
    lseek(fd, 0, SEEK_SET);
    on_process(target);
    waitpid(target, NULL, 0);
    struct shmid_ds ds;
    by_errno("shmctl-host-segment", shmctl(id, IPC_STAT, &ds));
    shmctl(id, IPC_RMID, NULL);
    char buf[16];
    by_errno("read-inherited-fd", read(fd, buf, sizeof buf));
    close(fd);
    unlink(own_file);
    namespaces();
    terminal_injection();
    host_interface("lo");
    printf("escape: %d unexpected\n", unexpected);
    return unexpected ? 1 : 0;
}

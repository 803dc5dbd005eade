/* altstack WORKDIR: a signal handler on an alternate stack (SA_ONSTACK, as CPython installs
 * every handler, and faulthandler gives them a stack) interrupts a blocked call, makes
 * calls of its own and returns, several times over, in a forked child and in the first
 * process; then signals the process sends itself (raise, kill) run it while the sending
 * call is still being made; and a program it execs starts without the alternate stack. The blocked call is a read on a socket pair, which kbox serves (not the host):
 * kbox is then waiting on the guest's behalf while the handler's calls come in, and must not
 * serve them over its own frames of the waiting call. The read is restarted (SA_RESTART)
 * and gets the byte written after the signals. The alternate stack the program set is the
 * one sigaltstack reports afterwards, and the one its handler runs on (the trap tier once
 * lost it when the call that set it returned).
 * Guest test convention: exit 0 means pass. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

static volatile sig_atomic_t handled;
static char stack_area[64 * 1024];
/* Handler runs that were not on stack_area. */
static volatile sig_atomic_t off_stack;

static void handler(int sig)
{
    (void)sig;
    char here;
    if (&here < stack_area || &here >= stack_area + sizeof stack_area)
        off_stack++;
    struct stat st;
    /* Calls of several kinds from the handler: one kbox serves, one the host runs, one
     * kbox checks and then makes on the host the guest's way (a signal may come during
     * it: it must not start at this stack's top, over this handler). */
    if (stat("/", &st) == 0 && getpid() > 0 && kill(getpid(), 0) == 0)
        handled++;
}

static volatile sig_atomic_t ticks;

/* The timer's: no calls, so that a slow machine (qemu's TCG) still gets through the storm;
 * with a handler that makes calls, every tick found the next one pending. */
static void tick(int sig)
{
    (void)sig;
    ticks++;
}

static void pause_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Blocks in a read on sv[0] while the other side signals `target` `rounds` times, then
 * writes one byte. Returns 0 when the read got it and every signal was handled. */
static int blocked_reader(int sv[2], int rounds)
{
    stack_t ss = {.ss_sp = stack_area, .ss_size = sizeof stack_area, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0)
        return 10;
    struct sigaction sa = {.sa_handler = handler, .sa_flags = SA_ONSTACK | SA_RESTART};
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) != 0)
        return 11;
    stack_t now;
    if (sigaltstack(NULL, &now) != 0 || now.ss_sp != stack_area ||
        now.ss_size != sizeof stack_area || now.ss_flags != 0)
        return 14;
    off_stack = 0;
    char c = 0;
    ssize_t n = read(sv[0], &c, 1);
    if (n != 1 || c != 'x')
        return 12;
    if (off_stack != 0)
        return 15;
    return handled == rounds ? 0 : 13;
}

static void signaller(pid_t target, int fd, int rounds)
{
    for (int i = 0; i < rounds; i++) {
        pause_ms(50);
        kill(target, SIGUSR1);
    }
    pause_ms(50);
    (void)write(fd, "x", 1);
}

/* The program exec'd by a process with an alternate stack: execve clears it. */
static int after_exec(void)
{
    stack_t old;
    if (sigaltstack(NULL, &old) != 0 || !(old.ss_flags & SS_DISABLE))
        return 20;
    struct sigaction sa = {.sa_handler = handler, .sa_flags = SA_ONSTACK};
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) != 0)
        return 21;
    raise(SIGUSR1);
    return handled == 1 ? 0 : 22;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--after-exec") == 0)
        return after_exec();
    const int rounds = 5;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        check(0, "socketpair", "errno %ld%ld", errno, 0);
        return 1;
    }
    /* A forked child blocks; the parent signals it. */
    pid_t child = fork();
    if (child == 0)
        _exit(blocked_reader(sv, rounds));
    signaller(child, sv[1], rounds);
    int st = -1;
    while (waitpid(child, &st, 0) < 0 && errno == EINTR)
        ;
    check(child > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "forked child's blocked read",
          "status %#lx (10-15: a step failed; a signal: it crashed)%ld", st, 0);
    /* The first process blocks; a child signals it. */
    pid_t parent = getpid();
    pid_t helper = fork();
    if (helper == 0) {
        signaller(parent, sv[1], rounds);
        _exit(0);
    }
    handled = 0;
    int r = blocked_reader(sv, rounds);
    check(r == 0, "first process's blocked read", "step %ld%ld", r, 0);
    while (waitpid(helper, &st, 0) < 0 && errno == EINTR)
        ;
    /* A signal sent to itself is delivered while the sending call is made (kbox lets the
     * host make kill and tgkill once it has checked the target): the handler's calls come
     * in while kbox is still in that call. */
    handled = 0;
    for (int i = 0; i < 20; i++) {
        raise(SIGUSR1);
        kill(getpid(), SIGUSR1);
    }
    check(handled == 40, "signals sent to itself", "handled %ld of %ld", handled, 40);
    /* kill is never interrupted natively, even with signals arriving all the while (an
     * interval timer's, whose handler has no SA_RESTART): CPython's test_signal stress test
     * got EINTR from kill once kbox served it. */
    struct sigaction alrm = {.sa_handler = tick, .sa_flags = SA_ONSTACK};
    sigemptyset(&alrm.sa_mask);
    sigaction(SIGALRM, &alrm, NULL);
    struct itimerval every = {{0, 500}, {0, 500}};
    setitimer(ITIMER_REAL, &every, NULL);
    long kill_failed = 0, kill_errno = 0;
    for (int i = 0; i < 3000; i++)
        if (kill(getpid(), SIGUSR1) != 0) {
            kill_failed++;
            kill_errno = errno;
        }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    check(kill_failed == 0, "kill under a storm of timer signals",
          "%ld kills failed, errno %ld", kill_failed, kill_errno);
    /* This process has an alternate stack (blocked_reader set it): a program it execs
     * starts without one. */
    pid_t execd = fork();
    if (execd == 0) {
        char *args[] = {argv[0], "--after-exec", NULL};
        execv(argv[0], args);
        _exit(127);
    }
    while (waitpid(execd, &st, 0) < 0 && errno == EINTR)
        ;
    check(execd > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "exec clears the alternate stack",
          "status %#lx (20: still set, 21-22: a step failed; a signal: it crashed)%ld", st, 0);
    return failures != 0;
}

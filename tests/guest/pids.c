/* pids.c WORKDIR: a process's pids and its /proc agree, as on Linux.
 *
 * getpid, getppid and gettid against /proc/self, /proc/thread-self, /proc/self/status and
 * /proc/self/stat (whose other fields are the real process's: SigIgn); the same in a forked child, in a program it execs, and in an orphan
 * after its parent exits; a parent sees its child's /proc entry (its parent pid, its name
 * inherited over fork) and finds it listed in /proc. Under kbox the guest's /proc is the
 * kernel library's, so this holds only if that kernel knows each guest process by the pid
 * the guest has. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

/* The number field `key` of /proc/PID/status (PID 0: self), or -1. */
static long status_field(pid_t pid, const char *key)
{
    char path[64], line[256];
    long value = -1;
    size_t n = strlen(key);

    if (pid)
        snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    else
        snprintf(path, sizeof(path), "/proc/self/status");
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, key, n) == 0 && line[n] == ':') {
            value = strtol(line + n + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return value;
}

/* /proc/self/stat's pid (field 1) and ppid (field 4); the name in parentheses may hold
 * spaces, so fields are counted from its closing parenthesis. */
static int stat_ids(long *pid, long *ppid)
{
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    char *close = strrchr(buf, ')');
    if (!close)
        return -1;
    *pid = strtol(buf, NULL, 10);
    char state;
    return sscanf(close + 1, " %c %ld", &state, ppid) == 2 ? 0 : -1;
}

static long link_number(const char *path)
{
    char buf[128];
    ssize_t n = readlink(path, buf, sizeof(buf) - 1);
    if (n < 0)
        return -1;
    buf[n] = 0;
    return strtol(buf, NULL, 10);
}

/* The checks every process makes of itself, named after `who`; returns how many failed. */
static int self_checks(const char *who)
{
    int before = failures;
    char name[96];
    long pid = getpid(), ppid = getppid(), tid = syscall(SYS_gettid);

    snprintf(name, sizeof(name), "%s: /proc/self is getpid", who);
    check(link_number("/proc/self") == pid, name, "readlink gave %ld, getpid %ld",
          link_number("/proc/self"), pid);

    char want[64], got[64] = "";
    snprintf(want, sizeof(want), "%ld/task/%ld", pid, tid);
    ssize_t n = readlink("/proc/thread-self", got, sizeof(got) - 1);
    if (n >= 0)
        got[n] = 0;
    snprintf(name, sizeof(name), "%s: /proc/thread-self is pid/task/tid", who);
    check(strcmp(got, want) == 0, name, "got %ld chars, tid %ld", (long)n, tid);

    snprintf(name, sizeof(name), "%s: status Pid is getpid", who);
    check(status_field(0, "Pid") == pid, name, "Pid %ld, getpid %ld", status_field(0, "Pid"),
          pid);
    snprintf(name, sizeof(name), "%s: status PPid is getppid", who);
    check(status_field(0, "PPid") == ppid, name, "PPid %ld, getppid %ld",
          status_field(0, "PPid"), ppid);

    long spid = -1, sppid = -1;
    int rc = stat_ids(&spid, &sppid);
    snprintf(name, sizeof(name), "%s: stat's pid and ppid", who);
    check(rc == 0 && spid == pid && sppid == ppid, name, "stat pid %ld ppid %ld", spid, sppid);
    return failures - before;
}

static int listed_in_proc(pid_t pid)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    int found = 0;
    if (!d)
        return 0;
    while ((e = readdir(d)))
        if (strtol(e->d_name, NULL, 10) == pid)
            found = 1;
    closedir(d);
    return found;
}

static void read_comm(pid_t pid, char *out, size_t size)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
    out[0] = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    if (fgets(out, (int)size, f))
        out[strcspn(out, "\n")] = 0;
    fclose(f);
}

static char self_path[4096];

int main(int argc, char **argv)
{
    ssize_t len_self = readlink("/proc/self/exe", self_path, sizeof(self_path) - 1);
    if (len_self <= 0)
        return 2;
    self_path[len_self] = 0;
    if (argc > 1 && strcmp(argv[1], "--exec-check") == 0) {
        /* The program a forked child exec'd: its name is the program's. */
        char comm[32];
        read_comm(getpid(), comm, sizeof(comm));
        check(strcmp(comm, "pids") == 0, "exec'd: comm is the program's", "got %ld chars%ld",
              (long)strlen(comm), 0);
        self_checks("exec'd");
        return failures ? 1 : 0;
    }
    if (argc > 1 && strcmp(argv[1], "--orphan-check") == 0) {
        /* Started by a child that exits at once: wait until the reparenting shows. */
        pid_t old = (pid_t)strtol(argv[2], NULL, 10);
        for (int i = 0; i < 500 && getppid() == old; i++)
            usleep(10000);
        check(getppid() != old, "orphan: reparented", "ppid still %ld%ld", (long)old, 0);
        self_checks("orphan");
        return failures ? 1 : 0;
    }

    self_checks("self");

    /* The rest of status is the real process's: an ignored signal shows in SigIgn. */
    signal(SIGUSR1, SIG_IGN);
    char line[256];
    unsigned long long ign = 0;
    FILE *status = fopen("/proc/self/status", "r");
    while (status && fgets(line, sizeof(line), status))
        if (strncmp(line, "SigIgn:", 7) == 0)
            ign = strtoull(line + 7, NULL, 16);
    if (status)
        fclose(status);
    check(ign & (1ULL << (SIGUSR1 - 1)), "self: status SigIgn has an ignored signal",
          "SigIgn %lx%ld", (long)ign, 0);
    signal(SIGUSR1, SIG_DFL);

    /* A forked child, held alive on a pipe while the parent looks at it. */
    int hold[2], done[2];
    if (pipe(hold) || pipe(done))
        return 2;
    pid_t kid = fork();
    if (kid == 0) {
        char c;
        close(hold[1]);
        close(done[0]);
        int bad = self_checks("child");
        if (write(done[1], "x", 1) != 1)
            _exit(3);
        if (read(hold[0], &c, 1) < 0)
            _exit(3);
        _exit(bad ? 1 : 0);
    }
    close(hold[0]);
    close(done[1]);
    char c;
    check(read(done[0], &c, 1) == 1, "child: made its checks", "%ld%ld", 0, 0);
    check(status_field(kid, "PPid") == getpid(), "parent: child's PPid is the parent",
          "PPid %ld, parent %ld", status_field(kid, "PPid"), (long)getpid());
    check(status_field(kid, "Pid") == kid, "parent: /proc/CHILD is the child", "Pid %ld, want %ld",
          status_field(kid, "Pid"), (long)kid);
    char mine[32], theirs[32];
    read_comm(getpid(), mine, sizeof(mine));
    read_comm(kid, theirs, sizeof(theirs));
    check(mine[0] && strcmp(mine, theirs) == 0, "parent: child's name inherited over fork",
          "lengths %ld and %ld", (long)strlen(mine), (long)strlen(theirs));
    check(listed_in_proc(getpid()) && listed_in_proc(kid), "parent: both listed in /proc",
          "self %ld, child %ld", listed_in_proc(getpid()), listed_in_proc(kid));
    close(hold[1]);
    int st = 0;
    waitpid(kid, &st, 0);
    check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child: exited 0", "status %ld%ld", st, 0);

    /* A /proc/PID directory FD is a pidfd to Linux: a signal sent through it arrives. */
    int ready[2];
    if (pipe(ready))
        return 2;
    kid = fork();
    if (kid == 0) {
        /* A call kbox serves first: a process kbox has not met has no /proc entry yet. */
        char cwd[256];
        if (!getcwd(cwd, sizeof(cwd)) || write(ready[1], "r", 1) != 1)
            _exit(3);
        pause();
        _exit(0);
    }
    close(ready[1]);
    if (read(ready[0], &c, 1) != 1)
        return 2;
    close(ready[0]);
    char dir[64];
    snprintf(dir, sizeof(dir), "/proc/%d", (int)kid);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    long sent = dfd < 0 ? -1 : syscall(SYS_pidfd_send_signal, dfd, SIGTERM, NULL, 0);
    if (sent != 0)
        kill(kid, SIGKILL);
    waitpid(kid, &st, 0);
    check(sent == 0 && WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM,
          "parent: pidfd_send_signal through /proc/CHILD", "sent %ld, status %ld", sent, st);
    if (dfd >= 0)
        close(dfd);

    /* A child that execs this program. */
    kid = fork();
    if (kid == 0) {
        execl(self_path, "pids", "--exec-check", (char *)NULL);
        _exit(127);
    }
    waitpid(kid, &st, 0);
    check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exec'd: exited 0", "status %ld%ld", st, 0);

    /* An orphan: a child starts the check and exits; its output comes through the pipe. */
    int out[2];
    if (pipe(out))
        return 2;
    kid = fork();
    if (kid == 0) {
        char me[16];
        snprintf(me, sizeof(me), "%d", (int)getpid());
        if (fork() == 0) {
            dup2(out[1], 1);
            close(out[0]);
            close(out[1]);
            execl(self_path, "pids", "--orphan-check", me, (char *)NULL);
            _exit(127);
        }
        _exit(0);
    }
    close(out[1]);
    waitpid(kid, &st, 0);
    char text[4096];
    size_t len = 0;
    ssize_t n;
    while (len < sizeof(text) - 1 && (n = read(out[0], text + len, sizeof(text) - 1 - len)) > 0)
        len += (size_t)n;
    text[len] = 0;
    fputs(text, stdout);
    fflush(stdout);
    if (strstr(text, "FAIL") || !strstr(text, "ok orphan: stat"))
        failures++;

    printf(failures ? "FAIL pids: %d failed\n" : "ok pids%.0d\n", failures);
    return failures ? 1 : 0;
}

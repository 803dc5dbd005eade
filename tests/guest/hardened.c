/* hardened WORKDIR | hardened --run COMMAND [ARGS...]
 * Makes this process (and what it runs) a guest of a hardened host: chroot, unshare, setns
 * and clone with a namespace flag fail with EPERM (no privilege to chroot, no user or other
 * namespaces), clone3 with ENOSYS, through a seccomp filter of its own, as such hosts do. `--run` then execs COMMAND (kbox, to test its
 * fallback); with WORKDIR alone it checks that the filter works (the native check). */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define DENY(nr) \
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1), \
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM)

/* CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME */
#define CLONE_NEW_ANY 0x7e020080u

static int harden(void)
{
    struct sock_filter insns[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        DENY(SYS_chroot),
        DENY(SYS_unshare),
        DENY(SYS_setns),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone3, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_NEW_ANY, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof insns / sizeof insns[0], insns};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: hardened WORKDIR | hardened --run COMMAND [ARGS...]\n");
        return 2;
    }
    if (harden() != 0) {
        perror("hardened: seccomp");
        return 1;
    }
    if (strcmp(argv[1], "--run") == 0 && argc > 2) {
        execvp(argv[2], argv + 2);
        perror(argv[2]);
        return 127;
    }
    int fails = 0;
    if (chroot("/") == 0 || errno != EPERM) {
        printf("FAIL chroot is not refused\n");
        fails++;
    }
    if (unshare(CLONE_NEWUSER) == 0 || errno != EPERM) {
        printf("FAIL unshare is not refused\n");
        fails++;
    }
    if (syscall(SYS_clone, CLONE_NEWPID | SIGCHLD, 0, 0, 0, 0) != -1 || errno != EPERM) {
        printf("FAIL clone(CLONE_NEWPID) is not refused\n");
        fails++;
    }
    if (getpid() <= 0) {
        printf("FAIL other calls broke\n");
        fails++;
    }
    printf("%s hardened: chroot, unshare and namespace clones refused with EPERM\n",
           fails ? "FAIL" : "ok");
    return fails ? 1 : 0;
}

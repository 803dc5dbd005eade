/* denied WORKDIR [expect-eperm]: calls every syscall kbox's filter refuses, each with
 * arguments that make it harmless natively (bad pointers, bad commands, a pid that does not
 * exist). Natively it only checks that none of them succeeds where that would change the
 * machine. With "expect-eperm" (how kbox's tests run it) every call must fail with EPERM,
 * the filter's answer, and not with the errno the real call would give. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

struct call {
    const char *name;
    long nr;
    long a[6];
};

static const struct call calls[] = {
    {"ptrace", SYS_ptrace, {2 /* PEEKDATA */, 0x7ffffff0, 0, 0}},
    {"bpf", SYS_bpf, {0x7fff, 0, 0}},
    {"init_module", SYS_init_module, {0, 0, 0}},
    {"finit_module", SYS_finit_module, {-1, 0, 0}},
    {"delete_module", SYS_delete_module, {0, 0}},
    {"kexec_load", SYS_kexec_load, {0, 0, 0, 0xdead}},
    {"perf_event_open", SYS_perf_event_open, {0, 0, -1, -1, 0}},
    {"keyctl", SYS_keyctl, {0x7fff, 0, 0, 0, 0}},
    {"add_key", SYS_add_key, {0, 0, 0, 0, 0}},
    {"io_uring_setup", SYS_io_uring_setup, {0, 0}},
    {"fsopen", SYS_fsopen, {0, 0}},
    {"open_tree", SYS_open_tree, {-1, 0, 0}},
    {"move_mount", SYS_move_mount, {-1, 0, -1, 0, 0}},
    {"pivot_root", SYS_pivot_root, {0, 0}},
    {"process_vm_readv", SYS_process_vm_readv, {0x7ffffff0, 0, 0, 0, 0, 0}},
    {"process_vm_writev", SYS_process_vm_writev, {0x7ffffff0, 0, 0, 0, 0, 0}},
    {"userfaultfd", SYS_userfaultfd, {-1}},
    {"setns", SYS_setns, {-1, 0}},
    {"unshare", SYS_unshare, {0}},
    {"reboot", SYS_reboot, {0, 0, 0, 0}},
};

int main(int argc, char **argv)
{
    int expect_eperm = argc > 2 && strcmp(argv[2], "expect-eperm") == 0;
    int failures = 0;
    for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++) {
        const struct call *c = &calls[i];
        errno = 0;
        long r = syscall(c->nr, c->a[0], c->a[1], c->a[2], c->a[3], c->a[4], c->a[5]);
        int e = errno;
        if (expect_eperm) {
            if (r == -1 && e == EPERM) {
                printf("ok %s: EPERM\n", c->name);
            } else {
                printf("FAIL %s: returned %ld errno %d (%s), want EPERM\n", c->name, r, e,
                       strerror(e));
                failures++;
            }
        } else if (r >= 0 && c->nr != SYS_unshare && c->nr != SYS_process_vm_readv &&
                   c->nr != SYS_process_vm_writev) {
            /* unshare(0) and process_vm_*v with no iovecs are no-ops natively; everything
             * else must have been refused. */
            printf("FAIL %s: succeeded natively (%ld)\n", c->name, r);
            failures++;
        } else {
            printf("ok %s: %s\n", c->name, r < 0 ? strerror(e) : "no-op");
        }
    }
    printf("denied: %d failure(s)\n", failures);
    return failures != 0;
}

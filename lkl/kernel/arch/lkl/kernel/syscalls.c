// SPDX-License-Identifier: GPL-2.0
/*
 * The syscall table: asm-generic numbers (scripts/syscall.tbl, ABIs common, 64, rlimit,
 * renameat), each entry called with six longs. Without ARCH_HAS_SYSCALL_WRAPPER every
 * sys_* is an alias of a function taking six longs, so the call is exact.
 */
#include <linux/syscalls.h>
#include <linux/mman.h>
#include <linux/errno.h>
#include <asm/unistd.h>
#include <asm/syscall_api.h>

typedef long (*syscall_fn_t)(long, long, long, long, long, long);

SYSCALL_DEFINE6(mmap, unsigned long, addr, unsigned long, len, unsigned long, prot,
		unsigned long, flags, unsigned long, fd, off_t, off)
{
	if (off & ~PAGE_MASK)
		return -EINVAL;
	return ksys_mmap_pgoff(addr, len, prot, flags, fd, off >> PAGE_SHIFT);
}

/* Library tasks never return to user mode from a signal handler. */
SYSCALL_DEFINE0(rt_sigreturn)
{
	return -ENOSYS;
}

#undef __SYSCALL
#define __SYSCALL(nr, call) [nr] = (syscall_fn_t)(call),
/* No compat ABI: the native entry serves. */
#define __SYSCALL_WITH_COMPAT(nr, native, compat) __SYSCALL(nr, native)

static const syscall_fn_t syscall_table[__NR_syscalls] = {
	[0 ... __NR_syscalls - 1] = (syscall_fn_t)sys_ni_syscall,
#include <asm/syscall_table_64.h>
};

long lkl_syscall_dispatch(long no, long *params)
{
	if (no < 0 || no >= __NR_syscalls)
		return -ENOSYS;
	return syscall_table[no](params[0], params[1], params[2], params[3], params[4],
				 params[5]);
}

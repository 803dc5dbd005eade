/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _ASM_LKL_SYSCALL_API_H
#define _ASM_LKL_SYSCALL_API_H

/* Run syscall @no of the asm-generic table with six arguments, as current. */
long lkl_syscall_dispatch(long no, long *params);

#endif

/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
#ifndef _UAPI_ASM_LKL_PTRACE_H
#define _UAPI_ASM_LKL_PTRACE_H
/* Library tasks have no user register file; ptrace is refused. */
#endif

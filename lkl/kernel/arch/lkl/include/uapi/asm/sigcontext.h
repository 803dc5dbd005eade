/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
#ifndef _UAPI_ASM_LKL_SIGCONTEXT_H
#define _UAPI_ASM_LKL_SIGCONTEXT_H
/* Signals are never delivered to library tasks' user mode; the frame is a placeholder. */
struct sigcontext {
	unsigned long sc_unused;
};
#endif

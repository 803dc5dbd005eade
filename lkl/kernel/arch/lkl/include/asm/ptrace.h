/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _ASM_LKL_PTRACE_H
#define _ASM_LKL_PTRACE_H

#include <uapi/asm/ptrace.h>

#ifndef __ASSEMBLY__
/* Library tasks never run user code, so their user register file is empty. */
struct pt_regs {
	/* An interrupt arrived while the CPU was free: the task was in user mode. */
	int user;
};

#define user_mode(regs)			((regs)->user)
#define instruction_pointer(regs)	(0UL)
#define user_stack_pointer(regs)	(0UL)
#define profile_pc(regs)		instruction_pointer(regs)
#define current_pt_regs()		task_pt_regs(current)
#define signal_pt_regs()		task_pt_regs(current)

static inline long regs_return_value(struct pt_regs *regs)
{
	return 0;
}
#endif

#endif

/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _ASM_LKL_PROCESSOR_H
#define _ASM_LKL_PROCESSOR_H

#ifndef __ASSEMBLY__
#include <linux/types.h>
#include <asm/ptrace.h>

struct task_struct;
struct lkl_hthread;

struct thread_struct {
	/*
	 * The host thread this task runs on while it is inside the kernel, or NULL when the
	 * task is "detached": the idle task after boot, and host tasks whose caller is
	 * outside the kernel (the library's user mode).
	 */
	struct lkl_hthread *ht;
	/* Host tasks are created for callers (guest processes), not for kernel code. */
	bool host_task;
	/* A kernel thread's entry point, run on its own host thread. */
	int (*fn)(void *);
	void *fn_arg;
	/* What generic code reads as the task's user registers. */
	struct pt_regs regs;
};

#define INIT_THREAD { .ht = NULL }

#define task_pt_regs(tsk)	(&(tsk)->thread.regs)
#define KSTK_EIP(tsk)		(0UL)
#define KSTK_ESP(tsk)		(0UL)

/* No MMU: no user/kernel split to police. */
#define TASK_SIZE		(~0UL)
#define TASK_UNMAPPED_BASE	0UL
#define STACK_TOP		TASK_SIZE
#define STACK_TOP_MAX		STACK_TOP

static inline void cpu_relax(void)
{
	__asm__ __volatile__("" ::: "memory");
}

struct pt_regs;
unsigned long __get_wchan(struct task_struct *p);
void start_thread(struct pt_regs *regs, unsigned long pc, unsigned long sp);

#define prepare_to_copy(tsk)	do { } while (0)

#endif /* __ASSEMBLY__ */
#endif

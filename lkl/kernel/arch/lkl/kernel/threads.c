// SPDX-License-Identifier: GPL-2.0
/*
 * Tasks as host threads.
 *
 * Kernel threads (and pid 1) get a host thread of their own, created by copy_thread()
 * and parked on a semaphore until the scheduler first switches to them. Host tasks (the
 * kernel-side mirrors of guest processes and of caller threads) get no thread: they run
 * on whichever caller thread enters the kernel as them (see host_task.c).
 *
 * A task is "attached" while thread.ht names the host thread that runs it, and
 * "detached" otherwise. __switch_to() is executed by the thread holding the CPU, which
 * is either prev's own thread (the owner) or a thread borrowing a detached prev.
 */
#include <linux/sched.h>
#include <linux/sched/task.h>
#include <linux/sched/task_stack.h>
#include <linux/sched/idle.h>
#include <linux/ptrace.h>
#include <asm/host_ops.h>

struct task_struct *lkl_current = &init_task;
struct task_struct *lkl_switch_prev;

static void hthread_free(struct lkl_hthread *ht)
{
	lkl_ops->sem_free(ht->sem);
	lkl_ops->mem_free(ht);
}

struct task_struct *__switch_to(struct task_struct *prev, struct task_struct *next)
{
	struct lkl_hthread *self = lkl_cpu_owner;
	struct lkl_hthread *next_ht = next->thread.ht;
	bool owner = prev->thread.ht == self;
	bool prev_dead = READ_ONCE(prev->__state) == TASK_DEAD;
	bool prev_host_task = prev->thread.host_task;

	lkl_current = next;
	lkl_switch_prev = prev;
	if (owner && prev_dead)
		prev->thread.ht = NULL;

	/* This thread was waiting to run as next: it simply carries on. */
	if (next_ht == self)
		return prev;

	if (next_ht) {
		/* next's thread is parked in its own __switch_to: the CPU passes to it. */
		lkl_cpu_owner = next_ht;
		lkl_ops->sem_up(next_ht->sem);
	} else if (!owner) {
		/* A borrower completes a switch into a detached task itself. */
		return prev;
	} else {
		lkl_cpu_set_pending_tail(prev);
		lkl_cpu_release();
	}

	/* From here on this thread does not hold the CPU: touch nothing shared. */
	if (owner) {
		if (prev_dead) {
			if (prev_host_task)
				__builtin_longjmp(self->escape, 1);
			hthread_free(self);
			lkl_ops->thread_exit();
		}
		lkl_ops->sem_down(self->sem);
		return lkl_switch_prev;
	}
	if (self->want) {
		lkl_ops->sem_down(self->sem);
		return lkl_switch_prev;
	}
	__builtin_longjmp(self->escape, 1);
}

static void kthread_host_entry(void *arg)
{
	struct task_struct *p = arg;
	struct lkl_hthread *self = p->thread.ht;

	self->host_id = lkl_ops->thread_self();
	lkl_ops->sem_down(self->sem);
	schedule_tail(lkl_switch_prev);
	p->thread.fn(p->thread.fn_arg);
	/*
	 * Only a user-mode thread returns: pid 1 after its exec. It has no user code to
	 * go back to, so it stays in the kernel as the library's init.
	 */
	lkl_init_process();
}

int copy_thread(struct task_struct *p, const struct kernel_clone_args *args)
{
	struct lkl_hthread *ht;

	memset(&p->thread, 0, sizeof(p->thread));
	if (!args->fn) {
		/* A user clone: that is how the host-task API makes tasks for callers. */
		p->thread.host_task = true;
		return 0;
	}

	ht = lkl_ops->mem_alloc(sizeof(*ht));
	if (!ht)
		return -ENOMEM;
	memset(ht, 0, sizeof(*ht));
	ht->sem = lkl_ops->sem_alloc(0);
	if (!ht->sem) {
		lkl_ops->mem_free(ht);
		return -ENOMEM;
	}
	p->thread.fn = args->fn;
	p->thread.fn_arg = args->fn_arg;
	p->thread.ht = ht;
	if (!lkl_ops->thread_create(kthread_host_entry, p)) {
		p->thread.ht = NULL;
		hthread_free(ht);
		return -EAGAIN;
	}
	return 0;
}

/*
 * The boot thread reaches the idle loop once, when pid 1 and kthreadd first block.
 * From then on idle is detached for good: "running the idle task" means that no host
 * thread runs kernel code, so this thread gives the CPU back and ends.
 */
void arch_cpu_idle(void)
{
	struct lkl_hthread *self = lkl_cpu_owner;

	init_task.thread.ht = NULL;
	lkl_irq_enabled = ARCH_IRQ_ENABLED;
	lkl_cpu_release();
	hthread_free(self);
	lkl_ops->thread_exit();
}

void flush_thread(void)
{
}

void start_thread(struct pt_regs *regs, unsigned long pc, unsigned long sp)
{
}

unsigned long __get_wchan(struct task_struct *p)
{
	return 0;
}

// SPDX-License-Identifier: GPL-2.0
/*
 * The one CPU, as a token handed between host threads.
 *
 * A host thread may run kernel code only while it holds the token. It changes hands in
 * two ways: __switch_to() hands it straight to the thread of the task it switches to,
 * and lkl_cpu_take()/lkl_cpu_release() let threads from outside (syscall callers,
 * timer and device threads) wait for it when nobody is running. Whoever takes a free
 * CPU finds a *detached* task as current (the idle task, or a host task whose caller
 * is outside the kernel) and runs on its behalf until it switches to a task of its own.
 */
#include <linux/sched.h>
#include <linux/sched/task.h>
#include <linux/sched/stat.h>
#include <linux/interrupt.h>
#include <linux/irq.h>
#include <linux/hardirq.h>
#include <asm/irq_regs.h>
#include <asm/host_ops.h>

struct lkl_hthread *lkl_cpu_owner;
unsigned long lkl_irq_enabled;
unsigned long lkl_irq_pending;

static struct lkl_mutex *cpu_lock;
static struct lkl_sem *cpu_waitq;
static bool cpu_busy;
static int cpu_waiters;
/*
 * A switch into a detached task made by that task's previous owner: the owner parked
 * without finishing it, so the next thread to take the CPU runs schedule_tail() first.
 */
static struct task_struct *cpu_pending_tail;

void lkl_cpu_init(struct lkl_hthread *boot)
{
	cpu_lock = lkl_ops->mutex_alloc();
	cpu_waitq = lkl_ops->sem_alloc(0);
	cpu_busy = true;
	lkl_cpu_owner = boot;
}

void lkl_cpu_set_pending_tail(struct task_struct *prev)
{
	cpu_pending_tail = prev;
}

void lkl_cpu_take(struct lkl_hthread *self)
{
	struct task_struct *prev;

	lkl_ops->mutex_lock(cpu_lock);
	if (!cpu_busy) {
		cpu_busy = true;
		lkl_ops->mutex_unlock(cpu_lock);
	} else {
		cpu_waiters++;
		lkl_ops->mutex_unlock(cpu_lock);
		lkl_ops->sem_down(cpu_waitq);
	}
	lkl_cpu_owner = self;

	prev = cpu_pending_tail;
	if (prev) {
		cpu_pending_tail = NULL;
		schedule_tail(prev);
	}
}

void lkl_cpu_release(void)
{
	lkl_cpu_owner = NULL;
	lkl_ops->mutex_lock(cpu_lock);
	if (cpu_waiters) {
		/* The token passes directly: cpu_busy stays set for the waiter. */
		cpu_waiters--;
		lkl_ops->mutex_unlock(cpu_lock);
		lkl_ops->sem_up(cpu_waitq);
		return;
	}
	cpu_busy = false;
	lkl_ops->mutex_unlock(cpu_lock);
}

/*
 * Run every raised interrupt. @from_user says the CPU was free when they arrived (the
 * current task was in the library's user mode), which RCU and time accounting need.
 */
void lkl_deliver_irqs(bool from_user)
{
	struct pt_regs regs = { .user = from_user };
	unsigned long pending;
	int irq;

	lkl_irq_enabled = ARCH_IRQ_DISABLED;
	while ((pending = __atomic_exchange_n(&lkl_irq_pending, 0, __ATOMIC_SEQ_CST))) {
		struct pt_regs *old = set_irq_regs(&regs);

		irq_enter();
		for_each_set_bit(irq, &pending, NR_IRQS)
			generic_handle_irq(irq);
		irq_exit();
		set_irq_regs(old);
	}
	lkl_irq_enabled = ARCH_IRQ_ENABLED;
}

void lkl_irq_replay(void)
{
	lkl_deliver_irqs(false);
}

/*
 * Whether a task other than current waits for the CPU. A wake-up need not ask for a
 * reschedule (the scheduler may let current run on), which is right on a CPU current
 * keeps busy in user mode; but a library task in user mode leaves the CPU idle, so a
 * task left runnable would wait for the next tick (10 ms) for no reason.
 */
static bool others_runnable(void)
{
	unsigned int queued = nr_running();

	if (is_idle_task(current))
		return queued > 0;
	return queued > (READ_ONCE(current->on_rq) ? 1 : 0);
}

/*
 * A borrowing thread is done: let tasks its work woke run before the CPU goes back.
 * If schedule() hands the CPU to another thread, this thread leaves through its escape
 * buffer; if it continues as a detached task, it releases the CPU itself.
 */
void lkl_borrower_leave(struct lkl_hthread *self)
{
	self->want = NULL;
	while (need_resched() || others_runnable()) {
		/*
		 * A detached host task must not stay runnable behind this switch: with no
		 * thread to run it, the scheduler could pick it while others wait for the
		 * next interrupt. It sleeps; its caller wakes it on the next entry.
		 */
		if (current->thread.host_task && !current->thread.ht)
			set_current_state(TASK_IDLE);
		if (__builtin_setjmp(self->escape))
			return;
		schedule();
	}
	lkl_cpu_release();
}

/*
 * Raise interrupt @irq from any host thread (a timer or a device model). A thread that
 * already holds the CPU leaves it pending: the kernel runs it when it next enables
 * interrupts.
 */
void lkl_trigger_irq(int irq)
{
	struct lkl_hthread self = { .sem = NULL };
	unsigned long me = lkl_ops->thread_self();
	struct lkl_hthread *owner = READ_ONCE(lkl_cpu_owner);

	__atomic_or_fetch(&lkl_irq_pending, 1UL << irq, __ATOMIC_SEQ_CST);
	if (owner && owner->host_id == me)
		return;

	self.host_id = me;
	lkl_cpu_take(&self);
	if (__atomic_load_n(&lkl_irq_pending, __ATOMIC_RELAXED))
		lkl_deliver_irqs(current->thread.host_task);
	lkl_borrower_leave(&self);
}

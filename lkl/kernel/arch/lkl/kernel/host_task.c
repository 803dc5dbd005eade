// SPDX-License-Identifier: GPL-2.0
/*
 * Syscalls from host threads, run on the calling thread.
 *
 * A caller thread enters the kernel as a task: the task it was given (lkl_task_syscall)
 * or its own, created on its first lkl_syscall() as a sibling of the root host task
 * sharing its files and cwd. If that task is already current (the common case for a
 * single caller) nothing is switched at all; otherwise the caller wakes the task and
 * calls schedule() on behalf of the detached current task until its task comes up.
 * On the way out the task is detached again: it stays current, in the library's user
 * mode, until some other thread needs the CPU.
 */
#include <linux/sched.h>
#include <linux/sched/task.h>
#include <linux/sched/signal.h>
#include <linux/sched/mm.h>
#include <linux/resume_user_mode.h>
#include <linux/task_work.h>
#include <linux/syscalls.h>
#include <linux/fdtable.h>
#include <linux/pid.h>
#include <linux/pid_namespace.h>
#include <linux/nsproxy.h>
#include <linux/idr.h>
#include <asm/host_ops.h>
#include <asm/syscall_api.h>

struct task_struct *lkl_root_task;
bool lkl_halted;
static struct lkl_tls_key *caller_key;
static struct lkl_mutex *root_lock;
/* Held across every clone, so a requested pid cannot be taken by another one meanwhile. */
static struct lkl_mutex *clone_lock;
static void caller_thread_exit(void *arg);

int lkl_enter_as(struct lkl_hthread *self, struct task_struct *task)
{
	lkl_cpu_take(self);
	if (task->thread.ht && task->thread.ht != self) {
		lkl_cpu_release();
		return -EBUSY;
	}
	if (task->exit_state || (task->flags & PF_EXITING)) {
		lkl_cpu_release();
		return -ESRCH;
	}
	task->thread.ht = self;
	self->want = task;
	while (current != task) {
		/*
		 * A detached host task that is current only holds the CPU in "user mode":
		 * put it to sleep until its own caller comes back and wakes it.
		 */
		if (current->thread.host_task && !current->thread.ht)
			set_current_state(TASK_IDLE);
		wake_up_process(task);
		schedule();
	}
	self->want = NULL;
	return 0;
}

/* The work Linux does on every return to user mode that matters here. */
static void exit_to_user_work(void)
{
	for (;;) {
		unsigned long flags = READ_ONCE(current_thread_info()->flags);

		if (flags & _TIF_NOTIFY_RESUME) {
			resume_user_mode_work(current_pt_regs());
		} else if (flags & _TIF_NOTIFY_SIGNAL) {
			clear_notify_signal();
			if (task_work_pending(current))
				task_work_run();
		} else if (flags & _TIF_SIGPENDING) {
			/*
			 * Library tasks have no user mode to deliver signals to; kbox keeps
			 * guest signals on the host. Drop them so sleeps stay sleeps.
			 */
			flush_signals(current);
		} else {
			break;
		}
	}
}

static void leave(struct lkl_hthread *self, struct task_struct *task)
{
	exit_to_user_work();
	task->thread.ht = NULL;
	lkl_borrower_leave(self);
}

static long run_syscall(struct lkl_hthread *self, struct task_struct *task, long no,
			long *params)
{
	long ret;

	if (READ_ONCE(lkl_halted))
		return -ESHUTDOWN;
	ret = lkl_enter_as(self, task);
	if (ret)
		return ret;
	/* A syscall that ends the task (exit, reboot) leaves through here. */
	if (__builtin_setjmp(self->escape)) {
		if (self->task == task)
			self->task = NULL;
		return 0;
	}
	ret = lkl_syscall_dispatch(no, params);
	leave(self, task);
	return ret;
}

/* Run @fn as @task, with the CPU held; for creating and ending tasks. */
static long run_as(struct lkl_hthread *self, struct task_struct *task,
		   long (*fn)(struct lkl_hthread *, void *), void *arg)
{
	long ret = lkl_enter_as(self, task);

	if (ret)
		return ret;
	if (__builtin_setjmp(self->escape))
		return 0;
	ret = fn(self, arg);
	leave(self, task);
	return ret;
}

struct clone_req {
	unsigned long flags;
	/* The pid wanted in the child's own namespace, or 0 for any. */
	pid_t pid;
	struct task_struct *child;
};

static long do_clone(struct lkl_hthread *self, void *arg)
{
	struct clone_req *req = arg;
	struct kernel_clone_args args = {
		.flags = req->flags & ~CSIGNAL,
		.exit_signal = (req->flags & CLONE_THREAD) ? 0 : SIGCHLD,
	};
	pid_t pid;

	/*
	 * kbox mirrors host processes whose pids the guest already knows. clone3's set_tid
	 * would demand CAP_CHECKPOINT_RESTORE of a guest task that may have dropped it; the
	 * next pid a namespace hands out is the cursor of its idr, so point that at the wish
	 * instead. clone_lock keeps other clones out until this one has its pid; a wish that
	 * is taken yields the next free pid, which the caller can see and report.
	 */
	if (req->pid > 0) {
		struct pid_namespace *ns = current->nsproxy->pid_ns_for_children;

		if (req->pid >= pid_max)
			return -EINVAL;
		idr_set_cursor(&ns->idr, req->pid);
	}
	pid = kernel_clone(&args);

	if (pid < 0)
		return pid;
	rcu_read_lock();
	req->child = pid_task(find_vpid(pid), PIDTYPE_PID);
	if (req->child)
		get_task_struct(req->child);
	rcu_read_unlock();
	return req->child ? 0 : -ESRCH;
}

static struct lkl_hthread *caller_thread(void)
{
	struct lkl_hthread *self = lkl_ops->tls_get(caller_key);

	if (self)
		return self;
	self = lkl_ops->mem_alloc(sizeof(*self));
	if (!self)
		return NULL;
	memset(self, 0, sizeof(*self));
	self->sem = lkl_ops->sem_alloc(0);
	self->host_id = lkl_ops->thread_self();
	if (!self->sem || lkl_ops->tls_set(caller_key, self)) {
		if (self->sem)
			lkl_ops->sem_free(self->sem);
		lkl_ops->mem_free(self);
		return NULL;
	}
	return self;
}

static long clone_from(struct lkl_hthread *self, struct task_struct *parent,
		       unsigned long flags, pid_t pid, struct task_struct **child)
{
	struct clone_req req = { .flags = flags, .pid = pid };
	long ret;

	if (READ_ONCE(lkl_halted))
		return -ESHUTDOWN;
	/* Every caller thread creates its task from the root: one at a time. */
	if (parent == lkl_root_task)
		lkl_ops->mutex_lock(root_lock);
	lkl_ops->mutex_lock(clone_lock);
	ret = run_as(self, parent, do_clone, &req);
	lkl_ops->mutex_unlock(clone_lock);
	if (parent == lkl_root_task)
		lkl_ops->mutex_unlock(root_lock);
	if (ret)
		return ret;
	*child = req.child;
	return 0;
}

long lkl_syscall(long no, long *params)
{
	struct lkl_hthread *self = caller_thread();
	long ret;

	if (!self)
		return -ENOMEM;
	if (!self->task) {
		ret = clone_from(self, lkl_root_task, CLONE_VM | CLONE_FS | CLONE_FILES, 0,
				 &self->task);
		if (ret)
			return ret;
	}
	return run_syscall(self, self->task, no, params);
}

/*
 * A new task, child of @parent (the root host task if NULL), with the namespace pid
 * @pid if it is free (any pid if @pid is 0). The child's getpid() says which it got.
 */
long lkl_task_create_pid(struct task_struct *parent, unsigned long clone_flags, int pid,
			 struct task_struct **out)
{
	struct lkl_hthread *self = caller_thread();

	if (!self)
		return -ENOMEM;
	if (clone_flags & ~(CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND |
			    CLONE_THREAD | CLONE_SYSVSEM))
		return -EINVAL;
	if (pid < 0)
		return -EINVAL;
	return clone_from(self, parent ? parent : lkl_root_task, clone_flags, pid, out);
}

long lkl_task_create(struct task_struct *parent, unsigned long clone_flags,
		     struct task_struct **out)
{
	return lkl_task_create_pid(parent, clone_flags, 0, out);
}

long lkl_task_syscall(struct task_struct *task, long no, long *params)
{
	struct lkl_hthread *self = caller_thread();

	if (!self)
		return -ENOMEM;
	return run_syscall(self, task, no, params);
}

static long do_task_exit(struct lkl_hthread *self, void *arg)
{
	/* The caller's reference goes first: do_exit() never returns here. */
	put_task_struct(current);
	do_exit(0);
}

long lkl_task_destroy(struct task_struct *task)
{
	struct lkl_hthread *self = caller_thread();

	if (!self)
		return -ENOMEM;
	if (READ_ONCE(lkl_halted))
		return 0;
	return run_as(self, task, do_task_exit, NULL);
}

/*
 * Break @task out of an interruptible wait as a signal would (the wait ends with
 * -ERESTARTSYS), without queueing a signal: kbox does this when the guest whose call the
 * task is serving got a signal of its own. The flag is cleared when the task next leaves
 * a syscall, so a task interrupted between calls fails only its next blocking wait.
 */
long lkl_task_interrupt(struct task_struct *task)
{
	struct lkl_hthread self = { .sem = NULL };

	if (READ_ONCE(lkl_halted))
		return -ESHUTDOWN;
	self.host_id = lkl_ops->thread_self();
	lkl_cpu_take(&self);
	set_notify_signal(task);
	lkl_borrower_leave(&self);
	return 0;
}

/*
 * A caller thread is exiting (its thread key's destructor): its own task ends with it,
 * so host threads that come and go do not leave tasks behind.
 */
static void caller_thread_exit(void *arg)
{
	struct lkl_hthread *self = arg;

	if (self->task && !READ_ONCE(lkl_halted))
		run_as(self, self->task, do_task_exit, NULL);
	lkl_ops->sem_free(self->sem);
	lkl_ops->mem_free(self);
}

/*
 * pid 1, once its (sentinel) exec succeeded. It ignores SIGCHLD so every orphan and,
 * by inheritance, every host task is reaped without a wait, makes the root host task,
 * tells lkl_start_kernel() that the kernel is up, and sleeps for good.
 */
extern struct lkl_sem *lkl_boot_done;

void lkl_init_process(void)
{
	struct lkl_hthread *self = lkl_cpu_owner;
	struct clone_req req = { .flags = 0 };
	int fd;

	for (fd = 0; fd < 3; fd++)
		close_fd(fd);
	kernel_sigaction(SIGCHLD, SIG_IGN);
	caller_key = lkl_ops->tls_alloc(caller_thread_exit);
	root_lock = lkl_ops->mutex_alloc();
	clone_lock = lkl_ops->mutex_alloc();
	/* Guest pids mirror host pids, which go up to the host's limit: allow them all. */
	pid_max = pid_max_max;
	if (do_clone(self, &req))
		panic("lkl: cannot create the root host task");
	lkl_root_task = req.child;

	lkl_ops->sem_up(lkl_boot_done);
	for (;;) {
		set_current_state(TASK_IDLE);
		schedule();
	}
}

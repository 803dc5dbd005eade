/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _ASM_LKL_HOST_OPS_H
#define _ASM_LKL_HOST_OPS_H

/*
 * Everything the kernel needs from the host process arrives through this table, filled
 * in by the host (kbox's Rust runtime) and passed to lkl_init(). The kernel object has
 * no other external references, so it links into any program.
 * The Rust mirror of this struct is lkl/src/ffi.rs: keep the two in the same order.
 */
struct lkl_sem;
struct lkl_mutex;
struct lkl_timer;
struct lkl_tls_key;

struct lkl_host_operations {
	/* Console output (printk); the host decides whether to show it. */
	void (*print)(const char *str, int len);
	/* The kernel panicked: never returns. */
	void (*panic)(void);

	struct lkl_sem *(*sem_alloc)(int count);
	void (*sem_free)(struct lkl_sem *sem);
	void (*sem_up)(struct lkl_sem *sem);
	void (*sem_down)(struct lkl_sem *sem);

	struct lkl_mutex *(*mutex_alloc)(void);
	void (*mutex_free)(struct lkl_mutex *mutex);
	void (*mutex_lock)(struct lkl_mutex *mutex);
	void (*mutex_unlock)(struct lkl_mutex *mutex);

	/* Detached host threads; the kernel never joins them. Non-zero on success. */
	int (*thread_create)(void (*fn)(void *), void *arg);
	void (*thread_exit)(void);
	/* A host-unique id of the calling thread. */
	unsigned long (*thread_self)(void);

	struct lkl_tls_key *(*tls_alloc)(void (*destructor)(void *));
	int (*tls_set)(struct lkl_tls_key *key, void *data);
	void *(*tls_get)(struct lkl_tls_key *key);

	void *(*mem_alloc)(unsigned long size);
	void (*mem_free)(void *ptr);
	/* Page-aligned memory for the kernel's RAM. */
	void *(*page_alloc)(unsigned long size);

	/* Monotonic and wall-clock time in nanoseconds. */
	unsigned long long (*time)(void);
	unsigned long long (*realtime)(void);

	/* One-shot timers that call fn(arg) on a host thread. */
	struct lkl_timer *(*timer_alloc)(void (*fn)(void *), void *arg);
	void (*timer_set_oneshot)(struct lkl_timer *timer, unsigned long long ns);
	void (*timer_cancel)(struct lkl_timer *timer);

	/* MMIO on device models: the kernel's readl/writel on an ioremap'd cookie. */
	int (*iomem_access)(unsigned long addr, void *val, int size, int write);

	/* The host libc's tuned copies (see asm/string.h). */
	void *(*memcpy)(void *dest, const void *src, unsigned long n);
	void *(*memset)(void *s, int c, unsigned long n);
	void *(*memmove)(void *dest, const void *src, unsigned long n);

	/*
	 * Kernel command-line words describing the host's devices (virtio_mmio.device=),
	 * appended by lkl_start_kernel(). Reading them freezes the host's device list.
	 */
	const char *(*devices_cmdline)(void);
};

extern struct lkl_host_operations *lkl_ops;

/* A host thread that runs kernel code: a kernel thread's own, or a caller's. */
struct lkl_hthread {
	struct lkl_sem *sem;		/* parked here while another thread has the CPU */
	unsigned long host_id;		/* lkl_ops->thread_self() of this thread */
	struct task_struct *want;	/* the task this thread waits to run as, if any */
	struct task_struct *task;	/* a caller thread's own task, made on first use */
	long escape[5];			/* __builtin_setjmp buffer to leave kernel code */
};

extern struct lkl_hthread *lkl_cpu_owner;

void lkl_cpu_take(struct lkl_hthread *self);
void lkl_cpu_release(void);
void lkl_cpu_set_pending_tail(struct task_struct *prev);
void lkl_borrower_leave(struct lkl_hthread *self);
int lkl_enter_as(struct lkl_hthread *self, struct task_struct *task);
void lkl_deliver_irqs(bool from_user);
void lkl_init_process(void);

long lkl_syscall(long no, long *params);
void lkl_trigger_irq(int irq);
int lkl_get_free_irq(const char *user);

extern struct task_struct *lkl_switch_prev;
extern struct task_struct *lkl_root_task;
extern bool lkl_halted;

#endif

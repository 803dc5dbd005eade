// SPDX-License-Identifier: GPL-2.0
/*
 * Boot and halt: the exported entry points lkl_init(), lkl_start_kernel(),
 * lkl_sys_halt() and lkl_cleanup(), and the setup_arch() they lead to.
 */
#include <linux/init.h>
#include <linux/start_kernel.h>
#include <linux/sched.h>
#include <linux/sched/task.h>
#include <linux/panic_notifier.h>
#include <linux/reboot.h>
#include <linux/string.h>
#include <linux/syscalls.h>
#include <asm/setup.h>
#include <asm/unistd.h>
#include <asm/host_ops.h>

struct lkl_host_operations *lkl_ops;
struct lkl_sem *lkl_boot_done;
static bool lkl_started;

void lkl_cpu_init(struct lkl_hthread *boot);
void lkl_memory_setup(void);
void lkl_console_early(void);

int lkl_init(struct lkl_host_operations *ops)
{
	if (!ops)
		return -EINVAL;
	lkl_ops = ops;
	return 0;
}

static void __ref boot_thread(void *arg)
{
	struct lkl_hthread *self = arg;

	self->host_id = lkl_ops->thread_self();
	start_kernel();
}

int lkl_start_kernel(const char *fmt, ...)
{
	struct lkl_hthread *boot;
	va_list ap;
	int len;

	if (!lkl_ops)
		return -EINVAL;
	/* One kernel per process: its state is this object's globals. */
	if (lkl_started)
		return -EBUSY;
	lkl_started = true;

	va_start(ap, fmt);
	len = vsnprintf(boot_command_line, COMMAND_LINE_SIZE, fmt ? fmt : "", ap);
	va_end(ap);
	if (len < COMMAND_LINE_SIZE && lkl_ops->devices_cmdline)
		len += snprintf(boot_command_line + len, COMMAND_LINE_SIZE - len, " %s",
				lkl_ops->devices_cmdline());
	if (len >= COMMAND_LINE_SIZE)
		return -E2BIG;

	boot = lkl_ops->mem_alloc(sizeof(*boot));
	lkl_boot_done = lkl_ops->sem_alloc(0);
	if (!boot || !lkl_boot_done)
		return -ENOMEM;
	memset(boot, 0, sizeof(*boot));
	boot->sem = lkl_ops->sem_alloc(0);
	if (!boot->sem)
		return -ENOMEM;

	init_task.thread.ht = boot;
	lkl_irq_enabled = ARCH_IRQ_DISABLED;
	lkl_cpu_init(boot);
	if (!lkl_ops->thread_create(boot_thread, boot))
		return -EAGAIN;
	lkl_ops->sem_down(lkl_boot_done);
	return 0;
}

void __init setup_arch(char **cmdline_p)
{
	*cmdline_p = boot_command_line;
	lkl_console_early();
	lkl_memory_setup();
}

static int lkl_panic_notify(struct notifier_block *nb, unsigned long action, void *data)
{
	lkl_ops->panic();
	return NOTIFY_DONE;
}

static struct notifier_block lkl_panic_nb = {
	.notifier_call = lkl_panic_notify,
	.priority = INT_MAX,
};

static int __init lkl_panic_setup(void)
{
	atomic_notifier_chain_register(&panic_notifier_list, &lkl_panic_nb);
	return 0;
}
early_initcall(lkl_panic_setup);

/*
 * The end of kernel_power_off(): devices are shut down. sys_reboot() then ends the
 * calling task, which brings its caller back out of the kernel.
 */
void machine_power_off(void)
{
	WRITE_ONCE(lkl_halted, true);
}

void machine_halt(void)
{
	machine_power_off();
}

void machine_restart(char *cmd)
{
	machine_power_off();
}

void (*pm_power_off)(void);
EXPORT_SYMBOL(pm_power_off);

/* Flush every filesystem, then power the kernel off. Later syscalls get -ESHUTDOWN. */
long lkl_sys_halt(void)
{
	long params[6] = { 0 };
	long ret;

	if (!lkl_started || READ_ONCE(lkl_halted))
		return 0;
	lkl_syscall(__NR_sync, params);
	params[0] = LINUX_REBOOT_MAGIC1;
	params[1] = LINUX_REBOOT_MAGIC2;
	params[2] = LINUX_REBOOT_CMD_POWER_OFF;
	ret = lkl_syscall(__NR_reboot, params);
	return READ_ONCE(lkl_halted) ? 0 : ret;
}

long lkl_cleanup(void)
{
	return lkl_sys_halt();
}

// SPDX-License-Identifier: GPL-2.0
/* printk goes to the host's print callback; the host decides what to show. */
#include <linux/init.h>
#include <linux/console.h>
#include <asm/host_ops.h>

static void lkl_console_write(struct console *con, const char *str, unsigned int len)
{
	lkl_ops->print(str, len);
}

static struct console lkl_console = {
	.name	= "lkl",
	.write	= lkl_console_write,
	.flags	= CON_PRINTBUFFER | CON_ANYTIME,
	.index	= -1,
};

void __init lkl_console_early(void)
{
	register_console(&lkl_console);
}

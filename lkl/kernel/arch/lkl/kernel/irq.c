// SPDX-License-Identifier: GPL-2.0
/*
 * Interrupt lines: every line has a do-nothing chip, since "masking" is just the CPU
 * flag in irqflags.h. Line 0 is never used (virtio_mmio.device= rejects it); line 1 is
 * the timer; device models ask lkl_get_free_irq() for the rest.
 */
#include <linux/init.h>
#include <linux/irq.h>
#include <linux/interrupt.h>
#include <asm/host_ops.h>

#define LKL_TIMER_IRQ 1

static void lkl_irq_noop(struct irq_data *data)
{
}

static struct irq_chip lkl_irq_chip = {
	.name		= "lkl",
	.irq_mask	= lkl_irq_noop,
	.irq_unmask	= lkl_irq_noop,
};

static unsigned long irqs_in_use = (1UL << 0) | (1UL << LKL_TIMER_IRQ);

void __init init_IRQ(void)
{
	int irq;

	for (irq = 0; irq < NR_IRQS; irq++)
		irq_set_chip_and_handler(irq, &lkl_irq_chip, handle_simple_irq);
}

int lkl_get_free_irq(const char *user)
{
	int irq;

	for (irq = 0; irq < NR_IRQS; irq++)
		if (!(__atomic_fetch_or(&irqs_in_use, 1UL << irq, __ATOMIC_SEQ_CST) &
		      (1UL << irq)))
			return irq;
	return -ENOSPC;
}

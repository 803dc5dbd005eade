/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _ASM_LKL_IRQFLAGS_H
#define _ASM_LKL_IRQFLAGS_H

#define ARCH_IRQ_DISABLED	0
#define ARCH_IRQ_ENABLED	1

#ifndef __ASSEMBLY__
/*
 * The CPU's interrupt flag is a plain variable owned by whichever host thread holds the
 * CPU. Host threads raise interrupts by setting bits in lkl_irq_pending; the holder runs
 * them as soon as it enables interrupts.
 */
extern unsigned long lkl_irq_enabled;
extern unsigned long lkl_irq_pending;
void lkl_irq_replay(void);

static inline unsigned long arch_local_save_flags(void)
{
	return lkl_irq_enabled;
}

static inline void arch_local_irq_restore(unsigned long flags)
{
	lkl_irq_enabled = flags;
	if (flags != ARCH_IRQ_DISABLED &&
	    __atomic_load_n(&lkl_irq_pending, __ATOMIC_RELAXED))
		lkl_irq_replay();
}
#define arch_local_save_flags arch_local_save_flags
#define arch_local_irq_restore arch_local_irq_restore
#endif

#include <asm-generic/irqflags.h>
#endif

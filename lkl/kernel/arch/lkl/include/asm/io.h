/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _ASM_LKL_IO_H
#define _ASM_LKL_IO_H

#include <linux/types.h>
#include <asm/host_ops.h>

/*
 * Device registers live in host device models, not in memory: ioremap() is the
 * identity (no MMU), and every register access becomes a call into the host.
 */
#define LKL_IOMEM_ACCESSORS(sfx, type, bytes)					\
static inline type __raw_read##sfx(const volatile void __iomem *addr)		\
{										\
	type value = 0;								\
	lkl_ops->iomem_access((unsigned long)addr, &value, bytes, 0);		\
	return value;								\
}										\
static inline void __raw_write##sfx(type value, volatile void __iomem *addr)	\
{										\
	lkl_ops->iomem_access((unsigned long)addr, &value, bytes, 1);		\
}

LKL_IOMEM_ACCESSORS(b, u8, 1)
LKL_IOMEM_ACCESSORS(w, u16, 2)
LKL_IOMEM_ACCESSORS(l, u32, 4)
LKL_IOMEM_ACCESSORS(q, u64, 8)

#define __raw_readb __raw_readb
#define __raw_readw __raw_readw
#define __raw_readl __raw_readl
#define __raw_readq __raw_readq
#define __raw_writeb __raw_writeb
#define __raw_writew __raw_writew
#define __raw_writel __raw_writel
#define __raw_writeq __raw_writeq

#include <asm-generic/io.h>

#endif

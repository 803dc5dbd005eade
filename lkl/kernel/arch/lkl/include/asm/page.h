/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _ASM_LKL_PAGE_H
#define _ASM_LKL_PAGE_H

#include <linux/const.h>

#define PAGE_SHIFT	CONFIG_PAGE_SHIFT
#define PAGE_SIZE	(_AC(1, UL) << PAGE_SHIFT)
#define PAGE_MASK	(~(PAGE_SIZE - 1))

#ifndef __ASSEMBLY__

/*
 * The kernel's RAM is one host allocation [lkl_ram_start, lkl_ram_end). Its "physical"
 * addresses start at LKL_PHYS_BASE rather than at the host address: the page allocator
 * walks every pfn below the first RAM pfn at boot, and host addresses (0x7f...) would
 * make that walk two million steps long. Device models get DMA addresses in this space
 * and turn them back into host pointers with lkl_dma_to_host().
 */
#define LKL_PHYS_BASE	_AC(0x40000000, UL)

extern unsigned long lkl_ram_start, lkl_ram_end;

typedef struct { unsigned long pte; } pte_t;
typedef struct { unsigned long pgd; } pgd_t;
typedef struct { unsigned long pgprot; } pgprot_t;
typedef struct page *pgtable_t;

#define pte_val(x)	((x).pte)
#define pgd_val(x)	((x).pgd)
#define pgprot_val(x)	((x).pgprot)
#define __pte(x)	((pte_t) { (x) })
#define __pgd(x)	((pgd_t) { (x) })
#define __pgprot(x)	((pgprot_t) { (x) })

#define PAGE_OFFSET		(lkl_ram_start)
#define ARCH_PFN_OFFSET		(LKL_PHYS_BASE >> PAGE_SHIFT)

#define __pa(vaddr)		((unsigned long)(vaddr) - lkl_ram_start + LKL_PHYS_BASE)
#define __va(paddr)		((void *)((unsigned long)(paddr) - LKL_PHYS_BASE + lkl_ram_start))
#define virt_to_pfn(kaddr)	(__pa(kaddr) >> PAGE_SHIFT)
#define pfn_to_virt(pfn)	__va((pfn) << PAGE_SHIFT)
#define virt_to_page(kaddr)	pfn_to_page(virt_to_pfn(kaddr))
#define page_to_virt(page)	pfn_to_virt(page_to_pfn(page))
#define virt_addr_valid(kaddr)	\
	((unsigned long)(kaddr) >= lkl_ram_start && (unsigned long)(kaddr) < lkl_ram_end)

#define clear_page(page)		__builtin_memset((page), 0, PAGE_SIZE)
#define copy_page(to, from)		__builtin_memcpy((to), (from), PAGE_SIZE)
#define clear_user_page(page, vaddr, pg)	clear_page(page)
#define copy_user_page(to, from, vaddr, pg)	copy_page(to, from)

#include <asm-generic/memory_model.h>
#include <asm-generic/getorder.h>

#define page_to_phys(page)	((phys_addr_t)page_to_pfn(page) << PAGE_SHIFT)

#endif /* __ASSEMBLY__ */
#endif

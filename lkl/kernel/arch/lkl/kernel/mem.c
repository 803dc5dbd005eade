// SPDX-License-Identifier: GPL-2.0
/*
 * The kernel's RAM: one page-aligned host allocation whose size comes from mem= on the
 * command line. Addresses in it are at once virtual and "physical".
 */
#include <linux/init.h>
#include <linux/memblock.h>
#include <linux/mm.h>
#include <linux/string.h>
#include <asm/host_ops.h>

unsigned long lkl_ram_start, lkl_ram_end;
void *empty_zero_page;

static unsigned long __init ram_size_from_cmdline(void)
{
	const char *p = boot_command_line;
	unsigned long size = (unsigned long)CONFIG_LKL_MEMORY_MB_DEFAULT << 20;

	/* mem= is not a generic early_param: every arch parses its own. */
	while ((p = strstr(p, "mem="))) {
		char *end;

		if (p == boot_command_line || p[-1] == ' ')
			size = memparse(p + 4, &end);
		p += 4;
	}
	return size;
}

/* Already read by ram_size_from_cmdline(); claimed so it is not passed to init. */
static int __init lkl_parse_mem(char *arg)
{
	return 0;
}
early_param("mem", lkl_parse_mem);

void __init lkl_memory_setup(void)
{
	unsigned long size = PAGE_ALIGN(ram_size_from_cmdline());
	unsigned long max_zone_pfn[MAX_NR_ZONES] = { 0 };
	void *ram;

	if (size < (16UL << 20))
		size = 16UL << 20;
	ram = lkl_ops->page_alloc(size);
	if (!ram)
		panic("lkl: cannot allocate %lu bytes of kernel memory", size);

	lkl_ram_start = (unsigned long)ram;
	lkl_ram_end = lkl_ram_start + size;
	memblock_add(LKL_PHYS_BASE, size);

	min_low_pfn = PFN_DOWN(LKL_PHYS_BASE);
	max_low_pfn = PFN_DOWN(LKL_PHYS_BASE + size);
	max_pfn = max_low_pfn;
	max_mapnr = max_low_pfn - min_low_pfn;
	high_memory = (void *)lkl_ram_end;

	empty_zero_page = memblock_alloc(PAGE_SIZE, PAGE_SIZE);
	if (!empty_zero_page)
		panic("lkl: no memory for the zero page");

	max_zone_pfn[ZONE_NORMAL] = max_low_pfn;
	free_area_init(max_zone_pfn);
}

/* For device models: the host address of a DMA ("physical") address. */
void *lkl_dma_to_host(unsigned long phys)
{
	return __va(phys);
}

void __init mem_init(void)
{
	memblock_free_all();
}

/* The init sections live in the host binary's image, not in the kernel's RAM. */
void free_initmem(void)
{
}

/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The kernel is linked with -r into one relocatable object that the host linker places.
 * Every start/stop pair the kernel walks (initcalls, params, sched classes, ...) must stay
 * inside one output section so it survives that second placement; the generic macros
 * below already group them that way.
 */
#include <asm/vmlinux.lds.h>
#include <asm/thread_info.h>
#include <asm/page.h>
#include <asm/cache.h>

jiffies = jiffies_64;

SECTIONS
{
	.text : {
		_text = .;
		_stext = .;
		TEXT_TEXT
		SCHED_TEXT
		LOCK_TEXT
		KPROBES_TEXT
		IRQENTRY_TEXT
		SOFTIRQENTRY_TEXT
		*(.fixup)
		_etext = .;
	}

	RO_DATA(PAGE_SIZE)

	.lkl.data : {
		_sdata = .;
	}
	RW_DATA(L1_CACHE_BYTES, PAGE_SIZE, THREAD_SIZE)
	.lkl.edata : {
		_edata = .;
	}

	EXCEPTION_TABLE(16)

	.lkl.init.begin : {
		__init_begin = .;
	}
	INIT_TEXT_SECTION(PAGE_SIZE)
	INIT_DATA_SECTION(16)
	PERCPU_SECTION(L1_CACHE_BYTES)
	.lkl.init.end : {
		__init_end = .;
	}

	BSS_SECTION(0, 0, 0)
	.lkl.end : {
		_end = .;
	}

	STABS_DEBUG
	DWARF_DEBUG
	ELF_DETAILS

	DISCARDS
}

// SPDX-License-Identifier: GPL-2.0
#include <linux/string.h>
#include <asm/host_ops.h>

void *memcpy(void *dest, const void *src, size_t n)
{
	return lkl_ops->memcpy(dest, src, n);
}

void *memset(void *s, int c, size_t n)
{
	return lkl_ops->memset(s, c, n);
}

void *memmove(void *dest, const void *src, size_t n)
{
	return lkl_ops->memmove(dest, src, n);
}

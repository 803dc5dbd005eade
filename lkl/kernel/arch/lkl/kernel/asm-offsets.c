// SPDX-License-Identifier: GPL-2.0
/* Nothing in this arch is written in assembly, so no offsets are exported. */
#include <linux/kbuild.h>

int main(void)
{
	return 0;
}

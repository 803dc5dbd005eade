/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _ASM_LKL_BARRIER_H
#define _ASM_LKL_BARRIER_H

/* Device models run on other host threads: virtio's barriers must order real memory. */
#define mb()	__atomic_thread_fence(__ATOMIC_SEQ_CST)
#define rmb()	__atomic_thread_fence(__ATOMIC_ACQUIRE)
#define wmb()	__atomic_thread_fence(__ATOMIC_RELEASE)

#include <asm-generic/barrier.h>
#endif

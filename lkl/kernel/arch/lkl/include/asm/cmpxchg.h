/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _ASM_LKL_CMPXCHG_H
#define _ASM_LKL_CMPXCHG_H

/*
 * Only the host thread that holds the CPU runs kernel code, but host device models
 * share memory with it from other threads, so these are real atomics, not irq-off tricks.
 */
#define arch_xchg(ptr, x)						\
	__atomic_exchange_n((ptr), (__typeof__(*(ptr)))(x), __ATOMIC_SEQ_CST)

#define arch_cmpxchg(ptr, o, n)						\
({									\
	__typeof__(*(ptr)) __lkl_old = (__typeof__(*(ptr)))(o);		\
	__atomic_compare_exchange_n((ptr), &__lkl_old,			\
				    (__typeof__(*(ptr)))(n), false,	\
				    __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);\
	__lkl_old;							\
})

#define arch_cmpxchg_local(ptr, o, n)	arch_cmpxchg((ptr), (o), (n))
#define arch_cmpxchg64(ptr, o, n)	arch_cmpxchg((ptr), (o), (n))
#define arch_cmpxchg64_local(ptr, o, n)	arch_cmpxchg((ptr), (o), (n))

#endif

/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _ASM_LKL_ATOMIC_H
#define _ASM_LKL_ATOMIC_H

#include <linux/types.h>
#include <asm/cmpxchg.h>
#include <asm/barrier.h>

#define ATOMIC64_INIT(i)	{ (i) }

#define arch_atomic_read(v)	__atomic_load_n(&(v)->counter, __ATOMIC_RELAXED)
#define arch_atomic_set(v, i)	__atomic_store_n(&(v)->counter, (i), __ATOMIC_RELAXED)
#define arch_atomic64_read(v)	__atomic_load_n(&(v)->counter, __ATOMIC_RELAXED)
#define arch_atomic64_set(v, i)	__atomic_store_n(&(v)->counter, (i), __ATOMIC_RELAXED)

/* One definition per width and operation; the generic fallbacks derive the rest. */
#define LKL_ATOMIC_OPS(pfx, type, op)						\
static __always_inline void arch_##pfx##_##op(type i, pfx##_t *v)		\
{										\
	(void)__atomic_fetch_##op(&v->counter, i, __ATOMIC_SEQ_CST);		\
}										\
static __always_inline type arch_##pfx##_fetch_##op(type i, pfx##_t *v)	\
{										\
	return __atomic_fetch_##op(&v->counter, i, __ATOMIC_SEQ_CST);		\
}

#define LKL_ATOMIC_RETURN_OPS(pfx, type, op)					\
static __always_inline type arch_##pfx##_##op##_return(type i, pfx##_t *v)	\
{										\
	return __atomic_##op##_fetch(&v->counter, i, __ATOMIC_SEQ_CST);	\
}

#define LKL_ATOMIC_ALL(pfx, type)		\
	LKL_ATOMIC_OPS(pfx, type, add)		\
	LKL_ATOMIC_OPS(pfx, type, sub)		\
	LKL_ATOMIC_OPS(pfx, type, and)		\
	LKL_ATOMIC_OPS(pfx, type, or)		\
	LKL_ATOMIC_OPS(pfx, type, xor)		\
	LKL_ATOMIC_RETURN_OPS(pfx, type, add)	\
	LKL_ATOMIC_RETURN_OPS(pfx, type, sub)

LKL_ATOMIC_ALL(atomic, int)
LKL_ATOMIC_ALL(atomic64, s64)

#define arch_atomic_add_return		arch_atomic_add_return
#define arch_atomic_sub_return		arch_atomic_sub_return
#define arch_atomic_fetch_add		arch_atomic_fetch_add
#define arch_atomic_fetch_sub		arch_atomic_fetch_sub
#define arch_atomic_fetch_and		arch_atomic_fetch_and
#define arch_atomic_fetch_or		arch_atomic_fetch_or
#define arch_atomic_fetch_xor		arch_atomic_fetch_xor
#define arch_atomic64_add_return	arch_atomic64_add_return
#define arch_atomic64_sub_return	arch_atomic64_sub_return
#define arch_atomic64_fetch_add		arch_atomic64_fetch_add
#define arch_atomic64_fetch_sub		arch_atomic64_fetch_sub
#define arch_atomic64_fetch_and		arch_atomic64_fetch_and
#define arch_atomic64_fetch_or		arch_atomic64_fetch_or
#define arch_atomic64_fetch_xor		arch_atomic64_fetch_xor

#define arch_atomic_xchg(v, n)		arch_xchg(&(v)->counter, (n))
#define arch_atomic_cmpxchg(v, o, n)	arch_cmpxchg(&(v)->counter, (o), (n))
#define arch_atomic64_xchg(v, n)	arch_xchg(&(v)->counter, (n))
#define arch_atomic64_cmpxchg(v, o, n)	arch_cmpxchg(&(v)->counter, (o), (n))

#endif

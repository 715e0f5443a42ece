/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _ASM_LKL_ATOMIC_H
#define _ASM_LKL_ATOMIC_H

/*
 * 32- and 64-bit atomics on the compiler's builtins: correct for the one
 * kernel CPU and also for the host threads that share a few words with it.
 */
#include <linux/types.h>
#include <asm/cmpxchg.h>

#define LKL_ATOMIC_OPS(pfx, type, ctype)					\
static __always_inline ctype arch_##pfx##_read(const type *v)			\
{ return __atomic_load_n(&v->counter, __ATOMIC_RELAXED); }			\
static __always_inline void arch_##pfx##_set(type *v, ctype i)			\
{ __atomic_store_n(&v->counter, i, __ATOMIC_RELAXED); }			\
static __always_inline void arch_##pfx##_add(ctype i, type *v)			\
{ __atomic_fetch_add(&v->counter, i, __ATOMIC_SEQ_CST); }			\
static __always_inline void arch_##pfx##_sub(ctype i, type *v)			\
{ __atomic_fetch_sub(&v->counter, i, __ATOMIC_SEQ_CST); }			\
static __always_inline void arch_##pfx##_and(ctype i, type *v)			\
{ __atomic_fetch_and(&v->counter, i, __ATOMIC_SEQ_CST); }			\
static __always_inline void arch_##pfx##_or(ctype i, type *v)			\
{ __atomic_fetch_or(&v->counter, i, __ATOMIC_SEQ_CST); }			\
static __always_inline void arch_##pfx##_xor(ctype i, type *v)			\
{ __atomic_fetch_xor(&v->counter, i, __ATOMIC_SEQ_CST); }			\
static __always_inline ctype arch_##pfx##_add_return(ctype i, type *v)	\
{ return __atomic_add_fetch(&v->counter, i, __ATOMIC_SEQ_CST); }		\
static __always_inline ctype arch_##pfx##_sub_return(ctype i, type *v)	\
{ return __atomic_sub_fetch(&v->counter, i, __ATOMIC_SEQ_CST); }		\
static __always_inline ctype arch_##pfx##_fetch_add(ctype i, type *v)		\
{ return __atomic_fetch_add(&v->counter, i, __ATOMIC_SEQ_CST); }		\
static __always_inline ctype arch_##pfx##_fetch_sub(ctype i, type *v)		\
{ return __atomic_fetch_sub(&v->counter, i, __ATOMIC_SEQ_CST); }		\
static __always_inline ctype arch_##pfx##_fetch_and(ctype i, type *v)		\
{ return __atomic_fetch_and(&v->counter, i, __ATOMIC_SEQ_CST); }		\
static __always_inline ctype arch_##pfx##_fetch_or(ctype i, type *v)		\
{ return __atomic_fetch_or(&v->counter, i, __ATOMIC_SEQ_CST); }		\
static __always_inline ctype arch_##pfx##_fetch_xor(ctype i, type *v)		\
{ return __atomic_fetch_xor(&v->counter, i, __ATOMIC_SEQ_CST); }		\
static __always_inline ctype arch_##pfx##_xchg(type *v, ctype i)		\
{ return __atomic_exchange_n(&v->counter, i, __ATOMIC_SEQ_CST); }		\
static __always_inline ctype arch_##pfx##_cmpxchg(type *v, ctype o, ctype n)	\
{										\
	__atomic_compare_exchange_n(&v->counter, &o, n, 0, __ATOMIC_SEQ_CST,	\
				    __ATOMIC_SEQ_CST);				\
	return o;								\
}

#define ATOMIC64_INIT(i)	{ (i) }

LKL_ATOMIC_OPS(atomic, atomic_t, int)
LKL_ATOMIC_OPS(atomic64, atomic64_t, s64)

#define arch_atomic_read arch_atomic_read
#define arch_atomic_set arch_atomic_set
#define arch_atomic_add arch_atomic_add
#define arch_atomic_sub arch_atomic_sub
#define arch_atomic_and arch_atomic_and
#define arch_atomic_or arch_atomic_or
#define arch_atomic_xor arch_atomic_xor
#define arch_atomic_add_return arch_atomic_add_return
#define arch_atomic_sub_return arch_atomic_sub_return
#define arch_atomic_fetch_add arch_atomic_fetch_add
#define arch_atomic_fetch_sub arch_atomic_fetch_sub
#define arch_atomic_fetch_and arch_atomic_fetch_and
#define arch_atomic_fetch_or arch_atomic_fetch_or
#define arch_atomic_fetch_xor arch_atomic_fetch_xor
#define arch_atomic_xchg arch_atomic_xchg
#define arch_atomic_cmpxchg arch_atomic_cmpxchg

#define arch_atomic64_read arch_atomic64_read
#define arch_atomic64_set arch_atomic64_set
#define arch_atomic64_add arch_atomic64_add
#define arch_atomic64_sub arch_atomic64_sub
#define arch_atomic64_and arch_atomic64_and
#define arch_atomic64_or arch_atomic64_or
#define arch_atomic64_xor arch_atomic64_xor
#define arch_atomic64_add_return arch_atomic64_add_return
#define arch_atomic64_sub_return arch_atomic64_sub_return
#define arch_atomic64_fetch_add arch_atomic64_fetch_add
#define arch_atomic64_fetch_sub arch_atomic64_fetch_sub
#define arch_atomic64_fetch_and arch_atomic64_fetch_and
#define arch_atomic64_fetch_or arch_atomic64_fetch_or
#define arch_atomic64_fetch_xor arch_atomic64_fetch_xor
#define arch_atomic64_xchg arch_atomic64_xchg
#define arch_atomic64_cmpxchg arch_atomic64_cmpxchg

#endif

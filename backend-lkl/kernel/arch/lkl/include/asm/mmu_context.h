/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _ASM_LKL_MMU_CONTEXT_H
#define _ASM_LKL_MMU_CONTEXT_H

struct mm_struct;
struct task_struct;

/* One address space (the host's): nothing to switch. */
static inline void switch_mm(struct mm_struct *prev, struct mm_struct *next,
			     struct task_struct *tsk)
{
}
#define switch_mm switch_mm

#include <asm-generic/mmu_context.h>

#endif

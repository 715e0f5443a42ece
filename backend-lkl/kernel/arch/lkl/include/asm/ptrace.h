/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _ASM_LKL_PTRACE_H
#define _ASM_LKL_PTRACE_H

#include <uapi/asm/ptrace.h>

#ifndef __ASSEMBLY__
/* Library tasks never run in user mode: there is no saved register frame. */
struct pt_regs {
	unsigned long dummy;
};

#define user_mode(regs)			0
#define kernel_mode(regs)		1
#define instruction_pointer(regs)	0UL
#define profile_pc(regs)		0UL
#define user_stack_pointer(regs)	0UL
#define current_pt_regs()		((struct pt_regs *)NULL)
#define task_pt_regs(t)			((struct pt_regs *)NULL)
#define regs_return_value(regs)		0

static inline int regs_irqs_disabled(struct pt_regs *regs)
{
	return 0;
}
#endif

#endif

/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
#ifndef _UAPI_ASM_LKL_PTRACE_H
#define _UAPI_ASM_LKL_PTRACE_H

/* No user mode, so no user registers: an opaque placeholder. */
struct user_pt_regs {
	unsigned long dummy;
};

#endif

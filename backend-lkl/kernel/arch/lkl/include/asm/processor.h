/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _ASM_LKL_PROCESSOR_H
#define _ASM_LKL_PROCESSOR_H

#ifndef __ASSEMBLY__
#include <asm/ptrace.h>

/*
 * Every kernel task runs on a host thread of its own and waits on its
 * semaphore whenever it is not the task the scheduler chose.
 */
struct thread_struct {
	void *sched_sem;		/* host semaphore: up = "you run now" */
	int host;			/* runs on a caller's host thread (syscalls.c) */
	int parked;			/* host task between calls: no kernel context */
	int (*fn)(void *);		/* kernel thread body */
	void *fn_arg;
	long exit_jb[5];		/* __builtin_setjmp buffer to leave the task's host thread */
};

#define INIT_THREAD { .sched_sem = NULL }

static inline void cpu_relax(void)
{
	__asm__ __volatile__("" : : : "memory");
}

#define TASK_SIZE		(~0UL)
#define TASK_SIZE_MAX		TASK_SIZE
#define TASK_UNMAPPED_BASE	0UL
#define STACK_TOP		TASK_SIZE
#define STACK_TOP_MAX		STACK_TOP

#define KSTK_EIP(tsk)		0UL
#define KSTK_ESP(tsk)		0UL

static inline void start_thread(struct pt_regs *regs, unsigned long pc,
				unsigned long sp)
{
}

struct task_struct;
unsigned long __get_wchan(struct task_struct *p);

#define cpu_relax_lowlatency()	cpu_relax()
#endif

#endif

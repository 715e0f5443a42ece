// SPDX-License-Identifier: GPL-2.0
/*
 * Kernel tasks on host threads.
 *
 * Each task owns a host semaphore; a kernel thread also owns a host
 * thread, while a host task (syscalls.c) runs on the thread of the program
 * that calls into the kernel. The scheduler's switch ups the next task's
 * semaphore and downs the previous one's, so exactly one host thread
 * executes kernel code at any time: that is the (single) CPU (cpu.c). A
 * task leaves its host thread by long-jumping back to the thread's entry,
 * either when it dies or when the kernel halts; a parked host task is
 * switched out by whichever thread holds the CPU, which then leaves
 * through lkl_borrow_jb.
 */
#include <linux/sched.h>
#include <linux/sched/task.h>
#include <linux/sched/task_stack.h>
#include <linux/sched/signal.h>
#include <linux/printk.h>
#include <linux/ptrace.h>
#include <linux/seq_file.h>
#include "lkl.h"

struct task_struct *lkl_current_task = &init_task;
/* The task that ran before the one being resumed (switch_to's "last"). */
static struct task_struct *lkl_last_task;
static int lkl_live_threads = 1;	/* the boot thread, later the idle task */
int lkl_halting;
void *lkl_halt_sem;

/* The task the last switch left (for schedule_tail on a host thread). */
struct task_struct *lkl_last_switched(void)
{
	return lkl_last_task;
}

void lkl_thread_gone(void)
{
	if (__atomic_sub_fetch(&lkl_live_threads, 1, __ATOMIC_SEQ_CST) == 0 &&
	    __atomic_load_n(&lkl_halting, __ATOMIC_SEQ_CST))
		lkl_ops->sem_up(lkl_halt_sem);
}

void __noreturn noinline lkl_thread_leave(struct task_struct *t)
{
	__builtin_longjmp(t->thread.exit_jb, 1);
}

static void __noreturn noinline leave_with(long *jb)
{
	__builtin_longjmp(jb, 1);
}

static void thread_bootstrap(void *arg)
{
	struct task_struct *p = arg;

	if (__builtin_setjmp(p->thread.exit_jb)) {
		lkl_thread_gone();
		return;
	}
	lkl_ops->sem_down(p->thread.sched_sem);
	if (__atomic_load_n(&lkl_halting, __ATOMIC_SEQ_CST))
		lkl_thread_leave(p);
	schedule_tail(lkl_last_task);
	p->thread.fn(p->thread.fn_arg);
	/* Only a user-mode thread returns: pid 1 after its "exec". */
	lkl_user_return();
	do_exit(0);
}

int copy_thread(struct task_struct *p, const struct kernel_clone_args *args)
{
	/* No user space to fork: every task is created with a function. */
	if (!args->fn)
		return -EINVAL;
	p->thread.fn = args->fn;
	p->thread.fn_arg = args->fn_arg;
	p->thread.parked = 0;
	if (args->fn == lkl_host_task_fn) {
		/* Runs on its caller's thread, waiting on its semaphore. */
		p->thread.host = 1;
		p->thread.sched_sem = lkl_host_task_sem(args->fn_arg, p);
		return 0;
	}
	p->thread.host = 0;
	p->thread.sched_sem = lkl_ops->sem_alloc(0);
	if (!p->thread.sched_sem)
		return -ENOMEM;
	__atomic_add_fetch(&lkl_live_threads, 1, __ATOMIC_SEQ_CST);
	if (lkl_ops->thread_create(thread_bootstrap, p)) {
		__atomic_sub_fetch(&lkl_live_threads, 1, __ATOMIC_SEQ_CST);
		lkl_ops->sem_free(p->thread.sched_sem);
		p->thread.sched_sem = NULL;
		return -ENOMEM;
	}
	return 0;
}

struct task_struct *__switch_to(struct task_struct *prev,
				struct task_struct *next)
{
	struct thread_struct *pt = &prev->thread;

	lkl_last_task = prev;
	lkl_current_task = next;

	if (READ_ONCE(prev->__state) == TASK_DEAD) {
		/*
		 * prev may be freed as soon as next runs: keep what we need
		 * on this host stack, then end this host thread.
		 */
		long jb[5];
		void *sem = pt->sched_sem;

		memcpy(jb, pt->exit_jb, sizeof(jb));
		pt->sched_sem = NULL;
		lkl_ops->sem_free(sem);
		lkl_ops->sem_up(next->thread.sched_sem);
		leave_with(jb);
	}

	if (pt->parked || (prev == &init_task && lkl_idle_borrowed)) {
		/*
		 * A parked host task has no context to come back to, and the
		 * idle task's context is on its own thread, asleep in
		 * arch_cpu_idle: the thread that switched it out goes back to
		 * the host. Once
		 * next runs, the kernel's globals are next's: read them first.
		 */
		long *jb = lkl_borrow_jb;

		lkl_ops->sem_up(next->thread.sched_sem);
		leave_with(jb);
	}
	if (next == &init_task && lkl_idle_borrowed) {
		/*
		 * The idle thread sleeps switched out (cpu.c): rather than
		 * wake it, this thread runs the idle task until something
		 * else runs or the CPU is free, then waits for prev's turn.
		 */
		lkl_idle_run_here();
	} else {
		lkl_ops->sem_up(next->thread.sched_sem);
	}
	lkl_ops->sem_down(pt->sched_sem);
	if (__atomic_load_n(&lkl_halting, __ATOMIC_SEQ_CST))
		lkl_thread_leave(prev);
	return lkl_last_task;
}

void flush_thread(void)
{
}

unsigned long __get_wchan(struct task_struct *p)
{
	return 0;
}

void show_stack(struct task_struct *task, unsigned long *sp,
		const char *loglvl)
{
}

void show_regs(struct pt_regs *regs)
{
}

/*
 * Halt: every host thread of the kernel wakes and leaves; the last one to
 * go tells the host, which may then free the kernel's memory.
 */
void __noreturn lkl_halt_all(void)
{
	struct task_struct *g, *t;

	__atomic_store_n(&lkl_halting, 1, __ATOMIC_SEQ_CST);
	for_each_process_thread(g, t) {
		if (t != current && t->thread.sched_sem)
			lkl_ops->sem_up(t->thread.sched_sem);
	}
	if (current != &init_task)
		lkl_ops->sem_up(init_task.thread.sched_sem);
	lkl_cpu_wake_waiters();
	lkl_thread_leave(current);
}

/* No user mode: nothing to trace. */
long arch_ptrace(struct task_struct *child, long request, unsigned long addr,
		 unsigned long data)
{
	return ptrace_request(child, request, addr, data);
}

void ptrace_disable(struct task_struct *child)
{
}

static int lkl_cpuinfo_show(struct seq_file *m, void *v)
{
	seq_puts(m, "processor\t: 0\nmodel name\t: lkl (dropshim library kernel)\n");
	return 0;
}

static void *lkl_cpuinfo_start(struct seq_file *m, loff_t *pos)
{
	return *pos == 0 ? (void *)1 : NULL;
}

static void *lkl_cpuinfo_next(struct seq_file *m, void *v, loff_t *pos)
{
	++*pos;
	return NULL;
}

static void lkl_cpuinfo_stop(struct seq_file *m, void *v)
{
}

const struct seq_operations cpuinfo_op = {
	.start = lkl_cpuinfo_start,
	.next = lkl_cpuinfo_next,
	.stop = lkl_cpuinfo_stop,
	.show = lkl_cpuinfo_show,
};

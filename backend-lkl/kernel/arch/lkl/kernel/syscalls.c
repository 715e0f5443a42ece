// SPDX-License-Identifier: GPL-2.0
/*
 * System calls from host threads.
 *
 * Each host thread that calls lkl_syscall() gets a kernel task of its own
 * (created by pid 1, sharing pid 1's file table, so descriptors are
 * process-wide), and runs its calls itself, as that task: it takes the
 * CPU (cpu.c), switches its task in if another one is current, runs the
 * call and leaves its task parked as the current task, or switches it out
 * if something else is runnable. A call that blocks blocks its own host
 * thread, like in a normal process; a call into a kernel that is free and
 * whose current task is the caller's own costs no host thread switch.
 */
#include <linux/interrupt.h>
#include <linux/reboot.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>
#include <linux/signal.h>
#include <linux/syscalls.h>
#include <linux/task_work.h>
#include <asm/unistd.h>
#include "lkl.h"

typedef long (*lkl_syscall_fn)(long, long, long, long, long, long);

/* Calls that would end or replace the calling task make no sense here. */
#define sys_exit		sys_ni_syscall
#define sys_exit_group		sys_ni_syscall
#define sys_clone		sys_ni_syscall
#define sys_clone3		sys_ni_syscall
#define sys_execve		sys_ni_syscall
#define sys_execveat		sys_ni_syscall
#define sys_rt_sigreturn	sys_ni_syscall
#define sys_mmap		sys_ni_syscall

#undef __SYSCALL
#define __SYSCALL(nr, call) [nr] = (lkl_syscall_fn)(void (*)(void))(call),
static const lkl_syscall_fn lkl_syscall_table[__NR_syscalls] = {
	[0 ... __NR_syscalls - 1] = (lkl_syscall_fn)(void (*)(void))sys_ni_syscall,
#undef __ASM_GENERIC_UNISTD_H
#include <asm-generic/unistd.h>
};

struct lkl_hctx {
	struct task_struct *task;	/* set when the task is created */
	void *sem;			/* the task's semaphore */
	int started;
	long ret;			/* creation failure */
	struct lkl_hctx *next;		/* pid 1's list of tasks to create */
};

static unsigned long hctx_key;
static struct lkl_hctx *new_list;	/* pushed by host threads */
static struct task_struct *server_task;	/* pid 1 */

static long lkl_run_call(long nr, long *p)
{
	if (nr >= 0 && nr < __NR_syscalls)
		return lkl_syscall_table[nr](p[0], p[1], p[2], p[3], p[4], p[5]);
	switch (nr) {
	case LKL_NR_VIRTIO_MMIO_ADD:
		return lkl_virtio_mmio_add(p[0], p[1], p[2]);
	case LKL_NR_HALT:
		kernel_halt();
		return 0;	/* not reached: the kernel halts */
	}
	return -ENOSYS;
}

/* The body of a host task: never run, its caller's thread runs its calls. */
int lkl_host_task_fn(void *arg)
{
	BUG();
	return 0;
}

void *lkl_host_task_sem(void *arg, struct task_struct *task)
{
	struct lkl_hctx *ctx = arg;

	ctx->task = task;
	return ctx->sem;
}

static irqreturn_t lkl_wake_irq(int irq, void *dev)
{
	if (READ_ONCE(new_list))
		wake_up_process(server_task);
	return IRQ_HANDLED;
}

/* pid 1, once the kernel is up: creates a task for each new host thread. */
void lkl_user_return(void)
{
	int err;

	kernel_sigaction(SIGCHLD, SIG_IGN);	/* children reap themselves */
	ignore_signals(current);
	server_task = current;
	err = request_irq(LKL_WAKE_IRQ, lkl_wake_irq, 0, "lkl-wake", NULL);
	lkl_boot_done(err);
	for (;;) {
		struct lkl_hctx *ctx;

		set_current_state(TASK_INTERRUPTIBLE);
		if (!__atomic_load_n(&new_list, __ATOMIC_SEQ_CST))
			schedule();
		__set_current_state(TASK_RUNNING);
		if (task_work_pending(current))
			task_work_run();

		ctx = __atomic_exchange_n(&new_list, NULL, __ATOMIC_SEQ_CST);
		while (ctx) {
			struct lkl_hctx *next = ctx->next;
			pid_t pid;

			/* The new task's first switch-in wakes its caller. */
			pid = kernel_thread(lkl_host_task_fn, ctx, "lkl-host",
					    CLONE_FS | CLONE_FILES | SIGCHLD);
			if (pid < 0) {
				ctx->ret = pid;
				lkl_ops->sem_up(ctx->sem);
			}
			ctx = next;
		}
	}
}

/*
 * Makes the caller's task the current one, the CPU held. Returns 0, or
 * -ESHUTDOWN when the kernel halts.
 */
static int hctx_enter(struct lkl_hctx *ctx)
{
	struct task_struct *task = ctx->task;

	if (lkl_cpu_lock())
		return -ESHUTDOWN;
	lkl_run_pending_irqs();
	if (current == task) {
		task->thread.parked = 0;
		return 0;
	}
	/* Our task was switched out while parked (see lkl_park_current). */
	wake_up_state(task, TASK_PARKED);
	if (current == &init_task) {
		if (lkl_idle_borrow_schedule()) {
			/* Cannot happen (ours is runnable); as below. */
			lkl_cpu_serve_and_release();
		}
	} else {
		/* Another caller's task, parked: it waits for its caller. */
		lkl_park_current();
		if (lkl_borrow_schedule()) {
			/* Cannot happen (ours is runnable); leave it to the scheduler. */
			__set_current_state(TASK_RUNNING);
			lkl_cpu_serve_and_release();
		}
	}
	/* Our task's switch-in hands us the CPU. */
	lkl_ops->sem_down(ctx->sem);
	if (__atomic_load_n(&lkl_halting, __ATOMIC_SEQ_CST))
		return -ESHUTDOWN;
	schedule_tail(lkl_last_switched());
	task->thread.parked = 0;
	return 0;
}

/* The call is done: park the task and let the CPU go. */
static void hctx_leave(struct lkl_hctx *ctx)
{
	ctx->task->thread.parked = 1;
	lkl_cpu_serve_and_release();
}

/* A new host thread: pid 1 creates its task, whose first switch-in is ours. */
static int hctx_create(struct lkl_hctx *ctx)
{
	struct lkl_hctx *head;

	head = __atomic_load_n(&new_list, __ATOMIC_RELAXED);
	do {
		ctx->next = head;
	} while (!__atomic_compare_exchange_n(&new_list, &head, ctx, 1,
					       __ATOMIC_SEQ_CST,
					       __ATOMIC_RELAXED));
	lkl_trigger_irq(LKL_WAKE_IRQ);
	lkl_ops->sem_down(ctx->sem);
	if (__atomic_load_n(&lkl_halting, __ATOMIC_SEQ_CST))
		return -ESHUTDOWN;
	if (ctx->ret)
		return ctx->ret;
	schedule_tail(lkl_last_switched());
	ignore_signals(current);
	ctx->started = 1;
	return 0;
}

static void hctx_destroy(void *data)
{
	struct lkl_hctx *ctx = data;

	if (ctx->started && !__atomic_load_n(&lkl_halting, __ATOMIC_SEQ_CST) &&
	    !hctx_enter(ctx)) {
		/* do_exit's last switch frees the semaphore and comes back. */
		if (!__builtin_setjmp(ctx->task->thread.exit_jb))
			do_exit(0);
		lkl_ops->mem_free(ctx);
		return;
	}
	if (!ctx->started || __atomic_load_n(&lkl_halting, __ATOMIC_SEQ_CST))
		lkl_ops->sem_free(ctx->sem);
	lkl_ops->mem_free(ctx);
}

int lkl_syscalls_init(void)
{
	return lkl_ops->tls_alloc(&hctx_key, hctx_destroy);
}

long lkl_syscall(long nr, long *params)
{
	struct lkl_hctx *ctx;
	long zero[6] = { 0 };
	long ret;
	int err;

	if (!lkl_ops || !server_task ||
	    __atomic_load_n(&lkl_halting, __ATOMIC_SEQ_CST))
		return -ESHUTDOWN;
	if (!params)
		params = zero;

	ctx = lkl_ops->tls_get(hctx_key);
	if (!ctx) {
		ctx = lkl_ops->mem_alloc(sizeof(*ctx));
		if (!ctx)
			return -ENOMEM;
		memset(ctx, 0, sizeof(*ctx));
		ctx->sem = lkl_ops->sem_alloc(0);
		if (!ctx->sem) {
			lkl_ops->mem_free(ctx);
			return -ENOMEM;
		}
		if (lkl_ops->tls_set(hctx_key, ctx)) {
			lkl_ops->sem_free(ctx->sem);
			lkl_ops->mem_free(ctx);
			return -ENOMEM;
		}
		err = hctx_create(ctx);
		if (err && !__atomic_load_n(&lkl_halting, __ATOMIC_SEQ_CST)) {
			/* No task: the next call tries again. */
			lkl_ops->tls_set(hctx_key, NULL);
			lkl_ops->sem_free(ctx->sem);
			lkl_ops->mem_free(ctx);
			return err;
		}
	} else {
		err = hctx_enter(ctx);
	}
	if (err)
		return err;

	/* Halt (or a halt during a blocking call) leaves through here. */
	if (__builtin_setjmp(ctx->task->thread.exit_jb)) {
		if (nr == LKL_NR_HALT) {
			/* Returns once every kernel thread has left. */
			lkl_ops->sem_down(lkl_halt_sem);
			return 0;
		}
		return -ESHUTDOWN;
	}
	ret = lkl_run_call(nr, params);
	hctx_leave(ctx);
	return ret;
}

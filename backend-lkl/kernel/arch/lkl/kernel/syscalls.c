// SPDX-License-Identifier: GPL-2.0
/*
 * System calls from host threads.
 *
 * Each host thread that calls lkl_syscall() gets a kernel task of its own
 * (created by pid 1, sharing pid 1's file table, so descriptors are
 * process-wide). The host thread publishes the request, raises the wake
 * interrupt and waits on its semaphore; the interrupt wakes the task, the
 * task runs the call on its own host thread and posts the result. Blocking
 * calls therefore block only their own task, like in a normal process.
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

#define LKL_NR_CTX_EXIT	(LKL_NR_BASE + 100)

struct lkl_hctx {
	struct task_struct *task;	/* set by the task itself */
	void *done_sem;			/* the host thread waits here */
	long nr;
	long *params;
	long ret;
	int req;			/* a request is waiting for the task */
	int queued;			/* on the wake list */
	struct lkl_hctx *next;		/* wake list (host) / new list (kernel) */
};

static unsigned long hctx_key;
static struct lkl_hctx *wake_list;	/* pushed by host threads */
static struct lkl_hctx *new_list;	/* kernel context only */
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

static int host_task_fn(void *arg)
{
	struct lkl_hctx *ctx = arg;

	ignore_signals(current);
	ctx->task = current;
	for (;;) {
		long nr;

		for (;;) {
			set_current_state(TASK_INTERRUPTIBLE);
			if (__atomic_load_n(&ctx->req, __ATOMIC_ACQUIRE))
				break;
			schedule();
		}
		__set_current_state(TASK_RUNNING);
		ctx->req = 0;
		nr = ctx->nr;
		if (nr == LKL_NR_CTX_EXIT) {
			/*
			 * The host frees ctx once we answer, so ctx must be off
			 * the wake list first: let the wake interrupt run.
			 */
			while (__atomic_load_n(&ctx->queued, __ATOMIC_SEQ_CST)) {
				local_irq_disable();
				local_irq_enable();
				if (__atomic_load_n(&ctx->queued, __ATOMIC_SEQ_CST))
					schedule_timeout_uninterruptible(1);
			}
			lkl_ops->sem_up(ctx->done_sem);
			do_exit(0);
		}
		ctx->ret = lkl_run_call(nr, ctx->params);
		/* Nothing may touch ctx after this: the host owns it again. */
		lkl_ops->sem_up(ctx->done_sem);
	}
	return 0;
}

static irqreturn_t lkl_wake_irq(int irq, void *dev)
{
	struct lkl_hctx *list, *ctx;
	int new = 0;

	list = __atomic_exchange_n(&wake_list, NULL, __ATOMIC_ACQ_REL);
	while ((ctx = list)) {
		list = ctx->next;
		/* From here the host may queue ctx again (after a new request). */
		__atomic_store_n(&ctx->queued, 0, __ATOMIC_SEQ_CST);
		if (ctx->task) {
			wake_up_process(ctx->task);
		} else {
			ctx->next = new_list;
			new_list = ctx;
			new = 1;
		}
	}
	if (new)
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
		if (!READ_ONCE(new_list))
			schedule();
		__set_current_state(TASK_RUNNING);
		if (task_work_pending(current))
			task_work_run();

		local_irq_disable();
		ctx = new_list;
		new_list = NULL;
		local_irq_enable();
		while (ctx) {
			struct lkl_hctx *next = ctx->next;
			pid_t pid;

			pid = kernel_thread(host_task_fn, ctx, "lkl-host",
					    CLONE_FS | CLONE_FILES | SIGCHLD);
			if (pid < 0) {
				ctx->ret = pid;
				lkl_ops->sem_up(ctx->done_sem);
			}
			ctx = next;
		}
	}
}

static void hctx_submit(struct lkl_hctx *ctx, long nr, long *params)
{
	struct lkl_hctx *head;

	ctx->nr = nr;
	ctx->params = params;
	__atomic_store_n(&ctx->req, 1, __ATOMIC_SEQ_CST);
	/*
	 * Already on the wake list: the handler has yet to wake the task,
	 * and will do so after our request is visible.
	 */
	if (__atomic_exchange_n(&ctx->queued, 1, __ATOMIC_SEQ_CST))
		return;
	head = __atomic_load_n(&wake_list, __ATOMIC_RELAXED);
	do {
		ctx->next = head;
	} while (!__atomic_compare_exchange_n(&wake_list, &head, ctx, 1,
					       __ATOMIC_ACQ_REL,
					       __ATOMIC_RELAXED));
	lkl_trigger_irq(LKL_WAKE_IRQ);
}

static void hctx_destroy(void *data)
{
	struct lkl_hctx *ctx = data;

	if (ctx->task && !__atomic_load_n(&lkl_halting, __ATOMIC_SEQ_CST)) {
		hctx_submit(ctx, LKL_NR_CTX_EXIT, NULL);
		lkl_ops->sem_down(ctx->done_sem);
	}
	lkl_ops->sem_free(ctx->done_sem);
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
		ctx->done_sem = lkl_ops->sem_alloc(0);
		if (!ctx->done_sem) {
			lkl_ops->mem_free(ctx);
			return -ENOMEM;
		}
		if (lkl_ops->tls_set(hctx_key, ctx)) {
			lkl_ops->sem_free(ctx->done_sem);
			lkl_ops->mem_free(ctx);
			return -ENOMEM;
		}
	}

	hctx_submit(ctx, nr, params);
	if (nr == LKL_NR_HALT) {
		/* Returns once every kernel thread has left. */
		lkl_ops->sem_down(lkl_halt_sem);
		return 0;
	}
	lkl_ops->sem_down(ctx->done_sem);
	return ctx->ret;
}

// SPDX-License-Identifier: GPL-2.0
/*
 * The library kernel's one CPU, as a lock host threads take.
 *
 * Whoever holds the lock runs kernel code; the kernel's own task switches
 * pass it from thread to thread along with the tasks' semaphores (see
 * __switch_to), so it is only taken and released at the edges: a host
 * thread entering a system call (syscalls.c), a host thread raising an
 * interrupt while the CPU is free (irq.c), and the idle task going to
 * sleep (arch_cpu_idle).
 *
 * While the lock is free, the current task is "parked": either the idle
 * task, asleep in arch_cpu_idle, or a host task between two calls, which
 * has no kernel context on any stack (its host thread is back in the
 * program). The next holder runs as that task: it runs pending
 * interrupts, and if something became runnable it switches the parked
 * task out (a host task) or wakes the idle thread to do so (idle).
 *
 * The lock is a counter (0 free, 1 held, n > 1 held with n - 1 waiters)
 * plus a host semaphore the waiters sleep on; an unlock with waiters hands
 * the CPU straight to one of them.
 */
#include <linux/sched.h>
#include <linux/sched/stat.h>
#include <linux/sched/task.h>
#include "lkl.h"

static int cpu_count = 1;	/* the boot thread starts the kernel */
static void *cpu_wait_sem;
int lkl_idle_parked;

/* The host thread holding the CPU for a parked task leaves through here. */
long *lkl_borrow_jb;

int lkl_cpu_init(void)
{
	cpu_wait_sem = lkl_ops->sem_alloc(0);
	return cpu_wait_sem ? 0 : -ENOMEM;
}

/* Waits for the CPU; -ESHUTDOWN once the kernel halts. */
int lkl_cpu_lock(void)
{
	if (__atomic_fetch_add(&cpu_count, 1, __ATOMIC_SEQ_CST) != 0)
		lkl_ops->sem_down(cpu_wait_sem);
	if (__atomic_load_n(&lkl_halting, __ATOMIC_SEQ_CST))
		return -ESHUTDOWN;
	return 0;
}

int lkl_cpu_trylock(void)
{
	int free = 0;

	return __atomic_compare_exchange_n(&cpu_count, &free, 1, 0,
					   __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

void lkl_cpu_unlock(void)
{
	if (__atomic_fetch_sub(&cpu_count, 1, __ATOMIC_SEQ_CST) > 1)
		lkl_ops->sem_up(cpu_wait_sem);
}

/* Halt: let every host thread waiting for the CPU see it. */
void lkl_cpu_wake_waiters(void)
{
	int n = __atomic_load_n(&cpu_count, __ATOMIC_SEQ_CST);

	while (n-- > 0)
		lkl_ops->sem_up(cpu_wait_sem);
}

/*
 * A parked host task switched out sleeps in TASK_PARKED, which only its
 * caller's next call wakes (wake_up_state): the kernel allows spurious
 * wake-ups of tasks in the ordinary sleeping states (a mutex's wake_q,
 * for one), and a parked task woken while its caller is away would hold
 * the CPU until that caller comes back.
 */
void lkl_park_current(void)
{
	set_special_state(TASK_PARKED);
}

/*
 * The idle task is parked in arch_cpu_idle: give its host thread the CPU,
 * so that the idle loop itself schedules what became runnable.
 */
void lkl_cpu_hand_to_idle(void)
{
	lkl_idle_parked = 0;
	lkl_ops->sem_up(init_task.thread.sched_sem);
}

/*
 * schedule() on behalf of the parked host task that is current. Returns 1
 * if it is still current (and the CPU still ours), 0 if another task runs
 * now: __switch_to handed the CPU to that task's thread and jumped back
 * here, since the parked task has nothing to resume.
 */
int noinline lkl_borrow_schedule(void)
{
	long jb[5];

	if (__builtin_setjmp(jb))
		return 0;
	lkl_borrow_jb = jb;
	schedule();
	lkl_borrow_jb = NULL;
	return 1;
}

/*
 * Called with the CPU held and the current task parked: runs what the
 * host raised meanwhile, lets anything runnable run, and releases the CPU.
 */
void lkl_cpu_serve_and_release(void)
{
	for (;;) {
		lkl_run_pending_irqs();
		if (current == &init_task) {
			if (need_resched()) {
				lkl_cpu_hand_to_idle();
				return;
			}
		} else if (!single_task_running() || need_resched()) {
			/*
			 * Others can run (or the scheduler asks for a switch,
			 * such as RCU's for a quiescent state): the parked task
			 * leaves the run queue first, since a switch that left
			 * it runnable could later hand the CPU to a task whose
			 * caller is away.
			 */
			lkl_park_current();
			if (!lkl_borrow_schedule())
				return;
			__set_current_state(TASK_RUNNING);
		}
		lkl_cpu_unlock();
		if (!lkl_irq_pending() || !lkl_cpu_trylock())
			return;
	}
}

// SPDX-License-Identifier: GPL-2.0
/*
 * The library kernel's one CPU, as a lock host threads take.
 *
 * Whoever holds the lock runs kernel code; the kernel's own task switches
 * pass it from thread to thread along with the tasks' semaphores (see
 * __switch_to), so it is only taken and released at the edges: a host
 * thread entering a system call (syscalls.c), a host thread raising an
 * interrupt while the CPU is free (irq.c), and the idle task going to
 * sleep (arch_cpu_idle, or lkl_idle_run_here on a blocking task's thread).
 *
 * While the lock is free, the current task is "parked": either the idle
 * task or a host task between two calls, which has no kernel context on
 * any stack (its host thread is back in the program). The next holder
 * runs as that task: it runs pending interrupts, and if something became
 * runnable it switches the parked task out itself.
 *
 * The idle task's own context stays on the idle thread, asleep in
 * arch_cpu_idle, once a holder has switched the idle task out
 * (lkl_idle_borrowed). From then on, a task that blocks with nothing else
 * runnable runs the idle task's side of the switch on its own thread and
 * frees the CPU there (lkl_idle_run_here), so neither a block nor the
 * next call wakes the idle thread: a round trip through the kernel costs
 * the host thread switches its own waits need and no more.
 *
 * The lock is a counter (0 free, 1 held, n > 1 held with n - 1 waiters)
 * plus a host semaphore the waiters sleep on; an unlock with waiters hands
 * the CPU straight to one of them.
 */
#include <linux/sched.h>
#include <linux/sched/stat.h>
#include <linux/sched/task.h>
#include <linux/tick.h>
#include "lkl.h"

/* The idle loop's way into the scheduler (kernel/sched/idle.c). */
extern void schedule_idle(void);

static int cpu_count = 1;	/* the boot thread starts the kernel */
static void *cpu_wait_sem;
/*
 * The idle task was switched out by a host thread other than its own
 * (lkl_idle_borrow_schedule); its thread, still asleep in arch_cpu_idle,
 * finishes that switch when the idle task is next switched in.
 */
int lkl_idle_borrowed;

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
 * schedule() on behalf of the idle task, parked in arch_cpu_idle while
 * another host thread holds the CPU: that thread leaves the idle loop
 * the way do_idle does (tick_nohz_idle_exit, schedule_idle) instead of
 * waking the idle thread to do it, so the task that became runnable gets
 * the CPU with one host thread switch at most, none when it is the
 * caller's own. Returns 1 if the idle task is still current (nothing else
 * was runnable; the idle state is entered again), 0 if another task runs
 * now: __switch_to handed it the CPU and jumped back here.
 */
int noinline lkl_idle_borrow_schedule(void)
{
	long jb[5];
	int was_borrowed = lkl_idle_borrowed;

	if (__builtin_setjmp(jb))
		return 0;
	lkl_borrow_jb = jb;
	lkl_idle_borrowed = 1;
	tick_nohz_idle_exit();
	schedule_idle();
	lkl_idle_borrowed = was_borrowed;
	lkl_borrow_jb = NULL;
	local_irq_enable();
	tick_nohz_idle_enter();
	local_irq_disable();
	return 1;
}

/*
 * The idle thread, woken in arch_cpu_idle: if a borrower had switched the
 * idle task out, this is its switch back in. Finish it as schedule_idle's
 * return would (finish_task_switch, through schedule_tail) and go back
 * into the state the idle loop was in: tick_nohz_idle_enter'ed, with
 * interrupts disabled.
 */
void lkl_idle_resume(void)
{
	if (!lkl_idle_borrowed)
		return;
	lkl_idle_borrowed = 0;
	schedule_tail(lkl_last_switched());
	tick_nohz_idle_enter();
	local_irq_disable();
}

/*
 * Called by __switch_to on the thread of a task that switches to the idle
 * task while the idle thread sleeps switched out (lkl_idle_borrowed): the
 * idle task's side of the switch runs here instead of on the idle thread
 * (finish the switch, enter the idle state as do_idle does), then this
 * thread frees the CPU as arch_cpu_idle would. A task that blocks thus
 * costs no host thread switch; the idle thread stays asleep.
 */
void lkl_idle_run_here(void)
{
	schedule_tail(lkl_last_switched());
	tick_nohz_idle_enter();
	local_irq_disable();
	lkl_cpu_serve_and_release();
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
				if (!lkl_idle_borrow_schedule())
					return;
			} else if (tick_nohz_idle_got_tick() ||
				   tick_nohz_tick_stopped()) {
				/*
				 * As each turn of the idle loop does: the tick
				 * stops once a whole tick passed idle, and a
				 * stopped tick is re-programmed for what the
				 * interrupts queued (a timer_list timer), which
				 * nothing else would do.
				 */
				tick_nohz_idle_stop_tick();
			} else {
				tick_nohz_idle_retain_tick();
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

// SPDX-License-Identifier: GPL-2.0
/*
 * Interrupts raised by host threads.
 *
 * lkl_trigger_irq() sets a pending bit. If the CPU is free (the current
 * task parked, see cpu.c), the raising host thread takes it and runs the
 * handlers itself, as the parked task; otherwise the thread holding the
 * CPU runs them when it next enables interrupts or releases the CPU.
 */
#include <linux/hardirq.h>
#include <linux/interrupt.h>
#include <linux/irq.h>
#include <linux/irqdesc.h>
#include <linux/sched.h>
#include <linux/sched/task.h>
#include <asm/irq_regs.h>
#include "lkl.h"

static unsigned long irq_pending;
static unsigned long irqs_enabled;

/*
 * The register frame interrupt handlers see. There are no registers to
 * save, but the tick only runs the timer wheel (update_process_times)
 * when get_irq_regs() says it interrupted something: without this,
 * jiffies advance and no timer_list timer ever fires.
 */
static struct pt_regs lkl_irq_frame;

void lkl_trigger_irq(int irq)
{
	unsigned long old;

	if (irq <= 0 || irq >= NR_IRQS)
		return;
	if (__atomic_load_n(&lkl_halting, __ATOMIC_SEQ_CST))
		return;
	old = __atomic_fetch_or(&irq_pending, 1UL << irq, __ATOMIC_SEQ_CST);
	if (old & (1UL << irq))
		return;		/* already raised: whoever runs it runs ours */
	if (lkl_cpu_trylock())
		lkl_cpu_serve_and_release();
}

int lkl_irq_pending(void)
{
	return __atomic_load_n(&irq_pending, __ATOMIC_SEQ_CST) != 0;
}

static void run_irqs(void)
{
	unsigned long pending;

	struct pt_regs *old_regs;

	irqs_enabled = 0;
	old_regs = set_irq_regs(&lkl_irq_frame);
	while ((pending = __atomic_exchange_n(&irq_pending, 0,
					      __ATOMIC_SEQ_CST))) {
		irq_enter();
		while (pending) {
			int irq = __ffs(pending);

			pending &= ~(1UL << irq);
			generic_handle_irq(irq);
		}
		irq_exit();
	}
	set_irq_regs(old_regs);
	irqs_enabled = 1;
}

/* For the holder of the CPU while the current task is parked. */
void lkl_run_pending_irqs(void)
{
	unsigned long flags = irqs_enabled;

	if (__atomic_load_n(&irq_pending, __ATOMIC_SEQ_CST))
		run_irqs();
	irqs_enabled = flags;
}

unsigned long arch_local_save_flags(void)
{
	return irqs_enabled;
}

void arch_local_irq_restore(unsigned long flags)
{
	irqs_enabled = flags;
	if (flags && __atomic_load_n(&irq_pending, __ATOMIC_RELAXED))
		run_irqs();
}

/*
 * Called with interrupts disabled; returns with them disabled (6.3+).
 * Parks the idle task and frees the CPU; a host thread that finds
 * something to run switches the idle task out itself
 * (lkl_idle_borrow_schedule), and the idle task's semaphore wakes this
 * thread when the task is switched back in (lkl_idle_resume).
 */
void arch_cpu_idle(void)
{
	if (lkl_irq_pending())
		return;
	lkl_cpu_unlock();
	if (lkl_irq_pending() && lkl_cpu_trylock()) {
		if (!lkl_idle_borrowed)
			return;
		/*
		 * Between the unlock and the trylock another thread switched
		 * the idle task out: the CPU is a parked host task's now.
		 */
		lkl_cpu_serve_and_release();
	}
	lkl_ops->sem_down(init_task.thread.sched_sem);
	/* At halt the idle task may be switched out: leave as itself. */
	if (__atomic_load_n(&lkl_halting, __ATOMIC_SEQ_CST))
		lkl_thread_leave(&init_task);
	lkl_idle_resume();
}

void __init init_IRQ(void)
{
	int irq;

	for (irq = 1; irq < NR_IRQS; irq++)
		irq_set_chip_and_handler(irq, &dummy_irq_chip,
					 handle_simple_irq);
}

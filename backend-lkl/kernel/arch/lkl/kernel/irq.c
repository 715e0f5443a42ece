// SPDX-License-Identifier: GPL-2.0
/*
 * Interrupts raised by host threads.
 *
 * Host threads never run kernel code: lkl_trigger_irq() only sets a bit
 * and, if nothing was pending, wakes the idle task. Pending interrupts run
 * on whichever task's thread next enables interrupts, or in the idle loop.
 */
#include <linux/hardirq.h>
#include <linux/interrupt.h>
#include <linux/irq.h>
#include <linux/irqdesc.h>
#include <linux/sched.h>
#include <asm/irq_regs.h>
#include "lkl.h"

static unsigned long irq_pending;
static unsigned long irqs_enabled;
void *lkl_idle_sem;

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
	old = __atomic_fetch_or(&irq_pending, 1UL << irq, __ATOMIC_SEQ_CST);
	if (!old)
		lkl_ops->sem_up(lkl_idle_sem);
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

/* Called with interrupts disabled; returns with them disabled (6.3+). */
void arch_cpu_idle(void)
{
	while (!__atomic_load_n(&irq_pending, __ATOMIC_SEQ_CST)) {
		lkl_ops->sem_down(lkl_idle_sem);
		if (__atomic_load_n(&lkl_halting, __ATOMIC_SEQ_CST))
			lkl_thread_leave(current);
	}
}

void __init init_IRQ(void)
{
	int irq;

	for (irq = 1; irq < NR_IRQS; irq++)
		irq_set_chip_and_handler(irq, &dummy_irq_chip,
					 handle_simple_irq);
}

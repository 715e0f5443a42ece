// SPDX-License-Identifier: GPL-2.0
/* Clocks from the host: a nanosecond clocksource and a one-shot timer. */
#include <linux/clockchips.h>
#include <linux/clocksource.h>
#include <linux/interrupt.h>
#include <linux/sched/clock.h>
#include <linux/timekeeping.h>
#include <linux/time64.h>
#include "lkl.h"

unsigned long long sched_clock(void)
{
	return lkl_ops ? lkl_ops->time_ns() : 0;
}

void read_persistent_clock64(struct timespec64 *ts)
{
	*ts = ns_to_timespec64(lkl_ops->realtime_ns());
}

static u64 lkl_clock_read(struct clocksource *cs)
{
	return lkl_ops->time_ns();
}

static struct clocksource lkl_clocksource = {
	.name = "lkl",
	.rating = 400,
	.read = lkl_clock_read,
	.flags = CLOCK_SOURCE_IS_CONTINUOUS | CLOCK_SOURCE_VALID_FOR_HRES,
	.mask = CLOCKSOURCE_MASK(64),
};

static int lkl_timer_next(unsigned long delta, struct clock_event_device *evt)
{
	lkl_ops->timer_set(delta ? delta : 1);
	return 0;
}

static int lkl_timer_shutdown(struct clock_event_device *evt)
{
	lkl_ops->timer_set(0);
	return 0;
}

static struct clock_event_device lkl_clockevent = {
	.name = "lkl",
	.features = CLOCK_EVT_FEAT_ONESHOT,
	.set_next_event = lkl_timer_next,
	.set_state_shutdown = lkl_timer_shutdown,
	.set_state_oneshot = lkl_timer_shutdown,
	.rating = 400,
};

static irqreturn_t lkl_timer_irq(int irq, void *dev)
{
	if (lkl_clockevent.event_handler)
		lkl_clockevent.event_handler(&lkl_clockevent);
	return IRQ_HANDLED;
}

void __init time_init(void)
{
	int err;

	err = request_irq(LKL_TIMER_IRQ, lkl_timer_irq, IRQF_TIMER, "timer",
			  NULL);
	if (err)
		panic("lkl: cannot get the timer interrupt: %d\n", err);
	clocksource_register_hz(&lkl_clocksource, NSEC_PER_SEC);
	lkl_clockevent.cpumask = cpumask_of(0);
	clockevents_config_and_register(&lkl_clockevent, NSEC_PER_SEC, 1,
					ULONG_MAX);
}

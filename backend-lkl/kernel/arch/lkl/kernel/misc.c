// SPDX-License-Identifier: GPL-2.0
/* Busy-wait delays on the host clock. */
#include <linux/delay.h>
#include <linux/export.h>
#include <linux/jiffies.h>
#include "lkl.h"

static void lkl_spin_ns(unsigned long long ns)
{
	unsigned long long end = lkl_ops->time_ns() + ns;

	while (lkl_ops->time_ns() < end)
		;
}

void __delay(unsigned long loops)
{
	lkl_spin_ns(loops);
}

void __udelay(unsigned long usecs)
{
	lkl_spin_ns(usecs * 1000ULL);
}

void __ndelay(unsigned long nsecs)
{
	lkl_spin_ns(nsecs);
}

void __const_udelay(unsigned long xloops)
{
	/* xloops = usecs * 2^32 / 10^6 (see asm-generic/delay.h) */
	lkl_spin_ns(xloops * 1000ULL / 0x10C7);
}

/* Delays use the host clock, so there is no loop to calibrate. */
void calibrate_delay(void)
{
	loops_per_jiffy = 1000000000 / HZ;
}

// SPDX-License-Identifier: GPL-2.0
/*
 * Time from the host: a clocksource on its monotonic clock, a one-shot clockevent on a
 * host timer whose expiry raises the timer interrupt, and delays that wait on the
 * host clock.
 */
#include <linux/init.h>
#include <linux/clocksource.h>
#include <linux/clockchips.h>
#include <linux/interrupt.h>
#include <linux/sched/clock.h>
#include <linux/delay.h>
#include <linux/timekeeping.h>
#include <asm/host_ops.h>

#define LKL_TIMER_IRQ 1

static u64 lkl_clock_read(struct clocksource *cs)
{
	return lkl_ops->time();
}

static struct clocksource lkl_clocksource = {
	.name	= "lkl",
	.rating	= 400,
	.read	= lkl_clock_read,
	.mask	= CLOCKSOURCE_MASK(64),
	.flags	= CLOCK_SOURCE_IS_CONTINUOUS,
};

unsigned long long notrace sched_clock(void)
{
	return lkl_ops->time();
}

void read_persistent_clock64(struct timespec64 *ts)
{
	*ts = ns_to_timespec64(lkl_ops->realtime());
}

static struct lkl_timer *lkl_timer;

static int lkl_timer_next(unsigned long delta, struct clock_event_device *evt)
{
	lkl_ops->timer_set_oneshot(lkl_timer, delta);
	return 0;
}

static int lkl_timer_shutdown(struct clock_event_device *evt)
{
	lkl_ops->timer_cancel(lkl_timer);
	return 0;
}

static struct clock_event_device lkl_clockevent = {
	.name			= "lkl",
	.features		= CLOCK_EVT_FEAT_ONESHOT,
	.rating			= 400,
	.set_next_event		= lkl_timer_next,
	.set_state_shutdown	= lkl_timer_shutdown,
	.set_state_oneshot_stopped = lkl_timer_shutdown,
};

static irqreturn_t lkl_timer_irq(int irq, void *dev)
{
	struct clock_event_device *evt = dev;

	evt->event_handler(evt);
	return IRQ_HANDLED;
}

static void lkl_timer_expired(void *arg)
{
	lkl_trigger_irq(LKL_TIMER_IRQ);
}

void __init time_init(void)
{
	lkl_timer = lkl_ops->timer_alloc(lkl_timer_expired, NULL);
	if (!lkl_timer)
		panic("lkl: no host timer");
	if (request_irq(LKL_TIMER_IRQ, lkl_timer_irq, IRQF_TIMER, "timer", &lkl_clockevent))
		panic("lkl: cannot request the timer interrupt");
	clocksource_register_hz(&lkl_clocksource, NSEC_PER_SEC);
	clockevents_config_and_register(&lkl_clockevent, NSEC_PER_SEC, 1, ULONG_MAX);
}

void calibrate_delay(void)
{
	/* Delays below wait on the host clock, so no loop count is ever calibrated. */
	loops_per_jiffy = 1000000;
}

static void lkl_wait_ns(unsigned long long ns)
{
	unsigned long long end = lkl_ops->time() + ns;

	while (lkl_ops->time() < end)
		cpu_relax();
}

void __delay(unsigned long loops)
{
	lkl_wait_ns(loops);
}

void __const_udelay(unsigned long xloops)
{
	/* delay.h scales microseconds by 2^32 / 10^6 (0x10c7) for constant delays. */
	lkl_wait_ns(((unsigned long long)xloops * NSEC_PER_SEC) >> 32);
}

void __udelay(unsigned long usecs)
{
	lkl_wait_ns((unsigned long long)usecs * 1000);
}

void __ndelay(unsigned long nsecs)
{
	lkl_wait_ns(nsecs);
}

// SPDX-License-Identifier: GPL-2.0
/*
 * dropshim MPTCP scheduler "costaware", for Drop Computing devices whose
 * interfaces cost differently (metered LTE against free Wi-Fi, or energy).
 *
 * A subflow's cost is the link group of the interface it leaves through
 * (`ip link set dev X group N`; 0 when unset, lower is cheaper). Subflows
 * of one cost form a tier. Data goes to the cheapest tier; a costlier tier
 * gets data only while every cheaper one is saturated, so a costly
 * interface carries only what the cheap ones cannot.
 *
 * Within a tier the choice is the kernel default's: the subflow whose
 * queued data leaves soonest at its (averaged) pacing rate, and if that
 * one has no send-buffer room the data waits for it rather than going to
 * a slower subflow of the same cost, whose queue would hold it back at the
 * receiver. With every cost equal, costaware is the default scheduler.
 *
 * A tier is saturated when that subflow has no send-buffer room or holds
 * more unsent data than a congestion window (at least two bursts, so slow
 * start alone does not count): a link that keeps up with the sender never
 * reaches that point; a saturated one does. When every tier is saturated
 * the cheapest one still gets the data, as soon as it has room.
 * Backup subflows are used only when no regular one is active.
 */
#define pr_fmt(fmt) "MPTCP costaware: " fmt

#include <linux/init.h>
#include "dropshim_sched.h"

static bool costaware_saturated(const struct sock *ssk)
{
	const struct tcp_sock *tp = tcp_sk(ssk);
	u32 window_bytes = tcp_snd_cwnd(tp) * tp->mss_cache;

	return !sk_stream_memory_free(ssk) ||
	       dropshim_unsent(ssk) >= max_t(u32, window_bytes, 2 * DROPSHIM_SCHED_BURST);
}

/* The default's pick among the active subflows (regular or backup) of the
 * cheapest cost not below min_cost: *cost is set to that cost. NULL when
 * no such subflow exists.
 */
static struct sock *costaware_tier_best(struct mptcp_sock *msk, bool backup,
					u64 min_cost, u32 *cost)
{
	struct mptcp_subflow_context *subflow;
	struct sock *best = NULL;
	u64 best_linger = U64_MAX;
	u32 tier = U32_MAX;

	mptcp_for_each_subflow(msk, subflow) {
		struct sock *ssk = mptcp_subflow_tcp_sock(subflow);
		u32 c;
		u64 linger;

		if (dropshim_subflow_backup(subflow) != backup ||
		    !mptcp_subflow_active(subflow))
			continue;
		c = dropshim_subflow_cost(ssk);
		if (c < min_cost || c > tier)
			continue;
		linger = dropshim_linger(subflow);
		if (linger == U64_MAX)
			continue;
		if (c < tier || linger < best_linger) {
			best = ssk;
			best_linger = linger;
			tier = c;
		}
	}
	*cost = tier;
	return best;
}

static bool costaware_any_active(struct mptcp_sock *msk, bool backup)
{
	struct mptcp_subflow_context *subflow;

	mptcp_for_each_subflow(msk, subflow) {
		if (dropshim_subflow_backup(subflow) == backup &&
		    mptcp_subflow_active(subflow))
			return true;
	}
	return false;
}

static struct sock *costaware_pick(struct mptcp_sock *msk, bool backup)
{
	struct sock *cheapest = NULL, *ssk;
	u64 min_cost = 0;
	u32 cost;

	while (min_cost <= U32_MAX) {
		ssk = costaware_tier_best(msk, backup, min_cost, &cost);
		if (!ssk)
			break;
		if (!cheapest)
			cheapest = ssk;
		if (!costaware_saturated(ssk))
			return ssk;
		min_cost = (u64)cost + 1;
	}
	/* every tier saturated: the cheapest one, once it has room */
	if (cheapest && sk_stream_memory_free(cheapest))
		return cheapest;
	return NULL;
}

/* Reinjection also prefers the cheapest active subflow with room. */
static struct sock *costaware_pick_reinject(struct mptcp_sock *msk)
{
	struct mptcp_subflow_context *subflow;
	struct sock *best = NULL;
	u32 best_cost = U32_MAX;

	mptcp_for_each_subflow(msk, subflow) {
		struct sock *ssk = mptcp_subflow_tcp_sock(subflow);
		u32 cost;

		if (!dropshim_subflow_can_queue(subflow))
			continue;
		cost = dropshim_subflow_cost(ssk);
		if (cost < best_cost) {
			best = ssk;
			best_cost = cost;
		}
	}
	return best;
}

static int costaware_get_subflow(struct mptcp_sock *msk,
				 struct mptcp_sched_data *data)
{
	struct sock *ssk;

	if (data->reinject) {
		/* the kernel's choice first: it also marks stale subflows */
		if (dropshim_schedule_reinject(msk))
			return -EINVAL;
		ssk = costaware_pick_reinject(msk);
		if (ssk) {
			struct mptcp_subflow_context *subflow;

			mptcp_for_each_subflow(msk, subflow)
				mptcp_subflow_set_scheduled(subflow, false);
			mptcp_subflow_set_scheduled(mptcp_subflow_ctx(ssk), true);
		}
		return 0;
	}

	ssk = costaware_pick(msk, !costaware_any_active(msk, false));
	if (!ssk)
		return -EINVAL;

	dropshim_schedule_paced(msk, ssk);
	return 0;
}

static struct mptcp_sched_ops costaware_sched = {
	.get_subflow	= costaware_get_subflow,
	.name		= "costaware",
	.owner		= THIS_MODULE,
};

static int __init costaware_register(void)
{
	return mptcp_register_scheduler(&costaware_sched);
}
late_initcall(costaware_register);

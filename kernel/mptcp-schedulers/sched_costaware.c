// SPDX-License-Identifier: GPL-2.0
/*
 * dropshim MPTCP scheduler "costaware", for Drop Computing devices whose
 * interfaces cost differently (metered LTE against free Wi-Fi, or energy).
 *
 * A subflow's cost is the link group of the interface it leaves through
 * (`ip link set dev X group N`; 0 when unset, lower is cheaper). Data goes
 * to the cheapest subflows that can take more; a costlier subflow gets data
 * only while every cheaper one is full, so a costly interface carries only
 * what the cheap ones cannot.
 *
 * A subflow "can take more" while it is active (joined, not stale), has
 * send-buffer room, and is not holding more unsent data than a congestion
 * window (at least two bursts, so slow start alone does not count as
 * full): a link that keeps up with the sender never reaches that point; a
 * saturated one does.
 * Among subflows of the same cost the one whose queued data leaves
 * soonest at its pacing rate wins (the kernel default's measure), so a
 * slow link of the same cost is not handed as much as a fast one.
 * Backup subflows are used only when no regular one is active.
 */
#define pr_fmt(fmt) "MPTCP costaware: " fmt

#include <linux/init.h>
#include <linux/math64.h>
#include "dropshim_sched.h"

static bool costaware_has_room(const struct sock *ssk)
{
	const struct tcp_sock *tp = tcp_sk(ssk);
	u32 window_bytes = tcp_snd_cwnd(tp) * tp->mss_cache;

	return dropshim_unsent(ssk) < max_t(u32, window_bytes, 2 * DROPSHIM_SCHED_BURST);
}

/* How long the data the subflow holds takes to leave at its pacing rate,
 * in 2^-32 seconds: what the kernel's default scheduler weighs.
 */
static u64 costaware_linger(const struct sock *ssk)
{
	u64 pacing = max_t(u64, READ_ONCE(ssk->sk_pacing_rate), 1);

	return div64_u64((u64)READ_ONCE(ssk->sk_wmem_queued) << 32, pacing);
}

static struct sock *costaware_pick(struct mptcp_sock *msk, bool backup,
				   bool *any_active)
{
	struct mptcp_subflow_context *subflow;
	struct sock *best = NULL;
	u32 best_cost = U32_MAX;
	u64 best_linger = U64_MAX;

	mptcp_for_each_subflow(msk, subflow) {
		struct sock *ssk = mptcp_subflow_tcp_sock(subflow);
		u32 cost;
		u64 linger;

		if (dropshim_subflow_backup(subflow) != backup)
			continue;
		if (!mptcp_subflow_active(subflow))
			continue;
		*any_active = true;
		if (!sk_stream_memory_free(ssk) || !costaware_has_room(ssk))
			continue;
		cost = dropshim_subflow_cost(ssk);
		linger = costaware_linger(ssk);
		if (cost < best_cost ||
		    (cost == best_cost && linger < best_linger)) {
			best = ssk;
			best_cost = cost;
			best_linger = linger;
		}
	}
	return best;
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
	bool any_active = false;
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

	ssk = costaware_pick(msk, false, &any_active);
	if (!ssk && !any_active)
		ssk = costaware_pick(msk, true, &any_active);
	if (!ssk)
		return -EINVAL;

	dropshim_schedule(msk, ssk);
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

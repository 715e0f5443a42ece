// SPDX-License-Identifier: GPL-2.0
/*
 * dropshim MPTCP scheduler "blest": blocking estimation, after the
 * description in S. Ferlin, O. Alay, O. Mehani, R. Boreli, "BLEST:
 * Blocking Estimation-based MPTCP Scheduler for Heterogeneous Networks",
 * IFIP Networking 2016.
 *
 * The fastest subflow (lowest smoothed RTT) is preferred. When its
 * congestion window is full, a slower subflow with window room may be used,
 * but only if the data sent there will not leave the fast subflow blocked
 * on the connection-level send window while that data is in flight. During
 * one RTT of the slow subflow the fast one can send about
 *
 *   X = MSS_f * (CWND_f + (RTT_s/RTT_f - 1) / 2) * RTT_s/RTT_f
 *
 * bytes (its window grows by about one segment per RTT). The slow subflow
 * is skipped when lambda * X exceeds the send window left once the slow
 * subflow's in-flight and queued data plus one more segment are taken out
 * of it, and it is never given more than its congestion window can send
 * at once. The
 * paper adapts lambda; here it is fixed at 1.25 (a safety margin). When
 * the slow subflow is skipped, the data is queued on the fast subflow,
 * which sends it as its window opens: the behaviour of waiting for it.
 */
#define pr_fmt(fmt) "MPTCP blest: " fmt

#include <linux/init.h>
#include <linux/math64.h>
#include "dropshim_sched.h"

/* lambda = BLEST_LAMBDA_NUM / BLEST_LAMBDA_DEN */
#define BLEST_LAMBDA_NUM	5
#define BLEST_LAMBDA_DEN	4

/* Fixed point for the RTT ratio. */
#define BLEST_SHIFT		10

static bool blest_slow_would_block(struct mptcp_sock *msk, struct sock *fast,
				   struct sock *slow)
{
	const struct tcp_sock *tf = tcp_sk(fast), *ts = tcp_sk(slow);
	u32 rtt_f = max_t(u32, dropshim_srtt_us(fast), 1);
	u32 rtt_s = max_t(u32, dropshim_srtt_us(slow), 1);
	u64 ratio = div_u64((u64)rtt_s << BLEST_SHIFT, rtt_f);
	u64 segs, fast_bytes, slow_bytes, window;

	/* CWND_f + (ratio - 1) / 2, in BLEST_SHIFT fixed point */
	segs = ((u64)tcp_snd_cwnd(tf) << BLEST_SHIFT) +
	       (ratio > (1 << BLEST_SHIFT) ? (ratio - (1 << BLEST_SHIFT)) / 2 : 0);
	fast_bytes = (segs * ratio * tf->mss_cache) >> (2 * BLEST_SHIFT);
	fast_bytes = div_u64(fast_bytes * BLEST_LAMBDA_NUM, BLEST_LAMBDA_DEN);

	window = READ_ONCE(msk->wnd_end) - READ_ONCE(msk->snd_una);
	slow_bytes = (u64)(tcp_packets_in_flight(ts) + 1) * ts->mss_cache +
		     dropshim_unsent(slow);
	if (slow_bytes >= window)
		return true;
	return fast_bytes > window - slow_bytes;
}

static int blest_get_subflow(struct mptcp_sock *msk,
			     struct mptcp_sched_data *data)
{
	struct mptcp_subflow_context *subflow;
	struct sock *fast = NULL, *slow = NULL;
	bool backup_pass;

	if (data->reinject)
		return dropshim_schedule_reinject(msk);

	/* The fastest active subflow, whether or not it can take data now:
	 * a fast subflow with a full send buffer stays the fast one, so that
	 * a slower one is never handed data without the blocking estimate.
	 * Regular subflows first; backups only when none of them is active.
	 */
	for (backup_pass = false; ; backup_pass = true) {
		mptcp_for_each_subflow(msk, subflow) {
			struct sock *ssk = mptcp_subflow_tcp_sock(subflow);

			if (dropshim_subflow_backup(subflow) != backup_pass ||
			    !mptcp_subflow_active(subflow))
				continue;
			if (!fast || dropshim_srtt_us(ssk) < dropshim_srtt_us(fast))
				fast = ssk;
		}
		if (fast || backup_pass)
			break;
	}
	if (!fast)
		return -EINVAL;

	if (sk_stream_memory_free(fast) && dropshim_cwnd_room_bytes(fast) > 0) {
		dropshim_schedule(msk, fast);
		return 0;
	}

	/* The fastest among the others whose congestion window has room
	 * beyond what they already hold. A slow subflow gets no more than
	 * that room: data queued on it beyond its window would wait there
	 * while the fast subflow could have sent it.
	 */
	mptcp_for_each_subflow(msk, subflow) {
		struct sock *ssk = mptcp_subflow_tcp_sock(subflow);

		if (ssk == fast ||
		    dropshim_subflow_backup(subflow) != backup_pass ||
		    !dropshim_subflow_can_queue(subflow) ||
		    dropshim_cwnd_room_bytes(ssk) <= 0)
			continue;
		if (!slow || dropshim_srtt_us(ssk) < dropshim_srtt_us(slow))
			slow = ssk;
	}
	if (slow && !blest_slow_would_block(msk, fast, slow)) {
		s64 room = dropshim_cwnd_room_bytes(slow);

		dropshim_schedule_at_most(msk, slow, max_t(s64, room, 1));
		return 0;
	}

	/* Wait for the fast subflow: queue on it while its send buffer has
	 * room; otherwise take nothing now (its next ACK pushes again).
	 */
	if (!sk_stream_memory_free(fast))
		return -EINVAL;
	dropshim_schedule(msk, fast);
	return 0;
}

static struct mptcp_sched_ops blest_sched = {
	.get_subflow	= blest_get_subflow,
	.name		= "blest",
	.owner		= THIS_MODULE,
};

static int __init blest_register(void)
{
	return mptcp_register_scheduler(&blest_sched);
}
late_initcall(blest_register);

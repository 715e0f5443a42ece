/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers shared by dropshim's MPTCP packet schedulers (roundrobin, blest,
 * costaware): which subflows can take data now, how a choice is recorded,
 * and the reinjection choice they all leave to the kernel's own logic.
 */
#ifndef __DROPSHIM_SCHED_H
#define __DROPSHIM_SCHED_H

#include <linux/math64.h>
#include <linux/netdevice.h>
#include <net/dst.h>
#include <net/tcp.h>
#include "protocol.h"

/* Bytes a scheduler hands to one subflow before it is asked again
 * (the same order as the kernel's own burst: one 64 KiB TSO frame).
 */
#define DROPSHIM_SCHED_BURST	(64 * 1024)

/* The subflow may carry data (joined, established, not stale) and its
 * socket has send-buffer room for more.
 */
static inline bool dropshim_subflow_can_queue(struct mptcp_subflow_context *subflow)
{
	struct sock *ssk = mptcp_subflow_tcp_sock(subflow);

	return mptcp_subflow_active(subflow) && sk_stream_memory_free(ssk);
}

static inline bool dropshim_subflow_backup(const struct mptcp_subflow_context *subflow)
{
	return subflow->backup || subflow->request_bkup;
}

/* Bytes the congestion window can still take once the data already
 * queued on the subflow is sent: negative or 0 when it has no room.
 */
static inline s64 dropshim_cwnd_room_bytes(const struct sock *ssk)
{
	const struct tcp_sock *tp = tcp_sk(ssk);
	s64 segs = (s64)tcp_snd_cwnd(tp) - tcp_packets_in_flight(tp);

	return segs * tp->mss_cache - (s64)(READ_ONCE(tp->write_seq) - tp->snd_nxt);
}

/* Bytes queued on the subflow that it has not sent yet. */
static inline u32 dropshim_unsent(const struct sock *ssk)
{
	const struct tcp_sock *tp = tcp_sk(ssk);

	return READ_ONCE(tp->write_seq) - tp->snd_nxt;
}

/* Smoothed RTT in microseconds; 0 before the first sample. */
static inline u32 dropshim_srtt_us(const struct sock *ssk)
{
	return tcp_sk(ssk)->srtt_us >> 3;
}

/* Marks ssk for the next push and bounds how much it gets at once by the
 * peer's window and by limit (at most DROPSHIM_SCHED_BURST).
 */
static inline void dropshim_schedule_at_most(struct mptcp_sock *msk,
					     struct sock *ssk, u64 limit)
{
	u64 wnd_end = READ_ONCE(msk->wnd_end);
	u64 room = after64(wnd_end, msk->snd_nxt) ? wnd_end - msk->snd_nxt : 0;

	msk->snd_burst = min3(limit, (u64)DROPSHIM_SCHED_BURST, room);
	mptcp_subflow_set_scheduled(mptcp_subflow_ctx(ssk), true);
}

/* dropshim_schedule_at_most() with the full burst. */
static inline void dropshim_schedule(struct mptcp_sock *msk, struct sock *ssk)
{
	dropshim_schedule_at_most(msk, ssk, DROPSHIM_SCHED_BURST);
}

/* How long the data the subflow holds takes to leave at its averaged
 * pacing rate, in 2^-32 seconds (the kernel default scheduler's measure);
 * U64_MAX while the subflow has no pacing rate yet.
 */
static inline u64 dropshim_linger(struct mptcp_subflow_context *subflow)
{
	struct sock *ssk = mptcp_subflow_tcp_sock(subflow);

	if (unlikely(!subflow->avg_pacing_rate))
		subflow->avg_pacing_rate = READ_ONCE(ssk->sk_pacing_rate);
	if (!subflow->avg_pacing_rate)
		return U64_MAX;
	return div_u64((u64)READ_ONCE(ssk->sk_wmem_queued) << 32,
		       subflow->avg_pacing_rate);
}

/* dropshim_schedule(), and the averaged pacing rate of ssk moves toward
 * its current one in proportion to the burst against what ssk already
 * holds, as the default scheduler does for the subflow it picks.
 */
static inline void dropshim_schedule_paced(struct mptcp_sock *msk, struct sock *ssk)
{
	struct mptcp_subflow_context *subflow = mptcp_subflow_ctx(ssk);
	u64 wmem = READ_ONCE(ssk->sk_wmem_queued);
	u64 burst;

	dropshim_schedule(msk, ssk);
	burst = msk->snd_burst;
	if (burst && subflow->avg_pacing_rate)
		subflow->avg_pacing_rate =
			div64_u64((u64)subflow->avg_pacing_rate * wmem +
				  READ_ONCE(ssk->sk_pacing_rate) * burst,
				  burst + wmem);
}

/* Reinjection (data a stale or lost subflow held) goes where the kernel's
 * default scheduler would send it.
 */
static inline int dropshim_schedule_reinject(struct mptcp_sock *msk)
{
	struct sock *ssk = mptcp_subflow_get_retrans(msk);

	if (!ssk)
		return -EINVAL;
	mptcp_subflow_set_scheduled(mptcp_subflow_ctx(ssk), true);
	return 0;
}

/* The cost of the interface a subflow leaves through: its link group
 * (`ip link set dev X group N`), 0 when the route is not known yet.
 */
static inline u32 dropshim_subflow_cost(const struct sock *ssk)
{
	const struct net_device *dev = NULL;
	const struct dst_entry *dst;
	u32 cost = 0;

	rcu_read_lock();
	dst = __sk_dst_get((struct sock *)ssk);
	if (dst)
		dev = dst->dev;
	else if (ssk->sk_bound_dev_if)
		dev = dev_get_by_index_rcu(sock_net(ssk), ssk->sk_bound_dev_if);
	if (dev)
		cost = READ_ONCE(dev->group);
	rcu_read_unlock();
	return cost;
}

#endif /* __DROPSHIM_SCHED_H */

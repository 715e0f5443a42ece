// SPDX-License-Identifier: GPL-2.0
/*
 * dropshim MPTCP scheduler "redundant": every active subflow carries every
 * byte of the connection, so a lost or cut path costs no retransmission
 * delay while another path is up. The scheduler picks the subflow new data
 * leaves on first (one with send-buffer room, the lowest RTT); the core
 * then sends the same range again on every other active subflow (the
 * redundant push of 0002-mptcp-redundant-push.patch, enabled by
 * msk->dropshim_redundant). New data waits until every live subflow has
 * carried what went before, and goes out only as far as each has room to
 * queue its copy at once, so the connection goes at the pace of its
 * slowest path; a subflow that looks cut (data outstanding, no ACK for an
 * RTO) stops holding it back, and so does one back from a cut as long as
 * the peer has acknowledged all it holds through other subflows. Backup
 * subflows are used only while no other subflow is active. Of several
 * subflows over one address pair (ndiffports) only the first carries a
 * copy: the others cross the same links.
 */
#define pr_fmt(fmt) "MPTCP redundant: " fmt

#include <linux/init.h>
#include "dropshim_sched.h"

static void redundant_init(struct mptcp_sock *msk)
{
	WRITE_ONCE(msk->dropshim_redundant, true);
}

static void redundant_release(struct mptcp_sock *msk)
{
	WRITE_ONCE(msk->dropshim_redundant, false);
}

/* The subflow has not yet carried everything sent so far (what the peer
 * has acknowledged at the connection level counts as carried).
 */
static bool redundant_behind(const struct mptcp_sock *msk,
			     const struct mptcp_subflow_context *subflow)
{
	return before64(dropshim_red_from(msk, subflow), msk->snd_nxt);
}

/* Data outstanding and no ACK for longer than the retransmission timeout
 * (before its backoff, so that the answer does not flip back as the timer
 * backs off): the path looks cut. Such a subflow holds nothing back (the
 * kernel marks it stale a little later, after a few such timeouts).
 */
static bool redundant_looks_dead(const struct sock *ssk)
{
	const struct inet_connection_sock *icsk = inet_csk(ssk);
	const struct tcp_sock *tp = tcp_sk(ssk);
	u32 silent = tcp_jiffies32 - READ_ONCE(tp->rcv_tstamp);
	u32 rto = max_t(u32, icsk->icsk_rto >> min_t(u8, icsk->icsk_backoff, 31),
			TCP_RTO_MIN);

	return READ_ONCE(tp->packets_out) && silent > rto;
}

/* The subflow looked cut since it last carried everything, and all it
 * holds (up to dropshim_red_seq) the peer has acknowledged through other
 * subflows meanwhile: its queue is stale, resent in slow start after the
 * path came back. Waiting for it stalled the connection for as long as
 * that took (0.6-0.9 s after a 2 s cut at 100 Mbit/s); it gets its copies
 * as its queue drains, and holds new data back again once it holds some
 * the peer still lacks.
 */
static bool redundant_back_from_cut(const struct mptcp_sock *msk,
				    const struct mptcp_subflow_context *subflow)
{
	return READ_ONCE(subflow->dropshim_red_cut) &&
	       READ_ONCE(subflow->dropshim_red_set) &&
	       !after64(READ_ONCE(subflow->dropshim_red_seq), READ_ONCE(msk->snd_una));
}

/* a is a better first carrier of new data than b */
static bool redundant_better(const struct mptcp_sock *msk,
			     struct mptcp_subflow_context *a,
			     struct mptcp_subflow_context *b)
{
	bool a_current = !redundant_behind(msk, a);
	bool b_current = !redundant_behind(msk, b);

	if (a_current != b_current)
		return a_current;
	return dropshim_srtt_us(mptcp_subflow_tcp_sock(a)) <
	       dropshim_srtt_us(mptcp_subflow_tcp_sock(b));
}

static int redundant_get_subflow(struct mptcp_sock *msk,
				 struct mptcp_sched_data *data)
{
	struct mptcp_subflow_context *subflow, *best = NULL;
	u64 room = DROPSHIM_SCHED_BURST;
	bool any_active = false;
	bool copying;
	int pass;

	if (data->reinject)
		return dropshim_schedule_reinject(msk);
	/* Until a second subflow has joined (or data went out again at the
	 * connection level), the core makes no copies and records nothing
	 * per subflow (mptcp_redundant()): new data waits for nothing. The
	 * rules below would take the lone subflow for one that is behind,
	 * and hold each burst until the peer acknowledged the one before.
	 */
	copying = !READ_ONCE(msk->allow_infinite_fallback);

	/* pass 0: regular subflows; pass 1: backups, if no regular one is up */
	for (pass = 0; pass < 2 && !any_active; pass++) {
		mptcp_for_each_subflow(msk, subflow) {
			struct sock *ssk = mptcp_subflow_tcp_sock(subflow);

			if (dropshim_subflow_backup(subflow) != (pass == 1))
				continue;
			if (!mptcp_subflow_active(subflow)) {
				if (subflow->stale)
					WRITE_ONCE(subflow->dropshim_red_cut, true);
				continue;
			}
			any_active = true;
			/* the path's first subflow carries its copy */
			if (dropshim_red_twin(msk, subflow))
				continue;
			if (!copying)
				goto candidate;
			if (!redundant_behind(msk, subflow))
				WRITE_ONCE(subflow->dropshim_red_cut, false);
			if (redundant_looks_dead(ssk)) {
				WRITE_ONCE(subflow->dropshim_red_cut, true);
				goto candidate;
			}
			if (redundant_back_from_cut(msk, subflow))
				goto candidate;
			/* new data waits for a live subflow still copying */
			if (redundant_behind(msk, subflow))
				return -EINVAL;
			/* and goes out only as far as every live subflow has
			 * room for its copy (half the free space: the rest
			 * pays for buffer overhead), so that each copy is
			 * queued at once, before an acknowledgement through
			 * another subflow frees the data
			 */
			room = min_t(u64, room,
				     max_t(int, sk_stream_wspace(ssk), 0) / 2);
			if (room < tcp_sk(ssk)->mss_cache)
				return -EINVAL;
candidate:
			if (!sk_stream_memory_free(ssk))
				continue;
			if (!best || redundant_better(msk, subflow, best))
				best = subflow;
		}
	}
	if (!best)
		return -EINVAL;

	dropshim_schedule_at_most(msk, mptcp_subflow_tcp_sock(best), room);
	return 0;
}

static struct mptcp_sched_ops redundant_sched = {
	.get_subflow	= redundant_get_subflow,
	.init		= redundant_init,
	.release	= redundant_release,
	.name		= "redundant",
	.owner		= THIS_MODULE,
};

static int __init redundant_register(void)
{
	return mptcp_register_scheduler(&redundant_sched);
}
late_initcall(redundant_register);

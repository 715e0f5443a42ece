// SPDX-License-Identifier: GPL-2.0
/*
 * dropshim MPTCP scheduler "roundrobin": each time data can go, the next
 * subflow in turn (by subflow id) that can take it gets one burst. Backup
 * subflows are used only while no other subflow is active.
 */
#define pr_fmt(fmt) "MPTCP roundrobin: " fmt

#include <linux/init.h>
#include "dropshim_sched.h"

static int roundrobin_get_subflow(struct mptcp_sock *msk,
				  struct mptcp_sched_data *data)
{
	struct mptcp_subflow_context *subflow, *next = NULL, *lowest = NULL;
	u32 last = msk->dropshim_sched_last;
	bool any_active = false;
	int pass;

	if (data->reinject)
		return dropshim_schedule_reinject(msk);

	/* pass 0: regular subflows; pass 1: backups, if no regular one is up */
	for (pass = 0; pass < 2 && !next && !lowest; pass++) {
		mptcp_for_each_subflow(msk, subflow) {
			if (dropshim_subflow_backup(subflow) != (pass == 1))
				continue;
			if (!mptcp_subflow_active(subflow))
				continue;
			any_active = true;
			if (!sk_stream_memory_free(mptcp_subflow_tcp_sock(subflow)))
				continue;
			if (subflow->subflow_id > last &&
			    (!next || subflow->subflow_id < next->subflow_id))
				next = subflow;
			if (!lowest || subflow->subflow_id < lowest->subflow_id)
				lowest = subflow;
		}
		/* regular subflows are up but full: wait for them */
		if (pass == 0 && any_active && !next && !lowest)
			return -EINVAL;
	}

	if (!next)
		next = lowest;
	if (!next)
		return -EINVAL;

	msk->dropshim_sched_last = next->subflow_id;
	dropshim_schedule(msk, mptcp_subflow_tcp_sock(next));
	return 0;
}

static struct mptcp_sched_ops roundrobin_sched = {
	.get_subflow	= roundrobin_get_subflow,
	.name		= "roundrobin",
	.owner		= THIS_MODULE,
};

static int __init roundrobin_register(void)
{
	return mptcp_register_scheduler(&roundrobin_sched);
}
late_initcall(roundrobin_register);

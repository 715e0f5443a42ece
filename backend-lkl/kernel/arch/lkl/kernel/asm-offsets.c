// SPDX-License-Identifier: GPL-2.0
/* No assembly in this port, so no offsets to export. */
#include <linux/kbuild.h>

int main(void)
{
	return 0;
}

// SPDX-License-Identifier: GPL-2.0
/* Host-emulated device registers and virtio-mmio device creation. */
#include <linux/io.h>
#include <linux/netdevice.h>
#include <linux/platform_device.h>
#include <linux/rtnetlink.h>
#include "lkl.h"

u64 lkl_iomem_read(const volatile void __iomem *addr, int size)
{
	u64 val = 0;

	lkl_ops->iomem_access((unsigned long)addr, &val, size, 0);
	return val;
}

void lkl_iomem_write(volatile void __iomem *addr, u64 val, int size)
{
	lkl_ops->iomem_access((unsigned long)addr, &val, size, 1);
}

static int lkl_virtio_next_id;

/*
 * Register a virtio-mmio device whose registers the host serves at
 * [base, base + size) and which raises irq. Returns the ifindex of the
 * network interface it became, 0 if it is not a network device, or -errno.
 */
long lkl_virtio_mmio_add(unsigned long base, unsigned long size, long irq)
{
	struct resource res[2] = {
		DEFINE_RES_MEM(base, size),
		DEFINE_RES_IRQ(irq),
	};
	struct platform_device *pdev;
	struct net_device *dev;
	long ifindex = 0;

	if (irq < LKL_FIRST_DEVICE_IRQ || irq >= NR_IRQS || !size)
		return -EINVAL;
	pdev = platform_device_register_simple("virtio-mmio",
					       lkl_virtio_next_id++, res, 2);
	if (IS_ERR(pdev))
		return PTR_ERR(pdev);

	rtnl_lock();
	for_each_netdev(&init_net, dev) {
		struct device *p = dev->dev.parent;

		if (p && p->parent == &pdev->dev) {
			ifindex = dev->ifindex;
			break;
		}
	}
	rtnl_unlock();
	return ifindex;
}

/* SPDX-License-Identifier: GPL-2.0 */
#ifndef _ASM_LKL_IO_H
#define _ASM_LKL_IO_H

#include <linux/types.h>

/*
 * Device registers live in the host: every MMIO access becomes a call to
 * the host's iomem_access operation. Ordinary memory is never accessed
 * through these helpers in this port.
 */
u64 lkl_iomem_read(const volatile void __iomem *addr, int size);
void lkl_iomem_write(volatile void __iomem *addr, u64 val, int size);

#define __raw_readb __raw_readb
static inline u8 __raw_readb(const volatile void __iomem *addr)
{
	return lkl_iomem_read(addr, 1);
}
#define __raw_readw __raw_readw
static inline u16 __raw_readw(const volatile void __iomem *addr)
{
	return lkl_iomem_read(addr, 2);
}
#define __raw_readl __raw_readl
static inline u32 __raw_readl(const volatile void __iomem *addr)
{
	return lkl_iomem_read(addr, 4);
}
#define __raw_readq __raw_readq
static inline u64 __raw_readq(const volatile void __iomem *addr)
{
	return lkl_iomem_read(addr, 8);
}
#define __raw_writeb __raw_writeb
static inline void __raw_writeb(u8 v, volatile void __iomem *addr)
{
	lkl_iomem_write(addr, v, 1);
}
#define __raw_writew __raw_writew
static inline void __raw_writew(u16 v, volatile void __iomem *addr)
{
	lkl_iomem_write(addr, v, 2);
}
#define __raw_writel __raw_writel
static inline void __raw_writel(u32 v, volatile void __iomem *addr)
{
	lkl_iomem_write(addr, v, 4);
}
#define __raw_writeq __raw_writeq
static inline void __raw_writeq(u64 v, volatile void __iomem *addr)
{
	lkl_iomem_write(addr, v, 8);
}

#define ioremap ioremap
static inline void __iomem *ioremap(phys_addr_t offset, size_t size)
{
	return (void __iomem *)(unsigned long)offset;
}
#define iounmap iounmap
static inline void iounmap(volatile void __iomem *addr)
{
}

#include <asm-generic/io.h>

#endif
